//! What `plex ctl` does with a region: read-only views of members and DVIPAs, and the
//! privileged commands (activate a range address on a stack, delete an active DVIPA).
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

/// Rows of the region that fail validation right now, per reason (`plex ctl show counters`).
pub fn invalid_rows(region: &Region, cfg: &ClusterConfig, now: u64) -> InvalidCounts {
    let mut c = InvalidCounts::default();
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
