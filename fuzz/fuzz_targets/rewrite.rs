//! Fuzz target `rewrite`: see `mailveil::fuzzing::rewrite` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailveil::fuzzing::rewrite(data));
