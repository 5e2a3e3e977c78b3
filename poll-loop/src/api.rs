//! The blocking, std-like API for ordinary application threads.
//!
//! [`TcpListener`], [`TcpStream`] (`std::io::Read` + `Write`) and [`UdpSocket`] talk to the
//! poll thread through a lock-free crossbeam channel; each call carries a one-shot reply
//! channel on which the application thread blocks (no busy waiting). On the poll thread,
//! [`Bridge`] is a run-to-completion [`App`] that executes the requests against the stack;
//! a request that cannot finish yet (no data, no connection to accept, a full send buffer) is
//! kept and retried when the stack has news. A sleeping poll thread is woken through an
//! eventfd ([`crate::xsk::Waker`]).
//!
//! Errors are `std::io::Error`s with the kinds applications expect: `ConnectionRefused`,
//! `ConnectionReset`, `TimedOut`, `AddrInUse`, `AddrNotAvailable`, `NotConnected`,
//! `BrokenPipe`.

use std::io;
use std::net::SocketAddrV4;
use std::sync::Arc;

use crossbeam::channel::{self, Receiver, Sender};
use stack::iface::{ApiError, SocketEvent, SocketHandle, Stack};
use stack::tcp::{self, State};
use stack::time::Instant;

use crate::runner::App;
use crate::xsk::Waker;

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

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the plex poll thread has stopped")
}

type Reply<T> = Sender<io::Result<T>>;

enum Request {
    Listen { addr: SocketAddrV4, backlog: usize, reply: Reply<SocketHandle> },
    Accept { l: SocketHandle, reply: Reply<(SocketHandle, SocketAddrV4)> },
    Connect { addr: SocketAddrV4, reply: Reply<SocketHandle> },
    /// Internal: a connect waiting for the handshake.
    Connecting { h: SocketHandle, reply: Reply<SocketHandle> },
    Read { h: SocketHandle, max: usize, reply: Reply<Vec<u8>> },
    Write { h: SocketHandle, data: Vec<u8>, off: usize, reply: Reply<usize> },
    Shutdown { h: SocketHandle, reply: Reply<()> },
    Close { h: SocketHandle },
    UdpBind { addr: SocketAddrV4, reply: Reply<(SocketHandle, SocketAddrV4)> },
    UdpSend { h: SocketHandle, to: SocketAddrV4, data: Vec<u8>, reply: Reply<usize> },
    UdpRecv { h: SocketHandle, max: usize, reply: Reply<(Vec<u8>, SocketAddrV4)> },
}

/// The application threads' side: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Net {
    tx: Sender<Request>,
    waker: Option<Arc<Waker>>,
}

impl core::fmt::Debug for Net {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Net { .. }")
    }
}

/// Create the two ends: `Net` for application threads, `Bridge` to run on the poll thread.
pub fn bridge(waker: Option<Arc<Waker>>) -> (Net, Bridge) {
    let (tx, rx) = channel::unbounded();
    (Net { tx, waker }, Bridge { rx, pending: Vec::new(), buf: vec![0u8; 64 * 1024] })
}

impl Net {
    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> io::Result<T> {
        let (reply, wait) = channel::bounded(1);
        self.tx.send(make(reply)).map_err(|_| gone())?;
        if let Some(w) = &self.waker {
            w.wake();
        }
        wait.recv().map_err(|_| gone())?
    }

    pub fn tcp_listen(&self, addr: SocketAddrV4, backlog: usize) -> io::Result<TcpListener> {
        let h = self.call(|reply| Request::Listen { addr, backlog, reply })?;
        Ok(TcpListener { net: self.clone(), h })
    }

    pub fn tcp_connect(&self, addr: SocketAddrV4) -> io::Result<TcpStream> {
        let h = self.call(|reply| Request::Connect { addr, reply })?;
        Ok(TcpStream { net: self.clone(), h, peer: addr })
    }

    pub fn udp_bind(&self, addr: SocketAddrV4) -> io::Result<UdpSocket> {
        let (h, local) = self.call(|reply| Request::UdpBind { addr, reply })?;
        Ok(UdpSocket { net: self.clone(), h, local })
    }
}

#[derive(Debug)]
pub struct TcpListener {
    net: Net,
    h: SocketHandle,
}

impl TcpListener {
    /// Block until a connection is established, like `std::net::TcpListener::accept`.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddrV4)> {
        let (h, peer) = self.net.call(|reply| Request::Accept { l: self.h, reply })?;
        Ok((TcpStream { net: self.net.clone(), h, peer }, peer))
    }
    pub fn incoming(&self) -> impl Iterator<Item = io::Result<TcpStream>> + '_ {
        std::iter::from_fn(move || Some(self.accept().map(|(s, _)| s)))
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let _ = self.net.tx.send(Request::Close { h: self.h });
    }
}

#[derive(Debug)]
pub struct TcpStream {
    net: Net,
    h: SocketHandle,
    peer: SocketAddrV4,
}

impl TcpStream {
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.peer
    }
    /// Half-close: the peer reads end of stream after what was written.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.net.call(|reply| Request::Shutdown { h: self.h, reply })
    }
}

impl io::Read for TcpStream {
    /// Blocks until at least one byte or end of stream (`Ok(0)`).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let data = self.net.call(|reply| Request::Read { h: self.h, max: buf.len(), reply })?;
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }
}

impl io::Write for TcpStream {
    /// Blocks until all of `buf` is in the send buffer.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.net.call(|reply| Request::Write { h: self.h, data: buf.to_vec(), off: 0, reply })
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let _ = self.net.tx.send(Request::Close { h: self.h });
        if let Some(w) = &self.net.waker {
            w.wake();
        }
    }
}

#[derive(Debug)]
pub struct UdpSocket {
    net: Net,
    h: SocketHandle,
    local: SocketAddrV4,
}

impl UdpSocket {
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }
    pub fn send_to(&self, buf: &[u8], to: SocketAddrV4) -> io::Result<usize> {
        self.net.call(|reply| Request::UdpSend { h: self.h, to, data: buf.to_vec(), reply })
    }
    /// Blocks until a datagram arrives; truncates to `buf` like `recvfrom`.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4)> {
        let (d, from) = self.net.call(|reply| Request::UdpRecv { h: self.h, max: buf.len(), reply })?;
        buf[..d.len()].copy_from_slice(&d);
        Ok((d.len(), from))
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let _ = self.net.tx.send(Request::Close { h: self.h });
    }
}

/// The poll thread's side: runs requests against the stack.
pub struct Bridge {
    rx: Receiver<Request>,
    pending: Vec<Request>,
    buf: Vec<u8>,
}

impl core::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Bridge").field("pending", &self.pending.len()).finish()
    }
}

impl Bridge {
    /// Try to finish a request; give it back if it must wait.
    fn attempt(&mut self, now: Instant, stack: &mut Stack, req: Request) -> Option<Request> {
        match req {
            Request::Listen { addr, backlog, reply } => {
                let _ = reply.send(stack.tcp_listen(now, addr, backlog).map_err(|e| io_error(e, false)));
            }
            Request::Accept { l, reply } => match stack.tcp_accept(l) {
                Ok(h) => {
                    let peer = stack.tcp(h).map(|c| c.tuple().remote).unwrap_or(SocketAddrV4::new(0.into(), 0));
                    let _ = reply.send(Ok((h, peer)));
                }
                Err(ApiError::WouldBlock) => return Some(Request::Accept { l, reply }),
                Err(e) => {
                    let _ = reply.send(Err(io_error(e, false)));
                }
            },
            Request::Connect { addr, reply } => match stack.tcp_connect(now, None, addr) {
                Ok(h) => return self.attempt(now, stack, Request::Connecting { h, reply }),
                Err(e) => {
                    let _ = reply.send(Err(io_error(e, true)));
                }
            },
            Request::Connecting { h, reply } => match stack.tcp(h).map(|c| (c.state(), c.error())) {
                Some((State::SynSent | State::SynReceived, _)) => return Some(Request::Connecting { h, reply }),
                Some((State::Closed, err)) => {
                    let e = err.unwrap_or(tcp::Error::Reset);
                    let _ = reply.send(Err(io_error(ApiError::Tcp(e), true)));
                    let _ = stack.close(now, h);
                }
                Some(_) => {
                    let _ = reply.send(Ok(h));
                }
                None => {
                    let _ = reply.send(Err(io_error(ApiError::Tcp(tcp::Error::Reset), true)));
                }
            },
            Request::Read { h, max, reply } => {
                let max = max.min(self.buf.len());
                match stack.tcp_recv(now, h, &mut self.buf[..max]) {
                    Ok(n) => {
                        let _ = reply.send(Ok(self.buf[..n].to_vec()));
                    }
                    Err(ApiError::WouldBlock) => return Some(Request::Read { h, max, reply }),
                    Err(e) => {
                        let _ = reply.send(Err(io_error(e, false)));
                    }
                }
            }
            Request::Write { h, data, mut off, reply } => {
                loop {
                    match stack.tcp_send(now, h, &data[off..]) {
                        Ok(k) if k > 0 => {
                            off += k;
                            if off == data.len() {
                                let _ = reply.send(Ok(off));
                                return None;
                            }
                        }
                        Ok(_) | Err(ApiError::WouldBlock) => return Some(Request::Write { h, data, off, reply }),
                        Err(e) => {
                            let _ = reply.send(if off > 0 { Ok(off) } else { Err(io_error(e, false)) });
                            return None;
                        }
                    }
                }
            }
            Request::Shutdown { h, reply } => {
                let _ = reply.send(stack.tcp_shutdown(now, h).map_err(|e| io_error(e, false)));
            }
            Request::Close { h } => {
                // Blocked requests on this socket end with an error.
                self.pending.retain(|r| !matches!(r, Request::Read { h: x, .. } | Request::Write { h: x, .. } if *x == h));
                let _ = stack.close(now, h);
            }
            Request::UdpBind { addr, reply } => {
                let r = stack
                    .udp_bind(addr)
                    .map(|h| (h, stack.udp_local_addr(h).unwrap_or(addr)))
                    .map_err(|e| io_error(e, false));
                let _ = reply.send(r);
            }
            Request::UdpSend { h, to, data, reply } => match stack.udp_send_to(now, h, to, &data) {
                Err(ApiError::WouldBlock) => return Some(Request::UdpSend { h, to, data, reply }),
                r => {
                    let _ = reply.send(r.map_err(|e| io_error(e, false)));
                }
            },
            Request::UdpRecv { h, max, reply } => {
                let max = max.min(self.buf.len());
                match stack.udp_recv_from(h, &mut self.buf[..max]) {
                    Ok((n, from)) => {
                        let _ = reply.send(Ok((self.buf[..n].to_vec(), from)));
                    }
                    Err(ApiError::WouldBlock) => return Some(Request::UdpRecv { h, max, reply }),
                    Err(e) => {
                        let _ = reply.send(Err(io_error(e, false)));
                    }
                }
            }
        }
        None
    }

    fn retry_pending(&mut self, now: Instant, stack: &mut Stack) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let before = self.pending.len();
        let reqs = std::mem::take(&mut self.pending);
        for r in reqs {
            if let Some(r) = self.attempt(now, stack, r) {
                self.pending.push(r);
            }
        }
        self.pending.len() != before
    }
}

impl App for Bridge {
    fn start(&mut self, _now: Instant, _stack: &mut Stack) -> Result<(), String> {
        Ok(())
    }

    fn event(&mut self, now: Instant, stack: &mut Stack, _h: SocketHandle, ev: SocketEvent) {
        if let SocketEvent::Tcp(tcp::Event::Closed) = ev {
            // Nothing to do: the application closes its handle when it drops the stream.
        }
        self.retry_pending(now, stack);
    }

    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        let mut did = false;
        while let Ok(req) = self.rx.try_recv() {
            did = true;
            if let Some(r) = self.attempt(now, stack, req) {
                self.pending.push(r);
            }
        }
        // Sends may have made room and timers may have changed state since the last event.
        did | self.retry_pending(now, stack)
    }
}

#[cfg(test)]
// The tests play the application threads of the blocking API.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    use stack::iface::StackConfig;
    use stack::wire::MacAddr;

    fn stack(last: u8, ip: Ipv4Addr) -> Stack {
        let mut cfg = StackConfig::new(MacAddr([2, 0, 0, 0, 0, last]));
        cfg.seed = last as u64;
        let mut s = Stack::new(cfg);
        s.add_address(ip, 24, false);
        s
    }

    /// Drive `a` (running the bridge) and a plain peer `b` in memory until `done`.
    fn drive(mut a: Stack, mut b: Stack, mut bridge: Bridge, mut peer: impl FnMut(Instant, &mut Stack) -> bool, stop: Arc<AtomicBool>) {
        let mut buf = vec![0u8; 2048];
        let mut t = 0u64;
        while !stop.load(Ordering::Relaxed) {
            t += 100;
            // A bounded loop: a stuck application thread fails the test instead of hanging it.
            assert!(t < 300_000_000, "the application thread did not finish within 300 s of simulated time");
            let now = Instant::from_micros(t);
            bridge.poll(now, &mut a);
            while let Some((h, ev)) = a.poll_event() {
                bridge.event(now, &mut a, h, ev);
            }
            peer(now, &mut b);
            for _ in 0..100 {
                let mut any = false;
                while let Some(n) = a.poll_transmit(now, &mut buf) {
                    b.receive(now, &buf[..n]);
                    any = true;
                }
                while let Some(n) = b.poll_transmit(now, &mut buf) {
                    a.receive(now, &buf[..n]);
                    any = true;
                }
                if !any {
                    break;
                }
            }
            a.handle_timeout(now);
            b.handle_timeout(now);
            thread::yield_now();
        }
    }

    #[test]
    fn blocking_stream_echo_through_the_bridge() {
        let a_ip = Ipv4Addr::new(198, 18, 0, 10);
        let (net, bridge) = bridge(None);
        let stop = Arc::new(AtomicBool::new(false));
        let app = {
            let stop = stop.clone();
            thread::spawn(move || {
                let l = net.tcp_listen(SocketAddrV4::new(a_ip, 7), 8).unwrap();
                assert_eq!(net.tcp_listen(SocketAddrV4::new(a_ip, 7), 8).unwrap_err().kind(), io::ErrorKind::AddrInUse);
                let (mut s, peer) = l.accept().unwrap();
                assert_eq!(*peer.ip(), Ipv4Addr::new(198, 18, 0, 1));
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                loop {
                    let n = s.read(&mut b).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&b[..n]);
                    s.write_all(&b[..n]).unwrap();
                }
                s.shutdown_write().unwrap();
                let refused = net.tcp_connect(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 9)).unwrap_err();
                assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
                stop.store(true, Ordering::Relaxed);
                got
            })
        };
        let a = stack(10, a_ip);
        let b = stack(1, Ipv4Addr::new(198, 18, 0, 1));
        let msg: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let mut c = None;
        let (mut sent, mut echoed) = (0usize, Vec::new());
        let mut rbuf = vec![0u8; 65536];
        let peer = |now: Instant, b: &mut Stack| {
            // The application thread may not be listening yet: a refused attempt is retried.
            let refused = c.is_some_and(|h| b.tcp(h).is_none_or(|c| c.error().is_some()));
            if c.is_none() || refused {
                if let Some(old) = c.take() {
                    let _ = b.close(now, old);
                }
                c = Some(b.tcp_connect(now, None, SocketAddrV4::new(a_ip, 7)).unwrap());
                sent = 0;
            }
            let h = c.unwrap();
            if sent < msg.len() {
                sent += b.tcp_send(now, h, &msg[sent..]).unwrap_or(0);
                if sent == msg.len() {
                    b.tcp_shutdown(now, h).unwrap();
                }
            }
            while let Ok(n) = b.tcp_recv(now, h, &mut rbuf) {
                if n == 0 {
                    break;
                }
                echoed.extend_from_slice(&rbuf[..n]);
            }
            true
        };
        drive(a, b, bridge, peer, stop);
        let got = app.join().unwrap();
        assert_eq!(got, msg);
        assert_eq!(echoed, msg);
    }

    #[test]
    fn blocking_udp_through_the_bridge() {
        let a_ip = Ipv4Addr::new(198, 18, 0, 10);
        let (net, bridge) = bridge(None);
        let stop = Arc::new(AtomicBool::new(false));
        let app = {
            let stop = stop.clone();
            thread::spawn(move || {
                let u = net.udp_bind(SocketAddrV4::new(a_ip, 53)).unwrap();
                let mut b = [0u8; 64];
                let (n, from) = u.recv_from(&mut b).unwrap();
                u.send_to(&b[..n], from).unwrap();
                stop.store(true, Ordering::Relaxed);
                b[..n].to_vec()
            })
        };
        let b_ip = Ipv4Addr::new(198, 18, 0, 1);
        let mut u = None;
        let mut got = Vec::new();
        let mut t = 0;
        let peer = |now: Instant, b: &mut Stack| {
            let h = *u.get_or_insert_with(|| b.udp_bind(SocketAddrV4::new(b_ip, 4000)).unwrap());
            t += 1;
            if t % 50 == 1 {
                // Until the application has bound, datagrams draw port unreachable: resend.
                let _ = b.udp_send_to(now, h, SocketAddrV4::new(a_ip, 53), b"query");
            }
            let mut buf = [0u8; 64];
            if let Ok((n, _)) = b.udp_recv_from(h, &mut buf) {
                got = buf[..n].to_vec();
            }
            true
        };
        drive(stack(10, a_ip), stack(1, b_ip), bridge, peer, stop);
        assert_eq!(app.join().unwrap(), b"query");
    }

    #[test]
    fn errors_map_to_io_kinds() {
        assert_eq!(io_error(ApiError::Tcp(tcp::Error::Reset), true).kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(io_error(ApiError::Tcp(tcp::Error::Reset), false).kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(io_error(ApiError::Tcp(tcp::Error::TimedOut), false).kind(), io::ErrorKind::TimedOut);
        assert_eq!(io_error(ApiError::AddrNotAvailable, false).kind(), io::ErrorKind::AddrNotAvailable);
        assert_eq!(io_error(ApiError::Tcp(tcp::Error::Shutdown), false).kind(), io::ErrorKind::BrokenPipe);
    }
}
