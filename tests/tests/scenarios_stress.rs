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
    let (waited_before, stolen_before) = (
        integration_tests::timing::pressure_ms(&lab.cgroup.path, "cpu"),
        integration_tests::timing::stolen_ms(),
    );
    let mut live = runs.spawn(&args);
    live.wait_for("fault.armed", Duration::from_secs(6));
    // A plain timer's lateness in the same seconds (see below).
    let timer = integration_tests::timing::TimerLateness::start(Duration::from_millis(2));
    // While it runs: the workers are in the app's cgroup, and the memory one holds the memory.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu_workers = procs_named(&lab.cgroup.path, "kchaos-cpu");
    let mem_workers = procs_named(&lab.cgroup.path, "kchaos-memory");
    let rss = mem_workers.first().map_or(0, |p| vm_rss_bytes(*p));
    let (code, lines, err) = live.finish();
    let late = timer.finish();
    let cpu_after = cgroup_cpu_ms(&lab.cgroup.path);
    let waited = integration_tests::timing::pressure_ms(&lab.cgroup.path, "cpu")
        .zip(waited_before)
        .map(|(a, b)| a - b);
    let stolen = integration_tests::timing::stolen_ms() - stolen_before;
    println!("{}", lines.join("\n"));
    assert_eq!(code, 0, "stdout {lines:#?}\nstderr {err}");
    assert_eq!(cpu_workers.len(), 2, "CPU workers in the cgroup");
    assert_eq!(mem_workers.len(), 1, "memory worker in the cgroup");
    // Not timing: the worker touches every page of its 64 MiB when armed, 1.5 s before this read;
    // 60 MiB allows for pages the kernel reclaimed or has not counted yet (VmRSS is batched per CPU).
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
    // The workers' CPU time follows the ramp: 2 workers x the ramp's integral, within 15%. Not
    // statistical: a duty cycle is a clock's doing. The 15% (720 ms here) is the test's allowance on
    // an idle machine, not widened: each worker's first and last periods (a period's budget each,
    // 2 x 2 x 30 ms), the carry a worker may owe or have spent at the end (one 50 ms period each),
    // the report's ramp steps against when the workers read them, the workers spinning after end_ms
    // until they are stopped. Above, the machine can only take CPU away: the allowance stands as it
    // is. Below, a worker only has its duty where the machine has the CPU free (issue 27: on a busy
    // host 3850 ms of 4817), and the kernel says how much it had not, in the same seconds:
    // - a worker short of its budget in a period spun, runnable, to the period's end, so its
    //   shortfall is at most the time it waited for a CPU, and each worker's waiting lies within the
    //   cgroup's cpu.pressure "some" (the time any task in it waited): at most 2 x its growth;
    // - time the hypervisor took from a vCPU while a worker ran on it counts as neither its CPU time
    //   nor its waiting: at most the host's steal (/proc/stat) in the same seconds;
    // - a worker's sleep that ends late stretches its period by as much, which costs it its load
    //   times the lateness: under emulation the guest does not count that as waiting (the host ran
    //   something else; the guest's clock went on). A plain timer beside the workers measures the
    //   lateness of a wake-up in the same seconds; its mean, times 2 workers x at most 60% x the
    //   fault's 100 periods of 50 ms, bounds it (a wake-up's lateness does not grow with the sleep;
    //   run-queue waiting counted in "some" as well only loosens the bound).
    let cpu_ms = c["cpu.cpu_ms"].as_f64().unwrap();
    let expected_ms = 2.0 * ramp_integral(fault) / 100.0 * 1e3;
    let mean_late_ms = late.iter().sum::<f64>() / late.len().max(1) as f64 / 1e3;
    let periods = ramp_seconds(fault) / 0.05;
    let unavailable_ms = 2.0 * waited.unwrap_or(0.0) + stolen + 2.0 * 0.6 * periods * mean_late_ms;
    println!(
        "workers' CPU {cpu_ms:.0} ms (expected {expected_ms:.0}); the cgroup's tasks waited for a \
         CPU {} ms, the host's steal {stolen:.0} ms, a plain timer's wake-up was late by \
         {mean_late_ms:.3} ms on average; the cgroup's cpu.stat grew by {:.0} ms",
        waited.map_or("(no cpu.pressure: not known)".to_owned(), |w| format!(
            "{w:.0}"
        )),
        cpu_after - cpu_before
    );
    assert!(
        cpu_ms <= 1.15 * expected_ms && cpu_ms >= 0.85 * expected_ms - unavailable_ms,
        "CPU {cpu_ms:.0} ms, expected {expected_ms:.0} ±15%, less {unavailable_ms:.0} ms the \
         machine did not have free (twice the cgroup's CPU wait, steal, the workers' late \
         wake-ups)"
    );
    // The cgroup's own accounting (cpu.stat, the kernel's truth) against the workers' claim, which
    // is load-independent: every worker's time (the CPU workers', the memory worker's, their start),
    // plus a little for the probe agent. 50 ms below: the report samples the workers' clocks
    // before they exit, the cgroup after (each clock's last tick, 10 ms, and the sampling's order);
    // 10% + 300 ms above: the memory worker's page faults and the probe agent's 70 connects, which
    // no worker counts.
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

/// How long the fault was armed, in seconds.
fn ramp_seconds(fault: &Value) -> f64 {
    (fault["end_ms"].as_f64().unwrap() - fault["start_ms"].as_f64().unwrap()) / 1e3
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
