//! What ships next to the binary, checked like code: the Grafana dashboard's queries name series
//! the relay really exposes and parse as PromQL (promtool), and every manifest under `deploy/`
//! validates (kubernetes-validate, the ServiceMonitor schema, `mailveil check-config` on the
//! embedded configs, via `deploy/check.py`). With `MAILVEIL_REQUIRE_TOOLS=1` (CI) a missing
//! tool fails the test instead of skipping it.

use crate::support;

use support::BIN;

/// True when `MAILVEIL_REQUIRE_TOOLS=1`: CI installs the outside tools and a missing one fails.
fn tools_required() -> bool {
    std::env::var("MAILVEIL_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

fn runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn dashboard_queries_name_existing_series_and_parse() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text =
        std::fs::read_to_string(format!("{root}/deploy/grafana/mailveil-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10);

    let metrics = mailveil::observe::Metrics::new();
    metrics.init_series(&["default".to_string()], &["primary".to_string()]);
    metrics
        .delivery_duration
        .with_label_values(&["default"])
        .observe(0.1);
    metrics.accept_duration.observe(0.01);
    // Exported by relays with [cluster] only; the dashboard charts it for those.
    metrics.enable_cluster();
    metrics.init_rejection_reasons(&mailveil::inbound::rejection_reasons());
    let exposed = metrics.render();
    let mut named = std::collections::BTreeSet::new();
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("mailveil_") || word.starts_with("process_") {
                let is_exposed = exposed.contains(&format!("\n{word}"));
                assert!(
                    is_exposed,
                    "dashboard uses {word}, which the relay does not expose"
                );
                named.insert(word.to_string());
            }
        }
    }
    for required in [
        "mailveil_privacy_actions_total",
        "mailveil_deliveries_total",
        "mailveil_queue_messages",
        "mailveil_throttle_delays_total",
        "mailveil_upstream_up",
        "mailveil_messages_received_total",
        "mailveil_held_messages",
        "mailveil_held_copies",
        "mailveil_provider_slowed",
        "mailveil_paused",
        "mailveil_spool_bytes",
        "mailveil_spool_full",
        "process_cpu_seconds_total",
    ] {
        assert!(named.contains(required), "dashboard lacks {required}");
    }

    // PromQL syntax: promtool parses each query as a recording rule (Grafana variables filled).
    if !runs("promtool", &["--version"]) {
        assert!(!tools_required(), "promtool is required but not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let filled = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&filled).unwrap()
        ));
    }
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deploy_manifests_are_valid() {
    let have = runs(
        "python3",
        &["-c", "import kubernetes_validate, jsonschema, yaml"],
    );
    if !have {
        assert!(
            !tools_required(),
            "kubernetes-validate is required but not installed (pip install kubernetes-validate)"
        );
        eprintln!("kubernetes-validate not installed; skipping (CI installs it)");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/deploy/check.py"))
        .args(["--mailveil", BIN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/check.py:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
