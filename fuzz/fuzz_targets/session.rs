//! Fuzz target `session`: see `mailveil::fuzzing::session` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailveil::fuzzing::session(data));
