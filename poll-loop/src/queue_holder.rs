//! Who holds a queue's AF_XDP socket: when binding to a queue fails with EBUSY, the start-up
//! error ([`StartError::QueueBusy`](crate::StartError::QueueBusy)) names the process.
//!
//! - Exact, where the kernel has AF_XDP socket diagnostics (`CONFIG_XDP_SOCKETS_DIAG`): a
//!   `NETLINK_SOCK_DIAG` dump of this network namespace's AF_XDP sockets (`SOCK_DIAG_BY_FAMILY`,
//!   family `AF_XDP`, `XDP_SHOW_INFO`; `linux/xdp_diag.h`) gives each socket's inode and the
//!   (ifindex, queue) it is bound to; the process with a descriptor `socket:[inode]` in
//!   `/proc/PID/fd` holds it.
//! - A guess, where the kernel lacks them (the dump is answered with ENOENT): the other
//!   processes of this network namespace that hold an AF_XDP socket at all (sockfs names a
//!   socket's protocol in the `system.sockprotoname` attribute: `XDP`).
//!
//! Best effort throughout: whatever fails gives [`QueueHolder::Unknown`], and the error keeps
//! its general wording. No `unsafe`: the netlink socket and the attribute go through rustix.

use std::time::Duration;

use crate::error::QueueHolder;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR`, `NLMSG_DONE` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST | NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
const DUMP_REQUEST: u16 = 0x1 | 0x300;
/// `AF_XDP`.
const AF_XDP: u8 = 44;
/// `XDP_SHOW_INFO` (linux/xdp_diag.h): the `XDP_DIAG_INFO` attribute.
const XDP_SHOW_INFO: u32 = 1;
/// `XDP_DIAG_INFO`: `struct xdp_diag_info { __u32 ifindex; __u32 queue_id; }`.
const XDP_DIAG_INFO: u16 = 1;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct xdp_diag_msg)` (a multiple of 4: the attributes follow directly).
const XDP_DIAG_MSG_LEN: usize = 16;
/// `sizeof(struct nlattr)`.
const NLA_HDRLEN: usize = 4;
/// The attribute type without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Processes named in a guess at most.
const MAX_CANDIDATES: usize = 4;

/// One AF_XDP socket of the dump: its inode and where it is bound (ifindex 0: not bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XskEntry {
    pub ino: u32,
    pub ifindex: u32,
    pub queue: u32,
}

/// Why the dump gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DiagError {
    /// A system call failed, or the kernel answered with this errno (`NLMSG_ERROR`; ENOENT:
    /// the kernel has no AF_XDP socket diagnostics).
    Errno(i32),
    /// The reply does not parse.
    Malformed(&'static str),
}

/// Whether the dump is complete after a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` seen.
    Done,
}

/// The dump request: a `nlmsghdr` and a `struct xdp_diag_req` asking for every socket's
/// `XDP_DIAG_INFO`.
pub(crate) fn request(seq: u32) -> [u8; NLMSG_HDRLEN + 16] {
    let mut m = [0u8; NLMSG_HDRLEN + 16];
    m[0..4].copy_from_slice(&((NLMSG_HDRLEN + 16) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&DUMP_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel. xdp_diag_req: family, protocol 0, pad, ino 0 (all), show, cookie.
    m[16] = AF_XDP;
    m[24..28].copy_from_slice(&XDP_SHOW_INFO.to_ne_bytes());
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parse one datagram of the dump's reply (one or more netlink messages), appending the
/// sockets it describes to `out`. Messages of another sequence number are skipped.
pub(crate) fn parse_reply(buf: &[u8], seq: u32, out: &mut Vec<XskEntry>) -> Result<Part, DiagError> {
    let mut at = 0;
    while buf.len() - at >= NLMSG_HDRLEN {
        let msg = &buf[at..];
        let len = u32_at(msg, 0).ok_or(DiagError::Malformed("short header"))? as usize;
        if len < NLMSG_HDRLEN || len > msg.len() {
            return Err(DiagError::Malformed("message length out of bounds"));
        }
        let ty = u16_at(msg, 4).ok_or(DiagError::Malformed("short header"))?;
        let msg_seq = u32_at(msg, 8).ok_or(DiagError::Malformed("short header"))?;
        let payload = &msg[NLMSG_HDRLEN..len];
        at += align4(len).min(buf.len() - at);
        if msg_seq != seq {
            continue;
        }
        match ty {
            NLMSG_DONE => {
                // Since Linux 4.x the DONE message carries the dump's result.
                return match payload.get(0..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])) {
                    Some(e) if e < 0 => Err(DiagError::Errno(-e)),
                    _ => Ok(Part::Done),
                };
            }
            NLMSG_ERROR => {
                let e = payload.get(0..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return match e {
                    Some(0) => Ok(Part::Done),
                    Some(e) => Err(DiagError::Errno(e.unsigned_abs() as i32)),
                    None => Err(DiagError::Malformed("short error message")),
                };
            }
            SOCK_DIAG_BY_FAMILY => {
                if payload.len() < XDP_DIAG_MSG_LEN {
                    return Err(DiagError::Malformed("short xdp_diag_msg"));
                }
                if payload[0] != AF_XDP {
                    continue;
                }
                let ino = u32_at(payload, 4).ok_or(DiagError::Malformed("short xdp_diag_msg"))?;
                let mut attrs = &payload[XDP_DIAG_MSG_LEN..];
                while attrs.len() >= NLA_HDRLEN {
                    let alen = u16_at(attrs, 0).ok_or(DiagError::Malformed("short attribute"))? as usize;
                    let aty = u16_at(attrs, 2).ok_or(DiagError::Malformed("short attribute"))? & NLA_TYPE_MASK;
                    if alen < NLA_HDRLEN || alen > attrs.len() {
                        return Err(DiagError::Malformed("attribute length out of bounds"));
                    }
                    if aty == XDP_DIAG_INFO {
                        let v = &attrs[NLA_HDRLEN..alen];
                        match (u32_at(v, 0), u32_at(v, 4)) {
                            (Some(ifindex), Some(queue)) => out.push(XskEntry { ino, ifindex, queue }),
                            _ => return Err(DiagError::Malformed("short XDP_DIAG_INFO")),
                        }
                    }
                    attrs = &attrs[align4(alen).min(attrs.len())..];
                }
            }
            _ => {}
        }
    }
    Ok(Part::More)
}

/// Every AF_XDP socket of this network namespace, from the kernel's socket diagnostics.
fn dump() -> Result<Vec<XskEntry>, DiagError> {
    use rustix::net::{netlink, recv, send, sockopt, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
    let errno = |e: rustix::io::Errno| DiagError::Errno(e.raw_os_error());
    let fd = socket_with(AddressFamily::NETLINK, SocketType::RAW, SocketFlags::CLOEXEC, Some(netlink::SOCK_DIAG)).map_err(errno)?;
    // A kernel that never answers must not hang the start-up: EAGAIN after a second.
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(Duration::from_secs(1))).map_err(errno)?;
    let seq = std::process::id();
    send(&fd, &request(seq), SendFlags::empty()).map_err(errno)?;
    let mut buf = vec![0u8; 32 << 10];
    let mut out = Vec::new();
    // Bounded: a namespace with more sockets than this many datagrams describe is not worth
    // the wait.
    for _ in 0..1024 {
        let (n, full) = recv(&fd, &mut buf[..], RecvFlags::empty()).map_err(errno)?;
        if full > n {
            return Err(DiagError::Malformed("reply truncated"));
        }
        if parse_reply(&buf[..n], seq, &mut out)? == Part::Done {
            return Ok(out);
        }
    }
    Err(DiagError::Malformed("reply does not end"))
}

/// The pids of the processes whose `/proc` entries are readable, but this one.
fn other_pids() -> impl Iterator<Item = u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(move |&pid| pid != me)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// The process (pid, command) with a descriptor for the socket of inode `ino`.
fn process_with_socket(ino: u32) -> Option<(u32, String)> {
    let me = std::process::id();
    let target = format!("socket:[{ino}]");
    std::iter::once(me).chain(other_pids()).find_map(|pid| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == target.as_str()))
            .then(|| (pid, comm(pid)))
    })
}

/// Whether the descriptor `/proc/PID/fd/N` is an AF_XDP socket (sockfs: protocol "XDP").
fn is_xdp_socket(fd: &std::path::Path) -> bool {
    if !std::fs::read_link(fd).is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:[")) {
        return false;
    }
    let mut name = [0u8; 32];
    match rustix::fs::getxattr(fd, "system.sockprotoname", &mut name[..]) {
        Ok(n) => name[..n.min(name.len())].split(|&b| b == 0).next() == Some(b"XDP"),
        Err(_) => false,
    }
}

/// The other processes of this network namespace that hold an AF_XDP socket.
fn processes_with_xdp_sockets() -> Vec<(u32, String)> {
    let Ok(netns) = std::fs::read_link("/proc/self/ns/net") else { return Vec::new() };
    other_pids()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok().as_ref() == Some(&netns))
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .any(|fd| is_xdp_socket(&fd.path()))
        })
        .take(MAX_CANDIDATES)
        .map(|pid| (pid, comm(pid)))
        .collect()
}

/// Who holds the AF_XDP socket bound to queue `queue` of the interface `ifindex`.
pub(crate) fn queue_holder(ifindex: u32, queue: u32) -> QueueHolder {
    match dump() {
        Ok(socks) => {
            match socks.iter().find(|s| s.ifindex == ifindex && s.queue == queue).and_then(|s| process_with_socket(s.ino)) {
                Some((pid, comm)) => QueueHolder::Process { pid, comm },
                None => QueueHolder::Unknown,
            }
        }
        Err(DiagError::Errno(libc::ENOENT)) => {
            let c = processes_with_xdp_sockets();
            if c.is_empty() {
                QueueHolder::Unknown
            } else {
                QueueHolder::Candidates(c)
            }
        }
        Err(_) => QueueHolder::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message: header (type, flags 0x2 multi, seq, pid 0) and payload.
    fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((NLA_HDRLEN + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(v);
        a.resize(align4(a.len()), 0);
        a
    }

    /// `struct xdp_diag_msg` for socket `ino`, then its attributes: an `XDP_DIAG_UID` (2)
    /// before or after the `XDP_DIAG_INFO` one (the parser must not depend on the order).
    fn diag_msg(ino: u32, info: Option<(u32, u32)>, uid_first: bool) -> Vec<u8> {
        let mut p = vec![AF_XDP, 3 /* SOCK_RAW */, 0, 0];
        p.extend_from_slice(&ino.to_ne_bytes());
        p.extend_from_slice(&[0xaa; 8]); // the cookie
        let uid = attr(2, &0u32.to_ne_bytes());
        if uid_first {
            p.extend_from_slice(&uid);
        }
        if let Some((ifindex, queue)) = info {
            let mut v = ifindex.to_ne_bytes().to_vec();
            v.extend_from_slice(&queue.to_ne_bytes());
            p.extend_from_slice(&attr(XDP_DIAG_INFO, &v));
        }
        if !uid_first {
            p.extend_from_slice(&uid);
        }
        p
    }

    #[test]
    fn the_request_is_a_dump_of_af_xdp_sockets_with_their_info() {
        let r = request(7);
        assert_eq!(u32_at(&r, 0), Some(32), "nlmsg_len: header and xdp_diag_req");
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(u16_at(&r, 6), Some(0x301), "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(r[16], 44, "sdiag_family AF_XDP");
        assert_eq!(u32_at(&r, 20), Some(0), "every inode");
        assert_eq!(u32_at(&r, 24), Some(XDP_SHOW_INFO));
    }

    #[test]
    fn a_dump_gives_every_socket_with_its_interface_and_queue() {
        let mut d = nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_msg(1234, Some((5, 0)), false));
        d.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_msg(1240, Some((0, 0)), true)));
        d.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_msg(1250, None, true)));
        let mut out = Vec::new();
        assert_eq!(parse_reply(&d, 9, &mut out), Ok(Part::More));
        let done = nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_msg(77, Some((5, 3)), false))
            .into_iter()
            .chain(nlmsg(NLMSG_DONE, 9, &0i32.to_ne_bytes()))
            .collect::<Vec<_>>();
        assert_eq!(parse_reply(&done, 9, &mut out), Ok(Part::Done));
        assert_eq!(
            out,
            vec![
                XskEntry { ino: 1234, ifindex: 5, queue: 0 },
                XskEntry { ino: 1240, ifindex: 0, queue: 0 },
                XskEntry { ino: 77, ifindex: 5, queue: 3 }
            ],
            "a socket without XDP_DIAG_INFO is left out"
        );
    }

    #[test]
    fn an_empty_dump_is_done() {
        let mut out = Vec::new();
        assert_eq!(parse_reply(&nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes()), 1, &mut out), Ok(Part::Done));
        assert!(out.is_empty());
    }

    #[test]
    fn a_kernel_without_af_xdp_diagnostics_answers_enoent() {
        // What this machine's kernel (no CONFIG_XDP_SOCKETS_DIAG) sent: NLMSG_ERROR, error -2,
        // then the request's header.
        let mut p = (-2i32).to_ne_bytes().to_vec();
        p.extend_from_slice(&request(1)[..NLMSG_HDRLEN]);
        let mut out = Vec::new();
        assert_eq!(parse_reply(&nlmsg(NLMSG_ERROR, 1, &p), 1, &mut out), Err(DiagError::Errno(libc::ENOENT)));
        // A dump that failed midway says so in DONE.
        assert_eq!(parse_reply(&nlmsg(NLMSG_DONE, 1, &(-12i32).to_ne_bytes()), 1, &mut out), Err(DiagError::Errno(12)));
    }

    #[test]
    fn messages_of_another_sequence_are_skipped() {
        let mut d = nlmsg(SOCK_DIAG_BY_FAMILY, 8, &diag_msg(1, Some((5, 0)), false));
        d.extend(nlmsg(NLMSG_DONE, 8, &0i32.to_ne_bytes()));
        let mut out = Vec::new();
        assert_eq!(parse_reply(&d, 9, &mut out), Ok(Part::More));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_msg(1234, Some((5, 0)), true));
        let mut out = Vec::new();
        // Every truncation and every single-byte corruption: no panic.
        for cut in 0..good.len() {
            let _ = parse_reply(&good[..cut], 1, &mut out);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 3, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = parse_reply(&b, 1, &mut out);
            }
        }
        let mut long = good.clone();
        long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(parse_reply(&long, 1, &mut out), Err(DiagError::Malformed("message length out of bounds")));
        let mut short = good.clone();
        short[0..4].copy_from_slice(&20u32.to_ne_bytes());
        assert_eq!(parse_reply(&short, 1, &mut out), Err(DiagError::Malformed("short xdp_diag_msg")));
        // XDP_DIAG_INFO with 4 bytes instead of 8.
        let mut p = diag_msg(1, None, false);
        p.extend(attr(XDP_DIAG_INFO, &5u32.to_ne_bytes()));
        assert_eq!(parse_reply(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &p), 1, &mut out), Err(DiagError::Malformed("short XDP_DIAG_INFO")));
        let mut p = diag_msg(1, None, false);
        p.extend_from_slice(&[40, 0, 1, 0]);
        assert_eq!(
            parse_reply(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &p), 1, &mut out),
            Err(DiagError::Malformed("attribute length out of bounds"))
        );
    }

    #[test]
    fn the_kernel_takes_the_request() {
        // Either the dump (a kernel with CONFIG_XDP_SOCKETS_DIAG) or ENOENT (one without):
        // never EINVAL for a malformed request, nor a reply that does not parse.
        match dump() {
            Ok(_) | Err(DiagError::Errno(libc::ENOENT)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_socket_of_this_process_is_found_by_its_inode() {
        use std::os::unix::fs::MetadataExt;
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&s))).expect("its fd").ino();
        let (pid, _) = process_with_socket(ino as u32).expect("found");
        assert_eq!(pid, std::process::id());
        assert!(!is_xdp_socket(&std::path::PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&s)))));
        // An AF_XDP socket needs CAP_NET_RAW: checked where the test may open one.
        use rustix::net::{socket, AddressFamily, SocketType};
        if let Ok(x) = socket(AddressFamily::XDP, SocketType::RAW, None) {
            let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&x));
            assert!(is_xdp_socket(std::path::Path::new(&fd)), "sockfs names AF_XDP \"XDP\"");
        }
    }
}
