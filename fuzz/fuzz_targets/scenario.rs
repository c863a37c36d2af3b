//! A scenario file's text: parsed, checked, reviewed and planned.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kchaos_fuzz::scenario(data));
