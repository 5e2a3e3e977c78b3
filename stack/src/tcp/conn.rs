//! One TCP connection: the RFC 9293 state machine, sans-IO.
//!
//! Entry points (quinn-proto's contract):
//! - `handle_segment(now, &TcpRepr)`: a segment for this 4-tuple arrived (already parsed and
//!   checksummed).
//! - `handle_timeout(now)`: called at or after `poll_timeout()`.
//! - `poll_transmit(now, out)`: write the next segment (TCP header and payload, checksummed)
//!   into `out`; `None` when nothing is due. Call until `None`.
//! - `poll_event()`: what the application should hear about (connected, readable, ...).
//! - Application commands: `send`, `recv`, `peek`, `shutdown`, `close`, `abort`.
//!
//! The state is grouped as RFC 9293 3.3.1 groups it: the send sequence space `snd`
//! (`self.snd.una`, `self.snd.nxt`, `self.snd.wl1`, ...), the receive sequence space `rcv`
//! (`self.rcv.nxt`, ...), then the negotiated options, timestamps, loss recovery, ACK state and
//! timers, each a struct of its own so the handoff record ([`super::snapshot`]) can account for
//! every field. Timers are a table indexed by [`Timer`].
//!
//! This file holds the types, constructors, accessors and application commands; the rest of
//! the `impl` is spread by phase: `input` (segment arrival), `output` (planning and writing
//! segments), `recovery` (loss recovery and the RTO) and `timers`. Loss recovery follows RFC 6675 (with SACK) and
//! RFC 6582 (without), sharing one `pipe`/`NextSeg` machinery in [`super::sack`].

use std::net::SocketAddrV4;

use super::buffer::{RecvBuffer, SendBuffer};
use super::cc::CongestionControl;
use super::rtt::RttEstimator;
use super::sack::DUP_THRESH;
use super::Config;
use crate::time::{Duration, Instant};
use crate::wire::{SackBlocks, SeqNumber, TcpControl, TcpPacket, TcpRepr, TcpTimestamp};

/// The connection's 4-tuple, from this stack's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Our address and port: the source of the segments we send.
    pub local: SocketAddrV4,
    /// The peer's address and port.
    pub remote: SocketAddrV4,
}

/// RFC 9293 3.3.2 states. LISTEN lives in [`super::Listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// No connection any more ([`Event::Closed`] was raised on entry). It ignores segments;
    /// a RST may still be due ([`Connection::rst_pending`]).
    Closed,
    /// Active open: our SYN is sent (or due), waiting for the peer's SYN-ACK.
    SynSent,
    /// Our SYN-ACK is sent, waiting for the ACK of our SYN (a passive open, or a
    /// simultaneous open, RFC 9293 3.5).
    SynReceived,
    /// Both SYNs acknowledged: data flows both ways.
    Established,
    /// We sent FIN (after `shutdown` or `close`); it is not acknowledged yet.
    FinWait1,
    /// Our FIN is acknowledged; waiting for the peer's. Data from the peer still arrives.
    /// An orphaned connection leaves after [`super::Config::fin_timeout`].
    FinWait2,
    /// The peer sent FIN; we may still send until the application shuts down.
    CloseWait,
    /// Both sides sent FIN before either was acknowledged (simultaneous close); waiting for
    /// the ACK of ours.
    Closing,
    /// The peer closed first and we sent our FIN; waiting for its ACK, then CLOSED.
    LastAck,
    /// Both FINs exchanged and acknowledged, and ours was sent first or at the same time
    /// (from FIN-WAIT-2 or CLOSING): 2 MSL ([`super::Config::msl`]) to absorb delayed
    /// segments, then CLOSED. The buffers are released on entry unless unread data remains.
    TimeWait,
}

impl State {
    /// Synchronized states (RFC 9293 3.5.2).
    pub fn is_synchronized(self) -> bool {
        !matches!(self, State::Closed | State::SynSent | State::SynReceived)
    }
    fn can_receive_data(self) -> bool {
        matches!(self, State::Established | State::FinWait1 | State::FinWait2)
    }
    fn can_send_data(self) -> bool {
        matches!(
            self,
            State::Established | State::CloseWait | State::FinWait1 | State::Closing | State::LastAck
        )
    }
}

/// What the application hears, from [`Connection::poll_event`]. Pending events form a set:
/// each kind is reported once however often it happened since the last poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The handshake completed (ESTABLISHED, or FIN-WAIT-1 if the application already shut
    /// down): from an active open when the SYN-ACK arrives, from a passive one when the ACK
    /// of our SYN-ACK does, and at once for a connection made by a SYN cookie.
    Connected,
    /// New in-order data can be read, or the peer's FIN arrived (then `recv` returns 0 once
    /// the data is read).
    Readable,
    /// Room appeared in the send buffer after a `send` failed with [`Error::WouldBlock`].
    /// Raised only after such a failure.
    Writable,
    /// The peer sent FIN: no more data will arrive.
    PeerClosed,
    /// The connection was reset: a RST from the peer (in SYN-SENT: the connection was
    /// refused), or the stack ended it ([`Connection::abort_by_stack`]). [`Event::Closed`]
    /// comes with it and [`Connection::error`] is [`Error::Reset`].
    Reset,
    /// The connection gave up: SYN or data retransmissions exhausted, the user timeout or
    /// keepalive expired. [`Event::Closed`] comes with it and [`Connection::error`] is
    /// [`Error::TimedOut`].
    TimedOut,
    /// The connection reached CLOSED and can be freed.
    Closed,
}

impl Event {
    /// Take the first event out of a set from [`Connection::take_events`].
    pub(crate) fn pop(set: &mut u8) -> Option<Event> {
        if *set == 0 {
            return None;
        }
        let i = set.trailing_zeros() as usize;
        *set &= !(1 << i);
        EVENTS.get(i).copied()
    }
}

const EVENTS: [Event; 7] = [
    Event::Connected,
    Event::Readable,
    Event::Writable,
    Event::PeerClosed,
    Event::Reset,
    Event::TimedOut,
    Event::Closed,
];

/// Errors of the application commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// Nothing to read yet / no room to write yet.
    WouldBlock,
    /// The connection is not (yet, or any more) in a state for this command.
    NotConnected,
    /// Writing after `shutdown`/`close`.
    Shutdown,
    /// The peer reset the connection (or refused it, in SYN-SENT).
    Reset,
    /// Retransmissions, the user timeout or keepalive gave up.
    TimedOut,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::WouldBlock => "operation would block",
            Error::NotConnected => "not connected",
            Error::Shutdown => "connection shut down for writing",
            Error::Reset => "connection reset by peer",
            Error::TimedOut => "connection timed out",
        })
    }
}
impl std::error::Error for Error {}

/// The timer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Timer {
    /// RFC 6298 retransmission timer (also SYN retransmission).
    Retransmit,
    /// Delayed ACK (RFC 5681 4.2, RFC 9293 3.8.6.3): acknowledge a lone in-order segment
    /// after [`super::Config::delayed_ack`] if no other reason to ACK came first.
    DelayedAck,
    /// Zero-window probing (RFC 9293 3.8.6.1).
    Persist,
    /// Keepalive probing (RFC 9293 3.8.4): idle time, then the interval between probes
    /// ([`super::Keepalive`]).
    Keepalive,
    /// 2 MSL in TIME-WAIT.
    TimeWait,
    /// Orphaned connection in FIN-WAIT-2.
    FinWait2,
    /// Tail loss probe (RFC 8985 7): retransmit the last segment before the RTO would.
    LossProbe,
}
pub(crate) const TIMERS: usize = 7;
const ALL_TIMERS: [Timer; TIMERS] = [
    Timer::Retransmit,
    Timer::DelayedAck,
    Timer::Persist,
    Timer::Keepalive,
    Timer::TimeWait,
    Timer::FinWait2,
    Timer::LossProbe,
];

/// Counters per connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnCounters {
    /// Segments given to [`Connection::handle_segment`], whatever became of them.
    pub segs_in: u64,
    /// Segments written by [`Connection::poll_transmit`], RSTs and retransmissions included.
    pub segs_out: u64,
    /// Payload bytes accepted in order.
    pub bytes_in: u64,
    /// New payload bytes sent (not counting retransmissions).
    pub bytes_out: u64,
    /// Data or FIN segments sent again (after a timeout, in recovery, or as a tail loss
    /// probe of old data). SYN retransmissions are not counted here (see `timeouts`).
    pub retrans_segs: u64,
    /// Payload bytes in `retrans_segs`.
    pub retrans_bytes: u64,
    /// Entries into fast recovery (RFC 5681 3.2, RFC 6582, RFC 6675 5): by 3 duplicate ACKs
    /// or by SACK showing the first segment lost.
    pub fast_recoveries: u64,
    /// Retransmission timer expiries that retransmitted (SYN and SYN-ACK included); the
    /// expiry that gives up is not counted.
    pub timeouts: u64,
    /// Duplicate ACKs received (RFC 5681 2; with SACK, RFC 6675 2: an ACK that SACKs new
    /// data counts even if the window changed).
    pub dupacks_in: u64,
    /// Data segments stored out of order (above RCV.NXT), each answered at once with an ACK.
    pub ooo_segs_in: u64,
    /// Challenge ACKs sent (RFC 5961): for a RST not exactly at RCV.NXT, a SYN in a
    /// synchronized state, or an ACK below the acceptable range.
    pub challenge_acks: u64,
    /// Segments dropped by PAWS (RFC 7323 5.3: TSval older than TS.Recent), each answered
    /// with an ACK.
    pub paws_drops: u64,
    /// Segments failing the sequence test (RFC 9293 3.10.7.4, first check), dropped and,
    /// unless they are RSTs, answered with an ACK.
    pub unacceptable_segs: u64,
    /// Persist-timer expiries that sent a zero-window probe (RFC 9293 3.8.6.1).
    pub window_probes: u64,
    /// In-window data segments dropped because the receive ring could not keep them: one more
    /// out-of-order range than [`super::buffer::Assembler::MAX_RANGES`], or past the ring's end.
    pub rcv_buffer_drops: u64,
    /// Retransmissions found lost again (and resent) before the RTO.
    pub lost_retransmits: u64,
    /// Tail loss probes scheduled (RFC 8985 7): the probe timer fired with data in flight
    /// outside recovery.
    pub loss_probes: u64,
}

/// Quick-ACK budget at start: acknowledge the first segments at once so the peer's slow start
/// is not held back by delayed ACKs (Linux's quickack mode).
const QUICKACKS: u32 = 16;

/// One TCP connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub(crate) tuple: Tuple,
    pub(crate) state: State,
    pub(crate) cfg: Config,
    /// Came from a listener (passive open): a RST in SYN-RECEIVED frees it silently.
    pub(crate) passive: bool,

    pub(crate) snd: SendSeq,
    pub(crate) rcv: RecvSeq,
    pub(crate) opts: Options,
    pub(crate) ts: Timestamps,
    /// Our TSval is `now_ms + ts_offset` (RFC 7323 5.4: random per connection). Not in
    /// [`Timestamps`]: fixed at creation, and read by the stack's tests as this field.
    pub(crate) ts_offset: u32,

    pub(crate) tx: SendBuffer,
    pub(crate) rx: RecvBuffer,
    /// Sequence number of our FIN once the application closed the send side.
    pub(crate) fin_seq: Option<SeqNumber>,
    /// Sequence number of the peer's FIN, even if it arrived out of order.
    pub(crate) rcv_fin: Option<SeqNumber>,

    pub(crate) loss: LossRecovery,
    pub(crate) cc: CongestionControl,
    pub(crate) rtt: RttEstimator,
    /// RTT timing of one segment when timestamps are off (Karn's algorithm).
    pub(crate) rtt_probe: Option<(SeqNumber, Instant)>,

    pub(crate) ack: AckState,
    pub(crate) due: Due,
    pub(crate) timers: Timers,

    pub(crate) events: u8,
    pub(crate) error: Option<Error>,
    /// The application called `close`: nobody will read; the stack frees the connection when it
    /// reaches CLOSED.
    pub(crate) orphan: bool,
    /// `send` on a connection whose send buffer was full: tell when room appears.
    pub(crate) want_writable: bool,
    /// This connection's statistics, counted since it was created or restored (they stay
    /// with the giver of a handoff).
    pub counters: ConnCounters,
}

impl Connection {
    fn new(now: Instant, tuple: Tuple, iss: SeqNumber, ts_offset: u32, cfg: &Config) -> Self {
        let rcv_wscale = cfg.rcv_wscale();
        let cfg = cfg.clone();
        Connection {
            tuple,
            state: State::Closed,
            passive: false,
            snd: SendSeq {
                iss,
                una: iss,
                nxt: iss + 1,
                wnd: 0,
                wl1: SeqNumber(0),
                wl2: iss,
                max_wnd: 0,
                wscale: 0,
            },
            rcv: RecvSeq {
                irs: SeqNumber(0),
                nxt: SeqNumber(0),
                adv: SeqNumber(0),
                last_ack_sent: SeqNumber(0),
                wscale: rcv_wscale,
            },
            opts: Options {
                mss: 536,
                peer_mss: 536,
                path_mtu: cfg.mss.saturating_add(40),
                sack_ok: false,
                ws_ok: false,
            },
            ts: Timestamps { ok: false, recent: 0, recent_age: now },
            ts_offset,
            tx: SendBuffer::new(cfg.send_buffer),
            rx: RecvBuffer::new(cfg.recv_buffer, 1 << rcv_wscale),
            fin_seq: None,
            rcv_fin: None,
            loss: LossRecovery::new(iss),
            cc: CongestionControl::new(cfg.congestion, 536),
            rtt: RttEstimator::new(cfg.initial_rto, cfg.min_rto, cfg.max_rto),
            rtt_probe: None,
            ack: AckState { now: false, segs_unacked: 0, quickacks: QUICKACKS },
            due: Due { syn: true, ..Due::default() },
            timers: Timers::new(now),
            events: 0,
            error: None,
            orphan: false,
            want_writable: false,
            counters: ConnCounters::default(),
            cfg,
        }
    }

    /// Active open (RFC 9293 3.10.1, OPEN call in CLOSED): the SYN goes out on the next
    /// `poll_transmit`. `iss` is our initial sequence number (RFC 6528,
    /// [`super::isn::IsnGenerator::isn`]); `ts_offset` is added to our millisecond clock to
    /// make our TSvals (RFC 7323 5.4: random per connection). [`Event::Connected`] follows
    /// the peer's SYN-ACK; after [`super::Config::syn_retries`] unanswered SYNs, or a RST,
    /// the connection closes with an error. Data sent before then is queued.
    pub fn connect(now: Instant, tuple: Tuple, iss: SeqNumber, ts_offset: u32, cfg: &Config) -> Self {
        let mut c = Connection::new(now, tuple, iss, ts_offset, cfg);
        c.state = State::SynSent;
        c.update_mss();
        c
    }

    /// Passive open: a listener accepted `syn` (RFC 9293 3.10.7.2, LISTEN, third check).
    pub fn accept(
        now: Instant,
        tuple: Tuple,
        syn: &TcpRepr<'_>,
        iss: SeqNumber,
        ts_offset: u32,
        cfg: &Config,
    ) -> Self {
        let mut c = Connection::new(now, tuple, iss, ts_offset, cfg);
        c.state = State::SynReceived;
        c.passive = true;
        c.rcv.irs = syn.seq_number;
        c.rcv.nxt = syn.seq_number + 1;
        c.rcv.adv = c.rcv.nxt;
        c.negotiate(now, syn);
        // RFC 7323 2.2: the window in a SYN is never scaled.
        c.snd.wnd = syn.window_len as usize;
        c.snd.max_wnd = c.snd.wnd;
        c.snd.wl1 = syn.seq_number;
        c
    }

    /// A connection completed by a valid SYN cookie (RFC 4987 3.6): straight to ESTABLISHED.
    /// `ack` is the peer's third-handshake segment; `mss`, `wscale`, `sack` come from the cookie.
    #[allow(clippy::too_many_arguments)]
    pub fn from_cookie(
        now: Instant,
        tuple: Tuple,
        ack: &TcpRepr<'_>,
        iss: SeqNumber,
        mss: u16,
        wscale: Option<u8>,
        sack: bool,
        ts_offset: u32,
        cfg: &Config,
    ) -> Self {
        let mut c = Connection::new(now, tuple, iss, ts_offset, cfg);
        c.passive = true;
        c.rcv.irs = ack.seq_number - 1;
        c.rcv.nxt = ack.seq_number;
        // The cookie SYN-ACK advertised an unscaled window of this size.
        c.rcv.adv = c.rcv.nxt + cfg.recv_buffer.min(65535);
        c.opts.peer_mss = mss;
        c.opts.sack_ok = sack && cfg.sack;
        if let (Some(ts), true) = (ack.timestamp, cfg.timestamps) {
            c.ts.ok = true;
            c.ts.recent = ts.tsval;
            c.ts.recent_age = now;
        }
        match (wscale, cfg.window_scaling) {
            (Some(ws), true) => {
                c.snd.wscale = ws;
                c.opts.ws_ok = true;
            }
            _ => {
                c.rcv.wscale = 0;
                c.rx = RecvBuffer::new(cfg.recv_buffer, 1);
            }
        }
        c.update_mss();
        c.state = State::Established;
        c.snd.una = iss + 1;
        c.snd.nxt = iss + 1;
        c.loss.high_rxt = c.snd.una;
        c.loss.lost_until = c.snd.una;
        c.due.syn = false;
        // The ACK's window is the first the peer gives us (scaled: RFC 7323 2.2, only a SYN's
        // is not). Take it as RFC 9293 3.10.7.3 does in SYN-RECEIVED, "set SND.WND <-
        // SEG.WND, SND.WL1 <- SEG.SEQ, SND.WL2 <- SEG.ACK": from SND.WL1 = 0 the comparison
        // SND.WL1 < SEG.SEQ fails for any SEG.SEQ at or above 2^31 and the window stays 0.
        c.snd.wl1 = ack.seq_number;
        c.snd.wl2 = c.snd.una;
        c.snd.wnd = (ack.window_len as usize) << c.snd.wscale;
        c.snd.max_wnd = c.snd.wnd;
        c.push_event(Event::Connected);
        c
    }

    /// Apply the SYN's options (RFC 9293 3.7.1, RFC 7323 1.3 and 3.2, RFC 2018 2).
    fn negotiate(&mut self, now: Instant, syn: &TcpRepr<'_>) {
        self.opts.peer_mss = syn.max_seg_size.unwrap_or(536);
        self.opts.sack_ok = syn.sack_permitted && self.cfg.sack;
        match (syn.window_scale, self.cfg.window_scaling) {
            (Some(ws), true) => {
                self.snd.wscale = ws;
                self.opts.ws_ok = true;
            }
            _ => {
                // Scaling is used only when both sides offer it.
                self.opts.ws_ok = false;
                self.snd.wscale = 0;
                if self.rcv.wscale != 0 {
                    self.rcv.wscale = 0;
                    self.rx = RecvBuffer::new(self.cfg.recv_buffer, 1);
                }
            }
        }
        if let (Some(ts), true) = (syn.timestamp, self.cfg.timestamps) {
            self.ts.ok = true;
            self.ts.recent = ts.tsval;
            self.ts.recent_age = now;
        } else {
            self.ts.ok = false;
        }
        self.update_mss();
    }

    /// Effective send MSS (RFC 6691): the smaller of the peer's MSS and our path MTU, less the
    /// options we put in every segment.
    pub(crate) fn update_mss(&mut self) {
        let from_path = (self.opts.path_mtu as usize).saturating_sub(40);
        let mut mss = (self.opts.peer_mss as usize).min(from_path).min(self.cfg.mss as usize);
        if self.ts.ok {
            mss = mss.saturating_sub(12);
        }
        self.opts.mss = mss.max(64);
        self.cc.set_mss(self.opts.mss);
    }

    // ----------------------------------------------------------------------------------------
    // Accessors.

    /// The RFC 9293 state now. It changes only inside `handle_segment`, `handle_timeout` and
    /// the application commands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The 4-tuple, fixed for the connection's life.
    pub fn tuple(&self) -> Tuple {
        self.tuple
    }

    /// Effective send MSS in bytes: the largest payload of a segment we send (RFC 6691), the
    /// smallest of the peer's MSS, the path MTU minus 40 and [`super::Config::mss`], less 12
    /// when timestamps are on; at least 64. Set by the handshake, lowered by
    /// [`Connection::handle_path_mtu`]. SACK blocks take further room from single segments.
    pub fn mss(&self) -> usize {
        self.opts.mss
    }

    /// Congestion window in bytes (RFC 5681): how much may be in flight.
    pub fn cwnd(&self) -> usize {
        self.cc.cwnd()
    }

    /// Slow-start threshold in bytes (RFC 5681 3.1); very large (`usize::MAX / 4`) until
    /// the first loss or timeout.
    pub fn ssthresh(&self) -> usize {
        self.cc.ssthresh()
    }

    /// Smoothed round-trip time (RFC 6298 SRTT); `None` before the first sample. Samples come
    /// from timestamps (millisecond resolution) or from one timed segment per round trip
    /// (Karn's algorithm: never a retransmitted one).
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// The retransmission timeout now (RFC 6298), backoff included, within
    /// [`super::Config::min_rto`] and [`super::Config::max_rto`].
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }

    /// SND.UNA (RFC 9293 3.3.1): the oldest sequence number we sent that is not acknowledged.
    pub fn snd_una(&self) -> SeqNumber {
        self.snd.una
    }

    /// SND.NXT (RFC 9293 3.3.1): the sequence number of the next new byte we send.
    pub fn snd_nxt(&self) -> SeqNumber {
        self.snd.nxt
    }

    /// RCV.NXT (RFC 9293 3.3.1): the next sequence number expected from the peer, the one
    /// our ACKs carry.
    pub fn rcv_nxt(&self) -> SeqNumber {
        self.rcv.nxt
    }

    /// The application gave the connection up (`close`, `abort`, or the stack aborted it):
    /// nobody reads it any more, and its owner frees it once it reaches CLOSED.
    pub fn is_orphan(&self) -> bool {
        self.orphan
    }

    /// The options in effect: the [`Config`] the connection was created (or restored) with,
    /// plus the `set_*` calls since. What the handshake negotiated is not reflected here (see
    /// [`Connection::mss`]).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Bytes the application can read now.
    pub fn recv_queue(&self) -> usize {
        self.rx.readable()
    }

    /// Bytes queued for sending (unacknowledged plus unsent).
    pub fn send_queue(&self) -> usize {
        self.tx.len()
    }

    /// Bytes of buffer memory this connection holds (its rings, once allocated).
    pub fn buffer_bytes(&self) -> usize {
        self.tx.allocated() + self.rx.allocated()
    }

    /// Room in the send buffer in bytes: how much `send` would take now.
    pub fn send_capacity(&self) -> usize {
        self.tx.free()
    }

    /// Give up a RST that cannot be sent (no route to the peer any more).
    pub fn drop_pending_rst(&mut self) {
        self.due.rst = false;
        self.due.rst_reply = None;
    }

    /// A RST is waiting to be sent (after `abort`, or answering an unacceptable segment): the
    /// next `poll_transmit` writes it, even in CLOSED, so a closed connection with a RST
    /// pending must not be freed before it is polled.
    pub fn rst_pending(&self) -> bool {
        self.due.rst || self.due.rst_reply.is_some()
    }

    /// The error that ended the connection, if any.
    pub fn error(&self) -> Option<Error> {
        self.error
    }

    /// The deadline of timer `t`; `None` when it is not armed.
    pub fn timer(&self, t: Timer) -> Option<Instant> {
        self.timers.deadline[t as usize]
    }

    /// Set TCP_NODELAY: with `on`, a short segment goes out even while data is unacknowledged
    /// (Nagle's algorithm, RFC 896, off). Applies from the next `poll_transmit`.
    pub fn set_nodelay(&mut self, on: bool) {
        self.cfg.nodelay = on;
    }

    /// Turn keepalive on with these parameters, or off with `None` (SO_KEEPALIVE,
    /// TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT). The idle time counts from `now`, as if a
    /// segment had just arrived; the timer runs only in a synchronized state.
    pub fn set_keepalive(&mut self, now: Instant, ka: Option<super::Keepalive>) {
        self.cfg.keepalive = ka;
        self.timers.keepalive_sent = 0;
        self.timers.last_recv = now;
        self.arm_keepalive();
    }

    /// Set the RFC 5482 user timeout (TCP_USER_TIMEOUT): data unacknowledged this long closes
    /// the connection with [`Error::TimedOut`], checked when the retransmission or persist
    /// timer fires. `None` leaves only [`super::Config::max_retries`].
    pub fn set_user_timeout(&mut self, t: Option<Duration>) {
        self.cfg.user_timeout = t;
    }

    fn push_event(&mut self, e: Event) {
        self.events |= 1 << (e as u8);
    }

    /// Every pending event at once, as a set: [`Event::pop`] takes them out in the order
    /// [`Connection::poll_event`] would give them.
    pub(crate) fn take_events(&mut self) -> u8 {
        core::mem::take(&mut self.events)
    }

    /// The next event for the application, `None` when none is pending. Pending events are a
    /// set, taken out in [`Event`]'s declaration order (not the order they happened): poll
    /// until `None` after each `handle_segment`, `handle_timeout` or command.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events == 0 {
            return None;
        }
        let i = self.events.trailing_zeros() as usize;
        self.events &= !(1 << i);
        EVENTS.get(i).copied()
    }

    fn arm(&mut self, t: Timer, at: Instant) {
        self.timers.deadline[t as usize] = Some(at);
    }

    fn disarm(&mut self, t: Timer) {
        self.timers.deadline[t as usize] = None;
    }

    fn tsval(&self, now: Instant) -> u32 {
        (now.total_millis() as u32).wrapping_add(self.ts_offset)
    }

    /// Bytes sent and not yet acknowledged, FIN excluded.
    fn flight_size(&self) -> usize {
        self.snd.nxt.distance_from(self.snd.una)
    }

    /// Data bytes between snd_una and snd_nxt (the FIN and SYN take no buffer room).
    fn sent_data(&self) -> usize {
        let mut n = self.flight_size();
        if let Some(f) = self.fin_seq {
            if self.snd.una <= f && self.snd.nxt > f {
                n -= 1;
            }
        }
        n.min(self.tx.len())
    }

    // ----------------------------------------------------------------------------------------
    // Application commands.

    /// Copy data into the send ring; returns how many bytes fit (maybe fewer than offered,
    /// `Ok(0)` for empty `data`). Nothing is sent here: segments go out from later
    /// `poll_transmit` calls, as the windows and Nagle allow. Allowed in SYN-SENT and
    /// SYN-RECEIVED (sent once established), ESTABLISHED and CLOSE-WAIT.
    ///
    /// Errors: the connection's [`Error`] once it failed; [`Error::Shutdown`] after
    /// `shutdown` or `close`; [`Error::NotConnected`] in other states;
    /// [`Error::WouldBlock`] when the ring is full, and then [`Event::Writable`] fires once
    /// ACKs free room.
    pub fn send(&mut self, data: &[u8]) -> Result<usize, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.fin_seq.is_some() || self.orphan {
            return Err(Error::Shutdown);
        }
        match self.state {
            State::SynSent | State::SynReceived | State::Established | State::CloseWait => {}
            _ => return Err(Error::NotConnected),
        }
        let n = self.tx.enqueue(data);
        if n == 0 && !data.is_empty() {
            self.want_writable = true;
            return Err(Error::WouldBlock);
        }
        Ok(n)
    }

    /// Copy in-order data into `buf` and consume it; returns the bytes copied. `Ok(0)` only at
    /// end of stream (the peer's FIN, once everything before it was read) or for an empty
    /// `buf`. Data received before a reset or timeout can still be read; then the error is
    /// returned ([`Error::Reset`], [`Error::TimedOut`]). [`Error::WouldBlock`] when nothing is
    /// there yet ([`Event::Readable`] tells when); [`Error::NotConnected`] in CLOSED without
    /// an error or a FIN.
    ///
    /// Reading opens the receive window: once it opened by enough (receiver SWS avoidance,
    /// RFC 9293 3.8.6.2.2) a window update is due, so call `poll_transmit` afterwards.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let n = self.peek(buf)?;
        if n > 0 {
            // peek copied the bytes already: consume them without a second copy.
            self.rx.consume(n);
            self.window_opened();
        }
        Ok(n)
    }

    /// Like [`Connection::recv`] (same results and errors), without consuming: the same bytes
    /// are returned again, and the window does not open.
    pub fn peek(&self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.rx.peek(buf);
        if n > 0 {
            return Ok(n);
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.peer_closed() {
            return Ok(0);
        }
        match self.state {
            State::Closed => Err(Error::NotConnected),
            _ => Err(Error::WouldBlock),
        }
    }

    /// True when the peer's FIN has been received in order (after [`Event::PeerClosed`]).
    /// Unread data before it may remain.
    pub fn peer_closed(&self) -> bool {
        matches!(self.rcv_fin, Some(f) if self.rcv.nxt > f)
    }

    /// The application read data: if the window opened by enough, tell the peer (receiver
    /// SWS avoidance, RFC 9293 3.8.6.2.2).
    fn window_opened(&mut self) {
        if !self.state.can_receive_data() {
            return;
        }
        let advertised = self.rcv.adv.distance_from(self.rcv.nxt);
        let free = self.rx.window();
        let threshold = (self.rx.capacity() / 2).min(self.opts.mss);
        if free >= advertised + threshold {
            self.ack.now = true;
        }
    }

    /// Close the sending side: FIN after the queued data (RFC 9293 3.10.4, CLOSE call).
    /// ESTABLISHED and SYN-RECEIVED go to FIN-WAIT-1, CLOSE-WAIT to LAST-ACK; receiving goes
    /// on (half-close). In SYN-SENT the connection closes at once, sending nothing more. Later
    /// `send`s fail with [`Error::Shutdown`]. A second call, or a call in another state, does
    /// nothing. The FIN goes out from `poll_transmit`.
    pub fn shutdown(&mut self) {
        if self.fin_seq.is_some() {
            return;
        }
        match self.state {
            State::SynSent => self.enter_closed(None),
            State::SynReceived | State::Established => {
                self.queue_fin();
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.queue_fin();
                self.state = State::LastAck;
            }
            _ => {}
        }
    }

    fn queue_fin(&mut self) {
        self.fin_seq = Some(self.snd.una + self.tx.len() + self.syn_pending_len());
    }

    /// While our SYN is unacknowledged it occupies `snd_una`.
    fn syn_pending_len(&self) -> usize {
        matches!(self.state, State::SynSent | State::SynReceived) as usize
    }

    /// The application is done with the connection. Unread data makes it an abort (RFC 2525
    /// 2.17, as Linux does); otherwise a graceful close that continues without the application.
    /// The connection becomes an orphan ([`Connection::is_orphan`]): data arriving later is
    /// answered with a RST, FIN-WAIT-2 lasts at most [`super::Config::fin_timeout`], and its
    /// owner frees it when it reaches CLOSED. Its events need not be polled.
    pub fn close(&mut self) {
        self.orphan = true;
        if self.rx.readable() > 0 && self.state.is_synchronized() {
            self.abort();
            return;
        }
        self.shutdown();
        if self.state == State::FinWait2 {
            let t = self.cfg.fin_timeout;
            self.arm(Timer::FinWait2, self.timers.last_recv + t);
        }
    }

    /// Abort (RFC 9293 3.10.5): CLOSED at once, with a RST to the peer from SYN-RECEIVED,
    /// ESTABLISHED, FIN-WAIT-1, FIN-WAIT-2 or CLOSE-WAIT (written by the next
    /// `poll_transmit`, see [`Connection::rst_pending`]). Queued data is never sent. Raises
    /// [`Event::Closed`] (unless already CLOSED) and no other event; [`Connection::error`]
    /// stays `None`.
    pub fn abort(&mut self) {
        if matches!(
            self.state,
            State::SynReceived
                | State::Established
                | State::FinWait1
                | State::FinWait2
                | State::CloseWait
        ) {
            self.due.rst = true;
        }
        self.enter_closed(None);
        self.orphan = true;
    }

    /// The stack ends the connection because its local address left (an operator delete or a
    /// move resets it, `send_rst`; a fenced stack or a departed address forgets it without a
    /// word, since nothing may be sent from that address any more). The application sees a
    /// reset either way.
    pub fn abort_by_stack(&mut self, send_rst: bool) {
        self.due.rst = send_rst
            && matches!(
                self.state,
                State::SynReceived | State::Established | State::FinWait1 | State::FinWait2 | State::CloseWait
            );
        self.enter_closed(Some(Error::Reset));
        self.orphan = true;
    }

    fn enter_closed(&mut self, error: Option<Error>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.timers.deadline = [None; TIMERS];
        self.release_buffers();
        if let Some(e) = error {
            self.error = Some(e);
            self.push_event(match e {
                Error::TimedOut => Event::TimedOut,
                _ => Event::Reset,
            });
        }
        self.push_event(Event::Closed);
    }
}

mod input;
mod output;
mod parts;
mod recovery;
mod timers;

pub(crate) use parts::{AckState, Due, LossRecovery, Options, RecvSeq, Recovery, RecoveryKind, SendSeq, Timers, Timestamps};

#[cfg(test)]
mod tests;
