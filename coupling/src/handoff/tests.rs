//! Connection handoff with three stacks (a Node and a Handoff each) on one anonymous region,
//! time simulated; threads for the accept/abort race; a property test over random
//! interleavings checking that every connection ends with at most one owner.

use super::*;
use crate::node::{Action, Identity};
use crate::ring::Producer;
use proptest::prelude::*;
use std::collections::BTreeMap;

const MS: u64 = 1_000_000;
const NAMES: [&str; 3] = ["s1", "s2", "s3"];

fn config() -> String {
    let mut s = String::from("[cluster]\nname = \"t\"\nlease_ms = 100\nheartbeat_ms = 10\n");
    for (i, n) in NAMES.iter().enumerate() {
        s += &format!("[[stack]]\nname = \"{n}\"\ninterface = \"plx-{i}\"\naddress = \"198.18.0.{}/24\"\n", 11 + i);
    }
    s
}

fn local() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80)
}

fn client(n: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), n)
}

fn record(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

struct Stack {
    node: Node,
    h: Handoff,
    events: Vec<HandoffEvent>,
}

struct Sim {
    region: Arc<Region>,
    cfg: Arc<ClusterConfig>,
    now: u64,
    stacks: BTreeMap<u8, Stack>,
}

impl Sim {
    fn new() -> Sim {
        let cfg = Arc::new(ClusterConfig::parse(&config(), "test").unwrap());
        let region = Arc::new(Region::anonymous(&cfg.name, cfg.hash()));
        let mut s = Sim { region, cfg, now: 1_000 * MS, stacks: BTreeMap::new() };
        for slot in 0..NAMES.len() as u8 {
            s.join(slot);
        }
        s.step();
        s
    }

    fn join(&mut self, slot: u8) {
        let ident = Identity { pid: 1000 + slot as u32, ..Identity::default() };
        let node = Node::join(self.region.clone(), self.cfg.clone(), NAMES[slot as usize], ident, self.now).unwrap();
        let h = Handoff::new(&node);
        self.stacks.insert(slot, Stack { node, h, events: Vec::new() });
    }

    fn st(&mut self, slot: u8) -> &mut Stack {
        self.stacks.get_mut(&slot).unwrap()
    }

    fn poll(&mut self, slot: u8) {
        let now = self.now;
        if let Some(st) = self.stacks.get_mut(&slot) {
            st.h.poll(now, &mut st.node, &mut st.events);
        }
    }

    fn tick(&mut self, slot: u8) {
        let now = self.now;
        if let Some(st) = self.stacks.get_mut(&slot) {
            let mut acts: Vec<Action> = Vec::new();
            st.node.tick(now, &|_| 0, &mut acts);
            st.h.tick(now, &mut st.node, &mut st.events);
        }
    }

    /// One heartbeat: every stack ticks, then polls.
    fn step(&mut self) {
        self.now += 10 * MS;
        let slots: Vec<u8> = self.stacks.keys().copied().collect();
        for &s in &slots {
            self.tick(s);
        }
        for &s in &slots {
            self.poll(s);
        }
    }

    /// A heartbeat of the nodes only (the handoffs are not driven).
    fn nodes_only(&mut self, n: u64) {
        for _ in 0..n {
            self.now += 10 * MS;
            let now = self.now;
            for st in self.stacks.values_mut() {
                st.node.tick(now, &|_| 0, &mut Vec::new());
            }
        }
    }

    fn take(&mut self, slot: u8) -> Vec<HandoffEvent> {
        std::mem::take(&mut self.st(slot).events)
    }

    fn offer(&mut self, from: u8, to: u8, c: u16, rec: &[u8]) -> Result<TransferId, HandoffError> {
        let now = self.now;
        self.st(from).h.offer(now, to, local(), client(c), rec, false)
    }

    /// kill -9: no more ticks or polls; a survivor's pidfd fires.
    fn kill(&mut self, slot: u8) -> Stack {
        let st = self.stacks.remove(&slot).unwrap();
        let (inc, now) = (st.node.incarnation(), self.now);
        let other = self.stacks.values_mut().next().unwrap();
        assert!(other.node.declare_failed(now, slot as usize, inc));
        st
    }

    fn ctl(&self, idx: usize) -> u64 {
        self.region.handoff_slots()[idx].ctl.load(Ordering::Acquire)
    }

    fn free_slots(&self) -> usize {
        self.region.handoff_slots().iter().filter(|r| r.ctl.load(Ordering::Acquire) as u8 == HandoffState::Free as u8).count()
    }
}

/// The one Offered event in `evs`.
fn offered(evs: &[HandoffEvent]) -> (TransferId, Vec<u8>) {
    let v: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            HandoffEvent::Offered { id, record, .. } => Some((*id, record.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(v.len(), 1, "{evs:?}");
    v[0].clone()
}

#[test]
fn offer_then_accept_moves_the_record_and_frees_the_slot() {
    let mut s = Sim::new();
    let rec = record(5_000, 7);
    let id = s.offer(0, 1, 4000, &rec).unwrap();
    assert_eq!((id.from(), id.to(), id.index(), id.generation()), (0, 1, 0, 0));
    assert_eq!(HandoffState::from_u8(s.ctl(0) as u8), Some(HandoffState::Offered));
    s.poll(1);
    let evs = s.take(1);
    match &evs[..] {
        [HandoffEvent::Offered { id: got, from, local: l, remote, record: r, unconditional }] => {
            assert_eq!((*got, *from, *l, *remote, *unconditional), (id, 0, local(), client(4000), false));
            assert_eq!(r, &rec);
        }
        e => panic!("{e:?}"),
    }
    let now = s.now;
    assert!(s.st(1).h.accept(now, id));
    assert!(!s.st(1).h.accept(now, id), "decided once");
    s.poll(0);
    assert_eq!(s.take(0), vec![HandoffEvent::Accepted { id }]);
    assert_eq!(s.ctl(0), ctl_word(HandoffState::Free, 0, 0, 1), "freed with the generation bumped");
    assert_eq!(s.st(0).h.in_flight(), 0);
    assert_eq!((s.st(0).h.stats.offers, s.st(0).h.stats.outcome_accepted, s.st(0).h.stats.freed), (1, 1, 1));
    assert_eq!((s.st(1).h.stats.offers_in, s.st(1).h.stats.accepted), (1, 1));
    // Nothing more happens on later heartbeats; the next offer takes a fresh id.
    for _ in 0..30 {
        s.step();
    }
    assert!(s.take(0).is_empty() && s.take(1).is_empty());
    let id2 = s.offer(0, 2, 4001, &rec).unwrap();
    assert_ne!(id2, id);
}

#[test]
fn offer_then_reject_delivers_the_reason_and_the_record_back() {
    let mut s = Sim::new();
    let rec = record(100, 1);
    let id = s.offer(0, 1, 4000, &rec).unwrap();
    s.poll(1);
    let (got, _) = offered(&s.take(1));
    assert_eq!(got, id);
    let now = s.now;
    assert!(s.st(1).h.reject(now, id, 503));
    assert!(!s.st(1).h.accept(now, id), "a rejected offer cannot be accepted");
    s.poll(0);
    assert_eq!(s.take(0), vec![HandoffEvent::Rejected { id, reason: 503, record: rec }]);
    assert_eq!(s.free_slots(), HANDOFF_SLOTS);
}

#[test]
fn unconditional_flag_and_empty_and_largest_records_travel() {
    let mut s = Sim::new();
    let now = s.now;
    let id = s.st(0).h.offer(now, 2, local(), client(1), &[], true).unwrap();
    s.poll(2);
    match &s.take(2)[..] {
        [HandoffEvent::Offered { id: got, record, unconditional: true, .. }] => assert!(*got == id && record.is_empty()),
        e => panic!("{e:?}"),
    }
    let big = record(HANDOFF_MAX_RECORD, 3);
    let id = s.offer(1, 2, 2, &big).unwrap();
    s.poll(2);
    let (got, r) = offered(&s.take(2));
    assert!(got == id && r == big);
    let odd = record(13, 9);
    s.offer(1, 2, 3, &odd).unwrap();
    s.poll(2);
    assert_eq!(offered(&s.take(2)).1, odd);
}

#[test]
fn offers_that_cannot_be_made_say_why() {
    let mut s = Sim::new();
    assert_eq!(s.offer(0, 0, 1, b"x"), Err(HandoffError::SelfTarget));
    assert_eq!(s.offer(0, 5, 1, b"x"), Err(HandoffError::UnknownTarget(5)));
    let big = vec![0u8; HANDOFF_MAX_RECORD + 1];
    assert_eq!(s.offer(0, 1, 1, &big), Err(HandoffError::TooLarge { len: HANDOFF_MAX_RECORD + 1, max: HANDOFF_MAX_RECORD }));
    s.kill(2);
    assert_eq!(s.offer(0, 2, 1, b"x"), Err(HandoffError::TargetDown(2)));
    assert_eq!(s.free_slots(), HANDOFF_SLOTS, "no slot taken by a refused offer");
}

#[test]
fn target_dead_before_deciding_aborts_and_a_zombie_accept_fails() {
    let mut s = Sim::new();
    let rec = record(64, 2);
    let id = s.offer(0, 1, 4000, &rec).unwrap();
    s.poll(1);
    let (got, _) = offered(&s.take(1));
    assert_eq!(got, id);
    // s2 stalls (its lease lapses) and is declared failed; it is still running.
    let mut zombie = s.kill(1);
    s.tick(0);
    assert_eq!(s.take(0), vec![HandoffEvent::Aborted { id, why: AbortReason::TargetDown, record: rec }]);
    let now = s.now;
    assert!(!zombie.h.accept(now, id), "the source aborted first");
    assert_eq!(zombie.h.stats.accept_lost, 1);
    assert_eq!(s.free_slots(), HANDOFF_SLOTS);
}

#[test]
fn timeout_abort_and_accept_race_one_winner_both_orders() {
    // The target accepts just before the source's timeout: Accepted, not Aborted.
    let mut s = Sim::new();
    let id = s.offer(0, 1, 1, b"conn").unwrap();
    s.poll(1);
    s.take(1);
    s.nodes_only(DEFAULT_TIMEOUT_NS / (10 * MS) + 1);
    let now = s.now;
    assert!(s.st(1).h.accept(now, id));
    s.tick(0);
    assert_eq!(s.take(0), vec![HandoffEvent::Accepted { id }]);
    assert_eq!(s.st(0).h.stats.aborted, 0);

    // The source times out first: Aborted, and the target's accept fails.
    let id = s.offer(0, 1, 2, b"conn").unwrap();
    s.poll(1);
    s.take(1);
    s.nodes_only(DEFAULT_TIMEOUT_NS / (10 * MS) + 1);
    s.tick(0);
    assert_eq!(s.take(0), vec![HandoffEvent::Aborted { id, why: AbortReason::Timeout, record: b"conn".to_vec() }]);
    let now = s.now;
    assert!(!s.st(1).h.accept(now, id));
    s.poll(0);
    assert!(s.take(0).is_empty());

    // An explicit abort after a reject: the reject stands.
    let id = s.offer(0, 1, 3, b"conn").unwrap();
    s.poll(1);
    s.take(1);
    let now = s.now;
    assert!(s.st(1).h.reject(now, id, 9));
    assert!(!s.st(0).h.abort(now, id));
    s.poll(0);
    assert_eq!(s.take(0), vec![HandoffEvent::Rejected { id, reason: 9, record: b"conn".to_vec() }]);
}

/// Two threads: the target accepts while the source aborts, many times; exactly one wins
/// every time, and the source's event agrees with the winner.
#[test]
#[allow(clippy::disallowed_methods)]
fn concurrent_accept_and_abort_have_exactly_one_winner() {
    let mut s = Sim::new();
    let mut wins = [0u32; 2];
    for n in 0..300u16 {
        let id = s.offer(0, 1, n, b"race").unwrap();
        s.poll(1);
        s.take(1);
        let mut target = s.stacks.remove(&1).unwrap();
        let now = s.now;
        let t = std::thread::spawn(move || {
            let ok = target.h.accept(now, id);
            (target, ok)
        });
        let aborted = s.st(0).h.abort(now, id);
        let (target, accepted) = t.join().unwrap();
        s.stacks.insert(1, target);
        assert!(aborted != accepted, "round {n}: aborted {aborted}, accepted {accepted}");
        wins[accepted as usize] += 1;
        s.poll(0);
        let ev = s.take(0);
        if accepted {
            assert_eq!(ev, vec![HandoffEvent::Accepted { id }]);
        } else {
            assert!(matches!(&ev[..], [HandoffEvent::Aborted { id: i, why: AbortReason::Requested, .. }] if *i == id), "{ev:?}");
        }
        s.poll(1);
        s.take(1);
    }
    assert_eq!(s.free_slots(), HANDOFF_SLOTS);
    eprintln!("accept won {} times, abort {}", wins[1], wins[0]);
}

#[test]
fn source_dead_after_offering_the_target_can_still_accept_then_the_slot_is_reclaimed() {
    let mut s = Sim::new();
    let rec = record(300, 4);
    let id = s.offer(0, 1, 1, &rec).unwrap();
    s.kill(0);
    s.poll(1);
    let (got, r) = offered(&s.take(1));
    assert!(got == id && r == rec);
    let now = s.now;
    assert!(s.st(1).h.accept(now, id), "the record is whole: the target takes the connection");
    assert_eq!(HandoffState::from_u8(s.ctl(0) as u8), Some(HandoffState::Accepted));
    s.step();
    assert_eq!(s.free_slots(), HANDOFF_SLOTS, "a settled slot of a dead source is freed");
    assert!(s.st(1).h.stats.reclaimed + s.st(2).h.stats.reclaimed == 1);

    // Nobody decides an orphan: after orphan_ns it is aborted and freed; a late accept fails.
    let mut s = Sim::new();
    let id = s.offer(0, 1, 1, &rec).unwrap();
    s.kill(0);
    s.poll(1);
    offered(&s.take(1));
    for _ in 0..(DEFAULT_ORPHAN_NS / (10 * MS) + 2) {
        s.step();
    }
    assert_eq!(s.free_slots(), HANDOFF_SLOTS);
    let now = s.now;
    assert!(!s.st(1).h.accept(now, id));
}

#[test]
fn an_offer_whose_message_was_lost_is_found_by_the_scan() {
    let mut s = Sim::new();
    let id = s.offer(0, 1, 1, b"abc").unwrap();
    // Lose the OFFER: s2's node reads it and drops it.
    s.st(1).node.poll_mail();
    s.st(1).node.take_handoff_mail();
    s.poll(1);
    assert!(s.take(1).is_empty());
    s.tick(1);
    assert_eq!(offered(&s.take(1)).0, id);
    // Emitted once only.
    s.step();
    assert!(s.take(1).is_empty());
}

#[test]
fn garbage_in_a_slot_is_ignored_counted_and_freed() {
    let mut s = Sim::new();
    // A record scribbled after it was offered: the check fails, the target ignores it.
    let id = s.offer(0, 1, 1, &record(40, 5)).unwrap();
    s.region.handoff_slots()[id.index()].data[2].fetch_xor(1, Ordering::Relaxed);
    s.poll(1);
    s.tick(1);
    assert!(s.take(1).is_empty());
    assert_eq!(s.st(1).h.stats.invalid, 1, "counted once");
    // The source times out and keeps the connection.
    for _ in 0..(DEFAULT_TIMEOUT_NS / (10 * MS) + 1) {
        s.step();
    }
    assert!(matches!(&s.take(0)[..], [HandoffEvent::Aborted { why: AbortReason::Timeout, .. }]));

    // A control word no version writes: ignored, counted, freed after orphan_ns.
    let row = &s.region.handoff_slots()[7];
    row.ctl.store(0xdead_beef_0000_0109, Ordering::Relaxed);
    s.step();
    assert_eq!(s.st(2).h.stats.invalid, 1);
    for _ in 0..(DEFAULT_ORPHAN_NS / (10 * MS) + 2) {
        s.step();
    }
    assert_eq!(s.ctl(7), ctl_word(HandoffState::Free, 0, 0, 0xdead_bef0));
    // Bad ids and lengths in an offered slot addressed to s3: ignored.
    let id = s.offer(0, 2, 2, b"ok").unwrap();
    let row = &s.region.handoff_slots()[id.index()];
    row.len.store(u32::MAX, Ordering::Relaxed);
    s.poll(2);
    assert!(s.take(2).is_empty());
    // Garbage messages: counted, nothing else.
    let ring = s.region.ring(0, 2).unwrap();
    let junk = Message { kind: kind::OFFER, from_slot: 0, from_incarnation: 0, payload: [u64::MAX, 0, 0, 0, 0, 0, 0] };
    Producer::new(ring).push(&junk).unwrap();
    let before = s.st(2).h.stats.invalid;
    s.poll(2);
    assert_eq!(s.st(2).h.stats.invalid, before + 1);
}

#[test]
fn a_full_ring_keeps_the_offer_in_the_outbox_until_delivered() {
    let mut s = Sim::new();
    let ring = s.region.ring(0, 1).unwrap();
    let filler = Message { kind: 40, from_slot: 0, from_incarnation: 0, payload: [0; 7] };
    while Producer::new(ring).push(&filler).is_ok() {}
    let id = s.offer(0, 1, 1, b"held").unwrap();
    assert_eq!(s.st(0).h.queued_to(1), 1);
    assert!(s.st(0).h.stats.ring_full >= 1);
    // s2 drains its ring (the filler), the offer is still in s1's outbox.
    s.poll(1);
    assert!(s.take(1).is_empty());
    s.poll(0);
    assert_eq!(s.st(0).h.queued_to(1), 0);
    s.poll(1);
    assert_eq!(offered(&s.take(1)).0, id);
}

#[test]
fn when_every_slot_is_in_use_offers_fail_until_one_is_freed() {
    let mut s = Sim::new();
    let ids: Vec<TransferId> = (0..HANDOFF_SLOTS as u16).map(|n| s.offer((n % 2) as u8, 2, n, b"x").unwrap()).collect();
    assert_eq!(s.offer(0, 2, 999, b"x"), Err(HandoffError::NoFreeSlot));
    assert_eq!(s.st(0).h.stats.no_free_slot, 1);
    s.poll(2);
    assert_eq!(s.take(2).len(), HANDOFF_SLOTS);
    let now = s.now;
    assert!(s.st(2).h.accept(now, ids[4]));
    s.poll(ids[4].from());
    let id = s.offer(0, 2, 999, b"x").unwrap();
    assert_eq!((id.index(), id.generation()), (4, 1));
}

#[test]
fn a_rejoined_target_forgets_offers_to_its_old_incarnation() {
    let mut s = Sim::new();
    let id = s.offer(0, 1, 1, b"x").unwrap();
    s.poll(1);
    offered(&s.take(1));
    // s2 stalls past its lease and is declared failed; its next tick finds itself fenced and
    // rejoins with a new incarnation.
    let inc = s.st(1).node.incarnation();
    let now = s.now;
    assert!(s.st(2).node.declare_failed(now, 1, inc));
    s.tick(1);
    assert_ne!(s.st(1).node.incarnation(), inc);
    let now = s.now;
    assert!(!s.st(1).h.accept(now, id));
    s.tick(0);
    assert!(matches!(&s.take(0)[..], [HandoffEvent::Aborted { why: AbortReason::TargetDown, .. }]));
}

#[test]
fn a_fenced_source_still_learns_its_outcomes_and_its_old_slots_are_freed() {
    let mut s = Sim::new();
    let acc = s.offer(0, 1, 1, b"a").unwrap();
    let rej = s.offer(0, 2, 2, b"r").unwrap();
    s.poll(1);
    s.poll(2);
    s.take(1);
    s.take(2);
    let now = s.now;
    assert!(s.st(1).h.accept(now, acc));
    assert!(s.st(2).h.reject(now, rej, 4));
    // s1 is declared failed before it reads the outcomes, and rejoins at its next tick.
    let inc = s.st(0).node.incarnation();
    assert!(s.st(1).node.declare_failed(now, 0, inc));
    s.step();
    assert_ne!(s.st(0).node.incarnation(), inc);
    let mut evs = s.take(0);
    evs.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(evs, vec![HandoffEvent::Accepted { id: acc }, HandoffEvent::Rejected { id: rej, reason: 4, record: b"r".to_vec() }]);
    assert_eq!(s.free_slots(), HANDOFF_SLOTS);

    // Had the process restarted instead (a new Handoff: nobody resolves them), the other
    // stacks free its settled slots after orphan_ns.
    let id = s.offer(0, 1, 3, b"x").unwrap();
    s.poll(1);
    s.take(1);
    let now = s.now;
    assert!(s.st(1).h.accept(now, id));
    let inc = s.st(0).node.incarnation();
    assert!(s.st(1).node.declare_failed(now, 0, inc));
    let st = s.st(0);
    st.h = Handoff { timeout_ns: DEFAULT_TIMEOUT_NS, ..Handoff::new(&st.node) };
    s.step();
    assert_eq!(s.free_slots(), HANDOFF_SLOTS - 1, "the rejoined process gets orphan_ns to read it");
    for _ in 0..(DEFAULT_ORPHAN_NS / (10 * MS) + 2) {
        s.step();
    }
    assert_eq!(s.free_slots(), HANDOFF_SLOTS);
    assert!(s.take(0).is_empty());
}

#[test]
fn a_source_that_died_while_writing_leaves_a_slot_that_is_freed() {
    let mut s = Sim::new();
    let row = &s.region.handoff_slots()[3];
    row.ctl.store(ctl_word(HandoffState::Writing, 0, 1, 6), Ordering::Release);
    row.from_inc.store(s.stacks[&0].node.incarnation(), Ordering::Relaxed);
    s.step();
    assert_eq!(s.ctl(3), ctl_word(HandoffState::Writing, 0, 1, 6), "its source is alive: left alone");
    s.kill(0);
    for _ in 0..(DEFAULT_ORPHAN_NS / (10 * MS) + 2) {
        s.step();
    }
    assert_eq!(s.ctl(3), ctl_word(HandoffState::Free, 0, 0, 7));
    assert_eq!(s.st(1).h.stats.reclaimed + s.st(2).h.stats.reclaimed, 1);
}

#[test]
fn handoff_mail_nobody_takes_never_blocks_the_distributors() {
    let mut s = Sim::new();
    let region = s.region.clone();
    let ring = region.ring(0, 1).unwrap();
    let m = Message { kind: kind::ACCEPTED, from_slot: 0, from_incarnation: 0, payload: [0; 7] };
    for _ in 0..20 {
        while Producer::new(ring).push(&m).is_ok() {}
        s.st(1).node.poll_mail();
    }
    assert!(s.st(1).node.stats.messages_dropped > 0);
    let d = Message { kind: crate::dist::kind::SRVSTAT, ..m };
    Producer::new(ring).push(&d).unwrap();
    s.st(1).node.poll_mail();
    assert_eq!(s.st(1).node.take_dist_mail().len(), 1);
}

// ---------------------------------------------------------------------- property test

#[derive(Debug, Clone)]
enum Op {
    Offer(u8, u8),
    Accept(u8, usize),
    Reject(u8, usize),
    Abort(u8, usize),
    Poll(u8),
    Step,
    Wait,
    Kill(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u8..3).prop_map(|(a, b)| Op::Offer(a, b)),
        3 => (0u8..3, 0usize..4).prop_map(|(a, b)| Op::Accept(a, b)),
        1 => (0u8..3, 0usize..4).prop_map(|(a, b)| Op::Reject(a, b)),
        1 => (0u8..3, 0usize..4).prop_map(|(a, b)| Op::Abort(a, b)),
        3 => (0u8..3).prop_map(Op::Poll),
        2 => Just(Op::Step),
        1 => Just(Op::Wait),
        1 => (0u8..3).prop_map(Op::Kill),
    ]
}

#[derive(Debug, Default, Clone, Copy)]
struct Fate {
    from: u8,
    to: u8,
    /// The source re-installed it (Rejected / Aborted).
    source: u32,
    /// The target installed it (accept returned true).
    target: u32,
    /// The source learned Accepted.
    accepted_seen: bool,
    /// The source could not learn the outcome.
    unknown: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any interleaving of offers, decisions, aborts, heartbeats, waits and kills across three
    /// stacks: every transfer is installed at most once (source or target), exactly once when
    /// neither of its stacks died, and a source that lives learns what its target did.
    #[test]
    fn every_transfer_has_at_most_one_owner(ops in proptest::collection::vec(op(), 1..80)) {
        let mut s = Sim::new();
        let mut fates: BTreeMap<TransferId, Fate> = BTreeMap::new();
        let mut offers: BTreeMap<u8, Vec<TransferId>> = BTreeMap::new();
        let mut dead: Vec<u8> = Vec::new();
        let mut c = 0u16;
        let incs: BTreeMap<u8, u64> = s.stacks.iter().map(|(k, st)| (*k, st.node.incarnation())).collect();
        let collect = |s: &mut Sim, fates: &mut BTreeMap<TransferId, Fate>, offers: &mut BTreeMap<u8, Vec<TransferId>>| {
            for slot in s.stacks.keys().copied().collect::<Vec<_>>() {
                for e in s.take(slot) {
                    let id = match &e {
                        HandoffEvent::Offered { id, .. } => {
                            offers.entry(slot).or_default().push(*id);
                            continue;
                        }
                        HandoffEvent::Unknown { id } => {
                            fates.get_mut(id).unwrap().unknown = true;
                            continue;
                        }
                        HandoffEvent::Accepted { id } | HandoffEvent::Rejected { id, .. } | HandoffEvent::Aborted { id, .. } => *id,
                    };
                    assert!(fates.contains_key(&id), "{e:?} at {slot} for a transfer never offered: {fates:?}");
                    let f = fates.get_mut(&id).unwrap();
                    if matches!(e, HandoffEvent::Accepted { .. }) {
                        f.accepted_seen = true;
                    } else {
                        f.source += 1;
                    }
                }
            }
        };
        for o in ops {
            let now = s.now;
            match o {
                Op::Offer(a, b) if s.stacks.contains_key(&a) => {
                    c += 1;
                    if let Ok(id) = s.offer(a, b, c, &record(c as usize, a)) {
                        fates.insert(id, Fate { from: a, to: b, ..Fate::default() });
                    }
                }
                Op::Accept(t, k) | Op::Reject(t, k) if s.stacks.contains_key(&t) => {
                    let Some(list) = offers.get_mut(&t) else { continue };
                    if list.is_empty() { continue }
                    let id = list.remove(k % list.len());
                    if matches!(o, Op::Accept(..)) {
                        if s.st(t).h.accept(now, id) {
                            fates.get_mut(&id).unwrap().target += 1;
                        }
                    } else {
                        s.st(t).h.reject(now, id, 7);
                    }
                }
                Op::Abort(a, k) if s.stacks.contains_key(&a) => {
                    let mine: Vec<TransferId> = fates.iter().filter(|(_, f)| f.from == a && f.source == 0 && !f.accepted_seen).map(|(i, _)| *i).collect();
                    if !mine.is_empty() {
                        s.st(a).h.abort(now, mine[k % mine.len()]);
                    }
                }
                Op::Poll(a) => s.poll(a),
                Op::Step => s.step(),
                Op::Wait => s.now += 50 * MS,
                Op::Kill(a) if s.stacks.len() > 1 && s.stacks.contains_key(&a) => {
                    s.kill(a);
                    dead.push(a);
                    offers.remove(&a);
                }
                _ => {}
            }
            collect(&mut s, &mut fates, &mut offers);
            // A stack that was fenced (two waits without a heartbeat lapse the lease) and
            // rejoined lost its incarnation: its transfers count as a death.
            for (slot, st) in &s.stacks {
                if st.node.incarnation() != incs[slot] && !dead.contains(slot) {
                    dead.push(*slot);
                }
            }
        }
        // Let everything settle: undecided offers time out, orphans are reclaimed.
        for _ in 0..(DEFAULT_ORPHAN_NS / (10 * MS) + 30) {
            s.step();
            collect(&mut s, &mut fates, &mut offers);
        }
        for (slot, st) in &s.stacks {
            if st.node.incarnation() != incs[slot] && !dead.contains(slot) {
                dead.push(*slot);
            }
        }
        for (id, f) in &fates {
            prop_assert!(!f.unknown || dead.contains(&f.from), "{}: unknown outcome for a live source", id);
            prop_assert!(f.source + f.target <= 1, "{id}: installed twice {f:?}");
            let died = dead.contains(&f.from) || dead.contains(&f.to);
            if !died {
                prop_assert_eq!(f.source + f.target, 1, "{}: {:?}", id, f);
                prop_assert_eq!(f.accepted_seen, f.target == 1, "{}: {:?}", id, f);
            }
            if !dead.contains(&f.from) && f.target == 1 && !f.unknown {
                prop_assert!(f.accepted_seen, "{}: the source never learned", id);
            }
        }
        prop_assert_eq!(s.free_slots(), HANDOFF_SLOTS, "every slot freed in the end");
        for st in s.stacks.values() {
            prop_assert_eq!(st.h.in_flight(), 0);
        }
    }
}

/// `plex ctl show handoff` lists a transfer in flight with its state, stacks and connection,
/// and counts the free slots.
#[test]
fn ctl_show_handoff_lists_the_transfers_in_flight() {
    let mut s = Sim::new();
    let rec = record(5_000, 7);
    let id = s.offer(0, 1, 4000, &rec).unwrap();
    let lines = crate::ops::handoff_lines(&s.region, &s.cfg, s.now);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[1].contains("offered") && lines[1].contains(&client(4000).to_string()) && lines[1].contains("5000"), "{lines:?}");
    assert_eq!(lines[2], format!("{} of {} slots free", HANDOFF_SLOTS - 1, HANDOFF_SLOTS));
    s.poll(1);
    let _ = s.take(1);
    let now = s.now;
    assert!(s.st(1).h.accept(now, id));
    let lines = crate::ops::handoff_lines(&s.region, &s.cfg, s.now);
    assert!(lines[1].contains("accepted"), "{lines:?}");
}
