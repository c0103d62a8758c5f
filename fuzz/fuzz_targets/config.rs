//! Fuzz target `config`: see `mailveil::fuzzing::config` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailveil::fuzzing::config(data));
