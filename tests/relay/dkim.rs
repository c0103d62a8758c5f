//! DKIM re-signing end to end: a `mailveil run` process splits a message that shows several
//! recipients, signs every copy after its rewrite, and an independent verifier (Python's
//! `dkimpy`, with DNS answered from a file this test writes) checks every captured copy. Keys
//! are RSA-2048 and Ed25519, generated here with rcgen. SIGHUP with a new key and selector
//! rotates the signature without a restart; a bad key file is a config error (exit 64).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{KeyPair, PKCS_ED25519, PKCS_RSA_SHA256, PublicKeyData};
use support::*;

const TEMPLATE: &str = concat!(
    r#"
[server]
listen = "{smtp}"
hostname = "relay.test"
[privacy]
mode = "split"
"#,
    spool_and_outbox!(),
    metrics_listener!(),
);

/// `dkimpy` verifying each file given; DNS TXT answers come from a `name record` file.
const VERIFIER: &str = r#"
import logging, sys, dkim
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
records = {}
for line in open(sys.argv[1]):
    name, _, value = line.rstrip("\n").partition(" ")
    records[name.lower()] = value
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    value = records.get(name.rstrip(".").lower())
    return value.encode() if value is not None else None
for path in sys.argv[2:]:
    ok = dkim.verify(open(path, "rb").read(), logger=logging.getLogger(path), dnsfunc=dnsfunc)
    print("PASS" if ok else "FAIL", path)
"#;

/// A generated key: its PEM file and the DNS TXT record that publishes it.
struct TestKey {
    file: PathBuf,
    record: String,
}

fn rsa_key(dir: &Path, name: &str) -> TestKey {
    let kp = KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap();
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        STANDARD.encode(kp.subject_public_key_info())
    );
    write_key(dir, name, &kp, record)
}

fn ed25519_key(dir: &Path, name: &str) -> TestKey {
    let kp = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let record = format!(
        "v=DKIM1; k=ed25519; p={}",
        STANDARD.encode(kp.public_key_raw())
    );
    write_key(dir, name, &kp, record)
}

fn write_key(dir: &Path, name: &str, kp: &KeyPair, record: String) -> TestKey {
    let file = dir.join(format!("{name}.pem"));
    std::fs::write(&file, kp.serialize_pem()).unwrap();
    TestKey { file, record }
}

fn dkim_entry(domain: &str, selector: &str, key: &TestKey, extra: &str) -> String {
    format!(
        "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{}\"\n{extra}\n",
        key.file.display()
    )
}

/// Whether `dkimpy` (and PyNaCl for Ed25519) can run here; fails when CI requires the tools.
fn verifier_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import dkim, nacl"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("MAILVEIL_REQUIRE_TOOLS").is_none(),
            "python3 with dkimpy and pynacl is required (pip install dkimpy pynacl)"
        );
        eprintln!("skipping: python3 dkimpy/pynacl not installed");
    }
    ok
}

/// Verifies each message with dkimpy against `records` (`(dns name, TXT)`); one bool each.
fn verify(work: &Path, records: &[(String, &str)], messages: &[Vec<u8>]) -> Vec<bool> {
    let script = work.join("verify.py");
    std::fs::write(&script, VERIFIER).unwrap();
    let dns = work.join("dns.txt");
    let text: String = records.iter().map(|(n, r)| format!("{n} {r}\n")).collect();
    std::fs::write(&dns, text).unwrap();
    let mut args = vec![script.display().to_string(), dns.display().to_string()];
    for (i, m) in messages.iter().enumerate() {
        let path = work.join(format!("copy{i}.eml"));
        std::fs::write(&path, m).unwrap();
        args.push(path.display().to_string());
    }
    let out = Command::new("python3").args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verifier failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<bool> = stdout.lines().map(|l| l.starts_with("PASS")).collect();
    if verdicts.contains(&false) {
        // The verifier's reasons, for a failing assertion.
        eprintln!("dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(verdicts.len(), messages.len(), "{stdout}");
    verdicts
}

/// The header block of a captured copy as text.
fn header_text(m: &[u8]) -> String {
    let end = m.len() - body_of(m).len();
    String::from_utf8_lossy(&m[..end]).to_string()
}

/// A tag of the first `DKIM-Signature` field (unfolded), or `None` when there is none.
fn first_signature_tag(m: &[u8], tag: &str) -> Option<String> {
    let header = header_text(m);
    let start = header.find("DKIM-Signature:")?;
    let mut field = String::new();
    for (i, line) in header[start..].split("\r\n").enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        field.push_str(line);
    }
    let field: String = field.chars().filter(|c| !c.is_whitespace()).collect();
    field
        .split_once(':')?
        .1
        .split(';')
        .find_map(|t| t.strip_prefix(&format!("{tag}=")).map(str::to_string))
}

fn leaky(from: &str, to: &[&str], subject: &str) -> Vec<u8> {
    message(
        &[
            &format!("From: Sender <{from}>"),
            &format!("To: {}", to.join(", ")),
            &format!("Subject: {subject}"),
            "Date: Mon, 23 Nov 2026 10:00:00 +0000",
            &format!("Message-ID: <{subject}@example.com>"),
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            // The app's own signature: removed from rewritten copies (it no longer verifies).
            "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=app; h=from:to; bh=AAAA; b=AAAA",
        ],
        "Hello,\r\n\r\nthis is the body.  With  spaces.\r\n",
    )
}

/// Sends `msg` and returns the copies that arrive (`expected` more than `before`).
async fn send(r: &RelayProc, from: &str, to: &[&str], msg: &[u8], before: usize) -> Vec<Vec<u8>> {
    let reply = lettre_send(r.smtp, Some(from), to, msg).await.unwrap();
    assert!(reply.contains("queued") || !reply.is_empty(), "{reply}");
    let all = wait_for_captures(&r.outbox(), before + to.len()).await;
    assert_eq!(
        all.len(),
        before + to.len(),
        "exactly one copy per recipient"
    );
    all.into_iter().skip(before).map(|c| c.bytes).collect()
}

#[tokio::test]
async fn every_split_copy_is_signed_after_its_rewrite_and_verifies_with_rsa_and_ed25519() {
    if !verifier_available() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let rsa = rsa_key(keys.path(), "rsa");
    let ed = ed25519_key(keys.path(), "ed");
    let config = format!(
        "{TEMPLATE}{}{}",
        dkim_entry("example.com", "rsa2026", &rsa, ""),
        dkim_entry("example.net", "ed2026", &ed, "subdomains = true"),
    );
    let r = RelayProc::start(&config, &[]).await;
    let records = [
        (
            "rsa2026._domainkey.example.com".to_string(),
            rsa.record.as_str(),
        ),
        (
            "ed2026._domainkey.example.net".to_string(),
            ed.record.as_str(),
        ),
    ];
    let to = ["ann@example.org", "bob@example.org", "cyd@example.org"];

    let rsa_copies = send(
        &r,
        "news@example.com",
        &to,
        &leaky("news@example.com", &to, "rsa"),
        0,
    )
    .await;
    // A subdomain of example.net signs with d=example.net (subdomains = true).
    let ed_copies = send(
        &r,
        "news@mail.example.net",
        &to,
        &leaky("news@mail.example.net", &to, "ed"),
        3,
    )
    .await;
    for (copies, selector, domain, alg) in [
        (&rsa_copies, "rsa2026", "example.com", "rsa-sha256"),
        (&ed_copies, "ed2026", "example.net", "ed25519-sha256"),
    ] {
        let mut shown = Vec::new();
        for c in copies.iter() {
            let h = header_text(c);
            assert_eq!(h.matches("DKIM-Signature:").count(), 1, "only ours: {h}");
            assert!(h.starts_with("DKIM-Signature:"), "ours comes first: {h}");
            assert!(
                !h.contains("s=app"),
                "the app's broken signature is gone: {h}"
            );
            let to_line = h
                .lines()
                .find(|l| l.starts_with("To:"))
                .unwrap()
                .to_string();
            assert_eq!(to_line.matches('@').count(), 1, "rewritten: {to_line}");
            shown.push(to_line);
            assert_eq!(first_signature_tag(c, "s").as_deref(), Some(selector));
            assert_eq!(first_signature_tag(c, "d").as_deref(), Some(domain));
            assert_eq!(first_signature_tag(c, "a").as_deref(), Some(alg));
        }
        shown.sort();
        shown.dedup();
        assert_eq!(shown.len(), 3, "each copy shows its own recipient");
        let verdicts = verify(keys.path(), &records, copies);
        assert_eq!(verdicts, vec![true; 3], "{selector}: every copy verifies");
    }

    // The verifier is real: a copy changed in transit fails.
    let mut tampered_to = rsa_copies[0].clone();
    let at = header_text(&tampered_to).find("\r\nTo:").unwrap() + 2;
    tampered_to.splice(at..at, b"Cc: eve@example.org\r\n".iter().copied());
    let mut tampered_body = ed_copies[0].clone();
    let len = tampered_body.len();
    tampered_body[len - 3] = b'X';
    let other = rsa_key(keys.path(), "other");
    let wrong_key = [(
        "rsa2026._domainkey.example.com".to_string(),
        other.record.as_str(),
    )];
    assert_eq!(
        verify(keys.path(), &records, &[tampered_to, tampered_body]),
        [false, false],
        "an added Cc or a changed body breaks the signature"
    );
    assert_eq!(verify(keys.path(), &wrong_key, &rsa_copies[..1]), [false]);

    // One visible recipient: not rewritten, so not signed (sign_unchanged is off by default);
    // the app's own signature stays as it was.
    let single = send(
        &r,
        "news@example.com",
        &["dee@example.org"],
        &leaky("news@example.com", &["dee@example.org"], "single"),
        6,
    )
    .await;
    let h = header_text(&single[0]);
    assert_eq!(h.matches("DKIM-Signature:").count(), 1, "{h}");
    assert_eq!(first_signature_tag(&single[0], "s").as_deref(), Some("app"));
}

#[tokio::test]
async fn sighup_rotates_key_and_selector_and_a_broken_key_file_keeps_the_running_one() {
    if !verifier_available() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let old = rsa_key(keys.path(), "old");
    let new = ed25519_key(keys.path(), "new");
    let old_config = format!("{TEMPLATE}{}", dkim_entry("example.com", "old", &old, ""));
    let r = RelayProc::start(&old_config, &[]).await;
    let records = [
        (
            "old._domainkey.example.com".to_string(),
            old.record.as_str(),
        ),
        (
            "new._domainkey.example.com".to_string(),
            new.record.as_str(),
        ),
    ];
    let to = ["ann@example.org", "bob@example.org"];
    let before = send(
        &r,
        "news@example.com",
        &to,
        &leaky("news@example.com", &to, "before"),
        0,
    )
    .await;
    for c in &before {
        assert_eq!(first_signature_tag(c, "s").as_deref(), Some("old"));
    }
    assert_eq!(verify(keys.path(), &records, &before), [true, true]);

    // Rotation: new key and selector, and unchanged messages signed too; no restart.
    r.rewrite_config(&format!(
        "{TEMPLATE}{}",
        dkim_entry("example.com", "new", &new, "sign_unchanged = true")
    ));
    r.signal("HUP");
    r.wait_for_log("configuration reloaded", 0).await;
    let after = send(
        &r,
        "news@example.com",
        &to,
        &leaky("news@example.com", &to, "after"),
        2,
    )
    .await;
    let single = send(
        &r,
        "news@example.com",
        &["cyd@example.org"],
        &leaky("news@example.com", &["cyd@example.org"], "unchanged"),
        4,
    )
    .await;
    for c in after.iter().chain(&single) {
        assert_eq!(first_signature_tag(c, "s").as_deref(), Some("new"));
        assert_eq!(
            first_signature_tag(c, "a").as_deref(),
            Some("ed25519-sha256")
        );
    }
    // The unchanged copy keeps the app's signature behind ours.
    assert_eq!(
        header_text(&single[0]).matches("DKIM-Signature:").count(),
        2
    );
    assert_eq!(
        verify(keys.path(), &records, &[after.clone(), single].concat()),
        [true; 3]
    );
    // Only the new record verifies them: the old key really is out of use.
    let old_only = [(
        "new._domainkey.example.com".to_string(),
        old.record.as_str(),
    )];
    assert_eq!(verify(keys.path(), &old_only, &after), [false, false]);

    // A reload whose key file is missing is refused as a whole; the running key keeps signing.
    let missing = keys.path().join("gone.pem");
    r.rewrite_config(&format!(
        "{TEMPLATE}[[dkim]]\ndomain = \"example.com\"\nselector = \"gone\"\nkey_file = \"{}\"\n",
        missing.display()
    ));
    r.signal("HUP");
    let log = r.wait_for_log("configuration reload refused", 0).await;
    assert!(log.contains("dkim[0].key_file"), "{log}");
    assert!(log.contains("gone.pem"), "{log}");
    let still = send(
        &r,
        "news@example.com",
        &to,
        &leaky("news@example.com", &to, "still"),
        5,
    )
    .await;
    for c in &still {
        assert_eq!(first_signature_tag(c, "s").as_deref(), Some("new"));
    }
    assert_eq!(verify(keys.path(), &records, &still), [true, true]);
}

#[test]
fn a_missing_or_invalid_key_file_is_a_config_error_naming_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let good = rsa_key(dir.path(), "good");
    let missing = dir.path().join("missing.pem");
    let base = TEMPLATE
        .replace("{smtp}", "127.0.0.1:2525")
        .replace("{metrics}", "127.0.0.1:9725")
        .replace("{dir}", &dir.path().display().to_string());
    let check = |text: &str| {
        let file = dir.path().join("mailveil.toml");
        std::fs::write(&file, text).unwrap();
        Command::new(BIN)
            .args(["check-config", "-c"])
            .arg(&file)
            .output()
            .unwrap()
    };

    let ok = check(&format!(
        "{base}{}",
        dkim_entry("example.com", "s1", &good, "")
    ));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let bad = check(&format!(
        "{base}[[dkim]]\ndomain = \"example.com\"\nselector = \"s1\"\nkey_file = \"{}\"\n\
         [[dkim]]\ndomain = \"example.net\"\nselector = \"s1\"\nkey_file = \"{}\"\n\
         [[dkim]]\ndomain = \"example.org\"\nkey_file = \"{}\"\n",
        missing.display(),
        junk.display(),
        good.file.display(),
    ));
    assert_eq!(bad.status.code(), Some(64));
    let err = String::from_utf8_lossy(&bad.stderr);
    for expected in [
        format!("dkim[0].key_file: cannot read {}", missing.display()),
        format!("dkim[1].key_file: {}", junk.display()),
        "dkim[2].selector: is required".to_string(),
    ] {
        assert!(err.contains(&expected), "{expected:?} missing in:\n{err}");
    }
}
