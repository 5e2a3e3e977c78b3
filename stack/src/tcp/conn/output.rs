//! Transmission: deciding the next segment (SYN, retransmission, tail loss probe, new data
//! under SWS avoidance and Nagle, probes, ACKs) and writing it, with its bookkeeping.

use super::*;

/// What one segment to send is made of.
#[derive(Debug, Clone, Copy)]
struct Plan {
    seq: SeqNumber,
    control: TcpControl,
    /// Offset into the send buffer and length of the payload.
    off: usize,
    len: usize,
    ack: bool,
    retransmit: bool,
}

impl Connection {
    /// Receive window to advertise, before scaling.
    fn rcv_window(&self) -> usize {
        let advertised = self.rcv.adv.distance_from(self.rcv.nxt);
        let free = self.rx.window();
        // Receiver SWS avoidance: only move the right edge by a worthwhile amount.
        let threshold = (self.rx.capacity() / 2).min(self.opts.mss);
        if free >= advertised + threshold || free == 0 {
            free.max(advertised)
        } else {
            advertised
        }
    }

    /// Decide what the next segment is, if any.
    fn plan(&mut self) -> Option<Plan> {
        match self.state {
            State::Closed => return None,
            State::SynSent | State::SynReceived => {
                if self.due.syn {
                    return Some(Plan {
                        seq: self.snd.iss,
                        control: TcpControl::Syn,
                        off: 0,
                        len: 0,
                        ack: self.state == State::SynReceived,
                        retransmit: self.timers.retries > 0,
                    });
                }
                if self.state == State::SynSent || !self.ack.now {
                    return None;
                }
            }
            _ => {}
        }
        if self.state == State::SynReceived {
            return None;
        }

        // Retransmission (RFC 6675 NextSeg rule 1, or go-back-N after a timeout).
        let pipe = self.pipe();
        let cwnd = self.cc.cwnd();
        if self.loss.lost_until > self.snd.una || self.opts.sack_ok {
            if let Some((seq, avail)) = self.loss.scoreboard.next_lost(
                self.snd.una,
                self.snd.nxt,
                self.loss.high_rxt,
                self.loss.lost_until,
                self.opts.mss,
            ) {
                if pipe < cwnd || self.loss.rtx_now {
                    self.loss.rtx_now = false;
                    return Some(self.data_plan(seq, avail.min(self.opts.mss), true));
                }
            }
        }

        // Tail loss probe: new data if the windows allow it, else the last segment again.
        if self.loss.probe_rtx {
            self.loss.probe_rtx = false;
            let sent = self.sent_data();
            let unsent = self.tx.len() - sent;
            let wnd_room = (self.snd.una + self.snd.wnd).distance_from(self.snd.nxt);
            if unsent == 0 || wnd_room == 0 {
                let len = sent.min(self.opts.mss);
                if len > 0 {
                    return Some(self.data_plan(self.snd.una + (sent - len), len, true));
                }
            } else {
                let len = unsent.min(self.opts.mss).min(wnd_room);
                return Some(self.data_plan(self.snd.nxt, len, false));
            }
        }

        // New data (RFC 9293 3.8.6.2.1 sender SWS avoidance, Nagle per RFC 896).
        if self.state.can_send_data() {
            let sent = self.sent_data();
            let unsent = self.tx.len() - sent;
            let wnd_end = self.snd.una + self.snd.wnd;
            let wnd_room = wnd_end.distance_from(self.snd.nxt);
            let cwnd_room = cwnd.saturating_sub(pipe);
            let len = unsent.min(self.opts.mss).min(wnd_room).min(cwnd_room);
            let fin_now = self.fin_seq.is_some_and(|f| self.snd.nxt <= f) && len == unsent;
            if len > 0 {
                let nothing_in_flight = self.snd.nxt == self.snd.una;
                let send = len == self.opts.mss
                    || (len == unsent && (self.cfg.nodelay || nothing_in_flight || fin_now))
                    || (self.snd.max_wnd > 0 && len >= self.snd.max_wnd / 2 && nothing_in_flight)
                    || (self.due.probe && nothing_in_flight);
                if send {
                    self.due.probe = false;
                    let mut p = self.data_plan(self.snd.nxt, len, false);
                    if fin_now {
                        p.control = TcpControl::Fin;
                    }
                    return Some(p);
                }
            } else if unsent == 0
                && self.fin_seq.is_some_and(|f| self.snd.nxt == f)
                && (cwnd_room > 0 || pipe == 0)
            {
                return Some(Plan {
                    seq: self.snd.nxt,
                    control: TcpControl::Fin,
                    off: sent,
                    len: 0,
                    ack: true,
                    retransmit: false,
                });
            }
        }

        // Probes (zero window, keepalive): a pure ACK with an old sequence number elicits an
        // ACK without consuming sequence space (what Linux sends).
        if self.due.probe {
            self.due.probe = false;
            return Some(Plan {
                seq: self.snd.una - 1,
                control: TcpControl::None,
                off: 0,
                len: 0,
                ack: true,
                retransmit: false,
            });
        }

        if self.ack.now {
            return Some(Plan {
                seq: self.snd.nxt,
                control: TcpControl::None,
                off: 0,
                len: 0,
                ack: true,
                retransmit: false,
            });
        }
        None
    }

    /// A segment of `len` data bytes from `seq` (new or retransmitted), with a FIN if it
    /// reaches ours.
    fn data_plan(&self, seq: SeqNumber, len: usize, retransmit: bool) -> Plan {
        let off = seq.distance_from(self.snd.una);
        let mut plan = Plan { seq, control: TcpControl::None, off, len, ack: true, retransmit };
        // Never read past the buffer: a retransmitted range may end with our FIN.
        let data_avail = self.tx.len().saturating_sub(off);
        if plan.len > data_avail {
            plan.len = data_avail;
            if self.fin_seq.is_some_and(|f| seq + plan.len == f) {
                plan.control = TcpControl::Fin;
            }
        }
        plan
    }

    /// Write the next segment into `out` (which must hold at least MSS + 60 bytes). Returns the
    /// TCP segment length.
    ///
    /// What is written is the TCP header and payload, checksummed over the IPv4 pseudo-header
    /// of the 4-tuple; the caller adds the IPv4 and link headers. A pending RST comes first,
    /// even in CLOSED. `None` when nothing is due now: call in a loop until `None` after
    /// every `handle_segment`, `handle_timeout` and command (each call writes one segment).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        if let Some((seq, ack)) = self.due.rst_reply.take() {
            return Some(self.emit_rst(out, seq, ack));
        }
        if self.due.rst {
            self.due.rst = false;
            let seq = self.snd.nxt;
            let ack = self.rcv.nxt;
            return Some(self.emit_rst(out, seq, Some(ack)));
        }
        if !self.may_transmit() {
            self.nothing_to_transmit();
            return None;
        }
        let Some(plan) = self.plan() else {
            self.update_persist(now);
            return None;
        };
        Some(self.emit(now, out, plan))
    }

    /// What `poll_transmit` does when [`Connection::may_transmit`] is false, without
    /// planning: nothing is unsent, so no persist timer either.
    pub(crate) fn nothing_to_transmit(&mut self) {
        // The unit tests (and the simulations under src/) check the shortcut against the
        // planner; `plan` has no side effects when it finds nothing.
        #[cfg(test)]
        assert!(self.plan().is_none(), "may_transmit() said no but plan() has a segment: {self:?}");
        self.disarm(Timer::Persist);
    }

    /// False only when [`Connection::poll_transmit`] certainly has nothing to send: no RST,
    /// SYN, ACK, probe or retransmission is due, every byte and the FIN (if any) went out, and
    /// nothing is marked lost. A cheap test run before planning (most visits to a connection
    /// after it received something find nothing to send).
    pub fn may_transmit(&self) -> bool {
        self.due.rst_reply.is_some()
            || self.due.rst
            || self.ack.now
            || self.due.syn
            || self.due.probe
            || self.loss.probe_rtx
            || self.loss.rtx_now
            || self.tx.len() > self.sent_data()
            || self.fin_seq.is_some_and(|f| self.snd.nxt <= f)
            || self.loss.lost_until > self.snd.una
            || !self.loss.scoreboard.is_empty()
    }

    fn emit_rst(&mut self, out: &mut [u8], seq: SeqNumber, ack: Option<SeqNumber>) -> usize {
        let mut r = TcpRepr::new(self.tuple.local.port(), self.tuple.remote.port(), seq);
        r.control = TcpControl::Rst;
        r.ack_number = ack;
        let len = r.buffer_len();
        r.emit(&mut TcpPacket::new_unchecked(&mut out[..len]), *self.tuple.local.ip(), *self.tuple.remote.ip());
        self.counters.segs_out += 1;
        len
    }

    fn emit(&mut self, now: Instant, out: &mut [u8], mut plan: Plan) -> usize {
        let mut r = TcpRepr::new(self.tuple.local.port(), self.tuple.remote.port(), plan.seq);
        r.control = plan.control;
        r.ack_number = plan.ack.then_some(self.rcv.nxt);
        let is_syn = plan.control == TcpControl::Syn;
        let window = self.rcv_window();
        if is_syn {
            // RFC 7323 2.2: the SYN's window is not scaled.
            r.window_len = window.min(65535) as u16;
            r.max_seg_size = Some(self.cfg.mss);
            let offer_ws = self.cfg.window_scaling && (self.state == State::SynSent || self.opts.ws_ok);
            r.window_scale = offer_ws.then_some(self.rcv.wscale);
            r.sack_permitted = self.cfg.sack && (self.state == State::SynSent || self.opts.sack_ok);
            let ts_on = self.cfg.timestamps && (self.state == State::SynSent || self.ts.ok);
            if ts_on {
                r.timestamp = Some(TcpTimestamp {
                    tsval: self.tsval(now),
                    tsecr: if self.state == State::SynReceived { self.ts.recent } else { 0 },
                });
            }
            self.rcv.adv = self.rcv.nxt + window.min(65535);
        } else {
            let mut field = window >> self.rcv.wscale;
            let edge = self.rcv.adv.distance_from(self.rcv.nxt);
            // Round up rather than announce less than the edge already announced (RFC 9293
            // 3.8.6.2.2), but only as far as the ring holds: rounding up from an edge that was
            // itself rounded up would creep past it, and bytes inside the window would be
            // dropped. When it does not fit, the announced window stays a few bytes short of
            // the edge, and the edge itself (still storable) keeps counting for acceptance.
            if (field << self.rcv.wscale) < edge && ((field + 1) << self.rcv.wscale) <= self.rx.storable() {
                field += 1;
            }
            let field = field.min(65535);
            r.window_len = field as u16;
            let new_edge = self.rcv.nxt + (field << self.rcv.wscale);
            if new_edge > self.rcv.adv {
                self.rcv.adv = new_edge;
            }
            if self.ts.ok {
                r.timestamp = Some(TcpTimestamp { tsval: self.tsval(now), tsecr: self.ts.recent });
            }
            if self.opts.sack_ok && !self.rx.assembler.is_empty() {
                r.sack_blocks = self.sack_blocks();
            }
        }
        // SACK blocks take room from the payload (the MSS already accounts for timestamps),
        // and the segment must fit the caller's buffer whatever happens.
        let hl = r.header_len();
        let room = (self.opts.mss + 20 + if self.ts.ok { 12 } else { 0 }).min(out.len()).saturating_sub(hl);
        if plan.len > room {
            plan.len = room;
            if plan.control == TcpControl::Fin {
                plan.control = TcpControl::None;
            }
        }
        r.control = plan.control;
        r.psh = plan.len > 0 && plan.off + plan.len == self.tx.len();
        let total = hl + plan.len;
        {
            let mut p = TcpPacket::new_unchecked(&mut out[..total]);
            r.emit_header(&mut p);
            let n = self.tx.read_at(plan.off, &mut p.payload_mut()[..plan.len]);
            debug_assert_eq!(n, plan.len);
            p.fill_checksum(*self.tuple.local.ip(), *self.tuple.remote.ip());
        }

        // Bookkeeping.
        self.counters.segs_out += 1;
        self.timers.last_send = now;
        if plan.ack {
            self.ack.now = false;
            self.ack.segs_unacked = 0;
            self.rcv.last_ack_sent = self.rcv.nxt;
            self.disarm(Timer::DelayedAck);
        }
        let seq_len = plan.len + plan.control.len();
        if is_syn {
            self.due.syn = false;
            if !plan.retransmit {
                self.rtt_probe = Some((plan.seq, now));
            } else {
                self.rtt_probe = None;
            }
            self.arm(Timer::Retransmit, now + self.rtt.rto());
        } else if seq_len > 0 {
            let end = plan.seq + seq_len;
            if plan.retransmit || plan.seq < self.snd.nxt {
                self.loss.last_rtx_at = Some(now);
                if plan.seq == self.snd.una {
                    self.loss.rtx_una_at = Some(now);
                }
                self.counters.retrans_segs += 1;
                self.counters.retrans_bytes += plan.len as u64;
                if end > self.loss.high_rxt {
                    self.loss.high_rxt = end;
                }
                if self.rtt_probe.is_some_and(|(s, _)| s >= plan.seq && s < end) {
                    self.rtt_probe = None;
                }
            } else {
                // RFC 5681 4.1: restart after idle.
                if self.snd.una == self.snd.nxt && now - self.timers.last_recv > self.rtt.rto() && self.counters.bytes_out > 0 {
                    self.cc.on_idle_restart(now);
                }
                self.counters.bytes_out += plan.len as u64;
                if self.rtt_probe.is_none() && !self.ts.ok && self.loss.recovery.is_none() {
                    self.rtt_probe = Some((plan.seq, now));
                }
                if self.snd.una == self.snd.nxt {
                    self.timers.unacked_since = Some(now);
                }
                self.snd.nxt = end;
                if self.loss.high_rxt < self.snd.una {
                    self.loss.high_rxt = self.snd.una;
                }
            }
            // RFC 6298 5.1: start the timer if it is not running.
            if self.timers.deadline[Timer::Retransmit as usize].is_none() {
                self.arm(Timer::Retransmit, now + self.rtt.rto());
            }
            if !plan.retransmit {
                self.arm_loss_probe(now);
            }
            self.disarm(Timer::Persist);
        }
        total
    }

    /// SACK blocks to send (RFC 2018 4): the most recently changed first, then the others
    /// from the highest down.
    fn sack_blocks(&self) -> SackBlocks {
        let mut b = SackBlocks::EMPTY;
        let base = self.rcv.nxt;
        let recent = self.rx.assembler.recent();
        if let Some((s, e)) = recent {
            b.push(base + s, base + e);
        }
        for &(s, e) in self.rx.assembler.ranges().iter().rev() {
            if Some((s, e)) == recent {
                continue;
            }
            if !b.push(base + s, base + e) {
                break;
            }
        }
        b
    }
}
