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
//! every field. Timers are a table indexed by [`Timer`]. Loss recovery follows RFC 6675 (with SACK) and
//! RFC 6582 (without), sharing one `pipe`/`NextSeg` machinery in [`super::sack`].

use std::net::SocketAddrV4;

use super::buffer::{RecvBuffer, SendBuffer};
use super::cc::CongestionControl;
use super::rtt::RttEstimator;
use super::sack::{Scoreboard, DUP_THRESH};
use super::Config;
use crate::time::{Duration, Instant};
use crate::wire::{SackBlocks, SeqNumber, TcpControl, TcpPacket, TcpRepr, TcpTimestamp};

/// The connection's 4-tuple, from this stack's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
}

/// RFC 9293 3.3.2 states. LISTEN lives in [`super::Listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
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

/// What the application hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Connected,
    Readable,
    Writable,
    /// The peer sent FIN: no more data will arrive.
    PeerClosed,
    Reset,
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
    DelayedAck,
    /// Zero-window probing (RFC 9293 3.8.6.1).
    Persist,
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
    pub segs_in: u64,
    pub segs_out: u64,
    /// Payload bytes accepted in order.
    pub bytes_in: u64,
    /// New payload bytes sent (not counting retransmissions).
    pub bytes_out: u64,
    pub retrans_segs: u64,
    pub retrans_bytes: u64,
    pub fast_recoveries: u64,
    pub timeouts: u64,
    pub dupacks_in: u64,
    pub ooo_segs_in: u64,
    pub challenge_acks: u64,
    pub paws_drops: u64,
    pub unacceptable_segs: u64,
    pub window_probes: u64,
    pub rcv_buffer_drops: u64,
    /// Retransmissions found lost again (and resent) before the RTO.
    pub lost_retransmits: u64,
    pub loss_probes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecoveryKind {
    /// Fast retransmit / fast recovery (RFC 5681 3.2, RFC 6582, RFC 6675).
    Fast,
    /// After a retransmission timeout: everything up to the recovery point is lost.
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub kind: RecoveryKind,
    /// RFC 6582 `recover` / RFC 6675 `RecoveryPoint`.
    pub point: SeqNumber,
}

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

/// Quick-ACK budget at start: acknowledge the first segments at once so the peer's slow start
/// is not held back by delayed ACKs (Linux's quickack mode).
const QUICKACKS: u32 = 16;

/// Send sequence space (RFC 9293 3.3.1): `SND.UNA`, `SND.NXT`, `SND.WND`, `SND.WL1`,
/// `SND.WL2`, `ISS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SendSeq {
    pub iss: SeqNumber,
    pub una: SeqNumber,
    pub nxt: SeqNumber,
    /// Peer's window in bytes, already scaled.
    pub wnd: usize,
    pub wl1: SeqNumber,
    pub wl2: SeqNumber,
    /// Largest window the peer has offered (RFC 9293 3.8.6.2.1 `Max(SND.WND)`).
    pub max_wnd: usize,
    /// Shift applied to windows the peer sends (RFC 7323 `Snd.Wind.Shift`).
    pub wscale: u8,
}

/// Receive sequence space (RFC 9293 3.3.1): `RCV.NXT`, `IRS`, and the window's right edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecvSeq {
    pub irs: SeqNumber,
    pub nxt: SeqNumber,
    /// Right edge of the window last advertised (`RCV.NXT + RCV.WND` as sent): never moves
    /// left (RFC 9293 3.8.6).
    pub adv: SeqNumber,
    /// RCV.NXT in the last ACK sent (RFC 7323 `Last.ACK.sent`).
    pub last_ack_sent: SeqNumber,
    /// Shift we apply to windows we send (RFC 7323 `Rcv.Wind.Shift`).
    pub wscale: u8,
}

/// What the handshake settled, and the segment size that follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// Largest payload we send per segment (after options): derived, see
    /// [`Connection::update_mss`].
    pub mss: usize,
    /// MSS the peer announced (RFC 9293 3.7.1: 536 when absent).
    pub peer_mss: u16,
    /// Largest IP packet the path carries (PMTU discovery).
    pub path_mtu: u16,
    /// SACK permitted by both sides (RFC 2018 2).
    pub sack_ok: bool,
    /// Window scaling in use (both sides sent the option, RFC 7323 2.2).
    pub ws_ok: bool,
}

/// RFC 7323 timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Timestamps {
    /// Both sides sent the option in the handshake.
    pub ok: bool,
    /// `TS.Recent`.
    pub recent: u32,
    /// When `TS.Recent` was last updated (RFC 7323 5.5: invalid after 24 days idle).
    pub recent_age: Instant,
}

/// Loss detection and recovery on the sending side (RFC 6675, RFC 6582, RFC 8985).
#[derive(Debug, Clone)]
pub(crate) struct LossRecovery {
    pub scoreboard: Scoreboard,
    pub recovery: Option<Recovery>,
    /// RFC 6675 `HighRxt`: the highest sequence number retransmitted.
    pub high_rxt: SeqNumber,
    /// Everything below is lost by decree (see [`super::sack`]).
    pub lost_until: SeqNumber,
    /// Duplicate ACKs in a row (RFC 5681 2).
    pub dupacks: u32,
    /// Retransmit the first lost segment whatever cwnd says (RFC 5681 3.2 step 2, RFC 6582
    /// 3.2 step 5, RFC 6675 5 step 4.1).
    pub rtx_now: bool,
    /// When the segment at `snd.una` was (at the latest) retransmitted: a retransmission still
    /// unacknowledged a round trip later, while later data is SACKed, was lost again.
    pub rtx_una_at: Option<Instant>,
    pub last_rtx_at: Option<Instant>,
    /// A tail loss probe must be sent (RFC 8985 7).
    pub probe_rtx: bool,
}

/// Acknowledgement state of the receiving side (RFC 5681 4.2, RFC 9293 3.8.6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckState {
    /// An ACK must go out on the next `poll_transmit`.
    pub now: bool,
    /// In-order segments received since the last ACK sent.
    pub segs_unacked: u32,
    /// Segments still to be acknowledged at once (Linux's quickack mode).
    pub quickacks: u32,
}

/// Control segments due on the next `poll_transmit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// SYN or SYN-ACK must be (re)sent.
    pub syn: bool,
    /// A zero-window or keepalive probe must be sent.
    pub probe: bool,
    /// A RST must be sent (abort, or data arriving after close).
    pub rst: bool,
    /// A RST answering an unacceptable segment: `<SEQ><ACK?>`.
    pub rst_reply: Option<(SeqNumber, Option<SeqNumber>)>,
}

/// The timer table and the counts and times the timers work from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Timers {
    /// Deadlines, indexed by [`Timer`].
    pub deadline: [Option<Instant>; TIMERS],
    /// Consecutive retransmission timeouts (or SYN retransmissions).
    pub retries: u32,
    /// Zero-window probes sent without the window opening.
    pub persist_backoff: u32,
    /// Keepalive probes sent without an answer.
    pub keepalive_sent: u32,
    /// When the oldest unacknowledged byte was first sent (user timeout, RFC 5482).
    pub unacked_since: Option<Instant>,
    pub last_recv: Instant,
    pub last_send: Instant,
}

impl LossRecovery {
    fn new(iss: SeqNumber) -> Self {
        LossRecovery {
            scoreboard: Scoreboard::new(),
            recovery: None,
            high_rxt: iss,
            lost_until: iss,
            dupacks: 0,
            rtx_now: false,
            rtx_una_at: None,
            last_rtx_at: None,
            probe_rtx: false,
        }
    }
}

impl Timers {
    fn new(now: Instant) -> Self {
        Timers {
            deadline: [None; TIMERS],
            retries: 0,
            persist_backoff: 0,
            keepalive_sent: 0,
            unacked_since: None,
            last_recv: now,
            last_send: now,
        }
    }
}

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
    /// `recv` on a connection whose send buffer was full: tell when room appears.
    pub(crate) want_writable: bool,
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
    /// `poll_transmit`.
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

    pub fn state(&self) -> State {
        self.state
    }
    pub fn tuple(&self) -> Tuple {
        self.tuple
    }
    pub fn mss(&self) -> usize {
        self.opts.mss
    }
    pub fn cwnd(&self) -> usize {
        self.cc.cwnd()
    }
    pub fn ssthresh(&self) -> usize {
        self.cc.ssthresh()
    }
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }
    pub fn snd_una(&self) -> SeqNumber {
        self.snd.una
    }
    pub fn snd_nxt(&self) -> SeqNumber {
        self.snd.nxt
    }
    pub fn rcv_nxt(&self) -> SeqNumber {
        self.rcv.nxt
    }
    pub fn is_orphan(&self) -> bool {
        self.orphan
    }
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
    /// Room in the send buffer.
    /// Bytes of buffer memory this connection holds (its rings, once allocated).
    pub fn buffer_bytes(&self) -> usize {
        self.tx.allocated() + self.rx.allocated()
    }
    pub fn send_capacity(&self) -> usize {
        self.tx.free()
    }
    /// A RST is waiting to be sent.
    /// Give up a RST that cannot be sent (no route to the peer any more).
    pub fn drop_pending_rst(&mut self) {
        self.due.rst = false;
        self.due.rst_reply = None;
    }
    pub fn rst_pending(&self) -> bool {
        self.due.rst || self.due.rst_reply.is_some()
    }
    /// The error that ended the connection, if any.
    pub fn error(&self) -> Option<Error> {
        self.error
    }
    pub fn timer(&self, t: Timer) -> Option<Instant> {
        self.timers.deadline[t as usize]
    }
    /// Set TCP_NODELAY.
    pub fn set_nodelay(&mut self, on: bool) {
        self.cfg.nodelay = on;
    }
    pub fn set_keepalive(&mut self, now: Instant, ka: Option<super::Keepalive>) {
        self.cfg.keepalive = ka;
        self.timers.keepalive_sent = 0;
        self.timers.last_recv = now;
        self.arm_keepalive();
    }
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

    /// The next event for the application, oldest kind first.
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

    /// RFC 6675 pipe; without SACK each duplicate ACK is a segment that left the network
    /// (RFC 5681's window inflation, expressed as a smaller pipe).
    fn pipe(&self) -> usize {
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

    // ----------------------------------------------------------------------------------------
    // Application commands.

    /// Queue data for sending; returns the bytes taken (maybe fewer than offered).
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

    /// Read in-order data. `Ok(0)` only at end of stream (the peer's FIN) or for an empty `buf`.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let n = self.peek(buf)?;
        if n > 0 {
            // peek copied the bytes already: consume them without a second copy.
            self.rx.consume(n);
            self.window_opened();
        }
        Ok(n)
    }

    /// Like `recv` without consuming.
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

    /// True when the peer's FIN has been received in order.
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

    /// Abort (RFC 9293 3.10.5): RST if synchronized, then CLOSED.
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

    // ----------------------------------------------------------------------------------------
    // Segment arrival (RFC 9293 3.10.7).

    /// Process one segment of this connection.
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
    fn release_buffers(&mut self) {
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

    /// RFC 8985's idea for the left edge: its retransmission has been out longer than a
    /// round trip while later data keeps being SACKed: it was lost again. Resend it now
    /// instead of waiting for the RTO.
    fn detect_lost_retransmit(&mut self, now: Instant, newly_sacked: usize) {
        if !self.opts.sack_ok || newly_sacked == 0 || self.loss.recovery.is_none() {
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
    fn arm_loss_probe(&mut self, now: Instant) {
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

    /// Window update (RFC 9293 3.10.7.4: SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and
    /// SND.WL2 =< SEG.ACK)).
    fn update_window(&mut self, seg: &TcpRepr<'_>) {
        let Some(ack) = seg.ack_number else { return };
        if ack < self.snd.una {
            return;
        }
        if self.snd.wl1 < seg.seq_number
            || (self.snd.wl1 == seg.seq_number && self.snd.wl2 <= ack)
        {
            self.snd.wnd = (seg.window_len as usize) << self.snd.wscale;
            self.snd.max_wnd = self.snd.max_wnd.max(self.snd.wnd);
            self.snd.wl1 = seg.seq_number;
            self.snd.wl2 = ack;
        }
    }

    fn enter_fast_recovery(&mut self, now: Instant) {
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

    fn update_persist(&mut self, now: Instant) {
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

    // ----------------------------------------------------------------------------------------
    // Timers.

    /// The earliest timer deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.deadline.iter().flatten().min().copied()
    }

    /// Run every timer due at `now`.
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

    fn on_retransmit_timeout(&mut self, now: Instant) {
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

    fn arm_keepalive(&mut self) {
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

    // ----------------------------------------------------------------------------------------
    // Transmission.

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
            if (field << self.rcv.wscale) < edge {
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

#[cfg(test)]
mod tests;
