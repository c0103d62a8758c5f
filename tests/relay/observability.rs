//! Metrics and logs of a real `mailveil run` process after real traffic: every SPEC series
//! present from start, values matching what was sent, `promtool check metrics` clean, JSON log
//! events with the fields operators search by, and no address in logs by default.

use crate::support;
use crate::support::scripted_smtp;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp, Step};
use support::*;

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text (our label values never contain `"`, `,` or `=`).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label pair");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (n.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Sample {
                name,
                labels,
                value: value.parse().expect("numeric value"),
            }
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`; panics if there is none, so a
/// missing series fails the test as clearly as a wrong value.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .value
}

const SPEC_SERIES: &[&str] = &[
    "mailveil_messages_received_total",
    "mailveil_privacy_actions_total",
    "mailveil_deliveries_total",
    "mailveil_delivery_duration_seconds_bucket",
    "mailveil_delivery_duration_seconds_count",
    "mailveil_queue_messages",
    "mailveil_throttle_delays_total",
    "mailveil_upstream_up",
    "mailveil_inbound_connections",
    "mailveil_inbound_rejections_total",
    "mailveil_spool_bytes",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
];

fn outbox_config() -> String {
    concat!(
        r#"
[server]
listen = "{smtp}"
"#,
        spool_and_outbox!(),
        metrics_listener!(),
    )
    .to_string()
}

#[tokio::test]
async fn every_series_exists_at_start_with_bounded_labels() {
    let r = RelayProc::start(&outbox_config(), &[]).await;
    let (code, text) = http_get(r.metrics, "/metrics").await;
    assert_eq!(code, 200);
    let samples = parse(&text);
    for name in SPEC_SERIES {
        assert!(
            samples.iter().any(|s| &s.name == name),
            "{name} missing:\n{text}"
        );
    }
    for outcome in ["accepted", "rejected"] {
        assert_eq!(
            value(
                &samples,
                "mailveil_messages_received_total",
                &[("outcome", outcome)]
            ),
            0.0
        );
    }
    for action in ["pass", "split", "bcc", "reject", "monitor"] {
        assert_eq!(
            value(
                &samples,
                "mailveil_privacy_actions_total",
                &[("action", action)]
            ),
            0.0
        );
    }
    for reason in ["field", "body", "malformed"] {
        assert_eq!(
            value(
                &samples,
                "mailveil_privacy_blocked_total",
                &[("reason", reason)]
            ),
            0.0
        );
    }
    for provider in [
        "yahoo",
        "netease",
        "qq",
        "google",
        "microsoft",
        "apple",
        "default",
    ] {
        for outcome in ["delivered", "deferred", "failed"] {
            let labels = [
                ("provider", provider),
                ("upstream", "outbox"),
                ("outcome", outcome),
            ];
            assert_eq!(value(&samples, "mailveil_deliveries_total", &labels), 0.0);
        }
        assert_eq!(
            value(
                &samples,
                "mailveil_queue_messages",
                &[("provider", provider)]
            ),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "mailveil_throttle_delays_total",
                &[("provider", provider)]
            ),
            0.0
        );
    }
    assert_eq!(
        value(&samples, "mailveil_upstream_up", &[("upstream", "outbox")]),
        1.0
    );
    for reason in ["relay_denied", "malformed"] {
        assert_eq!(
            value(
                &samples,
                "mailveil_inbound_rejections_total",
                &[("reason", reason)]
            ),
            0.0
        );
    }
    // Labels come from fixed sets only: no sample carries an `@`.
    assert!(!text.contains('@'));
}

#[tokio::test]
async fn metrics_match_the_traffic_sent() {
    let mut script = Script::default();
    script.rcpt_replies.insert(
        "bad.rcpt@example.org".into(),
        "550 5.1.1 no such user".into(),
    );
    script.rcpt_replies.insert(
        "later.rcpt@example.org".into(),
        "451 4.3.0 try later".into(),
    );
    let mx = ScriptedSmtp::start(script).await;
    let config = format!(
        r#"
[server]
listen = "{{smtp}}"
max_recipients = 3
[spool]
dir = "{{dir}}/spool"
retry_initial = "1h"
retry_max = "2h"
[[upstream]]
name = "mx"
host = "127.0.0.1"
port = {port}
tls = "none"
[metrics]
listen = "{{metrics}}"
"#,
        port = mx.port()
    );
    let r = RelayProc::start(&config, &[]).await;

    // 1: an exposing message to three recipients -> split; two delivered, one refused (550).
    let to = ["ann@example.org", "bob@example.org", "bad.rcpt@example.org"];
    let m = message(
        &[
            "From: shop@example.com",
            &format!("To: {}", to.join(", ")),
            "Subject: a",
        ],
        "One.\r\n",
    );
    lettre_send(r.smtp, Some("shop@example.com"), &to, &m)
        .await
        .unwrap();
    // 2: one Yahoo recipient -> pass, delivered.
    let m = message(
        &["From: shop@example.com", "To: uma@yahoo.com", "Subject: b"],
        "Two.\r\n",
    );
    lettre_send(r.smtp, Some("shop@example.com"), &["uma@yahoo.com"], &m)
        .await
        .unwrap();
    // 3: one recipient the upstream defers (451) -> deferred, stays queued.
    let m = message(
        &[
            "From: shop@example.com",
            "To: later.rcpt@example.org",
            "Subject: c",
        ],
        "Three.\r\n",
    );
    lettre_send(
        r.smtp,
        Some("shop@example.com"),
        &["later.rcpt@example.org"],
        &m,
    )
    .await
    .unwrap();
    // 4: a fourth recipient over max_recipients -> 452, counted as an inbound rejection.
    let (mut s, _) = RawSmtp::connect(r.smtp).await;
    s.cmd("EHLO client.test").await;
    s.cmd("MAIL FROM:<shop@example.com>").await;
    for rcpt in ["a1@example.org", "a2@example.org", "a3@example.org"] {
        assert!(s.cmd(&format!("RCPT TO:<{rcpt}>")).await.starts_with("250"));
    }
    assert!(s.cmd("RCPT TO:<a4@example.org>").await.starts_with("452"));
    assert!(s.cmd("QUIT").await.starts_with("221"));
    drop(s);

    // Wait until every copy has an outcome and every connection is closed.
    let end = Instant::now() + PATIENCE;
    let samples = loop {
        let samples = parse(&http_get(r.metrics, "/metrics").await.1);
        let outcomes: f64 = samples
            .iter()
            .filter(|s| s.name == "mailveil_deliveries_total")
            .map(|s| s.value)
            .sum();
        if outcomes >= 5.0 && value(&samples, "mailveil_inbound_connections", &[]) == 0.0 {
            break samples;
        }
        assert!(Instant::now() < end, "outcomes so far: {outcomes}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(
        v(
            "mailveil_messages_received_total",
            &[("outcome", "accepted")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "mailveil_messages_received_total",
            &[("outcome", "rejected")]
        ),
        0.0
    );
    assert_eq!(
        v("mailveil_privacy_actions_total", &[("action", "split")]),
        1.0
    );
    assert_eq!(
        v("mailveil_privacy_actions_total", &[("action", "pass")]),
        2.0
    );
    assert_eq!(
        v("mailveil_privacy_actions_total", &[("action", "bcc")]),
        0.0
    );
    let d = |provider, outcome| {
        v(
            "mailveil_deliveries_total",
            &[
                ("provider", provider),
                ("upstream", "mx"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(d("default", "delivered"), 2.0);
    assert_eq!(d("default", "failed"), 1.0);
    assert_eq!(d("default", "deferred"), 1.0);
    assert_eq!(d("yahoo", "delivered"), 1.0);
    assert_eq!(d("yahoo", "failed"), 0.0);
    assert_eq!(d("google", "delivered"), 0.0);
    assert_eq!(
        v(
            "mailveil_delivery_duration_seconds_count",
            &[("provider", "default")]
        ),
        2.0
    );
    assert_eq!(
        v(
            "mailveil_delivery_duration_seconds_count",
            &[("provider", "yahoo")]
        ),
        1.0
    );
    assert_eq!(
        v("mailveil_queue_messages", &[("provider", "default")]),
        1.0,
        "the deferred copy"
    );
    assert_eq!(v("mailveil_queue_messages", &[("provider", "yahoo")]), 0.0);
    assert_eq!(v("mailveil_upstream_up", &[("upstream", "mx")]), 1.0);
    assert_eq!(
        v(
            "mailveil_inbound_rejections_total",
            &[("reason", "too_many_recipients")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "mailveil_inbound_rejections_total",
            &[("reason", "relay_denied")]
        ),
        0.0
    );
    assert_eq!(v("mailveil_accept_duration_seconds_count", &[]), 3.0);
    assert!(
        v("mailveil_spool_bytes", &[]) > 0.0,
        "the deferred message is spooled"
    );
    assert!(v("process_start_time_seconds", &[]) > 1.0e9);
    // The upstream saw exactly the three delivered copies.
    let seen: Vec<_> = mx
        .record()
        .messages
        .iter()
        .map(|m| m.rcpt_to.clone())
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test]
async fn promtool_accepts_the_metrics_of_a_running_relay() {
    let required = std::env::var("MAILVEIL_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
    let have = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            !required,
            "promtool is required (MAILVEIL_REQUIRE_TOOLS=1) but not installed"
        );
        eprintln!("promtool not installed; skipping (CI installs it)");
        return;
    }
    let r = RelayProc::start(&outbox_config(), &[]).await;
    let to = ["vic@example.org", "wyn@example.org"];
    let m = message(
        &["From: s@example.com", &format!("To: {}", to.join(", "))],
        "x\r\n",
    );
    lettre_send(r.smtp, Some("s@example.com"), &to, &m)
        .await
        .unwrap();
    wait_for_captures(&r.outbox(), 2).await;
    let (_, text) = http_get(r.metrics, "/metrics").await;
    let file = r.dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < '{}'", file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Local parts made of letters outside `[0-9a-f]`, so a hex hash cannot end with them.
const SECRET_LOCALS: &[&str] = &["zelda.quokka", "wilhelmina.rutz", "yvonne.sprout"];

fn private_traffic_config(format: &str, show: bool) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
{storage}{metrics_section}[log]
format = "{format}"
show_addresses = {show}
"#,
        storage = spool_and_outbox!(),
        metrics_section = metrics_listener!(),
    )
}

/// Sends a split message and a rejected recipient, returns the relay's log once all copies
/// went out.
async fn private_traffic(config: &str) -> (RelayProc, String) {
    let r = RelayProc::start(config, &[("MAILVEIL_LOG", "debug")]).await;
    let to: Vec<String> = SECRET_LOCALS[..2]
        .iter()
        .map(|l| format!("{l}@example.org"))
        .collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let sender = format!("{}@example.com", SECRET_LOCALS[2]);
    let m = message(
        &[
            &format!("From: {sender}"),
            &format!("To: {}", to.join(", ")),
            "Subject: s",
        ],
        "Body.\r\n",
    );
    lettre_send(r.smtp, Some(&sender), &to, &m).await.unwrap();
    wait_for_captures(&r.outbox(), 2).await;
    let log = r.wait_for_log("delivered", 1).await;
    (r, log)
}

#[tokio::test]
async fn addresses_never_appear_in_logs_by_default() {
    let (_r, log) = private_traffic(&private_traffic_config("text", false)).await;
    for local in SECRET_LOCALS {
        assert!(!log.contains(local), "{local} leaked into the log:\n{log}");
    }
    assert!(
        log.contains("@example.org"),
        "domains stay readable:\n{log}"
    );
}

#[tokio::test]
async fn json_logs_carry_the_fields_of_accepted_and_delivery_events() {
    let (_r, log) = private_traffic(&private_traffic_config("json", true)).await;
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let accepted: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "accepted")
        .collect();
    assert_eq!(accepted.len(), 1, "one accepted event per message");
    let a = accepted[0];
    let queue_id = a["queue_id"].as_str().expect("queue_id");
    assert_eq!(a["code"], 250);
    assert_eq!(a["providers"], "default");
    assert_eq!(a["decision"], "split");
    assert!(a["duration_ms"].is_u64());
    let delivered: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 2, "one event per delivery outcome");
    for d in delivered {
        assert_eq!(d["queue_id"], queue_id);
        assert_eq!(d["provider"], "default");
        assert_eq!(d["upstream"], "outbox");
        assert_eq!(d["code"], 250);
        assert!(d["duration_ms"].is_u64());
        assert_eq!(d["level"], "INFO");
    }
    // show_addresses = true: the addresses are there (the default test above is not vacuous).
    assert!(log.contains(SECRET_LOCALS[0]), "{log}");
}

/// The upstream's answers for the reply test: a `250` quoting the recipient, a `550` naming
/// one, and a `451` carrying CR, an erase-line sequence, an OSC title sequence, a line
/// separator, NEL and a bidi override.
fn hostile_replies() -> Script {
    let mut script = Script::default();
    script
        .replies
        .insert(Step::DataEnd, "250 2.0.0 ok for <alice@x.test>".into());
    script.rcpt_replies.insert(
        "bob@y.test".into(),
        "550 5.1.1 <bob@y.test>: rejected".into(),
    );
    script.rcpt_replies.insert(
        "carol@z.test".into(),
        "451 4.3.0 busy\rFAKE mailveil line \x1b[2K\x1b]0;owned\x07 for <carol@z.test> \u{2028}\u{85}\u{202e}end".into(),
    );
    script
}

/// Sends one message split to alice, bob and carol through `upstream`; returns the relay's log
/// (`format`: text or json) once the three outcomes (delivered, failed, deferred) are in it.
async fn upstream_replies_logged(upstream: &ScriptedSmtp, show: bool, format: &str) -> String {
    let config = format!(
        r#"
[server]
listen = "{{smtp}}"
[spool]
dir = "{{dir}}/spool"
retry_initial = "60s"
{scripted}[metrics]
listen = "{{metrics}}"
[log]
show_addresses = {show}
format = "{format}"
"#,
        scripted = scripted_upstream("scripted", upstream.port(), "none", "10s"),
    );
    let r = RelayProc::start(&config, &[("MAILVEIL_LOG", "debug")]).await;
    let to = ["alice@x.test", "bob@y.test", "carol@z.test"];
    let m = message(
        &["From: app@src.test", &format!("To: {}", to.join(", "))],
        "x\r\n",
    );
    lettre_send(r.smtp, Some("app@src.test"), &to, &m)
        .await
        .unwrap();
    r.wait_for_log("delivered", 0).await;
    r.wait_for_log("failed permanently", 0).await;
    r.wait_for_log("deferred", 0).await
}

/// An upstream's replies and errors are logged with their addresses redacted like every other
/// address, and with control characters escaped whatever `show_addresses` says, so a reply can
/// neither leak a recipient nor forge or hide a log line.
#[tokio::test]
async fn upstream_replies_are_redacted_and_cannot_forge_log_lines() {
    let upstream = ScriptedSmtp::start(hostile_replies()).await;
    let log = upstream_replies_logged(&upstream, false, "text").await;
    for local in ["alice@", "bob@", "carol@"] {
        assert!(!log.contains(local), "{local} leaked into the log:\n{log}");
    }
    assert_no_raw_controls(&log);
    assert!(
        // The bare CR is gone (the reply parser drops it); the other controls are escaped.
        log.contains("busyFAKE mailveil line \\x1b[2K\\x1b]0;owned\\x07 for <"),
        "the 451 is logged, escaped:\n{log}"
    );
    assert!(log.contains("@z.test>"), "domains stay readable:\n{log}");

    // With show_addresses = true the addresses are there (so the check above can fail), and
    // control characters are still escaped.
    let upstream = ScriptedSmtp::start(hostile_replies()).await;
    let log = upstream_replies_logged(&upstream, true, "text").await;
    assert!(log.contains("ok for <alice@x.test>"), "{log}");
    assert!(log.contains("<bob@y.test>: rejected"), "{log}");
    assert!(log.contains("\\x1b[2K"), "{log}");
    assert_no_raw_controls(&log);
}

/// The same replies in the JSON format: every line is one JSON object, no line carries a raw
/// control character, line separator or bidi control, and the reply is in its field with the
/// same visible escapes as in the text format.
#[tokio::test]
async fn upstream_replies_cannot_forge_json_log_lines() {
    let upstream = ScriptedSmtp::start(hostile_replies()).await;
    let log = upstream_replies_logged(&upstream, true, "json").await;
    assert_no_raw_controls(&log);
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let deferred = events
        .iter()
        .find(|e| e["message"] == "deferred")
        .unwrap_or_else(|| panic!("no deferred event:\n{log}"));
    let error = deferred["error"].as_str().expect("error field");
    assert!(
        error.contains(
            "busyFAKE mailveil line \\x1b[2K\\x1b]0;owned\\x07 for <carol@z.test> \\u{2028}\\u{85}\\u{202e}end"
        ),
        "{error}"
    );
    for event in &events {
        for (field, value) in event.as_object().unwrap() {
            if let Some(text) = value.as_str() {
                assert!(
                    !text.chars().any(is_raw_control),
                    "{field} carries a raw control character: {text:?}"
                );
            }
        }
    }
}

/// A client's attachment name is quoted in the body check's warning: a bidi override or a line
/// separator in it is escaped there too, in both formats.
#[tokio::test]
async fn a_file_name_cannot_hide_or_break_a_log_line() {
    for format in ["text", "json"] {
        let config = format!(
            "{}[privacy]\nbody_check = \"monitor\"\n",
            private_traffic_config(format, false)
        );
        let r = RelayProc::start(&config, &[]).await;
        let to = ["zelda.quokka@example.org", "wilhelmina.rutz@example.org"];
        let m = message(
            &[
                "From: app@src.test",
                &format!("To: {}", to.join(", ")),
                "MIME-Version: 1.0",
                "Content-Type: multipart/mixed; boundary=\"b1\"",
            ],
            "--b1\r\nContent-Type: text/plain\r\n\r\nHello.\r\n\
             --b1\r\nContent-Type: text/csv\r\n\
             Content-Disposition: attachment; filename*=UTF-8''list%E2%80%AEvsc.exe%E2%80%A8FAKE\r\n\
             \r\nzelda.quokka@example.org\r\n--b1--\r\n",
        );
        lettre_send(r.smtp, Some("app@src.test"), &to, &m)
            .await
            .unwrap();
        let log = r.wait_for_log("body check (monitor)", 0).await;
        assert_no_raw_controls(&log);
        let shown = if format == "json" {
            let warning: serde_json::Value = log
                .lines()
                .find(|l| l.contains("body check (monitor)"))
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or_else(|| panic!("no JSON warning:\n{log}"));
            warning["part"].as_str().expect("part").to_string()
        } else {
            log.clone()
        };
        assert!(
            shown.contains(r"list\u{202e}vsc.exe\u{2028}FAKE"),
            "{format}:\n{log}"
        );
    }
}

/// A character a log line must not carry raw: a control character (other than the line end),
/// a Unicode line or paragraph separator, or a bidi control.
fn is_raw_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn assert_no_raw_controls(log: &str) {
    // `split`, not `lines`: that would drop a CR before the line end.
    for line in log.split('\n') {
        assert!(
            !line.chars().any(is_raw_control),
            "raw control character in a log line: {line:?}"
        );
        assert!(
            !line.trim_start().starts_with("FAKE"),
            "a reply forged a line: {line:?}"
        );
    }
}
