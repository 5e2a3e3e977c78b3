//! Simulation test harness: two plex stacks on the simulator, bulk transfers with checked
//! bytes, and a guard that prints the seed (and writes a pcap) when a run fails.

#![allow(clippy::unwrap_used)]

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use stack::iface::{SocketHandle, Stack, StackConfig};
use stack::sim::{LinkConfig, HostId, Sim};
use stack::tcp;
use stack::time::{Duration, Instant};
use stack::wire::MacAddr;

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const PORT: u16 = 5001;

/// The byte at stream offset `i`: position-dependent, so a reordering bug cannot go unseen.
pub fn pattern(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
    (x as u8) ^ (i as u8)
}

pub fn fill(off: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(off + k as u64);
    }
}

pub fn new_stack(mac_last: u8, ip: Ipv4Addr, seed: u64, tcp: &tcp::Config) -> Stack {
    let mut cfg = StackConfig::new(MacAddr([2, 0, 0, 0, 0, mac_last]));
    cfg.seed = seed;
    cfg.tcp = tcp.clone();
    let mut s = Stack::new(cfg);
    s.add_address(ip, 24, false);
    s
}

/// Prints the seed, and writes the capture when `PLEX_SIM_PCAP_DIR` is set, if the test
/// panics while the guard is alive.
pub struct FailGuard<'a> {
    pub name: String,
    pub seed: u64,
    pub sim: Option<&'a Sim<Stack>>,
}

pub fn report_failure(name: &str, seed: u64, sim: &Sim<Stack>) {
    eprintln!("simulation {name} failed: PLEX_SIM_SEED={seed} reproduces it (sim time {:?})", sim.now());
    if let Ok(dir) = std::env::var("PLEX_SIM_PCAP_DIR") {
        let path = std::path::Path::new(&dir).join(format!("{name}-{seed}.pcap"));
        match std::fs::File::create(&path).and_then(|mut f| sim.write_pcap(&mut f)) {
            Ok(()) => eprintln!("capture written to {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
    } else {
        eprintln!("set PLEX_SIM_PCAP_DIR=/some/dir to get a pcap of the run");
    }
}

/// Seeds to run: `PLEX_SIM_SEED` pins one.
pub fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("PLEX_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => default.to_vec(),
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub bytes: u64,
    /// Client sends to server (upload) when false: the server sends (download).
    pub download: bool,
    pub link: LinkConfig,
    pub tcp: tcp::Config,
    /// Simulated-time bound for the whole transfer.
    pub deadline: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub seed: u64,
    pub finished_at: Instant,
    pub retrans_segs: u64,
    pub timeouts: u64,
    pub fast_recoveries: u64,
    pub segs_out: u64,
}

impl Outcome {
    pub fn goodput_mbps(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / self.finished_at.total_micros().max(1) as f64
    }
}

pub struct Pair {
    pub sim: Sim<Stack>,
    pub server: HostId,
    pub client: HostId,
    /// Connection attempts the handshake took.
    pub handshake_attempts: u32,
}

impl Pair {
    pub fn new(seed: u64, link: &LinkConfig, tcp: &tcp::Config) -> Pair {
        let mut sim = Sim::new(seed);
        sim.capture(std::env::var("PLEX_SIM_PCAP_DIR").is_ok());
        let server = sim.add_host(new_stack(10, SERVER_IP, seed ^ 0xaaaa, tcp), link.clone(), link.clone());
        let client = sim.add_host(new_stack(1, CLIENT_IP, seed ^ 0x5555, tcp), link.clone(), link.clone());
        Pair { sim, server, client, handshake_attempts: 0 }
    }

    /// Listen on the server, connect from the client, run until accepted.
    ///
    /// A handshake over a lossy link can legitimately fail to finish in 60 s: at 10 % loss a
    /// hop, every SYN (0, 1, 3, 7, 15, 31 s), or every SYN-ACK and ACK pair, can be lost. Then
    /// the client tries again from a new port, as an application whose connect timed out
    /// would, up to three times. A handshake that stalls with nothing scheduled any more (a
    /// socket parked forever) is a stack bug and fails at once.
    pub fn connect(&mut self) -> (SocketHandle, SocketHandle) {
        let now = self.sim.now();
        let l = self.sim.host_mut(self.server).tcp_listen(now, SocketAddrV4::new(SERVER_IP, PORT), 64).expect("listen");
        let (server, client) = (self.server, self.client);
        for attempt in 1..=3 {
            let start = self.sim.now();
            let c = self.sim.host_mut(client).tcp_connect(start, None, SocketAddrV4::new(SERVER_IP, PORT)).expect("connect");
            let local = self.sim.host(client).tcp(c).expect("client conn").tuple().local;
            let mut accepted = None;
            let ok = self.sim.run_until(start + Duration::from_secs(60), |sim| {
                while accepted.is_none() {
                    let Ok(s) = sim.host_mut(server).tcp_accept(l) else { break };
                    if sim.host(server).tcp(s).is_some_and(|t| t.tuple().remote == local) {
                        accepted = Some(s);
                    } else {
                        // A late handshake of an abandoned attempt.
                        let _ = sim.host_mut(server).tcp_abort(start, s);
                    }
                }
                accepted.is_some()
            });
            if let Some(s) = accepted.filter(|_| ok) {
                self.handshake_attempts = attempt;
                return (s, c);
            }
            assert!(!self.sim.is_idle(), "handshake stalled with nothing scheduled (attempt {attempt})");
            let now = self.sim.now();
            let _ = self.sim.host_mut(client).tcp_abort(now, c);
        }
        panic!("handshake did not complete in three attempts of 60 s");
    }
}

/// One direction of a bulk transfer, as the application sees it.
pub struct Stream {
    pub sent: u64,
    pub received: u64,
    pub total: u64,
    pub closed: bool,
    buf: Vec<u8>,
    /// The stream offset whose pattern `buf` holds (the sender is offered the same bytes again
    /// while its buffer is full without computing them again: most calls find it full).
    filled: Option<u64>,
}

impl Stream {
    pub fn new(total: u64) -> Stream {
        Stream { sent: 0, received: 0, total, closed: false, buf: vec![0u8; 65536], filled: None }
    }

    /// Offer as much as the sender takes; close it when everything is queued.
    pub fn push(&mut self, now: Instant, s: &mut Stack, h: SocketHandle, close_at_end: bool) {
        while self.sent < self.total {
            let n = ((self.total - self.sent) as usize).min(self.buf.len());
            if self.filled != Some(self.sent) {
                fill(self.sent, &mut self.buf[..n]);
                self.filled = Some(self.sent);
            }
            match s.tcp_send(now, h, &self.buf[..n]) {
                Ok(0) | Err(_) => break,
                Ok(k) => self.sent += k as u64,
            }
        }
        if self.sent == self.total && close_at_end && !self.closed {
            s.tcp_shutdown(now, h).expect("shutdown");
            self.closed = true;
        }
    }

    /// Read what arrived and check every byte.
    pub fn pull(&mut self, now: Instant, s: &mut Stack, h: SocketHandle) {
        loop {
            match s.tcp_recv(now, h, &mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.filled = None;
                    for (k, b) in self.buf[..n].iter().enumerate() {
                        let off = self.received + k as u64;
                        assert_eq!(*b, pattern(off), "byte {off} of the stream is wrong");
                    }
                    self.received += n as u64;
                    assert!(self.received <= self.total, "more bytes than were sent");
                }
                Err(_) => break,
            }
        }
    }
}

/// Run one bulk transfer scenario; panics (with the seed) on any corruption or timeout.
pub fn run_transfer(seed: u64, sc: &Scenario) -> Outcome {
    let mut pair = Pair::new(seed, &sc.link, &sc.tcp);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (srv, cli) = pair.connect();
        let (tx_host, tx_h, rx_host, rx_h) = if sc.download {
            (pair.server, srv, pair.client, cli)
        } else {
            (pair.client, cli, pair.server, srv)
        };
        let mut stream = Stream::new(sc.bytes);
        let start = pair.sim.now();
        let deadline = start + sc.deadline;
        let done = pair.sim.run_until(deadline, |sim| {
            let now = sim.now();
            stream.push(now, sim.host_mut(tx_host), tx_h, true);
            stream.pull(now, sim.host_mut(rx_host), rx_h);
            sim.kick();
            stream.received == sc.bytes
        });
        assert!(done, "{}: transfer of {} bytes incomplete after {:?}: {} received", sc.name, sc.bytes, sc.deadline, stream.received);
        let finished = pair.sim.now();
        let c = pair.sim.host(tx_host).tcp(tx_h).expect("sender").counters;
        Outcome {
            seed,
            finished_at: Instant::from_micros((finished - start).total_micros()),
            retrans_segs: c.retrans_segs,
            timeouts: c.timeouts,
            fast_recoveries: c.fast_recoveries,
            segs_out: c.segs_out,
        }
    }));
    match result {
        Ok(o) => o,
        Err(e) => {
            report_failure(&sc.name, seed, &pair.sim);
            std::panic::resume_unwind(e)
        }
    }
}
