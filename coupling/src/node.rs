//! One stack's membership in the cluster and its part of the dynamic VIPA (DVIPA) protocol:
//! addresses that belong to the cluster rather than to one stack, each held by one stack at a
//! time and moved to another when its holder fails, returns or is told to by an operator.
//!
//! A [`Node`] is driven by its stack's poll loop: [`Node::tick`] every heartbeat interval (and
//! whenever [`Node::lease_valid`] says the lease is about to lapse), with `now` in
//! CLOCK_MONOTONIC nanoseconds. It never blocks, sleeps or spawns: every step is a bounded scan
//! of the region with loads and compare-and-swaps, and its effects on the stack come back as
//! [`Action`]s that the caller applies before the next tick (remove the address from the home
//! list and the XDP steering map; add it and announce it with gratuitous ARP).
//!
//! The protocol, in the words of the region:
//! - Membership: renewing the lease and declaring a member failed are both CAS on the member's
//!   word, so a stalled stack's renewal fails once it has been declared failed: it is *fenced*,
//!   drops every address without a word to the network and rejoins with a new incarnation.
//!   Nothing is taken over from a stack before it is declared failed, and a stack does not touch
//!   the network unless its lease is valid, so the old and new owner never answer together.
//! - A DVIPA's owner word changes only by CAS, and every change bumps its generation.
//!   Takeover: only the first live stack of the hierarchy (active owner, then role descending,
//!   then join order, then slot) CASes a held address away from a failed owner. Giveback: the
//!   holder first deactivates locally (one tick), then CASes the word to the primary, which
//!   activates when it sees itself as owner. Delayed giveback marks the word and tells the
//!   primary (a message), which re-registers as backup rank 255.
//! - A configured DVIPA whose primary has not started is activated by the first live stack of
//!   its hierarchy once the cluster's `primary_grace_ms` has passed (never, if it is "never").
//! - Range DVIPAs belong to the application that bound them: an application's bind() of an
//!   address inside a VIPA range the stack may serve activates it there
//!   ([`Node::bind_activate`]) unless another live stack holds it. They are not taken over:
//!   when their stack fails or leaves they go back to inactive, and the next bind (on any
//!   allowed stack) activates them again. `plex ctl` can also activate or move them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::check::{self, Invalid, InvalidCounts, MemberSeen};
use crate::config::ClusterConfig;
use crate::layout::*;
use crate::region::{Region, RegionFault};
use crate::ring::{Consumer, Message, Producer};
use crate::words::{MemberWord, OwnerWord};

/// Message kinds on the rings.
pub(crate) mod msg {
    /// `payload[0]` = DVIPA row index: the holder keeps the address until its connections end.
    pub const DELAYED_GIVEBACK: u16 = 1;
    /// Kinds `DIST_FIRST..=DIST_LAST` belong to the distributor ([`crate::dist`]): the node
    /// queues them for it ([`super::Node::take_dist_mail`]).
    pub const DIST_FIRST: u16 = 16;
    /// Last distributor kind.
    pub const DIST_LAST: u16 = 31;
    /// Kinds `HANDOFF_FIRST..=HANDOFF_LAST` belong to connection handoff
    /// ([`crate::handoff`]): the node queues them for it ([`super::Node::take_handoff_mail`]).
    pub const HANDOFF_FIRST: u16 = 32;
    /// Last handoff kind.
    pub const HANDOFF_LAST: u16 = 39;
}

/// Distributor messages the node holds before it stops reading the rings (the rest wait in
/// the rings: nothing is dropped).
const DIST_MAIL_CAP: usize = 4 * RING_SLOTS * MAX_STACKS;

/// Which table a DVIPA row is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowRef {
    /// A configured DVIPA (index = position in the config).
    Config(usize),
    /// A range DVIPA (index in the open-addressing table).
    Range(usize),
}

impl RowRef {
    /// The row in `region`. Panics if the index is outside its table.
    pub fn of(self, region: &Region) -> &DvipaRow {
        match self {
            RowRef::Config(i) => &region.dvipas()[i],
            RowRef::Range(i) => &region.range_dvipas()[i],
        }
    }
}

/// Is the member in `slot` up (joined, not failed, not left), by a row that validates?
pub fn member_up(region: &Region, cfg: &ClusterConfig, slot: u8, now: u64) -> bool {
    (slot as usize) < cfg.stacks.len() && check::member(region, cfg, slot as usize, now).is_ok_and(|s| s.word.state == MemberState::Up)
}

/// Change a DVIPA's owner word from `cur` to `next` (one CAS), recording when and counting it.
pub(crate) fn cas_owner(row: &DvipaRow, cur: OwnerWord, next: OwnerWord, now: u64) -> bool {
    let ok = row.owner.compare_exchange(cur.pack(), next.pack(), Ordering::AcqRel, Ordering::Acquire).is_ok();
    if ok {
        row.changed_ns.store(now, Ordering::Relaxed);
        row.moves.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// What the stack must do, returned by [`Node::tick`] and [`Node::leave`]; the caller applies
/// every action before the node's next tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add to the home list and the steering map, then announce (gratuitous ARP) and report it
    /// with [`Node::announced`].
    Activate {
        /// The DVIPA now held here.
        addr: Ipv4Addr,
        /// Prefix length to add it with.
        prefix: u8,
        /// Why, for the stack's log.
        why: &'static str,
    },
    /// Giveback by handoff (`giveback = "handoff"`): this stack holds `addr` and its primary
    /// is back: move every connection on it to stack `to` (live handoff); once none is left
    /// the address goes back at once. Repeated every tick until then.
    HandBack {
        /// The DVIPA to give back.
        addr: Ipv4Addr,
        /// The primary's slot.
        to: u8,
    },
    /// The primary of `addr` waits for a giveback by handoff: accept connections on it as an
    /// internal address (not answered in ARP) until it is activated here.
    Standby {
        /// The DVIPA.
        addr: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Remove from the steering map and the home list, at once.
    Deactivate {
        /// The address no longer held here.
        addr: Ipv4Addr,
        /// What to do with its connections.
        connections: ConnectionFate,
        /// Why, for the stack's log.
        why: &'static str,
    },
}

/// What happens to the connections on an address that leaves this stack (the cluster's side
/// of `stack::iface::Departure`, mapped onto it by the poll loop;
/// `coupling` depends on no other crate of the workspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionFate {
    /// Reset them (operator delete, a command moving the address).
    Reset,
    /// Forget them silently (fenced, or the address was taken away).
    Silent,
}

/// Why [`Node::join`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The cluster config has no stack of this name.
    UnknownStack(String),
    /// The region is mapped read-only.
    ReadOnly,
    /// Another live process runs this stack.
    AlreadyRunning {
        /// The stack's name.
        name: String,
        /// The process that holds its member slot with an unexpired lease.
        pid: u32,
    },
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::UnknownStack(n) => write!(f, "stack {n:?} is not in the cluster config"),
            JoinError::ReadOnly => write!(f, "the coupling region is mapped read-only"),
            JoinError::AlreadyRunning { name, pid } => write!(f, "stack {name:?} is already running (pid {pid}, lease not expired)"),
        }
    }
}

impl std::error::Error for JoinError {}

/// Why an application's bind could not activate an address (`EADDRNOTAVAIL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// Outside every VIPA range this stack may activate.
    NotInRange(Ipv4Addr),
    /// Active on another live stack.
    InUse {
        /// The address asked for.
        addr: Ipv4Addr,
        /// The name of the stack holding it.
        stack: String,
    },
    /// The range table is full.
    TableFull,
    /// This stack is fenced (its lease lapsed): it may not take addresses now.
    Fenced,
    /// This stack left the cluster (its coupling region went bad): it runs alone.
    Detached,
    /// The address's row in the region is unreadable (a named reason); the stacks repair it.
    Corrupt(Invalid),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::NotInRange(a) => write!(f, "{a} is outside every VIPA range of this stack"),
            BindError::InUse { addr, stack } => write!(f, "{addr} is active on stack {stack}"),
            BindError::TableFull => write!(f, "the range DVIPA table is full"),
            BindError::Fenced => write!(f, "this stack's lease lapsed; it is rejoining"),
            BindError::Detached => write!(f, "this stack left the cluster (its coupling region went bad)"),
            BindError::Corrupt(r) => write!(f, "the address's row in the coupling region is unreadable ({r})"),
        }
    }
}

impl std::error::Error for BindError {}

/// Who this stack is, published in its member slot (name, address and lease come from the
/// config).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// This process's id: other members watch it (pidfd) to declare the stack failed when it
    /// exits, and a join refuses a slot whose live holder has another pid.
    pub pid: u32,
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// The interface's index.
    pub ifindex: u32,
}

/// Counters of one node, since it was created (across rejoins). Only the node writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Calls of [`Node::tick`] (including those after the node detached).
    pub ticks: u64,
    /// Configured DVIPAs this node took over from a failed stack.
    pub takeovers: u64,
    /// Addresses this node handed back to their primary (the owner word CAS won).
    pub givebacks: u64,
    /// Givebacks this node delayed because it had connections on the address.
    pub delayed_givebacks: u64,
    /// Members this node declared failed (lease expired, process gone, or row unreadable for
    /// a lease), counting only the declarations whose CAS won.
    pub declared_failed: u64,
    /// Times this node found itself declared failed when it renewed its lease (it dropped every
    /// address and rejoined with a new incarnation).
    pub fenced: u64,
    /// Messages read from the rings (valid or not).
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Messages not sent because the receiver's ring was full.
    pub messages_dropped: u64,
    /// Rows repaired after they failed validation (our own member row, owner words we hold).
    pub repaired: u64,
    /// Configured DVIPAs activated by a backup because their primary never started.
    pub grace_activations: u64,
}

/// What this stack knows of another member, from the rows it validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Validated and up (this stack itself always is).
    Up,
    /// Validated and not up (failed, left, free).
    Down,
    /// Its row failed validation: neither adopted nor counted as failed (a live stack repairs
    /// its own row at its next heartbeat; after a lease it is declared failed).
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct Local {
    row: RowRef,
    prefix: u8,
}

/// A release in progress: deactivated locally last tick; complete the CAS now.
#[derive(Debug, Clone, Copy)]
struct Release {
    row: RowRef,
    /// The raw owner word the release was decided from.
    expect: u64,
    next: OwnerWord,
    /// A giveback to the primary (counted), or a command move.
    giveback: bool,
}

/// One stack's member of the cluster: its slot and incarnation, its lease, the DVIPAs it holds
/// and what it has seen of the others. Created by [`Node::join`]; driven by [`Node::tick`].
/// Owned by the stack's poll thread (one node per stack process).
#[derive(Debug)]
pub struct Node {
    region: Arc<Region>,
    cfg: Arc<ClusterConfig>,
    slot: usize,
    ident: Identity,
    incarnation: u64,
    /// The member word as we last wrote it (renewal CASes from it).
    word: MemberWord,
    /// Our lease runs until this (CLOCK_MONOTONIC ns); 0 while fenced.
    lease_until: u64,
    local: BTreeMap<Ipv4Addr, Local>,
    releasing: Vec<Release>,
    /// The node's counters.
    pub stats: NodeStats,
    /// Rows ignored, per reason.
    pub invalid: InvalidCounts,
    /// What happened to rows this tick (ignored, repaired), for the stack's log; drained by
    /// [`Node::take_events`], bounded.
    events: Vec<String>,
    /// Liveness of every member, from this tick's validated rows.
    live: [Live; MAX_STACKS],
    /// Last valid row of each member and when it was seen.
    seen_members: [Option<(MemberSeen, u64)>; MAX_STACKS],
    /// Since when a member row without a valid past has failed validation.
    unknown_since: [u64; MAX_STACKS],
    /// Last valid owner word of each row.
    seen_words: BTreeMap<RowRef, OwnerWord>,
    /// Since when a row never seen valid has failed validation.
    row_unknown_since: BTreeMap<RowRef, u64>,
    /// Since when a configured DVIPA has been inactive with its primary down (grace timer).
    absent_since: BTreeMap<usize, u64>,
    /// A command is moving an address here: tick every turn until it arrives.
    moving_in: bool,
    /// Since when a command has been moving an address away from here (we keep serving it
    /// until the new owner says it is watching, or a lease passes).
    moving_out_since: BTreeMap<RowRef, u64>,
    /// Range rows found invalid (row, address): counted once each.
    bad_ranges: BTreeMap<usize, u32>,
    /// The region went bad: this stack left the cluster and runs alone.
    detached: Option<RegionFault>,
    /// Distributor messages read from the rings, for [`Node::take_dist_mail`].
    dist_mail: Vec<Message>,
    /// Handoff messages read from the rings, for [`Node::take_handoff_mail`].
    handoff_mail: Vec<Message>,
    /// Configured DVIPAs this primary stands by for (a giveback by handoff is under way), and
    /// those not yet told to the stack ([`Action::Standby`]).
    standby: Vec<(Ipv4Addr, u8)>,
    standby_new: Vec<(Ipv4Addr, u8)>,
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

impl Node {
    /// Join the cluster as stack `name`: take its member slot with a new incarnation and
    /// publish its roles for every configured DVIPA.
    pub fn join(region: Arc<Region>, cfg: Arc<ClusterConfig>, name: &str, ident: Identity, now: u64) -> Result<Node, JoinError> {
        let slot = cfg.slot(name).ok_or_else(|| JoinError::UnknownStack(name.to_string()))?;
        if !region.writable() {
            return Err(JoinError::ReadOnly);
        }
        let mut node = Node {
            region,
            cfg,
            slot,
            ident,
            incarnation: 0,
            word: MemberWord { state: MemberState::Free, inc: 0, heartbeat_ms: 0 },
            lease_until: 0,
            local: BTreeMap::new(),
            releasing: Vec::new(),
            stats: NodeStats::default(),
            invalid: InvalidCounts::default(),
            events: Vec::new(),
            live: [Live::Down; MAX_STACKS],
            seen_members: [None; MAX_STACKS],
            unknown_since: [0; MAX_STACKS],
            seen_words: BTreeMap::new(),
            row_unknown_since: BTreeMap::new(),
            absent_since: BTreeMap::new(),
            moving_in: false,
            moving_out_since: BTreeMap::new(),
            bad_ranges: BTreeMap::new(),
            detached: None,
            dist_mail: Vec::new(),
            handoff_mail: Vec::new(),
            standby: Vec::new(),
            standby_new: Vec::new(),
        };
        node.enter(now)?;
        Ok(node)
    }

    fn enter(&mut self, now: u64) -> Result<(), JoinError> {
        let region = self.region.clone();
        let cfg = self.cfg.clone();
        let row = &region.members()[self.slot];
        let def = &cfg.stacks[self.slot];
        loop {
            let cur = row.word.load(Ordering::Acquire);
            // Only a row that validates counts: garbage neither refuses the start nor lends
            // us its incarnation.
            let valid = match check::member(&region, &self.cfg, self.slot, now) {
                Ok(s) => Some(s),
                Err(r) => {
                    self.ignored(r, format!("own member row (slot {}) at join", self.slot));
                    None
                }
            };
            if let Some(s) = valid {
                if s.word.state == MemberState::Up && s.pid != self.ident.pid && ms(now) < s.word.heartbeat_ms + self.cfg.lease_ms {
                    return Err(JoinError::AlreadyRunning { name: def.name.clone(), pid: s.pid });
                }
            }
            let inc = match (self.incarnation, valid) {
                (0, Some(s)) => s.incarnation + 1,
                (0, None) => ms(now).max(1),
                (mine, Some(s)) => mine.max(s.incarnation) + 1,
                (mine, None) => mine + 1,
            };
            // Identity and roles first; the CAS (Release) publishes them with the Up state.
            self.publish_identity(inc, now);
            row.joined_ns.store(now, Ordering::Relaxed);
            let seq = region.header().join_seq.fetch_add(1, Ordering::AcqRel) + 1;
            row.join_seq.store(seq, Ordering::Relaxed);
            self.publish_roles();
            let next = MemberWord { state: MemberState::Up, inc: inc as u16, heartbeat_ms: ms(now) };
            if row.word.compare_exchange(cur, next.pack(), Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.incarnation = inc;
                self.word = next;
                self.lease_until = now + self.cfg.lease_ms * 1_000_000;
                break;
            }
        }
        // Our predecessor's mail is not ours.
        for from in 0..MAX_STACKS {
            if let Some(r) = region.ring(from, self.slot) {
                Consumer::new(r).skip_all();
            }
        }
        // A primary's return brings back what the operator deleted while it was away.
        for (i, d) in self.cfg.dvipas.iter().enumerate() {
            if d.primary == self.slot {
                let row = &region.dvipas()[i];
                let cur = row.owner.load(Ordering::Acquire);
                let Ok(w) = check::owner_word(&self.cfg, true, cur) else { continue };
                if w.state == DvipaState::Deleted {
                    let next = w.next(NO_SLOT, w.prev, DvipaState::Inactive, Origin::None);
                    let _ = row.owner.compare_exchange(cur, next.pack(), Ordering::AcqRel, Ordering::Acquire);
                }
            }
        }
        Ok(())
    }

    /// Write this stack's identity into its member row (before the CAS that publishes it).
    fn publish_identity(&self, inc: u64, now: u64) {
        let row = &self.region.members()[self.slot];
        let def = &self.cfg.stacks[self.slot];
        row.incarnation.store(inc, Ordering::Relaxed);
        row.pid.store(self.ident.pid, Ordering::Relaxed);
        row.ifindex.store(self.ident.ifindex, Ordering::Relaxed);
        let mut mac = [0u8; 8];
        mac[..6].copy_from_slice(&self.ident.mac);
        row.mac.store(u64::from_le_bytes(mac), Ordering::Relaxed);
        row.lease_ms.store(self.cfg.lease_ms, Ordering::Relaxed);
        row.addr.store(u32::from(def.addr), Ordering::Relaxed);
        row.queues.store(def.queues, Ordering::Relaxed);
        row.failed_ns.store(0, Ordering::Relaxed);
        for (w, v) in row.name.iter().zip(pack_name::<4>(&def.name)) {
            w.store(v, Ordering::Relaxed);
        }
        for (w, v) in row.iface.iter().zip(pack_name::<2>(&def.interface)) {
            w.store(v, Ordering::Relaxed);
        }
        let seq = row.join_seq.load(Ordering::Relaxed);
        if seq == 0 || seq > self.region.header().join_seq.load(Ordering::Acquire) {
            row.join_seq.store(self.region.header().join_seq.fetch_add(1, Ordering::AcqRel) + 1, Ordering::Relaxed);
        }
        let _ = now;
    }

    fn publish_roles(&self) {
        for (i, d) in self.cfg.dvipas.iter().enumerate() {
            let row = &self.region.dvipas()[i];
            row.addr.store(u32::from(d.addr), Ordering::Relaxed);
            row.prefix.store(d.prefix as u32 | 1 << 8, Ordering::Relaxed);
            row.roles[self.slot].store(d.role_of(self.slot), Ordering::Release);
        }
    }

    /// This stack's member slot (its index in the cluster config).
    pub fn slot(&self) -> usize {
        self.slot
    }
    /// This stack's name in the cluster config.
    pub fn name(&self) -> &str {
        &self.cfg.stacks[self.slot].name
    }
    /// The current incarnation (new at every join and rejoin after fencing).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    /// The cluster config the node was joined with.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }
    /// The region the node was joined to (the node reads it no more once it has detached).
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }
    /// Why this stack left the cluster, if its region went bad.
    pub fn detached(&self) -> Option<&RegionFault> {
        self.detached.as_ref()
    }
    /// Tick again at the next turn, not a heartbeat later: a command is moving an address to
    /// this stack (so it is unanswered for no longer than it takes to see it), or this stack
    /// let an address go and hands its word over once it has left the steering map.
    pub fn awaiting_move(&self) -> bool {
        self.moving_in || !self.releasing.is_empty()
    }
    /// What happened to rows since the last call (for the stack's log).
    pub fn take_events(&mut self) -> Vec<String> {
        std::mem::take(&mut self.events)
    }
    /// The liveness of member `slot` as of the last tick.
    pub fn live(&self, slot: usize) -> Live {
        self.live.get(slot).copied().unwrap_or(Live::Down)
    }

    fn ignored(&mut self, r: Invalid, what: String) {
        self.invalid.add(r);
        if self.events.len() < 32 {
            self.events.push(format!("ignored {what}: {r} ({} so far)", self.invalid.get(r)));
        }
    }

    fn event(&mut self, what: String) {
        if self.events.len() < 32 {
            self.events.push(what);
        }
    }

    /// The stack has announced `addr` (its gratuitous ARP went out): mark the row so
    /// `plex ctl dvipa activate` can return.
    pub fn announced(&mut self, addr: Ipv4Addr) {
        if self.detached.is_some() {
            return;
        }
        let Some(l) = self.local.get(&addr).copied() else { return };
        let row = self.row(l.row);
        let Ok(w) = check::owner_word(&self.cfg, matches!(l.row, RowRef::Config(_)), row.owner.load(Ordering::Acquire)) else { return };
        if w.owner == self.slot as u8 && w.held() {
            row.announced.store(announced_mark(w.owner, w.generation), Ordering::Release);
        }
    }

    /// Addresses active here, with their prefix lengths.
    pub fn active(&self) -> impl Iterator<Item = (Ipv4Addr, u8)> + '_ {
        self.local.iter().map(|(a, l)| (*a, l.prefix))
    }

    /// May this stack touch the network? False once the lease might have lapsed: the poll loop
    /// then ticks (renews) before handling any frame.
    pub fn lease_valid(&self, now: u64) -> bool {
        now + self.cfg.heartbeat_ms * 1_000_000 < self.lease_until
    }

    /// Until when (CLOCK_MONOTONIC ns) [`Node::lease_valid`] holds without a tick.
    pub fn lease_valid_until(&self) -> u64 {
        self.lease_until.saturating_sub(self.cfg.heartbeat_ms * 1_000_000)
    }

    /// When the next tick is due at the latest.
    pub fn heartbeat_ns(&self) -> u64 {
        self.cfg.heartbeat_ms * 1_000_000
    }

    fn row(&self, r: RowRef) -> &DvipaRow {
        r.of(&self.region)
    }

    fn is_up(&self, slot: u8) -> bool {
        self.live(slot as usize) == Live::Up
    }
    fn is_down(&self, slot: u8) -> bool {
        self.live(slot as usize) == Live::Down
    }

    /// One step of the protocol. `conns(addr)` counts the stack's connections on `addr`.
    pub fn tick(&mut self, now: u64, conns: &dyn Fn(Ipv4Addr) -> usize, out: &mut Vec<Action>) {
        self.stats.ticks += 1;
        if self.detached.is_some() {
            return;
        }
        // Nothing is read from a region that went bad (truncated, zeroed, overwritten, replaced).
        if let Err(f) = self.region.health() {
            self.detach(f, out);
            return;
        }
        let first = out.len();
        self.moving_in = false;
        if !self.renew(now, out) {
            return;
        }
        self.validate_members(now);
        self.detect_failures(now);
        self.read_mail();
        for (addr, prefix) in self.standby_new.drain(..) {
            out.push(Action::Standby { addr, prefix });
        }
        self.complete_releases(now);
        for i in 0..self.cfg.dvipas.len() {
            if let Err(r) = check::configured_row(&self.region, &self.cfg, i) {
                self.ignored(r, format!("DVIPA row {i} ({})", self.cfg.dvipas[i].addr));
                self.repair_configured_row(i);
            }
            self.step_row(now, RowRef::Config(i), conns, out);
        }
        for i in 0..MAX_RANGE_DVIPAS {
            if self.region.range_dvipas()[i].addr.load(Ordering::Acquire) == 0 {
                continue;
            }
            match check::range_row(&self.region, &self.cfg, i) {
                Ok(_) => self.step_row(now, RowRef::Range(i), conns, out),
                Err(r) => {
                    // A row we serve from keeps being served (its word decides); others are
                    // ignored, never activated.
                    if self.local.values().any(|l| l.row == RowRef::Range(i)) {
                        self.step_row(now, RowRef::Range(i), conns, out);
                    } else {
                        let a = self.region.range_dvipas()[i].addr.load(Ordering::Relaxed);
                        if self.bad_ranges.insert(i, a) != Some(a) {
                            self.ignored(r, format!("range row {i} (address {})", Ipv4Addr::from(a)));
                        }
                    }
                }
            }
        }
        self.region.members()[self.slot].ignored.store(self.invalid.total(), Ordering::Relaxed);
        // An access that faulted during this tick (the guard replaced the mapping by zeros)
        // voids what the tick decided from it.
        if let Err(f) = self.region.health() {
            let mut i = first;
            while i < out.len() {
                if let Action::Activate { addr, .. } = out[i] {
                    self.local.remove(&addr);
                    out.remove(i);
                } else {
                    i += 1;
                }
            }
            self.detach(f, out);
        }
    }

    /// Leave the cluster because its region went bad: drop every DVIPA (silently: another
    /// stack may hold it by now) and never read the region again. The stack keeps its own
    /// address.
    fn detach(&mut self, f: RegionFault, out: &mut Vec<Action>) {
        for (addr, _) in std::mem::take(&mut self.local) {
            out.push(Action::Deactivate { addr, connections: ConnectionFate::Silent, why: "left the cluster: its coupling region went bad" });
        }
        self.releasing.clear();
        // Standalone: no lease to keep.
        self.lease_until = u64::MAX;
        self.detached = Some(f);
    }

    /// Re-publish what the config says about configured row `i` (any stack may: it is the
    /// same config everywhere), keeping a primary's legitimate rank 255.
    fn repair_configured_row(&mut self, i: usize) {
        let (row, d) = (&self.region.dvipas()[i], &self.cfg.dvipas[i]);
        row.addr.store(u32::from(d.addr), Ordering::Relaxed);
        row.prefix.store(d.prefix as u32 | 1 << 8, Ordering::Relaxed);
        for (s, role) in row.roles.iter().enumerate() {
            let v = role.load(Ordering::Acquire);
            if v != d.role_of(s) && !(s == d.primary && v == ROLE_GIVEBACK) && !(v == 0 && s != self.slot && s < self.cfg.stacks.len()) {
                role.store(d.role_of(s), Ordering::Release);
            }
        }
        self.stats.repaired += 1;
    }

    /// Validate every member row; members whose rows fail are `Unknown`.
    fn validate_members(&mut self, now: u64) {
        for slot in 0..self.cfg.stacks.len() {
            self.validate_member(slot, now);
        }
    }

    fn validate_member(&mut self, slot: usize, now: u64) {
        let lease = self.cfg.lease_ms * 1_000_000;
        if slot == self.slot {
            self.live[slot] = Live::Up;
            return;
        }
        let checked = check::member(&self.region, &self.cfg, slot, now).and_then(|s| match self.seen_members[slot] {
            Some((last, _)) if s.incarnation < last.incarnation => Err(Invalid::MemberIncarnation),
            _ => Ok(s),
        });
        match checked {
            Ok(s) => {
                self.seen_members[slot] = Some((s, now));
                self.unknown_since[slot] = 0;
                self.live[slot] = if s.word.state == MemberState::Up { Live::Up } else { Live::Down };
            }
            Err(r) => {
                let name = self.cfg.stacks[slot].name.clone();
                self.ignored(r, format!("member row of {name} (slot {slot})"));
                self.live[slot] = Live::Unknown;
                if self.unknown_since[slot] == 0 {
                    self.unknown_since[slot] = now;
                }
                let since = self.seen_members[slot].map_or(self.unknown_since[slot], |(_, at)| at);
                // Unreadable for a whole lease: a live stack would have repaired its row.
                if now.saturating_sub(since) > lease && self.declare_unreadable_failed(slot, now) {
                    self.live[slot] = Live::Down;
                    self.event(format!("member row of {name} unreadable for a lease: declared it failed (rewrote the row as failed)"));
                }
            }
        }
    }

    /// Overwrite an unreadable member row with a valid "failed" row (its last valid identity,
    /// or a fresh one): its stack, if it ever wakes, finds itself fenced.
    fn declare_unreadable_failed(&mut self, slot: usize, now: u64) -> bool {
        let row = &self.region.members()[slot];
        let def = &self.cfg.stacks[slot];
        let last = self.seen_members[slot].map(|(s, _)| s);
        let inc = last.map_or(ms(now).max(1), |s| s.incarnation);
        let cur = row.word.load(Ordering::Acquire);
        row.incarnation.store(inc, Ordering::Relaxed);
        row.pid.store(last.map_or(1, |s| s.pid), Ordering::Relaxed);
        row.lease_ms.store(self.cfg.lease_ms, Ordering::Relaxed);
        row.addr.store(u32::from(def.addr), Ordering::Relaxed);
        row.join_seq.store(last.map_or(1, |s| s.join_seq.max(1)), Ordering::Relaxed);
        for (w, v) in row.name.iter().zip(pack_name::<4>(&def.name)) {
            w.store(v, Ordering::Relaxed);
        }
        let next = MemberWord { state: MemberState::Failed, inc: inc as u16, heartbeat_ms: last.map_or(ms(now), |s| s.word.heartbeat_ms).min(ms(now)) };
        self.cas_failed(slot, cur, next, now)
    }

    /// Renew the lease; on failure (declared failed while stalled) drop everything and rejoin.
    fn renew(&mut self, now: u64, out: &mut Vec<Action>) -> bool {
        let region = self.region.clone();
        let row = &region.members()[self.slot];
        let next = MemberWord { heartbeat_ms: ms(now).max(self.word.heartbeat_ms), ..self.word };
        match row.word.compare_exchange(self.word.pack(), next.pack(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                self.word = next;
                self.lease_until = now + self.cfg.lease_ms * 1_000_000;
                true
            }
            Err(actual) => {
                let a = MemberWord::unpack(actual);
                // A failure declaration: "failed" with our incarnation (the heartbeat may be an
                // older one of ours when it was declared over an unreadable row).
                let fenced = actual as u8 == MemberState::Failed as u8
                    && a.inc == self.word.inc
                    && a.heartbeat_ms <= self.word.heartbeat_ms
                    && row.incarnation.load(Ordering::Relaxed) == self.incarnation;
                if !fenced {
                    // Not a failure declaration: our own row was overwritten. Nobody takes
                    // anything from a member whose row does not validate, so repair it and
                    // carry on (never adopt what we found).
                    let r = check::member(&self.region, &self.cfg, self.slot, now).err().unwrap_or(Invalid::MemberState);
                    self.ignored(r, format!("own member row (slot {}), found {actual:#018x}", self.slot));
                    self.publish_identity(self.incarnation, now);
                    if row.word.compare_exchange(actual, next.pack(), Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        self.stats.repaired += 1;
                        self.event(format!("repaired own member row (incarnation {} kept)", self.incarnation));
                        self.word = next;
                        self.lease_until = now + self.cfg.lease_ms * 1_000_000;
                        return true;
                    }
                    return false;
                }
                self.stats.fenced += 1;
                self.lease_until = 0;
                for (addr, _) in std::mem::take(&mut self.local) {
                    out.push(Action::Deactivate { addr, connections: ConnectionFate::Silent, why: "fenced: this stack was declared failed" });
                }
                self.releasing.clear();
                self.dist_mail.clear();
                self.handoff_mail.clear();
                // A new incarnation; if another process has taken the name meanwhile, stay out.
                let _ = self.enter(now);
                false
            }
        }
    }

    /// Declare members whose lease expired failed.
    fn detect_failures(&mut self, now: u64) {
        for slot in 0..self.cfg.stacks.len() {
            if slot == self.slot {
                continue;
            }
            // Only rows that validated this tick (`Up`), with the config's lease.
            let Some((s, _)) = self.seen_members[slot].filter(|_| self.live[slot] == Live::Up) else { continue };
            if ms(now) > s.word.heartbeat_ms + self.cfg.lease_ms && self.fail(slot, s.word.pack(), now) {
                self.live[slot] = Live::Down;
            }
        }
    }

    fn fail(&mut self, slot: usize, cur: u64, now: u64) -> bool {
        let next = MemberWord { state: MemberState::Failed, ..MemberWord::unpack(cur) };
        self.cas_failed(slot, cur, next, now)
    }

    /// Declare `slot` failed: one CAS from the word read (`cur`) to `next`, with the failure
    /// time and the counter when it wins.
    fn cas_failed(&mut self, slot: usize, cur: u64, next: MemberWord, now: u64) -> bool {
        let row = &self.region.members()[slot];
        if row.word.compare_exchange(cur, next.pack(), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            row.failed_ns.store(now, Ordering::Relaxed);
            self.stats.declared_failed += 1;
            true
        } else {
            false
        }
    }

    /// The process of member `slot`, incarnation `incarnation`, is gone (its pidfd fired):
    /// declare it failed without waiting for its lease. Returns whether this call did.
    pub fn declare_failed(&mut self, now: u64, slot: usize, incarnation: u64) -> bool {
        if slot >= MAX_STACKS || slot == self.slot {
            return false;
        }
        if slot >= self.cfg.stacks.len() {
            return false;
        }
        let Ok(s) = check::member(&self.region, &self.cfg, slot, now) else { return false };
        if s.word.state != MemberState::Up || s.incarnation != incarnation {
            return false;
        }
        let ok = self.fail(slot, s.word.pack(), now);
        if ok {
            self.live[slot] = Live::Down;
        }
        ok
    }

    /// Read the rings now, between ticks (the distributor's messages wait for no heartbeat):
    /// the node's own messages are handled, the distributor's queued for
    /// [`Node::take_dist_mail`]. Bounded (a ring's worth per sender).
    pub fn poll_mail(&mut self) {
        if self.detached.is_some() || self.lease_until == 0 {
            return;
        }
        self.read_mail();
    }

    /// The distributor's messages read so far (kinds 16..=31), oldest first.
    pub fn take_dist_mail(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.dist_mail)
    }

    /// Connection handoff's messages read so far (kinds 32..=39), oldest first. At most
    /// [`RING_SLOTS`] * [`MAX_STACKS`] are held: past that they are dropped (counted in
    /// [`NodeStats::messages_dropped`]), which handoff survives (they only wake it sooner; the
    /// slots decide and are scanned at every heartbeat), so a stack that runs no handoff never
    /// stops reading its rings for them.
    pub fn take_handoff_mail(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.handoff_mail)
    }

    fn read_mail(&mut self) {
        // Called every poll-loop turn (twice: the distributor's and handoff's poll), so an empty
        // ring costs one look at its indices: the ring is borrowed afresh for each message
        // rather than through a clone of the region's `Arc` (two locked atomics per ring per
        // call, which were a fifth of an idle router's turn).
        for from in 0..self.cfg.stacks.len() {
            // Bounded: at most one ring's worth per tick.
            for _ in 0..RING_SLOTS {
                if self.dist_mail.len() >= DIST_MAIL_CAP {
                    // The distributor is behind: leave the rest in the rings.
                    return;
                }
                let Some(m) = self.region.ring(from, self.slot).and_then(|r| Consumer::new(r).pop()) else { break };
                self.stats.messages_in += 1;
                self.handle_message(&m);
            }
        }
    }

    fn handle_message(&mut self, m: &Message) {
        if (msg::DIST_FIRST..=msg::DIST_LAST).contains(&m.kind) {
            self.dist_mail.push(*m);
            return;
        }
        if (msg::HANDOFF_FIRST..=msg::HANDOFF_LAST).contains(&m.kind) {
            if self.handoff_mail.len() < RING_SLOTS * MAX_STACKS {
                self.handoff_mail.push(*m);
            } else {
                self.stats.messages_dropped += 1;
            }
            return;
        }
        let i = m.payload[0] as usize;
        let from_ok = (m.from_slot as usize) < self.cfg.stacks.len() && m.from_slot as usize != self.slot;
        match (m.kind, self.cfg.dvipas.get(i)) {
            (msg::DELAYED_GIVEBACK, Some(d)) if from_ok && d.primary == self.slot => {
                // Re-register at the top of the chain until the holder lets go.
                self.region.dvipas()[i].roles[self.slot].store(ROLE_GIVEBACK, Ordering::Release);
                if d.giveback == crate::config::Giveback::Handoff && !self.standby.contains(&(d.addr, d.prefix)) {
                    // The holder moves its connections here: take them on the address before
                    // it is ours.
                    self.standby.push((d.addr, d.prefix));
                    self.standby_new.push((d.addr, d.prefix));
                }
            }
            _ => self.ignored(Invalid::Message, format!("message kind {} from slot {}", m.kind, m.from_slot)),
        }
    }

    fn send(&mut self, to: usize, kind: u16, payload0: u64) {
        let Some(ring) = self.region.ring(self.slot, to) else { return };
        let m = Message { kind, from_slot: self.slot as u8, from_incarnation: self.incarnation as u32, payload: [payload0, 0, 0, 0, 0, 0, 0] };
        if Producer::new(ring).push(&m).is_ok() {
            self.stats.messages_out += 1;
        } else {
            self.stats.messages_dropped += 1;
        }
    }

    fn complete_releases(&mut self, now: u64) {
        for r in std::mem::take(&mut self.releasing) {
            // If the CAS fails the word changed under us (the primary died, an operator
            // deleted it...): the next step sees the new word and acts on it. On success the
            // primary activates when its own tick sees itself as owner.
            if self.cas(r.row, r.expect, r.next, now) {
                if r.giveback {
                    self.stats.givebacks += 1;
                }
                self.moving_out_since.remove(&r.row);
            }
        }
    }

    /// CAS the owner word of `r` from the raw value read this step (`cur`: which may be a
    /// word that failed validation, being replaced) to `next`.
    fn cas(&mut self, r: RowRef, cur: u64, next: OwnerWord, now: u64) -> bool {
        let row = r.of(&self.region);
        let ok = row.owner.compare_exchange(cur, next.pack(), Ordering::AcqRel, Ordering::Acquire).is_ok();
        if ok {
            row.changed_ns.store(now, Ordering::Relaxed);
            row.moves.fetch_add(1, Ordering::Relaxed);
            self.seen_words.insert(r, next);
        }
        ok
    }

    fn activate_local(&mut self, r: RowRef, addr: Ipv4Addr, prefix: u8, out: &mut Vec<Action>, why: &'static str) {
        self.standby.retain(|s| s.0 != addr);
        if self.local.insert(addr, Local { row: r, prefix }).is_none() {
            out.push(Action::Activate { addr, prefix, why });
        }
    }

    fn deactivate_local(&mut self, addr: Ipv4Addr, connections: ConnectionFate, out: &mut Vec<Action>, why: &'static str) {
        if self.local.remove(&addr).is_some() {
            out.push(Action::Deactivate { addr, connections, why });
        }
    }

    /// The owner word of `r`, validated: `(raw, word)`. A word that fails validation is never
    /// adopted: the step goes on from the last valid word this stack saw (and CASes from the
    /// raw value, so whoever acts replaces the garbage); the stack that held the address by
    /// that word repairs it at once; a row never seen valid is reset by its primary after a
    /// lease. `None`: skip the row this tick.
    fn owner_of(&mut self, now: u64, r: RowRef) -> Option<(u64, OwnerWord)> {
        let configured = matches!(r, RowRef::Config(_));
        let raw = r.of(&self.region).owner.load(Ordering::Acquire);
        let checked = check::owner_word(&self.cfg, configured, raw).and_then(|w| match self.seen_words.get(&r) {
            Some(last) if check::generation_back(last.generation, w.generation) => Err(Invalid::OwnerGeneration),
            _ => Ok(w),
        });
        match checked {
            Ok(w) => {
                self.seen_words.insert(r, w);
                self.row_unknown_since.remove(&r);
                Some((raw, w))
            }
            Err(reason) => {
                self.ignored(reason, format!("owner word of {r:?}: {raw:#018x}"));
                let me = self.slot as u8;
                match self.seen_words.get(&r).copied() {
                    Some(last) => {
                        // Held: its holder repairs it. Not held: a configured row's primary, and
                        // any stack for a range row (nobody answers for it; one CAS wins).
                        let responsible = if last.held() {
                            last.owner == me
                        } else {
                            match r {
                                RowRef::Config(i) => self.cfg.dvipas[i].primary == self.slot,
                                RowRef::Range(_) => true,
                            }
                        };
                        if responsible {
                            let fixed = OwnerWord { generation: last.generation.wrapping_add(1), ..last };
                            if self.cas(r, raw, fixed, now) {
                                self.stats.repaired += 1;
                                self.event(format!("repaired the owner word of {r:?} from the last valid one ({})", last.state.name()));
                                return Some((fixed.pack(), fixed));
                            }
                            return None;
                        }
                        Some((raw, last))
                    }
                    None => {
                        let since = *self.row_unknown_since.entry(r).or_insert(now);
                        let primary = match r {
                            RowRef::Config(i) => self.cfg.dvipas[i].primary == self.slot,
                            RowRef::Range(_) => true,
                        };
                        if primary && now.saturating_sub(since) > self.cfg.lease_ms * 1_000_000 {
                            // Nobody who held it repaired it within a lease: start it afresh.
                            let fresh = OwnerWord { generation: (raw >> 32) as u32 ^ 0x8000_0000, ..OwnerWord::EMPTY };
                            if self.cas(r, raw, fresh, now) {
                                self.stats.repaired += 1;
                                self.event(format!("reset the unreadable owner word of {r:?} (no stack repaired it within a lease)"));
                                return Some((fresh.pack(), fresh));
                            }
                        }
                        None
                    }
                }
            }
        }
    }

    fn step_row(&mut self, now: u64, r: RowRef, conns: &dyn Fn(Ipv4Addr) -> usize, out: &mut Vec<Action>) {
        if self.releasing.iter().any(|x| x.row == r) {
            return;
        }
        let me = self.slot as u8;
        let def = match r {
            RowRef::Config(i) => self.cfg.dvipas.get(i).cloned(),
            RowRef::Range(_) => None,
        };
        // The address comes from the config (configured rows) or from the validated row.
        let (addr, prefix) = match (&def, r) {
            (Some(d), _) => (d.addr, d.prefix),
            (None, RowRef::Range(i)) => match check::range_row(&self.region, &self.cfg, i) {
                Ok(a) => a,
                Err(_) => match self.local.iter().find(|(_, l)| l.row == r) {
                    Some((a, l)) => (*a, l.prefix),
                    None => return,
                },
            },
            (None, RowRef::Config(_)) => return,
        };
        let Some((raw, w)) = self.owner_of(now, r) else { return };
        let is_local = self.local.get(&addr).is_some_and(|l| l.row == r);
        // A command moves it away from here: keep answering until the new owner says it is
        // watching (it then picks the address up at its next turn), or a lease has passed.
        let moving_out = w.state == DvipaState::Moving && w.prev == me && w.owner != me;
        let let_go = moving_out && {
            let since = *self.moving_out_since.entry(r).or_insert(now);
            !is_local
                || self.row(r).announced.load(Ordering::Acquire) == ready_mark(w.owner, w.generation)
                || now.saturating_sub(since) >= self.cfg.lease_ms * 1_000_000
        };
        if !moving_out {
            self.moving_out_since.remove(&r);
        }

        // Lost it: moved away by a command, deleted, taken while we were fenced.
        if is_local && !(w.owner == me && matches!(w.state, DvipaState::Active | DvipaState::DelayedGiveback)) && (!moving_out || let_go) {
            let (dep, why) = match w.state {
                DvipaState::Deleted => (ConnectionFate::Reset, "deleted by the operator"),
                DvipaState::Moving if w.prev == me => (ConnectionFate::Reset, "moved to another stack by command"),
                _ => (ConnectionFate::Silent, "owned by another stack"),
            };
            self.deactivate_local(addr, dep, out, why);
        }

        match w.state {
            DvipaState::Inactive => {
                let Some(d) = &def else { return };
                let RowRef::Config(i) = r else { return };
                if d.primary == self.slot {
                    let next = w.next(me, w.owner, DvipaState::Active, Origin::Config);
                    if self.cas(r, raw, next, now) {
                        self.activate_local(r, addr, prefix, out, "primary started");
                    }
                    return;
                }
                // A backup activates a DVIPA whose primary has not started only after the
                // configured grace (`primary_grace_ms`: a cluster started in any order does not
                // move an address it would give back a moment later), and only the first live
                // stack of its hierarchy.
                let Some(grace) = self.cfg.primary_grace_ms else { return };
                if !self.is_down(d.primary as u8) {
                    self.absent_since.remove(&i);
                    return;
                }
                let since = *self.absent_since.entry(i).or_insert(now);
                if now.saturating_sub(since) < grace * 1_000_000 {
                    return;
                }
                let h = self.hierarchy_of(i, None);
                if h.first() == Some(&me) {
                    let next = w.next(me, w.owner, DvipaState::Active, Origin::Config);
                    if self.cas(r, raw, next, now) {
                        self.absent_since.remove(&i);
                        self.stats.grace_activations += 1;
                        self.activate_local(r, addr, prefix, out, "its primary has not started within the grace period");
                    }
                }
            }
            DvipaState::Active | DvipaState::DelayedGiveback if w.owner == me => {
                let why = match w.origin {
                    Origin::Command => "activated by command",
                    _ if w.prev != me && w.prev != NO_SLOT => "given back by its holder",
                    _ => "owned here",
                };
                self.activate_local(r, addr, prefix, out, why);
                let n = conns(addr);
                self.row(r).conns.store(n as u32, Ordering::Relaxed);
                let Some(d) = def else { return };
                if d.primary == self.slot {
                    // Back home: stop waiting at rank 255.
                    let role = &self.row(r).roles[self.slot];
                    if role.load(Ordering::Relaxed) != ROLE_PRIMARY {
                        role.store(ROLE_PRIMARY, Ordering::Release);
                    }
                    return;
                }
                let RowRef::Config(i) = r else { return };
                let p = d.primary as u8;
                let primary_role = check::role(&self.region, &self.cfg, i, d.primary);
                // Back, and running: a stack joins before it attaches its interface, so a
                // giveback to a primary that has not ticked yet would leave the address
                // unanswered until it does.
                let primary_ticking = self.seen_members[d.primary].is_some_and(|(s, _)| s.ticking());
                let primary_back = self.is_up(p) && primary_ticking && (primary_role == ROLE_PRIMARY || primary_role == ROLE_GIVEBACK);
                if !primary_back {
                    if w.state == DvipaState::DelayedGiveback && self.is_down(p) {
                        // The primary died while waiting: keep it as an ordinary takeover.
                        let next = w.next(me, w.prev, DvipaState::Active, w.origin);
                        self.cas(r, raw, next, now);
                    }
                    return;
                }
                if n == 0 {
                    // Immediate giveback: leave the steering map first, hand the word over next tick.
                    self.deactivate_local(addr, ConnectionFate::Silent, out, "given back to its primary");
                    self.releasing.push(Release { row: r, expect: raw, next: w.next(p, me, DvipaState::Active, Origin::Config), giveback: true });
                } else {
                    if w.state == DvipaState::Active {
                        let next = w.next(me, w.prev, DvipaState::DelayedGiveback, w.origin);
                        if self.cas(r, raw, next, now) {
                            self.stats.delayed_givebacks += 1;
                            self.send(d.primary, msg::DELAYED_GIVEBACK, i as u64);
                        }
                    }
                    if d.giveback == crate::config::Giveback::Handoff && primary_role == ROLE_GIVEBACK {
                        // The primary stands by for the connections: move them (the address
                        // goes back at the first tick that finds none).
                        out.push(Action::HandBack { addr, to: p });
                    }
                }
            }
            DvipaState::Active | DvipaState::DelayedGiveback => {
                // Nothing is taken from a stack before it is declared failed (validated down).
                if !self.is_down(w.owner) {
                    return;
                }
                match r {
                    // Takeover: only the first live stack of the hierarchy.
                    RowRef::Config(i) => {
                        let h = self.hierarchy_of(i, Some(w));
                        if h.first() == Some(&me) {
                            let next = w.next(me, w.owner, DvipaState::Active, Origin::Config);
                            if self.cas(r, raw, next, now) {
                                self.stats.takeovers += 1;
                                self.activate_local(r, addr, prefix, out, "took over from a failed stack");
                            }
                        }
                    }
                    // A range address is not moved: it belongs to the application that bound it
                    // on the failed stack, so its bind status is cleared (inactive) and the next
                    // bind inside the range activates it again.
                    RowRef::Range(_) => {
                        let next = w.next(NO_SLOT, w.owner, DvipaState::Inactive, Origin::None);
                        if self.cas(r, raw, next, now) {
                            self.row(r).conns.store(0, Ordering::Relaxed);
                        }
                    }
                }
            }
            DvipaState::Moving => {
                if w.prev == me {
                    if !let_go {
                        return;
                    }
                    // We let go (deactivated above). The word moves on only once the address
                    // has left our steering map: at our next turn (see `awaiting_move`).
                    let next = w.next(w.owner, me, DvipaState::Active, w.origin);
                    if is_local {
                        self.releasing.push(Release { row: r, expect: raw, next, giveback: false });
                    } else if self.cas(r, raw, next, now) {
                        self.moving_out_since.remove(&r);
                    }
                } else if w.owner == me {
                    if self.is_down(w.prev) {
                        let next = w.next(me, w.prev, DvipaState::Active, w.origin);
                        if self.cas(r, raw, next, now) {
                            self.activate_local(r, addr, prefix, out, "activated by command");
                        }
                    } else {
                        // Coming here: look again at every turn, not a heartbeat later, and
                        // tell the holder it may let go.
                        self.moving_in = true;
                        self.row(r).announced.store(ready_mark(me, w.generation), Ordering::Release);
                    }
                }
            }
            DvipaState::Deleted => {}
        }
    }

    /// The takeover order of configured DVIPA `i` as this stack sees it (validated members and
    /// roles); `w`: its owner word, if valid.
    fn hierarchy_of(&self, i: usize, w: Option<OwnerWord>) -> Vec<u8> {
        hierarchy_with(&self.region, &self.cfg, i, w, &|s| self.is_up(s))
    }

    /// An application binds `addr`: activate it here if it lies in one of this stack's VIPA
    /// ranges and no other live stack holds it (a holder whose row shows it failed or left does
    /// not count: the address is taken from it). On success the caller adds the address to the stack
    /// (the returned prefix) and announces it.
    pub fn bind_activate(&mut self, now: u64, addr: Ipv4Addr) -> Result<u8, BindError> {
        if self.detached.is_some() {
            return Err(BindError::Detached);
        }
        if !self.lease_valid(now) {
            return Err(BindError::Fenced);
        }
        let range = self.cfg.range_for(addr).filter(|r| r.stacks.contains(&self.slot)).ok_or(BindError::NotInRange(addr))?;
        let prefix = range.prefix;
        let i = claim_range_row(&self.region, addr, prefix).ok_or(BindError::TableFull)?;
        let r = RowRef::Range(i);
        let me = self.slot as u8;
        loop {
            let raw = self.row(r).owner.load(Ordering::Acquire);
            let w = match check::owner_word(&self.cfg, false, raw) {
                Ok(w) => w,
                Err(reason) => {
                    self.ignored(reason, format!("owner word of {addr} at bind"));
                    return Err(BindError::Corrupt(reason));
                }
            };
            if w.held() && w.owner == me {
                self.local.insert(addr, Local { row: r, prefix });
                return Ok(prefix);
            }
            if w.held() && w.owner != me {
                // Between ticks: look at the holder's row now.
                self.validate_member(w.owner as usize, now);
            }
            if w.held() && !self.is_down(w.owner) {
                return Err(BindError::InUse { addr, stack: self.stack_name(w.owner) });
            }
            let next = w.next(me, w.owner, DvipaState::Active, Origin::Bind);
            if self.cas(r, raw, next, now) {
                self.row(r).activator_pid.store(self.ident.pid as u64, Ordering::Relaxed);
                self.local.insert(addr, Local { row: r, prefix });
                return Ok(prefix);
            }
        }
    }

    fn stack_name(&self, slot: u8) -> String {
        self.cfg.stacks.get(slot as usize).map_or_else(|| format!("#{slot}"), |s| s.name.clone())
    }

    /// Leave the cluster cleanly: range addresses activated here are released, configured
    /// ones are taken over by their backups.
    pub fn leave(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.detached.is_some() || self.region.health().is_err() {
            // Nothing to tell a region we no longer trust.
            for (addr, _) in std::mem::take(&mut self.local) {
                out.push(Action::Deactivate { addr, connections: ConnectionFate::Reset, why: "stack stopping" });
            }
            return;
        }
        for (addr, l) in std::mem::take(&mut self.local) {
            out.push(Action::Deactivate { addr, connections: ConnectionFate::Reset, why: "stack stopping" });
            if let RowRef::Range(_) = l.row {
                let raw = self.row(l.row).owner.load(Ordering::Acquire);
                if let Ok(w) = check::owner_word(&self.cfg, false, raw) {
                    if w.owner == self.slot as u8 && w.held() {
                        let next = w.next(NO_SLOT, w.owner, DvipaState::Inactive, Origin::None);
                        self.cas(l.row, raw, next, now);
                    }
                }
            }
        }
        let row = &self.region.members()[self.slot];
        let next = MemberWord { state: MemberState::Left, ..self.word };
        let _ = row.word.compare_exchange(self.word.pack(), next.pack(), Ordering::AcqRel, Ordering::Acquire);
        self.lease_until = 0;
    }
}

/// The order range rows are probed in for `key` (LAYOUT.md: from `(addr * 0x9e3779b1) >> 24`).
fn probe(key: u32, len: usize) -> impl Iterator<Item = usize> {
    let start = (key.wrapping_mul(0x9e37_79b1) >> 24) as usize % len;
    (0..len).map(move |k| (start + k) % len)
}

/// Find the range row of `addr`, claiming a free one if none (open addressing, linear probe
/// from a hash of the address): `None` when the table is full. Racing claimers of one address
/// probe the same sequence, so they meet on the same row.
pub(crate) fn claim_range_row(region: &Region, addr: Ipv4Addr, prefix: u8) -> Option<usize> {
    let rows = region.range_dvipas();
    let key = u32::from(addr);
    for i in probe(key, rows.len()) {
        match rows[i].addr.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                rows[i].prefix.store(prefix as u32 | 2 << 8, Ordering::Release);
                return Some(i);
            }
            Err(v) if v == key => return Some(i),
            Err(_) => {}
        }
    }
    None
}

/// The range row of `addr`, if one was ever claimed.
pub fn find_range_row(region: &Region, addr: Ipv4Addr) -> Option<usize> {
    let rows = region.range_dvipas();
    let key = u32::from(addr);
    for i in probe(key, rows.len()) {
        match rows[i].addr.load(Ordering::Acquire) {
            0 => return None,
            v if v == key => return Some(i),
            _ => {}
        }
    }
    None
}

/// The live stacks that may hold configured DVIPA `i`, in takeover order: the active owner,
/// then role descending (primary, 255, ranks), then join order, then slot. Every stack computes
/// it from the same rows, so every stack gets the same order. Only rows that validate count:
/// `w` is the DVIPA's validated owner word (None: read and check it here), `up` says which
/// members are (validated) up, and roles that fail validation count as the config's.
pub fn hierarchy_with(region: &Region, cfg: &ClusterConfig, i: usize, w: Option<OwnerWord>, up: &dyn Fn(u8) -> bool) -> Vec<u8> {
    let members = region.members();
    let w = w.or_else(|| check::owner_word(cfg, true, region.dvipas()[i].owner.load(Ordering::Acquire)).ok()).unwrap_or(OwnerWord::EMPTY);
    let mut out = Vec::new();
    if w.held() && up(w.owner) {
        out.push(w.owner);
    }
    let mut rest: Vec<(u16, u64, u8)> = (0..cfg.stacks.len())
        .filter(|&s| s as u8 != w.owner || !w.held())
        .filter(|&s| up(s as u8))
        .filter_map(|s| {
            let role = check::role(region, cfg, i, s);
            (role != 0).then(|| (role, members[s].join_seq.load(Ordering::Relaxed), s as u8))
        })
        .collect();
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    out.extend(rest.into_iter().map(|(_, _, s)| s));
    out
}

/// [`hierarchy_with`] as any observer sees it (`plex ctl`): members up by their rows as they
/// validate now.
pub fn hierarchy(region: &Region, cfg: &ClusterConfig, i: usize, now: u64) -> Vec<u8> {
    hierarchy_with(region, cfg, i, None, &|s| member_up(region, cfg, s, now))
}

#[cfg(test)]
mod tests;
