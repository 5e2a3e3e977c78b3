//! The shards of one plex process on one interface (one stack per queue) as one host: which
//! shard owns each connection, and the frames one shard hands another.
//!
//! Each queue's stack is a shard with its own connection table, but the interface decides
//! which queue a segment arrives on: a NIC by its RSS hash, a veth by the sender's choice of
//! transmit queue (Linux picks it from a per-socket hash, and picks again after a
//! retransmission timeout). So the SYN-ACK of a connection shard 0 opened may arrive on queue
//! 1, and an accepted connection's segments may move queues in mid-stream. Without help the
//! shard that receives such a segment has no connection for it and answers with a RST.
//!
//! [`ShardSet`] keeps the owner of every connection of the process (the shard that opened or
//! accepted it), and [`ShardCluster`] is each shard's [`Cluster`]: a segment that matches no
//! connection of its shard and is not a SYN is forwarded to the owner, through the owner's
//! inbox (a bounded queue of frame buffers, taken from a shared pool), and the owner's poll
//! thread is woken. Ephemeral ports are claimed in the same table before the SYN leaves, so
//! two shards never open the same 4-tuple. Every ARP frame is given to every shard: each has
//! its own neighbour cache, and the reply to one shard's request may arrive on another queue.
//!
//! The table is behind a `parking_lot` read-write lock, taken only off the per-segment path:
//! when a connection opens or closes (write), and for segments that miss their shard's own
//! table (read).
//!
//! **A cluster stack on several queues.** Shard 0 is the *lead*: it holds the cluster member
//! (the coupling node, the distributor, the port registry, live handoff) exactly as a
//! one-queue stack does, and it alone answers the cluster's questions. The other shards
//! (*followers*) keep their own connections and hand the lead every frame for a cluster
//! address (a DVIPA) that matches none of their connections: a SYN, or a segment of a flow
//! they do not have. The lead decides as it would for its own queue (forward to the target
//! stack, hold during a handoff, reset a dead flow, take it here); when its decision is "take
//! it here" for a SYN a follower handed over, it hands the SYN back *decided*, and the
//! follower accepts the connection itself. So connections spread over the queues the
//! interface chose, and one thread owns the cluster state. The lead publishes its home list
//! (every DVIPA activated, made internal, removed, with how its connections leave), the
//! cluster's MACs and its lease ([`ClusterSync`]); every follower applies them at its next
//! turn, and stops taking frames while the lead's lease has lapsed (a stalled process must not
//! answer for an address it lost). Followers' connection events (listeners, NEWCONN, TERMCONN,
//! released ports) go to the lead's distributor and registry, and their connection counts into
//! the lead's reports to the node.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam::queue::ArrayQueue;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64};
use stack::cluster::{Cluster, ClusterEvent, InboundRoute, SingleStack, EPHEMERAL_PORTS};
use stack::iface::{Departure, HomeAddr, Stack};
use stack::wire::MacAddr;
use stack::rand::Rng;
use stack::tcp::Tuple;
use stack::time::Instant;

use crate::xsk::Waker;

/// Frames an inbox holds before the sender drops (TCP retransmits).
const INBOX: usize = 1024;
/// Bytes of a frame buffer (the largest frame plex accepts: MTU 3000 plus headers).
const FRAME: usize = 4096;
/// Frame buffers the process allocates at most for handing frames between shards.
const BUFFERS: usize = 4096;

/// The shards of one process, shared by their poll threads.
#[derive(Debug)]
pub struct ShardSet {
    owners: RwLock<HashMap<Tuple, u32>>,
    /// The shard of every UDP socket of the process, by local address.
    udp: RwLock<HashMap<SocketAddrV4, u32>>,
    inboxes: Vec<ArrayQueue<Handed>>,
    pool: ArrayQueue<Vec<u8>>,
    allocated: AtomicUsize,
    wakers: OnceLock<Vec<Arc<Waker>>>,
    /// A cluster stack's shards: what the lead publishes and the followers report.
    pub(crate) sync: ClusterSync,
}

/// A frame in a shard's inbox: its buffer and length, the shard that handed it over, and
/// whether the lead decided it for this shard (a SYN it takes here).
#[derive(Debug)]
struct Handed {
    buf: Vec<u8>,
    len: usize,
    from: u32,
    decided: bool,
}

/// Where a frame a poll thread delivers to its stack came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Its own queue.
    Wire,
    /// Another shard's queue, handed over (`decided`: by the lead, for this shard to take).
    Shard {
        /// The shard that handed it over.
        from: u32,
        /// The lead decided the SYN for this shard.
        decided: bool,
    },
}

/// What a cluster stack's lead shard publishes for its followers, and what they report back
/// (see the module's documentation).
#[derive(Debug, Default)]
pub struct ClusterSync {
    /// Bumped by every publication of `homes`.
    version: AtomicU64,
    homes: Mutex<Published>,
    /// CLOCK_MONOTONIC ns until which the lead's lease holds (0: not a cluster, or unknown).
    lease_until: AtomicU64,
    /// Followers' connection and listener events, for the lead's distributor and registry.
    events: Mutex<Vec<ClusterEvent>>,
    has_events: AtomicBool,
    /// Per shard: its connections per local address (the followers' entries).
    counts: Mutex<HashMap<(u32, Ipv4Addr), usize>>,
    /// What the lead's drain (or giveback by handoff) moves, while it runs.
    scope: Mutex<Option<MoveScope>>,
    moving: AtomicBool,
    /// Connections followers detached for the lead to offer.
    proxied: Mutex<Vec<Proxied>>,
    has_proxied: AtomicBool,
}

/// What a drain or a giveback by handoff moves (the lead publishes it while one runs): the
/// followers move their connections on these addresses too, through the lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveScope {
    /// The addresses whose connections move.
    pub addrs: Vec<Ipv4Addr>,
    /// The stacks (member slots) they move to, taken in turn.
    pub targets: Vec<u8>,
    /// The targets take them without asking their applications.
    pub unconditional: bool,
    /// The member's slot (the giver of the records).
    pub giver: u32,
}

/// A follower's connection on its way to another stack: detached from the follower's stack
/// with its whole state ([`Stack::tcp_snapshot_with`]), for the lead to offer (the lead alone
/// talks to the cluster). Until the lead has it, no segment of it is delivered anywhere: the
/// follower hands them to the lead, which looks at its pending records first.
#[derive(Debug)]
pub struct Proxied {
    /// The connection.
    pub tuple: Tuple,
    /// Its handoff record.
    pub record: Vec<u8>,
    /// The stack (member slot) it goes to.
    pub to: u8,
    /// The target takes it without asking its application.
    pub unconditional: bool,
}

/// Connections the followers keep detached for the lead at most (the region has 32 record
/// slots for the whole cluster; the lead's own drain keeps 8 in flight).
const PROXIED_MAX: usize = 8;

/// The lead's home list as published.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Every local address of the lead (its own, DVIPAs, internal distribution targets).
    pub homes: Vec<HomeAddr>,
    /// The cluster's other stacks' MACs ([`Stack::set_cluster_macs`]).
    pub macs: Vec<MacAddr>,
    /// Addresses whose connections were forgotten without a word when the lead removed them
    /// (fenced, or the address answers elsewhere now); the others' are reset.
    pub silent: Vec<Ipv4Addr>,
}

impl ClusterSync {
    /// The lead publishes its home list, MACs and silent departures (if they changed).
    pub fn publish(&self, p: &Published) {
        let mut cur = self.homes.lock();
        if *cur != *p {
            *cur = p.clone();
            self.version.fetch_add(1, Ordering::Release);
        }
    }
    /// The lead's lease holds until `ns` (CLOCK_MONOTONIC).
    pub fn set_lease(&self, ns: u64) {
        self.lease_until.store(ns, Ordering::Release);
    }
    /// Whether the lead's lease holds at `ns` (always, outside a cluster).
    pub fn lease_ok(&self, ns: u64) -> bool {
        let until = self.lease_until.load(Ordering::Acquire);
        until == 0 || ns < until
    }
    /// The followers' events since the last call, for the lead.
    pub fn take_events(&self, mut f: impl FnMut(ClusterEvent)) {
        if !self.has_events.swap(false, Ordering::AcqRel) {
            return;
        }
        for e in self.events.lock().drain(..) {
            f(e);
        }
    }
    /// A follower's events for the lead (its UDP sockets are its own affair): whether any.
    fn push_events(&self, events: &[ClusterEvent]) -> bool {
        let mut q = self.events.lock();
        let before = q.len();
        q.extend(events.iter().copied().filter(|e| !matches!(e, ClusterEvent::UdpBound(_) | ClusterEvent::UdpClosed(_))));
        let any = q.len() > before;
        if any {
            self.has_events.store(true, Ordering::Release);
        }
        any
    }
    /// The lead publishes what its drain or giveback moves (`None`: nothing moves).
    pub fn set_scope(&self, scope: Option<MoveScope>) {
        if scope.is_none() && !self.moving.load(Ordering::Acquire) {
            return;
        }
        let mut cur = self.scope.lock();
        if *cur != scope {
            self.moving.store(scope.is_some(), Ordering::Release);
            *cur = scope;
        }
    }
    /// What moves now, if anything.
    pub fn scope(&self) -> Option<MoveScope> {
        if !self.moving.load(Ordering::Acquire) {
            return None;
        }
        self.scope.lock().clone()
    }
    /// A follower's detached connection, for the lead.
    pub fn push_proxied(&self, p: Proxied) {
        self.proxied.lock().push(p);
        self.has_proxied.store(true, Ordering::Release);
    }
    /// Whether followers left connections for the lead to offer.
    pub fn has_proxied(&self) -> bool {
        self.has_proxied.load(Ordering::Acquire)
    }
    /// The detached connections, for the lead.
    pub fn take_proxied(&self) -> Vec<Proxied> {
        if !self.has_proxied.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.proxied.lock())
    }
    /// Detached connections the lead has not offered yet.
    pub fn proxied_pending(&self) -> usize {
        self.proxied.lock().len()
    }

    /// The followers' connections on `addr`.
    pub fn follower_connections(&self, addr: Ipv4Addr) -> usize {
        self.counts.lock().iter().filter(|((_, a), _)| *a == addr).map(|(_, n)| *n).sum()
    }
}

impl ShardSet {
    /// A set of `n` shards.
    pub fn new(n: usize) -> Arc<ShardSet> {
        Arc::new(ShardSet {
            owners: RwLock::new(HashMap::new()),
            udp: RwLock::new(HashMap::new()),
            inboxes: (0..n).map(|_| ArrayQueue::new(INBOX)).collect(),
            pool: ArrayQueue::new(BUFFERS),
            allocated: AtomicUsize::new(0),
            wakers: OnceLock::new(),
            sync: ClusterSync::default(),
        })
    }

    /// The shards' number.
    pub fn len(&self) -> usize {
        self.inboxes.len()
    }

    /// Whether the set has no shard (never: a set has at least one).
    pub fn is_empty(&self) -> bool {
        self.inboxes.is_empty()
    }

    /// Wake shard `k`'s poll thread.
    pub fn wake(&self, k: u32) {
        if let Some(w) = self.wakers.get().and_then(|w| w.get(k as usize)) {
            w.wake();
        }
    }

    /// The shards' wakers, in shard order (a handed-over frame wakes its shard).
    pub fn set_wakers(&self, wakers: Vec<Arc<Waker>>) {
        let _ = self.wakers.set(wakers);
    }

    /// The shard that owns `tuple`, if any.
    pub fn owner(&self, tuple: &Tuple) -> Option<u32> {
        self.owners.read().get(tuple).copied()
    }

    /// Hand `frame` to shard `to`: false if its inbox is full or no buffer is left (the frame
    /// is dropped; the peer retransmits).
    pub fn hand_over(&self, to: u32, frame: &[u8]) -> bool {
        self.hand(to, frame, u32::MAX, false)
    }

    /// Hand `frame` from shard `from` to shard `to` (`decided`: the lead decided the SYN for
    /// `to`).
    fn hand(&self, to: u32, frame: &[u8], from: u32, decided: bool) -> bool {
        let Some(inbox) = self.inboxes.get(to as usize) else { return false };
        if frame.len() > FRAME || inbox.is_full() {
            return false;
        }
        let mut buf = match self.pool.pop() {
            Some(b) => b,
            None if self.allocated.fetch_add(1, Ordering::Relaxed) < BUFFERS => vec![0u8; FRAME],
            None => return false,
        };
        buf[..frame.len()].copy_from_slice(frame);
        if let Err(h) = inbox.push(Handed { buf, len: frame.len(), from, decided }) {
            let _ = self.pool.push(h.buf);
            return false;
        }
        self.wake(to);
        true
    }

    /// Frames handed to shard `me`, each given to `f` with where it came from, their buffers
    /// back to the pool.
    pub fn drain(&self, me: u32, mut f: impl FnMut(&[u8], Origin)) -> usize {
        let Some(inbox) = self.inboxes.get(me as usize) else { return 0 };
        let mut n = 0;
        while let Some(h) = inbox.pop() {
            f(&h.buf[..h.len], Origin::Shard { from: h.from, decided: h.decided });
            let _ = self.pool.push(h.buf);
            n += 1;
        }
        n
    }

    /// Whether shard `me` has frames handed over.
    pub fn has_handed(&self, me: u32) -> bool {
        self.inboxes.get(me as usize).is_some_and(|q| !q.is_empty())
    }

    /// A random ephemeral port from `local` to `remote` that no shard has a connection on,
    /// recorded as shard `me`'s (so two shards never open the same 4-tuple).
    pub fn draw_port(&self, me: u32, local: Ipv4Addr, remote: SocketAddrV4, rng: &mut Rng) -> Option<u16> {
        let span = (*EPHEMERAL_PORTS.end() - *EPHEMERAL_PORTS.start()) as u64 + 1;
        let mut owners = self.owners.write();
        for _ in 0..64 {
            let port = *EPHEMERAL_PORTS.start() + rng.below(span) as u16;
            let tuple = Tuple { local: SocketAddrV4::new(local, port), remote };
            if let std::collections::hash_map::Entry::Vacant(e) = owners.entry(tuple) {
                e.insert(me);
                return Some(port);
            }
        }
        None
    }

    /// Record that shard `me` opened `tuple` (unless another shard has it).
    pub fn own(&self, tuple: Tuple, me: u32) {
        self.owners.write().entry(tuple).or_insert(me);
    }

    /// `tuple` is no longer shard `me`'s (if it was).
    pub fn disown(&self, tuple: Tuple, me: u32) {
        let mut owners = self.owners.write();
        if owners.get(&tuple) == Some(&me) {
            owners.remove(&tuple);
        }
    }

    /// The shard whose UDP socket takes datagrams for `local`, if any.
    pub fn udp_owner(&self, local: SocketAddrV4) -> Option<u32> {
        let udp = self.udp.read();
        udp.get(&local).or_else(|| udp.get(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, local.port()))).copied()
    }

    /// Apply shard `me`'s connection events (opened: it owns the tuple; closed or moved
    /// away: the tuple is free) and UDP sockets (bound, closed).
    pub fn apply(&self, me: u32, events: &[ClusterEvent]) {
        if events.is_empty() {
            return;
        }
        if events.iter().any(|e| matches!(e, ClusterEvent::UdpBound(_) | ClusterEvent::UdpClosed(_))) {
            let mut udp = self.udp.write();
            for e in events {
                match *e {
                    ClusterEvent::UdpBound(a) => {
                        udp.insert(a, me);
                    }
                    ClusterEvent::UdpClosed(a) if udp.get(&a) == Some(&me) => {
                        udp.remove(&a);
                    }
                    _ => {}
                }
            }
        }
        let mut owners = self.owners.write();
        for e in events {
            match *e {
                ClusterEvent::ConnectionOpened(t, _) => {
                    owners.insert(t, me);
                }
                ClusterEvent::ConnectionClosed(t) | ClusterEvent::ConnectionMoved(t) if owners.get(&t) == Some(&me) => {
                    owners.remove(&t);
                }
                _ => {}
            }
        }
    }
}

/// The queue of `stack` if it is a follower shard of a cluster stack.
pub fn follower_shard(stack: &Stack) -> Option<u32> {
    let c: &dyn std::any::Any = stack.cluster();
    c.downcast_ref::<ShardCluster>().filter(|c| c.follower.is_some()).map(|c| c.me)
}

/// One shard's [`Cluster`]: segments of another shard's connections go there; ephemeral
/// ports are claimed process-wide. A cluster stack's follower shards also hand the lead what
/// only the cluster can decide ([`Follower`]).
#[derive(Debug)]
pub struct ShardCluster {
    me: u32,
    set: Arc<ShardSet>,
    follower: Option<Follower>,
    /// The SYN in hand was taken here: its 4-tuple, recorded as this shard's before the
    /// SYN-ACK leaves (its peer's next segment may arrive on any queue), and forgotten again if
    /// no connection came of it ([`deliver`]).
    claimed: Option<Tuple>,
}

/// What a follower shard of a cluster stack knows of the cluster: its own addresses (the
/// config's, which it answers for alone), the config, the stack's slot and the shared port
/// registry (binds and connects from addresses with cluster-wide ports claim there).
#[derive(Debug)]
pub struct Follower {
    /// The stack's own addresses (not the cluster's).
    pub own: Vec<Ipv4Addr>,
    /// The cluster config.
    pub cfg: Arc<coupling::ClusterConfig>,
    /// The stack's slot.
    pub slot: usize,
    /// The cluster-wide port registry, shared with the lead.
    pub ports: Arc<Mutex<coupling::ports::Registry>>,
    /// The member's clock (the registry takes CLOCK_MONOTONIC ns).
    pub clock: crate::clock::Clock,
    /// The frame in hand is a SYN the lead decided for this shard.
    decided: bool,
}

impl Follower {
    /// A follower of the cluster stack `slot` of `cfg`, whose own addresses are `own`.
    pub fn new(own: Vec<Ipv4Addr>, cfg: Arc<coupling::ClusterConfig>, slot: usize, ports: Arc<Mutex<coupling::ports::Registry>>, clock: crate::clock::Clock) -> Follower {
        Follower { own, cfg, slot, ports, clock, decided: false }
    }
}

impl ShardCluster {
    /// Shard `me` of `set`.
    pub fn new(me: u32, set: Arc<ShardSet>) -> ShardCluster {
        ShardCluster { me, set, follower: None, claimed: None }
    }

    /// Follower shard `me` (not 0) of a cluster stack's `set`.
    pub fn follower(me: u32, set: Arc<ShardSet>, f: Follower) -> ShardCluster {
        ShardCluster { me, set, follower: Some(f), claimed: None }
    }

    /// Take this shard's claim on a SYN's 4-tuple ([`ShardCluster::claimed`]).
    fn take_claim(&mut self) -> Option<Tuple> {
        self.claimed.take()
    }

    /// Claim `tuple` for this shard (a SYN taken here): `Local`.
    fn claim(&mut self, tuple: &Tuple) -> InboundRoute {
        self.set.own(*tuple, self.me);
        self.claimed = Some(*tuple);
        InboundRoute::Local
    }

    /// The frame about to be received is (or is not) a SYN the lead decided for this shard.
    pub fn set_decided(&mut self, yes: bool) {
        if let Some(f) = self.follower.as_mut() {
            f.decided = yes;
        }
    }
}

impl Cluster for ShardCluster {
    fn route_inbound(&mut self, _now: Instant, tuple: &Tuple, syn: bool) -> InboundRoute {
        if self.follower.as_ref().is_some_and(|f| f.decided) {
            return if syn { self.claim(tuple) } else { InboundRoute::Local };
        }
        // (A SYN opens a connection: no shard has it yet.)
        if !syn {
            match self.set.owner(tuple) {
                Some(k) if k != self.me => return InboundRoute::Shard { shard: k },
                Some(_) => return InboundRoute::Local,
                None => {}
            }
        }
        // A cluster address: the lead decides (route to a target, hold, reset, take it).
        match &self.follower {
            Some(f) if !f.own.contains(tuple.local.ip()) => InboundRoute::Shard { shard: 0 },
            _ if syn => self.claim(tuple),
            _ => InboundRoute::Local,
        }
    }

    /// A datagram no socket of this shard takes goes to the shard whose socket does (a veth
    /// or a NIC's RSS picks the queue by the sender's hash, not by the socket).
    fn route_datagram(&mut self, local: SocketAddrV4) -> Option<u32> {
        self.set.udp_owner(local).filter(|&k| k != self.me)
    }

    fn ephemeral_port(&mut self, now: Instant, local: Ipv4Addr, remote: Option<SocketAddrV4>, rng: &mut Rng) -> Option<u16> {
        if let Some(f) = &self.follower {
            // An address with cluster-wide ports: the registry picks (shared with the lead).
            let ns = f.clock.mono_ns(now);
            let mut reg = f.ports.lock();
            if reg.mode(local).is_some() {
                let p = crate::cluster::claim_ephemeral(&mut reg, ns, local, remote, rng).ok()?;
                drop(reg);
                if let Some(r) = remote {
                    self.set.own(Tuple { local: SocketAddrV4::new(local, p), remote: r }, self.me);
                }
                return Some(p);
            }
        }
        // A UDP socket's port (no peer): process-wide ports are a TCP matter.
        let Some(remote) = remote else { return SingleStack.ephemeral_port(now, local, None, rng) };
        self.set.draw_port(self.me, local, remote, rng)
    }

    fn claim_port(&mut self, now: Instant, local: SocketAddrV4) -> stack::cluster::PortClaim {
        match &self.follower {
            Some(f) => crate::cluster::claim_bound(&mut f.ports.lock(), &f.cfg, f.clock.mono_ns(now), local).unwrap_or(stack::cluster::PortClaim::InUse),
            None => stack::cluster::PortClaim::Unregistered,
        }
    }

    fn source_address(&mut self, _now: Instant, app: &str) -> Option<Ipv4Addr> {
        self.follower.as_ref().and_then(|f| f.cfg.source_ipa(f.slot, app))
    }

    /// A range DVIPA a bind activates: the lead activates it (its application binds there
    /// too); a follower takes it once the lead holds it (it then arrives with the home list).
    fn bind_address(&mut self, _now: Instant, addr: Ipv4Addr) -> Option<u8> {
        self.follower.as_ref()?;
        self.set.sync.homes.lock().homes.iter().find(|h| h.addr == addr && !h.internal).map(|h| h.prefix_len)
    }
}

/// Give `g` (from `origin`) to `stack`, one shard of several (`link`; `None`: the only one):
/// ARP frames from the wire are shared with every shard; a cluster stack's lead decides for
/// the frames a follower handed over, and a follower takes what the lead decided for it;
/// frames for another shard are handed over (a frame handed over already goes no further,
/// but for the lead's decisions). The stack's outcome is returned: the caller forwards
/// [`Received::Forward`] to the cluster stack it names and keeps [`Received::Hold`].
pub fn deliver(stack: &mut Stack, link: Option<&mut ShardLink>, now: Instant, g: &[u8], origin: Origin) -> stack::iface::Received {
    use stack::iface::Received;
    let Some(link) = link else { return stack.receive(now, g) };
    // Each shard keeps its own neighbour cache, and the ARP answer to one shard's request may
    // arrive on another's queue: every shard sees every ARP frame.
    if origin == Origin::Wire && g.len() >= 14 && g[12..14] == [0x08, 0x06] {
        link.share(g);
    }
    let deciding = match origin {
        Origin::Shard { from, .. } if link.is_lead() => crate::cluster::deciding_for(stack, Some(from)),
        Origin::Shard { decided: true, .. } => set_decided(stack, true),
        _ => false,
    };
    let outcome = stack.receive(now, g);
    // A SYN this shard claimed that made no connection (no listener, a full queue, a cookie):
    // its 4-tuple is nobody's again.
    if let Some(t) = take_claim(stack) {
        if !stack.has_connection(&t) {
            link.set.disown(t, link.me);
        }
    }
    if deciding {
        if link.is_lead() {
            crate::cluster::deciding_for(stack, None);
        } else {
            set_decided(stack, false);
        }
    }
    if let Received::Shard { shard: to } = outcome {
        match origin {
            Origin::Wire => {
                link.hand_over(to, g);
            }
            // The lead's decision for the follower that asked (or a race: the connection is
            // another shard's now).
            Origin::Shard { from, .. } if link.is_lead() => {
                link.hand_decided(to, g, to == from);
            }
            // Handed over already: never on again (no ping-pong).
            Origin::Shard { .. } => link.unhanded += 1,
        }
    }
    outcome
}

/// The 4-tuple of the SYN the stack's shard just claimed, if it did.
fn take_claim(stack: &mut Stack) -> Option<Tuple> {
    let c: &mut dyn std::any::Any = stack.cluster_mut();
    if let Some(sc) = c.downcast_mut::<ShardCluster>() {
        return sc.take_claim();
    }
    crate::cluster::take_claim(stack)
}

/// A follower shard is about to receive a SYN the lead decided for it (`false`: done with
/// it); false if the stack is not a follower.
pub(crate) fn set_decided(stack: &mut Stack, yes: bool) -> bool {
    let c: &mut dyn std::any::Any = stack.cluster_mut();
    match c.downcast_mut::<ShardCluster>() {
        Some(sc) if sc.follower.is_some() => {
            sc.set_decided(yes);
            true
        }
        _ => false,
    }
}

/// A poll thread's link to its set: drains its stack's connection events into the table, and
/// (a cluster stack's follower) reports them to the lead and applies what the lead published.
/// The frames handed over are delivered by the poll loop ([`ShardSet::drain`]).
#[derive(Debug)]
pub struct ShardLink {
    me: u32,
    set: Arc<ShardSet>,
    events: Vec<ClusterEvent>,
    /// A shard of a cluster stack (shard 0 is the lead, whose member drains the stack's
    /// events itself; the others follow it).
    clustered: bool,
    /// The lead's publication this follower applied last.
    applied: u64,
    /// This follower's connections per local address.
    counts: HashMap<Ipv4Addr, usize>,
    /// Frames handed to another shard, and frames that could not be.
    pub handed: u64,
    /// Frames another shard's table named us for but that are not ours either (dropped).
    pub unhanded: u64,
    /// Times this follower left its frames in the ring because the lead's lease had lapsed.
    pub lease_waits: u64,
    /// The next of a move's targets this follower sends a connection to.
    next_move: usize,
}

impl ShardLink {
    /// Shard `me` of `set`.
    pub fn new(me: u32, set: Arc<ShardSet>) -> ShardLink {
        ShardLink { me, set, events: Vec::new(), clustered: false, applied: 0, counts: HashMap::new(), handed: 0, unhanded: 0, lease_waits: 0, next_move: 0 }
    }

    /// Shard `me` of a cluster stack's `set` (0 is the lead, whose member reads its events).
    pub fn clustered(me: u32, set: Arc<ShardSet>) -> ShardLink {
        ShardLink { clustered: true, ..ShardLink::new(me, set) }
    }

    /// The set.
    pub fn set(&self) -> &Arc<ShardSet> {
        &self.set
    }

    /// This shard's number.
    pub fn me(&self) -> u32 {
        self.me
    }

    /// Shard 0 of a cluster stack.
    pub fn is_lead(&self) -> bool {
        self.clustered && self.me == 0
    }

    /// A follower shard of a cluster stack.
    pub fn is_follower(&self) -> bool {
        self.clustered && self.me != 0
    }

    /// Record the stack's connection events; a follower reports them to the lead and applies
    /// the lead's home list. Returns whether frames were handed over to this shard (the poll
    /// loop delivers them).
    pub fn turn(&mut self, stack: &mut Stack) -> bool {
        if !self.is_lead() {
            self.events.clear();
            while let Some(e) = stack.poll_cluster_event() {
                self.events.push(e);
            }
            self.set.apply(self.me, &self.events);
            if self.is_follower() && !self.events.is_empty() {
                self.report();
            }
        }
        if self.is_follower() {
            self.follow(stack);
        }
        self.set.has_handed(self.me)
    }

    /// A follower's events to the lead (woken: a NEWCONN must reach the router before the
    /// reply to the connection's SYN does), and its connection counts.
    fn report(&mut self) {
        let mut changed = false;
        for e in &self.events {
            match e {
                ClusterEvent::ConnectionOpened(t, _) => {
                    *self.counts.entry(*t.local.ip()).or_insert(0) += 1;
                    changed = true;
                }
                ClusterEvent::ConnectionClosed(t) | ClusterEvent::ConnectionMoved(t) => {
                    if let Some(n) = self.counts.get_mut(t.local.ip()) {
                        *n = n.saturating_sub(1);
                        changed = true;
                    }
                }
                _ => {}
            }
        }
        if self.set.sync.push_events(&self.events) {
            self.set.wake(0);
        }
        if changed {
            let mut c = self.set.sync.counts.lock();
            for (a, n) in &self.counts {
                c.insert((self.me, *a), *n);
            }
        }
    }

    /// Apply the lead's home list and cluster MACs, if it published new ones.
    fn follow(&mut self, stack: &mut Stack) {
        let v = self.set.sync.version.load(Ordering::Acquire);
        if v == self.applied {
            return;
        }
        self.applied = v;
        let p = self.set.sync.homes.lock().clone();
        for h in &p.homes {
            if !stack.homes().contains(h) {
                stack.add_address(h.addr, h.prefix_len, h.internal);
            }
        }
        let gone: Vec<Ipv4Addr> = stack.homes().iter().map(|h| h.addr).filter(|a| !p.homes.iter().any(|h| h.addr == *a)).collect();
        for a in gone {
            let how = if p.silent.contains(&a) { Departure::Silent } else { Departure::Reset };
            stack.remove_address(Instant::ZERO, a, how);
        }
        stack.set_cluster_macs(&p.macs);
    }

    /// A follower's part of the lead's drain or giveback by handoff: detach what may move of
    /// its connections on the addresses that move ([`MoveScope`]), a few at a time, and leave
    /// their records to the lead, which offers them to their targets as its own
    /// ([`crate::handoff::offer_proxied`]). `freeze_ns`: now, CLOCK_MONOTONIC (the target
    /// measures the handoff from it). True when it detached any.
    pub fn move_step(&mut self, stack: &mut Stack, now: Instant, freeze_ns: u64, app: &mut (impl crate::runner::App + ?Sized)) -> bool {
        if !self.is_follower() {
            return false;
        }
        let Some(scope) = self.set.sync.scope() else { return false };
        let room = PROXIED_MAX.saturating_sub(self.set.sync.proxied_pending());
        if scope.targets.is_empty() || room == 0 {
            return false;
        }
        let mut moved = 0;
        for h in crate::handoff::movable(stack, &scope.addrs, room, app) {
            let Some(tuple) = stack.tcp(h).map(|c| c.tuple()) else { continue };
            let state = crate::handoff::record_state(freeze_ns, &[]);
            let Ok(record) = stack.tcp_snapshot_with(now, h, scope.giver, Default::default(), &state) else { continue };
            // Not this shard's any more: its segments go to the lead from now on (the stack's
            // ConnectionMoved event would say so only at the next turn).
            self.set.disown(tuple, self.me);
            let to = scope.targets[self.next_move % scope.targets.len()];
            self.next_move += 1;
            self.set.sync.push_proxied(Proxied { tuple, record, to, unconditional: scope.unconditional });
            app.moved_away(now, stack, h);
            moved += 1;
        }
        if moved > 0 {
            self.set.wake(0);
        }
        moved > 0
    }

    /// Whether the lead's lease holds at `ns` (a follower takes no frame otherwise); counted.
    pub fn lease_ok(&mut self, ns: u64) -> bool {
        let ok = !self.is_follower() || self.set.sync.lease_ok(ns);
        if !ok {
            self.lease_waits += 1;
        }
        ok
    }

    /// Give every other shard a copy of `frame` (an ARP frame: each shard has its own
    /// neighbour cache).
    pub fn share(&mut self, frame: &[u8]) {
        for k in 0..self.set.inboxes.len() as u32 {
            if k != self.me {
                self.hand_over(k, frame);
            }
        }
    }

    /// Hand `frame` (which the stack said belongs to shard `to`) over.
    pub fn hand_over(&mut self, to: u32, frame: &[u8]) -> bool {
        let ok = self.set.hand(to, frame, self.me, false);
        self.count(ok)
    }

    /// The lead hands `frame` to shard `to`, `decided`: a frame `to` handed over, which it
    /// takes itself now.
    pub fn hand_decided(&mut self, to: u32, frame: &[u8], decided: bool) -> bool {
        let ok = self.set.hand(to, frame, self.me, decided);
        self.count(ok)
    }

    fn count(&mut self, ok: bool) -> bool {
        if ok {
            self.handed += 1;
        } else {
            self.unhanded += 1;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stack::cluster::Opened;

    /// Two shards of one process on `ip` (one MAC), with their links; they share their
    /// secrets as [`crate::Plex`]'s shards do.
    fn two_shards(ip: Ipv4Addr) -> (Arc<ShardSet>, Vec<Stack>, Vec<ShardLink>) {
        two_shards_with(ip, Some(77))
    }

    fn two_shards_with(ip: Ipv4Addr, secrets_seed: Option<u64>) -> (Arc<ShardSet>, Vec<Stack>, Vec<ShardLink>) {
        use stack::iface::StackConfig;
        let set = ShardSet::new(2);
        let shards = (0..2u32)
            .map(|k| {
                let mut c = StackConfig::new(MacAddr([2, 0, 0, 0, 1, 2]));
                c.seed = k as u64 + 1;
                c.secrets_seed = secrets_seed;
                let mut s = Stack::with_cluster(c, Box::new(ShardCluster::new(k, set.clone())));
                s.add_address(ip, 24, false);
                s
            })
            .collect();
        let links = (0..2).map(|k| ShardLink::new(k, set.clone())).collect();
        (set, shards, links)
    }

    /// What a poll thread does at its turn with its link (events, the lead's list) and the
    /// frames handed to it (plainly received: the runner's deciding is tested separately).
    fn deliver(link: &mut ShardLink, stack: &mut Stack) {
        link.turn(stack);
        let set = link.set().clone();
        set.drain(link.me(), |f, _| {
            stack.receive(Instant::ZERO, f);
        });
    }

    fn t(lp: u16, rp: u16) -> Tuple {
        Tuple { local: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), lp), remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), rp) }
    }

    #[test]
    fn a_segment_of_another_shards_connection_goes_there_and_a_syn_stays() {
        let set = ShardSet::new(2);
        set.apply(0, &[ClusterEvent::ConnectionOpened(t(40000, 7), Opened::Active)]);
        let mut c1 = ShardCluster::new(1, set.clone());
        let now = Instant::ZERO;
        assert_eq!(c1.route_inbound(now, &t(40000, 7), false), InboundRoute::Shard { shard: 0 });
        assert_eq!(c1.route_inbound(now, &t(40000, 7), true), InboundRoute::Local, "a SYN opens a connection here");
        assert_eq!(c1.route_inbound(now, &t(40001, 7), false), InboundRoute::Local, "unknown: this shard answers (RST)");
        let mut c0 = ShardCluster::new(0, set.clone());
        assert_eq!(c0.route_inbound(now, &t(40000, 7), false), InboundRoute::Local, "never to itself");
        set.apply(0, &[ClusterEvent::ConnectionClosed(t(40000, 7))]);
        assert_eq!(c1.route_inbound(now, &t(40000, 7), false), InboundRoute::Local);
    }

    /// A datagram for a UDP socket of shard 0 that arrives on queue 1 is handed to shard 0,
    /// through the stacks themselves (not only the table): it is received there.
    #[test]
    fn a_datagram_for_another_shards_socket_goes_there() {
        use stack::iface::{Received, StackConfig};
        use stack::wire::MacAddr;
        let ip = Ipv4Addr::new(198, 18, 1, 2);
        let (set, mut shards, mut links) = two_shards(ip);
        let sock = shards[0].udp_bind(SocketAddrV4::new(ip, 5353)).unwrap();
        let any = shards[0].udp_bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 6000)).unwrap();
        deliver(&mut links[0], &mut shards[0]);
        // A peer's datagrams, framed as they arrive on queue 1.
        let mut peer = Stack::new(StackConfig::new(MacAddr([2, 0, 0, 0, 1, 1])));
        peer.add_address(Ipv4Addr::new(198, 18, 1, 1), 24, false);
        let p = peer.udp_bind(SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 4000)).unwrap();
        for port in [5353u16, 6000, 7777] {
            peer.udp_send_to(Instant::ZERO, p, SocketAddrV4::new(ip, port), b"hello").unwrap();
        }
        // ARP first (answered by shard 1, as any shard answers), then the datagrams.
        let mut buf = vec![0u8; 2048];
        let mut frames = Vec::new();
        for _ in 0..4 {
            while let Some(n) = peer.poll_transmit(Instant::ZERO, &mut buf) {
                let f = buf[..n].to_vec();
                if u16::from_be_bytes([f[12], f[13]]) == 0x0806 {
                    shards[1].receive(Instant::ZERO, &f);
                } else {
                    frames.push(f);
                }
            }
            while let Some(n) = shards[1].poll_transmit(Instant::ZERO, &mut buf) {
                peer.receive(Instant::ZERO, &buf[..n]);
            }
        }
        assert_eq!(frames.len(), 3);
        for f in &frames[..2] {
            match shards[1].receive(Instant::ZERO, f) {
                Received::Shard { shard: 0 } => assert!(links[1].hand_over(0, f)),
                r => panic!("queue 1 kept a datagram of shard 0's socket: {r:?}"),
            }
        }
        assert_eq!(shards[1].counters().udp_forwarded, 2);
        assert!(!matches!(shards[1].receive(Instant::ZERO, &frames[2]), Received::Shard { .. }), "nobody's port: dropped here");
        deliver(&mut links[0], &mut shards[0]);
        let mut got = [0u8; 16];
        assert_eq!(shards[0].udp_recv_from(sock, &mut got).map(|(n, _)| n), Ok(5));
        assert_eq!(shards[0].udp_recv_from(any, &mut got).map(|(n, _)| n), Ok(5));
        // Closed: no longer routed.
        shards[0].close(Instant::ZERO, sock).unwrap();
        deliver(&mut links[0], &mut shards[0]);
        assert_eq!(set.udp_owner(SocketAddrV4::new(ip, 5353)), None);
    }

    /// The shard that takes a SYN owns its 4-tuple before the SYN-ACK leaves: the peer's ACK,
    /// arriving on the other queue before the owner's next turn, goes to it and completes the
    /// connection there (it was reset before the claim: the table learnt the connection only
    /// at the owner's next turn, and on a loaded machine that came after the ACK). A SYN that
    /// makes no connection leaves no claim behind.
    #[test]
    fn a_taken_syn_is_claimed_before_its_syn_ack_leaves() {
        use stack::iface::{SocketEvent, StackConfig};
        use stack::wire::MacAddr;
        let ip = Ipv4Addr::new(198, 18, 1, 2);
        let now = Instant::ZERO;
        let (set, mut shards, mut links) = two_shards(ip);
        for s in shards.iter_mut() {
            s.tcp_listen(now, SocketAddrV4::new(ip, 80), 16).unwrap();
        }
        let mut peer = Stack::new(StackConfig::new(MacAddr([2, 0, 0, 0, 1, 1])));
        peer.add_address(Ipv4Addr::new(198, 18, 1, 1), 24, false);
        let c = peer.tcp_connect(now, None, SocketAddrV4::new(ip, 80)).unwrap();
        let mut buf = vec![0u8; 2048];
        // The peer's frames: ARP to shard 1, and the SYN to shard 1; everything after the
        // SYN to shard 0 (the other queue).
        let mut syn_seen = false;
        for _ in 0..8 {
            while let Some(n) = peer.poll_transmit(now, &mut buf) {
                let f = buf[..n].to_vec();
                let arp = u16::from_be_bytes([f[12], f[13]]) == 0x0806;
                let to = if arp || !syn_seen { 1 } else { 0 };
                if !arp {
                    syn_seen = true;
                }
                let (l, s) = (&mut links[to], &mut shards[to]);
                deliver_wire(l, s, &f);
            }
            for k in 0..2 {
                // No turn of the links here: what a shard learns from its events comes too
                // late on a loaded machine. Only the frames handed over are delivered.
                let set = links[k].set().clone();
                let (l, s) = (&mut links[k], &mut shards[k]);
                set.drain(k as u32, |f, origin| {
                    super::deliver(s, Some(l), now, f, origin);
                });
                while let Some(n) = shards[k].poll_transmit(now, &mut buf) {
                    peer.receive(now, &buf[..n]);
                }
            }
        }
        assert!(matches!(peer.tcp(c).map(|x| x.state()), Some(stack::tcp::State::Established)), "the connection opened");
        let mut accepted = [0, 0];
        for (k, s) in shards.iter_mut().enumerate() {
            while let Some((_, e)) = s.poll_event() {
                if matches!(e, SocketEvent::Acceptable) {
                    accepted[k] += 1;
                }
            }
        }
        assert_eq!(accepted, [0, 1], "accepted by the shard the SYN arrived on, not reset by the other");
        assert_eq!(shards[0].counters().tcp_rst_out, 0);
        // A SYN nobody listens for: refused, and no claim is left.
        let refused = Tuple { local: SocketAddrV4::new(ip, 81), remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 50000) };
        let mut c1 = ShardCluster::new(1, set.clone());
        assert_eq!(c1.route_inbound(now, &refused, true), InboundRoute::Local);
        assert_eq!(set.owner(&refused), Some(1), "claimed while the SYN is in hand");
        shards[1].tcp_listen(now, SocketAddrV4::new(ip, 82), 1).unwrap();
        let d = peer.tcp_connect(now, None, SocketAddrV4::new(ip, 81)).unwrap();
        let _ = d;
        while let Some(n) = peer.poll_transmit(now, &mut buf) {
            let f = buf[..n].to_vec();
            deliver_wire(&mut links[1], &mut shards[1], &f);
        }
        let owned = set.owners.read().iter().filter(|(t, _)| t.local.port() == 81).count();
        assert_eq!(owned, 1, "only the route_inbound call above (not through deliver) holds a claim");
    }

    /// Under a SYN flood one shard answers a SYN with a cookie and keeps nothing; the peer's
    /// ACK may arrive on the other queue. The shards of one process share their secrets (one
    /// host), so the other shard finds the cookie valid and accepts the connection. With a
    /// secret per shard (as before) it was invalid there and the client got a RST.
    #[test]
    fn a_cookie_one_shard_sent_is_valid_on_the_other() {
        use stack::iface::StackConfig;
        use stack::wire::MacAddr;
        let ip = Ipv4Addr::new(198, 18, 1, 2);
        let now = Instant::ZERO;
        let run = |secrets_seed: Option<u64>| {
            let (_set, mut shards, mut links) = two_shards_with(ip, secrets_seed);
            for s in shards.iter_mut() {
                // One SYN-queue entry: the second SYN gets a cookie.
                s.tcp_listen(now, SocketAddrV4::new(ip, 80), 1).unwrap();
            }
            let mut peer = Stack::new(StackConfig::new(MacAddr([2, 0, 0, 0, 1, 1])));
            peer.add_address(Ipv4Addr::new(198, 18, 1, 1), 24, false);
            let a = peer.tcp_connect(now, None, SocketAddrV4::new(ip, 80)).unwrap();
            let b = peer.tcp_connect(now, None, SocketAddrV4::new(ip, 80)).unwrap();
            let b_port = peer.tcp(b).unwrap().tuple().local.port();
            let mut buf = vec![0u8; 2048];
            for _ in 0..8 {
                while let Some(n) = peer.poll_transmit(now, &mut buf) {
                    let f = buf[..n].to_vec();
                    let tcp = u16::from_be_bytes([f[12], f[13]]) == 0x0800 && f[23] == 6;
                    let (sport, flags) = if tcp { (u16::from_be_bytes([f[34], f[35]]), f[47]) } else { (0, 0) };
                    // b's handshake ACK arrives on queue 1, everything else on queue 0.
                    let to = usize::from(sport == b_port && flags & 0x02 == 0);
                    deliver_wire(&mut links[to], &mut shards[to], &f);
                }
                for k in 0..2 {
                    while let Some(n) = shards[k].poll_transmit(now, &mut buf) {
                        peer.receive(now, &buf[..n]);
                    }
                }
            }
            let est = |c| matches!(peer.tcp(c).map(|x| x.state()), Some(stack::tcp::State::Established));
            (est(a), est(b), shards[0].listener_counters().cookies_sent, shards[1].listener_counters().cookies_valid, shards[1].counters().tcp_rst_out)
        };
        let (a, b, sent, valid, rst) = run(Some(5));
        assert!(a && b, "both connections open (a {a}, b {b})");
        assert_eq!((sent, valid, rst), (1, 1, 0), "shard 0 sent the cookie, shard 1 took it");
        let (_, b, sent, valid, rst) = run(None);
        assert_eq!((b, sent, valid), (false, 1, 0), "a secret per shard: the cookie is invalid on the other queue");
        assert!(rst >= 1, "and the client was reset");
    }

    fn deliver_wire(link: &mut ShardLink, stack: &mut Stack, f: &[u8]) {
        super::deliver(stack, Some(link), Instant::ZERO, f, Origin::Wire);
    }

    #[test]
    fn two_shards_never_draw_the_same_tuple() {
        let set = ShardSet::new(2);
        let (mut a, mut b) = (ShardCluster::new(0, set.clone()), ShardCluster::new(1, set.clone()));
        // The same random sequence on both: without the shared table they would collide.
        let (mut ra, mut rb) = (Rng::new(7), Rng::new(7));
        let remote = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 7);
        let local = Ipv4Addr::new(198, 18, 1, 2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let pa = a.ephemeral_port(Instant::ZERO, local, Some(remote), &mut ra).unwrap();
            let pb = b.ephemeral_port(Instant::ZERO, local, Some(remote), &mut rb).unwrap();
            assert!(seen.insert(pa) && seen.insert(pb), "port drawn twice");
        }
        assert!(set.owner(&t(*seen.iter().next().unwrap(), 7)).is_some());
    }

    #[test]
    fn handed_over_frames_arrive_in_order_and_the_buffers_come_back() {
        let set = ShardSet::new(2);
        for i in 0..10u8 {
            assert!(set.hand_over(1, &[i; 60]));
        }
        let mut got = Vec::new();
        assert_eq!(set.drain(1, |f, _| got.push(f[0])), 10);
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(set.pool.len(), 10);
        assert!(!set.hand_over(2, &[0; 60]), "no such shard");
        assert!(!set.hand_over(0, &[0; FRAME + 1]), "too long");
        for _ in 0..INBOX {
            assert!(set.hand_over(0, &[1; 60]));
        }
        assert!(!set.hand_over(0, &[1; 60]), "a full inbox drops");
    }
}

/// A cluster member on two queues, in one process without an interface: the lead (queue 0)
/// holds the member; the follower (queue 1) gets the DVIPA from the lead's publication, hands
/// a SYN for it to the lead, whose distributor decides (it routes the address and picks
/// itself as the target) and hands the SYN back decided; the follower accepts, and the
/// client's next segment, arriving on queue 0, reaches the follower's connection.
#[cfg(test)]
mod cluster_tests {
    use super::*;
    use crate::cluster::ClusterMember;
    use coupling::node::Identity;
    use coupling::ClusterConfig;
    use stack::iface::{SocketEvent, SocketHandle, StackConfig};
    use stack::time::Duration;

    const DVIPA: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 102);

    fn config(region: &str) -> String {
        let mut s = format!("[cluster]\nname = \"shards\"\nregion = \"{region}\"\nlease_ms = 100\nheartbeat_ms = 10\n");
        for (i, n) in ["s1", "s2", "s3"].iter().enumerate() {
            s += &format!("[[stack]]\nname = \"{n}\"\ninterface = \"plx-shard{i}\"\naddress = \"198.18.0.{}/24\"\n", 11 + i);
        }
        s += "[[dvipa]]\naddress = \"198.18.0.102/24\"\nprimary = \"s2\"\nbackups = [{ stack = \"s1\", rank = 20 }]\ndistribute = { ports = [80], targets = [\"s2\", \"s3\"] }\n";
        s
    }

    #[test]
    fn a_follower_shard_takes_the_syns_its_lead_decides_for_it() {
        let region = format!("/dev/shm/plex-shards-test-{}", std::process::id());
        let _ = std::fs::remove_file(&region);
        let cfg = Arc::new(ClusterConfig::parse(&config(&region), "test").unwrap());
        let clock = crate::clock::Clock::default();
        let mac = MacAddr([2, 0, 0, 0, 0x20, 2]);
        let ident = Identity { pid: std::process::id(), mac: mac.0, ifindex: 200 };
        let (mut member, mut sc) = ClusterMember::join_at(cfg.clone(), "s2", ident, clock, Instant::ZERO).unwrap();
        let set = ShardSet::new(2);
        sc.set_shards(set.clone());
        member.set_shards(set.clone());
        let own = Ipv4Addr::new(198, 18, 0, 12);
        let follower = ShardCluster::follower(1, set.clone(), Follower::new(vec![own], cfg.clone(), sc.slot(), sc.ports_shared(), clock));
        let stack = |seed: u64, c: Box<dyn Cluster>| {
            let mut cfg = StackConfig::new(mac);
            cfg.seed = seed;
            let mut s = Stack::with_cluster(cfg, c);
            s.add_address(own, 24, false);
            s
        };
        let mut shards = [stack(1, Box::new(sc)), stack(2, Box::new(follower))];
        let mut links = [ShardLink::clustered(0, set.clone()), ShardLink::clustered(1, set.clone())];
        let mut client = Stack::new(StackConfig::new(MacAddr([2, 0, 0, 0, 0x20, 1])));
        client.add_address(Ipv4Addr::new(198, 18, 0, 1), 24, false);
        let mut now = Instant::ZERO;
        let mut buf = vec![0u8; 4096];
        // One poll-loop turn of both shards: the member, the links, the frames handed over.
        let turn = |now: Instant, shards: &mut [Stack; 2], links: &mut [ShardLink; 2], member: &mut ClusterMember| {
            member.turn(now, &mut shards[0]);
            for k in 0..2 {
                links[k].turn(&mut shards[k]);
                let set = links[k].set().clone();
                let (l, s) = (&mut links[k], &mut shards[k]);
                set.drain(k as u32, |f, origin| {
                    let r = deliver(s, Some(l), now, f, origin);
                    assert!(!matches!(r, stack::iface::Received::Forward { .. }), "nothing leaves for another stack here");
                });
            }
            member.turn(now, &mut shards[0]);
        };
        // s2 alone, the DVIPA's primary: it activates and routes it; the follower gets it from
        // the lead's publication.
        for _ in 0..3000 {
            now += Duration::from_millis(1);
            turn(now, &mut shards, &mut links, &mut member);
            if shards[1].has_address(DVIPA) && shards[0].homes().iter().any(|h| h.addr == DVIPA && !h.internal) {
                break;
            }
        }
        assert!(shards[0].has_address(DVIPA), "the lead holds the DVIPA");
        assert!(shards[1].homes().iter().any(|h| h.addr == DVIPA && !h.internal), "the follower has it from the lead's publication");
        assert!(set.sync.lease_ok(clock.mono_ns(now)), "the lead published its lease");
        // Both shards listen; the distributor hears of both listeners (the follower's through
        // the lead) and routes SYNs to its own stack.
        let any80 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80);
        let listeners: Vec<SocketHandle> = shards.iter_mut().map(|s| s.tcp_listen(now, any80, 16).unwrap()).collect();
        for _ in 0..50 {
            now += Duration::from_millis(1);
            turn(now, &mut shards, &mut links, &mut member);
        }
        let c = client.tcp_connect(now, None, SocketAddrV4::new(DVIPA, 80)).unwrap();
        // Every frame from the client: ARP and the SYN to queue 1, the rest to queue 0.
        let mut syn_sent = false;
        for _ in 0..20 {
            now += Duration::from_millis(1);
            while let Some(n) = client.poll_transmit(now, &mut buf) {
                let f = buf[..n].to_vec();
                let arp = u16::from_be_bytes([f[12], f[13]]) == 0x0806;
                let q = if arp || !syn_sent { 1 } else { 0 };
                syn_sent |= !arp;
                let (l, s) = (&mut links[q], &mut shards[q]);
                deliver(s, Some(l), now, &f, Origin::Wire);
            }
            turn(now, &mut shards, &mut links, &mut member);
            for s in shards.iter_mut() {
                while let Some(n) = s.poll_transmit(now, &mut buf) {
                    client.receive(now, &buf[..n]);
                }
            }
        }
        assert!(matches!(client.tcp(c).map(|x| x.state()), Some(stack::tcp::State::Established)), "connected");
        let accepted: Vec<usize> = shards.iter_mut().map(|s| std::iter::from_fn(|| s.poll_event()).filter(|e| matches!(e.1, SocketEvent::Acceptable)).count()).collect();
        assert_eq!(accepted, [0, 1], "the follower took the connection, not the lead");
        let t = Tuple { local: SocketAddrV4::new(DVIPA, 80), remote: client.tcp(c).unwrap().tuple().local };
        assert_eq!(set.owner(&t), Some(1));
        let dist = crate::cluster::dist_stats(&shards[0]).unwrap();
        assert_eq!(dist.syns_local, 1, "the lead's distributor decided the SYN: {dist:?}");
        assert!(shards[0].counters().tcp_shard_handed >= 1 && shards[1].counters().tcp_shard_handed >= 1);
        assert_eq!(set.sync.follower_connections(DVIPA), 1, "the follower's connection is counted for the node");
        assert_eq!(shards[0].counters().tcp_rst_out + shards[1].counters().tcp_rst_out, 0);

        // A drain of the stack: the follower moves its connection too, through the lead. It
        // detaches it (the lead publishes what moves; here the scope is set by hand, to s3),
        // the tuple is no longer its own, and the client's next segment on queue 1 goes to
        // the lead. s3 is not up, so the lead's offer fails and the connection lives on, on
        // the lead's shard, given to the application there, with the client's bytes.
        let h1 = shards[1].tcp_accept(listeners[1]).expect("the follower's connection");
        // An application's own transfer of it says why it cannot move that way.
        assert_eq!(crate::handoff::transfer(&mut shards[1], now, h1, "s3", b"", false), Err(crate::handoff::TransferError::FollowerShard { shard: 1 }));
        assert!(shards[1].tcp(h1).is_some(), "and leaves it alone");
        #[derive(Default)]
        struct Movable {
            moved: Vec<SocketHandle>,
            arrived: Vec<SocketHandle>,
        }
        impl crate::runner::App for Movable {
            fn start(&mut self, _now: Instant, _stack: &mut Stack) -> Result<(), String> {
                Ok(())
            }
            fn event(&mut self, _now: Instant, _stack: &mut Stack, _h: SocketHandle, _ev: SocketEvent) {}
            fn transferred(&mut self, _now: Instant, _stack: &mut Stack, h: SocketHandle, _state: &[u8]) {
                self.arrived.push(h);
            }
            fn may_move(&mut self, _stack: &Stack, _h: SocketHandle) -> bool {
                true
            }
            fn moved_away(&mut self, _now: Instant, _stack: &mut Stack, h: SocketHandle) {
                self.moved.push(h);
            }
        }
        let (mut app0, mut app1) = (Movable::default(), Movable::default());
        set.sync.set_scope(Some(MoveScope { addrs: vec![DVIPA], targets: vec![2], unconditional: true, giver: 1 }));
        assert!(links[1].move_step(&mut shards[1], now, clock.mono_ns(now), &mut app1), "the follower moved its connection");
        assert_eq!(app1.moved, [h1]);
        assert!(shards[1].tcp(h1).is_none() && shards[1].tcp_connections_on(DVIPA).is_empty());
        assert_eq!(set.owner(&t), None, "the follower gave the tuple up at once");
        assert!(set.sync.has_proxied());
        assert!(!links[0].move_step(&mut shards[0], now, 0, &mut app0), "the lead moves its own connections itself");
        client.tcp_send(now, c, b"hello").unwrap();
        let seg = {
            let n = client.poll_transmit(now, &mut buf).expect("the client's data");
            buf[..n].to_vec()
        };
        assert!(matches!(deliver(&mut shards[1], Some(&mut links[1]), now, &seg, Origin::Wire), stack::iface::Received::Shard { shard: 0 }));
        // The lead's poll loop takes the records before the frames handed after them.
        assert!(crate::handoff::offer_proxied(&mut shards[0], now, &set));
        let h0 = crate::handoff::next_adopted(&mut shards[0]).expect("the offer failed: the connection stays with the lead");
        app0.arrived.push(h0);
        set.drain(0, |f, origin| {
            deliver(&mut shards[0], Some(&mut links[0]), now, f, origin);
        });
        let mut got = [0u8; 16];
        assert_eq!(shards[0].tcp_recv(now, h0, &mut got).ok(), Some(5), "the client's bytes reached the lead's connection");
        assert_eq!(&got[..5], b"hello");
        assert_eq!(shards[0].counters().tcp_rst_out + shards[1].counters().tcp_rst_out, 0, "nobody reset it");
        let _ = std::fs::remove_file(&region);
    }
}
