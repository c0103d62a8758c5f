//! Where copies go and in whose name: the provider catalog (a recipient's lane and its limits),
//! MX classification of domains the catalog does not list (`[shaping] classify_by_mx`), and the
//! relay's host name (the `Received:` field, bounces). Built once per configuration and held in
//! the scheduler's settings: the relay reads it when a message's DATA ends, the queue when it
//! sends or bounces a copy, and a reload replaces it for both in one step.

use crate::config::{MxConfig, ProviderConfig};

use super::mx::MxClassifier;
use super::provider::ProviderCatalog;

pub struct Routing {
    pub hostname: String,
    pub catalog: ProviderCatalog,
    /// `None` unless `[shaping] classify_by_mx` is on (and a resolver could be set up).
    pub mx: Option<MxClassifier>,
    /// An upstream delivers to MX hosts directly: each copy carries the recipients of one
    /// domain, since different domains have different servers.
    pub by_domain: bool,
}

impl Routing {
    /// From `server.hostname`, the `[[provider]]` entries and `[shaping]`'s MX classification.
    pub fn new(hostname: &str, providers: &[ProviderConfig], mx: Option<&MxConfig>) -> Routing {
        Routing {
            hostname: hostname.to_string(),
            catalog: ProviderCatalog::new(providers),
            mx: mx.and_then(MxClassifier::from_config),
            by_domain: false,
        }
    }

    /// The same routing, dividing copies by domain when `on` (see [`Routing::by_domain`]).
    pub fn dividing_by_domain(mut self, on: bool) -> Routing {
        self.by_domain = on;
        self
    }
}
