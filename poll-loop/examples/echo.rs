//! A complete TCP echo server on plex (as root): `echo IFACE ADDR/PREFIX [QUEUES]`, e.g.
//! `cargo run --release -p poll-loop --example echo -- eth1 198.18.0.11/24 2`. Ctrl-C stops it.
//! One `Echo` per queue; its callbacks run on that queue's poll thread.
use std::net::{Ipv4Addr, SocketAddrV4};
use poll_loop::{runner::App, Plex};
use stack::{iface::{SocketEvent, SocketHandle, Stack}, tcp::Event, time::Instant};

struct Echo(Vec<u8>);

impl App for Echo {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        stack.tcp_listen(now, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7), 128).map(drop).map_err(|e| format!("port 7: {e}"))
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        match ev {
            SocketEvent::Acceptable => while stack.tcp_accept(h).is_ok() {},
            // Echo what the send buffer takes; a send of 0 asks for Writable (back-pressure).
            SocketEvent::Tcp(Event::Readable | Event::Writable | Event::PeerClosed) => {
                while let Ok(n) = stack.tcp_peek(h, &mut self.0) {
                    if n == 0 { let _ = stack.tcp_shutdown(now, h); break } // peer done, all echoed
                    let sent = stack.tcp_send(now, h, &self.0[..n]).unwrap_or(0);
                    let _ = stack.tcp_recv(now, h, &mut self.0[..sent]);
                    if sent == 0 { break }
                }
            }
            SocketEvent::Tcp(Event::Closed) => drop(stack.close(now, h)),
            _ => {}
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (a, usage): (Vec<String>, _) = (std::env::args().collect(), "usage: echo IFACE ADDR/PREFIX [QUEUES]");
    let (ip, prefix) = a.get(2).and_then(|a| a.split_once('/')).ok_or(usage)?;
    let plex = Plex::on(a.get(1).ok_or(usage)?).addr(ip.parse()?, prefix.parse()?).queues(a.get(3).map_or(Ok(1), |q| q.parse())?);
    eprint!("{}", plex.serve(|_queue| Echo(vec![0; 64 * 1024]))?);
    Ok(())
}
