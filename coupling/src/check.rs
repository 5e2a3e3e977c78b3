//! Validation of every row read from the region, before anything is decided from it.
//!
//! Anyone with write access can scribble over the region. A row that fails these checks is
//! *ignored* (never adopted) under a named [`Invalid`] reason, counted per reason. The checks
//! are stateless and shared by the node and `plex ctl`; the node adds what only an observer
//! over time can check (a member's incarnation and an owner word's generation never go back).
//!
//! What is checked:
//! - member rows: state byte known; a free row is all-zero; the word's incarnation bits match
//!   the incarnation; name, address and lease are the config's for that slot; the pid is a
//!   possible pid; the heartbeat is not in the future; the join number was handed out.
//! - DVIPA owner words: state and origin bytes known; owner and previous slot are stacks of the
//!   config (or "none" exactly when nobody holds it); configured rows never move by command
//!   and never carry a bind/command origin; range rows never wait for a delayed giveback.
//! - configured DVIPA rows: address and prefix are the config's; roles are the config's (or
//!   rank 255 for a primary awaiting a delayed giveback).
//! - range rows: the address lies in a configured range, the prefix is that range's, and the
//!   row is where the probe sequence for that address would put it.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use crate::config::ClusterConfig;
use crate::layout::*;
use crate::region::Region;
use crate::words::{MemberWord, OwnerWord};

/// Why a row was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invalid {
    /// Member: unknown state byte, or a "free" row with bits set.
    MemberState,
    /// Member: the word's incarnation bits differ from the incarnation, or it went back.
    MemberIncarnation,
    /// Member: name, address or lease differ from the config's for the slot.
    MemberIdentity,
    /// Member: pid 0 or above the kernel's limit.
    MemberPid,
    /// Member: heartbeat in the future, or join number never handed out.
    MemberClock,
    /// Member row of a slot the config does not have, not free.
    MemberOutsideConfig,
    /// Owner word: unknown state or origin byte, or an origin impossible for the row.
    OwnerState,
    /// Owner word: owner/prev not a stack of the config, or "none" while held.
    OwnerSlot,
    /// Owner word: the generation went back.
    OwnerGeneration,
    /// Configured DVIPA: address or prefix differ from the config.
    DvipaAddress,
    /// Configured DVIPA: a role differs from the config.
    DvipaRole,
    /// Range row: address outside every range, wrong prefix, or not where probing finds it.
    RangeRow,
    /// Message: unknown kind, bad sender, or a row index out of range.
    Message,
    /// Distributor port table row: key, router, flags or figures impossible for the config.
    DptRow,
    /// Connection routing table row: unknown state, torn or scribbled (check word), or a
    /// tuple, router or target impossible for the config.
    CrtRow,
}

impl Invalid {
    /// Every reason, in counter order (`Invalid::ALL[r as usize] == r`).
    pub const ALL: [Invalid; 15] = [
        Invalid::MemberState,
        Invalid::MemberIncarnation,
        Invalid::MemberIdentity,
        Invalid::MemberPid,
        Invalid::MemberClock,
        Invalid::MemberOutsideConfig,
        Invalid::OwnerState,
        Invalid::OwnerSlot,
        Invalid::OwnerGeneration,
        Invalid::DvipaAddress,
        Invalid::DvipaRole,
        Invalid::RangeRow,
        Invalid::Message,
        Invalid::DptRow,
        Invalid::CrtRow,
    ];
    /// The reason's name in logs and `plex ctl show counters` (`member-state`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Invalid::MemberState => "member-state",
            Invalid::MemberIncarnation => "member-incarnation",
            Invalid::MemberIdentity => "member-identity",
            Invalid::MemberPid => "member-pid",
            Invalid::MemberClock => "member-clock",
            Invalid::MemberOutsideConfig => "member-outside-config",
            Invalid::OwnerState => "owner-state",
            Invalid::OwnerSlot => "owner-slot",
            Invalid::OwnerGeneration => "owner-generation",
            Invalid::DvipaAddress => "dvipa-address",
            Invalid::DvipaRole => "dvipa-role",
            Invalid::RangeRow => "range-row",
            Invalid::Message => "message",
            Invalid::DptRow => "dpt-row",
            Invalid::CrtRow => "crt-row",
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Rows ignored, per reason: entry `r as usize` counts [`Invalid`] `r`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvalidCounts(pub [u64; Invalid::ALL.len()]);

impl InvalidCounts {
    /// Count one row ignored for `r`.
    pub fn add(&mut self, r: Invalid) {
        self.0[r as usize] += 1;
    }
    /// Rows ignored for `r` so far.
    pub fn get(&self, r: Invalid) -> u64 {
        self.0[r as usize]
    }
    /// Rows ignored for any reason (what a node publishes in
    /// [`MemberRow::ignored`](crate::layout::MemberRow::ignored)).
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// `reason=count` for every non-zero reason, space-separated; `none` when all are zero.
    pub fn summary(&self) -> String {
        let v: Vec<String> = Invalid::ALL.iter().filter(|r| self.get(**r) > 0).map(|r| format!("{}={}", r.name(), self.get(*r))).collect();
        if v.is_empty() { "none".into() } else { v.join(" ") }
    }
}

/// A member row that passed the checks: the fields the protocol decides from, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSeen {
    /// The member word (state, incarnation bits, heartbeat in ms).
    pub word: MemberWord,
    /// The full incarnation (0 only for a free row).
    pub incarnation: u64,
    /// The member's process id (0 only for a free row).
    pub pid: u32,
    /// Its place in the join order ([`MemberRow::join_seq`](crate::layout::MemberRow::join_seq)).
    pub join_seq: u64,
    /// CLOCK_MONOTONIC ns of its join.
    pub joined_ns: u64,
}

impl MemberSeen {
    /// Has the member renewed its lease since it joined, i.e. is its poll loop running (a
    /// stack joins before it attaches its interface, which takes a while)?
    pub fn ticking(&self) -> bool {
        self.word.heartbeat_ms > self.joined_ns / 1_000_000
    }
}

const PID_MAX: u32 = 1 << 22;

/// Check member row `slot` (stateless part). `now` in CLOCK_MONOTONIC ns. A free row of a
/// configured slot, and an all-zero row of a slot beyond the config, pass (as state `Free`).
/// Panics if `slot` is outside the region's member table ([`MAX_STACKS`] rows as created).
pub fn member(region: &Region, cfg: &ClusterConfig, slot: usize, now: u64) -> Result<MemberSeen, Invalid> {
    let row = &region.members()[slot];
    let raw = row.word.load(Ordering::Acquire);
    let incarnation = row.incarnation.load(Ordering::Relaxed);
    let seen = |w| MemberSeen {
        word: w,
        incarnation,
        pid: row.pid.load(Ordering::Relaxed),
        join_seq: row.join_seq.load(Ordering::Relaxed),
        joined_ns: row.joined_ns.load(Ordering::Relaxed),
    };
    if raw as u8 > MemberState::Left as u8 {
        return Err(Invalid::MemberState);
    }
    let w = MemberWord::unpack(raw);
    let Some(def) = cfg.stacks.get(slot) else {
        return if raw == 0 { Ok(seen(w)) } else { Err(Invalid::MemberOutsideConfig) };
    };
    if w.state == MemberState::Free {
        return if raw == 0 && incarnation == 0 { Ok(seen(w)) } else { Err(Invalid::MemberState) };
    }
    if incarnation == 0 || w.inc != incarnation as u16 {
        return Err(Invalid::MemberIncarnation);
    }
    let name: Vec<u64> = row.name.iter().map(|w| w.load(Ordering::Relaxed)).collect();
    if row.addr.load(Ordering::Relaxed) != u32::from(def.addr)
        || row.lease_ms.load(Ordering::Relaxed) != cfg.lease_ms
        || name[..] != pack_name::<4>(&def.name)[..]
    {
        return Err(Invalid::MemberIdentity);
    }
    let s = seen(w);
    if s.pid == 0 || s.pid > PID_MAX {
        return Err(Invalid::MemberPid);
    }
    if w.heartbeat_ms > now / 1_000_000 + cfg.lease_ms || s.join_seq == 0 || s.join_seq > region.header().join_seq.load(Ordering::Acquire) {
        return Err(Invalid::MemberClock);
    }
    Ok(s)
}

/// Check the raw owner word `raw` of a configured (`configured`) or range DVIPA row
/// (stateless part: whether its generation went back is the caller's check, with
/// [`generation_back`]).
pub fn owner_word(cfg: &ClusterConfig, configured: bool, raw: u64) -> Result<OwnerWord, Invalid> {
    let (state, origin) = ((raw >> 16) as u8, (raw >> 24) as u8);
    if state > DvipaState::Deleted as u8 || origin > Origin::Command as u8 {
        return Err(Invalid::OwnerState);
    }
    let w = OwnerWord::unpack(raw);
    let n = cfg.stacks.len();
    let held = matches!(w.state, DvipaState::Active | DvipaState::DelayedGiveback | DvipaState::Moving);
    let slot_ok = |s: u8| s == NO_SLOT || (s as usize) < n;
    if !slot_ok(w.prev) || (held && (w.owner as usize) >= n) || (!held && w.owner != NO_SLOT) {
        return Err(Invalid::OwnerSlot);
    }
    let origin_ok = match (configured, held) {
        (_, false) => w.origin == Origin::None,
        (true, true) => w.origin == Origin::Config && w.state != DvipaState::Moving,
        (false, true) => matches!(w.origin, Origin::Bind | Origin::Command) && w.state != DvipaState::DelayedGiveback,
    };
    if !origin_ok {
        return Err(Invalid::OwnerState);
    }
    Ok(w)
}

/// Check the fixed fields of configured row `i`: address, prefix, roles. A role of 0 for a
/// configured stack passes (that stack has not joined since the region was created), as does
/// rank 255 ([`ROLE_GIVEBACK`]) for the primary. Panics if the config has no DVIPA `i`.
pub fn configured_row(region: &Region, cfg: &ClusterConfig, i: usize) -> Result<(), Invalid> {
    let (row, d) = (&region.dvipas()[i], &cfg.dvipas[i]);
    if row.addr.load(Ordering::Acquire) != u32::from(d.addr) || row.prefix.load(Ordering::Relaxed) != d.prefix as u32 | 1 << 8 {
        return Err(Invalid::DvipaAddress);
    }
    for (s, role) in row.roles.iter().enumerate() {
        let v = role.load(Ordering::Acquire);
        if v != d.role_of(s) && !(s == d.primary && v == ROLE_GIVEBACK) && !(v == 0 && s < cfg.stacks.len()) {
            return Err(Invalid::DvipaRole);
        }
    }
    Ok(())
}

/// The role `slot` has for configured row `i`, validated: the row's value when it is the
/// config's or the primary's [`ROLE_GIVEBACK`], the config's otherwise (so a stack that has
/// not published its role yet counts with the config's). Panics if the config has no DVIPA
/// `i` or `slot` is not below [`MAX_STACKS`].
pub fn role(region: &Region, cfg: &ClusterConfig, i: usize, slot: usize) -> u16 {
    let d = &cfg.dvipas[i];
    let v = region.dvipas()[i].roles[slot].load(Ordering::Acquire);
    if v == d.role_of(slot) || (slot == d.primary && v == ROLE_GIVEBACK) {
        v
    } else {
        d.role_of(slot)
    }
}

/// Check range row `i` (in use: address not 0): returns its address and its range's prefix
/// length. A prefix still 0 passes (a claim in flight: the claimer stores it just after the
/// address). Panics if `i` is outside the region's range table ([`MAX_RANGE_DVIPAS`] rows as
/// created).
pub fn range_row(region: &Region, cfg: &ClusterConfig, i: usize) -> Result<(Ipv4Addr, u8), Invalid> {
    let row = &region.range_dvipas()[i];
    let addr = Ipv4Addr::from(row.addr.load(Ordering::Acquire));
    let range = cfg.range_for(addr).ok_or(Invalid::RangeRow)?;
    let prefix = row.prefix.load(Ordering::Acquire);
    // A claimer stores the prefix just after claiming the address: 0 there is a claim in flight.
    if prefix != range.prefix as u32 | 2 << 8 && prefix != 0 {
        return Err(Invalid::RangeRow);
    }
    if crate::node::find_range_row(region, addr) != Some(i) {
        return Err(Invalid::RangeRow);
    }
    Ok((addr, range.prefix))
}

/// Did the generation go back from `last` to `now`? Compared wrapping, as every CAS adds one:
/// `now` equal to `last` or up to `2^31 - 1` ahead of it is not back; anything else is.
pub fn generation_back(last: u32, now: u32) -> bool {
    now.wrapping_sub(last) > u32::MAX / 2
}
