//! Wire formats: checked zero-copy packet views and high-level `Repr`s.
//!
//! Every format follows the same pattern (smoltcp's): `Packet::new_checked(buf)` verifies that
//! every accessor is in bounds, so no accessor can panic afterwards; `Repr::parse(&packet)` turns
//! a view into a value that cannot hold an impossible state (a TCP segment with SYN and FIN, an
//! IPv4 header whose length is shorter than 20 bytes); `Repr::emit` writes a value back into a
//! buffer of `Repr::buffer_len()` bytes, computing checksums. Input from the network reaches the
//! rest of the stack only as a `Repr`.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use std::net::Ipv4Addr;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetFrame, EthernetRepr, MacAddr};
pub use icmpv4::{Icmpv4Packet, Icmpv4Repr};
pub use ipv4::{IpProtocol, Ipv4Fragment, Ipv4Packet, Ipv4Repr};
pub use tcp::{SackBlocks, SeqNumber, TcpControl, TcpPacket, TcpRepr, TcpTimestamp};
pub use udp::{UdpPacket, UdpRepr};

/// Why a buffer could not be parsed. The interface maps each to a named drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer is shorter than the header or than a length field claims.
    Truncated,
    /// A length field holds an impossible value (IHL < 5, TCP data offset < 5, ...).
    BadLength,
    /// The checksum does not verify.
    BadChecksum,
    /// The version field is not the one this parser handles.
    BadVersion,
    /// An IPv4 fragment: plex does not reassemble (it sets DF and uses PMTU discovery).
    Fragment,
    /// A TCP flag combination no legal segment carries (SYN+FIN, SYN+RST).
    BadFlags,
    /// An option whose length byte is impossible.
    BadOption,
    /// A well-formed packet of a kind this stack does not handle.
    Unsupported,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Error::Truncated => "truncated",
            Error::BadLength => "impossible length field",
            Error::BadChecksum => "bad checksum",
            Error::BadVersion => "bad version",
            Error::Fragment => "fragment",
            Error::BadFlags => "impossible flag combination",
            Error::BadOption => "malformed option",
            Error::Unsupported => "unsupported",
        };
        f.write_str(s)
    }
}

impl std::error::Error for Error {}

/// The result of parsing: a value, or why the buffer is unacceptable.
pub type Result<T> = core::result::Result<T, Error>;
