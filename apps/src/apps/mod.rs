//! The built-in applications. Each is a run-to-completion [`App`](poll_loop::runner::App): its callbacks run on the poll
//! thread, between receiving and transmitting, with no locks and no copies beyond the socket
//! buffers.

use std::net::SocketAddrV4;

use stack::iface::{SocketHandle, Stack};
use stack::time::Instant;

/// Listen on `addr`: the servers get it from their constructor, with the unspecified address
/// (every address of the stack) unless `plex run --bind` names one (inside a VIPA range, that
/// activates it).
fn listen(now: Instant, stack: &mut Stack, addr: SocketAddrV4) -> Result<SocketHandle, String> {
    stack.tcp_listen(now, addr, 4096).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Accept everything waiting on a listener.
fn accept_all(stack: &mut Stack, l: SocketHandle, mut f: impl FnMut(SocketHandle)) {
    while let Ok(h) = stack.tcp_accept(l) {
        f(h);
    }
}

/// Connections with output still to queue (their send buffer was full): retried every turn.
#[derive(Default)]
struct Backlog(Vec<SocketHandle>);

impl Backlog {
    /// Keep `h` when `more` work remains.
    fn keep(&mut self, h: SocketHandle, more: bool) {
        if more && !self.0.contains(&h) {
            self.0.push(h);
        }
    }
    fn forget(&mut self, h: SocketHandle) {
        self.0.retain(|&x| x != h);
    }
    /// Run `work` on every waiting connection; true when there were any.
    fn retry(&mut self, mut work: impl FnMut(SocketHandle) -> bool) -> bool {
        if self.0.is_empty() {
            return false;
        }
        for h in std::mem::take(&mut self.0) {
            let more = work(h);
            self.keep(h, more);
        }
        true
    }
}

/// HdrHistogram's percentile-distribution text (the `.hgrm` format its plotters read), from
/// nanosecond values, in microseconds.
pub fn percentile_distribution(h: &hdrhistogram::Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { "inf".to_string() };
        out.push_str(&format!("{:12.3} {:2.12} {:10} {:>14}\n", v.value_iterated_to() as f64 / 1000.0, q, v.count_since_last_iteration(), inv));
    }
    out.push_str(&format!(
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    ));
    out
}

pub mod bench;
pub mod clients;
pub mod servers;

pub use bench::connrate::ConnRate;
pub use bench::hold::Hold;
pub use bench::pingpong::PingPong;
pub use clients::connect::Connect;
pub use clients::source::Source;
pub use servers::echo::echo_blocking;
