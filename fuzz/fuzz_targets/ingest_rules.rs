//! Sensor traffic through ingest and the rules engine: see `shouwang_fuzz::ingest_rules`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shouwang_fuzz::ingest_rules::run(data));
