//! Live connection handoff (spec/04), the cluster's side: a serialized TCP connection goes
//! from its *source* stack to a *target* stack through a slot of the coupling region, and one
//! compare-and-swap decides who owns it, so at every crash point the connection has exactly one
//! owner (or, if that owner died, none).
//!
//! The stack's side is `stack::iface::Stack::tcp_snapshot` (serialize and detach silently) and
//! `tcp_restore` (install): this module only carries the record and decides. One [`Handoff`]
//! per stack process, beside its [`Node`] (and [`Distributor`](crate::dist::Distributor)).
//!
//! ## The protocol, in the words of the region ([`HandoffSlotRow`], LAYOUT.md)
//! - **Offer** (source, [`Handoff::offer`]): claim a free slot by CAS of its control word
//!   (`free(g)` -> `writing(g)`, naming source and target), write the header (transfer id,
//!   both incarnations, the 4-tuple, flags, length, time) and the record, then the check word,
//!   then CAS `writing(g)` -> `offered(g)` (Release), and send OFFER on the node's ring to the
//!   target (a full ring keeps it in an outbox, pushed again at every [`Handoff::poll`]).
//! - **Decide** (target): [`Handoff::poll`] reads the OFFER, validates the slot (state, id,
//!   target and its incarnation, length, check word, the control word unchanged after the
//!   read) and emits [`HandoffEvent::Offered`] with a copy of the record. [`Handoff::accept`]
//!   is the commit point: CAS `offered(g)` -> `accepted(g)`; true means this stack owns the
//!   connection now (install it), false that the source gave up first (do not install).
//!   [`Handoff::reject`] CASes `offered(g)` -> `rejected(g)` with a reason. Either is told to
//!   the source by a message (a nudge: the source also reads the slot itself).
//! - **Outcome** (source, [`Handoff::poll`]): the control word of every transfer in flight is
//!   read at every poll: accepted -> [`HandoffEvent::Accepted`] (the connection is the
//!   target's: forward what was held to it, never re-install); rejected ->
//!   [`HandoffEvent::Rejected`] with the reason. At every [`Handoff::tick`] a transfer whose
//!   target is no longer up with the incarnation it was offered to, or that is undecided after
//!   [`Handoff::timeout_ns`] (200 ms by default), is *aborted*: CAS `offered(g)` ->
//!   `aborted(g)` by the source itself. If that CAS fails the target decided first and the
//!   outcome is what it decided. [`Handoff::abort`] does the same on request.
//!   [`HandoffEvent::Rejected`] and [`HandoffEvent::Aborted`] carry the source's own copy of
//!   the record back (the source re-installs the connection from it).
//! - **Free**: the source CASes the settled word to `free(g + 1)` as soon as it has seen the
//!   outcome (the target copied the record before deciding).
//!
//! Exactly one owner: the target installs only after its CAS from `offered(g)` won; the source
//! re-installs only after it saw `rejected(g)` or its own CAS to `aborted(g)` won. Only one CAS
//! from `offered(g)` can win.
//!
//! ## Crashes
//! - Target dies before deciding: the source aborts at its next tick (the target's member row
//!   is no longer up with `to_inc`) and re-installs. A zombie target (fenced, still running)
//!   that then calls [`Handoff::accept`] gets false: its CAS fails. A target that rejoins with a
//!   new incarnation forgets the offers made to the old one.
//! - Target dies after accepting: the connection died with it (it had exactly one owner).
//! - Source dies after offering: the record is complete in the slot, so **the target may still
//!   accept** (and owns the connection then) for [`Handoff::orphan_ns`] (1 s by default); after
//!   that any stack's tick aborts the orphan (CAS `offered` -> `aborted`) and frees it, and a
//!   late accept gets false. This keeps a connection alive through the source's death in the
//!   common case where the target decides at once.
//! - Source dies before the slot is offered (writing), or after the outcome: any stack's tick
//!   frees the slot (writing: once it has stayed unchanged for `orphan_ns`; settled: at once
//!   when the source's member row is not up, after `orphan_ns` when it is up with another
//!   incarnation than the slot's `from_inc`, so a fenced and rejoined source process still
//!   reads its outcomes itself).
//! - A slot whose control word is garbage (unknown state, a slot outside the config) is
//!   ignored and counted, and freed once it has stayed the same for `orphan_ns`; a record
//!   whose check word fails is ignored (counted) and the source times out and re-installs.
//! - A source fenced and rejoined with a new incarnation keeps resolving its transfers from
//!   the slots; if a slot was reclaimed meanwhile (others took it for the old incarnation's),
//!   the outcome is unknowable and [`HandoffEvent::Unknown`] says so: do **not** re-install
//!   (the target may own it).
//!
//! ## Driving it
//! - [`Handoff::new`] after [`Node::join`].
//! - [`Handoff::poll`] every poll-loop turn (cheap: the node's rings through
//!   [`Node::poll_mail`], one load per transfer in flight, the outbox).
//! - [`Handoff::tick`] every heartbeat after [`Node::tick`]: timeouts, liveness, the scan of
//!   the 32 slots (offers whose message was lost, reclaiming).
//! - Source: [`Handoff::offer`] after `tcp_snapshot`, then the outcome event; on
//!   [`HandoffEvent::Accepted`] also `Distributor::connection_moved` (no TERMCONN).
//! - Target: on [`HandoffEvent::Offered`], [`Handoff::accept`] (unconditional offers: at once)
//!   and `tcp_restore` if it returned true, or [`Handoff::reject`].
//!
//! Sans-IO like the rest of the crate: every entry point takes `now` (CLOCK_MONOTONIC ns).
//! One allocation per transfer on each side (the record copy); nothing per segment.
//! A transfer to this stack itself is refused ([`HandoffError::SelfTarget`]): the stack
//! re-parents the connection without serializing it.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use crate::check;
use crate::config::ClusterConfig;
use crate::layout::*;
use crate::node::{Live, Node};
use crate::region::Region;
use crate::ring::{Message, Producer, PAYLOAD_WORDS};

/// Handoff message kinds on the node's rings (payloads in LAYOUT.md). They only wake the other
/// side sooner: the slot's control word decides.
pub mod kind {
    /// Source -> target: a record is offered to you in the slot of this transfer id.
    pub const OFFER: u16 = 32;
    /// Target -> source: accepted (committed).
    pub const ACCEPTED: u16 = 33;
    /// Target -> source: rejected, with the reason.
    pub const REJECTED: u16 = 34;
}

/// How long a source waits for the target's decision before it aborts (200 ms).
pub const DEFAULT_TIMEOUT_NS: u64 = 200_000_000;
/// How long an offered slot whose source died stays acceptable, and how long a garbage or
/// orphaned writing slot must stay unchanged before it is freed (1 s).
pub const DEFAULT_ORPHAN_NS: u64 = 1_000_000_000;

/// Flag bit of [`HandoffSlotRow::flags`]: unconditional transfer.
const FLAG_UNCONDITIONAL: u16 = 1;

/// One transfer: `generation:32 | slot index:16 | source:8 | target:8` (high bits first), as
/// [`handoff_id`] makes it. Unique while a slot's generation does not wrap (2^32 reuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub u64);

impl TransferId {
    /// The slot's generation when it was claimed.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The slot index.
    pub fn index(self) -> usize {
        ((self.0 >> 16) & 0xffff) as usize
    }
    /// The source stack's slot.
    pub fn from(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// The target stack's slot.
    pub fn to(self) -> u8 {
        self.0 as u8
    }
}

impl std::fmt::Display for TransferId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}#{}.{}", self.from(), self.to(), self.index(), self.generation())
    }
}

/// Why [`Handoff::offer`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffError {
    /// The target is this stack: re-parent the connection without serializing it.
    SelfTarget,
    /// The target slot is not a stack of the cluster config.
    UnknownTarget(u8),
    /// The target is not up (by its member row).
    TargetDown(u8),
    /// The record is larger than a slot carries.
    TooLarge {
        /// Bytes of the record.
        len: usize,
        /// [`HANDOFF_MAX_RECORD`].
        max: usize,
    },
    /// Every slot is in use (32 transfers in flight cluster-wide).
    NoFreeSlot,
    /// The slot was taken from this stack while it wrote it (it stalled for longer than
    /// [`Handoff::orphan_ns`] and was taken for dead); nothing was offered.
    Interrupted,
    /// This stack left the cluster (its region went bad).
    Detached,
}

impl std::fmt::Display for HandoffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandoffError::SelfTarget => write!(f, "the target is this stack"),
            HandoffError::UnknownTarget(s) => write!(f, "stack slot {s} is not in the cluster config"),
            HandoffError::TargetDown(s) => write!(f, "stack slot {s} is not up"),
            HandoffError::TooLarge { len, max } => write!(f, "the connection's record is {len} bytes, a handoff slot carries {max}"),
            HandoffError::NoFreeSlot => write!(f, "every handoff slot is in use"),
            HandoffError::Interrupted => write!(f, "the handoff slot was reclaimed while this stack wrote it"),
            HandoffError::Detached => write!(f, "this stack left the cluster"),
        }
    }
}

impl std::error::Error for HandoffError {}

/// Why a source aborted a transfer ([`HandoffEvent::Aborted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The target is no longer up with the incarnation the record was offered to.
    TargetDown,
    /// No decision within [`Handoff::timeout_ns`].
    Timeout,
    /// [`Handoff::abort`].
    Requested,
}

/// What the stack must do, from [`Handoff::poll`] / [`Handoff::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffEvent {
    /// Target: a connection is offered to this stack. Call [`Handoff::accept`] (at once for an
    /// unconditional one) and install `record` only if it returns true, or [`Handoff::reject`].
    Offered {
        /// The transfer.
        id: TransferId,
        /// The source stack's slot.
        from: u8,
        /// The connection's local end.
        local: SocketAddrV4,
        /// The peer.
        remote: SocketAddrV4,
        /// The serialized connection (`tcp_snapshot`'s bytes).
        record: Vec<u8>,
        /// No accept/reject exchange with the application: accept.
        unconditional: bool,
    },
    /// Source: the target accepted and owns the connection; forward what was held to it and
    /// never re-install.
    Accepted {
        /// The transfer.
        id: TransferId,
    },
    /// Source: the target rejected it; re-install the connection from `record` (this stack's
    /// own copy of what it offered).
    Rejected {
        /// The transfer.
        id: TransferId,
        /// The target's reason.
        reason: u16,
        /// The record as offered.
        record: Vec<u8>,
    },
    /// Source: this stack gave up before the target decided; re-install from `record`.
    Aborted {
        /// The transfer.
        id: TransferId,
        /// Why.
        why: AbortReason,
        /// The record as offered.
        record: Vec<u8>,
    },
    /// Source: the outcome can no longer be learned (the slot was reclaimed for a dead source:
    /// this stack was fenced and rejoined, or left the cluster). Do **not** re-install: the
    /// target may own the connection.
    Unknown {
        /// The transfer.
        id: TransferId,
    },
}

/// Counters of one stack's handoff (only it writes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoffStats {
    /// Records offered (slot written and offered).
    pub offers: u64,
    /// Offers refused because every slot was in use.
    pub no_free_slot: u64,
    /// Offers delivered to this stack as a target ([`HandoffEvent::Offered`]).
    pub offers_in: u64,
    /// Target: accepts that won the CAS (this stack took the connection).
    pub accepted: u64,
    /// Target: accepts that lost (the source had aborted first).
    pub accept_lost: u64,
    /// Target: rejects that won the CAS.
    pub rejected: u64,
    /// Source: transfers the target accepted ([`HandoffEvent::Accepted`]).
    pub outcome_accepted: u64,
    /// Source: transfers the target rejected ([`HandoffEvent::Rejected`]).
    pub outcome_rejected: u64,
    /// Source: transfers this stack aborted (its CAS won).
    pub aborted: u64,
    /// Source: outcomes that could not be learned ([`HandoffEvent::Unknown`]).
    pub unknown: u64,
    /// Messages read (valid or not).
    pub messages_in: u64,
    /// Messages pushed into rings.
    pub messages_out: u64,
    /// Pushes that found the ring full (the message waits in the outbox).
    pub ring_full: u64,
    /// Slots and messages ignored because they failed validation (garbage control word, bad
    /// id, length or check word, a message from outside the config).
    pub invalid: u64,
    /// Slots this stack freed as the source of their transfer.
    pub freed: u64,
    /// Slots freed for a dead source or as garbage (orphans aborted included).
    pub reclaimed: u64,
}

/// A transfer this stack offered, until it has seen the outcome.
#[derive(Debug)]
struct Pending {
    idx: usize,
    /// The control word as offered.
    word: u64,
    to: u8,
    to_inc: u64,
    offered_ns: u64,
    record: Vec<u8>,
}

/// An offer this stack emitted as a target and has not decided.
#[derive(Debug, Clone, Copy)]
struct Incoming {
    idx: usize,
    /// The control word as read (offered).
    word: u64,
    from: u8,
}

fn ctl_word(state: HandoffState, from: u8, to: u8, generation: u32) -> u64 {
    state as u64 | (from as u64) << 8 | (to as u64) << 16 | (generation as u64) << 32
}

fn with_state(w: u64, state: HandoffState) -> u64 {
    (w & !0xff) | state as u64
}

fn free_after(w: u64) -> u64 {
    ctl_word(HandoffState::Free, 0, 0, ((w >> 32) as u32).wrapping_add(1))
}

fn sock_word(s: SocketAddrV4) -> u64 {
    u32::from(*s.ip()) as u64 | (s.port() as u64) << 32
}

fn unpack_sock(w: u64) -> Option<SocketAddrV4> {
    (w >> 48 == 0).then(|| SocketAddrV4::new(Ipv4Addr::from(w as u32), (w >> 32) as u16))
}

/// A slot's source as its member row tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Up with the slot's incarnation (or its row is unreadable).
    Alive,
    /// Up with another incarnation (fenced and rejoined, or restarted).
    Rejoined,
    /// Not up.
    Gone,
}

/// One stack's part of connection handoff. Created by [`Handoff::new`]; driven by
/// [`Handoff::poll`] and [`Handoff::tick`].
#[derive(Debug)]
pub struct Handoff {
    region: Arc<Region>,
    cfg: Arc<ClusterConfig>,
    slot: u8,
    inc: u64,
    detached: bool,
    pending: BTreeMap<TransferId, Pending>,
    incoming: BTreeMap<TransferId, Incoming>,
    /// Per slot: a control word and when this stack first saw it (orphan and garbage timers).
    watch: [(u64, u64); HANDOFF_SLOTS],
    /// Per slot: a control word whose record failed validation (counted once, not re-read).
    bad: [u64; HANDOFF_SLOTS],
    /// Where the next claim starts looking.
    next: usize,
    outbox: Vec<VecDeque<Message>>,
    events: Vec<HandoffEvent>,
    /// A source aborts a transfer undecided for this long (ns; default [`DEFAULT_TIMEOUT_NS`]).
    pub timeout_ns: u64,
    /// An offer whose source died stays acceptable this long; garbage and orphaned writing
    /// slots are freed after staying unchanged this long (ns; default [`DEFAULT_ORPHAN_NS`]).
    pub orphan_ns: u64,
    /// Counters.
    pub stats: HandoffStats,
}

impl Handoff {
    /// The handoff of the stack whose node is `node` (after [`Node::join`]).
    pub fn new(node: &Node) -> Handoff {
        Handoff {
            region: node.region().clone(),
            cfg: Arc::new(node.config().clone()),
            slot: node.slot() as u8,
            inc: node.incarnation(),
            detached: false,
            pending: BTreeMap::new(),
            incoming: BTreeMap::new(),
            watch: [(0, 0); HANDOFF_SLOTS],
            bad: [0; HANDOFF_SLOTS],
            next: 0,
            outbox: (0..MAX_STACKS).map(|_| VecDeque::new()).collect(),
            events: Vec::new(),
            timeout_ns: DEFAULT_TIMEOUT_NS,
            orphan_ns: DEFAULT_ORPHAN_NS,
            stats: HandoffStats::default(),
        }
    }

    /// Transfers this stack offered whose outcome it has not seen yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Offers emitted to this stack as a target and not decided yet.
    pub fn undecided(&self) -> usize {
        self.incoming.len()
    }

    /// Messages waiting in the outbox to `slot` (its ring was full).
    pub fn queued_to(&self, slot: usize) -> usize {
        self.outbox.get(slot).map_or(0, |o| o.len())
    }

    // ------------------------------------------------------------------ source

    /// Offer the connection (`local`, `remote`) serialized as `record` to stack `to`; the
    /// outcome comes as an event of [`Handoff::poll`] / [`Handoff::tick`]. `unconditional`:
    /// the target installs it without asking its application. The caller keeps holding the
    /// client's segments until the outcome.
    pub fn offer(
        &mut self,
        now: u64,
        to: u8,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        record: &[u8],
        unconditional: bool,
    ) -> Result<TransferId, HandoffError> {
        if self.detached {
            return Err(HandoffError::Detached);
        }
        if to == self.slot {
            return Err(HandoffError::SelfTarget);
        }
        if to as usize >= self.cfg.stacks.len() {
            return Err(HandoffError::UnknownTarget(to));
        }
        if record.len() > HANDOFF_MAX_RECORD {
            return Err(HandoffError::TooLarge { len: record.len(), max: HANDOFF_MAX_RECORD });
        }
        let to_inc = self.up_inc(to, now).ok_or(HandoffError::TargetDown(to))?;
        let region = self.region.clone();
        let slots = region.handoff_slots();
        let mut claimed = None;
        for n in 0..slots.len() {
            let idx = (self.next + n) % slots.len();
            let w = slots[idx].ctl.load(Ordering::Acquire);
            if HandoffState::from_u8(w as u8) != Some(HandoffState::Free) {
                continue;
            }
            let writing = ctl_word(HandoffState::Writing, self.slot, to, (w >> 32) as u32);
            if slots[idx].ctl.compare_exchange(w, writing, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                claimed = Some((idx, writing));
                break;
            }
        }
        let Some((idx, writing)) = claimed else {
            self.stats.no_free_slot += 1;
            return Err(HandoffError::NoFreeSlot);
        };
        self.next = (idx + 1) % slots.len();
        let row = &slots[idx];
        let id = handoff_id((writing >> 32) as u32, idx, self.slot, to);
        let flags = if unconditional { FLAG_UNCONDITIONAL } else { 0 };
        let header = [writing & !0xff, id, self.inc, to_inc, sock_word(local), sock_word(remote), record.len() as u64 | (flags as u64) << 32, now];
        row.id.store(id, Ordering::Relaxed);
        row.from_inc.store(self.inc, Ordering::Relaxed);
        row.to_inc.store(to_inc, Ordering::Relaxed);
        row.local.store(header[4], Ordering::Relaxed);
        row.remote.store(header[5], Ordering::Relaxed);
        row.len.store(record.len() as u32, Ordering::Relaxed);
        row.flags.store(flags, Ordering::Relaxed);
        row.reason.store(0, Ordering::Relaxed);
        row.offered_ns.store(now, Ordering::Relaxed);
        row.decided_ns.store(0, Ordering::Relaxed);
        let words = record.chunks(8).map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        });
        let data = &row.data;
        let check = handoff_check(header, words.zip(data.iter()).map(|(w, a)| {
            a.store(w, Ordering::Relaxed);
            w
        }));
        row.check.store(check, Ordering::Relaxed);
        let offered = with_state(writing, HandoffState::Offered);
        if row.ctl.compare_exchange(writing, offered, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(HandoffError::Interrupted);
        }
        self.stats.offers += 1;
        let id = TransferId(id);
        self.pending.insert(id, Pending { idx, word: offered, to, to_inc, offered_ns: now, record: record.to_vec() });
        self.queue(to, kind::OFFER, [id.0, to_inc, 0, 0, 0, 0, 0]);
        self.flush();
        Ok(id)
    }

    /// Give up transfer `id` now (this stack is its source): true if the abort won, and
    /// [`HandoffEvent::Aborted`] follows; false if the target decided first (its outcome
    /// follows) or `id` is not in flight here.
    pub fn abort(&mut self, now: u64, id: TransferId) -> bool {
        if self.detached || !self.pending.contains_key(&id) {
            return false;
        }
        self.try_abort(now, id, AbortReason::Requested)
    }

    fn try_abort(&mut self, now: u64, id: TransferId, why: AbortReason) -> bool {
        let Some(p) = self.pending.get(&id) else { return false };
        let row = &self.region.handoff_slots()[p.idx];
        let aborted = with_state(p.word, HandoffState::Aborted);
        if row.ctl.compare_exchange(p.word, aborted, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            row.decided_ns.store(now, Ordering::Relaxed);
            let p = self.pending.remove(&id).map(|p| p.record).unwrap_or_default();
            self.stats.aborted += 1;
            self.free_own(id.index(), aborted);
            self.events.push(HandoffEvent::Aborted { id, why, record: p });
            true
        } else {
            self.resolve(id);
            false
        }
    }

    /// Free our own settled slot (CAS to free, generation + 1).
    fn free_own(&mut self, idx: usize, settled: u64) {
        if let Some(row) = self.region.handoff_slots().get(idx) {
            if row.ctl.compare_exchange(settled, free_after(settled), Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.stats.freed += 1;
            }
        }
    }

    /// Look at the slot of pending transfer `id`: emit its outcome if it is decided.
    fn resolve(&mut self, id: TransferId) {
        let Some(p) = self.pending.get(&id) else { return };
        let row = &self.region.handoff_slots()[p.idx];
        let w = row.ctl.load(Ordering::Acquire);
        if w == p.word {
            return;
        }
        let same = w >> 8 == p.word >> 8;
        let state = HandoffState::from_u8(w as u8).filter(|_| same);
        let ev = match state {
            Some(HandoffState::Accepted) => {
                self.stats.outcome_accepted += 1;
                HandoffEvent::Accepted { id }
            }
            Some(HandoffState::Rejected) => {
                let reason = row.reason.load(Ordering::Relaxed);
                self.stats.outcome_rejected += 1;
                let record = self.pending.get_mut(&id).map(|p| std::mem::take(&mut p.record)).unwrap_or_default();
                HandoffEvent::Rejected { id, reason, record }
            }
            // A reclaimer aborted it for a dead source (this stack's old incarnation): the
            // target cannot have it.
            Some(HandoffState::Aborted) => {
                self.stats.aborted += 1;
                let record = self.pending.get_mut(&id).map(|p| std::mem::take(&mut p.record)).unwrap_or_default();
                HandoffEvent::Aborted { id, why: AbortReason::TargetDown, record }
            }
            _ => {
                self.stats.unknown += 1;
                self.pending.remove(&id);
                self.events.push(HandoffEvent::Unknown { id });
                return;
            }
        };
        self.pending.remove(&id);
        self.free_own(id.index(), w);
        self.events.push(ev);
    }

    // ------------------------------------------------------------------ target

    /// Take offered transfer `id`: the commit point (CAS offered -> accepted). True: this
    /// stack owns the connection now, install it. False: the source aborted first (or `id`
    /// is unknown or was decided already): do not install.
    pub fn accept(&mut self, now: u64, id: TransferId) -> bool {
        if self.detached {
            return false;
        }
        let Some(inc) = self.incoming.remove(&id) else { return false };
        let row = &self.region.handoff_slots()[inc.idx];
        if row.ctl.compare_exchange(inc.word, with_state(inc.word, HandoffState::Accepted), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            row.decided_ns.store(now, Ordering::Relaxed);
            self.stats.accepted += 1;
            self.queue(inc.from, kind::ACCEPTED, [id.0, 0, 0, 0, 0, 0, 0]);
            self.flush();
            true
        } else {
            self.stats.accept_lost += 1;
            false
        }
    }

    /// Refuse offered transfer `id` with `reason` (CAS offered -> rejected): the source keeps
    /// the connection. False if the source aborted first or `id` is unknown here.
    pub fn reject(&mut self, now: u64, id: TransferId, reason: u16) -> bool {
        if self.detached {
            return false;
        }
        let Some(inc) = self.incoming.remove(&id) else { return false };
        let row = &self.region.handoff_slots()[inc.idx];
        if row.ctl.load(Ordering::Acquire) != inc.word {
            return false;
        }
        // Stored before the CAS that publishes it (a lost CAS leaves a reason nobody reads).
        row.reason.store(reason, Ordering::Relaxed);
        if row.ctl.compare_exchange(inc.word, with_state(inc.word, HandoffState::Rejected), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            row.decided_ns.store(now, Ordering::Relaxed);
            self.stats.rejected += 1;
            self.queue(inc.from, kind::REJECTED, [id.0, reason as u64, 0, 0, 0, 0, 0]);
            self.flush();
            true
        } else {
            false
        }
    }

    /// Read slot `idx` if it holds an offer to this stack not yet emitted: validate it and emit
    /// [`HandoffEvent::Offered`].
    fn read_offer(&mut self, idx: usize) {
        let region = self.region.clone();
        let Some(row) = region.handoff_slots().get(idx) else { return };
        let w = row.ctl.load(Ordering::Acquire);
        if HandoffState::from_u8(w as u8) != Some(HandoffState::Offered) || (w >> 16) as u8 != self.slot || self.bad[idx] == w {
            return;
        }
        let from = (w >> 8) as u8;
        let id = TransferId(handoff_id((w >> 32) as u32, idx, from, self.slot));
        if self.incoming.contains_key(&id) {
            return;
        }
        let to_inc = row.to_inc.load(Ordering::Relaxed);
        if to_inc != self.inc {
            // Offered to a previous incarnation of this stack: not ours (the source aborts).
            self.bad[idx] = w;
            return;
        }
        let header = [
            w & !0xff,
            row.id.load(Ordering::Relaxed),
            row.from_inc.load(Ordering::Relaxed),
            to_inc,
            row.local.load(Ordering::Relaxed),
            row.remote.load(Ordering::Relaxed),
            row.len.load(Ordering::Relaxed) as u64 | (row.flags.load(Ordering::Relaxed) as u64) << 32,
            row.offered_ns.load(Ordering::Relaxed),
        ];
        let len = header[6] as u32 as usize;
        let (local, remote) = (unpack_sock(header[4]), unpack_sock(header[5]));
        let (Some(local), Some(remote)) = (local, remote) else { return self.invalid_slot(idx, w) };
        if from as usize >= self.cfg.stacks.len() || from == self.slot || header[1] != id.0 || len > HANDOFF_MAX_RECORD {
            return self.invalid_slot(idx, w);
        }
        let mut record = Vec::with_capacity(len);
        let words = row.data[..len.div_ceil(8)].iter().map(|a| a.load(Ordering::Relaxed));
        let check = handoff_check(
            header,
            words.inspect(|v| {
                let b = v.to_le_bytes();
                let n = (len - record.len()).min(8);
                record.extend_from_slice(&b[..n]);
            }),
        );
        let stored = row.check.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if row.ctl.load(Ordering::Relaxed) != w {
            // Changed while read (aborted, freed, reused): not an offer any more.
            return;
        }
        if check != stored {
            return self.invalid_slot(idx, w);
        }
        self.incoming.insert(id, Incoming { idx, word: w, from });
        self.stats.offers_in += 1;
        let unconditional = (header[6] >> 32) as u16 & FLAG_UNCONDITIONAL != 0;
        self.events.push(HandoffEvent::Offered { id, from, local, remote, record, unconditional });
    }

    fn invalid_slot(&mut self, idx: usize, w: u64) {
        self.bad[idx] = w;
        self.stats.invalid += 1;
    }

    // ------------------------------------------------------------------ driving

    /// Follow the node: leave with it, forget offers made to a previous incarnation.
    fn sync(&mut self, node: &Node) {
        if self.detached {
            return;
        }
        if node.detached().is_some() {
            self.detached = true;
            self.incoming.clear();
            for o in &mut self.outbox {
                o.clear();
            }
            for (id, _) in std::mem::take(&mut self.pending) {
                self.stats.unknown += 1;
                self.events.push(HandoffEvent::Unknown { id });
            }
            return;
        }
        if node.incarnation() != self.inc {
            self.inc = node.incarnation();
            self.incoming.clear();
        }
    }

    /// Read the mail, look at the transfers in flight, send what is queued. Every poll-loop
    /// turn.
    pub fn poll(&mut self, now: u64, node: &mut Node, out: &mut Vec<HandoffEvent>) {
        self.sync(node);
        if !self.detached {
            node.poll_mail();
            self.read_mail(node);
            let ids: Vec<TransferId> = self.pending.keys().copied().collect();
            for id in ids {
                self.resolve(id);
            }
            self.flush();
        }
        let _ = now;
        out.append(&mut self.events);
    }

    fn read_mail(&mut self, node: &mut Node) {
        for m in node.take_handoff_mail() {
            self.stats.messages_in += 1;
            let id = TransferId(m.payload[0]);
            let from_ok = (m.from_slot as usize) < self.cfg.stacks.len() && m.from_slot != self.slot && id.index() < HANDOFF_SLOTS;
            match m.kind {
                kind::OFFER if from_ok && id.from() == m.from_slot && id.to() == self.slot => self.read_offer(id.index()),
                kind::ACCEPTED | kind::REJECTED if from_ok && id.to() == m.from_slot && id.from() == self.slot => self.resolve(id),
                _ => self.stats.invalid += 1,
            }
        }
    }

    /// One step, every heartbeat after [`Node::tick`]: read the mail, abort transfers whose
    /// target is down or that timed out, scan the slots (offers to this stack whose message
    /// was lost; slots of dead sources and garbage to free), send what is queued.
    pub fn tick(&mut self, now: u64, node: &mut Node, out: &mut Vec<HandoffEvent>) {
        self.sync(node);
        if self.detached {
            out.append(&mut self.events);
            return;
        }
        self.read_mail(node);
        let ids: Vec<TransferId> = self.pending.keys().copied().collect();
        for id in ids {
            self.resolve(id);
            let Some(p) = self.pending.get(&id) else { continue };
            let (to, to_inc, offered_ns) = (p.to, p.to_inc, p.offered_ns);
            if node.live(to as usize) == Live::Down || !self.alive(to, to_inc, now) {
                self.try_abort(now, id, AbortReason::TargetDown);
            } else if now.saturating_sub(offered_ns) >= self.timeout_ns {
                self.try_abort(now, id, AbortReason::Timeout);
            }
        }
        for idx in 0..HANDOFF_SLOTS.min(self.region.handoff_slots().len()) {
            self.scan(now, idx);
        }
        for (to, ob) in self.outbox.iter_mut().enumerate() {
            if node.live(to) == Live::Down {
                ob.clear();
            }
        }
        self.flush();
        out.append(&mut self.events);
    }

    fn scan(&mut self, now: u64, idx: usize) {
        let region = self.region.clone();
        let row = &region.handoff_slots()[idx];
        let w = row.ctl.load(Ordering::Acquire);
        let stacks = self.cfg.stacks.len();
        let (from, to) = ((w >> 8) as u8, (w >> 16) as u8);
        let state = match HandoffState::from_u8(w as u8) {
            Some(HandoffState::Free) => return,
            Some(s) if (from as usize) < stacks && (to as usize) < stacks && from != to => s,
            _ => {
                // Garbage: counted once, freed once it has stayed the same for `orphan_ns`.
                if self.watch[idx].0 != w {
                    self.watch[idx] = (w, now);
                    self.stats.invalid += 1;
                } else if now.saturating_sub(self.watch[idx].1) >= self.orphan_ns && row.ctl.compare_exchange(w, free_after(w), Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    self.stats.reclaimed += 1;
                }
                return;
            }
        };
        let id = TransferId(handoff_id((w >> 32) as u32, idx, from, to));
        if self.pending.contains_key(&id) {
            return;
        }
        if state == HandoffState::Offered && to == self.slot {
            self.read_offer(idx);
        }
        let from_inc = row.from_inc.load(Ordering::Relaxed);
        let source = self.source_state(from, from_inc, now);
        if source == Source::Alive {
            self.watch[idx] = (w, now);
            return;
        }
        if self.watch[idx].0 != w {
            self.watch[idx] = (w, now);
        }
        let stale = now.saturating_sub(self.watch[idx].1) >= self.orphan_ns;
        let next = match state {
            // Settled: free it at once if its source is gone; a source that rejoined (same
            // process, new incarnation) gets `orphan_ns` to read the outcome itself.
            HandoffState::Accepted | HandoffState::Rejected | HandoffState::Aborted if source == Source::Gone || stale => free_after(w),
            HandoffState::Offered if stale => with_state(w, HandoffState::Aborted),
            HandoffState::Writing if stale => free_after(w),
            _ => return,
        };
        if row.ctl.compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            if next != free_after(w) {
                row.decided_ns.store(now, Ordering::Relaxed);
                let _ = row.ctl.compare_exchange(next, free_after(next), Ordering::AcqRel, Ordering::Acquire);
            }
            self.stats.reclaimed += 1;
        }
    }

    /// What the member row of a slot's source says about it.
    fn source_state(&self, slot: u8, inc: u64, now: u64) -> Source {
        if slot == self.slot {
            return if inc == self.inc { Source::Alive } else { Source::Rejoined };
        }
        match check::member(&self.region, &self.cfg, slot as usize, now) {
            Ok(s) if s.word.state == MemberState::Up => {
                if s.incarnation == inc {
                    Source::Alive
                } else {
                    Source::Rejoined
                }
            }
            Ok(_) => Source::Gone,
            // Nothing is decided from garbage: the timers decide.
            Err(_) => Source::Alive,
        }
    }

    /// Is member `slot` up with incarnation `inc`? A row that fails validation counts as up
    /// (nothing is decided from garbage: the timers decide).
    fn alive(&self, slot: u8, inc: u64, now: u64) -> bool {
        if slot == self.slot {
            return inc == self.inc;
        }
        match check::member(&self.region, &self.cfg, slot as usize, now) {
            Ok(s) => s.word.state == MemberState::Up && s.incarnation == inc,
            Err(_) => true,
        }
    }

    /// The incarnation of member `slot` if its row validates and says up.
    fn up_inc(&self, slot: u8, now: u64) -> Option<u64> {
        check::member(&self.region, &self.cfg, slot as usize, now).ok().filter(|s| s.word.state == MemberState::Up).map(|s| s.incarnation)
    }

    fn queue(&mut self, to: u8, k: u16, payload: [u64; PAYLOAD_WORDS]) {
        if (to as usize) < MAX_STACKS && to != self.slot {
            self.outbox[to as usize].push_back(Message { kind: k, from_slot: self.slot, from_incarnation: self.inc as u32, payload });
        }
    }

    /// Push what waits in the outboxes, in order, until a ring is full.
    fn flush(&mut self) {
        if self.detached {
            return;
        }
        for to in 0..MAX_STACKS {
            if self.outbox[to].is_empty() {
                continue;
            }
            let Some(ring) = self.region.ring(self.slot as usize, to) else { continue };
            let p = Producer::new(ring);
            while let Some(m) = self.outbox[to].front() {
                if p.push(m).is_err() {
                    self.stats.ring_full += 1;
                    break;
                }
                self.stats.messages_out += 1;
                self.outbox[to].pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests;
