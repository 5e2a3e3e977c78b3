//! A hyper HTTP/1.1 server on plex's readiness API, through tokio's `AsyncRead`/`AsyncWrite`
//! (feature `tokio`). The service and the connection loop are the same for plex and for
//! Linux sockets: only the listener differs.
//!
//! ```text
//! hyper IFACE ADDR/PREFIX [PORT] [QUEUES]             plex on IFACE (as root), tokio on a thread of its own
//! hyper --per-core IFACE ADDR/PREFIX [PORT] [QUEUES]  the same, thread per core: tokio on every poll thread
//! hyper --linux ADDR:PORT                              the same server on tokio's Linux sockets
//! ```
//! e.g. `cargo run --release -p poll-loop --features tokio --example hyper -- eth1 198.18.0.11/24 80`.
//! `PLEX_XDP_MODE=native` attaches in native mode (veth: frames keep their queue).
//! `GET /N` answers N bytes (default 13: "hello, world\n"); Ctrl-C stops it.
use std::convert::Infallible;
use std::net::Ipv4Addr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use poll_loop::{api::nonblocking::TcpListener, Plex};
use tokio::io::{AsyncRead, AsyncWrite};

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.uri().path().trim_start_matches('/').parse::<usize>() {
        Ok(n) => Bytes::from(vec![b'x'; n.min(1 << 20)]),
        Err(_) => Bytes::from_static(b"hello, world\n"),
    };
    Ok(Response::new(Full::new(body)))
}

/// Serve one connection: the same code for a plex stream and a tokio one.
fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(s: S) {
    tokio::spawn(async move {
        let _ = http1::Builder::new().serve_connection(TokioIo::new(s), service_fn(hello)).await;
    });
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: hyper [--per-core] IFACE ADDR/PREFIX [PORT] [QUEUES] | hyper --linux ADDR:PORT";
    let a: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    if a.first().map(String::as_str) == Some("--linux") {
        let addr = a.get(1).ok_or(usage)?.clone();
        return rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(&addr).await?;
            println!("listening on {addr} (Linux sockets)");
            loop {
                tokio::select! {
                    r = l.accept() => serve(r?.0),
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        });
    }
    let per_core = a.first().map(String::as_str) == Some("--per-core");
    let a = if per_core { &a[1..] } else { &a[..] };
    let (ip, prefix) = a.get(1).and_then(|a| a.split_once('/')).ok_or(usage)?;
    let port: u16 = a.get(2).map_or(Ok(80), |p| p.parse())?;
    let queues: u32 = a.get(3).map_or(Ok(1), |q| q.parse())?;
    let xdp = std::env::var("PLEX_XDP_MODE").unwrap_or_else(|_| "generic".into()).parse()?;
    let plex = Plex::on(a.first().ok_or(usage)?).addr(ip.parse()?, prefix.parse()?).queues(queues).xdp_mode(xdp);
    if per_core {
        // Every queue's poll thread runs a tokio runtime: its listener, its connections.
        let listening = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ip = ip.to_string();
        let report = plex.serve_tokio(move |net, queue| {
            let (listening, ip) = (listening.clone(), ip.clone());
            async move {
                let l = match TcpListener::bind_async(&net, (Ipv4Addr::UNSPECIFIED, port)).await {
                    Ok(l) => l,
                    Err(e) => return eprintln!("queue {queue}: port {port}: {e}"),
                };
                if listening.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == queues {
                    println!("listening on {ip}:{port} (plex, thread per core, {queues} queue(s))");
                }
                while let Ok((s, _)) = l.accept().await {
                    serve(s);
                }
            }
        })?;
        eprint!("{report}");
        return Ok(());
    }
    let (net, running) = plex.net()?;
    let l = TcpListener::bind(&net, (Ipv4Addr::UNSPECIFIED, port))?;
    println!("listening on {ip}:{port} (plex, {queues} queue(s))");
    // SIGINT/SIGTERM stop the poll threads; accept then fails and the loop ends.
    let r: std::io::Result<()> = rt.block_on(async move {
        loop {
            serve(l.accept().await?.0);
        }
    });
    eprint!("{}", running.join()?);
    eprintln!("accept loop ended: {}", r.err().map_or("-".into(), |e| e.to_string()));
    Ok(())
}
