//! `plex run` (a stack instance of a cluster), `plex ctl` (views and operator commands on the
//! coupling region) and `plex config` (print or check a cluster config).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use coupling::layout::MemberState;
use coupling::{ClusterConfig, Region};

use crate::datapath::ClusterJoin;
use crate::DataPath;

/// Load the cluster config: a file, or the embedded testbed config.
pub fn load_config(path: Option<&Path>) -> Result<ClusterConfig, String> {
    match path {
        None => ClusterConfig::parse(coupling::config::TESTBED, "embedded testbed config").map_err(|e| e.to_string()),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read cluster config {}: {e}", p.display()))?;
            ClusterConfig::parse(&text, &p.display().to_string()).map_err(|e| e.to_string())
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Cluster config (TOML). Default: the embedded testbed config (`plex config` prints it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Which [[stack]] of the config this process is.
    #[arg(long)]
    pub stack: String,
    /// busy (a core per thread) or adaptive (spin, then sleep on the socket).
    #[arg(long, default_value = "adaptive")]
    pub poll: poll_loop::runner::PollMode,
    /// XDP attach mode: generic or native.
    #[arg(long, default_value = "generic")]
    pub xdp_mode: poll_loop::xdp::AttachMode,
    /// Write every frame this stack sends and receives to a pcap file.
    #[arg(long)]
    pub pcap: Option<String>,
    /// Print counters when exiting.
    #[arg(long)]
    pub stats: bool,
    /// Listen on this address only; inside a vipa_range this activates it on this stack.
    #[arg(long)]
    pub bind: Option<Ipv4Addr>,
    #[command(subcommand)]
    pub app: RunApp,
}

#[derive(Subcommand, Debug)]
pub enum RunApp {
    /// Echo every byte back.
    Echo {
        #[arg(long, default_value_t = 7)]
        port: u16,
    },
    /// HTTP/1.1 with keep-alive, --size byte bodies.
    Http {
        #[arg(long, default_value_t = 80)]
        port: u16,
        #[arg(long, default_value_t = 1024)]
        size: u64,
    },
    /// Read everything; print bytes and SHA-256 per connection.
    Sink {
        #[arg(long, default_value_t = 5001)]
        port: u16,
    },
}

pub fn run(args: RunArgs) -> Result<(), String> {
    let cfg = Arc::new(load_config(args.config.as_deref())?);
    let def = cfg
        .stacks
        .iter()
        .find(|s| s.name == args.stack)
        .ok_or_else(|| {
            let names: Vec<&str> = cfg.stacks.iter().map(|s| s.name.as_str()).collect();
            format!("--stack {:?}: the cluster config has no such stack (it has {})", args.stack, names.join(", "))
        })?
        .clone();
    if let Some(ip) = args.bind {
        let _ = crate::apps::LISTEN_IP.set(ip);
    }
    let dp = DataPath {
        iface: def.interface.clone(),
        addr: (def.addr, def.prefix),
        extra_addr: Vec::new(),
        gateway: None,
        queues: 1,
        cores: def.cores.clone(),
        poll: args.poll,
        xdp_mode: args.xdp_mode,
        frames: 4096,
        pcap: args.pcap,
        drop: 0.0,
        reorder: 0.0,
        reorder_us: 500,
        duplicate: 0.0,
        corrupt: 0.0,
        seed: 1,
        cc: stack::tcp::Algorithm::Cubic,
        nodelay: false,
        stats: args.stats,
        limits: crate::Limits::default(),
    };
    let join = ClusterJoin { cfg, stack: args.stack };
    match args.app {
        RunApp::Echo { port } => crate::datapath::serve_in_cluster(&dp, &join, crate::apps::Echo::new(port)),
        RunApp::Http { port, size } => crate::datapath::serve_in_cluster(&dp, &join, crate::apps::Http::new(port, size)),
        RunApp::Sink { port } => crate::datapath::serve_in_cluster(&dp, &join, crate::apps::Sink::new(port, false, true)),
    }
}

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Cluster config (TOML). Default: the embedded testbed config.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
pub enum CtlCmd {
    /// Read-only views of the coupling region.
    Show {
        #[command(subcommand)]
        what: ShowWhat,
    },
    /// Operator commands on DVIPAs (privileged: root or the region's owner).
    Dvipa {
        #[command(subcommand)]
        cmd: DvipaCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum ShowWhat {
    /// Member stacks: state, incarnation, pid, MAC, heartbeat.
    Members,
    /// DVIPAs: owner, state, hierarchy, connections.
    Dvipas,
}

#[derive(Subcommand, Debug)]
pub enum DvipaCmd {
    /// Activate a range address on a stack (taking it from another stack, whose connections on
    /// it are reset).
    Activate {
        addr: Ipv4Addr,
        #[arg(long)]
        stack: String,
    },
    /// Delete an active DVIPA: its connections are reset, no stack takes it over.
    Delete { addr: Ipv4Addr },
}

fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Returns the text to print; an error is printed by main with exit code 1.
pub fn ctl(args: CtlArgs) -> Result<String, String> {
    let cfg = load_config(args.config.as_deref())?;
    let now = poll_loop::clock::Clock::read_mono_ns();
    match args.cmd {
        CtlCmd::Show { what } => {
            let region = Region::attach(&cfg.region, false).map_err(|e| e.to_string())?;
            Ok(match what {
                ShowWhat::Members => show_members(&region, now),
                ShowWhat::Dvipas => show_dvipas(&region),
            })
        }
        CtlCmd::Dvipa { cmd } => {
            let owner = Region::owner_uid(&cfg.region).map_err(|e| e.to_string())?;
            let euid = rustix::process::geteuid().as_raw();
            if euid != 0 && euid != owner {
                return Err(format!(
                    "refused: DVIPA commands need privilege (root or uid {owner}, the owner of {}); you are uid {euid}",
                    cfg.region.display()
                ));
            }
            let region = Region::attach(&cfg.region, true).map_err(|e| e.to_string())?;
            match cmd {
                DvipaCmd::Activate { addr, stack } => coupling::ops::activate(&region, &cfg, addr, &stack, now),
                DvipaCmd::Delete { addr } => coupling::ops::delete(&region, &cfg, addr, now),
            }
            .map_err(|e| format!("refused: {e}"))
        }
    }
}

fn show_members(region: &Region, now: u64) -> String {
    let mut out = format!("cluster {} ({})\n", region.cluster_name(), region.path().map(|p| p.display().to_string()).unwrap_or_default());
    out += &format!("{:<4} {:<10} {:<7} {:>4} {:>8} {:<17} {:<10} {:<15} {}\n", "SLOT", "NAME", "STATE", "INC", "PID", "MAC", "IFACE", "ADDRESS", "HEARTBEAT");
    for m in coupling::ops::members(region, now) {
        let state = match m.state {
            MemberState::Up => "up",
            MemberState::Failed => "failed",
            MemberState::Left => "left",
            MemberState::Free => "free",
        };
        out += &format!(
            "{:<4} {:<10} {:<7} {:>4} {:>8} {:<17} {:<10} {:<15} {} ms ago (lease {} ms)\n",
            m.slot, m.name, state, m.incarnation, m.pid, mac(m.mac), m.iface, m.addr, m.heartbeat_age_ms, m.lease_ms
        );
    }
    out
}

fn show_dvipas(region: &Region) -> String {
    let mut out = format!("{:<18} {:<6} {:<6} {:<16} {:<7} {:>5} {:>5}  {}\n", "ADDRESS", "KIND", "OWNER", "STATE", "ORIGIN", "CONNS", "MOVES", "HIERARCHY");
    for d in coupling::ops::dvipas(region) {
        out += &format!(
            "{:<18} {:<6} {:<6} {:<16} {:<7} {:>5} {:>5}  {}\n",
            format!("{}/{}", d.addr, d.prefix),
            if d.configured { "config" } else { "range" },
            d.owner.as_deref().unwrap_or("-"),
            d.state.name(),
            d.origin.name(),
            d.conns,
            d.moves,
            d.hierarchy.join(" > ")
        );
    }
    out
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Check this config file instead of printing the embedded one.
    #[arg(long)]
    pub check: Option<PathBuf>,
}

pub fn config(args: ConfigArgs) -> Result<String, String> {
    match args.check {
        None => Ok(coupling::config::TESTBED.to_string()),
        Some(p) => {
            let c = load_config(Some(&p))?;
            Ok(format!(
                "{}: cluster {} with {} stacks, {} DVIPAs, {} VIPA ranges; region {}\n",
                p.display(),
                c.name,
                c.stacks.len(),
                c.dvipas.len(),
                c.ranges.len(),
                c.region.display()
            ))
        }
    }
}
