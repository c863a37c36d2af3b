//! A JSON report's text: read, summarized, rendered as HTML and JUnit.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kchaos_fuzz::report(data));
