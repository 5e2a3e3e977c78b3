//! Arbitrary handoff records: restore either fails with an error or yields a connection that
//! can be driven without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stack::tcp::{Config, Connection};
use stack::time::Instant;

fuzz_target!(|data: &[u8]| {
    if let Ok((mut c, _)) = Connection::restore(data, Instant::from_secs(10), &Config::default()) {
        let mut buf = vec![0u8; 70_000];
        let _ = c.poll_transmit(Instant::from_secs(10), &mut buf);
        c.handle_timeout(Instant::from_secs(100));
        let _ = c.poll_transmit(Instant::from_secs(100), &mut buf);
    }
});
