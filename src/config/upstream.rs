//! `[[upstream]]`: the SMTP hosts (or capture dirs) copies are sent to, tried in order.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawUpstream;
use super::upstream_limits::{UpstreamLimitsConfig, validate_limits};
pub use super::upstream_mx::{MxTls, MxUpstreamConfig};
use super::values::{Problems, Secret, duration};

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
    /// Its own rate and daily quota (an ESP account's limits); none by default.
    pub limits: UpstreamLimitsConfig,
}

#[derive(Debug, Clone)]
pub enum UpstreamKind {
    Smtp(SmtpUpstreamConfig),
    /// Capture upstream: writes `<id>.eml` + `<id>.json` into `dir`, like `mailveil sink`.
    Dir {
        dir: PathBuf,
    },
    /// Direct delivery to each recipient domain's MX hosts (`kind = "mx"`).
    Mx(MxUpstreamConfig),
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
    /// The hop never leaves this host (a sidecar or local smarthost): copies to a provider with
    /// `require_tls` may take it in plaintext, since the next hop is the smarthost's. Default:
    /// `host` is `localhost` or a loopback address.
    pub local: bool,
}

/// Whether `host` names this machine: `localhost` or a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

pub(super) fn validate_upstreams(raw: Vec<RawUpstream>, p: &mut Problems) -> Vec<UpstreamConfig> {
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
        let limits = validate_limits(&u, &path, p);
        let kind_given = u.kind.clone();
        match kind_given.as_deref() {
            Some("mx") => {
                if let Some(mx) = super::upstream_mx::validate_mx(&u, &path, p) {
                    out.push(UpstreamConfig {
                        name,
                        kind: UpstreamKind::Mx(mx),
                        limits,
                    });
                }
                continue;
            }
            None | Some("smtp") | Some("dir") => {
                super::upstream_mx::refuse_mx_keys(&u, &path, p);
            }
            Some(other) => {
                p.push(
                    &format!("{path}.kind"),
                    format!("{other:?} is not one of smtp, dir, mx"),
                );
                continue;
            }
        }
        let kind = match (u.host, u.dir) {
            (Some(_), None) if kind_given.as_deref() == Some("dir") => {
                p.push(&format!("{path}.dir"), "kind = \"dir\" needs dir, not host");
                continue;
            }
            (None, Some(_)) if kind_given.as_deref() == Some("smtp") => {
                p.push(
                    &format!("{path}.host"),
                    "kind = \"smtp\" needs host, not dir",
                );
                continue;
            }
            (Some(_), Some(_)) => {
                p.push(
                    &path,
                    "set either host (SMTP upstream) or dir (capture upstream), not both",
                );
                continue;
            }
            (None, None) => {
                if !p.is_broken(&format!("{path}.host")) && !p.is_broken(&format!("{path}.dir")) {
                    p.push(
                        &path,
                        "needs host (SMTP upstream) or dir (capture upstream)",
                    );
                }
                continue;
            }
            (None, Some(dir)) => {
                p.not_applicable(
                    &path,
                    &[
                        ("port", u.port.is_some()),
                        ("tls", u.tls.is_some()),
                        ("ca_file", u.ca_file.is_some()),
                        ("username", u.username.is_some()),
                        ("password_env", u.password_env.is_some()),
                        ("password_file", u.password_file.is_some()),
                        ("local", u.local.is_some()),
                    ],
                    "only applies to an SMTP upstream (host), not a dir",
                );
                let dir = PathBuf::from(dir);
                p.directory(&format!("{path}.dir"), &dir);
                UpstreamKind::Dir { dir }
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
                } else if tls != UpstreamTls::None
                    && let Err(e) = super::tls::server_name(&host)
                {
                    p.push(
                        &format!("{path}.host"),
                        format!("{e}: the upstream's certificate could not be verified against it"),
                    );
                }
                let ca_file = u.ca_file.map(PathBuf::from);
                // Read as the upstream will read it when it is built (`super::tls`).
                if let Some(f) = &ca_file
                    && let Err(e) = super::tls::trust_anchors(Some(f))
                {
                    p.push(&format!("{path}.ca_file"), e);
                }
                let password_given = u.password_env.is_some() || u.password_file.is_some();
                let password = p.secret(&path, "password", u.password_env, u.password_file, false);
                let credentials = match (u.username, password) {
                    (Some(username), Some(password)) => Some(Credentials { username, password }),
                    (None, None) => None,
                    (Some(_), None) => {
                        // A password that was given but could not be read is reported already.
                        if !password_given {
                            p.push(
                                &format!("{path}.password_env"),
                                "username is set: set password_env or password_file",
                            );
                        }
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
                let local = u.local.unwrap_or_else(|| is_loopback_host(&host));
                UpstreamKind::Smtp(SmtpUpstreamConfig {
                    local,
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
        out.push(UpstreamConfig { name, kind, limits });
    }
    out
}
