//! The port registry with several stacks (a Node and a Registry each) on one anonymous region,
//! time simulated; threads for the races; a property test against a model.

use super::*;
use crate::node::Identity;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;

const MS: u64 = 1_000_000;
/// `cluster_ports = true`.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// `cluster_ports = "tuple"`.
const TUP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
/// Distributed on ports 80 and 40000, `cluster_ports = true`.
const DIST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 102);
/// Distributed on every port, `cluster_ports = true`.
const DALL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 103);
/// No cluster_ports.
const PLAIN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 104);
/// In a range with `cluster_ports = "tuple"`.
const RANGED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 130);
const QUARANTINE_MS: u64 = 1000;

fn remote(n: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), n)
}

fn config() -> String {
    let mut s = format!("[cluster]\nname = \"t\"\nlease_ms = 100\nheartbeat_ms = 10\nport_quarantine_ms = {QUARANTINE_MS}\n");
    for (i, n) in ["s1", "s2", "s3"].iter().enumerate() {
        s += &format!("[[stack]]\nname = \"{n}\"\ninterface = \"plx-{i}\"\naddress = \"198.18.0.{}/24\"\n", 11 + i);
    }
    s += "[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\ncluster_ports = true\n";
    s += "[[dvipa]]\naddress = \"198.18.0.101/24\"\nprimary = \"s1\"\ncluster_ports = \"tuple\"\n";
    s += "[[dvipa]]\naddress = \"198.18.0.102/24\"\nprimary = \"s1\"\ncluster_ports = true\ndistribute = { ports = [80, 40000], targets = \"all\" }\n";
    s += "[[dvipa]]\naddress = \"198.18.0.103/24\"\nprimary = \"s1\"\ncluster_ports = true\ndistribute = { ports = \"all\", targets = \"all\" }\n";
    s += "[[dvipa]]\naddress = \"198.18.0.104/24\"\nprimary = \"s1\"\n";
    s += "[[vipa_range]]\nprefix = \"198.18.0.128/28\"\ncluster_ports = \"tuple\"\n";
    s
}

struct Cluster {
    region: Arc<Region>,
    cfg: Arc<ClusterConfig>,
    now: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let cfg = Arc::new(ClusterConfig::parse(&config(), "test").unwrap());
        let region = Arc::new(Region::anonymous(&cfg.name, cfg.hash()));
        Cluster { region, cfg, now: 1_000 * MS }
    }

    fn join(&self, name: &str) -> (Node, Registry) {
        let ident = Identity { pid: 1000 + self.cfg.slot(name).unwrap() as u32, ..Identity::default() };
        let node = Node::join(self.region.clone(), self.cfg.clone(), name, ident, self.now).unwrap();
        let reg = Registry::new(&node);
        (node, reg)
    }
}

/// A tiny deterministic generator (tests only).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn bit(region: &Region, addr: Ipv4Addr, port: u16) -> bool {
    let row = &region.port_registries()[find_registry(region, addr).unwrap()];
    row.bitmap[port as usize >> 6].load(Ordering::Relaxed) & 1 << (port & 63) != 0
}

#[test]
fn owner_words_round_trip_and_classify() {
    let o = PortOwner::new(15, 0x1234_5678);
    assert_eq!(o.incarnation, 0x34_5678);
    assert_eq!(PortOwner::unpack(o.pack()), Some(o));
    assert_eq!(PortOwner::unpack(0), None);
    assert_eq!(PortOwner::unpack(0x100 | PORT_SHARED), None);
    assert_eq!(classify(o.pack(), 16, PortsMode::Port), OwnerSlot::Owner(o));
    assert_eq!(classify(o.pack(), 3, PortsMode::Port), OwnerSlot::Garbage);
    assert_eq!(classify(0x300 | PORT_SHARED, 3, PortsMode::Tuple), OwnerSlot::Shared(3));
    assert_eq!(classify(0x300 | PORT_SHARED, 3, PortsMode::Port), OwnerSlot::Garbage);
    assert_eq!(classify(0x17, 3, PortsMode::Port), OwnerSlot::Garbage);
    assert_eq!(classify(0, 3, PortsMode::Tuple), OwnerSlot::Free);
    assert!(PortsError::InUse { owner_slot: 2 }.to_string().contains("slot 2"));
}

#[test]
fn claim_release_round_trip() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    assert_eq!(a.mode(VIP), Some(PortsMode::Port));
    assert_eq!(a.mode(TUP), Some(PortsMode::Tuple));
    assert_eq!(a.mode(RANGED), Some(PortsMode::Tuple));
    assert_eq!(a.mode(PLAIN), None);
    assert_eq!(a.claim_ephemeral(c.now, PLAIN, remote(80), 0), Err(PortsError::NotClusterPorts));
    assert_eq!(a.claim(c.now, PLAIN, 80), Err(PortsError::NotClusterPorts));

    let p = a.claim_ephemeral(c.now, VIP, remote(80), 5).unwrap();
    assert_eq!(p, EPHEMERAL_FIRST + 5);
    assert_eq!(a.owner(VIP, p, remote(80)), Some(a.me()));
    assert_eq!(a.owner(VIP, p, remote(81)), Some(a.me()), "port mode: the port, whatever the remote");
    assert!(bit(&c.region, VIP, p));
    // The next claim from the same start skips the claimed port.
    let q = a.claim_ephemeral(c.now, VIP, remote(80), 5).unwrap();
    assert_eq!(q, p + 1);
    assert!(a.release(c.now, VIP, p, Some(remote(80))));
    assert_eq!(a.owner(VIP, p, remote(80)), None);
    assert!(!bit(&c.region, VIP, p));
    assert!(!a.release(c.now, VIP, p, None), "released twice");
    // The range wraps: a start at the last port goes on at the first.
    let last = a.claim_ephemeral(c.now, VIP, remote(80), EPHEMERAL_LAST - EPHEMERAL_FIRST).unwrap();
    assert_eq!(last, EPHEMERAL_LAST);
    let wrapped = a.claim_ephemeral(c.now, VIP, remote(80), EPHEMERAL_LAST - EPHEMERAL_FIRST).unwrap();
    assert_eq!(wrapped, EPHEMERAL_FIRST);
    let big = a.claim_ephemeral(c.now, VIP, remote(80), u16::MAX).unwrap();
    assert!(EPHEMERAL_PORTS.contains(&big));

    // Explicit binds: idempotent, refcounted.
    a.claim(c.now, VIP, 8080).unwrap();
    a.claim(c.now, VIP, 8080).unwrap();
    assert!(a.release(c.now, VIP, 8080, None));
    assert_eq!(a.owner(VIP, 8080, remote(1)), Some(a.me()), "still bound once");
    assert!(a.release(c.now, VIP, 8080, None));
    assert_eq!(a.owner(VIP, 8080, remote(1)), None);
    assert_eq!(a.stats.claims, 6);
    assert_eq!(a.stats.releases, 2);

    // A range address gets its own registry.
    let r = a.claim_ephemeral(c.now, RANGED, remote(80), 0).unwrap();
    assert_eq!(a.owner(RANGED, r, remote(80)), Some(a.me()));
    assert!(find_registry(&c.region, RANGED).is_some());
}

#[test]
fn two_registries_get_distinct_ephemeral_ports_for_one_remote() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (_n2, mut b) = c.join("s2");
    const K: u16 = 3000;
    let mut seen = BTreeSet::new();
    for i in 0..K {
        // The same start for both (a forced-equal allocator): the registry keeps them apart.
        let start = i.wrapping_mul(7);
        let pa = a.claim_ephemeral(c.now, VIP, remote(443), start).unwrap();
        let pb = b.claim_ephemeral(c.now, VIP, remote(443), start).unwrap();
        assert!(seen.insert(pa) && seen.insert(pb), "port handed out twice");
        assert_eq!(b.owner(VIP, pa, remote(443)), Some(a.me()));
        assert_eq!(a.owner(VIP, pb, remote(443)), Some(b.me()));
    }
    assert_eq!(seen.len(), 2 * K as usize);
}

#[test]
fn exhaustion_is_an_error() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (_n2, mut b) = c.join("s2");
    let n = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1;
    for i in 0..n {
        let r = if i % 2 == 0 { &mut a } else { &mut b };
        r.claim_ephemeral(c.now, VIP, remote(1), i).unwrap();
    }
    assert_eq!(a.claim_ephemeral(c.now, VIP, remote(1), 3), Err(PortsError::Exhausted));
    assert_eq!(a.stats.exhausted, 1);
    assert!(b.release(c.now, VIP, EPHEMERAL_FIRST + 1001, None));
    assert_eq!(a.claim_ephemeral(c.now, VIP, remote(1), 7), Ok(EPHEMERAL_FIRST + 1001));
}

#[test]
fn explicit_claim_in_use_and_release_only_by_owner() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (_n2, mut b) = c.join("s2");
    a.claim(c.now, VIP, 8080).unwrap();
    assert_eq!(b.claim(c.now, VIP, 8080), Err(PortsError::InUse { owner_slot: 0 }));
    assert_eq!(b.stats.claim_conflicts, 1);
    assert!(!b.release(c.now, VIP, 8080, None));
    assert_eq!(b.owner(VIP, 8080, remote(1)), Some(a.me()));
    let p = a.claim_ephemeral(c.now, VIP, remote(9), 100).unwrap();
    assert!(!b.release(c.now, VIP, p, Some(remote(9))));
    assert_eq!(a.owner(VIP, p, remote(9)), Some(a.me()));
    assert!(a.release(c.now, VIP, 8080, None));
    b.claim(c.now, VIP, 8080).unwrap();
    // An explicit bind to a port another stack got as ephemeral is refused too.
    assert_eq!(b.claim(c.now, VIP, p), Err(PortsError::InUse { owner_slot: 0 }));
}

#[test]
fn tuple_mode_reuses_a_port_toward_different_remotes() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (_n2, mut b) = c.join("s2");
    let (_n3, mut s3) = c.join("s3");
    let pa = a.claim_ephemeral(c.now, TUP, remote(80), 0).unwrap();
    let pb = b.claim_ephemeral(c.now, TUP, remote(81), 0).unwrap();
    assert_eq!(pa, pb, "the same port toward another remote");
    assert_eq!(a.owner(TUP, pa, remote(80)), Some(a.me()));
    assert_eq!(a.owner(TUP, pa, remote(81)), Some(b.me()));
    assert_eq!(a.owner(TUP, pa, remote(82)), None);
    // The same tuple never twice: b toward remote(80) gets another port.
    let pb2 = b.claim_ephemeral(c.now, TUP, remote(80), 0).unwrap();
    assert_ne!(pb2, pa);
    // A port used by tuples cannot be bound exclusively; a bound port is skipped by tuples.
    assert_eq!(s3.claim(c.now, TUP, pa), Err(PortsError::InUse { owner_slot: NO_SLOT }));
    s3.claim(c.now, TUP, EPHEMERAL_FIRST + 10).unwrap();
    let p = a.claim_ephemeral(c.now, TUP, remote(90), 10).unwrap();
    assert_eq!(p, EPHEMERAL_FIRST + 11);
    assert_eq!(a.owner(TUP, EPHEMERAL_FIRST + 10, remote(90)), Some(s3.me()));
    // Releasing a tuple: only its owner, and the port's count goes back to free.
    assert!(!b.release(c.now, TUP, pa, Some(remote(80))));
    assert!(a.release(c.now, TUP, pa, Some(remote(80))));
    assert_eq!(a.owner(TUP, pa, remote(80)), None);
    assert!(b.release(c.now, TUP, pb, Some(remote(81))));
    let row = &c.region.port_registries()[find_registry(&c.region, TUP).unwrap()];
    assert_eq!(row.owners[pa as usize].load(Ordering::Relaxed), 0);
    s3.claim(c.now, TUP, pa).unwrap();
    // Many claims of both stacks toward one remote: no tuple twice.
    let mut tuples = BTreeSet::new();
    for i in 0..2000u16 {
        for (r, rem) in [(&mut a, remote(7)), (&mut b, remote(7)), (&mut s3, remote(8))] {
            let p = r.claim_ephemeral(c.now, TUP, rem, i.wrapping_mul(13)).unwrap();
            assert!(tuples.insert((p, rem)), "tuple {p} -> {rem} twice");
            assert_eq!(r.owner(TUP, p, rem), Some(r.me()));
        }
    }
}

#[test]
fn distributed_ports_are_never_handed_out() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    assert_eq!(a.claim(c.now, DIST, 80), Err(PortsError::Distributed));
    assert_eq!(a.claim(c.now, DIST, 40000), Err(PortsError::Distributed));
    a.claim(c.now, DIST, 81).unwrap();
    assert_eq!(a.claim_ephemeral(c.now, DIST, remote(1), 40000 - EPHEMERAL_FIRST), Ok(40001));
    let mut n = 1;
    while let Ok(p) = a.claim_ephemeral(c.now, DIST, remote(1), (n * 31) as u16) {
        assert_ne!(p, 40000);
        n += 1;
    }
    assert_eq!(n, (EPHEMERAL_LAST - EPHEMERAL_FIRST) as u32, "every ephemeral port but the distributed one");
    assert_eq!(a.claim_ephemeral(c.now, DALL, remote(1), 0), Err(PortsError::AllDistributed));
    assert_eq!(a.claim(c.now, DALL, 443), Err(PortsError::Distributed));
}

#[test]
fn threaded_claims_never_hold_a_port_twice() {
    let c = Cluster::new();
    let (_n1, a) = c.join("s1");
    let (_n2, b) = c.join("s2");
    let now = c.now;
    let holder = AtomicU32::new(0);
    let run = |mut r: Registry, seed: u64| {
        let mut rng = Rng(seed);
        let mut held: Vec<(Ipv4Addr, u16, SocketAddrV4)> = Vec::new();
        let me = r.me();
        for i in 0..40_000u32 {
            let (addr, rem) = if i % 3 == 0 { (TUP, remote(5)) } else { (VIP, remote(5)) };
            match r.claim_ephemeral(now, addr, rem, rng.next() as u16) {
                Ok(p) => {
                    assert_eq!(r.owner(addr, p, rem), Some(me), "{addr}:{p} claimed by {me:?} but owned by another");
                    held.push((addr, p, rem));
                }
                Err(e) => assert_eq!(e, PortsError::Exhausted),
            }
            if held.len() > 200 || (rng.next() & 1 == 0 && !held.is_empty()) {
                let k = rng.next() as usize % held.len();
                let (addr, p, rem) = held.swap_remove(k);
                assert_eq!(r.owner(addr, p, rem), Some(me));
                assert!(r.release(now, addr, p, Some(rem)));
            }
            // An explicit bind of one port, raced by both: never held by both.
            if i % 16 == 0 && r.claim(now, VIP, 20000).is_ok() {
                assert_eq!(holder.swap(me.pack(), Ordering::SeqCst), 0, "port 20000 bound by two stacks");
                assert_eq!(r.owner(VIP, 20000, remote(1)), Some(me));
                holder.store(0, Ordering::SeqCst);
                assert!(r.release(now, VIP, 20000, None));
            }
        }
        for (addr, p, rem) in held {
            assert!(r.release(now, addr, p, Some(rem)));
        }
        r.stats
    };
    let (sa, sb) = std::thread::scope(|s| {
        let ta = s.spawn(|| run(a, 0x9e37_79b9_7f4a_7c15));
        let tb = s.spawn(|| run(b, 0xdead_beef_1234_5678));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(sa.claims > 10_000 && sb.claims > 10_000);
    // Everything went back: no owner word, no count word, no tuple row left.
    for addr in [VIP, TUP] {
        let row = &c.region.port_registries()[find_registry(&c.region, addr).unwrap()];
        assert!(row.owners.iter().all(|o| o.load(Ordering::Relaxed) == 0), "{addr}");
    }
    assert!(c.region.port_tuples().iter().all(|t| t.ctl.load(Ordering::Relaxed) == 0));
}

#[test]
fn reclaim_frees_a_failed_stacks_ports_after_the_quarantine_only() {
    let mut c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (mut n2, mut b) = c.join("s2");
    let mut mine = Vec::new();
    for i in 0..100 {
        mine.push(a.claim_ephemeral(c.now, VIP, remote(1), i * 11).unwrap());
    }
    a.claim(c.now, VIP, 8080).unwrap();
    let t = a.claim_ephemeral(c.now, TUP, remote(2), 0).unwrap();
    let kept = b.claim_ephemeral(c.now, VIP, remote(1), 0).unwrap();
    // s1 is up: nothing to reclaim, however late.
    assert_eq!(b.reclaim_all(c.now + 10 * QUARANTINE_MS * MS), 0);
    // s1 dies.
    c.now += 5 * MS;
    let failed_at = c.now;
    assert!(n2.declare_failed(c.now, 0, _n1.incarnation()));
    assert_eq!(b.reclaim_all(failed_at + QUARANTINE_MS * MS - 1), 0, "not before the quarantine");
    assert_eq!(b.owner(VIP, 8080, remote(1)), Some(a.me()));
    assert_eq!(b.claim(c.now, VIP, 8080), Err(PortsError::InUse { owner_slot: 0 }));
    c.now = failed_at + QUARANTINE_MS * MS;
    assert_eq!(b.reclaim_all(c.now), 102);
    assert_eq!(b.stats.reclaimed, 102);
    for p in &mine {
        assert_eq!(b.owner(VIP, *p, remote(1)), None);
        assert!(!bit(&c.region, VIP, *p));
    }
    assert_eq!(b.owner(TUP, t, remote(2)), None);
    assert_eq!(b.owner(VIP, kept, remote(1)), Some(b.me()), "the live stack's port stays");
    b.claim(c.now, VIP, 8080).unwrap();
    let row = &c.region.port_registries()[find_registry(&c.region, TUP).unwrap()];
    assert_eq!(row.owners[t as usize].load(Ordering::Relaxed), 0, "the tuple's count went with it");
    // The dead registry's own release finds nothing of its own any more.
    assert!(!a.release(c.now, VIP, mine[0], None));
    assert_eq!(b.reclaim_all(c.now), 0);
}

#[test]
fn reclaim_after_a_rejoin_frees_only_the_old_incarnation() {
    let mut c = Cluster::new();
    let (n1, mut old) = c.join("s1");
    let (_n2, mut b) = c.join("s2");
    let p_old = old.claim_ephemeral(c.now, VIP, remote(1), 0).unwrap();
    let t_old = old.claim_ephemeral(c.now, TUP, remote(1), 0).unwrap();
    // s1 crashes and restarts before anyone declared it failed: a new incarnation.
    drop(n1);
    c.now += 50 * MS;
    let (n1b, mut new) = c.join("s1");
    assert_ne!(new.me(), old.me());
    let rejoined = c.now;
    let p_new = new.claim_ephemeral(c.now, VIP, remote(1), 0).unwrap();
    assert_ne!(p_new, p_old);
    c.now += QUARANTINE_MS * MS - 1;
    assert_eq!(b.reclaim_all(c.now), 0);
    c.now = rejoined + QUARANTINE_MS * MS;
    assert_eq!(b.reclaim_all(c.now), 2);
    assert_eq!(b.owner(VIP, p_old, remote(1)), None);
    assert_eq!(b.owner(TUP, t_old, remote(1)), None);
    assert_eq!(b.owner(VIP, p_new, remote(1)), Some(new.me()));
    // The old handle, told of the rejoin, claims as the new incarnation.
    old.rejoined(&n1b);
    assert_eq!(old.me(), new.me());
    let q = old.claim_ephemeral(c.now, VIP, remote(1), 0).unwrap();
    assert_eq!(b.owner(VIP, q, remote(1)), Some(new.me()));
}

#[test]
fn reclaim_of_a_stack_that_left_counts_from_when_it_was_first_seen_down() {
    let mut c = Cluster::new();
    let (mut n1, mut a) = c.join("s1");
    let (_n2, mut b) = c.join("s2");
    let p = a.claim_ephemeral(c.now, VIP, remote(1), 0).unwrap();
    n1.leave(c.now, &mut Vec::new());
    c.now += 10 * MS;
    let first_seen = c.now;
    assert_eq!(b.reclaim(c.now), 0);
    c.now = first_seen + QUARANTINE_MS * MS - 1;
    assert_eq!(b.reclaim_all(c.now), 0);
    c.now = first_seen + QUARANTINE_MS * MS;
    assert_eq!(b.reclaim_all(c.now), 1);
    assert_eq!(b.owner(VIP, p, remote(1)), None);
}

#[test]
fn reclaim_is_bounded_per_call_and_resumes() {
    let mut c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (mut n2, mut b) = c.join("s2");
    // Ports spread over the whole range.
    let mut ports = Vec::new();
    for i in 0..50u16 {
        ports.push(a.claim_ephemeral(c.now, VIP, remote(1), i * 500).unwrap());
    }
    assert!(n2.declare_failed(c.now, 0, _n1.incarnation()));
    c.now += QUARANTINE_MS * MS;
    let mut freed = 0;
    let mut calls = 0;
    while freed < 50 {
        let n = b.reclaim(c.now);
        assert!(n <= RECLAIM_CHUNK);
        freed += n;
        calls += 1;
        assert!(calls < 100);
    }
    assert!(calls > 1, "one registry's ports take several calls");
    assert_eq!(freed, 50);
}

#[test]
fn move_owner_is_one_cas_and_never_frees() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (_n2, b) = c.join("s2");
    let (_n3, mut s3) = c.join("s3");
    let (ma, mb) = (a.me(), b.me());
    a.claim(c.now, VIP, 9000).unwrap();
    assert!(!a.move_owner(VIP, 9000, None, mb, ma), "b does not hold it");
    assert!(a.move_owner(VIP, 9000, None, ma, mb));
    assert_eq!(a.owner(VIP, 9000, remote(1)), Some(mb));
    assert!(!a.release(c.now, VIP, 9000, None), "a gave it away");
    // A tuple moves alone; the port's count stays.
    let t = a.claim_ephemeral(c.now, TUP, remote(3), 0).unwrap();
    assert!(a.move_owner(TUP, t, Some(remote(3)), ma, mb));
    assert_eq!(a.owner(TUP, t, remote(3)), Some(mb));
    assert!(!a.move_owner(TUP, t, Some(remote(4)), mb, ma), "no such tuple");
    assert!(!a.move_owner(VIP, 9000, None, mb, PortOwner::new(9, 1)), "no stack 9");
    assert_eq!(a.stats.moves, 2);

    // Racing: the port moves back and forth while s3 tries to claim it; s3 never gets it.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..100_000 {
                let (f, t) = if i % 2 == 0 { (mb, ma) } else { (ma, mb) };
                assert!(a.move_owner(VIP, 9000, None, f, t));
            }
            stop.store(true, Ordering::Release);
        });
        s.spawn(|| {
            let mut tries = 0u64;
            while !stop.load(Ordering::Acquire) || tries < 1000 {
                assert!(matches!(s3.claim(c.now, VIP, 9000), Err(PortsError::InUse { .. })));
                assert!(!s3.release(c.now, VIP, 9000, None));
                tries += 1;
            }
        });
    });
    assert_eq!(s3.owner(VIP, 9000, remote(1)), Some(mb));
}

#[test]
fn seed_records_existing_connections_from_free_only() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (_n2, b) = c.join("s2");
    assert!(a.seed(c.now, VIP, 33000, remote(1), b.me()));
    assert!(!a.seed(c.now, VIP, 33000, remote(2), a.me()), "not free");
    assert_eq!(a.owner(VIP, 33000, remote(9)), Some(b.me()));
    assert!(a.seed(c.now, TUP, 33000, remote(1), b.me()));
    assert!(a.seed(c.now, TUP, 33000, remote(2), a.me()));
    assert!(!a.seed(c.now, TUP, 33000, remote(2), b.me()));
    assert_eq!(a.owner(TUP, 33000, remote(1)), Some(b.me()));
    assert_eq!(a.owner(TUP, 33000, remote(2)), Some(a.me()));
    assert!(!a.seed(c.now, VIP, 33001, remote(1), PortOwner::new(7, 1)), "not a stack");
    let row = &c.region.port_registries()[find_registry(&c.region, VIP).unwrap()];
    assert_eq!(row.seeded_ns.load(Ordering::Relaxed), c.now);
    assert_eq!(a.claim_ephemeral(c.now, VIP, remote(1), 33000 - EPHEMERAL_FIRST), Ok(33001));
    assert_eq!(a.stats.seeded, 3);
}

#[test]
fn garbage_in_owner_words_and_tuple_rows_is_ignored() {
    let mut c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (mut n2, mut b) = c.join("s2");
    a.claim(c.now, VIP, 1).unwrap();
    a.claim(c.now, TUP, 1).unwrap();
    let (vi, ti) = (find_registry(&c.region, VIP).unwrap(), find_registry(&c.region, TUP).unwrap());
    let mut rng = Rng(42);
    // Scribble over the whole owner arrays of both, and every tuple row.
    for i in [vi, ti] {
        for o in c.region.port_registries()[i].owners.iter() {
            o.store(rng.next() as u32, Ordering::Relaxed);
        }
        for w in c.region.port_registries()[i].bitmap.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }
    for t in c.region.port_tuples() {
        for w in [&t.ctl, &t.local, &t.remote, &t.check] {
            w.store(rng.next(), Ordering::Relaxed);
        }
    }
    // Specific garbage: a slot beyond the config, a count word in port mode.
    let owners = &c.region.port_registries()[vi].owners;
    owners[EPHEMERAL_FIRST as usize].store(PortOwner::new(9, 1).pack(), Ordering::Relaxed);
    owners[EPHEMERAL_FIRST as usize + 1].store(0x500 | PORT_SHARED, Ordering::Relaxed);
    owners[EPHEMERAL_FIRST as usize + 2].store(0, Ordering::Relaxed);
    assert_eq!(a.owner(VIP, EPHEMERAL_FIRST, remote(1)), None);
    assert_eq!(a.owner(VIP, EPHEMERAL_FIRST + 1, remote(1)), None);
    assert_eq!(a.claim_ephemeral(c.now, VIP, remote(1), 0), Ok(EPHEMERAL_FIRST + 2));
    assert!(a.stats.invalid >= 2);
    assert_eq!(b.claim(c.now, VIP, EPHEMERAL_FIRST), Err(PortsError::InUse { owner_slot: NO_SLOT }));
    // Nothing panics, whatever is read.
    for i in 0..5000u16 {
        let _ = a.claim_ephemeral(c.now, TUP, remote(i), rng.next() as u16);
        let _ = b.claim_ephemeral(c.now, VIP, remote(i), rng.next() as u16);
        let _ = a.owner(TUP, rng.next() as u16, remote(rng.next() as u16));
        let _ = a.release(c.now, TUP, rng.next() as u16, Some(remote(i)));
        let _ = b.move_owner(VIP, rng.next() as u16, None, a.me(), b.me());
    }
    let (_, invalid) = claimed(&c.region, &c.cfg, None);
    assert!(invalid > 0);
    let _ = crate::ops::ports_view(&c.region, &c.cfg, None, c.now);
    assert!(n2.declare_failed(c.now, 0, _n1.incarnation()));
    c.now += QUARANTINE_MS * MS;
    let before = b.stats.invalid;
    let _ = b.reclaim_all(c.now);
    assert!(b.stats.invalid > before);
    // A scribbled registry address (not an address with cluster_ports) is skipped.
    c.region.port_registries()[15].addr.store(0x0a00_0001, Ordering::Relaxed);
    let _ = b.reclaim_all(c.now);
    let _ = claimed(&c.region, &c.cfg, None);
}

#[test]
fn registries_run_out_cleanly() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    // Fill every free registry row with other (range) addresses.
    let mut n = 0;
    for host in 128..144u8 {
        if a.claim_ephemeral(c.now, Ipv4Addr::new(198, 18, 0, host), remote(1), 0).is_ok() {
            n += 1;
        }
    }
    assert_eq!(n, MAX_PORT_REGISTRIES);
    assert_eq!(a.claim(c.now, VIP, 80), Err(PortsError::NoRegistry));
    assert!(!a.release(c.now, VIP, 80, None));
    // Another registry handle finds the same rows.
    let (_n2, b) = c.join("s2");
    assert_eq!(b.owner(Ipv4Addr::new(198, 18, 0, 130), EPHEMERAL_FIRST, remote(1)), Some(a.me()));
}

#[test]
fn ports_view_shows_owners_live_and_dead() {
    let c = Cluster::new();
    let (n1, mut a) = c.join("s1");
    let (mut n2, mut b) = c.join("s2");
    let p = a.claim_ephemeral(c.now, VIP, remote(1), 0).unwrap();
    b.claim(c.now, VIP, 8080).unwrap();
    let t = b.claim_ephemeral(c.now, TUP, remote(2), 0).unwrap();
    let v = crate::ops::ports_view(&c.region, &c.cfg, None, c.now);
    assert_eq!(v.len(), 3);
    assert_eq!((v[0].addr, v[0].port, v[0].stack.as_str(), v[0].live, v[0].remote), (VIP, 8080, "s2", true, None));
    assert_eq!((v[1].port, v[1].stack.as_str(), v[1].slot), (p, "s1", 0));
    assert_eq!((v[2].addr, v[2].port, v[2].mode, v[2].remote), (TUP, t, PortsMode::Tuple, Some(remote(2))));
    assert_eq!(crate::ops::ports_view(&c.region, &c.cfg, Some(TUP), c.now).len(), 1);
    assert!(n2.declare_failed(c.now, 0, n1.incarnation()));
    let v = crate::ops::ports_view(&c.region, &c.cfg, Some(VIP), c.now);
    assert!(!v.iter().find(|x| x.port == p).unwrap().live, "a dead owner's port awaiting reclaim");
    let lines = crate::ops::ports_lines(&c.region, &c.cfg, None, c.now);
    assert!(lines[0].contains("198.18.0.100 (port)") && lines[0].contains("198.18.0.101 (tuple)"), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("198.18.0.101:") && l.contains("198.18.0.1:2") && l.contains("tuple")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("s1") && l.ends_with(" 1")), "s1: 0 live, 1 dead: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("s2 ") && l.contains(" 2 ")), "s2: 2 live: {lines:?}");
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Ephemeral(usize, u16, u16),
        Bind(usize, u16),
        Release(usize, usize),
        Kill(usize),
        Rejoin(usize),
        Advance(u64),
        Reclaim(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3usize, 0..24u16, 1..4u16).prop_map(|(i, s, r)| Op::Ephemeral(i, s, r)),
            3 => (0..3usize, 0..8u16).prop_map(|(i, p)| Op::Bind(i, EPHEMERAL_FIRST + p)),
            5 => (0..3usize, any::<usize>()).prop_map(|(i, k)| Op::Release(i, k)),
            1 => (0..3usize).prop_map(Op::Kill),
            1 => (0..3usize).prop_map(Op::Rejoin),
            2 => (0..1500u64).prop_map(Op::Advance),
            2 => (0..3usize).prop_map(Op::Reclaim),
        ]
    }

    /// Who holds a key of the model: (port, None) an exclusive port, (port, Some(remote)) a
    /// tuple.
    #[derive(Debug, Clone, Copy)]
    struct Holder {
        slot: usize,
        me: PortOwner,
        refs: u32,
        /// Declared failed (or superseded by a rejoin) at: its quarantine starts here.
        dead_at: Option<u64>,
    }

    type Key = (u16, Option<u16>);

    fn run(addr: Ipv4Addr, mode: PortsMode, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut c = Cluster::new();
        let names = ["s1", "s2", "s3"];
        let mut stacks: Vec<Option<(Node, Registry)>> = names.iter().map(|n| Some(c.join(n))).collect();
        let mut held: BTreeMap<Key, Holder> = BTreeMap::new();
        for op in ops {
            let now = c.now;
            match op {
                Op::Ephemeral(i, start, r) => {
                    let Some((_, reg)) = stacks[i].as_mut() else { continue };
                    let me = reg.me();
                    let p = reg.claim_ephemeral(now, addr, remote(r), start);
                    prop_assert!(p.is_ok(), "{:?}", p);
                    let p = p.unwrap();
                    prop_assert!(!held.contains_key(&(p, None)), "port {} is held exclusively", p);
                    let key = match mode {
                        PortsMode::Port => {
                            prop_assert!(!held.keys().any(|k| k.0 == p), "port {} twice", p);
                            (p, None)
                        }
                        PortsMode::Tuple => {
                            prop_assert!(!held.contains_key(&(p, Some(r))), "tuple {} -> {} twice", p, r);
                            (p, Some(r))
                        }
                    };
                    held.insert(key, Holder { slot: i, me, refs: 1, dead_at: None });
                }
                Op::Bind(i, p) => {
                    let Some((_, reg)) = stacks[i].as_mut() else { continue };
                    let me = reg.me();
                    let r = reg.claim(now, addr, p);
                    let tuples_on_p = held.keys().any(|k| k.0 == p && k.1.is_some());
                    match held.get_mut(&(p, None)) {
                        Some(h) if h.me == me && h.dead_at.is_none() => {
                            prop_assert_eq!(r, Ok(()));
                            h.refs += 1;
                        }
                        Some(h) => prop_assert_eq!(r, Err(PortsError::InUse { owner_slot: h.slot as u8 })),
                        None if tuples_on_p => prop_assert_eq!(r, Err(PortsError::InUse { owner_slot: NO_SLOT })),
                        None => {
                            prop_assert_eq!(r, Ok(()));
                            held.insert((p, None), Holder { slot: i, me, refs: 1, dead_at: None });
                        }
                    }
                }
                Op::Release(i, k) => {
                    let Some((_, reg)) = stacks[i].as_mut() else { continue };
                    let mine: Vec<Key> = held.iter().filter(|(_, h)| h.slot == i && h.dead_at.is_none()).map(|(k, _)| *k).collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let key = mine[k % mine.len()];
                    prop_assert!(reg.release(now, addr, key.0, key.1.map(remote)));
                    let h = held.get_mut(&key).unwrap();
                    h.refs -= 1;
                    if h.refs == 0 {
                        held.remove(&key);
                    }
                }
                Op::Kill(i) => {
                    // Someone must be left to declare it failed.
                    if stacks[i].is_none() || stacks.iter().flatten().count() < 2 {
                        continue;
                    }
                    let (node, _) = stacks[i].take().unwrap();
                    let (other, _) = stacks.iter_mut().flatten().next().unwrap();
                    prop_assert!(other.declare_failed(now, i, node.incarnation()));
                    // The member row's failure time now dates every dead key of the slot.
                    for h in held.values_mut().filter(|h| h.slot == i) {
                        h.dead_at = Some(now);
                    }
                }
                Op::Rejoin(i) => {
                    if stacks[i].is_some() {
                        continue;
                    }
                    stacks[i] = Some(c.join(names[i]));
                    // Earlier incarnations are dead since this join (the row forgot its failure).
                    for h in held.values_mut().filter(|h| h.slot == i) {
                        h.dead_at = Some(now);
                    }
                }
                Op::Advance(ms) => c.now += ms * MS,
                Op::Reclaim(i) => {
                    let Some((_, reg)) = stacks[i].as_mut() else { continue };
                    let freed = reg.reclaim_all(now);
                    let due: Vec<Key> = held.iter().filter(|(_, h)| h.dead_at.is_some_and(|at| now >= at + QUARANTINE_MS * MS)).map(|(k, _)| *k).collect();
                    prop_assert_eq!(freed, due.len());
                    for k in due {
                        held.remove(&k);
                    }
                }
            }
            // The region agrees with the model.
            if let Some((_, r)) = stacks.iter().flatten().next() {
                for ((p, rem), h) in &held {
                    prop_assert_eq!(r.owner(addr, *p, remote(rem.unwrap_or(99))), Some(h.me), "{} {:?}", p, rem);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
        #[test]
        fn port_mode_matches_a_model(ops in proptest::collection::vec(op(), 1..120)) {
            run(VIP, PortsMode::Port, ops)?;
        }

        #[test]
        fn tuple_mode_matches_a_model(ops in proptest::collection::vec(op(), 1..120)) {
            run(TUP, PortsMode::Tuple, ops)?;
        }
    }
}

/// `plex ctl ports enable`: an address without `cluster_ports` in the config gets it at run
/// time; every registry sees it at its next refresh (once), seeds its connections, then claims
/// around them; addresses the cluster does not own and configured ones are refused.
#[test]
fn enabled_at_run_time_refresh_then_seed_then_claims_go_around() {
    let c = Cluster::new();
    let (_n1, mut a) = c.join("s1");
    let (_n2, mut b) = c.join("s2");
    assert_eq!(a.mode(PLAIN), None);
    assert!(enable(&c.region, &c.cfg, Ipv4Addr::new(10, 0, 0, 1), PortsMode::Port, c.now).unwrap_err().contains("not a DVIPA"));
    assert!(enable(&c.region, &c.cfg, VIP, PortsMode::Port, c.now).unwrap_err().contains("in the config already"));
    enable(&c.region, &c.cfg, PLAIN, PortsMode::Port, c.now).unwrap();
    assert!(enable(&c.region, &c.cfg, PLAIN, PortsMode::Port, c.now).unwrap_err().contains("on already"));
    assert_eq!(a.refresh(), vec![(PLAIN, PortsMode::Port)]);
    assert_eq!(a.refresh(), vec![], "told once");
    assert_eq!(b.refresh(), vec![(PLAIN, PortsMode::Port)]);
    assert_eq!(a.mode(PLAIN), Some(PortsMode::Port));
    // a had a connection from port 40000 before: recorded; b's claims go around it.
    assert!(a.seed(c.now, PLAIN, 40000, remote(1), a.me()));
    for _ in 0..10 {
        let p = b.claim_ephemeral(c.now, PLAIN, remote(1), (40000 - EPHEMERAL_FIRST) as u16).unwrap();
        assert_ne!(p, 40000);
    }
    let (claimed, _) = claimed(&c.region, &c.cfg, Some(PLAIN));
    assert_eq!(claimed.len(), 11, "the registry lists the address enabled at run time");
}
