//! `kchaos stress`, `kill` and `pause` on real processes: CPU load and memory as the kernel counts them,
//! paced write+fsync, kills that stay inside the cgroup, a freeze that stops a counter, and nothing left
//! behind (workers, frozen cgroups, directories) however the loader ends.
//!
//! Every run uses its own KCHAOS_RUN_DIR, so the `kchaos stop` here never touches another kchaos running
//! on the machine.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use chaos_userspace::engine::{cgroup, procfs};
use integration_tests::{RunDir, TempDir, lab::LabCgroup, root_or_skip, spawn_in, tag};

/// A scratch directory, removed on drop.
fn lab_cgroup() -> LabCgroup {
    LabCgroup::create(&format!("kchaos-test-{}", tag("s"))).expect("creating a test cgroup")
}

fn cg_arg(cg: &LabCgroup) -> String {
    cg.path.display().to_string()
}

fn procs(cg: &Path) -> Vec<u32> {
    cgroup::procs_recursive(cg).unwrap_or_default()
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

fn alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// The stress result of the report's one target: its cpu, memory, io, fds and duration_s.
fn read_report(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("report");
    let _ = std::fs::remove_file(path);
    let r: serde_json::Value = serde_json::from_str(&text).expect("report json");
    assert_eq!(r["faults"][0]["kind"], "stress", "{r}");
    r["faults"][0]["result"]["targets"][0].clone()
}

fn report_path() -> PathBuf {
    std::env::temp_dir().join(format!("kchaos-test-{}.json", tag("r")))
}

/// CPU time of these processes together, as the kernel counts it (utime + stime).
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|&p| procfs::cpu_time(p).map_or(0.0, |d| d.as_secs_f64()))
        .sum()
}

/// CPU time the whole host has spent busy (/proc/stat: everything but idle and iowait), in seconds.
fn host_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks.iter().sum::<f64>() - ticks[3] - ticks[4]) / hz
}

fn online_cpus() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) as f64 }
}

/// One measured run of `workers` CPU workers at 50%.
struct CpuRun {
    /// Per worker, from the workers' /proc/PID/stat, over the middle of the run.
    measured_pct: f64,
    /// Per worker, from the JSON report (the whole run).
    reported_pct: f64,
    /// CPUs the rest of the host used meanwhile.
    others_cpus: f64,
    /// Percentage points of a CPU per worker the machine did not have free for the workers over
    /// the middle of the run (see `cpu_load_within_5pct`).
    unavailable_pct: f64,
}

fn cpu_run(workers: u32) -> CpuRun {
    use integration_tests::timing::{TimerLateness, pressure_ms, stolen_ms};
    let cg = lab_cgroup();
    let run_dir = RunDir::new();
    let report = report_path();
    let n = workers.to_string();
    let mut running = run_dir.start(&[
        "stress",
        "--cgroup",
        &cg_arg(&cg),
        "--cpu",
        &n,
        "--cpu-load",
        "50",
        "--duration",
        "3500ms",
        "--json",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let pids = procs(&cg.path);
    assert_eq!(
        pids.len(),
        workers as usize,
        "workers in the cgroup: {pids:?}"
    );
    let timer = TimerLateness::start(Duration::from_millis(2));
    let (t0, c0, h0) = (Instant::now(), cpu_of(&pids), host_busy_s());
    let (w0, s0) = (pressure_ms(&cg.path, "cpu"), stolen_ms());
    std::thread::sleep(Duration::from_secs(3));
    let (t1, c1, h1) = (Instant::now(), cpu_of(&pids), host_busy_s());
    let (w1, s1) = (pressure_ms(&cg.path, "cpu"), stolen_ms());
    let late = timer.finish();
    assert!(running.child.wait().unwrap().success());
    let wall = t1.duration_since(t0).as_secs_f64();
    let r = read_report(&report);
    assert!(procs(&cg.path).is_empty(), "workers outlived the run");
    assert!(run_dir.records().is_empty(), "{:?}", run_dir.records());
    let waited_ms = w1.zip(w0).map_or(0.0, |(a, b)| a - b);
    let mean_late_ms = late.iter().sum::<f64>() / late.len().max(1) as f64 / 1e3;
    // Per worker: its own waiting (at most the cgroup's "some"), its share of the steal (at most
    // all of it), and half of each 50 ms period's late wake-up.
    let unavailable_ms = waited_ms + (s1 - s0) + 0.5 * (wall / 0.05) * mean_late_ms;
    CpuRun {
        measured_pct: 100.0 * (c1 - c0) / wall / f64::from(workers),
        reported_pct: r["cpu"]["achieved_pct"].as_f64().unwrap(),
        others_cpus: ((h1 - h0) - (c1 - c0)) / wall,
        unavailable_pct: 100.0 * unavailable_ms / 1e3 / wall,
    }
}

/// A worker at 50% within 5 points of it, judged against what the machine had free (others run
/// builds on this machine; under emulation the host does): the load a worker reaches is then the
/// scheduler's call, not kchaos's.
///
/// Not statistical: a duty cycle is a clock's doing. The 5 points are the test's goal on an idle
/// machine, not widened (the README's bench saw 50.0% for 50): the /proc tick (10 ms over 3 s: 0.3
/// points) and the carry a worker owes at either end of the window (one 50 ms period's 25 ms: 0.8
/// points) are inside it. Above, the machine can only take CPU
/// away: 55% stands. Below, a worker short of its budget in a period spun, runnable, to the period's
/// end, so its shortfall is at most the time it waited for a CPU (each worker's waiting lies within
/// the cgroup's cpu.pressure "some"), plus time the hypervisor took from its vCPU (steal), plus, for
/// each period, its load times how late its sleep ended (under emulation the guest does not count
/// that as waiting; a plain timer beside it measures a wake-up's lateness in the same seconds). The
/// report covers the whole run and /proc its middle 3 s: they may differ by what the machine took
/// in the part one covers and the other does not, at most the same allowance.
fn cpu_load_within_5pct(workers: u32) {
    let run = cpu_run(workers);
    let (measured, reported, gone) = (run.measured_pct, run.reported_pct, run.unavailable_pct);
    println!(
        "{workers} worker(s) at 50%: /proc says {measured:.1}% per worker, the report \
         {reported:.1}%; the rest of the host used {:.2} of {} CPUs; the machine did not have \
         {gone:.1} points per worker free (CPU wait, steal, late wake-ups)",
        run.others_cpus,
        online_cpus()
    );
    assert!(
        measured <= 55.0 && measured >= 45.0 - gone,
        "measured {measured:.1}% per worker, not within 50±5% (less {gone:.1} the machine did not \
         have free)"
    );
    assert!(
        reported <= 55.0 && reported >= 45.0 - gone,
        "reported {reported:.1}%, not within 50±5% (less {gone:.1} the machine did not have free)"
    );
    assert!(
        (reported - measured).abs() <= 5.0 + gone,
        "the report ({reported:.1}%) and /proc ({measured:.1}%) disagree by more than 5 + {gone:.1}"
    );
}

#[test]
fn cpu_load_one_worker_within_5pct() {
    if !root_or_skip("cpu_load_one_worker_within_5pct") {
        return;
    }
    cpu_load_within_5pct(1);
}

#[test]
fn cpu_load_two_workers_within_5pct() {
    if !root_or_skip("cpu_load_two_workers_within_5pct") {
        return;
    }
    cpu_load_within_5pct(2);
}

#[test]
fn memory_held_within_5pct() {
    if !root_or_skip("memory_held_within_5pct") {
        return;
    }
    let cg = lab_cgroup();
    let run_dir = RunDir::new();
    let report = report_path();
    let target = 256u64 << 20;
    let running = run_dir.start(&[
        "stress",
        "--cgroup",
        &cg_arg(&cg),
        "--memory",
        "256M",
        "--json",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    let rss = || -> u64 {
        procs(&cg.path)
            .iter()
            .map(|&p| procfs::rss_bytes(p).unwrap_or(0))
            .sum()
    };
    eventually(Duration::from_secs(5), || rss() >= target);
    std::thread::sleep(Duration::from_millis(300));
    let held = rss();
    let (code, lines) = running.terminate();
    assert_eq!(code, 143, "{lines:?}");
    let r = read_report(&report);
    let reported = r["memory"]["held_bytes"].as_u64().unwrap();
    println!(
        "256 MiB asked: the cgroup's processes hold {:.1} MiB (VmRSS), the report {:.1} MiB",
        held as f64 / 1048576.0,
        reported as f64 / 1048576.0
    );
    // Not timing: the worker touches every page of its 256 MiB before it reports them held, and the
    // test waits for that (5 s: a deadline, not an assertion of speed). VmRSS adds the worker's own
    // binary, stack and heap, a few MiB: 5% is 12.8 MiB; below, a page not touched.
    let off = |v: u64| (v as f64 - target as f64).abs() / target as f64;
    assert!(off(held) <= 0.05, "VmRSS {held} not within 5% of {target}");
    assert!(off(reported) <= 0.05, "reported {reported} not within 5%");
    assert!(procs(&cg.path).is_empty(), "workers outlived the run");
}

#[test]
fn io_writes_with_fsync_and_removes_its_directory() {
    if !root_or_skip("io_writes_with_fsync_and_removes_its_directory") {
        return;
    }
    let cg = lab_cgroup();
    let run_dir = RunDir::new();
    let io_dir = TempDir::new("io");
    let report = report_path();
    let mut running = run_dir.start(&[
        "stress",
        "--cgroup",
        &cg_arg(&cg),
        "--io-write",
        "4M",
        "--io-dir",
        io_dir.0.to_str().unwrap(),
        "--duration",
        "2s",
        "--json",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    std::thread::sleep(Duration::from_millis(1200));
    // While it runs: kchaos's directory, one file in it, and the kernel's count of the worker's writes.
    let made: Vec<PathBuf> = std::fs::read_dir(&io_dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    // Made by mkdtemp: a name with six unguessable characters (not only the run's pid, which anyone
    // could make first or point a symlink at), readable by root alone.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let name = made[0].file_name().unwrap().to_string_lossy().into_owned();
        let random = name.rsplit_once("-io-").map(|(_, r)| r).unwrap_or("");
        assert_eq!(random.len(), 6, "{name}: not a mkdtemp name");
        let mode = std::fs::symlink_metadata(&made[0])
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{name}: mode {mode:o}");
    }
    // The worker's file, besides the marker that tells `kchaos stop` the directory is kchaos's.
    let files: Vec<_> = std::fs::read_dir(&made[0])
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != chaos_userspace::engine::run_identity::MARKER)
        .collect();
    assert_eq!(files.len(), 1);
    let size = files[0].metadata().unwrap().len();
    let worker = procs(&cg.path)[0];
    let io = std::fs::read_to_string(format!("/proc/{worker}/io")).unwrap();
    let wchar: u64 = io
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 0 && wchar >= size, "file {size} B, wchar {wchar}");

    let status = running.child.wait().unwrap();
    let (cpu_waited, io_waited) = (
        integration_tests::timing::pressure_ms(&cg.path, "cpu"),
        integration_tests::timing::pressure_ms(&cg.path, "io"),
    );
    assert!(status.success());
    let r = read_report(&report);
    let written = r["io"]["bytes_written"].as_u64().unwrap();
    let fsyncs = r["io"]["fsyncs"].as_u64().unwrap();
    let duration = r["duration_s"].as_f64().unwrap();
    let expected = 4.0 * 1048576.0 * duration;
    println!(
        "4 MiB/s for {duration:.2}s: {written} B written and fsynced in {fsyncs} fsyncs \
         ({:.1}% of {expected:.0}); mid-run file {size} B, wchar {wchar}",
        100.0 * written as f64 / expected
    );
    // Not statistical: the pace is a clock's doing. 15% is the test's allowance on an idle machine,
    // not widened: writes are whole 128 KiB chunks (one is 1.6% of 8 MiB), the first comes a chunk's
    // time in, the report's duration includes the worker's start and stop. Above, nothing makes a
    // paced writer faster (it banks at most a second). Below, a writer falls behind only while it
    // waits for the disk (an fsync) or a CPU: at most the rate times the time the cgroup's tasks
    // waited for either (its cgroup was made for this test: io.pressure and cpu.pressure "some",
    // from its making to the worker's exit).
    let waited_s = (cpu_waited.unwrap_or(0.0) + io_waited.unwrap_or(0.0)) / 1e3;
    let lost = 4.0 * 1048576.0 * waited_s;
    println!(
        "  the cgroup waited {waited_s:.3} s for a CPU or the disk: up to {lost:.0} B the machine did \
         not let it write"
    );
    assert!(
        written as f64 <= 1.15 * expected && written as f64 >= 0.85 * expected - lost,
        "{written} B is not within 15% of {expected:.0} (less {lost:.0} B for the {waited_s:.3} s \
         the cgroup waited for a CPU or the disk)"
    );
    assert!(fsyncs >= written / (128 << 10), "{fsyncs} fsyncs");
    assert_eq!(r["io"]["dir_removed"], true);
    assert!(!made[0].exists(), "{} was left behind", made[0].display());
    assert_eq!(std::fs::read_dir(&io_dir.0).unwrap().count(), 0);
    assert!(run_dir.records().is_empty(), "{:?}", run_dir.records());
}

#[test]
fn fds_are_held_up_to_the_limit() {
    if !root_or_skip("fds_are_held_up_to_the_limit") {
        return;
    }
    let cg = lab_cgroup();
    let run_dir = RunDir::new();
    let report = report_path();
    let running = run_dir.start(&[
        "stress",
        "--cgroup",
        &cg_arg(&cg),
        "--fds",
        "1000",
        "--json",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    let worker = procs(&cg.path)[0];
    assert!(
        eventually(Duration::from_secs(3), || procfs::fds_on(
            worker,
            "/dev/zero"
        )
        .unwrap_or(0)
            == 1000),
        "the worker holds {:?} fds",
        procfs::fds_on(worker, "/dev/zero")
    );
    let (code, lines) = running.terminate();
    assert_eq!(code, 143, "{lines:?}");
    assert_eq!(read_report(&report)["fds"]["held"], 1000);
}

#[test]
fn kill_hits_only_the_cgroup_and_never_kchaos() {
    if !root_or_skip("kill_hits_only_the_cgroup_and_never_kchaos") {
        return;
    }
    let cg = lab_cgroup();
    let run_dir = RunDir::new();
    let mut inside: Vec<Child> = (0..3)
        .map(|_| spawn_in(&cg.path, &["sleep", "100"]))
        .collect();
    let mut outside: Vec<Child> = (0..2)
        .map(|_| Command::new("sleep").arg("100").spawn().unwrap())
        .collect();
    assert!(eventually(Duration::from_secs(3), || procs(&cg.path).len() == 3));
    let inside_pids: Vec<u32> = inside.iter().map(Child::id).collect();

    // Runs `kchaos kill` on the cgroup with these flags; its stdout, once it succeeded.
    let kill = |flags: &[&str]| {
        let cg = cg_arg(&cg);
        let mut args = vec!["kill", "--cgroup", cg.as_str()];
        args.extend(flags);
        let out = run_dir.run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{stdout}");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let stdout = kill(&["--count", "2"]);
    let signalled: Vec<u32> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("signalled "))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(signalled.len(), 2, "{stdout}");
    assert!(
        signalled.iter().all(|p| inside_pids.contains(p)),
        "{stdout}"
    );
    assert!(eventually(Duration::from_secs(3), || {
        inside.iter_mut().map(alive).filter(|a| *a).count() == 1
    }));
    assert!(outside.iter_mut().all(alive), "a process outside was hit");

    // --count above what the cgroup holds: said in a line, and never more than there are.
    let stdout = kill(&["--count", "5"]);
    assert!(
        stdout.contains("--count 5 asked for more processes than")
            && stdout.contains("(1): signalling those 1"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim().starts_with("signalled "))
            .count(),
        1,
        "{stdout}"
    );
    assert!(eventually(Duration::from_secs(3), || inside
        .iter_mut()
        .all(|c| !alive(c))));
    assert!(outside.iter_mut().all(alive), "a process outside was hit");
    inside = (0..3)
        .map(|_| spawn_in(&cg.path, &["sleep", "100"]))
        .collect();
    assert!(eventually(Duration::from_secs(3), || procs(&cg.path).len() == 3));

    // --all with SIGKILL goes through cgroup.kill; a kchaos stress worker in the cgroup is spared.
    let stress = run_dir.start(&[
        "stress",
        "--cgroup",
        &cg_arg(&cg),
        "--cpu",
        "1",
        "--cpu-load",
        "5",
        "--quiet",
    ]);
    let stdout = kill(&["--all"]);
    assert!(stdout.contains("leaving out 1 kchaos process"), "{stdout}");
    assert!(eventually(Duration::from_secs(3), || inside
        .iter_mut()
        .all(|c| !alive(c))));
    assert_eq!(procs(&cg.path).len(), 1, "the stress worker was killed");
    let (code, lines) = stress.terminate();
    assert_eq!(code, 143, "{lines:?}");

    // Nothing but the stress worker: --all with SIGKILL uses cgroup.kill, here with another signal.
    let mut more: Vec<Child> = (0..2)
        .map(|_| spawn_in(&cg.path, &["sleep", "100"]))
        .collect();
    assert!(eventually(Duration::from_secs(3), || procs(&cg.path).len() == 2));
    let out = run_dir.run(&["kill", "--cgroup", &cg_arg(&cg), "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(stdout.contains("cgroup.kill"), "{stdout}");
    let mut last = spawn_in(&cg.path, &["sleep", "100"]);
    assert!(eventually(Duration::from_secs(3), || procs(&cg.path).len() == 1));
    kill(&["--all", "--signal", "TERM"]);
    assert!(eventually(Duration::from_secs(3), || !alive(&mut last)));
    assert!(more.iter_mut().all(|c| !alive(c)));
    assert!(outside.iter_mut().all(alive), "a process outside was hit");
    for mut c in outside {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A shell loop in the cgroup that counts in a file (replaced whole with mv, so a reader never sees
/// it half written).
struct Counter {
    file: PathBuf,
    _dir: TempDir,
    child: Child,
}

impl Counter {
    fn start(cg: &Path) -> Self {
        let dir = TempDir::new("counter");
        let file = dir.0.join("n");
        let script = format!(
            "i=0; while :; do i=$((i+1)); echo $i > '{0}.tmp' && mv -f '{0}.tmp' '{0}'; done",
            file.display()
        );
        let child = spawn_in(cg, &["sh", "-c", &format!("exec 2>/dev/null; {script}")]);
        let counter = Self {
            file,
            _dir: dir,
            child,
        };
        assert!(
            eventually(Duration::from_secs(3), || counter.value() > 0),
            "the counter does not count"
        );
        counter
    }

    fn value(&self) -> u64 {
        std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn advances(&self, within: Duration) -> bool {
        let start = self.value();
        eventually(within, || self.value() > start)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn frozen(cg: &Path) -> bool {
    std::fs::read_to_string(cg.join("cgroup.events"))
        .unwrap()
        .lines()
        .any(|l| l == "frozen 1")
}

#[test]
fn pause_freezes_then_thaws() {
    if !root_or_skip("pause_freezes_then_thaws") {
        return;
    }
    let cg = lab_cgroup();
    let run_dir = RunDir::new();
    let counter = Counter::start(&cg.path);
    let mut running = run_dir.start(&["pause", "--cgroup", &cg_arg(&cg), "--duration", "2s"]);
    assert!(frozen(&cg.path), "cgroup.events does not say frozen");
    let before = counter.value();
    std::thread::sleep(Duration::from_millis(700));
    let after = counter.value();
    assert_eq!(before, after, "the counter advanced while frozen");
    let status = running.child.wait().unwrap();
    assert!(status.success());
    assert!(!frozen(&cg.path), "still frozen after the run");
    assert!(
        counter.advances(Duration::from_secs(2)),
        "the counter did not resume"
    );
    println!(
        "frozen at {before} for 2s, counting again from {}",
        counter.value()
    );
    assert!(run_dir.records().is_empty(), "{:?}", run_dir.records());
}

#[test]
fn sigkill_of_the_loader_leaves_no_worker_and_no_frozen_cgroup() {
    if !root_or_skip("sigkill_of_the_loader_leaves_no_worker_and_no_frozen_cgroup") {
        return;
    }
    let cg = lab_cgroup();
    let run_dir = RunDir::new();
    let io_dir = TempDir::new("io");

    // stress: the kernel kills the workers (PR_SET_PDEATHSIG); `kchaos stop` removes the io directory.
    let running = run_dir.start(&[
        "stress",
        "--cgroup",
        &cg_arg(&cg),
        "--cpu",
        "2",
        "--memory",
        "64M",
        "--io-write",
        "1M",
        "--io-dir",
        io_dir.0.to_str().unwrap(),
        "--fds",
        "100",
        "--quiet",
    ]);
    assert_eq!(procs(&cg.path).len(), 5);
    running.sigkill();
    assert!(
        eventually(Duration::from_secs(2), || procs(&cg.path).is_empty()),
        "workers outlived a SIGKILLed loader: {:?}",
        procs(&cg.path)
    );
    let out = run_dir.run(&["stop"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success());
    assert_eq!(std::fs::read_dir(&io_dir.0).unwrap().count(), 0);
    assert!(run_dir.records().is_empty(), "{:?}", run_dir.records());

    // pause: its guard thaws at once.
    let counter = Counter::start(&cg.path);
    let running = run_dir.start(&["pause", "--cgroup", &cg_arg(&cg), "--duration", "30s"]);
    assert!(frozen(&cg.path));
    let loader = running.child.id();
    running.sigkill();
    assert!(
        eventually(Duration::from_secs(2), || !frozen(&cg.path)),
        "still frozen after the loader's SIGKILL"
    );
    assert!(counter.advances(Duration::from_secs(2)));
    let out = run_dir.run(&["stop"]);
    assert!(out.status.success());
    assert!(run_dir.records().is_empty(), "{:?}", run_dir.records());
    assert!(!frozen(&cg.path));

    // pause, with its guard killed too: the cgroup stays frozen until `kchaos stop`.
    let running = run_dir.start(&["pause", "--cgroup", &cg_arg(&cg), "--duration", "30s"]);
    let pid = running.child.id();
    assert_ne!(pid, loader);
    let guard: u32 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the pause guard")
        .parse()
        .unwrap();
    assert!(procfs::cmdline(guard).contains("pause-guard"));
    // SAFETY: plain kill(2).
    unsafe { libc::kill(guard as i32, libc::SIGKILL) };
    running.sigkill();
    std::thread::sleep(Duration::from_millis(300));
    assert!(frozen(&cg.path), "nothing should have thawed it");
    let out = run_dir.run(&["stop"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(out.status.success());
    assert!(stdout.contains("thawed"), "{stdout}");
    assert!(!frozen(&cg.path), "`kchaos stop` did not thaw it");
    assert!(counter.advances(Duration::from_secs(2)));
    assert!(run_dir.records().is_empty(), "{:?}", run_dir.records());
}

#[test]
fn bad_input_exits_2_and_starts_nothing() {
    if !root_or_skip("bad_input_exits_2_and_starts_nothing") {
        return;
    }
    let cg = lab_cgroup();
    let other = lab_cgroup();
    let run_dir = RunDir::new();
    let io_dir = TempDir::new("io");
    let c = cg_arg(&cg);
    let o = cg_arg(&other);
    let io = io_dir.0.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["stress", "--cgroup", &c], "nothing to stress"),
        (
            vec!["stress", "--cgroup", &c, "--cpu", "1", "--cpu-load", "140"],
            "0 to 100",
        ),
        (vec!["stress", "--cgroup", "/", "--cpu", "1"], "root cgroup"),
        (
            vec!["stress", "--cgroup", &c, "--memory", "100T"],
            "MemAvailable",
        ),
        (
            vec![
                "stress",
                "--cgroup",
                &c,
                "--io-write",
                "1M",
                "--io-dir",
                "/no/such",
            ],
            "/no/such",
        ),
        (
            vec!["stress", "--cgroup", &c, "--io-write", "1M"],
            "--io-dir",
        ),
        (
            vec![
                "stress",
                "--cgroup",
                &c,
                "--io-write",
                "fast",
                "--io-dir",
                &io,
            ],
            "not a rate",
        ),
        (
            vec!["stress", "--pid", "999999999", "--cpu", "1"],
            "--pid 999999999",
        ),
        (
            vec!["kill", "--cgroup", &c, "--signal", "BOGUS"],
            "not a signal",
        ),
        (vec!["kill", "--cgroup", &c, "--count", "0"], "--count 0"),
        (
            vec!["kill", "--cgroup", &o, "--duration", "1s"],
            "instant event",
        ),
        (
            vec!["kill", "--cgroup", &c, "--all", "--count", "2"],
            "--count",
        ),
        (vec!["kill", "--cgroup", "/"], "root cgroup"),
        (vec!["pause", "--cgroup", &c], "--duration"),
        (vec!["pause", "--cgroup", &c, "--duration", "10"], "unit"),
        (
            vec!["pause", "--cgroup", "/", "--allow-host", "--duration", "1s"],
            "holds kchaos itself",
        ),
    ];
    let sleeper = spawn_in(&cg.path, &["sleep", "100"]);
    let mut sleeper = sleeper;
    assert!(eventually(Duration::from_secs(3), || procs(&cg.path).len() == 1));
    let check_nothing_started = |args: &[&str]| {
        assert_eq!(procs(&cg.path).len(), 1, "{args:?} started something");
        assert!(procs(&other.path).is_empty(), "{args:?} started something");
        assert!(!frozen(&cg.path), "{args:?} froze the cgroup");
        assert_eq!(std::fs::read_dir(&io_dir.0).unwrap().count(), 0);
        assert!(
            run_dir.records().is_empty(),
            "{args:?}: {:?}",
            run_dir.records()
        );
    };
    for (args, expect) in &cases {
        let out = run_dir.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{args:?}: stderr does not say '{expect}': {stderr}"
        );
        if stderr.starts_with("kchaos: error:") {
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{args:?}: not one line: {stderr}"
            );
        }
        check_nothing_started(args);
    }
    // A cgroup someone else froze is refused (kchaos would thaw it at the end).
    std::fs::write(cg.path.join("cgroup.freeze"), "1").unwrap();
    let out = run_dir.run(&["pause", "--cgroup", &c, "--duration", "1s"]);
    std::fs::write(cg.path.join("cgroup.freeze"), "0").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already frozen"), "{stderr}");
    assert!(run_dir.records().is_empty());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// A v1 memory cgroup with a limit, removed (after killing what is in it) on drop.
struct V1MemoryCgroup(PathBuf);

impl Drop for V1MemoryCgroup {
    fn drop(&mut self) {
        for pid in cgroup::procs(&self.0).unwrap_or_default() {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        eventually(Duration::from_secs(3), || {
            std::fs::remove_dir(&self.0).is_ok() || !self.0.exists()
        });
    }
}

#[test]
fn hybrid_host_workers_join_the_targets_v1_memory_cgroup() {
    let test = "hybrid_host_workers_join_the_targets_v1_memory_cgroup";
    if !root_or_skip(test) {
        return;
    }
    let v1_root = Path::new("/sys/fs/cgroup/memory");
    if !v1_root.join("memory.limit_in_bytes").exists() {
        integration_tests::skip(test, "no cgroup v1 memory hierarchy on this host");
        return;
    }
    let cg = lab_cgroup();
    let name = format!("kchaos-test-{}", tag("v"));
    let v1 = V1MemoryCgroup(v1_root.join(&name));
    std::fs::create_dir(&v1.0).unwrap();
    std::fs::write(
        v1.0.join("memory.limit_in_bytes"),
        (512u64 << 20).to_string(),
    )
    .unwrap();
    // The target's own process, in both its v2 cgroup and its v1 memory cgroup, as in a container.
    let mut app = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}/cgroup.procs' && echo $$ > '{}/cgroup.procs' && exec sleep 100",
            cg.path.display(),
            v1.0.display()
        ))
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(3), || procs(&cg.path).len() == 1));
    let run_dir = RunDir::new();

    // The v1 limit counts: 600M does not fit in 512M.
    let out = run_dir.run(&["stress", "--cgroup", &cg_arg(&cg), "--memory", "600M"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("memory limit of {}", v1.0.display())),
        "{stderr}"
    );

    let running = run_dir.start(&[
        "stress",
        "--cgroup",
        &cg_arg(&cg),
        "--memory",
        "64M",
        "--quiet",
    ]);
    assert!(
        running.head.iter().any(|l| l.contains(&name)),
        "{:?}",
        running.head
    );
    let worker = *procs(&cg.path)
        .iter()
        .find(|&&p| p != app.id())
        .expect("the memory worker");
    let memberships = std::fs::read_to_string(format!("/proc/{worker}/cgroup")).unwrap();
    assert!(
        memberships.contains(&format!("memory:/{name}")),
        "{memberships}"
    );
    let usage = || -> u64 {
        std::fs::read_to_string(v1.0.join("memory.usage_in_bytes"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(3), || usage() >= 64 << 20),
        "the v1 cgroup accounts {} B",
        usage()
    );
    println!(
        "worker {worker} in {name} (v1 memory); its usage_in_bytes reached {:.1} MiB",
        usage() as f64 / 1048576.0
    );
    let (code, lines) = running.terminate();
    assert_eq!(code, 143, "{lines:?}");
    let _ = app.kill();
    let _ = app.wait();
}

/// Every command writes the one report shape: a pause and a kill with `--json`, rendered again by
/// `kchaos report` as text, HTML and JUnit.
#[test]
fn pause_and_kill_write_the_common_report_which_report_renders() {
    if !root_or_skip("pause_and_kill_write_the_common_report_which_report_renders") {
        return;
    }
    let cg = lab_cgroup();
    let run_dir = RunDir::new();
    let mut sleepers: Vec<Child> = (0..2)
        .map(|_| spawn_in(&cg.path, &["sleep", "100"]))
        .collect();
    assert!(eventually(Duration::from_secs(3), || procs(&cg.path).len() == 2));
    // Removed when dropped, also when an assertion fails.
    let dir = TempDir::new("rep");
    let path = |name: &str| dir.0.join(name).display().to_string();

    let out = run_dir.run(&[
        "pause",
        "--cgroup",
        &cg_arg(&cg),
        "--duration",
        "1s",
        "--json",
        &path("pause.json"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_dir.run(&[
        "kill",
        "--cgroup",
        &cg_arg(&cg),
        "--all",
        "--signal",
        "TERM",
        "--json",
        &path("kill.json"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(eventually(Duration::from_secs(3), || sleepers
        .iter_mut()
        .all(|c| !alive(c))));

    let json = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path(name)).unwrap()).unwrap()
    };
    let pause = json("pause.json");
    assert_eq!(pause["command"], "pause", "{pause}");
    let f = &pause["faults"][0];
    assert_eq!(f["kind"], "pause");
    assert_eq!(f["counters"]["processes"], 2, "{f}");
    let frozen = f["counters"]["frozen_ms"].as_u64().unwrap();
    assert!(frozen.abs_diff(1000) <= 10, "frozen {frozen} ms of 1s");
    let kill = json("kill.json");
    assert_eq!(kill["command"], "kill", "{kill}");
    assert_eq!(kill["faults"][0]["counters"]["signalled"], 2, "{kill}");
    assert_eq!(kill["summary"]["injected_events"], 2);

    for name in ["pause", "kill"] {
        let (code, text, err) = run_dir.run_text(&["report", &path(&format!("{name}.json"))]);
        assert_eq!(code, 0, "{err}");
        assert!(text.contains(&format!("kchaos {name}")), "{text}");
        let html = path(&format!("{name}.html"));
        let junit = path(&format!("{name}.xml"));
        let (code, _, err) = run_dir.run_text(&[
            "report",
            &path(&format!("{name}.json")),
            "--html",
            &html,
            "--junit",
            &junit,
        ]);
        assert_eq!(code, 0, "{err}");
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(page.contains("<html") && page.contains(name), "{name}.html");
        let xml = std::fs::read_to_string(&junit).unwrap();
        assert!(xml.contains("<testsuite"), "{xml}");
    }
}
