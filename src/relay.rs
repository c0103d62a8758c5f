//! The relay's answer to end of DATA: privacy policy, trace field, durable spool, then the
//! delivery queue. This is where a message turns into deliveries.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::config::{Config, PrivacyConfig};
use crate::inbound::{Acceptor, Transaction, Verdict};
use crate::observe::{Metrics, Redactor};
use crate::privacy::{self, Decision, PlannedDelivery};
use crate::reply::Reply;
use crate::schedule::{ProviderCatalog, Scheduler};
use crate::spool::{DeliveryRecord, MessageMeta, Spool, unix_now};

/// The reloadable part of the relay: what a message is checked and divided by. A message uses
/// the rules current when its DATA ends, from policy decision to provider lanes.
pub struct RelayRules {
    pub hostname: String,
    pub privacy: PrivacyConfig,
    pub catalog: ProviderCatalog,
}

impl RelayRules {
    pub fn from_config(config: &Config) -> RelayRules {
        RelayRules {
            hostname: config.server.hostname.clone(),
            privacy: config.privacy.clone(),
            catalog: ProviderCatalog::new(&config.providers),
        }
    }
}

/// Implements [`Acceptor`] for the inbound listener.
pub struct Relay {
    rules: RwLock<Arc<RelayRules>>,
    pub spool: Arc<Spool>,
    pub scheduler: Scheduler,
    pub metrics: Metrics,
    pub redactor: Redactor,
}

impl Relay {
    pub fn new(
        config: &Config,
        spool: Arc<Spool>,
        scheduler: Scheduler,
        metrics: Metrics,
        redactor: Redactor,
    ) -> Relay {
        Relay {
            rules: RwLock::new(Arc::new(RelayRules::from_config(config))),
            spool,
            scheduler,
            metrics,
            redactor,
        }
    }

    /// Replaces the privacy settings, hostname and provider catalog for messages whose DATA ends
    /// from now on (hot reload); messages already spooled keep the copies they were planned with.
    pub fn set_rules(&self, rules: RelayRules) {
        *self.rules.write().expect("not poisoned") = Arc::new(rules);
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<RelayRules> {
        self.rules.read().expect("not poisoned").clone()
    }
}

impl RelayRules {
    /// Divides each planned delivery by provider lane, so one slow provider never holds another
    /// provider's recipients (envelope recipients are only divided, never changed).
    fn records(&self, planned: Vec<PlannedDelivery>) -> Vec<DeliveryRecord> {
        let mut out = Vec::with_capacity(planned.len());
        for delivery in planned {
            let mut lanes: Vec<(String, Vec<String>)> = Vec::new();
            for rcpt in delivery.rcpt_to {
                let provider = self.catalog.classify(&rcpt);
                match lanes.iter_mut().find(|(p, _)| p == provider) {
                    Some((_, rcpts)) => rcpts.push(rcpt),
                    None => lanes.push((provider.to_string(), vec![rcpt])),
                }
            }
            for (provider, rcpt_to) in lanes {
                out.push(DeliveryRecord {
                    planned: PlannedDelivery {
                        rcpt_to,
                        rewrite: delivery.rewrite.clone(),
                    },
                    provider,
                });
            }
        }
        out
    }

    /// The `Received:` field. It names no recipient: one stored message serves every copy.
    fn received_field(&self, tx: &Transaction, id: &str) -> String {
        let with = match (tx.client.tls, tx.client.user.is_some()) {
            (false, false) => "ESMTP",
            (true, false) => "ESMTPS",
            (false, true) => "ESMTPA",
            (true, true) => "ESMTPSA",
        };
        let helo: String = tx
            .client
            .helo
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (mailveil) with {with} id {id};\r\n\t{date}\r\n",
            ip = tx.client.peer.ip(),
            host = self.hostname,
        )
    }
}

impl Acceptor for Relay {
    async fn accept(&self, mut tx: Transaction) -> Verdict {
        let started = Instant::now();
        let rules = self.rules();
        let plan = privacy::plan(&rules.privacy, &tx.envelope, &tx.message);
        self.metrics
            .privacy_actions
            .with_label_values(&[plan.decision.as_str()])
            .inc();
        let from = self.redactor.addr(&tx.envelope.mail_from).to_string();
        if plan.decision == Decision::Reject {
            tracing::warn!(%from, rcpts = tx.envelope.rcpt_to.len(), visible = plan.visible, "rejected: message exposes recipients");
            return Verdict::Rejected(Reply::new(550, "5.7.1", privacy::reject_text(plan.visible)));
        }
        if plan.decision == Decision::Monitor {
            tracing::warn!(%from, rcpts = tx.envelope.rcpt_to.len(), visible = plan.visible, "monitor: relaying a message that exposes recipients");
        }

        let id = Spool::new_id();
        let received = rules.received_field(&tx, &id);
        // Prepended in place: a 25 MiB message must not exist twice in memory.
        let mut message = std::mem::take(&mut tx.message);
        message.splice(0..0, received.bytes());
        let meta = MessageMeta {
            id: id.clone(),
            received_at: unix_now(),
            envelope: tx.envelope,
            decision: plan.decision,
            size: message.len() as u64,
            deliveries: rules.records(plan.deliveries),
        };
        let message = Arc::new(message);
        let stored = self.spool.store_async(&meta, message.clone()).await;
        if let Err(e) = stored {
            tracing::error!(error = %e, "cannot spool message; answering 452");
            return Verdict::Rejected(Reply::new(
                452,
                "4.3.1",
                "insufficient system storage; try again later",
            ));
        }
        self.metrics.spool_bytes.set(self.spool.bytes() as i64);
        // `mailveil_accept_duration_seconds` is observed by the listener (end of DATA to reply).
        let mut providers: Vec<&str> = meta
            .deliveries
            .iter()
            .map(|d| d.provider.as_str())
            .collect();
        providers.sort_unstable();
        providers.dedup();
        tracing::info!(queue_id = %id, %from, rcpts = meta.envelope.rcpt_to.len(), deliveries = meta.deliveries.len(),
            providers = %providers.join(","), decision = plan.decision.as_str(), visible = plan.visible, size = meta.size,
            code = 250, duration_ms = started.elapsed().as_millis() as u64, "accepted");
        self.scheduler.enqueue(meta, Some(message), &[]);
        Verdict::Accepted { queue_id: id }
    }
}
