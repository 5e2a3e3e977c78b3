//! Setting up the data path for a subcommand: attach the steering program, open one AF_XDP
//! socket per queue, build one stack shard per queue, run one pinned poll thread per queue,
//! stop on SIGINT/SIGTERM, print counters.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use poll_loop::tap::{FaultConfig, FrameTap};
use poll_loop::runner::{App, Runner};
use poll_loop::xdp::Steering;
use poll_loop::xsk::{Xsk, XskConfig};
use stack::iface::{Stack, StackConfig};
use stack::time::Duration;
use stack::wire::MacAddr;

use crate::DataPath;

fn read_sys(iface: &str, what: &str) -> Result<String, String> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}"))
        .map(|s| s.trim().to_string())
        .map_err(|_| format!("no such interface: {iface:?} (check `ip link` in this network namespace)"))
}

struct Setup {
    steering: Steering,
    runners: Vec<Runner>,
    stop: Arc<AtomicBool>,
}

/// Join a plex cluster as this stack (`plex run`).
#[derive(Debug, Clone)]
pub struct ClusterJoin {
    pub cfg: Arc<coupling::ClusterConfig>,
    pub stack: String,
}

fn setup(dp: &DataPath, queues: u32) -> Result<Setup, String> {
    setup_in(dp, queues, None)
}

fn setup_in(dp: &DataPath, queues: u32, cluster: Option<&ClusterJoin>) -> Result<Setup, String> {
    let mac: MacAddr = read_sys(&dp.iface, "address")?.parse().map_err(|e| format!("{}: {e}", dp.iface))?;
    let mtu: usize = read_sys(&dp.iface, "mtu")?.parse().unwrap_or(1500);
    if mtu > 3000 {
        return Err(format!("{} has MTU {mtu}: plex's 4 KiB UMEM frames carry at most 3000 (ip link set {} mtu 1500)", dp.iface, dp.iface));
    }
    if queues == 0 {
        return Err("--queues must be at least 1".into());
    }
    let (addr, prefix) = dp.addr;
    let clock = poll_loop::clock::Clock::default();
    // A cluster member joins before it touches the interface (a duplicate is refused here).
    let mut member = match cluster {
        None => None,
        Some(j) => {
            let ident = coupling::node::Identity {
                pid: std::process::id(),
                mac: mac.0,
                ifindex: poll_loop::xdp::ifindex(&dp.iface).map_err(|e| e.to_string())? as u32,
            };
            Some(poll_loop::cluster::ClusterMember::join(j.cfg.clone(), &j.stack, ident, clock)?)
        }
    };
    let steering = Steering::attach(&dp.iface, dp.xdp_mode).map_err(|e| e.to_string())?;
    steering.add_home(addr, false)?;
    for extra in &dp.extra_addr {
        steering.add_home(*extra, false)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("installing signal handlers: {e}"))?;
    }
    let faults = FaultConfig {
        seed: dp.seed,
        drop: dp.drop,
        duplicate: dp.duplicate,
        corrupt: dp.corrupt,
        reorder: dp.reorder,
        reorder_delay: Duration::from_micros(dp.reorder_us),
        delay: Duration::ZERO,
    };
    for (name, p) in [("--drop", dp.drop), ("--duplicate", dp.duplicate), ("--corrupt", dp.corrupt), ("--reorder", dp.reorder)] {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("{name} {p} is not a probability between 0 and 1"));
        }
    }
    let mut runners = Vec::new();
    for q in 0..queues {
        let xsk = Xsk::open(&XskConfig { ifname: dp.iface.clone(), queue: q, frames: dp.frames, ..XskConfig::default() })
            .map_err(|e| e.to_string())?;
        steering.register_xsk(q, xsk.fd()).map_err(|e| e.to_string())?;
        let mut cfg = StackConfig::new(mac);
        cfg.mtu = mtu;
        cfg.gateway = dp.gateway;
        cfg.seed = dp.seed.wrapping_mul(1000).wrapping_add(q as u64) ^ std::process::id() as u64;
        cfg.tcp.congestion = dp.cc;
        cfg.tcp.nodelay = dp.nodelay;
        cfg.tcp.mss = (mtu - 40) as u16;
        dp.limits.apply(&mut cfg);
        let (mut stack, member) = match member.take() {
            None => (Stack::new(cfg), None),
            Some((m, mut handle)) => {
                handle.set_steering(steering.home_map()?);
                (Stack::with_cluster(cfg, Box::new(handle)), Some(m))
            }
        };
        stack.add_address(addr, prefix, false);
        // Tell the segment where the address lives now.
        stack.announce(addr);
        for extra in &dp.extra_addr {
            stack.add_address(*extra, prefix, false);
            stack.announce(*extra);
        }
        let pcap = dp.pcap.as_ref().map(|p| if q == 0 { p.clone() } else { format!("{p}.{q}") });
        let tap = FrameTap::new(Some(faults.clone()), pcap.as_deref()).map_err(|e| format!("opening the capture file: {e}"))?;
        let mut runner = Runner::new(xsk, stack, tap, dp.poll, stop.clone()).with_clock(clock);
        if let Some(m) = member {
            runner = runner.with_cluster(m);
        }
        runners.push(runner);
    }
    Ok(Setup { steering, runners, stop })
}

/// Run `make(queue)` on every queue until stopped.
pub fn serve<A: App + Send + 'static>(dp: &DataPath, make: impl Fn(u32) -> A) -> Result<(), String> {
    let s = setup(dp, dp.queues)?;
    let apps: Vec<A> = (0..dp.queues).map(&make).collect();
    eprintln!(
        "plex: {} on {} ({} mode, {} queue{}, {:?} polling)",
        dp.addr.0,
        dp.iface,
        s.steering.mode().name(),
        dp.queues,
        if dp.queues == 1 { "" } else { "s" },
        dp.poll
    );
    run(dp, s, apps)
}

/// Run `app` as a member of a cluster (one queue).
pub fn serve_in_cluster<A: App + Send + 'static>(dp: &DataPath, join: &ClusterJoin, app: A) -> Result<(), String> {
    let s = setup_in(dp, 1, Some(join))?;
    eprintln!("plex: stack {} of cluster {}: {} on {} ({} mode, {:?} polling)", join.stack, join.cfg.name, dp.addr.0, dp.iface, s.steering.mode().name(), dp.poll);
    run(dp, s, vec![app])
}

/// Run the blocking API's bridge on one queue's poll thread and hand `main` the application
/// side ([`poll_loop::api::Net`]); returns when `main` does or the process is interrupted.
pub fn blocking(dp: &DataPath, main: impl FnOnce(poll_loop::api::Net) + Send + 'static) -> Result<(), String> {
    if dp.queues != 1 {
        return Err("the blocking API runs on one queue: drop --queues".into());
    }
    let mut s = setup(dp, 1)?;
    let waker = Arc::new(poll_loop::xsk::Waker::new().map_err(|e| format!("creating the wake-up eventfd: {e}"))?);
    for r in &mut s.runners {
        r.set_waker(waker.clone());
    }
    let (net, bridge) = poll_loop::api::bridge(Some(waker));
    eprintln!("plex: {} on {} (blocking API, {:?} polling)", dp.addr.0, dp.iface, dp.poll);
    let stop = s.stop.clone();
    std::thread::Builder::new()
        .name("plex-app".into())
        .spawn(move || {
            main(net);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
        .map_err(|e| format!("spawning the application thread: {e}"))?;
    run(dp, s, vec![bridge])
}

/// Run a client application on one queue (replies to a connection must come back to the
/// shard that opened it, which only a single queue guarantees).
pub fn client<A: App + Send + 'static>(dp: &DataPath, app: A) -> Result<(), String> {
    if dp.queues != 1 {
        return Err("client commands (source, connect) run on one queue: drop --queues".into());
    }
    let s = setup(dp, 1)?;
    run(dp, s, vec![app])
}

fn run<A: App + Send + 'static>(dp: &DataPath, s: Setup, apps: Vec<A>) -> Result<(), String> {
    let Setup { steering, runners, stop } = s;
    let mut handles = Vec::new();
    for (i, (mut runner, mut app)) in runners.into_iter().zip(apps).enumerate() {
        let core = dp.cores.get(i).copied();
        let h = std::thread::Builder::new()
            .name(format!("plex-poll-{i}"))
            .spawn(move || {
                Runner::pin(core);
                let result = runner.run(&mut app);
                (runner, result)
            })
            .map_err(|e| format!("spawning poll thread {i}: {e}"))?;
        handles.push(h);
    }
    let mut runners = Vec::new();
    // The first application error (after every poll thread has torn down).
    let mut failed = None;
    for h in handles {
        match h.join() {
            Ok((r, result)) => {
                runners.push(r);
                if let Err(e) = result {
                    failed.get_or_insert(e);
                }
            }
            Err(_) => return Err("a poll thread panicked".into()),
        }
        // One shard finishing (a client) ends the others too.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if dp.stats {
        let st = steering.stats();
        eprintln!(
            "xdp: ip_redirected {} arp_redirected {} passed {} redirect_failed {}",
            st.ip_redirected, st.arp_redirected, st.passed, st.redirect_failed
        );
        for (q, r) in runners.iter().enumerate() {
            let x = r.xsk().stats();
            eprintln!(
                "queue {q}: iterations {} sleeps {} rx {} tx {} kicks {} (budget {}) no_frame {} unforwarded {} | device dropped {} reordered {} duplicated {} corrupted {}",
                r.stats().iterations, r.stats().sleeps, x.rx_frames, x.tx_frames, x.tx_kicks, r.xsk().tx_budget(), x.tx_no_frame, r.stats().unforwarded,
                r.tap().stats.dropped, r.tap().stats.delayed, r.tap().stats.duplicated, r.tap().stats.corrupted
            );
            if let Some(e) = r.cluster().map(|m| m.events()) {
                eprintln!(
                    "queue {q} cluster events: listeners opened {} closed {}, connections opened {} closed {} moved {}, ports released {}",
                    e.listeners_opened, e.listeners_closed, e.connections_opened, e.connections_closed, e.connections_moved, e.ports_released
                );
            }
            let c = r.stack().counters();
            let is_drop = |k: &str| stack::iface::DropReason::ALL.iter().any(|d| d.name() == k);
            let traffic: Vec<String> =
                c.iter().filter(|(k, v)| *v > 0 && !is_drop(k)).map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!("queue {q} stack: {}", traffic.join(" "));
            let drops: Vec<String> = stack::iface::DropReason::ALL
                .iter()
                .filter(|d| c.dropped(**d) > 0)
                .map(|d| format!("{}={}", d.name(), c.dropped(*d)))
                .collect();
            eprintln!("queue {q} drops: total={} {}", c.total_drops(), drops.join(" "));
            let lc: Vec<String> = r.stack().listener_counters().iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!(
                "queue {q} listeners: {} | tcp_sockets={} buffer_bytes={}",
                lc.join(" "),
                r.stack().tcp_socket_count(),
                r.stack().buffer_memory()
            );
            match r.xsk().kernel_stats() {
                Ok(k) => {
                    let kc: Vec<String> = k.iter().map(|(n, v)| format!("{n}={v}")).collect();
                    eprintln!("queue {q} xdp_statistics: {}", kc.join(" "));
                }
                Err(e) => eprintln!("queue {q} xdp_statistics: unavailable ({e})"),
            }
        }
    }
    drop(steering);
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
