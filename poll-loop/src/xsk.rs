//! The AF_XDP socket: one UMEM and its four rings as one owning type, with batch methods.
//!
//! Frame accounting lives in `FrameEngine`, generic over a small `Rings` trait (both private
//! to the crate: safe code outside it cannot hand a frame the kernel owns to a ring), so the
//! logic that keeps every UMEM frame in exactly one place (our free list, the fill ring, the
//! RX ring, the TX ring or the completion ring) is unit-tested against an in-process fake
//! kernel (`xsk/tests.rs`), and used unchanged with the real xsk-rs rings (`XskRings`).
//!
//! This module is one of the two rooms of plex allowed `unsafe` (the other is coupling's `region.rs`): the xsk-rs ring and frame
//! calls are `unsafe` because the compiler cannot know a descriptor belongs to this UMEM and is
//! not in the kernel's hands. `FrameEngine` guarantees both: descriptors are created only by
//! `Umem::new` for this UMEM, and a descriptor is handed to a ring only after it was taken from
//! the free list (so it is in no other place).

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::error::StartError;

/// What the frame engine needs from a set of rings. Descriptors are plain handles.
///
/// Crate-private, like [`FrameEngine`] and [`XskRings`]: calling `fill_produce` or `tx_produce`
/// with a descriptor the kernel already holds would break the SAFETY arguments of
/// [`XskRings`], so only the engine (which takes descriptors from its free list) calls them.
/// Code outside the crate reaches the rings only through [`Xsk`]'s batch methods.
pub(crate) trait Rings {
    type Desc: Copy;
    /// Free slots in the fill ring, up to `want`.
    fn fill_free(&mut self, want: u32) -> u32;
    /// Hand `descs` to the kernel for receiving (exactly as many as `fill_free` allowed).
    fn fill_produce(&mut self, descs: &[Self::Desc]);
    /// Received frames.
    fn rx_consume(&mut self, out: &mut [Self::Desc]) -> usize;
    fn tx_free(&mut self, want: u32) -> u32;
    fn tx_produce(&mut self, descs: &[Self::Desc]);
    /// Frames the kernel finished sending.
    fn comp_consume(&mut self, out: &mut [Self::Desc]) -> usize;
    /// Read a received frame.
    fn read(&self, d: &Self::Desc, f: &mut dyn FnMut(&[u8]));
    /// Let `f` write a frame into the whole buffer of `d`; the returned length becomes the
    /// frame's length.
    fn write(&mut self, d: &mut Self::Desc, f: &mut dyn FnMut(&mut [u8]) -> Option<usize>) -> Option<usize>;
    fn tx_needs_kick(&self) -> bool;
    fn tx_kick(&mut self) -> io::Result<()>;
    /// Unused by the engine today (in copy mode the kernel refills from the fill ring on
    /// receive, without a kick); kept so the fake kernel and the real rings state it.
    #[allow(dead_code)]
    fn fill_needs_kick(&self) -> bool;
}

/// Per-socket counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Wake-ups of the kernel's TX path (sendto).
    pub tx_kicks: u64,
    /// Wake-ups that failed (counted, the frames stay queued).
    pub tx_kick_errors: u64,
    /// TX wanted a frame and none was free.
    pub tx_no_frame: u64,
    /// TX completions reaped (frames the kernel gave back).
    pub completions: u64,
}

/// Frame accounting over any [`Rings`].
#[derive(Debug)]
pub(crate) struct FrameEngine<R: Rings> {
    rings: R,
    free: Vec<R::Desc>,
    /// Every frame of the UMEM (read by the accounting check of the fake-kernel tests).
    #[cfg_attr(not(test), allow(dead_code))]
    total: usize,
    /// Frames at most kept in the fill ring (the rest serve TX).
    rx_quota: usize,
    /// The fill ring is topped up once this many frames are missing: its producer index and
    /// descriptors are cache lines the kernel reads on the peer's CPU, so writing them once
    /// per frame moves them between cores once per frame.
    refill_batch: usize,
    in_fill: usize,
    in_tx: usize,
    scratch: Vec<R::Desc>,
    staged: Vec<R::Desc>,
    pub stats: XskStats,
}

impl<R: Rings> FrameEngine<R> {
    /// `frames` are every descriptor of the UMEM; `rx_quota` of them may sit in the fill ring.
    ///
    /// Panics if `frames` is empty (a UMEM always has frames).
    pub fn new(rings: R, frames: Vec<R::Desc>, rx_quota: usize, batch: usize) -> Self {
        let total = frames.len();
        let batch = batch.max(1);
        // The rings write descriptors into caller slices; these placeholder values are only
        // ever overwritten, never read.
        let placeholder = frames[0];
        let mut free = Vec::with_capacity(total);
        free.extend_from_slice(&frames);
        let mut e = FrameEngine {
            rings,
            free,
            total,
            rx_quota: rx_quota.min(total),
            refill_batch: (rx_quota.min(total) / 8).clamp(1, 64),
            in_fill: 0,
            in_tx: 0,
            scratch: vec![placeholder; batch.max(64)],
            staged: Vec::with_capacity(batch),
            stats: XskStats::default(),
        };
        e.refill();
        e
    }

    /// Frames in userspace hands (free list).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn in_fill(&self) -> usize {
        self.in_fill
    }
    pub fn in_tx(&self) -> usize {
        self.in_tx
    }
    /// Every frame is somewhere: free, fill ring (incl. received not yet consumed), TX ring
    /// (incl. completion ring).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn accounted(&self) -> bool {
        self.free.len() + self.in_fill + self.in_tx == self.total
    }

    /// Top the fill ring up to the RX quota.
    pub fn refill(&mut self) {
        let want = self.rx_quota.saturating_sub(self.in_fill).min(self.free.len());
        if want == 0 {
            return;
        }
        let n = self.rings.fill_free(want as u32) as usize;
        let n = n.min(want);
        if n == 0 {
            return;
        }
        let start = self.free.len() - n;
        self.rings.fill_produce(&self.free[start..]);
        self.free.truncate(start);
        self.in_fill += n;
    }

    /// Receive up to `max` frames, calling `f` on each; the frames go back to the fill ring.
    pub fn rx_batch(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let max = max.min(self.scratch.len());
        let n = self.rings.rx_consume(&mut self.scratch[..max]);
        for i in 0..n {
            let d = self.scratch[i];
            self.rings.read(&d, &mut f);
            self.free.push(d);
        }
        self.in_fill -= n;
        self.stats.rx_frames += n as u64;
        if n > 0 && self.rx_quota - self.in_fill >= self.refill_batch {
            self.refill();
        }
        n
    }

    /// Take back frames the kernel finished sending.
    pub fn reap(&mut self) -> usize {
        let mut total = 0;
        while self.in_tx > 0 {
            let n = self.rings.comp_consume(&mut self.scratch[..]);
            self.free.extend_from_slice(&self.scratch[..n]);
            self.in_tx -= n;
            self.stats.completions += n as u64;
            total += n;
            if n < self.scratch.len() {
                break;
            }
        }
        total
    }

    /// Send up to `max` frames: `f` writes each into a free frame and returns its length, or
    /// `None` when it has nothing more. Kicks the kernel once if it asks for it.
    pub fn tx_batch(&mut self, max: usize, f: impl FnMut(&mut [u8]) -> Option<usize>) -> usize {
        let n = self.tx_fill(max, f);
        if n > 0 || self.in_tx > 0 {
            self.kick_if_needed();
        }
        n
    }

    /// Queue up to `max` frames on the TX ring like [`tx_batch`](Self::tx_batch), without
    /// kicking: a caller that fills several batches kicks once at the end
    /// ([`kick_if_needed`](Self::kick_if_needed)). In copy mode every kick is a `sendto`
    /// that moves at most the socket's TX budget of frames.
    pub fn tx_fill(&mut self, max: usize, mut f: impl FnMut(&mut [u8]) -> Option<usize>) -> usize {
        self.reap();
        let room = self.rings.tx_free(max as u32) as usize;
        let max = max.min(room).min(self.staged.capacity().max(1));
        self.staged.clear();
        while self.staged.len() < max {
            let Some(mut d) = self.free.pop() else {
                self.stats.tx_no_frame += 1;
                break;
            };
            match self.rings.write(&mut d, &mut f) {
                Some(_) => self.staged.push(d),
                None => {
                    self.free.push(d);
                    break;
                }
            }
        }
        let n = self.staged.len();
        if n > 0 {
            self.rings.tx_produce(&self.staged);
            self.in_tx += n;
            self.stats.tx_frames += n as u64;
        }
        self.staged.clear();
        n
    }

    /// Wake the kernel's TX path if it sleeps (copy mode always asks).
    pub fn kick_if_needed(&mut self) {
        if self.rings.tx_needs_kick() {
            self.stats.tx_kicks += 1;
            if self.rings.tx_kick().is_err() {
                self.stats.tx_kick_errors += 1;
            }
        }
    }
}

/// The real rings of one AF_XDP socket, via xsk-rs.
pub(crate) struct XskRings {
    umem: Umem,
    fq: FillQueue,
    cq: CompQueue,
    tx: TxQueue,
    rx: RxQueue,
}

impl core::fmt::Debug for XskRings {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XskRings").field("fd", &self.rx.fd().as_raw_fd()).finish()
    }
}

impl Rings for XskRings {
    type Desc = FrameDesc;
    fn fill_free(&mut self, want: u32) -> u32 {
        self.fq.nb_free(want)
    }
    fn fill_produce(&mut self, descs: &[FrameDesc]) {
        // SAFETY: every descriptor comes from this UMEM's `Umem::new` and was just taken from
        // the engine's free list, so neither we nor the kernel use it elsewhere. `fill_free`
        // reported room for all of them (produce is all-or-nothing).
        let n = unsafe { self.fq.produce(descs) };
        debug_assert_eq!(n, descs.len());
    }
    fn rx_consume(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: the descriptors written into `out` are frames of this UMEM that the kernel
        // hands back; `out`'s previous contents are placeholders and are overwritten.
        unsafe { self.rx.consume(out) }
    }
    fn tx_free(&mut self, want: u32) -> u32 {
        self.tx.nb_free(want)
    }
    fn tx_produce(&mut self, descs: &[FrameDesc]) {
        // SAFETY: as for the fill ring: frames of this UMEM, owned by us until now, and
        // `tx_free` reported room for all of them.
        let n = unsafe { self.tx.produce(descs) };
        debug_assert_eq!(n, descs.len());
    }
    fn comp_consume(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: completed frames of this UMEM come back to us; `out` holds placeholders.
        unsafe { self.cq.consume(out) }
    }
    fn read(&self, d: &FrameDesc, f: &mut dyn FnMut(&[u8])) {
        // SAFETY: `d` was just consumed from the RX ring of this UMEM: the kernel is done with
        // it and nothing else references it until it goes back to the fill ring.
        let data = unsafe { self.umem.data(d) };
        f(data.contents())
    }
    fn write(&mut self, d: &mut FrameDesc, f: &mut dyn FnMut(&mut [u8]) -> Option<usize>) -> Option<usize> {
        // SAFETY: `d` was taken from the free list: no ring holds it, so we have the only
        // access to its memory until it is produced to the TX ring.
        let mut data = unsafe { self.umem.data_mut(d) };
        let mut cursor = data.cursor();
        let cap = cursor.buf_len();
        cursor.set_pos(cap);
        let n = f(data.contents_mut())?;
        data.cursor().set_pos(n.min(cap));
        Some(n)
    }
    fn tx_needs_kick(&self) -> bool {
        self.tx.needs_wakeup()
    }
    fn tx_kick(&mut self) -> io::Result<()> {
        self.tx.wakeup()
    }
    fn fill_needs_kick(&self) -> bool {
        self.fq.needs_wakeup()
    }
}

/// Configuration of one AF_XDP socket.
#[derive(Debug, Clone)]
pub struct XskConfig {
    /// The interface.
    pub ifname: String,
    /// Its queue this socket binds to.
    pub queue: u32,
    /// UMEM frames (each `frame_size` bytes).
    pub frames: u32,
    /// Bytes per UMEM frame (4096: one page).
    pub frame_size: u32,
    /// Descriptors per ring (RX, TX, fill, completion).
    pub ring_size: u32,
    /// Batch size for RX/TX calls.
    pub batch: usize,
    /// Frames one TX kick may move in copy mode (`XDP_MAX_TX_SKB_BUDGET`, kernel 6.17+;
    /// 32 before). One batch: a larger budget sends a whole window in one `sendto`, during
    /// which no ACK is read (measured: 2048 cut bulk throughput to a quarter).
    pub tx_budget: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig { ifname: String::new(), queue: 0, frames: 8192, frame_size: 4096, ring_size: 2048, batch: 64, tx_budget: 64 }
    }
}

/// An AF_XDP socket bound to one queue of an interface, in copy mode with need_wakeup.
#[derive(Debug)]
pub struct Xsk {
    engine: FrameEngine<XskRings>,
    fd: RawFd,
    queue: u32,
    tx_budget: u32,
}

impl Xsk {
    /// Create the UMEM and the socket, bound to the queue (copy mode); errors name the errno
    /// and the missing capability.
    pub fn open(cfg: &XskConfig) -> Result<Xsk, StartError> {
        let size = |v: u32| QueueSize::new(v).map_err(|e| StartError::Other(format!("ring size {v}: {e}")));
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| StartError::Other(format!("frame size {}: {e}", cfg.frame_size)))?)
            .fill_queue_size(size(cfg.ring_size)?)
            .comp_queue_size(size(cfg.ring_size)?)
            .build()
            .map_err(|e| StartError::Other(format!("UMEM config: {e}")))?;
        let frames = NonZeroU32::new(cfg.frames).ok_or_else(|| StartError::Other("--frames must be above 0".into()))?;
        let bytes = cfg.frames as u64 * cfg.frame_size as u64;
        // The memlock limit cannot be raised without CAP_SYS_RESOURCE; CAP_IPC_LOCK suffices
        // too, so a failure to raise it is only reported if the UMEM is then refused.
        raise_memlock();
        let (umem, descs) = Umem::new(umem_cfg, frames, false).map_err(|e| umem_error(cfg, bytes, &e))?;
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(size(cfg.ring_size)?)
            .tx_queue_size(size(cfg.ring_size)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let iface: Interface = cfg.ifname.parse().map_err(|_| StartError::NoSuchInterface(cfg.ifname.clone()))?;
        // SAFETY: the UMEM is not shared with another socket (it was created just above for
        // this socket only), so the shared-UMEM precondition of `Socket::new` does not apply.
        let (tx, rx, rings) =
            unsafe { xsk_rs::Socket::new(sock_cfg, &umem, &iface, cfg.queue) }.map_err(|e| socket_error(cfg, &e))?;
        let (fq, cq) = rings.ok_or_else(|| StartError::Other("xsk-rs returned no fill/completion rings".into()))?;
        let fd = rx.fd().as_raw_fd();
        let tx_budget = set_tx_budget(fd, cfg.tx_budget.clamp(KERNEL_TX_BATCH, cfg.ring_size));
        let rings = XskRings { umem, fq, cq, tx, rx };
        let rx_quota = (cfg.frames as usize / 2).min(cfg.ring_size as usize);
        let engine = FrameEngine::new(rings, descs, rx_quota, cfg.batch);
        Ok(Xsk { engine, fd, queue: cfg.queue, tx_budget })
    }

    /// Receive up to `max` frames, calling `f` on each; the frames go back to the fill ring.
    pub fn rx_batch(&mut self, max: usize, f: impl FnMut(&[u8])) -> usize {
        self.engine.rx_batch(max, f)
    }
    /// Send up to `max` frames: `f` writes each into a free frame and returns its length, or
    /// `None` when it has nothing more. Kicks the kernel once if it asks for it.
    pub fn tx_batch(&mut self, max: usize, f: impl FnMut(&mut [u8]) -> Option<usize>) -> usize {
        self.engine.tx_batch(max, f)
    }
    /// Queue up to `max` frames on the TX ring without kicking (see [`Xsk::kick_if_needed`]).
    pub fn tx_fill(&mut self, max: usize, f: impl FnMut(&mut [u8]) -> Option<usize>) -> usize {
        self.engine.tx_fill(max, f)
    }
    /// Wake the kernel's TX path if it sleeps (copy mode always asks).
    pub fn kick_if_needed(&mut self) {
        self.engine.kick_if_needed()
    }
    /// Take back frames the kernel finished sending.
    pub fn reap(&mut self) -> usize {
        self.engine.reap()
    }
    /// Frames on the TX or completion ring.
    pub fn in_tx(&self) -> usize {
        self.engine.in_tx()
    }
    /// Per-socket counters.
    pub fn stats(&self) -> XskStats {
        self.engine.stats
    }

    /// Frames one TX kick moves in copy mode: the ring size when the kernel (6.17+) took
    /// `XDP_MAX_TX_SKB_BUDGET`, else the kernel's fixed 32.
    pub fn tx_budget(&self) -> u32 {
        self.tx_budget
    }

    /// The socket's file descriptor (to register in the steering program's map, or poll on).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The socket's file descriptor, borrowed.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the socket is open for as long as `self` (the rings own it): the borrow
        // cannot outlive it.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) }
    }

    /// Sleep until the socket has a frame to read, `waker` is woken, or `timeout_ms` passes
    /// (adaptive polling).
    pub fn wait(&self, timeout_ms: i32, waker: Option<&Waker>) {
        let mut pfds = [
            libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: waker.map(|w| w.fd.as_raw_fd()).unwrap_or(-1), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `pfds` is a valid array of two initialised pollfds for the duration of the
        // call (a negative fd is ignored by poll).
        let _ = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout_ms) };
        if let Some(w) = waker {
            if pfds[1].revents != 0 {
                w.fd.drain();
            }
        }
    }
    /// The queue it is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The kernel's counters of this socket (`getsockopt(SOL_XDP, XDP_STATISTICS)`, through
    /// xsk-rs): frames the kernel dropped before plex saw them.
    pub fn kernel_stats(&self) -> io::Result<KernelXdpStats> {
        let s = self.engine.rings.rx.fd().xdp_statistics()?;
        Ok(KernelXdpStats {
            rx_dropped: s.rx_dropped(),
            rx_invalid_descs: s.rx_invalid_descs(),
            tx_invalid_descs: s.tx_invalid_descs(),
            rx_ring_full: s.rx_ring_full(),
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs(),
            tx_ring_empty_descs: s.tx_ring_empty_descs(),
        })
    }
}

/// `struct xdp_statistics` (linux/if_xdp.h) of one AF_XDP socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelXdpStats {
    /// Received frames dropped for other reasons (e.g. no UMEM frame: the fill ring was empty
    /// when the frame arrived, in copy mode).
    pub rx_dropped: u64,
    /// RX descriptors the kernel found invalid.
    pub rx_invalid_descs: u64,
    /// TX descriptors the kernel found invalid.
    pub tx_invalid_descs: u64,
    /// Received frames dropped because the RX ring was full (plex did not keep up).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty when woken.
    pub tx_ring_empty_descs: u64,
}

impl KernelXdpStats {
    /// `(name, value)` pairs, for dumps.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("rx_dropped", self.rx_dropped),
            ("rx_ring_full", self.rx_ring_full),
            ("rx_fill_ring_empty", self.rx_fill_ring_empty_descs),
            ("rx_invalid_descs", self.rx_invalid_descs),
            ("tx_invalid_descs", self.tx_invalid_descs),
            ("tx_ring_empty", self.tx_ring_empty_descs),
        ]
        .into_iter()
    }
}

/// Wakes a poll thread sleeping in adaptive mode (an eventfd it polls beside its socket), so a
/// command from an application thread is seen at once.
///
/// Only a poll thread about to sleep costs its wakers a syscall: it [`arm`](Waker::arm)s the
/// waker, looks for work once more, and sleeps; [`wake`](Waker::wake) writes the eventfd only
/// when it finds the waker armed (and disarms it), so while the loop spins, application
/// threads wake it with one atomic swap. The two fences make the look-again and the swap see
/// each other (one of the two sides always sees the other's write).
#[derive(Debug)]
pub struct Waker {
    fd: EventFd,
    armed: std::sync::atomic::AtomicBool,
}

impl Waker {
    /// A new eventfd.
    pub fn new() -> io::Result<Waker> {
        Ok(Waker { fd: EventFd::new()?, armed: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Wake the poll thread if it sleeps or is about to: one eventfd write if it armed the
    /// waker, nothing otherwise (the loop is running and will see the caller's work). Call
    /// after making the work visible (queue push, flag store).
    pub fn wake(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.armed.swap(false, Ordering::Relaxed) {
            self.fd.signal();
        }
    }

    /// The poll thread is about to sleep: from now on [`wake`](Waker::wake) writes the
    /// eventfd. The caller must look for work once more after this before it sleeps.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// The poll thread is running again: wakers need not write.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }

    /// The eventfd [`wake`](Waker::wake) writes (for a loop that waits in an event loop).
    pub fn event_fd(&self) -> &EventFd {
        &self.fd
    }
}

/// `fd` in the current tokio runtime's epoll, for readability (a poll thread running tokio,
/// [`crate::local`]): a duplicate of it, owned by the registration.
#[cfg(feature = "tokio")]
pub fn async_fd(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let owned = fd.try_clone_to_owned()?;
    // SAFETY: the AsyncFd owns `owned`: the descriptor stays open, and the same, for as long
    // as it is registered (tokio's I/O-safety condition).
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

/// A Linux eventfd (non-blocking, close-on-exec): a counter that is readable while non-zero,
/// for `poll(2)`, `epoll` and the event loops built on them.
#[derive(Debug)]
pub struct EventFd {
    fd: std::os::fd::OwnedFd,
}

impl EventFd {
    /// A new eventfd with its counter at 0.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd has no memory arguments; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(EventFd { fd: unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) } })
    }

    /// Make it readable (add 1 to the counter).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd; failure (counter full)
        // still leaves it readable, which is all a signal needs.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Read the counter back to 0 (non-blocking): not readable until the next signal.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64; non-blocking.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl std::os::fd::AsFd for EventFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The index of a network interface, or a clear error.
pub fn ifindex(ifname: &str) -> Result<i32, StartError> {
    let c = std::ffi::CString::new(ifname).map_err(|_| StartError::NoSuchInterface(ifname.to_string()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(StartError::NoSuchInterface(ifname.to_string()))
    } else {
        Ok(idx as i32)
    }
}

/// `XDP_MAX_TX_SKB_BUDGET` (linux/if_xdp.h, kernel 6.17): descriptors one `sendto` handles in
/// copy mode, 32 by default and before 6.17.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
const KERNEL_TX_BATCH: u32 = 32;

/// Let one TX kick move up to `budget` frames (copy mode handles 32 per `sendto` otherwise).
/// Returns the budget in force; an older kernel refuses the option, which is harmless.
fn set_tx_budget(fd: RawFd, budget: u32) -> u32 {
    // SAFETY: passes a valid pointer to an initialised u32 and its exact size; the kernel
    // only reads it. `fd` is our own open AF_XDP socket.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        budget
    } else {
        KERNEL_TX_BATCH
    }
}

fn raise_memlock() {
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct; failure is harmless.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// The errno an xsk-rs error carries (its source), if any.
fn os_error(e: &dyn std::error::Error) -> Option<&io::Error> {
    e.source().and_then(|s| s.downcast_ref::<io::Error>())
}

/// The soft RLIMIT_MEMLOCK in bytes, from `/proc/self/limits` (None: unlimited or unreadable).
fn memlock_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max locked memory"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A UMEM failure with its errno, and what to do about it.
fn umem_error(cfg: &XskConfig, bytes: u64, e: &xsk_rs::umem::UmemCreateError) -> StartError {
    let Some(io) = os_error(e) else { return StartError::Umem { bytes, err: e.to_string() } };
    // The UMEM is registered on a new AF_XDP socket: socket(2) wants CAP_NET_RAW.
    if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)) && !crate::error::has_cap("CAP_NET_RAW") {
        return StartError::not_permitted(format!("creating an AF_XDP socket on {} queue {}", cfg.ifname, cfg.queue), "CAP_NET_RAW");
    }
    let mut err = format!("{e}: {}", crate::error::errno_text(io));
    let memlock = matches!(io.raw_os_error(), Some(libc::ENOBUFS | libc::EPERM | libc::EAGAIN));
    if memlock && !crate::error::has_cap("CAP_IPC_LOCK") {
        let limit = memlock_limit().map(|l| format!("{} KiB", l >> 10)).unwrap_or_else(|| "unknown".into());
        err += &format!(
            " (the UMEM is locked memory: this process lacks CAP_IPC_LOCK and its RLIMIT_MEMLOCK is {limit}; run as root, raise the limit, or use fewer frames)"
        );
    } else if io.raw_os_error() == Some(libc::ENOMEM) {
        err += " (try fewer UMEM frames)";
    }
    StartError::Umem { bytes, err }
}

/// An AF_XDP socket failure: the queue taken, the capability missing, the queue or interface
/// absent, or the errno.
fn socket_error(cfg: &XskConfig, e: &xsk_rs::socket::SocketCreateError) -> StartError {
    let (ifname, queue) = (cfg.ifname.clone(), cfg.queue);
    let io = os_error(e);
    match io.and_then(|io| io.raw_os_error()) {
        Some(libc::EBUSY) => {
            let holder = ifindex(&ifname)
                .map(|i| crate::queue_holder::queue_holder(i as u32, queue))
                .unwrap_or(crate::error::QueueHolder::Unknown);
            StartError::QueueBusy { ifname, queue, holder }
        }
        Some(libc::EPERM) | Some(libc::EACCES) => StartError::not_permitted(format!("creating an AF_XDP socket on {ifname} queue {queue}"), "CAP_NET_RAW"),
        Some(libc::ENODEV) => StartError::NoSuchInterface(ifname),
        Some(libc::EINVAL) if rx_queues(&ifname).is_some_and(|n| queue >= n) => StartError::NoSuchQueue { ifname, queue },
        _ => StartError::Other(format!(
            "creating the AF_XDP socket on {ifname} queue {queue}: {e}: {}",
            io.map(crate::error::errno_text).unwrap_or_else(|| "no errno".into())
        )),
    }
}

/// How many receive queues the interface has (`/sys/class/net/IF/queues/rx-*`).
fn rx_queues(ifname: &str) -> Option<u32> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues")).ok()?;
    Some(dir.filter_map(Result::ok).filter(|d| d.file_name().to_string_lossy().starts_with("rx-")).count() as u32)
}

/// Attach the XDP program `prog` to the interface `ifindex` through a BPF link, in the mode
/// `flags` says (`XDP_FLAGS_SKB_MODE`, `XDP_FLAGS_DRV_MODE`, or 0: the kernel picks, native
/// where the driver has it). The program stays attached exactly as long as the returned fd
/// is open: however the process ends, even killed with -9, the kernel closes it and the
/// program goes. The kernel refuses (EBUSY, or EEXIST for the other mode) when the interface
/// already has a program, so a link never replaces another one's program.
pub(crate) fn xdp_link(prog: std::os::fd::BorrowedFd<'_>, ifindex: i32, flags: u32) -> io::Result<std::os::fd::OwnedFd> {
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        flags,
        ..Default::default()
    };
    // SAFETY: `prog` is an open program fd for the duration of the call, and `opts` is a valid,
    // initialised options struct whose `sz` is its own size; libbpf only reads it.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: `fd` is a fresh descriptor the kernel just created for us; nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Pin the XDP link `link` at `path` in a BPF filesystem: the program then stays attached
/// after the process ends (until [`detach_pinned`]). libbpf's errors are negative errnos.
pub(crate) fn pin_link(link: std::os::fd::BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `link` is an open fd for the call and `c` a valid NUL-terminated path.
    let r = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), c.as_ptr()) };
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r));
    }
    Ok(())
}

/// Detach the XDP program of the link pinned at `path` (left by a stack that died) and remove
/// the pin. `Ok(false)`: nothing is pinned there.
pub(crate) fn detach_pinned(path: &std::path::Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path for the call.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        let e = io::Error::from_raw_os_error(-fd);
        return if e.kind() == io::ErrorKind::NotFound { Ok(false) } else { Err(e) };
    }
    // SAFETY: `fd` is a fresh descriptor the kernel just created for us; nothing else owns it.
    let link = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `link` is an open link fd for the call.
    let r = unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
    let _ = std::fs::remove_file(path);
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r));
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
