//! The timeline of a run, computed before anything is attached: what happens when, and what would
//! attach where. `--dry-run` prints it; the report keeps it beside what really happened.

use std::{collections::HashMap, time::Duration};

use super::{scenario::Scenario, validate::ResolvedTarget};
use crate::units::format_duration;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlanStep {
    /// From the start of the run.
    pub at_ms: f64,
    pub what: String,
}

/// The most steps of one ramp the plan lists.
const MAX_RAMP_STEPS: u64 = 100;

/// The steps in time order. `targets` are the resolved cgroups (names only when not resolvable).
pub fn timeline(s: &Scenario, targets: &[ResolvedTarget]) -> Vec<PlanStep> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let before = s.steady_state.before;
    let mut steps = Vec::new();
    let probe_names: Vec<&str> = s
        .steady_state
        .probes
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    if probe_names.is_empty() {
        steps.push(PlanStep {
            at_ms: 0.0,
            what: "no steady-state probes".into(),
        });
    } else {
        steps.push(PlanStep {
            at_ms: 0.0,
            what: format!(
                "steady state before: probes {} for {}; all must hold or nothing is injected",
                probe_names.join(", "),
                format_duration(before)
            ),
        });
    }
    let by_name: HashMap<&str, &ResolvedTarget> =
        targets.iter().map(|t| (t.name.as_str(), t)).collect();
    let where_ = |names: &[String]| -> String {
        names
            .iter()
            .map(|n| match by_name.get(n.as_str()) {
                Some(t) => format!("{n} ({})", t.path.display()),
                None => n.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for f in &s.faults {
        steps.push(PlanStep {
            at_ms: ms(before + f.at),
            what: if f.kind.is_instant() {
                format!("'{}' [{}] on {}", f.name, f.describe(), where_(&f.targets))
            } else {
                format!(
                    "attach + arm '{}' [{}] on {} for {}",
                    f.name,
                    f.describe(),
                    where_(&f.targets),
                    format_duration(f.duration)
                )
            },
        });
        for r in &f.ramps {
            let step = r.step.max(Duration::from_millis(100));
            let span = r.over.min(f.duration);
            // A ramp of days in 100ms steps has millions of steps: the plan shows at most
            // MAX_RAMP_STEPS of them, evenly spaced, and the end.
            let count = u64::try_from(span.as_nanos() / step.as_nanos()).unwrap_or(u64::MAX);
            let stride = count.div_ceil(MAX_RAMP_STEPS).max(1);
            let mut last = None;
            let shown = (0..=count)
                .step_by(usize::try_from(stride).unwrap_or(usize::MAX))
                .chain([count]);
            for k in shown {
                let t = step.as_nanos().saturating_mul(u128::from(k));
                let t = Duration::from_nanos(u64::try_from(t).unwrap_or(u64::MAX));
                let v = r.value_at(t);
                if last != Some(v) {
                    steps.push(PlanStep {
                        at_ms: ms(before + f.at + t),
                        what: format!("'{}' {} = {}", f.name, r.param, r.unit.format(v)),
                    });
                    last = Some(v);
                }
            }
        }
        if let Some(what) = f.kind.end_step(&f.name) {
            steps.push(PlanStep {
                at_ms: ms(before + f.end()),
                what,
            });
        }
    }
    let method_end = before + s.method_length();
    if !probe_names.is_empty() {
        steps.push(PlanStep {
            at_ms: ms(method_end),
            what: format!(
                "steady state after: probes for {} (recovery; MTTR per fault)",
                format_duration(s.steady_state.after)
            ),
        });
    }
    for r in &s.rollbacks {
        steps.push(PlanStep {
            at_ms: ms(s.total_length()),
            what: format!("rollback '{}': {}", r.name, shell_words(&r.argv)),
        });
    }
    steps.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    steps
}

/// argv as one line (a `sh -c` script shown as the script).
pub fn shell_words(argv: &[String]) -> String {
    if argv.len() == 3 && argv[0] == "/bin/sh" && argv[1] == "-c" {
        return argv[2].clone();
    }
    argv.join(" ")
}

/// The plan as text, one step a line.
pub fn render(steps: &[PlanStep]) -> String {
    steps
        .iter()
        .map(|s| format!("  {:>8.1}s  {}", s.at_ms / 1e3, s.what))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{fields::Vars, scenario};

    #[test]
    fn steps_in_order_with_ramp_values() {
        let s = scenario::parse(
            "s.yaml",
            "title: t\ntargets: [{name: app, cgroup: a}]\nsteady_state: {before: 2s, after: 1s, probes: [{name: p, tcp: \"127.0.0.1:1\"}]}\nfaults:\n  - {name: f, at: 1s, for: 3s, net: {}, ramp: {percent: {from: 0, to: 30, over: 3s}}}\nrollbacks: [{command: \"echo hi\"}]\n",
            &Vars::default(),
        )
        .unwrap();
        let steps = timeline(&s, &[]);
        let text = render(&steps);
        let at: Vec<f64> = steps.iter().map(|s| s.at_ms).collect();
        assert_eq!(
            at,
            [
                0.0, 3000.0, 3000.0, 4000.0, 5000.0, 6000.0, 6000.0, 6000.0, 7000.0
            ],
            "{text}"
        );
        assert!(text.contains("'f' percent = 20%"), "{text}");
        assert!(text.contains("rollback 'rollback-1': echo hi"), "{text}");
    }
}
