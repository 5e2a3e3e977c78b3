//! IPv4 headers (RFC 791). Options are skipped. [`Ipv4Repr::parse`] refuses fragments;
//! [`Ipv4Repr::parse_fragment`] accepts them and says where the fragment sits, for the
//! interface's reassembly (`iface::reassembly`). plex sets DF on TCP and relies on path MTU
//! discovery (RFC 1191); ICMP echo replies and UDP datagrams larger than the MTU leave as
//! fragments written by [`Ipv4Repr::emit_fragment`].

use std::net::Ipv4Addr;

use super::checksum;
use super::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The Protocol field of the IPv4 header (RFC 791 3.1; numbers assigned by IANA).
pub enum IpProtocol {
    /// 1, ICMP.
    Icmp,
    /// 6, TCP.
    Tcp,
    /// 17, UDP.
    Udp,
    /// Any other protocol number, kept as read.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(v: u8) -> Self {
        match v {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            v => IpProtocol::Unknown(v),
        }
    }
}
impl From<IpProtocol> for u8 {
    fn from(p: IpProtocol) -> u8 {
        match p {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Unknown(v) => v,
        }
    }
}

/// Length of an IPv4 header without options (IHL 5).
pub const HEADER_LEN: usize = 20;

/// A view of an IPv4 packet. After `new_checked`: the header (with options) and the
/// `total_len` bytes it announces are inside the buffer, which may be longer (Ethernet pads
/// short frames).
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// A view over `buffer` without a length check: accessors may panic or read garbage (for
    /// `emit` into a buffer the caller sized).
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }
    /// A view over `buffer` whose header and announced `total_len` it holds; errors as
    /// [`Ipv4Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Ipv4Packet { buffer };
        p.check_len()?;
        Ok(p)
    }
    /// [`Error::Truncated`] when the buffer is shorter than 20 bytes, than the IHL or than Total
    /// Length; [`Error::BadLength`] when IHL is below 5 or Total Length below the header.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(Error::BadLength);
        }
        if hl > len {
            return Err(Error::Truncated);
        }
        let total = self.total_len() as usize;
        if total < hl {
            return Err(Error::BadLength);
        }
        if total > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }
    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Version (4 for IPv4; checked by [`Ipv4Repr::parse`], not here).
    pub fn version(&self) -> u8 {
        self.b()[0] >> 4
    }
    /// Header length in bytes (IHL times 4: 20 to 60, options included).
    pub fn header_len(&self) -> usize {
        ((self.b()[0] & 0x0f) as usize) * 4
    }
    /// The DS field and ECN bits (RFC 2474, RFC 3168), the byte once called Type of Service.
    pub fn dscp_ecn(&self) -> u8 {
        self.b()[1]
    }
    /// Total Length: header plus payload, in bytes (a shorter frame was refused by `check_len`;
    /// Ethernet padding beyond it is not payload).
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }
    /// Identification: which datagram a fragment belongs to (RFC 791 3.1).
    pub fn ident(&self) -> u16 {
        u16::from_be_bytes([self.b()[4], self.b()[5]])
    }
    /// DF, Don't Fragment (flags bit 1).
    pub fn dont_frag(&self) -> bool {
        self.b()[6] & 0x40 != 0
    }
    /// MF, More Fragments (flags bit 2): a later fragment follows.
    pub fn more_frags(&self) -> bool {
        self.b()[6] & 0x20 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (u16::from_be_bytes([self.b()[6], self.b()[7]]) & 0x1fff) * 8
    }
    /// Time to Live: hops left.
    pub fn hop_limit(&self) -> u8 {
        self.b()[8]
    }
    /// The payload's protocol.
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.b()[9])
    }
    /// The header checksum field as sent.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[10], self.b()[11]])
    }
    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    /// Whether the header checksum (RFC 791 3.1, over the header only, options included) verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.b()[..self.header_len()]) == 0
    }
    /// The payload: from the end of the header to `total_len` (padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// The payload, to write into: from the end of the header to Total Length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len() as usize);
        &mut self.buffer.as_mut()[h..t]
    }
    /// Compute and write the header checksum over the header as it stands (set every other field
    /// first).
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buffer.as_mut();
        b[10] = 0;
        b[11] = 0;
        let c = checksum::checksum(&b[..hl]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// Where a fragment sits in its datagram (RFC 791 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Fragment {
    /// Fragment Offset, in bytes (the field counts 8-octet units).
    pub offset: usize,
    /// More Fragments.
    pub more_frags: bool,
}

/// Largest payload of a (reassembled) datagram: the Total Length field is 16 bits.
pub const MAX_PAYLOAD: usize = u16::MAX as usize - HEADER_LEN;

/// An IPv4 header as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// The source address.
    pub src_addr: Ipv4Addr,
    /// The destination address.
    pub dst_addr: Ipv4Addr,
    /// The payload's protocol.
    pub next_header: IpProtocol,
    /// Payload bytes after the header (Total Length minus header length; of a fragment, its own
    /// part).
    pub payload_len: usize,
    /// Time to Live.
    pub hop_limit: u8,
    /// The DS field and ECN bits, as one byte.
    pub dscp_ecn: u8,
    /// Identification (RFC 791 3.1): only fragments of one datagram share it.
    pub ident: u16,
    /// DF, Don't Fragment: set on TCP, for path MTU discovery (RFC 1191).
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// A whole datagram as a value. Errors: those of [`Ipv4Packet::check_len`],
    /// [`Error::BadVersion`] (version not 4), [`Error::BadChecksum`] (only when `verify_checksum`),
    /// [`Error::Fragment`] (a fragment: see [`Ipv4Repr::parse_fragment`]).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &Ipv4Packet<&T>, verify_checksum: bool) -> Result<Ipv4Repr> {
        match Self::parse_fragment(p, verify_checksum)? {
            (r, None) => Ok(r),
            (_, Some(_)) => Err(Error::Fragment),
        }
    }

    /// Parse a datagram that may be a fragment: `Some` when MF is set or the offset is not
    /// zero. The Repr's `payload_len` is then this fragment's payload.
    pub fn parse_fragment<T: AsRef<[u8]> + ?Sized>(
        p: &Ipv4Packet<&T>,
        verify_checksum: bool,
    ) -> Result<(Ipv4Repr, Option<Ipv4Fragment>)> {
        p.check_len()?;
        if p.version() != 4 {
            return Err(Error::BadVersion);
        }
        if verify_checksum && !p.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        let frag = (p.more_frags() || p.frag_offset() != 0)
            .then(|| Ipv4Fragment { offset: p.frag_offset() as usize, more_frags: p.more_frags() });
        let repr = Ipv4Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: p.total_len() as usize - p.header_len(),
            hop_limit: p.hop_limit(),
            dscp_ecn: p.dscp_ecn(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        };
        Ok((repr, frag))
    }

    /// Bytes of header [`Ipv4Repr::emit`] writes: always [`HEADER_LEN`] (no options).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the 20-byte header (no options) with its checksum; `total_len` covers the payload.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv4Packet<T>) {
        let total = (HEADER_LEN + self.payload_len).min(u16::MAX as usize) as u16;
        let b = p.buffer.as_mut();
        b[0] = 0x45;
        b[1] = self.dscp_ecn;
        b[2..4].copy_from_slice(&total.to_be_bytes());
        b[4..6].copy_from_slice(&self.ident.to_be_bytes());
        b[6] = if self.dont_frag { 0x40 } else { 0 };
        b[7] = 0;
        b[8] = self.hop_limit;
        b[9] = u8::from(self.next_header);
        b[12..16].copy_from_slice(&self.src_addr.octets());
        b[16..20].copy_from_slice(&self.dst_addr.octets());
        p.fill_checksum();
    }

    /// Write the header of one fragment: as [`Ipv4Repr::emit`], with `payload_len` this
    /// fragment's payload, and the offset (a multiple of 8, RFC 791 3.2) and MF of `frag`.
    pub fn emit_fragment<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv4Packet<T>, frag: Ipv4Fragment) {
        self.emit(p);
        let units = ((frag.offset / 8) as u16) & 0x1fff;
        let flags = (if self.dont_frag { 0x4000 } else { 0 }) | (if frag.more_frags { 0x2000 } else { 0 });
        let b = p.buffer.as_mut();
        b[6..8].copy_from_slice(&(flags | units).to_be_bytes());
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 + ICMP echo request from `ping -c1 198.18.0.10` (header only, then 8 bytes).
    const PING: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, // csum at 10..12
        198, 18, 0, 1, 198, 18, 0, 10, //
        0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
    ];

    fn with_checksum(mut b: Vec<u8>) -> Vec<u8> {
        Ipv4Packet::new_unchecked(&mut b[..]).fill_checksum();
        b
    }

    #[test]
    fn parse_and_emit() {
        let b = with_checksum(PING.to_vec());
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        let r = Ipv4Repr::parse(&p, true).unwrap();
        assert_eq!(r.src_addr, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(r.dst_addr, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(r.next_header, IpProtocol::Icmp);
        assert_eq!(r.payload_len, 8);
        assert!(r.dont_frag);
        assert_eq!((r.ident, r.hop_limit), (0x1234, 64));
        let mut out = vec![0u8; 28];
        out[20..].copy_from_slice(&PING[20..]);
        r.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
    }

    #[test]
    fn truncated_and_bad_lengths() {
        let b = with_checksum(PING.to_vec());
        for n in 0..28 {
            assert_eq!(Ipv4Packet::new_checked(&b[..n]).unwrap_err(), Error::Truncated, "len {n}");
        }
        let mut x = b.clone();
        x[0] = 0x44; // IHL 4
        assert_eq!(Ipv4Packet::new_checked(&x[..]).unwrap_err(), Error::BadLength);
        let mut x = b.clone();
        x[3] = 19; // total length below header
        assert_eq!(Ipv4Packet::new_checked(&x[..]).unwrap_err(), Error::BadLength);
    }

    #[test]
    fn padding_is_ignored() {
        let mut b = with_checksum(PING.to_vec());
        b.extend_from_slice(&[0u8; 18]); // Ethernet minimum-size padding
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn version_checksum_fragments() {
        let b = with_checksum(PING.to_vec());
        let mut x = b.clone();
        x[0] = 0x65;
        assert_eq!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&x[..]).unwrap(), true), Err(Error::BadVersion));
        let mut x = b.clone();
        x[15] ^= 1;
        assert_eq!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&x[..]).unwrap(), true), Err(Error::BadChecksum));
        assert!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&x[..]).unwrap(), false).is_ok());
        let mut x = PING.to_vec();
        x[6] = 0x20; // MF
        let x = with_checksum(x);
        assert_eq!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&x[..]).unwrap(), true), Err(Error::Fragment));
        let mut x = PING.to_vec();
        x[6] = 0x00;
        x[7] = 0x10; // offset 128
        let x = with_checksum(x);
        assert_eq!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&x[..]).unwrap(), true), Err(Error::Fragment));
    }

    #[test]
    fn fragments_parse_and_emit() {
        let r = Ipv4Repr::parse(&Ipv4Packet::new_checked(&with_checksum(PING.to_vec())[..]).unwrap(), true).unwrap();
        let r = Ipv4Repr { dont_frag: false, ..r };
        for (offset, more_frags) in [(0, true), (1480, true), (2960, false), (65528, false)] {
            let f = Ipv4Fragment { offset, more_frags };
            let mut b = PING.to_vec();
            r.emit_fragment(&mut Ipv4Packet::new_unchecked(&mut b[..]), f);
            let p = Ipv4Packet::new_checked(&b[..]).unwrap();
            assert_eq!(Ipv4Repr::parse_fragment(&p, true), Ok((r, Some(f))));
            assert_eq!(Ipv4Repr::parse(&p, true), Err(Error::Fragment));
            let (h, _) = etherparse::Ipv4Header::from_slice(&b).unwrap();
            assert_eq!((h.fragment_offset.byte_offset() as usize, h.more_fragments, h.dont_fragment), (offset, more_frags, false));
        }
        let b = with_checksum(PING.to_vec());
        let (_, f) = Ipv4Repr::parse_fragment(&Ipv4Packet::new_checked(&b[..]).unwrap(), true).unwrap();
        assert_eq!(f, None, "DF and offset 0: not a fragment");
    }

    #[test]
    fn options_are_skipped() {
        // IHL 6: one word of options (NOP NOP NOP EOL).
        let mut b = vec![0x46, 0, 0, 32, 0, 1, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 10, 1, 1, 1, 0];
        b.extend_from_slice(&[0xaa; 8]);
        let b = with_checksum(b);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        let r = Ipv4Repr::parse(&p, true).unwrap();
        assert_eq!(r.payload_len, 8);
        assert_eq!(p.payload(), &[0xaa; 8]);
    }

    #[test]
    fn agrees_with_etherparse() {
        let mut rng = crate::rand::Rng::new(5);
        for _ in 0..300 {
            let payload_len = rng.below(100) as usize;
            let r = Ipv4Repr {
                src_addr: Ipv4Addr::from(rng.next_u32()),
                dst_addr: Ipv4Addr::from(rng.next_u32()),
                next_header: IpProtocol::from(rng.next_u32() as u8),
                payload_len,
                hop_limit: rng.next_u32() as u8,
                dscp_ecn: rng.next_u32() as u8,
                ident: rng.next_u32() as u16,
                dont_frag: rng.below(2) == 1,
            };
            let mut b = vec![0u8; 20 + payload_len];
            r.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
            let (h, _) = etherparse::Ipv4Header::from_slice(&b).unwrap();
            assert_eq!(h.source, r.src_addr.octets());
            assert_eq!(h.destination, r.dst_addr.octets());
            assert_eq!(h.total_len as usize, 20 + payload_len);
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!(h.dont_fragment, r.dont_frag);
            assert_eq!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&b[..]).unwrap(), true).unwrap(), r);
        }
    }
}
