//! Servers: listen on a port, serve every connection.

pub mod echo;
pub mod http;
pub mod sink;
