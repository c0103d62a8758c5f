//! Spool disk full: the spool lives on a 2 MiB tmpfs and three sessions send until it is full.
//! Every message gets `250` or `452 4.3.1`, never a hang; the spool holds exactly the `250`'d
//! messages (nothing half-written); once the upstream comes up and the relay restarts on the
//! full spool, it drains, every `250`'d message is delivered and new mail is accepted again.
//!
//! A second test shows readiness: while the spool answers `452` for lack of space, `/readyz` is
//! 503 with the reason and `GET /status` says so; once space is back (nothing committed
//! meanwhile) `/readyz` is 200 again and mail is accepted.
//!
//! Mounting needs root. Without it the test is skipped with a message, unless
//! `MAILVEIL_REQUIRE_PRIVILEGED_TESTS=1` (set by `.ci/run` when running as root) makes that a
//! failure.

use crate::support;
use crate::support::scripted_smtp;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp};
use support::*;

/// A small tmpfs mounted for the test's lifetime; unmounted on drop, whatever happens.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> Result<SmallFs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a file open somewhere): detach it now, freed when released.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn files_with(dir: &Path, ext: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| n.strip_suffix(&format!(".{ext}")).map(str::to_string))
        .collect()
}

/// One message over an open session: the final reply to DATA.
async fn send_raw(smtp: &mut RawSmtp, id: &str, body: &str) -> String {
    assert!(
        smtp.cmd("MAIL FROM:<app@src.test>")
            .await
            .starts_with("250")
    );
    assert!(smtp.cmd("RCPT TO:<r@x.test>").await.starts_with("250"));
    assert!(smtp.cmd("DATA").await.starts_with("354"));
    let m = message(
        &[
            "From: app@src.test",
            "To: r@x.test",
            &format!("Message-ID: <{id}@src.test>"),
        ],
        body,
    );
    smtp.send(&m).await;
    smtp.send(b".\r\n").await;
    smtp.reply().await
}

/// Mounts a small tmpfs at `dir`, or says why not: `None` skips the test (without root),
/// unless `MAILVEIL_REQUIRE_PRIVILEGED_TESTS=1` makes that a failure.
fn small_fs(dir: &Path, size: &str) -> Option<SmallFs> {
    match SmallFs::mount(dir, size) {
        Ok(fs) => Some(fs),
        Err(reason) => {
            if std::env::var("MAILVEIL_REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
                panic!("MAILVEIL_REQUIRE_PRIVILEGED_TESTS=1 but {reason}");
            }
            println!("SKIPPED disk-full test: {reason} (needs root)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_452_loses_nothing_and_recovers() {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let Some(_fs) = small_fs(&spool, "2m") else {
        return;
    };
    // The upstream is down at first, so everything accepted stays in the spool.
    let upstream_port = free_port();
    let config = format!(
        r#"
[spool]
dir = "{spool}"
retry_initial = "1s"
retry_max = "1s"
upstream_cool_off = "1s"
{scripted}"#,
        scripted = scripted_upstream("scripted", upstream_port, "none", "5s"),
        spool = spool.display()
    );
    let relay = InProcessRelay::start(&config).await;

    // ~100 KiB per message: the 2 MiB spool fills after about twenty.
    let body = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\r\n"
        .repeat(1300);
    // Three concurrent sessions, so commit rounds carry several messages when the disk fills.
    let body = std::sync::Arc::new(body);
    let sessions: Vec<_> = (0..3)
        .map(|c| {
            let (addr, body) = (relay.smtp, body.clone());
            tokio::spawn(async move {
                let (mut smtp, greeting) = RawSmtp::connect(addr).await;
                assert!(greeting.starts_with("220"));
                assert!(smtp.cmd("EHLO client.test").await.starts_with("250"));
                let mut accepted = Vec::new();
                let (mut refused, mut refused_in_a_row) = (0, 0);
                for n in 0..100 {
                    let id = format!("fill{c}-{n}");
                    let reply = send_raw(&mut smtp, &id, &body).await;
                    if reply.starts_with("250") {
                        accepted.push(id);
                        refused_in_a_row = 0;
                    } else {
                        assert!(
                            reply.starts_with("452 4.3.1"),
                            "either 250 or 452 4.3.1, got {reply:?}"
                        );
                        refused += 1;
                        refused_in_a_row += 1;
                        if refused_in_a_row == 3 {
                            break;
                        }
                    }
                }
                // The session is still usable after 452.
                assert!(smtp.cmd("NOOP").await.starts_with("250"));
                assert!(smtp.cmd("QUIT").await.starts_with("221"));
                (accepted, refused)
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for session in sessions {
        let (a, r) = tokio::time::timeout(Duration::from_secs(60), session)
            .await
            .expect("no session hangs")
            .expect("no session panics");
        accepted.extend(a);
        refused += r;
    }
    println!(
        "spool full after {} accepted messages; {refused} refused",
        accepted.len()
    );
    assert!(!accepted.is_empty(), "some mail fits");
    assert!(refused >= 9, "the spool filled up for every session");
    relay.stop().await.expect("clean stop on a full spool");

    // Nothing half-written counts: no temp files, and the spool holds exactly the messages
    // answered 250 (read back the way a restart reads them).
    let msg = spool.join("msg");
    assert!(
        files_with(&msg, "tmp").is_empty(),
        "no temp files left behind"
    );
    {
        let reopened = mailveil::spool::Spool::open(&spool).expect("spool opens");
        let recovered = reopened.recover().expect("spool reads back");
        let spooled: BTreeSet<String> = recovered
            .iter()
            .map(|r| message_id(&reopened.read_message(&r.meta.id).unwrap()))
            .collect();
        let wanted: BTreeSet<String> = accepted.iter().cloned().collect();
        assert_eq!(spooled, wanted, "spooled == answered 250");
        assert_eq!(recovered.len(), accepted.len(), "each stored once");
    }

    // The upstream comes up and the relay restarts on the full spool: it drains, and every
    // 250'd message is delivered.
    let upstream = ScriptedSmtp::start_at(upstream_port, Script::default()).await;
    let relay = InProcessRelay::start(&config).await;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: BTreeSet<String> = upstream
            .record()
            .messages
            .iter()
            .map(|m| message_id(&m.data))
            .collect();
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|id| !delivered.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "{} accepted messages not delivered: {missing:?}",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = Instant::now() + PATIENCE;
    while !files_with(&msg, "spool").is_empty() {
        assert!(Instant::now() < end, "delivered messages leave the spool");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Space is back: new mail is accepted and delivered.
    let delivered_before = upstream.record().messages.len();
    let (mut smtp, _) = RawSmtp::connect(relay.smtp).await;
    assert!(smtp.cmd("EHLO client.test").await.starts_with("250"));
    let reply = send_raw(&mut smtp, "after", &body).await;
    assert!(reply.starts_with("250"), "accepted again: {reply}");
    let end = Instant::now() + PATIENCE;
    while upstream.record().messages.len() == delivered_before {
        assert!(Instant::now() < end, "new mail delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(smtp.cmd("QUIT").await.starts_with("221"));
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_while_the_spool_refuses_mail_for_space() {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let Some(_fs) = small_fs(&spool, "2m") else {
        return;
    };
    // Something else on the volume takes space; the operator removes it later.
    let filler = spool.join("filler");
    std::fs::write(&filler, vec![0u8; 512 << 10]).unwrap();
    // The upstream is down, so everything accepted stays in the spool.
    let template = format!(
        r#"
[server]
listen = "{{smtp}}"
[spool]
dir = "{spool}"
retry_initial = "1m"
[[upstream]]
name = "down"
host = "127.0.0.1"
port = {port}
tls = "none"
[metrics]
listen = "{{metrics}}"
[admin]
listen = "{{admin}}"
token_env = "MAILVEIL_ADMIN_TOKEN"
"#,
        spool = spool.display(),
        port = free_port(),
    );
    const TOKEN: &str = "readiness-test-token";
    let relay = RelayProc::start(&template, &[("MAILVEIL_ADMIN_TOKEN", TOKEN)]).await;
    let status = || async {
        let (code, body) = http_request(relay.admin, "GET", "/status", Some(TOKEN)).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["spool"].clone()
    };
    assert_eq!(status().await["refusing_for_space"], false);

    // Fill it: ~100 KiB messages until one is refused.
    let body = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\r\n"
        .repeat(1300);
    let (mut smtp, _) = RawSmtp::connect(relay.smtp).await;
    assert!(smtp.cmd("EHLO client.test").await.starts_with("250"));
    let mut accepted = 0;
    loop {
        let reply = send_raw(&mut smtp, &format!("full{accepted}"), &body).await;
        if reply.starts_with("452 4.3.1") {
            break;
        }
        assert!(reply.starts_with("250"), "{reply}");
        accepted += 1;
        assert!(accepted < 40, "a 2 MiB spool fills up");
    }
    println!("spool full after {accepted} messages");
    let (code, text) = http_get(relay.metrics, "/readyz").await;
    assert_eq!(code, 503, "not ready while refusing mail: {text}");
    assert!(text.contains("spool full"), "the reason is given: {text}");
    assert_eq!(status().await["refusing_for_space"], true);
    let (_, metrics) = http_get(relay.metrics, "/metrics").await;
    assert_eq!(metric(&metrics, "mailveil_spool_full"), Some(1.0));
    // Asked again: still 503, the re-check finds no room.
    let (code, _) = http_get(relay.metrics, "/readyz").await;
    assert_eq!(code, 503);

    // Space comes back without any mail committed: ready again.
    std::fs::remove_file(&filler).unwrap();
    let end = Instant::now() + PATIENCE;
    loop {
        let (code, text) = http_get(relay.metrics, "/readyz").await;
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < end,
            "ready again once there is room: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status().await["refusing_for_space"], false);
    let reply = send_raw(&mut smtp, "after", &body).await;
    assert!(reply.starts_with("250"), "accepted again: {reply}");
    let (_, metrics) = http_get(relay.metrics, "/metrics").await;
    assert_eq!(metric(&metrics, "mailveil_spool_full"), Some(0.0));
    assert!(smtp.cmd("QUIT").await.starts_with("221"));
}

/// The id part of the Message-ID (`fill3` for `<fill3@src.test>`).
fn message_id(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: <"))
        .and_then(|l| l.strip_suffix("@src.test>"))
        .unwrap_or("<none>")
        .to_string()
}
