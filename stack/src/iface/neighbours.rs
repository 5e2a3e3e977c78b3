//! Neighbours: sockets parked while their next hop is resolved (released when ARP answers),
//! ARP requests, and the confirm/suspect hints TCP gives the neighbour cache.

use super::*;

impl Stack {
    /// Wake the sockets parked on `ip`: its resolution completed (they send to the new MAC)
    /// or failed (what they send now is dropped under `ArpFailed`, which arms their own
    /// retransmission timers; a socket is never left parked without one). The waiter list
    /// keeps its capacity: no allocation per resolution once a hop has been waited for.
    pub(super) fn release_arp_waiters(&mut self, ip: Ipv4Addr) {
        let Some(list) = self.arp_waiters.get_mut(&ip) else { return };
        let mut waiters = core::mem::take(list);
        for h in waiters.drain(..) {
            if let Some(slot) = self.slots.get_mut(h.index as usize) {
                if slot.generation == h.generation && slot.waiting_arp == Some(ip) {
                    slot.waiting_arp = None;
                }
            }
            self.mark_ready(h);
        }
        if let Some(list) = self.arp_waiters.get_mut(&ip) {
            *list = waiters;
        }
    }

    pub(super) fn unready(&mut self, h: SocketHandle) {
        if self.ready.front() == Some(&h) {
            self.ready.pop_front();
        } else {
            self.ready.retain(|x| *x != h);
        }
        if let Some(slot) = self.slots.get_mut(h.index as usize) {
            if slot.generation == h.generation {
                slot.ready = false;
            }
        }
    }

    /// TCP forward progress from `remote` to `local`, received from `src_mac`: its next hop is
    /// reachable, at `src_mac` (which replaces a MAC only an ARP packet vouched for; not on an
    /// internal address, whose segments the distributor's router forwarded with its own MAC).
    pub(super) fn confirm_neighbour(&mut self, now: Instant, local: Ipv4Addr, remote: Ipv4Addr, src_mac: MacAddr) {
        if let Some(hop) = self.next_hop(remote) {
            let homes = &self.homes;
            let members = &self.cluster_macs;
            let before = self.arp.repaired;
            // Not from another stack of the cluster: a frame it forwarded (the distributor's
            // router, or a dead router's fast path still attached) carries its MAC, not the peer's.
            self.arp.confirm(now, hop, src_mac, || !members.contains(&src_mac) && !homes.iter().any(|h| h.internal && h.addr == local));
            self.counters.arp_repaired += self.arp.repaired - before;
        }
    }

    /// A retransmission timeout towards `remote` after `rto` without an answer: a REACHABLE
    /// next hop not confirmed in that time goes STALE, to be validated by the next send.
    pub(super) fn suspect_neighbour(&mut self, now: Instant, remote: Ipv4Addr, rto: Duration) {
        if let Some(hop) = self.next_hop(remote) {
            let since = Instant::from_micros(now.total_micros().saturating_sub(rto.total_micros()));
            self.arp.suspect(hop, since);
        }
    }

    /// An ARP request for `ip`: broadcast to resolve, or unicast to `dst` to probe a cached
    /// MAC (NUD PROBE, RFC 1122 2.3.2.1 (b) "unicast poll").
    pub(super) fn send_arp_request(&mut self, ip: Ipv4Addr, dst: MacAddr) {
        let src = self.source_for(ip).unwrap_or(Ipv4Addr::UNSPECIFIED);
        let req = ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: self.cfg.mac,
            source_protocol_addr: src,
            target_hardware_addr: if dst.is_broadcast() { MacAddr([0; 6]) } else { dst },
            target_protocol_addr: ip,
        };
        if self.queue_arp(dst, &req) {
            self.counters.arp_requests_out += 1;
        }
    }
}
