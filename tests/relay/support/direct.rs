//! What the direct-delivery tests (`kind = "mx"`: direct_mx, mta_sts, dane) share: MX hosts on
//! 127.0.0.x at one port, the relay's config around an `mx` upstream, sending one message split
//! to several domains, and the `tls` label of delivered copies.

use std::net::{Ipv4Addr, SocketAddr};

use super::relay_toml::split_relay;
use super::scripted_smtp::{Script, ScriptedSmtp};
use super::{RelayProc, lettre_send, message};

/// Lets the config set `smtp_port`/`https_port` (test ports).
pub const ALLOW_TEST_PORTS: (&str, &str) = ("MAILVEIL_ALLOW_TEST_PORTS", "1");

pub fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A scripted MX host on 127.0.0.`last`:`port`.
pub async fn mx_host(last: u8, port: u16, script: Script) -> ScriptedSmtp {
    ScriptedSmtp::start_on(SocketAddr::from((loopback(last), port)), script).await
}

/// A split-privacy relay whose only upstream is `[[upstream]] name = "direct" kind = "mx"`
/// asking `dns`, delivering to `smtp_port`, with `upstream` (more keys of the upstream) and
/// `tail` (more sections) added; metrics on.
pub fn mx_relay_config(dns: SocketAddr, smtp_port: u16, upstream: &str, tail: &str) -> String {
    format!(
        r#"
{head}[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
[metrics]
listen = "{{metrics}}"
[[upstream]]
name = "direct"
kind = "mx"
nameservers = ["{dns}"]
smtp_port = {smtp_port}
timeout = "5s"
{upstream}
{tail}"#,
        head = split_relay!()
    )
}

/// One message whose To: shows every address of `to`, split by the relay into private copies.
pub async fn send_split(relay: &RelayProc, to: &[&str]) {
    let m = message(
        &["From: app@src.test", &format!("To: {}", to.join(", "))],
        "hi\r\n",
    );
    lettre_send(relay.smtp, Some("app@src.test"), to, &m)
        .await
        .unwrap();
}

/// The series of copies the `direct` upstream delivered with `tls`.
pub fn delivered_tls(tls: &str) -> String {
    format!("mailveil_delivered_tls_total{{tls=\"{tls}\",upstream=\"direct\"}}")
}
