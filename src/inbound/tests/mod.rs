//! Tests of the listener at two levels: scripted sessions over `tokio::io::duplex` (no
//! sockets, deterministic) and real TCP/TLS connections against `serve`.

mod abuse;
mod exact;
mod scripted;
pub(crate) mod support;
mod tcp;
