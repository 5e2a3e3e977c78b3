//! The byte pipes between a connection on a poll thread and its application-side stream, for
//! the readiness API ([`super::nonblocking`]).
//!
//! Each connection has two bounded byte rings shared by the poll thread and the application:
//! received bytes go from the stack into `rx` as soon as they arrive (the application reads
//! them without a round trip to the poll thread); bytes written go into `tx`, and the poll
//! thread moves them into the stack's send buffer. Each ring sits in a `parking_lot` mutex
//! with its side's `std::task::Waker`: a side finding nothing to do stores its waker under the
//! same lock the other side takes to change the ring, so no wake-up is lost. The application
//! tells the poll thread about new work by queueing the socket's handle on its shard's dirty
//! queue (once: a flag says it is queued) and waking the poll thread if it sleeps.

use std::sync::atomic::AtomicBool;
use std::task::Waker;

use parking_lot::Mutex;
use stack::iface::{ApiError, SocketHandle};

/// The most bytes each ring of a connection holds (allocated as it fills: an idle connection
/// holds none).
pub const PIPE_BYTES: usize = 64 * 1024;

/// A bounded ring of bytes, grown on demand up to its limit.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    buf: Vec<u8>,
    head: usize,
    len: usize,
}

impl Ring {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that still fit (counting what growing the buffer would add).
    pub(crate) fn room(&self) -> usize {
        PIPE_BYTES - self.len
    }

    /// Make the buffer hold at least `want` more bytes (within the limit), keeping the
    /// content in order at its start.
    fn grow(&mut self, want: usize) {
        let need = (self.len + want).min(PIPE_BYTES);
        if need <= self.buf.len() {
            return;
        }
        let cap = need.next_power_of_two().clamp(4096, PIPE_BYTES);
        let mut buf = vec![0u8; cap];
        let (a, b) = self.readable();
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..a.len() + b.len()].copy_from_slice(b);
        self.buf = buf;
        self.head = 0;
    }

    /// The content, oldest first, in at most two slices.
    pub(crate) fn readable(&self) -> (&[u8], &[u8]) {
        let cap = self.buf.len();
        if self.head + self.len <= cap {
            (&self.buf[self.head..self.head + self.len], &[])
        } else {
            (&self.buf[self.head..], &self.buf[..self.head + self.len - cap])
        }
    }

    /// Drop the oldest `n` bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        self.len -= n;
        self.head = if self.len == 0 { 0 } else { (self.head + n) % self.buf.len() };
    }

    /// The free space after the content, contiguous, for about `want` more bytes (grows the
    /// buffer if needed); fill it, then [`commit`](Ring::commit).
    pub(crate) fn free(&mut self, want: usize) -> &mut [u8] {
        if self.room() == 0 {
            return &mut [];
        }
        if self.buf.len() - self.len < want.min(self.room()) {
            self.grow(want);
        }
        let cap = self.buf.len();
        let tail = (self.head + self.len) % cap.max(1);
        if self.head + self.len < cap {
            &mut self.buf[tail..]
        } else {
            &mut self.buf[tail..self.head]
        }
    }

    /// `n` bytes of [`free`](Ring::free)'s slice were filled.
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Append what fits of `data`; how much.
    pub(crate) fn push(&mut self, mut data: &[u8]) -> usize {
        let mut done = 0;
        while !data.is_empty() {
            let free = self.free(data.len());
            let n = free.len().min(data.len());
            if n == 0 {
                break;
            }
            free[..n].copy_from_slice(&data[..n]);
            self.commit(n);
            data = &data[n..];
            done += n;
        }
        done
    }

    /// Take the oldest bytes into `out`; how many.
    pub(crate) fn pop(&mut self, out: &mut [u8]) -> usize {
        let (a, b) = self.readable();
        let n1 = a.len().min(out.len());
        out[..n1].copy_from_slice(&a[..n1]);
        let n2 = b.len().min(out.len() - n1);
        out[n1..n1 + n2].copy_from_slice(&b[..n2]);
        self.consume(n1 + n2);
        n1 + n2
    }
}

/// The receive side: filled by the poll thread, read by the application.
#[derive(Debug, Default)]
pub(crate) struct RxSide {
    pub(crate) ring: Ring,
    /// The application's reader waiting for bytes, end of stream or an error.
    pub(crate) waker: Option<Waker>,
    /// The peer's FIN was read from the stack (after the ring's bytes, reads return 0).
    pub(crate) eof: bool,
    /// The connection failed (after the ring's bytes, reads return it).
    pub(crate) error: Option<ApiError>,
    /// The poll thread stopped reading the stack because the ring was full: the application
    /// must tell it when it has made room.
    pub(crate) stalled: bool,
    /// The poll thread has stopped: nothing more will come.
    pub(crate) gone: bool,
}

/// Where a connection is, as its application side sees it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `connect` sent, not established yet.
    #[default]
    Connecting,
    /// Established (or accepted).
    Open,
    /// The connect failed.
    Failed(ApiError),
}

/// The send side: filled by the application, emptied by the poll thread.
#[derive(Debug, Default)]
pub(crate) struct TxSide {
    pub(crate) ring: Ring,
    /// The application's writer waiting for room (or a connect waiting for its answer).
    pub(crate) waker: Option<Waker>,
    pub(crate) phase: Phase,
    /// The connection's handle and local address, once the poll thread made it.
    pub(crate) opened: Option<(SocketHandle, std::net::SocketAddrV4)>,
    /// Sending failed (reset, ...): writes return it.
    pub(crate) error: Option<ApiError>,
    /// The application shut down writing: a FIN after the ring's bytes.
    pub(crate) shut: bool,
    /// The application dropped the stream: close after the ring's bytes.
    pub(crate) closed: bool,
    /// The poll thread has stopped: nothing more will be sent.
    pub(crate) gone: bool,
}

/// What the poll thread and the application share about one connection.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    pub(crate) rx: Mutex<RxSide>,
    pub(crate) tx: Mutex<TxSide>,
    /// The socket is on its shard's dirty queue (set by the application when it queues it,
    /// cleared by the poll thread when it takes it).
    pub(crate) queued: AtomicBool,
}

/// A connection a listener's shard accepted, waiting for `accept`.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) h: SocketHandle,
    pub(crate) pipe: std::sync::Arc<Pipe>,
    pub(crate) local: std::net::SocketAddrV4,
    pub(crate) peer: std::net::SocketAddrV4,
    /// A connection that moved here from another stack (or another application of this one):
    /// its source stack and the state its application sent along.
    pub(crate) moved: Option<(String, Vec<u8>)>,
}

/// The poll thread's answer to a transfer ([`super::nonblocking::TcpStream::transfer`]).
#[derive(Debug)]
pub(crate) enum TransferReply {
    /// The target took the connection.
    Moved { to: String },
    /// The connection stayed here (refused, the target died, or the transfer could not
    /// start), now under handle `h`.
    Kept { h: SocketHandle, error: ApiOrIo },
    /// The connection is lost to this stack (it could not be re-installed).
    Lost { error: ApiOrIo },
}

/// Why a transfer did not happen: the message says it all, the kind is std's.
#[derive(Debug)]
pub(crate) struct ApiOrIo {
    pub(crate) kind: std::io::ErrorKind,
    pub(crate) msg: String,
}

/// Where the poll thread puts its answer to a transfer, and the waker of the task waiting
/// for it.
#[derive(Debug, Default)]
pub(crate) struct TransferSlot {
    pub(crate) inner: Mutex<SlotState>,
}

/// A [`TransferSlot`]'s content.
#[derive(Debug, Default)]
pub(crate) struct SlotState {
    pub(crate) reply: Option<TransferReply>,
    pub(crate) waker: Option<Waker>,
    /// The poll thread stopped before answering.
    pub(crate) gone: bool,
    /// The application stopped waiting (its future was dropped).
    pub(crate) abandoned: bool,
}

impl TransferSlot {
    /// Answer (the poll thread). False if nobody waits any more: a connection that came back
    /// is then the poll thread's to close.
    pub(crate) fn answer(&self, r: TransferReply) -> bool {
        let w = {
            let mut g = self.inner.lock();
            if g.abandoned {
                return false;
            }
            g.reply = Some(r);
            g.waker.take()
        };
        wake(w);
        true
    }
    /// The poll thread stopped before answering.
    pub(crate) fn gone(&self) {
        let w = {
            let mut g = self.inner.lock();
            g.gone = true;
            g.waker.take()
        };
        wake(w);
    }
}

/// One shard's queue of accepted connections for a listener of the readiness API.
#[derive(Debug, Default)]
pub(crate) struct AcceptInner {
    pub(crate) q: std::collections::VecDeque<Incoming>,
    /// How many connections may wait (the listener's backlog).
    pub(crate) cap: usize,
    pub(crate) waker: Option<Waker>,
    /// The poll thread left connections in the stack's accept queue for lack of room here.
    pub(crate) stalled: bool,
    /// The poll thread has stopped.
    pub(crate) gone: bool,
}

/// What a listener's shard and the application share.
#[derive(Debug, Default)]
pub(crate) struct AcceptQueue {
    pub(crate) inner: Mutex<AcceptInner>,
    /// On the shard's dirty queue.
    pub(crate) queued: AtomicBool,
}

/// Wake `w` if there is one (outside any lock).
pub(crate) fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

/// Keep `cx`'s waker in `slot` (cloned only when it changed).
pub(crate) fn register(slot: &mut Option<Waker>, w: &Waker) {
    match slot {
        Some(old) if old.will_wake(w) => {}
        _ => *slot = Some(w.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_order_across_wrap_and_growth() {
        let mut r = Ring::default();
        let mut model = std::collections::VecDeque::new();
        let mut x = 7u32;
        let mut out = vec![0u8; 9000];
        for round in 0..2000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = (x >> 8) as usize % 7000;
            if round % 3 != 2 {
                let data: Vec<u8> = (0..n).map(|i| (i as u32 ^ x) as u8).collect();
                let pushed = r.push(&data);
                assert_eq!(pushed, n.min(PIPE_BYTES - model.len()));
                model.extend(&data[..pushed]);
            } else {
                let got = r.pop(&mut out[..n]);
                assert_eq!(got, n.min(model.len()));
                let want: Vec<u8> = model.drain(..got).collect();
                assert_eq!(&out[..got], &want[..]);
            }
            assert_eq!(r.len(), model.len());
            assert!(r.buf.len() <= PIPE_BYTES);
        }
    }

    #[test]
    fn a_full_ring_takes_nothing_and_offers_no_space() {
        let mut r = Ring::default();
        assert_eq!(r.push(&vec![1u8; PIPE_BYTES + 10]), PIPE_BYTES);
        assert_eq!(r.room(), 0);
        assert!(r.free(100).is_empty());
        let mut out = [0u8; 10];
        assert_eq!(r.pop(&mut out), 10);
        assert_eq!(r.free(100).len(), 10);
    }
}
