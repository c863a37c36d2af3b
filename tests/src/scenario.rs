//! Experiments (scenario files): the shipped ones, the variables that point them at a lab, and
//! reading the JSON report a run writes.

use std::{net::SocketAddr, path::Path, path::PathBuf};

use serde_json::Value;

use crate::lab::Lab;

/// A shipped scenario: `scenarios/<name>` at the workspace root.
pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name)
}

/// `--var cgroup=<the lab's cgroup> --var server=<server>`: what the shipped scenarios ask for.
pub fn scenario_vars(lab: &Lab, server: SocketAddr) -> [String; 4] {
    [
        "--var".into(),
        format!("cgroup={}", lab.cgroup.path.display()),
        "--var".into(),
        format!("server={server}"),
    ]
}

/// A JSON report kchaos wrote.
pub fn read_report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the report {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the report {}: {e}", path.display()))
}

/// Every result of the probe named `probe` in a report.
pub fn probe_results<'a>(report: &'a Value, probe: &str) -> Vec<&'a Value> {
    report["probes"]
        .as_array()
        .expect("the report's probes")
        .iter()
        .find(|p| p["name"] == probe)
        .unwrap_or_else(|| panic!("no probe {probe}"))["results"]
        .as_array()
        .expect("the probe's results")
        .iter()
        .collect()
}

/// How many of `results` fall in `phase` (before, during, after) and succeeded (`ok`) or not.
pub fn probe_count(results: &[&Value], phase: &str, ok: bool) -> usize {
    results
        .iter()
        .filter(|r| r["phase"] == phase && r["ok"] == ok)
        .count()
}

/// Probe results whose error is ECONNREFUSED (a connect the kernel refused).
pub fn refused_count(results: &[&Value]) -> usize {
    results
        .iter()
        .filter(|r| r["ok"] == false && r["detail"].as_str().unwrap_or("").contains("os error 111"))
        .count()
}

/// The kernel's counters of a `kchaos net` run's one fault (its `--json` report), by direction:
/// `{"egress": {"dropped": n, ...}, "ingress": {...}}`; a direction with no program is `{}`.
pub fn net_totals(path: &Path) -> Value {
    let v = read_report(path);
    assert_eq!(v["faults"][0]["kind"], "net", "{v}");
    let mut totals = serde_json::json!({"egress": {}, "ingress": {}});
    for (key, n) in v["faults"][0]["counters"].as_object().expect("counters") {
        if let Some((dir, what)) = key.split_once('.') {
            totals[dir][what] = n.clone();
        }
    }
    totals
}

/// The values a ramp of a report's `fault` went through, in order.
pub fn ramp_steps(fault: &serde_json::Value) -> Vec<f64> {
    fault["ramp_steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no ramp_steps in {fault}"))
        .iter()
        .map(|x| {
            x["value"]
                .as_f64()
                .unwrap_or_else(|| panic!("a ramp step without a value: {x}"))
        })
        .collect()
}

/// A scenario file of one `net` fault on `cgroup` (target `app`), armed at 0 s for `secs` seconds,
/// with `net` as its fields and `ramp` as its one ramp (`param: {from: .., to: .., ..}`).
pub fn net_ramp_scenario(
    cgroup: &Path,
    fault: &str,
    secs: u32,
    net: &str,
    ramp: &str,
) -> crate::TempFile {
    let file = crate::TempFile::new(&format!("{fault}-ramp.yaml"));
    std::fs::write(
        &file.0,
        format!(
            "title: {fault} ramp\ntargets:\n  - name: app\n    cgroup: {}\nfaults:\n  - name: \
             {fault}\n    at: 0s\n    for: {secs}s\n    net: {{{net}}}\n    ramp:\n      {ramp}\n",
            cgroup.display()
        ),
    )
    .expect("writing the scenario file");
    file
}
