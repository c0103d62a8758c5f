//! A DNSSEC-signed DNS on loopback for DANE tests: Debian's `knotd` serves the zones (signing
//! the signed ones with keys it makes itself) and `unbound` validates them with a trust anchor
//! taken from knot (`keymgr ... ds`); the relay asks unbound. Both run in a temporary directory
//! on free ports and are stopped by PID when dropped.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Whether `knotd`, `keymgr` and `unbound` can be run.
pub fn tools_present() -> bool {
    ["knotd", "keymgr", "unbound"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

pub struct SignedDns {
    /// The validating resolver (unbound).
    pub resolver: SocketAddr,
    knot: Child,
    unbound: Child,
    _dir: tempfile::TempDir,
}

impl Drop for SignedDns {
    fn drop(&mut self) {
        for child in [&mut self.unbound, &mut self.knot] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A zone: its name (`dane.test`) and its records after the SOA and NS (zone-file lines
/// relative to the origin).
pub struct ZoneFile<'a> {
    pub name: &'a str,
    pub records: String,
    pub signed: bool,
}

impl SignedDns {
    pub fn start(zones: &[ZoneFile<'_>]) -> SignedDns {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["db", "run", "zones"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let knot_port = free_port();
        let mut knot_zones = String::new();
        for z in zones {
            let body = format!(
                "$ORIGIN {name}.\n$TTL 60\n@ SOA ns.{name}. admin.{name}. 1 60 60 600 60\n@ NS ns.{name}.\nns A 127.0.0.1\n{records}\n",
                name = z.name,
                records = z.records
            );
            std::fs::write(d.join("zones").join(format!("{}.zone", z.name)), body).unwrap();
            knot_zones.push_str(&format!(
                "  - domain: {name}\n    file: {name}.zone\n    dnssec-signing: {on}\n{policy}",
                name = z.name,
                on = if z.signed { "on" } else { "off" },
                policy = if z.signed {
                    "    dnssec-policy: test\n"
                } else {
                    ""
                }
            ));
        }
        let knot_conf = d.join("knot.conf");
        std::fs::write(
            &knot_conf,
            format!(
                "server:\n    listen: 127.0.0.1@{knot_port}\n    rundir: {run}\ndatabase:\n    storage: {db}\n\
                 policy:\n  - id: test\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n\
                 template:\n  - id: default\n    storage: {zones}\n    zonefile-sync: -1\n    journal-content: none\n\
                 zone:\n{knot_zones}log:\n  - target: stderr\n    any: info\n",
                run = d.join("run").display(),
                db = d.join("db").display(),
                zones = d.join("zones").display(),
            ),
        )
        .unwrap();
        let knot = spawn(
            Command::new("knotd").arg("-c").arg(&knot_conf),
            &d.join("knot.log"),
        );
        let knot_addr: SocketAddr = format!("127.0.0.1:{knot_port}").parse().unwrap();

        // Trust anchors: each signed zone's DS, once knot has signed it.
        let mut anchors = String::new();
        for z in zones.iter().filter(|z| z.signed) {
            let ds = wait_for(&format!("knot to sign {}", z.name), d, || {
                let out = Command::new("keymgr")
                    .arg("-c")
                    .arg(&knot_conf)
                    .args([z.name, "ds"])
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let first = text.lines().find(|l| l.contains(" DS "))?.to_string();
                query(knot_addr, &format!("{}.", z.name), 6).ok()?;
                Some(first)
            });
            anchors.push_str(&format!("  trust-anchor: \"{ds}\"\n"));
        }
        let unbound_port = free_port();
        let mut stubs = String::new();
        for z in zones {
            stubs.push_str(&format!(
                "stub-zone:\n  name: \"{}\"\n  stub-addr: 127.0.0.1@{knot_port}\n",
                z.name
            ));
        }
        let unbound_conf = d.join("unbound.conf");
        std::fs::write(
            &unbound_conf,
            format!(
                "server:\n  interface: 127.0.0.1\n  port: {unbound_port}\n  do-not-query-localhost: no\n\
                 \x20 username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n\
                 \x20 logfile: \"\"\n  verbosity: 1\n  module-config: \"validator iterator\"\n\
                 \x20 access-control: 127.0.0.0/8 allow\n  local-zone: \"test.\" nodefault\n{anchors}{stubs}",
                dir = d.display(),
            ),
        )
        .unwrap();
        let unbound = spawn(
            Command::new("unbound")
                .args(["-d", "-c"])
                .arg(&unbound_conf),
            &d.join("unbound.log"),
        );
        let resolver: SocketAddr = format!("127.0.0.1:{unbound_port}").parse().unwrap();
        if let Some(z) = zones.iter().find(|z| z.signed) {
            wait_for("unbound to validate", d, || {
                query(resolver, &format!("{}.", z.name), 6)
                    .ok()
                    .filter(|(ad, _)| *ad)
            });
        }
        SignedDns {
            resolver,
            knot,
            unbound,
            _dir: dir,
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"))
}

/// Polls `f` until it gives a value (20 s at most; then fails with the logs).
fn wait_for<T>(what: &str, dir: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            let log = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            panic!(
                "timed out waiting for {what}\nknot:\n{}\nunbound:\n{}",
                log("knot.log"),
                log("unbound.log")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One UDP query with DO and AD set: (AD in the answer, RCODE).
pub fn query(server: SocketAddr, name: &str, qtype: u16) -> std::io::Result<(bool, u8)> {
    let mut msg = vec![0x12, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.trim_end_matches('.').split('.') {
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&qtype.to_be_bytes());
    msg.extend_from_slice(&[0, 1]);
    // OPT: root name, type 41, payload 4096, DO bit.
    msg.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(&msg, server)?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf)?;
    if n < 12 {
        return Err(std::io::Error::other("short answer"));
    }
    Ok((buf[3] & 0x20 != 0, buf[3] & 0x0f))
}
