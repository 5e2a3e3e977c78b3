//! TEMPORARY placeholder with the agreed API (NewReno only); replaced by the cc branch.
use crate::time::{Duration, Instant};
use core::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    #[default]
    Cubic,
    NewReno,
}
impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cubic" => Ok(Algorithm::Cubic),
            "newreno" | "reno" => Ok(Algorithm::NewReno),
            _ => Err(format!("unknown congestion control {s:?}")),
        }
    }
}
#[derive(Debug, Clone)]
pub struct CongestionControl {
    algorithm: Algorithm,
    mss: usize,
    cwnd: usize,
    ssthresh: usize,
    acc: usize,
}
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CcState {
    pub algorithm: Algorithm,
    pub mss: u32,
    pub cwnd: u64,
    pub ssthresh: u64,
}
impl CongestionControl {
    pub fn new(algorithm: Algorithm, mss: usize) -> Self {
        CongestionControl { algorithm, mss, cwnd: (10 * mss).min((2 * mss).max(14600)), ssthresh: usize::MAX / 2, acc: 0 }
    }
    pub fn algorithm(&self) -> Algorithm { self.algorithm }
    pub fn cwnd(&self) -> usize { self.cwnd }
    pub fn ssthresh(&self) -> usize { self.ssthresh }
    pub fn set_mss(&mut self, mss: usize) { self.mss = mss.max(1); self.cwnd = self.cwnd.max(self.mss); }
    pub fn on_ack(&mut self, _now: Instant, acked: usize, _in_flight: usize, _srtt: Option<Duration>) {
        if self.cwnd < self.ssthresh { self.cwnd += acked.min(2 * self.mss); } else {
            self.acc += acked; if self.acc >= self.cwnd { self.acc -= self.cwnd; self.cwnd += self.mss; }
        }
    }
    pub fn on_congestion_event(&mut self, _now: Instant, in_flight: usize) {
        self.ssthresh = (in_flight / 2).max(2 * self.mss); self.cwnd = self.ssthresh;
    }
    pub fn on_recovery_exit(&mut self, _now: Instant, in_flight: usize) {
        self.cwnd = self.ssthresh.min(in_flight.max(self.mss) + self.mss);
    }
    pub fn on_rto(&mut self, _now: Instant, in_flight: usize) {
        self.ssthresh = (in_flight / 2).max(2 * self.mss); self.cwnd = self.mss;
    }
    pub fn on_idle_restart(&mut self, _now: Instant) { self.cwnd = self.cwnd.min((10 * self.mss).min((2 * self.mss).max(14600))); }
    pub fn state(&self, _now: Instant) -> CcState { CcState { algorithm: self.algorithm, mss: self.mss as u32, cwnd: self.cwnd as u64, ssthresh: self.ssthresh as u64 } }
    pub fn from_state(s: &CcState, _now: Instant) -> Self {
        CongestionControl { algorithm: s.algorithm, mss: s.mss as usize, cwnd: s.cwnd as usize, ssthresh: s.ssthresh as usize, acc: 0 }
    }
}
