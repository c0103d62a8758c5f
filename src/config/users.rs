//! `[access] users_file`: stored credentials, one `[[credential]]` per password.
//!
//! ```toml
//! [[credential]]
//! login = "billing"
//! hash = "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>"
//! created = 2026-12-01          # optional, for the operator
//! expires = 2027-03-01          # optional: refused from the day after (UTC)
//! ```
//!
//! Several entries may share a login: each is a valid password, so a password can be rotated
//! without downtime (add the new entry, reload, switch the client, remove the old one, reload).
//! The file is read at start and on every reload through the same validation: a broken file is
//! a config error at start and a refused reload (the running credentials stay) later. It must
//! not be readable by other users (see [`users_file_exposure`]). A Dovecot-style `{ARGON2ID}`
//! prefix is accepted and stripped so entries can be pasted from `doveadm pw`.

use std::collections::HashMap;
use std::path::Path;

use argon2::PasswordHash;
use serde::Deserialize;
use time::Date;

/// Most entries one login may have: verification tries each, so more would make a wrong
/// password for that login slower than one for another login (a timing hint).
pub const MAX_CREDENTIALS_PER_LOGIN: usize = 3;

/// One stored password of a login.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The PHC string (argon2id), checked to parse when the file loads.
    pub hash: String,
    pub created: Option<Date>,
    /// Last day (UTC) on which the password is accepted.
    pub expires: Option<Date>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("hash", &"(hidden)")
            .field("created", &self.created)
            .field("expires", &self.expires)
            .finish()
    }
}

impl Credential {
    /// False once the day after `expires` has begun.
    pub fn valid_on(&self, today: Date) -> bool {
        self.expires.is_none_or(|last| today <= last)
    }
}

/// The users file's credentials by login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredCredentials {
    pub by_login: HashMap<String, Vec<Credential>>,
}

impl StoredCredentials {
    /// True without a users file (or with an empty one).
    pub fn is_empty(&self) -> bool {
        self.by_login.is_empty()
    }

    pub fn has_login(&self, login: &str) -> bool {
        self.by_login.contains_key(login)
    }

    pub fn logins(&self) -> impl Iterator<Item = &str> {
        self.by_login.keys().map(String::as_str)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    credential: Vec<RawCredential>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    login: toml::Spanned<String>,
    hash: toml::Spanned<String>,
    created: Option<toml::Spanned<toml::value::Datetime>>,
    expires: Option<toml::Spanned<toml::value::Datetime>>,
}

/// Parses the text of a users file; each error names the entry and its line.
pub fn parse_users(text: &str) -> Result<StoredCredentials, Vec<String>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| vec![one_line(&e.to_string())])?;
    let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut errors = Vec::new();
    let mut out = StoredCredentials::default();
    for (i, c) in raw.credential.into_iter().enumerate() {
        // `credential[i] (line L).field`: the entry and the line of the field at fault.
        let at = |field: &str, span: std::ops::Range<usize>| {
            format!("credential[{i}] (line {}).{field}", line(span.start))
        };
        let login_span = c.login.span();
        let login = c.login.into_inner();
        if login.is_empty()
            || login
                .chars()
                .any(|ch| ch.is_control() || ch.is_whitespace())
        {
            errors.push(format!(
                "{}: {login:?} is not a valid login name",
                at("login", login_span)
            ));
            continue;
        }
        let hash_at = at("hash", c.hash.span());
        let hash = c.hash.get_ref().trim();
        let hash = hash.strip_prefix("{ARGON2ID}").unwrap_or(hash).to_string();
        match PasswordHash::new(&hash) {
            Ok(parsed) if parsed.algorithm.as_str() == "argon2id" => {}
            Ok(parsed) => {
                errors.push(format!(
                    "{hash_at}: algorithm {} is not accepted; use argon2id (`mailveil passwd`)",
                    parsed.algorithm
                ));
                continue;
            }
            Err(e) => {
                errors.push(format!(
                    "{hash_at}: not an argon2id PHC string ({e}); make one with `mailveil passwd`"
                ));
                continue;
            }
        }
        let mut date = |what: &str, value: Option<toml::Spanned<toml::value::Datetime>>| {
            let d = value?;
            let date = toml_date(d.get_ref());
            if date.is_none() {
                errors.push(format!(
                    "{}: {} is not a date (write it as YYYY-MM-DD)",
                    at(what, d.span()),
                    d.get_ref()
                ));
            }
            date
        };
        let created = date("created", c.created);
        let expires = date("expires", c.expires);
        let entries = out.by_login.entry(login.clone()).or_default();
        if entries.len() == MAX_CREDENTIALS_PER_LOGIN {
            errors.push(format!(
                "{}: login {login:?} has more than {MAX_CREDENTIALS_PER_LOGIN} credentials; \
                 remove old ones",
                at("login", login_span)
            ));
            continue;
        }
        entries.push(Credential {
            hash,
            created,
            expires,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A date (a TOML local date, or the date part of a date-time).
fn toml_date(d: &toml::value::Datetime) -> Option<Date> {
    let date = d.date?;
    let month = time::Month::try_from(date.month).ok()?;
    Date::from_calendar_date(i32::from(date.year), month, date.day).ok()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why the users file is too open, or `None`: as [`crate::private_files::secret_exposure`],
/// and stricter: a file the relay's own user owns must not be group-readable at all (make it
/// 0600). Group-readable stays fine for a file someone else owns and shares with the relay's
/// group (a Kubernetes Secret volume with `fsGroup` and mode 0440).
pub fn users_file_exposure(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if let Some(why) = crate::private_files::secret_exposure(path) {
        return Some(why);
    }
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o777;
    if mode & 0o070 != 0 && Some(meta.uid()) == crate::private_files::process_uid() {
        return Some(format!(
            "{} is readable by its group (mode {mode:04o}); make it 0600 (`chmod 600 {}`)",
            path.display(),
            path.display()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                        J0bEP6VSOpbPX4rgC4kWIpPSmIc0mnJpJjoVzaI+e8o";

    #[test]
    fn parses_entries_and_groups_them_by_login() {
        let text = format!(
            "[[credential]]\nlogin = \"app\"\nhash = \"{HASH}\"\ncreated = 2026-01-01\n\
             [[credential]]\nlogin = \"app\"\nhash = \"{{ARGON2ID}}{HASH}\"\nexpires = 2026-12-31\n\
             [[credential]]\nlogin = \"other\"\nhash = \"{HASH}\"\n"
        );
        let creds = parse_users(&text).unwrap();
        let app = &creds.by_login["app"];
        assert_eq!(app.len(), 2);
        assert_eq!(app[1].hash, HASH, "the Dovecot prefix is stripped");
        assert_eq!(app[0].created.unwrap().to_string(), "2026-01-01");
        let last = app[1].expires.unwrap();
        assert!(app[1].valid_on(last));
        assert!(!app[1].valid_on(last.next_day().unwrap()));
        assert!(app[0].valid_on(last.next_day().unwrap()));
        assert_eq!(creds.by_login["other"].len(), 1);
        assert_eq!(parse_users("").unwrap(), StoredCredentials::default());
    }

    #[test]
    fn errors_name_the_entry_and_its_line() {
        let text = format!(
            "[[credential]]\nlogin = \"a\"\nhash = \"{HASH}\"\n\n\
             [[credential]]\nlogin = \"b\"\nhash = \"secret\"\n\
             [[credential]]\nlogin = \"c\"\nhash = \"$2b$12$abcdefghijklmnopqrstuv\"\n\
             [[credential]]\nlogin = \"d\"\nhash = \"{HASH}\"\nexpires = 12:00:00\n"
        );
        let errors = parse_users(&text).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("credential[1] (line 7).hash"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("credential[2] (line 10).hash"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("credential[3] (line 14).expires"),
            "{errors:?}"
        );
        let errors = parse_users("[[credential]]\nlogin = \"a\"\nhash = 1\n").unwrap_err();
        assert!(errors[0].contains("line 3"), "{errors:?}");
        let errors = parse_users("[[credential]]\nlogin = \"a\"\npassword = \"x\"\n").unwrap_err();
        assert!(errors[0].contains("password"), "{errors:?}");
    }

    #[test]
    fn a_login_has_at_most_three_credentials() {
        let one = format!("[[credential]]\nlogin = \"a\"\nhash = \"{HASH}\"\n");
        assert!(parse_users(&one.repeat(3)).is_ok());
        let errors = parse_users(&one.repeat(4)).unwrap_err();
        assert!(errors[0].contains("more than 3"), "{errors:?}");
    }

    #[test]
    fn an_own_group_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("users.toml");
        std::fs::write(&file, "").unwrap();
        for (mode, exposed) in [(0o600, false), (0o400, false), (0o640, true), (0o644, true)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(users_file_exposure(&file).is_some(), exposed, "{mode:o}");
        }
    }
}
