//! The fuzz targets' smoke mode for CI: runs on stable Rust without cargo-fuzz or libFuzzer.
//!
//! 1. Replays every committed input in `fuzz/corpus/<target>/` (the minimised corpus) and
//!    `fuzz/regressions/<target>/` (inputs that once crashed a target) through the same
//!    entry points the libFuzzer targets call (`mailveil::fuzzing`), so a fixed bug stays fixed.
//! 2. A bounded, seeded mutation run over those inputs (bit flips, byte insertions, splices
//!    and SMTP/header tokens), a few thousand cases per target. The seed is fixed so a failure
//!    reproduces; `MAILVEIL_FUZZ_SEED` and `MAILVEIL_FUZZ_CASES` change it for a longer local run.
//!
//! The entry points panic exactly when an invariant breaks, so a failing case panics here
//! with the input's file name or the seed and case number.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("session", mailveil::fuzzing::session),
    ("visible_recipients", mailveil::fuzzing::visible_recipients),
    ("rewrite", mailveil::fuzzing::rewrite),
    ("config", mailveil::fuzzing::config),
    ("recovery", mailveil::fuzzing::recovery),
];

/// Default mutated cases per target (the session target is the slow one: a runtime per case).
const DEFAULT_CASES: usize = 1500;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file under `fuzz/<kind>/<target>/`, sorted so runs are reproducible.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `f` on `input`; on a panic, fails naming `what` (the file, or the seed and case).
fn run_one(f: Target, input: &[u8], what: &dyn Fn() -> String) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        panic!(
            "fuzz invariant broken by {}; input ({} bytes): {:?}",
            what(),
            input.len(),
            String::from_utf8_lossy(&input[..input.len().min(2000)])
        );
    }
}

#[test]
fn committed_corpus_and_regressions_pass() {
    for (name, f) in TARGETS {
        let corpus = inputs("corpus", name);
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} must hold the seed inputs"
        );
        let regressions = inputs("regressions", name);
        for (path, bytes) in corpus.iter().chain(&regressions) {
            run_one(f, bytes, &|| path.display().to_string());
        }
    }
}

/// The regression inputs are real: every file there is non-empty and named by its bug.
#[test]
fn regressions_are_documented() {
    let readme = std::fs::read_to_string(fuzz_dir().join("regressions/README.md"))
        .expect("fuzz/regressions/README.md lists every regression input");
    for (name, _) in TARGETS {
        for (path, bytes) in inputs("regressions", name) {
            assert!(!bytes.is_empty(), "{} is empty", path.display());
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                readme.contains(&file),
                "{file} is not described in fuzz/regressions/README.md"
            );
        }
    }
}

/// xorshift64*: a tiny deterministic generator, enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that steer mutations towards the parsers' interesting paths.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"\r\n.\r\n",
    b"\r\n\r\n",
    b"DATA\r\n",
    b"RCPT TO:<a@b.c>\r\n",
    b"MAIL FROM:<x@y.z>\r\n",
    b"EHLO h\r\n",
    b"AUTH PLAIN\r\n",
    b"STARTTLS\r\n",
    b"To: ",
    b"Cc: ",
    b"Bcc: ",
    b"DKIM-Signature: ",
    b"\r\n ",
    b",",
    b";",
    b":",
    b"\"",
    b"(",
    b")",
    b"<",
    b">",
    b"@",
    b"\\",
    b"=?utf-8?b?QEA=?=",
    b"=?utf-8?q?a=40b?=",
    "ü@é".as_bytes(),
    b"\xff\xfe",
    b"g: h: i: a@b;;",
    b"[server]\n",
    b"[[upstream]]\nname = \"x\"\n",
    b" = \"",
    b"1\n",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(8) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.insert(at, rng.next() as u8),
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, t.iter().copied());
            }
            3 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            4 => {
                // Splice in a piece of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(64)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                // Repeat a token many times: long lines, deep nesting.
                let t = TOKENS[rng.below(TOKENS.len())];
                let n = 1 + rng.below(200);
                out.splice(at..at, t.iter().copied().cycle().take(t.len() * n));
            }
        }
    }
    out
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn seeded_mutations_keep_the_invariants() {
    let seed = env_number("MAILVEIL_FUZZ_SEED", 0x6d61_696c_7665_696c);
    let cases = env_number("MAILVEIL_FUZZ_CASES", DEFAULT_CASES as u64) as usize;
    for (t, (name, f)) in TARGETS.into_iter().enumerate() {
        let seeds: Vec<Vec<u8>> = inputs("corpus", name)
            .into_iter()
            .chain(inputs("regressions", name))
            .map(|(_, b)| b)
            .collect();
        assert!(!seeds.is_empty());
        let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for case in 0..cases {
            let input = mutate(&mut rng, &seeds);
            run_one(f, &input, &|| {
                format!("{name} case {case} of seed {seed:#x} (MAILVEIL_FUZZ_SEED)")
            });
        }
    }
}
