//! Entry points for the fuzz targets in `fuzz/` (and for the tests that replay what they found).
//!
//! Not part of the relay's API: each function takes raw fuzzer bytes, runs one piece of the
//! pipeline on them, and panics only when an invariant the relay promises does not hold, so
//! libFuzzer reports exactly the inputs that break a promise (or crash the code).
//!
//! - [`session`]: a whole inbound SMTP session fed arbitrary client bytes; every complete
//!   message goes through the privacy policy and the header rewrite, checked by [`rewrite`]'s
//!   invariants. Replies must be well-formed SMTP reply lines.
//! - [`visible_recipients`]: the visible-set parser on an arbitrary message.
//! - [`rewrite`]: plan + header splice; the egress invariant (no copy shows another envelope
//!   recipient under any reading of the independent [`oracle`]), and every non-recipient
//!   field byte-for-byte unchanged.
//! - [`config`]: `Config::from_toml` on arbitrary text.
//! - [`recovery`]: spool recovery on damaged batch files; every intact record comes back.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    AccessConfig, BodyCheck, Config, PrivacyConfig, PrivacyMode, Secret, ServerConfig, User,
};
use crate::envelope::Envelope;
use crate::inbound::{Acceptor, InboundSettings, Transaction, Verdict};
use crate::privacy::{self, Decision, Rewrite};

/// Most envelope recipients the rewrite target derives from one input (keeps runs fast).
const MAX_FUZZ_RECIPIENTS: usize = 8;

pub mod oracle;
mod recovery;
use oracle::{Kind, Oracle};
pub use recovery::recovery;

/// Fuzzes one inbound session. The first byte selects the session's shape (pretend TLS,
/// configured users, relay access, write chunk size); the rest is what the client sends.
pub fn session(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let pretend_tls = flags & 1 != 0;
    let users = if flags & 2 != 0 {
        vec![User {
            name: "app".into(),
            password: Secret::new("secret"),
        }]
    } else {
        Vec::new()
    };
    let networks = if flags & 4 != 0 {
        Vec::new()
    } else {
        vec!["127.0.0.0/8".parse().expect("valid network")]
    };
    let chunk = [1, 7, 64, 4096][usize::from(flags >> 3) & 3];
    let settings = InboundSettings {
        server: ServerConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            hostname: "fuzz.test".into(),
            max_message_size: 4096,
            max_recipients: 5,
            max_connections: 1,
            command_timeout: Duration::from_secs(5),
            max_line_length: 512,
            max_connections_per_source: 1,
            reserved_connections: 0,
            unauthenticated_timeout: Duration::from_secs(5),
            max_data_memory: crate::config::DEFAULT_MAX_DATA_MEMORY,
            tls: None,
        },
        access: AccessConfig {
            networks,
            users,
            credentials: Default::default(),
            auth_failures_per_source: crate::config::DEFAULT_AUTH_FAILURES_PER_SOURCE,
            auth_failures_total: crate::config::DEFAULT_AUTH_FAILURES_TOTAL,
            auth_ban: crate::config::DEFAULT_AUTH_BAN,
        },
        apps: Default::default(),
    };
    let replies = RUNTIME.with(|runtime| {
        runtime.block_on(crate::inbound::fuzz::session(
            input,
            chunk,
            settings,
            Arc::new(PolicyAcceptor),
            pretend_tls,
        ))
    });
    check_replies(&replies);
}

thread_local! {
    /// One runtime per thread, reused by every input (building one per input is slow). Each
    /// session runs to completion inside `block_on`, so no task outlives its input.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
}

/// Every reply line is `ddd` then space or hyphen, ending in CRLF, and carries no bare CR/LF.
fn check_replies(replies: &[u8]) {
    for line in replies.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.len() >= 6 && line.ends_with(b"\r\n"),
            "malformed reply line {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            line[..3].iter().all(u8::is_ascii_digit) && (line[3] == b' ' || line[3] == b'-'),
            "malformed reply line {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            !line[..line.len() - 2].contains(&b'\r'),
            "bare CR in reply {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// The session target's acceptor: the privacy policy in split mode plus the rewrite checks,
/// the same pure steps the relay runs on a message before spooling it.
struct PolicyAcceptor;

impl Acceptor for PolicyAcceptor {
    fn accept(&self, tx: Transaction) -> impl Future<Output = Verdict> + Send {
        check_stored(&tx);
        check_copies(&tx.envelope, &tx.message, PrivacyMode::Split);
        async {
            Verdict::Accepted {
                queue_id: "FUZZ".into(),
            }
        }
    }
}

/// What the session stores is one unambiguous view: every CR followed by LF, every LF preceded
/// by CR, no NUL; envelope addresses with a local part, a valid domain and no control
/// characters, each recipient once.
fn check_stored(tx: &Transaction) {
    let m = &tx.message;
    assert!(!m.contains(&0), "NUL stored");
    for (i, &b) in m.iter().enumerate() {
        match b {
            b'\r' => assert!(m.get(i + 1) == Some(&b'\n'), "bare CR stored at {i}"),
            b'\n' => assert!(i > 0 && m[i - 1] == b'\r', "bare LF stored at {i}"),
            _ => {}
        }
    }
    let env = &tx.envelope;
    for address in std::iter::once(&env.mail_from).chain(&env.rcpt_to) {
        assert!(
            address.is_empty() || crate::envelope::mailbox(address).is_ok(),
            "unusable envelope address stored: {address:?}"
        );
    }
    let mut keys: Vec<String> = env
        .rcpt_to
        .iter()
        .map(|r| privacy::address::key(r))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), env.rcpt_to.len(), "duplicate recipient stored");
}

/// Fuzzes the visible-recipient parser: no panic, and its counts are consistent.
pub fn visible_recipients(data: &[u8]) {
    let trusted = vec!["trusted.test".to_string()];
    let seen = privacy::visible_recipients(data, &trusted);
    assert!(seen.counted <= seen.addresses.len());
    assert!(seen.visible(1) >= seen.counted);
    if seen.unparseable.is_some() {
        assert!(
            seen.visible(1) > 1,
            "an unparseable field must count as exposing"
        );
    }
    let _ = privacy::header_recipients(data);
    let _ = privacy::header_from(data);
}

/// Fuzzes plan + header rewrite. Input: optional extra envelope recipients, one per line,
/// before a NUL byte, then the message. The envelope is those plus the message's own
/// To/Cc/Bcc addresses; the mode comes from the input length so every mode is exercised.
pub fn rewrite(data: &[u8]) {
    let (rcpt_part, message) = match data.iter().position(|&b| b == 0) {
        Some(p) => (&data[..p], &data[p + 1..]),
        None => (&data[..0], data),
    };
    let mut rcpt_to: Vec<String> = Vec::new();
    let extra = rcpt_part
        .split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter(|l| plausible_mailbox(l))
        .map(str::to_string);
    // Only what RCPT TO accepts can be an envelope recipient.
    let from_header = privacy::header_recipients(message)
        .into_iter()
        .filter(|r| crate::envelope::mailbox(r).is_ok());
    for r in extra.chain(from_header) {
        if rcpt_to.len() < MAX_FUZZ_RECIPIENTS {
            rcpt_to.push(r);
        }
    }
    let envelope = Envelope {
        mail_from: "sender@fuzz.test".into(),
        rcpt_to,
    };
    let mode = match data.len() % 4 {
        0 => PrivacyMode::Bcc,
        1 => PrivacyMode::Monitor,
        _ => PrivacyMode::Split,
    };
    check_copies(&envelope, message, mode);
}

/// An address as an SMTP envelope can carry it (what smtp-proto lets through RCPT TO).
fn plausible_mailbox(s: &str) -> bool {
    !s.contains(char::REPLACEMENT_CHARACTER)
        && s.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !s
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>".contains(c))
}

/// Plans `message` for `envelope` and checks every copy against the promises: the egress
/// invariant judged by the independent [`oracle`], and the splice invariants (only recipient
/// fields, Bcc and DKIM-Signature removed; every other field byte for byte).
pub fn check_copies(envelope: &Envelope, message: &[u8], mode: PrivacyMode) {
    // The relay's one view of the bytes: CRLF only; a NUL is refused at DATA.
    let Ok(message) = privacy::bytes::crlf_only(message) else {
        return;
    };
    let message = message.as_ref();
    let config = PrivacyConfig {
        mode,
        max_visible_recipients: 1,
        trusted_domains: Vec::new(),
        body_check: BodyCheck::Reject,
    };
    let (exposure, plan) = privacy::assess(&config, envelope, message);
    if let Some(refusal) = &plan.refusal {
        assert!(plan.deliveries.is_empty(), "refused but delivered");
        assert_eq!(plan.decision, Decision::Reject, "{refusal:?}");
        return;
    }
    let distinct: std::collections::HashSet<String> =
        envelope.rcpt_to.iter().map(|r| r.to_lowercase()).collect();
    if plan.decision == Decision::Split {
        assert_eq!(
            plan.deliveries.len(),
            distinct.len(),
            "one copy per recipient"
        );
    }
    let body_start = privacy::body_offset(message);
    let original = Oracle::scan(&message[..body_start]);
    let originator = original.joined(Kind::From).to_lowercase();
    for delivery in &plan.deliveries {
        let header = privacy::render_header(message, &delivery.rewrite, &exposure);
        assert!(
            privacy::bytes::is_clean(&header),
            "bare CR, LF or NUL in a copy"
        );
        let copy = Oracle::scan(&header);
        assert_eq!(
            copy.count(Kind::Bcc) + copy.count(Kind::ResentBcc),
            0,
            "Bcc kept"
        );
        match &delivery.rewrite {
            Rewrite::Unchanged => {
                let expected =
                    original.fields_except(&[Kind::Bcc, Kind::ResentBcc, Kind::Received]);
                assert_same_fields(&expected, &copy.fields_except(&[Kind::Received]));
            }
            Rewrite::OnlyRecipient { address, .. } => {
                assert_eq!(delivery.rcpt_to, vec![address.clone()]);
                check_rewritten(&original, &copy);
            }
            Rewrite::Undisclosed => {
                check_rewritten(&original, &copy);
                assert_eq!(copy.joined(Kind::To), "To: undisclosed-recipients:;");
            }
        }
        if plan.decision == Decision::Monitor {
            continue;
        }
        // The egress invariant: no copy shows an envelope recipient other than its own single
        // recipient, under any reading the oracle knows.
        let own = match delivery.rcpt_to.as_slice() {
            [only] => Some(only.to_lowercase()),
            _ => None,
        };
        for other in &distinct {
            if own.as_ref() == Some(other) || originator.contains(other.as_str()) {
                continue;
            }
            assert!(
                !oracle::shows(&header, other),
                "copy for {own:?} shows {other:?}:\n{}",
                String::from_utf8_lossy(&header)
            );
        }
    }
}

/// A rewritten copy: exactly one `To`, no other recipient field, `Bcc` or `DKIM-Signature`,
/// and every other field of the original in order and byte for byte (the last may gain the
/// line ending it lacked; a `Received` field may lose a `for` clause).
fn check_rewritten(original: &Oracle<'_>, copy: &Oracle<'_>) {
    assert_eq!(copy.count(Kind::To), 1, "exactly one To field");
    for k in Kind::REWRITE_REMOVES.iter().filter(|&&k| k != Kind::To) {
        assert_eq!(copy.count(*k), 0, "{k:?} field kept in a rewritten copy");
    }
    let mut removed = Kind::REWRITE_REMOVES.to_vec();
    removed.push(Kind::Received);
    let expected = original.fields_except(&removed);
    assert_same_fields(&expected, &copy.fields_except(&[Kind::To, Kind::Received]));
    assert_eq!(
        original.end, copy.end,
        "the empty line ending the header block changed"
    );
}

fn assert_same_fields(expected: &[&[u8]], got: &[&[u8]]) {
    assert_eq!(expected.len(), got.len(), "field count changed");
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        let last = i + 1 == expected.len();
        let same = e == g
            || (last
                && !e.ends_with(b"\n")
                && g.starts_with(e)
                && matches!(&g[e.len()..], b"\r\n" | b"\n"));
        assert!(
            same,
            "field {i} changed: {:?} -> {:?}",
            String::from_utf8_lossy(e),
            String::from_utf8_lossy(g)
        );
    }
}

/// Fuzzes config parsing: `Config::from_toml` returns a config or problems, never panics.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        // Secret files are read by path; never let the fuzzer name one (it could be a device
        // such as /dev/zero). Keys can be spelt with escapes (`"password\u005ffile"`), so any
        // escape is refused too.
        if text.contains("_file") || text.contains("\\u") || text.contains("\\U") {
            return;
        }
        let _ = Config::from_toml(text);
    }
}
