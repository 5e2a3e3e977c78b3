//! Clients: one connection to a server.

pub mod connect;
pub mod outbound;
pub mod source;
