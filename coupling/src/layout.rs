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
/// Layout major version, in [`Header::major`]. An attacher refuses a region of another major
/// version ([`RegionError::Version`](crate::region::RegionError::Version)): a major change is
/// one that a stack of the previous version could not read safely.
pub const MAJOR: u32 = 1;
/// Layout minor version, in [`Header::minor`]. Minor versions only append (sections, fields in
/// reserved space), so it is recorded but not checked: minor 1 added [`MemberRow::ignored`] and
/// [`DvipaRow::announced`], which read as zero in a minor-0 region; minor 2 gave the reserved
/// distributor sections their rows ([`DptRow`], [`CrtRow`]; same entry size, more DPT rows);
/// minor 3 appended the cluster port registry ([`SectionKind::PortOwners`],
/// [`SectionKind::PortTuples`]), superseding the reserved [`SectionKind::PortRegistry`];
/// minor 4 appended the connection handoff slots ([`SectionKind::HandoffSlots`]), superseding
/// the reserved [`SectionKind::HandoffRecords`]; minor 5 appended the operators' commands to
/// stacks ([`SectionKind::MemberCommands`]: drain).
pub const MINOR: u32 = 5;

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
/// Rows of the distributor's destination port table ([`DptRow`]): one per (distributed DVIPA,
/// port, target) ever reported.
pub const DPT_ROWS: usize = 1024;
/// Rows of the distributor's connection routing table ([`CrtRow`]): one per routed connection.
pub const CRT_ROWS: usize = 16384;

/// Port registries ([`PortRegistryRow`]): one per address with `cluster_ports` in use.
pub const MAX_PORT_REGISTRIES: usize = 16;
/// Rows of the 4-tuple table of `cluster_ports = "tuple"` addresses ([`PortTupleRow`]);
/// a power of two.
pub const PORT_TUPLE_ROWS: usize = 131072;

/// Connection handoff slots ([`HandoffSlotRow`]): transfers in flight at once, cluster-wide.
pub const HANDOFF_SLOTS: usize = 32;
/// Bytes of one [`HandoffSlotRow`] (header and record).
pub const HANDOFF_SLOT_BYTES: usize = 1 << 20;
/// Bytes of a [`HandoffSlotRow`]'s header (before [`HandoffSlotRow::data`]).
pub const HANDOFF_HEADER_BYTES: usize = 128;
/// The largest serialized connection a slot carries (bytes): the slot less its header.
pub const HANDOFF_MAX_RECORD: usize = HANDOFF_SLOT_BYTES - HANDOFF_HEADER_BYTES;

/// "No stack" in an owner byte.
pub const NO_SLOT: u8 = 0xff;

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionKind {
    /// [`MemberRow`]s, one per stack slot ([`MAX_STACKS`]); a stack's slot is its index in the
    /// cluster config.
    Members = 1,
    /// [`DvipaRow`]s of the configured (primary/backup) DVIPAs ([`MAX_DVIPAS`]); row `i` is the
    /// config's `i`-th `[[dvipa]]`.
    Dvipas = 2,
    /// [`DvipaRow`]s of range (bind- or command-activated) DVIPAs ([`MAX_RANGE_DVIPAS`]): an
    /// open-addressing table keyed by address; a row once claimed is never freed.
    RangeDvipas = 3,
    /// [`RingRow`]s, one per ordered pair of stack slots: the ring from `from` to `to` is entry
    /// `from * MAX_STACKS + to`.
    MessageRings = 4,
    /// (minor 2) The distributor's destination port table: [`DptRow`]s ([`DPT_ROWS`]), one per
    /// (distributed DVIPA, port, target), written by the DVIPA's router from its targets'
    /// reports (a published mirror of the router's table, for `plex ctl show dpt`).
    DistributorPorts = 5,
    /// (minor 2) The distributor's connection routing table: [`CrtRow`]s ([`CRT_ROWS`]), one per
    /// routed connection, written by the routers; a new router reads it only as a hint.
    DistributorConns = 6,
    /// Superseded and unused: reserved for cluster-wide ports before they were built (minor 3
    /// built them in [`SectionKind::PortOwners`] and [`SectionKind::PortTuples`]). Still laid
    /// out and zeroed, so regions of every minor version have the same section table prefix.
    PortRegistry = 7,
    /// Reserved for forwarding frames between stacks through the region (the distributor's
    /// path to a connection's stack; not built yet). Laid out and zeroed.
    FrameRings = 8,
    /// Superseded and unused: reserved for live connection handoff before it was built (minor
    /// 4 built it in [`SectionKind::HandoffSlots`]). Still laid out and zeroed, so regions of
    /// every minor version have the same section table prefix.
    HandoffRecords = 9,
    /// (minor 3) Cluster-wide ports (spec/03): [`PortRegistryRow`]s ([`MAX_PORT_REGISTRIES`]),
    /// one per address with `cluster_ports`, claimed by CAS of its address from 0 and never
    /// freed: an owner word per port and an advisory bitmap of the claimed ones.
    PortOwners = 10,
    /// (minor 3) The 4-tuple table of `cluster_ports = "tuple"` addresses: [`PortTupleRow`]s
    /// ([`PORT_TUPLE_ROWS`]), direct-mapped: a tuple lives only in row [`port_tuple_index`].
    PortTuples = 11,
    /// (minor 4) Live connection handoff (spec/04): [`HandoffSlotRow`]s ([`HANDOFF_SLOTS`]),
    /// each one serialized TCP connection in flight from its source stack to its target,
    /// claimed by CAS of its control word from free.
    HandoffSlots = 12,
    /// (minor 5) [`MemberCommandRow`]s, one per stack slot: commands an operator gives a
    /// running stack through `plex ctl` (drain: move every connection to another stack).
    MemberCommands = 13,
}

impl SectionKind {
    /// Every kind this version lays out, in the order [`plan`] places them (kind 1 first).
    pub const ALL: [SectionKind; 13] = [
        SectionKind::Members,
        SectionKind::Dvipas,
        SectionKind::RangeDvipas,
        SectionKind::MessageRings,
        SectionKind::DistributorPorts,
        SectionKind::DistributorConns,
        SectionKind::PortRegistry,
        SectionKind::FrameRings,
        SectionKind::HandoffRecords,
        SectionKind::PortOwners,
        SectionKind::PortTuples,
        SectionKind::HandoffSlots,
        SectionKind::MemberCommands,
    ];

    /// The kind of a section row's `kind` value; `None` for a value this version does not
    /// know (a section appended by a newer minor version, which readers skip).
    pub fn from_u32(v: u32) -> Option<SectionKind> {
        SectionKind::ALL.into_iter().find(|k| *k as u32 == v)
    }

    /// Entry size (bytes) and entry count this version lays out. An attacher requires the entry
    /// size of every known section to match exactly.
    pub const fn shape(self) -> (usize, usize) {
        match self {
            SectionKind::Members => (size_of::<MemberRow>(), MAX_STACKS),
            SectionKind::Dvipas => (size_of::<DvipaRow>(), MAX_DVIPAS),
            SectionKind::RangeDvipas => (size_of::<DvipaRow>(), MAX_RANGE_DVIPAS),
            SectionKind::MessageRings => (size_of::<RingRow>(), MAX_STACKS * MAX_STACKS),
            SectionKind::DistributorPorts => (size_of::<DptRow>(), DPT_ROWS),
            SectionKind::DistributorConns => (size_of::<CrtRow>(), CRT_ROWS),
            SectionKind::PortRegistry => (64, 4096),
            SectionKind::FrameRings => (4096, 1024),
            SectionKind::HandoffRecords => (4096, 256),
            SectionKind::PortOwners => (size_of::<PortRegistryRow>(), MAX_PORT_REGISTRIES),
            SectionKind::PortTuples => (size_of::<PortTupleRow>(), PORT_TUPLE_ROWS),
            SectionKind::HandoffSlots => (size_of::<HandoffSlotRow>(), HANDOFF_SLOTS),
            SectionKind::MemberCommands => (size_of::<MemberCommandRow>(), MAX_STACKS),
        }
    }
}

/// One entry of the section table.
#[repr(C)]
#[derive(Debug)]
pub struct SectionRow {
    /// A [`SectionKind`] as `u32`; unknown kinds (a newer minor version) are skipped.
    pub kind: AtomicU32,
    /// Bytes per entry; must equal this version's [`SectionKind::shape`] for a known kind.
    pub entry_size: AtomicU32,
    /// Byte offset of the section from the start of the region (4096-aligned as created;
    /// an attacher requires 64-aligned, past the header, inside the file).
    pub offset: AtomicU64,
    /// Number of entries.
    pub count: AtomicU64,
}

/// The region header (offset 0). Written once by the creator before [`Header::magic`] is
/// published; afterwards only [`Header::join_seq`] changes.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// [`MAGIC`], stored last by the creator (Release); attachers load it with Acquire.
    pub magic: AtomicU64,
    /// Layout major version ([`MAJOR`]); another value refuses the attach.
    pub major: AtomicU32,
    /// Layout minor version ([`MINOR`] of the creator); informative only.
    pub minor: AtomicU32,
    /// Total bytes of the region file.
    pub region_len: AtomicU64,
    /// Hash of the cluster config that created the region: every member must run the same one.
    pub config_hash: AtomicU64,
    /// CLOCK_MONOTONIC ns at which the creator initialised the region (0 for an anonymous one).
    pub created_ns: AtomicU64,
    /// Join order counter: a joining stack takes the next value (fetch_add, AcqRel).
    pub join_seq: AtomicU64,
    /// Cluster name, NUL-padded bytes.
    pub name: [AtomicU64; 4],
    /// Entries of [`Header::sections`] in use (at most [`MAX_SECTIONS`]).
    pub section_count: AtomicU32,
    /// Padding to align [`Header::sections`]; zero.
    pub _pad: AtomicU32,
    /// The section table: where each [`SectionKind`] lives.
    pub sections: [SectionRow; MAX_SECTIONS],
    /// Room for fields of later minor versions; zero.
    pub _reserved: [AtomicU64; 5],
}

/// Member state (low byte of [`MemberRow::word`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MemberState {
    /// Never joined: the whole row is zero.
    Free = 0,
    /// Joined and renewing its lease (the heartbeat in the word).
    Up = 1,
    /// Declared failed by another stack (lease expired or process gone): fenced.
    Failed = 2,
    /// Left cleanly.
    Left = 3,
}

impl MemberState {
    /// The state of a word's low byte. Unknown values read as `Free`: callers that must tell
    /// garbage apart check the byte first (as [`check::member`](crate::check) does).
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
    /// The full incarnation number, greater at every join of the slot; its low 16 bits are in
    /// [`MemberRow::word`]. A message or a pidfd names the incarnation it belongs to.
    pub incarnation: AtomicU64,
    /// Process id of the stack (for `plex ctl` and the pidfd that detects its exit).
    pub pid: AtomicU32,
    /// Index of the interface the stack runs on.
    pub ifindex: AtomicU32,
    /// The stack's MAC address in the low 6 bytes (little-endian byte order).
    pub mac: AtomicU64,
    /// The lease (ms) this member runs with: the config's `lease_ms`; a member whose heartbeat
    /// is older than this is declared failed.
    pub lease_ms: AtomicU64,
    /// The value of [`Header::join_seq`] this member took at its join: the tie-break after
    /// role in the takeover order (earlier joins first).
    pub join_seq: AtomicU64,
    /// The stack's own IPv4 address (u32 of the octets, big-endian order).
    pub addr: AtomicU32,
    /// Number of queues the stack polls.
    pub queues: AtomicU32,
    /// CLOCK_MONOTONIC ns at which the member was declared failed (0: never).
    pub failed_ns: AtomicU64,
    /// Stack name (as in the config), NUL-padded bytes.
    pub name: [AtomicU64; 4],
    /// Interface name, NUL-padded bytes.
    pub iface: [AtomicU64; 2],
    /// CLOCK_MONOTONIC ns of the member's last join.
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
    /// Held by the owner slot, which answers for it.
    Active = 1,
    /// The holder keeps it until its connections end, then gives it to the primary.
    DelayedGiveback = 2,
    /// Being moved from `prev` to `owner`: `prev` deactivates, then completes the move.
    Moving = 3,
    /// Deleted by the operator: not re-activated automatically.
    Deleted = 4,
}

impl DvipaState {
    /// The state of an owner word's state byte; unknown values read as `Inactive` (the
    /// validation in [`check`](crate::check) rejects them first).
    pub fn from_u8(v: u8) -> DvipaState {
        match v {
            1 => DvipaState::Active,
            2 => DvipaState::DelayedGiveback,
            3 => DvipaState::Moving,
            4 => DvipaState::Deleted,
            _ => DvipaState::Inactive,
        }
    }
    /// The state's name as `plex ctl` prints it (`delayed-giveback`, ...).
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
    /// Not held (inactive or deleted).
    None = 0,
    /// Configured primary/backup: started, taken over or given back.
    Config = 1,
    /// An application's bind() inside a VIPA range.
    Bind = 2,
    /// `plex ctl dvipa activate`.
    Command = 3,
}

impl Origin {
    /// The origin of an owner word's origin byte; unknown values read as `None` (the
    /// validation in [`check`](crate::check) rejects them first).
    pub fn from_u8(v: u8) -> Origin {
        match v {
            1 => Origin::Config,
            2 => Origin::Bind,
            3 => Origin::Command,
            _ => Origin::None,
        }
    }
    /// The origin's name as `plex ctl` prints it (`-` for none).
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
    /// Padding; zero.
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
    /// Room for fields of later minor versions; zero.
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
    /// Keeps [`RingRow::head`] and [`RingRow::tail`] on separate cache lines.
    pub _pad0: [AtomicU64; 7],
    /// Next slot the producer writes (written by the producer, Release).
    pub tail: AtomicU64,
    /// Pads the header to two cache lines.
    pub _pad1: [AtomicU64; 7],
    /// The messages; index `i` of the ring lives in slot `i % RING_SLOTS`.
    pub slots: [MessageSlot; RING_SLOTS],
}

/// One message: `kind:16 | from_slot:8 | _:8 | from_incarnation:32` then 7 payload words.
#[repr(C)]
#[derive(Debug)]
pub struct MessageSlot {
    /// Word 0 is the message header, words 1..8 its payload (see [`crate::ring::Message`]).
    pub words: [AtomicU64; 8],
}

/// One row of the destination port table: what the router of a distributed DVIPA knows of one
/// target's listeners on one port. Claimed by CAS of [`DptRow::key`] from 0 and never freed
/// (a target that stops listening keeps its row with 0 listeners). Written only by the DVIPA's
/// current router, under the seqlock [`DptRow::seq`] (odd while it writes); readers retry or
/// skip a row whose `seq` is odd or changed while they read it.
#[repr(C)]
#[derive(Debug)]
pub struct DptRow {
    /// Seqlock: odd while the router writes the row.
    pub seq: AtomicU64,
    /// `addr:32 | port:16 | target:8 | used:8` (used = 1); 0 = a free row.
    pub key: AtomicU64,
    /// Slot of the router that wrote the row.
    pub router: AtomicU32,
    /// That router's epoch (the DVIPA owner word's generation when it started routing).
    pub epoch: AtomicU32,
    /// Listeners the target reported on the port (absolute count).
    pub listeners: AtomicU32,
    /// Bit 0: ready (listening, not draining, up); bit 1: draining; bit 2: target down.
    pub flags: AtomicU32,
    /// The weight the router chooses by (configured for WRR, computed for server weight, 1).
    pub weight: AtomicU32,
    /// The target's free accept-queue room (its report).
    pub queue_free: AtomicU32,
    /// The target's poll-loop busy fraction, in thousandths (its report).
    pub busy_permille: AtomicU32,
    /// Connections routed to the target on the DVIPA (entries of the router's CRT).
    pub conns: AtomicU32,
    /// Sequence number of the last SRVSTAT applied (per sender; replays are ignored).
    pub srvstat_seq: AtomicU64,
    /// New connections (SYNs) routed to the target on this port by this router.
    pub syns: AtomicU64,
}

/// One row of the connection routing table: a TCP connection to a distributed DVIPA and the
/// target that holds it. Open addressing: a router claims any free row (probing from a hash of
/// the 5-tuple) by CAS of [`CrtRow::ctl`] from 0 to "writing", writes the fields, computes
/// [`CrtRow::check`], then stores `ctl` as live (Release); it deletes by CAS back to 0. Only the
/// router that wrote a row changes it, except that a new router of the same DVIPA adopts or
/// deletes the rows of its predecessor (CAS from the value it read). Readers load `ctl`
/// (Acquire), the fields, `ctl` again, and check `check`: a row that fails is ignored.
#[repr(C)]
#[derive(Debug)]
pub struct CrtRow {
    /// `state:8 | router:8 | target:8 | version:8 | epoch:32`; state 0 free, 1 writing, 2 live.
    pub ctl: AtomicU64,
    /// Client: `ip:32 | port:16 | protocol:8 | _:8` (protocol 6 = TCP).
    pub client: AtomicU64,
    /// Server side: `dvipa:32 | port:16 | _:16`.
    pub server: AtomicU64,
    /// The target's incarnation when the entry was made (a restarted target lost the flow).
    pub target_inc: AtomicU64,
    /// CLOCK_MONOTONIC ns when the router made the entry.
    pub created_ns: AtomicU64,
    /// [`crt_check`] of the other words: a torn or scribbled row fails it.
    pub check: AtomicU64,
    /// Room for fields of later minor versions; zero.
    pub _reserved: [AtomicU64; 2],
}

/// The check word of a CRT row: a hash of its live `ctl` and the other words.
pub const fn crt_check(ctl: u64, client: u64, server: u64, target_inc: u64, created_ns: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let words = [ctl, client, server, target_inc, created_ns];
    let mut i = 0;
    while i < words.len() {
        h ^= words[i];
        h = h.wrapping_mul(0x100_0000_01b3);
        h ^= h >> 29;
        i += 1;
    }
    h
}

/// One address's port registry (`cluster_ports`): who owns each of its 65536 ports. Claimed
/// by CAS of [`PortRegistryRow::addr`] from 0 (linear probing from [`port_registry_index`]),
/// never freed. A port changes hands only by CAS of its owner word (AcqRel): 0 -> owner
/// (claim), owner -> 0 (release, reclaim), owner -> owner (handoff), never through free.
#[repr(C)]
#[derive(Debug)]
pub struct PortRegistryRow {
    /// The address (u32 of the octets, big-endian order); 0 = a free row.
    pub addr: AtomicU32,
    /// 1 = one owner per port, 2 = one owner per 4-tuple (ports of explicit binds stay
    /// exclusive); stored by the claimer just after `addr` (0 while the claim is in flight).
    /// Informative: the config decides.
    pub mode: AtomicU32,
    /// CLOCK_MONOTONIC ns of the last seeding (existing connections recorded when
    /// `cluster_ports` was enabled at run time); 0 = never seeded.
    pub seeded_ns: AtomicU64,
    /// Room for fields of later minor versions; zero.
    pub _reserved: [AtomicU64; 2],
    /// Advisory: bit `p % 64` of word `p / 64` set = port `p` has an exclusive owner (it may
    /// lag the owner words; claims always decide by CAS of the owner word).
    pub bitmap: [AtomicU64; 1024],
    /// Per port: 0 free; `incarnation:24 | slot+1:8` (high bits first) an exclusive owner;
    /// `count:24 | 0xff:8` in tuple mode: `count` tuple rows use the port (no exclusive owner).
    pub owners: [AtomicU32; 65536],
}

/// Low byte of a tuple-mode owner word counting the tuple rows that use the port.
pub const PORT_SHARED: u32 = 0xff;

/// One 4-tuple claimed on a `cluster_ports = "tuple"` address. Direct-mapped: the tuple
/// lives only in row [`port_tuple_index`] of its local and remote words, so a CAS of
/// [`PortTupleRow::ctl`] from 0 makes the claim unique (another tuple in that row: the
/// claimer tries another port). The claimer CASes `ctl` 0 -> writing, stores `local`,
/// `remote` and `check`, then stores `ctl` live (Release); it frees with a CAS back to 0.
/// Readers load `ctl` (Acquire), the words, `ctl` again, and require `check`.
#[repr(C)]
#[derive(Debug)]
pub struct PortTupleRow {
    /// `state:8 | registry:8 | local_port:16 | owner:32` from the low bit up; state 0 free (the
    /// whole word 0), 1 writing, 2 live; `registry` is the index of the address's
    /// [`PortRegistryRow`] (so a reclaimer can undo the port's count even for a row left in
    /// writing state); `owner` as in [`PortRegistryRow::owners`].
    pub ctl: AtomicU64,
    /// `dvipa:32 | port:16 | _:16`.
    pub local: AtomicU64,
    /// `remote ip:32 | remote port:16 | _:16`.
    pub remote: AtomicU64,
    /// [`port_tuple_check`] of `local` and `remote`: a torn or scribbled row fails it.
    pub check: AtomicU64,
}

/// Where probing for the port registry of `addr` (u32 of the octets) starts.
pub const fn port_registry_index(addr: u32) -> usize {
    (addr.wrapping_mul(0x9e37_79b1) >> 28) as usize % MAX_PORT_REGISTRIES
}

/// The one row of [`SectionKind::PortTuples`] where the tuple (`local`, `remote`) (packed as
/// in [`PortTupleRow`]) may live.
pub const fn port_tuple_index(local: u64, remote: u64) -> usize {
    let mut h = (local ^ remote.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 31;
    h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^= h >> 32;
    (h as usize) & (PORT_TUPLE_ROWS - 1)
}

/// The check word of a tuple row (never 0, so a zeroed row never checks).
pub const fn port_tuple_check(local: u64, remote: u64) -> u64 {
    let h = crt_check(0x7475_706c, local, remote, 0, 0);
    if h == 0 { 1 } else { h }
}

/// States of a handoff slot (low byte of [`HandoffSlotRow::ctl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HandoffState {
    /// Unused: any stack may claim it (CAS to [`HandoffState::Writing`]).
    Free = 0,
    /// Its source is writing the header and the record.
    Writing = 1,
    /// Complete and offered to the target, which accepts or rejects it (or the source aborts).
    Offered = 2,
    /// The target accepted: it owns the connection (the commit point).
    Accepted = 3,
    /// The target rejected it ([`HandoffSlotRow::reason`]): the source keeps the connection.
    Rejected = 4,
    /// The source (or a reclaimer, for a dead source) gave up: the source keeps it.
    Aborted = 5,
}

impl HandoffState {
    /// The state of a control word's low byte; `None` for a value no version writes.
    pub fn from_u8(v: u8) -> Option<HandoffState> {
        Some(match v {
            0 => HandoffState::Free,
            1 => HandoffState::Writing,
            2 => HandoffState::Offered,
            3 => HandoffState::Accepted,
            4 => HandoffState::Rejected,
            5 => HandoffState::Aborted,
            _ => return None,
        })
    }
}

/// One connection in flight from one stack to another (spec/04). The source claims a free
/// slot by CAS of [`HandoffSlotRow::ctl`] (free -> writing, same generation), writes the header
/// words and the record, computes [`HandoffSlotRow::check`], then CASes writing -> offered
/// (Release). The target's CAS offered -> accepted is the commit point; offered -> rejected
/// (target) and offered -> aborted (source, or a reclaimer when the source died) are the other
/// ends. Whoever frees the slot CASes the settled word to free with the generation plus one.
/// Readers load `ctl` (Acquire), the header and the record, `ctl` again (same generation), and
/// require `check`: anything else is ignored and counted.
#[repr(C)]
#[derive(Debug)]
pub struct HandoffSlotRow {
    /// `state:8 | from:8 | to:8 | _:8 | generation:32` from the low bit up; changed only by CAS.
    pub ctl: AtomicU64,
    /// The transfer id ([`handoff_id`] of the slot's generation, index, source and target).
    pub id: AtomicU64,
    /// The source's full incarnation when it offered.
    pub from_inc: AtomicU64,
    /// The target's full incarnation the record is offered to.
    pub to_inc: AtomicU64,
    /// The connection's local end: `ip:32 | port:16 | _:16`.
    pub local: AtomicU64,
    /// The connection's remote end (the client): `ip:32 | port:16 | _:16`.
    pub remote: AtomicU64,
    /// Bytes of the record in [`HandoffSlotRow::data`] (at most [`HANDOFF_MAX_RECORD`]).
    pub len: AtomicU32,
    /// Bit 0: unconditional (the target installs without asking its application).
    pub flags: AtomicU16,
    /// The target's reject reason (stored before its CAS to rejected; 0 otherwise).
    pub reason: AtomicU16,
    /// CLOCK_MONOTONIC ns of the offer.
    pub offered_ns: AtomicU64,
    /// [`handoff_check`] of the header words and the record.
    pub check: AtomicU64,
    /// CLOCK_MONOTONIC ns of the decision (accepted, rejected, aborted); informative.
    pub decided_ns: AtomicU64,
    /// Room for fields of later minor versions; zero.
    pub _reserved: [AtomicU64; 6],
    /// The record: byte `i` is byte `i % 8` (little-endian) of word `i / 8`; the last word's
    /// bytes past `len` are zero.
    pub data: [AtomicU64; HANDOFF_MAX_RECORD / 8],
}

/// The transfer id of the slot at `index` claimed under `generation` by stack `from` for `to`:
/// `generation:32 | index:16 | from:8 | to:8` from the high bit down (unique while the slot's
/// generation does not wrap).
pub const fn handoff_id(generation: u32, index: usize, from: u8, to: u8) -> u64 {
    (generation as u64) << 32 | (index as u64 & 0xffff) << 16 | (from as u64) << 8 | to as u64
}

/// One step of [`handoff_check`]: fold word `w` into the hash `h`.
pub const fn handoff_check_step(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(0x100_0000_01b3);
    h ^ h >> 29
}

/// The check word of a handoff slot: [`handoff_check_step`] over the control word with its
/// state byte cleared, `id`, `from_inc`, `to_inc`, `local`, `remote`, `len | flags << 32`,
/// `offered_ns`, then the record's words (`ceil(len / 8)` of them); never 0.
pub fn handoff_check(header: [u64; 8], data: impl Iterator<Item = u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in header {
        h = handoff_check_step(h, w);
    }
    for w in data {
        h = handoff_check_step(h, w);
    }
    if h == 0 { 1 } else { h }
}

/// Commands `plex ctl` gives one stack (row `i` is slot `i`'s). A command is a request word
/// the operator stores (CAS from the value it read) with a sequence number one above the
/// last; the stack acts on a request whose sequence number is above the one in `done`, and
/// stores progress and then `done` when finished.
#[repr(C)]
#[derive(Debug)]
pub struct MemberCommandRow {
    /// Drain request: `seq:48 | to:8 | kind:8` from the high bits (kind 1 drain; `to` is the
    /// target slot plus one, 0 for "any other stack"); 0 = none ever.
    pub drain: AtomicU64,
    /// The sequence number of the last drain the stack finished (or gave up on).
    pub drain_done: AtomicU64,
    /// Connections moved away by the current (or last) drain.
    pub drain_moved: AtomicU64,
    /// Connections still here that the drain has yet to move (published every heartbeat).
    pub drain_left: AtomicU64,
    /// Room for fields and commands of later minor versions; zero.
    pub _reserved: [AtomicU64; 4],
}

/// A drain request word: sequence number `seq`, target slot `to` (`None`: any other stack).
pub const fn drain_word(seq: u64, to: Option<u8>) -> u64 {
    let t = match to {
        Some(t) => t as u64 + 1,
        None => 0,
    };
    seq << 16 | t << 8 | 1
}

/// The (sequence number, target slot) of a drain request word; `None` for no request or a
/// word that is not one.
pub const fn drain_request(w: u64) -> Option<(u64, Option<u8>)> {
    if w & 0xff != 1 {
        return None;
    }
    let t = (w >> 8) & 0xff;
    let to = if t == 0 { None } else { Some((t - 1) as u8) };
    Some((w >> 16, to))
}

/// Bytes of [`Header`] (512): no section may start before this offset.
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
    assert!(size_of::<DptRow>() == 64);
    assert!(core::mem::offset_of!(DptRow, srvstat_seq) == 48);
    assert!(size_of::<CrtRow>() == 64);
    assert!(size_of::<MemberCommandRow>() == 64);
    assert!(core::mem::offset_of!(CrtRow, check) == 40);
    assert!(size_of::<PortRegistryRow>() == 270_368);
    assert!(core::mem::offset_of!(PortRegistryRow, bitmap) == 32);
    assert!(core::mem::offset_of!(PortRegistryRow, owners) == 8224);
    assert!(size_of::<PortTupleRow>() == 32);
    assert!(core::mem::offset_of!(PortTupleRow, check) == 24);
    assert!(PORT_TUPLE_ROWS.is_power_of_two());
    assert!(size_of::<HandoffSlotRow>() == HANDOFF_SLOT_BYTES);
    assert!(core::mem::offset_of!(HandoffSlotRow, data) == HANDOFF_HEADER_BYTES);
    assert!(core::mem::offset_of!(HandoffSlotRow, check) == 64);
    assert!(HANDOFF_SLOTS <= 0xffff);
    assert!(SectionKind::ALL.len() <= MAX_SECTIONS);
};

/// Where each section lives in a region of this version: sections follow the header in
/// [`SectionKind::ALL`] order, each aligned to 4096 bytes. Returns
/// `(kind, entry size, offset, count)` per section and the total region length in bytes.
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

/// Pack a short name into `N` NUL-padded little-endian words, as the region stores names;
/// bytes beyond `N * 8` are cut off.
pub fn pack_name<const N: usize>(s: &str) -> [u64; N] {
    let mut words = [0u64; N];
    for (i, b) in s.bytes().take(N * 8).enumerate() {
        words[i / 8] |= (b as u64) << ((i % 8) * 8);
    }
    words
}

/// The name stored by [`pack_name`]: the bytes up to the first NUL, invalid UTF-8 replaced
/// (the region may hold anything).
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
