//! Servers: listen on a port, serve every connection.

pub mod bounce;
pub mod echo;
pub mod http;
pub mod router;
pub mod sink;

use std::net::{Ipv4Addr, SocketAddrV4};

use clap::{Args, Subcommand};

/// The server applications' own options, defined once for `plex echo|http|sink` (direct mode,
/// which adds data-path options and a few of its own) and `plex run ... echo|http|sink`.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum ServerCmd {
    /// Echo every byte back.
    Echo(EchoArgs),
    /// HTTP/1.1 with keep-alive, --size byte bodies.
    Http(HttpArgs),
    /// Read everything; print bytes and SHA-256 per connection.
    Sink(SinkArgs),
    /// Not a server: open --count connections to --to (a server outside the cluster) and keep
    /// them busy for --secs, checking every echoed byte; prints the local ports it got
    /// (with `cluster_ports` on the source address, two stacks never share one).
    Outbound(OutboundArgs),
    /// The content router: HTTP/1.1 requests routed to stacks by path prefix and Host
    /// (--rules FILE), by moving the live connection there (every stack runs it).
    Router(RouterArgs),
    /// The handoff benchmark: echo, and move every connection to --peer as soon as it is
    /// here (--transfers from this stack at most); prints the handoff latency histogram.
    Bounce(BounceArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct BounceArgs {
    #[arg(long, default_value_t = 81)]
    pub port: u16,
    /// The other stack of the pair.
    #[arg(long)]
    pub peer: String,
    /// Transfers from this stack at most.
    #[arg(long, default_value_t = 10_000)]
    pub transfers: u64,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct RouterArgs {
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// Rules: `prefix /PATH STACK`, `host NAME STACK`, `default STACK`, one per line.
    #[arg(long)]
    pub rules: std::path::PathBuf,
}

impl RouterArgs {
    /// The router of stack `me`, listening on `ip`.
    pub fn app(&self, ip: Ipv4Addr, me: &str) -> Result<router::Router, String> {
        let text = std::fs::read_to_string(&self.rules).map_err(|e| format!("--rules {}: {e}", self.rules.display()))?;
        let rules = router::parse_rules(&text).map_err(|e| format!("--rules {}: {e}", self.rules.display()))?;
        Ok(router::Router::new(SocketAddrV4::new(ip, self.port), rules, me))
    }
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct OutboundArgs {
    /// The echo server, IP:PORT.
    #[arg(long)]
    pub to: SocketAddrV4,
    /// Source address (default: the one `source_ipa` gives --app-name, else the route's).
    #[arg(long)]
    pub from: Option<Ipv4Addr>,
    /// Connections.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Seconds to keep them busy once all are up.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// A 16-byte message on every connection this often.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Connection rate instead: open, echo 16 bytes, close, --churn times in all (--count at
    /// a time); prints connections per second.
    #[arg(long)]
    pub churn: Option<u64>,
}

impl OutboundArgs {
    /// The client (long-lived connections, or the churn client with --churn).
    pub fn app(&self) -> Box<dyn poll_loop::runner::App + Send> {
        use crate::apps::clients::outbound::{Churn, Outbound};
        match self.churn {
            Some(n) => Box::new(Churn::new(self.to, self.from, n, self.count)),
            None => Box::new(Outbound::new(self.to, self.from, self.count, self.secs, self.interval_ms)),
        }
    }
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct EchoArgs {
    #[arg(long, default_value_t = 7)]
    pub port: u16,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct HttpArgs {
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// Response body size in bytes (a request for `/bytes/N` gets N bytes instead).
    #[arg(long, default_value_t = 1024)]
    pub size: u64,
    /// Seconds a client has to send a complete request header once a request (or the
    /// connection) starts; then the connection is reset (nginx client_header_timeout).
    #[arg(long, default_value_t = 60)]
    pub header_timeout: u64,
    /// Seconds an idle keep-alive connection is kept (nginx keepalive_timeout).
    #[arg(long, default_value_t = 75)]
    pub idle_timeout: u64,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct SinkArgs {
    #[arg(long, default_value_t = 5001)]
    pub port: u16,
}

impl EchoArgs {
    /// The app, listening on `ip` (unspecified: every address of the stack).
    pub fn app(&self, ip: Ipv4Addr) -> echo::Echo {
        echo::Echo::new(SocketAddrV4::new(ip, self.port))
    }
}

impl HttpArgs {
    /// The app, listening on `ip` (unspecified: every address of the stack).
    pub fn app(&self, ip: Ipv4Addr) -> http::Http {
        http::Http::new(SocketAddrV4::new(ip, self.port), self.size)
            .with_timeouts(std::time::Duration::from_secs(self.header_timeout), std::time::Duration::from_secs(self.idle_timeout))
    }
}

impl SinkArgs {
    /// The app, listening on `ip` (unspecified: every address of the stack); `once`: exit
    /// after the first connection ends; `hash`: SHA-256 of every stream.
    pub fn app(&self, ip: Ipv4Addr, once: bool, hash: bool) -> sink::Sink {
        sink::Sink::new(SocketAddrV4::new(ip, self.port), once, hash)
    }
}
