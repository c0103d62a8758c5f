//! docs/metrics.md is copied into Prometheus setups as it is, so it is checked like code: the
//! "Suggested alerts" block is a rules file `promtool check rules` accepts (the old table's
//! `split\|bcc` did not parse when copied), the "Useful queries" parse as PromQL, and both name
//! only series the relay exposes. With `MAILVEIL_REQUIRE_TOOLS=1` (CI) a missing promtool fails
//! the test instead of skipping it.

use std::process::Command;

fn docs() -> String {
    std::fs::read_to_string(format!("{}/docs/metrics.md", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The first fenced block of `lang` after the heading `heading`.
fn block(text: &str, heading: &str, lang: &str) -> String {
    let from = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    let rest = &text[from..];
    let open = format!("```{lang}\n");
    let start = rest
        .find(&open)
        .unwrap_or_else(|| panic!("no {lang} block under {heading:?}"))
        + open.len();
    let end = rest[start..].find("\n```").expect("closed block") + start;
    rest[start..end].to_string() + "\n"
}

fn promtool_available() -> bool {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("MAILVEIL_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "promtool is required but not installed"
        );
        println!("SKIPPED: promtool not installed (CI installs it)");
    }
    found
}

fn promtool_check_rules(rules: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every `mailveil_*` / `process_*` word in `text` is a series a relay exposes (one with
/// `[cluster]`, every provider series created).
fn assert_series_exist(text: &str, what: &str) -> usize {
    let metrics = mailveil::observe::Metrics::new();
    metrics.init_series(&["default".to_string()], &["primary".to_string()]);
    metrics.enable_cluster();
    metrics.init_rejection_reasons(&mailveil::inbound::rejection_reasons());
    metrics.init_auth_logins(["app"]);
    let exposed = metrics.render();
    let mut named = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("mailveil_") || word.starts_with("process_") {
            // Histograms are written with their suffixes in queries.
            let base = word.trim_end_matches("_bucket");
            assert!(
                exposed.contains(&format!("\n{base}")),
                "{what} uses {word}, which the relay does not expose"
            );
            named += 1;
        }
    }
    named
}

#[test]
fn the_documented_alerts_are_a_rules_file_promtool_accepts() {
    let rules = block(&docs(), "## Suggested alerts", "yaml");
    assert!(
        !rules.contains("\\|"),
        "an escaped pipe does not parse when copied:\n{rules}"
    );
    let alerts = rules.matches("- alert: ").count();
    assert!(alerts >= 12, "{alerts} alerts:\n{rules}");
    assert!(assert_series_exist(&rules, "an alert") >= alerts);
    if !promtool_available() {
        return;
    }
    let (ok, out) = promtool_check_rules(&rules);
    assert!(ok, "promtool check rules:\n{out}\n{rules}");
    assert!(
        out.contains(&format!("SUCCESS: {alerts} rules found")),
        "{out}"
    );

    // The checker is not lenient: the old table's escaped pipe fails it.
    let broken = rules.replace("split|bcc", "split\\|bcc");
    assert_ne!(broken, rules);
    assert!(
        !promtool_check_rules(&broken).0,
        "promtool accepted split\\|bcc"
    );
}

#[test]
fn the_documented_queries_parse() {
    let block = block(&docs(), "## Useful queries", "promql");
    // One query per line; an indented line continues the one above.
    let mut queries: Vec<String> = Vec::new();
    for line in block.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match queries.last_mut() {
            Some(q) if line.starts_with(char::is_whitespace) => {
                q.push(' ');
                q.push_str(line.trim());
            }
            _ => queries.push(line.trim().to_string()),
        }
    }
    assert!(queries.len() >= 6, "{queries:?}");
    assert_series_exist(&block, "a query");
    if !promtool_available() {
        return;
    }
    let mut rules = String::from("groups:\n  - name: docs\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: docs:q{i}\n        expr: {}\n",
            serde_json::to_string(q.trim()).unwrap()
        ));
    }
    let (ok, out) = promtool_check_rules(&rules);
    assert!(ok, "promtool check rules:\n{out}\n{rules}");
}
