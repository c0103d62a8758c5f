//! `mailveil ctl health` through the real binary against real relay processes: healthy while
//! the relay runs (through `/readyz` with metrics on, through the SMTP greeting with metrics
//! off), unhealthy with a one-line reason once it is stopped or when its SMTP listener turns
//! clients away, exit 64 when the config file cannot be read; and the Dockerfile's HEALTHCHECK
//! is exactly this command, run here against a relay started from the image's own config.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use support::*;

const WITH_METRICS: &str = concat!(
    "[server]\nlisten = \"{smtp}\"\n",
    spool_and_outbox!(),
    metrics_listener!()
);

fn health(config: &Path) -> Output {
    Command::new(BIN)
        .args(["ctl", "-c"])
        .arg(config)
        .args(["health", "--timeout", "2s"])
        .env_remove("MAILVEIL_CONFIG")
        .output()
        .unwrap()
}

/// The exit code and the one line the command printed (stdout when healthy, stderr when not).
fn verdict(out: &Output) -> (Option<i32>, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let text = if out.status.success() {
        &stdout
    } else {
        &stderr
    };
    assert_eq!(
        text.lines().count(),
        1,
        "one line expected; stdout {stdout:?} stderr {stderr:?}"
    );
    (out.status.code(), text.trim_end().to_string())
}

#[tokio::test]
async fn healthy_through_readyz_then_unhealthy_once_stopped() {
    let mut relay = RelayProc::start(WITH_METRICS, &[]).await;
    let (code, line) = verdict(&health(&relay.config));
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with(&format!("healthy: /readyz on {}", relay.metrics)),
        "{line}"
    );
    // `-c` after the action works too.
    let after = Command::new(BIN)
        .args(["ctl", "health", "-c"])
        .arg(&relay.config)
        .env_remove("MAILVEIL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(verdict(&after), (Some(0), line.clone()));

    assert_eq!(relay.proc_.terminate(), Some(0));
    let (code, line) = verdict(&health(&relay.config));
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with("unhealthy: metrics listener") && line.contains("/readyz"),
        "{line}"
    );
}

/// A relay whose spool is full answers `/readyz` 503, and the health check passes on its
/// reason. The spool is a 1 MiB tmpfs (mounting needs root: skipped otherwise, unless
/// `MAILVEIL_REQUIRE_PRIVILEGED_TESTS=1`, which `.ci/run` sets as root).
#[tokio::test]
async fn a_relay_refusing_mail_for_space_is_unhealthy_with_the_reason() {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&spool)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        assert!(
            std::env::var("MAILVEIL_REQUIRE_PRIVILEGED_TESTS").as_deref() != Ok("1"),
            "MAILVEIL_REQUIRE_PRIVILEGED_TESTS=1 but mount -t tmpfs failed"
        );
        println!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if !Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success())
            {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
    let _unmount = Unmount(spool.clone());
    // The upstream is down (nothing listens on its port), so every message stays spooled.
    let template = format!(
        "[server]\nlisten = \"{{smtp}}\"\n[spool]\ndir = \"{}\"\n{}{}",
        spool.join("data").display(),
        scripted_upstream("down", free_port(), "none", "5s"),
        metrics_listener!()
    );
    let mut relay = RelayProc::start(&template, &[]).await;
    let (code, line) = verdict(&health(&relay.config));
    assert_eq!(code, Some(0), "{line}");

    let body =
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567\r\n".repeat(1000);
    let msg = message(&["From: app@src.test", "To: r@x.test"], &body);
    let mut refused = false;
    for _ in 0..40 {
        match lettre_send(relay.smtp, Some("app@src.test"), &["r@x.test"], &msg).await {
            Ok(reply) => assert!(reply.starts_with("250"), "{reply}"),
            Err(e) => {
                assert!(e.to_string().contains("4.3.1"), "{e}");
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "a 1 MiB spool took 40 messages of 74 KiB");
    let (code, line) = verdict(&health(&relay.config));
    assert_eq!(code, Some(1), "{line}");
    assert_eq!(
        line,
        format!(
            "unhealthy: /readyz on {} answered 503: spool full: refusing mail (452 4.3.1) for lack of space",
            relay.metrics
        )
    );
    relay.proc_.kill9();
}

/// A relay without `[metrics]` (the default): started by hand, since `RelayProc` waits for
/// `/readyz`.
fn start_without_metrics(
    work: &Path,
    extra_server: &str,
) -> (Proc, SocketAddr, std::path::PathBuf) {
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = work.join("mailveil.toml");
    let text = format!(
        "[server]\nlisten = \"{smtp}\"\n{extra_server}{}",
        spool_and_outbox!()
    )
    .replace("{dir}", &work.display().to_string());
    std::fs::write(&config, text).unwrap();
    let mut proc_ = spawn_mailveil(
        &["run", "-c", &config.display().to_string()],
        &work.join("relay.log"),
        &[],
    );
    wait_for_port(smtp, &mut proc_);
    (proc_, smtp, config)
}

#[tokio::test]
async fn without_metrics_the_smtp_greeting_decides() {
    let work = tempfile::tempdir().unwrap();
    let (mut proc_, smtp, config) = start_without_metrics(work.path(), "");
    let (code, line) = verdict(&health(&config));
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with(&format!("healthy: SMTP listener {smtp} greeted: 220 ")),
        "{line}"
    );

    assert_eq!(proc_.terminate(), Some(0));
    let (code, line) = verdict(&health(&config));
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with(&format!("unhealthy: SMTP listener {smtp} does not accept")),
        "{line}"
    );
}

#[tokio::test]
async fn a_listener_that_turns_clients_away_is_unhealthy() {
    let work = tempfile::tempdir().unwrap();
    let (_proc, smtp, config) = start_without_metrics(work.path(), "max_connections = 1\n");
    // The one slot taken: the probe is answered 421 and must not count that as healthy.
    // (The readiness poll's connection may hold it for a moment after it closed.)
    let end = std::time::Instant::now() + PATIENCE;
    let _held = loop {
        let (held, greeting) = RawSmtp::connect(smtp).await;
        if greeting.starts_with("220") {
            break held;
        }
        assert!(std::time::Instant::now() < end, "{greeting}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let (code, line) = verdict(&health(&config));
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with(&format!("unhealthy: SMTP listener {smtp} answered 421")),
        "{line}"
    );
}

#[test]
fn an_unreadable_config_is_a_usage_error() {
    let work = tempfile::tempdir().unwrap();
    let (code, line) = verdict(&health(&work.path().join("missing.toml")));
    assert_eq!(code, Some(64), "{line}");
    assert!(
        line.contains("cannot read") && line.contains("missing.toml"),
        "{line}"
    );
    let zero = Command::new(BIN)
        .args(["ctl", "health", "--timeout", "0s", "-c"])
        .arg(work.path().join("missing.toml"))
        .output()
        .unwrap();
    let (code, line) = verdict(&zero);
    assert_eq!(code, Some(64), "{line}");
    assert!(line.contains("--timeout"), "{line}");
    let bad = work.path().join("bad.toml");
    std::fs::write(&bad, "[metrics]\nlisten = \"nowhere\"\n").unwrap();
    let (code, line) = verdict(&health(&bad));
    assert_eq!(code, Some(64), "{line}");
    assert!(line.contains("metrics.listen"), "{line}");
}

/// The Dockerfile's HEALTHCHECK runs `mailveil ctl health` (config from `MAILVEIL_CONFIG`, as
/// the image sets it), with no address of its own, and the image does not advertise the
/// loopback-only admin port. The command is run as written against a relay started from the
/// image's default config (`config/examples/sidecar.toml`, ports moved to free ones).
#[tokio::test]
async fn the_dockerfile_healthcheck_is_the_health_subcommand() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let instructions: Vec<String> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect();
    let expose = instructions
        .iter()
        .find(|l| l.starts_with("EXPOSE"))
        .expect("EXPOSE");
    assert!(
        !expose.contains("9726"),
        "the admin API is loopback-only: {expose}"
    );
    let check = instructions
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    let exec = &check[check.find("CMD").expect("CMD") + 3..];
    let argv: Vec<String> = serde_json::from_str(exec.trim()).expect("exec-form CMD");
    assert_eq!(argv[0], "/usr/local/bin/mailveil", "{argv:?}");
    assert_eq!(&argv[1..], ["ctl", "health"], "{argv:?}");
    let config_in_image = instructions
        .iter()
        .find_map(|l| l.strip_prefix("COPY config/"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the image's default config");

    let template = std::fs::read_to_string(format!("{root}/config/{config_in_image}"))
        .unwrap()
        .replace("127.0.0.1:2525", "{smtp}")
        .replace("0.0.0.0:9725", "{metrics}")
        .replace("/var/spool/mailveil", "{dir}/spool");
    let mut relay = RelayProc::start(&template, &[("UPSTREAM_PASSWORD", "unused")]).await;
    let run = || {
        Command::new(BIN)
            .args(&argv[1..])
            .env("MAILVEIL_CONFIG", &relay.config)
            .output()
            .unwrap()
    };
    let (code, line) = verdict(&run());
    assert_eq!(code, Some(0), "{line}");
    assert!(line.starts_with("healthy: /readyz"), "{line}");
    assert_eq!(relay.proc_.terminate(), Some(0));
    let (code, line) = verdict(&run());
    assert_eq!(code, Some(1), "{line}");
}
