//! A listening socket: SYN queue and accept queue accounting, and SYN cookies (RFC 4987 3.6)
//! when the SYN queue overflows.
//!
//! Embryonic connections (SYN-RECEIVED) are ordinary [`super::Connection`]s owned by the
//! interface's socket table; the listener counts them (`syn_queue`) and receives them on its
//! accept queue once established. When the SYN queue is full, a SYN is answered with a cookie
//! SYN-ACK and no state; a valid cookie in the final ACK creates the connection directly in
//! ESTABLISHED. When the accept queue is full, SYNs are dropped (as Linux does) so clients
//! retransmit later instead of being reset.

use std::collections::VecDeque;
use std::net::SocketAddrV4;

use super::isn::{encode_ts_options, IsnGenerator};
use super::Config;
use crate::time::Instant;
use crate::wire::{SeqNumber, TcpControl, TcpRepr, TcpTimestamp};

/// What to do with a SYN that reached a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynDecision {
    /// Create a SYN-RECEIVED connection.
    Accept,
    /// Answer with a stateless cookie SYN-ACK.
    Cookie,
    /// The accept queue is full: drop.
    Drop,
}

/// Listener counters (Linux's `ListenOverflows`, `SyncookiesSent`, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// SYNs that reached the listener, whatever became of them.
    pub syns: u64,
    /// SYNs that found the SYN queue full (answered with a cookie, or dropped without
    /// cookies: Linux's `TCPReqQFullDoCookies` + `TCPReqQFullDrop`).
    pub syn_queue_overflows: u64,
    /// Cookie SYN-ACKs sent (Linux's `SyncookiesSent`).
    pub cookies_sent: u64,
    /// ACKs carrying a valid cookie that created a connection (`SyncookiesRecv`).
    pub cookies_valid: u64,
    /// ACKs to the listener whose cookie did not check, answered with RST
    /// (`SyncookiesFailed`). Any stray ACK to the port counts here.
    pub cookies_invalid: u64,
    /// SYNs or cookie ACKs dropped because the accept queue was full (`ListenOverflows`).
    pub accept_overflows: u64,
    /// SYNs and valid cookie ACKs refused by the stack's connection limit or buffer budget.
    pub refused_limit: u64,
    /// Connections taken off the accept queue by the application ([`Listener::accept`]).
    pub accepted: u64,
}

impl ListenerCounters {
    /// Add `o` field by field (totals over listeners).
    pub fn add(&mut self, o: &ListenerCounters) {
        self.syns += o.syns;
        self.syn_queue_overflows += o.syn_queue_overflows;
        self.cookies_sent += o.cookies_sent;
        self.cookies_valid += o.cookies_valid;
        self.cookies_invalid += o.cookies_invalid;
        self.accept_overflows += o.accept_overflows;
        self.refused_limit += o.refused_limit;
        self.accepted += o.accepted;
    }

    /// `(name, value)` pairs, for dumps.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("syns", self.syns),
            ("syn_queue_overflows", self.syn_queue_overflows),
            ("cookies_sent", self.cookies_sent),
            ("cookies_valid", self.cookies_valid),
            ("cookies_invalid", self.cookies_invalid),
            ("accept_overflows", self.accept_overflows),
            ("refused_limit", self.refused_limit),
            ("accepted", self.accepted),
        ]
        .into_iter()
    }
}

/// A socket in LISTEN (RFC 9293 3.10.7.2): the limits and counters of its SYN and accept
/// queues, and the connections waiting to be accepted as handles `H` (the interface's socket
/// handles). It does not hold the embryonic connections: the socket table does, and tells
/// the listener through [`Listener::on_syn`], [`Listener::syn_done`] and
/// [`Listener::push_established`].
#[derive(Debug, Clone)]
pub struct Listener<H> {
    /// Local address; the unspecified address listens on every local address.
    pub local: SocketAddrV4,
    /// Accept queue limit; the SYN queue has the same limit (Linux: both from `listen()`).
    pub backlog: usize,
    /// Embryonic connections counted against this listener.
    pub syn_queue: usize,
    accept_queue: VecDeque<H>,
    /// Options for the connections it creates.
    pub config: Config,
    /// Answer SYNs with cookies when the SYN queue is full (default on; Linux's
    /// `tcp_syncookies = 1`). Off, such SYNs are dropped and cookie ACKs are not accepted.
    pub syn_cookies: bool,
    /// What happened to the SYNs and cookie ACKs this listener saw.
    pub counters: ListenerCounters,
}

impl<H> Listener<H> {
    /// A listener on `local` with both queues limited to `backlog` (at least 1), cookies on.
    pub fn new(local: SocketAddrV4, backlog: usize, config: Config) -> Self {
        let backlog = backlog.max(1);
        Listener {
            local,
            backlog,
            syn_queue: 0,
            accept_queue: VecDeque::with_capacity(backlog.min(4096)),
            config,
            syn_cookies: true,
            counters: ListenerCounters::default(),
        }
    }

    /// A SYN arrived: decide its fate and count it. The accept queue full drops it (the
    /// client retries); else the SYN queue full means a cookie (or a drop without cookies);
    /// else [`SynDecision::Accept`] and the SYN queue grows by one, until
    /// [`Listener::syn_done`].
    pub fn on_syn(&mut self) -> SynDecision {
        self.counters.syns += 1;
        if self.accept_queue.len() >= self.backlog {
            self.counters.accept_overflows += 1;
            SynDecision::Drop
        } else if self.syn_queue >= self.backlog {
            self.counters.syn_queue_overflows += 1;
            if self.syn_cookies {
                self.counters.cookies_sent += 1;
                SynDecision::Cookie
            } else {
                self.counters.accept_overflows += 1;
                SynDecision::Drop
            }
        } else {
            self.syn_queue += 1;
            SynDecision::Accept
        }
    }

    /// An embryonic connection left the SYN queue (established or died).
    pub fn syn_done(&mut self) {
        self.syn_queue = self.syn_queue.saturating_sub(1);
    }

    /// Room on the accept queue for a connection completed by a cookie.
    pub fn has_room(&self) -> bool {
        self.accept_queue.len() < self.backlog
    }

    /// Queue a connection that reached ESTABLISHED (from the SYN queue or a cookie) for the
    /// application. Does not check the limit: see [`Listener::has_room`].
    pub fn push_established(&mut self, h: H) {
        self.accept_queue.push_back(h);
    }

    /// The oldest established connection not yet accepted, if any (the `accept()` call).
    pub fn accept(&mut self) -> Option<H> {
        let h = self.accept_queue.pop_front();
        if h.is_some() {
            self.counters.accepted += 1;
        }
        h
    }

    /// Connections established and waiting for [`Listener::accept`].
    pub fn accept_queue_len(&self) -> usize {
        self.accept_queue.len()
    }

    /// Remove a queued connection (it was reset before being accepted); false when it was
    /// not on the accept queue.
    pub fn forget(&mut self, h: &H) -> bool
    where
        H: PartialEq,
    {
        let before = self.accept_queue.len();
        self.accept_queue.retain(|x| x != h);
        self.accept_queue.len() != before
    }

    /// Drain the accept queue (the listener is closing: its children are aborted).
    pub fn drain(&mut self) -> impl Iterator<Item = H> + '_ {
        self.accept_queue.drain(..)
    }

    /// The stateless SYN-ACK answering `syn` with a cookie as ISN.
    pub fn cookie_syn_ack(
        &self,
        now: Instant,
        isn: &IsnGenerator,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        syn: &TcpRepr<'_>,
    ) -> TcpRepr<'static> {
        let peer_mss = syn.max_seg_size.unwrap_or(536);
        let (cookie, mss) = isn.make_cookie(now, local, remote, syn.seq_number, peer_mss);
        let mut r = TcpRepr::new(local.port(), remote.port(), cookie);
        r.control = TcpControl::Syn;
        r.ack_number = Some(syn.seq_number + 1);
        r.max_seg_size = Some(mss.min(self.config.mss));
        r.window_len = self.config.recv_buffer.min(65535) as u16;
        if let (Some(ts), true) = (syn.timestamp, self.config.timestamps) {
            // Options survive in our TSval; without timestamps the connection has neither
            // window scaling nor SACK (RFC 4987 3.6's limitation).
            //
            // What the cookie must remember is the *peer's* shift (RFC 7323 2.3: it scales
            // the windows the peer sends us); ours is a function of our config and is offered
            // in the SYN-ACK as usual.
            let peer_ws = syn.window_scale.filter(|_| self.config.window_scaling);
            let sack = syn.sack_permitted && self.config.sack;
            r.window_scale = peer_ws.map(|_| self.config.rcv_wscale());
            r.sack_permitted = sack;
            // RFC 7323 5.4: the same per-connection offset as the connection will use.
            let clock = (now.total_millis() as u32).wrapping_add(isn.ts_offset(local, remote));
            r.timestamp = Some(TcpTimestamp { tsval: encode_ts_options(clock, peer_ws, sack), tsecr: ts.tsval });
        }
        r
    }
}

/// Validate the ACK completing a cookie handshake; returns (our ISN, MSS, the peer's window
/// scale, SACK).
pub fn check_cookie_ack(
    now: Instant,
    isn: &IsnGenerator,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    ack_seg: &TcpRepr<'_>,
) -> Option<(SeqNumber, u16, Option<u8>, bool)> {
    let ack = ack_seg.ack_number?;
    if ack_seg.control != TcpControl::None {
        return None;
    }
    let cookie = ack - 1;
    let peer_isn = ack_seg.seq_number - 1;
    let info = isn.check_cookie(now, local, remote, peer_isn, cookie)?;
    let (ws, sack) = match ack_seg.timestamp {
        Some(ts) => super::isn::decode_ts_options(ts.tsecr),
        None => (None, false),
    };
    Some((cookie, info.mss, ws, sack))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rand::Rng;
    use std::net::Ipv4Addr;

    #[test]
    fn queues_then_cookies_then_drops() {
        let mut l: Listener<u32> =
            Listener::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 2, Config::default());
        assert_eq!(l.on_syn(), SynDecision::Accept);
        assert_eq!(l.on_syn(), SynDecision::Accept);
        assert_eq!(l.on_syn(), SynDecision::Cookie, "SYN queue full");
        l.syn_done();
        l.push_established(1);
        l.syn_done();
        l.push_established(2);
        assert_eq!(l.on_syn(), SynDecision::Drop, "accept queue full");
        assert_eq!(l.accept(), Some(1));
        assert_eq!(l.on_syn(), SynDecision::Accept);
        assert_eq!(l.counters.cookies_sent, 1);
        assert_eq!(l.counters.syn_queue_overflows, 1);
        assert_eq!(l.counters.accept_overflows, 1);
    }

    #[test]
    fn cookie_handshake_round_trip() {
        let isn = IsnGenerator::new(&mut Rng::new(9));
        let l: Listener<u32> =
            Listener::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 1, Config::default());
        let local = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 80);
        let remote = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5555);
        let mut syn = TcpRepr::new(5555, 80, SeqNumber(1000));
        syn.control = TcpControl::Syn;
        syn.max_seg_size = Some(1460);
        syn.window_scale = Some(7);
        syn.sack_permitted = true;
        syn.timestamp = Some(TcpTimestamp { tsval: 42, tsecr: 0 });
        let now = Instant::from_secs(5);
        let sa = l.cookie_syn_ack(now, &isn, local, remote, &syn);
        assert_eq!(sa.ack_number, Some(SeqNumber(1001)));
        let mut ack = TcpRepr::new(5555, 80, SeqNumber(1001));
        ack.ack_number = Some(sa.seq_number + 1);
        ack.timestamp = Some(TcpTimestamp { tsval: 43, tsecr: sa.timestamp.unwrap().tsval });
        let (iss, mss, ws, sack) = check_cookie_ack(now, &isn, local, remote, &ack).unwrap();
        assert_eq!(iss, sa.seq_number);
        assert_eq!(mss, 1460);
        assert_eq!(ws, Some(7), "the client's shift, not ours");
        assert_eq!(sa.window_scale, Some(Config::default().rcv_wscale()), "ours is offered");
        assert!(sack);
        ack.ack_number = Some(sa.seq_number + 2);
        assert!(check_cookie_ack(now, &isn, local, remote, &ack).is_none());
    }
}
