//! The serialized state of an established connection, for live handoff between stacks: one
//! stack freezes a connection and writes it out, another stack (another process, perhaps on
//! the cluster member that took over the local address) restores it and carries on, and the
//! peer notices nothing: no RST, the same sequence numbers, windows and options, its data
//! neither lost nor duplicated. The record is a versioned binary record that
//! [`Connection::snapshot`] writes and [`Connection::restore`] reads back, in another process,
//! at another time.
//!
//! Layout (little-endian): `magic "PLXC" | version u16 | flags u16 | length u32 | fields`.
//! `flags` says which optional sections are present, and carries the options that need no
//! bytes of their own (`OWNS_PORT` was added to version 1 this way: a reader that does not
//! know a bit ignores it). Times are stored relative to the
//! snapshot's `now` (deadlines as microseconds from it, ages as microseconds before it), so the
//! restoring stack's clock need not agree with the giver's. Our TSval is carried as the last
//! value sent, and the restored connection picks an offset that keeps it increasing (RFC 7323
//! PAWS at the peer would drop the connection otherwise).
//!
//! What moves, beyond what Linux's TCP_REPAIR can: congestion state, RTT estimator, SACK
//! scoreboard, recovery state, unacknowledged *and* unsent send bytes, unread *and*
//! out-of-order receive bytes, timers, socket options, and opaque application state.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::buffer::{RecvBuffer, SendBuffer};
use super::cc::{CcState, CongestionControl};
use super::conn::{
    AckState, ConnCounters, Connection, Due, LossRecovery, Options, RecvSeq, Recovery, RecoveryKind, SendSeq, State,
    Timers, Timestamps, Tuple, TIMERS,
};
use super::rtt::RttEstimator;
use super::sack::Scoreboard;
use super::{Config, Keepalive};
use crate::time::{Duration, Instant};
use crate::wire::SeqNumber;

/// The first four bytes of every record; anything else is [`SnapshotError::BadMagic`].
pub const MAGIC: [u8; 4] = *b"PLXC";
/// The record version written, and the only one read: a record of another version is
/// [`SnapshotError::UnsupportedVersion`]. Additions that old readers may ignore go into
/// flag bits, not a new version.
pub const VERSION: u16 = 1;

mod flag {
    pub const TIMESTAMPS: u16 = 1 << 0;
    pub const SACK: u16 = 1 << 1;
    pub const WSCALE: u16 = 1 << 2;
    pub const RECOVERY: u16 = 1 << 3;
    pub const FIN_QUEUED: u16 = 1 << 4;
    pub const PEER_FIN: u16 = 1 << 5;
    pub const KEEPALIVE: u16 = 1 << 6;
    pub const USER_TIMEOUT: u16 = 1 << 7;
    pub const NODELAY: u16 = 1 << 8;
    pub const DELAYED_ACK: u16 = 1 << 9;
    /// The giver allocated the local port for this connection (an ephemeral port of an active
    /// open): the target frees it when the connection ends.
    pub const OWNS_PORT: u16 = 1 << 10;
}

/// Bytes of a connection that an application layer above it holds when it moves (the blocking
/// and readiness APIs keep a connection's bytes in rings of their own): `unread` were taken
/// from the receive buffer but not read by the application, `unsent` were written by the
/// application but not yet given to the send buffer. [`Connection::snapshot_with`] records them
/// where they belong in the byte streams, so the target serves them as if they had never left
/// the connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppBytes<'a> {
    /// Received bytes, in order, that come before the receive buffer's.
    pub unread: &'a [u8],
    /// Bytes to send, in order, after the send buffer's.
    pub unsent: &'a [u8],
}

/// A decoded record, before it becomes a connection: the parts a caller may want to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The connection's 4-tuple (the same on the target: the local address moves with it).
    pub tuple: Tuple,
    /// ESTABLISHED or CLOSE-WAIT: the only states a record holds.
    pub state: State,
    /// Identity of the giving stack (cluster slot), for logs and the target application.
    pub giver: u32,
    /// The connection owns its local port (an ephemeral port its stack allocated): the stack
    /// that restores it releases the port to the cluster when the connection ends. False in
    /// records whose writer did not know the flag (the port is then never released).
    pub owns_port: bool,
    /// The opaque bytes the giving application passed to [`Connection::snapshot`], for the
    /// target's application to resume its own state with; the stack does not read them.
    pub app_state: Vec<u8>,
}

/// Why [`Connection::snapshot`] or [`Connection::restore`] refused. On any of them the giver
/// keeps its connection (nothing was changed) and the target has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotError {
    /// Only ESTABLISHED and CLOSE-WAIT connections move.
    WrongState(State),
    /// The record ends before its fields do, or before the length its header states.
    Truncated,
    /// The record does not start with [`MAGIC`]: not a plex connection record.
    BadMagic,
    /// The record's version (carried) is not [`VERSION`].
    UnsupportedVersion(u16),
    /// A field holds a value no connection can have.
    Invalid(&'static str),
    /// The target's config cannot carry this connection (restore adapts to everything else).
    Incompatible(&'static str),
}

impl core::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SnapshotError::WrongState(s) => write!(f, "cannot snapshot a connection in {s:?}"),
            SnapshotError::Truncated => f.write_str("snapshot record truncated"),
            SnapshotError::BadMagic => f.write_str("not a plex connection record"),
            SnapshotError::UnsupportedVersion(v) => write!(f, "unsupported record version {v}"),
            SnapshotError::Invalid(what) => write!(f, "invalid record: {what}"),
            SnapshotError::Incompatible(what) => write!(f, "the target cannot take this connection: {what}"),
        }
    }
}
impl std::error::Error for SnapshotError {}

struct W<'a>(&'a mut Vec<u8>);
impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn seq(&mut self, v: SeqNumber) {
        self.u32(v.0);
    }
    fn addr(&mut self, a: SocketAddrV4) {
        self.0.extend_from_slice(&a.ip().octets());
        self.u16(a.port());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    /// A deadline as microseconds after `now` (u64::MAX: unset).
    fn deadline(&mut self, now: Instant, t: Option<Instant>) {
        self.u64(t.map(|t| (t - now).total_micros()).unwrap_or(u64::MAX));
    }
}

struct R<'a> {
    buf: &'a [u8],
}
impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.buf.len() < n {
            return Err(SnapshotError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn f64(&mut self) -> Result<f64, SnapshotError> {
        let v = f64::from_bits(self.u64()?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(SnapshotError::Invalid("non-finite number"))
        }
    }
    fn seq(&mut self) -> Result<SeqNumber, SnapshotError> {
        Ok(SeqNumber(self.u32()?))
    }
    fn addr(&mut self) -> Result<SocketAddrV4, SnapshotError> {
        let b = self.take(4)?;
        let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn deadline(&mut self, now: Instant) -> Result<Option<Instant>, SnapshotError> {
        let v = self.u64()?;
        Ok((v != u64::MAX).then(|| now + Duration::from_micros(v)))
    }
}

fn state_code(s: State) -> u8 {
    match s {
        State::Established => 1,
        State::CloseWait => 2,
        _ => 0,
    }
}

fn encode_cc(w: &mut W<'_>, s: &CcState) {
    let CcState { algorithm, mss, cwnd, ssthresh, ca_acc, w_max, k, epoch_age, cwnd_epoch, w_est, cwnd_prior } = *s;
    w.u8(match algorithm {
        super::Algorithm::Cubic => 0,
        super::Algorithm::NewReno => 1,
    });
    w.u32(mss);
    w.u64(cwnd);
    w.u64(ssthresh);
    w.u64(ca_acc);
    for v in [w_max, k, cwnd_epoch, w_est, cwnd_prior] {
        w.f64(v);
    }
    w.u64(epoch_age.map(|d| d.total_micros()).unwrap_or(u64::MAX));
}

fn decode_cc(r: &mut R<'_>) -> Result<CcState, SnapshotError> {
    let algorithm = match r.u8()? {
        0 => super::Algorithm::Cubic,
        1 => super::Algorithm::NewReno,
        _ => return Err(SnapshotError::Invalid("congestion control algorithm")),
    };
    let mss = r.u32()?;
    let cwnd = r.u64()?;
    let ssthresh = r.u64()?;
    let ca_acc = r.u64()?;
    let (w_max, k, cwnd_epoch, w_est, cwnd_prior) = (r.f64()?, r.f64()?, r.f64()?, r.f64()?, r.f64()?);
    let epoch_age = match r.u64()? {
        u64::MAX => None,
        v => Some(Duration::from_micros(v)),
    };
    if mss == 0 || cwnd > (1 << 40) || ssthresh > u64::MAX / 2 {
        return Err(SnapshotError::Invalid("congestion window"));
    }
    Ok(CcState { algorithm, mss, cwnd, ssthresh, ca_acc, w_max, k, epoch_age, cwnd_epoch, w_est, cwnd_prior })
}

// Every part of the connection that the record carries is written by one function that
// destructures it without `..`: a field added to `SendSeq`, `RecvSeq`, `Options`,
// `Timestamps`, `LossRecovery`, `Timers` or `Connection` itself does not compile until it is
// either written here or marked `_` with the reason the target does without it. The decoders
// build the same structs with struct literals, which are exhaustive too.

/// Both sequence spaces (RFC 9293 3.3.1), in record order (version 1 interleaves them).
fn encode_seq(w: &mut W<'_>, snd: &SendSeq, rcv: &RecvSeq) {
    let SendSeq { iss, una, nxt, wnd, wl1, wl2, max_wnd, wscale: snd_wscale } = *snd;
    let RecvSeq { irs, nxt: rcv_nxt, adv, last_ack_sent, wscale: rcv_wscale } = *rcv;
    for s in [iss, irs, una, nxt, wl1, wl2] {
        w.seq(s);
    }
    w.u64(wnd as u64);
    w.u64(max_wnd as u64);
    w.seq(rcv_nxt);
    w.seq(adv);
    w.seq(last_ack_sent);
    w.u8(snd_wscale);
    w.u8(rcv_wscale);
}

fn decode_seq(r: &mut R<'_>) -> Result<(SendSeq, RecvSeq), SnapshotError> {
    let iss = r.seq()?;
    let irs = r.seq()?;
    let una = r.seq()?;
    let nxt = r.seq()?;
    let wl1 = r.seq()?;
    let wl2 = r.seq()?;
    let wnd = r.u64()? as usize;
    let max_wnd = r.u64()? as usize;
    let rcv_nxt = r.seq()?;
    let adv = r.seq()?;
    let last_ack_sent = r.seq()?;
    let snd_wscale = r.u8()?;
    let rcv_wscale = r.u8()?;
    // RFC 7323 2.3: a shift above 14 is never in use.
    if snd_wscale > 14 || rcv_wscale > 14 {
        return Err(SnapshotError::Invalid("window scale"));
    }
    if nxt < una || wnd > (1 << 30) || max_wnd > (1 << 30) {
        return Err(SnapshotError::Invalid("send sequence space"));
    }
    let snd = SendSeq { iss, una, nxt, wnd, wl1, wl2, max_wnd, wscale: snd_wscale };
    let rcv = RecvSeq { irs, nxt: rcv_nxt, adv, last_ack_sent, wscale: rcv_wscale };
    Ok((snd, rcv))
}

/// The negotiated options and timestamps, with the MSS we advertised (`cfg_mss`) and the last
/// TSval sent. Returns the flags that say which options are on.
fn encode_opts(w: &mut W<'_>, now: Instant, opts: &Options, ts: &Timestamps, cfg_mss: u16, last_tsval: u32) -> u16 {
    let Options {
        // Derived from the others and the target's config (`Connection::update_mss`).
        mss: _,
        peer_mss,
        path_mtu,
        sack_ok,
        ws_ok,
    } = *opts;
    let Timestamps { ok: ts_ok, recent, recent_age } = *ts;
    w.u16(peer_mss);
    w.u16(path_mtu);
    w.u16(cfg_mss);
    w.u32(recent);
    w.u64((now - recent_age).total_micros());
    w.u32(last_tsval);
    let mut flags = 0;
    if ts_ok {
        flags |= flag::TIMESTAMPS;
    }
    if sack_ok {
        flags |= flag::SACK;
    }
    if ws_ok {
        flags |= flag::WSCALE;
    }
    flags
}

/// Options, timestamps, our advertised MSS and the last TSval sent. `mss` is left 0 for
/// `Connection::update_mss` to derive.
fn decode_opts(r: &mut R<'_>, flags: u16, now: Instant) -> Result<(Options, Timestamps, u16, u32), SnapshotError> {
    let peer_mss = r.u16()?;
    let path_mtu = r.u16()?;
    let cfg_mss = r.u16()?;
    let recent = r.u32()?;
    let recent_age = now.saturating_sub(Duration::from_micros(r.u64()?));
    let last_tsval = r.u32()?;
    let opts = Options {
        mss: 0,
        peer_mss,
        path_mtu,
        sack_ok: flags & flag::SACK != 0,
        ws_ok: flags & flag::WSCALE != 0,
    };
    let ts = Timestamps { ok: flags & flag::TIMESTAMPS != 0, recent, recent_age };
    Ok((opts, ts, cfg_mss, last_tsval))
}

/// Loss recovery: the recovery episode, `HighRxt`, the scoreboard. Returns its flags.
fn encode_loss(w: &mut W<'_>, loss: &LossRecovery) -> u16 {
    let LossRecovery {
        scoreboard,
        recovery,
        high_rxt,
        lost_until,
        dupacks,
        // The target sends one ACK at once and recovers from there: a pending immediate
        // retransmission or loss probe waits for the next ACK or timer (record version 1
        // does not carry them).
        rtx_now: _,
        probe_rtx: _,
        // Times of retransmissions, for RFC 8985-style detection of a lost retransmission:
        // not carried (version 1); the left edge falls back to the RTO on the target.
        rtx_una_at: _,
        last_rtx_at: _,
    } = loss;
    let mut flags = 0;
    if let Some(r) = recovery {
        flags |= flag::RECOVERY;
        w.u8(match r.kind {
            RecoveryKind::Fast => 0,
            RecoveryKind::Timeout => 1,
        });
        w.seq(r.point);
    }
    w.seq(*high_rxt);
    w.seq(*lost_until);
    w.u32(*dupacks);
    let blocks = scoreboard.blocks();
    w.u8(blocks.len() as u8);
    for &(l, r) in blocks {
        w.seq(l);
        w.seq(r);
    }
    flags
}

fn decode_loss(r: &mut R<'_>, flags: u16, snd: &SendSeq) -> Result<LossRecovery, SnapshotError> {
    let recovery = if flags & flag::RECOVERY != 0 {
        let kind = match r.u8()? {
            0 => RecoveryKind::Fast,
            1 => RecoveryKind::Timeout,
            _ => return Err(SnapshotError::Invalid("recovery kind")),
        };
        Some(Recovery { kind, point: r.seq()? })
    } else {
        None
    };
    let high_rxt = r.seq()?;
    let lost_until = r.seq()?;
    let dupacks = r.u32()?;
    let nblocks = r.u8()? as usize;
    let mut blocks = Vec::with_capacity(nblocks);
    for _ in 0..nblocks {
        blocks.push((r.seq()?, r.seq()?));
    }
    let mut scoreboard = Scoreboard::new();
    scoreboard.update(snd.una, snd.nxt, &blocks);
    Ok(LossRecovery {
        scoreboard,
        recovery,
        high_rxt,
        lost_until,
        dupacks,
        rtx_now: false,
        rtx_una_at: None,
        last_rtx_at: None,
        probe_rtx: false,
    })
}

/// The timer table and what the timers count, relative to `now`.
fn encode_timers(w: &mut W<'_>, now: Instant, timers: &Timers) {
    let Timers {
        deadline,
        retries,
        persist_backoff,
        keepalive_sent,
        unacked_since,
        last_recv,
        // Keepalive re-arms from it only after a probe went unanswered: restored as `now`.
        last_send: _,
    } = *timers;
    for t in deadline {
        w.deadline(now, t);
    }
    w.u32(retries);
    w.u32(persist_backoff);
    w.u32(keepalive_sent);
    w.u64(unacked_since.map(|t| (now - t).total_micros()).unwrap_or(u64::MAX));
    w.u64((now - last_recv).total_micros());
}

fn decode_timers(r: &mut R<'_>, now: Instant) -> Result<Timers, SnapshotError> {
    let mut deadline = [None; TIMERS];
    for t in deadline.iter_mut() {
        *t = r.deadline(now)?;
    }
    let retries = r.u32()?;
    let persist_backoff = r.u32()?;
    let keepalive_sent = r.u32()?;
    let unacked_since = match r.u64()? {
        u64::MAX => None,
        v => Some(now.saturating_sub(Duration::from_micros(v))),
    };
    let last_recv = now.saturating_sub(Duration::from_micros(r.u64()?));
    Ok(Timers { deadline, retries, persist_backoff, keepalive_sent, unacked_since, last_recv, last_send: now })
}

/// The socket options the connection keeps wherever it goes. Returns their flags.
fn encode_sockopts(w: &mut W<'_>, cfg: &Config) -> u16 {
    let Config {
        send_buffer,
        recv_buffer,
        // Written with the options (`encode_opts`).
        mss: _,
        nodelay,
        // Carried by the congestion state.
        congestion: _,
        // What the handshake settled is carried instead (`Options`, `Timestamps`).
        window_scaling: _,
        timestamps: _,
        sack: _,
        delayed_ack,
        keepalive,
        user_timeout,
        // Local policy: the target's own (see `Connection::restore`).
        initial_rto: _,
        min_rto: _,
        max_rto: _,
        syn_retries: _,
        synack_retries: _,
        max_retries: _,
        msl: _,
        fin_timeout: _,
    } = *cfg;
    w.u64(send_buffer as u64);
    w.u64(recv_buffer as u64);
    let mut flags = 0;
    if nodelay {
        flags |= flag::NODELAY;
    }
    if let Some(ka) = keepalive {
        flags |= flag::KEEPALIVE;
        w.u64(ka.idle.total_micros());
        w.u64(ka.interval.total_micros());
        w.u32(ka.probes);
    }
    if let Some(uto) = user_timeout {
        flags |= flag::USER_TIMEOUT;
        w.u64(uto.total_micros());
    }
    if let Some(d) = delayed_ack {
        flags |= flag::DELAYED_ACK;
        w.u64(d.total_micros());
    }
    flags
}

/// The socket options of the record, on top of `defaults` (the target's policy), with the
/// options the handshake settled and the congestion control algorithm in use.
fn decode_sockopts(
    r: &mut R<'_>,
    flags: u16,
    defaults: &Config,
    cfg_mss: u16,
    congestion: super::Algorithm,
) -> Result<Config, SnapshotError> {
    let send_buffer = r.u64()? as usize;
    let recv_buffer = r.u64()? as usize;
    if send_buffer > (1 << 30) || recv_buffer > (1 << 30) {
        return Err(SnapshotError::Invalid("buffer size"));
    }
    let keepalive = if flags & flag::KEEPALIVE != 0 {
        Some(Keepalive {
            idle: Duration::from_micros(r.u64()?),
            interval: Duration::from_micros(r.u64()?),
            probes: r.u32()?,
        })
    } else {
        None
    };
    let user_timeout = if flags & flag::USER_TIMEOUT != 0 { Some(Duration::from_micros(r.u64()?)) } else { None };
    let delayed_ack = if flags & flag::DELAYED_ACK != 0 { Some(Duration::from_micros(r.u64()?)) } else { None };
    Ok(Config {
        send_buffer,
        recv_buffer: recv_buffer.max(1),
        mss: cfg_mss,
        nodelay: flags & flag::NODELAY != 0,
        congestion,
        window_scaling: flags & flag::WSCALE != 0,
        timestamps: flags & flag::TIMESTAMPS != 0,
        sack: flags & flag::SACK != 0,
        delayed_ack,
        keepalive,
        user_timeout,
        ..defaults.clone()
    })
}

impl Connection {
    /// Serialize this connection at `now`. The connection itself is not changed: the caller
    /// freezes it (stops polling it) and detaches it silently once the target accepted.
    /// `owns_port`: the caller allocated the local port for this connection (see
    /// [`Snapshot::owns_port`]).
    pub fn snapshot(&self, now: Instant, giver: u32, owns_port: bool, app_state: &[u8]) -> Result<Vec<u8>, SnapshotError> {
        self.snapshot_with(now, giver, owns_port, AppBytes::default(), app_state)
    }

    /// As [`snapshot`](Connection::snapshot), with the bytes an application layer above the
    /// connection still holds (see [`AppBytes`]): they travel in the record as if they were
    /// still in the connection's buffers, the unread ones in front of its receive bytes, the
    /// unsent ones after its send bytes. Unsent bytes after a queued FIN are refused
    /// ([`SnapshotError::Invalid`]).
    pub fn snapshot_with(&self, now: Instant, giver: u32, owns_port: bool, extra: AppBytes<'_>, app_state: &[u8]) -> Result<Vec<u8>, SnapshotError> {
        let Connection {
            tuple,
            state,
            cfg,
            // Only meaningful in SYN-RECEIVED; records are ESTABLISHED or CLOSE-WAIT.
            passive: _,
            snd,
            rcv,
            opts,
            ts,
            // Carried as the last TSval sent: the target picks its own offset from it.
            ts_offset: _,
            tx,
            rx,
            fin_seq,
            rcv_fin,
            loss,
            cc,
            rtt,
            // Karn timing does not survive the pause of a handoff: the target starts afresh.
            rtt_probe: _,
            // The target owes the peer one ACK at once and leaves quickack mode: see `restore`.
            ack: _,
            // RST, SYN and probes are not due in the states that move (the target's ACK doubles
            // as the probe).
            due: _,
            timers,
            // The application's view: the target's application starts from the record.
            events: _,
            error: _,
            orphan: _,
            want_writable: _,
            // Per-stack statistics stay with the giver.
            counters: _,
        } = self;
        if !matches!(state, State::Established | State::CloseWait) {
            return Err(SnapshotError::WrongState(*state));
        }
        if fin_seq.is_some() && !extra.unsent.is_empty() {
            return Err(SnapshotError::Invalid("bytes to send after the FIN"));
        }
        let mut out = Vec::with_capacity(256 + tx.len() + rx.readable() + extra.unread.len() + extra.unsent.len());
        out.extend_from_slice(&MAGIC);
        let mut flags = if owns_port { flag::OWNS_PORT } else { 0 };
        let mut w = W(&mut out);
        w.u16(VERSION);
        w.u16(0); // flags, patched below
        w.u32(0); // length, patched below
        w.u8(state_code(*state));
        w.u32(giver);
        w.addr(tuple.local);
        w.addr(tuple.remote);
        encode_seq(&mut w, snd, rcv);
        flags |= encode_opts(&mut w, now, opts, ts, cfg.mss, self.tsval_now(now));
        encode_cc(&mut w, &cc.state(now));
        let (srtt, rttvar, rto, backoff) = rtt.to_parts();
        w.u64(srtt);
        w.u64(rttvar);
        w.u64(rto);
        w.u32(backoff);
        flags |= encode_loss(&mut w, loss);
        encode_timers(&mut w, now, timers);
        flags |= encode_sockopts(&mut w, cfg);
        // Data: the whole send buffer ([snd.una, snd.nxt) unacknowledged, then unsent).
        if let Some(f) = *fin_seq {
            flags |= flag::FIN_QUEUED;
            w.seq(f);
        }
        w.u32((tx.len() + extra.unsent.len()) as u32);
        let start = w.0.len();
        w.0.resize(start + tx.len(), 0);
        tx.read_at(0, &mut w.0[start..]);
        w.0.extend_from_slice(extra.unsent);
        // Unread receive bytes, then out-of-order ranges (offsets from rcv.nxt).
        if let Some(f) = *rcv_fin {
            flags |= flag::PEER_FIN;
            w.seq(f);
        }
        w.u32((extra.unread.len() + rx.readable()) as u32);
        w.0.extend_from_slice(extra.unread);
        let start = w.0.len();
        w.0.resize(start + rx.readable(), 0);
        rx.peek(&mut w.0[start..]);
        let ranges = rx.assembler.ranges();
        w.u8(ranges.len() as u8);
        for &(s, e) in ranges {
            w.u32(s as u32);
            let len = e - s;
            w.u32(len as u32);
            let start = w.0.len();
            w.0.resize(start + len, 0);
            rx.peek_at(rx.readable() + s, &mut w.0[start..]);
        }
        w.bytes(app_state);
        let len = out.len() as u32;
        out[6..8].copy_from_slice(&flags.to_le_bytes());
        out[8..12].copy_from_slice(&len.to_le_bytes());
        Ok(out)
    }

    fn tsval_now(&self, now: Instant) -> u32 {
        (now.total_millis() as u32).wrapping_add(self.ts_offset)
    }

    /// Rebuild a connection from a record at `now`. The connection resumes in the state it
    /// was snapshotted in, with one ACK due so the peer hears the current window at once.
    ///
    /// The target's config (`defaults`) need not be the giver's: restore adapts to it.
    /// What the peer agreed to, or has seen, comes from the record and cannot change (window
    /// scale, SACK, timestamps, the MSS advertised, the window already offered: the receive
    /// ring is sized for it), and so do the connection's own options (buffers, congestion
    /// control, Nagle, delayed ACK, keepalive, user timeout). `defaults` supplies the local
    /// policy the record does not carry (RTO bounds, which clamp the restored estimator; retry
    /// limits; MSL; FIN timeout). One thing it cannot adapt to: a target whose largest segment
    /// (`defaults.mss`, its MTU minus 40) is smaller than the segments the connection sends
    /// refuses the record with [`SnapshotError::Incompatible`] (shrinking the MSS of a
    /// connection with data in flight is not supported).
    ///
    /// The connection is built whole from the record's parts (one struct literal: every field
    /// is decided here), not patched over a fresh active open.
    pub fn restore(record: &[u8], now: Instant, defaults: &Config) -> Result<(Connection, Snapshot), SnapshotError> {
        let mut r = R { buf: record };
        if r.take(4)? != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let flags = r.u16()?;
        let len = r.u32()? as usize;
        if len != record.len() {
            return Err(if len > record.len() { SnapshotError::Truncated } else { SnapshotError::Invalid("length") });
        }
        let state = match r.u8()? {
            1 => State::Established,
            2 => State::CloseWait,
            _ => return Err(SnapshotError::Invalid("state")),
        };
        let giver = r.u32()?;
        let tuple = Tuple { local: r.addr()?, remote: r.addr()? };
        let (snd, rcv) = decode_seq(&mut r)?;
        let (opts, ts, cfg_mss, last_tsval) = decode_opts(&mut r, flags, now)?;
        let cc_state = decode_cc(&mut r)?;
        let rtt_parts = (r.u64()?, r.u64()?, r.u64()?, r.u32()?);
        let loss = decode_loss(&mut r, flags, &snd)?;
        let timers = decode_timers(&mut r, now)?;
        let cfg = decode_sockopts(&mut r, flags, defaults, cfg_mss, cc_state.algorithm)?;
        let fin_seq = if flags & flag::FIN_QUEUED != 0 { Some(r.seq()?) } else { None };
        let tx_data = r.bytes()?;
        let rcv_fin = if flags & flag::PEER_FIN != 0 { Some(r.seq()?) } else { None };
        let rx_data = r.bytes()?;
        let nranges = r.u8()? as usize;
        let mut ooo = Vec::with_capacity(nranges);
        for _ in 0..nranges {
            let off = r.u32()? as usize;
            let data = r.bytes()?;
            ooo.push((off, data));
        }
        let app_state = r.bytes()?.to_vec();
        if !r.buf.is_empty() {
            return Err(SnapshotError::Invalid("trailing bytes"));
        }
        if tx_data.len() < snd.nxt.distance_from(snd.una).saturating_sub(1 + fin_seq.is_some() as usize) {
            return Err(SnapshotError::Invalid("send buffer shorter than the bytes in flight"));
        }

        let cfg = Config { send_buffer: cfg.send_buffer.max(tx_data.len()), ..cfg };
        let mut tx = SendBuffer::new(cfg.send_buffer);
        tx.enqueue(tx_data);
        // The receive window already advertised must stay storable: size the ring for it.
        let advertised = rcv.adv.distance_from(rcv.nxt);
        let rx = RecvBuffer::new(cfg.recv_buffer.max(rx_data.len() + advertised), 1 << rcv.wscale);
        // Keep TSval increasing: the next one is at least the last one sent, plus one tick.
        let ts_offset = last_tsval.wrapping_add(1).wrapping_sub(now.total_millis() as u32);
        let rtt = RttEstimator::from_parts(rtt_parts, cfg.min_rto, cfg.max_rto);
        let mut c = Connection {
            tuple,
            state,
            passive: false,
            snd,
            rcv,
            opts,
            ts,
            ts_offset,
            tx,
            rx,
            fin_seq,
            rcv_fin,
            loss,
            cc: CongestionControl::from_state(&cc_state, now),
            rtt,
            rtt_probe: None,
            // One ACK at once, so the peer hears the current window (and its retransmissions
            // are recovered) without waiting; no quickack budget after the move.
            ack: AckState { now: true, segs_unacked: 0, quickacks: 0 },
            due: Due { syn: false, probe: false, rst: false, rst_reply: None },
            timers,
            events: 0,
            error: None,
            orphan: false,
            want_writable: false,
            counters: ConnCounters::default(),
            cfg,
        };
        c.update_mss();
        if c.opts.mss + if c.ts.ok { 12 } else { 0 } > defaults.mss as usize {
            return Err(SnapshotError::Incompatible("the target's MSS is smaller than the connection's segments"));
        }
        if c.rx.write(0, rx_data) != Some(rx_data.len()) {
            return Err(SnapshotError::Invalid("receive data"));
        }
        // The in-order bytes are already counted in rcv.nxt: rebuild the ring's contents only.
        for (off, data) in ooo {
            if c.rx.write(off, data).is_none() {
                return Err(SnapshotError::Invalid("out-of-order data"));
            }
        }
        let snap = Snapshot { tuple, state, giver, owns_port: flags & flag::OWNS_PORT != 0, app_state };
        Ok((c, snap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::conn::Timer;
    use crate::wire::{TcpControl, TcpPacket, TcpRepr};

    const L: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 80);
    const P: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);

    fn seg<'a>(seq: u32, ack: u32, payload: &'a [u8]) -> TcpRepr<'a> {
        let mut r = TcpRepr::new(P.port(), L.port(), SeqNumber(seq));
        r.ack_number = Some(SeqNumber(ack));
        r.window_len = 1000;
        r.payload = payload;
        r
    }

    fn established() -> Connection {
        let cfg = Config { delayed_ack: None, ..Config::default() };
        let mut c = Connection::connect(Instant::ZERO, Tuple { local: L, remote: P }, SeqNumber(100), 7, &cfg);
        let mut buf = vec![0u8; 2000];
        c.poll_transmit(Instant::ZERO, &mut buf).unwrap();
        let mut syn = seg(900, 101, &[]);
        syn.control = TcpControl::Syn;
        syn.max_seg_size = Some(1460);
        syn.window_scale = Some(2);
        syn.sack_permitted = true;
        syn.timestamp = Some(crate::wire::TcpTimestamp { tsval: 5, tsecr: 7 });
        c.handle_segment(Instant::from_millis(1), &syn);
        while c.poll_transmit(Instant::from_millis(1), &mut buf).is_some() {}
        c
    }

    #[test]
    fn round_trip_keeps_everything() {
        let mut c = established();
        let now = Instant::from_millis(50);
        c.send(&[1u8; 5000]).unwrap();
        let mut buf = vec![0u8; 2000];
        c.poll_transmit(now, &mut buf).unwrap();
        let mut d = seg(901, 101, b"hello");
        d.timestamp = Some(crate::wire::TcpTimestamp { tsval: 6, tsecr: 50 });
        c.handle_segment(now, &d);
        let mut ooo = seg(910, 101, b"later");
        ooo.timestamp = Some(crate::wire::TcpTimestamp { tsval: 6, tsecr: 50 });
        c.handle_segment(now, &ooo);
        while c.poll_transmit(now, &mut buf).is_some() {}

        let rec = c.snapshot(now, 3, true, b"app").unwrap();
        let later = Instant::from_secs(100);
        let (mut r, snap) = Connection::restore(&rec, later, &Config::default()).unwrap();
        assert_eq!(
            snap,
            Snapshot { tuple: c.tuple, state: State::Established, giver: 3, owns_port: true, app_state: b"app".to_vec() }
        );
        assert_eq!((r.snd.una, r.snd.nxt, r.rcv.nxt, r.rcv.adv), (c.snd.una, c.snd.nxt, c.rcv.nxt, c.rcv.adv));
        assert_eq!((r.snd.wnd, r.snd.wscale, r.rcv.wscale, r.opts.mss), (c.snd.wnd, c.snd.wscale, c.rcv.wscale, c.opts.mss));
        assert_eq!(r.cwnd(), c.cwnd());
        assert_eq!(r.rtt, c.rtt);
        assert_eq!(r.send_queue(), 5000);
        let mut out = [0u8; 16];
        assert_eq!(r.recv(&mut out), Ok(5));
        assert_eq!(&out[..5], b"hello");
        assert_eq!(r.rx.assembler.ranges(), c.rx.assembler.ranges());
        // Timers kept their distance from now.
        let rto_left = c.timer(Timer::Retransmit).unwrap() - now;
        assert_eq!(r.timer(Timer::Retransmit).unwrap() - later, rto_left);
        // TSval continues upward from the giver's.
        let mut b1 = vec![0u8; 2000];
        let n = r.poll_transmit(later, &mut b1).unwrap();
        let p = TcpPacket::new_checked(&b1[..n]).unwrap();
        let sent = TcpRepr::parse(&p, *L.ip(), *P.ip(), true).unwrap();
        assert!(sent.timestamp.unwrap().tsval > c.tsval_now(now));
        assert_eq!(sent.ack_number, Some(c.rcv.nxt));
    }

    /// Bytes an API layer held (read from the connection, not by its application; written by
    /// the application, not yet given to the connection) travel in their place: the target
    /// reads the unread ones before the connection's own, and sends the unsent ones after.
    #[test]
    fn bytes_held_above_the_connection_travel_in_their_place() {
        let mut c = established();
        let now = Instant::from_millis(50);
        c.send(&[1u8; 3000]).unwrap();
        let mut buf = vec![0u8; 2000];
        c.poll_transmit(now, &mut buf).unwrap();
        let mut d = seg(901, 101, b"held-then-more");
        d.timestamp = Some(crate::wire::TcpTimestamp { tsval: 6, tsecr: 50 });
        c.handle_segment(now, &d);
        // The API layer took "held-" into its ring; the application never read it.
        let mut took = [0u8; 5];
        assert_eq!(c.recv(&mut took), Ok(5));
        let window_before = c.rcv.adv;
        let rec = c.snapshot_with(now, 1, false, AppBytes { unread: &took, unsent: &[2u8; 700] }, b"").unwrap();
        let (mut r, _) = Connection::restore(&rec, now, &Config::default()).unwrap();
        let mut out = [0u8; 64];
        let n = r.recv(&mut out).unwrap();
        assert_eq!(&out[..n], b"held-then-more");
        assert_eq!(r.send_queue(), 3700);
        let mut sent = vec![0u8; 3700];
        r.tx.read_at(0, &mut sent);
        assert!(sent[..3000].iter().all(|&b| b == 1) && sent[3000..].iter().all(|&b| b == 2));
        // Sequence space is untouched: the peer sees the same window edge.
        assert_eq!((r.rcv.nxt, r.rcv.adv), (c.rcv.nxt, window_before));
        // Nothing may follow a queued FIN.
        c.close();
        assert!(matches!(
            c.snapshot_with(now, 1, false, AppBytes { unread: &[], unsent: b"x" }, b""),
            Err(SnapshotError::Invalid(_)) | Err(SnapshotError::WrongState(_))
        ));
    }

    #[test]
    fn restore_adapts_to_the_targets_config() {
        let mut c = established();
        let now = Instant::from_millis(50);
        c.send(&[1u8; 5000]).unwrap();
        let rec = c.snapshot(now, 0, false, &[]).unwrap();
        // A target configured quite differently: other buffers, options, RTO floor.
        let target = Config {
            send_buffer: 1024,
            recv_buffer: 1024,
            sack: false,
            timestamps: false,
            window_scaling: false,
            congestion: crate::tcp::Algorithm::NewReno,
            min_rto: Duration::from_secs(2),
            ..Config::default()
        };
        let (r, _) = Connection::restore(&rec, now, &target).unwrap();
        // What the peer agreed to is kept.
        assert!(r.opts.sack_ok && r.ts.ok && r.opts.ws_ok);
        assert_eq!((r.snd.wscale, r.rcv.wscale), (c.snd.wscale, c.rcv.wscale));
        assert_eq!(r.cc.algorithm(), c.cc.algorithm());
        assert_eq!(r.send_queue(), 5000, "the record's send buffer, not the target's 1024");
        // The target's RTO floor applies.
        assert!(r.rto() >= Duration::from_secs(2));
        assert_eq!(r.opts.mss, c.opts.mss);
        // A target that cannot send the connection's segments refuses it clearly.
        let small = Config { mss: 536, ..Config::default() };
        assert!(matches!(Connection::restore(&rec, now, &small), Err(SnapshotError::Incompatible(_))));
    }

    #[test]
    fn rejects_bad_records() {
        let c = established();
        let rec = c.snapshot(Instant::from_millis(5), 0, false, &[]).unwrap();
        for n in 0..rec.len() {
            assert!(Connection::restore(&rec[..n], Instant::ZERO, &Config::default()).is_err(), "prefix {n}");
        }
        let mut bad = rec.clone();
        bad[0] = b'X';
        assert_eq!(Connection::restore(&bad, Instant::ZERO, &Config::default()).unwrap_err(), SnapshotError::BadMagic);
        let mut bad = rec.clone();
        bad[4] = 9;
        assert_eq!(Connection::restore(&bad, Instant::ZERO, &Config::default()).unwrap_err(), SnapshotError::UnsupportedVersion(9));
        // Random corruption never panics.
        let mut rng = crate::rand::Rng::new(1);
        for _ in 0..2000 {
            let mut b = rec.clone();
            let i = rng.below(b.len() as u64) as usize;
            b[i] ^= 1 << rng.below(8);
            let _ = Connection::restore(&b, Instant::ZERO, &Config::default());
        }
    }

    #[test]
    fn port_ownership_travels_as_a_flag() {
        let c = established();
        let now = Instant::from_millis(5);
        let owned = c.snapshot(now, 0, true, &[]).unwrap();
        let not = c.snapshot(now, 0, false, &[]).unwrap();
        // Only the flag differs: the layout of version 1 is unchanged, and a reader that does
        // not know the bit ignores it.
        let flags = |r: &[u8]| u16::from_le_bytes([r[6], r[7]]);
        assert_eq!(flags(&owned), flags(&not) | flag::OWNS_PORT);
        assert_eq!((&owned[..6], &owned[8..]), (&not[..6], &not[8..]));
        assert!(Connection::restore(&owned, now, &Config::default()).unwrap().1.owns_port);
        assert!(!Connection::restore(&not, now, &Config::default()).unwrap().1.owns_port);
    }

    #[test]
    fn only_established_or_close_wait() {
        let cfg = Config::default();
        let c = Connection::connect(Instant::ZERO, Tuple { local: L, remote: P }, SeqNumber(1), 0, &cfg);
        assert_eq!(c.snapshot(Instant::ZERO, 0, false, &[]).unwrap_err(), SnapshotError::WrongState(State::SynSent));
    }
}
