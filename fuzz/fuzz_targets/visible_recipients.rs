//! Fuzz target `visible_recipients`: see `mailveil::fuzzing::visible_recipients` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailveil::fuzzing::visible_recipients(data));
