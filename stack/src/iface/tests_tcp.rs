//! Listener, SYN-cookie, resource-limit and rate-limit tests with literal frames: a scripted
//! peer builds every segment byte by byte, and every frame plex sends is parsed back.

use super::*;
use crate::time::Duration;
use crate::wire::TcpTimestamp;

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const A_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 10]);
const B_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
/// The MAC spoofed SYNs come from (nobody answers there).
const SPOOF_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xee]);

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn server(cfg: impl FnOnce(&mut StackConfig)) -> Stack {
    let mut c = StackConfig::new(A_MAC);
    c.seed = 7;
    c.tcp.delayed_ack = None;
    cfg(&mut c);
    let mut s = Stack::new(c);
    s.add_address(A_IP, 24, false);
    s
}

/// A segment the scripted peer sends.
#[derive(Debug, Clone, Default)]
struct Out {
    src: Option<SocketAddrV4>,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    rst: bool,
    win: u16,
    mss: Option<u16>,
    ws: Option<u8>,
    sack_perm: bool,
    ts: Option<(u32, u32)>,
    payload: Vec<u8>,
}

const PEER: SocketAddrV4 = SocketAddrV4::new(B_IP, 40000);

fn tcp_frame(o: &Out, src_mac: MacAddr, dst_port: u16) -> Vec<u8> {
    let src = o.src.unwrap_or(PEER);
    let mut r = TcpRepr::new(src.port(), dst_port, SeqNumber(o.seq));
    r.control = if o.syn {
        TcpControl::Syn
    } else if o.rst {
        TcpControl::Rst
    } else {
        TcpControl::None
    };
    r.ack_number = o.ack.map(SeqNumber);
    r.window_len = o.win;
    r.max_seg_size = o.mss;
    r.window_scale = o.ws;
    r.sack_permitted = o.sack_perm;
    r.timestamp = o.ts.map(|(tsval, tsecr)| TcpTimestamp { tsval, tsecr });
    r.payload = &o.payload;
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: A_IP,
        next_header: IpProtocol::Tcp,
        payload_len: r.buffer_len(),
        hop_limit: 64,
        dscp_ecn: 0,
        ident: 1,
        dont_frag: true,
    };
    let mut f = vec![0u8; 14 + 20 + r.buffer_len()];
    EthernetRepr { src_addr: src_mac, dst_addr: A_MAC, ethertype: EtherType::Ipv4 }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    r.emit(&mut TcpPacket::new_unchecked(&mut f[34..]), *src.ip(), A_IP);
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..]));
    f
}

fn send(s: &mut Stack, now: Instant, o: &Out) {
    s.receive(now, &tcp_frame(o, B_MAC, 80));
}

/// A segment plex sent, parsed.
#[derive(Debug, Clone)]
struct In {
    dst: SocketAddrV4,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    rst: bool,
    win: u16,
    ws: Option<u8>,
    ts: Option<(u32, u32)>,
    len: usize,
}

/// Every TCP segment plex has to send now (other frames are skipped).
fn drain(s: &mut Stack, now: Instant) -> Vec<In> {
    let mut buf = vec![0u8; 1600];
    let mut out = Vec::new();
    while let Some(n) = s.poll_transmit(now, &mut buf) {
        let f = &buf[..n];
        if f[12..14] != [0x08, 0x00] || f[23] != 6 {
            continue;
        }
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        let ipr = Ipv4Repr::parse(&ip, true).unwrap();
        let p = TcpPacket::new_checked(ip.payload()).unwrap();
        let r = TcpRepr::parse(&p, ipr.src_addr, ipr.dst_addr, true).unwrap();
        out.push(In {
            dst: SocketAddrV4::new(ipr.dst_addr, r.dst_port),
            seq: r.seq_number.0,
            ack: r.ack_number.map(|a| a.0),
            syn: r.control == TcpControl::Syn,
            rst: r.control == TcpControl::Rst,
            win: r.window_len,
            ws: r.window_scale,
            ts: r.timestamp.map(|x| (x.tsval, x.tsecr)),
            len: r.payload.len(),
        });
    }
    out
}

/// A listener with a SYN queue of one, already full (one spoofed SYN): the next SYN gets a
/// cookie.
fn cookie_mode_listener(now: Instant) -> (Stack, SocketHandle) {
    let mut s = server(|_| {});
    let l = s.tcp_listen(now, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 1).unwrap();
    let spoofed = Out { src: Some(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 1)), seq: 1, syn: true, win: 1000, ..Out::default() };
    s.receive(now, &tcp_frame(&spoofed, SPOOF_MAC, 80));
    drain(&mut s, now);
    (s, l)
}

/// Handshake through a cookie; returns the server's connection, the cookie SYN-ACK.
fn cookie_handshake(s: &mut Stack, l: SocketHandle, now: Instant, syn: Out, ack_win: u16) -> (SocketHandle, In) {
    send(s, now, &Out { syn: true, ..syn.clone() });
    let sa = drain(s, now);
    assert_eq!(sa.len(), 1, "{sa:?}");
    let sa = sa[0].clone();
    assert!(sa.syn && sa.ack == Some(syn.seq.wrapping_add(1)));
    assert_eq!(s.listener(l).unwrap().counters.cookies_sent, 1, "answered with a cookie");
    let ack = Out {
        seq: syn.seq.wrapping_add(1),
        ack: Some(sa.seq.wrapping_add(1)),
        win: ack_win,
        ts: syn.ts.map(|(v, _)| (v + 1, sa.ts.unwrap().0)),
        ..Out::default()
    };
    send(s, now + Duration::from_millis(1), &ack);
    assert_eq!(s.listener(l).unwrap().counters.cookies_valid, 1);
    let h = s.tcp_accept(l).expect("established from the cookie");
    (h, sa)
}

/// Queue `n` bytes on `h` and return what goes out at once.
fn send_data(s: &mut Stack, h: SocketHandle, now: Instant, n: usize) -> Vec<In> {
    let data = vec![7u8; n];
    let q = s.tcp_send(now, h, &data).unwrap();
    assert!(q > 0);
    drain(s, now).into_iter().filter(|x| x.len > 0).collect()
}

// ---- SYN cookies (RFC 4987 3.6) -----------------------------------------------------------

/// Under a SYN flood the cookie SYN-ACKs queue up faster than they leave; an established
/// connection's data must still get out: control frames and socket segments take turns
/// (with strict priority the first 40 frames were all SYN-ACKs).
#[test]
fn a_syn_flood_does_not_starve_established_connections() {
    let now = t(5_000);
    let (mut s, l) = cookie_mode_listener(now);
    let syn = Out { seq: 5, win: 65535, mss: Some(1460), ..Out::default() };
    let (h, _) = cookie_handshake(&mut s, l, now, syn, 65535);
    assert!(s.tcp_send(now, h, &[7u8; 64 * 1024]).unwrap() > 0);
    for i in 0..200u16 {
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 128 + (i % 100) as u8), 1000 + i);
        let spoofed = Out { src: Some(src), seq: i as u32 * 7919, syn: true, win: 1000, ..Out::default() };
        s.receive(now, &tcp_frame(&spoofed, SPOOF_MAC, 80));
    }
    let mut buf = vec![0u8; 1600];
    let (mut data, mut synacks) = (0, 0);
    for _ in 0..40 {
        let n = s.poll_transmit(now, &mut buf).expect("frames to send");
        let ip = Ipv4Packet::new_checked(&buf[14..n]).unwrap();
        let seg = TcpPacket::new_checked(ip.payload()).unwrap();
        if ip.dst_addr() == B_IP && !seg.payload().is_empty() {
            data += 1;
        } else if seg.flags() & 0x12 == 0x12 {
            synacks += 1;
        }
    }
    assert!(data >= 10 && synacks >= 10, "{data} data segments, {synacks} cookie SYN-ACKs in the first 40 frames");
}

/// A client ISN at or above 2^31: with SND.WL1 left at 0 the window of the ACK was never
/// taken (0 < SEG.SEQ is false in sequence space), so plex never sent a byte.
#[test]
fn cookie_connection_with_client_isn_above_2_31_sends() {
    let now = t(5_000);
    for isn in [0x9000_0000u32, 0xffff_fff0, 0x7fff_ffff, 1000] {
        let (mut s, l) = cookie_mode_listener(now);
        let syn = Out { seq: isn, win: 60000, mss: Some(1460), ..Out::default() };
        let (h, _) = cookie_handshake(&mut s, l, now, syn, 60000);
        let out = send_data(&mut s, h, now + Duration::from_millis(2), 50_000);
        let bytes: usize = out.iter().map(|x| x.len).sum();
        // Initial window 10 segments (RFC 6928), all within the 60000-byte window.
        assert!(bytes >= 10 * 1400, "ISN {isn:#x}: {bytes} bytes sent: {out:?}");
    }
}

/// The cookie SYN-ACK's TSval and the connection's TSvals come from one clock: the keyed
/// per-tuple offset (RFC 7323 5.4). A jump of 2^31 or more made the client's PAWS test
/// (RFC 7323 5.3) discard everything plex sent after the SYN-ACK.
#[test]
fn cookie_syn_ack_tsval_and_the_connection_s_tsvals_are_one_sequence() {
    let now = t(3_600_000);
    let (mut s, l) = cookie_mode_listener(now);
    let syn = Out { seq: 1000, win: 65535, mss: Some(1460), ws: Some(7), sack_perm: true, ts: Some((77, 0)), ..Out::default() };
    let (h, sa) = cookie_handshake(&mut s, l, now, syn, 500);
    let syn_ack_tsval = sa.ts.expect("timestamps on").0;
    let later = now + Duration::from_millis(40);
    let out = send_data(&mut s, h, later, 4000);
    assert!(!out.is_empty());
    for seg in &out {
        let tsval = seg.ts.expect("timestamps in every segment").0;
        let ahead = tsval.wrapping_sub(syn_ack_tsval) as i32;
        // Monotonic (PAWS) and advancing with the clock: 41 ms later, plus at most the 31 ms
        // the option bits may have taken off the SYN-ACK's TSval.
        assert!((41..=41 + 31).contains(&ahead), "SYN-ACK TSval {syn_ack_tsval:#x}, data TSval {tsval:#x}");
        assert_eq!(seg.ts.unwrap().1, 78, "echoes the client's TSval");
    }
    // A SYN-queue connection on the same tuple would have used the same offset.
    assert_eq!(
        s.isn.ts_offset(SocketAddrV4::new(A_IP, 80), PEER),
        s.tcp(h).unwrap().ts_offset,
    );
}

/// The cookie keeps the client's window scale (here 10, as Linux offers with a large
/// tcp_rmem), not plex's: a client window field of 63 is 63 << 10 = 64 512 bytes, not
/// 63 << 3 = 504 (RFC 7323 2.3: the shift the peer sent scales the windows it sends).
#[test]
fn cookie_keeps_the_client_s_window_scale() {
    let now = t(10_000);
    let (mut s, l) = cookie_mode_listener(now);
    let syn = Out { seq: 0x8000_1234, win: 65535, mss: Some(1460), ws: Some(10), sack_perm: true, ts: Some((1, 0)), ..Out::default() };
    let (h, sa) = cookie_handshake(&mut s, l, now, syn, 63);
    assert_eq!(sa.ws, Some(s.config().tcp.rcv_wscale()), "plex offers its own shift");
    let out = send_data(&mut s, h, now + Duration::from_millis(2), 100_000);
    let bytes: usize = out.iter().map(|x| x.len).sum();
    assert!(bytes >= 10 * 1400, "{bytes} bytes in flight: the window was read as {}", 63 << 3);
    // And the window plex advertises is scaled by its own shift.
    let ws = s.config().tcp.rcv_wscale();
    assert!((out[0].win as usize) << ws >= 65535, "advertised {} << {ws}", out[0].win);
}

/// Without timestamps a cookie cannot carry the window scale (RFC 4987 3.6): neither side
/// scales, the cookie SYN-ACK offers none.
#[test]
fn cookie_without_timestamps_has_no_window_scaling() {
    let now = t(10_000);
    let (mut s, l) = cookie_mode_listener(now);
    let syn = Out { seq: 5, win: 65535, mss: Some(1460), ws: Some(10), ..Out::default() };
    let (h, sa) = cookie_handshake(&mut s, l, now, syn, 30000);
    assert_eq!(sa.ws, None);
    let out = send_data(&mut s, h, now + Duration::from_millis(2), 100_000);
    let bytes: usize = out.iter().map(|x| x.len).sum();
    assert!((10 * 1400..=30000).contains(&bytes), "{bytes}");
}

/// Embryonic connections give up after `synack_retries` (5: SYN-ACKs at 0, 1, 3, 7, 15 and
/// 31 s, freed at 63 s) and leave the SYN queue.
#[test]
fn embryonic_connections_give_up_after_synack_retries() {
    let mut s = server(|_| {});
    let l = s.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 8).unwrap();
    let spoofed = Out { src: Some(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 1)), seq: 1, syn: true, win: 1000, ..Out::default() };
    s.receive(t(0), &tcp_frame(&spoofed, SPOOF_MAC, 80));
    let mut syn_acks = Vec::new();
    let mut now = t(0);
    // The spoofed address answers ARP (a live host that ignores SYN-ACKs it never asked for):
    // the neighbour cache re-probes an entry no TCP progress confirms, and without an answer
    // the SYN-ACKs would wait for resolution instead of leaving.
    let peer = Ipv4Addr::new(198, 18, 0, 99);
    let arp_reply = {
        let mut f = vec![0u8; 42];
        EthernetRepr { src_addr: SPOOF_MAC, dst_addr: A_MAC, ethertype: EtherType::Arp }
            .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
        ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: SPOOF_MAC,
            source_protocol_addr: peer,
            target_hardware_addr: A_MAC,
            target_protocol_addr: A_IP,
        }
        .emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
        f
    };
    while now < t(120_000) {
        syn_acks.extend(drain(&mut s, now).into_iter().filter(|x| x.syn).map(|_| now.total_millis() / 1000));
        if s.counters().arp_requests_out > 0 && now.total_millis().is_multiple_of(1000) {
            s.receive(now, &arp_reply);
        }
        if s.connection_count() == 0 {
            break;
        }
        now += Duration::from_millis(100);
        s.handle_timeout(now);
    }
    assert_eq!(syn_acks, vec![0, 1, 3, 7, 15, 31]);
    assert_eq!(now.total_millis() / 1000, 63, "freed at 63 s");
    assert_eq!(s.listener(l).unwrap().syn_queue, 0);
    assert_eq!(s.tcp_socket_count(), 0);
}

// ---- resource limits -----------------------------------------------------------------------

fn client_syn(port: u16, isn: u32) -> Out {
    Out { src: Some(SocketAddrV4::new(B_IP, port)), seq: isn, syn: true, win: 65535, mss: Some(1460), ..Out::default() }
}

/// Complete a handshake from the scripted peer on `port`; returns the accepted handle.
fn handshake(s: &mut Stack, l: SocketHandle, now: Instant, port: u16) -> Option<SocketHandle> {
    send(s, now, &client_syn(port, 1000));
    let sa = drain(s, now).into_iter().find(|x| x.syn && x.dst.port() == port)?;
    let ack = Out { src: Some(SocketAddrV4::new(B_IP, port)), seq: 1001, ack: Some(sa.seq.wrapping_add(1)), win: 65535, ..Out::default() };
    send(s, now, &ack);
    s.tcp_accept(l).ok()
}

#[test]
fn connection_limit_refuses_new_syns_and_keeps_existing_connections() {
    let mut s = server(|c| c.max_connections = 2);
    let l = s.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 16).unwrap();
    let a = handshake(&mut s, l, t(0), 5001).unwrap();
    let b = handshake(&mut s, l, t(0), 5002).unwrap();
    // The third SYN is dropped, without an answer, and counted.
    send(&mut s, t(1), &client_syn(5003, 1000));
    assert!(drain(&mut s, t(1)).is_empty(), "dropped, not reset: the client retries");
    assert_eq!(s.counters().dropped(DropReason::TcpConnLimit), 1);
    assert_eq!(s.listener(l).unwrap().counters.refused_limit, 1);
    assert_eq!(s.listener_counters().refused_limit, 1);
    assert_eq!(s.tcp_socket_count(), 2);
    // The existing connections still work both ways.
    for (h, port) in [(a, 5001u16), (b, 5002)] {
        let data = Out { src: Some(SocketAddrV4::new(B_IP, port)), seq: 1001, ack: Some(s.tcp(h).unwrap().snd_nxt().0), win: 65535, payload: b"GET /".to_vec(), ..Out::default() };
        send(&mut s, t(2), &data);
        let mut buf = [0u8; 16];
        assert_eq!(s.tcp_recv(t(2), h, &mut buf), Ok(5));
        assert!(!send_data(&mut s, h, t(2), 3000).is_empty());
    }
    // An active open is refused too.
    assert_eq!(s.tcp_connect(t(3), None, SocketAddrV4::new(B_IP, 9)), Err(ApiError::NoBuffers));
    // When one goes away, a new SYN gets in.
    s.tcp_abort(t(4), a).unwrap();
    drain(&mut s, t(4));
    s.release_closed(a);
    assert_eq!(s.tcp_socket_count(), 1);
    assert!(handshake(&mut s, l, t(5), 5004).is_some());
}

#[test]
fn connection_limit_also_refuses_a_valid_cookie_ack() {
    let now = t(1000);
    let mut s = server(|c| c.max_connections = 1);
    let l = s.tcp_listen(now, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 1).unwrap();
    // One embryonic connection fills the SYN queue and the connection table.
    let spoofed = Out { src: Some(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 1)), seq: 1, syn: true, win: 1000, ..Out::default() };
    s.receive(now, &tcp_frame(&spoofed, SPOOF_MAC, 80));
    drain(&mut s, now);
    // A SYN over the limit is not even answered with a cookie.
    send(&mut s, now, &client_syn(5001, 1000));
    assert!(drain(&mut s, now).is_empty());
    // A (valid) cookie ACK made while there was room is refused now.
    s.cfg.max_connections = 2;
    send(&mut s, now, &client_syn(5002, 1000));
    let sa = drain(&mut s, now).pop().expect("a cookie SYN-ACK");
    s.cfg.max_connections = 1;
    let ack = Out { src: Some(SocketAddrV4::new(B_IP, 5002)), seq: 1001, ack: Some(sa.seq.wrapping_add(1)), win: 65535, ..Out::default() };
    send(&mut s, now, &ack);
    assert!(s.tcp_accept(l).is_err());
    assert_eq!(s.counters().dropped(DropReason::TcpConnLimit), 2);
    assert_eq!(s.listener(l).unwrap().counters.refused_limit, 2);
    assert_eq!(s.counters().tcp_syn_cookies_ok, 0);
}

/// The budget counts the rings connections have allocated. Abandoned connections, each with
/// half a request in its receive ring, stop being admitted once their rings fill the budget;
/// the memory stays bounded however many SYNs come.
#[test]
fn buffer_budget_bounds_memory_under_abandoned_connections() {
    let ring = 16 * 1024;
    let budget = 40 * ring;
    let mut s = server(|c| {
        c.tcp.send_buffer = ring;
        c.tcp.recv_buffer = ring;
        c.mem_budget = budget;
    });
    let l = s.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 4096).unwrap();
    let mut admitted = 0;
    for port in 1000..3000u16 {
        let Some(h) = handshake(&mut s, l, t(0), port) else { continue };
        admitted += 1;
        let half = Out { src: Some(SocketAddrV4::new(B_IP, port)), seq: 1001, ack: Some(s.tcp(h).unwrap().snd_nxt().0), win: 65535, payload: b"GET / HTTP/1.1\r\nHost: x".to_vec(), ..Out::default() };
        send(&mut s, t(0), &half);
        drain(&mut s, t(0));
        assert!(s.buffer_memory() <= budget, "{} > {budget}", s.buffer_memory());
    }
    // Each abandoned connection holds the receive memory its half request took (rings grow
    // with what they hold: 2 KiB here, not the 16 KiB ring); admission stopped when a new
    // connection's full capacity no longer fitted, and not before.
    let held = s.buffer_memory();
    assert!(held + 2 * ring > budget, "admission stopped at {held} of {budget}");
    assert_eq!(held, admitted * 2048, "{admitted} admitted");
    assert_eq!(s.counters().dropped(DropReason::TcpMemLimit), 2000 - admitted as u64);
    assert_eq!(s.tcp_socket_count(), admitted);
}

// ---- rate limits -----------------------------------------------------------------------------

fn udp_frame(port: u16) -> Vec<u8> {
    let udp = UdpRepr { src_port: 5353, dst_port: port, payload: b"x" };
    let ip = Ipv4Repr {
        src_addr: B_IP,
        dst_addr: A_IP,
        next_header: IpProtocol::Udp,
        payload_len: udp.buffer_len(),
        hop_limit: 64,
        dscp_ecn: 0,
        ident: 1,
        dont_frag: true,
    };
    let mut f = vec![0u8; 14 + 20 + udp.buffer_len()];
    EthernetRepr { src_addr: B_MAC, dst_addr: A_MAC, ethertype: EtherType::Ipv4 }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    udp.emit(&mut UdpPacket::new_unchecked(&mut f[34..]), B_IP, A_IP);
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..]));
    f
}

fn frames_out(s: &mut Stack, now: Instant) -> usize {
    let mut buf = vec![0u8; 1600];
    std::iter::from_fn(|| s.poll_transmit(now, &mut buf)).count()
}

/// 8 000 port-unreachables/s under fuzzing become Linux's 1000/s with a burst of 50.
#[test]
fn icmp_errors_are_rate_limited() {
    let mut s = server(|_| {});
    let mut sent = 0;
    // 8000 datagrams to closed ports over one second (one every 125 us).
    for i in 0..8000u64 {
        let now = Instant::from_micros(1_000_000 + i * 125);
        s.receive(now, &udp_frame(9999));
        sent += frames_out(&mut s, now);
    }
    // The burst of 50, then 1000/s over the 0.999875 s that follow.
    assert!((1045..=1050).contains(&sent), "{sent}");
    assert_eq!(s.counters().icmp_unreachable_out as usize, sent);
    assert_eq!(s.counters().icmp_errors_rate_limited as usize, 8000 - sent);
    assert_eq!(s.counters().dropped(DropReason::UdpNoSocket), 8000, "every datagram still counted");
    // Configurable: unlimited.
    let mut u = server(|c| c.icmp_error_limit = RateLimit::UNLIMITED);
    for _ in 0..500 {
        u.receive(t(1), &udp_frame(9999));
    }
    assert_eq!(frames_out(&mut u, t(1)), 256, "only the control queue bounds them");
}

#[test]
fn rsts_for_unowned_segments_are_rate_limited() {
    let mut s = server(|c| c.rst_limit = RateLimit { per_sec: 100, burst: 10 });
    let mut rsts = 0;
    for i in 0..200u16 {
        let now = t(5000);
        s.receive(now, &tcp_frame(&client_syn(2000 + i, 1), B_MAC, 81));
        rsts += drain(&mut s, now).iter().filter(|x| x.rst).count();
    }
    assert_eq!(rsts, 10, "the burst");
    assert_eq!(s.counters().tcp_rst_rate_limited, 190);
    assert_eq!(s.counters().dropped(DropReason::TcpNoSocket), 200);
    // 100 ms later: 10 more tokens.
    for i in 0..50u16 {
        s.receive(t(5100), &tcp_frame(&client_syn(3000 + i, 1), B_MAC, 81));
    }
    assert_eq!(drain(&mut s, t(5100)).iter().filter(|x| x.rst).count(), 10);
    assert_eq!(s.counters().tcp_rst_out, 20);
}

// ---- a spoofed-SYN flood and legitimate clients ---------------------------------------------

/// 4 096 spoofed SYNs in 20 ms fill the SYN queue (backlog 128); meanwhile and afterwards a
/// client like Linux (window scale 10, timestamps, SACK; about half its ISNs at or above
/// 2^31) opens a connection every 10 ms and fetches 1 MiB on each. Every one completes,
/// through a cookie.
#[test]
fn spoofed_syn_flood_then_every_legitimate_client_fetches_1_mib() {
    const FETCH: usize = 1 << 20;
    let mut a = server(|_| {});
    let mut b = {
        let mut c = StackConfig::new(B_MAC);
        c.seed = 99;
        c.tcp.recv_buffer = 40 << 20;
        c.mem_budget = usize::MAX;
        let mut s = Stack::new(c);
        s.add_address(B_IP, 24, false);
        s
    };
    assert_eq!(b.config().tcp.rcv_wscale(), 10);
    let l = a.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 128).unwrap();
    let mut rng = crate::rand::Rng::new(4987);
    let mut buf = vec![0u8; 1600];
    let mut rbuf = vec![0u8; 65536];
    let payload = vec![0x5au8; 65536];
    // Client handles: (handle, bytes received, ISN at or above 2^31).
    let mut clients: Vec<(SocketHandle, usize, bool)> = Vec::new();
    // Server side: (handle, bytes left to send).
    let mut served: Vec<(SocketHandle, usize)> = Vec::new();
    let mut now = t(1000);
    let mut next_client = now;
    let end = t(1000 + 20_000);
    while now < end {
        let ms = (now - t(1000)).total_millis();
        // The flood: 4 096 SYNs over the first 20 ms.
        if ms < 20 {
            for _ in 0..205 {
                let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100 + (rng.next_u32() % 150) as u8), (rng.next_u32() % 60000 + 1024) as u16);
                let syn = Out { src: Some(src), seq: rng.next_u32(), syn: true, win: 64240, mss: Some(1460), ws: Some(7), ts: Some((rng.next_u32(), 0)), sack_perm: true, ..Out::default() };
                a.receive(now, &tcp_frame(&syn, SPOOF_MAC, 80));
            }
        }
        // A legitimate connection every 10 ms for the first 2 s.
        if now >= next_client && ms < 2000 {
            next_client += Duration::from_millis(10);
            let h = b.tcp_connect(now, None, SocketAddrV4::new(A_IP, 80)).unwrap();
            let high = b.tcp(h).unwrap().snd_una().0 >= 0x8000_0000;
            clients.push((h, 0, high));
        }
        // The wire (spoofed sources never answer: frames to SPOOF_MAC are dropped by b).
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                b.receive(now, &buf[..n]);
                moved = true;
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                a.receive(now, &buf[..n]);
                moved = true;
            }
            // The server application: accept, send 1 MiB on each.
            while let Ok(h) = a.tcp_accept(l) {
                served.push((h, FETCH));
            }
            for (h, left) in served.iter_mut().filter(|(_, left)| *left > 0) {
                if let Ok(n) = a.tcp_send(now, *h, &payload[..(*left).min(payload.len())]) {
                    *left -= n;
                    moved |= n > 0;
                    if *left == 0 {
                        a.close(now, *h).unwrap();
                    }
                }
            }
            for (h, got, _) in clients.iter_mut().filter(|c| c.1 < FETCH) {
                while let Ok(n) = b.tcp_recv(now, *h, &mut rbuf) {
                    if n == 0 {
                        break;
                    }
                    *got += n;
                    moved = true;
                }
                if *got == FETCH {
                    // Done: free its 40 MiB ring.
                    b.close(now, *h).unwrap();
                }
            }
            while a.poll_event().is_some() {}
            while b.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
        if ms > 2000 && clients.iter().all(|c| c.1 == FETCH) {
            break;
        }
        now += Duration::from_millis(1);
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    let done = clients.iter().filter(|c| c.1 == FETCH).count();
    let high = clients.iter().filter(|c| c.2).count();
    let lc = a.listener(l).unwrap().counters;
    assert_eq!(lc.syn_queue_overflows, lc.cookies_sent);
    assert!(lc.cookies_sent >= 4096 - 128, "{lc:?}");
    assert_eq!(lc.cookies_valid as usize, clients.len(), "every client came in through a cookie: {lc:?}");
    assert!(high >= clients.len() / 4, "{high} of {} client ISNs at or above 2^31", clients.len());
    assert_eq!(done, clients.len(), "{done} of {} fetched 1 MiB by {:?}", clients.len(), now - t(1000));
}

/// A connection in TIME-WAIT (2 MSL) keeps its 4-tuple, not its buffers: a server closing
/// after each response must not hold 512 KiB per connection for a minute, nor count it
/// against the budget.
#[test]
fn time_wait_connections_hold_no_buffer_memory() {
    let mut a = server(|_| {});
    let mut b = server(|c| c.mac = B_MAC);
    b.remove_address(t(0), A_IP, Departure::Silent);
    b.add_address(B_IP, 24, false);
    let l = a.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 16).unwrap();
    let c = b.tcp_connect(t(0), None, SocketAddrV4::new(A_IP, 80)).unwrap();
    let mut buf = vec![0u8; 1600];
    let mut wire = |a: &mut Stack, b: &mut Stack, now: Instant| {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                b.receive(now, &buf[..n]);
                moved = true;
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                a.receive(now, &buf[..n]);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    };
    wire(&mut a, &mut b, t(1));
    let s = a.tcp_accept(l).unwrap();
    b.tcp_send(t(2), c, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    wire(&mut a, &mut b, t(2));
    let mut rbuf = [0u8; 64];
    assert_eq!(a.tcp_recv(t(3), s, &mut rbuf), Ok(18));
    a.tcp_send(t(3), s, &[b'x'; 5000]).unwrap();
    assert!(a.buffer_memory() > 0);
    a.close(t(3), s).unwrap();
    wire(&mut a, &mut b, t(3));
    let mut got = 0;
    while let Ok(n) = b.tcp_recv(t(4), c, &mut rbuf) {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, 5000);
    b.close(t(4), c).unwrap();
    wire(&mut a, &mut b, t(4));
    assert_eq!(a.connection_count(), 1, "the server is in TIME-WAIT");
    assert_eq!(a.tcp(s).map(|x| x.state()), Some(State::TimeWait));
    assert_eq!(a.buffer_memory(), 0);
    a.handle_timeout(t(4 + 60_000));
    assert_eq!((a.connection_count(), a.tcp_socket_count()), (0, 0));
}

#[test]
fn a_closed_listener_still_counts_in_the_stack_s_listener_counters() {
    // A report made after the application closed its listener (a tokio task dropped with its
    // runtime, a server's shutdown) read syns=0 accepted=0 for a run that served thousands.
    let mut s = server(|_| {});
    let l = s.tcp_listen(t(0), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 16).unwrap();
    handshake(&mut s, l, t(0), 5001).unwrap();
    handshake(&mut s, l, t(0), 5002).unwrap();
    let before = s.listener_counters();
    assert_eq!((before.syns, before.accepted), (2, 2));
    s.close(t(1), l).unwrap();
    assert_eq!(s.listener_counters(), before, "the closed listener's counters are kept");
    let l2 = s.tcp_listen(t(2), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 16).unwrap();
    handshake(&mut s, l2, t(2), 5003).unwrap();
    assert_eq!(s.listener_counters().accepted, 3, "the closed one's and the new one's, summed");
}
