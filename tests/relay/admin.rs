//! The admin API and `mailveil ctl` against a real `mailveil run` process: bearer token,
//! global and per-provider pause (inbound keeps accepting, nothing reaches the upstream) and
//! resume (held copies go out).

use crate::support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const TOKEN: &str = "admin-test-token-Zq";

const CONFIG: &str = concat!(
    r#"
[server]
listen = "{smtp}"
hostname = "relay.test"
"#,
    spool_and_outbox!(),
    metrics_listener!(),
    admin_listener!(),
);

async fn relay() -> RelayProc {
    RelayProc::start(CONFIG, &[("TEST_ADMIN_TOKEN", TOKEN)]).await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn provider<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("provider {name} missing from {status}"))
}

fn two_recipient_message(to: &[&str]) -> Vec<u8> {
    let to_header = format!("To: {}", to.join(", "));
    message(
        &["From: ops@example.com", &to_header, "Subject: held?"],
        "Body.\r\n",
    )
}

#[tokio::test]
async fn requests_without_or_with_a_wrong_token_are_refused() {
    let r = relay().await;
    for (method, path) in [
        ("GET", "/status"),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("POST", "/reload"),
    ] {
        let (code, _) = http_request(r.admin, method, path, None).await;
        assert_eq!(code, 401, "{method} {path} without a token");
        let (code, body) = http_request(r.admin, method, path, Some("wrong-token")).await;
        assert_eq!(code, 401, "{method} {path} with a wrong token");
        assert!(json(&body)["error"].is_string());
        let (code, _) = http_request(r.admin, method, path, Some(&TOKEN[..TOKEN.len() - 1])).await;
        assert_eq!(code, 401, "{method} {path} with a token prefix");
    }
    // The refused pause did nothing: deliveries still flow.
    let (code, body) = http_request(r.admin, "GET", "/status", Some(TOKEN)).await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["paused"], false);
    let m = two_recipient_message(&["kim@example.org"]);
    lettre_send(r.smtp, Some("ops@example.com"), &["kim@example.org"], &m)
        .await
        .unwrap();
    wait_for_captures(&r.outbox(), 1).await;
    // The token never appears in the log.
    assert!(!r.proc_.log_text().contains(TOKEN));
}

#[tokio::test]
async fn pause_holds_deliveries_while_inbound_accepts_and_resume_releases_them() {
    let r = relay().await;
    let (code, body) = http_request(r.admin, "POST", "/pause", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["paused"], true);

    let to = ["lou@example.org", "max@example.net", "ned@example.com"];
    for _ in 0..2 {
        let reply = lettre_send(
            r.smtp,
            Some("ops@example.com"),
            &to,
            &two_recipient_message(&to),
        )
        .await
        .expect("inbound keeps accepting while paused");
        assert!(reply.starts_with("250"), "{reply}");
    }
    let (_, body) = http_request(r.admin, "GET", "/status", Some(TOKEN)).await;
    let status = json(&body);
    assert_eq!(status["paused"], true);
    assert_eq!(provider(&status, "default")["queued"], 6, "{status}");
    assert_no_captures(&r.outbox(), Duration::from_millis(1500)).await;

    let (code, body) = http_request(r.admin, "POST", "/resume", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["paused"], false);
    let got = wait_for_captures(&r.outbox(), 6).await;
    assert_eq!(got.len(), 6);
    // A capture is written before its outcome is recorded: the count follows within moments.
    let end = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, body) = http_request(r.admin, "GET", "/status", Some(TOKEN)).await;
        let queued = provider(&json(&body), "default")["queued"].clone();
        if queued == 0 {
            break;
        }
        assert!(std::time::Instant::now() < end, "still queued: {queued}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pausing_one_provider_holds_only_its_copies() {
    let r = relay().await;
    let (code, body) = http_request(
        r.admin,
        "POST",
        "/pause?provider=nosuchprovider",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 404);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("nosuchprovider")
    );

    let (code, _) = http_request(r.admin, "POST", "/resume?provider=", Some(TOKEN)).await;
    assert_eq!(code, 400, "an empty provider is not 'all providers'");

    let (code, body) = http_request(r.admin, "POST", "/pause?provider=yahoo", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let status = json(&body);
    assert_eq!(status["paused"], false);
    assert_eq!(provider(&status, "yahoo")["paused"], true);
    assert_eq!(provider(&status, "default")["paused"], false);

    let to = ["pat@yahoo.com", "quinn@example.org"];
    lettre_send(
        r.smtp,
        Some("ops@example.com"),
        &to,
        &two_recipient_message(&to),
    )
    .await
    .unwrap();
    let got = wait_for_captures(&r.outbox(), 1).await;
    assert_eq!(got[0].rcpt_to, vec!["quinn@example.org".to_string()]);
    // The other provider's copy has gone through; the paused one stays held.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = mailveil::capture::read_all(&r.outbox()).unwrap();
    assert_eq!(got.len(), 1, "the yahoo copy must be held");
    let (_, body) = http_request(r.admin, "GET", "/status", Some(TOKEN)).await;
    assert_eq!(provider(&json(&body), "yahoo")["queued"], 1);

    let (code, _) = http_request(r.admin, "POST", "/resume?provider=yahoo", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let got = wait_for_captures(&r.outbox(), 2).await;
    assert!(
        got.iter()
            .any(|c| c.rcpt_to == vec!["pat@yahoo.com".to_string()])
    );
}

/// `mailveil ctl --admin URL ARGS` with the token in the environment, the safe form.
fn ctl(r: &RelayProc, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    ctl_with(r, &[("MAILVEIL_ADMIN_TOKEN", token)], args)
}

/// `mailveil ctl --admin URL ARGS` with exactly `envs` as the token variables.
fn ctl_with(r: &RelayProc, envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("ctl")
        .arg("--admin")
        .arg(format!("http://{}", r.admin))
        .args(args)
        .env_remove("MAILVEIL_ADMIN_TOKEN")
        .env_remove("TEST_ADMIN_TOKEN")
        .env_remove("MAILVEIL_ADMIN_URL")
        .env_remove("MAILVEIL_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn ctl_drives_a_running_relay() {
    let r = relay().await;
    let (code, out, err) = ctl(&r, TOKEN, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let status = json(&out);
    assert_eq!(status["paused"], false);
    assert_eq!(status["upstreams"][0]["name"], "outbox");
    assert_eq!(status["upstreams"][0]["up"], true);

    let (code, out, err) = ctl(&r, TOKEN, &["pause", "--provider", "google"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(provider(&json(&out), "google")["paused"], true);
    let (code, out, _) = ctl(&r, TOKEN, &["pause"]);
    assert_eq!(code, Some(0));
    assert_eq!(json(&out)["paused"], true);
    let (code, out, _) = ctl(&r, TOKEN, &["resume"]);
    assert_eq!(code, Some(0));
    assert_eq!(json(&out)["paused"], false);
    let (code, out, _) = ctl(&r, TOKEN, &["resume", "--provider", "google"]);
    assert_eq!(code, Some(0));
    assert_eq!(provider(&json(&out), "google")["paused"], false);

    // The token can come from the environment too, and the URL may omit its scheme.
    let out = Command::new(BIN)
        .args(["ctl", "--admin", &r.admin.to_string(), "status"])
        .env("MAILVEIL_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success());

    // Refusals exit non-zero.
    let (code, out, err) = ctl(&r, "not-the-token", &["status"]);
    assert_eq!(code, Some(1), "wrong token: {out} {err}");
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = ctl(&r, TOKEN, &["pause", "--provider", "nosuchprovider"]);
    assert_eq!(code, Some(1), "{err}");
    let out = Command::new(BIN)
        .args([
            "ctl",
            "--admin",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .args(["status"])
        .env("MAILVEIL_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "unreachable");
}

/// The token never has to be on the command line: `--token-file` (its line end ignored; a file
/// others may read is used with a warning), `MAILVEIL_ADMIN_TOKEN`, or the variable the config
/// names. `--token` still works (SPEC) but warns that `ps` shows it. Exit codes as before.
#[tokio::test]
async fn ctl_reads_the_token_from_a_file_or_the_environment() {
    use std::os::unix::fs::PermissionsExt;
    let r = relay().await;
    let file = r.dir.path().join("admin-token");
    let path = file.display().to_string();
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let (code, out, err) = ctl_with(&r, &[], &["--token-file", &path, "status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["paused"], false);
    assert!(!err.contains("warning"), "{err}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = ctl_with(&r, &[], &["--token-file", &path, "status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("readable by group or others"), "{err}");

    let (code, _, err) = ctl_with(&r, &[("MAILVEIL_ADMIN_TOKEN", TOKEN)], &["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("warning"), "{err}");
    // The variable named by the config's admin.token_env, as the relay itself reads it.
    let config = r.config.display().to_string();
    let (code, _, err) = ctl_with(
        &r,
        &[("TEST_ADMIN_TOKEN", TOKEN)],
        &["-c", &config, "status"],
    );
    assert_eq!(code, Some(0), "{err}");

    let (code, _, err) = ctl_with(&r, &[], &["--token", TOKEN, "status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning") && err.contains("ps") && err.contains("--token-file"),
        "--token warns and names the alternatives: {err}"
    );

    // Exit codes: refused 1, no token 64, unreachable 69.
    std::fs::write(&file, "not-the-token\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = ctl_with(&r, &[], &["--token-file", &path, "status"]);
    assert_eq!(code, Some(1), "{err}");
    let missing = r.dir.path().join("missing").display().to_string();
    let (code, _, err) = ctl_with(&r, &[], &["--token-file", &missing, "status"]);
    assert_eq!(code, Some(64), "missing file: {err}");
    std::fs::write(&file, "\n").unwrap();
    let (code, _, err) = ctl_with(&r, &[], &["--token-file", &path, "status"]);
    assert_eq!(code, Some(64), "empty file: {err}");
    let (code, _, err) = ctl_with(&r, &[], &["status"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("MAILVEIL_ADMIN_TOKEN") && err.contains("--token-file"),
        "{err}"
    );
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let out = Command::new(BIN)
        .args([
            "ctl",
            "--admin",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .args(["--token-file", &path, "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "unreachable");
}

#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let r = RelayProc::start(CONFIG, &[]).await;
    let log = r.wait_for_log("admin API disabled", 0).await;
    assert!(
        log.contains("TEST_ADMIN_TOKEN"),
        "names the variable:\n{log}"
    );
    assert!(
        tokio::net::TcpStream::connect(r.admin).await.is_err(),
        "nothing listens on the admin port"
    );
}
