//! Runs with a name: `--detach` returns once the fault is armed, `kchaos status` lists every running
//! run with the kernel's counters, `kchaos stop --name` ends one run and leaves another alone, a
//! second live run of one name is refused, and a background run must have an end.
//!
//! Every test keeps its records in its own KCHAOS_RUN_DIR and ends whatever it started on the way
//! out (a `kchaos stop` there), also when an assertion fails.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use integration_tests::{
    RunDir, StopAll, attach_type, cgroup_programs, lab::LabCgroup, loopback_echo_server,
    root_or_skip, tag, udp_echo,
};
use serde_json::Value;

fn status(runs: &RunDir) -> Value {
    let (code, out, err) = runs.run_text(&["status", "--json"]);
    assert_eq!(code, 0, "kchaos status --json: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON {out:?}: {e}"))
}

fn run_named<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["name"] == name)
}

/// The egress drop counter `kchaos status` shows for the run `name`.
fn dropped_in_status(status: &Value, name: &str) -> Option<u64> {
    run_named(status, name)?["faults"][0]["counters"]["egress.dropped"].as_u64()
}

/// The programs on the cgroup's egress hook (the kernel's own listing).
fn egress_programs(cg: &Path) -> usize {
    cgroup_programs(cg, attach_type::INET_EGRESS).len()
}

fn alive(pid: u32) -> bool {
    // Zombie (Z) or being released (X: a parent that ignores SIGCHLD, as the VM's init does, reaps
    // at once): exited either way, as kchaos's own identity check counts them.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    Path::new(&format!("/proc/{pid}")).exists()
        && !stat.contains(") Z ")
        && !stat.contains(") X ")
        && !stat.contains(") x ")
}

/// Starts a detached drop fault; returns its pid from what `--detach` printed.
fn detach(runs: &RunDir, cg: &Path, name: &str, drop: &str) -> u32 {
    let (code, out, err) = runs.run_text(&[
        "net",
        "--cgroup",
        &cg.display().to_string(),
        "--drop",
        drop,
        "--duration",
        "2m",
        "--name",
        name,
        "--detach",
    ]);
    assert_eq!(code, 0, "--detach: stdout {out} stderr {err}");
    assert!(out.contains(&format!("'{name}'")), "{out}");
    let pid: u32 = out
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    // Returned once armed: the kernel has the program on the cgroup already.
    assert_eq!(egress_programs(cg), 1, "{name} is not attached at return");
    assert!(alive(pid), "{name}'s pid {pid} is not running");
    pid
}

#[test]
fn detached_runs_are_listed_with_counters_and_stopped_one_by_one() {
    if !root_or_skip("detached_runs_are_listed_with_counters_and_stopped_one_by_one") {
        return;
    }
    let t = tag("n");
    let cg_a = LabCgroup::create(&format!("kchaos-runs-{t}-a")).unwrap();
    let cg_b = LabCgroup::create(&format!("kchaos-runs-{t}-b")).unwrap();
    let (_server, to) = loopback_echo_server();
    let runs = RunDir::new();
    let _stop = StopAll(&runs);
    let (a, b) = (format!("loss-{t}"), format!("cut-{t}"));

    let pid_a = detach(&runs, &cg_a.path, &a, "50");
    let pid_b = detach(&runs, &cg_b.path, &b, "100");

    // The fault is on: the client in A loses about half; the kernel's count is what it missed.
    let (sent, received) = udp_echo(Some(&cg_a.path), None, to, 400);
    // At 50% of 400 datagrams, none lost or all lost each has probability 2^-400, far below the
    // suite's alpha of 1e-6 (stats::ALPHA).
    assert!(
        received < sent && received > 0,
        "A: sent {sent} received {received}"
    );
    let missed = sent - received;
    // The status file is refreshed each second: within a few the count is there (5 s: a deadline,
    // not an assertion of speed; it only bounds how long a failing test waits).
    let start = Instant::now();
    let mut st = status(&runs);
    while dropped_in_status(&st, &a) != Some(missed) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
        st = status(&runs);
    }
    assert_eq!(dropped_in_status(&st, &a), Some(missed), "{st:#}");
    for (name, pid, cg) in [(&a, pid_a, &cg_a), (&b, pid_b, &cg_b)] {
        let r = run_named(&st, name).unwrap_or_else(|| panic!("{name} not listed: {st:#}"));
        assert_eq!(r["pid"], pid, "{r:#}");
        assert_eq!(r["kinds"], serde_json::json!(["net"]), "{r:#}");
        assert_eq!(r["phase"], "during", "{r:#}");
        assert_eq!(r["faults"][0]["state"], "armed", "{r:#}");
        assert!(r["armed_since_unix_ms"].as_u64().is_some(), "{r:#}");
        let left = r["time_left_s"].as_f64().expect("time left");
        // Run for 2 minutes and read within the few seconds of the waits above (deadlines of 5 s):
        // at most 120 s left, exactly; more than 60 shows it counts down from what was asked, with a
        // minute to spare for a busy machine.
        assert!(left > 60.0 && left <= 120.0, "{r:#}");
        assert_eq!(
            r["targets"][0].as_str(),
            Some(cg.path.to_str().unwrap()),
            "{r:#}"
        );
    }
    assert_eq!(st["dead"], serde_json::json!([]), "{st:#}");
    // The table says the same.
    let (code, table, _) = runs.run_text(&["status"]);
    assert_eq!(code, 0);
    assert!(table.contains(&a) && table.contains(&b), "{table}");
    assert!(
        table.contains(&format!("dropped {missed} ")),
        "A's drops in the table: {table}"
    );

    // Stopping A by name ends A alone.
    let (code, out, err) = runs.run_text(&["stop", "--name", &a]);
    assert_eq!(code, 0, "stop --name: {out} {err}");
    assert!(!alive(pid_a), "A (pid {pid_a}) still runs");
    assert_eq!(
        egress_programs(&cg_a.path),
        0,
        "A's program is still attached"
    );
    assert!(alive(pid_b), "stopping A ended B");
    assert_eq!(egress_programs(&cg_b.path), 1, "B's program went with A");
    let st = status(&runs);
    assert!(run_named(&st, &a).is_none(), "A still listed: {st:#}");
    assert!(run_named(&st, &b).is_some(), "B not listed: {st:#}");
    let (sent, received) = udp_echo(Some(&cg_a.path), None, to, 200);
    assert_eq!(sent, received, "A's cgroup still loses packets");
    let (sent_b, received_b) = udp_echo(Some(&cg_b.path), None, to, 50);
    assert_eq!(
        (sent_b, received_b),
        (50, 0),
        "B no longer drops everything"
    );

    // An unknown name: exit 2, and B untouched.
    let (code, _, err) = runs.run_text(&["stop", "--name", "no-such-run"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no kchaos run is named 'no-such-run'"),
        "{err}"
    );
    assert!(err.contains(&b), "the error lists the running ones: {err}");
    assert!(alive(pid_b));

    let (code, out, err) = runs.run_text(&["stop", "--name", &b]);
    assert_eq!(code, 0, "stop --name B: {out} {err}");
    assert!(!alive(pid_b));
    assert_eq!(egress_programs(&cg_b.path), 0);
    // Nothing left: no record, status file or log.
    assert_eq!(runs.records(), Vec::<std::path::PathBuf>::new());
    let st = status(&runs);
    assert_eq!(st["runs"], serde_json::json!([]), "{st:#}");
}

#[test]
fn a_second_live_run_of_one_name_is_refused() {
    if !root_or_skip("a_second_live_run_of_one_name_is_refused") {
        return;
    }
    let t = tag("d");
    let cg_a = LabCgroup::create(&format!("kchaos-runs-{t}-a")).unwrap();
    let cg_b = LabCgroup::create(&format!("kchaos-runs-{t}-b")).unwrap();
    let runs = RunDir::new();
    let _stop = StopAll(&runs);
    let name = format!("dup-{t}");
    let pid = detach(&runs, &cg_a.path, &name, "10");
    for detached in [true, false] {
        let cg = cg_b.path.display().to_string();
        let mut args = vec![
            "net",
            "--cgroup",
            &cg,
            "--drop",
            "10",
            "--duration",
            "1m",
            "--name",
            &name,
        ];
        if detached {
            args.push("--detach");
        }
        let (code, out, err) = runs.run_text(&args);
        assert_eq!(code, 2, "detached {detached}: {out} {err}");
        assert!(
            err.contains(&format!("a kchaos run named '{name}' is already running"))
                && err.contains(&format!("pid {pid}")),
            "{err}"
        );
        assert_eq!(egress_programs(&cg_b.path), 0, "the refused run attached");
    }
    assert!(alive(pid), "the refusal ended the first run");
    let st = status(&runs);
    assert_eq!(st["runs"].as_array().map(Vec::len), Some(1), "{st:#}");
    // Its name is free again once it has ended.
    let (code, _, err) = runs.run_text(&["stop", "--name", &name]);
    assert_eq!(code, 0, "{err}");
    detach(&runs, &cg_b.path, &name, "10");
    let (code, _, err) = runs.run_text(&["stop"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(runs.records(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_background_run_needs_an_end_and_reports_why_it_failed() {
    if !root_or_skip("a_background_run_needs_an_end_and_reports_why_it_failed") {
        return;
    }
    let t = tag("e");
    let cg = LabCgroup::create(&format!("kchaos-runs-{t}")).unwrap();
    let cg_s = cg.path.display().to_string();
    let runs = RunDir::new();
    let _stop = StopAll(&runs);
    let cases: &[(&[&str], &str)] = &[
        (
            &["net", "--cgroup", &cg_s, "--drop", "5", "--detach"],
            "--detach needs --duration",
        ),
        (
            &[
                "net",
                "--cgroup",
                &cg_s,
                "--drop",
                "5",
                "--duration",
                "1m",
                "--name",
                "a/b",
            ],
            "--name a/b",
        ),
        // Failures in the background run come back with its reason.
        (
            &[
                "net",
                "--cgroup",
                "kchaos-no-such-cgroup-here",
                "--drop",
                "5",
                "--duration",
                "1m",
                "--detach",
            ],
            "kchaos-no-such-cgroup-here",
        ),
    ];
    for (args, needle) in cases {
        let (code, out, err) = runs.run_text(args);
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(egress_programs(&cg.path), 0, "{args:?} attached");
    }
    // A taken metrics port: refused in the background run before anything is attached.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, out, err) = runs.run_text(&[
        "net",
        "--cgroup",
        &cg_s,
        "--drop",
        "5",
        "--duration",
        "1m",
        "--detach",
        "--metrics",
        &addr,
    ]);
    assert_eq!(code, 2, "{out} {err}");
    assert!(err.contains("--metrics") && err.contains(&addr), "{err}");
    assert_eq!(egress_programs(&cg.path), 0);
    assert_eq!(runs.records(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_killed_run_is_listed_as_dead_not_running_and_frees_its_name() {
    if !root_or_skip("a_killed_run_is_listed_as_dead_not_running_and_frees_its_name") {
        return;
    }
    let t = tag("k");
    let cg = LabCgroup::create(&format!("kchaos-runs-{t}")).unwrap();
    let runs = RunDir::new();
    let _stop = StopAll(&runs);
    let name = format!("killed-{t}");
    let pid = detach(&runs, &cg.path, &name, "10");
    // Its status file exists and was written by a live run.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(run_named(&status(&runs), &name).is_some());
    // SAFETY: kill(2) on the pid the detached run printed, checked alive just above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "pid {pid} survived SIGKILL");
    // Its record and status file stay for `kchaos stop`, but it is not running.
    let st = status(&runs);
    assert!(run_named(&st, &name).is_none(), "a dead run listed: {st:#}");
    let dead = st["dead"].as_array().expect("dead");
    assert_eq!(dead.len(), 1, "{st:#}");
    assert_eq!(dead[0]["name"], name.as_str(), "{st:#}");
    assert_eq!(dead[0]["pid"], pid, "{st:#}");
    let (_, table, _) = runs.run_text(&["status"]);
    assert!(table.contains("no kchaos run is running"), "{table}");
    assert!(table.contains("not running any more"), "{table}");
    // The name is free again: a new run may take it.
    let pid2 = detach(&runs, &cg.path, &name, "10");
    assert_ne!(pid, pid2);
    let (code, out, err) = runs.run_text(&["stop", "--name", &name]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(!alive(pid2));
    // The dead one's record and status are cleared by a bare stop.
    let (code, out, err) = runs.run_text(&["stop"]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(runs.records(), Vec::<std::path::PathBuf>::new());
    assert_eq!(egress_programs(&cg.path), 0);
}

/// The one test here that uses the default record directory, /run/kchaos: a run, a detached run
/// and a `kchaos stop` each leave it as they found it, absent. Where it exists already (another
/// kchaos, or one before this test) it is not ours to judge: SKIP.
#[test]
fn runs_in_the_default_record_directory_leave_no_directory_behind() {
    const TEST: &str = "runs_in_the_default_record_directory_leave_no_directory_behind";
    if !root_or_skip(TEST) {
        return;
    }
    let dir = Path::new("/run/kchaos");
    if dir.exists() {
        integration_tests::skip(
            TEST,
            "/run/kchaos exists already (another kchaos, or a run before this test)",
        );
        return;
    }
    let cg = LabCgroup::create(&format!("kchaos-test-{}", tag("d"))).expect("a test cgroup");
    let cg_path = cg.path.display().to_string();
    let net = |extra: &[&str]| {
        let mut args = vec!["net", "--cgroup", &cg_path, "--percent", "10", "--quiet"];
        args.extend_from_slice(extra);
        let out = integration_tests::run(&args);
        assert!(out.status.success(), "kchaos {args:?}: {out:?}");
    };
    let gone_within = |within: Duration| {
        let start = Instant::now();
        while dir.exists() && start.elapsed() < within {
            std::thread::sleep(Duration::from_millis(20));
        }
        !dir.exists()
    };
    net(&["--duration", "300ms"]);
    assert!(!dir.exists(), "a run to its end left {}", dir.display());
    // A detached run keeps its record and log there until it ends.
    let name = tag("dd");
    // Ends a detached run of this test also when an assertion fails.
    struct StopNamed(String);
    impl Drop for StopNamed {
        fn drop(&mut self) {
            let _ = integration_tests::run(&["stop", "--name", &self.0]);
        }
    }
    let _stop = StopNamed(name.clone());
    net(&["--duration", "1s", "--detach", "--name", &name]);
    assert!(
        dir.exists(),
        "a live detached run has no record in {}",
        dir.display()
    );
    assert!(
        gone_within(Duration::from_secs(10)),
        "a detached run to its end left {}",
        dir.display()
    );
    // And one ended by `kchaos stop`.
    net(&["--duration", "30s", "--detach", "--name", &name]);
    let out = integration_tests::run(&["stop", "--name", &name]);
    assert!(out.status.success(), "kchaos stop: {out:?}");
    assert!(
        gone_within(Duration::from_secs(10)),
        "a stopped run left {}",
        dir.display()
    );
}
