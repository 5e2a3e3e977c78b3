//! The outbound client: many connections from this stack to one server, kept busy and checked.
//!
//! What a backend on a cluster stack does when it calls a database: it opens connections to a
//! server outside the cluster, from the cluster's shared address (`--from`, or the address
//! the config's `source_ipa` gives the application's name), and keeps talking on them. Every
//! connection sends a numbered 16-byte message every `--interval-ms` and checks that the bytes
//! echoed back are exactly what it sent, in order. It prints the local ports it got (so a test
//! can check that two stacks on one address never share one), progress every second, and a
//! last line with what went wrong (resets, timeouts, mismatched bytes). With cluster-wide
//! ports on the address, two stacks running it at once never pick the same port, and the
//! replies (which reach the address's routing stack) are forwarded to the stack that owns it.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use poll_loop::runner::App;
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::{Duration, Instant};

/// One connection's state.
struct Conn {
    h: SocketHandle,
    up: bool,
    /// Messages sent so far.
    sent: u64,
    /// Bytes sent and not echoed yet, in order.
    expect: VecDeque<u8>,
}

/// The outbound client (see the module documentation).
pub struct Outbound {
    to: SocketAddrV4,
    from: Option<Ipv4Addr>,
    count: usize,
    secs: u64,
    interval: Duration,
    conns: Vec<Conn>,
    by_handle: HashMap<SocketHandle, usize>,
    start: Option<Instant>,
    all_up: bool,
    held_since: Option<Instant>,
    next_send: Option<Instant>,
    last_report: Option<Instant>,
    established: usize,
    resets: u64,
    timeouts: u64,
    mismatches: u64,
    echoed: u64,
    finished: bool,
    buf: Vec<u8>,
}

impl Outbound {
    /// `count` connections to `to`, from `from` (or the application's source address), held
    /// for `secs` seconds once all are up, a message on each every `interval_ms`.
    pub fn new(to: SocketAddrV4, from: Option<Ipv4Addr>, count: usize, secs: u64, interval_ms: u64) -> Outbound {
        Outbound {
            to,
            from,
            count,
            secs,
            interval: Duration::from_millis(interval_ms.max(1)),
            conns: Vec::with_capacity(count),
            by_handle: HashMap::with_capacity(count),
            start: None,
            all_up: false,
            held_since: None,
            next_send: None,
            last_report: None,
            established: 0,
            resets: 0,
            timeouts: 0,
            mismatches: 0,
            echoed: 0,
            finished: false,
            buf: vec![0u8; 64 * 1024],
        }
    }

    fn message(i: usize, n: u64) -> [u8; 16] {
        let mut m = [0u8; 16];
        m[..6].copy_from_slice(&(i as u64).to_be_bytes()[2..]);
        m[6..14].copy_from_slice(&n.to_be_bytes());
        m[14] = b' ';
        m[15] = b'\n';
        m
    }

    fn report(&self, what: &str) {
        println!(
            "outbound: {what} established={} of {} resets={} timeouts={} mismatches={} echoed={}",
            self.established, self.count, self.resets, self.timeouts, self.mismatches, self.echoed
        );
        let _ = std::io::stdout().flush();
    }

    fn read(&mut self, now: Instant, stack: &mut Stack, i: usize) {
        let h = self.conns[i].h;
        loop {
            match stack.tcp_recv(now, h, &mut self.buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let c = &mut self.conns[i];
                    for &b in &self.buf[..n] {
                        match c.expect.pop_front() {
                            Some(e) if e == b => {}
                            _ => {
                                self.mismatches += 1;
                                break;
                            }
                        }
                    }
                    self.echoed += n as u64;
                }
            }
        }
    }
}

impl App for Outbound {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        self.start = Some(now);
        for i in 0..self.count {
            let h = stack
                .tcp_connect(now, self.from, self.to)
                .map_err(|e| format!("outbound: connect {} (connection {i}) failed: {e}", self.to))?;
            self.by_handle.insert(h, i);
            self.conns.push(Conn { h, up: false, sent: 0, expect: VecDeque::new() });
        }
        let src = stack.tcp(self.conns[0].h).map(|c| *c.tuple().local.ip());
        println!("outbound: {} connections to {} from {}", self.count, self.to, src.map_or("?".into(), |a| a.to_string()));
        Ok(())
    }

    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        let Some(&i) = self.by_handle.get(&h) else { return };
        match ev {
            SocketEvent::Tcp(Event::Connected) => {
                self.conns[i].up = true;
                self.established += 1;
                if self.established == self.count && !self.all_up {
                    self.all_up = true;
                    let mut ports: Vec<u16> =
                        self.conns.iter().filter_map(|c| stack.tcp(c.h).map(|t| t.tuple().local.port())).collect();
                    ports.sort_unstable();
                    let t = self.start.map_or(0.0, |s| (now - s).as_secs_f64());
                    println!(
                        "outbound: all {} established in {t:.3} s; local ports: {}",
                        self.count,
                        ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
                    );
                    let _ = std::io::stdout().flush();
                    self.next_send = Some(now);
                    self.last_report = Some(now);
                    self.held_since = Some(now);
                }
            }
            SocketEvent::Tcp(Event::Readable) => self.read(now, stack, i),
            SocketEvent::Tcp(Event::Reset) => {
                self.resets += 1;
                eprintln!("outbound: connection {i} was reset");
            }
            SocketEvent::Tcp(Event::TimedOut) => {
                self.timeouts += 1;
                eprintln!("outbound: connection {i} timed out");
            }
            SocketEvent::Tcp(Event::Closed) => {
                if self.conns[i].up {
                    self.conns[i].up = false;
                }
                let _ = stack.close(now, h);
            }
            _ => {}
        }
    }

    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        if self.finished {
            return false;
        }
        let since = self.start.map_or(0.0, |s| (now - s).as_secs_f64());
        if !self.all_up {
            if since > 30.0 {
                self.report("gave up waiting:");
                self.finished = true;
            }
            return false;
        }
        if self.last_report.is_some_and(|t| now >= t + Duration::from_secs(1)) {
            self.last_report = Some(now);
            self.report(&format!("t={since:.0}s"));
        }
        let Some(at) = self.next_send.filter(|t| now >= *t) else { return false };
        self.next_send = Some(at + self.interval);
        let end = self.held_since.unwrap_or(now) + Duration::from_secs(self.secs);
        if now >= end {
            // Stop sending; finish once every echo is back (or 5 s later).
            let echoed = self.conns.iter().all(|c| c.expect.is_empty());
            if echoed || now >= end + Duration::from_secs(5) {
                for c in &self.conns {
                    let _ = stack.tcp_shutdown(now, c.h);
                }
                self.report("done:");
                self.finished = true;
                return true;
            }
            return false;
        }
        for i in 0..self.conns.len() {
            if !self.conns[i].up {
                continue;
            }
            let m = Self::message(i, self.conns[i].sent);
            if let Ok(16) = stack.tcp_send(now, self.conns[i].h, &m) {
                let c = &mut self.conns[i];
                c.sent += 1;
                c.expect.extend(m);
            }
        }
        true
    }

    fn done(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_differ_per_connection_and_number() {
        let a = Outbound::message(1, 2);
        assert_ne!(a, Outbound::message(2, 2));
        assert_ne!(a, Outbound::message(1, 3));
        assert_eq!(a[15], b'\n');
    }
}

/// The churn client: connection rate from this stack to one server, `inflight` connections at a
/// time, each opened, one 16-byte message echoed and checked, then closed (the active closer
/// holds the port through TIME-WAIT), until `total` have completed. Prints connections per
/// second: with `cluster_ports` on the source address every connect claims its port in the
/// cluster's registry, and every freed connection gives it back.
pub struct Churn {
    to: SocketAddrV4,
    from: Option<Ipv4Addr>,
    total: u64,
    inflight: usize,
    opened: u64,
    completed: u64,
    failed: u64,
    live: HashMap<SocketHandle, bool>,
    start: Option<Instant>,
    /// When 99 % had completed (the rate without a straggler's retransmission timeout).
    at_99: Option<Instant>,
    last_report: Option<Instant>,
    finished: bool,
    buf: [u8; 64],
}

impl Churn {
    /// `total` connections to `to` from `from`, `inflight` at a time.
    pub fn new(to: SocketAddrV4, from: Option<Ipv4Addr>, total: u64, inflight: usize) -> Churn {
        Churn {
            to,
            from,
            total,
            inflight: inflight.max(1),
            opened: 0,
            completed: 0,
            failed: 0,
            live: HashMap::new(),
            start: None,
            at_99: None,
            last_report: None,
            finished: false,
            buf: [0; 64],
        }
    }
}

impl App for Churn {
    fn start(&mut self, now: Instant, _stack: &mut Stack) -> Result<(), String> {
        self.start = Some(now);
        self.last_report = Some(now);
        Ok(())
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        let Some(&done) = self.live.get(&h) else { return };
        match ev {
            SocketEvent::Tcp(Event::Connected) => {
                let _ = stack.tcp_send(now, h, b"churn: 16 bytes\n");
            }
            SocketEvent::Tcp(Event::Readable) if !done => {
                if let Ok(16) = stack.tcp_peek(h, &mut self.buf[..16]) {
                    let _ = stack.tcp_recv(now, h, &mut self.buf[..16]);
                    if &self.buf[..16] == b"churn: 16 bytes\n" {
                        self.completed += 1;
                    } else {
                        self.failed += 1;
                    }
                    self.live.insert(h, true);
                    let _ = stack.close(now, h);
                    self.live.remove(&h);
                }
            }
            SocketEvent::Tcp(Event::Reset | Event::TimedOut) => {
                self.failed += 1;
                self.live.remove(&h);
                let _ = stack.close(now, h);
            }
            _ => {}
        }
    }
    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        if self.finished {
            return false;
        }
        let mut did = false;
        while self.live.len() < self.inflight && self.opened < self.total {
            match stack.tcp_connect(now, self.from, self.to) {
                Ok(h) => {
                    self.live.insert(h, false);
                    self.opened += 1;
                    did = true;
                }
                Err(e) => {
                    eprintln!("churn: connect {} failed after {} connections: {e}", self.to, self.opened);
                    self.finished = true;
                    return false;
                }
            }
        }
        let secs = self.start.map_or(0.0, |s| (now - s).as_secs_f64()).max(1e-6);
        if self.last_report.is_some_and(|t| now >= t + Duration::from_secs(1)) {
            self.last_report = Some(now);
            eprintln!("churn: {} of {} completed, {} failed ({:.0} conn/s)", self.completed, self.total, self.failed, self.completed as f64 / secs);
        }
        if self.at_99.is_none() && self.completed * 100 >= self.total * 99 {
            self.at_99 = Some(now);
        }
        if self.completed + self.failed >= self.total {
            let s99 = self.at_99.zip(self.start).map_or(secs, |(a, s)| (a - s).as_secs_f64()).max(1e-6);
            println!(
                "churn: done: completed={} failed={} secs={secs:.3} conn_per_s={:.0} conn_per_s_99={:.0}",
                self.completed,
                self.failed,
                self.completed as f64 / secs,
                (self.total * 99 / 100) as f64 / s99
            );
            let _ = std::io::stdout().flush();
            self.finished = true;
        }
        did
    }
    fn done(&self) -> bool {
        self.finished
    }
}
