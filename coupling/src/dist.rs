//! The distributor (spec/02, the z/OS "Sysplex Distributor"): one address, many stacks, a
//! cluster-wide `SO_REUSEPORT` that loses no connection when its router dies.
//!
//! A configured DVIPA with `distribute = {..}` (see [`crate::config`]) has a *router*: the
//! stack that holds the address by the DVIPA protocol of [`crate::node`] (it answers ARP). The
//! *candidates* are the stacks of its target lists (the primary's `targets` and every backup's
//! `backup_targets`): they install the address as an *internal* address (accepted, never
//! answered in ARP) and answer clients directly. A candidate with a listener on a distributed
//! port is a *target*. The router keeps two tables, both in memory (authoritative for
//! [`Distributor::route`]) and mirrored into the coupling region for `plex ctl` and a successor:
//! - the DPT: `(DVIPA, port, target) -> {listeners, weight, draining, figures, last SRVSTAT
//!   seq}`, filled only from the targets' reports ([`DptRow`]);
//! - the CRT: `(client ip:port, DVIPA:port) -> {target, epoch}` ([`CrtRow`]).
//!
//! One [`Distributor`] per stack, beside its [`Node`], plays both parts (router of the
//! distributed DVIPAs the node holds, target of those it is a candidate of).
//!
//! ## Driving it (the poll loop)
//! - [`Distributor::new`] after [`Node::join`].
//! - [`Distributor::tick`] right after every [`Node::tick`] (every heartbeat), with the same
//!   `now`: it reads the node's distributor mail, starts and stops routing as the node gains
//!   and loses addresses, requests reports, finishes rebuilds, drops failed targets, sends
//!   what is queued and publishes the DPT.
//! - [`Distributor::poll`] at the top of every poll-loop turn, before frames are handled
//!   (cheap: it reads the rings through [`Node::poll_mail`] and sends what is queued), so a
//!   NEWCONN of a target's active open is routed before the reply to its SYN arrives.
//! - [`Distributor::route`] for every inbound TCP segment to an address of the stack's home
//!   list that is not its own: see [`Route`].
//! - Target side: [`Distributor::listeners`], [`Distributor::connection_opened`],
//!   [`Distributor::connection_closed`], [`Distributor::connection_moved`] (a connection
//!   handed off to another stack: no TERMCONN), [`Distributor::set_acceptance`],
//!   [`Distributor::set_draining`] as the stack reports them.
//! - [`Distributor::node_conns`] inside the `conns` closure given to [`Node::tick`]: a
//!   router only gives a distributed DVIPA back to its returning primary once the primary has
//!   rebuilt its tables.
//! - The [`DistAction`]s that `tick`, `poll` and `route` produce come out of `tick`/`poll` (or
//!   [`Distributor::drain_actions`]); apply them in order.
//! - [`Distributor::leave`] when the stack stops (after [`Node::leave`]).
//!
//! ```text
//! every turn:      dist.poll(ns, &mut node, &mut dacts); apply(dacts)
//! every heartbeat: node.tick(ns, &|a| dist.node_conns(a, stack.connections_on(a)), &mut acts)
//!                  apply(acts)   // see below for a distributed DVIPA's Deactivate
//!                  dist.tick(ns, &mut node, &mut dacts); apply(dacts)
//! inbound TCP to a home address that is a DVIPA:
//!     match dist.route(ns, dst, src, syn && !ack) {
//!         NotDistributed | Local => the stack handles it,
//!         Forward { slot }       => same frame, destination MAC := members()[slot].mac, transmit,
//!         Hold                   => drop silently,
//!         Reset                  => answer with a RST (RFC 9293 3.10.7.1) from the DVIPA,
//!     }
//! ```
//!
//! Applying what the node and the distributor say about a distributed DVIPA:
//! - [`DistAction::Candidate`]: add it as an internal address (steered to this stack, never
//!   answered in ARP). The node's `Activate` of it (this stack routes it) makes it answered in
//!   ARP as for any DVIPA; the node's `Deactivate` of it on a candidate
//!   ([`Distributor::is_candidate`]) must only make it internal again: its connections stay
//!   (they are this stack's as a target, routed by the next router). Only a non-candidate drops
//!   them as the `Deactivate` says.
//! - [`DistAction::FlowInstalled`] / [`DistAction::FlowRemoved`] / [`DistAction::RoutingStopped`]
//!   keep the XDP fast path's flow map (DVIPA:port, client) -> target slot equal to the
//!   router's CRT; `RoutingStopped` comes in the tick the node lets the address go, before its
//!   owner word moves, so the fast path is empty before another stack routes.
//!
//! ## Messages (multiplexed on the node's per-pair rings, kinds 16..=31; LAYOUT.md)
//! - SRVSTAT (target -> router): the *absolute* listener count on (DVIPA, port), draining and
//!   the acceptance figures, with the sender's sequence number: the router applies only a
//!   sequence number above the last it applied for that (port, target), so replays and
//!   duplicates are harmless. Sent when the count, draining or (at a tick) the figures change,
//!   and in every report.
//! - NEWCONN / TERMCONN (target -> router): a connection on the DVIPA exists / is freed.
//!   NEWCONN is sent for every connection installed (for an active open it makes the router
//!   route the replies here; for a passive one it confirms the entry the router made from the
//!   SYN) and in reports; TERMCONN for every connection retired. A holder handing a DVIPA
//!   back *relays* NEWCONN for every connection it routes (flag `relayed`, with the target,
//!   its incarnation and whether the target confirmed it). Both carry the sender's sequence
//!   number: a NEWCONN older than the TERMCONN that ended its flow, or a TERMCONN older than
//!   the NEWCONN of the flow now on that tuple, is a replay and ignored. Sequence numbers are
//!   per sender and compared only with the same target's: a NEWCONN from another candidate
//!   for a live flow is a *handoff* (spec/04, [`crate::handoff`]) and switches the flow to it
//!   (CRT row re-stored by CAS, [`DistAction::FlowInstalled`], `flows_moved`); the source
//!   sends no TERMCONN ([`Distributor::connection_moved`]), and a late TERMCONN from it names
//!   a target the flow no longer has and is ignored.
//! - ROUTER (router -> candidates): "I route DVIPA i at epoch e (or will: takeback), report
//!   to me": the takeover and takeback notice. A candidate answers with a full report:
//!   SRVSTAT for every listened port, NEWCONN for every connection on the DVIPA, then
//!   REPORT_DONE. A target also reports unasked to an owner it has not reported to yet.
//! - ROUTES_DONE (holder -> returning primary): every route relayed.
//! - TAKEBACK_READY (returning primary -> holder): rebuilt, give the address back.
//!
//! Targets send their reports to every *router* of the DVIPA: its holder by the owner word,
//! plus any stack that sent a ROUTER notice in the last `max(10 s, 4 * grace)` and is up (a
//! returning primary preparing a takeback). A message that does not fit in a full ring waits
//! in a per-destination outbox (SRVSTATs of the same port coalesce) and is pushed again at the
//! next `poll` or `tick`, in order: nothing is lost. An outbox to a stack that is declared
//! failed is dropped (its successor asks for a full report anyway).
//!
//! ## The router
//! Routing starts when the node holds the DVIPA (owner word: this stack, held; and the node
//! lists it active). The *epoch* is the owner word's generation then. Every start is a
//! rebuild: the router sends ROUTER to every live candidate and reads the region's CRT rows of
//! the DVIPA left by a previous router as *hints* (forwarded with, never authoritative). Until
//! every live candidate has answered REPORT_DONE, or `grace_ms` has passed, a segment of an
//! unknown flow that is not a SYN is *held* (dropped, the client retransmits), never reset.
//! Then unconfirmed hints are deleted, and an unknown non-SYN is answered with a reset.
//!
//! When the grace passes first, the hints of live candidates that have not reported yet stay
//! (forwarded with) until their REPORT_DONE comes; flows nobody knows are then reset.
//!
//! A new SYN picks among the ready targets of the router's own target list
//! ([`DistributeDef::targets_of`]): listening (by report), not draining, up. With none, the
//! router keeps it if it listens itself, holds it during a rebuild, or resets it. With the
//! CRT full (no free region row, or [`CRT_ROWS`] flows), likewise keep or reset (counted).
//! A connection the router keeps for itself this way has no entry: its later segments are
//! [`Route::Local`] because the router's own stack has the connection
//! ([`Distributor::connection_opened`]). An entry made from a SYN that its target never
//! confirms with a NEWCONN (it refused the SYN) expires after [`UNCONFIRMED_NS`] (after
//! [`UNCONFIRMED_PRESSED_NS`] while the CRT is three quarters full), so scans and SYN floods
//! do not fill the table for good.
//! Every forwarding decision checks the owner word first: a stack that does not hold the
//! DVIPA holds the segment instead of forwarding it, so two routers never forward one flow.
//!
//! A target declared failed (or rejoined with a new incarnation: its connections are gone) is
//! dropped from the DPT at its next tick; its flows answer [`Route::Reset`] (for a grace
//! period, then they are forgotten and answer reset as unknown flows).
//!
//! ## Takeover and takeback
//! Takeover: the node takes the DVIPA from a failed holder; the distributor starts routing
//! (rebuild above). Flows come back from the targets' NEWCONNs; new ones go to the backup's
//! own target list if it has one. Takeback: a primary that is up while another stack holds
//! its distributed DVIPA *prepares*: it sends ROUTER (takeback) to the candidates and the
//! holder; the holder relays NEWCONN for every flow it routes (and every new one from then
//! on) and ROUTES_DONE; once every live candidate has reported and the routes are in, the
//! primary sends TAKEBACK_READY. Only then does [`Distributor::node_conns`] let the holder's
//! node give the address back (delayed giveback until then); the holder stops routing as its
//! node deactivates the address, one tick before the owner word moves; the primary starts
//! routing (with its prepared tables, and a rebuild window for stragglers).
//! Targets send TERMCONN to the holder and the preparing primary alike; a relayed NEWCONN for
//! a flow its target already terminated is ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::check::{self, Invalid, InvalidCounts};
use crate::config::{ClusterConfig, DistMethod, DistributeDef};
use crate::layout::*;
use crate::node::{Live, Node};
use crate::region::Region;
use crate::ring::{Message, Producer, PAYLOAD_WORDS};
use crate::words::OwnerWord;

/// Distributor message kinds (payloads in LAYOUT.md).
pub mod kind {
    /// Target -> router: absolute listener count on (DVIPA, port), sequence number, figures.
    pub const SRVSTAT: u16 = 16;
    /// Target -> router (or holder -> returning primary, relayed): a connection exists.
    pub const NEWCONN: u16 = 17;
    /// Target -> router: a connection was freed.
    pub const TERMCONN: u16 = 18;
    /// Router -> candidates: takeover / takeback notice, "report to me".
    pub const ROUTER: u16 = 19;
    /// Candidate -> router: the report asked for is complete.
    pub const REPORT_DONE: u16 = 20;
    /// Holder -> returning primary: every route relayed.
    pub const ROUTES_DONE: u16 = 21;
    /// Returning primary -> holder: rebuilt; give the address back.
    pub const TAKEBACK_READY: u16 = 22;
}

/// TCP, in CRT rows.
const PROTO_TCP: u64 = 6;
/// CRT `ctl` states.
const CRT_FREE: u8 = 0;
const CRT_WRITING: u8 = 1;
const CRT_LIVE: u8 = 2;
/// Until a target reports acceptance figures, it counts as this much free accept-queue room.
pub const DEFAULT_QUEUE_FREE: u32 = 128;

/// What to do with an inbound TCP segment, from [`Distributor::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Not a distributed flow here: the stack handles it as ordinary traffic (not a DVIPA this
    /// stack routes, or a port that is not distributed and no CRT entry).
    NotDistributed,
    /// This stack (the router) is the flow's target: handle it locally.
    Local,
    /// Send the frame unchanged to this member (destination MAC rewritten to its row's MAC).
    Forward {
        /// The target's member slot.
        slot: u8,
    },
    /// Drop it silently (never a reset): the router is rebuilding its tables after a takeover
    /// or takeback, or does not hold the address right now. The client retransmits.
    Hold,
    /// Answer with a reset (RFC 9293 3.10.7.1): a non-SYN of an unknown flow outside a
    /// rebuild, a flow of a failed target, or a SYN nobody can take.
    Reset,
}

/// What the stack must do, from [`Distributor::tick`] / [`Distributor::poll`]; apply in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DistAction {
    /// Install `addr` as an *internal* address: accept packets to it, never answer ARP for it
    /// (this stack is a candidate target). If the node also activates it (this stack becomes
    /// its router) it is answered in ARP while held; when the node deactivates it again it
    /// must fall back to internal, keeping its connections (see [`Distributor::is_candidate`]).
    Candidate {
        /// The distributed DVIPA.
        addr: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Stop accepting `addr` as an internal address (the stack left the cluster).
    NotCandidate {
        /// The distributed DVIPA.
        addr: Ipv4Addr,
    },
    /// This stack routes `addr` from now on (its flows follow as [`DistAction::FlowInstalled`]).
    RoutingStarted {
        /// The distributed DVIPA.
        addr: Ipv4Addr,
        /// The router's epoch (owner-word generation).
        epoch: u32,
    },
    /// This stack no longer routes `addr`: remove every flow of it from the fast path.
    RoutingStopped {
        /// The distributed DVIPA.
        addr: Ipv4Addr,
    },
    /// Route this flow to `target` in the fast path (XDP map): `local` is DVIPA:port.
    FlowInstalled {
        /// DVIPA:port.
        local: SocketAddrV4,
        /// The client.
        remote: SocketAddrV4,
        /// Target member slot (may be this stack).
        target: u8,
    },
    /// Remove this flow from the fast path (its segments come to [`Distributor::route`]).
    FlowRemoved {
        /// DVIPA:port.
        local: SocketAddrV4,
        /// The client.
        remote: SocketAddrV4,
    },
}

/// Counters of one distributor (only it writes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DistStats {
    /// SYNs routed to another member.
    pub syns_forwarded: u64,
    /// SYNs routed to this stack.
    pub syns_local: u64,
    /// SYNs the router's XDP program sent to a target itself (SYN steering), counted when the
    /// target's NEWCONN for the new connection arrives.
    pub syns_steered: u64,
    /// SYNs reset: no target and the router does not listen.
    pub syns_reset: u64,
    /// SYNs held during a rebuild with no target known yet.
    pub syns_held: u64,
    /// SYNs that found the CRT full (kept locally or reset).
    pub crt_full: u64,
    /// Segments routed by [`Route::Forward`] (including SYNs).
    pub forwarded: u64,
    /// Segments forwarded on a hint of a previous router during a rebuild.
    pub hint_forwards: u64,
    /// Segments held ([`Route::Hold`]).
    pub held: u64,
    /// Segments answered with a reset (unknown flow, failed target).
    pub resets: u64,
    /// Of which: flows of a failed target.
    pub resets_dead_target: u64,
    /// Messages read (valid or not).
    pub messages_in: u64,
    /// Messages pushed into rings.
    pub messages_out: u64,
    /// Pushes that found the ring full (the message waits in the outbox).
    pub ring_full: u64,
    /// SRVSTATs ignored as replays (sequence number not above the last applied).
    pub srvstat_replays: u64,
    /// Reports from stacks that are not candidates of the DVIPA (ignored).
    pub not_candidate: u64,
    /// Rebuilds started (start, takeover, takeback).
    pub rebuilds: u64,
    /// Rebuilds that ended by the grace timer (a candidate did not answer).
    pub rebuild_timeouts: u64,
    /// Takebacks prepared to the end (TAKEBACK_READY sent).
    pub takebacks_prepared: u64,
    /// Routes relayed to a returning primary.
    pub routes_relayed: u64,
    /// NEWCONNs and TERMCONNs ignored as replays (older than what the router applied).
    pub conn_replays: u64,
    /// Relayed NEWCONNs ignored (flow already terminated by its target).
    pub relays_ignored: u64,
    /// TERMCONNs naming another target than the flow's (a late one from the stack a flow
    /// moved away from, or garbage): ignored.
    pub conflicts: u64,
    /// Flows switched to another target: a NEWCONN from a stack other than the flow's
    /// target (the connection was handed off to it, spec/04; the report wins), or
    /// [`Distributor::connection_moved`] on the router itself.
    pub flows_moved: u64,
    /// Targets dropped because they failed.
    pub targets_failed: u64,
    /// DPT rows that could not be published (table full).
    pub dpt_full: u64,
    /// Entries made from a SYN that their target never confirmed, expired.
    pub unconfirmed_expired: u64,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    target: u8,
    target_inc: u64,
    created_ns: u64,
    /// Region row and the ctl value we (or the previous router, for a hint) stored there.
    row: Option<(u32, u64)>,
    /// From a previous router's row, not yet confirmed by a report.
    hint: bool,
    /// Its target failed at this time (answers reset).
    dead_since: Option<u64>,
    /// Sequence number of the target's last NEWCONN about it (0: routed from a SYN).
    seq: u64,
    /// Its target reported it (NEWCONN): an entry made from a SYN that no report confirms
    /// expires (the target refused the SYN), see [`UNCONFIRMED_NS`].
    confirmed: bool,
}

/// An entry the router made from a SYN and its target never confirmed (NEWCONN) is forgotten
/// after this long (the target refused the SYN, or the client gave up): SYN-ACK retransmission
/// takes up to about half a minute. Under pressure (CRT three quarters full) after
/// [`UNCONFIRMED_PRESSED_NS`].
pub const UNCONFIRMED_NS: u64 = 30_000_000_000;
/// The expiry of unconfirmed entries while the CRT is three quarters full.
pub const UNCONFIRMED_PRESSED_NS: u64 = 1_000_000_000;
/// A router looks over its flows for expired entries this often (and at once when a member's
/// liveness changes).
pub const SCAN_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Stat {
    listeners: u32,
    seq: u64,
    inc: u64,
    queue_free: u32,
    busy_permille: u16,
    draining: bool,
    syns: u64,
    row: Option<u32>,
    dirty: bool,
}

/// Routing (or preparing to route, for a takeback) one distributed DVIPA.
#[derive(Debug)]
struct Router {
    addr: Ipv4Addr,
    /// Routing (holds the address) or preparing a takeback.
    active: bool,
    epoch: u32,
    /// Rebuilding: hold unknown non-SYNs until `grace_until` or every candidate reported.
    rebuilding: bool,
    grace_until: u64,
    waiting: BTreeSet<u8>,
    /// Preparing: the holder we take the address back from, and whether its routes are in.
    holder: Option<u8>,
    routes_done: bool,
    ready_sent: bool,
    /// Holding: the returning primary we relay routes to, and whether it said it is ready.
    handover_to: Option<u8>,
    ready: bool,
    dpt: BTreeMap<(u16, u8), Stat>,
    flows: HashMap<(SocketAddrV4, SocketAddrV4), Flow>,
    conns: [u32; MAX_STACKS],
    rr_last: BTreeMap<u16, u8>,
    wrr: BTreeMap<(u16, u8), i64>,
    /// Flows their target terminated recently: (target, when, its sequence number and
    /// incarnation in the TERMCONN).
    terminated: HashMap<(SocketAddrV4, SocketAddrV4), (u8, u64, u64, u64)>,
    /// When the flows were last scanned for failed targets and expired entries.
    scanned_ns: u64,
    /// Region rows of a previous router to delete when the rebuild ends.
    stale_rows: Vec<(u32, u64)>,
}

impl Router {
    fn new(addr: Ipv4Addr) -> Router {
        Router {
            addr,
            active: false,
            epoch: 0,
            rebuilding: false,
            grace_until: 0,
            waiting: BTreeSet::new(),
            holder: None,
            routes_done: false,
            ready_sent: false,
            handover_to: None,
            ready: false,
            dpt: BTreeMap::new(),
            flows: HashMap::new(),
            conns: [0; MAX_STACKS],
            rr_last: BTreeMap::new(),
            wrr: BTreeMap::new(),
            terminated: HashMap::new(),
            scanned_ns: 0,
            stale_rows: Vec::new(),
        }
    }
}

/// What a target last told about (DVIPA row, port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Srv {
    listeners: u32,
    draining: bool,
    queue_free: u32,
    busy_permille: u16,
}

fn client_word(c: SocketAddrV4) -> u64 {
    u32::from(*c.ip()) as u64 | (c.port() as u64) << 32 | PROTO_TCP << 48
}

fn server_word(s: SocketAddrV4) -> u64 {
    u32::from(*s.ip()) as u64 | (s.port() as u64) << 32
}

fn unpack_sock(w: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(w as u32), (w >> 32) as u16)
}

fn crt_ctl(state: u8, router: u8, target: u8, epoch: u32) -> u64 {
    state as u64 | (router as u64) << 8 | (target as u64) << 16 | (epoch as u64) << 32
}

fn crt_start(local: SocketAddrV4, remote: SocketAddrV4) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_word(remote).to_le_bytes().into_iter().chain(server_word(local).to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    (h % CRT_ROWS as u64) as usize
}

/// A CRT row that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrtSeen {
    /// The raw `ctl` word read.
    pub ctl: u64,
    /// DVIPA:port.
    pub local: SocketAddrV4,
    /// The client.
    pub remote: SocketAddrV4,
    /// Slot of the router that wrote it.
    pub router: u8,
    /// Target slot.
    pub target: u8,
    /// That router's epoch.
    pub epoch: u32,
    /// The target's incarnation at the entry.
    pub target_inc: u64,
    /// When it was made.
    pub created_ns: u64,
}

/// Read and check CRT row `idx`: `Ok(None)` for a free row or one being written, `Ok(Some)`
/// for a live row that validates, `Err` (a named reason) otherwise. Panics if `idx` is not
/// below the region's CRT length.
pub fn crt_row(region: &Region, cfg: &ClusterConfig, idx: usize) -> Result<Option<CrtSeen>, Invalid> {
    let row = &region.crt()[idx];
    let ctl = row.ctl.load(Ordering::Acquire);
    match ctl as u8 {
        CRT_FREE if ctl == 0 => return Ok(None),
        CRT_WRITING => return Ok(None),
        CRT_LIVE => {}
        _ => return Err(Invalid::CrtRow),
    }
    let (client, server) = (row.client.load(Ordering::Relaxed), row.server.load(Ordering::Relaxed));
    let (inc, created) = (row.target_inc.load(Ordering::Relaxed), row.created_ns.load(Ordering::Relaxed));
    let check = row.check.load(Ordering::Relaxed);
    if row.ctl.load(Ordering::Acquire) != ctl {
        // Changed while we read: not garbage, just not readable now.
        return Ok(None);
    }
    if check != crt_check(ctl, client, server, inc, created) || client >> 48 != PROTO_TCP {
        return Err(Invalid::CrtRow);
    }
    let (router, target, epoch) = ((ctl >> 8) as u8, (ctl >> 16) as u8, (ctl >> 32) as u32);
    let local = unpack_sock(server);
    let n = cfg.stacks.len();
    let distributed = cfg.dvipa_index(*local.ip()).and_then(|i| cfg.dvipas[i].distribute.as_ref()).is_some();
    if router as usize >= n || target as usize >= n || !distributed || (ctl >> 24) as u8 != 0 {
        return Err(Invalid::CrtRow);
    }
    Ok(Some(CrtSeen { ctl, local, remote: unpack_sock(client & 0xffff_ffff_ffff), router, target, epoch, target_inc: inc, created_ns: created }))
}

/// The DPT key of (DVIPA, port, target).
/// See [`Distributor::conn_payload`].
const NEWCONN_PASSIVE_OPEN: u64 = 2;

fn dpt_key(addr: Ipv4Addr, port: u16, target: u8) -> u64 {
    u32::from(addr) as u64 | (port as u64) << 32 | (target as u64) << 48 | 1 << 56
}

/// A DPT row that passed validation (read under its seqlock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DptSeen {
    /// The distributed DVIPA.
    pub addr: Ipv4Addr,
    /// The port.
    pub port: u16,
    /// Target slot.
    pub target: u8,
    /// Slot of the router that wrote it.
    pub router: u8,
    /// That router's epoch.
    pub epoch: u32,
    /// Listeners reported.
    pub listeners: u32,
    /// `flags` (bit 0 ready, 1 draining, 2 target down).
    pub flags: u32,
    /// Weight chosen by.
    pub weight: u32,
    /// Reported free accept-queue room.
    pub queue_free: u32,
    /// Reported busy fraction, thousandths.
    pub busy_permille: u32,
    /// Connections routed to the target on the DVIPA.
    pub conns: u32,
    /// Last SRVSTAT sequence number applied.
    pub srvstat_seq: u64,
    /// SYNs routed to the target on this port.
    pub syns: u64,
}

/// Read and check DPT row `idx`: `Ok(None)` for a free row or one being written.
pub fn dpt_row(region: &Region, cfg: &ClusterConfig, idx: usize) -> Result<Option<DptSeen>, Invalid> {
    let row = &region.dpt()[idx];
    let s0 = row.seq.load(Ordering::Acquire);
    let key = row.key.load(Ordering::Acquire);
    if key == 0 {
        return Ok(None);
    }
    if s0 & 1 == 1 {
        return Ok(None);
    }
    let seen = DptSeen {
        addr: Ipv4Addr::from(key as u32),
        port: (key >> 32) as u16,
        target: (key >> 48) as u8,
        router: row.router.load(Ordering::Relaxed) as u8,
        epoch: row.epoch.load(Ordering::Relaxed),
        listeners: row.listeners.load(Ordering::Relaxed),
        flags: row.flags.load(Ordering::Relaxed),
        weight: row.weight.load(Ordering::Relaxed),
        queue_free: row.queue_free.load(Ordering::Relaxed),
        busy_permille: row.busy_permille.load(Ordering::Relaxed),
        conns: row.conns.load(Ordering::Relaxed),
        srvstat_seq: row.srvstat_seq.load(Ordering::Relaxed),
        syns: row.syns.load(Ordering::Relaxed),
    };
    if row.seq.load(Ordering::Acquire) != s0 {
        return Ok(None);
    }
    let n = cfg.stacks.len();
    let d = cfg.dvipa_index(seen.addr).and_then(|i| cfg.dvipas[i].distribute.as_ref());
    let ok = key >> 56 == 1
        && d.is_some_and(|d| d.ports.contains(seen.port))
        && (seen.target as usize) < n
        && (row.router.load(Ordering::Relaxed) as usize) < n
        && seen.flags < 8
        && seen.busy_permille <= 1000;
    if !ok {
        return Err(Invalid::DptRow);
    }
    Ok(Some(seen))
}

/// One stack's distributor: router of the distributed DVIPAs its node holds, target of those
/// it is a candidate of. Created by [`Distributor::new`]; driven by [`Distributor::tick`] and
/// [`Distributor::poll`]; asked by [`Distributor::route`].
#[derive(Debug)]
pub struct Distributor {
    region: Arc<Region>,
    cfg: Arc<ClusterConfig>,
    slot: u8,
    inc: u64,
    started: bool,
    detached: bool,
    /// Routing or preparing, per DVIPA row.
    routers: BTreeMap<usize, Router>,
    // Target side.
    listeners: BTreeMap<SocketAddrV4, u32>,
    draining: BTreeSet<SocketAddrV4>,
    accept: BTreeMap<SocketAddrV4, (u32, u16)>,
    conns: BTreeSet<(SocketAddrV4, SocketAddrV4)>,
    /// Stacks that sent a ROUTER notice for a DVIPA row, and when.
    requesters: BTreeMap<(usize, u8), u64>,
    /// The holder (slot, generation) each DVIPA row was last reported to unasked.
    reported_to: BTreeMap<usize, (u8, u32)>,
    /// What was last sent about (row, port).
    last_srv: BTreeMap<(usize, u16), Srv>,
    seq: u64,
    /// Member liveness at the last tick (a change triggers a scan of the flows).
    last_live: Vec<Option<u64>>,
    last_down: Vec<bool>,
    outbox: Vec<VecDeque<Message>>,
    self_mail: VecDeque<Message>,
    actions: Vec<DistAction>,
    now: u64,
    /// Bumped whenever what new connections are routed by may have changed (a target's
    /// report, a target gone, routing started or stopped): see [`Distributor::syn_schedules`].
    routing_version: u64,
    /// Counters.
    pub stats: DistStats,
    /// Messages and rows ignored, per reason.
    pub invalid: InvalidCounts,
}

/// The smooth weighted round-robin sequence (nginx) of `ready` (target, weight) over the
/// weights' sum, the weights scaled down so that it has at most `max` entries (each ready
/// target with a weight keeps at least one); round robin if every weight is zero.
fn smooth_wrr(ready: &[(u8, u32)], max: usize) -> Vec<u8> {
    let total: u64 = ready.iter().map(|(_, w)| *w as u64).sum();
    if total == 0 {
        return ready.iter().map(|(t, _)| *t).collect();
    }
    let max = max.max(ready.len()) as u64;
    let scaled: Vec<(u8, i64)> = ready
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(t, w)| (*t, if total <= max { *w as i64 } else { ((*w as u64 * max / total).max(1)) as i64 }))
        .collect();
    let sum: i64 = scaled.iter().map(|(_, w)| *w).sum();
    let mut current = vec![0i64; scaled.len()];
    let mut out = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        let mut best = 0;
        for (k, (_, w)) in scaled.iter().enumerate() {
            current[k] += w;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= sum;
        out.push(scaled[best].0);
    }
    out
}

impl Distributor {
    /// The distributor of the stack whose node is `node` (after [`Node::join`]).
    pub fn new(node: &Node) -> Distributor {
        Distributor {
            region: node.region().clone(),
            cfg: Arc::new(node.config().clone()),
            slot: node.slot() as u8,
            inc: node.incarnation(),
            started: false,
            detached: false,
            routers: BTreeMap::new(),
            listeners: BTreeMap::new(),
            draining: BTreeSet::new(),
            accept: BTreeMap::new(),
            conns: BTreeSet::new(),
            requesters: BTreeMap::new(),
            reported_to: BTreeMap::new(),
            last_srv: BTreeMap::new(),
            seq: 0,
            last_live: Vec::new(),
            last_down: Vec::new(),
            outbox: (0..MAX_STACKS).map(|_| VecDeque::new()).collect(),
            self_mail: VecDeque::new(),
            actions: Vec::new(),
            now: 0,
            routing_version: 0,
            stats: DistStats::default(),
            invalid: InvalidCounts::default(),
        }
    }

    fn def(&self, i: usize) -> Option<&DistributeDef> {
        self.cfg.dvipas.get(i).and_then(|d| d.distribute.as_ref())
    }

    fn distributed(&self) -> Vec<usize> {
        (0..self.cfg.dvipas.len()).filter(|i| self.def(*i).is_some()).collect()
    }

    /// Is this stack a candidate target of distributed DVIPA `addr`? (Then it keeps `addr` as
    /// an internal address whether or not its node holds it.)
    pub fn is_candidate(&self, addr: Ipv4Addr) -> bool {
        self.cfg.dvipa_index(addr).and_then(|i| self.def(i)).is_some_and(|d| d.candidates().contains(&(self.slot as usize)))
    }

    /// Is `addr` a distributed DVIPA this stack routes now?
    pub fn routes(&self, addr: Ipv4Addr) -> bool {
        self.routers.values().any(|r| r.active && r.addr == addr)
    }

    /// For the `conns` closure of [`Node::tick`]: the connection count the node should see
    /// on `addr`, given the stack's own count `stack_conns`. For a distributed DVIPA this
    /// stack routes as a backup, at least 1 until the returning primary has said it is ready to take it
    /// back (so the node delays the giveback), then 0 if this stack is a candidate (its own
    /// connections stay, routed by the primary) or `stack_conns` if not; for anything else
    /// `stack_conns`.
    pub fn node_conns(&self, addr: Ipv4Addr, stack_conns: usize) -> usize {
        let primary = self.cfg.dvipa_index(addr).is_some_and(|i| self.cfg.dvipas[i].primary == self.slot as usize);
        if primary {
            return stack_conns;
        }
        match self.routers.values().find(|r| r.active && r.addr == addr) {
            // A candidate keeps its connections as a target of the primary; a router that is
            // not one would lose them with the address (delayed giveback as for any DVIPA).
            Some(r) if r.ready => {
                if self.is_candidate(addr) {
                    0
                } else {
                    stack_conns
                }
            }
            Some(_) => stack_conns.max(1),
            None => stack_conns,
        }
    }

    /// Actions produced since the last call (also appended by `tick` and `poll`).
    pub fn drain_actions(&mut self, out: &mut Vec<DistAction>) {
        out.append(&mut self.actions);
    }

    // ---------------------------------------------------------------- target side inputs

    /// The stack has `count` listeners on `local` now (absolute; 0 when the last closed).
    /// `local` may be the wildcard address (it counts for every distributed DVIPA this stack
    /// is a candidate of).
    pub fn listeners(&mut self, now: u64, local: SocketAddrV4, count: u32) {
        self.now = now;
        if count == 0 {
            self.listeners.remove(&local);
        } else {
            self.listeners.insert(local, count);
        }
        self.srv_changed(local, true);
        self.read_self_mail(now);
    }

    /// The stack installed a TCP connection (`local`, `remote`) on a distributed DVIPA;
    /// `active`: this stack opened it. A NEWCONN goes to the router at once (it routes the
    /// replies of an active open here, and confirms the entry it made for a passive one): call
    /// it before the SYN of an active open leaves if possible.
    pub fn connection_opened(&mut self, now: u64, local: SocketAddrV4, remote: SocketAddrV4, active: bool) {
        self.now = now;
        let Some(i) = self.cfg.dvipa_index(*local.ip()).filter(|i| self.def(*i).is_some()) else { return };
        // Tracked on any distributed DVIPA (a router keeps its own connections local), told
        // only by candidates.
        self.conns.insert((local, remote));
        // The router's own stack has the connection now (a handoff brought it back to a
        // router that is not a target: a candidate's own NEWCONN below switches the flow to
        // itself instead): its flow to the stack that had it goes, from the table and the
        // fast path, so the router's stack gets its segments.
        let region = self.region.clone();
        let candidate = self.cand_row(*local.ip()).is_some();
        if let Some(r) = self.routers.get_mut(&i).filter(|r| r.active && !candidate) {
            if let Some(f) = r.flows.remove(&(local, remote)) {
                if let Some((idx, ctl)) = f.row {
                    crt_delete(&region, idx, ctl);
                }
                if f.dead_since.is_none() {
                    r.conns[f.target as usize] = r.conns[f.target as usize].saturating_sub(1);
                }
                self.actions.push(DistAction::FlowRemoved { local, remote });
            }
        }
        if self.cand_row(*local.ip()).is_some() {
            let mut p = self.conn_payload(i, local, remote);
            if !active {
                p[5] |= NEWCONN_PASSIVE_OPEN;
            }
            for to in self.routers_of(i) {
                self.queue(to, kind::NEWCONN, p);
            }
            self.flush();
            self.read_self_mail(now);
        }
    }

    /// The stack freed a TCP connection (after TIME-WAIT, at a reset, or moved away).
    pub fn connection_closed(&mut self, now: u64, local: SocketAddrV4, remote: SocketAddrV4) {
        self.now = now;
        let Some(i) = self.cfg.dvipa_index(*local.ip()).filter(|i| self.def(*i).is_some()) else { return };
        if !self.conns.remove(&(local, remote)) || self.cand_row(*local.ip()).is_none() {
            return;
        }
        let p = self.conn_payload(i, local, remote);
        for to in self.routers_of(i) {
            self.queue(to, kind::TERMCONN, p);
        }
        self.flush();
        self.read_self_mail(now);
    }

    /// A connection on a distributed DVIPA was handed off to stack `to` (spec/04) and `to`
    /// accepted it: forget it here **without** a TERMCONN (which would make the router delete
    /// the flow and reset the client until `to`'s NEWCONN arrives). Call it at the handoff's
    /// `Accepted` event, not at the snapshot: a rejected or aborted transfer comes back here
    /// and keeps its flow. The router switches the flow when `to`'s NEWCONN arrives (kept
    /// forwarding here meanwhile, where the held segments go on to `to`); if this stack is the
    /// router it switches the flow at once (the NEWCONN then confirms it). `to` must be a
    /// candidate of the DVIPA, as for any connection the router routes.
    pub fn connection_moved(&mut self, now: u64, local: SocketAddrV4, remote: SocketAddrV4, to: u8) {
        self.now = now;
        let Some(i) = self.cfg.dvipa_index(*local.ip()).filter(|i| self.def(*i).is_some()) else { return };
        self.conns.remove(&(local, remote));
        let cand = self.def(i).is_some_and(|d| d.candidates().contains(&(to as usize)));
        if to != self.slot && cand && self.routers.get(&i).is_some_and(|r| r.active) {
            self.move_flow(now, i, (local, remote), to);
        }
        self.flush();
        self.read_self_mail(now);
    }

    /// The router switches flow `k` of DVIPA row `i` to `to` (a handoff from this stack):
    /// an unconfirmed entry, confirmed by `to`'s NEWCONN.
    fn move_flow(&mut self, now: u64, i: usize, k: (SocketAddrV4, SocketAddrV4), to: u8) {
        let inc = self.member_inc(to, now);
        let Some(r) = self.routers.get(&i) else { return };
        let prev = r.flows.get(&k).copied();
        if prev.is_some_and(|p| p.target == to && p.dead_since.is_none()) {
            return;
        }
        let (epoch, created) = (r.epoch, prev.map_or(now, |p| p.created_ns));
        let row = self.crt_store(now, &k, to, inc, created, epoch, prev.and_then(|p| p.row));
        if row.is_none() {
            self.stats.crt_full += 1;
        }
        let Some(r) = self.routers.get_mut(&i) else { return };
        if let Some(p) = prev.filter(|p| p.dead_since.is_none()) {
            r.conns[p.target as usize] = r.conns[p.target as usize].saturating_sub(1);
        }
        let flow = Flow { target: to, target_inc: inc, created_ns: created, row, hint: false, dead_since: None, seq: 0, confirmed: false };
        r.flows.insert(k, flow);
        r.terminated.remove(&k);
        r.conns[to as usize] += 1;
        let relay = r.handover_to;
        self.stats.flows_moved += 1;
        self.actions.push(DistAction::FlowInstalled { local: k.0, remote: k.1, target: to });
        if let Some(p) = relay {
            self.relay(p, i, k, flow);
        }
    }

    /// The stack's acceptance figures for the listener(s) on `local` (server weight):
    /// `queue_free` free accept-queue places, `busy` the poll loop's busy fraction (0..=1).
    /// Sent to the router at the next tick if they changed.
    pub fn set_acceptance(&mut self, now: u64, local: SocketAddrV4, queue_free: u32, busy: f32) {
        self.now = now;
        let b = (busy.clamp(0.0, 1.0) * 1000.0) as u16;
        self.accept.insert(local, (queue_free, b));
        self.srv_changed(local, false);
    }

    /// Quiesce (or resume) the listener(s) on `local`: a draining target gets no new
    /// connections; its connections keep working.
    pub fn set_draining(&mut self, now: u64, local: SocketAddrV4, draining: bool) {
        self.now = now;
        if draining {
            self.draining.insert(local);
        } else {
            self.draining.remove(&local);
        }
        self.srv_changed(local, true);
        self.read_self_mail(now);
    }

    /// The distributed DVIPA row of `addr` if this stack is one of its candidates.
    fn cand_row(&self, addr: Ipv4Addr) -> Option<usize> {
        let i = self.cfg.dvipa_index(addr)?;
        self.def(i)?.candidates().contains(&(self.slot as usize)).then_some(i)
    }

    /// The rows and ports a change on `local` concerns.
    fn srv_changed(&mut self, local: SocketAddrV4, now_: bool) {
        let rows: Vec<usize> = if local.ip().is_unspecified() {
            self.distributed().into_iter().filter(|i| self.cand_row(self.cfg.dvipas[*i].addr).is_some()).collect()
        } else {
            self.cand_row(*local.ip()).into_iter().collect()
        };
        for i in rows {
            if !self.def(i).is_some_and(|d| d.ports.contains(local.port())) {
                continue;
            }
            if now_ {
                self.send_srv(i, local.port(), false);
            }
        }
        if now_ {
            self.flush();
        }
    }

    /// What this stack would report for (row, port).
    fn srv_of(&self, i: usize, port: u16) -> Srv {
        let addr = self.cfg.dvipas[i].addr;
        let (spec, wild) = (SocketAddrV4::new(addr, port), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        let listeners = self.listeners.get(&spec).copied().unwrap_or(0).saturating_add(self.listeners.get(&wild).copied().unwrap_or(0));
        let (queue_free, busy_permille) = self.accept.get(&spec).or_else(|| self.accept.get(&wild)).copied().unwrap_or((DEFAULT_QUEUE_FREE, 0));
        Srv { listeners, draining: self.draining.contains(&spec) || self.draining.contains(&wild), queue_free, busy_permille }
    }

    /// Send SRVSTAT for (row, port) to its routers if it changed (or `force`).
    fn send_srv(&mut self, i: usize, port: u16, force: bool) {
        let s = self.srv_of(i, port);
        if !force && self.last_srv.get(&(i, port)) == Some(&s) {
            return;
        }
        if s.listeners == 0 && !self.last_srv.contains_key(&(i, port)) && !force {
            return;
        }
        self.last_srv.insert((i, port), s);
        for to in self.routers_of(i) {
            self.queue_srv(to, i, port, s);
        }
    }

    fn queue_srv(&mut self, to: u8, i: usize, port: u16, s: Srv) {
        self.seq += 1;
        let p0 = i as u64 | (port as u64) << 16 | (s.listeners as u64) << 32;
        let p2 = s.queue_free as u64 | (s.busy_permille as u64) << 32 | (s.draining as u64) << 48;
        // A newer SRVSTAT of the same (row, port) replaces one still waiting.
        let ob = &mut self.outbox[to as usize];
        ob.retain(|m| !(m.kind == kind::SRVSTAT && m.payload[0] & 0xffff_ffff == p0 & 0xffff_ffff));
        self.queue_raw(to, kind::SRVSTAT, [p0, self.seq, p2, 0, 0, 0, 0]);
    }

    /// NEWCONN payload word 5 from a target: the connection is a passive open it just
    /// accepted (a report for a rebuild or a connection the target opened leaves it clear).
    /// Relayed NEWCONNs use bit 0 of the same word for "confirmed".
    fn conn_payload(&mut self, i: usize, local: SocketAddrV4, remote: SocketAddrV4) -> [u64; PAYLOAD_WORDS] {
        self.seq += 1;
        [i as u64 | (local.port() as u64) << 16, client_word(remote), self.slot as u64, self.seq, self.inc, 0, 0]
    }

    /// The stacks this stack reports DVIPA row `i` to: its holder (owner word, up) and the
    /// stacks that asked recently and are up.
    fn routers_of(&self, i: usize) -> Vec<u8> {
        let mut v = Vec::new();
        if let Some(w) = self.owner(i) {
            if w.held() && (w.owner as usize) < self.cfg.stacks.len() {
                v.push(w.owner);
            }
        }
        for (&(row, s), _) in self.requesters.range((i, 0)..=(i, u8::MAX)) {
            if row == i && !v.contains(&s) {
                v.push(s);
            }
        }
        v
    }

    fn owner(&self, i: usize) -> Option<OwnerWord> {
        let raw = self.region.dvipas().get(i)?.owner.load(Ordering::Acquire);
        check::owner_word(&self.cfg, true, raw).ok()
    }

    // ---------------------------------------------------------------- sending

    fn queue(&mut self, to: u8, k: u16, p: [u64; PAYLOAD_WORDS]) {
        self.queue_raw(to, k, p);
    }

    fn queue_raw(&mut self, to: u8, k: u16, payload: [u64; PAYLOAD_WORDS]) {
        let m = Message { kind: k, from_slot: self.slot, from_incarnation: self.inc as u32, payload };
        if to == self.slot {
            self.self_mail.push_back(m);
        } else if (to as usize) < MAX_STACKS {
            self.outbox[to as usize].push_back(m);
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

    /// Messages waiting in the outbox to `slot` (a full ring).
    pub fn queued_to(&self, slot: usize) -> usize {
        self.outbox.get(slot).map_or(0, |o| o.len())
    }

    // ---------------------------------------------------------------- driving

    /// Read the mail now and send what is queued. Call at the top of every poll-loop turn.
    pub fn poll(&mut self, now: u64, node: &mut Node, out: &mut Vec<DistAction>) {
        self.now = now;
        if !self.detached && node.detached().is_none() {
            node.poll_mail();
            self.read_mail(now, node);
            self.flush();
        }
        self.drain_actions(out);
    }

    /// One step, right after [`Node::tick`] with the same `now`.
    pub fn tick(&mut self, now: u64, node: &mut Node, out: &mut Vec<DistAction>) {
        self.now = now;
        if self.detached {
            self.drain_actions(out);
            return;
        }
        if node.detached().is_some() {
            self.detach();
            self.drain_actions(out);
            return;
        }
        if node.incarnation() != self.inc {
            // Fenced and rejoined: our reports and routes belonged to the old incarnation.
            self.inc = node.incarnation();
            for o in &mut self.outbox {
                o.clear();
            }
            self.requesters.clear();
            self.reported_to.clear();
        }
        if !self.started {
            self.started = true;
            for i in self.distributed() {
                if self.cand_row(self.cfg.dvipas[i].addr).is_some() {
                    self.actions.push(DistAction::Candidate { addr: self.cfg.dvipas[i].addr, prefix: self.cfg.dvipas[i].prefix });
                }
            }
        }
        self.read_mail(now, node);
        let live: Vec<Option<u64>> = (0..self.cfg.stacks.len()).map(|s| self.inc_if_up(node, s, now)).collect();
        let down: Vec<bool> = (0..self.cfg.stacks.len()).map(|s| node.live(s) == Live::Down).collect();
        // The flows are scanned for failed targets when a member's liveness changed, and for
        // expired entries once a second (not every heartbeat: the CRT may hold 16384 flows).
        let changed = live != self.last_live || down != self.last_down;
        self.last_live.clone_from(&live);
        self.last_down.clone_from(&down);
        // Forget requesters that are down or quiet for long.
        let ttl = |d: &DistributeDef| (4 * d.grace_ms).max(10_000) * 1_000_000;
        let cfg = self.cfg.clone();
        self.requesters.retain(|&(i, s), at| {
            !down[s as usize] && cfg.dvipas[i].distribute.as_ref().is_some_and(|d| now.saturating_sub(*at) < ttl(d))
        });
        for (to, ob) in self.outbox.iter_mut().enumerate() {
            if down.get(to).copied().unwrap_or(true) {
                ob.clear();
            }
        }
        for i in self.distributed() {
            self.step_row(now, node, i, &live, &down, changed);
        }
        // Target side: acceptance figures, and unasked reports to a holder we never told.
        for i in self.distributed() {
            if self.cand_row(self.cfg.dvipas[i].addr).is_none() {
                continue;
            }
            let ports: Vec<u16> = self.last_srv.keys().filter(|(r, _)| *r == i).map(|(_, p)| *p).collect();
            for port in ports {
                self.send_srv(i, port, false);
            }
            if let Some(w) = self.owner(i) {
                if w.held() && live.get(w.owner as usize).is_some_and(|x| x.is_some()) && self.reported_to.get(&i) != Some(&(w.owner, w.generation)) {
                    self.reported_to.insert(i, (w.owner, w.generation));
                    self.report(i, w.owner, w.generation);
                }
            }
        }
        self.read_self_mail(now);
        self.flush();
        self.drain_actions(out);
    }

    /// The incarnation of member `s` if it is up (by the node's view and its row).
    fn inc_if_up(&self, node: &Node, s: usize, now: u64) -> Option<u64> {
        if s == self.slot as usize {
            return Some(self.inc);
        }
        if node.live(s) != Live::Up {
            return None;
        }
        check::member(&self.region, &self.cfg, s, now).ok().map(|m| m.incarnation)
    }

    fn detach(&mut self) {
        self.detached = true;
        self.routing_version += 1;
        for (_, r) in std::mem::take(&mut self.routers) {
            if r.active {
                self.actions.push(DistAction::RoutingStopped { addr: r.addr });
            }
        }
        if self.started {
            for i in self.distributed() {
                if self.cand_row(self.cfg.dvipas[i].addr).is_some() {
                    self.actions.push(DistAction::NotCandidate { addr: self.cfg.dvipas[i].addr });
                }
            }
        }
    }

    /// The stack is stopping: stop routing and stop being a candidate.
    pub fn leave(&mut self, out: &mut Vec<DistAction>) {
        if !self.detached {
            self.detach();
        }
        self.drain_actions(out);
    }

    fn step_row(&mut self, now: u64, node: &Node, i: usize, live: &[Option<u64>], down: &[bool], changed: bool) {
        let Some(d) = self.def(i).cloned() else { return };
        let addr = self.cfg.dvipas[i].addr;
        let me = self.slot;
        let w = self.owner(i);
        let holds = w.is_some_and(|w| w.held() && w.owner == me) && node.active().any(|(a, _)| a == addr);
        let active = self.routers.get(&i).is_some_and(|r| r.active);
        if active && !holds {
            self.stop_routing(i);
        } else if holds && !active {
            self.start_routing(now, i, w.map_or(0, |w| w.generation), live);
        }
        // Preparing a takeback: we are the primary, another live stack holds it.
        let primary = self.cfg.dvipas[i].primary == me as usize;
        if primary && !holds {
            let holder = w.filter(|w| w.held() && w.owner != me && live.get(w.owner as usize).is_some_and(|x| x.is_some())).map(|w| w.owner);
            let preparing = self.routers.get(&i).is_some_and(|r| !r.active);
            match (holder, preparing) {
                (Some(h), false) => self.start_preparing(now, i, h, w.map_or(0, |w| w.generation), live, &d),
                // Another holder, or still not given back a grace period after we said we
                // were ready (the holder may have had our request before it routed): ask again.
                (Some(h), true)
                    if self.routers.get(&i).is_some_and(|r| {
                        r.holder != Some(h) || (r.ready_sent && now >= r.grace_until.saturating_add(d.grace_ms * 1_000_000))
                    }) =>
                {
                    self.routers.remove(&i);
                    self.start_preparing(now, i, h, w.map_or(0, |w| w.generation), live, &d);
                }
                (None, true) => {
                    self.routers.remove(&i);
                }
                _ => {}
            }
        }
        // A target is gone when its member is down, or up with another incarnation (it
        // restarted: its connections went with the old process). An unreadable row is not.
        let gone = |t: u8, inc: u64| {
            down.get(t as usize).copied().unwrap_or(true) || (inc != 0 && live.get(t as usize).copied().flatten().is_some_and(|x| x != inc))
        };
        let pressed = self.routers.values().map(|r| r.flows.len()).sum::<usize>() >= CRT_ROWS / 4 * 3;
        let Some(r) = self.routers.get_mut(&i) else { return };
        // Failed targets: out of the DPT at once; their flows answer reset.
        let mut failed = BTreeSet::new();
        for (&(_, t), s) in &r.dpt {
            if gone(t, s.inc) {
                failed.insert(t);
            }
        }
        let rows = self.region.clone();
        let mut removed = Vec::new();
        let unconfirmed_after = if pressed { UNCONFIRMED_PRESSED_NS } else { UNCONFIRMED_NS };
        let scan = changed || now.saturating_sub(r.scanned_ns) >= SCAN_NS;
        if scan {
            r.scanned_ns = now;
        }
        for (k, f) in r.flows.iter_mut().filter(|_| scan) {
            if f.dead_since.is_none() && gone(f.target, f.target_inc) {
                f.dead_since = Some(now);
                if let Some((idx, ctl)) = f.row.take() {
                    crt_delete(&rows, idx, ctl);
                }
                r.conns[f.target as usize] = r.conns[f.target as usize].saturating_sub(1);
                failed.insert(f.target);
                if r.active {
                    self.actions.push(DistAction::FlowRemoved { local: k.0, remote: k.1 });
                }
            }
            if f.dead_since.is_some_and(|t| now.saturating_sub(t) >= d.grace_ms * 1_000_000) {
                removed.push(*k);
            }
            if f.dead_since.is_none() && !f.confirmed && !f.hint && now.saturating_sub(f.created_ns) >= unconfirmed_after {
                if let Some((idx, ctl)) = f.row.take() {
                    crt_delete(&rows, idx, ctl);
                }
                r.conns[f.target as usize] = r.conns[f.target as usize].saturating_sub(1);
                f.dead_since = Some(0);
                if r.active {
                    self.actions.push(DistAction::FlowRemoved { local: k.0, remote: k.1 });
                }
                self.stats.unconfirmed_expired += 1;
                removed.push(*k);
            }
        }
        for k in removed {
            r.flows.remove(&k);
        }
        if !failed.is_empty() {
            self.routing_version += 1;
        }
        for t in &failed {
            let keys: Vec<(u16, u8)> = r.dpt.keys().filter(|(_, x)| x == t).copied().collect();
            for k in keys {
                if let Some(s) = r.dpt.remove(&k) {
                    if let Some(row) = s.row {
                        dpt_mark_down(&rows, row as usize);
                    }
                }
            }
            r.waiting.remove(t);
            self.stats.targets_failed += 1;
        }
        r.waiting.retain(|t| live.get(*t as usize).is_some_and(|x| x.is_some()));
        r.terminated.retain(|_, (_, at, _, _)| now.saturating_sub(*at) < (4 * d.grace_ms).max(10_000) * 1_000_000);
        // Rebuild complete?
        if r.active && r.rebuilding && (r.waiting.is_empty() || now >= r.grace_until) {
            if !r.waiting.is_empty() {
                self.stats.rebuild_timeouts += 1;
            }
            self.end_rebuild(i);
        }
        let Some(r) = self.routers.get_mut(&i) else { return };
        // Preparing: ready once every candidate reported and the holder's routes are in (or
        // the grace passed).
        if !r.active && !r.ready_sent {
            let late = now >= r.grace_until;
            if (r.waiting.is_empty() && r.routes_done) || late {
                r.ready_sent = true;
                let h = r.holder;
                self.stats.takebacks_prepared += 1;
                if let Some(h) = h {
                    self.queue(h, kind::TAKEBACK_READY, [i as u64, 0, 0, 0, 0, 0, 0]);
                }
            }
        }
        // A handover whose primary went away.
        if let Some(r) = self.routers.get_mut(&i) {
            if let Some(p) = r.handover_to {
                if live.get(p as usize).is_none_or(|x| x.is_none()) {
                    r.handover_to = None;
                    r.ready = false;
                }
            }
        }
        self.publish_dpt(i);
    }

    fn start_routing(&mut self, now: u64, i: usize, epoch: u32, live: &[Option<u64>]) {
        let Some(d) = self.def(i).cloned() else { return };
        let addr = self.cfg.dvipas[i].addr;
        let me = self.slot;
        let mut r = self.routers.remove(&i).unwrap_or_else(|| Router::new(addr));
        r.active = true;
        r.epoch = epoch;
        r.handover_to = None;
        r.ready = false;
        r.rebuilding = true;
        r.grace_until = now + d.grace_ms * 1_000_000;
        r.waiting = d.candidates().into_iter().map(|s| s as u8).filter(|s| *s != me && live.get(*s as usize).is_some_and(|x| x.is_some())).collect();
        self.stats.rebuilds += 1;
        self.routing_version += 1;
        self.actions.push(DistAction::RoutingStarted { addr, epoch });
        // The region's rows of this DVIPA: ours to adopt, or hints.
        let region = self.region.clone();
        let mut seen: HashMap<(SocketAddrV4, SocketAddrV4), (u32, CrtSeen)> = HashMap::new();
        for idx in 0..region.crt().len() {
            match crt_row(&region, &self.cfg, idx) {
                Ok(Some(c)) if *c.local.ip() == addr => {
                    let k = (c.local, c.remote);
                    match seen.get(&k).copied() {
                        // Keep the newest epoch's row; the other goes when the rebuild ends.
                        Some((_, o)) if c.epoch.wrapping_sub(o.epoch) == 0 || c.epoch.wrapping_sub(o.epoch) > u32::MAX / 2 => {
                            r.stale_rows.push((idx as u32, c.ctl));
                        }
                        Some((old, o)) => {
                            r.stale_rows.push((old, o.ctl));
                            seen.insert(k, (idx as u32, c));
                        }
                        None => {
                            seen.insert(k, (idx as u32, c));
                        }
                    }
                }
                Ok(None) => {
                    // A row left "writing" by a router that died mid-write: free it.
                    let ctl = region.crt()[idx].ctl.load(Ordering::Acquire);
                    let writer = (ctl >> 8) as u8 as usize;
                    if ctl as u8 == CRT_WRITING && writer != me as usize && live.get(writer).is_some_and(|x| x.is_none()) {
                        crt_delete(&region, idx as u32, ctl);
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => self.invalid.add(e),
            }
        }
        // Flows we prepared (takeback) become ours under the new epoch; rows become hints.
        let keys: Vec<_> = r.flows.keys().copied().collect();
        for k in keys {
            let f = r.flows[&k];
            if f.dead_since.is_some() {
                continue;
            }
            let old = seen.remove(&k).map(|(idx, c)| (idx, c.ctl));
            let row = self.crt_store(now, &k, f.target, f.target_inc, f.created_ns, epoch, old.or(f.row));
            if let Some(f) = r.flows.get_mut(&k) {
                f.row = row;
                f.hint = false;
            }
        }
        for (k, (idx, c)) in seen {
            let alive = live.get(c.target as usize).copied().flatten() == Some(c.target_inc);
            if !alive {
                r.stale_rows.push((idx, c.ctl));
                continue;
            }
            r.flows.insert(k, Flow { target: c.target, target_inc: c.target_inc, created_ns: c.created_ns, row: Some((idx, c.ctl)), hint: true, dead_since: None, seq: 0, confirmed: true });
        }
        r.conns = [0; MAX_STACKS];
        for (k, f) in &r.flows {
            if f.dead_since.is_none() {
                r.conns[f.target as usize] += 1;
                self.actions.push(DistAction::FlowInstalled { local: k.0, remote: k.1, target: f.target });
            }
        }
        for s in r.dpt.values_mut() {
            s.dirty = true;
        }
        let waiting: Vec<u8> = r.waiting.iter().copied().collect();
        self.routers.insert(i, r);
        let p = [i as u64, (me as u64) | (epoch as u64) << 32, 0, 0, 0, 0, 0];
        for s in waiting {
            self.queue(s, kind::ROUTER, p);
        }
        if self.cand_row(addr).is_some() {
            self.report(i, me, epoch);
        }
        self.read_self_mail(now);
    }

    fn start_preparing(&mut self, now: u64, i: usize, holder: u8, gen: u32, live: &[Option<u64>], d: &DistributeDef) {
        let addr = self.cfg.dvipas[i].addr;
        let me = self.slot;
        let mut r = Router::new(addr);
        r.holder = Some(holder);
        r.epoch = gen;
        r.grace_until = now + d.grace_ms * 1_000_000;
        r.waiting = d.candidates().into_iter().map(|s| s as u8).filter(|s| *s != me && live.get(*s as usize).is_some_and(|x| x.is_some())).collect();
        let mut to: Vec<u8> = r.waiting.iter().copied().collect();
        if !to.contains(&holder) {
            to.push(holder);
        }
        self.routers.insert(i, r);
        let p = [i as u64 | 1 << 16, (me as u64) | (gen as u64) << 32, 0, 0, 0, 0, 0];
        for s in to {
            self.queue(s, kind::ROUTER, p);
        }
        if self.cand_row(addr).is_some() {
            self.report(i, me, gen);
        }
        self.read_self_mail(now);
    }

    fn stop_routing(&mut self, i: usize) {
        self.routing_version += 1;
        if let Some(r) = self.routers.remove(&i) {
            self.actions.push(DistAction::RoutingStopped { addr: r.addr });
        }
    }

    fn end_rebuild(&mut self, i: usize) {
        let region = self.region.clone();
        let Some(r) = self.routers.get_mut(&i) else { return };
        r.rebuilding = false;
        // Hints of a live target that has not reported yet stay until it does (its
        // REPORT_DONE drops what it did not confirm); the others go now.
        let hints: Vec<_> = r.flows.iter().filter(|(_, f)| f.hint && f.dead_since.is_none() && !r.waiting.contains(&f.target)).map(|(k, _)| *k).collect();
        for k in hints {
            if let Some(f) = r.flows.remove(&k) {
                if let Some((idx, ctl)) = f.row {
                    crt_delete(&region, idx, ctl);
                }
                r.conns[f.target as usize] = r.conns[f.target as usize].saturating_sub(1);
                self.actions.push(DistAction::FlowRemoved { local: k.0, remote: k.1 });
            }
        }
        for (idx, ctl) in std::mem::take(&mut r.stale_rows) {
            crt_delete(&region, idx, ctl);
        }
    }

    /// A target that answered after its rebuild ended: the hints it did not confirm go.
    fn drop_hints_of(&mut self, i: usize, t: u8) {
        let Some(r) = self.routers.get_mut(&i) else { return };
        let hints: Vec<_> = r.flows.iter().filter(|(_, f)| f.hint && f.target == t && f.dead_since.is_none()).map(|(k, _)| *k).collect();
        for k in hints {
            if let Some(f) = r.flows.remove(&k) {
                if let Some((idx, ctl)) = f.row {
                    crt_delete(&self.region, idx, ctl);
                }
                r.conns[t as usize] = r.conns[t as usize].saturating_sub(1);
                self.actions.push(DistAction::FlowRemoved { local: k.0, remote: k.1 });
            }
        }
    }

    /// Queue a full report of DVIPA row `i` to `to` (`epoch` echoed in REPORT_DONE).
    fn report(&mut self, i: usize, to: u8, epoch: u32) {
        let addr = self.cfg.dvipas[i].addr;
        let Some(d) = self.def(i).cloned() else { return };
        let mut ports: BTreeSet<u16> = self.listeners.keys().filter(|l| *l.ip() == addr || l.ip().is_unspecified()).map(|l| l.port()).filter(|p| d.ports.contains(*p)).collect();
        ports.extend(self.last_srv.keys().filter(|(r, _)| *r == i).map(|(_, p)| *p));
        for port in ports {
            let s = self.srv_of(i, port);
            self.last_srv.insert((i, port), s);
            self.queue_srv(to, i, port, s);
        }
        let conns: Vec<_> = self.conns.iter().filter(|(l, _)| *l.ip() == addr).copied().collect();
        for (l, r) in conns {
            let p = self.conn_payload(i, l, r);
            self.queue(to, kind::NEWCONN, p);
        }
        self.queue(to, kind::REPORT_DONE, [i as u64, epoch as u64, 0, 0, 0, 0, 0]);
    }

    // ---------------------------------------------------------------- receiving

    fn read_mail(&mut self, now: u64, node: &mut Node) {
        for m in node.take_dist_mail() {
            self.stats.messages_in += 1;
            if !self.sender_ok(&m, now) {
                self.invalid.add(Invalid::Message);
                continue;
            }
            self.handle(now, &m);
        }
        self.read_self_mail(now);
    }

    fn read_self_mail(&mut self, now: u64) {
        // Bounded: handling may queue more mail to ourselves (a report), read it too.
        for _ in 0..1_000_000 {
            let Some(m) = self.self_mail.pop_front() else { break };
            self.handle(now, &m);
        }
    }

    /// The sender is a stack of the config, not us, and (when its row reads) up with the
    /// incarnation the message names.
    fn sender_ok(&self, m: &Message, now: u64) -> bool {
        let s = m.from_slot as usize;
        if s >= self.cfg.stacks.len() || s == self.slot as usize {
            return false;
        }
        match check::member(&self.region, &self.cfg, s, now) {
            Ok(seen) => seen.word.state == MemberState::Up && seen.incarnation as u32 == m.from_incarnation,
            Err(_) => true,
        }
    }

    fn handle(&mut self, now: u64, m: &Message) {
        let i = (m.payload[0] & 0xffff) as usize;
        let Some(d) = self.def(i).cloned() else {
            self.invalid.add(Invalid::Message);
            return;
        };
        let addr = self.cfg.dvipas[i].addr;
        let from = m.from_slot;
        match m.kind {
            kind::ROUTER => {
                let router = m.payload[1] as u8;
                let epoch = (m.payload[1] >> 32) as u32;
                let takeback = (m.payload[0] >> 16) & 0xff == 1;
                if router != from {
                    self.invalid.add(Invalid::Message);
                    return;
                }
                if from != self.slot {
                    self.requesters.insert((i, from), now);
                }
                if self.cand_row(addr).is_some() {
                    self.report(i, from, epoch);
                } else {
                    self.queue(from, kind::REPORT_DONE, [i as u64, epoch as u64, 0, 0, 0, 0, 0]);
                }
                // The holder relays its routes to a returning primary.
                if takeback && self.cfg.dvipas[i].primary == from as usize {
                    if let Some(r) = self.routers.get_mut(&i).filter(|r| r.active) {
                        r.handover_to = Some(from);
                        r.ready = false;
                        let flows: Vec<_> = r.flows.iter().filter(|(_, f)| !f.hint && f.dead_since.is_none()).map(|(k, f)| (*k, *f)).collect();
                        let n = flows.len();
                        for (k, f) in flows {
                            self.relay(from, i, k, f);
                        }
                        self.queue(from, kind::ROUTES_DONE, [i as u64, n as u64, 0, 0, 0, 0, 0]);
                    }
                }
            }
            kind::REPORT_DONE => {
                let epoch = m.payload[1] as u32;
                let mut late = false;
                if let Some(r) = self.routers.get_mut(&i) {
                    if r.epoch == epoch && r.waiting.remove(&from) {
                        late = r.active && !r.rebuilding;
                    }
                }
                if late {
                    self.drop_hints_of(i, from);
                }
            }
            kind::ROUTES_DONE => {
                if let Some(r) = self.routers.get_mut(&i) {
                    if !r.active && r.holder == Some(from) {
                        r.routes_done = true;
                    }
                }
            }
            kind::TAKEBACK_READY => {
                if let Some(r) = self.routers.get_mut(&i) {
                    if r.active && r.handover_to == Some(from) {
                        r.ready = true;
                    }
                }
            }
            kind::SRVSTAT => self.on_srvstat(now, i, &d, m),
            kind::NEWCONN | kind::TERMCONN => self.on_conn(now, i, &d, m),
            _ => self.invalid.add(Invalid::Message),
        }
    }

    fn on_srvstat(&mut self, now: u64, i: usize, d: &DistributeDef, m: &Message) {
        let port = (m.payload[0] >> 16) as u16;
        let listeners = (m.payload[0] >> 32) as u32;
        let seq = m.payload[1];
        let (queue_free, busy, draining) = (m.payload[2] as u32, (m.payload[2] >> 32) as u16, (m.payload[2] >> 48) & 1 == 1);
        let from = m.from_slot;
        if !d.ports.contains(port) || busy > 1000 || m.payload[2] >> 49 != 0 {
            self.invalid.add(Invalid::Message);
            return;
        }
        if !d.candidates().contains(&(from as usize)) {
            self.stats.not_candidate += 1;
            return;
        }
        let inc = if from == self.slot { self.inc } else { self.member_inc(from, now) };
        let Some(r) = self.routers.get_mut(&i) else { return };
        let e = r.dpt.entry((port, from)).or_insert(Stat {
            listeners: 0,
            seq: 0,
            inc,
            queue_free: DEFAULT_QUEUE_FREE,
            busy_permille: 0,
            draining: false,
            syns: 0,
            row: None,
            dirty: true,
        });
        if e.inc != inc {
            *e = Stat { inc, seq: 0, ..*e };
        }
        if seq <= e.seq {
            self.stats.srvstat_replays += 1;
            return;
        }
        e.seq = seq;
        e.listeners = listeners;
        e.queue_free = queue_free;
        e.busy_permille = busy;
        e.draining = draining;
        e.dirty = true;
        self.routing_version += 1;
    }

    fn member_inc(&self, s: u8, now: u64) -> u64 {
        check::member(&self.region, &self.cfg, s as usize, now).map_or(0, |m| m.incarnation)
    }

    fn on_conn(&mut self, now: u64, i: usize, d: &DistributeDef, m: &Message) {
        let addr = self.cfg.dvipas[i].addr;
        let port = (m.payload[0] >> 16) as u16;
        let relayed = (m.payload[0] >> 32) & 0xff == 1;
        let client = m.payload[1];
        let (target, seq, tinc) = (m.payload[2] as u8, m.payload[3], m.payload[4]);
        // A target's report of a connection it just accepted (not a replay for a rebuild).
        let passive_open = !relayed && m.payload[5] & NEWCONN_PASSIVE_OPEN != 0;
        let from = m.from_slot;
        if client >> 48 != PROTO_TCP || (target as usize) >= self.cfg.stacks.len() || (!relayed && target != from) {
            self.invalid.add(Invalid::Message);
            return;
        }
        if !d.candidates().contains(&(target as usize)) {
            self.stats.not_candidate += 1;
            return;
        }
        let k = (SocketAddrV4::new(addr, port), unpack_sock(client & 0xffff_ffff_ffff));
        let me = self.slot;
        let Some(r) = self.routers.get_mut(&i) else { return };
        if m.kind == kind::TERMCONN {
            if let Some(f) = r.flows.get(&k).copied() {
                if f.target != target {
                    self.stats.conflicts += 1;
                    return;
                }
                if f.seq > seq && f.target_inc == tinc {
                    // Older than the NEWCONN of the flow now on this tuple: a replay.
                    self.stats.conn_replays += 1;
                    return;
                }
                r.terminated.insert(k, (target, now, seq, tinc));
                r.flows.remove(&k);
                if f.dead_since.is_none() {
                    r.conns[f.target as usize] = r.conns[f.target as usize].saturating_sub(1);
                }
                if let Some((idx, ctl)) = f.row {
                    crt_delete(&self.region, idx, ctl);
                }
                if r.active && f.dead_since.is_none() {
                    self.actions.push(DistAction::FlowRemoved { local: k.0, remote: k.1 });
                }
            } else {
                r.terminated.insert(k, (target, now, seq, tinc));
            }
            return;
        }
        if relayed {
            // Relays come only from the holder a returning primary prepared against, and
            // never override what a target reported itself.
            if r.holder != Some(from) {
                self.invalid.add(Invalid::Message);
                return;
            }
            if r.terminated.get(&k).is_some_and(|(t, _, _, _)| *t == target) {
                self.stats.relays_ignored += 1;
                return;
            }
            if r.flows.get(&k).is_some_and(|f| !f.hint && f.dead_since.is_none()) {
                return;
            }
        } else {
            if r.terminated.get(&k).is_some_and(|&(t, _, s, inc)| t == target && inc == tinc && s >= seq) {
                // A NEWCONN older than the TERMCONN that ended the flow: a replay.
                self.stats.conn_replays += 1;
                return;
            }
            r.terminated.remove(&k);
        }
        let inc = if from == me && !relayed { self.inc } else { tinc };
        let prev = r.flows.get(&k).copied();
        if let Some(p) = prev {
            if !relayed && p.seq >= seq && p.target == target && !p.hint && p.dead_since.is_none() && p.confirmed {
                return;
            }
            if p.target != target && !p.hint && p.dead_since.is_none() {
                // The connection moved (handoff): the new stack's NEWCONN switches the flow
                // (its sequence numbers are its own: only the same target's are compared).
                self.stats.flows_moved += 1;
            }
            if p.dead_since.is_none() {
                r.conns[p.target as usize] = r.conns[p.target as usize].saturating_sub(1);
            }
        }
        let (active, epoch) = (r.active, r.epoch);
        let created = prev.map_or(now, |p| p.created_ns);
        let row = if active {
            let rr = self.crt_store(now, &k, target, inc, created, epoch, prev.and_then(|p| p.row));
            if rr.is_none() {
                self.stats.crt_full += 1;
            }
            rr
        } else {
            None
        };
        let Some(r) = self.routers.get_mut(&i) else { return };
        let confirmed = !relayed || m.payload[5] & 1 == 1;
        r.flows.insert(k, Flow { target, target_inc: inc, created_ns: created, row, hint: false, dead_since: None, seq: if relayed { 0 } else { seq }, confirmed });
        r.conns[target as usize] += 1;
        if active && prev.is_none() && passive_open {
            // No SYN of this flow reached the router's poll thread: its XDP program steered it
            // (or a former router routed it). The DPT counts it for the target all the same.
            if let Some(s) = r.dpt.get_mut(&(k.0.port(), target)) {
                s.syns += 1;
                s.dirty = true;
            }
            self.stats.syns_steered += 1;
        }
        if active && prev.is_none_or(|p| p.target != target || p.dead_since.is_some()) {
            self.actions.push(DistAction::FlowInstalled { local: k.0, remote: k.1, target });
        }
        if let Some(p) = r.handover_to.filter(|_| active) {
            let f = r.flows[&k];
            self.relay(p, i, k, f);
        }
    }

    fn relay(&mut self, to: u8, i: usize, k: (SocketAddrV4, SocketAddrV4), f: Flow) {
        self.stats.routes_relayed += 1;
        self.queue(to, kind::NEWCONN, [i as u64 | (k.0.port() as u64) << 16 | 1 << 32, client_word(k.1), f.target as u64, 0, f.target_inc, f.confirmed as u64, 0]);
    }

    // ---------------------------------------------------------------- routing

    /// Where an inbound TCP segment to `local` (a DVIPA:port of this stack's home list) from
    /// `remote` goes; `syn`: a pure SYN (SYN set, ACK clear). Bounded work; allocation only
    /// for a new flow. The caller applies the [`DistAction`]s it produced at the next
    /// [`Distributor::poll`] / [`Distributor::drain_actions`].
    pub fn route(&mut self, now: u64, local: SocketAddrV4, remote: SocketAddrV4, syn: bool) -> Route {
        let Some(i) = self.cfg.dvipa_index(*local.ip()) else { return Route::NotDistributed };
        let Some(r) = self.routers.get(&i).filter(|r| r.active) else { return Route::NotDistributed };
        let k = (local, remote);
        let rebuilding = r.rebuilding && now < r.grace_until;
        let known = r.flows.get(&k).copied();
        // Never two routers forwarding one flow: forward only while the owner word names us.
        let me = self.slot;
        if !self.owner(i).is_some_and(|w| w.held() && w.owner == me) {
            self.stats.held += 1;
            return Route::Hold;
        }
        if known.is_none() && self.conns.contains(&k) {
            // A connection the router holds itself without an entry (kept locally for want of
            // a target, or a full CRT).
            return Route::Local;
        }
        if let Some(f) = known {
            if f.dead_since.is_none() {
                if f.hint {
                    self.stats.hint_forwards += 1;
                }
                return self.route_to(f.target);
            }
            if !syn {
                self.stats.resets += 1;
                self.stats.resets_dead_target += 1;
                return Route::Reset;
            }
        }
        let cfg = self.cfg.clone();
        let Some(d) = cfg.dvipas[i].distribute.as_ref() else { return Route::NotDistributed };
        if !d.ports.contains(local.port()) {
            return Route::NotDistributed;
        }
        if !syn {
            if rebuilding {
                self.stats.held += 1;
                return Route::Hold;
            }
            self.stats.resets += 1;
            return Route::Reset;
        }
        // A new connection.
        let listens_here = self.srv_of(i, local.port()).listeners > 0;
        let full = self.routers.values().map(|r| r.flows.len()).sum::<usize>() >= CRT_ROWS;
        let pick = if full { None } else { self.pick(i, local.port(), d) };
        let target = match pick {
            Some(t) => t,
            None if full => {
                self.stats.crt_full += 1;
                return self.no_target(listens_here, false);
            }
            None => return self.no_target(listens_here, rebuilding),
        };
        let (inc, epoch) = {
            let r = &self.routers[&i];
            (r.dpt.get(&(local.port(), target)).map_or(0, |s| s.inc), r.epoch)
        };
        let Some(row) = self.crt_store(now, &k, target, inc, now, epoch, None) else {
            self.stats.crt_full += 1;
            return self.no_target(listens_here, false);
        };
        let Some(r) = self.routers.get_mut(&i) else { return Route::Hold };
        let flow = Flow { target, target_inc: inc, created_ns: now, row: Some(row), hint: false, dead_since: None, seq: 0, confirmed: false };
        let old = r.flows.insert(k, flow);
        if let Some((idx, ctl)) = old.and_then(|o| o.row) {
            crt_delete(&self.region, idx, ctl);
        }
        r.conns[target as usize] += 1;
        if let Some(s) = r.dpt.get_mut(&(local.port(), target)) {
            s.syns += 1;
            s.dirty = true;
        }
        let relay = r.handover_to;
        self.actions.push(DistAction::FlowInstalled { local, remote, target });
        if let Some(p) = relay {
            self.relay(p, i, k, flow);
            self.flush();
        }
        if target == me {
            self.stats.syns_local += 1;
        } else {
            self.stats.syns_forwarded += 1;
        }
        self.route_to(target)
    }

    fn route_to(&mut self, t: u8) -> Route {
        if t == self.slot {
            Route::Local
        } else {
            self.stats.forwarded += 1;
            Route::Forward { slot: t }
        }
    }

    fn no_target(&mut self, listens_here: bool, rebuilding: bool) -> Route {
        if listens_here {
            self.stats.syns_local += 1;
            Route::Local
        } else if rebuilding {
            self.stats.syns_held += 1;
            self.stats.held += 1;
            Route::Hold
        } else {
            self.stats.syns_reset += 1;
            self.stats.resets += 1;
            Route::Reset
        }
    }

    /// The weight a target is chosen by (also published in the DPT).
    fn weight(d: &DistributeDef, t: u8, s: &Stat) -> u32 {
        match d.method {
            DistMethod::WeightedRoundRobin => d.weights[t as usize],
            DistMethod::ServerWeight => (s.queue_free.min(65_535) as u64 * (1000 - s.busy_permille.min(1000) as u64) / 1000) as u32,
            _ => 1,
        }
    }

    /// Choose the target of a new connection on `port` by the method, among the ready
    /// targets of this router's list.
    fn pick(&mut self, i: usize, port: u16, d: &DistributeDef) -> Option<u8> {
        let me = self.slot as usize;
        let list = d.targets_of(me);
        let r = self.routers.get_mut(&i)?;
        // No allocation: at most one entry per stack slot, in slot order.
        let mut buf = [(0u8, 0u32); MAX_STACKS];
        let mut n = 0;
        for (&(_, t), s) in r.dpt.range((port, 0)..=(port, u8::MAX)) {
            if s.listeners > 0 && !s.draining && list.contains(&(t as usize)) && n < MAX_STACKS {
                buf[n] = (t, Self::weight(d, t, s));
                n += 1;
            }
        }
        let ready = &buf[..n];
        if ready.is_empty() {
            return None;
        }
        let last = r.rr_last.get(&port).copied();
        let conns = r.conns;
        // Round-robin order among those `ok` accepts: the first slot after the last one
        // picked, wrapping.
        let rr_first = |ok: &dyn Fn(u8) -> bool| -> Option<u8> {
            let mut it = ready.iter().map(|x| x.0).filter(|t| ok(*t));
            let first = it.clone().next();
            it.find(|t| last.is_some_and(|l| *t > l)).or(first)
        };
        let t = match d.method {
            DistMethod::RoundRobin => rr_first(&|_| true)?,
            DistMethod::LeastConnections => {
                let min = ready.iter().map(|(t, _)| conns[*t as usize]).min().unwrap_or(0);
                rr_first(&|t| conns[t as usize] == min)?
            }
            DistMethod::WeightedRoundRobin | DistMethod::ServerWeight => {
                let total: i64 = ready.iter().map(|(_, w)| *w as i64).sum();
                if total == 0 {
                    rr_first(&|_| true)?
                } else {
                    // Smooth weighted round robin (nginx): add each weight, take the largest
                    // (ties: lowest slot), subtract the total from it.
                    let mut best: Option<(u8, i64)> = None;
                    for (t, w) in ready {
                        let c = r.wrr.entry((port, *t)).or_insert(0);
                        *c += *w as i64;
                        if best.is_none_or(|(_, b)| *c > b) {
                            best = Some((*t, *c));
                        }
                    }
                    let (t, _) = best?;
                    *r.wrr.entry((port, t)).or_insert(0) -= total;
                    t
                }
            }
        };
        r.rr_last.insert(port, t);
        Some(t)
    }

    /// Changes whenever [`Distributor::syn_schedules`] may answer differently.
    pub fn routing_version(&self) -> u64 {
        self.routing_version
    }

    /// For every (DVIPA, port) this stack routes and its targets listen on: the targets new
    /// connections go to, in the order a stateless steering (the router's XDP program, which
    /// hands a SYN to the next one and installs its flow) gives them out; an empty list where
    /// every SYN must come to the poll thread instead (least connections and server weight
    /// decide by per-connection figures; the router is one of the targets itself; no target
    /// is ready). Round robin lists each ready target once in slot order; weighted round
    /// robin lists the smooth weighted sequence over the weights' sum (scaled down to at most
    /// `max` entries). The router learns the connections so steered from their targets'
    /// NEWCONN, as after a takeover.
    pub fn syn_schedules(&self, max: usize) -> Vec<(SocketAddrV4, Vec<u8>)> {
        let mut out = Vec::new();
        let me = self.slot;
        for (&i, r) in self.routers.iter().filter(|(_, r)| r.active) {
            let Some(d) = self.def(i) else { continue };
            let list = d.targets_of(me as usize);
            let ports: BTreeSet<u16> = r.dpt.keys().map(|k| k.0).filter(|p| d.ports.contains(*p)).collect();
            for port in ports {
                let ready: Vec<(u8, u32)> = r
                    .dpt
                    .range((port, 0)..=(port, u8::MAX))
                    .filter(|(&(_, t), s)| s.listeners > 0 && !s.draining && list.contains(&(t as usize)))
                    .map(|(&(_, t), s)| (t, Self::weight(d, t, s)))
                    .collect();
                let steerable = !ready.is_empty()
                    && !ready.iter().any(|(t, _)| *t == me)
                    && matches!(d.method, DistMethod::RoundRobin | DistMethod::WeightedRoundRobin);
                let order = if !steerable {
                    Vec::new()
                } else if d.method == DistMethod::RoundRobin {
                    ready.iter().map(|(t, _)| *t).collect()
                } else {
                    smooth_wrr(&ready, max)
                };
                out.push((SocketAddrV4::new(r.addr, port), order));
            }
        }
        out
    }

    // ---------------------------------------------------------------- region tables

    /// Write the CRT row of flow `k` (adopting `old` if given, else claiming a free row):
    /// `None` when the table is full.
    #[allow(clippy::too_many_arguments)]
    fn crt_store(&mut self, _now: u64, k: &(SocketAddrV4, SocketAddrV4), target: u8, inc: u64, created: u64, epoch: u32, old: Option<(u32, u64)>) -> Option<(u32, u64)> {
        let rows = self.region.crt();
        let writing = crt_ctl(CRT_WRITING, self.slot, target, epoch);
        let mut claimed = None;
        if let Some((idx, ctl)) = old {
            if let Some(row) = rows.get(idx as usize) {
                if row.ctl.compare_exchange(ctl, writing, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    claimed = Some(idx as usize);
                }
            }
        }
        if claimed.is_none() {
            let start = crt_start(k.0, k.1);
            for n in 0..rows.len() {
                let idx = (start + n) % rows.len();
                if rows[idx].ctl.load(Ordering::Relaxed) == 0 && rows[idx].ctl.compare_exchange(0, writing, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    claimed = Some(idx);
                    break;
                }
            }
        }
        let idx = claimed?;
        let row = &rows[idx];
        let live = crt_ctl(CRT_LIVE, self.slot, target, epoch);
        let (c, s) = (client_word(k.1), server_word(k.0));
        row.client.store(c, Ordering::Relaxed);
        row.server.store(s, Ordering::Relaxed);
        row.target_inc.store(inc, Ordering::Relaxed);
        row.created_ns.store(created, Ordering::Relaxed);
        row.check.store(crt_check(live, c, s, inc, created), Ordering::Relaxed);
        row.ctl.store(live, Ordering::Release);
        Some((idx as u32, live))
    }

    /// Publish the DPT rows of DVIPA row `i` that changed.
    fn publish_dpt(&mut self, i: usize) {
        let region = self.region.clone();
        let me = self.slot;
        let Some(d) = self.def(i).cloned() else { return };
        let Some(r) = self.routers.get_mut(&i).filter(|r| r.active) else { return };
        let conns = r.conns;
        let epoch = r.epoch;
        let addr = r.addr;
        let mut full = 0;
        for (&(port, t), s) in r.dpt.iter_mut() {
            let row_idx = match s.row {
                Some(x) => x as usize,
                None => match dpt_claim(&region, dpt_key(addr, port, t)) {
                    Some(x) => {
                        s.row = Some(x as u32);
                        s.dirty = true;
                        x
                    }
                    None => {
                        full += 1;
                        continue;
                    }
                },
            };
            let row = &region.dpt()[row_idx];
            if !s.dirty && row.conns.load(Ordering::Relaxed) == conns[t as usize] {
                continue;
            }
            s.dirty = false;
            let flags = ((s.listeners > 0 && !s.draining) as u32) | (s.draining as u32) << 1;
            let q = row.seq.load(Ordering::Relaxed);
            row.seq.store(q | 1, Ordering::Release);
            row.router.store(me as u32, Ordering::Relaxed);
            row.epoch.store(epoch, Ordering::Relaxed);
            row.listeners.store(s.listeners, Ordering::Relaxed);
            row.flags.store(flags, Ordering::Relaxed);
            row.weight.store(Self::weight(&d, t, s), Ordering::Relaxed);
            row.queue_free.store(s.queue_free, Ordering::Relaxed);
            row.busy_permille.store(s.busy_permille as u32, Ordering::Relaxed);
            row.conns.store(conns[t as usize], Ordering::Relaxed);
            row.srvstat_seq.store(s.seq, Ordering::Relaxed);
            row.syns.store(s.syns, Ordering::Relaxed);
            row.seq.store((q | 1).wrapping_add(1), Ordering::Release);
        }
        self.stats.dpt_full += full;
    }

    // ---------------------------------------------------------------- views for tests / ctl

    /// The target this router has for a flow (`None`: unknown here, or not routing).
    pub fn flow_target(&self, local: SocketAddrV4, remote: SocketAddrV4) -> Option<u8> {
        let i = self.cfg.dvipa_index(*local.ip())?;
        let f = self.routers.get(&i)?.flows.get(&(local, remote))?;
        f.dead_since.is_none().then_some(f.target)
    }

    /// Flows this stack routes for `addr` (hints of a rebuild included).
    pub fn flow_count(&self, addr: Ipv4Addr) -> usize {
        self.cfg.dvipa_index(addr).and_then(|i| self.routers.get(&i)).map_or(0, |r| r.flows.values().filter(|f| f.dead_since.is_none()).count())
    }

    /// Is the router of `addr` rebuilding (holding unknown flows)?
    pub fn rebuilding(&self, addr: Ipv4Addr) -> bool {
        self.cfg.dvipa_index(addr).and_then(|i| self.routers.get(&i)).is_some_and(|r| r.active && r.rebuilding)
    }

    /// The DPT of `addr` as this router holds it: (port, target, listeners, draining).
    pub fn dpt_of(&self, addr: Ipv4Addr) -> Vec<(u16, u8, u32, bool)> {
        self.cfg
            .dvipa_index(addr)
            .and_then(|i| self.routers.get(&i))
            .map(|r| r.dpt.iter().map(|(&(p, t), s)| (p, t, s.listeners, s.draining)).collect())
            .unwrap_or_default()
    }
}

/// Delete CRT row `idx` if it still holds `ctl` (a CAS: a row another router adopted meanwhile
/// stays).
fn crt_delete(region: &Region, idx: u32, ctl: u64) {
    if let Some(row) = region.crt().get(idx as usize) {
        let _ = row.ctl.compare_exchange(ctl, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The DPT row of `key`, claiming a free one (linear probing from a hash of the key).
fn dpt_claim(region: &Region, key: u64) -> Option<usize> {
    let rows = region.dpt();
    let start = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % rows.len().max(1);
    for n in 0..rows.len() {
        let idx = (start + n) % rows.len();
        match rows[idx].key.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(idx),
            Err(v) if v == key => return Some(idx),
            Err(_) => {}
        }
    }
    None
}

/// Mark a DPT row's target down (it failed): no listeners, flag 4.
fn dpt_mark_down(region: &Region, idx: usize) {
    let Some(row) = region.dpt().get(idx) else { return };
    let q = row.seq.load(Ordering::Relaxed);
    row.seq.store(q | 1, Ordering::Release);
    row.listeners.store(0, Ordering::Relaxed);
    row.flags.store(4, Ordering::Relaxed);
    row.conns.store(0, Ordering::Relaxed);
    row.seq.store((q | 1).wrapping_add(1), Ordering::Release);
}

#[cfg(test)]
mod tests;
