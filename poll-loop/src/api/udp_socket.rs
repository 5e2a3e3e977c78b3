//! [`UdpSocket`], as `std::net`'s.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{self, Receiver};
use parking_lot::Mutex;
use stack::iface::SocketHandle;

use super::{gone, socket_channels, v4, wait_reply, Cmd, Dir, Net, Reply, Timeout, BUFFER};

/// One direction of a UDP socket: its reply channel and its reusable buffer.
struct Side {
    replies: Receiver<Reply>,
    buf: Option<Vec<u8>>,
}

impl Side {
    fn take_buf(&mut self) -> Vec<u8> {
        self.buf.take().unwrap_or_else(|| vec![0u8; BUFFER])
    }
}

struct Inner {
    net: Net,
    shard: usize,
    h: SocketHandle,
    local: SocketAddrV4,
    rd: Mutex<Side>,
    wr: Mutex<Side>,
    read_timeout: Timeout,
    write_timeout: Timeout,
    nonblocking: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.net.send(self.shard, Cmd::Close { h: self.h });
    }
}

/// A UDP socket, like `std::net::UdpSocket`, on the first shard of its [`Net`]: datagrams
/// for it that arrive on another queue are handed to that shard (the shards know every UDP
/// socket of the process, [`crate::shards::ShardSet`]); it sends from the first queue.
pub struct UdpSocket {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UdpSocket").field("local", &self.inner.local).finish()
    }
}

impl UdpSocket {
    /// A socket on `addr` (port 0: an ephemeral port), like `std::net::UdpSocket::bind`.
    pub fn bind(net: &Net, addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        let addr = v4(addr)?;
        super::may_wait("UdpSocket::bind")?;
        let shard = 0;
        let ((rd_tx, wr_tx), (rd, wr)) = socket_channels();
        let (reply, wait) = channel::bounded(1);
        net.send(shard, Cmd::UdpBind { addr, rd: rd_tx, wr: wr_tx, reply })?;
        let (h, local) = wait.recv().map_err(|_| gone())??;
        Ok(UdpSocket {
            inner: Arc::new(Inner {
                net: net.clone(),
                shard,
                h,
                local,
                rd: Mutex::new(Side { replies: rd, buf: None }),
                wr: Mutex::new(Side { replies: wr, buf: None }),
                read_timeout: Timeout::default(),
                write_timeout: Timeout::default(),
                nonblocking: AtomicBool::new(false),
            }),
        })
    }

    /// The bound address (its port chosen, if it was 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.inner.local))
    }

    /// Send one datagram to `to`; blocks while the socket's send queue is full (up to the
    /// write timeout). Datagrams larger than [`BUFFER`] are refused (`InvalidInput`).
    pub fn send_to(&self, buf: &[u8], to: impl ToSocketAddrs) -> io::Result<usize> {
        let to = v4(to)?;
        let inner = &*self.inner;
        if buf.len() > BUFFER {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "datagram too large"));
        }
        let mut side = inner.wr.lock();
        let mut b = side.take_buf();
        b[..buf.len()].copy_from_slice(buf);
        let nonblocking = inner.nonblocking.load(Ordering::Relaxed);
        inner.net.send(inner.shard, Cmd::UdpSend { h: inner.h, buf: b, len: buf.len(), to, nonblocking })?;
        let timeout = if nonblocking { None } else { inner.write_timeout.get() };
        let (reply, _) = wait_reply(&inner.net, inner.shard, inner.h, Dir::Write, &side.replies, timeout)?;
        let Reply { buf, result, .. } = reply;
        side.buf = Some(buf);
        result
    }

    /// Block until a datagram arrives (or the read timeout: `WouldBlock`); copies it into
    /// `buf`, truncated to it like `recvfrom`, and returns its length and sender.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let inner = &*self.inner;
        let mut side = inner.rd.lock();
        let b = side.take_buf();
        let nonblocking = inner.nonblocking.load(Ordering::Relaxed);
        inner.net.send(inner.shard, Cmd::UdpRecv { h: inner.h, buf: b, nonblocking })?;
        let timeout = if nonblocking { None } else { inner.read_timeout.get() };
        let (reply, _) = wait_reply(&inner.net, inner.shard, inner.h, Dir::Read, &side.replies, timeout)?;
        let Reply { buf: b, result, from } = reply;
        let r = result.map(|n| {
            let k = n.min(buf.len());
            buf[..k].copy_from_slice(&b[..k]);
            (k, SocketAddr::V4(from.unwrap_or(SocketAddrV4::new(0.into(), 0))))
        });
        side.buf = Some(b);
        r
    }

    /// Receives wait at most `t` (`None`: forever), then fail with `WouldBlock`.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.read_timeout.set(t)
    }

    /// Sends wait at most `t` for room in the send queue (`None`: forever).
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

    /// In nonblocking mode sends and receives that would wait fail with `WouldBlock`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.nonblocking.store(nonblocking, Ordering::Relaxed);
        Ok(())
    }

    /// Another handle to the same socket, like `std::net::UdpSocket::try_clone`.
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        Ok(UdpSocket { inner: self.inner.clone() })
    }
}
