//! Segment arrival (RFC 9293 3.10.7): the SYN-SENT and synchronized-state checks in RFC
//! order, the ACK field (window update, acknowledgement, duplicate ACKs) and segment text.

use super::*;

impl Connection {
    /// Process one segment of this connection (RFC 9293 3.10.7). The caller has parsed it,
    /// checked its checksum and matched it to this 4-tuple; a segment to a CLOSED connection
    /// is ignored. Replies it calls for (ACKs, RSTs, data the new window allows) are written
    /// by the following `poll_transmit` calls, events wait in `poll_event`, and timers may
    /// have moved (`poll_timeout`).
    pub fn handle_segment(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        self.counters.segs_in += 1;
        match self.state {
            State::Closed => {}
            State::SynSent => self.handle_syn_sent(now, seg),
            _ => self.handle_synchronized(now, seg),
        }
    }

    /// RFC 9293 3.10.7.3, SYN-SENT.
    fn handle_syn_sent(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        // First: the ACK bit.
        let mut ack_ok = false;
        if let Some(ack) = seg.ack_number {
            if ack <= self.snd.iss || ack > self.snd.nxt {
                // Unacceptable ACK: <SEQ=SEG.ACK><CTL=RST> unless it is a RST.
                if seg.control != TcpControl::Rst {
                    self.due.rst_reply = Some((ack, None));
                }
                return;
            }
            ack_ok = true;
        }
        // Second: RST. Acceptable only with an acceptable ACK (RFC 5961 3.2 keeps this).
        if seg.control == TcpControl::Rst {
            if ack_ok {
                self.enter_closed(Some(Error::Reset));
            }
            return;
        }
        // Fourth: SYN.
        if seg.control != TcpControl::Syn {
            return;
        }
        self.rcv.irs = seg.seq_number;
        self.rcv.nxt = seg.seq_number + 1;
        self.rcv.adv = self.rcv.nxt;
        self.negotiate(now, seg);
        if let Some(ack) = seg.ack_number {
            self.snd.una = ack;
            self.loss.high_rxt = ack;
            self.loss.lost_until = ack;
            self.disarm(Timer::Retransmit);
            if self.timers.retries == 0 {
                // RFC 6298 2.2 / Karn: time the SYN only if it was not retransmitted.
                if self.rtt_sample_from_timestamps(now, seg).is_none() {
                    if let Some((_, t)) = self.rtt_probe {
                        self.rtt.sample(now - t);
                    }
                }
            }
            self.timers.retries = 0;
            self.rtt_probe = None;
        }
        // RFC 7323 2.2: the window of a SYN is not scaled.
        self.snd.wnd = seg.window_len as usize;
        self.snd.max_wnd = self.snd.wnd;
        self.snd.wl1 = seg.seq_number;
        self.snd.wl2 = seg.ack_number.unwrap_or(self.snd.una);
        if self.snd.una > self.snd.iss {
            self.state = State::Established;
            self.due.syn = false;
            self.ack.now = true;
            self.push_event(Event::Connected);
            self.arm_keepalive();
            if self.fin_seq.is_some() {
                self.state = State::FinWait1;
            }
        } else {
            // Simultaneous open: SYN-RECEIVED, send <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>.
            self.state = State::SynReceived;
            self.due.syn = true;
        }
    }

    /// RFC 9293 3.10.7.4: SYN-RECEIVED and the synchronized states.
    fn handle_synchronized(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        self.timers.last_recv = now;
        self.timers.keepalive_sent = 0;
        let is_rst = seg.control == TcpControl::Rst;

        // RFC 7323 5.3: PAWS before the sequence check.
        if self.ts.ok && !is_rst {
            if let Some(ts) = seg.timestamp {
                if (ts.tsval.wrapping_sub(self.ts.recent) as i32) < 0 {
                    // R3: a TS.Recent idle more than 24 days is invalid, not a reason to drop.
                    if now - self.ts.recent_age > Duration::from_secs(24 * 86400) {
                        self.ts.recent = ts.tsval;
                    } else {
                        self.counters.paws_drops += 1;
                        self.ack.now = true;
                        return;
                    }
                }
            }
        }

        // First: sequence number acceptability (RFC 9293 3.10.7.4, the four cases).
        let seg_len = seg.segment_len();
        let rcv_wnd = self.rcv.adv.distance_from(self.rcv.nxt);
        let seq = seg.seq_number;
        let in_window = |s: SeqNumber| s >= self.rcv.nxt && s < self.rcv.nxt + rcv_wnd;
        let acceptable = match (seg_len, rcv_wnd) {
            (0, 0) => seq == self.rcv.nxt,
            (0, _) => in_window(seq),
            (_, 0) => false,
            (_, _) => in_window(seq) || in_window(seq + seg_len - 1),
        };
        // RCV.WND zero: still take the ACK (and RST) of a segment at RCV.NXT (3.10.7.4 note).
        let zero_window_ack = !acceptable && rcv_wnd == 0 && seq == self.rcv.nxt;
        if !acceptable && !zero_window_ack {
            self.counters.unacceptable_segs += 1;
            if !is_rst {
                if self.state == State::SynReceived {
                    // A retransmitted SYN: our SYN-ACK was lost.
                    self.due.syn = seg.control == TcpControl::Syn || self.due.syn;
                }
                if self.state == State::TimeWait && seg.control == TcpControl::Fin {
                    // Retransmitted FIN: acknowledge and restart 2 MSL (3.10.7.4, eighth).
                    self.arm(Timer::TimeWait, now + self.cfg.msl.saturating_mul(2));
                }
                self.ack.now = true;
            }
            return;
        }

        // Second: RST (RFC 5961 3.2).
        if is_rst {
            if seq == self.rcv.nxt {
                if self.state == State::SynReceived && self.passive {
                    // Back to LISTEN: the listener never saw this connection.
                    self.enter_closed(None);
                } else {
                    let e = match self.state {
                        State::Closing | State::LastAck | State::TimeWait => None,
                        _ => Some(Error::Reset),
                    };
                    self.enter_closed(e);
                }
            } else {
                self.challenge_ack();
            }
            return;
        }

        // Fourth: SYN in a synchronized state or SYN-RECEIVED: challenge ACK (RFC 5961 4.2).
        if seg.control == TcpControl::Syn {
            if self.state == State::SynReceived && seq == self.rcv.irs {
                self.due.syn = true;
            } else {
                self.challenge_ack();
            }
            return;
        }

        // Fifth: ACK. Without it the segment is dropped.
        let Some(ack) = seg.ack_number else {
            return;
        };

        if self.state == State::SynReceived {
            if ack > self.snd.una && ack <= self.snd.nxt {
                self.state = if self.fin_seq.is_some() { State::FinWait1 } else { State::Established };
                self.due.syn = false;
                self.snd.wnd = (seg.window_len as usize) << self.snd.wscale;
                self.snd.max_wnd = self.snd.max_wnd.max(self.snd.wnd);
                self.snd.wl1 = seq;
                self.snd.wl2 = ack;
                self.push_event(Event::Connected);
                self.arm_keepalive();
            } else {
                self.due.rst_reply = Some((ack, None));
                return;
            }
        }

        // RFC 5961 5.2: ACK validation.
        let max_wnd = self.snd.max_wnd.max(self.opts.mss);
        if ack > self.snd.nxt {
            self.ack.now = true;
            return;
        }
        if ack < self.snd.una - max_wnd {
            self.challenge_ack();
            return;
        }

        // RFC 7323 4.3: update TS.Recent.
        if self.ts.ok {
            if let Some(ts) = seg.timestamp {
                if seq <= self.rcv.last_ack_sent
                    && (ts.tsval.wrapping_sub(self.ts.recent) as i32) >= 0
                {
                    self.ts.recent = ts.tsval;
                    self.ts.recent_age = now;
                }
            }
        }

        self.process_ack(now, seg, ack);
        if self.state == State::Closed {
            return;
        }

        // Seventh: segment text.
        if !seg.payload.is_empty() && acceptable && self.state.can_receive_data() {
            {
                if self.orphan {
                    // Data after close(): nobody will read it (RFC 9293 3.10.4 / RFC 2525).
                    self.abort();
                    return;
                }
                self.receive_data(now, seg);
            }
        }

        // Eighth: FIN.
        if seg.control == TcpControl::Fin && acceptable {
            let fin = seq + seg.payload.len();
            if fin >= self.rcv.nxt && (fin < self.rcv.nxt + rcv_wnd || fin == self.rcv.nxt) {
                self.rcv_fin = Some(fin);
            }
            self.ack.now = true;
        }
        self.process_fin(now);
    }

    fn challenge_ack(&mut self) {
        self.counters.challenge_acks += 1;
        self.ack.now = true;
    }

    /// The FIN becomes effective once everything before it has arrived.
    fn process_fin(&mut self, now: Instant) {
        let Some(fin) = self.rcv_fin else { return };
        if fin != self.rcv.nxt {
            return;
        }
        self.rcv.nxt += 1;
        self.ack.now = true;
        self.push_event(Event::PeerClosed);
        self.push_event(Event::Readable);
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                // Our FIN not yet acknowledged: simultaneous close.
                self.state = State::Closing;
            }
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
    }

    /// A connection that will move no more data (TIME-WAIT, CLOSED) gives its rings back
    /// unless they still hold bytes the application has not read: 2 MSL of TIME-WAIT must not
    /// hold a connection's buffers (nor count them against the stack's budget).
    pub(super) fn release_buffers(&mut self) {
        self.tx.release_if_empty();
        self.rx.release_if_empty();
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.release_buffers();
        let keep = self.timers.deadline;
        self.timers.deadline = [None; TIMERS];
        self.timers.deadline[Timer::DelayedAck as usize] = keep[Timer::DelayedAck as usize];
        self.arm(Timer::TimeWait, now + self.cfg.msl.saturating_mul(2));
    }

    fn rtt_sample_from_timestamps(&mut self, now: Instant, seg: &TcpRepr<'_>) -> Option<()> {
        if !self.ts.ok {
            return None;
        }
        let ts = seg.timestamp?;
        if ts.tsecr == 0 {
            return None;
        }
        let elapsed_ms = self.tsval(now).wrapping_sub(ts.tsecr);
        // A TSecr from the future or wildly old is not a sample.
        if elapsed_ms > 60_000 {
            return None;
        }
        // Millisecond timestamps: a sub-millisecond RTT reads as 0; count it as 1 ms at most.
        let sample = Duration::from_millis(elapsed_ms as u64).max(Duration::from_micros(1));
        self.rtt.sample(sample);
        Some(())
    }

    /// The ACK field of an acceptable segment (RFC 9293 3.10.7.4 fifth check, RFC 5681,
    /// RFC 6675, RFC 6582).
    fn process_ack(&mut self, now: Instant, seg: &TcpRepr<'_>, ack: SeqNumber) {
        let window_before = self.snd.wnd;
        let in_flight_before = self.pipe();
        self.update_window(seg);

        let newly_sacked = if self.opts.sack_ok && !seg.sack_blocks.is_empty() {
            self.loss.scoreboard.update(self.snd.una, self.snd.nxt, seg.sack_blocks.as_slice())
        } else {
            0
        };

        if ack > self.snd.una {
            let acked = ack.distance_from(self.snd.una);
            // SYN and FIN occupy sequence space but no buffer.
            let mut data = acked;
            if self.snd.una == self.snd.iss {
                data -= 1;
            }
            let fin_acked = matches!(self.fin_seq, Some(f) if ack > f);
            if fin_acked && self.snd.una <= self.fin_seq.unwrap_or(ack) {
                data = data.saturating_sub(1);
            }
            self.tx.consume(data);
            self.snd.una = ack;
            // The new left edge was retransmitted already if it lies below high_rxt.
            self.loss.rtx_una_at = if ack < self.loss.high_rxt { self.loss.last_rtx_at } else { None };
            if self.loss.high_rxt < ack {
                self.loss.high_rxt = ack;
            }
            if self.loss.lost_until < ack {
                self.loss.lost_until = ack;
            }
            self.loss.scoreboard.ack(ack);
            self.timers.retries = 0;
            self.timers.persist_backoff = 0;

            // RTT: timestamps (RFC 7323 4.1) or the timed segment (RFC 6298 3, Karn).
            if self.rtt_sample_from_timestamps(now, seg).is_none() {
                if let Some((s, t)) = self.rtt_probe {
                    if ack > s {
                        self.rtt.sample(now - t);
                        self.rtt_probe = None;
                    }
                }
            }

            match self.loss.recovery {
                Some(r) if ack >= r.point => {
                    if r.kind == RecoveryKind::Fast {
                        let flight = self.flight_size();
                        self.cc.on_recovery_exit(now, flight);
                    } else {
                        self.cc.on_ack(now, acked, in_flight_before, self.rtt.srtt());
                    }
                    self.loss.recovery = None;
                }
                Some(Recovery { kind: RecoveryKind::Fast, .. }) => {
                    // Partial ACK (RFC 6582 3.2 step 5): the next segment is lost too.
                    if !self.opts.sack_ok {
                        self.loss.lost_until = self.snd.una + self.opts.mss;
                        self.loss.high_rxt = self.snd.una;
                        self.loss.rtx_now = true;
                    }
                }
                Some(Recovery { kind: RecoveryKind::Timeout, .. }) => {
                    self.cc.on_ack(now, acked, in_flight_before, self.rtt.srtt());
                }
                None => {
                    self.cc.on_ack(now, acked, in_flight_before, self.rtt.srtt());
                }
            }
            self.loss.dupacks = 0;

            if self.snd.una == self.snd.nxt {
                self.disarm(Timer::Retransmit);
                self.disarm(Timer::LossProbe);
                self.timers.unacked_since = None;
            } else {
                self.arm(Timer::Retransmit, now + self.rtt.rto());
                self.timers.unacked_since = Some(now);
                self.arm_loss_probe(now);
            }
            if fin_acked {
                match self.state {
                    State::FinWait1 => {
                        self.state = State::FinWait2;
                        if self.orphan {
                            self.arm(Timer::FinWait2, now + self.cfg.fin_timeout);
                        }
                    }
                    State::Closing => self.enter_time_wait(now),
                    State::LastAck => {
                        self.enter_closed(None);
                        return;
                    }
                    _ => {}
                }
            }
            if self.want_writable && self.tx.free() > 0 {
                self.want_writable = false;
                self.push_event(Event::Writable);
            }
        } else if ack == self.snd.una
            && seg.payload.is_empty()
            && seg.control == TcpControl::None
            && self.snd.nxt > self.snd.una
            && (self.snd.wnd == window_before || newly_sacked > 0)
        {
            // A duplicate ACK (RFC 5681 2, RFC 6675 2).
            self.counters.dupacks_in += 1;
            self.loss.dupacks += 1;
            self.detect_lost_retransmit(now, newly_sacked);
            if self.loss.recovery.is_none() {
                let lost = self.opts.sack_ok
                    && self
                        .loss.scoreboard
                        .holes(self.snd.una, self.snd.nxt, self.snd.una, self.opts.mss)
                        .next()
                        .is_some_and(|h| h.lost_end > h.start && h.start == self.snd.una);
                if self.loss.dupacks as usize >= DUP_THRESH || lost {
                    self.enter_fast_recovery(now);
                }
            }
        }

        // Persist: a zero window with data waiting and nothing in flight.
        self.update_persist(now);
    }

    /// Window update (RFC 9293 3.10.7.4: SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and
    /// SND.WL2 =< SEG.ACK)).
    fn update_window(&mut self, seg: &TcpRepr<'_>) {
        let Some(ack) = seg.ack_number else { return };
        if ack < self.snd.una {
            return;
        }
        // RFC 9293 3.10.7.4's WL1/WL2 test keeps old segments from updating the window; an
        // ACK that advances SND.UNA is newer than every window taken so far whatever its
        // sequence number (a retransmission of the peer's data carries its current ACK and
        // window), and the window is relative to it: keeping the old one would slide the edge
        // forward with SND.UNA past what the peer announced (Linux: tcp_may_update_window).
        if ack > self.snd.una
            || self.snd.wl1 < seg.seq_number
            || (self.snd.wl1 == seg.seq_number && self.snd.wl2 <= ack)
        {
            self.snd.wnd = (seg.window_len as usize) << self.snd.wscale;
            self.snd.max_wnd = self.snd.max_wnd.max(self.snd.wnd);
            self.snd.wl1 = seg.seq_number;
            self.snd.wl2 = ack;
        }
    }

    fn receive_data(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let mut payload = seg.payload;
        let mut seq = seg.seq_number;
        // Trim what we already have.
        if seq < self.rcv.nxt {
            let dup = self.rcv.nxt.distance_from(seq).min(payload.len());
            payload = &payload[dup..];
            seq += dup;
        }
        if payload.is_empty() {
            self.ack.now = true;
            return;
        }
        let off = seq.distance_from(self.rcv.nxt);
        // Trim to the advertised window.
        let wnd = self.rcv.adv.distance_from(self.rcv.nxt);
        let room = wnd.saturating_sub(off);
        let payload = &payload[..payload.len().min(room)];
        if payload.is_empty() {
            self.ack.now = true;
            return;
        }
        let had_ooo = !self.rx.assembler.is_empty();
        match self.rx.write(off, payload) {
            None => {
                self.counters.rcv_buffer_drops += 1;
                self.ack.now = true;
            }
            Some(0) => {
                // Out of order: ACK at once with SACK (RFC 5681 4.2, RFC 2018 4).
                self.counters.ooo_segs_in += 1;
                self.ack.now = true;
            }
            Some(n) => {
                self.rcv.nxt += n;
                self.counters.bytes_in += n as u64;
                self.push_event(Event::Readable);
                self.ack.segs_unacked += 1;
                if had_ooo || self.ack.quickacks > 0 || self.cfg.delayed_ack.is_none() {
                    // Filling a hole is ACKed at once (RFC 5681 4.2).
                    self.ack.quickacks = self.ack.quickacks.saturating_sub(1);
                    self.ack.now = true;
                } else if self.ack.segs_unacked >= 2 {
                    // RFC 5681 4.2: at least every second full-sized segment.
                    self.ack.now = true;
                } else if self.timers.deadline[Timer::DelayedAck as usize].is_none() {
                    let d = self.cfg.delayed_ack.unwrap_or(Duration::ZERO);
                    self.arm(Timer::DelayedAck, now + d);
                }
            }
        }
    }
}
