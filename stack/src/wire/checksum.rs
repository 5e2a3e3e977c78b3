//! The Internet checksum (RFC 1071), with the IPv4 pseudo-header (RFC 9293 section 3.1).

use std::net::Ipv4Addr;

/// Ones'-complement sum of `data` as big-endian 16-bit words, not yet folded or inverted.
/// An odd trailing byte is padded with zero, as RFC 1071 requires.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let hi = u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
        let lo = u32::from_be_bytes([c[4], c[5], c[6], c[7]]) as u64;
        acc += hi + lo;
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u16::from_be_bytes([rest[0], rest[1]]) as u64;
        rest = &rest[2..];
    }
    if let [b] = rest {
        acc += (*b as u64) << 8;
    }
    acc
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
    sum(&src.octets()) + sum(&dst.octets()) + protocol as u64 + length as u64
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
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
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
