//! What happens before anything is attached: validation errors as a user sees them (file, line,
//! column, field and what is allowed), the safety review that makes `run` refuse a high-risk scenario,
//! and a dry run that prints the plan and attaches nothing.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{
    RunDir, TempFile, kchaos, lab::Lab, no_residue, root_or_skip, run_text, scenario,
    scenario_vars, skb_programs_in_tree, tag,
};

#[test]
fn validate_names_file_line_column_field_and_what_is_allowed() {
    // Runs without root: validate needs no privileges.
    let bad = TempFile::with(
        "bad.yaml",
        "title: bad\ntargets:\n  - cgroup: app\nfaults:\n  - for: 10\n    net: { drop: 140, dorp: 1 }\n  - at: 2s\n    for: 3s\n    net: { partition: 10.0.0.1 }\nbudget: { max_duration: 4s }\nfrobnicate: yes\n",
    );
    let (code, out, err) = run_text(&["validate", bad.s()]);
    assert_eq!(code, 2, "stdout {out} stderr {err}");
    for expected in [
        format!("{}:5:10: faults[0].for: '10' is not a duration", bad.s()),
        format!(
            "{}:6:23: faults[0].net.dorp: unknown field 'dorp' (did you mean 'drop'?)",
            bad.s()
        ),
        format!(
            "{}:11:1: frobnicate: unknown field 'frobnicate': allowed are title,",
            bad.s()
        ),
        format!(
            "{}:6:18: faults[0].net.drop: 140 is not a percentage: allowed is 0 to 100",
            bad.s()
        ),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    // The checks across fields come once each field is right.
    let outside = TempFile::with(
        "outside.yaml",
        "title: t\ntargets: [{cgroup: app}]\nfaults:\n  - {name: a, for: 3s, net: {drop: 5}}\n  - {name: b, at: 2s, for: 3s, net: {partition: 10.0.0.1}}\nbudget: { max_duration: 4s }\n",
    );
    let (code, _, err) = run_text(&["validate", outside.s()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":5:5: faults[1]: 'b' ends 5s into the run"),
        "{err}"
    );
    assert!(err.contains("outside budget.max_duration 4s"), "{err}");
    assert!(
        err.contains(":5:5: faults[1]: 'b' (2s..5s) overlaps 'a' (0s..3s) on target target-1"),
        "{err}"
    );

    // The shipped scenarios are valid once their variables have values; without them, each missing one
    // is named with its place.
    for name in ["packet-loss-ramp.yaml", "dependency-partition.yaml"] {
        let path = scenario(name);
        let p = path.to_str().unwrap();
        let (code, out, err) = run_text(&[
            "validate",
            p,
            "--var",
            "cgroup=kchaos-none",
            "--var",
            "server=127.0.0.1:9",
        ]);
        assert_eq!(code, 0, "{name}: {out} {err}");
        assert!(
            out.contains(": valid: ") && !out.contains("HIGH"),
            "{name}: {out}"
        );
        let (code, _, err) = run_text(&["validate", p]);
        assert_eq!(code, 2);
        assert!(
            err.contains("variable 'cgroup' has no value") && err.contains(&format!("{p}:")),
            "{err}"
        );
        // Environment overrides stand in for --var.
        let out = Command::new(kchaos())
            .args(["validate", p])
            .env("KCHAOS_VAR_cgroup", "kchaos-none")
            .env("KCHAOS_VAR_server", "127.0.0.1:9")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The safety review: a bare scenario has high-risk findings, and says run will refuse it.
    let bare = TempFile::with(
        "bare.yaml",
        "title: bare\ntargets: [{cgroup: app}]\nfaults: [{for: 1s, net: {drop: 5}}]\n",
    );
    // validate exits 2 where run would refuse (a CI lint step fails where the run would), and 0
    // with --accept-risk, as run --accept-risk would run it.
    let (code, out, err) = run_text(&["validate", bare.s()]);
    assert_eq!(code, 2, "{out} {err}");
    for finding in [
        "[  HIGH] no-steady-state-probe",
        "[  HIGH] no-abort-rule",
        "[  HIGH] no-budget",
    ] {
        assert!(out.contains(finding), "missing {finding} in {out}");
    }
    assert!(
        err.contains("refuses this scenario unless --accept-risk"),
        "{err}"
    );
    let (code, out, err) = run_text(&["validate", bare.s(), "--accept-risk"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("accepted (--accept-risk)"), "{out}");
}

#[test]
fn refuses_high_risk_and_dry_run_attaches_nothing() {
    if !root_or_skip("refuses_high_risk_and_dry_run_attaches_nothing") {
        return;
    }
    let lab = Lab::create(&tag("x")).unwrap();
    let runs = RunDir::new();
    let cg = format!("cgroup={}", lab.cgroup.path.display());
    let bare = TempFile::with(
        "bare.yaml",
        "title: bare\ntargets: [{cgroup: \"${cgroup}\"}]\nfaults: [{for: 5s, net: {drop: 100}}]\n",
    );
    let start = Instant::now();
    let (code, out, err) = runs.run_text(&["run", bare.s(), "--var", &cg]);
    assert_eq!(code, 2, "{out} {err}");
    assert!(
        err.contains("refusing to run") && err.contains("--accept-risk"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "it ran instead of refusing"
    );
    assert_eq!(skb_programs_in_tree(&lab.cgroup.path), 0);

    // A dry run prints the timeline and what would attach where, then attaches nothing.
    let path = scenario("packet-loss-ramp.yaml");
    let server = SocketAddr::from((lab.server_addr, 7100));
    let v = scenario_vars(&lab, server);
    let mut args = vec!["run", path.to_str().unwrap(), "--dry-run"];
    args.extend(v.iter().map(String::as_str));
    let (code, out, err) = runs.run_text(&args);
    assert_eq!(code, 0, "{out} {err}");
    let cg_path = lab.cgroup.path.display().to_string();
    for expected in [
        "plan (dry run: nothing is attached):",
        "1.0s  attach + arm 'loss-ramp' [net: drop 0% -> 30% (egress) [only tcp]; ramp percent 0% -> 30% over 3s, a step every 1s] on app (",
        "3.0s  'loss-ramp' percent = 20%",
        "5.0s  detach 'loss-ramp'",
        cg_path.as_str(),
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("run.start"), "{out}");
    assert_eq!(
        skb_programs_in_tree(&lab.cgroup.path),
        0,
        "a dry run attached something"
    );
    no_residue(&lab);
}
