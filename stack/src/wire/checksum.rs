//! The Internet checksum (RFC 1071), with the IPv4 pseudo-header (RFC 9293 section 3.1).

use std::net::Ipv4Addr;

/// Ones'-complement sum of `data` as big-endian 16-bit words, folded to 16 bits (callers add
/// such sums and fold again: folding keeps the value modulo 0xffff, and zero only for zero).
/// An odd trailing byte is padded with zero, as RFC 1071 requires.
///
/// Fast path: native-endian 64-bit words added with carry (a 128-bit accumulator: add and
/// add-with-carry per 8 bytes), two accumulators for instruction-level parallelism, then one
/// fold and a byte swap: the ones'-complement sum is byte-order independent (RFC 1071 2(B)).
/// This runs over every payload byte sent and received.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let word = |w: &[u8]| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) as u128;
    let (mut a, mut b): (u128, u128) = (0, 0);
    let mut pairs = data.chunks_exact(16);
    for p in &mut pairs {
        a += word(&p[..8]);
        b += word(&p[8..]);
    }
    let rest = pairs.remainder();
    let mut t = [0u8; 16];
    t[..rest.len()].copy_from_slice(rest);
    a += word(&t[..8]);
    b += word(&t[8..]);
    let s = a + b;
    // 128 -> 64 -> 16 bits, end-around carries.
    let (lo, carry) = (s as u64).overflowing_add((s >> 64) as u64);
    let acc = (lo >> 32) + (lo & 0xffff_ffff) + carry as u64;
    u16::from_be(fold(acc)) as u64
}

/// Fold a 64-bit accumulator to 16 bits (end-around carry).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum of `data`: folded and inverted.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Sum of the IPv4 pseudo-header for an upper-layer protocol.
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u64 {
    // Each address is two big-endian 16-bit words (plain arithmetic: no buffer to sum).
    let (s, d) = (src.to_bits() as u64, dst.to_bits() as u64);
    (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + protocol as u64 + length as u64
}

/// True when `data` (with its checksum field in place) plus the pseudo-header verifies.
#[inline]
pub fn verify_with_pseudo(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, data: &[u8]) -> bool {
    if data.len() > u16::MAX as usize {
        return false;
    }
    fold(pseudo_header(src, dst, protocol, data.len() as u16) + sum(data)) == 0xffff
}

/// The checksum to store in a segment whose checksum field is zero.
#[inline]
pub fn compute_with_pseudo(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, data: &[u8]) -> u16 {
    !fold(pseudo_header(src, dst, protocol, data.len() as u16) + sum(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn pseudo_header_sums_the_address_words() {
        let (src, dst) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 255, 254));
        let mut b = Vec::new();
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&[0, 6, 0x05, 0xdc]);
        assert_eq!(fold(pseudo_header(src, dst, 6, 1500)), fold(sum(&b)));
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn random_buffers_and_offsets_match_the_naive_sum() {
        let mut rng = crate::rand::Rng::new(3);
        let mut data = vec![0u8; 3000];
        rng.fill(&mut data);
        for _ in 0..2000 {
            let start = rng.below(100) as usize;
            let len = rng.below(2900) as usize;
            let d = &data[start..start + len];
            let naive = d.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64).sum::<u64>();
            assert_eq!(fold(sum(d)), fold(naive), "start {start} len {len}");
            // Sums combine like the unfolded ones (pseudo-header + segment).
            assert_eq!(fold(sum(&d[..len / 2 * 2]) + sum(&d[len / 2 * 2..])), fold(naive));
        }
        assert_eq!(sum(&[]), 0);
        assert_eq!(fold(sum(&[0xff, 0xff])), 0xffff);
    }

    #[test]
    fn long_buffers_match_the_naive_sum() {
        let data: Vec<u8> = (0..1500u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0usize, 1, 2, 7, 8, 9, 63, 64, 65, 1499, 1500] {
            let naive = data[..len]
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
                .sum::<u64>();
            assert_eq!(fold(sum(&data[..len])), fold(naive), "len {len}");
        }
    }
}
