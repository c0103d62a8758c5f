use super::*;
use std::time::Duration;

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
fn a_loopback_smarthost_is_local_unless_told_otherwise() {
    let local_of = |extra: &str| {
        let c = Config::from_toml(&format!("[[upstream]]\nname = \"u\"\n{extra}")).unwrap();
        match &c.upstreams[0].kind {
            UpstreamKind::Smtp(s) => s.local,
            UpstreamKind::Dir { .. } | UpstreamKind::Mx(_) => unreachable!("an SMTP upstream"),
        }
    };
    for host in ["localhost", "127.0.0.1", "127.9.9.9", "::1", "[::1]"] {
        assert!(
            local_of(&format!("host = \"{host}\"\ntls = \"none\"")),
            "{host}"
        );
    }
    for host in ["smtp.example.com", "10.0.0.5", "localhost.example.com"] {
        assert!(!local_of(&format!("host = \"{host}\"")), "{host}");
    }
    assert!(!local_of(
        "host = \"127.0.0.1\"\ntls = \"none\"\nlocal = false"
    ));
    assert!(local_of("host = \"smtp.internal\"\nlocal = true"));
    let err = Config::from_toml("[[upstream]]\nname = \"o\"\ndir = \"/tmp\"\nlocal = true\n")
        .unwrap_err();
    assert_eq!(err.problems[0].path, "upstream[0].local", "{err}");
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
fn admission_limits_have_documented_defaults() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.server.max_connections_per_source, 100);
    assert_eq!(
        c.server.reserved_connections, 102,
        "a tenth of max_connections"
    );
    assert_eq!(c.server.unauthenticated_timeout, Duration::from_secs(30));
    assert_eq!(c.access.auth_failures_per_source.to_string(), "20/10m");
    assert_eq!(c.access.auth_failures_total.to_string(), "600/10m");
    assert_eq!(c.access.auth_ban, Duration::from_secs(900));
    let c = Config::from_toml(&format!(
        "[server]\nmax_connections = 8\nmax_connections_per_source = 3\nreserved_connections = 8\nunauthenticated_timeout = \"10s\"\n[access]\nauth_failures_per_source = \"5/m\"\nauth_failures_total = \"50/1h\"\nauth_ban = \"1h\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.server.max_connections_per_source, 3);
    assert_eq!(c.server.reserved_connections, 8);
    assert_eq!(c.server.unauthenticated_timeout, Duration::from_secs(10));
    assert_eq!(c.access.auth_failures_per_source.count, 5);
    assert_eq!(
        c.access.auth_failures_total.period,
        Duration::from_secs(3600)
    );
    assert_eq!(c.access.auth_ban, Duration::from_secs(3600));
}

#[test]
fn bad_admission_limits_are_reported_with_their_key_paths() {
    let text = format!(
        r#"
[server]
max_connections = 10
max_connections_per_source = 0
reserved_connections = 11
unauthenticated_timeout = "0s"
[access]
auth_failures_per_source = "many"
auth_failures_total = "0/1m"
auth_ban = 0
{MINIMAL}"#
    );
    let err = Config::from_toml(&text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "server.max_connections_per_source",
        "server.reserved_connections",
        "server.unauthenticated_timeout",
        "access.auth_failures_per_source",
        "access.auth_failures_total",
        "access.auth_ban",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn a_secret_file_other_users_can_read_is_warned_about_by_key_path() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("upstream-password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let text = format!(
        "[[upstream]]\nname = \"up\"\nhost = \"smtp.example.net\"\nusername = \"u\"\npassword_file = \"{}\"\n",
        file.display()
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = Config::from_toml(&text).expect("a warning, not an error");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].path, "upstream[0].password_file");
    assert!(
        c.warnings[0].message.contains(&file.display().to_string())
            && c.warnings[0].message.contains("0644"),
        "{}",
        c.warnings[0].message
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(Config::from_toml(&text).unwrap().warnings.is_empty());
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

#[test]
fn drain_and_budget_keys_have_defaults_and_are_checked() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.spool.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    assert_eq!(c.spool.max_bytes, None);
    assert_eq!(c.spool.handoff_upstream, None);
    assert_eq!(c.server.max_data_memory, DEFAULT_MAX_DATA_MEMORY);
    // A message size limit above the default budget raises the default, not an error.
    let c = Config::from_toml(&format!(
        "[server]\nmax_message_size = \"200MiB\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.server.max_data_memory, 200 << 20);

    let c = Config::from_toml(&format!(
        "[server]\nmax_data_memory = \"64MiB\"\n[spool]\nmax_bytes = \"800MiB\"\ndrain_timeout = \"40s\"\nhandoff_upstream = \"outbox\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.server.max_data_memory, 64 << 20);
    assert_eq!(c.spool.max_bytes, Some(800 << 20));
    assert_eq!(c.spool.drain_timeout, Duration::from_secs(40));
    assert_eq!(c.spool.handoff_upstream.as_deref(), Some("outbox"));

    let e = Config::from_toml(&format!(
        "[server]\nmax_message_size = \"25MiB\"\nmax_data_memory = \"10MiB\"\n[spool]\nmax_bytes = \"lots\"\ndrain_timeout = \"0s\"\nhandoff_upstream = \"central\"\n{MINIMAL}"
    ))
    .unwrap_err();
    let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
    for key in [
        "server.max_data_memory",
        "spool.max_bytes",
        "spool.drain_timeout",
        "spool.handoff_upstream",
    ] {
        assert!(paths.contains(&key), "{key} not reported: {:?}", e.problems);
    }
    let handoff = e
        .problems
        .iter()
        .find(|p| p.path == "spool.handoff_upstream")
        .unwrap();
    assert!(
        handoff.message.contains("\"central\"") && handoff.message.contains("outbox"),
        "{}",
        handoff.message
    );
}

fn problems_of(text: &str) -> Vec<(String, String)> {
    Config::from_toml(text)
        .unwrap_err()
        .problems
        .into_iter()
        .map(|p| (p.path, p.message))
        .collect()
}

#[test]
fn a_wrong_type_in_one_entry_neither_drops_it_nor_shifts_the_next_entries() {
    let problems = problems_of(
        r#"
[[upstream]]
name = "first"
host = "smtp.example.net"
port = "x"
tls = "maybe"
[[upstream]]
name = "second"
[[upstream]]
name = "third"
dir = "./outbox"
port = 25
"#,
    );
    let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "upstream[0].port",
            "upstream[0].tls",
            "upstream[1]",
            "upstream[2].port"
        ],
        "{problems:?}"
    );
    for (_, message) in &problems {
        assert!(!message.contains("invalid type") && !message.ends_with('\n'));
    }
}

#[test]
fn every_wrong_value_of_a_table_is_found_not_only_the_first() {
    let problems = problems_of(&format!(
        "[server]\nlisten = 5\nmax_recipients = \"x\"\ncommand_timeout = true\nfoo = 1\n[access]\nnetworks = [1, \"10.0.0.0/8\", 2]\n{MINIMAL}"
    ));
    let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    for expected in [
        "server.listen",
        "server.max_recipients",
        "server.command_timeout",
        "server.foo",
        "access.networks[0]",
        "access.networks[2]",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
    // Reported once: not again by the checks that run on the value taken out.
    assert_eq!(paths.len(), 6, "{problems:?}");
}

#[test]
fn an_unset_password_variable_is_reported_once_and_no_secrets_skips_it() {
    let text = r#"
[[upstream]]
host = "smtp.example.net"
username = "u"
password_env = "MAILVEIL_TEST_SURELY_UNSET_VAR"
"#;
    let problems = problems_of(text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "upstream[0].password_env");
    assert!(problems[0].1.contains("is not set"), "{problems:?}");
    let options = LoadOptions {
        skip_env_secrets: true,
    };
    let c = Config::from_toml_with(text, options).expect("the variable is not read");
    let UpstreamKind::Smtp(s) = &c.upstreams[0].kind else {
        panic!()
    };
    assert!(s.credentials.is_some());
}

#[test]
fn an_empty_spool_dir_is_refused() {
    let problems = problems_of(&format!("[spool]\ndir = \"\"\n{MINIMAL}"));
    assert_eq!(problems[0].0, "spool.dir", "{problems:?}");
}

#[test]
fn an_upstream_host_tls_cannot_verify_is_refused_where_tls_is_used() {
    let problems = problems_of(
        "[[upstream]]\nhost = \"smtp..example\"\n[[upstream]]\nhost = \"smtp..example\"\ntls = \"none\"\n",
    );
    let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["upstream[0].host"], "{problems:?}");
}

#[test]
fn an_app_login_without_a_credential_is_a_warning() {
    let c = Config::from_toml(
        "[[upstream]]\nname = \"o\"\ndir = \"/tmp\"\n[[app]]\nname = \"billing\"\nlogins = [\"billing\"]\nsenders = [\"@billing.test\"]\n",
    )
    .unwrap();
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter()
            .any(|w| w.starts_with("app[0].logins[0]") && w.contains("no credential")),
        "{w:?}"
    );
}

#[test]
fn an_mx_upstream_reads_its_keys_and_refuses_smarthost_ones() {
    let c = Config::from_toml(
        "[[upstream]]\nname = \"direct\"\nkind = \"mx\"\nehlo_name = \"out.example.com\"\n\
         source_address = \"192.0.2.7\"\nnameservers = [\"127.0.0.1:53\"]\n\
         max_connections_per_site = 3\n",
    )
    .unwrap();
    let UpstreamKind::Mx(mx) = &c.upstreams[0].kind else {
        panic!("an MX upstream");
    };
    assert_eq!(mx.ehlo_name.as_deref(), Some("out.example.com"));
    assert_eq!(mx.source_address, Some("192.0.2.7".parse().unwrap()));
    assert_eq!(mx.max_connections_per_site, 3);
    assert_eq!(mx.port, 25);
    assert_eq!(mx.tls, crate::config::MxTls::Opportunistic);

    for (extra, key) in [
        ("host = \"smtp.example.com\"", "upstream[0].host"),
        ("tls = \"starttls\"", "upstream[0].tls"),
        ("source_address = \"nope\"", "upstream[0].source_address"),
        (
            "nameservers = [\"dns.example\"]",
            "upstream[0].nameservers[0]",
        ),
        (
            "max_connections_per_site = 0",
            "upstream[0].max_connections_per_site",
        ),
    ] {
        let err =
            Config::from_toml(&format!("[[upstream]]\nkind = \"mx\"\n{extra}\n")).expect_err(extra);
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&key), "{extra}: {paths:?}");
    }
    let paths_of = |text: &str| -> Vec<String> {
        let err = Config::from_toml(text).unwrap_err();
        err.problems.iter().map(|p| p.path.clone()).collect()
    };
    let paths = paths_of("[[upstream]]\nkind = \"carrier-pigeon\"\n");
    assert!(paths.contains(&"upstream[0].kind".to_string()), "{paths:?}");
    let paths =
        paths_of("[[upstream]]\nhost = \"smtp.example.com\"\nmax_connections_per_site = 2\n");
    assert!(
        paths.contains(&"upstream[0].max_connections_per_site".to_string()),
        "{paths:?}"
    );
}
