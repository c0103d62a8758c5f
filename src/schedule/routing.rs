//! Where copies go and in whose name: the provider catalog (a recipient's lane and its limits),
//! MX classification of domains the catalog does not list (`[shaping] classify_by_mx`), and the
//! relay's host name (the `Received:` field, bounces). Built once per configuration and held in
//! the scheduler's settings: the relay reads it when a message's DATA ends, the queue when it
//! sends or bounces a copy, and a reload replaces it for both in one step.

use crate::config::Config;

use super::mx::MxClassifier;
use super::provider::ProviderCatalog;

pub struct Routing {
    pub hostname: String,
    pub catalog: ProviderCatalog,
    /// `None` unless `[shaping] classify_by_mx` is on (and a resolver could be set up).
    pub mx: Option<MxClassifier>,
}

impl Routing {
    pub fn from_config(config: &Config) -> Routing {
        Routing {
            hostname: config.server.hostname.clone(),
            catalog: ProviderCatalog::new(&config.providers),
            mx: config
                .shaping
                .mx
                .as_ref()
                .and_then(MxClassifier::from_config),
        }
    }
}
