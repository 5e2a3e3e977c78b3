//! The frame tap: middleware on the frame path between the AF_XDP socket and the stack.
//!
//! - Capture: every frame the stack receives and sends, as a pcap file (tcpdump cannot see
//!   XSK traffic on this kernel: redirected RX and XSK TX bypass it).
//! - Fault injection on receive, seeded: drop, duplicate, corrupt (one byte), delay, reorder.
//!   Delayed frames wait in preallocated slots, so injecting faults allocates nothing per frame.

use std::fs::File;
use std::io::{self, BufWriter};

use stack::pcap::{PcapWriter, LINKTYPE_ETHERNET};
use stack::rand::Rng;
use stack::time::{Duration, Instant};

/// Faults applied to received frames.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Seed of the injector's randomness (the same seed injects the same faults).
    pub seed: u64,
    /// Probability (0 to 1) that a received frame is dropped.
    pub drop: f64,
    /// Probability that a received frame is delivered twice.
    pub duplicate: f64,
    /// Probability that bits of one byte past the Ethernet header of a received frame are
    /// flipped (a damage its checksums must catch).
    pub corrupt: f64,
    /// Probability a frame is held back by `reorder_delay`.
    pub reorder: f64,
    /// How long a reordered frame is held back.
    pub reorder_delay: Duration,
    /// Every frame is held this long.
    pub delay: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            seed: 1,
            drop: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_micros(500),
            delay: Duration::ZERO,
        }
    }
}

impl FaultConfig {
    /// Some fault is configured (otherwise frames pass untouched).
    pub fn is_active(&self) -> bool {
        self.drop > 0.0 || self.duplicate > 0.0 || self.corrupt > 0.0 || self.reorder > 0.0 || self.delay > Duration::ZERO
    }
}

/// Counters of the middleware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Frames dropped.
    pub dropped: u64,
    /// Frames delivered twice.
    pub duplicated: u64,
    /// Frames damaged (bits of one byte flipped).
    pub corrupted: u64,
    /// Frames held back (reordered or delayed).
    pub delayed: u64,
    /// A delayed frame found no free slot and was delivered at once.
    pub delay_overflow: u64,
    /// Frames written to the capture.
    pub captured: u64,
}

const SLOT: usize = 4096;

#[derive(Debug)]
struct Held {
    slots: Box<[u8]>,
    lens: Box<[usize]>,
    due: Box<[Option<Instant>]>,
}

/// What sits between the AF_XDP socket and the stack: pcap capture of every frame in and out,
/// and seeded fault injection on the way in (preallocated hold slots).
#[derive(Debug)]
pub struct FrameTap {
    faults: Option<(FaultConfig, Rng, Held)>,
    capture: Option<PcapWriter<BufWriter<File>>>,
    /// What it did so far.
    pub stats: TapStats,
    scratch: Box<[u8]>,
}

impl FrameTap {
    /// A tap with these faults (`None`: none) capturing to the pcap file `capture`, if given.
    pub fn new(faults: Option<FaultConfig>, capture: Option<&str>) -> io::Result<FrameTap> {
        let capture = match capture {
            Some(path) => Some(PcapWriter::new(BufWriter::with_capacity(1 << 20, File::create(path)?), LINKTYPE_ETHERNET)?),
            None => None,
        };
        let faults = faults.filter(|f| f.is_active()).map(|f| {
            let n = 1024;
            let rng = Rng::new(f.seed);
            (f, rng, Held { slots: vec![0u8; n * SLOT].into_boxed_slice(), lens: vec![0; n].into_boxed_slice(), due: vec![None; n].into_boxed_slice() })
        });
        Ok(FrameTap { faults, capture, stats: TapStats::default(), scratch: vec![0u8; SLOT].into_boxed_slice() })
    }

    /// A passthrough tap: no faults, no capture.
    pub fn plain() -> FrameTap {
        FrameTap { faults: None, capture: None, stats: TapStats::default(), scratch: vec![0u8; SLOT].into_boxed_slice() }
    }

    fn capture(&mut self, now: Instant, frame: &[u8]) {
        if let Some(w) = &mut self.capture {
            if w.write_packet(now, frame).is_ok() {
                self.stats.captured += 1;
            }
        }
    }

    /// A frame arrived from the wire: apply faults, then hand what survives to `deliver`.
    pub fn on_rx(&mut self, now: Instant, frame: &[u8], deliver: &mut dyn FnMut(&[u8])) {
        let Some((cfg, rng, held)) = &mut self.faults else {
            self.capture(now, frame);
            deliver(frame);
            return;
        };
        if rng.chance(cfg.drop) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if rng.chance(cfg.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let n = frame.len().min(SLOT);
        self.scratch[..n].copy_from_slice(&frame[..n]);
        if n > 14 && rng.chance(cfg.corrupt) {
            let i = 14 + rng.below((n - 14) as u64) as usize;
            let mut mask = 0u8;
            while mask == 0 {
                mask = rng.next_u32() as u8;
            }
            self.scratch[i] ^= mask;
            self.stats.corrupted += 1;
        }
        let mut hold = cfg.delay;
        if rng.chance(cfg.reorder) {
            hold = hold + cfg.reorder_delay;
        }
        for _ in 0..copies {
            if hold > Duration::ZERO {
                if let Some(i) = held.due.iter().position(|d| d.is_none()) {
                    held.slots[i * SLOT..i * SLOT + n].copy_from_slice(&self.scratch[..n]);
                    held.lens[i] = n;
                    held.due[i] = Some(now + hold);
                    self.stats.delayed += 1;
                    continue;
                }
                self.stats.delay_overflow += 1;
            }
            let f = &self.scratch[..n];
            if let Some(w) = &mut self.capture {
                if w.write_packet(now, f).is_ok() {
                    self.stats.captured += 1;
                }
            }
            deliver(f);
        }
    }

    /// Deliver held frames whose time has come.
    pub fn release_due(&mut self, now: Instant, deliver: &mut dyn FnMut(&[u8])) {
        let Some((_, _, held)) = &mut self.faults else { return };
        for i in 0..held.due.len() {
            if held.due[i].is_some_and(|t| t <= now) {
                held.due[i] = None;
                let f = &held.slots[i * SLOT..i * SLOT + held.lens[i]];
                if let Some(w) = &mut self.capture {
                    if w.write_packet(now, f).is_ok() {
                        self.stats.captured += 1;
                    }
                }
                deliver(f);
            }
        }
    }

    /// When the next held frame is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.faults.as_ref().and_then(|(_, _, h)| h.due.iter().flatten().min().copied())
    }

    /// The stack sent a frame.
    pub fn on_tx(&mut self, now: Instant, frame: &[u8]) {
        self.capture(now, frame);
    }

    /// Write out what the capture holds (at exit).
    pub fn flush(&mut self) {
        if let Some(w) = &mut self.capture {
            let _ = w.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: u8) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[14] = i;
        f
    }

    #[test]
    fn passthrough() {
        let mut d = FrameTap::plain();
        let mut got = vec![];
        d.on_rx(Instant::ZERO, &frame(1), &mut |f| got.push(f[14]));
        assert_eq!(got, vec![1]);
    }

    #[test]
    fn drop_rate_and_determinism() {
        let run = |seed| {
            let mut d = FrameTap::new(Some(FaultConfig { seed, drop: 0.05, ..FaultConfig::default() }), None).unwrap();
            let mut got = 0;
            for i in 0..10_000u32 {
                d.on_rx(Instant::from_micros(i as u64), &frame(i as u8), &mut |_| got += 1);
            }
            (got, d.stats)
        };
        let (got, stats) = run(3);
        assert!((9_350..=9_650).contains(&got), "{got}");
        assert_eq!(stats.dropped, 10_000 - got);
        assert_eq!(run(3), run(3));
    }

    #[test]
    fn reorder_holds_frames_until_due() {
        let mut d = FrameTap::new(
            Some(FaultConfig { reorder: 1.0, reorder_delay: Duration::from_micros(100), ..FaultConfig::default() }),
            None,
        )
        .unwrap();
        let mut got = vec![];
        d.on_rx(Instant::from_micros(0), &frame(1), &mut |f| got.push(f[14]));
        assert!(got.is_empty());
        assert_eq!(d.next_due(), Some(Instant::from_micros(100)));
        d.release_due(Instant::from_micros(99), &mut |f| got.push(f[14]));
        assert!(got.is_empty());
        d.release_due(Instant::from_micros(100), &mut |f| got.push(f[14]));
        assert_eq!(got, vec![1]);
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn duplicate_and_corrupt() {
        let mut d = FrameTap::new(Some(FaultConfig { duplicate: 1.0, corrupt: 1.0, ..FaultConfig::default() }), None).unwrap();
        let mut got = vec![];
        d.on_rx(Instant::ZERO, &frame(7), &mut |f| got.push(f.to_vec()));
        assert_eq!(got.len(), 2);
        assert_ne!(got[0], frame(7), "one byte changed");
        assert_eq!(got[0][..14], frame(7)[..14], "header intact");
    }
}
