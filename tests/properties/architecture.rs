//! The structure docs/architecture.md describes, checked: import arrows follow the data flow, so
//! no module imports one that imports it back (directly or around a loop), at the level of
//! top-level modules and of single files. `tools/import_cycles.py` reads the imports.

use std::process::Command;

#[test]
fn no_import_cycle_between_modules() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = match Command::new("python3")
        .arg(format!("{root}/tools/import_cycles.py"))
        .arg(format!("{root}/src"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("MAILVEIL_REQUIRE_TOOLS").is_none(),
                "python3 is required: {e}"
            );
            eprintln!("skipped: python3 not found ({e})");
            return;
        }
    };
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "import cycles:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        report.matches(": none").count(),
        4,
        "every level reported, none with a cycle:\n{report}"
    );
}
