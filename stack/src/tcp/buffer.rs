//! Byte buffers of a connection, allocated on first use and grown with the bytes they hold (an
//! idle connection holds none).
//!
//! - [`SendBuffer`]: bytes from `snd_una` on: unacknowledged, then unsent. The connection copies
//!   a segment's payload straight from it into the outgoing frame (two slices when it wraps).
//! - [`RecvBuffer`]: in-order bytes the application has not read yet, followed by out-of-order
//!   bytes placed at their offset, whose ranges an [`Assembler`] tracks. Out-of-order data is
//!   kept (not dropped) up to the window, and its ranges feed the SACK blocks we send.

/// A byte ring of bounded capacity whose memory grows with what it holds. Nothing is
/// allocated until the first write (an idle connection holds no buffer memory: 100k
/// established idle connections cost only their control blocks); then the ring takes the next
/// power of two that holds the bytes written, at least [`Ring::MIN_ALLOC`], and doubles (moving
/// its bytes once) when a write reaches past it, up to the capacity. A short connection that
/// moves 64 bytes so allocates 2 KiB, not its whole capacity: zeroing and faulting in two
/// 256 KiB rings per connection cost more than the rest of its life (4x at 8 clients in
/// parallel, when the allocator gave the pages back and took them again every time). A bulk
/// connection reaches its capacity after a few doublings, and from then on no write allocates.
#[derive(Debug, Clone)]
struct Ring {
    /// Allocated bytes: 0, or at most `cap`; the ring wraps at `buf.len()`.
    buf: Vec<u8>,
    cap: usize,
    /// Index of the first byte.
    head: usize,
}

impl Ring {
    /// The first allocation's least size.
    const MIN_ALLOC: usize = 2048;

    fn new(capacity: usize) -> Ring {
        Ring { buf: Vec::new(), cap: capacity, head: 0 }
    }
    fn capacity(&self) -> usize {
        self.cap
    }
    /// Bytes of memory held.
    fn allocated(&self) -> usize {
        self.buf.len()
    }
    fn idx(&self, off: usize) -> usize {
        let i = self.head + off;
        if i >= self.buf.len() {
            i - self.buf.len()
        } else {
            i
        }
    }
    /// Make room for logical offsets `[0, need)` (`need <= cap`): the next power of two, at
    /// least `MIN_ALLOC`, at most `cap`; the bytes held move to the front of the new memory.
    fn grow(&mut self, need: usize) {
        let len = need.next_power_of_two().max(Self::MIN_ALLOC).min(self.cap);
        let mut buf = vec![0u8; len];
        let old = self.buf.len();
        let first = old - self.head;
        buf[..first].copy_from_slice(&self.buf[self.head..]);
        buf[first..old].copy_from_slice(&self.buf[..self.head]);
        self.buf = buf;
        self.head = 0;
    }
    /// Write `data` at logical offset `off` (must fit below capacity).
    fn write_at(&mut self, off: usize, data: &[u8]) {
        debug_assert!(off + data.len() <= self.cap);
        if data.is_empty() || self.cap == 0 {
            return;
        }
        if off + data.len() > self.buf.len() {
            self.grow(off + data.len());
        }
        let len = self.buf.len();
        let start = self.idx(off);
        let first = (len - start).min(data.len());
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        let rest = data.len() - first;
        self.buf[..rest].copy_from_slice(&data[first..]);
    }
    /// Read `out.len()` bytes from logical offset `off` (must be below capacity); bytes never
    /// written read as zero.
    fn read_at(&self, off: usize, out: &mut [u8]) {
        let len = self.buf.len();
        let held = len.saturating_sub(off).min(out.len());
        out[held..].fill(0);
        if held == 0 {
            return;
        }
        let out = &mut out[..held];
        let start = self.idx(off);
        let first = (len - start).min(out.len());
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        let rest = out.len() - first;
        out[first..].copy_from_slice(&self.buf[..rest]);
    }
    /// Give the memory back (the ring holds nothing the caller still needs); a later write
    /// allocates it again.
    fn release(&mut self) {
        self.buf = Vec::new();
        self.head = 0;
    }
    /// Drop `n` bytes from the front (at most what the memory holds).
    fn advance(&mut self, n: usize) {
        if self.buf.is_empty() {
            self.head = 0;
            return;
        }
        self.head = self.idx(n.min(self.buf.len()));
    }
}

/// Outgoing bytes: `[0, len)` are logically at sequence numbers `snd_una ..`.
#[derive(Debug, Clone)]
pub struct SendBuffer {
    ring: Ring,
    len: usize,
}

impl SendBuffer {
    /// An empty buffer of `capacity` bytes ([`super::Config::send_buffer`]); no memory is
    /// allocated until the first [`SendBuffer::enqueue`].
    pub fn new(capacity: usize) -> SendBuffer {
        SendBuffer { ring: Ring::new(capacity), len: 0 }
    }
    /// Most bytes it can hold, unacknowledged and unsent together.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }
    /// Bytes held: sent but unacknowledged, then not yet sent (SYN and FIN take no room).
    pub fn len(&self) -> usize {
        self.len
    }
    /// No byte is held: everything queued has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes [`SendBuffer::enqueue`] would take now; grows only as ACKs consume the front.
    pub fn free(&self) -> usize {
        self.capacity() - self.len
    }
    /// Append as much of `data` as fits; returns the count appended.
    pub fn enqueue(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        self.ring.write_at(self.len, &data[..n]);
        self.len += n;
        n
    }
    /// Copy bytes at offset `off` into `out` (bounded by what is buffered); returns the count.
    pub fn read_at(&self, off: usize, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len.saturating_sub(off));
        self.ring.read_at(off, &mut out[..n]);
        n
    }
    /// Memory held by the buffer.
    pub fn allocated(&self) -> usize {
        self.ring.allocated()
    }
    /// Free the ring's memory if it holds no byte.
    pub fn release_if_empty(&mut self) {
        if self.len == 0 {
            self.ring.release();
        }
    }
    /// Drop `n` acknowledged bytes from the front.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.ring.advance(n);
        self.len -= n;
    }
}

/// Ranges of out-of-order data, as offsets from `rcv_nxt`, sorted and disjoint.
/// Bounded: a segment that would need more than [`Assembler::MAX_RANGES`] ranges is refused.
#[derive(Debug, Clone, Default)]
pub struct Assembler {
    ranges: Vec<(usize, usize)>,
    /// Index into `ranges` of the range that most recently grew (first SACK block, RFC 2018 4).
    recent: Option<usize>,
}

impl Assembler {
    /// Most disjoint out-of-order ranges kept at once: a segment that would need one more is
    /// refused (not stored; the peer retransmits it), so reassembly work per segment is bounded.
    pub const MAX_RANGES: usize = 32;

    /// No range; room for [`Assembler::MAX_RANGES`] is allocated up front.
    pub fn new() -> Assembler {
        Assembler { ranges: Vec::with_capacity(Self::MAX_RANGES + 1), recent: None }
    }
    /// No out-of-order data is held (and so no SACK block to send).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
    /// The ranges `[start, end)`, in bytes from `rcv_nxt`, ascending and disjoint.
    pub fn ranges(&self) -> &[(usize, usize)] {
        &self.ranges
    }
    /// The range that grew most recently, for the first SACK block.
    pub fn recent(&self) -> Option<(usize, usize)> {
        self.recent.and_then(|i| self.ranges.get(i).copied())
    }

    /// Record `[start, end)` as received. Returns false (changing nothing) if it would need more
    /// ranges than the bound.
    pub fn add(&mut self, start: usize, end: usize) -> bool {
        if start >= end {
            return true;
        }
        // First range whose end reaches start (could merge), and last whose start <= end.
        let first = self.ranges.partition_point(|&(_, e)| e < start);
        let last = self.ranges.partition_point(|&(s, _)| s <= end);
        if first == last {
            if self.ranges.len() >= Self::MAX_RANGES {
                return false;
            }
            self.ranges.insert(first, (start, end));
        } else {
            let s = start.min(self.ranges[first].0);
            let e = end.max(self.ranges[last - 1].1);
            self.ranges[first] = (s, e);
            self.ranges.drain(first + 1..last);
        }
        self.recent = Some(first);
        true
    }

    /// The in-order edge moved by `n` (bytes at offsets `< n` are now contiguous): returns how
    /// many further bytes became contiguous from the front, and rebases every range.
    pub fn advance(&mut self, n: usize) -> usize {
        let mut edge = n;
        let mut removed = 0;
        while let Some(&(s, e)) = self.ranges.get(removed) {
            if s > edge {
                break;
            }
            edge = edge.max(e);
            removed += 1;
        }
        if removed > 0 {
            self.ranges.drain(..removed);
            self.recent = match self.recent {
                Some(i) if i >= removed => Some(i - removed),
                _ => None,
            };
        }
        for r in &mut self.ranges {
            r.0 -= edge;
            r.1 -= edge;
        }
        edge - n
    }

    /// Forget every range (the bytes in the ring are left as they are).
    pub fn clear(&mut self) {
        self.ranges.clear();
        self.recent = None;
    }
}

/// Incoming bytes: `[0, readable)` in order and unread; out-of-order data beyond it.
#[derive(Debug, Clone)]
pub struct RecvBuffer {
    ring: Ring,
    readable: usize,
    /// Bytes the window may advertise (the ring has slack beyond this for window-scale rounding).
    limit: usize,
    /// The out-of-order ranges held beyond the in-order bytes; the connection reads them to
    /// build the SACK blocks it sends (RFC 2018 4).
    pub assembler: Assembler,
}

impl RecvBuffer {
    /// `capacity` bytes of window; `slack` extra bytes so a window rounded up to the scale
    /// granularity can always be stored.
    pub fn new(capacity: usize, slack: usize) -> RecvBuffer {
        RecvBuffer {
            ring: Ring::new(capacity + slack),
            readable: 0,
            limit: capacity,
            assembler: Assembler::new(),
        }
    }
    /// The window-sized capacity in bytes ([`super::Config::recv_buffer`]), without the slack.
    pub fn capacity(&self) -> usize {
        self.limit
    }
    /// In-order bytes received and not yet read by the application.
    pub fn readable(&self) -> usize {
        self.readable
    }
    /// Memory held by the buffer.
    pub fn allocated(&self) -> usize {
        self.ring.allocated()
    }
    /// Free the ring's memory if it holds no byte, in order or not.
    pub fn release_if_empty(&mut self) {
        if self.readable == 0 && self.assembler.is_empty() {
            self.ring.release();
        }
    }
    /// Bytes past the read position the ring can still store (window plus slack): no right
    /// edge may be announced beyond it.
    pub fn storable(&self) -> usize {
        self.ring.capacity().saturating_sub(self.readable)
    }
    /// Free space for the window computation.
    pub fn window(&self) -> usize {
        self.limit.saturating_sub(self.readable)
    }
    /// Store data whose first byte is `off` bytes past `rcv_nxt`. Returns how many bytes became
    /// in-order (the amount `rcv_nxt` advances), or `None` when the data could not be kept
    /// (beyond the physical ring, or too fragmented).
    pub fn write(&mut self, off: usize, data: &[u8]) -> Option<usize> {
        let room = self.ring.capacity().saturating_sub(self.readable);
        if off >= room {
            return None;
        }
        let data = &data[..data.len().min(room - off)];
        if off > 0 {
            if !self.assembler.add(off, off + data.len()) {
                return None;
            }
            self.ring.write_at(self.readable + off, data);
            return Some(0);
        }
        self.ring.write_at(self.readable, data);
        let extra = self.assembler.advance(data.len());
        let n = data.len() + extra;
        self.readable += n;
        Some(n)
    }
    /// Copy in-order bytes to `out` and consume them.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = self.peek(out);
        self.consume(n);
        n
    }
    /// Drop `n` in-order bytes already copied out with [`RecvBuffer::peek`].
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.readable);
        self.ring.advance(n);
        self.readable -= n;
    }
    /// Copy `out.len()` bytes stored at offset `off` from the read position (in-order or
    /// out-of-order region) without consuming anything.
    pub fn peek_at(&self, off: usize, out: &mut [u8]) {
        if off + out.len() <= self.ring.capacity() {
            self.ring.read_at(off, out);
        }
    }
    /// Copy in-order bytes to `out` without consuming them.
    pub fn peek(&self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.readable);
        self.ring.read_at(0, &mut out[..n]);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_allocated_on_first_write_only() {
        let mut b = SendBuffer::new(1 << 20);
        assert_eq!(b.allocated(), 0);
        let mut out = [0u8; 4];
        assert_eq!(b.read_at(0, &mut out), 0);
        b.consume(0);
        b.enqueue(b"data");
        assert_eq!(b.allocated(), Ring::MIN_ALLOC, "64 bytes do not take the whole capacity");
        let mut r = RecvBuffer::new(1 << 16, 128);
        assert_eq!(r.allocated(), 0);
        assert_eq!(r.read(&mut out), 0);
        r.write(0, b"x");
        assert_eq!(r.allocated(), Ring::MIN_ALLOC);
    }

    #[test]
    fn memory_grows_with_the_bytes_held_up_to_the_capacity() {
        let mut b = SendBuffer::new(10_000);
        assert_eq!(b.enqueue(&[1u8; 3000]), 3000);
        assert_eq!(b.allocated(), 4096);
        assert_eq!(b.enqueue(&[2u8; 3000]), 3000);
        assert_eq!(b.allocated(), 8192);
        assert_eq!(b.enqueue(&[3u8; 9000]), 4000, "only the free space is taken");
        assert_eq!(b.allocated(), 10_000, "never past the capacity");
        let mut r = RecvBuffer::new(1 << 16, 0);
        assert_eq!(r.write(40_000, b"far"), Some(0), "out of order, far ahead");
        assert_eq!(r.allocated(), 1 << 16);
        let mut out = [0u8; 3];
        r.peek_at(40_000, &mut out);
        assert_eq!(&out, b"far");
    }

    #[test]
    fn growing_keeps_wrapped_bytes_in_order() {
        let mut b = SendBuffer::new(1 << 16);
        let mut model: std::collections::VecDeque<u8> = Default::default();
        let mut next = 0u8;
        let mut x = 12345u32;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let n = (x % 3000) as usize;
            if x & 1 == 0 {
                let data: Vec<u8> = (0..n).map(|_| {
                    next = next.wrapping_add(1);
                    next
                }).collect();
                let k = b.enqueue(&data);
                model.extend(&data[..k]);
            } else {
                let k = n.min(b.len());
                b.consume(k);
                model.drain(..k);
            }
            assert_eq!(b.len(), model.len());
            let mut out = vec![0u8; b.len()];
            assert_eq!(b.read_at(0, &mut out), model.len());
            assert!(out.iter().eq(model.iter()), "bytes differ after growing");
            assert!(b.allocated() <= b.capacity());
        }
    }

    #[test]
    fn send_buffer_wraps() {
        let mut b = SendBuffer::new(8);
        assert_eq!(b.enqueue(b"abcdef"), 6);
        b.consume(4);
        assert_eq!(b.enqueue(b"ghijklmn"), 6, "only the free space is taken");
        let mut out = [0u8; 8];
        assert_eq!(b.read_at(0, &mut out), 8);
        assert_eq!(&out, b"efghijkl");
        assert_eq!(b.read_at(6, &mut out), 2);
        assert_eq!(&out[..2], b"kl");
        assert_eq!(b.read_at(9, &mut out), 0);
    }

    #[test]
    fn assembler_merges_and_advances() {
        let mut a = Assembler::new();
        assert!(a.add(10, 20));
        assert!(a.add(30, 40));
        assert!(a.add(18, 31));
        assert_eq!(a.ranges(), &[(10, 40)]);
        assert!(a.add(50, 60));
        assert_eq!(a.recent(), Some((50, 60)));
        assert_eq!(a.advance(5), 0, "edge 5 does not reach 10");
        assert_eq!(a.ranges(), &[(5, 35), (45, 55)]);
        assert_eq!(a.advance(5), 30, "edge reaches the first range");
        assert_eq!(a.ranges(), &[(10, 20)]);
        // An in-order segment that overlaps several ranges swallows them all.
        let mut a = Assembler::new();
        a.add(5, 10);
        a.add(15, 20);
        a.add(30, 31);
        assert_eq!(a.advance(17), 3);
        assert_eq!(a.ranges(), &[(10, 11)]);
    }

    #[test]
    fn assembler_is_bounded() {
        let mut a = Assembler::new();
        for i in 0..Assembler::MAX_RANGES {
            assert!(a.add(10 * i + 5, 10 * i + 6));
        }
        assert!(!a.add(1000, 1001));
        assert!(a.add(5, 7), "merging needs no new range");
    }

    #[test]
    fn recv_buffer_reassembles() {
        let mut r = RecvBuffer::new(16, 0);
        assert_eq!(r.write(4, b"efgh"), Some(0));
        assert_eq!(r.readable(), 0);
        assert_eq!(r.write(0, b"abcd"), Some(8));
        let mut out = [0u8; 16];
        assert_eq!(r.read(&mut out[..5]), 5);
        assert_eq!(&out[..5], b"abcde");
        assert_eq!(r.window(), 13);
        assert_eq!(r.write(20, b"x"), None, "beyond the ring");
        // Wraps around the ring.
        assert_eq!(r.write(0, b"0123456789abc"), Some(13));
        assert_eq!(r.read(&mut out), 16);
        assert_eq!(&out, b"fgh0123456789abc");
    }
}
