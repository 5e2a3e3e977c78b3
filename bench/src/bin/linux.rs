//! The Linux side of the side-by-side benchmarks: a TCP echo server and a ping-pong client on
//! ordinary kernel sockets, busy-polling in user space (non-blocking sockets, spinning), pinned
//! to a core, so they compare with plex's busy-polling poll threads.
//!
//! Usage:
//!   plex-bench-linux echo ADDR:PORT [--core N]
//!   plex-bench-linux pingpong ADDR:PORT [--size 64] [--count N] [--warmup N] [--conns N] [--core N] [--hgrm FILE]
//!   plex-bench-linux echo-many ADDR:PORT [--core N] [--block]   (any number of connections,
//!                                     epoll; busy-polled, or sleeping in epoll_wait with --block)
//!   plex-bench-linux hold-server ADDR:PORT [--count N] [--core N]   (accept and keep)
//!   plex-bench-linux sink ADDR:PORT [--core N]
//!   plex-bench-linux connrate ADDR:PORT [--count N] [--core N]
//!   plex-bench-linux source ADDR:PORT [--bytes N] [--core N]

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Instant;

fn pin(core: Option<usize>) {
    if let Some(id) = core {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

/// Read exactly `buf.len()` bytes, spinning on a non-blocking socket.
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn write_full(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match s.write(&buf[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn echo(addr: SocketAddr, core: Option<usize>) -> std::io::Result<()> {
    pin(core);
    let l = TcpListener::bind(addr)?;
    eprintln!("linux echo on {addr}");
    for s in l.incoming() {
        let mut s = s?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => write_full(&mut s, &buf[..n])?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(_) => break,
            }
        }
    }
    Ok(())
}

fn pingpong(addr: SocketAddr, size: usize, count: u64, warmup: u64, core: Option<usize>, hgrm: Option<String>) -> std::io::Result<()> {
    pin(core);
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    let msg = vec![0x42u8; size];
    let mut buf = vec![0u8; size];
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut start = Instant::now();
    for i in 0..warmup + count {
        if i == warmup {
            start = Instant::now();
        }
        let t = Instant::now();
        write_full(&mut s, &msg)?;
        if !read_full(&mut s, &mut buf)? {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "echo server closed"));
        }
        if i >= warmup {
            let _ = hist.record(t.elapsed().as_nanos() as u64);
        }
    }
    println!("{} tps {:.0}", bench::pingpong_summary(&hist, size), hist.len() as f64 / start.elapsed().as_secs_f64());
    if let Some(path) = hgrm {
        bench::write_hgrm(&path, &hist)?;
    }
    Ok(())
}

/// Busy-polling epoll: `epoll_wait` with a zero timeout in a loop (the fair counterpart of a
/// busy-polling plex loop over many connections; one connection uses the plain spin above).
struct Epoll {
    ep: nix::sys::epoll::Epoll,
    events: Vec<nix::sys::epoll::EpollEvent>,
}

impl Epoll {
    fn new(max: usize) -> std::io::Result<Epoll> {
        use nix::sys::epoll::{EpollCreateFlags, EpollEvent};
        let ep = nix::sys::epoll::Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
        Ok(Epoll { ep, events: vec![EpollEvent::empty(); max.max(1)] })
    }
    fn add(&self, fd: impl std::os::fd::AsFd, token: u64) -> std::io::Result<()> {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        self.ep.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token)).map_err(std::io::Error::from)
    }
    /// Ready tokens, without sleeping (or sleeping until there are some: `block`).
    fn poll(&mut self, out: &mut Vec<u64>, block: bool) -> std::io::Result<()> {
        out.clear();
        let t = if block { nix::sys::epoll::EpollTimeout::NONE } else { nix::sys::epoll::EpollTimeout::ZERO };
        match self.ep.wait(&mut self.events, t) {
            Ok(n) => out.extend(self.events[..n].iter().map(|e| e.data())),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

/// Echo for any number of connections: non-blocking sockets under a busy-polled epoll (or
/// one that sleeps in `epoll_wait`: `block`, a server that leaves the CPU to others).
fn echo_many(addr: SocketAddr, core: Option<usize>, block: bool) -> std::io::Result<()> {
    pin(core);
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let mut ep = Epoll::new(1024)?;
    ep.add(&l, u64::MAX)?;
    eprintln!("linux echo-many on {addr}");
    let mut conns: Vec<Option<TcpStream>> = Vec::new();
    let mut ready = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        ep.poll(&mut ready, block)?;
        for &t in &ready {
            if t == u64::MAX {
                while let Ok((s, _)) = l.accept() {
                    s.set_nodelay(true)?;
                    s.set_nonblocking(true)?;
                    ep.add(&s, conns.len() as u64)?;
                    conns.push(Some(s));
                }
                continue;
            }
            let Some(slot) = conns.get_mut(t as usize) else { continue };
            let Some(s) = slot else { continue };
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        *slot = None;
                        break;
                    }
                    Ok(n) => {
                        if write_full(s, &buf[..n]).is_err() {
                            *slot = None;
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *slot = None;
                        break;
                    }
                }
            }
        }
    }
}

/// Ping-pong over `conns` connections, one message in flight on each, busy-polling epoll.
fn pingpong_many(addr: SocketAddr, size: usize, count: u64, warmup: u64, conns: usize, core: Option<usize>, hgrm: Option<String>) -> std::io::Result<()> {
    pin(core);
    let mut ep = Epoll::new(conns)?;
    let mut socks = Vec::with_capacity(conns);
    for i in 0..conns {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        ep.add(&s, i as u64)?;
        socks.push(s);
    }
    let msg = vec![0x42u8; size];
    let mut buf = vec![0u8; size];
    let mut got = vec![0usize; conns];
    let mut sent_at = vec![Instant::now(); conns];
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| std::io::Error::other(e.to_string()))?;
    for (i, s) in socks.iter_mut().enumerate() {
        sent_at[i] = Instant::now();
        write_full(s, &msg)?;
    }
    let (mut done, mut start) = (0u64, Instant::now());
    let mut ready = Vec::new();
    while done < warmup + count {
        ep.poll(&mut ready, false)?;
        for &t in &ready {
            let i = t as usize;
            loop {
                match socks[i].read(&mut buf[got[i]..]) {
                    Ok(0) => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "echo server closed")),
                    Ok(n) => {
                        got[i] += n;
                        if got[i] < size {
                            continue;
                        }
                        got[i] = 0;
                        if done >= warmup {
                            let _ = hist.record(sent_at[i].elapsed().as_nanos() as u64);
                        }
                        done += 1;
                        if done == warmup {
                            start = Instant::now();
                        }
                        sent_at[i] = Instant::now();
                        write_full(&mut socks[i], &msg)?;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    println!(
        "{} over {conns} connections tps {:.0}",
        bench::pingpong_summary(&hist, size),
        hist.len() as f64 / start.elapsed().as_secs_f64()
    );
    if let Some(path) = hgrm {
        bench::write_hgrm(&path, &hist)?;
    }
    Ok(())
}

/// Accept connections and keep them open (memory per connection: the bench script reads the
/// kernel's slab and this process's RSS around it); prints a line when `count` are accepted.
fn hold_server(addr: SocketAddr, count: u64, core: Option<usize>) -> std::io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    pin(core);
    // 100 000 sockets need as many descriptors.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    let want = (count + 1024).max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    let l = TcpListener::bind(addr)?;
    eprintln!("linux hold-server on {addr}");
    let mut held = Vec::with_capacity(count as usize);
    loop {
        let (s, _) = l.accept()?;
        held.push(s);
        if held.len() as u64 == count {
            println!("hold-server: {count} accepted");
            let _ = std::io::stdout().flush();
        }
    }
}

/// Receive until EOF; print the rate.
fn sink(addr: SocketAddr, core: Option<usize>) -> std::io::Result<()> {
    pin(core);
    let l = TcpListener::bind(addr)?;
    let (mut s, _) = l.accept()?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut n, mut start) = (0u64, None);
    loop {
        match s.read(&mut buf)? {
            0 => break,
            k => {
                start.get_or_insert_with(Instant::now);
                n += k as u64;
            }
        }
    }
    let secs = start.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0).max(1e-6);
    println!("sink: received {n} bytes in {secs:.3} s ({:.1} Mbit/s)", n as f64 * 8.0 / secs / 1e6);
    Ok(())
}

/// Send `bytes` bytes and close.
fn source(addr: SocketAddr, bytes: u64, core: Option<usize>) -> std::io::Result<()> {
    pin(core);
    let mut s = TcpStream::connect(addr)?;
    let buf = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let k = (left as usize).min(buf.len());
        s.write_all(&buf[..k])?;
        left -= k as u64;
    }
    Ok(())
}

/// Connection rate: connect, 64 bytes, half-close, read to end, close; `count` times.
fn connrate(addr: SocketAddr, count: u64, core: Option<usize>) -> std::io::Result<()> {
    pin(core);
    let start = Instant::now();
    let mut buf = Vec::with_capacity(128);
    for _ in 0..count {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.write_all(&[0x42; 64])?;
        s.shutdown(std::net::Shutdown::Write)?;
        buf.clear();
        s.read_to_end(&mut buf)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("connrate: {count} connections in {secs:.3} s: {:.0} conn/s", count as f64 / secs);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: plex-bench-linux echo|echo-many ADDR:PORT [--core N] | pingpong ADDR:PORT [--size N] [--count N] [--warmup N] [--conns N] [--core N] [--hgrm FILE] | sink ADDR:PORT | source ADDR:PORT [--bytes N] | connrate ADDR:PORT [--count N]";
    let (Some(cmd), Some(addr)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        eprintln!("plex-bench-linux: {addr:?} is not ADDR:PORT");
        return ExitCode::from(2);
    };
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let num = |name: &str, d: u64| -> Result<u64, String> {
        opt(name).map(|v| v.parse::<u64>().map_err(|_| format!("{name}: {v:?} is not a number"))).unwrap_or(Ok(d))
    };
    let parsed = (|| -> Result<(usize, u64, u64, Option<usize>), String> {
        let core = opt("--core").map(|v| v.parse::<usize>().map_err(|_| format!("--core: {v:?} is not a number"))).transpose()?;
        Ok((num("--size", 64)? as usize, num("--count", 100_000)?, num("--warmup", 1_000)?, core))
    })();
    let (size, count, warmup, core) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("plex-bench-linux: {e}");
            return ExitCode::from(2);
        }
    };
    let r = match cmd.as_str() {
        "echo" => echo(addr, core),
        "echo-many" => echo_many(addr, core, args.iter().any(|a| a == "--block")),
        "hold-server" => num("--count", 100_000).map_err(std::io::Error::other).and_then(|n| hold_server(addr, n, core)),
        "pingpong" => match num("--conns", 1) {
            Ok(1) => pingpong(addr, size.max(1), count, warmup, core, opt("--hgrm")),
            Ok(n) => pingpong_many(addr, size.max(1), count, warmup, n.max(1) as usize, core, opt("--hgrm")),
            Err(e) => Err(std::io::Error::other(e)),
        },
        "sink" => sink(addr, core),
        "connrate" => connrate(addr, count, core),
        "source" => num("--bytes", 1 << 30).map_err(std::io::Error::other).and_then(|b| source(addr, b, core)),
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex-bench-linux: {e}");
            ExitCode::from(1)
        }
    }
}
