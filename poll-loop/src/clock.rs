//! The one place in plex that reads CLOCK_MONOTONIC, once per poll-loop iteration, converting
//! it to the core's `stack::time::Instant` (microseconds since the clock was created) and, for
//! the coupling region, to absolute CLOCK_MONOTONIC nanoseconds (comparable between the
//! processes of a cluster).

use rustix::time::{clock_gettime, ClockId};
use stack::time::Instant;

// The one clock read of plex outside bench (clippy.toml's disallowed-methods names
// clock_gettime and Instant::now for every other function).
#[allow(clippy::disallowed_methods)]
fn mono_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The poll loop's clock: CLOCK_MONOTONIC read as a `stack::time::Instant` (the only clock
/// read of the data path; copy it freely, every copy reads the same clock).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_ns: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { origin_ns: mono_ns() }
    }
}

impl Clock {
    /// The current time.
    pub fn now(&self) -> Instant {
        Instant::from_micros((mono_ns() - self.origin_ns) / 1000)
    }
    /// CLOCK_MONOTONIC nanoseconds of a core instant (the coupling region's time).
    pub fn mono_ns(&self, t: Instant) -> u64 {
        self.origin_ns + t.total_micros() * 1000
    }
    /// The core instant of CLOCK_MONOTONIC nanoseconds (zero if before the clock's origin).
    pub fn instant_of(&self, ns: u64) -> Instant {
        Instant::from_micros(ns.saturating_sub(self.origin_ns) / 1000)
    }
    /// CLOCK_MONOTONIC nanoseconds, read now.
    pub fn read_mono_ns() -> u64 {
        mono_ns()
    }
}
