//! The shards of one plex process on one interface (one stack per queue) as one host: which
//! shard owns each connection, and the frames one shard hands another.
//!
//! Each queue's stack is a shard with its own connection table, but the interface decides
//! which queue a segment arrives on: a NIC by its RSS hash, a veth by the sender's choice of
//! transmit queue (Linux picks it from a per-socket hash, and picks again after a
//! retransmission timeout). So the SYN-ACK of a connection shard 0 opened may arrive on queue
//! 1, and an accepted connection's segments may move queues in mid-stream. Without help the
//! shard that receives such a segment has no connection for it and answers with a RST.
//!
//! [`ShardSet`] keeps the owner of every connection of the process (the shard that opened or
//! accepted it), and [`ShardCluster`] is each shard's [`Cluster`]: a segment that matches no
//! connection of its shard and is not a SYN is forwarded to the owner, through the owner's
//! inbox (a bounded queue of frame buffers, taken from a shared pool), and the owner's poll
//! thread is woken. Ephemeral ports are claimed in the same table before the SYN leaves, so
//! two shards never open the same 4-tuple. Every ARP frame is given to every shard: each has
//! its own neighbour cache, and the reply to one shard's request may arrive on another queue.
//!
//! The table is behind a `parking_lot` read-write lock, taken only off the per-segment path:
//! when a connection opens or closes (write), and for segments that miss their shard's own
//! table (read).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam::queue::ArrayQueue;
use parking_lot::RwLock;
use stack::cluster::{Cluster, ClusterEvent, InboundRoute, SingleStack, EPHEMERAL_PORTS};
use stack::iface::{Received, Stack};
use stack::rand::Rng;
use stack::tcp::Tuple;
use stack::time::Instant;

use crate::xsk::Waker;

/// Frames an inbox holds before the sender drops (TCP retransmits).
const INBOX: usize = 1024;
/// Bytes of a frame buffer (the largest frame plex accepts: MTU 3000 plus headers).
const FRAME: usize = 4096;
/// Frame buffers the process allocates at most for handing frames between shards.
const BUFFERS: usize = 4096;

/// The shards of one process, shared by their poll threads.
#[derive(Debug)]
pub struct ShardSet {
    owners: RwLock<HashMap<Tuple, u32>>,
    /// The shard of every UDP socket of the process, by local address.
    udp: RwLock<HashMap<SocketAddrV4, u32>>,
    inboxes: Vec<ArrayQueue<(Vec<u8>, usize)>>,
    pool: ArrayQueue<Vec<u8>>,
    allocated: AtomicUsize,
    wakers: OnceLock<Vec<Arc<Waker>>>,
}

impl ShardSet {
    /// A set of `n` shards.
    pub fn new(n: usize) -> Arc<ShardSet> {
        Arc::new(ShardSet {
            owners: RwLock::new(HashMap::new()),
            udp: RwLock::new(HashMap::new()),
            inboxes: (0..n).map(|_| ArrayQueue::new(INBOX)).collect(),
            pool: ArrayQueue::new(BUFFERS),
            allocated: AtomicUsize::new(0),
            wakers: OnceLock::new(),
        })
    }

    /// The shards' wakers, in shard order (a handed-over frame wakes its shard).
    pub fn set_wakers(&self, wakers: Vec<Arc<Waker>>) {
        let _ = self.wakers.set(wakers);
    }

    /// The shard that owns `tuple`, if any.
    pub fn owner(&self, tuple: &Tuple) -> Option<u32> {
        self.owners.read().get(tuple).copied()
    }

    /// Hand `frame` to shard `to`: false if its inbox is full or no buffer is left (the frame
    /// is dropped; the peer retransmits).
    pub fn hand_over(&self, to: u32, frame: &[u8]) -> bool {
        let Some(inbox) = self.inboxes.get(to as usize) else { return false };
        if frame.len() > FRAME || inbox.is_full() {
            return false;
        }
        let mut buf = match self.pool.pop() {
            Some(b) => b,
            None if self.allocated.fetch_add(1, Ordering::Relaxed) < BUFFERS => vec![0u8; FRAME],
            None => return false,
        };
        buf[..frame.len()].copy_from_slice(frame);
        if let Err((buf, _)) = inbox.push((buf, frame.len())) {
            let _ = self.pool.push(buf);
            return false;
        }
        if let Some(w) = self.wakers.get().and_then(|w| w.get(to as usize)) {
            w.wake();
        }
        true
    }

    /// Frames handed to shard `me`, each given to `f`, their buffers back to the pool.
    pub fn drain(&self, me: u32, mut f: impl FnMut(&[u8])) -> usize {
        let Some(inbox) = self.inboxes.get(me as usize) else { return 0 };
        let mut n = 0;
        while let Some((buf, len)) = inbox.pop() {
            f(&buf[..len]);
            let _ = self.pool.push(buf);
            n += 1;
        }
        n
    }

    /// The shard whose UDP socket takes datagrams for `local`, if any.
    pub fn udp_owner(&self, local: SocketAddrV4) -> Option<u32> {
        let udp = self.udp.read();
        udp.get(&local).or_else(|| udp.get(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, local.port()))).copied()
    }

    /// Apply shard `me`'s connection events (opened: it owns the tuple; closed or moved
    /// away: the tuple is free) and UDP sockets (bound, closed).
    pub fn apply(&self, me: u32, events: &[ClusterEvent]) {
        if events.is_empty() {
            return;
        }
        if events.iter().any(|e| matches!(e, ClusterEvent::UdpBound(_) | ClusterEvent::UdpClosed(_))) {
            let mut udp = self.udp.write();
            for e in events {
                match *e {
                    ClusterEvent::UdpBound(a) => {
                        udp.insert(a, me);
                    }
                    ClusterEvent::UdpClosed(a) if udp.get(&a) == Some(&me) => {
                        udp.remove(&a);
                    }
                    _ => {}
                }
            }
        }
        let mut owners = self.owners.write();
        for e in events {
            match *e {
                ClusterEvent::ConnectionOpened(t, _) => {
                    owners.insert(t, me);
                }
                ClusterEvent::ConnectionClosed(t) | ClusterEvent::ConnectionMoved(t) if owners.get(&t) == Some(&me) => {
                    owners.remove(&t);
                }
                _ => {}
            }
        }
    }
}

/// One shard's [`Cluster`]: segments of another shard's connections go there; ephemeral
/// ports are claimed process-wide.
#[derive(Debug)]
pub struct ShardCluster {
    me: u32,
    set: Arc<ShardSet>,
}

impl ShardCluster {
    /// Shard `me` of `set`.
    pub fn new(me: u32, set: Arc<ShardSet>) -> ShardCluster {
        ShardCluster { me, set }
    }
}

impl Cluster for ShardCluster {
    fn route_inbound(&mut self, _now: Instant, tuple: &Tuple, syn: bool) -> InboundRoute {
        if syn {
            return InboundRoute::Local;
        }
        match self.set.owner(tuple) {
            Some(k) if k != self.me => InboundRoute::Forward { stack: k },
            _ => InboundRoute::Local,
        }
    }

    /// A datagram no socket of this shard takes goes to the shard whose socket does (a veth
    /// or a NIC's RSS picks the queue by the sender's hash, not by the socket).
    fn route_datagram(&mut self, local: SocketAddrV4) -> Option<u32> {
        self.set.udp_owner(local).filter(|&k| k != self.me)
    }

    fn ephemeral_port(&mut self, now: Instant, local: Ipv4Addr, remote: Option<SocketAddrV4>, rng: &mut Rng) -> Option<u16> {
        // A UDP socket's port (no peer): process-wide ports are a TCP matter.
        let Some(remote) = remote else { return SingleStack.ephemeral_port(now, local, None, rng) };
        let span = (*EPHEMERAL_PORTS.end() - *EPHEMERAL_PORTS.start()) as u64 + 1;
        let mut owners = self.set.owners.write();
        for _ in 0..64 {
            let port = *EPHEMERAL_PORTS.start() + rng.below(span) as u16;
            let tuple = Tuple { local: SocketAddrV4::new(local, port), remote };
            if let std::collections::hash_map::Entry::Vacant(e) = owners.entry(tuple) {
                e.insert(self.me);
                return Some(port);
            }
        }
        None
    }
}

/// A poll thread's link to its set: drains its stack's connection events into the table and
/// its inbox into its stack.
#[derive(Debug)]
pub struct ShardLink {
    me: u32,
    set: Arc<ShardSet>,
    events: Vec<ClusterEvent>,
    /// Frames handed to another shard, and frames that could not be.
    pub handed: u64,
    /// Frames another shard's table named us for but that are not ours either (dropped).
    pub unhanded: u64,
}

impl ShardLink {
    /// Shard `me` of `set`.
    pub fn new(me: u32, set: Arc<ShardSet>) -> ShardLink {
        ShardLink { me, set, events: Vec::new(), handed: 0, unhanded: 0 }
    }

    /// The set.
    pub fn set(&self) -> &Arc<ShardSet> {
        &self.set
    }

    /// Record the stack's connection events, then give it the frames other shards handed
    /// over (a frame that would go elsewhere again is dropped: no ping-pong). Returns whether
    /// there was any. `now` is read only when a frame is there.
    pub fn turn(&mut self, stack: &mut Stack, now: impl FnOnce() -> Instant) -> bool {
        self.events.clear();
        while let Some(e) = stack.poll_cluster_event() {
            self.events.push(e);
        }
        self.set.apply(self.me, &self.events);
        if self.set.inboxes.get(self.me as usize).is_none_or(|q| q.is_empty()) {
            return false;
        }
        let now = now();
        let mut dropped = 0;
        let n = self.set.drain(self.me, |f| {
            if let Received::Forward { .. } = stack.receive(now, f) {
                dropped += 1;
            }
        });
        self.unhanded += dropped;
        n > 0
    }

    /// Give every other shard a copy of `frame` (an ARP frame: each shard has its own
    /// neighbour cache).
    pub fn share(&mut self, frame: &[u8]) {
        for k in 0..self.set.inboxes.len() as u32 {
            if k != self.me {
                self.hand_over(k, frame);
            }
        }
    }

    /// Hand `frame` (which the stack said belongs to shard `to`) over.
    pub fn hand_over(&mut self, to: u32, frame: &[u8]) -> bool {
        let ok = self.set.hand_over(to, frame);
        if ok {
            self.handed += 1;
        } else {
            self.unhanded += 1;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stack::cluster::Opened;

    fn t(lp: u16, rp: u16) -> Tuple {
        Tuple { local: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), lp), remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), rp) }
    }

    #[test]
    fn a_segment_of_another_shards_connection_goes_there_and_a_syn_stays() {
        let set = ShardSet::new(2);
        set.apply(0, &[ClusterEvent::ConnectionOpened(t(40000, 7), Opened::Active)]);
        let mut c1 = ShardCluster::new(1, set.clone());
        let now = Instant::ZERO;
        assert_eq!(c1.route_inbound(now, &t(40000, 7), false), InboundRoute::Forward { stack: 0 });
        assert_eq!(c1.route_inbound(now, &t(40000, 7), true), InboundRoute::Local, "a SYN opens a connection here");
        assert_eq!(c1.route_inbound(now, &t(40001, 7), false), InboundRoute::Local, "unknown: this shard answers (RST)");
        let mut c0 = ShardCluster::new(0, set.clone());
        assert_eq!(c0.route_inbound(now, &t(40000, 7), false), InboundRoute::Local, "never to itself");
        set.apply(0, &[ClusterEvent::ConnectionClosed(t(40000, 7))]);
        assert_eq!(c1.route_inbound(now, &t(40000, 7), false), InboundRoute::Local);
    }

    /// A datagram for a UDP socket of shard 0 that arrives on queue 1 is handed to shard 0,
    /// through the stacks themselves (not only the table): it is received there.
    #[test]
    fn a_datagram_for_another_shards_socket_goes_there() {
        use stack::iface::{Received, StackConfig};
        use stack::wire::MacAddr;
        let set = ShardSet::new(2);
        let ip = Ipv4Addr::new(198, 18, 1, 2);
        let mut shards: Vec<Stack> = (0..2u32)
            .map(|k| {
                let mut c = StackConfig::new(MacAddr([2, 0, 0, 0, 1, 2]));
                c.seed = k as u64 + 1;
                let mut s = Stack::with_cluster(c, Box::new(ShardCluster::new(k, set.clone())));
                s.add_address(ip, 24, false);
                s
            })
            .collect();
        let mut links: Vec<ShardLink> = (0..2).map(|k| ShardLink::new(k, set.clone())).collect();
        let sock = shards[0].udp_bind(SocketAddrV4::new(ip, 5353)).unwrap();
        let any = shards[0].udp_bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 6000)).unwrap();
        links[0].turn(&mut shards[0], || Instant::ZERO);
        // A peer's datagrams, framed as they arrive on queue 1.
        let mut peer = Stack::new(StackConfig::new(MacAddr([2, 0, 0, 0, 1, 1])));
        peer.add_address(Ipv4Addr::new(198, 18, 1, 1), 24, false);
        let p = peer.udp_bind(SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 4000)).unwrap();
        for port in [5353u16, 6000, 7777] {
            peer.udp_send_to(Instant::ZERO, p, SocketAddrV4::new(ip, port), b"hello").unwrap();
        }
        // ARP first (answered by shard 1, as any shard answers), then the datagrams.
        let mut buf = vec![0u8; 2048];
        let mut frames = Vec::new();
        for _ in 0..4 {
            while let Some(n) = peer.poll_transmit(Instant::ZERO, &mut buf) {
                let f = buf[..n].to_vec();
                if u16::from_be_bytes([f[12], f[13]]) == 0x0806 {
                    shards[1].receive(Instant::ZERO, &f);
                } else {
                    frames.push(f);
                }
            }
            while let Some(n) = shards[1].poll_transmit(Instant::ZERO, &mut buf) {
                peer.receive(Instant::ZERO, &buf[..n]);
            }
        }
        assert_eq!(frames.len(), 3);
        for f in &frames[..2] {
            match shards[1].receive(Instant::ZERO, f) {
                Received::Forward { stack: 0 } => assert!(links[1].hand_over(0, f)),
                r => panic!("queue 1 kept a datagram of shard 0's socket: {r:?}"),
            }
        }
        assert_eq!(shards[1].counters().udp_forwarded, 2);
        assert!(!matches!(shards[1].receive(Instant::ZERO, &frames[2]), Received::Forward { .. }), "nobody's port: dropped here");
        links[0].turn(&mut shards[0], || Instant::ZERO);
        let mut got = [0u8; 16];
        assert_eq!(shards[0].udp_recv_from(sock, &mut got).map(|(n, _)| n), Ok(5));
        assert_eq!(shards[0].udp_recv_from(any, &mut got).map(|(n, _)| n), Ok(5));
        // Closed: no longer routed.
        shards[0].close(Instant::ZERO, sock).unwrap();
        links[0].turn(&mut shards[0], || Instant::ZERO);
        assert_eq!(set.udp_owner(SocketAddrV4::new(ip, 5353)), None);
    }

    #[test]
    fn two_shards_never_draw_the_same_tuple() {
        let set = ShardSet::new(2);
        let (mut a, mut b) = (ShardCluster::new(0, set.clone()), ShardCluster::new(1, set.clone()));
        // The same random sequence on both: without the shared table they would collide.
        let (mut ra, mut rb) = (Rng::new(7), Rng::new(7));
        let remote = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 7);
        let local = Ipv4Addr::new(198, 18, 1, 2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let pa = a.ephemeral_port(Instant::ZERO, local, Some(remote), &mut ra).unwrap();
            let pb = b.ephemeral_port(Instant::ZERO, local, Some(remote), &mut rb).unwrap();
            assert!(seen.insert(pa) && seen.insert(pb), "port drawn twice");
        }
        assert!(set.owner(&t(*seen.iter().next().unwrap(), 7)).is_some());
    }

    #[test]
    fn handed_over_frames_arrive_in_order_and_the_buffers_come_back() {
        let set = ShardSet::new(2);
        for i in 0..10u8 {
            assert!(set.hand_over(1, &[i; 60]));
        }
        let mut got = Vec::new();
        assert_eq!(set.drain(1, |f| got.push(f[0])), 10);
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(set.pool.len(), 10);
        assert!(!set.hand_over(2, &[0; 60]), "no such shard");
        assert!(!set.hand_over(0, &[0; FRAME + 1]), "too long");
        for _ in 0..INBOX {
            assert!(set.hand_over(0, &[1; 60]));
        }
        assert!(!set.hand_over(0, &[1; 60]), "a full inbox drops");
    }
}
