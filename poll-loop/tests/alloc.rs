//! No allocation per call on the blocking API's data path: request/response round trips
//! between two threads over two in-memory stacks, counted by an instrumented global
//! allocator (this test binary's only test, so the counts are this test's alone).

// The test plays application threads and the poll threads.
#![allow(clippy::disallowed_methods)]

use std::alloc::System;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread;

use poll_loop::api::{bridge, loopback::Loopback};
use stack::iface::{Stack, StackConfig};
use stack::wire::MacAddr;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn stack(last: u8, ip: Ipv4Addr) -> Stack {
    let mut cfg = StackConfig::new(MacAddr([2, 0, 0, 0, 0, last]));
    cfg.seed = last as u64;
    let mut s = Stack::new(cfg);
    s.add_address(ip, 24, false);
    s
}

#[test]
fn round_trips_allocate_nothing() {
    let a = Ipv4Addr::new(198, 18, 0, 10);
    let (server, ba) = bridge(None);
    let (client, bb) = bridge(None);
    let mut driver = Loopback::new(stack(10, a), ba, stack(1, Ipv4Addr::new(198, 18, 0, 1)), bb).spawn().unwrap();
    let l = server.tcp_listen(SocketAddrV4::new(a, 7), 8).unwrap();
    let echo = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 64];
        while let Ok(n @ 1..) = s.read(&mut b) {
            s.write_all(&b[..n]).unwrap();
        }
    });
    let mut c = client.tcp_connect(SocketAddrV4::new(a, 7)).unwrap();
    c.set_nodelay(true).unwrap();
    let round_trip = |c: &mut poll_loop::api::TcpStream| {
        let mut b = [0u8; 32];
        c.write_all(&[1u8; 32]).unwrap();
        c.read_exact(&mut b).unwrap();
    };
    // Warm up: the sockets' buffers, the channels' and the stacks' first-use allocations.
    for _ in 0..200 {
        round_trip(&mut c);
    }
    const N: usize = 2000;
    let region = Region::new(GLOBAL);
    for _ in 0..N {
        round_trip(&mut c);
    }
    let stats = region.change();
    drop(c);
    echo.join().unwrap();
    driver.stop();
    eprintln!("{N} round trips (2 writes, 2+ reads each, both stacks and bridges): {stats:?}");
    // Everything that ran meanwhile (both application threads, both bridges, both stacks)
    // allocated less than once per 100 round trips: nothing per call.
    assert!(stats.allocations < N / 100, "{} allocations in {N} round trips", stats.allocations);
}
