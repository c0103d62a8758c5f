//! `[apps]` and `[[app]]`: the apps a relay serves, how a session is recognised as one of them
//! (its AUTH login, else the longest matching client network), the senders each may use, and
//! its overrides of the privacy policy (only stricter than `[privacy]` unless `allow_weaker`).
//! See `docs/apps.md`.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::hold::{DEFAULT_CANARY, DEFAULT_HOLD_TIMEOUT, HoldConfig, HoldTimeoutAction};
use super::privacy::{PrivacyConfig, PrivacyMode, trusted_domains};
use super::raw::{RawApp, RawAppPrivacy, RawApps};
use super::values::Problems;

/// Apps a relay accepts at most (each name is a label value: the series stay bounded).
pub const MAX_APPS: usize = 100;

/// The `app` label value of sessions that belong to no app.
pub const NO_APP: &str = "none";

/// `[apps]` and every `[[app]]`.
#[derive(Debug, Clone, Default)]
pub struct AppsConfig {
    /// A session that belongs to no app is refused `550 5.7.1` at MAIL.
    pub require_app: bool,
    /// A recipient whose copy failed for good with `5.1.1` or `5.1.10` (no such mailbox) is
    /// put on the suppression list (`src/suppress.rs`).
    pub suppress_hard_bounces: bool,
    pub apps: Vec<Arc<AppConfig>>,
}

/// One `[[app]]`.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `[a-z0-9_-]{1,32}`: the `app` label value and the name in replies.
    pub name: String,
    /// AUTH login names that belong to this app.
    pub logins: Vec<String>,
    /// Client networks of apps that cannot AUTH.
    pub networks: Vec<IpNet>,
    /// Who MAIL FROM may name.
    pub senders: Vec<SenderPattern>,
    /// Who `From:` (and `Sender:`) may name; `senders` when not set.
    pub header_senders: Vec<SenderPattern>,
    /// `MAIL FROM:<>` allowed (bounces, auto-replies); false by default.
    pub allow_null_sender: bool,
    /// The privacy policy for this app's messages: `[privacy]` with `[app.privacy]` applied.
    pub privacy: PrivacyConfig,
    /// The bulk hold for this app's messages: `[privacy]`'s, or its own `hold_fanout_above`.
    pub hold: Option<HoldConfig>,
    /// `[app.limits]`: its message rate and daily recipient quota (none by default).
    pub limits: AppLimitsConfig,
    /// `[app.events]`: its delivery events (none without the section).
    pub events: Option<AppEventsConfig>,
}

/// A `senders` entry: one address, a whole domain (`@example.com`) or its subdomains
/// (`@*.example.com`, not the domain itself). Domains are compared in ASCII (IDNA A-labels),
/// case-insensitively; local parts case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    Address { local: String, domain: String },
    Domain(String),
    Subdomains(String),
}

impl SenderPattern {
    /// Parses `a@b.c`, `@b.c` or `@*.b.c`; `None` for anything else.
    pub fn parse(text: &str) -> Option<SenderPattern> {
        let text = text.trim();
        let (local, domain) = text.rsplit_once('@')?;
        if let Some(rest) = domain.strip_prefix("*.") {
            return (local.is_empty()).then_some(SenderPattern::Subdomains(ascii_domain(rest)?));
        }
        let domain = ascii_domain(domain)?;
        if local.is_empty() {
            return Some(SenderPattern::Domain(domain));
        }
        (!local.contains(['@', ' ', '<', '>'])).then(|| SenderPattern::Address {
            local: local.to_lowercase(),
            domain,
        })
    }

    /// Whether `address` (RFC 5321 form, as stored at MAIL or read from a header) matches.
    pub fn matches(&self, address: &str) -> bool {
        let Some((local, domain)) = address.trim().rsplit_once('@') else {
            return false;
        };
        let Some(domain) = ascii_domain(domain) else {
            return false;
        };
        match self {
            SenderPattern::Address {
                local: want,
                domain: want_domain,
            } => *want_domain == domain && *want == local.to_lowercase(),
            SenderPattern::Domain(want) => *want == domain,
            SenderPattern::Subdomains(want) => domain
                .strip_suffix(want.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

/// A domain in lower-case ASCII (IDNA A-labels); an address literal `[...]` lower-cased as is.
fn ascii_domain(domain: &str) -> Option<String> {
    if domain.is_empty() || domain.contains(['@', ' ', '<', '>']) {
        return None;
    }
    if domain.starts_with('[') {
        return Some(domain.to_ascii_lowercase());
    }
    idna::domain_to_ascii(domain).ok().filter(|d| !d.is_empty())
}

impl AppConfig {
    /// Whether the MAIL FROM `sender` (empty: the null sender) may be used by this app.
    pub fn envelope_allowed(&self, sender: &str) -> bool {
        if sender.is_empty() {
            return self.allow_null_sender;
        }
        self.senders.iter().any(|p| p.matches(sender))
    }

    /// Whether a `From:` or `Sender:` address may be used by this app.
    pub fn header_allowed(&self, address: &str) -> bool {
        self.header_senders.iter().any(|p| p.matches(address))
    }
}

impl AppsConfig {
    /// The app a session belongs to: the one whose `logins` has its AUTH login, else the one
    /// with the longest network holding the client's address, else none.
    pub fn recognise(&self, login: Option<&str>, client: IpAddr) -> Option<Arc<AppConfig>> {
        if let Some(login) = login
            && let Some(app) = self
                .apps
                .iter()
                .find(|a| a.logins.iter().any(|l| l == login))
        {
            return Some(app.clone());
        }
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        self.apps
            .iter()
            .filter_map(|a| {
                a.networks
                    .iter()
                    .filter(|n| n.contains(&client))
                    .map(|n| n.prefix_len())
                    .max()
                    .map(|len| (len, a))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, a)| a.clone())
    }

    /// Configured app names, in file order.
    pub fn names(&self) -> Vec<String> {
        self.apps.iter().map(|a| a.name.clone()).collect()
    }
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn patterns(list: &[String], path: &str, p: &mut Problems) -> Vec<SenderPattern> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let parsed = SenderPattern::parse(s);
            if parsed.is_none() {
                p.push(
                    &format!("{path}[{i}]"),
                    format!("{s:?} is not an address (a@example.com) or a domain (@example.com, @*.example.com)"),
                );
            }
            parsed
        })
        .collect()
}

/// Validates `[apps]` and `[[app]]` against the global privacy policy and bulk hold.
pub(super) fn validate_apps(
    apps: Option<RawApps>,
    raw: Vec<RawApp>,
    global: &PrivacyConfig,
    global_hold: Option<&HoldConfig>,
    p: &mut Problems,
) -> AppsConfig {
    if raw.len() > MAX_APPS {
        p.push("app", format!("at most {MAX_APPS} apps may be configured"));
    }
    let mut out: Vec<Arc<AppConfig>> = Vec::new();
    for (i, a) in raw.into_iter().enumerate() {
        let path = format!("app[{i}]");
        let name = p
            .required(&format!("{path}.name"), a.name)
            .unwrap_or_default();
        if !name.is_empty() && !valid_name(&name) {
            p.push(
                &format!("{path}.name"),
                format!("{name:?} must be 1 to 32 of a-z, 0-9, _ and -"),
            );
        }
        if name == NO_APP {
            p.push(
                &format!("{path}.name"),
                "\"none\" is the label of sessions without an app; choose another name",
            );
        }
        if out.iter().any(|o| o.name == name) {
            p.push(
                &format!("{path}.name"),
                format!("app {name:?} is defined twice"),
            );
        }
        let logins = a.logins.unwrap_or_default();
        for (j, login) in logins.iter().enumerate() {
            if login.is_empty() {
                p.push(&format!("{path}.logins[{j}]"), "must not be empty");
            }
            if let Some(other) = out.iter().find(|o| o.logins.contains(login)) {
                p.push(
                    &format!("{path}.logins[{j}]"),
                    format!("login {login:?} already belongs to app {:?}", other.name),
                );
            }
        }
        let networks: Vec<IpNet> = a
            .networks
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(j, n)| {
                let parsed = n
                    .parse::<IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc());
                match parsed {
                    Ok(net) => Some(net),
                    Err(_) => {
                        p.push(
                            &format!("{path}.networks[{j}]"),
                            format!("{n:?} is not a CIDR network"),
                        );
                        None
                    }
                }
            })
            .collect();
        for (j, net) in networks.iter().enumerate() {
            if let Some(other) = out.iter().find(|o| o.networks.contains(net)) {
                p.push(
                    &format!("{path}.networks[{j}]"),
                    format!("network {net} already belongs to app {:?}", other.name),
                );
            }
        }
        if logins.is_empty() && networks.is_empty() {
            p.push(
                &path,
                "needs logins or networks: nothing would recognise this app",
            );
        }
        let senders = match &a.senders {
            Some(list) if !list.is_empty() => patterns(list, &format!("{path}.senders"), p),
            _ => {
                p.push(
                    &format!("{path}.senders"),
                    "is required: list the addresses (a@example.com) or domains (@example.com) this app may send as",
                );
                Vec::new()
            }
        };
        let header_senders = match &a.header_senders {
            Some(list) => patterns(list, &format!("{path}.header_senders"), p),
            None => senders.clone(),
        };
        let (privacy, hold) = match a.privacy {
            Some(o) => overrides(o, &format!("{path}.privacy"), global, global_hold, p),
            None => (global.clone(), global_hold.cloned()),
        };
        let limits = limits::validate(a.limits, &format!("{path}.limits"), p);
        let events = events::validate(a.events, &format!("{path}.events"), p);
        out.push(Arc::new(AppConfig {
            name,
            logins,
            networks,
            senders,
            header_senders,
            allow_null_sender: a.allow_null_sender.unwrap_or(false),
            privacy,
            hold,
            limits,
            events,
        }));
    }
    AppsConfig {
        require_app: apps.as_ref().and_then(|a| a.require_app).unwrap_or(false),
        suppress_hard_bounces: apps
            .as_ref()
            .and_then(|a| a.suppress_hard_bounces)
            .unwrap_or(false),
        apps: out,
    }
}

/// `[app.privacy]` applied to the global policy; each override weaker than it is a problem
/// unless `allow_weaker = true`.
fn overrides(
    o: RawAppPrivacy,
    path: &str,
    global: &PrivacyConfig,
    global_hold: Option<&HoldConfig>,
    p: &mut Problems,
) -> (PrivacyConfig, Option<HoldConfig>) {
    let allow_weaker = o.allow_weaker.unwrap_or(false);
    let weaker = |p: &mut Problems, key: &str, why: String| {
        if !allow_weaker {
            p.push(
                &format!("{path}.{key}"),
                format!("{why}: weaker than [privacy]; set {path}.allow_weaker = true if intended"),
            );
        }
    };
    let mut privacy = global.clone();
    if let Some(text) = o.mode.as_deref() {
        match PrivacyMode::parse(text) {
            Some(mode) => {
                if mode.strength() < global.mode.strength() {
                    weaker(
                        p,
                        "mode",
                        format!("{text:?} protects less than privacy.mode"),
                    );
                }
                privacy.mode = mode;
            }
            None => p.push(
                &format!("{path}.mode"),
                format!("{text:?} is not one of split, bcc, reject, monitor"),
            ),
        }
    }
    if let Some(n) = o.max_visible_recipients {
        let n = n as usize;
        if n > global.max_visible_recipients {
            weaker(
                p,
                "max_visible_recipients",
                format!(
                    "{n} is more than privacy.max_visible_recipients ({})",
                    global.max_visible_recipients
                ),
            );
        }
        privacy.max_visible_recipients = n;
    }
    if let Some(list) = o.trusted_domains {
        let domains = trusted_domains(list, &format!("{path}.trusted_domains"), p);
        for d in &domains {
            if !global.trusted_domains.contains(d) {
                weaker(
                    p,
                    "trusted_domains",
                    format!("{d:?} is not in privacy.trusted_domains"),
                );
            }
        }
        privacy.trusted_domains = domains;
    }
    let hold = match o.hold_fanout_above {
        None => global_hold.cloned(),
        Some(0) => {
            p.push(&format!("{path}.hold_fanout_above"), "must be at least 1");
            global_hold.cloned()
        }
        Some(n) => {
            let n = n as usize;
            if let Some(g) = global_hold
                && n > g.fanout_above
            {
                weaker(
                    p,
                    "hold_fanout_above",
                    format!(
                        "{n} is more than privacy.hold_fanout_above ({})",
                        g.fanout_above
                    ),
                );
            }
            let mut hold = global_hold.cloned().unwrap_or(HoldConfig {
                fanout_above: n,
                canary: DEFAULT_CANARY,
                canary_recipients: Vec::new(),
                timeout: DEFAULT_HOLD_TIMEOUT,
                timeout_action: HoldTimeoutAction::Drop,
            });
            hold.fanout_above = n;
            hold.canary = hold.canary.min(n);
            Some(hold)
        }
    };
    (privacy, hold)
}

#[cfg(test)]
mod tests;

mod events;
mod limits;
pub use events::{AppEventsConfig, EventAddresses};
pub use limits::AppLimitsConfig;
