//! The floor this machine allows: raw AF_XDP frame ping-pong with no TCP at all. `reflect`
//! bounces every steered frame back (swapping Ethernet and IPv4 addresses and UDP ports);
//! `ping` sends one IPv4/UDP frame, busy-polls for the reflection, and records the round trip.
//! Both use plex's own steering program and AF_XDP wrapper, busy-polling on a pinned core.
//!
//! Usage:
//!   plex-bench-floor reflect IFACE ADDR [--core N] [--xdp-mode generic|native]
//!   plex-bench-floor ping IFACE ADDR PEER_ADDR PEER_MAC [--count N] [--warmup N] [--size 64] [--core N] [--hgrm FILE]

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Instant;

use poll_loop::xdp::{AttachMode, Steering};
use poll_loop::xsk::{Xsk, XskConfig};
use stack::wire::{checksum, MacAddr};

fn setup(iface: &str, addr: Ipv4Addr, mode: AttachMode) -> Result<(Steering, Xsk, MacAddr), String> {
    let mac: MacAddr = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map_err(|_| format!("no such interface {iface:?}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{e}"))?;
    let steering = Steering::attach(iface, mode).map_err(|e| e.to_string())?;
    steering.add_home(addr, false)?;
    let xsk = Xsk::open(&XskConfig { ifname: iface.to_string(), ..XskConfig::default() }).map_err(|e| e.to_string())?;
    steering.register_xsk(0, xsk.fd()).map_err(|e| e.to_string())?;
    Ok((steering, xsk, mac))
}

/// Swap addresses in place: Ethernet, IPv4 (checksum unchanged by a swap), UDP ports.
fn reflect_in_place(f: &mut [u8]) -> bool {
    if f.len() < 42 || f[12..14] != [0x08, 0x00] || f[23] != 17 {
        return false;
    }
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
    for i in 0..4 {
        f.swap(26 + i, 30 + i);
    }
    f.swap(34, 36);
    f.swap(35, 37);
    true
}

fn reflect(iface: &str, addr: Ipv4Addr, mode: AttachMode) -> Result<(), String> {
    let (_steering, mut xsk, _) = setup(iface, addr, mode)?;
    eprintln!("floor reflector on {iface} {addr}");
    let mut frame = [0u8; 2048];
    loop {
        let mut n = 0usize;
        xsk.rx_batch(1, |f| {
            n = f.len().min(frame.len());
            frame[..n].copy_from_slice(&f[..n]);
        });
        if n > 0 && reflect_in_place(&mut frame[..n]) {
            xsk.tx_batch(1, |buf| {
                buf[..n].copy_from_slice(&frame[..n]);
                Some(n)
            });
        }
        xsk.reap();
    }
}

fn build(buf: &mut [u8], src_mac: MacAddr, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> usize {
    let len = 42 + payload;
    buf[..6].copy_from_slice(&dst_mac.0);
    buf[6..12].copy_from_slice(&src_mac.0);
    buf[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 8 + payload) as u16;
    buf[14..34].copy_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    buf[26..30].copy_from_slice(&src.octets());
    buf[30..34].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&buf[14..34]);
    buf[24..26].copy_from_slice(&c.to_be_bytes());
    let udp_len = (8 + payload) as u16;
    buf[34..42].copy_from_slice(&[0x9c, 0x40, 0x9c, 0x40, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    buf[42..len].fill(0x5a);
    len
}

#[allow(clippy::too_many_arguments)]
fn ping(iface: &str, addr: Ipv4Addr, peer: Ipv4Addr, peer_mac: MacAddr, mode: AttachMode, size: usize, count: u64, warmup: u64, hgrm: Option<String>) -> Result<(), String> {
    let (_steering, mut xsk, mac) = setup(iface, addr, mode)?;
    let mut frame = [0u8; 2048];
    let len = build(&mut frame, mac, peer_mac, addr, peer, size.min(1400));
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut lost = 0u64;
    for i in 0..warmup + count {
        let t = Instant::now();
        xsk.tx_batch(1, |buf| {
            buf[..len].copy_from_slice(&frame[..len]);
            Some(len)
        });
        let mut got = false;
        while !got {
            xsk.rx_batch(1, |f| got = f.len() >= 42 && f[26..30] == peer.octets());
            xsk.reap();
            if t.elapsed().as_millis() > 100 {
                lost += 1;
                break;
            }
        }
        if got && i >= warmup {
            let _ = hist.record(t.elapsed().as_nanos() as u64);
        }
    }
    println!("{} lost {}", bench::pingpong_summary(&hist, size), lost);
    if let Some(path) = hgrm {
        bench::write_hgrm(&path, &hist).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let num = |name: &str, d: u64| opt(name).and_then(|v| v.parse().ok()).unwrap_or(d);
    if let Some(c) = opt("--core").and_then(|v| v.parse().ok()) {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    let mode: AttachMode = match opt("--xdp-mode").unwrap_or_else(|| "generic".into()).parse() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("plex-bench-floor: {e}");
            return ExitCode::from(2);
        }
    };
    let ip = |i: usize| args.get(i).and_then(|a| a.parse::<Ipv4Addr>().ok());
    let r = match (args.first().map(String::as_str), args.get(1)) {
        // The reflector runs until the bench script kills it.
        (Some("reflect"), Some(iface)) if ip(2).is_some() => reflect(iface, ip(2).unwrap_or(Ipv4Addr::UNSPECIFIED), mode),
        (Some("ping"), Some(iface)) if ip(2).is_some() && ip(3).is_some() => {
            match args.get(4).and_then(|m| m.parse::<MacAddr>().ok()) {
                Some(mac) => ping(
                    iface,
                    ip(2).unwrap_or(Ipv4Addr::UNSPECIFIED),
                    ip(3).unwrap_or(Ipv4Addr::UNSPECIFIED),
                    mac,
                    mode,
                    num("--size", 64) as usize,
                    num("--count", 100_000),
                    num("--warmup", 1_000),
                    opt("--hgrm"),
                ),
                None => Err("PEER_MAC must be like 02:00:00:00:00:01".into()),
            }
        }
        _ => {
            eprintln!("usage: plex-bench-floor reflect IFACE ADDR [--core N] | ping IFACE ADDR PEER_ADDR PEER_MAC [--count N] [--warmup N] [--size N] [--core N] [--hgrm FILE]");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex-bench-floor: {e}");
            ExitCode::from(1)
        }
    }
}

