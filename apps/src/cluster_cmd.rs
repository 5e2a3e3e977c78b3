//! `plex run` (a stack instance of a cluster), `plex ctl` (views and operator commands on the
//! coupling region) and `plex config` (print or check a cluster config).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use coupling::layout::MemberState;
use coupling::{ClusterConfig, Region};

use crate::apps::servers::{bounce, ServerCmd};
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
    /// XDP attach mode: generic, native or auto (the kernel picks).
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
    /// The application's name for the config's `source_ipa` statements (z/OS SOURCEIPA): its
    /// connections that bind no address leave from the address listed for it.
    #[arg(long)]
    pub app_name: Option<String>,
    /// Fault injection: drop this fraction (0 to 1) of the frames the stack receives.
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Queues (AF_XDP sockets, stack shards and poll threads, pinned to the config's cores in
    /// order). Queue 0's shard is the cluster member; the others hand it what only the
    /// cluster decides and take the connections it gives them.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Where this stack routes a distributed address (round robin, weighted round robin), its
    /// XDP program hands new connections to the targets itself ("on"), or every SYN comes to
    /// the poll thread ("off").
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub syn_steering: String,
    #[command(subcommand)]
    pub app: ServerCmd,
}

/// Capabilities a stack needs (attach XDP, load BPF, open AF_XDP sockets), from the effective
/// set in /proc/self/status: checked before anything is created, so an unprivileged `plex run`
/// leaves no coupling region behind for root's stacks to trip over.
fn check_stack_privilege() -> Result<(), String> {
    const NET_ADMIN: u32 = 12;
    const NET_RAW: u32 = 13;
    const SYS_ADMIN: u32 = 21;
    const BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("reading /proc/self/status: {e}"))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or("no CapEff line in /proc/self/status")?;
    let has = |c: u32| eff & (1 << c) != 0;
    if has(NET_ADMIN) && has(NET_RAW) && (has(BPF) || has(SYS_ADMIN)) {
        Ok(())
    } else {
        Err(format!(
            "plex run needs root (or CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF) to attach XDP and open AF_XDP sockets; you are uid {} with capabilities {eff:#x}. Nothing was created.",
            rustix::process::geteuid().as_raw()
        ))
    }
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
    // Before the region (and anything else) is created.
    check_stack_privilege()?;
    // The built-in servers listen on every address of the stack unless --bind names one.
    let listen_ip = args.bind.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let dp = DataPath {
        iface: def.interface.clone(),
        addr: (def.addr, def.prefix),
        extra_addr: Vec::new(),
        gateway: None,
        queues: args.queues,
        cores: def.cores.clone(),
        poll: args.poll,
        xdp_mode: args.xdp_mode,
        frames: 4096,
        pcap: args.pcap,
        drop: args.drop,
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
    let join = ClusterJoin { cfg, stack: args.stack, app_name: args.app_name, syn_steering: args.syn_steering == "on" };
    match args.app {
        ServerCmd::Echo(a) => crate::datapath::serve_in_cluster(&dp, &join, |_| a.app(listen_ip)),
        ServerCmd::Http(a) => crate::datapath::serve_in_cluster(&dp, &join, |_| a.app(listen_ip)),
        ServerCmd::Sink(a) => crate::datapath::serve_in_cluster(&dp, &join, |_| a.app(listen_ip, false, true)),
        ServerCmd::Outbound(a) => crate::datapath::serve_in_cluster(&dp, &join, |_| a.app()),
        ServerCmd::Bounce(a) => {
            let at = std::net::SocketAddrV4::new(listen_ip, a.port);
            crate::datapath::serve_in_cluster(&dp, &join, |_| bounce::Bounce::new(at, &a.peer, a.transfers))
        }
        ServerCmd::Router(a) => {
            a.app(listen_ip, &join.stack)?;
            crate::datapath::serve_in_cluster(&dp, &join, |_| a.app(listen_ip, &join.stack).expect("checked above"))
        }
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
    /// Cluster-wide ports at run time (privileged).
    Ports {
        #[command(subcommand)]
        cmd: PortsCmd,
    },
    /// Drain a stack: it takes no new connections, and moves every connection it has on the
    /// distributed addresses to --to (or the other targets) by live handoff, nothing reset;
    /// then it can be stopped. Waits until done (privileged).
    Drain {
        /// The stack to drain.
        stack: String,
        /// Where its connections go (default: the other live targets).
        #[arg(long)]
        to: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum ShowWhat {
    /// Member stacks: state, incarnation, pid, MAC, heartbeat.
    Members,
    /// DVIPAs: owner, state, hierarchy, connections.
    Dvipas,
    /// Rows of the region that fail validation now (per reason), and each stack's count of
    /// rows it ignored.
    Counters,
    /// The distributor's destination port table (z/OS NETSTAT VDPT): per distributed DVIPA,
    /// port and target, its listeners, readiness, weight and connections. SYNS counts the SYNs
    /// the router's poll thread routed; those its XDP program steers itself (round robin and
    /// weighted round robin) are `syn_steered` in `plex run --stats`.
    Dpt,
    /// The distributor's connection routing table (z/OS NETSTAT VCRT): per connection, its
    /// target, router and epoch.
    Crt,
    /// The cluster port registry (spec/03, `cluster_ports`): every claimed port (and, for
    /// "tuple" addresses, 4-tuple) with its owner stack and whether that owner is live or a
    /// dead stack's port awaiting reclaim; then the counts per stack.
    Ports {
        /// Only this address.
        addr: Option<Ipv4Addr>,
    },
    /// Live connection handoff (spec/04): the transfers in flight between stacks (record
    /// slots in use: state, source, target, connection, size, age).
    Handoff,
}

#[derive(Subcommand, Debug)]
pub enum PortsCmd {
    /// Turn `cluster_ports` on for a DVIPA of the cluster while it runs: every stack records
    /// the ports of the connections it has on it, then takes its ports from the registry.
    Enable {
        addr: Ipv4Addr,
        /// One owner per 4-tuple instead of per port.
        #[arg(long)]
        tuple: bool,
    },
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
                ShowWhat::Members => show_members(&region, &cfg, now),
                ShowWhat::Dvipas => show_dvipas(&region, &cfg, now),
                ShowWhat::Counters => show_counters(&region, &cfg, now),
                ShowWhat::Dpt => coupling::ops::dpt_lines(&region, &cfg).join("\n") + "\n",
                ShowWhat::Crt => coupling::ops::crt_lines(&region, &cfg, now).join("\n") + "\n",
                ShowWhat::Ports { addr } => coupling::ops::ports_lines(&region, &cfg, addr, now).join("\n") + "\n",
                ShowWhat::Handoff => coupling::ops::handoff_lines(&region, &cfg, now).join("\n") + "\n",
            })
        }
        CtlCmd::Ports { cmd: PortsCmd::Enable { addr, tuple } } => {
            let region = privileged_region(&cfg, now)?;
            let mode = if tuple { coupling::config::PortsMode::Tuple } else { coupling::config::PortsMode::Port };
            coupling::ports::enable(&region, &cfg, addr, mode, now).map_err(|e| format!("refused: {e}"))?;
            // The stacks record their ports at their next heartbeat.
            std::thread::sleep(std::time::Duration::from_millis(cfg.heartbeat_ms * 3));
            Ok(format!("{addr}: cluster_ports ({}) enabled; every stack records its connections' ports at its next heartbeat\n", mode.name()))
        }
        CtlCmd::Drain { stack, to, timeout } => {
            let region = privileged_region(&cfg, now)?;
            let seq = coupling::ops::drain(&region, &cfg, &stack, to.as_deref(), now).map_err(|e| format!("refused: {e}"))?;
            let slot = cfg.slot(&stack).unwrap_or(0);
            let start = poll_loop::clock::Clock::read_mono_ns();
            let mut last = None;
            loop {
                let st = coupling::ops::drain_status(&region, slot).ok_or("no command row")?;
                let elapsed = (poll_loop::clock::Clock::read_mono_ns() - start) as f64 / 1e9;
                if last != Some((st.moved, st.left)) {
                    eprintln!("drain {stack}: {} moved, {} left ({elapsed:.2} s)", st.moved, st.left);
                    last = Some((st.moved, st.left));
                }
                if st.done >= seq {
                    let line = format!("drained {stack}: {} connections moved in {elapsed:.2} s, {} left", st.moved, st.left);
                    return if st.left == 0 { Ok(line + "\n") } else { Err(line) };
                }
                if elapsed > timeout as f64 {
                    return Err(format!("drain {stack}: not done after {timeout} s ({} moved, {} left)", st.moved, st.left));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        CtlCmd::Dvipa { cmd } => {
            let euid = rustix::process::geteuid().as_raw();
            if euid != 0 {
                let owner = Region::owner_uid(&cfg.region).map_err(|e| e.to_string())?;
                if owner != euid {
                    return Err(format!(
                        "refused: DVIPA commands need privilege (root or the uid the cluster's stacks run as); you are uid {euid} and {} is owned by uid {owner}",
                        cfg.region.display()
                    ));
                }
            }
            let region = Region::attach(&cfg.region, true).map_err(|e| e.to_string())?;
            if euid != 0 {
                check_ctl_privilege(&region, &cfg, euid, now)?;
            }
            match cmd {
                DvipaCmd::Activate { addr, stack } => {
                    let said = coupling::ops::activate(&region, &cfg, addr, &stack, now).map_err(|e| format!("refused: {e}"))?;
                    wait_announced(&region, &cfg, addr, &stack)?;
                    Ok(format!("{said}; {stack} has announced it\n"))
                }
                DvipaCmd::Delete { addr } => coupling::ops::delete(&region, &cfg, addr, now).map(|s| s + "\n").map_err(|e| format!("refused: {e}")),
            }
        }
    }
}

/// The region, attached for writing, for a privileged command (root or the cluster's uid).
fn privileged_region(cfg: &coupling::ClusterConfig, now: u64) -> Result<Region, String> {
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 {
        let owner = Region::owner_uid(&cfg.region).map_err(|e| e.to_string())?;
        if owner != euid {
            return Err(format!("refused: needs privilege (root or the uid the cluster's stacks run as); you are uid {euid} and {} is owned by uid {owner}", cfg.region.display()));
        }
    }
    let region = Region::attach(&cfg.region, true).map_err(|e| e.to_string())?;
    if euid != 0 {
        check_ctl_privilege(&region, cfg, euid, now)?;
    }
    Ok(region)
}

/// `plex ctl dvipa` privilege for a non-root user: the uid the cluster's stacks run as. The
/// region's owner must be the caller and so must every live stack's process (a region some
/// other user created is not the cluster's: its stacks refuse to attach to it).
fn check_ctl_privilege(region: &Region, cfg: &coupling::ClusterConfig, euid: u32, now: u64) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let owner = Region::owner_uid(&cfg.region).map_err(|e| e.to_string())?;
    let stacks: Vec<(String, u32)> = coupling::ops::members(region, cfg, now)
        .into_iter()
        .filter(|m| m.state == MemberState::Up && m.invalid.is_none())
        .filter_map(|m| std::fs::metadata(format!("/proc/{}", m.pid)).ok().map(|md| (m.name, md.uid())))
        .collect();
    let others: Vec<String> = stacks.iter().filter(|(_, u)| *u != euid).map(|(n, u)| format!("{n} runs as uid {u}")).collect();
    if owner != euid || !others.is_empty() {
        return Err(format!(
            "refused: DVIPA commands need privilege (root or the uid the cluster's stacks run as); you are uid {euid}, {} is owned by uid {owner}{}",
            cfg.region.display(),
            if others.is_empty() { String::new() } else { format!(", {}", others.join(", ")) }
        ));
    }
    Ok(())
}

/// Wait until the new owner has announced the address (bounded: a few leases).
fn wait_announced(region: &Region, cfg: &coupling::ClusterConfig, addr: Ipv4Addr, stack: &str) -> Result<(), String> {
    let limit = std::time::Duration::from_millis((cfg.lease_ms * 8).max(2000));
    let start = poll_loop::clock::Clock::read_mono_ns();
    loop {
        let now = poll_loop::clock::Clock::read_mono_ns();
        match coupling::ops::activation_done(region, cfg, addr, stack, now) {
            Ok(true) => return Ok(()),
            Ok(false) if now.saturating_sub(start) < limit.as_nanos() as u64 => std::thread::sleep(std::time::Duration::from_millis(1)),
            Ok(false) => {
                return Err(format!(
                    "{addr}: the command was recorded but {stack} has not announced the address within {} ms; see `plex ctl show dvipas`",
                    limit.as_millis()
                ))
            }
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
}

fn show_members(region: &Region, cfg: &coupling::ClusterConfig, now: u64) -> String {
    let mut out = format!("cluster {} ({})\n", region.cluster_name(), region.path().map(|p| p.display().to_string()).unwrap_or_default());
    out += &format!(
        "{:<4} {:<10} {:<7} {:>4} {:>8} {:<17} {:<10} {:<15} {:>7} {}\n",
        "SLOT", "NAME", "STATE", "INC", "PID", "MAC", "IFACE", "ADDRESS", "IGNORED", "HEARTBEAT"
    );
    for m in coupling::ops::members(region, cfg, now) {
        if let Some(r) = m.invalid {
            out += &format!("{:<4} invalid row ({r}): ignored\n", m.slot);
            continue;
        }
        let state = match m.state {
            MemberState::Up => "up",
            MemberState::Failed => "failed",
            MemberState::Left => "left",
            MemberState::Free => "free",
        };
        out += &format!(
            "{:<4} {:<10} {:<7} {:>4} {:>8} {:<17} {:<10} {:<15} {:>7} {} ms ago (lease {} ms)\n",
            m.slot, m.name, state, m.incarnation, m.pid, mac(m.mac), m.iface, m.addr, m.ignored, m.heartbeat_age_ms, m.lease_ms
        );
    }
    out
}

fn show_counters(region: &Region, cfg: &coupling::ClusterConfig, now: u64) -> String {
    let c = coupling::ops::invalid_rows(region, cfg, now);
    let mut out = String::from("rows failing validation now (ignored by every stack):\n");
    for r in coupling::check::Invalid::ALL {
        out += &format!("  {:<22} {}\n", r.name(), c.get(r));
    }
    out += "rows each stack has ignored so far:\n";
    for m in coupling::ops::members(region, cfg, now).into_iter().filter(|m| m.invalid.is_none()) {
        out += &format!("  {:<22} {}\n", m.name, m.ignored);
    }
    out
}

fn show_dvipas(region: &Region, cfg: &coupling::ClusterConfig, now: u64) -> String {
    let mut out = format!("{:<18} {:<6} {:<6} {:<16} {:<7} {:>5} {:>5}  {}\n", "ADDRESS", "KIND", "OWNER", "STATE", "ORIGIN", "CONNS", "MOVES", "HIERARCHY");
    for d in coupling::ops::dvipas(region, cfg, now) {
        let state = match d.invalid {
            Some(r) => format!("invalid({r})"),
            None => d.state.name().to_string(),
        };
        out += &format!(
            "{:<18} {:<6} {:<6} {:<16} {:<7} {:>5} {:>5}  {}\n",
            format!("{}/{}", d.addr, d.prefix),
            if d.configured { "config" } else { "range" },
            d.owner.as_deref().unwrap_or("-"),
            state,
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
