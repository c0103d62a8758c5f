//! A real `redis-server` for the `[cluster]` tests: without persistence, on 127.0.0.1, with an
//! optional `requirepass` written to its stdin (`redis-server -` reads configuration from
//! stdin, so the password never shows in a command line, as in `deploy/relay/redis.yaml`);
//! killed by PID and reaped on drop.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PATIENCE;

pub struct Redis {
    child: Child,
    pub port: u16,
    password: Option<String>,
}

impl Redis {
    /// A server on `port` without a password; returns once it accepts connections.
    pub fn start(port: u16, dir: &Path) -> Redis {
        Redis::spawn(port, dir, None)
    }

    /// A server on a free port that requires `password`.
    pub fn with_password(dir: &Path, password: &str) -> Redis {
        Redis::spawn(super::free_port(), dir, Some(password))
    }

    fn spawn(port: u16, dir: &Path, password: Option<&str>) -> Redis {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if password.is_some() {
            command.arg("-").stdin(Stdio::piped());
        } else {
            command.stdin(Stdio::null());
        }
        let mut child = command.spawn().expect("start redis-server");
        if let Some(password) = password {
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "requirepass \"{password}\"").unwrap();
        }
        Redis::adopt(child, port, password)
    }

    /// A server started some other way (a manifest's start-up script) that listens on `port`:
    /// waited for, then killed by PID and reaped on drop like the others.
    pub fn adopt(child: Child, port: u16, password: Option<&str>) -> Redis {
        let redis = Redis {
            child,
            port,
            password: password.map(str::to_string),
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let end = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < end,
                "redis-server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// One `redis-cli` command (the password, if any, from the environment: REDISCLI_AUTH).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]).args(args);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        let out = command.output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `redis-server` and `redis-cli` can run here. Without them the Redis tests are
/// skipped with a printed reason, unless `MAILVEIL_REQUIRE_REDIS=1` (CI), where that fails.
pub fn redis_available() -> bool {
    let found = ["redis-server", "redis-cli"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        assert!(
            std::env::var("MAILVEIL_REQUIRE_REDIS").as_deref() != Ok("1"),
            "MAILVEIL_REQUIRE_REDIS=1 but redis-server / redis-cli is not installed"
        );
        println!("SKIPPED: redis-server is not on the PATH (set MAILVEIL_REQUIRE_REDIS=1 to fail)");
    }
    found
}
