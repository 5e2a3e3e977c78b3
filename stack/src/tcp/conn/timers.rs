//! The timer table: expiry, and the persist (RFC 9293 3.8.6.1) and keepalive (RFC 9293
//! 3.8.4) timers.

use super::*;

impl Connection {
    /// The earliest timer deadline: when `handle_timeout` must be called next. `None` when no
    /// timer is armed (in CLOSED, always). Any call on the connection may change it, so ask
    /// again after each.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.deadline.iter().flatten().min().copied()
    }

    /// Run every timer due at `now` (deadline at or before it); calling early does nothing.
    /// A timer may make segments due (retransmissions, probes, a delayed ACK), close the
    /// connection ([`Event::TimedOut`], or CLOSED after TIME-WAIT), or re-arm itself: then
    /// call `poll_transmit`, `poll_event` and `poll_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for t in ALL_TIMERS {
            match self.timers.deadline[t as usize] {
                Some(at) if at <= now => {
                    self.timers.deadline[t as usize] = None;
                    self.on_timer(now, t);
                }
                _ => {}
            }
        }
    }

    fn on_timer(&mut self, now: Instant, t: Timer) {
        match t {
            Timer::Retransmit => self.on_retransmit_timeout(now),
            Timer::DelayedAck => {
                if self.ack.segs_unacked > 0 {
                    self.ack.now = true;
                }
            }
            Timer::Persist => {
                if self.state.can_send_data() {
                    self.counters.window_probes += 1;
                    self.due.probe = true;
                    self.timers.persist_backoff += 1;
                    // RFC 9293 3.8.6.1: keep probing while the window stays zero; the
                    // connection MUST NOT be closed for it. The user timeout still applies.
                    if let Some(uto) = self.cfg.user_timeout {
                        if now - self.timers.last_recv > uto {
                            self.enter_closed(Some(Error::TimedOut));
                            return;
                        }
                    }
                }
                self.update_persist(now);
            }
            Timer::Keepalive => self.on_keepalive(now),
            Timer::TimeWait => self.enter_closed(None),
            Timer::FinWait2 => {
                if self.state == State::FinWait2 {
                    self.enter_closed(None);
                }
            }
            Timer::LossProbe => {
                if self.loss.recovery.is_none() && self.snd.nxt > self.snd.una && self.state.is_synchronized() {
                    self.counters.loss_probes += 1;
                    self.loss.probe_rtx = true;
                }
            }
        }
    }

    pub(super) fn update_persist(&mut self, now: Instant) {
        let unsent = self.tx.len() - self.sent_data();
        // Nothing in flight and a window too small for the next segment under sender SWS
        // avoidance (zero, or below both the MSS and what is queued): no ACK will come to
        // open it if the peer's window update was lost, so the persist timer doubles as
        // RFC 9293 3.8.6.2.1's override timeout (Linux arms its probe timer the same way).
        if unsent > 0 && self.snd.wnd < unsent.min(self.opts.mss) && self.snd.una == self.snd.nxt {
            if self.timers.deadline[Timer::Persist as usize].is_none() {
                let backoff = self.timers.persist_backoff.min(10);
                let t = self.rtt.rto().saturating_mul(1 << backoff).min(self.cfg.max_rto);
                self.arm(Timer::Persist, now + t);
            }
        } else {
            self.disarm(Timer::Persist);
        }
    }

    pub(super) fn arm_keepalive(&mut self) {
        match self.cfg.keepalive {
            Some(ka) if self.state.is_synchronized() => {
                let interval = if self.timers.keepalive_sent == 0 { ka.idle } else { ka.interval };
                self.arm(Timer::Keepalive, self.timers.last_recv.max(self.last_send_ka()) + interval);
            }
            _ => self.disarm(Timer::Keepalive),
        }
    }

    fn last_send_ka(&self) -> Instant {
        // Keepalive idles on received segments; probes re-arm from the last probe.
        if self.timers.keepalive_sent > 0 {
            self.timers.last_send
        } else {
            self.timers.last_recv
        }
    }

    fn on_keepalive(&mut self, now: Instant) {
        let Some(ka) = self.cfg.keepalive else { return };
        if !matches!(self.state, State::Established | State::CloseWait | State::FinWait2) {
            return;
        }
        let idle = now - self.timers.last_recv;
        let due = if self.timers.keepalive_sent == 0 { ka.idle } else { ka.idle + ka.interval.saturating_mul(self.timers.keepalive_sent) };
        if idle < due {
            self.arm_keepalive();
            return;
        }
        if self.timers.keepalive_sent >= ka.probes {
            self.enter_closed(Some(Error::TimedOut));
            return;
        }
        self.timers.keepalive_sent += 1;
        self.due.probe = true;
        self.timers.last_send = now;
        self.arm(Timer::Keepalive, now + ka.interval);
    }
}
