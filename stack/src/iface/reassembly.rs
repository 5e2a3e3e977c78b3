//! IPv4 reassembly (RFC 791 3.2, RFC 815, RFC 1122 3.3.2).
//!
//! A datagram in reassembly is keyed by (source, destination, protocol, identification)
//! (RFC 791 3.2). Fragments may arrive in any order; a datagram is delivered when its final
//! fragment (MF clear) has fixed the total length and every byte below it has arrived.
//!
//! ## Memory: one preallocated pool, no allocation per fragment or per datagram
//!
//! Everything is allocated when the stack is created, sized by the configuration:
//!
//! - a pool of `mem_limit / CHUNK` chunks of [`CHUNK`] bytes (the memory limit, Linux's
//!   `ipfrag_high_thresh`, 4 MiB by default). A datagram takes the chunks its fragments touch,
//!   indexed by offset (at most [`CHUNKS_PER_DATAGRAM`]), so memory is counted exactly and a
//!   small datagram holds little;
//! - `max_datagrams` slots, each with two bitmaps of 8-octet blocks (RFC 815 keeps a hole list;
//!   a bitmap has no list to corrupt and answers "is this range free?" word by word):
//!   `covered` (bytes received) and `starts` (where a received fragment began), 2 KiB a slot;
//! - one contiguous output buffer of [`MAX_PAYLOAD`] bytes into which a complete datagram is
//!   copied for delivery (the chunks return to the pool at once);
//! - the key map is created with room for every slot.
//!
//! A fragment that would *start* a datagram is refused (`ip_frag_mem_limit`) when no slot is
//! free or when the pool would fall below a quarter free: like Linux, the limit gates new
//! datagrams, and the last quarter is kept for datagrams already in progress, so a flood of
//! partial datagrams cannot starve them (`flood_of_partial_datagrams_spares_the_others`). If
//! the pool is exhausted anyway, the datagram that needed memory is discarded.
//!
//! What a flood can still do: fill every slot (256 by default) with partial datagrams, after
//! which new datagrams are refused until those time out (30 s). Linux has the same property at
//! its memory threshold (some 2000 fragments at 4 MiB); raise `max_datagrams` (2 KiB of bitmap
//! each, allocated up front) to push it further.
//!
//! ## What is dropped
//!
//! - a fragment with no payload, or a non-final one whose length is not a multiple of 8
//!   (RFC 791 3.2: all but the last fragment carry a multiple of 8 octets): `ip_frag_bad_length`;
//! - a fragment reaching beyond 65 535 octets of datagram (the Total Length field; the "ping of
//!   death"): `ip_frag_too_big`;
//! - a second final fragment with another end, a final fragment below data already received,
//!   a fragment beyond a known end: the datagram is discarded (`ip_frag_bad_end`, as Linux);
//! - an overlap: RFC 5722 section 4 (applied to IPv4, as Linux does; RFC 1122 3.3.2 still
//!   pictured overlapping retransmissions being copied in, which is how overlap attacks
//!   work, so this follows the later rule): the whole datagram is
//!   discarded and so are its later fragments until its timer expires (`ip_frag_overlap`, then
//!   `ip_frag_of_discarded`). An exact duplicate, lying inside one fragment already received,
//!   is dropped alone (`ip_frag_duplicate`; RFC 5722 errata 3089, Linux's `IPFRAG_DUP`): the
//!   network duplicates packets.
//!
//! ## Time
//!
//! RFC 1122 3.3.2: "There MUST be a reassembly timeout", a fixed value (recommended 60 s to
//! 120 s; plex uses Linux's 30 s, configurable). A datagram lives `timeout` from its first
//! fragment; later fragments do not restart it. Slots sit in a list in creation order, so the
//! earliest deadline is the list head: `poll_timeout` is O(1). On expiry the partial datagram
//! is discarded (MUST) and the caller gets fragment zero's header and first 8 bytes for the
//! ICMP Time Exceeded, code 1 (RFC 792), to send to the source "if fragment zero has been
//! received" (RFC 1122 3.3.2).
//!
//! EMTU_R (RFC 1122 3.3.2: at least 576, SHOULD be at least the link MTU) is the maximum,
//! 65 535 octets; [`crate::iface::Stack::mms_r`] tells the transport layer MMS_R (MUST).

use std::net::Ipv4Addr;

use super::DropReason;
use crate::time::{Duration, Instant};
use crate::wire::ipv4::{Ipv4Fragment, MAX_PAYLOAD};
use crate::wire::Ipv4Repr;
use crate::Map;

/// Bytes per pool chunk.
pub const CHUNK: usize = 1024;
/// Chunks a datagram of [`MAX_PAYLOAD`] bytes needs.
pub const CHUNKS_PER_DATAGRAM: usize = MAX_PAYLOAD.div_ceil(CHUNK);
const BLOCKS: usize = MAX_PAYLOAD.div_ceil(8);
const WORDS: usize = BLOCKS.div_ceil(64);
const NONE: u32 = u32::MAX;

/// Reassembly limits (in [`crate::iface::StackConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Bytes of fragment payload held at most (rounded down to whole chunks). 0 disables
    /// reassembly: every fragment is dropped as `ip_fragment`.
    pub mem_limit: usize,
    /// Datagrams in reassembly at most.
    pub max_datagrams: usize,
    /// Lifetime of a datagram in reassembly, from its first fragment.
    pub timeout: Duration,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        ReassemblyConfig { mem_limit: 4 << 20, max_datagrams: 256, timeout: Duration::from_secs(30) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ident: u16,
}

#[derive(Debug, Clone)]
struct Datagram {
    key: Key,
    deadline: Instant,
    /// Discarded (overlap, bad end, memory): holds no chunks, swallows fragments until expiry.
    discarded: bool,
    /// Payload length, once the final fragment arrived.
    total: Option<usize>,
    /// Highest end received.
    max_end: usize,
    /// Payload bytes received (fragments never overlap, so this is exact).
    received: usize,
    /// Header of fragment zero.
    first: Option<Ipv4Repr>,
    chunks: [u32; CHUNKS_PER_DATAGRAM],
    prev: u32,
    next: u32,
}

/// What became of a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Kept; the datagram is not complete yet.
    Held,
    /// The datagram is complete: its header (from fragment zero, `payload_len` the whole
    /// payload, not a fragment any more) and its payload in [`Reassembler::take_output`].
    Complete(Ipv4Repr),
    /// Dropped for `reason`; `discarded` when the whole datagram went with it.
    Dropped {
        /// Counted under this reason.
        reason: DropReason,
        /// The datagram it belonged to was discarded too.
        discarded: bool,
    },
}

/// A datagram whose timer expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// It was still being reassembled (not discarded before): a reassembly timeout.
    pub timed_out: bool,
    /// Fragment zero's header and the first 8 bytes of its payload (fragment zero carries at
    /// least 8), when it was received: what an ICMP Time Exceeded quotes.
    pub quote: Option<(Ipv4Repr, [u8; 8])>,
}

/// The reassembly buffers of one interface.
#[derive(Debug)]
pub struct Reassembler {
    cfg: ReassemblyConfig,
    pool: Box<[u8]>,
    free_chunks: Vec<u32>,
    slots: Vec<Datagram>,
    free_slots: Vec<u32>,
    /// `covered` then `starts`, `2 * WORDS` words per slot.
    bits: Box<[u64]>,
    map: Map<Key, u32>,
    /// Creation-order list of live slots (oldest first).
    head: u32,
    tail: u32,
    output: Vec<u8>,
}

impl Reassembler {
    /// Buffers for `cfg`, all allocated now (none when `cfg.mem_limit` is 0).
    pub fn new(cfg: ReassemblyConfig) -> Reassembler {
        let n_chunks = (cfg.mem_limit / CHUNK).min(NONE as usize - 1);
        let n_slots = if n_chunks == 0 { 0 } else { cfg.max_datagrams.min(NONE as usize - 1) };
        let empty = Datagram {
            key: Key { src: Ipv4Addr::UNSPECIFIED, dst: Ipv4Addr::UNSPECIFIED, proto: 0, ident: 0 },
            deadline: Instant::ZERO,
            discarded: false,
            total: None,
            max_end: 0,
            received: 0,
            first: None,
            chunks: [NONE; CHUNKS_PER_DATAGRAM],
            prev: NONE,
            next: NONE,
        };
        Reassembler {
            cfg,
            pool: vec![0u8; n_chunks * CHUNK].into_boxed_slice(),
            free_chunks: (0..n_chunks as u32).rev().collect(),
            slots: vec![empty; n_slots],
            free_slots: (0..n_slots as u32).rev().collect(),
            bits: vec![0u64; n_slots * 2 * WORDS].into_boxed_slice(),
            map: Map::with_capacity_and_hasher(n_slots, Default::default()),
            head: NONE,
            tail: NONE,
            output: if n_slots == 0 { Vec::new() } else { vec![0u8; MAX_PAYLOAD] },
        }
    }

    /// Reassembly is on (`mem_limit` above zero): fragments are not dropped as `ip_fragment`.
    pub fn enabled(&self) -> bool {
        !self.slots.is_empty()
    }
    /// Datagrams in reassembly (including discarded ones waiting for their timer).
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }
    /// Bytes of the pool in use.
    pub fn bytes_held(&self) -> usize {
        (self.pool.len() / CHUNK - self.free_chunks.len()) * CHUNK
    }

    /// Take the output buffer (the payload of the last [`Outcome::Complete`] is at its start);
    /// give it back with [`Reassembler::restore_output`]. No allocation either way.
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.output)
    }
    /// Give back the buffer [`Reassembler::take_output`] lent, once the datagram is delivered.
    pub fn restore_output(&mut self, buf: Vec<u8>) {
        self.output = buf;
    }

    /// One fragment of `ip` (its `payload_len` is the fragment's payload, `payload`).
    pub fn push(&mut self, now: Instant, ip: &Ipv4Repr, frag: Ipv4Fragment, payload: &[u8]) -> Outcome {
        let drop = |reason| Outcome::Dropped { reason, discarded: false };
        if !self.enabled() {
            return drop(DropReason::IpFragment);
        }
        let (off, len) = (frag.offset, payload.len());
        // RFC 791 3.2: every fragment but the last carries a multiple of 8 octets.
        if len == 0 || (frag.more_frags && len % 8 != 0) {
            return drop(DropReason::IpFragBadLength);
        }
        let end = off + len;
        if end > MAX_PAYLOAD {
            return drop(DropReason::IpFragTooBig);
        }
        let key = Key { src: ip.src_addr, dst: ip.dst_addr, proto: u8::from(ip.next_header), ident: ip.ident };
        let i = match self.map.get(&key) {
            Some(&i) => i,
            None => {
                let needed = chunk_span(off, end).len();
                let reserve = self.pool.len() / CHUNK / 4;
                if self.free_chunks.len() < needed + reserve {
                    return drop(DropReason::IpFragMemLimit);
                }
                let Some(i) = self.free_slots.pop() else { return drop(DropReason::IpFragMemLimit) };
                self.open(i, key, now + self.cfg.timeout);
                i
            }
        };
        let (covered, starts) = self.bitmaps(i);
        let d = &self.slots[i as usize];
        if d.discarded {
            return drop(DropReason::IpFragOfDiscarded);
        }
        // The end must agree with what is known (RFC 791 3.2: the final fragment sets the
        // total length).
        let bad_end = match d.total {
            Some(total) => end > total || (!frag.more_frags && end != total),
            None => !frag.more_frags && end < d.max_end,
        };
        if bad_end {
            return self.discard(i, DropReason::IpFragBadEnd);
        }
        let (b0, b1) = (off / 8, end.div_ceil(8));
        if any_set(&self.bits[covered.clone()], b0, b1) {
            // Inside one fragment already received (fully covered, no fragment starting
            // strictly inside): a duplicate. Anything else overlaps: RFC 5722 section 4.
            let dup = all_set(&self.bits[covered], b0, b1) && !any_set(&self.bits[starts], b0 + 1, b1);
            return if dup { drop(DropReason::IpFragDuplicate) } else { self.discard(i, DropReason::IpFragOverlap) };
        }
        // Memory for the chunks this fragment touches.
        for c in chunk_span(off, end) {
            if self.slots[i as usize].chunks[c] == NONE {
                let Some(k) = self.free_chunks.pop() else {
                    return self.discard(i, DropReason::IpFragMemLimit);
                };
                self.slots[i as usize].chunks[c] = k;
            }
        }
        // Copy the payload chunk by chunk.
        let mut at = off;
        while at < end {
            let c = at / CHUNK;
            let k = self.slots[i as usize].chunks[c] as usize;
            let within = at % CHUNK;
            let n = (CHUNK - within).min(end - at);
            self.pool[k * CHUNK + within..k * CHUNK + within + n].copy_from_slice(&payload[at - off..at - off + n]);
            at += n;
        }
        let (covered, starts) = self.bitmaps(i);
        set_range(&mut self.bits[covered], b0, b1);
        set_range(&mut self.bits[starts], b0, b0 + 1);
        let d = &mut self.slots[i as usize];
        d.received += len;
        d.max_end = d.max_end.max(end);
        if !frag.more_frags {
            d.total = Some(end);
        }
        if off == 0 {
            d.first = Some(*ip);
        }
        match (d.total, d.first) {
            (Some(total), Some(first)) if d.received == total => {
                if self.output.len() < MAX_PAYLOAD {
                    // Only if the caller kept the buffer from `take_output`.
                    self.output.resize(MAX_PAYLOAD, 0);
                }
                let d = &self.slots[i as usize];
                for c in 0..total.div_ceil(CHUNK) {
                    let k = d.chunks[c] as usize;
                    let n = CHUNK.min(total - c * CHUNK);
                    self.output[c * CHUNK..c * CHUNK + n].copy_from_slice(&self.pool[k * CHUNK..k * CHUNK + n]);
                }
                self.close(i);
                Outcome::Complete(Ipv4Repr { payload_len: total, dont_frag: false, ..first })
            }
            _ => Outcome::Held,
        }
    }

    /// When [`Reassembler::expire`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.head != NONE).then(|| self.slots[self.head as usize].deadline)
    }

    /// Free the next datagram whose timer expired at `now`; `None` when no more are due.
    pub fn expire(&mut self, now: Instant) -> Option<Expired> {
        if self.head == NONE || self.slots[self.head as usize].deadline > now {
            return None;
        }
        let i = self.head;
        let d = &self.slots[i as usize];
        let quote = match (d.discarded, d.first) {
            (false, Some(header)) if d.chunks[0] != NONE => {
                let k = d.chunks[0] as usize;
                let mut data = [0u8; 8];
                data.copy_from_slice(&self.pool[k * CHUNK..k * CHUNK + 8]);
                Some((header, data))
            }
            _ => None,
        };
        let timed_out = !d.discarded;
        self.close(i);
        Some(Expired { timed_out, quote })
    }

    fn bitmaps(&self, i: u32) -> (core::ops::Range<usize>, core::ops::Range<usize>) {
        let base = i as usize * 2 * WORDS;
        (base..base + WORDS, base + WORDS..base + 2 * WORDS)
    }

    fn open(&mut self, i: u32, key: Key, deadline: Instant) {
        let tail = self.tail;
        let d = &mut self.slots[i as usize];
        d.key = key;
        d.deadline = deadline;
        d.discarded = false;
        d.total = None;
        d.max_end = 0;
        d.received = 0;
        d.first = None;
        d.prev = tail;
        d.next = NONE;
        if tail == NONE {
            self.head = i;
        } else {
            self.slots[tail as usize].next = i;
        }
        self.tail = i;
        let (c, s) = self.bitmaps(i);
        self.bits[c.start..s.end].fill(0);
        self.map.insert(key, i);
    }

    /// Give the datagram's chunks back to the pool.
    fn free_chunks_of(&mut self, i: u32) {
        for c in self.slots[i as usize].chunks.iter_mut() {
            if *c != NONE {
                self.free_chunks.push(*c);
                *c = NONE;
            }
        }
    }

    /// Discard the datagram but keep its slot until the timer, to swallow its later fragments.
    fn discard(&mut self, i: u32, reason: DropReason) -> Outcome {
        self.free_chunks_of(i);
        self.slots[i as usize].discarded = true;
        Outcome::Dropped { reason, discarded: true }
    }

    /// Free the slot.
    fn close(&mut self, i: u32) {
        self.free_chunks_of(i);
        let (prev, next, key) = {
            let d = &self.slots[i as usize];
            (d.prev, d.next, d.key)
        };
        if prev == NONE {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NONE {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        self.map.remove(&key);
        self.free_slots.push(i);
    }
}

/// The chunk indices that bytes `[off, end)` touch.
fn chunk_span(off: usize, end: usize) -> core::ops::Range<usize> {
    off / CHUNK..end.div_ceil(CHUNK)
}

/// Mask of bits `[lo, hi)` within word `w` (bit indices global).
fn word_mask(w: usize, lo: usize, hi: usize) -> u64 {
    let (s, e) = (lo.max(w * 64) - w * 64, hi.min(w * 64 + 64) - w * 64);
    if e <= s {
        0
    } else if e - s == 64 {
        u64::MAX
    } else {
        ((1u64 << (e - s)) - 1) << s
    }
}

fn any_set(bits: &[u64], lo: usize, hi: usize) -> bool {
    lo < hi && (lo / 64..hi.div_ceil(64)).any(|w| bits[w] & word_mask(w, lo, hi) != 0)
}

fn all_set(bits: &[u64], lo: usize, hi: usize) -> bool {
    (lo / 64..hi.div_ceil(64)).all(|w| {
        let m = word_mask(w, lo, hi);
        bits[w] & m == m
    })
}

fn set_range(bits: &mut [u64], lo: usize, hi: usize) {
    let first = lo / 64;
    for (k, word) in bits[first..hi.div_ceil(64)].iter_mut().enumerate() {
        *word |= word_mask(first + k, lo, hi);
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::rand::Rng;
    use crate::wire::IpProtocol;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

    fn header(ident: u16, payload_len: usize) -> Ipv4Repr {
        Ipv4Repr {
            src_addr: SRC,
            dst_addr: DST,
            next_header: IpProtocol::Udp,
            payload_len,
            hop_limit: 64,
            dscp_ecn: 0,
            ident,
            dont_frag: false,
        }
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn payload(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Rng::new(seed).fill(&mut v);
        v
    }

    /// Cut `data` into fragments of `size` bytes (a multiple of 8).
    fn cut(data: &[u8], size: usize) -> Vec<(Ipv4Fragment, &[u8])> {
        let n = data.len().div_ceil(size);
        data.chunks(size)
            .enumerate()
            .map(|(k, p)| (Ipv4Fragment { offset: k * size, more_frags: k + 1 < n }, p))
            .collect()
    }

    fn push(r: &mut Reassembler, now: Instant, ident: u16, f: Ipv4Fragment, p: &[u8]) -> Outcome {
        r.push(now, &header(ident, p.len()), f, p)
    }

    /// A copy of the output buffer (given back).
    fn output(r: &mut Reassembler) -> Vec<u8> {
        let b = r.take_output();
        let v = b.clone();
        r.restore_output(b);
        v
    }

    fn frag(offset: usize, more_frags: bool) -> Ipv4Fragment {
        Ipv4Fragment { offset, more_frags }
    }

    fn dropped(reason: DropReason, discarded: bool) -> Outcome {
        Outcome::Dropped { reason, discarded }
    }

    /// Feed fragments in the given order; the last one must complete the datagram with `data`.
    fn assemble(r: &mut Reassembler, ident: u16, data: &[u8], frags: &[(Ipv4Fragment, &[u8])]) {
        for (k, (f, p)) in frags.iter().enumerate() {
            let out = push(r, t(0), ident, *f, p);
            if k + 1 < frags.len() {
                assert_eq!(out, Outcome::Held, "fragment {k} at {}", f.offset);
            } else {
                assert_eq!(out, Outcome::Complete(header(ident, data.len())));
            }
        }
        let whole = r.take_output();
        assert!(whole[..data.len()] == *data, "payload differs");
        r.restore_output(whole);
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0), "everything returned to the pool");
    }

    #[test]
    fn in_order_reversed_and_permuted_576_to_65535() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let mut rng = Rng::new(9);
        // 576 (RFC 791's minimum every host must accept) and 65 535 octets (the maximum),
        // with fragment sizes of a 1500 MTU, of a 576 MTU, and the smallest (8 octets).
        for (total, size) in [(576, 552), (576, 8), (4000, 1480), (65535, 1480), (65535, 552), (65535, 8)] {
            let data = payload(total - 20, total as u64);
            let mut frags = cut(&data, size);
            assemble(&mut r, 1, &data, &frags);
            frags.reverse();
            assemble(&mut r, 2, &data, &frags);
            for round in 0..5 {
                // Fisher-Yates with the seeded generator.
                for i in (1..frags.len()).rev() {
                    frags.swap(i, rng.below(i as u64 + 1) as usize);
                }
                assemble(&mut r, 3 + round, &data, &frags);
            }
        }
    }

    #[test]
    fn interleaved_datagrams_are_kept_apart() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let (a, b) = (payload(3000, 1), payload(3000, 2));
        let (fa, fb) = (cut(&a, 1480), cut(&b, 1480));
        assert_eq!(push(&mut r, t(0), 7, fa[0].0, fa[0].1), Outcome::Held);
        assert_eq!(push(&mut r, t(0), 8, fb[2].0, fb[2].1), Outcome::Held);
        // Same identification, other protocol: another datagram (RFC 791 3.2 key).
        let mut icmp = header(7, 1480);
        icmp.next_header = IpProtocol::Icmp;
        assert_eq!(r.push(t(0), &icmp, fa[1].0, fa[1].1), Outcome::Held);
        assert_eq!(r.in_flight(), 3);
        assert_eq!(push(&mut r, t(0), 7, fa[1].0, fa[1].1), Outcome::Held);
        assert_eq!(push(&mut r, t(0), 8, fb[0].0, fb[0].1), Outcome::Held);
        assert_eq!(push(&mut r, t(0), 7, fa[2].0, fa[2].1), Outcome::Complete(header(7, 3000)));
        assert_eq!(output(&mut r)[..3000], a[..]);
    }

    #[test]
    fn malformed_fragments_are_dropped() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let d = payload(64, 3);
        // RFC 791 3.2: a non-final fragment is a multiple of 8 octets.
        assert_eq!(push(&mut r, t(0), 1, frag(0, true), &d[..12]), dropped(DropReason::IpFragBadLength, false));
        assert_eq!(push(&mut r, t(0), 1, frag(8, false), &[]), dropped(DropReason::IpFragBadLength, false));
        // Beyond 65 535 octets of datagram ("ping of death"): offset 65 512 + 8 > 65 515.
        assert_eq!(push(&mut r, t(0), 1, frag(65512, false), &d[..8]), dropped(DropReason::IpFragTooBig, false));
        assert_eq!(push(&mut r, t(0), 1, frag(65504, false), &d[..11]), Outcome::Held, "ends at 65 515: fits");
        assert_eq!(r.in_flight(), 1);
        // A second final fragment with another end discards the datagram.
        assert_eq!(push(&mut r, t(0), 2, frag(16, false), &d[..8]), Outcome::Held);
        assert_eq!(push(&mut r, t(0), 2, frag(32, false), &d[..8]), dropped(DropReason::IpFragBadEnd, true));
        assert_eq!(push(&mut r, t(0), 2, frag(0, true), &d[..16]), dropped(DropReason::IpFragOfDiscarded, false));
        // A fragment beyond the known end.
        assert_eq!(push(&mut r, t(0), 3, frag(0, false), &d[..1]).clone(), Outcome::Complete(header(3, 1)));
        assert_eq!(push(&mut r, t(0), 4, frag(8, false), &d[..8]), Outcome::Held);
        assert_eq!(push(&mut r, t(0), 4, frag(8, true), &d[..16]), dropped(DropReason::IpFragBadEnd, true));
        // A final fragment below data already received.
        assert_eq!(push(&mut r, t(0), 5, frag(64, true), &d[..8]), Outcome::Held);
        assert_eq!(push(&mut r, t(0), 5, frag(8, false), &d[..8]), dropped(DropReason::IpFragBadEnd, true));
    }

    #[test]
    fn overlap_discards_the_datagram_and_its_later_fragments_until_the_timeout() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let d = payload(64, 4);
        assert_eq!(push(&mut r, t(0), 1, frag(0, true), &d[..16]), Outcome::Held);
        // RFC 5722: [8, 24) overlaps [0, 16): the whole datagram goes.
        assert_eq!(push(&mut r, t(0), 1, frag(8, true), &d[8..24]), dropped(DropReason::IpFragOverlap, true));
        assert_eq!(r.bytes_held(), 0, "its memory is freed at once");
        // The rest of it is dropped too, even what would have completed it.
        assert_eq!(push(&mut r, t(1), 1, frag(16, false), &d[16..24]), dropped(DropReason::IpFragOfDiscarded, false));
        assert_eq!(push(&mut r, t(1), 1, frag(0, true), &d[..16]), dropped(DropReason::IpFragOfDiscarded, false));
        assert_eq!(r.expire(t(29_999)), None);
        assert_eq!(r.expire(t(30_000)), Some(Expired { timed_out: false, quote: None }), "counted once, as discarded");
        // After the timeout the key is free again.
        assert_eq!(push(&mut r, t(30_001), 1, frag(16, false), &d[16..24]), Outcome::Held);
        assert_eq!(push(&mut r, t(30_001), 1, frag(0, true), &d[..16]), Outcome::Complete(header(1, 24)));
        // Overlaps from below, containing, and across several fragments.
        for (first, second) in [((8, 16), (0, 16)), ((8, 16), (0, 32)), ((0, 8), (0, 16))] {
            let mut r = Reassembler::new(ReassemblyConfig::default());
            assert_eq!(push(&mut r, t(0), 9, frag(first.0, true), &d[..first.1 - first.0]), Outcome::Held);
            assert_eq!(push(&mut r, t(0), 9, frag(16, true), &d[..8]), Outcome::Held);
            let out = push(&mut r, t(0), 9, frag(second.0, true), &d[..second.1 - second.0]);
            assert_eq!(out, dropped(DropReason::IpFragOverlap, true), "{first:?} then {second:?}");
        }
    }

    #[test]
    fn exact_duplicates_are_dropped_alone() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let d = payload(40, 5);
        assert_eq!(push(&mut r, t(0), 1, frag(0, true), &d[..16]), Outcome::Held);
        assert_eq!(push(&mut r, t(0), 1, frag(16, true), &d[16..32]), Outcome::Held);
        for (off, end) in [(0, 16), (0, 8), (8, 16), (16, 32)] {
            let out = push(&mut r, t(0), 1, frag(off, true), &d[off..end]);
            assert_eq!(out, dropped(DropReason::IpFragDuplicate, false), "[{off}, {end})");
        }
        // Spanning two received fragments is an overlap, not a duplicate.
        let mut r2 = Reassembler::new(ReassemblyConfig::default());
        push(&mut r2, t(0), 1, frag(0, true), &d[..16]);
        push(&mut r2, t(0), 1, frag(16, true), &d[16..32]);
        assert_eq!(push(&mut r2, t(0), 1, frag(8, true), &d[8..24]), dropped(DropReason::IpFragOverlap, true));
        // The duplicate did not disturb the datagram.
        assert_eq!(push(&mut r, t(0), 1, frag(32, false), &d[32..]), Outcome::Complete(header(1, 40)));
        assert_eq!(output(&mut r)[..40], d[..]);
    }

    #[test]
    fn timeout_frees_memory_and_quotes_fragment_zero() {
        let cfg = ReassemblyConfig::default();
        let mut r = Reassembler::new(cfg);
        let d = payload(3000, 6);
        let f = cut(&d, 1480);
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(push(&mut r, t(1000), 1, f[0].0, f[0].1), Outcome::Held);
        assert_eq!(push(&mut r, t(2000), 2, f[1].0, f[1].1), Outcome::Held, "no fragment zero");
        assert_eq!(push(&mut r, t(5000), 1, f[2].0, f[2].1), Outcome::Held, "does not restart the timer");
        assert!(r.bytes_held() >= 1480 + 1480 + 40);
        // Linux's 30 s, from the first fragment.
        assert_eq!(r.poll_timeout(), Some(t(31_000)));
        assert_eq!(r.expire(t(30_999)), None);
        let e = r.expire(t(31_000)).unwrap();
        assert!(e.timed_out);
        let (h, data) = e.quote.expect("fragment zero was received");
        assert_eq!((h.src_addr, h.ident, &data[..]), (SRC, 1, &d[..8]));
        assert_eq!(r.poll_timeout(), Some(t(32_000)));
        assert_eq!(r.expire(t(32_000)), Some(Expired { timed_out: true, quote: None }));
        assert_eq!(r.expire(t(99_000)), None);
        assert_eq!((r.in_flight(), r.bytes_held(), r.poll_timeout()), (0, 0, None));
    }

    #[test]
    fn flood_of_partial_datagrams_spares_the_others() {
        // 64 KiB of pool, 32 datagrams.
        let cfg = ReassemblyConfig { mem_limit: 64 << 10, max_datagrams: 32, ..Default::default() };
        let mut r = Reassembler::new(cfg);
        let legit: Vec<Vec<u8>> = (0..2).map(|k| payload(8000, 100 + k)).collect();
        let frags: Vec<_> = legit.iter().map(|d| cut(d, 1480)).collect();
        for (k, f) in frags.iter().enumerate() {
            assert_eq!(push(&mut r, t(0), k as u16, f[0].0, f[0].1), Outcome::Held);
        }
        // A flood of first fragments that never complete.
        let junk = payload(1480, 7);
        let mut refused = 0;
        for ident in 1000..3000u16 {
            match push(&mut r, t(1), ident, frag(0, true), &junk) {
                Outcome::Held => {}
                Outcome::Dropped { reason: DropReason::IpFragMemLimit, discarded: false } => refused += 1,
                o => panic!("{o:?}"),
            }
        }
        assert!(refused >= 1978, "the flood is refused once the limit is reached ({refused})");
        assert!(r.bytes_held() <= 64 << 10);
        // The datagrams in progress still complete.
        for (k, f) in frags.iter().enumerate() {
            for (i, (fr, p)) in f.iter().enumerate().skip(1) {
                let out = push(&mut r, t(2), k as u16, *fr, p);
                if i + 1 < f.len() {
                    assert_eq!(out, Outcome::Held);
                } else {
                    assert_eq!(out, Outcome::Complete(header(k as u16, 8000)));
                    assert_eq!(output(&mut r)[..8000], legit[k][..]);
                }
            }
        }
        // The flood's datagrams time out and the pool is whole again.
        while r.expire(t(31_000)).is_some() {}
        assert_eq!((r.in_flight(), r.bytes_held()), (0, 0));
        assert_eq!(push(&mut r, t(31_001), 5000, frag(0, true), &junk), Outcome::Held);
    }

    #[test]
    fn disabled_drops_every_fragment() {
        let mut r = Reassembler::new(ReassemblyConfig { mem_limit: 0, ..Default::default() });
        assert_eq!(push(&mut r, t(0), 1, frag(0, true), &[0; 8]), dropped(DropReason::IpFragment, false));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn random_fragments_never_panic_nor_leak() {
        let cfg = ReassemblyConfig { mem_limit: 256 << 10, max_datagrams: 16, ..Default::default() };
        let mut r = Reassembler::new(cfg);
        let mut rng = Rng::new(42);
        let data = payload(65536, 8);
        let mut complete = 0;
        for i in 0..50_000u64 {
            let now = t(i / 10);
            let ident = rng.below(24) as u16;
            let off = match rng.below(3) {
                0 => rng.below(8) as usize * 8,
                1 => rng.below(65536 / 8) as usize * 8,
                _ => rng.below(40) as usize * 8,
            };
            let len = match rng.below(4) {
                0 => rng.below(20) as usize,
                1 => rng.below(8) as usize * 8,
                2 => 1480,
                _ => rng.below(3000) as usize,
            };
            let len = len.min(65536 - off);
            let f = frag(off, rng.below(3) != 0);
            if let Outcome::Complete(h) = push(&mut r, now, ident, f, &data[off..off + len]) {
                assert!(h.payload_len <= MAX_PAYLOAD);
                complete += 1;
            }
            assert!(r.bytes_held() <= 256 << 10);
            assert!(r.in_flight() <= 16);
            while r.expire(now).is_some() {}
            if i % 500 == 0 {
                // Now and then a well-formed datagram, shuffled, among the noise.
                let total = 1 + rng.below(6000) as usize;
                let mut frags = cut(&data[..total], 8 * (1 + rng.below(200) as usize));
                for k in (1..frags.len()).rev() {
                    frags.swap(k, rng.below(k as u64 + 1) as usize);
                }
                for (f, p) in frags {
                    if let Outcome::Complete(h) = push(&mut r, now, 1000 + i as u16, f, p) {
                        assert_eq!(output(&mut r)[..h.payload_len], data[..total]);
                        complete += 1;
                    }
                }
            }
        }
        while r.expire(t(10_000_000)).is_some() {}
        assert_eq!((r.in_flight(), r.bytes_held(), r.poll_timeout()), (0, 0, None));
        assert!(complete > 0, "some datagrams completed ({complete})");
    }
}
