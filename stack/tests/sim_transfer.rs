//! The simulation matrix: bulk transfers in both directions over lossy, reordering,
//! duplicating, corrupting links, with NewReno and CUBIC, small and large buffers. Every
//! transfer must be byte-exact and finish within a bound of simulated time; at 0 % loss there
//! must be no retransmission at all. The throughput of every scenario is kept in
//! `tests/golden/throughput.txt`, so a congestion-control change shows up as a diff
//! (`PLEX_BLESS=1 cargo test --test sim_transfer` rewrites it after a deliberate change).

#![allow(clippy::unwrap_used)]

mod support;

use stack::sim::LinkConfig;
use stack::tcp::{self, Algorithm};
use stack::time::Duration;
use support::{run_transfer, seeds, Scenario};

fn base_link() -> LinkConfig {
    LinkConfig {
        delay: Duration::from_millis(1),
        bandwidth_bps: Some(100_000_000),
        queue_limit: Some(1000),
        ..LinkConfig::default()
    }
}

fn tcp_cfg(cc: Algorithm, buffer: usize) -> tcp::Config {
    tcp::Config { congestion: cc, send_buffer: buffer, recv_buffer: buffer, ..tcp::Config::default() }
}

const MIB: u64 = 1 << 20;

fn matrix() -> Vec<Scenario> {
    let mut out = Vec::new();
    for &(loss, bound_s) in &[(0.0, 5u64), (0.01, 60), (0.05, 300), (0.10, 900)] {
        for download in [false, true] {
            for cc in [Algorithm::NewReno, Algorithm::Cubic] {
                for (bname, buf) in [("small", 16 * 1024), ("large", 256 * 1024)] {
                    out.push(Scenario {
                        name: format!(
                            "loss{:02}-{}-{}-{}",
                            (loss * 100.0) as u32,
                            if download { "down" } else { "up" },
                            if cc == Algorithm::Cubic { "cubic" } else { "newreno" },
                            bname
                        ),
                        bytes: MIB,
                        download,
                        link: LinkConfig { loss, ..base_link() },
                        tcp: tcp_cfg(cc, buf),
                        deadline: Duration::from_secs(bound_s),
                    });
                }
            }
        }
    }
    let special = |name: &str, link: LinkConfig, tcp: tcp::Config| Scenario {
        name: name.to_string(),
        bytes: MIB,
        download: true,
        link,
        tcp,
        deadline: Duration::from_secs(300),
    };
    let cubic = tcp_cfg(Algorithm::Cubic, 256 * 1024);
    out.push(special(
        "reorder10",
        LinkConfig { reorder: 0.1, reorder_delay: Duration::from_millis(3), ..base_link() },
        cubic.clone(),
    ));
    out.push(special("jitter", LinkConfig { jitter: Duration::from_millis(2), ..base_link() }, cubic.clone()));
    out.push(special("duplicate05", LinkConfig { duplicate: 0.05, ..base_link() }, cubic.clone()));
    out.push(special("corrupt02", LinkConfig { corrupt: 0.02, ..base_link() }, cubic.clone()));
    out.push(special(
        "everything",
        LinkConfig {
            loss: 0.02,
            duplicate: 0.02,
            corrupt: 0.01,
            reorder: 0.05,
            reorder_delay: Duration::from_millis(2),
            jitter: Duration::from_micros(500),
            ..base_link()
        },
        cubic.clone(),
    ));
    out.push(special(
        "loss05-nosack-nots",
        LinkConfig { loss: 0.05, ..base_link() },
        tcp::Config { sack: false, timestamps: false, ..cubic.clone() },
    ));
    out.push(special("mtu576", LinkConfig { mtu: 576, ..base_link() }, tcp::Config { mss: 536, ..cubic.clone() }));
    out.push(special(
        "shallow-queue",
        LinkConfig { queue_limit: Some(20), ..base_link() },
        tcp_cfg(Algorithm::Cubic, 1 << 20),
    ));
    out.push(special(
        "shallow-queue-newreno",
        LinkConfig { queue_limit: Some(20), ..base_link() },
        tcp_cfg(Algorithm::NewReno, 1 << 20),
    ));
    out
}

#[test]
fn transfer_matrix_is_byte_exact_and_matches_golden_throughput() {
    let mut table = String::new();
    // PLEX_SIM_ONLY=part-of-a-name runs only the scenarios named so (with a pinned seed: a
    // sweep of one scenario over many seeds).
    let only = std::env::var("PLEX_SIM_ONLY").ok().filter(|_| std::env::var("PLEX_SIM_SEED").is_ok());
    for sc in matrix().into_iter().filter(|sc| only.as_deref().is_none_or(|o| sc.name.contains(o))) {
        for seed in seeds(&[1]) {
            let o = run_transfer(seed, &sc);
            let clean = sc.link.loss == 0.0
                && sc.link.duplicate == 0.0
                && sc.link.corrupt == 0.0
                && sc.link.reorder == 0.0
                && sc.link.jitter == Duration::ZERO
                && sc.link.queue_limit.unwrap_or(usize::MAX) >= 1000;
            if clean {
                assert_eq!(o.retrans_segs, 0, "{}: retransmissions on a clean link: {o:?}", sc.name);
            }
            table.push_str(&format!(
                "{:<32} {:>9.3} Mbit/s {:>6} retrans {:>4} rto {:>5} recoveries  ({:?})\n",
                sc.name,
                o.goodput_mbps(sc.bytes),
                o.retrans_segs,
                o.timeouts,
                o.fast_recoveries,
                o.finished_at
            ));
        }
    }
    print!("{table}");
    if std::env::var("PLEX_SIM_SEED").is_ok() {
        return; // a pinned seed reproduces one run; the golden table is for the default seed
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/throughput.txt");
    let bless = std::env::var("PLEX_BLESS").is_ok();
    match std::fs::read_to_string(&path) {
        Ok(golden) if !bless => {
            if golden != table {
                let diff: Vec<String> = golden
                    .lines()
                    .zip(table.lines())
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| format!("- {a}\n+ {b}"))
                    .collect();
                panic!(
                    "throughput table differs from tests/golden/throughput.txt \
                     (PLEX_BLESS=1 to accept a deliberate change):\n{}",
                    diff.join("\n")
                );
            }
        }
        _ => {
            std::fs::write(&path, &table).expect("write golden table");
            eprintln!("wrote {}", path.display());
        }
    }
}

fn heavy(seed: u64, download: bool) -> Scenario {
    let link = LinkConfig {
        loss: 0.05,
        duplicate: 0.03,
        corrupt: 0.02,
        reorder: 0.05,
        reorder_delay: Duration::from_millis(2),
        ..base_link()
    };
    Scenario {
        name: format!("heavy-{}", if download { "down" } else { "up" }),
        bytes: 512 * 1024,
        download,
        link,
        tcp: tcp_cfg(if seed.is_multiple_of(2) { Algorithm::Cubic } else { Algorithm::NewReno }, 64 * 1024),
        deadline: Duration::from_secs(600),
    }
}

#[test]
fn several_seeds_under_heavy_impairment() {
    for seed in seeds(&[11, 12, 13, 14, 15, 16]) {
        for download in [false, true] {
            run_transfer(seed, &heavy(seed, download));
        }
    }
}

/// Seeds that failed once (issue 9), each with the scenario it failed, run by default.
/// 144, 145, 208 (loss10-up-newreno-small) and 234 (heavy-up): no handshake in 60 s. In 145,
/// 208 and 234 every ARP reply (or request) of the client's resolution was lost; the cache
/// gave up and left the parked SYN's socket without a timer: silent forever. 144 lost all six
/// SYNs (five on the client's uplink, one on the server's downlink): the harness now retries
/// a connect, as an application would. 113 (corrupt02): a corrupted ARP reply's bogus MAC was
/// trusted for 60 s. 114 (everything): a frame corrupted on both hops, with cancelling deltas,
/// got past the checksum: a simulator bug. The random streams have shifted since (the
/// neighbour cache sends other ARP frames), so these seeds no longer replay those exact
/// losses; the literal-frame tests in iface/tests.rs and sim/tests.rs pin each cause.
#[test]
fn regression_seeds() {
    if std::env::var("PLEX_SIM_SEED").is_ok() {
        return; // a pinned seed runs the other tests
    }
    let m = matrix();
    for (seed, name) in [
        (113, "corrupt02"),
        (114, "everything"),
        (144, "loss10-up-newreno-small"),
        (145, "loss10-up-newreno-small"),
        (208, "loss10-up-newreno-small"),
    ] {
        let sc = m.iter().find(|s| s.name == name).expect("scenario");
        run_transfer(seed, sc);
    }
    run_transfer(234, &heavy(234, false));
}
