//! The relay's answer to end of DATA: privacy policy, trace field, durable spool, then the
//! delivery queue. This is where a message turns into deliveries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::config::{HoldConfig, PrivacyConfig};
use crate::envelope::{ClientInfo, Envelope};
use crate::inbound::{Acceptor, Transaction, Verdict};
use crate::observe::log::escaped;
use crate::observe::{Metrics, Redactor};
use crate::privacy::{self, Decision, Exposure, Plan, PrivacySettings};
use crate::reply::Reply;
use crate::schedule::Scheduler;
use crate::schedule::queue::choose_canaries;
use crate::spool::{MessageMeta, Spool, unix_now};

/// The reloadable part of the relay: what a message is checked by and whether it is held. A
/// message uses the rules current when its DATA ends, with the scheduler's
/// [`Routing`](crate::schedule::Routing) of that moment (provider lanes, MX classification, the
/// host name of its `Received:` field).
pub struct RelayRules {
    pub privacy: PrivacyConfig,
    /// The bulk hold (`docs/bulk-hold.md`); `None` when off.
    pub hold: Option<HoldConfig>,
    /// `spool.max_bytes`: new mail is refused `452 4.3.1` while the spool holds this much.
    pub spool_max_bytes: Option<u64>,
    /// The configured `[[app]]` names, for `/status`. (Each message carries its own app's
    /// settings from the session: see [`Transaction::app`].)
    pub apps: Vec<String>,
}

/// Implements [`Acceptor`] for the inbound listener.
pub struct Relay {
    rules: RwLock<Arc<RelayRules>>,
    /// Messages being planned at once (one per core): the rest wait their turn, off the I/O
    /// threads.
    planning: tokio::sync::Semaphore,
    pub spool: Arc<Spool>,
    pub scheduler: Scheduler,
    pub metrics: Metrics,
    pub redactor: Redactor,
    /// Bytes of messages between the `spool.max_bytes` check and their commit, so messages
    /// ending at once cannot cross the cap together.
    storing: AtomicU64,
}

impl Relay {
    /// Takes its own rules, not the whole `Config`: they are all the relay reads of it, and what
    /// [`Relay::set_rules`] swaps on reload.
    pub fn new(
        rules: RelayRules,
        spool: Arc<Spool>,
        scheduler: Scheduler,
        metrics: Metrics,
        redactor: Redactor,
    ) -> Relay {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        metrics
            .spool_max_bytes
            .set(rules.spool_max_bytes.unwrap_or(0) as i64);
        Relay {
            rules: RwLock::new(Arc::new(rules)),
            planning: tokio::sync::Semaphore::new(cores),
            spool,
            scheduler,
            metrics,
            redactor,
            storing: AtomicU64::new(0),
        }
    }

    /// Replaces the privacy settings and the bulk hold for messages whose DATA ends from now on (hot reload); messages already spooled keep the copies they were planned with.
    pub fn set_rules(&self, rules: RelayRules) {
        self.metrics
            .spool_max_bytes
            .set(rules.spool_max_bytes.unwrap_or(0) as i64);
        *self.rules.write().expect("not poisoned") = Arc::new(rules);
    }

    /// Takes `size` bytes of room under `spool.max_bytes` for a message about to be stored;
    /// false (nothing taken) when the spool, with the messages being stored, would cross it.
    fn take_spool_room(&self, max: Option<u64>, size: u64) -> bool {
        let spooled = self.spool.bytes();
        self.storing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |storing| {
                let total = spooled.saturating_add(storing).saturating_add(size);
                max.is_none_or(|max| total <= max).then_some(storing + size)
            })
            .is_ok()
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<RelayRules> {
        self.rules.read().expect("not poisoned").clone()
    }
}

/// The relay's `Received:` field. It names no recipient: one stored message serves every
/// copy. `mailveil inspect` prepends one too, so it plans the same bytes as `run`.
pub fn received_field(client: &ClientInfo, hostname: &str, id: &str) -> String {
    let with = match (client.tls, client.user.is_some()) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
    // A domain or an address literal: nothing else (an `@` here would make every copy show
    // whatever address the client names in EHLO).
    let helo: String = client
        .helo
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'))
        .take(255)
        .collect();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {hostname} (mailveil) with {with} id {id};\r\n\t{date}\r\n",
        ip = client.peer.ip(),
    )
}

impl Acceptor for Relay {
    /// At MAIL: refused while the spool holds `spool.max_bytes` (or the declared size would
    /// take it past). Readiness is not affected: the relay is healthy, only full for now.
    fn app_limits(&self, app: &str) -> Option<Arc<crate::schedule::app_limits::AppLimits>> {
        self.scheduler.app_limits().get(app)
    }

    fn storage_full(&self, declared_size: u64) -> bool {
        let Some(max) = self.rules().spool_max_bytes else {
            return false;
        };
        let used = self
            .spool
            .bytes()
            .saturating_add(self.storing.load(Ordering::Acquire));
        used >= max || used.saturating_add(declared_size) > max
    }

    async fn accept(&self, mut tx: Transaction) -> Verdict {
        let started = Instant::now();
        let rules = self.rules();
        if let Some(app) = &tx.app
            && let Some(header) = crate::tenant::header_refusal(app, &tx.message)
        {
            self.metrics
                .app_sender_refusals
                .with_label_values(&[app.name.as_str(), "header_senders"])
                .inc();
            tracing::info!(peer = %tx.client.peer, app = %app.name, rule = "header_senders", header,
                "rejected: header sender not allowed for the app");
            return Verdict::Rejected(Reply::new(
                550,
                "5.7.1",
                format!(
                    "{header}: address not allowed for app {} (header_senders)",
                    app.name
                ),
            ));
        }
        // The app's privacy policy and bulk hold replace the global ones for its messages.
        let (privacy, hold) = match &tx.app {
            Some(app) => (&app.privacy, app.hold.as_ref()),
            None => (&rules.privacy, rules.hold.as_ref()),
        };
        let (privacy, hold) = (privacy.clone(), hold.cloned());
        let routing = self.scheduler.routing();
        let id = Spool::new_id();
        // The policy reads the exact bytes that will be delivered: our trace field first
        // (prepended in place: a 25 MiB message must not exist twice in memory).
        let received = received_field(&tx.client, &routing.hostname, &id);
        let mut message = std::mem::take(&mut tx.message);
        message.splice(0..0, received.bytes());
        let (exposure, plan, message, envelope) =
            self.plan(privacy.clone(), tx.envelope, message).await;
        self.metrics
            .privacy_actions
            .with_label_values(&[plan.decision.as_str()])
            .inc();
        let from = self.redactor.addr(&envelope.mail_from).to_string();
        if let Some(refusal) = &plan.refusal {
            self.metrics
                .privacy_blocked
                .with_label_values(&[refusal.reason.as_str()])
                .inc();
            tracing::warn!(%from, rcpts = envelope.rcpt_to.len(), visible = plan.visible, reason = refusal.reason.as_str(),
                detail = %escaped(&refusal.text), "rejected: message would show recipients' addresses");
            return Verdict::Rejected(Reply::new(550, "5.7.1", refusal.text.clone()));
        }
        if plan.decision == Decision::Monitor {
            tracing::warn!(%from, rcpts = envelope.rcpt_to.len(), visible = plan.visible, "monitor: relaying a message that exposes recipients");
        }
        if let Some(part) = &plan.body_warning {
            // The part's name quotes the client's file name.
            tracing::warn!(%from, rcpts = envelope.rcpt_to.len(), part = %escaped(part), "body check (monitor): relaying a body that shows a recipient's address");
        }

        let by_mx = match &routing.mx {
            Some(mx) => {
                let rcpts = plan.deliveries.iter().flat_map(|d| d.rcpt_to.iter());
                mx.providers(&routing.catalog, rcpts).await
            }
            None => HashMap::new(),
        };
        let mut deliveries = routing
            .catalog
            .divide(plan.deliveries, &by_mx, routing.by_domain);
        let recipients = deliveries.iter().map(|d| d.planned.rcpt_to.len()).sum();
        let hold = hold.as_ref().and_then(|hold| {
            choose_canaries(
                hold,
                &routing.catalog,
                recipients,
                plan.decision,
                &mut deliveries,
            )
        });
        let meta = MessageMeta {
            id: id.clone(),
            received_at: unix_now(),
            envelope,
            decision: plan.decision,
            size: message.len() as u64,
            deliveries,
            hold,
            privacy: Some(PrivacySettings::of(&privacy)),
            app: tx.app.as_ref().map(|a| a.name.clone()),
        };
        let size = meta.size;
        if !self.take_spool_room(rules.spool_max_bytes, size) {
            self.metrics
                .inbound_rejections
                .with_label_values(&[crate::inbound::SPOOL_MAX_BYTES_REASON])
                .inc();
            tracing::warn!(%from, size, spool_bytes = self.spool.bytes(), max_bytes = rules.spool_max_bytes,
                "refused with 452: the message would take the spool past spool.max_bytes");
            return Verdict::Rejected(Reply::new(
                452,
                "4.3.1",
                "insufficient system storage; try again later",
            ));
        }
        let message = Arc::new(message);
        let stored = self.spool.store_async(&meta, message.clone()).await;
        self.storing.fetch_sub(size, Ordering::AcqRel);
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
        self.scheduler.events().accepted(&meta);
        if let Some(hold) = &meta.hold {
            self.metrics.hold_actions.with_label_values(&["held"]).inc();
            tracing::warn!(queue_id = %id, rcpts = meta.envelope.rcpt_to.len(), canaries = hold.canaries.len(),
                held_copies = meta.deliveries.len() - hold.canaries.len(),
                "bulk send held: canaries go out now, the rest waits for `mailveil ctl release` or `drop`");
        }
        self.scheduler
            .enqueue_checked(meta, message, Arc::new(exposure));
        Verdict::Accepted { queue_id: id }
    }
}

impl Relay {
    /// Runs the privacy policy on a blocking thread, at most [`Relay::planning`] at a time:
    /// its cost grows with the message (linearly, up to `max_message_size`), and a big header
    /// must not hold up the I/O threads that greet new connections.
    async fn plan(
        &self,
        privacy: PrivacyConfig,
        envelope: Envelope,
        message: Vec<u8>,
    ) -> (Exposure, Plan, Vec<u8>, Envelope) {
        let _permit = self.planning.acquire().await.expect("never closed");
        tokio::task::spawn_blocking(move || {
            let (exposure, plan) = privacy::assess(&privacy, &envelope, &message);
            (exposure, plan, message, envelope)
        })
        .await
        .expect("the privacy policy does not panic")
    }
}
