//! File permissions through the real binary, started under `umask 022` (which would make plain
//! `File::create` 0644 and directories 0755): every file the relay creates in its spool and
//! capture directories is 0600, every directory 0700; existing directories of its own are
//! tightened at start; `mailveil sink` does the same; a password file other users can read is
//! named in a warning at start and by `check-config`.

use crate::support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use support::*;

/// `mailveil <args>` started through `sh -c 'umask 022; exec ...'` (the same PID).
fn spawn_umask_022(args: &[&str], log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// The mode in octal, as `ls -l` readers think of it.
fn mode(path: &Path) -> String {
    format!(
        "{:o}",
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    )
}

/// Every directory under (and including) `root` is 0700 and every file 0600; returns the files.
fn assert_private_tree(root: &Path) -> Vec<String> {
    assert_eq!(mode(root), "700", "{}", root.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(assert_private_tree(&path));
        } else {
            assert_eq!(mode(&path), "600", "{}", path.display());
            files.push(path.display().to_string());
        }
    }
    files
}

fn relay_config(smtp: SocketAddr, work: &Path, upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"{smtp}\"\n[spool]\ndir = \"{}\"\nretry_initial = \"1s\"\n{upstream}",
        work.join("spool").display()
    )
}

async fn send(smtp: SocketAddr, id: &str) {
    let m = message(
        &[
            "From: app@src.test",
            "To: rcpt@x.test",
            &format!("Message-ID: <{id}@src.test>"),
        ],
        "private body\r\n",
    );
    let reply = lettre_send(smtp, Some("app@src.test"), &["rcpt@x.test"], &m)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
}

#[tokio::test]
async fn spool_and_capture_files_are_private_under_umask_022() {
    let work = tempfile::tempdir().unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = work.path().join("mailveil.toml");
    let cfg_s = cfg.display().to_string();
    // A spool left by an earlier relay: directories 0755, a damaged batch 0644 (it moves to
    // corrupt/ at start).
    let spool = work.path().join("spool");
    std::fs::create_dir_all(spool.join("msg")).unwrap();
    for d in [&spool, &spool.join("msg")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let damaged = spool.join("msg/01DAMAGED.spool");
    std::fs::write(&damaged, b"not a batch").unwrap();
    std::fs::set_permissions(&damaged, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Upstream down: the message stays in the spool.
    let down = format!(
        "[[upstream]]\nname = \"down\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
        free_port()
    );
    std::fs::write(&cfg, relay_config(smtp, work.path(), &down)).unwrap();
    let mut relay = spawn_umask_022(&["run", "-c", &cfg_s], &work.path().join("relay1.log"));
    wait_for_port(smtp, &mut relay);
    send(smtp, "m1").await;
    let files = assert_private_tree(&spool);
    for expected in [".redaction-key", "corrupt/01DAMAGED.spool", "msg/"] {
        assert!(
            files.iter().any(|f| f.contains(expected)),
            "{expected} among {files:?}"
        );
    }
    assert_eq!(relay.terminate(), Some(0));

    // A capture upstream: the outbox is created 0700, each message 0600.
    let outbox = work.path().join("outbox");
    let capture = format!(
        "[[upstream]]\nname = \"outbox\"\ndir = \"{}\"\n",
        outbox.display()
    );
    std::fs::write(&cfg, relay_config(smtp, work.path(), &capture)).unwrap();
    let mut relay = spawn_umask_022(&["run", "-c", &cfg_s], &work.path().join("relay2.log"));
    wait_for_port(smtp, &mut relay);
    wait_for_captures(&outbox, 1).await;
    let captured = assert_private_tree(&outbox);
    assert!(captured.iter().any(|f| f.ends_with(".eml")), "{captured:?}");
    assert!(
        captured.iter().any(|f| f.ends_with(".json")),
        "{captured:?}"
    );
    assert_private_tree(&spool);
    assert_eq!(relay.terminate(), Some(0));

    // `mailveil sink` writes the same format, as privately.
    let sink_dir = work.path().join("sink");
    let sink: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (listen, dir_s) = (sink.to_string(), sink_dir.display().to_string());
    let mut sink_proc = spawn_umask_022(
        &["sink", "--listen", &listen, "--dir", &dir_s],
        &work.path().join("sink.log"),
    );
    wait_for_port(sink, &mut sink_proc);
    send(sink, "m2").await;
    wait_for_captures(&sink_dir, 1).await;
    assert_eq!(assert_private_tree(&sink_dir).len(), 2);
}

#[tokio::test]
async fn a_password_file_other_users_can_read_is_named_in_a_warning() {
    let work = tempfile::tempdir().unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let password = work.path().join("upstream-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let upstream = format!(
        "[[upstream]]\nname = \"up\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nusername = \"u\"\npassword_file = \"{}\"\n",
        free_port(),
        password.display()
    );
    let cfg = work.path().join("mailveil.toml");
    std::fs::write(&cfg, relay_config(smtp, work.path(), &upstream)).unwrap();
    let cfg_s = cfg.display().to_string();

    let check = Command::new(BIN)
        .args(["check-config", "-c", &cfg_s])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "a warning, not an error: {stderr}");
    assert!(
        stderr.contains("upstream[0].password_file")
            && stderr.contains(&password.display().to_string())
            && stderr.contains("0644"),
        "check-config names the key and the file: {stderr}"
    );

    let mut relay = spawn_mailveil(&["run", "-c", &cfg_s], &work.path().join("relay.log"), &[]);
    wait_for_port(smtp, &mut relay);
    let end = std::time::Instant::now() + PATIENCE;
    while !relay.log_text().contains("password_file") && std::time::Instant::now() < end {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = relay.log_text();
    assert!(
        log.contains("WARN")
            && log.contains("upstream[0].password_file")
            && log.contains(&password.display().to_string()),
        "the start-up log names the key and the file:\n{log}"
    );
    assert!(!log.contains("s3cret"), "never the secret itself");
    assert_eq!(relay.terminate(), Some(0));

    // Fixed: no warning.
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = Command::new(BIN)
        .args(["check-config", "-c", &cfg_s])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&check.stderr).contains("warning"));
}
