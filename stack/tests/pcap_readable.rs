//! The simulator's capture is a pcap file that tcpdump reads (skipped, with a message, where
//! tcpdump is not installed; scripts/test.sh installs it).

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use stack::sim::LinkConfig;
use stack::tcp;
use support::{Pair, Stream};

#[test]
fn tcpdump_reads_the_simulator_capture() {
    let mut pair = Pair::new(3, &LinkConfig::default(), &tcp::Config::default());
    pair.sim.capture(true);
    let (s, c) = pair.connect();
    let mut st = Stream::new(20_000);
    let (client, server) = (pair.client, pair.server);
    assert!(pair.sim.run_until(pair.sim.now() + stack::time::Duration::from_secs(10), |sim| {
        let now = sim.now();
        st.push(now, sim.host_mut(client), c, true);
        st.pull(now, sim.host_mut(server), s);
        sim.kick();
        st.received == 20_000
    }));
    let path = std::env::temp_dir().join(format!("plex-sim-{}.pcap", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    pair.sim.write_pcap(&mut f).unwrap();
    drop(f);
    let out = match Command::new("tcpdump").args(["-nn", "-r"]).arg(&path).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tcpdump not available ({e}): skipping the reader check");
            let _ = std::fs::remove_file(&path);
            return;
        }
    };
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "tcpdump failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ARP, Request who-has 198.18.0.10"), "{text}");
    assert!(text.contains("198.18.0.1.") && text.contains("> 198.18.0.10.5001: Flags [S]"), "{text}");
    assert!(text.lines().count() > 20);
}
