//! State-machine tests in the smoltcp style: a segment in, the segments out, per RFC 9293 state.

use super::*;
use crate::tcp::Keepalive;
use std::net::Ipv4Addr;

mod recovery;

const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 80);
const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 49152);
const ISS: u32 = 10_000;
const IRS: u32 = 5_000;

/// An owned segment, as the peer sends or sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seg {
    seq: u32,
    ack: Option<u32>,
    ctl: TcpControl,
    win: u16,
    payload: Vec<u8>,
    sack: Vec<(u32, u32)>,
    ts: Option<(u32, u32)>,
    mss: Option<u16>,
    ws: Option<u8>,
    sack_perm: bool,
}

impl Default for Seg {
    fn default() -> Self {
        Seg {
            seq: IRS + 1,
            ack: Some(ISS + 1),
            ctl: TcpControl::None,
            win: 60000,
            payload: vec![],
            sack: vec![],
            ts: None,
            mss: None,
            ws: None,
            sack_perm: false,
        }
    }
}

fn cfg() -> Config {
    Config {
        timestamps: false,
        sack: false,
        window_scaling: false,
        delayed_ack: None,
        send_buffer: 8192,
        recv_buffer: 8192,
        mss: 1000,
        nodelay: true,
        ..Config::default()
    }
}

fn tuple() -> Tuple {
    Tuple { local: LOCAL, remote: REMOTE }
}

/// Feed a segment as the peer would send it (through the wire format, both ways).
fn send(c: &mut Connection, now: Instant, s: &Seg) {
    let mut r = TcpRepr::new(REMOTE.port(), LOCAL.port(), SeqNumber(s.seq));
    r.ack_number = s.ack.map(SeqNumber);
    r.control = s.ctl;
    r.window_len = s.win;
    r.payload = &s.payload;
    r.max_seg_size = s.mss;
    r.window_scale = s.ws;
    r.sack_permitted = s.sack_perm;
    r.timestamp = s.ts.map(|(tsval, tsecr)| TcpTimestamp { tsval, tsecr });
    for &(a, b) in &s.sack {
        r.sack_blocks.push(SeqNumber(a), SeqNumber(b));
    }
    let mut buf = vec![0u8; r.buffer_len()];
    r.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), *REMOTE.ip(), *LOCAL.ip());
    let p = TcpPacket::new_checked(&buf[..]).unwrap();
    let parsed = TcpRepr::parse(&p, *REMOTE.ip(), *LOCAL.ip(), true).unwrap();
    c.handle_segment(now, &parsed);
}

/// Collect everything the connection sends now.
fn recv(c: &mut Connection, now: Instant) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    for _ in 0..1000 {
        let Some(n) = c.poll_transmit(now, &mut buf) else { break };
        let p = TcpPacket::new_checked(&buf[..n]).unwrap();
        let r = TcpRepr::parse(&p, *LOCAL.ip(), *REMOTE.ip(), true).expect("valid checksum");
        assert_eq!((r.src_port, r.dst_port), (LOCAL.port(), REMOTE.port()));
        out.push(Seg {
            seq: r.seq_number.0,
            ack: r.ack_number.map(|a| a.0),
            ctl: r.control,
            win: r.window_len,
            payload: r.payload.to_vec(),
            sack: r.sack_blocks.as_slice().iter().map(|(a, b)| (a.0, b.0)).collect(),
            ts: r.timestamp.map(|t| (t.tsval, t.tsecr)),
            mss: r.max_seg_size,
            ws: r.window_scale,
            sack_perm: r.sack_permitted,
        });
    }
    out
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// A connection in ESTABLISHED via an active open, with the handshake already consumed.
fn established_with(cfg: Config) -> Connection {
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &cfg);
    let syn = recv(&mut c, t(0));
    assert_eq!(syn.len(), 1);
    send(
        &mut c,
        t(10),
        &Seg { seq: IRS, ctl: TcpControl::Syn, mss: Some(1000), ..Seg::default() },
    );
    assert_eq!(c.state(), State::Established);
    let ack = recv(&mut c, t(10));
    assert_eq!(ack.len(), 1);
    events(&mut c);
    c
}

fn established() -> Connection {
    established_with(cfg())
}

// ---- SYN-SENT ---------------------------------------------------------------------------

#[test]
fn connect_sends_syn_with_options() {
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &Config::default());
    let s = recv(&mut c, t(0));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].seq, ISS);
    assert_eq!(s[0].ctl, TcpControl::Syn);
    assert_eq!(s[0].ack, None);
    assert_eq!(s[0].mss, Some(1460));
    assert!(s[0].ws.is_some());
    assert!(s[0].sack_perm);
    assert!(s[0].ts.is_some());
    assert!(recv(&mut c, t(0)).is_empty(), "one SYN only");
}

#[test]
fn syn_sent_to_established() {
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &cfg());
    recv(&mut c, t(0));
    send(&mut c, t(5), &Seg { seq: IRS, ctl: TcpControl::Syn, mss: Some(1200), ..Seg::default() });
    assert_eq!(c.state(), State::Established);
    assert_eq!(events(&mut c), vec![Event::Connected]);
    let s = recv(&mut c, t(5));
    assert_eq!(s, vec![Seg { seq: ISS + 1, ack: Some(IRS + 1), win: 8192, ..Seg::default() }]);
    assert_eq!(c.mss(), 1000, "min(peer 1200, ours 1000)");
    assert_eq!(c.srtt(), Some(Duration::from_millis(5)), "SYN timed");
}

#[test]
fn syn_sent_rst_is_connection_refused() {
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &cfg());
    recv(&mut c, t(0));
    // RST without an acceptable ACK is ignored (RFC 9293 3.10.7.3).
    send(&mut c, t(1), &Seg { seq: 0, ack: Some(ISS + 5), ctl: TcpControl::Rst, ..Seg::default() });
    assert_eq!(c.state(), State::SynSent);
    send(&mut c, t(1), &Seg { seq: 0, ack: Some(ISS + 1), ctl: TcpControl::Rst, ..Seg::default() });
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), vec![Event::Reset, Event::Closed]);
    assert_eq!(c.error(), Some(Error::Reset));
}

#[test]
fn syn_sent_unacceptable_ack_gets_rst() {
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &cfg());
    recv(&mut c, t(0));
    send(&mut c, t(1), &Seg { seq: 77, ack: Some(ISS + 100), ..Seg::default() });
    let s = recv(&mut c, t(1));
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].seq, s[0].ctl, s[0].ack), (ISS + 100, TcpControl::Rst, None));
    assert_eq!(c.state(), State::SynSent);
}

#[test]
fn simultaneous_open() {
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &cfg());
    recv(&mut c, t(0));
    send(&mut c, t(1), &Seg { seq: IRS, ack: None, ctl: TcpControl::Syn, ..Seg::default() });
    assert_eq!(c.state(), State::SynReceived);
    let s = recv(&mut c, t(1));
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].seq, s[0].ack, s[0].ctl), (ISS, Some(IRS + 1), TcpControl::Syn));
    send(&mut c, t(2), &Seg { seq: IRS + 1, ack: Some(ISS + 1), ..Seg::default() });
    assert_eq!(c.state(), State::Established);
    assert_eq!(events(&mut c), vec![Event::Connected]);
}

#[test]
fn syn_retransmits_with_backoff_then_times_out() {
    let mut cfg = cfg();
    cfg.syn_retries = 2;
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &cfg);
    recv(&mut c, t(0));
    assert_eq!(c.poll_timeout(), Some(t(1000)));
    c.handle_timeout(t(1000));
    assert_eq!(recv(&mut c, t(1000))[0].ctl, TcpControl::Syn);
    assert_eq!(c.poll_timeout(), Some(t(3000)), "backed off to 2 s");
    c.handle_timeout(t(3000));
    assert_eq!(recv(&mut c, t(3000)).len(), 1);
    c.handle_timeout(t(7000));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), vec![Event::TimedOut, Event::Closed]);
}

// ---- SYN-RECEIVED -----------------------------------------------------------------------

fn syn_received() -> Connection {
    let mut syn = TcpRepr::new(REMOTE.port(), LOCAL.port(), SeqNumber(IRS));
    syn.control = TcpControl::Syn;
    syn.window_len = 30000;
    syn.max_seg_size = Some(1460);
    Connection::accept(t(0), tuple(), &syn, SeqNumber(ISS), 0, &cfg())
}

#[test]
fn syn_received_sends_syn_ack_and_establishes() {
    let mut c = syn_received();
    let s = recv(&mut c, t(0));
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].seq, s[0].ack, s[0].ctl, s[0].mss), (ISS, Some(IRS + 1), TcpControl::Syn, Some(1000)));
    assert_eq!(s[0].ws, None, "peer offered no scaling");
    send(&mut c, t(3), &Seg::default());
    assert_eq!(c.state(), State::Established);
    assert_eq!(events(&mut c), vec![Event::Connected]);
    assert!(recv(&mut c, t(3)).is_empty());
}

#[test]
fn syn_received_duplicate_syn_resends_syn_ack() {
    let mut c = syn_received();
    recv(&mut c, t(0));
    send(&mut c, t(1), &Seg { seq: IRS, ack: None, ctl: TcpControl::Syn, ..Seg::default() });
    let s = recv(&mut c, t(1));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].ctl, TcpControl::Syn);
    assert_eq!(c.state(), State::SynReceived);
}

#[test]
fn syn_received_rst_frees_silently() {
    let mut c = syn_received();
    recv(&mut c, t(0));
    send(&mut c, t(1), &Seg { ack: None, ctl: TcpControl::Rst, ..Seg::default() });
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), vec![Event::Closed], "a passive open never told the app");
}

#[test]
fn syn_received_bad_ack_gets_rst() {
    let mut c = syn_received();
    recv(&mut c, t(0));
    send(&mut c, t(1), &Seg { ack: Some(ISS + 50), ..Seg::default() });
    let s = recv(&mut c, t(1));
    assert_eq!((s[0].seq, s[0].ctl), (ISS + 50, TcpControl::Rst));
    assert_eq!(c.state(), State::SynReceived);
}

// ---- ESTABLISHED ------------------------------------------------------------------------

#[test]
fn established_receives_data() {
    let mut c = established();
    send(&mut c, t(20), &Seg { payload: b"hello".to_vec(), ..Seg::default() });
    assert_eq!(events(&mut c), vec![Event::Readable]);
    let s = recv(&mut c, t(20));
    assert_eq!(s, vec![Seg { seq: ISS + 1, ack: Some(IRS + 6), win: 8192 - 5, ..Seg::default() }]);
    let mut buf = [0u8; 16];
    assert_eq!(c.recv(&mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(c.recv(&mut buf), Err(Error::WouldBlock));
}

#[test]
fn established_sends_and_gets_acked() {
    let mut c = established();
    assert_eq!(c.send(b"abcdef"), Ok(6));
    let s = recv(&mut c, t(20));
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].seq, s[0].payload.as_slice()), (ISS + 1, &b"abcdef"[..]));
    assert!(c.timer(Timer::Retransmit).is_some());
    send(&mut c, t(30), &Seg { ack: Some(ISS + 7), ..Seg::default() });
    assert_eq!(c.snd_una(), SeqNumber(ISS + 7));
    assert_eq!(c.send_queue(), 0);
    assert!(c.timer(Timer::Retransmit).is_none(), "RFC 6298 5.2: all acked, timer off");
}

#[test]
fn segments_are_cut_at_mss() {
    let mut c = established();
    let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
    assert_eq!(c.send(&data), Ok(2500));
    let s = recv(&mut c, t(20));
    let lens: Vec<usize> = s.iter().map(|s| s.payload.len()).collect();
    assert_eq!(lens, vec![1000, 1000, 500]);
    assert_eq!(s.iter().flat_map(|s| s.payload.clone()).collect::<Vec<u8>>(), data);
}

#[test]
fn out_of_order_data_is_held_and_acked_at_once() {
    // Handshake with SACK permitted on both sides.
    let mut c2 = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &Config { sack: true, ..cfg() });
    recv(&mut c2, t(0));
    send(&mut c2, t(1), &Seg { seq: IRS, ctl: TcpControl::Syn, sack_perm: true, ..Seg::default() });
    recv(&mut c2, t(1));
    let mut c = c2;
    send(&mut c, t(2), &Seg { seq: IRS + 5, payload: b"efgh".to_vec(), ..Seg::default() });
    let s = recv(&mut c, t(2));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].ack, Some(IRS + 1), "duplicate ACK");
    assert_eq!(s[0].sack, vec![(IRS + 5, IRS + 9)]);
    send(&mut c, t(3), &Seg { seq: IRS + 1, payload: b"abcd".to_vec(), ..Seg::default() });
    let s = recv(&mut c, t(3));
    assert_eq!(s[0].ack, Some(IRS + 9), "hole filled");
    assert!(s[0].sack.is_empty());
    let mut buf = [0u8; 8];
    assert_eq!(c.recv(&mut buf), Ok(8));
    assert_eq!(&buf, b"abcdefgh");
}

#[test]
fn old_duplicate_is_acked_not_delivered() {
    let mut c = established();
    send(&mut c, t(20), &Seg { payload: b"abc".to_vec(), ..Seg::default() });
    recv(&mut c, t(20));
    send(&mut c, t(21), &Seg { payload: b"abc".to_vec(), ..Seg::default() });
    let s = recv(&mut c, t(21));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].ack, Some(IRS + 4));
    assert_eq!(c.recv_queue(), 3);
    assert_eq!(c.counters.unacceptable_segs, 1);
}

#[test]
fn rst_in_window_but_not_exact_gets_challenge_ack() {
    let mut c = established();
    send(&mut c, t(20), &Seg { seq: IRS + 100, ctl: TcpControl::Rst, ack: None, ..Seg::default() });
    assert_eq!(c.state(), State::Established, "RFC 5961 3.2");
    let s = recv(&mut c, t(20));
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].seq, s[0].ack), (ISS + 1, Some(IRS + 1)));
    assert_eq!(c.counters.challenge_acks, 1);
    send(&mut c, t(21), &Seg { seq: IRS + 1, ctl: TcpControl::Rst, ack: None, ..Seg::default() });
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), vec![Event::Reset, Event::Closed]);
    let mut buf = [0u8; 4];
    assert_eq!(c.recv(&mut buf), Err(Error::Reset));
    assert_eq!(c.send(b"x"), Err(Error::Reset));
}

#[test]
fn rst_out_of_window_is_ignored() {
    let mut c = established();
    send(&mut c, t(20), &Seg { seq: IRS + 100_000, ctl: TcpControl::Rst, ack: None, ..Seg::default() });
    assert_eq!(c.state(), State::Established);
    assert!(recv(&mut c, t(20)).is_empty());
}

#[test]
fn syn_in_established_gets_challenge_ack() {
    let mut c = established();
    send(&mut c, t(20), &Seg { seq: IRS + 1, ack: None, ctl: TcpControl::Syn, ..Seg::default() });
    assert_eq!(c.state(), State::Established, "RFC 5961 4.2");
    let s = recv(&mut c, t(20));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].ctl, TcpControl::None);
    assert_eq!(c.counters.challenge_acks, 1);
}

#[test]
fn ack_of_unsent_data_is_answered_and_dropped() {
    let mut c = established();
    send(&mut c, t(20), &Seg { ack: Some(ISS + 500), payload: b"zz".to_vec(), ..Seg::default() });
    assert_eq!(c.recv_queue(), 0, "segment dropped");
    let s = recv(&mut c, t(20));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].ack, Some(IRS + 1));
}

#[test]
fn segment_without_ack_is_dropped() {
    let mut c = established();
    send(&mut c, t(20), &Seg { ack: None, payload: b"zz".to_vec(), ..Seg::default() });
    assert_eq!(c.recv_queue(), 0);
}

#[test]
fn retransmission_timeout_resends_and_backs_off() {
    let mut c = established();
    c.send(b"data").unwrap();
    recv(&mut c, t(20));
    let rto = c.timer(Timer::Retransmit).unwrap();
    c.handle_timeout(rto);
    let s = recv(&mut c, rto);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].seq, s[0].payload.as_slice()), (ISS + 1, &b"data"[..]));
    assert_eq!(c.counters.timeouts, 1);
    assert_eq!(c.cwnd(), c.mss(), "loss window");
    let rto2 = c.timer(Timer::Retransmit).unwrap();
    assert!(rto2 - rto > rto - t(20), "backed off");
    send(&mut c, rto2, &Seg { ack: Some(ISS + 5), ..Seg::default() });
    assert_eq!(c.send_queue(), 0);
}

#[test]
fn gives_up_after_max_retries() {
    let mut cfg = cfg();
    cfg.max_retries = 3;
    let mut c = established_with(cfg);
    c.send(b"data").unwrap();
    recv(&mut c, t(20));
    for _ in 0..4 {
        let at = c.timer(Timer::Retransmit).unwrap();
        c.handle_timeout(at);
        recv(&mut c, at);
    }
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.error(), Some(Error::TimedOut));
}

#[test]
fn user_timeout_aborts() {
    let mut c = established();
    c.set_user_timeout(Some(Duration::from_secs(2)));
    c.send(b"data").unwrap();
    recv(&mut c, t(20));
    let mut now = t(20);
    while c.state() != State::Closed && now < t(60_000) {
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
        recv(&mut c, now);
    }
    assert_eq!(c.error(), Some(Error::TimedOut));
    assert!(now >= t(2020) && now < t(10_000), "gave up at {now:?}");
}

#[test]
fn fast_retransmit_after_three_dupacks() {
    let mut c = established();
    let data = vec![7u8; 5000];
    c.send(&data).unwrap();
    let s = recv(&mut c, t(20));
    assert_eq!(s.len(), 5);
    for i in 0..3 {
        send(&mut c, t(30 + i), &Seg { ack: Some(ISS + 1), ..Seg::default() });
    }
    let s = recv(&mut c, t(33));
    assert_eq!(s.len(), 1, "one retransmission: {s:?}");
    assert_eq!((s[0].seq, s[0].payload.len()), (ISS + 1, 1000));
    assert_eq!(c.counters.fast_recoveries, 1);
    // Partial ACK (NewReno, RFC 6582): the next hole is retransmitted at once.
    send(&mut c, t(40), &Seg { ack: Some(ISS + 1001), ..Seg::default() });
    let s = recv(&mut c, t(40));
    assert_eq!(s[0].seq, ISS + 1001);
    send(&mut c, t(50), &Seg { ack: Some(ISS + 5001), ..Seg::default() });
    assert_eq!(c.send_queue(), 0);
    assert!(c.loss.recovery.is_none());
}

#[test]
fn nagle_holds_small_segments() {
    let mut c = established_with(Config { nodelay: false, ..cfg() });
    c.send(b"a").unwrap();
    assert_eq!(recv(&mut c, t(20)).len(), 1, "nothing in flight: sent");
    c.send(b"b").unwrap();
    c.send(b"c").unwrap();
    assert!(recv(&mut c, t(21)).is_empty(), "held while 'a' is unacknowledged");
    send(&mut c, t(30), &Seg { ack: Some(ISS + 2), ..Seg::default() });
    let s = recv(&mut c, t(30));
    assert_eq!(s[0].payload, b"bc");
}

#[test]
fn zero_window_probing() {
    let mut c = established();
    send(&mut c, t(20), &Seg { win: 0, ..Seg::default() });
    c.send(b"blocked").unwrap();
    assert!(recv(&mut c, t(20)).is_empty(), "window is zero");
    let at = c.timer(Timer::Persist).expect("persist timer armed");
    c.handle_timeout(at);
    let s = recv(&mut c, at);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].seq, ISS, "probe with an old sequence number");
    assert_eq!(c.counters.window_probes, 1);
    assert!(c.timer(Timer::Persist).unwrap() > at, "keeps probing");
    // The window opens: data flows.
    send(&mut c, at, &Seg { win: 1000, ..Seg::default() });
    let s = recv(&mut c, at);
    assert_eq!(s[0].payload, b"blocked");
}

#[test]
fn keepalive_probes_then_times_out() {
    let mut c = established();
    let ka = Keepalive { idle: Duration::from_secs(10), interval: Duration::from_secs(1), probes: 3 };
    c.set_keepalive(t(20), Some(ka));
    assert_eq!(c.timer(Timer::Keepalive), Some(t(10_020)));
    c.handle_timeout(t(10_020));
    let s = recv(&mut c, t(10_020));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].seq, ISS, "snd_nxt - 1");
    // An answer resets the count.
    send(&mut c, t(10_030), &Seg::default());
    assert_eq!(c.state(), State::Established);
    let mut now = t(10_030);
    for _ in 0..10 {
        let Some(at) = c.poll_timeout() else { break };
        now = at;
        c.handle_timeout(now);
        recv(&mut c, now);
        if c.state() == State::Closed {
            break;
        }
    }
    assert_eq!(c.error(), Some(Error::TimedOut));
    assert_eq!(now, t(10_030 + 10_000 + 3_000));
}

#[test]
fn delayed_ack_every_second_segment_or_timer() {
    let mut c = established_with(Config { delayed_ack: Some(Duration::from_millis(40)), ..cfg() });
    c.ack.quickacks = 0;
    send(&mut c, t(20), &Seg { payload: vec![1; 100], ..Seg::default() });
    assert!(recv(&mut c, t(20)).is_empty(), "delayed");
    assert_eq!(c.timer(Timer::DelayedAck), Some(t(60)));
    send(&mut c, t(21), &Seg { seq: IRS + 101, payload: vec![1; 100], ..Seg::default() });
    assert_eq!(recv(&mut c, t(21)).len(), 1, "second segment: ACK now");
    send(&mut c, t(22), &Seg { seq: IRS + 201, payload: vec![1; 100], ..Seg::default() });
    c.handle_timeout(t(62));
    let s = recv(&mut c, t(62));
    assert_eq!(s[0].ack, Some(IRS + 301));
}

#[test]
fn receive_window_right_edge_never_moves_left() {
    let mut c = established();
    let mut edge = IRS + 1 + 8192;
    for i in 0..8u32 {
        send(&mut c, t(20 + i as u64), &Seg { seq: IRS + 1 + i * 1000, payload: vec![0; 1000], ..Seg::default() });
        for s in recv(&mut c, t(20 + i as u64)) {
            let e = s.ack.unwrap() + s.win as u32;
            assert!(e >= edge, "edge {e} moved left of {edge}");
            edge = e;
        }
    }
    let mut buf = [0u8; 100];
    c.recv(&mut buf).unwrap();
    for s in recv(&mut c, t(40)) {
        assert!(s.ack.unwrap() + s.win as u32 >= edge);
    }
}

#[test]
fn data_beyond_the_window_is_trimmed() {
    let mut c = established_with(Config { recv_buffer: 1000, ..cfg() });
    // Re-establish so the small window is advertised.
    send(&mut c, t(20), &Seg { payload: vec![5; 1500], ..Seg::default() });
    assert!(c.recv_queue() <= 8192);
}

// ---- closing --------------------------------------------------------------------------

#[test]
fn active_close_fin_wait_to_time_wait() {
    let mut c = established();
    c.send(b"bye").unwrap();
    c.shutdown();
    assert_eq!(c.state(), State::FinWait1);
    let s = recv(&mut c, t(20));
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].payload.as_slice(), s[0].ctl), (&b"bye"[..], TcpControl::Fin));
    assert_eq!(c.send(b"more"), Err(Error::Shutdown));
    send(&mut c, t(30), &Seg { ack: Some(ISS + 5), ..Seg::default() });
    assert_eq!(c.state(), State::FinWait2);
    // Half-close: data still flows in.
    send(&mut c, t(31), &Seg { payload: b"late".to_vec(), ..Seg::default() });
    assert_eq!(c.recv_queue(), 4);
    send(&mut c, t(32), &Seg { seq: IRS + 5, ctl: TcpControl::Fin, ..Seg::default() });
    assert_eq!(c.state(), State::TimeWait);
    let s = recv(&mut c, t(32));
    assert_eq!(s.last().unwrap().ack, Some(IRS + 6));
    assert_eq!(c.poll_timeout(), Some(t(32 + 60_000)), "2 MSL");
    // A retransmitted FIN is acknowledged again.
    send(&mut c, t(100), &Seg { seq: IRS + 5, ctl: TcpControl::Fin, ..Seg::default() });
    assert_eq!(recv(&mut c, t(100)).len(), 1);
    c.handle_timeout(t(100 + 60_000));
    assert_eq!(c.state(), State::Closed);
    let ev = events(&mut c);
    assert!(ev.contains(&Event::PeerClosed) && ev.contains(&Event::Closed));
    let mut buf = [0u8; 8];
    assert_eq!(c.recv(&mut buf), Ok(4));
    assert_eq!(c.recv(&mut buf), Ok(0), "end of stream");
}

#[test]
fn passive_close_close_wait_last_ack() {
    let mut c = established();
    send(&mut c, t(20), &Seg { ctl: TcpControl::Fin, ..Seg::default() });
    assert_eq!(c.state(), State::CloseWait);
    assert!(events(&mut c).contains(&Event::PeerClosed));
    assert_eq!(recv(&mut c, t(20))[0].ack, Some(IRS + 2));
    c.send(b"reply").unwrap();
    c.shutdown();
    assert_eq!(c.state(), State::LastAck);
    let s = recv(&mut c, t(21));
    assert_eq!((s[0].payload.as_slice(), s[0].ctl), (&b"reply"[..], TcpControl::Fin));
    send(&mut c, t(30), &Seg { seq: IRS + 2, ack: Some(ISS + 7), ..Seg::default() });
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.error(), None);
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let mut c = established();
    c.shutdown();
    let s = recv(&mut c, t(20));
    assert_eq!(s[0].ctl, TcpControl::Fin);
    // The peer's FIN crosses ours: it does not acknowledge our FIN.
    send(&mut c, t(21), &Seg { ack: Some(ISS + 1), ctl: TcpControl::Fin, ..Seg::default() });
    assert_eq!(c.state(), State::Closing);
    send(&mut c, t(22), &Seg { seq: IRS + 2, ack: Some(ISS + 2), ..Seg::default() });
    assert_eq!(c.state(), State::TimeWait);
}

#[test]
fn out_of_order_fin_waits_for_the_hole() {
    let mut c = established();
    send(&mut c, t(20), &Seg { seq: IRS + 4, ctl: TcpControl::Fin, payload: b"d".to_vec(), ..Seg::default() });
    assert_eq!(c.state(), State::Established);
    send(&mut c, t(21), &Seg { payload: b"abc".to_vec(), ..Seg::default() });
    assert_eq!(c.state(), State::CloseWait);
    assert_eq!(c.rcv_nxt(), SeqNumber(IRS + 6));
    let mut buf = [0u8; 8];
    assert_eq!(c.recv(&mut buf), Ok(4));
    assert_eq!(c.recv(&mut buf), Ok(0));
}

#[test]
fn close_with_unread_data_resets() {
    let mut c = established();
    send(&mut c, t(20), &Seg { payload: b"unread".to_vec(), ..Seg::default() });
    recv(&mut c, t(20));
    c.close();
    let s = recv(&mut c, t(21));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].ctl, TcpControl::Rst);
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn abort_sends_rst() {
    let mut c = established();
    c.abort();
    let s = recv(&mut c, t(21));
    assert_eq!((s[0].seq, s[0].ctl, s[0].ack), (ISS + 1, TcpControl::Rst, Some(IRS + 1)));
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn orphan_in_fin_wait_2_times_out() {
    let mut c = established();
    c.close();
    recv(&mut c, t(20));
    send(&mut c, t(30), &Seg { ack: Some(ISS + 2), ..Seg::default() });
    assert_eq!(c.state(), State::FinWait2);
    assert_eq!(c.timer(Timer::FinWait2), Some(t(30 + 60_000)));
    c.handle_timeout(t(30 + 60_000));
    assert_eq!(c.state(), State::Closed);
}

// ---- options ------------------------------------------------------------------------

fn established_ts() -> Connection {
    let cfg = Config { timestamps: true, ..cfg() };
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 1000, &cfg);
    let s = recv(&mut c, t(0));
    assert_eq!(s[0].ts, Some((1000, 0)));
    send(&mut c, t(10), &Seg { seq: IRS, ctl: TcpControl::Syn, ts: Some((500, 1000)), mss: Some(1000), ..Seg::default() });
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.mss(), 1000 - 12, "timestamps take 12 bytes of every segment");
    recv(&mut c, t(10));
    c
}

#[test]
fn timestamps_echo_and_paws() {
    let mut c = established_ts();
    send(&mut c, t(20), &Seg { ts: Some((600, 1010)), payload: b"x".to_vec(), ..Seg::default() });
    let s = recv(&mut c, t(20));
    assert_eq!(s[0].ts, Some((1020, 600)), "TSval = now_ms + offset, TSecr = TS.Recent");
    // An older TSval is a PAWS drop (RFC 7323 5.3), answered with an ACK.
    send(&mut c, t(21), &Seg { seq: IRS + 2, ts: Some((599, 1010)), payload: b"y".to_vec(), ..Seg::default() });
    assert_eq!(c.recv_queue(), 1);
    assert_eq!(c.counters.paws_drops, 1);
    assert_eq!(recv(&mut c, t(21)).len(), 1);
    // RST is exempt from PAWS.
    send(&mut c, t(22), &Seg { seq: IRS + 2, ts: Some((1, 1)), ctl: TcpControl::Rst, ack: None, ..Seg::default() });
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn window_scale_is_applied_both_ways() {
    let cfg = Config { window_scaling: true, recv_buffer: 1 << 20, ..cfg() };
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &cfg);
    let s = recv(&mut c, t(0));
    assert_eq!(s[0].ws, Some(5), "1 MiB needs a shift of 5");
    assert_eq!(s[0].win, 65535);
    send(&mut c, t(1), &Seg { seq: IRS, ctl: TcpControl::Syn, ws: Some(3), win: 1000, ..Seg::default() });
    let s = recv(&mut c, t(1));
    assert_eq!(s[0].win as usize, (1 << 20) >> 5);
    send(&mut c, t(2), &Seg { win: 1000, ..Seg::default() });
    assert_eq!(c.snd.wnd, 8000, "peer's window scaled by 2^3");
}

#[test]
fn path_mtu_shrinks_segments() {
    let mut c = established();
    c.send(&vec![1u8; 3000]).unwrap();
    let s = recv(&mut c, t(20));
    assert_eq!(s[0].payload.len(), 1000);
    c.handle_path_mtu(576);
    let s = recv(&mut c, t(21));
    assert!(!s.is_empty(), "in-flight data resent at the new size");
    assert!(s.iter().all(|s| s.payload.len() <= 536));
    assert_eq!(s[0].seq, ISS + 1);
}

/// With window scaling, a window that is not a multiple of the scale is rounded up so the
/// edge already announced does not move back (RFC 9293 3.8.6.2.2); the rounding must never
/// take the edge past what the receive ring can hold. It did: every ACK sent while the buffer
/// filled could round the edge up again, the edge crept past the ring, and the peer's bytes
/// inside the announced window were dropped (seen in the handoff simulation: a peer whose
/// window was closed stopped accepting the other side's ACKs and the connection stalled).
#[test]
fn a_filling_receive_buffer_never_announces_more_than_it_holds() {
    let cfg = Config { window_scaling: true, recv_buffer: 256 * 1024, ..cfg() };
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &cfg);
    recv(&mut c, t(0));
    send(&mut c, t(10), &Seg { seq: IRS, ctl: TcpControl::Syn, mss: Some(1000), ws: Some(0), ..Seg::default() });
    assert_eq!(c.state(), State::Established);
    let ws = c.rcv.wscale;
    assert!(ws > 0, "the test needs a scaled window");
    let ack = recv(&mut c, t(10)).pop().expect("the handshake's ACK");
    let mut edge = ack.ack.unwrap().wrapping_add((ack.win as u32) << ws);
    let mut seq = IRS + 1;
    let mut total = 0usize;
    for i in 0..2000u32 {
        let room = edge.wrapping_sub(seq) as usize;
        if room == 0 {
            break;
        }
        // Odd sizes, so the rest of the window is rarely a multiple of the scale.
        let len = room.min(997 - (i as usize % 7) * 13);
        send(&mut c, t(20), &Seg { seq, ack: Some(ISS + 1), win: 1000, payload: vec![7u8; len], ..Seg::default() });
        let a = recv(&mut c, t(20)).pop().expect("an ACK for every segment");
        assert_eq!(a.ack, Some(seq.wrapping_add(len as u32)), "byte {total}: data inside the announced window is kept");
        seq = seq.wrapping_add(len as u32);
        total += len;
        let new_edge = a.ack.unwrap().wrapping_add((a.win as u32) << ws);
        if (new_edge.wrapping_sub(edge) as i32) > 0 {
            edge = new_edge;
        }
    }
    assert_eq!(c.counters.rcv_buffer_drops, 0);
    assert!(total >= 256 * 1024, "the whole buffer filled: {total}");
    assert_eq!(edge, seq, "and the window closed");
}

/// An ACK that advances SND.UNA carries the peer's newest window, even on a segment whose
/// sequence number is old (a retransmission of the peer's data): the window must be taken
/// from it (as Linux's tcp_may_update_window does). Under RFC 9293's WL1/WL2 test alone the
/// old window stayed and slid forward with SND.UNA, past the edge the peer had announced: a
/// sender sent data into a window its peer had closed (seen in the handoff simulation with a
/// client that stopped reading, whose zero window then refused the ACKs it needed).
#[test]
fn an_ack_that_advances_una_updates_the_window_even_on_an_old_segment() {
    let mut c = established();
    send(&mut c, t(20), &Seg { ack: Some(ISS + 1), win: 3000, ..Seg::default() });
    c.send(&[1u8; 6000]).unwrap();
    let out: usize = recv(&mut c, t(20)).iter().map(|s| s.payload.len()).sum();
    assert_eq!(out, 3000, "the window's worth");
    // The peer sends data (WL1 moves to its latest segment) ...
    send(&mut c, t(21), &Seg { seq: IRS + 1, ack: Some(ISS + 1), win: 3000, payload: vec![2; 100], ..Seg::default() });
    send(&mut c, t(22), &Seg { seq: IRS + 101, ack: Some(ISS + 1), win: 3000, payload: vec![2; 100], ..Seg::default() });
    recv(&mut c, t(22));
    // ... then retransmits from its first segment (with new bytes after the old ones, so the
    // segment is acceptable), acknowledging everything, its window closed.
    send(&mut c, t(30), &Seg { seq: IRS + 1, ack: Some(ISS + 3001), win: 0, payload: vec![2; 300], ..Seg::default() });
    let sent: Vec<Seg> = recv(&mut c, t(30));
    assert!(sent.iter().all(|s| s.payload.is_empty()), "nothing sent into a closed window: {:?}", sent.iter().map(|s| (s.seq, s.payload.len())).collect::<Vec<_>>());
    assert!(c.timer(Timer::Persist).is_some(), "probing the zero window instead");
}
