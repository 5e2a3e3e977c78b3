//! Arbitrary frames into a stack with a listener, a connection and a UDP socket: never a
//! panic, and every frame is counted (handled or dropped under a named reason).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stack::iface::{Stack, StackConfig};
use stack::time::Instant;
use stack::wire::{Ipv4Addr, MacAddr};
use std::net::SocketAddrV4;

fuzz_target!(|data: &[u8]| {
    let mut s = Stack::new(StackConfig::new(MacAddr([2, 0, 0, 0, 0, 10])));
    let me = Ipv4Addr::new(198, 18, 0, 10);
    s.add_address(me, 24, false);
    let _ = s.tcp_listen(Instant::ZERO, SocketAddrV4::new(me, 80), 4);
    let _ = s.udp_bind(SocketAddrV4::new(me, 7));
    let _ = s.tcp_connect(Instant::ZERO, None, SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80));
    let mut buf = vec![0u8; 2048];
    // Frames separated by a 2-byte length prefix.
    let mut rest = data;
    let mut t = 0u64;
    while rest.len() >= 2 {
        let n = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let frame = &rest[2..2 + n];
        rest = &rest[2 + n..];
        t += 1000;
        let now = Instant::from_micros(t);
        s.receive(now, frame);
        while s.poll_transmit(now, &mut buf).is_some() {}
        s.handle_timeout(now);
    }
});
