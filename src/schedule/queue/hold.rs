//! The bulk hold: a message that fans out to more recipients than `privacy.hold_fanout_above`
//! sends its canary deliveries at once, and the rest wait here (in no lane, using no connection
//! and no memory for the message bytes) until an operator releases or drops it, or until
//! `privacy.hold_timeout` applies the configured action. See `docs/bulk-hold.md`.
//!
//! The hold itself is in the spool record ([`crate::spool::Hold`]), so it is durable before the
//! client hears `250`; the decision is an outcome line synced before it takes effect
//! ([`Spool::record_hold`](crate::spool::Spool::record_hold)), so a restart neither holds a
//! released message again nor sends a dropped one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{DEFAULT_HOLD_TIMEOUT, HoldConfig, HoldTimeoutAction};
use crate::privacy::{Decision, PlannedDelivery, Rewrite};
use crate::schedule::ProviderCatalog;
use crate::schedule::message::QueuedMessage;
use crate::spool::{DeliveryRecord, Hold, HoldState, MessageMeta, SpoolError, unix_now};

use super::{Inner, Scheduler};

/// Pending deliveries of a message, as (delivery index, due Unix second).
type Pending = Vec<(usize, u64)>;

/// Divides a message's pending deliveries into those to queue now and those to hold: a held
/// message queues only its canaries; a dropped one only its canaries (its held copies never go
/// out); a released or unheld one everything.
pub(super) fn divide(meta: &MessageMeta, pending: Pending) -> (Pending, Pending) {
    match &meta.hold {
        Some(hold) if hold.state == HoldState::Held => {
            pending.into_iter().partition(|(k, _)| hold.is_canary(*k))
        }
        Some(hold) if hold.state == HoldState::Dropped => (
            pending
                .into_iter()
                .filter(|(k, _)| hold.is_canary(*k))
                .collect(),
            Vec::new(),
        ),
        _ => (pending, Vec::new()),
    }
}

/// The held messages and the timeout that applies to them.
pub(super) struct Holds {
    timeout: RwLock<(Duration, HoldTimeoutAction)>,
    held: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    message: Arc<QueuedMessage>,
    items: Pending,
    /// Cancels the hold timeout's timer once a decision is recorded.
    timer: CancellationToken,
    timeout_at: u64,
    timeout_action: HoldTimeoutAction,
}

impl Holds {
    pub fn new(config: Option<&HoldConfig>) -> Holds {
        let holds = Holds {
            timeout: RwLock::new((DEFAULT_HOLD_TIMEOUT, HoldTimeoutAction::Drop)),
            held: Mutex::new(HashMap::new()),
        };
        holds.apply(config);
        holds
    }

    /// A reloaded timeout applies to messages held from now on (and to all after a restart).
    /// With the hold turned off, messages already held keep waiting under the last timeout.
    pub fn apply(&self, config: Option<&HoldConfig>) {
        if let Some(c) = config {
            *self.timeout.write().expect("not poisoned") = (c.timeout, c.timeout_action);
        }
    }
}

/// What an operator or the timeout decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Release,
    Drop,
}

/// A held message as `GET /held` and `mailveil ctl held` show it: counts, never the recipients'
/// addresses (the canary recipients and the full sender only on request).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldMessage {
    pub id: String,
    pub received_at: u64,
    pub age_secs: u64,
    /// The sender, redacted as in the log unless `show_addresses` was asked for.
    pub from: String,
    /// Envelope recipients of the message.
    pub recipients: usize,
    /// Deliveries (copies) of the message, canaries included.
    pub deliveries: usize,
    /// Canary deliveries, and how many of them are final (delivered or failed).
    pub canaries: usize,
    pub canaries_done: usize,
    /// Copies waiting for the release.
    pub held_copies: usize,
    /// When the hold timeout applies `timeout_action` (Unix seconds).
    pub timeout_at: u64,
    pub timeout_action: &'static str,
    /// The canaries' recipients, only with `show_addresses`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_recipients: Option<Vec<String>>,
}

/// Why a release or drop did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("no held message with id {0:?}")]
    NotHeld(String),
    #[error("cannot record the decision: {0}")]
    Spool(#[from] SpoolError),
}

impl Scheduler {
    /// Every held message, oldest first.
    pub fn held(&self, show_addresses: bool) -> Vec<HeldMessage> {
        let held = self.inner.holds.held.lock().expect("not poisoned");
        let mut list: Vec<HeldMessage> = held
            .values()
            .map(|e| self.inner.describe(e, show_addresses))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Sends the held copies of message `id`; returns what it was.
    pub async fn release(&self, id: &str) -> Result<HeldMessage, HoldError> {
        self.inner.decide(id, Verdict::Release, false).await
    }

    /// Drops the held copies of message `id`: they are never sent, and the message leaves the
    /// spool (at once, or when its last canary is final).
    pub async fn drop_held(&self, id: &str) -> Result<HeldMessage, HoldError> {
        self.inner.decide(id, Verdict::Drop, false).await
    }
}

impl Inner {
    /// Keeps `items` of `message` out of the lanes until a decision; arms the hold timeout.
    pub(super) fn hold(self: &Arc<Self>, message: &Arc<QueuedMessage>, items: Pending) {
        let (timeout, action) = *self.holds.timeout.read().expect("not poisoned");
        let id = message.meta.id.clone();
        let timeout_at = message.meta.received_at.saturating_add(timeout.as_secs());
        let timer = CancellationToken::new();
        for (index, _) in &items {
            message.set_held(*index);
        }
        self.holds.held.lock().expect("not poisoned").insert(
            id.clone(),
            Entry {
                message: message.clone(),
                items,
                timer: timer.clone(),
                timeout_at,
                timeout_action: action,
            },
        );
        self.update_hold_gauges();
        let inner = self.clone();
        let wait = Duration::from_secs(timeout_at.saturating_sub(unix_now()));
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let verdict = match action {
                        HoldTimeoutAction::Release => Verdict::Release,
                        HoldTimeoutAction::Drop => Verdict::Drop,
                    };
                    if let Err(e) = inner.decide(&id, verdict, true).await {
                        tracing::error!(queue_id = %id, error = %e, "hold timeout could not act; the message stays held");
                    }
                }
                _ = timer.cancelled() => {}
                _ = inner.shutdown.cancelled() => {}
            }
        });
    }

    fn describe(&self, e: &Entry, show_addresses: bool) -> HeldMessage {
        let meta = &e.message.meta;
        let canaries = meta.hold.as_ref().map_or(0, |h| h.canaries.len());
        let remaining = e.message.progress.lock().expect("not poisoned").remaining;
        let from = if show_addresses {
            meta.envelope.mail_from.clone()
        } else {
            self.redactor.addr(&meta.envelope.mail_from).to_string()
        };
        HeldMessage {
            id: meta.id.clone(),
            received_at: meta.received_at,
            age_secs: unix_now().saturating_sub(meta.received_at),
            from,
            recipients: meta.envelope.rcpt_to.len(),
            deliveries: meta.deliveries.len(),
            canaries,
            canaries_done: canaries.saturating_sub(remaining.saturating_sub(e.items.len())),
            held_copies: e.items.len(),
            timeout_at: e.timeout_at,
            timeout_action: e.timeout_action.as_str(),
            canary_recipients: show_addresses.then(|| {
                meta.hold
                    .iter()
                    .flat_map(|h| &h.canaries)
                    .flat_map(|k| meta.deliveries[*k].planned.rcpt_to.clone())
                    .collect()
            }),
        }
    }

    /// Held copies (waiting for a decision) by provider, for the report at shutdown.
    pub(super) fn held_by_provider(&self) -> std::collections::BTreeMap<String, u64> {
        let mut by = std::collections::BTreeMap::new();
        for e in self.holds.held.lock().expect("not poisoned").values() {
            for (k, _) in &e.items {
                *by.entry(e.message.meta.deliveries[*k].provider.clone())
                    .or_insert(0) += 1;
            }
        }
        by
    }

    /// Takes message `id` off the bulk hold without a decision (an operator deleted or
    /// bounced it): its timer ends; the caller finishes its held copies.
    pub(super) fn forget_hold(&self, id: &str) {
        let entry = self.holds.held.lock().expect("not poisoned").remove(id);
        if let Some(entry) = entry {
            entry.timer.cancel();
            self.update_hold_gauges();
        }
    }

    fn update_hold_gauges(&self) {
        let held = self.holds.held.lock().expect("not poisoned");
        self.metrics.held_messages.set(held.len() as i64);
        self.metrics
            .held_copies
            .set(held.values().map(|e| e.items.len() as i64).sum());
    }

    /// Records the verdict (synced) and carries it out. The entry leaves the map first, so two
    /// concurrent decisions (an operator and the timeout) cannot both act.
    async fn decide(
        self: &Arc<Self>,
        id: &str,
        verdict: Verdict,
        by_timeout: bool,
    ) -> Result<HeldMessage, HoldError> {
        let entry = self
            .holds
            .held
            .lock()
            .expect("not poisoned")
            .remove(id)
            .ok_or_else(|| HoldError::NotHeld(id.to_string()))?;
        let state = match verdict {
            Verdict::Release => HoldState::Released,
            Verdict::Drop => HoldState::Dropped,
        };
        let (spool, key) = (self.spool.clone(), id.to_string());
        let recorded = tokio::task::spawn_blocking(move || spool.record_hold(&key, state))
            .await
            .expect("spool write does not panic");
        if let Err(e) = recorded {
            // Not durable: acting now could be undone by a restart. It stays held.
            self.holds
                .held
                .lock()
                .expect("not poisoned")
                .insert(id.to_string(), entry);
            return Err(e.into());
        }
        entry.timer.cancel();
        let (kind, copies) = (
            if state == HoldState::Released {
                "released"
            } else {
                "dropped"
            },
            entry.items.len(),
        );
        let facts = crate::events::Facts {
            copies: Some(copies),
            ..Default::default()
        };
        self.events
            .emit(entry.message.meta.app.as_deref(), id, kind, facts);
        let summary = self.describe(&entry, false);
        self.update_hold_gauges();
        let action = match (verdict, by_timeout) {
            (Verdict::Release, false) => "released",
            (Verdict::Drop, false) => "dropped",
            (Verdict::Release, true) => "timeout_released",
            (Verdict::Drop, true) => "timeout_dropped",
        };
        self.metrics.hold_actions.with_label_values(&[action]).inc();
        tracing::warn!(queue_id = %id, action, held_copies = entry.items.len(),
            canaries_done = summary.canaries_done, "bulk hold decided");
        let message = entry.message;
        match verdict {
            Verdict::Release => {
                let now = unix_now();
                for (index, due) in entry.items {
                    self.queue_delivery(&message, index, due, now);
                }
                message.release_if_idle();
            }
            Verdict::Drop => {
                message.with_tracks(|t| {
                    for (index, _) in &entry.items {
                        t[*index].state = crate::schedule::tracking::CopyState::Dropped;
                    }
                });
                let last = {
                    let mut progress = message.progress.lock().expect("not poisoned");
                    progress.remaining -= entry.items.len();
                    progress.remaining == 0
                };
                if last {
                    self.finish(&message);
                }
            }
        }
        Ok(summary)
    }
}

/// The bulk hold of a message at its acceptance: `None` when it fans out to no more than
/// `hold_fanout_above` recipients. Otherwise picks its canary deliveries: the first `canary` recipients in
/// delivery order (a multi-recipient delivery is divided so that exactly that many go out),
/// or one extra copy per `canary_recipients` mailbox, rewritten as that mailbox's own copy
/// would be so an operator's canary never shows the real recipients either.
pub fn choose_canaries(
    config: &HoldConfig,
    catalog: &ProviderCatalog,
    recipients: usize,
    decision: Decision,
    deliveries: &mut Vec<DeliveryRecord>,
) -> Option<Hold> {
    if recipients <= config.fanout_above {
        return None;
    }
    let mut canaries = Vec::new();
    if config.canary_recipients.is_empty() {
        let mut budget = config.canary;
        let mut out = Vec::with_capacity(deliveries.len() + 1);
        for mut delivery in deliveries.drain(..) {
            if budget > 0 {
                canaries.push(out.len());
                if delivery.planned.rcpt_to.len() > budget {
                    let rest = delivery.planned.rcpt_to.split_off(budget);
                    let held = DeliveryRecord {
                        planned: PlannedDelivery {
                            rcpt_to: rest,
                            rewrite: delivery.planned.rewrite.clone(),
                        },
                        provider: delivery.provider.clone(),
                    };
                    budget = 0;
                    out.push(delivery);
                    out.push(held);
                    continue;
                }
                budget -= delivery.planned.rcpt_to.len();
            }
            out.push(delivery);
        }
        *deliveries = out;
    } else {
        for address in &config.canary_recipients {
            let rewrite = Rewrite::own_copy(decision, address);
            canaries.push(deliveries.len());
            deliveries.push(DeliveryRecord {
                planned: PlannedDelivery {
                    rcpt_to: vec![address.clone()],
                    rewrite,
                },
                provider: catalog.classify(address).to_string(),
            });
        }
    }
    Some(Hold {
        canaries,
        state: HoldState::Held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::privacy::{Decision, PlannedDelivery, Rewrite};
    use crate::spool::{DeliveryRecord, Hold};

    fn meta(state: Option<HoldState>) -> MessageMeta {
        MessageMeta {
            id: "M".into(),
            received_at: 0,
            envelope: Envelope {
                mail_from: String::new(),
                rcpt_to: vec![],
            },
            decision: Decision::Split,
            size: 0,
            deliveries: (0..4)
                .map(|k| DeliveryRecord {
                    planned: PlannedDelivery {
                        rcpt_to: vec![format!("r{k}@x.test")],
                        rewrite: Rewrite::Unchanged,
                    },
                    provider: "default".into(),
                })
                .collect(),
            hold: state.map(|state| Hold {
                canaries: vec![0, 2],
                state,
            }),
            privacy: None,
            app: None,
        }
    }

    #[test]
    fn held_messages_queue_only_canaries_and_dropped_ones_never_the_rest() {
        let pending: Pending = (0..4).map(|k| (k, 0)).collect();
        let keys = |p: &Pending| p.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        let (now, held) = divide(&meta(None), pending.clone());
        assert_eq!((keys(&now), keys(&held)), (vec![0, 1, 2, 3], vec![]));
        let (now, held) = divide(&meta(Some(HoldState::Held)), pending.clone());
        assert_eq!((keys(&now), keys(&held)), (vec![0, 2], vec![1, 3]));
        let (now, held) = divide(&meta(Some(HoldState::Released)), pending.clone());
        assert_eq!((keys(&now), keys(&held)), (vec![0, 1, 2, 3], vec![]));
        let (now, held) = divide(&meta(Some(HoldState::Dropped)), pending);
        assert_eq!((keys(&now), keys(&held)), (vec![0, 2], vec![]));
    }

    /// A hold configuration (fan-outs above 3) and the provider catalog, from a config file.
    struct Rules(HoldConfig, ProviderCatalog);

    impl Rules {
        fn hold(
            &self,
            recipients: usize,
            decision: Decision,
            deliveries: &mut Vec<DeliveryRecord>,
        ) -> Option<Hold> {
            choose_canaries(&self.0, &self.1, recipients, decision, deliveries)
        }
    }

    fn rules(extra: &str) -> Rules {
        let text = format!(
            "[privacy]\nhold_fanout_above = 3\n{extra}\n[[upstream]]\nname = \"o\"\ndir = \"./o\"\n"
        );
        let config = crate::config::Config::from_toml(&text).unwrap();
        Rules(
            config.hold.clone().unwrap(),
            ProviderCatalog::new(&config.providers),
        )
    }

    fn one_delivery(rcpts: &[&str]) -> Vec<DeliveryRecord> {
        vec![DeliveryRecord {
            planned: PlannedDelivery {
                rcpt_to: rcpts.iter().map(|r| r.to_string()).collect(),
                rewrite: Rewrite::Unchanged,
            },
            provider: "default".into(),
        }]
    }

    #[test]
    fn canaries_are_carved_out_of_a_multi_recipient_delivery() {
        let rules = rules("canary = 2");
        let mut d = one_delivery(&["a@x.test", "b@x.test", "c@x.test"]);
        assert_eq!(rules.hold(3, Decision::Pass, &mut d), None, "not above");
        let mut d = one_delivery(&["a@x.test", "b@x.test", "c@x.test", "d@x.test"]);
        let hold = rules.hold(4, Decision::Pass, &mut d).unwrap();
        assert_eq!(hold.canaries, vec![0]);
        assert_eq!(d[0].planned.rcpt_to, ["a@x.test", "b@x.test"]);
        assert_eq!(d[1].planned.rcpt_to, ["c@x.test", "d@x.test"]);
    }

    #[test]
    fn operator_canaries_are_extra_private_copies() {
        let rules = rules("canary_recipients = [\"ops@y.test\"]");
        let mut d = one_delivery(&["a@x.test", "b@x.test", "c@x.test", "d@x.test"]);
        let hold = rules.hold(4, Decision::Split, &mut d).unwrap();
        assert_eq!(hold.canaries, vec![1]);
        assert_eq!(d[1].planned.rcpt_to, ["ops@y.test"]);
        assert_eq!(
            d[1].planned.rewrite,
            Rewrite::OnlyRecipient {
                address: "ops@y.test".into(),
                display_name: None
            }
        );
        let mut d = one_delivery(&["a@x.test", "b@x.test", "c@x.test", "d@x.test"]);
        rules.hold(4, Decision::Bcc, &mut d).unwrap();
        assert_eq!(d[1].planned.rewrite, Rewrite::Undisclosed);
    }
}
