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
//! - listeners and connections come and go (the distributor and the port registry track them).
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
    Forward { stack: u32 },
    /// Nobody may take it (e.g. the address is being moved): drop.
    Drop,
}

pub trait Cluster: core::fmt::Debug + Send {
    /// Route an inbound segment for `tuple` (`syn`: it opens a connection).
    fn route_inbound(&mut self, now: Instant, tuple: &Tuple, syn: bool) -> InboundRoute;

    /// Propose an ephemeral port for a connection from `local` to `remote`; the stack checks it
    /// against its own connection table and may ask again. `None`: the range is exhausted.
    fn ephemeral_port(
        &mut self,
        now: Instant,
        local: Ipv4Addr,
        remote: SocketAddrV4,
        rng: &mut Rng,
    ) -> Option<u16>;

    /// A port proposed by `ephemeral_port` is no longer used.
    fn release_port(&mut self, now: Instant, local: SocketAddrV4);

    /// An application binds `addr`, which is not (yet) an address of this stack: may the
    /// cluster activate it here (a DVIPA inside a VIPA range, spec/01)? `Some(prefix_len)`:
    /// it is now this stack's, the stack adds and announces it. `None`: `EADDRNOTAVAIL`.
    fn bind_address(&mut self, _now: Instant, _addr: Ipv4Addr) -> Option<u8> {
        None
    }

    fn listener_opened(&mut self, now: Instant, local: SocketAddrV4);
    fn listener_closed(&mut self, now: Instant, local: SocketAddrV4);
    fn connection_opened(&mut self, now: Instant, tuple: &Tuple);
    fn connection_closed(&mut self, now: Instant, tuple: &Tuple);
}

/// Linux's default ephemeral range (`net.ipv4.ip_local_port_range`).
pub const EPHEMERAL_PORTS: core::ops::RangeInclusive<u16> = 32768..=60999;

/// A stack on its own.
#[derive(Debug, Default, Clone)]
pub struct SingleStack;

impl Cluster for SingleStack {
    fn route_inbound(&mut self, _now: Instant, _tuple: &Tuple, _syn: bool) -> InboundRoute {
        InboundRoute::Local
    }

    fn ephemeral_port(
        &mut self,
        _now: Instant,
        _local: Ipv4Addr,
        _remote: SocketAddrV4,
        rng: &mut Rng,
    ) -> Option<u16> {
        let span = (*EPHEMERAL_PORTS.end() - *EPHEMERAL_PORTS.start()) as u64 + 1;
        Some(*EPHEMERAL_PORTS.start() + rng.below(span) as u16)
    }

    fn release_port(&mut self, _now: Instant, _local: SocketAddrV4) {}
    fn listener_opened(&mut self, _now: Instant, _local: SocketAddrV4) {}
    fn listener_closed(&mut self, _now: Instant, _local: SocketAddrV4) {}
    fn connection_opened(&mut self, _now: Instant, _tuple: &Tuple) {}
    fn connection_closed(&mut self, _now: Instant, _tuple: &Tuple) {}
}
