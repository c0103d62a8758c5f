//! The leak classes of issue 10, tried as an attacker would, through the real `mailveil run`
//! binary and real SMTP clients (Python's smtplib, lettre, a raw socket where a library would
//! normalise the bytes).
//!
//! Each test generates several variants of one class (field names and their case, folding,
//! RFC 2047 B/Q and double encodings, positions in the header, with and without display names)
//! and sends them all through one relay per privacy mode (split, bcc, reject). For every
//! message, either it was refused (5xx at end of DATA, no copy delivered) or no delivered copy
//! shows a private address other than its own recipient's, judged by
//! `mailveil::fuzzing::oracle` and by an outside view (Python's `email` package,
//! `tests/support/outside_view.py`). Reject mode refuses every exposing variant; the
//! mail-merge message is split, not refused. Every delivered copy is CRLF-only without NUL,
//! every accepted message reaches each of its recipients exactly once, and the relay's log
//! never shows a raw address. See `tests/support/leaks.rs` for the harness.
//!
//! The dedicated outbound-bytes test (raw DATA recorded by a scripted upstream) lives in
//! `tests/relay_e2e.rs` with the DATA decoder that makes it pass; here the same sequences
//! (class 4) go through the privacy checks.

use crate::support;
use crate::support::leaks;
use crate::support::scripted_smtp;

use leaks::*;
use scripted_smtp::{Script, ScriptedSmtp, Step};

fn s(text: impl Into<String>) -> String {
    text.into()
}

fn local(address: &str) -> &str {
    address.split_once('@').map_or(address, |(l, _)| l)
}

fn domain(address: &str) -> &str {
    address.split_once('@').map_or("", |(_, d)| d)
}

/// The standard fields, an undisclosed `To` and `extra` lines at `position`: a message whose
/// only exposure is what `extra` holds.
fn undisclosed(extra: &[String], position: usize, body: &str) -> Vec<u8> {
    let mut lines = with_fields(extra, position);
    lines.push(s("To: undisclosed-recipients:;"));
    mail(&lines, body)
}

// ---------------------------------------------------------------------------------------
// 1. Views differ: a first DATA line starting with white space continues our own Received.

fn leading_whitespace_cases() -> Vec<Case> {
    let mut kit = Kit::new("k1");
    let leads = ["\t", " ", "  ", "\t\t", " \t"];
    let names = ["To", "Bcc", "Cc", "Resent-To", "tO", "X-Customers", "bcc"];
    let mut cases = Vec::new();
    for (v, name) in names.iter().enumerate() {
        let (lead, lead2) = (leads[v % leads.len()], leads[(v + 2) % leads.len()]);
        let k = kit.cast();
        // The whole list on the first line; no To of its own.
        let first = format!("{lead}{name}: {}, {}, {}\r\n", k.a, k.b, k.c);
        let rest = mail(&with_fields(&[], 0), "Hello.\r\n");
        cases.push(
            Case::exposing(
                format!("1 {name:?} after {lead:?}, one line"),
                &k.abc(),
                [first.into_bytes(), rest].concat(),
            )
            .raw()
            .inspect(),
        );
        // Display names, folded over two indented lines, and a proper To further down.
        let k = kit.cast();
        let first = format!(
            "{lead}{name}: \"Ann\" <{}>,\r\n{lead2}\"Bob\" <{}>, {}\r\n",
            k.a, k.b, k.c
        );
        let rest = mail(&with_fields(&[format!("To: {}", k.a)], 2), "Hello.\r\n");
        cases.push(
            Case::exposing(
                format!("1 {name:?} after {lead:?}, folded, named, To below"),
                &k.abc(),
                [first.into_bytes(), rest].concat(),
            )
            .raw()
            .inspect(),
        );
    }
    // Not first, but after a field whose value is empty: the same continuation, one field on.
    for name in ["X-Mailer", "Subject"] {
        let k = kit.cast();
        let lines = [
            format!("{name}:"),
            format!("\tTo: {}, {}, {}", k.a, k.b, k.c),
            s(FROM),
            s(MID),
        ];
        cases.push(
            Case::exposing(
                format!("1 To continuing an empty {name}"),
                &k.abc(),
                mail(&lines, "Hello.\r\n"),
            )
            .raw()
            .inspect(),
        );
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class1_leading_whitespace_never_hides_a_list_in_our_received_field() {
    run_all_modes("class 1 (views differ)", leading_whitespace_cases()).await;
}

// ---------------------------------------------------------------------------------------
// 2. Addresses outside the address list: group names, encoded names, compatibility forms,
//    comments.

/// Ways to show `b` and `c` in an address field without listing them as mailboxes. Each is
/// the field value; `a` is the one real mailbox where there is one.
fn hidden_forms(a: &str, b: &str, c: &str) -> Vec<(&'static str, String)> {
    let (bl, bd) = (local(b), domain(b));
    let gb2312 = {
        let mut bytes = bl.as_bytes().to_vec();
        bytes.extend([0xa3, 0xc0]); // FULLWIDTH COMMERCIAL AT in GB2312
        bytes.extend(bd.as_bytes());
        format!("=?gb2312?b?{}?=", b64(&bytes))
    };
    // FULLWIDTH COMMERCIAL AT in JIS X 0208 (ESC $ B, 0x21 0x77, ESC ( B).
    let iso2022jp = [bl.as_bytes(), b"\x1b$B!w\x1b(B", bd.as_bytes()].concat();
    // The same in KS X 1001 (ESC $ ) C, shift out, 0x23 0x40, shift in).
    let iso2022kr = [bl.as_bytes(), b"\x1b$)C\x0e#@\x0f", bd.as_bytes()].concat();
    // UTF-32 with its byte order mark.
    let utf32: Vec<u8> = std::iter::once('\u{feff}')
        .chain(b.chars())
        .flat_map(|c| (c as u32).to_le_bytes())
        .collect();
    vec![
        ("group name", format!("\"{b}, {c}\": notices@sender.test;")),
        (
            "group name Q",
            format!(
                "{}: notices@sender.test;",
                q_word("utf-8", &format!("{b}, {c}"))
            ),
        ),
        (
            "group name B",
            format!(
                "{}: notices@sender.test;",
                b_word("UTF-8", &format!("{b}, {c}"))
            ),
        ),
        ("empty group", format!("\"{b}, {c}\":;")),
        (
            "empty group Q latin1",
            format!("{}:;", q_word("iso-8859-1", &format!("{b} {c}"))),
        ),
        ("empty group unquoted", format!("{b} {c}:;")),
        (
            "name B of Q",
            format!("{} <{a}>", b_word("utf-8", &q_word("utf-8", b))),
        ),
        (
            "name Q of B",
            format!("{} <{a}>", q_word("utf-8", &b_word("utf-8", c))),
        ),
        (
            "quoted name B of Q",
            format!("\"{}\" <{a}>", b_word("utf-8", &q_word("utf-8", b))),
        ),
        ("name fullwidth at", format!("\"{bl}＠{bd}\" <{a}>")),
        ("name all fullwidth", format!("\"{}\" <{a}>", fullwidth(c))),
        ("name small at", format!("\"{bl}\u{fe6b}{bd}\" <{a}>")),
        (
            "name B fullwidth at",
            format!("{} <{a}>", b_word("utf-8", &format!("{bl}＠{bd}"))),
        ),
        ("name gb2312 fullwidth at", format!("{gb2312} <{a}>")),
        (
            "name ISO-2022-JP fullwidth at",
            format!("=?iso-2022-jp?b?{}?= <{a}>", b64(&iso2022jp)),
        ),
        (
            "name ISO-2022-KR fullwidth at",
            format!("=?iso-2022-kr?b?{}?= <{a}>", b64(&iso2022kr)),
        ),
        ("name UTF-32", format!("=?utf-32?b?{}?= <{a}>", b64(&utf32))),
        (
            "name UTF-7",
            format!("{} <{a}>", q_word("utf-7", &format!("{bl}+AEA-{bd}"))),
        ),
        (
            "name HZ-GB-2312 fullwidth at",
            format!(
                "{} <{a}>",
                q_word("hz-gb-2312", &format!("{bl}~{{#@~}}{bd}"))
            ),
        ),
        ("comment", format!("{a} ({b}, {c})")),
        ("nested comment", format!("<{a}> (to: (also {b}))")),
        ("obsolete spacing", format!("\"Ann\" <{a}>, {bl} @ {bd}")),
        ("percent", format!("\"mailto:{}\" <{a}>", percent_at(b))),
        ("quoted pair", format!("\"{bl}\\@{bd}\" <{a}>")),
        ("zero width", format!("\"{bl}\u{200b}@\u{200b}{bd}\" <{a}>")),
        ("plain name", format!("\"{b}\" <{a}>")),
    ]
}

fn addresses_outside_the_list_cases() -> Vec<Case> {
    let mut kit = Kit::new("k2");
    let mut cases = Vec::new();
    let fields = ["To", "Cc", "tO", "CC", "to"];
    let probe = kit.cast();
    let forms = hidden_forms(&probe.a, &probe.b, &probe.c).len();
    for f in 0..forms {
        // In a recipient field: split and bcc rewrite it away, reject refuses.
        let k = kit.cast();
        let (label, value) = hidden_forms(&k.a, &k.b, &k.c).swap_remove(f);
        let name = fields[f % fields.len()];
        let line = if f % 2 == 1 {
            format!("{name}:\r\n {value}")
        } else {
            format!("{name}: {value}")
        };
        cases.push(
            Case::exposing(
                format!("2 {label} in {name}"),
                &k.abc(),
                mail(&with_fields(&[line], f % 3), "Hello.\r\n"),
            )
            .split(DELIVERED)
            .bcc(delivered(1)),
        );
        // In Reply-To, which every copy keeps, around a mailbox nobody received: refused, or
        // delivered showing nothing.
        let k = kit.cast();
        let (label, value) = hidden_forms("replies@sender.test", &k.b, &k.c).swap_remove(f);
        let name = ["Reply-To", "reply-to", "REPLY-TO"][f % 3];
        cases.push(Case::exposing(
            format!("2 {label} in {name}"),
            &k.abc(),
            undisclosed(&[format!("{name}: {value}")], (f + 1) % 3, "Hello.\r\n"),
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class2_addresses_outside_the_address_list_are_private_too() {
    run_all_modes(
        "class 2 (outside the list)",
        addresses_outside_the_list_cases(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 3. Mail-merge: one visible address, many envelope recipients.

/// The header lines of one variant, from the address they show.
type ToLines = fn(&str) -> Vec<String>;

fn mail_merge_cases() -> Vec<Case> {
    let mut kit = Kit::new("k3");
    let mut cases = Vec::new();
    let forms: Vec<(&str, ToLines)> = vec![
        ("quoted name", |a| vec![format!("To: \"Alice\" <{a}>")]),
        ("bare address", |a| vec![format!("To: {a}")]),
        ("upper-case field, plain name", |a| {
            vec![format!("TO: Alice <{a}>")]
        }),
        ("folded", |a| {
            vec![s("to:"), s(" \"Alice\""), format!(" <{a}>")]
        }),
        ("encoded name", |a| {
            vec![format!("To: =?utf-8?q?Al=C3=AFce?= <{a}>")]
        }),
        ("Cc only", |a| vec![format!("Cc: {a}")]),
        ("address in upper case", |a| {
            vec![format!("To: \"Alice\" <{}>", a.to_uppercase())]
        }),
        ("someone outside the envelope", |a| {
            vec![format!(
                "To: \"Chief\" <{}>",
                a.replacen("ann.", "chief.", 1)
            )]
        }),
    ];
    for (n, (label, to)) in forms.iter().enumerate() {
        let k = kit.cast();
        let mut case = Case::exposing(
            format!("3 mail-merge, {label}"),
            &k.abcd(),
            mail(&with_fields(&to(&k.a), n % 3), "Dear customer,\r\n"),
        )
        .split(delivered(4))
        .bcc(delivered(1))
        .own_to();
        if label.contains("outside") {
            case = case.also_private(&[&k.a.replacen("ann.", "chief.", 1)]);
        }
        if n % 3 == 0 {
            case = case.lettre();
        }
        cases.push(case);
    }
    // Envelope order differs from the header's; the visible one last.
    let k = kit.cast();
    cases.push(
        Case::exposing(
            "3 mail-merge, visible recipient last in the envelope",
            &[&k.b, &k.c, &k.d, &k.a],
            mail(
                &with_fields(&[format!("To: \"Ann Customer\" <{}>", k.a)], 1),
                "Hi\r\n",
            ),
        )
        .split(delivered(4))
        .bcc(delivered(1))
        .own_to()
        .lettre(),
    );
    // Controls: one recipient who sees itself.
    let k = kit.cast();
    cases.push(
        Case::control(
            "3 control: one recipient, its own To",
            &[&k.a],
            mail(
                &with_fields(&[format!("To: \"Alice\" <{}>", k.a)], 1),
                "Hi\r\n",
            ),
        )
        .all(delivered(1))
        .lettre(),
    );
    let k = kit.cast();
    cases.push(
        Case::control(
            "3 control: one recipient, envelope in another case",
            &[&k.a.to_uppercase()],
            mail(&with_fields(&[format!("To: {}", k.a)], 2), "Hi\r\n"),
        )
        .all(delivered(1)),
    );
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class3_mail_merge_is_split_not_refused() {
    run_all_modes("class 3 (mail-merge)", mail_merge_cases()).await;
}

// ---------------------------------------------------------------------------------------
// 4. Line endings: bare CR and bare LF inside headers; outbound smuggling sequences.

/// One header line (with its odd line ends) of one variant.
type Line = fn(&Cast) -> String;

fn line_ending_cases() -> Vec<Case> {
    let mut kit = Kit::new("k4");
    let mut cases = Vec::new();
    // (label, lines joined by "\r\n" except where they hold their own separators)
    let hidden: Vec<(&str, Line)> = vec![
        ("bare CR before Cc", |k| {
            format!("X-A: 1\rCc: {}, {}", k.b, k.c)
        }),
        ("two bare CRs before Bcc", |k| {
            format!("X-Tracking: 7\r\rBcc: {}", k.b)
        }),
        ("bare CR before To", |k| {
            format!("Subject: hi\rTo: {}, {}", k.b, k.c)
        }),
        ("bare CR before lower-case cc", |k| {
            format!("X-A: 1\rcc: {}", k.c)
        }),
        ("bare CR before Resent-Cc", |k| {
            format!("X-A: 1\rResent-Cc: {}", k.b)
        }),
        ("bare LF before Cc", |k| {
            format!("X-A: 1\nCc: {}, {}", k.b, k.c)
        }),
        ("bare CR then tab", |k| format!("X-A: 1\r\tCc: {}", k.b)),
        ("bare CR inside a To list", |k| {
            format!("Reply-To: x@sender.test\rTo: {},\r{}", k.b, k.c)
        }),
        ("bare CR at line start ends the header", |k| {
            format!("X-A: 1\r\n\rCc: {}", k.b)
        }),
        ("CR LF LF", |k| format!("X-A: 1\r\n\nCc: {}", k.b)),
    ];
    for (n, (label, line)) in hidden.iter().enumerate() {
        let k = kit.cast();
        cases.push(
            Case::exposing(
                format!("4 {label}"),
                &k.abc(),
                undisclosed(&[line(&k)], n % 3, "Hello.\r\n"),
            )
            .raw()
            .inspect(),
        );
    }
    // A message with bare LF line ends throughout, and one mixing all three.
    let k = kit.cast();
    let lf = format!(
        "From: app@sender.test\nMessage-ID: <MID>\nTo: {}\nCc: {}, {}\nSubject: lf\n\nHello.\n",
        k.a, k.b, k.c
    );
    cases.push(
        Case::exposing("4 bare LF everywhere", &k.abc(), lf.into_bytes())
            .raw()
            .inspect(),
    );
    let k = kit.cast();
    let mixed = format!(
        "From: app@sender.test\rMessage-ID: <MID>\nTo: undisclosed-recipients:;\r\nX-A: 1\rBcc: {}\nCc: {}\r\n\r\nHello.\r\n",
        k.b, k.c
    );
    cases.push(
        Case::exposing("4 mixed line ends", &k.abc(), mixed.into_bytes())
            .raw()
            .inspect(),
    );

    // Outbound smuggling: one recipient, nothing private to hide; the bytes must leave clean
    // (and NUL is refused).
    let smuggle =
        "MAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@evil.test>\r\nDATA\r\nsmuggled\r\n";
    let bodies: Vec<(&str, String, Expect)> = vec![
        (
            "CR dot CR LF in the body",
            format!("x\r.\r\n{smuggle}"),
            DELIVERED,
        ),
        (
            "LF dot CR LF in the body",
            format!("x\n.\r\n{smuggle}"),
            DELIVERED,
        ),
        (
            "CR LF dot LF in the body",
            format!("x\r\n.\n{smuggle}"),
            DELIVERED,
        ),
        (
            "CR LF dot CR CR LF in the body",
            format!("x\r\n.\r\r\n{smuggle}"),
            DELIVERED,
        ),
        (
            "CR LF NUL dot CR LF in the body",
            format!("x\r\n\0.\r\n{smuggle}"),
            REFUSED_NUL,
        ),
        ("NUL in a header", s("x\r\n"), REFUSED_NUL),
    ];
    for (label, body, expect) in bodies {
        let k = kit.cast();
        let mut lines = with_fields(&[format!("To: {}", k.a)], 2);
        if label.contains("header") {
            lines.push(s("X-A: 1\0.\rX-B: 2"));
        }
        cases.push(
            Case::control(
                format!("4 smuggling: {label}"),
                &[&k.a],
                mail(&lines, &body),
            )
            .all(expect)
            .raw()
            .inspect(),
        );
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class4_line_endings_are_one_view_for_everyone() {
    run_all_modes("class 4 (line endings)", line_ending_cases()).await;
}

// ---------------------------------------------------------------------------------------
// 5. Other fields: Reply-To, Resent-*, Mail-Followup-To, Disposition-Notification-To, X-...,
//    and an indented template turning To into a continuation of From.

fn other_field_cases() -> Vec<Case> {
    let mut kit = Kit::new("k5");
    let mut cases = Vec::new();
    // Fields that name recipients: split and bcc copies drop them.
    let recipient_fields = [
        "Resent-To",
        "Resent-Cc",
        "RESENT-TO",
        "resent-cc",
        "Mail-Followup-To",
        "Apparently-To",
        "Delivered-To",
        "X-Original-To",
        "Envelope-To",
    ];
    // Fields every copy keeps: refused, or delivered showing nothing.
    let kept_fields = [
        "Reply-To",
        "Disposition-Notification-To",
        "Return-Receipt-To",
        "Errors-To",
        "X-Customer",
        "X-Recipients",
        "x-original-rcpt",
        "Comments",
        "List-Unsubscribe",
        "Keywords",
        "Subject",
        "In-Reply-To",
        "References",
        "X-Message-ID",
    ];
    let value = |n: usize, k: &Cast| -> String {
        match n % 5 {
            0 => k.b.clone(),
            1 => format!("\"Bob\" <{}>, {}", k.b, k.c),
            2 => format!("\r\n {},\r\n {}", k.b, k.c),
            3 => format!("<mailto:{}?subject=unsubscribe>", percent_at(&k.b)),
            _ => q_word("utf-8", &format!("Bob <{}>", k.b)),
        }
    };
    for (n, name) in recipient_fields.iter().enumerate() {
        let k = kit.cast();
        cases.push(
            Case::exposing(
                format!("5 {name} ({})", n % 5),
                &k.abc(),
                undisclosed(&[format!("{name}: {}", value(n, &k))], n % 3, "Hello.\r\n"),
            )
            .split(DELIVERED)
            .bcc(delivered(1)),
        );
    }
    for (n, name) in kept_fields.iter().enumerate() {
        let k = kit.cast();
        cases.push(Case::exposing(
            format!("5 {name} ({})", n % 5),
            &k.abc(),
            undisclosed(&[format!("{name}: {}", value(n, &k))], n % 3, "Hello.\r\n"),
        ));
    }
    // Originator fields naming a recipient besides the originator's own address.
    for (n, field) in [
        "From: \"{b}\" <app@sender.test>",
        "From: app@sender.test, {b}",
        "Sender: \"{b}\" <app@sender.test>",
    ]
    .iter()
    .enumerate()
    {
        let k = kit.cast();
        let mut lines = with_fields(&[], 0);
        lines.retain(|l| n == 2 || !l.starts_with("From:"));
        lines.insert(n, field.replace("{b}", &k.b));
        lines.push(s("To: undisclosed-recipients:;"));
        cases.push(Case::exposing(
            format!("5 {}", field.replace("{b}", "b")),
            &k.abc(),
            mail(&lines, "Hello.\r\n"),
        ));
    }
    // The originator's own address is not private (SPEC), even when it also receives a copy.
    let k = kit.cast();
    let mut lines = with_fields(&[format!("Sender: {}", k.b)], 1);
    lines.push(s("To: undisclosed-recipients:;"));
    let mut sender = Case::control(
        "5 control: Sender is a recipient too",
        &k.abc(),
        mail(&lines, "Hello.\r\n"),
    )
    .all(delivered(1));
    sender.private.retain(|p| *p != k.b);
    cases.push(sender);
    // A client's own Received field: a `for` clause naming a recipient is removed from every
    // copy (so nothing is exposed, in any mode); anything else naming one is refused or
    // delivered showing nothing.
    let removed = [
        "from a.test by b.test with ESMTP id 1\r\n\tfor <{b}>; Mon, 1 Jun 2026 10:00:00 +0000",
        "from a.test by b.test id 1 for {b}; Mon, 1 Jun 2026 10:00:00 +0000",
        "from a.test by b.test id 1 FOR <{B}>; Mon, 1 Jun 2026 10:00:00 +0000",
        "from a.test by b.test id 1 for\r\n <{b}>; Mon, 1 Jun 2026 10:00:00 +0000",
        "from a.test by b.test id 1 for <{b}> (envelope-from app@sender.test); Mon, 1 Jun 2026",
    ];
    let kept = [
        "from a.test by b.test id 1 for<{b}>; Mon, 1 Jun 2026 10:00:00 +0000",
        "from a.test by b.test id 1 for \"Bob\" <{b}>; Mon, 1 Jun 2026 10:00:00 +0000",
        "from a.test (helo {b}) by b.test id 1; Mon, 1 Jun 2026 10:00:00 +0000",
        "from a.test by b.test id 1 for <{b}>, <{c}>; Mon, 1 Jun 2026 10:00:00 +0000",
        "from a.test by b.test id 1 for <=?utf-8?q?{bq}?=>; Mon, 1 Jun 2026",
    ];
    for (n, value) in removed.iter().chain(&kept).enumerate() {
        let k = kit.cast();
        let value = value
            .replace("{b}", &k.b)
            .replace("{B}", &k.b.to_uppercase())
            .replace("{c}", &k.c)
            .replace("{bq}", &k.b.replace('@', "=40"));
        let case = Case::exposing(
            format!("5 Received ({n})"),
            &k.abc(),
            undisclosed(&[format!("Received: {value}")], n % 3, "Hello.\r\n"),
        );
        cases.push(if n < removed.len() {
            case.all(delivered(1))
        } else {
            case
        });
    }
    // Resent-Bcc and Bcc are removed from every copy: nothing is exposed, in any mode.
    for name in ["Resent-Bcc", "RESENT-BCC", "Bcc"] {
        let k = kit.cast();
        let lines = with_fields(
            &[
                format!("To: {}", k.a),
                format!("{name}: {}, \"Dan\" <{}>", k.d, k.c),
            ],
            1,
        );
        cases.push(
            Case::control(
                format!("5 {name} hides the blind recipients"),
                &[&k.a, &k.d, &k.c],
                mail(&lines, "Hello.\r\n"),
            )
            .split(DELIVERED)
            .bcc(delivered(1))
            .reject(Expect::Either),
        );
    }
    // An indented template: To (and more) become continuation lines of From.
    for (n, indent) in [" ", "\t", "    ", " \t"].iter().enumerate() {
        let k = kit.cast();
        let field = ["To", "Cc", "to", "Bcc"][n];
        let from = if n % 2 == 0 {
            "From: app@sender.test"
        } else {
            "From: \"Notices\" <app@sender.test>"
        };
        let lines = [
            s(from),
            format!("{indent}{field}: {}, {}, {}", k.a, k.b, k.c),
            format!("{indent}Subject: statement"),
            s(MID),
            s(DATE),
        ];
        cases.push(Case::exposing(
            format!("5 indented template, {field} after {indent:?}"),
            &k.abc(),
            mail(&lines, "Hello.\r\n"),
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class5_every_other_field_is_checked() {
    run_all_modes("class 5 (other fields)", other_field_cases()).await;
}

// ---------------------------------------------------------------------------------------
// 6. Body: text, HTML, attachments, nested messages.

const BOUNDARY: &str = "=_leak_boundary";

/// A multipart/mixed body of `parts` (each: part header lines, then the part's body).
fn multipart(parts: &[(Vec<String>, String)]) -> String {
    let mut out = s("This is a multi-part message.\r\n");
    for (headers, body) in parts {
        out.push_str(&format!("--{BOUNDARY}\r\n"));
        for h in headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.push_str(body);
        if !body.ends_with("\r\n") {
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("--{BOUNDARY}--\r\n"));
    out
}

fn mime_lines(extra: &[String]) -> Vec<String> {
    let mut lines = vec![
        s("MIME-Version: 1.0"),
        format!("Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\""),
    ];
    lines.extend_from_slice(extra);
    lines
}

/// Bodies showing `b` (and `c`) to everyone: (label, extra header lines, body).
fn body_forms(a: &str, b: &str, c: &str) -> Vec<(&'static str, Vec<String>, String)> {
    let text = |body: String| (vec![s("Content-Type: text/plain; charset=utf-8")], body);
    let (bl, bd) = (local(b), domain(b));
    let csv = format!("name,email\r\nAnn,{a}\r\nBob,{b}\r\nCat,{c}\r\n");
    let original =
        format!("From: app@sender.test\r\nTo: {a}, {b}, {c}\r\nSubject: list\r\n\r\nlist\r\n");
    let qp_soft = {
        let (head, tail) = b.split_at(b.len() - 4);
        format!("Contact our other customers: {head}=\r\n{tail} and more.\r\n")
    };
    let mut forms: Vec<(&'static str, Vec<String>, String)> = vec![
        {
            let (h, body) = text(format!("Dear customer,\r\nalso sent to {b} and {c}.\r\n"));
            ("plain text", h, body)
        },
        {
            let (h, body) = text(format!("Copy: {}\r\n", b.to_uppercase()));
            ("plain text, upper case", h, body)
        },
        {
            let (h, body) = text(format!("Copy: {}\r\n", fullwidth(b)));
            ("plain text, fullwidth", h, body)
        },
    ];
    let parts: Vec<(&'static str, (Vec<String>, String))> = vec![
        (
            "HTML &#64;",
            (
                vec![s("Content-Type: text/html")],
                format!("<p>{bl}&#64;{bd}</p>"),
            ),
        ),
        (
            "HTML &#x40; and &commat;",
            (
                vec![s("Content-Type: text/html")],
                format!("<p>{bl}&#x40;{bd} {}&commat;{}</p>", local(c), domain(c)),
            ),
        ),
        (
            "HTML mailto %40",
            (
                vec![s("Content-Type: text/html")],
                format!("<a href=\"mailto:{}\">write</a>", percent_at(b)),
            ),
        ),
        (
            "base64 CSV attachment",
            (
                vec![
                    s("Content-Type: text/csv; name=\"customers.csv\""),
                    s("Content-Transfer-Encoding: base64"),
                    s("Content-Disposition: attachment; filename=\"customers.csv\""),
                ],
                base64_lines(csv.as_bytes()),
            ),
        ),
        (
            "base64 octet-stream",
            (
                vec![
                    s("Content-Type: application/octet-stream"),
                    s("Content-Transfer-Encoding: base64"),
                ],
                base64_lines(csv.as_bytes()),
            ),
        ),
        (
            "quoted-printable soft break in the address",
            (
                vec![
                    s("Content-Type: text/plain"),
                    s("Content-Transfer-Encoding: quoted-printable"),
                ],
                qp_soft,
            ),
        ),
        (
            "quoted-printable =40",
            (
                vec![
                    s("Content-Type: text/plain"),
                    s("Content-Transfer-Encoding: quoted-printable"),
                ],
                format!("Also to {bl}=40{bd}\r\n"),
            ),
        ),
        (
            "HTML tags inside the address",
            (
                vec![s("Content-Type: text/html")],
                format!("<p>{bl}<span></span>@<!-- x -->{bd}</p>"),
            ),
        ),
        (
            "base64 with characters outside the alphabet",
            (
                vec![
                    s("Content-Type: text/csv"),
                    s("Content-Transfer-Encoding: base64"),
                ],
                // RFC 2045: decoders ignore characters outside the alphabet.
                base64_lines(csv.as_bytes())
                    .chars()
                    .enumerate()
                    .flat_map(|(i, c)| match c {
                        '\r' | '\n' => vec![c],
                        _ if i % 7 == 6 => vec![c, ' ', '!'],
                        _ => vec![c],
                    })
                    .collect(),
            ),
        ),
        (
            "x-uuencode attachment",
            (
                vec![
                    s("Content-Type: text/csv; name=\"list.csv\""),
                    s("Content-Transfer-Encoding: x-uuencode"),
                ],
                uuencode("list.csv", csv.as_bytes()),
            ),
        ),
        (
            "UTF-7 text",
            (
                vec![s("Content-Type: text/plain; charset=utf-7")],
                format!("Also to {bl}+AEA-{bd}\r\n"),
            ),
        ),
        (
            "base64 UTF-16 text",
            (
                vec![
                    s("Content-Type: text/plain; charset=utf-16le"),
                    s("Content-Transfer-Encoding: base64"),
                ],
                base64_lines(
                    &format!("Also to {b}")
                        .encode_utf16()
                        .flat_map(u16::to_le_bytes)
                        .collect::<Vec<u8>>(),
                ),
            ),
        ),
        (
            "message/rfc822 with the original list",
            (vec![s("Content-Type: message/rfc822")], original.clone()),
        ),
        (
            "base64 message/rfc822",
            (
                vec![
                    s("Content-Type: message/rfc822"),
                    s("Content-Transfer-Encoding: base64"),
                ],
                base64_lines(original.as_bytes()),
            ),
        ),
        (
            "text/rfc822-headers",
            (
                vec![s("Content-Type: text/rfc822-headers")],
                format!("To: {a}, {b}, {c}\r\nSubject: list\r\n"),
            ),
        ),
        (
            "file name",
            (
                vec![
                    s("Content-Type: text/plain"),
                    format!("Content-Disposition: attachment; filename=\"list for {b} .txt\""),
                ],
                s("nothing here\r\n"),
            ),
        ),
        (
            "RFC 2231 file name",
            (
                vec![
                    s("Content-Type: text/plain"),
                    format!(
                        "Content-Disposition: attachment; filename*=utf-8''list%20for%20{}",
                        percent_at(b)
                    ),
                ],
                s("nothing here\r\n"),
            ),
        ),
        (
            "RFC 2231 file name, space before the extension",
            (
                vec![
                    s("Content-Type: text/plain"),
                    format!(
                        "Content-Disposition: attachment; filename*=utf-8''list%20for%20{}%20.txt",
                        percent_at(b)
                    ),
                ],
                s("nothing here\r\n"),
            ),
        ),
    ];
    for (label, part) in parts {
        let intro = (vec![s("Content-Type: text/plain")], s("See attached.\r\n"));
        forms.push((label, mime_lines(&[]), multipart(&[intro, part])));
    }
    forms
}

/// uuencode (`begin 644 NAME` ... `end`), 45 bytes per line.
fn uuencode(name: &str, data: &[u8]) -> String {
    let c = |v: u8| if v == 0 { '`' } else { (v + 32) as char };
    let mut out = format!("begin 644 {name}\r\n");
    for line in data.chunks(45) {
        out.push(c(line.len() as u8));
        for group in line.chunks(3) {
            let b = [
                group[0],
                *group.get(1).unwrap_or(&0),
                *group.get(2).unwrap_or(&0),
            ];
            out.push(c(b[0] >> 2));
            out.push(c(((b[0] & 3) << 4) | (b[1] >> 4)));
            out.push(c(((b[1] & 15) << 2) | (b[2] >> 6)));
            out.push(c(b[2] & 63));
        }
        out.push_str("\r\n");
    }
    out.push_str("`\r\nend\r\n");
    out
}

/// [`body_forms`] entry by label.
fn body_form(a: &str, b: &str, c: &str, label: &str) -> (Vec<String>, String) {
    let (_, extra, body) = body_forms(a, b, c)
        .into_iter()
        .find(|f| f.0 == label)
        .unwrap_or_else(|| panic!("no body form {label:?}"));
    (extra, body)
}

fn body_cases() -> Vec<Case> {
    let mut kit = Kit::new("k6");
    let mut cases = Vec::new();
    let probe = kit.cast();
    let count = body_forms(&probe.a, &probe.b, &probe.c).len();
    for f in 0..count {
        // The header shows nobody: only the body exposes.
        let k = kit.cast();
        let (label, extra, body) = body_forms(&k.a, &k.b, &k.c).swap_remove(f);
        let mut lines = with_fields(&extra, 2);
        lines.push(s("To: undisclosed-recipients:;"));
        cases.push(
            Case::exposing(format!("6 {label}"), &k.abc(), mail(&lines, &body)).all(REFUSED_BODY),
        );
    }
    // A header split would fix, and a body it cannot.
    for label in [
        "plain text",
        "base64 CSV attachment",
        "message/rfc822 with the original list",
    ] {
        let k = kit.cast();
        let (extra, body) = body_form(&k.a, &k.b, &k.c, label);
        let mut lines = with_fields(&extra, 1);
        lines.push(format!("To: {}, {}, {}", k.a, k.b, k.c));
        cases.push(
            Case::exposing(
                format!("6 {label}, list in To"),
                &k.abc(),
                mail(&lines, &body),
            )
            .split(REFUSED_BODY)
            .bcc(REFUSED_BODY),
        );
    }
    // Controls: a single recipient may see its own address anywhere in the body, and
    // addresses nobody received are not private.
    for label in [
        "plain text",
        "HTML &#64;",
        "base64 CSV attachment",
        "message/rfc822 with the original list",
    ] {
        let k = kit.cast();
        let (extra, body) = body_form(&k.b, &k.a, &k.a, label);
        let mut lines = with_fields(&extra, 0);
        lines.push(format!("To: {}", k.a));
        cases.push(
            Case::control(
                format!("6 control: {label} shows only its own recipient"),
                &[&k.a],
                mail(&lines, &body),
            )
            .all(delivered(1)),
        );
    }
    let k = kit.cast();
    cases.push(
        Case::control(
            "6 control: the sender's address in the body",
            &k.abc(),
            undisclosed(&[], 1, "Questions? Write to support@sender.test.\r\n"),
        )
        .all(delivered(1)),
    );
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class6_the_shared_body_never_shows_a_recipient_to_another() {
    run_all_modes("class 6 (body)", body_cases()).await;
}

// ---------------------------------------------------------------------------------------
// 7. Logs: upstream replies that name recipients are logged redacted like every address.

/// A scripted upstream whose replies name recipients: a permanent RCPT refusal, a deferral
/// at end of data (the copy is retried), a full mailbox at RCPT, and a success reply.
fn chatty_upstream(k: &Cast) -> Script {
    let mut script = Script::default();
    script.rcpt_replies.insert(
        k.d.clone(),
        format!(
            "550 5.1.1 <{}>: Recipient address rejected: User unknown",
            k.d
        ),
    );
    script.first_replies.insert(
        Step::DataEnd,
        vec![format!("451 4.7.1 <{}>: greylisted, try again later", k.b)],
    );
    script.first_replies.insert(
        Step::Rcpt,
        vec![format!("452 4.2.2 <{}>: mailbox full", k.c)],
    );
    script.replies.insert(
        Step::DataEnd,
        format!("250 2.0.0 Ok: queued as 4F2A for <{}>", k.a),
    );
    script
}

/// One split message to a, b, c, d through a relay (with `log` as its `[log]` section)
/// delivering to the chatty upstream; returns the relay's log once every copy is final.
async fn chatty_run(k: &Cast, log: &str) -> (String, scripted_smtp::Record) {
    let upstream = ScriptedSmtp::start(chatty_upstream(k)).await;
    let config = relay_config(Mode::Split, "", &Upstream::Scripted(&upstream), log);
    let relay = support::RelayProc::start(&config, &[]).await;
    let case = Case::exposing(
        "7 chatty upstream",
        &k.abcd(),
        mail(
            &with_fields(&[format!("To: {}, {}, {}, {}", k.a, k.b, k.c, k.d)], 1),
            "Hi\r\n",
        ),
    );
    let replies = send_all(relay.smtp, std::slice::from_ref(&case), relay.dir.path()).await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    wait_for_empty_queue(&relay).await;
    (relay.proc_.log_text(), upstream.record())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class7_upstream_replies_never_put_an_address_in_the_log() {
    let mut kit = Kit::new("k7");
    let (k, control) = (kit.cast(), kit.cast());
    let ((log, record), (control_log, _)) = tokio::join!(
        chatty_run(&k, ""),
        chatty_run(&control, "[log]\nshow_addresses = true")
    );
    // The replies naming recipients were really sent to the relay.
    assert!(
        record.saw(&format!("RCPT TO:<{}>", k.d)),
        "{:?}",
        record.commands
    );
    assert_eq!(
        record.messages.len(),
        3,
        "a, b (after the deferral) and c delivered"
    );
    assert!(
        log.contains("failed permanently"),
        "the refusal of d was logged:\n{log}"
    );
    let used = addresses_used(&[Case::exposing("7", &k.abcd(), Vec::new())]);
    let found = addresses_in_log(&log, &used);
    assert!(found.is_empty(), "the log shows {found:?}:\n{log}");
    // The same check finds the addresses when the relay is told to show them.
    let used = addresses_used(&[Case::exposing("7", &control.abcd(), Vec::new())]);
    let found = addresses_in_log(&control_log, &used);
    assert!(
        !found.is_empty(),
        "show_addresses = true must show addresses (the check can fail):\n{control_log}"
    );
}

// ---------------------------------------------------------------------------------------
// 8. Envelope: quoted local parts relayed as they are, duplicates delivered once, `%` never
//    trusted.

fn envelope_cases() -> Vec<Case> {
    let mut kit = Kit::new("k8");
    let mut cases = Vec::new();
    let quoted = |b: &str| format!("\"{b}, x\"@z.test");
    // Relayed with its quotes: one mailbox, not `b` plus `x@z.test`.
    let k = kit.cast();
    let q = quoted(&k.b);
    cases.push(
        Case::control(
            "8 quoted local part with a comma and an @, undisclosed",
            &[&q, &k.a],
            undisclosed(&[], 1, "Hi\r\n"),
        )
        .rcpt_args(&[format!("<{q}>").as_bytes(), format!("<{}>", k.a).as_bytes()])
        .all(delivered(1)),
    );
    let k = kit.cast();
    let q = quoted(&k.b);
    cases.push(
        Case::exposing(
            "8 quoted local part listed in To",
            &[&k.a, &q],
            mail(&with_fields(&[format!("To: {}, {q}", k.a)], 1), "Hi\r\n"),
        )
        .rcpt_args(&[format!("<{}>", k.a).as_bytes(), format!("<{q}>").as_bytes()]),
    );
    // The quoted recipient's own address contains another recipient's.
    let k = kit.cast();
    let q = quoted(&k.b);
    cases.push(
        Case::exposing(
            "8 quoted local part holding another recipient",
            &[&k.a, &k.b, &q],
            mail(
                &with_fields(&[format!("To: {}, {}, {q}", k.a, k.b)], 2),
                "Hi\r\n",
            ),
        )
        .rcpt_args(&[
            format!("<{}>", k.a).as_bytes(),
            format!("<{}>", k.b).as_bytes(),
            format!("<{q}>").as_bytes(),
        ]),
    );
    // The same recipient twice: once.
    let k = kit.cast();
    let upper_domain = format!("{}@{}", local(&k.b), domain(&k.b).to_uppercase());
    cases.push(
        Case::control(
            "8 duplicate recipient, domain case differs",
            &[&k.b, &upper_domain],
            mail(&with_fields(&[format!("To: {}", k.b)], 1), "Hi\r\n"),
        )
        .rcpt_args(&[
            format!("<{}>", k.b).as_bytes(),
            format!("<{upper_domain}>").as_bytes(),
        ])
        .all(delivered(1)),
    );
    let k = kit.cast();
    let upper = k.b.to_uppercase();
    cases.push(
        Case::exposing(
            "8 duplicate recipient, all upper case, split",
            &[&k.a, &upper, &k.b],
            mail(
                &with_fields(&[format!("To: {}, {}", k.a, k.b)], 0),
                "Hi\r\n",
            ),
        )
        .rcpt_args(&[
            format!("<{}>", k.a).as_bytes(),
            format!("<{upper}>").as_bytes(),
            format!("<{}>", k.b).as_bytes(),
        ])
        .split(delivered(2))
        .bcc(delivered(1)),
    );
    let k = kit.cast();
    let plain_quoted = format!("\"{}\"@{}", local(&k.b), domain(&k.b));
    cases.push(
        Case::control(
            "8 duplicate recipient, quoted plain local part",
            &[&plain_quoted, &k.b],
            mail(&with_fields(&[format!("To: {}", k.b)], 2), "Hi\r\n"),
        )
        .rcpt_args(&[
            format!("<{plain_quoted}>").as_bytes(),
            format!("<{}>", k.b).as_bytes(),
        ])
        .all(delivered(1)),
    );
    // `%` and `!` route elsewhere: never trusted, even in a trusted domain.
    for (n, routed) in ["{l}%west.test@corp.test", "west.test!{l}@corp.test"]
        .iter()
        .enumerate()
    {
        let k = kit.cast();
        let routed = routed.replace("{l}", local(&k.b));
        cases.push(
            Case::exposing(
                format!("8 routed address in a trusted domain ({n})"),
                &[&k.a, &routed],
                mail(
                    &with_fields(&[format!("To: {}, {routed}", k.a)], 1),
                    "Hi\r\n",
                ),
            )
            .rcpt_args(&[
                format!("<{}>", k.a).as_bytes(),
                format!("<{routed}>").as_bytes(),
            ])
            .split(delivered(2))
            .bcc(delivered(1)),
        );
    }
    // A trusted archive mailbox may see everything and shows nobody anything private.
    let k = kit.cast();
    let archive = format!("archive.{}@corp.test", local(&k.a));
    cases.push(
        Case::control(
            "8 control: trusted archive in To",
            &[&k.a, &archive],
            mail(
                &with_fields(&[format!("To: {}, {archive}", k.a)], 1),
                "Hi\r\n",
            ),
        )
        .all(delivered(1)),
    );
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class8_envelope_recipients_are_divided_never_changed() {
    let cases = envelope_cases();
    let upstreams = [
        ScriptedSmtp::start(Script::default()).await,
        ScriptedSmtp::start(Script::default()).await,
        ScriptedSmtp::start(Script::default()).await,
    ];
    let (split, bcc, reject) = tokio::join!(
        run_mode(Mode::Split, &cases, "", Upstream::Scripted(&upstreams[0])),
        run_mode(Mode::Bcc, &cases, "", Upstream::Scripted(&upstreams[1])),
        run_mode(Mode::Reject, &cases, "", Upstream::Scripted(&upstreams[2])),
    );
    let mut failures = Vec::new();
    for report in [split, bcc, reject] {
        eprintln!("class 8 (envelope): {}", report.summary);
        failures.extend(report.failures);
    }
    // The wire, not only the capture: the quoted recipient went out exactly as it came in.
    let quoted = format!("RCPT TO:<{}>", envelope_cases()[0].rcpt_to[0]);
    for (mode, upstream) in Mode::ALL.iter().zip(&upstreams) {
        if !upstream.record().commands.contains(&quoted) {
            failures.push(format!(
                "[{}] the upstream never saw {quoted:?}: {:?}",
                mode.name(),
                upstream
                    .record()
                    .commands
                    .iter()
                    .filter(|c| c.starts_with("RCPT"))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert_no_failures("class 8 (envelope)", &failures);
}

// ---------------------------------------------------------------------------------------
// The judges can fail: in monitor mode the relay delivers exposing copies unchanged, and both
// the oracle and the outside view must say so.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_find_leaks_that_monitor_mode_lets_through() {
    let mut kit = Kit::new("km");
    let mut cases = Vec::new();
    let k = kit.cast();
    cases.push(Case::exposing(
        "header: mail-merge",
        &k.abcd(),
        mail(
            &with_fields(&[format!("To: \"Alice\" <{}>", k.a)], 1),
            "Hi\r\n",
        ),
    ));
    let k = kit.cast();
    let (_, group) = hidden_forms(&k.a, &k.b, &k.c).swap_remove(2);
    cases.push(Case::exposing(
        "header: B-encoded group name",
        &k.abc(),
        mail(&with_fields(&[format!("To: {group}")], 1), "Hi\r\n"),
    ));
    let k = kit.cast();
    cases.push(Case::exposing(
        "header: Reply-To",
        &k.abc(),
        undisclosed(&[format!("Reply-To: \"Bob\" <{}>", k.b)], 0, "Hi\r\n"),
    ));
    for label in [
        "HTML &#64;",
        "base64 CSV attachment",
        "quoted-printable soft break in the address",
        "message/rfc822 with the original list",
    ] {
        let k = kit.cast();
        let (extra, body) = body_form(&k.a, &k.b, &k.c, label);
        let mut lines = with_fields(&extra, 2);
        lines.push(s("To: undisclosed-recipients:;"));
        cases.push(Case::exposing(
            format!("body: {label}"),
            &k.abc(),
            mail(&lines, &body),
        ));
    }
    let report = run_mode(
        Mode::Monitor,
        &cases,
        "body_check = \"monitor\"",
        Upstream::Outbox,
    )
    .await;
    eprintln!("monitor: {}", report.summary);
    for case in &cases {
        let about: Vec<&String> = report
            .failures
            .iter()
            .filter(|f| f.contains(&format!("] {}:", case.label)))
            .collect();
        assert!(
            about.iter().any(|f| f.contains("outside view shows")),
            "the outside view missed the leak of {:?}: {about:#?}",
            case.label
        );
        if case.label.starts_with("header") {
            assert!(
                about.iter().any(|f| f.contains("(oracle)")),
                "the oracle missed the leak of {:?}: {about:#?}",
                case.label
            );
        }
    }
    assert!(
        !report.failures.iter().any(|f| f.contains("relay log")),
        "{:#?}",
        report.failures
    );
}
