//! The HTTP server: a fixed-size body or `/bytes/N`, keep-alive, header and idle timeouts.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddrV4;

use poll_loop::runner::App;
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::{Duration, Instant};

use crate::apps::{accept_all, listen, Backlog};

// ---- http ------------------------------------------------------------------------------

/// Where a connection is in its request cycle, for the timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request header: `header_timeout` runs (nginx
    /// client_header_timeout, also from accept to the first request).
    Header,
    /// A response is being queued: no timeout of the app's.
    Busy,
    /// Keep-alive between requests: `idle_timeout` runs (nginx keepalive_timeout).
    Idle,
}

struct HttpConn {
    phase: Phase,
    /// When the running timeout expires.
    deadline: Option<Instant>,
    inbuf: Vec<u8>,
    /// Response header bytes not yet queued.
    head: Vec<u8>,
    head_off: usize,
    /// Body bytes not yet queued.
    body_left: u64,
    close_after: bool,
    peer_closed: bool,
}

pub struct Http {
    addr: SocketAddrV4,
    size: u64,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// The next scan of the connections for expired timeouts (once a second).
    next_sweep: Instant,
    expired: Vec<SocketHandle>,
    /// Connections reset by the header timeout / the idle timeout.
    pub header_timeouts: u64,
    pub idle_timeouts: u64,
    listener: Option<SocketHandle>,
    conns: HashMap<SocketHandle, HttpConn>,
    active: Backlog,
    body: Vec<u8>,
    buf: Vec<u8>,
    pub requests: u64,
}

impl Http {
    pub fn new(addr: SocketAddrV4, size: u64) -> Http {
        Http {
            addr,
            size,
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            next_sweep: Instant::ZERO,
            expired: Vec::new(),
            header_timeouts: 0,
            idle_timeouts: 0,
            listener: None,
            conns: HashMap::new(),
            active: Backlog::default(),
            body: vec![b'x'; 64 * 1024],
            buf: vec![0u8; 16 * 1024],
            requests: 0,
        }
    }

    /// Header and keep-alive timeouts (the defaults are nginx's: 60 s and 75 s).
    pub fn with_timeouts(mut self, header: std::time::Duration, idle: std::time::Duration) -> Http {
        self.header_timeout = Duration::from_micros(header.as_micros().min(u64::MAX as u128) as u64);
        self.idle_timeout = Duration::from_micros(idle.as_micros().min(u64::MAX as u128) as u64);
        self
    }

    /// Reset every connection whose timeout expired: the stack frees it (and its buffers) once
    /// the RST is out. Scans all connections, once a second.
    fn sweep(&mut self, now: Instant, stack: &mut Stack) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + Duration::from_secs(1);
        self.expired.clear();
        for (&h, c) in &self.conns {
            if c.deadline.is_some_and(|d| d <= now) {
                self.expired.push(h);
            }
        }
        for i in 0..self.expired.len() {
            let h = self.expired[i];
            if let Some(c) = self.conns.remove(&h) {
                match c.phase {
                    Phase::Idle => self.idle_timeouts += 1,
                    _ => self.header_timeouts += 1,
                }
            }
            self.active.forget(h);
            let _ = stack.tcp_abort(now, h);
        }
    }

    /// Read, parse complete requests, queue responses; true while output is pending.
    fn serve(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) -> bool {
        let Some(c) = self.conns.get_mut(&h) else { return false };
        loop {
            // Flush the current response.
            while c.head_off < c.head.len() {
                match stack.tcp_send(now, h, &c.head[c.head_off..]) {
                    Ok(k) if k > 0 => c.head_off += k,
                    _ => return true,
                }
            }
            while c.body_left > 0 {
                let n = (c.body_left as usize).min(self.body.len());
                match stack.tcp_send(now, h, &self.body[..n]) {
                    Ok(k) if k > 0 => c.body_left -= k as u64,
                    _ => return true,
                }
            }
            if c.close_after {
                let _ = stack.tcp_shutdown(now, h);
                return false;
            }
            // Read more input.
            loop {
                match stack.tcp_recv(now, h, &mut self.buf) {
                    Ok(0) => {
                        c.peer_closed = true;
                        break;
                    }
                    Ok(n) => {
                        if c.inbuf.len() + n > 64 * 1024 {
                            // A request header this large is not one we serve.
                            let _ = stack.tcp_abort(now, h);
                            return false;
                        }
                        c.inbuf.extend_from_slice(&self.buf[..n]);
                    }
                    Err(_) => break,
                }
            }
            let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                match (c.inbuf.is_empty(), c.phase) {
                    (true, Phase::Busy) => {
                        c.phase = Phase::Idle;
                        c.deadline = Some(now + self.idle_timeout);
                    }
                    (false, Phase::Busy | Phase::Idle) => {
                        c.phase = Phase::Header;
                        c.deadline = Some(now + self.header_timeout);
                    }
                    _ => {}
                }
                if c.peer_closed {
                    let _ = stack.tcp_shutdown(now, h);
                }
                return false;
            };
            let req = &c.inbuf[..end];
            let text = String::from_utf8_lossy(req).to_ascii_lowercase();
            let http10 = text.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
            let close = text.contains("\r\nconnection: close") || (http10 && !text.contains("\r\nconnection: keep-alive"));
            let size = body_size(&text, self.size);
            c.inbuf.drain(..end + 4);
            self.requests += 1;
            c.phase = Phase::Busy;
            c.deadline = None;
            c.head.clear();
            c.head_off = 0;
            let _ = write!(
                c.head,
                "HTTP/1.1 200 OK\r\nServer: plex\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
                size,
                if close { "Connection: close\r\n" } else { "" }
            );
            c.body_left = size;
            c.close_after = close;
        }
    }
}

/// The body size a request asks for: `GET /bytes/N` gets N bytes (at most 1 GiB), any other
/// path the server's default.
fn body_size(request: &str, default: u64) -> u64 {
    let path = request.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
    path.strip_prefix("/bytes/").and_then(|n| n.parse::<u64>().ok()).map_or(default, |n| n.min(1 << 30))
}

impl Http {
    /// A connection is this server's now (accepted, or moved here from another stack).
    fn adopt(&mut self, now: Instant, stack: &mut Stack, c: SocketHandle) {
        self.conns.insert(
            c,
            HttpConn {
                phase: Phase::Header,
                deadline: Some(now + self.header_timeout),
                inbuf: Vec::new(),
                head: Vec::with_capacity(160),
                head_off: 0,
                body_left: 0,
                close_after: false,
                peer_closed: false,
            },
        );
        let more = self.serve(now, stack, c);
        self.active.keep(c, more);
    }
}

impl App for Http {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        self.listener = Some(listen(now, stack, self.addr)?);
        Ok(())
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        match ev {
            SocketEvent::Acceptable => {
                let mut new = Vec::new();
                accept_all(stack, h, |c| new.push(c));
                for c in new {
                    if let Some(conn) = stack.tcp_mut(c) {
                        conn.set_nodelay(true);
                    }
                    self.adopt(now, stack, c);
                }
            }
            SocketEvent::Tcp(Event::Readable | Event::PeerClosed | Event::Writable) => {
                let more = self.serve(now, stack, h);
                self.active.keep(h, more);
            }
            SocketEvent::Tcp(Event::Closed) => {
                self.conns.remove(&h);
                self.active.forget(h);
                let _ = stack.close(now, h);
            }
            _ => {}
        }
    }
    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        self.sweep(now, stack);
        let mut active = std::mem::take(&mut self.active);
        let did = active.retry(|h| self.serve(now, stack, h));
        self.active = active;
        did
    }
    // Live handoff (`plex ctl drain`): a connection moves between requests (nothing of a
    // request read, nothing of a response left to queue); any stack running it takes it.
    fn transfer_offer(&mut self, _now: Instant, _stack: &mut Stack, _offer: &poll_loop::handoff::TransferOffer) -> poll_loop::handoff::TransferDecision {
        poll_loop::handoff::TransferDecision::Accept
    }
    fn transferred(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, _app_state: &[u8]) {
        if let Some(conn) = stack.tcp_mut(h) {
            conn.set_nodelay(true);
        }
        self.adopt(now, stack, h);
    }
    fn may_move(&mut self, _stack: &Stack, h: SocketHandle) -> bool {
        self.conns.get(&h).is_some_and(|c| {
            matches!(c.phase, Phase::Idle | Phase::Header) && c.inbuf.is_empty() && c.head_off >= c.head.len() && c.body_left == 0 && !c.close_after && !c.peer_closed
        })
    }
    fn moved_away(&mut self, _now: Instant, _stack: &mut Stack, h: SocketHandle) {
        self.conns.remove(&h);
        self.active.forget(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use stack::iface::{Stack, StackConfig};
    use stack::time::Duration;
    use stack::wire::MacAddr;

    const S_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const C_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn stack(mac: u8, ip: Ipv4Addr) -> Stack {
        let mut cfg = StackConfig::new(MacAddr([2, 0, 0, 0, 0, mac]));
        cfg.seed = mac as u64;
        let mut s = Stack::new(cfg);
        s.add_address(ip, 24, false);
        s
    }

    /// The server with its app, a Linux-like client stack, and a perfect wire between them.
    struct World {
        server: Stack,
        app: Http,
        client: Stack,
        now: Instant,
    }

    impl World {
        fn new() -> World {
            let mut w = World { server: stack(11, S_IP), app: Http::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 100), client: stack(1, C_IP), now: Instant::from_secs(1) };
            w.app = Http::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 100).with_timeouts(std::time::Duration::from_secs(60), std::time::Duration::from_secs(75));
            w.app.start(w.now, &mut w.server).expect("listens");
            w
        }

        /// Run the wire, the timers and the app for `ms` milliseconds, 10 ms at a time.
        fn run(&mut self, ms: u64) {
            let end = self.now + Duration::from_millis(ms);
            let mut buf = vec![0u8; 1600];
            loop {
                for _ in 0..100 {
                    let mut moved = false;
                    while let Some(n) = self.server.poll_transmit(self.now, &mut buf) {
                        self.client.receive(self.now, &buf[..n]);
                        moved = true;
                    }
                    while let Some(n) = self.client.poll_transmit(self.now, &mut buf) {
                        self.server.receive(self.now, &buf[..n]);
                        moved = true;
                    }
                    while let Some((h, ev)) = self.server.poll_event() {
                        self.app.event(self.now, &mut self.server, h, ev);
                        moved = true;
                    }
                    moved |= self.app.poll(self.now, &mut self.server);
                    if !moved {
                        break;
                    }
                }
                if self.now >= end {
                    break;
                }
                self.now += Duration::from_millis(10);
                self.server.handle_timeout(self.now);
                self.client.handle_timeout(self.now);
            }
        }

        fn connect(&mut self) -> SocketHandle {
            let c = self.client.tcp_connect(self.now, None, SocketAddrV4::new(S_IP, 80)).unwrap();
            self.run(10);
            assert_eq!(self.app.conns.len(), 1);
            c
        }

        fn client_events(&mut self) -> Vec<SocketEvent> {
            std::iter::from_fn(|| self.client.poll_event()).map(|(_, e)| e).collect()
        }
    }

    #[test]
    fn half_a_request_header_is_reset_after_the_header_timeout_and_freed() {
        let mut w = World::new();
        let c = w.connect();
        w.client.tcp_send(w.now, c, b"GET / HTTP/1.1\r\nHost: x").unwrap();
        w.run(59_000);
        assert_eq!(w.app.conns.len(), 1);
        assert!(w.server.buffer_memory() > 0, "the half request sits in a receive ring");
        w.client_events();
        w.run(2_000);
        assert_eq!(w.app.conns.len(), 0);
        assert_eq!(w.app.header_timeouts, 1);
        assert!(w.client_events().contains(&SocketEvent::Tcp(Event::Reset)));
        assert_eq!(w.server.tcp_socket_count(), 0, "the stack freed it");
        assert_eq!(w.server.buffer_memory(), 0);
    }

    #[test]
    fn a_silent_new_connection_gets_the_header_timeout() {
        let mut w = World::new();
        w.connect();
        w.run(61_000);
        assert_eq!((w.app.conns.len(), w.app.header_timeouts), (0, 1));
    }

    #[test]
    fn keep_alive_connections_are_reset_after_the_idle_timeout_but_not_while_used() {
        let mut w = World::new();
        let c = w.connect();
        let mut buf = vec![0u8; 4096];
        // A request every 30 s for 3 minutes: the idle timeout restarts after each response.
        for _ in 0..6 {
            w.client.tcp_send(w.now, c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            w.run(30_000);
            let n = w.client.tcp_recv(w.now, c, &mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"), "{:?}", String::from_utf8_lossy(&buf[..n]));
        }
        assert_eq!(w.app.requests, 6);
        assert_eq!(w.app.conns.len(), 1);
        // Then silence: 75 s (plus the one-second sweep) after the last response it is reset.
        w.run(44_000);
        assert_eq!(w.app.conns.len(), 1, "30 + 44 s < 75 s");
        w.run(2_000);
        assert_eq!((w.app.conns.len(), w.app.idle_timeouts, w.app.header_timeouts), (0, 1, 0));
        assert_eq!(w.server.tcp_socket_count(), 0);
    }

    #[test]
    fn a_taken_port_is_a_start_error_not_an_exit() {
        let mut w = World::new();
        let mut second = Http::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 100);
        let e = second.start(w.now, &mut w.server).unwrap_err();
        assert!(e.starts_with("cannot listen on 0.0.0.0:80"), "{e}");
    }

    #[test]
    fn a_request_for_bytes_n_gets_n_bytes() {
        assert_eq!(body_size("get /bytes/1048576 http/1.1\r\nhost: x", 1024), 1 << 20);
        assert_eq!(body_size("get / http/1.1", 1024), 1024);
        assert_eq!(body_size("get /bytes/x http/1.1", 7), 7);
        assert_eq!(body_size("get /bytes/99999999999999 http/1.1", 7), 1 << 30);
        assert_eq!(body_size("", 7), 7);
    }
}
