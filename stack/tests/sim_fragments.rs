//! UDP datagrams larger than the MTU over an impaired simulated link: fragmented by the
//! sender, reordered, duplicated, corrupted and lost on the way, reassembled (or timed out)
//! by the receiver, echoed back the same way. Every datagram that arrives is byte-exact, and
//! the reassembly buffers are empty once the timers have run.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddrV4};

mod support;

use stack::iface::{ApiError, DropReason, Stack, StackConfig};
use stack::rand::Rng;
use stack::sim::{LinkConfig, Sim};
use stack::time::Duration;
use stack::wire::MacAddr;

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn node(mac: u8, ip: Ipv4Addr, seed: u64) -> Stack {
    let mut cfg = StackConfig::new(MacAddr([2, 0, 0, 0, 0, mac]));
    cfg.seed = seed;
    let mut s = Stack::new(cfg);
    s.add_address(ip, 24, false);
    s
}

fn link() -> LinkConfig {
    LinkConfig {
        delay: Duration::from_micros(50),
        jitter: Duration::from_micros(20),
        loss: 0.002,
        duplicate: 0.05,
        corrupt: 0.002,
        reorder: 0.2,
        reorder_delay: Duration::from_micros(300),
        ..LinkConfig::default()
    }
}

#[test]
fn fragmented_udp_echo_over_an_impaired_link() {
    for seed in support::seeds(&[1, 2, 3]) {
        let mut sim = Sim::new(seed);
        let a = sim.add_node(node(10, A_IP, seed), link(), link());
        let b = sim.add_node(node(1, B_IP, seed + 100), link(), link());
        let ua = sim.node_mut(a).udp_bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7)).unwrap();
        let ub = sim.node_mut(b).udp_bind(SocketAddrV4::new(B_IP, 5000)).unwrap();
        let mut rng = Rng::new(seed);
        let mut sent = Vec::new();
        let mut buf = vec![0u8; 70_000];
        let (mut intact, mut total_back) = (0, 0);
        for k in 0..40u32 {
            let len = 1500 + rng.below(64_000) as usize;
            let mut msg = vec![0u8; len];
            rng.fill(&mut msg);
            msg[..4].copy_from_slice(&k.to_be_bytes());
            let now = sim.now();
            // A full send queue (datagrams still waiting for ARP or the link) refuses the
            // datagram, as a UDP socket does: it is simply not sent.
            match sim.node_mut(b).udp_send_to(now, ub, SocketAddrV4::new(A_IP, 7), &msg) {
                Ok(_) | Err(ApiError::WouldBlock) => {}
                Err(e) => panic!("seed {seed}: send failed: {e}"),
            }
            sent.push(msg);
            sim.kick();
            // Run a while, echoing at A and collecting at B.
            let until = sim.now() + Duration::from_millis(20);
            sim.run_until(until, |s| {
                let now = s.now();
                let sa = s.node_mut(a);
                while let Ok((n, from)) = sa.udp_recv_from(ua, &mut buf) {
                    match sa.udp_send_to(now, ua, from, &buf[..n]) {
                        Ok(_) | Err(ApiError::WouldBlock) => {}
                        Err(e) => panic!("seed {seed}: echo failed: {e}"),
                    }
                }
                let sb = s.node_mut(b);
                while let Ok((n, _)) = sb.udp_recv_from(ub, &mut buf) {
                    let id = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    total_back += 1;
                    if id < sent.len() && buf[..n] == sent[id][..] {
                        intact += 1;
                    }
                }
                false
            });
        }
        // Let every reassembly timer run out.
        sim.run_for(Duration::from_secs(40));
        let (ca, cb) = (sim.node(a).counters().clone(), sim.node(b).counters().clone());
        assert_eq!(intact, total_back, "seed {seed}: every datagram that came back is byte-exact");
        assert!(intact >= 5, "seed {seed}: some datagrams made it both ways ({intact} of 40)");
        assert!(ca.dropped(DropReason::IpFragDuplicate) > 0, "seed {seed}: duplicates were seen and dropped alone");
        assert!(ca.ip_reasm_timeout + cb.ip_reasm_timeout > 0, "seed {seed}: incomplete datagrams timed out");
        for s in [sim.node(a), sim.node(b)] {
            assert_eq!(s.poll_timeout(), None, "seed {seed}: nothing left in reassembly");
        }
        eprintln!(
            "seed {seed}: {intact}/40 echoed intact; A: reassembled {} timed out {} discarded {} dup {}",
            ca.ip_reasm_ok,
            ca.ip_reasm_timeout,
            ca.ip_reasm_discarded,
            ca.dropped(DropReason::IpFragDuplicate)
        );
    }
}
