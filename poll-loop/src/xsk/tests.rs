//! The frame engine against a fake kernel: every frame is always in exactly one place, none is
//! ever handed to the kernel twice, and bytes go through intact.

use super::*;
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Fill,
    Rx,
    Tx,
    Comp,
}

/// A fake kernel with bounded rings and frame memory.
struct Fake {
    frame_size: usize,
    mem: Vec<u8>,
    lens: HashMap<u64, usize>,
    fill: VecDeque<u64>,
    rx: VecDeque<u64>,
    tx: VecDeque<u64>,
    comp: VecDeque<u64>,
    ring: usize,
    place: HashMap<u64, Place>,
    sent: Vec<Vec<u8>>,
    kicks: u64,
}

impl Fake {
    fn new(frames: usize, frame_size: usize, ring: usize) -> Fake {
        Fake {
            frame_size,
            mem: vec![0; frames * frame_size],
            lens: HashMap::new(),
            fill: VecDeque::new(),
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            comp: VecDeque::new(),
            ring,
            place: HashMap::new(),
            sent: Vec::new(),
            kicks: 0,
        }
    }
    fn take(&mut self, addr: u64, to: Place) {
        assert!(!self.place.contains_key(&addr), "frame {addr} handed to the kernel twice");
        self.place.insert(addr, to);
    }
    /// A frame arrives from the wire: it needs a fill-ring frame.
    fn deliver(&mut self, data: &[u8]) -> bool {
        if self.rx.len() >= self.ring {
            return false;
        }
        let Some(addr) = self.fill.pop_front() else { return false };
        let off = addr as usize;
        self.mem[off..off + data.len()].copy_from_slice(data);
        self.lens.insert(addr, data.len());
        self.place.insert(addr, Place::Rx);
        self.rx.push_back(addr);
        true
    }
    /// The kernel sends what is on the TX ring.
    fn transmit(&mut self, max: usize) {
        for _ in 0..max {
            if self.comp.len() >= self.ring {
                break;
            }
            let Some(addr) = self.tx.pop_front() else { break };
            let off = addr as usize;
            self.sent.push(self.mem[off..off + self.lens[&addr]].to_vec());
            self.place.insert(addr, Place::Comp);
            self.comp.push_back(addr);
        }
    }
}

impl Rings for Fake {
    type Desc = u64;
    fn fill_free(&mut self, want: u32) -> u32 {
        (self.ring - self.fill.len()).min(want as usize) as u32
    }
    fn fill_produce(&mut self, descs: &[u64]) {
        assert!(self.fill.len() + descs.len() <= self.ring, "fill ring overrun");
        for &d in descs {
            self.take(d, Place::Fill);
            self.fill.push_back(d);
        }
    }
    fn rx_consume(&mut self, out: &mut [u64]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(a) = self.rx.pop_front() else { break };
            assert_eq!(self.place.get(&a), Some(&Place::Rx));
            self.place.remove(&a);
            out[n] = a;
            n += 1;
        }
        n
    }
    fn tx_free(&mut self, want: u32) -> u32 {
        (self.ring - self.tx.len()).min(want as usize) as u32
    }
    fn tx_produce(&mut self, descs: &[u64]) {
        assert!(self.tx.len() + descs.len() <= self.ring, "tx ring overrun");
        for &d in descs {
            self.take(d, Place::Tx);
            self.tx.push_back(d);
        }
    }
    fn comp_consume(&mut self, out: &mut [u64]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(a) = self.comp.pop_front() else { break };
            self.place.remove(&a);
            out[n] = a;
            n += 1;
        }
        n
    }
    fn read(&self, d: &u64, f: &mut dyn FnMut(&[u8])) {
        assert!(!self.place.contains_key(d), "reading a frame the kernel owns");
        let off = *d as usize;
        f(&self.mem[off..off + self.lens[d]])
    }
    fn write(&mut self, d: &mut u64, f: &mut dyn FnMut(&mut [u8]) -> Option<usize>) -> Option<usize> {
        assert!(!self.place.contains_key(d), "writing a frame the kernel owns");
        let off = *d as usize;
        let n = f(&mut self.mem[off..off + self.frame_size])?;
        self.lens.insert(*d, n);
        Some(n)
    }
    fn tx_needs_kick(&self) -> bool {
        true
    }
    fn tx_kick(&mut self) -> io::Result<()> {
        self.kicks += 1;
        Ok(())
    }
    fn fill_needs_kick(&self) -> bool {
        false
    }
}

fn engine(frames: usize, ring: usize) -> FrameEngine<Fake> {
    let fs = 256;
    let descs: Vec<u64> = (0..frames as u64).map(|i| i * fs as u64).collect();
    FrameEngine::new(Fake::new(frames, fs, ring), descs, frames / 2, 16)
}

#[test]
fn fill_ring_is_primed_to_the_rx_quota() {
    let e = engine(64, 128);
    assert_eq!(e.in_fill(), 32);
    assert_eq!(e.free_frames(), 32);
    assert!(e.accounted());
}

#[test]
fn receive_and_recycle() {
    let mut e = engine(64, 128);
    for i in 0..20u8 {
        assert!(e.rings.deliver(&[i; 60]));
    }
    let mut got = Vec::new();
    let n = e.rx_batch(8, |f| got.push(f.to_vec()));
    assert_eq!(n, 8, "bounded by the batch");
    e.rx_batch(64, |f| got.push(f.to_vec()));
    assert_eq!(got.len(), 20);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f, &vec![i as u8; 60]);
    }
    assert_eq!(e.in_fill(), 32, "refilled");
    assert!(e.accounted());
}

#[test]
fn transmit_reaps_completions_and_kicks() {
    let mut e = engine(64, 128);
    let mut k = 0u8;
    let n = e.tx_batch(8, |buf| {
        k += 1;
        buf[..3].copy_from_slice(&[k, k, k]);
        Some(3)
    });
    assert_eq!(n, 8);
    assert_eq!(e.in_tx(), 8);
    assert_eq!(e.rings.kicks, 1);
    e.rings.transmit(100);
    assert_eq!(e.rings.sent.len(), 8);
    assert_eq!(e.rings.sent[7], vec![8, 8, 8]);
    assert_eq!(e.reap(), 8);
    assert_eq!(e.in_tx(), 0);
    assert!(e.accounted());
    // `None` stops the batch and returns the frame.
    let free = e.free_frames();
    assert_eq!(e.tx_batch(8, |_| None), 0);
    assert_eq!(e.free_frames(), free);
}

#[test]
fn the_fill_ring_is_topped_up_in_batches() {
    // Quota 32: topped up once 4 frames are missing.
    let mut e = engine(64, 128);
    e.rings.deliver(&[1; 60]);
    e.rx_batch(8, |_| {});
    assert_eq!(e.in_fill(), 31, "one frame missing: not yet");
    for _ in 0..3 {
        e.rings.deliver(&[1; 60]);
    }
    e.rx_batch(8, |_| {});
    assert_eq!(e.in_fill(), 32, "four missing: topped up");
    assert!(e.accounted());
}

#[test]
fn fill_queues_batches_and_one_kick_sends_them() {
    let mut e = engine(64, 128);
    for _ in 0..3 {
        assert_eq!(e.tx_fill(4, |b| {
            b[0] = 9;
            Some(1)
        }), 4);
    }
    assert_eq!(e.rings.kicks, 0, "tx_fill never kicks");
    assert_eq!(e.in_tx(), 12);
    e.kick_if_needed();
    assert_eq!(e.rings.kicks, 1);
    e.rings.transmit(100);
    assert_eq!(e.rings.sent.len(), 12);
    assert_eq!(e.reap(), 12);
    assert!(e.accounted());
}

#[test]
fn running_out_of_frames_is_counted_not_fatal() {
    let mut e = engine(8, 128);
    // 4 frames in fill, 4 free: a 10-frame burst gets 4.
    assert_eq!(e.tx_batch(10, |b| {
        b[0] = 1;
        Some(1)
    }), 4);
    assert_eq!(e.stats.tx_no_frame, 1);
    assert!(e.accounted());
}

#[test]
fn random_operations_never_leak_or_double_use() {
    let mut e = engine(128, 32);
    let mut rng = stack::rand::Rng::new(42);
    let mut seq = 0u32;
    let mut received = 0u32;
    let mut sent_seq = 0u32;
    for _ in 0..20_000 {
        match rng.below(5) {
            0 => {
                for _ in 0..rng.below(40) {
                    if e.rings.deliver(&seq.to_be_bytes()) {
                        seq += 1;
                    }
                }
            }
            1 => {
                e.rx_batch(rng.below(64) as usize, |f| {
                    assert_eq!(u32::from_be_bytes([f[0], f[1], f[2], f[3]]), received, "in order, intact");
                    received += 1;
                });
            }
            2 => {
                let want = rng.below(40) as usize;
                e.tx_batch(want, |b| {
                    b[..4].copy_from_slice(&sent_seq.to_be_bytes());
                    sent_seq += 1;
                    Some(4)
                });
            }
            3 => e.rings.transmit(rng.below(40) as usize),
            _ => {
                e.reap();
            }
        }
        assert!(e.accounted(), "free {} + fill {} + tx {}", e.free_frames(), e.in_fill(), e.in_tx());
    }
    // Drain everything: all frames come home.
    while e.rx_batch(64, |_| received += 1) > 0 {}
    e.rings.transmit(usize::MAX);
    while e.reap() > 0 {}
    assert_eq!(e.in_tx(), 0);
    assert_eq!(e.free_frames() + e.in_fill(), 128);
    for (i, f) in e.rings.sent.iter().enumerate() {
        assert_eq!(f, &(i as u32).to_be_bytes().to_vec());
    }
    assert!(received > 1000 && sent_seq > 1000);
}
