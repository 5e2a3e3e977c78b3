//! # plex's data path
//!
//! `poll-loop` moves raw Ethernet frames between AF_XDP sockets and the sans-IO `stack`:
//!
//! - [`xdp`]: the steering XDP program (C, `bpf/steer.bpf.c`, compiled by `build.rs` with
//!   clang, loaded with libbpf-rs): only traffic for the stack's home list reaches the AF_XDP
//!   socket; everything else goes to the kernel.
//! - [`xsk`]: the AF_XDP socket, UMEM and four rings as one owning type, with the frame
//!   accounting unit-tested against a fake kernel. The crate's only `unsafe` (`#![deny(unsafe_code)]` elsewhere).
//! - [`tap`]: the frame tap, middleware between the socket and the stack: pcap capture and a
//!   seeded fault injector (this kernel has no netem).
//! - [`clock`]: the only place that reads CLOCK_MONOTONIC, once per loop iteration.
//! - [`cluster`]: a stack as a member of a plex cluster: the coupling region's heartbeat,
//!   failure detection (pidfds), and DVIPAs entering and leaving the home list and the
//!   steering map.
//! - [`runner`]: the pinned poll thread, busy-poll or adaptive, driving a `Stack` and a
//!   run-to-completion application.
//! - `local` (feature `tokio`): thread per core, a tokio current-thread runtime on every poll
//!   thread running the application's tasks beside the stack (`Plex::serve_tokio`).
//! - [`plex`]: [`Plex`], the builder that puts all of the above together in the right order
//!   (`Plex::on("eth1").addr(ip, 24).serve(|queue| MyApp::new())`): what an application uses.
//!
//! Invariant: a poll thread never blocks on anything but its own socket's fd (adaptive mode's
//! sleep), and does no allocation per packet.

// `unsafe` is confined to the AF_XDP wrapper: the one module allowed it below.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod clock;
pub mod cluster;
pub mod error;
pub mod handoff;
#[cfg(feature = "tokio")]
pub mod local;
pub mod plex;
mod queue_holder;
pub mod runner;
pub mod shards;
pub mod tap;
pub mod xdp;
// The UMEM, its rings and the few libc calls around the socket (poll, the eventfd waker,
// if_nametoindex, setsockopt, setrlimit): every block carries a `// SAFETY:` comment.
#[allow(unsafe_code)]
pub mod xsk;

pub use error::{QueueHolder, StartError};
pub use plex::{Plex, Report, Running, Stopper};
