//! The byte map of the coupling region: one source of truth, mirrored by `coupling/LAYOUT.md`
//! (a test checks that the document and these definitions agree).
//!
//! Every row is `#[repr(C)]` and made of fixed-width atomics only: no pointers, no padding the
//! compiler chooses, no `bool`. Offsets and sizes are asserted at compile time. A minor version
//! may only append (new sections, new fields in reserved space); a major version change
//! refuses to attach.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64};

/// "PLEXCPL1", little-endian: written last, with Release, when the creator has filled the header.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PLEXCPL1");
pub const MAJOR: u32 = 1;
pub const MINOR: u32 = 1;

/// Stacks per cluster; a stack's slot is its index in the cluster config.
pub const MAX_STACKS: usize = 16;
/// Configured (primary/backup) DVIPAs per cluster.
pub const MAX_DVIPAS: usize = 64;
/// Range (bind- or command-activated) DVIPAs: an open-addressing table keyed by address.
pub const MAX_RANGE_DVIPAS: usize = 256;
/// Messages in flight per ordered pair of stacks.
pub const RING_SLOTS: usize = 64;
/// Section table capacity (minor versions append sections here).
pub const MAX_SECTIONS: usize = 16;

/// "No stack" in an owner byte.
pub const NO_SLOT: u8 = 0xff;

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionKind {
    Members = 1,
    Dvipas = 2,
    RangeDvipas = 3,
    MessageRings = 4,
    /// Reserved for the distributor (spec/02): one row per distributed port.
    DistributorPorts = 5,
    /// Reserved for the distributor (spec/02): the connection routing table.
    DistributorConns = 6,
    /// Reserved for cluster-wide ports (spec/03).
    PortRegistry = 7,
    /// Reserved for frame forwarding between stacks through the region (spec/02).
    FrameRings = 8,
    /// Reserved for serialized TCP connections in flight (spec/04).
    HandoffRecords = 9,
}

impl SectionKind {
    pub const ALL: [SectionKind; 9] = [
        SectionKind::Members,
        SectionKind::Dvipas,
        SectionKind::RangeDvipas,
        SectionKind::MessageRings,
        SectionKind::DistributorPorts,
        SectionKind::DistributorConns,
        SectionKind::PortRegistry,
        SectionKind::FrameRings,
        SectionKind::HandoffRecords,
    ];

    pub fn from_u32(v: u32) -> Option<SectionKind> {
        SectionKind::ALL.into_iter().find(|k| *k as u32 == v)
    }

    /// Entry size and count this version lays out.
    pub const fn shape(self) -> (usize, usize) {
        match self {
            SectionKind::Members => (size_of::<MemberRow>(), MAX_STACKS),
            SectionKind::Dvipas => (size_of::<DvipaRow>(), MAX_DVIPAS),
            SectionKind::RangeDvipas => (size_of::<DvipaRow>(), MAX_RANGE_DVIPAS),
            SectionKind::MessageRings => (size_of::<RingRow>(), MAX_STACKS * MAX_STACKS),
            SectionKind::DistributorPorts => (64, 256),
            SectionKind::DistributorConns => (64, 16384),
            SectionKind::PortRegistry => (64, 4096),
            SectionKind::FrameRings => (4096, 1024),
            SectionKind::HandoffRecords => (4096, 256),
        }
    }
}

/// One entry of the section table.
#[repr(C)]
#[derive(Debug)]
pub struct SectionRow {
    pub kind: AtomicU32,
    pub entry_size: AtomicU32,
    pub offset: AtomicU64,
    pub count: AtomicU64,
}

/// The region header (offset 0).
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// [`MAGIC`], stored last by the creator (Release); attachers load it with Acquire.
    pub magic: AtomicU64,
    pub major: AtomicU32,
    pub minor: AtomicU32,
    /// Total bytes of the region file.
    pub region_len: AtomicU64,
    /// Hash of the cluster config that created the region: every member must run the same one.
    pub config_hash: AtomicU64,
    pub created_ns: AtomicU64,
    /// Join order counter: a joining stack takes the next value (fetch_add, AcqRel).
    pub join_seq: AtomicU64,
    /// Cluster name, NUL-padded bytes.
    pub name: [AtomicU64; 4],
    pub section_count: AtomicU32,
    pub _pad: AtomicU32,
    pub sections: [SectionRow; MAX_SECTIONS],
    pub _reserved: [AtomicU64; 5],
}

/// Member state (low byte of [`MemberRow::word`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MemberState {
    Free = 0,
    Up = 1,
    /// Declared failed by another stack (lease expired or process gone): fenced.
    Failed = 2,
    /// Left cleanly.
    Left = 3,
}

impl MemberState {
    pub fn from_u8(v: u8) -> MemberState {
        match v {
            1 => MemberState::Up,
            2 => MemberState::Failed,
            3 => MemberState::Left,
            _ => MemberState::Free,
        }
    }
}

/// One stack's membership slot.
#[repr(C)]
#[derive(Debug)]
pub struct MemberRow {
    /// `state:8 | incarnation (low 16 bits):16 | heartbeat_ms:40`. Renewal and failure
    /// declaration are both compare-and-swap on this word, so "renewed" and "declared failed"
    /// are linearised: a stalled stack learns it was fenced when its renewal fails.
    pub word: AtomicU64,
    pub incarnation: AtomicU64,
    pub pid: AtomicU32,
    pub ifindex: AtomicU32,
    pub mac: AtomicU64,
    pub lease_ms: AtomicU64,
    pub join_seq: AtomicU64,
    pub addr: AtomicU32,
    pub queues: AtomicU32,
    /// CLOCK_MONOTONIC ns at which the member was declared failed (0: never).
    pub failed_ns: AtomicU64,
    pub name: [AtomicU64; 4],
    pub iface: [AtomicU64; 2],
    pub joined_ns: AtomicU64,
    /// (minor 1) Rows this stack has ignored because they failed validation (its counter).
    pub ignored: AtomicU64,
}

/// DVIPA state (byte 2 of [`DvipaRow::owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DvipaState {
    /// Never activated, or released (a range address after its stack failed).
    Inactive = 0,
    Active = 1,
    /// The holder keeps it until its connections end, then gives it to the primary.
    DelayedGiveback = 2,
    /// Being moved from `prev` to `owner`: `prev` deactivates, then completes the move.
    Moving = 3,
    /// Deleted by the operator: not re-activated automatically.
    Deleted = 4,
}

impl DvipaState {
    pub fn from_u8(v: u8) -> DvipaState {
        match v {
            1 => DvipaState::Active,
            2 => DvipaState::DelayedGiveback,
            3 => DvipaState::Moving,
            4 => DvipaState::Deleted,
            _ => DvipaState::Inactive,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DvipaState::Inactive => "inactive",
            DvipaState::Active => "active",
            DvipaState::DelayedGiveback => "delayed-giveback",
            DvipaState::Moving => "moving",
            DvipaState::Deleted => "deleted",
        }
    }
}

/// How a DVIPA became active (byte 3 of [`DvipaRow::owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Origin {
    None = 0,
    /// Configured primary/backup: started, taken over or given back.
    Config = 1,
    /// An application's bind() inside a VIPA range.
    Bind = 2,
    /// `plex ctl dvipa activate`.
    Command = 3,
}

impl Origin {
    pub fn from_u8(v: u8) -> Origin {
        match v {
            1 => Origin::Config,
            2 => Origin::Bind,
            3 => Origin::Command,
            _ => Origin::None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Origin::None => "-",
            Origin::Config => "config",
            Origin::Bind => "bind",
            Origin::Command => "command",
        }
    }
}

/// Role value of a primary in [`DvipaRow::roles`] (above every backup rank).
pub const ROLE_PRIMARY: u16 = 256;
/// Rank of a primary waiting for a delayed giveback.
pub const ROLE_GIVEBACK: u16 = 255;

/// One DVIPA.
#[repr(C)]
#[derive(Debug)]
pub struct DvipaRow {
    /// `owner:8 | prev:8 | state:8 | origin:8 | generation:32`; changed only by CAS, and every
    /// change bumps the generation (a fenced stack's stale CAS fails).
    pub owner: AtomicU64,
    /// The address (u32 of the octets, big-endian order); 0 = unused range row.
    pub addr: AtomicU32,
    /// `prefix_len:8 | kind:8` (kind 1 configured, 2 range).
    pub prefix: AtomicU32,
    /// Connections on the address at its owner (published by the owner every tick).
    pub conns: AtomicU32,
    pub _pad: AtomicU32,
    /// CLOCK_MONOTONIC ns of the last ownership change.
    pub changed_ns: AtomicU64,
    /// The process that activated a range address.
    pub activator_pid: AtomicU64,
    /// Per stack slot: 0 none, 1..=254 backup rank, 255 primary awaiting a delayed giveback,
    /// 256 primary. Published by each stack for itself when it joins.
    pub roles: [AtomicU16; MAX_STACKS],
    /// Ownership changes since the region was created.
    pub moves: AtomicU64,
    /// (minor 1) The owner has announced the address (gratuitous ARP sent) for this owner word:
    /// [`announced_mark`] of `owner` and `generation`. `plex ctl dvipa activate` waits for it.
    pub announced: AtomicU64,
    pub _reserved: [AtomicU64; 5],
}

/// The value of [`DvipaRow::announced`] once stack `owner` has announced the address it holds
/// under owner-word generation `generation` (bit 63 set, so a zeroed row never matches).
pub const fn announced_mark(owner: u8, generation: u32) -> u64 {
    1 << 63 | (owner as u64) << 32 | generation as u64
}

/// The value of [`DvipaRow::announced`] while a command moves the address to stack `owner`
/// (owner word `generation`, state moving) and `owner` is watching for it: the holder may let
/// go, the new owner picks it up at its next turn (bit 62).
pub const fn ready_mark(owner: u8, generation: u32) -> u64 {
    1 << 62 | (owner as u64) << 32 | generation as u64
}

/// An SPSC message ring header, followed by its slots. Producer and consumer indices are on
/// separate cache lines.
#[repr(C)]
#[derive(Debug)]
pub struct RingRow {
    /// Next slot the consumer reads (written by the consumer, Release).
    pub head: AtomicU64,
    pub _pad0: [AtomicU64; 7],
    /// Next slot the producer writes (written by the producer, Release).
    pub tail: AtomicU64,
    pub _pad1: [AtomicU64; 7],
    pub slots: [MessageSlot; RING_SLOTS],
}

/// One message: `kind:16 | from_slot:8 | _:8 | from_incarnation:32` then 7 payload words.
#[repr(C)]
#[derive(Debug)]
pub struct MessageSlot {
    pub words: [AtomicU64; 8],
}

pub const HEADER_SIZE: usize = size_of::<Header>();

// Compile-time checks of the byte map (LAYOUT.md states the same numbers).
const _: () = {
    assert!(size_of::<SectionRow>() == 24);
    assert!(size_of::<Header>() == 512);
    assert!(core::mem::offset_of!(Header, sections) == 88);
    assert!(size_of::<MemberRow>() == 128);
    assert!(core::mem::offset_of!(MemberRow, failed_ns) == 56);
    assert!(core::mem::offset_of!(MemberRow, name) == 64);
    assert!(core::mem::offset_of!(MemberRow, iface) == 96);
    assert!(size_of::<DvipaRow>() == 128);
    assert!(core::mem::offset_of!(DvipaRow, roles) == 40);
    assert!(core::mem::offset_of!(DvipaRow, moves) == 72);
    assert!(core::mem::offset_of!(DvipaRow, announced) == 80);
    assert!(size_of::<MessageSlot>() == 64);
    assert!(core::mem::offset_of!(RingRow, tail) == 64);
    assert!(size_of::<RingRow>() == 128 + 64 * RING_SLOTS);
};

/// Where each section lives in a region of this version: sections follow the header in
/// [`SectionKind::ALL`] order, each aligned to 4096 bytes.
pub fn plan() -> (Vec<(SectionKind, usize, usize, usize)>, usize) {
    let mut off = 4096;
    let mut out = Vec::new();
    for k in SectionKind::ALL {
        let (size, count) = k.shape();
        out.push((k, size, off, count));
        off += (size * count).div_ceil(4096) * 4096;
    }
    (out, off)
}

/// Pack a short name into NUL-padded words.
pub fn pack_name<const N: usize>(s: &str) -> [u64; N] {
    let mut words = [0u64; N];
    for (i, b) in s.bytes().take(N * 8).enumerate() {
        words[i / 8] |= (b as u64) << ((i % 8) * 8);
    }
    words
}

pub fn unpack_name(words: &[u64]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).take_while(|b| *b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_truncate() {
        let w: [u64; 4] = pack_name("plx-s1");
        assert_eq!(unpack_name(&w), "plx-s1");
        let long = "x".repeat(40);
        let w: [u64; 4] = pack_name(&long);
        assert_eq!(unpack_name(&w), "x".repeat(32));
    }

    #[test]
    fn sections_do_not_overlap_and_are_page_aligned() {
        let (plan, len) = plan();
        let mut end = HEADER_SIZE;
        for (_, size, off, count) in plan {
            assert!(off >= end && off % 4096 == 0);
            end = off + size * count;
        }
        assert!(end <= len);
    }
}
