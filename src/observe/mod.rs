//! Observing every stage: Prometheus metrics, the health/metrics HTTP endpoint, and log
//! redaction of addresses.

pub mod http;
pub mod log;
pub mod metrics;

pub use log::Redactor;
pub use metrics::Metrics;
