//! `[[upstream]] kind = "mx"` through the real binary: a DNS server on loopback answers MX and
//! A queries, scripted SMTP servers on 127.0.0.x stand in for the MX hosts (all on one port,
//! `smtp_port`, which only tests may set). Preference order and fallback to the next host, the
//! A fallback of a domain without MX, null MX and a domain that does not exist, copies of
//! several domains of one site over few connections, and the per-site connection cap.

use crate::support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use support::direct::*;
use support::dns::{DnsServer, Zone};
use support::scripted_smtp::{Script, Step};
use support::*;

fn ip(last: u8) -> Ipv4Addr {
    loopback(last)
}

/// Plaintext (`tls = "none"`) unless a test removes it, `ehlo_name` set, `extra` added to the
/// upstream.
fn config(dns: SocketAddr, port: u16, extra: &str) -> String {
    let upstream = format!("tls = \"none\"\nehlo_name = \"out.relay.test\"\n{extra}");
    mx_relay_config(dns, port, &upstream, "")
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn copies_follow_mx_preference_fallback_and_the_a_record() {
    let port = free_port();
    // mx1 of pref.test (127.0.0.2) has nothing listening; mx2 (127.0.0.3) takes mail.
    // greets.test's first MX (127.0.0.4) greets with 421: the next one is tried.
    // implicit.test has no MX, only an A record (127.0.0.5): mail goes there.
    let good = mx_host(3, port, Script::default()).await;
    let busy = mx_host(
        4,
        port,
        Script {
            greeting: "421 4.3.2 too busy, try another MX".into(),
            ..Script::default()
        },
    )
    .await;
    let implicit = mx_host(5, port, Script::default()).await;
    let mut zone = Zone::default();
    zone.mx("pref.test", 20, "mx2.pref.test")
        .mx("pref.test", 10, "mx1.pref.test")
        .a("mx1.pref.test", ip(2))
        .a("mx2.pref.test", ip(3))
        .mx("greets.test", 5, "busy.greets.test")
        .mx("greets.test", 50, "mx2.pref.test")
        .a("busy.greets.test", ip(4))
        .a("implicit.test", ip(5))
        .null_mx("nomail.test");
    let dns = DnsServer::start(zone).await;
    let relay = RelayProc::start(&config(dns.addr, port, ""), &[ALLOW_TEST_PORTS]).await;

    let to = [
        "a@pref.test",
        "b@greets.test",
        "c@implicit.test",
        "d@nomail.test",
        "e@nosuch.test",
    ];
    send_split(&relay, &to).await;

    wait_until("pref.test and greets.test at mx2", || {
        good.record().messages.len() >= 2
    })
    .await;
    wait_until("implicit.test at its A record", || {
        !implicit.record().messages.is_empty()
    })
    .await;
    let mut at_good: Vec<String> = good
        .record()
        .messages
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    at_good.sort();
    assert_eq!(at_good, ["a@pref.test", "b@greets.test"]);
    assert_eq!(implicit.record().messages[0].rcpt_to, ["c@implicit.test"]);
    assert!(
        busy.record().messages.is_empty(),
        "the 421 host got no mail"
    );
    assert!(
        busy.record().connections >= 1,
        "the preferred host was tried first"
    );
    assert!(
        good.record()
            .commands
            .iter()
            .any(|c| c == "EHLO out.relay.test"),
        "ehlo_name is announced: {:?}",
        good.record().commands
    );

    // Null MX and a domain that does not exist fail permanently, without a connection.
    let log = relay
        .wait_for_log("nomail.test accepts no mail (null MX", 0)
        .await;
    assert!(log.contains("5.1.10"), "{log}");
    relay
        .wait_for_log("domain nosuch.test does not exist", 0)
        .await;
    let failed = wait_metric(&relay, "mailveil_deliveries_total{outcome=\"failed\"", 2.0).await;
    assert_eq!(failed, 2.0);
    let plain = metric_at(
        relay.metrics,
        "mailveil_delivered_tls_total{tls=\"none\",upstream=\"direct\"}",
    )
    .await;
    assert_eq!(
        plain,
        Some(3.0),
        "three copies delivered in plaintext (tls = none)"
    );
    // Nothing was retried: every outcome was final at the first attempt.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(good.record().messages.len(), 2);
}

/// Sums every series of `family` whose labels contain `labels` once it reaches `want`.
async fn wait_metric(relay: &RelayProc, selector: &str, want: f64) -> f64 {
    let (family, labels) = selector.split_once('{').unwrap();
    let labels = labels.trim_end_matches('}');
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http_get(relay.metrics, "/metrics").await;
        let sum: f64 = text
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if sum >= want || std::time::Instant::now() > end {
            return sum;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn one_site_shares_few_connections_within_its_cap() {
    let port = free_port();
    let shared = mx_host(
        6,
        port,
        Script {
            // Sessions overlap, so a missing cap would show as more than two at once.
            data_end_delay: Duration::from_millis(50),
            ..Script::default()
        },
    )
    .await;
    let mut zone = Zone::default();
    for d in ["one.test", "two.test", "three.test"] {
        zone.mx(d, 10, "mx.shared.test");
    }
    zone.a("mx.shared.test", ip(6));
    let dns = DnsServer::start(zone).await;
    let relay = RelayProc::start(
        &config(dns.addr, port, "max_connections_per_site = 2"),
        &[ALLOW_TEST_PORTS],
    )
    .await;

    // 30 recipients over three domains of one site, split into 30 private copies.
    let to: Vec<String> = (0..30)
        .map(|i| format!("r{i}@{}", ["one.test", "two.test", "three.test"][i % 3]))
        .collect();
    let to_refs: Vec<&str> = to.iter().map(String::as_str).collect();
    send_split(&relay, &to_refs).await;
    wait_until("30 copies at the shared MX", || {
        shared.record().messages.len() >= 30
    })
    .await;

    let record = shared.record();
    assert!(
        record.messages.iter().all(|m| m.rcpt_to.len() == 1),
        "private copies"
    );
    assert!(
        record.max_active <= 2,
        "per-site cap: {} at once",
        record.max_active
    );
    assert!(
        record.connections <= 4,
        "three domains of one site share its connections: {} opened for 30 copies",
        record.connections
    );
    assert!(
        record.max_messages_per_connection >= 10,
        "{}",
        record.max_messages_per_connection
    );
}

#[tokio::test]
async fn an_unreachable_domain_defers_without_failing_the_upstream_for_others() {
    let port = free_port();
    let good = mx_host(7, port, Script::default()).await;
    let mut zone = Zone::default();
    zone.mx("down.test", 10, "mx.down.test")
        .a("mx.down.test", ip(8)) // nothing listens on 127.0.0.8
        .mx("up.test", 10, "mx.up.test")
        .a("mx.up.test", ip(7));
    let dns = DnsServer::start(zone).await;
    let relay = RelayProc::start(&config(dns.addr, port, ""), &[ALLOW_TEST_PORTS]).await;
    let to = ["x@down.test", "y@up.test"];
    send_split(&relay, &to).await;
    wait_until("up.test delivered", || !good.record().messages.is_empty()).await;
    // down.test is deferred (and retried), never failed, and the upstream stays up.
    wait_metric(
        &relay,
        "mailveil_deliveries_total{outcome=\"deferred\"",
        2.0,
    )
    .await;
    let failed = wait_metric(&relay, "mailveil_deliveries_total{outcome=\"failed\"", 0.0).await;
    assert_eq!(failed, 0.0);
    let up = metric_at(relay.metrics, "mailveil_upstream_up{upstream=\"direct\"}").await;
    assert_eq!(up, Some(1.0), "one domain's trouble is not the upstream's");
    // Later copies to up.test still go out.
    send_simple(relay.smtp, "app@src.test", &["z@up.test"], "later").await;
    wait_until("the later copy", || good.record().messages.len() >= 2).await;
}

#[test]
fn smtp_port_is_refused_outside_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mailveil.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:2525"
[spool]
dir = "{}/spool"
[[upstream]]
name = "direct"
kind = "mx"
smtp_port = 2525
"#,
            tmp.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailveil"))
        .args(["check-config", "-c", &path.display().to_string()])
        .env_remove("MAILVEIL_ALLOW_TEST_PORTS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstream[0].smtp_port"), "{stderr}");
}

/// `tls = "opportunistic"` (the default): STARTTLS whenever a host offers it, whatever its
/// certificate (here from a CA nobody trusts, for another name), plaintext when it does not
/// offer it; the `tls` label tells them apart.
#[tokio::test]
async fn starttls_is_used_whenever_offered_whatever_the_certificate() {
    let port = free_port();
    let ca = support::pki::TestCa::new("Untrusted Test CA");
    let with_tls = mx_host(
        9,
        port,
        Script {
            starttls: Some(ca.server_cert(&["some-other-name.test"]).server_config()),
            ..Script::default()
        },
    )
    .await;
    let plain = mx_host(10, port, Script::default()).await;
    // Offers STARTTLS, then refuses it: plaintext, said in the log and the label.
    let refuses = mx_host(
        14,
        port,
        Script {
            starttls: Some(ca.server_cert(&["mx.refuses.test"]).server_config()),
            replies: [(
                Step::StartTls,
                "454 4.7.0 TLS not available now".to_string(),
            )]
            .into(),
            ..Script::default()
        },
    )
    .await;
    let mut zone = Zone::default();
    zone.mx("tls.test", 10, "mx.tls.test")
        .a("mx.tls.test", ip(9))
        .mx("plain.test", 10, "mx.plain.test")
        .a("mx.plain.test", ip(10))
        .mx("refuses.test", 10, "mx.refuses.test")
        .a("mx.refuses.test", ip(14));
    let dns = DnsServer::start(zone).await;
    let template = config(dns.addr, port, "").replace("tls = \"none\"\n", "");
    let relay = RelayProc::start(&template, &[ALLOW_TEST_PORTS]).await;
    let to = ["a@tls.test", "b@plain.test", "c@refuses.test"];
    send_split(&relay, &to).await;
    wait_until("the three copies", || {
        !with_tls.record().messages.is_empty()
            && !plain.record().messages.is_empty()
            && !refuses.record().messages.is_empty()
    })
    .await;
    assert!(with_tls.record().messages[0].tls, "sent over TLS");
    assert!(!plain.record().messages[0].tls);
    assert!(!refuses.record().messages[0].tls);
    for tls in ["opportunistic", "none", "fallback"] {
        assert_eq!(
            metric_at(relay.metrics, &delivered_tls(tls)).await,
            Some(1.0),
            "{tls}"
        );
    }
    let log = relay.wait_for_log("tls=fallback", 0).await;
    assert!(log.contains("454 4.7.0 TLS not available now"), "{log}");
    let log = relay.wait_for_log("opportunistic", 0).await;
    assert!(log.contains("rcpt=") && log.contains("delivered"), "{log}");
}

/// A provider with `require_tls` (here one naming `strict.test`) gets STARTTLS with a
/// certificate verified for the MX host's name, or nothing: a host whose certificate is for
/// another name, or that offers no STARTTLS, is skipped and the copy deferred, never sent in
/// plaintext; the next host with a valid certificate takes it.
#[tokio::test]
async fn require_tls_providers_get_verified_tls_or_nothing() {
    let port = free_port();
    let ca = support::pki::TestCa::new("Test CA");
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write(tmp.path(), "ca.pem");
    let wrong_name = mx_host(
        11,
        port,
        Script {
            starttls: Some(ca.server_cert(&["not-the-mx.test"]).server_config()),
            ..Script::default()
        },
    )
    .await;
    let no_tls = mx_host(12, port, Script::default()).await;
    let valid = mx_host(
        13,
        port,
        Script {
            starttls: Some(ca.server_cert(&["mx3.strict.test"]).server_config()),
            ..Script::default()
        },
    )
    .await;
    let mut zone = Zone::default();
    zone.mx("strict.test", 10, "mx1.strict.test")
        .mx("strict.test", 20, "mx2.strict.test")
        .mx("strict.test", 30, "mx3.strict.test")
        .a("mx1.strict.test", ip(11))
        .a("mx2.strict.test", ip(12))
        .a("mx3.strict.test", ip(13))
        .mx("lax.test", 10, "mx2.strict.test");
    let dns = DnsServer::start(zone).await;
    let extra = format!(
        "ca_file = \"{}\"\n[[provider]]\nname = \"strict\"\ndomains = [\"strict.test\"]\nrequire_tls = true\n",
        ca_file.display()
    );
    let template = config(dns.addr, port, &extra).replace("tls = \"none\"\n", "");
    let relay = RelayProc::start(&template, &[ALLOW_TEST_PORTS]).await;
    let to = ["a@strict.test", "b@lax.test"];
    send_split(&relay, &to).await;
    wait_until("the strict copy at mx3", || {
        !valid.record().messages.is_empty()
    })
    .await;
    wait_until("the lax copy at mx2", || {
        !no_tls.record().messages.is_empty()
    })
    .await;
    let strict = &valid.record().messages[0];
    assert_eq!(strict.rcpt_to, ["a@strict.test"]);
    assert!(strict.tls);
    assert!(wrong_name.record().connections >= 1, "mx1 was tried first");
    assert!(
        !wrong_name.record().saw("MAIL"),
        "no plaintext after a failed verification"
    );
    assert_eq!(
        no_tls
            .record()
            .messages
            .iter()
            .map(|m| m.rcpt_to.clone())
            .collect::<Vec<_>>(),
        [["b@lax.test"]],
        "mx2 (no STARTTLS) took only the copy that may travel in plaintext"
    );
    let verified = metric_at(
        relay.metrics,
        "mailveil_delivered_tls_total{tls=\"verified\",upstream=\"direct\"}",
    )
    .await;
    assert_eq!(verified, Some(1.0));
}

/// Direct delivery hears the provider itself: Yahoo's own `[TSS04]` deferral, from Yahoo's MX
/// host, suspends the yahoo lane through the built-in shaping rule, while another provider's
/// copies keep flowing; the suspended copy is deferred, never failed.
#[tokio::test]
async fn a_providers_own_throttle_reply_reaches_the_shaping_rules() {
    let port = free_port();
    let yahoo_mx = mx_host(
        15,
        port,
        Script::default().rcpt_domain_replies(
            "yahoo.com",
            &["421 4.7.0 [TSS04] Messages from 192.0.2.25 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"],
        ),
    )
    .await;
    let other = mx_host(16, port, Script::default()).await;
    let mut zone = Zone::default();
    zone.mx("yahoo.com", 1, "mta5.am0.yahoodns.net")
        .a("mta5.am0.yahoodns.net", ip(15))
        .mx("example.org", 10, "mx.example.org")
        .a("mx.example.org", ip(16));
    let dns = DnsServer::start(zone).await;
    let relay = RelayProc::start(&config(dns.addr, port, ""), &[ALLOW_TEST_PORTS]).await;
    send_simple(
        relay.smtp,
        "app@src.test",
        &["someone@yahoo.com"],
        "to yahoo",
    )
    .await;
    let log = relay
        .wait_for_log("provider suspended after a throttling reply", 0)
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("provider suspended"))
        .unwrap();
    assert!(
        line.contains("yahoo-tss04") && line.contains("yahoo"),
        "{line}"
    );
    assert_eq!(
        metric_at(
            relay.metrics,
            "mailveil_provider_slowed{provider=\"yahoo\"}"
        )
        .await,
        Some(1.0)
    );
    send_simple(
        relay.smtp,
        "app@src.test",
        &["friend@example.org"],
        "elsewhere",
    )
    .await;
    wait_until("example.org while yahoo is suspended", || {
        !other.record().messages.is_empty()
    })
    .await;
    assert!(yahoo_mx.record().messages.is_empty());
    let failed = wait_metric(&relay, "mailveil_deliveries_total{outcome=\"failed\"", 0.0).await;
    assert_eq!(failed, 0.0, "a throttle reply is never a permanent failure");
}
