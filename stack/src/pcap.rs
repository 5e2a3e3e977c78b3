//! Classic libpcap files (the format tcpdump and Wireshark read), written to any
//! `std::io::Write` the caller provides: the simulator captures into memory, the poll loop
//! into a file. Nothing here allocates per packet.

use std::io::{self, Write};

use crate::time::Instant;

/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// The snapshot length written in the global header: a packet longer than this is recorded cut
/// to its first `SNAPLEN` bytes (its original length is kept in the record header).
pub const SNAPLEN: u32 = 65535;

#[derive(Debug)]
/// Writes a classic pcap file (microsecond timestamps, little-endian, version 2.4) to `W`: the
/// global header on creation, then one record per packet. Buffering is the caller's choice of `W`.
pub struct PcapWriter<W: Write> {
    out: W,
}

/// The 24-byte global header.
pub fn global_header(linktype: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone and sigfigs stay zero.
    h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    h[20..24].copy_from_slice(&linktype.to_le_bytes());
    h
}

/// The 16-byte record header of a packet of `len` bytes captured at `ts`.
pub fn record_header(ts: Instant, len: usize) -> [u8; 16] {
    let us = ts.total_micros();
    let caplen = (len as u32).min(SNAPLEN);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&((us / 1_000_000) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
    h[8..12].copy_from_slice(&caplen.to_le_bytes());
    h[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

impl<W: Write> PcapWriter<W> {
    /// Write the global header.
    pub fn new(mut out: W, linktype: u32) -> io::Result<Self> {
        out.write_all(&global_header(linktype))?;
        Ok(PcapWriter { out })
    }

    /// Append one packet captured at `ts` (written as seconds and microseconds since the driver's
    /// epoch, not wall-clock time), cut to [`SNAPLEN`] bytes.
    pub fn write_packet(&mut self, ts: Instant, frame: &[u8]) -> io::Result<()> {
        let caplen = frame.len().min(SNAPLEN as usize);
        self.out.write_all(&record_header(ts, frame.len()))?;
        self.out.write_all(&frame[..caplen])
    }

    /// Flush the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer, unflushed records and all.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_header_and_record() {
        let mut w = PcapWriter::new(Vec::new(), LINKTYPE_ETHERNET).unwrap();
        w.write_packet(Instant::from_micros(3_000_042), &[0xaa, 0xbb]).unwrap();
        let b = w.into_inner();
        assert_eq!(
            b,
            vec![
                0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0, //
                3, 0, 0, 0, 42, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0xaa, 0xbb,
            ]
        );
    }
}
