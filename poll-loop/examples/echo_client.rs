//! Outbound connections from plex: `echo_client IFACE ADDR/PREFIX QUEUES SERVER:PORT N` opens
//! N connections to an echo server (they spread over the queues' shards), sends a line on each
//! and checks its echo, all at once (tokio tasks on the readiness API). Prints how many
//! echoed; exits 1 unless all did. As root, e.g. against `socat TCP-LISTEN:7,fork EXEC:cat`.
use std::time::Duration;

use poll_loop::{api::nonblocking::TcpStream, Plex};
use tokio::io::AsyncReadExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: echo_client IFACE ADDR/PREFIX QUEUES SERVER:PORT N";
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (ip, prefix) = a.get(1).and_then(|a| a.split_once('/')).ok_or(usage)?;
    let queues: u32 = a.get(2).ok_or(usage)?.parse()?;
    let server: std::net::SocketAddr = a.get(3).ok_or(usage)?.parse()?;
    let n: usize = a.get(4).ok_or(usage)?.parse()?;
    let xdp = std::env::var("PLEX_XDP_MODE").unwrap_or_else(|_| "generic".into()).parse()?;
    let (net, running) = Plex::on(a.first().ok_or(usage)?).addr(ip.parse()?, prefix.parse()?).queues(queues).xdp_mode(xdp).net()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let results: Vec<Result<(), String>> = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|k| {
                let net = net.clone();
                tokio::spawn(async move {
                    let attempt = async {
                        let mut s = TcpStream::connect(&net, server).await.map_err(|e| format!("connect: {e}"))?;
                        let line = format!("line {k}\n");
                        s.write_all(line.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
                        let mut got = vec![0u8; line.len()];
                        s.read_exact(&mut got).await.map_err(|e| format!("read: {e}"))?;
                        if got != line.as_bytes() {
                            return Err(format!("echo {:?}", String::from_utf8_lossy(&got)));
                        }
                        Ok(())
                    };
                    tokio::time::timeout(Duration::from_secs(10), attempt).await.unwrap_or_else(|_| Err("timed out".into()))
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        out
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for (k, e) in results.iter().enumerate().filter_map(|(k, r)| r.as_ref().err().map(|e| (k, e))).take(5) {
        eprintln!("connection {k}: {e}");
    }
    println!("{ok}/{n} connections echoed over {queues} queue(s)");
    running.stop();
    eprint!("{}", running.join()?);
    std::process::exit(if ok == n { 0 } else { 1 });
}
