//! One stack's membership in the cluster and its part of the DVIPA protocol (spec/01).
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

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::ClusterConfig;
use crate::layout::*;
use crate::region::Region;
use crate::ring::{Consumer, Message, Producer};
use crate::words::{MemberWord, OwnerWord};

/// Message kinds on the rings.
pub mod msg {
    /// payload[0] = DVIPA row index: the holder keeps the address until its connections end.
    pub const DELAYED_GIVEBACK: u16 = 1;
}

/// Which table a DVIPA row is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowRef {
    /// A configured DVIPA (index = position in the config).
    Config(usize),
    /// A range DVIPA (index in the open-addressing table).
    Range(usize),
}

impl RowRef {
    pub fn of(self, region: &Region) -> &DvipaRow {
        match self {
            RowRef::Config(i) => &region.dvipas()[i],
            RowRef::Range(i) => &region.range_dvipas()[i],
        }
    }
}

/// Is the member in `slot` up (joined, not failed, not left)?
pub fn member_up(region: &Region, slot: u8) -> bool {
    region
        .members()
        .get(slot as usize)
        .is_some_and(|m| MemberWord::unpack(m.word.load(Ordering::Acquire)).state == MemberState::Up)
}

/// Change a DVIPA's owner word from `cur` to `next` (one CAS), recording when and counting it.
pub fn cas_owner(row: &DvipaRow, cur: OwnerWord, next: OwnerWord, now: u64) -> bool {
    let ok = row.owner.compare_exchange(cur.pack(), next.pack(), Ordering::AcqRel, Ordering::Acquire).is_ok();
    if ok {
        row.changed_ns.store(now, Ordering::Relaxed);
        row.moves.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// What the stack must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add to the home list and the steering map, then announce (gratuitous ARP).
    Activate { addr: Ipv4Addr, prefix: u8, why: &'static str },
    /// Remove from the steering map and the home list, at once.
    Deactivate { addr: Ipv4Addr, connections: Departure, why: &'static str },
}

/// What happens to connections on an address that leaves (mirrors the stack's own enum;
/// `coupling` depends on no other crate of the workspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Reset them (operator delete, a command moving the address).
    Reset,
    /// Forget them silently (fenced, or the address was taken away).
    Silent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    UnknownStack(String),
    ReadOnly,
    /// Another live process runs this stack.
    AlreadyRunning { name: String, pid: u32 },
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
    InUse { addr: Ipv4Addr, stack: String },
    /// The range table is full.
    TableFull,
    /// This stack is fenced (its lease lapsed): it may not take addresses now.
    Fenced,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::NotInRange(a) => write!(f, "{a} is outside every VIPA range of this stack"),
            BindError::InUse { addr, stack } => write!(f, "{addr} is active on stack {stack}"),
            BindError::TableFull => write!(f, "the range DVIPA table is full"),
            BindError::Fenced => write!(f, "this stack's lease lapsed; it is rejoining"),
        }
    }
}

impl std::error::Error for BindError {}

/// Who this stack is, published in its member slot.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub pid: u32,
    pub mac: [u8; 6],
    pub ifindex: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub ticks: u64,
    pub takeovers: u64,
    pub givebacks: u64,
    pub delayed_givebacks: u64,
    pub declared_failed: u64,
    pub fenced: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub messages_dropped: u64,
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
    expect: OwnerWord,
    next: OwnerWord,
}

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
    pub stats: NodeStats,
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
        };
        node.enter(now)?;
        Ok(node)
    }

    fn enter(&mut self, now: u64) -> Result<(), JoinError> {
        let region = self.region.clone();
        let row = &region.members()[self.slot];
        let def = &self.cfg.stacks[self.slot];
        loop {
            let cur = row.word.load(Ordering::Acquire);
            let w = MemberWord::unpack(cur);
            let pid = row.pid.load(Ordering::Relaxed);
            if w.state == MemberState::Up
                && pid != self.ident.pid
                && ms(now) < w.heartbeat_ms + row.lease_ms.load(Ordering::Relaxed)
            {
                return Err(JoinError::AlreadyRunning { name: def.name.clone(), pid });
            }
            let inc = row.incarnation.load(Ordering::Relaxed) + 1;
            // Identity and roles first; the CAS (Release) publishes them with the Up state.
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
            row.joined_ns.store(now, Ordering::Relaxed);
            for (w, v) in row.name.iter().zip(pack_name::<4>(&def.name)) {
                w.store(v, Ordering::Relaxed);
            }
            for (w, v) in row.iface.iter().zip(pack_name::<2>(&def.interface)) {
                w.store(v, Ordering::Relaxed);
            }
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
                let w = OwnerWord::unpack(cur);
                if w.state == DvipaState::Deleted {
                    let next = w.next(NO_SLOT, w.prev, DvipaState::Inactive, Origin::None);
                    let _ = row.owner.compare_exchange(cur, next.pack(), Ordering::AcqRel, Ordering::Acquire);
                }
            }
        }
        Ok(())
    }

    fn publish_roles(&self) {
        for (i, d) in self.cfg.dvipas.iter().enumerate() {
            let row = &self.region.dvipas()[i];
            row.addr.store(u32::from(d.addr), Ordering::Relaxed);
            row.prefix.store(d.prefix as u32 | 1 << 8, Ordering::Relaxed);
            row.roles[self.slot].store(d.role_of(self.slot), Ordering::Release);
        }
    }

    pub fn slot(&self) -> usize {
        self.slot
    }
    pub fn name(&self) -> &str {
        &self.cfg.stacks[self.slot].name
    }
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }
    pub fn region(&self) -> &Arc<Region> {
        &self.region
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
        member_up(&self.region, slot)
    }

    /// One step of the protocol. `conns(addr)` counts the stack's connections on `addr`.
    pub fn tick(&mut self, now: u64, conns: &dyn Fn(Ipv4Addr) -> usize, out: &mut Vec<Action>) {
        self.stats.ticks += 1;
        if !self.renew(now, out) {
            return;
        }
        self.detect_failures(now);
        self.read_mail();
        self.complete_releases(now);
        for i in 0..self.cfg.dvipas.len() {
            self.step_row(now, RowRef::Config(i), conns, out);
        }
        for i in 0..MAX_RANGE_DVIPAS {
            if self.region.range_dvipas()[i].addr.load(Ordering::Acquire) != 0 {
                self.step_row(now, RowRef::Range(i), conns, out);
            }
        }
    }

    /// Renew the lease; on failure (declared failed while stalled) drop everything and rejoin.
    fn renew(&mut self, now: u64, out: &mut Vec<Action>) -> bool {
        let row = &self.region.members()[self.slot];
        let next = MemberWord { heartbeat_ms: ms(now).max(self.word.heartbeat_ms), ..self.word };
        match row.word.compare_exchange(self.word.pack(), next.pack(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                self.word = next;
                self.lease_until = now + self.cfg.lease_ms * 1_000_000;
                true
            }
            Err(_) => {
                self.stats.fenced += 1;
                self.lease_until = 0;
                for (addr, _) in std::mem::take(&mut self.local) {
                    out.push(Action::Deactivate { addr, connections: Departure::Silent, why: "fenced: this stack was declared failed" });
                }
                self.releasing.clear();
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
            let row = &self.region.members()[slot];
            let cur = row.word.load(Ordering::Acquire);
            let w = MemberWord::unpack(cur);
            if w.state == MemberState::Up && ms(now) > w.heartbeat_ms + row.lease_ms.load(Ordering::Relaxed) {
                self.fail(slot, cur, now);
            }
        }
    }

    fn fail(&mut self, slot: usize, cur: u64, now: u64) -> bool {
        let row = &self.region.members()[slot];
        let next = MemberWord { state: MemberState::Failed, ..MemberWord::unpack(cur) };
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
        let row = &self.region.members()[slot];
        let cur = row.word.load(Ordering::Acquire);
        let w = MemberWord::unpack(cur);
        if w.state != MemberState::Up || row.incarnation.load(Ordering::Relaxed) != incarnation {
            return false;
        }
        self.fail(slot, cur, now)
    }

    fn read_mail(&mut self) {
        for from in 0..self.cfg.stacks.len() {
            let region = self.region.clone();
            let Some(ring) = region.ring(from, self.slot) else { continue };
            let c = Consumer::new(ring);
            // Bounded: at most one ring's worth per tick.
            for _ in 0..RING_SLOTS {
                let Some(m) = c.pop() else { break };
                self.stats.messages_in += 1;
                self.handle_message(&m);
            }
        }
    }

    fn handle_message(&mut self, m: &Message) {
        let i = m.payload[0] as usize;
        if m.kind == msg::DELAYED_GIVEBACK {
            if let Some(d) = self.cfg.dvipas.get(i) {
                if d.primary == self.slot {
                    // Re-register at the top of the chain until the holder lets go.
                    self.region.dvipas()[i].roles[self.slot].store(ROLE_GIVEBACK, Ordering::Release);
                }
            }
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
            if cas_owner(r.row.of(&self.region), r.expect, r.next, now) {
                self.stats.givebacks += 1;
            }
        }
    }

    fn cas(&self, r: RowRef, cur: OwnerWord, next: OwnerWord, now: u64) -> bool {
        cas_owner(r.of(&self.region), cur, next, now)
    }

    fn activate_local(&mut self, r: RowRef, out: &mut Vec<Action>, why: &'static str) {
        let row = self.row(r);
        let addr = Ipv4Addr::from(row.addr.load(Ordering::Acquire));
        let prefix = (row.prefix.load(Ordering::Relaxed) & 0xff) as u8;
        if self.local.insert(addr, Local { row: r, prefix }).is_none() {
            out.push(Action::Activate { addr, prefix, why });
        }
    }

    fn deactivate_local(&mut self, addr: Ipv4Addr, connections: Departure, out: &mut Vec<Action>, why: &'static str) {
        if self.local.remove(&addr).is_some() {
            out.push(Action::Deactivate { addr, connections, why });
        }
    }

    fn step_row(&mut self, now: u64, r: RowRef, conns: &dyn Fn(Ipv4Addr) -> usize, out: &mut Vec<Action>) {
        if self.releasing.iter().any(|x| x.row == r) {
            return;
        }
        let me = self.slot as u8;
        let row = self.row(r);
        let addr = Ipv4Addr::from(row.addr.load(Ordering::Acquire));
        let w = OwnerWord::unpack(row.owner.load(Ordering::Acquire));
        let is_local = self.local.contains_key(&addr);
        let def = match r {
            RowRef::Config(i) => self.cfg.dvipas.get(i).cloned(),
            RowRef::Range(_) => None,
        };

        // Lost it: moved away by a command, deleted, taken while we were fenced.
        if is_local && !(w.owner == me && matches!(w.state, DvipaState::Active | DvipaState::DelayedGiveback)) {
            let (dep, why) = match w.state {
                DvipaState::Deleted => (Departure::Reset, "deleted by the operator"),
                DvipaState::Moving if w.prev == me => (Departure::Reset, "moved to another stack by command"),
                _ => (Departure::Silent, "owned by another stack"),
            };
            self.deactivate_local(addr, dep, out, why);
        }

        match w.state {
            DvipaState::Inactive => {
                // Only its primary activates a configured DVIPA that nobody holds: a backup
                // never takes one whose primary has simply not started (spec/01, 1).
                if let Some(d) = &def {
                    if d.primary == self.slot {
                        let next = w.next(me, w.owner, DvipaState::Active, Origin::Config);
                        if self.cas(r, w, next, now) {
                            self.activate_local(r, out, "primary started");
                        }
                    }
                }
            }
            DvipaState::Active | DvipaState::DelayedGiveback if w.owner == me => {
                let why = match w.origin {
                    Origin::Command => "activated by command",
                    _ if w.prev != me && w.prev != NO_SLOT => "given back by its holder",
                    _ => "owned here",
                };
                self.activate_local(r, out, why);
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
                let p = d.primary as u8;
                let primary_role = self.row(r).roles[d.primary].load(Ordering::Acquire);
                let primary_back = self.is_up(p) && (primary_role == ROLE_PRIMARY || primary_role == ROLE_GIVEBACK);
                if !primary_back {
                    if w.state == DvipaState::DelayedGiveback {
                        // The primary died while waiting: keep it as an ordinary takeover.
                        let next = w.next(me, w.prev, DvipaState::Active, w.origin);
                        self.cas(r, w, next, now);
                    }
                    return;
                }
                if n == 0 {
                    // Immediate giveback: leave the steering map first, hand the word over next tick.
                    self.deactivate_local(addr, Departure::Silent, out, "given back to its primary");
                    self.releasing.push(Release { row: r, expect: w, next: w.next(p, me, DvipaState::Active, Origin::Config) });
                } else if w.state == DvipaState::Active {
                    let next = w.next(me, w.prev, DvipaState::DelayedGiveback, w.origin);
                    if self.cas(r, w, next, now) {
                        self.stats.delayed_givebacks += 1;
                        if let RowRef::Config(i) = r {
                            self.send(d.primary, msg::DELAYED_GIVEBACK, i as u64);
                        }
                    }
                }
            }
            DvipaState::Active | DvipaState::DelayedGiveback => {
                if self.is_up(w.owner) {
                    return;
                }
                match def {
                    // Takeover: only the first live stack of the hierarchy.
                    Some(_) => {
                        let h = hierarchy(&self.region, self.row(r));
                        if h.first() == Some(&me) {
                            let next = w.next(me, w.owner, DvipaState::Active, Origin::Config);
                            if self.cas(r, w, next, now) {
                                self.stats.takeovers += 1;
                                self.activate_local(r, out, "took over from a failed stack");
                            }
                        }
                    }
                    // A range address is not moved: its bind status is cleared (spec/01, 4).
                    None => {
                        let next = w.next(NO_SLOT, w.owner, DvipaState::Inactive, Origin::None);
                        if self.cas(r, w, next, now) {
                            self.row(r).conns.store(0, Ordering::Relaxed);
                        }
                    }
                }
            }
            DvipaState::Moving => {
                if w.prev == me {
                    // We were asked to let go (deactivated above): complete the move.
                    let next = w.next(w.owner, me, DvipaState::Active, w.origin);
                    self.cas(r, w, next, now);
                } else if w.owner == me && !self.is_up(w.prev) {
                    let next = w.next(me, w.prev, DvipaState::Active, w.origin);
                    self.cas(r, w, next, now);
                }
            }
            DvipaState::Deleted => {}
        }
    }

    /// An application binds `addr`: activate it here if it lies in one of this stack's VIPA
    /// ranges and no other live stack holds it (spec/01, 4). On success the caller adds the
    /// address to the stack (the returned prefix) and announces it.
    pub fn bind_activate(&mut self, now: u64, addr: Ipv4Addr) -> Result<u8, BindError> {
        if !self.lease_valid(now) {
            return Err(BindError::Fenced);
        }
        let range = self.cfg.range_for(addr).filter(|r| r.stacks.contains(&self.slot)).ok_or(BindError::NotInRange(addr))?;
        let prefix = range.prefix;
        let i = claim_range_row(&self.region, addr, prefix).ok_or(BindError::TableFull)?;
        let r = RowRef::Range(i);
        let me = self.slot as u8;
        loop {
            let w = OwnerWord::unpack(self.row(r).owner.load(Ordering::Acquire));
            if w.held() && w.owner == me {
                self.local.insert(addr, Local { row: r, prefix });
                return Ok(prefix);
            }
            if w.held() && self.is_up(w.owner) {
                return Err(BindError::InUse { addr, stack: self.stack_name(w.owner) });
            }
            let next = w.next(me, w.owner, DvipaState::Active, Origin::Bind);
            if self.cas(r, w, next, now) {
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
        for (addr, l) in std::mem::take(&mut self.local) {
            out.push(Action::Deactivate { addr, connections: Departure::Reset, why: "stack stopping" });
            if let RowRef::Range(_) = l.row {
                let w = OwnerWord::unpack(self.row(l.row).owner.load(Ordering::Acquire));
                if w.owner == self.slot as u8 {
                    let next = w.next(NO_SLOT, w.owner, DvipaState::Inactive, Origin::None);
                    self.cas(l.row, w, next, now);
                }
            }
        }
        let row = &self.region.members()[self.slot];
        let next = MemberWord { state: MemberState::Left, ..self.word };
        let _ = row.word.compare_exchange(self.word.pack(), next.pack(), Ordering::AcqRel, Ordering::Acquire);
        self.lease_until = 0;
    }
}

/// Find the range row of `addr`, claiming a free one if none (open addressing, linear probe
/// from a hash of the address). Racing claimers of one address probe the same sequence, so
/// they meet on the same row.
/// The order range rows are probed in for `key` (LAYOUT.md: from `(addr * 0x9e3779b1) >> 24`).
fn probe(key: u32, len: usize) -> impl Iterator<Item = usize> {
    let start = (key.wrapping_mul(0x9e37_79b1) >> 24) as usize % len;
    (0..len).map(move |k| (start + k) % len)
}

pub fn claim_range_row(region: &Region, addr: Ipv4Addr, prefix: u8) -> Option<usize> {
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

/// The live stacks that may hold a configured DVIPA, in takeover order: the active owner,
/// then role descending (primary, 255, ranks), then join order, then slot. Every stack computes
/// it from the same rows, so every stack gets the same order.
pub fn hierarchy(region: &Region, row: &DvipaRow) -> Vec<u8> {
    let members = region.members();
    let up = |s: usize| member_up(region, s as u8);
    let w = OwnerWord::unpack(row.owner.load(Ordering::Acquire));
    let mut out = Vec::new();
    if w.held() && up(w.owner as usize) {
        out.push(w.owner);
    }
    let mut rest: Vec<(u16, u64, u8)> = (0..MAX_STACKS)
        .filter(|&s| s as u8 != w.owner || !w.held())
        .filter(|&s| up(s))
        .filter_map(|s| {
            let role = row.roles[s].load(Ordering::Acquire);
            (role != 0).then(|| (role, members[s].join_seq.load(Ordering::Relaxed), s as u8))
        })
        .collect();
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    out.extend(rest.into_iter().map(|(_, _, s)| s));
    out
}

#[cfg(test)]
mod tests;
