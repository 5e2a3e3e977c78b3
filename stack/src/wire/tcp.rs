//! TCP segments (RFC 9293 section 3.1) with the options plex uses: MSS (RFC 9293 3.2 / RFC 6691),
//! window scale and timestamps (RFC 7323), SACK-permitted and SACK (RFC 2018). Unknown options
//! are skipped; an option with an impossible length makes the segment unparseable.

use core::cmp::Ordering;
use core::fmt;
use core::ops::{Add, AddAssign, Sub};
use std::net::Ipv4Addr;

use super::checksum;
use super::{Error, Result};

/// A TCP sequence number: arithmetic modulo 2^32, compared by signed distance (RFC 9293 3.4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// Signed distance from `other` to `self` (positive when `self` is after `other`).
    #[inline]
    pub fn diff(self, other: SeqNumber) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
    /// `self - other` as an unsigned length; zero when `self` is before `other`.
    #[inline]
    pub fn distance_from(self, other: SeqNumber) -> usize {
        let d = self.diff(other);
        if d < 0 {
            0
        } else {
            d as usize
        }
    }
    #[inline]
    /// The later of the two in sequence space (meaningful only within 2^31 of each other).
    pub fn max(self, o: SeqNumber) -> SeqNumber {
        if self >= o {
            self
        } else {
            o
        }
    }
    #[inline]
    /// The earlier of the two in sequence space (meaningful only within 2^31 of each other).
    pub fn min(self, o: SeqNumber) -> SeqNumber {
        if self <= o {
            self
        } else {
            o
        }
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &SeqNumber) -> Option<Ordering> {
        Some(self.diff(*other).cmp(&0))
    }
}

impl Add<usize> for SeqNumber {
    type Output = SeqNumber;
    #[inline]
    fn add(self, rhs: usize) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(rhs as u32))
    }
}
impl AddAssign<usize> for SeqNumber {
    #[inline]
    fn add_assign(&mut self, rhs: usize) {
        *self = *self + rhs;
    }
}
impl Sub<usize> for SeqNumber {
    type Output = SeqNumber;
    #[inline]
    fn sub(self, rhs: usize) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(rhs as u32))
    }
}
impl fmt::Debug for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Header field offsets.
mod field {
    pub const SRC_PORT: core::ops::Range<usize> = 0..2;
    pub const DST_PORT: core::ops::Range<usize> = 2..4;
    pub const SEQ: core::ops::Range<usize> = 4..8;
    pub const ACK: core::ops::Range<usize> = 8..12;
    pub const DOFF_FLAGS: core::ops::Range<usize> = 12..14;
    pub const WINDOW: core::ops::Range<usize> = 14..16;
    pub const CHECKSUM: core::ops::Range<usize> = 16..18;
    pub const URGENT: core::ops::Range<usize> = 18..20;
}

/// Length of a TCP header without options (data offset 5).
pub const HEADER_LEN: usize = 20;
/// The largest options area: data offset 15 words.
pub const MAX_OPTIONS_LEN: usize = 40;

/// The TCP header's flag bits, as [`TcpPacket::flags`] returns them (RFC 9293 3.1; ECE and
/// CWR from RFC 3168 6.1).
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u16 = 0x001;
    /// Synchronize sequence numbers (opens a connection).
    pub const SYN: u16 = 0x002;
    /// Reset the connection.
    pub const RST: u16 = 0x004;
    /// Push: deliver the data to the application without waiting.
    pub const PSH: u16 = 0x008;
    /// The acknowledgment number is valid.
    pub const ACK: u16 = 0x010;
    /// The urgent pointer is valid (plex ignores urgent data).
    pub const URG: u16 = 0x020;
    /// ECN-Echo (RFC 3168).
    pub const ECE: u16 = 0x040;
    /// Congestion Window Reduced (RFC 3168).
    pub const CWR: u16 = 0x080;
}

mod opt {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WS: u8 = 3;
    pub const SACK_PERM: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TS: u8 = 8;
}

/// A read/write view of a TCP segment. After [`TcpPacket::new_checked`] every accessor is in
/// bounds.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wrap without checking; accessors may panic. Use for buffers the stack itself sized.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wrap, checking that the header and its options fit in the buffer.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = TcpPacket { buffer };
        p.check_len()?;
        Ok(p)
    }

    /// [`Error::Truncated`] when the buffer is shorter than 20 bytes or than the data offset;
    /// [`Error::BadLength`] when the data offset is below 5 words.
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
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn be16(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }
    fn be32(&self, r: core::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        self.be16(field::SRC_PORT)
    }
    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        self.be16(field::DST_PORT)
    }
    /// The sequence number of the first byte (or of the SYN).
    pub fn seq_number(&self) -> SeqNumber {
        SeqNumber(self.be32(field::SEQ))
    }
    /// The acknowledgment number, meaningful only with the ACK bit (see [`flags::ACK`]).
    pub fn ack_number(&self) -> SeqNumber {
        SeqNumber(self.be32(field::ACK))
    }
    /// Header length in bytes (data offset times four).
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::DOFF_FLAGS.start] >> 4) as usize) * 4
    }
    /// The 12 flag bits below the data offset (see [`flags`]; the top 3 are reserved).
    pub fn flags(&self) -> u16 {
        self.be16(field::DOFF_FLAGS) & 0x0fff
    }
    /// The window field as sent: not yet shifted by the window scale (RFC 7323 2.3).
    pub fn window_len(&self) -> u16 {
        self.be16(field::WINDOW)
    }
    /// The checksum field as sent.
    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }
    /// The urgent pointer field (plex never sets URG).
    pub fn urgent_at(&self) -> u16 {
        self.be16(field::URGENT)
    }
    /// The options area: from byte 20 to the data offset.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// Everything after the header (the IP layer has already cut it to the datagram's length).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
    /// Verify the checksum over the whole buffer with the IPv4 pseudo-header.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum::verify_with_pseudo(src, dst, 6, self.buffer.as_ref())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> TcpPacket<&'a T> {
    /// The payload with the buffer's lifetime.
    pub fn payload_ref(&self) -> &'a [u8] {
        let b: &'a [u8] = self.buffer.as_ref();
        &b[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn set_be16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }
    fn set_be32(&mut self, r: core::ops::Range<usize>, v: u32) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }
    /// Write the source port.
    pub fn set_src_port(&mut self, v: u16) {
        self.set_be16(field::SRC_PORT, v)
    }
    /// Write the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        self.set_be16(field::DST_PORT, v)
    }
    /// Write the sequence number.
    pub fn set_seq_number(&mut self, v: SeqNumber) {
        self.set_be32(field::SEQ, v.0)
    }
    /// Write the acknowledgment number.
    pub fn set_ack_number(&mut self, v: SeqNumber) {
        self.set_be32(field::ACK, v.0)
    }
    /// Set data offset (bytes, multiple of 4) and the 12 flag bits.
    pub fn set_header_len_and_flags(&mut self, header_len: usize, flags: u16) {
        let v = (((header_len / 4) as u16) << 12) | (flags & 0x0fff);
        self.set_be16(field::DOFF_FLAGS, v)
    }
    /// Write the window field (already scaled down by the sender's shift).
    pub fn set_window_len(&mut self, v: u16) {
        self.set_be16(field::WINDOW, v)
    }
    /// Write the checksum field (see [`TcpPacket::fill_checksum`]).
    pub fn set_checksum(&mut self, v: u16) {
        self.set_be16(field::CHECKSUM, v)
    }
    /// Write the urgent pointer.
    pub fn set_urgent_at(&mut self, v: u16) {
        self.set_be16(field::URGENT, v)
    }
    /// The options area, to write into: from byte 20 to the data offset set so far.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..hl]
    }
    /// Everything after the header, to write the data into.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
    /// Compute and store the checksum over the whole buffer.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = checksum::compute_with_pseudo(src, dst, 6, self.buffer.as_ref());
        self.set_checksum(c);
    }
}

/// The control bits that change the state machine. A segment carries at most one of them, so
/// the impossible combinations (SYN+FIN, SYN+RST) cannot be represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpControl {
    /// No control bit: a data or pure ACK segment.
    None,
    /// SYN: opens a connection; occupies one sequence number.
    Syn,
    /// FIN: the sender has no more data; occupies one sequence number.
    Fin,
    /// RST: aborts the connection.
    Rst,
}

impl TcpControl {
    /// Sequence space the control bit occupies (SYN and FIN count one).
    pub fn len(self) -> usize {
        match self {
            TcpControl::Syn | TcpControl::Fin => 1,
            _ => 0,
        }
    }
    /// No sequence space occupied (no control bit, or RST).
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// The timestamps option (RFC 7323 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpTimestamp {
    /// TSval: the sender's timestamp clock when it sent the segment.
    pub tsval: u32,
    /// TSecr: the most recent TSval received from the peer (meaningful with ACK).
    pub tsecr: u32,
}

/// Up to four SACK blocks `[left, right)` (RFC 2018 section 3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SackBlocks {
    blocks: [(SeqNumber, SeqNumber); 4],
    len: u8,
}

impl SackBlocks {
    /// Blocks one option can carry here (four when no timestamps, RFC 2018 3).
    pub const MAX: usize = 4;
    /// No block.
    pub const EMPTY: SackBlocks = SackBlocks { blocks: [(SeqNumber(0), SeqNumber(0)); 4], len: 0 };

    /// Append a block; returns false (and ignores it) when four are already held.
    pub fn push(&mut self, left: SeqNumber, right: SeqNumber) -> bool {
        if (self.len as usize) < Self::MAX {
            self.blocks[self.len as usize] = (left, right);
            self.len += 1;
            true
        } else {
            false
        }
    }
    /// Blocks held.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// No block held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The blocks held, oldest pushed first.
    pub fn as_slice(&self) -> &[(SeqNumber, SeqNumber)] {
        &self.blocks[..self.len as usize]
    }
    /// Keep only the first `n` blocks (to fit the options space left).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n as u8);
    }
}

impl fmt::Debug for SackBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice().iter().map(|(l, r)| l.0..r.0)).finish()
    }
}

/// A parsed TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    /// The source port.
    pub src_port: u16,
    /// The destination port.
    pub dst_port: u16,
    /// SYN, FIN, RST, or none.
    pub control: TcpControl,
    /// PSH: deliver to the application without waiting.
    pub psh: bool,
    /// The sequence number of the first byte (or of the SYN).
    pub seq_number: SeqNumber,
    /// `Some` exactly when the ACK bit is set.
    pub ack_number: Option<SeqNumber>,
    /// The window field as sent, not yet scaled.
    pub window_len: u16,
    /// The MSS option (RFC 9293 3.7.1): the largest segment payload the sender will receive; only
    /// on SYNs.
    pub max_seg_size: Option<u16>,
    /// The window scale option (RFC 7323 2): the sender's shift count, clamped to 14 when parsed;
    /// only on SYNs.
    pub window_scale: Option<u8>,
    /// The SACK-permitted option (RFC 2018 2); only on SYNs.
    pub sack_permitted: bool,
    /// SACK blocks (RFC 2018 3): data received above the acknowledgment number.
    pub sack_blocks: SackBlocks,
    /// The timestamps option (RFC 7323 3).
    pub timestamp: Option<TcpTimestamp>,
    /// The segment's data.
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// A bare segment with no options, for building replies and tests.
    pub fn new(src_port: u16, dst_port: u16, seq: SeqNumber) -> TcpRepr<'static> {
        TcpRepr {
            src_port,
            dst_port,
            control: TcpControl::None,
            psh: false,
            seq_number: seq,
            ack_number: None,
            window_len: 0,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_blocks: SackBlocks::EMPTY,
            timestamp: None,
            payload: &[],
        }
    }

    /// Parse a segment; the checksum is verified against the pseudo-header unless
    /// `verify_checksum` is false (the device already verified it).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &TcpPacket<&'a T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        verify_checksum: bool,
    ) -> Result<TcpRepr<'a>> {
        packet.check_len()?;
        if packet.src_port() == 0 || packet.dst_port() == 0 {
            return Err(Error::Unsupported);
        }
        if verify_checksum && !packet.verify_checksum(src, dst) {
            return Err(Error::BadChecksum);
        }
        let f = packet.flags();
        let control = match (f & flags::SYN != 0, f & flags::FIN != 0, f & flags::RST != 0) {
            (false, false, false) => TcpControl::None,
            (true, false, false) => TcpControl::Syn,
            (false, true, false) => TcpControl::Fin,
            // RST dominates FIN: the segment resets, the FIN is moot.
            (false, _, true) => TcpControl::Rst,
            (true, true, _) | (true, _, true) => return Err(Error::BadFlags),
        };
        let ack_number = if f & flags::ACK != 0 { Some(packet.ack_number()) } else { None };

        let mut repr = TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            control,
            psh: f & flags::PSH != 0,
            seq_number: packet.seq_number(),
            ack_number,
            window_len: packet.window_len(),
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_blocks: SackBlocks::EMPTY,
            timestamp: None,
            payload: packet.payload_ref(),
        };
        parse_options(packet.options(), &mut repr)?;
        Ok(repr)
    }

    /// Sequence space occupied: payload plus SYN/FIN.
    pub fn segment_len(&self) -> usize {
        self.payload.len() + self.control.len()
    }

    fn options_len(&self) -> usize {
        let mut n = 0;
        if self.max_seg_size.is_some() {
            n += 4;
        }
        // SACK-permitted rides in the two NOPs before the timestamps when both are present.
        match (self.sack_permitted, self.timestamp.is_some()) {
            (true, true) => n += 12,
            (false, true) => n += 12,
            (true, false) => n += 4,
            (false, false) => {}
        }
        if self.window_scale.is_some() {
            n += 4;
        }
        n += self.sack_blocks_that_fit(n) * 8 + if self.sack_blocks_that_fit(n) > 0 { 4 } else { 0 };
        n
    }

    fn sack_blocks_that_fit(&self, used: usize) -> usize {
        let room = MAX_OPTIONS_LEN.saturating_sub(used + 4) / 8;
        self.sack_blocks.len().min(room)
    }

    /// Header length including options, a multiple of four.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// Header plus payload.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Write the segment into `buffer` (exactly `buffer_len()` bytes) and fill the checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        self.emit_header(packet);
        packet.payload_mut()[..self.payload.len()].copy_from_slice(self.payload);
        packet.fill_checksum(src, dst);
    }

    /// Write the header (with options) only; the caller places the payload and fills the
    /// checksum. Used by the connection to copy payload straight from its send buffer.
    pub fn emit_header<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut TcpPacket<T>) {
        let hl = self.header_len();
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number.unwrap_or(SeqNumber(0)));
        let mut f = 0;
        match self.control {
            TcpControl::None => {}
            TcpControl::Syn => f |= flags::SYN,
            TcpControl::Fin => f |= flags::FIN,
            TcpControl::Rst => f |= flags::RST,
        }
        if self.psh {
            f |= flags::PSH;
        }
        if self.ack_number.is_some() {
            f |= flags::ACK;
        }
        packet.set_header_len_and_flags(hl, f);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_at(0);

        let opts = packet.options_mut();
        let mut i = 0;
        if let Some(mss) = self.max_seg_size {
            opts[i..i + 4].copy_from_slice(&[opt::MSS, 4, (mss >> 8) as u8, mss as u8]);
            i += 4;
        }
        if let Some(ts) = self.timestamp {
            if self.sack_permitted {
                opts[i..i + 2].copy_from_slice(&[opt::SACK_PERM, 2]);
            } else {
                opts[i..i + 2].copy_from_slice(&[opt::NOP, opt::NOP]);
            }
            opts[i + 2] = opt::TS;
            opts[i + 3] = 10;
            opts[i + 4..i + 8].copy_from_slice(&ts.tsval.to_be_bytes());
            opts[i + 8..i + 12].copy_from_slice(&ts.tsecr.to_be_bytes());
            i += 12;
        } else if self.sack_permitted {
            opts[i..i + 4].copy_from_slice(&[opt::NOP, opt::NOP, opt::SACK_PERM, 2]);
            i += 4;
        }
        if let Some(ws) = self.window_scale {
            opts[i..i + 4].copy_from_slice(&[opt::NOP, opt::WS, 3, ws]);
            i += 4;
        }
        let n = self.sack_blocks_that_fit(i);
        if n > 0 {
            opts[i..i + 4].copy_from_slice(&[opt::NOP, opt::NOP, opt::SACK, (2 + 8 * n) as u8]);
            i += 4;
            for &(l, r) in &self.sack_blocks.as_slice()[..n] {
                opts[i..i + 4].copy_from_slice(&l.0.to_be_bytes());
                opts[i + 4..i + 8].copy_from_slice(&r.0.to_be_bytes());
                i += 8;
            }
        }
        debug_assert_eq!(i, opts.len());
    }
}

fn parse_options(mut opts: &[u8], repr: &mut TcpRepr<'_>) -> Result<()> {
    while let Some(&kind) = opts.first() {
        match kind {
            opt::EOL => break,
            opt::NOP => {
                opts = &opts[1..];
                continue;
            }
            _ => {}
        }
        let len = *opts.get(1).ok_or(Error::BadOption)? as usize;
        if len < 2 || len > opts.len() {
            return Err(Error::BadOption);
        }
        let body = &opts[2..len];
        match (kind, body.len()) {
            (opt::MSS, 2) => repr.max_seg_size = Some(u16::from_be_bytes([body[0], body[1]])),
            // RFC 7323 2.3: a shift above 14 is used as 14.
            (opt::WS, 1) => repr.window_scale = Some(body[0].min(14)),
            (opt::SACK_PERM, 0) => repr.sack_permitted = true,
            (opt::SACK, n) if n % 8 == 0 => {
                for b in body.chunks_exact(8) {
                    let l = SeqNumber(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    let r = SeqNumber(u32::from_be_bytes([b[4], b[5], b[6], b[7]]));
                    repr.sack_blocks.push(l, r);
                }
            }
            (opt::TS, 8) => {
                repr.timestamp = Some(TcpTimestamp {
                    tsval: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    tsecr: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                })
            }
            (opt::MSS | opt::WS | opt::SACK_PERM | opt::SACK | opt::TS, _) => {
                return Err(Error::BadOption)
            }
            // Unknown options are skipped (RFC 9293 3.2: MUST be prepared to handle them).
            _ => {}
        }
        opts = &opts[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    // A SYN captured from Linux 6.x: MSS 1460, SACK-permitted, TS, NOP, WS 7.
    const LINUX_SYN: [u8; 40] = [
        0xa4, 0x0e, 0x00, 0x50, // ports 41998 -> 80
        0x3c, 0x2f, 0x6b, 0x01, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0xa0, 0x02, 0xfa, 0xf0, // doff 10, SYN, window 64240
        0x00, 0x00, 0x00, 0x00, // checksum (filled in the test), urgent
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
        0x04, 0x02, 0x08, 0x0a, // SACK-perm, TS
        0x11, 0x22, 0x33, 0x44, // TSval
        0x00, 0x00, 0x00, 0x00, // TSecr
        0x01, 0x03, 0x03, 0x07, // NOP, WS 7
    ];

    fn with_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
        TcpPacket::new_unchecked(&mut bytes[..]).fill_checksum(SRC, DST);
        bytes
    }

    #[test]
    fn parses_a_linux_syn() {
        let bytes = with_checksum(LINUX_SYN.to_vec());
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        let r = TcpRepr::parse(&p, SRC, DST, true).unwrap();
        assert_eq!(r.src_port, 41998);
        assert_eq!(r.dst_port, 80);
        assert_eq!(r.control, TcpControl::Syn);
        assert_eq!(r.ack_number, None);
        assert_eq!(r.window_len, 64240);
        assert_eq!(r.max_seg_size, Some(1460));
        assert!(r.sack_permitted);
        assert_eq!(r.window_scale, Some(7));
        assert_eq!(r.timestamp, Some(TcpTimestamp { tsval: 0x11223344, tsecr: 0 }));
        assert_eq!(r.segment_len(), 1);
    }

    #[test]
    fn emit_round_trips_bytes() {
        let bytes = with_checksum(LINUX_SYN.to_vec());
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        let r = TcpRepr::parse(&p, SRC, DST, true).unwrap();
        let mut out = vec![0u8; r.buffer_len()];
        r.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
        // Same options, laid out by plex: MSS, SACKOK+TS, NOP WS.
        let p2 = TcpPacket::new_checked(&out[..]).unwrap();
        assert_eq!(TcpRepr::parse(&p2, SRC, DST, true).unwrap(), r);
        assert_eq!(out, bytes, "plex lays options out as Linux does");
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let mut bytes = with_checksum(LINUX_SYN.to_vec());
        bytes[5] ^= 1;
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(TcpRepr::parse(&p, SRC, DST, true), Err(Error::BadChecksum));
    }

    #[test]
    fn truncated_and_impossible_lengths() {
        assert_eq!(TcpPacket::new_checked(&LINUX_SYN[..19]).unwrap_err(), Error::Truncated);
        // Data offset says 40 bytes, buffer has 30.
        assert_eq!(TcpPacket::new_checked(&LINUX_SYN[..30]).unwrap_err(), Error::Truncated);
        let mut b = LINUX_SYN;
        b[12] = 0x40; // data offset 4 words < 5
        assert_eq!(TcpPacket::new_checked(&b[..]).unwrap_err(), Error::BadLength);
    }

    #[test]
    fn impossible_flags_and_options() {
        let mut b = LINUX_SYN.to_vec();
        b[13] = 0x03; // SYN+FIN
        let b = with_checksum(b);
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(TcpRepr::parse(&p, SRC, DST, true), Err(Error::BadFlags));

        let mut b = LINUX_SYN.to_vec();
        b[21] = 0; // MSS option length 0
        let b = with_checksum(b);
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(TcpRepr::parse(&p, SRC, DST, true), Err(Error::BadOption));

        let mut b = LINUX_SYN.to_vec();
        b[21] = 40; // MSS option runs past the options area
        let b = with_checksum(b);
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(TcpRepr::parse(&p, SRC, DST, true), Err(Error::BadOption));
    }

    #[test]
    fn unknown_options_are_skipped() {
        let mut b = LINUX_SYN.to_vec();
        // Replace the trailing NOP+WS with an unknown 4-byte option (kind 30, MPTCP-ish).
        b[36..40].copy_from_slice(&[30, 4, 0xab, 0xcd]);
        let b = with_checksum(b);
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        let r = TcpRepr::parse(&p, SRC, DST, true).unwrap();
        assert_eq!(r.window_scale, None);
        assert_eq!(r.max_seg_size, Some(1460));
    }

    #[test]
    fn sack_blocks_are_capped_to_fit_the_options_area() {
        let mut r = TcpRepr::new(1, 2, SeqNumber(5));
        r.ack_number = Some(SeqNumber(9));
        r.timestamp = Some(TcpTimestamp { tsval: 1, tsecr: 2 });
        for i in 0..4 {
            r.sack_blocks.push(SeqNumber(100 * i), SeqNumber(100 * i + 50));
        }
        assert_eq!(r.header_len(), 20 + 12 + 4 + 24, "three blocks fit beside timestamps");
        let mut out = vec![0u8; r.buffer_len()];
        r.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
        let p = TcpPacket::new_checked(&out[..]).unwrap();
        let back = TcpRepr::parse(&p, SRC, DST, true).unwrap();
        assert_eq!(back.sack_blocks.len(), 3);
        r.timestamp = None;
        assert_eq!(r.header_len(), 20 + 4 + 32, "four blocks without timestamps");
    }

    #[test]
    fn sequence_numbers_wrap() {
        let a = SeqNumber(u32::MAX - 1);
        let b = a + 4;
        assert_eq!(b, SeqNumber(2));
        assert!(b > a);
        assert_eq!(b.diff(a), 4);
        assert_eq!(a.distance_from(b), 0);
        assert_eq!(b.distance_from(a), 4);
    }
}
