//! The readiness API: non-blocking TCP sockets for event loops and `async` code.
//!
//! [`TcpListener`] and [`TcpStream`] have the shape of tokio's: `poll_*` methods taking a
//! `std::task::Context`, `async fn`s built on them (`accept`, `connect`, `read`, `write_all`,
//! `readable`, `writable`), and `try_*` methods that return `ErrorKind::WouldBlock` instead of
//! waiting. With the `tokio` feature, [`TcpStream`] implements tokio's `AsyncRead` and
//! `AsyncWrite`, so tokio code (a hyper server, say) runs on plex unchanged but for how it
//! opens its sockets. Nothing here depends on a runtime: any executor's wakers work, and an
//! event loop that waits on file descriptors gets one from [`Notifier`].
//!
//! ```no_run
//! # async fn run(net: poll_loop::api::Net) -> std::io::Result<()> {
//! use poll_loop::api::nonblocking::TcpListener;
//! let listener = TcpListener::bind(&net, "198.18.0.11:8080")?;
//! loop {
//!     let (stream, _peer) = listener.accept().await?;
//!     let mut buf = [0u8; 1024];
//!     while let n @ 1.. = stream.read(&mut buf).await? {
//!         stream.write_all(&buf[..n]).await?;
//!     }
//! }
//! # }
//! ```
//!
//! How bytes travel: each connection has two bounded byte rings shared with its poll thread.
//! The poll thread copies received bytes into the receive ring as they arrive and wakes the
//! reader; a read takes them without a round trip to the poll thread. A write copies into the
//! send ring and queues the socket on its poll thread's dirty queue (an atomic flag keeps it
//! there once; the poll thread is woken only if it sleeps), which moves the bytes into the
//! stack's send buffer on its next turn. A write returns once its bytes are in the ring, as a
//! kernel socket's once they are in the send buffer; a read after the peer's FIN returns 0.
//! Dropping a stream closes it after its written bytes are sent (a RST if received bytes
//! were left unread, as a kernel socket).

use std::future::poll_fn;
use std::io;
use std::net::{Shutdown, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use crossbeam::channel;
use parking_lot::Mutex;
use stack::iface::SocketHandle;

use super::pipe::{self, AcceptQueue, Phase, Pipe};
use super::{gone, io_error, v4, Cmd, Net};
use crate::xsk::EventFd;

/// A TCP listener of the readiness API: one listening socket on every shard of its [`Net`];
/// `accept` takes from whichever has a connection.
#[derive(Debug)]
pub struct TcpListener {
    net: Net,
    /// Each shard's listening socket and accept queue, in shard order.
    shards: Vec<(SocketHandle, Arc<AcceptQueue>)>,
    local: SocketAddrV4,
    /// Where the next accept starts looking (fairness between shards).
    next: AtomicUsize,
}

/// A shard's answer to a listen: the listening socket and the address (port chosen).
type ListenAnswer = io::Result<(SocketHandle, SocketAddrV4)>;

impl TcpListener {
    /// Listen on `addr` (port 0: a free port, the same on every shard), with a backlog of
    /// 1024 accepted connections per shard. Returns once every shard listens.
    pub fn bind(net: &Net, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        TcpListener::bind_with_backlog(net, addr, 1024)
    }

    /// As [`bind`](TcpListener::bind), with `backlog` connections per shard waiting for
    /// `accept` at most (the others wait in the stack's accept queue, then SYNs are dropped).
    ///
    /// This waits for every shard's poll thread: on a poll thread that runs the application's
    /// tasks ([`crate::Plex::spawn_tokio`]) it fails (`ErrorKind::Deadlock`); use
    /// [`bind_async`](TcpListener::bind_async) there.
    pub fn bind_with_backlog(net: &Net, addr: impl ToSocketAddrs, backlog: usize) -> io::Result<TcpListener> {
        super::may_wait("TcpListener::bind")?;
        let mut l = TcpListener { net: net.clone(), shards: Vec::new(), local: v4(addr)?, next: AtomicUsize::new(0) };
        for shard in 0..net.shards() {
            let (q, wait) = l.ask_listen(shard, backlog)?;
            // On an error, dropping `l` closes the shards already listening.
            let (h, local) = wait.recv().map_err(|_| gone())??;
            l.local = local;
            l.shards.push((h, q));
        }
        Ok(l)
    }

    /// Ask `shard` to listen on this listener's address (the port chosen so far): its accept
    /// queue, and where its answer comes.
    fn ask_listen(&self, shard: usize, backlog: usize) -> io::Result<(Arc<AcceptQueue>, channel::Receiver<ListenAnswer>)> {
        let q = Arc::new(AcceptQueue::default());
        q.inner.lock().cap = backlog.max(1);
        let (reply, wait) = channel::bounded(1);
        self.net.send(shard, Cmd::PipeListen { addr: self.local, backlog, q: q.clone(), reply })?;
        Ok((q, wait))
    }

    /// As [`bind`](TcpListener::bind), without blocking the thread: the task yields until
    /// every shard listens (a poll thread answers within its next turn). The way to listen
    /// on a poll thread that runs the application's tasks ([`crate::Plex::spawn_tokio`]);
    /// any executor.
    pub async fn bind_async(net: &Net, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let mut l = TcpListener { net: net.clone(), shards: Vec::new(), local: v4(addr)?, next: AtomicUsize::new(0) };
        for shard in 0..net.shards() {
            let (q, wait) = l.ask_listen(shard, 1024)?;
            // The answer has no waker of its own: look again after the other tasks (and, on
            // a poll thread, its loop's turn) had their go. On an error, dropping `l` closes
            // the shards already listening.
            let (h, local) = poll_fn(|cx| match wait.try_recv() {
                Ok(r) => Poll::Ready(r),
                Err(channel::TryRecvError::Disconnected) => Poll::Ready(Err(gone())),
                Err(channel::TryRecvError::Empty) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            })
            .await?;
            l.local = local;
            l.shards.push((h, q));
        }
        Ok(l)
    }

    /// The address listened on (with the port chosen, for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }

    /// A connection if one is waiting; otherwise `cx`'s waker is woken when one comes.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let polled = poll_queues(cx, start, self.shards.len(), |k| &self.shards[k].1, |k| {
            let (h, q) = &self.shards[k];
            self.net.notify(k, *h, &q.queued);
        });
        polled.map_ok(|(shard, a)| {
            let peer = SocketAddr::V4(a.peer);
            (TcpStream { net: self.net.clone(), shard, h: a.h, pipe: a.pipe, local: a.local, peer: a.peer, detached: false }, peer)
        })
    }

    /// Wait for a connection, like tokio's `TcpListener::accept`.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// A connection if one is waiting, else `WouldBlock`.
    pub fn try_accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match self.poll_accept(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Take a waiting connection from the first of `n` shards' accept queues that has one,
/// starting at shard `start % n` (fairness between shards); `refill(shard)` when that shard's
/// poll thread had stopped filling the queue for lack of room. Otherwise `cx` is registered
/// with every queue still served, or the poll threads have all stopped.
fn poll_queues<'a>(
    cx: &mut Context<'_>,
    start: usize,
    n: usize,
    queue: impl Fn(usize) -> &'a AcceptQueue,
    refill: impl FnOnce(usize),
) -> Poll<io::Result<(usize, pipe::Incoming)>> {
    let mut stopped = 0;
    for i in 0..n {
        let shard = (start + i) % n;
        let mut inner = queue(shard).inner.lock();
        if let Some(a) = inner.q.pop_front() {
            let stalled = std::mem::take(&mut inner.stalled);
            drop(inner);
            if stalled {
                refill(shard);
            }
            return Poll::Ready(Ok((shard, a)));
        }
        if inner.gone {
            stopped += 1;
        } else {
            pipe::register(&mut inner.waker, cx.waker());
        }
    }
    if stopped == n {
        Poll::Ready(Err(gone()))
    } else {
        Poll::Pending
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        for (shard, (h, _)) in self.shards.iter().enumerate() {
            let _ = self.net.send(shard, Cmd::Close { h: *h });
        }
    }
}

/// A TCP connection of the readiness API.
///
/// Reads and writes take `&self`: one task may read while another writes (share the stream
/// in an `Arc`). Like tokio's, a stream keeps one waker per direction: two tasks reading at
/// once wake each other's turn only.
#[derive(Debug)]
pub struct TcpStream {
    net: Net,
    shard: usize,
    h: SocketHandle,
    pipe: Arc<Pipe>,
    local: SocketAddrV4,
    peer: SocketAddrV4,
    /// Handed to a transfer: dropping this value closes nothing.
    detached: bool,
}

/// Gives up a connect that is dropped before it finishes (its future was cancelled).
struct ConnectGuard<'a> {
    net: &'a Net,
    shard: usize,
    pipe: Option<Arc<Pipe>>,
}

impl Drop for ConnectGuard<'_> {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else { return };
        let opened = {
            let mut tx = pipe.tx.lock();
            tx.closed = true;
            tx.opened
        };
        // Not made yet: the poll thread sees `closed` when it makes it, and aborts.
        if let Some((h, _)) = opened {
            self.net.notify(self.shard, h, &pipe.queued);
        }
    }
}

impl TcpStream {
    /// Connect to `addr` (the shards in turn), like tokio's `TcpStream::connect`: ready once
    /// the handshake is over (`ConnectionRefused` on a RST, `TimedOut` when the SYNs are not
    /// answered). Dropping the future aborts the attempt.
    pub async fn connect(net: &Net, addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let addr = v4(addr)?;
        let shard = net.next_shard();
        let pipe = Arc::new(Pipe::default());
        net.send(shard, Cmd::PipeConnect { addr, pipe: pipe.clone() })?;
        let mut guard = ConnectGuard { net, shard, pipe: Some(pipe.clone()) };
        let (h, local) = poll_fn(|cx| {
            let mut tx = pipe.tx.lock();
            match (tx.phase, tx.opened) {
                (Phase::Open, Some(opened)) => Poll::Ready(Ok(opened)),
                (Phase::Failed(e), _) => Poll::Ready(Err(io_error(e, true))),
                _ if tx.gone => Poll::Ready(Err(gone())),
                _ => {
                    pipe::register(&mut tx.waker, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await?;
        guard.pipe = None;
        Ok(TcpStream { net: net.clone(), shard, h, pipe, local, peer: addr, detached: false })
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.peer))
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }

    /// Set TCP_NODELAY (disable Nagle's algorithm).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.net.send(self.shard, Cmd::Nodelay { h: self.h, on })
    }

    /// Tell the poll thread this stream has work for it.
    fn notify(&self) {
        self.net.notify(self.shard, self.h, &self.pipe.queued);
    }

    /// Read into `buf`: the bytes received (0: end of stream, or `buf` is empty), or an
    /// error; otherwise `cx`'s waker is woken when there is something to read.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.read_with(Some(cx), buf)
    }

    /// Read what has been received, or `WouldBlock`.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.read_with(None, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn read_with(&self, cx: Option<&mut Context<'_>>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut rx = self.pipe.rx.lock();
        if !rx.ring.is_empty() {
            let n = rx.ring.pop(buf);
            let refill = std::mem::take(&mut rx.stalled);
            drop(rx);
            if refill {
                self.notify();
            }
            return Poll::Ready(Ok(n));
        }
        if rx.eof {
            return Poll::Ready(Ok(0));
        }
        if let Some(e) = rx.error {
            return Poll::Ready(Err(io_error(e, false)));
        }
        if rx.gone {
            return Poll::Ready(Err(gone()));
        }
        if let Some(cx) = cx {
            pipe::register(&mut rx.waker, cx.waker());
        }
        Poll::Pending
    }

    /// Ready when a read would not wait (bytes, end of stream or an error); otherwise `cx`'s
    /// waker is woken when it would not.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut rx = self.pipe.rx.lock();
        if !rx.ring.is_empty() || rx.eof || rx.error.is_some() || rx.gone {
            return Poll::Ready(Ok(()));
        }
        pipe::register(&mut rx.waker, cx.waker());
        Poll::Pending
    }

    /// Write what fits of `buf` into the send ring: how many bytes (at least 1 for a
    /// non-empty `buf`), or an error; otherwise `cx`'s waker is woken when there is room.
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_with(Some(cx), buf)
    }

    /// Write what fits, or `WouldBlock`.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self.write_with(None, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_with(&self, cx: Option<&mut Context<'_>>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut tx = self.pipe.tx.lock();
        if let Some(e) = tx.error {
            return Poll::Ready(Err(io_error(e, false)));
        }
        if tx.shut {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the stream was shut down for writing")));
        }
        if tx.gone {
            return Poll::Ready(Err(gone()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = tx.ring.push(buf);
        if n > 0 {
            drop(tx);
            self.notify();
            return Poll::Ready(Ok(n));
        }
        if let Some(cx) = cx {
            pipe::register(&mut tx.waker, cx.waker());
        }
        Poll::Pending
    }

    /// Ready when a write would not wait (room, or an error); otherwise `cx`'s waker is woken
    /// when it would not.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut tx = self.pipe.tx.lock();
        if tx.ring.room() > 0 || tx.error.is_some() || tx.shut || tx.gone {
            return Poll::Ready(Ok(()));
        }
        pipe::register(&mut tx.waker, cx.waker());
        Poll::Pending
    }

    /// Shut down writing (a FIN after the bytes written), reading (later reads return end of
    /// stream) or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            let mut rx = self.pipe.rx.lock();
            rx.eof = true;
            let n = rx.ring.len();
            rx.ring.consume(n);
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            let mut tx = self.pipe.tx.lock();
            if tx.shut {
                return Ok(());
            }
            tx.shut = true;
            drop(tx);
            self.notify();
        }
        Ok(())
    }

    /// Wait until a read would not wait.
    pub async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Wait until a write would not wait.
    pub async fn writable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_ready(cx)).await
    }

    /// Read into `buf` (0: end of stream).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    /// Write what fits of `buf`, waiting for room if none.
    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_write(cx, buf)).await
    }

    /// Write all of `buf`.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }
}

impl Drop for TcpStream {
    /// Close: after the bytes written are sent (a RST if received bytes were left unread).
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.pipe.tx.lock().closed = true;
        self.notify();
    }
}

// Live handoff (spec/04) ---------------------------------------------------------------------

/// A transfer that did not happen ([`TcpStream::transfer`]): why, and the stream if the
/// connection is still here (the target refused it, did not answer in time, or the transfer
/// could not start). Converts into the `io::Error`.
#[derive(Debug)]
pub struct TransferFailed<S = TcpStream> {
    /// Why: `ConnectionRefused` (the target refused, or the offer failed), `TimedOut` (the
    /// target did not decide in time), `InvalidInput` (no such stack, not a cluster member,
    /// a connection that cannot move), `ConnectionAborted` (the poll thread stopped, or the
    /// connection could not be re-installed).
    pub error: io::Error,
    /// The connection, still here and usable.
    pub stream: Option<S>,
}

impl<S: std::fmt::Debug> std::fmt::Display for TransferFailed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "transfer failed: {}{}", self.error, if self.stream.is_some() { " (the connection stays here)" } else { "" })
    }
}

impl<S: std::fmt::Debug> std::error::Error for TransferFailed<S> {}

impl<S> From<TransferFailed<S>> for io::Error {
    fn from(t: TransferFailed<S>) -> io::Error {
        t.error
    }
}

impl TcpStream {
    /// Move this connection, live, to the cluster's stack `to` (spec/04): the peer notices
    /// nothing (no FIN, no RST, no byte lost or repeated). The bytes this stream holds go
    /// with it in their place: those received and not read yet are read first on the target,
    /// those written and not sent yet are sent there. `app_state` reaches the target's
    /// [`TransferListener`] untouched. Returns the target's name once it took the connection;
    /// on a refusal the stream comes back in [`TransferFailed::stream`].
    ///
    /// A transfer to this very stack hands the connection to this stack's own transfer
    /// listener without serializing it. A stream shut down for writing does not move.
    pub async fn transfer(self, to: &str, app_state: &[u8]) -> Result<String, TransferFailed> {
        self.transfer_with(to, app_state, false).await
    }

    /// As [`transfer`](TcpStream::transfer), and the target takes it without asking its
    /// application (it still needs a transfer listener to serve it).
    pub async fn transfer_unconditional(self, to: &str, app_state: &[u8]) -> Result<String, TransferFailed> {
        self.transfer_with(to, app_state, true).await
    }

    async fn transfer_with(mut self, to: &str, app_state: &[u8], unconditional: bool) -> Result<String, TransferFailed> {
        let slot = Arc::new(pipe::TransferSlot::default());
        let cmd = Cmd::Transfer { h: self.h, to: to.to_string(), app_state: app_state.to_vec(), unconditional, slot: slot.clone() };
        if let Err(error) = self.net.send(self.shard, cmd) {
            return Err(TransferFailed { error, stream: Some(self) });
        }
        // From here the poll thread owns the connection until it answers.
        self.detached = true;
        /// A transfer whose future is dropped before the answer: the poll thread closes the
        /// connection if it comes back.
        struct Abandon<'a>(&'a pipe::TransferSlot, bool);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.inner.lock().abandoned = true;
                }
            }
        }
        let mut guard = Abandon(&slot, false);
        let reply = poll_fn(|cx| {
            let mut g = slot.inner.lock();
            if let Some(r) = g.reply.take() {
                return Poll::Ready(Some(r));
            }
            if g.gone {
                return Poll::Ready(None);
            }
            pipe::register(&mut g.waker, cx.waker());
            Poll::Pending
        })
        .await;
        guard.1 = true;
        drop(guard);
        match reply {
            Some(pipe::TransferReply::Moved { to }) => Ok(to),
            Some(pipe::TransferReply::Kept { h, error }) => {
                self.h = h;
                self.detached = false;
                Err(TransferFailed { error: io::Error::new(error.kind, error.msg), stream: Some(self) })
            }
            Some(pipe::TransferReply::Lost { error }) => Err(TransferFailed { error: io::Error::new(error.kind, error.msg), stream: None }),
            None => Err(TransferFailed { error: gone(), stream: None }),
        }
    }
}

/// Where a transferred connection came from ([`TransferListener::accept`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    /// The source stack's name (this stack's, for a connection that only changed hands).
    pub from: String,
    /// The peer.
    pub peer: SocketAddr,
    /// The state the source application sent along.
    pub app_state: Vec<u8>,
}

/// A *transfer listener* (spec/04): its `accept` returns the connections other stacks (or
/// other tasks of this one) transferred here for its address, never a new connection. Offers
/// for an address no transfer listener takes are refused, and the connection stays with its
/// source.
///
/// ```no_run
/// # async fn run(net: poll_loop::api::Net) -> std::io::Result<()> {
/// use poll_loop::api::nonblocking::TransferListener;
/// let moved_in = TransferListener::bind(&net, "198.18.0.102:80")?;
/// loop {
///     let (stream, how) = moved_in.accept().await?;
///     // `how.app_state` is what the source application sent; the request it had not read
///     // yet is still there to read.
///     let mut buf = [0u8; 4096];
///     let n = stream.read(&mut buf).await?;
///     stream.write_all(&buf[..n]).await?;
/// #   let _ = how;
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct TransferListener {
    net: Net,
    shards: Vec<Arc<AcceptQueue>>,
    local: SocketAddrV4,
    next: AtomicUsize,
}

impl TransferListener {
    /// Take connections transferred to `addr` (unspecified address: any of this stack's;
    /// port 0: any port), with room for 1024 waiting per shard (more are refused).
    pub fn bind(net: &Net, addr: impl ToSocketAddrs) -> io::Result<TransferListener> {
        let local = v4(addr)?;
        let mut l = TransferListener { net: net.clone(), shards: Vec::new(), local, next: AtomicUsize::new(0) };
        for shard in 0..net.shards() {
            let q = Arc::new(AcceptQueue::default());
            q.inner.lock().cap = 1024;
            net.send(shard, Cmd::TransferListen { addr: local, q: q.clone() })?;
            l.shards.push(q);
        }
        Ok(l)
    }

    /// The address it takes connections for.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }

    /// A transferred connection if one is waiting; otherwise `cx`'s waker is woken when one
    /// comes.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, Transferred)>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // The bridge never leaves a transfer listener's queue stalled: no refill to ask for.
        let polled = poll_queues(cx, start, self.shards.len(), |k| &self.shards[k], |_| {});
        polled.map_ok(|(shard, a)| {
            let (from, app_state) = a.moved.unwrap_or_default();
            let how = Transferred { from, peer: SocketAddr::V4(a.peer), app_state };
            (TcpStream { net: self.net.clone(), shard, h: a.h, pipe: a.pipe, local: a.local, peer: a.peer, detached: false }, how)
        })
    }

    /// Wait for a transferred connection.
    pub async fn accept(&self) -> io::Result<(TcpStream, Transferred)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// A transferred connection if one is waiting, else `WouldBlock`.
    pub fn try_accept(&self) -> io::Result<(TcpStream, Transferred)> {
        match self.poll_accept(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Drop for TransferListener {
    /// Stop taking transferred connections; those waiting for `accept` are reset.
    fn drop(&mut self) {
        for (shard, q) in self.shards.iter().enumerate() {
            let _ = self.net.send(shard, Cmd::TransferUnlisten { q: q.clone() });
        }
    }
}

/// Readiness for an event loop that waits on file descriptors (`poll(2)`, epoll, mio): an
/// eventfd that becomes readable when a socket it was registered with is ready, and the
/// tokens of the sockets that were.
///
/// Register interest by polling a socket with a waker of the notifier's
/// ([`waker`](Notifier::waker), one per token): a `poll_*` that returns `Pending` keeps it
/// and wakes it once when the socket is ready. Then wait for the fd to be readable, and take
/// the tokens with [`drain`](Notifier::drain). Registration is one-shot, as a waker is: poll
/// the socket again to wait again.
#[derive(Debug)]
pub struct Notifier {
    fd: EventFd,
    ready: Mutex<Vec<u64>>,
}

/// The waker of one token.
struct TokenWaker {
    notifier: Arc<Notifier>,
    token: u64,
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let mut ready = self.notifier.ready.lock();
        let first = ready.is_empty();
        ready.push(self.token);
        drop(ready);
        if first {
            self.notifier.fd.signal();
        }
    }
}

impl Notifier {
    /// A notifier with its own eventfd.
    pub fn new() -> io::Result<Arc<Notifier>> {
        Ok(Arc::new(Notifier { fd: EventFd::new()?, ready: Mutex::new(Vec::new()) }))
    }

    /// A waker that reports `token` (make it once per socket and keep it).
    pub fn waker(self: &Arc<Self>, token: u64) -> std::task::Waker {
        Arc::new(TokenWaker { notifier: self.clone(), token }).into()
    }

    /// Move the tokens of the sockets that became ready into `out` (a token may appear more
    /// than once); the fd is not readable again until the next one.
    pub fn drain(&self, out: &mut Vec<u64>) {
        let mut ready = self.ready.lock();
        self.fd.drain();
        out.append(&mut ready);
    }
}

impl std::os::fd::AsFd for Notifier {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::os::fd::AsRawFd for Notifier {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }
}

#[cfg(test)]
mod tests;
