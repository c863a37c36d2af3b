//! Races at undo time, kind by kind: what a run (or `kchaos stop`) does when what it would undo has
//! vanished or been replaced by someone else's meanwhile. Each run must end without an undo failure,
//! leave no record behind, and never undo what is not its own.
//!
//! Every run uses its own KCHAOS_RUN_DIR, so the `kchaos stop` here never touches another kchaos.

use std::{
    fs,
    path::Path,
    process::Child,
    time::{Duration, Instant},
};

use chaos_userspace::engine::{cgroup, procfs};
use integration_tests::{RunDir, lab::LabCgroup, root_or_skip, spawn_in, tag};

fn lab_cgroup() -> LabCgroup {
    LabCgroup::create(&format!("kchaos-test-{}", tag("u"))).expect("creating a test cgroup")
}

/// Waits until `cond` holds, up to `timeout`.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn frozen(cg: &Path) -> bool {
    fs::read_to_string(cg.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "frozen 1"))
        .unwrap_or(false)
}

fn freeze_bit(cg: &Path) -> String {
    fs::read_to_string(cg.join("cgroup.freeze"))
        .map(|t| t.trim().to_owned())
        .unwrap_or_else(|e| format!("({e})"))
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid as i32, sig) };
}

/// A `sleep` in `cg`, killed on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start(cg: &Path) -> Self {
        let s = Self(spawn_in(cg, &["sleep", "600"]));
        assert!(
            eventually(Duration::from_secs(3), || cgroup::procs_recursive(cg)
                .unwrap_or_default()
                .contains(&s.0.id())),
            "the sleeper did not join {}",
            cg.display()
        );
        s
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pause guard of loader `pid` (its one child).
fn pause_guard(pid: u32) -> u32 {
    let guard: u32 = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the pause guard")
        .parse()
        .unwrap();
    assert!(procfs::cmdline(guard).contains("pause-guard"));
    guard
}

/// Kills what is in `cg` (frozen or not), waits for it to go, and removes the directory: a container
/// that stopped.
fn remove_container_cgroup(cg: &Path, sleeper: Sleeper) {
    drop(sleeper);
    assert!(
        eventually(Duration::from_secs(3), || fs::remove_dir(cg).is_ok()),
        "could not remove {}",
        cg.display()
    );
}

/// A paused target whose container stopped (its cgroup removed while frozen) and started again at
/// the same path, where someone else (`podman pause`, another tool) froze the new one: the run ends
/// at the gone target as documented, and its thaw at the end leaves the new cgroup frozen: it is not
/// the one kchaos froze.
#[test]
fn pause_never_thaws_a_cgroup_that_replaced_its_target() {
    if !root_or_skip("pause_never_thaws_a_cgroup_that_replaced_its_target") {
        return;
    }
    let lab = lab_cgroup();
    let app = lab.child("app").unwrap();
    let sleeper = Sleeper::start(&app);
    let runs = RunDir::new();
    let app_arg = app.display().to_string();
    let running = runs.start(&["pause", "--cgroup", &app_arg, "--duration", "60s"]);
    assert!(eventually(Duration::from_secs(2), || frozen(&app)));
    let loader = running.child.id();
    // Held still, so the replacement is complete before it looks again.
    signal(loader, libc::SIGSTOP);
    remove_container_cgroup(&app, sleeper);
    fs::create_dir(&app).unwrap();
    let _new = Sleeper::start(&app);
    fs::write(app.join("cgroup.freeze"), "1").unwrap();
    assert!(eventually(Duration::from_secs(2), || frozen(&app)));
    signal(loader, libc::SIGCONT);
    let (code, lines, stderr) = running.finish();
    let all = format!("{}\n{stderr}", lines.join("\n"));
    println!("exit {code}: {all}");
    assert!(all.contains("is gone"), "{all}");
    assert!(!all.contains("could not thaw"), "{all}");
    assert_eq!(
        freeze_bit(&app),
        "1",
        "kchaos thawed a cgroup it did not freeze"
    );
    assert!(frozen(&app));
    assert!(runs.records().is_empty(), "{:?}", runs.records());
}

/// Loader and guard killed while the target is frozen, then the target's cgroup removed (the first
/// time) or replaced by a cgroup someone else froze (the second): `kchaos stop` ends 0, forgets the
/// record, and leaves the replacement frozen.
#[test]
fn stop_after_a_paused_target_vanished_or_was_replaced() {
    if !root_or_skip("stop_after_a_paused_target_vanished_or_was_replaced") {
        return;
    }
    let lab = lab_cgroup();
    let app = lab.child("app").unwrap();
    let app_arg = app.display().to_string();
    let runs = RunDir::new();
    for replaced in [false, true] {
        let sleeper = Sleeper::start(&app);
        let running = runs.start(&["pause", "--cgroup", &app_arg, "--duration", "60s"]);
        assert!(eventually(Duration::from_secs(2), || frozen(&app)));
        let loader = running.child.id();
        signal(pause_guard(loader), libc::SIGKILL);
        running.sigkill();
        std::thread::sleep(Duration::from_millis(200));
        assert!(frozen(&app), "nothing should have thawed it");
        remove_container_cgroup(&app, sleeper);
        let _new = replaced.then(|| {
            fs::create_dir(&app).unwrap();
            let s = Sleeper::start(&app);
            fs::write(app.join("cgroup.freeze"), "1").unwrap();
            assert!(eventually(Duration::from_secs(2), || frozen(&app)));
            s
        });
        let (code, out, err) = runs.run_text(&["stop"]);
        println!("replaced {replaced}: exit {code}: {out}{err}");
        assert_eq!(code, 0, "{out}{err}");
        assert!(runs.records().is_empty(), "{:?}", runs.records());
        if replaced {
            assert_eq!(
                freeze_bit(&app),
                "1",
                "kchaos stop thawed a cgroup kchaos did not freeze: {out}"
            );
            fs::write(app.join("cgroup.freeze"), "0").unwrap();
        } else {
            fs::create_dir(&app).unwrap();
        }
    }
}
