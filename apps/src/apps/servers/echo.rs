//! The echo server: run-to-completion and over the blocking API.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use poll_loop::runner::App;
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;

use crate::apps::{accept_all, listen, Backlog};

// ---- echo ------------------------------------------------------------------------------

pub struct Echo {
    /// TCP and UDP listen here.
    addr: SocketAddrV4,
    listener: Option<SocketHandle>,
    /// UDP echo on the same port (RFC 862).
    udp: Option<SocketHandle>,
    backlog: Backlog,
    buf: Vec<u8>,
}

impl Echo {
    pub fn new(addr: SocketAddrV4) -> Echo {
        Echo { addr, listener: None, udp: None, backlog: Backlog::default(), buf: vec![0u8; 64 * 1024] }
    }

    /// Echo what can be echoed; true when input remains (the peer's data waits in our receive
    /// buffer, so its window closes: back-pressure without extra buffering).
    fn pump(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) -> bool {
        loop {
            let n = match stack.tcp_peek(h, &mut self.buf) {
                Ok(0) => {
                    // End of stream: finish our side.
                    let _ = stack.tcp_shutdown(now, h);
                    return false;
                }
                Ok(n) => n,
                Err(_) => return false,
            };
            let k = stack.tcp_send(now, h, &self.buf[..n]).unwrap_or(0);
            if k > 0 {
                let _ = stack.tcp_recv(now, h, &mut self.buf[..k]);
            }
            if k < n {
                return true;
            }
        }
    }
}

impl App for Echo {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        self.listener = Some(listen(now, stack, self.addr)?);
        self.udp = stack.udp_bind(self.addr).ok();
        Ok(())
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        match ev {
            SocketEvent::UdpReadable if Some(h) == self.udp => {
                // Datagrams of up to 65 507 bytes fit the 64 KiB buffer.
                while let Ok((n, from)) = stack.udp_recv_from(h, &mut self.buf) {
                    let _ = stack.udp_send_to(now, h, from, &self.buf[..n]);
                }
            }
            SocketEvent::Acceptable => {
                let mut new = Vec::new();
                accept_all(stack, h, |c| new.push(c));
                for c in new {
                    let more = self.pump(now, stack, c);
                    self.backlog.keep(c, more);
                }
            }
            SocketEvent::Tcp(Event::Readable | Event::PeerClosed | Event::Writable) => {
                let more = self.pump(now, stack, h);
                self.backlog.keep(h, more);
            }
            SocketEvent::Tcp(Event::Closed) => {
                self.backlog.forget(h);
                let _ = stack.close(now, h);
            }
            _ => {}
        }
    }
    fn poll(&mut self, now: Instant, stack: &mut Stack) -> bool {
        let mut backlog = std::mem::take(&mut self.backlog);
        let did = backlog.retry(|h| self.pump(now, stack, h));
        self.backlog = backlog;
        did
    }
    // Live handoff (`plex ctl drain`): an echo connection has no state of the application's,
    // so it may move at any time, and any stack takes it.
    fn transfer_offer(&mut self, _now: Instant, _stack: &mut Stack, _offer: &poll_loop::handoff::TransferOffer) -> poll_loop::handoff::TransferDecision {
        poll_loop::handoff::TransferDecision::Accept
    }
    fn transferred(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, _app_state: &[u8]) {
        let more = self.pump(now, stack, h);
        self.backlog.keep(h, more);
    }
    fn may_move(&mut self, _stack: &Stack, _h: SocketHandle) -> bool {
        true
    }
    fn moved_away(&mut self, _now: Instant, _stack: &mut Stack, h: SocketHandle) {
        self.backlog.forget(h);
    }
}

/// Echo through the blocking API: what an application linking plex writes, with std I/O.
/// TCP with a thread per connection; UDP datagrams on the same port (RFC 862) from one
/// thread, through a `UdpSocket` that gets the datagrams of every queue.
// One application thread per connection (the blocking API): clippy.toml's thread rule is for
// the sans-IO core.
#[allow(clippy::disallowed_methods)]
pub fn echo_blocking(net: poll_loop::api::Net, port: u16) {
    use std::io::Read;
    let listener = match net.tcp_listen(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port), 128) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("plex: cannot listen on port {port}: {e}");
            return;
        }
    };
    match net.udp_bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)) {
        Ok(udp) => {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match udp.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let _ = udp.send_to(&buf[..n], from);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        // The stack stopped.
                        Err(_) => break,
                    }
                }
            });
        }
        Err(e) => eprintln!("plex: no UDP echo: cannot bind UDP port {port}: {e}"),
    }
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { break };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown_write();
        });
    }
}
