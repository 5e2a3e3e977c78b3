//! Timers: [`Stack::poll_timeout`] (O(1): one live heap entry per socket) and
//! [`Stack::handle_timeout`] (due sockets, the neighbour cache's timer actions, and IPv4
//! reassembly expiry with its ICMP time-exceeded).

use super::*;

impl Stack {
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
            self.after_tcp(h);
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
