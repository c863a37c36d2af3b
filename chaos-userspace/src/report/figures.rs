//! The resilience figures of a run, each defined here once. The text summary, the JSON report, the
//! HTML page and the JUnit file render the values these functions computed (kept in the report's
//! [`super::Summary`]); none of them computes a figure of its own.
//!
//! The samples they count are probe attempts. An attempt is *during faults* when it started while at
//! least one fault was armed (`start_ms <= t < end_ms` of some fault). An attempt is *outside
//! tolerance* when it failed, or when it succeeded slower than its probe's `p95_latency` bound (a single
//! attempt cannot break a percentile; an attempt slower than the bound is what pushes the p95 over it).
//!
//! | figure | formula |
//! |---|---|
//! | availability during faults | ok attempts during faults / attempts during faults × 100 |
//! | error rate while faults ran | failed attempts during faults / attempts during faults × 100 (= 100 − availability) |
//! | degradation | attempts during faults outside tolerance / attempts during faults × 100 (≥ error rate) |
//! | time to recover (per fault) | from the fault's end to the first attempt after the last attempt outside tolerance, max over the probes watching it |

use super::{FaultRecord, Hypothesis, ProbeRecord, ProbeSample, Recovery, Summary};
use crate::experiment::scenario::Tolerance;

/// One probe's figures over the attempts during faults.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeFigures {
    pub probe: String,
    /// Attempts during faults.
    pub samples: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Of those, succeeded slower than the probe's `p95_latency` bound.
    pub slow: u64,
    /// `(failed + slow) / samples × 100`; None without samples.
    pub degradation_pct: Option<f64>,
}

/// The windows in which faults were armed, ms from the start of the run.
pub fn armed_windows(faults: &[FaultRecord]) -> Vec<(f64, f64)> {
    faults
        .iter()
        .filter_map(|f| Some((f.start_ms?, f.end_ms?)))
        .collect()
}

/// Whether the attempt started while a fault was armed.
pub fn during_faults(sample: &ProbeSample, windows: &[(f64, f64)]) -> bool {
    windows
        .iter()
        .any(|(a, b)| sample.t_ms >= *a && sample.t_ms < *b)
}

/// Whether one attempt is outside its probe's tolerance: it failed, or it took longer than the
/// `p95_latency` bound.
pub fn outside_tolerance(sample: &ProbeSample, tolerance: &Tolerance) -> bool {
    !sample.ok
        || tolerance
            .p95_latency
            .is_some_and(|max| sample.latency_ms > max.as_secs_f64() * 1e3)
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| 100.0 * part as f64 / whole as f64)
}

/// Availability during faults: ok attempts during faults / attempts during faults × 100, over every
/// probe. None when no attempt started while a fault was armed.
pub fn availability_pct(faults: &[FaultRecord], probes: &[ProbeRecord]) -> Option<f64> {
    let (ok, n) = counts(faults, probes, |s, _| s.ok);
    share(ok, n)
}

/// Error rate while faults ran: failed attempts during faults / attempts during faults × 100, over
/// every probe; the same attempts as [`availability_pct`], so the two add up to 100.
pub fn error_rate_pct(faults: &[FaultRecord], probes: &[ProbeRecord]) -> Option<f64> {
    let (failed, n) = counts(faults, probes, |s, _| !s.ok);
    share(failed, n)
}

/// Degradation: attempts during faults outside tolerance ([`outside_tolerance`]) / attempts during
/// faults × 100, over every probe. At least the error rate (every failure is outside tolerance).
pub fn degradation_pct(faults: &[FaultRecord], probes: &[ProbeRecord]) -> Option<f64> {
    let (out, n) = counts(faults, probes, outside_tolerance);
    share(out, n)
}

/// [`degradation_pct`] per probe, with its parts.
pub fn per_probe(faults: &[FaultRecord], probes: &[ProbeRecord]) -> Vec<ProbeFigures> {
    let windows = armed_windows(faults);
    probes
        .iter()
        .map(|p| {
            let during: Vec<&ProbeSample> = p
                .results
                .iter()
                .filter(|s| during_faults(s, &windows))
                .collect();
            let failed = during.iter().filter(|s| !s.ok).count() as u64;
            let slow = during
                .iter()
                .filter(|s| s.ok && outside_tolerance(s, &p.tolerance))
                .count() as u64;
            let samples = during.len() as u64;
            ProbeFigures {
                probe: p.name.clone(),
                samples,
                failed,
                slow,
                degradation_pct: share(failed + slow, samples),
            }
        })
        .collect()
}

/// (attempts during faults for which `pred` holds, attempts during faults).
fn counts(
    faults: &[FaultRecord],
    probes: &[ProbeRecord],
    pred: impl Fn(&ProbeSample, &Tolerance) -> bool,
) -> (u64, u64) {
    let windows = armed_windows(faults);
    let (mut hit, mut n) = (0, 0);
    for p in probes {
        for s in p.results.iter().filter(|s| during_faults(s, &windows)) {
            n += 1;
            if pred(s, &p.tolerance) {
                hit += 1;
            }
        }
    }
    (hit, n)
}

/// The probes that watch a fault: those run from inside its targets, or every probe when none is.
fn watching<'a>(fault: &FaultRecord, probes: &'a [ProbeRecord]) -> Vec<&'a ProbeRecord> {
    let own: Vec<&ProbeRecord> = probes
        .iter()
        .filter(|p| {
            p.from_target
                .as_ref()
                .is_some_and(|t| fault.targets.contains(t))
        })
        .collect();
    if own.is_empty() {
        probes.iter().collect()
    } else {
        own
    }
}

/// When one probe recovered after a fault that ended at `end`, in ms after `end`: the start of its
/// first attempt after its last attempt outside tolerance, among the attempts that ended after `end`
/// and started before `until` (the next fault's start, or the run's end). 0 when none of them was
/// outside tolerance; None when no attempt followed the last one outside tolerance.
fn probe_recovery(p: &ProbeRecord, end: f64, until: f64) -> Option<f64> {
    let after: Vec<&ProbeSample> = p
        .results
        .iter()
        .filter(|s| s.t_ms + s.latency_ms > end && s.t_ms < until)
        .collect();
    let Some(last_bad) = after
        .iter()
        .rposition(|s| outside_tolerance(s, &p.tolerance))
    else {
        return Some(0.0);
    };
    after.get(last_bad + 1).map(|s| (s.t_ms - end).max(0.0))
}

/// Time to recover after each fault that ended: from its end to the first attempt after the last
/// attempt outside tolerance, the worst over the probes watching it (those run from inside its
/// targets, or every probe when none is). Looks until the next fault starts (or the run ends). `None`
/// for a fault: some probe had not recovered by then. Empty without probes (nothing says whether the
/// target recovered).
pub fn recovery(faults: &[FaultRecord], probes: &[ProbeRecord]) -> Vec<Recovery> {
    if probes.is_empty() {
        return Vec::new();
    }
    faults
        .iter()
        .filter_map(|f| {
            let end = f.end_ms?;
            let until = faults
                .iter()
                .filter_map(|g| g.start_ms)
                .filter(|s| *s > end)
                .fold(f64::INFINITY, f64::min);
            let mut worst = Some(0.0_f64);
            for p in watching(f, probes) {
                worst = match (worst, probe_recovery(p, end, until)) {
                    (Some(w), Some(r)) => Some(w.max(r)),
                    _ => None,
                };
            }
            Some(Recovery {
                fault: f.name.clone(),
                mttr_ms: worst,
            })
        })
        .collect()
}

/// A probe's success rate for the HTML's success line, at each attempt: over the attempts within its
/// tolerance's window before it, the window restarting at each fault's start and end and at each
/// recovery instant, so failures of one stretch do not bleed into the next and the line is back at
/// 100 % exactly from the recovery the summary gives. (t_ms, percent) per attempt.
pub fn success_line(
    p: &ProbeRecord,
    faults: &[FaultRecord],
    recovery: &[Recovery],
) -> Vec<(f64, f64)> {
    let window = p.tolerance.window.as_secs_f64() * 1e3;
    let mut cuts: Vec<f64> = faults
        .iter()
        .flat_map(|f| [f.start_ms, f.end_ms])
        .flatten()
        .collect();
    for f in faults {
        if let (Some(end), Some(r)) = (
            f.end_ms,
            recovery
                .iter()
                .find(|r| r.fault == f.name)
                .and_then(|r| r.mttr_ms),
        ) {
            cuts.push(end + r);
        }
    }
    // The stretch an instant falls in starts at the last cut at or before it.
    let stretch = |t: f64| cuts.iter().copied().filter(|c| *c <= t).fold(0.0, f64::max);
    p.results
        .iter()
        .map(|q| {
            let from = stretch(q.t_ms).max(q.t_ms - window);
            let in_window: Vec<&ProbeSample> = p
                .results
                .iter()
                .filter(|o| o.t_ms <= q.t_ms && (o.t_ms >= from && o.t_ms > q.t_ms - window))
                .collect();
            let rate = 100.0 * in_window.iter().filter(|o| o.ok).count() as f64
                / in_window.len().max(1) as f64;
            (q.t_ms, rate)
        })
        .collect()
}

/// The probes whose tolerance did not hold over the during phase: the service degraded under the
/// faults. Every surface flags them (the text's "during faults: DEGRADED", the HTML's tile, a failed
/// `<probe> during` case in JUnit).
pub fn degraded(hypothesis: &[Hypothesis]) -> Vec<&Hypothesis> {
    hypothesis
        .iter()
        .filter(|h| h.phase == "during" && !h.held)
        .collect()
}

/// What [`degraded`] found, in one line: "within tolerance", or "DEGRADED (probe: why; ...)".
pub fn degraded_line(hypothesis: &[Hypothesis]) -> Option<String> {
    if !hypothesis.iter().any(|h| h.phase == "during") {
        return None;
    }
    let bad = degraded(hypothesis);
    Some(if bad.is_empty() {
        "within tolerance".to_owned()
    } else {
        format!(
            "DEGRADED ({})",
            bad.iter()
                .map(|h| format!("{}: {}", h.probe, h.why.as_deref().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// A percentage as every surface prints it ("n/a" without attempts).
pub fn format_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}%"))
}

/// A time to recover as every surface prints it.
pub fn format_mttr(v: Option<f64>) -> String {
    v.map_or_else(|| "did not recover".to_owned(), |v| format!("{v:.0} ms"))
}

/// The figures of a summary as (label, value), in the order and the words every surface shows them:
/// the text summary prints `label: value`, the HTML a card each, the JUnit file a property each.
pub fn rendered(s: &Summary) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "availability during faults".to_owned(),
            format_pct(s.availability_during_faults_pct),
        ),
        (
            "error rate while faults ran".to_owned(),
            format_pct(s.error_rate_pct),
        ),
        (
            "degradation during faults".to_owned(),
            format_pct(s.degradation_pct),
        ),
    ];
    for r in &s.recovery {
        out.push((
            format!("time to recover after '{}'", r.fault),
            format_mttr(r.mttr_ms),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(t: f64, ok: bool, latency_ms: f64) -> ProbeSample {
        ProbeSample {
            t_ms: t,
            phase: "during".into(),
            ok,
            latency_ms,
            detail: String::new(),
        }
    }

    fn probe(results: Vec<ProbeSample>, p95: Option<u64>) -> ProbeRecord {
        ProbeRecord {
            name: "p".into(),
            check: String::new(),
            from_target: None,
            tolerance: Tolerance {
                success_rate: 100.0,
                p95_latency: p95.map(Duration::from_millis),
                window: Duration::from_secs(1),
            },
            results,
        }
    }

    fn fault(a: f64, b: f64) -> FaultRecord {
        FaultRecord {
            name: "f".into(),
            start_ms: Some(a),
            end_ms: Some(b),
            ..FaultRecord::default()
        }
    }

    #[test]
    fn availability_and_error_rate_count_the_same_attempts() {
        // The during phase runs past the fault (an abort): only attempts in the armed window count.
        let results = vec![
            sample(0.0, true, 1.0),
            sample(100.0, false, 1.0),
            sample(200.0, false, 1.0),
            sample(300.0, true, 1.0),
            sample(400.0, true, 1.0),
        ];
        let p = probe(results, None);
        let f = [fault(100.0, 250.0)];
        assert_eq!(availability_pct(&f, std::slice::from_ref(&p)), Some(0.0));
        assert_eq!(error_rate_pct(&f, std::slice::from_ref(&p)), Some(100.0));
        assert_eq!(availability_pct(&[], &[p]), None);
    }

    #[test]
    fn degradation_counts_slow_successes() {
        let results = vec![
            sample(0.0, true, 50.0),
            sample(100.0, true, 212.0),
            sample(200.0, true, 90.0),
            sample(300.0, false, 1000.0),
        ];
        let p = probe(results, Some(100));
        let f = [fault(0.0, 400.0)];
        assert_eq!(error_rate_pct(&f, std::slice::from_ref(&p)), Some(25.0));
        assert_eq!(degradation_pct(&f, std::slice::from_ref(&p)), Some(50.0));
        let pp = per_probe(&f, &[p]);
        assert_eq!((pp[0].samples, pp[0].failed, pp[0].slow), (4, 1, 1));
    }

    #[test]
    fn recovery_is_after_the_last_attempt_outside_tolerance() {
        // Fails at 2000, ok at 2100, fails again at 2200: recovered at 2300, not 2100.
        let ok = [0, 1, 2, 3, 4, 6, 8, 9];
        let results = (0..10)
            .map(|i| sample(1500.0 + 100.0 * i as f64, ok.contains(&i) || i < 5, 1.0))
            .collect::<Vec<_>>();
        let p = probe(results, None);
        let f = [fault(1000.0, 2000.0)];
        let r = recovery(&f, std::slice::from_ref(&p));
        // Attempts at 2000 (i=5) and 2200 (i=7) failed; the next after 2200 is 2300.
        assert_eq!(r[0].mttr_ms, Some(300.0));
        // The success line is 100 % from the recovery on.
        let line = success_line(&p, &f, &r);
        assert!(
            line.iter()
                .filter(|(t, _)| *t >= 2300.0)
                .all(|(_, v)| *v == 100.0)
        );
        assert!(line.iter().any(|(t, v)| *t == 2200.0 && *v < 100.0));
        // Healthy at the end and after: 0, and the line is 100 % right after the end.
        let p = probe(
            (0..10)
                .map(|i| sample(1500.0 + 100.0 * i as f64, i != 2, 1.0))
                .collect(),
            None,
        );
        let r = recovery(&f, std::slice::from_ref(&p));
        assert_eq!(r[0].mttr_ms, Some(0.0));
        let line = success_line(&p, &f, &r);
        assert!(
            line.iter()
                .filter(|(t, _)| *t >= 2000.0)
                .all(|(_, v)| *v == 100.0)
        );
        // Never recovered.
        let p = probe(vec![sample(2100.0, false, 1.0)], None);
        assert_eq!(recovery(&f, &[p])[0].mttr_ms, None);
    }
}
