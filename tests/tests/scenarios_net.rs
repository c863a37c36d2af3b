//! A network scenario end to end: the packet-loss ramp against a lab (a service in the namespace, a
//! probe from the target cgroup), checked against the kernel's counters, and the report's other forms
//! (the summary again, JUnit, HTML).

use std::time::{Duration, Instant};

use integration_tests::{
    RunDir, Service, TempFile, lab::Lab, no_residue, probe_count, probe_results, read_report,
    root_or_skip, scenario, scenario_vars, tag,
};

#[test]
fn packet_loss_ramp_scenario_against_the_lab() {
    if !root_or_skip("packet_loss_ramp_scenario_against_the_lab") {
        return;
    }
    let lab = Lab::create(&tag("r")).unwrap();
    let runs = RunDir::new();
    let svc = Service::start(&lab, 7100, false);
    let report = TempFile::new("ramp.json");
    let junit = TempFile::new("ramp.xml");
    let html = TempFile::new("ramp.html");
    let path = scenario("packet-loss-ramp.yaml");
    let v = scenario_vars(&lab, svc.addr);
    let mut args = vec![
        "run",
        path.to_str().unwrap(),
        "--json",
        report.s(),
        "--junit",
        junit.s(),
    ];
    args.extend(v.iter().map(String::as_str));
    let started = Instant::now();
    let ((code, out, err), late) =
        integration_tests::timing::with_timer_lateness(|| runs.run_text(&args));
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
    // The first value is set as the fault is armed (its instant, however late attaching made it);
    // each later step comes on the plan's clock, its k-th second after the fault's planned start
    // (not after the arming: under emulation attaching alone can take half a second). Each is late
    // by the run's turn: the goal, 150 ms, plus a wait for a CPU no longer than a plain timer's
    // beside the run (goal_plus_lateness).
    use integration_tests::timing::goal_plus_lateness;
    let bound = goal_plus_lateness(150.0, &late);
    let t = |x: &serde_json::Value| x["t_ms"].as_f64().unwrap();
    assert_eq!(
        t(&steps[0]),
        fault["start_ms"].as_f64().unwrap(),
        "{steps:?}"
    );
    let planned = fault["planned_start_ms"].as_f64().unwrap();
    for (k, step) in steps.iter().enumerate().skip(1) {
        let due = planned + 1000.0 * k as f64;
        assert!(
            (0.0..bound).contains(&(t(step) - due)),
            "step {k} {:.0} ms after its planned instant (allowed 0..{bound:.1}): {steps:?}",
            t(step) - due
        );
    }
    // The window ends its 4 s after the effect took hold, at the run's turn: the goal, 200 ms, plus
    // a wait for a CPU no longer than a plain timer's.
    let window = fault["window_ms"].as_f64().unwrap();
    let bound = goal_plus_lateness(200.0, &late);
    assert!(
        (window - 4000.0).abs() < bound,
        "armed {window:.0} ms instead of 4 s (allowed ±{bound:.1})"
    );

    // The kernel dropped packets of the probe's connects, and the probe saw it; never outside the fault.
    let dropped = fault["counters"]["egress.dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{fault}");
    assert_eq!(fault["injected_events"].as_u64().unwrap(), dropped);
    assert_eq!(s["injected_events"].as_u64().unwrap(), dropped);
    let res = probe_results(&r, "dependency-connect");
    assert_eq!(
        probe_count(&res, "before", false),
        0,
        "failures before injection"
    );
    // The before phase is 1 s of a probe every 100 ms: 10 on an idle machine, at least 5 (the
    // test's goal), or as many as fit where each came late by a plain timer's longest lateness.
    let longest_ms = late.last().copied().unwrap_or(0.0) / 1e3;
    let fit = |ms: f64| (ms / (100.0 + longest_ms)).floor() as usize;
    assert!(
        probe_count(&res, "before", true) >= 5.min(fit(1000.0)),
        "{}",
        res.len()
    );
    // A connect during the fault fails exactly when its SYN is dropped (a lost SYN is retried after
    // 1 s, past the 300 ms timeout), with the ramp's chance at its start: the failures are a sum
    // of independent trials of known chances (Poisson-binomial), whose range at stats::ALPHA is
    // computed exactly. (About 40 attempts at 0, 10, 20 and 30% fail none with probability 1e-3:
    // "some failed" is asserted only where the attempts make it a 1e-6 claim.)
    let chances: Vec<f64> = res
        .iter()
        .filter(|x| x["phase"] == "during")
        .map(|x| {
            let at = x["t_ms"].as_f64().unwrap();
            steps
                .iter()
                .rfind(|st| t(st) <= at)
                .map_or(0.0, |st| st["value"].as_f64().unwrap() / 100.0)
        })
        .collect();
    let failed = probe_count(&res, "during", false);
    let (lo, hi) = poisson_binomial_bounds(&chances, integration_tests::stats::ALPHA);
    println!(
        "{failed} of {} connects failed during the ramp; {lo}..={hi} at alpha 1e-6",
        chances.len()
    );
    assert!(
        (lo..=hi).contains(&failed),
        "{failed} connects failed during the ramp, not {lo}..={hi}"
    );
    assert_eq!(
        probe_count(&res, "after", false),
        0,
        "failures after the fault"
    );
    // The after phase: 2 s, 20 on an idle machine, at least 10, or as many as fit.
    assert!(probe_count(&res, "after", true) >= 10.min(fit(2000.0)));
    // Each failed attempt during the fault is a connect whose SYN the kernel dropped.
    assert!(
        dropped >= probe_count(&res, "during", false) as u64,
        "dropped {dropped}"
    );
    // The availability counts the same attempts (those begun while the fault was armed; one at
    // either edge may fall on the other side of a phase's boundary): within the failures' range.
    let avail = s["availability_during_faults_pct"].as_f64().unwrap();
    let n = chances.len().max(1) as f64;
    let lowest = 100.0 * (1.0 - (hi as f64 + 2.0) / n);
    assert!(
        avail >= lowest && avail <= 100.0,
        "availability {avail}%, below {lowest:.1}%"
    );
    // The probe tries every 100 ms and its first connect after the loss ends succeeds: 500 ms is
    // the goal, plus a wait for a CPU no longer than a plain timer's beside the run.
    let mttr = s["recovery"][0]["mttr_ms"].as_f64().unwrap();
    let bound = goal_plus_lateness(500.0, &late);
    assert!(
        mttr < bound,
        "took {mttr} ms to recover (allowed {bound:.1})"
    );
    assert!(svc.accepted() as usize >= probe_count(&res, "after", true));
    // The run's own plan is 1 + 4 + 2 s: 12 s is a deadline, not an assertion of speed.
    assert!(wall < Duration::from_secs(12), "{wall:?}");
    // Every event is timestamped and in order.
    let ts: Vec<f64> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["t_ms"].as_f64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");

    // JUnit: each hypothesis, each probe phase and the fault is a test case, each with
    // the wall-clock time it began and how long it took.
    let xml = std::fs::read_to_string(&junit.0).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 7, "{xml}");
    assert!(
        xml.contains("name=\"steady state before\"")
            && xml.contains("name=\"dependency-connect during\"")
            && xml.contains("classname=\"kchaos.fault.net\""),
        "{xml}"
    );
    let case_timestamps = xml
        .lines()
        .filter(|l| {
            l.contains("<testcase ") && l.contains("timestamp=\"20") && l.contains(" time=\"")
        })
        .count();
    assert_eq!(case_timestamps, 7, "{xml}");
    // Failed cases: the probe's during case exactly when its tolerance broke while the loss ran (a
    // degradation CI must see); nothing else.
    let degraded = r["hypothesis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["phase"] == "during" && h["held"] == false)
        .count();
    assert!(
        xml.contains(&format!("failures=\"{degraded}\""))
            && xml.matches("<failure").count() == degraded,
        "{xml}"
    );
    if degraded > 0 {
        let case = &xml[xml.find("name=\"dependency-connect during\"").unwrap()..];
        assert!(
            case[..case.find("</testcase>").unwrap()].contains("degraded during faults"),
            "{xml}"
        );
    }

    // `kchaos report` prints the summary again, and writes the HTML page.
    let (code, again, _) = runs.run_text(&["report", report.s()]);
    assert_eq!(code, 0);
    assert!(
        again.contains("steady state: held")
            && again.contains(&format!("injected events (kernel): {dropped}")),
        "{again}"
    );
    let (code, _, err) = runs.run_text(&["report", "--html", report.s(), "--out", html.s()]);
    assert_eq!(code, 0, "{err}");
    let page = std::fs::read_to_string(&html.0).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.contains("<svg") && page.contains("loss-ramp")
    );
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "not self-contained"
    );
    // Each attempt is drawn once: a successful one as a dot at its latency, a failed one as a cross
    // apart from the latency plot; an empty safety review says so.
    let attempts: Vec<&serde_json::Value> = r["probes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["results"].as_array().unwrap())
        .collect();
    let failed = attempts.iter().filter(|a| a["ok"] == false).count();
    assert_eq!(
        page.matches("class=\"ok-attempt\"").count(),
        attempts.len() - failed
    );
    assert_eq!(page.matches("class=\"failed-attempt\"").count(), failed);
    println!("html: {} attempts, {failed} failed", attempts.len());
    // The fault's per-second chart: the kernel's drops per second and the ramp's intensity curve.
    assert!(
        page.contains("class=\"rate\"") && page.contains("class=\"intensity\""),
        "no per-second chart"
    );
    // The intensity (percent) on a scale of its own, not on the events/s axis: up to 33% (30% and a
    // tenth of headroom) at the right.
    let ticks: Vec<&str> = page
        .split("class=\"intensity-axis\"")
        .skip(1)
        .filter_map(|t| t.split('>').nth(1)?.split('<').next())
        .collect();
    assert_eq!(ticks.len(), 5, "{ticks:?}");
    assert!(ticks.iter().all(|t| t.ends_with('%')), "{ticks:?}");
    assert_eq!(ticks[4], "33%", "{ticks:?}");
    if r["findings"].as_array().unwrap().is_empty() {
        assert!(
            page.contains("no findings"),
            "an empty safety review is not said"
        );
    }
    drop(svc);
    no_residue(&lab);
}

/// The range the count of successes of independent trials of chances `p` stays in but with
/// probability at most `alpha` (alpha/2 each side): its distribution computed exactly.
fn poisson_binomial_bounds(p: &[f64], alpha: f64) -> (usize, usize) {
    let mut dist = vec![1.0];
    for &q in p {
        let mut next = vec![0.0; dist.len() + 1];
        for (k, &w) in dist.iter().enumerate() {
            next[k] += w * (1.0 - q);
            next[k + 1] += w * q;
        }
        dist = next;
    }
    let mut below = 0.0;
    let lo = dist
        .iter()
        .position(|&w| {
            below += w;
            below > alpha / 2.0
        })
        .unwrap_or(0);
    let mut above = 0.0;
    let hi = dist.len()
        - 1
        - dist
            .iter()
            .rev()
            .position(|&w| {
                above += w;
                above > alpha / 2.0
            })
            .unwrap_or(0);
    (lo, hi)
}
