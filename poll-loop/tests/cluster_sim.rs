//! Whole cluster members in the deterministic simulator: real stacks, each with its real
//! cluster side ([`ClusterMember`] and [`StackCluster`]: the coupling node, the distributor, the
//! port registry) on one coupling region, on one simulated L2 segment with loss, reordering
//! and duplication, and a server outside the cluster (another plex stack, alone). What the
//! poll loop does around them is done here: the member's turn before every frame, and frames a
//! stack says belong to another member forwarded to that member's MAC (the router's XDP fast
//! path and slow path do the same on real interfaces).
//!
//! Cluster-wide ports (issue 13, spec/03): applications on two target stacks open outbound
//! connections from the same distributed DVIPA to the same server ip:port. With
//! `cluster_ports` every local port is distinct, no 4-tuple appears twice, and every reply
//! (which reaches the DVIPA's router, the stack that answers ARP for it) is forwarded to the
//! stack that owns the port; with it off and the two stacks' allocators forced equal, the
//! collision it prevents happens. The router dying while the targets talk resets nothing.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use coupling::node::Identity;
use coupling::ClusterConfig;
use poll_loop::clock::Clock;
use poll_loop::cluster::{ClusterMember, StackCluster};
use poll_loop::api::{self, nonblocking as nb, Bridge, Net};
use poll_loop::handoff::{self, TransferOutcome};
use poll_loop::runner::{dispatch_handoffs, App};
use stack::iface::{Received, SocketEvent, SocketHandle, Stack, StackConfig};
use stack::sim::{Host, LinkConfig, Sim};
use stack::tcp::Event;
use stack::time::{Duration, Instant};
use stack::wire::MacAddr;

const DVIPA: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 102);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 7);
const NAMES: [&str; 3] = ["s1", "s2", "s3"];

fn mac(i: usize) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0x10, i as u8 + 1])
}

/// s1 routes the DVIPA (primary), s2 is its backup; s2 and s3 are the targets.
fn config(region: &str, ports: &str) -> String {
    let mut s = format!("[cluster]\nname = \"sim\"\nregion = \"{region}\"\nlease_ms = 100\nheartbeat_ms = 10\nport_quarantine_ms = 500\n");
    for (i, n) in NAMES.iter().enumerate() {
        s += &format!("[[stack]]\nname = \"{n}\"\ninterface = \"plx-sim{i}\"\naddress = \"198.18.0.{}/24\"\n", 11 + i);
    }
    s += "[[stack.source_ipa]]\naddress = \"198.18.0.102\"\napps = [\"db-client\"]\n";
    s += &format!(
        "[[dvipa]]\naddress = \"198.18.0.102/24\"\nprimary = \"s1\"\nbackups = [{{ stack = \"s2\", rank = 20 }}]\n{ports}distribute = {{ ports = [80], targets = [\"s2\", \"s3\"] }}\n"
    );
    s
}

/// One host of the segment: a cluster member, or the server alone.
struct Node {
    stack: Stack,
    member: Option<ClusterMember>,
    /// Frames to forward to another member (destination MAC already rewritten).
    forward: VecDeque<Vec<u8>>,
    macs: Arc<Vec<MacAddr>>,
    /// Killed: receives and sends nothing, no timers.
    dead: bool,
    /// Forwarded frames.
    forwarded: u64,
    echo: bool,
    /// The member's turn only at timers, not before every frame: its mail (a target's
    /// NEWCONN) is read late, as a busy router's can be, and replies overtake it.
    lagging: bool,
    /// Offers of live connections: accept them (and echo on them), or reject with this reason.
    reject: Option<u16>,
    /// Connections this node echoes on (accepted here or transferred here).
    serving: Vec<SocketHandle>,
    /// Outcomes of the transfers this node started.
    outcomes: Vec<TransferOutcome>,
    listener: Option<SocketHandle>,
    buf: Vec<u8>,
    /// The application is the blocking and readiness APIs' poll-thread side: what the test
    /// does through their sockets, this bridge does on the stack.
    bridge: Option<Bridge>,
    /// The client's wire tap: per local port, the right edge of the window it announced and
    /// its window scale; data it receives past that edge is recorded.
    tap: Option<HashMap<u16, (u32, u8)>>,
    beyond_window: Vec<String>,
}

/// The TCP segment of an Ethernet frame.
fn tcp_of(frame: &[u8]) -> Option<stack::wire::TcpRepr<'_>> {
    use stack::wire::{EthernetFrame, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr};
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ipp = Ipv4Packet::new_checked(eth.into_inner().get(14..)?).ok()?;
    let ip = Ipv4Repr::parse(&ipp, true).ok()?;
    if ip.next_header != stack::wire::IpProtocol::Tcp {
        return None;
    }
    let body: &[u8] = frame.get(14 + ipp.header_len()..14 + ipp.total_len() as usize)?;
    let tp = TcpPacket::new_checked(body).ok()?;
    TcpRepr::parse(&tp, ip.src_addr, ip.dst_addr, true).ok()
}

impl Node {
    fn new(stack: Stack, member: Option<ClusterMember>, macs: Arc<Vec<MacAddr>>, echo: bool, listener: Option<SocketHandle>) -> Node {
        Node { stack, member, forward: VecDeque::new(), macs, dead: false, forwarded: 0, echo, lagging: false, reject: None, serving: Vec::new(), outcomes: Vec::new(), listener, buf: vec![0; 65536], bridge: None, tap: None, beyond_window: Vec::new() }
    }

    /// The bridge's turn, as the runner gives it: events, commands, handoffs.
    fn bridge_turn(&mut self, now: Instant) {
        let Some(b) = self.bridge.as_mut() else { return };
        while let Some((h, ev)) = self.stack.poll_event() {
            b.event(now, &mut self.stack, h, ev);
        }
        b.poll(now, &mut self.stack);
        dispatch_handoffs(now, &mut self.stack, b);
        while let Some((h, ev)) = self.stack.poll_event() {
            b.event(now, &mut self.stack, h, ev);
        }
    }

    fn turn(&mut self, now: Instant) {
        if let Some(m) = self.member.as_mut() {
            m.turn(now, &mut self.stack);
            self.handoffs(now);
        }
    }
    /// What the runner does for an application: offers, outcomes, held segments to forward.
    fn handoffs(&mut self, now: Instant) {
        if self.bridge.is_some() {
            self.bridge_turn(now);
        }
        while let Some(offer) = handoff::next_offer(&mut self.stack) {
            match self.reject {
                Some(r) if !offer.unconditional => handoff::reject(&mut self.stack, now, &offer, r),
                _ => {
                    if let Some(h) = handoff::accept(&mut self.stack, now, &offer) {
                        self.serving.push(h);
                        self.echo_on(now, h);
                    }
                }
            }
        }
        while let Some((_, o)) = handoff::next_outcome(&mut self.stack) {
            if let TransferOutcome::Rejected { handle: Some(h), .. } | TransferOutcome::Aborted { handle: Some(h) } = o {
                self.serving.push(h);
                self.echo_on(now, h);
            }
            self.outcomes.push(o);
        }
        while let Some((to, mut f)) = handoff::next_forward(&mut self.stack) {
            f[..6].copy_from_slice(&self.macs[to as usize + 1].0);
            f[6..12].copy_from_slice(&self.stack.config().mac.0);
            self.forward.push_back(f);
        }
    }
    fn echo_on(&mut self, now: Instant, h: SocketHandle) {
        loop {
            match self.stack.tcp_recv(now, h, &mut self.buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let sent = self.stack.tcp_send(now, h, &self.buf[..n]).unwrap_or(0);
                    assert_eq!(sent, n, "the echo's send buffer holds an echo");
                }
            }
        }
    }
    /// The server echoes everything back; clients are driven by the test. A cluster member
    /// with a listener (the handoff tests) echoes on what it accepted and what moved here.
    fn serve(&mut self, now: Instant) {
        if self.bridge.is_some() {
            self.handoffs(now);
            return;
        }
        if self.member.is_some() {
            self.handoffs(now);
            if let Some(l) = self.listener {
                while let Ok(h) = self.stack.tcp_accept(l) {
                    self.serving.push(h);
                }
            }
            if self.listener.is_none() && self.serving.is_empty() {
                return;
            }
            while let Some((h, ev)) = self.stack.poll_event() {
                match ev {
                    SocketEvent::Tcp(Event::Readable) if self.serving.contains(&h) => self.echo_on(now, h),
                    SocketEvent::Tcp(Event::Closed) => {
                        self.serving.retain(|x| *x != h);
                        let _ = self.stack.close(now, h);
                    }
                    _ => {}
                }
            }
            let hs = self.serving.clone();
            for h in hs {
                self.echo_on(now, h);
            }
            return;
        }
        if !self.echo {
            return;
        }
        if let Some(l) = self.listener {
            // Accepted first: bytes that came before the accept raise their event at it.
            while self.stack.tcp_accept(l).is_ok() {}
        }
        while let Some((h, ev)) = self.stack.poll_event() {
            match ev {
                SocketEvent::Tcp(Event::Readable) => loop {
                    match self.stack.tcp_recv(now, h, &mut self.buf) {
                        Ok(0) => {
                            let _ = self.stack.tcp_shutdown(now, h);
                            break;
                        }
                        Ok(n) => {
                            let sent = self.stack.tcp_send(now, h, &self.buf[..n]).unwrap_or(0);
                            assert_eq!(sent, n, "the server's send buffer holds an echo");
                        }
                        Err(_) => break,
                    }
                },
                SocketEvent::Tcp(Event::Closed) => {
                    let _ = self.stack.close(now, h);
                }
                _ => {}
            }
        }
    }
}

impl Host for Node {
    fn receive(&mut self, now: Instant, frame: &[u8]) {
        if self.dead {
            return;
        }
        if let (Some(tap), Some(seg)) = (self.tap.as_ref(), tcp_of(frame)) {
            if let Some(&(edge, _)) = tap.get(&seg.dst_port) {
                let end = seg.seq_number.0.wrapping_add(seg.payload.len() as u32);
                if !seg.payload.is_empty() && (end.wrapping_sub(edge) as i32) > 0 {
                    self.beyond_window.push(format!("{now:?}: port {} seq {} len {} past the edge {edge}", seg.dst_port, seg.seq_number.0, seg.payload.len()));
                }
            }
        }
        if !self.lagging {
            self.turn(now);
        }
        let outcome = self.stack.receive(now, frame);
        if outcome == Received::Hold {
            handoff::hold(&mut self.stack, frame);
        }
        if let Received::Forward { stack } = outcome {
            let mut f = frame.to_vec();
            f[..6].copy_from_slice(&self.macs[stack as usize + 1].0); // host i+1 is slot i
            f[6..12].copy_from_slice(&self.stack.config().mac.0);
            self.forward.push_back(f);
            self.forwarded += 1;
        }
        self.serve(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.dead {
            return None;
        }
        if let Some(f) = self.forward.pop_front() {
            buf[..f.len()].copy_from_slice(&f);
            return Some(f.len());
        }
        let n = self.stack.poll_transmit(now, buf)?;
        if let Some(tap) = self.tap.as_mut() {
            if let Some(seg) = tcp_of(&buf[..n]) {
                let e = tap.entry(seg.src_port).or_insert((0, 0));
                if seg.control == stack::wire::TcpControl::Syn {
                    e.1 = seg.window_scale.unwrap_or(0);
                } else if let Some(a) = seg.ack_number {
                    let edge = a.0.wrapping_add((seg.window_len as u32) << e.1);
                    if e.0 == 0 || (edge.wrapping_sub(e.0) as i32) > 0 {
                        e.0 = edge;
                    }
                }
            }
        }
        Some(n)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        if self.dead {
            return None;
        }
        let s = self.stack.poll_timeout();
        match &self.member {
            Some(m) => Some(s.map_or(m.next_deadline(), |t| t.min(m.next_deadline()))),
            None => s,
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        self.turn(now);
        self.stack.handle_timeout(now);
        self.serve(now);
    }
}

/// A client connection on a target and the bytes it still expects back.
struct Client {
    node: usize,
    h: SocketHandle,
    up: bool,
    failed: Option<Event>,
    sent: usize,
    expect: VecDeque<u8>,
    mismatched: bool,
}

struct Cluster {
    sim: Sim<Node>,
    ids: Vec<stack::sim::HostId>,
    clients: Vec<Client>,
    region: String,
    /// The clients stop reading (their peers' send buffers fill up).
    reads_paused: bool,
    /// Bytes a client keeps unechoed at most (default: 4 chunks).
    in_flight: Option<usize>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.region);
    }
}

fn link(loss: f64, seed: u64) -> LinkConfig {
    let mut l = LinkConfig::lossy(loss).with_delay(Duration::from_micros(50));
    if seed % 2 == 1 {
        l.reorder = loss;
        l.reorder_delay = Duration::from_micros(300);
        l.duplicate = loss / 2.0;
    }
    l
}

impl Cluster {
    /// The server (host 0) and s1..s3 (hosts 1..=3), joined, s1 routing the DVIPA.
    fn new(seed: u64, loss: f64, ports: &str, equal_allocators: bool) -> Cluster {
        let region = format!("/dev/shm/plex-sim-{}-{seed}-{}", std::process::id(), rand_suffix());
        let cfg = Arc::new(ClusterConfig::parse(&config(&region, ports), "sim").expect("config"));
        let clock = Clock::default();
        let macs: Arc<Vec<MacAddr>> = Arc::new((0..4).map(mac).collect());
        let mut sim = Sim::new(seed);
        let mut ids = Vec::new();
        // The server: a stack alone.
        let mut scfg = StackConfig::new(mac(0));
        scfg.seed = seed ^ 0xabcd;
        let mut server = Stack::new(scfg);
        server.add_address(*SERVER.ip(), 24, false);
        let l = server.tcp_listen(Instant::ZERO, SERVER, 1024).unwrap();
        let node = Node::new(server, None, macs.clone(), true, Some(l));
        ids.push(sim.add_host(node, link(loss, seed), link(loss, seed)));
        for (i, name) in NAMES.iter().enumerate() {
            let slot = i + 1;
            let ident = Identity { pid: std::process::id(), mac: macs[slot].0, ifindex: 100 + slot as u32 };
            let (member, sc) = ClusterMember::join_at(cfg.clone(), name, ident, clock, Instant::ZERO).expect("join");
            let mut c = StackConfig::new(macs[slot]);
            // Forced-equal allocators: the targets draw the same ephemeral ports.
            c.seed = if equal_allocators && slot >= 2 { 7 } else { seed.wrapping_mul(31) + slot as u64 };
            c.app_name = Some("db-client".into());
            let mut st = Stack::with_cluster(c, Box::new(sc));
            st.add_address(cfg.stacks[i].addr, 24, false);
            let node = Node::new(st, Some(member), macs.clone(), false, None);
            ids.push(sim.add_host(node, link(loss, seed), link(loss, seed)));
        }
        let mut c = Cluster { sim, ids, clients: Vec::new(), region, reads_paused: false, in_flight: None };
        // s1 activates and routes the DVIPA; s2 and s3 install it as internal.
        let s1 = c.ids[1];
        let ok = c.sim.run_until(Instant::from_millis(5_000), |s| s.host(s1).stack.homes().iter().any(|h| h.addr == DVIPA && !h.internal));
        assert!(ok, "s1 holds the DVIPA");
        c.sim.run_for(Duration::from_millis(200));
        for t in [2, 3] {
            let id = c.ids[t];
            assert!(c.sim.host(id).stack.homes().iter().any(|h| h.addr == DVIPA && h.internal), "s{t} is a target");
        }
        // The server resolves the DVIPA as a Linux host would (it answers to the router's MAC).
        let sid = c.ids[0];
        let now = c.sim.now();
        let server = &mut c.sim.host_mut(sid).stack;
        let u = server.udp_bind(SocketAddrV4::new(*SERVER.ip(), 9)).unwrap();
        let _ = server.udp_send_to(now, u, SocketAddrV4::new(DVIPA, 9), b"arp");
        c.sim.kick();
        c.sim.run_for(Duration::from_millis(50));
        c
    }

    fn connect(&mut self, node: usize, k: usize, bind: bool) {
        let id = self.ids[node];
        let now = self.sim.now();
        for _ in 0..k {
            let st = &mut self.sim.host_mut(id).stack;
            let h = st.tcp_connect(now, bind.then_some(DVIPA), SERVER).expect("connect");
            self.clients.push(Client { node, h, up: false, failed: None, sent: 0, expect: VecDeque::new(), mismatched: false });
        }
        self.sim.kick();
    }

    /// Drive the targets' client connections: on connect and then every call, send `chunk`
    /// bytes (up to `total`) and check the echo.
    fn drive(&mut self, chunk: usize, total: usize) {
        let now = self.sim.now();
        let mut by: HashMap<(usize, SocketHandle), usize> = HashMap::new();
        for (i, c) in self.clients.iter().enumerate() {
            by.insert((c.node, c.h), i);
        }
        let mut buf = vec![0u8; 65536];
        let nodes: BTreeSet<usize> = self.clients.iter().map(|c| c.node).collect();
        for node in nodes {
            let id = self.ids[node];
            loop {
                let Some((h, ev)) = self.sim.host_mut(id).stack.poll_event() else { break };
                let Some(&i) = by.get(&(node, h)) else { continue };
                match ev {
                    SocketEvent::Tcp(Event::Connected) => self.clients[i].up = true,
                    SocketEvent::Tcp(e @ (Event::Reset | Event::TimedOut)) => self.clients[i].failed = Some(e),
                    _ => {}
                }
            }
            for i in 0..self.clients.len() {
                if self.clients[i].node != node || !self.clients[i].up {
                    continue;
                }
                let st = &mut self.sim.host_mut(id).stack;
                let h = self.clients[i].h;
                while !self.reads_paused {
                    let Ok(n) = st.tcp_recv(now, h, &mut buf) else { break };
                    if n == 0 {
                        break;
                    }
                    let c = &mut self.clients[i];
                    for &b in &buf[..n] {
                        if c.expect.pop_front() != Some(b) {
                            c.mismatched = true;
                        }
                    }
                }
                let c = &mut self.clients[i];
                if c.sent < total && c.expect.len() < self.in_flight.unwrap_or(4 * chunk) {
                    // No short period: a chunk lost or repeated anywhere shows.
                    let msg: Vec<u8> = (0..chunk.min(total - c.sent)).map(|j| (((c.sent + j) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i as u8)).collect();
                    let st = &mut self.sim.host_mut(id).stack;
                    if let Ok(n) = st.tcp_send(now, h, &msg) {
                        let c = &mut self.clients[i];
                        c.expect.extend(&msg[..n]);
                        c.sent += n;
                    }
                }
            }
        }
        self.sim.kick();
    }

    /// Run until every client has sent `total` bytes and got them all back (or `secs` pass).
    fn exchange(&mut self, chunk: usize, total: usize, secs: u64) -> bool {
        let deadline = self.sim.now() + Duration::from_secs(secs);
        while self.sim.now() < deadline {
            self.drive(chunk, total);
            if self.clients.iter().all(|c| c.failed.is_some() || (c.up && c.sent == total && c.expect.is_empty())) {
                return true;
            }
            let step_to = self.sim.now() + Duration::from_millis(1);
            self.sim.run_until(step_to, |_| false);
        }
        false
    }

    fn tuples(&self) -> Vec<(usize, SocketAddrV4)> {
        self.clients
            .iter()
            .filter_map(|c| self.sim.host(self.ids[c.node]).stack.tcp(c.h).map(|t| (c.node, t.tuple().local)))
            .collect()
    }

    /// What the clients and stacks look like (for a failing assertion).
    fn summary(&self) -> String {
        let up = self.clients.iter().filter(|c| c.up).count();
        let failed = self.clients.iter().filter(|c| c.failed.is_some()).count();
        let waiting = self.clients.iter().filter(|c| !c.expect.is_empty()).count();
        let mut s = format!("clients: {} up {up} failed {failed} awaiting echo {waiting}; ", self.clients.len());
        for (i, id) in self.ids.iter().enumerate() {
            let h = self.sim.host(*id);
            let c = h.stack.counters();
            let nz: Vec<String> = c.iter().filter(|d| d.1 > 0).map(|(k, v)| format!("{k}={v}")).collect();
            s += &format!("\nhost{i}: forwarded {} {}", h.forwarded, nz.join(" "));
        }
        s
    }

    /// Each client connection, and where its server side lives, in sequence-number terms.
    fn flows(&self) -> String {
        let cl = &self.sim.host(self.ids[0]).stack;
        let mut out = String::new();
        for x in &self.clients {
            let Some(t) = cl.tcp(x.h) else { continue };
            out += &format!(
                "\n  client {:?} {:?} una {} nxt {} rcv {} sendq {} recvq {} rto {:?} {:?}",
                t.tuple().local,
                t.state(),
                t.snd_una().0,
                t.snd_nxt().0,
                t.rcv_nxt().0,
                t.send_queue(),
                t.recv_queue(),
                t.rto(),
                t.counters
            );
            let mirror = stack::tcp::Tuple { local: t.tuple().remote, remote: t.tuple().local };
            for n in 1..=3 {
                let st = &self.sim.host(self.ids[n]).stack;
                for (_, c) in st.connections().filter(|(_, c)| c.tuple() == mirror) {
                    out += &format!(
                        "\n    on s{n}: {:?} una {} nxt {} rcv {} sendq {} recvq {} rto {:?}",
                        c.state(),
                        c.snd_una().0,
                        c.snd_nxt().0,
                        c.rcv_nxt().0,
                        c.send_queue(),
                        c.recv_queue(),
                        c.rto()
                    );
                }
            }
        }
        out
    }

    /// Segments the router (s1) forwarded by port owner, and by its CRT (the distributor).
    fn router_paths(&self) -> (u64, u64) {
        let st = &self.sim.host(self.ids[1]).stack;
        let sc = (st.cluster() as &dyn std::any::Any).downcast_ref::<StackCluster>().expect("a cluster member");
        (sc.ports_forwarded, sc.distributor().stats.forwarded)
    }

    fn kill(&mut self, node: usize) {
        let id = self.ids[node];
        self.sim.host_mut(id).dead = true;
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Two targets, K unbound connects each to one server ip:port from the DVIPA: distinct
/// ports, no tuple twice, every byte echoed to the right stack, nothing reset.
fn distinct_ports_and_replies_delivered(seed: u64, loss: f64, k: usize) {
    distinct_ports_in_mode(seed, loss, k, "cluster_ports = true\n");
}

fn distinct_ports_in_mode(seed: u64, loss: f64, k: usize, mode: &str) {
    let mut c = Cluster::new(seed, loss, mode, false);
    c.connect(2, k, true);
    c.connect(3, k, false); // SOURCEIPA: the app's name gives it the DVIPA
    assert!(c.exchange(512, 4096, 60), "seed {seed}: every connection echoed: {}", c.summary());
    let failed: Vec<_> = c.clients.iter().filter(|c| c.failed.is_some()).map(|c| c.failed).collect();
    assert!(failed.is_empty(), "seed {seed}: failed connections {failed:?}");
    assert!(c.clients.iter().all(|c| !c.mismatched), "seed {seed}: bytes mismatched");
    let tuples = c.tuples();
    assert_eq!(tuples.len(), 2 * k);
    assert!(tuples.iter().all(|(_, l)| *l.ip() == DVIPA), "seed {seed}: every connection leaves from the DVIPA");
    let ports: BTreeSet<u16> = tuples.iter().map(|(_, l)| l.port()).collect();
    assert_eq!(ports.len(), 2 * k, "seed {seed}: every local port distinct across both stacks");
    // The replies reached the router, which forwarded them to their stacks: by the CRT entry
    // the target's NEWCONN made, or (a reply that overtook it) by the port's owner.
    let router = c.ids[1];
    assert!(c.sim.host(router).forwarded > 0, "seed {seed}: the router forwarded replies");
    let (by_port, by_crt) = c.router_paths();
    eprintln!("seed {seed}: router forwarded {by_port} segments by port owner, {by_crt} by its CRT");
    assert!(by_port + by_crt > 0);
}

#[test]
fn cluster_ports_two_targets_share_the_dvipa_without_collisions() {
    distinct_ports_and_replies_delivered(1, 0.0, 64);
}

#[test]
fn cluster_ports_under_loss_reordering_and_duplication() {
    let n: u64 = std::env::var("PLEX_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let start: u64 = std::env::var("PLEX_SIM_SEED_START").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    for seed in start..start + n {
        distinct_ports_and_replies_delivered(seed, 0.02, 16);
    }
}

/// `cluster_ports = "tuple"`: the same guarantees toward one server (one port per 4-tuple),
/// with the shared 4-tuple table instead of port ownership.
#[test]
fn tuple_mode_two_targets_share_the_dvipa_without_collisions() {
    for seed in [51, 52, 53] {
        distinct_ports_in_mode(seed, 0.01, 32, "cluster_ports = \"tuple\"\n");
    }
}

/// UDP sockets bound to port 0 on the DVIPA draw their ports from the same registry: the two
/// targets never get the same one, and each is the stack's alone until it closes.
#[test]
fn udp_port_zero_on_the_dvipa_comes_from_the_registry() {
    for mode in ["cluster_ports = true\n", "cluster_ports = \"tuple\"\n"] {
        let mut c = Cluster::new(61, 0.0, mode, true);
        let mut seen = BTreeSet::new();
        let mut socks = Vec::new();
        for node in [2, 3] {
            let id = c.ids[node];
            for _ in 0..200 {
                let st = &mut c.sim.host_mut(id).stack;
                let u = st.udp_bind(SocketAddrV4::new(DVIPA, 0)).expect("udp bind");
                let p = st.udp_local_addr(u).unwrap().port();
                assert!(seen.insert(p), "{mode}: port {p} given twice (equal allocators on both stacks)");
                socks.push((node, u, p));
            }
        }
        let owner = |c: &Cluster, p: u16| {
            let st = &c.sim.host(c.ids[1]).stack;
            let sc = (st.cluster() as &dyn std::any::Any).downcast_ref::<StackCluster>().unwrap();
            sc.ports().owner(DVIPA, p, SERVER).map(|o| o.slot)
        };
        assert!(socks.iter().all(|(n, _, p)| owner(&c, *p) == Some(*n as u8 - 1)), "{mode}: registered to their stacks");
        let now = c.sim.now();
        for (n, u, _) in &socks {
            let id = c.ids[*n];
            c.sim.host_mut(id).stack.close(now, *u).unwrap();
        }
        c.sim.kick();
        c.sim.run_for(Duration::from_millis(20));
        assert!(socks.iter().all(|(_, _, p)| owner(&c, *p).is_none()), "{mode}: released at close");
    }
}

// ---- live connection handoff (issue 14) ---------------------------------------------------

const SVC: u16 = 81;

impl Cluster {
    /// The server host becomes the client: s1 (the router) listens on DVIPA:81 and echoes; the
    /// client opens `k` connections to it.
    fn handoff_setup(&mut self, k: usize) {
        let s1 = self.ids[1];
        let now = self.sim.now();
        let l = self.sim.host_mut(s1).stack.tcp_listen(now, SocketAddrV4::new(DVIPA, SVC), 1024).unwrap();
        self.sim.host_mut(s1).listener = Some(l);
        let c = self.ids[0];
        self.sim.host_mut(c).echo = false;
        for _ in 0..k {
            let h = self.sim.host_mut(c).stack.tcp_connect(now, None, SocketAddrV4::new(DVIPA, SVC)).expect("connect");
            self.clients.push(Client { node: 0, h, up: false, failed: None, sent: 0, expect: VecDeque::new(), mismatched: false });
        }
        self.sim.kick();
    }

    /// Drive the clients until every one is connected, at most 10 s: a lost SYN costs 1 s, a
    /// second loss 2 more (seed 1402 of the chain lost two in a row; 3 s was too short).
    fn until_connected(&mut self, chunk: usize, total: usize) {
        for _ in 0..350 {
            if self.clients.iter().all(|x| x.up) {
                return;
            }
            self.run_ms(chunk, total, 30);
        }
    }

    /// Move every connection `from` serves to stack `to` (by name).
    fn transfer_all(&mut self, from: usize, to: &str) -> usize {
        let id = self.ids[from];
        let now = self.sim.now();
        let node = self.sim.host_mut(id);
        let hs = std::mem::take(&mut node.serving);
        let mut moved = 0;
        for h in hs {
            match handoff::transfer(&mut node.stack, now, h, to, b"app state", false) {
                Ok(_) => moved += 1,
                Err(handoff::TransferError::Offer { restored: Some(nh), .. }) => node.serving.push(nh),
                Err(_) => node.serving.push(h),
            }
        }
        self.sim.kick();
        moved
    }

    /// Run `ms` of simulated time, driving the clients.
    fn run_ms(&mut self, chunk: usize, total: usize, ms: u64) {
        for _ in 0..ms {
            self.drive(chunk, total);
            let step_to = self.sim.now() + Duration::from_millis(1);
            self.sim.run_until(step_to, |_| false);
        }
    }
}

/// Connections with data flowing both ways move s1 -> s2 -> s3 -> s1 (the router's own stack):
/// the client's byte streams are exactly what it sent, nothing is reset, nothing times out.
fn handoff_chain(seed: u64, loss: f64) {
    let mut c = Cluster::new(seed, loss, "", false);
    c.handoff_setup(8);
    let total = 256 * 1024;
    c.until_connected(1024, total);
    assert!(c.clients.iter().all(|x| x.up), "seed {seed}: connected: {}", c.summary());
    assert_eq!(c.transfer_all(1, "s2"), 8, "seed {seed}: s1 offered all");
    c.run_ms(1024, total, 40);
    assert_eq!(c.transfer_all(2, "s3"), 8, "seed {seed}: s2 had them all and offered them on: {}", c.summary());
    c.run_ms(1024, total, 40);
    assert_eq!(c.transfer_all(3, "s1"), 8, "seed {seed}: s3 had them all: {}", c.summary());
    assert!(c.exchange(1024, total, 120), "seed {seed}: every byte echoed after three moves: {}", c.summary());
    // A RST or a timeout would show as `failed` (Event::Reset / Event::TimedOut).
    assert!(c.clients.iter().all(|x| x.failed.is_none() && !x.mismatched), "seed {seed}: {}", c.summary());
    if loss == 0.0 {
        // On a clean link the client never saw anything its view of the connection refuses:
        // no TSval older than one it had (PAWS), no data outside its window, nothing that
        // needed a challenge ACK.
        let cl = c.sim.host(c.ids[0]);
        for x in &c.clients {
            let k = &cl.stack.tcp(x.h).expect("client connection").counters;
            assert_eq!((k.paws_drops, k.unacceptable_segs, k.challenge_acks), (0, 0, 0), "seed {seed}: {k:?}");
        }
    }
    for n in [1, 2, 3] {
        let o = &c.sim.host(c.ids[n]).outcomes;
        assert!(o.iter().all(|o| matches!(o, TransferOutcome::Accepted { .. })), "seed {seed}: s{n}: {o:?}");
    }
}

#[test]
fn handoff_chain_moves_live_connections_without_a_reset() {
    handoff_chain(71, 0.0);
}

#[test]
fn handoff_chain_under_loss_reordering_and_duplication() {
    let n: u64 = std::env::var("PLEX_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let start: u64 = std::env::var("PLEX_SIM_SEED_START").ok().and_then(|v| v.parse().ok()).unwrap_or(700);
    for seed in start..start + n {
        handoff_chain(seed, 0.01);
    }
}

/// The target refuses: the connection comes back to its source, which processes what it held
/// and goes on; the client sees nothing.
#[test]
fn a_rejected_transfer_comes_back_to_its_source() {
    let mut c = Cluster::new(81, 0.01, "", false);
    c.handoff_setup(4);
    let s2 = c.ids[2];
    c.sim.host_mut(s2).reject = Some(7);
    let total = 128 * 1024;
    c.run_ms(1024, total, 30);
    assert_eq!(c.transfer_all(1, "s2"), 4);
    assert!(c.exchange(1024, total, 60), "every byte echoed: {}", c.summary());
    assert!(c.clients.iter().all(|x| x.failed.is_none() && !x.mismatched));
    let o = &c.sim.host(c.ids[1]).outcomes;
    assert_eq!(o.len(), 4);
    assert!(o.iter().all(|o| matches!(o, TransferOutcome::Rejected { reason: 7, handle: Some(_) })), "{o:?}");
}

/// The target dies before it decides: the source gives up (it is declared failed, or the
/// offer times out), takes the connection back and goes on: exactly one owner, no reset.
#[test]
fn a_target_that_dies_before_deciding_leaves_the_connection_with_its_source() {
    for (seed, loss) in [(91, 0.0), (92, 0.01), (93, 0.01), (94, 0.02)] {
        target_dies_before_deciding(seed, loss);
    }
}

fn target_dies_before_deciding(seed: u64, loss: f64) {
    let mut c = Cluster::new(seed, loss, "", false);
    c.handoff_setup(4);
    let total = 128 * 1024;
    c.run_ms(1024, total, 30);
    c.until_connected(1024, total);
    assert_eq!(c.transfer_all(1, "s3"), 4, "seed {seed}");
    c.kill(3);
    assert!(c.exchange(1024, total, 60), "every byte echoed: {}", c.summary());
    assert!(c.clients.iter().all(|x| x.failed.is_none() && !x.mismatched));
    let o = &c.sim.host(c.ids[1]).outcomes;
    assert!(o.len() == 4 && o.iter().all(|o| matches!(o, TransferOutcome::Aborted { handle: Some(_) })), "{o:?}");
}

/// The source (here also the router) dies after its offer: the target may still take the
/// connection (it has the whole record), and as the backup it routes the address too: the
/// client goes on, without a reset (what the source held is retransmitted by the client).
#[test]
fn a_source_that_dies_after_offering_leaves_the_connection_with_the_target() {
    for (seed, loss) in [(101, 0.0), (102, 0.01), (103, 0.01), (104, 0.02)] {
        source_dies_after_offering(seed, loss);
    }
}

fn source_dies_after_offering(seed: u64, loss: f64) {
    let mut c = Cluster::new(seed, loss, "", false);
    c.handoff_setup(4);
    let total = 128 * 1024;
    c.run_ms(1024, total, 30);
    c.until_connected(1024, total);
    let s2 = c.ids[2];
    c.sim.host_mut(s2).lagging = true; // s2 reads its mail at its next timer, after the kill
    assert_eq!(c.transfer_all(1, "s2"), 4, "seed {seed}");
    c.kill(1);
    assert!(c.exchange(1024, total, 60), "every byte echoed: {}", c.summary());
    assert!(c.clients.iter().all(|x| x.failed.is_none() && !x.mismatched), "{}", c.summary());
    assert_eq!(c.sim.host(s2).serving.len(), 4, "s2 owns them");
}

/// The target dies after it took the connections: they died with it (exactly one owner, the
/// dead one); the source does not resurrect them, and the router resets the client at once
/// instead of leaving it to time out.
#[test]
fn a_target_that_dies_after_accepting_takes_the_connections_with_it() {
    let mut c = Cluster::new(111, 0.0, "", false);
    c.handoff_setup(4);
    let total = 128 * 1024;
    c.run_ms(1024, total, 30);
    assert_eq!(c.transfer_all(1, "s2"), 4);
    // s2 reads the offers at its next turn: a frame (none comes: s1 holds the client's) or its
    // heartbeat (10 ms).
    c.run_ms(1024, total, 15);
    let s2 = c.ids[2];
    assert_eq!(c.sim.host(s2).serving.len(), 4, "s2 took them");
    c.kill(2);
    c.exchange(1024, total, 10);
    let o = &c.sim.host(c.ids[1]).outcomes;
    assert!(o.len() == 4 && o.iter().all(|o| matches!(o, TransferOutcome::Accepted { .. })), "{o:?}");
    assert!(c.sim.host(c.ids[1]).serving.is_empty(), "the source has none of them back");
    assert!(c.clients.iter().all(|x| x.failed == Some(Event::Reset)), "the client is told: {}", c.summary());
}

/// A reply that reaches the router before it has read the target's NEWCONN (the router's turn
/// lags) is routed all the same: by the NEWCONN the router reads before deciding on an unknown
/// flow, or by the owner of its port in the registry; none is reset.
#[test]
fn replies_that_overtake_newconn_are_routed() {
    let mut c = Cluster::new(21, 0.0, "cluster_ports = true\n", false);
    let r = c.ids[1];
    c.sim.host_mut(r).lagging = true;
    c.connect(2, 32, true);
    c.connect(3, 32, true);
    assert!(c.exchange(512, 4096, 30), "every connection echoed: {}", c.summary());
    assert!(c.clients.iter().all(|c| c.failed.is_none() && !c.mismatched));
    let (by_port, by_crt) = c.router_paths();
    eprintln!("router forwarded {by_port} segments by port owner, {by_crt} by its CRT");
    assert!(by_port + by_crt > 0);
    assert_eq!(c.sim.host(r).stack.counters().tcp_rst_out, 0);
}

/// A port is the stack's until its connection is freed after TIME-WAIT (2 MSL), not when the
/// application closes it; a listener's port is claimed at bind, refused to another stack, and
/// given back at close.
#[test]
fn ports_are_released_after_time_wait_and_binds_are_exclusive() {
    let mut c = Cluster::new(31, 0.0, "cluster_ports = true\n", false);
    c.connect(2, 4, true);
    assert!(c.exchange(64, 256, 10));
    let ports: Vec<u16> = c.tuples().iter().map(|t| t.1.port()).collect();
    let owner = |c: &Cluster, p: u16| {
        let st = &c.sim.host(c.ids[1]).stack;
        let sc = (st.cluster() as &dyn std::any::Any).downcast_ref::<StackCluster>().unwrap();
        sc.ports().owner(DVIPA, p, SERVER).map(|o| o.slot)
    };
    // s2 closes first: its connections wait in TIME-WAIT.
    let s2 = c.ids[2];
    let now = c.sim.now();
    let hs: Vec<SocketHandle> = c.clients.iter().map(|c| c.h).collect();
    for h in hs {
        c.sim.host_mut(s2).stack.close(now, h).unwrap();
    }
    c.sim.kick();
    c.sim.run_for(Duration::from_secs(1));
    assert!(ports.iter().all(|p| owner(&c, *p) == Some(1)), "closed, in TIME-WAIT: still s2's");
    c.sim.run_for(Duration::from_secs(61));
    assert!(ports.iter().all(|p| owner(&c, *p).is_none()), "freed after TIME-WAIT: released");
    // An explicit bind on the DVIPA: s2's, refused to s3, free again once s2 closes it.
    let now = c.sim.now();
    let l = c.sim.host_mut(s2).stack.tcp_listen(now, SocketAddrV4::new(DVIPA, 5555), 8).expect("s2 binds");
    let s3 = c.ids[3];
    let e = c.sim.host_mut(s3).stack.tcp_listen(now, SocketAddrV4::new(DVIPA, 5555), 8);
    assert_eq!(e.err(), Some(stack::iface::ApiError::AddrInUse));
    // The distributed port is shared: both listen.
    c.sim.host_mut(s2).stack.tcp_listen(now, SocketAddrV4::new(DVIPA, 80), 8).expect("s2 on the distributed port");
    c.sim.host_mut(s3).stack.tcp_listen(now, SocketAddrV4::new(DVIPA, 80), 8).expect("s3 on the distributed port");
    c.sim.host_mut(s2).stack.close(now, l).unwrap();
    c.sim.kick();
    c.sim.run_for(Duration::from_millis(20));
    let now = c.sim.now();
    c.sim.host_mut(s3).stack.tcp_listen(now, SocketAddrV4::new(DVIPA, 5555), 8).expect("s3 binds once s2 closed");
}

/// A killed stack's ports stay claimed for the quarantine (its connections' segments may
/// still be in flight), then a live member reclaims them.
#[test]
fn a_dead_stacks_ports_are_reclaimed_after_the_quarantine() {
    let mut c = Cluster::new(41, 0.0, "cluster_ports = true\n", false);
    c.connect(3, 8, true);
    assert!(c.exchange(64, 256, 10));
    let ports: Vec<u16> = c.tuples().iter().map(|t| t.1.port()).collect();
    let owned = |c: &Cluster| {
        let st = &c.sim.host(c.ids[1]).stack;
        let sc = (st.cluster() as &dyn std::any::Any).downcast_ref::<StackCluster>().unwrap();
        ports.iter().filter(|p| sc.ports().owner(DVIPA, **p, SERVER).is_some()).count()
    };
    c.kill(3);
    c.sim.run_for(Duration::from_millis(400));
    assert_eq!(owned(&c), 8, "declared failed (lease 100 ms), inside the 500 ms quarantine: kept");
    c.sim.run_for(Duration::from_millis(800));
    assert_eq!(owned(&c), 0, "after the quarantine: reclaimed");
}

/// `cluster_ports` turned on while connections exist (`plex ctl ports enable`): the stack that
/// has them records their ports first, so a stack whose allocator draws exactly the same
/// ports (equal seeds) gets other ones; without that record it would open the same 4-tuples.
#[test]
fn cluster_ports_enabled_at_run_time_records_the_ports_in_use() {
    let mut c = Cluster::new(121, 0.0, "", true);
    c.connect(2, 16, true);
    assert!(c.exchange(512, 2048, 10), "s2's connections: {}", c.summary());
    let region = coupling::Region::attach(std::path::Path::new(&c.region), true).expect("attach");
    let s1 = c.ids[1];
    let scfg = {
        let st = &c.sim.host(s1).stack;
        let sc = (st.cluster() as &dyn std::any::Any).downcast_ref::<StackCluster>().unwrap();
        sc.config().clone()
    };
    coupling::ports::enable(&region, &scfg, DVIPA, coupling::config::PortsMode::Port, 1).expect("enable");
    c.sim.run_for(Duration::from_millis(50));
    for cl in c.clients.iter_mut() {
        cl.sent = 0;
    }
    c.connect(3, 16, true);
    assert!(c.exchange(512, 4096, 20), "every connection echoed: {}", c.summary());
    assert!(c.clients.iter().all(|x| x.failed.is_none() && !x.mismatched), "{}", c.summary());
    let ports: BTreeSet<u16> = c.tuples().iter().map(|t| t.1.port()).collect();
    assert_eq!(ports.len(), 32, "s3 took none of s2's ports");
}

/// Without cluster_ports too: a reply that reaches a router whose turn read its rings before
/// the target's NEWCONN came is routed once the router reads its mail (it does so before
/// deciding on an unknown flow), not answered with a RST that costs the connection a
/// retransmission timeout. (bench --cluster found 1-second stalls of such connections.)
#[test]
fn without_cluster_ports_replies_that_overtake_newconn_are_not_reset() {
    let mut c = Cluster::new(131, 0.0, "", false);
    let r = c.ids[1];
    c.sim.host_mut(r).lagging = true;
    c.connect(2, 16, true);
    c.connect(3, 16, true);
    let start = c.sim.now();
    assert!(c.exchange(512, 2048, 30), "every connection echoed: {}", c.summary());
    let took = c.sim.now() - start;
    assert!(took < Duration::from_millis(500), "no connection waited for a SYN retransmission ({took:?})");
    let st = &c.sim.host(r).stack;
    assert_eq!(st.counters().tcp_rst_out, 0, "the router reset nothing");
}

/// The test above can fail: without the registry, two stacks whose allocators draw the same
/// ports open the same 4-tuple, and connections break.
#[test]
fn without_cluster_ports_equal_allocators_collide() {
    let mut c = Cluster::new(3, 0.0, "", true);
    c.connect(2, 16, true);
    c.connect(3, 16, true);
    c.exchange(512, 4096, 20);
    let tuples = c.tuples();
    let ports: BTreeSet<u16> = tuples.iter().map(|(_, l)| l.port()).collect();
    let broken = c.clients.iter().filter(|c| c.failed.is_some() || c.mismatched || !c.expect.is_empty() || c.sent < 4096).count();
    assert!(ports.len() < tuples.len(), "the two stacks picked the same ports ({} distinct of {})", ports.len(), tuples.len());
    assert!(broken > 0, "and the collisions broke connections");
}

/// The router dies while the targets hold outbound connections through the DVIPA: its backup
/// takes the address and routes the replies; no connection is reset and no byte is lost.
#[test]
fn router_death_resets_no_outbound_connection() {
    let mut by_port = 0;
    for seed in [11, 12, 13] {
        let mut c = Cluster::new(seed, 0.0, "cluster_ports = true\n", false);
        c.connect(2, 16, true);
        c.connect(3, 16, true);
        assert!(c.exchange(256, 2048, 20), "seed {seed}: before the kill");
        c.kill(1);
        for cl in c.clients.iter_mut() {
            cl.sent = 0;
        }
        assert!(c.exchange(256, 8192, 60), "seed {seed}: after the kill, every connection echoed again");
        let failed = c.clients.iter().filter(|c| c.failed.is_some()).count();
        assert_eq!(failed, 0, "seed {seed}: connections reset or timed out");
        assert!(c.clients.iter().all(|c| !c.mismatched));
        let s2 = c.ids[2];
        assert!(c.sim.host(s2).stack.homes().iter().any(|h| h.addr == DVIPA && !h.internal), "seed {seed}: s2 routes now");
        let sc = (c.sim.host(s2).stack.cluster() as &dyn std::any::Any).downcast_ref::<StackCluster>().unwrap();
        by_port += sc.ports_forwarded;
    }
    // (How many replies the new router routed by port owner rather than by its rebuilt table:
    // in the simulator the targets' reports and the old table's hints come first.)
    eprintln!("new router forwarded {by_port} replies by port owner");
}

// The APIs' transfer (issue 14): the blocking and readiness APIs move their connections with
// the bytes their rings hold; transfer listeners take them; a stack transfers to itself. ------

/// An echo application on one stack, written against the APIs (nonblocking mode): what it
/// read and could not write back yet is its own state, and travels as the transfer's
/// application state.
enum Conn {
    Blocking(api::TcpStream),
    Ready(nb::TcpStream),
}

struct Echo {
    conn: Conn,
    /// Read, not yet written back.
    pending: Vec<u8>,
}

impl Echo {
    /// Echo what can be echoed now: read only when all that was read is written back.
    fn step(&mut self) {
        use std::io::{Read, Write};
        let mut buf = [0u8; 16384];
        loop {
            if !self.pending.is_empty() {
                let r = match &self.conn {
                    Conn::Blocking(s) => (&*s).write(&self.pending),
                    Conn::Ready(s) => s.try_write(&self.pending),
                };
                match r {
                    Ok(n) => drop(self.pending.drain(..n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(e) => panic!("echo write: {e}"),
                }
                continue;
            }
            let r = match &self.conn {
                Conn::Blocking(s) => (&*s).read(&mut buf),
                Conn::Ready(s) => s.try_read(&mut buf),
            };
            match r {
                Ok(0) => return,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("echo read: {e}"),
            }
        }
    }
}

/// The applications of s1..s3 (index 1..=3) and their listeners.
#[derive(Default)]
struct Apps {
    echo: [Vec<Echo>; 4],
    listener: Option<api::TcpListener>,
    moved_in_ready: Vec<(usize, nb::TransferListener)>,
    moved_in_blocking: Vec<(usize, api::TransferListener)>,
    /// The state each moved connection arrived with, and its source.
    arrivals: Vec<(usize, String, usize)>,
}

impl Apps {
    fn step(&mut self) {
        if let Some(l) = &self.listener {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                self.echo[1].push(Echo { conn: Conn::Blocking(s), pending: Vec::new() });
            }
        }
        for (n, l) in &self.moved_in_ready {
            while let Ok((s, how)) = l.try_accept() {
                self.arrivals.push((*n, how.from.clone(), how.app_state.len()));
                self.echo[*n].push(Echo { conn: Conn::Ready(s), pending: how.app_state });
            }
        }
        for (n, l) in &self.moved_in_blocking {
            while let Ok((s, how)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                self.arrivals.push((*n, how.from.clone(), how.app_state.len()));
                self.echo[*n].push(Echo { conn: Conn::Blocking(s), pending: how.app_state });
            }
        }
        for e in self.echo.iter_mut().flatten() {
            e.step();
        }
    }
}

impl Cluster {
    /// Make s1..s3's application the APIs' bridge; their `Net`s, s1's first.
    fn with_bridges(&mut self) -> Vec<Net> {
        (1..=3)
            .map(|n| {
                let (net, bridge) = api::bridge(None);
                let id = self.ids[n];
                self.sim.host_mut(id).bridge = Some(bridge);
                net
            })
            .collect()
    }

    /// One millisecond: the clients, the applications, the bridges, the wire.
    fn api_step(&mut self, apps: &mut Apps, chunk: usize, total: usize) {
        self.drive(chunk, total);
        apps.step();
        let now = self.sim.now();
        for n in 1..=3 {
            let id = self.ids[n];
            if !self.sim.host(id).dead {
                self.sim.host_mut(id).handoffs(now);
            }
        }
        self.sim.kick();
        let step_to = self.sim.now() + Duration::from_millis(1);
        self.sim.run_until(step_to, |_| false);
    }

    /// Run `f` (a blocking call) on a thread of its own while the simulation goes on.
    fn call<T: Send>(&mut self, apps: &mut Apps, chunk: usize, total: usize, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|sc| {
            let j = sc.spawn(f);
            for _ in 0..20_000 {
                if j.is_finished() {
                    break;
                }
                self.api_step(apps, chunk, total);
                // Give the calling thread time to run: simulated time should not race ahead
                // of it (each step is a simulated millisecond).
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            j.join().expect("the blocking call")
        })
    }

    /// Poll readiness-API futures (transfers) to completion while the simulation goes on.
    fn finish<T>(&mut self, apps: &mut Apps, chunk: usize, total: usize, mut futs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + '_>>>) -> Vec<T> {
        let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..20_000 {
            for (i, f) in futs.iter_mut().enumerate() {
                if out[i].is_none() {
                    if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                        out[i] = Some(v);
                    }
                }
            }
            if out.iter().all(Option::is_some) {
                break;
            }
            self.api_step(apps, chunk, total);
        }
        out.into_iter().map(|v| v.expect("the transfer finished")).collect()
    }
}

/// Connections served through the APIs move s1 (blocking API) -> s2 (readiness API, its
/// rings full both ways at the move) -> s3 (blocking transfer listener) -> s3 itself
/// (re-parented, not serialized) -> s1 (readiness API); one offer to a stack without a transfer
/// listener is refused and the stream comes back and goes on. The clients' byte streams are
/// exactly what they sent: the bytes the rings held travelled in their place, what the
/// application held travelled as its state; nothing is reset.
///
/// `fill`: the clients stop reading before the second move, so every buffer and ring is full
/// when it happens. A wire tap on the client checks no data ever comes past the window it
/// announced. (This test found two bugs of the TCP core, both with a tap-verified stall: a
/// filling receive buffer's window edge crept past its ring, and an ACK advancing SND.UNA on
/// an old segment left the old window sliding forward; see stack/src/tcp/conn/tests.rs.)
fn api_transfers(seed: u64, loss: f64, fill: bool) {
    const K: usize = 4;
    let (chunk, total) = (4 * 1024, 3 * 1024 * 1024);
    let mut c = Cluster::new(seed, loss, "", false);
    let nets = c.with_bridges();
    let mut apps = Apps::default();
    let svc = SocketAddrV4::new(DVIPA, SVC);
    let net1 = nets[0].clone();
    let l = c.call(&mut apps, chunk, total, move || api::TcpListener::bind(&net1, svc)).expect("listen on s1");
    l.set_nonblocking(true).unwrap();
    apps.listener = Some(l);
    apps.moved_in_ready.push((2, nb::TransferListener::bind(&nets[1], svc).unwrap()));
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let l3 = api::TransferListener::bind(&nets[2], any).unwrap();
    l3.set_nonblocking(true).unwrap();
    apps.moved_in_blocking.push((3, l3));
    let client = c.ids[0];
    c.sim.host_mut(client).echo = false;
    c.sim.host_mut(client).tap = Some(HashMap::new());
    let now = c.sim.now();
    for _ in 0..K {
        let h = c.sim.host_mut(client).stack.tcp_connect(now, None, svc).expect("connect");
        c.clients.push(Client { node: 0, h, up: false, failed: None, sent: 0, expect: VecDeque::new(), mismatched: false });
    }
    c.sim.kick();
    // Connected first (a lost SYN costs a second), then data both ways.
    c.in_flight = Some(0);
    for _ in 0..10_000 {
        if apps.echo[1].len() == K && c.clients.iter().all(|x| x.up) {
            break;
        }
        c.api_step(&mut apps, chunk, total);
    }
    assert_eq!(apps.echo[1].len(), K, "seed {seed}: s1 accepted them: {}", c.summary());
    c.in_flight = None;
    for _ in 0..20 {
        c.api_step(&mut apps, chunk, total);
    }

    // s1 -> s2 through the blocking API, each from a thread of its own (as blocking code is).
    let moving: Vec<Echo> = std::mem::take(&mut apps.echo[1]);
    let results = c.call(&mut apps, chunk, total, move || {
        std::thread::scope(|sc| {
            let js: Vec<_> = moving
                .into_iter()
                .map(|e| {
                    sc.spawn(move || match e.conn {
                        Conn::Blocking(s) => s.transfer("s2", &e.pending).map_err(|f| f.error.to_string()),
                        Conn::Ready(_) => unreachable!(),
                    })
                })
                .collect();
            js.into_iter().map(|j| j.join().unwrap()).collect::<Vec<_>>()
        })
    });
    assert!(results.iter().all(|r| r.as_deref() == Ok("s2")), "seed {seed}: {results:?}");
    for _ in 0..500 {
        if apps.echo[2].len() == K {
            break;
        }
        c.api_step(&mut apps, chunk, total);
    }
    assert_eq!(apps.echo[2].len(), K, "seed {seed}: s2's transfer listener took them: {}", c.summary());

    // The clients stop reading: s2's writes back block, then its application stops reading
    // (it holds what it could not write): every buffer fills.
    c.reads_paused = fill;
    c.in_flight = fill.then_some(total);
    let mut full = !fill;
    let mut state = Vec::new();
    for _ in 0..if fill { 10_000 } else { 0 } {
        c.api_step(&mut apps, chunk, total);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        state = apps.echo[2]
            .iter()
            .map(|e| match &e.conn {
                Conn::Ready(s) => (s.poll_write_ready(&mut cx).is_pending(), s.poll_read_ready(&mut cx).is_ready(), e.pending.len()),
                Conn::Blocking(_) => (false, false, 0),
            })
            .collect();
        full = state.iter().all(|&(w, r, _)| w && r);
        if full {
            break;
        }
    }
    let sent: Vec<usize> = c.clients.iter().map(|x| x.sent).collect();
    assert!(full, "seed {seed}: s2's rings are full both ways: (tx full, rx bytes, app pending) {state:?}, client sent {sent:?}: {}{}\nbeyond: {:?}", c.summary(), c.flows(), c.sim.host(client).beyond_window);
    // s2 -> s3 through the readiness API, rings full: their bytes travel in the record.
    let moving: Vec<Echo> = std::mem::take(&mut apps.echo[2]);
    let futs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>>>>> = moving
        .into_iter()
        .map(|e| {
            let Conn::Ready(s) = e.conn else { unreachable!() };
            Box::pin(async move { s.transfer("s3", &e.pending).await.map_err(|f| f.error.to_string()) }) as _
        })
        .collect();
    let results = c.finish(&mut apps, chunk, total, futs);
    assert!(results.iter().all(|r| r.as_deref() == Ok("s3")), "seed {seed}: {results:?}");
    c.reads_paused = false;
    for _ in 0..50 {
        c.api_step(&mut apps, chunk, total);
    }
    assert_eq!(apps.echo[3].len(), K, "seed {seed}: s3's blocking transfer listener took them: {}", c.summary());

    // s3 -> s3: re-parented on the same stack, to its own transfer listener.
    let moving: Vec<Echo> = std::mem::take(&mut apps.echo[3]);
    let results = c.call(&mut apps, chunk, total, move || {
        moving
            .into_iter()
            .map(|e| match e.conn {
                Conn::Blocking(s) => s.transfer("s3", &e.pending).map_err(|f| f.error.to_string()),
                Conn::Ready(_) => unreachable!(),
            })
            .collect::<Vec<_>>()
    });
    assert!(results.iter().all(|r| r.as_deref() == Ok("s3")), "seed {seed}: {results:?}");
    for _ in 0..20 {
        c.api_step(&mut apps, chunk, total);
    }
    assert_eq!(apps.echo[3].len(), K, "seed {seed}: s3 took them back from itself");
    let reparented = apps.arrivals.iter().filter(|a| a.0 == 3 && a.1 == "s3").count();
    assert_eq!(reparented, K, "seed {seed}: {:?}", apps.arrivals);

    // s3 -> s1, which has no transfer listener yet: refused, and the streams come back.
    let moving: Vec<Echo> = std::mem::take(&mut apps.echo[3]);
    let back = c.call(&mut apps, chunk, total, move || {
        moving
            .into_iter()
            .map(|e| match e.conn {
                Conn::Blocking(s) => match s.transfer("s1", &e.pending) {
                    Ok(to) => panic!("s1 has no transfer listener, yet {to} took it"),
                    Err(f) => {
                        assert_eq!(f.error.kind(), std::io::ErrorKind::ConnectionRefused, "{}", f.error);
                        Echo { conn: Conn::Blocking(f.stream.expect("the stream comes back")), pending: e.pending }
                    }
                },
                Conn::Ready(_) => unreachable!(),
            })
            .collect::<Vec<_>>()
    });
    apps.echo[3] = back;
    for _ in 0..50 {
        c.api_step(&mut apps, chunk, total);
    }
    // Now s1 takes them, through the readiness API.
    apps.moved_in_ready.push((1, nb::TransferListener::bind(&nets[0], svc).unwrap()));
    for _ in 0..5 {
        c.api_step(&mut apps, chunk, total);
    }
    let moving: Vec<Echo> = std::mem::take(&mut apps.echo[3]);
    let results = c.call(&mut apps, chunk, total, move || {
        moving
            .into_iter()
            .map(|e| match e.conn {
                Conn::Blocking(s) => s.transfer("s1", &e.pending).map_err(|f| f.error.to_string()),
                Conn::Ready(_) => unreachable!(),
            })
            .collect::<Vec<_>>()
    });
    assert!(results.iter().all(|r| r.as_deref() == Ok("s1")), "seed {seed}: {results:?}");

    let deadline = c.sim.now() + Duration::from_secs(120);
    while c.sim.now() < deadline {
        c.api_step(&mut apps, chunk, total);
        if c.clients.iter().all(|x| x.failed.is_some() || (x.sent == total && x.expect.is_empty())) {
            break;
        }
    }
    assert!(c.clients.iter().all(|x| x.failed.is_none() && !x.mismatched && x.sent == total && x.expect.is_empty()), "seed {seed}: every byte echoed, in order, nothing reset: {}", c.summary());
    let beyond = &c.sim.host(client).beyond_window;
    assert!(beyond.is_empty(), "seed {seed}: the client received data past the window it announced: {beyond:?}");
    assert_eq!(apps.echo[1].len(), K);
    if loss == 0.0 {
        // On a clean link the client never saw anything its view of the connection refuses:
        // no TSval older than one it had (PAWS), no segment outside its window (not even a
        // pure ACK while its window was closed), nothing that needed a challenge ACK.
        let cl = c.sim.host(c.ids[0]);
        for x in &c.clients {
            let k = &cl.stack.tcp(x.h).expect("client connection").counters;
            assert_eq!((k.paws_drops, k.unacceptable_segs, k.challenge_acks), (0, 0, 0), "seed {seed}: {k:?}");
        }
    }
}

#[test]
fn the_apis_transfer_connections_with_the_bytes_their_rings_hold() {
    api_transfers(121, 0.0, true);
}

#[test]
fn the_apis_transfer_under_loss_reordering_and_duplication() {
    let n: u64 = std::env::var("PLEX_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let start: u64 = std::env::var("PLEX_SIM_SEED_START").ok().and_then(|v| v.parse().ok()).unwrap_or(900);
    for seed in start..start + n {
        // Odd seeds move with every buffer full, even ones with the windows open.
        api_transfers(seed, 0.01, seed % 2 == 1);
    }
}

