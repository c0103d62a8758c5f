//! `[[app]]` through the real binary: recognition by AUTH login and by client network, sender
//! rights at MAIL and at end of DATA (`550 5.7.1` naming the rule, nothing queued), a stricter
//! per-app privacy override, `apps.require_app` after a reload, `/status` and the `app` series,
//! and `check-config` refusing an override weaker than `[privacy]`.

use crate::support;

use std::process::Command;
use std::time::Duration;

use support::*;

const TOKEN: &str = "apps-test-token-Qx";

struct Setup {
    relay: RelayProc,
    pki: TestPki,
    _certs: tempfile::TempDir,
}

/// TLS with AUTH for `billing-app`; `127.0.0.0/8` may relay and is app `legacy`'s network.
/// Globally up to 5 recipients may be shown; billing may show 1.
async fn start() -> Setup {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), "apps", &["localhost", "127.0.0.1"]);
    let pw = certs.path().join("billing.pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let toml = format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[server.tls]
cert = "{cert}"
key = "{key}"
[access]
networks = ["127.0.0.0/8"]
[[access.users]]
name = "billing-app"
password_file = "{pw}"
[privacy]
max_visible_recipients = 5
[metrics]
listen = "{{metrics}}"
[admin]
listen = "{{admin}}"
token_env = "TEST_ADMIN_TOKEN"
[spool]
dir = "{{dir}}/spool"
[[upstream]]
name = "outbox"
dir = "{{dir}}/outbox"

[[app]]
name = "billing"
logins = ["billing-app"]
senders = ["invoices@example.com", "@billing.example.com"]
[app.privacy]
max_visible_recipients = 1

[[app]]
name = "legacy"
networks = ["127.0.0.0/8"]
senders = ["crm@legacy.test"]
"#,
        cert = pki.cert_file.display(),
        key = pki.key_file.display(),
        pw = pw.display(),
    );
    Setup {
        relay: RelayProc::start(&toml, &[("TEST_ADMIN_TOKEN", TOKEN)]).await,
        pki,
        _certs: certs,
    }
}

impl Setup {
    async fn send_as_billing(
        &self,
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> Result<String, lettre::transport::smtp::Error> {
        lettre_send_tls(
            self.relay.smtp,
            &self.pki.ca_pem,
            Some(("billing-app", "correct horse")),
            from,
            to,
            message,
        )
        .await
    }

    async fn metric(&self, series: &str) -> f64 {
        let (code, text) = http_get(self.relay.metrics, "/metrics").await;
        assert_eq!(code, 200);
        metric(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    /// Nothing spooled and nothing delivered.
    async fn assert_nothing_queued(&self) {
        assert_eq!(spooled_batches(&self.relay), 0, "nothing may be spooled");
        assert_no_captures(&self.relay.outbox(), Duration::from_millis(500)).await;
    }
}

/// Batch files in the spool.
fn spooled_batches(relay: &RelayProc) -> usize {
    std::fs::read_dir(relay.dir.path().join("spool/msg"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
                .count()
        })
        .unwrap_or(0)
}

fn refusal_text(err: &lettre::transport::smtp::Error) -> String {
    let text = err.to_string();
    assert!(
        err.status().is_some_and(|c| c.to_string() == "550") || text.contains("550"),
        "expected 550: {text}"
    );
    text
}

#[tokio::test]
async fn an_app_by_login_sending_as_a_foreign_sender_gets_550_and_nothing_is_queued() {
    let s = start().await;
    let msg = message(&["From: ceo@other.test", "To: payer@x.test"], "pay\r\n");
    let err = s
        .send_as_billing("ceo@other.test", &["payer@x.test"], &msg)
        .await
        .unwrap_err();
    let text = refusal_text(&err);
    assert!(
        text.contains("sender not allowed for app billing (senders)"),
        "{text}"
    );
    // The login wins over the network: the same client address is app `legacy` without AUTH,
    // whose sender `crm@legacy.test` billing may not use either.
    let err = s
        .send_as_billing("crm@legacy.test", &["payer@x.test"], &msg)
        .await
        .unwrap_err();
    assert!(refusal_text(&err).contains("app billing (senders)"));
    s.assert_nothing_queued().await;
    assert_eq!(
        s.metric(r#"mailveil_app_sender_refusals_total{app="billing",reason="senders"}"#)
            .await,
        2.0
    );
    assert_eq!(
        s.metric(r#"mailveil_inbound_rejections_total{reason="sender_denied"}"#)
            .await,
        2.0
    );
    // An allowed sender (a domain pattern, any case) goes through.
    let ok = s
        .send_as_billing(
            "Dunning@Billing.Example.com",
            &["payer@x.test"],
            &message(
                &["From: dunning@billing.example.com", "To: payer@x.test"],
                "pay\r\n",
            ),
        )
        .await;
    assert!(ok.as_ref().is_ok_and(|r| r.starts_with("250")), "{ok:?}");
    assert_eq!(wait_for_captures(&s.relay.outbox(), 1).await.len(), 1);
}

#[tokio::test]
async fn a_from_header_the_app_may_not_use_gets_550_and_nothing_is_queued() {
    let s = start().await;
    for (headers, field) in [
        (
            vec!["From: CEO <ceo@example.com>", "To: payer@x.test"],
            "From",
        ),
        (
            vec![
                "From: invoices@example.com",
                "Sender: ops@elsewhere.test",
                "To: payer@x.test",
            ],
            "Sender",
        ),
        (vec!["To: payer@x.test", "Subject: no author"], "From"),
    ] {
        let err = s
            .send_as_billing(
                "invoices@example.com",
                &["payer@x.test"],
                &message(&headers, "pay\r\n"),
            )
            .await
            .unwrap_err();
        let text = refusal_text(&err);
        assert!(
            text.contains(&format!(
                "{field}: address not allowed for app billing (header_senders)"
            )),
            "{headers:?}: {text}"
        );
    }
    s.assert_nothing_queued().await;
    assert_eq!(
        s.metric(r#"mailveil_app_sender_refusals_total{app="billing",reason="header_senders"}"#)
            .await,
        3.0
    );
    assert_eq!(
        s.metric(r#"mailveil_app_messages_total{app="billing",outcome="rejected"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn a_stricter_app_privacy_override_splits_where_the_global_policy_passes() {
    let s = start().await;
    let rcpts = ["a@x.test", "b@y.test", "c@z.test"];
    let headers = |from: &str| {
        vec![
            format!("From: {from}"),
            "To: a@x.test, b@y.test, c@z.test".to_string(),
            "Subject: team".to_string(),
        ]
    };
    // Legacy (by network, no override): 3 visible recipients are within the global 5.
    let (mut raw, _) = RawSmtp::connect(s.relay.smtp).await;
    assert!(raw.cmd("EHLO crm.test").await.starts_with("250"));
    let null = raw.cmd("MAIL FROM:<>").await;
    assert!(
        null.starts_with("550 5.7.1") && null.contains("app legacy (allow_null_sender)"),
        "{null}"
    );
    let foreign = raw.cmd("MAIL FROM:<invoices@example.com>").await;
    assert!(
        foreign.starts_with("550 5.7.1") && foreign.contains("app legacy (senders)"),
        "{foreign}"
    );
    assert!(
        raw.cmd("MAIL FROM:<crm@legacy.test>")
            .await
            .starts_with("250")
    );
    for r in rcpts {
        assert!(raw.cmd(&format!("RCPT TO:<{r}>")).await.starts_with("250"));
    }
    assert!(raw.cmd("DATA").await.starts_with("354"));
    let h = headers("crm@legacy.test");
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut body = message(&h, "hello team\r\n");
    body.extend_from_slice(b".\r\n");
    raw.send(&body).await;
    let done = raw.reply().await;
    assert!(done.starts_with("250"), "{done}");
    let copies = wait_for_captures(&s.relay.outbox(), 1).await;
    assert_eq!(
        copies.len(),
        1,
        "the global policy passes the message whole"
    );
    assert_eq!(copies[0].rcpt_to.len(), 3);
    drop(raw);

    // Billing (max_visible_recipients = 1): the same message is split, one copy each.
    let h = headers("invoices@example.com");
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let ok = s
        .send_as_billing(
            "invoices@example.com",
            &rcpts,
            &message(&h, "hello team\r\n"),
        )
        .await;
    assert!(ok.as_ref().is_ok_and(|r| r.starts_with("250")), "{ok:?}");
    let copies = wait_for_captures(&s.relay.outbox(), 4).await;
    let split: Vec<_> = copies.iter().filter(|c| c.rcpt_to.len() == 1).collect();
    assert_eq!(split.len(), 3, "billing's copies are split: {copies:?}");
    for c in split {
        let text = String::from_utf8_lossy(&c.bytes);
        for other in rcpts.iter().filter(|r| **r != c.rcpt_to[0]) {
            assert!(!text.contains(other), "{} sees {other}", c.rcpt_to[0]);
        }
    }
    assert_eq!(
        s.metric(r#"mailveil_privacy_actions_total{action="split"}"#)
            .await,
        1.0
    );
    assert_eq!(
        s.metric(r#"mailveil_app_messages_total{app="legacy",outcome="accepted"}"#)
            .await,
        1.0
    );
    assert_eq!(
        s.metric(r#"mailveil_app_sender_refusals_total{app="legacy",reason="null_sender"}"#)
            .await,
        1.0
    );
    let status = admin_status(s.relay.admin, TOKEN).await;
    let apps = status["apps"].as_array().expect("apps in /status");
    assert_eq!(apps.len(), 2, "{status}");
    assert_eq!(apps[0]["name"], "billing");
    assert_eq!(apps[0]["messages_accepted"], 1);
    assert_eq!(apps[1]["name"], "legacy");
    assert_eq!(apps[1]["messages_accepted"], 1);
    assert_eq!(apps[1]["messages_rejected"], 0);
}

#[tokio::test]
async fn require_app_refuses_a_session_without_an_app_after_a_reload() {
    let s = start().await;
    let text = std::fs::read_to_string(&s.relay.config).unwrap();
    // The legacy app moves to another network: 127.0.0.1 belongs to no app any more.
    let next = text
        .replace(
            "networks = [\"127.0.0.0/8\"]\nsenders = [\"crm@legacy.test\"]",
            "networks = [\"10.9.0.0/16\"]\nsenders = [\"crm@legacy.test\"]",
        )
        .replace("[privacy]", "[apps]\nrequire_app = true\n[privacy]");
    assert_ne!(text, next);
    std::fs::write(&s.relay.config, next).unwrap();
    s.relay.signal("HUP");
    s.relay.wait_for_log("configuration reloaded", 0).await;
    let (mut raw, _) = RawSmtp::connect(s.relay.smtp).await;
    assert!(raw.cmd("EHLO crm.test").await.starts_with("250"));
    let mail = raw.cmd("MAIL FROM:<crm@legacy.test>").await;
    assert!(
        mail.starts_with("550 5.7.1") && mail.contains("apps.require_app"),
        "{mail}"
    );
    drop(raw);
    s.assert_nothing_queued().await;
    assert_eq!(
        s.metric(r#"mailveil_app_sender_refusals_total{app="none",reason="no_app"}"#)
            .await,
        1.0
    );
    // An app by login is still recognised.
    let ok = s
        .send_as_billing(
            "invoices@example.com",
            &["payer@x.test"],
            &message(&["From: invoices@example.com", "To: payer@x.test"], "x\r\n"),
        )
        .await;
    assert!(ok.as_ref().is_ok_and(|r| r.starts_with("250")), "{ok:?}");
}

#[test]
fn check_config_refuses_a_weaker_override_unless_allow_weaker() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apps.toml");
    let base = format!(
        "[privacy]\nmax_visible_recipients = 1\ntrusted_domains = [\"corp.test\"]\n[spool]\ndir = \"{d}/spool\"\n[[upstream]]\nname = \"o\"\ndir = \"{d}/outbox\"\n[[app]]\nname = \"news\"\nlogins = [\"news\"]\nsenders = [\"@news.test\"]\n[app.privacy]\nmax_visible_recipients = 10\ntrusted_domains = [\"partner.test\"]\n",
        d = dir.path().display()
    );
    let check = |text: &str| {
        std::fs::write(&file, text).unwrap();
        Command::new(BIN)
            .args(["check-config", "-c"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = check(&base);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "app[0].privacy.max_visible_recipients",
        "app[0].privacy.trusted_domains",
    ] {
        assert!(err.contains(key), "missing {key} in:\n{err}");
    }
    assert!(err.contains("weaker than [privacy]"), "{err}");
    let out = check(&format!("{base}allow_weaker = true\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An app without senders, and a login claimed twice, are refused too.
    let out = check(&format!(
        "{base}allow_weaker = true\n[[app]]\nname = \"dup\"\nlogins = [\"news\"]\n"
    ));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app[1].senders"), "{err}");
    assert!(err.contains("app[1].logins[0]"), "{err}");
}
