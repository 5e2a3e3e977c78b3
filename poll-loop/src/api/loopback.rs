//! Two stacks joined by an in-memory wire, each serving the blocking API through its
//! [`Bridge`], driven by one thread: for tests and benchmarks of the blocking API without a
//! NIC. The driver plays both poll threads; it never blocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use stack::iface::Stack;
use stack::time::Instant;

use super::Bridge;
use crate::runner::App;

/// Two stacks, their bridges, and the wire between them.
#[derive(Debug)]
pub struct Loopback {
    sides: [(Stack, Bridge); 2],
    frame: Vec<u8>,
}

impl Loopback {
    /// Join stack `a` (served by `bridge_a`) and stack `b` (served by `bridge_b`). The two
    /// must be on one subnet (they find each other by ARP).
    pub fn new(a: Stack, bridge_a: Bridge, b: Stack, bridge_b: Bridge) -> Loopback {
        Loopback { sides: [(a, bridge_a), (b, bridge_b)], frame: vec![0u8; 2048] }
    }

    /// One turn of both poll loops at `now`: commands, events, timers, and every frame moved
    /// across until both are quiet. Whether anything happened.
    pub fn turn(&mut self, now: Instant) -> bool {
        let mut busy = false;
        for (stack, bridge) in &mut self.sides {
            if stack.poll_timeout().is_some_and(|t| t <= now) {
                stack.handle_timeout(now);
            }
            while let Some((h, ev)) = stack.poll_event() {
                bridge.event(now, stack, h, ev);
                busy = true;
            }
            busy |= bridge.poll(now, stack);
            while let Some((h, ev)) = stack.poll_event() {
                bridge.event(now, stack, h, ev);
            }
        }
        let [(a, _), (b, _)] = &mut self.sides;
        loop {
            let mut any = false;
            while let Some(n) = a.poll_transmit(now, &mut self.frame) {
                b.receive(now, &self.frame[..n]);
                any = true;
            }
            while let Some(n) = b.poll_transmit(now, &mut self.frame) {
                a.receive(now, &self.frame[..n]);
                any = true;
            }
            if !any {
                break;
            }
            busy = true;
        }
        busy
    }

    /// The stacks, `a` then `b`.
    pub fn stacks(&self) -> (&Stack, &Stack) {
        (&self.sides[0].0, &self.sides[1].0)
    }

    /// Run both poll loops on a thread of their own until the returned [`Driver`] is stopped
    /// or dropped.
    pub fn spawn(mut self) -> std::io::Result<Driver> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::Builder::new().name("plex-loopback".into()).spawn(move || {
            let clock = crate::clock::Clock::default();
            while !s.load(Ordering::Relaxed) {
                if !self.turn(clock.now()) {
                    thread::yield_now();
                }
            }
        })?;
        Ok(Driver { stop, thread: Some(thread) })
    }
}

/// The thread running a [`Loopback`] ([`Loopback::spawn`]).
#[derive(Debug)]
pub struct Driver {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Driver {
    /// Stop the loops and wait for the thread: the bridges are dropped, as when poll threads
    /// end (blocked calls return `ConnectionAborted`).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}
