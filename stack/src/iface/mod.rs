//! The interface: one Ethernet port of a plex stack and everything above it.
//!
//! [`Stack`] owns the home list (local addresses; an *internal* address is accepted but never
//! answered in ARP), the ARP cache, the socket table (TCP connections, listeners, UDP sockets),
//! and the per-interface counters. It is driven by four calls:
//!
//! - [`Stack::receive`]: one inbound Ethernet frame;
//! - [`Stack::poll_transmit`]: the next outbound frame, written into the caller's buffer (an
//!   AF_XDP UMEM frame, or the simulator's);
//! - [`Stack::poll_timeout`] / [`Stack::handle_timeout`]: timers.
//!
//! Demultiplexing (RFC 9293 3.10.7): exact 4-tuple, then a listener on the exact local address,
//! then a wildcard listener; otherwise a RST (3.10.7.1). Work is bounded per call: sockets with
//! something to send sit on a ready queue (no scan of all sockets), timers sit in a heap with
//! one live entry per socket, frames the interface answers itself (ARP, ICMP, RSTs, SYN
//! cookies, UDP) are built into preallocated slots.
//!
//! ## Rooms
//! [`Stack`], its fields and the public types live here, with construction, the home list
//! and routing; the `impl Stack` blocks are spread over files by job:
//!
//! - `input.rs`: where a frame is received ([`Stack::receive`]): Ethernet, ARP, IPv4 (the
//!   reassembly hook), ICMP, UDP, TCP demultiplexing, port unreachable, RSTs;
//! - `listen.rs`: a segment for a listener: SYN queue, SYN cookies, a cookie ACK's connection;
//! - `table.rs`: the connection table, the one place a connection is installed (`install`,
//!   whatever its origin: SYN, cookie, active open, handoff) and retired (`retire`: closed, or
//!   moved away), and so where the cluster's connection events are raised;
//! - `connections.rs`: what follows every touch of a connection (`after_tcp`: ready queue,
//!   timer heap, events) and where it is freed (`free_connection`, [`Stack::release_closed`]),
//!   and the connection/memory limits;
//! - `output.rs`: where frames are transmitted ([`Stack::poll_transmit`]): the control queue,
//!   socket segments, headers, padding, fragments;
//! - `neighbours.rs`: sockets parked on ARP, ARP requests, neighbour hints;
//! - `timers.rs`: [`Stack::poll_timeout`], [`Stack::handle_timeout`], reassembly expiry;
//! - `sockets.rs`: the socket table and handle accessors; `api.rs`: the application calls;
//! - helpers with their own types: `arp_cache.rs`, `counters.rs`, `frame_queue.rs`,
//!   `rate_limit.rs`, `reassembly.rs`.

mod arp_cache;
mod counters;
mod frame_queue;
pub mod reassembly;
mod rate_limit;
mod api;
mod connections;
mod input;
mod listen;
mod neighbours;
mod output;
mod sockets;
mod table;
mod timers;

pub use arp_cache::{ArpCache, Lookup, NeighbourAction, NeighbourCache, NudState};
pub use counters::{DropReason, IfaceCounters};
pub use frame_queue::FrameQueue;
pub use reassembly::ReassemblyConfig;
use reassembly::{Outcome, Reassembler};
use table::{Origin, Retirement};
pub use rate_limit::{RateLimit, TokenBucket};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::Map;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::cluster::{Cluster, ClusterEvent, InboundRoute, PortClaim, SingleStack};

/// Cluster events kept for a cluster layer that does not drain them (then the oldest go).
const MAX_CLUSTER_EVENTS: usize = 65_536;
use crate::rand::Rng;
use crate::tcp::isn::IsnGenerator;
use crate::tcp::listener::{check_cookie_ack, ListenerCounters, SynDecision};
use crate::tcp::{self, Connection, Event, Listener, State, Tuple};
use crate::time::{Duration, Instant};
use crate::udp::UdpSocket;
use crate::wire::{
    self, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, Icmpv4Packet,
    Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, MacAddr, SeqNumber, TcpControl, TcpPacket,
    TcpRepr, UdpPacket, UdpRepr,
};

const ETH_HDR: usize = 14;
const IP_HDR: usize = 20;

/// What became of a frame given to [`Stack::receive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Handled here: delivered, answered, or held (a fragment, a datagram in a queue).
    Consumed,
    /// Dropped for this reason (counted in [`IfaceCounters`] too).
    Dropped(DropReason),
    /// A segment of a connection another stack of the cluster owns: the caller hands the
    /// frame, unchanged, to stack `stack` ([`crate::cluster::InboundRoute::Forward`]).
    Forward {
        /// The cluster's number for the stack that owns it.
        stack: u32,
    },
    /// A frame for another shard of this process (another queue's stack): the caller hands
    /// it over unchanged ([`crate::cluster::InboundRoute::Shard`], [`crate::cluster::Cluster::route_datagram`]).
    Shard {
        /// The shard's number (its queue).
        shard: u32,
    },
    /// A segment of a connection in the middle of a live handoff: the caller keeps a copy of
    /// the frame for the connection's next owner ([`crate::cluster::InboundRoute::Hold`]).
    Hold,
}

/// What [`Stack::remove_address`] does with the connections on the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Leave them to time out (their segments still go out).
    Keep,
    /// Abort them with a RST (operator delete, a command moving the address).
    Reset,
    /// Forget them without sending anything: the address now answers elsewhere, or this stack
    /// was fenced and must never speak for it again.
    Silent,
}

/// A local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomeAddr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Length of its on-link prefix (what is reached without the gateway).
    pub prefix_len: u8,
    /// Accepted but never answered in ARP (a distributor target's internal DVIPA).
    pub internal: bool,
}

impl HomeAddr {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - self.prefix_len.min(32)) };
        (u32::from(self.addr) & mask) == (u32::from(ip) & mask)
    }
}

/// Interface configuration.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The interface's MAC address (frames to any other unicast MAC are dropped).
    pub mac: MacAddr,
    /// IP MTU of the link.
    pub mtu: usize,
    /// Next hop for destinations outside every home prefix; `None`: those are unreachable.
    pub gateway: Option<Ipv4Addr>,
    /// Verify checksums on input (turn off only when the device verified them).
    pub verify_checksums: bool,
    /// Options for new TCP sockets.
    pub tcp: tcp::Config,
    /// Seed of the stack's randomness (ISN secrets, ephemeral ports).
    pub seed: u64,
    /// Seed of the ISN, timestamp-offset and SYN-cookie secrets alone, for stacks that must
    /// share them: the shards of one process are one host, whose cookie SYN-ACK sent by one
    /// shard may be answered on another queue (Linux keeps one set of secrets per host).
    /// `None`: drawn from [`StackConfig::seed`].
    pub secrets_seed: Option<u64>,
    /// Slots for frames the interface builds itself.
    pub control_slots: usize,
    /// IPv4 reassembly limits (memory, datagrams in flight, timeout).
    pub reassembly: ReassemblyConfig,
    /// TCP connections (embryonic, established, closing, or closed but still held by the
    /// application) at most. A SYN or a valid cookie ACK beyond it is dropped and counted
    /// ([`DropReason::TcpConnLimit`]), a `tcp_connect` fails with [`ApiError::NoBuffers`];
    /// existing connections are not touched.
    pub max_connections: usize,
    /// Socket-buffer memory budget in bytes: the sum of the send and receive rings the live
    /// connections have allocated (a ring is allocated on first use and grows with the bytes
    /// it holds, up to its capacity). A new connection is admitted only if its full capacity
    /// fits under the budget ([`DropReason::TcpMemLimit`] otherwise). Connections already
    /// admitted may still grow their rings, so the bound on buffer memory is `mem_budget` plus
    /// that growth, and absolutely `max_connections` times one connection's capacity.
    pub mem_budget: usize,
    /// ICMP errors (port unreachable) sent at most, [`RateLimit::LINUX_ICMP`] by default.
    pub icmp_error_limit: RateLimit,
    /// RSTs for segments nobody owns (closed ports, bad cookies, stray segments to a
    /// listener) at most; the same 1000/s, burst 50. RSTs of a connection are not limited.
    pub rst_limit: RateLimit,
    /// The application's name, as the cluster's `source_ipa` statements name it (z/OS
    /// SOURCEIPA): its connections that bind no address leave from the address the cluster
    /// gives that name ([`crate::cluster::Cluster::source_address`]). `None`: unnamed.
    pub app_name: Option<String>,
}

impl StackConfig {
    /// The defaults (Linux's where one exists) for an interface with this MAC.
    pub fn new(mac: MacAddr) -> StackConfig {
        StackConfig {
            mac,
            mtu: 1500,
            gateway: None,
            verify_checksums: true,
            tcp: tcp::Config::default(),
            seed: 0,
            secrets_seed: None,
            control_slots: 256,
            reassembly: ReassemblyConfig::default(),
            max_connections: 262_144,
            mem_budget: 4 << 30,
            icmp_error_limit: RateLimit::LINUX_ICMP,
            rst_limit: RateLimit::LINUX_ICMP,
            app_name: None,
        }
    }
}

/// A handle to a socket of the stack. Stale handles (of a freed socket) are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketHandle {
    index: u32,
    generation: u32,
}

impl SocketHandle {
    /// The slot index (stable while the socket lives; reused after it is freed, under
    /// another generation).
    pub fn index(self) -> u32 {
        self.index
    }
}

/// Errors of the socket API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiError {
    /// No socket behind the handle (freed, or never created here).
    InvalidHandle,
    /// The handle is of another socket type.
    WrongSocketType,
    /// The local address and port are taken (`EADDRINUSE`).
    AddrInUse,
    /// The address is not one of this stack's, and the cluster did not make it one
    /// (`EADDRNOTAVAIL`).
    AddrNotAvailable,
    /// No home prefix contains the destination and there is no gateway (`ENETUNREACH`).
    NoRoute,
    /// Ephemeral ports exhausted for this destination.
    NoPorts,
    /// The connection refused the call (its state, or a reset).
    Tcp(tcp::Error),
    /// The stack's connection limit or socket-buffer budget is reached
    /// ([`StackConfig::max_connections`], [`StackConfig::mem_budget`]).
    NoBuffers,
    /// A datagram too large for the MTU, or a full queue.
    MessageTooLarge,
    /// Nothing to read, or no room to write, now: wait for the socket's event.
    WouldBlock,
}

impl From<tcp::Error> for ApiError {
    fn from(e: tcp::Error) -> Self {
        match e {
            tcp::Error::WouldBlock => ApiError::WouldBlock,
            e => ApiError::Tcp(e),
        }
    }
}

impl core::fmt::Display for ApiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApiError::InvalidHandle => f.write_str("invalid socket handle"),
            ApiError::WrongSocketType => f.write_str("wrong socket type for this call"),
            ApiError::AddrInUse => f.write_str("address in use"),
            ApiError::AddrNotAvailable => f.write_str("address not available"),
            ApiError::NoRoute => f.write_str("no route to host"),
            ApiError::NoPorts => f.write_str("no ephemeral port available"),
            ApiError::Tcp(e) => core::fmt::Display::fmt(e, f),
            ApiError::NoBuffers => f.write_str("connection limit or socket-buffer budget reached"),
            ApiError::MessageTooLarge => f.write_str("message too large"),
            ApiError::WouldBlock => f.write_str("operation would block"),
        }
    }
}
impl std::error::Error for ApiError {}

/// What the application hears about a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketEvent {
    /// A TCP connection event.
    Tcp(Event),
    /// A listener has a connection to accept.
    Acceptable,
    /// A UDP socket has a datagram.
    UdpReadable,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // connections dominate; boxing would cost a pointer chase per packet
enum Socket {
    Tcp(TcpSlot),
    Listener(Listener<SocketHandle>),
    Udp(UdpSocket),
}

#[derive(Debug)]
struct TcpSlot {
    conn: Connection,
    /// The listener that created it, while it waits to be accepted.
    parent: Option<SocketHandle>,
    /// The local port is this connection's own (the cluster gave it for an active open, or it
    /// came with a handoff): released when the connection closes, never when it moves away.
    owns_port: bool,
    /// Buffer bytes of this connection counted in `Stack::mem_allocated`.
    mem: usize,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    socket: Option<Socket>,
    /// On the ready queue.
    ready: bool,
    /// Deadline of this socket's live timer-heap entry.
    timer_at: Option<Instant>,
    /// Waiting for ARP resolution of this next hop.
    waiting_arp: Option<Ipv4Addr>,
}

/// A plex TCP/IP stack on one interface.
#[derive(Debug)]
pub struct Stack {
    cfg: StackConfig,
    homes: Vec<HomeAddr>,
    /// The neighbour cache (public for tests and `plex ctl`).
    pub arp: ArpCache,
    slots: Vec<Slot>,
    free: Vec<u32>,
    connections: Map<Tuple, SocketHandle>,
    listeners: Map<SocketAddrV4, SocketHandle>,
    /// The counters of the listeners closed so far (a report after the application closed
    /// its listener still counts what they did).
    closed_listeners: ListenerCounters,
    udp: Map<SocketAddrV4, SocketHandle>,
    /// Bound ports (listeners, UDP sockets) the cluster claimed for this stack: given back at
    /// close.
    claimed_binds: std::collections::HashSet<SocketAddrV4>,
    /// The MACs of the other stacks of the cluster ([`Stack::set_cluster_macs`]): frames from
    /// them were forwarded and teach nothing about the peer's MAC.
    cluster_macs: Vec<MacAddr>,
    ready: VecDeque<SocketHandle>,
    timers: BinaryHeap<Reverse<(Instant, SocketHandle)>>,
    events: VecDeque<(SocketHandle, SocketEvent)>,
    control: FrameQueue,
    /// Sockets waiting for ARP, per next hop.
    arp_waiters: Map<Ipv4Addr, Vec<SocketHandle>>,
    cluster: Box<dyn Cluster>,
    /// What the cluster is told, oldest first (empty when nobody drains it).
    cluster_events: VecDeque<ClusterEvent>,
    rng: Rng,
    isn: IsnGenerator,
    counters: IfaceCounters,
    /// Neighbour-cache timer actions, reused across calls.
    scratch: Vec<(Ipv4Addr, NeighbourAction)>,
    /// IPv4 reassembly (preallocated).
    reasm: Reassembler,
    /// Where an ICMP echo reply too large for one frame is built before it is cut into
    /// fragments (preallocated, one maximal datagram).
    frag_tx: Vec<u8>,
    /// TCP sockets in the table (against `max_connections`).
    tcp_sockets: usize,
    /// Buffer bytes the TCP sockets have allocated (against `mem_budget`).
    mem_allocated: usize,
    icmp_bucket: TokenBucket,
    rst_bucket: TokenBucket,
    /// The `now` of the frame being received (for the answer buckets).
    rx_now: Instant,
    /// What became of the frame being received.
    rx_outcome: Received,
    /// Whether the last frame transmitted came from the control queue (control frames and
    /// socket segments take turns).
    tx_control_last: bool,
}

impl Stack {
    /// A stack alone ([`SingleStack`]), with no address yet ([`Stack::add_address`]).
    pub fn new(cfg: StackConfig) -> Stack {
        Stack::with_cluster(cfg, Box::new(SingleStack))
    }

    /// A stack that is a member of a cluster: it asks `cluster` its questions and queues
    /// [`ClusterEvent`]s for it.
    pub fn with_cluster(cfg: StackConfig, cluster: Box<dyn Cluster>) -> Stack {
        let mut rng = Rng::new(cfg.seed);
        let isn = match cfg.secrets_seed {
            Some(s) => IsnGenerator::new(&mut Rng::new(s)),
            None => IsnGenerator::new(&mut rng),
        };
        let control = FrameQueue::new(cfg.control_slots, cfg.mtu + ETH_HDR);
        let reasm = Reassembler::new(cfg.reassembly);
        let (icmp_bucket, rst_bucket) = (TokenBucket::new(cfg.icmp_error_limit), TokenBucket::new(cfg.rst_limit));
        Stack {
            cfg,
            homes: Vec::new(),
            arp: ArpCache::default(),
            slots: Vec::new(),
            free: Vec::new(),
            connections: Map::default(),
            listeners: Map::default(),
            closed_listeners: ListenerCounters::default(),
            udp: Map::default(),
            claimed_binds: Default::default(),
            cluster_macs: Vec::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            control,
            arp_waiters: Map::default(),
            cluster,
            cluster_events: VecDeque::new(),
            rng,
            isn,
            counters: IfaceCounters::default(),
            scratch: Vec::new(),
            reasm,
            frag_tx: vec![0u8; wire::ipv4::MAX_PAYLOAD],
            tcp_sockets: 0,
            mem_allocated: 0,
            icmp_bucket,
            rst_bucket,
            rx_now: Instant::ZERO,
            rx_outcome: Received::Consumed,
            tx_control_last: false,
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }
    /// The interface's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.cfg.mac
    }
    /// The interface's counters.
    pub fn counters(&self) -> &IfaceCounters {
        &self.counters
    }
    /// MMS_R (RFC 1122 3.3.2, MUST be available to the transport layer): the largest transport
    /// message that can be received, EMTU_R - 20: 65 515 with reassembly, MTU - 20 without.
    pub fn mms_r(&self) -> usize {
        if self.reasm.enabled() {
            wire::ipv4::MAX_PAYLOAD
        } else {
            self.cfg.mtu - IP_HDR
        }
    }
    /// The next thing the cluster must be told (the poll loop drains these every turn).
    pub fn poll_cluster_event(&mut self) -> Option<ClusterEvent> {
        self.cluster_events.pop_front()
    }

    /// Queue `e` for the cluster, if anyone listens. Bounded: a cluster layer that stopped
    /// draining loses the oldest events (counted), the stack's memory does not grow.
    pub(super) fn cluster_event(&mut self, e: ClusterEvent) {
        if !self.cluster.wants_events() {
            return;
        }
        if self.cluster_events.len() >= MAX_CLUSTER_EVENTS {
            self.cluster_events.pop_front();
            self.counters.cluster_events_lost += 1;
        }
        self.cluster_events.push_back(e);
    }

    /// The cluster this stack asks (for the cluster layer to reach its own state through it).
    pub fn cluster_mut(&mut self) -> &mut dyn Cluster {
        self.cluster.as_mut()
    }
    /// The cluster this stack asks, read-only (reports).
    pub fn cluster(&self) -> &dyn Cluster {
        self.cluster.as_ref()
    }
    /// Default options for sockets created from now on.
    pub fn tcp_config_mut(&mut self) -> &mut tcp::Config {
        &mut self.cfg.tcp
    }

    // ----------------------------------------------------------------------------------------
    // Home list.

    /// Add a local address. The caller announces it with [`Stack::announce`] if it moved here.
    pub fn add_address(&mut self, addr: Ipv4Addr, prefix_len: u8, internal: bool) {
        self.homes.retain(|h| h.addr != addr);
        self.homes.push(HomeAddr { addr, prefix_len, internal });
    }

    /// Remove a local address: ARP and IP for it stop at once. What happens to connections on
    /// it is the caller's `departure`.
    pub fn remove_address(&mut self, _now: Instant, addr: Ipv4Addr, departure: Departure) {
        self.homes.retain(|h| h.addr != addr);
        // Answers already queued for it (ARP replies, ICMP, RSTs) must not leave either.
        let a = addr.octets();
        self.control.retain(|f| {
            let ip_src = f.len() >= 30 && f[12..14] == [0x08, 0x00] && f[26..30] == a;
            let arp_sender = f.len() >= 32 && f[12..14] == [0x08, 0x06] && f[28..32] == a;
            !(ip_src || arp_sender)
        });
        if departure == Departure::Keep {
            return;
        }
        let victims: Vec<SocketHandle> =
            self.connections.iter().filter(|(t, _)| *t.local.ip() == addr).map(|(_, h)| *h).collect();
        for h in victims {
            if let Some(c) = self.conn_mut(h) {
                c.abort_by_stack(departure == Departure::Reset);
            }
            self.after_tcp(h);
        }
    }

    /// The MACs of the cluster's other stacks (the cluster layer keeps it current): a segment
    /// from one of them was forwarded by it, so its source MAC is not the peer's and never
    /// corrects the neighbour cache.
    pub fn set_cluster_macs(&mut self, macs: &[MacAddr]) {
        if self.cluster_macs != macs {
            self.cluster_macs = macs.to_vec();
        }
    }

    /// A TCP connection with this 4-tuple is in the table (any state).
    pub fn has_connection(&self, tuple: &Tuple) -> bool {
        self.connections.contains_key(tuple)
    }

    /// TCP connections (any state) whose local address is `addr`.
    pub fn connections_on(&self, addr: Ipv4Addr) -> usize {
        self.connections.keys().filter(|t| *t.local.ip() == addr).count()
    }

    /// The local addresses.
    pub fn homes(&self) -> &[HomeAddr] {
        &self.homes
    }

    /// `addr` is one of the local addresses (internal ones included).
    pub fn has_address(&self, addr: Ipv4Addr) -> bool {
        self.homes.iter().any(|h| h.addr == addr)
    }

    fn answers_arp_for(&self, addr: Ipv4Addr) -> bool {
        self.homes.iter().any(|h| h.addr == addr && !h.internal)
    }

    /// Queue gratuitous ARP for `addr` in both forms (request and reply, as `arping -U` and
    /// `-A` send), so peers and switches move the address to this MAC.
    pub fn announce(&mut self, addr: Ipv4Addr) {
        let mac = self.cfg.mac;
        for op in [ArpOperation::Request, ArpOperation::Reply] {
            let arp = ArpRepr::gratuitous(mac, addr, op);
            if self.queue_arp(MacAddr::BROADCAST, &arp) {
                self.counters.gratuitous_arp_out += 1;
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Routing.

    /// The home address to use as source towards `dst`.
    pub fn source_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let usable = self.homes.iter().filter(|h| !h.internal);
        usable
            .clone()
            .find(|h| h.contains(dst))
            .or_else(|| self.cfg.gateway.and_then(|gw| usable.clone().find(|h| h.contains(gw))))
            .or_else(|| self.homes.iter().find(|h| !h.internal))
            .map(|h| h.addr)
    }

    /// The next hop for `dst`: on-link, else the gateway.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if dst.is_broadcast() {
            return Some(dst);
        }
        if self.homes.iter().any(|h| h.contains(dst)) {
            Some(dst)
        } else {
            self.cfg.gateway
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_tcp;
