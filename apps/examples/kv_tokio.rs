//! A key-value server on plex's readiness API with tokio (as root), thread per core: every
//! poll thread runs a tokio current-thread runtime and this program's tasks beside its stack
//! (`Plex::serve_tokio`, feature `tokio` of poll-loop), a task per connection reading and
//! writing plex's `TcpStream` through tokio's `AsyncRead`/`AsyncWrite`. The connection loop
//! (`kv/tokio_conn.rs`) is the very function `kv_tokio_linux` runs on tokio's own sockets:
//! only the listener differs.
//!
//! `kv_tokio IFACE ADDR/PREFIX [QUEUES] [PORT]`, e.g.
//! `cargo run --release -p apps --example kv_tokio -- plx-s1 198.18.0.11/24`. The protocol:
//! `kv/proto.rs`. SIGINT/SIGTERM stop it.
#[path = "kv/args.rs"]
mod args;
#[path = "kv/proto.rs"]
mod proto;
#[path = "kv/tokio_conn.rs"]
mod tokio_conn;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use poll_loop::api::nonblocking::TcpListener;

fn run(a: &args::Args) -> Result<(), String> {
    let store = Arc::new(proto::Store::default());
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port);
    let (bound, queues) = (Arc::new(AtomicU32::new(0)), a.queues);
    let line = format!("listening on {}:{} (plex readiness API + tokio, thread per core, {} queue(s) on {})", a.ip, a.port, a.queues, a.iface);
    // Each queue's first task: its own listener; accept until SIGINT/SIGTERM stop the queue.
    let report = a.plex().serve_tokio(move |net, queue| {
        let (store, bound, line) = (store.clone(), bound.clone(), line.clone());
        async move {
            let listener = match TcpListener::bind_async(&net, any).await {
                Ok(l) => l,
                Err(e) => return eprintln!("kv_tokio: queue {queue}: port {}: {e}", any.port()),
            };
            if bound.fetch_add(1, Ordering::Relaxed) + 1 == queues {
                println!("{line}");
            }
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move { tokio_conn::serve(&store, stream).await });
            }
        }
    });
    eprint!("{}", report.map_err(|e| e.to_string())?);
    Ok(())
}

fn main() -> ExitCode {
    let a = args::Args::parse_or_exit("kv_tokio");
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv_tokio: {e}");
            ExitCode::from(1)
        }
    }
}
