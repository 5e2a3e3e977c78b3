//! Ethernet II frames (no FCS: AF_XDP and the simulator carry frames without it).

use core::fmt;
use core::str::FromStr;

use super::{Error, Result};

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff, every station on the segment.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// All ones: every station on the segment.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
    /// Group bit set (broadcast included).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    /// Group bit clear and not all zeroes: an address one station can own.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && self.0 != [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}
impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error of [`MacAddr::from_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMacError(pub String);

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid MAC address {:?}: expected six hex bytes like 02:00:00:00:00:01", self.0)
    }
}
impl std::error::Error for ParseMacError {}

impl FromStr for MacAddr {
    type Err = ParseMacError;
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The EtherType field of an Ethernet II header (IEEE 802.3 clause 3.2.6: values of 0x0600 and
/// above name the payload's protocol).
pub enum EtherType {
    /// 0x0800, IPv4.
    Ipv4,
    /// 0x0806, ARP.
    Arp,
    /// Any other value, kept as read (0x8100 for a VLAN tag, 0x86dd for IPv6, ...).
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            v => EtherType::Unknown(v),
        }
    }
}
impl From<EtherType> for u16 {
    fn from(e: EtherType) -> u16 {
        match e {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Unknown(v) => v,
        }
    }
}

/// Length of the Ethernet II header: destination MAC, source MAC, EtherType.
pub const HEADER_LEN: usize = 14;

/// A view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// A view over `buffer` without a length check: accessors panic if it is shorter than
    /// [`HEADER_LEN`] (for `emit` into a buffer the caller sized).
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }
    /// A view over `buffer`, or [`Error::Truncated`] when it is shorter than [`HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let f = EthernetFrame { buffer };
        f.check_len()?;
        Ok(f)
    }
    /// [`Error::Truncated`] when the buffer cannot hold the header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }
    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    fn mac(&self, at: usize) -> MacAddr {
        let b = &self.buffer.as_ref()[at..at + 6];
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }
    /// The destination MAC (bytes 0..6).
    pub fn dst_addr(&self) -> MacAddr {
        self.mac(0)
    }
    /// The source MAC (bytes 6..12).
    pub fn src_addr(&self) -> MacAddr {
        self.mac(6)
    }
    /// The EtherType (bytes 12..14, big-endian).
    pub fn ethertype(&self) -> EtherType {
        let b = self.buffer.as_ref();
        EtherType::from(u16::from_be_bytes([b[12], b[13]]))
    }
    /// Everything after the header (padding included: Ethernet does not say how much is payload).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Write the destination MAC.
    pub fn set_dst_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[0..6].copy_from_slice(&a.0)
    }
    /// Write the source MAC.
    pub fn set_src_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[6..12].copy_from_slice(&a.0)
    }
    /// Write the EtherType, big-endian.
    pub fn set_ethertype(&mut self, e: EtherType) {
        self.buffer.as_mut()[12..14].copy_from_slice(&u16::from(e).to_be_bytes())
    }
    /// Everything after the header, to write the payload into.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The Ethernet header as a value. A VLAN-tagged frame parses with `EtherType::Unknown(0x8100)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// The sender.
    pub src_addr: MacAddr,
    /// The receiver: a unicast MAC, or broadcast / multicast.
    pub dst_addr: MacAddr,
    /// The payload's protocol.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// The header as a value; [`Error::Truncated`] when the frame is shorter than [`HEADER_LEN`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &EthernetFrame<&T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }
    /// Bytes [`EthernetRepr::emit`] writes: always [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Write the header into `frame` (at least [`HEADER_LEN`] bytes; the payload is the caller's).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_src_addr(self.src_addr);
        frame.set_dst_addr(self.dst_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src
        0x08, 0x06, // ARP
        0xaa, 0xbb,
    ];

    #[test]
    fn parse_and_emit() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        let r = EthernetRepr::parse(&f).unwrap();
        assert_eq!(r.dst_addr, MacAddr::BROADCAST);
        assert_eq!(r.src_addr, MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(r.ethertype, EtherType::Arp);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
        let mut out = [0u8; 16];
        r.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
        assert_eq!(out[..14], FRAME[..14]);
    }

    #[test]
    fn truncated() {
        for n in 0..14 {
            assert_eq!(EthernetFrame::new_checked(&FRAME[..n]).unwrap_err(), Error::Truncated);
        }
    }

    #[test]
    fn vlan_is_unknown() {
        let mut f = FRAME;
        f[12] = 0x81;
        f[13] = 0x00;
        let r = EthernetRepr::parse(&EthernetFrame::new_checked(&f[..]).unwrap()).unwrap();
        assert_eq!(r.ethertype, EtherType::Unknown(0x8100));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!("02:00:0a:0B:00:ff".parse::<MacAddr>().unwrap(), MacAddr([2, 0, 10, 11, 0, 255]));
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "zz:00:00:00:00:00", "002:0:0:0:0:0"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([2, 0, 0, 0, 0, 1]).is_unicast());
    }
}
