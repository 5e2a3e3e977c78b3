//! Cluster-wide ports (spec/03, z/OS CLUSTERPORTS): the stacks that share a source DVIPA take
//! their local ports for it from one registry in the coupling region, so no two of them ever
//! produce the same 4-tuple and the address's router can tell which stack a reply belongs to.
//!
//! An address with `cluster_ports` (on its `[[dvipa]]` or its `[[vipa_range]]`, see
//! [`crate::config`]) gets a [`PortRegistryRow`]: an owner word per port (`0` free, else
//! [`PortOwner`]: the stack's slot and the low 24 bits of its incarnation) and an advisory
//! bitmap. A claim is one CAS of the owner word `0 -> me`, a release one CAS `me -> 0`, a
//! handoff one CAS `old -> new` (never through free); the bitmap only lets a claimer skip 64
//! claimed ports at a time. Nothing is locked: a stack that dies holding ports leaves its words
//! behind, and any stack's [`Registry::reclaim`] frees them (CAS `dead -> 0`) once the
//! owner has been gone for `port_quarantine_ms` (2*MSL by default: its peers' TIME-WAIT).
//!
//! With `cluster_ports = "tuple"` the unit of ownership is the 4-tuple instead: a
//! direct-mapped table ([`PortTupleRow`]) where tuple `(dvipa, port, remote ip, remote port)`
//! can live in exactly one row, so a CAS of that row from 0 makes the claim unique, and the
//! same port is used by several stacks toward different remotes. The port's owner word then
//! counts the tuple rows that use it (`count:24 | 0xff`), so an explicit bind (exclusive in
//! both modes) and tuple use of one port exclude each other by CAS too.
//!
//! ## Driving it
//! - [`Registry::new`] after [`Node::join`]; [`Registry::rejoined`] after the node rejoined
//!   with a new incarnation (a registry claims with the incarnation it was told).
//! - [`Registry::claim_ephemeral`] at `connect()` (or `bind(addr, 0)`) before the SYN, with a
//!   random `start` per call (RFC 6056); [`Registry::claim`] for an explicit bind or a
//!   listener; [`Registry::release`] when the TCB is freed (after TIME-WAIT).
//! - [`Registry::owner`] at the router, to send a reply to the stack that owns its port.
//! - [`Registry::reclaim`] at every heartbeat (bounded work per call).
//! - [`Registry::move_owner`] for a connection handoff, [`Registry::seed`] when
//!   `cluster_ports` is enabled at run time while connections exist.
//!
//! Every word read from the region is validated: an owner word whose slot is not a stack of
//! the config, a count word on a port-mode address, a tuple row with an unknown state, a bad
//! registry index or a failing check word is ignored (counted in [`PortStats::invalid`]),
//! never adopted and never a panic. Claims and releases allocate nothing and touch a handful
//! of atomics.
//!
//! Known limits: a word that fails validation is skipped, never reclaimed (nobody can tell
//! whose it is); in tuple mode, a stack that dies between counting a tuple on its port and
//! claiming the tuple row (or between freeing the row and uncounting it) leaves the port's
//! count one too high, so that port can no longer be bound exclusively (tuples still use it).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;

use crate::check;
use crate::config::{ClusterConfig, DistPorts, PortsMode};
use crate::layout::*;
use crate::node::Node;
use crate::region::Region;

/// First port of the ephemeral range (as `stack::cluster::EPHEMERAL_PORTS` and Linux's
/// `ip_local_port_range`).
pub const EPHEMERAL_FIRST: u16 = 32768;
/// Last port of the ephemeral range.
pub const EPHEMERAL_LAST: u16 = 60999;
/// The ephemeral range [`Registry::claim_ephemeral`] hands ports out of.
pub const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = EPHEMERAL_FIRST..=EPHEMERAL_LAST;
const EPH_LEN: u32 = (EPHEMERAL_LAST - EPHEMERAL_FIRST) as u32 + 1;

/// Owner words and tuple rows examined per [`Registry::reclaim`] call (a full sweep of a
/// region takes `(16 * 65536 + 131072) / RECLAIM_CHUNK` calls when every registry is in use;
/// unused registries cost nothing).
pub const RECLAIM_CHUNK: usize = 16384;

const TUPLE_WRITING: u64 = 1;
const TUPLE_LIVE: u64 = 2;

/// Who owns a port (or a tuple): a stack slot and the low 24 bits of its incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortOwner {
    /// The stack's slot (its index in the cluster config).
    pub slot: u8,
    /// The low 24 bits of the stack's incarnation when it claimed.
    pub incarnation: u32,
}

impl PortOwner {
    /// The owner for stack `slot` at `incarnation` (cut to its low 24 bits).
    pub fn new(slot: u8, incarnation: u64) -> PortOwner {
        PortOwner { slot, incarnation: (incarnation & 0xff_ffff) as u32 }
    }
    /// The owner word as stored: `incarnation:24 | slot+1:8` (high bits first); never 0.
    /// `slot` must be below [`MAX_STACKS`].
    pub fn pack(self) -> u32 {
        (self.incarnation & 0xff_ffff) << 8 | (self.slot as u32 + 1)
    }
    /// The owner of a stored word; `None` for a free word, a tuple count word or a slot byte
    /// that cannot be a stack (not validated against a config: see [`classify`]).
    pub fn unpack(w: u32) -> Option<PortOwner> {
        let s = w & 0xff;
        if s == 0 || s as usize > MAX_STACKS {
            return None;
        }
        Some(PortOwner { slot: (s - 1) as u8, incarnation: w >> 8 })
    }
}

/// What an owner word says, validated against the config and the address's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerSlot {
    /// 0: nobody.
    Free,
    /// An exclusive owner (a stack of the config).
    Owner(PortOwner),
    /// Tuple mode: this many tuple rows use the port (at least 1).
    Shared(u32),
    /// Anything else: ignored.
    Garbage,
}

/// Classify owner word `w` of an address in `mode` for a config of `stacks` stacks.
pub fn classify(w: u32, stacks: usize, mode: PortsMode) -> OwnerSlot {
    if w == 0 {
        return OwnerSlot::Free;
    }
    if w & 0xff == PORT_SHARED {
        return if mode == PortsMode::Tuple { OwnerSlot::Shared(w >> 8) } else { OwnerSlot::Garbage };
    }
    match PortOwner::unpack(w) {
        Some(o) if (o.slot as usize) < stacks => OwnerSlot::Owner(o),
        _ => OwnerSlot::Garbage,
    }
}

/// Why a port could not be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortsError {
    /// The address has no `cluster_ports`: the stack picks its ports alone.
    NotClusterPorts,
    /// Another stack owns the port (or, with `owner_slot` [`NO_SLOT`], tuple connections use
    /// it or its owner word is unreadable).
    InUse {
        /// The owner's slot, [`NO_SLOT`] when no single stack owns it.
        owner_slot: u8,
    },
    /// A distributed port of a distributed DVIPA: shared by its targets, never exclusive and
    /// never ephemeral (the caller allows the bind without registering it).
    Distributed,
    /// Every port of the address is distributed (`distribute.ports = "all"`): it can have
    /// listeners only, no ephemeral port.
    AllDistributed,
    /// No free ephemeral port (for this remote, in tuple mode).
    Exhausted,
    /// Every port registry row of the region is used by other addresses.
    NoRegistry,
}

impl std::fmt::Display for PortsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortsError::NotClusterPorts => f.write_str("the address has no cluster_ports"),
            PortsError::InUse { owner_slot } if *owner_slot == NO_SLOT => f.write_str("port in use by other stacks' connections"),
            PortsError::InUse { owner_slot } => write!(f, "port in use by stack slot {owner_slot}"),
            PortsError::Distributed => f.write_str("a distributed port: shared by the distributor's targets, never owned"),
            PortsError::AllDistributed => f.write_str("every port of the address is distributed: no ephemeral port on it"),
            PortsError::Exhausted => f.write_str("no free ephemeral port in the cluster"),
            PortsError::NoRegistry => write!(f, "all {MAX_PORT_REGISTRIES} port registries of the coupling region are in use"),
        }
    }
}

impl std::error::Error for PortsError {}

/// Counters of one [`Registry`] (only it writes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Ports (or tuples) claimed, ephemeral and explicit.
    pub claims: u64,
    /// CAS lost to another claimer, or a tuple row held by another tuple (another port was
    /// tried), or an explicit bind refused as in use.
    pub claim_conflicts: u64,
    /// Ports (or tuples) released by this stack.
    pub releases: u64,
    /// Ports (or tuples) of dead owners freed by this registry.
    pub reclaimed: u64,
    /// Ephemeral claims that found no free port.
    pub exhausted: u64,
    /// Owner words and tuple rows ignored because they failed validation.
    pub invalid: u64,
    /// Ownership handoffs done ([`Registry::move_owner`]).
    pub moves: u64,
    /// Existing connections recorded by [`Registry::seed`].
    pub seeded: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    addr: u32,
    row: usize,
    mode: PortsMode,
    /// The configured DVIPA's index when it is distributed.
    dist: Option<usize>,
}

/// One stack's handle on the cluster port registry. Owned by the stack's poll thread.
#[derive(Debug)]
pub struct Registry {
    region: Arc<Region>,
    cfg: Arc<ClusterConfig>,
    me: PortOwner,
    /// Addresses whose registry row is known (at most [`MAX_PORT_REGISTRIES`]).
    cache: Vec<Cached>,
    /// Local references beyond the first on ports this stack owns exclusively
    /// ((addr, port) -> references, always at least 2).
    refs: BTreeMap<(u32, u16), u32>,
    /// Per slot: CLOCK_MONOTONIC ns when this registry first saw it down (0: seen up, or not
    /// looked at yet).
    dead_since: [u64; MAX_STACKS],
    /// Where the next [`Registry::reclaim`] continues.
    cursor: usize,
    /// Addresses `plex ctl ports enable` turned `cluster_ports` on for at run time (their rows
    /// carry the mode; the config does not name them), as of the last [`Registry::refresh`].
    runtime: Vec<(u32, PortsMode)>,
    /// The registry's counters.
    pub stats: PortStats,
}

fn mode_code(m: PortsMode) -> u32 {
    match m {
        PortsMode::Port => 1,
        PortsMode::Tuple => 2,
    }
}

/// `dvipa:32 | port:16 | _:16` (low bit first).
fn pack_local(addr: u32, port: u16) -> u64 {
    addr as u64 | (port as u64) << 32
}

/// `ip:32 | port:16 | _:16` (low bit first).
fn pack_remote(r: SocketAddrV4) -> u64 {
    u32::from(*r.ip()) as u64 | (r.port() as u64) << 32
}

fn unpack_remote(w: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(w as u32), (w >> 32) as u16)
}

fn tuple_ctl(state: u64, reg: usize, port: u16, owner: u32) -> u64 {
    state | (reg as u64) << 8 | (port as u64) << 16 | (owner as u64) << 32
}

/// A tuple row's `ctl`, unpacked: (state, registry index, local port, owner word).
fn tuple_fields(ctl: u64) -> (u64, usize, u16, u32) {
    (ctl & 0xff, ((ctl >> 8) & 0xff) as usize, (ctl >> 16) as u16, (ctl >> 32) as u32)
}

/// The index of `addr`'s registry row, without claiming one.
pub fn find_registry(region: &Region, addr: Ipv4Addr) -> Option<usize> {
    let a = u32::from(addr);
    region.port_registries().iter().position(|r| r.addr.load(Ordering::Acquire) == a)
}

fn set_bit(row: &PortRegistryRow, port: u16) {
    row.bitmap[port as usize >> 6].fetch_or(1 << (port & 63), Ordering::Release);
}

fn clear_bit(row: &PortRegistryRow, port: u16) {
    row.bitmap[port as usize >> 6].fetch_and(!(1 << (port & 63)), Ordering::Release);
    // A claimer may have taken the port between our CAS and this store: keep its bit.
    if PortOwner::unpack(row.owners[port as usize].load(Ordering::Acquire)).is_some() {
        set_bit(row, port);
    }
}

/// One fewer tuple row uses the port (count word minus one; the last one frees the word).
fn shared_dec(o: &AtomicU32) {
    let mut cur = o.load(Ordering::Relaxed);
    loop {
        if cur & 0xff != PORT_SHARED || cur >> 8 == 0 {
            return;
        }
        let next = if cur >> 8 == 1 { 0 } else { cur - 0x100 };
        match o.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(v) => cur = v,
        }
    }
}

/// A tuple row read consistently (`ctl` unchanged around the words, check word right):
/// (ctl, local, remote); `None` for a free row, a row being written, or a torn one.
fn read_tuple(t: &PortTupleRow) -> Option<(u64, u64, u64)> {
    let ctl = t.ctl.load(Ordering::Acquire);
    if ctl & 0xff != TUPLE_LIVE {
        return None;
    }
    let local = t.local.load(Ordering::Relaxed);
    let remote = t.remote.load(Ordering::Relaxed);
    let check = t.check.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    if t.ctl.load(Ordering::Relaxed) != ctl || check != port_tuple_check(local, remote) {
        return None;
    }
    Some((ctl, local, remote))
}

/// Exclusive claim of `port` for owner word `me` (port mode, or an explicit bind).
fn try_exclusive(row: &PortRegistryRow, port: u16, me: u32, stacks: usize, mode: PortsMode, stats: &mut PortStats) -> bool {
    let o = &row.owners[port as usize];
    let cur = o.load(Ordering::Relaxed);
    if cur != 0 {
        match classify(cur, stacks, mode) {
            // The bitmap lagged (a release raced a claim): repair the hint.
            OwnerSlot::Owner(_) => set_bit(row, port),
            OwnerSlot::Garbage => stats.invalid += 1,
            _ => {}
        }
        return false;
    }
    if o.compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        stats.claim_conflicts += 1;
        return false;
    }
    set_bit(row, port);
    true
}

/// Tuple claim of (`addr`:`port`, `remote`) for owner word `me` in registry row `reg`.
#[allow(clippy::too_many_arguments)]
fn try_tuple(region: &Region, reg: usize, addr: u32, port: u16, remote: u64, me: u32, stacks: usize, stats: &mut PortStats) -> bool {
    let row = &region.port_registries()[reg];
    let local = pack_local(addr, port);
    let Some(t) = region.port_tuples().get(port_tuple_index(local, remote)) else { return false };
    if t.ctl.load(Ordering::Relaxed) != 0 {
        stats.claim_conflicts += 1;
        return false;
    }
    let o = &row.owners[port as usize];
    let mut cur = o.load(Ordering::Relaxed);
    loop {
        let next = match classify(cur, stacks, PortsMode::Tuple) {
            OwnerSlot::Free => 1 << 8 | PORT_SHARED,
            OwnerSlot::Shared(n) if n < 0xff_ffff => cur + 0x100,
            OwnerSlot::Shared(_) => return false,
            OwnerSlot::Owner(_) => {
                set_bit(row, port);
                return false;
            }
            OwnerSlot::Garbage => {
                stats.invalid += 1;
                return false;
            }
        };
        match o.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => break,
            Err(v) => cur = v,
        }
    }
    if t.ctl.compare_exchange(0, tuple_ctl(TUPLE_WRITING, reg, port, me), Ordering::AcqRel, Ordering::Relaxed).is_err() {
        shared_dec(o);
        stats.claim_conflicts += 1;
        return false;
    }
    fence(Ordering::Release);
    t.local.store(local, Ordering::Relaxed);
    t.remote.store(remote, Ordering::Relaxed);
    t.check.store(port_tuple_check(local, remote), Ordering::Relaxed);
    t.ctl.store(tuple_ctl(TUPLE_LIVE, reg, port, me), Ordering::Release);
    true
}

impl Registry {
    /// This stack's registry handle: its slot and incarnation come from `node` (tell it
    /// [`Registry::rejoined`] after the node rejoined with a new incarnation).
    pub fn new(node: &Node) -> Registry {
        Registry::with_owner(node.region().clone(), Arc::new(node.config().clone()), PortOwner::new(node.slot() as u8, node.incarnation()))
    }

    /// A handle claiming as `me`, without a node (tests, tools that act for a stack).
    pub fn with_owner(region: Arc<Region>, cfg: Arc<ClusterConfig>, me: PortOwner) -> Registry {
        Registry {
            region,
            cfg,
            me,
            cache: Vec::with_capacity(MAX_PORT_REGISTRIES),
            refs: BTreeMap::new(),
            dead_since: [0; MAX_STACKS],
            cursor: 0,
            runtime: Vec::new(),
            stats: PortStats::default(),
        }
    }

    /// The node rejoined (it was fenced, or restarted in-process) with a new incarnation:
    /// claim as that from now on. What this registry held under the old incarnation is a dead
    /// owner's now (reclaimed after the quarantine), so its local references are dropped.
    pub fn rejoined(&mut self, node: &Node) {
        let me = PortOwner::new(node.slot() as u8, node.incarnation());
        if me != self.me {
            self.me = me;
            self.refs.clear();
        }
    }

    /// Who this registry claims as.
    pub fn me(&self) -> PortOwner {
        self.me
    }

    /// How the stacks share the ports of `addr` (`None`: no `cluster_ports`, the stack picks
    /// its ports alone).
    pub fn mode(&self, addr: Ipv4Addr) -> Option<PortsMode> {
        let a = u32::from(addr);
        match self.cache.iter().find(|c| c.addr == a) {
            Some(c) => Some(c.mode),
            None => self.cfg.ports_mode(addr).or_else(|| self.runtime.iter().find(|r| r.0 == a).map(|r| r.1)),
        }
    }

    /// Look for addresses `plex ctl ports enable` turned `cluster_ports` on for at run time
    /// (call every heartbeat); returns those new since the last call: the stack records its
    /// existing connections' ports on them ([`Registry::seed`]), then claims as for a
    /// configured address. Bounded: one pass over the [`MAX_PORT_REGISTRIES`] rows.
    pub fn refresh(&mut self) -> Vec<(Ipv4Addr, PortsMode)> {
        let mut new = Vec::new();
        for r in self.region.port_registries() {
            let a = r.addr.load(Ordering::Acquire);
            if a == 0 || self.cfg.ports_mode(Ipv4Addr::from(a)).is_some() || self.runtime.iter().any(|x| x.0 == a) {
                continue;
            }
            let mode = match r.mode.load(Ordering::Acquire) {
                1 => PortsMode::Port,
                2 => PortsMode::Tuple,
                _ => continue,
            };
            // Only an address of the cluster (a configured DVIPA or one in a range).
            let ip = Ipv4Addr::from(a);
            if self.cfg.dvipa_index(ip).is_none() && self.cfg.range_for(ip).is_none() {
                self.stats.invalid += 1;
                continue;
            }
            self.runtime.push((a, mode));
            new.push((ip, mode));
        }
        new
    }

    /// The cached registry entry of `addr`, finding (`claim`: or claiming) its row.
    fn entry(&mut self, addr: Ipv4Addr, claim: bool) -> Result<Cached, PortsError> {
        let a = u32::from(addr);
        if let Some(c) = self.cache.iter().find(|c| c.addr == a) {
            return Ok(*c);
        }
        let mode = self.mode(addr).ok_or(PortsError::NotClusterPorts)?;
        let dist = self.cfg.dvipa_index(addr).filter(|i| self.cfg.dvipas[*i].distribute.is_some());
        let rows = self.region.port_registries();
        let found = match find_registry(&self.region, addr) {
            Some(i) => Some(i),
            None if !claim => None,
            None => {
                let start = port_registry_index(a);
                let mut found = None;
                for k in 0..rows.len() {
                    let i = (start + k) % rows.len();
                    let r = &rows[i];
                    match r.addr.compare_exchange(0, a, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => {
                            r.mode.store(mode_code(mode), Ordering::Release);
                            found = Some(i);
                        }
                        Err(v) if v == a => found = Some(i),
                        Err(_) => continue,
                    }
                    break;
                }
                found
            }
        };
        let row = found.ok_or(if claim { PortsError::NoRegistry } else { PortsError::NotClusterPorts })?;
        let c = Cached { addr: a, row, mode, dist };
        self.cache.push(c);
        Ok(c)
    }

    fn dist_ports(&self, c: &Cached) -> Option<&DistPorts> {
        c.dist.and_then(|i| self.cfg.dvipas[i].distribute.as_ref()).map(|d| &d.ports)
    }

    /// An ephemeral port of `addr` for a connection to `remote`, claimed cluster-wide before
    /// the SYN (RFC 6056 style): the range [`EPHEMERAL_PORTS`] is scanned from offset `start`
    /// (draw it at random per call), skipping claimed ports 64 at a time by the bitmap and
    /// never giving out a distributed port. Port mode: the port becomes this stack's. Tuple
    /// mode: the tuple becomes this stack's (a port owned exclusively, by a bind or a
    /// listener, is skipped), so other stacks may use the port toward other remotes.
    pub fn claim_ephemeral(&mut self, now: u64, addr: Ipv4Addr, remote: SocketAddrV4, start: u16) -> Result<u16, PortsError> {
        let _ = now;
        let c = self.entry(addr, true)?;
        let dist = c.dist.and_then(|i| self.cfg.dvipas[i].distribute.as_ref()).map(|d| &d.ports);
        if matches!(dist, Some(DistPorts::All)) {
            return Err(PortsError::AllDistributed);
        }
        let dist = match dist {
            Some(DistPorts::List(v)) => &v[..],
            _ => &[],
        };
        let stacks = self.cfg.stacks.len();
        let region = &*self.region;
        let row = &region.port_registries()[c.row];
        let me = self.me.pack();
        let rem = pack_remote(remote);
        let stats = &mut self.stats;
        let mut p = EPHEMERAL_FIRST as u32 + start as u32 % EPH_LEN;
        let mut left = EPH_LEN;
        while left > 0 {
            let b = p & 63;
            let span = (64 - b).min(left).min(EPHEMERAL_LAST as u32 + 1 - p);
            let free = !row.bitmap[p as usize >> 6].load(Ordering::Relaxed) >> b;
            let skip = free.trailing_zeros().min(span);
            p += skip;
            left -= skip;
            if skip < span {
                let port = p as u16;
                if dist.binary_search(&port).is_err() {
                    let won = match c.mode {
                        PortsMode::Port => try_exclusive(row, port, me, stacks, c.mode, stats),
                        PortsMode::Tuple => try_tuple(region, c.row, c.addr, port, rem, me, stacks, stats),
                    };
                    if won {
                        stats.claims += 1;
                        return Ok(port);
                    }
                }
                p += 1;
                left -= 1;
            }
            if p > EPHEMERAL_LAST as u32 {
                p = EPHEMERAL_FIRST as u32;
            }
        }
        stats.exhausted += 1;
        Err(PortsError::Exhausted)
    }

    /// An explicit bind of `addr`:`port` (a listener, or a bind to a fixed port): the port
    /// becomes this stack's exclusively, in both modes. Idempotent for this stack: a port
    /// bound twice here is freed by the second [`Registry::release`].
    pub fn claim(&mut self, now: u64, addr: Ipv4Addr, port: u16) -> Result<(), PortsError> {
        let _ = now;
        let c = self.entry(addr, true)?;
        if self.dist_ports(&c).is_some_and(|d| d.contains(port)) {
            return Err(PortsError::Distributed);
        }
        let row = &self.region.port_registries()[c.row];
        let o = &row.owners[port as usize];
        let me = self.me.pack();
        let mut cur = o.load(Ordering::Acquire);
        loop {
            match classify(cur, self.cfg.stacks.len(), c.mode) {
                OwnerSlot::Free => match o.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        set_bit(row, port);
                        self.stats.claims += 1;
                        return Ok(());
                    }
                    Err(v) => cur = v,
                },
                OwnerSlot::Owner(w) if w == self.me => {
                    *self.refs.entry((c.addr, port)).or_insert(1) += 1;
                    return Ok(());
                }
                OwnerSlot::Owner(w) => {
                    self.stats.claim_conflicts += 1;
                    return Err(PortsError::InUse { owner_slot: w.slot });
                }
                OwnerSlot::Shared(_) => {
                    self.stats.claim_conflicts += 1;
                    return Err(PortsError::InUse { owner_slot: NO_SLOT });
                }
                OwnerSlot::Garbage => {
                    self.stats.invalid += 1;
                    return Err(PortsError::InUse { owner_slot: NO_SLOT });
                }
            }
        }
    }

    /// Give back `addr`:`port` (tuple mode with `remote`: the tuple; otherwise the exclusive
    /// port) when the TCB is freed. Only what this stack holds is freed (CAS from its own
    /// owner word); true when something was (or a local reference of a port bound twice was
    /// dropped).
    pub fn release(&mut self, now: u64, addr: Ipv4Addr, port: u16, remote: Option<SocketAddrV4>) -> bool {
        let _ = now;
        let Ok(c) = self.entry(addr, false) else { return false };
        let region = &*self.region;
        let row = &region.port_registries()[c.row];
        let me = self.me.pack();
        if let (PortsMode::Tuple, Some(r)) = (c.mode, remote) {
            let (local, rem) = (pack_local(c.addr, port), pack_remote(r));
            let Some(t) = region.port_tuples().get(port_tuple_index(local, rem)) else { return false };
            let live = tuple_ctl(TUPLE_LIVE, c.row, port, me);
            if t.ctl.load(Ordering::Acquire) != live || t.local.load(Ordering::Relaxed) != local || t.remote.load(Ordering::Relaxed) != rem {
                return false;
            }
            if t.ctl.compare_exchange(live, 0, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                return false;
            }
            shared_dec(&row.owners[port as usize]);
            self.stats.releases += 1;
            return true;
        }
        if let Some(n) = self.refs.get_mut(&(c.addr, port)) {
            *n -= 1;
            if *n <= 1 {
                self.refs.remove(&(c.addr, port));
            }
            return true;
        }
        if row.owners[port as usize].compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        clear_bit(row, port);
        self.stats.releases += 1;
        true
    }

    /// Who owns `addr`:`port` for segments from `remote`: in tuple mode the tuple's owner
    /// (a row that fails its check is ignored), else (and for exclusively owned ports) the
    /// port's owner. `None`: unowned, no `cluster_ports`, or unreadable.
    pub fn owner(&self, addr: Ipv4Addr, port: u16, remote: SocketAddrV4) -> Option<PortOwner> {
        let a = u32::from(addr);
        let (row, mode) = match self.cache.iter().find(|c| c.addr == a) {
            Some(c) => (c.row, c.mode),
            None => (find_registry(&self.region, addr)?, self.cfg.ports_mode(addr)?),
        };
        lookup(&self.region, self.cfg.stacks.len(), row, mode, a, port, remote)
    }

    /// Hand `addr`:`port` (tuple mode with `remote`: that tuple) from `from` to `to` in one
    /// CAS, never through free: a concurrent claimer cannot get it in between. False when
    /// `from` does not hold it (or `to` is not a stack of the config).
    pub fn move_owner(&mut self, addr: Ipv4Addr, port: u16, remote: Option<SocketAddrV4>, from: PortOwner, to: PortOwner) -> bool {
        if to.slot as usize >= self.cfg.stacks.len() || from.slot as usize >= MAX_STACKS {
            return false;
        }
        let Ok(c) = self.entry(addr, false) else { return false };
        let region = &*self.region;
        let moved = match (c.mode, remote) {
            (PortsMode::Tuple, Some(r)) => {
                let (local, rem) = (pack_local(c.addr, port), pack_remote(r));
                let Some(t) = region.port_tuples().get(port_tuple_index(local, rem)) else { return false };
                let cur = tuple_ctl(TUPLE_LIVE, c.row, port, from.pack());
                if t.ctl.load(Ordering::Acquire) != cur || t.local.load(Ordering::Relaxed) != local || t.remote.load(Ordering::Relaxed) != rem {
                    return false;
                }
                t.ctl.compare_exchange(cur, tuple_ctl(TUPLE_LIVE, c.row, port, to.pack()), Ordering::AcqRel, Ordering::Relaxed).is_ok()
            }
            _ => {
                let o = &region.port_registries()[c.row].owners[port as usize];
                o.compare_exchange(from.pack(), to.pack(), Ordering::AcqRel, Ordering::Relaxed).is_ok()
            }
        };
        if moved {
            if from == self.me {
                self.refs.remove(&(c.addr, port));
            }
            self.stats.moves += 1;
        }
        moved
    }

    /// Record an existing connection `addr`:`port` -> `remote` of stack `owner` (enabling
    /// `cluster_ports` at run time: the router seeds from its CRT): the port (tuple mode: the
    /// tuple) becomes `owner`'s if it is free. False when it is not free.
    pub fn seed(&mut self, now: u64, addr: Ipv4Addr, port: u16, remote: SocketAddrV4, owner: PortOwner) -> bool {
        let stacks = self.cfg.stacks.len();
        if owner.slot as usize >= stacks {
            return false;
        }
        let Ok(c) = self.entry(addr, true) else { return false };
        let region = &*self.region;
        let row = &region.port_registries()[c.row];
        let ok = match c.mode {
            PortsMode::Port => try_exclusive(row, port, owner.pack(), stacks, c.mode, &mut self.stats),
            PortsMode::Tuple => try_tuple(region, c.row, c.addr, port, pack_remote(remote), owner.pack(), stacks, &mut self.stats),
        };
        if ok {
            row.seeded_ns.store(now, Ordering::Relaxed);
            self.stats.seeded += 1;
        }
        ok
    }

    /// Free the ports and tuples of owners that are gone: an owner word whose slot is no
    /// longer up with that incarnation, once `port_quarantine_ms` has passed since it died
    /// (its member row's `failed_ns`; for an earlier incarnation of a slot that rejoined, its
    /// `joined_ns`; otherwise when this registry first saw the slot down). Each call examines
    /// at most [`RECLAIM_CHUNK`] words and rows, continuing where the last stopped; returns
    /// how many it freed. Call it at every heartbeat.
    pub fn reclaim(&mut self, now: u64) -> usize {
        let cfg = &*self.cfg;
        let region = &*self.region;
        let stacks = cfg.stacks.len().min(MAX_STACKS);
        let quarantine = cfg.port_quarantine_ms.saturating_mul(1_000_000);
        // Per slot, from its member row as read now: its incarnation (24 bits), whether that
        // incarnation is up, and whether the words of dead incarnations are past quarantine.
        // A row that fails validation reclaims nothing (its live stack repairs it).
        let mut snap: [Option<(u32, bool, bool)>; MAX_STACKS] = [None; MAX_STACKS];
        for (s, slot) in snap.iter_mut().enumerate().take(stacks) {
            let Ok(m) = check::member(region, cfg, s, now) else { continue };
            let up = m.word.state == MemberState::Up;
            let dead_at = if up {
                self.dead_since[s] = 0;
                // Earlier incarnations were dead by the time this one joined.
                m.joined_ns.min(now)
            } else {
                if self.dead_since[s] == 0 {
                    self.dead_since[s] = now.max(1);
                }
                let failed = region.members()[s].failed_ns.load(Ordering::Relaxed);
                if m.word.state == MemberState::Failed && (1..=now).contains(&failed) {
                    failed
                } else {
                    self.dead_since[s]
                }
            };
            *slot = Some(((m.incarnation & 0xff_ffff) as u32, up, now >= dead_at.saturating_add(quarantine)));
        }
        if !snap.iter().any(|s| s.is_some_and(|(_, _, expired)| expired)) {
            return 0;
        }
        // Dead: past quarantine, not the incarnation that is up, and not newer than the one
        // read (a stack that rejoins while we scan claims with an incarnation we have not seen).
        let dead = |o: PortOwner| {
            snap[o.slot as usize].is_some_and(|(inc, up, expired)| {
                let newer = o.incarnation != inc && o.incarnation.wrapping_sub(inc) & 0xff_ffff < 0x80_0000;
                expired && !(up && o.incarnation == inc) && !newer
            })
        };
        let regs = region.port_registries();
        let tuples = region.port_tuples();
        let total = regs.len() * 65536 + tuples.len();
        if total == 0 {
            return 0;
        }
        let mut freed = 0;
        let mut budget = RECLAIM_CHUNK;
        let mut cur = self.cursor % total;
        let mut visited = 0;
        while budget > 0 && visited < total {
            if cur < regs.len() * 65536 {
                let (ri, first) = (cur / 65536, cur % 65536);
                let row = &regs[ri];
                let mode = match row.addr.load(Ordering::Acquire) {
                    0 => None,
                    a => cfg.ports_mode(Ipv4Addr::from(a)),
                };
                let Some(mode) = mode else {
                    // An unused registry (or one of an address without cluster_ports): skip.
                    visited += 65536 - first;
                    cur = (ri + 1) * 65536;
                    continue;
                };
                let n = (65536 - first).min(budget);
                for port in first..first + n {
                    let o = &row.owners[port];
                    let w = o.load(Ordering::Relaxed);
                    if w == 0 {
                        continue;
                    }
                    match classify(w, stacks, mode) {
                        OwnerSlot::Owner(ow) if dead(ow) && o.compare_exchange(w, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() => {
                            clear_bit(row, port as u16);
                            freed += 1;
                        }
                        OwnerSlot::Garbage => self.stats.invalid += 1,
                        _ => {}
                    }
                }
                budget -= n;
                visited += n;
                cur += n;
            } else {
                let first = cur - regs.len() * 65536;
                let n = (tuples.len() - first).min(budget);
                for t in &tuples[first..first + n] {
                    let ctl = t.ctl.load(Ordering::Acquire);
                    if ctl == 0 {
                        continue;
                    }
                    let (state, reg, port, owner) = tuple_fields(ctl);
                    let valid_owner = PortOwner::unpack(owner).filter(|o| (o.slot as usize) < stacks);
                    let (Some(ow), true, true) = (valid_owner, state == TUPLE_WRITING || state == TUPLE_LIVE, reg < regs.len()) else {
                        self.stats.invalid += 1;
                        continue;
                    };
                    if dead(ow) && t.ctl.compare_exchange(ctl, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                        shared_dec(&regs[reg].owners[port as usize]);
                        freed += 1;
                    }
                }
                budget -= n;
                visited += n;
                cur += n;
            }
            if cur >= total {
                cur = 0;
            }
        }
        self.cursor = cur;
        self.stats.reclaimed += freed as u64;
        freed
    }

    /// [`Registry::reclaim`] over the whole region at once (tests, and a stack that wants
    /// its ports back now); returns how many it freed.
    pub fn reclaim_all(&mut self, now: u64) -> usize {
        let total = self.region.port_registries().len() * 65536 + self.region.port_tuples().len();
        let mut freed = 0;
        for _ in 0..total.div_ceil(RECLAIM_CHUNK) + 1 {
            freed += self.reclaim(now);
        }
        freed
    }
}

/// The owner of `addr`:`port` for `remote` in registry row `row` of an address in `mode`
/// (see [`Registry::owner`]).
pub fn lookup(region: &Region, stacks: usize, row: usize, mode: PortsMode, addr: u32, port: u16, remote: SocketAddrV4) -> Option<PortOwner> {
    if mode == PortsMode::Tuple {
        let (local, rem) = (pack_local(addr, port), pack_remote(remote));
        if let Some((ctl, l, r)) = region.port_tuples().get(port_tuple_index(local, rem)).and_then(read_tuple) {
            let (_, reg, p, owner) = tuple_fields(ctl);
            if l == local && r == rem && reg == row && p == port {
                if let OwnerSlot::Owner(o) = classify(owner, stacks, PortsMode::Port) {
                    return Some(o);
                }
            }
        }
    }
    match classify(region.port_registries().get(row)?.owners[port as usize].load(Ordering::Acquire), stacks, mode) {
        OwnerSlot::Owner(o) => Some(o),
        _ => None,
    }
}

/// One claimed port or tuple as read from the region (for [`crate::ops::ports_view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The address.
    pub addr: Ipv4Addr,
    /// The local port.
    pub port: u16,
    /// The address's mode (by the config).
    pub mode: PortsMode,
    /// The owner.
    pub owner: PortOwner,
    /// The remote of a tuple row; `None` for an exclusively owned port.
    pub remote: Option<SocketAddrV4>,
}

/// Every claimed port and tuple of the region that validates (of `only`, when given), and
/// how many owner words and tuple rows failed validation.
pub fn claimed(region: &Region, cfg: &ClusterConfig, only: Option<Ipv4Addr>) -> (Vec<Claimed>, u64) {
    let stacks = cfg.stacks.len();
    let mut out = Vec::new();
    let mut invalid = 0;
    let regs = region.port_registries();
    let mut addrs: [Option<(Ipv4Addr, PortsMode)>; MAX_PORT_REGISTRIES] = [None; MAX_PORT_REGISTRIES];
    for (i, row) in regs.iter().enumerate() {
        let a = Ipv4Addr::from(row.addr.load(Ordering::Acquire));
        // The config's mode, or the row's for an address enabled at run time.
        let runtime = match row.mode.load(Ordering::Acquire) {
            1 if !a.is_unspecified() => Some(PortsMode::Port),
            2 if !a.is_unspecified() => Some(PortsMode::Tuple),
            _ => None,
        };
        let Some(mode) = cfg.ports_mode(a).or(runtime) else { continue };
        if let Some(slot) = addrs.get_mut(i) {
            *slot = Some((a, mode));
        }
        if only.is_some_and(|o| o != a) {
            continue;
        }
        for (port, o) in row.owners.iter().enumerate() {
            match classify(o.load(Ordering::Acquire), stacks, mode) {
                OwnerSlot::Owner(owner) => out.push(Claimed { addr: a, port: port as u16, mode, owner, remote: None }),
                OwnerSlot::Garbage => invalid += 1,
                _ => {}
            }
        }
    }
    for (i, t) in region.port_tuples().iter().enumerate() {
        if t.ctl.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let Some((ctl, local, remote)) = read_tuple(t) else {
            // Being written, or torn / scribbled.
            if t.ctl.load(Ordering::Relaxed) & 0xff != TUPLE_WRITING {
                invalid += 1;
            }
            continue;
        };
        let (_, reg, port, owner) = tuple_fields(ctl);
        let addr = Ipv4Addr::from(local as u32);
        let ok = addrs.get(reg).copied().flatten().filter(|(a, m)| *a == addr && *m == PortsMode::Tuple).is_some()
            && (local >> 32) as u16 == port
            && port_tuple_index(local, remote) == i;
        match (ok, classify(owner, stacks, PortsMode::Port)) {
            (true, OwnerSlot::Owner(o)) => {
                if only.is_none_or(|x| x == addr) {
                    out.push(Claimed { addr, port, mode: PortsMode::Tuple, owner: o, remote: Some(unpack_remote(remote)) });
                }
            }
            _ => invalid += 1,
        }
    }
    (out, invalid)
}

#[cfg(test)]
mod tests;

/// Turn `cluster_ports` on for `addr` at run time (`plex ctl ports enable`): claim its registry
/// row with `mode`. Every stack sees it at its next heartbeat, records the ports of the
/// connections it already has on the address ([`Registry::seed`]) and from then on takes its
/// ports there. Refused for an address that is not the cluster's (a configured DVIPA or one in
/// a VIPA range), one the config already gives `cluster_ports`, or one already enabled.
pub fn enable(region: &Region, cfg: &ClusterConfig, addr: Ipv4Addr, mode: PortsMode, now: u64) -> Result<(), String> {
    if cfg.dvipa_index(addr).is_none() && cfg.range_for(addr).is_none() {
        return Err(format!("{addr} is not a DVIPA of the cluster (configured, or in a vipa_range)"));
    }
    if cfg.ports_mode(addr).is_some() {
        return Err(format!("{addr} has cluster_ports in the config already"));
    }
    let a = u32::from(addr);
    let rows = region.port_registries();
    if rows.iter().any(|r| r.addr.load(Ordering::Acquire) == a) {
        return Err(format!("{addr} has cluster_ports on already"));
    }
    let start = port_registry_index(a);
    for k in 0..rows.len() {
        let r = &rows[(start + k) % rows.len()];
        if r.addr.compare_exchange(0, a, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            r.seeded_ns.store(now, Ordering::Release);
            r.mode.store(mode_code(mode), Ordering::Release);
            return Ok(());
        }
    }
    Err(format!("all {MAX_PORT_REGISTRIES} port registries of the coupling region are in use"))
}
