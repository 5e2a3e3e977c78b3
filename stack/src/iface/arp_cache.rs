//! The ARP cache (RFC 826) with resolution state.
//!
//! Entries expire after `ttl`; a lookup for an unknown address starts a resolution that
//! retries every `retry` up to `max_retries` times. The interface keeps the sockets waiting for
//! an address and re-queues them when the answer comes (or lets their own timers deal with an
//! address that never answers), so no packet is copied while it waits.

use crate::Map;
use std::net::Ipv4Addr;

use crate::time::{Duration, Instant};
use crate::wire::MacAddr;

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: MacAddr,
    expires: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    next_try: Instant,
    tries: u32,
}

#[derive(Debug, Clone)]
pub struct ArpCache {
    entries: Map<Ipv4Addr, Entry>,
    pending: Map<Ipv4Addr, Pending>,
    pub ttl: Duration,
    pub retry: Duration,
    pub max_retries: u32,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(MacAddr),
    /// Unknown: send an ARP request now.
    Request,
    /// Unknown, a request is already out.
    Waiting,
}

impl Default for ArpCache {
    fn default() -> Self {
        ArpCache {
            entries: Map::default(),
            pending: Map::default(),
            ttl: Duration::from_secs(60),
            retry: Duration::from_secs(1),
            max_retries: 5,
        }
    }
}

impl ArpCache {
    pub fn lookup(&mut self, now: Instant, ip: Ipv4Addr) -> Lookup {
        if let Some(e) = self.entries.get(&ip) {
            if e.expires > now {
                return Lookup::Found(e.mac);
            }
        }
        match self.pending.get(&ip) {
            Some(_) => Lookup::Waiting,
            None => {
                self.pending.insert(ip, Pending { next_try: now + self.retry, tries: 1 });
                Lookup::Request
            }
        }
    }

    /// A peek that starts nothing.
    pub fn get(&self, now: Instant, ip: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&ip).filter(|e| e.expires > now).map(|e| e.mac)
    }

    /// Learn or refresh a mapping. Returns true when a resolution was pending for it.
    pub fn insert(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr) -> bool {
        self.entries.insert(ip, Entry { mac, expires: now + self.ttl });
        self.pending.remove(&ip).is_some()
    }

    /// RFC 826 merge: refresh only an address already known (used for ARP traffic not aimed at
    /// us, such as another host's gratuitous ARP).
    pub fn update_existing(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr) -> bool {
        match self.entries.get_mut(&ip) {
            Some(e) => {
                e.mac = mac;
                e.expires = now + self.ttl;
                true
            }
            None => false,
        }
    }

    pub fn is_pending(&self, ip: Ipv4Addr) -> bool {
        self.pending.contains_key(&ip)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next_try).min()
    }

    /// Addresses whose request must be sent again now; gives up on those past `max_retries`
    /// (returned in `failed`).
    pub fn due(&mut self, now: Instant, retry: &mut Vec<Ipv4Addr>, failed: &mut Vec<Ipv4Addr>) {
        let (retry_every, max) = (self.retry, self.max_retries);
        self.pending.retain(|ip, p| {
            if p.next_try > now {
                return true;
            }
            if p.tries >= max {
                failed.push(*ip);
                return false;
            }
            p.tries += 1;
            p.next_try = now + retry_every;
            retry.push(*ip);
            true
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, MacAddr)> + '_ {
        self.entries.iter().map(|(ip, e)| (*ip, e.mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    #[test]
    fn resolve_then_expire() {
        let mut c = ArpCache::default();
        let t0 = Instant::from_secs(1);
        assert_eq!(c.lookup(t0, IP), Lookup::Request);
        assert_eq!(c.lookup(t0, IP), Lookup::Waiting);
        assert!(c.insert(t0, IP, MAC));
        assert_eq!(c.lookup(t0, IP), Lookup::Found(MAC));
        assert_eq!(c.lookup(t0 + Duration::from_secs(61), IP), Lookup::Request, "expired");
    }

    #[test]
    fn retries_then_fails() {
        let mut c = ArpCache { max_retries: 2, ..ArpCache::default() };
        let t0 = Instant::from_secs(1);
        c.lookup(t0, IP);
        let (mut retry, mut failed) = (vec![], vec![]);
        c.due(t0, &mut retry, &mut failed);
        assert!(retry.is_empty());
        c.due(t0 + Duration::from_secs(1), &mut retry, &mut failed);
        assert_eq!(retry, vec![IP]);
        c.due(t0 + Duration::from_secs(2), &mut retry, &mut failed);
        assert_eq!(failed, vec![IP]);
        assert!(!c.is_pending(IP));
    }

    #[test]
    fn merge_updates_only_known_entries() {
        let mut c = ArpCache::default();
        let t0 = Instant::from_secs(1);
        assert!(!c.update_existing(t0, IP, MAC));
        assert_eq!(c.get(t0, IP), None);
        c.insert(t0, IP, MAC);
        let other = MacAddr([2, 0, 0, 0, 0, 2]);
        assert!(c.update_existing(t0, IP, other));
        assert_eq!(c.get(t0, IP), Some(other));
    }
}
