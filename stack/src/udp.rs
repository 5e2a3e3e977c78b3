//! UDP datagram sockets: bind, send_to, recv_from, with bounded preallocated queues.

use std::collections::VecDeque;
use std::net::SocketAddrV4;

/// A queue of datagrams stored back to back in one preallocated byte buffer.
#[derive(Debug, Clone)]
pub struct DatagramQueue {
    buf: Box<[u8]>,
    /// (peer, offset, len) per queued datagram, oldest first.
    meta: VecDeque<(SocketAddrV4, usize, usize)>,
    max_datagrams: usize,
}

impl DatagramQueue {
    /// A queue of at most `max_datagrams` datagrams in `bytes` bytes of storage, allocated now and
    /// never again. A datagram longer than `bytes` never fits.
    pub fn new(bytes: usize, max_datagrams: usize) -> DatagramQueue {
        DatagramQueue {
            buf: vec![0u8; bytes].into_boxed_slice(),
            meta: VecDeque::with_capacity(max_datagrams),
            max_datagrams,
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.meta.len()
    }
    /// No datagram queued.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Where the next datagram of `len` bytes can go: after the newest one, or wrapped to the
    /// start when the tail has no room (datagrams never straddle the end).
    fn place(&self, len: usize) -> Option<usize> {
        let cap = self.buf.len();
        if len > cap || self.meta.len() >= self.max_datagrams {
            return None;
        }
        let (Some(&(_, head, _)), Some(&(_, toff, tlen))) = (self.meta.front(), self.meta.back())
        else {
            return Some(0);
        };
        let tail = toff + tlen;
        if tail > head || (tail == head && self.meta.is_empty()) {
            // Used region is [head, tail): room at the end, or at the start before head.
            if cap - tail >= len {
                Some(tail)
            } else if head >= len {
                Some(0)
            } else {
                None
            }
        } else {
            // Wrapped: used is [head, cap) and [0, tail).
            (head - tail >= len).then_some(tail)
        }
    }

    /// Queue a datagram; false when it does not fit.
    pub fn push(&mut self, peer: SocketAddrV4, data: &[u8]) -> bool {
        match self.place(data.len()) {
            Some(off) => {
                self.buf[off..off + data.len()].copy_from_slice(data);
                self.meta.push_back((peer, off, data.len()));
                true
            }
            None => false,
        }
    }

    /// The oldest datagram, without removing it.
    pub fn front(&self) -> Option<(SocketAddrV4, &[u8])> {
        self.meta.front().map(|&(p, off, len)| (p, &self.buf[off..off + len]))
    }

    /// Remove the oldest datagram, if any.
    pub fn pop(&mut self) {
        self.meta.pop_front();
    }

    /// Copy the oldest datagram into `out` (truncating like recvfrom) and remove it.
    pub fn pop_into(&mut self, out: &mut [u8]) -> Option<(usize, SocketAddrV4)> {
        let (peer, data) = self.front()?;
        let n = data.len().min(out.len());
        out[..n].copy_from_slice(&data[..n]);
        self.pop();
        Some((n, peer))
    }
}

/// The datagram at the front of the send queue while it leaves in fragments (it is larger
/// than the MTU): one fragment per `poll_transmit`, straight from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxFragments {
    /// Identification shared by its fragments (RFC 791 3.2).
    pub ident: u16,
    /// The IPv4 source address of every fragment.
    pub src: std::net::Ipv4Addr,
    /// The UDP checksum over the whole datagram, computed before the first fragment.
    pub checksum: u16,
    /// Offset in the IP payload (UDP header + data) of the next fragment.
    pub next: usize,
}

/// A bound UDP socket.
#[derive(Debug, Clone)]
pub struct UdpSocket {
    /// The address bound (its IP may be `0.0.0.0`: any of the stack's addresses).
    pub local: SocketAddrV4,
    /// Datagrams received and not yet read, with their senders.
    pub rx: DatagramQueue,
    /// Datagrams waiting to be sent, with their destinations.
    pub tx: DatagramQueue,
    /// Datagrams dropped on arrival because `rx` was full.
    pub rx_dropped: u64,
    /// The front datagram of `tx` is partly sent as fragments.
    pub tx_frag: Option<TxFragments>,
}

impl UdpSocket {
    /// A socket bound to `local` with `rx_bytes` and `tx_bytes` of queue storage, at most 1024
    /// datagrams each way.
    pub fn new(local: SocketAddrV4, rx_bytes: usize, tx_bytes: usize) -> UdpSocket {
        UdpSocket {
            local,
            rx: DatagramQueue::new(rx_bytes, 1024),
            tx: DatagramQueue::new(tx_bytes, 1024),
            rx_dropped: 0,
            tx_frag: None,
        }
    }

    /// Drop the front datagram of the send queue (sent, or unroutable).
    pub fn pop_tx(&mut self) {
        self.tx.pop();
        self.tx_frag = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const P: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 9);

    #[test]
    fn queue_wraps_without_straddling() {
        let mut q = DatagramQueue::new(10, 8);
        assert!(q.push(P, b"aaaa"));
        assert!(q.push(P, b"bbbb"));
        assert!(!q.push(P, b"ccc"), "only 2 bytes at the end, none at the start");
        let mut out = [0u8; 8];
        assert_eq!(q.pop_into(&mut out), Some((4, P)));
        assert!(q.push(P, b"ccc"), "wraps to the start");
        assert!(!q.push(P, b"dd"), "only one byte free before head");
        assert_eq!(q.pop_into(&mut out), Some((4, P)));
        assert_eq!(&out[..4], b"bbbb");
        assert_eq!(q.pop_into(&mut out[..2]), Some((2, P)), "truncated like recvfrom");
        assert!(q.is_empty());
        assert!(q.push(P, b"0123456789"));
        assert!(!q.push(P, b"x"));
    }
}
