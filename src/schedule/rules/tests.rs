use std::time::Duration;

use super::*;
use crate::config::{ReplyPattern, RuleDuration, SetLimits};
use crate::upstream::Stage;

fn rejected(reply: &str) -> UpstreamError {
    let (code, text) = reply.split_once(' ').unwrap();
    UpstreamError::Rejected {
        stage: Stage::RcptTo,
        code: code.parse().unwrap(),
        text: text.into(),
    }
}

/// The built-in rule a reply matches, by name.
fn rule_for(reply: &str) -> Option<String> {
    let rules = built_in();
    find(&rules, &rejected(reply)).map(|r| r.name.clone())
}

fn action_of(reply: &str) -> Option<ShapingAction> {
    let rules = built_in();
    find(&rules, &rejected(reply)).map(|r| r.action)
}

fn verdict_of(reply: &str) -> Verdict {
    let rules = built_in();
    let error = rejected(reply);
    verdict(&error, find(&rules, &error))
}

fn is(reply: &str, name: &str) {
    assert_eq!(rule_for(reply).as_deref(), Some(name), "{reply}");
}

fn none(reply: &str) {
    assert_eq!(rule_for(reply), None, "{reply}");
}

#[test]
fn yahoo() {
    is(
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "yahoo-tss04",
    );
    assert_eq!(
        action_of("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"),
        Some(ShapingAction::Suspend)
    );
    is(
        "421 4.7.0 [TSS05] Messages from 192.0.2.1 temporarily deferred due to user complaints",
        "yahoo-tss05",
    );
    is(
        "421 [IPTS05] Messages from 192.0.2.1 temporarily deferred",
        "yahoo-tss05",
    );
    is(
        "421 [IPTS04] Messages from 192.0.2.1 temporarily deferred",
        "yahoo-ipts04",
    );
    is(
        "421 4.7.0 [TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints",
        "yahoo-ts01",
    );
    is(
        "421 4.7.0 [TS02] Messages from 192.0.2.1 temporarily deferred",
        "yahoo-ts02",
    );
    is(
        "421 4.7.1 [TS03] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed",
        "yahoo-ts03",
    );
    is(
        "421 Max message per connection reached, closing transmission channel",
        "yahoo-per-connection",
    );
    // Not Yahoo's tags: no bracket, another number, a 5xx.
    none("450 4.1.1 [TS04] not a Yahoo code");
    none("421 4.7.0 TS01 without brackets");
    none("554 5.7.9 Message not accepted for policy reasons. See https://postmaster.yahooinc.com");
    none("550 5.1.1 <x@yahoo.com>: user unknown, messages from 192.0.2.1 deferred");
}

#[test]
fn netease() {
    is(
        "451 DT:SPM 163 smtp14,EsCowACnlw2X0Wxl, please try again",
        "netease-dt-spm",
    );
    is(
        "554 DT:SPM 163 smtp14,EsCowACnlw2X0Wxl http://mail.163.com/help/help_spam_16.htm?ip=192.0.2.1",
        "netease-dt-spm-5xx",
    );
    is(
        "550 RP:ORQ 126 mx1,Ac8vCgA3 http://mail.163.com/help/help_spam_16.htm",
        "netease-rp-orq",
    );
    is(
        "554 HL:ITC 163 smtp3,DdGowAB http://mail.163.com/help/help_spam_16.htm",
        "netease-hl-itc",
    );
    is(
        "421 HL:ICC 163 smtp3, too many concurrent connections",
        "netease-hl-icc",
    );
    is(
        "421 HL:IFC 163 mx13,WsCowABH, too many mails from your ip",
        "netease-hl-ifc",
    );
    is(
        "450 MI:DMC 163 smtp2, too many mails in this connection",
        "netease-mi-dmc",
    );
    is(
        "450 RP:DRC 163 smtp2, too many recipients in this connection",
        "netease-mi-dmc",
    );
    is(
        "451 MI:SFQ 163 smtp10, sender over its 15 minute quota",
        "netease-mi-sfq",
    );
    // Beijing midnight, whatever the time now.
    let rules = built_in();
    let itc = rules.iter().find(|r| r.name == "netease-hl-itc").unwrap();
    match itc.duration {
        RuleDuration::Until(w) => assert_eq!(w.to_string(), "00:00+08:00"),
        other => panic!("{other:?}"),
    }
    // A real NetEase refusal of one recipient is not a throttle.
    none("550 User not found: x@163.com");
    none("550 MI:NHD 163 mx14, no such user");
    assert_eq!(verdict_of("550 User not found: x@163.com"), Verdict::Failed);
    assert_eq!(verdict_of("554 DT:SPM 163 smtp14"), Verdict::Deferred);
}

#[test]
fn qq() {
    for variant in ["Ip", "Connection", "Sender", "Domain"] {
        let reply = format!(
            "550 {variant} frequency limited. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000725"
        );
        is(&reply, "qq-frequency");
        assert_eq!(verdict_of(&reply), Verdict::Deferred, "{reply}");
    }
    is(
        "550 Mail content denied. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000726",
        "qq-content-denied",
    );
    let rules = built_in();
    let denied = rules
        .iter()
        .find(|r| r.name == "qq-content-denied")
        .unwrap();
    assert_eq!(denied.threshold.map(|t| t.count), Some(5));
    // Per recipient: defers the copy, leaves the provider alone.
    is(
        "550 Mailbox unavailable or access denied [MJa/7L4s9Z3l1ZsT]",
        "qq-recipient-busy",
    );
    assert_eq!(
        action_of("550 Mailbox unavailable or access denied"),
        Some(ShapingAction::Defer)
    );
    // A mailbox that does not exist is a real failure.
    none("550 Mailbox not found or access denied");
    assert_eq!(
        verdict_of("550 Mailbox not found or access denied"),
        Verdict::Failed
    );
    none("550 5.1.1 user unknown, frequency of delivery noted");
}

#[test]
fn google() {
    is(
        "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
        "google-unusual-rate",
    );
    is(
        "421 4.7.0 Our system has detected that this message is suspicious due to the very low reputation of the sending domain.",
        "google-suspicious",
    );
    // Per recipient: defers only, does not slow Google down.
    is(
        "450 4.2.1 The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time.",
        "google-recipient-rate",
    );
    is(
        "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.",
        "google-recipient-rate",
    );
    // The 5xx block of the same wording fails: a blocked IP is not a pace.
    none(
        "550 5.7.1 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been blocked.",
    );
    none(
        "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.",
    );
    none("452 4.2.2 The email account that you tried to reach is over quota.");
}

#[test]
fn microsoft() {
    let rules = built_in();
    let set = |reply: &str| match find(&rules, &rejected(reply)).map(|r| r.action) {
        Some(ShapingAction::Set(l)) => l,
        other => panic!("{reply}: {other:?}"),
    };
    is(
        "421 4.3.2 The maximum number of concurrent connections has exceeded a limit, closing transmission channel",
        "microsoft-connections",
    );
    is(
        "451 4.7.500 Access denied, has exceeded the maximum number of connections",
        "microsoft-connections",
    );
    is(
        "421 4.4.2 Connection dropped due to exceed max concurrent connections. IB007",
        "microsoft-connections",
    );
    assert_eq!(
        set("421 has exceeded the maximum number of connections").max_connections,
        Some(1)
    );
    is(
        "421 4.4.2 has exceeded maximum number of messages per connection",
        "microsoft-per-connection",
    );
    assert_eq!(
        set("421 4.4.2 has exceeded maximum number of messages per connection")
            .max_deliveries_per_connection,
        Some(2)
    );
    is(
        "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719) [BN8NAM12FT041.eop-nam12.prod.protection.outlook.com]",
        "microsoft-server-busy",
    );
    is(
        "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
        "microsoft-rate-limited",
    );
    none("550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)");
    none(
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3140).",
    );
}

#[test]
fn apple() {
    is(
        "451 4.7.1 Service unavailable - try again later",
        "apple-service-unavailable",
    );
    is(
        "451 [BS02] Temporary server error. Please try again later.",
        "apple-bs02-hcm1",
    );
    is(
        "421 [HCM1] Your mail from 192.0.2.1 was deferred",
        "apple-bs02-hcm1",
    );
    // Per recipient (would otherwise hit the generic "try again later").
    is(
        "421 4.7.1 Messages to x@icloud.com deferred due to excessive volume. Try again later - https://support.apple.com/en-us/HT204137",
        "apple-recipient-volume",
    );
    none(
        "550 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137",
    );
    none("550 5.1.1 <x@icloud.com>: user does not exist");
}

#[test]
fn per_recipient_replies_never_touch_the_provider() {
    for reply in [
        "450 4.2.1 The user you are trying to contact is receiving mail too quickly.",
        "550 Mailbox unavailable or access denied",
        "421 4.7.1 Messages to x@icloud.com deferred due to excessive volume. Try again later",
    ] {
        assert_eq!(action_of(reply), Some(ShapingAction::Defer), "{reply}");
        assert_eq!(verdict_of(reply), Verdict::Deferred, "{reply}");
    }
}

#[test]
fn generic_wording_and_user_unknown() {
    is(
        "421 4.7.0 Too many connections from your IP",
        "too-many-connections",
    );
    is("450 4.7.1 Rate limited, slow down", "rate-limit-wording");
    is("451 4.3.0 Please try again later", "rate-limit-wording");
    none("452 4.2.2 Mailbox full");
    // Generic words in a 5xx are a real refusal: no rule, failed for good.
    for reply in [
        "550 5.1.1 user unknown: too many connections, try again later, rate limit",
        "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in virtual mailbox table",
        "554 5.7.1 too many messages from you; sending too fast",
    ] {
        none(reply);
        assert_eq!(verdict_of(reply), Verdict::Failed, "{reply}");
    }
}

#[test]
fn every_built_in_rule_has_a_unique_name() {
    let rules = built_in();
    let mut names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "{names:?}");
}

#[test]
fn configured_rules_come_first_and_defaults_can_be_off() {
    let mine = ShapingRule::new(
        "mine",
        ReplyPattern::contains("[TS01]"),
        ShapingAction::Suspend,
        Duration::from_secs(1),
    );
    let config = ShapingConfig {
        default_rules: true,
        rules: vec![mine],
        mx: None,
    };
    let rules = for_config(&config);
    assert_eq!(
        rules.len(),
        built_in().len() + super::super::esp_rules::built_in().len() + 1
    );
    assert_eq!(
        find(&rules, &rejected("421 [TS01] x")).map(|r| r.name.as_str()),
        Some("mine")
    );
    let only_mine = for_config(&ShapingConfig {
        default_rules: false,
        ..config
    });
    assert!(find(&only_mine, &rejected("451 DT:SPM")).is_none());
}

#[test]
fn verdicts() {
    let fail = ShapingRule::new(
        "f",
        ReplyPattern::contains("no such"),
        ShapingAction::Fail,
        Duration::ZERO,
    );
    let e = rejected("450 4.1.1 no such user");
    assert_eq!(
        verdict(&e, Some(&fail)),
        Verdict::Failed,
        "a fail rule fails a 4xx"
    );
    assert_eq!(verdict(&e, None), Verdict::Deferred);
    let refused = UpstreamError::Refused {
        stage: Stage::Greeting,
        code: 421,
        text: "no such thing".into(),
    };
    assert_eq!(
        verdict(&refused, Some(&fail)),
        Verdict::Deferred,
        "a refused session says nothing about the message"
    );
    let set = ShapingRule::new(
        "s",
        ReplyPattern::contains("x"),
        ShapingAction::Set(SetLimits::default()),
        Duration::from_secs(1),
    );
    assert_eq!(verdict(&rejected("554 x"), Some(&set)), Verdict::Deferred);
    assert_eq!(verdict(&rejected("554 x"), None), Verdict::Failed);
    assert_eq!(verdict(&UpstreamError::NoStartTls, None), Verdict::Deferred);
    assert!(
        reply_of(&UpstreamError::NoStartTls).is_none(),
        "no reply, no rule"
    );
}

#[test]
fn a_threshold_acts_on_the_nth_match_within_the_window() {
    let t = Thresholds::default();
    let five = Threshold {
        count: 5,
        window: Duration::from_secs(3600),
    };
    let start = Instant::now();
    let at = |s: u64| start + Duration::from_secs(s);
    for i in 0..4 {
        assert!(
            !t.reached_at("r", "qq", five, at(i * 60)),
            "match {}",
            i + 1
        );
    }
    assert!(!t.reached_at("r", "netease", five, at(300)), "per lane");
    assert!(!t.reached_at("other", "qq", five, at(300)), "per rule");
    assert!(t.reached_at("r", "qq", five, at(300)), "the 5th");
    assert!(
        t.reached_at("r", "qq", five, at(400)),
        "and while it stays there"
    );
    // Two hours later the old matches have left the window.
    assert!(!t.reached_at("r", "qq", five, at(2 * 3600)));
    assert_eq!(t.count("r", "qq"), 1);
}
