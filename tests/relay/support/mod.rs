//! Shared helpers for the end-to-end tests: a relay running in-process on port 0 or as a real
//! process, the `mailveil sink` process as upstream, SMTP clients (lettre and a raw scripted
//! one), and certificates made with rcgen. Every process started here is killed by PID on drop.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub mod direct;
pub mod dns;
pub mod dnssec;
pub mod leaks;
pub mod pki;
pub mod raw_smtp;
pub mod redis_server;
pub mod relay_toml;
pub mod scripted_smtp;
#[allow(unused_imports)]
pub use pki::{TestPki, make_pki, tls_connector};
#[allow(unused_imports)]
pub use raw_smtp::{RawSmtp, auth_plain, cmd_of, reply_of, reply_within};
#[allow(unused_imports)]
pub(crate) use relay_toml::{
    admin_listener, metrics_listener, scripted_upstream, split_relay, spool_and_outbox,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailveil");

/// Upper bound for anything a test waits for; reaching it is a failure, never a pass.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A port that was free a moment ago (for processes, which must be told a port).
///
/// Taken at random from 20000-32767, below the kernel's ephemeral range (32768-60999 by
/// default): a port the kernel handed out with `bind(0)` was often handed out again as the
/// source port of an outgoing connection before the relay under test could bind it. Ports
/// given out by this process are not given out twice. Another test process can still pick
/// the same one; `RelayProc::start` retries on "Address already in use".
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<(RandomState, u64, HashSet<u16>)>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (seed, counter, taken) =
        given.get_or_insert_with(|| (RandomState::new(), 0, HashSet::new()));
    loop {
        *counter += 1;
        let port = 20_000 + (seed.hash_one(*counter) % 12_768) as u16;
        if !taken.contains(&port) && StdListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
}

/// A relay running inside the test process on ports chosen by the OS.
pub struct InProcessRelay {
    pub smtp: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), mailveil::RunError>>>,
}

impl InProcessRelay {
    /// Starts a relay from TOML text in which `{dir}` stands for a fresh temporary directory
    /// (spool and outbox live there).
    pub async fn start(toml_template: &str) -> InProcessRelay {
        let dir = tempfile::tempdir().unwrap();
        let text = toml_template.replace("{dir}", &dir.path().display().to_string());
        let config = mailveil::config::Config::from_toml(&text)
            .unwrap_or_else(|e| panic!("test config invalid: {:?}", e.problems));
        let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (smtp_addr, metrics_addr) = (smtp.local_addr().unwrap(), metrics.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let listeners = mailveil::Listeners {
            smtp,
            metrics: Some(metrics),
            admin: None,
        };
        let handle = tokio::spawn(mailveil::run(config, listeners, shutdown.clone()));
        InProcessRelay {
            smtp: smtp_addr,
            metrics: metrics_addr,
            dir,
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Graceful stop; returns the relay's result.
    pub async fn stop(mut self) -> Result<(), mailveil::RunError> {
        self.shutdown.cancel();
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(PATIENCE, handle)
            .await
            .expect("relay stops within the grace period")
            .unwrap()
    }

    /// `GET path` on the metrics listener: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics, path).await
    }
}

impl Drop for InProcessRelay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Minimal HTTP/1.0 GET (no client library needed for three plain endpoints).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None).await
}

/// Value of one sample line in Prometheus text, e.g. `metric("x_total{a=\"b\"}")`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (bounded); returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let end = Instant::now() + PATIENCE;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `mailveil <args>` with stdout+stderr into `log`.
pub fn spawn_mailveil(args: &[&str], log: &Path, envs: &[(&str, &str)]) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().unwrap(),
        log: log.to_path_buf(),
    }
}

/// Waits until `addr` accepts connections or `proc_` exits; true when it exited because a port
/// it was told to listen on was taken.
fn exited_for_a_taken_port(proc_: &mut Proc, addr: SocketAddr) -> bool {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return false;
        }
        if let Ok(Some(_)) = proc_.child.try_wait() {
            // `mailveil run` says "cannot listen on the metrics listener ...: address already
            // in use"; other processes (the sink) print the system's "Address already in use".
            return proc_
                .log_text()
                .to_ascii_lowercase()
                .contains("address already in use");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, proc_: &mut Proc) {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = proc_.child.try_wait() {
            panic!(
                "process exited early ({status}); log:\n{}",
                proc_.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on {addr}; log:\n{}", proc_.log_text());
}

/// `mailveil sink` as a real process on a fresh port, optionally with STARTTLS.
pub fn start_sink(dir: &Path, tls: Option<(&Path, &Path)>) -> (Proc, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = addr.to_string();
    let dir_s = dir.display().to_string();
    let mut args = vec!["sink", "--listen", &listen, "--dir", &dir_s];
    let (cert, key);
    if let Some((c, k)) = tls {
        cert = c.display().to_string();
        key = k.display().to_string();
        args.extend(["--tls-cert", &cert, "--tls-key", &key]);
    }
    let mut p = spawn_mailveil(&args, &dir.with_extension("sink.log"), &[]);
    wait_for_port(addr, &mut p);
    (p, addr)
}

/// Waits until `dir` holds at least `n` captured messages (`.json` files); returns them.
pub async fn wait_for_captures(dir: &Path, n: usize) -> Vec<mailveil::capture::Captured> {
    let end = Instant::now() + PATIENCE;
    loop {
        let count = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0);
        if count >= n {
            return mailveil::capture::read_all(dir).unwrap();
        }
        assert!(
            Instant::now() < end,
            "only {count} of {n} messages reached {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Asserts that `dir` stays without captures for `quiet` (for "never delivered" checks).
pub async fn assert_no_captures(dir: &Path, quiet: Duration) {
    tokio::time::sleep(quiet).await;
    let got = mailveil::capture::read_all(dir).unwrap_or_default();
    assert!(
        got.is_empty(),
        "expected nothing delivered, found {} message(s)",
        got.len()
    );
}

/// Sends `message` with lettre (plaintext, no auth) and returns the final reply text or error.
pub async fn lettre_send(
    addr: SocketAddr,
    from: Option<&str>,
    to: &[&str],
    message: &[u8],
) -> Result<String, lettre::transport::smtp::Error> {
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .timeout(Some(PATIENCE))
        .build();
    send_with(&transport, from, to, message).await
}

/// Sends over STARTTLS trusting `ca_pem`, optionally authenticating.
pub async fn lettre_send_tls(
    addr: SocketAddr,
    ca_pem: &[u8],
    credentials: Option<(&str, &str)>,
    from: &str,
    to: &[&str],
    message: &[u8],
) -> Result<String, lettre::transport::smtp::Error> {
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(ca_pem).unwrap())
        .build_rustls()
        .unwrap();
    let mut builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
            .port(addr.port())
            .timeout(Some(PATIENCE))
            .tls(Tls::Required(tls));
    if let Some((u, p)) = credentials {
        builder = builder.credentials(Credentials::new(u.into(), p.into()));
    }
    send_with(&builder.build(), Some(from), to, message).await
}

async fn send_with(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    from: Option<&str>,
    to: &[&str],
    message: &[u8],
) -> Result<String, lettre::transport::smtp::Error> {
    let envelope = lettre::address::Envelope::new(
        from.map(|f| f.parse().unwrap()),
        to.iter().map(|t| t.parse().unwrap()).collect(),
    )
    .unwrap();
    // lettre appends CRLF.CRLF itself: strip one trailing CRLF so the relay receives `message`.
    let body = message.strip_suffix(b"\r\n").unwrap_or(message);
    let response = transport.send_raw(&envelope, body).await?;
    Ok(format!(
        "{} {}",
        response.code(),
        response.message().collect::<Vec<_>>().join(" ")
    ))
}

/// A message with the given header lines and body; CRLF line endings.
pub fn message(headers: &[&str], body: &str) -> Vec<u8> {
    let mut m = String::new();
    for h in headers {
        m.push_str(h);
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.push_str(body);
    m.into_bytes()
}

/// Byte offset of the body in a message.
pub fn body_of(message: &[u8]) -> &[u8] {
    let pos = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(message.len());
    &message[pos..]
}

/// A `mailveil run` process on fresh ports with its config file, spool and outbox in a
/// temporary directory. Killed on drop.
pub struct RelayProc {
    pub proc_: Proc,
    pub smtp: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
}

impl RelayProc {
    /// Starts `mailveil run -c FILE` where FILE is `template` with `{dir}`, `{smtp}`,
    /// `{metrics}` and `{admin}` filled in; returns once `/readyz` answers 200 (signal handlers
    /// are installed by then).
    pub async fn start(template: &str, envs: &[(&str, &str)]) -> RelayProc {
        let dir = tempfile::tempdir().unwrap();
        let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
        let config = dir.path().join("mailveil.toml");
        let mut attempts = 0;
        let (mut proc_, smtp, metrics, admin) = loop {
            attempts += 1;
            let (smtp, metrics, admin) = (addr(free_port()), addr(free_port()), addr(free_port()));
            std::fs::write(
                &config,
                Self::render(template, dir.path(), smtp, metrics, admin),
            )
            .unwrap();
            let mut proc_ = spawn_mailveil(
                &["run", "-c", &config.display().to_string()],
                &dir.path().join("relay.log"),
                envs,
            );
            // Another test process may have taken one of the ports meanwhile: try others.
            if attempts < 5 && exited_for_a_taken_port(&mut proc_, metrics) {
                continue;
            }
            wait_for_port(metrics, &mut proc_);
            break (proc_, smtp, metrics, admin);
        };
        let end = Instant::now() + PATIENCE;
        loop {
            if http_get(metrics, "/readyz").await.0 == 200 {
                break;
            }
            if let Ok(Some(status)) = proc_.child.try_wait() {
                panic!("relay exited ({status}); log:\n{}", proc_.log_text());
            }
            assert!(
                Instant::now() < end,
                "relay not ready; log:\n{}",
                proc_.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        RelayProc {
            proc_,
            smtp,
            metrics,
            admin,
            config,
            dir,
        }
    }

    fn render(
        template: &str,
        dir: &Path,
        smtp: SocketAddr,
        metrics: SocketAddr,
        admin: SocketAddr,
    ) -> String {
        template
            .replace("{dir}", &dir.display().to_string())
            .replace("{smtp}", &smtp.to_string())
            .replace("{metrics}", &metrics.to_string())
            .replace("{admin}", &admin.to_string())
    }

    /// Starts the relay again on the same config, spool and ports (after a kill or a stop);
    /// returns once `/readyz` answers 200.
    pub async fn restart(&mut self, envs: &[(&str, &str)]) {
        self.proc_ = spawn_mailveil(
            &["run", "-c", &self.config.display().to_string()],
            &self.dir.path().join("relay-restarted.log"),
            envs,
        );
        wait_for_port(self.metrics, &mut self.proc_);
        let end = Instant::now() + PATIENCE;
        while http_get(self.metrics, "/readyz").await.0 != 200 {
            assert!(Instant::now() < end, "not ready after restart");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rewrites the config file from another template (same ports and directory).
    pub fn rewrite_config(&self, template: &str) {
        let text = Self::render(
            template,
            self.dir.path(),
            self.smtp,
            self.metrics,
            self.admin,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    /// Sends a signal (`HUP`, `TERM`) to the relay by PID.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.proc_.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits until the relay's log contains `needle` (counting from occurrence `after`).
    pub async fn wait_for_log(&self, needle: &str, after: usize) -> String {
        let end = Instant::now() + PATIENCE;
        loop {
            let log = self.proc_.log_text();
            if log.matches(needle).count() > after {
                return log;
            }
            assert!(Instant::now() < end, "log never showed {needle:?}:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Minimal HTTP/1.0 request with an optional bearer token: (status, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await
    .expect("answer within patience")
    .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `mailveil ctl --admin http://ADMIN ARGS` with `token` in the environment and no config or
/// admin URL taken from the test's own environment.
pub fn ctl_at(admin: SocketAddr, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("ctl")
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .args(args)
        .env("MAILVEIL_ADMIN_TOKEN", token)
        .env_remove("MAILVEIL_CONFIG")
        .env_remove("MAILVEIL_ADMIN_URL")
        .output()
        .unwrap()
}

/// [`ctl_at`] that must succeed: its standard output.
pub fn ctl_ok(admin: SocketAddr, token: &str, args: &[&str]) -> String {
    let out = ctl_at(admin, token, args);
    assert!(
        out.status.success(),
        "ctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `GET /status` of the admin API at `admin` (200 asserted), parsed.
pub async fn admin_status(admin: SocketAddr, token: &str) -> serde_json::Value {
    let (code, body) = http_request(admin, "GET", "/status", Some(token)).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Sends one message from `from` whose `To:` shows every recipient in `to`, over plain SMTP
/// with lettre; asserts the `250`.
pub async fn send_simple(smtp: SocketAddr, from: &str, to: &[&str], subject: &str) {
    let msg = message(
        &[
            &format!("From: {from}"),
            &format!("To: {}", to.join(", ")),
            &format!("Subject: {subject}"),
        ],
        "Body.\r\n",
    );
    let reply = lettre_send(smtp, Some(from), to, &msg)
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    assert!(reply.starts_with("250"), "{reply}");
}

/// Waits until `check` holds for the admin `/status` of `r` (bounded by [`PATIENCE`]).
pub async fn wait_admin_status(
    r: &RelayProc,
    token: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + PATIENCE;
    loop {
        let s = admin_status(r.admin, token).await;
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{what} never held: {s}\nlog:\n{}",
            r.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One series of the metrics endpoint at `metrics`, if present.
pub async fn metric_at(metrics: SocketAddr, series: &str) -> Option<f64> {
    let (_, text) = http_get(metrics, "/metrics").await;
    metric(&text, series)
}
