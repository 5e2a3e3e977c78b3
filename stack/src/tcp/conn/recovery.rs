//! Loss recovery on the sending side: RFC 6675 `pipe`, entering fast recovery (RFC 5681,
//! RFC 6582, RFC 6675), the retransmission timeout (RFC 6298), tail loss probes and lost
//! retransmissions (RFC 8985), and path MTU changes (RFC 1191).

use super::*;

impl Connection {
    /// RFC 6675 pipe; without SACK each duplicate ACK is a segment that left the network
    /// (RFC 5681's window inflation, expressed as a smaller pipe).
    pub(super) fn pipe(&self) -> usize {
        let p = self.loss.scoreboard.pipe(
            self.snd.una,
            self.snd.nxt,
            self.loss.high_rxt,
            self.loss.lost_until,
            self.opts.mss,
        );
        if self.opts.sack_ok {
            p
        } else {
            p.saturating_sub(self.loss.dupacks as usize * self.opts.mss)
        }
    }

    /// RFC 8985's idea for the left edge: its retransmission has been out longer than a
    /// round trip while later data keeps being SACKed: it was lost again. Resend it now
    /// instead of waiting for the RTO.
    ///
    /// Without SACK the evidence is the duplicate ACK itself: each one is a segment that
    /// arrived while the left edge did not. Once `DupThresh` of them have come in a row and
    /// this one comes later than a round trip after the retransmission, the segments sent
    /// after it arrive and it does not. This is what keeps a go-back-N recovery after a
    /// timeout (RFC 6582 forbids a new fast retransmit below `recover`) from paying a second,
    /// doubled timeout for each retransmission lost on the way.
    pub(super) fn detect_lost_retransmit(&mut self, now: Instant, newly_sacked: usize) {
        if self.loss.recovery.is_none() {
            return;
        }
        let evidence = if self.opts.sack_ok { newly_sacked > 0 } else { self.loss.dupacks as usize >= DUP_THRESH };
        if !evidence {
            return;
        }
        let Some(at) = self.loss.rtx_una_at else { return };
        let srtt = self.rtt.srtt().unwrap_or(self.rtt.rto());
        let reo_wnd = Duration::from_micros(srtt.total_micros() / 4);
        if now - at > srtt + reo_wnd {
            self.counters.lost_retransmits += 1;
            self.loss.high_rxt = self.snd.una;
            self.loss.lost_until = self.loss.lost_until.max(self.snd.una + self.opts.mss);
            self.loss.rtx_now = true;
            self.loss.rtx_una_at = None;
        }
    }

    /// RFC 8985 7.2: arm the probe timeout, 2 SRTT (at least 10 ms here), while not in
    /// recovery and with SACK (the probe's SACK is what reveals a tail loss).
    pub(super) fn arm_loss_probe(&mut self, now: Instant) {
        let Some(srtt) = self.rtt.srtt() else { return };
        if !self.opts.sack_ok || self.loss.recovery.is_some() || self.snd.nxt == self.snd.una {
            self.disarm(Timer::LossProbe);
            return;
        }
        let pto = (srtt + srtt).max(Duration::from_millis(10));
        let at = now + pto;
        if self.timers.deadline[Timer::Retransmit as usize].is_none_or(|rto| at < rto) {
            self.arm(Timer::LossProbe, at);
        } else {
            self.disarm(Timer::LossProbe);
        }
    }

    pub(super) fn enter_fast_recovery(&mut self, now: Instant) {
        self.counters.fast_recoveries += 1;
        let flight = self.flight_size();
        self.cc.on_congestion_event(now, flight);
        self.disarm(Timer::LossProbe);
        self.loss.recovery = Some(Recovery { kind: RecoveryKind::Fast, point: self.snd.nxt });
        // The first unacknowledged segment is retransmitted at once (RFC 5681 3.2 step 4,
        // RFC 6675 5 step 4.1).
        self.loss.lost_until = self.snd.una + self.opts.mss;
        self.loss.high_rxt = self.snd.una;
        self.rtt_probe = None;
        self.loss.rtx_now = true;
    }

    pub(super) fn on_retransmit_timeout(&mut self, now: Instant) {
        match self.state {
            State::SynSent | State::SynReceived => {
                self.timers.retries += 1;
                // Linux: tcp_syn_retries for a SYN, tcp_synack_retries for a SYN-ACK.
                let limit = if self.passive { self.cfg.synack_retries } else { self.cfg.syn_retries };
                if self.timers.retries > limit {
                    self.enter_closed(Some(Error::TimedOut));
                    return;
                }
                self.counters.timeouts += 1;
                self.rtt.back_off();
                self.due.syn = true;
            }
            State::Closed | State::TimeWait | State::FinWait2 => {}
            _ => {
                if self.snd.una == self.snd.nxt {
                    return;
                }
                self.timers.retries += 1;
                let uto_expired = match (self.cfg.user_timeout, self.timers.unacked_since) {
                    (Some(uto), Some(since)) => now - since >= uto,
                    _ => false,
                };
                if self.timers.retries > self.cfg.max_retries || uto_expired {
                    self.enter_closed(Some(Error::TimedOut));
                    return;
                }
                self.counters.timeouts += 1;
                let flight = self.flight_size();
                self.cc.on_rto(now, flight);
                self.rtt.back_off();
                // RFC 2018 8: after a timeout the left edge MUST be retransmitted whatever the
                // SACK state says; plex forgets the scoreboard (the receiver may have reneged).
                self.loss.scoreboard.clear();
                self.disarm(Timer::LossProbe);
                self.loss.recovery = Some(Recovery { kind: RecoveryKind::Timeout, point: self.snd.nxt });
                self.loss.lost_until = self.snd.nxt;
                self.loss.high_rxt = self.snd.una;
                self.loss.dupacks = 0;
                self.rtt_probe = None;
                self.ack.quickacks = QUICKACKS;
                self.arm(Timer::Retransmit, now + self.rtt.rto());
            }
        }
    }

    /// ICMP fragmentation-needed for this connection (RFC 1191): shrink the segment size and
    /// resend what is in flight at the new size, without a congestion response.
    pub fn handle_path_mtu(&mut self, mtu: u16) {
        // RFC 1191 / RFC 1122: ignore absurd values.
        if mtu < 68 || mtu >= self.opts.path_mtu {
            return;
        }
        self.opts.path_mtu = mtu;
        let before = self.opts.mss;
        self.update_mss();
        if self.opts.mss < before && self.snd.nxt > self.snd.una && self.state.is_synchronized() {
            self.loss.lost_until = self.snd.nxt;
            self.loss.high_rxt = self.snd.una;
        }
    }
}
