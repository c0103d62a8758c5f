//! `mailveil ctl health`: is the relay described by this config file ready to take mail? For a
//! container's `HEALTHCHECK` (Docker, Podman, Nomad) and exec probes: no token, no curl, no
//! hard-wired port.
//!
//! The config file is read like `ctl` reads it (only the keys needed, without validating the
//! rest or its secrets: a relay keeps running on its last good configuration when the file is
//! edited, and its health does not change with the file). What is probed:
//! - with `[metrics] listen`: `GET /readyz` there (200 when the SMTP listener is up and the
//!   spool takes mail; 503 with the reason while starting, stopping, or with a full or
//!   unwritable spool, see docs/operations.md "Probes");
//! - without it (metrics are off by default): the SMTP listener itself, which must greet with
//!   `220`; the probe then says `QUIT`.
//!
//! A wildcard listen address is probed on loopback. The answer is one line: what was probed
//! and what it said.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// What the probe connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `GET /readyz` on the metrics listener.
    Readyz(SocketAddr),
    /// The SMTP greeting on the SMTP listener.
    Smtp(SocketAddr),
}

/// The SMTP listener when `server.listen` is not set (as in `config::server`).
const DEFAULT_SMTP_LISTEN: &str = "127.0.0.1:2525";

/// The target for a config file's text: `[metrics] listen` if set, else `[server] listen`.
pub fn target_from_config(text: &str) -> Result<Target, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
    let listen = |section: &str| -> Result<Option<SocketAddr>, String> {
        let Some(value) = table.get(section).and_then(|s| s.get("listen")) else {
            return Ok(None);
        };
        let text = value
            .as_str()
            .ok_or_else(|| format!("{section}.listen is not a string"))?;
        let addr: SocketAddr = text
            .parse()
            .map_err(|_| format!("{section}.listen: {text:?} is not an address:port"))?;
        Ok(Some(reachable(addr)))
    };
    if let Some(addr) = listen("metrics")? {
        return Ok(Target::Readyz(addr));
    }
    let smtp = match listen("server")? {
        Some(addr) => addr,
        None => DEFAULT_SMTP_LISTEN.parse().expect("valid default"),
    };
    Ok(Target::Smtp(smtp))
}

/// Where a process on the same host reaches a listener: loopback for a wildcard address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Probes `target`: `Ok` with what answered, `Err` with why the relay is not healthy. Each
/// step is bounded by `timeout`.
pub fn probe(target: Target, timeout: Duration) -> Result<String, String> {
    match target {
        Target::Readyz(addr) => readyz(addr, timeout),
        Target::Smtp(addr) => smtp_greeting(addr, timeout),
    }
}

fn readyz(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let url = format!("http://{addr}/readyz");
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|e| format!("metrics listener {addr} (/readyz) does not answer: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    let said = one_line(&body);
    if status == 200 {
        Ok(format!("/readyz on {addr}: {said}"))
    } else {
        Err(format!("/readyz on {addr} answered {status}: {said}"))
    }
}

fn smtp_greeting(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("SMTP listener {addr} does not accept connections: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("SMTP listener {addr}: {e}"))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    // The greeting may span lines (`220-...`); its last line has a space after the code.
    let mut last = String::new();
    for _ in 0..20 {
        let mut line = String::new();
        let read = reader
            .by_ref()
            .take(1024)
            .read_line(&mut line)
            .map_err(|e| format!("SMTP listener {addr} sent no greeting: {e}"))?;
        if read == 0 {
            return Err(format!(
                "SMTP listener {addr} closed the connection without a greeting"
            ));
        }
        last = line.trim_end().to_string();
        if last.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    let said = one_line(&last);
    if !last.starts_with("220") {
        return Err(format!("SMTP listener {addr} answered {said}"));
    }
    // Be a polite client; the answer does not matter.
    let mut writer = stream;
    let _ = writer.write_all(b"QUIT\r\n");
    let mut bye = String::new();
    let _ = reader.take(1024).read_line(&mut bye);
    Ok(format!("SMTP listener {addr} greeted: {said}"))
}

/// A peer's text as one short line: control characters replaced, at most 200 characters.
fn one_line(text: &str) -> String {
    let line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if line.is_empty() {
        "(empty answer)".into()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_follows_the_config() {
        assert_eq!(
            target_from_config(
                "[metrics]\nlisten = \"0.0.0.0:9725\"\n[server]\nlisten = \"127.0.0.1:25\"\n"
            ),
            Ok(Target::Readyz("127.0.0.1:9725".parse().unwrap()))
        );
        assert_eq!(
            target_from_config("[server]\nlisten = \"[::]:2526\"\n"),
            Ok(Target::Smtp("[::1]:2526".parse().unwrap()))
        );
        assert_eq!(
            target_from_config("[server]\nhostname = \"x\"\n"),
            Ok(Target::Smtp("127.0.0.1:2525".parse().unwrap()))
        );
        // `[metrics]` without `listen` means metrics are off.
        assert_eq!(
            target_from_config("[metrics]\nmax_connections = 4\n"),
            Ok(Target::Smtp("127.0.0.1:2525".parse().unwrap()))
        );
        let err = target_from_config("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(err.contains("metrics.listen"), "{err}");
        assert!(target_from_config("[server\n").is_err());
    }

    #[test]
    fn peer_text_becomes_one_short_line() {
        assert_eq!(one_line("spool full\r\n"), "spool full");
        assert_eq!(one_line("a\x1bb"), "a b");
        assert_eq!(one_line("a\rb"), "a b");
        assert_eq!(one_line(""), "(empty answer)");
        assert_eq!(one_line(&"x".repeat(500)).len(), 200);
    }
}
