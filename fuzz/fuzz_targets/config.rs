//! Configuration text through parsing and validation: see `shouwang_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shouwang_fuzz::config::run(data));
