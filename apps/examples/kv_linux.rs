//! The baseline: the `kv_blocking` server on Linux's own sockets (`std::net`), a thread per
//! connection running the very same connection loop (`proto::serve`, generic over
//! `Read + Write`): only how the sockets are opened differs.
//!
//! `kv_linux ADDR:PORT`, e.g. `kv_linux 198.18.0.4:7379`. SIGINT/SIGTERM end it (their
//! default action). With many connections, raise `ulimit -n` first.
#[path = "kv/proto.rs"]
mod proto;

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;

fn run(addr: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("{addr}: {e}"))?;
    println!("listening on {addr} (Linux sockets)");
    let store = Arc::new(proto::Store::default());
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let store = store.clone();
                let spawned = std::thread::Builder::new().stack_size(256 << 10).spawn(move || proto::serve(&store, stream));
                if let Err(e) = spawned {
                    eprintln!("kv_linux: no thread for a connection (it is closed): {e}");
                }
            }
            Err(e) => {
                // E.g. EMFILE: say so, and give the connections time to close.
                eprintln!("kv_linux: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    let addr = match arg.as_deref().map(str::parse::<SocketAddr>) {
        Some(Ok(a)) if std::env::args().len() == 2 => a,
        Some(Err(_)) => {
            eprintln!("kv_linux: {:?} is not ADDR:PORT (usage: kv_linux ADDR:PORT)", arg.unwrap_or_default());
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("kv_linux: usage: kv_linux ADDR:PORT");
            return ExitCode::from(2);
        }
    };
    match run(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv_linux: {e}");
            ExitCode::from(1)
        }
    }
}
