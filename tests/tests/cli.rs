//! The command line's own documentation: shell completions and man pages generated from the same
//! definitions as `--help` (no privileges needed).

use std::process::Command;

use integration_tests::{TempDir, run_text, skip};

#[test]
fn bash_completion_is_valid_shell_and_completes_the_subcommands_and_flags() {
    if Command::new("bash").arg("--version").output().is_err() {
        skip(
            "bash_completion_is_valid_shell_and_completes_the_subcommands_and_flags",
            "no bash here (the VM image has busybox and dash)",
        );
        return;
    }
    let (code, script, err) = run_text(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    let dir = TempDir::new("completions");
    let file = dir.0.join("kchaos.bash");
    std::fs::write(&file, &script).unwrap();
    // bash itself completes `kchaos ne` and `kchaos net --dr` with the generated function.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; \
                 _kchaos kchaos '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                file.display(),
                words.join(" "),
                words.len() - 1,
                words[words.len() - 1],
                words[words.len() - 2],
            ))
            .output()
            .expect("running bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let subcommands = complete("kchaos ne");
    assert!(subcommands.lines().any(|l| l == "net"), "{subcommands}");
    let flags = complete("kchaos net --dr");
    for flag in ["--drop", "--dry-run"] {
        assert!(flags.lines().any(|l| l == flag), "{flag} not in {flags}");
    }
}

#[test]
fn man_pages_cover_every_visible_subcommand() {
    let dir = TempDir::new("man");
    let (code, out, err) = run_text(&["man", dir.0.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (_, help, _) = run_text(&["--help"]);
    // The subcommands `kchaos --help` lists, each with its page.
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(listed.len() >= 10, "{help}");
    for cmd in &listed {
        let page = std::fs::read_to_string(dir.0.join(format!("kchaos-{cmd}.1")))
            .unwrap_or_else(|e| panic!("no page for {cmd}: {e}"));
        assert!(
            page.contains(".SH NAME") && page.contains(&format!("kchaos\\-{cmd}")),
            "{cmd}: {page}"
        );
    }
    let net = std::fs::read_to_string(dir.0.join("kchaos-net.1")).unwrap();
    assert!(
        net.contains("\\-\\-drop") && net.contains("\\-\\-dry\\-run"),
        "{net}"
    );
    assert!(
        out.contains(&format!("{} pages", listed.len() + 1)),
        "{out}"
    );
}
