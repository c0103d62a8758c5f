//! MTA-STS (RFC 8461): a domain's published promise that its MX hosts speak TLS with valid
//! certificates, so a copy is never handed to an MX host an attacker put in its path.
//!
//! A domain that has `_mta-sts.<domain>` TXT (`v=STSv1; id=...`, parsed by mail-auth) serves its
//! policy at `https://mta-sts.<domain>/.well-known/mta-sts.txt` (certificate verified, no
//! redirects). In `enforce` mode only MX hosts matching the policy's `mx` patterns are used, and
//! only over STARTTLS with a certificate valid for the host's name; in `testing` mode copies go
//! as without a policy, and what enforce would have refused is logged. Policies are cached for
//! their `max_age`, in memory and in a file of the spool directory (so a restart does not open
//! a window in which an attacker who blocks the fetch turns the policy off), and a cached
//! policy still applies when
//! the TXT record disappears or the fetch fails (RFC 8461 5.1), which is what makes the promise
//! hold against an attacker who can block DNS or HTTPS.
//!
//! The fetch is a plain HTTP/1.0 GET over tokio-rustls (no chunked encoding in HTTP/1.0): the
//! policy host must be resolved by the same resolver as the MX records (`nameservers`), which
//! an HTTP client crate resolving through the system would not do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use mail_auth::common::parse::TxtRecordParser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    /// The domain withdrew its policy.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// `mx.example.com` or `*.example.com` (one label), lower case.
    pub mx: Vec<String>,
    pub max_age: Duration,
}

impl Policy {
    /// Whether `host` (lower case, no final dot) is one of the policy's MX hosts.
    pub fn allows(&self, host: &str) -> bool {
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => pattern == host,
            })
    }
}

/// The policy file's bytes at most (RFC 8461 3.3 suggests 64 KiB).
const MAX_POLICY_BYTES: usize = 64 << 10;
/// RFC 8461 3.2: `max_age` is at most a year.
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// Parses a policy file (RFC 8461 3.2): `key: value` lines, CRLF or LF.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("not a key: value line: {line:?}"));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {other:?}")),
                })
            }
            "max_age" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("max_age {value:?} is not a number"))?;
                max_age = Some(Duration::from_secs(n.min(MAX_AGE_LIMIT)));
            }
            "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            _ => {} // extensions are ignored (3.2)
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("version is not STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mode != Mode::None && mx.is_empty() {
        return Err("no mx".into());
    }
    Ok(Policy { mode, mx, max_age })
}

struct Cached {
    id: String,
    policy: Policy,
    until: Instant,
}

/// A cached policy as the cache file keeps it.
#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    mode: String,
    mx: Vec<String>,
    max_age: u64,
    /// Unix seconds.
    until: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// The policies of `file` that have not expired; none when it is missing or unreadable (a
/// damaged cache costs fetches, not mail).
fn load(file: &std::path::Path) -> HashMap<String, Cached> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return HashMap::new();
    };
    let stored: HashMap<String, Stored> = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "MTA-STS policy cache unreadable; policies will be fetched again");
            return HashMap::new();
        }
    };
    let (now, unix) = (Instant::now(), unix_now());
    stored
        .into_iter()
        .filter(|(_, s)| s.until > unix)
        .filter_map(|(domain, s)| {
            let mode = match s.mode.as_str() {
                "enforce" => Mode::Enforce,
                "testing" => Mode::Testing,
                "none" => Mode::None,
                _ => return None,
            };
            let policy = Policy {
                mode,
                mx: s.mx,
                max_age: Duration::from_secs(s.max_age),
            };
            let until = now + Duration::from_secs(s.until - unix);
            Some((
                domain,
                Cached {
                    id: s.id,
                    policy,
                    until,
                },
            ))
        })
        .collect()
}

/// Finds and caches policies.
pub struct MtaSts {
    connector: tokio_rustls::TlsConnector,
    https_port: u16,
    timeout: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// Where the cache is kept across restarts.
    file: Option<PathBuf>,
}

impl MtaSts {
    /// Fetches over `connector` (verified: webpki roots plus the upstream's `ca_file`) at
    /// `https_port` (443 but in tests), each fetch within `timeout`.
    /// `file` keeps the cache across restarts (read now, rewritten after each fetch).
    pub fn new(
        connector: tokio_rustls::TlsConnector,
        https_port: u16,
        timeout: Duration,
        file: Option<PathBuf>,
    ) -> MtaSts {
        let cache = file.as_deref().map(load).unwrap_or_default();
        MtaSts {
            connector,
            https_port,
            timeout,
            cache: Mutex::new(cache),
            file,
        }
    }

    /// Writes the cache to its file (a snapshot, replaced atomically; not synced: losing it
    /// costs fetches, not mail).
    fn save(&self, cache: &HashMap<String, Cached>) {
        let Some(file) = &self.file else {
            return;
        };
        let (now, unix) = (Instant::now(), unix_now());
        let stored: HashMap<&str, Stored> = cache
            .iter()
            .filter(|(_, c)| c.until > now)
            .map(|(domain, c)| {
                let stored = Stored {
                    id: c.id.clone(),
                    mode: c.policy.mode.name().to_string(),
                    mx: c.policy.mx.clone(),
                    max_age: c.policy.max_age.as_secs(),
                    until: unix + (c.until - now).as_secs(),
                };
                (domain.as_str(), stored)
            })
            .collect();
        let Ok(json) = serde_json::to_vec(&stored) else {
            return;
        };
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, file)) {
            tracing::warn!(file = %file.display(), error = %e, "cannot keep the MTA-STS policy cache");
        }
    }

    /// The policy in force for `domain`, if any: the cached one while its id is unchanged (or
    /// the TXT record cannot be read) and its `max_age` runs, else a fresh fetch.
    pub async fn policy(&self, resolver: &TokioResolver, domain: &str) -> Option<Policy> {
        let id = txt_id(resolver, domain).await;
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(domain)
                .filter(|c| c.until > Instant::now())
                .map(|c| (c.id.clone(), c.policy.clone()))
        };
        let Some(id) = id else {
            // No (readable) TXT record: a cached policy still holds until it expires.
            return cached.map(|(_, p)| p).filter(|p| p.mode != Mode::None);
        };
        if let Some((cached_id, policy)) = &cached
            && *cached_id == id
        {
            return (policy.mode != Mode::None).then(|| policy.clone());
        }
        match tokio::time::timeout(self.timeout, self.fetch(resolver, domain)).await {
            Ok(Ok(policy)) => {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                cache.insert(
                    domain.to_string(),
                    Cached {
                        id,
                        policy: policy.clone(),
                        until: Instant::now() + policy.max_age,
                    },
                );
                self.save(&cache);
                (policy.mode != Mode::None).then_some(policy)
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("timed out after {:?}", self.timeout),
                };
                tracing::warn!(
                    %domain,
                    error = %crate::observe::log::escaped(&error),
                    cached = cached.is_some(),
                    "MTA-STS policy could not be fetched"
                );
                cached.map(|(_, p)| p).filter(|p| p.mode != Mode::None)
            }
        }
    }

    /// GET https://mta-sts.<domain>/.well-known/mta-sts.txt, certificate verified for that name.
    async fn fetch(&self, resolver: &TokioResolver, domain: &str) -> Result<Policy, String> {
        let host = format!("mta-sts.{domain}");
        let ip = resolver
            .lookup_ip(format!("{host}."))
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .iter()
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let tcp = TcpStream::connect(SocketAddr::new(ip, self.https_port))
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        let mut tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{host}: TLS: {e}"))?;
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\nUser-Agent: mailveil\r\n\r\n"
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        let mut limited = (&mut tls).take(MAX_POLICY_BYTES as u64 + 4096);
        // A server that closes without close_notify still sent what it sent.
        let _ = limited.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .or_else(|| text.split_once("\n\n"))
            .ok_or("no complete HTTP response")?;
        let mut lines = head.lines();
        let status = lines.next().unwrap_or("");
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!(
                "HTTP status {status:?} (redirects are not followed)"
            ));
        }
        let text_plain = lines.any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("content-type")
                    && v.trim().to_ascii_lowercase().starts_with("text/plain")
            })
        });
        if !text_plain {
            return Err("Content-Type is not text/plain".into());
        }
        if body.len() > MAX_POLICY_BYTES {
            return Err("policy over 64 KiB".into());
        }
        parse_policy(body)
    }
}

/// The `id` of `_mta-sts.<domain>`'s `v=STSv1` TXT record; `None` without one (or when DNS
/// fails: a cached policy then still holds).
async fn txt_id(resolver: &TokioResolver, domain: &str) -> Option<String> {
    let lookup = resolver
        .txt_lookup(format!("_mta-sts.{domain}."))
        .await
        .ok()?;
    let mut ids = lookup.answers().iter().filter_map(|r| match &r.data {
        RData::TXT(txt) => {
            let bytes: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            mail_auth::mta_sts::MtaSts::parse(&bytes).ok().map(|r| r.id)
        }
        _ => None,
    });
    let id = ids.next()?;
    // RFC 8461 3.1: more than one STSv1 record means none.
    ids.next().is_none().then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_rfc_8461_writes_them() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 86400\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, Duration::from_secs(86400));
        assert!(
            parse_policy("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 5\nfuture: x\n").is_ok()
        );
        for bad in [
            "mode: enforce\nmx: a.b\nmax_age: 5\n",
            "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 5\n",
            "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 5\n",
            "version: STSv1\nmode: enforce\nmax_age: 5\n",
            "version: STSv1\nmode: enforce\nmx: a.b\n",
            "<html>nope</html>",
        ] {
            assert!(parse_policy(bad).is_err(), "{bad}");
        }
        let year = parse_policy("version: STSv1\nmode: none\nmax_age: 99999999999\n").unwrap();
        assert_eq!(year.max_age, Duration::from_secs(MAX_AGE_LIMIT));
    }

    proptest::proptest! {
        /// Any text (random bytes as a server could send, lossily decoded) is either refused or
        /// a policy that holds what RFC 8461 requires; never a panic.
        #[test]
        fn any_policy_text_parses_or_is_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(p) = parse_policy(&text) {
                proptest::prop_assert!(p.mode == Mode::None || !p.mx.is_empty());
                proptest::prop_assert!(p.max_age.as_secs() <= MAX_AGE_LIMIT);
            }
        }

        /// Policies built from random key/value lines: well-formed ones parse, and a host
        /// matches a pattern exactly when it is the name or one label under a `*.` pattern.
        #[test]
        fn patterns_match_exactly_their_hosts(
            labels in proptest::collection::vec("[a-z0-9-]{1,8}", 2..5),
            extra in "[a-z0-9-]{1,8}",
            wildcard in proptest::bool::ANY,
            crlf in proptest::bool::ANY,
        ) {
            let base = labels.join(".");
            let pattern = if wildcard { format!("*.{base}") } else { base.clone() };
            let eol = if crlf { "\r\n" } else { "\n" };
            let text = format!("version: STSv1{eol}mode: enforce{eol}mx: {pattern}{eol}max_age: 60{eol}");
            let p = parse_policy(&text).unwrap();
            let under = format!("{extra}.{base}");
            let two_under = format!("{extra}.{extra}.{base}");
            proptest::prop_assert_eq!(p.allows(&under), wildcard);
            proptest::prop_assert_eq!(p.allows(&base), !wildcard);
            proptest::prop_assert!(!p.allows(&two_under));
            let glued = format!("{extra}{base}");
            proptest::prop_assert!(!p.allows(&glued));
        }
    }

    #[test]
    fn wildcards_match_one_label() {
        let p = parse_policy("version: STSv1\nmode: enforce\nmx: *.mx.example.com\nmx: mail.example.org\nmax_age: 5\n")
            .unwrap();
        assert!(p.allows("a.mx.example.com"));
        assert!(!p.allows("a.b.mx.example.com"));
        assert!(!p.allows("mx.example.com"));
        assert!(!p.allows("amx.example.com"));
        assert!(p.allows("mail.example.org"));
        assert!(!p.allows("evil.mail.example.org"));
    }
}
