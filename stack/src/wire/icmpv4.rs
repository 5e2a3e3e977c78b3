//! ICMPv4 (RFC 792): echo request/reply, and destination unreachable, whose
//! fragmentation-needed code carries the next-hop MTU for path MTU discovery (RFC 1191).

use super::checksum;
use super::ipv4::{Ipv4Packet, Ipv4Repr};
use super::{Error, Result};

/// Length of the ICMP header: type, code, checksum, and 4 bytes whose meaning depends on the type
/// (RFC 792).
pub const HEADER_LEN: usize = 8;

/// Destination-unreachable codes (RFC 792, RFC 1812 5.2.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DstUnreachable {
    /// Code 0.
    NetUnreachable,
    /// Code 1.
    HostUnreachable,
    /// Code 2: the protocol is not served (sent for an unknown IP protocol).
    ProtoUnreachable,
    /// Code 3: no socket on the port (sent for UDP to a closed port).
    PortUnreachable,
    /// Fragmentation needed and DF set: `next_hop_mtu` is meaningful.
    FragRequired,
    /// Any other code, kept as read.
    Other(u8),
}

impl From<u8> for DstUnreachable {
    fn from(c: u8) -> Self {
        match c {
            0 => DstUnreachable::NetUnreachable,
            1 => DstUnreachable::HostUnreachable,
            2 => DstUnreachable::ProtoUnreachable,
            3 => DstUnreachable::PortUnreachable,
            4 => DstUnreachable::FragRequired,
            c => DstUnreachable::Other(c),
        }
    }
}
impl From<DstUnreachable> for u8 {
    fn from(d: DstUnreachable) -> u8 {
        match d {
            DstUnreachable::NetUnreachable => 0,
            DstUnreachable::HostUnreachable => 1,
            DstUnreachable::ProtoUnreachable => 2,
            DstUnreachable::PortUnreachable => 3,
            DstUnreachable::FragRequired => 4,
            DstUnreachable::Other(c) => c,
        }
    }
}

#[derive(Debug, Clone)]
/// A view of an ICMPv4 message in `buffer` (the IP payload). Multi-byte fields are big-endian;
/// accessors panic on a buffer shorter than [`HEADER_LEN`] unless it came through
/// [`Icmpv4Packet::new_checked`].
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// A view over `buffer` without a length check (for `emit` into a buffer the caller sized with
    /// [`Icmpv4Repr::buffer_len`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
    }
    /// A view over `buffer`, or [`Error::Truncated`] when it is shorter than [`HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Icmpv4Packet { buffer };
        p.check_len()?;
        Ok(p)
    }
    /// [`Error::Truncated`] when the buffer cannot hold the header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }
    /// The type (RFC 792: 0 echo reply, 3 destination unreachable, 8 echo request, ...).
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    /// The code, whose meaning depends on the type.
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    fn be16(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }
    /// The checksum field as sent.
    pub fn checksum(&self) -> u16 {
        self.be16(2)
    }
    /// Echo identifier (bytes 4..6; meaningful in echo messages only).
    pub fn echo_ident(&self) -> u16 {
        self.be16(4)
    }
    /// Echo sequence number (bytes 6..8; echo messages only).
    pub fn echo_seq_no(&self) -> u16 {
        self.be16(6)
    }
    /// Next-hop MTU of a fragmentation-needed message (bytes 6..8, RFC 1191 4; zero from routers
    /// older than RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        self.be16(6)
    }
    /// Whether the Internet checksum over the whole message (header and data) verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Icmpv4Packet<&'a T> {
    /// Everything after the 8-byte header: echo data, or the quoted datagram of an error.
    pub fn data(&self) -> &'a [u8] {
        let b: &'a [u8] = self.buffer.as_ref();
        &b[HEADER_LEN..]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// An ICMPv4 message this stack understands, borrowing its data from the packet.
pub enum Icmpv4Repr<'a> {
    /// Type 8: asks the receiver for an echo reply carrying the same identifier, sequence
    /// number and data.
    EchoRequest {
        /// Identifier chosen by the sender (e.g. its process), echoed back.
        ident: u16,
        /// Sequence number chosen by the sender, echoed back.
        seq_no: u16,
        /// The data to echo.
        data: &'a [u8],
    },
    /// Type 0: the answer to an echo request.
    EchoReply {
        /// The request's identifier.
        ident: u16,
        /// The request's sequence number.
        seq_no: u16,
        /// The request's data.
        data: &'a [u8],
    },
    /// Type 3: a datagram could not be delivered. The embedded header is of the datagram that
    /// could not be delivered; `data` holds its first payload bytes (at least 8: ports and
    /// sequence number for TCP).
    DstUnreachable {
        /// The code: why it could not be delivered.
        reason: DstUnreachable,
        /// With [`DstUnreachable::FragRequired`], the MTU of the link that refused it (RFC 1191
        /// 4); zero otherwise.
        next_hop_mtu: u16,
        /// The quoted IPv4 header (its checksum not verified: routers may rewrite it).
        header: Ipv4Repr,
        /// The quoted payload bytes that follow the header.
        data: &'a [u8],
    },
}

/// How much of the offending datagram a generated error quotes: RFC 1812 4.3.2.3 allows up
/// to 576 bytes in total; plex quotes the header and the first 8 bytes (RFC 792's minimum),
/// enough for the peer to find its connection.
pub const QUOTE_LEN: usize = 8;

impl<'a> Icmpv4Repr<'a> {
    /// The message as a value. Errors: [`Error::Truncated`] (message shorter than its header, or an
    /// unreachable message quoting less than an IPv4 header and [`QUOTE_LEN`] bytes),
    /// [`Error::BadChecksum`] (only when `verify_checksum`), [`Error::Unsupported`] for other types
    /// and codes.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &Icmpv4Packet<&'a T>, verify_checksum: bool) -> Result<Icmpv4Repr<'a>> {
        p.check_len()?;
        if verify_checksum && !p.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        match (p.msg_type(), p.msg_code()) {
            (8, 0) => Ok(Icmpv4Repr::EchoRequest { ident: p.echo_ident(), seq_no: p.echo_seq_no(), data: p.data() }),
            (0, 0) => Ok(Icmpv4Repr::EchoReply { ident: p.echo_ident(), seq_no: p.echo_seq_no(), data: p.data() }),
            (3, code) => {
                // The quoted header is checked for shape but not checksum (routers rewrite it).
                let inner = p.data();
                let ip = Ipv4Packet::new_unchecked(inner);
                if inner.len() < 20 || ip.header_len() < 20 || ip.header_len() > inner.len() || ip.version() != 4 {
                    return Err(Error::Truncated);
                }
                let hl = ip.header_len();
                let header = Ipv4Repr {
                    src_addr: ip.src_addr(),
                    dst_addr: ip.dst_addr(),
                    next_header: ip.next_header(),
                    payload_len: (ip.total_len() as usize).saturating_sub(hl),
                    hop_limit: ip.hop_limit(),
                    dscp_ecn: ip.dscp_ecn(),
                    ident: ip.ident(),
                    dont_frag: ip.dont_frag(),
                };
                let data = &inner[hl..];
                if data.len() < QUOTE_LEN {
                    return Err(Error::Truncated);
                }
                Ok(Icmpv4Repr::DstUnreachable {
                    reason: DstUnreachable::from(code),
                    next_hop_mtu: p.next_hop_mtu(),
                    header,
                    data,
                })
            }
            _ => Err(Error::Unsupported),
        }
    }

    /// Bytes [`Icmpv4Repr::emit`] writes: the header plus the echo data, or plus a 20-byte IPv4
    /// header and at most [`QUOTE_LEN`] quoted bytes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Icmpv4Repr::EchoRequest { data, .. } | Icmpv4Repr::EchoReply { data, .. } => HEADER_LEN + data.len(),
            Icmpv4Repr::DstUnreachable { data, .. } => HEADER_LEN + 20 + data.len().min(QUOTE_LEN),
        }
    }

    /// Write the message into `p` (at least [`Icmpv4Repr::buffer_len`] bytes, or it panics),
    /// checksum included.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Icmpv4Packet<T>) {
        let len = self.buffer_len();
        let b = &mut p.buffer.as_mut()[..len];
        b[2] = 0;
        b[3] = 0;
        match *self {
            Icmpv4Repr::EchoRequest { ident, seq_no, data } | Icmpv4Repr::EchoReply { ident, seq_no, data } => {
                b[0] = if matches!(self, Icmpv4Repr::EchoRequest { .. }) { 8 } else { 0 };
                b[1] = 0;
                b[4..6].copy_from_slice(&ident.to_be_bytes());
                b[6..8].copy_from_slice(&seq_no.to_be_bytes());
                b[8..].copy_from_slice(data);
            }
            Icmpv4Repr::DstUnreachable { reason, next_hop_mtu, header, data } => {
                b[0] = 3;
                b[1] = u8::from(reason);
                b[4..6].copy_from_slice(&[0, 0]);
                b[6..8].copy_from_slice(&next_hop_mtu.to_be_bytes());
                header.emit(&mut Ipv4Packet::new_unchecked(&mut b[8..28]));
                let n = data.len().min(QUOTE_LEN);
                b[28..28 + n].copy_from_slice(&data[..n]);
            }
        }
        let c = checksum::checksum(b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::IpProtocol;
    use std::net::Ipv4Addr;

    // Echo request as ping sends it: id 0x002a, seq 1, 8 data bytes.
    const ECHO: [u8; 16] = [8, 0, 0x66, 0x3f, 0x00, 0x2a, 0x00, 0x01, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h'];

    #[test]
    fn echo_literal_bytes() {
        let p = Icmpv4Packet::new_checked(&ECHO[..]).unwrap();
        assert!(p.verify_checksum(), "checksum of the literal");
        let r = Icmpv4Repr::parse(&p, true).unwrap();
        assert_eq!(r, Icmpv4Repr::EchoRequest { ident: 42, seq_no: 1, data: b"abcdefgh" });
        let mut out = [0u8; 16];
        r.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, ECHO);
        let reply = Icmpv4Repr::EchoReply { ident: 42, seq_no: 1, data: b"abcdefgh" };
        reply.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out[0], 0);
        let (h, _) = etherparse::Icmpv4Header::from_slice(&out).unwrap();
        assert_eq!(h.checksum, h.icmp_type.calc_checksum(&out[8..]));
    }

    #[test]
    fn truncated_checksum_unsupported() {
        for n in 0..8 {
            assert_eq!(Icmpv4Packet::new_checked(&ECHO[..n]).unwrap_err(), Error::Truncated);
        }
        let mut b = ECHO;
        b[9] ^= 1;
        assert_eq!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&b[..]).unwrap(), true), Err(Error::BadChecksum));
        let mut b = ECHO;
        b[0] = 13; // timestamp request
        let c = checksum::checksum(&{
            let mut x = b;
            x[2] = 0;
            x[3] = 0;
            x
        });
        b[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&b[..]).unwrap(), true), Err(Error::Unsupported));
    }

    #[test]
    fn frag_needed_round_trip() {
        let header = Ipv4Repr {
            src_addr: Ipv4Addr::new(198, 18, 0, 10),
            dst_addr: Ipv4Addr::new(198, 18, 0, 1),
            next_header: IpProtocol::Tcp,
            payload_len: 1480,
            hop_limit: 64,
            dscp_ecn: 0,
            ident: 9,
            dont_frag: true,
        };
        let quoted = [0x00, 0x50, 0x9c, 0x40, 0, 0, 0x27, 0x10];
        let r = Icmpv4Repr::DstUnreachable { reason: DstUnreachable::FragRequired, next_hop_mtu: 1400, header, data: &quoted };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut Icmpv4Packet::new_unchecked(&mut b[..]));
        assert_eq!(&b[..2], &[3, 4]);
        let back = Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&b[..]).unwrap(), true).unwrap();
        assert_eq!(back, r);
        // A quote shorter than 8 bytes is refused.
        assert_eq!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&b[..b.len() - 1]).unwrap(), false), Err(Error::Truncated));
    }

    #[test]
    fn mutations_never_panic() {
        let mut rng = crate::rand::Rng::new(3);
        for _ in 0..5000 {
            let mut b = ECHO.to_vec();
            b[0] = [0, 3, 8, 11][rng.below(4) as usize];
            let n = rng.below(b.len() as u64 + 1) as usize;
            b.truncate(n);
            if let Ok(p) = Icmpv4Packet::new_checked(&b[..]) {
                let _ = Icmpv4Repr::parse(&p, false);
            }
        }
    }
}
