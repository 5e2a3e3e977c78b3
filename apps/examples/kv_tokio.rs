//! A key-value server on plex's readiness API with tokio (as root): a task per connection,
//! reading and writing plex's `TcpStream` through tokio's `AsyncRead`/`AsyncWrite` (feature
//! `tokio` of poll-loop). The connection loop (`kv/tokio_conn.rs`) is the very function
//! `kv_tokio_linux` runs on tokio's own sockets: only the listener differs.
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
use std::sync::Arc;

use poll_loop::api::nonblocking::TcpListener;

fn run(a: &args::Args) -> Result<(), String> {
    let (net, running) = a.plex().net().map_err(|e| e.to_string())?;
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port);
    let listener = TcpListener::bind(&net, any).map_err(|e| format!("port {}: {e}", a.port))?;
    println!("listening on {}:{} (plex readiness API + tokio, {} queue(s) on {})", a.ip, a.port, a.queues, a.iface);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().map_err(|e| format!("tokio: {e}"))?;
    let store = Arc::new(proto::Store::default());
    // Accept until SIGINT/SIGTERM stop the poll threads (accept then fails).
    rt.block_on(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move { tokio_conn::serve(&store, stream).await });
        }
    });
    eprint!("{}", running.join().map_err(|e| e.to_string())?);
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
