//! The one report of every run (an experiment, or a fault command as a one-fault experiment): every
//! event timestamped, per-fault plan and timing and kernel counters, every probe result, the
//! hypothesis per phase, and the numbers a person asks for first (injected events, availability during
//! faults, error rate, time to recover after each fault, why it ended). `html` and `junit` render it.

pub mod figures;
pub mod html;
pub mod junit;

use std::{collections::BTreeMap, path::Path};

use anyhow::Result;

use crate::experiment::{
    plan::PlanStep,
    probes::{self, ProbeResult, Stats},
    review::Finding,
    scenario::Tolerance,
    validate::ResolvedTarget,
};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub kchaos_version: String,
    pub kernel: String,
    /// What ran: "run" or "monkey" (a scenario), or the fault command ("net", "pause", ...), which
    /// runs as a one-fault scenario.
    #[serde(default)]
    pub command: String,
    pub scenario: ScenarioInfo,
    pub started_unix_ms: u64,
    pub duration_ms: f64,
    pub targets: Vec<ResolvedTarget>,
    pub findings: Vec<Finding>,
    pub risk_accepted: bool,
    pub plan: Vec<PlanStep>,
    pub phases: Phases,
    pub events: Vec<Event>,
    pub faults: Vec<FaultRecord>,
    pub probes: Vec<ProbeRecord>,
    pub hypothesis: Vec<Hypothesis>,
    pub rollbacks: Vec<RollbackRecord>,
    pub summary: Summary,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ScenarioInfo {
    pub file: String,
    pub title: String,
    pub description: String,
    pub variables: BTreeMap<String, String>,
}

/// Phase boundaries, ms from the start (None: the phase did not happen).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Phases {
    pub before: Option<(f64, f64)>,
    pub during: Option<(f64, f64)>,
    pub after: Option<(f64, f64)>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// ms from the start of the run.
    pub t_ms: f64,
    pub unix_ms: u64,
    pub kind: String,
    pub detail: String,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct FaultRecord {
    pub name: String,
    pub kind: String,
    pub description: String,
    pub targets: Vec<String>,
    /// Its window as planned, ms from the start of the run.
    pub planned_start_ms: f64,
    pub planned_end_ms: f64,
    /// When it was armed / disarmed (None: it never was).
    pub start_ms: Option<f64>,
    pub end_ms: Option<f64>,
    /// How late it was armed against the plan.
    #[serde(default)]
    pub armed_late_ms: Option<f64>,
    /// The window it was armed for (disarmed - armed), beside the planned one.
    #[serde(default)]
    pub window_ms: Option<f64>,
    pub attached: Vec<String>,
    /// The kernel's counters at detach.
    pub counters: BTreeMap<String, u64>,
    pub injected_events: u64,
    pub samples: Vec<CounterSample>,
    pub ramp_steps: Vec<RampStep>,
    /// What the kind measured beyond its counters (stress: the load achieved per target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// What went wrong while it was armed or undone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CounterSample {
    pub t_ms: f64,
    pub injected_events: u64,
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RampStep {
    pub t_ms: f64,
    pub param: String,
    /// Percent, or seconds.
    pub value: f64,
    pub display: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProbeRecord {
    pub name: String,
    pub check: String,
    pub from_target: Option<String>,
    pub tolerance: Tolerance,
    pub results: Vec<ProbeSample>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProbeSample {
    /// When the attempt started, ms from the start of the run.
    pub t_ms: f64,
    pub phase: String,
    pub ok: bool,
    pub latency_ms: f64,
    pub detail: String,
}

impl ProbeSample {
    pub fn from_result(r: &ProbeResult, t0_ns: u64, phase: &str) -> Self {
        Self {
            t_ms: r.t_ns.saturating_sub(t0_ns) as f64 / 1e6,
            phase: phase.to_owned(),
            ok: r.ok,
            latency_ms: r.latency_ms,
            detail: r.detail.clone(),
        }
    }

    fn as_result(&self) -> ProbeResult {
        ProbeResult {
            probe: String::new(),
            t_ns: 0,
            ok: self.ok,
            latency_ms: self.latency_ms,
            detail: String::new(),
        }
    }
}

/// Whether one probe's tolerance held over one phase.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Hypothesis {
    pub phase: String,
    pub probe: String,
    pub held: bool,
    pub stats: Stats,
    pub why: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RollbackRecord {
    pub name: String,
    pub command: String,
    pub exit_code: Option<i32>,
    pub duration_ms: f64,
    pub output: String,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub injected_events: u64,
    /// [`figures::availability_pct`]: ok attempts among those that started while a fault was armed.
    pub availability_during_faults_pct: Option<f64>,
    /// [`figures::error_rate_pct`]: failed attempts among the same attempts (100 - availability).
    pub error_rate_pct: Option<f64>,
    /// [`figures::degradation_pct`]: attempts outside tolerance (failed, or slower than the probe's
    /// p95_latency bound) among the same attempts.
    #[serde(default)]
    pub degradation_pct: Option<f64>,
    /// [`figures::per_probe`]: the same per probe.
    #[serde(default)]
    pub probe_figures: Vec<figures::ProbeFigures>,
    /// [`figures::recovery`], per fault.
    pub recovery: Vec<Recovery>,
    /// The steady state held before and after (None: there are no probes).
    pub steady_state_held: Option<bool>,
    pub completed: bool,
    pub end_reason: String,
    pub abort_reason: Option<String>,
    /// The signal that ended it (Ctrl-C, SIGTERM, SIGHUP), if one did.
    #[serde(default)]
    pub signal: Option<crate::engine::lifecycle::EndReason>,
    /// From the abort decision to every fault detached.
    pub abort_to_detached_ms: Option<f64>,
}

/// Time to recover after a fault ended ([`figures::recovery`]): until every probe watching it is back
/// within its tolerance for good (the probes run from inside its targets, or every probe when none is).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Recovery {
    pub fault: String,
    /// None: some probe had not recovered by the end of the run.
    pub mttr_ms: Option<f64>,
}

/// Judges each probe over each phase that ran.
pub fn hypotheses(probes: &[ProbeRecord], phases: &Phases) -> Vec<Hypothesis> {
    let mut out = Vec::new();
    for (phase, ran) in [
        ("before", phases.before.is_some()),
        ("during", phases.during.is_some()),
        ("after", phases.after.is_some()),
    ] {
        if !ran {
            continue;
        }
        for p in probes {
            let results: Vec<ProbeResult> = p
                .results
                .iter()
                .filter(|r| r.phase == phase)
                .map(ProbeSample::as_result)
                .collect();
            let stats = probes::stats(&results);
            let verdict = probes::judge(&p.tolerance, &stats);
            out.push(Hypothesis {
                phase: phase.into(),
                probe: p.name.clone(),
                held: verdict.is_ok(),
                stats,
                why: verdict.err(),
            });
        }
    }
    out
}

/// The figures of [`figures`], for the summary: (availability, error rate, degradation, per probe,
/// recovery).
pub fn outcome(faults: &[FaultRecord], probes: &[ProbeRecord]) -> Outcome {
    Outcome {
        availability_during_faults_pct: figures::availability_pct(faults, probes),
        error_rate_pct: figures::error_rate_pct(faults, probes),
        degradation_pct: figures::degradation_pct(faults, probes),
        probe_figures: figures::per_probe(faults, probes),
        recovery: figures::recovery(faults, probes),
    }
}

/// The resilience figures of a run, each computed in [`figures`].
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub availability_during_faults_pct: Option<f64>,
    pub error_rate_pct: Option<f64>,
    pub degradation_pct: Option<f64>,
    pub probe_figures: Vec<figures::ProbeFigures>,
    pub recovery: Vec<Recovery>,
}

impl Report {
    /// Reads a JSON report (`--json`, `--report`; at most
    /// [`crate::bounded_read::REPORT_LIMIT`] bytes); any failure is bad input naming the file.
    pub fn read_json(path: &Path) -> Result<Self> {
        let bad = |why: String| anyhow::Error::new(crate::error::BadInput::new(why));
        let text =
            crate::bounded_read::read_to_string(path, crate::bounded_read::REPORT_LIMIT, "report")
                .map_err(|e| bad(e.to_string()))?;
        Self::from_json_str(&text).map_err(|e| {
            bad(format!(
                "{}: not a kchaos experiment report ({e})",
                path.display()
            ))
        })
    }

    /// A report from its JSON text.
    pub fn from_json_str(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// The human summary.
    pub fn summary_text(&self) -> String {
        let s = &self.summary;
        let mut out = vec![format!("kchaos experiment: {}", self.scenario.title)];
        out.push(format!(
            "  ended: {} after {:.1}s{}",
            s.end_reason,
            self.duration_ms / 1e3,
            if s.completed { "" } else { " (not completed)" }
        ));
        if let Some(ms) = s.abort_to_detached_ms {
            out.push(format!("  abort to every fault detached: {ms:.1} ms"));
        }
        out.push(format!(
            "  steady state: {}",
            match s.steady_state_held {
                Some(true) if self.phases.before.is_some() => "held (before and after)".to_owned(),
                Some(true) => "held (after; no check before: steady_state.before is 0s)".to_owned(),
                Some(false) => "DID NOT HOLD".to_owned(),
                None => "not checked (no probes)".to_owned(),
            }
        ));
        if let Some(line) = figures::degraded_line(&self.hypothesis) {
            out.push(format!("  during faults: {line}"));
        }
        for h in &self.hypothesis {
            out.push(format!(
                "    {:<6} {:<16} {:>4} ok {}/{} ({:.1}%){}{}",
                h.phase,
                h.probe,
                if h.held { "yes" } else { "NO" },
                h.stats.ok,
                h.stats.count,
                h.stats.success_rate,
                h.stats
                    .p95_latency_ms
                    .map(|p| format!(", p95 {p:.1} ms"))
                    .unwrap_or_default(),
                h.why
                    .as_ref()
                    .filter(|_| !h.held)
                    .map(|w| format!(" - {w}"))
                    .unwrap_or_default()
            ));
        }
        out.push(format!("  injected events (kernel): {}", s.injected_events));
        for f in &self.faults {
            let when = match (f.start_ms, f.end_ms) {
                (Some(a), Some(b)) => format!("{:.1}s..{:.1}s", a / 1e3, b / 1e3),
                _ => "never armed".into(),
            };
            let what = if crate::kind::counts_events_of(&f.kind) {
                format!("injected {}", f.injected_events)
            } else {
                crate::kind::live_line_of(&f.kind, &f.counters).unwrap_or_default()
            };
            out.push(format!(
                "    {:<16} {:<10} {} {what}",
                f.name, when, f.description
            ));
        }
        let attempts: u64 = s.probe_figures.iter().map(|p| p.samples).sum();
        out.push(format!(
            "  probe attempts while a fault was armed: {attempts}{}",
            if attempts == 0 {
                " (the figures below are n/a)"
            } else {
                ""
            }
        ));
        for (label, value) in figures::rendered(s) {
            out.push(format!("  {label}: {value}"));
        }
        for p in &s.probe_figures {
            out.push(format!(
                "    {:<16} {} outside tolerance ({} failed, {} slower than the p95 bound, of {})",
                p.probe,
                figures::format_pct(p.degradation_pct),
                p.failed,
                p.slow,
                p.samples
            ));
        }
        for r in &self.rollbacks {
            out.push(format!(
                "  rollback '{}': {} in {:.0} ms",
                r.name,
                r.exit_code
                    .map(|c| format!("exit {c}"))
                    .unwrap_or_else(|| "did not finish".into()),
                r.duration_ms
            ));
        }
        if let Some(why) = &s.abort_reason {
            out.push(format!("  abort reason: {why}"));
        }
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, ok: bool) -> ProbeSample {
        ProbeSample {
            t_ms: t,
            phase: if t < 1000.0 {
                "before"
            } else if t < 3000.0 {
                "during"
            } else {
                "after"
            }
            .into(),
            ok,
            latency_ms: 1.0,
            detail: String::new(),
        }
    }

    #[test]
    fn availability_error_rate_and_mttr() {
        let fault = FaultRecord {
            name: "f".into(),
            start_ms: Some(1000.0),
            end_ms: Some(2000.0),
            ..FaultRecord::default()
        };
        // ok before; 1000-2000 (the fault) half fail; 2000-2600 still failing; ok from 2600.
        let results: Vec<ProbeSample> = (0..40)
            .map(|i| {
                let t = i as f64 * 100.0;
                let ok = !(1000.0..2600.0).contains(&t) || (t < 2000.0 && i % 2 == 0);
                sample(t, ok)
            })
            .collect();
        let probe = ProbeRecord {
            name: "p".into(),
            check: String::new(),
            from_target: None,
            tolerance: Tolerance {
                success_rate: 100.0,
                p95_latency: None,
                window: std::time::Duration::from_secs(1),
            },
            results,
        };
        let o = outcome(&[fault], std::slice::from_ref(&probe));
        assert_eq!(o.availability_during_faults_pct, Some(50.0));
        // The same attempts: those that started in the fault's window (1000..2000).
        assert_eq!(o.error_rate_pct, Some(50.0));
        assert_eq!(o.degradation_pct, Some(50.0));
        assert_eq!(o.recovery[0].mttr_ms, Some(600.0));
        let phases = Phases {
            before: Some((0.0, 1000.0)),
            during: Some((1000.0, 3000.0)),
            after: Some((3000.0, 4000.0)),
        };
        let h = hypotheses(&[probe], &phases);
        let held: Vec<(&str, bool)> = h.iter().map(|h| (h.phase.as_str(), h.held)).collect();
        assert_eq!(held, [("before", true), ("during", false), ("after", true)]);
    }
}
