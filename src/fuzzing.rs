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
//! - [`rewrite`]: plan + header splice; for each split copy no other envelope recipient in
//!   its address fields, and every non-address field byte-for-byte unchanged.
//! - [`config`]: `Config::from_toml` on arbitrary text.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{AccessConfig, Config, PrivacyConfig, PrivacyMode, Secret, ServerConfig, User};
use crate::envelope::Envelope;
use crate::inbound::{Acceptor, InboundSettings, Transaction, Verdict};
use crate::privacy::{self, Decision, Rewrite};

/// Most envelope recipients the rewrite target derives from one input (keeps runs fast).
const MAX_FUZZ_RECIPIENTS: usize = 8;

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
            tls: None,
        },
        access: AccessConfig { networks, users },
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
    for r in extra.chain(privacy::header_recipients(message)) {
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
    s.split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !s
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>".contains(c))
}

/// Plans `message` for `envelope` and checks every copy's header against the promises.
fn check_copies(envelope: &Envelope, message: &[u8], mode: PrivacyMode) {
    let config = PrivacyConfig {
        mode,
        max_visible_recipients: 1,
        trusted_domains: Vec::new(),
    };
    let plan = privacy::plan(&config, envelope, message);
    if plan.decision == Decision::Split {
        assert_eq!(plan.deliveries.len(), envelope.rcpt_to.len());
    }
    let body_start = privacy::body_offset(message);
    let original = Oracle::scan(&message[..body_start]);
    for delivery in &plan.deliveries {
        let header = privacy::render_header(message, &delivery.rewrite);
        let copy = Oracle::scan(&header);
        match &delivery.rewrite {
            Rewrite::Unchanged => {
                assert_eq!(copy.count(Kind::Bcc), 0, "Bcc kept");
                let expected: Vec<&[u8]> = original
                    .fields
                    .iter()
                    .filter(|f| f.0 != Kind::Bcc)
                    .map(|f| f.1)
                    .collect();
                assert_same_fields(&expected, &copy.fields_except(&[]));
            }
            Rewrite::OnlyRecipient { address, .. } => {
                assert_eq!(delivery.rcpt_to, vec![address.clone()]);
                check_rewritten(&original, &copy);
                let to = copy.joined(Kind::To).to_lowercase();
                let own = address.to_lowercase();
                let copy_message = [header.as_slice(), b"\r\n"].concat();
                let decoded = decoded_to(&copy_message).to_lowercase();
                for other in &envelope.rcpt_to {
                    let other = other.to_lowercase();
                    if own.contains(&other) {
                        continue;
                    }
                    assert!(
                        !shows_token(&to, &other) && !decoded.contains(&other),
                        "copy for {own:?} shows {other:?}: {to:?} / {decoded:?}"
                    );
                }
                let seen = privacy::visible_recipients(&copy_message, &[]);
                for a in &seen.addresses {
                    assert_eq!(
                        a.address.to_lowercase(),
                        own,
                        "copy for {own:?} shows another address"
                    );
                }
            }
            Rewrite::Undisclosed => {
                check_rewritten(&original, &copy);
                assert_eq!(copy.joined(Kind::To), "To: undisclosed-recipients:;");
            }
        }
    }
}

/// A rewritten copy: exactly one `To`, no `Cc`/`Bcc`/`DKIM-Signature`, and every other field
/// of the original in order and byte for byte (the last may gain the line ending it lacked).
fn check_rewritten(original: &Oracle<'_>, copy: &Oracle<'_>) {
    assert_eq!(copy.count(Kind::To), 1, "exactly one To field");
    for k in [Kind::Cc, Kind::Bcc, Kind::Dkim] {
        assert_eq!(copy.count(k), 0, "{k:?} field kept in a rewritten copy");
    }
    let expected: Vec<&[u8]> = original
        .fields_except(&[Kind::To, Kind::Cc, Kind::Bcc, Kind::Dkim])
        .to_vec();
    assert_same_fields(&expected, &copy.fields_except(&[Kind::To]));
    assert_eq!(
        original.end, copy.end,
        "the empty line ending the header block changed"
    );
}

/// True when `address` occurs in `text`, outside quoted strings, as a token a reader could
/// take for an address: not glued to other address characters on either side. So `"@z`
/// inside `"to:ai@ay"@z`, the quoted form of a different address, does not count. (Quoted
/// display names are checked through what mail-parser decodes.)
fn shows_token(text: &str, address: &str) -> bool {
    let mut outside = String::with_capacity(text.len());
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        let was_quoted = quoted;
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
        outside.push(if was_quoted || quoted { ' ' } else { c });
    }
    let text = outside.as_str();
    let boundary = |c: Option<char>| c.is_none_or(|c| c.is_whitespace() || "<>,;:()".contains(c));
    text.match_indices(address).any(|(i, m)| {
        boundary(text[..i].chars().next_back()) && boundary(text[i + m.len()..].chars().next())
    })
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

/// The copy's `To` display names and addresses as a reader's mail program shows them
/// (mail-parser, which decodes RFC 2047).
fn decoded_to(message: &[u8]) -> String {
    let Some(parsed) = mail_parser::MessageParser::default().parse_headers(message) else {
        return String::new();
    };
    let mut out = String::new();
    if let Some(to) = parsed.to() {
        for a in to.iter() {
            out.push_str(a.name.as_deref().unwrap_or(""));
            out.push(' ');
            out.push_str(a.address.as_deref().unwrap_or(""));
            out.push('\n');
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    To,
    Cc,
    Bcc,
    Dkim,
    From,
    Other,
}

/// An independent header splitter, written from the rules the privacy module documents (a
/// field starts at a line `name[WSP]:`, or where a lenient reader that ignores white space
/// before the colon would read an address field name; any other line continues the previous
/// one; the header ends at the first empty line), so the checks do not trust the code they
/// check.
struct Oracle<'a> {
    fields: Vec<(Kind, &'a [u8])>,
    /// The empty line ending the block (empty when there is none).
    end: &'a [u8],
}

impl<'a> Oracle<'a> {
    fn scan(header: &'a [u8]) -> Oracle<'a> {
        let mut starts: Vec<(Kind, usize)> = Vec::new();
        let mut pos = 0;
        let mut end: &'a [u8] = &[];
        // Whether a lenient reader looks for a field name at the start of the current line.
        let mut seeking_name = true;
        while pos < header.len() {
            let line_end = header[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(header.len(), |i| pos + i + 1);
            let line = &header[pos..line_end];
            if line == b"\n" || line == b"\r\n" {
                end = line;
                break;
            }
            let folded = line.starts_with(b" ") || line.starts_with(b"\t");
            let lenient = if seeking_name || !folded {
                Self::lenient_kind(line)
            } else {
                None
            };
            seeking_name = (seeking_name || !folded) && lenient.is_none();
            let lenient = lenient.filter(|&k| k != Kind::Other);
            match Self::field_kind(line).or(lenient) {
                Some(kind) => starts.push((kind, pos)),
                // Lines before the first field form a field of their own.
                None if starts.is_empty() => starts.push((Kind::Other, pos)),
                None => {}
            }
            pos = line_end;
        }
        let fields_end = pos;
        let fields = starts
            .iter()
            .enumerate()
            .map(|(i, &(kind, start))| {
                let stop = starts.get(i + 1).map_or(fields_end, |s| s.1);
                (kind, &header[start..stop])
            })
            .collect();
        Oracle { fields, end }
    }

    fn field_kind(line: &[u8]) -> Option<Kind> {
        let name_len = line
            .iter()
            .take_while(|&&b| (33..=126).contains(&b) && b != b':')
            .count();
        if name_len == 0 {
            return None;
        }
        let rest = &line[name_len..];
        let ws = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if rest.get(ws) != Some(&b':') {
            return None;
        }
        let name = String::from_utf8_lossy(&line[..name_len]).to_ascii_lowercase();
        Some(match name.as_str() {
            "to" => Kind::To,
            "cc" => Kind::Cc,
            "bcc" => Kind::Bcc,
            "dkim-signature" => Kind::Dkim,
            "from" => Kind::From,
            _ => Kind::Other,
        })
    }

    /// The kind of field a reader that drops white space before the colon sees on `line`.
    fn lenient_kind(line: &[u8]) -> Option<Kind> {
        let colon = line.iter().position(|&b| b == b':')?;
        let name: String = String::from_utf8_lossy(&line[..colon])
            .chars()
            .filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\x0c' | '\n'))
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            return None;
        }
        // Any name counts (it ends the reader's search), even one no strict rule accepts.
        Some(Self::field_kind(format!("{name}:").as_bytes()).unwrap_or(Kind::Other))
    }

    fn count(&self, kind: Kind) -> usize {
        self.fields.iter().filter(|f| f.0 == kind).count()
    }

    fn fields_except(&self, kinds: &[Kind]) -> Vec<&'a [u8]> {
        self.fields
            .iter()
            .filter(|f| !kinds.contains(&f.0))
            .map(|f| f.1)
            .collect()
    }

    /// The fields of `kind`, joined, with line endings removed.
    fn joined(&self, kind: Kind) -> String {
        let bytes: Vec<u8> = self
            .fields
            .iter()
            .filter(|f| f.0 == kind)
            .flat_map(|f| f.1.iter().copied())
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
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
