//! The packed words that change by compare-and-swap: a member's state word and a DVIPA's
//! owner word (bit layouts in LAYOUT.md).

use crate::layout::{DvipaState, MemberState, Origin, NO_SLOT};

/// A member's state word, [`MemberRow::word`](crate::layout::MemberRow::word), unpacked:
/// `state:8 | incarnation:16 | heartbeat_ms:40` from the low bit up. Renewal and failure
/// declaration both CAS from the packed value the caller last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberWord {
    /// The member's state (an unknown byte unpacks as `Free`).
    pub state: MemberState,
    /// Low 16 bits of the incarnation.
    pub inc: u16,
    /// CLOCK_MONOTONIC milliseconds of the last renewal (40 bits: 34 years).
    pub heartbeat_ms: u64,
}

impl MemberWord {
    /// The word as stored in the region; `heartbeat_ms` is cut to its low 40 bits.
    pub fn pack(self) -> u64 {
        self.state as u64 | (self.inc as u64) << 8 | (self.heartbeat_ms & ((1 << 40) - 1)) << 24
    }
    /// The fields of a stored word. Total: any value unpacks (unknown states as `Free`), so
    /// a caller that must reject garbage validates the raw word first.
    pub fn unpack(w: u64) -> MemberWord {
        MemberWord { state: MemberState::from_u8(w as u8), inc: (w >> 8) as u16, heartbeat_ms: w >> 24 }
    }
}

/// A DVIPA's owner word, [`DvipaRow::owner`](crate::layout::DvipaRow::owner), unpacked:
/// `owner:8 | prev:8 | state:8 | origin:8 | generation:32` from the low bit up. It changes only
/// by CAS, and every change also changes the generation ([`OwnerWord::next`] adds one; a
/// repair of a corrupt word sets one of its own), so a CAS from a stale word fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerWord {
    /// Slot of the stack that holds (or is receiving) the address; [`NO_SLOT`] when nobody
    /// holds it.
    pub owner: u8,
    /// The stack a `Moving` address comes from (or the last owner).
    pub prev: u8,
    /// The address's state.
    pub state: DvipaState,
    /// How the current holder got the address ([`Origin::None`] when not held).
    pub origin: Origin,
    /// Advanced by every change of the word (wrapping; compared with wrapping arithmetic).
    pub generation: u32,
}

impl OwnerWord {
    /// The word of an address nobody has held: no owner, no previous owner, inactive,
    /// generation 0. A fresh region's DVIPA rows start with it.
    pub const EMPTY: OwnerWord =
        OwnerWord { owner: NO_SLOT, prev: NO_SLOT, state: DvipaState::Inactive, origin: Origin::None, generation: 0 };

    /// The word as stored in the region.
    pub fn pack(self) -> u64 {
        self.owner as u64
            | (self.prev as u64) << 8
            | (self.state as u64) << 16
            | (self.origin as u64) << 24
            | (self.generation as u64) << 32
    }
    /// The fields of a stored word. Total: unknown state and origin bytes unpack as
    /// `Inactive` and `None`, so a caller that must reject garbage validates the raw word first.
    pub fn unpack(w: u64) -> OwnerWord {
        OwnerWord {
            owner: w as u8,
            prev: (w >> 8) as u8,
            state: DvipaState::from_u8((w >> 16) as u8),
            origin: Origin::from_u8((w >> 24) as u8),
            generation: (w >> 32) as u32,
        }
    }
    /// The word that replaces this one: the given fields, and this word's generation plus one
    /// (wrapping).
    pub fn next(self, owner: u8, prev: u8, state: DvipaState, origin: Origin) -> OwnerWord {
        OwnerWord { owner, prev, state, origin, generation: self.generation.wrapping_add(1) }
    }
    /// A stack holds the address (it answers for it, or is about to): the state is active,
    /// delayed giveback or moving, with an owner slot.
    pub fn held(self) -> bool {
        matches!(self.state, DvipaState::Active | DvipaState::DelayedGiveback | DvipaState::Moving) && self.owner != NO_SLOT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        let m = MemberWord { state: MemberState::Failed, inc: 0xbeef, heartbeat_ms: (1 << 40) - 5 };
        assert_eq!(MemberWord::unpack(m.pack()), m);
        let o = OwnerWord { owner: 3, prev: 15, state: DvipaState::Moving, origin: Origin::Command, generation: u32::MAX };
        assert_eq!(OwnerWord::unpack(o.pack()), o);
        assert_eq!(o.next(1, 3, DvipaState::Active, Origin::Config).generation, 0);
        assert_eq!(OwnerWord::unpack(0), OwnerWord { owner: 0, prev: 0, ..OwnerWord::EMPTY });
        assert_eq!(OwnerWord::unpack(OwnerWord::EMPTY.pack()), OwnerWord::EMPTY);
    }
}
