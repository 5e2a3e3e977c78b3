//! The floor of a thread-per-connection server on this machine: what one wake-up of a parked
//! thread costs, with no I/O at all. PAIRS pairs of threads play ping-pong through
//! `std::thread::park`/`unpark` (the blocking API's wait: a futex wait, and a futex wake by
//! whoever has news); each round trip is two wake-ups, each with its context switches.
//!
//! A blocking KV server pays one such wake-up per request (the poll thread wakes the
//! connection's thread, which answers and parks again), on top of what a run-to-completion
//! server pays: this program prints that extra, as CPU time per wake-up (the process's utime
//! + stime over the run) and wake-ups per second.
//!
//! Usage: plex-bench-park [PAIRS...] (default: 1 2 50 1000)

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::Instant;

/// Wake-ups per run, over all pairs.
const WAKES: u64 = 800_000;

/// This process's CPU time (user + system), in seconds.
fn cpu_seconds() -> f64 {
    let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    r.map_or(0.0, |r| {
        let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 * 1e-6;
        t(r.user_time()) + t(r.system_time())
    })
}

/// One pair: `turn` counts the hand-overs; odd: b's move, even: a's.
struct Pair {
    turn: AtomicU64,
    a: OnceLock<Thread>,
    b: OnceLock<Thread>,
}

/// Play `rounds` round trips as one side (`me` is 0 for a, 1 for b).
fn play(p: &Pair, me: u64, rounds: u64) {
    let (mine, peer) = if me == 0 { (&p.a, &p.b) } else { (&p.b, &p.a) };
    mine.set(thread::current()).expect("set once");
    while peer.get().is_none() {
        thread::yield_now();
    }
    let peer = peer.get().expect("set");
    for i in 0..rounds {
        // a moves at turns 2i, b at 2i + 1.
        let my_turn = 2 * i + me;
        while p.turn.load(Ordering::Acquire) != my_turn {
            thread::park();
        }
        p.turn.store(my_turn + 1, Ordering::Release);
        peer.unpark();
    }
}

fn run(pairs: usize) -> Result<(), String> {
    let rounds = (WAKES / 2 / pairs as u64).max(1);
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let mut threads = Vec::new();
    for _ in 0..pairs {
        let p = Arc::new(Pair { turn: AtomicU64::new(0), a: OnceLock::new(), b: OnceLock::new() });
        for me in 0..2 {
            let p = p.clone();
            let t = thread::Builder::new().stack_size(64 << 10).spawn(move || play(&p, me, rounds));
            threads.push(t.map_err(|e| format!("spawning a thread: {e}"))?);
        }
    }
    for t in threads {
        t.join().map_err(|_| "a thread panicked".to_string())?;
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    let wakes = (2 * rounds * pairs as u64) as f64;
    println!("park: {pairs:5} pairs: {:9.0} wake-ups/s, {:5.2} us CPU per wake-up (park + unpark + switches)", wakes / wall, cpu * 1e6 / wakes);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pairs: Result<Vec<usize>, _> = if args.is_empty() { Ok(vec![1, 2, 50, 1000]) } else { args.iter().map(|a| a.parse::<usize>()).collect() };
    let Ok(pairs) = pairs else {
        eprintln!("usage: plex-bench-park [PAIRS...]");
        return ExitCode::from(2);
    };
    for n in pairs.into_iter().filter(|&n| n > 0) {
        if let Err(e) = run(n) {
            eprintln!("plex-bench-park: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
