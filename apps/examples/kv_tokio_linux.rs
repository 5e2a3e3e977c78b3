//! The baseline of `kv_tokio`: the same tokio server on tokio's Linux sockets, running the
//! very same connection loop (`kv/tokio_conn.rs`).
//!
//! `kv_tokio_linux ADDR:PORT`, e.g. `kv_tokio_linux 198.18.0.4:7379`. SIGINT/SIGTERM end it.
#[path = "kv/proto.rs"]
mod proto;
#[path = "kv/tokio_conn.rs"]
mod tokio_conn;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let Ok(addr) = arg.parse::<SocketAddr>() else {
        eprintln!("kv_tokio_linux: {arg:?} is not ADDR:PORT (usage: kv_tokio_linux ADDR:PORT)");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_io().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kv_tokio_linux: tokio: {e}");
            return ExitCode::from(1);
        }
    };
    let store = Arc::new(proto::Store::default());
    let r: std::io::Result<()> = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("listening on {addr} (tokio on Linux sockets)");
        loop {
            let (stream, _) = listener.accept().await?;
            let store = store.clone();
            tokio::spawn(async move { tokio_conn::serve(&store, stream).await });
        }
    });
    if let Err(e) = r {
        eprintln!("kv_tokio_linux: {addr}: {e}");
    }
    ExitCode::from(1)
}
