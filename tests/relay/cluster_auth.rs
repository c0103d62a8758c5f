//! `[cluster]` against a real `redis-server` that requires a password (`requirepass`, given on
//! stdin the way `deploy/relay/redis.yaml` gives it, so it never shows in a command line): the
//! relay takes the password from the variable named by `cluster.password_env` and shares its
//! limits (`mailveil_cluster_up 1`, the throttle key in Redis); a wrong or missing password is
//! handled like Redis being down (local fallback, `mailveil_cluster_up 0`, mail keeps flowing)
//! with the reason in the log, and the password never appears in the log. An unset
//! `password_env` variable is a configuration error naming the key.
//!
//! Without `redis-server` on the PATH the Redis tests are skipped with a printed reason, unless
//! `MAILVEIL_REQUIRE_REDIS=1` (CI), where that is a failure.

use crate::support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::redis_server::{Redis, redis_available};
use support::*;

const PASSWORD: &str = "rEd1s-s3cret-Pw";

/// A relay with `[cluster]` on `redis_port`; `password_line` is the TOML line naming the
/// password (or nothing).
fn template(redis_port: u16, password_line: &str) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
{storage}[[provider]]
name = "alpha"
domains = ["a.test"]
messages_per_second = 50.0
burst = 5
{metrics}[cluster]
redis_url = "redis://127.0.0.1:{redis_port}/"
replicas = 1
{password_line}
"#,
        storage = spool_and_outbox!(),
        metrics = metrics_listener!(),
    )
}

async fn cluster_up(relay: &RelayProc) -> Option<f64> {
    let (_, text) = http_get(relay.metrics, "/metrics").await;
    metric(&text, "mailveil_cluster_up")
}

async fn wait_cluster_up(relay: &RelayProc, want: f64) {
    let end = Instant::now() + PATIENCE;
    while cluster_up(relay).await != Some(want) {
        assert!(
            Instant::now() < end,
            "mailveil_cluster_up never became {want}; log:\n{}",
            relay.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send_and_wait_delivered(relay: &RelayProc, n: usize) {
    let msg = message(
        &[
            "From: app@src.test",
            "To: one@a.test",
            "Subject: cluster auth",
        ],
        "hi\r\n",
    );
    let reply = lettre_send(relay.smtp, Some("app@src.test"), &["one@a.test"], &msg)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    wait_for_captures(&relay.outbox(), n).await;
}

#[tokio::test]
async fn the_password_from_password_env_opens_the_shared_limits() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let redis = Redis::with_password(work.path(), PASSWORD);
    assert!(
        redis.cli(&["--no-auth-warning", "ping"]).contains("PONG"),
        "the test's redis does not take its password"
    );
    let relay = RelayProc::start(
        &template(redis.port, "password_env = \"TEST_REDIS_PASSWORD\""),
        &[("TEST_REDIS_PASSWORD", PASSWORD)],
    )
    .await;
    wait_cluster_up(&relay, 1.0).await;
    send_and_wait_delivered(&relay, 1).await;
    // The delivery took its cell from the shared limit: the provider's key is in Redis.
    let end = Instant::now() + PATIENCE;
    while redis.cli(&["exists", "mailveil:throttle:alpha"]) != "1" {
        assert!(Instant::now() < end, "no throttle key in Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster_up(&relay).await, Some(1.0));
    let log = relay.proc_.log_text();
    assert!(log.contains("provider limits are shared"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the password is in the log:\n{log}"
    );
}

#[tokio::test]
async fn a_wrong_password_falls_back_to_local_limits_and_says_why() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let redis = Redis::with_password(work.path(), PASSWORD);
    let wrong = "not-the-Redis-password";
    let relay = RelayProc::start(
        &template(redis.port, "password_env = \"TEST_REDIS_PASSWORD\""),
        &[("TEST_REDIS_PASSWORD", wrong)],
    )
    .await;
    let log = relay
        .wait_for_log("cluster Redis not usable at start", 0)
        .await;
    assert!(
        log.contains("Redis refused the password") && log.contains("cluster.password_env"),
        "the log does not say the password was refused:\n{log}"
    );
    // Mail keeps flowing under the local fallback, and the gauge says Redis is not shared.
    send_and_wait_delivered(&relay, 1).await;
    assert_eq!(cluster_up(&relay).await, Some(0.0));
    assert_eq!(redis.cli(&["exists", "mailveil:throttle:alpha"]), "0");
    let log = relay.proc_.log_text();
    assert!(!log.contains(wrong), "the password is in the log:\n{log}");
}

#[tokio::test]
async fn no_password_for_a_redis_that_requires_one_says_so() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let redis = Redis::with_password(work.path(), PASSWORD);
    let relay = RelayProc::start(&template(redis.port, ""), &[]).await;
    let log = relay
        .wait_for_log("cluster Redis not usable at start", 0)
        .await;
    assert!(
        log.contains("Redis requires a password: set cluster.password_env"),
        "the log does not say a password is needed:\n{log}"
    );
    send_and_wait_delivered(&relay, 1).await;
    assert_eq!(cluster_up(&relay).await, Some(0.0));
}

#[tokio::test]
async fn a_password_for_a_redis_without_one_says_so() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // An empty requirepass: Redis without a password.
    let redis = Redis::with_password(work.path(), "");
    let relay = RelayProc::start(
        &template(redis.port, "password_env = \"TEST_REDIS_PASSWORD\""),
        &[("TEST_REDIS_PASSWORD", PASSWORD)],
    )
    .await;
    let log = relay
        .wait_for_log("cluster Redis not usable at start", 0)
        .await;
    assert!(
        log.contains("Redis refused the password") && log.contains("requirepass"),
        "{log}"
    );
    send_and_wait_delivered(&relay, 1).await;
    assert_eq!(cluster_up(&relay).await, Some(0.0));
    assert!(!relay.proc_.log_text().contains(PASSWORD));
}

/// No Redis needed: the variable named by `cluster.password_env` is unset, so `check-config`
/// names the key and the variable (exit 64), and `run` refuses to start the same way.
#[test]
fn an_unset_password_variable_is_a_configuration_error() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("mailveil.toml");
    let text = template(6379, "password_env = \"TEST_UNSET_REDIS_PASSWORD\"")
        .replace("{dir}", &work.path().display().to_string())
        .replace("{smtp}", "127.0.0.1:2525")
        .replace("{metrics}", "127.0.0.1:9725");
    std::fs::write(&config, text).unwrap();
    for command in ["check-config", "run"] {
        let out = Command::new(BIN)
            .args([command, "-c"])
            .arg(&config)
            .env_remove("TEST_UNSET_REDIS_PASSWORD")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{command}: {stderr}");
        assert!(
            stderr.contains("cluster.password_env") && stderr.contains("TEST_UNSET_REDIS_PASSWORD"),
            "{command}: {stderr}"
        );
    }
}

/// The Redis of `deploy/relay/redis.yaml` as the manifest starts it (its container script, run
/// by `sh` with the password in the environment, only the file location, port and bind address
/// moved for a test) and the relay with the manifest's own `[cluster]` section: the password
/// reaches Redis without appearing on its command line, Redis refuses clients without it, and
/// the relay, reading it through `password_env` as in `deploy/relay/relay.yaml`, shares its
/// limits.
#[tokio::test]
async fn the_manifests_redis_takes_its_password_from_the_secret_and_the_relay_uses_it() {
    if !redis_available() {
        return;
    }
    let yaml_ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !yaml_ok {
        assert!(
            std::env::var("MAILVEIL_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "PyYAML is required but not installed"
        );
        println!("SKIPPED: PyYAML not installed");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let script = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml\n\
             d = next(x for x in yaml.safe_load_all(open(sys.argv[1])) if x['kind'] == 'Deployment')\n\
             c = d['spec']['template']['spec']['containers'][0]\n\
             assert c['command'] == ['sh', '-c'], c['command']\n\
             print(c['args'][0], end='')",
        ])
        .arg(format!("{root}/deploy/relay/redis.yaml"))
        .output()
        .unwrap();
    assert!(
        script.status.success(),
        "{}",
        String::from_utf8_lossy(&script.stderr)
    );
    let script = String::from_utf8(script.stdout).unwrap();
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let run_dir = work.path().display().to_string();
    let exec = "exec redis-server /run/redis/auth.conf";
    assert!(script.contains(exec), "{script}");
    let script = script
        .replace(
            exec,
            &format!("{exec} --port {port} --bind 127.0.0.1 --dir /run/redis"),
        )
        .replace("/run/redis", &run_dir);
    let child = Command::new("sh")
        .args(["-c", &script])
        .env("REDIS_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let redis = Redis::adopt(child, port, Some(PASSWORD));
    // `exec`: the shell became redis-server, whose command line does not hold the password.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", redis.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("redis-server"), "{cmdline}");
    assert!(
        !cmdline.contains(PASSWORD),
        "password on the command line: {cmdline}"
    );
    let anonymous = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "get", "x"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&anonymous.stdout).contains("NOAUTH"),
        "the manifest's redis answers without a password"
    );
    assert!(redis.cli(&["ping"]).contains("PONG"));
    // The file that holds it is private to Redis' user (umask 077 in the script).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(work.path().join("auth.conf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "auth.conf mode {mode:o}");

    // The relay with relay.yaml's [cluster] section, only the Redis address moved.
    let relay_yaml = std::fs::read_to_string(format!("{root}/deploy/relay/relay.yaml")).unwrap();
    let start = relay_yaml
        .find("    [cluster]\n")
        .expect("[cluster] in relay.yaml");
    let cluster: String = relay_yaml[start..]
        .lines()
        .enumerate()
        .take_while(|(i, l)| *i == 0 || (l.starts_with("    ") && !l.trim_start().starts_with('[')))
        .map(|(_, l)| format!("{}\n", l.trim_start()))
        .collect();
    assert!(
        cluster.contains("password_env = \"MAILVEIL_REDIS_PASSWORD\""),
        "{cluster}"
    );
    let cluster = cluster.replace(
        "redis://mailveil-redis:6379/",
        &format!("redis://127.0.0.1:{port}/"),
    );
    let template = format!(
        "[server]\nlisten = \"{{smtp}}\"\n{storage}{metrics}{cluster}",
        storage = spool_and_outbox!(),
        metrics = metrics_listener!(),
    );
    let relay = RelayProc::start(&template, &[("MAILVEIL_REDIS_PASSWORD", PASSWORD)]).await;
    wait_cluster_up(&relay, 1.0).await;
    send_and_wait_delivered(&relay, 1).await;
    assert!(!relay.proc_.log_text().contains(PASSWORD));
}

/// `[cluster]` is bound at start: a rotated `password_file` (a Kubernetes Secret volume the
/// kubelet updated) is reported by a reload as needing a restart, not silently ignored. No
/// Redis needed: the relay starts on the local fallback.
#[tokio::test]
async fn a_changed_redis_password_file_needs_a_restart_and_reload_says_so() {
    let template = format!(
        "[server]\nlisten = \"{{smtp}}\"\n{storage}{metrics}{admin}[cluster]\nredis_url = \"redis://127.0.0.1:{port}/\"\nreplicas = 1\npassword_file = \"{{dir}}/redis-password\"\n",
        storage = spool_and_outbox!(),
        metrics = metrics_listener!(),
        admin = admin_listener!(),
        port = free_port(),
    );
    // RelayProc creates {dir}; the password file must exist before the relay starts, so the
    // first start uses a config without [cluster], which is then rewritten and restarted.
    let token = "reload-test-token";
    let plain = template[..template.find("[cluster]").unwrap()].to_string();
    let mut relay = RelayProc::start(&plain, &[("TEST_ADMIN_TOKEN", token)]).await;
    let secret = relay.dir.path().join("redis-password");
    std::fs::write(&secret, "first-password\n").unwrap();
    relay.rewrite_config(&template);
    let (_, answer) = http_request(relay.admin, "POST", "/reload", Some(token)).await;
    assert!(answer.contains("cluster.redis_url"), "{answer}");
    // Restart with [cluster], then rotate the password and reload.
    assert_eq!(relay.proc_.terminate(), Some(0));
    relay.proc_ = spawn_mailveil(
        &["run", "-c", &relay.config.display().to_string()],
        &relay.dir.path().join("relay2.log"),
        &[("TEST_ADMIN_TOKEN", token)],
    );
    wait_for_port(relay.admin, &mut relay.proc_);
    std::fs::write(&secret, "second-password\n").unwrap();
    let (status, answer) = http_request(relay.admin, "POST", "/reload", Some(token)).await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer["restart_needed"],
        serde_json::json!(["cluster.password"]),
        "{answer}"
    );
    assert!(!relay.proc_.log_text().contains("second-password"));
}

/// The password never passes through a URL, so characters a URL would need escaped are fine.
#[tokio::test]
async fn a_password_with_url_characters_works_as_it_is() {
    if !redis_available() {
        return;
    }
    let odd = "p@ss:w/rd?%20#x";
    let work = tempfile::tempdir().unwrap();
    let redis = Redis::with_password(work.path(), odd);
    let relay = RelayProc::start(
        &template(redis.port, "password_env = \"TEST_REDIS_PASSWORD\""),
        &[("TEST_REDIS_PASSWORD", odd)],
    )
    .await;
    wait_cluster_up(&relay, 1.0).await;
    assert!(!relay.proc_.log_text().contains(odd));
}
