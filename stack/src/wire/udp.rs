//! UDP datagrams (RFC 768).

use std::net::Ipv4Addr;

use super::checksum;
use super::{Error, Result};

/// Length of the UDP header: source port, destination port, length, checksum (RFC 768).
pub const HEADER_LEN: usize = 8;

#[derive(Debug, Clone)]
/// A view of a UDP datagram in `buffer` (the IP payload). Fields are big-endian; accessors panic
/// on a buffer shorter than [`HEADER_LEN`] (or than the Length field, for the payload) unless it
/// came through [`UdpPacket::new_checked`].
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// A view over `buffer` without a length check (for `emit` into a buffer the caller sized with
    /// [`UdpRepr::buffer_len`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }
    /// A view over `buffer`, if [`UdpPacket::check_len`] accepts it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = UdpPacket { buffer };
        p.check_len()?;
        Ok(p)
    }
    /// [`Error::Truncated`] when the buffer is shorter than the header or than the Length field;
    /// [`Error::BadLength`] when Length is below 8.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = self.len() as usize;
        if l < HEADER_LEN {
            return Err(Error::BadLength);
        }
        if l > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }
    fn be16(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }
    /// The source port (zero: the sender expects no reply).
    pub fn src_port(&self) -> u16 {
        self.be16(0)
    }
    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        self.be16(2)
    }
    /// Length: header plus data, in bytes (the buffer may be longer: IP padding is not data).
    pub fn len(&self) -> u16 {
        self.be16(4)
    }
    /// No data after the header.
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= HEADER_LEN
    }
    /// The checksum field as sent (zero: the sender computed none).
    pub fn checksum(&self) -> u16 {
        self.be16(6)
    }
    /// The data: from the header to Length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> UdpPacket<&'a T> {
    /// The data, borrowed for the buffer's lifetime rather than the view's.
    pub fn payload_ref(&self) -> &'a [u8] {
        let b: &'a [u8] = self.buffer.as_ref();
        &b[HEADER_LEN..self.len() as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// A UDP datagram as a value, borrowing its data.
pub struct UdpRepr<'a> {
    /// The source port.
    pub src_port: u16,
    /// The destination port (never zero after parsing).
    pub dst_port: u16,
    /// The data.
    pub payload: &'a [u8],
}

impl<'a> UdpRepr<'a> {
    /// The datagram as a value. `src` and `dst` are the IP addresses, for the checksum's
    /// pseudo-header (RFC 768). Errors: those of [`UdpPacket::check_len`], [`Error::Unsupported`] for
    /// destination port 0, [`Error::BadChecksum`] (only when `verify_checksum`, and never for a
    /// zero checksum, which over IPv4 means none).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        p: &UdpPacket<&'a T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        verify_checksum: bool,
    ) -> Result<UdpRepr<'a>> {
        p.check_len()?;
        if p.dst_port() == 0 {
            return Err(Error::Unsupported);
        }
        // A zero checksum means "none" over IPv4 (RFC 768).
        if verify_checksum && p.checksum() != 0 {
            let data = &p.buffer.as_ref()[..p.len() as usize];
            if !checksum::verify_with_pseudo(src, dst, 17, data) {
                return Err(Error::BadChecksum);
            }
        }
        Ok(UdpRepr { src_port: p.src_port(), dst_port: p.dst_port(), payload: p.payload_ref() })
    }

    /// Bytes [`UdpRepr::emit`] writes: header plus data (it must fit the 16-bit Length field).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Write the datagram into `p` (at least [`UdpRepr::buffer_len`] bytes, or it panics), with its
    /// checksum over the pseudo-header of `src` and `dst`; a computed zero is sent as 0xffff (RFC
    /// 768).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut UdpPacket<T>, src: Ipv4Addr, dst: Ipv4Addr) {
        let len = self.buffer_len();
        let b = &mut p.buffer.as_mut()[..len];
        b[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        b[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        b[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        b[6..8].copy_from_slice(&[0, 0]);
        b[8..].copy_from_slice(self.payload);
        let mut c = checksum::compute_with_pseudo(src, dst, 17, b);
        if c == 0 {
            // RFC 768: a computed zero is sent as all ones.
            c = 0xffff;
        }
        b[6..8].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

    fn datagram() -> Vec<u8> {
        let r = UdpRepr { src_port: 5353, dst_port: 7, payload: b"hello" };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut UdpPacket::new_unchecked(&mut b[..]), SRC, DST);
        b
    }

    #[test]
    fn literal_bytes() {
        let b = datagram();
        assert_eq!(&b[..6], &[0x14, 0xe9, 0x00, 0x07, 0x00, 0x0d]);
        let p = UdpPacket::new_checked(&b[..]).unwrap();
        let r = UdpRepr::parse(&p, SRC, DST, true).unwrap();
        assert_eq!(r, UdpRepr { src_port: 5353, dst_port: 7, payload: b"hello" });
        // etherparse agrees on the checksum.
        let (h, _) = etherparse::UdpHeader::from_slice(&b).unwrap();
        assert_eq!(h.calc_checksum_ipv4_raw(SRC.octets(), DST.octets(), b"hello").unwrap(), h.checksum);
    }

    #[test]
    fn lengths_and_checksum() {
        let b = datagram();
        for n in 0..8 {
            assert_eq!(UdpPacket::new_checked(&b[..n]).unwrap_err(), Error::Truncated);
        }
        assert_eq!(UdpPacket::new_checked(&b[..12]).unwrap_err(), Error::Truncated, "length says 13");
        let mut x = b.clone();
        x[5] = 7;
        assert_eq!(UdpPacket::new_checked(&x[..]).unwrap_err(), Error::BadLength);
        let mut x = b.clone();
        x[9] ^= 0xff;
        assert_eq!(UdpRepr::parse(&UdpPacket::new_checked(&x[..]).unwrap(), SRC, DST, true), Err(Error::BadChecksum));
        let mut x = b.clone();
        x[6] = 0;
        x[7] = 0;
        assert!(UdpRepr::parse(&UdpPacket::new_checked(&x[..]).unwrap(), SRC, DST, true).is_ok(), "no checksum");
        let mut x = b;
        x[2] = 0;
        x[3] = 0;
        assert_eq!(UdpRepr::parse(&UdpPacket::new_checked(&x[..]).unwrap(), SRC, DST, false), Err(Error::Unsupported));
    }
}
