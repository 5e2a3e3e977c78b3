//! The command line of the plex `kv_*` examples: `IFACE ADDR/PREFIX [QUEUES] [PORT]`, and
//! the environment variable `PLEX_XDP_MODE` (generic, the default; native; auto).
use std::net::Ipv4Addr;

use poll_loop::{xdp::AttachMode, Plex};

/// The port when none is given.
pub const PORT: u16 = 7379;

/// What the command line asked for.
#[derive(Debug)]
pub struct Args {
    pub iface: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub queues: u32,
    pub port: u16,
    pub mode: AttachMode,
}

impl Args {
    /// Parse `std::env::args()`; the error names what was wrong, with the usage line.
    pub fn parse(name: &str) -> Result<Args, String> {
        let usage = format!("usage: {name} IFACE ADDR/PREFIX [QUEUES] [PORT]");
        let a: Vec<String> = std::env::args().skip(1).collect();
        if !(2..=4).contains(&a.len()) {
            return Err(usage);
        }
        let bad = |what: &str, v: &str| format!("{what} {v:?} is not valid ({usage})");
        let (ip, prefix) = a[1].split_once('/').ok_or_else(|| bad("ADDR/PREFIX", &a[1]))?;
        let mode = std::env::var("PLEX_XDP_MODE").unwrap_or_else(|_| "generic".into());
        Ok(Args {
            iface: a[0].clone(),
            ip: ip.parse().map_err(|_| bad("address", ip))?,
            prefix: prefix.parse().map_err(|_| bad("prefix length", prefix))?,
            queues: a.get(2).map_or(Ok(1), |q| q.parse().map_err(|_| bad("QUEUES", q)))?,
            port: a.get(3).map_or(Ok(PORT), |p| p.parse().map_err(|_| bad("PORT", p)))?,
            mode: mode.parse().map_err(|e| format!("PLEX_XDP_MODE: {e}"))?,
        })
    }

    /// [`Args::parse`], or the error on stderr and exit status 2.
    pub fn parse_or_exit(name: &str) -> Args {
        Args::parse(name).unwrap_or_else(|e| {
            eprintln!("{name}: {e}");
            std::process::exit(2)
        })
    }

    /// plex on the interface with the address, queues and XDP mode asked for.
    pub fn plex(&self) -> Plex {
        Plex::on(&self.iface).addr(self.ip, self.prefix).queues(self.queues).xdp_mode(self.mode)
    }
}
