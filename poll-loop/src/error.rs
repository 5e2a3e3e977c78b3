//! Start-up errors of the data path, each naming what was wrong and what to do: the errno of
//! every failed system call, the capability a refused step needs and whether this process has
//! it, the process that holds an interface's XDP hook or a queue's AF_XDP socket.

use std::fmt;
use std::io;

/// Who holds the AF_XDP socket bound to a queue ([`StartError::QueueBusy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueHolder {
    /// Not found: the kernel's answer or `/proc` did not tell.
    Unknown,
    /// The kernel's AF_XDP socket diagnostics named the socket bound to the queue, and this
    /// process (pid, command) holds it.
    Process {
        /// Its pid.
        pid: u32,
        /// Its command (`/proc/PID/comm`).
        comm: String,
    },
    /// The kernel has no AF_XDP socket diagnostics (`CONFIG_XDP_SOCKETS_DIAG`), so which socket
    /// is bound to the queue is not known: these are the other processes of this network
    /// namespace that hold an AF_XDP socket (pid, command).
    Candidates(Vec<(u32, String)>),
}

/// `Debug` prints the message too: it is what `fn main() -> Result<(), StartError>` (or a
/// boxed error) shows the user.
pub enum StartError {
    /// The interface does not exist (in this network namespace).
    NoSuchInterface(String),
    /// A privileged step was refused: `what` needs the capabilities `needs`; `missing` are
    /// those of them this process lacks (read from `/proc/self/status`).
    NotPermitted {
        /// The step, as the user would say it ("loading the XDP program").
        what: String,
        /// The capabilities it needs, as a phrase ("CAP_BPF and CAP_NET_ADMIN").
        needs: &'static str,
        /// Those of them this process lacks.
        missing: Vec<&'static str>,
    },
    /// The XDP program could not be attached.
    XdpAttach {
        /// The interface.
        ifname: String,
        /// The attach mode asked for (generic, native, auto).
        mode: &'static str,
        /// What the kernel or libbpf said, errno included.
        err: String,
    },
    /// The interface already has an XDP program: `holder` is the process holding it through a
    /// BPF link (pid, command), when one was found in this network namespace.
    XdpBusy {
        /// The interface.
        ifname: String,
        /// The attached program's id and mode, when the kernel told.
        prog: Option<(u32, &'static str)>,
        /// The process holding it through a BPF link: pid and command.
        holder: Option<(u32, String)>,
    },
    /// The UMEM could not be allocated or registered.
    Umem {
        /// The size asked for.
        bytes: u64,
        /// What the kernel said, errno included, with the likely cause.
        err: String,
    },
    /// The queue does not exist on the interface.
    NoSuchQueue {
        /// The interface.
        ifname: String,
        /// The queue asked for.
        queue: u32,
    },
    /// Another AF_XDP socket is bound to the queue (EBUSY on bind).
    QueueBusy {
        /// The interface.
        ifname: String,
        /// The queue.
        queue: u32,
        /// The process holding that socket, as far as plex could tell.
        holder: QueueHolder,
    },
    /// An application's `App::start` failed (e.g. a port already taken).
    App(String),
    /// Any other failure, with context.
    Other(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::NoSuchInterface(i) => write!(f, "no such interface: {i:?} (check `ip link` in this network namespace)"),
            StartError::NotPermitted { what, needs, missing } => {
                write!(f, "permission denied: {what} needs {needs}")?;
                if missing.is_empty() {
                    write!(f, "; this process has them, so something else refused it (a user namespace, seccomp or an LSM)")
                } else {
                    write!(f, "; this process (uid {}) lacks {} (run as root)", rustix::process::geteuid().as_raw(), missing.join(", "))
                }
            }
            StartError::XdpAttach { ifname, mode, err } => {
                write!(f, "cannot attach the XDP program to {ifname} in {mode} mode: {err}")
            }
            StartError::XdpBusy { ifname, prog, holder } => {
                write!(f, "{ifname} already has an XDP program attached")?;
                if let Some((id, mode)) = prog {
                    write!(f, " (program id {id}, {mode} mode)")?;
                }
                match holder {
                    Some((pid, comm)) => write!(f, ": held by pid {pid} ({comm}); another plex instance? Stop it first"),
                    None => write!(
                        f,
                        ": no process holds it through a BPF link, so it was attached the old way (ip link, or a plex older than this one \
                         killed with -9); remove it with `ip link set dev {ifname} xdp off` (or `xdpgeneric off`)"
                    ),
                }
            }
            StartError::Umem { bytes, err } => write!(f, "cannot allocate a UMEM of {} MiB: {err}", bytes >> 20),
            StartError::NoSuchQueue { ifname, queue } => {
                write!(f, "interface {ifname} has no queue {queue} (see `ethtool -l {ifname}`)")
            }
            StartError::QueueBusy { ifname, queue, holder } => {
                write!(f, "queue {queue} of {ifname} is in use by another AF_XDP socket ")?;
                match holder {
                    QueueHolder::Process { pid, comm } => write!(f, "(pid {pid}, {comm})"),
                    QueueHolder::Candidates(c) => {
                        let names: Vec<String> = c.iter().map(|(pid, comm)| format!("pid {pid}, {comm}")).collect();
                        let (who, them) = if c.len() == 1 {
                            ("the one other process", "an AF_XDP socket")
                        } else {
                            ("the other processes", "AF_XDP sockets")
                        };
                        write!(
                            f,
                            "({}?: {who} in this network namespace with {them}; this kernel lacks AF_XDP socket diagnostics \
                             (CONFIG_XDP_SOCKETS_DIAG) to tell which socket holds the queue)",
                            names.join(" or ")
                        )
                    }
                    QueueHolder::Unknown => write!(f, "(another plex instance?)"),
                }
            }
            StartError::App(s) | StartError::Other(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for StartError {}

impl StartError {
    /// A refused privileged step: `needs` names the capabilities (e.g. `"CAP_NET_RAW"`), and
    /// the ones this process lacks are looked up now.
    pub fn not_permitted(what: impl Into<String>, needs: &'static str) -> StartError {
        StartError::NotPermitted { what: what.into(), needs, missing: missing_caps(needs) }
    }

    /// Classify an OS error from a privileged operation that needs `needs`.
    pub fn from_io(what: &str, needs: &'static str, e: &io::Error) -> StartError {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => StartError::not_permitted(what, needs),
            _ => StartError::Other(format!("{what}: {}", errno_text(e))),
        }
    }
}

/// Capabilities by name, as numbered in linux/capability.h.
const CAPS: &[(&str, u32)] = &[
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_BPF", 39),
];

/// This process's effective capability set (`CapEff` of `/proc/self/status`), if readable.
pub fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Whether this process has the capability `name` (false when unknown or unreadable).
pub fn has_cap(name: &str) -> bool {
    let Some(eff) = effective_caps() else { return false };
    CAPS.iter().find(|(n, _)| *n == name).is_some_and(|(_, bit)| eff & (1 << bit) != 0)
}

/// The capabilities named in `needs` ("CAP_BPF and CAP_NET_ADMIN") that this process lacks.
/// CAP_SYS_ADMIN stands in for CAP_BPF, as in the kernel.
pub(crate) fn missing_caps(needs: &'static str) -> Vec<&'static str> {
    CAPS.iter()
        .map(|(n, _)| *n)
        .filter(|n| needs.contains(n))
        .filter(|n| !(has_cap(n) || (*n == "CAP_BPF" && has_cap("CAP_SYS_ADMIN"))))
        .collect()
}

/// The symbolic name of an errno, for the ones plex's start-up meets.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::E2BIG => "E2BIG",
        libc::ENOBUFS => "ENOBUFS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENXIO => "ENXIO",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        _ => "errno",
    }
}

/// `EBUSY: Device or resource busy (os error 16)`, or the error's own text without an errno.
pub fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{}: {e}", errno_name(n)),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_errno_and_the_capability() {
        assert_eq!(errno_text(&io::Error::from_raw_os_error(libc::EBUSY)), "EBUSY: Device or resource busy (os error 16)");
        let e = StartError::NotPermitted { what: "creating an AF_XDP socket".into(), needs: "CAP_NET_RAW", missing: vec!["CAP_NET_RAW"] };
        let s = e.to_string();
        assert!(s.starts_with("permission denied: creating an AF_XDP socket needs CAP_NET_RAW; this process (uid "), "{s}");
        assert!(s.ends_with("lacks CAP_NET_RAW (run as root)"), "{s}");
        let e = StartError::XdpBusy { ifname: "eth1".into(), prog: Some((7, "generic")), holder: Some((42, "plex".into())) };
        assert_eq!(e.to_string(), "eth1 already has an XDP program attached (program id 7, generic mode): held by pid 42 (plex); another plex instance? Stop it first");
        let e = StartError::QueueBusy { ifname: "eth1".into(), queue: 3, holder: QueueHolder::Unknown };
        assert_eq!(e.to_string(), "queue 3 of eth1 is in use by another AF_XDP socket (another plex instance?)");
        assert_eq!(format!("{e:?}"), e.to_string(), "what main's `?` prints");
        let e = StartError::QueueBusy { ifname: "eth1".into(), queue: 0, holder: QueueHolder::Process { pid: 42, comm: "xdpsock".into() } };
        assert_eq!(e.to_string(), "queue 0 of eth1 is in use by another AF_XDP socket (pid 42, xdpsock)");
        let e = StartError::QueueBusy { ifname: "eth1".into(), queue: 0, holder: QueueHolder::Candidates(vec![(42, "xdpsock".into())]) };
        assert_eq!(
            e.to_string(),
            "queue 0 of eth1 is in use by another AF_XDP socket (pid 42, xdpsock?: the one other process in this network namespace \
             with an AF_XDP socket; this kernel lacks AF_XDP socket diagnostics (CONFIG_XDP_SOCKETS_DIAG) to tell which socket holds the queue)"
        );
        let e = StartError::QueueBusy { ifname: "eth1".into(), queue: 0, holder: QueueHolder::Candidates(vec![(42, "a".into()), (43, "b".into())]) };
        assert!(e.to_string().contains("(pid 42, a or pid 43, b?: the other processes in this network namespace with AF_XDP sockets;"), "{e}");
    }

    #[test]
    fn missing_caps_only_names_the_needed_ones() {
        for n in missing_caps("CAP_NET_RAW") {
            assert_eq!(n, "CAP_NET_RAW");
        }
        assert!(missing_caps("nothing").is_empty());
    }
}
