//! Interface tests: two stacks joined by a perfect in-memory wire.

use super::*;
use crate::time::Duration;

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const A_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 10]);
const B_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

fn stack(mac: MacAddr, ip: Ipv4Addr, seed: u64) -> Stack {
    let mut cfg = StackConfig::new(mac);
    cfg.seed = seed;
    cfg.tcp.delayed_ack = None;
    let mut s = Stack::new(cfg);
    s.add_address(ip, 24, false);
    s
}

fn pair() -> (Stack, Stack) {
    (stack(A_MAC, A_IP, 1), stack(B_MAC, B_IP, 2))
}

/// Move frames both ways until both are quiet; returns how many moved.
fn pump(a: &mut Stack, b: &mut Stack, now: Instant) -> usize {
    let mut buf = vec![0u8; 1600];
    let mut moved = 0;
    for _ in 0..10_000 {
        let mut any = false;
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            b.receive(now, &buf[..n]);
            moved += 1;
            any = true;
        }
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            a.receive(now, &buf[..n]);
            moved += 1;
            any = true;
        }
        if !any {
            break;
        }
    }
    moved
}

fn events(s: &mut Stack) -> Vec<(SocketHandle, SocketEvent)> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

#[test]
fn connect_accept_transfer_close() {
    let (mut a, mut b) = pair();
    let l = a.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 16).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    pump(&mut a, &mut b, t(1));
    assert_eq!(b.counters().arp_requests_out, 1);
    assert_eq!(a.counters().arp_replies_out, 1);
    assert!(events(&mut a).contains(&(l, SocketEvent::Acceptable)));
    assert!(events(&mut b).contains(&(c, SocketEvent::Tcp(Event::Connected))));
    let s = a.tcp_accept(l).unwrap();
    assert_eq!(a.tcp_accept(l), Err(ApiError::WouldBlock));

    let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for i in 0..1000 {
        if sent < msg.len() {
            sent += b.tcp_send(t(2 + i), c, &msg[sent..]).unwrap_or(0);
        }
        pump(&mut a, &mut b, t(2 + i));
        while let Ok(n) = a.tcp_recv(t(2 + i), s, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if got.len() == msg.len() {
            break;
        }
    }
    assert_eq!(got, msg);

    b.close(t(2000), c).unwrap();
    pump(&mut a, &mut b, t(2000));
    assert_eq!(a.tcp_recv(t(2000), s, &mut buf), Ok(0), "EOF after FIN");
    a.close(t(2001), s).unwrap();
    pump(&mut a, &mut b, t(2001));
    assert_eq!(a.connection_count(), 0, "passive closer freed after LAST-ACK");
    assert_eq!(b.connection_count(), 1, "active closer in TIME-WAIT");
    b.handle_timeout(t(2001 + 60_000));
    assert_eq!(b.connection_count(), 0);
    assert_eq!(a.counters().total_drops(), 0);
    assert_eq!(b.counters().total_drops(), 0);
}

#[test]
fn closed_port_gets_rst_and_connect_is_refused() {
    let (mut a, mut b) = pair();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 81)).unwrap();
    pump(&mut a, &mut b, t(1));
    assert_eq!(a.counters().tcp_rst_out, 1);
    assert_eq!(a.counters().dropped(DropReason::TcpNoSocket), 1);
    let ev = events(&mut b);
    assert!(ev.contains(&(c, SocketEvent::Tcp(Event::Reset))), "{ev:?}");
    let mut buf = [0u8; 4];
    assert_eq!(b.tcp_recv(t(2), c, &mut buf), Err(ApiError::Tcp(tcp::Error::Reset)));
}

fn icmp_echo_frame(seq: u16, data: &[u8], dst_mac: MacAddr, dst_ip: Ipv4Addr) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest { ident: 0x4242, seq_no: seq, data };
    let ip = Ipv4Repr {
        src_addr: B_IP,
        dst_addr: dst_ip,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
        dscp_ecn: 0,
        ident: 1,
        dont_frag: true,
    };
    let mut f = vec![0u8; 14 + 20 + icmp.buffer_len()];
    EthernetRepr { src_addr: B_MAC, dst_addr: dst_mac, ethertype: EtherType::Ipv4 }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut f[34..]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..]));
    f
}

#[test]
fn answers_ping() {
    let (mut a, _) = pair();
    a.receive(t(0), &icmp_echo_frame(7, b"abcdefgh", A_MAC, A_IP));
    let mut buf = vec![0u8; 1600];
    let n = a.poll_transmit(t(0), &mut buf).expect("echo reply");
    let eth = EthernetFrame::new_checked(&buf[..n]).unwrap();
    assert_eq!(eth.dst_addr(), B_MAC);
    let ipp = Ipv4Packet::new_checked(&buf[14..n]).unwrap();
    let ip = Ipv4Repr::parse(&ipp, true).unwrap();
    assert_eq!((ip.src_addr, ip.dst_addr), (A_IP, B_IP));
    let icmp = Icmpv4Repr::parse(&Icmpv4Packet::new_checked(ipp.payload()).unwrap(), true).unwrap();
    assert_eq!(icmp, Icmpv4Repr::EchoReply { ident: 0x4242, seq_no: 7, data: b"abcdefgh" });
    assert_eq!(a.counters().icmp_echo_out, 1);
}

#[test]
fn drops_are_named_and_counted() {
    let (mut a, _) = pair();
    a.receive(t(0), &[0u8; 5]);
    assert_eq!(a.counters().dropped(DropReason::EthTruncated), 1);
    a.receive(t(0), &icmp_echo_frame(1, b"x", MacAddr([2, 9, 9, 9, 9, 9]), A_IP));
    assert_eq!(a.counters().dropped(DropReason::EthNotForUs), 1);
    a.receive(t(0), &icmp_echo_frame(1, b"x", A_MAC, Ipv4Addr::new(198, 18, 0, 99)));
    assert_eq!(a.counters().dropped(DropReason::IpNotForUs), 1);
    let mut frag = icmp_echo_frame(1, b"x", A_MAC, A_IP);
    frag[14 + 6] = 0x20; // MF
    let c = crate::wire::checksum::checksum(&{
        let mut h = frag[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    a.receive(t(0), &frag);
    // A non-final fragment of 9 bytes (not a multiple of 8, RFC 791 3.2).
    assert_eq!(a.counters().dropped(DropReason::IpFragBadLength), 1);
    let mut bad = icmp_echo_frame(1, b"x", A_MAC, A_IP);
    bad[40] ^= 0xff;
    a.receive(t(0), &bad);
    assert_eq!(a.counters().dropped(DropReason::IcmpBadChecksum), 1);
    let mut buf = vec![0u8; 1600];
    assert_eq!(a.poll_transmit(t(0), &mut buf), None, "nothing answered");
    assert_eq!(a.counters().total_drops(), 5);
}

#[test]
fn internal_addresses_are_not_answered_in_arp() {
    let (mut a, mut b) = pair();
    let internal = Ipv4Addr::new(198, 18, 0, 200);
    a.add_address(internal, 24, true);
    assert!(a.has_address(internal));
    let req = ArpRepr {
        operation: ArpOperation::Request,
        source_hardware_addr: B_MAC,
        source_protocol_addr: B_IP,
        target_hardware_addr: MacAddr([0; 6]),
        target_protocol_addr: internal,
    };
    let mut f = vec![0u8; 60];
    EthernetRepr { src_addr: B_MAC, dst_addr: MacAddr::BROADCAST, ethertype: EtherType::Arp }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    req.emit(&mut ArpPacket::new_unchecked(&mut f[14..42]));
    a.receive(t(0), &f);
    assert_eq!(a.counters().dropped(DropReason::ArpNotForUs), 1);
    assert_eq!(pump(&mut a, &mut b, t(0)), 0);
}

#[test]
fn gratuitous_arp_moves_the_peers_entry() {
    let (mut a, mut b) = pair();
    // b knows A_IP at an old MAC.
    b.arp.insert(t(0), A_IP, MacAddr([2, 0, 0, 0, 0, 99]));
    a.announce(A_IP);
    assert_eq!(a.counters().gratuitous_arp_out, 2);
    pump(&mut a, &mut b, t(1));
    assert_eq!(b.arp.get(t(1), A_IP), Some(A_MAC));
}

#[test]
fn syn_cookies_when_the_syn_queue_overflows() {
    let (mut a, mut b) = pair();
    let l = a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 2).unwrap();
    // Resolve ARP first so all SYNs leave together.
    b.arp.insert(t(0), A_IP, A_MAC);
    a.arp.insert(t(0), B_IP, B_MAC);
    let clients: Vec<SocketHandle> =
        (0..4).map(|_| b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap()).collect();
    // Deliver the SYNs only, then let handshakes finish while accepting.
    let mut buf = vec![0u8; 1600];
    while let Some(n) = b.poll_transmit(t(0), &mut buf) {
        a.receive(t(0), &buf[..n]);
    }
    assert_eq!(a.listener(l).unwrap().counters.cookies_sent, 2);
    assert_eq!(a.connection_count(), 2, "only the SYN queue holds state");
    pump(&mut a, &mut b, t(1));
    let mut accepted = Vec::new();
    while let Ok(h) = a.tcp_accept(l) {
        accepted.push(h);
    }
    // Data flows on every connection, cookie ones included. (A cookie ACK that met a full
    // accept queue was dropped, as Linux does: the client's next segment carries the same
    // acknowledgment and completes the handshake then.)
    for &c in &clients {
        b.tcp_send(t(2), c, b"hi").unwrap();
    }
    pump(&mut a, &mut b, t(2));
    while let Ok(h) = a.tcp_accept(l) {
        accepted.push(h);
    }
    assert_eq!(accepted.len(), 4, "every client got through");
    assert_eq!(a.counters().tcp_syn_cookies_ok, 2);
    let mut buf = [0u8; 8];
    for h in accepted {
        assert_eq!(a.tcp_recv(t(2), h, &mut buf), Ok(2));
    }
}

#[test]
fn udp_echo_and_port_unreachable() {
    let (mut a, mut b) = pair();
    let sa = a.udp_bind(SocketAddrV4::new(A_IP, 7)).unwrap();
    let sb = b.udp_bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    b.udp_send_to(t(0), sb, SocketAddrV4::new(A_IP, 7), b"ping").unwrap();
    pump(&mut a, &mut b, t(0));
    let mut buf = [0u8; 64];
    let (n, from) = a.udp_recv_from(sa, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(*from.ip(), B_IP);
    a.udp_send_to(t(1), sa, from, b"pong").unwrap();
    pump(&mut a, &mut b, t(1));
    let (n, from) = b.udp_recv_from(sb, &mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"pong"[..], SocketAddrV4::new(A_IP, 7)));
    b.udp_send_to(t(2), sb, SocketAddrV4::new(A_IP, 9), b"nobody").unwrap();
    pump(&mut a, &mut b, t(2));
    assert_eq!(a.counters().icmp_unreachable_out, 1);
    assert_eq!(b.counters().icmp_unreachable_in, 1);
    assert_eq!(a.udp_bind(SocketAddrV4::new(A_IP, 7)), Err(ApiError::AddrInUse));
}

#[test]
fn listen_errors() {
    let (mut a, _) = pair();
    assert_eq!(
        a.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 80), 1).unwrap_err(),
        ApiError::AddrNotAvailable
    );
    a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 1).unwrap();
    assert_eq!(a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 1).unwrap_err(), ApiError::AddrInUse);
}

#[test]
fn listen_on_port_zero_picks_a_free_ephemeral_port() {
    let (mut a, mut b) = pair();
    let range = crate::cluster::EPHEMERAL_PORTS;
    let mut seen = Vec::new();
    for i in 0..50 {
        let ip = if i % 2 == 0 { A_IP } else { Ipv4Addr::UNSPECIFIED };
        let l = a.tcp_listen(t(0), SocketAddrV4::new(ip, 0), 4).unwrap();
        let local = a.tcp_listen_addr(l).unwrap();
        assert_eq!(*local.ip(), ip);
        assert!(range.contains(&local.port()), "{local}");
        // No other listener, of either address, holds the port chosen.
        assert!(!seen.contains(&local.port()), "port {} chosen twice", local.port());
        seen.push(local.port());
    }
    // The chosen port accepts connections like any other.
    let l = a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 0), 4).unwrap();
    let local = a.tcp_listen_addr(l).unwrap();
    let c = b.tcp_connect(t(0), None, local).unwrap();
    pump(&mut a, &mut b, t(1));
    assert!(a.tcp_accept(l).is_ok());
    assert_eq!(b.tcp(c).unwrap().state(), tcp::State::Established);
}

#[test]
fn random_frames_never_panic_and_are_accounted() {
    let (mut a, mut b) = pair();
    let l = a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 8).unwrap();
    let _ = l;
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    pump(&mut a, &mut b, t(1));
    b.tcp_send(t(1), c, &[9u8; 3000]).unwrap();
    // Collect real frames of every kind to mutate.
    let mut corpus = vec![icmp_echo_frame(3, b"0123456789", A_MAC, A_IP)];
    // Fragments too: of a ping and of a UDP datagram larger than the MTU.
    corpus.extend(fragment_frames(IpProtocol::Icmp, &echo_message(9, 3000), 1480, 5));
    let u = b.udp_bind(SocketAddrV4::new(B_IP, 0)).unwrap();
    b.udp_send_to(t(1), u, SocketAddrV4::new(A_IP, 7), &[5u8; 4000]).unwrap();
    let mut buf = vec![0u8; 1600];
    while let Some(n) = b.poll_transmit(t(2), &mut buf) {
        corpus.push(buf[..n].to_vec());
    }
    let mut rng = Rng::new(77);
    let accepted = |s: &Stack| {
        let c = s.counters();
        c.tcp_segs_in + c.icmp_echo_in + c.icmp_unreachable_in + c.arp_requests_in + c.arp_replies_in
            + c.udp_datagrams_in
            + c.ip_frags_in
            + c.total_drops()
    };
    for i in 0..20_000u64 {
        let mut f = corpus[rng.below(corpus.len() as u64) as usize].clone();
        match rng.below(4) {
            0 => {
                let n = 1 + rng.below(4);
                for _ in 0..n {
                    let k = rng.below(f.len() as u64) as usize;
                    f[k] ^= 1 << rng.below(8);
                }
            }
            1 => f.truncate(rng.below(f.len() as u64 + 1) as usize),
            2 => {
                let k = 14 + rng.below((f.len() - 14) as u64) as usize;
                f[k] = rng.next_u32() as u8;
            }
            _ => rng.fill(&mut f[14..]),
        }
        let before = accepted(&a);
        a.receive(t(3 + i / 100), &f);
        // Every frame is handled or dropped with a named reason (an ARP not for us counts
        // both, which is fine: at least one).
        assert!(accepted(&a) > before, "frame {i} vanished: {f:02x?}");
        while a.poll_transmit(t(3 + i / 100), &mut buf).is_some() {}
        a.handle_timeout(t(3 + i / 100));
    }
    let _ = Duration::ZERO;
}

/// A cluster double that grants bind activation for one address.
#[derive(Debug)]
struct GrantOne(Ipv4Addr);

impl Cluster for GrantOne {
    fn route_inbound(&mut self, _: Instant, _: &crate::tcp::Tuple, _: bool) -> InboundRoute {
        InboundRoute::Local
    }
    fn ephemeral_port(&mut self, now: Instant, l: Ipv4Addr, r: Option<SocketAddrV4>, rng: &mut crate::rand::Rng) -> Option<u16> {
        SingleStack.ephemeral_port(now, l, r, rng)
    }
    fn bind_address(&mut self, _: Instant, addr: Ipv4Addr) -> Option<u8> {
        (addr == self.0).then_some(28)
    }
}

/// A cluster double that routes port 81 to stack 3 and counts the questions.
#[derive(Debug, Default)]
struct Port81ToStack3 {
    asked: u32,
}

impl Cluster for Port81ToStack3 {
    fn route_inbound(&mut self, _: Instant, tuple: &crate::tcp::Tuple, _: bool) -> InboundRoute {
        self.asked += 1;
        match tuple.local.port() {
            81 => InboundRoute::Forward { stack: 3 },
            82 => InboundRoute::Reset,
            _ => InboundRoute::Local,
        }
    }
    fn ephemeral_port(&mut self, now: Instant, l: Ipv4Addr, r: Option<SocketAddrV4>, rng: &mut crate::rand::Rng) -> Option<u16> {
        SingleStack.ephemeral_port(now, l, r, rng)
    }
}

/// `receive` says what became of each frame: consumed, dropped (with the reason it counted),
/// or to be forwarded to the stack the cluster names; established traffic is matched before
/// the cluster is asked anything.
#[test]
fn receive_reports_consumed_dropped_or_forward() {
    let mut cfg = StackConfig::new(A_MAC);
    cfg.tcp.delayed_ack = None;
    let mut a = Stack::with_cluster(cfg, Box::new(Port81ToStack3::default()));
    a.add_address(A_IP, 24, false);
    let mut b = stack(B_MAC, B_IP, 2);
    let asked = |a: &mut Stack| {
        let c: &mut dyn core::any::Any = a.cluster_mut();
        c.downcast_mut::<Port81ToStack3>().map(|c| c.asked).unwrap_or(u32::MAX)
    };
    let (s, c) = connected(&mut a, &mut b, A_IP);
    let asked_by_handshake = asked(&mut a);
    assert_eq!(asked_by_handshake, 1, "only the SYN, which matched no connection");
    // Established data: consumed, and the cluster is not asked.
    b.tcp_send(t(2), c, b"hello").unwrap();
    let mut buf = vec![0u8; 1600];
    let n = b.poll_transmit(t(2), &mut buf).unwrap();
    assert_eq!(a.receive(t(2), &buf[..n]), Received::Consumed);
    assert_eq!(asked(&mut a), asked_by_handshake);
    let mut got = [0u8; 8];
    assert_eq!(a.tcp_recv(t(2), s, &mut got), Ok(5));
    // The same frame damaged: dropped under its reason.
    let mut bad = buf[..n].to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    assert_eq!(a.receive(t(2), &bad), Received::Dropped(DropReason::TcpBadChecksum));
    // A connection another stack owns: to be forwarded, not answered with a RST, not dropped.
    let c81 = b.tcp_connect(t(3), None, SocketAddrV4::new(A_IP, 81)).unwrap();
    let n = b.poll_transmit(t(3), &mut buf).unwrap();
    while a.poll_transmit(t(3), &mut vec![0u8; 1600]).is_some() {}
    let drops_before: u64 = DropReason::ALL.iter().map(|d| a.counters().dropped(*d)).sum();
    assert_eq!(a.receive(t(3), &buf[..n]), Received::Forward { stack: 3 });
    assert_eq!(a.counters().tcp_forwarded, 1);
    assert_eq!(DropReason::ALL.iter().map(|d| a.counters().dropped(*d)).sum::<u64>(), drops_before);
    assert!(a.poll_transmit(t(3), &mut buf).is_none(), "no RST for a forwarded segment");
    let _ = c81;
    // A flow the cluster knows is dead (port 82 here): a RST, counted under its own reason.
    let c82 = b.tcp_connect(t(4), None, SocketAddrV4::new(A_IP, 82)).unwrap();
    let n = b.poll_transmit(t(4), &mut buf).unwrap();
    assert_eq!(a.receive(t(4), &buf[..n]), Received::Dropped(DropReason::TcpClusterReset));
    let n = a.poll_transmit(t(4), &mut buf).expect("a RST");
    b.receive(t(4), &buf[..n]);
    assert_eq!(b.tcp(c82).map(|c| c.state()), Some(crate::tcp::State::Closed), "the peer accepted the RST");
}

fn cluster_events(s: &mut Stack) -> Vec<ClusterEvent> {
    std::iter::from_fn(|| s.poll_cluster_event()).collect()
}

/// The connection table raises one event per change, in order: installed (accepted or
/// connected), closed (and the active opener's port released), moved away (the port goes
/// with it: nothing released); listeners open and close. A stack alone queues nothing.
#[test]
fn the_cluster_hears_of_every_listener_and_connection_once() {
    let member = |mac, ip, seed| {
        let mut cfg = StackConfig::new(mac);
        cfg.seed = seed;
        cfg.tcp.delayed_ack = None;
        let mut s = Stack::with_cluster(cfg, Box::new(GrantOne(Ipv4Addr::UNSPECIFIED)));
        s.add_address(ip, 24, false);
        s
    };
    let (mut a, mut b) = (member(A_MAC, A_IP, 1), member(B_MAC, B_IP, 2));
    let (s, c) = connected(&mut a, &mut b, A_IP);
    let any80 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80);
    let tuple_a = a.tcp(s).unwrap().tuple();
    let tuple_b = b.tcp(c).unwrap().tuple();
    assert_eq!(cluster_events(&mut a), [ClusterEvent::ListenerOpened(any80), ClusterEvent::ConnectionOpened(tuple_a, crate::cluster::Opened::Passive)]);
    assert_eq!(cluster_events(&mut b), [ClusterEvent::ConnectionOpened(tuple_b, crate::cluster::Opened::Active)]);
    // The client closes first and goes through TIME-WAIT; the server's side closes at once.
    b.close(t(2), c).unwrap();
    pump(&mut a, &mut b, t(2));
    a.close(t(3), s).unwrap();
    pump(&mut a, &mut b, t(3));
    assert_eq!(cluster_events(&mut a), [ClusterEvent::ConnectionClosed(tuple_a)]);
    assert!(cluster_events(&mut b).is_empty(), "TIME-WAIT still holds the 4-tuple and the port");
    b.handle_timeout(t(200_000));
    assert_eq!(cluster_events(&mut b), [ClusterEvent::ConnectionClosed(tuple_b), ClusterEvent::PortReleased { local: tuple_b.local, remote: Some(tuple_b.remote) }]);
    // A connection that moves away: the 4-tuple and the port live on elsewhere.
    let l = a.listeners.get(&any80).copied().unwrap();
    b.tcp_connect(t(4), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    pump(&mut a, &mut b, t(4));
    let s = a.tcp_accept(l).unwrap();
    let tuple_a = a.tcp(s).unwrap().tuple();
    let _ = (cluster_events(&mut a), cluster_events(&mut b));
    a.tcp_snapshot(t(4), s, 0, b"").unwrap();
    assert_eq!(cluster_events(&mut a), [ClusterEvent::ConnectionMoved(tuple_a)]);
    a.close(t(5), l).unwrap();
    assert_eq!(cluster_events(&mut a), [ClusterEvent::ListenerClosed(any80)]);
    // A stack alone keeps no queue.
    let (mut x, mut y) = pair();
    connected(&mut x, &mut y, A_IP);
    assert!(cluster_events(&mut x).is_empty() && cluster_events(&mut y).is_empty());
}

#[test]
fn bind_to_a_cluster_address_activates_and_announces_it() {
    let vip = Ipv4Addr::new(198, 18, 0, 130);
    let mut cfg = StackConfig::new(A_MAC);
    cfg.tcp.delayed_ack = None;
    let mut a = Stack::with_cluster(cfg, Box::new(GrantOne(vip)));
    a.add_address(A_IP, 24, false);
    assert_eq!(
        a.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 131), 80), 8).err(),
        Some(ApiError::AddrNotAvailable)
    );
    assert!(a.tcp_listen(t(0), SocketAddrV4::new(vip, 80), 8).is_ok());
    assert!(a.homes().contains(&HomeAddr { addr: vip, prefix_len: 28, internal: false }));
    assert_eq!(a.counters().gratuitous_arp_out, 2, "announced in request and reply form");
}

/// Open a connection from `b` to `addr:80` on `a`; returns (a's socket, b's socket).
fn connected(a: &mut Stack, b: &mut Stack, addr: Ipv4Addr) -> (SocketHandle, SocketHandle) {
    let l = a.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 16).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(addr, 80)).unwrap();
    pump(a, b, t(1));
    (a.tcp_accept(l).unwrap(), c)
}

#[test]
fn an_address_leaving_silently_sends_nothing_and_a_reset_departure_sends_rst() {
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    for departure in [Departure::Silent, Departure::Reset] {
        let (mut a, mut b) = pair();
        a.add_address(vip, 24, false);
        let (s, c) = connected(&mut a, &mut b, vip);
        a.tcp_send(t(2), s, b"unsent data").unwrap();
        let _ = events(&mut a);
        assert_eq!(a.connections_on(vip), 1);
        a.remove_address(t(2), vip, departure);
        assert!(events(&mut a).contains(&(s, SocketEvent::Tcp(Event::Reset))), "{departure:?}: the application learns");
        let mut buf = vec![0u8; 1600];
        let mut sent = Vec::new();
        while let Some(n) = a.poll_transmit(t(3), &mut buf) {
            sent.push(buf[..n].to_vec());
        }
        // Nothing more for a silent departure, not even after the retransmission timeout.
        a.handle_timeout(t(10_000));
        while let Some(n) = a.poll_transmit(t(10_000), &mut buf) {
            sent.push(buf[..n].to_vec());
        }
        assert_eq!(a.connections_on(vip), 0, "{departure:?}");
        match departure {
            Departure::Silent => assert!(sent.is_empty(), "a fenced stack must not speak: {} frames", sent.len()),
            _ => {
                assert_eq!(sent.len(), 1);
                b.receive(t(3), &sent[0]);
                assert!(events(&mut b).contains(&(c, SocketEvent::Tcp(Event::Reset))));
            }
        }
    }
}

#[test]
fn answers_queued_for_a_departing_address_are_not_sent() {
    let (mut a, mut b) = pair();
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    a.add_address(vip, 24, false);
    // b asks for the VIP and for a's own address; a queues both ARP replies.
    let _ = b.tcp_connect(t(0), None, SocketAddrV4::new(vip, 80)).unwrap();
    let _ = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    let mut buf = vec![0u8; 1600];
    while let Some(n) = b.poll_transmit(t(0), &mut buf) {
        a.receive(t(0), &buf[..n]);
    }
    a.remove_address(t(0), vip, Departure::Silent);
    let mut senders = Vec::new();
    while let Some(n) = a.poll_transmit(t(0), &mut buf) {
        let arp = ArpPacket::new_checked(&buf[14..n]).unwrap();
        senders.push(ArpRepr::parse(&arp).unwrap().source_protocol_addr);
    }
    assert_eq!(senders, vec![A_IP], "only the reply for the address that stays");
}

#[test]
fn a_reset_that_cannot_be_routed_does_not_leak_the_connection() {
    let (mut a, mut b) = pair();
    let (_s, _c) = connected(&mut a, &mut b, A_IP);
    // The only address (and so the route to the peer) leaves with a reset departure.
    a.remove_address(t(2), A_IP, Departure::Reset);
    let mut buf = vec![0u8; 1600];
    while a.poll_transmit(t(3), &mut buf).is_some() {}
    assert_eq!(a.connection_count(), 0);
    assert!(a.counters().dropped(DropReason::NoRoute) >= 1);
}

// ---- IPv4 fragments ------------------------------------------------------------------------

/// An ICMP echo request message with `len` data bytes.
fn echo_message(seq: u16, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let icmp = Icmpv4Repr::EchoRequest { ident: 0x4242, seq_no: seq, data: &data };
    let mut m = vec![0u8; icmp.buffer_len()];
    icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut m[..]));
    m
}

/// The IP payload `msg` from B to A, as fragments of `size` bytes (B's MAC to A's).
fn fragment_frames(proto: IpProtocol, msg: &[u8], size: usize, ident: u16) -> Vec<Vec<u8>> {
    let n = msg.len().div_ceil(size);
    msg.chunks(size)
        .enumerate()
        .map(|(k, piece)| {
            let mut f = vec![0u8; 34 + piece.len()];
            EthernetRepr { src_addr: B_MAC, dst_addr: A_MAC, ethertype: EtherType::Ipv4 }
                .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
            f[34..].copy_from_slice(piece);
            let ip = Ipv4Repr {
                src_addr: B_IP,
                dst_addr: A_IP,
                next_header: proto,
                payload_len: piece.len(),
                hop_limit: 64,
                dscp_ecn: 0,
                ident,
                dont_frag: false,
            };
            let frag = wire::Ipv4Fragment { offset: k * size, more_frags: k + 1 < n };
            ip.emit_fragment(&mut Ipv4Packet::new_unchecked(&mut f[14..]), frag);
            f
        })
        .collect()
}

/// Everything `s` transmits now, reassembled with a fresh reassembler: the IP payloads of
/// the whole datagrams, and the number of frames.
fn transmitted_datagrams(s: &mut Stack, now: Instant) -> (Vec<(Ipv4Repr, Vec<u8>)>, usize) {
    let mut r = Reassembler::new(ReassemblyConfig::default());
    let mut buf = vec![0u8; 1600];
    let (mut out, mut frames) = (Vec::new(), 0);
    while let Some(n) = s.poll_transmit(now, &mut buf) {
        frames += 1;
        assert!(n <= 1514, "a frame within the MTU");
        let p = Ipv4Packet::new_checked(&buf[14..n]).unwrap();
        let (ip, frag) = Ipv4Repr::parse_fragment(&p, true).unwrap();
        match frag {
            None => out.push((ip, p.payload().to_vec())),
            Some(f) => {
                assert!(!ip.dont_frag, "fragments have DF clear");
                if let reassembly::Outcome::Complete(ip) = r.push(now, &ip, f, p.payload()) {
                    let b = r.take_output();
                    out.push((ip, b[..ip.payload_len].to_vec()));
                    r.restore_output(b);
                }
            }
        }
    }
    (out, frames)
}

#[test]
fn fragmented_pings_are_answered_in_fragments() {
    let (mut a, _) = pair();
    let mut rng = Rng::new(3);
    // ping -s 3000, -s 8000, and the largest: -s 65507 (a 65 535-octet datagram).
    for (seq, len) in [(1u16, 3000usize), (2, 8000), (3, 65507)] {
        let msg = echo_message(seq, len);
        let mut frames = fragment_frames(IpProtocol::Icmp, &msg, 1480, seq);
        for i in (1..frames.len()).rev() {
            frames.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for f in &frames {
            a.receive(t(seq as u64), f);
        }
        let (got, n) = transmitted_datagrams(&mut a, t(seq as u64));
        assert_eq!(n, frames.len(), "the reply has as many fragments as the request");
        assert_eq!(got.len(), 1);
        let (ip, payload) = &got[0];
        assert_eq!((ip.src_addr, ip.dst_addr, ip.payload_len), (A_IP, B_IP, msg.len()));
        let icmp = Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&payload[..]).unwrap(), true).unwrap();
        assert_eq!(icmp, Icmpv4Repr::EchoReply { ident: 0x4242, seq_no: seq, data: &msg[8..] });
    }
    let c = a.counters();
    assert_eq!((c.icmp_echo_in, c.icmp_echo_out, c.ip_reasm_ok), (3, 3, 3));
    assert_eq!(c.ip_frags_out, [3000, 8000, 65507].iter().map(|l: &usize| (l + 8).div_ceil(1480) as u64).sum::<u64>());
    assert_eq!(c.total_drops(), 0);
}

#[test]
fn udp_datagrams_larger_than_the_mtu_both_ways() {
    let (mut a, mut b) = pair();
    let ua = a.udp_bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7)).unwrap();
    let ub = b.udp_bind(SocketAddrV4::new(B_IP, 0)).unwrap();
    let pb = b.udp_local_addr(ub).unwrap();
    let mut buf = vec![0u8; 70_000];
    for len in [1473, 4000, 60000, 65507] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(b.udp_send_to(t(0), ub, SocketAddrV4::new(A_IP, 7), &msg), Ok(len));
        pump(&mut a, &mut b, t(1));
        let (n, from) = a.udp_recv_from(ua, &mut buf).unwrap();
        assert_eq!((n, from), (len, pb));
        assert!(buf[..n] == msg[..], "{len} bytes B -> A");
        // And back (the echo).
        assert_eq!(a.udp_send_to(t(1), ua, from, &buf[..n]), Ok(len));
        pump(&mut a, &mut b, t(2));
        let (n, _) = b.udp_recv_from(ub, &mut buf).unwrap();
        assert!(n == len && buf[..n] == msg[..], "{len} bytes A -> B");
    }
    assert_eq!(b.udp_send_to(t(3), ub, SocketAddrV4::new(A_IP, 7), &[0u8; 65508]), Err(ApiError::MessageTooLarge));
    assert_eq!(a.mms_r(), 65515);
    for s in [&a, &b] {
        assert_eq!((s.counters().ip_reasm_ok, s.counters().total_drops()), (4, 0));
    }
}

#[test]
fn an_incomplete_datagram_times_out_with_time_exceeded() {
    let (mut a, mut b) = pair();
    // A learns B's MAC (ARP) first.
    let ua = a.udp_bind(SocketAddrV4::new(A_IP, 9)).unwrap();
    a.udp_send_to(t(0), ua, SocketAddrV4::new(B_IP, 9), b"x").unwrap();
    pump(&mut a, &mut b, t(0));
    let mut msg = vec![0u8; 3008];
    msg[..8].copy_from_slice(&[0x30, 0x39, 0, 9, 0x0b, 0xc0, 0, 0]);
    let frames = fragment_frames(IpProtocol::Udp, &msg, 1480, 77);
    a.receive(t(1000), &frames[0]);
    a.receive(t(1000), &frames[2]);
    assert!(a.poll_timeout() <= Some(t(31_000)), "30 s from the first fragment");
    a.handle_timeout(t(30_999));
    assert_eq!(a.counters().ip_reasm_timeout, 0);
    a.handle_timeout(t(31_000));
    assert_eq!((a.counters().ip_reasm_timeout, a.counters().icmp_time_exceeded_out), (1, 1));
    let mut buf = vec![0u8; 1600];
    let n = a.poll_transmit(t(31_000), &mut buf).expect("ICMP Time Exceeded");
    let ip = Ipv4Packet::new_checked(&buf[14..n]).unwrap();
    let icmp = ip.payload();
    assert_eq!((icmp[0], icmp[1]), (11, 1), "Time Exceeded, fragment reassembly");
    assert_eq!(wire::checksum::checksum(icmp), 0);
    assert_eq!(&icmp[8 + 12..8 + 20], &[198, 18, 0, 1, 198, 18, 0, 10], "quotes the datagram");
    assert_eq!(&icmp[28..36], &msg[..8], "and its first 8 bytes");
    // Without fragment zero: freed silently.
    a.receive(t(40_000), &frames[1]);
    a.handle_timeout(t(70_000));
    assert_eq!((a.counters().ip_reasm_timeout, a.counters().icmp_time_exceeded_out), (2, 1));
    while let Some(n) = a.poll_transmit(t(70_000), &mut buf) {
        assert!(is_arp(&buf[..n]), "only neighbour probes may leave, no ICMP");
    }
    assert_eq!(a.reasm.in_flight(), 0, "no datagram left");
}

#[test]
fn overlapping_fragments_are_dropped_and_counted() {
    let (mut a, _) = pair();
    let msg = echo_message(4, 3000);
    let frames = fragment_frames(IpProtocol::Icmp, &msg, 1480, 4);
    // The second fragment again, 8 bytes earlier: overlaps the first.
    let mut evil = frames[1].clone();
    let off = u16::from_be_bytes([evil[20], evil[21]]) & 0x1fff;
    evil[20..22].copy_from_slice(&(0x2000 | (off - 1)).to_be_bytes());
    Ipv4Packet::new_unchecked(&mut evil[14..]).fill_checksum();
    for f in [&frames[0], &evil, &frames[1], &frames[2]] {
        a.receive(t(0), f);
    }
    let c = a.counters();
    assert_eq!(c.dropped(DropReason::IpFragOverlap), 1);
    assert_eq!(c.dropped(DropReason::IpFragOfDiscarded), 2);
    assert_eq!((c.ip_frags_in, c.ip_reasm_discarded, c.ip_reasm_ok, c.icmp_echo_in), (4, 1, 0, 0));
}

// ----------------------------------------------------------------------------------------------
// Neighbour cache (arp_cache.rs): parked sockets, bogus MACs, MAC changes.

/// Drive both stacks from `from` until `done` or `to`: frames move instantly, through `wire`,
/// which may edit a frame or drop it (false); `a_to_b` says which way it goes. Returns the time
/// `done` held.
fn drive(
    a: &mut Stack,
    b: &mut Stack,
    from: Instant,
    to: Instant,
    mut wire: impl FnMut(bool, &mut Vec<u8>) -> bool,
    mut done: impl FnMut(&mut Stack, &mut Stack) -> bool,
) -> Option<Instant> {
    let mut now = from;
    let mut buf = vec![0u8; 1600];
    for _ in 0..100_000 {
        loop {
            let mut any = false;
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                let mut f = buf[..n].to_vec();
                if wire(true, &mut f) {
                    b.receive(now, &f);
                }
                any = true;
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                let mut f = buf[..n].to_vec();
                if wire(false, &mut f) {
                    a.receive(now, &f);
                }
                any = true;
            }
            if !any {
                break;
            }
        }
        if done(a, b) {
            return Some(now);
        }
        let next = [a.poll_timeout(), b.poll_timeout()].into_iter().flatten().min();
        match next {
            Some(n) if n <= to => now = now.max(n),
            _ => return None,
        }
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    None
}

fn is_arp(f: &[u8]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06]
}

fn established(s: &mut Stack, c: SocketHandle) -> bool {
    s.tcp(c).is_some_and(|c| c.state() == State::Established)
}

#[test]
fn parked_socket_is_retried_after_its_arp_resolution_fails() {
    // Every ARP reply of the first resolution is lost. The SYN parked behind it never left,
    // so its connection had no timer: before the fix, the failed resolution handed the socket
    // "back to its own timers" that did not exist, and it stayed silent forever.
    let (mut a, mut b) = pair();
    a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 4).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    let mut replies_lost = 0;
    let at = drive(
        &mut a,
        &mut b,
        t(0),
        t(60_000),
        |a_to_b, f| {
            if a_to_b && is_arp(f) && replies_lost < 3 {
                replies_lost += 1;
                return false;
            }
            true
        },
        |_, b| established(b, c),
    );
    assert_eq!(replies_lost, 3);
    assert_eq!(b.counters().dropped(DropReason::ArpFailed), 1, "the SYN was dropped when the resolution failed");
    // Failed after 3 broadcast requests (0, 1, 2 s) at 3 s; the SYN's RTO (1 s) resolves again.
    assert_eq!(at, Some(t(4000)));
    assert_eq!(b.counters().arp_requests_out, 4);
    assert_eq!(b.arp.state(A_IP), Some(NudState::Reachable));
}

#[test]
fn bogus_mac_from_a_corrupt_reply_is_probed_and_re_resolved() {
    // ARP has no checksum: the first reply arrives with a damaged sender MAC. Nothing from
    // the peer confirms it, a retransmission timeout makes it STALE, DELAY and unicast PROBEs
    // get no answer, the entry is deleted, and a broadcast finds the right MAC (RFC 1122
    // 2.3.2.1). Before, the bogus MAC was trusted for the cache's whole 60 s TTL.
    let (mut a, mut b) = pair();
    a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 4).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    let bogus = MacAddr([2, 0, 0, 0, 0x40, 10]);
    let mut damaged = false;
    let mut to_bogus = 0;
    let at = drive(
        &mut a,
        &mut b,
        t(0),
        t(60_000),
        |a_to_b, f| {
            if a_to_b && is_arp(f) && !damaged {
                damaged = true;
                f[14 + 8..14 + 14].copy_from_slice(&bogus.0); // ARP sender hardware address
            }
            if !a_to_b && f[..6] == bogus.0 {
                to_bogus += 1;
            }
            true
        },
        |_, b| established(b, c),
    )
    .expect("connected");
    assert!(damaged);
    assert!(at <= t(16_000), "re-resolved within a few retransmissions, not after 60 s: {at:?}");
    assert_eq!(b.arp.get(at, A_IP), Some(A_MAC));
    // SYNs at 0, 1, 3, 7 s and three unicast probes went to the bogus MAC, which a dropped.
    assert!(to_bogus >= 7, "{to_bogus}");
    assert!(a.counters().dropped(DropReason::EthNotForUs) >= 7);
}

#[test]
fn a_peer_mac_change_is_learned_without_any_arp_from_it() {
    // The connection moves to a stack with another MAC (a replaced NIC, a failover) that
    // announces nothing and already knows b: b's segments go to the old MAC until the
    // neighbour entry, not confirmed by forward progress, is probed and re-resolved.
    let (mut a, mut b) = pair();
    let l = a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 4).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    pump(&mut a, &mut b, t(0));
    let s = a.tcp_accept(l).unwrap();
    assert_eq!(b.arp.get(t(0), A_IP), Some(A_MAC));
    let rec = a.tcp_snapshot(t(1), s, 1, b"").unwrap();
    let new_mac = MacAddr([2, 0, 0, 0, 0, 11]);
    let mut a2 = stack(new_mac, A_IP, 3);
    a2.arp.learn(t(1), B_IP, B_MAC, true); // REACHABLE: a2 sends no probe of its own
    let (s2, _) = a2.tcp_restore(t(1), &rec).unwrap();
    b.tcp_send(t(1), c, b"hello").unwrap();
    let mut got = [0u8; 16];
    let at = drive(&mut a2, &mut b, t(1), t(120_000), |_, _| true, |a2, _| a2.tcp_peek(s2, &mut got).unwrap_or(0) == 5)
        .expect("data got through");
    assert_eq!(&got[..5], b"hello");
    assert_eq!(b.arp.get(at, A_IP), Some(new_mac));
    assert!(at < t(20_000), "{at:?}");
    assert!(a2.counters().dropped(DropReason::EthNotForUs) >= 1, "segments went to the old MAC first");
}

/// The chaos suite's fuzz check, seed-dependent: after millions of mutated frames plex still
/// accepted the probe's connections but its answers never arrived. A fuzzed ARP reply, the
/// sender address damaged into the client's and the sender MAC into garbage, had replaced the
/// client's MAC (after locktime, and as REACHABLE: it looks solicited), and forward progress
/// from the real MAC did not correct it. It now does: a MAC only an ARP packet vouched for
/// gives way to the one segments that move a connection forward come from.
#[test]
fn a_forged_arp_reply_is_corrected_by_forward_progress_from_the_real_mac() {
    let (mut a, mut b) = pair();
    let l = a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 4).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    pump(&mut a, &mut b, t(0));
    let s = a.tcp_accept(l).unwrap();
    let bogus = MacAddr([2, 0xde, 0xad, 0, 0, 1]);
    let forged = ArpRepr {
        operation: ArpOperation::Reply,
        source_hardware_addr: bogus,
        source_protocol_addr: B_IP,
        target_hardware_addr: A_MAC,
        target_protocol_addr: A_IP,
    };
    let mut f = vec![0u8; 60];
    EthernetRepr { src_addr: B_MAC, dst_addr: A_MAC, ethertype: EtherType::Arp }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    forged.emit(&mut ArpPacket::new_unchecked(&mut f[14..42]));
    a.receive(t(2_000), &f);
    assert_eq!(a.arp.get(t(2_000), B_IP), Some(bogus), "poisoned (it is an ARP reply after locktime)");
    // The client sends a request: forward progress, from its real MAC.
    b.tcp_send(t(2_000), c, b"GET").unwrap();
    pump(&mut a, &mut b, t(2_000));
    assert_eq!(a.arp.get(t(2_000), B_IP), Some(B_MAC), "repaired by the segment's source MAC");
    assert_eq!(a.counters().arp_repaired, 1);
    let mut buf = [0u8; 8];
    assert_eq!(a.tcp_recv(t(2_000), s, &mut buf), Ok(3));
    // The answer reaches the client at once (no wait for NUD's probes, seconds later).
    a.tcp_send(t(2_000), s, b"200").unwrap();
    pump(&mut a, &mut b, t(2_000));
    assert_eq!(b.tcp_recv(t(2_000), c, &mut buf), Ok(3));
    // A proven MAC is not replaced by another source of progress (only ARP moves it).
    let other = MacAddr([2, 0, 0, 0, 0, 0x77]);
    a.arp.confirm(t(2_001), B_IP, other, || true);
    assert_eq!(a.arp.get(t(2_001), B_IP), Some(B_MAC));
}

/// On an internal address (a distributed DVIPA on a target) segments come through the router,
/// with the router's MAC: forward progress there repairs nothing.
#[test]
fn progress_on_an_internal_address_does_not_repair_the_neighbour() {
    let (mut a, mut b) = pair();
    let internal = Ipv4Addr::new(198, 18, 0, 200);
    a.add_address(internal, 24, true);
    b.arp.learn(t(0), internal, A_MAC, true);
    let l = a.tcp_listen(t(0), SocketAddrV4::new(internal, 80), 4).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(internal, 80)).unwrap();
    pump(&mut a, &mut b, t(0));
    let s = a.tcp_accept(l).unwrap();
    let elsewhere = MacAddr([2, 0, 0, 0, 0, 0x42]);
    a.arp.learn(t(2_000), B_IP, elsewhere, true);
    b.tcp_send(t(2_000), c, b"GET").unwrap();
    pump(&mut a, &mut b, t(2_000));
    let mut buf = [0u8; 8];
    assert_eq!(a.tcp_recv(t(2_000), s, &mut buf), Ok(3), "the segment made progress");
    assert_eq!((a.arp.get(t(2_000), B_IP), a.counters().arp_repaired), (Some(elsewhere), 0));
}

/// it/40-distributor (then it/50) found it: after a takeover the new router (also a target, its address no longer
/// internal) got its clients' segments through the dead router's fast path, with the dead
/// router's MAC, and "repaired" its clients' entries to it: its answers went nowhere. Frames
/// from the cluster's other stacks teach nothing.
#[test]
fn progress_forwarded_by_another_stack_of_the_cluster_repairs_nothing() {
    let (mut a, mut b) = pair();
    let router = MacAddr([2, 0, 0, 0, 0, 0x99]);
    a.set_cluster_macs(&[router]);
    let l = a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 4).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    pump(&mut a, &mut b, t(0));
    let s = a.tcp_accept(l).unwrap();
    a.arp.learn(t(2_000), B_IP, B_MAC, true);
    b.tcp_send(t(2_000), c, b"GET").unwrap();
    // b's segment arrives as the router forwarded it: its source MAC is the router's.
    let mut buf = vec![0u8; 2048];
    while let Some(n) = b.poll_transmit(t(2_000), &mut buf) {
        let mut f = buf[..n].to_vec();
        f[6..12].copy_from_slice(&router.0);
        a.receive(t(2_000), &f);
    }
    let mut got = [0u8; 8];
    assert_eq!(a.tcp_recv(t(2_000), s, &mut got), Ok(3), "the segment made progress");
    assert_eq!((a.arp.get(t(2_000), B_IP), a.counters().arp_repaired), (Some(B_MAC), 0));
}

#[test]
fn an_arp_request_from_a_new_mac_replaces_the_entry_as_stale() {
    let (_, mut b) = pair();
    b.arp.learn(t(0), A_IP, A_MAC, true);
    let new_mac = MacAddr([2, 0, 0, 0, 0, 11]);
    let req = ArpRepr {
        operation: ArpOperation::Request,
        source_hardware_addr: new_mac,
        source_protocol_addr: A_IP,
        target_hardware_addr: MacAddr([0; 6]),
        target_protocol_addr: B_IP,
    };
    let mut f = vec![0u8; 60];
    EthernetRepr { src_addr: new_mac, dst_addr: MacAddr::BROADCAST, ethertype: EtherType::Arp }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    req.emit(&mut ArpPacket::new_unchecked(&mut f[14..42]));
    // Within locktime (1 s) of the reply, the first answer holds (arp_cache.rs).
    b.receive(t(1), &f);
    assert_eq!(b.arp.get(t(1), A_IP), Some(A_MAC));
    assert_eq!(b.counters().arp_changes_locked, 1);
    b.receive(t(1_000), &f);
    assert_eq!(b.arp.get(t(1_000), A_IP), Some(new_mac));
    assert_eq!(b.arp.state(A_IP), Some(NudState::Stale));
}

#[test]
fn a_lost_window_update_does_not_stall_a_small_window() {
    // sim_handoff seeds 1077 and 1210: data queued, nothing in flight, the peer's window too
    // small to send into under sender SWS avoidance (RFC 9293 3.8.6.2.1), and the window
    // update that would open it lost. Only a timer can get out of that: the persist timer,
    // which used to run for a zero window only.
    let mut a = {
        let mut cfg = StackConfig::new(A_MAC);
        cfg.seed = 1;
        cfg.tcp.delayed_ack = None;
        cfg.tcp.recv_buffer = 2000;
        let mut s = Stack::new(cfg);
        s.add_address(A_IP, 24, false);
        s
    };
    let mut b = stack(B_MAC, B_IP, 2);
    let l = a.tcp_listen(t(0), SocketAddrV4::new(A_IP, 80), 4).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    pump(&mut a, &mut b, t(0));
    let s = a.tcp_accept(l).unwrap();
    assert_eq!(b.tcp_send(t(1), c, &[7u8; 3000]), Ok(3000));
    pump(&mut a, &mut b, t(1));
    // a holds one full segment and offers the 540 bytes left: b keeps the rest back.
    let mut buf = vec![0u8; 4000];
    let got = a.tcp_recv(t(2), s, &mut buf).unwrap();
    assert!(got < 2000, "{got}");
    // The application read: a's window update (and everything after it) is lost.
    let mut more = 0;
    drive(&mut a, &mut b, t(2), t(30_000), |a_to_b, _| !a_to_b, |a, _| {
        more += a.tcp_recv(t(2), s, &mut buf).unwrap_or(0);
        more > 0
    })
    .expect("the sender got past the small window on its own timer");
}

#[test]
fn bytes_and_fin_before_accept_are_raised_at_accept() {
    // Found by the kv example on two queues: a client whose request (and FIN) arrived before
    // the application accepted never got an answer, as no Readable event was ever raised.
    let (mut a, mut b) = pair();
    let l = a.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 16).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    pump(&mut a, &mut b, t(1));
    b.tcp_send(t(2), c, b"GET x").unwrap();
    b.tcp_shutdown(t(2), c).unwrap();
    pump(&mut a, &mut b, t(3));
    assert!(events(&mut a).iter().all(|&(h, _)| h == l), "nothing but Acceptable before the accept");
    let s = a.tcp_accept(l).unwrap();
    let evs = events(&mut a);
    assert!(evs.contains(&(s, SocketEvent::Tcp(Event::Readable))), "{evs:?}");
    assert!(evs.contains(&(s, SocketEvent::Tcp(Event::PeerClosed))), "{evs:?}");
    // A connection accepted with nothing waiting raises nothing.
    let c2 = b.tcp_connect(t(4), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    pump(&mut a, &mut b, t(5));
    events(&mut a);
    let s2 = a.tcp_accept(l).unwrap();
    assert!(events(&mut a).is_empty());
    let _ = (c2, s2);
}
