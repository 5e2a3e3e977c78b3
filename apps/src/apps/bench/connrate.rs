//! The connection-rate client.

use std::io::Write;
use std::net::SocketAddrV4;

use poll_loop::runner::App;
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;

// ---- connrate --------------------------------------------------------------------------

/// Connection rate against an echo server: connect, send 64 bytes, half-close, read the echo
/// to end of stream, close; `count` times, `parallel` connections in flight at once (1: one
/// after the other).
pub struct ConnRate {
    to: SocketAddrV4,
    count: u64,
    /// Connections opened so far, and completed.
    opened: u64,
    done_conns: u64,
    /// The connections in flight (at most `parallel`).
    conns: Vec<SocketHandle>,
    parallel: usize,
    start: Option<Instant>,
    buf: Vec<u8>,
    finished: bool,
}

impl ConnRate {
    pub fn new(to: SocketAddrV4, count: u64, parallel: usize) -> ConnRate {
        let parallel = parallel.clamp(1, 4096);
        ConnRate { to, count: count.max(1), opened: 0, done_conns: 0, conns: Vec::with_capacity(parallel), parallel, start: None, buf: vec![0u8; 4096], finished: false }
    }

    /// Open connections until `parallel` are in flight or `count` were opened.
    fn fill(&mut self, now: Instant, stack: &mut Stack) {
        while self.conns.len() < self.parallel && self.opened < self.count && !self.finished {
            match stack.tcp_connect(now, None, self.to) {
                Ok(h) => {
                    self.conns.push(h);
                    self.opened += 1;
                }
                Err(e) => {
                    eprintln!("connrate: cannot connect to {}: {e}", self.to);
                    self.finished = true;
                }
            }
        }
    }

    /// Connection `h` finished; the next ones, or the figure when all are done.
    fn completed(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        self.conns.retain(|&c| c != h);
        self.done_conns += 1;
        if self.done_conns == self.count {
            let secs = self.start.map(|t| (now - t).as_secs_f64()).unwrap_or(0.0).max(1e-6);
            let how = if self.parallel > 1 { format!(" ({} in parallel)", self.parallel) } else { String::new() };
            println!("connrate: {} connections{how} in {secs:.3} s: {:.0} conn/s", self.done_conns, self.done_conns as f64 / secs);
            let _ = std::io::stdout().flush();
            self.finished = true;
        } else {
            self.fill(now, stack);
        }
    }
}

impl App for ConnRate {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        self.start = Some(now);
        self.fill(now, stack);
        Ok(())
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        if !self.conns.contains(&h) {
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
                        self.completed(now, stack, h);
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            },
            SocketEvent::Tcp(Event::Reset | Event::TimedOut) => {
                eprintln!("connrate: a connection failed after {} completed: {ev:?}", self.done_conns);
                self.finished = true;
            }
            _ => {}
        }
    }
    fn done(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::servers::echo::Echo;
    use stack::iface::StackConfig;
    use stack::time::Duration;
    use stack::wire::MacAddr;
    use std::net::Ipv4Addr;

    fn stack(last: u8) -> Stack {
        let mut cfg = StackConfig::new(MacAddr([2, 0, 0, 0, 0, last]));
        cfg.seed = last as u64;
        let mut s = Stack::new(cfg);
        s.add_address(Ipv4Addr::new(198, 18, 0, last), 24, false);
        s
    }

    /// Drive a client stack running `client` against an echo server until the client is done
    /// (at most 20 000 turns of 100 us); the most connections it had in flight at once.
    fn run(client: &mut ConnRate) -> usize {
        let (mut a, mut b) = (stack(1), stack(10));
        let mut echo = Echo::new(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 7));
        let mut now = Instant::ZERO;
        echo.start(now, &mut b).unwrap();
        client.start(now, &mut a).unwrap();
        let (mut frame, mut most) = (vec![0u8; 2048], 0);
        for _ in 0..20_000 {
            for (s, app) in [(&mut a, client as &mut dyn App), (&mut b, &mut echo as &mut dyn App)] {
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                app.poll(now, s);
                while let Some((h, ev)) = s.poll_event() {
                    app.event(now, s, h, ev);
                }
            }
            most = most.max(client.conns.len());
            while let Some(n) = a.poll_transmit(now, &mut frame) {
                b.receive(now, &frame[..n]);
            }
            while let Some(n) = b.poll_transmit(now, &mut frame) {
                a.receive(now, &frame[..n]);
            }
            if client.done() {
                break;
            }
            now += Duration::from_micros(100);
        }
        most
    }

    #[test]
    fn parallel_connections_all_complete_with_at_most_parallel_in_flight() {
        let to = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 7);
        let mut c = ConnRate::new(to, 50, 8);
        let most = run(&mut c);
        assert!(c.done() && c.done_conns == 50 && c.opened == 50, "{} of 50 completed", c.done_conns);
        assert_eq!(most, 8, "8 in flight at once, never more");
        let mut one = ConnRate::new(to, 20, 1);
        assert_eq!(run(&mut one), 1);
        assert_eq!(one.done_conns, 20);
    }
}
