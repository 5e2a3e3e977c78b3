//! The connection-rate client.

use std::io::Write;
use std::net::SocketAddrV4;

use poll_loop::runner::App;
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;



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
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        self.start = Some(now);
        self.next(now, stack);
        Ok(())
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
