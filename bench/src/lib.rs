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

/// Move every pending frame from `from` to `to` (one direction, one pass). Returns frames moved.
pub fn deliver(from: &mut Stack, to: &mut Stack, now: Instant, buf: &mut [u8]) -> u64 {
    let mut moved = 0;
    while let Some(n) = from.poll_transmit(now, buf) {
        to.receive(now, &buf[..n]);
        moved += 1;
    }
    moved
}

/// The one-line round-trip summary `scripts/bench.sh` parses, from nanosecond samples.
pub fn pingpong_summary(hist: &hdrhistogram::Histogram<u64>, size: usize) -> String {
    let us = |ns: u64| ns as f64 / 1000.0;
    format!(
        "pingpong: {} round trips of {size} bytes: p50 {:.1} us p90 {:.1} us p99 {:.1} us p99.9 {:.1} us max {:.1} us mean {:.1} us",
        hist.len(),
        us(hist.value_at_quantile(0.5)),
        us(hist.value_at_quantile(0.9)),
        us(hist.value_at_quantile(0.99)),
        us(hist.value_at_quantile(0.999)),
        us(hist.max()),
        hist.mean() / 1000.0
    )
}

/// Write HdrHistogram's percentile distribution (`.hgrm`, values in microseconds) of
/// nanosecond samples.
pub fn write_hgrm(path: &str, hist: &hdrhistogram::Histogram<u64>) -> std::io::Result<()> {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in hist.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { "inf".into() };
        let value = v.value_iterated_to() as f64 / 1000.0;
        out.push_str(&format!("{value:12.3} {q:2.12} {:10} {inv:>14}\n", v.count_since_last_iteration()));
    }
    std::fs::write(path, out)
}
