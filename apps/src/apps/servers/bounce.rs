//! The handoff benchmark's application: an echo server whose connections move between two
//! stacks without end. Every stack of the pair runs it with the other as `--peer`; each moves
//! every connection it holds to the peer as soon as it has it (after echoing what is there),
//! until `--transfers` have been made from this stack. Clients keep traffic flowing both ways
//! (ping-pong), so records carry data in flight. The stack that installs a connection measures
//! the time from the source's freeze (its snapshot) to the installed connection, ready to send
//! (CLOCK_MONOTONIC, comparable between the processes), into an HdrHistogram printed at exit.

use std::collections::HashSet;
use std::net::SocketAddrV4;

use poll_loop::handoff::{TransferDecision, TransferOffer, TransferOutcome};
use poll_loop::runner::App;
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;

use crate::apps::{accept_all, listen};

/// See the module documentation.
pub struct Bounce {
    addr: SocketAddrV4,
    peer: String,
    limit: u64,
    listener: Option<SocketHandle>,
    conns: HashSet<SocketHandle>,
    pending: Vec<SocketHandle>,
    started: u64,
    accepted: u64,
    returned: u64,
    hist: hdrhistogram::Histogram<u64>,
    buf: Vec<u8>,
}

impl Bounce {
    /// Echo on `addr` and move every connection to `peer`, `limit` times at most.
    pub fn new(addr: SocketAddrV4, peer: &str, limit: u64) -> Bounce {
        Bounce {
            addr,
            peer: peer.to_string(),
            limit,
            listener: None,
            conns: HashSet::new(),
            pending: Vec::new(),
            started: 0,
            accepted: 0,
            returned: 0,
            hist: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
            buf: vec![0u8; 64 * 1024],
        }
    }

    fn echo(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        while let Ok(n) = stack.tcp_recv(now, h, &mut self.buf) {
            if n == 0 {
                let _ = stack.close(now, h);
                self.conns.remove(&h);
                return;
            }
            let _ = stack.tcp_send(now, h, &self.buf[..n]);
        }
    }
}

impl App for Bounce {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        self.listener = Some(listen(now, stack, self.addr)?);
        Ok(())
    }

    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        if Some(h) == self.listener {
            let mut new = Vec::new();
            accept_all(stack, h, |c| new.push(c));
            for c in new {
                self.conns.insert(c);
                self.pending.push(c);
            }
            return;
        }
        match ev {
            SocketEvent::Tcp(Event::Readable) if self.conns.contains(&h) => self.echo(now, stack, h),
            SocketEvent::Tcp(Event::Closed) if self.conns.remove(&h) => {
                let _ = stack.close(now, h);
            }
            _ => {}
        }
    }

    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        let mut did = false;
        for h in std::mem::take(&mut self.pending) {
            if !self.conns.contains(&h) {
                continue;
            }
            if self.started >= self.limit {
                continue;
            }
            self.echo(now, stack, h);
            if !self.conns.contains(&h) {
                continue;
            }
            match poll_loop::handoff::transfer(stack, now, h, &self.peer, b"", true) {
                Ok(_) => {
                    self.conns.remove(&h);
                    self.started += 1;
                    did = true;
                }
                Err(poll_loop::handoff::TransferError::Offer { restored: Some(nh), .. }) => {
                    // Not now (no free record slot, the peer not up yet): later.
                    self.conns.remove(&h);
                    self.conns.insert(nh);
                    self.pending.push(nh);
                }
                Err(_) => {
                    // Not movable right now (e.g. still in the handshake): try again later.
                    self.pending.push(h);
                }
            }
        }
        for l in poll_loop::handoff::take_latencies(stack) {
            let _ = self.hist.record(l.max(1));
        }
        did
    }

    fn transfer_offer(&mut self, _now: Instant, _stack: &mut Stack, _offer: &TransferOffer) -> TransferDecision {
        TransferDecision::Accept
    }

    fn transferred(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, _app_state: &[u8]) {
        self.accepted += 1;
        self.conns.insert(h);
        self.echo(now, stack, h);
        self.pending.push(h);
    }

    fn transfer_done(&mut self, _now: Instant, _stack: &mut Stack, _id: coupling::handoff::TransferId, outcome: TransferOutcome) {
        if let TransferOutcome::Rejected { handle: Some(h), .. } | TransferOutcome::Aborted { handle: Some(h) } = outcome {
            self.returned += 1;
            self.conns.insert(h);
            self.pending.push(h);
        }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        let h = &self.hist;
        let us = |v: u64| v as f64 / 1000.0;
        println!(
            "bounce: moved away {} connections, took {} ({} came back); handoff latency (freeze to installed, here) n={} p50 {:.1} us p90 {:.1} us p99 {:.1} us max {:.1} us",
            self.started,
            self.accepted,
            self.returned,
            h.len(),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.9)),
            us(h.value_at_quantile(0.99)),
            us(h.max())
        );
    }
}
