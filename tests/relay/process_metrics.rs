//! `/metrics` of a real relay process: `process_cpu_seconds_total` moves in fractions of a
//! second (the prometheus crate's own collector counts whole seconds, so a CPU panel stays
//! flat), and `mailveil_cluster_up` is absent without `[cluster]` (a 0 there read as "Redis
//! down" on every sidecar's dashboard). The series with `[cluster]` is in tests/cluster.rs and
//! tests/cluster_auth.rs.

use crate::support;

use std::time::{Duration, Instant};

use support::*;

const RELAY: &str = concat!(
    "[server]\nlisten = \"{smtp}\"\n",
    spool_and_outbox!(),
    metrics_listener!()
);

#[tokio::test]
async fn cpu_seconds_are_fractional_and_cluster_up_is_absent_without_cluster() {
    let relay = RelayProc::start(RELAY, &[]).await;
    let (_, text) = http_get(relay.metrics, "/metrics").await;
    assert!(
        !text.contains("mailveil_cluster_up"),
        "mailveil_cluster_up without [cluster]:\n{text}"
    );
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );

    // Give the relay some work (messages through the whole pipeline) and read the counter
    // until it shows a fraction: the kernel counts in ticks of 10 ms, so a whole number can
    // come up, but not every time. A counter in whole seconds never shows one.
    let end = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    let mut n = 0;
    loop {
        let msg = message(
            &["From: app@src.test", "To: one@x.test", "Subject: cpu"],
            &"some text to relay\r\n".repeat(2000),
        );
        let reply = lettre_send(relay.smtp, Some("app@src.test"), &["one@x.test"], &msg)
            .await
            .unwrap();
        assert!(reply.starts_with("250"), "{reply}");
        n += 1;
        let (_, text) = http_get(relay.metrics, "/metrics").await;
        let cpu = metric(&text, "process_cpu_seconds_total").expect("cpu series");
        seen.push(cpu);
        if cpu > 0.0 && cpu.fract() != 0.0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "process_cpu_seconds_total never showed a fraction of a second: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It is a counter: never lower on a later scrape.
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    wait_for_captures(&relay.outbox(), n).await;
}
