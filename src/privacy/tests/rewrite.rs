use super::crlf;
use crate::privacy::{Rewrite, body_offset, render_header};

fn only(address: &str, name: Option<&str>) -> Rewrite {
    Rewrite::OnlyRecipient {
        address: address.into(),
        display_name: name.map(str::to_string),
    }
}

fn render(message: &[u8], rewrite: &Rewrite) -> String {
    String::from_utf8(render_header(
        message,
        rewrite,
        &crate::privacy::Exposure::default(),
    ))
    .unwrap()
}

const MSG: &str = "Received: from a\n\tby b; Mon, 1 Jan 2024\nDKIM-Signature: v=1; a=rsa-sha256;\n  b=abc\nFrom: app@x.com\nTo: a@x.com,\n b@y.com\nSubject:   odd  spacing  \nBcc: hidden@z.com\nCc: c@z.com\nX-Other: keep\n\nbody line\nTo: not-a-header@x.com\n";

#[test]
fn unchanged_without_bcc_is_the_original_bytes() {
    let m = crlf("From: app@x.com\nTo: a@x.com, b@y.com\nDKIM-Signature: v=1\n\nbody\n");
    let h = render_header(
        &m,
        &Rewrite::Unchanged,
        &crate::privacy::Exposure::default(),
    );
    assert_eq!(h, &m[..body_offset(&m)]);
    assert!(h.ends_with(b"\r\n\r\n"));
}

#[test]
fn bcc_is_always_removed() {
    let m = crlf(MSG);
    let h = render(&m, &Rewrite::Unchanged);
    assert!(!h.to_lowercase().contains("bcc"));
    assert!(!h.contains("hidden@z.com"));
    // Everything else, DKIM-Signature included, is kept as it was.
    let e = crlf(&MSG.replace("Bcc: hidden@z.com\n", ""));
    assert_eq!(h.as_bytes(), &e[..body_offset(&e)]);
    // Folded Bcc, lower case.
    let m = crlf("Subject: s\nbcc: a@x.com,\n b@y.com\n\nbody");
    assert_eq!(render(&m, &Rewrite::Unchanged), "Subject: s\r\n\r\n");
}

#[test]
fn split_copy_keeps_every_other_field_byte_for_byte() {
    let m = crlf(MSG);
    let h = render(&m, &only("b@y.com", None));
    let expected = crlf(
        "Received: from a\n\tby b; Mon, 1 Jan 2024\nFrom: app@x.com\nTo: b@y.com\nSubject:   odd  spacing  \nX-Other: keep\n\n",
    );
    assert_eq!(h.as_bytes(), expected);
    // The body is not part of the header block and starts where it did.
    assert_eq!(
        &m[body_offset(&m)..],
        crlf("body line\nTo: not-a-header@x.com\n")
    );
}

#[test]
fn dkim_signature_removed_on_rewritten_copies_only() {
    let m = crlf("DKIM-Signature: v=1;\n b=x\nTo: a@x.com, b@y.com\n\nbody");
    assert!(render(&m, &Rewrite::Unchanged).contains("DKIM-Signature"));
    assert!(!render(&m, &only("a@x.com", None)).contains("DKIM"));
    assert!(!render(&m, &Rewrite::Undisclosed).contains("DKIM"));
    let m = crlf("dkim-signature: v=1\nTo: a@x.com\n\n");
    assert_eq!(render(&m, &only("a@x.com", None)), "To: a@x.com\r\n\r\n");
}

#[test]
fn undisclosed_copy() {
    let m = crlf("From: f@x.com\nCc: c@z.com\nTo: a@x.com\nBcc: d@z.com\n\nbody");
    assert_eq!(
        render(&m, &Rewrite::Undisclosed),
        "From: f@x.com\r\nTo: undisclosed-recipients:;\r\n\r\n"
    );
}

#[test]
fn display_name_is_kept_and_quoted() {
    let m = crlf("To: a@x.com, b@y.com\n\n");
    assert_eq!(
        render(&m, &only("a@x.com", Some("Alice"))),
        "To: \"Alice\" <a@x.com>\r\n\r\n"
    );
    assert_eq!(
        render(&m, &only("a@x.com", Some("Doe, \"J\" \\o/"))),
        "To: \"Doe, \\\"J\\\" \\\\o/\" <a@x.com>\r\n\r\n"
    );
}

#[test]
fn non_ascii_names_are_encoded_words() {
    let m = crlf("To: a@x.com, b@y.com\n\n");
    assert_eq!(
        render(&m, &only("j@x.com", Some("Jürgen"))),
        "To: =?utf-8?b?SsO8cmdlbg==?= <j@x.com>\r\n\r\n"
    );
    // Long names fold into several words, each line within 78 characters, and decode back.
    let name = "Ünïcødé ".repeat(20);
    let h = render(&m, &only("j@x.com", Some(name.trim())));
    for line in h.split("\r\n") {
        assert!(line.len() <= 78, "{line:?}");
    }
    assert!(h.matches("=?utf-8?b?").count() > 3);
    let copy = [h.as_bytes(), b"body"].concat();
    let parsed = mail_parser::MessageParser::default().parse(&copy).unwrap();
    let to = parsed.to().unwrap().first().unwrap();
    assert_eq!(to.name.as_deref(), Some(name.trim()));
    assert_eq!(to.address.as_deref(), Some("j@x.com"));
}

#[test]
fn header_injection_through_names_and_addresses_is_stripped() {
    let m = crlf("To: a@x.com, b@y.com\nSubject: s\n\n");
    let h = render(
        &m,
        &only(
            "a@x.com\r\nBcc: evil@z.com",
            Some("Eve\r\nCc: victim@z.com\n\u{0}\u{7f}"),
        ),
    );
    // An address with control characters cannot be shown as itself: no address at all.
    assert_eq!(h, "To: undisclosed-recipients:;\r\nSubject: s\r\n\r\n");
    // A name loses its control characters, so it cannot start a field either.
    let h = render(
        &m,
        &only("a@x.com", Some("Eve\r\nCc: victim@z.com\n\u{0}\u{7f}")),
    );
    assert_eq!(
        h,
        "To: \"EveCc: victim@z.com\" <a@x.com>\r\nSubject: s\r\n\r\n"
    );
    let lines: Vec<&str> = h.split("\r\n").collect();
    assert_eq!(lines[1], "Subject: s");
}

/// smtp-proto strips the quotes of a quoted local part; the copy writes them back, so a
/// reader sees exactly one mailbox, never the addresses the local part spells out.
#[test]
fn unusual_local_parts_are_quoted() {
    let m = crlf("To: a@x.com, b@y.com\nSubject: s\n\n");
    for (address, shown) in [
        ("bob@y.test, x@z.test", "To: \"bob@y.test, x\"@z.test"),
        ("Cc:ther@q.test", "To: \"Cc:ther\"@q.test"),
        ("a\"b\\c@d.test", "To: \"a\\\"b\\\\c\"@d.test"),
        ("first.last+tag@x.test", "To: first.last+tag@x.test"),
        (
            "j\u{fc}rgen@b\u{fc}cher.test",
            "To: j\u{fc}rgen@b\u{fc}cher.test",
        ),
        ("a..b@x.test", "To: \"a..b\"@x.test"),
        ("a@x, b@y.test", "To: \"a@x, b\"@y.test"),
    ] {
        let h = render(&m, &only(address, None));
        assert_eq!(h.lines().next().unwrap(), shown, "{address:?}");
        let copy = [h.as_bytes(), b"body"].concat();
        let parsed = mail_parser::MessageParser::default().parse(&copy).unwrap();
        assert_eq!(
            parsed.to().unwrap().iter().count(),
            1,
            "{address:?}: one mailbox"
        );
    }
    for unusable in [
        "a@x y",
        "a@",
        "@x.test",
        "no-at",
        "a@x,y.test",
        "a\u{1}@x.test",
        "=?utf-8?q?x=40y?=victim@v.test",
    ] {
        let h = render(&m, &only(unusable, None));
        assert!(
            h.starts_with("To: undisclosed-recipients:;\r\n"),
            "{unusable:?}: {h}"
        );
    }
}

#[test]
fn lf_only_messages_stay_lf() {
    let m = b"From: f@x.com\nTo: a@x.com,\n b@y.com\nBcc: z@z.com\n\nbody\n";
    assert_eq!(
        render(m, &only("b@y.com", None)),
        "From: f@x.com\nTo: b@y.com\n\n"
    );
    assert_eq!(
        render(m, &Rewrite::Unchanged),
        "From: f@x.com\nTo: a@x.com,\n b@y.com\n\n"
    );
    assert_eq!(body_offset(m), m.len() - 5);
}

#[test]
fn no_to_field_inserts_at_end_of_header() {
    let m = crlf("From: f@x.com\nSubject: s\n\nbody");
    assert_eq!(
        render(&m, &only("r@y.com", None)),
        "From: f@x.com\r\nSubject: s\r\nTo: r@y.com\r\n\r\n"
    );
}

#[test]
fn to_goes_where_the_first_to_or_cc_was() {
    let m = crlf("A: 1\nCc: c@z.com\nB: 2\nTo: a@x.com\nC: 3\n\n");
    assert_eq!(
        render(&m, &only("a@x.com", None)),
        "A: 1\r\nTo: a@x.com\r\nB: 2\r\nC: 3\r\n\r\n"
    );
}

#[test]
fn message_without_body() {
    // No empty line at all: everything is header, the body is empty.
    let m = b"Subject: s\r\nTo: a@x.com, b@y.com";
    assert_eq!(body_offset(m), m.len());
    assert_eq!(
        render(m, &only("a@x.com", None)),
        "Subject: s\r\nTo: a@x.com\r\n"
    );
    assert_eq!(render(m, &Rewrite::Unchanged), String::from_utf8_lossy(m));
    // Last line without a line ending and no To field: the new field is not glued to it.
    let m = b"Subject: s";
    assert_eq!(
        render(m, &only("a@x.com", None)),
        "Subject: s\r\nTo: a@x.com\r\n"
    );
    // Header ends exactly at the empty line.
    let m = b"To: a@x.com\r\n\r\n";
    assert_eq!(body_offset(m), m.len());
    assert_eq!(render(m, &only("a@x.com", None)), "To: a@x.com\r\n\r\n");
    assert_eq!(body_offset(b""), 0);
    assert_eq!(render(b"", &only("a@x.com", None)), "To: a@x.com\r\n");
}

#[test]
fn thousand_recipient_fan_out() {
    let addrs: Vec<String> = (0..1000)
        .map(|i| format!("user{i:04}@example.com"))
        .collect();
    let mut m = format!(
        "From: app@x.com\r\nTo: {}\r\nSubject: notice\r\n\r\n",
        addrs.join(",\r\n ")
    )
    .into_bytes();
    m.extend_from_slice(b"Dear customer\r\n");
    let body = &m[body_offset(&m)..];
    assert_eq!(body, b"Dear customer\r\n");
    for (i, a) in addrs.iter().enumerate() {
        let h = render_header(&m, &only(a, None), &crate::privacy::Exposure::default());
        let text = String::from_utf8(h).unwrap();
        assert_eq!(
            text,
            format!("From: app@x.com\r\nTo: {a}\r\nSubject: notice\r\n\r\n")
        );
        assert_eq!(text.matches("@example.com").count(), 1, "copy {i}");
    }
}
