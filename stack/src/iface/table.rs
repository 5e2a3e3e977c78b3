//! The connection table: the only code that adds a connection to the 4-tuple map or takes one
//! out, and so the only code that raises the cluster's connection events.
//!
//! A connection enters through [`Stack::install`], whatever its [`Origin`] (a SYN, a SYN
//! cookie's ACK, an active open, a handoff record), and leaves through [`Stack::retire`] with
//! a [`Retirement`]: *closed* (its port, if it owned one, is released) or *moved away* (it lives
//! on in another stack, which now owns its port: nothing is released here). Its socket slot is
//! a separate matter: a closed connection the application still holds keeps its slot until
//! [`Stack::release_closed`].

use super::*;
use crate::cluster::{ClusterEvent, Opened};

/// Where a connection installed in this stack came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A SYN to `listener`: it waits in the listener's SYN queue, then its accept queue.
    Accepted { listener: SocketHandle },
    /// The ACK of a SYN cookie: established at once, straight onto the accept queue.
    Cookie,
    /// An active open on a port the cluster gave us (released when the connection closes).
    Connected,
    /// A handoff record from another stack; `owns_port`: the local port came with it.
    Restored { owns_port: bool },
}

/// Why a connection leaves the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retirement {
    /// It reached CLOSED (or was aborted): the 4-tuple and an owned port are free.
    Closed,
    /// It was serialized for another stack: the 4-tuple and the port live on there.
    MovedAway,
}

impl Stack {
    /// A connection's config on this interface: the MSS it announces is clamped to the MTU.
    pub(super) fn conn_config(&self, cfg: &tcp::Config) -> tcp::Config {
        let mut cfg = cfg.clone();
        cfg.mss = cfg.mss.min((self.cfg.mtu - 40) as u16);
        cfg
    }

    /// Put `conn` in the table (its 4-tuple must be free) and tell the cluster. `src_mac`: the
    /// frame that created it came from there, so the peer's first segments need no ARP round.
    pub(super) fn install(&mut self, now: Instant, conn: Connection, origin: Origin, src_mac: Option<MacAddr>) -> SocketHandle {
        let tuple = conn.tuple();
        let (parent, owns_port, opened) = match origin {
            Origin::Accepted { listener } => (Some(listener), false, Opened::Passive),
            Origin::Cookie => (None, false, Opened::Passive),
            Origin::Connected => (None, true, Opened::Active),
            Origin::Restored { owns_port } => (None, owns_port, Opened::Restored),
        };
        let h = self.alloc(Socket::Tcp(TcpSlot { conn, parent, owns_port, mem: 0 }));
        self.connections.insert(tuple, h);
        self.cluster_event(ClusterEvent::ConnectionOpened(tuple, opened));
        let peer = *tuple.remote.ip();
        // A segment to an internal address (a distributed DVIPA on a target) was forwarded by
        // the routing stack: its source MAC is the router's, not the peer's, so it teaches
        // nothing (the target answers the peer directly, after its own ARP).
        let internal = self.homes.iter().any(|h| h.internal && h.addr == *tuple.local.ip());
        if let (Some(mac), false) = (src_mac, internal) {
            if self.arp.get(now, peer).is_none() && self.next_hop(peer) == Some(peer) {
                self.arp.insert(now, peer, mac);
            }
        }
        h
    }

    /// Take connection `h` out of the table (if it is still there under its 4-tuple) and tell
    /// the cluster why. The slot is not freed here.
    pub(super) fn retire(&mut self, h: SocketHandle, why: Retirement) {
        let Some(Socket::Tcp(t)) = self.socket(h) else { return };
        let (tuple, owns_port) = (t.conn.tuple(), t.owns_port);
        if self.connections.get(&tuple) != Some(&h) {
            return;
        }
        self.connections.remove(&tuple);
        match why {
            Retirement::Closed => {
                self.cluster_event(ClusterEvent::ConnectionClosed(tuple));
                if owns_port {
                    self.cluster_event(ClusterEvent::PortReleased { local: tuple.local, remote: Some(tuple.remote) });
                }
            }
            Retirement::MovedAway => self.cluster_event(ClusterEvent::ConnectionMoved(tuple)),
        }
    }
}
