//! A bounded queue of ready-made frames in preallocated slots, for what the interface answers
//! by itself (ARP, ICMP, RSTs for closed ports, SYN-cookie SYN-ACKs, UDP datagrams). Building
//! the frame when the cause is known avoids keeping the cause around; the slots are allocated
//! once, so queueing allocates nothing.

/// Ready-made frames, oldest first, in `slots` slots of `slot_size` bytes each.
#[derive(Debug, Clone)]
pub struct FrameQueue {
    slots: Box<[u8]>,
    lens: Box<[usize]>,
    slot_size: usize,
    head: usize,
    count: usize,
}

impl FrameQueue {
    /// `slots` slots of `slot_size` bytes, allocated now.
    pub fn new(slots: usize, slot_size: usize) -> FrameQueue {
        FrameQueue {
            slots: vec![0u8; slots * slot_size].into_boxed_slice(),
            lens: vec![0usize; slots].into_boxed_slice(),
            slot_size,
            head: 0,
            count: 0,
        }
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.count
    }
    /// No frame queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Free slots.
    pub fn free(&self) -> usize {
        self.lens.len() - self.count
    }
    /// The largest frame a slot holds, in bytes.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Build a frame of at most `slot_size` bytes in the next free slot: `build` returns the
    /// length it wrote, or `None` to cancel. Returns false when the queue is full.
    pub fn push_with(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        let n = self.lens.len();
        if self.count == n {
            return false;
        }
        let i = (self.head + self.count) % n;
        let slot = &mut self.slots[i * self.slot_size..(i + 1) * self.slot_size];
        match build(slot) {
            Some(len) if len <= self.slot_size => {
                self.lens[i] = len;
                self.count += 1;
            }
            _ => {}
        }
        true
    }

    /// Copy the oldest frame into `out`; returns its length.
    pub fn pop_into(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.count == 0 {
            return None;
        }
        let i = self.head;
        let len = self.lens[i].min(out.len());
        out[..len].copy_from_slice(&self.slots[i * self.slot_size..i * self.slot_size + len]);
        self.head = (self.head + 1) % self.lens.len();
        self.count -= 1;
        Some(len)
    }
}

impl FrameQueue {
    /// Keep only the frames `keep` accepts, in order (no allocation: kept frames slide down).
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let n = self.lens.len();
        let mut kept = 0;
        for k in 0..self.count {
            let src = (self.head + k) % n;
            let len = self.lens[src];
            let frame = &self.slots[src * self.slot_size..src * self.slot_size + len];
            if keep(frame) {
                let dst = (self.head + kept) % n;
                if dst != src {
                    self.slots.copy_within(src * self.slot_size..src * self.slot_size + len, dst * self.slot_size);
                    self.lens[dst] = len;
                }
                kept += 1;
            }
        }
        self.count = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_keeps_order_and_frees_slots() {
        let mut q = FrameQueue::new(4, 8);
        // Wrap around first.
        q.push_with(|b| { b[0] = 0; Some(1) });
        let mut out = [0u8; 8];
        q.pop_into(&mut out);
        for v in 1..=4u8 {
            assert!(q.push_with(|b| { b[0] = v; Some(1) }));
        }
        q.retain(|f| f[0] % 2 == 0);
        assert_eq!(q.len(), 2);
        assert!(q.push_with(|b| { b[0] = 6; Some(1) }));
        let mut got = Vec::new();
        while q.pop_into(&mut out).is_some() {
            got.push(out[0]);
        }
        assert_eq!(got, vec![2, 4, 6]);
    }

    #[test]
    fn fifo_and_bounded() {
        let mut q = FrameQueue::new(2, 16);
        assert!(q.push_with(|b| {
            b[..3].copy_from_slice(b"one");
            Some(3)
        }));
        assert!(q.push_with(|b| {
            b[..3].copy_from_slice(b"two");
            Some(3)
        }));
        assert!(!q.push_with(|_| Some(1)), "full");
        let mut out = [0u8; 16];
        assert_eq!(q.pop_into(&mut out), Some(3));
        assert_eq!(&out[..3], b"one");
        assert!(q.push_with(|_| None), "cancelled build uses no slot");
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_into(&mut out), Some(3));
        assert_eq!(&out[..3], b"two");
        assert_eq!(q.pop_into(&mut out), None);
    }
}
