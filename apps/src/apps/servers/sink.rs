//! The sink server: reads to end of stream, optionally hashing what it received.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddrV4;

use poll_loop::runner::App;
use sha2::{Digest, Sha256};
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;

use crate::apps::{accept_all, hex, listen};

// ---- sink ------------------------------------------------------------------------------

pub struct Sink {
    addr: SocketAddrV4,
    once: bool,
    hash: bool,
    finished: bool,
    conns: HashMap<SocketHandle, (u64, Sha256, Instant)>,
    buf: Vec<u8>,
}

impl Sink {
    pub fn new(addr: SocketAddrV4, once: bool, hash: bool) -> Sink {
        Sink { addr, once, hash, finished: false, conns: HashMap::new(), buf: vec![0u8; 256 * 1024] }
    }
}

impl App for Sink {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        listen(now, stack, self.addr)?;
        Ok(())
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        match ev {
            SocketEvent::Acceptable => {
                let conns = &mut self.conns;
                accept_all(stack, h, |c| {
                    conns.insert(c, (0, Sha256::new(), now));
                });
            }
            SocketEvent::Tcp(Event::Readable | Event::PeerClosed) => {
                let Some((n, hash, start)) = self.conns.get_mut(&h) else { return };
                loop {
                    match stack.tcp_recv(now, h, &mut self.buf) {
                        Ok(0) => {
                            let secs = (now - *start).as_secs_f64().max(1e-6);
                            let digest = if self.hash { hex(&std::mem::take(hash).finalize()) } else { "-".into() };
                            let peer = stack.tcp(h).map(|c| c.tuple().remote.to_string()).unwrap_or_default();
                            println!(
                                "sink: {peer} sent {n} bytes sha256 {digest} in {secs:.3} s ({:.1} Mbit/s)",
                                *n as f64 * 8.0 / secs / 1e6
                            );
                            let _ = std::io::stdout().flush();
                            self.conns.remove(&h);
                            let _ = stack.close(now, h);
                            if self.once {
                                self.finished = true;
                            }
                            return;
                        }
                        Ok(k) => {
                            *n += k as u64;
                            if self.hash {
                                hash.update(&self.buf[..k]);
                            }
                        }
                        Err(_) => return,
                    }
                }
            }
            SocketEvent::Tcp(Event::Reset | Event::TimedOut) => {
                eprintln!("sink: connection {h:?} failed: {ev:?}");
                self.conns.remove(&h);
                let _ = stack.close(now, h);
            }
            SocketEvent::Tcp(Event::Closed) => {
                let _ = stack.close(now, h);
            }
            _ => {}
        }
    }
    fn done(&self) -> bool {
        self.finished
    }
}
