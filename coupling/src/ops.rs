//! What `plex ctl` does with a region: read-only views of members, DVIPAs and the
//! distributor's tables (`show dpt`, `show crt`: z/OS NETSTAT VDPT / VCRT), and the privileged
//! commands (activate a range address on a stack, delete an active DVIPA).
//! Commands are CAS on owner words like everything else; the stacks act on them in their
//! next tick.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use crate::check::{self, Invalid, InvalidCounts};
use crate::config::ClusterConfig;
use crate::layout::*;
use crate::node::{cas_owner, claim_range_row, find_range_row, hierarchy, member_up, RowRef};
use crate::region::Region;
use crate::words::{MemberWord, OwnerWord};

/// One member row as `plex ctl show members` prints it: the row's fields as read, whether or
/// not they validate (see [`MemberView::invalid`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The member slot (index of the stack in the config).
    pub slot: usize,
    /// Stack name from the row (`#<slot>` when the row has none).
    pub name: String,
    /// State from the member word.
    pub state: MemberState,
    /// Full incarnation number.
    pub incarnation: u64,
    /// Process id of the stack.
    pub pid: u32,
    /// The stack's MAC address.
    pub mac: [u8; 6],
    /// Interface name.
    pub iface: String,
    /// The stack's own address.
    pub addr: Ipv4Addr,
    /// Milliseconds since the last heartbeat.
    pub heartbeat_age_ms: u64,
    /// The lease the member runs with (ms).
    pub lease_ms: u64,
    /// The member's place in the join order.
    pub join_seq: u64,
    /// The row fails validation (shown, never trusted).
    pub invalid: Option<Invalid>,
    /// Rows the stack has ignored (its own counter, published in its row).
    pub ignored: u64,
}

/// One DVIPA as `plex ctl show dvipas` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DvipaView {
    /// The address.
    pub addr: Ipv4Addr,
    /// Its prefix length (the config's for a configured DVIPA, the row's for a range one).
    pub prefix: u8,
    /// A configured (primary/backup) DVIPA; false for a range address.
    pub configured: bool,
    /// Name of the stack holding it; `None` when nobody holds it or the owner word fails
    /// validation.
    pub owner: Option<String>,
    /// State from the owner word (as unpacked even when it fails validation).
    pub state: DvipaState,
    /// Origin from the owner word.
    pub origin: Origin,
    /// Names of the live stacks that may hold a configured DVIPA, in takeover order (the
    /// holder first); empty for a range address.
    pub hierarchy: Vec<String>,
    /// Connections on it at its holder (0 when not held).
    pub conns: u32,
    /// Generation of the owner word.
    pub generation: u32,
    /// Ownership changes since the region was created.
    pub moves: u64,
    /// The owner word fails validation.
    pub invalid: Option<Invalid>,
}

fn member_name(region: &Region, slot: u8) -> String {
    match region.members().get(slot as usize) {
        Some(m) => {
            let w: Vec<u64> = m.name.iter().map(|w| w.load(Ordering::Relaxed)).collect();
            let n = unpack_name(&w);
            if n.is_empty() { format!("#{slot}") } else { n }
        }
        None => "-".into(),
    }
}

/// Every member row that is not free, and every row that fails validation, in slot order.
/// `now` in CLOCK_MONOTONIC ns (for heartbeat ages and the validation).
pub fn members(region: &Region, cfg: &ClusterConfig, now: u64) -> Vec<MemberView> {
    region
        .members()
        .iter()
        .enumerate()
        .filter_map(|(slot, m)| {
            let raw = m.word.load(Ordering::Acquire);
            let w = MemberWord::unpack(raw);
            let invalid = check::member(region, cfg, slot, now).err();
            if raw == 0 && invalid.is_none() {
                return None;
            }
            let mac = m.mac.load(Ordering::Relaxed).to_le_bytes();
            let iface: Vec<u64> = m.iface.iter().map(|w| w.load(Ordering::Relaxed)).collect();
            Some(MemberView {
                slot,
                name: member_name(region, slot as u8),
                state: w.state,
                incarnation: m.incarnation.load(Ordering::Relaxed),
                pid: m.pid.load(Ordering::Relaxed),
                mac: [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]],
                iface: unpack_name(&iface),
                addr: Ipv4Addr::from(m.addr.load(Ordering::Relaxed)),
                heartbeat_age_ms: (now / 1_000_000).saturating_sub(w.heartbeat_ms),
                lease_ms: m.lease_ms.load(Ordering::Relaxed),
                join_seq: m.join_seq.load(Ordering::Relaxed),
                invalid,
                ignored: m.ignored.load(Ordering::Relaxed),
            })
        })
        .collect()
}

fn view(region: &Region, cfg: &ClusterConfig, r: RowRef, now: u64) -> DvipaView {
    let row = r.of(region);
    let (configured, addr, prefix) = match r {
        RowRef::Config(i) => (true, cfg.dvipas[i].addr, cfg.dvipas[i].prefix),
        RowRef::Range(_) => (false, Ipv4Addr::from(row.addr.load(Ordering::Acquire)), (row.prefix.load(Ordering::Relaxed) & 0xff) as u8),
    };
    let raw = row.owner.load(Ordering::Acquire);
    let checked = check::owner_word(cfg, configured, raw);
    let w = checked.unwrap_or(OwnerWord::unpack(raw));
    let ok = checked.is_ok();
    DvipaView {
        addr,
        prefix,
        configured,
        owner: (ok && w.held()).then(|| member_name(region, w.owner)),
        state: w.state,
        origin: w.origin,
        hierarchy: match r {
            RowRef::Config(i) => hierarchy(region, cfg, i, now).into_iter().map(|s| member_name(region, s)).collect(),
            RowRef::Range(_) => Vec::new(),
        },
        conns: if ok && w.held() { row.conns.load(Ordering::Relaxed) } else { 0 },
        generation: w.generation,
        moves: row.moves.load(Ordering::Relaxed),
        invalid: checked.err(),
    }
}

/// Every DVIPA the region knows: configured ones (published by a joined stack), then range
/// addresses ever activated. Range rows that fail validation are left out (see [`invalid_rows`]).
pub fn dvipas(region: &Region, cfg: &ClusterConfig, now: u64) -> Vec<DvipaView> {
    let mut out: Vec<DvipaView> = (0..cfg.dvipas.len())
        .filter(|i| region.dvipas()[*i].addr.load(Ordering::Acquire) != 0)
        .map(|i| view(region, cfg, RowRef::Config(i), now))
        .collect();
    let mut ranges: Vec<DvipaView> = (0..region.range_dvipas().len())
        .filter(|i| region.range_dvipas()[*i].addr.load(Ordering::Acquire) != 0 && check::range_row(region, cfg, *i).is_ok())
        .map(|i| view(region, cfg, RowRef::Range(i), now))
        .collect();
    ranges.sort_by_key(|v| v.addr);
    out.extend(ranges);
    out
}

/// One DPT row as `plex ctl show dpt` prints it (NETSTAT VDPT): what the router of a
/// distributed DVIPA knows of one target's listeners on one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DptView {
    /// The distributed DVIPA.
    pub addr: Ipv4Addr,
    /// The port.
    pub port: u16,
    /// The target stack's name.
    pub target: String,
    /// The stack that wrote the row (the router then).
    pub router: String,
    /// The router's epoch.
    pub epoch: u32,
    /// The row is from the DVIPA's current holder (rows of a former router are history).
    pub current: bool,
    /// Listeners the target reported.
    pub listeners: u32,
    /// Gets new connections: listening, not draining, up.
    pub ready: bool,
    /// Quiesced by its stack.
    pub draining: bool,
    /// The target failed.
    pub down: bool,
    /// The weight the router chooses by.
    pub weight: u32,
    /// Reported free accept-queue room.
    pub queue_free: u32,
    /// Reported poll-loop busy fraction, in thousandths.
    pub busy_permille: u32,
    /// Connections routed to the target on the DVIPA.
    pub conns: u32,
    /// New connections routed to it on this port.
    pub syns: u64,
    /// Last SRVSTAT sequence number applied.
    pub srvstat_seq: u64,
}

/// The heading of [`DptView`]'s `Display` rows.
pub const DPT_HEADING: &str = "DVIPA:PORT             TARGET     ROUTER     EPOCH  LSTN STATE    WEIGHT QFREE BUSY  CONNS   SYNS";

impl std::fmt::Display for DptView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.down {
            "down"
        } else if self.draining {
            "draining"
        } else if self.ready {
            "ready"
        } else {
            "closed"
        };
        let router = if self.current { self.router.clone() } else { format!("({})", self.router) };
        write!(
            f,
            "{:<22} {:<10} {:<10} {:>5} {:>5} {:<8} {:>6} {:>5} {:>3}% {:>6} {:>6}",
            format!("{}:{}", self.addr, self.port),
            self.target,
            router,
            self.epoch,
            self.listeners,
            state,
            self.weight,
            self.queue_free,
            self.busy_permille / 10,
            self.conns,
            self.syns
        )
    }
}

/// One CRT row as `plex ctl show crt` prints it (NETSTAT VCRT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrtView {
    /// The client.
    pub remote: std::net::SocketAddrV4,
    /// DVIPA:port.
    pub local: std::net::SocketAddrV4,
    /// The target stack's name.
    pub target: String,
    /// The router that made the entry.
    pub router: String,
    /// Its epoch.
    pub epoch: u32,
    /// The entry is the DVIPA's current holder's (others are hints a successor rebuilds from).
    pub current: bool,
    /// Milliseconds since the entry was made.
    pub age_ms: u64,
}

/// The heading of [`CrtView`]'s `Display` rows.
pub const CRT_HEADING: &str = "CLIENT                 DVIPA:PORT             TARGET     ROUTER     EPOCH      AGE";

impl std::fmt::Display for CrtView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let router = if self.current { self.router.clone() } else { format!("({})", self.router) };
        write!(f, "{:<22} {:<22} {:<10} {:<10} {:>5} {:>7}ms", self.remote.to_string(), self.local.to_string(), self.target, router, self.epoch, self.age_ms)
    }
}

/// The member slot that holds the configured DVIPA `addr` now (its owner word, validated).
pub fn holder_of(region: &Region, cfg: &ClusterConfig, addr: Ipv4Addr) -> Option<u8> {
    let i = cfg.dvipa_index(addr)?;
    let w = check::owner_word(cfg, true, region.dvipas()[i].owner.load(Ordering::Acquire)).ok()?;
    w.held().then_some(w.owner)
}

/// Every DPT row that validates, by DVIPA, port and target (rows that fail are counted by
/// [`invalid_rows`]).
pub fn dpt(region: &Region, cfg: &ClusterConfig) -> Vec<DptView> {
    let mut out: Vec<DptView> = (0..region.dpt().len())
        .filter_map(|i| crate::dist::dpt_row(region, cfg, i).ok().flatten())
        .map(|d| DptView {
            addr: d.addr,
            port: d.port,
            target: member_name(region, d.target),
            router: member_name(region, d.router),
            epoch: d.epoch,
            current: holder_of(region, cfg, d.addr) == Some(d.router),
            listeners: d.listeners,
            ready: d.flags & 1 != 0,
            draining: d.flags & 2 != 0,
            down: d.flags & 4 != 0,
            weight: d.weight,
            queue_free: d.queue_free,
            busy_permille: d.busy_permille,
            conns: d.conns,
            syns: d.syns,
            srvstat_seq: d.srvstat_seq,
        })
        .collect();
    out.sort_by(|a, b| (a.addr, a.port, &a.target).cmp(&(b.addr, b.port, &b.target)));
    out
}

/// Every CRT row that validates, by DVIPA:port and client. `now` for the ages.
pub fn crt(region: &Region, cfg: &ClusterConfig, now: u64) -> Vec<CrtView> {
    let mut out: Vec<CrtView> = (0..region.crt().len())
        .filter_map(|i| crate::dist::crt_row(region, cfg, i).ok().flatten())
        .map(|c| CrtView {
            remote: c.remote,
            local: c.local,
            target: member_name(region, c.target),
            router: member_name(region, c.router),
            epoch: c.epoch,
            current: holder_of(region, cfg, *c.local.ip()) == Some(c.router),
            age_ms: now.saturating_sub(c.created_ns) / 1_000_000,
        })
        .collect();
    out.sort_by_key(|a| (a.local, a.remote));
    out
}

/// `plex ctl show dpt` as lines: the heading, then one line per row.
pub fn dpt_lines(region: &Region, cfg: &ClusterConfig) -> Vec<String> {
    std::iter::once(DPT_HEADING.to_string()).chain(dpt(region, cfg).iter().map(|v| v.to_string())).collect()
}

/// `plex ctl show crt` as lines: the heading, then one line per row.
pub fn crt_lines(region: &Region, cfg: &ClusterConfig, now: u64) -> Vec<String> {
    std::iter::once(CRT_HEADING.to_string()).chain(crt(region, cfg, now).iter().map(|v| v.to_string())).collect()
}

/// One claimed port (or 4-tuple) of an address with `cluster_ports`, as `plex ctl show ports`
/// prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortsView {
    /// The address.
    pub addr: Ipv4Addr,
    /// The local port.
    pub port: u16,
    /// The address's mode.
    pub mode: crate::config::PortsMode,
    /// The owner's slot.
    pub slot: u8,
    /// The owner's stack name (from the config).
    pub stack: String,
    /// The owner's incarnation (low 24 bits).
    pub incarnation: u32,
    /// The owner is up with that incarnation; false: a dead owner's port awaiting reclaim.
    pub live: bool,
    /// The remote of a 4-tuple (tuple mode, connections); `None`: the port is owned outright.
    pub remote: Option<std::net::SocketAddrV4>,
}

/// The heading of [`PortsView`]'s `Display` rows.
pub const PORTS_HEADING: &str = "ADDRESS:PORT           REMOTE                 STACK      INC      STATE  MODE";

impl std::fmt::Display for PortsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let remote = self.remote.map_or("*".to_string(), |r| r.to_string());
        let state = if self.live { "live" } else { "dead" };
        let local = std::net::SocketAddrV4::new(self.addr, self.port);
        write!(f, "{:<22} {:<22} {:<10} {:<8} {:<6} {}", local.to_string(), remote, self.stack, self.incarnation, state, self.mode.name())
    }
}

/// Every claimed port and tuple of the cluster port registry (of `addr` only, when given),
/// by address, port and remote. A dead owner's ports (not up with that incarnation) show as
/// not live until a stack reclaims them. Words and rows that fail validation are left out.
pub fn ports_view(region: &Region, cfg: &ClusterConfig, addr: Option<Ipv4Addr>, now: u64) -> Vec<PortsView> {
    let (claimed, _) = crate::ports::claimed(region, cfg, addr);
    let mut incs: [Option<u32>; MAX_STACKS] = [None; MAX_STACKS];
    for (s, inc) in incs.iter_mut().enumerate().take(cfg.stacks.len()) {
        if let Ok(m) = check::member(region, cfg, s, now) {
            if m.word.state == MemberState::Up {
                *inc = Some((m.incarnation & 0xff_ffff) as u32);
            }
        }
    }
    let mut out: Vec<PortsView> = claimed
        .into_iter()
        .map(|c| PortsView {
            addr: c.addr,
            port: c.port,
            mode: c.mode,
            slot: c.owner.slot,
            stack: cfg.stacks.get(c.owner.slot as usize).map_or_else(|| format!("slot{}", c.owner.slot), |s| s.name.clone()),
            incarnation: c.owner.incarnation,
            live: incs.get(c.owner.slot as usize).copied().flatten() == Some(c.owner.incarnation),
            remote: c.remote,
        })
        .collect();
    out.sort_by_key(|v| (v.addr, v.port, v.remote));
    out
}

/// Per stack (by name, in slot order): (live ports and tuples, dead ones awaiting reclaim),
/// for the stacks that have any.
pub fn ports_counts(views: &[PortsView], cfg: &ClusterConfig) -> Vec<(String, usize, usize)> {
    let mut counts = [(0usize, 0usize); MAX_STACKS];
    for v in views {
        if let Some(c) = counts.get_mut(v.slot as usize) {
            if v.live {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }
    cfg.stacks.iter().zip(counts).filter(|(_, (l, d))| l + d > 0).map(|(s, (l, d))| (s.name.clone(), l, d)).collect()
}

/// `plex ctl show ports [ADDRESS]` as lines: the addresses with `cluster_ports` and their
/// mode, the heading, one line per claimed port or tuple, then the counts per stack.
pub fn ports_lines(region: &Region, cfg: &ClusterConfig, addr: Option<Ipv4Addr>, now: u64) -> Vec<String> {
    let mut out = Vec::new();
    let views = ports_view(region, cfg, addr, now);
    let mut regs: Vec<String> = region
        .port_registries()
        .iter()
        .map(|r| (Ipv4Addr::from(r.addr.load(Ordering::Acquire)), r.mode.load(Ordering::Acquire)))
        .filter(|(a, _)| !a.is_unspecified() && addr.is_none_or(|x| x == *a))
        .filter_map(|(a, m)| match (cfg.ports_mode(a), m) {
            (Some(m), _) => Some(format!("{a} ({})", m.name())),
            // Enabled at run time (`plex ctl ports enable`).
            (None, 1) => Some(format!("{a} (port, enabled at run time)")),
            (None, 2) => Some(format!("{a} (tuple, enabled at run time)")),
            _ => None,
        })
        .collect();
    regs.sort();
    out.push(format!("registries: {}", if regs.is_empty() { "none".to_string() } else { regs.join(", ") }));
    out.push(PORTS_HEADING.to_string());
    out.extend(views.iter().map(|v| v.to_string()));
    let counts = ports_counts(&views, cfg);
    out.push(String::new());
    out.push("STACK      LIVE     DEAD".to_string());
    for (name, live, dead) in counts {
        out.push(format!("{name:<10} {live:<8} {dead}"));
    }
    out
}

/// Rows of the region that fail validation right now, per reason (`plex ctl show counters`).
pub fn invalid_rows(region: &Region, cfg: &ClusterConfig, now: u64) -> InvalidCounts {
    let mut c = InvalidCounts::default();
    for i in 0..region.dpt().len() {
        if let Err(r) = crate::dist::dpt_row(region, cfg, i) {
            c.add(r);
        }
    }
    for i in 0..region.crt().len() {
        if let Err(r) = crate::dist::crt_row(region, cfg, i) {
            c.add(r);
        }
    }
    for slot in 0..region.members().len() {
        if let Err(r) = check::member(region, cfg, slot, now) {
            c.add(r);
        }
    }
    for i in 0..cfg.dvipas.len() {
        if region.dvipas()[i].addr.load(Ordering::Acquire) == 0 {
            continue;
        }
        if let Err(r) = check::configured_row(region, cfg, i) {
            c.add(r);
        }
        if let Err(r) = check::owner_word(cfg, true, region.dvipas()[i].owner.load(Ordering::Acquire)) {
            c.add(r);
        }
    }
    for i in 0..region.range_dvipas().len() {
        if region.range_dvipas()[i].addr.load(Ordering::Acquire) == 0 {
            continue;
        }
        match check::range_row(region, cfg, i) {
            Err(r) => c.add(r),
            Ok(_) => {
                if let Err(r) = check::owner_word(cfg, false, region.range_dvipas()[i].owner.load(Ordering::Acquire)) {
                    c.add(r);
                }
            }
        }
    }
    c
}

/// Why a `plex ctl` command was refused, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlError(pub String);

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CtlError {}

fn refuse(s: impl Into<String>) -> CtlError {
    CtlError(s.into())
}

/// `plex ctl dvipa activate ADDR --stack NAME`: activate a range address on a stack, taking it
/// from another stack if it is active there (that stack resets its connections).
pub fn activate(region: &Region, cfg: &ClusterConfig, addr: Ipv4Addr, stack: &str, now: u64) -> Result<String, CtlError> {
    if !region.writable() {
        return Err(refuse("the region is mapped read-only: activating needs privilege"));
    }
    if let Some(s) = cfg.stacks.iter().find(|s| s.addr == addr) {
        return Err(refuse(format!("{addr} is stack {}'s own address, not a DVIPA", s.name)));
    }
    if cfg.dvipa_index(addr).is_some() {
        return Err(refuse(format!("{addr} is a primary/backup DVIPA: it moves by takeover and giveback, not by command")));
    }
    let slot = cfg.slot(stack).ok_or_else(|| refuse(format!("no stack {stack:?} in the cluster config")))?;
    let range = cfg.range_for(addr).ok_or_else(|| refuse(format!("{addr} is outside every vipa_range")))?;
    if !range.stacks.contains(&slot) {
        return Err(refuse(format!("stack {stack} may not activate addresses of vipa_range {}/{}", range.net, range.prefix)));
    }
    let me = slot as u8;
    if !member_up(region, cfg, me, now) {
        return Err(refuse(format!("stack {stack} is not running")));
    }
    let i = claim_range_row(region, addr, range.prefix).ok_or_else(|| refuse("the range DVIPA table is full"))?;
    let row = &region.range_dvipas()[i];
    loop {
        let w = check::owner_word(cfg, false, row.owner.load(Ordering::Acquire))
            .map_err(|r| refuse(format!("{addr}: its row in the region is unreadable ({r}); the stacks repair it, try again")))?;
        let next = if w.held() && w.owner == me && w.state == DvipaState::Active {
            return Ok(format!("{addr} is already active on {stack}"));
        } else if w.held() && w.owner != me && member_up(region, cfg, w.owner, now) {
            w.next(me, w.owner, DvipaState::Moving, Origin::Command)
        } else {
            w.next(me, w.owner, DvipaState::Active, Origin::Command)
        };
        if cas_owner(row, w, next, now) {
            return Ok(if next.state == DvipaState::Moving {
                format!("{addr} moving from {} to {stack} (its connections there are reset)", member_name(region, w.owner))
            } else {
                format!("{addr} activated on {stack}")
            });
        }
    }
}

/// `plex ctl dvipa delete ADDR`: deactivate an active DVIPA; its owner resets its connections
/// and no other stack takes it over.
pub fn delete(region: &Region, cfg: &ClusterConfig, addr: Ipv4Addr, now: u64) -> Result<String, CtlError> {
    if !region.writable() {
        return Err(refuse("the region is mapped read-only: deleting needs privilege"));
    }
    let r = match cfg.dvipa_index(addr) {
        Some(i) => RowRef::Config(i),
        None => RowRef::Range(find_range_row(region, addr).ok_or_else(|| refuse(format!("{addr} is not a DVIPA of this cluster")))?),
    };
    let row = r.of(region);
    loop {
        let w = check::owner_word(cfg, matches!(r, RowRef::Config(_)), row.owner.load(Ordering::Acquire))
            .map_err(|e| refuse(format!("{addr}: its row in the region is unreadable ({e}); the stacks repair it, try again")))?;
        if !w.held() {
            return Err(refuse(format!("{addr} is not active ({})", w.state.name())));
        }
        let next = w.next(NO_SLOT, w.owner, DvipaState::Deleted, Origin::None);
        if cas_owner(row, w, next, now) {
            return Ok(format!("{addr} deleted from {} (its connections are reset)", member_name(region, w.owner)));
        }
    }
}

/// Where a command's activation of `addr` on stack `stack` stands: `Ok(true)` once that stack
/// owns the address and has announced it (gratuitous ARP sent); `Ok(false)` while the move is
/// on its way; an error when it will not happen (another command, a delete, the stack died).
pub fn activation_done(region: &Region, cfg: &ClusterConfig, addr: Ipv4Addr, stack: &str, now: u64) -> Result<bool, CtlError> {
    let slot = cfg.slot(stack).ok_or_else(|| refuse(format!("no stack {stack:?} in the cluster config")))? as u8;
    let i = find_range_row(region, addr).ok_or_else(|| refuse(format!("{addr} is not a DVIPA of this cluster")))?;
    let row = &region.range_dvipas()[i];
    let w = match check::owner_word(cfg, false, row.owner.load(Ordering::Acquire)) {
        Ok(w) => w,
        Err(_) => return Ok(false),
    };
    if !member_up(region, cfg, slot, now) {
        return Err(refuse(format!("stack {stack} is not running any more")));
    }
    match w.state {
        DvipaState::Moving if w.owner == slot => Ok(false),
        DvipaState::Active if w.owner == slot => Ok(row.announced.load(Ordering::Acquire) == announced_mark(slot, w.generation)),
        _ => Err(refuse(format!(
            "{addr} is now {} on {} (another command or stack changed it)",
            w.state.name(),
            if w.held() { member_name(region, w.owner) } else { "no stack".into() }
        ))),
    }
}

/// Where a drain of one stack stands (`plex ctl drain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainStatus {
    /// Sequence number of the last drain asked for.
    pub requested: u64,
    /// Sequence number of the last drain the stack finished.
    pub done: u64,
    /// Connections the current (or last) drain moved.
    pub moved: u64,
    /// Connections still to move.
    pub left: u64,
}

/// Ask stack `stack` to drain: move every connection on the cluster's distributed addresses to
/// stack `to` (or to the other live targets), taking no new ones. Returns the drain's sequence
/// number. Refused for an unknown stack, a stack that is not up, or `to` not up or the same.
pub fn drain(region: &Region, cfg: &ClusterConfig, stack: &str, to: Option<&str>, now: u64) -> Result<u64, String> {
    let slot = cfg.slot(stack).ok_or_else(|| format!("no stack {stack:?} in the cluster config"))?;
    if !member_up(region, cfg, slot as u8, now) {
        return Err(format!("stack {stack} is not up"));
    }
    let to_slot = match to {
        Some(t) => {
            let s = cfg.slot(t).ok_or_else(|| format!("--to {t:?}: no such stack in the cluster config"))?;
            if s == slot {
                return Err(format!("--to {t}: a stack cannot drain into itself"));
            }
            if !member_up(region, cfg, s as u8, now) {
                return Err(format!("--to {t}: that stack is not up"));
            }
            Some(s as u8)
        }
        None => None,
    };
    let row = region.member_commands().get(slot).ok_or("no command row for the stack (region too old)")?;
    loop {
        let cur = row.drain.load(Ordering::Acquire);
        let last = drain_request(cur).map_or(0, |r| r.0).max(row.drain_done.load(Ordering::Acquire));
        let seq = last + 1;
        if row.drain.compare_exchange(cur, drain_word(seq, to_slot), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return Ok(seq);
        }
    }
}

/// Where the drain of stack slot `slot` stands.
pub fn drain_status(region: &Region, slot: usize) -> Option<DrainStatus> {
    let row = region.member_commands().get(slot)?;
    Some(DrainStatus {
        requested: drain_request(row.drain.load(Ordering::Acquire)).map_or(0, |r| r.0),
        done: row.drain_done.load(Ordering::Acquire),
        moved: row.drain_moved.load(Ordering::Acquire),
        left: row.drain_left.load(Ordering::Acquire),
    })
}

/// `plex ctl show handoff`: the connection handoff slots that are in use (spec/04): per slot,
/// its state, source and target stacks, the connection, the record's size and the offer's age;
/// then how many slots are free. Read-only; a torn read shows as whatever it read (the stacks
/// validate before they act).
pub fn handoff_lines(region: &Region, cfg: &ClusterConfig, now: u64) -> Vec<String> {
    let name = |s: u64| cfg.stacks.get(s as usize).map_or_else(|| format!("#{s}"), |d| d.name.clone());
    let addr = |w: u64| std::net::SocketAddrV4::new(Ipv4Addr::from(w as u32), (w >> 32) as u16);
    let mut out = vec!["SLOT STATE     FROM       TO         LOCAL                  REMOTE                 BYTES    AGE(ms)".to_string()];
    let mut free = 0;
    for (i, row) in region.handoff_slots().iter().enumerate() {
        let ctl = row.ctl.load(Ordering::Acquire);
        let state = match HandoffState::from_u8(ctl as u8) {
            Some(HandoffState::Free) => {
                free += 1;
                continue;
            }
            Some(s) => format!("{s:?}").to_lowercase(),
            None => format!("bad({})", ctl as u8),
        };
        let offered = row.offered_ns.load(Ordering::Relaxed);
        let age = if offered == 0 || offered > now { "-".to_string() } else { format!("{:.1}", (now - offered) as f64 / 1e6) };
        out.push(format!(
            "{i:<4} {state:<9} {:<10} {:<10} {:<22} {:<22} {:<8} {age}",
            name((ctl >> 8) & 0xff),
            name((ctl >> 16) & 0xff),
            addr(row.local.load(Ordering::Relaxed)).to_string(),
            addr(row.remote.load(Ordering::Relaxed)).to_string(),
            row.len.load(Ordering::Relaxed),
        ));
    }
    out.push(format!("{free} of {} slots free", region.handoff_slots().len()));
    out
}
