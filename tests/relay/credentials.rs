//! Stored credentials (`access.users_file`) through the real binary: entries made by
//! `mailveil passwd`, two valid passwords for one login during a rotation, the old one refused
//! after a reload (SIGHUP), an expired entry refused, a too-open users file refused at start.

use crate::support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::*;

/// `{tls}` and `{users}` are filled per test.
const TEMPLATE: &str = concat!(
    r#"
[server]
listen = "{smtp}"
hostname = "relay.test"
{tls}
[access]
networks = []
users_file = "{users}"
"#,
    spool_and_outbox!(),
    metrics_listener!(),
);

/// `mailveil passwd --login LOGIN [extra...]` with `password` on stdin (not a terminal);
/// returns stdout.
fn passwd(login: &str, password: &str, extra: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args(["passwd", "--login", login])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn msg() -> Vec<u8> {
    message(
        &["From: billing@src.test", "To: payer@x.test", "Subject: s"],
        "amount due\r\n",
    )
}

async fn send(relay: &RelayProc, ca: &[u8], login: &str, password: &str) -> Result<String, String> {
    lettre_send_tls(
        relay.smtp,
        ca,
        Some((login, password)),
        "billing@src.test",
        &["payer@x.test"],
        &msg(),
    )
    .await
    .map_err(|e| e.to_string())
}

fn assert_refused(result: Result<String, String>, what: &str) {
    let err = result.expect_err(what);
    assert!(err.contains("535"), "{what}: {err}");
    assert!(err.contains("5.7.8"), "{what}: {err}");
}

#[tokio::test]
async fn rotation_both_passwords_then_the_old_refused_after_reload_and_expiry() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), "creds", &["localhost", "127.0.0.1"]);
    let users = certs.path().join("users.toml");
    // The first entry is appended by `passwd --file` (makes the file, mode 0600); the second
    // comes from stdout, the generated one prints its password.
    passwd(
        "billing",
        "old password",
        &["--file", &users.display().to_string()],
    );
    let new_entry = passwd("billing", "new password", &[]);
    assert!(
        new_entry.contains("hash = \"$argon2id$v=19$m=19456,t=2,p=1$"),
        "{new_entry}"
    );
    let mut text = std::fs::read_to_string(&users).unwrap();
    let old_only = text.clone();
    text.push('\n');
    text.push_str(&new_entry);
    std::fs::write(&users, &text).unwrap();
    let generated = passwd(
        "reports",
        "ignored",
        &["--generate", "--file", &users.display().to_string()],
    );
    let generated = generated.trim().to_string();
    assert_eq!(generated.len(), 32, "{generated:?}");
    passwd(
        "late",
        "late password",
        &[
            "--expires",
            "2020-01-01",
            "--file",
            &users.display().to_string(),
        ],
    );

    let tls = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"",
        pki.cert_file.display(),
        pki.key_file.display()
    );
    let config = TEMPLATE
        .replace("{tls}", &tls)
        .replace("{users}", &users.display().to_string());
    let relay = RelayProc::start(&config, &[]).await;

    // Every configured login (and `unknown`) is exposed from the start, at zero.
    let (_, metrics) = http_get(relay.metrics, "/metrics").await;
    for login in ["billing", "reports", "late", "unknown"] {
        let series = format!("mailveil_auth_failures_total{{login=\"{login}\"}}");
        assert_eq!(metric(&metrics, &series), Some(0.0), "{series}");
    }

    // Overlap: both passwords of `billing` work, and the generated one of `reports`.
    for (login, pw) in [
        ("billing", "old password"),
        ("billing", "new password"),
        ("billing", "old password"), // now from the success cache
        ("reports", generated.as_str()),
    ] {
        let ok = send(&relay, &pki.ca_pem, login, pw).await;
        assert!(
            ok.as_ref().is_ok_and(|r| r.starts_with("250")),
            "{login}: {ok:?}"
        );
    }
    wait_for_captures(&relay.outbox(), 4).await;
    // An expired entry, a wrong password, an unknown login.
    assert_refused(
        send(&relay, &pki.ca_pem, "late", "late password").await,
        "expired",
    );
    assert_refused(send(&relay, &pki.ca_pem, "billing", "guess").await, "wrong");
    assert_refused(
        send(&relay, &pki.ca_pem, "nobody", "old password").await,
        "unknown",
    );
    let (_, metrics) = http_get(relay.metrics, "/metrics").await;
    assert_eq!(
        metric(&metrics, "mailveil_auth_failures_total{login=\"billing\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "mailveil_auth_failures_total{login=\"late\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "mailveil_auth_failures_total{login=\"unknown\"}"),
        Some(1.0)
    );

    // Rotation done: remove the old entry (keep the new one), reload.
    let without_old = text.replacen(&old_only, "", 1);
    assert!(without_old.contains(new_entry.trim()), "{without_old}");
    std::fs::write(&users, &without_old).unwrap();
    relay.signal("HUP");
    relay.wait_for_log("configuration reloaded", 0).await;
    assert_refused(
        send(&relay, &pki.ca_pem, "billing", "old password").await,
        "old password after the reload (even though it was cached)",
    );
    let ok = send(&relay, &pki.ca_pem, "billing", "new password").await;
    assert!(ok.as_ref().is_ok_and(|r| r.starts_with("250")), "{ok:?}");

    // A broken file on reload: refused, the running credentials stay.
    std::fs::write(
        &users,
        "[[credential]]\nlogin = \"billing\"\nhash = \"plain\"\n",
    )
    .unwrap();
    relay.signal("HUP");
    let log = relay.wait_for_log("configuration reload refused", 0).await;
    assert!(log.contains("access.users_file"), "{log}");
    assert!(log.contains("credential[0] (line 3).hash"), "{log}");
    let ok = send(&relay, &pki.ca_pem, "billing", "new password").await;
    assert!(ok.as_ref().is_ok_and(|r| r.starts_with("250")), "{ok:?}");
    wait_for_captures(&relay.outbox(), 6).await;
    assert!(
        !relay.proc_.log_text().contains("new password"),
        "no password in the log"
    );
}

/// `mailveil run` with `config` until it exits (bounded): exit code and log.
fn run_until_exit(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("mailveil.toml");
    std::fs::write(&path, config).unwrap();
    let mut proc_ = spawn_mailveil(
        &["run", "-c", &path.display().to_string()],
        &dir.join("run.log"),
        &[],
    );
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if let Ok(Some(status)) = proc_.child.try_wait() {
            return (status.code(), proc_.log_text());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    proc_.kill9();
    (None, proc_.log_text())
}

#[test]
fn a_group_readable_users_file_is_refused_at_start_with_its_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    passwd("billing", "pw", &["--file", &users.display().to_string()]);
    assert_eq!(
        std::fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o640)).unwrap();
    let port = |p: u16| format!("127.0.0.1:{p}");
    let config = TEMPLATE
        .replace("{tls}", "")
        .replace("{users}", &users.display().to_string())
        .replace("{smtp}", &port(free_port()))
        .replace("{metrics}", &port(free_port()))
        .replace("{dir}", &dir.path().display().to_string());
    let (code, log) = run_until_exit(dir.path(), &config);
    assert_eq!(code, Some(64), "{log}");
    assert!(log.contains("access.users_file"), "{log}");
    assert!(log.contains("readable by its group"), "{log}");
    // A broken entry: the key, the file and the line of the field.
    let good = std::fs::read_to_string(&users).unwrap();
    std::fs::write(
        &users,
        "[[credential]]\nlogin = \"billing\"\nhash = \"secret\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, log) = run_until_exit(dir.path(), &config);
    assert_eq!(code, Some(64), "{log}");
    assert!(
        log.contains("access.users_file") && log.contains("credential[0] (line 3).hash"),
        "{log}"
    );
    assert!(
        !log.contains("secret\""),
        "the bad value is not echoed: {log}"
    );
    std::fs::write(&users, good).unwrap();
    // And a login in both places.
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let both = config.replace(
        "[spool]",
        &format!(
            "[[access.users]]\nname = \"billing\"\npassword_file = \"{}\"\n[spool]",
            pw.display()
        ),
    );
    let (code, log) = run_until_exit(dir.path(), &both);
    assert_eq!(code, Some(64), "{log}");
    assert!(log.contains("also in access.users"), "{log}");
}
