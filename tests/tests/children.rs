//! The commands of probes and rollbacks are bounded: a background process they start does not hold
//! the run (or outlive it), output kchaos keeps is capped whatever a command prints, and SIGTERM ends a
//! run promptly while a probe or a rollback command runs, with the command's whole process group.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use integration_tests::{RunDir, lab::LabCgroup, root_or_skip, tag};

/// A private temp directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!("kchaos-test-children-{}", tag("d")));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Processes whose command line holds `marker`; killed when dropped, so a failing test leaves none.
struct Marker(String);

impl Marker {
    fn new() -> Self {
        Self(tag("kchaos-orphan-marker"))
    }

    /// The processes whose command line holds the marker (what `pgrep -f` finds; the VM image has
    /// no pgrep). Zombies are left out: they hold no command line.
    fn pids(&self) -> Vec<i32> {
        let own = std::process::id() as i32;
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != own)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(self.0.len()).any(|w| w == self.0.as_bytes()))
            })
            .collect()
    }

    /// The processes still there after up to `within` (a killed process takes a moment to go).
    fn left_after(&self, within: Duration) -> Vec<i32> {
        let end = Instant::now() + within;
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() >= end {
                return pids;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A shell command that leaves `sleep 1000` running in a subshell whose command line holds the
    /// marker, then does `then`.
    fn background(&self, then: &str) -> String {
        format!("(sleep 1000; : {}) & {then}", self.0)
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill(2) of a process this test's commands started (found by a unique marker).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A scenario on `cgroup` with the given probes and rollbacks (YAML list items, indented 4 and 2).
fn scenario(cgroup: &Path, before: &str, probes: &str, rollbacks: &str) -> String {
    format!(
        r#"
title: bounded children
targets:
  - name: app
    cgroup: "{}"
steady_state:
  before: {before}
  after: 200ms
  probes:
{probes}
faults:
  - name: idle-drop
    at: 0s
    for: 500ms
    net:
      percent: 1
budget:
  max_duration: 60s
  max_injected_events: 100000
rollbacks:
{rollbacks}"#,
        cgroup.display()
    )
}

const OK_PROBE: &str = "    - name: ok\n      command: [/bin/true]\n      interval: 100ms\n";

/// Runs kchaos to its end or until `limit` (then kills it and fails): exit code, stdout, duration.
fn run_within(run_dir: &RunDir, args: &[&str], limit: Duration) -> (i32, String, Duration) {
    let start = Instant::now();
    let mut r = run_dir.spawn(args);
    loop {
        if let Ok(Some(_)) = r.child.try_wait() {
            break;
        }
        if start.elapsed() > limit {
            r.sigkill();
            panic!("kchaos {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    let (code, lines, stderr) = r.finish();
    (code, format!("{}\n{stderr}", lines.join("\n")), took)
}

/// A rollback that leaves a background process holding its output pipe ends when its first process
/// does: the run is not held until the timeout (before: ~590 s, until `kchaos stop`), the background
/// process is gone, and the output is kept.
#[test]
fn a_rollback_s_background_process_neither_holds_the_run_nor_outlives_it() {
    if !root_or_skip("a_rollback_s_background_process_neither_holds_the_run_nor_outlives_it") {
        return;
    }
    let dir = TempDir::new();
    let cg = LabCgroup::create(&tag("ch")).unwrap();
    let run_dir = RunDir::new();
    let marker = Marker::new();
    let rollback = format!(
        "  - name: bg\n    timeout: 5s\n    command: [sh, -c, \"{}\"]\n",
        marker.background("echo x")
    );
    let s = dir.write("s.yaml", &scenario(&cg.path, "300ms", OK_PROBE, &rollback));
    let report = dir.0.join("r.json");
    let rs = report.display().to_string();
    let (code, out, took) = run_within(
        &run_dir,
        &["run", &s, "--accept-risk", "--quiet", "--report", &rs],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}");
    // The run: before 0.3 s, faults 0.5 s, after 0.2 s, the rollback's echo; far below its timeout.
    assert!(
        took < Duration::from_secs(5),
        "the run took {took:?}: {out}"
    );
    assert_eq!(marker.left_after(Duration::from_secs(2)), Vec::<i32>::new());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let rb = &report["rollbacks"][0];
    assert_eq!(rb["exit_code"], 0, "{rb}");
    assert_eq!(rb["output"], "x\n", "{rb}");
}

/// A rollback that prints without end (`yes`) until its timeout: kchaos keeps the end of the output
/// and counts the rest, and its own memory does not grow with it (before: 9 GB).
#[test]
fn a_rollback_printing_without_end_is_capped() {
    if !root_or_skip("a_rollback_printing_without_end_is_capped") {
        return;
    }
    let dir = TempDir::new();
    let cg = LabCgroup::create(&tag("ch")).unwrap();
    let run_dir = RunDir::new();
    let rollback = "  - name: yes\n    timeout: 2s\n    command: [yes]\n";
    let s = dir.write("s.yaml", &scenario(&cg.path, "300ms", OK_PROBE, rollback));
    let report = dir.0.join("r.json");
    let rs = report.display().to_string();
    let start = Instant::now();
    let mut r = run_dir.spawn(&["run", &s, "--accept-risk", "--quiet", "--report", &rs]);
    let pid = r.child.id();
    let rss_kib = || -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    // RSS once probing started (the baseline), and the most seen while the rollback runs.
    std::thread::sleep(Duration::from_millis(250));
    let baseline = rss_kib().expect("kchaos's VmRSS");
    let mut peak = baseline;
    while let Ok(None) = r.child.try_wait() {
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
        peak = peak.max(rss_kib().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, lines, stderr) = r.finish();
    assert_eq!(code, 0, "{lines:?} {stderr}");
    // What the cap allows to grow: two streams of at most 2 x 64 KiB, a 16 KiB read buffer, and the
    // record's 2000 bytes; 32 MiB is far above that and far below what `yes` writes in 2 s (GBs).
    assert!(
        peak < baseline + 32 * 1024,
        "kchaos grew from {baseline} KiB to {peak} KiB while `yes` ran"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let output = report["rollbacks"][0]["output"]
        .as_str()
        .unwrap()
        .to_owned();
    let (note, rest) = output.split_once('\n').unwrap();
    let more: u64 = note
        .strip_prefix("... ")
        .and_then(|n| n.strip_suffix(" more bytes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of what was cut: {output:.200}"));
    assert!(more > 1 << 20, "{note}");
    assert!(
        rest.starts_with("y\n") || rest.starts_with("\ny"),
        "{rest:.100}"
    );
    assert!(rest.contains("[killed at its timeout of 2s"), "{rest}");
}

/// Probes (a thread's and an agent's inside the target) whose command leaves a background process:
/// none is left once the run ended (before: one `sleep 1000` per attempt, as root).
#[test]
fn probes_leave_no_background_process_behind() {
    if !root_or_skip("probes_leave_no_background_process_behind") {
        return;
    }
    let dir = TempDir::new();
    let cg = LabCgroup::create(&tag("ch")).unwrap();
    let run_dir = RunDir::new();
    let marker = Marker::new();
    let script = marker.background("true");
    let probes = format!(
        "    - name: thread\n      command: [sh, -c, \"{script}\"]\n      interval: 100ms\n\
         \x20   - name: agent\n      from_target: app\n      command: [sh, -c, \"{script}\"]\n      interval: 100ms\n"
    );
    let rollback = "  - name: none\n    command: [/bin/true]\n";
    let s = dir.write("s.yaml", &scenario(&cg.path, "1s", &probes, rollback));
    let (code, out, _) = run_within(
        &run_dir,
        &["run", &s, "--accept-risk", "--quiet"],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        marker.left_after(Duration::from_secs(2)),
        Vec::<i32>::new(),
        "background processes of probe commands outlived the run"
    );
}

/// SIGTERM while a probe's command runs (timeout 60 s), and while a rollback runs (300 s): kchaos
/// ends within seconds and the command's process group is gone (before: the run waited for the
/// command's timeout).
#[test]
fn sigterm_ends_the_run_and_the_command_s_process_group_promptly() {
    if !root_or_skip("sigterm_ends_the_run_and_the_command_s_process_group_promptly") {
        return;
    }
    let dir = TempDir::new();
    let cg = LabCgroup::create(&tag("ch")).unwrap();
    let run_dir = RunDir::new();
    let marker = Marker::new();
    let long = format!("sleep 1000; : {}", marker.0);
    let in_probe = scenario(
        &cg.path,
        "1s",
        &format!("    - name: slow\n      command: [sh, -c, \"{long}\"]\n      timeout: 60s\n"),
        "  - name: none\n    command: [/bin/true]\n",
    );
    let in_rollback = scenario(
        &cg.path,
        "300ms",
        OK_PROBE,
        &format!("  - name: slow\n    timeout: 300s\n    command: [sh, -c, \"{long}\"]\n"),
    );
    for (name, text) in [("probe", in_probe), ("rollback", in_rollback)] {
        let s = dir.write(&format!("{name}.yaml"), &text);
        let r = run_dir.spawn(&["run", &s, "--accept-risk", "--quiet"]);
        let waited = Instant::now();
        while marker.pids().is_empty() {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "the {name}'s command never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let start = Instant::now();
        let pid = r.child.id() as i32;
        // SAFETY: kill(2) of the kchaos this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut r = r;
        while let Ok(None) = r.child.try_wait() {
            if start.elapsed() > Duration::from_secs(20) {
                r.sigkill();
                panic!("kchaos still ran 20 s after SIGTERM during a {name} command");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = start.elapsed();
        // The command's grace (1 s) between SIGTERM and SIGKILL of its group, and the run's teardown.
        assert!(
            took < Duration::from_secs(5),
            "SIGTERM during a {name} command: kchaos took {took:?} to end"
        );
        assert_eq!(
            marker.left_after(Duration::from_secs(2)),
            Vec::<i32>::new(),
            "the {name}'s command outlived kchaos"
        );
        let _ = r.finish();
    }
}
