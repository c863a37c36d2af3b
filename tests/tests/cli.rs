//! The command line itself: shell completions and man pages generated from the same definitions as
//! `--help`, and one vocabulary (`--percent`, `--json FILE`) whose old spellings still work, with one
//! deprecation line, for one release.

use std::{net::SocketAddr, path::Path, process::Command};

use integration_tests::{
    RunDir, TempDir, TempFile, lab, root_or_skip, run_text, skip, tag, udp_echo,
};
use lab::{EchoServer, Lab};

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
    assert!(flags.lines().any(|l| l == "--dry-run"), "{flags}");
    let flags = complete("kchaos net --pe");
    assert!(flags.lines().any(|l| l == "--percent"), "{flags}");
    // The old spellings still parse (with a deprecation line) but are not offered.
    let flags = complete("kchaos net --d");
    assert!(
        flags.lines().any(|l| l == "--drop-correlation") && !flags.lines().any(|l| l == "--drop"),
        "{flags}"
    );
    let flags = complete("kchaos monkey --p");
    assert!(
        flags.lines().any(|l| l == "--percent") && !flags.lines().any(|l| l == "--probability"),
        "{flags}"
    );
    let flags = complete("kchaos run --");
    assert!(
        flags.lines().any(|l| l == "--json") && !flags.lines().any(|l| l == "--report"),
        "{flags}"
    );
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
        net.contains("\\-\\-percent")
            && net.contains("\\-\\-dry\\-run")
            // The hidden old spelling is left out (--drop-correlation is a flag of its own).
            && !net.replace("\\-\\-drop\\-correlation", "").contains("\\-\\-drop"),
        "{net}"
    );
    assert!(
        out.contains(&format!("{} pages", listed.len() + 1)),
        "{out}"
    );
}

const DEPRECATED: &str = "is deprecated, write";

/// `kchaos net --percent 100` drops every datagram the target sends, and so does the old `--drop 100`,
/// which says once on stderr that it is deprecated; the kernel's drop count is what the client missed.
#[test]
fn net_percent_and_the_old_drop_spelling_drop_the_same_packets() {
    if !root_or_skip("net_percent_and_the_old_drop_spelling_drop_the_same_packets") {
        return;
    }
    let lab = Lab::create(&tag("v")).unwrap();
    let to = SocketAddr::from((lab.server_addr, 7000));
    let _srv = EchoServer::start(&lab.netns, to).unwrap();
    let cg = lab.cgroup.path.display().to_string();
    for (flag, old) in [("--percent", false), ("--drop", true)] {
        let report = TempFile::new("vocab.json");
        let runs = RunDir::new();
        let running = runs.start(&[
            "net",
            "--cgroup",
            &cg,
            flag,
            "100",
            "--duration",
            "3s",
            "--json",
            report.s(),
        ]);
        let (sent, received) = udp_echo(Some(&lab.cgroup.path), None, to, 500);
        let (code, lines, stderr) = running.finish();
        assert_eq!(code, 0, "{flag}: {lines:?} {stderr}");
        println!("{flag} 100: sent {sent}, received {received}");
        assert_eq!((sent, received), (500, 0), "{flag}: {lines:?}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report.0).unwrap()).unwrap();
        assert_eq!(
            v["faults"][0]["counters"]["egress.dropped"], 500,
            "{flag}: {v}"
        );
        let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(DEPRECATED)).collect();
        if old {
            assert_eq!(warnings.len(), 1, "{stderr}");
            assert!(
                warnings[0].contains("--drop PCT") && warnings[0].contains("--percent PCT"),
                "{stderr}"
            );
        } else {
            assert!(warnings.is_empty(), "{stderr}");
        }
    }
    integration_tests::no_residue(&lab);
}

/// `kchaos run --json FILE` writes the report, and so does the old `--report FILE` (with a warning);
/// a scenario's old field names (`drop:` in the fault, the ramp and the budget) run the same fault.
#[test]
fn run_json_and_the_old_report_flag_and_field_names_write_the_same_report() {
    if !root_or_skip("run_json_and_the_old_report_flag_and_field_names_write_the_same_report") {
        return;
    }
    let lab = Lab::create(&tag("v")).unwrap();
    let cg = lab.cgroup.path.display().to_string();
    let scenario = |key: &str| {
        format!(
            "title: vocabulary\ntargets: [{{name: app, cgroup: \"{cg}\"}}]\n\
             faults:\n  - {{name: loss, at: 0s, for: 1s, net: {{{key}: 5}}, \
             ramp: {{{key}: {{from: 5%, to: 10%, over: 1s}}}}}}\n\
             budget: {{max_intensity: {{{key}: 50%}}}}\n"
        )
    };
    for (flag, key, old) in [("--json", "percent", false), ("--report", "drop", true)] {
        let file = TempFile::with("vocab.yaml", &scenario(key));
        let report = TempFile::new("vocab-run.json");
        let runs = RunDir::new();
        let (code, out, err) = runs.run_text(&[
            "run",
            file.s(),
            flag,
            report.s(),
            "--quiet",
            "--accept-risk",
        ]);
        assert_eq!(code, 0, "{flag} {key}: {out} {err}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report.0).unwrap()).unwrap();
        assert_eq!(v["faults"][0]["kind"], "net", "{v}");
        let text = v.to_string();
        assert!(
            text.contains("\"percent\""),
            "the ramp is of percent: {text}"
        );
        let warnings: Vec<&str> = err.lines().filter(|l| l.contains(DEPRECATED)).collect();
        if old {
            // --report, faults[].net.drop, faults[].ramp.drop, budget.max_intensity.drop.
            assert_eq!(warnings.len(), 4, "{err}");
            for what in [
                "--report FILE",
                "faults[0].net.drop",
                "faults[0].ramp.drop",
                "max_intensity.drop",
            ] {
                assert!(warnings.iter().any(|w| w.contains(what)), "{what}: {err}");
            }
        } else {
            assert!(warnings.is_empty(), "{err}");
        }
    }
    integration_tests::no_residue(&lab);
}

/// `kchaos monkey --percent 100` draws what the old `--probability 1` drew (same seed, same plan);
/// `stress --percent` and the old `--cpu-load` plan the same load; each old spelling warns once.
#[test]
fn monkey_and_stress_percent_plan_what_their_old_spellings_planned() {
    let plan = |args: &[&str]| {
        let (code, out, err) = run_text(args);
        assert_eq!(code, 0, "{args:?}: {out} {err}");
        (out, err.lines().filter(|l| l.contains(DEPRECATED)).count())
    };
    let monkey = |chance: &[&str]| {
        let mut a = vec![
            "monkey",
            "--cgroup",
            "kchaos-no-such-cgroup",
            "--duration",
            "5s",
            "--types",
            "net-drop",
            "--seed",
            "7",
            "--dry-run",
            // A monkey has no probes, which the review calls high risk; a dry run refuses it as
            // a real run would, unless accepted.
            "--accept-risk",
        ];
        a.extend_from_slice(chance);
        plan(&a)
    };
    let (new, new_warnings) = monkey(&["--percent", "100"]);
    let (old, old_warnings) = monkey(&["--probability", "1"]);
    assert!(new.contains("monkey-1-net-drop"), "{new}");
    assert_eq!(new, old);
    assert_eq!((new_warnings, old_warnings), (0, 1));

    // The test's own cgroup (--allow-host: it holds kchaos too); a dry run attaches nothing.
    let pid = std::process::id().to_string();
    let stress = |load: &str| {
        let (out, warnings) = plan(&[
            "stress",
            "--pid",
            &pid,
            "--allow-host",
            "--cpu",
            "1",
            load,
            "30",
            "--duration",
            "5s",
            "--dry-run",
        ]);
        // Without the count of processes in the cgroup now, which moves between the two runs.
        let out: Vec<String> = out
            .lines()
            .filter(|l| !l.contains("process(es) now"))
            .map(str::to_owned)
            .collect();
        (out.join("\n"), warnings)
    };
    let (new, new_warnings) = stress("--percent");
    let (old, old_warnings) = stress("--cpu-load");
    assert!(new.contains("30%"), "{new}");
    assert_eq!(new, old);
    assert_eq!((new_warnings, old_warnings), (0, 1));
    let (code, _, err) = run_text(&["net", "--cgroup", "x", "--percent", "5", "--drop", "5"]);
    assert_eq!(code, 2, "both spellings at once are refused: {err}");
}

/// The HTML page of a fault command's report renders in headless Chromium (Debian's `chromium`): its
/// DOM has the timeline and the tables, it links to nothing outside itself, and a screenshot is written
/// where the test prints.
#[test]
fn report_html_renders_in_headless_chromium_self_contained() {
    let test = "report_html_renders_in_headless_chromium_self_contained";
    if !root_or_skip(test) {
        return;
    }
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        skip(test, "no headless Chromium here (apt-get install chromium)");
        return;
    };
    let lab = Lab::create(&tag("h")).unwrap();
    let cg = lab.cgroup.path.display().to_string();
    let dir = TempDir::new("html");
    let json = dir.0.join("r.json");
    let page = dir.0.join("r.html");
    let runs = RunDir::new();
    let (code, out, err) = runs.run_text(&[
        "net",
        "--cgroup",
        &cg,
        "--percent",
        "50",
        "--duration",
        "1s",
        "--json",
        json.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let (code, _, err) = run_text(&[
        "report",
        json.to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(&page).unwrap();
    for attr in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "url(http",
    ] {
        assert!(
            !html.contains(attr),
            "an external link ({attr}) in the page"
        );
    }
    let chrome = |extra: &[&str]| {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.0.join("profile").display()
            ))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("running chromium")
    };
    let dom = chrome(&["--dump-dom"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    for needle in [
        "<svg",
        "<h2>Faults</h2>",
        "<h2>Safety review</h2>",
        "kchaos net",
    ] {
        assert!(
            dom_text.contains(needle),
            "{needle} not in the rendered DOM"
        );
    }
    // The screenshot stays for a person to look at (the temporary directory does not): in the build's
    // own scratch directory (target/tmp), not among the machine's temporary files.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kchaos-report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let out = chrome(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1280,1400",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("no screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!(
        "screenshot of the report page: {} ({} bytes)",
        shot.display(),
        png.len()
    );
    integration_tests::no_residue(&lab);
}

/// A flag that needs a file given none (`report r.json --junit`): one line naming the flag and how to
/// write it (before: "--junit : allowed are " and nothing more).
#[test]
fn a_flag_without_its_value_says_what_to_write() {
    for args in [
        &["report", "r.json", "--junit"][..],
        &["run", "s.yaml", "--json"][..],
    ] {
        let out = std::process::Command::new(integration_tests::kchaos())
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let flag = args[2];
        assert!(
            err.contains(&format!("{flag} needs a value: write {flag} <")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("allowed are"), "{args:?}: {err}");
    }
}
