//! # plex benchmark programs
//!
//! Benchmarks are programs that print figures, never timed tests (the machine is shared and
//! noisy; compare ratios measured in the same run).
//!
//! - `plex-bench-core`: the TCP/IP core alone, two stacks joined in memory: bulk segments per
//!   second and ping-pong round trips per second, with the cost per segment in nanoseconds.

// Benchmarks measure wall-clock time: the sans-IO rule is for stack and coupling.
#![allow(clippy::disallowed_methods)]

use std::time::Instant as WallClock;

use stack::iface::Stack;
use stack::time::Instant;

/// Wall-clock time as the core's `Instant` (benchmarks may read the clock; the core may not).
pub struct Clock {
    start: WallClock,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { start: WallClock::now() }
    }
}

impl Clock {
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as u64)
    }
}

/// Move every pending frame from `a` to `b` and back until both are quiet. Returns frames moved.
pub fn exchange(a: &mut Stack, b: &mut Stack, now: Instant, buf: &mut [u8]) -> u64 {
    let mut moved = 0;
    loop {
        let mut any = false;
        while let Some(n) = a.poll_transmit(now, buf) {
            b.receive(now, &buf[..n]);
            moved += 1;
            any = true;
        }
        while let Some(n) = b.poll_transmit(now, buf) {
            a.receive(now, &buf[..n]);
            moved += 1;
            any = true;
        }
        if !any {
            return moved;
        }
    }
}

/// Move every pending frame from `from` to `to` (one direction, one pass). Returns frames moved.
pub fn deliver(from: &mut Stack, to: &mut Stack, now: Instant, buf: &mut [u8]) -> u64 {
    let mut moved = 0;
    while let Some(n) = from.poll_transmit(now, buf) {
        to.receive(now, &buf[..n]);
        moved += 1;
    }
    moved
}

/// The one-line round-trip summary `scripts/bench.sh` parses, from nanosecond samples.
pub fn pingpong_summary(hist: &hdrhistogram::Histogram<u64>, size: usize) -> String {
    let us = |ns: u64| ns as f64 / 1000.0;
    format!(
        "pingpong: {} round trips of {size} bytes: p50 {:.1} us p90 {:.1} us p99 {:.1} us p99.9 {:.1} us max {:.1} us mean {:.1} us",
        hist.len(),
        us(hist.value_at_quantile(0.5)),
        us(hist.value_at_quantile(0.9)),
        us(hist.value_at_quantile(0.99)),
        us(hist.value_at_quantile(0.999)),
        us(hist.max()),
        hist.mean() / 1000.0
    )
}

/// Write HdrHistogram's percentile distribution (`.hgrm`, values in microseconds) of
/// nanosecond samples.
pub fn write_hgrm(path: &str, hist: &hdrhistogram::Histogram<u64>) -> std::io::Result<()> {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in hist.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { "inf".into() };
        let value = v.value_iterated_to() as f64 / 1000.0;
        out.push_str(&format!("{value:12.3} {q:2.12} {:10} {inv:>14}\n", v.count_since_last_iteration()));
    }
    std::fs::write(path, out)
}

/// Frames built byte by byte for the attack and load tools (plex-flood, the core bench's SYN
/// flood): Ethernet + IPv4 with right checksums, then TCP (Linux's SYN options), UDP, ICMP or
/// ARP. Mutations are the caller's.
pub mod frames {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use stack::wire::{checksum, MacAddr};

    /// A frame under construction: Ethernet + IPv4 headers written by `ip`, then a transport.
    pub struct Builder<'a> {
        pub src_mac: MacAddr,
        pub dst_mac: MacAddr,
        pub buf: &'a mut [u8],
    }

    impl Builder<'_> {
        pub fn eth(&mut self, ethertype: u16) {
            self.buf[..6].copy_from_slice(&self.dst_mac.0);
            self.buf[6..12].copy_from_slice(&self.src_mac.0);
            self.buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
        }

        /// IPv4 header at 14; returns the header length. `frag` is the flags|offset word.
        pub fn ip(&mut self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: usize, ident: u16, frag: u16) -> usize {
            self.eth(0x0800);
            let total = (20 + payload) as u16;
            let h = &mut self.buf[14..34];
            h[0] = 0x45;
            h[1] = 0;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[4..6].copy_from_slice(&ident.to_be_bytes());
            h[6..8].copy_from_slice(&frag.to_be_bytes());
            h[8] = 64;
            h[9] = proto;
            h[10..12].fill(0);
            h[12..16].copy_from_slice(&src.octets());
            h[16..20].copy_from_slice(&dst.octets());
            let c = checksum::checksum(&self.buf[14..34]);
            self.buf[24..26].copy_from_slice(&c.to_be_bytes());
            20
        }

        /// A TCP segment with Linux's SYN options when `syn`; returns the frame length.
        #[allow(clippy::too_many_arguments)]
        pub fn tcp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ack: u32, flags: u8, payload: &[u8], ident: u16, ts: u32) -> usize {
            let opts: &[u8] = if flags & 0x02 != 0 {
                // MSS 1460, SACK permitted, timestamps, NOP, window scale 7 (Linux's SYN: 20 bytes).
                &[2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7]
            } else {
                &[]
            };
            let hl = 20 + opts.len();
            let tl = hl + payload.len();
            self.ip(*src.ip(), *dst.ip(), 6, tl, ident, 0x4000);
            let t = &mut self.buf[34..34 + tl];
            t[0..2].copy_from_slice(&src.port().to_be_bytes());
            t[2..4].copy_from_slice(&dst.port().to_be_bytes());
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            t[8..12].copy_from_slice(&ack.to_be_bytes());
            t[12] = ((hl / 4) as u8) << 4;
            t[13] = flags;
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            t[16..20].fill(0);
            t[20..hl].copy_from_slice(opts);
            if flags & 0x02 != 0 {
                t[28..32].copy_from_slice(&ts.to_be_bytes());
            }
            t[hl..].copy_from_slice(payload);
            let c = checksum::compute_with_pseudo(*src.ip(), *dst.ip(), 6, &self.buf[34..34 + tl]);
            self.buf[50..52].copy_from_slice(&c.to_be_bytes());
            34 + tl
        }

        pub fn udp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], ident: u16) -> usize {
            let ul = 8 + payload.len();
            self.ip(*src.ip(), *dst.ip(), 17, ul, ident, 0);
            let u = &mut self.buf[34..34 + ul];
            u[0..2].copy_from_slice(&src.port().to_be_bytes());
            u[2..4].copy_from_slice(&dst.port().to_be_bytes());
            u[4..6].copy_from_slice(&(ul as u16).to_be_bytes());
            u[6..8].fill(0);
            u[8..].copy_from_slice(payload);
            let c = checksum::compute_with_pseudo(*src.ip(), *dst.ip(), 17, &self.buf[34..34 + ul]);
            self.buf[40..42].copy_from_slice(&c.to_be_bytes());
            34 + ul
        }

        /// ICMP message (type, code, rest-of-header word, body).
        #[allow(clippy::too_many_arguments)]
        pub fn icmp(&mut self, src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, word: u32, body: &[u8], ident: u16) -> usize {
            let il = 8 + body.len();
            self.ip(src, dst, 1, il, ident, 0);
            let m = &mut self.buf[34..34 + il];
            m[0] = ty;
            m[1] = code;
            m[2..4].fill(0);
            m[4..8].copy_from_slice(&word.to_be_bytes());
            m[8..].copy_from_slice(body);
            let c = checksum::checksum(&self.buf[34..34 + il]);
            self.buf[36..38].copy_from_slice(&c.to_be_bytes());
            34 + il
        }

        pub fn arp(&mut self, op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) -> usize {
            self.eth(0x0806);
            let a = &mut self.buf[14..42];
            a[0..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, (op >> 8) as u8, op as u8]);
            a[8..14].copy_from_slice(&sha.0);
            a[14..18].copy_from_slice(&spa.octets());
            a[18..24].copy_from_slice(&tha.0);
            a[24..28].copy_from_slice(&tpa.octets());
            60
        }
    }
}
