//! `check-config` = `run`: what would stop `run` at start (TLS files that do not pair, swapped
//! files, unusable keys and CA files, a spool path that is a file) is a config problem with its
//! key path and exit 64 in both; every entry of an array of tables keeps its own index; messages
//! are plain words; `--no-secrets` checks a file without its environment. And the start-up
//! errors that only `run` can meet name their listener, its address and key, each text once.

use crate::support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{BIN, PATIENCE, make_pki, spawn_mailveil};

/// A valid base: loopback SMTP on a port nobody listens on, a spool and a capture upstream in
/// `dir`.
fn base(dir: &Path) -> String {
    let smtp: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    base_listening(dir, smtp)
}

fn base_listening(dir: &Path, smtp: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"{smtp}\"\n[spool]\ndir = \"{d}/spool\"\n[[upstream]]\nname = \"outbox\"\ndir = \"{d}/outbox\"\n",
        d = dir.display()
    )
}

fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("mailveil.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn check_config(config: &str, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config").args(extra).args(["-c", config]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `mailveil run -c config` until it exits (bounded); its exit code and output.
fn run_until_exit(dir: &Path, config: &str, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut proc_ = spawn_mailveil(&["run", "-c", config], &dir.join("run.log"), envs);
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if let Ok(Some(status)) = proc_.child.try_wait() {
            return (status.code(), proc_.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("run did not stop; log:\n{}", proc_.log_text());
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The problem lines of check-config's report (after its first line).
fn problem_lines(err: &str) -> Vec<String> {
    err.lines().skip(1).map(str::to_string).collect()
}

/// Asserts that `err` names `path` with a message containing `words`.
fn assert_problem(err: &str, path: &str, words: &str) {
    assert!(
        err.lines()
            .any(|l| l.trim_start().starts_with(&format!("{path}: ")) && l.contains(words)),
        "no `{path}: ...{words}...` in:\n{err}"
    );
}

fn tls_section(cert: &Path, key: &Path) -> String {
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// check-config and run refuse `text` the same way: exit 64, `path: ...words...`.
fn refused_by_both(dir: &Path, text: &str, path: &str, words: &str) {
    let config = write(dir, text);
    let out = check_config(&config, &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert_problem(&stderr(&out), path, words);
    let (code, log) = run_until_exit(dir, &config, &[]);
    assert_eq!(
        code,
        Some(64),
        "run refuses it as check-config does:\n{log}"
    );
    assert_problem(&log, path, words);
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_by_check_config_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pki(dir.path(), "a", &["localhost"]);
    let b = make_pki(dir.path(), "b", &["localhost"]);
    let good = format!(
        "{}{}",
        base(dir.path()),
        tls_section(&a.cert_file, &a.key_file)
    );
    let out = check_config(&write(dir.path(), &good), &[], &[]);
    assert!(
        out.status.success(),
        "the matching pair passes: {}",
        stderr(&out)
    );

    let text = format!(
        "{}{}",
        base(dir.path()),
        tls_section(&a.cert_file, &b.key_file)
    );
    refused_by_both(
        dir.path(),
        &text,
        "server.tls.key",
        "does not match the certificate",
    );
}

#[test]
fn swapped_cert_and_key_files_are_refused_and_named_as_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pki(dir.path(), "a", &["localhost"]);
    let text = format!(
        "{}{}",
        base(dir.path()),
        tls_section(&a.key_file, &a.cert_file)
    );
    refused_by_both(dir.path(), &text, "server.tls.cert", "swapped");
}

#[test]
fn missing_unreadable_and_unusable_tls_files_are_config_problems() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pki(dir.path(), "a", &["localhost"]);
    let missing = dir.path().join("missing-key.pem");
    let text = format!(
        "{}{}",
        base(dir.path()),
        tls_section(&a.cert_file, &missing)
    );
    refused_by_both(
        dir.path(),
        &text,
        "server.tls.key",
        "no such file or directory",
    );

    // A PEM private key TLS cannot use (not RSA, ECDSA or Ed25519 DER).
    let odd = dir.path().join("odd-key.pem");
    std::fs::write(
        &odd,
        "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = format!("{}{}", base(dir.path()), tls_section(&a.cert_file, &odd));
    refused_by_both(
        dir.path(),
        &text,
        "server.tls.key",
        "not a key type TLS can use",
    );

    // An encrypted key (the relay cannot ask for its pass phrase).
    let encrypted = dir.path().join("encrypted-key.pem");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = format!(
        "{}{}",
        base(dir.path()),
        tls_section(&a.cert_file, &encrypted)
    );
    refused_by_both(dir.path(), &text, "server.tls.key", "encrypted private key");

    // A PEM certificate whose content is no certificate.
    let garbled = dir.path().join("garbled-cert.pem");
    std::fs::write(
        &garbled,
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let text = format!("{}{}", base(dir.path()), tls_section(&garbled, &a.key_file));
    refused_by_both(
        dir.path(),
        &text,
        "server.tls.cert",
        "not a valid X.509 certificate",
    );

    // A certificate file with no PEM certificate at all.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let text = format!("{}{}", base(dir.path()), tls_section(&junk, &a.key_file));
    refused_by_both(
        dir.path(),
        &text,
        "server.tls.cert",
        "holds no TLS certificate",
    );
}

#[test]
fn an_upstream_ca_file_that_holds_no_certificate_is_refused_with_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pki(dir.path(), "a", &["localhost"]);
    let text = format!(
        "{}[[upstream]]\nname = \"smtp\"\nhost = \"localhost\"\nca_file = \"{}\"\n",
        base(dir.path()),
        a.key_file.display()
    );
    refused_by_both(
        dir.path(),
        &text,
        "upstream[1].ca_file",
        "holds a private key",
    );
}

#[test]
fn every_entry_keeps_its_index_and_reports_all_its_problems_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
max_recipients = "many"
[spool]
dir = "{d}/spool"
[access]
networks = ["10.0.0.0/8", 5, "nowhere"]
[[access.users]]
name = 7
password_file = "{d}/no-such-password"
[[access.users]]
password_file = "{d}/no-such-password"
[[upstream]]
name = "first"
host = "smtp.example.net"
port = "x"
tls = "maybe"
timeout = true
[[upstream]]
name = "bad name"
[[upstream]]
name = "third"
dir = "{d}/outbox"
port = 25
[[provider]]
name = "gmail"
burst = "x"
max_connections = 0
[[provider]]
name = "yahoo"
messages_per_second = -1.0
[[dkim]]
domain = "example.com"
selector = 5
key_file = "{d}/no-such-key.pem"
[[dkim]]
selector = "s1"
key_file = "{d}/no-such-key.pem"
[shaping]
[[shaping.rule]]
contains = "TS01"
action = "slow"
factor = "half"
[[shaping.rule]]
contains = "TS02"
"#,
        port = support::free_port(),
        d = dir.path().display()
    );
    let out = check_config(&write(dir.path(), &text), &[], &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    for (path, words) in [
        ("server.max_recipients", "must be a whole number"),
        ("access.networks[1]", "must be text in quotes, not 5"),
        ("access.networks[2]", "is not a CIDR network"),
        ("access.users[0].name", "must be text in quotes, not 7"),
        ("access.users[0].password_file", "cannot read"),
        ("access.users[1].name", "is required"),
        ("access.users[1].password_file", "cannot read"),
        (
            "upstream[0].port",
            "must be a whole number from 0 to 65535, not the text \"x\"",
        ),
        ("upstream[0].tls", "is not one of starttls, implicit, none"),
        ("upstream[0].timeout", "must be a duration"),
        ("upstream[1].name", "must be letters"),
        ("upstream[1]", "needs host"),
        ("upstream[2].port", "only applies to an SMTP upstream"),
        ("provider[0].burst", "must be a whole number"),
        ("provider[0].max_connections", "must be at least 1"),
        (
            "provider[1].messages_per_second",
            "must be a positive number",
        ),
        ("dkim[0].selector", "must be text in quotes, not 5"),
        ("dkim[0].key_file", "cannot read"),
        ("dkim[1].domain", "is required"),
        ("dkim[1].key_file", "cannot read"),
        (
            "shaping.rule[0].factor",
            "must be a number, not the text \"half\"",
        ),
        ("shaping.rule[1].action", "is required"),
    ] {
        assert_problem(&err, path, words);
    }
    let lines = problem_lines(&err);
    for line in &lines {
        assert!(
            line.starts_with("  ") && line.len() > 2,
            "odd line {line:?} in:\n{err}"
        );
        for raw in [
            "invalid type",
            "invalid value",
            "expected u",
            "untagged enum",
            "in `",
        ] {
            assert!(!line.contains(raw), "serde text {raw:?} in {line:?}");
        }
    }
    // A value of the wrong kind is reported once, not again as missing.
    assert!(!err.contains("upstream[0].port: is required"), "{err}");
    assert!(!err.contains("access.users[0].name: is required"), "{err}");
    assert!(!err.contains("dkim[0].selector: is required"), "{err}");
    // Each entry's problems stand together.
    let first = lines
        .iter()
        .position(|l| l.contains("upstream[1]"))
        .unwrap();
    let last = lines
        .iter()
        .rposition(|l| l.contains("upstream[0]"))
        .unwrap();
    assert!(
        last < first,
        "upstream[0]'s problems before upstream[1]'s:\n{err}"
    );
}

#[test]
fn an_empty_spool_dir_or_a_file_in_its_place_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path()).replace(
        &format!("dir = \"{}/spool\"", dir.path().display()),
        "dir = \"\"",
    );
    refused_by_both(dir.path(), &text, "spool.dir", "must not be empty");

    std::fs::write(dir.path().join("spool"), "a file").unwrap();
    refused_by_both(
        dir.path(),
        &base(dir.path()),
        "spool.dir",
        "is a file, not a directory",
    );
}

#[test]
fn a_toml_syntax_error_is_one_line_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(&write(dir.path(), "[server\nlisten = 1\n"), &[], &[]);
    assert_eq!(out.status.code(), Some(64));
    let lines = problem_lines(&stderr(&out));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("  (file): line 1, column 8: "),
        "{lines:?}"
    );
}

#[test]
fn an_unset_password_variable_is_one_problem_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[[upstream]]\nname = \"smtp\"\nhost = \"smtp.example.net\"\nusername = \"u\"\npassword_env = \"MAILVEIL_TEST_UNSET_PASSWORD\"\n",
        base(dir.path())
    );
    let out = check_config(&write(dir.path(), &text), &[], &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    let lines = problem_lines(&err);
    assert_eq!(lines.len(), 1, "one problem, no contradiction:\n{err}");
    assert_problem(
        &err,
        "upstream[1].password_env",
        "environment variable MAILVEIL_TEST_UNSET_PASSWORD is not set",
    );
}

#[test]
fn no_secrets_checks_a_file_without_its_environment_and_still_checks_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[[upstream]]\nname = \"smtp\"\nhost = \"smtp.example.net\"\nusername = \"u\"\npassword_env = \"MAILVEIL_TEST_UNSET_PASSWORD\"\n\
         [[access.users]]\nname = \"app\"\npassword_env = \"MAILVEIL_TEST_UNSET_USER_PASSWORD\"\n\
         [admin]\ntoken_env = \"MAILVEIL_TEST_UNSET_TOKEN\"\n",
        base(dir.path())
    );
    let config = write(dir.path(), &text);
    let without = check_config(&config, &[], &[]);
    assert_eq!(without.status.code(), Some(64), "{}", stderr(&without));
    assert_problem(
        &stderr(&without),
        "access.users[0].password_env",
        "is not set",
    );
    assert!(
        String::from_utf8_lossy(&without.stdout).contains("check-config --no-secrets -c"),
        "the way to check without the environment is named"
    );

    let out = check_config(&config, &["--no-secrets"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": ok"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Everything else is still checked: a key that does not match its certificate, and a
    // secret file that cannot be read.
    let a = make_pki(dir.path(), "a", &["localhost"]);
    let b = make_pki(dir.path(), "b", &["localhost"]);
    let text = format!(
        "{text}[[upstream]]\nname = \"filed\"\nhost = \"smtp.example.net\"\nusername = \"u\"\npassword_file = \"{}/missing\"\n{}",
        dir.path().display(),
        tls_section(&a.cert_file, &b.key_file),
    );
    let out = check_config(&write(dir.path(), &text), &["--no-secrets"], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert_problem(&err, "server.tls.key", "does not match");
    assert_problem(&err, "upstream[2].password_file", "cannot read");
    assert!(!err.contains("_env"), "no *_env variable was read:\n{err}");
}

/// `run` with one of its listeners on an address another socket holds: exit 1, and the
/// message names that listener, its address and key, once.
fn assert_port_in_use_named(listener: &str, key: &str, section: &str, envs: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let text = if key == "server.listen" {
        base_listening(dir.path(), addr)
    } else {
        base(dir.path()) + &section.replace("{addr}", &addr.to_string())
    };
    let config = write(dir.path(), &text);
    let (code, log) = run_until_exit(dir.path(), &config, envs);
    assert_eq!(code, Some(1), "{log}");
    let expected = format!(
        "mailveil: cannot listen on the {listener} listener {addr} ({key}): address already in use"
    );
    assert!(log.contains(&expected), "{expected:?} missing in:\n{log}");
    let line = log.lines().find(|l| l.starts_with("mailveil: ")).unwrap();
    assert_eq!(line.matches("address already in use").count(), 1, "{line}");
    assert!(!log.contains("Some("), "{log}");
    drop(taken);
}

#[test]
fn smtp_port_in_use_is_named_as_the_smtp_listener() {
    assert_port_in_use_named("SMTP", "server.listen", "", &[]);
}

#[test]
fn metrics_port_in_use_is_named_as_the_metrics_listener() {
    assert_port_in_use_named(
        "metrics",
        "metrics.listen",
        "[metrics]\nlisten = \"{addr}\"\n",
        &[],
    );
}

#[test]
fn admin_port_in_use_is_named_as_the_admin_listener() {
    assert_port_in_use_named(
        "admin",
        "admin.listen",
        "[admin]\nlisten = \"{addr}\"\ntoken_env = \"TEST_ADMIN_TOKEN\"\n",
        &[("TEST_ADMIN_TOKEN", "t0ken-for-the-test")],
    );
}

#[test]
fn an_address_of_no_interface_is_named_with_its_listener() {
    // 192.0.2.0/24 is TEST-NET-1: no interface has it, so bind fails as root too.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[metrics]\nlisten = \"192.0.2.1:9725\"\n",
        base(dir.path())
    );
    let (code, log) = run_until_exit(dir.path(), &write(dir.path(), &text), &[]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(
            "mailveil: cannot listen on the metrics listener 192.0.2.1:9725 (metrics.listen): address not available"
        ),
        "{log}"
    );
}

#[test]
fn a_file_inside_the_spool_where_a_folder_belongs_is_named_in_plain_words() {
    // The spool directory exists (check-config passes), but its `msg` folder is a file: only
    // opening the spool finds that.
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::write(spool.join("msg"), "a file").unwrap();
    let config = write(dir.path(), &base(dir.path()));
    let (code, log) = run_until_exit(dir.path(), &config, &[]);
    assert_eq!(code, Some(1), "{log}");
    let expected = format!(
        "cannot use the spool directory {} (spool.dir): {} is a file, not a directory",
        spool.display(),
        spool.join("msg").display()
    );
    assert!(log.contains(&expected), "{expected:?} missing in:\n{log}");
    assert!(!log.contains("File exists"), "{log}");
}

#[test]
fn a_start_up_error_with_a_cause_prints_each_text_once() {
    // `.redaction-key` is a directory: writing the key fails; the spool error carries the
    // system's text and has it as its source too (printed naively: "...: Is a directory
    // (os error 21): Is a directory (os error 21)").
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("spool").join(".redaction-key");
    std::fs::create_dir_all(&key).unwrap();
    let config = write(dir.path(), &base(dir.path()));
    let (code, log) = run_until_exit(dir.path(), &config, &[]);
    assert_eq!(code, Some(1), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("mailveil: "))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    assert!(line.contains(&key.display().to_string()), "{line}");
    assert_eq!(line.matches("directory").count(), 1, "{line}");
}

/// The uid of this test process (from `/proc/self/status`).
fn uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `mailveil run -c config` as an unprivileged user until it exits (bounded): as is when this
/// test does not run as root, else as `nobody` through `setpriv` (CI runs as root). `None`
/// when neither is possible (root without setpriv).
fn run_unprivileged_until_exit(dir: &Path, config: &str) -> Option<(Option<i32>, String)> {
    unprivileged_until_exit(dir, &["run", "-c", config])
}

/// `mailveil <args>` as an unprivileged user (see [`run_unprivileged_until_exit`]).
fn unprivileged_until_exit(dir: &Path, args: &[&str]) -> Option<(Option<i32>, String)> {
    let mut cmd = if uid() == 0 {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            BIN,
        ]);
        cmd
    } else {
        Command::new(BIN)
    };
    let log = dir.join("run.log");
    let out = std::fs::File::create(&log).unwrap();
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot start the relay unprivileged ({e}); skipped");
            return None;
        }
    };
    let mut proc_ = support::Proc { child, log };
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if let Ok(Some(status)) = proc_.child.try_wait() {
            return Some((status.code(), proc_.log_text()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("run did not stop; log:\n{}", proc_.log_text());
}

/// A temporary directory `nobody` can read and write (the config file in it, the spool and
/// outbox it creates there).
fn shared_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

#[test]
fn a_privileged_port_for_an_unprivileged_user_is_named_with_its_listener() {
    let lowest: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1024);
    if lowest <= 1 {
        eprintln!(
            "every port is unprivileged on this machine (ip_unprivileged_port_start = {lowest}); skipped"
        );
        return;
    }
    let dir = shared_tempdir();
    let text = format!("{}[metrics]\nlisten = \"127.0.0.1:1\"\n", base(dir.path()));
    let config = write(dir.path(), &text);
    let Some((code, log)) = run_unprivileged_until_exit(dir.path(), &config) else {
        return;
    };
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(
            "mailveil: cannot listen on the metrics listener 127.0.0.1:1 (metrics.listen): permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
        ),
        "{log}"
    );
    assert_eq!(
        log.matches("ermission denied").count(),
        2,
        "log line and stderr line, each once:\n{log}"
    );
}

#[test]
fn a_spool_directory_the_relay_user_may_not_write_is_a_config_problem() {
    use std::os::unix::fs::PermissionsExt;
    let dir = shared_tempdir();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    // Root's own (nobody may not write it), or the test user's own without write permission.
    let mode = if uid() == 0 { 0o755 } else { 0o555 };
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(mode)).unwrap();
    let config = write(dir.path(), &base(dir.path()));
    let checked = unprivileged_until_exit(dir.path(), &["check-config", "-c", &config]);
    let ran = run_unprivileged_until_exit(dir.path(), &config);
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (Some((checked_code, checked_log)), Some((ran_code, ran_log))) = (checked, ran) else {
        return;
    };
    let expected = format!(
        "spool.dir: {} is not writable by this user",
        spool.display()
    );
    for (code, log) in [(checked_code, checked_log), (ran_code, ran_log)] {
        assert_eq!(code, Some(64), "{log}");
        assert!(log.contains(&expected), "{expected:?} missing in:\n{log}");
    }
}

#[test]
fn a_spool_folder_the_relay_user_may_not_enter_is_named_once() {
    use std::os::unix::fs::PermissionsExt;
    // The spool directory is writable (check-config passes), its `msg` folder is not readable:
    // only opening the spool meets it. The system's text is printed once (it is both in the
    // spool error and its source).
    let dir = shared_tempdir();
    let spool = dir.path().join("spool");
    let msg = spool.join("msg");
    std::fs::create_dir_all(&msg).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mode = if uid() == 0 { 0o700 } else { 0o000 };
    std::fs::set_permissions(&msg, std::fs::Permissions::from_mode(mode)).unwrap();
    let config = write(dir.path(), &base(dir.path()));
    let result = run_unprivileged_until_exit(dir.path(), &config);
    std::fs::set_permissions(&msg, std::fs::Permissions::from_mode(0o700)).unwrap();
    let Some((code, log)) = result else {
        return;
    };
    assert_eq!(code, Some(1), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("mailveil: "))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    assert!(line.contains(&msg.display().to_string()), "{line}");
    assert_eq!(
        line.to_ascii_lowercase()
            .matches("permission denied")
            .count(),
        1,
        "{line}"
    );
}

#[tokio::test]
async fn a_reload_with_a_key_that_does_not_match_is_refused_and_the_relay_keeps_serving() {
    use support::{RelayProc, metrics_listener, spool_and_outbox};
    let pki_dir = tempfile::tempdir().unwrap();
    let a = make_pki(pki_dir.path(), "a", &["localhost"]);
    let b = make_pki(pki_dir.path(), "b", &["localhost"]);
    let template = |key: &Path| {
        format!(
            "[server]\nlisten = \"{{smtp}}\"\n{}{}{}",
            tls_section(&a.cert_file, key),
            metrics_listener!(),
            spool_and_outbox!()
        )
    };
    let relay = RelayProc::start(&template(&a.key_file), &[]).await;
    relay.rewrite_config(&template(&b.key_file));
    relay.signal("HUP");
    let log = relay.wait_for_log("reload refused", 0).await;
    assert!(
        log.lines().any(|l| l.contains("reload refused")
            && l.contains("server.tls.key")
            && l.contains("does not match the certificate")),
        "{log}"
    );
    let (code, _) = support::http_get(relay.metrics, "/readyz").await;
    assert_eq!(code, 200, "still serving with the old pair");
}
