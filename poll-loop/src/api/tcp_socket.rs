//! [`TcpListener`] and [`TcpStream`], as `std::net`'s.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{self, Receiver};
use parking_lot::Mutex;
use stack::iface::SocketHandle;

use super::{gone, socket_channels, v4, wait_reply, Accepted, Cmd, Dir, Net, Reply, Timeout, BUFFER};

/// A TCP listener, like `std::net::TcpListener`: one listening socket on every shard of its
/// [`Net`], `accept` taking from whichever has a connection first.
#[derive(Debug)]
pub struct TcpListener {
    net: Net,
    /// The listening socket of each shard, in shard order.
    handles: Vec<SocketHandle>,
    /// Each shard's queue of accepted connections, in shard order.
    queues: Vec<Receiver<Accepted>>,
    local: SocketAddrV4,
    nonblocking: AtomicBool,
    /// Where the next nonblocking accept starts looking (fairness between shards).
    next: std::sync::atomic::AtomicUsize,
}

impl core::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Accepted").field("peer", &self.peer).finish()
    }
}

impl TcpListener {
    /// Listen on `addr` through `net`, like `std::net::TcpListener::bind` (port 0: a free
    /// port is chosen; backlog 128).
    pub fn bind(net: &Net, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        TcpListener::bind_with(net, v4(addr)?, 128)
    }

    pub(super) fn bind_with(net: &Net, addr: SocketAddrV4, backlog: usize) -> io::Result<TcpListener> {
        let mut l = TcpListener {
            net: net.clone(),
            handles: Vec::new(),
            queues: Vec::new(),
            local: addr,
            nonblocking: AtomicBool::new(false),
            next: Default::default(),
        };
        for shard in 0..net.shards() {
            let (accepted, queue) = channel::bounded(backlog.max(1));
            let (reply, wait) = channel::bounded(1);
            // Port 0: shard 0 chooses, the others listen on the same port.
            net.send(shard, Cmd::Listen { addr: l.local, backlog, shard, accepted, queue: queue.clone(), reply })?;
            // On an error, dropping `l` closes the shards already listening.
            let (h, local) = wait.recv().map_err(|_| gone())??;
            l.local = local;
            l.handles.push(h);
            l.queues.push(queue);
        }
        Ok(l)
    }

    /// The address listened on (with the port chosen, for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }

    /// Moves accept into or out of nonblocking mode (`WouldBlock` when no connection waits).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
        Ok(())
    }

    /// Block until a connection is established (on any shard), like
    /// `std::net::TcpListener::accept`.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let a = if self.nonblocking.load(Ordering::Relaxed) {
            self.try_accept()?
        } else if self.queues.len() == 1 {
            self.queues[0].recv().map_err(|_| gone())?
        } else {
            // Several shards: wait on all queues (one allocation per accept, not per call on
            // a stream).
            let mut sel = channel::Select::new();
            for q in &self.queues {
                sel.recv(q);
            }
            // A shard that stopped makes its queue ready (disconnected): the process is
            // stopping, and accept says so.
            let op = sel.select();
            let i = op.index();
            op.recv(&self.queues[i]).map_err(|_| gone())?
        };
        let peer = SocketAddr::V4(a.peer);
        Ok((TcpStream::from_accepted(&self.net, a), peer))
    }

    fn try_accept(&self) -> io::Result<Accepted> {
        let n = self.queues.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut gone_all = true;
        for i in 0..n {
            match self.queues[(start + i) % n].try_recv() {
                Ok(a) => return Ok(a),
                Err(channel::TryRecvError::Empty) => gone_all = false,
                Err(channel::TryRecvError::Disconnected) => {}
            }
        }
        Err(if gone_all { gone() } else { io::ErrorKind::WouldBlock.into() })
    }

    /// An endless iterator of accepted connections, like `std::net::TcpListener::incoming`.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        for (shard, &h) in self.handles.iter().enumerate() {
            let _ = self.net.send(shard, Cmd::Close { h });
        }
    }
}

/// The iterator of [`TcpListener::incoming`]: `accept` forever.
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;
    fn next(&mut self) -> Option<io::Result<TcpStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

/// One direction of a stream on the application side: its reply channel and its reusable
/// buffer (lent to the poll thread during a call, `None` meanwhile).
struct Side {
    replies: Receiver<Reply>,
    buf: Option<Vec<u8>>,
    /// Read side: the bytes `buf[pos..len]` were received and not yet read.
    pos: usize,
    len: usize,
    /// Read side: end of stream was read.
    eof: bool,
}

impl Side {
    fn new(replies: Receiver<Reply>) -> Side {
        Side { replies, buf: None, pos: 0, len: 0, eof: false }
    }
    fn take_buf(&mut self) -> Vec<u8> {
        self.buf.take().unwrap_or_else(|| vec![0u8; BUFFER])
    }
}

/// What the clones of one stream share; the last one dropped closes the connection.
struct Inner {
    net: Net,
    shard: usize,
    h: SocketHandle,
    local: SocketAddrV4,
    peer: SocketAddrV4,
    rd: Mutex<Side>,
    wr: Mutex<Side>,
    read_timeout: Timeout,
    write_timeout: Timeout,
    nonblocking: AtomicBool,
    nodelay: AtomicBool,
    read_shut: AtomicBool,
    write_shut: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.net.send(self.shard, Cmd::Close { h: self.h });
    }
}

/// A TCP connection, like `std::net::TcpStream`: `Read` and `Write` (also through
/// `&TcpStream`), timeouts, nonblocking mode, `shutdown`, `try_clone`.
///
/// Reads and writes of one stream may run concurrently on different threads (through
/// clones or `&TcpStream`); two concurrent reads (or writes) take turns.
pub struct TcpStream {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TcpStream").field("local", &self.inner.local).field("peer", &self.inner.peer).finish()
    }
}

impl TcpStream {
    fn new(net: &Net, shard: usize, h: SocketHandle, local: SocketAddrV4, peer: SocketAddrV4, rd: Receiver<Reply>, wr: Receiver<Reply>) -> TcpStream {
        TcpStream {
            inner: Arc::new(Inner {
                net: net.clone(),
                shard,
                h,
                local,
                peer,
                rd: Mutex::new(Side::new(rd)),
                wr: Mutex::new(Side::new(wr)),
                read_timeout: Timeout::default(),
                write_timeout: Timeout::default(),
                nonblocking: AtomicBool::new(false),
                nodelay: AtomicBool::new(false),
                read_shut: AtomicBool::new(false),
                write_shut: AtomicBool::new(false),
            }),
        }
    }

    fn from_accepted(net: &Net, a: Accepted) -> TcpStream {
        TcpStream::new(net, a.shard, a.h, a.local, a.peer, a.rd, a.wr)
    }

    /// Connect to `addr` through `net` (the shards in turn), like
    /// `std::net::TcpStream::connect`: blocks until the handshake is over.
    pub fn connect(net: &Net, addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        TcpStream::connect_with(net, v4(addr)?, None)
    }

    /// Connect with a timeout, like `std::net::TcpStream::connect_timeout` (`TimedOut`
    /// when it expires; the attempt is aborted).
    pub fn connect_timeout(net: &Net, addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        super::check_timeout(Some(timeout))?;
        TcpStream::connect_with(net, v4(*addr)?, Some(timeout))
    }

    fn connect_with(net: &Net, addr: SocketAddrV4, timeout: Option<Duration>) -> io::Result<TcpStream> {
        let shard = net.next_shard();
        let ((rd_tx, wr_tx), (rd, wr)) = socket_channels();
        net.send(shard, Cmd::Connect { addr, rd: rd_tx, wr: wr_tx })?;
        let (h, local) = match wr.recv().map_err(|_| gone())? {
            Reply::Opened { h, local } => (h, local),
            Reply::Done(r) => return Err(r.err().unwrap_or_else(gone)),
            Reply::Buf { .. } => return Err(gone()),
        };
        let done = match timeout {
            None => wr.recv().map_err(|_| gone())?,
            Some(t) => match wr.recv_timeout(t) {
                Ok(r) => r,
                Err(channel::RecvTimeoutError::Disconnected) => return Err(gone()),
                Err(channel::RecvTimeoutError::Timeout) => {
                    // Closing a connect under way answers it (TimedOut) unless it just ended.
                    net.send(shard, Cmd::Close { h })?;
                    match wr.recv().map_err(|_| gone())? {
                        Reply::Done(Ok(())) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connection timed out")),
                        r => r,
                    }
                }
            },
        };
        match done {
            Reply::Done(Ok(())) => Ok(TcpStream::new(net, shard, h, local, addr, rd, wr)),
            Reply::Done(Err(e)) => Err(e),
            _ => Err(gone()),
        }
    }

    /// The remote address, like `std::net::TcpStream::peer_addr`.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.inner.peer))
    }

    /// The local address, like `std::net::TcpStream::local_addr`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.inner.local))
    }

    /// Shut down reading, writing (a FIN after what was written) or both, like
    /// `std::net::TcpStream::shutdown`. After `Read`, reads return end of stream.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.inner.read_shut.store(true, Ordering::Relaxed);
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            // Under the write lock: the FIN follows writes that returned.
            let w = self.inner.wr.lock();
            self.inner.net.send(self.inner.shard, Cmd::Shutdown { h: self.inner.h })?;
            match w.replies.recv().map_err(|_| gone())? {
                Reply::Done(r) => r?,
                _ => return Err(gone()),
            }
            self.inner.write_shut.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Half-close: the peer reads end of stream after what was written
    /// (`shutdown(Shutdown::Write)`).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    /// Another handle to the same connection (for a reader thread and a writer thread), like
    /// `std::net::TcpStream::try_clone`; options are shared, as std's are.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(TcpStream { inner: self.inner.clone() })
    }

    /// Reads wait at most `t` (`None`: forever), then fail with `WouldBlock` as std on Linux;
    /// `Some(0)` is refused (`InvalidInput`).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.read_timeout.set(t)
    }

    /// Writes wait at most `t` for room (`None`: forever), then return the bytes queued or
    /// fail with `WouldBlock`; `Some(0)` is refused.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.write_timeout.set(t)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.inner.read_timeout.get())
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.inner.write_timeout.get())
    }

    /// In nonblocking mode reads and writes that would wait fail with `WouldBlock`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.nonblocking.store(nonblocking, Ordering::Relaxed);
        Ok(())
    }

    /// Set TCP_NODELAY (disable Nagle's algorithm).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.nodelay.store(on, Ordering::Relaxed);
        self.inner.net.send(self.inner.shard, Cmd::Nodelay { h: self.inner.h, on })
    }

    /// TCP_NODELAY, as last set.
    pub fn nodelay(&self) -> io::Result<bool> {
        Ok(self.inner.nodelay.load(Ordering::Relaxed))
    }

    fn read_impl(&self, out: &mut [u8]) -> io::Result<usize> {
        let inner = &*self.inner;
        if out.is_empty() || inner.read_shut.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let mut side = inner.rd.lock();
        let s = &mut *side;
        if s.pos < s.len {
            let buf = s.buf.as_deref().unwrap_or_default();
            let n = out.len().min(s.len - s.pos);
            out[..n].copy_from_slice(&buf[s.pos..s.pos + n]);
            s.pos += n;
            return Ok(n);
        }
        if s.eof {
            return Ok(0);
        }
        let buf = s.take_buf();
        let nonblocking = inner.nonblocking.load(Ordering::Relaxed);
        inner.net.send(inner.shard, Cmd::Read { h: inner.h, buf, nonblocking })?;
        let timeout = if nonblocking { None } else { inner.read_timeout.get() };
        let (reply, _) = wait_reply(&inner.net, inner.shard, inner.h, Dir::Read, &s.replies, timeout)?;
        let Reply::Buf { buf, result, .. } = reply else { return Err(gone()) };
        s.buf = Some(buf);
        s.pos = 0;
        s.len = 0;
        match result? {
            0 => {
                s.eof = true;
                Ok(0)
            }
            got => {
                let buf = s.buf.as_deref().unwrap_or_default();
                let n = out.len().min(got);
                out[..n].copy_from_slice(&buf[..n]);
                s.pos = n;
                s.len = got;
                Ok(n)
            }
        }
    }

    fn write_impl(&self, data: &[u8]) -> io::Result<usize> {
        let inner = &*self.inner;
        if data.is_empty() {
            return Ok(0);
        }
        if inner.write_shut.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the stream was shut down for writing"));
        }
        let mut side = inner.wr.lock();
        let mut buf = side.take_buf();
        let len = data.len().min(buf.len());
        buf[..len].copy_from_slice(&data[..len]);
        let nonblocking = inner.nonblocking.load(Ordering::Relaxed);
        inner.net.send(inner.shard, Cmd::Write { h: inner.h, buf, len, nonblocking })?;
        let timeout = if nonblocking { None } else { inner.write_timeout.get() };
        let (reply, _) = wait_reply(&inner.net, inner.shard, inner.h, Dir::Write, &side.replies, timeout)?;
        let Reply::Buf { buf, result, .. } = reply else { return Err(gone()) };
        side.buf = Some(buf);
        result
    }
}

impl Read for TcpStream {
    /// Blocks until at least one byte or end of stream (`Ok(0)`), or the read timeout.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
}

impl Read for &TcpStream {
    /// As `TcpStream`'s `read`.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
}

impl Write for TcpStream {
    /// Blocks until the first `BUFFER` bytes of `buf` at most are in the send buffer; returns
    /// how many.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    /// Nothing to do: written bytes are in the stack's send buffer already.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &TcpStream {
    /// As `TcpStream`'s `write`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    /// Nothing to do.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
