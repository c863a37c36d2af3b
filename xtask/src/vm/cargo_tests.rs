//! Building the integration tests for the VM, and finding their executables in cargo's JSON output.
//!
//! Only the few fields needed are read from cargo's messages (a small scanner, not a JSON library:
//! xtask keeps its dependencies to std, anyhow and clap).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, setup};

/// One integration test executable (`tests/tests/<name>.rs`).
pub struct TestExe {
    pub name: String,
    pub path: PathBuf,
}

/// `cargo test --release -p integration-tests --no-run`; returns the test executables it built.
/// (json-render-diagnostics: compiler errors still reach the terminal as text.)
pub fn build_integration_tests() -> Result<Vec<TestExe>> {
    let linker_dir = setup::ensure_bpf_linker()?;
    setup::step("building the integration tests for the VM (release)");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "test",
        "--release",
        "-p",
        "integration-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(setup::workspace_root())
    .env("PATH", build::path_with(&linker_dir))
    .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "building the integration tests failed ({}); to do it by hand run: {cmd:?}",
            out.status
        );
    }
    Ok(test_executables(&String::from_utf8_lossy(&out.stdout)))
}

/// The integration test files' names (tests/tests/NAME.rs and tests/tests/NAME/main.rs: cargo's
/// own discovery), sorted, without building anything.
pub fn integration_test_files() -> Result<Vec<String>> {
    let dir = setup::workspace_root().join("tests/tests");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            if path.is_dir() {
                path.join("main.rs")
                    .is_file()
                    .then(|| e.file_name().to_string_lossy().into_owned())
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".rs").map(str::to_owned)
            }
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Which integration test executables run, and with which test-name filters.
#[derive(Debug, PartialEq)]
pub struct Selection {
    /// None: all of them.
    pub binaries: Option<Vec<String>>,
    /// Passed on to libtest: tests whose name contains one of these.
    pub test_filters: Vec<String>,
}

impl Selection {
    pub fn runs(&self, binary: &str) -> bool {
        self.binaries
            .as_ref()
            .is_none_or(|b| b.iter().any(|n| n == binary))
    }
}

/// Reads a command line's filter words against the test executables' names: a word that is an
/// executable's name, or the start of names before a `_` (`scenarios`: scenarios_net,
/// scenarios_abort, ...), selects those executables, which then run whole; the other words filter
/// test names (libtest's own filter) in the executables that run. Flags (`--exact`) pass through.
pub fn select(filters: &[String], binaries: &[String]) -> Selection {
    let names = |word: &str| -> Vec<String> {
        if word.starts_with('-') {
            return Vec::new();
        }
        binaries
            .iter()
            .filter(|b| *b == word || b.starts_with(&format!("{word}_")))
            .cloned()
            .collect()
    };
    let mut chosen: Vec<String> = Vec::new();
    let mut test_filters = Vec::new();
    for word in filters {
        let matched = names(word);
        if matched.is_empty() {
            test_filters.push(word.clone());
        }
        for name in matched {
            if !chosen.contains(&name) {
                chosen.push(name);
            }
        }
    }
    Selection {
        binaries: (!chosen.is_empty()).then_some(chosen),
        test_filters,
    }
}

/// The executables of compiler artifacts whose target kind is "test".
fn test_executables(json_lines: &str) -> Vec<TestExe> {
    json_lines
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#))
        .filter_map(|l| {
            let target = &l[l.find(r#""target":{"#)?..];
            if !string_array(target, "kind")?.iter().any(|k| k == "test") {
                return None;
            }
            let name = string_value(target, "name")?;
            let path = string_value(l, "executable")?;
            Some(TestExe {
                name,
                path: PathBuf::from(path),
            })
        })
        .collect()
}

/// The first `"key":"value"` string in `json` (None when absent or null).
fn string_value(json: &str, key: &str) -> Option<String> {
    let rest = after_key(json, key)?;
    rest.starts_with('"')
        .then(|| read_string(rest).map(|(s, _)| s))?
}

/// The first `"key":["a","b"]` array of strings in `json`.
fn string_array(json: &str, key: &str) -> Option<Vec<String>> {
    let mut rest = after_key(json, key)?.strip_prefix('[')?;
    let mut items = Vec::new();
    loop {
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        if rest.starts_with(']') {
            return Some(items);
        }
        let (item, tail) = read_string(rest)?;
        items.push(item);
        rest = tail;
    }
}

/// What follows `"key":` (and any spaces).
fn after_key<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":");
    let at = json.find(&pattern)? + pattern.len();
    Some(json[at..].trim_start())
}

/// A JSON string at the start of `s`: its value and the rest after the closing quote.
fn read_string(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 2..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = (0..4)
                        .filter_map(|_| chars.next().map(|(_, h)| h))
                        .collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_executables_only() {
        let json = concat!(
            r#"{"reason":"compiler-artifact","package_id":"p","target":{"kind":["lib"],"crate_types":["lib"],"name":"integration_tests"},"executable":null,"fresh":true}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"p","target":{"kind":["test"],"crate_types":["bin"],"name":"net_faults","src_path":"/w/tests/tests/net_faults.rs"},"profile":{"test":true},"executable":"/w/target/release/deps/net_faults-0a1b","fresh":false}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        let exes = test_executables(json);
        assert_eq!(exes.len(), 1);
        assert_eq!(exes[0].name, "net_faults");
        assert_eq!(
            exes[0].path,
            PathBuf::from("/w/target/release/deps/net_faults-0a1b")
        );
    }

    #[test]
    fn filter_words_select_test_files_or_test_names() {
        let binaries: Vec<String> = ["net", "scenarios_abort", "scenarios_net", "stress"]
            .map(String::from)
            .to_vec();
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let s = select(&words(&["scenarios"]), &binaries);
        assert_eq!(
            s.binaries,
            Some(words(&["scenarios_abort", "scenarios_net"]))
        );
        assert!(s.test_filters.is_empty());
        assert!(s.runs("scenarios_net") && !s.runs("net"));
        // `net` is a file: only it (not scenarios_net); `budget` filters test names in it.
        let s = select(&words(&["net", "budget", "--exact"]), &binaries);
        assert_eq!(s.binaries, Some(words(&["net"])));
        assert_eq!(s.test_filters, words(&["budget", "--exact"]));
        // No file named: every executable, filtered by test name, as before.
        let s = select(&words(&["drop_rate"]), &binaries);
        assert_eq!(
            s,
            Selection {
                binaries: None,
                test_filters: words(&["drop_rate"])
            }
        );
        assert!(s.runs("stress"));
    }

    #[test]
    fn json_strings_with_escapes() {
        assert_eq!(
            read_string(r#""a\"b\\c\u0041" tail"#),
            Some((r#"a"b\cA"#.to_owned(), " tail"))
        );
        assert_eq!(
            string_array(r#"{"kind": ["a", "b"]}"#, "kind"),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(string_value(r#"{"executable":null}"#, "executable"), None);
    }
}
