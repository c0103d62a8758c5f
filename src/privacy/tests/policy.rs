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
    let m = crlf("To: a@x.com\nBcc: b@y.com\n\nbody");
    let env = envelope("app@x.com", &["a@x.com", "b@y.com"]);
    for mode in [
        PrivacyMode::Split,
        PrivacyMode::Bcc,
        PrivacyMode::Reject,
        PrivacyMode::Monitor,
    ] {
        let p = plan(&config(mode, 1, &[]), &env, &m);
        assert_eq!(p.decision, Decision::Pass);
        assert_eq!(p.visible, 1);
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
        let h = String::from_utf8(render_header(&m, &d.rewrite)).unwrap();
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
    let h = render_header(&m, &p.deliveries[1].rewrite);
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
    assert_eq!(rcpts, env.rcpt_to);
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
        let copy = [render_header(&m, &d.rewrite).as_slice(), body].concat();
        let text = String::from_utf8(copy).unwrap().to_lowercase();
        assert_eq!(text.matches("@example.com").count(), 1, "copy {i}");
        assert!(text.contains(&format!("to: \"customer {i}\" <{}>\r\n", rcpts[i])));
        assert!(text.ends_with("\r\n\r\nhello\r\n"));
    }
}
