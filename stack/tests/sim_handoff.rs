//! The handoff property test (a connection moved between stacks must look, to its peer, as if
//! it had never moved): at random points of random bidirectional transfers
//! over a lossy link, snapshot the server's connection, restore it into a fresh stack (same
//! address, same port on the segment), and continue. Both byte streams must arrive exactly as
//! without the move, and the client must never see a RST, data outside the window it
//! advertised, or a TSval going backwards. Every run moves the connection at least once (the
//! server closes its direction only after the first move, so the connection is still
//! movable when the first scheduled move comes).
//!
//! The target stack is built with the giver's TCP config, as a cluster's stacks are; a second
//! test restores into stacks configured differently (restore adapts: `Connection::restore`).

#![allow(clippy::unwrap_used)]

mod support;

use stack::iface::Stack;
use stack::rand::Rng;
use stack::sim::{Host, LinkConfig, Sim};
use stack::tcp::{self, Algorithm};
use stack::time::{Duration, Instant};
use stack::wire::{EthernetFrame, Ipv4Packet, Ipv4Repr, SeqNumber, TcpControl, TcpPacket, TcpRepr};
use support::{new_stack, pattern, seeds, Stream, CLIENT_IP, PORT, SERVER_IP};

/// A stack with a wire tap: checks what the client receives against what it advertised.
struct Tapped {
    stack: Stack,
    /// Only the client checks.
    check: bool,
    /// Highest right edge of the receive window the client advertised.
    adv_edge: Option<SeqNumber>,
    rcv_wscale: u8,
    last_peer_tsval: Option<u32>,
    violations: Vec<String>,
    rsts_seen: u64,
}

impl Tapped {
    fn new(stack: Stack, check: bool) -> Tapped {
        Tapped { stack, check, adv_edge: None, rcv_wscale: 0, last_peer_tsval: None, violations: vec![], rsts_seen: 0 }
    }
}

fn tcp_of(frame: &[u8]) -> Option<(Ipv4Repr, TcpRepr<'_>)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ipp = Ipv4Packet::new_checked(eth.into_inner().get(14..)?).ok()?;
    let ip = Ipv4Repr::parse(&ipp, true).ok()?;
    let body: &[u8] = &frame[14 + ipp.header_len()..14 + ipp.total_len() as usize];
    let tp = TcpPacket::new_checked(body).ok()?;
    let tcp = TcpRepr::parse(&tp, ip.src_addr, ip.dst_addr, true).ok()?;
    Some((ip, tcp))
}

impl Host for Tapped {
    fn receive(&mut self, now: Instant, frame: &[u8]) {
        if self.check {
            if let Some((_, seg)) = tcp_of(frame) {
                if seg.control == TcpControl::Rst {
                    self.rsts_seen += 1;
                    self.violations.push(format!("{now:?}: RST received"));
                }
                if let (Some(edge), false) = (self.adv_edge, seg.payload.is_empty()) {
                    let end = seg.seq_number + seg.payload.len();
                    if end > edge {
                        self.violations.push(format!("{now:?}: data to {end} beyond the advertised edge {edge}"));
                    }
                }
            }
        }
        self.stack.receive(now, frame);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let n = self.stack.poll_transmit(now, buf)?;
        if !self.check {
            // The server side (whichever stack holds the connection now): the TSvals it sends
            // never go backwards, across handoffs too. (Checked where they are sent: a
            // reordering link delivers older TSvals late, which is no fault of the sender.)
            if let Some((_, seg)) = tcp_of(&buf[..n]) {
                if let Some(ts) = seg.timestamp {
                    if let Some(prev) = self.last_peer_tsval {
                        if (ts.tsval.wrapping_sub(prev) as i32) < 0 {
                            self.violations.push(format!("{now:?}: sent TSval went back from {prev} to {}", ts.tsval));
                        }
                    }
                    self.last_peer_tsval = Some(ts.tsval);
                }
            }
        }
        if self.check {
            if let Some((_, seg)) = tcp_of(&buf[..n]) {
                if seg.control == TcpControl::Syn {
                    self.rcv_wscale = seg.window_scale.unwrap_or(0);
                } else if let Some(ack) = seg.ack_number {
                    let edge = ack + ((seg.window_len as usize) << self.rcv_wscale);
                    if self.adv_edge.is_none_or(|e| edge > e) {
                        self.adv_edge = Some(edge);
                    }
                }
            }
        }
        Some(n)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.stack.poll_timeout()
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.stack.handle_timeout(now)
    }
}

/// The TCP config of the stacks a connection moves to.
#[derive(Clone, Copy)]
enum Target {
    /// The giver's (a cluster's stacks share one config).
    SameAsSource,
    /// `tcp::Config::default()`: what a target with its own config would have.
    Default,
    /// NewReno, small buffers, no SACK or timestamps offered, a longer RTO floor.
    Different,
}

fn run(seed: u64, target: Target) -> u64 {
    let mut rng = Rng::new(seed);
    let tcp = tcp::Config {
        congestion: if rng.below(2) == 0 { Algorithm::Cubic } else { Algorithm::NewReno },
        send_buffer: [16 * 1024, 64 * 1024, 256 * 1024][rng.below(3) as usize],
        recv_buffer: [16 * 1024, 64 * 1024, 256 * 1024][rng.below(3) as usize],
        sack: rng.below(4) != 0,
        timestamps: rng.below(4) != 0,
        ..tcp::Config::default()
    };
    let link = LinkConfig {
        delay: Duration::from_micros(200 + rng.below(2000)),
        loss: [0.0, 0.01, 0.03][rng.below(3) as usize],
        reorder: 0.02,
        reorder_delay: Duration::from_millis(1),
        bandwidth_bps: Some(50_000_000),
        queue_limit: Some(200),
        ..LinkConfig::default()
    };
    let mut sim: Sim<Tapped> = Sim::new(seed);
    let server = sim.add_host(Tapped::new(new_stack(10, SERVER_IP, seed ^ 1, &tcp), false), link.clone(), link.clone());
    let client = sim.add_host(Tapped::new(new_stack(1, CLIENT_IP, seed ^ 2, &tcp), true), link.clone(), link.clone());

    let l = sim.host_mut(server).stack.tcp_listen(Instant::ZERO, std::net::SocketAddrV4::new(SERVER_IP, PORT), 8).unwrap();
    let mut c = sim.host_mut(client).stack.tcp_connect(Instant::ZERO, None, std::net::SocketAddrV4::new(SERVER_IP, PORT)).unwrap();
    let mut s = None;
    assert!(sim.run_until(Instant::from_secs(30), |sim| {
        s = s.or_else(|| sim.host_mut(server).stack.tcp_accept(l).ok());
        s.is_some()
    }));
    let mut s = s.unwrap();
    let up_total = 200_000 + rng.below(400_000);
    let down_total = 200_000 + rng.below(400_000);
    let mut up = Stream::new(up_total);
    let mut down = Stream::new(down_total);
    // Handoff times: a few random points in the first part of the transfer.
    let mut moves: Vec<u64> = (0..1 + rng.below(3)).map(|_| 5 + rng.below(400)).collect();
    moves.sort();
    let mut steps = 0u64;
    let mut handoffs = 0;
    let deadline = sim.now() + Duration::from_secs(600);
    let done = sim.run_until(deadline, |sim| {
        let now = sim.now();
        steps += 1;
        // A move that is due waits until the connection can move (ESTABLISHED or CLOSE-WAIT).
        let state = sim.host(server).stack.tcp(s).map(|c| c.state());
        let movable = matches!(state, Some(tcp::State::Established | tcp::State::CloseWait));
        if movable && moves.first().is_some_and(|&m| steps >= m) {
            moves.remove(0);
            let rec = sim.host_mut(server).stack.tcp_snapshot(now, s, 1, b"ctx").expect("snapshot");
            let target_tcp = match target {
                Target::SameAsSource => tcp.clone(),
                Target::Default => tcp::Config::default(),
                Target::Different => tcp::Config {
                    congestion: Algorithm::NewReno,
                    send_buffer: 8 * 1024,
                    recv_buffer: 8 * 1024,
                    sack: false,
                    timestamps: false,
                    min_rto: Duration::from_millis(500),
                    ..tcp::Config::default()
                },
            };
            let mut fresh = new_stack(10, SERVER_IP, seed ^ (100 + handoffs), &target_tcp);
            let (h, snap) = fresh.tcp_restore(now, &rec).expect("restore");
            assert_eq!(snap.app_state, b"ctx");
            // The fresh stack has never seen the client: it learns its MAC from ARP, as a
            // real target would (or from the record's cluster layer).
            sim.host_mut(server).stack = fresh;
            s = h;
            handoffs += 1;
        }
        up.push(now, &mut sim.host_mut(client).stack, c, true);
        up.pull(now, &mut sim.host_mut(server).stack, s);
        // The server closes its direction (leaving ESTABLISHED / CLOSE-WAIT, where a
        // connection can no longer move) only once it has moved.
        down.push(now, &mut sim.host_mut(server).stack, s, handoffs > 0);
        down.pull(now, &mut sim.host_mut(client).stack, c);
        sim.kick();
        up.received == up_total && down.received == down_total
    });
    let v: Vec<String> = sim.host(client).violations.iter().chain(&sim.host(server).violations).cloned().collect();
    if !done || !v.is_empty() {
        eprintln!("handoff run failed: PLEX_SIM_SEED={seed} reproduces it; {handoffs} handoffs; up {}/{up_total} down {}/{down_total}", up.received, down.received);
        for x in v.iter().take(10) {
            eprintln!("  {x}");
        }
        panic!("handoff property violated (seed {seed})");
    }
    let cc = sim.host(client).stack.tcp(c).expect("client conn");
    assert_eq!(cc.error(), None, "client connection saw an error");
    assert!(handoffs >= 1, "seed {seed}: the connection never moved: the run tested nothing");
    let _ = (&mut c, pattern(0));
    handoffs
}

#[test]
fn handoff_preserves_both_streams_under_loss() {
    let seeds = seeds(&(1..=24).collect::<Vec<u64>>());
    let moved: u64 = seeds.iter().map(|&s| run(s, Target::SameAsSource)).sum();
    // The property must actually have been exercised.
    assert!(moved >= seeds.len() as u64, "only {moved} handoffs in {} runs", seeds.len());
    eprintln!("{moved} handoffs over {} runs", seeds.len());
}

/// Seeds that failed once, run by default. 1077 and 1210: the server-to-client stream stalled
/// after a move: the client's window update was lost while the server had a small non-zero
/// window (456 bytes) and nothing in flight, and no timer covered that case (the persist
/// timer only ran for a zero window): RFC 9293 3.8.6.2.1's override timeout was missing.
#[test]
fn regression_seeds() {
    if std::env::var("PLEX_SIM_SEED").is_ok() {
        return; // the sweep pins seeds for the other tests
    }
    for seed in [1077, 1210] {
        run(seed, Target::SameAsSource);
    }
}

/// Restoring into a stack whose TCP config differs from the giver's works: the connection
/// keeps what the peer agreed to and takes the target's local policy (see
/// `Connection::restore`; a target with a smaller MSS refuses, tested there).
#[test]
fn handoff_into_a_stack_with_another_tcp_config() {
    for seed in seeds(&(1..=8).collect::<Vec<u64>>()) {
        run(seed, Target::Default);
        run(seed, Target::Different);
    }
}
