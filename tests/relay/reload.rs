//! Hot reload of a running `mailveil run` process: SIGHUP and `POST /reload` apply new limits,
//! privacy mode and TLS certificate files without dropping an open connection; an invalid file
//! is refused with every problem and the old configuration keeps working.

use crate::support;

use serde_json::Value;
use support::*;

const TOKEN: &str = "reload-test-token-Wv";

/// `{limit}`, `{mode}` and `{extra}` are filled per step.
const TEMPLATE: &str = concat!(
    r#"
[server]
listen = "{smtp}"
hostname = "relay.test"
max_recipients = {limit}
{extra}
[privacy]
mode = "{mode}"
"#,
    spool_and_outbox!(),
    metrics_listener!(),
    admin_listener!(),
);

fn config(limit: u32, mode: &str, extra: &str) -> String {
    TEMPLATE
        .replace("{limit}", &limit.to_string())
        .replace("{mode}", mode)
        .replace("{extra}", extra)
}

fn exposing(to: &[&str]) -> Vec<u8> {
    message(
        &[
            "From: news@example.com",
            &format!("To: {}", to.join(", ")),
            "Subject: reload",
        ],
        "Hello.\r\n",
    )
}

/// Opens a session and sends EHLO; returns the session.
async fn session(r: &RelayProc) -> RawSmtp {
    let (mut s, greeting) = RawSmtp::connect(r.smtp).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(s.cmd("EHLO client.test").await.starts_with("250"));
    s
}

#[tokio::test]
async fn sighup_applies_new_limits_and_privacy_mode_while_an_open_connection_stays_usable() {
    let r = RelayProc::start(&config(5, "split", ""), &[("TEST_ADMIN_TOKEN", TOKEN)]).await;

    // Before: two recipients per transaction are fine, an exposing message is split.
    let mut before = session(&r).await;
    assert!(
        before
            .cmd("MAIL FROM:<news@example.com>")
            .await
            .starts_with("250")
    );
    for rcpt in ["ann@example.org", "bob@example.org"] {
        let reply = before.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    assert!(before.cmd("RSET").await.starts_with("250"));

    r.rewrite_config(&config(1, "reject", ""));
    r.signal("HUP");
    r.wait_for_log("configuration reloaded", 0).await;

    // The connection opened before the reload is still open and usable.
    assert!(before.cmd("NOOP").await.starts_with("250"));
    assert!(
        before
            .cmd("MAIL FROM:<news@example.com>")
            .await
            .starts_with("250")
    );
    assert!(
        before
            .cmd("RCPT TO:<cyd@example.org>")
            .await
            .starts_with("250")
    );
    assert!(before.cmd("DATA").await.starts_with("354"));
    before
        .send(b"From: news@example.com\r\nTo: cyd@example.org\r\nSubject: one\r\n\r\nHi.\r\n.\r\n")
        .await;
    let reply = before.reply().await;
    assert!(reply.starts_with("250"), "old connection delivers: {reply}");
    assert!(before.cmd("QUIT").await.starts_with("221"));
    wait_for_captures(&r.outbox(), 1).await;

    // A new session has the new recipient limit.
    let mut after = session(&r).await;
    assert!(
        after
            .cmd("MAIL FROM:<news@example.com>")
            .await
            .starts_with("250")
    );
    assert!(
        after
            .cmd("RCPT TO:<dee@example.org>")
            .await
            .starts_with("250")
    );
    let reply = after.cmd("RCPT TO:<eve@example.org>").await;
    assert!(reply.starts_with("452"), "new limit: {reply}");
    assert!(after.cmd("QUIT").await.starts_with("221"));

    // New messages get the new privacy mode: an exposing message is rejected, not split.
    let to = ["fay@example.org", "gus@example.org"];
    let refused = lettre_send(r.smtp, Some("news@example.com"), &to[..1], &exposing(&to)).await;
    let err = refused.expect_err("reject mode refuses an exposing message");
    assert!(
        err.to_string().contains("5.7.1") || err.to_string().contains("550"),
        "{err}"
    );
    assert_eq!(mailveil::capture::read_all(&r.outbox()).unwrap().len(), 1);
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_old_one_keeps_working() {
    let r = RelayProc::start(&config(5, "split", ""), &[("TEST_ADMIN_TOKEN", TOKEN)]).await;
    let mut open = session(&r).await;

    // Two problems at once: an unknown mode and an unknown key.
    r.rewrite_config(&config(1, "shred", "frobnicate = true"));
    r.signal("HUP");
    let log = r.wait_for_log("configuration reload refused", 0).await;
    assert!(log.contains("privacy.mode"), "{log}");
    assert!(log.contains("frobnicate"), "{log}");

    let (code, body) = http_request(r.admin, "POST", "/reload", Some(TOKEN)).await;
    assert_eq!(code, 422, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let problems = answer["problems"].as_array().unwrap();
    assert!(problems.len() >= 2, "{answer}");
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("privacy.mode"))
    );

    // The old configuration is still in force: split mode, five recipients allowed.
    let to = ["hal@example.org", "ida@example.org", "jon@example.org"];
    let reply = lettre_send(r.smtp, Some("news@example.com"), &to, &exposing(&to))
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    let got = wait_for_captures(&r.outbox(), 3).await;
    assert!(
        got.iter().all(|c| c.rcpt_to.len() == 1),
        "split into private copies"
    );
    assert!(
        open.cmd("NOOP").await.starts_with("250"),
        "connection survived"
    );

    // A valid file is applied through the admin API; start-only keys are reported, not applied.
    let moved = config(2, "split", "").replace("{dir}/spool", "{dir}/elsewhere");
    r.rewrite_config(&moved);
    let (code, body) = http_request(r.admin, "POST", "/reload", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["reloaded"], true);
    assert_eq!(answer["restart_needed"][0], "spool.dir", "{answer}");
    assert!(!r.dir.path().join("elsewhere").exists());
    let mut after = session(&r).await;
    assert!(
        after
            .cmd("MAIL FROM:<a@example.com>")
            .await
            .starts_with("250")
    );
    assert!(
        after
            .cmd("RCPT TO:<kay@example.org>")
            .await
            .starts_with("250")
    );
    assert!(
        after
            .cmd("RCPT TO:<lee@example.org>")
            .await
            .starts_with("250")
    );
    assert!(
        after
            .cmd("RCPT TO:<mo@example.org>")
            .await
            .starts_with("452")
    );

    // `mailveil ctl reload` reports success with exit 0.
    let out = std::process::Command::new(BIN)
        .args(["ctl", "-c", &r.config.display().to_string(), "reload"])
        .env("TEST_ADMIN_TOKEN", TOKEN)
        .env_remove("MAILVEIL_ADMIN_TOKEN")
        .env_remove("MAILVEIL_ADMIN_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"reloaded\":true"));
}

#[tokio::test]
async fn reload_picks_up_rotated_tls_certificate_files() {
    let work = tempfile::tempdir().unwrap();
    let old = make_pki(work.path(), "old", &["localhost"]);
    let new = make_pki(work.path(), "new", &["localhost"]);
    let tls = |p: &TestPki| {
        format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"",
            p.cert_file.display(),
            p.key_file.display()
        )
    };
    // TOML: the [server.tls] table must come after the [server] keys; `{extra}` is there.
    let r = RelayProc::start(
        &config(5, "split", &tls(&old)),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let m = exposing(&["ned@example.org"]);
    let send = |ca: Vec<u8>| {
        let (addr, m) = (r.smtp, m.clone());
        async move { lettre_send_tls(addr, &ca, None, "a@example.com", &["ned@example.org"], &m).await }
    };
    send(old.ca_pem.clone())
        .await
        .expect("old certificate served");
    assert!(
        send(new.ca_pem.clone()).await.is_err(),
        "new CA does not trust the old cert"
    );

    // A certificate file that exists but does not parse: refused (422), the old one stays.
    let broken = make_pki(work.path(), "broken", &["localhost"]);
    std::fs::write(&broken.cert_file, "not a certificate").unwrap();
    r.rewrite_config(&config(5, "split", &tls(&broken)));
    let (code, body) = http_request(r.admin, "POST", "/reload", Some(TOKEN)).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("TLS"), "{body}");
    send(old.ca_pem.clone())
        .await
        .expect("old certificate still served");

    r.rewrite_config(&config(5, "split", &tls(&new)));
    r.signal("HUP");
    r.wait_for_log("configuration reloaded", 0).await;
    send(new.ca_pem.clone())
        .await
        .expect("rotated certificate served");
    assert!(
        send(old.ca_pem.clone()).await.is_err(),
        "old certificate no longer served"
    );
    wait_for_captures(&r.outbox(), 3).await;
}

/// The runbook's "upstream compromised" drill: pause, swap the upstream by reload, resume; the
/// held copies go to the new upstream only.
#[tokio::test]
async fn fail_over_to_a_new_upstream_by_pause_reload_resume() {
    let with_upstream = |name: &str| {
        config(5, "split", "").replace(
            "name = \"outbox\"\ndir = \"{dir}/outbox\"",
            &format!("name = \"{name}\"\ndir = \"{{dir}}/{name}\""),
        )
    };
    let r = RelayProc::start(&with_upstream("oldprov"), &[("TEST_ADMIN_TOKEN", TOKEN)]).await;
    let (code, _) = http_request(r.admin, "POST", "/pause", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let to = ["opal@example.org", "piet@example.org"];
    lettre_send(r.smtp, Some("news@example.com"), &to, &exposing(&to))
        .await
        .unwrap();

    r.rewrite_config(&with_upstream("newprov"));
    let (code, body) = http_request(r.admin, "POST", "/reload", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let (_, body) = http_request(r.admin, "GET", "/status", Some(TOKEN)).await;
    let status: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["newprov"]);
    let (_, metrics) = http_get(r.metrics, "/metrics").await;
    assert_eq!(
        metric(&metrics, "mailveil_upstream_up{upstream=\"newprov\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "mailveil_upstream_up{upstream=\"oldprov\"}"),
        None
    );

    let (code, _) = http_request(r.admin, "POST", "/resume", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let got = wait_for_captures(&r.dir.path().join("newprov"), 2).await;
    assert_eq!(got.len(), 2);
    assert!(
        mailveil::capture::read_all(&r.dir.path().join("oldprov"))
            .unwrap_or_default()
            .is_empty(),
        "nothing went to the replaced upstream"
    );
}
