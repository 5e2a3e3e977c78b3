//! Benchmark clients: latency, connection rate, idle connections.

pub mod connrate;
pub mod hold;
pub mod pingpong;
