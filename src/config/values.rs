//! Typed values inside the configuration (durations, sizes, secrets) and the problem collector
//! that lets validation report every error at once.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{RawDuration, RawSize};
use super::{ConfigError, ConfigProblem, LoadOptions};

/// An I/O error in plain words, without the `(os error N)` suffix (config problems, start-up
/// errors).
pub fn io_words(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    if e.raw_os_error().is_none() {
        // Our own words already (or a library's).
        return e.to_string();
    }
    match e.kind() {
        ErrorKind::NotFound => "no such file or directory".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        ErrorKind::IsADirectory => "it is a directory, not a file".into(),
        ErrorKind::NotADirectory => "a part of the path is a file, not a directory".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

/// Whether this process may create entries in the directory `dir` (write and search access,
/// as the kernel decides it for this user: root may always).
fn writable(dir: &std::path::Path) -> bool {
    use rustix::fs::{Access, access};
    access(dir, Access::WRITE_OK | Access::EXEC_OK).is_ok()
}

/// A message as one line: a problem is printed as `path: message` on a line of its own, so a
/// library's text drawn over several lines (or ending in a line break) is joined.
fn one_line(message: String) -> String {
    if !message.contains(['\n', '\r']) {
        return message;
    }
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a problem at `path` only follows from the value at `broken` being of the wrong
/// kind: the same key (`is required`) or a key below it.
fn follows_from(path: &str, broken: &str) -> bool {
    if path == broken {
        return true;
    }
    if let Some(rest) = path.strip_prefix(broken)
        && (rest.starts_with('.') || rest.starts_with('['))
    {
        return true;
    }
    false
}

/// A credential resolved from the environment or a file. Its `Debug` never shows the value, so
/// a config dump in a log cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: call only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A budget of failures as operators write it: `"20/10m"` is at most 20 in a row, refilled
/// evenly over ten minutes (one every 30 s): a token bucket whose size is the count and whose
/// refill rate is count/period. Parsed when the config loads; printed back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureBudget {
    /// The bucket size: failures allowed back to back.
    pub count: u32,
    /// The time in which a full bucket refills.
    pub period: Duration,
}

impl FailureBudget {
    /// Time to earn back one failure.
    pub fn refill_interval(&self) -> Duration {
        self.period / self.count.max(1)
    }
}

impl std::str::FromStr for FailureBudget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let shape = || format!("{text:?} is not a budget such as \"20/10m\" (failures/period)");
        let (count, period) = text.split_once('/').ok_or_else(shape)?;
        let count: u32 = count.trim().parse().map_err(|_| shape())?;
        let period = period.trim();
        // "20/m" means "20/1m".
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(period)
        } else {
            humantime::parse_duration(&format!("1{period}"))
        }
        .map_err(|_| shape())?;
        if count == 0 {
            return Err("the count must be at least 1".into());
        }
        if period < Duration::from_secs(1) {
            return Err("the period must be at least 1s".into());
        }
        Ok(FailureBudget { count, period })
    }
}

impl fmt::Display for FailureBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
}

/// Collects problems found while validating, each with its key path, and warnings: things
/// that do not stop the relay but that the operator should fix.
#[derive(Default)]
pub(super) struct Problems {
    errors: Vec<ConfigProblem>,
    warnings: Vec<ConfigProblem>,
    /// Key paths whose value was of the wrong kind and was taken out (see `read.rs`).
    broken: Vec<String>,
    options: LoadOptions,
}

impl Problems {
    pub fn new(options: LoadOptions) -> Problems {
        Problems {
            options,
            ..Problems::default()
        }
    }

    /// Records a problem at `path`, unless it only follows from a value already reported as
    /// being of the wrong kind: on that key (`is required`) or below it. (An entry-level
    /// problem that follows from one, `upstream[0]: needs host or dir` after `upstream[0].host`
    /// was not text, is left out by its check, asking [`Problems::is_broken`].)
    pub fn push(&mut self, path: &str, message: impl Into<String>) {
        if self.broken.iter().any(|b| follows_from(path, b)) {
            return;
        }
        self.errors.push(ConfigProblem {
            path: path.to_string(),
            message: one_line(message.into()),
        });
    }

    /// Records that the value at `path` is of the wrong kind (and was taken out).
    pub fn push_broken(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigProblem {
            path: path.to_string(),
            message: one_line(message.into()),
        });
        self.broken.push(path.to_string());
    }

    /// Whether the value at `path` was of the wrong kind (reported and taken out).
    pub fn is_broken(&self, path: &str) -> bool {
        self.broken.iter().any(|b| b == path)
    }

    /// True when an error was reported at `path` (or a key below it).
    pub fn has_error_at(&self, path: &str) -> bool {
        self.errors.iter().any(|e| follows_from(&e.path, path))
    }

    /// Checks that `dir` is, or can be created as, a directory (`spool.dir`, a capture
    /// upstream's `dir`): a file in its place stops the relay at start.
    pub fn directory(&mut self, path: &str, dir: &std::path::Path) {
        if dir.as_os_str().is_empty() {
            self.push(path, "must not be empty: name a directory");
            return;
        }
        let not_writable = "is not writable by this user (run check-config as the relay's user)";
        if let Ok(m) = std::fs::metadata(dir) {
            if !m.is_dir() {
                self.push(
                    path,
                    format!("{} is a file, not a directory", dir.display()),
                );
            } else if !writable(dir) {
                self.push(path, format!("{} {not_writable}", dir.display()));
            }
            return;
        }
        for ancestor in dir.ancestors().skip(1) {
            // A relative path's last ancestor is "": the working directory.
            let existing = if ancestor.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                ancestor
            };
            if let Ok(m) = std::fs::metadata(existing) {
                let why = if !m.is_dir() {
                    "is a file, not a directory"
                } else if !writable(existing) {
                    not_writable
                } else {
                    return;
                };
                self.push(
                    path,
                    format!(
                        "{} cannot be created: {} {why}",
                        dir.display(),
                        existing.display()
                    ),
                );
                return;
            }
        }
    }

    pub fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(ConfigProblem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// The warnings so far (they travel with a valid config; see `Config::warnings`).
    pub fn take_warnings(&mut self) -> Vec<ConfigProblem> {
        std::mem::take(&mut self.warnings)
    }

    /// The value, or every problem, those of one section or entry (`server`, `upstream[1]`)
    /// together, sections and entries in the order their first problem was found.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigError> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        let group = |path: &str| -> String {
            let end = path.find('.').unwrap_or(path.len());
            match path.find(']') {
                Some(i) if i < end => path[..=i].to_string(),
                _ => path[..end].to_string(),
            }
        };
        let mut order: Vec<String> = Vec::new();
        for e in &self.errors {
            let g = group(&e.path);
            if !order.contains(&g) {
                order.push(g);
            }
        }
        let mut problems = self.errors;
        problems.sort_by_key(|e| order.iter().position(|g| *g == group(&e.path)));
        Err(ConfigError { problems })
    }

    /// Warns when a secret file (`*_file`, a DKIM key) may be read or replaced by another user
    /// (see [`crate::private_files::secret_exposure`]). A warning, not an error: a relay that
    /// refused to start or reload over a file mode would stop the mail of a deployment that has
    /// worked so far (Kubernetes mounts Secret files 0644 unless told otherwise); the warning
    /// is repeated at every start and reload until the mode is fixed.
    pub fn check_secret_file(&mut self, path: &str, file: &std::path::Path) {
        if let Some(why) = crate::private_files::secret_exposure(file) {
            self.warn(path, format!("secret file {why}"));
        }
    }

    pub fn required<T>(&mut self, path: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.push(path, "is required");
        }
        value
    }

    pub fn positive(&mut self, path: &str, value: Option<u64>, default: usize) -> usize {
        match value {
            Some(0) => {
                self.push(path, "must be at least 1");
                default
            }
            Some(n) => n as usize,
            None => default,
        }
    }

    /// Parses an optional `"N/period"` budget, reporting a bad one at `path`.
    pub fn budget(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: FailureBudget,
    ) -> FailureBudget {
        match value.map(str::parse::<FailureBudget>) {
            None => default,
            Some(Ok(budget)) => budget,
            Some(Err(message)) => {
                self.push(path, message);
                default
            }
        }
    }

    /// Reports `path.<key>` with `why` for each key that is set but does not apply.
    pub fn not_applicable(&mut self, path: &str, keys: &[(&str, bool)], why: &str) {
        for (key, set) in keys {
            if *set {
                self.push(&format!("{path}.{key}"), why);
            }
        }
    }

    pub fn socket_addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    format!("{value:?} is not an address:port such as 127.0.0.1:2525"),
                );
                None
            }
        }
    }

    /// Resolves `<prefix>.<what>_env` / `<prefix>.<what>_file` into a secret. Exactly one may be
    /// set; `required` says whether neither is an error.
    pub fn secret(
        &mut self,
        prefix: &str,
        what: &str,
        env: Option<String>,
        file: Option<String>,
        required: bool,
    ) -> Option<Secret> {
        match (env, file) {
            (Some(_), Some(_)) => {
                self.push(
                    &format!("{prefix}.{what}_env"),
                    format!("set {what}_env or {what}_file, not both"),
                );
                None
            }
            (Some(var), None) if var.is_empty() || var.contains(['=', '\0']) => {
                self.push(
                    &format!("{prefix}.{what}_env"),
                    format!("{var:?} is not the name of an environment variable"),
                );
                None
            }
            // Not read: the relay that runs with this file will read it.
            (Some(_), None) if self.options.skip_env_secrets => Some(Secret(String::new())),
            (Some(var), None) => match std::env::var(&var) {
                Ok(v) if !v.is_empty() => Some(Secret(v)),
                Ok(_) => {
                    self.push(
                        &format!("{prefix}.{what}_env"),
                        format!("environment variable {var} is empty"),
                    );
                    None
                }
                Err(_) => {
                    self.push(
                        &format!("{prefix}.{what}_env"),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            },
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(v) => {
                    self.check_secret_file(&format!("{prefix}.{what}_file"), path.as_ref());
                    let v = v.trim_end_matches(['\r', '\n']).to_string();
                    if v.is_empty() {
                        self.push(&format!("{prefix}.{what}_file"), format!("{path} is empty"));
                        None
                    } else {
                        Some(Secret(v))
                    }
                }
                Err(e) => {
                    self.push(
                        &format!("{prefix}.{what}_file"),
                        format!("cannot read {path}: {}", io_words(&e)),
                    );
                    None
                }
            },
            (None, None) => {
                if required {
                    self.push(
                        &format!("{prefix}.{what}_env"),
                        format!("set {what}_env or {what}_file"),
                    );
                }
                None
            }
        }
    }
}

/// A sustained message rate (messages per second) as a provider entry sets it: positive and
/// finite, checked when the config loads, so no throttle ever paces by zero, a negative number
/// or NaN.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct PerSecond(f64);

impl PerSecond {
    /// `None` unless `value` is a positive finite number.
    pub const fn new(value: f64) -> Option<PerSecond> {
        if value.is_finite() && value > 0.0 {
            Some(PerSecond(value))
        } else {
            None
        }
    }

    pub const fn get(self) -> f64 {
        self.0
    }
}

/// Parses `90`, `"90s"`, `"5m"`, `"3d"`, `"1h 30m"`.
pub(super) fn duration(raw: &RawDuration, path: &str, p: &mut Problems) -> Option<Duration> {
    match raw {
        RawDuration::Seconds(s) => Some(Duration::from_secs(*s)),
        RawDuration::Text(t) => match humantime::parse_duration(t.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                p.push(
                    path,
                    format!("{t:?} is not a duration such as \"90s\", \"5m\" or \"3d\": {e}"),
                );
                None
            }
        },
    }
}

/// Parses `26214400` or `"25MiB"` / `"25 MB"`.
pub(super) fn size(raw: &RawSize, path: &str, p: &mut Problems) -> Option<u64> {
    let bytes = match raw {
        RawSize::Bytes(b) => *b,
        RawSize::Text(t) => match t.trim().parse::<bytesize::ByteSize>() {
            Ok(b) => b.as_u64(),
            Err(e) => {
                p.push(
                    path,
                    format!("{t:?} is not a size such as 26214400 or \"25MiB\": {e}"),
                );
                return None;
            }
        },
    };
    if bytes == 0 {
        p.push(path, "must be greater than zero");
        return None;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_budgets_parse_print_and_parse_again() {
        for (text, count, secs, printed) in [
            ("20/10m", 20, 600, "20/10m"),
            ("5/m", 5, 60, "5/1m"),
            (" 600 / 1h ", 600, 3600, "600/1h"),
            ("1/90s", 1, 90, "1m 30s"),
        ] {
            let b: FailureBudget = text.parse().unwrap();
            assert_eq!(
                (b.count, b.period),
                (count, Duration::from_secs(secs)),
                "{text}"
            );
            let shown = b.to_string();
            assert!(shown.ends_with(printed), "{text} printed as {shown}");
            assert_eq!(shown.parse::<FailureBudget>().unwrap(), b, "{shown}");
        }
        assert_eq!(
            "20/10m".parse::<FailureBudget>().unwrap().refill_interval(),
            Duration::from_secs(30)
        );
        for bad in [
            "", "20", "x/10m", "20/soon", "0/10m", "20/0s", "20/500ms", "-1/m",
        ] {
            assert!(bad.parse::<FailureBudget>().is_err(), "{bad:?} accepted");
        }
    }
}
