//! Inbound admission against the real binary (`mailveil run`), with hostile clients on real
//! sockets: stalled connections from one address outside `access.networks`, outsiders spread
//! over several addresses, clients that never authenticate, and password guessing over hundreds
//! of parallel TLS connections. The allowed application connects from 127.0.0.1 (the only
//! address in `access.networks`); outsiders bind their sockets to 127.0.0.2 and up, which Linux
//! routes over loopback like 127.0.0.1.
//!
//! Bounded: every wait has a limit, every socket is dropped at the end of its test, and the relay
//! process is killed by PID when its `RelayProc` drops. The fd limit of the test process (and so
//! of the relay it spawns, which inherits it) is raised to 4096 with `prlimit` when it is lower.

use crate::support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use support::*;

/// These tests run one at a time: the 1 s the app is given must not be eaten by another test's
/// 300 TLS handshakes on a 2-core machine, and the fd counts stay those of one test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const APP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Raises the soft limit of open files of this process to `want` (at most the hard limit) with
/// `prlimit`, so a thousand sockets fit; children spawned afterwards inherit it.
fn raise_fd_limit(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let Some((soft, hard)) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            let mut words = l.split_whitespace().skip(3);
            let soft = words.next()?.parse::<u64>().ok();
            let hard = words.next()?;
            Some((soft?, hard.parse::<u64>().unwrap_or(u64::MAX)))
        })
    else {
        return;
    };
    if soft >= want {
        return;
    }
    let target = want.min(hard);
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={target}:"))
        .status();
    assert!(
        status.is_ok_and(|s| s.success()) && target >= want,
        "need {want} open files (soft limit {soft}, hard {hard}); raise it with ulimit -n"
    );
}

/// Connects to `to` from the address `from` (any port).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    tokio::time::timeout(PATIENCE, socket.connect(to))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The relay's config: STARTTLS with a certificate from `pki`, one AUTH user `app` whose
/// password is `s3cret`, only 127.0.0.1 in `access.networks`, capture upstream in `{dir}`.
fn template(
    pki: &TestPki,
    password_file: &std::path::Path,
    server: &str,
    access: &str,
    rest: &str,
) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
{server}
[server.tls]
cert = "{cert}"
key = "{key}"
[access]
networks = ["127.0.0.1/32"]
{access}
[[access.users]]
name = "app"
password_file = "{pw}"
{storage}{metrics_section}{rest}
"#,
        cert = pki.cert_file.display(),
        key = pki.key_file.display(),
        pw = password_file.display(),
        storage = spool_and_outbox!(),
        metrics_section = metrics_listener!(),
    )
}

struct Setup {
    relay: RelayProc,
    pki: TestPki,
    _work: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

async fn start(server: &str, access: &str) -> Setup {
    start_with(server, access, "").await
}

async fn start_with(server: &str, access: &str, rest: &str) -> Setup {
    let turn = ONE_AT_A_TIME.lock().await;
    raise_fd_limit(4096);
    let work = tempfile::tempdir().unwrap();
    let pki = make_pki(work.path(), "inbound", &["localhost"]);
    let pw = work.path().join("app.pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let relay = RelayProc::start(&template(&pki, &pw, server, access, rest), &[]).await;
    Setup {
        relay,
        pki,
        _work: work,
        _turn: turn,
    }
}

/// How a stalled outsider stalls.
#[derive(Clone, Copy)]
enum Stall {
    /// Never sends a command after the greeting.
    Silent,
    /// `EHLO`, `STARTTLS`, then never starts the handshake.
    StartTlsNoHandshake,
}

/// Opens `n` connections from `from`, each stalling as `stall(i)` says; returns the held
/// sockets and how many were refused (`421` instead of a greeting).
async fn stall_many(
    addr: SocketAddr,
    from: Ipv4Addr,
    n: usize,
    stall: impl Fn(usize) -> Stall,
) -> (Vec<TcpStream>, Vec<String>) {
    let mut set = JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..n {
        let how = stall(i);
        let gate = gate.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let mut s = connect_from(from, addr).await.expect("connect");
            let greeting = reply_of(&mut s).await;
            if !greeting.starts_with("220") {
                return (s, Some(greeting));
            }
            if let Stall::StartTlsNoHandshake = how {
                assert!(cmd_of(&mut s, "EHLO stall.test").await.contains("STARTTLS"));
                let ready = cmd_of(&mut s, "STARTTLS").await;
                assert!(ready.starts_with("220 2.0.0"), "{ready}");
            }
            (s, None)
        });
    }
    let mut held = Vec::new();
    let mut refused = Vec::new();
    while let Some(done) = set.join_next().await {
        let (s, refusal) = done.unwrap();
        match refusal {
            Some(r) => refused.push(r),
            None => held.push(s),
        }
    }
    (held, refused)
}

/// The allowed application (from 127.0.0.1): greeting, one message, `250`, timed.
async fn app_delivers(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut s = connect_from(APP, addr).await.expect("app connects");
    let greeting = reply_of(&mut s).await;
    assert!(
        greeting.starts_with("220 "),
        "the app was refused: {greeting:?}"
    );
    assert!(cmd_of(&mut s, "EHLO app.test").await.starts_with("250"));
    assert!(
        cmd_of(&mut s, "MAIL FROM:<app@src.test>")
            .await
            .starts_with("250")
    );
    assert!(
        cmd_of(&mut s, "RCPT TO:<customer@dst.test>")
            .await
            .starts_with("250")
    );
    assert!(cmd_of(&mut s, "DATA").await.starts_with("354"));
    let done = cmd_of(
        &mut s,
        "From: app@src.test\r\nTo: customer@dst.test\r\nSubject: still served\r\n\r\nhello\r\n.",
    )
    .await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    let elapsed = started.elapsed();
    let _ = cmd_of(&mut s, "QUIT").await;
    elapsed
}

async fn metric_value(relay: &RelayProc, series: &str) -> f64 {
    let (status, body) = http_get(relay.metrics, "/metrics").await;
    assert_eq!(status, 200);
    metric(&body, series).unwrap_or_else(|| panic!("no {series} in /metrics"))
}

fn rejections(reason: &str) -> String {
    format!("mailveil_inbound_rejections_total{{reason=\"{reason}\"}}")
}

/// Finding 1 of issue 16: 1,000 connections from one address outside `access.networks` that
/// never send EHLO or stop after STARTTLS used to take every slot, and the app got `421 4.3.2`.
/// Now one address holds at most `max_connections_per_source` (default 100) of them.
#[tokio::test]
async fn a_thousand_stalled_connections_from_one_address_leave_the_app_served() {
    let setup = start("max_connections = 1000", "").await;
    let addr = setup.relay.smtp;
    let started = Instant::now();
    let (held, refused) = stall_many(addr, OUTSIDER, 1000, |i| {
        if i % 2 == 0 {
            Stall::Silent
        } else {
            Stall::StartTlsNoHandshake
        }
    })
    .await;
    eprintln!(
        "1000 stalls from one address in {:?}: {} held, {} refused",
        started.elapsed(),
        held.len(),
        refused.len()
    );
    let took = app_delivers(addr).await;
    eprintln!("app: greeting to 250 after DATA in {took:?}");
    assert!(took < Duration::from_secs(1), "app took {took:?}");
    wait_for_captures(&setup.relay.outbox(), 1).await;

    assert_eq!(held.len(), 100, "the per-source cap");
    for r in &refused {
        assert!(r.starts_with("421 4.7.0"), "{r:?}");
    }
    assert_eq!(
        metric_value(&setup.relay, &rejections("too_many_source_connections")).await,
        900.0
    );
    drop(held);
}

/// Outsiders spread over ten addresses (100 each, within the per-source cap) fill every slot
/// they may use; the reserved slots (a tenth of `max_connections` by default) keep the app
/// served.
#[tokio::test]
async fn outsiders_from_many_addresses_cannot_take_the_reserved_slots() {
    let setup = start("max_connections = 1000", "").await;
    let addr = setup.relay.smtp;
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for k in 0..10u8 {
        let from = Ipv4Addr::new(127, 0, 0, 2 + k);
        let (h, r) = stall_many(addr, from, 100, |i| {
            if i % 3 == 0 {
                Stall::StartTlsNoHandshake
            } else {
                Stall::Silent
            }
        })
        .await;
        held.extend(h);
        refused.extend(r);
    }
    eprintln!(
        "1000 stalls from 10 addresses: {} held, {} refused",
        held.len(),
        refused.len()
    );
    for _ in 0..3 {
        let took = app_delivers(addr).await;
        eprintln!("app: greeting to 250 after DATA in {took:?}");
        assert!(took < Duration::from_secs(1), "app took {took:?}");
    }
    wait_for_captures(&setup.relay.outbox(), 3).await;
    assert_eq!(held.len(), 900, "outsiders hold max_connections - reserved");
    for r in &refused {
        assert!(r.starts_with("421 4.3.2"), "{r:?}");
    }
    assert_eq!(
        metric_value(&setup.relay, &rejections("too_many_outsider_connections")).await,
        100.0
    );
    drop(held);
}

/// An outsider that has not authenticated within `unauthenticated_timeout` is told
/// `421 4.7.0` and closed, however it stalls (no EHLO, no AUTH, a STARTTLS handshake never
/// started or never finished); an app in `access.networks` and an authenticated client idle
/// longer than that are not affected.
#[tokio::test]
async fn outsiders_must_authenticate_within_the_deadline() {
    let setup = start(
        "command_timeout = \"60s\"\nunauthenticated_timeout = \"2s\"",
        "",
    )
    .await;
    let addr = setup.relay.smtp;
    let connector = tls_connector(&setup.pki.ca_pem);
    let name = || rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let started = Instant::now();

    let mut silent = connect_from(OUTSIDER, addr).await.unwrap();
    assert!(reply_of(&mut silent).await.starts_with("220"));
    let mut after_ehlo = connect_from(OUTSIDER, addr).await.unwrap();
    reply_of(&mut after_ehlo).await;
    assert!(
        cmd_of(&mut after_ehlo, "EHLO o.test")
            .await
            .starts_with("250")
    );
    let mut no_handshake = connect_from(OUTSIDER, addr).await.unwrap();
    reply_of(&mut no_handshake).await;
    cmd_of(&mut no_handshake, "EHLO o.test").await;
    assert!(
        cmd_of(&mut no_handshake, "STARTTLS")
            .await
            .starts_with("220")
    );
    let mut under_tls = {
        let mut s = connect_from(OUTSIDER, addr).await.unwrap();
        reply_of(&mut s).await;
        cmd_of(&mut s, "EHLO o.test").await;
        assert!(cmd_of(&mut s, "STARTTLS").await.starts_with("220"));
        let mut t = connector.connect(name(), s).await.unwrap();
        assert!(cmd_of(&mut t, "EHLO o.test").await.contains("AUTH"));
        t
    };
    // Authenticated from another outside address, and the app from inside: both idle too.
    let mut authenticated = {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 3), addr)
            .await
            .unwrap();
        reply_of(&mut s).await;
        cmd_of(&mut s, "EHLO good.test").await;
        assert!(cmd_of(&mut s, "STARTTLS").await.starts_with("220"));
        let mut t = connector.connect(name(), s).await.unwrap();
        cmd_of(&mut t, "EHLO good.test").await;
        let ok = cmd_of(&mut t, &auth_plain("app", "s3cret")).await;
        assert!(ok.starts_with("235"), "{ok}");
        t
    };
    let mut app = connect_from(APP, addr).await.unwrap();
    assert!(reply_of(&mut app).await.starts_with("220"));

    let limit = Duration::from_secs(10);
    for (what, got) in [
        ("silent", reply_within(&mut silent, limit).await),
        ("after EHLO", reply_within(&mut after_ehlo, limit).await),
        ("under TLS", reply_within(&mut under_tls, limit).await),
    ] {
        let got = got.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        assert!(got.starts_with("421 4.7.0"), "{what}: {got:?}");
    }
    // Mid-handshake nothing can be said in clear text: the connection is just closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(limit, no_handshake.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a STARTTLS without handshake is still open");
    let waited = started.elapsed();
    eprintln!("stalled outsiders closed after {waited:?}");
    assert!(waited >= Duration::from_secs(2), "{waited:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        cmd_of(&mut app, "NOOP").await.starts_with("250"),
        "app closed"
    );
    assert!(
        cmd_of(&mut authenticated, "NOOP").await.starts_with("250"),
        "authenticated client closed"
    );
    assert_eq!(
        metric_value(&setup.relay, &rejections("unauthenticated_timeout")).await,
        4.0
    );
}

/// What one guessing connection saw, with the time each reply came.
#[derive(Default)]
struct Guesses {
    /// (seconds since start, reply code) of every 535 and 421.
    replies: Vec<(f64, u16)>,
}

/// One guessing loop from `from` until `end`: connect, STARTTLS, up to three wrong passwords
/// per connection, reconnect. A refused connection waits `pause` before the next try.
async fn guess_until(
    addr: SocketAddr,
    from: Ipv4Addr,
    connector: tokio_rustls::TlsConnector,
    t0: Instant,
    end: Instant,
    pause: Duration,
) -> Guesses {
    let mut out = Guesses::default();
    let mut n = 0u32;
    let note = |out: &mut Guesses, r: &str| {
        if let Some(code) = r.get(..3).and_then(|c| c.parse::<u16>().ok())
            && (code == 535 || code == 421)
        {
            out.replies.push((t0.elapsed().as_secs_f64(), code));
        }
    };
    while Instant::now() < end {
        let Ok(mut s) = connect_from(from, addr).await else {
            tokio::time::sleep(pause).await;
            continue;
        };
        let greeting = reply_of(&mut s).await;
        if !greeting.starts_with("220") {
            note(&mut out, &greeting);
            tokio::time::sleep(pause).await;
            continue;
        }
        cmd_of(&mut s, "EHLO guesser.test").await;
        if !cmd_of(&mut s, "STARTTLS").await.starts_with("220") {
            continue;
        }
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let Ok(mut t) = connector.connect(name, s).await else {
            continue;
        };
        if try_cmd(&mut t, "EHLO guesser.test").await.is_none() {
            continue;
        }
        while Instant::now() < end {
            n += 1;
            let Some(answer) = try_cmd(&mut t, &auth_plain("app", &format!("guess{n}"))).await
            else {
                break;
            };
            note(&mut out, &answer);
            if !answer.starts_with("535") {
                break;
            }
            // After the connection's last allowed failure a 421 follows at once.
            if let Some(more) = reply_within(&mut t, Duration::from_millis(20)).await {
                note(&mut out, &more);
                break;
            }
        }
    }
    out
}

/// Like `cmd`, but `None` when the server has closed the connection.
async fn try_cmd<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, line: &str) -> Option<String> {
    s.write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
    let answer = reply_of(s).await;
    (!answer.is_empty()).then_some(answer)
}

/// Finding 2 of issue 16: 900 parallel connections from one address reached 374 guesses/s,
/// because the failure delay was per connection. Now failures are budgeted per source address
/// (and globally): 300 parallel guessing connections from one address get at most the burst
/// plus the refill of password checks (`535`), then `421 4.7.0` before any check, across
/// reconnects; a legitimate user from another address still authenticates.
#[tokio::test]
async fn password_guessing_from_one_address_is_held_to_its_budget() {
    const PARALLEL: usize = 300;
    const WINDOW: Duration = Duration::from_secs(8);
    const BURST: usize = 20;
    let setup = start(
        "max_connections_per_source = 1000",
        "auth_failures_per_source = \"20/1m\"\nauth_failures_total = \"1000/1m\"\nauth_ban = \"1m\"",
    )
    .await;
    let addr = setup.relay.smtp;
    let connector = tls_connector(&setup.pki.ca_pem);
    let t0 = Instant::now();
    let end = t0 + WINDOW;
    let mut set = JoinSet::new();
    for _ in 0..PARALLEL {
        let connector = connector.clone();
        set.spawn(guess_until(
            addr,
            OUTSIDER,
            connector,
            t0,
            end,
            Duration::from_millis(500),
        ));
    }
    // Meanwhile, and after, the legitimate user from another outside address.
    tokio::time::sleep(WINDOW / 2).await;
    let legit = Ipv4Addr::new(127, 0, 0, 3);
    let during = authenticate(addr, legit, &connector).await;
    let mut replies = Vec::new();
    while let Some(done) = set.join_next().await {
        replies.extend(done.unwrap().replies);
    }
    let after = authenticate(addr, legit, &connector).await;
    assert!(during.starts_with("235"), "during the attack: {during}");
    assert!(after.starts_with("235"), "after the attack: {after}");

    let seconds = WINDOW.as_secs() as usize + 2;
    let mut per_second = vec![(0usize, 0usize); seconds];
    for (t, code) in &replies {
        let slot = (*t as usize).min(seconds - 1);
        match code {
            535 => per_second[slot].0 += 1,
            _ => per_second[slot].1 += 1,
        }
    }
    let checks: usize = per_second.iter().map(|s| s.0).sum();
    let refusals: usize = per_second.iter().map(|s| s.1).sum();
    eprintln!("second: 535 (password checked) / 421");
    for (i, (a, b)) in per_second.iter().enumerate() {
        eprintln!("  {i:>2}: {a:>4} / {b:>5}");
    }
    eprintln!(
        "{PARALLEL} parallel guessers for {WINDOW:?}: {checks} password checks ({:.1}/s), {refusals} refusals",
        checks as f64 / WINDOW.as_secs_f64()
    );
    // Burst, plus the refill over the window (one per 3 s), plus one in flight per core.
    let bound = BURST + (WINDOW.as_secs() as usize).div_ceil(3) + 2;
    assert!(
        checks <= bound,
        "{checks} password checks in {WINDOW:?}; budget allows {bound}"
    );
    assert!(checks >= BURST, "the burst was usable: {checks}");
    assert!(refusals > 0);
    assert_eq!(
        metric_value(&setup.relay, &rejections("auth_failed")).await as usize,
        checks
    );
    assert!(metric_value(&setup.relay, &rejections("auth_banned")).await >= 1.0);
    let log = setup.relay.proc_.log_text();
    assert!(!log.contains("guess1"), "a password reached the log");
    assert!(
        log.contains("AUTH failure budget of this source exhausted"),
        "the ban is logged"
    );
}

/// STARTTLS and AUTH PLAIN with the right password from `from`; returns the AUTH reply.
async fn authenticate(
    addr: SocketAddr,
    from: Ipv4Addr,
    connector: &tokio_rustls::TlsConnector,
) -> String {
    let mut s = connect_from(from, addr).await.unwrap();
    let greeting = reply_of(&mut s).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    cmd_of(&mut s, "EHLO good.test").await;
    assert!(cmd_of(&mut s, "STARTTLS").await.starts_with("220"));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut t = connector.connect(name, s).await.unwrap();
    cmd_of(&mut t, "EHLO good.test").await;
    cmd_of(&mut t, &auth_plain("app", "s3cret")).await
}

/// Characters that could forge or hide a log line when written raw: CR, ESC, BEL, vertical tab,
/// form feed, NEL, the line separator, a right-to-left override.
const FORGING: [char; 8] = [
    '\r', '\x1b', '\x07', '\x0b', '\x0c', '\u{85}', '\u{2028}', '\u{202e}',
];

/// An EHLO name is client text in the log: every control character in it is escaped, in both
/// log formats, wherever it appears (the connection's close line, the deadline refusal).
#[tokio::test]
async fn client_text_is_escaped_in_both_log_formats() {
    // The parser ends the name at a space, CR or LF; everything else reaches the session.
    let evil = "\x1b[2K\x1b]0;owned\x07FAKE\x0bline\x0c\u{85}\u{2028}\u{202e}x";
    for format in ["text", "json"] {
        let setup = start_with(
            "unauthenticated_timeout = \"1s\"",
            "",
            &format!("[log]\nformat = \"{format}\""),
        )
        .await;
        let addr = setup.relay.smtp;
        // From inside: EHLO and QUIT. From outside: EHLO, then the deadline closes it.
        for from in [APP, OUTSIDER] {
            let mut s = connect_from(from, addr).await.unwrap();
            reply_of(&mut s).await;
            assert!(
                cmd_of(&mut s, &format!("EHLO {evil}"))
                    .await
                    .starts_with("250")
            );
            if from == APP {
                assert!(cmd_of(&mut s, "QUIT").await.starts_with("221"));
            } else {
                let closed = reply_within(&mut s, Duration::from_secs(10)).await;
                assert!(closed.is_some_and(|r| r.starts_with("421 4.7.0")));
            }
        }
        setup
            .relay
            .wait_for_log("not authenticated in time", 0)
            .await;
        let log = setup
            .relay
            .wait_for_log("inbound connection closed", 1)
            .await;
        for c in FORGING {
            assert!(!log.contains(c), "{format}: raw {c:?} in the log:\n{log:?}");
        }
        let escaped = "\\x1b[2K\\x1b]0;owned\\x07FAKE\\x0bline\\x0c\\u{85}\\u{2028}\\u{202e}x";
        match format {
            "text" => {
                let lines: Vec<&str> = log.lines().filter(|l| l.contains(escaped)).collect();
                assert!(lines.len() >= 2, "the name is logged, escaped:\n{log}");
            }
            _ => {
                // Decoded JSON strings hold no forging character either (serde_json writes
                // NEL, U+2028 and bidi controls raw, and a log viewer decodes `\u001b`).
                let mut shown = 0;
                for line in log.lines().filter(|l| l.starts_with('{')) {
                    let event: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    let text = event.to_string();
                    let decoded = strings(&event).join(" ");
                    for c in FORGING {
                        assert!(!decoded.contains(c), "raw {c:?} in {text}");
                    }
                    if decoded.contains(escaped) {
                        shown += 1;
                    }
                }
                assert!(shown >= 2, "the name is logged, escaped:\n{log}");
            }
        }
    }
}

/// Every string inside a JSON value.
fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().flat_map(strings).collect(),
        serde_json::Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}
