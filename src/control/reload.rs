//! Hot reload (SIGHUP and `POST /reload`): re-read the config file, validate it, and apply it to
//! the running relay without dropping a connection or a queued message.
//!
//! An invalid file changes nothing: every problem is logged and returned, the old config stays.
//! A valid one is applied in three places, each at a point where the change is safe:
//! - inbound limits, users and TLS certificate files: for sessions that start from now on
//!   ([`LiveInbound`]); sessions already open keep the settings they began with;
//! - privacy settings and the bulk hold: for messages whose DATA ends from now on
//!   ([`Relay::set_rules`]);
//! - retry timing, the routing (provider catalog and limits, MX classification, host name: one
//!   value the relay reads from the scheduler), upstreams and their credentials: in the
//!   scheduler ([`Scheduler::apply_config`]); deliveries in flight finish on the upstream they
//!   started on.
//! - `[[dkim]]` keys and selectors (rotation): key files are parsed while the file is validated,
//!   so an unusable key refuses the reload; the new signer is swapped in with the scheduler's
//!   settings and signs every copy sent from then on.
//!
//! Listen addresses, the spool directory, `[cluster]` and `[log]` are bound at start; a changed
//! value is reported as needing a restart and the running value is kept.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigError, ConfigProblem};
use crate::inbound::{InboundError, InboundSettings, LiveInbound};
use crate::observe::Metrics;
use crate::relay::{Relay, RelayRules};
use crate::schedule::{Routing, Scheduler, SchedulerConfig};
use crate::upstream::{Upstream, UpstreamError};

/// The `target` of this module's log lines: the path it had before the control plane got its own
/// folder, so log lines and `MAILVEIL_LOG` filters read as they did.
const LOG_TARGET: &str = "mailveil::reload";

/// Why a reload was refused; the running configuration is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the relay was started without a configuration file; nothing to reload")]
    NoFile,
    #[error("{0}")]
    Invalid(ConfigError),
    #[error("upstream {name}: {source}")]
    Upstream { name: String, source: UpstreamError },
    #[error("inbound TLS: {0}")]
    InboundTls(InboundError),
}

impl ReloadError {
    /// Every problem, one per line item, for the log and the `/reload` answer.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(e) => e.problems.iter().map(ConfigProblem::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// Keys whose new value was ignored because it only takes effect at start.
    pub restart_needed: Vec<String>,
}

/// Holds what a reload touches. One reload runs at a time.
pub struct Reloader {
    path: Option<PathBuf>,
    running: Mutex<Config>,
    inbound: LiveInbound,
    relay: Arc<Relay>,
    scheduler: Scheduler,
    metrics: Metrics,
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        running: Config,
        inbound: LiveInbound,
        relay: Arc<Relay>,
        scheduler: Scheduler,
        metrics: Metrics,
    ) -> Reloader {
        Reloader {
            path,
            running: Mutex::new(running),
            inbound,
            relay,
            scheduler,
            metrics,
        }
    }

    /// Re-reads the file and applies it, or refuses it and logs why. Blocking (file reads):
    /// call it from `spawn_blocking` in async code.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(report) => {
                tracing::info!(
                    target: LOG_TARGET,
                    restart_needed = %report.restart_needed.join(","),
                    "configuration reloaded"
                );
            }
            Err(e) => {
                let problems = e.problems();
                for p in &problems {
                    tracing::error!(target: LOG_TARGET, problem = %p, "reload refused");
                }
                tracing::error!(
                    target: LOG_TARGET,
                    problems = problems.len(),
                    "configuration reload refused; the running configuration stays"
                );
            }
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let mut next = Config::load(path).map_err(ReloadError::Invalid)?;
        next.log_warnings();
        // Build everything that can fail before changing anything.
        let upstreams =
            Upstream::build_all(&next.upstreams, &next.server.hostname, &self.relay.redactor)
                .map_err(|(name, source)| ReloadError::Upstream { name, source })?;
        let mut running = self.running.lock().expect("not poisoned");
        let restart_needed = keep_start_only(&running, &mut next);
        for key in &restart_needed {
            tracing::warn!(
                target: LOG_TARGET,
                key = %key,
                "changed value needs a restart; keeping the running one"
            );
        }
        self.inbound
            .replace(InboundSettings {
                server: next.server.clone(),
                access: next.access.clone(),
                apps: next.apps.clone(),
            })
            .map_err(ReloadError::InboundTls)?;
        let upstream_names: Vec<String> = next.upstreams.iter().map(|u| u.name.clone()).collect();
        for gone in running.upstreams.iter().map(|u| &u.name) {
            if !upstream_names.contains(gone) {
                // A removed upstream must not keep showing "up" on dashboards; its counters stay.
                let _ = self
                    .metrics
                    .upstream_up
                    .remove_label_values(&[gone.as_str()]);
            }
        }
        self.relay.set_rules(relay_rules(&next));
        // Provider catalog, MX classification and host name: one value, swapped in one step
        // with the scheduler's settings, read by the relay from there.
        self.scheduler
            .apply_config(scheduler_config(&next), upstreams);
        self.metrics
            .init_series(self.scheduler.routing().catalog.names(), &upstream_names);
        self.metrics
            .init_apps(&next.apps.names(), &running.apps.names());
        self.metrics.init_auth_logins(next.access.logins());
        *running = next;
        Ok(ReloadReport { restart_needed })
    }
}

/// The relay's sections of `config`. The same mapping at start (`crate::run_with`) and on every
/// reload, so the two cannot drift apart.
pub fn relay_rules(config: &Config) -> RelayRules {
    RelayRules {
        privacy: config.privacy.clone(),
        hold: config.hold.clone(),
        spool_max_bytes: config.spool.max_bytes,
        apps: config.apps.names(),
    }
}

/// The scheduler's sections of `config`, with the routing built from them (see
/// [`relay_rules`]: used at start and on reload).
pub fn scheduler_config(config: &Config) -> SchedulerConfig<'_> {
    SchedulerConfig {
        spool: &config.spool,
        upstreams: &config.upstreams,
        routing: Routing::new(
            &config.server.hostname,
            &config.providers,
            config.shaping.mx.as_ref(),
        )
        .dividing_by_domain(
            config
                .upstreams
                .iter()
                .any(|u| matches!(u.kind, crate::config::UpstreamKind::Mx(_))),
        ),
        shaping: &config.shaping,
        dkim: &config.dkim,
        privacy: &config.privacy,
        hold: config.hold.as_ref(),
        apps: &config.apps,
    }
}

/// Copies the settings that cannot change at runtime from `running` into `next`; returns the
/// key of each one that differed.
fn keep_start_only(running: &Config, next: &mut Config) -> Vec<String> {
    let mut changed = Vec::new();
    if next.server.listen != running.server.listen {
        changed.push("server.listen".to_string());
        next.server.listen = running.server.listen;
    }
    if next.spool.dir != running.spool.dir {
        changed.push("spool.dir".to_string());
        next.spool.dir = running.spool.dir.clone();
    }
    if next.metrics.listen != running.metrics.listen {
        changed.push("metrics.listen".to_string());
        next.metrics.listen = running.metrics.listen;
    }
    let admin_listen = |c: &Config| c.admin.as_ref().map(|a| a.listen);
    let admin_env = |c: &Config| c.admin.as_ref().and_then(|a| a.token_env.clone());
    if admin_listen(next) != admin_listen(running) || admin_env(next) != admin_env(running) {
        changed.push("admin".to_string());
    }
    next.admin = running.admin.clone();
    // The shared limits connect once, at start: a new URL, replica count or password (a
    // rotated `password_file`) waits for a restart, and says so.
    let cluster = |c: &Config| {
        c.cluster
            .as_ref()
            .map(|c| (c.redis_url.clone(), c.replicas, c.password.clone()))
    };
    let (now, then) = (cluster(next), cluster(running));
    for (key, differs) in [
        (
            "cluster.redis_url",
            now.as_ref().map(|c| &c.0) != then.as_ref().map(|c| &c.0),
        ),
        (
            "cluster.replicas",
            now.as_ref().map(|c| c.1) != then.as_ref().map(|c| c.1),
        ),
        (
            "cluster.password",
            now.as_ref().map(|c| &c.2) != then.as_ref().map(|c| &c.2),
        ),
    ] {
        if differs {
            changed.push(key.to_string());
        }
    }
    next.cluster = running.cluster.clone();
    if next.log.format != running.log.format {
        changed.push("log.format".to_string());
    }
    if next.log.show_addresses != running.log.show_addresses {
        changed.push("log.show_addresses".to_string());
    }
    next.log = running.log.clone();
    changed
}
