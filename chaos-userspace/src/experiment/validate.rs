//! Checks across fields (a fault outside the budget, faults that conflict), and resolving the targets
//! to cgroup directories. Needs no privileges: it only reads the scenario, /proc and the cgroup tree.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use super::{
    diagnostic::Diagnostic,
    fields::MAX_ERRORS,
    scenario::{Scenario, TargetDecl, TargetRef},
};
use crate::{
    engine::targets::{self, Target, TargetArgs},
    error::BadInput,
    kind::{Unit, unit_of},
    units::format_duration,
};

/// Errors across fields; empty when the scenario is consistent.
pub fn check(s: &Scenario) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let mut err = |mark, field: String, message: String| {
        if errors.len() <= MAX_ERRORS {
            errors.push(Diagnostic::new(&s.file, mark, &field, message));
        }
    };
    if let Some(b) = &s.budget {
        if let Some(max) = b.max_duration {
            for (i, f) in s.faults.iter().enumerate() {
                let ends = s.steady_state.before + f.end();
                if ends > max {
                    err(
                        f.mark,
                        format!("faults[{i}]"),
                        format!(
                            "'{}' ends {} into the run (steady_state.before {} + at {} + for {}), outside \
                             budget.max_duration {}: allowed is a fault that ends within the budget",
                            f.name,
                            format_duration(ends),
                            format_duration(s.steady_state.before),
                            format_duration(f.at),
                            format_duration(f.duration),
                            format_duration(max)
                        ),
                    );
                }
            }
            if s.total_length() > max && s.steady_state.before + s.method_length() <= max {
                err(
                    b.mark,
                    "budget.max_duration".into(),
                    format!(
                        "the run takes {} (before + faults + after) but the budget allows {}: shorten \
                         steady_state.after or raise the budget",
                        format_duration(s.total_length()),
                        format_duration(max)
                    ),
                );
            }
        }
        for (i, f) in s.faults.iter().enumerate() {
            let mut values: Vec<(String, f64)> = f
                .kind
                .intensities()
                .into_iter()
                .map(|(p, v)| (p.to_owned(), v))
                .collect();
            for r in &f.ramps {
                values.push((r.param.clone(), r.from.max(r.to)));
            }
            for (param, value) in values {
                if let Some(&max) = b.max_intensity.get(&param)
                    && value > max + 1e-9
                {
                    let unit = unit_of(&param).unwrap_or(Unit::Percent);
                    err(
                        f.mark,
                        format!("faults[{i}].{}", f.kind.name()),
                        format!(
                            "'{}' reaches {param} {}, above budget.max_intensity.{param} {}: allowed is up to the budget",
                            f.name,
                            unit.format(value),
                            unit.format(max)
                        ),
                    );
                }
            }
        }
    }
    for (later, earlier, shared) in overlaps(s) {
        let (a, b) = (&s.faults[earlier], &s.faults[later]);
        if let Some(why) = a.kind.conflicts_with(&b.kind) {
            err(
                b.mark,
                format!("faults[{later}]"),
                format!(
                    "'{}' ({}..{}) overlaps '{}' ({}..{}) on target {}: {why}",
                    b.name,
                    format_duration(b.at),
                    format_duration(b.end()),
                    a.name,
                    format_duration(a.at),
                    format_duration(a.end()),
                    shared
                ),
            );
        }
    }
    super::scenario::capped(&s.file, errors)
}

/// Faults of one kind that overlap in time on a shared target: `(later, earlier, targets)`, by index,
/// each fault reported against one fault that was already running when it started. (Only faults of
/// the same kind can conflict: see `FaultKind::conflicts_with`.)
///
/// A sweep per target and kind over the faults sorted by start, so n log n in the fault-target pairs
/// instead of all pairs: a fault starts inside another's window exactly when the latest end among the
/// faults that started before it lies past its start, and each such fault is reported.
fn overlaps(s: &Scenario) -> Vec<(usize, usize, String)> {
    // Every (target, kind, start, fault) once, sorted: each target's faults of one kind, by start.
    let mut hits: Vec<(&str, &str, Duration, usize)> = s
        .faults
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            f.targets
                .iter()
                .map(move |t| (t.as_str(), f.kind.name(), f.at, i))
        })
        .collect();
    hits.sort_unstable();
    hits.dedup();
    let mut found: BTreeMap<(usize, usize), Vec<&str>> = BTreeMap::new();
    // The fault with the latest end among those of this target and kind started so far.
    let mut open: Option<usize> = None;
    for (k, &(target, kind, _, i)) in hits.iter().enumerate() {
        if k == 0 || (hits[k - 1].0, hits[k - 1].1) != (target, kind) {
            open = None;
        }
        let f = &s.faults[i];
        if let Some(o) = open
            && s.faults[o].end() > f.at
            && s.faults[o].at < f.end()
        {
            found.entry((i, o)).or_default().push(target);
        }
        if open.is_none_or(|o| f.end() > s.faults[o].end()) {
            open = Some(i);
        }
    }
    found
        .into_iter()
        .map(|((later, earlier), mut targets)| {
            const SHOWN: usize = 10;
            targets.sort_unstable();
            let mut text = targets[..targets.len().min(SHOWN)].join(", ");
            if targets.len() > SHOWN {
                text += &format!(", ... ({} in all)", targets.len());
            }
            (later, earlier, text)
        })
        .collect()
}

/// A scenario target and the cgroup it resolved to.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ResolvedTarget {
    pub name: String,
    pub path: PathBuf,
    pub id: u64,
    pub origin: String,
}

impl ResolvedTarget {
    pub fn target(&self) -> Target {
        Target {
            path: self.path.clone(),
            id: self.id,
            origin: self.origin.clone(),
        }
    }
}

/// Resolves one target to its cgroup, with the same refusals as `kchaos net` (the root cgroup, a cgroup
/// holding kchaos, unless `allow_host`).
pub fn resolve_target(t: &TargetDecl, allow_host: bool) -> Result<ResolvedTarget, BadInput> {
    let mut args = TargetArgs {
        allow_host,
        ..TargetArgs::default()
    };
    match &t.what {
        TargetRef::Cgroup(p) => args.cgroups.push(p.clone()),
        TargetRef::Pid(pid) => args.pids.push(*pid),
        TargetRef::Container { name, runtime } => {
            args.containers.push(name.clone());
            args.runtime = Some(runtime.name().to_owned());
        }
        TargetRef::Pod { pod, container } => {
            args.pod = Some(pod.clone());
            args.containers.extend(container.clone());
        }
    }
    let found =
        targets::resolve(&args).map_err(|e| BadInput::new(format!("target '{}': {e}", t.name)))?;
    let first = found
        .into_iter()
        .next()
        .ok_or_else(|| BadInput::new(format!("target '{}' resolved to nothing", t.name)))?;
    Ok(ResolvedTarget {
        name: t.name.clone(),
        path: first.path,
        id: first.id,
        origin: first.origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{fields::Vars, scenario};

    fn load(text: &str) -> Scenario {
        let mut v = Vars::default();
        v.cli.insert("cgroup".into(), "x".into());
        scenario::parse("s.yaml", text, &v).unwrap()
    }

    const TWO: &str = r#"
title: two faults
targets: [{name: a, cgroup: "${cgroup}"}, {name: b, cgroup: y}]
steady_state: {before: 1s, after: 1s}
faults:
  - {name: one, at: 0s, for: 5s, net: {percent: 10}}
  - {name: two, at: 3s, for: 5s, targets: [a], net: {delay: 10ms}}
budget: {max_duration: 20s, max_intensity: {percent: 20%}}
"#;

    #[test]
    fn overlapping_net_faults_on_one_target_conflict() {
        let e = check(&load(TWO));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].field.as_str()), (7, "faults[1]"));
        assert!(e[0].message.contains("overlaps 'one'") && e[0].message.contains("target a"));
        // Back to back, or on different targets: fine.
        assert!(check(&load(&TWO.replace("at: 3s", "at: 5s"))).is_empty());
        let apart = TWO
            .replace("targets: [a]", "targets: [b]")
            .replace("{name: one,", "{name: one, targets: [a],");
        assert!(check(&load(&apart)).is_empty());
    }

    #[test]
    fn each_fault_starting_inside_another_is_reported_once() {
        // a 0-10s, b 1-20s, c 3-4s, d 25-26s on one target; e (syscall) overlaps all but is
        // another kind; f lists the target twice.
        let text = r#"
title: sweep
targets: [{name: t, cgroup: x}]
faults:
  - {name: a, at: 0s, for: 10s, net: {drop: 1}}
  - {name: b, at: 1s, for: 19s, net: {drop: 1}}
  - {name: c, at: 3s, for: 1s, net: {drop: 1}}
  - {name: d, at: 25s, for: 1s, net: {drop: 1}}
  - {name: e, at: 0s, for: 30s, syscall: {syscalls: [connect], errno: EPERM}}
  - {name: f, at: 40s, for: 1s, targets: [t, t], net: {drop: 1}}
"#;
        let e = check(&load(text));
        let found: Vec<(&str, &str)> = e
            .iter()
            .map(|d| {
                let overlaps = d.message.split("overlaps '").nth(1).unwrap_or("");
                (
                    d.field.as_str(),
                    &overlaps[..overlaps.find('\'').unwrap_or(0)],
                )
            })
            .collect();
        assert_eq!(found, [("faults[1]", "a"), ("faults[2]", "b")], "{e:?}");
        assert!(e[0].message.contains("on target t:"), "{e:?}");
    }

    #[test]
    fn a_fault_outside_the_budget() {
        let e = check(&load(&TWO.replace("max_duration: 20s", "max_duration: 7s")));
        assert!(
            e.iter()
                .any(|d| d.field == "faults[1]"
                    && d.message.contains("outside budget.max_duration 7s")),
            "{e:?}"
        );
        let e = check(&load(&TWO.replace("percent: 10}", "percent: 30}")));
        assert!(
            e.iter().any(|d| d.field == "faults[0].net"
                && d.message
                    .contains("percent 30%, above budget.max_intensity.percent 20%")),
            "{e:?}"
        );
        let e = check(&load(&TWO.replace("max_duration: 20s", "max_duration: 9s")));
        assert!(
            e.iter().any(|d| d.field == "budget.max_duration"),
            "the after phase does not fit: {e:?}"
        );
    }
}
