//! The deterministic network simulator: plex's default integration test.
//!
//! Any number of [`Host`]s (plex stacks, or test doubles) hang off one simulated L2 segment, a
//! learning switch, each through its own full-duplex port. A port impairs what crosses it, in
//! each direction separately ([`LinkConfig`]): delay and jitter, loss, duplication, corruption,
//! reordering, a bandwidth with a FIFO queue and a queue limit, and an MTU. Time does not pass
//! by itself: the simulator jumps to the next event (a frame arriving, a host's timer), so a
//! minute of simulated TCP takes milliseconds, and a run is a pure function of the seed and the
//! configuration: same seed, same frames, same pcap bytes.
//!
//! Randomness: each port direction draws from its own stream, derived from the seed and the
//! port's index, so adding a host does not change the random choices of the others.
//!
//! Capture: with [`Sim::capture`] on, every frame delivered to a host is recorded with its
//! arrival time; [`Sim::write_pcap`] writes them as a pcap file (tcpdump and Wireshark read it).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::Write;

use crate::pcap::{PcapWriter, LINKTYPE_ETHERNET};
use crate::rand::Rng;
use crate::time::{Duration, Instant};

/// Something that sends and receives Ethernet frames and keeps time-driven state: a plex stack
/// implements it, and so do the simulator's own test doubles.
pub trait Host {
    /// One Ethernet frame (no FCS) arrives at `now`.
    fn receive(&mut self, now: Instant, frame: &[u8]);
    /// Write the next outbound frame into `buf`; its length, or `None` when nothing is pending.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize>;
    /// Earliest instant at which the host needs `handle_timeout`.
    fn poll_timeout(&mut self) -> Option<Instant>;
    /// Run the timers due at `now` (called once `now` has reached [`Host::poll_timeout`]).
    fn handle_timeout(&mut self, now: Instant);
}

impl Host for crate::iface::Stack {
    fn receive(&mut self, now: Instant, frame: &[u8]) {
        // The simulated hosts are separate machines: nothing is forwarded between them.
        crate::iface::Stack::receive(self, now, frame);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        crate::iface::Stack::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        crate::iface::Stack::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        crate::iface::Stack::handle_timeout(self, now)
    }
}

/// Impairments of one direction of a port.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..jitter` per frame (frames may overtake).
    pub jitter: Duration,
    /// Probability a frame is lost.
    pub loss: f64,
    /// Probability a frame is delivered twice.
    pub duplicate: f64,
    /// Probability 1..=3 bits of one random byte after the Ethernet header flip. A frame is
    /// corrupted at most once end to end (see [`Sim`]).
    pub corrupt: f64,
    /// Probability a frame is held back by `reorder_delay` (later frames overtake it).
    pub reorder: f64,
    /// How long a frame picked by `reorder` is held back, on top of `delay` and jitter.
    pub reorder_delay: Duration,
    /// Serialization rate; `None` is infinitely fast.
    pub bandwidth_bps: Option<u64>,
    /// Frames waiting for the serializer; more are tail-dropped.
    pub queue_limit: Option<usize>,
    /// IP MTU: a larger frame (minus its 14-byte Ethernet header) is dropped.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::from_micros(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            bandwidth_bps: None,
            queue_limit: None,
            mtu: 1500,
        }
    }
}

impl LinkConfig {
    /// The default link, losing each frame with probability `loss`.
    pub fn lossy(loss: f64) -> Self {
        LinkConfig { loss, ..Self::default() }
    }
    /// This link with a fixed one-way delay of `d`.
    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// This link serialized at `bps` bits per second, with at most `queue_limit` frames waiting.
    pub fn with_bandwidth(mut self, bps: u64, queue_limit: usize) -> Self {
        self.bandwidth_bps = Some(bps);
        self.queue_limit = Some(queue_limit);
        self
    }
}

/// Identifies a host (and its port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub usize);

/// What happened to frames, per port direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames that entered this direction (lost, dropped or delivered).
    pub frames: u64,
    /// Their bytes (Ethernet header included, no FCS).
    pub bytes: u64,
    /// Frames lost at random (`loss`).
    pub lost: u64,
    /// Frames delivered twice (`duplicate`).
    pub duplicated: u64,
    /// Frames damaged (`corrupt`).
    pub corrupted: u64,
    /// Frames held back (`reorder`).
    pub reordered: u64,
    /// Frames tail-dropped because the serializer's queue was full.
    pub queue_dropped: u64,
    /// Frames dropped because they exceeded the MTU.
    pub mtu_dropped: u64,
}

impl LinkStats {
    fn add(&mut self, o: &LinkStats) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
        self.reordered += o.reordered;
        self.queue_dropped += o.queue_dropped;
        self.mtu_dropped += o.mtu_dropped;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
/// What happened on the segment since the simulator was created.
pub struct SimStats {
    /// Per host: its uplink (frames it sent) and downlink (frames sent to it).
    pub uplink: Vec<LinkStats>,
    /// Per host: its downlink (frames sent to it), indexed like `uplink`.
    pub downlink: Vec<LinkStats>,
    /// Frames flooded because the destination was unknown or broadcast.
    pub flooded: u64,
    /// Events processed (frames reaching the switch or a host).
    pub events: u64,
}

impl SimStats {
    /// The sum over every port direction, uplinks and downlinks (a frame crossing the switch is
    /// counted on both).
    pub fn total(&self) -> LinkStats {
        let mut t = LinkStats::default();
        for s in self.uplink.iter().chain(&self.downlink) {
            t.add(s);
        }
        t
    }
}

#[derive(Debug)]
struct Direction {
    cfg: LinkConfig,
    rng: Rng,
    /// When the serializer is free.
    busy_until: Instant,
    /// Departure times of frames queued for the serializer.
    queue: VecDeque<Instant>,
}

impl Direction {
    fn new(cfg: LinkConfig, seed: u64) -> Direction {
        Direction { cfg, rng: Rng::new(seed), busy_until: Instant::ZERO, queue: VecDeque::new() }
    }

    /// Impair a frame entering this direction at `now`: the arrival times of its copies.
    /// `corrupted` says whether an earlier hop already damaged it, and becomes true when this
    /// one does: a frame is damaged at most once end to end, as on real links, where every
    /// hop's CRC discards a damaged frame, so the only damage a receiver ever sees is one
    /// burst (which the Internet checksum always detects). Two bursts, on two hops, can
    /// cancel in a ones'-complement sum: a simulator that made them would report stack bugs
    /// that are not.
    fn transit(
        &mut self,
        now: Instant,
        frame: &mut [u8],
        corrupted: &mut bool,
        stats: &mut LinkStats,
        out: &mut [Option<Instant>; 2],
    ) {
        *out = [None, None];
        stats.frames += 1;
        stats.bytes += frame.len() as u64;
        if frame.len() > self.cfg.mtu + 14 {
            stats.mtu_dropped += 1;
            return;
        }
        let mut depart = now;
        if let Some(bps) = self.cfg.bandwidth_bps {
            while self.queue.front().is_some_and(|&d| d <= now) {
                self.queue.pop_front();
            }
            if self.cfg.queue_limit.is_some_and(|l| self.queue.len() >= l) {
                stats.queue_dropped += 1;
                return;
            }
            let ser = Duration::from_micros((frame.len() as u64 * 8 * 1_000_000).div_ceil(bps.max(1)));
            depart = self.busy_until.max(now) + ser;
            self.busy_until = depart;
            self.queue.push_back(depart);
        }
        if self.rng.chance(self.cfg.loss) {
            stats.lost += 1;
            return;
        }
        // The draw is made whether or not the frame may still be damaged, so that sparing an
        // already damaged frame does not shift the random choices of every later frame.
        if frame.len() > 14 && self.rng.chance(self.cfg.corrupt) && !*corrupted {
            *corrupted = true;
            stats.corrupted += 1;
            // A burst inside one byte: the Internet checksum detects every such error, so a
            // transfer must still be byte-exact. (Flips spread over several 16-bit words can
            // cancel out in a ones'-complement sum; no TCP detects those.)
            let i = 14 + self.rng.below((frame.len() - 14) as u64) as usize;
            let mut mask = 0u8;
            while mask == 0 {
                let flips = 1 + self.rng.below(3);
                for _ in 0..flips {
                    mask ^= 1 << self.rng.below(8);
                }
            }
            frame[i] ^= mask;
        }
        let mut delay = self.cfg.delay;
        if self.cfg.jitter > Duration::ZERO {
            delay = delay + Duration::from_micros(self.rng.below(self.cfg.jitter.total_micros()));
        }
        if self.rng.chance(self.cfg.reorder) {
            stats.reordered += 1;
            delay = delay + self.cfg.reorder_delay;
        }
        out[0] = Some(depart + delay);
        if self.rng.chance(self.cfg.duplicate) {
            stats.duplicated += 1;
            out[1] = Some(depart + delay + Duration::from_micros(1));
        }
    }
}

#[derive(Debug)]
enum Event {
    /// A frame reaches the switch from a port (`corrupted`: damaged on the uplink).
    AtSwitch { from: usize, frame: Vec<u8>, corrupted: bool },
    /// A frame reaches a host.
    Deliver { to: usize, frame: Vec<u8> },
}

struct Port<H> {
    host: H,
    up: Direction,
    down: Direction,
}

/// The simulated segment.
pub struct Sim<H: Host> {
    seed: u64,
    now: Instant,
    ports: Vec<Port<H>>,
    events: BinaryHeap<Reverse<(Instant, u64)>>,
    payloads: HashMap<u64, Event>,
    next_seq: u64,
    macs: HashMap<[u8; 6], usize>,
    stats: SimStats,
    capture: Option<Vec<(Instant, Vec<u8>)>>,
    buf: Vec<u8>,
    /// Frames a host may emit per drain (a buggy host cannot hang the simulator).
    pub max_burst: usize,
}

impl<H: Host> core::fmt::Debug for Sim<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sim").field("seed", &self.seed).field("now", &self.now).field("hosts", &self.ports.len()).finish()
    }
}

impl<H: Host> Sim<H> {
    /// An empty segment whose random choices all derive from `seed`; time starts at zero.
    pub fn new(seed: u64) -> Self {
        Sim {
            seed,
            now: Instant::ZERO,
            ports: Vec::new(),
            events: BinaryHeap::new(),
            payloads: HashMap::new(),
            next_seq: 0,
            macs: HashMap::new(),
            stats: SimStats::default(),
            capture: None,
            buf: vec![0u8; 65536 + 14],
            max_burst: 100_000,
        }
    }

    /// The seed the simulator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }
    /// What happened to frames so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Attach a host through its own port; `uplink` impairs what it sends, `downlink` what it
    /// receives.
    pub fn add_host(&mut self, host: H, uplink: LinkConfig, downlink: LinkConfig) -> HostId {
        let i = self.ports.len();
        let base = self.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.ports.push(Port {
            host,
            up: Direction::new(uplink, base),
            down: Direction::new(downlink, base.rotate_left(17) ^ 0x5555),
        });
        self.stats.uplink.push(LinkStats::default());
        self.stats.downlink.push(LinkStats::default());
        HostId(i)
    }

    /// The host attached as `id`.
    pub fn host(&self, id: HostId) -> &H {
        &self.ports[id.0].host
    }
    /// The host attached as `id`, to call into (then [`Sim::kick`] or step).
    pub fn host_mut(&mut self, id: HostId) -> &mut H {
        &mut self.ports[id.0].host
    }
    /// Change a port's impairments mid-run.
    pub fn set_links(&mut self, id: HostId, uplink: LinkConfig, downlink: LinkConfig) {
        self.ports[id.0].up.cfg = uplink;
        self.ports[id.0].down.cfg = downlink;
    }

    /// Record every frame delivered to a host from now on (`true`), or stop and discard the
    /// recording (`false`).
    pub fn capture(&mut self, enable: bool) {
        if enable {
            self.capture.get_or_insert_with(Vec::new);
        } else {
            self.capture = None;
        }
    }

    /// Write the recorded frames as a pcap file, with their simulated arrival times as timestamps
    /// (empty when capture is off).
    pub fn write_pcap(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut w = PcapWriter::new(out, LINKTYPE_ETHERNET)?;
        for (t, f) in self.capture.iter().flatten() {
            w.write_packet(*t, f)?;
        }
        Ok(())
    }

    fn schedule(&mut self, at: Instant, ev: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push(Reverse((at, seq)));
        self.payloads.insert(seq, ev);
    }

    /// Send everything host `i` has to send now.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        for _ in 0..self.max_burst {
            let Some(n) = self.ports[i].host.poll_transmit(now, &mut self.buf) else { break };
            let n = n.min(self.buf.len());
            let mut frame = self.buf[..n].to_vec();
            let mut arrivals = [None, None];
            let mut corrupted = false;
            let port = &mut self.ports[i];
            port.up.transit(now, &mut frame, &mut corrupted, &mut self.stats.uplink[i], &mut arrivals);
            for at in arrivals.into_iter().flatten() {
                self.schedule(at, Event::AtSwitch { from: i, frame: frame.clone(), corrupted });
            }
        }
    }

    /// Nothing left to happen: no frame in flight, no host with a timer or a frame to send.
    /// A run that goes idle before its goal is met has a stuck socket somewhere.
    pub fn is_idle(&mut self) -> bool {
        self.kick();
        self.next_event_time().is_none()
    }

    /// Drain every host's transmit queue (after the test called into a host directly).
    pub fn kick(&mut self) {
        for i in 0..self.ports.len() {
            self.drain(i);
        }
    }

    fn next_event_time(&mut self) -> Option<Instant> {
        let ev = self.events.peek().map(|Reverse((t, _))| *t);
        let timers = self.ports.iter_mut().filter_map(|p| p.host.poll_timeout()).min();
        match (ev, timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn switch(&mut self, from: usize, frame: Vec<u8>, corrupted: bool) {
        let mut dst = [0u8; 6];
        if frame.len() >= 12 {
            dst.copy_from_slice(&frame[..6]);
            // Learn the source MAC on arrival, as a switch does.
            let mut src = [0u8; 6];
            src.copy_from_slice(&frame[6..12]);
            if src[0] & 1 == 0 {
                self.macs.insert(src, from);
            }
        }
        let target = if dst[0] & 1 == 0 { self.macs.get(&dst).copied() } else { None };
        let now = self.now;
        let deliver = |sim: &mut Self, to: usize, mut f: Vec<u8>| {
            let mut arrivals = [None, None];
            let mut corrupted = corrupted;
            let port = &mut sim.ports[to];
            port.down.transit(now, &mut f, &mut corrupted, &mut sim.stats.downlink[to], &mut arrivals);
            for at in arrivals.into_iter().flatten() {
                sim.schedule(at, Event::Deliver { to, frame: f.clone() });
            }
        };
        match target {
            Some(to) if to != from => deliver(self, to, frame),
            Some(_) => {}
            None => {
                self.stats.flooded += 1;
                for to in 0..self.ports.len() {
                    if to != from {
                        deliver(self, to, frame.clone());
                    }
                }
            }
        }
    }

    /// Advance to the next event time and process everything due then. False when nothing is
    /// left to do.
    pub fn step(&mut self) -> bool {
        self.kick();
        let Some(t) = self.next_event_time() else { return false };
        if t > self.now {
            self.now = t;
        }
        while let Some(&Reverse((at, seq))) = self.events.peek() {
            if at > self.now {
                break;
            }
            self.events.pop();
            self.stats.events += 1;
            match self.payloads.remove(&seq) {
                Some(Event::AtSwitch { from, frame, corrupted }) => self.switch(from, frame, corrupted),
                Some(Event::Deliver { to, frame }) => {
                    if let Some(c) = &mut self.capture {
                        c.push((self.now, frame.clone()));
                    }
                    self.ports[to].host.receive(self.now, &frame);
                    self.drain(to);
                }
                None => {}
            }
        }
        let now = self.now;
        for i in 0..self.ports.len() {
            if self.ports[i].host.poll_timeout().is_some_and(|t| t <= now) {
                self.ports[i].host.handle_timeout(now);
            }
            self.drain(i);
        }
        true
    }

    /// Step until `done` holds (checked after every step) or time passes `deadline`. Returns
    /// whether `done` held.
    pub fn run_until(&mut self, deadline: Instant, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if self.now > deadline {
                return false;
            }
            let next = self.next_event_time();
            if next.is_none_or(|t| t > deadline) {
                self.kick();
                if self.next_event_time().is_none_or(|t| t > deadline) {
                    self.now = self.now.max(deadline);
                    return done(self);
                }
            }
            if !self.step() {
                return done(self);
            }
        }
    }

    /// Run for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end, |_| false);
    }
}

#[cfg(test)]
mod tests;
