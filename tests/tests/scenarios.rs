//! Experiments end to end: each shipped scenario run against a lab (netns + veth + target cgroup +
//! services in the namespace), validation errors as a user sees them, a dry run, an abort by a failing
//! probe (detached within 100 ms, traffic flowing again), a budget that stops injection, the monkey,
//! and the report's other forms (summary, JUnit, HTML).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use integration_tests::{
    attach_type, cgroup_programs, kchaos, lab, root_or_skip, skip, spawn_in, tag, traffic,
};
use lab::Lab;
use serde_json::Value;

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name)
}

/// A file in the temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("kchaos-test-{}-{name}", tag("f"))))
    }

    fn with(name: &str, text: &str) -> Self {
        let f = Self::new(name);
        std::fs::write(&f.0, text).unwrap();
        f
    }

    fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // KCHAOS_TEST_KEEP=DIR keeps reports and pages for a look (e.g. the HTML in a browser).
        if let Some(dir) = std::env::var_os("KCHAOS_TEST_KEEP")
            && let Some(name) = self.0.file_name()
        {
            let _ = std::fs::copy(&self.0, Path::new(&dir).join(name));
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A TCP (or, with `http`, a minimal HTTP) service on a thread inside the lab's namespace; counts the
/// connections it accepted. Stops when dropped.
struct Service {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Service {
    fn start(lab: &Lab, port: u16, http: bool) -> Self {
        let addr = SocketAddr::from((lab.server_addr, port));
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = lab
            .netns
            .spawn(move || {
                let listener = TcpListener::bind(addr).and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                });
                let listener = match listener {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            a.fetch_add(1, Ordering::Relaxed);
                            if http {
                                let _ = conn.set_nonblocking(false);
                                let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                                let mut buf = [0u8; 1024];
                                let _ = conn.read(&mut buf);
                                let _ = conn.write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                                );
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
            .unwrap();
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("service thread")
            .expect("binding the service");
        Self {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `kchaos run` whose stdout lines arrive on a channel as they are printed.
struct LiveRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl LiveRun {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(kchaos())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning kchaos");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (up to `within`) for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {needle:?} within {within:?}: {:#?}",
            self.seen
        );
    }

    /// Waits for the end; returns the exit code, all stdout lines, stderr.
    fn finish(mut self) -> (i32, Vec<String>, String) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let mut lines = std::mem::take(&mut self.seen);
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
        (status.code().unwrap_or(-1), lines, err)
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(kchaos()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the report")).expect("json")
}

fn vars(lab: &Lab, server: SocketAddr) -> [String; 4] {
    [
        "--var".into(),
        format!("cgroup={}", lab.cgroup.path.display()),
        "--var".into(),
        format!("server={server}"),
    ]
}

fn results<'a>(report: &'a Value, probe: &str) -> Vec<&'a Value> {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == probe)
        .unwrap_or_else(|| panic!("no probe {probe}"))["results"]
        .as_array()
        .unwrap()
        .iter()
        .collect()
}

fn count(results: &[&Value], phase: &str, ok: bool) -> usize {
    results
        .iter()
        .filter(|r| r["phase"] == phase && r["ok"] == ok)
        .count()
}

/// How many cgroup_skb programs are attached (ingress + egress) directly to `cg` and the cgroups below
/// it: BPF_PROG_QUERY on each directory. Counting on the lab's own cgroups, not the host's program list,
/// keeps the check true while other tests load programs of their own.
fn attached_programs(cg: &Path) -> u32 {
    use std::os::fd::AsRawFd as _;
    let mut total = 0;
    let dirs = std::iter::once(cg.to_path_buf()).chain(
        std::fs::read_dir(cg)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path()),
    );
    for dir in dirs {
        let f = std::fs::File::open(&dir).unwrap();
        for attach_type in [0u32, 1] {
            // union bpf_attr, query: target_fd, attach_type, query_flags, attach_flags, prog_ids,
            // prog_cnt, ... (zeroed: only the count is asked for).
            let mut attr = [0u32; 32];
            attr[0] = f.as_raw_fd() as u32;
            attr[1] = attach_type;
            // SAFETY: bpf(BPF_PROG_QUERY = 16) reads and writes within the attr buffer given with its size.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    16,
                    attr.as_mut_ptr(),
                    std::mem::size_of_val(&attr),
                )
            };
            assert_eq!(
                rc,
                0,
                "BPF_PROG_QUERY on {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
            total += attr[6];
        }
    }
    total
}

fn no_residue(lab: &Lab) {
    assert_eq!(
        attached_programs(&lab.cgroup.path),
        0,
        "a program is still attached to the lab"
    );
    let procs = std::fs::read_to_string(lab.cgroup.path.join("cgroup.procs")).unwrap();
    assert!(
        procs.trim().is_empty(),
        "a probe agent outlived the run: {procs}"
    );
}

#[test]
fn validate_names_file_line_column_field_and_what_is_allowed() {
    // Runs without root: validate needs no privileges.
    let bad = TempFile::with(
        "bad.yaml",
        "title: bad\ntargets:\n  - cgroup: app\nfaults:\n  - for: 10\n    net: { drop: 140, dorp: 1 }\n  - at: 2s\n    for: 3s\n    net: { partition: 10.0.0.1 }\nbudget: { max_duration: 4s }\nfrobnicate: yes\n",
    );
    let (code, out, err) = run(&["validate", bad.s()]);
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
    let (code, _, err) = run(&["validate", outside.s()]);
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
        let (code, out, err) = run(&[
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
        let (code, _, err) = run(&["validate", p]);
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
    let (code, out, _) = run(&["validate", bare.s()]);
    assert_eq!(code, 0);
    for finding in [
        "[  HIGH] no-steady-state-probe",
        "[  HIGH] no-abort-rule",
        "[  HIGH] no-budget",
        "refuses this scenario unless --accept-risk",
    ] {
        assert!(out.contains(finding), "missing {finding} in {out}");
    }
}

#[test]
fn refuses_high_risk_and_dry_run_attaches_nothing() {
    if !root_or_skip("refuses_high_risk_and_dry_run_attaches_nothing") {
        return;
    }
    let lab = Lab::create(&tag("x")).unwrap();
    let cg = format!("cgroup={}", lab.cgroup.path.display());
    let bare = TempFile::with(
        "bare.yaml",
        "title: bare\ntargets: [{cgroup: \"${cgroup}\"}]\nfaults: [{for: 5s, net: {drop: 100}}]\n",
    );
    let start = Instant::now();
    let (code, out, err) = run(&["run", bare.s(), "--var", &cg]);
    assert_eq!(code, 2, "{out} {err}");
    assert!(
        err.contains("refusing to run") && err.contains("--accept-risk"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "it ran instead of refusing"
    );
    assert_eq!(attached_programs(&lab.cgroup.path), 0);

    // A dry run prints the timeline and what would attach where, then attaches nothing.
    let path = scenario("packet-loss-ramp.yaml");
    let server = SocketAddr::from((lab.server_addr, 7100));
    let v = vars(&lab, server);
    let mut args = vec!["run", path.to_str().unwrap(), "--dry-run"];
    args.extend(v.iter().map(String::as_str));
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{out} {err}");
    let cg_path = lab.cgroup.path.display().to_string();
    for expected in [
        "plan (dry run: nothing is attached):",
        "1.0s  attach + arm 'loss-ramp' [net: drop 0% (egress) [only tcp]; ramp drop 0% -> 30% over 3s] on app (",
        "3.0s  'loss-ramp' drop = 20%",
        "5.0s  detach 'loss-ramp'",
        cg_path.as_str(),
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("run.start"), "{out}");
    assert_eq!(
        attached_programs(&lab.cgroup.path),
        0,
        "a dry run attached something"
    );
    no_residue(&lab);
}

#[test]
fn packet_loss_ramp_scenario_against_the_lab() {
    if !root_or_skip("packet_loss_ramp_scenario_against_the_lab") {
        return;
    }
    let lab = Lab::create(&tag("r")).unwrap();
    let svc = Service::start(&lab, 7100, false);
    let report = TempFile::new("ramp.json");
    let junit = TempFile::new("ramp.xml");
    let html = TempFile::new("ramp.html");
    let path = scenario("packet-loss-ramp.yaml");
    let v = vars(&lab, svc.addr);
    let mut args = vec![
        "run",
        path.to_str().unwrap(),
        "--report",
        report.s(),
        "--junit",
        junit.s(),
    ];
    args.extend(v.iter().map(String::as_str));
    let started = Instant::now();
    let (code, out, err) = run(&args);
    let wall = started.elapsed();
    println!("{out}");
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    let r = read_report(&report.0);
    let s = &r["summary"];
    assert_eq!(s["completed"], true);
    assert_eq!(s["steady_state_held"], true, "{s}");

    // The ramp stepped 0 -> 10 -> 20 -> 30 %, a second apart by the clock.
    let fault = &r["faults"][0];
    let steps = fault["ramp_steps"].as_array().unwrap();
    let values: Vec<f64> = steps.iter().map(|x| x["value"].as_f64().unwrap()).collect();
    assert_eq!(values, [0.0, 10.0, 20.0, 30.0], "{steps:?}");
    // Under emulation (the VM suite) attaching alone can take half a second, which delays the first
    // step; the tolerance there is wider, the host's stays tight.
    let tolerance = if integration_tests::in_vm() {
        600.0
    } else {
        150.0
    };
    for w in steps.windows(2) {
        let gap = w[1]["t_ms"].as_f64().unwrap() - w[0]["t_ms"].as_f64().unwrap();
        assert!(
            (gap - 1000.0).abs() < tolerance,
            "a step {gap:.0} ms after the last: {steps:?}"
        );
    }
    let armed_for = fault["end_ms"].as_f64().unwrap() - fault["start_ms"].as_f64().unwrap();
    assert!(
        (armed_for - 4000.0).abs() < tolerance.max(200.0),
        "armed {armed_for:.0} ms instead of 4 s"
    );

    // The kernel dropped packets of the probe's connects, and the probe saw it; never outside the fault.
    let dropped = fault["counters"]["egress.dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{fault}");
    assert_eq!(fault["injected_events"].as_u64().unwrap(), dropped);
    assert_eq!(s["injected_events"].as_u64().unwrap(), dropped);
    let res = results(&r, "dependency-connect");
    assert_eq!(count(&res, "before", false), 0, "failures before injection");
    assert!(count(&res, "before", true) >= 5, "{}", res.len());
    assert!(
        count(&res, "during", false) > 0,
        "no connect failed during 30% loss"
    );
    assert_eq!(count(&res, "after", false), 0, "failures after the fault");
    assert!(count(&res, "after", true) >= 10);
    // Each failed attempt during the fault is a connect whose SYN the kernel dropped.
    assert!(
        dropped >= count(&res, "during", false) as u64,
        "dropped {dropped}"
    );
    let avail = s["availability_during_faults_pct"].as_f64().unwrap();
    assert!((40.0..100.0).contains(&avail), "availability {avail}");
    let mttr = s["recovery"][0]["mttr_ms"].as_f64().unwrap();
    assert!(mttr < 500.0, "took {mttr} ms to recover");
    assert!(svc.accepted.load(Ordering::Relaxed) as usize >= count(&res, "after", true));
    assert!(wall < Duration::from_secs(12), "{wall:?}");
    // Every event is timestamped and in order.
    let ts: Vec<f64> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["t_ms"].as_f64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");

    // JUnit: each hypothesis and each probe phase is a test case, all passing.
    let xml = std::fs::read_to_string(&junit.0).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 6, "{xml}");
    assert!(
        xml.contains("name=\"steady state before\"")
            && xml.contains("name=\"dependency-connect during\"")
    );
    assert!(
        xml.contains("failures=\"0\"") && !xml.contains("<failure"),
        "{xml}"
    );

    // `kchaos report` prints the summary again, and writes the HTML page.
    let (code, again, _) = run(&["report", report.s()]);
    assert_eq!(code, 0);
    assert!(
        again.contains("steady state: held")
            && again.contains(&format!("injected events (kernel): {dropped}")),
        "{again}"
    );
    let (code, _, err) = run(&["report", "--html", report.s(), "--out", html.s()]);
    assert_eq!(code, 0, "{err}");
    let page = std::fs::read_to_string(&html.0).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.contains("<svg") && page.contains("loss-ramp")
    );
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "not self-contained"
    );
    drop(svc);
    no_residue(&lab);
}

#[test]
fn partition_aborts_on_the_failing_probe_and_detaches_within_100ms() {
    if !root_or_skip("partition_aborts_on_the_failing_probe_and_detaches_within_100ms") {
        return;
    }
    let lab = Lab::create(&tag("p")).unwrap();
    let svc = Service::start(&lab, 7200, false);
    let report = TempFile::new("partition.json");
    let path = scenario("dependency-partition.yaml");
    let v = vars(&lab, svc.addr);
    let mut args = vec!["run", path.to_str().unwrap(), "--report", report.s()];
    args.extend(v.iter().map(String::as_str));
    let started = Instant::now();
    let mut live = LiveRun::start(&args);
    live.wait_for("fault.armed", Duration::from_secs(10));
    // While the partition holds, a connect from the target cgroup fails.
    let cut = traffic(
        Some(&lab.cgroup.path),
        None,
        &[
            "tcp-connect",
            "--to",
            &svc.addr.to_string(),
            "--timeout",
            "300ms",
        ],
    );
    assert_eq!(cut["connected"], false, "{cut}");
    live.wait_for("abort.detached", Duration::from_secs(5));
    // kchaos is still running (the after phase); the target reaches its dependency again.
    let back = traffic(
        Some(&lab.cgroup.path),
        None,
        &[
            "tcp-connect",
            "--to",
            &svc.addr.to_string(),
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(back["connected"], true, "after the abort: {back}");
    let (code, lines, err) = live.finish();
    println!("{}", lines.join("\n"));
    assert_eq!(code, 1, "an aborted experiment exits 1: {err}");
    assert!(err.contains("did not complete"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the abort did not cut the 10 s fault short"
    );

    let r = read_report(&report.0);
    let s = &r["summary"];
    assert_eq!(s["completed"], false);
    let why = s["abort_reason"].as_str().unwrap();
    assert!(
        why.contains("probe 'dependency-connect' violated its tolerance"),
        "{why}"
    );
    let detached = s["abort_to_detached_ms"].as_f64().unwrap();
    assert!(detached < 100.0, "abort to detached took {detached} ms");
    // The abort came from the probe within moments of the partition, not at the planned end.
    let fault = &r["faults"][0];
    let armed_for = fault["end_ms"].as_f64().unwrap() - fault["start_ms"].as_f64().unwrap();
    assert!(armed_for < 1500.0, "armed for {armed_for} ms");
    assert!(
        fault["counters"]["egress.partitioned"].as_u64().unwrap() > 0,
        "{fault}"
    );
    let events: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let pos = |k: &str| {
        events
            .iter()
            .position(|e| *e == k)
            .unwrap_or_else(|| panic!("no {k} in {events:?}"))
    };
    assert!(
        pos("probe.violated") < pos("abort")
            && pos("abort") < pos("fault.detached")
            && pos("fault.detached") < pos("phase.after")
    );
    assert!(pos("rollback.start") > pos("phase.after"), "{events:?}");
    assert_eq!(r["rollbacks"][0]["exit_code"], 0);
    assert_eq!(
        r["rollbacks"][0]["output"].as_str().unwrap().trim(),
        "partition rolled back"
    );
    // Packets flow again: the probe's own connects after the abort all succeed.
    let res = results(&r, "dependency-connect");
    assert!(count(&res, "during", false) >= 1);
    assert!(
        count(&res, "after", true) >= 10 && count(&res, "after", false) == 0,
        "{res:?}"
    );
    assert_eq!(s["steady_state_held"], true, "the steady state came back");
    drop(svc);
    no_residue(&lab);
}

#[test]
fn the_budget_stops_injection() {
    if !root_or_skip("the_budget_stops_injection") {
        return;
    }
    let lab = Lab::create(&tag("b")).unwrap();
    let echo =
        lab::EchoServer::start(&lab.netns, SocketAddr::from((lab.server_addr, 7300))).unwrap();
    // No check before (the budget is the subject), a probe so the review passes.
    let text = "title: budget\ntargets: [{cgroup: \"${cgroup}\"}]\n\
steady_state: {before: 0s, after: 1s, probes: [{name: alive, command: \"true\", interval: 200ms}]}\n\
faults: [{name: blackhole, for: 10s, net: {drop: 100%, proto: udp}}]\n\
abort: [{probe: alive}]\n\
budget: {max_duration: 15s, max_injected_events: 300}\n";
    let file = TempFile::with("budget.yaml", text);
    let report = TempFile::new("budget.json");
    let cg = format!("cgroup={}", lab.cgroup.path.display());
    let mut live = LiveRun::start(&["run", file.s(), "--var", &cg, "--report", report.s()]);
    live.wait_for("fault.armed", Duration::from_secs(10));
    let started = Instant::now();
    // 4000 datagrams over 2 s from the target: every one dropped until the budget is spent.
    let v = traffic(
        Some(&lab.cgroup.path),
        None,
        &[
            "udp-echo",
            "--to",
            &echo.addr.to_string(),
            "--count",
            "4000",
            "--rate",
            "2000",
        ],
    );
    live.wait_for("budget.exceeded", Duration::from_secs(1));
    let (sent, received) = (v["sent"].as_u64().unwrap(), v["received"].as_u64().unwrap());
    let (code, lines, _) = live.finish();
    println!(
        "{}\nclient: sent {sent} received {received}",
        lines.join("\n")
    );
    assert_eq!(code, 1);
    let r = read_report(&report.0);
    let s = &r["summary"];
    assert!(
        s["abort_reason"]
            .as_str()
            .unwrap()
            .contains("max_injected_events 300"),
        "{s}"
    );
    let dropped = r["faults"][0]["counters"]["egress.dropped"]
        .as_u64()
        .unwrap();
    // Stopped at the budget: a tick or two of traffic past it (2000/s: 100 per 50 ms tick), no more.
    assert!((300..=600).contains(&dropped), "dropped {dropped}");
    // The kernel's count is what the client lost; the rest arrived once injection stopped. Under
    // emulation a datagram or two can be lost without any fault (a late receiver): allow 0.25 %.
    let unexplained = (sent - received).abs_diff(dropped);
    let allowed = if integration_tests::in_vm() {
        sent / 400
    } else {
        0
    };
    assert!(
        unexplained <= allowed,
        "sent {sent} received {received}, kernel dropped {dropped}"
    );
    assert!(received >= 3000, "traffic did not flow again: {received}");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(s["abort_to_detached_ms"].as_f64().unwrap() < 100.0);
    no_residue(&lab);
}

#[test]
fn monkey_injects_bounded_random_faults_with_probes() {
    if !root_or_skip("monkey_injects_bounded_random_faults_with_probes") {
        return;
    }
    let lab = Lab::create(&tag("m")).unwrap();
    let svc = Service::start(&lab, 7400, true);
    let report = TempFile::new("monkey.json");
    let cg = lab.cgroup.path.display().to_string();
    let url = format!("http://{}/health", svc.addr);
    let (code, out, err) = run(&[
        "monkey",
        "--cgroup",
        &cg,
        "--duration",
        "3s",
        "--probability",
        "1",
        "--types",
        "net-drop",
        "--max-drop",
        "20",
        "--max-fault",
        "1s",
        "--probe",
        &url,
        "--from-target",
        "--probe-interval",
        "100ms",
        "--abort-after",
        "3s",
        "--seed",
        "42",
        "--report",
        report.s(),
        "--quiet",
    ]);
    println!("{out}");
    assert!(out.contains("seed 42"), "{out} {err}");
    assert!(code == 0 || code == 1, "{out} {err}");
    let r = read_report(&report.0);
    let faults = r["faults"].as_array().unwrap();
    assert_eq!(
        faults.len(),
        3,
        "probability 1, 1 s faults over 3 s: {faults:?}"
    );
    for f in faults {
        let drop: f64 = f["description"]
            .as_str()
            .unwrap()
            .split("drop ")
            .nth(1)
            .unwrap()
            .split('%')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1.0..=20.0).contains(&drop), "{f}");
        assert!(f["start_ms"].as_f64().is_some() && f["end_ms"].as_f64().is_some());
    }
    let res = results(&r, "probe-1");
    assert!(
        count(&res, "before", true) >= 5 && count(&res, "before", false) == 0,
        "{res:?}"
    );
    assert!(res.iter().any(|x| x["detail"] == "HTTP 200"));
    assert!(svc.accepted.load(Ordering::Relaxed) >= 30);
    drop(svc);
    no_residue(&lab);
}

#[test]
fn sigterm_ends_the_run_detaches_and_reports_why() {
    if !root_or_skip("sigterm_ends_the_run_detaches_and_reports_why") {
        return;
    }
    let lab = Lab::create(&tag("s")).unwrap();
    let svc = Service::start(&lab, 7500, false);
    let report = TempFile::new("term.json");
    let path = scenario("packet-loss-ramp.yaml");
    let v = vars(&lab, svc.addr);
    let mut args = vec!["run", path.to_str().unwrap(), "--report", report.s()];
    args.extend(v.iter().map(String::as_str));
    let mut live = LiveRun::start(&args);
    live.wait_for("fault.armed", Duration::from_secs(10));
    // What `kchaos stop` sends.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(live.child.id() as i32, libc::SIGTERM) };
    let (code, lines, _) = live.finish();
    assert_eq!(code, 1, "{lines:?}");
    let r = read_report(&report.0);
    assert_eq!(r["summary"]["end_reason"], "terminated (SIGTERM)");
    assert!(r["summary"]["abort_to_detached_ms"].as_f64().unwrap() < 100.0);
    assert!(r["faults"][0]["end_ms"].as_f64().is_some());
    assert!(
        r["phases"]["after"].is_null(),
        "a signal skips the after phase"
    );
    drop(svc);
    no_residue(&lab);
}

#[test]
fn game_day_overlapping_faults_on_two_services() {
    if !root_or_skip("game_day_overlapping_faults_on_two_services") {
        return;
    }
    let lab = Lab::create(&tag("g")).unwrap();
    let api = lab.cgroup.child("api").unwrap();
    let worker = lab.cgroup.child("worker").unwrap();
    let web = Service::start(&lab, 8080, true);
    let db = Service::start(&lab, 5432, false);
    let report = TempFile::new("gameday.json");
    let junit = TempFile::new("gameday.xml");
    let path = scenario("game-day.yaml");
    let vars = [
        format!("api={}", api.display()),
        format!("worker={}", worker.display()),
        format!("http=http://{}/health", web.addr),
        format!("db={}", db.addr),
    ];
    let mut args = vec![
        "run",
        path.to_str().unwrap(),
        "--report",
        report.s(),
        "--junit",
        junit.s(),
    ];
    for v in &vars {
        args.extend(["--var", v.as_str()]);
    }
    let (code, out, err) = run(&args);
    println!("{out}");
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    // Two sibling cgroups are two trees: a medium finding, not a refusal.
    assert!(out.contains("[medium] several-trees"), "{out}");
    let r = read_report(&report.0);
    assert_eq!(r["summary"]["completed"], true);
    assert_eq!(r["summary"]["steady_state_held"], true);
    let (loss, part) = (&r["faults"][0], &r["faults"][1]);
    let ms = |f: &Value, k: &str| f[k].as_f64().unwrap();
    // They overlapped in time, each on its own cgroup.
    assert!(ms(part, "start_ms") < ms(loss, "end_ms"), "{loss} {part}");
    assert!((ms(part, "start_ms") - ms(loss, "start_ms") - 2000.0).abs() < 200.0);
    assert!(
        loss["attached"][0]
            .as_str()
            .unwrap()
            .ends_with(&format!("{} (link, fd-owned)", api.display()))
    );
    assert!(
        part["attached"][0]
            .as_str()
            .unwrap()
            .contains(&worker.display().to_string())
    );
    assert!(
        part["counters"]["egress.partitioned"].as_u64().unwrap() > 0,
        "{part}"
    );
    // The worker's connects failed exactly while its partition held, and came back after it.
    let res = results(&r, "worker-db");
    let (a, b) = (ms(part, "start_ms"), ms(part, "end_ms"));
    let failed: Vec<f64> = res
        .iter()
        .filter(|x| x["ok"] == false)
        .map(|x| x["t_ms"].as_f64().unwrap())
        .collect();
    assert!(!failed.is_empty());
    assert!(
        failed.iter().all(|t| *t >= a - 1.0 && *t < b),
        "failures outside the partition {a}..{b}: {failed:?}"
    );
    let ok_inside = res
        .iter()
        .filter(|x| x["ok"] == true)
        .map(|x| x["t_ms"].as_f64().unwrap())
        .filter(|t| *t > a + 5.0 && *t + 200.0 < b)
        .count();
    assert_eq!(
        ok_inside, 0,
        "the worker reached the database through the partition"
    );
    let mttr = r["summary"]["recovery"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["fault"] == "worker-partition")
        .unwrap()["mttr_ms"]
        .as_f64()
        .unwrap();
    assert!(mttr < 1000.0, "{mttr}");
    // The api's health checks were hit by the loss, never by the worker's partition.
    let api_res = results(&r, "api-health");
    assert_eq!(
        count(&api_res, "before", false) + count(&api_res, "after", false),
        0
    );
    assert!(api_res.iter().any(|x| x["detail"] == "HTTP 200"));
    assert!(web.accepted.load(Ordering::Relaxed) >= 40);
    let xml = std::fs::read_to_string(&junit.0).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 9, "{xml}");
    drop((web, db));
    no_residue(&lab);
}

#[test]
fn nothing_is_injected_when_the_steady_state_does_not_hold_before() {
    if !root_or_skip("nothing_is_injected_when_the_steady_state_does_not_hold_before") {
        return;
    }
    let lab = Lab::create(&tag("n")).unwrap();
    // Nothing listens on this port: the probe fails from the start.
    let server = SocketAddr::from((lab.server_addr, 7600));
    let report = TempFile::new("before.json");
    let path = scenario("dependency-partition.yaml");
    let v = vars(&lab, server);
    let mut args = vec!["run", path.to_str().unwrap(), "--report", report.s()];
    args.extend(v.iter().map(String::as_str));
    let started = Instant::now();
    let (code, out, _) = run(&args);
    assert_eq!(code, 1, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "it went on after the failed check"
    );
    let r = read_report(&report.0);
    let why = r["summary"]["abort_reason"].as_str().unwrap();
    assert!(
        why.contains("did not hold before injection, so nothing was injected"),
        "{why}"
    );
    assert!(why.contains("dependency-connect"), "{why}");
    assert!(r["faults"][0]["start_ms"].is_null(), "a fault was armed");
    assert_eq!(r["summary"]["injected_events"], 0);
    assert!(r["phases"]["during"].is_null() && r["rollbacks"].as_array().unwrap().is_empty());
    let res = results(&r, "dependency-connect");
    assert!(count(&res, "before", false) >= 5, "{res:?}");
    no_residue(&lab);
}

/// The count of one errno in a `kchaos traffic ... syscalls` result.
fn errno_count(v: &Value, errno: i32) -> u64 {
    v["errnos"][errno.to_string()].as_u64().unwrap_or(0)
}

/// Probe results whose error is ECONNREFUSED (a connect the kernel refused).
fn refused(results: &[&Value]) -> usize {
    results
        .iter()
        .filter(|r| r["ok"] == false && r["detail"].as_str().unwrap_or("").contains("os error 111"))
        .count()
}

/// The cgroup's CPU time (cpu.stat usage_usec: itself and everything below it), in ms.
fn cgroup_cpu_ms(cg: &Path) -> f64 {
    let text = std::fs::read_to_string(cg.join("cpu.stat")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .unwrap()
        .trim()
        .parse::<f64>()
        .unwrap()
        / 1e3
}

/// The integral of a ramp over the fault's life (value held from each step to the next, then to the
/// fault's end), in value-seconds: what a load that follows the ramp adds up to.
fn ramp_integral(fault: &Value) -> f64 {
    let steps = fault["ramp_steps"].as_array().unwrap();
    let end = fault["end_ms"].as_f64().unwrap();
    steps
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let from = st["t_ms"].as_f64().unwrap();
            let to = steps
                .get(i + 1)
                .map_or(end, |n| n["t_ms"].as_f64().unwrap());
            st["value"].as_f64().unwrap() * (to - from) / 1e3
        })
        .sum()
}

/// Every process directly in `cg` or one level below, by name (comm).
fn procs_named(cg: &Path, comm: &str) -> Vec<u32> {
    let dirs = std::iter::once(cg.to_path_buf()).chain(
        std::fs::read_dir(cg)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path()),
    );
    dirs.flat_map(|d| {
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .collect::<Vec<_>>()
    })
    .filter(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    })
    .collect()
}

fn vm_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[test]
fn connect_errors_scenario_matches_the_errnos_real_processes_saw() {
    if !root_or_skip("connect_errors_scenario_matches_the_errnos_real_processes_saw") {
        return;
    }
    let lab = Lab::create(&tag("c")).unwrap();
    let svc = Service::start(&lab, 7300, false);
    let report = TempFile::new("connect.json");
    let path = scenario("connect-errors.yaml");
    let v = vars(&lab, svc.addr);
    let mut args = vec!["run", path.to_str().unwrap(), "--report", report.s()];
    args.extend(v.iter().map(String::as_str));
    let mut live = LiveRun::start(&args);
    // Once the ramp is at its top, a real process in the app's cgroup makes 20000 connect() calls.
    live.wait_for("percent = 30%", Duration::from_secs(8));
    let seen = traffic(
        Some(&lab.cgroup.path),
        None,
        &["syscalls", "--op", "connect", "--count", "20000"],
    );
    let (code, lines, err) = live.finish();
    println!("{}", lines.join("\n"));
    assert_eq!(code, 0, "stdout {lines:#?}\nstderr {err}");
    let refused_seen = errno_count(&seen, libc::ECONNREFUSED);
    let calls = seen["calls"].as_u64().unwrap();
    assert_eq!(
        calls - seen["ok"].as_u64().unwrap(),
        refused_seen,
        "an errno other than ECONNREFUSED: {seen}"
    );
    let rate = 100.0 * refused_seen as f64 / calls as f64;
    assert!((rate - 30.0).abs() <= 2.5, "rate {rate:.2}% at 30%");

    let r = read_report(&report.0);
    assert_eq!(r["summary"]["completed"], true);
    assert_eq!(r["summary"]["steady_state_held"], true, "{}", r["summary"]);
    let fault = &r["faults"][0];
    assert_eq!(fault["kind"], "syscall");
    let values: Vec<f64> = fault["ramp_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [10.0, 20.0, 30.0]);
    // The kernel's count is exactly what real processes saw: the traffic's errnos plus the probe's
    // refused connects.
    let res = results(&r, "dependency-connect");
    let probe_refused = refused(&res);
    let injected = fault["counters"]["connect.injected"].as_u64().unwrap();
    println!(
        "kernel injected {injected}; traffic saw {refused_seen}/{calls} ECONNREFUSED ({rate:.2}%), \
         the probe {probe_refused}"
    );
    assert_eq!(injected, refused_seen + probe_refused as u64, "{fault}");
    assert_eq!(fault["injected_events"].as_u64().unwrap(), injected);
    assert_eq!(r["summary"]["injected_events"].as_u64().unwrap(), injected);
    assert!(probe_refused > 0, "the probe never saw the fault");
    assert_eq!(
        count(&res, "before", false) + count(&res, "after", false),
        0
    );
    drop(svc);
    assert!(cgroup_programs(&lab.cgroup.path, attach_type::INET4_CONNECT).is_empty());
    no_residue(&lab);
}

#[test]
fn cpu_memory_pressure_scenario_loads_the_cgroup_as_the_kernel_counts_it() {
    if !root_or_skip("cpu_memory_pressure_scenario_loads_the_cgroup_as_the_kernel_counts_it") {
        return;
    }
    let lab = Lab::create(&tag("p")).unwrap();
    let svc = Service::start(&lab, 7400, false);
    let report = TempFile::new("pressure.json");
    let path = scenario("cpu-memory-pressure.yaml");
    let v = vars(&lab, svc.addr);
    let mut args = vec!["run", path.to_str().unwrap(), "--report", report.s()];
    args.extend(v.iter().map(String::as_str));
    let cpu_before = cgroup_cpu_ms(&lab.cgroup.path);
    let mut live = LiveRun::start(&args);
    live.wait_for("fault.armed", Duration::from_secs(6));
    // While it runs: the workers are in the app's cgroup, and the memory one holds the memory.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu_workers = procs_named(&lab.cgroup.path, "kchaos-cpu");
    let mem_workers = procs_named(&lab.cgroup.path, "kchaos-memory");
    let rss = mem_workers.first().map_or(0, |p| vm_rss_bytes(*p));
    let (code, lines, err) = live.finish();
    let cpu_after = cgroup_cpu_ms(&lab.cgroup.path);
    println!("{}", lines.join("\n"));
    assert_eq!(code, 0, "stdout {lines:#?}\nstderr {err}");
    assert_eq!(cpu_workers.len(), 2, "CPU workers in the cgroup");
    assert_eq!(mem_workers.len(), 1, "memory worker in the cgroup");
    assert!(rss >= 60 << 20, "the memory worker held {rss} B of 64 MiB");
    // The lab cgroup has no memory.max: the review says so, without refusing.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[medium] stress-memory-unlimited")),
        "{lines:#?}"
    );

    let r = read_report(&report.0);
    assert_eq!(r["summary"]["completed"], true);
    assert_eq!(r["summary"]["steady_state_held"], true, "{}", r["summary"]);
    let fault = &r["faults"][0];
    assert_eq!(fault["kind"], "stress");
    let c = &fault["counters"];
    let values: Vec<f64> = fault["ramp_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [20.0, 40.0, 60.0]);
    // The workers' CPU time follows the ramp: 2 workers x the ramp's integral, within 15%.
    let cpu_ms = c["cpu.cpu_ms"].as_f64().unwrap();
    let expected_ms = 2.0 * ramp_integral(fault) / 100.0 * 1e3;
    println!(
        "workers' CPU {cpu_ms:.0} ms (expected {expected_ms:.0}); the cgroup's cpu.stat grew by {:.0} ms",
        cpu_after - cpu_before
    );
    assert!(
        (cpu_ms - expected_ms).abs() <= 0.15 * expected_ms,
        "CPU {cpu_ms:.0} ms, expected {expected_ms:.0}"
    );
    // The cgroup's own accounting counted it: the workers' time, plus a little for the probe agent.
    let grew = cpu_after - cpu_before;
    assert!(
        grew >= cpu_ms - 50.0 && grew <= cpu_ms * 1.1 + 300.0,
        "cgroup {grew:.0} ms vs workers {cpu_ms:.0} ms"
    );
    let held = c["memory.held_bytes"].as_u64().unwrap();
    assert!(held >= 60 << 20, "held {held}");
    assert_eq!(r["summary"]["injected_events"], 0);
    drop(svc);
    assert!(
        procs_named(&lab.cgroup.path, "kchaos-cpu").is_empty()
            && procs_named(&lab.cgroup.path, "kchaos-memory").is_empty(),
        "workers outlived the run"
    );
    no_residue(&lab);
}

#[test]
fn disk_errors_scenario_fails_open_read_write_with_eio() {
    const NAME: &str = "disk_errors_scenario_fails_open_read_write_with_eio";
    if !root_or_skip(NAME) {
        return;
    }
    let lab = Lab::create(&tag("d")).unwrap();
    let dir = std::env::temp_dir().join(format!("kchaos-test-{}", tag("dd")));
    std::fs::create_dir_all(&dir).unwrap();
    struct RmDir(PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = RmDir(dir.clone());
    let report = TempFile::new("disk.json");
    let path = scenario("disk-errors.yaml");
    let cg = format!("cgroup={}", lab.cgroup.path.display());
    let d = format!("dir={}", dir.display());
    let args = [
        "run",
        path.to_str().unwrap(),
        "--report",
        report.s(),
        "--var",
        &cg,
        "--var",
        &d,
    ];
    if let Err(why) = chaos_userspace::faults::syscall::BackendSupport::probe().lsm {
        // Here `run` must refuse before attaching anything, and say why.
        let (code, out, err) = run(&args);
        assert_ne!(code, 0, "{out}");
        assert!(err.contains("open-eio") && err.contains("lsm"), "{err}");
        no_residue(&lab);
        skip(
            NAME,
            &format!(
                "no BPF LSM here ({why}); `kchaos run` refused with: {}",
                err.trim()
            ),
        );
        return;
    }
    let mut live = LiveRun::start(&args);
    live.wait_for("fault.armed        'open-eio'", Duration::from_secs(6));
    let d_s = dir.display().to_string();
    let opens = traffic(
        Some(&lab.cgroup.path),
        None,
        &["syscalls", "--op", "open", "--count", "100", "--dir", &d_s],
    );
    let outside = traffic(
        None,
        None,
        &["syscalls", "--op", "open", "--count", "100", "--dir", &d_s],
    );
    live.wait_for(
        "fault.armed        'read-write-eio'",
        Duration::from_secs(6),
    );
    let writes = traffic(
        Some(&lab.cgroup.path),
        None,
        &["syscalls", "--op", "write", "--count", "300", "--dir", &d_s],
    );
    let (code, lines, err) = live.finish();
    println!("{}", lines.join("\n"));
    assert_eq!(code, 0, "stdout {lines:#?}\nstderr {err}");
    assert_eq!(errno_count(&opens, libc::EIO), 100, "{opens}");
    assert_eq!(
        errno_count(&outside, libc::EIO),
        0,
        "outside the cgroup: {outside}"
    );
    let r = read_report(&report.0);
    assert_eq!(r["summary"]["steady_state_held"], true, "{}", r["summary"]);
    let (open_f, rw_f) = (&r["faults"][0], &r["faults"][1]);
    assert_eq!(open_f["counters"]["open.injected"], 100, "{open_f}");
    // At most 200 reads and writes failed, and the traffic's writes were among them.
    let rw = rw_f["injected_events"].as_u64().unwrap();
    let seen = errno_count(&writes, libc::EIO);
    assert!(
        rw <= 200 && seen > 0 && seen <= rw,
        "{rw} injected, {seen} seen: {writes}"
    );
    assert_eq!(
        count(&results(&r, "dir-readable-outside"), "during", false),
        0
    );
    no_residue(&lab);
}

#[test]
fn mixed_game_day_net_syscall_and_stress_on_two_services() {
    if !root_or_skip("mixed_game_day_net_syscall_and_stress_on_two_services") {
        return;
    }
    let lab = Lab::create(&tag("m")).unwrap();
    let api = lab.cgroup.child("api").unwrap();
    let worker = lab.cgroup.child("worker").unwrap();
    let web = Service::start(&lab, 8081, true);
    let db = Service::start(&lab, 5433, false);
    let report = TempFile::new("mixed.json");
    let path = scenario("game-day-mixed.yaml");
    let vars = [
        format!("api={}", api.display()),
        format!("worker={}", worker.display()),
        format!("http=http://{}/health", web.addr),
        format!("db={}", db.addr),
    ];
    let mut args = vec!["run", path.to_str().unwrap(), "--report", report.s()];
    for v in &vars {
        args.extend(["--var", v.as_str()]);
    }
    let (code, out, err) = run(&args);
    println!("{out}");
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    let r = read_report(&report.0);
    assert_eq!(r["summary"]["completed"], true);
    assert_eq!(r["summary"]["steady_state_held"], true, "{}", r["summary"]);
    let f = |name: &str| {
        r["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()
            .clone()
    };
    let (loss, cpu, refused_f) = (f("api-loss"), f("api-cpu"), f("worker-refused"));
    assert_eq!(
        [&loss["kind"], &cpu["kind"], &refused_f["kind"]],
        ["net", "stress", "syscall"]
    );
    assert!(
        loss["counters"]["egress.dropped"].as_u64().unwrap() > 0,
        "{loss}"
    );
    // The worker's only connects to the database are its probe's: each one the kernel refused is a
    // probe result that says so, all within the fault's window.
    let res = results(&r, "worker-db");
    let injected = refused_f["counters"]["connect.injected"].as_u64().unwrap();
    assert_eq!(injected, refused(&res) as u64, "{refused_f}");
    assert!(injected > 0);
    let (a, b) = (
        refused_f["start_ms"].as_f64().unwrap(),
        refused_f["end_ms"].as_f64().unwrap(),
    );
    assert!(
        res.iter()
            .filter(|x| x["ok"] == false)
            .all(|x| (a - 1.0..b).contains(&x["t_ms"].as_f64().unwrap())),
        "failures outside {a}..{b}"
    );
    // The api's CPU worker ran at its 50% of a CPU over the fault's 4 s, within 15%.
    let cpu_ms = cpu["counters"]["cpu.cpu_ms"].as_f64().unwrap();
    let life = cpu["end_ms"].as_f64().unwrap() - cpu["start_ms"].as_f64().unwrap();
    assert!(
        (cpu_ms - 0.5 * life).abs() <= 0.15 * 0.5 * life,
        "{cpu_ms} ms of CPU in {life} ms at 50%"
    );
    assert_eq!(
        r["summary"]["injected_events"].as_u64().unwrap(),
        loss["injected_events"].as_u64().unwrap() + injected
    );
    drop((web, db));
    assert!(cgroup_programs(&worker, attach_type::INET4_CONNECT).is_empty());
    no_residue(&lab);
}

/// What the counter wrote last (empty when read mid-write).
fn counter(file: &TempFile) -> String {
    std::fs::read_to_string(&file.0)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn counter_value(file: &TempFile) -> u64 {
    // A read can land between the truncate and the write: read again.
    for _ in 0..100 {
        if let Ok(v) = counter(file).parse() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("the counter file never held a number");
}

/// Waits up to `within` for the child to end; its signal, if it was killed by one.
fn ended_by_signal(child: &mut Child, within: Duration) -> Option<Option<i32>> {
    use std::os::unix::process::ExitStatusExt as _;
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.signal());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn pause_and_kill_scenario_freezes_a_counter_then_kills_inside_only() {
    const NAME: &str = "pause_and_kill_scenario_freezes_a_counter_then_kills_inside_only";
    if !root_or_skip(NAME) {
        return;
    }
    let lab = Lab::create(&tag("k")).unwrap();
    if !lab.cgroup.path.join("cgroup.freeze").exists() {
        skip(
            NAME,
            "no cgroup v2 freezer (cgroup.freeze needs Linux 5.2+)",
        );
        return;
    }
    let svc = Service::start(&lab, 7500, false);
    let file = TempFile::new("counter");
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo $i > '{}'; done",
        file.s()
    );
    let mut counter_proc = spawn_in(&lab.cgroup.path, &["sh", "-c", &script]);
    let mut inside = spawn_in(&lab.cgroup.path, &["sleep", "100"]);
    let mut outside = Command::new("sleep").arg("100").spawn().unwrap();
    let start = Instant::now();
    while counter_value(&file) < 100 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }

    let report = TempFile::new("pause-kill.json");
    let path = scenario("pause-and-kill.yaml");
    let v = vars(&lab, svc.addr);
    let mut args = vec!["run", path.to_str().unwrap(), "--report", report.s()];
    args.extend(v.iter().map(String::as_str));
    let mut live = LiveRun::start(&args);
    live.wait_for("'freeze' pause:", Duration::from_secs(6));
    // During the pause: the counter does not move, and the kernel says the cgroup is frozen.
    std::thread::sleep(Duration::from_millis(300));
    let frozen_a = counter(&file);
    let events = std::fs::read_to_string(lab.cgroup.path.join("cgroup.events")).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let frozen_b = counter(&file);
    assert_eq!(frozen_a, frozen_b, "the counter moved while frozen");
    assert!(events.contains("frozen 1"), "{events}");
    assert!(
        ended_by_signal(&mut inside, Duration::ZERO).is_none(),
        "the sleep ended during the pause"
    );

    // After the thaw: it counts again.
    live.wait_for("'freeze' (end of its time)", Duration::from_secs(3));
    let after_a = counter_value(&file);
    std::thread::sleep(Duration::from_millis(200));
    let after_b = counter_value(&file);
    assert!(
        after_b > after_a,
        "the counter did not resume: {after_a} then {after_b}"
    );
    if let Ok(a) = frozen_a.parse::<u64>() {
        assert!(after_b > a, "{a} frozen, {after_b} after");
    }
    let armed_at = Instant::now();
    assert!(
        ended_by_signal(&mut inside, Duration::ZERO).is_none(),
        "the sleep ended before the kill event"
    );

    // The kill event, a second after the thaw: the processes inside die of SIGKILL, the one outside
    // lives on.
    let kill_line = live.wait_for("'crash' kill:", Duration::from_secs(3));
    let since_thaw = armed_at.elapsed();
    assert_eq!(
        ended_by_signal(&mut inside, Duration::from_secs(2)),
        Some(Some(libc::SIGKILL)),
        "the sleep inside was not killed"
    );
    assert_eq!(
        ended_by_signal(&mut counter_proc, Duration::from_secs(2)),
        Some(Some(libc::SIGKILL)),
        "the counter was not killed"
    );
    assert!(
        outside.try_wait().unwrap().is_none(),
        "the sleep outside the cgroup was killed"
    );
    let (code, lines, err) = live.finish();
    println!("{}", lines.join("\n"));
    assert_eq!(code, 0, "stdout {lines:#?}\nstderr {err}");
    assert!(kill_line.contains(&inside.id().to_string()), "{kill_line}");
    println!(
        "kill event {:.0} ms after the thaw was seen",
        since_thaw.as_secs_f64() * 1e3
    );

    let r = read_report(&report.0);
    assert_eq!(r["summary"]["completed"], true, "{}", r["summary"]);
    assert_eq!(r["summary"]["steady_state_held"], true, "{}", r["summary"]);
    let pause = &r["faults"][0];
    assert_eq!(pause["kind"], "pause");
    let c = &pause["counters"];
    println!(
        "pause counters {c}; kill counters {}",
        r["faults"][1]["counters"]
    );
    let frozen_ms = c["frozen_ms"].as_u64().unwrap();
    assert!(
        (1850..=2300).contains(&frozen_ms),
        "frozen for {frozen_ms} ms of a 2s pause"
    );
    assert_eq!(c["processes"], 2, "the counter and the sleep");
    assert_eq!(c["frozen"], 0, "thawed at the end");
    assert!(c["freeze_us"].as_u64().unwrap() < 200_000, "{c}");
    assert_eq!(pause["injected_events"], 2);
    let kill = &r["faults"][1];
    assert_eq!(kill["kind"], "kill");
    assert_eq!(kill["counters"]["signalled"], 2, "{}", kill["counters"]);
    assert_eq!(kill["counters"]["failed"], 0);
    assert_eq!(kill["injected_events"], 2);
    // At its time: 1s before + 3s into the timeline.
    let at = kill["start_ms"].as_f64().unwrap();
    assert!((3990.0..4300.0).contains(&at), "kill at {at} ms");
    let who = kill["attached"].to_string();
    for pid in [inside.id(), counter_proc.id()] {
        assert!(who.contains(&format!("signalled {pid} ")), "{who}");
    }
    assert!(!who.contains(&format!("{} ", outside.id())), "{who}");
    assert_eq!(r["summary"]["injected_events"], 4);

    let _ = outside.kill();
    let _ = outside.wait();
    drop(svc);
    let freeze = std::fs::read_to_string(lab.cgroup.path.join("cgroup.freeze")).unwrap();
    assert_eq!(freeze.trim(), "0", "the lab cgroup is still frozen");
    no_residue(&lab);
}
