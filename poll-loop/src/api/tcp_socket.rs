//! [`TcpListener`] and [`TcpStream`], as `std::net`'s: the readiness API's sockets
//! ([`super::nonblocking`]) with the calling thread parked while a call waits.
//!
//! A read takes bytes the poll thread already put in the stream's receive ring, and a write
//! puts bytes in its send ring: neither goes to the poll thread and back. Only a call that
//! must wait parks its thread, with a waker (made once per thread) that the poll thread wakes
//! when the stream has news.
//!
//! What a wait costs: the park is a futex wait and the poll thread's wake a futex wake, with a
//! context switch into the thread and one out of it: about 2 µs of CPU on the two-vCPU test
//! machine (`plex-bench-park`), which a thread-per-connection server whose requests come one
//! at a time pays once per request, on top of the stack's work. Nothing else is paid per
//! wait: a running thread is never sent a wake (the poll thread takes the waker it wakes, and
//! only a call about to park registers one), a thread woken before it parks does not enter
//! the kernel, and no call goes to the poll thread and back. Servers with many connections
//! per core and small requests pay a fraction of a wake-up per request with the readiness API
//! (tokio: one worker serves many connections per wake-up) or none with run-to-completion.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use parking_lot::Mutex;

use super::{nonblocking as nb, v4, Net, Timeout};
use crate::clock::Clock;

/// Unparks the thread that made it.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    /// This thread's waker, made once.
    static WAKER: Waker = Waker::from(Arc::new(Unpark(thread::current())));
}

/// Run `f` to completion on this thread, parking while it waits; `None` if `timeout` passed
/// first (`f` is then dropped, which gives up what it was doing).
///
/// # Panics
/// On a poll thread that runs the application's tasks ([`crate::Plex::spawn_tokio`]), where
/// parking would wait for that very thread forever (as tokio's `block_on` panics inside a
/// runtime): the blocking API is for threads of the application's own.
fn block_on<F: Future>(f: F, timeout: Option<Duration>) -> Option<F::Output> {
    if let Err(e) = super::may_wait("the blocking API") {
        panic!("{e}");
    }
    let mut f = std::pin::pin!(f);
    let deadline = timeout.map(|t| Clock::read_mono_ns().saturating_add(t.as_nanos().min(u64::MAX as u128) as u64));
    WAKER.with(|w| {
        let mut cx = Context::from_waker(w);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return Some(v);
            }
            match deadline {
                None => thread::park(),
                Some(d) => {
                    let now = Clock::read_mono_ns();
                    if now >= d {
                        return None;
                    }
                    thread::park_timeout(Duration::from_nanos(d - now));
                }
            }
        }
    })
}

/// A TCP listener, like `std::net::TcpListener`: one listening socket on every shard of its
/// [`Net`], `accept` taking from whichever has a connection first.
#[derive(Debug)]
pub struct TcpListener {
    inner: nb::TcpListener,
    net: Net,
    nonblocking: AtomicBool,
}

impl TcpListener {
    /// Listen on `addr` through `net`, like `std::net::TcpListener::bind` (port 0: a free
    /// port is chosen; backlog 128).
    pub fn bind(net: &Net, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        TcpListener::bind_with(net, v4(addr)?, 128)
    }

    pub(super) fn bind_with(net: &Net, addr: SocketAddrV4, backlog: usize) -> io::Result<TcpListener> {
        let inner = nb::TcpListener::bind_with_backlog(net, addr, backlog)?;
        Ok(TcpListener { inner, net: net.clone(), nonblocking: AtomicBool::new(false) })
    }

    /// The address listened on (with the port chosen, for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Moves accept into or out of nonblocking mode (`WouldBlock` when no connection waits).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
        Ok(())
    }

    /// Block until a connection is established (on any shard), like
    /// `std::net::TcpListener::accept`.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, peer) = if self.nonblocking.load(Ordering::Relaxed) {
            self.inner.try_accept()?
        } else {
            block_on(self.inner.accept(), None).unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))?
        };
        let _ = &self.net;
        Ok((TcpStream::from_nb(s), peer))
    }

    /// An endless iterator of accepted connections, like `std::net::TcpListener::incoming`.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
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

/// What the clones of one stream share; the last one dropped closes the connection.
#[derive(Debug)]
struct Inner {
    s: nb::TcpStream,
    /// Readers (writers) take turns: a stream wakes one reader and one writer.
    rd: Mutex<()>,
    wr: Mutex<()>,
    read_timeout: Timeout,
    write_timeout: Timeout,
    nonblocking: AtomicBool,
    nodelay: AtomicBool,
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
        f.debug_struct("TcpStream").field("local", &self.inner.s.local_addr().ok()).field("peer", &self.inner.s.peer_addr().ok()).finish()
    }
}

impl TcpStream {
    fn from_nb(s: nb::TcpStream) -> TcpStream {
        TcpStream {
            inner: Arc::new(Inner {
                s,
                rd: Mutex::new(()),
                wr: Mutex::new(()),
                read_timeout: Timeout::default(),
                write_timeout: Timeout::default(),
                nonblocking: AtomicBool::new(false),
                nodelay: AtomicBool::new(false),
            }),
        }
    }

    /// Connect to `addr` through `net` (the shards in turn), like
    /// `std::net::TcpStream::connect`: blocks until the handshake is over.
    pub fn connect(net: &Net, addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let addr = v4(addr)?;
        block_on(nb::TcpStream::connect(net, addr), None).unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into())).map(TcpStream::from_nb)
    }

    /// Connect with a timeout, like `std::net::TcpStream::connect_timeout` (`TimedOut`
    /// when it expires; the attempt is aborted).
    pub fn connect_timeout(net: &Net, addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        super::check_timeout(Some(timeout))?;
        let addr = v4(*addr)?;
        match block_on(nb::TcpStream::connect(net, addr), Some(timeout)) {
            Some(r) => r.map(TcpStream::from_nb),
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "connection timed out")),
        }
    }

    /// The remote address, like `std::net::TcpStream::peer_addr`.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.s.peer_addr()
    }

    /// The local address, like `std::net::TcpStream::local_addr`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.s.local_addr()
    }

    /// Shut down reading, writing (a FIN after what was written) or both, like
    /// `std::net::TcpStream::shutdown`. After `Read`, reads return end of stream.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.s.shutdown(how)
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

    /// Writes wait at most `t` for room (`None`: forever), then fail with `WouldBlock`;
    /// `Some(0)` is refused.
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
        self.inner.s.set_nodelay(on)
    }

    /// TCP_NODELAY, as last set.
    pub fn nodelay(&self) -> io::Result<bool> {
        Ok(self.inner.nodelay.load(Ordering::Relaxed))
    }

    fn read_impl(&self, out: &mut [u8]) -> io::Result<usize> {
        let inner = &*self.inner;
        if inner.nonblocking.load(Ordering::Relaxed) {
            return inner.s.try_read(out);
        }
        let _turn = inner.rd.lock();
        block_on(inner.s.read(out), inner.read_timeout.get()).unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))
    }

    fn write_impl(&self, data: &[u8]) -> io::Result<usize> {
        let inner = &*self.inner;
        if inner.nonblocking.load(Ordering::Relaxed) {
            return inner.s.try_write(data);
        }
        let _turn = inner.wr.lock();
        block_on(inner.s.write(data), inner.write_timeout.get()).unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))
    }
}

impl TcpStream {
    /// Move this connection, live, to the cluster's stack `to` (spec/04), blocking until the
    /// target took it (its name is returned) or refused it (the stream comes back in
    /// [`TransferFailed::stream`](nb::TransferFailed)). The peer notices nothing; the bytes
    /// this stream holds (received and not read, written and not sent) go with it, in their
    /// place; `app_state` reaches the target's [`TransferListener`]. The stream must be the
    /// only handle to its connection (no live [`try_clone`](TcpStream::try_clone)s):
    /// otherwise `InvalidInput`, and the stream comes back.
    pub fn transfer(self, to: &str, app_state: &[u8]) -> Result<String, nb::TransferFailed<TcpStream>> {
        self.transfer_with(to, app_state, false)
    }

    /// As [`transfer`](TcpStream::transfer); the target takes it without asking its
    /// application.
    pub fn transfer_unconditional(self, to: &str, app_state: &[u8]) -> Result<String, nb::TransferFailed<TcpStream>> {
        self.transfer_with(to, app_state, true)
    }

    fn transfer_with(self, to: &str, app_state: &[u8], unconditional: bool) -> Result<String, nb::TransferFailed<TcpStream>> {
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(inner) => {
                let error = io::Error::new(io::ErrorKind::InvalidInput, "other handles to this stream exist (try_clone): it cannot move");
                return Err(nb::TransferFailed { error, stream: Some(TcpStream { inner }) });
            }
        };
        let Inner { s, read_timeout, write_timeout, nonblocking, nodelay, .. } = inner;
        let f = async move {
            if unconditional {
                s.transfer_unconditional(to, app_state).await
            } else {
                s.transfer(to, app_state).await
            }
        };
        match block_on(f, None).unwrap_or_else(|| Err(nb::TransferFailed { error: io::ErrorKind::TimedOut.into(), stream: None })) {
            Ok(to) => Ok(to),
            Err(nb::TransferFailed { error, stream }) => {
                // Back here: the same stream, with its options.
                let stream = stream.map(|s| TcpStream {
                    inner: Arc::new(Inner { s, rd: Mutex::new(()), wr: Mutex::new(()), read_timeout, write_timeout, nonblocking, nodelay }),
                });
                Err(nb::TransferFailed { error, stream })
            }
        }
    }
}

/// A *transfer listener* (spec/04), like [`TcpListener`] but its `accept` returns only
/// connections transferred here from other stacks (or from other threads of this stack),
/// with the state their source application sent along ([`nb::Transferred`]).
#[derive(Debug)]
pub struct TransferListener {
    inner: nb::TransferListener,
    nonblocking: AtomicBool,
}

impl TransferListener {
    /// Take connections transferred to `addr` (unspecified address: any; port 0: any port).
    pub fn bind(net: &Net, addr: impl ToSocketAddrs) -> io::Result<TransferListener> {
        Ok(TransferListener { inner: nb::TransferListener::bind(net, addr)?, nonblocking: AtomicBool::new(false) })
    }

    /// The address it takes connections for.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Moves accept into or out of nonblocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
        Ok(())
    }

    /// Block until a connection is transferred here.
    pub fn accept(&self) -> io::Result<(TcpStream, nb::Transferred)> {
        let (s, how) = if self.nonblocking.load(Ordering::Relaxed) {
            self.inner.try_accept()?
        } else {
            block_on(self.inner.accept(), None).unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))?
        };
        Ok((TcpStream::from_nb(s), how))
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
    /// Blocks until some of `buf` (as much as the stream's send ring takes) is queued for
    /// sending; returns how much.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    /// Nothing to do: written bytes are on their way already.
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
