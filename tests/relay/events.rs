//! Delivery events through the real binary: an app's JSON-lines outbox shows what happened to
//! each copy of a split fan-out (queued, privacy, delivered, deferred then delivered, failed,
//! bounced) in order, without raw addresses; a webhook receiver (Python, checking the HMAC
//! itself) that is down, then failing, then up receives every event exactly once per id, in
//! order within each message, also across a kill -9 of the relay; and a relay killed while
//! delivering has, after its restart, a `delivered` event for every message it accepted.

use crate::support;
use crate::support::scripted_smtp;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp, Step};
use serde_json::Value;
use support::*;

const TOKEN: &str = "events-token-Qu";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(upstream: &str, events: &str) -> String {
    format!(
        r#"
{head}[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
bounce = true
{upstream}
{metrics}{admin}
[[app]]
name = "news"
networks = ["127.0.0.0/8"]
senders = ["@sender.test"]
[app.events]
{events}
"#,
        head = split_relay!(),
        metrics = metrics_listener!(),
        admin = admin_listener!(),
    )
}

/// Every event in app `news`'s outbox, in file order.
fn outbox_events(spool: &Path) -> Vec<Value> {
    let dir = spool.join("events/news");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

async fn wait_outbox(spool: &Path, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let end = Instant::now() + PATIENCE;
    loop {
        let events = outbox_events(spool);
        if done(&events) {
            return events;
        }
        assert!(Instant::now() < end, "{what}: {events:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn position(events: &[Value], kind: &str, delivery: Option<u64>) -> usize {
    events
        .iter()
        .position(|e| e["type"] == kind && e["delivery"].as_u64() == delivery)
        .unwrap_or_else(|| panic!("no {kind} event for delivery {delivery:?}: {events:#?}"))
}

#[tokio::test]
async fn the_outbox_tells_each_copys_story_in_order_without_addresses() {
    let mut script = Script::default().rcpt_domain_replies("slow.test", &["451 4.7.1 try later"]);
    script
        .rcpt_replies
        .insert("bad@x.test".into(), "550 5.1.1 no such user".into());
    let upstream = ScriptedSmtp::start(script).await;
    let relay = RelayProc::start(
        &config(&scripted_upstream("mx", upstream.port(), "none", "10s"), ""),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let rcpts = ["one@x.test", "two@slow.test", "bad@x.test"];
    lettre_send(
        relay.smtp,
        Some("news@sender.test"),
        &rcpts,
        &message(
            &[
                "From: news@sender.test",
                &format!("To: {}", rcpts.join(", ")),
            ],
            "story",
        ),
    )
    .await
    .unwrap();
    let spool = relay.dir.path().join("spool");
    let events = wait_outbox(&spool, "the whole story", |e| {
        e.iter().filter(|e| e["type"] == "delivered").count() == 2
            && e.iter().any(|e| e["type"] == "bounced")
    })
    .await;
    let queued = position(&events, "queued", None);
    assert_eq!(events[queued]["decision"], "split");
    assert_eq!(events[queued]["copies"], 3);
    let privacy = position(&events, "privacy", None);
    assert!(queued < privacy);
    // Which delivery is which recipient: by the copies' own order in the plan.
    let delivery_of = |domain: &str| {
        events
            .iter()
            .find(|e| {
                e["delivery"].is_u64()
                    && e["recipients"][0]
                        .as_str()
                        .is_some_and(|r| r.ends_with(domain))
                    && e["type"] != "queued"
            })
            .and_then(|e| e["delivery"].as_u64())
            .unwrap()
    };
    let slow = delivery_of("@slow.test");
    let deferred = position(&events, "deferred", Some(slow));
    let delivered_later = position(&events, "delivered", Some(slow));
    assert!(privacy < deferred && deferred < delivered_later);
    assert_eq!(events[deferred]["code"], 451);
    assert!(events[deferred]["next_attempt_at"].is_string());
    let failed = events.iter().find(|e| e["type"] == "failed").unwrap();
    assert_eq!(failed["code"], 550);
    assert!(
        position(&events, "failed", failed["delivery"].as_u64())
            < position(&events, "bounced", None)
    );
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "ids are unique");
    // Default `addresses = "redacted"`: no recipient's local part in the files.
    for file in std::fs::read_dir(spool.join("events/news")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        for local in ["one@", "two@", "bad@"] {
            assert!(!text.contains(local), "{local} in {text}");
        }
    }
    let status = admin_status(relay.admin, TOKEN).await;
    let news = status["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "news")
        .unwrap();
    assert_eq!(
        news["events"]["recent"].as_array().unwrap().len(),
        5,
        "{news}"
    );
    assert_eq!(
        metric_at(
            relay.metrics,
            r#"mailveil_events_total{app="news",type="delivered"}"#
        )
        .await,
        Some(2.0)
    );
    for (outcome, n) in [("delivered", 2.0), ("deferred", 1.0), ("failed", 1.0)] {
        let series = format!(r#"mailveil_app_deliveries_total{{app="news",outcome="{outcome}"}}"#);
        assert_eq!(metric_at(relay.metrics, &series).await, Some(n), "{series}");
    }
    let table = ctl_ok(relay.admin, TOKEN, &["status", "--table"]);
    assert!(
        table.contains("EVENTS") && table.contains("last "),
        "{table}"
    );
}

/// The Python receiver on `port`, killed by PID on drop.
struct Receiver {
    child: Child,
    out: PathBuf,
    mode: PathBuf,
}

impl Receiver {
    fn start(port: u16, dir: &Path, mode: &str) -> Receiver {
        let (out, mode_file) = (dir.join("received.jsonl"), dir.join("mode"));
        std::fs::write(&mode_file, mode).unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/relay/support/webhook_receiver.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(SECRET)
            .arg(&out)
            .arg(&mode_file)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        let end = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "receiver not listening");
            std::thread::sleep(Duration::from_millis(25));
        }
        Receiver {
            child,
            out,
            mode: mode_file,
        }
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.out.with_extension("jsonl.requests"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    async fn wait_events(&self, n: usize) -> Vec<Value> {
        let end = Instant::now() + PATIENCE;
        loop {
            let got = self.events();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < end, "received {} of {n} events", got.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each id once, and within each message its events in the order they happened.
fn assert_exactly_once_in_order(events: &[Value], messages: usize) {
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let distinct: HashSet<&&str> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an id came twice: {ids:?}");
    let mut by_message: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in events {
        by_message
            .entry(e["queue_id"].as_str().unwrap())
            .or_default()
            .push(e["type"].as_str().unwrap());
    }
    assert_eq!(by_message.len(), messages, "{by_message:?}");
    for (id, kinds) in by_message {
        assert_eq!(kinds, ["queued", "delivered"], "message {id}");
    }
}

#[tokio::test]
async fn a_webhook_down_then_up_gets_every_event_once_also_across_a_kill_9() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let events = format!(
        "webhook_url = \"http://127.0.0.1:{port}/hook\"\nwebhook_secret_env = \"TEST_WEBHOOK_SECRET\"\nwebhook_retry_max = \"1s\"\n"
    );
    let envs = [("TEST_ADMIN_TOKEN", TOKEN), ("TEST_WEBHOOK_SECRET", SECRET)];
    let outbox = "[[upstream]]\nname = \"outbox\"\ndir = \"{dir}/outbox\"\n";
    let mut relay = RelayProc::start(&config(outbox, &events), &envs).await;
    for i in 0..5 {
        send_simple(
            relay.smtp,
            "news@sender.test",
            &[&format!("r{i}@x.test")],
            "hello",
        )
        .await;
    }
    // The receiver is not there: the events wait in the outbox.
    let spool = relay.dir.path().join("spool");
    wait_outbox(&spool, "10 events", |e| e.len() == 10).await;
    assert_eq!(
        metric_at(relay.metrics, r#"mailveil_event_backlog{app="news"}"#).await,
        Some(10.0)
    );
    relay.proc_.kill9();
    relay.restart(&envs).await;
    // Up, but failing for a while: 503s.
    let receiver = Receiver::start(port, work.path(), "503");
    let end = Instant::now() + PATIENCE;
    while receiver.requests().iter().filter(|r| *r == "503").count() < 2 {
        assert!(Instant::now() < end, "the relay did not retry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&receiver.mode, "ok").unwrap();
    receiver.wait_events(10).await;
    for i in 5..8 {
        send_simple(
            relay.smtp,
            "news@sender.test",
            &[&format!("r{i}@x.test")],
            "hello",
        )
        .await;
    }
    let got = receiver.wait_events(16).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_later = receiver.events();
    assert_eq!(got.len(), got_later.len(), "nothing sent twice");
    assert_exactly_once_in_order(&got_later, 8);
    assert!(!receiver.requests().iter().any(|r| r == "badsig"));
    assert_eq!(
        metric_at(relay.metrics, r#"mailveil_event_backlog{app="news"}"#).await,
        Some(0.0)
    );

    // The receiver's check is real: a body signed with another secret is refused.
    let (status, _) = post_signed(port, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(status, 401);
    assert_eq!(
        receiver.requests().last().map(String::as_str),
        Some("badsig")
    );
    let (status, _) = post_signed(port, SECRET).await;
    assert_eq!(status, 200, "and one signed with the right secret is taken");
}

/// A one-event POST to the receiver, signed with `secret` by the relay's own signing function.
async fn post_signed(port: u16, secret: &str) -> (u16, String) {
    let body = r#"{"type":"mailveil.events","data":[{"id":"probe.queued","type":"queued","queue_id":"probe"}]}"#;
    let (id, ts) = ("probe+1", 1_700_000_000u64);
    let sig = mailveil::events::webhook::signature(
        &mailveil::events::webhook::key_bytes(secret),
        id,
        ts,
        body,
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /hook HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[tokio::test]
async fn after_a_kill_9_while_delivering_every_accepted_message_has_its_delivered_event() {
    let mut script = Script::default();
    script
        .delays
        .insert(Step::DataEnd, Duration::from_millis(300));
    let upstream = ScriptedSmtp::start(script).await;
    let envs = [("TEST_ADMIN_TOKEN", TOKEN)];
    // Two connections of 300 ms per message: the 20 take 3 s, the kill comes within ~1 s.
    let mx = scripted_upstream("mx", upstream.port(), "none", "10s") + "max_connections = 2\n";
    let mut relay = RelayProc::start(&config(&mx, ""), &envs).await;
    for i in 0..20 {
        send_simple(
            relay.smtp,
            "news@sender.test",
            &[&format!("k{i}@x.test")],
            "kill",
        )
        .await;
    }
    relay.proc_.kill9();
    let before = upstream.record().messages.len();
    relay.restart(&envs).await;
    let spool = relay.dir.path().join("spool");
    let events = wait_outbox(&spool, "every message delivered", |e| {
        let queued: HashSet<&str> = e
            .iter()
            .filter(|e| e["type"] == "queued")
            .map(|e| e["queue_id"].as_str().unwrap())
            .collect();
        let delivered: HashSet<&str> = e
            .iter()
            .filter(|e| e["type"] == "delivered")
            .map(|e| e["queue_id"].as_str().unwrap())
            .collect();
        queued.len() == 20 && queued == delivered
    })
    .await;
    assert!(
        before < 20,
        "the kill came while delivering ({before} of 20 were out)"
    );
    // Every message the upstream took is one the events call delivered.
    let end = Instant::now() + PATIENCE;
    while upstream.record().messages.len() < 20 {
        assert!(
            Instant::now() < end,
            "upstream got {}",
            upstream.record().messages.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = events.iter().filter(|e| e["type"] == "delivered").count();
    assert!(delivered >= 20, "{delivered}");
}
