//! The built-in applications. Each is a run-to-completion [`App`]: its callbacks run on the poll
//! thread, between receiving and transmitting, with no locks and no copies beyond the socket
//! buffers.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use poll_loop::runner::App;
use sha2::{Digest, Sha256};
use stack::iface::{ApiError, SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::{Duration, Instant};

/// The address the built-in servers listen on: every address of the stack (unspecified)
/// unless `plex run --bind` names one (inside a VIPA range, that activates it).
pub static LISTEN_IP: std::sync::OnceLock<Ipv4Addr> = std::sync::OnceLock::new();

fn listen(now: Instant, stack: &mut Stack, port: u16) -> SocketHandle {
    let ip = LISTEN_IP.get().copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
    match stack.tcp_listen(now, SocketAddrV4::new(ip, port), 4096) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("plex: cannot listen on {ip}:{port}: {e}");
            std::process::exit(1);
        }
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Accept everything waiting on a listener.
fn accept_all(stack: &mut Stack, l: SocketHandle, mut f: impl FnMut(SocketHandle)) {
    while let Ok(h) = stack.tcp_accept(l) {
        f(h);
    }
}

/// Connections with output still to queue (their send buffer was full): retried every turn.
#[derive(Default)]
struct Backlog(Vec<SocketHandle>);

impl Backlog {
    /// Keep `h` when `more` work remains.
    fn keep(&mut self, h: SocketHandle, more: bool) {
        if more && !self.0.contains(&h) {
            self.0.push(h);
        }
    }
    fn forget(&mut self, h: SocketHandle) {
        self.0.retain(|&x| x != h);
    }
    /// Run `work` on every waiting connection; true when there were any.
    fn retry(&mut self, mut work: impl FnMut(SocketHandle) -> bool) -> bool {
        if self.0.is_empty() {
            return false;
        }
        for h in std::mem::take(&mut self.0) {
            let more = work(h);
            self.keep(h, more);
        }
        true
    }
}

// ---- echo ------------------------------------------------------------------------------

pub struct Echo {
    port: u16,
    listener: Option<SocketHandle>,
    /// UDP echo on the same port (RFC 862).
    udp: Option<SocketHandle>,
    backlog: Backlog,
    buf: Vec<u8>,
}

impl Echo {
    pub fn new(port: u16) -> Echo {
        Echo { port, listener: None, udp: None, backlog: Backlog::default(), buf: vec![0u8; 64 * 1024] }
    }

    /// Echo what can be echoed; true when input remains (the peer's data waits in our receive
    /// buffer, so its window closes: back-pressure without extra buffering).
    fn pump(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) -> bool {
        loop {
            let n = match stack.tcp_peek(h, &mut self.buf) {
                Ok(0) => {
                    // End of stream: finish our side.
                    let _ = stack.tcp_shutdown(now, h);
                    return false;
                }
                Ok(n) => n,
                Err(_) => return false,
            };
            let k = stack.tcp_send(now, h, &self.buf[..n]).unwrap_or(0);
            if k > 0 {
                let _ = stack.tcp_recv(now, h, &mut self.buf[..k]);
            }
            if k < n {
                return true;
            }
        }
    }
}

impl App for Echo {
    fn start(&mut self, now: Instant, stack: &mut Stack) {
        self.listener = Some(listen(now, stack, self.port));
        let ip = LISTEN_IP.get().copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.udp = stack.udp_bind(SocketAddrV4::new(ip, self.port)).ok();
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        match ev {
            SocketEvent::UdpReadable if Some(h) == self.udp => {
                // Datagrams of up to 65 507 bytes fit the 64 KiB buffer.
                while let Ok((n, from)) = stack.udp_recv_from(h, &mut self.buf) {
                    let _ = stack.udp_send_to(now, h, from, &self.buf[..n]);
                }
            }
            SocketEvent::Acceptable => {
                let mut new = Vec::new();
                accept_all(stack, h, |c| new.push(c));
                for c in new {
                    let more = self.pump(now, stack, c);
                    self.backlog.keep(c, more);
                }
            }
            SocketEvent::Tcp(Event::Readable | Event::PeerClosed | Event::Writable) => {
                let more = self.pump(now, stack, h);
                self.backlog.keep(h, more);
            }
            SocketEvent::Tcp(Event::Closed) => {
                self.backlog.forget(h);
                let _ = stack.close(now, h);
            }
            _ => {}
        }
    }
    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        let mut backlog = std::mem::take(&mut self.backlog);
        let did = backlog.retry(|h| self.pump(now, stack, h));
        self.backlog = backlog;
        did
    }
}

/// Echo through the blocking API: what an application linking plex writes, with std I/O.
pub fn echo_blocking(net: poll_loop::api::Net, port: u16) {
    use std::io::Read;
    let listener = match net.tcp_listen(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port), 128) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("plex: cannot listen on port {port}: {e}");
            return;
        }
    };
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { break };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown_write();
        });
    }
}

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
    port: u16,
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
    pub fn new(port: u16, size: u64) -> Http {
        Http {
            port,
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

impl App for Http {
    fn start(&mut self, now: Instant, stack: &mut Stack) {
        self.listener = Some(listen(now, stack, self.port));
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
}

// ---- sink ------------------------------------------------------------------------------

pub struct Sink {
    port: u16,
    once: bool,
    hash: bool,
    finished: bool,
    conns: HashMap<SocketHandle, (u64, Sha256, Instant)>,
    buf: Vec<u8>,
}

impl Sink {
    pub fn new(port: u16, once: bool, hash: bool) -> Sink {
        Sink { port, once, hash, finished: false, conns: HashMap::new(), buf: vec![0u8; 256 * 1024] }
    }
}

impl App for Sink {
    fn start(&mut self, now: Instant, stack: &mut Stack) {
        listen(now, stack, self.port);
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        match ev {
            SocketEvent::Acceptable => {
                let conns = &mut self.conns;
                accept_all(stack, h, |c| {
                    conns.insert(c, (0, Sha256::new(), now));
                });
            }
            SocketEvent::Tcp(Event::Readable | Event::PeerClosed) => {
                let Some((n, hash, start)) = self.conns.get_mut(&h) else { return };
                loop {
                    match stack.tcp_recv(now, h, &mut self.buf) {
                        Ok(0) => {
                            let secs = (now - *start).as_secs_f64().max(1e-6);
                            let digest = if self.hash { hex(&std::mem::take(hash).finalize()) } else { "-".into() };
                            let peer = stack.tcp(h).map(|c| c.tuple().remote.to_string()).unwrap_or_default();
                            println!(
                                "sink: {peer} sent {n} bytes sha256 {digest} in {secs:.3} s ({:.1} Mbit/s)",
                                *n as f64 * 8.0 / secs / 1e6
                            );
                            let _ = std::io::stdout().flush();
                            self.conns.remove(&h);
                            let _ = stack.close(now, h);
                            if self.once {
                                self.finished = true;
                            }
                            return;
                        }
                        Ok(k) => {
                            *n += k as u64;
                            if self.hash {
                                hash.update(&self.buf[..k]);
                            }
                        }
                        Err(_) => return,
                    }
                }
            }
            SocketEvent::Tcp(Event::Reset | Event::TimedOut) => {
                eprintln!("sink: connection {h:?} failed: {ev:?}");
                self.conns.remove(&h);
                let _ = stack.close(now, h);
            }
            SocketEvent::Tcp(Event::Closed) => {
                let _ = stack.close(now, h);
            }
            _ => {}
        }
    }
    fn done(&self) -> bool {
        self.finished
    }
}

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
    fn start(&mut self, now: Instant, stack: &mut Stack) {
        match stack.tcp_connect(now, None, self.to) {
            Ok(h) => self.conn = Some(h),
            Err(e) => {
                eprintln!("source: cannot connect to {}: {e}", self.to);
                self.failed = true;
                self.finished = true;
            }
        }
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

// ---- connect ---------------------------------------------------------------------------

pub struct Connect {
    to: SocketAddrV4,
    conn: Option<SocketHandle>,
    input: crossbeam::channel::Receiver<Option<Vec<u8>>>,
    pending: Vec<u8>,
    stdin_done: bool,
    connected: bool,
    finished: bool,
    buf: Vec<u8>,
}

impl Connect {
    pub fn new(to: SocketAddrV4) -> Connect {
        let (tx, rx) = crossbeam::channel::bounded(64);
        // stdin is read by a helper thread so the poll thread never blocks on it.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut b = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut b) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Some(b[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Connect {
            to,
            conn: None,
            input: rx,
            pending: Vec::new(),
            stdin_done: false,
            connected: false,
            finished: false,
            buf: vec![0u8; 64 * 1024],
        }
    }

    fn drain_output(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        let mut out = std::io::stdout().lock();
        loop {
            match stack.tcp_recv(now, h, &mut self.buf) {
                Ok(0) => {
                    let _ = out.flush();
                    if self.stdin_done && self.pending.is_empty() {
                        let _ = stack.close(now, h);
                        self.finished = true;
                    }
                    return;
                }
                Ok(n) => {
                    if out.write_all(&self.buf[..n]).is_err() {
                        self.finished = true;
                        return;
                    }
                }
                Err(_) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
    }
}

impl App for Connect {
    fn start(&mut self, now: Instant, stack: &mut Stack) {
        match stack.tcp_connect(now, None, self.to) {
            Ok(h) => self.conn = Some(h),
            Err(e) => {
                eprintln!("connect: {}: {e}", self.to);
                self.finished = true;
            }
        }
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        match ev {
            SocketEvent::Tcp(Event::Connected) => self.connected = true,
            SocketEvent::Tcp(Event::Readable | Event::PeerClosed) => self.drain_output(now, stack, h),
            SocketEvent::Tcp(Event::Reset) => {
                eprintln!("connect: {}: {}", self.to, ApiError::Tcp(stack::tcp::Error::Reset));
                self.finished = true;
            }
            SocketEvent::Tcp(Event::TimedOut) => {
                eprintln!("connect: {}: {}", self.to, ApiError::Tcp(stack::tcp::Error::TimedOut));
                self.finished = true;
            }
            SocketEvent::Tcp(Event::Closed) => self.finished = true,
            _ => {}
        }
    }
    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        let Some(h) = self.conn else { return false };
        if !self.connected {
            // Closing in SYN-SENT would abandon the connection (RFC 9293 3.10.4).
            return false;
        }
        let mut did = false;
        if self.pending.is_empty() && !self.stdin_done {
            match self.input.try_recv() {
                Ok(Some(d)) => self.pending = d,
                Ok(None) => self.stdin_done = true,
                Err(_) => {}
            }
        }
        if !self.pending.is_empty() {
            if let Ok(k) = stack.tcp_send(now, h, &self.pending) {
                self.pending.drain(..k);
                did = k > 0;
            }
        }
        if self.stdin_done && self.pending.is_empty() {
            let _ = stack.tcp_shutdown(now, h);
        }
        did
    }
    fn done(&self) -> bool {
        self.finished
    }
}

// ---- pingpong --------------------------------------------------------------------------

/// One connection of the ping-pong client.
struct PingConn {
    h: SocketHandle,
    sent_at: Option<std::time::Instant>,
    got: usize,
}

/// Round-trip latency client: over `conns` connections to an echo server, each with one
/// `size`-byte message in flight at a time, records every round trip in nanoseconds (its own
/// clock reads: the loop's `now` has 1 us resolution and is not read every turn). The next
/// message of a connection goes out as soon as its echo is complete.
pub struct PingPong {
    to: SocketAddrV4,
    size: usize,
    count: u64,
    warmup: u64,
    nconns: usize,
    done_rounds: u64,
    conns: Vec<PingConn>,
    /// Connection index by the socket handle's slot (a plain vector: looked up per event).
    index: Vec<Option<usize>>,
    connected: usize,
    msg: Vec<u8>,
    buf: Vec<u8>,
    pub hist: hdrhistogram::Histogram<u64>,
    hgrm: Option<String>,
    finished: bool,
    measure_start: Option<std::time::Instant>,
    pub elapsed_ns: u64,
}

impl PingPong {
    pub fn new(to: SocketAddrV4, size: usize, count: u64, warmup: u64, conns: usize, hgrm: Option<String>) -> PingPong {
        let hist = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
        PingPong {
            to,
            size: size.max(1),
            count,
            warmup,
            nconns: conns.max(1),
            done_rounds: 0,
            conns: Vec::new(),
            index: Vec::new(),
            connected: 0,
            msg: vec![0x42; size.max(1)],
            buf: vec![0u8; size.max(1)],
            hist,
            hgrm,
            finished: false,
            measure_start: None,
            elapsed_ns: 0,
        }
    }

    fn report(&self) {
        let h = &self.hist;
        let us = |ns: u64| ns as f64 / 1000.0;
        println!(
            "pingpong: {} round trips of {} bytes{}: p50 {:.1} us p90 {:.1} us p99 {:.1} us p99.9 {:.1} us max {:.1} us mean {:.1} us tps {:.0}",
            h.len(),
            self.size,
            if self.nconns > 1 { format!(" over {} connections", self.nconns) } else { String::new() },
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.9)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
            h.mean() / 1000.0,
            h.len() as f64 * 1e9 / self.elapsed_ns.max(1) as f64
        );
        if let Some(path) = &self.hgrm {
            if let Err(e) = std::fs::write(path, percentile_distribution(h)) {
                eprintln!("pingpong: writing {path}: {e}");
            }
        }
        let _ = std::io::stdout().flush();
    }

    /// Send connection `i`'s next message; its round trip starts at `t` (taken before the
    /// send, as the Linux client and the floor do).
    fn send(&mut self, now: Instant, stack: &mut Stack, i: usize, t: std::time::Instant) {
        let c = &mut self.conns[i];
        c.sent_at = Some(t);
        if stack.tcp_send(now, c.h, &self.msg).ok() != Some(self.size) {
            eprintln!("pingpong: the send buffer refused a {}-byte message", self.size);
            self.finished = true;
        }
    }

    fn finish(&mut self, now: Instant, stack: &mut Stack) {
        self.report();
        for c in &self.conns {
            let _ = stack.close(now, c.h);
        }
        self.finished = true;
    }
}

/// HdrHistogram's percentile-distribution text (the `.hgrm` format its plotters read), from
/// nanosecond values, in microseconds.
pub fn percentile_distribution(h: &hdrhistogram::Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { "inf".to_string() };
        out.push_str(&format!("{:12.3} {:2.12} {:10} {:>14}\n", v.value_iterated_to() as f64 / 1000.0, q, v.count_since_last_iteration(), inv));
    }
    out.push_str(&format!(
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    ));
    out
}

impl App for PingPong {
    fn start(&mut self, now: Instant, stack: &mut Stack) {
        for i in 0..self.nconns {
            match stack.tcp_connect(now, None, self.to) {
                Ok(h) => {
                    if let Some(c) = stack.tcp_mut(h) {
                        c.set_nodelay(true);
                    }
                    let slot = h.index() as usize;
                    if self.index.len() <= slot {
                        self.index.resize(slot + 1, None);
                    }
                    self.index[slot] = Some(i);
                    self.conns.push(PingConn { h, sent_at: None, got: 0 });
                }
                Err(e) => {
                    eprintln!("pingpong: cannot connect to {}: {e}", self.to);
                    self.finished = true;
                    return;
                }
            }
        }
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        let Some(i) = self.index.get(h.index() as usize).copied().flatten().filter(|&i| self.conns[i].h == h) else { return };
        if self.finished {
            return;
        }
        match ev {
            SocketEvent::Tcp(Event::Connected) => {
                self.connected += 1;
                self.send(now, stack, i, std::time::Instant::now());
            }
            SocketEvent::Tcp(Event::Readable) => loop {
                let got = self.conns[i].got;
                let n = match stack.tcp_recv(now, h, &mut self.buf[got..]) {
                    Ok(n) if n > 0 => n,
                    _ => return,
                };
                let c = &mut self.conns[i];
                c.got += n;
                if c.got < self.size {
                    continue;
                }
                c.got = 0;
                // One clock read ends this round trip and starts the next.
                let t = std::time::Instant::now();
                if let Some(t0) = c.sent_at.take() {
                    if self.done_rounds >= self.warmup {
                        let _ = self.hist.record(((t - t0).as_nanos() as u64).max(1));
                    }
                }
                self.done_rounds += 1;
                if self.done_rounds == self.warmup {
                    self.measure_start = Some(t);
                }
                if self.done_rounds >= self.warmup + self.count {
                    self.elapsed_ns = self.measure_start.map(|t| t.elapsed().as_nanos() as u64).unwrap_or(0);
                    self.finish(now, stack);
                    return;
                }
                self.send(now, stack, i, t);
            },
            SocketEvent::Tcp(Event::Reset | Event::TimedOut | Event::PeerClosed) => {
                eprintln!("pingpong: connection {i} to {} failed: {ev:?}", self.to);
                self.finished = true;
            }
            _ => {}
        }
    }
    fn done(&self) -> bool {
        self.finished
    }
}

// ---- connrate --------------------------------------------------------------------------

/// Connection rate against an echo server: connect, send 64 bytes, half-close, read the echo
/// to end of stream, close; `count` times in a row.
pub struct ConnRate {
    to: SocketAddrV4,
    count: u64,
    done_conns: u64,
    conn: Option<SocketHandle>,
    got: usize,
    start: Option<Instant>,
    buf: Vec<u8>,
    finished: bool,
}

impl ConnRate {
    pub fn new(to: SocketAddrV4, count: u64) -> ConnRate {
        ConnRate { to, count: count.max(1), done_conns: 0, conn: None, got: 0, start: None, buf: vec![0u8; 4096], finished: false }
    }

    fn next(&mut self, now: Instant, stack: &mut Stack) {
        match stack.tcp_connect(now, None, self.to) {
            Ok(h) => {
                self.conn = Some(h);
                self.got = 0;
            }
            Err(e) => {
                eprintln!("connrate: cannot connect to {}: {e}", self.to);
                self.finished = true;
            }
        }
    }
}

impl App for ConnRate {
    fn start(&mut self, now: Instant, stack: &mut Stack) {
        self.start = Some(now);
        self.next(now, stack);
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        if Some(h) != self.conn {
            return;
        }
        match ev {
            SocketEvent::Tcp(Event::Connected) => {
                let _ = stack.tcp_send(now, h, &[0x42; 64]);
                let _ = stack.tcp_shutdown(now, h);
            }
            SocketEvent::Tcp(Event::Readable | Event::PeerClosed) => loop {
                match stack.tcp_recv(now, h, &mut self.buf) {
                    Ok(0) => {
                        let _ = stack.close(now, h);
                        self.conn = None;
                        self.done_conns += 1;
                        if self.done_conns == self.count {
                            let secs = self.start.map(|t| (now - t).as_secs_f64()).unwrap_or(0.0).max(1e-6);
                            println!("connrate: {} connections in {secs:.3} s: {:.0} conn/s", self.done_conns, self.done_conns as f64 / secs);
                            let _ = std::io::stdout().flush();
                            self.finished = true;
                        } else {
                            self.next(now, stack);
                        }
                        return;
                    }
                    Ok(n) => self.got += n,
                    Err(_) => return,
                }
            },
            SocketEvent::Tcp(Event::Reset | Event::TimedOut) => {
                eprintln!("connrate: connection {} failed: {ev:?}", self.done_conns);
                self.finished = true;
            }
            _ => {}
        }
    }
    fn done(&self) -> bool {
        self.finished
    }
}

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
    fn start(&mut self, now: Instant, stack: &mut Stack) {
        self.sources = stack.homes().iter().filter(|h| !h.internal).map(|h| h.addr).collect();
        self.start = Some(now);
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

#[cfg(test)]
mod tests {
    use super::*;
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
            let mut w = World { server: stack(11, S_IP), app: Http::new(80, 100), client: stack(1, C_IP), now: Instant::from_secs(1) };
            w.app = Http::new(80, 100).with_timeouts(std::time::Duration::from_secs(60), std::time::Duration::from_secs(75));
            w.app.start(w.now, &mut w.server);
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
    fn a_request_for_bytes_n_gets_n_bytes() {
        assert_eq!(body_size("get /bytes/1048576 http/1.1\r\nhost: x", 1024), 1 << 20);
        assert_eq!(body_size("get / http/1.1", 1024), 1024);
        assert_eq!(body_size("get /bytes/x http/1.1", 7), 7);
        assert_eq!(body_size("get /bytes/99999999999999 http/1.1", 7), 1 << 30);
        assert_eq!(body_size("", 7), 7);
    }
}
