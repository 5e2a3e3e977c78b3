//! Live TCP connection handoff between the stacks of a cluster (spec/04), the poll loop's side.
//!
//! The source application calls [`transfer`]: its stack serializes the connection with all its
//! state ([`Stack::tcp_snapshot`]: it detaches silently, no FIN, no RST, no timer) and the
//! coupling layer ([`coupling::handoff`]) offers the record to the target stack through the
//! region. From that moment the connection is *frozen*: the segments the client keeps sending
//! that reach this stack are held (the stack answers [`stack::iface::Received::Hold`] and the
//! poll loop keeps a copy), never dropped or answered. Then:
//! - the target's application accepts ([`TransferDecision::Accept`], or the transfer was
//!   unconditional): the target installs the connection ([`Stack::tcp_restore`] sends one ACK,
//!   its NEWCONN switches the router's flow, its port ownership moves by CAS) and the source
//!   sends what it held to the target, in order, then forwards stragglers there for a while;
//! - it rejects, or the target dies or does not answer in time: the source re-installs the
//!   connection from its own record, processes what it held, and the application gets its
//!   (new) handle back in [`TransferOutcome`].
//!
//! Exactly one stack owns the connection at every point: the commit is the target's CAS of the
//! offer to accepted, and a source that gives up first wins the same CAS the other way.
//!
//! Applications meet it through [`crate::runner::App`]: `transfer_offer` (the *transfer
//! listener*: an application that implements it takes transferred connections),
//! `transferred` (a connection arrived, with the source application's opaque state) and
//! `transfer_done` (the outcome of a transfer it asked for).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddrV4;

use coupling::handoff::{HandoffEvent, TransferId};
use stack::iface::{ApiError, SocketHandle, Stack};
use stack::tcp::Tuple;
use stack::time::{Duration, Instant};

use crate::cluster::{node_of, StackCluster};

/// How long a moved connection's stragglers (segments a client still sends here) are forwarded
/// to its new stack: the router's flow follows the target's NEWCONN well before.
const MOVED_FORWARD: Duration = Duration::from_secs(3);
/// Frames held for one frozen connection at most (more are dropped: the client retransmits).
const HELD_MAX: usize = 1024;

/// A connection another stack offers to move here.
#[derive(Debug, Clone)]
pub struct TransferOffer {
    /// The transfer.
    pub id: TransferId,
    /// The source stack's name.
    pub from: String,
    /// The connection's local address (an address of this stack) and its peer.
    pub local: SocketAddrV4,
    /// The peer.
    pub remote: SocketAddrV4,
    /// The source application's opaque state.
    pub app_state: Vec<u8>,
    /// Offered unconditionally: it is taken without asking the application.
    pub unconditional: bool,
    record: Vec<u8>,
    offered_ns: u64,
    /// The record parsed when it was offered (it is parsed once, not again at the accept).
    valid: bool,
    /// A transfer from this stack to itself: the connection stays where it is, under this
    /// handle, and only changes hands (no record, no freeze).
    same_stack: Option<SocketHandle>,
}

impl TransferOffer {
    /// The transfer comes from this very stack (a re-parenting: the connection does not move).
    pub fn is_same_stack(&self) -> bool {
        self.same_stack.is_some()
    }
}

/// What [`transfer_with`] moves along with the connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transfer<'a> {
    /// The source application's opaque state, for the target application.
    pub app_state: &'a [u8],
    /// Bytes an API layer above the stack holds for the connection (its byte rings): they
    /// travel in the record in their place in the byte streams ([`stack::tcp::AppBytes`]).
    pub held: stack::tcp::AppBytes<'a>,
    /// The target takes it without asking its application.
    pub unconditional: bool,
}

/// The target application's answer to an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferDecision {
    /// Take it.
    Accept,
    /// Do not take it, with a reason the source application is told.
    Reject(u16),
}

/// Reason of a rejection by a stack whose application takes no transferred connections.
pub const REJECT_NO_LISTENER: u16 = 1;
/// Reason of a rejection by a stack that cannot install the connection (address not here,
/// 4-tuple in use, record refused).
pub const REJECT_CANNOT_INSTALL: u16 = 2;

/// What became of a transfer this stack's application asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// The target took it: the connection lives there now (the old handle is gone).
    Accepted {
        /// The target stack.
        to: String,
    },
    /// The target refused it: the connection is back here, under `handle` (`None` if it could
    /// not be re-installed).
    Rejected {
        /// The target application's reason.
        reason: u16,
        /// The connection, back.
        handle: Option<SocketHandle>,
    },
    /// The target died or did not answer in time: the connection is back here.
    Aborted {
        /// The connection, back.
        handle: Option<SocketHandle>,
    },
}

/// Why a transfer could not start. The connection is untouched, except where
/// `restored` says it was re-installed under a new handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferError {
    /// The stack is not a cluster member.
    NotClustered,
    /// The connection is on a follower shard of a cluster stack on several queues (queue
    /// `shard`): an application moves the lead's (queue 0's) connections only; `plex ctl
    /// drain` and a giveback move every shard's.
    FollowerShard {
        /// The follower's queue.
        shard: u32,
    },
    /// No stack of that name in the cluster config.
    UnknownStack(String),
    /// Only ESTABLISHED and CLOSE-WAIT connections move; or the handle is not a connection.
    NotMovable(String),
    /// The coupling layer refused the offer (target down, no free record slot, record too
    /// large); the connection was re-installed here under `restored`.
    Offer {
        /// Why.
        why: String,
        /// The connection's new handle.
        restored: Option<SocketHandle>,
    },
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::NotClustered => f.write_str("this stack is not a cluster member"),
            TransferError::FollowerShard { shard } => write!(
                f,
                "the connection is on queue {shard}, a follower shard: an application moves queue 0's connections only (a drain moves every queue's)"
            ),
            TransferError::UnknownStack(s) => write!(f, "no stack {s:?} in the cluster config"),
            TransferError::NotMovable(why) => write!(f, "the connection cannot move: {why}"),
            TransferError::Offer { why, .. } => write!(f, "the offer failed: {why}"),
        }
    }
}

impl std::error::Error for TransferError {}

/// A connection of this stack in flight to another one.
#[derive(Debug)]
struct Moving {
    to: u8,
    record: Vec<u8>,
    held: Vec<Vec<u8>>,
}

/// The handoff state a cluster member's stack keeps (inside [`StackCluster`]).
#[derive(Debug, Default)]
pub(crate) struct HandoffState {
    moving: HashMap<Tuple, Moving>,
    by_id: HashMap<TransferId, Tuple>,
    moved: HashMap<Tuple, (u8, Instant)>,
    /// The tuple of the last segment answered [`stack::cluster::InboundRoute::Hold`].
    pub(crate) last_hold: Option<Tuple>,
    offers: VecDeque<TransferOffer>,
    outcomes: VecDeque<(TransferId, TransferOutcome)>,
    /// Frames to send on to another member: (slot, frame).
    outbox: VecDeque<(u8, Vec<u8>)>,
    /// Freeze-to-installed latencies (ns) measured on this stack as a target.
    pub(crate) latencies: Vec<u64>,
    /// Counters.
    pub(crate) stats: HandoffCounters,
    /// Numbers the transfers of this stack to itself.
    local_seq: u32,
    /// Transfers of follower shards' connections (a drain of a stack on several queues): their
    /// outcome is not the application's; one that comes back stays on this shard.
    proxied: HashSet<TransferId>,
    /// Connections that came back to this shard from a follower's transfer, for the
    /// application ([`next_adopted`]).
    adopt: VecDeque<SocketHandle>,
}

/// Counters of a stack's handoffs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoffCounters {
    /// Transfers this stack started.
    pub started: u64,
    /// ... that the target took.
    pub accepted: u64,
    /// ... that came back (rejected or aborted).
    pub returned: u64,
    /// Connections this stack took from others.
    pub installed: u64,
    /// Offers this stack refused.
    pub refused: u64,
    /// Segments held while a connection was frozen.
    pub held: u64,
    /// Held segments dropped (over 1024 for one connection).
    pub held_dropped: u64,
    /// Stragglers forwarded to a connection's new stack.
    pub stragglers: u64,
}

impl HandoffState {
    /// Transfers of this stack in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.moving.len()
    }

    /// Where an inbound segment of a tuple this stack has no connection for goes, if a
    /// handoff knows: `Some(None)` hold it, `Some(Some(slot))` forward it there.
    pub(crate) fn route(&mut self, now: Instant, tuple: &Tuple) -> Option<Option<u8>> {
        if self.moving.is_empty() && self.moved.is_empty() {
            return None;
        }
        if self.moving.contains_key(tuple) {
            self.last_hold = Some(*tuple);
            return Some(None);
        }
        match self.moved.get(tuple) {
            Some(&(to, until)) if now < until => {
                self.stats.stragglers += 1;
                Some(Some(to))
            }
            Some(_) => {
                self.moved.remove(tuple);
                None
            }
            None => None,
        }
    }

    /// Transfer `id` of `tuple` to member `to` is offered: the connection is frozen here
    /// (its segments held) until the target decides.
    fn offered(&mut self, id: TransferId, tuple: Tuple, to: u8, record: Vec<u8>) {
        self.stats.started += 1;
        self.by_id.insert(id, tuple);
        self.moving.insert(tuple, Moving { to, record, held: Vec::new() });
    }

    fn hold(&mut self, frame: &[u8]) {
        let Some(t) = self.last_hold.take() else { return };
        if let Some(m) = self.moving.get_mut(&t) {
            if m.held.len() < HELD_MAX {
                m.held.push(frame.to_vec());
                self.stats.held += 1;
            } else {
                self.stats.held_dropped += 1;
            }
        }
    }
}

fn cluster(stack: &mut Stack) -> Result<&mut StackCluster, TransferError> {
    if let Some(shard) = crate::shards::follower_shard(stack) {
        return Err(TransferError::FollowerShard { shard });
    }
    node_of(stack).ok_or(TransferError::NotClustered)
}

/// Move the established connection `h` to the stack named `to`, with `app_state` for the
/// target application; `unconditional`: the target takes it without asking its application.
/// The outcome comes later in [`crate::runner::App::transfer_done`].
///
/// A transfer to this very stack re-parents the connection without serializing it: the
/// application's transfer listener is offered it (`transfer_offer`, with
/// [`TransferOffer::is_same_stack`]), takes it under the same handle, and the outcome follows.
pub fn transfer(stack: &mut Stack, now: Instant, h: SocketHandle, to: &str, app_state: &[u8], unconditional: bool) -> Result<TransferId, TransferError> {
    transfer_with(stack, now, h, to, &Transfer { app_state, held: Default::default(), unconditional })
}

/// Whether connection `h` could be transferred to `to` now (the checks [`transfer_with`] makes
/// before it touches anything): for an API layer that must give up bytes it holds only if the
/// transfer will start.
pub fn check_transfer(stack: &mut Stack, h: SocketHandle, to: &str) -> Result<(), TransferError> {
    target_slot(stack, h, to).map(|_| ())
}

/// [`check_transfer`], and the target's member slot.
fn target_slot(stack: &mut Stack, h: SocketHandle, to: &str) -> Result<u8, TransferError> {
    let sc = cluster(stack)?;
    let slot = sc.config().slot(to).ok_or_else(|| TransferError::UnknownStack(to.to_string()))?;
    let same = slot == sc.slot();
    match stack.tcp(h).map(|c| c.state()) {
        None => Err(TransferError::NotMovable("not a TCP connection".into())),
        Some(_) if same => Ok(slot as u8),
        Some(stack::tcp::State::Established | stack::tcp::State::CloseWait) => Ok(slot as u8),
        Some(s) => Err(TransferError::NotMovable(format!("only ESTABLISHED and CLOSE-WAIT connections move (this one is {s:?})"))),
    }
}

/// The name of this stack in the cluster, if it is a member.
pub fn stack_name(stack: &mut Stack) -> Option<String> {
    let sc = node_of(stack)?;
    Some(sc.config().stacks[sc.slot()].name.clone())
}

/// [`transfer`], with everything that travels along ([`Transfer`]).
pub fn transfer_with(stack: &mut Stack, now: Instant, h: SocketHandle, to: &str, t: &Transfer<'_>) -> Result<TransferId, TransferError> {
    let (app_state, unconditional) = (t.app_state, t.unconditional);
    let slot = target_slot(stack, h, to)?;
    let tuple = stack.tcp(h).map(|c| c.tuple()).ok_or_else(|| TransferError::NotMovable("not a TCP connection".into()))?;
    let sc = cluster(stack)?;
    let me = sc.slot();
    let ns = sc.mono_ns(now);
    if slot as usize == me {
        // Re-parenting: no record, no freeze; the offer goes to this stack's own application.
        if !t.held.unread.is_empty() || !t.held.unsent.is_empty() {
            return Err(TransferError::NotMovable("a transfer to the same stack keeps its bytes where they are".into()));
        }
        let sc = cluster(stack)?;
        sc.hand.local_seq = sc.hand.local_seq.wrapping_add(1);
        let id = TransferId(((sc.hand.local_seq as u64) << 32) | (0xffff << 16) | ((me as u64) << 8) | me as u64);
        let from = sc.config().stacks[me].name.clone();
        sc.hand.stats.started += 1;
        sc.hand.offers.push_back(TransferOffer {
            id,
            from,
            local: tuple.local,
            remote: tuple.remote,
            app_state: app_state.to_vec(),
            unconditional,
            record: Vec::new(),
            offered_ns: ns,
            valid: true,
            same_stack: Some(h),
        });
        return Ok(id);
    }
    let record = stack.tcp_snapshot_with(now, h, me as u32, t.held, &record_state(ns, app_state)).map_err(|e| TransferError::NotMovable(api_err(e)))?;
    let sc = cluster(stack)?;
    match sc.handoff_offer(ns, slot, tuple, &record, unconditional) {
        Ok(id) => {
            sc.hand.offered(id, tuple, slot, record);
            Ok(id)
        }
        Err(why) => {
            let restored = stack.tcp_restore(now, &record).ok().map(|(h, _)| h);
            Err(TransferError::Offer { why, restored })
        }
    }
}

fn api_err(e: ApiError) -> String {
    match e {
        ApiError::Tcp(stack::tcp::Error::NotConnected) => "only ESTABLISHED and CLOSE-WAIT connections move".into(),
        e => e.to_string(),
    }
}

/// A record's state bytes: the freeze time (CLOCK_MONOTONIC ns, the same for every stack of a
/// host: the target measures the handoff latency from it) in front of the application's state.
pub(crate) fn record_state(freeze_ns: u64, app_state: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(8 + app_state.len());
    wire.extend_from_slice(&freeze_ns.to_le_bytes());
    wire.extend_from_slice(app_state);
    wire
}

/// The freeze time (CLOCK_MONOTONIC ns) and the application's state of a record's state bytes
/// ([`record_state`]'s inverse).
fn split_state(wire: &[u8]) -> (u64, Vec<u8>) {
    match wire.split_first_chunk::<8>() {
        Some((t, rest)) => (u64::from_le_bytes(*t), rest.to_vec()),
        None => (0, wire.to_vec()),
    }
}

/// Keep a frame the stack answered [`stack::iface::Received::Hold`] for (the runner does it;
/// so must anything else that drives a cluster member's stack, such as a simulation).
pub fn hold(stack: &mut Stack, frame: &[u8]) {
    if let Some(sc) = node_of(stack) {
        sc.hand.hold(frame);
    }
}

/// Apply what the coupling layer said about transfers (called by the member's turn).
pub(crate) fn apply(stack: &mut Stack, now: Instant, events: Vec<HandoffEvent>) {
    for ev in events {
        match ev {
            HandoffEvent::Offered { id, from, local, remote, record, unconditional } => {
                let Some(sc) = node_of(stack) else { return };
                let from = sc.config().stacks.get(from as usize).map_or_else(|| format!("#{from}"), |s| s.name.clone());
                let info = stack.tcp_record_info(now, &record);
                let valid = info.is_ok();
                let wire = info.map(|s| s.app_state).unwrap_or_default();
                let (offered_ns, app_state) = split_state(&wire);
                if let Some(sc) = node_of(stack) {
                    sc.hand.offers.push_back(TransferOffer { id, from, local, remote, app_state, unconditional, record, offered_ns, valid, same_stack: None });
                }
            }
            HandoffEvent::Accepted { id } => {
                let Some(sc) = node_of(stack) else { return };
                let Some(t) = sc.hand.by_id.remove(&id) else { continue };
                let Some(m) = sc.hand.moving.remove(&t) else { continue };
                let to = sc.config().stacks.get(m.to as usize).map_or_else(String::new, |s| s.name.clone());
                sc.hand.stats.accepted += 1;
                for f in m.held {
                    sc.hand.outbox.push_back((m.to, f));
                }
                sc.hand.moved.insert(t, (m.to, now + MOVED_FORWARD));
                if !sc.hand.proxied.remove(&id) {
                    sc.hand.outcomes.push_back((id, TransferOutcome::Accepted { to }));
                }
                let ns = sc.mono_ns(now);
                sc.moved_away(ns, t, m.to);
                sc.fast_forward(now, t, m.to);
            }
            HandoffEvent::Rejected { id, reason, .. } => come_back(stack, now, id, Some(reason)),
            HandoffEvent::Aborted { id, .. } => come_back(stack, now, id, None),
            // The outcome cannot be learned (the slot was lost): the connection is not
            // re-installed here (it may live on at the target); the application is told.
            HandoffEvent::Unknown { id } => {
                let Some(sc) = node_of(stack) else { return };
                if let Some(t) = sc.hand.by_id.remove(&id) {
                    sc.hand.moving.remove(&t);
                    if !sc.hand.proxied.remove(&id) {
                        sc.hand.outcomes.push_back((id, TransferOutcome::Aborted { handle: None }));
                    }
                }
            }
        }
    }
}

/// A transfer that did not happen: the connection is re-installed here and what was held is
/// processed as if it had just arrived.
fn come_back(stack: &mut Stack, now: Instant, id: TransferId, reason: Option<u16>) {
    let Some(sc) = node_of(stack) else { return };
    let Some(t) = sc.hand.by_id.remove(&id) else { return };
    let Some(m) = sc.hand.moving.remove(&t) else { return };
    sc.hand.stats.returned += 1;
    let handle = stack.tcp_restore(now, &m.record).ok().map(|(h, _)| h);
    for f in &m.held {
        if let stack::iface::Received::Forward { stack: to } = stack.receive(now, f) {
            if let Some(sc) = node_of(stack) {
                sc.hand.outbox.push_back((to as u8, f.clone()));
            }
        }
    }
    let outcome = match reason {
        Some(reason) => TransferOutcome::Rejected { reason, handle },
        None => TransferOutcome::Aborted { handle },
    };
    if let Some(sc) = node_of(stack) {
        if sc.hand.proxied.remove(&id) {
            // A follower's connection: it lives on here, on the lead's shard.
            sc.hand.adopt.extend(handle);
        } else {
            sc.hand.outcomes.push_back((id, outcome));
        }
    }
}

/// Offer the connections follower shards detached for a drain or a giveback
/// ([`crate::shards::ShardLink::move_step`]) to their targets, as this stack's own: their
/// segments, which the followers hand here, are held meanwhile, and go to the target once it
/// took the connection. One the offer fails for (no record slot free, target gone) is
/// installed here, on the lead's shard, and given to the application ([`next_adopted`]); the
/// drain moves it on later. True when there were any.
pub fn offer_proxied(stack: &mut Stack, now: Instant, set: &crate::shards::ShardSet) -> bool {
    let list = set.sync.take_proxied();
    let any = !list.is_empty();
    for p in list {
        let Some(sc) = node_of(stack) else { return any };
        let ns = sc.mono_ns(now);
        match sc.handoff_offer(ns, p.to, p.tuple, &p.record, p.unconditional) {
            Ok(id) => {
                sc.hand.offered(id, p.tuple, p.to, p.record);
                sc.hand.proxied.insert(id);
                if let Some(d) = sc.drain.as_mut() {
                    d.moved += 1;
                }
            }
            Err(_) => {
                if let Ok((h, _)) = stack.tcp_restore(now, &p.record) {
                    if let Some(sc) = node_of(stack) {
                        sc.hand.adopt.push_back(h);
                    }
                }
            }
        }
    }
    any
}

/// The next connection that came to this (lead) shard from a follower whose transfer did not
/// happen: the application takes it as a transferred one.
pub fn next_adopted(stack: &mut Stack) -> Option<SocketHandle> {
    node_of(stack)?.hand.adopt.pop_front()
}

/// What this stack's drain or giveback by handoff moves now, for its follower shards.
pub fn move_scope(stack: &mut Stack, now: Instant) -> Option<crate::shards::MoveScope> {
    let sc = node_of(stack)?;
    let giver = sc.slot() as u32;
    // A giveback by handoff first: the primary waits for its address.
    let (addrs, targets, unconditional) = match (sc.hand_back, sc.drain) {
        (Some((addr, to)), _) => (vec![addr], vec![to], true),
        (None, Some(d)) => {
            let (a, t) = sc.drain_scope(now, d.to);
            (a, t, false)
        }
        (None, None) => return None,
    };
    (!targets.is_empty()).then_some(crate::shards::MoveScope { addrs, targets, unconditional, giver })
}

/// The next connection offered to this stack, for its application to decide on.
pub fn next_offer(stack: &mut Stack) -> Option<TransferOffer> {
    node_of(stack)?.hand.offers.pop_front()
}

/// Take an offered connection: the commit (a CAS in the region), then the install. `None` if
/// the source gave up first or the connection cannot be installed here (then it is refused).
pub fn accept(stack: &mut Stack, now: Instant, offer: &TransferOffer) -> Option<SocketHandle> {
    if let Some(h) = offer.same_stack {
        // Re-parenting: the connection is where it was, if it still is.
        let sc = node_of(stack)?;
        let me = sc.config().stacks[sc.slot()].name.clone();
        let alive = stack.tcp(h).is_some_and(|c| c.tuple() == Tuple { local: offer.local, remote: offer.remote });
        let sc = node_of(stack)?;
        if !alive {
            sc.hand.outcomes.push_back((offer.id, TransferOutcome::Aborted { handle: None }));
            return None;
        }
        sc.hand.stats.accepted += 1;
        sc.hand.stats.installed += 1;
        sc.hand.outcomes.push_back((offer.id, TransferOutcome::Accepted { to: me }));
        return Some(h);
    }
    let tuple = Tuple { local: offer.local, remote: offer.remote };
    let installable = offer.valid && stack.has_address(*offer.local.ip()) && !stack.has_connection(&tuple);
    let sc = node_of(stack)?;
    let ns = sc.mono_ns(now);
    if !installable {
        sc.handoff_reject(ns, offer.id, REJECT_CANNOT_INSTALL);
        sc.hand.stats.refused += 1;
        return None;
    }
    if !sc.handoff_accept(ns, offer.id) {
        return None;
    }
    sc.move_port(ns, offer, tuple);
    let (h, _) = stack.tcp_restore(now, &offer.record).ok()?;
    let sc = node_of(stack)?;
    sc.hand.stats.installed += 1;
    let ns = sc.mono_ns(now);
    sc.hand.latencies.push(ns.saturating_sub(offer.offered_ns));
    Some(h)
}

/// Refuse an offered connection (it stays with its source).
pub fn reject(stack: &mut Stack, now: Instant, offer: &TransferOffer, reason: u16) {
    if let Some(h) = offer.same_stack {
        if let Some(sc) = node_of(stack) {
            sc.hand.stats.refused += 1;
            sc.hand.stats.returned += 1;
            sc.hand.outcomes.push_back((offer.id, TransferOutcome::Rejected { reason, handle: Some(h) }));
        }
        return;
    }
    if let Some(sc) = node_of(stack) {
        let ns = sc.mono_ns(now);
        sc.handoff_reject(ns, offer.id, reason);
        sc.hand.stats.refused += 1;
    }
}

/// The next outcome of a transfer this stack started.
pub fn next_outcome(stack: &mut Stack) -> Option<(TransferId, TransferOutcome)> {
    node_of(stack)?.hand.outcomes.pop_front()
}

/// The next frame to send on to another member (held segments of an accepted transfer):
/// (member slot, frame).
pub fn next_forward(stack: &mut Stack) -> Option<(u8, Vec<u8>)> {
    node_of(stack)?.hand.outbox.pop_front()
}

/// A drain in progress (`plex ctl drain`): every connection on the cluster's distributed
/// addresses moves to another stack, as the application lets it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drain {
    pub(crate) seq: u64,
    pub(crate) to: Option<u8>,
    pub(crate) started: Instant,
    pub(crate) moved: u64,
    next: usize,
}

impl Drain {
    pub(crate) fn new(seq: u64, to: Option<u8>, started: Instant) -> Drain {
        Drain { seq, to, started, moved: 0, next: 0 }
    }
}

/// Transfers a drain keeps in flight at most (the region has 32 record slots for everyone).
const DRAIN_IN_FLIGHT: usize = 8;
/// Transfers a giveback by handoff keeps in flight at most: the returning primary waits for
/// its address, and a target whose poll thread sleeps takes a batch per wake-up (its next
/// frame or heartbeat), so the batches are larger; a few slots stay for everyone else.
const GIVEBACK_IN_FLIGHT: usize = 24;

/// One turn of a drain (or of a giveback by handoff): move what may move now, a few at a
/// time. True when it moved any.
pub fn drain_step(stack: &mut Stack, now: Instant, app: &mut (impl crate::runner::App + ?Sized)) -> bool {
    let Some(sc) = node_of(stack) else { return false };
    let cap = if sc.hand_back.is_some() { GIVEBACK_IN_FLIGHT } else { DRAIN_IN_FLIGHT };
    let room = cap.saturating_sub(sc.hand.moving.len());
    if room == 0 || (sc.drain.is_none() && sc.hand_back.is_none()) {
        return false;
    }
    let Some(crate::shards::MoveScope { addrs, targets, unconditional, .. }) = move_scope(stack, now) else { return false };
    let Some(sc) = node_of(stack) else { return false };
    let names: Vec<String> = targets.iter().map(|t| sc.config().stacks[*t as usize].name.clone()).collect();
    let mut next = sc.drain.map_or(0, |d| d.next);
    let mut moved = 0;
    for h in movable(stack, &addrs, room, app) {
        let to = &names[next % names.len()];
        next += 1;
        if transfer(stack, now, h, to, b"", unconditional).is_ok() {
            app.moved_away(now, stack, h);
            moved += 1;
        }
    }
    if let Some(d) = node_of(stack).and_then(|sc| sc.drain.as_mut()) {
        d.next = next;
        d.moved += moved as u64;
    }
    moved > 0
}

/// Up to `max` connections on `addrs` that a drain may move now: ESTABLISHED or CLOSE-WAIT,
/// and the application lets them go.
pub(crate) fn movable(stack: &Stack, addrs: &[std::net::Ipv4Addr], max: usize, app: &mut (impl crate::runner::App + ?Sized)) -> Vec<SocketHandle> {
    let mut out = Vec::new();
    for addr in addrs {
        for (h, state) in stack.tcp_connections_on(*addr) {
            if out.len() == max {
                return out;
            }
            if matches!(state, stack::tcp::State::Established | stack::tcp::State::CloseWait) && app.may_move(stack, h) {
                out.push(h);
            }
        }
    }
    out
}

/// This stack's handoff counters, if it is a cluster member.
pub fn counters(stack: &Stack) -> Option<HandoffCounters> {
    let c: &dyn std::any::Any = stack.cluster();
    c.downcast_ref::<StackCluster>().map(|sc| sc.hand.stats)
}

/// Freeze-to-installed latencies (ns) of the connections this stack took, taken out.
pub fn take_latencies(stack: &mut Stack) -> Vec<u64> {
    node_of(stack).map(|sc| std::mem::take(&mut sc.hand.latencies)).unwrap_or_default()
}
