//! Message rings between stacks (the signalling path between members, as XCF is between the
//! systems of a z/OS sysplex): one single-producer single-consumer ring per ordered pair of
//! stacks, in the coupling region.
//!
//! SPSC per pair rather than one multi-producer ring per receiver: a producer that dies
//! between claiming and publishing a slot would block a shared ring for everyone; here it can
//! only stall its own pair, and its successor incarnation simply continues.
//!
//! Protocol (LAYOUT.md, "message rings"): the producer writes the slot's words (Relaxed), then
//! publishes with `tail.store(t + 1, Release)`; the consumer loads `tail` with Acquire, reads
//! the slot, then frees it with `head.store(h + 1, Release)`; the producer loads `head` with
//! Acquire before reusing a slot. Indices grow without wrapping (u64) and are reduced modulo
//! [`RING_SLOTS`]. A consumer that (re)joins skips what is queued (`head = tail`).

use std::sync::atomic::Ordering;

use crate::layout::{RingRow, RING_SLOTS};

/// Payload words per message.
pub const PAYLOAD_WORDS: usize = 7;

/// A message between stacks, as it travels in one [`MessageSlot`](crate::layout::MessageSlot):
/// word 0 is `kind:16 | from_slot:8 | _:8 | from_incarnation:32`, words 1..8 the payload.
/// The ring carries whatever the producer wrote: a receiver validates kind and sender before
/// acting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// What the message says; the kinds are defined by the node's protocol (1: delayed
    /// giveback).
    pub kind: u16,
    /// Slot of the sending stack.
    pub from_slot: u8,
    /// Low 32 bits of the sender's incarnation when it sent the message.
    pub from_incarnation: u32,
    /// Kind-specific payload.
    pub payload: [u64; PAYLOAD_WORDS],
}

impl Message {
    fn head_word(&self) -> u64 {
        self.kind as u64 | (self.from_slot as u64) << 16 | (self.from_incarnation as u64) << 32
    }
}

/// The ring is full: the consumer is behind (or dead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Producer side of one ring. Only one producer per ring may exist (the sending stack).
#[derive(Debug, Clone, Copy)]
pub struct Producer<'a> {
    ring: &'a RingRow,
}

/// Consumer side of one ring. Only one consumer per ring may exist (the receiving stack).
#[derive(Debug, Clone, Copy)]
pub struct Consumer<'a> {
    ring: &'a RingRow,
}

impl<'a> Producer<'a> {
    /// The producer side of `ring`. The caller guarantees it is the ring's only producer:
    /// the stack in the ring's `from` slot.
    pub fn new(ring: &'a RingRow) -> Self {
        Producer { ring }
    }

    /// Append `m`, publishing it to the consumer (Release). `Err(Full)` when [`RING_SLOTS`]
    /// messages are unread; nothing is written then, the message is the caller's to drop or
    /// retry. Never blocks.
    pub fn push(&self, m: &Message) -> Result<(), Full> {
        let tail = self.ring.tail.load(Ordering::Relaxed);
        let head = self.ring.head.load(Ordering::Acquire);
        if tail.wrapping_sub(head) >= RING_SLOTS as u64 {
            return Err(Full);
        }
        let slot = &self.ring.slots[(tail % RING_SLOTS as u64) as usize];
        slot.words[0].store(m.head_word(), Ordering::Relaxed);
        for (w, v) in slot.words[1..].iter().zip(m.payload) {
            w.store(v, Ordering::Relaxed);
        }
        self.ring.tail.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Messages pushed and not yet popped (a snapshot: the consumer may pop meanwhile).
    pub fn len(&self) -> usize {
        self.ring.tail.load(Ordering::Relaxed).wrapping_sub(self.ring.head.load(Ordering::Acquire)) as usize
    }

    /// The consumer has read everything pushed (a snapshot, as [`Producer::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> Consumer<'a> {
    /// The consumer side of `ring`. The caller guarantees it is the ring's only consumer:
    /// the stack in the ring's `to` slot.
    pub fn new(ring: &'a RingRow) -> Self {
        Consumer { ring }
    }

    /// The oldest unread message, freeing its slot; `None` when the ring is empty. A ring whose
    /// indices claim more than [`RING_SLOTS`] unread messages (a corrupt or foreign `tail`)
    /// is emptied instead, and `None` returned: nothing is read from it as a message.
    pub fn pop(&self) -> Option<Message> {
        let head = self.ring.head.load(Ordering::Relaxed);
        let tail = self.ring.tail.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        // A corrupt tail (a producer from a foreign layout) can claim more than a ring holds:
        // drop the backlog rather than read garbage as messages.
        if tail.wrapping_sub(head) > RING_SLOTS as u64 {
            self.ring.head.store(tail, Ordering::Release);
            return None;
        }
        let slot = &self.ring.slots[(head % RING_SLOTS as u64) as usize];
        let w0 = slot.words[0].load(Ordering::Relaxed);
        let mut payload = [0u64; PAYLOAD_WORDS];
        for (p, w) in payload.iter_mut().zip(&slot.words[1..]) {
            *p = w.load(Ordering::Relaxed);
        }
        self.ring.head.store(head.wrapping_add(1), Ordering::Release);
        Some(Message { kind: w0 as u16, from_slot: (w0 >> 16) as u8, from_incarnation: (w0 >> 32) as u32, payload })
    }

    /// Discard everything queued (a consumer's new incarnation does not act on its
    /// predecessor's mail).
    pub fn skip_all(&self) {
        let tail = self.ring.tail.load(Ordering::Acquire);
        self.ring.head.store(tail, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Region;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn msg(i: u64) -> Message {
        Message { kind: (i % 7) as u16, from_slot: (i % 16) as u8, from_incarnation: i as u32, payload: [i, !i, i * 3, 0, 1, 2, i ^ 0x55] }
    }

    proptest! {
        /// Any interleaving of pushes and pops behaves like a bounded FIFO.
        #[test]
        fn behaves_like_a_bounded_fifo(ops in proptest::collection::vec(0u8..3, 0..600), start in any::<u32>()) {
            let region = Region::anonymous("ring", 0);
            let ring = region.ring(1, 2).unwrap();
            // Start the indices anywhere (they only grow; wrap-around must not matter).
            let start = (u64::MAX - 300).wrapping_add(start as u64 % 600);
            ring.head.store(start, Ordering::Relaxed);
            ring.tail.store(start, Ordering::Relaxed);
            let (p, c) = (Producer::new(ring), Consumer::new(ring));
            let mut model = VecDeque::new();
            let mut n = 0u64;
            for op in ops {
                if op < 2 {
                    let m = msg(n);
                    n += 1;
                    let r = p.push(&m);
                    if model.len() < RING_SLOTS {
                        prop_assert_eq!(r, Ok(()));
                        model.push_back(m);
                    } else {
                        prop_assert_eq!(r, Err(Full));
                    }
                } else {
                    prop_assert_eq!(c.pop(), model.pop_front());
                }
                prop_assert_eq!(p.len(), model.len());
            }
        }
    }

    #[test]
    fn skip_all_discards_the_backlog() {
        let region = Region::anonymous("ring", 0);
        let ring = region.ring(0, 1).unwrap();
        let (p, c) = (Producer::new(ring), Consumer::new(ring));
        for i in 0..10 {
            p.push(&msg(i)).unwrap();
        }
        c.skip_all();
        assert_eq!(c.pop(), None);
        p.push(&msg(99)).unwrap();
        assert_eq!(c.pop(), Some(msg(99)));
    }

    #[test]
    fn corrupt_tail_is_dropped_not_read() {
        let region = Region::anonymous("ring", 0);
        let ring = region.ring(0, 1).unwrap();
        ring.tail.store(1 << 50, Ordering::Relaxed);
        let c = Consumer::new(ring);
        assert_eq!(c.pop(), None);
        assert_eq!(ring.head.load(Ordering::Relaxed), 1 << 50);
    }

    /// Two threads, a million messages: every message arrives once, in order, intact.
    #[test]
    #[allow(clippy::disallowed_methods)]
    fn concurrent_producer_and_consumer() {
        let region = std::sync::Arc::new(Region::anonymous("ring", 0));
        const N: u64 = 1_000_000;
        let r2 = region.clone();
        let producer = std::thread::spawn(move || {
            let p = Producer::new(r2.ring(3, 4).unwrap());
            let mut i = 0;
            while i < N {
                if p.push(&msg(i)).is_ok() {
                    i += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let c = Consumer::new(region.ring(3, 4).unwrap());
        let mut next = 0;
        while next < N {
            if let Some(m) = c.pop() {
                assert_eq!(m, msg(next));
                next += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        producer.join().unwrap();
        assert_eq!(c.pop(), None);
    }
}
