use super::{config, crlf, envelope, split};
use crate::config::PrivacyMode;
use crate::privacy::{Decision, PlannedDelivery, Rewrite, body_offset, plan, render_header};

const EXPOSING: &str =
    "From: app@x.com\nTo: \"Alice A\" <alice@x.com>, bob@y.com\nBcc: carol@z.com\n\nHi\n";

fn only(address: &str, name: Option<&str>) -> Rewrite {
    Rewrite::OnlyRecipient {
        address: address.into(),
        display_name: name.map(str::to_string),
    }
}

#[test]
fn non_exposing_passes_unchanged_whatever_the_mode() {
    // Nobody is shown anyone else: the visible To names nobody private, Bcc is removed.
    let m = crlf("From: app@x.com\nTo: undisclosed-recipients:;\nBcc: a@x.com, b@y.com\n\nbody");
    let env = envelope("app@x.com", &["a@x.com", "b@y.com"]);
    for mode in [
        PrivacyMode::Split,
        PrivacyMode::Bcc,
        PrivacyMode::Reject,
        PrivacyMode::Monitor,
    ] {
        let p = plan(&config(mode, 1, &[]), &env, &m);
        assert_eq!(p.decision, Decision::Pass);
        assert_eq!(p.visible, 0);
        assert_eq!(
            p.deliveries,
            [PlannedDelivery {
                rcpt_to: env.rcpt_to.clone(),
                rewrite: Rewrite::Unchanged
            }]
        );
    }
}

#[test]
fn split_one_copy_per_envelope_recipient_with_names_from_v() {
    let m = crlf(EXPOSING);
    // Case differs from the header: the name is still found; the envelope is kept as given.
    let env = envelope("app@x.com", &["ALICE@x.com", "bob@y.com", "carol@z.com"]);
    let p = plan(&split(), &env, &m);
    assert_eq!(p.decision, Decision::Split);
    assert_eq!(p.visible, 2);
    let rewrites: Vec<_> = p.deliveries.iter().map(|d| d.rewrite.clone()).collect();
    assert_eq!(
        rewrites,
        [
            only("ALICE@x.com", Some("Alice A")),
            only("bob@y.com", None),
            only("carol@z.com", None),
        ]
    );
    for d in &p.deliveries {
        assert_eq!(d.rcpt_to.len(), 1);
        let h = String::from_utf8(render_header(
            &m,
            &d.rewrite,
            &crate::privacy::Exposure::default(),
        ))
        .unwrap();
        let me = d.rcpt_to[0].to_lowercase();
        for other in ["alice@x.com", "bob@y.com", "carol@z.com"] {
            assert_eq!(h.to_lowercase().contains(other), other == me, "{h}");
        }
    }
}

#[test]
fn split_without_to_field() {
    // Only Cc exposes; the copies get a To: at the place of the Cc.
    let m = crlf("Subject: s\nCc: a@x.com, b@y.com\nX: 1\n\nbody");
    let p = plan(&split(), &envelope("", &["a@x.com", "b@y.com"]), &m);
    assert_eq!(p.decision, Decision::Split);
    let h = render_header(
        &m,
        &p.deliveries[1].rewrite,
        &crate::privacy::Exposure::default(),
    );
    assert_eq!(h, crlf("Subject: s\nTo: b@y.com\nX: 1\n\n"));
    // No To/Cc at all is not exposing: nothing to split.
    let m = crlf("Subject: s\n\nbody");
    let p = plan(&split(), &envelope("", &["a@x.com", "b@y.com"]), &m);
    assert_eq!(p.decision, Decision::Pass);
}

#[test]
fn name_holding_an_address_is_dropped() {
    let m = crlf("To: \"bob@y.com\" <alice@x.com>, bob@y.com\n\n");
    let p = plan(&split(), &envelope("", &["alice@x.com", "bob@y.com"]), &m);
    assert_eq!(p.deliveries[0].rewrite, only("alice@x.com", None));
    // Even its own address: the rewrite writes the address once, after the name is gone.
    let m = crlf("To: \"alice@x.com\" <alice@x.com>, bob@y.com\n\n");
    let p = plan(&split(), &envelope("", &["alice@x.com"]), &m);
    assert_eq!(p.deliveries[0].rewrite, only("alice@x.com", None));
    // A name showing someone else's address makes even one mailbox exposing.
    let m = crlf("To: \"bob@y.com\" <alice@x.com>\n\n");
    let p = plan(&split(), &envelope("", &["alice@x.com"]), &m);
    assert_eq!((p.decision, p.visible), (Decision::Split, 2));
}

#[test]
fn other_modes() {
    let m = crlf(EXPOSING);
    let env = envelope("app@x.com", &["alice@x.com", "bob@y.com"]);
    let p = plan(&config(PrivacyMode::Bcc, 1, &[]), &env, &m);
    assert_eq!(p.decision, Decision::Bcc);
    assert_eq!(
        p.deliveries,
        [PlannedDelivery {
            rcpt_to: env.rcpt_to.clone(),
            rewrite: Rewrite::Undisclosed
        }]
    );
    let p = plan(&config(PrivacyMode::Reject, 1, &[]), &env, &m);
    assert_eq!((p.decision, p.visible), (Decision::Reject, 2));
    assert!(p.deliveries.is_empty());
    let p = plan(&config(PrivacyMode::Monitor, 1, &[]), &env, &m);
    assert_eq!(p.decision, Decision::Monitor);
    assert_eq!(p.deliveries[0].rewrite, Rewrite::Unchanged);
    assert_eq!(p.deliveries[0].rcpt_to, env.rcpt_to);
}

#[test]
fn threshold_and_trusted_domains() {
    let m = crlf("To: a@corp.com, b@corp.com, c@y.com\n\n");
    let env = envelope("", &["a@corp.com"]);
    assert_eq!(
        plan(&config(PrivacyMode::Split, 1, &["corp.com"]), &env, &m).decision,
        Decision::Pass
    );
    assert_eq!(
        plan(&config(PrivacyMode::Split, 1, &[]), &env, &m).decision,
        Decision::Split
    );
    assert_eq!(
        plan(&config(PrivacyMode::Split, 3, &[]), &env, &m).decision,
        Decision::Pass
    );
    assert_eq!(
        plan(&config(PrivacyMode::Split, 0, &["corp.com"]), &env, &m).visible,
        1
    );
}

#[test]
fn unparseable_header_fails_closed() {
    let m = crlf("To: a@x.com\nCc: \"broken <b@y.com>\n\nbody");
    let env = envelope("", &["a@x.com", "b@y.com"]);
    let p = plan(&split(), &env, &m);
    assert_eq!(p.decision, Decision::Split);
    assert!(p.visible >= 2);
    let p = plan(&config(PrivacyMode::Split, 5, &[]), &env, &m);
    assert_eq!((p.decision, p.visible), (Decision::Split, 6));
    // And in reject mode the message is refused.
    let p = plan(&config(PrivacyMode::Reject, 1, &[]), &env, &m);
    assert_eq!(p.decision, Decision::Reject);
}

#[test]
fn envelope_is_only_divided() {
    let m = crlf("To: a@x.com, b@y.com, c@z.com\n\n");
    let env = envelope("", &["b@y.com", "d@w.com", "b@y.com"]);
    let p = plan(&split(), &env, &m);
    let rcpts: Vec<String> = p
        .deliveries
        .iter()
        .flat_map(|d| d.rcpt_to.clone())
        .collect();
    // Divided, never added to; a repeated recipient gets one copy.
    assert_eq!(rcpts, ["b@y.com", "d@w.com"]);
    assert!(plan(&split(), &envelope("", &[]), &m).deliveries.is_empty());
}

#[test]
fn thousand_address_to_message() {
    let addrs: Vec<String> = (0..1000)
        .map(|i| format!("Cust{i:04}@Example.com"))
        .collect();
    let to = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("\"Customer {i}\" <{a}>"))
        .collect::<Vec<_>>()
        .join(", ");
    let m = format!("From: exchange@x.com\r\nTo: {to}\r\nSubject: notice\r\n\r\nHello\r\n")
        .into_bytes();
    let rcpts: Vec<String> = addrs.iter().map(|a| a.to_lowercase()).collect();
    let env = crate::envelope::Envelope {
        mail_from: "exchange@x.com".into(),
        rcpt_to: rcpts.clone(),
    };
    let p = plan(&split(), &env, &m);
    assert_eq!((p.decision, p.visible), (Decision::Split, 1000));
    assert_eq!(p.deliveries.len(), 1000);
    let body = &m[body_offset(&m)..];
    for (i, d) in p.deliveries.iter().enumerate() {
        assert_eq!(d.rcpt_to, [rcpts[i].clone()]);
        let copy = [
            render_header(&m, &d.rewrite, &crate::privacy::Exposure::default()).as_slice(),
            body,
        ]
        .concat();
        let text = String::from_utf8(copy).unwrap().to_lowercase();
        assert_eq!(text.matches("@example.com").count(), 1, "copy {i}");
        assert!(text.contains(&format!("to: \"customer {i}\" <{}>\r\n", rcpts[i])));
        assert!(text.ends_with("\r\n\r\nhello\r\n"));
    }
}

#[test]
fn one_visible_address_shown_to_others_is_the_mail_merge_leak() {
    // `To: a` with a, b, c, d in the envelope: b, c and d would see a. Split, never refused
    // in split mode; refused in reject mode.
    let m = crlf("From: app@x.com\nTo: \"Alice\" <a@x.com>\nSubject: s\n\nbody");
    let env = envelope("app@x.com", &["a@x.com", "b@y.com", "c@z.com", "d@w.com"]);
    let p = plan(&split(), &env, &m);
    assert_eq!(
        (p.decision, p.visible, p.deliveries.len()),
        (Decision::Split, 1, 4)
    );
    assert_eq!(p.deliveries[0].rewrite, only("a@x.com", Some("Alice")));
    assert_eq!(p.deliveries[1].rewrite, only("b@y.com", None));
    let p = plan(&config(PrivacyMode::Reject, 1, &[]), &env, &m);
    assert_eq!(p.decision, Decision::Reject);
    assert!(p.refusal.unwrap().text.contains("1 recipient address"));
    // The same with the others in Bcc.
    let m = crlf("To: a@x.com\nBcc: b@y.com\n\nbody");
    let p = plan(&split(), &envelope("", &["a@x.com", "b@y.com"]), &m);
    assert_eq!(p.decision, Decision::Split);
    // Alone, a sees only itself: unchanged.
    let p = plan(&split(), &envelope("", &["a@x.com"]), &m);
    assert_eq!(p.decision, Decision::Pass);
}

#[test]
fn within_max_visible_the_visible_see_each_other_and_nobody_else_sees_them() {
    let m = crlf("To: a@x.com, b@y.com\n\nbody");
    let two = config(PrivacyMode::Split, 2, &[]);
    let p = plan(&two, &envelope("", &["a@x.com", "b@y.com"]), &m);
    assert_eq!(p.decision, Decision::Pass);
    let p = plan(&two, &envelope("", &["a@x.com", "b@y.com", "c@z.com"]), &m);
    assert_eq!(p.decision, Decision::Split);
}

#[test]
fn trusted_recipients_may_see_and_trusted_addresses_are_not_private() {
    // Bcc to the operator's own archive: the archive may see the customer.
    let m = crlf("From: app@corp.test\nTo: cust@x.com\nBcc: archive@corp.test\n\nbody");
    let env = envelope("app@corp.test", &["cust@x.com", "archive@corp.test"]);
    assert_eq!(plan(&split(), &env, &m).decision, Decision::Split);
    let trusting = config(PrivacyMode::Reject, 1, &["corp.test"]);
    assert_eq!(plan(&trusting, &env, &m).decision, Decision::Pass);
    // Never for an address that can route elsewhere.
    let env = envelope("app@corp.test", &["cust@x.com", "other%y.com@corp.test"]);
    assert_eq!(plan(&trusting, &env, &m).decision, Decision::Reject);
}

#[test]
fn fields_outside_to_cc_refuse_after_the_rewrite() {
    let env = envelope("app@x.com", &["a@x.com", "b@y.com"]);
    for field in [
        "Reply-To: a@x.com, b@y.com",
        "X-Customer-List: b@y.com",
        "Disposition-Notification-To: =?utf-8?q?b=40y.com?=",
        "Comments: contact b\u{ff20}y.com",
        "From: app@x.com,\n  b@y.com",
    ] {
        let m = crlf(&format!(
            "From: app@x.com\nTo: a@x.com, b@y.com\n{field}\n\nbody"
        ));
        let p = plan(&split(), &env, &m);
        assert_eq!(p.decision, Decision::Reject, "{field}");
        let refusal = p.refusal.unwrap();
        assert_eq!(refusal.reason, crate::privacy::BlockReason::Field);
        assert!(
            refusal.text.contains("after the split rewrite"),
            "{field}: {}",
            refusal.text
        );
        // Monitor relays it anyway.
        let p = plan(&config(PrivacyMode::Monitor, 1, &[]), &env, &m);
        assert_eq!(p.decision, Decision::Monitor, "{field}");
    }
    // Recipient fields besides To/Cc are dropped from split copies instead.
    for field in [
        "Resent-To: b@y.com",
        "Apparently-To: b@y.com",
        "Resent-Bcc: b@y.com",
        "X-Original-To: b@y.com",
    ] {
        let m = crlf(&format!("To: a@x.com\n{field}\n\nbody"));
        let p = plan(&split(), &env, &m);
        assert_eq!(p.decision, Decision::Split, "{field}");
    }
}

#[test]
fn received_for_clause_naming_a_recipient_is_removed() {
    let m = crlf(
        "Received: from app ([10.0.0.1])\n\tby mta with ESMTP id 1\n\tfor <b@y.com>; Tue, 1 Dec 2026 10:00:00 +0000\nTo: a@x.com, b@y.com\n\nbody",
    );
    let env = envelope("", &["a@x.com", "b@y.com"]);
    let (exposure, p) = crate::privacy::assess(&split(), &env, &m);
    assert_eq!(p.decision, Decision::Split);
    let h = String::from_utf8(render_header(&m, &p.deliveries[0].rewrite, &exposure)).unwrap();
    assert!(!h.contains("b@y.com"), "{h}");
    assert!(h.contains("id 1; Tue, 1 Dec 2026"), "{h}");
}

#[test]
fn body_check() {
    let env = envelope("app@x.com", &["a@x.com", "b@y.com"]);
    let plain = crlf("To: undisclosed-recipients:;\n\nYour address is a@x.com\n");
    let p = plan(&split(), &env, &plain);
    let refusal = p.refusal.clone().unwrap();
    assert_eq!(refusal.reason, crate::privacy::BlockReason::Body);
    // Base64 attachment with the list, a CSV.
    use base64::Engine as _;
    let csv = base64::engine::general_purpose::STANDARD.encode("name,email\nB,b@y.com\n");
    let mime = crlf(&format!(
        "To: undisclosed-recipients:;\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: text/plain\n\nhello\n--XX\nContent-Type: text/csv; name=list.csv\nContent-Transfer-Encoding: base64\n\n{csv}\n--XX--\n"
    ));
    let refusal = plan(&split(), &env, &mime).refusal.unwrap();
    assert!(refusal.text.contains("text/csv"), "{}", refusal.text);
    // monitor and off let it through.
    let mut monitor = split();
    monitor.body_check = crate::config::BodyCheck::Monitor;
    let p = plan(&monitor, &env, &mime);
    assert!(p.refusal.is_none() && p.body_warning.is_some());
    monitor.body_check = crate::config::BodyCheck::Off;
    assert!(plan(&monitor, &env, &mime).body_warning.is_none());
    // One recipient may read its own address.
    assert!(
        plan(&split(), &envelope("", &["a@x.com"]), &plain)
            .refusal
            .is_none()
    );
}

#[test]
fn body_base64_with_junk_characters_is_read_as_lenient_decoders_do() {
    use base64::Engine as _;
    let env = envelope("app@x.com", &["a@x.com", "b@y.com"]);
    let encoded = base64::engine::general_purpose::STANDARD
        .encode("name,email\r\nA,a@x.com\r\nB,b@y.com\r\n");
    let junk: String = encoded
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            if i % 7 == 6 {
                vec![c, ' ', '!']
            } else {
                vec![c]
            }
        })
        .collect();
    let m = crlf(&format!(
        "To: undisclosed-recipients:;\nContent-Type: text/csv\nContent-Transfer-Encoding: base64\n\n{junk}\n"
    ));
    let refusal = plan(&split(), &env, &m).refusal.expect("refused");
    assert_eq!(refusal.reason, crate::privacy::BlockReason::Body);
}

#[test]
fn body_html_tags_and_uuencode_are_read_as_clients_render_them() {
    let env = envelope("app@x.com", &["a@x.com", "b@y.com"]);
    let html = crlf(
        "To: undisclosed-recipients:;\nContent-Type: text/html\n\n<p>b<span></span>@<!-- x -->y.com</p>\n",
    );
    assert!(plan(&split(), &env, &html).refusal.is_some());
    // `b@y.com` uuencoded inline in a text part.
    let uu = crlf("To: undisclosed-recipients:;\n\nbegin 644 list.txt\n'8D!Y+F-O;0``\n`\nend\n");
    assert!(plan(&split(), &env, &uu).refusal.is_some());
}
