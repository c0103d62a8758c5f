//! `mailveil passwd`: makes one `[[credential]]` entry for `access.users_file`.
//!
//! The password comes from stdin: on a terminal it is asked twice with echo off; otherwise one
//! line is read (scripts, Kubernetes jobs). `--generate` makes a random one instead. The entry
//! (an argon2id hash at the OWASP parameters, `created` today, optional `expires`) is printed,
//! or appended to `--file` by writing a new file (mode 0600) and renaming it over the old one,
//! so the relay never reads a half-written file. The result is parsed as the relay would parse
//! it before anything is written.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rand::Rng;
use time::Date;

use crate::config::parse_users;
use crate::credentials;

/// Length of a `--generate`d password (letters and digits: about 190 bits).
pub const GENERATED_LENGTH: usize = 32;

#[derive(Debug, clap::Args)]
pub struct PasswdArgs {
    /// The login the client will give in AUTH.
    #[arg(long)]
    pub login: String,
    /// Append the entry to this users file (created with mode 0600 if missing) instead of
    /// printing it.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Last day (YYYY-MM-DD, UTC) the password is accepted.
    #[arg(long, value_name = "DATE")]
    pub expires: Option<String>,
    /// Make a random password and print it once (on stdout with --file, else on stderr).
    #[arg(long)]
    pub generate: bool,
}

pub fn run(args: PasswdArgs) -> ExitCode {
    match passwd(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailveil passwd: {e}");
            ExitCode::from(64)
        }
    }
}

fn passwd(args: PasswdArgs) -> Result<(), String> {
    if args.login.is_empty()
        || args
            .login
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!("{:?} is not a valid login name", args.login));
    }
    let expires = args.expires.as_deref().map(parse_date).transpose()?;
    let password = if args.generate {
        generate()
    } else {
        read_password()?
    };
    let entry = entry(
        &args.login,
        &credentials::hash_password(password.as_bytes()),
        credentials::today(),
        expires,
    );
    match &args.file {
        None => {
            print!("{entry}");
            if args.generate {
                eprintln!("generated password for {}: {password}", args.login);
            }
        }
        Some(path) => {
            append(path, &entry)?;
            if args.generate {
                println!("{password}");
            }
            eprintln!(
                "added a credential for {} to {}; reload the relay to use it",
                args.login,
                path.display()
            );
        }
    }
    Ok(())
}

/// One `[[credential]]` block.
pub fn entry(login: &str, hash: &str, created: Date, expires: Option<Date>) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = format!(
        "[[credential]]\nlogin = {}\nhash = {}\ncreated = {created}\n",
        quote(login),
        quote(hash)
    );
    if let Some(last) = expires {
        out.push_str(&format!("expires = {last}\n"));
    }
    out
}

fn parse_date(text: &str) -> Result<Date, String> {
    let bad = || format!("--expires {text:?} is not a date (YYYY-MM-DD)");
    let mut parts = text.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (y, m, d) = (
        y.parse::<i32>().map_err(|_| bad())?,
        m.parse::<u8>().map_err(|_| bad())?,
        d.parse::<u8>().map_err(|_| bad())?,
    );
    let month = time::Month::try_from(m).map_err(|_| bad())?;
    Date::from_calendar_date(y, month, d).map_err(|_| bad())
}

fn generate() -> String {
    let mut rng = rand::rng();
    (0..GENERATED_LENGTH)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect()
}

fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    let password = if rustix::termios::isatty(&stdin) {
        let first = prompt("Password: ")?;
        let again = prompt("Again: ")?;
        if first != again {
            return Err("the two passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}

/// Asks on stderr and reads one line from the terminal on stdin with echo off (restored after,
/// also on error).
fn prompt(text: &str) -> Result<String, String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&stdin).map_err(|e| format!("cannot read the terminal mode: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)
        .map_err(|e| format!("cannot turn echo off: {e}"))?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Flush, &saved);
    eprintln!();
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Appends `entry` to the users file at `path` atomically (new file, fsync, rename).
fn append(path: &Path, entry: &str) -> Result<(), String> {
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut text = old;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(entry);
    if let Err(errors) = parse_users(&text) {
        return Err(format!(
            "{} would not be a valid users file: {}",
            path.display(),
            errors.join("; ")
        ));
    }
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut f = crate::private_files::create_options().open(&tmp)?;
        crate::private_files::tighten_file(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_the_relay_parses_them_and_verify() {
        let day = parse_date("2027-03-01").unwrap();
        let hash = credentials::hash_password(b"pw\"x");
        let text = entry("app \"q\"", &hash, day, Some(day));
        let parsed = parse_users(&text).unwrap_err();
        assert!(
            parsed[0].contains("login"),
            "a login with spaces: {parsed:?}"
        );
        let text = entry("app", &hash, day, Some(day));
        let parsed = parse_users(&text).unwrap();
        let c = &parsed.by_login["app"][0];
        assert_eq!((c.created, c.expires), (Some(day), Some(day)));
        assert!(credentials::matches(&c.hash, b"pw\"x"));
        assert!(parse_date("2027-02-30").is_err() && parse_date("tomorrow").is_err());
    }

    #[test]
    fn appending_keeps_old_entries_and_makes_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("users.toml");
        let day = parse_date("2026-01-01").unwrap();
        append(
            &file,
            &entry("a", &credentials::hash_password(b"1"), day, None),
        )
        .unwrap();
        append(
            &file,
            &entry("a", &credentials::hash_password(b"2"), day, None),
        )
        .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(parse_users(&text).unwrap().by_login["a"].len(), 2);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A fourth entry for one login would not load: refused, file unchanged.
        append(
            &file,
            &entry("a", &credentials::hash_password(b"3"), day, None),
        )
        .unwrap();
        let before = std::fs::read_to_string(&file).unwrap();
        let err = append(
            &file,
            &entry("a", &credentials::hash_password(b"4"), day, None),
        );
        assert!(err.unwrap_err().contains("more than 3"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
        assert_eq!(generate().len(), GENERATED_LENGTH);
    }
}
