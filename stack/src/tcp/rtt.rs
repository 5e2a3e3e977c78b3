//! Round-trip time estimation and the retransmission timeout (RFC 6298).

use crate::time::Duration;

/// SRTT/RTTVAR estimator with the RFC 6298 constants (alpha = 1/8, beta = 1/4, K = 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttEstimator {
    /// Smoothed RTT in microseconds; `None` before the first measurement.
    srtt: Option<u64>,
    rttvar: u64,
    rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
    /// Exponential backoff shift applied after timeouts (RFC 6298 5.5).
    backoff: u32,
}

/// Clock granularity G of RFC 6298 2.
const GRANULARITY_US: u64 = 1000;

impl RttEstimator {
    /// RFC 6298 2.1: before a measurement, RTO is the initial RTO (1 s).
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> RttEstimator {
        RttEstimator { srtt: None, rttvar: 0, rto: initial_rto, min_rto, max_rto, backoff: 0 }
    }

    /// Feed one RTT measurement R (RFC 6298 2.2 and 2.3). Resets the backoff (5.7 spirit: a
    /// valid sample means the path works again).
    pub fn sample(&mut self, r: Duration) {
        let r = r.total_micros().max(1);
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(r);
                self.rttvar = (3 * self.rttvar + err) / 4;
                self.srtt = Some((7 * srtt + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        let rto = srtt + (4 * self.rttvar).max(GRANULARITY_US);
        // RFC 6298 2.4 says RTO SHOULD be rounded up to 1 s; like Linux, plex's floor is
        // configurable (`min_rto`, default 200 ms) and 2.5's maximum is honoured.
        self.rto = Duration::from_micros(rto).max(self.min_rto).min(self.max_rto);
        self.backoff = 0;
    }

    /// RFC 6298 5.5: back off the timer after a retransmission timeout.
    pub fn back_off(&mut self) {
        self.backoff = (self.backoff + 1).min(16);
    }

    /// The current timeout, including backoff.
    pub fn rto(&self) -> Duration {
        let base = self.rto.total_micros();
        Duration::from_micros(base.saturating_mul(1u64 << self.backoff)).min(self.max_rto)
    }

    /// Smoothed RTT (RFC 6298 `SRTT`, microsecond resolution); `None` until the first sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_micros)
    }
    /// RTT variation (RFC 6298 `RTTVAR`); zero until the first sample.
    pub fn rttvar(&self) -> Duration {
        Duration::from_micros(self.rttvar)
    }
    /// Timeouts since the last valid sample: [`RttEstimator::rto`] is the base RTO times
    /// 2^backoff (capped at 16, and the result at `max_rto`).
    pub fn backoff(&self) -> u32 {
        self.backoff
    }

    /// Raw fields for the handoff record: (srtt us or 0, rttvar us, base rto us, backoff).
    pub fn to_parts(&self) -> (u64, u64, u64, u32) {
        (self.srtt.unwrap_or(0), self.rttvar, self.rto.total_micros(), self.backoff)
    }
    /// Rebuild from [`RttEstimator::to_parts`] (srtt 0 meaning no sample yet) under this
    /// node's `min_rto` and `max_rto`, which clamp the base RTO; backoff is capped at 16.
    pub fn from_parts(
        parts: (u64, u64, u64, u32),
        min_rto: Duration,
        max_rto: Duration,
    ) -> RttEstimator {
        let (srtt, rttvar, rto, backoff) = parts;
        RttEstimator {
            srtt: if srtt == 0 { None } else { Some(srtt) },
            rttvar,
            rto: Duration::from_micros(rto).max(min_rto).min(max_rto),
            min_rto,
            max_rto,
            backoff: backoff.min(16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est() -> RttEstimator {
        RttEstimator::new(Duration::from_secs(1), Duration::from_millis(200), Duration::from_secs(60))
    }

    #[test]
    fn first_sample_sets_srtt_and_rttvar() {
        let mut e = est();
        assert_eq!(e.rto(), Duration::from_secs(1));
        e.sample(Duration::from_millis(100));
        assert_eq!(e.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(e.rttvar(), Duration::from_millis(50));
        // 100 + 4 * 50 = 300 ms
        assert_eq!(e.rto(), Duration::from_millis(300));
    }

    #[test]
    fn smoothing_follows_rfc6298() {
        let mut e = est();
        e.sample(Duration::from_millis(100));
        e.sample(Duration::from_millis(200));
        // rttvar = 3/4*50 + 1/4*100 = 62.5; srtt = 7/8*100 + 1/8*200 = 112.5
        assert_eq!(e.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(e.rttvar(), Duration::from_micros(62_500));
        assert_eq!(e.rto(), Duration::from_micros(362_500));
    }

    #[test]
    fn floor_backoff_and_ceiling() {
        let mut e = est();
        e.sample(Duration::from_micros(50));
        assert_eq!(e.rto(), Duration::from_millis(200), "min_rto floor");
        e.back_off();
        e.back_off();
        assert_eq!(e.rto(), Duration::from_millis(800));
        for _ in 0..20 {
            e.back_off();
        }
        assert_eq!(e.rto(), Duration::from_secs(60), "max_rto ceiling");
        e.sample(Duration::from_micros(50));
        assert_eq!(e.backoff(), 0);
    }
}
