//! `kchaos monkey`: bounded random faults, with probes, from a seed.

use integration_tests::{
    RunDir, Service, TempFile, lab::Lab, no_residue, probe_count, probe_results, read_report,
    root_or_skip, tag,
};

#[test]
fn monkey_injects_bounded_random_faults_with_probes() {
    if !root_or_skip("monkey_injects_bounded_random_faults_with_probes") {
        return;
    }
    let lab = Lab::create(&tag("m")).unwrap();
    let runs = RunDir::new();
    let svc = Service::start(&lab, 7400, true);
    let report = TempFile::new("monkey.json");
    let cg = lab.cgroup.path.display().to_string();
    // A second target: every fault hits both.
    let second =
        integration_tests::lab::LabCgroup::create(&format!("kchaos-test-{}", tag("m2"))).unwrap();
    let cg2 = second.path.display().to_string();
    let url = format!("http://{}/health", svc.addr);
    let (code, out, err) = runs.run_text(&[
        "monkey",
        "--cgroup",
        &cg,
        "--cgroup",
        &cg2,
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
        "--json",
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
        // Deterministic: monkey draws the drop between 1 % and --max-drop.
        assert!((1.0..=20.0).contains(&drop), "{f}");
        assert!(f["start_ms"].as_f64().is_some() && f["end_ms"].as_f64().is_some());
        let attached = f["attached"].to_string();
        assert!(
            attached.contains(&format!("{cg} ")) && attached.contains(&format!("{cg2} ")),
            "each fault hits both targets: {attached}"
        );
    }
    let res = probe_results(&r, "probe-1");
    assert!(
        probe_count(&res, "before", true) >= 5 && probe_count(&res, "before", false) == 0,
        "{res:?}"
    );
    assert!(res.iter().any(|x| x["detail"] == "HTTP 200"));
    assert!(svc.accepted() >= 30);
    drop(svc);
    no_residue(&lab);
}
