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

/// No file in `src/` grows past ~500 lines (its inline tests not counted) unless its first
/// lines say why ("Over ~500 lines ..."): a long file is a place where one module does too much.
#[test]
fn long_files_state_their_reason() {
    const LIMIT: usize = 520;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![root];
    let mut long = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let lines = code.lines().count();
        let head: String = text.lines().take(12).collect::<Vec<_>>().join("\n");
        if lines > LIMIT && !head.contains("Over ~500 lines") {
            long.push(format!("{} ({lines} lines)", path.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files over {LIMIT} lines without a reason at their top: {long:?}"
    );
}
