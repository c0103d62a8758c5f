//! SIGTERM against a real `mailveil run` process with a throttled provider: the queue keeps
//! delivering within the throttle until `spool.drain_timeout`, the rest stays spooled and is
//! reported (last log line, `mailveil_drain_remaining_copies`) and delivered after a restart;
//! with `spool.handoff_upstream` every remaining copy goes to that upstream (a real `mailveil
//! sink`), rewritten, once, and the spool is empty at exit.
//!
//! No assertion on speed: counts are checked against each other (delivered + left = sent), and
//! the only timing facts used are upper bounds (a throttle of 1/s cannot send 8 copies at once).

use crate::support;
use crate::support::scripted_smtp;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp, Step};
use support::*;

const RCPTS: usize = 10;

/// A `mailveil sink` standing in for the central relay a sidecar hands off to; stopped (by
/// PID) on drop.
struct Central {
    _dir: tempfile::TempDir,
    _sink: Proc,
    addr: std::net::SocketAddr,
    out: std::path::PathBuf,
}

impl Central {
    fn start() -> Central {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("central");
        let (sink, addr) = start_sink(&out, None);
        Central {
            _dir: dir,
            _sink: sink,
            addr,
            out,
        }
    }

    /// Its `[[upstream]]` entry, named `central`.
    fn upstream(&self) -> String {
        scripted_upstream("central", self.addr.port(), "none", "10s")
    }
}

/// A relay whose `slow` provider (`@slow.test`) takes one copy a second, delivering into the
/// `outbox` capture directory; `extra` is added to `[spool]`, `upstreams` after `outbox`.
fn config(spool_extra: &str, upstreams: &str) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
{spool_extra}
[[upstream]]
name = "outbox"
dir = "{{dir}}/outbox"
{upstreams}
[[provider]]
name = "slow"
domains = ["slow.test"]
messages_per_second = 1.0
burst = 1
[metrics]
listen = "{{metrics}}"
[log]
show_addresses = true
"#
    )
}

fn recipients() -> Vec<String> {
    (0..RCPTS).map(|i| format!("r{i}@slow.test")).collect()
}

/// One message showing every recipient in `To:`: split into one copy each.
async fn send_fan_out(relay: &RelayProc) {
    let rcpts = recipients();
    let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let msg = message(
        &[
            "From: app@src.test",
            &format!("To: {}", to.join(", ")),
            "Subject: drain",
        ],
        "hello\r\n",
    );
    let reply = lettre_send(relay.smtp, Some("app@src.test"), &to, &msg)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
}

fn captures(dir: &Path) -> Vec<mailveil::capture::Captured> {
    mailveil::capture::read_all(dir).unwrap_or_default()
}

/// Waits (bounded) for the relay process to exit; returns its exit code.
async fn wait_for_exit(relay: &mut RelayProc) -> Option<i32> {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if let Ok(Some(status)) = relay.proc_.child.try_wait() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "relay did not exit after SIGTERM; log:\n{}",
        relay.proc_.log_text()
    );
}

/// The last non-empty line of the relay's log.
fn last_line(relay: &RelayProc) -> String {
    relay
        .proc_
        .log_text()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_string()
}

/// Batch files left in the spool.
fn spooled_batches(relay: &RelayProc) -> usize {
    std::fs::read_dir(relay.dir.path().join("spool/msg"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
                .count()
        })
        .unwrap_or(0)
}

/// Starts `mailveil run` again on the same config file (same spool, same ports).
async fn restart(relay: &mut RelayProc) {
    let log = relay.dir.path().join("relay-restarted.log");
    relay.proc_ = spawn_mailveil(
        &["run", "-c", &relay.config.display().to_string()],
        &log,
        &[],
    );
    wait_for_port(relay.metrics, &mut relay.proc_);
}

/// The recipient of each copy, each exactly once across all `dirs`.
fn recipients_once(dirs: &[&Path]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for dir in dirs {
        for c in captures(dir) {
            assert_eq!(
                c.rcpt_to.len(),
                1,
                "one recipient per copy: {:?}",
                c.rcpt_to
            );
            assert!(
                seen.insert(c.rcpt_to[0].clone()),
                "{} received two copies",
                c.rcpt_to[0]
            );
        }
    }
    seen
}

#[tokio::test]
async fn sigterm_delivers_what_the_drain_allows_reports_the_rest_and_a_restart_sends_it() {
    let mut relay = RelayProc::start(&config("drain_timeout = \"5s\"", ""), &[]).await;
    send_fan_out(&relay).await;
    // Two copies out (the throttle's burst and the next second): eight or so still queued.
    wait_for_captures(&relay.outbox(), 2).await;
    let before = captures(&relay.outbox()).len();
    assert!(
        before < RCPTS - 2,
        "a throttle of 1/s sent {before} copies at once"
    );

    relay.signal("TERM");
    // While it drains, the metrics endpoint still answers: draining, and what is left.
    let mut seen_draining = None;
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end && relay.proc_.child.try_wait().ok().flatten().is_none() {
        let (code, text) = http_get(relay.metrics, "/metrics").await;
        if code == 200 && metric(&text, "mailveil_draining") == Some(1.0) {
            seen_draining = metric(&text, "mailveil_drain_remaining_copies{provider=\"slow\"}");
            let (ready, _) = http_get(relay.metrics, "/readyz").await;
            assert_eq!(ready, 503, "a draining relay is not ready for new mail");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left_at_start = seen_draining.expect("the metrics showed the drain");
    assert!(left_at_start >= 1.0, "{left_at_start}");
    // No new session while draining: the SMTP port is closed (or a connection the kernel
    // queued is dropped), never greeted with 220.
    if let Ok(mut s) = tokio::net::TcpStream::connect(relay.smtp).await {
        let greeting = reply_within(&mut s, Duration::from_secs(5)).await;
        assert!(
            !greeting.as_deref().unwrap_or("").starts_with("220"),
            "a new session was greeted while draining: {greeting:?}"
        );
    }

    let code = wait_for_exit(&mut relay).await;
    assert_eq!(code, Some(0), "log:\n{}", relay.proc_.log_text());
    let delivered = captures(&relay.outbox()).len();
    let left = RCPTS - delivered;
    assert!(
        delivered > before,
        "the drain delivered nothing after SIGTERM; log:\n{}",
        relay.proc_.log_text()
    );
    assert!(left >= 1, "the throttle cannot have sent everything");
    let last = last_line(&relay);
    assert!(
        last.contains(&format!(
            "stopped: {left} copies left in the spool (slow={left})"
        )),
        "the last log line must say what was left ({left} for slow):\n{last}"
    );
    assert_eq!(spooled_batches(&relay), 1, "the rest stays spooled");

    // The rest goes out after a restart, each copy once.
    restart(&mut relay).await;
    wait_for_captures(&relay.outbox(), RCPTS).await;
    let got = recipients_once(&[&relay.outbox()]);
    assert_eq!(got, recipients().into_iter().collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn handoff_empties_the_spool_and_each_copy_reaches_the_central_relay_once_rewritten() {
    let central = Central::start();
    let central_out = central.out.clone();
    let upstreams = central.upstream();
    let mut relay = RelayProc::start(
        &config(
            "drain_timeout = \"20s\"\nhandoff_upstream = \"central\"",
            &upstreams,
        ),
        &[],
    )
    .await;
    send_fan_out(&relay).await;
    wait_for_captures(&relay.outbox(), 1).await;
    // Until SIGTERM the hand-off upstream is reserved: ordinary deliveries never use it.
    assert!(captures(&central_out).is_empty());

    relay.signal("TERM");
    let code = wait_for_exit(&mut relay).await;
    assert_eq!(code, Some(0), "log:\n{}", relay.proc_.log_text());
    assert_eq!(spooled_batches(&relay), 0, "the spool is empty at exit");
    let last = last_line(&relay);
    assert!(
        last.contains("stopped: nothing left in the spool"),
        "last log line: {last}"
    );

    // Every copy arrived once, at the provider before SIGTERM or at the central relay after.
    let handed = captures(&central_out);
    assert!(
        !handed.is_empty(),
        "nothing was handed off; log:\n{}",
        relay.proc_.log_text()
    );
    let got = recipients_once(&[&relay.outbox(), &central_out]);
    assert_eq!(got, recipients().into_iter().collect::<BTreeSet<_>>());
    assert!(
        last.contains(&format!("handed_off={}", handed.len())),
        "the last line counts the copies handed off: {last}"
    );
    // Handed off already rewritten: each copy shows only its own recipient.
    for copy in &handed {
        let own = &copy.rcpt_to[0];
        let header =
            String::from_utf8_lossy(&copy.bytes[..copy.bytes.len() - body_of(&copy.bytes).len()])
                .to_string();
        let to = header
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("to:"))
            .unwrap_or_default();
        assert!(to.contains(own.as_str()), "{own}: {to}");
        for other in recipients().iter().filter(|r| *r != own) {
            assert!(
                !header.contains(other.as_str()),
                "the copy for {own} shows {other}:\n{header}"
            );
        }
    }
    let log = relay.proc_.log_text();
    assert_eq!(
        log.matches("handed off").count(),
        handed.len(),
        "one log line per copy handed off:\n{log}"
    );

    // A restart on the same spool sends nothing again.
    let (outbox_before, central_before) = (captures(&relay.outbox()).len(), handed.len());
    restart(&mut relay).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(captures(&relay.outbox()).len(), outbox_before);
    assert_eq!(captures(&central_out).len(), central_before);
}

#[test]
fn check_config_refuses_a_handoff_upstream_that_is_not_configured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailveil.toml");
    std::fs::write(
        &path,
        "[spool]\ndir = \"./spool\"\nhandoff_upstream = \"central\"\n[[upstream]]\nname = \"outbox\"\ndir = \"./outbox\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check-config", "-c", &path.display().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("spool.handoff_upstream") && stderr.contains("\"central\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_handoff_upstream_that_is_down_loses_nothing_and_the_rest_is_reported() {
    // A port nothing listens on: every hand-off attempt fails to connect.
    let down = free_port();
    let upstreams = scripted_upstream("central", down, "none", "2s");
    let mut relay = RelayProc::start(
        &config(
            // Failed hand-off attempts are recorded as deferrals: short ones, so the restart
            // below finds the copies due soon.
            "drain_timeout = \"3s\"\nhandoff_upstream = \"central\"\nretry_initial = \"1s\"\nretry_max = \"1s\"",
            &upstreams,
        ),
        &[],
    )
    .await;
    send_fan_out(&relay).await;
    wait_for_captures(&relay.outbox(), 1).await;

    relay.signal("TERM");
    let code = wait_for_exit(&mut relay).await;
    assert_eq!(code, Some(0), "log:\n{}", relay.proc_.log_text());
    let delivered = captures(&relay.outbox()).len();
    let left = RCPTS - delivered;
    assert!(left >= 1);
    let last = last_line(&relay);
    assert!(
        last.contains(&format!(
            "stopped: {left} copies left in the spool (slow={left})"
        )),
        "{last}"
    );
    assert!(last.contains("handoff_upstream=\"central\""), "{last}");
    assert_eq!(
        spooled_batches(&relay),
        1,
        "nothing handed off, nothing lost"
    );

    // The next start (hand-off upstream still down: it is reserved) delivers the rest.
    restart(&mut relay).await;
    wait_for_captures(&relay.outbox(), RCPTS).await;
    let got = recipients_once(&[&relay.outbox()]);
    assert_eq!(got.len(), RCPTS);
}

#[tokio::test]
async fn copies_waiting_for_a_retry_are_handed_off_at_once() {
    // The provider defers every copy; the next try would be ten minutes away.
    let provider = ScriptedSmtp::start(Script {
        replies: HashMap::from([(Step::DataEnd, "451 4.3.0 try again later".to_string())]),
        ..Script::default()
    })
    .await;
    let central = Central::start();
    let central_out = central.out.clone();
    let config = format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
retry_initial = "10m"
retry_max = "10m"
drain_timeout = "20s"
handoff_upstream = "central"
{provider}{central}[metrics]
listen = "{{metrics}}"
"#,
        provider = scripted_upstream("provider", provider.port(), "none", "5s"),
        central = scripted_upstream("central", central.addr.port(), "none", "5s"),
    );
    let mut relay = RelayProc::start(&config, &[]).await;
    let rcpts = ["a@x.test", "b@x.test", "c@x.test"];
    let msg = message(
        &[
            "From: app@src.test",
            &format!("To: {}", rcpts.join(", ")),
            "Subject: retry",
        ],
        "hello\r\n",
    );
    let reply = lettre_send(relay.smtp, Some("app@src.test"), &rcpts, &msg)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    relay.wait_for_log("deferred", rcpts.len() - 1).await;
    assert!(captures(&central_out).is_empty());

    relay.signal("TERM");
    let code = wait_for_exit(&mut relay).await;
    assert_eq!(code, Some(0), "log:\n{}", relay.proc_.log_text());
    assert_eq!(spooled_batches(&relay), 0, "the spool is empty at exit");
    let got = recipients_once(&[&central_out]);
    assert_eq!(
        got,
        rcpts.iter().map(|r| r.to_string()).collect::<BTreeSet<_>>()
    );
    let last = last_line(&relay);
    assert!(
        last.contains("stopped: nothing left in the spool"),
        "{last}"
    );
}

#[tokio::test]
async fn a_pause_holds_during_the_drain_and_the_hand_off() {
    const TOKEN: &str = "drain-test-token-Pz";
    let central = Central::start();
    let central_out = central.out.clone();
    let upstreams = format!(
        "{}[admin]\nlisten = \"{{admin}}\"\ntoken_env = \"TEST_ADMIN_TOKEN\"\n",
        central.upstream()
    );
    let mut relay = RelayProc::start(
        &config(
            "drain_timeout = \"20s\"\nhandoff_upstream = \"central\"",
            &upstreams,
        ),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let (code, _) = http_request(relay.admin, "POST", "/pause", Some(TOKEN)).await;
    assert_eq!(code, 200);
    send_fan_out(&relay).await;

    relay.signal("TERM");
    let code = wait_for_exit(&mut relay).await;
    assert_eq!(code, Some(0), "log:\n{}", relay.proc_.log_text());
    assert!(
        captures(&relay.outbox()).is_empty(),
        "paused: nothing delivered"
    );
    assert!(
        captures(&central_out).is_empty(),
        "paused: nothing handed off"
    );
    let last = last_line(&relay);
    assert!(
        last.contains(&format!(
            "stopped: {RCPTS} copies left in the spool (slow={RCPTS})"
        )),
        "{last}"
    );
    assert_eq!(spooled_batches(&relay), 1, "the paused copies stay spooled");
}

#[tokio::test]
async fn a_message_still_arriving_at_sigterm_is_accepted_and_handed_off() {
    let central = Central::start();
    let central_out = central.out.clone();
    let upstreams = central.upstream();
    let mut relay = RelayProc::start(
        &config(
            "drain_timeout = \"20s\"\nhandoff_upstream = \"central\"",
            &upstreams,
        ),
        &[],
    )
    .await;
    let rcpts = ["late0@slow.test", "late1@slow.test"];
    let (mut s, greeting) = RawSmtp::connect(relay.smtp).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(s.cmd("EHLO app.test").await.starts_with("250"));
    assert!(s.cmd("MAIL FROM:<app@src.test>").await.starts_with("250"));
    for r in rcpts {
        assert!(s.cmd(&format!("RCPT TO:<{r}>")).await.starts_with("250"));
    }
    assert!(s.cmd("DATA").await.starts_with("354"));
    s.send(
        format!(
            "From: app@src.test\r\nTo: {}\r\nSubject: late\r\n\r\n",
            rcpts.join(", ")
        )
        .as_bytes(),
    )
    .await;

    // SIGTERM in the middle of DATA; wait until the relay is draining.
    relay.signal("TERM");
    let end = Instant::now() + PATIENCE;
    loop {
        let (_, text) = http_get(relay.metrics, "/metrics").await;
        if metric(&text, "mailveil_draining") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < end, "never draining:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The transaction in progress is finished and accepted.
    s.send(b"the app's last words\r\n.\r\n").await;
    let reply = s.reply().await;
    assert!(reply.starts_with("250"), "{reply}");

    let code = wait_for_exit(&mut relay).await;
    assert_eq!(code, Some(0), "log:\n{}", relay.proc_.log_text());
    assert_eq!(spooled_batches(&relay), 0, "the spool is empty at exit");
    assert!(
        captures(&relay.outbox()).is_empty(),
        "not sent to the provider"
    );
    let got = recipients_once(&[&central_out]);
    assert_eq!(
        got,
        rcpts.iter().map(|r| r.to_string()).collect::<BTreeSet<_>>()
    );
}
