//! The one place in plex that reads CLOCK_MONOTONIC, once per poll-loop iteration, converting
//! it to the core's `stack::time::Instant` (microseconds since the clock was created).

// This module exists to read the clock; the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::time::Instant as Mono;

use stack::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Mono,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { origin: Mono::now() }
    }
}

impl Clock {
    pub fn now(&self) -> Instant {
        let d = self.origin.elapsed();
        // Not as_micros(): that goes through u128 arithmetic, once per loop turn.
        Instant::from_micros(d.as_secs() * 1_000_000 + d.subsec_micros() as u64)
    }
    /// The std instant for a core instant (for sleeping until a deadline).
    pub fn to_std(&self, t: Instant) -> Mono {
        self.origin + std::time::Duration::from_micros(t.total_micros())
    }
}
