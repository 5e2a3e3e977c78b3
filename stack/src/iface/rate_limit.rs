//! Token buckets for the answers the interface sends on its own: ICMP errors and RSTs for
//! segments nobody owns. Sans-IO: the bucket is refilled from the `now` it is given.
//!
//! Linux limits ICMP errors globally with `net.ipv4.icmp_msgs_per_sec` = 1000 and
//! `icmp_msgs_burst` = 50 (RFC 1812 4.3.2.8 and RFC 1122 3.2.2: a host SHOULD limit the rate
//! of ICMP error messages). It has no separate knob for RSTs to closed ports; FreeBSD limits
//! them under the same `icmplim` as ICMP port-unreachables (`badport_bandlim`). plex gives each
//! its own bucket with Linux's ICMP figures as defaults.

use crate::time::Instant;

/// A rate and a burst; `per_sec == 0` disables the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_sec: u32,
    /// Messages that may go out back to back after a quiet period.
    pub burst: u32,
}

impl RateLimit {
    /// Linux's `icmp_msgs_per_sec` / `icmp_msgs_burst`.
    pub const LINUX_ICMP: RateLimit = RateLimit { per_sec: 1000, burst: 50 };
    /// No limit: every answer goes out.
    pub const UNLIMITED: RateLimit = RateLimit { per_sec: 0, burst: 0 };
}

const ONE: u64 = 1_000_000;

/// A token bucket counting in millionths of a token (`per_sec` tokens per 10^6 us means
/// `per_sec` millionths per microsecond: integer arithmetic, no drift).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    micro_tokens: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> TokenBucket {
        TokenBucket { limit, micro_tokens: limit.burst as u64 * ONE, last: None }
    }

    /// The rate and burst this bucket enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Take a token at `now`; false when the message must be suppressed.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.limit.per_sec == 0 {
            return true;
        }
        let cap = self.limit.burst.max(1) as u64 * ONE;
        if let Some(last) = self.last {
            if now > last {
                let us = (now - last).total_micros();
                let add = us.saturating_mul(self.limit.per_sec as u64);
                self.micro_tokens = self.micro_tokens.saturating_add(add).min(cap);
            }
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
        if self.micro_tokens >= ONE {
            self.micro_tokens -= ONE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Duration;

    #[test]
    fn burst_then_the_sustained_rate() {
        let mut b = TokenBucket::new(RateLimit::LINUX_ICMP);
        let t0 = Instant::from_secs(10);
        let burst = (0..200).filter(|_| b.allow(t0)).count();
        assert_eq!(burst, 50);
        // One second at 8000 attempts/s: 1000 pass.
        let mut passed = 0;
        for i in 1..=8000u64 {
            if b.allow(t0 + Duration::from_micros(i * 125)) {
                passed += 1;
            }
        }
        assert_eq!(passed, 1000);
        // After a quiet second the bucket is full again, not fuller.
        let t2 = t0 + Duration::from_secs(5);
        assert_eq!((0..200).filter(|_| b.allow(t2)).count(), 50);
    }

    #[test]
    fn unlimited_and_time_going_backwards() {
        let mut u = TokenBucket::new(RateLimit::UNLIMITED);
        assert!((0..10_000).all(|_| u.allow(Instant::from_secs(1))));
        let mut b = TokenBucket::new(RateLimit { per_sec: 10, burst: 1 });
        assert!(b.allow(Instant::from_secs(5)));
        assert!(!b.allow(Instant::from_secs(4)), "no credit from a clock going backwards");
        assert!(!b.allow(Instant::from_secs(5)));
        assert!(b.allow(Instant::from_millis(5100)));
    }
}
