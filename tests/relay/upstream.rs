//! End-to-end tests of upstream delivery against real SMTP peers on 127.0.0.1: the capture
//! sink (mailin-embedded) and a scripted server for faults, TLS and AUTH.

use crate::support;
use crate::support::scripted_smtp;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mailveil::capture;
use mailveil::config::{
    Credentials, Secret, SmtpUpstreamConfig, UpstreamConfig, UpstreamKind, UpstreamTls,
};
use mailveil::sink::{self, SinkTls};
use mailveil::upstream::{Outbound, PoolLimits, Stage, Timeouts, Upstream, UpstreamError};
use scripted_smtp::{Script, ScriptedSmtp, Step};
use support::pki::TestCa;

/// Every test is bounded: no step waits longer than this.
const TIMEOUT: Duration = Duration::from_secs(10);

const HEADER: &[u8] = b"From: app@example.com\r\nTo: r@example.com\r\nSubject: test\r\n\r\n";
const BODY: &[u8] = b"Hello.\r\n.leading dot stays\r\n..two dots\r\n\r\nlast line\r\n";

fn smtp(host: &str, port: u16, tls: UpstreamTls) -> SmtpUpstreamConfig {
    SmtpUpstreamConfig {
        local: false,
        host: host.into(),
        port,
        tls,
        ca_file: None,
        credentials: None,
        max_connections: 4,
        timeout: TIMEOUT,
    }
}

/// A scripted server offering STARTTLS with a certificate for `names` signed by `ca`.
async fn starttls_server(ca: &TestCa, names: &[&str]) -> ScriptedSmtp {
    ScriptedSmtp::start(Script {
        starttls: Some(ca.server_cert(names).server_config()),
        ..Script::default()
    })
    .await
}

/// `smtp(host, port, tls)` trusting `ca`, whose certificate is written as `dir/ca.pem`.
fn smtp_trusting(
    host: &str,
    port: u16,
    tls: UpstreamTls,
    ca: &TestCa,
    dir: &Path,
) -> SmtpUpstreamConfig {
    let mut config = smtp(host, port, tls);
    config.ca_file = Some(ca.write(dir, "ca.pem"));
    config
}

fn upstream(config: SmtpUpstreamConfig) -> Upstream {
    let config = UpstreamConfig {
        name: "test".into(),
        limits: Default::default(),
        kind: UpstreamKind::Smtp(config),
    };
    Upstream::from_config(&config, "relay.test").expect("upstream config")
}

fn rcpt(addrs: &[&str]) -> Vec<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

async fn send(
    up: &Upstream,
    from: &str,
    to: &[String],
    header: &[u8],
    body: &[u8],
) -> Result<String, UpstreamError> {
    let msg = Outbound {
        mail_from: from,
        rcpt_to: to,
        header,
        body,
    };
    let outcome = tokio::time::timeout(TIMEOUT * 2, up.send(msg)).await;
    outcome
        .expect("send must end within its timeouts")
        .map(|d| d.reply)
}

/// The usual test message (`HEADER` + `BODY`) from `s@example.com` to `to`.
async fn send_to(up: &Upstream, to: &[&str]) -> Result<String, UpstreamError> {
    send(up, "s@example.com", &rcpt(to), HEADER, BODY).await
}

/// The usual test message from `s@example.com` to `r@example.com`.
async fn send_one(up: &Upstream) -> Result<String, UpstreamError> {
    send_to(up, &["r@example.com"]).await
}

/// Starts the capture sink on a free port in a background thread.
fn start_sink(dir: &Path, tls: Option<SinkTls>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || sink::run_on(listener, dir, tls));
    port
}

/// A port with nothing listening (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn plaintext_to_sink_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("captured");
    let port = start_sink(&dir, None);
    let up = upstream(smtp("127.0.0.1", port, UpstreamTls::None));
    let to = rcpt(&["a@example.com", "b@example.org"]);

    let reply = send(&up, "sender@example.com", &to, HEADER, BODY)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    // A body ending in an empty line, and one with 8-bit content.
    let body2 = b"ends with a blank line\r\n\r\n".as_slice();
    send(&up, "s2@example.com", &to[..1], HEADER, body2)
        .await
        .unwrap();
    let body3 = "caf\u{e9} \u{2014} 8-bit\r\n".as_bytes();
    send(&up, "s3@example.com", &to[1..], HEADER, body3)
        .await
        .unwrap();

    let all = capture::read_all(&dir).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0].bytes,
        [HEADER, BODY].concat(),
        "received body is byte-identical"
    );
    assert_eq!(all[0].mail_from, "sender@example.com");
    assert_eq!(all[0].rcpt_to, to);
    assert!(reply.contains(&all[0].id));
    assert_eq!(all[1].bytes, [HEADER, body2].concat());
    assert_eq!(all[1].rcpt_to, rcpt(&["a@example.com"]));
    assert_eq!(all[2].bytes, [HEADER, body3].concat());
    assert_eq!(all[2].mail_from, "s3@example.com");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{}.json", all[0].id))).unwrap())
            .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"mail_from": "sender@example.com", "rcpt_to": ["a@example.com", "b@example.org"]})
    );
}

#[tokio::test]
async fn null_sender_is_sent_as_empty_path() {
    let server = ScriptedSmtp::start(Script::default()).await;
    let up = upstream(smtp("127.0.0.1", server.port(), UpstreamTls::None));
    send(&up, "", &rcpt(&["r@example.com"]), HEADER, b"bounce\r\n")
        .await
        .unwrap();
    let record = server.record();
    assert_eq!(record.messages.len(), 1);
    assert_eq!(record.messages[0].mail_line, "MAIL FROM:<>");
    assert_eq!(record.messages[0].mail_from, "");
    assert_eq!(record.messages[0].data, [HEADER, b"bounce\r\n"].concat());
}

#[tokio::test]
async fn message_without_body_keeps_its_header_block() {
    let server = ScriptedSmtp::start(Script::default()).await;
    let up = upstream(smtp("127.0.0.1", server.port(), UpstreamTls::None));
    send(&up, "s@example.com", &rcpt(&["r@example.com"]), HEADER, b"")
        .await
        .unwrap();
    assert_eq!(server.record().messages[0].data, HEADER);
}

#[tokio::test]
async fn starttls_to_sink_with_private_ca_and_ip_address_host() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mailveil test CA");
    let (cert, key) = ca.server_cert(&["127.0.0.1"]).write(tmp.path());
    let dir = tmp.path().join("captured");
    let port = start_sink(&dir, Some(SinkTls { cert, key }));

    let config = smtp_trusting("127.0.0.1", port, UpstreamTls::StartTls, &ca, tmp.path());
    let up = upstream(config);
    send_one(&up).await.unwrap();

    let all = capture::read_all(&dir).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].bytes, [HEADER, BODY].concat());
}

#[tokio::test]
async fn starttls_with_dns_name_is_verified_and_used() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mailveil test CA");
    let server = starttls_server(&ca, &["localhost"]).await;
    let config = smtp_trusting(
        "localhost",
        server.port(),
        UpstreamTls::StartTls,
        &ca,
        tmp.path(),
    );
    let up = upstream(config);
    send_one(&up).await.unwrap();
    let record = server.record();
    assert_eq!(record.messages.len(), 1);
    assert!(record.messages[0].tls, "MAIL came after STARTTLS");
}

#[tokio::test]
async fn untrusted_certificate_is_a_temporary_tls_error() {
    let tmp = tempfile::tempdir().unwrap();
    let trusted = TestCa::new("trusted CA");
    let other = TestCa::new("someone else's CA");
    let server = starttls_server(&other, &["127.0.0.1"]).await;
    let config = smtp_trusting(
        "127.0.0.1",
        server.port(),
        UpstreamTls::StartTls,
        &trusted,
        tmp.path(),
    );
    let up = upstream(config);
    let err = send_one(&up).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Tls(_)), "{err}");
    assert!(err.is_temporary());
    let record = server.record();
    assert!(record.saw("STARTTLS"));
    assert!(!record.saw("MAIL"), "nothing sent after a failed handshake");
    assert!(record.messages.is_empty());
}

#[tokio::test]
async fn certificate_for_another_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mailveil test CA");
    // Valid chain, but for "localhost" while we connect to (and verify) 127.0.0.1.
    let server = starttls_server(&ca, &["localhost"]).await;
    let config = smtp_trusting(
        "127.0.0.1",
        server.port(),
        UpstreamTls::StartTls,
        &ca,
        tmp.path(),
    );
    let err = send_one(&upstream(config)).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Tls(_)), "{err}");
    assert!(!server.record().saw("MAIL"));
}

#[tokio::test]
async fn missing_starttls_never_falls_back_to_plaintext() {
    let server = ScriptedSmtp::start(Script::default()).await; // offers no STARTTLS
    let up = upstream(smtp("127.0.0.1", server.port(), UpstreamTls::StartTls));
    let err = send_one(&up).await.unwrap_err();
    assert!(matches!(err, UpstreamError::NoStartTls), "{err}");
    assert!(err.is_temporary());
    let record = server.record();
    assert!(record.saw("EHLO"));
    assert!(!record.saw("MAIL"), "never MAIL FROM in plaintext");
    assert!(!record.saw("AUTH"));
    assert!(record.messages.is_empty());
}

#[tokio::test]
async fn implicit_tls_is_used_from_the_first_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mailveil test CA");
    let server = ScriptedSmtp::start(Script {
        implicit_tls: Some(ca.server_cert(&["127.0.0.1"]).server_config()),
        ..Script::default()
    })
    .await;
    let config = smtp_trusting(
        "127.0.0.1",
        server.port(),
        UpstreamTls::Implicit,
        &ca,
        tmp.path(),
    );
    let up = upstream(config);
    send_one(&up).await.unwrap();
    let record = server.record();
    assert_eq!(record.messages.len(), 1);
    assert!(record.messages[0].tls);
    assert_eq!(record.messages[0].data, [HEADER, BODY].concat());
    assert!(!record.saw("STARTTLS"));

    // And without the private CA the same server is not trusted.
    let config = smtp("127.0.0.1", server.port(), UpstreamTls::Implicit);
    let err = send_one(&upstream(config)).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Tls(_)), "{err}");
}

fn auth_server_config(ca: &TestCa, tmp: &Path, port: u16, password: &str) -> SmtpUpstreamConfig {
    let mut config = smtp_trusting("127.0.0.1", port, UpstreamTls::StartTls, ca, tmp);
    config.credentials = Some(Credentials {
        username: "apikey".into(),
        password: Secret::new(password),
    });
    config
}

#[tokio::test]
async fn auth_plain_over_starttls() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mailveil test CA");
    let server = ScriptedSmtp::start(Script {
        starttls: Some(ca.server_cert(&["127.0.0.1"]).server_config()),
        auth_plain: Some(("apikey".into(), "s3cret-pass".into())),
        ..Script::default()
    })
    .await;
    let up = upstream(auth_server_config(
        &ca,
        tmp.path(),
        server.port(),
        "s3cret-pass",
    ));
    send_one(&up).await.unwrap();
    let record = server.record();
    assert_eq!(record.messages.len(), 1);
    assert_eq!(record.messages[0].user.as_deref(), Some("apikey"));
    assert!(record.messages[0].tls);

    // Wrong password: temporary (operators fix credentials), with the code, no secret in text.
    let up = upstream(auth_server_config(
        &ca,
        tmp.path(),
        server.port(),
        "wrong-pass",
    ));
    let err = send_one(&up).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Auth { .. }), "{err}");
    assert!(err.is_temporary());
    assert_eq!(err.code(), Some(535));
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("wrong-pass") && !text.contains("apikey"),
        "{text}"
    );
    assert_eq!(
        server.record().messages.len(),
        1,
        "nothing delivered without AUTH"
    );
}

#[tokio::test]
async fn replies_are_classified() {
    for (code, temporary) in [(451, true), (550, false), (452, true), (554, false)] {
        let server = ScriptedSmtp::start(Script {
            replies: [(Step::Rcpt, format!("{code} {}.1.1 scripted", code / 100))].into(),
            ..Script::default()
        })
        .await;
        let up = upstream(smtp("127.0.0.1", server.port(), UpstreamTls::None));
        let err = send_one(&up).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "{err}");
        assert_eq!(err.is_temporary(), temporary, "{err}");
        assert!(
            matches!(
                err,
                UpstreamError::Rejected {
                    stage: Stage::RcptTo,
                    ..
                }
            ),
            "{err}"
        );
        // The server pipelines, so DATA went out with RCPT; it found no recipient and the
        // message itself was never sent.
        assert!(
            server.record().messages.is_empty(),
            "nothing after a refused RCPT"
        );
        assert!(
            !server.record().saw("."),
            "no message data after a refused RCPT"
        );
    }
    // A 5xx after the data is permanent too.
    let server = ScriptedSmtp::start(Script {
        replies: [(Step::DataEnd, "554 5.6.0 content rejected".to_string())].into(),
        ..Script::default()
    })
    .await;
    let up = upstream(smtp("127.0.0.1", server.port(), UpstreamTls::None));
    let err = send_one(&up).await.unwrap_err();
    assert!(!err.is_temporary());
    assert!(matches!(
        err,
        UpstreamError::Rejected {
            stage: Stage::Message,
            code: 554,
            ..
        }
    ));
    assert!(
        !err.to_string().contains("leading dot"),
        "no message content in errors"
    );
}

#[tokio::test]
async fn connection_refused_is_temporary() {
    let up = upstream(smtp("127.0.0.1", closed_port(), UpstreamTls::None));
    let err = send_one(&up).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
    assert!(err.is_temporary());
    assert_eq!(err.code(), None);
}

#[tokio::test]
async fn stalled_server_times_out() {
    for (stall, stage) in [
        (Step::Greeting, Stage::Greeting),
        (Step::DataEnd, Stage::Message),
    ] {
        let server = ScriptedSmtp::start(Script {
            stall_at: Some(stall),
            ..Script::default()
        })
        .await;
        let mut config = smtp("127.0.0.1", server.port(), UpstreamTls::None);
        config.timeout = Duration::from_millis(500);
        let up = upstream(config);
        let started = std::time::Instant::now();
        let err = send_one(&up).await.unwrap_err();
        assert!(
            matches!(err, UpstreamError::Timeout { stage: s, .. } if s == stage),
            "{err}"
        );
        assert!(err.is_temporary());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn dropped_connection_is_temporary() {
    let server = ScriptedSmtp::start(Script {
        drop_at: Some(Step::DataEnd),
        ..Script::default()
    })
    .await;
    let up = upstream(smtp("127.0.0.1", server.port(), UpstreamTls::None));
    let err = send_one(&up).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(
        matches!(
            err,
            UpstreamError::Protocol {
                stage: Stage::Message,
                ..
            } | UpstreamError::Io {
                stage: Stage::Message,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn sequential_sends_reuse_one_connection() {
    let server = ScriptedSmtp::start(Script::default()).await;
    let up = upstream(smtp("127.0.0.1", server.port(), UpstreamTls::None));
    for i in 0..3 {
        let to = rcpt(&[&format!("r{i}@example.com")]);
        send(&up, "s@example.com", &to, HEADER, BODY).await.unwrap();
    }
    let record = server.record();
    assert_eq!(record.messages.len(), 3);
    assert_eq!(record.connections, 1, "one TCP connection for all three");
    assert_eq!(record.messages[2].rcpt_to, rcpt(&["r2@example.com"]));
    assert_eq!(up.idle_connections(), 1);
}

#[tokio::test]
async fn refused_recipient_leaves_the_connection_reusable() {
    let server = ScriptedSmtp::start(Script {
        rcpt_replies: [(
            "bad@example.com".to_string(),
            "550 5.1.1 no such user".to_string(),
        )]
        .into(),
        ..Script::default()
    })
    .await;
    let up = upstream(smtp("127.0.0.1", server.port(), UpstreamTls::None));
    let err = send_to(&up, &["bad@example.com"]).await.unwrap_err();
    assert_eq!(err.code(), Some(550));
    send_to(&up, &["good@example.com"]).await.unwrap();
    let record = server.record();
    assert_eq!(record.connections, 1);
    assert!(record.saw("RSET"), "the failed transaction was reset");
    assert_eq!(record.messages.len(), 1);
    // All or nothing: one refused recipient fails the copy, the other gets nothing.
    let err = send_to(&up, &["good@example.com", "bad@example.com"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(550));
    assert_eq!(server.record().messages.len(), 1);
}

#[tokio::test]
async fn connection_closed_by_server_while_idle_is_replaced() {
    let server = ScriptedSmtp::start(Script {
        close_after_messages: Some(1),
        ..Script::default()
    })
    .await;
    let up = upstream(smtp("127.0.0.1", server.port(), UpstreamTls::None));
    for _ in 0..2 {
        send_one(&up).await.unwrap();
    }
    let record = server.record();
    assert_eq!(
        record.messages.len(),
        2,
        "the second copy went over a fresh connection"
    );
    assert_eq!(record.connections, 2);
}

#[tokio::test]
async fn concurrency_cap_is_respected() {
    let server = ScriptedSmtp::start(Script {
        data_end_delay: Duration::from_millis(100),
        ..Script::default()
    })
    .await;
    let mut config = smtp("127.0.0.1", server.port(), UpstreamTls::None);
    config.max_connections = 2;
    let up = Arc::new(upstream(config));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let up = up.clone();
        tasks.spawn(async move {
            let to = rcpt(&[&format!("r{i}@example.com")]);
            send(&up, "s@example.com", &to, HEADER, BODY).await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let record = server.record();
    assert_eq!(record.messages.len(), 8);
    assert!(
        record.max_active <= 2,
        "at most 2 sessions at once, saw {}",
        record.max_active
    );
    assert_eq!(
        record.max_active, 2,
        "the cap is used, not serialised to one"
    );
    assert_eq!(record.connections, 2, "connections are reused under load");
}

#[tokio::test]
async fn transaction_cap_rotates_connections() {
    let server = ScriptedSmtp::start(Script::default()).await;
    let config = UpstreamConfig {
        name: "capped".into(),
        limits: Default::default(),
        kind: UpstreamKind::Smtp(smtp("127.0.0.1", server.port(), UpstreamTls::None)),
    };
    let limits = PoolLimits {
        max_transactions: 2,
        ..PoolLimits::default()
    };
    let up =
        Upstream::with_limits(&config, "relay.test", Timeouts::uniform(TIMEOUT), limits).unwrap();
    for _ in 0..5 {
        send_one(&up).await.unwrap();
    }
    assert_eq!(server.record().connections, 3, "2 + 2 + 1 transactions");
}

#[tokio::test]
async fn dir_upstream_writes_capture_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("outbox");
    let config = UpstreamConfig {
        name: "outbox".into(),
        limits: Default::default(),
        kind: UpstreamKind::Dir { dir: dir.clone() },
    };
    let up = Upstream::from_config(&config, "relay.test").unwrap();
    let id = send(&up, "", &rcpt(&["r@example.com"]), HEADER, BODY)
        .await
        .unwrap();
    let all = capture::read_all(&dir).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, id);
    assert_eq!(all[0].mail_from, "");
    assert_eq!(all[0].bytes, [HEADER, BODY].concat());
}
