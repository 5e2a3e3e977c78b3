//! The poll thread's side of the application APIs: commands and dirty sockets in, bytes
//! moved between connections and their pipes, parked UDP calls indexed by socket.

use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam::channel::{Receiver, Sender};
use crossbeam::queue::ArrayQueue;
use stack::iface::{ApiError, SocketEvent, SocketHandle, Stack};
use stack::tcp::{self, State};
use stack::time::Instant;

use std::collections::HashMap;

use coupling::handoff::TransferId;

use super::pipe::{self, AcceptQueue, ApiOrIo, Incoming, Phase, Pipe, TransferReply, TransferSlot};
use crate::handoff::{self, TransferDecision, TransferError, TransferOffer, TransferOutcome};
use super::{io_error, Cmd, Dir, Reply};
use crate::runner::App;

/// A read or receive parked until its socket has news.
struct ParkedRead {
    buf: Vec<u8>,
}

/// A datagram parked until the socket's send queue has room.
struct ParkedSend {
    buf: Vec<u8>,
    len: usize,
    to: SocketAddrV4,
}

enum Kind {
    Udp { rd: Sender<Reply>, wr: Sender<Reply>, recv: Option<ParkedRead>, send: Option<ParkedSend> },
    /// A connection of the readiness API: bytes move through its pipe.
    Pipe { pipe: Arc<Pipe>, connecting: bool, fin_sent: bool },
    /// A listener of the readiness API.
    PipeListener { q: Arc<AcceptQueue> },
}

struct Entry {
    h: SocketHandle,
    kind: Kind,
}

/// The poll thread's side: executes the commands of application threads against the stack.
///
/// Its table of sockets is indexed by the stack's socket handle (slot index, checked against
/// the generation): an event for socket `h` looks at `h`'s entry only (a TCP connection: move
/// bytes between the stack and its pipe; a UDP socket: finish the call parked there). The
/// dirty queue names the sockets the application gave work (bytes written, room made,
/// closed). Nothing scans all sockets: the only list walked every turn, and only while
/// non-empty, is the UDP sockets with a datagram waiting for room (UDP has no writable event).
pub struct Bridge {
    rx: Receiver<Cmd>,
    /// Sockets of the readiness API the application has new work for.
    dirty: Arc<ArrayQueue<SocketHandle>>,
    table: Vec<Option<Entry>>,
    udp_blocked: Vec<SocketHandle>,
    /// Transfers of this shard's connections in flight: the pipe (back in service if the
    /// connection comes back) and where the answer goes.
    transfers: HashMap<TransferId, Transferring>,
    /// Transfer listeners: the address they take connections for, and their queue.
    transfer_listeners: Vec<(SocketAddrV4, Arc<AcceptQueue>)>,
    /// The source stack of the offer being accepted (for [`App::transferred`]).
    offer_from: String,
}

/// A connection of this shard on its way to another stack.
struct Transferring {
    pipe: Arc<Pipe>,
    slot: Arc<TransferSlot>,
    /// Re-parented on this very stack: its entry stays in the table.
    same_stack: bool,
}

/// Does a transfer listener for `pattern` take a connection to `local`?
fn takes(pattern: SocketAddrV4, local: SocketAddrV4) -> bool {
    (pattern.ip().is_unspecified() || pattern.ip() == local.ip()) && (pattern.port() == 0 || pattern.port() == local.port())
}

fn refused(kind: io::ErrorKind, msg: String) -> ApiOrIo {
    ApiOrIo { kind, msg }
}

impl core::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Bridge").field("sockets", &self.table.iter().flatten().count()).finish()
    }
}

/// Send a reply; the application side may have gone (a dropped socket), which is fine. The
/// channels have room for every reply the protocol sends, so this never blocks.
fn answer(tx: &Sender<Reply>, r: Reply) {
    let _ = tx.try_send(r);
}

/// What a call that must not wait (nonblocking, or cancelled by its timeout) returns: the
/// bytes it moved, or `WouldBlock` (as std on Linux for both).
fn partial_or_would_block(off: usize) -> io::Result<usize> {
    if off > 0 {
        Ok(off)
    } else {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Bridge {
    pub(super) fn new(rx: Receiver<Cmd>, dirty: Arc<ArrayQueue<SocketHandle>>) -> Bridge {
        Bridge { rx, dirty, table: Vec::new(), udp_blocked: Vec::new(), transfers: HashMap::new(), transfer_listeners: Vec::new(), offer_from: String::new() }
    }

    fn entry(&mut self, h: SocketHandle) -> Option<&mut Entry> {
        self.table.get_mut(h.index() as usize)?.as_mut().filter(|e| e.h == h)
    }

    fn insert(&mut self, h: SocketHandle, kind: Kind) {
        let i = h.index() as usize;
        if self.table.len() <= i {
            self.table.resize_with(i + 1, || None);
        }
        self.table[i] = Some(Entry { h, kind });
    }

    fn remove(&mut self, h: SocketHandle) -> Option<Entry> {
        let slot = self.table.get_mut(h.index() as usize)?;
        if slot.as_ref().is_some_and(|e| e.h == h) {
            slot.take()
        } else {
            None
        }
    }

    fn command(&mut self, now: Instant, stack: &mut Stack, cmd: Cmd) {
        match cmd {
            Cmd::Cancel { h, dir } => self.cancel(h, dir),
            Cmd::Nodelay { h, on } => {
                if let Some(c) = stack.tcp_mut(h) {
                    c.set_nodelay(on);
                    stack.touch(now, h);
                }
            }
            Cmd::Close { h } => self.close(now, stack, h),
            Cmd::UdpBind { addr, rd, wr, reply } => {
                let r = stack.udp_bind(addr).map_err(|e| io_error(e, false)).map(|h| {
                    self.insert(h, Kind::Udp { rd, wr, recv: None, send: None });
                    (h, stack.udp_local_addr(h).unwrap_or(addr))
                });
                let _ = reply.try_send(r);
            }
            Cmd::UdpSend { h, buf, len, to, nonblocking } => self.udp_send(now, stack, h, ParkedSend { buf, len, to }, nonblocking),
            Cmd::UdpRecv { h, buf, nonblocking } => self.udp_recv(stack, h, buf, nonblocking),
            Cmd::PipeListen { addr, backlog, q, reply } => {
                let r = stack.tcp_listen(now, addr, backlog.max(1)).map_err(|e| io_error(e, false));
                let r = r.map(|h| {
                    let local = stack.tcp_listen_addr(h).unwrap_or(addr);
                    self.insert(h, Kind::PipeListener { q });
                    (h, local)
                });
                let _ = reply.try_send(r);
            }
            Cmd::PipeConnect { addr, pipe } => match stack.tcp_connect(now, None, addr) {
                Ok(h) => {
                    let local = stack.tcp(h).map(|c| c.tuple().local).unwrap_or(addr);
                    pipe.tx.lock().opened = Some((h, local));
                    self.insert(h, Kind::Pipe { pipe, connecting: true, fin_sent: false });
                    self.service(now, stack, h);
                }
                Err(e) => {
                    let mut tx = pipe.tx.lock();
                    tx.phase = Phase::Failed(e);
                    let w = tx.waker.take();
                    drop(tx);
                    pipe::wake(w);
                }
            },
            Cmd::Service { h } => self.dirty_one(now, stack, h),
            Cmd::Transfer { h, to, app_state, unconditional, slot } => self.transfer(now, stack, h, &to, &app_state, unconditional, slot),
            Cmd::TransferListen { addr, q } => self.transfer_listeners.push((addr, q)),
            Cmd::TransferUnlisten { q } => {
                self.transfer_listeners.retain(|(_, x)| !Arc::ptr_eq(x, &q));
                let waiting: Vec<Incoming> = q.inner.lock().q.drain(..).collect();
                for a in waiting {
                    self.remove(a.h);
                    let _ = stack.tcp_abort(now, a.h);
                    let _ = stack.close(now, a.h);
                }
            }
        }
    }

    /// Start moving connection `h` to stack `to`. The bytes its pipe holds go with it, in
    /// their place in the byte streams: what the application wrote and the stack has not
    /// taken yet, what the stack received and the application has not read.
    #[allow(clippy::too_many_arguments)]
    fn transfer(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, to: &str, app_state: &[u8], unconditional: bool, slot: Arc<TransferSlot>) {
        let pipe = match self.entry(h) {
            Some(Entry { kind: Kind::Pipe { pipe, .. }, .. }) => pipe.clone(),
            _ => {
                let _ = slot.answer(TransferReply::Lost { error: refused(io::ErrorKind::NotConnected, "the connection is gone".into()) });
                return;
            }
        };
        let kept = |error: ApiOrIo| TransferReply::Kept { h, error };
        if pipe.tx.lock().shut {
            let waited = slot.answer(kept(refused(io::ErrorKind::InvalidInput, "a stream shut down for writing cannot move".into())));
            self.came_back(now, stack, h, waited);
            return;
        }
        let same = handoff::stack_name(stack).is_some_and(|me| me == to);
        if same {
            // Re-parenting: the pipe and its bytes stay as they are.
            match handoff::transfer_with(stack, now, h, to, &handoff::Transfer { app_state, held: Default::default(), unconditional }) {
                Ok(id) => {
                    self.transfers.insert(id, Transferring { pipe, slot, same_stack: true });
                }
                Err(e) => {
                    let waited = slot.answer(kept(transfer_error(&e)));
                    self.came_back(now, stack, h, waited);
                }
            }
            return;
        }
        // Everything the stack can take now, first; then what is left in the rings travels.
        self.service(now, stack, h);
        if let Err(e) = handoff::check_transfer(stack, h, to) {
            let waited = slot.answer(kept(transfer_error(&e)));
            self.came_back(now, stack, h, waited);
            return;
        }
        let mut rx = pipe.rx.lock();
        let mut tx = pipe.tx.lock();
        let unread = ring_bytes(&rx.ring);
        let unsent = ring_bytes(&tx.ring);
        let held = stack::tcp::AppBytes { unread: &unread, unsent: &unsent };
        let r = handoff::transfer_with(stack, now, h, to, &handoff::Transfer { app_state, held, unconditional });
        // Once the offer was made (even one that failed), the record holds the bytes.
        if matches!(r, Ok(_) | Err(TransferError::Offer { .. })) {
            // The bytes are in the record now (and in the restored connection, if it came
            // straight back): not in the rings.
            let (n, m) = (rx.ring.len(), tx.ring.len());
            rx.ring.consume(n);
            tx.ring.consume(m);
            rx.eof = false;
            rx.stalled = false;
        }
        drop((rx, tx));
        match r {
            Ok(id) => {
                self.remove(h);
                self.transfers.insert(id, Transferring { pipe, slot, same_stack: false });
            }
            Err(TransferError::Offer { why, restored: Some(nh) }) => {
                self.remove(h);
                self.insert(nh, Kind::Pipe { pipe, connecting: false, fin_sent: false });
                self.service(now, stack, nh);
                let waited = slot.answer(TransferReply::Kept { h: nh, error: refused(io::ErrorKind::ConnectionRefused, format!("the offer to {to} failed: {why}")) });
                self.came_back(now, stack, nh, waited);
            }
            Err(TransferError::Offer { why, restored: None }) => {
                self.remove(h);
                let _ = slot.answer(TransferReply::Lost { error: refused(io::ErrorKind::ConnectionAborted, format!("the offer to {to} failed ({why}) and the connection could not be re-installed")) });
            }
            Err(e) => {
                    let waited = slot.answer(kept(transfer_error(&e)));
                    self.came_back(now, stack, h, waited);
                }
        }
    }

    /// A socket of the readiness API the application has work for.
    fn dirty_one(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        match self.entry(h).map(|e| &e.kind) {
            Some(Kind::Pipe { pipe, .. }) => {
                pipe.queued.store(false, Ordering::Release);
                self.service(now, stack, h);
            }
            Some(Kind::PipeListener { q }) => {
                q.queued.store(false, Ordering::Release);
                self.pipe_accept(now, stack, h);
            }
            _ => {}
        }
    }

    /// Move what can move between connection `h` and its pipe: received bytes (end of
    /// stream, an error) into `rx`, `tx`'s bytes into the send buffer, the FIN once `tx` is
    /// empty after a shutdown; finish a connect; close once the application dropped the
    /// stream and its bytes are sent. Wakes the application side that has news.
    fn service(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        let Some(Entry { kind: Kind::Pipe { pipe, connecting, fin_sent }, .. }) = self.entry(h) else { return };
        let (pipe, was_connecting, mut fin) = (pipe.clone(), *connecting, *fin_sent);
        if was_connecting {
            let state = stack.tcp(h).map(|c| (c.state(), c.error()));
            let mut tx = pipe.tx.lock();
            let failed = match state {
                _ if tx.closed => Some(None),
                Some((State::SynSent | State::SynReceived, _)) => return,
                Some((State::Closed, err)) => Some(Some(ApiError::Tcp(err.unwrap_or(tcp::Error::Reset)))),
                None => Some(Some(ApiError::Tcp(tcp::Error::Reset))),
                Some(_) => None,
            };
            match failed {
                Some(err) => {
                    // Refused, timed out, or given up by the application: the stream never
                    // existed for it.
                    if let Some(e) = err {
                        tx.phase = Phase::Failed(e);
                    }
                    let w = tx.waker.take();
                    drop(tx);
                    pipe::wake(w);
                    self.remove(h);
                    let _ = stack.tcp_abort(now, h);
                    let _ = stack.close(now, h);
                    return;
                }
                None => {
                    tx.phase = Phase::Open;
                    let w = tx.waker.take();
                    drop(tx);
                    pipe::wake(w);
                }
            }
        }
        // Receive: from the stack into the ring while it has room.
        let mut failed = None;
        let w = {
            let mut rx = pipe.rx.lock();
            let mut news = false;
            while !rx.eof && rx.error.is_none() {
                let free = rx.ring.free(4096);
                if free.is_empty() {
                    rx.stalled = true;
                    break;
                }
                match stack.tcp_recv(now, h, free) {
                    Ok(0) => rx.eof = true,
                    Ok(n) => rx.ring.commit(n),
                    Err(ApiError::WouldBlock) => break,
                    Err(e) => {
                        rx.error = Some(e);
                        failed = Some(e);
                    }
                }
                news = true;
            }
            if news { rx.waker.take() } else { None }
        };
        pipe::wake(w);
        // Send: the ring into the send buffer until it is full (a WouldBlock arms Writable).
        let (w, close) = {
            let mut tx = pipe.tx.lock();
            let before = tx.ring.len();
            if tx.error.is_none() {
                tx.error = failed;
            }
            while tx.error.is_none() && !tx.ring.is_empty() {
                let (a, _) = tx.ring.readable();
                match stack.tcp_send(now, h, a) {
                    Ok(k) if k > 0 => tx.ring.consume(k),
                    Ok(_) | Err(ApiError::WouldBlock) => break,
                    Err(e) => tx.error = Some(e),
                }
            }
            if tx.error.is_some() {
                let n = tx.ring.len();
                tx.ring.consume(n);
            }
            if tx.ring.is_empty() && tx.shut && !fin && tx.error.is_none() {
                fin = true;
                if let Err(e) = stack.tcp_shutdown(now, h) {
                    tx.error = Some(e);
                }
            }
            let news = tx.ring.len() < before || tx.error.is_some();
            (if news { tx.waker.take() } else { None }, tx.closed && tx.ring.is_empty())
        };
        pipe::wake(w);
        if close {
            self.remove(h);
            // Unread bytes at close: a RST, as a kernel socket closed with unread data.
            if !pipe.rx.lock().ring.is_empty() {
                let _ = stack.tcp_abort(now, h);
            }
            let _ = stack.close(now, h);
        } else if let Some(Entry { kind: Kind::Pipe { connecting, fin_sent, .. }, .. }) = self.entry(h) {
            *connecting = false;
            *fin_sent = fin;
        }
    }

    /// Hand what listener `l` has accepted to its accept queue, while the queue has room.
    fn pipe_accept(&mut self, now: Instant, stack: &mut Stack, l: SocketHandle) {
        let Some(Entry { kind: Kind::PipeListener { q }, .. }) = self.entry(l) else { return };
        let q = q.clone();
        let mut any = false;
        loop {
            {
                let mut inner = q.inner.lock();
                if inner.q.len() >= inner.cap {
                    inner.stalled = true;
                    break;
                }
            }
            let Ok(h) = stack.tcp_accept(l) else { break };
            let Some(tuple) = stack.tcp(h).map(|c| c.tuple()) else { continue };
            let pipe = Arc::new(Pipe::default());
            pipe.tx.lock().phase = Phase::Open;
            self.insert(h, Kind::Pipe { pipe: pipe.clone(), connecting: false, fin_sent: false });
            // Bytes that came with the handshake, or before the accept.
            self.service(now, stack, h);
            q.inner.lock().q.push_back(Incoming { h, pipe, local: tuple.local, peer: tuple.remote, moved: None });
            any = true;
        }
        if any {
            let w = q.inner.lock().waker.take();
            pipe::wake(w);
        }
    }

    /// A timed-out call gives up: answer it now with what it has (a write: the bytes already
    /// queued). Nothing parked: its answer is already on its way.
    fn cancel(&mut self, h: SocketHandle, dir: Dir) {
        let Some(e) = self.entry(h) else { return };
        match (&mut e.kind, dir) {
            (Kind::Udp { rd, recv: read, .. }, Dir::Read) => {
                if let Some(p) = read.take() {
                    answer(rd, Reply { buf: p.buf, result: partial_or_would_block(0), from: None });
                }
            }
            (Kind::Udp { wr, send, .. }, Dir::Write) => {
                if let Some(p) = send.take() {
                    answer(wr, Reply { buf: p.buf, result: partial_or_would_block(0), from: None });
                }
            }
            (Kind::Pipe { .. } | Kind::PipeListener { .. }, _) => {}
        }
    }

    fn close(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        let Some(e) = self.remove(h) else { return };
        if let Kind::PipeListener { q } = e.kind {
            // Connections accepted but not taken: closed like a kernel listener's queue.
            let waiting: Vec<Incoming> = q.inner.lock().q.drain(..).collect();
            for a in waiting {
                self.remove(a.h);
                let _ = stack.tcp_abort(now, a.h);
                let _ = stack.close(now, a.h);
            }
        }
        let _ = stack.close(now, h);
    }

    fn udp_send(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, p: ParkedSend, nonblocking: bool) {
        let r = stack.udp_send_to(now, h, p.to, &p.buf[..p.len]);
        let Some(Entry { kind: Kind::Udp { wr, send, .. }, .. }) = self.entry(h) else { return };
        let result = match r {
            Err(ApiError::WouldBlock) if !nonblocking => {
                *send = Some(p);
                self.udp_blocked.push(h);
                return;
            }
            r => r.map_err(|e| io_error(e, false)),
        };
        answer(wr, Reply { buf: p.buf, result, from: None });
    }

    fn udp_recv(&mut self, stack: &mut Stack, h: SocketHandle, mut buf: Vec<u8>, nonblocking: bool) {
        let Some(Entry { kind: Kind::Udp { rd, recv, .. }, .. }) = self.entry(h) else { return };
        let (result, from) = match stack.udp_recv_from(h, &mut buf) {
            Ok((n, from)) => (Ok(n), Some(from)),
            Err(ApiError::WouldBlock) if !nonblocking => {
                *recv = Some(ParkedRead { buf });
                return;
            }
            Err(e) => (Err(io_error(e, false)), None),
        };
        answer(rd, Reply { buf, result, from });
    }

    /// Socket `h` has news: finish what is parked on it, and nothing else.
    fn wake(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        let Some(e) = self.entry(h) else { return };
        match (&mut e.kind, ev) {
            (Kind::PipeListener { .. }, SocketEvent::Acceptable) => self.pipe_accept(now, stack, h),
            (Kind::Pipe { .. }, SocketEvent::Tcp(_)) => self.service(now, stack, h),
            (Kind::Udp { recv, .. }, SocketEvent::UdpReadable) => {
                if let Some(p) = recv.take() {
                    self.udp_recv(stack, h, p.buf, false);
                }
            }
            _ => {}
        }
    }
}

impl Bridge {
    /// A connection came back from a transfer nobody waits for any more (the future was
    /// dropped): closed as a dropped stream is.
    fn came_back(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, waited: bool) {
        if waited {
            return;
        }
        if let Some(Entry { kind: Kind::Pipe { pipe, .. }, .. }) = self.entry(h) {
            pipe.tx.lock().closed = true;
            self.service(now, stack, h);
        }
    }
}

/// A ring's bytes, oldest first (one allocation per transfer).
fn ring_bytes(r: &pipe::Ring) -> Vec<u8> {
    let (a, b) = r.readable();
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

fn transfer_error(e: &TransferError) -> ApiOrIo {
    let kind = match e {
        TransferError::NotClustered | TransferError::FollowerShard { .. } | TransferError::UnknownStack(_) | TransferError::NotMovable(_) => {
            io::ErrorKind::InvalidInput
        }
        TransferError::Offer { .. } => io::ErrorKind::ConnectionRefused,
    };
    ApiOrIo { kind, msg: e.to_string() }
}

impl App for Bridge {
    fn start(&mut self, _now: Instant, _stack: &mut Stack) -> Result<(), String> {
        Ok(())
    }

    /// A transfer listener of this shard for the offer's address with room takes it.
    fn transfer_offer(&mut self, _now: Instant, _stack: &mut Stack, offer: &TransferOffer) -> TransferDecision {
        let room = self.transfer_listeners.iter().any(|(a, q)| takes(*a, offer.local) && { let i = q.inner.lock(); i.q.len() < i.cap && !i.gone });
        if room {
            self.offer_from.clone_from(&offer.from);
            TransferDecision::Accept
        } else {
            TransferDecision::Reject(handoff::REJECT_NO_LISTENER)
        }
    }

    /// A connection moved here: into a pipe (its own, if it only changed hands on this
    /// stack) and onto the queue of the transfer listener that takes it.
    fn transferred(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, app_state: &[u8]) {
        let Some(tuple) = stack.tcp(h).map(|c| c.tuple()) else { return };
        let q = self.transfer_listeners.iter().find(|(a, _)| takes(*a, tuple.local)).map(|(_, q)| q.clone());
        let Some(q) = q else {
            // The listener went away between the offer and now (unconditional offers are
            // not asked): as a listener's queue at close, the connection is reset.
            self.remove(h);
            let _ = stack.tcp_abort(now, h);
            let _ = stack.close(now, h);
            return;
        };
        let pipe = match self.entry(h) {
            Some(Entry { kind: Kind::Pipe { pipe, .. }, .. }) => pipe.clone(),
            _ => {
                let pipe = Arc::new(Pipe::default());
                pipe.tx.lock().phase = Phase::Open;
                self.insert(h, Kind::Pipe { pipe: pipe.clone(), connecting: false, fin_sent: false });
                self.service(now, stack, h);
                pipe
            }
        };
        let from = std::mem::take(&mut self.offer_from);
        let w = {
            let mut inner = q.inner.lock();
            inner.q.push_back(Incoming { h, pipe, local: tuple.local, peer: tuple.remote, moved: Some((from, app_state.to_vec())) });
            inner.waker.take()
        };
        pipe::wake(w);
    }

    /// A transfer of this shard's ended: the application learns it; a connection that came
    /// back is served again through its pipe.
    fn transfer_done(&mut self, now: Instant, stack: &mut Stack, id: TransferId, outcome: TransferOutcome) {
        let Some(t) = self.transfers.remove(&id) else { return };
        let (handle, error) = match outcome {
            TransferOutcome::Accepted { to } => {
                let _ = t.slot.answer(TransferReply::Moved { to });
                return;
            }
            TransferOutcome::Rejected { reason, handle } => {
                (handle, refused(io::ErrorKind::ConnectionRefused, format!("the target refused the connection (reason {reason})")))
            }
            TransferOutcome::Aborted { handle } => (handle, refused(io::ErrorKind::TimedOut, "the target did not take the connection in time".into())),
        };
        match handle {
            Some(nh) => {
                if !t.same_stack {
                    self.insert(nh, Kind::Pipe { pipe: t.pipe, connecting: false, fin_sent: false });
                    self.service(now, stack, nh);
                }
                let waited = t.slot.answer(TransferReply::Kept { h: nh, error });
                self.came_back(now, stack, nh, waited);
            }
            None => {
                let _ = t.slot.answer(TransferReply::Lost { error });
            }
        }
    }

    /// Finish the call parked on `h`, if any: work proportional to the sockets with news.
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        self.wake(now, stack, h, ev);
    }

    /// Run the commands application threads sent; retry the stalled listeners and the UDP
    /// sends waiting for room (both lists empty in the common case).
    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        let mut did = false;
        while let Ok(cmd) = self.rx.try_recv() {
            did = true;
            self.command(now, stack, cmd);
        }
        while let Some(h) = self.dirty.pop() {
            did = true;
            self.dirty_one(now, stack, h);
        }
        if !self.udp_blocked.is_empty() {
            let blocked = std::mem::take(&mut self.udp_blocked);
            for &h in &blocked {
                if let Some(Entry { kind: Kind::Udp { send, .. }, .. }) = self.entry(h) {
                    if let Some(p) = send.take() {
                        self.udp_send(now, stack, h, p, false);
                        did = true;
                    }
                }
            }
        }
        did
    }
}

impl Drop for Bridge {
    /// The poll thread stops: every waiting reader, writer and accept of the readiness API
    /// learns it (the blocking API's learn it from their channels).
    fn drop(&mut self) {
        // A connect not yet made would otherwise wait forever.
        while let Ok(cmd) = self.rx.try_recv() {
            if let Cmd::PipeConnect { pipe, .. } = cmd {
                let w = {
                    let mut tx = pipe.tx.lock();
                    tx.gone = true;
                    tx.waker.take()
                };
                pipe::wake(w);
            }
        }
        for t in self.transfers.values() {
            t.slot.gone();
        }
        for (_, q) in &self.transfer_listeners {
            let w = {
                let mut inner = q.inner.lock();
                inner.gone = true;
                inner.waker.take()
            };
            pipe::wake(w);
        }
        for e in self.table.iter().flatten() {
            match &e.kind {
                Kind::Pipe { pipe, .. } => {
                    let w = {
                        let mut rx = pipe.rx.lock();
                        rx.gone = true;
                        rx.waker.take()
                    };
                    pipe::wake(w);
                    let w = {
                        let mut tx = pipe.tx.lock();
                        tx.gone = true;
                        tx.waker.take()
                    };
                    pipe::wake(w);
                }
                Kind::PipeListener { q } => {
                    let w = {
                        let mut inner = q.inner.lock();
                        inner.gone = true;
                        inner.waker.take()
                    };
                    pipe::wake(w);
                }
                _ => {}
            }
        }
    }
}
