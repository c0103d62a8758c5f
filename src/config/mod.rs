//! Typed configuration.
//!
//! The file is read in two steps: `raw` mirrors the TOML (unknown keys are errors), then
//! [`validate`](Config::from_toml) turns it into the typed [`Config`] below, collecting *every*
//! problem with its key path so an operator fixes the file in one pass. Secrets are resolved
//! here from `*_env` / `*_file` and never appear in `Debug` output.
//!
//! This file holds [`Config`], reading the file into sections and the problem types; each
//! section's typed struct and its validation live in a file of their own: `server.rs`,
//! `access.rs`, `privacy.rs` (with the bulk hold in `hold.rs`), `spool.rs`, `upstream.rs` (its limits in `upstream_limits.rs`),
//! `shaping.rs` (`[[provider]]`, `[shaping]`, `[cluster]`), `http.rs` (`[metrics]`, `[admin]`),
//! `log.rs`, `dkim.rs` and `app.rs` (`[apps]`, `[[app]]`). Shared value parsers (durations, sizes, secrets) are in `values.rs`.

mod access;
mod app;
mod dkim;
pub mod dkim_key;
mod hold;
mod http;
mod log;
mod privacy;
mod raw;
mod read;
mod rule;
mod server;
mod shaping;
mod spool;
pub mod tls;
mod upstream;
mod upstream_limits;
mod upstream_mx;
mod users;
mod values;

use std::path::Path;

pub use access::{
    AccessConfig, DEFAULT_AUTH_BAN, DEFAULT_AUTH_FAILURES_PER_SOURCE, DEFAULT_AUTH_FAILURES_TOTAL,
    User,
};
pub use app::{
    AppConfig, AppEventsConfig, AppLimitsConfig, AppsConfig, EventAddresses, MAX_APPS, NO_APP,
    SenderPattern,
};
pub use dkim::{DkimConfig, DkimKeyConfig};
pub use hold::{DEFAULT_HOLD_TIMEOUT, HoldConfig, HoldTimeoutAction};
pub use http::{
    AdminConfig, DEFAULT_ADMIN_CONNECTIONS, DEFAULT_METRICS_CONNECTIONS, MetricsConfig,
};
pub use log::{LogConfig, LogFormat};
pub use privacy::{BodyCheck, PrivacyConfig, PrivacyMode};
use read::{array, section};
pub use rule::{
    ReplyClass, ReplyPattern, RuleDuration, RuleScope, SetLimits, ShapingAction, ShapingRule,
    Threshold, WallClock, enhanced_code,
};
pub use server::{
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE, DEFAULT_MAX_DATA_MEMORY, DEFAULT_UNAUTHENTICATED_TIMEOUT,
    InboundTlsConfig, ServerConfig,
};
pub use shaping::{
    ClusterConfig, DEFAULT_REPLICAS, MxConfig, PerSecond, ProviderConfig, ShapingConfig,
};
pub use spool::{DEFAULT_DRAIN_TIMEOUT, SpoolConfig};
pub use upstream::{
    Credentials, MxTls, MxUpstreamConfig, SmtpUpstreamConfig, UpstreamConfig, UpstreamKind,
    UpstreamTls,
};
pub use upstream_limits::{DailyLimit, QuotaReset, QuotaUnit, UpstreamLimitsConfig};
pub use users::{
    Credential, MAX_CREDENTIALS_PER_LOGIN, StoredCredentials, parse_users, users_file_exposure,
};
use values::Problems;
pub use values::{FailureBudget, Secret, io_words};

/// Everything the relay needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub access: AccessConfig,
    pub privacy: PrivacyConfig,
    /// The bulk hold (`[privacy] hold_fanout_above` and friends); `None` when off.
    pub hold: Option<HoldConfig>,
    pub spool: SpoolConfig,
    /// Tried in order; at least one.
    pub upstreams: Vec<UpstreamConfig>,
    pub providers: Vec<ProviderConfig>,
    /// Deferral replies that slow a provider down.
    pub shaping: ShapingConfig,
    pub metrics: MetricsConfig,
    pub admin: Option<AdminConfig>,
    pub cluster: Option<ClusterConfig>,
    pub log: LogConfig,
    /// `[[dkim]]` signing keys, parsed (see `crate::dkim`).
    pub dkim: DkimConfig,
    /// `[apps]` and `[[app]]` (`docs/apps.md`).
    pub apps: AppsConfig,
    /// What is valid but should be fixed (a secret file readable by other users), each with
    /// its key path; logged at every start and reload ([`Config::log_warnings`]) and printed
    /// by `check-config`.
    pub warnings: Vec<ConfigProblem>,
}

/// One problem found in the configuration, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration file; the process exits with code 64 on it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration ({} problem(s))", .problems.len())]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

pub const DEFAULT_CONFIG_PATH: &str = "config/mailveil.toml";

/// How a file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `check-config --no-secrets`: the variables named by `*_env` keys are not read (they need
    /// not be set; the secrets they would give are left empty), so a file can be checked
    /// outside the environment it runs in. Everything else, secret files included, is checked.
    /// Never for a config that runs.
    pub skip_env_secrets: bool,
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it are taken as written
    /// (relative to the working directory), as operators expect from a `-c` flag.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, LoadOptions::default())
    }

    /// [`Config::load`] with options (`check-config --no-secrets`).
    pub fn load_with(path: &Path, options: LoadOptions) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![ConfigProblem {
                path: path.display().to_string(),
                message: format!("cannot read: {}", io_words(&e)),
            }],
        })?;
        Config::from_toml_with(&text, options)
    }

    /// Parses and validates TOML text, reporting every problem found.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with(text, LoadOptions::default())
    }

    /// [`Config::from_toml`] with options.
    pub fn from_toml_with(text: &str, options: LoadOptions) -> Result<Config, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            problems: vec![ConfigProblem {
                path: "(file)".into(),
                message: read::syntax_error(text, &e),
            }],
        })?;
        let mut p = Problems::new(options);
        for key in table.keys() {
            if !KNOWN_SECTIONS.contains(&key.as_str()) {
                p.push(
                    key,
                    format!(
                        "unknown section; expected one of {}",
                        KNOWN_SECTIONS.join(", ")
                    ),
                );
            }
        }
        let server = section::<raw::RawServer>(&table, "server", &mut p).unwrap_or_default();
        let access = section::<raw::RawAccess>(&table, "access", &mut p).unwrap_or_default();
        let privacy = section::<raw::RawPrivacy>(&table, "privacy", &mut p).unwrap_or_default();
        let spool = section::<raw::RawSpool>(&table, "spool", &mut p).unwrap_or_default();
        let upstreams = array::<raw::RawUpstream>(&table, "upstream", &mut p);
        let providers = array::<raw::RawProvider>(&table, "provider", &mut p);
        let metrics = section::<raw::RawMetrics>(&table, "metrics", &mut p).unwrap_or_default();
        let admin = section::<raw::RawAdmin>(&table, "admin", &mut p);
        let shaping = section::<raw::RawShaping>(&table, "shaping", &mut p);
        let cluster = section::<raw::RawCluster>(&table, "cluster", &mut p);
        let log = section::<raw::RawLog>(&table, "log", &mut p).unwrap_or_default();
        let dkim = array::<raw::RawDkim>(&table, "dkim", &mut p);
        let apps_section = section::<raw::RawApps>(&table, "apps", &mut p);
        let apps = array::<raw::RawApp>(&table, "app", &mut p);

        let hold = hold::validate(&privacy, &mut p);
        let privacy = privacy::validate_privacy(privacy, &mut p);
        let apps = app::validate_apps(apps_section, apps, &privacy, hold.as_ref(), &mut p);
        let config = Config {
            server: server::validate_server(server, &mut p),
            access: access::validate_access(access, &mut p),
            privacy,
            hold,
            upstreams: upstream::validate_upstreams(upstreams, &mut p),
            spool: spool::validate_spool(spool, &mut p),
            providers: shaping::validate_providers(providers, &mut p),
            shaping: shaping::validate_shaping(shaping, &mut p),
            metrics: http::validate_metrics(metrics, &mut p),
            admin: admin.map(|a| http::validate_admin(a, &mut p)),
            cluster: shaping::validate_cluster(cluster, &mut p),
            log: log::validate_log(log, &mut p),
            dkim: dkim::validate_dkim(dkim, &mut p),
            apps,
            warnings: Vec::new(),
        };
        let mut config = config;
        upstream_mx::keep_state_in(&mut config.upstreams, &config.spool.dir);
        check_handoff_upstream(&config, &mut p);
        check_app_networks(&config, &mut p);
        check_app_logins(&config, &mut p);
        let config = Config {
            warnings: p.take_warnings(),
            ..config
        };
        p.into_result(config)
    }

    /// Logs each warning (at start and after a reload).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!(key = %w.path, "configuration: {}", w.message);
        }
    }
}

/// An app's `networks` recognise clients; relaying without AUTH still needs `access.networks`.
/// A network no `access.networks` entry covers is a warning: its clients would get `530`.
fn check_app_networks(config: &Config, p: &mut Problems) {
    for (i, app) in config.apps.apps.iter().enumerate() {
        for (j, net) in app.networks.iter().enumerate() {
            if !config.access.networks.iter().any(|a| a.contains(net)) {
                p.warn(
                    &format!("app[{i}].networks[{j}]"),
                    format!("{net} is in no access.networks entry: its clients cannot relay without AUTH"),
                );
            }
        }
    }
}

/// An app's `logins` should be logins the relay can authenticate: an `[[access.users]]` entry or
/// a credential in `access.users_file`. One that is neither never matches: a warning (not
/// repeated when that file is already broken).
fn check_app_logins(config: &Config, p: &mut Problems) {
    if p.has_error_at("access.users_file") {
        return;
    }
    for (i, app) in config.apps.apps.iter().enumerate() {
        for (j, login) in app.logins.iter().enumerate() {
            if !config.access.has_login(login) {
                p.warn(
                    &format!("app[{i}].logins[{j}]"),
                    format!(
                        "{login:?} has no credential: add it to [[access.users]] or access.users_file (mailveil passwd)"
                    ),
                );
            }
        }
    }
}

/// `spool.handoff_upstream` names one of the `[[upstream]]` entries.
fn check_handoff_upstream(config: &Config, p: &mut Problems) {
    let Some(name) = &config.spool.handoff_upstream else {
        return;
    };
    if name.trim().is_empty() || config.upstreams.iter().any(|u| &u.name == name) {
        return;
    }
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    p.push(
        "spool.handoff_upstream",
        format!(
            "{name:?} is not the name of an [[upstream]] entry (configured: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ),
    );
}

const KNOWN_SECTIONS: &[&str] = &[
    "server", "access", "privacy", "spool", "upstream", "provider", "shaping", "metrics", "admin",
    "cluster", "log", "dkim", "apps", "app",
];

#[cfg(test)]
mod tests;
