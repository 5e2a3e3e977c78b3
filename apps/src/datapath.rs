//! The `plex` command's data-path options mapped onto [`poll_loop::Plex`], which does all the
//! setting up; this file only says what the flags mean and what to print.

use std::sync::Arc;

use poll_loop::tap::FaultConfig;
use poll_loop::runner::App;
use poll_loop::{Plex, Running};
use stack::time::Duration;

use crate::DataPath;

/// Join a plex cluster as this stack (`plex run`).
#[derive(Debug, Clone)]
pub struct ClusterJoin {
    pub cfg: Arc<coupling::ClusterConfig>,
    pub stack: String,
    /// The application's name (`source_ipa`).
    pub app_name: Option<String>,
    /// The router's XDP program steers SYNs itself ([`poll_loop::Plex::syn_steering`]).
    pub syn_steering: bool,
}

/// The builder for these options.
fn plex(dp: &DataPath) -> Plex {
    let mut p = Plex::on(&dp.iface)
        .addr(dp.addr.0, dp.addr.1)
        .queues(dp.queues)
        .cores(dp.cores.clone())
        .poll(dp.poll)
        .xdp_mode(dp.xdp_mode)
        .frames(dp.frames)
        .faults(FaultConfig {
            seed: dp.seed,
            drop: dp.drop,
            duplicate: dp.duplicate,
            corrupt: dp.corrupt,
            reorder: dp.reorder,
            reorder_delay: Duration::from_micros(dp.reorder_us),
            delay: Duration::ZERO,
        });
    for extra in &dp.extra_addr {
        p = p.extra_addr(*extra);
    }
    if let Some(g) = dp.gateway {
        p = p.gateway(g);
    }
    if let Some(path) = &dp.pcap {
        p = p.pcap(path);
    }
    let (cc, nodelay, limits) = (dp.cc, dp.nodelay, dp.limits.clone());
    p.configure(move |_, cfg| {
        cfg.tcp.congestion = cc;
        cfg.tcp.nodelay = nodelay;
        limits.apply(cfg);
    })
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Run `make(queue)` on every queue until stopped.
pub fn serve<A: App + Send + 'static>(dp: &DataPath, make: impl Fn(u32) -> A) -> Result<(), String> {
    let running = plex(dp).spawn(make).map_err(|e| e.to_string())?;
    eprintln!(
        "plex: {} on {} ({} mode, {} queue{}, {:?} polling)",
        dp.addr.0,
        dp.iface,
        running.mode().name(),
        dp.queues,
        plural(dp.queues),
        dp.poll
    );
    finish(dp, running)
}

/// Run `make(queue)` on every queue as a member of a cluster.
pub fn serve_in_cluster<A: App + Send + 'static>(dp: &DataPath, join: &ClusterJoin, make: impl FnMut(u32) -> A) -> Result<(), String> {
    let mut p = plex(dp).cluster(join.cfg.clone(), &join.stack).syn_steering(join.syn_steering);
    if let Some(name) = &join.app_name {
        p = p.app_name(name);
    }
    let running = p.spawn(make).map_err(|e| e.to_string())?;
    eprintln!(
        "plex: stack {} of cluster {}: {} on {} ({} mode, {} queue{}, {:?} polling)",
        join.stack,
        join.cfg.name,
        dp.addr.0,
        dp.iface,
        running.mode().name(),
        dp.queues,
        plural(dp.queues),
        dp.poll
    );
    finish(dp, running)
}

/// Run the blocking API's bridges on the queues' poll threads (one per queue, one `Net` over
/// them) and hand `main` the application side ([`poll_loop::api::Net`]); returns when `main`
/// does or the process is interrupted.
pub fn blocking(dp: &DataPath, main: impl FnOnce(poll_loop::api::Net) + Send + 'static) -> Result<(), String> {
    let (net, running) = plex(dp).blocking().map_err(|e| e.to_string())?;
    eprintln!("plex: {} on {} (blocking API, {} queue{}, {:?} polling)", dp.addr.0, dp.iface, dp.queues, plural(dp.queues), dp.poll);
    let stopper = running.stopper();
    std::thread::Builder::new()
        .name("plex-app".into())
        .spawn(move || {
            main(net);
            stopper.stop();
        })
        .map_err(|e| format!("spawning the application thread: {e}"))?;
    finish(dp, running)
}

/// Run a client application on one queue (replies to a connection must come back to the
/// shard that opened it, which only a single queue guarantees).
pub fn client<A: App + Send + 'static>(dp: &DataPath, app: A) -> Result<(), String> {
    if dp.queues != 1 {
        return Err("client commands (source, connect) run on one queue: drop --queues".into());
    }
    let running = plex(dp).spawn_single(app).map_err(|e| e.to_string())?;
    finish(dp, running)
}

/// Wait for the poll threads; print the counters with --stats.
fn finish(dp: &DataPath, running: Running) -> Result<(), String> {
    let report = running.join().map_err(|e| e.to_string())?;
    if dp.stats {
        eprint!("{report}");
    }
    Ok(())
}
