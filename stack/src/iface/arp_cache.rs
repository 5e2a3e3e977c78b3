//! The neighbour cache: ARP (RFC 826) with neighbour unreachability detection.
//!
//! ARP has no checksum and no authentication, so what it caches must be validated
//! (RFC 1122 2.3.2.1: "the link-layer address [...] may become invalid", and a host must
//! detect it). The states and their transitions follow the neighbour-unreachability model of
//! RFC 4861 7.3 as Linux applies it to ARP (`NUD_*` in `include/net/neighbour.h`):
//!
//! ```text
//!   (none) --send--> INCOMPLETE --reply--> REACHABLE --reachable_time--> STALE
//!   INCOMPLETE: broadcast request every retrans_time, mcast_probes times, then FAILED
//!   STALE --send--> DELAY --delay_first_probe_time--> PROBE (unicast request, ucast_probes
//!                   times, then the entry is deleted: the next send resolves by broadcast)
//!   REACHABLE / STALE / DELAY / PROBE --forward progress or solicited reply--> REACHABLE
//!   FAILED: sends are dropped (their sockets' own retransmission timers try again) until
//!   retrans_time has passed; the next send then starts a new INCOMPLETE
//! ```
//!
//! Reachability is confirmed (RFC 4861 7.3.1) by a solicited ARP reply, or by TCP's forward
//! progress: an ACK that advances `snd_una`, or in-order data, received from the neighbour's
//! MAC ([`NeighbourCache::confirm`]). A retransmission timeout on a connection through a
//! REACHABLE neighbour is taken as a hint that it may not be ([`NeighbourCache::suspect`]):
//! the entry goes STALE, so the next send starts DELAY and, unless progress confirms it, a
//! unicast PROBE. An unsolicited ARP (a request, a gratuitous ARP) that changes a known MAC
//! installs the new MAC as STALE, as Linux's `neigh_update` does, so a peer whose MAC changes
//! (failover, a replaced NIC) is learned whichever way the news arrives.
//!
//! The interface keeps the sockets waiting for an INCOMPLETE address (parked: no packet is
//! copied while it waits) and wakes them when the answer comes, or when the resolution FAILS
//! (their segment is then dropped under `DropReason::ArpFailed`, which arms their own
//! retransmission timer, so a socket is never left parked without a timer).
//!
//! No allocation per packet: entries live in one map keyed by address; the next timer
//! deadline is cached, so [`NeighbourCache::poll_timeout`] is O(1).

use crate::Map;
use std::net::Ipv4Addr;

use crate::time::{Duration, Instant};
use crate::wire::MacAddr;

/// Linux's `NUD_*` states (RFC 4861 7.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NudState {
    /// Resolution in progress: broadcast requests, no MAC yet.
    Incomplete,
    /// Confirmed within `reachable_time`.
    Reachable,
    /// Usable but unconfirmed: the next send starts DELAY.
    Stale,
    /// Sent to while STALE: waiting `delay_first_probe_time` for forward progress.
    Delay,
    /// Unicast requests to the cached MAC.
    Probe,
    /// Resolution failed: sends are dropped until `until`.
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: NudState,
    /// Valid in REACHABLE, STALE, DELAY and PROBE.
    mac: MacAddr,
    /// Last confirmation (REACHABLE until `confirmed + reachable_time`).
    confirmed: Instant,
    /// INCOMPLETE / DELAY / PROBE: the next transition; FAILED: end of the hold-down.
    timer: Instant,
    /// Requests sent in this INCOMPLETE or PROBE round.
    probes: u32,
    /// When the MAC was last set or confirmed by ARP (Linux `neighbour.updated`): another
    /// MAC is not taken before `locktime` has passed since.
    updated: Instant,
    /// TCP forward progress has come from this MAC since it was set: it is the peer's. An
    /// unproven MAC (learned from an ARP packet, which has no checksum and no authentication)
    /// gives way to the MAC that forward progress comes from ([`NeighbourCache::confirm`]).
    proven: bool,
}

impl Entry {
    fn has_mac(&self) -> bool {
        !matches!(self.state, NudState::Incomplete | NudState::Failed)
    }
    fn timed(&self) -> bool {
        matches!(self.state, NudState::Incomplete | NudState::Delay | NudState::Probe)
    }
}

/// What [`NeighbourCache::due`] asks the interface to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourAction {
    /// Broadcast a request (INCOMPLETE retry).
    Broadcast,
    /// Unicast a request to the cached MAC (PROBE).
    Unicast(MacAddr),
    /// Resolution failed: wake the parked sockets (their segments are dropped).
    Failed,
}

/// The neighbour cache of one interface: an entry per next hop, in a NUD state.
#[derive(Debug, Clone)]
pub struct NeighbourCache {
    entries: Map<Ipv4Addr, Entry>,
    /// Earliest timer of any entry (may be early, never late).
    next_due: Option<Instant>,
    /// How long a confirmation keeps an entry REACHABLE (Linux `base_reachable_time`, 30 s).
    pub reachable_time: Duration,
    /// Between requests (Linux `retrans_time`, 1 s); also FAILED's hold-down.
    pub retrans_time: Duration,
    /// DELAY before the first unicast probe (Linux `delay_first_probe_time`, 5 s).
    pub delay_first_probe_time: Duration,
    /// Broadcast requests per resolution (Linux `mcast_solicit`, 3).
    pub mcast_probes: u32,
    /// Unicast probes before the entry is deleted (Linux `ucast_solicit`, 3).
    pub ucast_probes: u32,
    /// A known MAC is not replaced by another one (except by a gratuitous ARP) within this
    /// time of its last update (Linux `locktime`, 1 s): ARP has no checksum and no
    /// authentication, and the first answer wins against a flapping or damaged second one.
    pub locktime: Duration,
    /// Changes refused under `locktime`.
    pub changes_locked: u64,
    /// Unproven MACs replaced by the MAC forward progress came from ([`NeighbourCache::confirm`]).
    pub repaired: u64,
}

/// The historical name.
pub type ArpCache = NeighbourCache;

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Send to this MAC.
    Found(MacAddr),
    /// Unknown: send an ARP request now (the entry is INCOMPLETE).
    Request,
    /// INCOMPLETE, a request is already out: park.
    Waiting,
    /// FAILED: drop what would be sent.
    Failed,
}

impl Default for NeighbourCache {
    fn default() -> Self {
        NeighbourCache {
            entries: Map::default(),
            next_due: None,
            reachable_time: Duration::from_secs(30),
            retrans_time: Duration::from_secs(1),
            delay_first_probe_time: Duration::from_secs(5),
            mcast_probes: 3,
            ucast_probes: 3,
            locktime: Duration::from_secs(1),
            changes_locked: 0,
            repaired: 0,
        }
    }
}

impl NeighbourCache {
    fn arm(&mut self, at: Instant) {
        if self.next_due.is_none_or(|t| at < t) {
            self.next_due = Some(at);
        }
    }

    fn incomplete(&mut self, now: Instant, ip: Ipv4Addr) {
        let timer = now + self.retrans_time;
        self.entries.insert(ip, Entry { state: NudState::Incomplete, mac: MacAddr([0; 6]), confirmed: now, timer, probes: 1, updated: now, proven: false });
        self.arm(timer);
    }

    /// The MAC to send to `ip` now, driving the state machine as a send does (RFC 4861 7.3.3).
    pub fn lookup(&mut self, now: Instant, ip: Ipv4Addr) -> Lookup {
        let (reachable, delay) = (self.reachable_time, self.delay_first_probe_time);
        let Some(e) = self.entries.get_mut(&ip) else {
            self.incomplete(now, ip);
            return Lookup::Request;
        };
        match e.state {
            NudState::Incomplete => Lookup::Waiting,
            NudState::Failed if now < e.timer => Lookup::Failed,
            NudState::Failed => {
                self.incomplete(now, ip);
                Lookup::Request
            }
            NudState::Reachable if now < e.confirmed + reachable => Lookup::Found(e.mac),
            NudState::Reachable | NudState::Stale => {
                e.state = NudState::Delay;
                e.timer = now + delay;
                let (mac, t) = (e.mac, e.timer);
                self.arm(t);
                Lookup::Found(mac)
            }
            NudState::Delay | NudState::Probe => Lookup::Found(e.mac),
        }
    }

    /// A peek that changes nothing: the MAC a send would use, if any.
    pub fn get(&self, _now: Instant, ip: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&ip).filter(|e| e.has_mac()).map(|e| e.mac)
    }

    /// The entry's state, for tests and `plex ctl`.
    pub fn state(&self, ip: Ipv4Addr) -> Option<NudState> {
        self.entries.get(&ip).map(|e| e.state)
    }

    /// An ARP packet from `ip` at `mac`, aimed at us (Linux `arp_process` -> `neigh_update`):
    /// a reply we solicited makes the entry REACHABLE; anything else (a request, an unsolicited
    /// reply) installs or changes the MAC as STALE, and leaves a known, unchanged MAC's state
    /// alone. A changed MAC within `locktime` of the entry's last update is refused (counted in
    /// `changes_locked`). Returns true when an INCOMPLETE resolution completed (wake its
    /// sockets).
    pub fn learn(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr, solicited_reply: bool) -> bool {
        self.update(now, ip, mac, solicited_reply, false)
    }

    /// A gratuitous ARP (sender address = target address) from `ip` at `mac`: an address
    /// that moved announces itself (a DVIPA takeover), so it changes the MAC at once,
    /// whatever `locktime` says (Linux's `is_garp` override).
    pub fn learn_gratuitous(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr) -> bool {
        self.update(now, ip, mac, false, true)
    }

    fn update(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr, solicited_reply: bool, override_lock: bool) -> bool {
        let locktime = self.locktime;
        match self.entries.get_mut(&ip) {
            Some(e) => {
                let was_incomplete = e.state == NudState::Incomplete;
                let was_failed = e.state == NudState::Failed;
                let changed = e.has_mac() && e.mac != mac;
                if changed && !override_lock && now < e.updated + locktime {
                    self.changes_locked += 1;
                    return false;
                }
                if solicited_reply && (e.state != NudState::Reachable || e.mac == mac) {
                    let proven = e.proven && e.mac == mac;
                    *e = Entry { state: NudState::Reachable, mac, confirmed: now, timer: now, probes: 0, updated: now, proven };
                } else if !e.has_mac() || e.mac != mac {
                    // New or changed MAC, not confirmed: usable, validated on first use.
                    *e = Entry { state: NudState::Stale, mac, confirmed: now, timer: now, probes: 0, updated: now, proven: false };
                } else if solicited_reply {
                    e.confirmed = now;
                    e.updated = now;
                }
                was_incomplete || was_failed
            }
            None => {
                let state = if solicited_reply { NudState::Reachable } else { NudState::Stale };
                self.entries.insert(ip, Entry { state, mac, confirmed: now, timer: now, probes: 0, updated: now, proven: false });
                false
            }
        }
    }

    /// Learn `ip` at `mac` from something other than ARP (a SYN's source MAC, a test's
    /// setup): installed as STALE, so its first use is validated; not held by `locktime`.
    /// Returns true when a resolution was pending.
    pub fn insert(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr) -> bool {
        self.update(now, ip, mac, false, true)
    }

    /// RFC 826 merge: refresh only an address already known (ARP traffic not aimed at us, such
    /// as another host's gratuitous ARP, `gratuitous` then). A changed MAC is installed as
    /// STALE, subject to `locktime` unless gratuitous.
    pub fn update_existing(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr, gratuitous: bool) -> bool {
        match self.entries.get(&ip) {
            Some(e) if e.has_mac() || e.state == NudState::Incomplete => {
                self.update(now, ip, mac, false, gratuitous);
                true
            }
            _ => false,
        }
    }

    /// Forward progress from `ip` at `mac` (RFC 4861 7.3.1 upper-layer confirmation): the entry
    /// becomes REACHABLE, if it holds that MAC. If it holds another MAC that nothing has proven
    /// (one learned from an ARP packet since the last progress: a damaged or forged packet can
    /// name any MAC for any address, and a solicited-looking reply even makes it REACHABLE),
    /// `repair` decides: true takes `mac` (REACHABLE, proven, counted in `repaired`), since
    /// segments that move a connection forward carry sequence numbers no forger knows.
    /// The caller passes false where the frame's source MAC is not the peer's (a segment the
    /// distributor's router forwarded). A proven MAC only changes through ARP.
    pub fn confirm(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr, repair: impl FnOnce() -> bool) {
        let Some(e) = self.entries.get_mut(&ip) else { return };
        if !e.has_mac() {
            return;
        }
        if e.mac == mac {
            e.state = NudState::Reachable;
            e.confirmed = now;
            e.probes = 0;
            e.proven = true;
        } else if !e.proven && !mac.is_multicast() && repair() {
            *e = Entry { state: NudState::Reachable, mac, confirmed: now, timer: now, probes: 0, updated: now, proven: true };
            self.repaired += 1;
        }
    }

    /// A hint that `ip` may be unreachable (a retransmission timeout through it): a REACHABLE
    /// entry not confirmed since `since` goes STALE, so the next send validates it.
    pub fn suspect(&mut self, ip: Ipv4Addr, since: Instant) {
        if let Some(e) = self.entries.get_mut(&ip) {
            if e.state == NudState::Reachable && e.confirmed <= since {
                e.state = NudState::Stale;
            }
        }
    }

    /// A resolution of `ip` is in progress (INCOMPLETE).
    pub fn is_pending(&self, ip: Ipv4Addr) -> bool {
        self.state(ip) == Some(NudState::Incomplete)
    }

    /// When [`NeighbourCache::due`] must next be called (possibly early, never late).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_due
    }

    /// Run the timers due at `now`; what the interface must send or wake is pushed to `out`.
    pub fn due(&mut self, now: Instant, out: &mut Vec<(Ipv4Addr, NeighbourAction)>) {
        if self.next_due.is_none_or(|t| t > now) {
            return;
        }
        let (retrans, mcast, ucast) = (self.retrans_time, self.mcast_probes, self.ucast_probes);
        let mut next: Option<Instant> = None;
        self.entries.retain(|ip, e| {
            if e.timed() && e.timer <= now {
                match e.state {
                    NudState::Incomplete if e.probes < mcast => {
                        e.probes += 1;
                        e.timer = now + retrans;
                        out.push((*ip, NeighbourAction::Broadcast));
                    }
                    NudState::Incomplete => {
                        e.state = NudState::Failed;
                        e.timer = now + retrans;
                        out.push((*ip, NeighbourAction::Failed));
                    }
                    NudState::Delay => {
                        e.state = NudState::Probe;
                        e.probes = 1;
                        e.timer = now + retrans;
                        out.push((*ip, NeighbourAction::Unicast(e.mac)));
                    }
                    NudState::Probe if e.probes < ucast => {
                        e.probes += 1;
                        e.timer = now + retrans;
                        out.push((*ip, NeighbourAction::Unicast(e.mac)));
                    }
                    // RFC 4861 7.3.3: no answer to the unicast probes: delete the entry; the
                    // next send resolves by broadcast.
                    _ => return false,
                }
            }
            if e.timed() {
                next = Some(next.map_or(e.timer, |n: Instant| n.min(e.timer)));
            }
            true
        });
        self.next_due = next;
    }

    /// Entries, in any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// No entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Entries with a usable MAC.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, MacAddr)> + '_ {
        self.entries.iter().filter(|(_, e)| e.has_mac()).map(|(ip, e)| (*ip, e.mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const BOGUS: MacAddr = MacAddr([2, 0, 0, 0, 0x40, 1]);

    fn s(x: u64) -> Instant {
        Instant::from_secs(x)
    }

    fn due(c: &mut NeighbourCache, now: Instant) -> Vec<(Ipv4Addr, NeighbourAction)> {
        let mut out = vec![];
        c.due(now, &mut out);
        out
    }

    #[test]
    fn resolve_then_stale_then_delay() {
        let mut c = NeighbourCache::default();
        assert_eq!(c.lookup(s(1), IP), Lookup::Request);
        assert_eq!(c.lookup(s(1), IP), Lookup::Waiting);
        assert!(c.learn(s(1), IP, MAC, true));
        assert_eq!(c.state(IP), Some(NudState::Reachable));
        assert_eq!(c.lookup(s(1), IP), Lookup::Found(MAC));
        // reachable_time passes unconfirmed: still used, but validated (DELAY).
        assert_eq!(c.lookup(s(31), IP), Lookup::Found(MAC));
        assert_eq!(c.state(IP), Some(NudState::Delay));
        assert!(due(&mut c, s(31)).is_empty(), "the resolution's old deadline is spurious");
        assert_eq!(c.poll_timeout(), Some(s(36)));
        // Forward progress confirms it before the probe.
        c.confirm(s(33), IP, MAC, || true);
        assert_eq!(c.state(IP), Some(NudState::Reachable));
        assert!(due(&mut c, s(36)).is_empty());
        assert_eq!(c.state(IP), Some(NudState::Reachable));
    }

    #[test]
    fn incomplete_retries_then_fails_then_holds_down() {
        let mut c = NeighbourCache::default();
        let t0 = s(1);
        c.lookup(t0, IP);
        assert!(due(&mut c, t0).is_empty());
        assert_eq!(due(&mut c, s(2)), vec![(IP, NeighbourAction::Broadcast)]);
        assert_eq!(due(&mut c, s(3)), vec![(IP, NeighbourAction::Broadcast)]);
        assert_eq!(due(&mut c, s(4)), vec![(IP, NeighbourAction::Failed)]);
        assert_eq!(c.state(IP), Some(NudState::Failed));
        assert_eq!(c.poll_timeout(), None, "FAILED needs no timer");
        assert_eq!(c.lookup(s(4), IP), Lookup::Failed, "dropped during the hold-down");
        assert_eq!(c.lookup(s(5), IP), Lookup::Request, "then a new resolution");
        assert_eq!(c.poll_timeout(), Some(s(6)));
    }

    #[test]
    fn unconfirmed_bogus_mac_is_probed_then_re_resolved() {
        let mut c = NeighbourCache::default();
        c.lookup(s(0), IP);
        c.learn(s(0), IP, BOGUS, true);
        c.suspect(IP, s(1)); // a retransmission timeout
        assert_eq!(c.state(IP), Some(NudState::Stale));
        assert_eq!(c.lookup(s(1), IP), Lookup::Found(BOGUS));
        assert_eq!(c.state(IP), Some(NudState::Delay));
        assert_eq!(due(&mut c, s(6)), vec![(IP, NeighbourAction::Unicast(BOGUS))]);
        assert_eq!(c.state(IP), Some(NudState::Probe));
        assert_eq!(due(&mut c, s(7)), vec![(IP, NeighbourAction::Unicast(BOGUS))]);
        assert_eq!(due(&mut c, s(8)), vec![(IP, NeighbourAction::Unicast(BOGUS))]);
        assert!(due(&mut c, s(9)).is_empty());
        assert_eq!(c.state(IP), None, "deleted after ucast_probes");
        assert_eq!(c.lookup(s(9), IP), Lookup::Request, "re-resolved by broadcast");
        assert!(c.learn(s(9), IP, MAC, true));
        assert_eq!(c.lookup(s(9), IP), Lookup::Found(MAC));
    }

    #[test]
    fn confirmation_only_for_the_cached_mac() {
        let mut c = NeighbourCache::default();
        c.learn(s(0), IP, BOGUS, true);
        c.suspect(IP, s(1));
        c.confirm(s(1), IP, MAC, || false);
        assert_eq!(c.state(IP), Some(NudState::Stale), "progress from another MAC confirms nothing");
        c.confirm(s(1), IP, BOGUS, || true);
        assert_eq!(c.state(IP), Some(NudState::Reachable));
        c.suspect(IP, s(0));
        assert_eq!(c.state(IP), Some(NudState::Reachable), "confirmed after the hint's start");
        // Proven by progress now: progress from another MAC does not replace it.
        c.confirm(s(2), IP, MAC, || true);
        assert_eq!((c.get(s(2), IP), c.repaired), (Some(BOGUS), 0));
    }

    #[test]
    fn an_unproven_mac_gives_way_to_the_mac_progress_comes_from() {
        let mut c = NeighbourCache::default();
        c.learn(s(0), IP, BOGUS, true);
        c.confirm(s(1), IP, MAC, || true);
        assert_eq!((c.get(s(1), IP), c.state(IP), c.repaired), (Some(MAC), Some(NudState::Reachable), 1));
        // Where the caller says the source MAC is not the peer's, nothing changes.
        let mut c = NeighbourCache::default();
        c.learn(s(0), IP, BOGUS, true);
        c.confirm(s(1), IP, MAC, || false);
        assert_eq!((c.get(s(1), IP), c.repaired), (Some(BOGUS), 0));
    }

    #[test]
    fn changed_mac_is_learned_as_stale() {
        let mut c = NeighbourCache::default();
        c.learn(s(0), IP, MAC, true);
        // A request from the peer's new NIC.
        assert!(!c.learn(s(1), IP, BOGUS, false));
        assert_eq!(c.state(IP), Some(NudState::Stale));
        assert_eq!(c.get(s(1), IP), Some(BOGUS));
        // The same MAC again does not downgrade a REACHABLE entry.
        c.learn(s(2), IP, BOGUS, true);
        c.learn(s(3), IP, BOGUS, false);
        assert_eq!(c.state(IP), Some(NudState::Reachable));
    }

    #[test]
    fn merge_updates_only_known_entries() {
        let mut c = NeighbourCache::default();
        let t0 = s(1);
        assert!(!c.update_existing(t0, IP, MAC, false));
        assert_eq!(c.get(t0, IP), None);
        c.insert(t0, IP, MAC);
        let other = MacAddr([2, 0, 0, 0, 0, 2]);
        assert!(c.update_existing(s(2), IP, other, false));
        assert_eq!(c.get(s(2), IP), Some(other));
    }

    /// Seed 4830 of sim_fragments: a request from the peer, damaged in its sender MAC, arrived
    /// just after the peer's reply and replaced the good MAC: every datagram went to a MAC
    /// nobody has until NUD noticed, seconds later. Linux's locktime keeps the first answer.
    #[test]
    fn a_second_mac_within_locktime_is_refused_unless_gratuitous() {
        let mut c = NeighbourCache::default();
        c.lookup(s(0), IP);
        assert!(c.learn(s(0), IP, MAC, true));
        let soon = s(0) + Duration::from_millis(20);
        assert!(!c.learn(soon, IP, BOGUS, false));
        c.update_existing(soon, IP, BOGUS, false);
        assert_eq!((c.get(soon, IP), c.state(IP), c.changes_locked), (Some(MAC), Some(NudState::Reachable), 2));
        // The same MAC is no change: a confirmation goes through.
        c.learn(soon, IP, MAC, true);
        assert_eq!(c.changes_locked, 2);
        // An address that moved announces itself: taken at once.
        assert!(c.update_existing(soon, IP, BOGUS, true));
        assert_eq!(c.get(soon, IP), Some(BOGUS));
        // After locktime, a changed MAC is learned (STALE, validated on use).
        let later = soon + Duration::from_secs(1);
        c.learn(later, IP, MAC, false);
        assert_eq!((c.get(later, IP), c.state(IP)), (Some(MAC), Some(NudState::Stale)));
    }
}
