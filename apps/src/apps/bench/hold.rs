//! The hold client: many idle connections.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use poll_loop::runner::App;
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;



// ---- hold ------------------------------------------------------------------------------

/// Opens `count` connections and holds them idle (memory per connection, at both ends):
/// handshakes are paced (`inflight` at most), source addresses taken round robin from the
/// stack's addresses so more than one address's ephemeral ports can be used.
pub struct Hold {
    to: Vec<SocketAddrV4>,
    count: u64,
    inflight: usize,
    secs: u64,
    sources: Vec<Ipv4Addr>,
    opened: u64,
    pending: usize,
    established: u64,
    conns: Vec<SocketHandle>,
    start: Option<Instant>,
    held_since: Option<Instant>,
    finished: bool,
    /// Sent on every connection once established (e.g. half an HTTP request: an attacker).
    request: Vec<u8>,
    /// Count refused and timed-out connections and go on, instead of stopping at the first.
    keep_going: bool,
    failed: u64,
    /// Slots of the established connections (a reset one was pending or established).
    up: std::collections::HashSet<u32>,
    last_report: Option<Instant>,
}

impl Hold {
    pub fn new(to: Vec<SocketAddrV4>, count: u64, inflight: usize, secs: u64, request: Vec<u8>, keep_going: bool) -> Hold {
        Hold {
            to,
            count,
            inflight: inflight.max(1),
            secs,
            sources: Vec::new(),
            opened: 0,
            pending: 0,
            established: 0,
            conns: Vec::with_capacity(count as usize),
            start: None,
            held_since: None,
            finished: false,
            request,
            keep_going,
            failed: 0,
            up: std::collections::HashSet::new(),
            last_report: None,
        }
    }

    /// All connections are settled (established or failed): start holding.
    fn settled(&mut self, now: Instant) {
        if self.held_since.is_some() || self.opened < self.count || self.pending > 0 {
            return;
        }
        let secs = self.start.map(|t| (now - t).as_secs_f64()).unwrap_or(0.0).max(1e-6);
        println!(
            "hold: {} established in {secs:.2} s ({:.0} handshakes/s) over {} source addresses{}",
            self.established,
            self.established as f64 / secs,
            self.sources.len(),
            if self.keep_going { format!(", {} failed", self.failed) } else { String::new() }
        );
        let _ = std::io::stdout().flush();
        self.held_since = Some(now);
    }
}

impl App for Hold {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        self.sources = stack.homes().iter().filter(|h| !h.internal).map(|h| h.addr).collect();
        self.start = Some(now);
        Ok(())
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        match ev {
            SocketEvent::Tcp(Event::Connected) => {
                self.pending = self.pending.saturating_sub(1);
                self.established += 1;
                if self.keep_going {
                    self.up.insert(h.index());
                }
                if !self.request.is_empty() {
                    let _ = stack.tcp_send(now, h, &self.request);
                }
                self.settled(now);
            }
            SocketEvent::Tcp(Event::Reset | Event::TimedOut) if self.keep_going => {
                if !self.up.remove(&h.index()) {
                    self.pending = self.pending.saturating_sub(1);
                }
                self.failed += 1;
                let _ = stack.close(now, h);
                self.settled(now);
            }
            SocketEvent::Tcp(Event::Reset | Event::TimedOut) => {
                eprintln!("hold: connection failed ({ev:?}) after {} established", self.established);
                let _ = stack.close(now, h);
                self.finished = true;
            }
            _ => {}
        }
    }
    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        if self.finished {
            return false;
        }
        if self.keep_going && self.last_report.is_none_or(|t| (now - t).as_secs_f64() >= 1.0) {
            self.last_report = Some(now);
            eprintln!("hold: {} established, {} pending, {} failed", self.established, self.pending, self.failed);
        }
        if let Some(t) = self.held_since {
            if (now - t).as_secs_f64() >= self.secs as f64 {
                self.finished = true;
            }
            return false;
        }
        let mut did = false;
        while self.opened < self.count && self.pending < self.inflight {
            let src = self.sources[(self.opened % self.sources.len().max(1) as u64) as usize];
            let to = self.to[(self.opened % self.to.len().max(1) as u64) as usize];
            match stack.tcp_connect(now, Some(src), to) {
                Ok(h) => {
                    self.conns.push(h);
                    self.opened += 1;
                    self.pending += 1;
                    did = true;
                }
                Err(e) => {
                    eprintln!("hold: connect {to} from {src} failed after {} connections: {e}", self.opened);
                    self.finished = true;
                    return false;
                }
            }
        }
        did
    }
    fn done(&self) -> bool {
        self.finished
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.held_since.is_none() && !self.conns.is_empty() {
            eprintln!("hold: {} of {} established when stopped", self.established, self.count);
        }
    }
}
