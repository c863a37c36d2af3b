//! The `pause` kind: every process of the targets frozen (cgroup.freeze) for the fault's window and
//! thawed at its end. A guard process thaws if kchaos dies; the journal lets `kchaos stop` thaw if
//! both die.

pub mod freeze;

use std::{path::Path, time::Duration};

use anyhow::Result;

use self::freeze::{Freeze, check_freezable};
use crate::{
    engine::cgroup::holds_this_process,
    engine::journal::Journal,
    engine::targets::Target,
    error::BadInput,
    experiment::{
        fields::Ctx,
        review::Risk,
        yaml::{Node, Value},
    },
    kind::{Active, Counters, Kind, MetricMap, TargetFinding},
};

pub const EXAMPLES: &str = "Examples:\n  kchaos pause --cgroup app --duration 10s\n  \
kchaos pause --pid 4242 --duration 2m    (Ctrl-C or `kchaos stop` thaws sooner)";

/// What a pause fault does; it has no parameters (its window is the fault's `at` and `for`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PauseSpec {}

/// `kchaos pause` has no flags of its own: the targets and `--duration` say it all.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PauseArgs {}

/// How long arming waits for the kernel's "frozen 1": long enough for a tree of busy processes, short
/// enough not to hold up the timeline (the ticks look for it after that).
const ARM_SETTLE: Duration = Duration::from_millis(200);

impl Kind for PauseSpec {
    const NAME: &'static str = "pause";
    const COUNTS_EVENTS: bool = false;
    const YAML_FIELDS: &'static [&'static str] = &[];
    const REQUIRES_DURATION: bool = true;
    const METRICS: &'static [MetricMap] = &[
        MetricMap::gauge(
            "frozen",
            "pause_frozen",
            "1 while the target cgroups are frozen.",
            1.0,
        ),
        MetricMap::gauge(
            "frozen_ms",
            "pause_frozen_seconds",
            "How long the target cgroups have been frozen.",
            1e-3,
        )
        .total(),
        MetricMap::gauge(
            "processes",
            "pause_processes",
            "Processes in the frozen cgroups.",
            1.0,
        ),
        MetricMap::gauge(
            "freeze_us",
            "pause_freeze_latency_seconds",
            "How long the kernel took to freeze the cgroups.",
            1e-6,
        ),
        MetricMap::gauge(
            "thaw_us",
            "pause_thaw_latency_seconds",
            "How long the kernel took to thaw the cgroups.",
            1e-6,
        ),
    ];
    type Args = PauseArgs;
    type Active = PauseFault;

    fn from_args(_args: &PauseArgs) -> Result<Self, BadInput> {
        Ok(PauseSpec {})
    }

    fn from_yaml(ctx: &mut Ctx, node: &Node, path: &str, _ramped: &[String]) -> Option<Self> {
        parse(ctx, node, path)
    }

    fn describe(&self) -> String {
        "freeze every process of the target (cgroup.freeze), thaw at the end".into()
    }

    fn overlap_conflict(&self) -> Option<&'static str> {
        Some(
            "two pauses of one target at once would share one cgroup.freeze, and the first to end \
             would thaw it under the other: merge them into one, or move one so they do not overlap",
        )
    }

    fn target_findings(&self, target: &Path, _cgroup_root: &Path) -> Vec<TargetFinding> {
        target_findings(target)
    }

    fn end_step(&self, name: &str) -> Option<String> {
        Some(format!(
            "thaw '{name}' (its guard thaws if kchaos dies; `kchaos stop` if both die)"
        ))
    }

    fn preflight(&self, targets: &[Target]) -> Result<(), BadInput> {
        targets.iter().try_for_each(|t| check_freezable(&t.path))
    }

    /// Starts the thaw guard and journals the targets; nothing is frozen yet.
    fn prepare(&self, targets: &[Target], journal: &mut Journal) -> Result<PauseFault> {
        let paths: Vec<_> = targets.iter().map(|t| t.path.clone()).collect();
        Ok(PauseFault {
            freeze: Freeze::prepare(&paths, journal)?,
            attachments: Vec::new(),
            thaw_took: None,
        })
    }

    /// Each process frozen is one event.
    fn injected_events(counters: &Counters) -> u64 {
        counters.get("processes").copied().unwrap_or(0)
    }

    fn live_line(counters: &Counters) -> String {
        let n = |k: &str| counters.get(k).copied().unwrap_or(0);
        format!(
            "{} process(es) {} {:.2}s",
            n("processes"),
            if n("frozen") == 1 {
                "frozen for"
            } else {
                "were frozen for"
            },
            n("frozen_ms") as f64 / 1e3
        )
    }
}

/// Reads `pause: {}` (or a bare `pause:`).
pub fn parse(ctx: &mut Ctx, node: &Node, path: &str) -> Option<PauseSpec> {
    match &node.value {
        Value::Null => Some(PauseSpec {}),
        Value::Map(entries) if entries.is_empty() => Some(PauseSpec {}),
        Value::Map(entries) => {
            for (k, _) in entries {
                ctx.err(
                    k.mark,
                    &crate::experiment::fields::join(path, &k.name),
                    format!(
                        "unknown field '{}': pause has no fields (it freezes the targets for the \
                         fault's for): write pause: {{}}",
                        k.name
                    ),
                );
            }
            None
        }
        other => {
            ctx.err(
                node.mark,
                path,
                format!("expected pause: {{}}, found {}", other.kind()),
            );
            None
        }
    }
}

/// What the safety review should know about freezing `target`.
pub fn target_findings(target: &Path) -> Vec<(Risk, &'static str, String)> {
    let mut out = Vec::new();
    if holds_this_process(target) {
        out.push((
            Risk::High,
            "pause-holds-kchaos",
            format!(
                "{} holds kchaos itself: a frozen kchaos could not thaw it, so the pause is refused \
                 even with --accept-risk",
                target.display()
            ),
        ));
    } else if std::fs::read_to_string(target.join("cgroup.freeze")).is_ok_and(|v| v.trim() == "1") {
        out.push((
            Risk::High,
            "pause-already-frozen",
            format!(
                "{} is already frozen by someone else: the pause is refused (kchaos would thaw it at \
                 the end)",
                target.display()
            ),
        ));
    }
    out
}

/// The targets frozen, from attach to detach.
pub struct PauseFault {
    freeze: Freeze,
    attachments: Vec<String>,
    /// From the thaw to the kernel's "frozen 0".
    thaw_took: Option<Duration>,
}

impl Active for PauseFault {
    /// The freeze: one cgroup.freeze write per target. A freeze has no kernel deadline: the runner
    /// thaws at the fault's end, the guard if kchaos dies, `kchaos stop` if both die.
    fn arm(&mut self, _deadline_ns: u64, _journal: &mut Journal) -> Result<()> {
        self.freeze.freeze()?;
        Ok(())
    }

    fn renew(&mut self, _deadline_ns: u64) -> Result<()> {
        self.freeze.poll();
        Ok(())
    }

    fn effective_since(&self) -> Option<std::time::Instant> {
        self.freeze.frozen_at()
    }

    /// Waits briefly for the kernel's "frozen 1", so the frozen window is measured from it.
    fn settle(&mut self) {
        let state = match self.freeze.wait_frozen(ARM_SETTLE) {
            Ok(took) => format!("frozen in {:.1} ms", took.as_secs_f64() * 1e3),
            Err(p) => format!(
                "{} not frozen yet after {} ms (its processes freeze as they leave the kernel)",
                p.display(),
                ARM_SETTLE.as_millis()
            ),
        };
        self.attachments = vec![format!(
            "cgroup.freeze=1 on {} ({} process(es)): {state}",
            self.freeze.names(),
            self.freeze.processes()
        )];
    }

    /// `frozen_ms`: from the kernel's "frozen 1" (cgroup.events) to the thaw (or now); `processes`:
    /// how many were frozen; `freeze_us`: from the request to "frozen 1"; `thaw_us`: from the thaw to
    /// "frozen 0"; `frozen`: 1 while frozen.
    fn counters(&self) -> Result<Counters> {
        let mut m = Counters::new();
        let f = &self.freeze;
        m.insert(
            "frozen_ms".into(),
            f.frozen_for().map_or(0, |d| d.as_millis() as u64),
        );
        m.insert("processes".into(), f.processes() as u64);
        if let Some(l) = f.freeze_latency() {
            m.insert("freeze_us".into(), l.as_micros() as u64);
        }
        if let Some(t) = self.thaw_took {
            m.insert("thaw_us".into(), t.as_micros() as u64);
        }
        m.insert(
            "frozen".into(),
            u64::from(!f.is_thawed() && f.frozen_for().is_some()),
        );
        Ok(m)
    }

    fn attachments(&self) -> Vec<String> {
        if self.attachments.is_empty() {
            vec![format!(
                "thaw guard for {} (nothing frozen until armed)",
                self.freeze.names()
            )]
        } else {
            self.attachments.clone()
        }
    }

    /// Thaws, so that the last counters end at the thaw.
    fn disarm(&mut self, journal: &mut Journal) -> Result<()> {
        if !self.freeze.is_thawed() {
            self.thaw_took = Some(self.freeze.thaw(journal, freeze::SETTLE_TIMEOUT)?);
        }
        Ok(())
    }

    fn undo(mut self: Box<Self>, journal: &mut Journal) -> Result<()> {
        self.freeze.thaw(journal, freeze::SETTLE_TIMEOUT)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::experiment::{fields::Vars, plan, scenario, validate};

    fn parse(faults: &str) -> Result<scenario::Scenario, String> {
        let text = format!(
            "title: t\ntargets: [{{name: a, cgroup: a}}, {{name: b, cgroup: b}}]\nfaults:\n{faults}"
        );
        scenario::parse("s.yaml", &text, &Vars::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_window_on_the_timeline() {
        let s = parse("  - {name: p, at: 1s, for: 2s, pause: {}}\n  - {name: k, at: 2s, kill:}\n")
            .unwrap();
        assert_eq!(s.faults[0].end().as_secs(), 3);
        let text = plan::render(&plan::timeline(&s, &[]));
        assert!(text.contains("attach + arm 'p' [pause: freeze"), "{text}");
        assert!(text.contains("thaw 'p'"), "{text}");
        assert!(
            text.contains("'k' [kill: SIGKILL to 1 random process"),
            "{text}"
        );
        assert!(!text.contains("detach 'k'"), "{text}");
        assert!(
            parse("  - {at: 1s, pause:}\n")
                .unwrap_err()
                .contains("faults[0].for")
        );
        let e = parse("  - {at: 1s, for: 1s, pause: {percent: 3}}\n").unwrap_err();
        assert!(e.contains("faults[0].pause.percent: unknown field"), "{e}");
    }

    #[test]
    fn two_pauses_of_one_target_at_once_conflict() {
        let s = parse(
            "  - {name: one, at: 0s, for: 5s, pause: {}}\n  - {name: two, at: 4s, for: 2s, pause: {}}\n",
        )
        .unwrap();
        let e = validate::check(&s);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].field == "faults[1]" && e[0].message.contains("overlaps 'one'"),
            "{e:?}"
        );
        // Back to back, or on different targets: fine.
        let s = parse(
            "  - {at: 0s, for: 5s, targets: [a], pause: {}}\n  - {at: 5s, for: 2s, pause: {}}\n  - {at: 0s, for: 1s, targets: [b], pause: {}}\n",
        );
        assert!(validate::check(&s.unwrap()).is_empty());
    }

    #[test]
    fn the_review_flags_the_cgroup_holding_kchaos() {
        let Ok(mount) = crate::engine::cgroup::v2_mount() else {
            return;
        };
        let Ok(mine) = crate::engine::cgroup::of_pid(std::process::id()) else {
            return;
        };
        let own = mount.join(mine.trim_start_matches('/'));
        let f = super::target_findings(&own);
        assert!(
            f.iter().any(|(r, code, _)| *code == "pause-holds-kchaos"
                && *r == crate::experiment::review::Risk::High),
            "{f:?}"
        );
    }
}
