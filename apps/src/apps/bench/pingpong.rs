//! The ping-pong round-trip latency client.

use std::io::Write;
use std::net::SocketAddrV4;

use poll_loop::clock::Clock;
use poll_loop::runner::App;
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;

use crate::apps::percentile_distribution;

// ---- pingpong --------------------------------------------------------------------------

/// One connection of the ping-pong client.
struct PingConn {
    h: SocketHandle,
    sent_at: Option<u64>,
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
    measure_start: Option<u64>,
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
    fn send(&mut self, now: Instant, stack: &mut Stack, i: usize, t: u64) {
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


impl App for PingPong {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
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
                    return Ok(());
                }
            }
        }
        Ok(())
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        let Some(i) = self.index.get(h.index() as usize).copied().flatten().filter(|&i| self.conns[i].h == h) else { return };
        if self.finished {
            return;
        }
        match ev {
            SocketEvent::Tcp(Event::Connected) => {
                self.connected += 1;
                self.send(now, stack, i, Clock::read_mono_ns());
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
                let t = Clock::read_mono_ns();
                if let Some(t0) = c.sent_at.take() {
                    if self.done_rounds >= self.warmup {
                        let _ = self.hist.record(t.saturating_sub(t0).max(1));
                    }
                }
                self.done_rounds += 1;
                if self.done_rounds == self.warmup {
                    self.measure_start = Some(t);
                }
                if self.done_rounds >= self.warmup + self.count {
                    self.elapsed_ns = self.measure_start.map(|t| Clock::read_mono_ns().saturating_sub(t)).unwrap_or(0);
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
