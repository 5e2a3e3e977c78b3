//! Mapping the coupling region: the one module of `coupling` that makes system calls.
//!
//! A region is a file under `/dev/shm` (tmpfs), created 0600 by the first stack of the cluster
//! and mapped `MAP_SHARED` by every stack and by `plex ctl`. Creation is atomic: the creator
//! fills a private temporary file (header, section table, zeroed rows), then `link(2)`s it to
//! the region path; whoever loses that race attaches to the winner's file. The magic word is
//! stored last with Release, so an attacher that sees it (Acquire) sees the whole header.
//!
//! Tests and single-process simulations use [`Region::anonymous`]: the same layout on the heap.
//!
//! ## A region that goes bad under a running stack
//! Anyone with write access (the cluster's user, root) can truncate, zero or overwrite the file
//! while stacks have it mapped. Touching a mapped page past the end of a truncated file raises
//! SIGBUS, which would kill every stack at once. So:
//! - every mapping is registered with a process-wide SIGBUS guard: a fault inside a registered
//!   mapping replaces that whole mapping with private zero pages (`MAP_FIXED` anonymous, the
//!   faulting access is then retried and reads zeros) and marks it faulted. Faults elsewhere
//!   restore the previous disposition and re-fault as before (the process dies as it would have);
//! - [`Region::health`] (every heartbeat) reports the guard's mark, a file shorter than the
//!   mapping (`fstat`), a path that no longer names the mapped file, and a header that is no
//!   longer this region's (magic, version, length, config hash, section table). The node then
//!   leaves the cluster and its stack serves its own address alone.
//! - A stack that starts and finds a stale region (bad magic, truncated, bad section table)
//!   owned by its own uid replaces it (under a lock file, so racing starters agree on one) and
//!   says so; stacks still mapping the old file see the path change and leave.

use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use rustix::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use crate::layout::*;

/// Why a region could not be created or attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionError {
    /// No file at the path (no stack of the cluster has created it).
    NotFound(PathBuf),
    /// The file exists but this process may not open it (`EACCES`/`EPERM`).
    PermissionDenied(PathBuf),
    /// Shorter than its header or its section table says.
    Truncated {
        /// The region file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
        /// Bytes the header or section table requires.
        need: u64,
    },
    /// Not a coupling region (wrong magic).
    Foreign(PathBuf),
    /// A layout of another major version.
    Version {
        /// The region file.
        path: PathBuf,
        /// Its layout major version.
        major: u32,
        /// Its layout minor version.
        minor: u32,
    },
    /// The section table is inconsistent with this version's layout.
    BadSection {
        /// The region file.
        path: PathBuf,
        /// The section kind at fault (as stored).
        kind: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Created for another cluster config.
    ConfigMismatch {
        /// The region file.
        path: PathBuf,
        /// The config hash in the region header.
        region: u64,
        /// The hash of this stack's config.
        ours: u64,
        /// This stack's cluster name.
        cluster: String,
    },
    /// Owned by another uid than this stack's (a squatter, or another user's cluster).
    Owner {
        /// The region file.
        path: PathBuf,
        /// The file's owner uid.
        owner: u32,
        /// This process's effective uid.
        ours: u32,
    },
    /// Readable or writable by others than its owner.
    Mode {
        /// The region file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another system call failed (or a region could not be published).
    Io {
        /// The file the call was about (the region, its lock file or its temporary file).
        path: PathBuf,
        /// What was being done (`opening`, `mapping`, ...).
        what: &'static str,
        /// The error as text.
        err: String,
    },
}

impl std::fmt::Display for RegionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionError::NotFound(p) => write!(f, "coupling region {} does not exist (no stack of the cluster has started)", p.display()),
            RegionError::PermissionDenied(p) => write!(f, "coupling region {}: permission denied (it is 0600, owned by the cluster's user; run as that user or root)", p.display()),
            RegionError::Truncated { path, len, need } => write!(f, "coupling region {} is truncated: {len} bytes, the layout needs {need}", path.display()),
            RegionError::Foreign(p) => write!(f, "{} is not a plex coupling region (bad magic)", p.display()),
            RegionError::Version { path, major, minor } => write!(f, "coupling region {} has layout version {major}.{minor}; this plex speaks {MAJOR}.x: stop every stack of the cluster and remove the file", path.display()),
            RegionError::BadSection { path, kind, reason } => write!(f, "coupling region {}: section kind {kind}: {reason}", path.display()),
            RegionError::ConfigMismatch { path, region, ours, cluster } => write!(f, "coupling region {} of cluster {cluster:?} was created from another cluster config (hash {region:016x}, ours {ours:016x}): every stack must run the same config; remove the file if no stack uses it", path.display()),
            RegionError::Owner { path, owner, ours } => write!(f, "coupling region {} is owned by uid {owner}, not by this stack's uid {ours}: refusing to attach to a region another user controls; if no stack of the cluster uses it, remove it (rm {})", path.display(), path.display()),
            RegionError::Mode { path, mode } => write!(f, "coupling region {} has mode {mode:03o}: a region must be 0600 (only its owner may read or write it); remove it if no stack uses it", path.display()),
            RegionError::Io { path, what, err } => write!(f, "coupling region {}: {what}: {err}", path.display()),
        }
    }
}

impl std::error::Error for RegionError {}

/// Why a mapped region can no longer be trusted ([`Region::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionFault {
    /// An access faulted (SIGBUS: a page past the end of the file); the mapping now reads zeros.
    Faulted,
    /// The file is shorter than the mapping.
    Truncated {
        /// The file's length now (bytes).
        len: u64,
        /// Bytes mapped.
        mapped: u64,
    },
    /// The path names no file any more.
    Removed,
    /// The path names another file (a new region was created in its place).
    Replaced,
    /// The magic word is gone (zeroed or overwritten).
    BadMagic(u64),
    /// Version, length, config hash or section table changed under us.
    BadHeader(&'static str),
    /// `fstat`/`stat` failed.
    Io(String),
}

impl std::fmt::Display for RegionFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionFault::Faulted => write!(f, "an access to it faulted (SIGBUS: the file shrank); the mapping was replaced by zeros"),
            RegionFault::Truncated { len, mapped } => write!(f, "it was truncated to {len} bytes (mapped {mapped})"),
            RegionFault::Removed => write!(f, "its file was removed"),
            RegionFault::Replaced => write!(f, "its path now names another file (a new region)"),
            RegionFault::BadMagic(m) => write!(f, "its magic word is {m:#018x}, not PLEXCPL1 (zeroed or overwritten)"),
            RegionFault::BadHeader(what) => write!(f, "its header changed: {what}"),
            RegionFault::Io(e) => write!(f, "checking it failed: {e}"),
        }
    }
}

/// The process-wide SIGBUS guard: the mappings it covers (start, length, faulted).
struct Guard {
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

const GUARD_SLOTS: usize = 64;
#[allow(clippy::declare_interior_mutable_const)]
const GUARD_FREE: Guard = Guard { start: AtomicUsize::new(0), len: AtomicUsize::new(0), faulted: AtomicBool::new(false) };
static GUARDS: [Guard; GUARD_SLOTS] = [GUARD_FREE; GUARD_SLOTS];
/// The SIGBUS disposition before ours (restored for faults outside our mappings).
static OLD_SIGBUS: std::sync::OnceLock<libc::sigaction> = std::sync::OnceLock::new();

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for g in &GUARDS {
        let (start, len) = (g.start.load(Ordering::Acquire), g.len.load(Ordering::Acquire));
        if start != 0 && addr >= start && addr < start + len {
            // SAFETY: [start, start + len) is a live mapping of a `Region` (registered after
            // mmap, unregistered before munmap); replacing it with anonymous zero pages keeps
            // the address range valid for every reference into it, and atomics are valid for
            // all-zero bytes. mmap is a plain system call, safe to make from a signal handler.
            let p = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                g.faulted.store(true, Ordering::Release);
                // Returning retries the access, which now reads zeros.
                return;
            }
        }
    }
    // Not ours: put back the previous disposition; the access faults again and gets it.
    if let Some(old) = OLD_SIGBUS.get() {
        // SAFETY: `old` is the sigaction the kernel gave us when we installed ours.
        unsafe { libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut()) };
    } else {
        // SAFETY: resetting a signal to its default disposition.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
    }
}

fn install_sigbus_guard() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no handler, empty mask" value; we fill in our
        // handler (an extern "C" fn with the SA_SIGINFO signature) and install it, keeping the
        // old one for faults that are not ours.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &act, &mut old) == 0 {
                let _ = OLD_SIGBUS.set(old);
            }
        }
    });
}

/// Cover `[start, start + len)`; `None` when every guard slot is taken (the mapping is then
/// unguarded: [`Region::health`] still sees a truncation at the next heartbeat).
fn guard(start: usize, len: usize) -> Option<usize> {
    install_sigbus_guard();
    for (i, g) in GUARDS.iter().enumerate() {
        if g.len.compare_exchange(0, len, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            g.faulted.store(false, Ordering::Relaxed);
            g.start.store(start, Ordering::Release);
            return Some(i);
        }
    }
    None
}

fn unguard(slot: usize) {
    let g = &GUARDS[slot];
    g.start.store(0, Ordering::Release);
    g.len.store(0, Ordering::Release);
}

/// `n` zeroed words on the heap, from the allocator's zeroed memory: a large region (the
/// handoff slots alone are 32 MiB) then costs only the pages that are touched, as a sparse
/// tmpfs file does, instead of being written once at creation.
fn zeroed_words(n: usize) -> Box<[AtomicU64]> {
    if n == 0 {
        return Box::new([]);
    }
    let layout = match std::alloc::Layout::array::<AtomicU64>(n) {
        Ok(l) => l,
        Err(e) => unreachable!("a region of {n} words: {e}"),
    };
    // SAFETY: `layout` has a non-zero size (n > 0). `alloc_zeroed` returns memory of that
    // layout, all bytes zero, or null (handled). An all-zero `AtomicU64` is a valid
    // `AtomicU64(0)`, so the `n` elements are initialised; the slice was allocated by the
    // global allocator with exactly `Layout::array::<AtomicU64>(n)`, which is what
    // `Box<[AtomicU64]>` frees it with.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<AtomicU64>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}

enum Memory {
    Mapped { ptr: NonNull<u8>, len: usize, fd: OwnedFd, guard: Option<usize> },
    Heap(Box<[AtomicU64]>),
}

/// A mapped coupling region (or an anonymous one on the heap). All access to the shared
/// memory goes through the row types of [`layout`](crate::layout), which are atomics; the
/// accessors return rows borrowed from the handle, and dropping it unmaps the region.
pub struct Region {
    mem: Memory,
    writable: bool,
    path: Option<PathBuf>,
    /// (offset, count) per [`SectionKind`], indexed by kind - 1.
    sections: [(usize, usize); SectionKind::ALL.len()],
    /// The header's config hash when attached (it never changes in a live region).
    config_hash: u64,
}

// SAFETY: the mapping is only ever accessed through shared references to rows made of atomics
// (`Sync`), and the pointer stays valid until `Drop` unmaps it; moving or sharing the handle
// between threads is therefore as safe as sharing `&[AtomicU64]`.
unsafe impl Send for Region {}
// SAFETY: see `Send`: all access is through atomics.
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("path", &self.path).field("len", &self.len()).field("writable", &self.writable).finish()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Memory::Mapped { ptr, len, guard: g, .. } = self.mem {
            if let Some(g) = g {
                unguard(g);
            }
            // SAFETY: `ptr`/`len` came from a successful mmap in `map` and are unmapped once;
            // every reference handed out borrows `self`, so none outlives this.
            let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
        }
    }
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl Fn(Errno) -> RegionError + 'a {
    move |e| match e {
        Errno::NOENT => RegionError::NotFound(path.to_path_buf()),
        Errno::ACCESS | Errno::PERM => RegionError::PermissionDenied(path.to_path_buf()),
        e => RegionError::Io { path: path.to_path_buf(), what, err: e.to_string() },
    }
}

impl Region {
    /// Attach to the cluster's region at `path`, creating it if no stack has yet. A stack
    /// attaches only to a region its own effective uid owns, with mode 0600. A stale region
    /// (bad magic, truncated, bad section table: a region file is published complete, so no
    /// live cluster leaves one like that) owned by this uid is replaced (see
    /// [`Region::create_or_attach_logged`] to learn that it was). `config_hash` is
    /// [`ClusterConfig::hash`](crate::ClusterConfig::hash): an existing region of another
    /// config is refused ([`RegionError::ConfigMismatch`]); `now_ns` (CLOCK_MONOTONIC) is
    /// recorded as the creation time if this call creates it.
    pub fn create_or_attach(path: &Path, cluster: &str, config_hash: u64, now_ns: u64) -> Result<Region, RegionError> {
        Region::create_or_attach_logged(path, cluster, config_hash, now_ns).map(|(r, _)| r)
    }

    /// [`Region::create_or_attach`], also saying whether (and why) a stale region was replaced:
    /// `Some(why)`, the error the stale file gave, for the caller to log.
    pub fn create_or_attach_logged(
        path: &Path,
        cluster: &str,
        config_hash: u64,
        now_ns: u64,
    ) -> Result<(Region, Option<RegionError>), RegionError> {
        let ours = rustix::process::geteuid().as_raw();
        match Region::attach_owned(path, ours) {
            Ok(r) => return r.check_config(cluster, config_hash).map(|r| (r, None)),
            Err(RegionError::NotFound(_)) => {}
            Err(e @ (RegionError::Truncated { .. } | RegionError::Foreign(_) | RegionError::BadSection { .. })) => {
                // Stale: replace it, one replacer at a time (racing starters queue on the lock
                // file and find the first one's region valid).
                let lock = path.with_extension("lock");
                let lfd = rustix::fs::open(&lock, OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))
                    .map_err(io(&lock, "opening the lock file"))?;
                rustix::fs::flock(&lfd, rustix::fs::FlockOperation::LockExclusive).map_err(io(&lock, "locking"))?;
                match Region::attach_owned(path, ours) {
                    Ok(r) => return r.check_config(cluster, config_hash).map(|r| (r, None)),
                    Err(RegionError::NotFound(_)) => {}
                    Err(RegionError::Truncated { .. } | RegionError::Foreign(_) | RegionError::BadSection { .. }) => {
                        match rustix::fs::unlink(path) {
                            Ok(()) | Err(Errno::NOENT) => {}
                            Err(e) => return Err(io(path, "removing the stale region")(e)),
                        }
                    }
                    Err(e) => return Err(e),
                }
                let r = Region::create(path, cluster, config_hash, now_ns)?;
                return Ok((r, Some(e)));
            }
            Err(e) => return Err(e),
        }
        Region::create(path, cluster, config_hash, now_ns).map(|r| (r, None))
    }

    fn create(path: &Path, cluster: &str, config_hash: u64, now_ns: u64) -> Result<Region, RegionError> {
        let ours = rustix::process::geteuid().as_raw();
        let (_, len) = plan();
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "new.{}.{}",
            rustix::process::getpid().as_raw_nonzero(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let fd = rustix::fs::open(&tmp, OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))
            .map_err(io(&tmp, "creating"))?;
        let built = (|| {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(io(&tmp, "chmod 0600"))?;
            rustix::fs::ftruncate(&fd, len as u64).map_err(io(&tmp, "sizing"))?;
            let mut r = Region::map(fd, len, true, Some(path.to_path_buf()))?;
            r.init(cluster, config_hash, now_ns)?;
            Ok::<_, RegionError>(r)
        })();
        let linked = built.as_ref().ok().map(|_| rustix::fs::link(&tmp, path));
        let _ = rustix::fs::unlink(&tmp);
        let r = built?;
        match linked {
            Some(Ok(())) => Ok(r),
            // Another stack created it first: use theirs.
            Some(Err(Errno::EXIST)) => Region::attach_owned(path, ours)?.check_config(cluster, config_hash),
            Some(Err(e)) => Err(io(path, "publishing")(e)),
            None => Err(RegionError::Io { path: path.to_path_buf(), what: "publishing", err: "not built".into() }),
        }
    }

    /// Attach writable for a stack: the file must belong to `uid` and be 0600.
    fn attach_owned(path: &Path, uid: u32) -> Result<Region, RegionError> {
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty()).map_err(io(path, "opening"))?;
        let st = rustix::fs::fstat(&fd).map_err(io(path, "stat"))?;
        if st.st_uid != uid {
            return Err(RegionError::Owner { path: path.to_path_buf(), owner: st.st_uid, ours: uid });
        }
        if st.st_mode & 0o077 != 0 {
            return Err(RegionError::Mode { path: path.to_path_buf(), mode: st.st_mode & 0o7777 });
        }
        Region::map_checked(fd, path, true)
    }

    /// Attach to an existing region (`writable: false` maps it read-only, for `plex ctl show`).
    /// It validates the layout (magic, major version, length, section table) but, unlike
    /// [`Region::create_or_attach`], checks neither owner, mode nor config hash: who may act on
    /// the region is the caller's decision (`plex ctl` checks privilege with
    /// [`Region::owner_uid`]).
    pub fn attach(path: &Path, writable: bool) -> Result<Region, RegionError> {
        let flags = if writable { OFlags::RDWR } else { OFlags::RDONLY };
        let fd = rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty()).map_err(io(path, "opening"))?;
        Region::map_checked(fd, path, writable)
    }

    fn map_checked(fd: OwnedFd, path: &Path, writable: bool) -> Result<Region, RegionError> {
        let st = rustix::fs::fstat(&fd).map_err(io(path, "stat"))?;
        let len = st.st_size.max(0) as u64;
        if len < 4096 {
            return Err(RegionError::Truncated { path: path.to_path_buf(), len, need: 4096 });
        }
        Region::map(fd, len as usize, writable, Some(path.to_path_buf()))?.validate()
    }

    /// A region of this layout on the heap (tests, simulations of several stacks in one process).
    pub fn anonymous(cluster: &str, config_hash: u64) -> Region {
        let (_, len) = plan();
        let words = zeroed_words(len / 8);
        let mut r = Region { mem: Memory::Heap(words), writable: true, path: None, sections: [(0, 0); SectionKind::ALL.len()], config_hash: 0 };
        if let Err(e) = r.init(cluster, config_hash, 0) {
            // The layout is fixed at compile time and the memory was sized by `plan`.
            unreachable!("initialising an anonymous region: {e}");
        }
        r
    }

    fn map(fd: OwnedFd, len: usize, writable: bool, path: Option<PathBuf>) -> Result<Region, RegionError> {
        let prot = if writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
        let p = path.clone().unwrap_or_default();
        // SAFETY: a fresh shared mapping of `len` bytes of `fd` at an address the kernel picks;
        // it aliases no Rust object. Other processes write it concurrently, which is why every
        // access goes through atomics.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, &fd, 0) }.map_err(io(&p, "mapping"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(RegionError::Io { path: p, what: "mapping", err: "null mapping".into() })?;
        let guard = guard(ptr.as_ptr() as usize, len);
        Ok(Region { mem: Memory::Mapped { ptr, len, fd, guard }, writable, path, sections: [(0, 0); SectionKind::ALL.len()], config_hash: 0 })
    }

    fn base(&self) -> *const u8 {
        match &self.mem {
            Memory::Mapped { ptr, .. } => ptr.as_ptr(),
            Memory::Heap(w) => w.as_ptr().cast(),
        }
    }

    /// Bytes mapped (the file's length at attach).
    pub fn len(&self) -> usize {
        match &self.mem {
            Memory::Mapped { len, .. } => *len,
            Memory::Heap(w) => w.len() * 8,
        }
    }

    /// Never true for a region that was attached or created (at least 4096 bytes); present for
    /// symmetry with [`Region::len`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The region file's path; `None` for an anonymous region.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Mapped read-write (a stack, a privileged `plex ctl`); false for a read-only view.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The region header (offset 0).
    pub fn header(&self) -> &Header {
        // SAFETY: every region is at least 4096 bytes (checked at attach, by construction
        // otherwise) and page- or 8-aligned; `Header` is 512 bytes of atomics, valid for any
        // bit pattern, and lives as long as the mapping (`&self`).
        unsafe { &*self.base().cast::<Header>() }
    }

    fn rows<T>(&self, kind: SectionKind) -> &[T] {
        let (off, count) = self.sections[kind as usize - 1];
        if count == 0 {
            return &[];
        }
        // SAFETY: `validate`/`anonymous` checked that [off, off + count * size_of::<T>()) lies
        // inside the mapping and that `off` is 8-aligned; `T` is a `#[repr(C)]` row of atomics
        // (valid for every bit pattern, interior-mutable, `Sync`) and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.base().add(off).cast::<T>(), count) }
    }

    /// The member rows, indexed by stack slot.
    pub fn members(&self) -> &[MemberRow] {
        self.rows(SectionKind::Members)
    }
    /// The configured DVIPA rows, indexed like the config's `[[dvipa]]` list (rows past it
    /// stay zero).
    pub fn dvipas(&self) -> &[DvipaRow] {
        self.rows(SectionKind::Dvipas)
    }
    /// The range DVIPA table (open addressing by address; address 0 = a free row).
    pub fn range_dvipas(&self) -> &[DvipaRow] {
        self.rows(SectionKind::RangeDvipas)
    }
    /// The distributor's destination port table (key 0 = a free row).
    pub fn dpt(&self) -> &[DptRow] {
        self.rows(SectionKind::DistributorPorts)
    }
    /// The distributor's connection routing table (ctl 0 = a free row).
    pub fn crt(&self) -> &[CrtRow] {
        self.rows(SectionKind::DistributorConns)
    }
    /// The cluster port registries (address 0 = a free row; `cluster_ports`, spec/03).
    pub fn port_registries(&self) -> &[PortRegistryRow] {
        self.rows(SectionKind::PortOwners)
    }
    /// The 4-tuple table of `cluster_ports = "tuple"` addresses (ctl 0 = a free row).
    pub fn port_tuples(&self) -> &[PortTupleRow] {
        self.rows(SectionKind::PortTuples)
    }
    /// The connection handoff slots (ctl 0 = a free slot of generation 0; spec/04).
    pub fn handoff_slots(&self) -> &[HandoffSlotRow] {
        self.rows(SectionKind::HandoffSlots)
    }
    /// The operators' commands to each stack slot (drain).
    pub fn member_commands(&self) -> &[MemberCommandRow] {
        self.rows(SectionKind::MemberCommands)
    }
    /// The ring carrying messages from stack slot `from` to stack slot `to`; `None` when the
    /// pair is outside the ring table (`from` and `to` must be below [`MAX_STACKS`]).
    pub fn ring(&self, from: usize, to: usize) -> Option<&RingRow> {
        self.rows::<RingRow>(SectionKind::MessageRings).get(from * MAX_STACKS + to)
    }

    /// Fill a fresh (zeroed) region: header, section table, empty owner words; magic last.
    fn init(&mut self, cluster: &str, config_hash: u64, now_ns: u64) -> Result<(), RegionError> {
        let h = self.header();
        let (plan, len) = plan();
        h.major.store(MAJOR, Ordering::Relaxed);
        h.minor.store(MINOR, Ordering::Relaxed);
        h.region_len.store(len as u64, Ordering::Relaxed);
        h.config_hash.store(config_hash, Ordering::Relaxed);
        h.created_ns.store(now_ns, Ordering::Relaxed);
        for (w, v) in h.name.iter().zip(pack_name::<4>(cluster)) {
            w.store(v, Ordering::Relaxed);
        }
        for (row, (kind, size, off, count)) in h.sections.iter().zip(&plan) {
            row.kind.store(*kind as u32, Ordering::Relaxed);
            row.entry_size.store(*size as u32, Ordering::Relaxed);
            row.offset.store(*off as u64, Ordering::Relaxed);
            row.count.store(*count as u64, Ordering::Relaxed);
        }
        h.section_count.store(plan.len() as u32, Ordering::Relaxed);
        self.sections = self.read_sections()?;
        self.config_hash = config_hash;
        for row in self.dvipas().iter().chain(self.range_dvipas()) {
            row.owner.store(crate::words::OwnerWord::EMPTY.pack(), Ordering::Relaxed);
        }
        self.header().magic.store(MAGIC, Ordering::Release);
        Ok(())
    }

    fn read_sections(&self) -> Result<[(usize, usize); SectionKind::ALL.len()], RegionError> {
        let path = self.path.clone().unwrap_or_default();
        let h = self.header();
        let n = (h.section_count.load(Ordering::Relaxed) as usize).min(MAX_SECTIONS);
        let mut out = [(0usize, 0usize); SectionKind::ALL.len()];
        for row in &h.sections[..n] {
            let kind = row.kind.load(Ordering::Relaxed);
            // Unknown kinds come from a newer minor version: ignore them.
            let Some(k) = SectionKind::from_u32(kind) else { continue };
            let (size, _) = k.shape();
            if row.entry_size.load(Ordering::Relaxed) as usize != size {
                return Err(RegionError::BadSection { path, kind, reason: "entry size differs from this layout" });
            }
            let off = row.offset.load(Ordering::Relaxed);
            let count = row.count.load(Ordering::Relaxed);
            let end = count.checked_mul(size as u64).and_then(|b| b.checked_add(off));
            match end {
                Some(end) if off % 64 == 0 && off >= HEADER_SIZE as u64 && end <= self.len() as u64 => {}
                Some(end) => {
                    if end > self.len() as u64 {
                        return Err(RegionError::Truncated { path, len: self.len() as u64, need: end });
                    }
                    return Err(RegionError::BadSection { path, kind, reason: "misaligned or overlapping the header" });
                }
                None => return Err(RegionError::BadSection { path, kind, reason: "offset/count overflow" }),
            }
            out[k as usize - 1] = (off as usize, count as usize);
        }
        for k in SectionKind::ALL {
            if out[k as usize - 1].1 == 0 {
                return Err(RegionError::BadSection { path, kind: k as u32, reason: "missing from the section table" });
            }
        }
        Ok(out)
    }

    fn validate(mut self) -> Result<Region, RegionError> {
        let path = self.path.clone().unwrap_or_default();
        let h = self.header();
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(RegionError::Foreign(path));
        }
        let (major, minor) = (h.major.load(Ordering::Relaxed), h.minor.load(Ordering::Relaxed));
        if major != MAJOR {
            return Err(RegionError::Version { path, major, minor });
        }
        let need = h.region_len.load(Ordering::Relaxed);
        if need > self.len() as u64 {
            return Err(RegionError::Truncated { path, len: self.len() as u64, need });
        }
        self.sections = self.read_sections()?;
        self.config_hash = self.header().config_hash.load(Ordering::Relaxed);
        Ok(self)
    }

    fn check_config(self, cluster: &str, ours: u64) -> Result<Region, RegionError> {
        let region = self.header().config_hash.load(Ordering::Relaxed);
        if region != ours {
            return Err(RegionError::ConfigMismatch { path: self.path.clone().unwrap_or_default(), region, ours, cluster: cluster.to_string() });
        }
        Ok(self)
    }

    /// Can this region still be trusted? Checked by the node on every heartbeat, before it
    /// reads anything else: the SIGBUS guard's mark, then (for a file) its size and that the
    /// path still names it, then the header fields that never change after creation.
    pub fn health(&self) -> Result<(), RegionFault> {
        if let Memory::Mapped { len, fd, guard, .. } = &self.mem {
            if guard.is_some_and(|g| GUARDS[g].faulted.load(Ordering::Acquire)) {
                return Err(RegionFault::Faulted);
            }
            let st = rustix::fs::fstat(fd).map_err(|e| RegionFault::Io(e.to_string()))?;
            if (st.st_size.max(0) as u64) < *len as u64 {
                return Err(RegionFault::Truncated { len: st.st_size.max(0) as u64, mapped: *len as u64 });
            }
            if let Some(p) = &self.path {
                match rustix::fs::stat(p) {
                    Ok(now) if now.st_ino == st.st_ino && now.st_dev == st.st_dev => {}
                    Ok(_) => return Err(RegionFault::Replaced),
                    Err(Errno::NOENT) => return Err(RegionFault::Removed),
                    Err(e) => return Err(RegionFault::Io(e.to_string())),
                }
            }
        }
        let h = self.header();
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(RegionFault::BadMagic(magic));
        }
        if h.major.load(Ordering::Relaxed) != MAJOR {
            return Err(RegionFault::BadHeader("major version"));
        }
        if h.region_len.load(Ordering::Relaxed) > self.len() as u64 {
            return Err(RegionFault::BadHeader("region length"));
        }
        if h.config_hash.load(Ordering::Relaxed) != self.config_hash {
            return Err(RegionFault::BadHeader("config hash"));
        }
        match self.read_sections() {
            Ok(s) if s == self.sections => Ok(()),
            _ => Err(RegionFault::BadHeader("section table")),
        }
    }

    /// The cluster name from the header (as the creator wrote it; lossy for non-UTF-8 bytes).
    pub fn cluster_name(&self) -> String {
        let w: Vec<u64> = self.header().name.iter().map(|w| w.load(Ordering::Relaxed)).collect();
        unpack_name(&w)
    }

    /// Owner uid of the region file (for `plex ctl`'s privilege check).
    pub fn owner_uid(path: &Path) -> Result<u32, RegionError> {
        let st = rustix::fs::stat(path).map_err(io(path, "stat"))?;
        Ok(st.st_uid)
    }
}

#[cfg(test)]
mod tests;
