//! Mapping the coupling region: the one module of `coupling` that makes system calls.
//!
//! A region is a file under `/dev/shm` (tmpfs), created 0600 by the first stack of the cluster
//! and mapped `MAP_SHARED` by every stack and by `plex ctl`. Creation is atomic: the creator
//! fills a private temporary file (header, section table, zeroed rows), then `link(2)`s it to
//! the region path; whoever loses that race attaches to the winner's file. The magic word is
//! stored last with Release, so an attacher that sees it (Acquire) sees the whole header.
//!
//! Tests and single-process simulations use [`Region::anonymous`]: the same layout on the heap.

use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use crate::layout::*;

/// Why a region could not be created or attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionError {
    NotFound(PathBuf),
    PermissionDenied(PathBuf),
    /// Shorter than its header or its section table says.
    Truncated { path: PathBuf, len: u64, need: u64 },
    /// Not a coupling region (wrong magic).
    Foreign(PathBuf),
    /// A layout of another major version.
    Version { path: PathBuf, major: u32, minor: u32 },
    /// The section table is inconsistent with this version's layout.
    BadSection { path: PathBuf, kind: u32, reason: &'static str },
    /// Created for another cluster config.
    ConfigMismatch { path: PathBuf, region: u64, ours: u64, cluster: String },
    Io { path: PathBuf, what: &'static str, err: String },
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
            RegionError::Io { path, what, err } => write!(f, "coupling region {}: {what}: {err}", path.display()),
        }
    }
}

impl std::error::Error for RegionError {}

enum Memory {
    Mapped { ptr: NonNull<u8>, len: usize },
    Heap(Box<[AtomicU64]>),
}

/// A mapped coupling region.
pub struct Region {
    mem: Memory,
    writable: bool,
    path: Option<PathBuf>,
    /// (offset, count) per [`SectionKind`], indexed by kind - 1.
    sections: [(usize, usize); SectionKind::ALL.len()],
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
        if let Memory::Mapped { ptr, len } = self.mem {
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
    /// Attach to the cluster's region at `path`, creating it if no stack has yet.
    pub fn create_or_attach(path: &Path, cluster: &str, config_hash: u64, now_ns: u64) -> Result<Region, RegionError> {
        match Region::attach(path, true) {
            Ok(r) => return r.check_config(cluster, config_hash),
            Err(RegionError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
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
            let mut r = Region::map(&fd, len, true, Some(path.to_path_buf()))?;
            r.init(cluster, config_hash, now_ns)?;
            Ok::<_, RegionError>(r)
        })();
        let linked = built.as_ref().ok().map(|_| rustix::fs::link(&tmp, path));
        let _ = rustix::fs::unlink(&tmp);
        let r = built?;
        match linked {
            Some(Ok(())) => Ok(r),
            // Another stack created it first: use theirs.
            Some(Err(Errno::EXIST)) => Region::attach(path, true)?.check_config(cluster, config_hash),
            Some(Err(e)) => Err(io(path, "publishing")(e)),
            None => Err(RegionError::Io { path: path.to_path_buf(), what: "publishing", err: "not built".into() }),
        }
    }

    /// Attach to an existing region (`writable: false` maps it read-only, for `plex ctl show`).
    pub fn attach(path: &Path, writable: bool) -> Result<Region, RegionError> {
        let flags = if writable { OFlags::RDWR } else { OFlags::RDONLY };
        let fd = rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty()).map_err(io(path, "opening"))?;
        let st = rustix::fs::fstat(&fd).map_err(io(path, "stat"))?;
        let len = st.st_size.max(0) as u64;
        if len < 4096 {
            return Err(RegionError::Truncated { path: path.to_path_buf(), len, need: 4096 });
        }
        Region::map(&fd, len as usize, writable, Some(path.to_path_buf()))?.validate()
    }

    /// A region of this layout on the heap (tests, simulations of several stacks in one process).
    pub fn anonymous(cluster: &str, config_hash: u64) -> Region {
        let (_, len) = plan();
        let words: Box<[AtomicU64]> = (0..len / 8).map(|_| AtomicU64::new(0)).collect();
        let mut r = Region { mem: Memory::Heap(words), writable: true, path: None, sections: [(0, 0); SectionKind::ALL.len()] };
        if let Err(e) = r.init(cluster, config_hash, 0) {
            // The layout is fixed at compile time and the memory was sized by `plan`.
            unreachable!("initialising an anonymous region: {e}");
        }
        r
    }

    fn map(fd: &rustix::fd::OwnedFd, len: usize, writable: bool, path: Option<PathBuf>) -> Result<Region, RegionError> {
        let prot = if writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
        let p = path.clone().unwrap_or_default();
        // SAFETY: a fresh shared mapping of `len` bytes of `fd` at an address the kernel picks;
        // it aliases no Rust object. Other processes write it concurrently, which is why every
        // access goes through atomics.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }.map_err(io(&p, "mapping"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(RegionError::Io { path: p, what: "mapping", err: "null mapping".into() })?;
        Ok(Region { mem: Memory::Mapped { ptr, len }, writable, path, sections: [(0, 0); SectionKind::ALL.len()] })
    }

    fn base(&self) -> *const u8 {
        match &self.mem {
            Memory::Mapped { ptr, .. } => ptr.as_ptr(),
            Memory::Heap(w) => w.as_ptr().cast(),
        }
    }

    pub fn len(&self) -> usize {
        match &self.mem {
            Memory::Mapped { len, .. } => *len,
            Memory::Heap(w) => w.len() * 8,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

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

    pub fn members(&self) -> &[MemberRow] {
        self.rows(SectionKind::Members)
    }
    pub fn dvipas(&self) -> &[DvipaRow] {
        self.rows(SectionKind::Dvipas)
    }
    pub fn range_dvipas(&self) -> &[DvipaRow] {
        self.rows(SectionKind::RangeDvipas)
    }
    /// The ring carrying messages from stack slot `from` to stack slot `to`.
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
        Ok(self)
    }

    fn check_config(self, cluster: &str, ours: u64) -> Result<Region, RegionError> {
        let region = self.header().config_hash.load(Ordering::Relaxed);
        if region != ours {
            return Err(RegionError::ConfigMismatch { path: self.path.clone().unwrap_or_default(), region, ours, cluster: cluster.to_string() });
        }
        Ok(self)
    }

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
