//! The queue's delivery events (`src/events/`): each copy's outcome is written to its app's
//! outbox before the spool records it (see `events/outbox.rs` for why that order).

use crate::events::Facts;

use super::Inner;
use super::outcome::Final;

impl Inner {
    /// The event of a copy's outcome (`delivered`, `deferred`, `failed`); `next_at` for a
    /// deferral.
    pub(super) fn copy_event(
        &self,
        f: &Final<'_>,
        kind: &'static str,
        code: Option<u16>,
        reply: &str,
        next_at: Option<u64>,
    ) {
        let meta = f.meta;
        self.count_app_copy(meta, kind);
        self.events.emit(
            meta.app.as_deref(),
            &meta.id,
            kind,
            Facts {
                delivery: Some(f.index),
                provider: Some(f.provider),
                upstream: Some(f.upstream).filter(|u| !u.is_empty()),
                recipients: &meta.deliveries[f.index].planned.rcpt_to,
                code,
                reply: Some(reply),
                next_attempt_at: next_at,
                attempt: Some(f.attempts),
                ..Facts::default()
            },
        );
    }

    /// `mailveil_app_deliveries_total` for a copy of an app's message (only apps still
    /// configured: the label stays bounded by the config).
    pub(super) fn count_app_copy(&self, meta: &crate::spool::MessageMeta, outcome: &str) {
        if let Some(app) = meta.app.as_deref()
            && self.events.knows(app)
        {
            self.metrics
                .app_deliveries
                .with_label_values(&[app, outcome])
                .inc();
        }
    }
}
