//! One run, four surfaces: the JSON report, the text summary (`kchaos report`), the HTML page and the
//! JUnit file show the same resilience figures, each as its definition (README, "The resilience
//! figures") computes it from the run's own probe attempts; a degradation during the faults fails the
//! probe's `during` case in JUnit.

use integration_tests::{
    RunDir, Service, TempFile, lab::Lab, no_residue, read_report, root_or_skip, tag,
};
use serde_json::Value;

/// The value of `label` on a line `  label: value` of the text summary.
fn text_figure(text: &str, label: &str) -> String {
    let prefix = format!("  {label}: ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no '{label}' in the summary:\n{text}"))
        .to_owned()
}

/// The value of the HTML card labelled `label`.
fn html_figure(page: &str, label: &str) -> String {
    let end = format!("</b><span>{label}</span>");
    let at = page
        .find(&end)
        .unwrap_or_else(|| panic!("no card '{label}' in the page"));
    let open = page[..at].rfind('>').expect("the card's value");
    page[open + 1..at].to_owned()
}

/// The value of the JUnit property `label`.
fn junit_figure(xml: &str, label: &str) -> String {
    let key = format!(
        "<property name=\"{}\" value=\"",
        label.replace('\'', "&apos;")
    );
    let at = xml
        .find(&key)
        .or_else(|| xml.find(&key.replace("&apos;", "'")))
        .unwrap_or_else(|| panic!("no property '{label}' in\n{xml}"));
    let rest = &xml[at..];
    let rest = &rest[rest.find("value=\"").unwrap() + 7..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or("n/a".into(), |v| format!("{v:.1}%"))
}

#[test]
fn every_surface_shows_the_same_figures() {
    if !root_or_skip("every_surface_shows_the_same_figures") {
        return;
    }
    let lab = Lab::create(&tag("fig")).unwrap();
    let runs = RunDir::new();
    let cut = Service::start(&lab, 7300, false);
    let other = Service::start(&lab, 7301, false);
    // The fault cuts the app off from one service and not the other: every attempt of the probe
    // `cut` while it is armed fails, every attempt of `other` succeeds, whatever the timing. It is
    // armed half a second into the during phase: availability and error rate count the same
    // attempts (those in the armed window), not the phase's.
    let probe = |name: &str, addr: std::net::SocketAddr| {
        format!(
            "    - name: {name}\n      tcp: {addr}\n      from_target: app\n      interval: 100ms\n      \
             timeout: 300ms\n      tolerance:\n        success_rate: 100%\n        p95_latency: 100ms\n        \
             window: 1s\n"
        )
    };
    let scenario = TempFile::with(
        "figures.yaml",
        &format!(
            "title: figures\ntargets:\n  - name: app\n    cgroup: {}\nsteady_state:\n  before: 1s\n  \
             after: 1s\n  probes:\n{}{}faults:\n  - name: lossy\n    at: 500ms\n    for: 2s\n    \
             net: {{partition: \"{}\"}}\nbudget:\n  max_duration: 20s\n",
            lab.cgroup.path.display(),
            probe("cut", cut.addr),
            probe("other", other.addr),
            cut.addr
        ),
    );
    let (json, junit, html) = (
        TempFile::new("figures.json"),
        TempFile::new("figures.xml"),
        TempFile::new("figures.html"),
    );
    let (code, out, err) = runs.run_text(&[
        "run",
        scenario.s(),
        "--accept-risk",
        "--json",
        json.s(),
        "--junit",
        junit.s(),
    ]);
    println!("{out}\n{err}");
    let r = read_report(&json.0);
    let s = &r["summary"];

    // The figures from their definitions, over the run's own attempts.
    let fault = &r["faults"][0];
    let (start, end) = (
        fault["start_ms"].as_f64().unwrap(),
        fault["end_ms"].as_f64().unwrap(),
    );
    let probes = r["probes"].as_array().unwrap();
    let during: Vec<&Value> = probes
        .iter()
        .flat_map(|p| p["results"].as_array().unwrap())
        .filter(|a| {
            let t = a["t_ms"].as_f64().unwrap();
            t >= start && t < end
        })
        .collect();
    let n = during.len() as f64;
    let outside = |a: &Value| a["ok"] == false || a["latency_ms"].as_f64().unwrap() > 100.0;
    let ok = during.iter().filter(|a| a["ok"] == true).count() as f64;
    let bad = during.iter().filter(|a| outside(a)).count() as f64;
    println!(
        "{n} attempts during the fault: {} failed, {} outside tolerance",
        n - ok,
        bad
    );
    assert!(n - ok >= 3.0 && ok >= 3.0, "{s}");
    let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-9;
    assert!(
        close(&s["availability_during_faults_pct"], 100.0 * ok / n),
        "{s}"
    );
    assert!(close(&s["error_rate_pct"], 100.0 * (n - ok) / n), "{s}");
    assert!(close(&s["degradation_pct"], 100.0 * bad / n), "{s}");
    // Recovery: per probe, the first attempt after the last one outside tolerance among those that
    // ended after the fault's end; the worst of the two.
    let mut mttr = Some(0.0_f64);
    for p in probes {
        let after: Vec<&Value> = p["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["t_ms"].as_f64().unwrap() + a["latency_ms"].as_f64().unwrap() > end)
            .collect();
        let this = match after.iter().rposition(|a| outside(a)) {
            None => Some(0.0),
            Some(i) => after
                .get(i + 1)
                .map(|a| (a["t_ms"].as_f64().unwrap() - end).max(0.0)),
        };
        mttr = mttr.zip(this).map(|(a, b)| a.max(b));
    }
    let json_mttr = s["recovery"][0]["mttr_ms"].as_f64();
    assert!(
        match (json_mttr, mttr) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-6,
            (a, b) => a == b,
        },
        "{json_mttr:?} vs {mttr:?}: {s}"
    );
    let mttr_text = mttr.map_or("did not recover".into(), |m| format!("{m:.0} ms"));

    // The same values on every surface.
    let (rc, text, _) = runs.run_text(&["report", json.s()]);
    assert_eq!(rc, 0);
    let (rc, _, e) = runs.run_text(&["report", "--html", json.s(), "--out", html.s()]);
    assert_eq!(rc, 0, "{e}");
    let page = std::fs::read_to_string(&html.0).unwrap();
    let xml = std::fs::read_to_string(&junit.0).unwrap();
    let recover = "time to recover after &apos;lossy&apos;";
    for (label, html_label, want) in [
        (
            "availability during faults",
            "availability during faults",
            pct(&s["availability_during_faults_pct"]),
        ),
        (
            "error rate while faults ran",
            "error rate while faults ran",
            pct(&s["error_rate_pct"]),
        ),
        (
            "degradation during faults",
            "degradation during faults",
            pct(&s["degradation_pct"]),
        ),
        ("time to recover after 'lossy'", recover, mttr_text.clone()),
    ] {
        assert_eq!(text_figure(&text, label), want, "text: {label}");
        assert_eq!(html_figure(&page, html_label), want, "html: {label}");
        assert_eq!(junit_figure(&xml, label), want, "junit: {label}");
        println!("{label}: {want} on every surface");
    }

    // The success line's recovery mark is where the summary says.
    if mttr.is_some() {
        let mark = format!("<title>recovered {mttr_text} after &apos;lossy&apos;</title>");
        assert!(page.contains(&mark), "no {mark}");
    }

    // The degradation is visible to CI: the during case of the probe that broke fails, the other's
    // passes.
    let case = |name: &str| {
        let c = &xml[xml
            .find(&format!("name=\"{name}\""))
            .unwrap_or_else(|| panic!("no case {name}"))..];
        c[..c.find("</testcase>").unwrap_or(c.len())].to_owned()
    };
    let cut_during = case("cut during");
    assert!(
        cut_during.contains("<failure") && cut_during.contains("degraded during faults"),
        "{cut_during}"
    );
    assert!(!case("other during").contains("<failure"), "{xml}");
    assert!(text.contains("during faults: DEGRADED (cut: "), "{text}");
    assert!(!text.contains("other: success"), "{text}");
    assert!(
        page.contains("<b class=\"bad\" title=\"cut: "),
        "no red tile"
    );
    // The exit code judges the experiment (completed, steady state before and after), not the
    // during phase.
    let held = s["steady_state_held"] == true && s["completed"] == true;
    assert_eq!(code, if held { 0 } else { 1 }, "{s}");
    drop((cut, other));
    no_residue(&lab);
}
