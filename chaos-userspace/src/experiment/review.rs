//! The safety review `validate` prints and `run` enforces: what could make an experiment hurt more than
//! it teaches (nothing watching, nothing to stop it, no bounds, too wide a target, no rollback where one
//! is needed). Each finding has a risk level; `run` refuses high ones unless `--accept-risk`.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::Path,
};

use super::{
    scenario::{Scenario, TargetRef},
    validate::ResolvedTarget,
};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad (not write_str), so "{:>6}" lines the levels up.
        f.pad(match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "HIGH",
        })
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub risk: Risk,
    /// A stable name for the check (scripts and tests match on it).
    pub code: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>6}] {}: {}", self.risk, self.code, self.message)
    }
}

fn finding(risk: Risk, code: &str, message: impl Into<String>) -> Finding {
    Finding {
        risk,
        code: code.to_owned(),
        message: message.into(),
    }
}

/// Reviews a scenario. `resolved` holds the targets that could be resolved here, `unresolved` the
/// others with why (validate runs on machines where the target may not exist).
pub fn review(
    s: &Scenario,
    resolved: &[ResolvedTarget],
    unresolved: &[(String, String)],
    cgroup_root: Option<&Path>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if s.steady_state.probes.is_empty() {
        out.push(finding(
            Risk::High,
            "no-steady-state-probe",
            "no steady_state probe: nothing checks the system is healthy before injecting, or notices \
             when it is not; add steady_state.probes",
        ));
    } else if s.steady_state.before.is_zero() {
        out.push(finding(
            Risk::Medium,
            "no-before-check",
            "steady_state.before is 0s: faults start without checking the system is healthy first",
        ));
    } else if s
        .steady_state
        .probes
        .iter()
        .all(|p| p.from_target.is_none())
    {
        out.push(finding(
            Risk::Low,
            "probes-outside-target",
            "no probe runs from_target: network faults hit only the target's own sockets, so these \
             probes see them only through a service the target provides",
        ));
    }
    if s.abort.is_empty() {
        out.push(finding(
            Risk::High,
            "no-abort-rule",
            "no abort rule: a violated steady state will not stop the faults early; add \
             abort: [{probe: NAME, for: DUR}]",
        ));
    }
    match &s.budget {
        None => out.push(finding(
            Risk::High,
            "no-budget",
            "no budget: nothing caps the run's duration, its injected events or its intensity; add \
             budget: {max_duration, max_injected_events, max_intensity}",
        )),
        Some(b) => {
            if b.max_duration.is_none() {
                out.push(finding(
                    Risk::Medium,
                    "no-max-duration",
                    "the budget has no max_duration: the run is bounded only by its timeline",
                ));
            }
            if b.max_injected_events.is_none() {
                out.push(finding(
                    Risk::Low,
                    "no-event-budget",
                    "the budget has no max_injected_events",
                ));
            }
        }
    }
    // The root cgroup, however spelled, is the whole host: high risk whether or not it resolves here.
    let roots: Vec<&str> = s
        .targets
        .iter()
        .filter_map(|t| match &t.what {
            TargetRef::Cgroup(p) if crate::engine::targets::names_root(p, cgroup_root) => {
                out.push(finding(
                    Risk::High,
                    "wide-target",
                    format!(
                        "target '{}' (cgroup: {p}) is the root cgroup: the whole host, every process \
                         on it is hit; running it takes allow_host: true and --accept-risk",
                        t.name
                    ),
                ));
                Some(t.name.as_str())
            }
            _ => None,
        })
        .collect();
    for (name, why) in unresolved
        .iter()
        .filter(|(n, _)| !roots.contains(&n.as_str()))
    {
        if why.ends_with(crate::engine::targets::ALLOW_HOST_HINT) {
            out.push(finding(
                Risk::High,
                "host-critical-target",
                format!(
                    "{why} (target '{name}' is host-critical: running it takes allow_host: true and \
                     --accept-risk)"
                ),
            ));
            continue;
        }
        out.push(finding(
            Risk::Medium,
            "target-not-found",
            format!(
                "{why} (target '{name}' cannot be resolved on this machine; `run` resolves it again \
                 and refuses if it is still missing)"
            ),
        ));
    }
    for t in resolved
        .iter()
        .filter(|t| !roots.contains(&t.name.as_str()))
    {
        if let Some(root) = cgroup_root
            && let Some(width) = wide_target(&t.path, root)
        {
            out.push(finding(
                Risk::High,
                "wide-target",
                format!("target '{}' ({}) {width}", t.name, t.path.display()),
            ));
        }
        // Allowed (allow_host), a host-critical target is still one; without it, resolving refused
        // such a target already.
        if s.allow_host
            && let Some(root) = cgroup_root
            && t.path != root
            && let Some(held) = crate::engine::targets::host_critical(&t.path, root)
        {
            out.push(finding(
                Risk::High,
                "host-critical-target",
                format!(
                    "target '{}' ({}) holds {held}; running it takes allow_host: true and \
                     --accept-risk",
                    t.name,
                    t.path.display()
                ),
            ));
        }
    }
    // What a kind needs to know about the cgroups it hits (e.g. stress memory without a limit).
    if let Some(root) = cgroup_root {
        let by_name: HashMap<&str, &ResolvedTarget> =
            resolved.iter().map(|t| (t.name.as_str(), t)).collect();
        for f in &s.faults {
            for t in f.targets.iter().filter_map(|n| by_name.get(n.as_str())) {
                for (risk, code, why) in f.kind.target_findings(&t.path, root) {
                    out.push(finding(
                        risk,
                        code,
                        format!("fault '{}' on target '{}': {why}", f.name, t.name),
                    ));
                }
            }
        }
    }
    // The targets no other target contains (looked up by ancestor, not against every other target).
    let paths: HashSet<&Path> = resolved.iter().map(|t| t.path.as_path()).collect();
    let trees: Vec<&ResolvedTarget> = resolved
        .iter()
        .filter(|t| !t.path.ancestors().skip(1).any(|a| paths.contains(a)))
        .collect();
    if trees.len() > 1 {
        out.push(finding(
            Risk::Medium,
            "several-trees",
            format!(
                "the targets span {} separate cgroup trees ({}): more than one cgroup tree is hit",
                trees.len(),
                trees
                    .iter()
                    .take(10)
                    .map(|t| t.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if trees.len() > 10 { ", ..." } else { "" }
            ),
        ));
    }
    for t in &s.targets {
        if let TargetRef::Pid(pid) = t.what {
            out.push(finding(
                Risk::Low,
                "pid-target",
                format!(
                    "target '{}' is pid {pid}: the fault hits its whole cgroup, every process in it",
                    t.name
                ),
            ));
        }
    }
    if s.rollbacks.is_empty() {
        let mut advised: Vec<(Risk, String)> = s
            .faults
            .iter()
            .filter_map(|f| f.kind.rollback_advice())
            .collect();
        advised.sort_by_key(|a| std::cmp::Reverse(a.0));
        advised.dedup_by(|a, b| a.1 == b.1);
        for (risk, why) in advised {
            out.push(finding(
                risk,
                "no-rollback",
                format!("no rollbacks: {why}; add rollbacks: [{{command: ...}}]"),
            ));
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.risk));
    out
}

/// Why a cgroup is wider than one container's tree: the root, or a top-level slice that holds others.
fn wide_target(path: &Path, root: &Path) -> Option<String> {
    if path == root {
        return Some("is the root cgroup: the whole host".into());
    }
    let rel = path.strip_prefix(root).ok()?;
    let name = rel.to_string_lossy();
    if rel.components().count() == 1 && name.ends_with(".slice") {
        return Some(format!(
            "is the top-level slice {name}: every service or container under it is hit"
        ));
    }
    None
}

/// The highest risk found, if any.
pub fn highest(findings: &[Finding]) -> Option<Risk> {
    findings.iter().map(|f| f.risk).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{fields::Vars, scenario};
    use std::path::PathBuf;

    fn load(text: &str) -> Scenario {
        scenario::parse("s.yaml", text, &Vars::default()).unwrap()
    }

    fn codes(f: &[Finding]) -> Vec<(Risk, &str)> {
        f.iter().map(|f| (f.risk, f.code.as_str())).collect()
    }

    #[test]
    fn a_bare_scenario_is_high_risk() {
        let s = load(
            "title: t\ntargets: [{cgroup: app}]\nfaults: [{for: 1s, net: {partition: 10.0.0.1}}]\n",
        );
        let f = review(&s, &[], &[], None);
        assert_eq!(
            codes(&f),
            [
                (Risk::High, "no-steady-state-probe"),
                (Risk::High, "no-abort-rule"),
                (Risk::High, "no-budget"),
                (Risk::Low, "no-rollback"),
            ]
        );
        assert_eq!(highest(&f), Some(Risk::High));
    }

    #[test]
    fn stress_memory_without_a_limit_is_a_finding() {
        let s = load(
            "title: t\ntargets: [{name: a, cgroup: a}]\nfaults: [{for: 1s, stress: {memory: 64M}}]\n",
        );
        let dir = std::env::temp_dir().join(format!("kchaos-review-{}", std::process::id()));
        let target = dir.join("a");
        std::fs::create_dir_all(&target).unwrap();
        let t = ResolvedTarget {
            name: "a".into(),
            path: target.clone(),
            id: 0,
            origin: String::new(),
        };
        let f = review(&s, std::slice::from_ref(&t), &[], Some(&dir));
        assert!(
            codes(&f).contains(&(Risk::Medium, "stress-memory-unlimited")),
            "{f:?}"
        );
        std::fs::write(target.join("memory.max"), "33554432\n").unwrap();
        let f = review(&s, std::slice::from_ref(&t), &[], Some(&dir));
        assert!(
            codes(&f).contains(&(Risk::High, "stress-memory-over-limit")),
            "{f:?}"
        );
        std::fs::write(target.join("memory.max"), "1073741824\n").unwrap();
        let f = review(&s, &[t], &[], Some(&dir));
        assert!(
            !codes(&f).iter().any(|c| c.1.starts_with("stress-memory")),
            "{f:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_root_cgroup_is_high_risk_however_spelled() {
        let root = PathBuf::from("/sys/fs/cgroup/unified");
        for spelled in ["/", ".", "/sys/fs/cgroup/unified"] {
            let s = load(&format!(
                "title: t\ntargets: [{{name: host, cgroup: \"{spelled}\"}}]\nfaults: [{{for: 1s, net: {{drop: 1}}}}]\n"
            ));
            // Unresolved here (no allow_host), it is still the whole host, rated high, once.
            let why = ("host".to_owned(), "that is the root cgroup".to_owned());
            let f = review(&s, &[], std::slice::from_ref(&why), Some(&root));
            let wide: Vec<&Finding> = f.iter().filter(|f| f.code == "wide-target").collect();
            assert_eq!(wide.len(), 1, "{spelled}: {f:?}");
            assert_eq!(wide[0].risk, Risk::High);
            assert!(
                wide[0].message.contains("the whole host"),
                "{}",
                wide[0].message
            );
            assert!(
                !codes(&f).contains(&(Risk::Medium, "target-not-found")),
                "{f:?}"
            );
            // Resolved (allow_host), the same one finding.
            let t = ResolvedTarget {
                name: "host".into(),
                path: root.clone(),
                id: 0,
                origin: String::new(),
            };
            let f = review(&s, &[t], &[], Some(&root));
            assert_eq!(
                f.iter().filter(|f| f.code == "wide-target").count(),
                1,
                "{f:?}"
            );
        }
        // A cgroup below the root is not.
        let s = load(
            "title: t\ntargets: [{name: a, cgroup: /app}]\nfaults: [{for: 1s, net: {drop: 1}}]\n",
        );
        let f = review(&s, &[], &[], Some(&root));
        assert!(!f.iter().any(|f| f.code == "wide-target"), "{f:?}");
    }

    #[test]
    fn wide_and_scattered_targets() {
        let s = load("title: t\ntargets: [{cgroup: a}]\nfaults: [{for: 1s, net: {drop: 1}}]\n");
        let root = PathBuf::from("/sys/fs/cgroup");
        let t = |name: &str, p: &str| ResolvedTarget {
            name: name.into(),
            path: root.join(p),
            id: 0,
            origin: String::new(),
        };
        let f = review(
            &s,
            &[t("a", "system.slice"), t("b", "x/y"), t("c", "x/y/z")],
            &[],
            Some(&root),
        );
        assert!(codes(&f).contains(&(Risk::High, "wide-target")), "{f:?}");
        assert!(
            codes(&f).contains(&(Risk::Medium, "several-trees")),
            "{f:?}"
        );
        let f = review(&s, &[t("b", "x/y"), t("c", "x/y/z")], &[], Some(&root));
        assert!(
            !codes(&f).iter().any(|c| c.1 == "several-trees"),
            "nested is one tree"
        );
    }
}
