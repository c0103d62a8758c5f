use super::*;
use crate::config::Config;

fn pattern(s: &str) -> SenderPattern {
    SenderPattern::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
}

#[test]
fn address_patterns_match_case_insensitively() {
    let p = pattern("Invoices@Example.COM");
    assert!(p.matches("invoices@example.com"));
    assert!(p.matches("INVOICES@EXAMPLE.com"));
    assert!(!p.matches("invoices@example.org"));
    assert!(!p.matches("other@example.com"));
    assert!(!p.matches("invoices@sub.example.com"));
    assert!(!p.matches(""));
}

#[test]
fn domain_patterns_match_the_domain_and_subdomain_patterns_only_below_it() {
    let d = pattern("@billing.example.com");
    assert!(d.matches("a@billing.example.com"));
    assert!(d.matches("b+tag@BILLING.example.com"));
    assert!(!d.matches("a@x.billing.example.com"));
    assert!(!d.matches("a@evilbilling.example.com"));
    let s = pattern("@*.example.com");
    assert!(s.matches("a@x.example.com"));
    assert!(s.matches("a@y.x.example.com"));
    assert!(!s.matches("a@example.com"));
    assert!(!s.matches("a@badexample.com"));
}

#[test]
fn domains_compare_as_idna_a_labels() {
    let p = pattern("@bücher.example");
    assert!(p.matches("a@xn--bcher-kva.example"));
    assert!(p.matches("a@BÜCHER.example"));
}

#[test]
fn bad_patterns_are_refused() {
    for bad in ["", "nodomain", "a@", "@", "a b@x.test", "@*."] {
        assert!(SenderPattern::parse(bad).is_none(), "{bad:?}");
    }
}

const BASE: &str = "[[upstream]]\nname = \"o\"\ndir = \"/tmp/mailveil-app-tests\"\n";

fn load(extra: &str) -> Result<Config, Vec<String>> {
    Config::from_toml(&format!("{BASE}{extra}"))
        .map_err(|e| e.problems.iter().map(|p| p.path.clone()).collect())
}

#[test]
fn a_full_app_is_read() {
    let c = load(
        r#"
[privacy]
max_visible_recipients = 3
trusted_domains = ["corp.test"]
[apps]
require_app = true
[[app]]
name = "billing"
logins = ["billing"]
senders = ["invoices@example.com", "@billing.example.com"]
header_senders = ["@example.com"]
[app.privacy]
max_visible_recipients = 1
hold_fanout_above = 50
[[app]]
name = "legacy-crm"
networks = ["10.20.0.0/16"]
senders = ["crm@example.com"]
allow_null_sender = true
"#,
    )
    .unwrap();
    assert!(c.apps.require_app);
    let billing = &c.apps.apps[0];
    assert_eq!(billing.privacy.max_visible_recipients, 1);
    assert_eq!(billing.privacy.trusted_domains, vec!["corp.test"]);
    assert_eq!(billing.hold.as_ref().unwrap().fanout_above, 50);
    assert!(billing.envelope_allowed("x@billing.example.com"));
    assert!(!billing.envelope_allowed(""));
    assert!(billing.header_allowed("anyone@example.com"));
    assert!(!billing.header_allowed("x@billing.example.org"));
    let crm = &c.apps.apps[1];
    assert!(crm.envelope_allowed(""));
    assert_eq!(crm.header_senders, crm.senders);
    assert_eq!(crm.privacy.max_visible_recipients, 3);
    assert!(crm.hold.is_none());
}

#[test]
fn recognition_prefers_the_login_then_the_longest_network() {
    let c = load(
        r#"
[[app]]
name = "a"
logins = ["alogin"]
networks = ["10.0.0.0/8"]
senders = ["@a.test"]
[[app]]
name = "b"
networks = ["10.1.0.0/16"]
senders = ["@b.test"]
"#,
    )
    .unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let name = |app: Option<Arc<AppConfig>>| app.map(|a| a.name.clone());
    assert_eq!(
        name(c.apps.recognise(Some("alogin"), ip("10.1.2.3"))),
        Some("a".into())
    );
    assert_eq!(
        name(c.apps.recognise(None, ip("10.1.2.3"))),
        Some("b".into())
    );
    assert_eq!(
        name(c.apps.recognise(Some("other"), ip("10.2.0.1"))),
        Some("a".into())
    );
    assert_eq!(
        name(c.apps.recognise(None, ip("::ffff:10.1.0.9"))),
        Some("b".into())
    );
    assert_eq!(name(c.apps.recognise(None, ip("192.0.2.1"))), None);
}

#[test]
fn invalid_apps_are_reported_with_their_key_paths() {
    let problems = load(
        r#"
[[app]]
name = "Billing!"
logins = ["x"]
senders = ["not a pattern"]
[[app]]
name = "two"
logins = ["x"]
networks = ["10.0.0.0/8", "nonsense"]
[[app]]
name = "two"
networks = ["10.0.0.0/8"]
senders = ["@t.test"]
[[app]]
name = "none"
senders = ["@n.test"]
"#,
    )
    .unwrap_err();
    for key in [
        "app[0].name",
        "app[0].senders[0]",
        "app[1].logins[0]",
        "app[1].networks[1]",
        "app[1].senders",
        "app[2].name",
        "app[2].networks[0]",
        "app[3].name",
        "app[3]",
    ] {
        assert!(
            problems.iter().any(|p| p == key),
            "{key} missing from {problems:?}"
        );
    }
}

#[test]
fn weaker_overrides_are_refused_unless_allowed() {
    let global = r#"
[privacy]
mode = "split"
max_visible_recipients = 1
trusted_domains = ["corp.test"]
hold_fanout_above = 20
"#;
    let app = |overrides: &str| {
        format!(
            "{global}[[app]]\nname = \"a\"\nlogins = [\"a\"]\nsenders = [\"@a.test\"]\n[app.privacy]\n{overrides}\n"
        )
    };
    let problems = load(&app(
        "mode = \"monitor\"\nmax_visible_recipients = 5\ntrusted_domains = [\"other.test\"]\nhold_fanout_above = 100",
    ))
    .unwrap_err();
    for key in [
        "app[0].privacy.mode",
        "app[0].privacy.max_visible_recipients",
        "app[0].privacy.trusted_domains",
        "app[0].privacy.hold_fanout_above",
    ] {
        assert!(
            problems.iter().any(|p| p == key),
            "{key} missing from {problems:?}"
        );
    }
    let c = load(&app(
        "mode = \"monitor\"\nmax_visible_recipients = 5\nallow_weaker = true",
    ))
    .unwrap();
    assert_eq!(c.apps.apps[0].privacy.max_visible_recipients, 5);
    // Stricter is always fine.
    load(&app("mode = \"reject\"\nmax_visible_recipients = 0\ntrusted_domains = []\nhold_fanout_above = 5"))
        .unwrap();
}
