//! The `kill` fault kind of scenarios: an instant event at the fault's `at` (it has no `for`) that sends
//! a signal to some or all processes of the targets, never to kchaos, through the same code as
//! `kchaos kill`; the report lists who was signalled. `kinds.rs` dispatches to it.

use std::{collections::BTreeMap, path::Path};

use anyhow::Result;

use super::{fields::Ctx, kinds::ActiveFault, review::Risk, yaml::Node};
use crate::{
    journal::Journal,
    process_faults::{
        holds_this_process,
        kill::{self, Victims},
        signal::{self, Signal},
    },
    targets::Target,
};

pub const FIELDS: &[&str] = &["signal", "count", "all"];

/// What a kill fault does.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KillSpec {
    pub signal: Signal,
    pub victims: Victims,
}

impl KillSpec {
    pub fn describe(&self) -> String {
        match self.victims {
            Victims::All => format!("{} to every process of the target", self.signal),
            Victims::Count(n) => format!(
                "{} to {n} random process{} of the target",
                self.signal,
                if n == 1 { "" } else { "es" }
            ),
        }
    }
}

/// Reads `kill: {signal, count | all}`; each error at the field it is about.
pub fn parse(ctx: &mut Ctx, node: &Node, path: &str) -> Option<KillSpec> {
    // A bare `kill:` is one random process, SIGKILL.
    if matches!(node.value, super::yaml::Value::Null) {
        return Some(KillSpec {
            signal: Signal::KILL,
            victims: Victims::Count(1),
        });
    }
    let f = ctx.map(node, path, FIELDS)?;
    let before = ctx.errors.len();
    let mut spec = KillSpec {
        signal: Signal::KILL,
        victims: Victims::Count(1),
    };
    if let Some(n) = f.value("signal") {
        let p = f.path_of("signal");
        if let Some(t) = ctx.text(n, &p) {
            match signal::parse_signal(&t) {
                Ok(s) => spec.signal = s,
                Err(e) => ctx.err(n.mark, &p, e.0),
            }
        }
    }
    if let Some(n) = f.value("count") {
        let p = f.path_of("count");
        match ctx.uint(n, &p, u64::from(u32::MAX)) {
            Some(0) => ctx.err(
                n.mark,
                &p,
                "count 0 signals nobody: write 1 or more, or all: true",
            ),
            Some(v) => spec.victims = Victims::Count(v as usize),
            None => {}
        }
    }
    if let Some(n) = f.value("all") {
        let p = f.path_of("all");
        if ctx.boolean(n, &p) == Some(true) {
            if f.has("count") {
                ctx.err(
                    n.mark,
                    &p,
                    "all: true and count go against each other: give one of them",
                );
            }
            spec.victims = Victims::All;
        }
    }
    (ctx.errors.len() == before).then_some(spec)
}

/// What the safety review should know about signalling processes of `target`.
pub fn target_findings(spec: &KillSpec, target: &Path) -> Vec<(Risk, &'static str, String)> {
    if !holds_this_process(target) {
        return Vec::new();
    }
    vec![(
        Risk::Medium,
        "kill-holds-kchaos",
        format!(
            "{} holds kchaos itself: kchaos and its workers are left out, but {} may hit the shell \
             or service that started it",
            target.display(),
            spec.signal
        ),
    )]
}

/// The signal sent, once, when the runner attaches the fault at its `at`.
pub struct KillFault {
    report: kill::KillReport,
}

impl KillFault {
    /// Signals the victims now.
    pub fn fire(spec: &KillSpec, targets: &[Target]) -> Result<Self> {
        let report = kill::signal_processes(targets, spec.victims, spec.signal)?;
        Ok(Self { report })
    }
}

impl ActiveFault for KillFault {
    /// Nothing lasts: the signal was sent at attach.
    fn arm(&mut self, _deadline_ns: u64) -> Result<()> {
        Ok(())
    }

    fn set_param(&mut self, param: &str, _value: f64) -> Result<()> {
        anyhow::bail!("a kill fault has no parameter '{param}'")
    }

    /// `signalled`, `already_gone`, `failed` (kill(2) refused), `candidates` (processes that could
    /// be picked), `skipped_kchaos`, `signal` (its number).
    fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let r = &self.report;
        Ok(BTreeMap::from([
            ("signalled".into(), r.signalled() as u64),
            ("already_gone".into(), r.already_gone() as u64),
            ("failed".into(), r.failed() as u64),
            ("candidates".into(), r.candidates as u64),
            ("skipped_kchaos".into(), r.skipped as u64),
            ("signal".into(), r.signal.number as u64),
        ]))
    }

    /// Who was signalled, one line each (the report's `attached`).
    fn attachments(&self) -> Vec<String> {
        if self.report.candidates == 0 {
            return vec![format!(
                "no process to signal in {}: nothing was signalled",
                self.report.where_
            )];
        }
        self.report
            .lines()
            .into_iter()
            // One line each in the report: the header's colon introduced the indented lines below it.
            .map(|l| l.trim().trim_end_matches(':').to_owned())
            .collect()
    }

    fn detach(self: Box<Self>, _journal: &mut Journal) -> Result<()> {
        let failed = self.report.failed();
        if failed > 0 {
            anyhow::bail!("{failed} process(es) could not be signalled (see the fault's attached)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::experiment::{fields::Vars, scenario, validate};

    fn parse(fault: &str) -> Result<scenario::Scenario, String> {
        let text = format!("title: t\ntargets: [{{name: app, cgroup: a}}]\nfaults:\n  - {fault}\n");
        scenario::parse("s.yaml", &text, &Vars::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn an_instant_event_with_its_signal_and_victims() {
        let s = parse("{name: k, at: 2s, kill: {signal: TERM, count: 2}}").unwrap();
        let f = &s.faults[0];
        assert_eq!((f.at.as_secs(), f.end().as_secs()), (2, 2));
        assert_eq!(
            f.describe(),
            "kill: SIGTERM to 2 random processes of the target"
        );
        let s = parse("{at: 1s, kill: {all: true}}").unwrap();
        assert_eq!(
            s.faults[0].describe(),
            "kill: SIGKILL to every process of the target"
        );
        assert!(parse("{at: 1s, kill:}").is_ok());
    }

    #[test]
    fn for_is_refused_at_its_field() {
        let e = parse("{name: k, at: 2s, for: 3s, kill: {}}").unwrap_err();
        assert!(
            e.contains("s.yaml:4:")
                && e.contains("faults[0].for: a kill fault is an instant event"),
            "{e}"
        );
    }

    #[test]
    fn bad_fields_name_themselves() {
        let e = parse("{at: 1s, kill: {signal: BOGUS}}").unwrap_err();
        assert!(
            e.contains("faults[0].kill.signal: 'BOGUS' is not a signal"),
            "{e}"
        );
        let e = parse("{at: 1s, kill: {count: 0}}").unwrap_err();
        assert!(
            e.contains("faults[0].kill.count: count 0 signals nobody"),
            "{e}"
        );
        let e = parse("{at: 1s, kill: {count: 2, all: true}}").unwrap_err();
        assert!(e.contains("faults[0].kill.all:"), "{e}");
        let e =
            parse("{at: 1s, kill: {}, ramp: {percent: {from: 1, to: 2, over: 1s}}}").unwrap_err();
        assert!(e.contains("faults[0].ramp"), "{e}");
    }

    #[test]
    fn conflicts_with_nothing() {
        let s =
            parse("{at: 1s, kill: {}}\n  - {at: 1s, kill: {}}\n  - {at: 0s, for: 5s, pause: {}}")
                .unwrap();
        assert!(validate::check(&s).is_empty());
    }
}
