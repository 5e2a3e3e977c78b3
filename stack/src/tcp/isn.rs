//! Initial sequence numbers (RFC 6528) and SYN cookies (RFC 4987 section 3.6).
//!
//! `ISN = M + F(localip, localport, remoteip, remoteport, secretkey)` where M is a 4-microsecond
//! timer and F is SipHash-2-4 keyed with a per-stack secret drawn from the injected RNG.
//!
//! A SYN cookie is the ISN of a SYN-ACK sent without keeping state. Layout (32 bits):
//! `[31..27] minute counter mod 32 | [26..24] MSS index | [23..0] hash(secret, 4-tuple,
//! counter, peer ISN)`. A cookie is valid for the current and the previous minute. The *peer's*
//! window scale and SACK-permitted ride in the low bits of our TSval when the peer uses
//! timestamps (as Linux does, `cookie_init_timestamp`); without timestamps a cookie connection
//! has neither (RFC 4987 3.6: "the server [...] cannot [...] encode [...] all the options").
//!
//! The TSval offset of a passive connection (RFC 7323 5.4 and 7.1: a random offset per
//! connection) is not drawn from the RNG but derived from the 4-tuple with a keyed hash
//! ([`IsnGenerator::ts_offset`], Linux's `tsoff = secure_tcp_ts_off(net, daddr, saddr)`), so
//! the stateless cookie SYN-ACK and the connection its ACK creates use the same clock: the
//! peer's PAWS check (RFC 7323 5.3) sees one monotonic TSval sequence.

use std::net::SocketAddrV4;

use crate::rand::siphash24;
use crate::time::Instant;
use crate::wire::SeqNumber;

/// MSS values a cookie can encode (RFC 4987 suggests a small table; these are Linux's).
pub const COOKIE_MSS: [u16; 8] = [536, 1200, 1300, 1380, 1440, 1452, 1460, 8960];

/// The keyed functions of this module: RFC 6528 ISNs, TSval offsets and SYN cookies. It holds
/// two 128-bit secrets (one for ISNs and TSval offsets, one for cookies) drawn from the
/// injected RNG at creation; `Debug` does not print them.
#[derive(Clone)]
pub struct IsnGenerator {
    secret: [u8; 16],
    cookie_secret: [u8; 16],
}

impl core::fmt::Debug for IsnGenerator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IsnGenerator { .. }")
    }
}

fn tuple_bytes(local: SocketAddrV4, remote: SocketAddrV4, extra: &[u8]) -> ([u8; 24], usize) {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&local.ip().octets());
    b[4..6].copy_from_slice(&local.port().to_be_bytes());
    b[6..10].copy_from_slice(&remote.ip().octets());
    b[10..12].copy_from_slice(&remote.port().to_be_bytes());
    let n = extra.len().min(12);
    b[12..12 + n].copy_from_slice(&extra[..n]);
    (b, 12 + n)
}

/// What a valid cookie gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieInfo {
    /// The MSS encoded in the cookie: the [`COOKIE_MSS`] entry chosen when the SYN-ACK was
    /// sent, the largest not above the MSS the peer's SYN announced.
    pub mss: u16,
}

impl IsnGenerator {
    /// Draw fresh secrets from `rng`. A cookie made by one generator does not check with
    /// another, and TSval offsets differ between generators.
    pub fn new(rng: &mut crate::rand::Rng) -> IsnGenerator {
        let mut secret = [0u8; 16];
        let mut cookie_secret = [0u8; 16];
        rng.fill(&mut secret);
        rng.fill(&mut cookie_secret);
        IsnGenerator { secret, cookie_secret }
    }

    /// The TSval offset of a connection on this 4-tuple (RFC 7323 5.4: TSval = clock +
    /// per-connection offset; keyed so that it cannot be predicted from outside, and the same
    /// for the cookie SYN-ACK and the connection it completes).
    pub fn ts_offset(&self, local: SocketAddrV4, remote: SocketAddrV4) -> u32 {
        let (b, n) = tuple_bytes(local, remote, b"tsoff");
        (siphash24(&self.secret, &b[..n]) >> 32) as u32
    }

    /// The ISN for a new connection on this 4-tuple (RFC 6528 3): a 4-microsecond clock
    /// (`now`, wrapping every ~4.8 hours) plus a keyed SipHash of the 4-tuple, so that
    /// successive connections on one tuple get increasing ISNs and another tuple's cannot be
    /// guessed.
    pub fn isn(&self, now: Instant, local: SocketAddrV4, remote: SocketAddrV4) -> SeqNumber {
        let (b, n) = tuple_bytes(local, remote, &[]);
        let f = siphash24(&self.secret, &b[..n]) as u32;
        let m = (now.total_micros() / 4) as u32;
        SeqNumber(m.wrapping_add(f))
    }

    fn cookie_hash(
        &self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        counter: u32,
        peer_isn: SeqNumber,
    ) -> u32 {
        let mut extra = [0u8; 8];
        extra[..4].copy_from_slice(&counter.to_be_bytes());
        extra[4..].copy_from_slice(&peer_isn.0.to_be_bytes());
        let (b, n) = tuple_bytes(local, remote, &extra);
        (siphash24(&self.cookie_secret, &b[..n]) as u32) & 0x00ff_ffff
    }

    /// The cookie to use as our ISN, and the MSS it encodes (the largest table entry not above
    /// the peer's MSS).
    pub fn make_cookie(
        &self,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        peer_isn: SeqNumber,
        peer_mss: u16,
    ) -> (SeqNumber, u16) {
        let counter = (now.total_micros() / 60_000_000) as u32;
        let idx = COOKIE_MSS.iter().rposition(|&m| m <= peer_mss).unwrap_or(0);
        let hash = self.cookie_hash(local, remote, counter, peer_isn);
        let cookie = ((counter & 0x1f) << 27) | ((idx as u32) << 24) | hash;
        (SeqNumber(cookie), COOKIE_MSS[idx])
    }

    /// Check the cookie carried by an ACK (`ack - 1`) for a connection whose peer ISN was
    /// `peer_isn` (`seq - 1`).
    pub fn check_cookie(
        &self,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        peer_isn: SeqNumber,
        cookie: SeqNumber,
    ) -> Option<CookieInfo> {
        let c = cookie.0;
        let now_counter = (now.total_micros() / 60_000_000) as u32;
        let idx = ((c >> 24) & 0x7) as usize;
        for age in 0..2u32 {
            let counter = now_counter.wrapping_sub(age);
            if (counter & 0x1f) != (c >> 27) {
                continue;
            }
            if self.cookie_hash(local, remote, counter, peer_isn) == (c & 0x00ff_ffff) {
                return Some(CookieInfo { mss: COOKIE_MSS[idx] });
            }
        }
        None
    }
}

/// Options a cookie connection keeps in the low 5 bits of our TSval: the *peer's* window
/// scale (4 bits, 15 = none; RFC 7323 2.3: a shift above 14 is used as 14) and SACK-permitted
/// (1 bit).
///
/// The result is never above `tsval` (Linux: `if (after(ts, ts_now)) ts -= (1 << TSBITS)`):
/// the connection's next TSval is `tsval` or later, and RFC 7323 5.4 wants our TSvals
/// monotonically non-decreasing, or the peer's PAWS test (5.3) drops our segments.
pub fn encode_ts_options(tsval: u32, wscale: Option<u8>, sack: bool) -> u32 {
    let ws = wscale.map(|w| w.min(14) as u32).unwrap_or(15);
    let encoded = (tsval & !0x1f) | (ws << 1) | sack as u32;
    if (encoded.wrapping_sub(tsval) as i32) > 0 {
        encoded.wrapping_sub(0x20)
    } else {
        encoded
    }
}

/// Read back what [`encode_ts_options`] stored, from the TSecr of the ACK completing a cookie
/// handshake (our TSval echoed): the peer's window scale (`None` when it sent none) and
/// whether it permitted SACK. Meaningful only when that ACK carries timestamps.
pub fn decode_ts_options(tsecr: u32) -> (Option<u8>, bool) {
    let ws = ((tsecr >> 1) & 0xf) as u8;
    (if ws == 15 { None } else { Some(ws) }, tsecr & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rand::Rng;
    use std::net::Ipv4Addr;

    fn tuple() -> (SocketAddrV4, SocketAddrV4) {
        (
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 80),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000),
        )
    }

    #[test]
    fn isn_moves_with_time_and_depends_on_tuple() {
        let g = IsnGenerator::new(&mut Rng::new(1));
        let (l, r) = tuple();
        let a = g.isn(Instant::from_micros(0), l, r);
        let b = g.isn(Instant::from_micros(400), l, r);
        assert_eq!(b.0.wrapping_sub(a.0), 100, "M ticks every 4 us");
        let r2 = SocketAddrV4::new(*r.ip(), 40001);
        assert_ne!(g.isn(Instant::from_micros(0), l, r2), a);
    }

    #[test]
    fn cookie_round_trip_and_expiry() {
        let g = IsnGenerator::new(&mut Rng::new(2));
        let (l, r) = tuple();
        let t0 = Instant::from_secs(1000);
        let (c, mss) = g.make_cookie(t0, l, r, SeqNumber(777), 1460);
        assert_eq!(mss, 1460);
        assert_eq!(g.check_cookie(t0, l, r, SeqNumber(777), c), Some(CookieInfo { mss: 1460 }));
        let later = Instant::from_secs(1000 + 61);
        assert!(g.check_cookie(later, l, r, SeqNumber(777), c).is_some(), "previous minute ok");
        let too_late = Instant::from_secs(1000 + 181);
        assert!(g.check_cookie(too_late, l, r, SeqNumber(777), c).is_none());
        assert!(g.check_cookie(t0, l, r, SeqNumber(778), c).is_none(), "bound to the peer ISN");
        assert!(g.check_cookie(t0, l, r, SeqNumber(777), c + 1).is_none());
        let (_, small) = g.make_cookie(t0, l, r, SeqNumber(1), 1000);
        assert_eq!(small, 536);
    }

    #[test]
    fn ts_option_bits() {
        let t = encode_ts_options(0xffff_ffff, Some(7), true);
        assert_eq!(decode_ts_options(t), (Some(7), true));
        let t = encode_ts_options(0x1234_5678, None, false);
        assert_eq!(decode_ts_options(t), (None, false));
        assert_eq!(decode_ts_options(encode_ts_options(5, Some(15), false)), (Some(14), false));
    }

    #[test]
    fn encoded_tsval_never_runs_ahead_of_the_clock() {
        // Low bits 0b00000 with options 0b11101 would be 29 ms in the future.
        for tsval in [0x1000_0000u32, 0x1000_001f, 0xffff_ffe0, 0, 3] {
            for ws in [None, Some(0), Some(10), Some(14)] {
                for sack in [false, true] {
                    let e = encode_ts_options(tsval, ws, sack);
                    let behind = tsval.wrapping_sub(e);
                    assert!(behind < 0x20, "{tsval:#x} -> {e:#x}");
                    assert_eq!(decode_ts_options(e), (ws, sack));
                }
            }
        }
    }

    #[test]
    fn ts_offset_is_keyed_per_tuple_and_stable() {
        let g = IsnGenerator::new(&mut Rng::new(3));
        let (l, r) = tuple();
        assert_eq!(g.ts_offset(l, r), g.ts_offset(l, r));
        assert_ne!(g.ts_offset(l, r), g.ts_offset(l, SocketAddrV4::new(*r.ip(), 40001)));
        assert_ne!(g.ts_offset(l, r), IsnGenerator::new(&mut Rng::new(4)).ts_offset(l, r));
    }
}
