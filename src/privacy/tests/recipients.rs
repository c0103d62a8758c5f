use super::crlf;
use crate::privacy::recipients::parse_field;
use crate::privacy::{AddressFieldError, header_from, header_recipients, visible_recipients};

/// Lower-cased addresses of V (trusted included) and |V|.
fn v(message: &str, trusted: &[&str]) -> (Vec<String>, usize, bool) {
    let trusted: Vec<String> = trusted.iter().map(|t| t.to_string()).collect();
    let r = visible_recipients(&crlf(message), &trusted);
    (
        r.addresses
            .iter()
            .map(|a| a.address.to_lowercase())
            .collect(),
        r.counted,
        r.unparseable.is_some(),
    )
}

fn ok(message: &str) -> Vec<String> {
    let (addrs, counted, bad) = v(message, &[]);
    assert!(!bad, "unexpectedly unparseable: {message:?}");
    assert_eq!(counted, addrs.len());
    addrs
}

fn is_unparseable(value: &str) -> bool {
    parse_field(value.as_bytes()).error.is_some()
}

#[test]
fn simple_list_and_multiple_fields() {
    let m = "To: a@x.com, b@y.com\nSubject: s\ncc: c@z.com\nCC: d@z.com\nTo: e@x.com\n\nbody a@body.com\n";
    assert_eq!(
        ok(m),
        ["a@x.com", "b@y.com", "c@z.com", "d@z.com", "e@x.com"]
    );
}

#[test]
fn groups_are_expanded() {
    assert!(ok("To: undisclosed-recipients:;\n\n").is_empty());
    assert_eq!(
        ok("To: team: a@x.com, b@y.com;, c@z.com\n\n"),
        ["a@x.com", "b@y.com", "c@z.com"]
    );
    assert_eq!(
        ok("Cc: one: a@x.com;, two: \"B, b\" <b@y.com>;\n\n"),
        ["a@x.com", "b@y.com"]
    );
}

#[test]
fn quoted_names_with_commas_are_one_address() {
    let r = visible_recipients(&crlf("To: \"Doe, John\" <j@x.com>\n\n"), &[]);
    assert_eq!(r.counted, 1);
    assert!(r.unparseable.is_none());
    assert_eq!(r.addresses[0].display_name.as_deref(), Some("Doe, John"));
    // A name or comment may repeat the mailbox's own address...
    assert_eq!(
        ok("To: \"Bob@Y.com\" <bob@y.com>, (bob@y.com) <bob@y.com>\n\n"),
        ["bob@y.com"]
    );
    // ...but one showing any other address fails closed: readers see it.
    for shown in [
        "\"bob@y.com\" <alice@x.com>",
        "\"a@x.com, b@y.com, c@z.com\" <me@w.com>",
        "me@w.com (cc: b@y.com)",
        "=?utf-8?q?b=40y.com?= <me@w.com>",
    ] {
        assert_eq!(
            parse_field(shown.as_bytes()).error,
            Some(AddressFieldError::AddressInName),
            "{shown}"
        );
    }
}

#[test]
fn rfc2047_names_are_decoded() {
    let r = visible_recipients(
        &crlf("To: =?utf-8?b?SsO8cmdlbg==?= <j@x.com>, =?iso-8859-1?q?Ren=E9?= <r@y.com>\n\n"),
        &[],
    );
    assert!(r.unparseable.is_none());
    assert_eq!(r.counted, 2);
    assert_eq!(r.display_names().get("j@x.com").copied(), Some("Jürgen"));
    assert_eq!(r.display_names().get("r@y.com").copied(), Some("René"));
}

#[test]
fn comments_are_not_addresses() {
    assert_eq!(
        ok("To: a@x.com (Alice, at work), (boss) <b@y.com>\n\n"),
        ["a@x.com", "b@y.com"]
    );
    let r = visible_recipients(&crlf("To: a@x.com (Alice)\n\n"), &[]);
    assert_eq!(r.display_names().get("a@x.com").copied(), Some("Alice"));
}

#[test]
fn folded_lines_are_unfolded() {
    let m = "To: \"A\" <a@x.com>,\n \"B\"\n\t<b@y.com>,\n  c@z.com\nSubject: s\n\n";
    assert_eq!(ok(m), ["a@x.com", "b@y.com", "c@z.com"]);
    // Bare-LF message.
    let lf = b"To: a@x.com,\n b@y.com\n\nbody";
    assert_eq!(visible_recipients(lf, &[]).counted, 2);
}

#[test]
fn duplicates_differing_in_case_count_once() {
    let m = "To: Alice@X.com, b@y.com\nCc: alice@x.COM, B@Y.COM\n\n";
    assert_eq!(ok(m), ["alice@x.com", "b@y.com"]);
}

#[test]
fn trusted_domains_are_not_counted() {
    let (addrs, counted, bad) = v("To: a@corp.com, b@Corp.COM, c@y.com\n\n", &["corp.com"]);
    assert!(!bad);
    assert_eq!(addrs.len(), 3);
    assert_eq!(counted, 1);
    // Exact domain only: a subdomain is not trusted.
    assert_eq!(v("To: a@mail.corp.com\n\n", &["corp.com"]).1, 1);
}

#[test]
fn field_names_are_case_insensitive_and_may_have_space_before_colon() {
    assert_eq!(ok("tO: a@x.com\ncC : b@y.com\n\n"), ["a@x.com", "b@y.com"]);
    // Not To/Cc: not visible recipients.
    assert!(ok("Reply-To: a@x.com\nBcc: b@y.com\n\n").is_empty());
}

#[test]
fn empty_to_is_fine() {
    assert!(ok("To:\nCc: \n\n").is_empty());
}

#[test]
fn unparseable_fields_fail_closed() {
    for bad in [
        "garbage",
        "a@x.com b@y.com",
        "\"unterminated <a@x.com>",
        "<a@x.com",
        "a@x.com>",
        "(open comment a@x.com",
        "John <no-at-sign>",
        "no-at-sign",
        "a@x.com: b@y.com",
        "@x.com",
        "a@",
        "<@route,@r2:a@x.com>",
        "a\\@x.com",
    ] {
        assert!(is_unparseable(bad), "{bad:?} should be unparseable");
    }
    for good in [
        "",
        "  ",
        "a@x.com",
        "\"Doe, John\" <j@x.com>",
        "a@x.com; b@y.com",
        "g:;",
    ] {
        assert!(!is_unparseable(good), "{good:?} should parse");
    }
}

#[test]
fn unparseable_message_counts_as_exposing() {
    let r = visible_recipients(&crlf("To: a@x.com\nCc: garbage@\n\n"), &[]);
    assert_eq!(r.visible(1), 2);
    assert_eq!(r.visible(10), 11);
    // A clean message is not pushed up.
    let r = visible_recipients(&crlf("To: a@x.com\n\n"), &[]);
    assert_eq!(r.visible(1), 1);
}

#[test]
fn stray_line_after_to_is_part_of_it() {
    // `b@y.com, c@z.com` has no field name: it continues the To field, so its addresses
    // are counted (and removed with the field).
    let r = visible_recipients(&crlf("To: a@x.com,\nb@y.com, c@z.com\n\n"), &[]);
    assert_eq!(
        ok("To: a@x.com,\nb@y.com, c@z.com\n\n"),
        ["a@x.com", "b@y.com", "c@z.com"]
    );
    assert_eq!(r.unparseable, None);
    assert!(r.visible(1) > 1);
    // Without the comma the tokens are glued together: that field fails closed.
    let r = visible_recipients(&crlf("To: a@x.com\nb@y.com\n\n"), &[]);
    assert!(r.unparseable.is_some(), "{r:?}");
    // And a split copy drops the stray line together with the To field.
    let m = crlf("To: a@x.com,\nb@y.com, c@z.com\nSubject: s\n\n");
    let h = crate::privacy::render_header(
        &m,
        &crate::privacy::Rewrite::Undisclosed,
        &crate::privacy::Exposure::default(),
    );
    assert_eq!(h, crlf("To: undisclosed-recipients:;\nSubject: s\n\n"));
}

#[test]
fn errors_say_why() {
    assert_eq!(
        parse_field(b"\"x <a@x.com>").error,
        Some(AddressFieldError::Unbalanced)
    );
    assert!(matches!(
        parse_field(b"a@x.com: b@y.com").error,
        Some(AddressFieldError::Unaccounted { .. })
    ));
}

#[test]
fn header_recipients_and_from() {
    let m = crlf(
        "From: \"App\" <app@x.com>\nTo: a@x.com, B@y.com\nCc: b@Y.com\nBcc: c@z.com\n\nbody\n",
    );
    assert_eq!(header_recipients(&m), ["a@x.com", "B@y.com", "c@z.com"]);
    assert_eq!(header_from(&m).as_deref(), Some("app@x.com"));
    assert_eq!(header_from(b"Subject: s\n\n"), None);
}

#[test]
fn body_is_not_header() {
    assert!(ok("Subject: s\n\nTo: a@x.com, b@y.com\n").is_empty());
}
