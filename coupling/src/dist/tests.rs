//! The distributor with several stacks (a Node and a Distributor each) on one region in one
//! process, time simulated: routing by every method, listeners coming and going, replays,
//! full rings, router takeover and takeback, target failure, corrupt rows, and a property test
//! over random sequences of all of it.

use super::*;
use crate::node::{Action, Identity};
use crate::ops;
use crate::ring::Consumer;
use std::collections::{BTreeMap, BTreeSet};

const MS: u64 = 1_000_000;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const NAMES: [&str; 4] = ["s1", "s2", "s3", "s4"];

/// A cluster of four stacks; DVIPA 198.18.0.100 (primary s1, backups s2 rank 20, s3 rank 10)
/// distributed on port 80 with `dist` (the inside of `distribute = {..}`).
fn config(dist: &str) -> String {
    let mut s = String::from("[cluster]\nname = \"t\"\nlease_ms = 100\nheartbeat_ms = 10\n");
    for (i, n) in NAMES.iter().enumerate() {
        s += &format!("[[stack]]\nname = \"{n}\"\ninterface = \"plx-{i}\"\naddress = \"198.18.0.{}/24\"\n", 11 + i);
    }
    s += &format!(
        "[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\nbackups = [{{ stack = \"s2\", rank = 20 }}, {{ stack = \"s3\", rank = 10 }}]\ndistribute = {{ {dist} }}\n"
    );
    s
}

fn rr_s2_s3() -> String {
    config("ports = [80], targets = [\"s2\", \"s3\"], method = \"round_robin\"")
}

struct Stack {
    node: Node,
    dist: Distributor,
    /// Addresses the node holds (answered in ARP).
    home: BTreeSet<Ipv4Addr>,
    /// Internal addresses (candidate).
    internal: BTreeSet<Ipv4Addr>,
    /// The fast-path mirror (XDP map) of the flows this stack routes.
    fast: BTreeMap<(SocketAddrV4, SocketAddrV4), u8>,
    /// TCP connections installed on this stack.
    conns: BTreeSet<(SocketAddrV4, SocketAddrV4)>,
    /// Listeners per port on VIP.
    listening: BTreeMap<u16, u32>,
    /// A stalled distributor: the node runs, the distributor is not driven.
    frozen: bool,
}

struct Sim {
    region: Arc<Region>,
    cfg: Arc<ClusterConfig>,
    now: u64,
    stacks: BTreeMap<String, Stack>,
    next_client: u16,
}

fn sock(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP, port)
}

fn client(n: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), n)
}

impl Sim {
    fn new(toml: &str) -> Sim {
        let cfg = Arc::new(ClusterConfig::parse(toml, "test").unwrap());
        let region = Arc::new(Region::anonymous(&cfg.name, cfg.hash()));
        Sim { region, cfg, now: 1_000 * MS, stacks: BTreeMap::new(), next_client: 10_000 }
    }

    fn slot(&self, name: &str) -> u8 {
        self.cfg.slot(name).unwrap() as u8
    }

    fn name(&self, slot: u8) -> String {
        self.cfg.stacks[slot as usize].name.clone()
    }

    fn join(&mut self, name: &str) {
        let ident = Identity { pid: 1000 + self.slot(name) as u32 + (self.now / MS) as u32 % 1000, ..Identity::default() };
        let node = Node::join(self.region.clone(), self.cfg.clone(), name, ident, self.now).unwrap();
        let dist = Distributor::new(&node);
        let st = Stack {
            node,
            dist,
            home: BTreeSet::new(),
            internal: BTreeSet::new(),
            fast: BTreeMap::new(),
            conns: BTreeSet::new(),
            listening: BTreeMap::new(),
            frozen: false,
        };
        self.stacks.insert(name.to_string(), st);
    }

    fn join_all(&mut self, names: &[&str]) {
        for n in names {
            self.join(n);
            self.settle();
        }
    }

    fn tick(&mut self, name: &str) {
        let now = self.now;
        let Some(st) = self.stacks.get_mut(name) else { return };
        let counts: BTreeMap<Ipv4Addr, usize> =
            st.home.iter().map(|a| (*a, st.dist.node_conns(*a, st.conns.iter().filter(|c| c.0.ip() == a).count()))).collect();
        let mut acts = Vec::new();
        st.node.tick(now, &|a| counts.get(&a).copied().unwrap_or(0), &mut acts);
        for a in acts {
            match a {
                Action::Activate { addr, .. } => {
                    st.home.insert(addr);
                }
                Action::Deactivate { addr, .. } => {
                    st.home.remove(&addr);
                    if !st.dist.is_candidate(addr) {
                        st.conns.retain(|c| *c.0.ip() != addr);
                    }
                }
                Action::HandBack { .. } | Action::Standby { .. } => {}
            }
        }
        if st.frozen {
            return;
        }
        let mut out = Vec::new();
        st.dist.tick(now, &mut st.node, &mut out);
        Self::apply(st, out);
    }

    fn poll(&mut self, name: &str) {
        let now = self.now;
        let Some(st) = self.stacks.get_mut(name) else { return };
        if st.frozen {
            return;
        }
        let mut out = Vec::new();
        st.dist.poll(now, &mut st.node, &mut out);
        Self::apply(st, out);
    }

    fn apply(st: &mut Stack, out: Vec<DistAction>) {
        for a in out {
            match a {
                DistAction::Candidate { addr, .. } => {
                    st.internal.insert(addr);
                }
                DistAction::NotCandidate { addr } => {
                    st.internal.remove(&addr);
                }
                DistAction::RoutingStarted { .. } => {}
                DistAction::RoutingStopped { addr } => st.fast.retain(|k, _| *k.0.ip() != addr),
                DistAction::FlowInstalled { local, remote, target } => {
                    st.fast.insert((local, remote), target);
                }
                DistAction::FlowRemoved { local, remote } => {
                    st.fast.remove(&(local, remote));
                }
            }
        }
    }

    /// One heartbeat: every stack ticks, then every stack polls (a turn).
    fn step(&mut self) {
        self.now += 10 * MS;
        let names: Vec<String> = self.stacks.keys().cloned().collect();
        for n in &names {
            self.tick(n);
        }
        for n in &names {
            self.poll(n);
        }
        self.check_one_router();
    }

    fn settle(&mut self) {
        for _ in 0..8 {
            self.step();
        }
    }

    fn router(&self) -> Option<String> {
        let r: Vec<&String> = self.stacks.iter().filter(|(_, s)| s.home.contains(&VIP)).map(|(n, _)| n).collect();
        assert!(r.len() <= 1, "two stacks answer for the DVIPA: {r:?}");
        r.first().map(|s| s.to_string())
    }

    fn check_one_router(&self) {
        let routing: Vec<&String> = self.stacks.iter().filter(|(_, s)| s.dist.routes(VIP)).map(|(n, _)| n).collect();
        let owner = check::owner_word(&self.cfg, true, self.region.dvipas()[0].owner.load(Ordering::Acquire)).unwrap();
        for n in &routing {
            // A stack may still list itself routing for the rest of a turn; it forwards only
            // while the owner word names it.
            if owner.held() && self.name(owner.owner) != **n {
                assert!(!self.stacks[*n].home.contains(&VIP), "{n} routes without holding the address");
            }
        }
    }

    fn listen(&mut self, name: &str, port: u16, count: u32) {
        let now = self.now;
        let st = self.stacks.get_mut(name).unwrap();
        st.listening.insert(port, count);
        st.dist.listeners(now, sock(port), count);
    }

    /// A client's SYN to VIP:80 from a new port: where it went (the stack that accepted it).
    fn syn(&mut self) -> (Route, Option<String>, SocketAddrV4) {
        self.next_client += 1;
        let c = client(self.next_client);
        let (r, t) = self.syn_from(c);
        (r, t, c)
    }

    fn syn_from(&mut self, c: SocketAddrV4) -> (Route, Option<String>) {
        let Some(router) = self.router() else { return (Route::Hold, None) };
        let now = self.now;
        let route = self.stacks.get_mut(&router).unwrap().dist.route(now, sock(80), c, true);
        let target = match route {
            Route::Forward { slot } => Some(self.name(slot)),
            Route::Local => Some(router.clone()),
            _ => None,
        };
        if let Some(t) = &target {
            if let Some(st) = self.stacks.get_mut(t) {
                if st.listening.get(&80).copied().unwrap_or(0) > 0 && st.internal.contains(&VIP) | st.home.contains(&VIP) {
                    st.conns.insert((sock(80), c));
                    st.dist.connection_opened(now, sock(80), c, false);
                }
            }
        }
        (route, target)
    }

    /// A non-SYN segment of flow `c` as the router sees it.
    fn segment(&mut self, c: SocketAddrV4) -> Route {
        let Some(router) = self.router() else { return Route::Hold };
        let now = self.now;
        self.stacks.get_mut(&router).unwrap().dist.route(now, sock(80), c, false)
    }

    fn close(&mut self, name: &str, c: SocketAddrV4) {
        let now = self.now;
        let st = self.stacks.get_mut(name).unwrap();
        assert!(st.conns.remove(&(sock(80), c)));
        st.dist.connection_closed(now, sock(80), c);
    }

    /// kill -9: no more ticks; a survivor's pidfd fires.
    fn kill(&mut self, name: &str) {
        let st = self.stacks.remove(name).unwrap();
        let (slot, inc) = (st.node.slot(), st.node.incarnation());
        let now = self.now;
        if let Some(other) = self.stacks.values_mut().next() {
            assert!(other.node.declare_failed(now, slot, inc));
        }
    }

    /// Where every connection to VIP:80 on a live stack lives.
    fn live_flows(&self) -> Vec<(SocketAddrV4, String)> {
        self.stacks.iter().flat_map(|(n, s)| s.conns.iter().filter(|c| c.0 == sock(80)).map(move |c| (c.1, n.clone()))).collect()
    }

    /// Every connection on the DVIPA (any port) on a live stack: (local, remote, stack).
    fn all_flows(&self) -> Vec<(SocketAddrV4, SocketAddrV4, String)> {
        self.stacks.iter().flat_map(|(n, s)| s.conns.iter().filter(|c| *c.0.ip() == VIP).map(move |c| (c.0, c.1, n.clone()))).collect()
    }

    /// `name` connects out from VIP:`port` (an active open).
    fn connect(&mut self, name: &str, port: u16) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let now = self.now;
        let st = self.stacks.get_mut(name)?;
        if !st.internal.contains(&VIP) {
            return None;
        }
        let (l, r) = (SocketAddrV4::new(VIP, port), SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 8080));
        if !st.conns.insert((l, r)) {
            return None;
        }
        st.dist.connection_opened(now, l, r, true);
        // The reply to its SYN reaches the router after the router's next turn began, and a
        // turn starts with poll().
        let names: Vec<String> = self.stacks.keys().cloned().collect();
        for n in &names {
            self.poll(n);
        }
        Some((l, r))
    }

    /// Every live flow routes to exactly the stack that has it (or is held while the router
    /// rebuilds), never reset; no other stack forwards it; the fast path agrees.
    fn check_flows(&mut self, strict: bool) {
        let router = self.router();
        let now = self.now;
        for (local, c, owner) in self.all_flows() {
            let mut forwarders = Vec::new();
            for (n, st) in self.stacks.iter_mut() {
                let r = st.dist.route(now, local, c, false);
                match r {
                    Route::Forward { slot } => forwarders.push((n.clone(), self.cfg.stacks[slot as usize].name.clone())),
                    Route::Local => forwarders.push((n.clone(), n.clone())),
                    Route::Reset => panic!("live flow {c} of {owner} reset by {n} at {now}"),
                    Route::Hold => {
                        assert!(!strict, "live flow {c} of {owner} held by {n} after settling");
                        assert!(st.dist.rebuilding(VIP) || !st.home.contains(&VIP), "held by {n} outside a rebuild");
                    }
                    Route::NotDistributed => {}
                }
            }
            assert!(forwarders.len() <= 1, "two routers forward {c}: {forwarders:?}");
            if let Some((by, to)) = forwarders.first() {
                assert_eq!(to, &owner, "{c} routed by {by} to {to}, but {owner} has it");
                // The one stack that forwards is the one the owner word names (a stack
                // whose node let the address go forwards nothing once the word moves).
                let w = check::owner_word(&self.cfg, true, self.region.dvipas()[0].owner.load(Ordering::Acquire)).unwrap();
                assert!(w.held() && self.cfg.stacks[w.owner as usize].name == *by, "{by} forwards {c}, the owner word says {w:?}");
                let _ = &router;
            } else if strict {
                panic!("live flow {c} of {owner} not routed (router {router:?})");
            }
            if let Some(r) = &router {
                let st = &self.stacks[r];
                if let Some(t) = st.fast.get(&(local, c)) {
                    assert_eq!(self.name(*t), owner, "fast path of {r} sends {c} elsewhere");
                }
            }
        }
    }

    fn crt_targets(&self) -> BTreeMap<SocketAddrV4, String> {
        ops::crt(&self.region, &self.cfg, self.now).into_iter().filter(|v| v.current).map(|v| (v.remote, v.target)).collect()
    }
}

fn started(dist: &str, targets_listen: &[&str]) -> Sim {
    let mut s = Sim::new(&config(dist));
    s.join_all(&NAMES);
    for t in targets_listen {
        s.listen(t, 80, 1);
    }
    s.settle();
    assert_eq!(s.router().as_deref(), Some("s1"));
    s
}

#[test]
fn round_robin_over_two_targets_with_matching_crt_entries() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    assert!(s.stacks["s2"].internal.contains(&VIP) && s.stacks["s3"].internal.contains(&VIP));
    assert!(!s.stacks["s1"].internal.contains(&VIP), "s1 is not a candidate");
    let (r1, t1, c1) = s.syn();
    let (r2, t2, c2) = s.syn();
    assert_eq!((r1, t1.as_deref()), (Route::Forward { slot: 1 }, Some("s2")));
    assert_eq!((r2, t2.as_deref()), (Route::Forward { slot: 2 }, Some("s3")));
    let crt = s.crt_targets();
    assert_eq!(crt.get(&c1).map(String::as_str), Some("s2"));
    assert_eq!(crt.get(&c2).map(String::as_str), Some("s3"));
    assert_eq!(crt.len(), 2);
    // Later segments follow; the fast path mirrors the entries.
    assert_eq!(s.segment(c1), Route::Forward { slot: 1 });
    s.step();
    assert_eq!(s.stacks["s1"].fast.get(&(sock(80), c2)), Some(&2));
    // Ports that are not distributed are the router's own traffic; unknown flows reset.
    let now = s.now;
    assert_eq!(s.stacks.get_mut("s1").unwrap().dist.route(now, sock(22), client(5), true), Route::NotDistributed);
    assert_eq!(s.segment(client(6)), Route::Reset);
    // The ctl views.
    let dpt = ops::dpt(&s.region, &s.cfg);
    assert_eq!(dpt.len(), 2, "{dpt:?}");
    assert!(dpt.iter().all(|d| d.ready && d.listeners == 1 && d.router == "s1" && d.current && d.conns == 1 && d.syns == 1));
    let lines = ops::dpt_lines(&s.region, &s.cfg);
    assert!(lines[1].contains("198.18.0.100:80") && lines[1].contains("ready"), "{lines:?}");
    let lines = ops::crt_lines(&s.region, &s.cfg, s.now);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(ops::invalid_rows(&s.region, &s.cfg, s.now).total(), 0);
    s.check_flows(true);
}

#[test]
fn weighted_round_robin_follows_the_weights() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], method = \"weighted_round_robin\", weights = { s2 = 3, s3 = 1 }", &["s2", "s3"]);
    let picks: Vec<String> = (0..8).map(|_| s.syn().1.unwrap()).collect();
    assert_eq!(picks, ["s2", "s2", "s3", "s2", "s2", "s2", "s3", "s2"]);
    let dpt = ops::dpt(&s.region, &s.cfg);
    s.step();
    let dpt2 = ops::dpt(&s.region, &s.cfg);
    assert_eq!(dpt2.iter().map(|d| (d.target.as_str(), d.weight, d.syns)).collect::<Vec<_>>(), [("s2", 3, 6), ("s3", 1, 2)], "{dpt:?}");
}

#[test]
fn least_connections_fills_the_emptiest_target() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], method = \"least_connections\"", &["s2"]);
    let first: Vec<(SocketAddrV4, String)> = (0..3).map(|_| s.syn()).map(|(_, t, c)| (c, t.unwrap())).collect();
    assert!(first.iter().all(|(_, t)| t == "s2"));
    s.listen("s3", 80, 1);
    s.settle();
    let next: Vec<String> = (0..3).map(|_| s.syn().1.unwrap()).collect();
    assert_eq!(next, ["s3", "s3", "s3"]);
    // 3 and 3: ties go in turn.
    let tie: Vec<String> = (0..2).map(|_| s.syn().1.unwrap()).collect();
    assert_eq!(tie.iter().collect::<BTreeSet<_>>().len(), 2);
    // Two of s2's connections end (TERMCONN): s2 has the fewest.
    s.close("s2", first[0].0);
    s.close("s2", first[1].0);
    s.settle();
    assert_eq!(s.syn().1.as_deref(), Some("s2"));
    assert_eq!(s.syn().1.as_deref(), Some("s2"));
    s.check_flows(true);
}

#[test]
fn server_weight_follows_the_reported_figures() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], method = \"server_weight\"", &["s2", "s3"]);
    let now = s.now;
    s.stacks.get_mut("s2").unwrap().dist.set_acceptance(now, sock(80), 300, 0.0);
    s.stacks.get_mut("s3").unwrap().dist.set_acceptance(now, sock(80), 200, 0.5);
    s.settle();
    let picks: Vec<String> = (0..8).map(|_| s.syn().1.unwrap()).collect();
    assert_eq!(picks.iter().filter(|p| *p == "s2").count(), 6, "{picks:?}");
    let dpt = ops::dpt(&s.region, &s.cfg);
    assert_eq!(dpt.iter().map(|d| d.weight).collect::<Vec<_>>(), [300, 100]);
    assert_eq!(dpt[1].busy_permille, 500);
    // A saturated target (busy 1.0) gets nothing while another can take it.
    let now = s.now;
    s.stacks.get_mut("s3").unwrap().dist.set_acceptance(now, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 0, 1.0);
    s.stacks.get_mut("s3").unwrap().dist.set_acceptance(now, sock(80), 500, 1.0);
    s.settle();
    assert!((0..6).all(|_| s.syn().1.as_deref() == Some("s2")));
}

#[test]
fn a_listener_outside_the_candidate_list_never_gets_a_syn() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3", "s4"]);
    assert!(!s.stacks["s4"].internal.contains(&VIP));
    for _ in 0..20 {
        let t = s.syn().1.unwrap();
        assert_ne!(t, "s4");
    }
    assert!(s.stacks["s1"].dist.dpt_of(VIP).iter().all(|(_, t, _, _)| *t != 3));
    // Even a SRVSTAT it forges is not taken.
    let s4 = &s.stacks["s4"];
    let m = Message { kind: kind::SRVSTAT, from_slot: 3, from_incarnation: s4.node.incarnation() as u32, payload: [80 << 16 | 5 << 32, 1 << 40, 100, 0, 0, 0, 0] };
    Producer::new(s.region.ring(3, 0).unwrap()).push(&m).unwrap();
    s.settle();
    assert_eq!(s.stacks["s1"].dist.stats.not_candidate, 1);
    assert!((0..10).all(|_| s.syn().1.as_deref() != Some("s4")));
}

#[test]
fn closing_the_last_listener_stops_syns_but_not_the_open_flows() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    let flows: Vec<(SocketAddrV4, String)> = (0..4).map(|_| s.syn()).map(|(_, t, c)| (c, t.unwrap())).collect();
    s.listen("s2", 80, 0);
    s.settle();
    assert_eq!(ops::dpt(&s.region, &s.cfg).iter().filter(|d| d.ready).count(), 1);
    for _ in 0..6 {
        assert_eq!(s.syn().1.as_deref(), Some("s3"));
    }
    for (c, t) in &flows {
        assert_eq!(s.segment(*c), Route::Forward { slot: s.slot(t) });
    }
    // A's connection ends (TERMCONN): its entry goes.
    let (c, t) = flows.iter().find(|(_, t)| t == "s2").unwrap().clone();
    s.close(&t, c);
    s.settle();
    assert_eq!(s.segment(c), Route::Reset);
    assert!(!s.crt_targets().contains_key(&c));
    assert!(!s.stacks["s1"].fast.contains_key(&(sock(80), c)));
    // Draining works the same way, and undrains.
    let now = s.now;
    s.stacks.get_mut("s3").unwrap().dist.set_draining(now, sock(80), true);
    s.listen("s2", 80, 2);
    s.settle();
    assert!((0..4).all(|_| s.syn().1.as_deref() == Some("s2")));
    let now = s.now;
    s.stacks.get_mut("s3").unwrap().dist.set_draining(now, sock(80), false);
    s.settle();
    assert_eq!((0..4).filter(|_| s.syn().1.as_deref() == Some("s3")).count(), 2);
    s.check_flows(true);
}

#[test]
fn replayed_and_duplicated_reports_are_harmless() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    let inc2 = s.stacks["s2"].node.incarnation() as u32;
    let region = s.region.clone();
    let ring = region.ring(1, 0).unwrap();
    let srv = |listeners: u64, seq: u64| Message { kind: kind::SRVSTAT, from_slot: 1, from_incarnation: inc2, payload: [80 << 16 | listeners << 32, seq, 128, 0, 0, 0, 0] };
    // A new one, the same again, and an old one saying "closed".
    Producer::new(ring).push(&srv(4, 1000)).unwrap();
    Producer::new(ring).push(&srv(4, 1000)).unwrap();
    Producer::new(ring).push(&srv(0, 999)).unwrap();
    s.settle();
    assert!(s.stacks["s1"].dist.dpt_of(VIP).contains(&(80, 1, 4, false)));
    assert_eq!(s.stacks["s1"].dist.stats.srvstat_replays, 2);
    // A NEWCONN delivered twice is one flow.
    let c = client(7);
    let now = s.now;
    s.stacks.get_mut("s3").unwrap().dist.connection_opened(now, sock(80), c, true);
    s.stacks.get_mut("s3").unwrap().conns.insert((sock(80), c));
    let m = Message { kind: kind::NEWCONN, from_slot: 2, from_incarnation: s.stacks["s3"].node.incarnation() as u32, payload: [80 << 16, client_word(c), 2, 1, s.stacks["s3"].node.incarnation(), 0, 0] };
    Producer::new(s.region.ring(2, 0).unwrap()).push(&m).unwrap();
    s.settle();
    assert_eq!(s.stacks["s1"].dist.flow_count(VIP), 1);
    assert_eq!(s.segment(c), Route::Forward { slot: 2 });
    // The flow ends; the NEWCONN replayed after its TERMCONN does not bring it back, and a
    // TERMCONN replayed after a new connection on the same tuple does not end that one.
    let now = s.now;
    s.stacks.get_mut("s3").unwrap().dist.connection_closed(now, sock(80), c);
    s.stacks.get_mut("s3").unwrap().conns.remove(&(sock(80), c));
    s.settle();
    Producer::new(s.region.ring(2, 0).unwrap()).push(&m).unwrap();
    s.settle();
    assert_eq!(s.stacks["s1"].dist.flow_count(VIP), 0);
    assert_eq!(s.segment(c), Route::Reset);
    let term = Message { kind: kind::TERMCONN, payload: [80 << 16, client_word(c), 2, 3, s.stacks["s3"].node.incarnation(), 0, 0], ..m };
    let now = s.now;
    s.stacks.get_mut("s3").unwrap().dist.connection_opened(now, sock(80), c, true);
    s.stacks.get_mut("s3").unwrap().conns.insert((sock(80), c));
    s.settle();
    Producer::new(s.region.ring(2, 0).unwrap()).push(&term).unwrap();
    s.settle();
    assert_eq!(s.segment(c), Route::Forward { slot: 2 });
    assert_eq!(s.stacks["s1"].dist.stats.conn_replays, 2);
    // A message from a former incarnation is not taken.
    let stale = Message { from_incarnation: inc2.wrapping_sub(1), ..srv(0, 5000) };
    Producer::new(ring).push(&stale).unwrap();
    s.settle();
    assert!(s.stacks["s1"].dist.dpt_of(VIP).contains(&(80, 1, 4, false)));
    assert!(s.stacks["s1"].dist.invalid.get(Invalid::Message) >= 1);
    s.check_flows(true);
}

#[test]
fn an_active_open_on_a_target_gets_its_replies_routed() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2"]);
    // s3 connects out from VIP:40000 (any port: the router routes it by its CRT entry).
    let local = SocketAddrV4::new(VIP, 40_000);
    let server = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 8080);
    let now = s.now;
    s.stacks.get_mut("s3").unwrap().dist.connection_opened(now, local, server, true);
    // The router reads the NEWCONN at its next turn, before the reply is handled.
    s.poll("s1");
    let now = s.now;
    assert_eq!(s.stacks.get_mut("s1").unwrap().dist.route(now, local, server, false), Route::Forward { slot: 2 });
    s.stacks.get_mut("s3").unwrap().dist.connection_closed(now, local, server);
    s.settle();
    let now = s.now;
    assert_eq!(s.stacks.get_mut("s1").unwrap().dist.route(now, local, server, false), Route::NotDistributed);
}

#[test]
fn the_router_can_be_a_target_too() {
    let mut s = started("ports = [80], targets = \"all\"", &["s1", "s2"]);
    assert!(s.stacks["s1"].internal.contains(&VIP) && s.stacks["s4"].internal.contains(&VIP));
    let picks: Vec<(Route, String)> = (0..4).map(|_| s.syn()).map(|(r, t, _)| (r, t.unwrap())).collect();
    assert_eq!(picks[0], (Route::Local, "s1".to_string()));
    assert_eq!(picks[1], (Route::Forward { slot: 1 }, "s2".to_string()));
    assert_eq!(picks[2].1, "s1");
    s.settle();
    s.check_flows(true);
    // No target at all: the router keeps SYNs it listens for itself, else resets.
    s.listen("s2", 80, 0);
    s.listen("s1", 80, 0);
    s.settle();
    assert_eq!(s.syn().0, Route::Reset);
}

/// Ten flows over s2 and s3 routed by s1, which is then killed: s2 (backup rank 20, a
/// target too) takes over, asks, rebuilds; no live flow is reset at any step and every flow
/// routes to its target afterwards; flows nobody reports are held during the window, then reset.
#[test]
fn router_failure_rebuilds_from_reports_and_resets_nothing() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], grace_ms = 500", &["s2", "s3"]);
    let flows: Vec<(SocketAddrV4, String)> = (0..10).map(|_| s.syn()).map(|(_, t, c)| (c, t.unwrap())).collect();
    s.settle();
    let before = s.crt_targets();
    s.stacks.get_mut("s3").unwrap().frozen = true;
    s.kill("s1");
    for k in 0..30 {
        if k == 1 {
            s.stacks.get_mut("s3").unwrap().frozen = false;
        }
        s.step();
        s.check_flows(false);
        if k == 0 {
            assert_eq!(s.router().as_deref(), Some("s2"));
            // Before s3 has reported, its flows go where the old CRT says (a hint).
            assert!(s.stacks["s2"].dist.rebuilding(VIP));
            let (c, _) = flows.iter().find(|(_, t)| t == "s3").unwrap();
            assert_eq!(s.segment(*c), Route::Forward { slot: 2 });
            assert!(s.stacks["s2"].dist.stats.hint_forwards > 0);
        }
    }
    assert_eq!(s.router().as_deref(), Some("s2"));
    assert!(!s.stacks["s2"].dist.rebuilding(VIP));
    s.check_flows(true);
    for (c, t) in &flows {
        let r = s.segment(*c);
        assert!(r == Route::Forward { slot: s.slot(t) } || (t == "s2" && r == Route::Local), "{c}: {r:?}");
    }
    // The rebuilt CRT equals the old one, under the new router.
    assert_eq!(s.crt_targets(), before);
    assert!(ops::crt(&s.region, &s.cfg, s.now).iter().all(|v| v.router == "s2" && v.current));
    assert_eq!(s.segment(client(3)), Route::Reset);
    assert_eq!(s.stacks["s2"].dist.stats.rebuilds, 1);
    // New connections keep being spread.
    let t: BTreeSet<String> = (0..4).map(|_| s.syn().1.unwrap()).collect();
    assert_eq!(t.len(), 2);
}

/// The new router holds, never resets, a flow whose target has not reported yet (its
/// distributor is stalled and the old CRT gave no hint), then routes it once the report comes.
#[test]
fn a_flow_not_yet_rebuilt_is_held_then_delivered() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], grace_ms = 2000", &["s2", "s3"]);
    let flows: Vec<(SocketAddrV4, String)> = (0..6).map(|_| s.syn()).map(|(_, t, c)| (c, t.unwrap())).collect();
    s.settle();
    // No hints: wipe the CRT the router left.
    for row in s.region.crt() {
        row.ctl.store(0, Ordering::Relaxed);
    }
    s.stacks.get_mut("s3").unwrap().frozen = true;
    s.kill("s1");
    for _ in 0..20 {
        s.step();
        s.check_flows(false);
    }
    let (c3, _) = flows.iter().find(|(_, t)| t == "s3").unwrap();
    assert_eq!(s.segment(*c3), Route::Hold);
    assert!(s.stacks["s2"].dist.rebuilding(VIP));
    assert!(s.stacks["s2"].dist.stats.held > 0);
    // A SYN while only s2 has reported goes to s2.
    assert_eq!(s.syn().1.as_deref(), Some("s2"));
    s.stacks.get_mut("s3").unwrap().frozen = false;
    s.settle();
    assert!(!s.stacks["s2"].dist.rebuilding(VIP));
    assert_eq!(s.segment(*c3), Route::Forward { slot: 2 });
    s.check_flows(true);
}

/// The grace window ends the hold even if a target never answers.
#[test]
fn the_grace_window_ends_a_rebuild_without_every_report() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], grace_ms = 200", &["s2", "s3"]);
    s.settle();
    s.stacks.get_mut("s3").unwrap().frozen = true;
    s.kill("s1");
    s.step();
    assert_eq!(s.segment(client(9)), Route::Hold);
    for _ in 0..25 {
        s.step();
    }
    assert!(!s.stacks["s2"].dist.rebuilding(VIP));
    assert_eq!(s.stacks["s2"].dist.stats.rebuild_timeouts, 1);
    assert_eq!(s.segment(client(9)), Route::Reset);
}

/// The primary returns: it prepares, the holder relays its routes, the primary takes the
/// address back; every flow, including those opened and closed meanwhile, is routed to its
/// target at every step and none is reset.
#[test]
fn takeback_loses_no_flow() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], grace_ms = 500", &["s2", "s3"]);
    for _ in 0..8 {
        s.syn();
    }
    s.kill("s1");
    s.settle();
    s.settle();
    assert_eq!(s.router().as_deref(), Some("s2"));
    for _ in 0..4 {
        s.syn();
    }
    s.join("s1");
    let mut closed = 0;
    for k in 0..60 {
        s.step();
        s.check_flows(false);
        if k % 7 == 3 {
            s.syn();
        }
        if k % 11 == 5 {
            if let Some((c, t)) = s.live_flows().into_iter().next() {
                s.close(&t, c);
                closed += 1;
            }
        }
    }
    assert_eq!(s.router().as_deref(), Some("s1"));
    assert!(closed > 0);
    s.settle();
    s.check_flows(true);
    assert!(s.stacks["s2"].dist.stats.routes_relayed >= 12);
    assert_eq!(s.stacks["s1"].dist.stats.takebacks_prepared, 1);
    assert!(!s.stacks["s2"].dist.routes(VIP));
    assert!(s.stacks["s2"].fast.is_empty(), "the old router cleared its fast path");
    // The CRT now names s1, and holds exactly the live flows.
    let live: BTreeMap<SocketAddrV4, String> = s.live_flows().into_iter().collect();
    assert_eq!(s.crt_targets(), live);
    assert!(ops::crt(&s.region, &s.cfg, s.now).iter().all(|v| v.router == "s1"));
}

/// The primary's takeback request reaches the holder before the holder routes (its
/// distributor stalled): the primary asks again, and the address still comes home.
#[test]
fn takeback_retries_a_request_the_holder_could_not_answer() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], grace_ms = 200", &["s2", "s3"]);
    for _ in 0..4 {
        s.syn();
    }
    s.stacks.get_mut("s2").unwrap().frozen = true;
    s.kill("s1");
    // s2's node takes the address over while its distributor is stalled; s1 returns and
    // asks it then.
    s.step();
    s.step();
    assert_eq!(s.router().as_deref(), Some("s2"));
    assert!(!s.stacks["s2"].dist.routes(VIP));
    s.join("s1");
    for _ in 0..3 {
        s.step();
    }
    s.stacks.get_mut("s2").unwrap().frozen = false;
    for _ in 0..200 {
        s.step();
        s.check_flows(false);
    }
    assert_eq!(s.router().as_deref(), Some("s1"));
    s.check_flows(true);
}

/// A router that stalls (its lease lapses, a backup takes over) and wakes up forwards nothing:
/// before its next tick the owner word stops it (hold), at its tick it stops routing.
#[test]
fn a_stalled_router_that_wakes_up_does_not_forward() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    let flows: Vec<(SocketAddrV4, String)> = (0..4).map(|_| s.syn()).map(|(_, t, c)| (c, t.unwrap())).collect();
    let stalled = s.stacks.remove("s1").unwrap();
    for _ in 0..40 {
        s.step();
    }
    assert_eq!(s.router().as_deref(), Some("s2"));
    s.stacks.insert("s1".into(), stalled);
    let now = s.now;
    for (c, _) in &flows {
        assert_eq!(s.stacks.get_mut("s1").unwrap().dist.route(now, sock(80), *c, false), Route::Hold);
    }
    s.step();
    assert!(!s.stacks["s1"].dist.routes(VIP));
    assert!(s.stacks["s1"].fast.is_empty());
    assert_eq!(s.stacks["s1"].node.stats.fenced, 1);
    s.settle();
    s.check_flows(true);
}

/// While a backup routes, new connections go to its own target list.
#[test]
fn a_backup_uses_its_own_target_list() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], backup_targets = { s2 = [\"s3\"] }", &["s2", "s3"]);
    let t: BTreeSet<String> = (0..4).map(|_| s.syn().1.unwrap()).collect();
    assert_eq!(t.len(), 2);
    s.kill("s1");
    s.settle();
    s.settle();
    assert_eq!(s.router().as_deref(), Some("s2"));
    assert!((0..6).all(|_| s.syn().1.as_deref() == Some("s3")));
    s.check_flows(true);
}

#[test]
fn a_failed_target_gets_no_syn_and_its_flows_reset() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    let flows: Vec<(SocketAddrV4, String)> = (0..6).map(|_| s.syn()).map(|(_, t, c)| (c, t.unwrap())).collect();
    s.kill("s3");
    s.step();
    for (c, t) in &flows {
        let r = s.segment(*c);
        if t == "s3" {
            assert_eq!(r, Route::Reset);
        } else {
            assert_eq!(r, Route::Forward { slot: 1 });
        }
    }
    assert_eq!(s.stacks["s1"].dist.stats.resets_dead_target, 3);
    assert!(s.stacks["s1"].fast.values().all(|t| *t == 1), "dead flows left the fast path");
    assert!((0..6).all(|_| s.syn().1.as_deref() == Some("s2")));
    assert!(ops::dpt(&s.region, &s.cfg).iter().any(|d| d.target == "s3" && d.down));
    // A SYN reusing a dead flow's tuple is a new connection.
    let (c, _) = flows.iter().find(|(_, t)| t == "s3").unwrap();
    assert_eq!(s.syn_from(*c).1.as_deref(), Some("s2"));
    s.check_flows(true);
}

#[test]
fn a_full_ring_loses_no_report() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2"]);
    let now = s.now;
    let conns: Vec<SocketAddrV4> = (0..150).map(|k| SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 20_000 + k)).collect();
    for c in &conns {
        let st = s.stacks.get_mut("s3").unwrap();
        st.dist.connection_opened(now, sock(80), *c, true);
        st.conns.insert((sock(80), *c));
    }
    assert!(s.stacks["s3"].dist.stats.ring_full > 0);
    assert!(s.stacks["s3"].dist.queued_to(0) > 0);
    for _ in 0..6 {
        s.step();
    }
    assert_eq!(s.stacks["s3"].dist.queued_to(0), 0);
    assert_eq!(s.stacks["s1"].dist.flow_count(VIP), 150);
    s.check_flows(true);
    // The same through a takeover: 150 NEWCONNs in a report, more than a ring holds.
    s.kill("s1");
    for _ in 0..20 {
        s.step();
        s.check_flows(false);
    }
    assert_eq!(s.stacks["s2"].dist.flow_count(VIP), 150);
    s.check_flows(true);
}

#[test]
fn corrupt_rows_are_counted_and_ignored() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"], grace_ms = 300", &["s2", "s3"]);
    let flows: Vec<(SocketAddrV4, String)> = (0..6).map(|_| s.syn()).map(|(_, t, c)| (c, t.unwrap())).collect();
    s.settle();
    // Scribble over every DPT row and half the CRT (the rows in use included).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for row in s.region.dpt() {
        row.key.store(next(), Ordering::Relaxed);
        row.flags.store(next() as u32, Ordering::Relaxed);
    }
    s.region.crt()[1].ctl.store(crt_ctl(CRT_WRITING, 0, 1, 1), Ordering::Relaxed);
    s.region.crt()[3].ctl.store(crt_ctl(CRT_WRITING, 0, 2, 1), Ordering::Relaxed);
    for (i, row) in s.region.crt().iter().enumerate() {
        if i % 2 == 0 {
            row.ctl.store(next() | 2, Ordering::Relaxed);
            row.client.store(next(), Ordering::Relaxed);
        }
    }
    let bad = ops::invalid_rows(&s.region, &s.cfg, s.now);
    assert!(bad.get(Invalid::DptRow) > 0 && bad.get(Invalid::CrtRow) > 0, "{}", bad.summary());
    let _ = ops::dpt_lines(&s.region, &s.cfg);
    let _ = ops::crt_lines(&s.region, &s.cfg, s.now);
    // The router routes from its own table; a new router takes nothing from garbage.
    s.settle();
    s.check_flows(true);
    s.kill("s1");
    for _ in 0..40 {
        s.step();
        s.check_flows(false);
    }
    assert!(s.stacks["s2"].dist.invalid.get(Invalid::CrtRow) > 0);
    // Rows the dead router left half-written are freed by its successor.
    assert!(s.region.crt().iter().all(|r| { let c = r.ctl.load(Ordering::Relaxed); !(c as u8 == CRT_WRITING && (c >> 8) as u8 == 0) }));
    s.check_flows(true);
    for (c, t) in &flows {
        let r = s.segment(*c);
        assert!(r == Route::Forward { slot: s.slot(t) } || r == Route::Local);
    }
}

/// A SYN its target never takes (no connection, so no NEWCONN) leaves no entry for ever;
/// a taken one is confirmed and stays.
#[test]
fn entries_no_target_confirms_expire() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    let (_, _, kept) = s.syn();
    let refused = client(4242);
    let now = s.now;
    assert!(matches!(s.stacks.get_mut("s1").unwrap().dist.route(now, sock(80), refused, true), Route::Forward { .. }));
    s.step();
    assert_eq!(s.stacks["s1"].dist.flow_count(VIP), 2);
    let end = s.now + UNCONFIRMED_NS + SCAN_NS;
    while s.now <= end {
        s.step();
    }
    assert_eq!(s.stacks["s1"].dist.flow_count(VIP), 1);
    assert_eq!(s.stacks["s1"].dist.stats.unconfirmed_expired, 1);
    assert_eq!(s.segment(refused), Route::Reset);
    assert!(matches!(s.segment(kept), Route::Forward { .. }));
    assert!(!s.crt_targets().contains_key(&refused));
    s.check_flows(true);
}

#[test]
fn a_full_crt_keeps_or_resets_new_syns() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    // Every row taken (by rows another router is writing).
    for row in s.region.crt() {
        row.ctl.store(crt_ctl(CRT_WRITING, 3, 0, 0), Ordering::Relaxed);
    }
    assert_eq!(s.syn().0, Route::Reset);
    assert_eq!(s.stacks["s1"].dist.stats.crt_full, 1);
    // A router that listens itself keeps it.
    s.listen("s1", 80, 1);
    assert_eq!(s.syn().0, Route::Local);
    assert_eq!(s.stacks["s1"].dist.stats.crt_full, 2);
}

/// Two distributed DVIPAs routed by two stacks share the region's tables; one router's
/// failure touches only its own DVIPA's flows.
#[test]
fn two_routers_share_the_tables() {
    let vip2 = Ipv4Addr::new(198, 18, 0, 101);
    let mut t = config("ports = [80], targets = [\"s2\", \"s3\"]");
    t += "[[dvipa]]\naddress = \"198.18.0.101/24\"\nprimary = \"s2\"\nbackups = [{ stack = \"s3\", rank = 5 }]\ndistribute = { ports = \"all\", targets = [\"s3\", \"s4\"], method = \"least_connections\" }\n";
    let mut s = Sim::new(&t);
    s.join_all(&NAMES);
    for n in ["s2", "s3"] {
        s.listen(n, 80, 1);
    }
    let now = s.now;
    for n in ["s3", "s4"] {
        s.stacks.get_mut(n).unwrap().dist.listeners(now, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7000), 1);
    }
    s.settle();
    assert!(s.stacks["s2"].dist.routes(vip2) && s.stacks["s1"].dist.routes(VIP));
    let l2 = SocketAddrV4::new(vip2, 7000);
    let mut on2 = Vec::new();
    for k in 0..6 {
        let c = client(30_000 + k);
        let now = s.now;
        let r = s.stacks.get_mut("s2").unwrap().dist.route(now, l2, c, true);
        let Route::Forward { slot } = r else { panic!("{r:?}") };
        let name = s.name(slot);
        let st = s.stacks.get_mut(&name).unwrap();
        st.conns.insert((l2, c));
        st.dist.connection_opened(now, l2, c, false);
        on2.push((c, slot));
    }
    assert_eq!(on2.iter().filter(|(_, t)| *t == 3).count(), 3);
    for _ in 0..4 {
        s.syn();
    }
    s.settle();
    let crt = ops::crt(&s.region, &s.cfg, s.now);
    assert_eq!(crt.iter().filter(|v| *v.local.ip() == vip2 && v.router == "s2").count(), 6);
    assert_eq!(crt.iter().filter(|v| *v.local.ip() == VIP && v.router == "s1").count(), 4);
    assert_eq!(ops::dpt(&s.region, &s.cfg).len(), 4);
    // s2 dies: its VIP 80 flows reset at s1, its DVIPA moves to s3, which rebuilds it.
    s.kill("s2");
    s.settle();
    s.settle();
    assert!(s.stacks["s3"].dist.routes(vip2));
    for (c, t) in &on2 {
        let now = s.now;
        let r = s.stacks.get_mut("s3").unwrap().dist.route(now, l2, *c, false);
        assert_eq!(r, if *t == 3 { Route::Forward { slot: 3 } } else { Route::Local });
    }
    assert_eq!(s.stacks["s1"].dist.stats.resets_dead_target, 0);
    let gone: Vec<SocketAddrV4> = ops::crt(&s.region, &s.cfg, s.now).iter().filter(|v| v.target == "s2").map(|v| v.remote).collect();
    assert!(gone.is_empty(), "rows of the dead target's flows are deleted: {gone:?}");
    s.check_flows(true);
}

#[test]
fn distribute_config_parses_and_errors_name_the_statement() {
    let c = ClusterConfig::parse(&config("ports = [443, 80], targets = \"all\", method = \"weighted_round_robin\", weights = { s2 = 3 }, backup_targets = { s2 = [\"s3\", \"s4\"] }"), "t").unwrap();
    let d = c.dvipas[0].distribute.as_ref().unwrap();
    assert_eq!(d.ports, crate::config::DistPorts::List(vec![80, 443]));
    assert_eq!(d.targets, vec![0, 1, 2, 3]);
    assert_eq!((d.weights[1], d.weights[2]), (3, 1));
    assert_eq!(d.targets_of(1), &[2, 3]);
    assert_eq!(d.targets_of(2), &[0, 1, 2, 3]);
    assert_eq!(d.grace_ms, crate::config::DEFAULT_DIST_GRACE_MS);
    let c = ClusterConfig::parse(&config("ports = \"all\", targets = [\"s3\"]"), "t").unwrap();
    assert!(c.dvipas[0].distribute.as_ref().unwrap().ports.contains(9));
    // The table form of the module docs.
    let t = config("ports = [80], targets = [\"s2\"]").replace("distribute = { ports = [80], targets = [\"s2\"] }", "[dvipa.distribute]\nports = [80]\ntargets = [\"s2\"]\nmethod = \"least_connections\"");
    assert_eq!(ClusterConfig::parse(&t, "t").unwrap().dvipas[0].distribute.as_ref().unwrap().method, DistMethod::LeastConnections);
    let cases: &[(&str, &str)] = &[
        ("ports = [80], targets = [\"s9\"]", "distribute.targets: no stack named \"s9\""),
        ("ports = [], targets = [\"s2\"]", "distribute.ports: empty"),
        ("ports = [0], targets = [\"s2\"]", "not a port"),
        ("ports = [80, 80], targets = [\"s2\"]", "listed twice"),
        ("ports = \"some\", targets = [\"s2\"]", "expected a list of ports"),
        ("ports = [80], targets = [\"s2\", \"s2\"]", "listed twice"),
        ("ports = [80], targets = \"s2\"", "expected a list of stacks"),
        ("ports = [80], targets = [\"s2\"], method = \"random\"", "distribute.method"),
        ("ports = [80], targets = [\"s2\"], weights = { s2 = 2 }", "only for method"),
        ("ports = [80], targets = [\"s2\"], method = \"weighted_round_robin\", weights = { s2 = 0 }", "1 to 1000"),
        ("ports = [80], targets = [\"s2\"], method = \"weighted_round_robin\", weights = { s7 = 2 }", "distribute.weights: no stack named \"s7\""),
        ("ports = [80], targets = [\"s2\"], backup_targets = { s4 = [\"s2\"] }", "not a backup"),
        ("ports = [80], targets = [\"s2\"], backup_targets = { s2 = [\"s8\"] }", "distribute.backup_targets: no stack named \"s8\""),
        ("ports = [80], targets = [\"s2\"], colour = 1", "unknown field"),
    ];
    for (dist, reason) in cases {
        let e = ClusterConfig::parse(&config(dist), "t.toml").unwrap_err();
        assert!(e.statement.starts_with("dvipa[0] (198.18.0.100") || e.statement == "t.toml", "{dist}: {e}");
        assert!(e.to_string().contains(reason), "{dist}: {e}");
    }
}

#[test]
fn crt_rows_round_trip_and_reject_garbage() {
    let s = Sim::new(&rr_s2_s3());
    let row = &s.region.crt()[5];
    let (l, r) = (sock(80), client(77));
    let ctl = crt_ctl(CRT_LIVE, 0, 2, 9);
    let (c, v) = (client_word(r), server_word(l));
    row.client.store(c, Ordering::Relaxed);
    row.server.store(v, Ordering::Relaxed);
    row.target_inc.store(4, Ordering::Relaxed);
    row.created_ns.store(10, Ordering::Relaxed);
    row.check.store(crt_check(ctl, c, v, 4, 10), Ordering::Relaxed);
    row.ctl.store(ctl, Ordering::Relaxed);
    let seen = crt_row(&s.region, &s.cfg, 5).unwrap().unwrap();
    assert_eq!((seen.local, seen.remote, seen.target, seen.router, seen.epoch), (l, r, 2, 0, 9));
    row.target_inc.store(5, Ordering::Relaxed);
    assert_eq!(crt_row(&s.region, &s.cfg, 5), Err(Invalid::CrtRow));
    row.ctl.store(7, Ordering::Relaxed);
    assert_eq!(crt_row(&s.region, &s.cfg, 5), Err(Invalid::CrtRow));
    assert_eq!(crt_row(&s.region, &s.cfg, 6), Ok(None));
    let _ = Consumer::new(s.region.ring(0, 1).unwrap());
}

/// Hand the connection with client `c` off from stack `from` to stack `to` as the poll loop
/// does (spec/04): `to` installs it (NEWCONN), `from` forgets it without a TERMCONN once `to`
/// accepted. Between every turn the flow routes to `from` or `to`, never resets.
fn hand_off(s: &mut Sim, c: SocketAddrV4, from: &str, to: &str) {
    let (fs, ts) = (s.slot(from), s.slot(to));
    let ok = |r: Route, s: &Sim| matches!(r, Route::Forward { slot } if slot == fs || slot == ts) || (r == Route::Local && [from, to].contains(&s.router().unwrap().as_str()));
    let now = s.now;
    {
        let st = s.stacks.get_mut(to).unwrap();
        assert!(st.conns.insert((sock(80), c)));
        st.dist.connection_opened(now, sock(80), c, false);
    }
    let r = s.segment(c);
    assert!(ok(r, s), "{c} {from}->{to}: {r:?} after the target installed it");
    {
        let st = s.stacks.get_mut(from).unwrap();
        assert!(st.conns.remove(&(sock(80), c)));
        st.dist.connection_moved(now, sock(80), c, ts);
    }
    let r = s.segment(c);
    assert!(ok(r, s), "{c} {from}->{to}: {r:?} after the source let go");
    let names: Vec<String> = s.stacks.keys().cloned().collect();
    for n in &names {
        s.poll(n);
        let r = s.segment(c);
        assert!(ok(r, s), "{c} {from}->{to}: {r:?} after {n} polled");
    }
    let r = s.segment(c);
    let want = if s.router().as_deref() == Some(to) { Route::Local } else { Route::Forward { slot: ts } };
    assert_eq!(r, want, "{c} moved {from}->{to}");
    let router = s.router().unwrap();
    assert_eq!(s.stacks[&router].fast.get(&(sock(80), c)), Some(&ts), "the fast path follows");
    // A late TERMCONN from the source would be ignored, but none is sent: closing it there
    // now is a no-op.
    let st = s.stacks.get_mut(from).unwrap();
    st.dist.connection_closed(now, sock(80), c);
}

#[test]
fn a_moved_flow_keeps_forwarding_with_no_reset_in_between() {
    let mut s = started("ports = [80], targets = \"all\"", &["s2", "s3"]);
    // Flows on s2 and s3; s2's sequence numbers run far ahead of s3's.
    let flows: Vec<(SocketAddrV4, String)> = (0..4).map(|_| s.syn()).map(|(_, t, c)| (c, t.unwrap())).collect();
    s.settle();
    for _ in 0..40 {
        s.listen("s2", 80, 2);
        s.listen("s2", 80, 1);
    }
    s.settle();
    let (c, from) = flows.iter().find(|(_, t)| t == "s2").cloned().unwrap();
    hand_off(&mut s, c, &from, "s3");
    assert_eq!(s.stacks["s1"].dist.stats.flows_moved, 1);
    assert_eq!(s.stacks["s1"].dist.stats.conn_replays, 0, "the new target's NEWCONN is not a replay");
    assert_eq!(s.crt_targets()[&c], "s3", "the CRT row follows");
    s.settle();
    s.check_flows(true);
    assert_eq!(s.stacks["s1"].dist.stats.resets, 0);
    // The other flows never moved.
    for (c2, t) in &flows {
        if *c2 != c {
            assert_eq!(s.crt_targets()[c2], *t);
        }
    }
}

#[test]
fn a_flow_moves_along_a_chain_including_through_the_router() {
    let mut s = started("ports = [80], targets = \"all\"", &["s1", "s2", "s3", "s4"]);
    let (c, first) = loop {
        let (_, t, c) = s.syn();
        if t.as_deref() == Some("s2") {
            break (c, "s2".to_string());
        }
    };
    s.settle();
    let chain = [first.as_str(), "s3", "s4", "s1", "s2", "s1", "s3"];
    for w in chain.windows(2) {
        hand_off(&mut s, c, w[0], w[1]);
        s.settle();
        s.check_flows(true);
        assert_eq!(s.crt_targets()[&c], w[1]);
    }
    assert_eq!(s.stacks["s1"].dist.stats.flows_moved as usize, chain.len() - 1, "one per hop (the NEWCONN confirming the router's own switch is not another)");
    assert_eq!(s.stacks["s1"].dist.stats.resets, 0);
}

/// it/50-handoff (then it/60) found it: a connection moved back to a router that is not one of the targets
/// (a content router) kept its flow to the stack it came from, and the fast path sent the
/// client's segments there, which sent them back. The router's own connection drops the flow.
#[test]
fn a_flow_that_comes_back_to_a_router_that_is_not_a_target_leaves_the_table() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    let (c, from) = loop {
        let (_, t, c) = s.syn();
        if t.as_deref() == Some("s2") {
            break (c, "s2");
        }
    };
    s.settle();
    let now = s.now;
    let st = s.stacks.get_mut(from).unwrap();
    st.dist.connection_moved(now, sock(80), c, 0);
    st.conns.remove(&(sock(80), c));
    let r = s.stacks.get_mut("s1").unwrap();
    r.dist.connection_opened(now, sock(80), c, false);
    r.conns.insert((sock(80), c));
    let mut acts = Vec::new();
    r.dist.drain_actions(&mut acts);
    assert!(acts.contains(&DistAction::FlowRemoved { local: sock(80), remote: c }), "{acts:?}");
    assert!(!s.crt_targets().contains_key(&c), "no CRT row: the router's own stack has it");
    assert_eq!(s.stacks.get_mut("s1").unwrap().dist.route(now, sock(80), c, false), Route::Local);
}

#[test]
fn a_late_termconn_from_the_stack_a_flow_moved_away_from_is_ignored() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    let (c, from) = loop {
        let (_, t, c) = s.syn();
        if t.as_deref() == Some("s2") {
            break (c, "s2");
        }
    };
    s.settle();
    hand_off(&mut s, c, from, "s3");
    s.settle();
    // A TERMCONN s2 sent before the move (or a stray one) arrives now.
    let (fs, inc) = (s.slot("s2"), s.stacks["s2"].node.incarnation());
    let p = [80 << 16, client_word(c), fs as u64, 1_000_000, inc, 0, 0];
    let m = Message { kind: kind::TERMCONN, from_slot: fs, from_incarnation: inc as u32, payload: p };
    Producer::new(s.region.ring(fs as usize, 0).unwrap()).push(&m).unwrap();
    let before = s.stacks["s1"].dist.stats.conflicts;
    s.settle();
    assert_eq!(s.stacks["s1"].dist.stats.conflicts, before + 1);
    assert_eq!(s.segment(c), Route::Forward { slot: s.slot("s3") });
    assert_eq!(s.crt_targets()[&c], "s3");
    s.check_flows(true);
    // The flow ends normally at its new stack.
    s.close("s3", c);
    s.settle();
    assert_eq!(s.segment(c), Route::Reset);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Syn,
        Connect(u8, u16),
        Freeze(u8, u8),
        Close(usize),
        Listen(u8, u32),
        Step(u8),
        KillTarget(u8),
        KillRouter,
        Restart(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Syn),
            2 => (0u8..4, 0u16..8).prop_map(|(s, p)| Op::Connect(s, p)),
            1 => (0u8..4, 1u8..20).prop_map(|(s, n)| Op::Freeze(s, n)),
            3 => (0usize..64).prop_map(Op::Close),
            2 => (0u8..4, 0u32..3).prop_map(|(s, n)| Op::Listen(s, n)),
            4 => (1u8..30).prop_map(Op::Step),
            1 => (0u8..4).prop_map(Op::KillTarget),
            1 => Just(Op::KillRouter),
            1 => (0u8..4).prop_map(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)))]
        /// Messages of any distributor kind with any payload, from any stack (as a scribbler
        /// could write them into a ring): never a panic, and the flows keep routing.
        #[test]
        fn random_messages_never_panic(msgs in proptest::collection::vec((16u16..24, 0u8..4, any::<[u64; 7]>(), any::<bool>()), 1..200)) {
            let mut s = started("ports = [80], targets = \"all\", grace_ms = 300", &["s2", "s3"]);
            for _ in 0..4 {
                s.syn();
            }
            s.settle();
            for (k, from, mut payload, small) in msgs {
                if small {
                    // Mostly plausible: a real DVIPA row, a port, a stack.
                    payload[0] &= 0xffff_ffff_0000_0000 | 0x0050_0000;
                    payload[2] &= 0x3;
                }
                let Some(st) = s.stacks.get(NAMES[from as usize]) else { continue };
                let m = Message { kind: k, from_slot: from, from_incarnation: st.node.incarnation() as u32, payload };
                for to in 0..4 {
                    if to != from as usize {
                        let _ = Producer::new(s.region.ring(from as usize, to).unwrap()).push(&m);
                    }
                }
                s.step();
            }
            s.settle();
            // Whatever the garbage said, the router still routes new connections.
            let (r, _, _) = s.syn();
            let ok = matches!(r, Route::Forward { .. } | Route::Local | Route::Reset);
            prop_assert!(ok, "{:?}", r);
        }

        /// Any sequence of SYNs, closes, listener changes, target kills, router failovers and
        /// restarts (takebacks): every live flow routes to exactly the stack that has it
        /// (held only during a rebuild), none is reset while its target lives, and no two
        /// stacks forward one flow.
        #[test]
        fn every_live_flow_routes_to_its_target(ops in proptest::collection::vec(op(), 1..60), method in 0usize..4, all in any::<bool>()) {
            let m = ["round_robin", "least_connections", "server_weight", "weighted_round_robin"][method];
            let w = if m == "weighted_round_robin" { ", weights = { s2 = 2, s3 = 3 }" } else { "" };
            // Every stack a candidate (the router a target too), or the primary router not one.
            let t = if all { "\"all\"" } else { "[\"s2\", \"s3\", \"s4\"]" };
            let mut s = started(&format!("ports = [80], targets = {t}, method = \"{m}\", grace_ms = 300{w}"), &["s2", "s3"]);
            for op in ops {
                match op {
                    Op::Syn => {
                        s.syn();
                    }
                    Op::Connect(k, p) => {
                        // Distinct source ports per stack (cluster-wide ports, spec/03).
                        s.connect(NAMES[k as usize], 40_000 + 100 * k as u16 + p);
                    }
                    Op::Freeze(k, n) => {
                        // A distributor stalled for less than the grace window (its reports
                        // and TERMCONNs wait; its rings fill).
                        let name = NAMES[k as usize];
                        if let Some(st) = s.stacks.get_mut(name) {
                            st.frozen = true;
                            for _ in 0..n {
                                s.step();
                                s.check_flows(false);
                            }
                            if let Some(st) = s.stacks.get_mut(name) {
                                st.frozen = false;
                            }
                            s.step();
                        }
                    }
                    Op::Close(k) => {
                        let f = s.all_flows();
                        if !f.is_empty() {
                            let (l, c, t) = f[k % f.len()].clone();
                            let now = s.now;
                            let st = s.stacks.get_mut(&t).unwrap();
                            st.conns.remove(&(l, c));
                            st.dist.connection_closed(now, l, c);
                        }
                    }
                    Op::Listen(k, n) => {
                        let name = NAMES[k as usize];
                        if s.stacks.contains_key(name) {
                            s.listen(name, 80, n);
                        }
                    }
                    Op::Step(n) => {
                        for _ in 0..n {
                            s.step();
                            s.check_flows(false);
                        }
                    }
                    Op::KillTarget(k) => {
                        let name = NAMES[k as usize];
                        if s.stacks.len() > 1 && s.stacks.contains_key(name) && s.router().as_deref() != Some(name) {
                            s.kill(name);
                        }
                    }
                    Op::KillRouter => {
                        if let Some(r) = s.router() {
                            if s.stacks.len() > 1 {
                                s.kill(&r);
                            }
                        }
                    }
                    Op::Restart(k) => {
                        let name = NAMES[k as usize];
                        if !s.stacks.contains_key(name) {
                            s.join(name);
                            s.listen(name, 80, 1);
                        }
                    }
                }
                s.check_flows(false);
            }
            // Quiet: everything settles to exact routing, and a live primary has its
            // address back.
            for _ in 0..200 {
                s.step();
                s.check_flows(false);
            }
            if s.router().is_some() {
                s.check_flows(true);
            }
            if s.stacks.contains_key("s1") {
                let r = s.router();
                prop_assert_eq!(r.as_deref(), Some("s1"));
            }
        }
    }
}

/// The router's SYN schedule for its XDP program: round robin lists the ready targets once,
/// weighted round robin the smooth sequence; a closed listener or a draining target leaves it
/// (the routing version moves); methods decided per connection, and a router that is a target
/// itself, steer nothing. A connection steered so (the router never saw its SYN) is learnt
/// from its target's NEWCONN: routed, in the CRT, removed by its TERMCONN.
#[test]
fn the_syn_schedule_follows_the_method_and_the_listeners() {
    let mut s = started("ports = [80], targets = [\"s2\", \"s3\"]", &["s2", "s3"]);
    let sched = |s: &Sim| s.stacks["s1"].dist.syn_schedules(64);
    assert_eq!(sched(&s), [(sock(80), vec![1, 2])]);
    assert!(s.stacks["s2"].dist.syn_schedules(64).is_empty(), "only the router steers");
    let v = s.stacks["s1"].dist.routing_version();
    s.listen("s2", 80, 0);
    s.settle();
    assert_ne!(s.stacks["s1"].dist.routing_version(), v);
    assert_eq!(sched(&s), [(sock(80), vec![2])]);
    let now = s.now;
    s.stacks.get_mut("s3").unwrap().dist.set_draining(now, sock(80), true);
    s.settle();
    assert_eq!(sched(&s), [(sock(80), vec![])], "no ready target: the poll thread decides (and resets)");
    s.stacks.get_mut("s3").unwrap().dist.set_draining(now, sock(80), false);
    s.listen("s2", 80, 1);
    s.settle();
    assert_eq!(sched(&s), [(sock(80), vec![1, 2])]);
    // A steered connection: s2 has it, the router learns it from the NEWCONN.
    let c = client(60_000);
    let now = s.now;
    let st = s.stacks.get_mut("s2").unwrap();
    st.conns.insert((sock(80), c));
    st.dist.connection_opened(now, sock(80), c, false);
    s.settle();
    assert_eq!(s.segment(c), Route::Forward { slot: 1 });
    assert_eq!(s.crt_targets().get(&c).map(String::as_str), Some("s2"));
    // The DPT counts the steered SYN for s2 (ctl show dpt's SYNS column), once, and a replay
    // of the NEWCONN (or a rebuild's report) does not count it again.
    assert_eq!(s.stacks["s1"].dist.stats.syns_steered, 1);
    let syns_of = |s: &Sim, t: &str| ops::dpt(&s.region, &s.cfg).iter().filter(|d| d.port == 80 && d.target == t && d.current).map(|d| d.syns).sum::<u64>();
    assert_eq!((syns_of(&s, "s2"), syns_of(&s, "s3")), (1, 0));
    let m = Message {
        kind: kind::NEWCONN,
        from_slot: 1,
        from_incarnation: s.stacks["s2"].node.incarnation() as u32,
        payload: [80 << 16, client_word(c), 1, 1, s.stacks["s2"].node.incarnation(), 2, 0],
    };
    Producer::new(s.region.ring(1, 0).unwrap()).push(&m).unwrap();
    s.settle();
    assert_eq!((s.stacks["s1"].dist.stats.syns_steered, syns_of(&s, "s2")), (1, 1), "a replay is not another SYN");
    s.close("s2", c);
    s.settle();
    assert_eq!(s.segment(c), Route::Reset);
    assert!(!s.crt_targets().contains_key(&c));

    let s = started("ports = [80], targets = [\"s2\", \"s3\"], method = \"weighted_round_robin\", weights = { s2 = 3, s3 = 1 }", &["s2", "s3"]);
    assert_eq!(sched(&s), [(sock(80), vec![1, 1, 2, 1])], "the smooth sequence of the poll thread's picks");
    assert_eq!(s.stacks["s1"].dist.syn_schedules(2), [(sock(80), vec![1, 2])], "scaled down to fit");
    let s = started("ports = [80], targets = [\"s2\", \"s3\"], method = \"least_connections\"", &["s2", "s3"]);
    assert_eq!(sched(&s), [(sock(80), vec![])]);
    let s = started("ports = [80], targets = \"all\"", &["s1", "s2"]);
    assert_eq!(sched(&s), [(sock(80), vec![])], "the router is a target: its own SYNs are its poll thread's");
}
