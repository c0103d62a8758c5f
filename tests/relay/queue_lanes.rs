//! Per-provider lanes: a provider whose deliveries hang does not hold up another provider's
//! mail (not even through the upstream's shared connection cap), and a transactional message
//! overtakes the queued copies of a large fan-out to the same provider.

use crate::support;
use crate::support::scripted_smtp;

use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp};
use support::*;

fn relay_config(port: u16, max_connections: usize, extra_server: &str) -> String {
    format!(
        r#"
[server]
{extra_server}
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
{scripted}max_connections = {max_connections}
"#,
        scripted = scripted_upstream("scripted", port, "none", "120s"),
    )
}

fn rcpts_in(server: &ScriptedSmtp, domain: &str) -> usize {
    server
        .record()
        .commands
        .iter()
        .filter(|c| c.starts_with("RCPT") && c.contains(domain))
        .count()
}

async fn send(relay: &InProcessRelay, to: &[&str], mid: &str) {
    let visible = to.iter().take(2).cloned().collect::<Vec<_>>().join(", ");
    let m = message(
        &[
            "From: app@src.test",
            &format!("To: {visible}"),
            &format!("Message-ID: <{mid}@src.test>"),
        ],
        "body\r\n",
    );
    let reply = lettre_send(relay.smtp, Some("app@src.test"), to, &m)
        .await
        .expect("relay accepts");
    assert!(reply.starts_with("250"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_provider_does_not_starve_another_through_the_connection_cap() {
    // The upstream never answers RCPT for yahoo.com (within the test: its timeout is 120 s) and
    // allows the relay only two connections.
    let upstream = ScriptedSmtp::start(Script {
        stall_rcpt_domains: vec!["yahoo.com".into()],
        ..Script::default()
    })
    .await;
    let relay = InProcessRelay::start(&relay_config(upstream.port(), 2, "")).await;
    send(
        &relay,
        &[
            "y1@yahoo.com",
            "y2@yahoo.com",
            "y3@yahoo.com",
            "y4@yahoo.com",
        ],
        "yahoo",
    )
    .await;
    // Yahoo deliveries hang at RCPT, taking as many connections as their lane may.
    let end = Instant::now() + PATIENCE;
    while rcpts_in(&upstream, "@yahoo.com") == 0 {
        assert!(Instant::now() < end, "yahoo deliveries never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled = rcpts_in(&upstream, "@yahoo.com");

    // Gmail and a default-lane domain still flow.
    send(&relay, &["g@gmail.com"], "gmail").await;
    send(&relay, &["d@other.test"], "default").await;
    let end = Instant::now() + PATIENCE;
    while upstream.record().messages.len() < 2 {
        assert!(
            Instant::now() < end,
            "other providers starved behind the stalled one ({stalled} yahoo copies hanging); record: {:?}",
            upstream.record().commands
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let record = upstream.record();
    let mut delivered: Vec<String> = record
        .messages
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    delivered.sort();
    assert_eq!(delivered, vec!["d@other.test", "g@gmail.com"]);
    assert!(
        record.max_active <= 2,
        "the upstream's connection cap holds"
    );
    assert!(
        stalled >= 1 && rcpts_in(&upstream, "@yahoo.com") < 4,
        "yahoo is still hanging, not retried around"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_message_overtakes_a_queued_5000_copy_fan_out() {
    const FAN_OUT: usize = 5000;
    // Each copy takes a few milliseconds at the upstream, so the fan-out is still queued when
    // the password reset arrives.
    let upstream = ScriptedSmtp::start(Script {
        data_end_delay: Duration::from_millis(5),
        ..Script::default()
    })
    .await;
    let relay =
        InProcessRelay::start(&relay_config(upstream.port(), 10, "max_recipients = 6000")).await;
    // One lane for both (the default one: unthrottled, so only priority decides the order).
    let subscribers: Vec<String> = (0..FAN_OUT).map(|i| format!("s{i}@list.test")).collect();
    let refs: Vec<&str> = subscribers.iter().map(String::as_str).collect();
    send(&relay, &refs, "newsletter").await;
    send(&relay, &["reset@list.test"], "password-reset").await;
    // Fan-out copies already delivered when the reset was accepted (and queued).
    let before_reset = upstream.record().messages.len();
    assert!(
        before_reset < FAN_OUT / 2,
        "the fan-out is still mostly queued when the reset arrives ({before_reset} delivered)"
    );

    let end = Instant::now() + Duration::from_secs(60);
    let position = loop {
        let record = upstream.record();
        if let Some(i) = record
            .messages
            .iter()
            .position(|m| m.rcpt_to == ["reset@list.test"])
        {
            break i;
        }
        assert!(
            Instant::now() < end,
            "the transactional message never arrived ({} fan-out copies did)",
            record.messages.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "password reset arrived as message {position}; {before_reset} fan-out copies were out when it was accepted"
    );
    // It is dispatched as soon as a slot frees, but it may need a fresh connection (connect,
    // EHLO) while the lane's other slots (9 here) keep sending fan-out copies on connections
    // already open: so at most the copies in flight plus about one more round of them arrive
    // first (up to 15 seen on an idle machine; the bound leaves room for a loaded one). Without
    // priority it arrives after all 5,000.
    assert!(
        position <= before_reset + 100,
        "the transactional copy waited behind {} queued fan-out copies",
        position - before_reset
    );
}
