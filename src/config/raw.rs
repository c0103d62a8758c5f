//! The configuration file as written: serde structs that mirror the TOML, with unknown keys
//! rejected. Nothing here is trusted yet; `super::validate` turns it into a typed [`super::Config`].

use serde::Deserialize;

/// A duration as operators write it: integer seconds or a string such as `"90s"`, `"5m"`, `"3d"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

/// A size: integer bytes or a string such as `"25MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub hostname: Option<String>,
    pub max_message_size: Option<RawSize>,
    pub max_recipients: Option<u64>,
    pub max_connections: Option<u64>,
    pub command_timeout: Option<RawDuration>,
    pub max_line_length: Option<u64>,
    pub max_connections_per_source: Option<u64>,
    pub reserved_connections: Option<u64>,
    pub unauthenticated_timeout: Option<RawDuration>,
    pub max_data_memory: Option<RawSize>,
    pub tls: Option<RawServerTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    pub networks: Option<Vec<String>>,
    pub auth_failures_per_source: Option<String>,
    pub auth_failures_total: Option<String>,
    pub auth_ban: Option<RawDuration>,
    #[serde(default)]
    pub users: Vec<RawUser>,
    pub users_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivacy {
    pub mode: Option<String>,
    pub max_visible_recipients: Option<u64>,
    pub trusted_domains: Option<Vec<String>>,
    pub body_check: Option<String>,
    pub hold_fanout_above: Option<u64>,
    pub canary: Option<u64>,
    pub canary_recipients: Option<Vec<String>>,
    pub hold_timeout: Option<RawDuration>,
    pub hold_timeout_action: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    pub dir: Option<String>,
    pub max_queue_time: Option<RawDuration>,
    pub retry_initial: Option<RawDuration>,
    pub retry_max: Option<RawDuration>,
    pub upstream_cool_off: Option<RawDuration>,
    pub bounce: Option<bool>,
    pub max_bytes: Option<RawSize>,
    pub drain_timeout: Option<RawDuration>,
    pub handoff_upstream: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tls: Option<String>,
    pub ca_file: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub max_connections: Option<u64>,
    pub timeout: Option<RawDuration>,
    pub dir: Option<String>,
    pub local: Option<bool>,
    pub messages_per_second: Option<f64>,
    pub burst: Option<u64>,
    pub recipients_per_day: Option<u64>,
    pub messages_per_day: Option<u64>,
    pub quota_reset: Option<String>,
    /// `smtp`, `dir` or `mx`; inferred from `host` / `dir` when absent.
    pub kind: Option<String>,
    pub ehlo_name: Option<String>,
    pub source_address: Option<String>,
    pub nameservers: Option<Vec<String>>,
    pub dns_timeout: Option<RawDuration>,
    pub max_connections_per_site: Option<u64>,
    /// Tests only (see `config/upstream_mx.rs`).
    pub smtp_port: Option<u16>,
    pub https_port: Option<u16>,
    pub mta_sts: Option<bool>,
    pub dnssec_resolver: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: Option<String>,
    pub domains: Option<Vec<String>>,
    pub mx_suffixes: Option<Vec<String>>,
    pub messages_per_second: Option<f64>,
    pub burst: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_deliveries_per_connection: Option<u64>,
    pub require_tls: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShaping {
    pub default_rules: Option<bool>,
    pub classify_by_mx: Option<bool>,
    pub mx_nameservers: Option<Vec<String>>,
    pub mx_timeout: Option<RawDuration>,
    /// Each rule is deserialized on its own, so one bad rule does not hide another's problems.
    #[serde(default)]
    pub rule: Vec<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<String>,
    pub class: Option<String>,
    pub enhanced: Option<String>,
    pub contains: Option<String>,
    pub regex: Option<String>,
    pub action: Option<String>,
    pub factor: Option<f64>,
    pub max_connections: Option<u64>,
    pub max_deliveries_per_connection: Option<u64>,
    pub messages_per_second: Option<f64>,
    pub duration: Option<RawDuration>,
    pub until: Option<String>,
    pub threshold: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis_url: Option<String>,
    pub replicas: Option<u64>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub show_addresses: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDkim {
    pub domain: Option<String>,
    pub selector: Option<String>,
    pub key_file: Option<String>,
    pub headers: Option<Vec<String>>,
    pub oversign: Option<Vec<String>>,
    pub subdomains: Option<bool>,
    pub sign_unchanged: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApps {
    pub require_app: Option<bool>,
    pub suppress_hard_bounces: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub name: Option<String>,
    pub logins: Option<Vec<String>>,
    pub networks: Option<Vec<String>>,
    pub senders: Option<Vec<String>>,
    pub header_senders: Option<Vec<String>>,
    pub allow_null_sender: Option<bool>,
    pub privacy: Option<RawAppPrivacy>,
    pub limits: Option<RawAppLimits>,
    pub events: Option<RawAppEvents>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppEvents {
    pub addresses: Option<String>,
    pub webhook_url: Option<String>,
    pub webhook_secret_env: Option<String>,
    pub webhook_secret_file: Option<String>,
    pub webhook_timeout: Option<RawDuration>,
    pub webhook_retry_max: Option<RawDuration>,
    pub max_file_bytes: Option<RawSize>,
    pub keep_files: Option<u64>,
    pub max_backlog_bytes: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppLimits {
    pub messages_per_second: Option<f64>,
    pub burst: Option<u64>,
    pub max_wait: Option<RawDuration>,
    pub recipients_per_day: Option<u64>,
    pub quota_reset: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppPrivacy {
    pub mode: Option<String>,
    pub max_visible_recipients: Option<u64>,
    pub trusted_domains: Option<Vec<String>>,
    pub hold_fanout_above: Option<u64>,
    pub allow_weaker: Option<bool>,
}
