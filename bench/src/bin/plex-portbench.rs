//! Throughput of the cluster port registry (`coupling::ports`, spec/03): ephemeral claim +
//! release pairs per second on one `cluster_ports` DVIPA, first from one process, then from
//! two processes (two stacks of one cluster on one region file) hammering the same DVIPA.
//!
//! Each worker keeps a window of 1024 claimed ports (as a stack with 1024 connections would):
//! every step claims a port at a random start (RFC 6056) and releases the oldest one.
//!
//! Usage:
//!   plex-portbench [--secs 1.0] [--window 1024]
//! (`--child REGION MODE START_NS SECS WINDOW` is how it runs its second process.)
//!
//! Prints human lines, then one JSON line:
//! `{"claims_per_s_1": .., "claims_per_s_2": .., "tuple_claims_per_s_1": .., "tuple_claims_per_s_2": ..}`

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use coupling::config::ClusterConfig;
use coupling::node::Identity;
use coupling::ports::Registry;
use coupling::{Node, Region};
use poll_loop::clock::Clock;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const TUP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);

fn config(region: &Path) -> String {
    format!(
        r#"[cluster]
name = "portbench"
region = "{}"
lease_ms = 60000
heartbeat_ms = 10
[[stack]]
name = "s1"
interface = "pb-s1"
address = "198.18.0.11/24"
[[stack]]
name = "s2"
interface = "pb-s2"
address = "198.18.0.12/24"
[[dvipa]]
address = "198.18.0.100/24"
primary = "s1"
cluster_ports = true
[[dvipa]]
address = "198.18.0.101/24"
primary = "s1"
cluster_ports = "tuple"
"#,
        region.display()
    )
}

/// Removes the region file when the parent is done (also on an error path).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn join(region_path: &Path, name: &str) -> Result<(Node, Registry), String> {
    let cfg = Arc::new(ClusterConfig::parse(&config(region_path), "portbench config").map_err(|e| e.to_string())?);
    let now = Clock::read_mono_ns();
    let region = Region::create_or_attach(&cfg.region, &cfg.name, cfg.hash(), now).map_err(|e| e.to_string())?;
    let ident = Identity { pid: std::process::id(), ..Identity::default() };
    let node = Node::join(Arc::new(region), cfg, name, ident, now).map_err(|e| e.to_string())?;
    let reg = Registry::new(&node);
    Ok((node, reg))
}

/// Claim + release pairs from `start_ns` for `secs` seconds; returns (pairs, errors).
fn hammer(reg: &mut Registry, addr: Ipv4Addr, start_ns: u64, secs: f64, window: usize, seed: u64) -> (u64, u64) {
    while Clock::read_mono_ns() < start_ns {
        std::hint::spin_loop();
    }
    let end = start_ns + (secs * 1e9) as u64;
    let mut rng = seed | 1;
    let mut held: VecDeque<(u16, SocketAddrV4)> = VecDeque::with_capacity(window + 1);
    let (mut pairs, mut errors) = (0u64, 0u64);
    let mut now = start_ns;
    let mut i = 0u64;
    loop {
        if i & 1023 == 0 {
            now = Clock::read_mono_ns();
            if now >= end {
                break;
            }
        }
        i += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // A handful of remotes (tuple mode reuses ports across them).
        let remote = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, (rng >> 40) as u8 & 7), 443);
        match reg.claim_ephemeral(now, addr, remote, rng as u16) {
            Ok(p) => held.push_back((p, remote)),
            Err(_) => errors += 1,
        }
        if held.len() > window {
            if let Some((p, r)) = held.pop_front() {
                if !reg.release(now, addr, p, Some(r)) {
                    errors += 1;
                }
                pairs += 1;
            }
        }
    }
    for (p, r) in held {
        reg.release(now, addr, p, Some(r));
    }
    (pairs, errors)
}

fn child(args: &[String]) -> Result<(), String> {
    let [region, mode, start, secs, window] = args else { return Err("--child REGION MODE START_NS SECS WINDOW".into()) };
    let (mut node, mut reg) = join(Path::new(region), "s2")?;
    let addr = if mode == "tuple" { TUP } else { VIP };
    let start: u64 = start.parse().map_err(|_| "bad START_NS")?;
    let secs: f64 = secs.parse().map_err(|_| "bad SECS")?;
    let window: usize = window.parse().map_err(|_| "bad WINDOW")?;
    let (pairs, errors) = hammer(&mut reg, addr, start, secs, window, 0xdead_beef_cafe_f00d);
    // Leave cleanly, so the next run's second process may join as s2 again.
    node.leave(Clock::read_mono_ns(), &mut Vec::new());
    println!("{pairs} {errors}");
    Ok(())
}

/// Both processes from the same instant: returns (parent pairs/s, child pairs/s, errors).
fn two(reg: &mut Registry, region: &Path, mode: &str, secs: f64, window: usize) -> Result<(f64, f64, u64), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let start = Clock::read_mono_ns() + 400_000_000;
    let kid = Command::new(exe)
        .args(["--child", &region.display().to_string(), mode, &start.to_string(), &secs.to_string(), &window.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the second process: {e}"))?;
    let addr = if mode == "tuple" { TUP } else { VIP };
    let (pairs, errors) = hammer(reg, addr, start, secs, window, 0x9e37_79b9_7f4a_7c15);
    let out = kid.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("second process failed: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().unwrap_or(0));
    let (kp, ke) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    Ok((pairs as f64 / secs, kp as f64 / secs, errors + ke))
}

fn run(secs: f64, window: usize) -> Result<(), String> {
    let path = PathBuf::from(format!("/dev/shm/plex-portbench-{}", std::process::id()));
    let _cleanup = Cleanup(path.clone());
    let (mut node, mut reg) = join(&path, "s1")?;
    println!("region {} ({} MB), window {window} claimed ports per process, {secs} s per run", path.display(), std::fs::metadata(&path).map(|m| m.len() >> 20).unwrap_or(0));

    let t = Clock::read_mono_ns();
    let (p1, e1) = hammer(&mut reg, VIP, t, secs, window, 0x1234_5678_9abc_def1);
    let one = p1 as f64 / secs;
    println!("1 process,  port mode:  {:>12.0} claim+release pairs/s ({:.1} ns per pair; {e1} errors)", one, 1e9 / one);
    let t = Clock::read_mono_ns();
    let (pt, et) = hammer(&mut reg, TUP, t, secs, window, 0x1234_5678_9abc_def1);
    let tone = pt as f64 / secs;
    println!("1 process,  tuple mode: {:>12.0} claim+release pairs/s ({:.1} ns per pair; {et} errors)", tone, 1e9 / tone);

    let (a, b, e2) = two(&mut reg, &path, "port", secs, window)?;
    println!("2 processes, port mode:  {:>12.0} pairs/s ({a:.0} + {b:.0}; {e2} errors)", a + b);
    let (ta, tb, te2) = two(&mut reg, &path, "tuple", secs, window)?;
    println!("2 processes, tuple mode: {:>12.0} pairs/s ({ta:.0} + {tb:.0}; {te2} errors)", ta + tb);
    println!("registry stats (parent): {:?}", reg.stats);
    node.leave(Clock::read_mono_ns(), &mut Vec::new());
    println!(
        "{{\"claims_per_s_1\": {one:.0}, \"claims_per_s_2\": {:.0}, \"tuple_claims_per_s_1\": {tone:.0}, \"tuple_claims_per_s_2\": {:.0}}}",
        a + b,
        ta + tb
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..])
    } else {
        let mut secs = 1.0f64;
        let mut window = 1024usize;
        let mut it = args.iter();
        let mut bad = None;
        while let Some(a) = it.next() {
            match (a.as_str(), it.next().map(|v| v.parse::<f64>())) {
                ("--secs", Some(Ok(v))) if v > 0.0 => secs = v,
                ("--window", Some(Ok(v))) if (1.0..=20000.0).contains(&v) => window = v as usize,
                _ => bad = Some(format!("bad argument {a:?}; usage: plex-portbench [--secs 1.0] [--window 1024]")),
            }
        }
        match bad {
            Some(e) => Err(e),
            None => run(secs, window),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex-portbench: {e}");
            ExitCode::FAILURE
        }
    }
}
