use super::*;

const MINIMAL: &str = r#"
[[upstream]]
name = "outbox"
dir = "./outbox"
"#;

#[test]
fn minimal_file_gets_documented_defaults() {
    let c = Config::from_toml(MINIMAL).expect("valid");
    assert_eq!(c.server.listen, "127.0.0.1:2525".parse().unwrap());
    assert_eq!(c.server.max_message_size, 26_214_400);
    assert_eq!(c.server.max_recipients, 1000);
    assert_eq!(c.server.max_connections, 1024);
    assert_eq!(c.server.command_timeout, Duration::from_secs(300));
    assert_eq!(c.privacy.mode, PrivacyMode::Split);
    assert_eq!(c.privacy.max_visible_recipients, 1);
    assert_eq!(c.spool.max_queue_time, Duration::from_secs(3 * 86_400));
    assert_eq!(c.access.networks.len(), 2);
    assert!(matches!(c.upstreams[0].kind, UpstreamKind::Dir { .. }));
    assert!(!c.log.show_addresses);
}

#[test]
fn durations_and_sizes_accept_integers_and_text() {
    let c = Config::from_toml(&format!(
        "[server]\nmax_message_size = \"10MiB\"\ncommand_timeout = \"90s\"\n[spool]\nretry_initial = 2\nretry_max = \"5m\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.server.max_message_size, 10 * 1024 * 1024);
    assert_eq!(c.server.command_timeout, Duration::from_secs(90));
    assert_eq!(c.spool.retry_initial, Duration::from_secs(2));
    assert_eq!(c.spool.retry_max, Duration::from_secs(300));
}

#[test]
fn every_problem_is_reported_with_its_key_path() {
    let text = r#"
[server]
listen = "nowhere"
bogus = 1
[privacy]
mode = "shred"
[spool]
retry_initial = "soon"
[[upstream]]
name = "a"
host = "smtp.example.net"
tls = "maybe"
username = "u"
password_env = "MAILVEIL_TEST_SURELY_UNSET_VAR"
[[upstream]]
name = "b"
[colour]
x = 1
"#;
    let err = Config::from_toml(text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "colour",
        "server.bogus",
        "privacy.mode",
        "spool.retry_initial",
        "upstream[0].tls",
        "upstream[0].password_env",
        "upstream[1]",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn no_upstream_is_an_error() {
    let err = Config::from_toml("").unwrap_err();
    assert_eq!(err.problems[0].path, "upstream");
}

#[test]
fn credentials_over_plaintext_are_refused() {
    let text = r#"
[[upstream]]
host = "127.0.0.1"
tls = "none"
username = "u"
password_file = "/dev/null"
"#;
    let err = Config::from_toml(text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    // /dev/null is empty -> password problem; plaintext problem only when credentials resolve.
    assert!(paths.contains(&"upstream[0].password_file"), "{paths:?}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "hunter2\n").unwrap();
    let text = format!(
        "[[upstream]]\nhost = \"smtp.example.net\"\nusername = \"u\"\npassword_file = \"{}\"\n",
        f.display()
    );
    let c = Config::from_toml(&text).unwrap();
    let UpstreamKind::Smtp(s) = &c.upstreams[0].kind else {
        panic!()
    };
    assert_eq!(s.credentials.as_ref().unwrap().password.expose(), "hunter2");
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn the_shipped_default_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mailveil.toml");
    let c = Config::load(Path::new(path)).expect("config/mailveil.toml must validate");
    assert!(c.server.listen.ip().is_loopback());
    assert!(matches!(c.upstreams[0].kind, UpstreamKind::Dir { .. }));
}

#[test]
fn http_listeners_have_connection_caps() {
    let c = Config::from_toml(&format!("[admin]\ntoken_env = \"X\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.metrics.max_connections, 64);
    assert_eq!(c.admin.unwrap().max_connections, 16);
    let c = Config::from_toml(&format!(
        "[metrics]\nmax_connections = 200\n[admin]\nmax_connections = 4\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.metrics.max_connections, 200);
    assert_eq!(c.admin.unwrap().max_connections, 4);
    let err = Config::from_toml(&format!("[metrics]\nmax_connections = 0\n{MINIMAL}")).unwrap_err();
    assert_eq!(err.problems[0].path, "metrics.max_connections");
}
