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

/// While the target is frozen its processes are SIGKILLed (a frozen process still dies of it) and a
/// child cgroup appears with a process in it (it is born frozen): the run ends 0 at its end, and
/// thaws the child with its parent.
#[test]
fn pause_ends_0_when_its_processes_were_killed_and_a_child_cgroup_appeared() {
    if !root_or_skip("pause_ends_0_when_its_processes_were_killed_and_a_child_cgroup_appeared") {
        return;
    }
    let lab = lab_cgroup();
    let app = lab.child("app").unwrap();
    let sleeper = Sleeper::start(&app);
    let runs = RunDir::new();
    let app_arg = app.display().to_string();
    let running = runs.start(&["pause", "--cgroup", &app_arg, "--duration", "2s"]);
    assert!(eventually(Duration::from_secs(2), || frozen(&app)));
    drop(sleeper);
    let child = app.join("late");
    fs::create_dir(&child).unwrap();
    let late = Sleeper::start(&child);
    assert!(
        eventually(Duration::from_secs(2), || frozen(&child)),
        "a child cgroup of a frozen one is born frozen"
    );
    let (code, lines, stderr) = running.finish();
    let all = format!("{}\n{stderr}", lines.join("\n"));
    println!("exit {code}: {all}");
    assert_eq!(code, 0, "{all}");
    assert!(!frozen(&app) && !frozen(&child), "still frozen: {all}");
    assert_eq!(freeze_bit(&child), "0");
    assert!(procfs::cmdline(late.0.id()).contains("sleep"));
    assert!(runs.records().is_empty(), "{:?}", runs.records());
}

/// A stress worker killed by someone else (or the OOM killer) mid-run: the run says so, ends 0 at its
/// end, and leaves no worker, cgroup or record behind.
#[test]
fn stress_ends_0_when_a_worker_was_killed_meanwhile() {
    if !root_or_skip("stress_ends_0_when_a_worker_was_killed_meanwhile") {
        return;
    }
    let lab = lab_cgroup();
    let app = lab.child("app").unwrap();
    let runs = RunDir::new();
    let app_arg = app.display().to_string();
    let running = runs.start(&[
        "stress",
        "--cgroup",
        &app_arg,
        "--cpu",
        "2",
        "--memory",
        "16M",
        "--duration",
        "2s",
    ]);
    let workers = cgroup::procs_recursive(&app).unwrap_or_default();
    assert_eq!(workers.len(), 3, "{workers:?}");
    for &w in &workers[..2] {
        signal(w, libc::SIGKILL);
    }
    let (code, lines, stderr) = running.finish();
    let all = format!("{}\n{stderr}", lines.join("\n"));
    println!("exit {code}: {all}");
    assert_eq!(code, 0, "{all}");
    assert!(
        all.contains("SIGKILL"),
        "the run did not say a worker was killed: {all}"
    );
    assert!(
        cgroup::procs_recursive(&app).unwrap_or_default().is_empty(),
        "a worker outlived the run"
    );
    let made: Vec<_> = fs::read_dir(&app)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name())
        .collect();
    assert!(made.is_empty(), "cgroups left under the target: {made:?}");
    assert!(runs.records().is_empty(), "{:?}", runs.records());
}

/// The directory a stress io worker writes in is removed mid-run (a /tmp cleaner), and another
/// directory of someone else's put at its path: the run ends 0 and leaves that directory alone.
#[test]
fn stress_io_leaves_a_directory_that_replaced_its_own() {
    if !root_or_skip("stress_io_leaves_a_directory_that_replaced_its_own") {
        return;
    }
    let lab = lab_cgroup();
    let app = lab.child("app").unwrap();
    let runs = RunDir::new();
    let io = integration_tests::TempDir::new("io");
    let running = runs.start(&[
        "stress",
        "--cgroup",
        &app.display().to_string(),
        "--io-write",
        "1M",
        "--io-dir",
        io.0.to_str().unwrap(),
        "--duration",
        "2s",
    ]);
    let made: Vec<_> = fs::read_dir(&io.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    fs::remove_dir_all(&made[0]).unwrap();
    fs::create_dir(&made[0]).unwrap();
    fs::write(made[0].join("theirs"), "keep me").unwrap();
    let (code, lines, stderr) = running.finish();
    let all = format!("{}\n{stderr}", lines.join("\n"));
    println!("exit {code}: {all}");
    assert_eq!(
        fs::read_to_string(made[0].join("theirs")).ok().as_deref(),
        Some("keep me"),
        "the run removed a directory that was not its own: {all}"
    );
    assert_eq!(code, 0, "{all}");
    assert!(
        all.contains("left alone") && all.contains("NOT removed"),
        "the run did not say it left the directory: {all}"
    );
    assert!(runs.records().is_empty(), "{:?}", runs.records());
    assert!(
        cgroup::procs_recursive(&app).unwrap_or_default().is_empty(),
        "a worker outlived the run"
    );
}
