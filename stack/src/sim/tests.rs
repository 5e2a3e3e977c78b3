//! The simulator tested with toy hosts.

use super::*;

/// Sends `count` frames of `len` bytes to `dst`, one every `interval`, numbered in bytes
/// 14..18; records what it receives.
struct Toy {
    mac: [u8; 6],
    dst: [u8; 6],
    len: usize,
    count: u32,
    sent: u32,
    interval: Duration,
    next: Option<Instant>,
    received: Vec<(Instant, u32, Vec<u8>)>,
    timeouts: Vec<Instant>,
}

impl Toy {
    fn new(id: u8, dst: u8, count: u32, interval: Duration) -> Toy {
        Toy {
            mac: [2, 0, 0, 0, 0, id],
            dst: [2, 0, 0, 0, 0, dst],
            len: 100,
            count,
            sent: 0,
            interval,
            next: (count > 0).then_some(Instant::ZERO),
            received: Vec::new(),
            timeouts: Vec::new(),
        }
    }
    fn seqs(&self) -> Vec<u32> {
        self.received.iter().map(|r| r.1).collect()
    }
}

impl Host for Toy {
    fn receive(&mut self, now: Instant, frame: &[u8]) {
        let seq = u32::from_be_bytes([frame[14], frame[15], frame[16], frame[17]]);
        self.received.push((now, seq, frame.to_vec()));
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let due = self.next.is_some_and(|t| t <= now) && self.sent < self.count;
        if !due {
            return None;
        }
        buf[..6].copy_from_slice(&self.dst);
        buf[6..12].copy_from_slice(&self.mac);
        buf[12..14].copy_from_slice(&[0x88, 0xb5]);
        buf[14..18].copy_from_slice(&self.sent.to_be_bytes());
        buf[18..self.len].fill(0x5a);
        self.sent += 1;
        self.next = (self.sent < self.count).then(|| now + self.interval);
        Some(self.len)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.next
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.timeouts.push(now);
    }
}

fn two(seed: u64, count: u32, up: LinkConfig) -> (Sim<Toy>, HostId, HostId) {
    let mut sim = Sim::new(seed);
    let a = sim.add_host(Toy::new(1, 2, count, Duration::from_micros(100)), up, LinkConfig::default());
    let b = sim.add_host(Toy::new(2, 1, 0, Duration::ZERO), LinkConfig::default(), LinkConfig::default());
    (sim, a, b)
}

fn run(sim: &mut Sim<Toy>) {
    sim.run_until(Instant::from_secs(100), |s| s.events.is_empty() && s.ports.iter().all(|p| p.host.sent >= p.host.count));
}

#[test]
fn perfect_link_delivers_in_order_with_exact_delay() {
    let (mut sim, _, b) = two(1, 100, LinkConfig::default());
    run(&mut sim);
    let r = &sim.host(b).received;
    assert_eq!(sim.host(b).seqs(), (0..100).collect::<Vec<_>>());
    for (i, (t, _, _)) in r.iter().enumerate() {
        assert_eq!(*t, Instant::from_micros(i as u64 * 100 + 20), "10 us up + 10 us down");
    }
}

#[test]
fn loss_rate_is_close_to_configured() {
    let (mut sim, a, b) = two(2, 10_000, LinkConfig::lossy(0.1));
    run(&mut sim);
    let got = sim.host(b).received.len();
    assert!((8_800..=9_200).contains(&got), "{got} of 10000 delivered at 10% loss");
    assert_eq!(sim.stats().uplink[a.0].lost as usize, 10_000 - got);
}

#[test]
fn runs_are_deterministic() {
    let cfg = LinkConfig { loss: 0.05, duplicate: 0.05, corrupt: 0.05, reorder: 0.1, reorder_delay: Duration::from_micros(300), jitter: Duration::from_micros(50), ..LinkConfig::default() };
    let go = |seed| {
        let (mut sim, _, b) = two(seed, 2000, cfg.clone());
        sim.capture(true);
        run(&mut sim);
        let mut pcap = Vec::new();
        sim.write_pcap(&mut pcap).unwrap();
        (sim.stats().clone(), sim.host(b).seqs(), pcap)
    };
    assert_eq!(go(7), go(7));
    assert_ne!(go(7).1, go(8).1);
}

#[test]
fn duplication_and_corruption() {
    let cfg = LinkConfig { duplicate: 0.2, corrupt: 0.2, ..LinkConfig::default() };
    let (mut sim, a, b) = two(3, 1000, cfg);
    run(&mut sim);
    let st = sim.stats().uplink[a.0];
    assert_eq!(sim.host(b).received.len() as u64, 1000 + st.duplicated);
    assert!(st.duplicated > 150 && st.corrupted > 150);
    for (_, _, f) in &sim.host(b).received {
        assert_eq!(&f[..14], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5], "header never corrupted");
    }
    let damaged = sim.host(b).received.iter().filter(|(_, _, f)| f[18..].iter().any(|&x| x != 0x5a)).count();
    assert!(damaged > 100);
}

#[test]
fn reordering_lets_later_frames_overtake() {
    let cfg = LinkConfig { reorder: 0.2, reorder_delay: Duration::from_micros(350), ..LinkConfig::default() };
    let (mut sim, _, b) = two(4, 1000, cfg);
    run(&mut sim);
    let seqs = sim.host(b).seqs();
    assert_eq!(seqs.len(), 1000);
    let inversions = seqs.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 100, "{inversions}");
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
}

#[test]
fn bandwidth_serializes_and_queue_limit_drops() {
    // 100-byte frames at 8 Mbit/s take 100 us each; sent every 100 us: no queueing.
    let cfg = LinkConfig::default().with_bandwidth(8_000_000, 4);
    let (mut sim, _, b) = two(5, 10, cfg);
    run(&mut sim);
    let t: Vec<u64> = sim.host(b).received.iter().map(|r| r.0.total_micros()).collect();
    assert_eq!(t, (0..10).map(|i| i * 100 + 100 + 20).collect::<Vec<_>>());
    // Sent all at once: they queue, four fit, the rest are dropped at the tail.
    let mut sim = Sim::new(6);
    let a = sim.add_host(Toy::new(1, 2, 10, Duration::ZERO), LinkConfig::default().with_bandwidth(8_000_000, 4), LinkConfig::default());
    let b = sim.add_host(Toy::new(2, 1, 0, Duration::ZERO), LinkConfig::default(), LinkConfig::default());
    run(&mut sim);
    assert_eq!(sim.host(b).seqs(), vec![0, 1, 2, 3]);
    assert_eq!(sim.stats().uplink[a.0].queue_dropped, 6);
    let t: Vec<u64> = sim.host(b).received.iter().map(|r| r.0.total_micros()).collect();
    assert_eq!(t, vec![120, 220, 320, 420]);
}

#[test]
fn mtu_drops_oversized_frames() {
    let mut sim = Sim::new(7);
    let mut toy = Toy::new(1, 2, 3, Duration::from_micros(10));
    toy.len = 1000;
    let a = sim.add_host(toy, LinkConfig { mtu: 900, ..LinkConfig::default() }, LinkConfig::default());
    let b = sim.add_host(Toy::new(2, 1, 0, Duration::ZERO), LinkConfig::default(), LinkConfig::default());
    run(&mut sim);
    assert!(sim.host(b).received.is_empty());
    assert_eq!(sim.stats().uplink[a.0].mtu_dropped, 3);
}

#[test]
fn learning_switch_floods_then_unicasts() {
    let mut sim = Sim::new(8);
    let a = sim.add_host(Toy::new(1, 2, 2, Duration::from_millis(1)), LinkConfig::default(), LinkConfig::default());
    let b = sim.add_host(Toy::new(2, 1, 1, Duration::ZERO), LinkConfig::default(), LinkConfig::default());
    let c = sim.add_host(Toy::new(3, 9, 0, Duration::ZERO), LinkConfig::default(), LinkConfig::default());
    run(&mut sim);
    // Both first frames reach the switch at 10 us. a's comes first: the switch learns a and
    // floods (b unknown); b's comes second: a is known, so it is unicast.
    assert_eq!(sim.host(c).received.len(), 1, "one flood reached the bystander");
    // a's second frame at 1 ms: b is learned by then: unicast.
    assert_eq!(sim.host(b).seqs(), vec![0, 1]);
    assert_eq!(sim.host(a).seqs(), vec![0]);
    assert_eq!(sim.stats().flooded, 1);
}

#[test]
fn time_jumps_to_far_timeouts() {
    struct Sleeper {
        at: Option<Instant>,
        fired: Vec<Instant>,
    }
    impl Host for Sleeper {
        fn receive(&mut self, _: Instant, _: &[u8]) {}
        fn poll_transmit(&mut self, _: Instant, _: &mut [u8]) -> Option<usize> {
            None
        }
        fn poll_timeout(&mut self) -> Option<Instant> {
            self.at
        }
        fn handle_timeout(&mut self, now: Instant) {
            self.fired.push(now);
            self.at = None;
        }
    }
    let mut sim = Sim::new(9);
    let n = sim.add_host(Sleeper { at: Some(Instant::from_secs(10)), fired: vec![] }, LinkConfig::default(), LinkConfig::default());
    assert!(sim.step());
    assert_eq!(sim.host(n).fired, vec![Instant::from_secs(10)]);
    assert_eq!(sim.stats().events, 0, "no intermediate steps");
    assert!(!sim.step(), "nothing left");
    // run_until respects its deadline.
    sim.host_mut(n).at = Some(Instant::from_secs(100));
    assert!(!sim.run_until(Instant::from_secs(50), |_| false));
    assert!(sim.host(n).fired.len() == 1);
    assert_eq!(sim.now(), Instant::from_secs(50));
}

#[test]
fn a_frame_is_corrupted_at_most_once_end_to_end() {
    // Both hops corrupt every frame: each still arrives with exactly one damaged byte, as a
    // real path of CRC-checked links would deliver it (a second burst on the second hop could
    // cancel the first in the Internet checksum; seed 114 of sim_transfer once did).
    let always = LinkConfig { corrupt: 1.0, ..LinkConfig::default() };
    let mut sim = Sim::new(10);
    let a = sim.add_host(Toy::new(1, 2, 500, Duration::from_micros(100)), always.clone(), LinkConfig::default());
    let b = sim.add_host(Toy::new(2, 1, 0, Duration::ZERO), LinkConfig::default(), always);
    run(&mut sim);
    assert_eq!(sim.host(b).received.len(), 500);
    for (_, _, f) in &sim.host(b).received {
        let damaged = f[18..].iter().filter(|&&x| x != 0x5a).count()
            + usize::from(u32::from_be_bytes([f[14], f[15], f[16], f[17]]) >= 500);
        assert!(damaged <= 1, "a frame was damaged in {damaged} bytes: {:?}", &f[14..]);
    }
    assert_eq!(sim.stats().uplink[a.0].corrupted, 500);
    assert_eq!(sim.stats().downlink[b.0].corrupted, 0, "the second hop spares a damaged frame");
}
