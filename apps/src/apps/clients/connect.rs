//! The connect client: a TCP connection between stdin/stdout and a server.

use std::io::Write;
use std::net::SocketAddrV4;

use poll_loop::runner::App;
use stack::iface::{ApiError, SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;



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
    // The stdin reader is an application thread, not a poll thread: clippy.toml's thread rule
    // is for the sans-IO core.
    #[allow(clippy::disallowed_methods)]
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
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        match stack.tcp_connect(now, None, self.to) {
            Ok(h) => self.conn = Some(h),
            Err(e) => {
                eprintln!("connect: {}: {e}", self.to);
                self.finished = true;
            }
        }
        Ok(())
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
