//! ARP for IPv4 over Ethernet (RFC 826). Other hardware or protocol types are unsupported.

use std::net::Ipv4Addr;

use super::ethernet::MacAddr;
use super::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The ARP opcode (RFC 826 "Packet format", `ar$op`); other opcodes (RARP, InARP) are unsupported.
pub enum ArpOperation {
    /// Opcode 1: who has the target protocol address?
    Request,
    /// Opcode 2: the sender protocol address is at the sender hardware address.
    Reply,
}

/// Length of an Ethernet/IPv4 ARP packet: 8 bytes of fixed header, two 6-byte MACs, two IPv4
/// addresses.
pub const PACKET_LEN: usize = 28;

#[derive(Debug, Clone)]
/// A view of an ARP packet in `buffer` (the Ethernet payload). Accessors read fields in network
/// byte order at fixed offsets: they panic on a buffer shorter than [`PACKET_LEN`] unless it came
/// through [`ArpPacket::new_checked`].
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// A view over `buffer` without a length check: accessors may panic (for `emit` into a buffer the
    /// caller sized with [`ArpRepr::buffer_len`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }
    /// A view over `buffer`, or [`Error::Truncated`] when it is shorter than [`PACKET_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = ArpPacket { buffer };
        p.check_len()?;
        Ok(p)
    }
    /// Ethernet/IPv4 ARP is 28 bytes; trailing padding is allowed.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }
    fn be16(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }
    /// `ar$hrd`: the hardware address space (1 is Ethernet).
    pub fn hardware_type(&self) -> u16 {
        self.be16(0)
    }
    /// `ar$pro`: the protocol address space, as an EtherType (0x0800 is IPv4).
    pub fn protocol_type(&self) -> u16 {
        self.be16(2)
    }
    /// `ar$hln`: bytes per hardware address (6 for Ethernet).
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[4]
    }
    /// `ar$pln`: bytes per protocol address (4 for IPv4).
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[5]
    }
    /// `ar$op`, raw (see [`ArpOperation`]).
    pub fn operation(&self) -> u16 {
        self.be16(6)
    }
    fn mac(&self, at: usize) -> MacAddr {
        let b = &self.buffer.as_ref()[at..at + 6];
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }
    fn ip(&self, at: usize) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[at..at + 4];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    /// `ar$sha`: the sender's MAC.
    pub fn source_hardware_addr(&self) -> MacAddr {
        self.mac(8)
    }
    /// `ar$spa`: the sender's IPv4 address.
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        self.ip(14)
    }
    /// `ar$tha`: the target's MAC (zero in a request).
    pub fn target_hardware_addr(&self) -> MacAddr {
        self.mac(18)
    }
    /// `ar$tpa`: the IPv4 address asked about (request) or answered to (reply).
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        self.ip(24)
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request or reply.
    pub operation: ArpOperation,
    /// The sender's MAC.
    pub source_hardware_addr: MacAddr,
    /// The sender's IPv4 address.
    pub source_protocol_addr: Ipv4Addr,
    /// The target's MAC (zero in a request).
    pub target_hardware_addr: MacAddr,
    /// The target's IPv4 address.
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// The packet as a value: [`Error::Truncated`] below [`PACKET_LEN`] bytes,
    /// [`Error::Unsupported`] for anything but Ethernet/IPv4 (`hrd` 1, `pro` 0x0800, lengths 6 and
    /// 4) requests and replies.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &ArpPacket<&T>) -> Result<ArpRepr> {
        p.check_len()?;
        if p.hardware_type() != 1 || p.protocol_type() != 0x0800 || p.hardware_len() != 6 || p.protocol_len() != 4 {
            return Err(Error::Unsupported);
        }
        let operation = match p.operation() {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            _ => return Err(Error::Unsupported),
        };
        Ok(ArpRepr {
            operation,
            source_hardware_addr: p.source_hardware_addr(),
            source_protocol_addr: p.source_protocol_addr(),
            target_hardware_addr: p.target_hardware_addr(),
            target_protocol_addr: p.target_protocol_addr(),
        })
    }

    /// Gratuitous ARP announcing that `ip` is at `mac` (RFC 5227 3 "ARP Announcement"):
    /// sender and target protocol address are both `ip`. The request form has a zero target
    /// hardware address (what `arping -U` sends); the reply form repeats `mac` there (`arping
    /// -A`). Both go to the broadcast address; peers with an entry for `ip` update it.
    pub fn gratuitous(mac: MacAddr, ip: Ipv4Addr, operation: ArpOperation) -> ArpRepr {
        ArpRepr {
            operation,
            source_hardware_addr: mac,
            source_protocol_addr: ip,
            target_hardware_addr: match operation {
                ArpOperation::Request => MacAddr([0; 6]),
                ArpOperation::Reply => mac,
            },
            target_protocol_addr: ip,
        }
    }

    /// Bytes [`ArpRepr::emit`] writes: always [`PACKET_LEN`].
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Write the packet into `p`, whose buffer must hold [`ArpRepr::buffer_len`] bytes (it panics
    /// otherwise).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut ArpPacket<T>) {
        let b = p.buffer.as_mut();
        b[0..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        b[4] = 6;
        b[5] = 4;
        let op: u16 = match self.operation {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
        };
        b[6..8].copy_from_slice(&op.to_be_bytes());
        b[8..14].copy_from_slice(&self.source_hardware_addr.0);
        b[14..18].copy_from_slice(&self.source_protocol_addr.octets());
        b[18..24].copy_from_slice(&self.target_hardware_addr.0);
        b[24..28].copy_from_slice(&self.target_protocol_addr.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // "Who has 198.18.0.10? Tell 198.18.0.1", as Linux sends it.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet, IPv4, 6, 4, request
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 198, 18, 0, 1, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 198, 18, 0, 10, // target
    ];

    #[test]
    fn parse_emit_round_trip() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        let r = ArpRepr::parse(&p).unwrap();
        assert_eq!(r.operation, ArpOperation::Request);
        assert_eq!(r.source_protocol_addr, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(r.target_protocol_addr, Ipv4Addr::new(198, 18, 0, 10));
        let mut out = [0u8; 28];
        r.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn truncated_and_unsupported() {
        for n in 0..28 {
            assert_eq!(ArpPacket::new_checked(&REQUEST[..n]).unwrap_err(), Error::Truncated);
        }
        let mut b = REQUEST;
        b[7] = 3; // RARP request
        assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&b[..]).unwrap()), Err(Error::Unsupported));
        let mut b = REQUEST;
        b[1] = 6; // IEEE 802 hardware
        assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&b[..]).unwrap()), Err(Error::Unsupported));
        let mut b = REQUEST;
        b[4] = 8;
        assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&b[..]).unwrap()), Err(Error::Unsupported));
    }

    #[test]
    fn gratuitous_forms() {
        let mac = MacAddr([2, 0, 0, 0, 0, 9]);
        let ip = Ipv4Addr::new(198, 18, 0, 50);
        let req = ArpRepr::gratuitous(mac, ip, ArpOperation::Request);
        assert_eq!((req.source_protocol_addr, req.target_protocol_addr), (ip, ip));
        assert_eq!(req.target_hardware_addr, MacAddr([0; 6]));
        let rep = ArpRepr::gratuitous(mac, ip, ArpOperation::Reply);
        assert_eq!(rep.target_hardware_addr, mac);
    }
}
