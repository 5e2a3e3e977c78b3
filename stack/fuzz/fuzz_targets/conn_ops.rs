//! Connection operations driven by the fuzzer: two stacks, a lossy in-memory wire whose
//! drops, delays and application calls come from the input. Never a panic; bytes that arrive
//! are the bytes that were sent, in order.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stack::iface::{Stack, StackConfig};
use stack::time::Instant;
use stack::wire::{Ipv4Addr, MacAddr};
use std::net::SocketAddrV4;

fuzz_target!(|data: &[u8]| {
    let a_ip = Ipv4Addr::new(198, 18, 0, 10);
    let mk = |last: u8, ip: Ipv4Addr| {
        let mut s = Stack::new(StackConfig::new(MacAddr([2, 0, 0, 0, 0, last])));
        s.add_address(ip, 24, false);
        s
    };
    let (mut a, mut b) = (mk(10, a_ip), mk(1, Ipv4Addr::new(198, 18, 0, 1)));
    let l = a.tcp_listen(Instant::ZERO, SocketAddrV4::new(a_ip, 80), 4).unwrap();
    let c = b.tcp_connect(Instant::ZERO, None, SocketAddrV4::new(a_ip, 80)).unwrap();
    let mut s = None;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut buf = vec![0u8; 2048];
    let mut rbuf = vec![0u8; 4096];
    let mut now = 0u64;
    for &op in data {
        now += 1 + (op as u64 & 0x0f) * 500;
        let t = Instant::from_micros(now);
        match op >> 4 {
            0..=5 => {
                // Move frames; drop the ones whose index matches the op bits.
                let mut i = 0u8;
                while let Some(n) = b.poll_transmit(t, &mut buf) {
                    i = i.wrapping_add(1);
                    if i & 7 != op & 7 { a.receive(t, &buf[..n]); }
                }
                while let Some(n) = a.poll_transmit(t, &mut buf) {
                    i = i.wrapping_add(1);
                    if i & 7 != (op >> 1) & 7 { b.receive(t, &buf[..n]); }
                }
            }
            6..=8 => {
                let data: Vec<u8> = (sent..sent + 300).map(|i| i as u8).collect();
                sent += b.tcp_send(t, c, &data).unwrap_or(0) as u64;
            }
            9..=11 => {
                s = s.or_else(|| a.tcp_accept(l).ok());
                if let Some(s) = s {
                    if let Ok(n) = a.tcp_recv(t, s, &mut rbuf) {
                        for (k, x) in rbuf[..n].iter().enumerate() {
                            assert_eq!(*x, (got + k as u64) as u8);
                        }
                        got += n as u64;
                    }
                }
            }
            12 => { let _ = b.tcp_shutdown(t, c); }
            13 => { let _ = b.tcp_abort(t, c); }
            _ => { a.handle_timeout(t); b.handle_timeout(t); }
        }
    }
    assert!(got <= sent);
});
