//! A key-value server on plex's run-to-completion API (as root): one `KvApp` per queue, its
//! callbacks on that queue's poll thread, one map shared by every queue.
//!
//! `kv_rtc IFACE ADDR/PREFIX [QUEUES] [PORT]`, e.g.
//! `cargo run --release -p apps --example kv_rtc -- plx-s1 198.18.0.11/24`. The protocol:
//! `kv/proto.rs`. SIGINT/SIGTERM stop it.
//!
//! Events are edges (see `poll_loop::runner::App`): on `Readable` the app reads until
//! `WouldBlock`; answers that do not fit the send buffer wait in the connection's `out`, and
//! the app reads no more from that connection (its receive window closes) until `Writable`.
#[path = "kv/args.rs"]
mod args;
#[path = "kv/proto.rs"]
mod proto;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use poll_loop::runner::App;
use stack::{iface::{SocketEvent, SocketHandle, Stack}, tcp::Event, time::Instant};

#[derive(Debug, Default)]
struct Conn {
    session: proto::Session,
    /// Answers not yet taken by the send buffer, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// The peer closed: close once `out` is sent.
    eof: bool,
}

#[derive(Debug)]
struct KvApp {
    store: Arc<proto::Store>,
    args: Arc<args::Args>,
    /// Queues listening so far: the last to start prints the `listening on` line.
    started: Arc<AtomicU32>,
    conns: HashMap<SocketHandle, Conn>,
    buf: Vec<u8>,
}

impl KvApp {
    /// Send what waits, then read and answer, until the send buffer is full or nothing is left.
    fn pump(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        let KvApp { store, conns, buf, .. } = self;
        let Some(c) = conns.get_mut(&h) else { return }; // closed by us: ignore
        loop {
            while c.sent < c.out.len() {
                match stack.tcp_send(now, h, &c.out[c.sent..]) {
                    Ok(n) if n > 0 => c.sent += n,
                    _ => return, // full (WouldBlock: Writable follows) or failing (Closed follows)
                }
            }
            c.out.clear();
            c.sent = 0;
            if c.eof {
                let _ = stack.close(now, h); // graceful FIN after the answers; freed by the stack
                conns.remove(&h);
                return;
            }
            match stack.tcp_recv(now, h, buf) {
                Ok(0) => c.eof = true,
                Ok(n) => c.session.input(store, &buf[..n], &mut c.out),
                Err(_) => return, // nothing more (Readable follows) or failing (Closed follows)
            }
        }
    }
}

impl App for KvApp {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.args.port);
        stack.tcp_listen(now, any, 1024).map_err(|e| format!("port {}: {e}", self.args.port))?;
        if self.started.fetch_add(1, Ordering::SeqCst) + 1 == self.args.queues {
            let a = &self.args;
            println!("listening on {}:{} (plex run-to-completion API, {} queue(s) on {})", a.ip, a.port, a.queues, a.iface);
        }
        Ok(())
    }
    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        match ev {
            SocketEvent::Acceptable => {
                while let Ok(c) = stack.tcp_accept(h) {
                    self.conns.insert(c, Conn::default());
                    // Data (and a FIN) that came before the accept raised no event: read now.
                    self.pump(now, stack, c);
                }
            }
            SocketEvent::Tcp(Event::Readable | Event::Writable | Event::PeerClosed) => self.pump(now, stack, h),
            // Closed by the peer or the stack (not by us: those we forgot): free it.
            SocketEvent::Tcp(Event::Closed) if self.conns.remove(&h).is_some() => stack.release_closed(h),
            _ => {}
        }
    }
}

fn main() -> ExitCode {
    let a = Arc::new(args::Args::parse_or_exit("kv_rtc"));
    let (store, started) = (Arc::new(proto::Store::default()), Arc::new(AtomicU32::new(0)));
    let make = |_queue| KvApp { store: store.clone(), args: a.clone(), started: started.clone(), conns: HashMap::new(), buf: vec![0; 64 << 10] };
    match a.plex().serve(make) {
        Ok(report) => {
            eprint!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kv_rtc: {e}");
            ExitCode::from(1)
        }
    }
}
