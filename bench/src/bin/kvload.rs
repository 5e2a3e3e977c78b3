//! `plex-kvload`: a checked concurrent load generator for the KV servers of
//! `apps/examples/kv_*.rs` (protocol: `apps/examples/kv/proto.rs`), on Linux sockets.
//!
//! ```text
//! plex-kvload --addr IP:PORT --conns N --seconds S [--threads T] [--server-pid PID] [--json]
//!             [--keys K] [--connect-gap-us U]
//! ```
//!
//! Connections are opened one every `--connect-gap-us` (500 µs: 1000 connections in half a
//! second, not one burst against the server's backlog); the measurement starts once all are
//! open. Each connection owns a disjoint key space (`<run>.c<conn>.<k>`, `--keys` keys, `<run>`
//! random per run), issues one request at a time (half SET of a random value, half GET) and
//! checks every reply against its own model: `OK` for a SET, and for a GET exactly the value this connection last set for the
//! key, or `NONE` if it never set it. Anything else is a mismatch. Errors: a failed or
//! timed-out connect, a reset or other I/O error, the server closing, a request not answered
//! within 5 s; a connection stops at its first error.
//!
//! Prints requests/s, latency p50/p99, errors, mismatches and, with `--server-pid`, the server
//! process's CPU time (utime + stime of `/proc/PID/stat`, every thread, over the measured
//! window) per request. `--json`: one JSON object on stdout, the summary line on stderr.
//! Exit status 1 on any mismatch or error (or no request at all), 2 on bad arguments.

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Every connect and every request must finish within this.
const DEADLINE: Duration = Duration::from_secs(5);
/// Problems described on stderr at most (the rest are only counted).
const TELL: u64 = 5;
static TOLD: AtomicU64 = AtomicU64::new(0);

fn tell(what: String) {
    if TOLD.fetch_add(1, Ordering::Relaxed) < TELL {
        eprintln!("plex-kvload: {what}");
    }
}

#[derive(Debug)]
struct Opts {
    addr: SocketAddr,
    conns: usize,
    seconds: f64,
    threads: usize,
    server_pid: Option<u32>,
    json: bool,
    keys: usize,
    gap: Duration,
}

const USAGE: &str = "usage: plex-kvload --addr IP:PORT --conns N --seconds S [--threads T] [--server-pid PID] [--json] [--keys K] [--connect-gap-us U]";

fn opts() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let known = ["--addr", "--conns", "--seconds", "--threads", "--server-pid", "--keys", "--connect-gap-us"];
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--json" => i += 1,
            a if known.contains(&a) && i + 1 < args.len() => i += 2,
            a if known.contains(&a) => return Err(format!("{a} needs a value ({USAGE})")),
            a => return Err(format!("unknown argument {a:?} ({USAGE})")),
        }
    }
    let opt = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
    fn num<T: std::str::FromStr>(name: &str, v: Option<String>, what: &str) -> Result<Option<T>, String> {
        v.map(|v| v.parse().map_err(|_| format!("{name} {v:?}: expected {what} ({USAGE})"))).transpose()
    }
    let need = |name: &str| format!("{name} is required ({USAGE})");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let o = Opts {
        addr: num("--addr", opt("--addr"), "IP:PORT")?.ok_or_else(|| need("--addr"))?,
        conns: num("--conns", opt("--conns"), "a number of connections")?.ok_or_else(|| need("--conns"))?,
        seconds: num("--seconds", opt("--seconds"), "a number of seconds")?.ok_or_else(|| need("--seconds"))?,
        threads: num("--threads", opt("--threads"), "a number of threads")?.unwrap_or(cores),
        server_pid: num("--server-pid", opt("--server-pid"), "a process id")?,
        json: args.iter().any(|a| a == "--json"),
        keys: num("--keys", opt("--keys"), "a number of keys")?.unwrap_or(64),
        gap: Duration::from_micros(num("--connect-gap-us", opt("--connect-gap-us"), "microseconds")?.unwrap_or(500)),
    };
    if o.conns == 0 || o.threads == 0 || o.keys == 0 {
        return Err("--conns, --threads and --keys must be at least 1".into());
    }
    if !(o.seconds > 0.0 && o.seconds <= 3600.0) {
        return Err(format!("--seconds {}: expected more than 0 and at most 3600", o.seconds));
    }
    if let Some(pid) = o.server_pid {
        cpu_ticks(pid).map_err(|e| format!("--server-pid {pid}: {e}"))?;
    }
    Ok(o)
}

/// utime + stime of a process, all threads, in clock ticks (USER_HZ: 100 per second on Linux).
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("/proc/PID/stat without a command name")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("/proc/PID/stat: no utime/stime");
    Ok(tick(11)? + tick(12)?)
}
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default)]
struct Errors {
    connect: u64,
    io: u64,
    timeout: u64,
    closed: u64,
}
impl Errors {
    fn total(&self) -> u64 {
        self.connect + self.io + self.timeout + self.closed
    }
}

#[derive(Debug)]
struct Tally {
    requests: u64,
    mismatches: u64,
    errors: Errors,
    hist: Histogram<u64>,
}
impl Tally {
    fn new() -> Tally {
        // 1 µs to 60 s, 3 significant digits: constant bounds that hdrhistogram accepts.
        #[allow(clippy::expect_used)]
        let hist = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid constant histogram bounds");
        Tally { requests: 0, mismatches: 0, errors: Errors::default(), hist }
    }
    fn add(&mut self, o: Tally) {
        self.requests += o.requests;
        self.mismatches += o.mismatches;
        self.errors.connect += o.errors.connect;
        self.errors.io += o.errors.io;
        self.errors.timeout += o.errors.timeout;
        self.errors.closed += o.errors.closed;
        let _ = self.hist.add(&o.hist);
    }
}

/// xorshift64*: a fast, seedable generator (the test needs variety, not secrecy).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// This run's key prefix: the server's map outlives a run, and keys must not meet those of
/// earlier runs (or of another kvload at the same time).
fn run_id() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    Rng(t ^ (u64::from(std::process::id()) << 32) | 1).next()
}

/// One connection's load, until `end`: requests one at a time, every reply checked.
async fn worker(run: u64, id: usize, stream: TcpStream, keys: usize, end: Instant) -> Tally {
    let mut t = Tally::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ std::process::id() as u64);
    let mut model: Vec<Option<String>> = vec![None; keys];
    let mut s = BufReader::new(stream);
    let (mut req, mut reply) = (String::new(), Vec::new());
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    while Instant::now() < end {
        let k = rng.below(keys);
        let value = (rng.next() & 1 == 0).then(|| (0..1 + rng.below(32)).map(|_| ALNUM[rng.below(ALNUM.len())] as char).collect::<String>());
        req.clear();
        match &value {
            Some(v) => req.push_str(&format!("SET {run:x}.c{id}.{k} {v}\n")),
            None => req.push_str(&format!("GET {run:x}.c{id}.{k}\n")),
        }
        reply.clear();
        let start = Instant::now();
        let r = tokio::time::timeout(DEADLINE, async {
            s.get_mut().write_all(req.as_bytes()).await?;
            s.read_until(b'\n', &mut reply).await
        })
        .await;
        match r {
            Err(_) => {
                t.errors.timeout += 1;
                tell(format!("connection {id}: no answer to {:?} within {DEADLINE:?}", req.trim_end()));
                break;
            }
            Ok(Err(e)) => {
                t.errors.io += 1;
                tell(format!("connection {id}: {:?}: {e}", req.trim_end()));
                break;
            }
            Ok(Ok(_)) if reply.last() != Some(&b'\n') => {
                t.errors.closed += 1;
                tell(format!("connection {id}: the server closed the connection (request {:?})", req.trim_end()));
                break;
            }
            Ok(Ok(_)) => {}
        }
        let _ = t.hist.record((start.elapsed().as_micros() as u64).max(1));
        t.requests += 1;
        let want = match value {
            Some(v) => {
                model[k] = Some(v);
                "OK\n".to_string()
            }
            None => model[k].as_ref().map_or_else(|| "NONE\n".to_string(), |v| format!("VALUE {v}\n")),
        };
        if reply != want.as_bytes() {
            t.mismatches += 1;
            tell(format!("MISMATCH on connection {id}: {:?} answered {:?}, expected {want:?}", req.trim_end(), String::from_utf8_lossy(&reply)));
        }
    }
    t
}

async fn run(o: &Opts) -> Tally {
    let mut total = Tally::new();
    // Open the connections one every `gap`.
    let t0 = tokio::time::Instant::now();
    let mut opening = Vec::new();
    for i in 0..o.conns {
        let (addr, at) = (o.addr, t0 + o.gap * i as u32);
        opening.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            match tokio::time::timeout(DEADLINE, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s.set_nodelay(true).map(|_| s).map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no connection within {DEADLINE:?}")),
            }
        }));
    }
    let mut streams = Vec::new();
    for (i, h) in opening.into_iter().enumerate() {
        match h.await {
            Ok(Ok(s)) => streams.push((i, s)),
            Ok(Err(e)) => {
                total.errors.connect += 1;
                tell(format!("connect {i} to {}: {e}", o.addr));
            }
            Err(e) => {
                total.errors.connect += 1;
                tell(format!("connect {i}: the task failed: {e}"));
            }
        }
    }
    // The measured window: every connection open, all start together.
    let cpu0 = o.server_pid.map(cpu_ticks);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(o.seconds);
    let run = run_id();
    let workers: Vec<_> = streams.into_iter().map(|(i, s)| tokio::spawn(worker(run, i, s, o.keys, end))).collect();
    for w in workers {
        match w.await {
            Ok(t) => total.add(t),
            Err(e) => {
                total.errors.io += 1;
                tell(format!("a connection's task failed: {e}"));
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, o.server_pid.map(cpu_ticks)) {
        (Some(Ok(a)), Some(Ok(b))) => Some(b.saturating_sub(a)),
        (Some(_), _) => {
            tell("the server's CPU time could not be read at the end (did it exit?)".into());
            total.errors.io += 1;
            None
        }
        _ => None,
    };
    report(o, &total, elapsed, cpu);
    total
}

fn report(o: &Opts, t: &Tally, elapsed: f64, cpu: Option<u64>) {
    let rps = t.requests as f64 / elapsed;
    let (p50, p99) = (t.hist.value_at_quantile(0.5), t.hist.value_at_quantile(0.99));
    let cpu_us = cpu.filter(|_| t.requests > 0).map(|c| c as f64 / USER_HZ * 1e6 / t.requests as f64);
    let cores = cpu.map(|c| c as f64 / USER_HZ / elapsed);
    let e = &t.errors;
    let cpu_text = match (cpu_us, cores) {
        (Some(u), Some(c)) => format!(", server CPU {u:.2} us/request ({c:.2} cores)"),
        _ => String::new(),
    };
    let line = format!(
        "kvload {}: {} connections, {elapsed:.2} s: {} requests, {rps:.0} req/s, latency p50 {p50} us p99 {p99} us, errors {} (connect {} io {} timeout {} closed {}), mismatches {}{cpu_text}",
        o.addr, o.conns, t.requests, e.total(), e.connect, e.io, e.timeout, e.closed, t.mismatches
    );
    if o.json {
        eprintln!("{line}");
        let null = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        println!(
            "{{\"addr\":\"{}\",\"conns\":{},\"seconds\":{elapsed:.3},\"requests\":{},\"rps\":{rps:.1},\"p50_us\":{p50},\"p99_us\":{p99},\"errors\":{},\"errors_connect\":{},\"errors_io\":{},\"errors_timeout\":{},\"errors_closed\":{},\"mismatches\":{},\"server_cpu_us_per_req\":{},\"server_cores\":{}}}",
            o.addr, o.conns, t.requests, e.total(), e.connect, e.io, e.timeout, e.closed, t.mismatches, null(cpu_us), null(cores)
        );
    } else {
        println!("{line}");
    }
}

/// Room for one descriptor per connection: the soft RLIMIT_NOFILE up to the hard one.
fn raise_nofile(conns: usize) -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit: {e}"))?;
    let want = (conns as u64 + 64).min(hard);
    if want > soft {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).map_err(|e| format!("setrlimit NOFILE {want}: {e}"))?;
    }
    if want < conns as u64 + 16 {
        return Err(format!("{conns} connections need more descriptors than RLIMIT_NOFILE's hard limit {hard}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("plex-kvload: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = raise_nofile(o.conns) {
        eprintln!("plex-kvload: {e}");
        return ExitCode::from(1);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(o.threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plex-kvload: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let t = rt.block_on(run(&o));
    if t.mismatches > 0 || t.errors.total() > 0 || t.requests == 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
