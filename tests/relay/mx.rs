//! `[shaping] classify_by_mx`: a recipient domain the catalog does not list is put in the lane
//! of the provider that hosts its mail, found by asking a real DNS server (here one on loopback)
//! for its MX records. Off by default; domains without a matching MX stay in `default`.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use support::dns::{DnsServer, Zone};
use support::*;

/// A DNS server on 127.0.0.1 that knows the MX of `corp.test` (Microsoft-hosted) and of
/// `selfhosted.test` (its own server); everything else is NXDOMAIN. Counts MX queries.
async fn dns_server() -> DnsServer {
    let mut zone = Zone::default();
    zone.mx("corp.test", 10, "corp-test.mail.protection.outlook.com")
        .mx("selfhosted.test", 10, "mx.selfhosted.test");
    DnsServer::start(zone).await
}

fn config(dns: SocketAddr, classify: bool) -> String {
    format!(
        r#"
[server]
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
[shaping]
classify_by_mx = {classify}
mx_nameservers = ["{dns}"]
mx_timeout = "5s"
[[upstream]]
name = "outbox"
dir = "{{dir}}/outbox"
"#
    )
}

async fn deliveries_by_provider(relay: &InProcessRelay, provider: &str) -> f64 {
    let (_, text) = relay.http_get("/metrics").await;
    metric(
        &text,
        &format!(
            "mailveil_deliveries_total{{outcome=\"delivered\",provider=\"{provider}\",upstream=\"outbox\"}}"
        ),
    )
    .unwrap_or(0.0)
}

async fn send_three(relay: &InProcessRelay, tag: &str) {
    let rcpts = ["ann@corp.test", "bob@selfhosted.test", "cy@nowhere.test"];
    let m = message(
        &[
            "From: app@src.test",
            "To: ann@corp.test, bob@selfhosted.test, cy@nowhere.test",
            &format!("Message-ID: <{tag}@src.test>"),
        ],
        "hello\r\n",
    );
    let reply = lettre_send(relay.smtp, Some("app@src.test"), &rcpts, &m)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_domains_go_to_the_lane_of_the_provider_hosting_their_mx() {
    let dns_server = dns_server().await;
    let (dns, queries) = (dns_server.addr, dns_server.mx_queries.clone());
    let relay = InProcessRelay::start(&config(dns, true)).await;
    send_three(&relay, "first").await;
    send_three(&relay, "second").await;
    let copies = wait_for_captures(&relay.outbox(), 6).await;
    assert_eq!(copies.len(), 6);
    // The outcome is counted just after the capture file is written.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while deliveries_by_provider(&relay, "microsoft").await
        + deliveries_by_provider(&relay, "default").await
        < 6.0
        && std::time::Instant::now() < end
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        deliveries_by_provider(&relay, "microsoft").await,
        2.0,
        "corp.test's MX is Microsoft's"
    );
    assert_eq!(
        deliveries_by_provider(&relay, "default").await,
        4.0,
        "own MX and NXDOMAIN stay in default"
    );
    // Three domains, two messages: the answers are cached for their TTL (NXDOMAIN included
    // per its negative TTL, which this server does not give, so allow one more per message).
    let asked = queries.load(Ordering::SeqCst);
    assert!(
        (3..=4).contains(&asked),
        "MX answers are cached: {asked} queries for 3 domains in 2 messages"
    );
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_classify_by_mx_no_dns_is_asked() {
    let dns_server = dns_server().await;
    let (dns, queries) = (dns_server.addr, dns_server.mx_queries.clone());
    let relay = InProcessRelay::start(&config(dns, false)).await;
    send_three(&relay, "off").await;
    wait_for_captures(&relay.outbox(), 3).await;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while deliveries_by_provider(&relay, "default").await < 3.0 && std::time::Instant::now() < end {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(deliveries_by_provider(&relay, "default").await, 3.0);
    assert_eq!(
        queries.load(Ordering::SeqCst),
        0,
        "off by default: no lookups"
    );
    relay.stop().await.unwrap();
}
