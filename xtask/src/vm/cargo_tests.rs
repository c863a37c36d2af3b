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
