//! Start-up errors of the data path, each naming what was wrong and what to do.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum StartError {
    /// The interface does not exist (in this network namespace).
    NoSuchInterface(String),
    /// Loading BPF or creating an AF_XDP socket needs root (CAP_NET_ADMIN, CAP_BPF).
    NotPermitted(String),
    /// The XDP program could not be attached.
    XdpAttach { ifname: String, mode: &'static str, err: String },
    /// The UMEM could not be allocated or locked.
    Umem { bytes: u64, err: String },
    /// The queue does not exist on the interface.
    NoSuchQueue { ifname: String, queue: u32 },
    /// Any other failure, with context.
    Other(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::NoSuchInterface(i) => write!(f, "no such interface: {i:?} (check `ip link` in this network namespace)"),
            StartError::NotPermitted(what) => write!(f, "permission denied: {what} needs root (CAP_NET_ADMIN and CAP_BPF)"),
            StartError::XdpAttach { ifname, mode, err } => {
                write!(f, "cannot attach the XDP program to {ifname} in {mode} mode: {err}")
            }
            StartError::Umem { bytes, err } => write!(
                f,
                "cannot allocate a UMEM of {} MiB: {err} (try fewer --frames; root's CAP_IPC_LOCK is needed beyond the memlock limit)",
                bytes >> 20
            ),
            StartError::NoSuchQueue { ifname, queue } => {
                write!(f, "interface {ifname} has no queue {queue} (see `ethtool -l {ifname}`)")
            }
            StartError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for StartError {}

impl StartError {
    /// Classify an OS error from a privileged operation.
    pub fn from_io(what: &str, e: &io::Error) -> StartError {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => StartError::NotPermitted(what.to_string()),
            _ => StartError::Other(format!("{what}: {e}")),
        }
    }
}
