//! DANE (RFC 7672) for `kind = "mx"` through the real binary, with a real DNSSEC chain on
//! loopback: knotd signs `dane.test` (and serves `plain.test` unsigned), unbound validates with
//! the zone's DS as its trust anchor, and the relay trusts unbound's AD bit
//! (`dnssec_resolver`). MX hosts are scripted servers on 127.0.0.x with STARTTLS.
//! - a certificate matching the authenticated TLSA record: delivered (`tls="dane"`);
//! - a certificate matching none: refused at the handshake, never plaintext, deferred;
//! - an unsigned zone's TLSA record is not trusted: opportunistic TLS as without DANE.
//!
//! Skipped (with a message) without knotd/unbound, unless `MAILVEIL_REQUIRE_TOOLS=1` (CI).

use crate::support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use support::direct::*;
use support::dnssec::{SignedDns, ZoneFile, tools_present};
use support::pki::TestCa;
use support::scripted_smtp::{Script, ScriptedSmtp};
use support::*;

fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn authenticated_tlsa_records_decide_and_unsigned_ones_do_not() {
    if !tools_present() {
        assert!(
            std::env::var("MAILVEIL_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "knotd/unbound missing (apt-get install knot unbound)"
        );
        eprintln!("skipping: knotd/unbound not installed");
        return;
    }
    let port = free_port();
    let ca = TestCa::new("DANE test CA (trusted by nobody)");
    let good_cert = ca.server_cert(&["mx-good.dane.test"]);
    let bad_cert = ca.server_cert(&["mx-bad.dane.test"]);
    let other = ca.server_cert(&["someone-else.test"]);
    let host = |last: u8, cert: &support::pki::ServerCert| {
        ScriptedSmtp::start_on(
            SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), port)),
            Script {
                starttls: Some(cert.server_config()),
                ..Script::default()
            },
        )
    };
    let good = host(31, &good_cert).await;
    let bad = host(32, &bad_cert).await;
    let plain_mx = host(33, &bad_cert).await;

    let dns = SignedDns::start(&[
        ZoneFile {
            name: "dane.test",
            signed: true,
            records: format!(
                "good MX 10 mx-good.dane.test.\nbad MX 10 mx-bad.dane.test.\n\
                 mx-good A 127.0.0.31\nmx-bad A 127.0.0.32\n\
                 _25._tcp.mx-good TLSA 3 0 1 {}\n_25._tcp.mx-bad TLSA 3 0 1 {}\n",
                sha256_hex(good_cert.der()),
                sha256_hex(other.der()),
            ),
        },
        ZoneFile {
            name: "plain.test",
            signed: false,
            records: format!(
                "@ MX 10 mx.plain.test.\nmx A 127.0.0.33\n_25._tcp.mx TLSA 3 0 1 {}\n",
                sha256_hex(other.der()),
            ),
        },
    ]);
    let upstream = format!("dnssec_resolver = \"{}\"\nmta_sts = false\n", dns.resolver);
    let config = mx_relay_config(dns.resolver, port, &upstream, "");
    let relay = RelayProc::start(&config, &[ALLOW_TEST_PORTS]).await;
    let to = ["a@good.dane.test", "b@bad.dane.test", "c@plain.test"];
    send_split(&relay, &to).await;

    let end = std::time::Instant::now() + Duration::from_secs(30);
    while good.record().messages.is_empty() || plain_mx.record().messages.is_empty() {
        assert!(
            std::time::Instant::now() < end,
            "good.dane.test and plain.test not delivered:\n{}",
            relay.wait_for_log("", 0).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(good.record().messages[0].tls);
    assert!(
        plain_mx.record().messages[0].tls,
        "opportunistic STARTTLS, certificate unchecked"
    );
    // The mismatching host: tried, refused at the handshake, never a MAIL; the copy deferred.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while bad.record().connections == 0 {
        assert!(std::time::Instant::now() < end, "mx-bad was never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.wait_for_log("deferred", 0).await;
    assert!(
        !bad.record().saw("MAIL"),
        "no plaintext after a DANE mismatch"
    );
    assert!(bad.record().messages.is_empty());

    assert_eq!(
        metric_at(relay.metrics, &delivered_tls("dane")).await,
        Some(1.0)
    );
    assert_eq!(
        metric_at(relay.metrics, &delivered_tls("opportunistic")).await,
        Some(1.0)
    );
}
