//! The poll thread: one per queue, pinned, driving one AF_XDP socket, one `Stack` shard and one
//! run-to-completion application.
//!
//! An iteration reads the clock once, receives a batch (through the frame tap), runs
//! due timers, hands socket events to the application, transmits what the stack has (batched;
//! the kernel is kicked only when it asks), and reaps completions. In busy-poll mode it never
//! sleeps; in adaptive mode it spins for a budget of idle iterations, then sleeps in poll(2) on
//! the socket's fd until a frame arrives or the next timer is due, so several stacks can share
//! two cores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use stack::iface::{Received, SocketEvent, SocketHandle, Stack};
use stack::time::{Duration, Instant};

use crate::clock::Clock;
use crate::shards::Origin;
use crate::tap::FrameTap;
use crate::xsk::Xsk;

/// Busy polling or spin-then-sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Never sleep (benchmarks: one core per poll thread).
    Busy,
    /// Spin for `spin` idle iterations, then sleep in poll(2) on the socket fd and the waker
    /// until a frame or a wake-up.
    Adaptive {
        /// Idle iterations before sleeping.
        spin: u32,
    },
}

impl std::str::FromStr for PollMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(PollMode::Busy),
            "adaptive" => Ok(PollMode::Adaptive { spin: 2000 }),
            _ => match s.strip_prefix("adaptive:").map(str::parse::<u32>) {
                Some(Ok(spin)) => Ok(PollMode::Adaptive { spin }),
                _ => Err(format!("unknown poll mode {s:?}: expected \"busy\", \"adaptive\" or \"adaptive:N\" (N idle turns before sleeping; adaptive is adaptive:2000)")),
            },
        }
    }
}

/// A run-to-completion application: its callbacks run on the poll thread.
///
/// # The event contract
///
/// The stack raises [`SocketEvent`]s; the runner hands each to [`App::event`] in the turn it
/// was raised (after the turn's received frames and timers, before its transmit), and again
/// for events the application's own calls raised. What they promise:
///
/// - **Events are edges, not levels.** `Readable` says new in-order data (or the peer's FIN)
///   arrived since the last one; it is not raised again for data already announced. On
///   `Readable`, read until `tcp_recv` returns `WouldBlock` (or 0: end of stream), or keep your
///   own note that data remains: nothing reminds you.
/// - **`Writable` only after a `WouldBlock`.** It is raised once room appears in a send buffer
///   that refused a `tcp_send` (the call returned `WouldBlock`, or took fewer bytes than
///   offered and the next call refused). A connection that never filled its buffer never sees
///   it.
/// - **`Acceptable` on a listener** means its accept queue is non-empty: call `tcp_accept`
///   until `WouldBlock`.
/// - **`Connected`** comes once, when the handshake completes; `PeerClosed` when the FIN
///   arrives (reads then drain what remains and return 0).
/// - **`Reset` and `TimedOut` come with `Closed`.** `Closed` means the connection reached
///   CLOSED: call [`Stack::release_closed`] (or `close`) to free its handle. A handle you
///   `close`d earlier is freed by the stack itself; events still raised for it on its way out
///   name a handle that is no longer valid (calls on it return `InvalidHandle`): ignore them.
/// - **`close` with unread data sends a RST** (RFC 2525 2.17, as Linux does); without, it is a
///   graceful FIN that completes without the application. To half-close and keep reading, use
///   `tcp_shutdown`.
/// - Callbacks must not block: they run on the poll thread, and every connection of the queue
///   waits for them.
pub trait App {
    /// Called once before the loop starts. An error (e.g. a port already taken) ends the
    /// loop before its first turn; [`Runner::run`] still tears down (cluster leave, last
    /// segments, capture flush) and returns the error.
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String>;
    /// A socket event.
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent);
    /// Called every iteration; returns true when it did work (keeps the loop awake).
    fn poll(&mut self, _now: Instant, _stack: &mut Stack) -> bool {
        false
    }
    /// The application is finished: the loop flushes and returns.
    fn done(&self) -> bool {
        false
    }
    /// Another stack of the cluster offers to move a live connection here (spec/04): an
    /// application that takes transferred connections (a *transfer listener*) accepts it;
    /// the default refuses.
    fn transfer_offer(&mut self, _now: Instant, _stack: &mut Stack, _offer: &crate::handoff::TransferOffer) -> crate::handoff::TransferDecision {
        crate::handoff::TransferDecision::Reject(crate::handoff::REJECT_NO_LISTENER)
    }
    /// A connection moved here (an accepted offer): `h`, established, with the state the
    /// source application sent along. Its unread bytes are there to read.
    fn transferred(&mut self, _now: Instant, _stack: &mut Stack, _h: SocketHandle, _app_state: &[u8]) {}
    /// What became of a transfer this application started ([`crate::handoff::transfer`]).
    fn transfer_done(&mut self, _now: Instant, _stack: &mut Stack, _id: coupling::handoff::TransferId, _outcome: crate::handoff::TransferOutcome) {}
    /// May the stack move connection `h` to another stack now (`plex ctl drain`)? An
    /// application that supports draining says yes where its own state for `h` can start over
    /// on the other stack (between requests, say); the default is no.
    fn may_move(&mut self, _stack: &Stack, _h: SocketHandle) -> bool {
        false
    }
    /// The stack moved connection `h` to another stack (a drain): forget it.
    fn moved_away(&mut self, _now: Instant, _stack: &mut Stack, _h: SocketHandle) {}
}

/// Hand the application what the cluster's handoff layer has for it: offers to decide,
/// connections that arrived, outcomes of its own transfers. Returns whether there was any.
pub fn dispatch_handoffs(now: Instant, stack: &mut Stack, app: &mut (impl App + ?Sized)) -> bool {
    let mut any = false;
    while let Some(offer) = crate::handoff::next_offer(stack) {
        any = true;
        let d = if offer.unconditional { crate::handoff::TransferDecision::Accept } else { app.transfer_offer(now, stack, &offer) };
        match d {
            crate::handoff::TransferDecision::Accept => {
                if let Some(h) = crate::handoff::accept(stack, now, &offer) {
                    app.transferred(now, stack, h, &offer.app_state);
                }
            }
            crate::handoff::TransferDecision::Reject(r) => crate::handoff::reject(stack, now, &offer, r),
        }
    }
    while let Some((id, outcome)) = crate::handoff::next_outcome(stack) {
        any = true;
        app.transfer_done(now, stack, id, outcome);
    }
    // A follower shard's connection whose transfer did not happen lives on here.
    while let Some(h) = crate::handoff::next_adopted(stack) {
        any = true;
        app.transferred(now, stack, h, &[]);
    }
    any
}

/// A boxed application (one chosen at run time) is an application.
impl<A: App + ?Sized> App for Box<A> {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        (**self).start(now, stack)
    }
    fn transfer_offer(&mut self, now: Instant, stack: &mut Stack, offer: &crate::handoff::TransferOffer) -> crate::handoff::TransferDecision {
        (**self).transfer_offer(now, stack, offer)
    }
    fn transferred(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, app_state: &[u8]) {
        (**self).transferred(now, stack, h, app_state)
    }
    fn transfer_done(&mut self, now: Instant, stack: &mut Stack, id: coupling::handoff::TransferId, outcome: crate::handoff::TransferOutcome) {
        (**self).transfer_done(now, stack, id, outcome)
    }
    fn may_move(&mut self, stack: &Stack, h: SocketHandle) -> bool {
        (**self).may_move(stack, h)
    }
    fn moved_away(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        (**self).moved_away(now, stack, h)
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        (**self).event(now, stack, h, ev)
    }
    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        (**self).poll(now, stack)
    }
    fn done(&self) -> bool {
        (**self).done()
    }
}

/// Per-thread counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Loop iterations.
    pub iterations: u64,
    /// Frames received from the AF_XDP socket.
    pub rx_frames: u64,
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Times the loop slept (adaptive mode).
    pub sleeps: u64,
    /// Frames the stack said belong to another stack of the cluster
    /// ([`stack::iface::Received::Forward`]) that could not be sent on: the target's MAC is
    /// unknown (it is not up) or this turn's forwarding slots were full.
    pub unforwarded: u64,
    /// Frames sent on to the stack of the cluster that owns their connection (the
    /// distributor's slow path: SYNs and flows not yet in the XDP fast path).
    pub forwarded: u64,
}

/// One poll thread's state: built with [`Runner::new`] and the `with_*` options, run with
/// [`Runner::run`], read afterwards through its accessors.
#[derive(Debug)]
pub struct Runner {
    xsk: Xsk,
    stack: Stack,
    tap: FrameTap,
    mode: PollMode,
    /// Frames per receive or transmit batch.
    batch: usize,
    stop: Arc<AtomicBool>,
    clock: Clock,
    stats: LoopStats,
    /// Woken by application threads (the blocking API) while the loop sleeps.
    waker: Option<Arc<crate::xsk::Waker>>,
    /// Membership of a plex cluster (heartbeat, fencing, DVIPAs), if the stack is in one.
    cluster: Option<crate::cluster::ClusterMember>,
    /// The time of the last turn that read the clock.
    now: Instant,
    /// Turns in a row that did nothing (the clock is read on every CLOCK_EVERY-th).
    idle_turns: u32,
    /// Frames on their way to another stack of the cluster.
    forwards: Forwards,
    /// The other shards of this process (queues of one interface), if it has several.
    shards: Option<crate::shards::ShardLink>,
}

/// Frames received this turn that go on to another stack of the cluster, their MACs already
/// rewritten, sent with this turn's transmit. The slots are allocated with the first one
/// (a stack outside a cluster never forwards): nothing is allocated per frame.
#[derive(Debug, Default)]
struct Forwards {
    buf: Vec<u8>,
    lens: Vec<usize>,
    /// Frames staged; the next to send.
    n: usize,
    sent: usize,
}

/// Frames one turn forwards at most (the rest are counted `unforwarded`; TCP retransmits).
const FORWARD_SLOTS: usize = 256;
/// Bytes of one forwarding slot: the largest frame the interface gives us.
const FORWARD_FRAME: usize = 4096;

impl Forwards {
    /// Stage `frame` for `target`, from `ours`: false when it does not fit.
    fn stage(&mut self, frame: &[u8], target: [u8; 6], ours: [u8; 6]) -> bool {
        if self.n == FORWARD_SLOTS || frame.len() > FORWARD_FRAME || frame.len() < 14 {
            return false;
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; FORWARD_SLOTS * FORWARD_FRAME];
            self.lens = vec![0; FORWARD_SLOTS];
        }
        let slot = &mut self.buf[self.n * FORWARD_FRAME..][..frame.len()];
        slot.copy_from_slice(frame);
        slot[0..6].copy_from_slice(&target);
        slot[6..12].copy_from_slice(&ours);
        self.lens[self.n] = frame.len();
        self.n += 1;
        true
    }

    /// The next staged frame into `out`; its length.
    fn next(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.sent == self.n {
            return None;
        }
        let len = self.lens[self.sent];
        if out.len() < len {
            return None;
        }
        out[..len].copy_from_slice(&self.buf[self.sent * FORWARD_FRAME..][..len]);
        self.sent += 1;
        Some(len)
    }
}

/// An idle turn reads the clock once in this many.
pub const CLOCK_EVERY: u32 = 8;
/// Receive batches a turn may take at most (see [`Runner::turn`]).
pub const RX_ROUNDS: usize = 4;

impl Runner {
    /// A poll loop over `xsk`, `stack` and `tap`, polling in `mode` until `stop` is set,
    /// with its own clock, batches of 64 frames, no waker and no cluster.
    pub fn new(xsk: Xsk, stack: Stack, tap: FrameTap, mode: PollMode, stop: Arc<AtomicBool>) -> Runner {
        let clock = Clock::default();
        let now = clock.now();
        Runner { xsk, stack, tap, mode, batch: 64, stop, clock, stats: LoopStats::default(), waker: None, cluster: None, now, idle_turns: 0, forwards: Forwards::default(), shards: None }
    }

    /// Read time from `clock` (a cluster member's clock must be the one its node was given).
    pub fn with_clock(mut self, clock: Clock) -> Runner {
        self.clock = clock;
        self.now = clock.now();
        self
    }

    /// Run as a member of a plex cluster (heartbeat, fencing, DVIPAs).
    pub fn with_cluster(mut self, member: crate::cluster::ClusterMember) -> Runner {
        self.cluster = Some(member);
        self
    }

    /// This stack is one shard of several in the process ([`crate::shards`]): segments of
    /// the others' connections are handed to them.
    pub fn with_shards(mut self, link: crate::shards::ShardLink) -> Runner {
        self.shards = Some(link);
        self
    }

    /// A cluster member's first turn, before any poll thread runs (the lead shard of a stack
    /// on several queues publishes the addresses the cluster gave it, for the followers'
    /// applications to bind at their start).
    pub(crate) fn prime(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.turn(self.clock.now(), &mut self.stack);
        }
    }

    /// The link to the other shards, if any (its counters).
    pub fn shards(&self) -> Option<&crate::shards::ShardLink> {
        self.shards.as_ref()
    }

    /// Frames per receive or transmit batch (at least 1).
    pub fn with_batch(mut self, frames: usize) -> Runner {
        self.batch = frames.max(1);
        self
    }

    /// Let application threads (the blocking API) wake the loop from adaptive mode's sleep.
    pub fn set_waker(&mut self, waker: Arc<crate::xsk::Waker>) {
        self.waker = Some(waker);
    }

    /// The loop's counters.
    pub fn stats(&self) -> LoopStats {
        self.stats
    }
    /// The stack shard this loop drives.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }
    /// The cluster member, when this loop's stack is one.
    pub fn cluster(&self) -> Option<&crate::cluster::ClusterMember> {
        self.cluster.as_ref()
    }
    /// The AF_XDP socket (its counters: [`Xsk::stats`], [`Xsk::kernel_stats`]).
    pub fn xsk(&self) -> &Xsk {
        &self.xsk
    }
    /// The frame tap (capture, fault injection) and its counters.
    pub fn tap(&self) -> &FrameTap {
        &self.tap
    }

    /// Pin the calling thread to `core` (if given and it exists).
    pub fn pin(core: Option<usize>) -> bool {
        let Some(id) = core else { return false };
        match core_affinity::get_core_ids() {
            Some(ids) if ids.iter().any(|c| c.id == id) => core_affinity::set_for_current(core_affinity::CoreId { id }),
            _ => false,
        }
    }

    /// One iteration; returns whether anything happened.
    ///
    /// The clock is read when the first frame of the turn is there, and otherwise only every
    /// [`CLOCK_EVERY`] idle turns: an idle turn is then little more than a look at the RX
    /// ring, so a frame that arrives waits less for the loop to come round. (The core's time
    /// has microsecond resolution; the cached time lags by a few idle turns at most.)
    pub fn turn(&mut self, app: &mut impl App) -> bool {
        self.stats.iterations += 1;
        let Runner { xsk, stack, tap, batch, cluster, clock, now: cached, idle_turns, stats, forwards, shards, .. } = self;

        // Before any frame: a stack whose lease lapsed (it was stalled) learns here whether it
        // was fenced, and drops the addresses it lost before it could answer for them. (A
        // cluster member reads the clock every turn, and the turn uses that reading.)
        let mut fresh = cluster.as_mut().map(|c| {
            let t = clock.now();
            c.turn(t, stack);
            t
        });
        // The other shards' connection events and (a cluster stack's follower) the lead's home
        // list; whether frames were handed over.
        let handed = shards.as_mut().is_some_and(|s| s.turn(stack));
        // A cluster stack's follower takes no frame while the lead's lease has lapsed (the
        // process was stalled: the lead learns at its next turn whether it was fenced).
        let take = match shards.as_mut() {
            Some(s) if s.is_follower() => s.lease_ok(clock.mono_ns(*fresh.get_or_insert_with(|| clock.now()))),
            _ => true,
        };
        let batch = *batch;
        let inbox = shards.as_ref().filter(|_| handed && take).map(|s| (s.set().clone(), s.me()));
        let (unforwarded, forwarded) = (&mut stats.unforwarded, &mut stats.forwarded);
        // The lead takes the connections its followers detached (a drain) before any segment
        // of theirs the followers handed over after them.
        let lead_set = shards.as_ref().filter(|s| s.is_lead()).map(|s| s.set().clone());
        let mut deliver = |now: Instant, g: &[u8], origin: Origin| {
            if let (Some(set), Origin::Shard { .. }) = (&lead_set, origin) {
                if set.sync.has_proxied() {
                    crate::handoff::offer_proxied(stack, now, set);
                }
            }
            match crate::shards::deliver(stack, shards.as_mut(), now, g, origin) {
                Received::Hold => crate::handoff::hold(stack, g),
                Received::Forward { stack: to } => {
                    let ours = stack.mac().0;
                    match crate::cluster::member_mac(stack, to, now) {
                        Some(target) if forwards.stage(g, target, ours) => *forwarded += 1,
                        _ => *unforwarded += 1,
                    }
                }
                Received::Consumed | Received::Dropped(_) | Received::Shard { .. } => {}
            }
        };
        // Frames other shards handed over (received before this turn's).
        if let Some((set, me)) = inbox {
            let now = *fresh.get_or_insert_with(|| clock.now());
            set.drain(me, |g, origin| deliver(now, g, origin));
        }
        // Receive up to RX_ROUNDS batches while the ring keeps delivering full ones, against
        // one kick's worth of transmit: under a flood every received frame may ask for an
        // answer (a cookie SYN-ACK), and answers cost more than receiving (in copy mode the
        // kernel runs the whole path to the peer inside our sendto). A turn that received as
        // much as it sent would leave the RX ring to the kernel's fill-ring-empty drops, which
        // fall on legitimate segments as much as on the flood; receiving first keeps the
        // legitimate ones, and the answers the link cannot take are dropped and counted in the
        // stack (`control_queue_full`).
        let mut rx = 0;
        for _ in 0..RX_ROUNDS {
            if !take {
                break;
            }
            let n = xsk.rx_batch(batch, |f| {
                let now = *fresh.get_or_insert_with(|| clock.now());
                tap.on_rx(now, f, &mut |g| deliver(now, g, Origin::Wire))
            });
            rx += n;
            if n < batch {
                break;
            }
        }
        let now = match fresh {
            Some(t) => t,
            None if *idle_turns % CLOCK_EVERY == 0 => clock.now(),
            None => *cached,
        };
        *cached = now;
        tap.release_due(now, &mut |g| deliver(now, g, Origin::Wire));
        if stack.poll_timeout().is_some_and(|t| t <= now) {
            stack.handle_timeout(now);
        }
        let mut busy = rx > 0 || handed;
        while let Some((h, ev)) = stack.poll_event() {
            app.event(now, stack, h, ev);
            busy = true;
        }
        if cluster.is_some() {
            if let Some(set) = &lead_set {
                busy |= crate::handoff::offer_proxied(stack, now, set);
            }
            busy |= dispatch_handoffs(now, stack, app);
            busy |= crate::handoff::drain_step(stack, now, app);
        } else if let Some(link) = shards.as_mut().filter(|s| s.is_follower()) {
            busy |= link.move_step(stack, now, clock.mono_ns(now), app);
        }
        busy |= app.poll(now, stack);
        // Events raised by the application's own calls (e.g. an immediate reset).
        while let Some((h, ev)) = stack.poll_event() {
            app.event(now, stack, h, ev);
        }
        // The process may have been stopped since `now` was read (SIGSTOP, preemption): a
        // cluster member checks its lease again with a fresh clock before anything leaves.
        if let Some(c) = cluster.as_mut() {
            c.turn(clock.now(), stack);
            // Segments held while a connection moved, now for its new stack.
            while let Some((to, f)) = crate::handoff::next_forward(stack) {
                let ours = stack.mac().0;
                match crate::cluster::member_mac(stack, to as u32, now) {
                    Some(target) if forwards.stage(&f, target, ours) => stats.forwarded += 1,
                    _ => stats.unforwarded += 1,
                }
            }
        }
        // Queue what the stack has, up to one kick's worth, then kick once: in copy mode every
        // kick is a sendto that moves at most the socket's TX budget. Frames forwarded to other
        // stacks go first (they were received first).
        let budget = (xsk.tx_budget() as usize).max(batch);
        let mut tx = 0;
        while forwards.sent < forwards.n {
            let n = xsk.tx_fill(forwards.n - forwards.sent, |buf| {
                let n = forwards.next(buf)?;
                tap.on_tx(now, &buf[..n]);
                Some(n)
            });
            tx += n;
            if n == 0 {
                // No TX room: the rest are lost (counted), as a full NIC ring drops.
                stats.unforwarded += (forwards.n - forwards.sent) as u64;
                stats.forwarded -= (forwards.n - forwards.sent) as u64;
                break;
            }
        }
        forwards.n = 0;
        forwards.sent = 0;
        while tx < budget && stack.may_transmit() {
            let n = xsk.tx_fill(batch.min(budget - tx), |buf| {
                let n = stack.poll_transmit(now, buf)?;
                tap.on_tx(now, &buf[..n]);
                Some(n)
            });
            tx += n;
            if n < batch {
                break;
            }
        }
        if tx > 0 || xsk.in_tx() > 0 {
            xsk.kick_if_needed();
        }
        xsk.reap();
        self.stats.rx_frames += rx as u64;
        self.stats.tx_frames += tx as u64;
        let busy = busy || tx > 0;
        self.idle_turns = if busy { 0 } else { self.idle_turns.wrapping_add(1) };
        if let Some(c) = self.cluster.as_mut() {
            c.note_turn(busy);
        }
        busy
    }

    /// Run until the stop flag is set or the application is done; the application's start
    /// error, if it had one (the loop then sets the stop flag, so the other poll threads of
    /// the process stop too, and tears down as after a normal run).
    pub fn run(&mut self, app: &mut impl App) -> Result<(), String> {
        let started = self.begin(app);
        let mut idle = 0u32;
        while started.is_ok() && !self.stop.load(Ordering::Relaxed) && !app.done() {
            if self.turn(app) {
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            if let PollMode::Adaptive { spin } = self.mode {
                if idle > spin {
                    idle = 0;
                    // Arm the waker, then look once more: work that came before the arm is
                    // seen by this turn, work after it writes the eventfd (xsk::Waker).
                    if let Some(w) = self.waker.clone() {
                        w.arm();
                        if self.stop.load(Ordering::Relaxed) || self.turn(app) {
                            w.disarm();
                            continue;
                        }
                    }
                    self.sleep();
                    if let Some(w) = &self.waker {
                        w.disarm();
                    }
                }
            }
        }
        self.finish(app);
        started
    }

    /// Before the application's first turn: the cluster's and the lead shard's state, then
    /// the application's start (its error sets the stop flag).
    pub(crate) fn begin(&mut self, app: &mut impl App) -> Result<(), String> {
        let now = self.clock.now();
        if let Some(c) = self.cluster.as_mut() {
            // A cluster member's first turn before the application starts: the addresses the
            // cluster gives this stack at once (DVIPAs it holds, distributed DVIPAs it is a
            // target of) are there when the application binds or connects from them.
            c.turn(now, &mut self.stack);
        }
        // A cluster stack's follower shard: the lead's addresses (it made its first turn before
        // any poll thread started).
        if let Some(s) = self.shards.as_mut() {
            s.turn(&mut self.stack);
        }
        let started = app.start(now, &mut self.stack);
        if started.is_err() {
            self.stop.store(true, Ordering::Relaxed);
        }
        started
    }

    /// After the last turn: leave the cluster, let the last segments go out, flush the tap.
    pub(crate) fn finish(&mut self, app: &mut impl App) {
        if let Some(mut c) = self.cluster.take() {
            let now = self.clock.now();
            c.leave(now, &mut self.stack);
            self.cluster = Some(c);
        }
        // Let the last segments (FINs, ACKs) go out.
        for _ in 0..100 {
            if !self.turn(app) {
                break;
            }
        }
        self.tap.flush();
    }

    /// The stop flag is set.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The poll mode.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn mode(&self) -> PollMode {
        self.mode
    }

    /// The waker application threads wake this loop with, if it has one.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn waker(&self) -> Option<&Arc<crate::xsk::Waker>> {
        self.waker.as_ref()
    }

    /// How long the loop may sleep: until the stack's, the tap's or the cluster's next
    /// deadline, at most 10 ms (so the stop flag is seen); `None`: not at all.
    pub(crate) fn sleep_for(&self) -> Option<std::time::Duration> {
        let now = self.clock.now();
        let cluster = self.cluster.as_ref().map(|c| c.next_deadline());
        let next = [self.stack.poll_timeout(), self.tap.next_due(), cluster].into_iter().flatten().min();
        let max = Duration::from_millis(10);
        let wait = next.map(|t| t.saturating_since(now)).unwrap_or(max).min(max);
        let ms = wait.total_micros().div_ceil(1000);
        (ms > 0).then(|| std::time::Duration::from_millis(ms))
    }

    /// The loop slept (time passed: the next turn reads the clock).
    pub(crate) fn slept(&mut self) {
        self.stats.sleeps += 1;
        self.idle_turns = 0;
    }

    /// Sleep on the socket fd until a frame arrives or the next deadline (at most 10 ms, so
    /// the stop flag is seen).
    fn sleep(&mut self) {
        let Some(wait) = self.sleep_for() else { return };
        self.xsk.wait(wait.as_millis() as i32, self.waker.as_deref());
        self.slept();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_frames_keep_their_bytes_and_get_the_target_and_our_mac() {
        let mut f = Forwards::default();
        let frame: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        assert!(f.stage(&frame, [2, 0, 0, 0, 0, 12], [2, 0, 0, 0, 0, 11]));
        assert!(!f.stage(&frame[..10], [2; 6], [2; 6]), "shorter than an Ethernet header");
        let mut out = vec![0u8; 2048];
        let n = f.next(&mut out).unwrap();
        assert_eq!(n, 600);
        assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 12]);
        assert_eq!(&out[6..12], &[2, 0, 0, 0, 0, 11]);
        assert_eq!(&out[12..600], &frame[12..]);
        assert_eq!(f.next(&mut out), None);
    }

    #[test]
    fn forwarding_slots_are_bounded() {
        let mut f = Forwards::default();
        let frame = [0u8; 64];
        for _ in 0..FORWARD_SLOTS {
            assert!(f.stage(&frame, [2; 6], [4; 6]));
        }
        assert!(!f.stage(&frame, [2; 6], [4; 6]), "full: the caller counts it unforwarded");
        assert!(!Forwards::default().stage(&[0u8; FORWARD_FRAME + 1], [2; 6], [4; 6]));
    }
}
