//! The blocking, std-like API for ordinary application threads.
//!
//! [`TcpListener`], [`TcpStream`] (`std::io::Read` + `Write`, also through `&TcpStream`) and
//! [`UdpSocket`] mirror `std::net`: addresses are `std::net::SocketAddr` (IPv4 only: an IPv6
//! address is refused with `ErrorKind::Unsupported`), read and write timeouts, nonblocking
//! mode (`ErrorKind::WouldBlock`), `shutdown`, `try_clone`, `set_nodelay`, listening on port 0.
//! They are reached through a [`Net`], which spans one or several poll threads (one per queue,
//! each with its own `Stack` shard and its own [`Bridge`]).
//!
//! The same `Net` serves the readiness API ([`nonblocking`]: `poll_*`, `try_*` and `async`
//! sockets, tokio's `AsyncRead`/`AsyncWrite` with the `tokio` feature), which the blocking
//! TCP sockets are built on.
//!
//! How bytes travel: each TCP connection has two bounded byte rings shared with its poll
//! thread. The poll thread copies received bytes into the receive ring as they arrive; a read
//! takes them from there, without a round trip to the poll thread. A write copies into the
//! send ring and queues the socket on its shard's dirty queue (once, an atomic flag says it is
//! there); the poll thread moves the bytes into the stack's send buffer on its next turn. A
//! call that must wait (no bytes, a full ring, a handshake under way) parks its thread with a
//! waker the poll thread wakes when that socket has news: work on the poll thread is
//! proportional to the sockets with events, and nothing is allocated per call. Control
//! (listen, connect, close, options) and UDP go through the shard's bounded command channel;
//! UDP calls lend the socket's reusable buffer to the poll thread. The poll thread's eventfd
//! ([`crate::xsk::Waker`]) is written only when it sleeps.
//!
//! Errors are `std::io::Error`s with the kinds std gives: `ConnectionRefused`,
//! `ConnectionReset`, `TimedOut` (connect), `AddrInUse`, `AddrNotAvailable`, `NotConnected`,
//! `BrokenPipe`, `WouldBlock` (nonblocking mode, and an expired read or write timeout, as std
//! on Linux), `UnexpectedEof` (`read_exact`). A call made after the poll thread stopped, or
//! blocked while it stops, fails with `ConnectionAborted`.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::channel::{self, Receiver, Sender};
use stack::iface::{ApiError, SocketHandle};
use stack::tcp;

use crate::xsk::Waker;

mod bridge;
pub mod loopback;
pub mod nonblocking;
mod pipe;
mod tcp_socket;
#[cfg(feature = "tokio")]
mod tokio_io;
mod udp_socket;

pub use bridge::Bridge;
pub use nonblocking::{TransferFailed, Transferred};
pub use tcp_socket::{Incoming, TcpListener, TcpStream, TransferListener};
pub use udp_socket::UdpSocket;

/// Bytes a socket's reusable buffers hold: the most one read or one write moves per round
/// trip to the poll thread.
pub const BUFFER: usize = 64 * 1024;

/// Commands a shard's bounded channel holds before senders wait.
const COMMANDS: usize = 4096;

/// Map the stack's errors to `std::io`.
pub fn io_error(e: ApiError, connecting: bool) -> io::Error {
    use io::ErrorKind as K;
    let kind = match e {
        ApiError::AddrInUse => K::AddrInUse,
        ApiError::AddrNotAvailable | ApiError::NoPorts => K::AddrNotAvailable,
        ApiError::NoRoute => K::HostUnreachable,
        ApiError::Tcp(tcp::Error::Reset) if connecting => K::ConnectionRefused,
        ApiError::Tcp(tcp::Error::Reset) => K::ConnectionReset,
        ApiError::Tcp(tcp::Error::TimedOut) => K::TimedOut,
        ApiError::Tcp(tcp::Error::NotConnected) => K::NotConnected,
        ApiError::Tcp(tcp::Error::Shutdown) => K::BrokenPipe,
        ApiError::Tcp(tcp::Error::WouldBlock) | ApiError::WouldBlock => K::WouldBlock,
        ApiError::MessageTooLarge => K::InvalidInput,
        ApiError::NoBuffers => K::OutOfMemory,
        ApiError::InvalidHandle | ApiError::WrongSocketType => K::InvalidInput,
    };
    io::Error::new(kind, e)
}

thread_local! {
    /// This thread is a poll thread that runs the application's tasks ([`crate::local`]).
    static POLL_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Mark this thread as a poll thread running the application's tasks: a call that would
/// wait for a poll thread's answer fails here instead of waiting for its own loop forever.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn mark_poll_thread() {
    POLL_THREAD.set(true);
}

/// `Err` (`ErrorKind::Deadlock`) on a poll thread that runs the application's tasks: a call
/// that waits for a poll thread's answer cannot be made there.
pub(crate) fn may_wait(call: &str) -> io::Result<()> {
    if POLL_THREAD.get() {
        return Err(io::Error::new(
            io::ErrorKind::Deadlock,
            format!("{call} waits for a plex poll thread, and this is one (Plex::spawn_tokio): its loop cannot answer while it waits; use the async call (TcpListener::bind_async, the async fns), or tokio::task::spawn_blocking"),
        ));
    }
    Ok(())
}

/// The poll thread of the shard has stopped (or stops while the call waits).
fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the plex poll thread has stopped")
}

/// The first IPv4 address of `addr`; IPv6 is refused (`Unsupported`): plex is IPv4 only.
fn v4(addr: impl ToSocketAddrs) -> io::Result<SocketAddrV4> {
    let mut v6 = false;
    for a in addr.to_socket_addrs()? {
        match a {
            SocketAddr::V4(a) => return Ok(a),
            SocketAddr::V6(_) => v6 = true,
        }
    }
    Err(if v6 {
        io::Error::new(io::ErrorKind::Unsupported, "plex speaks IPv4 only")
    } else {
        io::Error::new(io::ErrorKind::InvalidInput, "no address to use")
    })
}

/// Which of a socket's two reply channels a call answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

/// What an application thread asks of a poll thread. Nothing in it is allocated per call:
/// buffers are the socket's own, lent and given back; channels are created with the socket.
pub(crate) enum Cmd {
    /// A timed-out call gives up: its parked request is answered now (or was already).
    Cancel { h: SocketHandle, dir: Dir },
    Nodelay { h: SocketHandle, on: bool },
    Close { h: SocketHandle },
    UdpBind { addr: SocketAddrV4, rd: Sender<Reply>, wr: Sender<Reply>, reply: Sender<io::Result<(SocketHandle, SocketAddrV4)>> },
    UdpSend { h: SocketHandle, buf: Vec<u8>, len: usize, to: SocketAddrV4, nonblocking: bool },
    UdpRecv { h: SocketHandle, buf: Vec<u8>, nonblocking: bool },
    /// Readiness API: listen, accepted connections going to `q`.
    PipeListen { addr: SocketAddrV4, backlog: usize, q: Arc<pipe::AcceptQueue>, reply: Sender<io::Result<(SocketHandle, SocketAddrV4)>> },
    /// Readiness API: connect; the answer comes through the pipe.
    PipeConnect { addr: SocketAddrV4, pipe: Arc<pipe::Pipe> },
    /// Readiness API: socket `h` has work (when its shard's dirty queue was full).
    Service { h: SocketHandle },
    /// Move connection `h` to the cluster's stack `to` (live handoff, spec/04); the answer
    /// comes in `slot`. One allocation per transfer, none per byte.
    Transfer { h: SocketHandle, to: String, app_state: Vec<u8>, unconditional: bool, slot: Arc<pipe::TransferSlot> },
    /// Take the connections transferred to this shard for `addr` (unspecified address or
    /// port 0: any) into `q`.
    TransferListen { addr: SocketAddrV4, q: Arc<pipe::AcceptQueue> },
    /// Stop taking them (the connections waiting in `q` are closed).
    TransferUnlisten { q: Arc<pipe::AcceptQueue> },
}

/// A poll thread's answer on a UDP socket's reply channel: a lent buffer comes back with
/// the call's result (bytes received or sent) and, for a datagram received, its sender.
pub(crate) struct Reply {
    pub(crate) buf: Vec<u8>,
    pub(crate) result: io::Result<usize>,
    pub(crate) from: Option<SocketAddrV4>,
}

/// A socket's reply senders (read, write), held by the poll thread.
pub(crate) type ReplySenders = (Sender<Reply>, Sender<Reply>);
/// A socket's reply receivers (read, write), held by the application side.
pub(crate) type ReplyReceivers = (Receiver<Reply>, Receiver<Reply>);

/// The channels of one socket: the poll thread's senders, the application's receivers.
/// Read replies: one at a time; write replies: a connect sends two.
pub(crate) fn socket_channels() -> (ReplySenders, ReplyReceivers) {
    let (rd_tx, rd_rx) = channel::bounded(1);
    let (wr_tx, wr_rx) = channel::bounded(2);
    ((rd_tx, wr_tx), (rd_rx, wr_rx))
}

/// Sockets of the readiness API with work for their poll thread, per shard: room for this
/// many before notifications fall back to the command channel.
const DIRTY: usize = 1 << 16;

/// One poll thread as the application threads see it.
struct Shard {
    tx: Sender<Cmd>,
    waker: Option<Arc<Waker>>,
    /// Readiness API sockets with news for the poll thread (each at most once).
    dirty: Arc<crossbeam::queue::ArrayQueue<SocketHandle>>,
}

struct NetInner {
    shards: Vec<Shard>,
    /// Round robin of `connect` over the shards.
    next: AtomicUsize,
}

/// The application threads' side of one or several poll threads: cheap to clone,
/// `Send + Sync`. Made by [`bridge`] (one poll thread) or [`bridges`] (one per queue).
#[derive(Clone)]
pub struct Net {
    inner: Arc<NetInner>,
}

impl core::fmt::Debug for Net {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Net").field("shards", &self.inner.shards.len()).finish()
    }
}

/// Create the two ends for one poll thread: `Net` for application threads, `Bridge` to run
/// on the poll thread (woken through `waker` when it sleeps).
pub fn bridge(waker: Option<Arc<Waker>>) -> (Net, Bridge) {
    let (net, mut b) = bridges(vec![waker]);
    (net, b.remove(0))
}

/// Create a `Net` spanning several poll threads, one per waker given (`None`: a poll thread
/// that never sleeps), and their bridges, in the same order: bridge `k` runs on the poll
/// thread of queue `k`. Listeners exist on every shard and `accept` takes from any of them;
/// an accepted connection is served by the shard that accepted it; `connect` picks shards in
/// turn.
pub fn bridges(wakers: Vec<Option<Arc<Waker>>>) -> (Net, Vec<Bridge>) {
    assert!(!wakers.is_empty(), "a Net needs at least one poll thread");
    let mut shards = Vec::new();
    let mut bridges = Vec::new();
    for waker in wakers {
        let (tx, rx) = channel::bounded(COMMANDS);
        let dirty = Arc::new(crossbeam::queue::ArrayQueue::new(DIRTY));
        shards.push(Shard { tx, waker, dirty: dirty.clone() });
        bridges.push(Bridge::new(rx, dirty));
    }
    (Net { inner: Arc::new(NetInner { shards, next: AtomicUsize::new(0) }) }, bridges)
}

impl Net {
    /// How many poll threads (queues) this `Net` spans.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// A `Net` of shard `k` alone (the tasks of its own poll thread, [`crate::local`]).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn only(&self, k: usize) -> Net {
        let s = &self.inner.shards[k];
        let shard = Shard { tx: s.tx.clone(), waker: s.waker.clone(), dirty: s.dirty.clone() };
        Net { inner: Arc::new(NetInner { shards: vec![shard], next: AtomicUsize::new(0) }) }
    }

    /// Send a command to shard `k` and wake its poll thread.
    pub(crate) fn send(&self, k: usize, cmd: Cmd) -> io::Result<()> {
        let s = &self.inner.shards[k];
        s.tx.send(cmd).map_err(|_| gone())?;
        if let Some(w) = &s.waker {
            w.wake();
        }
        Ok(())
    }

    /// Tell shard `k` that readiness-API socket `h` has work, unless `queued` says it
    /// already knows; wake it if it sleeps. No allocation, and no syscall while it runs.
    pub(crate) fn notify(&self, k: usize, h: SocketHandle, queued: &std::sync::atomic::AtomicBool) {
        if queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let s = &self.inner.shards[k];
        if s.dirty.push(h).is_err() {
            // More sockets with news than the queue holds: the channel is the slow road.
            let _ = s.tx.send(Cmd::Service { h });
        }
        if let Some(w) = &s.waker {
            w.wake();
        }
    }

    /// The shard the next `connect` goes to.
    pub(crate) fn next_shard(&self) -> usize {
        self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.shards.len()
    }

    /// Listen on `addr`, like `std::net::TcpListener::bind` (port 0: a free port is chosen,
    /// the same on every shard). `backlog` bounds the connections each shard has accepted
    /// that wait for `accept`.
    pub fn tcp_listen(&self, addr: impl ToSocketAddrs, backlog: usize) -> io::Result<TcpListener> {
        TcpListener::bind_with(self, v4(addr)?, backlog)
    }

    /// Connect to `addr`, like `std::net::TcpStream::connect`.
    pub fn tcp_connect(&self, addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        TcpStream::connect(self, addr)
    }

    /// A UDP socket on `addr`, like `std::net::UdpSocket::bind` (port 0: an ephemeral port).
    pub fn udp_bind(&self, addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        UdpSocket::bind(self, addr)
    }
}

/// A socket's timeout, as std takes it: `Some(0)` is refused.
fn check_timeout(t: Option<std::time::Duration>) -> io::Result<()> {
    if t == Some(std::time::Duration::ZERO) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot set a 0 duration timeout"));
    }
    Ok(())
}

/// Wait for the reply to a call on `replies`, at most `timeout`; past it the call is
/// cancelled (`Cmd::Cancel`) and its reply, which then comes at once, is returned with
/// `true` (timed out).
fn wait_reply(net: &Net, shard: usize, h: SocketHandle, dir: Dir, replies: &Receiver<Reply>, timeout: Option<std::time::Duration>) -> io::Result<(Reply, bool)> {
    may_wait("a UDP call")?;
    match timeout {
        None => replies.recv().map(|r| (r, false)).map_err(|_| gone()),
        Some(t) => match replies.recv_timeout(t) {
            Ok(r) => Ok((r, false)),
            Err(channel::RecvTimeoutError::Disconnected) => Err(gone()),
            Err(channel::RecvTimeoutError::Timeout) => {
                net.send(shard, Cmd::Cancel { h, dir })?;
                replies.recv().map(|r| (r, true)).map_err(|_| gone())
            }
        },
    }
}

/// Timeouts kept as nanoseconds in an atomic (0: none), as std keeps them per socket.
#[derive(Debug, Default)]
pub(crate) struct Timeout(std::sync::atomic::AtomicU64);

impl Timeout {
    pub(crate) fn set(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        check_timeout(t)?;
        let ns = t.map(|d| d.as_nanos().clamp(1, u64::MAX as u128) as u64).unwrap_or(0);
        self.0.store(ns, Ordering::Relaxed);
        Ok(())
    }
    pub(crate) fn get(&self) -> Option<std::time::Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(std::time::Duration::from_nanos(ns)),
        }
    }
}

#[cfg(test)]
mod tests;
