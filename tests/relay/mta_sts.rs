//! MTA-STS (RFC 8461) for `kind = "mx"` through the real binary: policies served over HTTPS on
//! 127.0.0.20 (certificate from a test CA the upstream's `ca_file` trusts), `_mta-sts` TXT
//! records and MX records from the loopback DNS server, MX hosts on 127.0.0.x.
//! - enforce: only hosts the policy names, only with a certificate valid for their name; a host
//!   with a wrong certificate is skipped, never sent plaintext; with no valid host, deferred.
//! - testing: delivered as without a policy, and the log says what enforce would have refused.

use crate::support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::direct::*;
use support::dns::{DnsServer, Zone};
use support::pki::TestCa;
use support::scripted_smtp::{Script, ScriptedSmtp};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(last: u8) -> Ipv4Addr {
    loopback(last)
}

/// An HTTPS server answering `GET /.well-known/mta-sts.txt` with the policy of the `Host:`
/// it is asked for; counts the requests.
struct PolicyServer {
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn policy_server(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    policies: HashMap<String, String>,
) -> PolicyServer {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, policies, count) = (acceptor.clone(), policies.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let host = text
                    .lines()
                    .find_map(|l| l.strip_prefix("host:"))
                    .map(|h| h.trim().to_string())
                    .unwrap_or_default();
                let response = match policies.get(&host) {
                    Some(policy) if text.starts_with("get /.well-known/mta-sts.txt ") => {
                        format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{policy}")
                    }
                    _ => "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno".into(),
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    PolicyServer { requests, task }
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

#[tokio::test]
async fn enforce_uses_only_valid_listed_hosts_and_testing_reports() {
    let (smtp_port, https_port) = (free_port(), free_port());
    let ca = TestCa::new("MTA-STS Test CA");
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write(tmp.path(), "ca.pem");
    let starttls = |name: &str| Script {
        starttls: Some(ca.server_cert(&[name]).server_config()),
        ..Script::default()
    };
    let host = |last: u8, script: Script| {
        ScriptedSmtp::start_on(SocketAddr::from((ip(last), smtp_port)), script)
    };
    // enforce.test: the most preferred MX is not in the policy (and takes plaintext), the next
    // has a certificate for another name, the last is valid.
    let unlisted = host(23, Script::default()).await;
    let wrong_cert = host(21, starttls("wrong.test")).await;
    let valid = host(22, starttls("mx2.enforce.test")).await;
    // testing.test: its only MX has a certificate for another name.
    let testing_mx = host(24, starttls("wrong.test")).await;
    // bad.test (enforce): its only MX has a certificate for another name.
    let bad_mx = host(25, starttls("wrong.test")).await;

    let server_cert = ca.server_cert(&[
        "mta-sts.enforce.test",
        "mta-sts.testing.test",
        "mta-sts.bad.test",
    ]);
    let policies = HashMap::from([
        (
            "mta-sts.enforce.test".to_string(),
            policy("enforce", "*.enforce.test"),
        ),
        (
            "mta-sts.testing.test".to_string(),
            policy("testing", "mx.testing.test"),
        ),
        (
            "mta-sts.bad.test".to_string(),
            policy("enforce", "mx.bad.test"),
        ),
    ]);
    let https = policy_server(
        SocketAddr::from((ip(20), https_port)),
        server_cert.server_config(),
        policies,
    )
    .await;

    let mut zone = Zone::default();
    zone.mx("enforce.test", 5, "mx.elsewhere.test")
        .mx("enforce.test", 10, "mx1.enforce.test")
        .mx("enforce.test", 20, "mx2.enforce.test")
        .a("mx.elsewhere.test", ip(23))
        .a("mx1.enforce.test", ip(21))
        .a("mx2.enforce.test", ip(22))
        .mx("testing.test", 10, "mx.testing.test")
        .a("mx.testing.test", ip(24))
        .mx("bad.test", 10, "mx.bad.test")
        .a("mx.bad.test", ip(25));
    for d in ["enforce.test", "testing.test", "bad.test"] {
        zone.txt(&format!("_mta-sts.{d}"), "v=STSv1; id=20261203T000000;")
            .a(&format!("mta-sts.{d}"), ip(20));
    }
    let dns = DnsServer::start(zone).await;

    let upstream = format!(
        "https_port = {https_port}\nca_file = \"{}\"\n",
        ca_file.display()
    );
    let config = mx_relay_config(dns.addr, smtp_port, &upstream, "");
    let mut relay = RelayProc::start(&config, &[ALLOW_TEST_PORTS]).await;
    let to = ["a@enforce.test", "b@testing.test", "c@bad.test"];
    send_split(&relay, &to).await;

    let end = std::time::Instant::now() + Duration::from_secs(30);
    while valid.record().messages.is_empty() || testing_mx.record().messages.is_empty() {
        assert!(
            std::time::Instant::now() < end,
            "enforce.test and testing.test not delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // enforce: the valid listed host, over TLS; the others got no mail.
    assert_eq!(valid.record().messages[0].rcpt_to, ["a@enforce.test"]);
    assert!(valid.record().messages[0].tls);
    assert_eq!(
        unlisted.record().connections,
        0,
        "a host outside the policy is never tried"
    );
    assert!(
        wrong_cert.record().connections >= 1,
        "tried, refused at the handshake"
    );
    assert!(
        !wrong_cert.record().saw("MAIL"),
        "never plaintext after a failed verification"
    );
    // testing: delivered (STARTTLS without checks), and reported.
    assert!(testing_mx.record().messages[0].tls);
    let log = relay
        .wait_for_log("MTA-STS testing: enforce would refuse", 0)
        .await;
    assert!(log.contains("mx.testing.test"), "{log}");
    // bad.test: deferred, nothing sent.
    let deferred = wait_deferred(&relay).await;
    assert!(deferred >= 1.0);
    assert!(
        !bad_mx.record().saw("MAIL"),
        "no plaintext for an enforce domain"
    );

    assert_eq!(
        metric_at(relay.metrics, &delivered_tls("mta-sts")).await,
        Some(1.0)
    );
    assert_eq!(
        metric_at(relay.metrics, &delivered_tls("opportunistic")).await,
        Some(1.0)
    );
    // Policies are cached: retries of bad.test did not fetch again.
    let fetched = https.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        https.requests.load(Ordering::SeqCst),
        fetched,
        "cached for max_age"
    );
    assert!(fetched <= 3, "{fetched} fetches for three domains");

    // The policy outlives a restart: with the policy server gone (an attacker blocking the
    // fetch), enforce.test still goes only to its valid listed host, never to the unlisted one
    // that takes plaintext.
    drop(https);
    relay.proc_.terminate();
    relay.restart(&[ALLOW_TEST_PORTS]).await;
    send_split(&relay, &["again@enforce.test"]).await;
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while valid.record().messages.len() < 2 {
        assert!(
            std::time::Instant::now() < end,
            "not delivered after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(valid.record().messages[1].rcpt_to, ["again@enforce.test"]);
    assert_eq!(
        unlisted.record().connections,
        0,
        "the cached enforce policy held"
    );
    let cache = relay.dir.path().join("spool/mta-sts-direct.json");
    let cached = std::fs::read_to_string(&cache).unwrap();
    assert!(
        cached.contains("enforce.test") && cached.contains("*.enforce.test"),
        "{cached}"
    );
}

async fn wait_deferred(relay: &RelayProc) -> f64 {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http_get(relay.metrics, "/metrics").await;
        let n: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("mailveil_deliveries_total") && l.contains("outcome=\"deferred\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if n >= 1.0 || std::time::Instant::now() > end {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
