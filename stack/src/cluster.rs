//! How the stack reaches cluster services.
//!
//! A plex stack may be one member of a cluster that shares addresses (dynamic VIPAs), spreads
//! connections over members (the distributor) and coordinates ports. The core does not know how
//! the cluster is built (in production: the coupling region in shared memory); it asks through
//! this trait, at the few points where the answer matters:
//!
//! - an inbound segment for a cluster address: handle it here, or forward it to another stack;
//! - an outbound connection needs an ephemeral port that no other stack uses on the same source
//!   address;
//! - an application binds an address this stack does not have yet (bind activation).
//!
//! Listeners and connections that come and go are not questions: the stack queues them as
//! [`ClusterEvent`]s, which the poll loop drains (the distributor and the port registry track
//! them), as quinn's endpoint queues what its connections tell it.
//!
//! [`SingleStack`] is the implementation for a stack alone: everything is local, ports are
//! drawn at random from the ephemeral range.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::rand::Rng;
use crate::tcp::Tuple;
use crate::time::Instant;

/// Where an inbound TCP segment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundRoute {
    /// Process it in this stack.
    Local,
    /// Another stack owns the connection: hand the frame over (distributor forwarding).
    Forward {
        /// The cluster's number for the stack that owns it (its member slot).
        stack: u32,
    },
    /// Another shard of this process (another queue's stack) owns it, or decides for it: hand
    /// the frame over to shard `shard`.
    Shard {
        /// The shard's number (its queue).
        shard: u32,
    },
    /// Nobody may take it (e.g. the address is being moved): drop.
    Drop,
    /// The connection is being moved to another stack (a live handoff in flight): the caller
    /// keeps the frame, to hand it to wherever the connection ends up, in order.
    Hold,
    /// The cluster knows the flow is dead (its stack died, or it is unknown outside a
    /// rebuild): answer with a RST (RFC 9293 3.10.7.1), counted as `tcp_cluster_reset`.
    Reset,
}

/// The synchronous questions the stack asks the cluster, at the few points where the answer
/// decides what happens to the frame or call at hand. Everything else the cluster learns from
/// the stack's [`ClusterEvent`] queue, drained by the poll loop.
pub trait Cluster: core::fmt::Debug + Send + core::any::Any {
    /// Route an inbound segment for `tuple` that matches no connection of this stack (`syn`:
    /// it opens one). Established traffic never gets here: the exact 4-tuple lookup comes
    /// first.
    fn route_inbound(&mut self, now: Instant, tuple: &Tuple, syn: bool) -> InboundRoute;

    /// Propose an ephemeral port for a connection from `local` to `remote`; the stack checks it
    /// against its own connection table and may ask again (a refused proposal comes back as
    /// [`ClusterEvent::PortReleased`]). `remote` is `None` for a socket that talks to anyone
    /// (a UDP socket bound to port 0): the port must then be this stack's alone. `None`: the
    /// range is exhausted.
    fn ephemeral_port(
        &mut self,
        now: Instant,
        local: Ipv4Addr,
        remote: Option<SocketAddrV4>,
        rng: &mut Rng,
    ) -> Option<u16>;

    /// An application binds `local` (a listener, or a UDP socket on a fixed port) on an address
    /// of this stack: where the cluster coordinates the ports of that address (cluster-wide
    /// ports), the port must be claimed for this stack. [`PortClaim::Claimed`]: it was; the stack
    /// gives it back with [`ClusterEvent::PortReleased`] when the socket closes.
    fn claim_port(&mut self, _now: Instant, _local: SocketAddrV4) -> PortClaim {
        PortClaim::Unregistered
    }

    /// The address an application named `app` connects from when it binds none (z/OS
    /// SOURCEIPA): `None` for the route's source address as usual.
    fn source_address(&mut self, _now: Instant, _app: &str) -> Option<Ipv4Addr> {
        None
    }

    /// An application binds `addr`, which is not (yet) an address of this stack: may the
    /// cluster activate it here (a dynamic VIPA inside a range the cluster config gives this
    /// stack, activated by the first bind)? `Some(prefix_len)`: it is now this stack's, the stack adds and announces it.
    /// `None`: `EADDRNOTAVAIL`.
    fn bind_address(&mut self, _now: Instant, _addr: Ipv4Addr) -> Option<u8> {
        None
    }

    /// A datagram for `local` that no UDP socket of this stack takes: the stack that has a
    /// socket for it (another shard of the process, whose queue the sender's hash did not
    /// pick), or `None` (dropped with port unreachable, RFC 1122 4.1.3.1).
    fn route_datagram(&mut self, _local: SocketAddrV4) -> Option<u32> {
        None
    }

    /// Whether anyone drains the stack's [`ClusterEvent`] queue (a stack alone keeps none).
    fn wants_events(&self) -> bool {
        true
    }
}

/// What the stack tells the cluster: listeners and connections as they come and go, and
/// ports given back. Queued in order by the stack ([`crate::iface::Stack::poll_cluster_event`]);
/// the poll loop drains the queue every turn (the distributor and the port registry are built
/// from it). Raised in one place each: listeners in `tcp_listen`/`close`, connections in the
/// connection table (`iface/table.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A listener opened on this local address (the unspecified address: every address).
    ListenerOpened(SocketAddrV4),
    /// The listener on this local address closed.
    ListenerClosed(SocketAddrV4),
    /// A connection was installed, and how (the distributor routes replies to connections a
    /// target opened itself, and rebuilds its table from every kind).
    ConnectionOpened(Tuple, Opened),
    /// A connection closed here; its 4-tuple is free.
    ConnectionClosed(Tuple),
    /// A connection was serialized for another stack: it lives on there, with its port.
    ConnectionMoved(Tuple),
    /// A local port [`Cluster::ephemeral_port`] proposed or [`Cluster::claim_port`] claimed
    /// is no longer used here: for a connection after TIME-WAIT (never at `close`), toward
    /// `remote`; for a listener or UDP socket when it closes (`remote` `None`).
    PortReleased {
        /// The local address and port.
        local: SocketAddrV4,
        /// The connection's peer, if it was a connection's port.
        remote: Option<SocketAddrV4>,
    },
    /// A UDP socket was bound to this local address (the unspecified address: every address).
    UdpBound(SocketAddrV4),
    /// The UDP socket on this local address closed.
    UdpClosed(SocketAddrV4),
}

/// The cluster's answer to a bind ([`Cluster::claim_port`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortClaim {
    /// The address's ports are not coordinated (or the port is shared, as a distributed port):
    /// nothing to give back.
    Unregistered,
    /// Claimed for this stack: give it back when the socket closes.
    Claimed,
    /// Another stack holds it: `EADDRINUSE`.
    InUse,
}

/// How a connection came to be in a stack ([`ClusterEvent::ConnectionOpened`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A passive open: accepted from a SYN (or a SYN cookie's ACK).
    Passive,
    /// An active open by an application of this stack.
    Active,
    /// Restored from another stack's handoff record.
    Restored,
}

/// Linux's default ephemeral range (`net.ipv4.ip_local_port_range`).
pub const EPHEMERAL_PORTS: core::ops::RangeInclusive<u16> = 32768..=60999;

/// A stack on its own.
#[derive(Debug, Default, Clone)]
pub struct SingleStack;

impl Cluster for SingleStack {
    fn wants_events(&self) -> bool {
        false
    }

    fn route_inbound(&mut self, _now: Instant, _tuple: &Tuple, _syn: bool) -> InboundRoute {
        InboundRoute::Local
    }

    fn ephemeral_port(
        &mut self,
        _now: Instant,
        _local: Ipv4Addr,
        _remote: Option<SocketAddrV4>,
        rng: &mut Rng,
    ) -> Option<u16> {
        let span = (*EPHEMERAL_PORTS.end() - *EPHEMERAL_PORTS.start()) as u64 + 1;
        Some(*EPHEMERAL_PORTS.start() + rng.below(span) as u16)
    }
}
