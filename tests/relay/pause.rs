//! The kill switch holds: a pause survives SIGTERM and kill -9 (it is in the spool's record),
//! a provider's pause stops only that provider, a resume sends at once what waited for a
//! retry, and with `[cluster]` a pause made on one replica stops every replica sharing the real
//! `redis-server` (started here on a free port, killed by PID), also a replica whose Redis goes
//! away, and also after it restarts while Redis is away.
//!
//! Without `redis-server` on the PATH the cluster test is skipped with a printed reason, unless
//! `MAILVEIL_REQUIRE_REDIS=1` (CI), where that is a failure.

use crate::support;
use crate::support::scripted_smtp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp, Step};
use serde_json::Value;
use support::redis_server::{Redis, redis_available};
use support::*;

const TOKEN: &str = "pause-test-token-Kw";

/// How long a test watches for copies that must not leave (a pause that did not hold sends
/// them within milliseconds).
const QUIET: Duration = Duration::from_millis(1500);

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

fn envs(replica: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TEST_ADMIN_TOKEN", TOKEN.to_string()),
        ("HOSTNAME", replica.to_string()),
    ]
}

async fn start(template: &str, replica: &str) -> RelayProc {
    let envs = envs(replica);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    RelayProc::start(template, &envs).await
}

/// Starts the relay again on the same config, spool and ports (after it was stopped or
/// killed); returns once `/readyz` answers.
async fn restart(r: &mut RelayProc, replica: &str, round: usize) {
    let envs = envs(replica);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    r.proc_ = spawn_mailveil(
        &["run", "-c", &r.config.display().to_string()],
        &r.dir.path().join(format!("relay-{round}.log")),
        &envs,
    );
    let end = Instant::now() + PATIENCE;
    loop {
        if std::net::TcpStream::connect_timeout(&r.metrics, Duration::from_millis(200)).is_ok()
            && http_get(r.metrics, "/readyz").await.0 == 200
        {
            return;
        }
        if let Ok(Some(status)) = r.proc_.child.try_wait() {
            panic!("relay exited ({status}); log:\n{}", r.proc_.log_text());
        }
        assert!(
            Instant::now() < end,
            "relay not ready again; log:\n{}",
            r.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `mailveil ctl` against `admin` (success asserted): its stdout.
fn ctl(admin: SocketAddr, args: &[&str]) -> String {
    ctl_ok(admin, TOKEN, args)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn status(admin: SocketAddr) -> Value {
    admin_status(admin, TOKEN).await
}

/// The pause in force for `provider` (`all` for the global one) in a status answer.
fn pause_of<'a>(status: &'a Value, provider: &str) -> Option<&'a Value> {
    status["pauses"]
        .as_array()
        .expect("pauses listed")
        .iter()
        .find(|p| p["provider"] == provider)
}

async fn send(smtp: SocketAddr, to: &[&str], subject: &str) {
    send_simple(smtp, "ops@example.com", to, subject).await
}

async fn paused_gauge(metrics: SocketAddr, provider: &str) -> Option<f64> {
    let (_, text) = http_get(metrics, "/metrics").await;
    metric(
        &text,
        &format!("mailveil_paused{{provider=\"{provider}\"}}"),
    )
}

#[tokio::test]
async fn a_pause_survives_sigterm_and_kill_9_and_resume_sends_what_waited() {
    let mut r = start(CONFIG, "relay-a").await;
    let out = ctl(r.admin, &["pause"]);
    let answer = json(&out);
    assert_eq!(answer["paused"], true);
    let pause = pause_of(&answer, "all").expect("the pause is listed");
    assert_eq!(pause["source"], "command");
    assert_eq!(pause["by"], "relay-a");
    assert!(pause["since"].as_str().unwrap().ends_with('Z'), "{pause}");
    assert_eq!(paused_gauge(r.metrics, "all").await, Some(1.0));
    let record = r.dir.path().join("spool/pause.json");
    assert!(record.exists(), "recorded before the answer");

    send(r.smtp, &["kim@example.org"], "before-sigterm").await;
    assert_no_captures(&r.outbox(), QUIET).await;

    // SIGTERM: the relay stops; the next one is paused before it queues the spooled copy.
    assert_eq!(r.proc_.terminate(), Some(0), "{}", r.proc_.log_text());
    restart(&mut r, "relay-a", 1).await;
    let s = status(r.admin).await;
    assert_eq!(s["paused"], true, "{s}");
    let pause = pause_of(&s, "all").expect("restored");
    assert_eq!(pause["source"], "spool");
    assert_eq!(pause["by"], "relay-a");
    assert_eq!(paused_gauge(r.metrics, "all").await, Some(1.0));
    send(r.smtp, &["lou@example.org"], "after-sigterm").await;
    assert_no_captures(&r.outbox(), QUIET).await;

    // kill -9: no shutdown path at all.
    r.proc_.kill9();
    restart(&mut r, "relay-a", 2).await;
    assert_eq!(status(r.admin).await["paused"], true);
    send(r.smtp, &["max@example.org"], "after-kill").await;
    assert_no_captures(&r.outbox(), QUIET).await;
    assert_eq!(
        provider_queued(&status(r.admin).await, "default"),
        3,
        "every copy waits"
    );

    let out = ctl(r.admin, &["resume"]);
    assert_eq!(json(&out)["paused"], false);
    assert!(pause_of(&json(&out), "all").is_none());
    let got = wait_for_captures(&r.outbox(), 3).await;
    assert_eq!(got.len(), 3);
    assert_eq!(paused_gauge(r.metrics, "all").await, Some(0.0));

    // The resume is durable too: after another kill -9 mail flows.
    r.proc_.kill9();
    restart(&mut r, "relay-a", 3).await;
    assert_eq!(status(r.admin).await["paused"], false);
    send(r.smtp, &["ned@example.org"], "after-resume").await;
    wait_for_captures(&r.outbox(), 4).await;
}

/// A record that cannot be written (here `pause.json` is a directory) does not stop the kill
/// switch: the pause applies and the answer says it would not survive a restart (`500`, ctl
/// exits 1). A record that cannot be read at start keeps everything paused until a resume.
#[tokio::test]
async fn a_pause_that_cannot_be_recorded_still_applies_and_an_unreadable_record_starts_paused() {
    let mut r = start(CONFIG, "relay-d").await;
    let record = r.dir.path().join("spool/pause.json");
    std::fs::create_dir(&record).unwrap();
    std::fs::write(record.join("in-the-way"), b"x").unwrap();
    let (code, body) = http_request(r.admin, "POST", "/pause", Some(TOKEN)).await;
    assert_eq!(code, 500, "{body}");
    let answer = json(&body);
    assert_eq!(answer["paused"], true, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("restart would forget"),
        "{answer}"
    );
    let out = Command::new(BIN)
        .args(["ctl", "--admin", &format!("http://{}", r.admin), "pause"])
        .env("MAILVEIL_ADMIN_TOKEN", TOKEN)
        .env_remove("MAILVEIL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    send(r.smtp, &["uma@example.org"], "paused-unrecorded").await;
    assert_no_captures(&r.outbox(), QUIET).await;

    // At the next start the record cannot be read: paused, and /status says why.
    r.proc_.kill9();
    restart(&mut r, "relay-d", 1).await;
    let s = status(r.admin).await;
    assert_eq!(s["paused"], true, "{s}");
    let pause = pause_of(&s, "all").unwrap();
    assert_eq!(pause["source"], "spool");
    assert!(
        pause["note"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{s}"
    );
    assert_no_captures(&r.outbox(), QUIET).await;

    std::fs::remove_dir_all(&record).unwrap();
    ctl(r.admin, &["resume"]);
    wait_for_captures(&r.outbox(), 1).await;
    assert!(record.is_file(), "the resume is recorded");
}

fn provider_queued(status: &Value, name: &str) -> u64 {
    status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("provider {name} missing from {status}"))["queued"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_provider_pause_survives_a_restart_and_stops_only_that_provider() {
    let mut r = start(CONFIG, "relay-b").await;
    ctl(r.admin, &["pause", "--provider", "yahoo"]);
    assert_eq!(r.proc_.terminate(), Some(0));
    restart(&mut r, "relay-b", 1).await;

    let s = status(r.admin).await;
    assert_eq!(s["paused"], false);
    assert_eq!(pause_of(&s, "yahoo").unwrap()["source"], "spool");
    assert!(pause_of(&s, "all").is_none());
    assert_eq!(paused_gauge(r.metrics, "yahoo").await, Some(1.0));
    assert_eq!(paused_gauge(r.metrics, "all").await, Some(0.0));

    send(r.smtp, &["pat@yahoo.com", "quinn@example.org"], "split").await;
    let got = wait_for_captures(&r.outbox(), 1).await;
    assert_eq!(got[0].rcpt_to, vec!["quinn@example.org".to_string()]);
    tokio::time::sleep(QUIET).await;
    let got = mailveil::capture::read_all(&r.outbox()).unwrap();
    assert_eq!(got.len(), 1, "the yahoo copy must wait");

    ctl(r.admin, &["resume", "--provider", "yahoo"]);
    let got = wait_for_captures(&r.outbox(), 2).await;
    assert!(
        got.iter()
            .any(|c| c.rcpt_to == vec!["pat@yahoo.com".to_string()])
    );
    assert_eq!(paused_gauge(r.metrics, "yahoo").await, Some(0.0));
}

/// A copy deferred with a long backoff leaves as soon as its provider is resumed: after an
/// incident, what waited should not wait for `retry_max`.
#[tokio::test]
async fn resume_makes_deferred_copies_due_at_once() {
    let mut first = HashMap::new();
    first.insert(
        Step::DataEnd,
        vec![
            "451 4.3.0 try later".to_string(),
            "451 4.3.0 try later".to_string(),
        ],
    );
    let upstream = ScriptedSmtp::start(Script {
        first_replies: first,
        ..Script::default()
    })
    .await;
    let template = format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
retry_initial = "1h"
retry_max = "2h"
{scripted}{metrics}{admin}"#,
        scripted = scripted_upstream("scripted", upstream.port(), "none", "10s"),
        metrics = metrics_listener!(),
        admin = admin_listener!(),
    );
    let r = start(&template, "relay-c").await;
    send(r.smtp, &["rae@example.org"], "deferred").await;
    // The first attempt is deferred (an hour's backoff).
    wait_deferred(&r, 1.0).await;
    ctl(r.admin, &["pause", "--provider", "default"]);
    // A provider pause and its resume: the deferred copy is due now; deferred once more.
    ctl(r.admin, &["resume", "--provider", "default"]);
    wait_deferred(&r, 2.0).await;
    assert!(
        upstream.record().messages.is_empty(),
        "the deferred copy is not accepted"
    );
    // The global pause and its resume: due now again, and accepted this time.
    ctl(r.admin, &["pause"]);
    ctl(r.admin, &["resume"]);
    let end = Instant::now() + PATIENCE;
    while upstream.record().messages.is_empty() {
        assert!(
            Instant::now() < end,
            "the deferred copy still waits for its backoff; log:\n{}",
            r.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = Instant::now() + PATIENCE;
    while provider_queued(&status(r.admin).await, "default") != 0 {
        assert!(Instant::now() < end, "the delivered copy stays queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the relay has counted `n` deferred attempts.
async fn wait_deferred(r: &RelayProc, n: f64) {
    let end = Instant::now() + PATIENCE;
    loop {
        let (_, text) = http_get(r.metrics, "/metrics").await;
        let deferred = metric(
            &text,
            "mailveil_deliveries_total{outcome=\"deferred\",provider=\"default\",upstream=\"scripted\"}",
        );
        if deferred == Some(n) {
            return;
        }
        assert!(
            Instant::now() < end,
            "never deferred {n} times (resume did not make the copy due?):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- cluster ----

fn cluster_config(redis_port: u16) -> String {
    format!("{CONFIG}[cluster]\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\nreplicas = 2\n")
}

/// Waits until `check` holds for the replica's status (bounded).
async fn wait_status(r: &RelayProc, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_admin_status(r, TOKEN, what, check).await
}

fn captures(r: &RelayProc) -> usize {
    mailveil::capture::read_all(&r.outbox())
        .map(|c| c.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_pause_on_one_replica_stops_both_and_holds_when_redis_goes_away() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let mut redis = Redis::start(redis_port, work.path());
    let config = cluster_config(redis_port);
    let one = start(&config, "replica-one").await;
    let mut two = start(&config, "replica-two").await;
    for r in [&one, &two] {
        wait_status(r, "Redis reachable", |s| {
            s["pause_sync"]["redis_reachable"] == true
        })
        .await;
    }
    // Both deliver before any pause.
    send(one.smtp, &["a1@example.org"], "flows").await;
    send(two.smtp, &["b1@example.org"], "flows").await;
    wait_for_captures(&one.outbox(), 1).await;
    wait_for_captures(&two.outbox(), 1).await;

    // `ctl pause` on one: a second later the other one sends nothing either.
    let out = ctl(one.admin, &["pause"]);
    assert_eq!(pause_of(&json(&out), "all").unwrap()["shared"], true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    send(two.smtp, &["b2@example.org"], "held-on-two").await;
    send(one.smtp, &["a2@example.org"], "held-on-one").await;
    // A replica that joins during the pause (a new pod, its own empty spool) holds it too.
    let three = start(&config, "replica-three").await;
    send(three.smtp, &["c1@example.org"], "held-on-three").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        captures(&two),
        1,
        "replica two sent while the fleet was paused"
    );
    assert_eq!(captures(&one), 1, "replica one sent while paused");
    assert_eq!(
        captures(&three),
        0,
        "a replica that joined sent while paused"
    );
    let s = status(three.admin).await;
    assert_eq!(pause_of(&s, "all").unwrap()["by"], "replica-one", "{s}");
    let s = status(two.admin).await;
    assert_eq!(s["paused"], true);
    let pause = pause_of(&s, "all").unwrap();
    assert_eq!(pause["source"], "cluster", "{s}");
    assert_eq!(pause["by"], "replica-one", "{s}");
    assert_eq!(paused_gauge(two.metrics, "all").await, Some(1.0));

    // `resume` on two restarts them all.
    ctl(two.admin, &["resume"]);
    wait_for_captures(&one.outbox(), 2).await;
    wait_for_captures(&two.outbox(), 2).await;
    wait_for_captures(&three.outbox(), 1).await;
    drop(three);

    // Paused again; then Redis goes away: two keeps the pause it knew.
    ctl(one.admin, &["pause"]);
    wait_status(&two, "paused from the cluster", |s| s["paused"] == true).await;
    redis.stop();
    wait_status(&two, "Redis unreachable", |s| {
        s["pause_sync"]["redis_reachable"] == false
    })
    .await;
    send(two.smtp, &["b3@example.org"], "held-without-redis").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        captures(&two),
        2,
        "two sent while paused and cut off from Redis"
    );
    assert_eq!(status(two.admin).await["paused"], true);

    // Two restarts while Redis is away: its own record still holds the pause.
    two.proc_.kill9();
    restart(&mut two, "replica-two", 1).await;
    let s = status(two.admin).await;
    assert_eq!(s["paused"], true, "{s}");
    tokio::time::sleep(QUIET).await;
    assert_eq!(captures(&two), 2, "two sent after a restart without Redis");

    // Redis returns empty (no persistence): the replicas write back the pause they know, and
    // nothing leaves until the operator resumes.
    let _redis = Redis::start(redis_port, work.path());
    for r in [&one, &two] {
        wait_status(r, "Redis reachable again", |s| {
            s["pause_sync"]["redis_reachable"] == true && s["pauses"][0]["shared"] == true
        })
        .await;
    }
    assert_eq!(captures(&two), 2);
    assert_eq!(captures(&one), 2);
    ctl(one.admin, &["resume"]);
    wait_for_captures(&two.outbox(), 3).await;
    let s = wait_status(&two, "resumed from the cluster", |s| s["paused"] == false).await;
    assert!(pause_of(&s, "all").is_none(), "{s}");
}

/// The protocol of the shared state, one replica's [`Switch`] driven round by round against a
/// real Redis while the test writes what "another replica" decided straight into the hash:
/// a change made while Redis was away is written over the entry it saw, a pause made while
/// Redis was away wins over a resume made meanwhile elsewhere, a pending resume gives way to a
/// pause made meanwhile, and a Redis that lost its data gets the state back.
#[tokio::test]
async fn changes_made_while_redis_was_away_are_reconciled_with_the_cluster() {
    use mailveil::schedule::cluster::SharedLimits;
    use mailveil::schedule::pause::switch::Switch;
    use mailveil::schedule::pause::{Change, Source};

    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = Redis::start(port, work.path());
    let url = format!("redis://127.0.0.1:{port}/");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = mailveil::config::ClusterConfig {
        redis_url: url.clone(),
        replicas: 2,
        password: None,
    };
    let gauge = prometheus::IntGauge::new("up", "up").unwrap();
    let shared = SharedLimits::start(&config, gauge, shutdown.clone());
    let switch = Switch::restore(work.path(), Some(shared));

    // Field `*` of the hash as the cluster holds it; `set` writes "another replica's" change.
    let field = || -> Option<Change> {
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let v: Option<String> = redis::cmd("HGET")
            .arg("mailveil:pause")
            .arg("*")
            .query(&mut c)
            .unwrap();
        v.map(|v| serde_json::from_str(&v).unwrap())
    };
    let set = |paused: bool, id: &str| {
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let value = serde_json::json!({"paused": paused, "id": id, "at_ms": 1, "by": "elsewhere"});
        let _: i64 = redis::cmd("HSET")
            .arg("mailveil:pause")
            .arg("*")
            .arg(value.to_string())
            .query(&mut c)
            .unwrap();
    };
    async fn sync_until(switch: &Switch, reachable: bool) {
        let end = Instant::now() + PATIENCE;
        loop {
            switch.sync().await;
            if switch.cluster_reachable() == reachable {
                return;
            }
            assert!(
                Instant::now() < end,
                "Redis never became reachable={reachable}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let entry = |switch: &Switch| switch.board().targets["*"].clone();

    sync_until(&switch, true).await;
    set(false, "R1");
    sync_until(&switch, true).await;
    assert_eq!(
        entry(&switch).change.id,
        "R1",
        "the cluster's entry is adopted"
    );
    assert_eq!(entry(&switch).source, Source::Cluster);

    // 1. Redis away: a pause here is pending; Redis back with R1 still there: written over it.
    redis.stop();
    sync_until(&switch, false).await;
    switch.command("*", true).await.unwrap();
    assert!(entry(&switch).pending, "not shared while Redis is away");
    let mut redis = Redis::start(port, work.path());
    set(false, "R1");
    sync_until(&switch, true).await;
    let mine = entry(&switch);
    assert!(!mine.pending);
    assert_eq!(
        field().unwrap(),
        mine.change,
        "written over the entry it saw"
    );

    // 2. Redis away, a pause here; meanwhile someone resumed (R2): the pause wins.
    redis.stop();
    sync_until(&switch, false).await;
    switch.command("*", true).await.unwrap();
    let mut redis_2 = Redis::start(port, work.path());
    set(false, "R2");
    sync_until(&switch, true).await;
    let mine = entry(&switch);
    assert!(mine.change.paused && !mine.pending);
    assert_eq!(
        field().unwrap(),
        mine.change,
        "the pause made during the outage wins"
    );

    // 3. Redis away, a resume here; meanwhile someone paused (R3): the pause stays.
    redis_2.stop();
    sync_until(&switch, false).await;
    switch.command("*", false).await.unwrap();
    assert!(
        !switch.board().is_paused("*"),
        "the resume applies here at once"
    );
    let mut redis_3 = Redis::start(port, work.path());
    set(true, "R3");
    sync_until(&switch, true).await;
    assert_eq!(entry(&switch).change.id, "R3", "the resume gives way");
    assert!(switch.board().is_paused("*"));
    assert_eq!(field().unwrap().id, "R3");

    // 4. Redis restarts empty: the replica writes back what it knew.
    redis_3.stop();
    sync_until(&switch, false).await;
    let _redis_4 = Redis::start(port, work.path());
    assert_eq!(field(), None);
    sync_until(&switch, true).await;
    assert_eq!(field().unwrap().id, "R3", "the known state is written back");
    drop(redis);
    shutdown.cancel();
}
