//! A key-value server on plex's blocking API (as root): a thread per connection reading and
//! writing plex's `TcpStream` through `std::io::Read`/`Write`, one map shared by all.
//!
//! `kv_blocking IFACE ADDR/PREFIX [QUEUES] [PORT]`, e.g.
//! `cargo run --release -p apps --example kv_blocking -- plx-s1 198.18.0.11/24`; then
//! `printf 'SET a 1\nGET a\n' | nc 198.18.0.11 7379`. The protocol: `kv/proto.rs`; the
//! connection loop (`proto::serve`) is the very function `kv_linux` runs on std's sockets.
//! SIGINT/SIGTERM stop it.
//!
//! Each request costs its thread one wake-up by the poll thread (about 2 µs of CPU on the
//! test machine: see `poll_loop::api::TcpStream`); with many connections per core,
//! `kv_tokio` (one worker serves many connections per wake-up) and `kv_rtc` (no threads)
//! spend less CPU per request.
#[path = "kv/args.rs"]
mod args;
#[path = "kv/proto.rs"]
mod proto;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::Arc;

use poll_loop::api::TcpListener;

/// Accept until plex stops (accept then fails with `ConnectionAborted`).
fn accept_loop(listener: TcpListener, store: Arc<proto::Store>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let store = store.clone();
                let spawned = std::thread::Builder::new().stack_size(256 << 10).spawn(move || proto::serve(&store, stream));
                if let Err(e) = spawned {
                    eprintln!("kv_blocking: no thread for a connection (it is closed): {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => return,
            Err(e) => eprintln!("kv_blocking: accept: {e}"),
        }
    }
}

fn run(a: &args::Args) -> Result<(), String> {
    let (net, running) = a.plex().blocking().map_err(|e| e.to_string())?;
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port);
    let listener = net.tcp_listen(any, 1024).map_err(|e| format!("port {}: {e}", a.port))?;
    println!("listening on {}:{} (plex blocking API, {} queue(s) on {})", a.ip, a.port, a.queues, a.iface);
    let store = Arc::new(proto::Store::default());
    let accept = std::thread::Builder::new().name("kv-accept".into());
    accept.spawn(move || accept_loop(listener, store)).map_err(|e| format!("spawning the accept thread: {e}"))?;
    // Returns once SIGINT/SIGTERM stopped the poll threads: their counters.
    eprint!("{}", running.join().map_err(|e| e.to_string())?);
    Ok(())
}

fn main() -> ExitCode {
    let a = args::Args::parse_or_exit("kv_blocking");
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv_blocking: {e}");
            ExitCode::from(1)
        }
    }
}
