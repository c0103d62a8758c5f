//! The bulk hold against real `mailveil run` processes and a capture-directory upstream: a
//! message fanning out past `hold_fanout_above` sends only its canaries, stays held across a
//! SIGTERM and a kill -9, and goes out exactly once per recipient on `ctl release`; a dropped one
//! sends nothing more and leaves the spool for good; the hold timeout acts without an operator.

use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const TOKEN: &str = "hold-test-token-Xy";

const CONFIG: &str = concat!(
    r#"
[server]
listen = "{smtp}"
hostname = "relay.test"
max_recipients = 1000
[privacy]
hold_fanout_above = 100
{extra}
"#,
    spool_and_outbox!(),
    metrics_listener!(),
    admin_listener!(),
);

async fn relay(extra: &str) -> RelayProc {
    RelayProc::start(
        &CONFIG.replace("{extra}", extra),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await
}

/// Starts the relay again on the same config, spool and ports (the old process is gone).
async fn restart(r: &mut RelayProc, round: usize) {
    let log = r.dir.path().join(format!("relay-{round}.log"));
    let mut proc_ = spawn_mailveil(
        &["run", "-c", &r.config.display().to_string()],
        &log,
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    );
    wait_for_port(r.metrics, &mut proc_);
    let end = Instant::now() + PATIENCE;
    while http_get(r.metrics, "/readyz").await.0 != 200 {
        assert!(Instant::now() < end, "not ready:\n{}", proc_.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.proc_ = proc_;
}

fn recipients(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i:03}@example.org")).collect()
}

/// A message whose `To:` shows every recipient (folded, ten addresses a line).
async fn send_bulk(r: &RelayProc, rcpts: &[String]) -> String {
    let to = rcpts
        .chunks(10)
        .map(|c| c.join(", "))
        .collect::<Vec<_>>()
        .join(",\r\n ");
    let m = message(
        &[
            "From: app@example.com",
            &format!("To: {to}"),
            "Subject: newsletter",
        ],
        "Hello all.\r\n",
    );
    let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let reply = lettre_send(r.smtp, Some("app@example.com"), &to, &m)
        .await
        .unwrap();
    reply
        .split("queued as ")
        .nth(1)
        .unwrap_or_else(|| panic!("no queue id in {reply}"))
        .trim()
        .to_string()
}

fn ctl(r: &RelayProc, args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(BIN)
        .args([
            "ctl",
            "--admin",
            &format!("http://{}", r.admin),
            "--token",
            TOKEN,
        ])
        .args(args)
        .env_remove("MAILVEIL_ADMIN_TOKEN")
        .env_remove("MAILVEIL_ADMIN_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (out.status.code(), json)
}

fn held(r: &RelayProc) -> Vec<Value> {
    let (code, json) = ctl(r, &["held"]);
    assert_eq!(code, Some(0), "{json}");
    json["held"].as_array().unwrap().clone()
}

/// Captured copies per recipient.
fn delivered(outbox: &Path) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for c in mailveil::capture::read_all(outbox).unwrap_or_default() {
        for r in c.rcpt_to {
            *count.entry(r).or_insert(0) += 1;
        }
    }
    count
}

/// Asserts the outbox holds exactly `n` copies after a quiet second (nothing more trickles in).
async fn assert_copies_stay(outbox: &Path, n: usize) {
    wait_for_captures(outbox, n).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got: usize = delivered(outbox).values().sum();
    assert_eq!(got, n, "copies in the outbox");
}

async fn metrics(r: &RelayProc) -> String {
    http_get(r.metrics, "/metrics").await.1
}

fn spool_has(spool: &Path, id: &str) -> bool {
    std::fs::read_dir(spool.join("msg"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            std::fs::read(e.path())
                .map(|b| b.windows(id.len()).any(|w| w == id.as_bytes()))
                .unwrap_or(false)
        })
}

#[tokio::test]
async fn a_held_bulk_send_sends_canaries_survives_restarts_and_releases_each_copy_once() {
    let mut r = relay("canary = 3").await;
    let rcpts = recipients(500, "r");
    let id = send_bulk(&r, &rcpts).await;
    assert_copies_stay(&r.outbox(), 3).await;
    let got = delivered(&r.outbox());
    for canary in &rcpts[..3] {
        assert_eq!(got.get(canary), Some(&1), "canary {canary}");
    }
    // Each canary is a private copy: its To shows only its own recipient.
    for c in mailveil::capture::read_all(&r.outbox()).unwrap() {
        let text = String::from_utf8_lossy(&c.bytes);
        assert!(!text.contains("r499@example.org"), "{text}");
    }

    let list = held(&r);
    assert_eq!(list.len(), 1, "{list:?}");
    let h = &list[0];
    assert_eq!(h["id"], id.as_str());
    assert_eq!(h["recipients"], 500);
    assert_eq!(h["canaries"], 3);
    assert_eq!(h["canaries_done"], 3);
    assert_eq!(h["held_copies"], 497);
    assert!(h["age_secs"].is_u64());
    let listing = h.to_string();
    assert!(
        !listing.contains("@example.org") && !listing.contains("app@example.com"),
        "no addresses without show_addresses: {listing}"
    );
    let (_, full) = ctl(&r, &["held", "--show-addresses"]);
    assert_eq!(full["held"][0]["from"], "app@example.com");
    let text = metrics(&r).await;
    assert_eq!(metric(&text, "mailveil_held_messages"), Some(1.0));
    assert_eq!(metric(&text, "mailveil_held_copies"), Some(497.0));
    assert_eq!(
        metric(&text, "mailveil_hold_actions_total{action=\"held\"}"),
        Some(1.0)
    );

    // A graceful restart, then a crash: still held, still only the canaries.
    assert_eq!(r.proc_.terminate(), Some(0));
    restart(&mut r, 1).await;
    assert_copies_stay(&r.outbox(), 3).await;
    assert_eq!(held(&r)[0]["held_copies"], 497);
    r.proc_.kill9();
    restart(&mut r, 2).await;
    assert_copies_stay(&r.outbox(), 3).await;
    assert_eq!(held(&r)[0]["id"], id.as_str());

    let (code, _) = ctl(&r, &["release", "NOSUCHID"]);
    assert_eq!(code, Some(1), "unknown id is refused");
    let (code, answer) = ctl(&r, &["release", &id]);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(answer["action"], "released");
    assert_copies_stay(&r.outbox(), 500).await;
    let got = delivered(&r.outbox());
    assert_eq!(got.len(), 500);
    assert!(got.values().all(|&n| n == 1), "each recipient exactly once");
    assert!(held(&r).is_empty());
    let text = metrics(&r).await;
    assert_eq!(metric(&text, "mailveil_held_messages"), Some(0.0));
    assert_eq!(
        metric(&text, "mailveil_hold_actions_total{action=\"released\"}"),
        Some(1.0)
    );

    // Released for good: another restart neither holds it again nor resends anything.
    r.proc_.kill9();
    restart(&mut r, 3).await;
    assert!(held(&r).is_empty());
    assert_copies_stay(&r.outbox(), 500).await;
}

#[tokio::test]
async fn a_dropped_bulk_send_sends_nothing_more_and_leaves_the_spool() {
    let mut r = relay("canary = 3").await;
    let id = send_bulk(&r, &recipients(150, "d")).await;
    assert_copies_stay(&r.outbox(), 3).await;
    let spool = r.dir.path().join("spool");
    assert!(spool_has(&spool, &id), "held message is spooled");

    let (code, answer) = ctl(&r, &["drop", &id]);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(answer["message"]["held_copies"], 147);
    let (code, _) = ctl(&r, &["drop", &id]);
    assert_eq!(code, Some(1), "dropped once only");
    assert!(held(&r).is_empty());
    assert!(!spool_has(&spool, &id), "nothing of it stays in the spool");
    let text = metrics(&r).await;
    assert_eq!(
        metric(&text, "mailveil_hold_actions_total{action=\"dropped\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "mailveil_held_copies"), Some(0.0));
    assert!(r.proc_.log_text().contains("bulk hold decided"));

    r.proc_.kill9();
    {
        let s = mailveil::spool::Spool::open(&spool).unwrap();
        let found = s.recover().unwrap();
        assert!(found.iter().all(|m| m.meta.id != id), "recovered {id}");
    }
    restart(&mut r, 1).await;
    assert!(held(&r).is_empty());
    assert_copies_stay(&r.outbox(), 3).await;
}

#[tokio::test]
async fn the_hold_timeout_releases_without_an_operator() {
    // Canaries to an operator mailbox instead of the first recipients.
    let r = relay(
        "hold_timeout = \"2s\"\nhold_timeout_action = \"release\"\ncanary_recipients = [\"ops@example.net\"]",
    )
    .await;
    let rcpts = recipients(120, "t");
    send_bulk(&r, &rcpts).await;
    let got = wait_for_captures(&r.outbox(), 121).await;
    assert_eq!(got.len(), 121);
    let count = delivered(&r.outbox());
    assert!(count.values().all(|&n| n == 1));
    assert!(rcpts.iter().all(|r| count.get(r) == Some(&1)));
    // The operator's canary is a private copy: its To shows only the operator.
    let canary = got
        .iter()
        .find(|c| c.rcpt_to == ["ops@example.net"])
        .expect("canary to the operator");
    let text = String::from_utf8_lossy(&canary.bytes);
    assert!(text.contains("To: ops@example.net"), "{text}");
    assert!(!text.contains("t000@example.org"), "{text}");
    assert!(held(&r).is_empty());
    let text = metrics(&r).await;
    assert_eq!(
        metric(
            &text,
            "mailveil_hold_actions_total{action=\"timeout_released\"}"
        ),
        Some(1.0)
    );
}
