//! Delivery scheduling: which provider a recipient belongs to ([`provider`]), when a deferred
//! delivery is tried again ([`retry`]), and the queue that hands copies to upstreams with
//! failover ([`queue`]).

pub mod bounce;
pub mod failover;
pub mod lane;
pub mod provider;
pub mod queue;
pub mod retry;

pub use provider::ProviderCatalog;
pub use queue::Scheduler;

#[cfg(test)]
mod tests;
