//! Property tests for the privacy promise: whatever mix of header fields an application sends,
//! a split copy shows its own recipient and nobody else, keeps every other header field
//! byte-for-byte in order, and carries the body unchanged.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailveil::config::{BodyCheck, PrivacyConfig, PrivacyMode};
use mailveil::envelope::Envelope;
use mailveil::fuzzing::oracle;
use mailveil::privacy::{Decision, Rewrite, assess, body_offset, plan, render_header};
use proptest::prelude::*;

const DOMAINS: [&str; 3] = ["example.com", "mail.test", "x.org"];

/// Distinct addresses none of which contains another: each holds a unique `u<NNN>` and the
/// random part has no digits.
fn pool() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(("[a-z]{1,6}", 0..DOMAINS.len()), 2..8).prop_map(|parts| {
        parts
            .into_iter()
            .enumerate()
            .map(|(i, (local, d))| format!("u{i:03}{local}@{}", DOMAINS[d]))
            .collect()
    })
}

/// The address as an application might spell it: random letters upper-cased.
fn case_variant(address: &str, mask: u64) -> String {
    address
        .chars()
        .enumerate()
        .map(|(j, c)| {
            if mask >> (j % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Mailbox {
    idx: usize,
    form: u8,
    name: String,
    mask: u64,
    other: usize,
}

fn mailbox() -> impl Strategy<Value = Mailbox> {
    (
        0..8usize,
        0..7u8,
        "[A-Za-z ,.\"\\\\()'\u{e9}\u{fc}\u{4e2d}]{0,12}",
        any::<u64>(),
        0..8usize,
    )
        .prop_map(|(idx, form, name, mask, other)| Mailbox {
            idx,
            form,
            name,
            mask,
            other,
        })
}

fn render_mailbox(m: &Mailbox, pool: &[String]) -> String {
    let addr = case_variant(&pool[m.idx % pool.len()], m.mask);
    let plain: String = m
        .name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
        .collect();
    match m.form {
        0 => addr,
        1 => format!("<{addr}>"),
        2 => format!(
            "\"{}\" <{addr}>",
            m.name.replace('\\', "\\\\").replace('"', "\\\"")
        ),
        3 if !m.name.is_empty() => {
            format!("=?utf-8?b?{}?= <{addr}>", STANDARD.encode(&m.name))
        }
        4 => format!("{addr} ({plain})"),
        5 if !plain.trim().is_empty() => format!("{} <{addr}>", plain.trim()),
        // A display name that is another recipient's address.
        6 => format!("\"{}\" <{addr}>", pool[m.other % pool.len()]),
        _ => format!("\n <{addr}>"),
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Mailbox(Mailbox),
    Group(String, Vec<Mailbox>),
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        4 => mailbox().prop_map(Entry::Mailbox),
        1 => ("[A-Za-z]{1,8}", prop::collection::vec(mailbox(), 0..3))
            .prop_map(|(n, ms)| Entry::Group(n, ms)),
    ]
}

#[derive(Debug, Clone)]
enum Spec {
    /// To (false) or Cc (true), spelling of the name, entries, separators.
    Address(bool, u8, Vec<Entry>, Vec<u8>),
    Bcc(Vec<Mailbox>),
    Dkim(bool),
    Other(u8, u8, Vec<String>, Vec<u8>),
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        3 => (any::<bool>(), 0..4u8, prop::collection::vec(entry(), 0..5), prop::collection::vec(0..4u8, 5))
            .prop_map(|(cc, n, e, s)| Spec::Address(cc, n, e, s)),
        1 => prop::collection::vec(mailbox(), 1..3).prop_map(Spec::Bcc),
        1 => any::<bool>().prop_map(Spec::Dkim),
        4 => (0..8u8, 0..3u8, prop::collection::vec("[A-Za-z0-9;=.<>-]{0,10}", 1..4), prop::collection::vec(0..5u8, 4))
            .prop_map(|(n, sp, w, f)| Spec::Other(n, sp, w, f)),
    ]
}

const OTHER_NAMES: [&str; 8] = [
    "Subject",
    "X-Mailer",
    "Received",
    "Message-ID",
    "Date",
    "x-trace",
    "MIME-Version",
    "From",
];

/// One field's bytes with `\n` line endings; whether it is To/Cc, and whether it must survive.
fn render_spec(s: &Spec, pool: &[String]) -> (String, bool, bool) {
    match s {
        Spec::Address(cc, spelling, entries, seps) => {
            let name = if *cc {
                ["Cc", "cc", "CC", "cC"][*spelling as usize]
            } else {
                ["To", "to", "TO", "tO"][*spelling as usize]
            };
            let mut value = String::new();
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    value.push_str([", ", ",\n ", ",\n\t", " ,  "][seps[i % seps.len()] as usize]);
                }
                match e {
                    Entry::Mailbox(m) => value.push_str(&render_mailbox(m, pool)),
                    Entry::Group(n, ms) => {
                        let members: Vec<String> =
                            ms.iter().map(|m| render_mailbox(m, pool)).collect();
                        value.push_str(&format!("{n}: {};", members.join(", ")));
                    }
                }
            }
            (format!("{name}: {value}\n"), true, false)
        }
        Spec::Bcc(ms) => {
            let list: Vec<String> = ms.iter().map(|m| render_mailbox(m, pool)).collect();
            (format!("Bcc: {}\n", list.join(",\n ")), false, false)
        }
        Spec::Dkim(lower) => {
            let name = if *lower {
                "dkim-signature"
            } else {
                "DKIM-Signature"
            };
            (
                format!("{name}: v=1; a=rsa-sha256;\n\tb=AbC=\n"),
                false,
                false,
            )
        }
        Spec::Other(n, spacing, words, folds) => {
            let mut value = String::new();
            for (i, w) in words.iter().enumerate() {
                value
                    .push_str([" ", "  ", "\n ", "\n\t", "\n   "][folds[i % folds.len()] as usize]);
                value.push_str(w);
            }
            let name = OTHER_NAMES[*n as usize];
            let field = match (name, spacing) {
                ("From", _) => "From: app@sender.test\n".to_string(),
                (_, 0) => format!("{name}:{value}\n"),
                (_, 1) => format!("{name} :{value}  \n"),
                _ => format!("{name}:{value}\n"),
            };
            (field, false, true)
        }
    }
}

/// Splits a header block into fields (a line starting with white space continues a field).
fn split_fields(header: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in header.split_inclusive('\n') {
        if pos > start && !line.starts_with([' ', '\t']) {
            out.push(&header[start..pos]);
            start = pos;
        }
        pos += line.len();
    }
    if pos > start {
        out.push(&header[start..pos]);
    }
    out
}

#[derive(Debug, Clone)]
struct Case {
    pool: Vec<String>,
    specs: Vec<Spec>,
    envelope: Vec<(usize, u64)>,
    crlf: bool,
    body: Option<String>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        pool(),
        prop::collection::vec(spec(), 0..10),
        prop::collection::vec((0..8usize, any::<u64>()), 1..6),
        any::<bool>(),
        proptest::option::of("[A-Za-z0-9 .,:<>\n-]{0,60}"),
    )
        .prop_map(|(pool, specs, envelope, crlf, body)| Case {
            pool,
            specs,
            envelope,
            crlf,
            body,
        })
}

fn check(c: &Case) -> Result<(), TestCaseError> {
    // The relay plans CRLF-only bytes (its DATA decoder turns bare LF into CRLF); bare-LF
    // input is generated and normalised the same way.
    let eol = "\r\n";
    let pool = &c.pool;
    let mut header = String::new();
    let mut survivors = String::new();
    let mut others_before_first_to: Option<usize> = None;
    let mut others = 0;
    for s in &c.specs {
        let (field, is_to_cc, survives) = render_spec(s, pool);
        let field = field.replace('\n', eol);
        if is_to_cc && others_before_first_to.is_none() {
            others_before_first_to = Some(others);
        }
        if survives {
            survivors.push_str(&field);
            others += 1;
        }
        header.push_str(&field);
    }
    let body = c.body.as_deref().map(|b| b.replace('\n', eol));
    let message = match &body {
        Some(b) => format!("{header}{eol}{b}"),
        None => header.clone(),
    };
    let bare_lf = message.replace("\r\n", "\n");
    let normalised = mailveil::privacy::bytes::crlf_only(bare_lf.as_bytes()).unwrap();
    prop_assert_eq!(normalised.as_ref(), message.as_bytes());
    let message = if c.crlf {
        message.as_bytes()
    } else {
        normalised.as_ref()
    };
    let body = body.unwrap_or_default();

    // The body is found where it was put, whatever the header holds.
    prop_assert_eq!(&message[body_offset(message)..], body.as_bytes());

    // Expected |V|: distinct pool addresses the To/Cc fields show, names included. A display
    // name showing another address (form 6) does not parse as one mailbox, so the message
    // also fails closed.
    let mut visible: Vec<usize> = Vec::new();
    let mut fails_closed = false;
    for s in &c.specs {
        if let Spec::Address(_, _, entries, _) = s {
            for e in entries {
                let ms = match e {
                    Entry::Mailbox(m) => std::slice::from_ref(m),
                    Entry::Group(_, ms) => ms.as_slice(),
                };
                visible.extend(ms.iter().map(|m| m.idx % pool.len()));
                for m in ms.iter().filter(|m| m.form == 6) {
                    visible.push(m.other % pool.len());
                    fails_closed |= m.other % pool.len() != m.idx % pool.len();
                }
            }
        }
    }
    visible.sort_unstable();
    visible.dedup();

    let mut rcpt_idx: Vec<usize> = Vec::new();
    let mut rcpt_to = Vec::new();
    for &(i, mask) in &c.envelope {
        let i = i % pool.len();
        if !rcpt_idx.contains(&i) {
            rcpt_idx.push(i);
            rcpt_to.push(case_variant(&pool[i], mask));
        }
    }
    let envelope = Envelope {
        mail_from: "app@sender.test".into(),
        rcpt_to: rcpt_to.clone(),
    };
    let config = |max| PrivacyConfig {
        mode: PrivacyMode::Split,
        max_visible_recipients: max,
        trusted_domains: Vec::new(),
        body_check: BodyCheck::Reject,
    };

    // |V| is exact; the decision is per copy: unchanged only when no recipient would see an
    // address other than its own (SPEC v2: the mail-merge `To: a` to a, b is exposing).
    let expected = if fails_closed {
        visible.len().max(2)
    } else {
        visible.len()
    };
    let p = plan(&config(1), &envelope, message);
    prop_assert_eq!(
        p.visible,
        expected,
        "message: {:?}",
        String::from_utf8_lossy(message)
    );
    let exposing = fails_closed || rcpt_idx.iter().any(|r| visible.iter().any(|v| v != r));
    prop_assert_eq!(
        p.decision,
        if exposing {
            Decision::Split
        } else {
            Decision::Pass
        }
    );

    // Split copies (forced with a threshold of 0 so every case exercises the rewrite).
    let (exposure, p) = assess(&config(0), &envelope, message);
    let rewrites: Vec<Rewrite> = if p.decision == Decision::Split {
        prop_assert_eq!(p.deliveries.len(), rcpt_to.len());
        p.deliveries.iter().map(|d| d.rewrite.clone()).collect()
    } else {
        rcpt_to
            .iter()
            .map(|r| Rewrite::OnlyRecipient {
                address: r.clone(),
                display_name: None,
            })
            .collect()
    };
    for (k, rewrite) in rewrites.iter().enumerate() {
        let own = rcpt_idx[k];
        let h = render_header(message, rewrite, &exposure);
        for (j, other) in pool.iter().enumerate() {
            if j != own {
                prop_assert!(!oracle::shows(&h, other), "oracle: {other} shown to {own}");
            }
        }
        let copy = [h.as_slice(), body.as_bytes()].concat();
        let text = String::from_utf8(copy).expect("utf-8 copy").to_lowercase();
        prop_assert!(text.contains(&pool[own]), "own address missing: {text:?}");
        for (j, other) in pool.iter().enumerate() {
            if j != own {
                prop_assert!(!text.contains(other), "{other} leaked into {text:?}");
            }
        }
        // Other fields survive byte-for-byte, in order, and the new To: sits where the first
        // To/Cc was.
        let h = String::from_utf8(h).unwrap();
        let block = match h.strip_suffix(eol) {
            Some(b) if !h.is_empty() && message.len() > header.len() => b,
            _ => h.as_str(),
        };
        let fields = split_fields(block);
        let to_at: Vec<usize> = (0..fields.len())
            .filter(|&i| fields[i].to_ascii_lowercase().starts_with("to:"))
            .collect();
        prop_assert_eq!(to_at.len(), 1, "{:?}", fields);
        prop_assert_eq!(to_at[0], others_before_first_to.unwrap_or(others));
        let kept: String = fields
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != to_at[0])
            .map(|(_, f)| *f)
            .collect();
        prop_assert_eq!(kept, survivors.clone());
    }

    // Bcc mode shows nobody's address.
    let h = render_header(message, &Rewrite::Undisclosed, &exposure);
    let text = String::from_utf8(h).unwrap().to_lowercase();
    for a in pool {
        prop_assert!(!text.contains(a), "{a} in bcc-mode header {text:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn split_copies_show_only_their_recipient(c in case()) {
        check(&c)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile messages: recipients' addresses hidden wherever a lenient reader still finds them
// (SPEC "Privacy policy", version 2). Whatever the policy decides, every copy it lets leave must
// pass the independent oracle: no private address other than the copy's own recipient under
// any of the oracle's readings. Refusing is always allowed; leaking never is.

/// How one address is written where it is placed.
fn disguise(address: &str, how: u8, filler: &str) -> String {
    let (local, domain) = address.split_once('@').unwrap();
    let q = |s: &str| s.bytes().map(|b| format!("={b:02X}")).collect::<String>();
    match how % 14 {
        0 => address.to_string(),
        1 => format!("<{}>", address.to_uppercase()),
        2 => format!("\"{filler}\" <{address}>"),
        3 => format!("=?utf-8?q?{}?=", q(address)),
        4 => format!("=?UTF-8?B?{}?=", STANDARD.encode(address)),
        // Encoded twice: a client that decodes the result again sees the address.
        5 => format!(
            "=?utf-8?b?{}?=",
            STANDARD.encode(format!("=?utf-8?q?{}?=", q(address)))
        ),
        6 => format!("{local}\u{ff20}{domain}"),
        7 => format!("{local}\u{200b}@{domain}"),
        8 => format!("{local}(note)@{domain}"),
        9 => format!("{local} @ {domain}"),
        10 => format!("mailto:{local}%40{domain}"),
        11 => format!("\"{address}\" <{filler}@sender.test>"),
        12 => format!("\"{filler}, {address}\": notices@sender.test;"),
        _ => format!("=?utf-8?q?{filler}?= <{address}>"),
    }
}

const HOSTILE_FIELDS: [&str; 14] = [
    "To",
    "cc",
    "BCC",
    "Reply-To",
    "X-Customer-List",
    "Resent-To",
    "Resent-Bcc",
    "Mail-Followup-To",
    "Disposition-Notification-To",
    "Comments",
    "Subject",
    "T o",
    "Apparently-To",
    "In-Reply-To",
];

/// Field names whose addresses are recipients' (private) addresses.
fn is_recipient_field(name: &str) -> bool {
    let name: String = name.chars().filter(|c| !c.is_whitespace()).collect();
    [
        "to",
        "cc",
        "bcc",
        "resent-to",
        "resent-bcc",
        "mail-followup-to",
        "apparently-to",
    ]
    .contains(&name.to_ascii_lowercase().as_str())
}

#[derive(Debug, Clone)]
struct Placement {
    field: usize,
    address: usize,
    how: u8,
    /// 0: on its own field line; 1: on a continuation line; 2: after a bare CR; 3: after a
    /// bare LF.
    line: u8,
}

#[derive(Debug, Clone)]
struct Hostile {
    pool: Vec<String>,
    placements: Vec<Placement>,
    envelope: Vec<usize>,
    mode: u8,
    filler: String,
    /// An address in the body (index into the pool), and how the body carries it.
    body: Option<(usize, u8)>,
    leading_tab: bool,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    (
        pool(),
        prop::collection::vec(
            (0..HOSTILE_FIELDS.len(), 0..8usize, any::<u8>(), 0..4u8).prop_map(
                |(field, address, how, line)| Placement {
                    field,
                    address,
                    how,
                    line,
                },
            ),
            1..6,
        ),
        prop::collection::vec(0..8usize, 1..5),
        0..4u8,
        "[A-Za-z]{1,8}",
        proptest::option::of((0..8usize, 0..4u8)),
        any::<bool>(),
    )
        .prop_map(
            |(pool, placements, envelope, mode, filler, body, leading_tab)| Hostile {
                pool,
                placements,
                envelope,
                mode,
                filler,
                body,
                leading_tab,
            },
        )
}

fn hostile_body(address: &str, how: u8) -> String {
    match how {
        0 => format!("Content-Type: text/plain\r\n\r\nYour address: {address}\r\n"),
        1 => format!(
            "Content-Type: text/html\r\n\r\n<p>{}</p>\r\n",
            address.replace('@', "&#64;")
        ),
        2 => format!(
            "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}=\r\n@{}\r\n",
            address.split('@').next().unwrap(),
            address.split('@').nth(1).unwrap()
        ),
        _ => format!(
            "Content-Type: text/csv; name=list.csv\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            STANDARD.encode(format!("name,email\r\nX,{address}\r\n"))
        ),
    }
}

fn check_hostile(h: &Hostile) -> Result<(), TestCaseError> {
    let pool = &h.pool;
    let mut header = String::from("From: app@sender.test\r\n");
    if h.leading_tab {
        // The relay prepends its Received field: a leading tab line continues it.
        header.insert_str(
            0,
            "Received: from app ([127.0.0.1]) by relay; Tue, 1 Dec 2026\r\n\t",
        );
    }
    let mut private: Vec<usize> = Vec::new();
    for p in &h.placements {
        let name = HOSTILE_FIELDS[p.field];
        let a = p.address % pool.len();
        let text = disguise(&pool[a], p.how, &h.filler);
        if is_recipient_field(name) {
            private.push(a);
        }
        let field = match p.line {
            0 => format!("{name}: {text}\r\n"),
            1 => format!("{name}: x,\r\n\t{text}\r\n"),
            2 => format!("X-A: 1\r{name}: {text}\r\n"),
            _ => format!("X-B: 2\n{name}: {text}\r\n"),
        };
        header.push_str(&field);
    }
    let (mime, body) = match h.body {
        Some((a, how)) => (
            "MIME-Version: 1.0\r\n",
            hostile_body(&pool[a % pool.len()], how),
        ),
        None => ("", "\r\nhello\r\n".to_string()),
    };
    let raw = format!("{header}{mime}{body}");
    let message = mailveil::privacy::bytes::crlf_only(raw.as_bytes()).unwrap();
    let message = message.as_ref();
    let mut rcpts: Vec<usize> = Vec::new();
    for &r in &h.envelope {
        if !rcpts.contains(&(r % pool.len())) {
            rcpts.push(r % pool.len());
        }
    }
    private.extend(rcpts.iter().copied());
    private.sort_unstable();
    private.dedup();
    let envelope = Envelope {
        mail_from: "app@sender.test".into(),
        rcpt_to: rcpts.iter().map(|&i| pool[i].clone()).collect(),
    };
    let mode = [
        PrivacyMode::Split,
        PrivacyMode::Bcc,
        PrivacyMode::Reject,
        PrivacyMode::Monitor,
    ][h.mode as usize];
    let config = PrivacyConfig {
        mode,
        max_visible_recipients: 1,
        trusted_domains: Vec::new(),
        body_check: BodyCheck::Reject,
    };
    let (exposure, p) = assess(&config, &envelope, message);
    if p.refusal.is_some() {
        prop_assert!(p.deliveries.is_empty());
        return Ok(());
    }
    if p.decision == Decision::Monitor {
        return Ok(());
    }
    let body_start = body_offset(message);
    for d in &p.deliveries {
        let copy = render_header(message, &d.rewrite, &exposure);
        let own: Option<usize> = match d.rcpt_to.as_slice() {
            [only] => pool.iter().position(|a| a == only),
            _ => None,
        };
        for &a in private.iter().filter(|&&a| Some(a) != own) {
            prop_assert!(
                !oracle::shows(&copy, &pool[a]),
                "copy to {:?} shows {}:\n{}",
                d.rcpt_to,
                pool[a],
                String::from_utf8_lossy(&copy)
            );
        }
        // The body goes to every copy: a private address in it is only fine for a message
        // with that one recipient.
        if let Some((a, _)) = h.body {
            let a = a % pool.len();
            if private.contains(&a) {
                prop_assert!(
                    own == Some(a) && p.deliveries.len() == 1,
                    "body shows {} to {:?}: {:?}",
                    pool[a],
                    d.rcpt_to,
                    String::from_utf8_lossy(&message[body_start..])
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn hostile_messages_never_leak(h in hostile()) {
        check_hostile(&h)?;
    }
}
