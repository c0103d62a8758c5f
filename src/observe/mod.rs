//! Observing and steering every stage: Prometheus metrics, the health/metrics HTTP endpoint,
//! the admin API and its `ctl` client, the limits both HTTP listeners are served under, and log
//! redaction of addresses.

pub mod admin;
pub mod ctl;
pub mod http;
pub mod log;
pub mod metrics;
pub mod serve;

pub use log::Redactor;
pub use metrics::Metrics;
