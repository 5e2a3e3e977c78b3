//! The source client: sends a number of bytes to a sink.

use std::io::Write;
use std::net::SocketAddrV4;

use poll_loop::runner::App;
use sha2::{Digest, Sha256};
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;

use crate::apps::hex;

// ---- source ----------------------------------------------------------------------------

pub struct Source {
    to: SocketAddrV4,
    total: u64,
    sent: u64,
    conn: Option<SocketHandle>,
    connected_at: Option<Instant>,
    hash: Option<Sha256>,
    data: Vec<u8>,
    shut: bool,
    finished: bool,
    pub failed: bool,
}

impl Source {
    /// `hash`: compute the SHA-256 of the stream (printed at the end; "-" without it).
    pub fn new(to: SocketAddrV4, total: u64, hash: bool) -> Source {
        let mut data = vec![0u8; 64 * 1024 + 7];
        stack::rand::Rng::new(0x5eed).fill(&mut data);
        Source { to, total, sent: 0, conn: None, connected_at: None, hash: hash.then(Sha256::new), data, shut: false, finished: false, failed: false }
    }

    /// Everything was sent and acknowledged and the peer closed too (TIME-WAIT is left to
    /// the stack): report.
    fn finish(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        if self.finished {
            return;
        }
        if self.sent == self.total && !self.failed {
            let secs = self.connected_at.map(|t| (now - t).as_secs_f64()).unwrap_or(0.0).max(1e-6);
            let digest = self.hash.take().map(|h| hex(&h.finalize())).unwrap_or_else(|| "-".into());
            println!(
                "source: sent {} bytes sha256 {digest} in {secs:.3} s ({:.1} Mbit/s)",
                self.sent,
                self.sent as f64 * 8.0 / secs / 1e6
            );
            let _ = std::io::stdout().flush();
        }
        let _ = stack.close(now, h);
        self.finished = true;
    }

    fn chunk(&self) -> &[u8] {
        // A 64 KiB + 7 pattern, so chunk boundaries drift over the stream.
        let off = (self.sent % self.data.len() as u64) as usize;
        let n = ((self.total - self.sent) as usize).min(self.data.len() - off);
        &self.data[off..off + n]
    }
}

impl App for Source {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        match stack.tcp_connect(now, None, self.to) {
            Ok(h) => self.conn = Some(h),
            Err(e) => {
                eprintln!("source: cannot connect to {}: {e}", self.to);
                self.failed = true;
                self.finished = true;
            }
        }
        Ok(())
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        if Some(h) != self.conn {
            return;
        }
        match ev {
            SocketEvent::Tcp(Event::Connected) => self.connected_at = Some(now),
            SocketEvent::Tcp(Event::PeerClosed) => {
                let mut b = [0u8; 1024];
                while let Ok(n) = stack.tcp_recv(now, h, &mut b) {
                    if n == 0 {
                        break;
                    }
                }
            }
            SocketEvent::Tcp(Event::Reset | Event::TimedOut) => {
                let what = if self.connected_at.is_none() { "connection refused or unreachable" } else { "connection lost" };
                eprintln!("source: {what} ({ev:?}) after {} of {} bytes", self.sent, self.total);
                self.failed = true;
                self.finished = true;
            }
            SocketEvent::Tcp(Event::Closed) => {
                self.finish(now, stack, h);
            }
            _ => {}
        }
    }
    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        let (Some(h), Some(_)) = (self.conn, self.connected_at) else { return false };
        let mut did = false;
        while self.sent < self.total {
            let chunk_len = self.chunk().len();
            let off = (self.sent % self.data.len() as u64) as usize;
            match stack.tcp_send(now, h, &self.data[off..off + chunk_len]) {
                Ok(k) if k > 0 => {
                    if let Some(hash) = &mut self.hash {
                        hash.update(&self.data[off..off + k]);
                    }
                    self.sent += k as u64;
                    did = true;
                }
                _ => break,
            }
        }
        if self.sent == self.total && !self.shut {
            self.shut = stack.tcp_shutdown(now, h).is_ok();
        }
        let all_acked = stack.tcp(h).is_some_and(|c| c.send_queue() == 0 && c.peer_closed());
        if self.shut && all_acked {
            self.finish(now, stack, h);
        }
        did
    }
    fn done(&self) -> bool {
        self.finished
    }
}
