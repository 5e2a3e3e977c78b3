//! Connection bookkeeping: the connection and memory limits every new connection passes, the
//! ready queue and the timer heap (one live entry per socket), what happens after a connection
//! was touched (`Stack::after_tcp`: events, accept queue, TIME-WAIT/CLOSED), and freeing.

use super::*;

impl Stack {
    /// Why a new connection with this config may not be created now, if it may not.
    pub(super) fn over_limit(&self, cfg: &tcp::Config) -> Option<DropReason> {
        if self.tcp_sockets >= self.cfg.max_connections {
            Some(DropReason::TcpConnLimit)
        } else if self.mem_allocated.saturating_add(cfg.send_buffer + cfg.recv_buffer) > self.cfg.mem_budget {
            Some(DropReason::TcpMemLimit)
        } else {
            None
        }
    }

    pub(super) fn mark_ready(&mut self, h: SocketHandle) {
        if let Some(slot) = self.slots.get_mut(h.index as usize) {
            if slot.generation == h.generation && !slot.ready && slot.waiting_arp.is_none() {
                slot.ready = true;
                self.ready.push_back(h);
            }
        }
    }

    pub(super) fn schedule(&mut self, h: SocketHandle, at: Option<Instant>) {
        let Some(at) = at else { return };
        let Some(slot) = self.slots.get_mut(h.index as usize) else { return };
        if slot.timer_at.is_none_or(|cur| at < cur) {
            slot.timer_at = Some(at);
            self.timers.push(Reverse((at, h)));
        }
    }

    /// Collect a connection's events, reschedule its timer, put it on the ready queue, and free
    /// it when it is closed and nobody holds it.
    pub(super) fn after_tcp(&mut self, h: SocketHandle) {
        let Some(Socket::Tcp(t)) = self.socket_mut(h) else { return };
        // Buffers are allocated on first use: keep the budget's sum current.
        let mem = t.conn.buffer_bytes();
        let old_mem = std::mem::replace(&mut t.mem, mem);
        let mut evs = t.conn.take_events();
        let parent = t.parent;
        let state = t.conn.state();
        let orphan = t.conn.is_orphan();
        let deadline = t.conn.poll_timeout();
        self.mem_allocated = self.mem_allocated + mem - old_mem;
        while let Some(e) = Event::pop(&mut evs) {
            match (parent, e) {
                (Some(p), Event::Connected) => {
                    // Established from the SYN queue onto the accept queue.
                    if let Some(Socket::Listener(l)) = self.socket_mut(p) {
                        l.syn_done();
                        l.push_established(h);
                        self.events.push_back((p, SocketEvent::Acceptable));
                    }
                }
                (Some(_), Event::Closed) | (None, _) => {
                    self.events.push_back((h, SocketEvent::Tcp(e)));
                }
                _ => {}
            }
        }
        self.mark_ready(h);
        self.schedule(h, deadline);
        if state == State::Closed {
            // Keep the slot until its RST has gone out; emit_from comes back here.
            if matches!(self.socket(h), Some(Socket::Tcp(t)) if t.conn.rst_pending()) {
                return;
            }
            if let Some(p) = parent {
                // Died before the application accepted it.
                if let Some(Socket::Listener(l)) = self.socket_mut(p) {
                    if !l.forget(&h) {
                        l.syn_done();
                    }
                }
                self.free_connection(h);
            } else if orphan {
                self.free_connection(h);
            } else {
                // The application still holds the handle: the tuple is free for reuse.
                self.retire(h, Retirement::Closed);
            }
        }
    }

    fn free_connection(&mut self, h: SocketHandle) {
        self.retire(h, Retirement::Closed);
        self.release(h);
    }

    /// Free the handle of a connection the application is done with (after `Closed`).
    pub fn release_closed(&mut self, h: SocketHandle) {
        if let Some(Socket::Tcp(t)) = self.socket(h) {
            if t.conn.state() == State::Closed && !t.conn.rst_pending() {
                self.release(h);
            }
        }
    }
}
