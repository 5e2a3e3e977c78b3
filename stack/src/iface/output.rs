//! The transmit path: frames the interface builds itself go into the control queue
//! (`queue_arp`/`queue_ip`/`queue_tcp`, fragments of large echo replies); [`Stack::poll_transmit`]
//! writes the next frame, control frames and ready sockets taking turns, resolving a socket's next
//! hop first (`emit_from` writes the segment, then the IPv4 and Ethernet headers in front).

use super::*;

impl Stack {
    pub(super) fn queue_arp(&mut self, dst: MacAddr, arp: &ArpRepr) -> bool {
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

    pub(super) fn queue_ip(
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

    pub(super) fn queue_tcp(&mut self, dst_mac: MacAddr, tuple: Tuple, r: &TcpRepr<'_>) -> bool {
        let (src, dst) = (*tuple.local.ip(), *tuple.remote.ip());
        self.queue_ip(dst_mac, src, dst, IpProtocol::Tcp, r.buffer_len(), |b| {
            r.emit(&mut TcpPacket::new_unchecked(b), src, dst)
        })
    }

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
                        self.after_tcp(h);
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
                            self.after_tcp(h);
                        }
                        (*tuple.local.ip(), *tuple.remote.ip(), IpProtocol::Tcp, n)
                    }
                    None => {
                        // It may have changed its timers (persist) while deciding.
                        self.after_tcp(h);
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
                self.after_tcp(h);
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
    pub(super) fn queue_ip_fragments(&mut self, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, msg: &[u8]) -> bool {
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
}

/// Write the Ethernet header at the start of `b`.
fn emit_eth(b: &mut [u8], src: MacAddr, dst: MacAddr, ethertype: EtherType) {
    EthernetRepr { src_addr: src, dst_addr: dst, ethertype }.emit(&mut EthernetFrame::new_unchecked(&mut b[..ETH_HDR]));
}

/// The IPv4 header plex sends: TTL 64, no options; DF set unless it is a fragment.
fn ipv4_repr(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, payload_len: usize, ident: u16, dont_frag: bool) -> Ipv4Repr {
    Ipv4Repr { src_addr: src, dst_addr: dst, next_header: proto, payload_len, hop_limit: 64, dscp_ecn: 0, ident, dont_frag }
}

/// Write the 20-byte IPv4 header (DF set, TTL 64) in front of `payload_len` bytes at `b[20..]`.
fn emit_ipv4(b: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, payload_len: usize, ident: u16) {
    ipv4_repr(src, dst, proto, payload_len, ident, true).emit(&mut Ipv4Packet::new_unchecked(&mut b[..IP_HDR + payload_len]));
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
    ipv4_repr(src, dst, proto, payload_len, ident, false)
        .emit_fragment(&mut Ipv4Packet::new_unchecked(&mut b[..IP_HDR + payload_len]), frag);
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
