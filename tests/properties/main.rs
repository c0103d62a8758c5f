//! Checks that need no sockets: property tests of the privacy promise, the replay of the fuzz
//! corpus and regressions, and the structure of the source tree. One test binary; run one
//! module's tests with `cargo test --test properties <module>::`.

mod architecture;
mod fuzz_corpus;
mod privacy_props;
