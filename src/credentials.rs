//! Stored credentials (`[access] users_file`): argon2id hashing and verification, and the cache
//! of verified passwords.
//!
//! - **Cost.** One verification at the OWASP parameters (m = 19 MiB, t = 2, p = 1) takes tens of
//!   milliseconds of one core. It runs on a blocking thread ([`tokio::task::spawn_blocking`])
//!   behind [`HASHING`], a semaphore of [`MAX_PARALLEL_HASHES`] permits, so a flood of AUTH
//!   cannot take every core from the sessions.
//! - **Timing.** A login that has no valid credential (unknown, or all its entries expired) is
//!   verified against a dummy hash with the same parameters: it costs what a wrong password
//!   costs, so the time of a reply does not tell which logins exist.
//! - **Cache.** A password that verified is remembered (login and a BLAKE3 hash of the password
//!   keyed with a random per-process key: no password is kept) for [`CACHE_TTL`], at most
//!   [`CACHE_MAX`] entries (emptied whole when full), so a client that reconnects per message
//!   pays the hash once an hour, not once a message. Failures are never cached: each one is slow
//!   and counts against the AUTH failure budget. The cache is tied to the credential set it was
//!   filled from ([`SuccessCache`]); every config load makes a new set, so after a reload no
//!   cached password is used and a removed password stops working at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use time::Date;

use crate::config::StoredCredentials;

/// OWASP's minimum for Argon2id: 19 MiB, 2 passes, 1 lane.
pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

/// Hashes verified at once, relay-wide.
pub const MAX_PARALLEL_HASHES: usize = 2;
/// How long a verified password is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);
/// Most remembered passwords; the cache is emptied when it would grow past this.
pub const CACHE_MAX: usize = 1024;

/// Permits to run one argon2 verification (see the module documentation).
pub static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_PARALLEL_HASHES);

fn argon2() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// An argon2id PHC string of `password` with a random salt, at the OWASP parameters.
pub fn hash_password(password: &[u8]) -> String {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).expect("16 bytes are a valid salt");
    argon2()
        .hash_password(password, &salt)
        .expect("argon2 hashing with valid parameters")
        .to_string()
}

/// True when `password` matches the PHC string `hash` (its own parameters apply).
pub fn matches(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash no password is checked against for real: the cost of an unknown login.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password(b"mailveil: no such login"))
}

/// A remembered success: the matched credential's `expires` and when it verified.
type Verified = (Option<Date>, Instant);

/// Passwords that verified, for one credential set (one config load) at a time.
struct Remembered {
    /// The set the entries were verified against; a lookup with another set misses.
    of: Option<Arc<StoredCredentials>>,
    entries: HashMap<[u8; 32], Verified>,
}

/// The cache of verified passwords (see the module documentation). It is tied to the
/// credential set it was filled from: a reload makes a new set, so the first success under it
/// empties the cache, and a lookup under a set other than the one it holds misses. So a
/// session that began before a reload can never make an old password valid for new sessions.
pub struct SuccessCache {
    key: [u8; 32],
    inner: Mutex<Remembered>,
}

impl Default for SuccessCache {
    fn default() -> Self {
        SuccessCache {
            key: rand::random(),
            inner: Mutex::new(Remembered {
                of: None,
                entries: HashMap::new(),
            }),
        }
    }
}

impl SuccessCache {
    fn cache_key(&self, login: &str, password: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&(login.len() as u64).to_le_bytes());
        h.update(login.as_bytes());
        h.update(password);
        *h.finalize().as_bytes()
    }

    /// True when this password verified for this login against `stored` within [`CACHE_TTL`]
    /// and the credential it matched has not expired by `today`.
    pub fn hit(
        &self,
        stored: &Arc<StoredCredentials>,
        login: &str,
        password: &[u8],
        today: Date,
    ) -> bool {
        let key = self.cache_key(login, password);
        let inner = self.inner.lock().expect("not poisoned");
        if !inner.of.as_ref().is_some_and(|of| Arc::ptr_eq(of, stored)) {
            return false;
        }
        inner.entries.get(&key).is_some_and(|(expires, at)| {
            at.elapsed() < CACHE_TTL && expires.is_none_or(|last| today <= last)
        })
    }

    fn remember(
        &self,
        stored: &Arc<StoredCredentials>,
        login: &str,
        password: &[u8],
        expires: Option<Date>,
    ) {
        let key = self.cache_key(login, password);
        let mut inner = self.inner.lock().expect("not poisoned");
        if !inner.of.as_ref().is_some_and(|of| Arc::ptr_eq(of, stored)) {
            inner.of = Some(stored.clone());
            inner.entries.clear();
        }
        if inner.entries.len() >= CACHE_MAX {
            inner.entries.clear();
        }
        inner.entries.insert(key, (expires, Instant::now()));
    }
}

/// Verifies `password` against the login's credentials in `stored` valid `today`, or against
/// the dummy hash when it has none; remembers a success in `cache`. Slow: call it on a blocking
/// thread.
pub fn verify_blocking(
    stored: &Arc<StoredCredentials>,
    cache: &SuccessCache,
    login: &str,
    password: &[u8],
    today: Date,
) -> bool {
    let valid: Vec<_> = stored
        .by_login
        .get(login)
        .into_iter()
        .flatten()
        .filter(|c| c.valid_on(today))
        .collect();
    if valid.is_empty() {
        let _ = matches(dummy_hash(), password);
        return false;
    }
    // Newest entries last in the file: try them first (the usual password after a rotation).
    for credential in valid.iter().rev() {
        if matches(&credential.hash, password) {
            cache.remember(stored, login, password, credential.expires);
            return true;
        }
    }
    false
}

/// Today's date in UTC (what `expires` is compared with).
pub fn today() -> Date {
    time::OffsetDateTime::now_utc().date()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_users;

    fn store(entries: &[(&str, &str, Option<&str>)]) -> Arc<StoredCredentials> {
        let mut text = String::new();
        for (login, hash, expires) in entries {
            text.push_str(&format!(
                "[[credential]]\nlogin = {login:?}\nhash = {hash:?}\n"
            ));
            if let Some(e) = expires {
                text.push_str(&format!("expires = {e}\n"));
            }
        }
        Arc::new(parse_users(&text).unwrap())
    }

    #[test]
    fn hashes_are_argon2id_at_the_owasp_parameters_and_verify() {
        let hash = hash_password(b"s3cret");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(matches(&hash, b"s3cret"));
        assert!(!matches(&hash, b"s3cret "));
        assert_ne!(hash, hash_password(b"s3cret"), "a fresh salt each time");
        assert!(!matches("not a hash", b""));
    }

    #[test]
    fn several_passwords_per_login_expiry_and_the_success_cache() {
        let old = hash_password(b"old");
        let new = hash_password(b"new");
        let gone = hash_password(b"gone");
        let s = store(&[
            ("app", &old, None),
            ("app", &new, Some("2026-06-30")),
            ("late", &gone, Some("2020-01-01")),
        ]);
        let c = SuccessCache::default();
        let v = |login: &str, pw: &[u8], day| verify_blocking(&s, &c, login, pw, day);
        let day = Date::from_calendar_date(2026, time::Month::June, 30).unwrap();
        assert!(!c.hit(&s, "app", b"old", day));
        assert!(v("app", b"old", day));
        assert!(v("app", b"new", day));
        assert!(!v("app", b"gone", day), "another login's password");
        assert!(!v("late", b"gone", day), "expired");
        assert!(!v("nobody", b"old", day), "unknown login");
        // Successes are remembered, failures are not.
        assert!(c.hit(&s, "app", b"old", day) && c.hit(&s, "app", b"new", day));
        assert!(!c.hit(&s, "app", b"wrong", day) && !c.hit(&s, "late", b"gone", day));
        assert!(!c.hit(&s, "nobody", b"old", day));
        // The day after `expires`, the new entry is refused, cached or not.
        let next = day.next_day().unwrap();
        assert!(!c.hit(&s, "app", b"new", next));
        assert!(!v("app", b"new", next));
        assert!(v("app", b"old", next));
        // Another set (a reload, even of the same file) finds nothing cached; a success under
        // it empties the cache, so the old set's entries are gone too.
        let reloaded = store(&[("app", &new, None)]);
        assert!(!c.hit(&reloaded, "app", b"old", day));
        assert!(!verify_blocking(&reloaded, &c, "app", b"old", day));
        assert!(verify_blocking(&reloaded, &c, "app", b"new", day));
        assert!(
            !c.hit(&s, "app", b"old", day),
            "the old set's successes are forgotten"
        );
        assert!(c.hit(&reloaded, "app", b"new", day));
    }
}
