//! plex-bench-api: request/response over the blocking API (`poll_loop::api`), N client
//! threads each with its own connection to an echo thread per connection, both sides on
//! in-memory stacks (`poll_loop::api::loopback`) driven by one thread that plays both poll
//! threads. Prints requests per second and process CPU per request (every thread: clients,
//! servers, the driver; so both ends of each request).
//!
//! Usage: `plex-bench-api [clients] [seconds] [request bytes]` (defaults 8 2 64)

// A benchmark measures: it reads the clock and spawns threads.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use poll_loop::api::{bridge, loopback::Loopback};
use stack::iface::{Stack, StackConfig};
use stack::wire::MacAddr;

fn stack(last: u8, ip: Ipv4Addr) -> Stack {
    let mut cfg = StackConfig::new(MacAddr([2, 0, 0, 0, 0, last]));
    cfg.seed = last as u64;
    cfg.max_connections = 100_000;
    let mut s = Stack::new(cfg);
    s.add_address(ip, 24, false);
    s
}

fn cpu_us() -> u64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as u64 * 1_000_000 + tv.tv_usec() as u64;
    t(u.user_time()) + t(u.system_time())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (clients, secs, size) = (arg(1, 8) as usize, arg(2, 2), arg(3, 64) as usize);
    let a = Ipv4Addr::new(198, 18, 0, 10);
    let (server, ba) = bridge(None);
    let (client, bb) = bridge(None);
    let mut driver = Loopback::new(stack(10, a), ba, stack(1, Ipv4Addr::new(198, 18, 0, 1)), bb).spawn().expect("driver");
    let l = server.tcp_listen(SocketAddrV4::new(a, 7), 1024).expect("listen");
    let servers = thread::spawn(move || {
        let mut echoes = Vec::new();
        for _ in 0..clients {
            let (mut s, _) = l.accept().expect("accept");
            s.set_nodelay(true).expect("nodelay");
            echoes.push(thread::spawn(move || {
                let mut b = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = s.read(&mut b) {
                    if s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            }));
        }
        for e in echoes {
            let _ = e.join();
        }
    });
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..clients {
        let c = client.tcp_connect(SocketAddrV4::new(a, 7)).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        conns.push(c);
    }
    let (cpu0, t0) = (cpu_us(), Instant::now());
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let (done, count) = (done.clone(), count.clone());
            thread::spawn(move || {
                let req = vec![7u8; size];
                let mut resp = vec![0u8; size];
                while !done.load(Ordering::Relaxed) {
                    c.write_all(&req).expect("write");
                    c.read_exact(&mut resp).expect("read");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(secs));
    done.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let (cpu, elapsed) = (cpu_us() - cpu0, t0.elapsed());
    for w in workers {
        w.join().expect("client");
    }
    servers.join().expect("servers");
    driver.stop();
    println!(
        "plex-bench-api: {clients} clients, {size}-byte requests, {:.1} s: {n} requests, {:.0} req/s, {:.1} us CPU per request (both ends, whole process), {} cores",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        cpu as f64 / n.max(1) as f64,
        thread::available_parallelism().map(|p| p.get()).unwrap_or(1)
    );
}
