//! The socket table: slots and their generations, the free list, and the accessors from a
//! [`SocketHandle`] to a socket, connection or listener; connection and socket counts.

use super::*;

impl Stack {
    pub(super) fn alloc(&mut self, socket: Socket) -> SocketHandle {
        if let Socket::Tcp(t) = &socket {
            self.tcp_sockets += 1;
            self.mem_allocated += t.mem;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    socket: None,
                    ready: false,
                    timer_at: None,
                    waiting_arp: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.socket = Some(socket);
        slot.ready = false;
        slot.timer_at = None;
        slot.waiting_arp = None;
        SocketHandle { index, generation: slot.generation }
    }

    pub(super) fn release(&mut self, h: SocketHandle) {
        if let Some(slot) = self.slots.get_mut(h.index as usize) {
            if slot.generation == h.generation {
                if let Some(Socket::Tcp(t)) = &slot.socket {
                    self.tcp_sockets -= 1;
                    self.mem_allocated -= t.mem;
                }
                slot.socket = None;
                slot.generation = slot.generation.wrapping_add(1);
                self.free.push(h.index);
            }
        }
    }

    pub(super) fn socket(&self, h: SocketHandle) -> Option<&Socket> {
        self.slots
            .get(h.index as usize)
            .filter(|s| s.generation == h.generation)
            .and_then(|s| s.socket.as_ref())
    }

    pub(super) fn socket_mut(&mut self, h: SocketHandle) -> Option<&mut Socket> {
        self.slots
            .get_mut(h.index as usize)
            .filter(|s| s.generation == h.generation)
            .and_then(|s| s.socket.as_mut())
    }

    pub(super) fn conn_mut(&mut self, h: SocketHandle) -> Option<&mut Connection> {
        match self.socket_mut(h) {
            Some(Socket::Tcp(t)) => Some(&mut t.conn),
            _ => None,
        }
    }

    /// The TCP connection behind a handle.
    pub fn tcp(&self, h: SocketHandle) -> Option<&Connection> {
        match self.socket(h) {
            Some(Socket::Tcp(t)) => Some(&t.conn),
            _ => None,
        }
    }

    /// Mutable access to a connection for options; call [`Stack::touch`] afterwards if the
    /// change may make it send.
    pub fn tcp_mut(&mut self, h: SocketHandle) -> Option<&mut Connection> {
        self.conn_mut(h)
    }

    /// The listener behind a handle (its counters, its queues' lengths).
    pub fn listener(&self, h: SocketHandle) -> Option<&Listener<SocketHandle>> {
        match self.socket(h) {
            Some(Socket::Listener(l)) => Some(l),
            _ => None,
        }
    }

    /// The connections on local address `addr` that the application holds (accepted or
    /// opened, not waiting in an accept queue), with their state: what a drain may move.
    pub fn tcp_connections_on(&self, addr: std::net::Ipv4Addr) -> Vec<(SocketHandle, crate::tcp::State)> {
        self.connections
            .iter()
            .filter(|(t, _)| *t.local.ip() == addr)
            .filter_map(|(_, &h)| match self.socket(h) {
                Some(Socket::Tcp(t)) if t.parent.is_none() => Some((h, t.conn.state())),
                _ => None,
            })
            .collect()
    }

    /// Number of live TCP connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// TCP sockets held (live connections and closed ones the application still holds): what
    /// [`StackConfig::max_connections`] bounds.
    pub fn tcp_socket_count(&self) -> usize {
        self.tcp_sockets
    }

    /// Socket-buffer bytes the connections have allocated: what [`StackConfig::mem_budget`]
    /// bounds.
    pub fn buffer_memory(&self) -> usize {
        self.mem_allocated
    }

    /// The counters of every listener, summed, the closed ones included.
    pub fn listener_counters(&self) -> ListenerCounters {
        let mut sum = self.closed_listeners;
        for &h in self.listeners.values() {
            if let Some(l) = self.listener(h) {
                sum.add(&l.counters);
            }
        }
        sum
    }

    /// Every connection, for views (`plex ctl`, counters).
    pub fn connections(&self) -> impl Iterator<Item = (SocketHandle, &Connection)> + '_ {
        self.connections.values().filter_map(|&h| self.tcp(h).map(|c| (h, c)))
    }
}
