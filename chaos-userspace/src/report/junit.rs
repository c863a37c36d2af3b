//! The report as JUnit XML, for CI dashboards: the steady-state hypothesis before and after, each probe
//! in each phase, and the experiment itself, each a test case.

use std::time::Duration;

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::Report;

struct Case {
    class: String,
    name: String,
    /// When it began and how long it took, in ms from the run's start.
    span: Option<(f64, f64)>,
    failure: Option<String>,
    out: String,
}

/// The report as JUnit XML (through `quick-junit`): a suite for the experiment, a case each for the
/// steady state before and after, each probe in each phase, and the experiment itself, each with the
/// wall-clock time it began and how long it took.
pub fn render(r: &Report) -> String {
    let mut cases = Vec::new();
    let phase_of = |name: &str| match name {
        "before" => r.phases.before,
        "during" => r.phases.during,
        _ => r.phases.after,
    };
    for phase in ["before", "after"] {
        let ran = phase_of(phase);
        let hs: Vec<_> = r.hypothesis.iter().filter(|h| h.phase == phase).collect();
        if r.probes.is_empty() {
            continue;
        }
        let failure = if ran.is_none() {
            Some(format!(
                "the {phase} phase did not run ({})",
                r.summary.end_reason
            ))
        } else {
            let failed: Vec<String> = hs
                .iter()
                .filter(|h| !h.held)
                .map(|h| format!("{}: {}", h.probe, h.why.clone().unwrap_or_default()))
                .collect();
            (!failed.is_empty()).then(|| failed.join("; "))
        };
        cases.push(Case {
            class: "kchaos.hypothesis".into(),
            name: format!("steady state {phase}"),
            span: ran,
            failure,
            out: String::new(),
        });
    }
    let aborted_on = |probe: &str| {
        r.summary
            .abort_reason
            .as_deref()
            .is_some_and(|a| a.contains(&format!("probe '{probe}'")))
    };
    for h in &r.hypothesis {
        let stats = format!(
            "{} of {} ok ({:.1}%), p95 {}",
            h.stats.ok,
            h.stats.count,
            h.stats.success_rate,
            h.stats
                .p95_latency_ms
                .map(|p| format!("{p:.1} ms"))
                .unwrap_or_else(|| "n/a".into())
        );
        // During the faults: failed when the run aborted on it, and when its tolerance did not
        // hold (the service degraded under the faults; see figures::degraded). The exit code does not
        // judge this phase (it is the steady state before and after, and the abort rules): a CI that
        // reads the JUnit file shows the degradation as a failed case.
        let failure = if h.phase == "during" {
            if aborted_on(&h.probe) {
                Some(format!(
                    "aborted the experiment: {}",
                    r.summary.abort_reason.clone().unwrap_or_default()
                ))
            } else {
                (!h.held).then(|| {
                    let share = r
                        .summary
                        .probe_figures
                        .iter()
                        .find(|p| p.probe == h.probe)
                        .map(|p| {
                            format!(
                                "; {} of the attempts while a fault was armed outside tolerance",
                                super::figures::format_pct(p.degradation_pct)
                            )
                        })
                        .unwrap_or_default();
                    format!(
                        "degraded during faults: {}{share}",
                        h.why.clone().unwrap_or_default()
                    )
                })
            }
        } else {
            (!h.held).then(|| h.why.clone().unwrap_or_default())
        };
        cases.push(Case {
            class: format!("kchaos.probe.{}", h.probe),
            name: format!("{} {}", h.probe, h.phase),
            span: phase_of(&h.phase),
            failure,
            out: stats,
        });
    }
    for f in &r.faults {
        cases.push(Case {
            class: format!("kchaos.fault.{}", f.kind),
            name: format!("{} ({})", f.name, f.kind),
            span: f.start_ms.map(|s| (s, f.end_ms.unwrap_or(s))),
            failure: (!f.errors.is_empty()).then(|| f.errors.join("; ")),
            out: f.description.clone(),
        });
    }
    cases.push(Case {
        class: "kchaos.experiment".into(),
        name: "completed without abort".into(),
        span: Some((0.0, r.duration_ms)),
        failure: (!r.summary.completed).then(|| r.summary.end_reason.clone()),
        out: r.summary_text(),
    });

    let at = |ms: f64| {
        chrono::DateTime::from_timestamp_millis(r.started_unix_ms as i64 + ms.max(0.0) as i64)
            .map(|t| t.fixed_offset())
    };
    let secs = |ms: f64| Duration::from_secs_f64((ms / 1e3).max(0.0));
    let mut suite = TestSuite::new(r.scenario.title.as_str());
    if let Some(t) = at(0.0) {
        suite.set_timestamp(t);
    }
    suite.set_time(secs(r.duration_ms));
    // The run's figures, in the words and values of the text summary and the HTML page.
    for (label, value) in super::figures::rendered(&r.summary) {
        suite.add_property((label, value));
    }
    for c in cases {
        let status = match &c.failure {
            None => TestCaseStatus::success(),
            Some(why) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(why.as_str()).set_description(why.as_str());
                s
            }
        };
        let mut case = TestCase::new(c.name, status);
        case.set_classname(c.class);
        if let Some((start, end)) = c.span {
            if let Some(t) = at(start) {
                case.set_timestamp(t);
            }
            case.set_time(secs(end - start));
        }
        if !c.out.is_empty() {
            case.set_system_out(c.out);
        }
        suite.add_test_case(case);
    }
    let mut report = quick_junit::Report::new("kchaos");
    if let Some(t) = at(0.0) {
        report.set_timestamp(t);
    }
    report.set_time(secs(r.duration_ms));
    report.add_test_suite(suite);
    // Serializing into memory fails only on a writer error, which a String has not.
    report.to_string().unwrap_or_default()
}
