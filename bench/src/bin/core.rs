//! Core microbenchmark: plex's TCP/IP stack alone, two instances joined in memory (no kernel,
//! no AF_XDP). Prints bulk-transfer segments per second and ping-pong round trips per second,
//! with the per-segment cost in nanoseconds.
//!
//! With `--syns N`, a SYN flood: N SYNs from spoofed sources against a listener whose SYN queue
//! is full, each answered with a cookie SYN-ACK: nanoseconds per SYN (receive and transmit).
//!
//! Usage: plex-bench-core [--mib N] [--round-trips N] [--idle N,N] [--syns N]  (0 skips a part)

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Instant as WallClock;

use bench::{deliver, exchange, Clock};
use stack::iface::{Stack, StackConfig};
use stack::tcp;
use stack::wire::MacAddr;

fn stack(last: u8, ip: Ipv4Addr, tcp: &tcp::Config) -> Stack {
    let mut cfg = StackConfig::new(MacAddr([2, 0, 0, 0, 0, last]));
    cfg.tcp = tcp.clone();
    cfg.seed = last as u64;
    let mut s = Stack::new(cfg);
    s.add_address(ip, 24, false);
    s
}

fn parse_args() -> Result<(u64, u64, Vec<usize>, u64), String> {
    let mut syns = 0u64;
    let mut mib = 512u64;
    let mut rts = 200_000u64;
    let mut idle = vec![10_000usize, 100_000];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = args.next().ok_or_else(|| format!("{name} needs a number"))?;
            v.parse().map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match a.as_str() {
            "--mib" => mib = value("--mib")?,
            "--round-trips" => rts = value("--round-trips")?,
            "--syns" => syns = value("--syns")?,
            "--idle" => {
                let v = args.next().ok_or("--idle needs a list of counts")?;
                idle = v
                    .split(',')
                    .map(|n| n.parse::<usize>().map_err(|_| format!("--idle: {n:?} is not a number")))
                    .collect::<Result<Vec<_>, _>>()?;
                idle.retain(|&n| n > 0);
            }
            "-h" | "--help" => {
                println!("usage: plex-bench-core [--mib N] [--round-trips N] [--idle N,N] [--syns N]  (0 skips a part)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok((mib, rts, idle, syns))
}

fn main() -> ExitCode {
    let (mib, rts, idle, syns) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("plex-bench-core: {e}");
            return ExitCode::from(2);
        }
    };
    let a_ip = Ipv4Addr::new(198, 18, 0, 10);
    let b_ip = Ipv4Addr::new(198, 18, 0, 1);
    let mut buf = vec![0u8; 2048];
    let clock = Clock::default();
    if syns > 0 {
        syn_flood(syns);
    }

    if mib > 0 {
        // Bulk: b sends `mib` MiB to a.
        let tcp_cfg = tcp::Config { send_buffer: 1 << 20, recv_buffer: 1 << 20, ..tcp::Config::default() };
        let (mut a, mut b) = (stack(10, a_ip, &tcp_cfg), stack(1, b_ip, &tcp_cfg));
        let l = a.tcp_listen(clock.now(), SocketAddrV4::new(a_ip, 5001), 8).expect("listen");
        let c = b.tcp_connect(clock.now(), None, SocketAddrV4::new(a_ip, 5001)).expect("connect");
        exchange(&mut a, &mut b, clock.now(), &mut buf);
        let s = a.tcp_accept(l).expect("accepted");
        let chunk = vec![0x5au8; 256 * 1024];
        let mut sink = vec![0u8; 256 * 1024];
        let total = mib << 20;
        let (mut sent, mut got, mut frames) = (0u64, 0u64, 0u64);
        let t0 = WallClock::now();
        while got < total {
            let now = clock.now();
            if sent < total {
                let n = ((total - sent) as usize).min(chunk.len());
                sent += b.tcp_send(now, c, &chunk[..n]).unwrap_or(0) as u64;
            }
            frames += exchange(&mut a, &mut b, now, &mut buf);
            while let Ok(n) = a.tcp_recv(now, s, &mut sink) {
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            frames += exchange(&mut a, &mut b, now, &mut buf);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        let bulk = t0.elapsed().as_secs_f64();
        let segs = b.tcp(c).map(|c| c.counters.segs_out).unwrap_or(0) + a.tcp(s).map(|c| c.counters.segs_out).unwrap_or(0);
        println!("bulk transfer: {mib} MiB in {bulk:.3} s through two in-memory stacks");
        println!("  {:.0} segments/s ({} segments incl. ACKs, {} frames), {:.0} ns per segment, {:.2} Gbit/s of payload",
            segs as f64 / bulk, segs, frames, bulk * 1e9 / segs.max(1) as f64, got as f64 * 8.0 / bulk / 1e9);
    }
    if rts > 0 {
        // Ping-pong: 64-byte request and response, TCP_NODELAY, one connection. Like the echo
        // server on a poll thread, the server answers before it transmits, so its ACK rides on
        // the response (two frames per round trip).
        let tcp_cfg = tcp::Config { nodelay: true, ..tcp::Config::default() };
        let (mut a, mut b) = (stack(10, a_ip, &tcp_cfg), stack(1, b_ip, &tcp_cfg));
        let l = a.tcp_listen(clock.now(), SocketAddrV4::new(a_ip, 5002), 8).expect("listen");
        let c = b.tcp_connect(clock.now(), None, SocketAddrV4::new(a_ip, 5002)).expect("connect");
        exchange(&mut a, &mut b, clock.now(), &mut buf);
        let s = a.tcp_accept(l).expect("accepted");
        let msg = [7u8; 64];
        let mut rbuf = [0u8; 64];
        let t0 = WallClock::now();
        let mut frames = 0u64;
        for _ in 0..rts {
            let now = clock.now();
            b.tcp_send(now, c, &msg).expect("send");
            frames += deliver(&mut b, &mut a, now, &mut buf);
            let n = a.tcp_recv(now, s, &mut rbuf).expect("request");
            a.tcp_send(now, s, &rbuf[..n]).expect("reply");
            frames += deliver(&mut a, &mut b, now, &mut buf);
            b.tcp_recv(now, c, &mut rbuf).expect("response");
            frames += exchange(&mut a, &mut b, now, &mut buf);
        }
        let pp = t0.elapsed().as_secs_f64();
        println!("ping-pong: {rts} round trips of 64 bytes in {pp:.3} s");
        println!("  {:.0} round trips/s, {:.0} ns per round trip, {:.0} ns per frame ({} frames)",
            rts as f64 / pp, pp * 1e9 / rts as f64, pp * 1e9 / frames.max(1) as f64, frames);
    }
    for n in idle {
        idle_connections(n);
    }
    ExitCode::SUCCESS
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Open `n` idle connections between two in-memory stacks; report the memory per connection
/// (each connection has an end in each stack).
fn idle_connections(n: usize) {
    let a_ip = Ipv4Addr::new(198, 18, 0, 10);
    let cfg = tcp::Config::default();
    let (mut a, mut b) = (stack(10, a_ip, &cfg), stack(1, Ipv4Addr::new(198, 18, 0, 1), &cfg));
    // Ephemeral ports run out at ~28 k per source address: give the client several.
    let sources: Vec<Ipv4Addr> = (0..(n / 20_000 + 1) as u8).map(|i| Ipv4Addr::new(198, 18, 0, 100 + i)).collect();
    for ip in &sources {
        b.add_address(*ip, 24, false);
    }
    let clock = Clock::default();
    let mut buf = vec![0u8; 2048];
    let l = a.tcp_listen(clock.now(), SocketAddrV4::new(a_ip, 5003), n).expect("listen");
    exchange(&mut a, &mut b, clock.now(), &mut buf);
    let before = rss();
    let t0 = WallClock::now();
    let mut accepted = 0;
    for i in 0..n {
        let now = clock.now();
        let src = sources[i / 20_000];
        b.tcp_connect(now, Some(src), SocketAddrV4::new(a_ip, 5003)).expect("connect");
        if i % 256 == 255 || i == n - 1 {
            exchange(&mut a, &mut b, now, &mut buf);
            while a.tcp_accept(l).is_ok() {
                accepted += 1;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let grown = rss().saturating_sub(before);
    println!(
        "idle connections: {accepted} of {n} established in {secs:.2} s ({:.0} handshakes/s); RSS +{:.1} MiB: {} bytes per connection end (send/receive buffers are allocated on first data)",
        accepted as f64 / secs,
        grown as f64 / (1 << 20) as f64,
        grown / (2 * accepted.max(1)) as u64
    );
}

/// `n` SYNs from spoofed sources (distinct 4-tuples) into a listener with a full SYN queue:
/// every one is answered with a cookie SYN-ACK. Reports the cost per SYN.
fn syn_flood(n: u64) {
    use bench::frames::Builder;
    let ip = Ipv4Addr::new(198, 18, 0, 10);
    let mut a = stack(10, ip, &tcp::Config::default());
    let clock = Clock::default();
    let _l = a.tcp_listen(clock.now(), SocketAddrV4::new(ip, 80), 128).expect("listen");
    // 64 distinct frames, cycled with a changing source port.
    let mut frames = vec![[0u8; 128]; 64];
    let mut lens = [0usize; 64];
    for (i, f) in frames.iter_mut().enumerate() {
        let mut b = Builder { src_mac: MacAddr([2, 0, 0, 0, 0, 1]), dst_mac: MacAddr([2, 0, 0, 0, 0, 10]), buf: &mut f[..] };
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 128 + i as u8), 1024 + i as u16);
        lens[i] = b.tcp(src, SocketAddrV4::new(ip, 80), 0x9000_0000 + i as u32, 0, 0x02, &[], i as u16, 1000);
    }
    let mut out = vec![0u8; 2048];
    let (mut answered, t0) = (0u64, WallClock::now());
    for k in 0..n {
        let now = clock.now();
        let i = (k % 64) as usize;
        // A new source port (and so a new 4-tuple and cookie) every round of the 64 frames;
        // the checksum is recomputed by the builder, as a real flood's frames differ.
        if i == 0 && k > 0 {
            for (j, f) in frames.iter_mut().enumerate() {
                let mut b = Builder { src_mac: MacAddr([2, 0, 0, 0, 0, 1]), dst_mac: MacAddr([2, 0, 0, 0, 0, 10]), buf: &mut f[..] };
                let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 128 + j as u8), 1024 + ((k / 64) % 60_000) as u16);
                lens[j] = b.tcp(src, SocketAddrV4::new(ip, 80), 0x9000_0000 + k as u32, 0, 0x02, &[], j as u16, 1000);
            }
        }
        a.receive(now, &frames[i][..lens[i]]);
        while a.poll_transmit(now, &mut out).is_some() {
            answered += 1;
        }
        if i == 63 {
            a.handle_timeout(now);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("SYN flood: {n} spoofed SYNs in {secs:.3} s, {answered} frames answered");
    println!("  {:.0} SYNs/s, {:.0} ns per SYN (incl. rebuilding the frames)", n as f64 / secs, secs * 1e9 / n as f64);
}
