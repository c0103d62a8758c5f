//! The client side of the admin API, for `mailveil ctl`: one blocking HTTP request (ureq, plain
//! HTTP: the admin listener is meant for loopback or a pod-local network) and its answer.

use std::time::Duration;

/// How long `ctl` waits for the relay; a reload reads files, everything else is immediate.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the admin API listens when neither `--admin` nor the config says otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9726";

/// One admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Status,
    Pause {
        provider: Option<String>,
    },
    Resume {
        provider: Option<String>,
    },
    Reload,
    /// Lift shaping slowdowns and suspensions (`POST /shaping/clear`): one provider's, one
    /// upstream's, or (neither) all.
    ShapingClear {
        provider: Option<String>,
        upstream: Option<String>,
    },
    /// Messages under a bulk hold.
    Held {
        show_addresses: bool,
    },
    /// Send a held message's remaining copies.
    Release {
        id: String,
    },
    /// Never send a held message's remaining copies; it leaves the spool.
    Drop {
        id: String,
    },
    /// Queued messages passing the filters (`GET /queue`).
    QueueList {
        filter: crate::schedule::queue::view::FilterArgs,
    },
    /// One queued message in full (`GET /queue/<id>`).
    QueueShow {
        id: String,
        show_addresses: bool,
    },
    /// Make deferred copies due now (`POST /queue/retry`).
    QueueRetry {
        target: crate::schedule::queue::RetryTarget,
    },
    /// Delete a queued message (`POST /queue/<id>/delete`).
    QueueDelete {
        id: String,
    },
    /// Bounce a queued message (`POST /queue/<id>/bounce`).
    QueueBounce {
        id: String,
    },
    /// The suppression list (`/suppress...`): `add` (with a note and an expiry), `remove`,
    /// `check`, or (no address) `list`.
    Suppress {
        command: SuppressAction,
        address: Option<String>,
        note: Option<String>,
        expires: Option<String>,
    },
}

/// What `ctl suppress` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressAction {
    Add,
    Remove,
    Check,
    List,
}

impl Action {
    /// Method and path (with the query) of the request.
    pub fn request_line(&self) -> (&'static str, String) {
        let with = |path: &str, provider: &Option<String>| match provider {
            Some(p) => format!("{path}?provider={}", encode(p)),
            None => path.to_string(),
        };
        match self {
            Action::Status => ("GET", "/status".into()),
            Action::Pause { provider } => ("POST", with("/pause", provider)),
            Action::Resume { provider } => ("POST", with("/resume", provider)),
            Action::Reload => ("POST", "/reload".into()),
            Action::ShapingClear { provider, upstream } => {
                // Both named: sent as given, the relay refuses it (`400`).
                let query: Vec<String> = [("provider", provider), ("upstream", upstream)]
                    .into_iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
                    .collect();
                let path = if query.is_empty() {
                    "/shaping/clear".to_string()
                } else {
                    format!("/shaping/clear?{}", query.join("&"))
                };
                ("POST", path)
            }
            Action::Held { show_addresses } => (
                "GET",
                if *show_addresses {
                    "/held?show_addresses=true".into()
                } else {
                    "/held".into()
                },
            ),
            Action::Release { id } => ("POST", format!("/held/{}/release", encode(id))),
            Action::Drop { id } => ("POST", format!("/held/{}/drop", encode(id))),
            Action::QueueList { filter } => {
                let mut query: Vec<String> = [
                    ("provider", &filter.provider),
                    ("state", &filter.state),
                    ("older_than", &filter.older_than),
                    ("rcpt", &filter.rcpt),
                    ("message_id", &filter.message_id),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
                .collect();
                if filter.show_addresses {
                    query.push("show_addresses=true".into());
                }
                if let Some(limit) = filter.limit {
                    query.push(format!("limit={limit}"));
                }
                let query = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{}", query.join("&"))
                };
                ("GET", format!("/queue{query}"))
            }
            Action::QueueShow { id, show_addresses } => (
                "GET",
                format!(
                    "/queue/{}{}",
                    encode(id),
                    if *show_addresses {
                        "?show_addresses=true"
                    } else {
                        ""
                    }
                ),
            ),
            Action::QueueRetry { target } => {
                use crate::schedule::queue::RetryTarget;
                let query = match target {
                    RetryTarget::All => "all=true".to_string(),
                    RetryTarget::Provider(p) => format!("provider={}", encode(p)),
                    RetryTarget::Message(id) => format!("id={}", encode(id)),
                };
                ("POST", format!("/queue/retry?{query}"))
            }
            Action::QueueDelete { id } => ("POST", format!("/queue/{}/delete", encode(id))),
            Action::QueueBounce { id } => ("POST", format!("/queue/{}/bounce", encode(id))),
            Action::Suppress { command, .. } => match command {
                SuppressAction::Add => ("POST", "/suppress".into()),
                SuppressAction::Remove => ("POST", "/suppress/remove".into()),
                SuppressAction::Check => ("POST", "/suppress/check".into()),
                SuppressAction::List => ("GET", "/suppress".into()),
            },
        }
    }

    /// The JSON body of the request, for those that carry one (addresses never go in URLs).
    pub fn body(&self) -> Option<String> {
        match self {
            Action::Suppress {
                address: Some(address),
                note,
                expires,
                ..
            } => {
                let mut body = serde_json::json!({ "address": address });
                if let Some(n) = note {
                    body["note"] = n.as_str().into();
                }
                if let Some(e) = expires {
                    body["expires"] = e.as_str().into();
                }
                Some(body.to_string())
            }
            _ => None,
        }
    }
}

/// Percent-encodes a provider name for the query string (names are normally `[A-Za-z0-9._-]`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The admin API's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the admin API at {url}: {source}")]
    Unreachable { url: String, source: ureq::Error },
}

/// Sends `action` to the admin API at `base` (e.g. `http://127.0.0.1:9726`).
pub fn send(base: &str, token: &str, action: &Action) -> Result<Answer, CtlError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let (method, path) = action.request_line();
    let scheme = if base.contains("://") { "" } else { "http://" };
    let url = format!("{scheme}{}{path}", base.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let sent = match (method, action.body()) {
        ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
        (_, Some(body)) => agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.as_str()),
        (_, None) => agent.post(&url).header("Authorization", &auth).send_empty(),
    };
    let unreachable = |source| CtlError::Unreachable {
        url: url.clone(),
        source,
    };
    let mut response = sent.map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().map_err(unreachable)?;
    Ok(Answer { status, body })
}

/// The admin URL from a config file's `[admin] listen`, read without validating the rest of the
/// file (ctl runs where the relay's secrets may not be set). A wildcard address becomes loopback.
pub fn url_from_config(text: &str) -> Option<String> {
    let table: toml::Table = text.parse().ok()?;
    let listen = table.get("admin")?.get("listen")?.as_str()?;
    let addr: std::net::SocketAddr = listen.parse().ok()?;
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Some(format!("http://{ip}:{}", addr.port()))
}

/// The name of the token variable in a config file's `[admin] token_env`.
pub fn token_env_from_config(text: &str) -> Option<String> {
    let table: toml::Table = text.parse().ok()?;
    Some(table.get("admin")?.get("token_env")?.as_str()?.to_string())
}

/// The variable `ctl` reads the token from first; the relay's examples use the same name in
/// `admin.token_env`, so one `export` serves both.
pub const TOKEN_ENV: &str = "MAILVEIL_ADMIN_TOKEN";

/// The admin token read from a `--token-file`.
#[derive(Debug)]
pub struct TokenFile {
    pub token: String,
    /// Group or others may read the file: anyone with an account on the machine may hold
    /// the kill switch. Reported, not refused: a Kubernetes Secret volume is 0644 unless its
    /// `defaultMode` says otherwise, and inside a pod that is harmless.
    pub readable_by_others: bool,
}

/// Why a `--token-file` gave no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("the token file {path} is empty")]
    Empty { path: String },
}

/// Reads the token from `path`: the file's text without its trailing line end (`echo TOKEN >
/// file` writes one). Checks who else may read it (the file, through symlinks).
pub fn read_token_file(path: &std::path::Path) -> Result<TokenFile, TokenFileError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let unreadable = |source| TokenFileError::Unreadable {
        path: shown.clone(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode();
    let token = text.trim_end_matches(['\r', '\n']).to_string();
    if token.is_empty() {
        return Err(TokenFileError::Empty { path: shown });
    }
    Ok(TokenFile {
        token,
        readable_by_others: mode & 0o044 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(Action::Status.request_line(), ("GET", "/status".into()));
        assert_eq!(
            Action::Pause {
                provider: Some("yahoo".into())
            }
            .request_line(),
            ("POST", "/pause?provider=yahoo".into())
        );
        assert_eq!(
            Action::Resume {
                provider: Some("a b&c".into())
            }
            .request_line(),
            ("POST", "/resume?provider=a%20b%26c".into())
        );
        assert_eq!(Action::Reload.request_line(), ("POST", "/reload".into()));
        let clear = |provider: Option<&str>, upstream: Option<&str>| {
            Action::ShapingClear {
                provider: provider.map(Into::into),
                upstream: upstream.map(Into::into),
            }
            .request_line()
            .1
        };
        assert_eq!(clear(None, None), "/shaping/clear");
        assert_eq!(clear(Some("yahoo"), None), "/shaping/clear?provider=yahoo");
        assert_eq!(clear(None, Some("ses")), "/shaping/clear?upstream=ses");
        assert_eq!(
            clear(Some("a"), Some("b")),
            "/shaping/clear?provider=a&upstream=b"
        );
        assert_eq!(
            Action::Held {
                show_addresses: false
            }
            .request_line(),
            ("GET", "/held".into())
        );
        assert_eq!(
            Action::Release { id: "01AB".into() }.request_line(),
            ("POST", "/held/01AB/release".into())
        );
        assert_eq!(
            Action::Drop { id: "../x".into() }.request_line(),
            ("POST", "/held/..%2Fx/drop".into())
        );
        let filter = crate::schedule::queue::view::FilterArgs {
            state: Some("deferred".into()),
            rcpt: Some("a+b@x.test".into()),
            show_addresses: true,
            ..Default::default()
        };
        assert_eq!(
            Action::QueueList { filter }.request_line(),
            (
                "GET",
                "/queue?state=deferred&rcpt=a%2Bb%40x.test&show_addresses=true".into()
            )
        );
        assert_eq!(
            Action::QueueRetry {
                target: crate::schedule::queue::RetryTarget::Provider("yahoo".into())
            }
            .request_line(),
            ("POST", "/queue/retry?provider=yahoo".into())
        );
        assert_eq!(
            Action::QueueDelete { id: "01AB".into() }.request_line(),
            ("POST", "/queue/01AB/delete".into())
        );
    }

    #[test]
    fn token_file_loses_its_line_end_and_reports_who_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("token");
        std::fs::write(&path, "s3cret-token\r\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = read_token_file(&path).unwrap();
        assert_eq!(file.token, "s3cret-token");
        assert!(!file.readable_by_others);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_token_file(&path).unwrap().readable_by_others);
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_token_file(&path),
            Err(TokenFileError::Empty { .. })
        ));
        assert!(matches!(
            read_token_file(&tmp.path().join("missing")),
            Err(TokenFileError::Unreadable { .. })
        ));
    }

    #[test]
    fn url_and_token_env_from_config() {
        let text = "[admin]\nlisten = \"0.0.0.0:9800\"\ntoken_env = \"X_TOKEN\"\n";
        assert_eq!(url_from_config(text).unwrap(), "http://127.0.0.1:9800");
        assert_eq!(token_env_from_config(text).unwrap(), "X_TOKEN");
        assert_eq!(
            url_from_config("[admin]\nlisten = \"[::1]:9726\"\n").unwrap(),
            "http://[::1]:9726"
        );
        assert_eq!(url_from_config("[server]\n"), None);
    }
}
