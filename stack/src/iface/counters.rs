//! Per-interface counters, and the named reason of every dropped frame.

use crate::wire;

macro_rules! drop_reasons {
    ($($name:ident => $text:literal,)*) => {
        /// Why a frame was dropped. Every drop is counted under exactly one reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum DropReason { $(#[doc = concat!("Counted as `", $text, "`.")] $name,)* }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// How many reasons there are (the length of [`IfaceCounters::drops`]).
            pub const COUNT: usize = Self::ALL.len();
            /// A stable, human-readable name (used by `plex ctl` and the counters dump).
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$name => $text,)* }
            }
        }
    };
}

drop_reasons! {
    EthTruncated => "eth_truncated",
    EthNotForUs => "eth_not_for_us",
    EthUnsupportedType => "eth_unsupported_type",
    ArpMalformed => "arp_malformed",
    ArpUnsupported => "arp_unsupported",
    ArpNotForUs => "arp_not_for_us",
    ArpFailed => "arp_failed",
    IpTruncated => "ip_truncated",
    IpBadLength => "ip_bad_length",
    IpBadVersion => "ip_bad_version",
    IpBadChecksum => "ip_bad_checksum",
    IpFragment => "ip_fragment",
    IpNotForUs => "ip_not_for_us",
    IpBadSource => "ip_bad_source",
    IpUnsupportedProtocol => "ip_unsupported_protocol",
    IcmpMalformed => "icmp_malformed",
    IcmpBadChecksum => "icmp_bad_checksum",
    IcmpUnsupported => "icmp_unsupported",
    IcmpNoConnection => "icmp_no_connection",
    TcpMalformed => "tcp_malformed",
    TcpBadChecksum => "tcp_bad_checksum",
    TcpBadFlags => "tcp_bad_flags",
    TcpBadOption => "tcp_bad_option",
    TcpListenOverflow => "tcp_listen_overflow",
    TcpBadCookie => "tcp_bad_cookie",
    TcpConnLimit => "tcp_conn_limit",
    TcpMemLimit => "tcp_mem_limit",
    TcpNoSocket => "tcp_no_socket",
    TcpClusterDrop => "tcp_cluster_drop",
    TcpClusterReset => "tcp_cluster_reset",
    UdpMalformed => "udp_malformed",
    UdpBadChecksum => "udp_bad_checksum",
    UdpNoSocket => "udp_no_socket",
    UdpQueueFull => "udp_queue_full",
    ControlQueueFull => "control_queue_full",
    NoRoute => "no_route",
    // IPv4 reassembly (iface/reassembly.rs).
    IpFragBadLength => "ip_frag_bad_length",
    IpFragTooBig => "ip_frag_too_big",
    IpFragBadEnd => "ip_frag_bad_end",
    IpFragOverlap => "ip_frag_overlap",
    IpFragOfDiscarded => "ip_frag_of_discarded",
    IpFragDuplicate => "ip_frag_duplicate",
    IpFragMemLimit => "ip_frag_mem_limit",
}

impl DropReason {
    /// Map a parse error at a layer to its reason.
    pub fn ip(e: wire::Error) -> DropReason {
        match e {
            wire::Error::Truncated => DropReason::IpTruncated,
            wire::Error::BadVersion => DropReason::IpBadVersion,
            wire::Error::BadChecksum => DropReason::IpBadChecksum,
            wire::Error::Fragment => DropReason::IpFragment,
            _ => DropReason::IpBadLength,
        }
    }
    /// The reason for a TCP segment that failed to parse with `e`.
    pub fn tcp(e: wire::Error) -> DropReason {
        match e {
            wire::Error::BadChecksum => DropReason::TcpBadChecksum,
            wire::Error::BadFlags => DropReason::TcpBadFlags,
            wire::Error::BadOption => DropReason::TcpBadOption,
            _ => DropReason::TcpMalformed,
        }
    }
    /// The reason for a UDP datagram that failed to parse with `e`.
    pub fn udp(e: wire::Error) -> DropReason {
        match e {
            wire::Error::BadChecksum => DropReason::UdpBadChecksum,
            _ => DropReason::UdpMalformed,
        }
    }
    /// The reason for an ICMP message that failed to parse with `e`.
    pub fn icmp(e: wire::Error) -> DropReason {
        match e {
            wire::Error::BadChecksum => DropReason::IcmpBadChecksum,
            wire::Error::Unsupported => DropReason::IcmpUnsupported,
            _ => DropReason::IcmpMalformed,
        }
    }
}

/// Counters of one interface, since it was created. Frames and bytes count whole Ethernet
/// frames (without FCS); the `_in`/`_out` counters count what was parsed or built at that
/// layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Frames given to [`super::Stack::receive`].
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames [`super::Stack::poll_transmit`] produced.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// ARP requests received (for anyone).
    pub arp_requests_in: u64,
    /// ARP replies received.
    pub arp_replies_in: u64,
    /// ARP packets whose changed MAC was refused within the cache's locktime.
    pub arp_changes_locked: u64,
    /// Neighbour MACs that an ARP packet had changed and TCP forward progress from another MAC
    /// corrected (a damaged or forged ARP packet poisoned the entry).
    pub arp_repaired: u64,
    /// Cluster events lost because the cluster layer did not drain the queue.
    pub cluster_events_lost: u64,
    /// TCP segments of connections in a live handoff, kept by the caller for their next owner
    /// ([`super::Received::Hold`]).
    pub tcp_held: u64,
    /// TCP segments the cluster routed to another stack ([`super::Received::Forward`]).
    pub tcp_forwarded: u64,
    /// TCP segments handed to another shard of this process ([`super::Received::Shard`]): its
    /// connection lives there, or (a cluster stack's lead shard) decides for it.
    pub tcp_shard_handed: u64,
    /// UDP datagrams for a socket another stack of the process has, handed to it.
    pub udp_forwarded: u64,
    /// ARP requests sent (resolution and NUD probes).
    pub arp_requests_out: u64,
    /// ARP replies sent (for our addresses that are not internal).
    pub arp_replies_out: u64,
    /// Gratuitous ARPs sent ([`super::Stack::announce`]; two per announcement).
    pub gratuitous_arp_out: u64,
    /// ICMP echo requests received for our addresses.
    pub icmp_echo_in: u64,
    /// ICMP echo replies sent.
    pub icmp_echo_out: u64,
    /// ICMP destination-unreachable messages received.
    pub icmp_unreachable_in: u64,
    /// ICMP destination-unreachable messages sent (port unreachable).
    pub icmp_unreachable_out: u64,
    /// TCP segments that parsed (checksum included).
    pub tcp_segs_in: u64,
    /// RSTs sent for segments no connection owns (RFC 9293 3.10.7.1).
    pub tcp_rst_out: u64,
    /// Connections completed by a valid SYN cookie (RFC 4987 3.6).
    pub tcp_syn_cookies_ok: u64,
    /// RSTs for unowned segments suppressed by `StackConfig::rst_limit`.
    pub tcp_rst_rate_limited: u64,
    /// ICMP errors suppressed by `StackConfig::icmp_error_limit`.
    pub icmp_errors_rate_limited: u64,
    /// UDP datagrams that parsed (whole, after reassembly).
    pub udp_datagrams_in: u64,
    /// UDP datagrams sent (a fragmented one once).
    pub udp_datagrams_out: u64,
    // IPv4 fragments and reassembly.
    /// Fragments received (each is then held, completes a datagram, or is dropped).
    pub ip_frags_in: u64,
    /// Datagrams reassembled and delivered.
    pub ip_reasm_ok: u64,
    /// Datagrams whose reassembly timer expired.
    pub ip_reasm_timeout: u64,
    /// Datagrams discarded in reassembly (overlap, bad end, memory).
    pub ip_reasm_discarded: u64,
    /// ICMP Time Exceeded (fragment reassembly) sent.
    pub icmp_time_exceeded_out: u64,
    /// Fragments sent (of ICMP echo replies and UDP datagrams larger than the MTU).
    pub ip_frags_out: u64,
    /// Dropped frames, indexed by [`DropReason`] (`drops[r as usize]`).
    pub drops: [u64; DropReason::COUNT],
}

impl Default for IfaceCounters {
    fn default() -> Self {
        IfaceCounters {
            rx_frames: 0,
            rx_bytes: 0,
            tx_frames: 0,
            tx_bytes: 0,
            arp_requests_in: 0,
            arp_replies_in: 0,
            arp_changes_locked: 0,
            arp_repaired: 0,
            cluster_events_lost: 0,
            tcp_forwarded: 0,
            tcp_shard_handed: 0,
            udp_forwarded: 0,
            tcp_held: 0,
            arp_requests_out: 0,
            arp_replies_out: 0,
            gratuitous_arp_out: 0,
            icmp_echo_in: 0,
            icmp_echo_out: 0,
            icmp_unreachable_in: 0,
            icmp_unreachable_out: 0,
            tcp_segs_in: 0,
            tcp_rst_out: 0,
            tcp_syn_cookies_ok: 0,
            tcp_rst_rate_limited: 0,
            icmp_errors_rate_limited: 0,
            udp_datagrams_in: 0,
            udp_datagrams_out: 0,
            ip_frags_in: 0,
            ip_reasm_ok: 0,
            ip_reasm_timeout: 0,
            ip_reasm_discarded: 0,
            icmp_time_exceeded_out: 0,
            ip_frags_out: 0,
            drops: [0; DropReason::COUNT],
        }
    }
}

impl IfaceCounters {
    /// Count one drop under `r`.
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }
    /// Drops counted under `r`.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    /// Drops under every reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// `(name, value)` pairs of every counter, for dumps.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let plain = [
            ("rx_frames", self.rx_frames),
            ("rx_bytes", self.rx_bytes),
            ("tx_frames", self.tx_frames),
            ("tx_bytes", self.tx_bytes),
            ("arp_requests_in", self.arp_requests_in),
            ("arp_replies_in", self.arp_replies_in),
            ("arp_changes_locked", self.arp_changes_locked),
            ("arp_repaired", self.arp_repaired),
            ("cluster_events_lost", self.cluster_events_lost),
            ("tcp_forwarded", self.tcp_forwarded),
            ("tcp_shard_handed", self.tcp_shard_handed),
            ("udp_forwarded", self.udp_forwarded),
            ("tcp_held", self.tcp_held),
            ("arp_requests_out", self.arp_requests_out),
            ("arp_replies_out", self.arp_replies_out),
            ("gratuitous_arp_out", self.gratuitous_arp_out),
            ("icmp_echo_in", self.icmp_echo_in),
            ("icmp_echo_out", self.icmp_echo_out),
            ("icmp_unreachable_in", self.icmp_unreachable_in),
            ("icmp_unreachable_out", self.icmp_unreachable_out),
            ("tcp_segs_in", self.tcp_segs_in),
            ("tcp_rst_out", self.tcp_rst_out),
            ("tcp_syn_cookies_ok", self.tcp_syn_cookies_ok),
            ("tcp_rst_rate_limited", self.tcp_rst_rate_limited),
            ("icmp_errors_rate_limited", self.icmp_errors_rate_limited),
            ("udp_datagrams_in", self.udp_datagrams_in),
            ("udp_datagrams_out", self.udp_datagrams_out),
            ("ip_frags_in", self.ip_frags_in),
            ("ip_reasm_ok", self.ip_reasm_ok),
            ("ip_reasm_timeout", self.ip_reasm_timeout),
            ("ip_reasm_discarded", self.ip_reasm_discarded),
            ("icmp_time_exceeded_out", self.icmp_time_exceeded_out),
            ("ip_frags_out", self.ip_frags_out),
        ];
        plain.into_iter().chain(
            DropReason::ALL.iter().map(move |r| (r.name(), self.drops[*r as usize])),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_unique_name() {
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}
