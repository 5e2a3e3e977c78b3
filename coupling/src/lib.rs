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
//!   of stacks (the patent's XCF).
//! - [`node`]: one stack's membership (incarnation, lease, fencing) and its part of the
//!   dynamic VIPA protocol of spec/01: activation, takeover, immediate and delayed giveback,
//!   bind activation inside VIPA ranges.
//! - [`ops`]: read-only views and operator commands for `plex ctl`.
//! - [`config`]: the cluster config (TOML).
//!
//! Like `stack`, this crate is sans-IO apart from the mapping: every entry point takes `now`
//! (CLOCK_MONOTONIC nanoseconds, comparable between processes), nothing sleeps or spawns, so
//! the whole protocol runs with several stacks in one test process and simulated time.
//! Reserved sections (distributor tables, port registry, frame rings, handoff records) are
//! laid out and zeroed for the features that follow.

pub mod config;
pub mod layout;
pub mod node;
pub mod ops;
pub mod region;
pub mod ring;
pub mod words;

pub use config::ClusterConfig;
pub use node::{Action, Departure, Node};
pub use region::{Region, RegionError};
