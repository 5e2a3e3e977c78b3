//! The parts of a connection's state, grouped by role (RFC 9293 3.3.1's sequence spaces,
//! the negotiated options, RFC 7323 timestamps, loss recovery, ACK state, control segments
//! owed, timers). Each part the handoff record carries encodes itself in `snapshot.rs` through
//! an exhaustive destructure.

use super::super::sack::Scoreboard;
use super::TIMERS;
use crate::time::Instant;
use crate::wire::SeqNumber;

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
    pub(super) fn new(iss: SeqNumber) -> Self {
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
    pub(super) fn new(now: Instant) -> Self {
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
