//! TCP (RFC 9293), complete and sans-IO.
//!
//! - [`conn::Connection`]: one connection's state machine with its timers as data
//!   ([`conn::Timer`]), buffers ([`buffer`]), SACK scoreboard ([`sack`]), congestion control
//!   ([`cc`]) and RTT estimator ([`rtt`]). Entry points: `handle_segment`, `handle_timeout`,
//!   `poll_transmit`, `poll_timeout`, `poll_event`, and the application commands.
//! - [`listener::Listener`]: SYN queue and accept queue accounting and SYN cookies (RFC 4987).
//! - [`isn`]: initial sequence numbers (RFC 6528) and the cookie function.
//! - [`snapshot`]: the versioned binary record of an established connection, for live handoff.

pub mod buffer;
pub mod cc;
pub mod conn;
pub mod isn;
pub mod listener;
pub mod rtt;
pub mod sack;
pub mod snapshot;

pub use cc::Algorithm;
pub use conn::{ConnCounters, Connection, Error, Event, State, Timer, Tuple};
pub use listener::Listener;
pub use snapshot::{AppBytes, Snapshot, SnapshotError};

use crate::time::Duration;

/// Keepalive parameters (Linux's `tcp_keepalive_time`, `_intvl`, `_probes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time without a received segment before the first probe (RFC 9293 3.8.4 and RFC 1122
    /// 4.2.3.6: no less than two hours by default).
    pub idle: Duration,
    /// Time between probes while none is answered.
    pub interval: Duration,
    /// Unanswered probes after which the connection is closed with [`Error::TimedOut`]
    /// (after one more `interval`). Any segment received resets the count.
    pub probes: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive { idle: Duration::from_secs(7200), interval: Duration::from_secs(75), probes: 9 }
    }
}

/// Per-socket options. Defaults follow Linux where RFCs leave a choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Send buffer in bytes (unacknowledged plus unsent data).
    pub send_buffer: usize,
    /// Receive buffer in bytes: the largest window advertised.
    pub recv_buffer: usize,
    /// The MSS we advertise and the largest we send (IP MTU minus 40).
    pub mss: u16,
    /// Disable Nagle's algorithm (TCP_NODELAY).
    pub nodelay: bool,
    /// Congestion control algorithm (RFC 9438 CUBIC by default, or NewReno).
    pub congestion: Algorithm,
    /// Offer the RFC 7323 window scale option in our SYN or SYN-ACK, with the shift
    /// [`Config::rcv_wscale`]. Used only if the peer's SYN carries it too; without it the
    /// window stays at most 65 535 bytes whatever `recv_buffer` says.
    pub window_scaling: bool,
    /// Offer RFC 7323 timestamps: an RTT sample per ACK and PAWS (RFC 7323 5). Used only if
    /// both SYNs carry the option; they then take 12 bytes of every segment from the MSS.
    pub timestamps: bool,
    /// Offer SACK (RFC 2018 SACK-permitted). Used only if both sides offer it; loss recovery
    /// is then RFC 6675's, otherwise RFC 6582 NewReno's.
    pub sack: bool,
    /// Delayed-ACK timeout; `None` acknowledges every segment at once (TCP_QUICKACK forever).
    pub delayed_ack: Option<Duration>,
    /// Keepalive probing (SO_KEEPALIVE with its parameters); `None` (the default) sends none.
    /// Applies in ESTABLISHED, CLOSE-WAIT and FIN-WAIT-2.
    pub keepalive: Option<Keepalive>,
    /// RFC 5482 user timeout: abort when data stays unacknowledged this long.
    pub user_timeout: Option<Duration>,
    /// RTO before the first RTT sample (RFC 6298 2.1: 1 s): how long the first SYN waits.
    pub initial_rto: Duration,
    /// Floor of the computed RTO. RFC 6298 2.4 says 1 s; like Linux, 200 ms by default.
    pub min_rto: Duration,
    /// Ceiling of the RTO after backoff (RFC 6298 2.5) and of the persist interval.
    pub max_rto: Duration,
    /// SYN retransmissions of an active open before giving up (Linux `tcp_syn_retries`, 6:
    /// about 127 s with a 1 s initial RTO).
    pub syn_retries: u32,
    /// SYN-ACK retransmissions of an embryonic (SYN-RECEIVED) connection before it is dropped
    /// (Linux `tcp_synack_retries`, 5: the last at 31 s, given up at 63 s). Spoofed SYNs
    /// hold a SYN-queue entry this long; the queue being full only switches new SYNs to
    /// cookies (RFC 4987 3.6), so it bounds the work, not who gets in.
    pub synack_retries: u32,
    /// Data retransmissions before giving up (Linux `tcp_retries2`).
    pub max_retries: u32,
    /// Maximum segment lifetime; TIME-WAIT lasts 2 MSL.
    pub msl: Duration,
    /// How long an orphaned connection may stay in FIN-WAIT-2 (Linux `tcp_fin_timeout`).
    pub fin_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            send_buffer: 256 * 1024,
            recv_buffer: 256 * 1024,
            mss: 1460,
            nodelay: false,
            congestion: Algorithm::Cubic,
            window_scaling: true,
            timestamps: true,
            sack: true,
            delayed_ack: Some(Duration::from_millis(40)),
            keepalive: None,
            user_timeout: None,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(120),
            syn_retries: 6,
            synack_retries: 5,
            max_retries: 15,
            msl: Duration::from_secs(30),
            fin_timeout: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// The window-scale shift we offer: the smallest that lets `recv_buffer` be advertised.
    pub fn rcv_wscale(&self) -> u8 {
        if !self.window_scaling {
            return 0;
        }
        let mut s = 0u8;
        while s < 14 && (self.recv_buffer >> s) > 65535 {
            s += 1;
        }
        s
    }
}
