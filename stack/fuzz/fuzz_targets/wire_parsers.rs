//! Every wire parser on arbitrary bytes: no panic, and what parses re-emits to something that
//! parses to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stack::wire::*;

fuzz_target!(|data: &[u8]| {
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    if let Ok(f) = EthernetFrame::new_checked(data) {
        let _ = EthernetRepr::parse(&f);
    }
    if let Ok(p) = ArpPacket::new_checked(data) {
        if let Ok(r) = ArpRepr::parse(&p) {
            let mut out = vec![0u8; r.buffer_len()];
            r.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
            assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&out[..]).unwrap()).unwrap(), r);
        }
    }
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let _ = Ipv4Repr::parse(&p, true);
        let _ = p.payload();
    }
    if let Ok(p) = Icmpv4Packet::new_checked(data) {
        let _ = Icmpv4Repr::parse(&p, false);
    }
    if data.len() >= 8 {
        let (src, dst) = (ip(&data[..4]), ip(&data[4..8]));
        let body = &data[8..];
        if let Ok(p) = UdpPacket::new_checked(body) {
            let _ = UdpRepr::parse(&p, src, dst, false);
        }
        if let Ok(p) = TcpPacket::new_checked(body) {
            if let Ok(r) = TcpRepr::parse(&p, src, dst, false) {
                let mut out = vec![0u8; r.buffer_len()];
                r.emit(&mut TcpPacket::new_unchecked(&mut out[..]), src, dst);
                let back = TcpRepr::parse(&TcpPacket::new_checked(&out[..]).unwrap(), src, dst, true).unwrap();
                assert_eq!((back.seq_number, back.ack_number, back.control), (r.seq_number, r.ack_number, r.control));
                assert_eq!(back.payload, r.payload);
            }
        }
    }
});
