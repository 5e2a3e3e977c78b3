//! The packed words that change by compare-and-swap: a member's state word and a DVIPA's
//! owner word (bit layouts in LAYOUT.md).

use crate::layout::{DvipaState, MemberState, Origin, NO_SLOT};

/// `state:8 | incarnation:16 | heartbeat_ms:40`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberWord {
    pub state: MemberState,
    /// Low 16 bits of the incarnation.
    pub inc: u16,
    /// CLOCK_MONOTONIC milliseconds of the last renewal (40 bits: 34 years).
    pub heartbeat_ms: u64,
}

impl MemberWord {
    pub fn pack(self) -> u64 {
        self.state as u64 | (self.inc as u64) << 8 | (self.heartbeat_ms & ((1 << 40) - 1)) << 24
    }
    pub fn unpack(w: u64) -> MemberWord {
        MemberWord { state: MemberState::from_u8(w as u8), inc: (w >> 8) as u16, heartbeat_ms: w >> 24 }
    }
}

/// `owner:8 | prev:8 | state:8 | origin:8 | generation:32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerWord {
    pub owner: u8,
    /// The stack a `Moving` address comes from (or the last owner).
    pub prev: u8,
    pub state: DvipaState,
    pub origin: Origin,
    pub generation: u32,
}

impl OwnerWord {
    pub const EMPTY: OwnerWord =
        OwnerWord { owner: NO_SLOT, prev: NO_SLOT, state: DvipaState::Inactive, origin: Origin::None, generation: 0 };

    pub fn pack(self) -> u64 {
        self.owner as u64
            | (self.prev as u64) << 8
            | (self.state as u64) << 16
            | (self.origin as u64) << 24
            | (self.generation as u64) << 32
    }
    pub fn unpack(w: u64) -> OwnerWord {
        OwnerWord {
            owner: w as u8,
            prev: (w >> 8) as u8,
            state: DvipaState::from_u8((w >> 16) as u8),
            origin: Origin::from_u8((w >> 24) as u8),
            generation: (w >> 32) as u32,
        }
    }
    /// The next word: same generation + 1.
    pub fn next(self, owner: u8, prev: u8, state: DvipaState, origin: Origin) -> OwnerWord {
        OwnerWord { owner, prev, state, origin, generation: self.generation.wrapping_add(1) }
    }
    /// A stack holds the address (it answers for it, or is about to).
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
