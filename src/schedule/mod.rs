//! Delivery scheduling: which provider a recipient belongs to and its limits ([`provider`],
//! optionally by MX host: [`mx`]),
//! when a deferred delivery is tried again ([`retry`]), the queue that hands copies to
//! upstreams ([`queue`]) in per-provider lanes ([`lane`]) of queued messages ([`message`]),
//! sending one copy (`deliver`: render, sign, check, classify) through the upstreams in
//! failover order ([`failover`]), bounces ([`bounce`]), and traffic shaping: the per-provider
//! rate limiter ([`throttle`]) at a [`rate`], shared across replicas through Redis
//! ([`cluster`]), each upstream's own rate and daily quota ([`upstream_limits`], [`quota`]),
//! the deferral rules that slow a provider down ([`rules`]) or an upstream ESP
//! ([`esp_rules`]), and the kill switch: pauses recorded in the spool and shared through the
//! cluster's Redis ([`pause`]); a slowdown decided on one replica is applied by all through
//! the same Redis ([`shaping`]).

pub mod app_limits;
pub mod bounce;
pub mod cluster;
mod deliver;
pub mod esp_rules;
pub mod failover;
pub mod lane;
pub mod message;
pub mod mx;
pub mod pause;
pub mod provider;
pub mod queue;
pub mod quota;
pub mod rate;
pub mod retry;
pub mod routing;
pub mod rules;
pub mod shaping;
pub mod suppress;
pub mod throttle;
pub mod tracking;
pub mod upstream_limits;

pub use provider::ProviderCatalog;
pub use queue::{Scheduler, SchedulerConfig};
pub use routing::Routing;

#[cfg(test)]
mod tests;
