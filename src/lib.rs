//! mailveil: an SMTP relay that makes it impossible for an application to show one recipient
//! another recipient's address.
//!
//! Layout, in the order a message flows through it:
//! - [`config`]: the TOML file -> a typed, validated [`config::Config`] (all problems at once).
//! - [`inbound`]: tokio ESMTP listener (smtp-proto parser, STARTTLS, AUTH, limits).
//! - [`privacy`]: pure policy over message bytes: visible recipients, decision, header rewrite.
//! - [`spool`]: the message stored once and fsync'd before `250`, with per-delivery records.
//! - [`schedule`]: delivery queue, retries with backoff, failover between upstreams.
//! - [`upstream`]: lettre SMTP client with verified TLS, or a capture directory.
//! - [`observe`]: metrics, `/metrics` `/healthz` `/readyz`, address redaction for logs.
//! - [`sink`] and [`capture`]: the capture SMTP server and its on-disk format.
//! - [`envelope`], [`reply`]: types every stage speaks.
#![forbid(unsafe_code)]

pub mod capture;
pub mod config;
pub mod envelope;
pub mod inbound;
pub mod observe;
pub mod privacy;
pub mod reply;
pub mod schedule;
pub mod sink;
pub mod spool;
pub mod upstream;
