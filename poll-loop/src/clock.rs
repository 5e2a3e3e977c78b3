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
        Instant::from_micros(self.origin.elapsed().as_micros() as u64)
    }
    /// The std instant for a core instant (for sleeping until a deadline).
    pub fn to_std(&self, t: Instant) -> Mono {
        self.origin + std::time::Duration::from_micros(t.total_micros())
    }
}
