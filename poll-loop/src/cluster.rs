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
//! [`StackCluster`] is the [`stack::cluster::Cluster`] the stack holds: bind activation of
//! range DVIPAs goes through it. Both share the node behind a mutex that only this poll thread
//! takes (the cluster runs one queue per stack).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use coupling::layout::{MemberState, MAX_STACKS};
use coupling::node::{Action, Departure, Identity, Node};
use coupling::{ClusterConfig, Region};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use stack::cluster::{Cluster, InboundRoute, SingleStack};
use stack::iface::Stack;
use stack::rand::Rng;
use stack::tcp::Tuple;
use stack::time::{Duration, Instant};

use crate::clock::Clock;
use crate::xdp::HomeMap;

struct Shared {
    node: Node,
    /// The steering map (set once the interface is attached, after joining).
    home: Option<HomeMap>,
    /// Addresses activated by bind since the last turn: announce them.
    bound: Vec<Ipv4Addr>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("node", &self.node.name()).finish()
    }
}

struct Watch {
    incarnation: u64,
    fd: OwnedFd,
}

/// The cluster side of one stack's poll loop.
pub struct ClusterMember {
    shared: Arc<Mutex<Shared>>,
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
}

impl std::fmt::Debug for ClusterMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterMember").field("name", &self.name).finish()
    }
}

/// What the stack holds: bind activation through the node.
#[derive(Debug)]
pub struct StackCluster {
    shared: Arc<Mutex<Shared>>,
    clock: Clock,
}

/// Only this poll thread takes the lock (the stack's handle is called from the same thread), so
/// a poisoned mutex can only mean our own earlier panic: carry on with the state.
fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let (region, stale) =
            Region::create_or_attach_logged(&cfg.region, &cfg.name, cfg.hash(), clock.mono_ns(now)).map_err(|e| e.to_string())?;
        if let Some(why) = stale {
            log(name, format_args!(
                "found a stale coupling region ({why}); replaced it with a new one (stacks still attached to the old file leave the cluster; restart them to rejoin)"
            ));
        }
        let node = Node::join(Arc::new(region), cfg.clone(), name, ident, clock.mono_ns(now)).map_err(|e| e.to_string())?;
        log(name, format_args!("joined cluster {} as slot {} incarnation {}", cfg.name, node.slot(), node.incarnation()));
        let own = cfg.stacks[node.slot()].addr;
        let heartbeat = Duration::from_millis(cfg.heartbeat_ms);
        let shared = Arc::new(Mutex::new(Shared { node, home: None, bound: Vec::new() }));
        let member = ClusterMember {
            shared: shared.clone(),
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
        };
        Ok((member, StackCluster { shared, clock }))
    }

    /// The interface is attached: DVIPAs go into (and out of) this steering map.
    pub fn set_steering(&mut self, home: HomeMap) {
        lock(&self.shared).home = Some(home);
    }

    /// When the loop must come back at the latest (adaptive sleep).
    pub fn next_deadline(&self) -> Instant {
        let d = self.reannounce.iter().map(|r| r.0).fold(self.next_tick, Instant::min);
        if self.marks.is_empty() {
            d
        } else {
            // Come straight back: an operator's command waits for the mark.
            Instant::ZERO
        }
    }

    /// Called at the top of every poll-loop iteration, before any frame is handled.
    pub fn turn(&mut self, now: Instant, stack: &mut Stack) {
        if self.left || (now < self.next_tick && now < self.lease_ok && self.reannounce.is_empty() && self.marks.is_empty()) {
            return;
        }
        let ns = self.clock.mono_ns(now);
        let shared_arc = self.shared.clone();
        let mut shared = lock(&shared_arc);
        if !self.marks.is_empty() {
            for m in self.marks.iter_mut() {
                m.1 = m.1.saturating_sub(1);
                if m.1 == 0 && stack.has_address(m.0) {
                    shared.node.announced(m.0);
                }
            }
            self.marks.retain(|m| m.1 > 0);
        }
        for a in shared.bound.drain(..) {
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
        if now < self.next_tick && shared.node.lease_valid(ns) {
            return;
        }
        self.next_tick = now + self.heartbeat;
        // (The member rows are read only from a region that still checks out; the tick
        // itself starts with the same check and leaves the cluster if it fails.)
        if shared.node.detached().is_none() && shared.node.region().health().is_ok() {
            self.watch_members(&mut shared.node, ns);
        }
        let mut actions = std::mem::take(&mut self.actions);
        let fenced = shared.node.stats.fenced;
        shared.node.tick(ns, &|a| stack.connections_on(a), &mut actions);
        if shared.node.awaiting_move() {
            // A command moves an address here: tick again at the next turn.
            self.next_tick = now;
        }
        for e in shared.node.take_events() {
            log(&self.name, format_args!("coupling region: {e}"));
        }
        if shared.node.stats.fenced != fenced {
            log(&self.name, format_args!(
                "fenced: declared failed while stalled (lease lapsed); dropped its DVIPAs, rejoined as incarnation {}",
                shared.node.incarnation()
            ));
        }
        for a in actions.drain(..) {
            match a {
                Action::Activate { addr, prefix, why } => {
                    stack.add_address(addr, prefix, false);
                    if let Some(Err(e)) = shared.home.as_ref().map(|h| h.add(addr)) {
                        log(&self.name, format_args!("{e}"));
                    }
                    stack.announce(addr);
                    self.reannounce.push((now + Duration::from_millis(20), addr, 2));
                    self.marks.push((addr, 2));
                    log(&self.name, format_args!("{addr} active ({why})"));
                }
                Action::Deactivate { addr, .. } if addr == self.own || !stack.has_address(addr) => {
                    self.reannounce.retain(|r| r.1 != addr);
                }
                Action::Deactivate { addr, connections, why } => {
                    // Out of the steering map first: from here on its frames go to the kernel.
                    if let Some(Err(e)) = shared.home.as_ref().map(|h| h.remove(addr)) {
                        log(&self.name, format_args!("{e}"));
                    }
                    let n = stack.connections_on(addr);
                    stack.remove_address(now, addr, match connections {
                        Departure::Reset => stack::iface::Departure::Reset,
                        Departure::Silent => stack::iface::Departure::Silent,
                    });
                    self.reannounce.retain(|r| r.1 != addr);
                    log(&self.name, format_args!("{addr} inactive ({why}; {n} connections {})", match connections {
                        Departure::Reset => "reset",
                        Departure::Silent => "dropped silently",
                    }));
                }
            }
        }
        self.actions = actions;
        if let (Some(f), false) = (shared.node.detached(), self.detached_logged) {
            self.detached_logged = true;
            self.marks.clear();
            log(&self.name, format_args!(
                "left the cluster: its coupling region {} went bad: {f}; serving its own address {} alone (standalone stack). To rejoin: restart this stack (the first stack that starts replaces a stale region)",
                shared.node.config().region.display(),
                self.own
            ));
            log(&self.name, format_args!("rows ignored while in the cluster: {}", shared.node.invalid.summary()));
        }
        self.lease_ok = if shared.node.detached().is_some() {
            Instant::from_micros(u64::MAX / 4)
        } else {
            self.clock.instant_of(shared.node.lease_valid_until())
        };
    }

    /// Rows the node ignored, per reason (`--stats`).
    pub fn ignored_rows(&self) -> String {
        lock(&self.shared).node.invalid.summary()
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
                self.watches[slot] = None;
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
            }
        }
    }

    /// Leave the cluster (the process is stopping): backups take over configured DVIPAs, range
    /// DVIPAs activated here are released.
    pub fn leave(&mut self, now: Instant, stack: &mut Stack) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        let mut shared = lock(&self.shared);
        let mut out = Vec::new();
        shared.node.leave(self.clock.mono_ns(now), &mut out);
        for a in out {
            if let Action::Deactivate { addr, .. } = a {
                if let Some(h) = &shared.home {
                    let _ = h.remove(addr);
                }
                stack.remove_address(now, addr, stack::iface::Departure::Reset);
            }
        }
        log(&self.name, format_args!("left the cluster"));
    }
}

impl Cluster for StackCluster {
    fn route_inbound(&mut self, _now: Instant, _tuple: &Tuple, _syn: bool) -> InboundRoute {
        InboundRoute::Local
    }
    fn ephemeral_port(&mut self, now: Instant, local: Ipv4Addr, remote: SocketAddrV4, rng: &mut Rng) -> Option<u16> {
        SingleStack.ephemeral_port(now, local, remote, rng)
    }
    fn bind_address(&mut self, now: Instant, addr: Ipv4Addr) -> Option<u8> {
        let mut shared = lock(&self.shared);
        let name = shared.node.name().to_string();
        match shared.node.bind_activate(self.clock.mono_ns(now), addr) {
            Ok(prefix) => {
                if let Some(Err(e)) = shared.home.as_ref().map(|h| h.add(addr)) {
                    log(&name, format_args!("{e}"));
                }
                shared.bound.push(addr);
                Some(prefix)
            }
            Err(e) => {
                log(&name, format_args!("bind {addr}: {e}"));
                None
            }
        }
    }
    fn release_port(&mut self, _now: Instant, _local: SocketAddrV4) {}
    fn listener_opened(&mut self, _now: Instant, _local: SocketAddrV4) {}
    fn listener_closed(&mut self, _now: Instant, _local: SocketAddrV4) {}
    fn connection_opened(&mut self, _now: Instant, _tuple: &Tuple) {}
    fn connection_closed(&mut self, _now: Instant, _tuple: &Tuple) {}
}
