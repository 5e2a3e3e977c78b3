//! The DVIPA protocol with several stacks in one process: worked examples as fixtures (four
//! stacks sharing eight DVIPAs with primaries and ranked backups, five stacks losing one), and
//! the protocol's races (a stalled owner resuming after its takeover, a backup or a primary
//! dying mid-move, two stacks binding one address at once). Time is simulated (ns); nothing
//! sleeps.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

const MS: u64 = 1_000_000;

/// Stacks sharing one anonymous region, each with the address set its stack would have.
struct Harness {
    region: Arc<Region>,
    cfg: Arc<ClusterConfig>,
    nodes: BTreeMap<String, Node>,
    /// What each stack has in its home list (applied from actions).
    homes: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Connections per (stack, address).
    conns: BTreeMap<(String, Ipv4Addr), usize>,
    /// Every action taken, per stack.
    log: Vec<(String, Action)>,
    now: u64,
}

impl Harness {
    fn new(toml: &str) -> Harness {
        let cfg = Arc::new(ClusterConfig::parse(toml, "test").unwrap());
        let region = Arc::new(Region::anonymous(&cfg.name, cfg.hash()));
        Harness { region, cfg, nodes: BTreeMap::new(), homes: BTreeMap::new(), conns: BTreeMap::new(), log: Vec::new(), now: 1_000 * MS }
    }

    fn join(&mut self, name: &str) {
        let ident = Identity { pid: 1000 + self.cfg.slot(name).unwrap() as u32, ..Identity::default() };
        let n = Node::join(self.region.clone(), self.cfg.clone(), name, ident, self.now).unwrap();
        self.nodes.insert(name.to_string(), n);
        self.homes.entry(name.to_string()).or_default();
        self.settle();
    }

    fn tick(&mut self, name: &str) {
        let Some(node) = self.nodes.get_mut(name) else { return };
        let mut out = Vec::new();
        let conns = &self.conns;
        let n = name.to_string();
        node.tick(self.now, &|a| conns.get(&(n.clone(), a)).copied().unwrap_or(0), &mut out);
        self.apply(name, out);
    }

    fn apply(&mut self, name: &str, out: Vec<Action>) {
        for a in out {
            let home = self.homes.entry(name.to_string()).or_default();
            match &a {
                Action::Activate { addr, .. } => {
                    home.insert(*addr);
                }
                Action::Deactivate { addr, .. } => {
                    home.remove(addr);
                    self.conns.remove(&(name.to_string(), *addr));
                }
                // The stack moves its connections to the primary (live handoff).
                Action::HandBack { addr, to } => {
                    let n = self.conns.remove(&(name.to_string(), *addr)).unwrap_or(0);
                    let to = self.cfg.stacks[*to as usize].name.clone();
                    *self.conns.entry((to, *addr)).or_default() += n;
                }
                Action::Standby { .. } => {}
            }
            self.log.push((name.to_string(), a));
        }
        self.check_exclusive();
    }

    /// Never two stacks with one address in their home lists.
    fn check_exclusive(&self) {
        let mut seen: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
        for (name, home) in &self.homes {
            for a in home {
                if let Some(other) = seen.insert(*a, name) {
                    panic!("{a} active on {other} and {name} at once");
                }
            }
        }
    }

    /// Advance time by one heartbeat and tick every live stack.
    fn step(&mut self) {
        self.now += 10 * MS;
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            self.tick(&n);
        }
    }

    fn settle(&mut self) {
        for _ in 0..5 {
            self.step();
        }
    }

    /// The process dies: no more ticks; a survivor's pidfd fires.
    fn kill(&mut self, name: &str) {
        let node = self.nodes.remove(name).unwrap();
        self.homes.remove(name);
        let (slot, inc) = (node.slot(), node.incarnation());
        if let Some(other) = self.nodes.values_mut().next() {
            assert!(other.declare_failed(self.now, slot, inc));
        }
    }

    fn owner(&self, addr: &str) -> Option<String> {
        let a: Ipv4Addr = addr.parse().unwrap();
        let holders: Vec<&String> = self.homes.iter().filter(|(_, h)| h.contains(&a)).map(|(n, _)| n).collect();
        assert!(holders.len() <= 1);
        holders.first().map(|s| s.to_string())
    }

    fn hierarchy(&self, addr: &str) -> Vec<String> {
        let i = self.cfg.dvipa_index(addr.parse().unwrap()).unwrap();
        // Every stack reads the same region; compute it through each node's region handle.
        let views: Vec<Vec<u8>> = self.nodes.values().map(|n| hierarchy_with(n.region(), n.config(), i, None, &|s| n.live(s as usize) == Live::Up)).collect();
        assert!(views.windows(2).all(|w| w[0] == w[1]), "stacks disagree: {views:?}");
        let h = views.first().cloned().unwrap_or_default();
        h.into_iter().map(|s| self.cfg.stacks[s as usize].name.clone()).collect()
    }
}

fn stacks(names: &[&str]) -> String {
    let mut s = String::from("[cluster]\nname = \"t\"\nlease_ms = 100\nheartbeat_ms = 10\n");
    for (i, n) in names.iter().enumerate() {
        s += &format!("[[stack]]\nname = \"{n}\"\ninterface = \"plx-{i}\"\naddress = \"198.18.0.{}/24\"\n", 11 + i);
    }
    s
}

fn dvipa(addr: &str, primary: &str, backups: &[(&str, u8)]) -> String {
    let b: Vec<String> = backups.iter().map(|(s, r)| format!("{{ stack = \"{s}\", rank = {r} }}")).collect();
    format!("[[dvipa]]\naddress = \"{addr}/24\"\nprimary = \"{primary}\"\nbackups = [{}]\n", b.join(", "))
}

// A four-stack example: every stack is the primary of two DVIPAs, with one or two ranked
// backups each, so the takeover order differs per address.
const V: [&str; 9] = ["", "198.18.0.101", "198.18.0.102", "198.18.0.103", "198.18.0.104", "198.18.0.105", "198.18.0.106", "198.18.0.107", "198.18.0.108"];

fn four_stacks() -> Harness {
    let mut t = stacks(&["TCP1", "TCP2", "TCP3", "TCP4"]);
    t += &dvipa(V[1], "TCP1", &[("TCP2", 20)]);
    t += &dvipa(V[2], "TCP1", &[("TCP2", 20), ("TCP3", 30)]);
    t += &dvipa(V[3], "TCP2", &[("TCP1", 10), ("TCP3", 30)]);
    t += &dvipa(V[4], "TCP2", &[("TCP3", 30)]);
    t += &dvipa(V[5], "TCP3", &[("TCP1", 10)]);
    t += &dvipa(V[6], "TCP3", &[("TCP2", 20)]);
    t += &dvipa(V[7], "TCP4", &[("TCP1", 10), ("TCP2", 20)]);
    t += &dvipa(V[8], "TCP4", &[("TCP1", 10), ("TCP3", 30)]);
    Harness::new(&t)
}

fn names(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

#[test]
fn four_stacks_join_in_order_with_identical_hierarchies() {
    let mut h = four_stacks();
    let full: [(usize, &[&str]); 8] = [
        (1, &["TCP1", "TCP2"]),
        (2, &["TCP1", "TCP3", "TCP2"]),
        (3, &["TCP2", "TCP3", "TCP1"]),
        (4, &["TCP2", "TCP3"]),
        (5, &["TCP3", "TCP1"]),
        (6, &["TCP3", "TCP2"]),
        (7, &["TCP4", "TCP2", "TCP1"]),
        (8, &["TCP4", "TCP3", "TCP1"]),
    ];
    let order = ["TCP1", "TCP2", "TCP3", "TCP4"];
    for (k, joined) in order.iter().enumerate() {
        h.join(joined);
        let up = &order[..=k];
        for (v, expect) in full {
            let expect: Vec<String> = expect.iter().filter(|s| up.contains(s)).map(|s| s.to_string()).collect();
            assert_eq!(h.hierarchy(V[v]), expect, "V{v} after {joined} joined");
            // Active on its primary once that has joined; a backup never activates a DVIPA
            // whose primary has not started.
            let primary = expect.first().filter(|p| *p == full_primary(v)).cloned();
            assert_eq!(h.owner(V[v]), primary, "V{v} after {joined} joined");
        }
    }
}

fn full_primary(v: usize) -> &'static str {
    ["", "TCP1", "TCP1", "TCP2", "TCP2", "TCP3", "TCP3", "TCP4", "TCP4"][v]
}

#[test]
fn four_stacks_takeover_and_immediate_and_delayed_giveback() {
    let mut h = four_stacks();
    for s in ["TCP1", "TCP2", "TCP3", "TCP4"] {
        h.join(s);
    }
    let before = h.log.len();
    h.kill("TCP4");
    h.step();
    assert!(!h.log[before..].iter().any(|(n, _)| n == "TCP1"), "TCP1 does nothing: {:?}", &h.log[before..]);
    assert_eq!(h.owner(V[7]).as_deref(), Some("TCP2"));
    assert_eq!(h.owner(V[8]).as_deref(), Some("TCP3"));
    assert_eq!(h.nodes["TCP1"].stats.takeovers, 0);

    // Clients connect to V7 on TCP2; none on V8 at TCP3.
    h.conns.insert(("TCP2".into(), V[7].parse().unwrap()), 3);
    h.join("TCP4");
    assert_eq!(h.owner(V[8]).as_deref(), Some("TCP4"), "TCP3 had no connections: gives V8 back at once");
    assert_eq!(h.owner(V[7]).as_deref(), Some("TCP2"), "TCP2 has connections: delayed giveback");
    assert_eq!(h.hierarchy(V[7]), names(&["TCP2", "TCP4", "TCP1"]), "TCP4 is backup rank 255 for V7");
    let region = h.region.clone();
    let row = &region.dvipas()[6];
    assert_eq!(row.roles[3].load(Ordering::Relaxed), ROLE_GIVEBACK);
    assert_eq!(OwnerWord::unpack(row.owner.load(Ordering::Relaxed)).state, DvipaState::DelayedGiveback);
    assert_eq!(row.conns.load(Ordering::Relaxed), 3);
    assert!(h.nodes["TCP4"].stats.messages_in >= 1, "the delayed giveback was announced by message");

    // The last connection ends: TCP2 lets go, TCP4 activates.
    h.conns.remove(&("TCP2".into(), V[7].parse().unwrap()));
    h.settle();
    assert_eq!(h.owner(V[7]).as_deref(), Some("TCP4"));
    assert_eq!(h.hierarchy(V[7]), names(&["TCP4", "TCP2", "TCP1"]));
    assert_eq!(row.roles[3].load(Ordering::Relaxed), ROLE_PRIMARY);
}

/// `giveback = "handoff"`: the returning primary stands by for the connections, the holder
/// moves them there, and the address goes back at once (no waiting for them to end); nothing
/// is reset.
#[test]
fn giveback_by_handoff_moves_the_connections_then_the_address() {
    let mut t = stacks(&["s1", "s2", "s3"]);
    t += &dvipa("198.18.0.100", "s1", &[("s2", 20)]);
    t += "giveback = \"handoff\"\n";
    let mut h = Harness::new(&t);
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    let a: Ipv4Addr = "198.18.0.100".parse().unwrap();
    h.kill("s1");
    h.step();
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s2"));
    h.conns.insert(("s2".into(), a), 50);
    let before = h.log.len();
    h.join("s1");
    let log = &h.log[before..];
    assert!(log.iter().any(|(n, x)| n == "s1" && *x == Action::Standby { addr: a, prefix: 24 }), "s1 stands by: {log:?}");
    assert!(log.iter().any(|(n, x)| n == "s2" && *x == Action::HandBack { addr: a, to: 0 }), "s2 hands the connections back: {log:?}");
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s1"), "the address is back at once");
    assert_eq!(h.conns.get(&("s1".into(), a)), Some(&50), "with its 50 connections");
    assert!(!log.iter().any(|(_, x)| matches!(x, Action::Deactivate { connections: ConnectionFate::Reset, .. })), "nothing reset");
}

#[test]
fn five_stacks_mvs2_fails() {
    let mut t = stacks(&["MVS1", "MVS2", "MVS3", "MVS4", "MVS5"]);
    t += &dvipa("198.18.0.201", "MVS1", &[("MVS2", 20), ("MVS4", 40)]); // VA1
    t += &dvipa("198.18.0.202", "MVS2", &[("MVS1", 30), ("MVS4", 40)]); // VA2
    t += &dvipa("198.18.0.203", "MVS4", &[("MVS1", 30), ("MVS2", 20)]); // VA3
    t += &dvipa("198.18.0.211", "MVS2", &[("MVS3", 30), ("MVS5", 10)]); // VB1
    t += &dvipa("198.18.0.212", "MVS3", &[("MVS2", 20), ("MVS5", 10)]); // VB2
    t += &dvipa("198.18.0.213", "MVS5", &[("MVS2", 20), ("MVS3", 30)]); // VB3
    let mut h = Harness::new(&t);
    for s in ["MVS1", "MVS2", "MVS3", "MVS4", "MVS5"] {
        h.join(s);
    }
    assert_eq!(h.hierarchy("198.18.0.202"), names(&["MVS2", "MVS4", "MVS1"]));
    assert_eq!(h.hierarchy("198.18.0.211"), names(&["MVS2", "MVS3", "MVS5"]));
    h.kill("MVS2");
    h.step();
    assert_eq!(h.owner("198.18.0.202").as_deref(), Some("MVS4"));
    assert_eq!(h.owner("198.18.0.211").as_deref(), Some("MVS3"));
    for (a, o) in [("198.18.0.201", "MVS1"), ("198.18.0.203", "MVS4"), ("198.18.0.212", "MVS3"), ("198.18.0.213", "MVS5")] {
        assert_eq!(h.owner(a).as_deref(), Some(o), "{a} does not move");
    }
}

fn three() -> Harness {
    let mut t = stacks(&["s1", "s2", "s3"]);
    t += &dvipa("198.18.0.100", "s1", &[("s2", 20), ("s3", 10)]);
    t += "[[vipa_range]]\nprefix = \"198.18.1.0/24\"\n";
    Harness::new(&t)
}

#[test]
fn lease_expiry_detects_a_silent_stack() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    // s1 stops ticking (hung) without dying: no pidfd, only its lease.
    let s1 = h.nodes.remove("s1").unwrap();
    let mut steps = 0;
    while h.owner("198.18.0.100").as_deref() != Some("s2") {
        if let Some(x) = h.homes.get_mut("s1") {
            x.clear(); // what it has is irrelevant: it is silent
        }
        h.step();
        steps += 1;
        assert!(steps < 30, "no takeover after {steps} heartbeats");
    }
    // Not before the lease (100 ms = 10 heartbeats) has run out.
    assert!(steps >= 10, "took over after {steps} heartbeats, lease is 10");
    drop(s1);
}

#[test]
fn a_stalled_owner_resumed_after_takeover_never_answers_again() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s1"));
    // SIGSTOP: s1 keeps its state but does not run.
    let mut s1 = h.nodes.remove("s1").unwrap();
    let s1_home = h.homes.remove("s1").unwrap();
    for _ in 0..20 {
        h.step();
    }
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s2"));
    // SIGCONT: before touching a frame the poll loop asks whether the lease is still valid.
    assert!(!s1.lease_valid(h.now), "the stalled stack must know its lease lapsed");
    let mut out = Vec::new();
    s1.tick(h.now, &|_| 5, &mut out);
    assert_eq!(out, vec![Action::Deactivate { addr: "198.18.0.100".parse().unwrap(), connections: ConnectionFate::Silent, why: "fenced: this stack was declared failed" }]);
    assert_eq!(s1.stats.fenced, 1);
    assert_eq!(s1.active().count(), 0);
    assert!(s1_home.contains(&"198.18.0.100".parse().unwrap()));
    // It rejoined with a new incarnation and, as primary, gets the address back by giveback
    // (s2 has no connections) - through the owner word, never by answering on its own.
    assert!(s1.incarnation() >= 2);
    h.nodes.insert("s1".into(), s1);
    h.homes.insert("s1".into(), BTreeSet::new());
    h.settle();
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s1"));
}

#[test]
fn backup_dying_mid_takeover_passes_it_on() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    h.kill("s1");
    // s2 takes over in its tick and dies before it ever announces the address.
    h.now += 10 * MS;
    h.tick("s2");
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s2"));
    h.kill("s2");
    h.step();
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s3"));
    assert_eq!(h.hierarchy("198.18.0.100"), names(&["s3"]));
}

#[test]
fn primary_dying_while_a_delayed_giveback_is_pending() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    h.kill("s1");
    h.step();
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s2"));
    h.conns.insert(("s2".into(), "198.18.0.100".parse().unwrap()), 1);
    h.join("s1");
    let region = h.region.clone();
    let row = &region.dvipas()[0];
    assert_eq!(OwnerWord::unpack(row.owner.load(Ordering::Relaxed)).state, DvipaState::DelayedGiveback);
    h.kill("s1");
    h.settle();
    // s2 keeps it, as an ordinary takeover again; nobody else touched it.
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s2"));
    assert_eq!(OwnerWord::unpack(row.owner.load(Ordering::Relaxed)).state, DvipaState::Active);
    // Connections end: there is no primary to give it to, so s2 stays owner.
    h.conns.clear();
    h.settle();
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s2"));
}

#[test]
fn bind_activation_inside_a_range() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    let a: Ipv4Addr = "198.18.1.7".parse().unwrap();
    let now = h.now;
    assert_eq!(h.nodes.get_mut("s1").unwrap().bind_activate(now, "198.18.2.7".parse().unwrap()), Err(BindError::NotInRange("198.18.2.7".parse().unwrap())));
    assert_eq!(h.nodes.get_mut("s1").unwrap().bind_activate(now, a), Ok(24));
    h.homes.get_mut("s1").unwrap().insert(a);
    assert_eq!(h.nodes.get_mut("s1").unwrap().bind_activate(now, a), Ok(24), "binding twice on the owner is fine");
    assert_eq!(h.nodes.get_mut("s2").unwrap().bind_activate(now, a), Err(BindError::InUse { addr: a, stack: "s1".into() }));
    h.settle();
    assert_eq!(h.owner("198.18.1.7").as_deref(), Some("s1"));
    let v = crate::ops::dvipas(&h.region, &h.cfg, h.now);
    let r = v.iter().find(|d| d.addr == a).unwrap();
    assert_eq!((r.owner.as_deref(), r.origin, r.configured), (Some("s1"), Origin::Bind, false));

    // s1 dies: the address is not moved, its bind status is cleared; another stack may bind it.
    h.kill("s1");
    h.settle();
    assert_eq!(h.owner("198.18.1.7"), None);
    let r = crate::ops::dvipas(&h.region, &h.cfg, h.now).into_iter().find(|d| d.addr == a).unwrap();
    assert_eq!(r.state, DvipaState::Inactive);
    let now = h.now;
    assert_eq!(h.nodes.get_mut("s3").unwrap().bind_activate(now, a), Ok(24));
}

#[test]
fn two_stacks_binding_the_same_address_at_once_exactly_one_wins() {
    let h = three();
    let region = h.region.clone();
    let cfg = h.cfg.clone();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    #[allow(clippy::disallowed_methods)]
    let threads: Vec<_> = ["s1", "s2"]
        .into_iter()
        .map(|name| {
            let (region, cfg, barrier) = (region.clone(), cfg.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut node = Node::join(region, cfg, name, Identity::default(), 1000 * MS).unwrap();
                let mut wins = Vec::new();
                for i in 1..=200u32 {
                    barrier.wait();
                    let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + i % 254 + 1);
                    match node.bind_activate(1000 * MS, a) {
                        Ok(_) => wins.push(a),
                        Err(BindError::InUse { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    barrier.wait();
                    // Release for the next round (the owner leaves the address).
                    if wins.last() == Some(&a) {
                        let i = find_range_row(node.region(), a).unwrap();
                        let row = &node.region().range_dvipas()[i];
                        let w = OwnerWord::unpack(row.owner.load(Ordering::Acquire));
                        row.owner.store(w.next(NO_SLOT, w.owner, DvipaState::Inactive, Origin::None).pack(), Ordering::Release);
                        node.local.clear();
                    }
                    barrier.wait();
                }
                wins.len()
            })
        })
        .collect();
    let wins: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(wins.iter().sum::<usize>(), 200, "exactly one winner per round: {wins:?}");
}

#[test]
fn operator_commands_move_and_delete() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    let a: Ipv4Addr = "198.18.1.9".parse().unwrap();
    let (region, cfg, now) = (h.region.clone(), h.cfg.clone(), h.now);
    // Refusals.
    assert!(crate::ops::activate(&region, &cfg, "198.18.0.11".parse().unwrap(), "s1", now).unwrap_err().0.contains("own address"));
    assert!(crate::ops::activate(&region, &cfg, "198.18.0.100".parse().unwrap(), "s1", now).unwrap_err().0.contains("primary/backup"));
    assert!(crate::ops::activate(&region, &cfg, "198.18.9.9".parse().unwrap(), "s1", now).unwrap_err().0.contains("outside every vipa_range"));
    assert!(crate::ops::activate(&region, &cfg, a, "s9", now).unwrap_err().0.contains("no stack"));
    assert!(crate::ops::delete(&region, &cfg, a, now).unwrap_err().0.contains("not a DVIPA"));

    // Activate on s2, then move it to s3: s2 resets its connections and lets go first.
    crate::ops::activate(&region, &cfg, a, "s2", now).unwrap();
    h.settle();
    assert_eq!(h.owner("198.18.1.9").as_deref(), Some("s2"));
    h.conns.insert(("s2".into(), a), 2);
    let msg = crate::ops::activate(&region, &cfg, a, "s3", h.now).unwrap();
    assert!(msg.contains("moving from s2 to s3"), "{msg}");
    h.settle();
    assert_eq!(h.owner("198.18.1.9").as_deref(), Some("s3"));
    assert!(h.log.iter().any(|(n, act)| n == "s2" && matches!(act, Action::Deactivate { addr, connections: ConnectionFate::Reset, .. } if *addr == a)));

    // Delete the configured DVIPA: its owner resets connections, nobody takes it over.
    let msg = crate::ops::delete(&region, &cfg, "198.18.0.100".parse().unwrap(), h.now).unwrap();
    assert!(msg.contains("deleted from s1"), "{msg}");
    h.settle();
    assert_eq!(h.owner("198.18.0.100"), None);
    assert!(crate::ops::delete(&region, &cfg, "198.18.0.100".parse().unwrap(), h.now).unwrap_err().0.contains("not active"));
    // It returns when its primary restarts.
    h.kill("s1");
    h.settle();
    assert_eq!(h.owner("198.18.0.100"), None, "a deleted DVIPA is not taken over");
    h.join("s1");
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s1"));
}

#[test]
fn a_second_process_for_a_running_stack_is_refused() {
    let mut h = three();
    h.join("s1");
    let ident = Identity { pid: 4242, ..Identity::default() };
    let e = Node::join(h.region.clone(), h.cfg.clone(), "s1", ident.clone(), h.now).unwrap_err();
    assert_eq!(e, JoinError::AlreadyRunning { name: "s1".into(), pid: 1000 });
    assert_eq!(Node::join(h.region.clone(), h.cfg.clone(), "nope", ident, h.now).unwrap_err(), JoinError::UnknownStack("nope".into()));
}

#[test]
fn members_view_shows_state_and_incarnation() {
    let mut h = three();
    for s in ["s1", "s2"] {
        h.join(s);
    }
    h.kill("s2");
    let v = crate::ops::members(&h.region, &h.cfg, h.now);
    assert_eq!(v.len(), 2);
    assert_eq!((v[0].name.as_str(), v[0].state, v[0].incarnation), ("s1", MemberState::Up, 1));
    assert_eq!((v[1].name.as_str(), v[1].state), ("s2", MemberState::Failed));
    assert_eq!(v[0].addr, "198.18.0.11".parse::<Ipv4Addr>().unwrap());
}

// --- a region scribbled over, truncated, zeroed (issue 9, section 3) ----------------------

struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Random bytes over every field of a member row.
fn scribble_member(m: &MemberRow, g: &mut Mix) {
    for w in [&m.word, &m.incarnation, &m.mac, &m.lease_ms, &m.join_seq, &m.failed_ns, &m.joined_ns, &m.ignored] {
        w.store(g.next(), Ordering::Relaxed);
    }
    for w in [&m.pid, &m.ifindex, &m.addr, &m.queues] {
        w.store(g.next() as u32, Ordering::Relaxed);
    }
    for w in m.name.iter().chain(&m.iface) {
        w.store(g.next(), Ordering::Relaxed);
    }
}

/// Random bytes over every field of a DVIPA row.
fn scribble_dvipa(d: &DvipaRow, g: &mut Mix) {
    for w in [&d.owner, &d.changed_ns, &d.activator_pid, &d.moves, &d.announced] {
        w.store(g.next(), Ordering::Relaxed);
    }
    for w in [&d.addr, &d.prefix, &d.conns, &d._pad] {
        w.store(g.next() as u32, Ordering::Relaxed);
    }
    for r in &d.roles {
        r.store(g.next() as u16, Ordering::Relaxed);
    }
}

fn served(h: &Harness) -> BTreeSet<Ipv4Addr> {
    h.homes.values().flatten().copied().collect()
}

/// Random bytes over the member and DVIPA rows used to leave both DVIPAs unserved, make a
/// stack adopt a garbage incarnation ("fenced") and `plex ctl` list garbage DVIPAs. Now: no
/// stack adopts anything from a row that fails validation, every stack keeps its incarnation,
/// nothing outside the config is ever activated, and once the holders have repaired the rows
/// every configured DVIPA is served by exactly one stack.
#[test]
fn random_bytes_over_rows_are_ignored_and_repaired() {
    for seed in 0..48u64 {
        let mut g = Mix(seed);
        let mut t = stacks(&["s1", "s2", "s3"]);
        t += &dvipa("198.18.0.100", "s1", &[("s2", 20), ("s3", 10)]);
        t += &dvipa("198.18.0.101", "s2", &[("s3", 30), ("s1", 10)]);
        t += "[[vipa_range]]\nprefix = \"198.18.1.0/24\"\n";
        let mut h = Harness::new(&t);
        for s in ["s1", "s2", "s3"] {
            h.join(s);
        }
        let bound: Ipv4Addr = "198.18.1.7".parse().unwrap();
        h.nodes.get_mut("s3").unwrap().bind_activate(h.now, bound).unwrap();
        h.homes.get_mut("s3").unwrap().insert(bound);
        let before: BTreeMap<String, u64> = h.nodes.iter().map(|(n, x)| (n.clone(), x.incarnation())).collect();
        let owners: Vec<Option<String>> = ["198.18.0.100", "198.18.0.101"].iter().map(|a| h.owner(a)).collect();
        let region = h.region.clone();
        // Which rows: seed picks members only, DVIPAs only, or both; sometimes every range row.
        let (members, dvipas, ranges) = (seed % 3 != 1, seed % 3 != 0, seed % 4 == 0);
        if members {
            for m in region.members() {
                scribble_member(m, &mut g);
            }
        }
        if dvipas {
            for d in region.dvipas().iter().take(4) {
                scribble_dvipa(d, &mut g);
            }
        }
        if ranges {
            for d in region.range_dvipas().iter().take(48) {
                scribble_dvipa(d, &mut g);
            }
        }
        let allowed: BTreeSet<Ipv4Addr> = ["198.18.0.100", "198.18.0.101", "198.18.1.7"].iter().map(|a| a.parse().unwrap()).collect();
        for _ in 0..40 {
            h.step();
            assert!(served(&h).is_subset(&allowed), "seed {seed}: served {:?}", served(&h));
        }
        for (n, x) in &h.nodes {
            assert_eq!(x.incarnation(), before[n], "seed {seed}: {n} adopted another incarnation");
            assert_eq!(x.stats.fenced, 0, "seed {seed}: {n} blamed a stall");
        }
        let ignored: u64 = h.nodes.values().map(|x| x.invalid.total()).sum();
        assert!(ignored > 0, "seed {seed}: garbage went unnoticed");
        // Served again, by the same stacks, and the rows read valid again.
        let after: Vec<Option<String>> = ["198.18.0.100", "198.18.0.101"].iter().map(|a| h.owner(a)).collect();
        assert_eq!(after, owners, "seed {seed}");
        for (i, d) in h.cfg.dvipas.iter().enumerate() {
            let w = crate::check::owner_word(&h.cfg, true, region.dvipas()[i].owner.load(Ordering::Acquire)).expect("repaired");
            assert_eq!(Some(h.cfg.stacks[w.owner as usize].name.clone()), h.owner(&d.addr.to_string()), "seed {seed}");
        }
        // plex ctl lists no garbage: configured DVIPAs and real range addresses only.
        let listed: BTreeSet<Ipv4Addr> = crate::ops::dvipas(&region, &h.cfg, h.now).into_iter().map(|v| v.addr).collect();
        assert!(listed.is_subset(&allowed), "seed {seed}: ctl lists {listed:?}");
        let members_ok = crate::ops::members(&region, &h.cfg, h.now).iter().filter(|m| m.invalid.is_none() && m.state == MemberState::Up).count();
        assert_eq!(members_ok, 3, "seed {seed}: every stack repaired its own row");
    }
}

/// A row that fails validation is never taken as "that member is down": nothing is taken
/// over from it until it has been unreadable for a whole lease (a live stack repairs its row
/// at its next heartbeat); then it is declared failed and its DVIPA moves as usual.
#[test]
fn an_unreadable_member_row_is_not_a_failure_until_a_lease_passes() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    // s1 hangs and its row is scribbled over: nobody may read it as "left" or "free".
    let s1 = h.nodes.remove("s1").unwrap();
    h.homes.remove("s1");
    let mut g = Mix(7);
    scribble_member(&h.region.members()[0], &mut g);
    let mut steps = 0;
    while h.owner("198.18.0.100").as_deref() != Some("s2") {
        h.step();
        steps += 1;
        assert!(steps < 40, "never taken over");
    }
    assert!(steps >= 10, "taken over after {steps} heartbeats, before the lease (10) ran out");
    assert!(h.nodes["s2"].invalid.total() > 0);
    // s1 wakes up: its row now says failed (with its own incarnation): it is fenced.
    let mut s1 = s1;
    let mut out = Vec::new();
    s1.tick(h.now, &|_| 0, &mut out);
    assert_eq!(s1.stats.fenced, 1, "{out:?}");
    assert!(out.iter().all(|a| matches!(a, Action::Deactivate { .. })));
}

/// `primary_grace_ms` (default 3000): the first live backup activates a DVIPA whose primary
/// never started, after the grace, and gives it back when the primary starts.
#[test]
fn a_dvipa_whose_primary_never_started_is_activated_after_the_grace() {
    let mut h = three();
    h.join("s3");
    h.join("s2");
    let start = h.now;
    while h.now < start + 2900 * MS {
        h.step();
        assert_eq!(h.owner("198.18.0.100"), None, "activated before the grace at {} ms", (h.now - start) / MS);
    }
    for _ in 0..20 {
        h.step();
    }
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s2"), "s2 (rank 20) before s3 (rank 10)");
    assert_eq!(h.nodes["s2"].stats.grace_activations, 1);
    assert!(h.log.iter().any(|(n, a)| n == "s2" && matches!(a, Action::Activate { why, .. } if why.contains("grace"))));
    h.join("s1");
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s1"), "given back to its primary");
}

/// The other choice, `primary_grace_ms = "never"`: only its primary activates it.
#[test]
fn with_grace_never_only_the_primary_activates() {
    let mut t = stacks(&["s1", "s2", "s3"]).replace("heartbeat_ms = 10\n", "heartbeat_ms = 10\nprimary_grace_ms = \"never\"\n");
    t += &dvipa("198.18.0.100", "s1", &[("s2", 20), ("s3", 10)]);
    let mut h = Harness::new(&t);
    h.join("s2");
    h.join("s3");
    for _ in 0..1000 {
        h.step();
    }
    assert_eq!(h.owner("198.18.0.100"), None);
    h.join("s1");
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s1"));
}

/// `plex ctl dvipa activate` to another stack: the new owner ticks at every turn while the
/// move is on its way (so the gap is the old owner's release to the new owner's next turn,
/// not a heartbeat), and the command sees the move done only once the new owner announced.
#[test]
fn a_command_move_is_watched_every_turn_and_done_when_announced() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    let a: Ipv4Addr = "198.18.1.9".parse().unwrap();
    let (region, cfg) = (h.region.clone(), h.cfg.clone());
    crate::ops::activate(&region, &cfg, a, "s3", h.now).unwrap();
    h.settle();
    assert_eq!(h.owner("198.18.1.9").as_deref(), Some("s3"));
    crate::ops::activate(&region, &cfg, a, "s2", h.now).unwrap();
    assert_eq!(crate::ops::activation_done(&region, &cfg, a, "s2", h.now), Ok(false));
    h.tick("s2");
    assert!(h.nodes["s2"].awaiting_move(), "s2 must look again at its next turn");
    h.tick("s3"); // lets go (out of its steering map when the actions are applied)
    assert_eq!(h.owner("198.18.1.9"), None);
    assert!(h.nodes["s3"].awaiting_move(), "s3 hands the word over at its next turn");
    h.tick("s2");
    assert_eq!(h.owner("198.18.1.9"), None, "the word moved on before the address left s3's steering map");
    h.tick("s3"); // hands the word over
    h.tick("s2"); // the next turn, not the next heartbeat
    assert_eq!(h.owner("198.18.1.9").as_deref(), Some("s2"));
    assert!(!h.nodes["s2"].awaiting_move());
    assert_eq!(crate::ops::activation_done(&region, &cfg, a, "s2", h.now), Ok(false), "not announced yet");
    h.nodes.get_mut("s2").unwrap().announced(a);
    assert_eq!(crate::ops::activation_done(&region, &cfg, a, "s2", h.now), Ok(true));
    // Another command overtaking it is an error for the waiting command.
    crate::ops::activate(&region, &cfg, a, "s1", h.now).unwrap();
    assert!(crate::ops::activation_done(&region, &cfg, a, "s2", h.now).is_err());
}

/// A zeroed or overwritten header: every stack leaves the cluster at its next tick, drops its
/// DVIPAs (not its own address, which is not the node's), and never reads the region again.
#[test]
fn a_zeroed_header_makes_every_stack_leave_the_cluster() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s1"));
    h.region.header().magic.store(0, Ordering::Release);
    h.step();
    for (n, x) in &h.nodes {
        assert!(matches!(x.detached(), Some(crate::region::RegionFault::BadMagic(0))), "{n}: {:?}", x.detached());
    }
    assert_eq!(h.owner("198.18.0.100"), None);
    // Standalone: its lease never lapses, binds are refused, leaving touches nothing.
    let s2 = h.nodes.get_mut("s2").unwrap();
    assert!(s2.lease_valid(h.now + 3_600_000 * MS));
    assert_eq!(s2.bind_activate(h.now, "198.18.1.3".parse().unwrap()), Err(BindError::Detached));
    let mut out = Vec::new();
    s2.leave(h.now, &mut out);
    assert!(out.is_empty());
}

/// A file region truncated under two live stacks: no SIGBUS, both leave the cluster.
#[test]
fn a_truncated_region_file_makes_stacks_leave_without_a_fault() {
    let p = std::env::temp_dir().join(format!("plex-node-trunc-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    let mut t = stacks(&["s1", "s2"]);
    t += &dvipa("198.18.0.100", "s1", &[("s2", 20)]);
    let cfg = Arc::new(ClusterConfig::parse(&t, "t").unwrap());
    let region = Arc::new(Region::create_or_attach(&p, &cfg.name, cfg.hash(), 0).unwrap());
    let now = 1000 * MS;
    let mut a = Node::join(region.clone(), cfg.clone(), "s1", Identity { pid: 10, ..Identity::default() }, now).unwrap();
    let mut b = Node::join(region.clone(), cfg.clone(), "s2", Identity { pid: 11, ..Identity::default() }, now).unwrap();
    let mut out = Vec::new();
    a.tick(now + 10 * MS, &|_| 0, &mut out);
    assert_eq!(a.active().count(), 1);
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(4096).unwrap();
    out.clear();
    a.tick(now + 20 * MS, &|_| 0, &mut out);
    b.tick(now + 20 * MS, &|_| 0, &mut out);
    assert!(matches!(a.detached(), Some(crate::region::RegionFault::Truncated { len: 4096, .. })), "{:?}", a.detached());
    assert!(b.detached().is_some());
    assert_eq!(out.len(), 1, "s1 dropped its DVIPA: {out:?}");
    std::fs::remove_file(&p).unwrap();
}

/// The holder of an address a command moves keeps answering until the new owner watches for
/// it (so the address is unanswered only from the release to the new owner's next turn); if
/// the new owner never looks, the holder lets go after a lease.
#[test]
fn the_holder_keeps_a_moving_address_until_the_new_owner_watches() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    let a: Ipv4Addr = "198.18.1.9".parse().unwrap();
    let (region, cfg) = (h.region.clone(), h.cfg.clone());
    crate::ops::activate(&region, &cfg, a, "s3", h.now).unwrap();
    h.settle();
    crate::ops::activate(&region, &cfg, a, "s2", h.now).unwrap();
    for _ in 0..3 {
        h.now += 10 * MS;
        h.tick("s3");
        assert_eq!(h.owner("198.18.1.9").as_deref(), Some("s3"), "s3 let go before s2 was watching");
    }
    h.tick("s2");
    h.tick("s3");
    h.tick("s3");
    h.tick("s2");
    assert_eq!(h.owner("198.18.1.9").as_deref(), Some("s2"));
    // A move to s1, which hangs before it ever looks: s2 lets go only after a lease.
    crate::ops::activate(&region, &cfg, a, "s1", h.now).unwrap();
    let s1 = h.nodes.remove("s1").unwrap();
    h.homes.remove("s1");
    let mut steps = 0;
    while h.owner("198.18.1.9").as_deref() == Some("s2") {
        h.step();
        steps += 1;
        assert!(steps < 30);
    }
    assert!(steps >= 10, "let go after {steps} heartbeats, before the lease");
    drop(s1);
}

/// A range address nobody holds whose owner word is scribbled over is repaired by the stacks
/// (from the last valid word, or reset after a lease when none saw it valid), so a later bind
/// is not refused forever.
#[test]
fn an_unheld_range_row_with_a_garbage_owner_word_is_repaired() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    let a: Ipv4Addr = "198.18.1.5".parse().unwrap();
    let i = claim_range_row(&h.region, a, 24).unwrap();
    h.settle();
    let region = h.region.clone();
    let row = &region.range_dvipas()[i];
    row.owner.store(0x0102_0304_0506_0708, Ordering::Release);
    assert!(matches!(h.nodes.get_mut("s2").unwrap().bind_activate(h.now, a), Err(BindError::Corrupt(_))));
    h.step();
    assert!(crate::check::owner_word(&h.cfg, false, row.owner.load(Ordering::Acquire)).is_ok(), "repaired from the last valid word");
    // Never seen valid by anyone (a fresh row scribbled over): reset after a lease.
    let b: Ipv4Addr = "198.18.1.6".parse().unwrap();
    let j = claim_range_row(&h.region, b, 24).unwrap();
    region.range_dvipas()[j].owner.store(0x0102_0304_0506_0708, Ordering::Release);
    for _ in 0..15 {
        h.step();
    }
    assert!(crate::check::owner_word(&h.cfg, false, region.range_dvipas()[j].owner.load(Ordering::Acquire)).is_ok());
    assert_eq!(h.nodes.get_mut("s2").unwrap().bind_activate(h.now, b), Ok(24));
}

/// A stack joins before it attaches its interface (which takes a while): the holder gives a
/// DVIPA back only once the returning primary has ticked (renewed its lease since joining),
/// not the moment it joins - else the address is unanswered until the primary's loop runs.
#[test]
fn giveback_waits_until_the_returning_primary_ticks() {
    let mut h = three();
    for s in ["s1", "s2", "s3"] {
        h.join(s);
    }
    h.kill("s1");
    h.step();
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s2"));
    // s1 joins (no tick yet: its interface is being attached).
    let ident = Identity { pid: 1000, ..Identity::default() };
    let s1 = Node::join(h.region.clone(), h.cfg.clone(), "s1", ident, h.now).unwrap();
    for _ in 0..10 {
        h.step();
        assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s2"), "given back before s1 could answer");
    }
    h.nodes.insert("s1".into(), s1);
    h.homes.insert("s1".into(), BTreeSet::new());
    h.settle();
    assert_eq!(h.owner("198.18.0.100").as_deref(), Some("s1"));
}
