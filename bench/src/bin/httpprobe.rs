//! `plex-httpprobe`: the legitimate client of the chaos suite. Starts one connection every
//! `--interval-ms` on the Linux stack of the host it runs on; each connection fetches every
//! path of `--paths` in turn over keep-alive (a small and a 1 MiB response by default) and
//! counts as a success only if every response arrived whole within `--timeout-ms` of the
//! attempt's start (one deadline for the connect, the requests and every byte). Attempts are
//! grouped into time windows (`--window NAME:FROM:TO`, seconds since the probe started, by the
//! attempt's start), so a script can ask "what fraction succeeded during the flood, and after".
//!
//! Usage:
//!   plex-httpprobe ADDR:PORT [--secs 10] [--interval-ms 10] [--timeout-ms 5000]
//!                  [--paths /bytes/1024,/bytes/1048576] [--window NAME:FROM:TO]... [--json FILE]
//! Prints one line per window: `probe NAME: OK/N succeeded (P %), p50 X ms, p99 Y ms` and, with
//! `--json`, `{"NAME": {"attempts": N, "ok": K, "success": F, "p50_ms": X, "p99_ms": Y,
//! "errors": {...}}, ...}`.

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Attempt {
    started: f64,
    result: Result<Duration, &'static str>,
}

/// Read into `buf` with what is left before `deadline` as the socket's timeout.
fn read_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, &'static str> {
    let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or("timeout")?;
    s.set_read_timeout(Some(left)).map_err(|_| "socket")?;
    s.read(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout",
        std::io::ErrorKind::ConnectionReset => "reset",
        _ => "read",
    })
}

fn fetch(s: &mut TcpStream, path: &str, buf: &mut [u8], deadline: Instant) -> Result<(), &'static str> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: plex\r\n\r\n");
    let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or("timeout")?;
    s.set_write_timeout(Some(left)).map_err(|_| "socket")?;
    s.write_all(req.as_bytes()).map_err(|_| "write")?;
    // Headers: read until the blank line (they fit in `buf`).
    let mut have = 0;
    let head_end = loop {
        let n = read_by(s, &mut buf[have..], deadline)?;
        if n == 0 {
            return Err("closed");
        }
        have += n;
        if let Some(p) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if have == buf.len() {
            return Err("headers too long");
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "bad headers")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err("status");
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .ok_or("no content-length")?;
    let mut body = have - head_end;
    while body < len {
        let n = read_by(s, buf, deadline)?;
        if n == 0 {
            return Err("closed");
        }
        body += n;
    }
    if body != len {
        return Err("extra bytes");
    }
    Ok(())
}

fn attempt(to: SocketAddr, paths: &[String], timeout: Duration) -> Result<Duration, &'static str> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "connect timeout",
        std::io::ErrorKind::ConnectionRefused => "refused",
        std::io::ErrorKind::ConnectionReset => "reset",
        _ => "connect",
    })?;
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    // One deadline for the whole attempt: connect, every request, every byte of every body.
    let deadline = t + timeout;
    for p in paths {
        fetch(&mut s, p, &mut buf, deadline)?;
    }
    Ok(t.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = (|| -> Result<(), String> {
        let to: SocketAddr = args
            .first()
            .ok_or("usage: plex-httpprobe ADDR:PORT [--secs S] [--interval-ms MS] [--timeout-ms MS] [--paths P,P] [--window NAME:FROM:TO]... [--json FILE]")?
            .parse()
            .map_err(|_| format!("{:?} is not ADDR:PORT", args[0]))?;
        let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
        let num = |name: &str, d: u64| -> Result<u64, String> {
            opt(name).map(|v| v.parse().map_err(|_| format!("{name} {v:?}: not a number"))).unwrap_or(Ok(d))
        };
        let secs = num("--secs", 10)?.clamp(1, 600);
        let interval = Duration::from_millis(num("--interval-ms", 10)?.max(1));
        let timeout = Duration::from_millis(num("--timeout-ms", 5000)?.max(1));
        let paths: Vec<String> = opt("--paths").unwrap_or_else(|| "/bytes/1024,/bytes/1048576".into()).split(',').map(String::from).collect();
        let mut windows: Vec<(String, f64, f64)> = Vec::new();
        for (i, a) in args.iter().enumerate() {
            if a == "--window" {
                let w = args.get(i + 1).ok_or("--window needs NAME:FROM:TO")?;
                let p: Vec<&str> = w.split(':').collect();
                let bad = || format!("--window {w:?}: expected NAME:FROM:TO (seconds)");
                if p.len() != 3 {
                    return Err(bad());
                }
                windows.push((p[0].to_string(), p[1].parse().map_err(|_| bad())?, p[2].parse().map_err(|_| bad())?));
            }
        }
        if windows.is_empty() {
            windows.push(("all".into(), 0.0, secs as f64));
        }

        let (tx, rx) = mpsc::channel::<Attempt>();
        let start = Instant::now();
        let mut launched = 0u64;
        let end = start + Duration::from_secs(secs);
        let mut next = start;
        let mut last_report = 0u64;
        while next < end {
            let now = Instant::now();
            if now < next {
                std::thread::sleep(next - now);
            }
            let started = start.elapsed().as_secs_f64();
            let (tx, paths) = (tx.clone(), paths.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let result = attempt(to, &paths, timeout);
                    let _ = tx.send(Attempt { started, result });
                })
                .map_err(|e| format!("spawning a client thread: {e}"))?;
            launched += 1;
            next += interval;
            let s = start.elapsed().as_secs();
            if s > last_report {
                last_report = s;
                eprintln!("probe: {s:>3} s, {launched} connections started");
            }
        }
        drop(tx);
        // Every attempt ends by its own timeout; wait for them all.
        let deadline = Instant::now() + timeout + Duration::from_secs(2);
        let mut done: Vec<Attempt> = Vec::with_capacity(launched as usize);
        while (done.len() as u64) < launched {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(a) => done.push(a),
                Err(_) => break,
            }
        }
        let missing = launched - done.len() as u64;

        let mut json = String::from("{");
        for (wi, (name, from, to_s)) in windows.iter().enumerate() {
            let sel: Vec<&Attempt> = done.iter().filter(|a| a.started >= *from && a.started < *to_s).collect();
            let mut lat: Vec<f64> = sel.iter().filter_map(|a| a.result.ok()).map(|d| d.as_secs_f64() * 1e3).collect();
            lat.sort_by(f64::total_cmp);
            let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
            for a in &sel {
                if let Err(e) = a.result {
                    *errors.entry(e).or_default() += 1;
                }
            }
            let n = sel.len();
            let ok = lat.len();
            let frac = if n == 0 { 0.0 } else { ok as f64 / n as f64 };
            let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
            let errs: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!(
                "probe {name}: {ok}/{n} succeeded ({:.1} %), p50 {p50:.1} ms, p99 {p99:.1} ms{}",
                frac * 100.0,
                if errs.is_empty() { String::new() } else { format!(" (failed: {})", errs.join(", ")) }
            );
            let ej: Vec<String> = errors.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            json.push_str(&format!(
                "{}\"{name}\": {{\"attempts\": {n}, \"ok\": {ok}, \"success\": {frac:.4}, \"p50_ms\": {p50:.2}, \"p99_ms\": {p99:.2}, \"errors\": {{{}}}}}",
                if wi == 0 { "" } else { ", " },
                ej.join(", ")
            ));
        }
        json.push_str(&format!(", \"unfinished\": {missing}}}"));
        if missing > 0 {
            println!("probe: {missing} attempts never finished");
        }
        if let Some(path) = opt("--json") {
            std::fs::write(&path, json + "\n").map_err(|e| format!("writing {path}: {e}"))?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex-httpprobe: {e}");
            ExitCode::from(2)
        }
    }
}
