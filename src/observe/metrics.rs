//! The metric catalog (names and labels are a contract, see SPEC "Metrics").
//! Over ~500 lines because it is one list: every series the relay exports, with its help text
//! and the label values created at zero, in one place a reviewer reads against docs/metrics.md.
//!
//! One [`Metrics`] value owns its own registry (no global state), is cheap to clone, and is
//! handed to every stage. Labels never carry addresses: providers come from the catalog and
//! upstreams from the config, so cardinality is bounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `outcome`: accepted | rejected.
    pub messages_received: IntCounterVec,
    /// `action`: pass | split | bcc | reject | monitor.
    pub privacy_actions: IntCounterVec,
    /// `reason`: field | body | malformed ([`PRIVACY_BLOCKED_REASONS`]): messages refused by the
    /// privacy checks (a header field or the body would show a recipient's address to someone
    /// who must not see it, or NUL), and copies stopped by the check before sending (`field`).
    pub privacy_blocked: IntCounterVec,
    /// `provider`, `upstream`, `outcome` (delivered | deferred | failed); one per copy.
    pub deliveries: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub queue_messages: IntGaugeVec,
    pub throttle_delays: IntCounterVec,
    /// 1 while a "too fast" deferral keeps the provider slowed down or suspended.
    pub provider_slowed: IntGaugeVec,
    /// `provider`, `action` ([`SHAPING_ACTIONS`]): shaping rules that acted,
    /// counted on the replica that decided (not on the replicas that applied its decision).
    pub shaping_actions: IntCounterVec,
    pub upstream_up: IntGaugeVec,
    /// `upstream`: deliveries that waited for the upstream's own `messages_per_second`.
    pub upstream_throttle_delays: IntCounterVec,
    /// `upstream`: 1 while an ESP's "too fast" reply keeps the upstream slowed or suspended.
    pub upstream_slowed: IntGaugeVec,
    /// `upstream`, `unit` (recipients | messages): counted this quota day (cluster-wide with
    /// `[cluster]`), and the configured daily quota.
    pub upstream_quota_used: IntGaugeVec,
    pub upstream_quota_limit: IntGaugeVec,
    /// `upstream`: when its quota day ends (Unix s), or until when it is spent.
    pub upstream_quota_reset: IntGaugeVec,
    /// `provider`: copies held (deferred to the earliest reset) because every upstream's
    /// daily quota was spent or every upstream suspended.
    pub upstream_quota_holds: IntCounterVec,
    pub inbound_connections: IntGauge,
    /// `reason`: a short fixed word such as `relay_denied`, `size`, `too_many_recipients`.
    pub inbound_rejections: IntCounterVec,
    /// `login`: failed AUTH attempts, by configured login, or `unknown` for any other name (a
    /// bounded label: clients choose the names they try).
    pub auth_failures: IntCounterVec,
    pub spool_bytes: IntGauge,
    /// 1 while the spool refuses mail (`452 4.3.1`) because its last commit failed for lack of
    /// space; `/readyz` answers 503 meanwhile.
    pub spool_full: IntGauge,
    /// Spool batches found damaged or unreadable at start (kept under `corrupt/` or left in
    /// place, never deleted; see docs/operations.md).
    pub spool_corrupt_batches: IntCounter,
    /// Time from end of DATA to the `250` reply (spool write + fsync).
    pub accept_duration: Histogram,
    /// 1 while the shared Redis of `[cluster]` answers, 0 while throttles fall back to local.
    /// Not exported until [`Metrics::enable_cluster`] registers it: a relay without `[cluster]`
    /// has no Redis to be up or down, and a 0 there would read as "Redis down" on every
    /// sidecar's dashboard.
    pub cluster_up: IntGauge,
    /// `provider` (`all` for the global pause): 1 while deliveries are paused, else 0.
    pub paused: IntGaugeVec,
    /// Messages under a bulk hold (canaries sent, the rest waiting for an operator).
    pub held_messages: IntGauge,
    /// Copies waiting in held messages.
    pub held_copies: IntGauge,
    /// `action`: held | released | dropped | timeout_released | timeout_dropped.
    pub hold_actions: IntCounterVec,
    /// `listener`: metrics | admin. Open connections of the HTTP listeners.
    pub http_connections: IntGaugeVec,
    /// `listener`, `reason` (connection_limit | header_timeout | write_timeout): HTTP
    /// connections refused or closed by a limit (see `observe/serve.rs`).
    pub http_rejections: IntCounterVec,
    /// `spool.max_bytes` (0: no cap); new mail gets `452 4.3.1` while `mailveil_spool_bytes`
    /// is at it (counted as `reason="spool_max_bytes"` in `mailveil_inbound_rejections_total`).
    pub spool_max_bytes: IntGauge,
    /// Bytes of DATA the sessions hold in memory now, and the cap `server.max_data_memory`.
    pub data_memory_bytes: IntGauge,
    pub data_memory_max_bytes: IntGauge,
    /// 1 from SIGTERM until exit, while the queue drains.
    pub draining: IntGauge,
    /// `provider`: copies not yet final while draining (set at SIGTERM, updated as they go,
    /// final at the drain deadline); what the last log line reports as left.
    pub drain_remaining: IntGaugeVec,
    /// `provider`: copies forwarded to `spool.handoff_upstream` at shutdown (also counted as
    /// `delivered` for that upstream in `mailveil_deliveries_total`).
    pub handed_off: IntCounterVec,
    /// Delivered copies by what protected them in transit.
    pub delivered_tls: IntCounterVec,
    /// Messages at end of DATA by app (`[[app]]` names or `none`) and outcome.
    pub app_messages: IntCounterVec,
    /// Senders refused for an app, by app and rule (`APP_REFUSAL_REASONS`).
    pub app_sender_refusals: IntCounterVec,
    /// `app`, `unit`: an app's daily quota counted this quota day (the cluster's count with
    /// `[cluster]`), and its size.
    pub app_quota_used: IntGaugeVec,
    pub app_quota_limit: IntGaugeVec,
    /// `app`: when the app's daily quota starts again (Unix s).
    pub app_quota_reset: IntGaugeVec,
    /// `app`, `reason` (`APP_LIMIT_REASONS`): commands answered `452 4.7.1` for the app's limits.
    pub app_limited: IntCounterVec,
    /// `app`: MAIL commands that waited for the app's message rate (and then went on).
    pub app_rate_waits: IntCounterVec,
    /// `provider`: copies never sent because a recipient is on the suppression list.
    pub suppressed: IntCounterVec,
    /// Entries on the suppression list (the fleet's with `[cluster]`).
    pub suppression_entries: IntGauge,
    /// `reason` (`hard_bounce` | `operator`): entries added.
    pub suppression_added: IntCounterVec,
    /// `app`, `type`: delivery events written to the app's outbox.
    pub events: IntCounterVec,
    /// `app`, `outcome` (`ok` | `failed`): webhook POSTs of event batches.
    pub event_webhook_deliveries: IntCounterVec,
    /// `app`: events not yet acknowledged by the app's webhook.
    pub event_backlog: IntGaugeVec,
    /// `app`: events given up for the webhook (backlog over `max_backlog_bytes`).
    pub events_dropped: IntCounterVec,
    /// `app`, `outcome` (`delivered` | `deferred` | `failed` | `suppressed`): copies of the
    /// app's messages (the delivery side of `mailveil_app_messages_total`).
    pub app_deliveries: IntCounterVec,
}

/// The `reason` labels of `mailveil_privacy_blocked_total`: a header field would show a
/// private address (`field`), the shared body does (`body`), the message's bytes are refused
/// as they are (`malformed`: a NUL byte).
pub const PRIVACY_BLOCKED_REASONS: [&str; 3] = ["field", "body", "malformed"];

/// The `action` labels of `mailveil_shaping_actions_total` (`set` and `fail` are the rule
/// actions that do not slow a provider down by a factor).
pub const SHAPING_ACTIONS: [&str; 4] = ["slow", "suspend", "set", "fail"];

/// The `outcome` labels of `mailveil_app_messages_total`.
pub const APP_OUTCOMES: [&str; 2] = ["accepted", "rejected"];

/// The `reason` labels of `mailveil_app_sender_refusals_total`: the rule that refused.
pub const APP_REFUSAL_REASONS: [&str; 4] = ["no_app", "null_sender", "senders", "header_senders"];

/// The `reason` labels of `mailveil_app_limited_total`: over the message rate at MAIL, or the
/// daily recipient quota spent at RCPT.
pub const APP_LIMIT_REASONS: [&str; 2] = ["rate", "quota"];

/// The `outcome` labels of `mailveil_app_deliveries_total`.
pub const APP_DELIVERY_OUTCOMES: [&str; 4] = ["delivered", "deferred", "failed", "suppressed"];

/// The `action` labels of `mailveil_hold_actions_total`.
pub const HOLD_ACTIONS: [&str; 5] = [
    "held",
    "released",
    "dropped",
    "timeout_released",
    "timeout_dropped",
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let latency_buckets = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];
        let delivery_duration = HistogramVec::new(
            HistogramOpts::new(
                "mailveil_delivery_duration_seconds",
                "Time to hand one copy to the upstream.",
            )
            .buckets(latency_buckets.clone()),
            &["provider"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(delivery_duration.clone()))
            .expect("unique metric");
        let accept_duration = Histogram::with_opts(
            HistogramOpts::new(
                "mailveil_accept_duration_seconds",
                "End of DATA to the 250 reply, fsync included.",
            )
            .buckets(latency_buckets),
        )
        .expect("valid metric");
        registry
            .register(Box::new(accept_duration.clone()))
            .expect("unique metric");
        // CPU, memory, open file descriptors and start time of this process (`process_*`),
        // with a CPU counter in fractions of a second (see `observe/process.rs`).
        registry
            .register(Box::new(super::process::ProcessMetrics::for_self()))
            .expect("unique metric");
        Metrics {
            messages_received: counter(
                "mailveil_messages_received_total",
                "Messages at end of DATA, by outcome.",
                &["outcome"],
            ),
            privacy_actions: counter(
                "mailveil_privacy_actions_total",
                "Privacy policy decisions, by action.",
                &["action"],
            ),
            privacy_blocked: counter(
                "mailveil_privacy_blocked_total",
                "Messages refused by the privacy checks, by reason.",
                &["reason"],
            ),
            deliveries: counter(
                "mailveil_deliveries_total",
                "Delivery attempts of one copy, by provider, upstream and outcome.",
                &["provider", "upstream", "outcome"],
            ),
            delivery_duration,
            queue_messages: gauge_vec(
                "mailveil_queue_messages",
                "Deliveries waiting in the queue, by provider.",
                &["provider"],
            ),
            throttle_delays: counter(
                "mailveil_throttle_delays_total",
                "Deliveries delayed by a provider throttle.",
                &["provider"],
            ),
            provider_slowed: gauge_vec(
                "mailveil_provider_slowed",
                "1 while a deferral rule keeps the provider slowed down or suspended, else 0.",
                &["provider"],
            ),
            shaping_actions: counter(
                "mailveil_shaping_actions_total",
                "Shaping rule actions decided on this replica, by provider and action.",
                &["provider", "action"],
            ),
            upstream_up: gauge_vec(
                "mailveil_upstream_up",
                "1 when the upstream is usable, 0 while it cools off.",
                &["upstream"],
            ),
            upstream_throttle_delays: counter(
                "mailveil_upstream_throttle_delays_total",
                "Deliveries delayed by an upstream's own rate limit.",
                &["upstream"],
            ),
            upstream_slowed: gauge_vec(
                "mailveil_upstream_slowed",
                "1 while an ESP reply keeps the upstream slowed down or suspended, else 0.",
                &["upstream"],
            ),
            upstream_quota_used: gauge_vec(
                "mailveil_upstream_quota_used",
                "Recipients or messages counted against the upstream's daily quota this quota day.",
                &["upstream", "unit"],
            ),
            upstream_quota_limit: gauge_vec(
                "mailveil_upstream_quota_limit",
                "The upstream's configured daily quota (recipients_per_day, messages_per_day).",
                &["upstream", "unit"],
            ),
            upstream_quota_reset: gauge_vec(
                "mailveil_upstream_quota_reset_timestamp_seconds",
                "When the upstream's quota day ends (Unix time), or until when its quota is spent.",
                &["upstream"],
            ),
            upstream_quota_holds: counter(
                "mailveil_upstream_quota_holds_total",
                "Copies held until a reset because every upstream's quota was spent, by provider.",
                &["provider"],
            ),
            inbound_connections: gauge(
                "mailveil_inbound_connections",
                "Open inbound SMTP connections.",
            ),
            inbound_rejections: counter(
                "mailveil_inbound_rejections_total",
                "Inbound commands or connections refused, by reason.",
                &["reason"],
            ),
            auth_failures: counter(
                "mailveil_auth_failures_total",
                "Failed AUTH attempts, by configured login (`unknown` for any other name).",
                &["login"],
            ),
            spool_bytes: gauge(
                "mailveil_spool_bytes",
                "Bytes of message data in the spool.",
            ),
            spool_full: gauge(
                "mailveil_spool_full",
                "1 while the spool refuses mail for lack of space (452 4.3.1, /readyz 503), else 0.",
            ),
            spool_corrupt_batches: {
                let c = IntCounter::new(
                    "mailveil_spool_corrupt_batches_total",
                    "Spool batches found damaged or unreadable at start (kept, never deleted).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            accept_duration,
            cluster_up: IntGauge::new(
                "mailveil_cluster_up",
                "1 while the cluster Redis answers; 0 while throttles use the local fallback.",
            )
            .expect("valid metric"),
            paused: gauge_vec(
                "mailveil_paused",
                "1 while deliveries are paused (provider=\"all\": every provider), else 0.",
                &["provider"],
            ),
            held_messages: gauge(
                "mailveil_held_messages",
                "Messages under a bulk hold, waiting for release or drop.",
            ),
            held_copies: gauge(
                "mailveil_held_copies",
                "Copies waiting in messages under a bulk hold.",
            ),
            hold_actions: counter(
                "mailveil_hold_actions_total",
                "Bulk hold events, by action.",
                &["action"],
            ),
            http_connections: gauge_vec(
                "mailveil_http_connections",
                "Open connections of the metrics and admin HTTP listeners, by listener.",
                &["listener"],
            ),
            http_rejections: counter(
                "mailveil_http_rejections_total",
                "HTTP connections refused or closed by a limit, by listener and reason.",
                &["listener", "reason"],
            ),
            spool_max_bytes: gauge(
                "mailveil_spool_max_bytes",
                "spool.max_bytes: above it new mail gets 452 4.3.1 (0: no cap).",
            ),
            data_memory_bytes: gauge(
                "mailveil_data_memory_bytes",
                "Bytes of DATA held in memory by all SMTP sessions now.",
            ),
            data_memory_max_bytes: gauge(
                "mailveil_data_memory_max_bytes",
                "server.max_data_memory: the cap on DATA held in memory at once.",
            ),
            draining: gauge(
                "mailveil_draining",
                "1 from SIGTERM until exit, while the queue drains, else 0.",
            ),
            drain_remaining: gauge_vec(
                "mailveil_drain_remaining_copies",
                "Copies not yet final while draining at shutdown, by provider.",
                &["provider"],
            ),
            handed_off: counter(
                "mailveil_handed_off_total",
                "Copies forwarded to spool.handoff_upstream at shutdown, by provider.",
                &["provider"],
            ),
            delivered_tls: counter(
                "mailveil_delivered_tls_total",
                "Delivered copies by upstream and what protected them in transit (tls: none, opportunistic, verified, mta-sts, dane, fallback = plaintext after a failed STARTTLS, local).",
                &["upstream", "tls"],
            ),
            app_messages: counter(
                "mailveil_app_messages_total",
                "Messages at end of DATA by app ([[app]] name, or none) and outcome.",
                &["app", "outcome"],
            ),
            app_sender_refusals: counter(
                "mailveil_app_sender_refusals_total",
                "Senders refused for an app (550 5.7.1), by app and rule.",
                &["app", "reason"],
            ),
            app_quota_used: gauge_vec(
                "mailveil_app_quota_used",
                "An app's daily quota counted this quota day (the cluster's count with [cluster]), by app and unit.",
                &["app", "unit"],
            ),
            app_quota_limit: gauge_vec(
                "mailveil_app_quota_limit",
                "An app's daily quota (app.limits.recipients_per_day), by app and unit.",
                &["app", "unit"],
            ),
            app_quota_reset: gauge_vec(
                "mailveil_app_quota_reset_timestamp_seconds",
                "When an app's daily quota starts again (Unix time), by app.",
                &["app"],
            ),
            app_limited: counter(
                "mailveil_app_limited_total",
                "Commands answered 452 4.7.1 for an app's limits, by app and reason (rate at MAIL, quota at RCPT).",
                &["app", "reason"],
            ),
            app_rate_waits: counter(
                "mailveil_app_rate_waits_total",
                "MAIL commands that waited for their app's message rate, by app.",
                &["app"],
            ),
            suppressed: counter(
                "mailveil_suppressed_total",
                "Copies never sent because their recipient is on the suppression list, by provider.",
                &["provider"],
            ),
            suppression_entries: gauge(
                "mailveil_suppression_entries",
                "Entries on the suppression list (the fleet's with [cluster]).",
            ),
            suppression_added: counter(
                "mailveil_suppression_added_total",
                "Entries added to the suppression list, by reason (hard_bounce, operator).",
                &["reason"],
            ),
            events: counter(
                "mailveil_events_total",
                "Delivery events written to an app's outbox, by app and type.",
                &["app", "type"],
            ),
            event_webhook_deliveries: counter(
                "mailveil_event_webhook_deliveries_total",
                "Webhook POSTs of event batches, by app and outcome (ok, failed).",
                &["app", "outcome"],
            ),
            event_backlog: gauge_vec(
                "mailveil_event_backlog",
                "Events not yet acknowledged by the app's webhook, by app.",
                &["app"],
            ),
            events_dropped: counter(
                "mailveil_events_dropped_total",
                "Events given up for the webhook because the backlog was over max_backlog_bytes, by app.",
                &["app"],
            ),
            app_deliveries: counter(
                "mailveil_app_deliveries_total",
                "Copies of an app's messages by outcome (delivered, deferred, failed, suppressed).",
                &["app", "outcome"],
            ),
            registry,
        }
    }

    /// Creates every series whose labels are known, at zero, so dashboards and alerts see them
    /// from start (a counter that appears only on its first increment hides the first event from
    /// `rate()`). Called at start and after a reload with the catalog's providers and the
    /// configured upstreams; series of removed names are left as they are.
    pub fn init_series(&self, providers: &[String], upstreams: &[String]) {
        for outcome in ["accepted", "rejected"] {
            self.messages_received.with_label_values(&[outcome]);
        }
        for action in ["pass", "split", "bcc", "reject", "monitor"] {
            self.privacy_actions.with_label_values(&[action]);
        }
        for reason in PRIVACY_BLOCKED_REASONS {
            self.privacy_blocked.with_label_values(&[reason]);
        }
        for action in HOLD_ACTIONS {
            self.hold_actions.with_label_values(&[action]);
        }
        for listener in super::serve::HTTP_LISTENERS {
            self.http_connections.with_label_values(&[listener]);
            for reason in super::serve::HTTP_REJECTION_REASONS {
                self.http_rejections.with_label_values(&[listener, reason]);
            }
        }
        self.paused.with_label_values(&["all"]);
        for reason in ["hard_bounce", "operator"] {
            self.suppression_added.with_label_values(&[reason]);
        }
        for provider in providers {
            let p = provider.as_str();
            self.paused.with_label_values(&[p]);
            self.delivery_duration.with_label_values(&[p]);
            self.queue_messages.with_label_values(&[p]);
            self.throttle_delays.with_label_values(&[p]);
            self.drain_remaining.with_label_values(&[p]);
            self.handed_off.with_label_values(&[p]);
            self.provider_slowed.with_label_values(&[p]);
            for action in SHAPING_ACTIONS {
                self.shaping_actions.with_label_values(&[p, action]);
            }
            self.upstream_quota_holds.with_label_values(&[p]);
            self.suppressed.with_label_values(&[p]);
            for upstream in upstreams {
                for outcome in ["delivered", "deferred", "failed"] {
                    self.deliveries
                        .with_label_values(&[p, upstream.as_str(), outcome]);
                }
            }
        }
        for upstream in upstreams {
            self.upstream_up.with_label_values(&[upstream.as_str()]);
            self.upstream_throttle_delays
                .with_label_values(&[upstream.as_str()]);
            self.upstream_slowed.with_label_values(&[upstream.as_str()]);
        }
    }

    /// Exports `mailveil_cluster_up` (at 0 until Redis answers) and returns it: called once when
    /// `[cluster]` is configured (a start-only section). Calling it again is harmless.
    pub fn enable_cluster(&self) -> IntGauge {
        match self.registry.register(Box::new(self.cluster_up.clone())) {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
            Err(e) => panic!("mailveil_cluster_up cannot be registered: {e}"),
        }
        self.cluster_up.clone()
    }

    /// Creates the `app` series at zero for `apps` (the configured names) and `none`, and
    /// removes those of `gone` (apps a reload took out: no stale series forever).
    pub fn init_apps(&self, apps: &[String], gone: &[String]) {
        for app in gone.iter().filter(|g| !apps.contains(g)) {
            for outcome in APP_OUTCOMES {
                let _ = self.app_messages.remove_label_values(&[app, outcome]);
            }
            for reason in APP_REFUSAL_REASONS {
                let _ = self.app_sender_refusals.remove_label_values(&[app, reason]);
            }
            for reason in APP_LIMIT_REASONS {
                let _ = self.app_limited.remove_label_values(&[app, reason]);
            }
            let _ = self.app_rate_waits.remove_label_values(&[app]);
            for outcome in APP_DELIVERY_OUTCOMES {
                let _ = self.app_deliveries.remove_label_values(&[app, outcome]);
            }
            for unit in ["recipients", "messages"] {
                let _ = self.app_quota_used.remove_label_values(&[app, unit]);
                let _ = self.app_quota_limit.remove_label_values(&[app, unit]);
            }
            let _ = self.app_quota_reset.remove_label_values(&[app]);
        }
        let none = crate::config::NO_APP.to_string();
        for app in apps.iter().chain([&none]) {
            for outcome in APP_OUTCOMES {
                self.app_messages.with_label_values(&[app, outcome]);
            }
            for reason in APP_REFUSAL_REASONS {
                self.app_sender_refusals.with_label_values(&[app, reason]);
            }
        }
        for app in apps {
            for outcome in APP_DELIVERY_OUTCOMES {
                self.app_deliveries.with_label_values(&[app, outcome]);
            }
            for reason in APP_LIMIT_REASONS {
                self.app_limited.with_label_values(&[app, reason]);
            }
            self.app_rate_waits.with_label_values(&[app]);
        }
    }

    /// Creates `mailveil_auth_failures_total` at zero for `unknown` and each configured login
    /// (a login removed by a reload keeps its series until restart).
    pub fn init_auth_logins<'a>(&self, logins: impl IntoIterator<Item = &'a str>) {
        self.auth_failures.with_label_values(&["unknown"]);
        for login in logins {
            self.auth_failures.with_label_values(&[login]);
        }
    }

    /// Creates `mailveil_inbound_rejections_total` at zero for each reason the listener uses.
    pub fn init_rejection_reasons(&self, reasons: &[&str]) {
        for reason in reasons {
            self.inbound_rejections.with_label_values(&[reason]);
        }
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
