//! The Linux side of the side-by-side benchmarks: a TCP echo server and a ping-pong client on
//! ordinary kernel sockets, busy-polling in user space (non-blocking sockets, spinning), pinned
//! to a core, so they compare with plex's busy-polling poll threads.
//!
//! Usage:
//!   plex-bench-linux echo ADDR:PORT [--core N]
//!   plex-bench-linux pingpong ADDR:PORT [--size 64] [--count N] [--warmup N] [--core N] [--hgrm FILE]
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
    let usage = "usage: plex-bench-linux echo ADDR:PORT [--core N] | pingpong ADDR:PORT [--size N] [--count N] [--warmup N] [--core N] [--hgrm FILE]";
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
        "pingpong" => pingpong(addr, size.max(1), count, warmup, core, opt("--hgrm")),
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
