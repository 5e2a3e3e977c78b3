//! The sender's SACK scoreboard and the loss-recovery arithmetic of RFC 6675.
//!
//! The scoreboard holds the SACKed ranges above `snd_una`, sorted and disjoint. Between them
//! lie *holes*. Every byte of one hole has the same SACKed bytes above it, so RFC 6675's
//! `IsLost` is decided per hole: lost when `DupThresh` discontiguous SACKed ranges lie above
//! it, or more than `(DupThresh - 1) * SMSS` SACKed bytes. On top of that, everything below
//! `lost_until` is lost by decree: the connection sets it to the recovery point after a
//! retransmission timeout (RFC 6675 5.1) and to the first segment when it enters fast recovery
//! (RFC 6582 for peers without SACK, RFC 6675 5 step 3 with it).

use crate::wire::SeqNumber;

/// RFC 6675 2: DupThresh.
pub const DUP_THRESH: usize = 3;

/// The SACKed ranges above `snd_una` the peer has reported (RFC 6675 2 "scoreboard"), as
/// `[left, right)` sequence ranges, ascending and disjoint, with their byte total. Cleared
/// after a retransmission timeout, since the receiver may renege (RFC 2018 8).
#[derive(Debug, Clone, Default)]
pub struct Scoreboard {
    blocks: Vec<(SeqNumber, SeqNumber)>,
    sacked: usize,
}

/// A hole of the scoreboard and how much of it counts as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// First sequence number not SACKed (`snd_una` or the right edge of a SACKed range).
    pub start: SeqNumber,
    /// Sequence number where the next SACKed range starts, or `snd_nxt` for the top hole.
    pub end: SeqNumber,
    /// `[start, lost_end)` is lost.
    pub lost_end: SeqNumber,
}

impl Hole {
    /// The hole's share of RFC 6675 `pipe`: its bytes not deemed lost, plus those
    /// retransmitted (below `high_rxt`).
    fn pipe(&self, high_rxt: SeqNumber) -> usize {
        let len = self.end.distance_from(self.start);
        let lost = self.lost_end.distance_from(self.start);
        let rtx = high_rxt.min(self.end).distance_from(self.start);
        len - lost + rtx
    }
}

impl Scoreboard {
    /// Most disjoint SACKed ranges remembered. When a new one would exceed it, the lowest is
    /// forgotten: the highest ranges decide `IsLost` for everything below them.
    pub const MAX_BLOCKS: usize = 32;

    /// An empty scoreboard, with room for [`Scoreboard::MAX_BLOCKS`] allocated up front.
    pub fn new() -> Scoreboard {
        Scoreboard { blocks: Vec::with_capacity(Self::MAX_BLOCKS + 1), sacked: 0 }
    }
    /// Nothing above `snd_una` is SACKed.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
    /// The SACKed ranges `[left, right)`, ascending and disjoint.
    pub fn blocks(&self) -> &[(SeqNumber, SeqNumber)] {
        &self.blocks
    }
    /// Total bytes in the SACKed ranges.
    pub fn sacked_bytes(&self) -> usize {
        self.sacked
    }
    /// Forget every range (after a retransmission timeout, RFC 2018 8: the receiver may have
    /// reneged).
    pub fn clear(&mut self) {
        self.blocks.clear();
        self.sacked = 0;
    }
    /// The right edge of the highest SACKed range: one past the highest byte the peer reports
    /// received. `None` when nothing is SACKed.
    pub fn highest_sacked(&self) -> Option<SeqNumber> {
        self.blocks.last().map(|b| b.1)
    }

    /// Merge the SACK blocks of an incoming ACK. Blocks outside `(snd_una, snd_nxt]` are
    /// ignored (RFC 2018 allows nothing else; D-SACK below snd_una is not used). Returns the
    /// number of bytes newly SACKed.
    pub fn update(
        &mut self,
        snd_una: SeqNumber,
        snd_nxt: SeqNumber,
        incoming: &[(SeqNumber, SeqNumber)],
    ) -> usize {
        let before = self.sacked;
        for &(l, r) in incoming {
            let l = l.max(snd_una);
            let r = r.min(snd_nxt);
            if l >= r {
                continue;
            }
            self.insert(l, r);
        }
        self.sacked.saturating_sub(before)
    }

    fn insert(&mut self, l: SeqNumber, r: SeqNumber) {
        let first = self.blocks.partition_point(|&(_, e)| e < l);
        let last = self.blocks.partition_point(|&(s, _)| s <= r);
        if first == last {
            if self.blocks.len() >= Self::MAX_BLOCKS {
                // Keep the highest blocks: they decide IsLost for everything below.
                if first == 0 {
                    return;
                }
                let (s, e) = self.blocks.remove(0);
                self.sacked -= e.distance_from(s);
                self.blocks.insert(first - 1, (l, r));
            } else {
                self.blocks.insert(first, (l, r));
            }
            self.sacked += r.distance_from(l);
        } else {
            let s = l.min(self.blocks[first].0);
            let e = r.max(self.blocks[last - 1].1);
            for &(bs, be) in &self.blocks[first..last] {
                self.sacked -= be.distance_from(bs);
            }
            self.blocks[first] = (s, e);
            self.blocks.drain(first + 1..last);
            self.sacked += e.distance_from(s);
        }
    }

    /// The cumulative ACK moved to `snd_una`: forget what it covers.
    pub fn ack(&mut self, snd_una: SeqNumber) {
        let mut drop = 0;
        for b in self.blocks.iter_mut() {
            if b.1 <= snd_una {
                drop += 1;
                self.sacked -= b.1.distance_from(b.0);
            } else {
                if b.0 < snd_una {
                    self.sacked -= snd_una.distance_from(b.0);
                    b.0 = snd_una;
                }
                break;
            }
        }
        self.blocks.drain(..drop);
    }

    /// Holes in `[snd_una, snd_nxt)`, lowest first, with their lost part.
    pub fn holes(
        &self,
        snd_una: SeqNumber,
        snd_nxt: SeqNumber,
        lost_until: SeqNumber,
        mss: usize,
    ) -> impl Iterator<Item = Hole> + '_ {
        let n = self.blocks.len();
        let mut sacked_above = self.sacked;
        (0..=n).filter_map(move |i| {
            let start = if i == 0 { snd_una } else { self.blocks[i - 1].1 };
            let end = if i < n { self.blocks[i].0 } else { snd_nxt };
            let blocks_above = n - i;
            let lost_by_sack = blocks_above >= DUP_THRESH
                || sacked_above > (DUP_THRESH - 1) * mss.max(1);
            if i < n {
                sacked_above -= self.blocks[i].1.distance_from(self.blocks[i].0);
            }
            if start >= end {
                return None;
            }
            let lost_end = if lost_by_sack { end } else { lost_until.min(end).max(start) };
            Some(Hole { start, end, lost_end })
        })
    }

    /// RFC 6675 `pipe`: bytes believed in flight. `high_rxt` is the highest byte retransmitted.
    pub fn pipe(
        &self,
        snd_una: SeqNumber,
        snd_nxt: SeqNumber,
        high_rxt: SeqNumber,
        lost_until: SeqNumber,
        mss: usize,
    ) -> usize {
        if self.blocks.is_empty() {
            // One hole, [snd_una, snd_nxt), lost below lost_until (the common case, computed
            // without the iterator: this runs for every segment the connection considers).
            if snd_una >= snd_nxt {
                return 0;
            }
            let lost_end = lost_until.min(snd_nxt).max(snd_una);
            return Hole { start: snd_una, end: snd_nxt, lost_end }.pipe(high_rxt);
        }
        self.holes(snd_una, snd_nxt, lost_until, mss).map(|h| h.pipe(high_rxt)).sum()
    }

    /// RFC 6675 `NextSeg` rule 1: the first lost byte not yet retransmitted, and how many lost
    /// bytes follow it contiguously.
    pub fn next_lost(
        &self,
        snd_una: SeqNumber,
        snd_nxt: SeqNumber,
        high_rxt: SeqNumber,
        lost_until: SeqNumber,
        mss: usize,
    ) -> Option<(SeqNumber, usize)> {
        if self.blocks.is_empty() {
            // No SACK information: only what lies below lost_until is lost.
            if lost_until <= snd_una || snd_una >= snd_nxt {
                return None;
            }
        }
        self.holes(snd_una, snd_nxt, lost_until, mss).find_map(|h| {
            let from = h.start.max(high_rxt);
            (from < h.lost_end).then(|| (from, h.lost_end.distance_from(from)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u32) -> SeqNumber {
        SeqNumber(n)
    }

    #[test]
    fn empty_scoreboard_fast_paths_match_the_hole_walk() {
        let sb = Scoreboard::new();
        let mut rng = crate::rand::Rng::new(7);
        for _ in 0..20_000 {
            let base = rng.next_u32();
            let at = |rng: &mut crate::rand::Rng| SeqNumber(base.wrapping_add(rng.below(4000) as u32));
            let (una, nxt, rxt, lost) = (at(&mut rng), at(&mut rng), at(&mut rng), at(&mut rng));
            let pipe: usize = sb
                .holes(una, nxt, lost, 100)
                .map(|h| h.end.distance_from(h.start) - h.lost_end.distance_from(h.start) + rxt.min(h.end).distance_from(h.start))
                .sum();
            assert_eq!(sb.pipe(una, nxt, rxt, lost, 100), pipe, "una {una:?} nxt {nxt:?} rxt {rxt:?} lost {lost:?}");
            let next = sb.holes(una, nxt, lost, 100).find_map(|h| {
                let from = h.start.max(rxt);
                (from < h.lost_end).then(|| (from, h.lost_end.distance_from(from)))
            });
            assert_eq!(sb.next_lost(una, nxt, rxt, lost, 100), next);
        }
    }

    #[test]
    fn update_merges_and_clips() {
        let mut sb = Scoreboard::new();
        assert_eq!(sb.update(s(1000), s(9000), &[(s(2000), s(3000)), (s(500), s(1500))]), 1500);
        assert_eq!(sb.blocks(), &[(s(1000), s(1500)), (s(2000), s(3000))]);
        assert_eq!(sb.update(s(1000), s(9000), &[(s(1400), s(2100))]), 500);
        assert_eq!(sb.blocks(), &[(s(1000), s(3000))]);
        assert_eq!(sb.sacked_bytes(), 2000);
        sb.ack(s(2500));
        assert_eq!(sb.blocks(), &[(s(2500), s(3000))]);
        assert_eq!(sb.sacked_bytes(), 500);
        assert_eq!(sb.update(s(2500), s(9000), &[(s(9000), s(9500))]), 0, "beyond snd_nxt");
    }

    #[test]
    fn is_lost_by_three_blocks_or_bytes() {
        let mss = 100;
        let mut sb = Scoreboard::new();
        // Segments of 100 from 0; 1,3,5 are SACKed (three discontiguous blocks above 0).
        sb.update(s(0), s(700), &[(s(100), s(200)), (s(300), s(400)), (s(500), s(600))]);
        let holes: Vec<Hole> = sb.holes(s(0), s(700), s(0), mss).collect();
        assert_eq!(holes.len(), 4);
        assert_eq!(holes[0], Hole { start: s(0), end: s(100), lost_end: s(100) });
        // Hole [200,300): two blocks and 200 bytes above: not more than 2*MSS: not lost.
        assert_eq!(holes[1].lost_end, s(200));
        assert_eq!(holes[3], Hole { start: s(600), end: s(700), lost_end: s(600) });
        // pipe: holes 1..3 in flight (300 bytes), hole 0 lost.
        assert_eq!(sb.pipe(s(0), s(700), s(0), s(0), mss), 300);
        assert_eq!(sb.next_lost(s(0), s(700), s(0), s(0), mss), Some((s(0), 100)));
        // After retransmitting hole 0 it counts once more, and nothing else is lost.
        assert_eq!(sb.pipe(s(0), s(700), s(100), s(0), mss), 400);
        assert_eq!(sb.next_lost(s(0), s(700), s(100), s(0), mss), None);
    }

    #[test]
    fn lost_until_declares_loss_without_sack() {
        let sb = Scoreboard::new();
        // NewReno entering recovery: the first segment is lost.
        assert_eq!(sb.next_lost(s(0), s(1000), s(0), s(100), 100), Some((s(0), 100)));
        assert_eq!(sb.pipe(s(0), s(1000), s(0), s(100), 100), 900);
        // After an RTO everything up to the recovery point is lost.
        assert_eq!(sb.pipe(s(0), s(1000), s(0), s(1000), 100), 0);
        assert_eq!(sb.pipe(s(0), s(1000), s(300), s(1000), 100), 300);
        assert_eq!(sb.next_lost(s(0), s(1000), s(300), s(1000), 100), Some((s(300), 700)));
    }

    #[test]
    fn bounded_keeps_highest_blocks() {
        let mut sb = Scoreboard::new();
        for i in 0..40u32 {
            sb.update(s(0), s(100_000), &[(s(i * 100 + 50), s(i * 100 + 60))]);
        }
        assert_eq!(sb.blocks().len(), Scoreboard::MAX_BLOCKS);
        assert_eq!(sb.highest_sacked(), Some(s(3960)));
        assert_eq!(sb.sacked_bytes(), 10 * Scoreboard::MAX_BLOCKS);
    }
}
