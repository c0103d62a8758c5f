//! `[access]`: who may relay (networks, users) and the AUTH failure budget.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::RawAccess;
use super::users::{StoredCredentials, parse_users, users_file_exposure};
use super::values::{FailureBudget, Problems, Secret, duration, io_words};

/// Defaults of the AUTH failure budget, named so tests and docs refer to one value.
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
pub struct AccessConfig {
    /// Clients in these networks may relay without AUTH.
    pub networks: Vec<IpNet>,
    pub users: Vec<User>,
    /// Hashed credentials from `access.users_file` (empty without one); a new value on every
    /// config load (the cache of verified passwords is tied to it, see `crate::credentials`).
    pub credentials: Arc<StoredCredentials>,
    /// Failed AUTH attempts one source may make (token bucket); when it is empty the source is
    /// banned from AUTH for `auth_ban`.
    pub auth_failures_per_source: FailureBudget,
    /// Failed AUTH attempts of all sources together; when it is empty AUTH is refused until it
    /// refills (a guessing fleet spread over many addresses).
    pub auth_failures_total: FailureBudget,
    pub auth_ban: Duration,
}

impl AccessConfig {
    /// True when some login can authenticate (AUTH is offered under TLS).
    pub fn auth_enabled(&self) -> bool {
        !self.users.is_empty() || !self.credentials.is_empty()
    }

    /// Every configured login.
    pub fn logins(&self) -> impl Iterator<Item = &str> {
        self.users
            .iter()
            .map(|u| u.name.as_str())
            .chain(self.credentials.logins())
    }

    /// True when `login` is configured (in `access.users` or the users file).
    pub fn has_login(&self, login: &str) -> bool {
        self.users.iter().any(|u| u.name == login) || self.credentials.has_login(login)
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: Secret,
}

pub(super) fn validate_access(raw: RawAccess, p: &mut Problems) -> AccessConfig {
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
    let credentials = match raw.users_file {
        Some(file) => read_users_file(&file, &users, p),
        None => StoredCredentials::default(),
    };
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
        credentials: Arc::new(credentials),
        auth_failures_per_source,
        auth_failures_total,
        auth_ban,
    }
}

/// Reads and checks `access.users_file`; every problem is reported under that key.
fn read_users_file(file: &str, users: &[User], p: &mut Problems) -> StoredCredentials {
    const KEY: &str = "access.users_file";
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            p.push(KEY, format!("cannot read {file}: {}", io_words(&e)));
            return StoredCredentials::default();
        }
    };
    if let Some(why) = users_file_exposure(file.as_ref()) {
        p.push(KEY, format!("users file {why}"));
    }
    match parse_users(&text) {
        Ok(store) => {
            for user in users.iter().filter(|u| store.has_login(&u.name)) {
                p.push(
                    KEY,
                    format!(
                        "login {:?} is also in access.users; keep it in one place",
                        user.name
                    ),
                );
            }
            store
        }
        Err(errors) => {
            for e in errors {
                p.push(KEY, format!("{file}: {e}"));
            }
            StoredCredentials::default()
        }
    }
}
