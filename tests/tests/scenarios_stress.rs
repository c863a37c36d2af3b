//! A stress scenario: CPU and memory pressure on a ramp, as the kernel counts it for the target
//! cgroup.

use std::{path::Path, time::Duration};

use integration_tests::{
    RunDir, Service, TempFile, lab::Lab, no_residue, read_report, root_or_skip, scenario,
    scenario_vars, tag,
};
use serde_json::Value;

#[test]
fn cpu_memory_pressure_scenario_loads_the_cgroup_as_the_kernel_counts_it() {
    if !root_or_skip("cpu_memory_pressure_scenario_loads_the_cgroup_as_the_kernel_counts_it") {
        return;
    }
    let lab = Lab::create(&tag("p")).unwrap();
    let runs = RunDir::new();
    let svc = Service::start(&lab, 7400, false);
    let report = TempFile::new("pressure.json");
    let path = scenario("cpu-memory-pressure.yaml");
    let v = scenario_vars(&lab, svc.addr);
    let mut args = vec!["run", path.to_str().unwrap(), "--json", report.s()];
    args.extend(v.iter().map(String::as_str));
    let cpu_before = cgroup_cpu_ms(&lab.cgroup.path);
    let mut live = runs.spawn(&args);
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
    // The cgroup's own accounting counted it: every worker's time (the CPU workers', the memory
    // worker's, their start), plus a little for the probe agent.
    let grew = cpu_after - cpu_before;
    let workers_ms = c["workers.cpu_ms"].as_f64().unwrap();
    assert!(
        grew >= cpu_ms - 50.0 && grew <= workers_ms * 1.1 + 300.0,
        "cgroup {grew:.0} ms vs CPU workers {cpu_ms:.0} ms, all workers {workers_ms:.0} ms"
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
