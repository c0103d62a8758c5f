//! Fuzz target `recovery`: see `mailveil::fuzzing::recovery` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailveil::fuzzing::recovery(data));
