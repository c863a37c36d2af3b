//! Replays the fuzz corpus (fuzz/corpus/<target>/) and the inputs that once crashed a target
//! (fuzz/regressions/<target>/) through the same code the fuzz targets run, in a plain `cargo test`:
//! no nightly, no libFuzzer. A panic here is a regression.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/lib.rs"]
mod harness;

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let files = inputs(target);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("fuzz target {target} panics on {}", file.display());
        }
    }
    println!("{target}: {} inputs replayed", files.len());
    files.len()
}

#[test]
fn the_scenario_corpus_replays_without_a_panic() {
    assert!(
        replay("scenario", harness::scenario) >= 8,
        "the corpus holds at least the shipped scenarios"
    );
}

#[test]
fn the_report_corpus_replays_without_a_panic() {
    assert!(replay("report", harness::report) >= 2);
}

/// The hand-written seed reports read as reports (so the fuzzer and the replay reach the renderers).
#[test]
fn the_seeds_parse() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for name in ["completed.json", "aborted.json"] {
        let text = std::fs::read_to_string(fuzz.join("report").join(name)).unwrap();
        if let Err(e) = chaos_userspace::report::Report::from_json_str(&text) {
            panic!("{name}: {e}");
        }
    }
}
