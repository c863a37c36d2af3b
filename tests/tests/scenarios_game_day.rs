//! Game days: several faults on several services at once, overlapping in time, each held to its own
//! cgroup; network faults alone, then network, syscall and stress faults mixed.

use integration_tests::{
    RunDir, Service, TempFile, attach_type, cgroup_programs, lab::Lab, no_residue, probe_count,
    probe_results, read_report, refused_count, root_or_skip, scenario, tag,
};
use serde_json::Value;

#[test]
fn game_day_overlapping_faults_on_two_services() {
    if !root_or_skip("game_day_overlapping_faults_on_two_services") {
        return;
    }
    let lab = Lab::create(&tag("g")).unwrap();
    let runs = RunDir::new();
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
        "--json",
        report.s(),
        "--junit",
        junit.s(),
    ];
    for v in &vars {
        args.extend(["--var", v.as_str()]);
    }
    let ((code, out, err), late) =
        integration_tests::timing::with_timer_lateness(|| runs.run_text(&args));
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
    // Planned 2 s apart on the run's clock; each armed late by its attaching (the goal: within
    // 200 ms of each other) and a wait for a CPU no longer than a plain timer's beside the run.
    let apart = ms(part, "start_ms") - ms(loss, "start_ms");
    let bound = integration_tests::timing::goal_plus_lateness(200.0, &late);
    assert!(
        (apart - 2000.0).abs() < bound,
        "armed {apart:.0} ms apart, not 2000 ± {bound:.1}"
    );
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
    let res = probe_results(&r, "worker-db");
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
        // (5 ms after arming: the partition's first connect may have left before it; 200 ms
        // before the end: the probe's timeout, an attempt that ends after the window)
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
    // The probe tries every 100 ms; its first connect after the partition ends succeeds: 1 s is the
    // goal, plus a wait for a CPU no longer than a plain timer's beside the run.
    let bound = integration_tests::timing::goal_plus_lateness(1000.0, &late);
    assert!(mttr < bound, "{mttr} ms to recover, allowed {bound:.1}");
    // The api's health checks were hit by the loss, never by the worker's partition.
    let api_res = probe_results(&r, "api-health");
    assert_eq!(
        probe_count(&api_res, "before", false) + probe_count(&api_res, "after", false),
        0
    );
    assert!(api_res.iter().any(|x| x["detail"] == "HTTP 200"));
    // The api's health probe every 100 ms over the 1 s before, the faults' 5 s and the 2 s after:
    // about 80 on an idle machine, 40 the test's floor (some lost to the api's loss), or as many
    // as fit in the 3 s without a fault on the api where each came late by a plain timer's longest
    // lateness in the same seconds.
    let fit = (3000.0 / (100.0 + late.last().copied().unwrap_or(0.0) / 1e3)).floor() as usize;
    assert!(
        web.accepted() as usize >= 40.min(fit),
        "{} accepted",
        web.accepted()
    );
    let xml = std::fs::read_to_string(&junit.0).unwrap();
    // 9 for the hypotheses, the probes and the experiment, one for each of the 2 faults.
    assert_eq!(xml.matches("<testcase ").count(), 11, "{xml}");
    drop((web, db));
    no_residue(&lab);
}

#[test]
fn mixed_game_day_net_syscall_and_stress_on_two_services() {
    if !root_or_skip("mixed_game_day_net_syscall_and_stress_on_two_services") {
        return;
    }
    let lab = Lab::create(&tag("m")).unwrap();
    let runs = RunDir::new();
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
    let mut args = vec!["run", path.to_str().unwrap(), "--json", report.s()];
    for v in &vars {
        args.extend(["--var", v.as_str()]);
    }
    let stolen_before = integration_tests::timing::stolen_ms();
    let ((code, out, err), late) =
        integration_tests::timing::with_timer_lateness(|| runs.run_text(&args));
    let stolen = integration_tests::timing::stolen_ms() - stolen_before;
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
    let res = probe_results(&r, "worker-db");
    let injected = refused_f["counters"]["connect.injected"].as_u64().unwrap();
    assert_eq!(injected, refused_count(&res) as u64, "{refused_f}");
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
    // The api's CPU worker ran at its 50% of a CPU over the fault's 4 s, within 15% (the test's
    // allowance on an idle machine, as in scenarios_stress.rs: first and last periods, the carry).
    // Above, the machine can only take CPU away. Below, less what the machine did not have free in
    // the same seconds, as the kernel counts it: the time the api's cgroup (made for this test)
    // waited for a CPU (cpu.pressure "some", which holds the worker's own waiting), the host's
    // steal, and half of each 50 ms period's late wake-up (a plain timer's mean lateness beside it;
    // see scenarios_stress.rs for why each bounds the worker's shortfall).
    let cpu_ms = cpu["counters"]["cpu.cpu_ms"].as_f64().unwrap();
    let life = cpu["end_ms"].as_f64().unwrap() - cpu["start_ms"].as_f64().unwrap();
    let waited = integration_tests::timing::pressure_ms(&api, "cpu").unwrap_or(0.0);
    let mean_late_ms = late.iter().sum::<f64>() / late.len().max(1) as f64 / 1e3;
    let unavailable = waited + stolen + 0.5 * (life / 50.0) * mean_late_ms;
    println!(
        "api's CPU worker: {cpu_ms:.0} ms in {life:.0} ms at 50%; the machine did not have \
         {unavailable:.0} ms free (its cgroup waited {waited:.0}, steal {stolen:.0}, a wake-up late \
         by {mean_late_ms:.3} ms on average)"
    );
    assert!(
        cpu_ms <= 1.15 * 0.5 * life && cpu_ms >= 0.85 * 0.5 * life - unavailable,
        "{cpu_ms} ms of CPU in {life} ms at 50% ±15%, less {unavailable:.0} ms not free"
    );
    assert_eq!(
        r["summary"]["injected_events"].as_u64().unwrap(),
        loss["injected_events"].as_u64().unwrap() + injected
    );
    drop((web, db));
    assert!(cgroup_programs(&worker, attach_type::INET4_CONNECT).is_empty());
    no_residue(&lab);
}
