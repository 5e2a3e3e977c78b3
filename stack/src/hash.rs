//! A fast deterministic hasher for the stack's maps (see [`crate::Map`]).
//!
//! Each word written is xored into the state, which is then multiplied by an odd constant
//! (multiplication moves every input bit into the higher bits); `finish` folds the high half
//! into the low half and multiplies again, so both the low bits (the bucket index) and the top
//! bits (the table's tag byte) depend on every input bit.

use std::hash::Hasher;

const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// Word-at-a-time multiply-xor hasher. Deterministic: no per-process key.
#[derive(Debug, Default, Clone, Copy)]
pub struct WordHasher {
    h: u64,
}

impl WordHasher {
    #[inline]
    fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(K);
    }
}

impl Hasher for WordHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.word(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.word(v as u64);
    }
    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.word(v as u64);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.word(v as u64);
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.word(v);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.word(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        let x = (self.h ^ (self.h >> 32)).wrapping_mul(K);
        x ^ (x >> 29)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn h<T: std::hash::Hash + ?Sized>(v: &T) -> u64 {
        BuildHasherDefault::<WordHasher>::default().hash_one(v)
    }

    #[test]
    fn deterministic_and_sensitive_to_every_field() {
        let a = (SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 7), SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000));
        assert_eq!(h(&a), h(&a));
        let mut b = a;
        b.1.set_port(40001);
        assert_ne!(h(&a), h(&b));
        let mut c = a;
        c.0.set_ip(Ipv4Addr::new(198, 18, 0, 3));
        assert_ne!(h(&a), h(&c));
        assert_ne!(h(&[1u8, 2][..]), h(&[1u8, 2, 0][..]));
    }

    #[test]
    fn consecutive_ports_spread_over_buckets_and_tags() {
        // 4096 connections differing only in the remote port: the low 12 bits (a bucket index
        // of a 4096-slot table) and the top 7 bits (the tag) must both be well spread.
        let mut low = std::collections::HashSet::new();
        let mut top = std::collections::HashSet::new();
        for port in 0..4096u16 {
            let t = (SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7), SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 9), 30000 + port));
            let v = h(&t);
            low.insert(v & 0xfff);
            top.insert(v >> 57);
        }
        assert!(low.len() > 2400, "{} distinct bucket indexes of 4096", low.len());
        assert_eq!(top.len(), 128);
    }
}
