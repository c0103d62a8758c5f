//! Observing every stage: Prometheus metrics, the health/metrics HTTP endpoint, the limits both
//! HTTP listeners (this one and the admin API of [`crate::control`]) are served under, and log
//! redaction of addresses. Read-only towards the relay: steering it is [`crate::control`]'s.

pub mod http;
pub mod log;
pub mod metrics;
pub mod process;
pub mod serve;

pub use log::Redactor;
pub use metrics::Metrics;
