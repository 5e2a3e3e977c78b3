//! A stack instance as a member of a plex cluster: the poll thread's side of the coupling
//! region.
//!
//! [`ClusterMember`] runs inside the poll loop (never on another thread, never blocking): at
//! every heartbeat, and before touching any frame whenever the lease might have lapsed (a
//! stalled process that wakes up must not answer for addresses it lost), it
//! - watches the other members' processes through pidfds (a killed stack is declared failed at
//!   once, without waiting for its lease),
//! - ticks the coupling [`Node`] (lease renewal, failure detection, the DVIPA protocol),
//! - applies what the node decided: a DVIPA that leaves is removed from the XDP steering map
//!   *before* the stack forgets it; one that arrives is added to the stack and the map, then
//!   announced by gratuitous ARP (request and reply forms, repeated three times); once the
//!   first announcement has left (two turns later) the node marks the row announced, which is
//!   what `plex ctl dvipa activate` waits for,
//! - ticks at every turn, not every heartbeat, while a command moves an address here (the
//!   address is then unanswered only from the old owner's release to our next turn),
//! - logs rows the node ignored or repaired, and leaves the cluster if the region went bad
//!   (truncated, zeroed, overwritten, replaced): its DVIPAs are dropped and the stack serves
//!   its own address alone until it is restarted.
//!
//! [`StackCluster`] is the [`stack::cluster::Cluster`] the stack holds, and it owns the
//! coupling [`Node`]: the stack's synchronous questions (bind activation of range DVIPAs) are
//! answered from it, and the member reaches it through the stack at its turns
//! (`node_of`). One owner, one thread, no lock (the cluster runs one queue per stack). What
//! the stack tells the cluster (listeners and connections coming and going) arrives as
//! [`ClusterEvent`]s, drained at every turn.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use coupling::dist::{DistAction, Distributor, Route};
use coupling::config::PortsMode;
use coupling::handoff::{Handoff, TransferId};
use coupling::ports::{PortsError, Registry};
use coupling::layout::{MemberState, MAX_STACKS};
use coupling::node::{Action, ConnectionFate, Identity, Node};
use coupling::{ClusterConfig, Region};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use stack::cluster::{Cluster, ClusterEvent, InboundRoute, Opened, PortClaim, SingleStack, EPHEMERAL_PORTS};
use stack::iface::Stack;
use stack::rand::Rng;
use stack::tcp::Tuple;
use stack::time::{Duration, Instant};

use crate::clock::Clock;
use crate::shards::{Published, ShardSet};
use crate::xdp::{FlowMap, HomeMap};
use parking_lot::Mutex;


struct Watch {
    incarnation: u64,
    fd: OwnedFd,
}

/// The cluster side of one stack's poll loop.
pub struct ClusterMember {
    clock: Clock,
    name: String,
    heartbeat: Duration,
    next_tick: Instant,
    /// The lease holds until here without a tick (the fast path takes no lock).
    lease_ok: Instant,
    watches: Vec<Option<Watch>>,
    actions: Vec<Action>,
    /// Gratuitous ARP still to repeat: (when, address, repeats left).
    reannounce: Vec<(Instant, Ipv4Addr, u8)>,
    /// Left the cluster (stopping): no more ticks.
    left: bool,
    /// Activated addresses to mark announced, with the turns to wait (their first gratuitous
    /// ARP leaves in the TX of the turn that activated them).
    marks: Vec<(Ipv4Addr, u8)>,
    /// The region went bad and we said so.
    detached_logged: bool,
    /// Addresses this stack serves as its own (kept when it leaves the cluster).
    own: Ipv4Addr,
    /// The stack's cluster events drained so far.
    events: EventTally,
    /// Connections per local address, counted before a tick (the node asks).
    conns: Vec<(Ipv4Addr, usize)>,
    /// The stack's cluster events of this turn, for the distributor.
    pending: Vec<ClusterEvent>,
    /// Listeners per local address (the distributor takes absolute counts).
    listening: std::collections::HashMap<SocketAddrV4, u32>,
    /// What the distributor asked of the stack.
    dist_actions: Vec<DistAction>,
    /// XDP programs dead stacks left pinned (their fast path), to remove when due unless the
    /// stack came back: (when, slot).
    stale_pins: Vec<(Instant, usize)>,
    /// Addresses this stack stopped routing: their fast-path flows keep forwarding what clients
    /// still send here until due (the targets do not change when the router does).
    fast_expiry: Vec<(Instant, Ipv4Addr)>,
    /// Members whose process exited since the last turn (their clients are reset at once).
    died: Vec<usize>,
    /// Poll-loop turns since the last heartbeat, and those that did work (the busy fraction
    /// a target publishes for the server-weight method).
    turns: u64,
    busy_turns: u64,
    /// When dead stacks' cluster-wide ports are next looked for.
    next_reclaim: Instant,
    /// What the handoff protocol said this turn.
    handoff_events: Vec<coupling::handoff::HandoffEvent>,
    /// The stack's other shards, when it runs several queues (this member is the lead's).
    shards: Option<Arc<ShardSet>>,
    /// What the lead published for them last.
    published: Published,
    /// When mail (ring messages) last came in, and when to look again: while mail flows, a
    /// sleeping poll loop comes back every [`MAIL_POLL`] (nothing wakes it when another
    /// stack writes to its ring, and a router whose SYNs its XDP program steers gets few
    /// frames, while each connection brings it a NEWCONN and a TERMCONN).
    mail_last: Instant,
    mail_due: Option<Instant>,
    /// The cluster's other stacks' MACs, as last given to the stack.
    macs: Vec<stack::wire::MacAddr>,
}

/// How often a sleeping member looks at its rings while mail flows, and for how long after the
/// last message.
const MAIL_POLL: Duration = Duration::from_millis(1);
const MAIL_WINDOW: Duration = Duration::from_millis(50);

/// How long a dead stack's pinned XDP fast path keeps forwarding before a live member removes
/// it: clients have moved to the new router (gratuitous ARP) well before.
const STALE_PIN_GRACE: Duration = Duration::from_secs(3);

/// Counts of the [`ClusterEvent`]s a member drained (`--stats`): what the distributor and the
/// port registry will be built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTally {
    /// Listeners opened.
    pub listeners_opened: u64,
    /// Listeners closed.
    pub listeners_closed: u64,
    /// Connections installed (accepted, connected, by cookie, restored).
    pub connections_opened: u64,
    /// Connections closed here.
    pub connections_closed: u64,
    /// Connections moved to another stack.
    pub connections_moved: u64,
    /// Ephemeral ports given back.
    pub ports_released: u64,
}

impl EventTally {
    fn count(&mut self, e: ClusterEvent) {
        let n = match e {
            ClusterEvent::ListenerOpened(_) => &mut self.listeners_opened,
            ClusterEvent::ListenerClosed(_) => &mut self.listeners_closed,
            ClusterEvent::ConnectionOpened(..) => &mut self.connections_opened,
            ClusterEvent::ConnectionClosed(_) => &mut self.connections_closed,
            ClusterEvent::ConnectionMoved(_) => &mut self.connections_moved,
            ClusterEvent::PortReleased { .. } => &mut self.ports_released,
            ClusterEvent::UdpBound(_) | ClusterEvent::UdpClosed(_) => return,
        };
        *n += 1;
    }
}

impl std::fmt::Debug for ClusterMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterMember").field("name", &self.name).finish()
    }
}

/// What the stack holds: the coupling node, and bind activation through it.
pub struct StackCluster {
    node: Node,
    /// The distributor: router of the distributed DVIPAs this stack holds, target of those it
    /// is a candidate of.
    dist: Distributor,
    /// The steering map (set once the interface is attached, after joining).
    home: Option<HomeMap>,
    /// The steering program's flows map (the distributor's fast path), with it.
    flows: Option<FlowMap>,
    /// The steering program's SYN map (the router hands new connections to its targets in
    /// the program itself), if SYN steering is on; what it holds now; the distributor's
    /// routing version it was computed at.
    syn_map: Option<crate::xdp::SynMap>,
    syn_installed: std::collections::HashMap<SocketAddrV4, Vec<[u8; 6]>>,
    syn_version: u64,
    /// The flows in the fast path with their target's slot, per distributed DVIPA (removed
    /// when routing stops).
    fast: std::collections::HashMap<Ipv4Addr, std::collections::HashMap<(SocketAddrV4, SocketAddrV4), u8>>,
    /// This stack's MAC (the source of forwarded frames).
    mac: [u8; 6],
    /// Addresses activated by bind since the last turn: announce them.
    bound: Vec<Ipv4Addr>,
    /// The cluster-wide port registry: local ports of addresses with `cluster_ports`, and the
    /// owner of each for routing replies (shared with the follower shards of a stack on
    /// several queues, whose binds and connects claim there too).
    ports: Arc<Mutex<Registry>>,
    /// The last port-registry refusal logged (one line per kind of trouble, not per connect).
    ports_logged: Option<String>,
    /// Segments routed to another stack by the port registry (replies to connections a
    /// target opened, before or without its NEWCONN).
    pub ports_forwarded: u64,
    /// Live connection handoff: the coupling protocol, and the poll loop's side of it
    /// (frozen connections and their held segments, offers for the application).
    handoff: Handoff,
    pub(crate) hand: crate::handoff::HandoffState,
    /// A drain in progress (`plex ctl drain`).
    pub(crate) drain: Option<crate::handoff::Drain>,
    /// A giveback by handoff in progress: this address's connections go to this stack slot.
    pub(crate) hand_back: Option<(Ipv4Addr, u8)>,
    /// What the distributor asked for while routing a segment (it read its mail then): applied
    /// at the member's next turn.
    late_actions: Vec<DistAction>,
    clock: Clock,
    /// The stack's other shards, when it runs several queues (this is the lead).
    shards: Option<Arc<ShardSet>>,
    /// The frame in hand was handed over by this follower shard: what would be taken here is
    /// handed back to it, decided.
    pub(crate) deciding_for: Option<u32>,
    /// The SYN in hand is taken by the lead: its 4-tuple, claimed in the shards' table
    /// (see [`crate::shards::ShardCluster`]).
    claimed: Option<Tuple>,
}

impl std::fmt::Debug for StackCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackCluster").field("node", &self.node.name()).finish()
    }
}

impl StackCluster {
    /// The interface is attached: DVIPAs go into (and out of) this steering map, and the
    /// distributor's flows into `flows`.
    pub fn set_steering(&mut self, home: HomeMap, flows: FlowMap) {
        self.home = Some(home);
        self.flows = Some(flows);
    }

    /// Let the steering program hand new connections of the addresses this stack routes to
    /// their targets itself (round robin and weighted round robin; see
    /// [`Distributor::syn_schedules`]).
    pub fn set_syn_steering(&mut self, syns: crate::xdp::SynMap) {
        self.syn_map = Some(syns);
    }

    /// Bring the steering program's SYN map in line with the distributor (when its routing
    /// changed, or `force`: at a heartbeat, when a target's MAC may have become known).
    fn steer_syns(&mut self, ns: u64, force: bool) {
        let Some(map) = self.syn_map.as_ref() else { return };
        let v = self.dist.routing_version();
        if v == self.syn_version && !force {
            return;
        }
        self.syn_version = v;
        let mut want: std::collections::HashMap<SocketAddrV4, Vec<[u8; 6]>> = Default::default();
        if self.node.detached().is_none() {
            for (local, order) in self.dist.syn_schedules(crate::xdp::layout::SYN_SLOTS as usize) {
                // Every target's MAC known, or the poll thread decides.
                let macs: Option<Vec<[u8; 6]>> = order.iter().map(|t| self.mac_of(*t, ns)).collect();
                if let Some(m) = macs.filter(|m| !m.is_empty()) {
                    want.insert(local, m);
                }
            }
        }
        let name = self.node.name().to_string();
        for local in self.syn_installed.keys().filter(|k| !want.contains_key(k)) {
            if let Err(e) = map.remove(*local) {
                log(&name, format_args!("{e}"));
            }
        }
        for (local, macs) in &want {
            if self.syn_installed.get(local) != Some(macs) {
                if let Err(e) = map.set(*local, self.mac, macs) {
                    log(&name, format_args!("{e}"));
                }
            }
        }
        self.syn_installed = want;
    }

    /// The distributor (its counters and tables, for reports).
    pub fn distributor(&self) -> &Distributor {
        &self.dist
    }

    /// The MAC of member `slot` if it is up, from its row.
    fn mac_of(&self, slot: u8, now_ns: u64) -> Option<[u8; 6]> {
        let region = self.node.region();
        if !coupling::node::member_up(region, self.node.config(), slot, now_ns) {
            return None;
        }
        let raw = region.members().get(slot as usize)?.mac.load(std::sync::atomic::Ordering::Relaxed).to_le_bytes();
        let mac: [u8; 6] = raw[..6].try_into().ok()?;
        // A zero or multicast MAC is not a stack's.
        (mac != [0; 6] && mac[0] & 1 == 0).then_some(mac)
    }
}

/// The member's way to the node: the stack's cluster, which [`ClusterMember::join`] made a
/// [`StackCluster`]. `None` for a stack built with another cluster (then the member does
/// nothing).
/// The MAC of member `slot` if it is up (the distributor forwards its connections' frames
/// there), from the region's member row.
pub(crate) fn member_mac(stack: &mut Stack, slot: u32, now: Instant) -> Option<[u8; 6]> {
    let c = node_of(stack)?;
    let now_ns = c.clock.mono_ns(now);
    c.mac_of(u8::try_from(slot).ok()?, now_ns)
}

/// The distributor's counters of a cluster member's stack.
pub fn dist_stats(stack: &Stack) -> Option<coupling::dist::DistStats> {
    let c: &dyn std::any::Any = stack.cluster();
    c.downcast_ref::<StackCluster>().map(|sc| sc.dist.stats)
}

/// The port registry's counters of a cluster member's stack, and the segments it routed by
/// port owner.
pub fn port_stats(stack: &Stack) -> Option<(coupling::ports::PortStats, u64)> {
    let c: &dyn std::any::Any = stack.cluster();
    c.downcast_ref::<StackCluster>().map(|sc| (sc.ports.lock().stats, sc.ports_forwarded))
}

/// The lead shard is about to receive a frame follower `from` handed over (`None`: done with
/// it); false if the stack is not a cluster member.
pub(crate) fn deciding_for(stack: &mut Stack, from: Option<u32>) -> bool {
    node_of(stack).map(|sc| sc.deciding_for = from).is_some()
}

/// The 4-tuple of the SYN the lead shard just claimed, if it did.
pub(crate) fn take_claim(stack: &mut Stack) -> Option<Tuple> {
    node_of(stack).and_then(|sc| sc.claimed.take())
}

pub(crate) fn node_of(stack: &mut Stack) -> Option<&mut StackCluster> {
    let c: &mut dyn std::any::Any = stack.cluster_mut();
    c.downcast_mut::<StackCluster>()
}

fn log(name: &str, msg: std::fmt::Arguments) {
    let ms = Clock::read_mono_ns() as f64 / 1e6;
    eprintln!("plex[{name}] {ms:.3}: {msg}");
}

impl ClusterMember {
    /// Attach to (or create) the cluster's region and join it as stack `name`. Done before
    /// touching the interface: a second process for a running stack is refused here, before it
    /// could replace the running one's XDP program.
    pub fn join(cfg: Arc<ClusterConfig>, name: &str, ident: Identity, clock: Clock) -> Result<(ClusterMember, StackCluster), String> {
        let now = clock.now();
        ClusterMember::join_at(cfg, name, ident, clock, now)
    }

    /// [`join`](ClusterMember::join) at `now` on `clock`'s time line (a simulation's time, say:
    /// the member's first heartbeat and lease are then where the simulation's clock is, not
    /// where the real one has got to while the test set up).
    pub fn join_at(cfg: Arc<ClusterConfig>, name: &str, ident: Identity, clock: Clock, now: Instant) -> Result<(ClusterMember, StackCluster), String> {
        let (region, stale) =
            Region::create_or_attach_logged(&cfg.region, &cfg.name, cfg.hash(), clock.mono_ns(now)).map_err(|e| e.to_string())?;
        if let Some(why) = stale {
            log(name, format_args!(
                "found a stale coupling region ({why}); replaced it with a new one (stacks still attached to the old file leave the cluster; restart them to rejoin)"
            ));
        }
        let mac = ident.mac;
        let node = Node::join(Arc::new(region), cfg.clone(), name, ident, clock.mono_ns(now)).map_err(|e| e.to_string())?;
        log(name, format_args!("joined cluster {} as slot {} incarnation {}", cfg.name, node.slot(), node.incarnation()));
        let own = cfg.stacks[node.slot()].addr;
        let heartbeat = Duration::from_millis(cfg.heartbeat_ms);
        let member = ClusterMember {
            clock,
            name: name.to_string(),
            heartbeat,
            next_tick: now,
            lease_ok: now,
            watches: (0..MAX_STACKS).map(|_| None).collect(),
            actions: Vec::new(),
            reannounce: Vec::new(),
            left: false,
            marks: Vec::new(),
            detached_logged: false,
            own,
            events: EventTally::default(),
            conns: Vec::new(),
            pending: Vec::new(),
            listening: Default::default(),
            dist_actions: Vec::new(),
            stale_pins: Vec::new(),
            fast_expiry: Vec::new(),
            died: Vec::new(),
            turns: 0,
            busy_turns: 0,
            next_reclaim: now,
            handoff_events: Vec::new(),
            shards: None,
            mail_last: Instant::ZERO,
            mail_due: None,
            published: Published::default(),
            macs: Vec::new(),
        };
        let dist = Distributor::new(&node);
        let ports = Arc::new(Mutex::new(Registry::new(&node)));
        let handoff = Handoff::new(&node);
        let sc = StackCluster {
            handoff,
            hand: Default::default(),
            drain: None,
            hand_back: None,
            late_actions: Vec::new(),
            node,
            dist,
            ports,
            ports_logged: None,
            ports_forwarded: 0,
            home: None,
            flows: None,
            syn_map: None,
            syn_installed: Default::default(),
            syn_version: u64::MAX,
            fast: Default::default(),
            mac,
            bound: Vec::new(),
            clock,
            shards: None,
            deciding_for: None,
            claimed: None,
        };
        Ok((member, sc))
    }

    /// The poll loop ended a turn that did (`busy`) or did not do work.
    pub fn note_turn(&mut self, busy: bool) {
        self.turns += 1;
        self.busy_turns += busy as u64;
    }

    /// The cluster events drained so far.
    pub fn events(&self) -> EventTally {
        self.events
    }

    /// When the loop must come back at the latest (adaptive sleep).
    pub fn next_deadline(&self) -> Instant {
        let d = self.reannounce.iter().map(|r| r.0).fold(self.next_tick, Instant::min);
        let d = self.mail_due.map_or(d, |m| d.min(m));
        if self.marks.is_empty() {
            d
        } else {
            // Come straight back: an operator's command waits for the mark.
            Instant::ZERO
        }
    }

    /// The stack runs several queues and this member is shard 0's, the lead's ([`crate::shards`]).
    pub fn set_shards(&mut self, set: Arc<ShardSet>) {
        self.shards = Some(set);
    }

    /// Called at the top of every poll-loop iteration, before any frame is handled (and once
    /// more before anything is sent). A lead shard then publishes its home list and lease for
    /// the followers.
    pub fn turn(&mut self, now: Instant, stack: &mut Stack) {
        self.turn_member(now, stack);
        if self.shards.is_some() {
            self.publish(stack);
            // What a drain or giveback moves: the followers move their connections too.
            let scope = crate::handoff::move_scope(stack, now);
            if let Some(set) = &self.shards {
                set.sync.set_scope(scope);
            }
        }
    }

    /// The lead's home list, the cluster's MACs and its lease, for the follower shards (the
    /// list only when it changed).
    fn publish(&mut self, stack: &Stack) {
        let Some(set) = &self.shards else { return };
        set.sync.set_lease(self.clock.mono_ns(self.lease_ok).max(1));
        if stack.homes() != self.published.homes.as_slice() || self.macs != self.published.macs {
            self.published.homes = stack.homes().to_vec();
            self.published.macs = self.macs.clone();
            let homes = &self.published.homes;
            self.published.silent.retain(|a| !homes.iter().any(|h| h.addr == *a));
            set.sync.publish(&self.published);
        }
    }

    fn turn_member(&mut self, now: Instant, stack: &mut Stack) {
        let ns = self.clock.mono_ns(now);
        let start = self.pending.len();
        while let Some(e) = stack.poll_cluster_event() {
            self.events.count(e);
            self.pending.push(e);
        }
        if let Some(set) = &self.shards {
            // The lead's own connections (the followers hand it their segments), then the
            // followers' events for the distributor and the registry.
            set.apply(0, &self.pending[start..]);
            let (tally, pending) = (&mut self.events, &mut self.pending);
            set.sync.take_events(|e| {
                tally.count(e);
                pending.push(e);
            });
        }
        if !self.left {
            let before = node_of(stack).map_or(0, |sc| sc.dist.stats.messages_in + sc.handoff.stats.messages_in);
            self.feed_distributor(ns, stack);
            if let Some(sc) = node_of(stack) {
                sc.steer_syns(ns, false);
                if sc.dist.stats.messages_in + sc.handoff.stats.messages_in != before {
                    self.mail_last = now;
                }
            }
            self.mail_due = (now < self.mail_last + MAIL_WINDOW).then(|| now + MAIL_POLL);
        }
        if !self.dist_actions.is_empty() {
            self.apply_dist(now, ns, stack);
        }
        if self.left || (now < self.next_tick && now < self.lease_ok && self.reannounce.is_empty() && self.marks.is_empty()) {
            return;
        }
        if !self.marks.is_empty() {
            for m in self.marks.iter_mut() {
                m.1 = m.1.saturating_sub(1);
                if m.1 == 0 && stack.has_address(m.0) {
                    if let Some(sc) = node_of(stack) {
                        sc.node.announced(m.0);
                    }
                }
            }
            self.marks.retain(|m| m.1 > 0);
        }
        let Some(sc) = node_of(stack) else { return };
        for a in sc.bound.drain(..) {
            self.reannounce.push((now + Duration::from_millis(20), a, 2));
            log(&self.name, format_args!("{a} active (bound by an application)"));
        }
        if !self.reannounce.is_empty() {
            for r in self.reannounce.iter_mut().filter(|r| r.0 <= now) {
                if stack.has_address(r.1) {
                    stack.announce(r.1);
                }
                r.2 -= 1;
                r.0 = now + Duration::from_millis(100);
            }
            self.reannounce.retain(|r| r.2 > 0);
        }
        if now < self.next_tick && node_of(stack).is_some_and(|sc| sc.node.lease_valid(ns)) {
            return;
        }
        self.next_tick = now + self.heartbeat;
        if self.fast_expiry.iter().any(|p| p.0 <= now) {
            self.expire_fast(now, stack);
        }
        self.publish_acceptance(ns, stack);
        // What the node may ask about our connections, counted before it borrows the stack.
        self.conns.clear();
        let hand_back = node_of(stack).and_then(|sc| sc.hand_back.map(|h| (h.0, sc.hand_in_flight())));
        for h in stack.homes() {
            let n = match hand_back {
                // A giveback by handoff waits for the connections that can move (and the
                // transfers in flight, which may come back), not for those already closing.
                Some((a, in_flight)) if a == h.addr => {
                    let live = stack.tcp_connections_on(a).iter().filter(|(_, s)| matches!(s, stack::tcp::State::Established | stack::tcp::State::CloseWait)).count();
                    live + in_flight
                }
                _ => stack.connections_on(h.addr),
            };
            let followers = self.shards.as_ref().map_or(0, |s| s.sync.follower_connections(h.addr));
            self.conns.push((h.addr, n + followers));
        }
        let Some(sc) = node_of(stack) else { return };
        // (The member rows are read only from a region that still checks out; the tick
        // itself starts with the same check and leaves the cluster if it fails.)
        if sc.node.detached().is_none() && sc.node.region().health().is_ok() {
            self.watch_members(&mut sc.node, ns);
        }
        if self.stale_pins.iter().any(|p| p.0 <= now) {
            self.release_stale_pins(now, ns, &sc.node);
        }
        if !self.died.is_empty() {
            self.reset_clients_of_dead(now, stack);
        }
        let Some(sc) = node_of(stack) else { return };
        let mut actions = std::mem::take(&mut self.actions);
        let fenced = sc.node.stats.fenced;
        let conns = &self.conns;
        let StackCluster { node, dist, .. } = sc;
        // A router gives a distributed DVIPA back only once its primary has rebuilt.
        node.tick(ns, &|a| dist.node_conns(a, conns.iter().find(|c| c.0 == a).map_or(0, |c| c.1)), &mut actions);
        dist.tick(ns, node, &mut self.dist_actions);
        sc.steer_syns(ns, true);
        sc.handoff.tick(ns, &mut sc.node, &mut self.handoff_events);
        self.watch_drain(now, ns, stack);
        self.watch_ports_enabled(ns, stack);
        // Frames from the other stacks (forwarded by a router, or by a dead router's fast path
        // still attached) never teach the stack its peers' MACs.
        if let Some(sc) = node_of(stack) {
            let me = sc.mac;
            let rows = sc.node.region().members();
            let macs: Vec<stack::wire::MacAddr> = rows
                .iter()
                .take(sc.node.config().stacks.len())
                .filter_map(|m| m.mac.load(std::sync::atomic::Ordering::Relaxed).to_le_bytes()[..6].try_into().ok())
                .filter(|m: &[u8; 6]| *m != [0; 6] && *m != me)
                .map(stack::wire::MacAddr)
                .collect();
            stack.set_cluster_macs(&macs);
            self.macs = macs;
        }
        let Some(sc) = node_of(stack) else { return };
        if now >= self.next_reclaim {
            // Ports of dead stacks, after the quarantine (2 MSL by default): CAS dead -> free.
            self.next_reclaim = now + Duration::from_millis(250);
            let n = sc.ports.lock().reclaim(ns);
            if n > 0 {
                log(&self.name, format_args!("reclaimed {n} cluster-wide ports of dead stacks"));
            }
        }
        if sc.node.awaiting_move() {
            // A command moves an address here: tick again at the next turn.
            self.next_tick = now;
        }
        for e in sc.node.take_events() {
            log(&self.name, format_args!("coupling region: {e}"));
        }
        if sc.node.stats.fenced != fenced {
            // Claims from now on under the new incarnation (the old one's are reclaimed).
            let StackCluster { node, ports, .. } = sc;
            ports.lock().rejoined(node);
            log(&self.name, format_args!(
                "fenced: declared failed while stalled (lease lapsed); dropped its DVIPAs, rejoined as incarnation {}",
                sc.node.incarnation()
            ));
        }
        for a in actions.drain(..) {
            match a {
                Action::Activate { addr, prefix, why } => {
                    stack.add_address(addr, prefix, false);
                    if let Some(Err(e)) = node_of(stack).and_then(|sc| sc.home.as_ref()).map(|h| h.add(addr)) {
                        log(&self.name, format_args!("{e}"));
                    }
                    stack.announce(addr);
                    self.reannounce.push((now + Duration::from_millis(20), addr, 2));
                    self.marks.push((addr, 2));
                    log(&self.name, format_args!("{addr} active ({why})"));
                }
                Action::Standby { addr, prefix } => {
                    // Connections on it come here before the address does (giveback by handoff).
                    if !stack.has_address(addr) {
                        stack.add_address(addr, prefix, true);
                        if let Some(Err(e)) = node_of(stack).and_then(|sc| sc.home.as_ref()).map(|h| h.add_internal(addr)) {
                            log(&self.name, format_args!("{e}"));
                        }
                    }
                    log(&self.name, format_args!("{addr}: standing by for its connections (giveback by handoff)"));
                }
                Action::HandBack { addr, to } => {
                    if let Some(sc) = node_of(stack) {
                        if sc.hand_back != Some((addr, to)) {
                            // Moved connections' segments go on to the primary in the XDP fast
                            // path (a flow each), not through this poll thread.
                            if let Some(Err(e)) = sc.home.as_ref().map(|h| h.add_distributed(addr)) {
                                log(&self.name, format_args!("{e}"));
                            }
                            let n = stack.connections_on(addr);
                            log(&self.name, format_args!("{addr}: its primary is back; moving its {n} connections there (giveback by handoff)"));
                        }
                        if let Some(sc) = node_of(stack) {
                            sc.hand_back = Some((addr, to));
                        }
                    }
                }
                Action::Deactivate { addr, .. } if addr == self.own || !stack.has_address(addr) => {
                    self.reannounce.retain(|r| r.1 != addr);
                }
                Action::Deactivate { addr, why, .. } if node_of(stack).is_some_and(|sc| sc.dist.is_candidate(addr)) => {
                    // Still a target of the distributed DVIPA: it stays, internal, with every
                    // connection; only ARP for it stops (the new holder answers).
                    let prefix = stack.homes().iter().find(|h| h.addr == addr).map_or(32, |h| h.prefix_len);
                    stack.add_address(addr, prefix, true);
                    // Its fast-path flows (if it routed) forward stragglers until they expire.
                    let r = node_of(stack).and_then(|sc| {
                        let fast = sc.fast.get(&addr).is_some_and(|f| !f.is_empty());
                        sc.home.as_ref().map(|h| if fast { h.add_internal_distributed(addr) } else { h.add_internal(addr) })
                    });
                    if let Some(Err(e)) = r {
                        log(&self.name, format_args!("{e}"));
                    }
                    self.reannounce.retain(|r| r.1 != addr);
                    log(&self.name, format_args!("{addr} no longer held here ({why}); still a distribution target (internal address, connections kept)"));
                }
                Action::Deactivate { addr, connections, why } => {
                    let handed_back = node_of(stack).filter(|sc| sc.hand_back.is_some_and(|h| h.0 == addr)).map(|sc| {
                        sc.hand_back = None;
                        sc.fast.get(&addr).is_some_and(|f| !f.is_empty())
                    });
                    // Out of the steering map first: from here on its frames go to the kernel;
                    // after a giveback by handoff, the moved flows' segments that clients still
                    // send here keep going to the primary in the fast path until its
                    // announcement has moved them (then the entry goes, expire_fast).
                    let r = node_of(stack).and_then(|sc| sc.home.as_ref()).map(|h| match handed_back {
                        Some(true) => h.add_internal_distributed(addr),
                        _ => h.remove(addr),
                    });
                    if handed_back == Some(true) {
                        self.fast_expiry.push((now + STALE_PIN_GRACE, addr));
                    }
                    if let Some(Err(e)) = r {
                        log(&self.name, format_args!("{e}"));
                    }
                    let n = stack.connections_on(addr);
                    if connections == ConnectionFate::Silent {
                        self.published.silent.push(addr);
                    }
                    stack.remove_address(now, addr, match connections {
                        ConnectionFate::Reset => stack::iface::Departure::Reset,
                        ConnectionFate::Silent => stack::iface::Departure::Silent,
                    });
                    self.reannounce.retain(|r| r.1 != addr);
                    log(&self.name, format_args!("{addr} inactive ({why}; {n} connections {})", match connections {
                        ConnectionFate::Reset => "reset",
                        ConnectionFate::Silent => "dropped silently",
                    }));
                }
            }
        }
        self.actions = actions;
        if !self.dist_actions.is_empty() {
            self.apply_dist(now, ns, stack);
        }
        let Some(sc) = node_of(stack) else { return };
        if let (Some(f), false) = (sc.node.detached(), self.detached_logged) {
            self.detached_logged = true;
            self.marks.clear();
            log(&self.name, format_args!(
                "left the cluster: its coupling region {} went bad: {f}; serving its own address {} alone (standalone stack). To rejoin: restart this stack (the first stack that starts replaces a stale region)",
                sc.node.config().region.display(),
                self.own
            ));
            log(&self.name, format_args!("rows ignored while in the cluster: {}", sc.node.invalid.summary()));
        }
        self.lease_ok = if sc.node.detached().is_some() {
            Instant::from_micros(u64::MAX / 4)
        } else {
            self.clock.instant_of(sc.node.lease_valid_until())
        };
    }

    /// `plex ctl ports enable`: `cluster_ports` turned on at run time for an address this
    /// stack may already have connections on. They were opened with ports this stack chose
    /// alone: record each in the registry (its port, or in tuple mode its 4-tuple) before any
    /// stack claims from it, so no new connection anywhere collides with them.
    fn watch_ports_enabled(&mut self, ns: u64, stack: &mut Stack) {
        let Some(sc) = node_of(stack) else { return };
        let enabled = sc.ports.lock().refresh();
        for (addr, mode) in enabled {
            let tuples: Vec<Tuple> = stack.tcp_connections_on(addr).iter().filter_map(|(h, _)| stack.tcp(*h).map(|c| c.tuple())).collect();
            let Some(sc) = node_of(stack) else { return };
            let mut reg = sc.ports.lock();
            let me = reg.me();
            let mut recorded = 0;
            for t in &tuples {
                if reg.seed(ns, addr, t.local.port(), t.remote, me) {
                    recorded += 1;
                }
            }
            log(&self.name, format_args!(
                "{addr}: cluster_ports ({}) enabled at run time; recorded {recorded} of this stack's {} connections' ports{}",
                mode.name(),
                tuples.len(),
                if recorded < tuples.len() { " (the others' ports were recorded by another stack first: those connections keep working, routed by the router's table)" } else { "" }
            ));
        }
    }

    /// `plex ctl drain` of this stack: start when asked (no new connections: the distributor
    /// sends new SYNs to the other targets; the poll loop moves the connections, see
    /// [`crate::handoff::drain_step`]), publish the progress, finish when nothing is left.
    fn watch_drain(&mut self, now: Instant, ns: u64, stack: &mut Stack) {
        use std::sync::atomic::Ordering::{Acquire, Release};
        let Some(sc) = node_of(stack) else { return };
        if sc.node.detached().is_some() {
            return;
        }
        let region = sc.node.region().clone();
        let Some(row) = region.member_commands().get(sc.node.slot()) else { return };
        let done = row.drain_done.load(Acquire);
        if let Some((seq, to)) = coupling::layout::drain_request(row.drain.load(Acquire)) {
            if seq > done && sc.drain.is_none_or(|d| d.seq != seq) {
                sc.drain = Some(crate::handoff::Drain::new(seq, to, now));
                for a in self.listening.keys() {
                    sc.dist.set_draining(ns, *a, true);
                }
                let whither = to.and_then(|t| sc.node.config().stacks.get(t as usize)).map_or("the other targets".to_string(), |s| s.name.clone());
                log(&self.name, format_args!("draining (plex ctl drain #{seq}): no new connections here; moving every connection to {whither}"));
            }
        }
        let Some(d) = sc.drain else { return };
        if d.seq <= done {
            return;
        }
        let in_flight = sc.hand_in_flight();
        let (addrs, _) = sc.drain_scope(now, d.to);
        let here: usize = addrs
            .iter()
            .map(|a| {
                stack
                    .tcp_connections_on(*a)
                    .iter()
                    .filter(|(_, s)| matches!(s, stack::tcp::State::Established | stack::tcp::State::CloseWait | stack::tcp::State::SynReceived))
                    .count()
            })
            .sum();
        // A stack on several queues: its follower shards move theirs through the lead
        // (ShardLink::move_step); the drain is done when they have none left either.
        let followers: usize = self.shards.as_ref().map_or(0, |s| addrs.iter().map(|a| s.sync.follower_connections(*a)).sum::<usize>() + s.sync.proxied_pending());
        let left = (here + followers + in_flight) as u64;
        row.drain_left.store(left, Release);
        row.drain_moved.store(d.moved, Release);
        let secs = (now - d.started).as_secs_f64();
        if left == 0 || secs > 30.0 {
            row.drain_done.store(d.seq, Release);
            log(&self.name, format_args!("drained: moved {} connections in {:.1} ms; {left} left", d.moved, secs * 1000.0));
        }
    }

    /// Give the distributor this turn's listener and connection events, and let it read its
    /// mail (a target's NEWCONN must be routed before the reply to its SYN comes back).
    fn feed_distributor(&mut self, ns: u64, stack: &mut Stack) {
        let Some(sc) = node_of(stack) else { return };
        for e in self.pending.drain(..) {
            match e {
                ClusterEvent::ListenerOpened(a) => {
                    let n = self.listening.entry(a).or_insert(0);
                    *n += 1;
                    sc.dist.listeners(ns, a, *n);
                }
                ClusterEvent::ListenerClosed(a) => {
                    let n = self.listening.get(&a).copied().unwrap_or(1).saturating_sub(1);
                    if n == 0 {
                        self.listening.remove(&a);
                    } else {
                        self.listening.insert(a, n);
                    }
                    sc.dist.listeners(ns, a, n);
                }
                ClusterEvent::ConnectionOpened(t, how) => {
                    // A flow this stack's XDP program still forwards elsewhere (it routed the
                    // address until lately, the entries outlive that for stragglers) lives
                    // here now (a handoff or drain brought it): out of the fast path, or the
                    // program would send its segments back to the stack it came from.
                    sc.unforward(t.local, t.remote);
                    sc.dist.connection_opened(ns, t.local, t.remote, how == Opened::Active)
                }
                ClusterEvent::ConnectionClosed(t) => sc.dist.connection_closed(ns, t.local, t.remote),
                // Serialized for a live handoff: nothing yet. If the target takes it, the
                // distributor hears `connection_moved` (no TERMCONN: the router would forget
                // the flow in between); if not, it comes back here as a restored connection.
                ClusterEvent::ConnectionMoved(_) => {}
                ClusterEvent::PortReleased { local, remote } => {
                    let mut reg = sc.ports.lock();
                    if reg.mode(*local.ip()).is_some() {
                        reg.release(ns, *local.ip(), local.port(), remote);
                    }
                }
                // A cluster stack runs one queue: its UDP sockets need no routing.
                ClusterEvent::UdpBound(_) | ClusterEvent::UdpClosed(_) => {}
            }
        }
        self.dist_actions.append(&mut sc.late_actions);
        if sc.node.detached().is_none() {
            let StackCluster { node, dist, handoff, .. } = sc;
            dist.poll(ns, node, &mut self.dist_actions);
            handoff.poll(ns, node, &mut self.handoff_events);
        }
        if !self.handoff_events.is_empty() {
            let evs = std::mem::take(&mut self.handoff_events);
            crate::handoff::apply(stack, self.clock.instant_of(ns), evs);
        }
    }

    /// Do what the distributor asked: internal addresses for candidates, the steering
    /// program's flags and flows for a router.
    fn apply_dist(&mut self, now: Instant, ns: u64, stack: &mut Stack) {
        let mut actions = std::mem::take(&mut self.dist_actions);
        for a in actions.drain(..) {
            match a {
                DistAction::Candidate { addr, prefix } => {
                    if !stack.has_address(addr) {
                        stack.add_address(addr, prefix, true);
                        if let Some(Err(e)) = node_of(stack).and_then(|sc| sc.home.as_ref()).map(|h| h.add_internal(addr)) {
                            log(&self.name, format_args!("{e}"));
                        }
                        log(&self.name, format_args!("{addr} installed as a distribution target (internal: accepted, not answered in ARP)"));
                    }
                }
                DistAction::NotCandidate { addr } => {
                    let internal = stack.homes().iter().any(|h| h.addr == addr && h.internal);
                    if internal {
                        if let Some(Err(e)) = node_of(stack).and_then(|sc| sc.home.as_ref()).map(|h| h.remove(addr)) {
                            log(&self.name, format_args!("{e}"));
                        }
                        stack.remove_address(now, addr, stack::iface::Departure::Reset);
                        log(&self.name, format_args!("{addr} no longer a distribution target here"));
                    }
                }
                DistAction::RoutingStarted { addr, epoch } => {
                    if let Some(Err(e)) = node_of(stack).and_then(|sc| sc.home.as_ref()).map(|h| h.add_distributed(addr)) {
                        log(&self.name, format_args!("{e}"));
                    }
                    log(&self.name, format_args!("{addr}: routing its connections (epoch {epoch})"));
                }
                DistAction::RoutingStopped { addr } => {
                    // The fast path keeps forwarding the flows clients still send here (their
                    // ARP entries move with the new router's announcement) for a while.
                    self.fast_expiry.push((now + STALE_PIN_GRACE, addr));
                    log(&self.name, format_args!("{addr}: no longer routing"));
                }
                DistAction::FlowInstalled { local, remote, target } => {
                    let Some(sc) = node_of(stack) else { continue };
                    if target as usize == sc.node.slot() {
                        // The router's own stack has the flow (a connection moved back here):
                        // out of the fast path, which would send it on to where it was.
                        sc.unforward(local, remote);
                        continue;
                    }
                    let Some(mac) = sc.mac_of(target, ns) else { continue };
                    if let Some(flows) = sc.flows.as_ref() {
                        match flows.insert(remote, local, mac, sc.mac) {
                            Ok(()) => {
                                sc.fast.entry(*local.ip()).or_default().insert((local, remote), target);
                            }
                            Err(e) => log(&self.name, format_args!("{e}")),
                        }
                    }
                }
                DistAction::FlowRemoved { local, remote } => {
                    let Some(sc) = node_of(stack) else { continue };
                    if let Some(set) = sc.fast.get_mut(local.ip()) {
                        if set.remove(&(local, remote)).is_some() {
                            if let Some(flows) = sc.flows.as_ref() {
                                let _ = flows.remove(remote, local);
                            }
                        }
                    }
                }
            }
        }
        self.dist_actions = actions;
    }

    /// A target died: reset its clients now, each with a RST it accepts (SEQ = the last
    /// acknowledgment it sent through the fast path), instead of waiting for their next
    /// segment, which may come only after a retransmission timeout. Their flows leave the
    /// fast path, so later segments reach the distributor, which answers them with a RST too.
    fn reset_clients_of_dead(&mut self, now: Instant, stack: &mut Stack) {
        let died = std::mem::take(&mut self.died);
        let Some(sc) = node_of(stack) else { return };
        let mut resets = Vec::new();
        for flows_of in sc.fast.values_mut() {
            flows_of.retain(|&(local, remote), target| {
                if !died.contains(&(*target as usize)) {
                    return true;
                }
                if let Some(flows) = sc.flows.as_ref() {
                    resets.push((local, remote, flows.last_ack(remote, local)));
                    let _ = flows.remove(remote, local);
                }
                false
            });
        }
        if resets.is_empty() {
            return;
        }
        let mut sent = 0;
        for (local, remote, last) in &resets {
            if let Some((seq, mac)) = last {
                sent += stack.tcp_reset_peer(now, *local, *remote, *seq, Some(stack::wire::MacAddr(*mac))) as usize;
            }
        }
        log(&self.name, format_args!("reset {sent} of the {} connections of the dead target(s) at once", resets.len()));
    }

    /// Tell the distributor how fast this stack accepts (server weight): each listener's free
    /// accept-queue places and the loop's busy fraction since the last heartbeat (in steps of
    /// 5 %, so that noise does not send a report every heartbeat).
    fn publish_acceptance(&mut self, ns: u64, stack: &mut Stack) {
        let busy = if self.turns == 0 { 0.0 } else { self.busy_turns as f32 / self.turns as f32 };
        let busy = (busy * 20.0).round() / 20.0;
        self.turns = 0;
        self.busy_turns = 0;
        let rooms: Vec<(SocketAddrV4, u32)> =
            self.listening.keys().filter_map(|&a| stack.tcp_listener_room(a).map(|r| (a, r.min(u32::MAX as usize) as u32))).collect();
        if let Some(sc) = node_of(stack) {
            for (a, room) in rooms {
                sc.dist.set_acceptance(ns, a, room, busy);
            }
        }
    }

    /// Remove the fast-path flows of addresses this stack stopped routing, once due (unless
    /// it routes them again); the address is then steered as what it is now.
    fn expire_fast(&mut self, now: Instant, stack: &mut Stack) {
        let due: Vec<Ipv4Addr> = self.fast_expiry.iter().filter(|p| p.0 <= now).map(|p| p.1).collect();
        self.fast_expiry.retain(|p| p.0 > now);
        for addr in due {
            let home = stack.homes().iter().find(|h| h.addr == addr).map(|h| h.internal);
            let Some(sc) = node_of(stack) else { return };
            if sc.dist.routes(addr) {
                continue;
            }
            if let (Some(flows), Some(set)) = (sc.flows.as_ref(), sc.fast.remove(&addr)) {
                for (local, remote) in set.into_keys() {
                    let _ = flows.remove(remote, local);
                }
            }
            let r = match (home, sc.home.as_ref()) {
                (Some(true), Some(h)) => h.add_internal(addr),
                (Some(false), Some(h)) => h.add(addr),
                // Given away (a giveback by handoff): nothing of it stays in the steering map.
                (None, Some(h)) => h.remove(addr),
                _ => Ok(()),
            };
            if let Err(e) = r {
                log(&self.name, format_args!("{e}"));
            }
        }
    }

    /// Remove the XDP fast paths dead stacks left pinned, once due, unless the stack is back
    /// (it removed its own when it restarted).
    fn release_stale_pins(&mut self, now: Instant, ns: u64, node: &Node) {
        let Some(dir) = crate::xdp::pin_dir() else {
            self.stale_pins.clear();
            return;
        };
        let due: Vec<usize> = self.stale_pins.iter().filter(|p| p.0 <= now).map(|p| p.1).collect();
        self.stale_pins.retain(|p| p.0 > now);
        for slot in due {
            if coupling::node::member_up(node.region(), node.config(), slot as u8, ns) {
                continue;
            }
            let stack = &node.config().stacks[slot].name;
            match crate::xdp::release_pinned(&crate::xdp::pin_path(&dir, &node.config().name, stack)) {
                Ok(true) => log(&self.name, format_args!("removed the XDP fast path stack {stack} left pinned when it died")),
                Ok(false) => {}
                Err(e) => log(&self.name, format_args!("{e}")),
            }
        }
    }

    /// Open a pidfd for every live member we do not watch yet; declare failed those whose
    /// process has exited.
    fn watch_members(&mut self, node: &mut Node, ns: u64) {
        let region = node.region().clone();
        for (slot, m) in region.members().iter().enumerate().take(node.config().stacks.len()) {
            if slot == node.slot() {
                continue;
            }
            let w = coupling::words::MemberWord::unpack(m.word.load(std::sync::atomic::Ordering::Acquire));
            let inc = m.incarnation.load(std::sync::atomic::Ordering::Relaxed);
            if w.state != MemberState::Up {
                // Declared failed (or gone) by another member before our pidfd said so: it
                // died all the same.
                if self.watches[slot].take().is_some() {
                    self.stale_pins.push((self.clock.instant_of(ns) + STALE_PIN_GRACE, slot));
                    self.died.push(slot);
                }
                continue;
            }
            if self.watches[slot].as_ref().is_some_and(|x| x.incarnation == inc) {
                continue;
            }
            let pid = m.pid.load(std::sync::atomic::Ordering::Relaxed);
            self.watches[slot] = Pid::from_raw(pid as i32).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok()).map(|fd| Watch { incarnation: inc, fd });
            if self.watches[slot].is_none() {
                // No such process: it died before we could watch it.
                if node.declare_failed(ns, slot, inc) {
                    log(&self.name, format_args!("stack in slot {slot} (pid {pid}) is gone: declared failed"));
                }
            }
        }
        let mut fds: Vec<PollFd> = Vec::new();
        let mut slots = Vec::new();
        for (slot, w) in self.watches.iter().enumerate() {
            if let Some(w) = w {
                fds.push(PollFd::new(&w.fd, PollFlags::IN));
                slots.push(slot);
            }
        }
        if fds.is_empty() {
            return;
        }
        let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        if poll(&mut fds, Some(&zero)).unwrap_or(0) == 0 {
            return;
        }
        let dead: Vec<usize> = fds.iter().zip(&slots).filter(|(f, _)| !f.revents().is_empty()).map(|(_, s)| *s).collect();
        drop(fds);
        for slot in dead {
            if let Some(w) = self.watches[slot].take() {
                if node.declare_failed(ns, slot, w.incarnation) {
                    log(&self.name, format_args!("stack {} exited: declared failed", node.config().stacks[slot].name));
                }
                self.stale_pins.push((self.clock.instant_of(ns) + STALE_PIN_GRACE, slot));
                self.died.push(slot);
            }
        }
    }

    /// Leave the cluster (the process is stopping): backups take over configured DVIPAs, range
    /// DVIPAs activated here are released.
    pub fn leave(&mut self, now: Instant, stack: &mut Stack) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        let Some(sc) = node_of(stack) else { return };
        sc.dist.leave(&mut self.dist_actions);
        if let Some(map) = sc.syn_map.as_ref() {
            for local in sc.syn_installed.drain().map(|(k, _)| k) {
                let _ = map.remove(local);
            }
        }
        let mut out = Vec::new();
        sc.node.leave(self.clock.mono_ns(now), &mut out);
        for a in out {
            if let Action::Deactivate { addr, .. } = a {
                if let Some(h) = node_of(stack).and_then(|sc| sc.home.as_ref()) {
                    let _ = h.remove(addr);
                }
                stack.remove_address(now, addr, stack::iface::Departure::Reset);
            }
        }
        log(&self.name, format_args!("left the cluster"));
    }
}

impl StackCluster {
    /// The cluster config.
    pub fn config(&self) -> &ClusterConfig {
        self.node.config()
    }
    /// This stack's slot.
    pub fn slot(&self) -> usize {
        self.node.slot()
    }
    /// CLOCK_MONOTONIC ns of a core instant.
    pub(crate) fn mono_ns(&self, now: Instant) -> u64 {
        self.clock.mono_ns(now)
    }
    pub(crate) fn handoff_offer(&mut self, ns: u64, to: u8, t: Tuple, record: &[u8], unconditional: bool) -> Result<TransferId, String> {
        self.handoff.offer(ns, to, t.local, t.remote, record, unconditional).map_err(|e| e.to_string())
    }
    pub(crate) fn handoff_accept(&mut self, ns: u64, id: TransferId) -> bool {
        self.handoff.accept(ns, id)
    }
    pub(crate) fn handoff_reject(&mut self, ns: u64, id: TransferId, reason: u16) {
        self.handoff.reject(ns, id, reason);
    }
    /// Transfers of this stack in flight (offered, not decided).
    pub(crate) fn hand_in_flight(&self) -> usize {
        self.hand.in_flight()
    }

    /// A connection moved to stack `to`: its segments that still reach this stack go on to `to`
    /// in the XDP fast path, where the address is marked for it (a giveback by handoff).
    pub(crate) fn fast_forward(&mut self, now: Instant, t: Tuple, to: u8) {
        if self.hand_back.is_none_or(|h| h.0 != *t.local.ip()) {
            return;
        }
        let ns = self.clock.mono_ns(now);
        let Some(mac) = self.mac_of(to, ns) else { return };
        if let Some(flows) = self.flows.as_ref() {
            if flows.insert(t.remote, t.local, mac, self.mac).is_ok() {
                self.fast.entry(*t.local.ip()).or_default().insert((t.local, t.remote), to);
            }
        }
    }

    /// What a drain moves: the distributed addresses this stack has, and the live stacks it
    /// moves their connections to (`to`, or every other live candidate target).
    pub(crate) fn drain_scope(&self, now: Instant, to: Option<u8>) -> (Vec<Ipv4Addr>, Vec<u8>) {
        let cfg = self.node.config();
        let me = self.node.slot();
        let now = self.clock.mono_ns(now);
        let mut addrs = Vec::new();
        let mut targets = std::collections::BTreeSet::new();
        for d in cfg.dvipas.iter() {
            let Some(dist) = d.distribute.as_ref() else { continue };
            addrs.push(d.addr);
            for c in dist.candidates() {
                let up = coupling::node::member_up(self.node.region(), cfg, c as u8, now);
                if c != me && up && to.is_none_or(|t| t as usize == c) {
                    targets.insert(c as u8);
                }
            }
        }
        (addrs, targets.into_iter().collect())
    }

    /// This stack's XDP program no longer forwards the flow (`local`, `remote`) elsewhere, if
    /// it did: the connection lives on this stack.
    fn unforward(&mut self, local: SocketAddrV4, remote: SocketAddrV4) {
        if self.fast.get_mut(local.ip()).is_some_and(|set| set.remove(&(local, remote)).is_some()) {
            if let Some(flows) = self.flows.as_ref() {
                let _ = flows.remove(remote, local);
            }
        }
    }

    /// The connection `t` now lives on stack `to`: the distributor moves its flow (a router
    /// at once; a target only forgets it, the new stack's NEWCONN tells the router).
    pub(crate) fn moved_away(&mut self, ns: u64, t: Tuple, to: u8) {
        self.dist.connection_moved(ns, t.local, t.remote, to);
    }
    /// A connection moved here: its local port's cluster-wide owner becomes this stack (one
    /// CAS from the source, never through free).
    pub(crate) fn move_port(&mut self, _ns: u64, offer: &crate::handoff::TransferOffer, t: Tuple) {
        let mut reg = self.ports.lock();
        if reg.mode(*t.local.ip()).is_none() {
            return;
        }
        let Some(from) = reg.owner(*t.local.ip(), t.local.port(), t.remote) else { return };
        if offer.from != self.node.config().stacks.get(from.slot as usize).map_or("", |s| s.name.as_str()) {
            return;
        }
        let me = reg.me();
        let tuple_mode = reg.mode(*t.local.ip()) == Some(PortsMode::Tuple);
        reg.move_owner(*t.local.ip(), t.local.port(), tuple_mode.then_some(t.remote), from, me);
    }

    /// The port registry (its counters, for reports), shared with the follower shards.
    pub fn ports(&self) -> parking_lot::MutexGuard<'_, Registry> {
        self.ports.lock()
    }

    /// The port registry itself, for the follower shards of a stack on several queues.
    pub fn ports_shared(&self) -> Arc<Mutex<Registry>> {
        self.ports.clone()
    }

    /// This is the lead shard of a stack on several queues: `set` is its shards.
    pub fn set_shards(&mut self, set: Arc<ShardSet>) {
        self.shards = Some(set);
    }

    /// This stack holds `addr` (answers ARP for it: its router if it is distributed).
    fn holds(&self, addr: Ipv4Addr) -> bool {
        coupling::ops::holder_of(self.node.region(), self.node.config(), addr).is_some_and(|h| h as usize == self.node.slot())
    }

    fn log_ports(&mut self, msg: String) {
        if self.ports_logged.as_deref() != Some(msg.as_str()) {
            log(self.node.name(), format_args!("{msg}"));
            self.ports_logged = Some(msg);
        }
    }

    /// Route a segment to an address with cluster-wide ports by the owner of its local port.
    fn route_by_port(&mut self, now: Instant, tuple: &Tuple) -> InboundRoute {
        let me = self.node.slot();
        let Some(o) = self.ports.lock().owner(*tuple.local.ip(), tuple.local.port(), tuple.remote) else { return InboundRoute::Local };
        if o.slot as usize == me {
            return InboundRoute::Local;
        }
        let ns = self.clock.mono_ns(now);
        let region = self.node.region();
        let same_inc = region
            .members()
            .get(o.slot as usize)
            .is_some_and(|m| (m.incarnation.load(std::sync::atomic::Ordering::Acquire) & 0xff_ffff) as u32 == o.incarnation);
        if same_inc && coupling::node::member_up(region, self.node.config(), o.slot, ns) {
            self.ports_forwarded += 1;
            InboundRoute::Forward { stack: o.slot as u32 }
        } else {
            // Its stack died: so did the connection (the client is told at once).
            InboundRoute::Reset
        }
    }
}

impl StackCluster {
    /// The cluster's decision for a segment that matches no connection of the stack's shards.
    fn route_cluster(&mut self, now: Instant, tuple: &Tuple, syn: bool) -> InboundRoute {
        // A connection of this stack in flight to another (held), or just moved (forwarded).
        match self.hand.route(now, tuple) {
            Some(None) => return InboundRoute::Hold,
            Some(Some(to)) => return InboundRoute::Forward { stack: to as u32 },
            None => {}
        }
        let addr = *tuple.local.ip();
        let ns = self.clock.mono_ns(now);
        let mut route = self.dist.route(ns, tuple.local, tuple.remote, syn);
        if !syn && matches!(route, Route::NotDistributed | Route::Reset) && self.dist.routes(addr) {
            // A router that does not know the flow reads its mail first: a target's NEWCONN
            // for an active open may have come in after this turn read the rings, and the
            // reply to its SYN can overtake it (it was sent before the SYN left).
            self.dist.poll(ns, &mut self.node, &mut self.late_actions);
            route = self.dist.route(ns, tuple.local, tuple.remote, syn);
        }
        match route {
            // A target that does not route the DVIPA got a segment (not a SYN: those the router
            // forwards) of a flow it does not have: a client's ARP entry still names it during a
            // takeover or takeback. Only the router may answer for the address's flows, and
            // this one is another target's: it goes on to the stack that holds the address now
            // (which forwards it to its target), or is dropped if none does, never reset.
            Route::NotDistributed if !syn && self.dist.is_candidate(addr) && !self.dist.routes(addr) => {
                match coupling::ops::holder_of(self.node.region(), self.node.config(), addr) {
                    Some(h) if h as usize != self.node.slot() => InboundRoute::Forward { stack: h as u32 },
                    _ => InboundRoute::Drop,
                }
            }
            // A reply to a connection another stack opened from an address with cluster-wide
            // ports (it owns the local port): to that stack, even before its NEWCONN is here.
            Route::NotDistributed if !syn && self.ports.lock().mode(addr).is_some() && self.holds(addr) => self.route_by_port(now, tuple),
            Route::NotDistributed | Route::Local => InboundRoute::Local,
            // A dead target's flow, an unknown one outside a rebuild, a SYN nobody takes.
            Route::Reset => InboundRoute::Reset,
            Route::Forward { slot } if slot as usize == self.node.slot() => InboundRoute::Local,
            Route::Forward { slot } => InboundRoute::Forward { stack: slot as u32 },
            Route::Hold => InboundRoute::Drop,
        }
    }
}

/// Claim an ephemeral port for a connection from `local` (an address with cluster-wide ports)
/// to `remote` (`None`: a UDP socket, which takes the whole port) in `reg`.
pub(crate) fn claim_ephemeral(reg: &mut Registry, ns: u64, local: Ipv4Addr, remote: Option<SocketAddrV4>, rng: &mut Rng) -> Result<u16, PortsError> {
    let Some(mode) = reg.mode(local) else { return Err(PortsError::Exhausted) };
    let span = (*EPHEMERAL_PORTS.end() - *EPHEMERAL_PORTS.start()) as u64 + 1;
    match (mode, remote) {
        // RFC 6056: a random start per draw; the registry scans from there.
        (PortsMode::Port, _) => {
            let any = remote.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            reg.claim_ephemeral(ns, local, any, rng.below(span) as u16)
        }
        (PortsMode::Tuple, Some(r)) => reg.claim_ephemeral(ns, local, r, rng.below(span) as u16),
        // No peer (a UDP socket): the whole port, for this stack alone.
        // Scanned from a random start, as the registry scans for connections.
        (PortsMode::Tuple, None) => {
            let start = rng.below(span);
            let mut last = Err(PortsError::Exhausted);
            for i in 0..span {
                let p = *EPHEMERAL_PORTS.start() + ((start + i) % span) as u16;
                last = reg.claim(ns, local, p).map(|_| p);
                if last.is_ok() {
                    break;
                }
            }
            last
        }
    }
}

/// An explicit bind of `local` (a listener, a fixed port): claimed in `reg` if its address
/// has cluster-wide ports; a refusal is logged under the stack's name (once per message).
pub(crate) fn claim_bound(reg: &mut Registry, cfg: &ClusterConfig, ns: u64, local: SocketAddrV4) -> Result<PortClaim, String> {
    if reg.mode(*local.ip()).is_none() {
        return Ok(PortClaim::Unregistered);
    }
    match reg.claim(ns, *local.ip(), local.port()) {
        Ok(()) => Ok(PortClaim::Claimed),
        // A distributed port is shared by the targets' listeners, never one stack's.
        Err(PortsError::Distributed) => Ok(PortClaim::Unregistered),
        Err(PortsError::InUse { owner_slot }) => {
            let who = cfg.stacks.get(owner_slot as usize).map_or("?", |s| s.name.as_str());
            Err(format!("bind {local}: port in use by stack {who} (cluster_ports)"))
        }
        Err(e) => Err(format!("bind {local}: {e}")),
    }
}

impl Cluster for StackCluster {
    fn route_inbound(&mut self, now: Instant, tuple: &Tuple, syn: bool) -> InboundRoute {
        // A connection of another shard of this stack (several queues).
        if let Some(k) = self.shards.as_ref().and_then(|s| s.owner(tuple)).filter(|&k| k != 0) {
            return InboundRoute::Shard { shard: k };
        }
        match (self.route_cluster(now, tuple, syn), self.deciding_for) {
            // A follower handed it over and it is to be taken here: the follower takes it.
            (InboundRoute::Local, Some(k)) => InboundRoute::Shard { shard: k },
            // A SYN the lead takes: its 4-tuple is the lead's before the SYN-ACK leaves.
            (InboundRoute::Local, None) if syn => {
                if let Some(set) = &self.shards {
                    set.own(*tuple, 0);
                    self.claimed = Some(*tuple);
                }
                InboundRoute::Local
            }
            (r, _) => r,
        }
    }
    fn route_datagram(&mut self, local: SocketAddrV4) -> Option<u32> {
        self.shards.as_ref().and_then(|s| s.udp_owner(local)).filter(|&k| k != 0)
    }
    fn ephemeral_port(&mut self, now: Instant, local: Ipv4Addr, remote: Option<SocketAddrV4>, rng: &mut Rng) -> Option<u16> {
        let ns = self.clock.mono_ns(now);
        let clustered = self.ports.lock().mode(local).is_some();
        let port = if clustered {
            let r = claim_ephemeral(&mut self.ports.lock(), ns, local, remote, rng);
            match r {
                Ok(p) => p,
                Err(e) => {
                    self.log_ports(format!("{local}: no cluster-wide port for a connection to {remote:?}: {e}"));
                    return None;
                }
            }
        } else {
            match (&self.shards, remote) {
                // Several queues: drawn in the shards' table (no two shards open one 4-tuple).
                (Some(set), Some(r)) => return set.draw_port(0, local, r, rng),
                _ => return SingleStack.ephemeral_port(now, local, remote, rng),
            }
        };
        if let (Some(set), Some(r)) = (&self.shards, remote) {
            set.own(Tuple { local: SocketAddrV4::new(local, port), remote: r }, 0);
        }
        Some(port)
    }
    fn claim_port(&mut self, now: Instant, local: SocketAddrV4) -> PortClaim {
        let ns = self.clock.mono_ns(now);
        let r = claim_bound(&mut self.ports.lock(), self.node.config(), ns, local);
        r.unwrap_or_else(|msg| {
            self.log_ports(msg);
            PortClaim::InUse
        })
    }
    fn source_address(&mut self, _now: Instant, app: &str) -> Option<Ipv4Addr> {
        self.node.config().source_ipa(self.node.slot(), app)
    }
    fn bind_address(&mut self, now: Instant, addr: Ipv4Addr) -> Option<u8> {
        let name = self.node.name().to_string();
        match self.node.bind_activate(self.clock.mono_ns(now), addr) {
            Ok(prefix) => {
                if let Some(Err(e)) = self.home.as_ref().map(|h| h.add(addr)) {
                    log(&name, format_args!("{e}"));
                }
                self.bound.push(addr);
                Some(prefix)
            }
            Err(e) => {
                log(&name, format_args!("bind {addr}: {e}"));
                None
            }
        }
    }
}
