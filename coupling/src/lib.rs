//! The coupling region: how the stacks of a plex cluster share state.
//!
//! A cluster's stacks (processes) map one file under `/dev/shm` and coordinate through it
//! without locks or daemons: every shared word is an atomic in a `#[repr(C)]` row whose byte
//! map is [`layout`] (and `coupling/LAYOUT.md`, checked against it by a test). Ownership
//! changes are compare-and-swap on words that carry a generation.
//!
//! - [`region`]: creating, attaching and validating the mapping (magic, version, section
//!   table, config hash). The only module here that makes system calls.
//! - [`ring`]: lock-free single-producer single-consumer message rings, one per ordered pair
//!   of stacks: the members' signalling path (as XCF is in a z/OS sysplex).
//! - [`node`]: one stack's membership (incarnation, lease, fencing) and its part of the
//!   dynamic VIPA protocol (addresses of the cluster, each held by one stack at a time):
//!   activation, takeover, immediate and delayed giveback, bind activation inside VIPA ranges.
//!   Its module documentation states the protocol.
//! - [`dist`]: the distributor (spec/02): a distributed DVIPA's holder routes each new
//!   connection to one of the stacks listening on it, keeps the connection routing table,
//!   and hands it on without a reset when it fails or its primary returns.
//! - [`ports`]: cluster-wide ports (spec/03): the stacks sharing a source DVIPA take its
//!   local ports (or 4-tuples) from one registry, claimed and released by CAS, reclaimed from
//!   dead stacks after a quarantine; the router finds a reply's stack there.
//! - [`handoff`]: live connection handoff (spec/04): a serialized TCP connection travels from
//!   its stack to another in a slot of the region; one CAS on the slot's control word decides
//!   who owns it, so it has exactly one owner at every crash point.
//! - [`check`]: validation of every row read from the region (named reasons, counted).
//! - [`ops`]: read-only views and operator commands for `plex ctl`.
//! - [`config`]: the cluster config (TOML).
//!
//! Like `stack`, this crate is sans-IO apart from the mapping: every entry point takes `now`
//! (CLOCK_MONOTONIC nanoseconds, comparable between processes), nothing sleeps or spawns, so
//! the whole protocol runs with several stacks in one test process and simulated time.
//! Reserved sections (frame rings, and the superseded first handoff and port registry
//! sections) are laid out and zeroed.

#![deny(missing_docs)]

pub mod check;
pub mod config;
pub mod dist;
pub mod handoff;
pub mod layout;
pub mod node;
pub mod ops;
pub mod ports;
pub mod region;
pub mod ring;
pub mod words;

pub use config::ClusterConfig;
pub use dist::{DistAction, Distributor, Route};
pub use handoff::{Handoff, HandoffError, HandoffEvent, TransferId};
pub use node::{Action, ConnectionFate, Node};
pub use ports::{PortOwner, PortsError, Registry};
pub use region::{Region, RegionError};

#[cfg(test)]
mod tests {
    use crate::layout::*;
    use core::mem::{offset_of, size_of};

    fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
        size_of::<F>()
    }

    /// (table heading, field, offset, size) of every field of every row.
    fn code_fields() -> Vec<(&'static str, &'static str, usize, usize)> {
        macro_rules! rows {
            ($($t:literal, $ty:ty: [$($field:ident),*]);*) => {
                vec![$($(($t, stringify!($field), offset_of!($ty, $field), size_of_field(|v: &$ty| &v.$field))),*),*]
            };
        }
        let v = rows![
            "Header", Header: [magic, major, minor, region_len, config_hash, created_ns, join_seq, name, section_count, _pad, sections, _reserved];
            "Section row", SectionRow: [kind, entry_size, offset, count];
            "Member row", MemberRow: [word, incarnation, pid, ifindex, mac, lease_ms, join_seq, addr, queues, failed_ns, name, iface, joined_ns, ignored];
            "DVIPA row", DvipaRow: [owner, addr, prefix, conns, _pad, changed_ns, activator_pid, roles, moves, announced, _reserved];
            "Message ring", RingRow: [head, _pad0, tail, _pad1, slots];
            "Message slot", MessageSlot: [words];
            "DPT row", DptRow: [seq, key, router, epoch, listeners, flags, weight, queue_free, busy_permille, conns, srvstat_seq, syns];
            "CRT row", CrtRow: [ctl, client, server, target_inc, created_ns, check, _reserved];
            "Port registry row", PortRegistryRow: [addr, mode, seeded_ns, _reserved, bitmap, owners];
            "Port tuple row", PortTupleRow: [ctl, local, remote, check];
            "Handoff slot row", HandoffSlotRow: [ctl, id, from_inc, to_inc, local, remote, len, flags, reason, offered_ns, check, decided_ns, _reserved, data];
            "Member command row", MemberCommandRow: [drain, drain_done, drain_moved, drain_left, _reserved]
        ];
        v
    }

    /// Parse the `| offset | size | field |` tables of LAYOUT.md, by `##`/`###` heading.
    fn doc_fields() -> Vec<(String, String, usize, usize)> {
        let doc = include_str!("../LAYOUT.md");
        let mut heading = String::new();
        let mut out = Vec::new();
        for line in doc.lines() {
            if let Some(h) = line.strip_prefix("### ").or_else(|| line.strip_prefix("## ")) {
                heading = h.split(" (").next().unwrap_or(h).to_string();
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 5 {
                continue;
            }
            if let (Ok(off), Ok(size)) = (cells[1].parse::<usize>(), cells[2].parse::<usize>()) {
                if !cells[3].is_empty() && !cells[3].chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                    out.push((heading.clone(), cells[3].to_string(), off, size));
                }
            }
        }
        out
    }

    #[test]
    fn layout_md_matches_the_code() {
        let code: Vec<(String, String, usize, usize)> =
            code_fields().into_iter().map(|(t, f, o, s)| (t.to_string(), f.to_string(), o, s)).collect();
        let doc = doc_fields();
        assert_eq!(doc, code, "LAYOUT.md and src/layout.rs disagree");
        // Row sizes, and the section table of LAYOUT.md against `SectionKind::shape`.
        let text = include_str!("../LAYOUT.md");
        for k in SectionKind::ALL {
            let (size, count) = k.shape();
            let row = format!("| {} | {:?} | {size} | {count} |", k as u32, k);
            assert!(text.contains(&row), "LAYOUT.md lacks the section row {row:?}");
        }
        assert!(text.contains(&format!("**{MAJOR}.{MINOR}**")));
        assert!(text.contains("(offset 0, 512 bytes)") && size_of::<Header>() == 512);
        assert!(text.contains("## Member row (128 bytes)") && size_of::<MemberRow>() == 128);
        assert!(text.contains("## DVIPA row (128 bytes") && size_of::<DvipaRow>() == 128);
        assert!(text.contains(&format!("## Message ring ({} bytes)", size_of::<RingRow>())));
        assert!(text.contains("## DPT row (64 bytes)") && size_of::<DptRow>() == 64);
        assert!(text.contains("## CRT row (64 bytes)") && size_of::<CrtRow>() == 64);
        assert!(text.contains("## Port registry row (270368 bytes)") && size_of::<PortRegistryRow>() == 270_368);
        assert!(text.contains("## Port tuple row (32 bytes)") && size_of::<PortTupleRow>() == 32);
        assert!(text.contains("## Handoff slot row (1048576 bytes)") && size_of::<HandoffSlotRow>() == 1_048_576);
        assert!(text.contains("## Member command row (64 bytes)") && size_of::<MemberCommandRow>() == 64);
    }
}
