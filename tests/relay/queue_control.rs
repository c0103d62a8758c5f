//! Queue control end to end, through the real binary: `mailveil ctl queue list/show/retry/
//! delete/bounce` against a running relay (its admin API), `mailveil spool list/show/delete`
//! on a stopped relay's spool, with a scripted upstream that defers (`451`) and later accepts.
//! Deletes and bounces are durable when answered (a `kill -9` right after never brings a copy
//! back); attempt counts and failure records survive restarts.

use crate::support;
use crate::support::scripted_smtp;

use std::process::Command;
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp, Step};
use serde_json::Value;
use support::*;

const TOKEN: &str = "queue-control-token-Xy";

/// A relay delivering through one scripted upstream on `port`, with the admin API; `spool`
/// lines are added to `[spool]`.
fn config(port: u16, spool: &str) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
{spool}
{upstream}
{metrics}
{admin}
"#,
        upstream = relay_toml::scripted_upstream("scripted", port, "none", "5s"),
        metrics = metrics_listener!(),
        admin = admin_listener!(),
    )
}

const ENVS: &[(&str, &str)] = &[("TEST_ADMIN_TOKEN", TOKEN)];

/// An upstream that answers `451` to every RCPT.
fn deferring() -> Script {
    let mut script = Script::default();
    script
        .replies
        .insert(Step::Rcpt, "451 4.3.0 try again later".into());
    script
}

/// Sends one message from `app@src.test` to `to`; returns its queue id.
async fn send(relay: &RelayProc, to: &str, message_id: &str) -> String {
    send_to(relay, &[to], message_id).await
}

/// Sends one message from `app@src.test` to every address of `to` (all in its `To:`, so the
/// relay splits it); returns its queue id.
async fn send_to(relay: &RelayProc, to: &[&str], message_id: &str) -> String {
    let m = message(
        &[
            "From: app@src.test",
            &format!("To: {}", to.join(", ")),
            &format!("Message-ID: <{message_id}>"),
            "Subject: queue control",
        ],
        "body\r\n",
    );
    let reply = lettre_send(relay.smtp, Some("app@src.test"), to, &m)
        .await
        .expect("relay accepts");
    reply
        .split("queued as ")
        .nth(1)
        .unwrap_or_else(|| panic!("no queue id in {reply}"))
        .trim()
        .to_string()
}

fn mailveil(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("MAILVEIL_ADMIN_TOKEN", TOKEN)
        .env_remove("MAILVEIL_ADMIN_URL")
        .env_remove("MAILVEIL_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `mailveil ctl --admin URL ARGS`.
fn ctl(r: &RelayProc, args: &[&str]) -> (Option<i32>, String, String) {
    let url = format!("http://{}", r.admin);
    let mut all = vec!["ctl", "--admin", &url];
    all.extend_from_slice(args);
    mailveil(&all)
}

/// `ctl ARGS --json`, which must succeed: the answer.
fn ctl_json(r: &RelayProc, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = ctl(r, &all);
    assert_eq!(code, Some(0), "ctl {args:?}: {out} {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn spool_dir(r: &RelayProc) -> String {
    r.dir.path().join("spool").display().to_string()
}

/// `mailveil spool ARGS --json`, which must succeed.
fn spool_json(args: &[&str]) -> Value {
    let mut all = vec!["spool"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = mailveil(&all);
    assert_eq!(code, Some(0), "spool {args:?}: {out} {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The copy of `id` as `queue show` reports it (its first delivery).
fn copy_of(r: &RelayProc, id: &str) -> Value {
    ctl_json(r, &["queue", "show", id])["message"]["copies"][0].clone()
}

/// Waits until the first copy of `id` is deferred after at least `attempts` attempts.
async fn wait_deferred(r: &RelayProc, id: &str, attempts: u64) -> Value {
    let end = Instant::now() + PATIENCE;
    loop {
        let copy = copy_of(r, id);
        if copy["state"] == "deferred" && copy["attempts"].as_u64().unwrap_or(0) >= attempts {
            return copy;
        }
        assert!(Instant::now() < end, "{id} never deferred: {copy}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `server` has accepted at least `n` messages.
async fn wait_messages(server: &ScriptedSmtp, n: usize) -> Vec<scripted_smtp::Received> {
    let end = Instant::now() + PATIENCE;
    loop {
        let got = server.record().messages;
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < end, "only {} of {n} arrived", got.len());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Starts the relay again on its directory, config and ports (after `kill -9` or SIGTERM).
async fn restart(r: &mut RelayProc, log: &str) {
    let config = r.config.display().to_string();
    r.proc_ = spawn_mailveil(&["run", "-c", &config], &r.dir.path().join(log), ENVS);
    wait_for_port(r.metrics, &mut r.proc_);
    let end = Instant::now() + PATIENCE;
    while http_get(r.metrics, "/readyz").await.0 != 200 {
        assert!(Instant::now() < end, "not ready:\n{}", r.proc_.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `retry_initial` at an hour, a deferred copy leaves only because of `queue retry`; list,
/// show and the status table tell what happens on the way.
#[tokio::test]
async fn retry_makes_a_deferred_copy_leave_at_once() {
    let mut script = Script::default();
    script.first_replies.insert(
        Step::Rcpt,
        vec!["451 4.7.0 greylisted, come back later".into()],
    );
    let upstream = ScriptedSmtp::start(script).await;
    let r = RelayProc::start(
        &config(
            upstream.port(),
            "retry_initial = \"1h\"\nretry_max = \"2h\"",
        ),
        ENVS,
    )
    .await;
    let id = send(&r, "dana@mail.test", "retry-1@src.test").await;
    let copy = wait_deferred(&r, &id, 1).await;
    assert_eq!(copy["attempts"], 1);
    assert_eq!(copy["upstream"], "scripted");
    assert_eq!(copy["last_code"], 451);
    assert!(
        copy["last_reply"].as_str().unwrap().contains("greylisted"),
        "{copy}"
    );
    let next = copy["next_attempt_at"].as_u64().unwrap();
    assert!(
        next >= mailveil::spool::unix_now() + 2000,
        "about an hour away (jitter up to 20%): {copy}"
    );
    // Addresses as the log shows them unless asked for.
    assert_ne!(copy["rcpt_to"][0], "dana@mail.test");
    let full = ctl_json(&r, &["queue", "show", &id, "--show-addresses"]);
    assert_eq!(full["message"]["copies"][0]["rcpt_to"][0], "dana@mail.test");
    assert_eq!(full["message"]["message_id"], "retry-1@src.test");

    // The tables.
    let (code, list, err) = ctl(&r, &["queue", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        list.contains(&id) && list.contains("1 deferred") && list.contains("NEXT ATTEMPT"),
        "{list}"
    );
    let (code, shown, _) = ctl(&r, &["queue", "show", &id]);
    assert_eq!(code, Some(0));
    assert!(
        shown.contains("greylisted") && shown.contains("scripted"),
        "{shown}"
    );
    let (code, status, _) = ctl(&r, &["status", "--table"]);
    assert_eq!(code, Some(0));
    assert!(
        status.contains("PROVIDER") && status.contains("UPSTREAM") && !status.contains('{'),
        "a table, not JSON: {status}"
    );
    assert_eq!(ctl_json(&r, &["status"])["paused"], false);

    assert!(upstream.record().messages.is_empty());
    let retried = ctl_json(&r, &["queue", "retry", &id]);
    assert_eq!(retried["retried"], 1);
    let got = wait_messages(&upstream, 1).await;
    assert_eq!(got[0].rcpt_to, ["dana@mail.test"]);
    // Delivered: it leaves the queue.
    let end = Instant::now() + PATIENCE;
    while !ctl_json(&r, &["queue", "list"])["messages"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < end, "message stayed queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _, err) = ctl(&r, &["queue", "show", &id]);
    assert_eq!(code, Some(1), "gone: {err}");
}

/// `--provider` and `--all` reach every deferred copy they name; unknown names are refused.
#[tokio::test]
async fn retry_by_provider_and_all() {
    let mut script = Script::default();
    script.first_replies.insert(
        Step::Rcpt,
        vec!["451 4.3.0 later".into(), "451 4.3.0 later".into()],
    );
    let upstream = ScriptedSmtp::start(script).await;
    let r = RelayProc::start(
        &config(
            upstream.port(),
            "retry_initial = \"1h\"\nretry_max = \"2h\"",
        ),
        ENVS,
    )
    .await;
    let a = send(&r, "a@one.test", "p-1@src.test").await;
    wait_deferred(&r, &a, 1).await;
    let b = send(&r, "b@two.test", "p-2@src.test").await;
    wait_deferred(&r, &b, 1).await;
    let (code, _, err) = ctl(&r, &["queue", "retry", "--provider", "nosuchprovider"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, _) = ctl(&r, &["queue", "retry"]);
    assert_eq!(code, Some(2), "clap: one of ID, --provider, --all");
    assert_eq!(
        ctl_json(&r, &["queue", "retry", "--provider", "default"])["retried"],
        2
    );
    wait_messages(&upstream, 2).await;
    assert_eq!(ctl_json(&r, &["queue", "retry", "--all"])["retried"], 0);
}

/// Filters of `queue list`: provider, state, age, recipient (address, log form, hash),
/// Message-ID; a bad filter is refused.
#[tokio::test]
async fn list_filters() {
    let upstream = ScriptedSmtp::start(deferring()).await;
    let r = RelayProc::start(
        &config(
            upstream.port(),
            "retry_initial = \"1h\"\nretry_max = \"2h\"",
        ),
        ENVS,
    )
    .await;
    let a = send(&r, "erin@mail.test", "f-1@src.test").await;
    let b = send(&r, "fred@mail.test", "f-2@src.test").await;
    wait_deferred(&r, &a, 1).await;
    wait_deferred(&r, &b, 1).await;
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["queue", "list"];
        all.extend_from_slice(args);
        ctl_json(&r, &all)["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(ids(&[]), both);
    assert_eq!(ids(&["--state", "deferred"]), both);
    assert!(ids(&["--state", "held"]).is_empty());
    assert_eq!(
        ids(&["--provider", "default", "--state", "deferred"]).len(),
        2
    );
    assert!(ids(&["--provider", "yahoo"]).is_empty());
    assert!(ids(&["--older-than", "1h"]).is_empty());
    assert_eq!(ids(&["--rcpt", "ERIN@mail.test"]), [a]);
    assert_eq!(ids(&["--message-id", "<f-2@src.test>"]), [b.as_str()]);
    // The redacted form the relay's log shows for fred, and its hash alone.
    let log = r.proc_.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(&b) && l.contains("deferred"))
        .unwrap_or_else(|| panic!("no deferral logged for {b}:\n{log}"));
    let hashed = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rcpt="))
        .unwrap_or_else(|| panic!("no rcpt in {line}"))
        .trim_matches('"')
        .to_string();
    assert!(
        hashed.ends_with("@mail.test") && !hashed.starts_with("fred"),
        "{hashed}"
    );
    assert_eq!(ids(&["--rcpt", &hashed]), [b.as_str()]);
    assert_eq!(
        ids(&["--rcpt", hashed.split('@').next().unwrap()]),
        [b.as_str()]
    );
    let listed = ctl_json(&r, &["queue", "list"]);
    assert!(!listed.to_string().contains("erin@"), "redacted: {listed}");
    assert_eq!(listed["total"], 2);
    let first = ctl_json(&r, &["queue", "list", "--limit", "1"]);
    assert_eq!(first["messages"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["total"], 2);
    let (_, table, _) = ctl(&r, &["queue", "list", "--limit", "1"]);
    assert!(table.contains("1 of 2 message(s)"), "{table}");
    let (code, _, err) = ctl(&r, &["queue", "list", "--older-than", "soon"]);
    assert_eq!(code, Some(1), "400: {err}");
}

/// A delete while running: the copy never leaves, not in this run and not after a `kill -9`
/// right after the API answered; the other message is delivered as usual.
#[tokio::test]
async fn delete_while_running_never_delivers_it_even_after_kill_9() {
    let upstream = ScriptedSmtp::start(deferring()).await;
    let port = upstream.port();
    let mut r = RelayProc::start(
        &config(port, "retry_initial = \"1s\"\nretry_max = \"1s\""),
        ENVS,
    )
    .await;
    let doomed = send(&r, "gina@mail.test", "d-1@src.test").await;
    let kept = send(&r, "hank@mail.test", "d-2@src.test").await;
    wait_deferred(&r, &doomed, 1).await;
    wait_deferred(&r, &kept, 1).await;
    let removal = ctl_json(&r, &["queue", "delete", &doomed]);
    r.proc_.kill9();
    assert_eq!(removal["action"], "deleted");
    assert_eq!(
        removal["removed"].as_u64().unwrap() + removal["in_flight"].as_u64().unwrap(),
        1,
        "{removal}"
    );
    // The upstream now takes everything.
    drop(upstream);
    let upstream = ScriptedSmtp::start_at(port, Script::default()).await;
    restart(&mut r, "relay-2.log").await;
    let got = wait_messages(&upstream, 1).await;
    assert_eq!(got[0].rcpt_to, ["hank@mail.test"]);
    // The deleted one was due at the same time: it would have come with it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rcpts: Vec<Vec<String>> = upstream
        .record()
        .messages
        .iter()
        .map(|m| m.rcpt_to.clone())
        .collect();
    assert_eq!(rcpts, [vec!["hank@mail.test".to_string()]]);
    assert!(
        ctl_json(&r, &["queue", "list"])["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (code, _, _) = ctl(&r, &["queue", "delete", &doomed]);
    assert_eq!(code, Some(1), "already gone");
    let _ = kept;
}

/// A delete in the same run: the copy is not retried, and the answer comes after the record.
#[tokio::test]
async fn delete_while_running_stops_the_retries() {
    let upstream = ScriptedSmtp::start(deferring()).await;
    let r = RelayProc::start(
        &config(
            upstream.port(),
            "retry_initial = \"1s\"\nretry_max = \"1s\"",
        ),
        ENVS,
    )
    .await;
    let id = send(&r, "ivy@mail.test", "d-3@src.test").await;
    wait_deferred(&r, &id, 2).await;
    ctl_json(&r, &["queue", "delete", &id]);
    let rcpts = |server: &ScriptedSmtp| {
        server
            .record()
            .commands
            .iter()
            .filter(|c| c.starts_with("RCPT"))
            .count()
    };
    // At most an attempt in flight at the delete finishes; then nothing more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = rcpts(&upstream);
    // Undeleted, it would be tried again within 1.2 s (retry_max 1 s, jitter 20%).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rcpts(&upstream), after, "no retry after the delete");
    let spool = r.dir.path().join("spool");
    assert!(!spool.join("failed").join(format!("{id}.json")).exists());
}

/// A bounce while running: the copy fails at once, a DSN goes to the sender, and the failure
/// record says why, with the last reply, upstream and attempts.
#[tokio::test]
async fn bounce_while_running_sends_the_dsn_and_records_the_failure() {
    let mut script = Script::default();
    script
        .rcpt_replies
        .insert("jo@mail.test".into(), "451 4.2.2 mailbox full".into());
    let upstream = ScriptedSmtp::start(script).await;
    let r = RelayProc::start(
        &config(
            upstream.port(),
            "retry_initial = \"1h\"\nretry_max = \"2h\"\nbounce = true",
        ),
        ENVS,
    )
    .await;
    let id = send(&r, "jo@mail.test", "b-1@src.test").await;
    wait_deferred(&r, &id, 1).await;
    let (code, out, err) = ctl(&r, &["queue", "bounce", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("bounced") && out.contains("1 bounces queued"),
        "{out}"
    );
    let got = wait_messages(&upstream, 1).await;
    assert_eq!(got[0].mail_from, "");
    assert_eq!(got[0].rcpt_to, ["app@src.test"]);
    let dsn = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(dsn.contains(&format!("X-Mailveil-Queue-ID: {id}")), "{dsn}");
    assert!(
        dsn.contains("jo@mail.test") && dsn.contains("bounced"),
        "{dsn}"
    );
    let record = r.dir.path().join("spool/failed").join(format!("{id}.json"));
    let end = Instant::now() + PATIENCE;
    while !record.exists() {
        assert!(Instant::now() < end, "no failure record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let failed = &record["failed"][0];
    assert_eq!(failed["reason"], "bounced");
    assert_eq!(failed["code"], 550);
    assert_eq!(failed["rcpt_to"][0], "jo@mail.test");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["upstream"], "scripted");
    assert!(
        failed["reply"].as_str().unwrap().contains("mailbox full"),
        "{record}"
    );
    assert!(failed["first_attempt_at"].as_u64().is_some(), "{record}");
    let (code, _, _) = ctl(&r, &["queue", "bounce", &id]);
    assert_eq!(code, Some(1), "already gone");
}

/// Attempt counts go on across a restart (and a `kill -9`); a failure after the restart is
/// recorded with the reply text, upstream, all attempts and the first attempt's time.
#[tokio::test]
async fn attempts_and_failure_records_survive_restarts() {
    let upstream = ScriptedSmtp::start(deferring()).await;
    let port = upstream.port();
    let mut r = RelayProc::start(
        &config(port, "retry_initial = \"1s\"\nretry_max = \"1s\""),
        ENVS,
    )
    .await;
    let id = send(&r, "kim@mail.test", "a-1@src.test").await;
    let before = wait_deferred(&r, &id, 2).await;
    let first = before["first_attempt_at"].as_u64().unwrap();
    assert_eq!(r.proc_.terminate(), Some(0));
    restart(&mut r, "relay-2.log").await;
    let n = before["attempts"].as_u64().unwrap();
    let after = wait_deferred(&r, &id, n + 1).await;
    assert_eq!(after["first_attempt_at"].as_u64(), Some(first), "{after}");
    r.proc_.kill9();
    restart(&mut r, "relay-3.log").await;
    let n = after["attempts"].as_u64().unwrap();
    let last = wait_deferred(&r, &id, n + 1).await;
    let n = last["attempts"].as_u64().unwrap();
    // Now the upstream refuses for good.
    drop(upstream);
    let mut script = Script::default();
    script
        .replies
        .insert(Step::Rcpt, "550 5.1.1 no such user here".into());
    let _upstream = ScriptedSmtp::start_at(port, script).await;
    ctl_json(&r, &["queue", "retry", &id]);
    let record = r.dir.path().join("spool/failed").join(format!("{id}.json"));
    let end = Instant::now() + PATIENCE;
    while !record.exists() {
        assert!(Instant::now() < end, "no failure record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let failed = &record["failed"][0];
    assert_eq!(failed["code"], 550);
    assert_eq!(failed["reason"], "permanent");
    assert_eq!(failed["upstream"], "scripted");
    assert!(
        failed["reply"]
            .as_str()
            .unwrap()
            .contains("no such user here"),
        "{record}"
    );
    assert!(failed["attempts"].as_u64().unwrap() > n, "{record}");
    assert_eq!(failed["first_attempt_at"].as_u64(), Some(first), "{record}");
    assert!(failed["last_attempt_at"].as_u64().unwrap() >= first);
    assert_eq!(record["mail_from"], "app@src.test", "existing fields stay");
}

/// `mailveil spool list/show/delete` on a stopped relay's spool: what a start would find,
/// with attempts and last reply; a delete there is durable and refused while a relay runs.
#[tokio::test]
async fn a_stopped_spool_is_listed_shown_and_steered() {
    let upstream = ScriptedSmtp::start(deferring()).await;
    let port = upstream.port();
    let mut r = RelayProc::start(
        &config(port, "retry_initial = \"1h\"\nretry_max = \"2h\""),
        ENVS,
    )
    .await;
    let doomed = send(&r, "lee@mail.test", "s-1@src.test").await;
    let kept = send(&r, "max@mail.test", "s-2@src.test").await;
    wait_deferred(&r, &doomed, 1).await;
    wait_deferred(&r, &kept, 1).await;
    let dir = spool_dir(&r);
    // While the relay runs, the stopped-spool delete is refused.
    let (code, _, err) = mailveil(&["spool", "delete", &dir, &doomed]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("running"), "{err}");
    assert_eq!(r.proc_.terminate(), Some(0));

    let listed = spool_json(&["list", &dir]);
    let mut ids: Vec<&str> = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = [doomed.as_str(), kept.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(listed["messages"][0]["states"]["deferred"], 1);
    assert!(!listed.to_string().contains("lee@"), "redacted: {listed}");
    // With the relay's config, addresses show as its log shows them.
    let shown_cfg = r.dir.path().join("show.toml");
    std::fs::write(&shown_cfg, "[log]\nshow_addresses = true\n").unwrap();
    let cfg = shown_cfg.display().to_string();
    let (code, out, err) = mailveil(&["spool", "-c", &cfg, "list", &dir, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("app@src.test"), "{out}");
    let only = spool_json(&["list", &dir, "--rcpt", "max@mail.test"]);
    assert_eq!(only["messages"].as_array().unwrap().len(), 1);
    assert_eq!(only["messages"][0]["id"], kept.as_str());
    let by_mid = spool_json(&["list", &dir, "--message-id", "s-1@src.test"]);
    assert_eq!(by_mid["messages"][0]["id"], doomed.as_str());
    assert!(
        spool_json(&["list", &dir, "--state", "held"])["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let shown = spool_json(&["show", &dir, &doomed, "--show-addresses"]);
    let copy = &shown["message"]["copies"][0];
    assert_eq!(copy["rcpt_to"][0], "lee@mail.test");
    assert_eq!(copy["attempts"], 1);
    assert_eq!(copy["upstream"], "scripted");
    assert!(
        copy["last_reply"]
            .as_str()
            .unwrap()
            .contains("try again later"),
        "{copy}"
    );
    let (code, table, _) = mailveil(&["spool", "list", &dir]);
    assert_eq!(code, Some(0));
    assert!(
        table.contains(&doomed) && table.contains("2 message(s)"),
        "{table}"
    );

    let (code, out, err) = mailveil(&["spool", "delete", &dir, &doomed]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("deleted"), "{out}");
    let (code, _, _) = mailveil(&["spool", "show", &dir, &doomed]);
    assert_eq!(code, Some(1), "gone from the stopped spool");
    let (code, _, err) = mailveil(&["spool", "list", "/nonexistent-spool-dir"]);
    assert_eq!(code, Some(64), "{err}");

    // Started again with an upstream that accepts: only the kept one goes out.
    drop(upstream);
    let upstream = ScriptedSmtp::start_at(port, Script::default()).await;
    restart(&mut r, "relay-2.log").await;
    let listed = ctl_json(&r, &["queue", "list"]);
    assert_eq!(listed["messages"].as_array().unwrap().len(), 1, "{listed}");
    ctl_json(&r, &["queue", "retry", "--all"]);
    let got = wait_messages(&upstream, 1).await;
    assert_eq!(got[0].rcpt_to, ["max@mail.test"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(upstream.record().messages.len(), 1);
}

/// A delete while one copy is being handed over (the upstream never answers its RCPT) and the
/// other waits for a retry: the answer counts the first as in flight, and after a `kill -9`
/// right after the answer neither copy is ever sent (the message was not finished, so only
/// the synced `deleted` record keeps it from coming back).
#[tokio::test]
async fn delete_with_a_copy_in_flight_is_durable_across_kill_9() {
    let mut script = Script {
        stall_rcpt_domains: vec!["stall.test".into()],
        ..Script::default()
    };
    script
        .rcpt_replies
        .insert("ned@mail.test".into(), "451 4.3.0 later".into());
    let upstream = ScriptedSmtp::start(script).await;
    let port = upstream.port();
    let template = config(port, "retry_initial = \"1h\"\nretry_max = \"2h\"")
        .replace("timeout = \"5s\"", "timeout = \"60s\"");
    let mut r = RelayProc::start(&template, ENVS).await;
    let id = send_to(&r, &["opal@stall.test", "ned@mail.test"], "d-4@src.test").await;
    let end = Instant::now() + PATIENCE;
    loop {
        let shown = ctl_json(&r, &["queue", "show", &id]);
        let states: Vec<String> = shown["message"]["copies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["state"].as_str().unwrap().to_string())
            .collect();
        if states.contains(&"active".to_string()) && states.contains(&"deferred".to_string()) {
            break;
        }
        assert!(Instant::now() < end, "copies never got there: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = ctl_json(&r, &["queue", "list", "--state", "active"]);
    assert_eq!(listed["messages"][0]["id"], id.as_str());
    let removal = ctl_json(&r, &["queue", "delete", &id]);
    r.proc_.kill9();
    assert_eq!(removal["removed"], 1, "{removal}");
    assert_eq!(removal["in_flight"], 1, "{removal}");
    drop(upstream);
    let upstream = ScriptedSmtp::start_at(port, Script::default()).await;
    restart(&mut r, "relay-2.log").await;
    let (code, _, _) = ctl(&r, &["queue", "show", &id]);
    assert_eq!(code, Some(1), "not queued again");
    ctl_json(&r, &["queue", "retry", "--all"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        upstream.record().messages.is_empty(),
        "a deleted copy went out: {:?}",
        upstream.record().messages
    );
}

/// A message under a bulk hold is listed as `held`; deleting it ends the hold (nothing waits
/// for a decision any more) and its held copies never go out; only the canaries did.
#[tokio::test]
async fn a_held_message_can_be_listed_and_deleted() {
    let upstream = ScriptedSmtp::start(Script::default()).await;
    let template =
        config(upstream.port(), "").replace("[spool]", "[privacy]\nhold_fanout_above = 3\n[spool]");
    let r = RelayProc::start(&template, ENVS).await;
    let rcpts: Vec<String> = (0..5).map(|i| format!("p{i}@mail.test")).collect();
    let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let id = send_to(&r, &to, "h-1@src.test").await;
    let listed = ctl_json(&r, &["queue", "list", "--state", "held"]);
    assert_eq!(listed["messages"][0]["id"], id.as_str(), "{listed}");
    let held = listed["messages"][0]["states"]["held"].as_u64().unwrap();
    assert!(held >= 1, "{listed}");
    let canaries = 5 - held as usize;
    wait_messages(&upstream, canaries).await;
    let removal = ctl_json(&r, &["queue", "delete", &id]);
    assert_eq!(removal["removed"].as_u64(), Some(held), "{removal}");
    let (code, out, _) = ctl(&r, &["held"]);
    assert_eq!(code, Some(0));
    let still: Value = serde_json::from_str(&out).unwrap();
    assert!(still["held"].as_array().unwrap().is_empty(), "{still}");
    let (_, metrics) = http_get(r.metrics, "/metrics").await;
    assert_eq!(metric(&metrics, "mailveil_held_messages"), Some(0.0));
    // Releasing it now finds nothing, and nothing more goes out.
    let (code, _, _) = ctl(&r, &["release", &id]);
    assert_eq!(code, Some(1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(upstream.record().messages.len(), canaries);
    assert!(
        !r.dir
            .path()
            .join("spool/failed")
            .join(format!("{id}.json"))
            .exists()
    );
}

/// A retry does not override a pause: the copy is due, and leaves once deliveries resume.
#[tokio::test]
async fn a_retry_waits_for_a_pause() {
    let mut script = Script::default();
    script
        .first_replies
        .insert(Step::Rcpt, vec!["451 4.3.0 later".into()]);
    let upstream = ScriptedSmtp::start(script).await;
    let r = RelayProc::start(
        &config(
            upstream.port(),
            "retry_initial = \"1h\"\nretry_max = \"2h\"",
        ),
        ENVS,
    )
    .await;
    let id = send(&r, "quinn@mail.test", "w-1@src.test").await;
    wait_deferred(&r, &id, 1).await;
    let (code, _, err) = ctl(&r, &["pause"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(ctl_json(&r, &["queue", "retry", &id])["retried"], 1);
    let end = Instant::now() + PATIENCE;
    while copy_of(&r, &id)["state"] != "queued" {
        assert!(Instant::now() < end, "never due");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ctl_json(&r, &["queue", "list", "--state", "queued"])["total"],
        1
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(upstream.record().messages.is_empty(), "sent while paused");
    let (code, _, _) = ctl(&r, &["resume"]);
    assert_eq!(code, Some(0));
    wait_messages(&upstream, 1).await;
}

/// Bouncing a held fan-out sends one bounce naming every held recipient, not one per copy.
#[tokio::test]
async fn bouncing_a_held_fan_out_sends_one_bounce() {
    let upstream = ScriptedSmtp::start(Script::default()).await;
    let template = config(upstream.port(), "bounce = true")
        .replace("[spool]", "[privacy]\nhold_fanout_above = 3\n[spool]");
    let r = RelayProc::start(&template, ENVS).await;
    let rcpts: Vec<String> = (0..6).map(|i| format!("r{i}@mail.test")).collect();
    let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let id = send_to(&r, &to, "b-1@src.test").await;
    let shown = ctl_json(&r, &["queue", "show", &id, "--show-addresses"]);
    let held: Vec<String> = shown["message"]["copies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "held")
        .flat_map(|c| c["rcpt_to"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(held.len() >= 2, "{shown}");
    let canaries = rcpts.len() - held.len();
    wait_messages(&upstream, canaries).await;
    let removal = ctl_json(&r, &["queue", "bounce", &id]);
    assert_eq!(removal["bounces"], 1, "{removal}");
    let got = wait_messages(&upstream, canaries + 1).await;
    let dsn = got
        .iter()
        .find(|m| m.mail_from.is_empty())
        .expect("a bounce");
    let text = String::from_utf8_lossy(&dsn.data).to_string();
    for r in &held {
        assert!(
            text.contains(&format!("Final-Recipient: rfc822; {r}")),
            "{r}: {text}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(upstream.record().messages.len(), canaries + 1, "one bounce");
}
