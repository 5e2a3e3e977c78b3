//! # plex's TCP/IP core
//!
//! `stack` is the whole TCP/IP implementation of plex, and it performs no I/O. It never reads a
//! clock (every entry point takes `now: time::Instant`), never spawns a thread, never makes a
//! system call and never asks the OS for randomness (a seeded [`rand::Rng`] is injected). The
//! poll loop (crate `poll-loop`) feeds it Ethernet frames from AF_XDP rings; the deterministic
//! simulator ([`sim`]) feeds it frames from seeded, lossy, reordering links. Both drive the same
//! code through the same four calls:
//!
//! ```text
//!   receive(now, frame)            one inbound Ethernet frame
//!   poll_transmit(now, buf)        write the next outbound frame into buf, if any
//!   poll_timeout()                 when the stack next needs handle_timeout
//!   handle_timeout(now)            run expired timers
//! ```
//!
//! ## Map
//! - [`wire`]: checked zero-copy views and `Repr`s for Ethernet, ARP, IPv4, ICMPv4, UDP, TCP.
//!   Input reaches the rest of the stack only as a parsed `Repr`.
//! - [`tcp`]: the RFC 9293 connection (`tcp::Connection`), its buffers, SACK scoreboard,
//!   congestion control (NewReno, CUBIC), RTT estimator, listener with SYN cookies, and the
//!   versioned snapshot record used for live connection handoff.
//! - [`iface`]: the interface: home list, ARP cache, routing, ICMP, demultiplexing to sockets,
//!   the socket table and its API, per-interface counters and named drop reasons, IPv4
//!   reassembly (`iface::reassembly`, a preallocated pool) and outbound fragmentation.
//!   One `Stack` type whose `impl` is spread over rooms by job: frames are received in
//!   `iface/input.rs`, connections installed in `iface/listen.rs` (passive) and
//!   `iface/api.rs` (connect, restore) and freed in `iface/connections.rs`, frames
//!   transmitted in `iface/output.rs` (the [`iface`] docs list every room).
//! - [`cluster`]: the trait through which the stack asks the cluster (the coupling region in
//!   production) who owns an address and which ephemeral port to use.
//! - [`sim`]: the deterministic network simulator, the default integration test.
//! - [`time`], [`rand`]: time and randomness as data.
//!
//! ## Invariants
//! - No input from the network panics or reaches an `unwrap`; every dropped frame is counted
//!   under a named [`iface::DropReason`].
//! - No allocation per packet on the hot path: buffers are sized when a connection is created.
//! - The receive window's right edge never moves left (RFC 9293 3.8.6).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Hash maps with a fixed hasher, so iteration order (and so a simulation run) is a pure
/// function of the inputs. The keys are small and fixed-size (addresses, ports, 4-tuples) and
/// looked up once or twice per packet, so the hasher is [`hash::WordHasher`], a few multiplies
/// per key, rather than SipHash (which cost ~10% of a round trip). Neither is keyed per
/// process: fixed keys were never a defence against chosen collisions.
pub type Map<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<hash::WordHasher>>;

pub mod hash;

pub mod rand;
pub mod tcp;
pub mod udp;
pub mod cluster;
pub mod iface;
pub mod pcap;
pub mod sim;
pub mod time;
pub mod wire;
