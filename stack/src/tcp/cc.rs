//! Congestion control: NewReno (RFC 5681, RFC 6582) and CUBIC (RFC 9438), selectable per
//! connection. Enum dispatch, no allocation; sizes in bytes, time passed in.
//!
//! The connection owns loss detection and recovery (RFC 6675 `pipe`); this module only
//! answers "how large may the window be": it grows on ACKs outside recovery, shrinks on a
//! congestion event and on a retransmission timeout.
//!
//! Growth happens only while the sender is using its window (RFC 7661's spirit): an ACK that
//! arrives while less than half the window was in flight does not grow it, so an
//! application-limited connection does not build a window it never tested.

use core::str::FromStr;

use crate::time::{Duration, Instant};

/// The congestion control algorithm of a connection ([`super::Config::congestion`]). Parsed
/// from `"cubic"`, `"newreno"` or `"reno"` (any case) and displayed as `cubic` / `newreno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Algorithm {
    /// CUBIC (RFC 9438), with its Reno-friendly region and fast convergence. The default, as
    /// on Linux.
    #[default]
    Cubic,
    /// NewReno: RFC 5681 slow start and congestion avoidance (byte counting), with the RFC
    /// 6582 recovery exit.
    NewReno,
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Algorithm::Cubic),
            "newreno" | "reno" => Ok(Algorithm::NewReno),
            _ => Err(format!("unknown congestion control {s:?}: expected \"cubic\" or \"newreno\"")),
        }
    }
}

impl core::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Algorithm::Cubic => "cubic",
            Algorithm::NewReno => "newreno",
        })
    }
}

/// RFC 9438 4.1 constants.
const C: f64 = 0.4;
const BETA_CUBIC: f64 = 0.7;
/// RFC 9438 4.3: alpha for the Reno-friendly region, 3 * (1 - beta) / (1 + beta).
const ALPHA_CUBIC: f64 = 3.0 * (1.0 - BETA_CUBIC) / (1.0 + BETA_CUBIC);
/// RTT assumed before the first sample.
const DEFAULT_RTT: Duration = Duration::from_millis(100);

/// "No threshold yet" (RFC 5681 3.1: ssthresh starts arbitrarily high).
const INFINITE_SSTHRESH: usize = usize::MAX / 4;

/// RFC 6928 initial window.
fn initial_window(mss: usize) -> usize {
    (10 * mss).min((2 * mss).max(14600))
}

#[derive(Debug, Clone, PartialEq)]
struct Cubic {
    /// W_max in segments.
    w_max: f64,
    /// K in seconds.
    k: f64,
    /// Start of the current congestion-avoidance epoch.
    epoch_start: Option<Instant>,
    /// cwnd (segments) at the start of the epoch.
    cwnd_epoch: f64,
    /// Reno-friendly estimate W_est, segments.
    w_est: f64,
    /// cwnd before the last reduction, segments (RFC 9438 4.3: alpha becomes 1 past it).
    cwnd_prior: f64,
}

/// One connection's congestion window (`cwnd`) and slow-start threshold (`ssthresh`), both in
/// bytes, driven by the connection's ACK, loss and timeout events. It never sees segments: the
/// connection decides what is acknowledged, lost or in flight and calls the `on_*` methods.
#[derive(Debug, Clone)]
pub struct CongestionControl {
    algorithm: Algorithm,
    mss: usize,
    cwnd: usize,
    ssthresh: usize,
    /// Bytes acknowledged towards the next whole-MSS increase in congestion avoidance.
    ca_acc: usize,
    cubic: Cubic,
}

/// The whole state, for the handoff record. Times are relative to the `now` it was taken at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CcState {
    /// The algorithm in use.
    pub algorithm: Algorithm,
    /// Sender MSS in bytes that the window is counted in (SMSS of RFC 5681).
    pub mss: u32,
    /// Congestion window in bytes.
    pub cwnd: u64,
    /// Slow-start threshold in bytes; a very large value (`usize::MAX / 4`) means no loss
    /// has set one yet (RFC 5681 3.1).
    pub ssthresh: u64,
    /// Bytes acknowledged in congestion avoidance not yet turned into a whole-MSS increase.
    pub ca_acc: u64,
    /// CUBIC `W_max` in segments: the window before the last reduction, after fast
    /// convergence (RFC 9438 4.7).
    pub w_max: f64,
    /// CUBIC `K` in seconds: when the cubic curve reaches `W_max` again (RFC 9438 4.2).
    pub k: f64,
    /// How long ago the CUBIC epoch started.
    pub epoch_age: Option<Duration>,
    /// CUBIC `cwnd_epoch` in segments: the window when the current epoch started.
    pub cwnd_epoch: f64,
    /// CUBIC `W_est` in segments: the Reno-friendly estimate (RFC 9438 4.3).
    pub w_est: f64,
    /// CUBIC `cwnd_prior` in segments: the window before the last reduction (RFC 9438 4.6).
    pub cwnd_prior: f64,
}

impl CongestionControl {
    /// A fresh controller for segments of `mss` bytes: `cwnd` is the RFC 6928 initial window,
    /// min(10 MSS, max(2 MSS, 14 600 bytes)), and `ssthresh` is unbounded.
    pub fn new(algorithm: Algorithm, mss: usize) -> Self {
        let mss = mss.max(1);
        CongestionControl {
            algorithm,
            mss,
            cwnd: initial_window(mss),
            ssthresh: INFINITE_SSTHRESH,
            ca_acc: 0,
            cubic: Cubic { w_max: 0.0, k: 0.0, epoch_start: None, cwnd_epoch: 0.0, w_est: 0.0, cwnd_prior: 0.0 },
        }
    }

    /// The algorithm chosen at creation.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// Congestion window in bytes: how much may be in flight (RFC 6675 `pipe`) at once.
    pub fn cwnd(&self) -> usize {
        self.cwnd
    }
    /// Slow-start threshold in bytes (RFC 5681 3.1); `usize::MAX / 4` until the first
    /// congestion event or timeout.
    pub fn ssthresh(&self) -> usize {
        self.ssthresh
    }
    /// `cwnd < ssthresh`: ACKs grow the window by up to 2 MSS each (RFC 5681 3.1, RFC 3465).
    pub fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// The segment size changed (negotiation, PMTU): keep the window in whole segments' worth
    /// of bytes and at least one segment.
    pub fn set_mss(&mut self, mss: usize) {
        let mss = mss.max(1);
        if mss == self.mss {
            return;
        }
        // Before any data the initial window follows the negotiated MSS.
        if self.ssthresh == INFINITE_SSTHRESH && self.cwnd == initial_window(self.mss) {
            self.cwnd = initial_window(mss);
        }
        self.mss = mss;
        self.cwnd = self.cwnd.max(mss);
    }

    fn segs(&self, bytes: usize) -> f64 {
        bytes as f64 / self.mss as f64
    }

    /// New data acknowledged outside fast recovery: `acked` bytes newly acknowledged,
    /// `in_flight` bytes in flight before this ACK (growth needs at least half the window in
    /// use), `srtt` for CUBIC's target (100 ms assumed before a sample).
    pub fn on_ack(&mut self, now: Instant, acked: usize, in_flight: usize, srtt: Option<Duration>) {
        if acked == 0 {
            return;
        }
        // Not cwnd-limited: no growth.
        if in_flight.saturating_add(self.mss) < self.cwnd / 2 {
            return;
        }
        if self.cwnd < self.ssthresh {
            // Slow start with appropriate byte counting, L = 2 (RFC 3465, RFC 5681 3.1).
            self.cwnd = self.cwnd.saturating_add(acked.min(2 * self.mss));
            return;
        }
        match self.algorithm {
            Algorithm::NewReno => {
                // RFC 5681 3.1: about one MSS per RTT, by byte counting.
                self.ca_acc += acked;
                if self.ca_acc >= self.cwnd {
                    self.ca_acc -= self.cwnd;
                    self.cwnd = self.cwnd.saturating_add(self.mss);
                }
            }
            Algorithm::Cubic => self.cubic_ack(now, acked, srtt.unwrap_or(DEFAULT_RTT)),
        }
    }

    /// RFC 9438 4.2-4.5.
    fn cubic_ack(&mut self, now: Instant, acked: usize, rtt: Duration) {
        let cwnd_seg = self.segs(self.cwnd);
        let cu = &mut self.cubic;
        let start = match cu.epoch_start {
            Some(s) => s,
            None => {
                cu.epoch_start = Some(now);
                cu.cwnd_epoch = cwnd_seg;
                cu.w_est = cwnd_seg;
                if cu.w_max < cwnd_seg {
                    // No reduction recorded (or we already passed it): start on the plateau.
                    cu.w_max = cwnd_seg;
                    cu.k = 0.0;
                } else {
                    cu.k = ((cu.w_max - cu.cwnd_epoch) / C).cbrt();
                }
                now
            }
        };
        let t = (now - start).as_secs_f64();
        let w_cubic = |t: f64| C * (t - cu.k).powi(3) + cu.w_max;
        // Reno-friendly estimate (4.3): alpha becomes 1 once past the pre-reduction window.
        let alpha = if cu.w_est >= cu.cwnd_prior { 1.0 } else { ALPHA_CUBIC };
        cu.w_est += alpha * (acked as f64 / self.mss as f64) / cwnd_seg.max(1.0);
        if w_cubic(t) < cu.w_est {
            // Reno-friendly region: follow W_est.
            let target = (cu.w_est * self.mss as f64) as usize;
            if target > self.cwnd {
                self.cwnd = target;
            }
            return;
        }
        // Concave or convex region (4.4, 4.5): target W_cubic(t + RTT), clamped.
        let target = w_cubic(t + rtt.as_secs_f64()).clamp(cwnd_seg, 1.5 * cwnd_seg);
        let inc_bytes = (target - cwnd_seg) / cwnd_seg.max(1.0) * acked as f64;
        self.ca_acc += inc_bytes as usize;
        // Keep the fraction so small increments are not lost.
        let frac = inc_bytes - inc_bytes.floor();
        if frac > 0.0 && (self.ca_acc as f64 + frac) as usize > self.ca_acc {
            self.ca_acc += 1;
        }
        if self.ca_acc >= self.mss {
            let whole = self.ca_acc / self.mss * self.mss;
            self.cwnd = self.cwnd.saturating_add(whole);
            self.ca_acc -= whole;
        }
    }

    /// Loss detected by duplicate ACKs or SACK: enter fast recovery (RFC 5681 3.2 step 2,
    /// RFC 6675 5 step 4.2, RFC 9438 4.6 and 4.7).
    pub fn on_congestion_event(&mut self, _now: Instant, in_flight: usize) {
        self.ca_acc = 0;
        match self.algorithm {
            Algorithm::NewReno => {
                self.ssthresh = (in_flight / 2).max(2 * self.mss);
            }
            Algorithm::Cubic => {
                self.cubic_reduce();
                self.ssthresh = ((self.cwnd as f64 * BETA_CUBIC) as usize).max(2 * self.mss);
            }
        }
        self.cwnd = self.ssthresh;
    }

    fn cubic_reduce(&mut self) {
        let cwnd_seg = self.segs(self.cwnd);
        let cu = &mut self.cubic;
        cu.epoch_start = None;
        cu.cwnd_prior = cwnd_seg;
        // Fast convergence (4.7): a flow whose window keeps shrinking yields bandwidth.
        cu.w_max = if cwnd_seg < cu.w_max { cwnd_seg * (1.0 + BETA_CUBIC) / 2.0 } else { cwnd_seg };
    }

    /// Fast recovery ended (RFC 6582 3.2 step 3, the burst-avoiding option).
    pub fn on_recovery_exit(&mut self, _now: Instant, in_flight: usize) {
        self.cwnd = self.ssthresh.min(in_flight.max(self.mss) + self.mss).max(self.mss);
        self.ca_acc = 0;
    }

    /// Retransmission timeout (RFC 5681 3.1 eq. 4; RFC 9438 4.8): loss window of one segment.
    pub fn on_rto(&mut self, _now: Instant, in_flight: usize) {
        self.ca_acc = 0;
        match self.algorithm {
            Algorithm::NewReno => self.ssthresh = (in_flight / 2).max(2 * self.mss),
            Algorithm::Cubic => {
                self.cubic_reduce();
                self.ssthresh = ((self.cwnd as f64 * BETA_CUBIC) as usize).max(2 * self.mss);
            }
        }
        self.cwnd = self.mss;
    }

    /// RFC 5681 4.1: after an idle period longer than the RTO, restart from the initial window.
    pub fn on_idle_restart(&mut self, _now: Instant) {
        self.cwnd = self.cwnd.min(initial_window(self.mss));
        self.cubic.epoch_start = None;
    }

    /// The whole state for the handoff record, the CUBIC epoch start taken relative to `now`.
    pub fn state(&self, now: Instant) -> CcState {
        CcState {
            algorithm: self.algorithm,
            mss: self.mss as u32,
            cwnd: self.cwnd as u64,
            ssthresh: self.ssthresh as u64,
            ca_acc: self.ca_acc as u64,
            w_max: self.cubic.w_max,
            k: self.cubic.k,
            epoch_age: self.cubic.epoch_start.map(|s| now - s),
            cwnd_epoch: self.cubic.cwnd_epoch,
            w_est: self.cubic.w_est,
            cwnd_prior: self.cubic.cwnd_prior,
        }
    }

    /// Rebuild from a handoff record taken elsewhere, the epoch re-anchored at `now`. Values
    /// are clamped to stay usable: MSS at least 1, `cwnd` at least 1 MSS, `ssthresh` at least
    /// 2 MSS.
    pub fn from_state(s: &CcState, now: Instant) -> Self {
        let mss = (s.mss as usize).max(1);
        CongestionControl {
            algorithm: s.algorithm,
            mss,
            cwnd: (s.cwnd as usize).max(mss),
            ssthresh: (s.ssthresh as usize).max(2 * mss),
            ca_acc: s.ca_acc as usize,
            cubic: Cubic {
                w_max: s.w_max,
                k: s.k,
                epoch_start: s.epoch_age.map(|a| now.saturating_sub(a)),
                cwnd_epoch: s.cwnd_epoch,
                w_est: s.w_est,
                cwnd_prior: s.cwnd_prior,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1000;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn initial_window_rfc6928() {
        assert_eq!(CongestionControl::new(Algorithm::Cubic, 1460).cwnd(), 14600);
        assert_eq!(CongestionControl::new(Algorithm::Cubic, 536).cwnd(), 5360);
        assert_eq!(CongestionControl::new(Algorithm::Cubic, 9000).cwnd(), 18000);
    }

    #[test]
    fn slow_start_doubles_per_rtt_with_abc() {
        let mut cc = CongestionControl::new(Algorithm::NewReno, MSS);
        // One RTT worth of per-segment ACKs doubles the window.
        let w = cc.cwnd();
        for _ in 0..w / MSS {
            cc.on_ack(ms(1), MSS, cc.cwnd(), None);
        }
        assert_eq!(cc.cwnd(), 2 * w);
        // A stretch ACK of 10 segments grows by at most 2 MSS (L = 2).
        let w = cc.cwnd();
        cc.on_ack(ms(2), 10 * MSS, w, None);
        assert_eq!(cc.cwnd(), w + 2 * MSS);
    }

    #[test]
    fn application_limited_does_not_grow() {
        let mut cc = CongestionControl::new(Algorithm::Cubic, MSS);
        cc.on_ack(ms(1), MSS, MSS, None);
        assert_eq!(cc.cwnd(), 10 * MSS);
    }

    #[test]
    fn newreno_adds_one_mss_per_rtt() {
        let mut cc = CongestionControl::new(Algorithm::NewReno, MSS);
        cc.on_congestion_event(ms(0), 40 * MSS);
        assert_eq!((cc.cwnd(), cc.ssthresh()), (20 * MSS, 20 * MSS));
        for _ in 0..20 {
            cc.on_ack(ms(1), MSS, cc.cwnd(), None);
        }
        assert_eq!(cc.cwnd(), 21 * MSS);
    }

    #[test]
    fn cubic_reduction_and_k() {
        let mut cc = CongestionControl::new(Algorithm::Cubic, MSS);
        // Grow to 100 segments in slow start.
        while cc.cwnd() < 100 * MSS {
            cc.on_ack(ms(0), MSS, cc.cwnd(), None);
        }
        let w = cc.cwnd();
        cc.on_congestion_event(ms(0), w);
        assert_eq!(cc.cwnd(), (w as f64 * 0.7) as usize, "beta_cubic 0.7");
        // First ACK in congestion avoidance starts the epoch: K = cbrt(W_max (1 - beta) / C).
        cc.on_ack(ms(10), MSS, cc.cwnd(), Some(Duration::from_millis(10)));
        let w_max = w as f64 / MSS as f64;
        let expect_k = (w_max * 0.3 / 0.4).cbrt();
        let s = cc.state(ms(10));
        assert!((s.k - expect_k).abs() < 0.05, "K {} vs {}", s.k, expect_k);
        assert!((s.w_max - w_max).abs() < 1e-9);
    }

    /// Simulate ACK clocking at a fixed RTT: every RTT, cwnd/MSS ACKs arrive.
    fn run_rtts(cc: &mut CongestionControl, start: Instant, rtt: Duration, rtts: usize) -> (Vec<f64>, Instant) {
        let mut now = start;
        let mut trace = Vec::new();
        for _ in 0..rtts {
            let acks = (cc.cwnd() / MSS).max(1);
            let step = Duration::from_micros(rtt.total_micros() / acks as u64);
            for _ in 0..acks {
                now += step;
                cc.on_ack(now, MSS, cc.cwnd(), Some(rtt));
            }
            trace.push(cc.cwnd() as f64 / MSS as f64);
        }
        (trace, now)
    }

    #[test]
    fn cubic_concave_then_plateau_then_convex() {
        let mut cc = CongestionControl::new(Algorithm::Cubic, MSS);
        cc.cwnd = 1000 * MSS;
        cc.ssthresh = cc.cwnd;
        cc.on_congestion_event(ms(0), cc.cwnd);
        assert_eq!(cc.cwnd(), 700 * MSS);
        // Large RTT so the CUBIC region (not Reno-friendly) governs: K = cbrt(300/0.4) = 9.09 s.
        let rtt = Duration::from_millis(100);
        let (trace, _) = run_rtts(&mut cc, ms(0), rtt, 200);
        let k_rtts = (9.09 / 0.1) as usize;
        // Concave: growth slows as it nears W_max.
        let early = trace[10] - trace[0];
        let late = trace[k_rtts - 10] - trace[k_rtts - 20];
        assert!(early > late, "concave: {early} then {late}");
        // Plateau near W_max around K.
        let at_k = trace[k_rtts];
        assert!((at_k - 1000.0).abs() < 15.0, "near W_max at K: {at_k}");
        // Convex beyond: growth speeds up again.
        let after = trace[k_rtts + 60] - trace[k_rtts + 50];
        assert!(after > late, "convex: {after} vs {late}");
        assert!(trace[199] > 1000.0);
    }

    #[test]
    fn reno_friendly_region_at_small_rtt() {
        // Small W and tiny RTT: the cubic curve is slow in wall-clock, Reno's per-RTT growth wins.
        let mut cc = CongestionControl::new(Algorithm::Cubic, MSS);
        cc.cwnd = 20 * MSS;
        cc.ssthresh = cc.cwnd;
        cc.on_congestion_event(ms(0), cc.cwnd);
        let w0 = cc.cwnd();
        let (trace, _) = run_rtts(&mut cc, ms(0), Duration::from_micros(200), 100);
        // Reno-friendly growth: alpha = 0.53 segments per RTT until past cwnd_prior.
        let grown = trace[99] - w0 as f64 / MSS as f64;
        assert!(grown > 20.0, "grew {grown} segments in 100 RTTs of 200 us");
    }

    #[test]
    fn fast_convergence_lowers_w_max() {
        let mut cc = CongestionControl::new(Algorithm::Cubic, MSS);
        cc.cwnd = 100 * MSS;
        cc.ssthresh = cc.cwnd;
        cc.on_congestion_event(ms(0), cc.cwnd);
        assert_eq!(cc.state(ms(0)).w_max, 100.0);
        // A second loss before regaining W_max.
        cc.on_congestion_event(ms(1), cc.cwnd);
        assert!((cc.state(ms(1)).w_max - 70.0 * 1.7 / 2.0).abs() < 1e-9);
    }

    #[test]
    fn rto_sets_loss_window() {
        for alg in [Algorithm::Cubic, Algorithm::NewReno] {
            let mut cc = CongestionControl::new(alg, MSS);
            cc.on_rto(ms(0), 30 * MSS);
            assert_eq!(cc.cwnd(), MSS);
            assert!(cc.ssthresh() >= 2 * MSS);
        }
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let mut a = CongestionControl::new(Algorithm::Cubic, MSS);
        a.cwnd = 80 * MSS;
        a.ssthresh = a.cwnd;
        a.on_congestion_event(ms(0), a.cwnd);
        let (_, now) = run_rtts(&mut a, ms(0), Duration::from_millis(20), 30);
        let s = a.state(now);
        let later = now + Duration::from_secs(1000);
        let mut b = CongestionControl::from_state(&s, later);
        let (ta, _) = run_rtts(&mut a, now, Duration::from_millis(20), 50);
        let (tb, _) = run_rtts(&mut b, later, Duration::from_millis(20), 50);
        assert_eq!(ta, tb);
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        for alg in [Algorithm::Cubic, Algorithm::NewReno] {
            let mut cc = CongestionControl::new(alg, 0);
            cc.set_mss(1);
            cc.on_ack(ms(0), 0, 0, None);
            cc.on_ack(ms(0), usize::MAX / 8, usize::MAX / 8, Some(Duration::ZERO));
            cc.on_congestion_event(ms(0), 0);
            cc.on_recovery_exit(ms(0), 0);
            cc.on_rto(ms(0), usize::MAX / 8);
            for i in 0..1000 {
                cc.on_ack(ms(i), 1, cc.cwnd(), Some(Duration::from_micros(1)));
            }
            assert!(cc.cwnd() >= 1);
        }
        assert_eq!("Reno".parse::<Algorithm>(), Ok(Algorithm::NewReno));
        assert!("bbr".parse::<Algorithm>().is_err());
    }
}
