//! Typed configuration.
//!
//! The file is read in two steps: `raw` mirrors the TOML (unknown keys are errors), then
//! [`validate`](Config::from_toml) turns it into the typed [`Config`] below, collecting *every*
//! problem with its key path so an operator fixes the file in one pass. Secrets are resolved
//! here from `*_env` / `*_file` and never appear in `Debug` output.

mod dkim;
pub mod dkim_key;
mod hold;
mod raw;
mod shaping;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;

pub use dkim::{DkimConfig, DkimKeyConfig};
pub use hold::{DEFAULT_HOLD_TIMEOUT, HoldConfig, HoldTimeoutAction};
pub use shaping::{
    ClusterConfig, DEFAULT_REPLICAS, MxConfig, ProviderConfig, ReplyPattern, ShapingAction,
    ShapingConfig, ShapingRule,
};
pub use values::{FailureBudget, Secret};
use values::{Problems, duration, size};

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
    /// What is valid but should be fixed (a secret file readable by other users), each with
    /// its key path; logged at every start and reload ([`Config::log_warnings`]) and printed
    /// by `check-config`.
    pub warnings: Vec<ConfigProblem>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Our name in the greeting, EHLO and Received fields.
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub command_timeout: Duration,
    /// Longest command line accepted (RFC 5321 minimum is 512 octets incl. CRLF).
    pub max_line_length: usize,
    /// Connections one source (an IPv4 address, an IPv6 /64) outside `access.networks` may
    /// hold until they authenticate: one address cannot take every slot.
    pub max_connections_per_source: usize,
    /// Slots outsiders that have not authenticated never get (they may hold at most
    /// `max_connections - reserved_connections`), so clients in `access.networks` always can.
    pub reserved_connections: usize,
    /// Time an outsider has, from the greeting, to authenticate (EHLO, STARTTLS handshake,
    /// AUTH); then `421 4.7.0`. A client in `access.networks` is never held to it.
    pub unauthenticated_timeout: Duration,
    pub tls: Option<InboundTlsConfig>,
}

/// Defaults of the admission limits, named so tests and docs refer to one value.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 100;
pub const DEFAULT_UNAUTHENTICATED_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_AUTH_FAILURES_PER_SOURCE: FailureBudget = FailureBudget {
    count: 20,
    period: Duration::from_secs(600),
};
pub const DEFAULT_AUTH_FAILURES_TOTAL: FailureBudget = FailureBudget {
    count: 600,
    period: Duration::from_secs(600),
};
pub const DEFAULT_AUTH_BAN: Duration = Duration::from_secs(900);

#[derive(Debug, Clone)]
pub struct InboundTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// MAIL before STARTTLS is refused with `530 5.7.0`.
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Clients in these networks may relay without AUTH.
    pub networks: Vec<IpNet>,
    pub users: Vec<User>,
    /// Failed AUTH attempts one source may make (token bucket); when it is empty the source is
    /// banned from AUTH for `auth_ban`.
    pub auth_failures_per_source: FailureBudget,
    /// Failed AUTH attempts of all sources together; when it is empty AUTH is refused until it
    /// refills (a guessing fleet spread over many addresses).
    pub auth_failures_total: FailureBudget,
    pub auth_ban: Duration,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivacyMode {
    Split,
    Bcc,
    Reject,
    Monitor,
}

/// `[privacy] body_check`: what a recipient's address in the shared body does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCheck {
    /// `550 5.7.1` naming the body part (default).
    Reject,
    /// Relayed; logged and counted.
    Monitor,
    Off,
}

#[derive(Debug, Clone)]
pub struct PrivacyConfig {
    pub mode: PrivacyMode,
    /// At most this many private addresses may be shown (in To/Cc), and only to themselves.
    pub max_visible_recipients: usize,
    /// Lower-cased domains whose addresses are not private, and whose mailboxes may see
    /// every copy (the operator's own: archives, Bcc to self).
    pub trusted_domains: Vec<String>,
    pub body_check: BodyCheck,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_queue_time: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long an upstream that failed at connection level is skipped before it is tried again.
    pub upstream_cool_off: Duration,
    /// Send an RFC 3464 bounce to a non-null sender when a delivery fails permanently.
    pub bounce: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
}

#[derive(Debug, Clone)]
pub enum UpstreamKind {
    Smtp(SmtpUpstreamConfig),
    /// Capture upstream: writes `<id>.eml` + `<id>.json` into `dir`, like `mailveil sink`.
    Dir {
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// STARTTLS is required; a server that does not offer it is never sent plaintext.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plaintext; only for loopback test peers and trusted local networks.
    None,
}

#[derive(Debug, Clone)]
pub struct SmtpUpstreamConfig {
    /// Name or IP address; the certificate is verified against it.
    pub host: String,
    pub port: u16,
    pub tls: UpstreamTls,
    /// Extra trust anchor (PEM) besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    pub credentials: Option<Credentials>,
    pub max_connections: usize,
    /// Limit for connecting and for each command/reply exchange.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// `[metrics] max_connections` when unset: Prometheus servers, a load balancer's health checks
/// and a person with curl, a few each.
pub const DEFAULT_METRICS_CONNECTIONS: usize = 64;
/// `[admin] max_connections` when unset: `mailveil ctl` and automation, one request at a time.
pub const DEFAULT_ADMIN_CONNECTIONS: usize = 16;

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// `None` disables the HTTP endpoint.
    pub listen: Option<SocketAddr>,
    /// Open connections at most; more are refused at once (see `observe/serve.rs`).
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The environment variable the token is read from (named in log lines, never its value).
    pub token_env: Option<String>,
    /// `None` when `token_env` is unset or empty: the admin API stays off.
    pub token: Option<Secret>,
    /// Open connections at most; more are refused at once (see `observe/serve.rs`).
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub show_addresses: bool,
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

impl Config {
    /// Reads and validates a config file. Relative paths inside it are taken as written
    /// (relative to the working directory), as operators expect from a `-c` flag.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![ConfigProblem {
                path: path.display().to_string(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates TOML text, reporting every problem found.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            problems: vec![ConfigProblem {
                path: "(file)".into(),
                message: e.to_string().trim().to_string(),
            }],
        })?;
        let mut p = Problems::default();
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

        let hold = hold::validate(&privacy, &mut p);
        let config = Config {
            server: validate_server(server, &mut p),
            access: validate_access(access, &mut p),
            privacy: validate_privacy(privacy, &mut p),
            hold,
            spool: validate_spool(spool, &mut p),
            upstreams: validate_upstreams(upstreams, &mut p),
            providers: shaping::validate_providers(providers, &mut p),
            shaping: shaping::validate_shaping(shaping, &mut p),
            metrics: MetricsConfig {
                listen: metrics
                    .listen
                    .and_then(|l| p.socket_addr("metrics.listen", &l)),
                max_connections: p.positive(
                    "metrics.max_connections",
                    metrics.max_connections,
                    DEFAULT_METRICS_CONNECTIONS,
                ),
            },
            admin: admin.map(|a| validate_admin(a, &mut p)),
            cluster: shaping::validate_cluster(cluster, &mut p),
            log: validate_log(log, &mut p),
            dkim: dkim::validate_dkim(dkim, &mut p),
            warnings: Vec::new(),
        };
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

const KNOWN_SECTIONS: &[&str] = &[
    "server", "access", "privacy", "spool", "upstream", "provider", "shaping", "metrics", "admin",
    "cluster", "log", "dkim",
];

/// Deserializes one `[section]`, recording a problem (with the key path) if it does not fit.
fn section<T: DeserializeOwned>(table: &toml::Table, name: &str, p: &mut Problems) -> Option<T> {
    let value = table.get(name)?;
    deserialize_at(value.clone(), name, p)
}

/// Deserializes an array of tables such as `[[upstream]]`.
fn array<T: DeserializeOwned>(table: &toml::Table, name: &str, p: &mut Problems) -> Vec<T> {
    match table.get(name) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| deserialize_at(v.clone(), &format!("{name}[{i}]"), p))
            .collect(),
        Some(_) => {
            p.push(
                name,
                format!("must be an array of tables: write [[{name}]]"),
            );
            Vec::new()
        }
    }
}

fn deserialize_at<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    p: &mut Problems,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{inner}")
            };
            p.push(&full, e.into_inner().to_string());
            None
        }
    }
}

fn validate_server(raw: raw::RawServer, p: &mut Problems) -> ServerConfig {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:2525");
    let max_connections = p.positive("server.max_connections", raw.max_connections, 1024);
    let reserved_connections = match raw.reserved_connections {
        Some(n) if n as usize > max_connections => {
            p.push(
                "server.reserved_connections",
                format!("must not exceed server.max_connections ({max_connections})"),
            );
            max_connections / 10
        }
        Some(n) => n as usize,
        None => max_connections / 10,
    };
    let unauthenticated_timeout = raw
        .unauthenticated_timeout
        .and_then(|d| duration(&d, "server.unauthenticated_timeout", p))
        .unwrap_or(DEFAULT_UNAUTHENTICATED_TIMEOUT);
    if unauthenticated_timeout.is_zero() {
        p.push(
            "server.unauthenticated_timeout",
            "must be greater than zero",
        );
    }
    ServerConfig {
        listen: p
            .socket_addr("server.listen", listen)
            .unwrap_or_else(|| ([127, 0, 0, 1], 2525).into()),
        hostname: match raw.hostname {
            Some(h) if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                p.push("server.hostname", "must be a host name without spaces");
                "mailveil.local".into()
            }
            Some(h) => h,
            None => "mailveil.local".into(),
        },
        max_message_size: raw
            .max_message_size
            .and_then(|s| size(&s, "server.max_message_size", p))
            .unwrap_or(26_214_400),
        max_recipients: p.positive("server.max_recipients", raw.max_recipients, 1000),
        max_connections,
        command_timeout: raw
            .command_timeout
            .and_then(|d| duration(&d, "server.command_timeout", p))
            .unwrap_or(Duration::from_secs(300)),
        max_line_length: match raw.max_line_length {
            Some(n) if n < 512 => {
                p.push(
                    "server.max_line_length",
                    "must be at least 512 (RFC 5321 4.5.3.1.4)",
                );
                4096
            }
            Some(n) => n as usize,
            None => 4096,
        },
        max_connections_per_source: p.positive(
            "server.max_connections_per_source",
            raw.max_connections_per_source,
            DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        ),
        reserved_connections,
        unauthenticated_timeout,
        tls: raw.tls.and_then(|t| {
            let cert = p.required("server.tls.cert", t.cert).map(PathBuf::from);
            let key = p.required("server.tls.key", t.key).map(PathBuf::from);
            for (k, f) in [("server.tls.cert", &cert), ("server.tls.key", &key)] {
                if let Some(f) = f
                    && let Err(e) = std::fs::metadata(f)
                {
                    p.push(k, format!("cannot read {}: {e}", f.display()));
                }
            }
            Some(InboundTlsConfig {
                cert: cert?,
                key: key?,
                required: t.required,
            })
        }),
    }
}

fn validate_access(raw: raw::RawAccess, p: &mut Problems) -> AccessConfig {
    let networks = raw
        .networks
        .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()])
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let parsed = n
                .parse::<IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from));
            parsed
                .map_err(|_| {
                    p.push(
                        &format!("access.networks[{i}]"),
                        format!("{n:?} is not a CIDR network"),
                    )
                })
                .ok()
        })
        .collect();
    let mut users: Vec<User> = Vec::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        let path = format!("access.users[{i}]");
        let name = p.required(&format!("{path}.name"), u.name);
        let password = p.secret(&path, "password", u.password_env, u.password_file, true);
        if let (Some(name), Some(password)) = (name, password) {
            if users.iter().any(|other| other.name == name) {
                p.push(
                    &format!("{path}.name"),
                    format!("user {name:?} is defined twice"),
                );
            }
            users.push(User { name, password });
        }
    }
    let auth_failures_per_source = p.budget(
        "access.auth_failures_per_source",
        raw.auth_failures_per_source.as_deref(),
        DEFAULT_AUTH_FAILURES_PER_SOURCE,
    );
    let auth_failures_total = p.budget(
        "access.auth_failures_total",
        raw.auth_failures_total.as_deref(),
        DEFAULT_AUTH_FAILURES_TOTAL,
    );
    let auth_ban = raw
        .auth_ban
        .and_then(|d| duration(&d, "access.auth_ban", p))
        .unwrap_or(DEFAULT_AUTH_BAN);
    if auth_ban.is_zero() {
        p.push("access.auth_ban", "must be greater than zero");
    }
    AccessConfig {
        networks,
        users,
        auth_failures_per_source,
        auth_failures_total,
        auth_ban,
    }
}

fn validate_privacy(raw: raw::RawPrivacy, p: &mut Problems) -> PrivacyConfig {
    let mode = match raw.mode.as_deref().unwrap_or("split") {
        "split" => PrivacyMode::Split,
        "bcc" => PrivacyMode::Bcc,
        "reject" => PrivacyMode::Reject,
        "monitor" => PrivacyMode::Monitor,
        other => {
            p.push(
                "privacy.mode",
                format!("{other:?} is not one of split, bcc, reject, monitor"),
            );
            PrivacyMode::Split
        }
    };
    let trusted_domains = raw
        .trusted_domains
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains(['@', ' ']) {
                p.push(
                    &format!("privacy.trusted_domains[{i}]"),
                    "must be a domain name such as example.com",
                );
                None
            } else {
                Some(d)
            }
        })
        .collect();
    let body_check = match raw.body_check.as_deref().unwrap_or("reject") {
        "reject" => BodyCheck::Reject,
        "monitor" => BodyCheck::Monitor,
        "off" => BodyCheck::Off,
        other => {
            p.push(
                "privacy.body_check",
                format!("{other:?} is not one of reject, monitor, off"),
            );
            BodyCheck::Reject
        }
    };
    PrivacyConfig {
        mode,
        max_visible_recipients: raw.max_visible_recipients.unwrap_or(1) as usize,
        trusted_domains,
        body_check,
    }
}

fn validate_spool(raw: raw::RawSpool, p: &mut Problems) -> SpoolConfig {
    let d = |v: Option<raw::RawDuration>, key: &str, default: u64, p: &mut Problems| {
        v.and_then(|v| duration(&v, key, p))
            .unwrap_or(Duration::from_secs(default))
    };
    let spool = SpoolConfig {
        dir: PathBuf::from(raw.dir.unwrap_or_else(|| "./spool".into())),
        max_queue_time: d(raw.max_queue_time, "spool.max_queue_time", 3 * 86_400, p),
        retry_initial: d(raw.retry_initial, "spool.retry_initial", 5, p),
        retry_max: d(raw.retry_max, "spool.retry_max", 600, p),
        upstream_cool_off: d(raw.upstream_cool_off, "spool.upstream_cool_off", 30, p),
        bounce: raw.bounce.unwrap_or(false),
    };
    if spool.retry_initial.is_zero() {
        p.push("spool.retry_initial", "must be greater than zero");
    }
    if spool.retry_max < spool.retry_initial {
        p.push(
            "spool.retry_max",
            "must not be smaller than spool.retry_initial",
        );
    }
    spool
}

fn validate_upstreams(raw: Vec<raw::RawUpstream>, p: &mut Problems) -> Vec<UpstreamConfig> {
    if raw.is_empty() {
        p.push(
            "upstream",
            "at least one [[upstream]] is required (an SMTP host, or a capture dir)",
        );
    }
    let mut out: Vec<UpstreamConfig> = Vec::new();
    for (i, u) in raw.into_iter().enumerate() {
        let path = format!("upstream[{i}]");
        let name = u.name.clone().unwrap_or_else(|| format!("upstream{i}"));
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || name.is_empty()
        {
            p.push(
                &format!("{path}.name"),
                "must be letters, digits, '-', '_' or '.' (it is a metric label)",
            );
        }
        if out.iter().any(|o| o.name == name) {
            p.push(
                &format!("{path}.name"),
                format!("upstream {name:?} is defined twice"),
            );
        }
        let kind = match (u.host, u.dir) {
            (Some(_), Some(_)) => {
                p.push(
                    &path,
                    "set either host (SMTP upstream) or dir (capture upstream), not both",
                );
                continue;
            }
            (None, None) => {
                p.push(
                    &path,
                    "needs host (SMTP upstream) or dir (capture upstream)",
                );
                continue;
            }
            (None, Some(dir)) => {
                for (key, set) in [
                    ("port", u.port.is_some()),
                    ("tls", u.tls.is_some()),
                    ("ca_file", u.ca_file.is_some()),
                    ("username", u.username.is_some()),
                    ("password_env", u.password_env.is_some()),
                    ("password_file", u.password_file.is_some()),
                ] {
                    if set {
                        p.push(
                            &format!("{path}.{key}"),
                            "only applies to an SMTP upstream (host), not a dir",
                        );
                    }
                }
                UpstreamKind::Dir {
                    dir: PathBuf::from(dir),
                }
            }
            (Some(host), None) => {
                let tls = match u.tls.as_deref().unwrap_or("starttls") {
                    "starttls" => UpstreamTls::StartTls,
                    "implicit" => UpstreamTls::Implicit,
                    "none" => UpstreamTls::None,
                    other => {
                        p.push(
                            &format!("{path}.tls"),
                            format!("{other:?} is not one of starttls, implicit, none"),
                        );
                        UpstreamTls::StartTls
                    }
                };
                let port = u.port.unwrap_or(match tls {
                    UpstreamTls::Implicit => 465,
                    _ => 587,
                });
                if host.is_empty() || host.contains(char::is_whitespace) {
                    p.push(&format!("{path}.host"), "must be a host name or IP address");
                }
                let ca_file = u.ca_file.map(PathBuf::from);
                if let Some(f) = &ca_file
                    && let Err(e) = std::fs::metadata(f)
                {
                    p.push(
                        &format!("{path}.ca_file"),
                        format!("cannot read {}: {e}", f.display()),
                    );
                }
                let password = p.secret(&path, "password", u.password_env, u.password_file, false);
                let credentials = match (u.username, password) {
                    (Some(username), Some(password)) => Some(Credentials { username, password }),
                    (None, None) => None,
                    (Some(_), None) => {
                        p.push(
                            &format!("{path}.password_env"),
                            "username is set: set password_env or password_file",
                        );
                        None
                    }
                    (None, Some(_)) => {
                        p.push(
                            &format!("{path}.username"),
                            "a password is set without a username",
                        );
                        None
                    }
                };
                if credentials.is_some() && tls == UpstreamTls::None {
                    p.push(
                        &format!("{path}.tls"),
                        "credentials are never sent in plaintext: use starttls or implicit",
                    );
                }
                let max_connections =
                    p.positive(&format!("{path}.max_connections"), u.max_connections, 10);
                let timeout = u
                    .timeout
                    .and_then(|d| duration(&d, &format!("{path}.timeout"), p))
                    .unwrap_or(Duration::from_secs(60));
                UpstreamKind::Smtp(SmtpUpstreamConfig {
                    host,
                    port,
                    tls,
                    ca_file,
                    credentials,
                    max_connections,
                    timeout,
                })
            }
        };
        out.push(UpstreamConfig { name, kind });
    }
    out
}

fn validate_admin(raw: raw::RawAdmin, p: &mut Problems) -> AdminConfig {
    let listen = p
        .socket_addr(
            "admin.listen",
            raw.listen.as_deref().unwrap_or("127.0.0.1:9726"),
        )
        .unwrap_or_else(|| ([127, 0, 0, 1], 9726).into());
    let token = raw
        .token_env
        .as_ref()
        .and_then(|var| match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => None,
        });
    AdminConfig {
        listen,
        token_env: raw.token_env,
        token,
        max_connections: p.positive(
            "admin.max_connections",
            raw.max_connections,
            DEFAULT_ADMIN_CONNECTIONS,
        ),
    }
}

fn validate_log(raw: raw::RawLog, p: &mut Problems) -> LogConfig {
    let format = match raw.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            p.push("log.format", format!("{other:?} is not one of text, json"));
            LogFormat::Text
        }
    };
    LogConfig {
        format,
        show_addresses: raw.show_addresses.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests;
