//! The application calls: TCP listen/accept/connect/send/recv/peek/shutdown/abort/close/touch,
//! handoff snapshot and restore, the UDP calls, and the event queue ([`Stack::poll_event`]).

use super::*;

impl Stack {
    fn with_tcp<R>(
        &mut self,
        h: SocketHandle,
        f: impl FnOnce(&mut Connection) -> R,
    ) -> Result<R, ApiError> {
        let r = match self.socket_mut(h) {
            Some(Socket::Tcp(t)) => f(&mut t.conn),
            Some(_) => return Err(ApiError::WrongSocketType),
            None => return Err(ApiError::InvalidHandle),
        };
        self.after_tcp(h);
        Ok(r)
    }

    /// Listen on `local` (the unspecified address listens on every local address; port 0
    /// picks a free port of the ephemeral range, one no listener of any address uses: read
    /// it back with [`Stack::tcp_listen_addr`]).
    pub fn tcp_listen(
        &mut self,
        now: Instant,
        local: SocketAddrV4,
        backlog: usize,
    ) -> Result<SocketHandle, ApiError> {
        let mut local = local;
        if local.port() == 0 {
            local.set_port(self.free_listen_port().ok_or(ApiError::NoPorts)?);
        }
        if !local.ip().is_unspecified() && !self.has_address(*local.ip()) {
            // Bind activation: the cluster may make it ours (a range DVIPA).
            let prefix = self.cluster.bind_address(now, *local.ip()).ok_or(ApiError::AddrNotAvailable)?;
            self.add_address(*local.ip(), prefix, false);
            self.announce(*local.ip());
        }
        if self.listeners.contains_key(&local) {
            return Err(ApiError::AddrInUse);
        }
        self.claim_bind(now, local)?;
        let l = Listener::new(local, backlog, self.cfg.tcp.clone());
        let h = self.alloc(Socket::Listener(l));
        self.listeners.insert(local, h);
        self.cluster_event(ClusterEvent::ListenerOpened(local));
        Ok(h)
    }

    /// Claim a bound port cluster-wide where the cluster coordinates its address's ports
    /// (given back by [`Stack::unclaim_bind`] when the socket closes).
    fn claim_bind(&mut self, now: Instant, local: SocketAddrV4) -> Result<(), ApiError> {
        if local.ip().is_unspecified() {
            return Ok(());
        }
        match self.cluster.claim_port(now, local) {
            PortClaim::Unregistered => Ok(()),
            PortClaim::Claimed => {
                self.claimed_binds.insert(local);
                Ok(())
            }
            PortClaim::InUse => Err(ApiError::AddrInUse),
        }
    }

    fn unclaim_bind(&mut self, local: SocketAddrV4) {
        if self.claimed_binds.remove(&local) {
            self.cluster_event(ClusterEvent::PortReleased { local, remote: None });
        }
    }

    /// The application's source address by the cluster's SOURCEIPA, if it named itself.
    fn app_source(&mut self, now: Instant) -> Option<Ipv4Addr> {
        let app = self.cfg.app_name.as_deref()?;
        self.cluster.source_address(now, app)
    }

    /// A random port of the ephemeral range on which no listener (of any address) is open.
    fn free_listen_port(&mut self) -> Option<u16> {
        let range = crate::cluster::EPHEMERAL_PORTS;
        let span = (*range.end() - *range.start()) as u64 + 1;
        for _ in 0..64 {
            let p = range.start() + self.rng.below(span) as u16;
            if !self.listeners.keys().any(|a| a.port() == p) {
                return Some(p);
            }
        }
        None
    }

    /// The address a listener listens on (its port chosen, if it was 0).
    pub fn tcp_listen_addr(&self, h: SocketHandle) -> Option<SocketAddrV4> {
        match self.socket(h) {
            Some(Socket::Listener(l)) => Some(l.local),
            _ => None,
        }
    }

    /// Free places in the accept queue of the listener on `local` (its backlog minus the
    /// connections waiting to be accepted and being established), if one listens there: how
    /// fast the application accepts, as the distributor's server-weight method weighs it.
    pub fn tcp_listener_room(&self, local: SocketAddrV4) -> Option<usize> {
        let h = *self.listeners.get(&local)?;
        match self.socket(h) {
            Some(Socket::Listener(l)) => Some(l.backlog.saturating_sub(l.accept_queue_len() + l.syn_queue)),
            _ => None,
        }
    }

    /// Reset a connection this stack does not hold, on behalf of the stack that did and died
    /// (the distributor's router resets a dead target's clients at once): a RST from `local`
    /// to `remote` with SEQ `seq`, the next sequence number the peer expects (its last ACK), so
    /// the peer accepts it (RFC 9293 3.10.7.3), sent to `mac` (where the peer's segments came
    /// from) or else to the neighbour cache's entry; false if there is none or the frame could
    /// not be queued.
    pub fn tcp_reset_peer(&mut self, now: Instant, local: SocketAddrV4, remote: SocketAddrV4, seq: u32, mac: Option<MacAddr>) -> bool {
        let Some(mac) = mac.or_else(|| self.next_hop(*remote.ip()).and_then(|hop| self.arp.get(now, hop))) else { return false };
        let mut r = TcpRepr::new(local.port(), remote.port(), SeqNumber(seq));
        r.control = TcpControl::Rst;
        let ok = self.queue_tcp(mac, Tuple { local, remote }, &r);
        if ok {
            self.counters.tcp_rst_out += 1;
        }
        ok
    }

    /// Take an established connection from a listener's accept queue.
    pub fn tcp_accept(&mut self, listener: SocketHandle) -> Result<SocketHandle, ApiError> {
        let h = match self.socket_mut(listener) {
            Some(Socket::Listener(l)) => l.accept().ok_or(ApiError::WouldBlock)?,
            Some(_) => return Err(ApiError::WrongSocketType),
            None => return Err(ApiError::InvalidHandle),
        };
        if let Some(Socket::Tcp(t)) = self.socket_mut(h) {
            t.parent = None;
            // Bytes or a FIN that came before the accept raised no event for the application
            // (events of a connection in the accept queue are not delivered): raise them now,
            // so that an application reading on `Readable` does not wait forever.
            let (data, fin) = (t.conn.recv_queue() > 0, t.conn.peer_closed());
            if data || fin {
                self.events.push_back((h, SocketEvent::Tcp(Event::Readable)));
            }
            if fin {
                self.events.push_back((h, SocketEvent::Tcp(Event::PeerClosed)));
            }
        }
        Ok(h)
    }

    /// Active open to `remote`, from `local_ip` or the home address on the route to it.
    pub fn tcp_connect(
        &mut self,
        now: Instant,
        local_ip: Option<Ipv4Addr>,
        remote: SocketAddrV4,
    ) -> Result<SocketHandle, ApiError> {
        let cfg = self.cfg.tcp.clone();
        self.tcp_connect_with(now, local_ip, remote, &cfg)
    }

    /// [`Stack::tcp_connect`] with a TCP config of its own (buffers, congestion control,
    /// options) instead of the stack's.
    pub fn tcp_connect_with(
        &mut self,
        now: Instant,
        local_ip: Option<Ipv4Addr>,
        remote: SocketAddrV4,
        cfg: &tcp::Config,
    ) -> Result<SocketHandle, ApiError> {
        let local_ip = match local_ip.or_else(|| self.app_source(now)) {
            Some(ip) if self.has_address(ip) => ip,
            Some(ip) if local_ip.is_none() => {
                // SOURCEIPA names an address this stack does not have: a range DVIPA is
                // activated here; anything else cannot be used from this stack.
                let prefix = self.cluster.bind_address(now, ip).ok_or(ApiError::AddrNotAvailable)?;
                self.add_address(ip, prefix, false);
                self.announce(ip);
                ip
            }
            Some(_) => return Err(ApiError::AddrNotAvailable),
            None => self.source_for(*remote.ip()).ok_or(ApiError::NoRoute)?,
        };
        self.next_hop(*remote.ip()).ok_or(ApiError::NoRoute)?;
        let mut port = None;
        for _ in 0..64 {
            let Some(p) = self.cluster.ephemeral_port(now, local_ip, Some(remote), &mut self.rng) else {
                break;
            };
            let t = Tuple { local: SocketAddrV4::new(local_ip, p), remote };
            if !self.connections.contains_key(&t) && !self.listeners.contains_key(&t.local) {
                port = Some(p);
                break;
            }
            self.cluster_event(ClusterEvent::PortReleased { local: t.local, remote: Some(remote) });
        }
        let port = port.ok_or(ApiError::NoPorts)?;
        let tuple = Tuple { local: SocketAddrV4::new(local_ip, port), remote };
        if self.over_limit(cfg).is_some() {
            self.cluster_event(ClusterEvent::PortReleased { local: tuple.local, remote: Some(remote) });
            return Err(ApiError::NoBuffers);
        }
        let cfg = self.conn_config(cfg);
        let iss = self.isn.isn(now, tuple.local, tuple.remote);
        let conn = Connection::connect(now, tuple, iss, self.rng.next_u32(), &cfg);
        let h = self.install(now, conn, Origin::Connected, None);
        self.after_tcp(h);
        Ok(h)
    }

    /// Queue `data` for sending; how many bytes were taken (fewer when the send buffer fills,
    /// [`ApiError::WouldBlock`] when none fit: wait for `Writable`).
    pub fn tcp_send(&mut self, _now: Instant, h: SocketHandle, data: &[u8]) -> Result<usize, ApiError> {
        self.with_tcp(h, |c| c.send(data))?.map_err(ApiError::from)
    }

    /// Read received bytes into `buf`; how many (0 at end of stream, after the peer's FIN;
    /// [`ApiError::WouldBlock`] when nothing is there yet: wait for `Readable`).
    pub fn tcp_recv(&mut self, _now: Instant, h: SocketHandle, buf: &mut [u8]) -> Result<usize, ApiError> {
        self.with_tcp(h, |c| c.recv(buf))?.map_err(ApiError::from)
    }

    /// As [`Stack::tcp_recv`], without consuming what it copies.
    pub fn tcp_peek(&self, h: SocketHandle, buf: &mut [u8]) -> Result<usize, ApiError> {
        match self.socket(h) {
            Some(Socket::Tcp(t)) => t.conn.peek(buf).map_err(ApiError::from),
            Some(_) => Err(ApiError::WrongSocketType),
            None => Err(ApiError::InvalidHandle),
        }
    }

    /// Half-close: FIN after the queued data.
    pub fn tcp_shutdown(&mut self, _now: Instant, h: SocketHandle) -> Result<(), ApiError> {
        self.with_tcp(h, |c| c.shutdown())
    }

    /// Abort the connection: a RST to the peer, and the connection is closed at once
    /// (RFC 9293 3.10.5, ABORT).
    pub fn tcp_abort(&mut self, _now: Instant, h: SocketHandle) -> Result<(), ApiError> {
        self.with_tcp(h, |c| c.abort())
    }

    /// After changing options through [`Stack::tcp_mut`].
    pub fn touch(&mut self, _now: Instant, h: SocketHandle) {
        self.after_tcp(h);
    }

    /// Close any socket: a TCP connection closes gracefully and is freed when done (the handle
    /// is invalid from now on); a listener aborts the connections it has not handed out.
    pub fn close(&mut self, _now: Instant, h: SocketHandle) -> Result<(), ApiError> {
        match self.socket_mut(h) {
            Some(Socket::Tcp(t)) => {
                t.conn.close();
                self.after_tcp(h);
            }
            Some(Socket::Listener(l)) => {
                let local = l.local;
                let counters = l.counters;
                let children: Vec<SocketHandle> = l.drain().collect();
                self.closed_listeners.add(&counters);
                self.listeners.remove(&local);
                self.cluster_event(ClusterEvent::ListenerClosed(local));
                self.unclaim_bind(local);
                // Embryonic children point at this listener; abort them too.
                let embryos: Vec<SocketHandle> = self
                    .connections
                    .values()
                    .copied()
                    .filter(|&c| matches!(self.socket(c), Some(Socket::Tcp(t)) if t.parent == Some(h)))
                    .collect();
                for c in children.into_iter().chain(embryos) {
                    if let Some(Socket::Tcp(t)) = self.socket_mut(c) {
                        t.parent = None;
                        t.conn.abort();
                    }
                    self.after_tcp(c);
                }
                self.release(h);
            }
            Some(Socket::Udp(u)) => {
                let local = u.local;
                self.udp.remove(&local);
                self.cluster_event(ClusterEvent::UdpClosed(local));
                self.unclaim_bind(local);
                self.release(h);
            }
            None => return Err(ApiError::InvalidHandle),
        }
        Ok(())
    }

    /// Serialize an established connection for a live handoff to another stack and detach it
    /// silently (the cluster hears it moved away; its port goes with it): no
    /// FIN, no RST, no timers; the handle becomes invalid. Frames for it that still arrive here
    /// must be forwarded by the cluster layer (or they draw a RST as for any unknown tuple).
    pub fn tcp_snapshot(
        &mut self,
        now: Instant,
        h: SocketHandle,
        giver: u32,
        app_state: &[u8],
    ) -> Result<Vec<u8>, ApiError> {
        self.tcp_snapshot_with(now, h, giver, tcp::AppBytes::default(), app_state)
    }

    /// As [`Stack::tcp_snapshot`], with bytes the application layer above the connection
    /// holds ([`tcp::AppBytes`]: unread received bytes, unsent written bytes) carried in the
    /// record in their place in the byte streams.
    pub fn tcp_snapshot_with(
        &mut self,
        now: Instant,
        h: SocketHandle,
        giver: u32,
        extra: tcp::AppBytes<'_>,
        app_state: &[u8],
    ) -> Result<Vec<u8>, ApiError> {
        let record = match self.socket(h) {
            Some(Socket::Tcp(t)) => t
                .conn
                .snapshot_with(now, giver, t.owns_port, extra, app_state)
                .map_err(|_| ApiError::Tcp(tcp::Error::NotConnected))?,
            Some(_) => return Err(ApiError::WrongSocketType),
            None => return Err(ApiError::InvalidHandle),
        };
        // The port stays in use cluster-wide: the connection lives on elsewhere.
        self.retire(h, Retirement::MovedAway);
        self.release(h);
        Ok(record)
    }

    /// What a handoff record holds (4-tuple, state, giver, the application's state), checked
    /// as [`Stack::tcp_restore`] would check it, without installing anything: for the
    /// application that decides whether to take the connection.
    pub fn tcp_record_info(&self, now: Instant, record: &[u8]) -> Result<tcp::Snapshot, tcp::SnapshotError> {
        Connection::restore(record, now, &self.cfg.tcp).map(|(_, snap)| snap)
    }

    /// Install a connection from a handoff record. It resumes at once and sends one ACK so
    /// the peer's retransmissions are recovered immediately.
    pub fn tcp_restore(&mut self, now: Instant, record: &[u8]) -> Result<(SocketHandle, tcp::Snapshot), tcp::SnapshotError> {
        let (conn, snap) = Connection::restore(record, now, &self.cfg.tcp)?;
        let tuple = conn.tuple();
        if !self.has_address(*tuple.local.ip()) {
            return Err(tcp::SnapshotError::Invalid("local address is not on this stack"));
        }
        if self.connections.contains_key(&tuple) {
            return Err(tcp::SnapshotError::Invalid("a connection with this 4-tuple exists here"));
        }
        let h = self.install(now, conn, Origin::Restored { owns_port: snap.owns_port }, None);
        self.after_tcp(h);
        Ok((h, snap))
    }

    // UDP ------------------------------------------------------------------------------------

    /// A UDP socket on `local` (unspecified address: every local address; port 0: an
    /// ephemeral port is chosen).
    pub fn udp_bind(&mut self, local: SocketAddrV4) -> Result<SocketHandle, ApiError> {
        let now = self.rx_now;
        if !local.ip().is_unspecified() && !self.has_address(*local.ip()) {
            return Err(ApiError::AddrNotAvailable);
        }
        let mut local = local;
        if local.port() == 0 {
            let mut found = None;
            for _ in 0..64 {
                // On an address of this stack the cluster draws it (from the port registry
                // where its ports are coordinated); on the wildcard, any free port will do.
                let p = if local.ip().is_unspecified() {
                    SingleStack.ephemeral_port(now, *local.ip(), None, &mut self.rng)
                } else {
                    self.cluster.ephemeral_port(now, *local.ip(), None, &mut self.rng)
                };
                let Some(p) = p else { break };
                let cand = SocketAddrV4::new(*local.ip(), p);
                if !self.udp.contains_key(&cand) {
                    found = Some(cand);
                    break;
                }
                self.cluster_event(ClusterEvent::PortReleased { local: cand, remote: None });
            }
            local = found.ok_or(ApiError::NoPorts)?;
            if !local.ip().is_unspecified() && self.cluster.wants_events() {
                // The cluster's draw claimed it; it is given back at close.
                self.claimed_binds.insert(local);
            }
        } else {
            if self.udp.contains_key(&local) {
                return Err(ApiError::AddrInUse);
            }
            self.claim_bind(now, local)?;
        }
        if self.udp.contains_key(&local) {
            return Err(ApiError::AddrInUse);
        }
        let h = self.alloc(Socket::Udp(UdpSocket::new(local, 256 * 1024, 256 * 1024)));
        self.udp.insert(local, h);
        self.cluster_event(ClusterEvent::UdpBound(local));
        Ok(h)
    }

    /// The address a UDP socket is bound to (its port chosen, if it was 0).
    pub fn udp_local_addr(&self, h: SocketHandle) -> Option<SocketAddrV4> {
        match self.socket(h) {
            Some(Socket::Udp(u)) => Some(u.local),
            _ => None,
        }
    }

    /// Queue one datagram for `dst`; larger than the MTU, it leaves in IPv4 fragments.
    /// [`ApiError::WouldBlock`]: the socket's send queue is full (the datagram is not sent).
    pub fn udp_send_to(
        &mut self,
        _now: Instant,
        h: SocketHandle,
        dst: SocketAddrV4,
        data: &[u8],
    ) -> Result<usize, ApiError> {
        // Larger than the MTU leaves in fragments (as Linux without DF); the limit is the
        // Total Length field.
        if data.len() + 8 > wire::ipv4::MAX_PAYLOAD {
            return Err(ApiError::MessageTooLarge);
        }
        self.next_hop(*dst.ip()).ok_or(ApiError::NoRoute)?;
        match self.socket_mut(h) {
            Some(Socket::Udp(u)) => {
                if !u.tx.push(dst, data) {
                    return Err(ApiError::WouldBlock);
                }
            }
            Some(_) => return Err(ApiError::WrongSocketType),
            None => return Err(ApiError::InvalidHandle),
        }
        self.mark_ready(h);
        Ok(data.len())
    }

    /// The oldest datagram received, copied into `buf` (truncated to it, as `recvfrom`), and
    /// its sender; [`ApiError::WouldBlock`] when none is queued.
    pub fn udp_recv_from(
        &mut self,
        h: SocketHandle,
        buf: &mut [u8],
    ) -> Result<(usize, SocketAddrV4), ApiError> {
        match self.socket_mut(h) {
            Some(Socket::Udp(u)) => u.rx.pop_into(buf).ok_or(ApiError::WouldBlock),
            Some(_) => Err(ApiError::WrongSocketType),
            None => Err(ApiError::InvalidHandle),
        }
    }

    /// The next socket event.
    pub fn poll_event(&mut self) -> Option<(SocketHandle, SocketEvent)> {
        self.events.pop_front()
    }
}
