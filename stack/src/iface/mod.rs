//! The interface: one Ethernet port of a plex stack and everything above it.
//!
//! [`Stack`] owns the home list (local addresses; an *internal* address is accepted but never
//! answered in ARP), the ARP cache, the socket table (TCP connections, listeners, UDP sockets),
//! and the per-interface counters. It is driven by four calls:
//!
//! - [`Stack::receive`]: one inbound Ethernet frame;
//! - [`Stack::poll_transmit`]: the next outbound frame, written into the caller's buffer (an
//!   AF_XDP UMEM frame, or the simulator's);
//! - [`Stack::poll_timeout`] / [`Stack::handle_timeout`]: timers.
//!
//! Demultiplexing (RFC 9293 3.10.7): exact 4-tuple, then a listener on the exact local address,
//! then a wildcard listener; otherwise a RST (3.10.7.1). Work is bounded per call: sockets with
//! something to send sit on a ready queue (no scan of all sockets), timers sit in a heap with
//! one live entry per socket, frames the interface answers itself (ARP, ICMP, RSTs, SYN
//! cookies, UDP) are built into preallocated slots.

mod arp_cache;
mod counters;
mod frame_queue;
pub mod reassembly;
mod rate_limit;
mod api;
mod connections;
mod input;
mod listen;
mod neighbours;
mod sockets;

pub use arp_cache::{ArpCache, Lookup, NeighbourAction, NeighbourCache, NudState};
pub use counters::{DropReason, IfaceCounters};
pub use frame_queue::FrameQueue;
pub use reassembly::ReassemblyConfig;
use reassembly::{Outcome, Reassembler};
pub use rate_limit::{RateLimit, TokenBucket};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::Map;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::cluster::{Cluster, InboundRoute, SingleStack};
use crate::rand::Rng;
use crate::tcp::isn::IsnGenerator;
use crate::tcp::listener::{check_cookie_ack, ListenerCounters, SynDecision};
use crate::tcp::{self, Connection, Event, Listener, State, Tuple};
use crate::time::{Duration, Instant};
use crate::udp::UdpSocket;
use crate::wire::{
    self, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, Icmpv4Packet,
    Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, MacAddr, SeqNumber, TcpControl, TcpPacket,
    TcpRepr, UdpPacket, UdpRepr,
};

const ETH_HDR: usize = 14;
const IP_HDR: usize = 20;

/// What [`Stack::remove_address`] does with the connections on the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Leave them to time out (their segments still go out).
    Keep,
    /// Abort them with a RST (operator delete, a command moving the address).
    Reset,
    /// Forget them without sending anything: the address now answers elsewhere, or this stack
    /// was fenced and must never speak for it again.
    Silent,
}

/// A local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomeAddr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// Accepted but never answered in ARP (a distributor target's internal DVIPA).
    pub internal: bool,
}

impl HomeAddr {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - self.prefix_len.min(32)) };
        (u32::from(self.addr) & mask) == (u32::from(ip) & mask)
    }
}

/// Interface configuration.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub mac: MacAddr,
    /// IP MTU of the link.
    pub mtu: usize,
    pub gateway: Option<Ipv4Addr>,
    /// Verify checksums on input (turn off only when the device verified them).
    pub verify_checksums: bool,
    /// Options for new TCP sockets.
    pub tcp: tcp::Config,
    /// Seed of the stack's randomness (ISN secrets, ephemeral ports).
    pub seed: u64,
    /// Slots for frames the interface builds itself.
    pub control_slots: usize,
    /// IPv4 reassembly limits (memory, datagrams in flight, timeout).
    pub reassembly: ReassemblyConfig,
    /// TCP connections (embryonic, established, closing, or closed but still held by the
    /// application) at most. A SYN or a valid cookie ACK beyond it is dropped and counted
    /// ([`DropReason::TcpConnLimit`]), a `tcp_connect` fails with [`ApiError::NoBuffers`];
    /// existing connections are not touched.
    pub max_connections: usize,
    /// Socket-buffer memory budget in bytes: the sum of the send and receive rings the live
    /// connections have allocated (a ring is allocated whole, on first use). A new connection
    /// is admitted only if its full capacity fits under the budget
    /// ([`DropReason::TcpMemLimit`] otherwise). Connections already admitted may still
    /// allocate their rings, so the bound on buffer memory is `mem_budget` plus the rings of
    /// the connections admitted while buffer-less, and absolutely `max_connections` times one
    /// connection's capacity.
    pub mem_budget: usize,
    /// ICMP errors (port unreachable) sent at most, [`RateLimit::LINUX_ICMP`] by default.
    pub icmp_error_limit: RateLimit,
    /// RSTs for segments nobody owns (closed ports, bad cookies, stray segments to a
    /// listener) at most; the same 1000/s, burst 50. RSTs of a connection are not limited.
    pub rst_limit: RateLimit,
}

impl StackConfig {
    pub fn new(mac: MacAddr) -> StackConfig {
        StackConfig {
            mac,
            mtu: 1500,
            gateway: None,
            verify_checksums: true,
            tcp: tcp::Config::default(),
            seed: 0,
            control_slots: 256,
            reassembly: ReassemblyConfig::default(),
            max_connections: 262_144,
            mem_budget: 4 << 30,
            icmp_error_limit: RateLimit::LINUX_ICMP,
            rst_limit: RateLimit::LINUX_ICMP,
        }
    }
}

/// A handle to a socket of the stack. Stale handles (of a freed socket) are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketHandle {
    index: u32,
    generation: u32,
}

impl SocketHandle {
    pub fn index(self) -> u32 {
        self.index
    }
}

/// Errors of the socket API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiError {
    InvalidHandle,
    /// The handle is of another socket type.
    WrongSocketType,
    AddrInUse,
    AddrNotAvailable,
    NoRoute,
    /// Ephemeral ports exhausted for this destination.
    NoPorts,
    Tcp(tcp::Error),
    /// The stack's connection limit or socket-buffer budget is reached
    /// ([`StackConfig::max_connections`], [`StackConfig::mem_budget`]).
    NoBuffers,
    /// A datagram too large for the MTU, or a full queue.
    MessageTooLarge,
    WouldBlock,
}

impl From<tcp::Error> for ApiError {
    fn from(e: tcp::Error) -> Self {
        match e {
            tcp::Error::WouldBlock => ApiError::WouldBlock,
            e => ApiError::Tcp(e),
        }
    }
}

impl core::fmt::Display for ApiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApiError::InvalidHandle => f.write_str("invalid socket handle"),
            ApiError::WrongSocketType => f.write_str("wrong socket type for this call"),
            ApiError::AddrInUse => f.write_str("address in use"),
            ApiError::AddrNotAvailable => f.write_str("address not available"),
            ApiError::NoRoute => f.write_str("no route to host"),
            ApiError::NoPorts => f.write_str("no ephemeral port available"),
            ApiError::Tcp(e) => core::fmt::Display::fmt(e, f),
            ApiError::NoBuffers => f.write_str("connection limit or socket-buffer budget reached"),
            ApiError::MessageTooLarge => f.write_str("message too large"),
            ApiError::WouldBlock => f.write_str("operation would block"),
        }
    }
}
impl std::error::Error for ApiError {}

/// What the application hears about a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketEvent {
    /// A TCP connection event.
    Tcp(Event),
    /// A listener has a connection to accept.
    Acceptable,
    /// A UDP socket has a datagram.
    UdpReadable,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // connections dominate; boxing would cost a pointer chase per packet
enum Socket {
    Tcp(TcpSlot),
    Listener(Listener<SocketHandle>),
    Udp(UdpSocket),
}

#[derive(Debug)]
struct TcpSlot {
    conn: Connection,
    /// The listener that created it, while it waits to be accepted.
    parent: Option<SocketHandle>,
    /// The cluster gave us this local port for an active open.
    ephemeral: bool,
    /// Buffer bytes of this connection counted in `Stack::mem_allocated`.
    mem: usize,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    socket: Option<Socket>,
    /// On the ready queue.
    ready: bool,
    /// Deadline of this socket's live timer-heap entry.
    timer_at: Option<Instant>,
    /// Waiting for ARP resolution of this next hop.
    waiting_arp: Option<Ipv4Addr>,
}

/// A plex TCP/IP stack on one interface.
#[derive(Debug)]
pub struct Stack {
    cfg: StackConfig,
    homes: Vec<HomeAddr>,
    pub arp: ArpCache,
    slots: Vec<Slot>,
    free: Vec<u32>,
    connections: Map<Tuple, SocketHandle>,
    listeners: Map<SocketAddrV4, SocketHandle>,
    udp: Map<SocketAddrV4, SocketHandle>,
    ready: VecDeque<SocketHandle>,
    timers: BinaryHeap<Reverse<(Instant, SocketHandle)>>,
    events: VecDeque<(SocketHandle, SocketEvent)>,
    control: FrameQueue,
    /// Sockets waiting for ARP, per next hop.
    arp_waiters: Map<Ipv4Addr, Vec<SocketHandle>>,
    cluster: Box<dyn Cluster>,
    rng: Rng,
    isn: IsnGenerator,
    counters: IfaceCounters,
    /// Neighbour-cache timer actions, reused across calls.
    scratch: Vec<(Ipv4Addr, NeighbourAction)>,
    /// IPv4 reassembly (preallocated).
    reasm: Reassembler,
    /// Where an ICMP echo reply too large for one frame is built before it is cut into
    /// fragments (preallocated, one maximal datagram).
    frag_tx: Vec<u8>,
    /// TCP sockets in the table (against `max_connections`).
    tcp_sockets: usize,
    /// Buffer bytes the TCP sockets have allocated (against `mem_budget`).
    mem_allocated: usize,
    icmp_bucket: TokenBucket,
    rst_bucket: TokenBucket,
    /// The `now` of the frame being received (for the answer buckets).
    rx_now: Instant,
    /// Whether the last frame transmitted came from the control queue (control frames and
    /// socket segments take turns).
    tx_control_last: bool,
}

impl Stack {
    pub fn new(cfg: StackConfig) -> Stack {
        Stack::with_cluster(cfg, Box::new(SingleStack))
    }

    pub fn with_cluster(cfg: StackConfig, cluster: Box<dyn Cluster>) -> Stack {
        let mut rng = Rng::new(cfg.seed);
        let isn = IsnGenerator::new(&mut rng);
        let control = FrameQueue::new(cfg.control_slots, cfg.mtu + ETH_HDR);
        let reasm = Reassembler::new(cfg.reassembly);
        let (icmp_bucket, rst_bucket) = (TokenBucket::new(cfg.icmp_error_limit), TokenBucket::new(cfg.rst_limit));
        Stack {
            cfg,
            homes: Vec::new(),
            arp: ArpCache::default(),
            slots: Vec::new(),
            free: Vec::new(),
            connections: Map::default(),
            listeners: Map::default(),
            udp: Map::default(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            control,
            arp_waiters: Map::default(),
            cluster,
            rng,
            isn,
            counters: IfaceCounters::default(),
            scratch: Vec::new(),
            reasm,
            frag_tx: vec![0u8; wire::ipv4::MAX_PAYLOAD],
            tcp_sockets: 0,
            mem_allocated: 0,
            icmp_bucket,
            rst_bucket,
            rx_now: Instant::ZERO,
            tx_control_last: false,
        }
    }

    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }
    pub fn mac(&self) -> MacAddr {
        self.cfg.mac
    }
    pub fn counters(&self) -> &IfaceCounters {
        &self.counters
    }
    /// MMS_R (RFC 1122 3.3.2, MUST be available to the transport layer): the largest transport
    /// message that can be received, EMTU_R - 20: 65 515 with reassembly, MTU - 20 without.
    pub fn mms_r(&self) -> usize {
        if self.reasm.enabled() {
            wire::ipv4::MAX_PAYLOAD
        } else {
            self.cfg.mtu - IP_HDR
        }
    }
    pub fn cluster_mut(&mut self) -> &mut dyn Cluster {
        self.cluster.as_mut()
    }
    /// Default options for sockets created from now on.
    pub fn tcp_config_mut(&mut self) -> &mut tcp::Config {
        &mut self.cfg.tcp
    }

    // ----------------------------------------------------------------------------------------
    // Home list.

    /// Add a local address. The caller announces it with [`Stack::announce`] if it moved here.
    pub fn add_address(&mut self, addr: Ipv4Addr, prefix_len: u8, internal: bool) {
        self.homes.retain(|h| h.addr != addr);
        self.homes.push(HomeAddr { addr, prefix_len, internal });
    }

    /// Remove a local address: ARP and IP for it stop at once. What happens to connections on
    /// it is the caller's `departure`.
    pub fn remove_address(&mut self, now: Instant, addr: Ipv4Addr, departure: Departure) {
        self.homes.retain(|h| h.addr != addr);
        // Answers already queued for it (ARP replies, ICMP, RSTs) must not leave either.
        let a = addr.octets();
        self.control.retain(|f| {
            let ip_src = f.len() >= 30 && f[12..14] == [0x08, 0x00] && f[26..30] == a;
            let arp_sender = f.len() >= 32 && f[12..14] == [0x08, 0x06] && f[28..32] == a;
            !(ip_src || arp_sender)
        });
        if departure == Departure::Keep {
            return;
        }
        let victims: Vec<SocketHandle> =
            self.connections.iter().filter(|(t, _)| *t.local.ip() == addr).map(|(_, h)| *h).collect();
        for h in victims {
            if let Some(c) = self.conn_mut(h) {
                c.abort_by_stack(departure == Departure::Reset);
            }
            self.after_tcp(now, h);
        }
    }

    /// Connections on `addr` (local end), in any state.
    pub fn connections_on(&self, addr: Ipv4Addr) -> usize {
        self.connections.keys().filter(|t| *t.local.ip() == addr).count()
    }

    pub fn homes(&self) -> &[HomeAddr] {
        &self.homes
    }

    pub fn has_address(&self, addr: Ipv4Addr) -> bool {
        self.homes.iter().any(|h| h.addr == addr)
    }

    fn answers_arp_for(&self, addr: Ipv4Addr) -> bool {
        self.homes.iter().any(|h| h.addr == addr && !h.internal)
    }

    /// Queue gratuitous ARP for `addr` in both forms (request and reply, as `arping -U` and
    /// `-A` send), so peers and switches move the address to this MAC.
    pub fn announce(&mut self, addr: Ipv4Addr) {
        let mac = self.cfg.mac;
        for op in [ArpOperation::Request, ArpOperation::Reply] {
            let arp = ArpRepr::gratuitous(mac, addr, op);
            if self.queue_arp(MacAddr::BROADCAST, &arp) {
                self.counters.gratuitous_arp_out += 1;
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Routing.

    /// The home address to use as source towards `dst`.
    pub fn source_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let usable = self.homes.iter().filter(|h| !h.internal);
        usable
            .clone()
            .find(|h| h.contains(dst))
            .or_else(|| self.cfg.gateway.and_then(|gw| usable.clone().find(|h| h.contains(gw))))
            .or_else(|| self.homes.iter().find(|h| !h.internal))
            .map(|h| h.addr)
    }

    /// The next hop for `dst`: on-link, else the gateway.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if dst.is_broadcast() {
            return Some(dst);
        }
        if self.homes.iter().any(|h| h.contains(dst)) {
            Some(dst)
        } else {
            self.cfg.gateway
        }
    }

    // ----------------------------------------------------------------------------------------
    // Receive path.

    // ----------------------------------------------------------------------------------------
    // Building frames.

    fn queue_arp(&mut self, dst: MacAddr, arp: &ArpRepr) -> bool {
        let mac = self.cfg.mac;
        let ok = self.control.push_with(|b| {
            emit_eth(b, mac, dst, EtherType::Arp);
            let n = arp.buffer_len();
            arp.emit(&mut ArpPacket::new_unchecked(&mut b[ETH_HDR..ETH_HDR + n]));
            Some(pad_to_minimum(b, ETH_HDR + n))
        });
        if !ok {
            self.counters.drop(DropReason::ControlQueueFull);
        }
        ok
    }

    fn queue_ip(
        &mut self,
        dst_mac: MacAddr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: IpProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> bool {
        if ETH_HDR + IP_HDR + payload_len > self.control.slot_size() {
            self.counters.drop(DropReason::ControlQueueFull);
            return false;
        }
        let ident = self.rng.next_u32() as u16;
        let mac = self.cfg.mac;
        let ok = self.control.push_with(|b| {
            emit_eth(b, mac, dst_mac, EtherType::Ipv4);
            fill(&mut b[ETH_HDR + IP_HDR..ETH_HDR + IP_HDR + payload_len]);
            emit_ipv4(&mut b[ETH_HDR..], src, dst, proto, payload_len, ident);
            Some(pad_to_minimum(b, ETH_HDR + IP_HDR + payload_len))
        });
        if !ok {
            self.counters.drop(DropReason::ControlQueueFull);
        }
        ok
    }

    fn queue_tcp(&mut self, dst_mac: MacAddr, tuple: Tuple, r: &TcpRepr<'_>) -> bool {
        let (src, dst) = (*tuple.local.ip(), *tuple.remote.ip());
        self.queue_ip(dst_mac, src, dst, IpProtocol::Tcp, r.buffer_len(), |b| {
            r.emit(&mut TcpPacket::new_unchecked(b), src, dst)
        })
    }

    // ----------------------------------------------------------------------------------------
    // Transmit path.

    /// False when [`Stack::poll_transmit`] certainly returns `None`: no control frame is
    /// queued and no socket is on the ready queue (a cheap test for idle poll loops).
    pub fn may_transmit(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Write the next outbound Ethernet frame into `buf` (at least MTU + 14 bytes); `None` when
    /// nothing is due now.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let n = self.poll_transmit_inner(now, buf)?;
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += n as u64;
        Some(n)
    }

    /// Frames the interface built itself (ARP, ICMP, RSTs, cookie SYN-ACKs) and segments of the
    /// sockets take turns when both are waiting: under a SYN flood the cookie SYN-ACKs fill
    /// the control queue faster than the link drains it, and strict priority would starve
    /// every established connection (their data and ACKs would wait behind an endless queue
    /// of answers to spoofed addresses). With turns, each class gets at least half the
    /// frames; the control queue overflows under a flood and its excess is dropped and counted
    /// (`control_queue_full`), as Linux drops what its backlog cannot take.
    fn poll_transmit_inner(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if !self.tx_control_last || self.ready.is_empty() {
            if let Some(n) = self.control.pop_into(buf) {
                self.tx_control_last = true;
                return Some(n);
            }
        }
        if let Some(n) = self.poll_sockets(now, buf) {
            self.tx_control_last = false;
            return Some(n);
        }
        let n = self.control.pop_into(buf)?;
        self.tx_control_last = true;
        Some(n)
    }

    /// The next segment or datagram of a ready socket, resolving its next hop first.
    fn poll_sockets(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        // Bounded: each ready socket is visited once per call at most (plus the segments
        // dropped towards a FAILED neighbour, each of which consumes the sender's window).
        let mut budget = self.ready.len();
        let mut discards = 0usize;
        while budget > 0 {
            budget -= 1;
            let h = *self.ready.front()?;
            let (remote_ip, is_udp) = match self.socket_mut(h) {
                Some(Socket::Tcp(t)) if !t.conn.may_transmit() => {
                    // Nothing to send: skip the route and ARP lookups.
                    t.conn.nothing_to_transmit();
                    self.unready(h);
                    continue;
                }
                Some(Socket::Tcp(t)) => (*t.conn.tuple().remote.ip(), false),
                Some(Socket::Udp(u)) => match u.tx.front() {
                    Some((peer, _)) => (*peer.ip(), true),
                    None => {
                        self.unready(h);
                        continue;
                    }
                },
                _ => {
                    self.unready(h);
                    continue;
                }
            };
            // Resolve the next hop first; park the socket while ARP is out.
            let Some(hop) = self.next_hop(remote_ip) else {
                self.counters.drop(DropReason::NoRoute);
                self.unready(h);
                // A closed connection's last RST cannot leave: free it rather than keep it.
                if let Some(c) = self.conn_mut(h) {
                    if c.state() == State::Closed && c.rst_pending() {
                        c.drop_pending_rst();
                        self.after_tcp(now, h);
                    }
                }
                if is_udp {
                    if let Some(Socket::Udp(u)) = self.socket_mut(h) {
                        u.pop_tx();
                    }
                }
                continue;
            };
            let mac = if hop.is_broadcast() {
                MacAddr::BROADCAST
            } else {
                match self.arp.lookup(now, hop) {
                    Lookup::Found(m) => m,
                    Lookup::Failed => {
                        // RFC 1122 2.3.2.2: the resolution failed; what is sent now is dropped
                        // (as Linux drops an skb queued to a FAILED neighbour), so the sender's
                        // own retransmission timer tries again, and gives up in its time.
                        if discards < 4096 && self.emit_from(now, h, MacAddr::BROADCAST, buf).is_some() {
                            self.counters.drop(DropReason::ArpFailed);
                            discards += 1;
                            budget += 1;
                        } else {
                            self.unready(h);
                        }
                        continue;
                    }
                    lookup => {
                        if lookup == Lookup::Request {
                            self.send_arp_request(hop, MacAddr::BROADCAST);
                        }
                        self.unready(h);
                        if let Some(slot) = self.slots.get_mut(h.index as usize) {
                            slot.waiting_arp = Some(hop);
                        }
                        self.arp_waiters.entry(hop).or_default().push(h);
                        if let Some(n) = self.control.pop_into(buf) {
                            return Some(n);
                        }
                        continue;
                    }
                }
            };
            if let Some(n) = self.emit_from(now, h, mac, buf) {
                return Some(n);
            }
            self.unready(h);
        }
        None
    }

    /// Let socket `h` write one frame to `mac`.
    fn emit_from(&mut self, now: Instant, h: SocketHandle, mac: MacAddr, buf: &mut [u8]) -> Option<usize> {
        let ip_start = ETH_HDR;
        let l4_start = ETH_HDR + IP_HDR;
        let mtu = self.cfg.mtu;
        let l4_room = (buf.len().min(ETH_HDR + mtu)).saturating_sub(l4_start);
        let (src, dst, proto, len) = match self.socket_mut(h) {
            Some(Socket::Tcp(t)) => {
                let n = t.conn.poll_transmit(now, &mut buf[l4_start..l4_start + l4_room]);
                let tuple = t.conn.tuple();
                let finished = t.conn.state() == State::Closed && !t.conn.rst_pending();
                match n {
                    Some(n) => {
                        if finished {
                            // Its last segment (a RST) is out: free the slot now, nothing
                            // else will look at a closed connection again.
                            self.after_tcp(now, h);
                        }
                        (*tuple.local.ip(), *tuple.remote.ip(), IpProtocol::Tcp, n)
                    }
                    None => {
                        // It may have changed its timers (persist) while deciding.
                        self.after_tcp(now, h);
                        return None;
                    }
                }
            }
            Some(Socket::Udp(u)) => {
                let local = u.local;
                let (peer, data) = u.tx.front()?;
                if IP_HDR + 8 + data.len() > mtu {
                    return self.emit_udp_fragment(h, mac, buf);
                }
                let repr = UdpRepr { src_port: local.port(), dst_port: peer.port(), payload: data };
                let n = repr.buffer_len();
                let src = if local.ip().is_unspecified() { None } else { Some(*local.ip()) };
                let src = match src {
                    Some(s) => s,
                    None => self.source_for(*peer.ip()).unwrap_or(Ipv4Addr::UNSPECIFIED),
                };
                let Some(Socket::Udp(u)) = self.socket_mut(h) else { return None };
                let (_, data) = u.tx.front()?;
                let repr = UdpRepr { src_port: local.port(), dst_port: peer.port(), payload: data };
                repr.emit(&mut UdpPacket::new_unchecked(&mut buf[l4_start..l4_start + n]), src, *peer.ip());
                u.pop_tx();
                self.counters.udp_datagrams_out += 1;
                (src, *peer.ip(), IpProtocol::Udp, n)
            }
            _ => return None,
        };
        let ident = self.rng.next_u32() as u16;
        emit_ipv4(&mut buf[ip_start..], src, dst, proto, len, ident);
        emit_eth(buf, self.cfg.mac, mac, EtherType::Ipv4);
        if proto == IpProtocol::Tcp {
            // Timers and events may have changed with the segment.
            let deadline = self.tcp(h).and_then(|c| c.poll_timeout());
            self.schedule(h, deadline);
            if self.tcp(h).is_some_and(|c| c.state() == State::Closed) {
                self.after_tcp(now, h);
            }
        }
        Some(pad_to_minimum(buf, l4_start + len))
    }

    /// The next fragment of the UDP datagram at the front of `h`'s send queue (larger than
    /// the MTU), written into `buf`: straight from the queue, one per call; the datagram is
    /// popped after its last fragment. DF is clear (RFC 791 3.2 fragmentation).
    fn emit_udp_fragment(&mut self, h: SocketHandle, mac: MacAddr, buf: &mut [u8]) -> Option<usize> {
        let l4_start = ETH_HDR + IP_HDR;
        let room = (buf.len().min(ETH_HDR + self.cfg.mtu)).saturating_sub(l4_start) & !7;
        if room == 0 {
            return None;
        }
        let started = match self.socket(h) {
            Some(Socket::Udp(u)) => u.tx_frag.is_some(),
            _ => return None,
        };
        if !started {
            let ident = self.rng.next_u32() as u16;
            let Some(Socket::Udp(u)) = self.socket(h) else { return None };
            let (local, (peer, data)) = (u.local, u.tx.front()?);
            let src = if local.ip().is_unspecified() {
                self.source_for(*peer.ip()).unwrap_or(Ipv4Addr::UNSPECIFIED)
            } else {
                *local.ip()
            };
            let len = (8 + data.len()) as u16;
            let mut hdr = [0u8; 8];
            hdr[0..2].copy_from_slice(&local.port().to_be_bytes());
            hdr[2..4].copy_from_slice(&peer.port().to_be_bytes());
            hdr[4..6].copy_from_slice(&len.to_be_bytes());
            let sum = wire::checksum::pseudo_header(src, *peer.ip(), 17, len)
                + wire::checksum::sum(&hdr)
                + wire::checksum::sum(data);
            // RFC 768: a computed zero is sent as all ones.
            let checksum = match !wire::checksum::fold(sum) {
                0 => 0xffff,
                c => c,
            };
            let Some(Socket::Udp(u)) = self.socket_mut(h) else { return None };
            u.tx_frag = Some(crate::udp::TxFragments { ident, src, checksum, next: 0 });
        }
        let Some(Socket::Udp(u)) = self.socket_mut(h) else { return None };
        let (local, tf) = (u.local, u.tx_frag?);
        let (peer, data) = u.tx.front()?;
        let total = 8 + data.len();
        let (off, end) = (tf.next, (tf.next + room).min(total));
        let out = &mut buf[l4_start..l4_start + (end - off)];
        if off == 0 {
            out[0..2].copy_from_slice(&local.port().to_be_bytes());
            out[2..4].copy_from_slice(&peer.port().to_be_bytes());
            out[4..6].copy_from_slice(&(total as u16).to_be_bytes());
            out[6..8].copy_from_slice(&tf.checksum.to_be_bytes());
            out[8..].copy_from_slice(&data[..end - 8]);
        } else {
            out.copy_from_slice(&data[off - 8..end - 8]);
        }
        let dst = *peer.ip();
        if end == total {
            u.pop_tx();
        } else {
            u.tx_frag = Some(crate::udp::TxFragments { next: end, ..tf });
        }
        if end == total {
            self.counters.udp_datagrams_out += 1;
        }
        self.counters.ip_frags_out += 1;
        let frag = wire::Ipv4Fragment { offset: off, more_frags: end < total };
        emit_ipv4_fragment(&mut buf[ETH_HDR..], tf.src, dst, IpProtocol::Udp, end - off, tf.ident, frag);
        emit_eth(buf, self.cfg.mac, mac, EtherType::Ipv4);
        Some(pad_to_minimum(buf, l4_start + end - off))
    }

    /// Queue the IP payload `msg` (larger than the MTU) as fragments in control slots, all or
    /// nothing: one slot per fragment, DF clear.
    fn queue_ip_fragments(&mut self, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, msg: &[u8]) -> bool {
        let room = (self.control.slot_size() - ETH_HDR - IP_HDR) & !7;
        if room == 0 || msg.len() > wire::ipv4::MAX_PAYLOAD {
            return false;
        }
        let n = msg.len().div_ceil(room);
        if self.control.free() < n {
            self.counters.drop(DropReason::ControlQueueFull);
            return false;
        }
        let ident = self.rng.next_u32() as u16;
        let mac = self.cfg.mac;
        for (k, piece) in msg.chunks(room).enumerate() {
            let frag = wire::Ipv4Fragment { offset: k * room, more_frags: k + 1 < n };
            self.control.push_with(|b| {
                emit_eth(b, mac, dst_mac, EtherType::Ipv4);
                b[ETH_HDR + IP_HDR..ETH_HDR + IP_HDR + piece.len()].copy_from_slice(piece);
                emit_ipv4_fragment(&mut b[ETH_HDR..], src, dst, proto, piece.len(), ident, frag);
                Some(pad_to_minimum(b, ETH_HDR + IP_HDR + piece.len()))
            });
        }
        self.counters.ip_frags_out += n as u64;
        true
    }

    // ----------------------------------------------------------------------------------------
    // Timers.

    /// When [`Stack::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((at, _))| *at);
        let t = match (t, self.arp.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (t, self.reasm.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Run the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, h))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let live = match self.slots.get_mut(h.index as usize) {
                Some(s) if s.generation == h.generation && s.timer_at == Some(at) => {
                    s.timer_at = None;
                    true
                }
                _ => false,
            };
            if !live {
                continue;
            }
            if let Some(c) = self.conn_mut(h) {
                let (timeouts, rto) = (c.counters.timeouts, c.rto());
                c.handle_timeout(now);
                if c.counters.timeouts != timeouts {
                    // A retransmission timeout hints that the neighbour may be unreachable.
                    let remote = *c.tuple().remote.ip();
                    self.suspect_neighbour(now, remote, rto);
                }
            }
            self.after_tcp(now, h);
        }
        let mut actions = core::mem::take(&mut self.scratch);
        actions.clear();
        self.arp.due(now, &mut actions);
        for (ip, action) in actions.drain(..) {
            match action {
                NeighbourAction::Broadcast => self.send_arp_request(ip, MacAddr::BROADCAST),
                NeighbourAction::Unicast(mac) => self.send_arp_request(ip, mac),
                NeighbourAction::Failed => self.release_arp_waiters(ip),
            }
        }
        self.scratch = actions;
        self.expire_reassembly(now);
    }

    /// Free the datagrams whose reassembly timer expired. RFC 1122 3.3.2 / RFC 792: when
    /// fragment zero was received, an ICMP Time Exceeded (code 1) SHOULD be sent; it goes out
    /// when the sender's MAC is in the ARP cache (no resolution is started for an error).
    fn expire_reassembly(&mut self, now: Instant) {
        while let Some(e) = self.reasm.expire(now) {
            if !e.timed_out {
                continue;
            }
            self.counters.ip_reasm_timeout += 1;
            let Some((header, data)) = e.quote else { continue };
            if !self.has_address(header.dst_addr) {
                continue;
            }
            let Some(mac) = self.next_hop(header.src_addr).and_then(|hop| self.arp.get(now, hop)) else {
                continue;
            };
            let icmp = Icmpv4Repr::DstUnreachable {
                reason: wire::icmpv4::DstUnreachable::Other(1),
                next_hop_mtu: 0,
                header,
                data: &data,
            };
            if self.queue_ip(mac, header.dst_addr, header.src_addr, IpProtocol::Icmp, icmp.buffer_len(), |b| {
                // Same layout as Destination Unreachable (RFC 792): type 11 Time Exceeded,
                // code 1 "fragment reassembly time exceeded".
                icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut *b));
                b[0] = 11;
                b[1] = 1;
                b[2..4].fill(0);
                let c = wire::checksum::checksum(b);
                b[2..4].copy_from_slice(&c.to_be_bytes());
            }) {
                self.counters.icmp_time_exceeded_out += 1;
            }
        }
    }
}

/// Write the Ethernet header at the start of `b`.
fn emit_eth(b: &mut [u8], src: MacAddr, dst: MacAddr, ethertype: EtherType) {
    EthernetRepr { src_addr: src, dst_addr: dst, ethertype }.emit(&mut EthernetFrame::new_unchecked(&mut b[..ETH_HDR]));
}

/// Write the 20-byte IPv4 header (DF set, TTL 64) in front of `payload_len` bytes at `b[20..]`.
fn emit_ipv4(b: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, payload_len: usize, ident: u16) {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len,
        hop_limit: 64,
        dscp_ecn: 0,
        ident,
        dont_frag: true,
    };
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut b[..IP_HDR + payload_len]));
}

/// Write the 20-byte IPv4 header of one fragment (DF clear, TTL 64) in front of
/// `payload_len` bytes at `b[20..]`.
fn emit_ipv4_fragment(
    b: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    payload_len: usize,
    ident: u16,
    frag: wire::Ipv4Fragment,
) {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len,
        hop_limit: 64,
        dscp_ecn: 0,
        ident,
        dont_frag: false,
    };
    repr.emit_fragment(&mut Ipv4Packet::new_unchecked(&mut b[..IP_HDR + payload_len]), frag);
}

/// Zero-pad a frame of `len` bytes to the 60-byte Ethernet minimum (never sending whatever the
/// buffer held before); returns the length to send.
fn pad_to_minimum(b: &mut [u8], len: usize) -> usize {
    let padded = len.max(60).min(b.len());
    if padded > len {
        b[len..padded].fill(0);
    }
    padded
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_tcp;
