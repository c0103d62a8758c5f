use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use mail_auth::common::crypto::Ed25519Key;

use super::*;
use crate::config::dkim_key::{DEFAULT_HEADERS, DEFAULT_OVERSIGN};
use crate::config::{DkimConfig, DkimKeyConfig};

fn ed25519_pem() -> Vec<u8> {
    let der = Ed25519Key::generate_pkcs8().unwrap();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    )
    .into_bytes()
}

fn entry(domain: &str, subdomains: bool, sign_unchanged: bool) -> DkimKeyConfig {
    DkimKeyConfig {
        domain: domain.into(),
        selector: format!("sel-{domain}"),
        key_file: "unused.pem".into(),
        headers: DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
        oversign: DEFAULT_OVERSIGN.iter().map(|s| s.to_string()).collect(),
        subdomains,
        sign_unchanged,
        key: LoadedKey::from_pem(&ed25519_pem()).unwrap(),
    }
}

fn signer(entries: Vec<DkimKeyConfig>) -> Signer {
    Signer::from_config(&DkimConfig { keys: entries })
}

const HEADER: &[u8] = b"Received: from x\r\nFrom: News <news@Mail.Example.com>\r\nTo: ann@example.org\r\nSubject: hi\r\nMessage-ID: <1@x>\r\n\r\n";

/// Tag value of a DKIM-Signature field (unfolded).
fn tag(field: &[u8], name: &str) -> String {
    let text: String = String::from_utf8_lossy(field)
        .split_once(':')
        .unwrap()
        .1
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    text.split(';')
        .find_map(|t| t.strip_prefix(&format!("{name}=")).map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn picks_the_key_by_from_domain_exact_first_then_allowed_parents() {
    let s = signer(vec![
        entry("example.com", true, false),
        entry("mail.example.com", false, false),
        entry("other.com", false, false),
    ]);
    let field = s.sign(HEADER, b"Hello.\r\n", true).expect("signed");
    assert!(field.starts_with(b"DKIM-Signature: "));
    assert!(field.ends_with(b"\r\n"));
    assert_eq!(tag(&field, "d"), "mail.example.com");
    assert_eq!(tag(&field, "s"), "sel-mail.example.com");
    assert_eq!(tag(&field, "a"), "ed25519-sha256");

    let s = signer(vec![entry("example.com", true, false)]);
    let field = s.sign(HEADER, b"Hello.\r\n", true).expect("parent signs");
    assert_eq!(tag(&field, "d"), "example.com");

    let s = signer(vec![entry("example.com", false, false)]);
    assert!(
        s.sign(HEADER, b"Hello.\r\n", true).is_none(),
        "no subdomains"
    );
    let s = signer(vec![entry("ample.com", true, false)]);
    assert!(
        s.sign(HEADER, b"Hello.\r\n", true).is_none(),
        "not a label boundary"
    );
}

#[test]
fn signs_present_fields_and_oversigns_from_to_cc_subject() {
    let s = signer(vec![entry("mail.example.com", false, false)]);
    let field = s.sign(HEADER, b"Hello.\r\n", true).unwrap();
    let h: Vec<String> = tag(&field, "h")
        .split(':')
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let count = |n: &str| h.iter().filter(|x| *x == n).count();
    assert_eq!(count("from"), 2, "{h:?}");
    assert_eq!(count("to"), 2, "{h:?}");
    assert_eq!(count("subject"), 2, "{h:?}");
    assert_eq!(count("cc"), 1, "absent Cc is signed as absent: {h:?}");
    assert_eq!(count("message-id"), 1, "{h:?}");
    // Absent fields a provider may add are not signed; trace fields never are.
    for absent in ["date", "reply-to", "list-unsubscribe", "received"] {
        assert_eq!(count(absent), 0, "{absent} in {h:?}");
    }
}

#[test]
fn unchanged_copies_are_signed_only_when_configured() {
    let off = signer(vec![entry("mail.example.com", false, false)]);
    let mut header = HEADER.to_vec();
    assert!(!off.sign_copy(&mut header, b"x\r\n", &Rewrite::Unchanged));
    assert_eq!(header, HEADER);
    let on = signer(vec![entry("mail.example.com", false, true)]);
    assert!(on.sign_copy(&mut header, b"x\r\n", &Rewrite::Unchanged));
    assert!(header.starts_with(b"DKIM-Signature: "));
    assert!(header.ends_with(HEADER));
    let mut header = HEADER.to_vec();
    assert!(off.sign_copy(&mut header, b"x\r\n", &Rewrite::Undisclosed));
}

#[test]
fn no_from_or_unknown_domain_is_left_unsigned() {
    let s = signer(vec![entry("example.com", true, true)]);
    assert!(s.sign(b"To: a@b.c\r\n\r\n", b"", true).is_none());
    assert!(s.sign(b"From: a@example.net\r\n\r\n", b"", true).is_none());
    assert!(Signer::default().is_empty());
}

#[test]
fn key_files_that_are_not_rsa_or_ed25519_keys_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e = LoadedKey::load(&missing).unwrap_err().to_string();
    assert!(
        e.contains("missing.pem") && e.contains("cannot read"),
        "{e}"
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let e = LoadedKey::load(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.pem"), "{e}");
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = LoadedKey::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.pem") && e.contains("Ed25519"), "{e}");
    let good = dir.path().join("good.pem");
    std::fs::write(&good, ed25519_pem()).unwrap();
    assert_eq!(
        LoadedKey::load(&good).unwrap().algorithm_name(),
        "ed25519-sha256"
    );
}

#[test]
fn field_names_skip_folded_lines_and_stop_at_the_body() {
    let names = field_names(b"A: 1\r\n 2\r\nB-c : x\r\n\r\nD: body\r\n");
    assert_eq!(names, ["A", "B-c"]);
}

#[test]
fn bare_lf_header_blocks_are_left_unsigned_rather_than_signed_wrongly() {
    let s = signer(vec![entry("example.com", false, false)]);
    let bare = b"From: a@example.com\nTo: b@example.org\n\n";
    assert!(s.sign(bare, b"Hi.\n", true).is_none());
    let crlf = b"From: a@example.com\r\nTo: b@example.org\r\n\r\n";
    let field = s.sign(crlf, b"Hi.\r\n", true).unwrap();
    // The body hash is over "Hi.", not over an empty body.
    assert_ne!(
        tag(&field, "bh"),
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    );
}

#[test]
fn debug_output_never_shows_key_material() {
    let pem = ed25519_pem();
    let key = LoadedKey::from_pem(&pem).unwrap();
    assert_eq!(format!("{key:?}"), "LoadedKey(ed25519-sha256)");
    let shown = format!("{:?}", entry("example.com", false, false));
    assert!(
        !shown.contains("PRIVATE") && shown.contains("ed25519"),
        "{shown}"
    );
}
