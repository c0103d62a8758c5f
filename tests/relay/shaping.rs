//! Traffic shaping end to end, over real sockets: a paced provider never delays another, lane
//! and upstream connection caps hold, connections are renewed after N deliveries, and a "too
//! fast" deferral slows the provider down until it recovers.
//!
//! Timing assertions are upper bounds on how many copies arrive within a window (what a rate
//! limit promises), with generous tolerance; CPU contention can only make copies arrive later,
//! never break these assertions. Nothing asserts that anything is fast.

use crate::support;
use crate::support::scripted_smtp;

use std::time::{Duration, Instant};

use scripted_smtp::{Received, Script, ScriptedSmtp, Step};
use support::*;

async fn relay_for(
    upstream: &ScriptedSmtp,
    upstream_connections: usize,
    extra: &str,
) -> InProcessRelay {
    InProcessRelay::start(&format!(
        r#"
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
{scripted}max_connections = {upstream_connections}
{extra}
"#,
        scripted = scripted_upstream("scripted", upstream.port(), "none", "10s"),
    ))
    .await
}

/// One message whose `To:` shows every recipient: split into one copy each.
async fn send_split(relay: &InProcessRelay, rcpts: &[String]) {
    let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let msg = message(
        &[
            "From: app@src.test",
            &format!("To: {}", to.join(", ")),
            "Subject: shaping",
        ],
        "hello\r\n",
    );
    let reply = lettre_send(relay.smtp, Some("app@src.test"), &to, &msg)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
}

fn addresses(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

/// Waits for `n` accepted messages; returns them with their arrival instants.
async fn wait_messages(upstream: &ScriptedSmtp, n: usize) -> Vec<(Received, Instant)> {
    let end = Instant::now() + 2 * PATIENCE;
    loop {
        let r = upstream.record();
        if r.messages.len() >= n {
            return r.messages.into_iter().zip(r.arrivals).collect();
        }
        assert!(
            Instant::now() < end,
            "only {} of {n} copies reached the upstream",
            r.messages.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn arrivals_in(got: &[(Received, Instant)], domain: &str) -> Vec<Instant> {
    let mut at: Vec<Instant> = got
        .iter()
        .filter(|(m, _)| m.rcpt_to[0].ends_with(domain))
        .map(|(_, t)| *t)
        .collect();
    at.sort();
    at
}

/// The most arrivals within any window of length `window` starting at an arrival.
fn most_in_window(at: &[Instant], window: Duration) -> usize {
    at.iter()
        .map(|start| {
            at.iter()
                .filter(|t| **t >= *start && **t < *start + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn metric_value(relay: &InProcessRelay, series: &str) -> Option<f64> {
    let (_, text) = relay.http_get("/metrics").await;
    metric(&text, series)
}

#[tokio::test]
async fn a_paced_provider_never_delays_an_unthrottled_one() {
    let upstream = ScriptedSmtp::start(Script::default()).await;
    let relay = relay_for(
        &upstream,
        10,
        r#"
[[provider]]
name = "alpha"
domains = ["a.test"]
messages_per_second = 5.0
burst = 1
[[provider]]
name = "beta"
domains = ["b.test"]
"#,
    )
    .await;
    let mut rcpts = addresses("a", "a.test", 20);
    rcpts.extend(addresses("b", "b.test", 20));
    send_split(&relay, &rcpts).await;
    let got = wait_messages(&upstream, 40).await;
    let (a, b) = (arrivals_in(&got, "@a.test"), arrivals_in(&got, "@b.test"));
    assert_eq!((a.len(), b.len()), (20, 20));
    assert!(
        b.last() < a.last(),
        "every copy to beta arrived before alpha finished"
    );
    // 5/s with a burst of 1: at most 6 in any second; allow 2 more for delivery jitter.
    let most = most_in_window(&a, Duration::from_secs(1));
    assert!(most <= 8, "{most} alpha copies within one second");
    // 20 copies started 200 ms apart span 3.8 s (less the first copy's connection setup).
    assert!(
        *a.last().unwrap() - a[0] >= Duration::from_millis(2500),
        "alpha took only {:?}",
        *a.last().unwrap() - a[0]
    );
    let delays = |p: &str| format!("mailveil_throttle_delays_total{{provider=\"{p}\"}}");
    assert!(metric_value(&relay, &delays("alpha")).await.unwrap_or(0.0) >= 10.0);
    assert_eq!(
        metric_value(&relay, &delays("beta")).await.unwrap_or(0.0),
        0.0
    );
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn lane_concurrency_and_deliveries_per_connection_are_capped() {
    let upstream = ScriptedSmtp::start(Script {
        data_end_delay: Duration::from_millis(100),
        ..Script::default()
    })
    .await;
    let relay = relay_for(
        &upstream,
        10,
        r#"
[[provider]]
name = "alpha"
domains = ["a.test"]
max_connections = 2
max_deliveries_per_connection = 3
"#,
    )
    .await;
    send_split(&relay, &addresses("a", "a.test", 12)).await;
    wait_messages(&upstream, 12).await;
    let record = upstream.record();
    assert_eq!(
        record.max_active, 2,
        "two simultaneous sessions at most, and both used"
    );
    assert!(
        record.max_messages_per_connection <= 3,
        "{} deliveries on one connection",
        record.max_messages_per_connection
    );
    assert!(
        record.connections >= 4,
        "{} connections",
        record.connections
    );
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn the_upstream_cap_holds_across_provider_lanes() {
    let upstream = ScriptedSmtp::start(Script {
        data_end_delay: Duration::from_millis(50),
        ..Script::default()
    })
    .await;
    let relay = relay_for(
        &upstream,
        3,
        r#"
[[provider]]
name = "alpha"
domains = ["a.test"]
max_connections = 2
max_deliveries_per_connection = 2
[[provider]]
name = "beta"
domains = ["b.test"]
max_connections = 3
"#,
    )
    .await;
    let mut rcpts = addresses("a", "a.test", 10);
    rcpts.extend(addresses("b", "b.test", 10));
    rcpts.extend(addresses("x", "x.test", 10));
    send_split(&relay, &rcpts).await;
    wait_messages(&upstream, 30).await;
    let record = upstream.record();
    assert!(
        record.max_active <= 3,
        "{} sessions open at once against a cap of 3",
        record.max_active
    );
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_too_fast_deferral_slows_the_provider_then_it_recovers() {
    let mut script = Script::default();
    script.first_replies.insert(
        Step::Mail,
        vec!["421 4.7.0 [TS01] Messages from 127.0.0.1 temporarily deferred".into()],
    );
    let upstream = ScriptedSmtp::start(script).await;
    let relay = relay_for(
        &upstream,
        10,
        r#"
[[provider]]
name = "alpha"
domains = ["a.test"]
messages_per_second = 10.0
burst = 1
max_connections = 1
[[shaping.rule]]
contains = "[TS01]"
action = "slow"
factor = 0.1
duration = "3s"
"#,
    )
    .await;
    send_split(&relay, &addresses("a", "a.test", 10)).await;
    let slowed = "mailveil_provider_slowed{provider=\"alpha\"}";
    let end = Instant::now() + PATIENCE;
    while metric_value(&relay, slowed).await != Some(1.0) {
        assert!(Instant::now() < end, "alpha was never slowed down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen_slowed = Instant::now();
    while metric_value(&relay, slowed).await != Some(0.0) {
        assert!(Instant::now() < end, "alpha never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen_slowed.elapsed() >= Duration::from_millis(1500),
        "recovered after {:?}, before the configured 3 s",
        seen_slowed.elapsed()
    );
    let got = wait_messages(&upstream, 10).await;
    let a = arrivals_in(&got, "@a.test");
    // Slowed to 1/s right after the deferral: the first 1.5 s of deliveries hold 2 copies
    // (3 with jitter); at the configured 10/s they would hold all of them.
    let first = a
        .iter()
        .filter(|t| **t < a[0] + Duration::from_millis(1500))
        .count();
    assert!(
        first <= 3,
        "{first} copies in the first 1.5 s of a slowdown"
    );
    assert_eq!(upstream.record().step_counts[&Step::Mail], 11, "one retry");
    relay.stop().await.unwrap();
}
