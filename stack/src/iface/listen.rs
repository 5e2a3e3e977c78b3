//! The listener path: a segment for a listening socket (SYN queue or SYN cookie, a cookie ACK
//! validated and its connection installed) — `Stack::listen_segment`, called from `input.rs`.

use super::*;

impl Stack {
    /// RFC 9293 3.10.7.2, LISTEN.
    pub(super) fn listen_segment(
        &mut self,
        now: Instant,
        src_mac: MacAddr,
        lh: SocketHandle,
        tuple: Tuple,
        seg: &TcpRepr<'_>,
    ) {
        match (seg.control, seg.ack_number) {
            (TcpControl::Rst, _) => {}
            (TcpControl::Syn, None) => {
                let Some(Socket::Listener(l)) = self.socket(lh) else { return };
                // Over the connection limit or the buffer budget: drop (not RST) so the client
                // retries its SYN later, as Linux does when it cannot allocate a request sock.
                // No cookie either: its ACK would be refused the same way.
                if let Some(reason) = self.over_limit(&l.config) {
                    if let Some(Socket::Listener(l)) = self.socket_mut(lh) {
                        l.counters.syns += 1;
                        l.counters.refused_limit += 1;
                    }
                    return self.drop_rx(reason);
                }
                let Some(Socket::Listener(l)) = self.socket_mut(lh) else { return };
                let decision = l.on_syn();
                let cfg = l.config.clone();
                match decision {
                    SynDecision::Accept => {
                        let cfg = self.conn_config(&cfg);
                        let iss = self.isn.isn(now, tuple.local, tuple.remote);
                        // Keyed per 4-tuple, as a cookie SYN-ACK's (RFC 7323 5.4).
                        let ts_offset = self.isn.ts_offset(tuple.local, tuple.remote);
                        let conn = Connection::accept(now, tuple, seg, iss, ts_offset, &cfg);
                        // The SYN's source MAC: the SYN-ACK needs no ARP.
                        let h = self.install(now, conn, Origin::Accepted { listener: lh }, Some(src_mac));
                        self.after_tcp(h);
                    }
                    SynDecision::Cookie => {
                        let Some(Socket::Listener(l)) = self.socket(lh) else { return };
                        let reply = l.cookie_syn_ack(now, &self.isn, tuple.local, tuple.remote, seg);
                        self.queue_tcp(src_mac, tuple, &reply);
                    }
                    SynDecision::Drop => self.drop_rx(DropReason::TcpListenOverflow),
                }
            }
            (TcpControl::None, Some(_)) => {
                // Perhaps the end of a cookie handshake (RFC 4987 3.6).
                let has_room = matches!(self.socket(lh), Some(Socket::Listener(l)) if l.has_room() && l.syn_cookies);
                let limit = match self.socket(lh) {
                    Some(Socket::Listener(l)) => self.over_limit(&l.config),
                    _ => return,
                };
                match check_cookie_ack(now, &self.isn, tuple.local, tuple.remote, seg) {
                    Some(_) if limit.is_some() => {
                        if let Some(Socket::Listener(l)) = self.socket_mut(lh) {
                            l.counters.refused_limit += 1;
                        }
                        self.drop_rx(limit.unwrap_or(DropReason::TcpConnLimit));
                    }
                    Some((iss, mss, ws, sack)) if has_room => {
                        self.counters.tcp_syn_cookies_ok += 1;
                        let Some(Socket::Listener(l)) = self.socket_mut(lh) else { return };
                        l.counters.cookies_valid += 1;
                        let cfg = l.config.clone();
                        let cfg = self.conn_config(&cfg);
                        let ts_offset = self.isn.ts_offset(tuple.local, tuple.remote);
                        let conn = Connection::from_cookie(now, tuple, seg, iss, mss, ws, sack, ts_offset, &cfg);
                        // As for a SYN-queue connection: the first data needs no ARP round.
                        let h = self.install(now, conn, Origin::Cookie, Some(src_mac));
                        if let Some(Socket::Listener(l)) = self.socket_mut(lh) {
                            l.push_established(h);
                        }
                        self.events.push_back((lh, SocketEvent::Acceptable));
                        if let Some(c) = self.conn_mut(h) {
                            // The ACK may carry data already.
                            if !seg.payload.is_empty() {
                                c.handle_segment(now, seg);
                            }
                            while c.poll_event().is_some() {}
                        }
                        self.after_tcp(h);
                    }
                    Some(_) => {
                        if let Some(Socket::Listener(l)) = self.socket_mut(lh) {
                            l.counters.accept_overflows += 1;
                        }
                        self.drop_rx(DropReason::TcpListenOverflow)
                    }
                    None => {
                        if let Some(Socket::Listener(l)) = self.socket_mut(lh) {
                            l.counters.cookies_invalid += 1;
                        }
                        self.drop_rx(DropReason::TcpBadCookie);
                        self.reply_rst(src_mac, tuple, seg);
                    }
                }
            }
            _ => {
                // Any other segment to a listener is answered with RST (3.10.7.2).
                self.reply_rst(src_mac, tuple, seg);
            }
        }
    }
}
