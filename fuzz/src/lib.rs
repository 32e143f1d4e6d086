//! Fuzz harnesses for shouwang (see fuzz/README.md and the README's "Fuzzing" section).
//!
//! Each harness is a plain function of one input, so the same code runs under libFuzzer
//! (fuzz/fuzz_targets/) and in the regular test suite (gateway/tests/ingest_fuzz.rs replays
//! the seed corpora and every regression input through it).

pub mod config;
pub mod ingest_rules;
