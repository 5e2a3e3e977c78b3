//! # plex benchmark programs
//!
//! Benchmarks are programs that print figures, never timed tests (the machine is shared and
//! noisy; compare ratios measured in the same run).
//!
//! - `plex-bench-core`: the TCP/IP core alone, two stacks joined in memory: bulk segments per
//!   second and ping-pong round trips per second, with the cost per segment in nanoseconds.

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::time::Instant as WallClock;

use stack::iface::Stack;
use stack::time::Instant;

/// Wall-clock time as the core's `Instant` (benchmarks may read the clock; the core may not).
pub struct Clock {
    start: WallClock,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { start: WallClock::now() }
    }
}

impl Clock {
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as u64)
    }
}

/// Move every pending frame from `a` to `b` and back until both are quiet. Returns frames moved.
pub fn exchange(a: &mut Stack, b: &mut Stack, now: Instant, buf: &mut [u8]) -> u64 {
    let mut moved = 0;
    loop {
        let mut any = false;
        while let Some(n) = a.poll_transmit(now, buf) {
            b.receive(now, &buf[..n]);
            moved += 1;
            any = true;
        }
        while let Some(n) = b.poll_transmit(now, buf) {
            a.receive(now, &buf[..n]);
            moved += 1;
            any = true;
        }
        if !any {
            return moved;
        }
    }
}
