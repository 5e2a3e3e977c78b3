//! Time as data. The core never reads a clock: every entry point takes `now: Instant`.
//!
//! `Instant` is microseconds since an arbitrary epoch chosen by the driver (the poll loop reads
//! CLOCK_MONOTONIC once per iteration; the simulator starts at zero and jumps to the next event).

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

/// A point in time, in microseconds since the driver's epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    micros: u64,
}

/// A span of time, in microseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    micros: u64,
}

impl Instant {
    /// The driver's epoch.
    pub const ZERO: Instant = Instant { micros: 0 };
    /// The latest representable instant: a deadline that never comes.
    pub const MAX: Instant = Instant { micros: u64::MAX };

    /// `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Instant { micros }
    }
    /// `millis` milliseconds after the epoch (overflows past about 584 000 years).
    pub const fn from_millis(millis: u64) -> Self {
        Instant { micros: millis * 1000 }
    }
    /// `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Instant { micros: secs * 1_000_000 }
    }
    /// Microseconds since the epoch.
    pub const fn total_micros(self) -> u64 {
        self.micros
    }
    /// Milliseconds since the epoch, rounded down.
    pub const fn total_millis(self) -> u64 {
        self.micros / 1000
    }
    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration { micros: self.micros.saturating_sub(earlier.micros) }
    }
    /// `d` earlier, clamped at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Instant {
        Instant { micros: self.micros.saturating_sub(d.micros) }
    }
}

impl Duration {
    /// No time at all.
    pub const ZERO: Duration = Duration { micros: 0 };
    /// The longest representable span: a timeout that never fires.
    pub const MAX: Duration = Duration { micros: u64::MAX };

    /// `micros` microseconds.
    pub const fn from_micros(micros: u64) -> Self {
        Duration { micros }
    }
    /// `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Duration { micros: millis * 1000 }
    }
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration { micros: secs * 1_000_000 }
    }
    /// The span in microseconds.
    pub const fn total_micros(self) -> u64 {
        self.micros
    }
    /// The span in milliseconds, rounded down.
    pub const fn total_millis(self) -> u64 {
        self.micros / 1000
    }
    /// The span in seconds, as a float.
    pub fn as_secs_f64(self) -> f64 {
        self.micros as f64 / 1e6
    }
    /// A span of `s` seconds, truncated to whole microseconds; negative values (and NaN) give zero,
    /// values past `u64::MAX` microseconds saturate.
    pub fn from_secs_f64(s: f64) -> Self {
        Duration { micros: (s.max(0.0) * 1e6) as u64 }
    }
    /// `n` times the span, saturating at [`Duration::MAX`].
    pub fn saturating_mul(self, n: u32) -> Duration {
        Duration { micros: self.micros.saturating_mul(n as u64) }
    }
    /// The span minus `o`, zero if `o` is longer.
    pub fn saturating_sub(self, o: Duration) -> Duration {
        Duration { micros: self.micros.saturating_sub(o.micros) }
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant { micros: self.micros.saturating_add(d.micros) }
    }
}
impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}
impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturating: never panics on a clock that appears to go backwards.
    fn sub(self, o: Instant) -> Duration {
        self.saturating_since(o)
    }
}
impl Add for Duration {
    type Output = Duration;
    fn add(self, o: Duration) -> Duration {
        Duration { micros: self.micros.saturating_add(o.micros) }
    }
}
impl Sub for Duration {
    type Output = Duration;
    fn sub(self, o: Duration) -> Duration {
        self.saturating_sub(o)
    }
}
impl From<core::time::Duration> for Duration {
    fn from(d: core::time::Duration) -> Self {
        Duration { micros: d.as_micros().min(u64::MAX as u128) as u64 }
    }
}
impl From<Duration> for core::time::Duration {
    fn from(d: Duration) -> Self {
        core::time::Duration::from_micros(d.micros)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.micros / 1_000_000, self.micros % 1_000_000)
    }
}
impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.micros >= 1_000_000 {
            write!(f, "{}.{:03}s", self.micros / 1_000_000, (self.micros % 1_000_000) / 1000)
        } else if self.micros >= 1000 {
            write!(f, "{}.{:03}ms", self.micros / 1000, self.micros % 1000)
        } else {
            write!(f, "{}us", self.micros)
        }
    }
}
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let a = Instant::from_millis(5);
        let b = Instant::from_millis(7);
        assert_eq!(b - a, Duration::from_millis(2));
        assert_eq!(a - b, Duration::ZERO);
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
    }

    #[test]
    fn formats() {
        assert_eq!(format!("{:?}", Duration::from_micros(1500)), "1.500ms");
        assert_eq!(format!("{:?}", Instant::from_micros(2_000_001)), "2.000001s");
    }
}
