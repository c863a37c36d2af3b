//! Syscall scenarios: the errnos real processes in the target cgroup saw, matched against the
//! kernel's counts (connect errors on a ramp; open, read and write failing with EIO where the kernel
//! has the BPF LSM).

use std::time::Duration;

use integration_tests::{
    RunDir, Service, TempDir, TempFile, attach_type, cgroup_programs, errno_count, lab::Lab,
    no_residue, probe_count, probe_results, read_report, refused_count, root_or_skip, scenario,
    scenario_vars, skip, tag, traffic,
};

#[test]
fn connect_errors_scenario_matches_the_errnos_real_processes_saw() {
    if !root_or_skip("connect_errors_scenario_matches_the_errnos_real_processes_saw") {
        return;
    }
    let lab = Lab::create(&tag("c")).unwrap();
    let runs = RunDir::new();
    let svc = Service::start(&lab, 7300, false);
    let report = TempFile::new("connect.json");
    let path = scenario("connect-errors.yaml");
    let v = scenario_vars(&lab, svc.addr);
    let mut args = vec!["run", path.to_str().unwrap(), "--json", report.s()];
    args.extend(v.iter().map(String::as_str));
    let mut live = runs.spawn(&args);
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
    // stderr is a pipe here, so the progress line is a plain line every 5 s. The first falls in the
    // fault's window (1 s to 7 s) after the 20000 calls began: it shows the fault armed and injecting.
    let first_progress = err
        .lines()
        .find(|l| l.contains("] during"))
        .unwrap_or_else(|| panic!("no progress line while the fault ran: {err}"));
    let per_second: u64 = first_progress
        .split("connect-refused: armed, ")
        .nth(1)
        .and_then(|rest| rest.split(" injected/s").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the fault is not armed in {first_progress:?}"));
    assert!(per_second > 0, "{first_progress}");
    assert!(
        first_progress.contains("left | ")
            && first_progress.contains("| probe dependency-connect: "),
        "{first_progress}"
    );
    let refused_seen = errno_count(&seen, libc::ECONNREFUSED);
    let calls = seen["calls"].as_u64().unwrap();
    assert_eq!(
        calls - seen["ok"].as_u64().unwrap(),
        refused_seen,
        "an errno other than ECONNREFUSED: {seen}"
    );
    let rate = 100.0 * refused_seen as f64 / calls as f64;
    // Every call falls in the ramp's top step (they start once it is at 30 % and take well under
    // its 4 s), each refused on its own draw: the count is binomial.
    integration_tests::stats::assert_binomial("connects refused", refused_seen, calls, 0.3);

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
    let res = probe_results(&r, "dependency-connect");
    let probe_refused = refused_count(&res);
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
        probe_count(&res, "before", false) + probe_count(&res, "after", false),
        0
    );
    drop(svc);
    assert!(cgroup_programs(&lab.cgroup.path, attach_type::INET4_CONNECT).is_empty());
    no_residue(&lab);
}

#[test]
fn disk_errors_scenario_fails_open_read_write_with_eio() {
    const NAME: &str = "disk_errors_scenario_fails_open_read_write_with_eio";
    if !root_or_skip(NAME) {
        return;
    }
    let lab = Lab::create(&tag("d")).unwrap();
    let runs = RunDir::new();
    let scratch = TempDir::new("dd");
    let dir = &scratch.0;
    let report = TempFile::new("disk.json");
    let path = scenario("disk-errors.yaml");
    let cg = format!("cgroup={}", lab.cgroup.path.display());
    let d = format!("dir={}", dir.display());
    let args = [
        "run",
        path.to_str().unwrap(),
        "--json",
        report.s(),
        "--var",
        &cg,
        "--var",
        &d,
    ];
    if let Err(why) = chaos_userspace::kinds::syscall::BackendSupport::probe().lsm {
        // Here `run` must refuse before attaching anything, and say why.
        let (code, out, err) = runs.run_text(&args);
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
    let mut live = runs.spawn(&args);
    // Both faults' LSM programs are loaded before the timeline starts: seconds under emulation.
    live.wait_for("fault.armed        'open-eio'", Duration::from_secs(20));
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
        probe_count(&probe_results(&r, "dir-readable-outside"), "during", false),
        0
    );
    no_residue(&lab);
}
