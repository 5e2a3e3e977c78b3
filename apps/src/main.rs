//! # The `plex` command
//!
//! Runs a plex stack instance on an interface, through AF_XDP, with a built-in application:
//! `echo`, `http` (HTTP/1.1 with keep-alive), `sink` / `source` (bulk, with SHA-256 of the
//! stream) and `connect` (netcat-like). Every subcommand takes the same data-path options
//! (interface, address, queues, cores, poll mode, XDP mode, capture, fault injection).

mod apps;
mod cluster_cmd;
mod datapath;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "plex",
    version,
    about = "plex: a userspace TCP/IP stack on AF_XDP",
    long_about = "plex runs its own TCP/IP stack on a network interface through AF_XDP: the \
interface carries no kernel address for plex's address; an XDP program steers plex's traffic \
to plex and leaves everything else to the kernel. Run as root.\n\n\
Example (inside the testbed's namespace plx-s1):\n  \
plex http --iface plx-s1 --addr 198.18.0.11/24 --port 80 --size 1024"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Echo every byte back to its sender (TCP), and every UDP datagram on the same port.
    Echo {
        #[command(flatten)]
        dp: DataPath,
        #[command(flatten)]
        app: apps::servers::EchoArgs,
        /// Serve through the blocking std-like API (a thread per connection, std::io::Read and
        /// Write) instead of run-to-completion on the poll thread.
        #[arg(long)]
        blocking: bool,
    },
    /// Serve HTTP/1.1 with keep-alive: every request gets a body of --size bytes.
    Http {
        #[command(flatten)]
        dp: DataPath,
        #[command(flatten)]
        app: apps::servers::HttpArgs,
    },
    /// Accept connections and read everything; print bytes and SHA-256 per connection.
    Sink {
        #[command(flatten)]
        dp: DataPath,
        #[command(flatten)]
        app: apps::servers::SinkArgs,
        /// Exit after the first connection ends.
        #[arg(long)]
        once: bool,
        /// Do not compute SHA-256 (benchmarks: the Linux sink does not hash either).
        #[arg(long)]
        no_hash: bool,
    },
    /// Connect and send --bytes of data; print SHA-256 of what was sent.
    Source {
        #[command(flatten)]
        dp: DataPath,
        /// Where to connect, IP:PORT.
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long, default_value_t = 100 << 20)]
        bytes: u64,
        /// Do not compute SHA-256 (benchmarks: the Linux source does not hash either).
        #[arg(long)]
        no_hash: bool,
    },
    /// Measure TCP round trips against an echo server (HdrHistogram percentiles).
    Pingpong {
        #[command(flatten)]
        dp: DataPath,
        /// The echo server, IP:PORT.
        #[arg(long)]
        to: SocketAddrV4,
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 1_000)]
        warmup: u64,
        /// Concurrent connections, each with one message in flight (--count and --warmup
        /// are totals over all of them).
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Write the percentile distribution (.hgrm) here.
        #[arg(long)]
        hgrm: Option<String>,
    },
    /// Connection rate against an echo server: connect, 64 bytes each way, close; repeated.
    Connrate {
        #[command(flatten)]
        dp: DataPath,
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Connections in flight at once (1: one after the other).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
        parallel: u64,
    },
    /// Open --count idle connections to IP:PORT (round robin over the stack's addresses,
    /// --addr and every --extra-addr) and hold them: prints "hold: N established" once all
    /// are, then waits for SIGINT/SIGTERM or --secs and resets them (memory-per-connection
    /// benchmark).
    Hold {
        #[command(flatten)]
        dp: DataPath,
        /// Server IP:PORT; repeat it to spread the connections over several servers
        /// (round robin).
        #[arg(long, required = true)]
        to: Vec<SocketAddrV4>,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Handshakes in flight at most.
        #[arg(long, default_value_t = 128)]
        inflight: usize,
        /// Give up holding after this many seconds.
        #[arg(long, default_value_t = 300)]
        secs: u64,
        /// Send these bytes on every connection once it is established (escapes \r and \n
        /// understood), e.g. half an HTTP request: the abandoned-connection attack.
        #[arg(long, default_value = "")]
        request: String,
        /// Count refused and timed-out connections and go on (an attacker against a
        /// connection limit) instead of stopping at the first.
        #[arg(long)]
        keep_going: bool,
    },
    /// Connect to IP:PORT; copy stdin to the connection and the connection to stdout.
    Connect {
        #[command(flatten)]
        dp: DataPath,
        /// Where to connect, IP:PORT.
        to: SocketAddrV4,
    },
    /// Run a stack instance of a cluster (interface and address from the cluster config) with
    /// an application; it joins the coupling region and serves the DVIPAs it owns.
    Run(cluster_cmd::RunArgs),
    /// Look at a cluster's coupling region (`show members|dvipas`), or act on its DVIPAs
    /// (`dvipa activate|delete`, privileged). Exit code 0 or 1.
    Ctl(cluster_cmd::CtlArgs),
    /// Print the embedded testbed cluster config, or check a config file (--check FILE).
    Config(cluster_cmd::ConfigArgs),
    /// (Tests) Bind an AF_XDP socket to a queue, attach no XDP program, and hold it for
    /// --secs or until killed: another process then meets a queue in use
    /// (scripts/it/20-linux-peers.sh).
    #[command(hide = true)]
    HoldQueue {
        #[arg(long)]
        iface: String,
        #[arg(long, default_value_t = 0)]
        queue: u32,
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
}

/// Options of the data path, common to every subcommand.
#[derive(Args, Debug, Clone)]
pub struct DataPath {
    /// Network interface to take over with AF_XDP.
    #[arg(long)]
    pub iface: String,
    /// plex's address with its prefix, e.g. 198.18.0.11/24 (must not be a kernel address of the interface).
    #[arg(long, value_parser = parse_cidr)]
    pub addr: (Ipv4Addr, u8),
    /// More addresses for plex on the same interface and prefix (repeatable; e.g. source
    /// addresses for more than ~28 000 connections to one server).
    #[arg(long)]
    pub extra_addr: Vec<Ipv4Addr>,
    /// Default gateway.
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// Number of queues (one AF_XDP socket and poll thread each).
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Cores to pin the poll threads to, comma-separated (default: not pinned).
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// busy (a core per thread) or adaptive (spin, then sleep on the socket).
    #[arg(long, default_value = "adaptive")]
    pub poll: poll_loop::runner::PollMode,
    /// XDP attach mode: generic (default, faster on veth), native, or auto (the kernel picks:
    /// native where the driver has it).
    #[arg(long, default_value = "generic")]
    pub xdp_mode: poll_loop::xdp::AttachMode,
    /// UMEM frames per queue (4 KiB each).
    #[arg(long, default_value_t = 4096)]
    pub frames: u32,
    /// Write every frame plex sends and receives to this pcap file (queue N adds .N for N > 0).
    #[arg(long)]
    pub pcap: Option<String>,
    /// Drop this fraction of received frames (fault injection).
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Hold back this fraction of received frames by --reorder-us (reordering).
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    #[arg(long, default_value_t = 500)]
    pub reorder_us: u64,
    /// Duplicate this fraction of received frames.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate: f64,
    /// Corrupt one byte of this fraction of received frames.
    #[arg(long, default_value_t = 0.0)]
    pub corrupt: f64,
    /// Seed of the fault injector.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Congestion control: cubic or newreno.
    #[arg(long, default_value = "cubic")]
    pub cc: stack::tcp::Algorithm,
    /// Disable Nagle's algorithm.
    #[arg(long)]
    pub nodelay: bool,
    /// Print counters when exiting.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub limits: Limits,
}

/// Resource limits of each stack shard (one per queue).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// TCP connections per queue at most; SYNs beyond it are dropped and counted
    /// (tcp_conn_limit).
    #[arg(long, default_value_t = 262_144)]
    pub max_conns: usize,
    /// Socket-buffer memory per queue (bytes; K, M, G suffixes): connections whose buffers
    /// would not fit are not admitted (tcp_mem_limit).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub mem_budget: usize,
    /// SYN-ACK retransmissions of an embryonic connection (Linux tcp_synack_retries).
    #[arg(long, default_value_t = 5)]
    pub synack_retries: u32,
    /// ICMP errors per second at most (0: unlimited; Linux icmp_msgs_per_sec).
    #[arg(long, default_value_t = 1000)]
    pub icmp_rate: u32,
    /// ICMP error burst (Linux icmp_msgs_burst).
    #[arg(long, default_value_t = 50)]
    pub icmp_burst: u32,
    /// RSTs per second at most for segments no socket owns (0: unlimited).
    #[arg(long, default_value_t = 1000)]
    pub rst_rate: u32,
    #[arg(long, default_value_t = 50)]
    pub rst_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_conns: 262_144, mem_budget: 4 << 30, synack_retries: 5, icmp_rate: 1000, icmp_burst: 50, rst_rate: 1000, rst_burst: 50 }
    }
}

impl Limits {
    /// Apply to a stack shard's configuration.
    pub fn apply(&self, cfg: &mut stack::iface::StackConfig) {
        use stack::iface::RateLimit;
        cfg.max_connections = self.max_conns;
        cfg.mem_budget = self.mem_budget;
        cfg.tcp.synack_retries = self.synack_retries;
        cfg.icmp_error_limit = RateLimit { per_sec: self.icmp_rate, burst: self.icmp_burst };
        cfg.rst_limit = RateLimit { per_sec: self.rst_rate, burst: self.rst_burst };
    }
}

/// `4096`, `64K`, `512M`, `4G` (powers of 1024).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: usize = num.parse().map_err(|_| format!("{s:?} is not a size (bytes, or with K, M, G)"))?;
    n.checked_mul(1usize << shift).ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "24"));
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let len: u8 = len.parse().map_err(|_| format!("{len:?} is not a prefix length"))?;
    if len > 32 {
        return Err(format!("prefix length {len} is above 32"));
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(format!("{ip} cannot be a host address"));
    }
    Ok((ip, len))
}

/// `plex hold-queue`: an AF_XDP socket on `queue` of `iface`, no XDP program, held for `secs`.
fn hold_queue(iface: &str, queue: u32, secs: u64) -> Result<(), String> {
    let cfg = poll_loop::xsk::XskConfig { ifname: iface.to_string(), queue, frames: 512, ring_size: 256, ..Default::default() };
    let _xsk = poll_loop::xsk::Xsk::open(&cfg).map_err(|e| e.to_string())?;
    println!("hold-queue: pid {} holds queue {queue} of {iface}", std::process::id());
    std::thread::sleep(std::time::Duration::from_secs(secs));
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout with success, usage errors to stderr.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.cmd {
        Cmd::Echo { dp, app, blocking: true } => datapath::blocking(&dp, move |net| apps::echo_blocking(net, app.port)),
        Cmd::Echo { dp, app, blocking: false } => datapath::serve(&dp, move |_| app.app(Ipv4Addr::UNSPECIFIED)),
        Cmd::Http { dp, app } => datapath::serve(&dp, move |_| app.app(Ipv4Addr::UNSPECIFIED)),
        Cmd::Sink { dp, app, once, no_hash } => datapath::serve(&dp, move |_| app.app(Ipv4Addr::UNSPECIFIED, once, !no_hash)),
        Cmd::Source { dp, to, bytes, no_hash } => datapath::client(&dp, apps::Source::new(to, bytes, !no_hash)),
        Cmd::Connect { dp, to } => datapath::client(&dp, apps::Connect::new(to)),
        Cmd::Hold { dp, to, count, inflight, secs, request, keep_going } => {
            let request = request.replace("\\r", "\r").replace("\\n", "\n").into_bytes();
            datapath::client(&dp, apps::Hold::new(to, count, inflight, secs, request, keep_going))
        }
        Cmd::Connrate { dp, to, count, parallel } => datapath::client(&dp, apps::ConnRate::new(to, count, parallel as usize)),
        Cmd::Pingpong { dp, to, size, count, warmup, conns, hgrm } => {
            datapath::client(&dp, apps::PingPong::new(to, size, count, warmup, conns, hgrm))
        }
        Cmd::Run(args) => cluster_cmd::run(args),
        Cmd::Ctl(args) => cluster_cmd::ctl(args).map(|out| print!("{out}")),
        Cmd::Config(args) => cluster_cmd::config(args).map(|out| print!("{out}")),
        Cmd::HoldQueue { iface, queue, secs } => hold_queue(&iface, queue, secs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr("198.18.0.11/24"), Ok((Ipv4Addr::new(198, 18, 0, 11), 24)));
        assert_eq!(parse_cidr("198.18.0.11"), Ok((Ipv4Addr::new(198, 18, 0, 11), 24)));
        assert!(parse_cidr("198.18.0/24").is_err());
        assert!(parse_cidr("198.18.0.1/33").is_err());
        assert!(parse_cidr("0.0.0.0/0").is_err());
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let e = Cli::try_parse_from(["plex", "http", "--iface", "x", "--addr", "nope"]).unwrap_err();
        assert!(e.use_stderr());
        assert!(e.to_string().contains("nope"), "{e}");
        let e = Cli::try_parse_from(["plex", "http", "--addr", "198.18.0.1/24"]).unwrap_err();
        assert!(e.to_string().contains("--iface"), "{e}");
        let e = Cli::try_parse_from(["plex", "echo", "--iface", "x", "--addr", "198.18.0.1", "--poll", "lazy"]).unwrap_err();
        assert!(e.to_string().contains("lazy"), "{e}");
        assert!(Cli::try_parse_from(["plex", "source", "--iface", "x", "--addr", "198.18.0.1", "--to", "198.18.0.2:5001"]).is_ok());
        let hold = ["plex", "hold", "--iface", "x", "--addr", "198.18.1.3", "--extra-addr", "198.18.1.10", "--to", "198.18.1.2:7"];
        let cli = Cli::try_parse_from(hold.iter().copied().chain(["--to", "198.18.1.4:7011"])).expect("hold parses");
        match cli.cmd {
            Cmd::Hold { dp, to, .. } => {
                assert_eq!(to.len(), 2);
                assert_eq!(dp.extra_addr, vec![Ipv4Addr::new(198, 18, 1, 10)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["plex", "hold", "--iface", "x", "--addr", "198.18.1.3"]).is_err(), "--to is required");
        let pp = ["plex", "pingpong", "--iface", "x", "--addr", "198.18.1.3", "--to", "198.18.1.2:7", "--conns", "32"];
        assert!(matches!(Cli::try_parse_from(pp).expect("parses").cmd, Cmd::Pingpong { conns: 32, .. }));
    }

    #[test]
    fn limit_options() {
        let cli = Cli::try_parse_from(["plex", "http", "--iface", "x", "--addr", "198.18.0.11"]).unwrap();
        let Cmd::Http { dp, app: apps::servers::HttpArgs { header_timeout, idle_timeout, .. } } = cli.cmd else { panic!() };
        assert_eq!(dp.limits, Limits::default(), "the defaults of clap and of Default agree");
        assert_eq!((header_timeout, idle_timeout), (60, 75));
        let cli = Cli::try_parse_from([
            "plex", "http", "--iface", "x", "--addr", "198.18.0.11", "--max-conns", "1000", "--mem-budget", "64M",
            "--icmp-rate", "0", "--header-timeout", "5", "--idle-timeout", "7",
        ])
        .unwrap();
        let Cmd::Http { dp, app: apps::servers::HttpArgs { header_timeout, idle_timeout, .. } } = cli.cmd else { panic!() };
        assert_eq!((dp.limits.max_conns, dp.limits.mem_budget, dp.limits.icmp_rate), (1000, 64 << 20, 0));
        assert_eq!((header_timeout, idle_timeout), (5, 7));
        let mut cfg = stack::iface::StackConfig::new(stack::wire::MacAddr([2, 0, 0, 0, 0, 1]));
        dp.limits.apply(&mut cfg);
        assert_eq!((cfg.max_connections, cfg.mem_budget), (1000, 64 << 20));
        assert_eq!(cfg.icmp_error_limit.per_sec, 0, "unlimited");
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("12345"), Ok(12345));
        assert!(parse_size("4T").is_err() && parse_size("").is_err());
    }

    #[test]
    fn cluster_commands_parse() {
        assert!(Cli::try_parse_from(["plex", "run", "--stack", "s1", "echo"]).is_ok());
        assert!(Cli::try_parse_from(["plex", "run", "--stack", "s1", "--bind", "198.18.0.130", "http", "--size", "10"]).is_ok());
        assert!(Cli::try_parse_from(["plex", "run", "echo"]).unwrap_err().to_string().contains("--stack"));
        assert!(Cli::try_parse_from(["plex", "ctl", "show", "dvipas"]).is_ok());
        assert!(Cli::try_parse_from(["plex", "ctl", "dvipa", "activate", "198.18.0.130", "--stack", "s2"]).is_ok());
        assert!(Cli::try_parse_from(["plex", "ctl", "dvipa", "delete", "nope"]).unwrap_err().to_string().contains("nope"));
        assert!(Cli::try_parse_from(["plex", "ctl", "show", "routes"]).is_err());
    }

    #[test]
    fn run_and_direct_mode_parse_a_server_command_alike() {
        let Cmd::Run(run) = Cli::try_parse_from(["plex", "run", "--stack", "s1", "http", "--size", "5"]).unwrap().cmd else { panic!() };
        let Cmd::Http { app, .. } = Cli::try_parse_from(["plex", "http", "--iface", "x", "--addr", "198.18.0.11", "--size", "5"]).unwrap().cmd
        else {
            panic!()
        };
        assert_eq!(run.app, apps::servers::ServerCmd::Http(app.clone()));
        assert_eq!((app.port, app.size, app.header_timeout, app.idle_timeout), (80, 5, 60, 75));
        let Cmd::Run(run) = Cli::try_parse_from(["plex", "run", "--stack", "s1", "sink"]).unwrap().cmd else { panic!() };
        let Cmd::Sink { app, .. } = Cli::try_parse_from(["plex", "sink", "--iface", "x", "--addr", "198.18.0.11"]).unwrap().cmd else { panic!() };
        assert_eq!(run.app, apps::servers::ServerCmd::Sink(app));
        let Cmd::Run(run) = Cli::try_parse_from(["plex", "run", "--stack", "s1", "echo", "--port", "9"]).unwrap().cmd else { panic!() };
        let Cmd::Echo { app, .. } = Cli::try_parse_from(["plex", "echo", "--iface", "x", "--addr", "198.18.0.11", "--port", "9"]).unwrap().cmd
        else {
            panic!()
        };
        assert_eq!(run.app, apps::servers::ServerCmd::Echo(app));
    }

    #[test]
    fn run_names_a_stack_the_config_lacks() {
        let Cmd::Run(args) = Cli::try_parse_from(["plex", "run", "--stack", "s9", "echo"]).unwrap().cmd else { panic!() };
        let e = cluster_cmd::run(args).unwrap_err();
        assert!(e.contains("\"s9\"") && e.contains("s1, s2, s3"), "{e}");
    }
}
