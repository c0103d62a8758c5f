//! The command line contract: `check-config` exit codes and messages, `inspect` output, `--version`.

use crate::support;

use std::process::Command;

use support::BIN;

#[test]
fn check_config_accepts_the_default_and_reports_every_problem_with_exit_64() {
    let ok = Command::new(BIN)
        .args(["check-config", "-c", "config/mailveil.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for example in [
        "config/examples/sidecar.toml",
        "config/examples/provider-relay.toml",
        "config/examples/direct-mx.toml",
    ] {
        // Examples reference secrets from the environment and files that exist only in deployment
        // (and a spool volume a user other than root may not create here); they must fail only
        // for those reasons.
        let out = Command::new(BIN)
            .args(["check-config", "-c", example])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        for line in err.lines().skip(1) {
            assert!(
                line.contains("password_env")
                    || line.contains("password_file")
                    || line.contains("server.tls")
                    || line.contains("dkim[0].key_file")
                    || line.contains("spool.dir: /var/spool/mailveil cannot be created"),
                "{example}: unexpected problem {line}"
            );
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"nowhere\"\nmax_recipients = 0\n[privacy]\nmode = \"shred\"\n[[upstream]]\nname = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "server.listen",
        "server.max_recipients",
        "privacy.mode",
        "upstream[0]",
    ] {
        assert!(err.contains(path), "missing {path} in:\n{err}");
    }

    let run = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(64),
        "run refuses an invalid config the same way"
    );
}

#[test]
fn inspect_prints_the_decision_and_each_delivery_header_block() {
    let dir = tempfile::tempdir().unwrap();
    let eml = dir.path().join("leaky.eml");
    std::fs::write(
        &eml,
        "From: News <news@src.test>\nTo: \"Ann\" <ann@x.test>, bob@y.test\nCc: cat@z.test\nBcc: dan@w.test\nSubject: hi\n\nbody\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["inspect", "-c", "config/mailveil.toml"])
        .arg(&eml)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("decision: split (visible 3)"));
    assert!(
        text.contains("delivery 1/4: MAIL FROM:<news@src.test> RCPT TO:<ann@x.test>"),
        "{text}"
    );
    assert!(
        text.contains("delivery 4/4: MAIL FROM:<news@src.test> RCPT TO:<dan@w.test>"),
        "{text}"
    );
    let to_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("To:")).collect();
    assert_eq!(to_lines.len(), 4, "{text}");
    assert!(
        to_lines.contains(&"To: \"Ann\" <ann@x.test>"),
        "{to_lines:?}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("Cc:") || l.starts_with("Bcc:")),
        "{text}"
    );

    let out = Command::new(BIN)
        .args([
            "inspect",
            "-c",
            "config/mailveil.toml",
            "--from",
            "ops@src.test",
            "--to",
            "ann@x.test",
        ])
        .arg(&eml)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("decision: split (visible 3)\ndelivery 1/1: MAIL FROM:<ops@src.test> RCPT TO:<ann@x.test>\n"), "{text}");
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("mailveil "));
}
