//! Sender-side loss recovery, segment by segment: SACK-based recovery (RFC 6675), tail loss
//! probes (RFC 8985 7) and lost retransmissions (RFC 8985 6.2's idea applied to the left edge).
//!
//! The peer's side is written out by hand: which of our segments it got, and the SACK blocks
//! of each duplicate ACK. Segment `k` of the data is `[B + 1000 k, B + 1000 (k + 1))`.

use super::*;

/// First data byte.
const B: u32 = ISS + 1;

/// Start of data segment `k` (1000-byte segments).
fn seg_at(k: u32) -> u32 {
    B + 1000 * k
}

/// ESTABLISHED with SACK permitted, NewReno (its halving makes the windows easy to follow),
/// MSS 1000, no timestamps. The handshake takes 10 ms: SRTT 10 ms, RTO 200 ms (the floor).
fn established_sack() -> Connection {
    let cfg = Config {
        sack: true,
        congestion: crate::tcp::Algorithm::NewReno,
        send_buffer: 64 * 1024,
        ..cfg()
    };
    let mut c = Connection::connect(t(0), tuple(), SeqNumber(ISS), 0, &cfg);
    let syn = recv(&mut c, t(0));
    assert!(syn[0].sack_perm);
    send(&mut c, t(10), &Seg { seq: IRS, ctl: TcpControl::Syn, mss: Some(1000), sack_perm: true, ..Seg::default() });
    assert_eq!(c.state(), State::Established);
    recv(&mut c, t(10));
    events(&mut c);
    assert!(c.opts.sack_ok);
    c
}

/// A duplicate ACK of `ack` carrying `sack` (pairs of data segment indices, `[from, to)`).
fn dupack(ack: u32, sack: &[(u32, u32)]) -> Seg {
    Seg { ack: Some(ack), sack: sack.iter().map(|&(a, b)| (seg_at(a), seg_at(b))).collect(), ..Seg::default() }
}

/// (first sequence number, payload length) of each segment.
fn sent(s: &[Seg]) -> Vec<(u32, usize)> {
    s.iter().map(|s| (s.seq, s.payload.len())).collect()
}

/// RFC 6675: segments 1 and 3 of a flight are lost. Duplicate ACKs whose SACK blocks report
/// the segments around them mark a hole lost once `DupThresh` segments' worth lie above it;
/// the lost holes are retransmitted in order, and only while `pipe < cwnd` (5 step 4): the
/// first at once, the second when SACKs have taken enough out of the pipe, new data after.
#[test]
fn sack_recovery_retransmits_the_lost_holes_within_pipe() {
    let mut c = established_sack();
    // Twelve segments' worth: while not in recovery, SACKed bytes leave the pipe and
    // would let unsent data go out on the duplicate ACKs.
    c.send(&[5u8; 12_000]).unwrap();
    let s = recv(&mut c, t(20));
    assert_eq!(sent(&s), (0..10).map(|k| (seg_at(k), 1000)).collect::<Vec<_>>(), "initial window: 10 segments");
    // Segment 0 arrives: slow start opens the window by one segment, the last two go out.
    send(&mut c, t(30), &Seg { ack: Some(seg_at(1)), ..Seg::default() });
    assert_eq!(sent(&recv(&mut c, t(30))), vec![(seg_at(10), 1000), (seg_at(11), 1000)]);
    // In flight: 1..=11. Lost: 1 and 3. The peer reports 2, then 4, then 5 and 6.
    send(&mut c, t(31), &dupack(seg_at(1), &[(2, 3)]));
    send(&mut c, t(32), &dupack(seg_at(1), &[(4, 5), (2, 3)]));
    assert!(recv(&mut c, t(32)).is_empty(), "two duplicate ACKs: not yet");
    send(&mut c, t(33), &dupack(seg_at(1), &[(4, 7), (2, 3)]));
    // Third duplicate ACK: fast recovery, ssthresh = cwnd = 11 segments in flight / 2.
    assert!(c.loss.recovery.is_some());
    assert_eq!(c.cwnd(), 5500);
    // Both holes are lost now (3 and 4 segments SACKed above them, more than
    // (DupThresh - 1) * SMSS), but pipe = 5 segments (7..=11) and the first retransmission
    // goes regardless of cwnd (step 4.1); after it pipe is 6000 > cwnd: segment 3 waits.
    assert_eq!(sent(&recv(&mut c, t(33))), vec![(seg_at(1), 1000)]);
    assert_eq!(c.pipe(), 6000);
    // Segment 7 SACKed: pipe 5000 < 5500, room for one: the next hole, segment 3.
    send(&mut c, t(34), &dupack(seg_at(1), &[(4, 8), (2, 3)]));
    assert_eq!(sent(&recv(&mut c, t(34))), vec![(seg_at(3), 1000)]);
    // The application writes more. Segment 8 SACKed: pipe 5000, room for 500 bytes: no
    // full segment, nothing is sent.
    c.send(&[5u8; 2000]).unwrap();
    send(&mut c, t(35), &dupack(seg_at(1), &[(4, 9), (2, 3)]));
    assert!(recv(&mut c, t(35)).is_empty());
    // Segment 9 SACKed: pipe 4000, nothing left to retransmit: one new segment.
    send(&mut c, t(36), &dupack(seg_at(1), &[(4, 10), (2, 3)]));
    assert_eq!(sent(&recv(&mut c, t(36))), vec![(seg_at(12), 1000)]);
    assert!(c.pipe() <= c.cwnd());
    assert_eq!(c.counters.retrans_segs, 2);
    assert_eq!(c.counters.timeouts, 0);
}

/// RFC 8985 7: the last segment of a flight is lost and no ACK will come for it. The probe
/// timeout (2 SRTT) fires long before the RTO and resends the last segment (no new data is
/// queued), whose ACK ends the episode without a timeout.
#[test]
fn tail_loss_probe_resends_the_last_segment_at_pto() {
    let mut c = established_sack();
    c.send(&[6u8; 4000]).unwrap();
    assert_eq!(recv(&mut c, t(20)).len(), 4);
    // Segments 0..=2 arrive; 3, the tail, is lost.
    send(&mut c, t(30), &Seg { ack: Some(seg_at(3)), ..Seg::default() });
    assert!(recv(&mut c, t(30)).is_empty());
    assert_eq!(c.srtt(), Some(Duration::from_millis(10)));
    let pto = t(30 + 20);
    let rto = c.timer(Timer::Retransmit).unwrap();
    assert_eq!(c.timer(Timer::LossProbe), Some(pto), "PTO = 2 SRTT after the last ACK");
    assert!(rto >= t(230), "RTO at the 200 ms floor: {rto:?}");
    assert_eq!(c.poll_timeout(), Some(pto));
    c.handle_timeout(t(30 + 19));
    assert!(recv(&mut c, t(30 + 19)).is_empty(), "nothing before the PTO");
    c.handle_timeout(pto);
    assert_eq!(sent(&recv(&mut c, pto)), vec![(seg_at(3), 1000)], "the probe: the last segment again");
    assert_eq!(c.counters.loss_probes, 1);
    assert_eq!(c.counters.timeouts, 0);
    // The probe's ACK covers everything: no retransmission timeout ever fires.
    send(&mut c, pto + Duration::from_millis(10), &Seg { ack: Some(seg_at(4)), ..Seg::default() });
    assert_eq!(c.send_queue(), 0);
    assert_eq!(c.timer(Timer::Retransmit), None);
    assert_eq!(c.counters.timeouts, 0);
}

/// A retransmission can be lost too. Segment 1 is lost, retransmitted in fast recovery, and
/// the retransmission is lost as well: SACKs for later data keep arriving but the left edge
/// does not move. Once the retransmission has been out longer than a round trip (SRTT plus a
/// quarter SRTT of reordering window) while newly SACKed data arrives, it is resent at once,
/// long before the RTO.
#[test]
fn lost_retransmission_is_resent_before_the_rto() {
    let mut c = established_sack();
    c.send(&[7u8; 10_000]).unwrap();
    assert_eq!(recv(&mut c, t(20)).len(), 10);
    send(&mut c, t(30), &Seg { ack: Some(seg_at(1)), ..Seg::default() });
    assert!(recv(&mut c, t(30)).is_empty());
    // Segment 1 lost; 2, 3, 4 reported: fast recovery and the retransmission at t = 33 ms.
    send(&mut c, t(31), &dupack(seg_at(1), &[(2, 3)]));
    send(&mut c, t(32), &dupack(seg_at(1), &[(2, 4)]));
    send(&mut c, t(33), &dupack(seg_at(1), &[(2, 5)]));
    assert_eq!(sent(&recv(&mut c, t(33))), vec![(seg_at(1), 1000)]);
    // 7 ms later (less than 12.5 ms): new SACKs, but the retransmission may still arrive.
    send(&mut c, t(40), &dupack(seg_at(1), &[(2, 7)]));
    assert!(recv(&mut c, t(40)).is_empty());
    // 17 ms after it: lost again. Resent now, not at the RTO.
    send(&mut c, t(50), &dupack(seg_at(1), &[(2, 9)]));
    assert_eq!(sent(&recv(&mut c, t(50))), vec![(seg_at(1), 1000)]);
    assert_eq!(c.counters.lost_retransmits, 1);
    assert!(c.timer(Timer::Retransmit).unwrap() > t(200));
    assert_eq!(c.counters.timeouts, 0);
    // It arrives: everything is acknowledged and recovery ends.
    send(&mut c, t(60), &Seg { ack: Some(seg_at(10)), ..Seg::default() });
    assert_eq!(c.send_queue(), 0);
    assert!(c.loss.recovery.is_none());
}

/// Without SACK a lost retransmission shows as duplicate ACKs that keep coming: every
/// segment sent after it arrives, it does not. After a retransmission timeout, go-back-N
/// resends segments 5 to 9 (1 to 4 had arrived); the resent segment 5 is lost again while
/// 6 to 9 arrive. The duplicate ACKs for segment 5 that come later than a round trip after
/// its retransmission resend it at once, instead of a second, backed-off timeout (found by
/// the transfer sweep, seed 31060: 5 % loss without SACK or timestamps, each lost go-back-N
/// retransmission cost a timeout twice as long as the last, 102 s by the fifth).
#[test]
fn lost_retransmission_without_sack_is_resent_on_late_duplicate_acks() {
    let cfg = Config { congestion: crate::tcp::Algorithm::NewReno, send_buffer: 64 * 1024, ..cfg() };
    let mut c = established_with(cfg);
    assert!(!c.opts.sack_ok);
    c.send(&[9u8; 10_000]).unwrap();
    assert_eq!(recv(&mut c, t(20)).len(), 10);
    // Segment 0 is lost: 1 to 9 bring duplicate ACKs, fast recovery resends 0, and that
    // retransmission is lost as well; segment 5 had been lost too. The timeout fires.
    for i in 0..3 {
        send(&mut c, t(30 + i), &Seg { ack: Some(seg_at(0)), ..Seg::default() });
    }
    assert_eq!(sent(&recv(&mut c, t(33))), vec![(seg_at(0), 1000)]);
    let rto = c.timer(Timer::Retransmit).unwrap();
    c.handle_timeout(rto);
    assert_eq!(sent(&recv(&mut c, rto)), vec![(seg_at(0), 1000)], "go-back-N from the left edge");
    // The resent segment 0 fills the first hole: the receiver holds 0 to 4.
    let t1 = rto + Duration::from_millis(10);
    send(&mut c, t1, &Seg { ack: Some(seg_at(5)), ..Seg::default() });
    let resent = sent(&recv(&mut c, t1));
    assert_eq!(resent.first(), Some(&(seg_at(5), 1000)), "go-back-N goes on at segment 5: {resent:?}");
    assert!(resent.len() >= 2, "slow start lets more than one segment go: {resent:?}");
    // Segment 5's retransmission is lost; the others arrive and are duplicate ACKs for it.
    // Within a round trip (plus a quarter of one) of the retransmission: it may still come.
    send(&mut c, t1 + Duration::from_millis(5), &Seg { ack: Some(seg_at(5)), ..Seg::default() });
    send(&mut c, t1 + Duration::from_millis(6), &Seg { ack: Some(seg_at(5)), ..Seg::default() });
    send(&mut c, t1 + Duration::from_millis(7), &Seg { ack: Some(seg_at(5)), ..Seg::default() });
    let early = sent(&recv(&mut c, t1 + Duration::from_millis(7)));
    assert!(!early.contains(&(seg_at(5), 1000)), "not yet: {early:?}");
    // Later than that, a duplicate ACK still says segment 5 is missing: resent now.
    send(&mut c, t1 + Duration::from_millis(20), &Seg { ack: Some(seg_at(5)), ..Seg::default() });
    let late = sent(&recv(&mut c, t1 + Duration::from_millis(20)));
    assert_eq!(late.first(), Some(&(seg_at(5), 1000)), "the lost retransmission again: {late:?}");
    assert_eq!(c.counters.lost_retransmits, 1);
    assert_eq!(c.counters.timeouts, 1, "no second timeout");
    // It arrives: everything up to what was sent is acknowledged and the recovery ends.
    let top = c.snd.nxt.0;
    send(&mut c, t1 + Duration::from_millis(30), &Seg { ack: Some(top), ..Seg::default() });
    assert!(c.loss.recovery.is_none());
}
