//! The receive path: [`Stack::receive`] takes one Ethernet frame to ARP or IPv4; IPv4 goes
//! through the reassembly hook to ICMP (echo, PMTU), UDP (socket or port unreachable) or TCP
//! (exact 4-tuple, else the listener path in `listen.rs`, else a RST).

use super::*;

impl Stack {
    /// Process one inbound Ethernet frame, and say what became of it: consumed here, dropped
    /// (also counted under its reason), or to be handed to another stack of the cluster (the
    /// caller does the forwarding; the stack keeps nothing of the frame).
    pub fn receive(&mut self, now: Instant, frame: &[u8]) -> Received {
        self.rx_outcome = Received::Consumed;
        self.receive_frame(now, frame);
        self.rx_outcome
    }

    /// A drop on the receive path: counted, and reported by [`Stack::receive`].
    pub(super) fn drop_rx(&mut self, reason: DropReason) {
        self.counters.drop(reason);
        self.rx_outcome = Received::Dropped(reason);
    }

    fn receive_frame(&mut self, now: Instant, frame: &[u8]) {
        self.rx_now = now;
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len() as u64;
        let eth = match EthernetFrame::new_checked(frame) {
            Ok(e) => e,
            Err(_) => return self.drop_rx(DropReason::EthTruncated),
        };
        let eth_repr = match EthernetRepr::parse(&eth) {
            Ok(r) => r,
            Err(_) => return self.drop_rx(DropReason::EthTruncated),
        };
        if eth_repr.dst_addr != self.cfg.mac && !eth_repr.dst_addr.is_broadcast() {
            return self.drop_rx(DropReason::EthNotForUs);
        }
        let payload = &frame[ETH_HDR..];
        match eth_repr.ethertype {
            EtherType::Arp => self.receive_arp(now, payload),
            EtherType::Ipv4 => self.receive_ipv4(now, eth_repr.src_addr, payload),
            _ => self.drop_rx(DropReason::EthUnsupportedType),
        }
    }

    fn receive_arp(&mut self, now: Instant, payload: &[u8]) {
        let arp = match ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) {
            Ok(a) => a,
            Err(wire::Error::Unsupported) => return self.drop_rx(DropReason::ArpUnsupported),
            Err(_) => return self.drop_rx(DropReason::ArpMalformed),
        };
        match arp.operation {
            ArpOperation::Request => self.counters.arp_requests_in += 1,
            ArpOperation::Reply => self.counters.arp_replies_in += 1,
        }
        let sender = arp.source_protocol_addr;
        let for_us = self.answers_arp_for(arp.target_protocol_addr);
        // RFC 826 merge: refresh a known sender; learn it when the packet is for us. A reply
        // to us is REACHABLE, anything else (a request) STALE: validated on first use
        // (RFC 1122 2.3.2.1; arp_cache.rs has the state machine).
        // A gratuitous ARP (sender = target) announces a moved address and changes a known
        // MAC at once; any other change waits out the cache's locktime (arp_cache.rs).
        let gratuitous = sender == arp.target_protocol_addr;
        let locked = self.arp.changes_locked;
        let learned = if for_us && !sender.is_unspecified() && !arp.source_hardware_addr.is_multicast() {
            let reply = arp.operation == ArpOperation::Reply;
            self.arp.learn(now, sender, arp.source_hardware_addr, reply);
            true
        } else {
            self.arp.update_existing(now, sender, arp.source_hardware_addr, gratuitous)
        };
        self.counters.arp_changes_locked += self.arp.changes_locked - locked;
        if learned {
            self.release_arp_waiters(sender);
        }
        if !for_us {
            return self.drop_rx(DropReason::ArpNotForUs);
        }
        if arp.operation == ArpOperation::Request {
            let reply = ArpRepr {
                operation: ArpOperation::Reply,
                source_hardware_addr: self.cfg.mac,
                source_protocol_addr: arp.target_protocol_addr,
                target_hardware_addr: arp.source_hardware_addr,
                target_protocol_addr: arp.source_protocol_addr,
            };
            if self.queue_arp(arp.source_hardware_addr, &reply) {
                self.counters.arp_replies_out += 1;
            }
        }
    }

    fn receive_ipv4(&mut self, now: Instant, src_mac: MacAddr, payload: &[u8]) {
        let packet = match ip_checked(payload) {
            Ok(p) => p,
            Err(e) => return self.drop_rx(DropReason::ip(e)),
        };
        let (ip, frag) = match Ipv4Repr::parse_fragment(&packet, self.cfg.verify_checksums) {
            Ok(r) => r,
            Err(e) => return self.drop_rx(DropReason::ip(e)),
        };
        if !self.has_address(ip.dst_addr) {
            return self.drop_rx(DropReason::IpNotForUs);
        }
        if ip.src_addr.is_broadcast() || ip.src_addr.is_multicast() || ip.src_addr.is_unspecified() {
            return self.drop_rx(DropReason::IpBadSource);
        }
        if let Some(frag) = frag {
            // RFC 1122 3.3.2: a host MUST reassemble (see reassembly.rs).
            self.counters.ip_frags_in += 1;
            return match self.reasm.push(now, &ip, frag, packet.payload()) {
                Outcome::Held => {}
                Outcome::Dropped { reason, discarded } => {
                    self.drop_rx(reason);
                    if discarded {
                        self.counters.ip_reasm_discarded += 1;
                    }
                }
                Outcome::Complete(ip) => {
                    self.counters.ip_reasm_ok += 1;
                    let whole = self.reasm.take_output();
                    self.deliver_ipv4(now, src_mac, &ip, &whole[..ip.payload_len]);
                    self.reasm.restore_output(whole);
                    if let Received::Forward { .. } | Received::Shard { .. } | Received::Hold = self.rx_outcome {
                        // The frame in hand is the last fragment, not the datagram: there is
                        // nothing whole to hand over (the distributor forwards fragments
                        // before reassembly, by their 3-tuple).
                        self.drop_rx(DropReason::TcpClusterDrop);
                    }
                }
            };
        }
        self.deliver_ipv4(now, src_mac, &ip, packet.payload());
    }

    /// A whole datagram (received in one frame or reassembled) to its protocol.
    fn deliver_ipv4(&mut self, now: Instant, src_mac: MacAddr, ip: &Ipv4Repr, body: &[u8]) {
        let ip = *ip;
        match ip.next_header {
            IpProtocol::Tcp => self.receive_tcp(now, src_mac, &ip, body),
            IpProtocol::Udp => self.receive_udp(src_mac, &ip, body),
            IpProtocol::Icmp => self.receive_icmp(src_mac, &ip, body),
            _ => self.drop_rx(DropReason::IpUnsupportedProtocol),
        }
    }

    fn receive_icmp(&mut self, src_mac: MacAddr, ip: &Ipv4Repr, body: &[u8]) {
        let icmp = match Icmpv4Packet::new_checked(body)
            .and_then(|p| Icmpv4Repr::parse(&p, self.cfg.verify_checksums))
        {
            Ok(r) => r,
            Err(e) => return self.drop_rx(DropReason::icmp(e)),
        };
        match icmp {
            Icmpv4Repr::EchoRequest { ident, seq_no, data } => {
                self.counters.icmp_echo_in += 1;
                let reply = Icmpv4Repr::EchoReply { ident, seq_no, data };
                if IP_HDR + reply.buffer_len() > self.cfg.mtu {
                    // As large as the (reassembled) request: leaves in fragments.
                    let mut msg = core::mem::take(&mut self.frag_tx);
                    let n = reply.buffer_len();
                    let ok = n <= msg.len() && {
                        reply.emit(&mut Icmpv4Packet::new_unchecked(&mut msg[..n]));
                        self.queue_ip_fragments(src_mac, ip.dst_addr, ip.src_addr, IpProtocol::Icmp, &msg[..n])
                    };
                    self.frag_tx = msg;
                    if ok {
                        self.counters.icmp_echo_out += 1;
                    }
                } else if self.queue_ip(src_mac, ip.dst_addr, ip.src_addr, IpProtocol::Icmp, reply.buffer_len(), |b| {
                    reply.emit(&mut Icmpv4Packet::new_unchecked(b))
                }) {
                    self.counters.icmp_echo_out += 1;
                }
            }
            Icmpv4Repr::DstUnreachable { reason, next_hop_mtu, header, data } => {
                self.counters.icmp_unreachable_in += 1;
                if header.next_header != IpProtocol::Tcp || data.len() < 8 {
                    return self.drop_rx(DropReason::IcmpNoConnection);
                }
                let sport = u16::from_be_bytes([data[0], data[1]]);
                let dport = u16::from_be_bytes([data[2], data[3]]);
                let tuple = Tuple {
                    local: SocketAddrV4::new(header.src_addr, sport),
                    remote: SocketAddrV4::new(header.dst_addr, dport),
                };
                let Some(&h) = self.connections.get(&tuple) else {
                    return self.drop_rx(DropReason::IcmpNoConnection);
                };
                if reason == wire::icmpv4::DstUnreachable::FragRequired {
                    if let Some(c) = self.conn_mut(h) {
                        // RFC 5927 5.2: the quoted sequence number must be in flight.
                        let seq = SeqNumber(u32::from_be_bytes([data[4], data[5], data[6], data[7]]));
                        if seq >= c.snd_una() && seq < c.snd_nxt() {
                            c.handle_path_mtu(next_hop_mtu);
                        }
                    }
                    self.after_tcp(h);
                }
            }
            Icmpv4Repr::EchoReply { .. } => {}
        }
    }

    fn receive_udp(&mut self, src_mac: MacAddr, ip: &Ipv4Repr, body: &[u8]) {
        let udp = match UdpPacket::new_checked(body)
            .and_then(|p| UdpRepr::parse(&p, ip.src_addr, ip.dst_addr, self.cfg.verify_checksums))
        {
            Ok(r) => r,
            Err(e) => return self.drop_rx(DropReason::udp(e)),
        };
        self.counters.udp_datagrams_in += 1;
        let local = SocketAddrV4::new(ip.dst_addr, udp.dst_port);
        let h = self
            .udp
            .get(&local)
            .or_else(|| self.udp.get(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, udp.dst_port)))
            .copied();
        let Some(h) = h else {
            if let Some(shard) = self.cluster.route_datagram(local) {
                // Another stack of the process (a shard) has the socket.
                self.counters.udp_forwarded += 1;
                self.rx_outcome = Received::Shard { shard };
                return;
            }
            self.drop_rx(DropReason::UdpNoSocket);
            // RFC 1122 4.1.3.1: port unreachable.
            self.send_unreachable(src_mac, ip, body, wire::icmpv4::DstUnreachable::PortUnreachable);
            return;
        };
        let peer = SocketAddrV4::new(ip.src_addr, udp.src_port);
        let ok = match self.socket_mut(h) {
            Some(Socket::Udp(u)) => {
                let ok = u.rx.push(peer, udp.payload);
                if !ok {
                    u.rx_dropped += 1;
                }
                ok
            }
            _ => false,
        };
        if ok {
            self.events.push_back((h, SocketEvent::UdpReadable));
        } else {
            self.drop_rx(DropReason::UdpQueueFull);
        }
    }

    fn send_unreachable(
        &mut self,
        src_mac: MacAddr,
        ip: &Ipv4Repr,
        body: &[u8],
        reason: wire::icmpv4::DstUnreachable,
    ) {
        // RFC 1122 3.2.2 / RFC 1812 4.3.2.8: limit the rate of ICMP errors.
        if !self.icmp_bucket.allow(self.rx_now) {
            self.counters.icmp_errors_rate_limited += 1;
            return;
        }
        let quoted = &body[..body.len().min(8)];
        let icmp = Icmpv4Repr::DstUnreachable { reason, next_hop_mtu: 0, header: *ip, data: quoted };
        if self.queue_ip(src_mac, ip.dst_addr, ip.src_addr, IpProtocol::Icmp, icmp.buffer_len(), |b| {
            icmp.emit(&mut Icmpv4Packet::new_unchecked(b))
        }) {
            self.counters.icmp_unreachable_out += 1;
        }
    }

    fn receive_tcp(&mut self, now: Instant, src_mac: MacAddr, ip: &Ipv4Repr, body: &[u8]) {
        let packet = match TcpPacket::new_checked(body) {
            Ok(p) => p,
            Err(e) => return self.drop_rx(DropReason::tcp(e)),
        };
        let seg = match TcpRepr::parse(&packet, ip.src_addr, ip.dst_addr, self.cfg.verify_checksums) {
            Ok(s) => s,
            Err(e) => return self.drop_rx(DropReason::tcp(e)),
        };
        self.counters.tcp_segs_in += 1;
        let tuple = Tuple {
            local: SocketAddrV4::new(ip.dst_addr, seg.dst_port),
            remote: SocketAddrV4::new(ip.src_addr, seg.src_port),
        };
        // 1. An existing connection: established traffic never asks the cluster anything.
        if let Some(&h) = self.connections.get(&tuple) {
            // A new SYN to a TIME-WAIT connection is not reopened here (RFC 6191 is not
            // implemented): it gets the TIME-WAIT ACK, and the client retries later.
            if let Some(c) = self.conn_mut(h) {
                let (una, nxt) = (c.snd_una(), c.rcv_nxt());
                c.handle_segment(now, &seg);
                if c.snd_una() != una || c.rcv_nxt() != nxt {
                    // Forward progress confirms the neighbour (RFC 4861 7.3.1).
                    self.confirm_neighbour(now, *tuple.local.ip(), *tuple.remote.ip(), src_mac);
                }
            }
            self.after_tcp(h);
            return;
        }
        // 2. Not ours: the cluster may know where it belongs (the distributor's connection
        // table, a handed-off connection).
        let is_syn = seg.control == TcpControl::Syn && seg.ack_number.is_none();
        match self.cluster.route_inbound(now, &tuple, is_syn) {
            InboundRoute::Local => {}
            InboundRoute::Forward { stack } => {
                self.counters.tcp_forwarded += 1;
                self.rx_outcome = Received::Forward { stack };
                return;
            }
            InboundRoute::Shard { shard } => {
                self.counters.tcp_shard_handed += 1;
                self.rx_outcome = Received::Shard { shard };
                return;
            }
            InboundRoute::Drop => return self.drop_rx(DropReason::TcpClusterDrop),
            InboundRoute::Hold => {
                self.counters.tcp_held += 1;
                self.rx_outcome = Received::Hold;
                return;
            }
            InboundRoute::Reset => {
                self.drop_rx(DropReason::TcpClusterReset);
                return self.reply_rst(src_mac, tuple, &seg);
            }
        }
        // 3. A listener: exact address, then wildcard.
        let lh = self
            .listeners
            .get(&tuple.local)
            .or_else(|| self.listeners.get(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, tuple.local.port())))
            .copied();
        if let Some(lh) = lh {
            return self.listen_segment(now, src_mac, lh, tuple, &seg);
        }
        // 4. Nobody: RST (RFC 9293 3.10.7.1).
        self.drop_rx(DropReason::TcpNoSocket);
        self.reply_rst(src_mac, tuple, &seg);
    }

    /// RST for a segment nobody owns (RFC 9293 3.10.7.1): never in answer to a RST.
    pub(super) fn reply_rst(&mut self, src_mac: MacAddr, tuple: Tuple, seg: &TcpRepr<'_>) {
        if seg.control == TcpControl::Rst {
            return;
        }
        if !self.rst_bucket.allow(self.rx_now) {
            self.counters.tcp_rst_rate_limited += 1;
            return;
        }
        let mut r = TcpRepr::new(tuple.local.port(), tuple.remote.port(), SeqNumber(0));
        r.control = TcpControl::Rst;
        match seg.ack_number {
            Some(ack) => r.seq_number = ack,
            None => r.ack_number = Some(seg.seq_number + seg.segment_len()),
        }
        if self.queue_tcp(src_mac, tuple, &r) {
            self.counters.tcp_rst_out += 1;
        }
    }
}

fn ip_checked(buf: &[u8]) -> Result<Ipv4Packet<&[u8]>, wire::Error> {
    Ipv4Packet::new_checked(buf)
}
