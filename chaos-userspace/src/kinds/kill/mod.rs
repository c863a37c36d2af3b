//! The `kill` kind: an instant event at the fault's `at` (it has no `for`) that sends a signal to some
//! or all processes of the targets, never to kchaos; the report lists who was signalled.

pub mod signal;
pub mod signal_processes;
mod yaml;

use std::path::Path;

use anyhow::Result;

use self::{
    signal::Signal,
    signal_processes::{KillReport, Victims},
};
use crate::{
    engine::cgroup::holds_this_process,
    engine::journal::Journal,
    engine::targets::Target,
    error::BadInput,
    experiment::{fields::Ctx, review::Risk, yaml::Node},
    kind::{Active, Counters, Kind, MetricMap, TargetFinding},
};

pub const EXAMPLES: &str = "Examples:\n  kchaos kill --cgroup app                 (SIGKILL to one random process)\n  \
kchaos kill --cgroup app --count 3 --signal TERM\n  \
kchaos kill --pid 4242 --all             (SIGKILL to all, through cgroup.kill)";

/// `kchaos kill` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct KillArgs {
    /// Signal every process of the targets (with SIGKILL: all at once, through cgroup.kill).
    #[arg(long, conflicts_with = "count")]
    pub all: bool,
    /// Signal N processes picked at random (default 1).
    #[arg(long, value_name = "N", value_parser = crate::units::parse_whole::<usize>, allow_hyphen_values = true)]
    pub count: Option<usize>,
    /// The signal: a name (KILL, TERM, INT, STOP, USR1, ...) or a number.
    #[arg(long, value_name = "SIG", default_value = "KILL", value_parser = crate::listed::signal(), hide_possible_values = true, allow_hyphen_values = true)]
    pub signal: Signal,
}

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

impl Kind for KillSpec {
    const YAML_FIELDS: &'static [&'static str] = yaml::FIELDS;
    const NAME: &'static str = "kill";
    const INSTANT: bool = true;
    const METRICS: &'static [MetricMap] = &[
        MetricMap::gauge(
            "signalled",
            "kill_signalled_processes",
            "Processes the fault signalled.",
            1.0,
        )
        .total(),
        MetricMap::gauge(
            "already_gone",
            "kill_already_gone_processes",
            "Chosen processes that had exited before the signal.",
            1.0,
        )
        .total(),
        MetricMap::gauge(
            "failed",
            "kill_failed_processes",
            "Processes the signal could not be sent to.",
            1.0,
        )
        .total(),
        MetricMap::gauge(
            "candidates",
            "kill_candidate_processes",
            "Processes of the targets the fault chose from.",
            1.0,
        ),
    ];
    type Args = KillArgs;
    type Active = KillFault;

    fn from_args(args: &KillArgs) -> Result<Self, BadInput> {
        if args.count == Some(0) {
            return Err(BadInput::new(
                "--count 0 signals nobody: give 1 or more, or --all",
            ));
        }
        Ok(KillSpec {
            signal: args.signal,
            victims: if args.all {
                Victims::All
            } else {
                Victims::Count(args.count.unwrap_or(1))
            },
        })
    }

    fn from_yaml(ctx: &mut Ctx, node: &Node, path: &str, _ramped: &[String]) -> Option<Self> {
        yaml::parse(ctx, node, path)
    }

    fn describe(&self) -> String {
        KillSpec::describe(self)
    }

    fn target_findings(&self, target: &Path, _cgroup_root: &Path) -> Vec<TargetFinding> {
        target_findings(self, target)
    }

    fn rollback_advice(&self) -> Option<(Risk, String)> {
        (self.signal == Signal::KILL).then(|| {
            (
                Risk::Low,
                "killed processes stay dead unless something restarts them (a supervisor, the \
                 container runtime); kchaos does not"
                    .into(),
            )
        })
    }

    /// Who is signalled is decided at the instant; what can be known before is found now.
    fn prepare(&self, targets: &[Target], _journal: &mut Journal) -> Result<KillFault> {
        Ok(KillFault {
            spec: self.clone(),
            prepared: signal_processes::Prepared::new(targets),
            report: None,
        })
    }

    /// Each process signalled is one event.
    fn injected_events(counters: &Counters) -> u64 {
        counters.get("signalled").copied().unwrap_or(0)
    }

    fn live_line(counters: &Counters) -> String {
        let n = |k: &str| counters.get(k).copied().unwrap_or(0);
        format!(
            "signalled {} of {} candidate(s), {} already gone, {} failed",
            n("signalled"),
            n("candidates"),
            n("already_gone"),
            n("failed")
        )
    }
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

/// The signal, sent once when the runner arms the fault at its `at`.
pub struct KillFault {
    spec: KillSpec,
    prepared: signal_processes::Prepared,
    report: Option<KillReport>,
}

impl Active for KillFault {
    /// Lists the processes and signals the victims: the event itself.
    fn arm(&mut self, _deadline_ns: u64, _journal: &mut Journal) -> Result<()> {
        self.report = Some(signal_processes::signal_prepared(
            &self.prepared,
            self.spec.victims,
            self.spec.signal,
        )?);
        Ok(())
    }

    /// Nothing lasts: the signal went out at arm.
    fn renew(&mut self, _deadline_ns: u64) -> Result<()> {
        Ok(())
    }

    /// `signalled`, `already_gone`, `failed` (kill(2) refused), `candidates` (processes that could
    /// be picked), `skipped_kchaos`, `signal` (its number).
    fn counters(&self) -> Result<Counters> {
        let Some(r) = &self.report else {
            return Ok(Counters::new());
        };
        Ok(Counters::from([
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
        let Some(r) = &self.report else {
            return vec![format!("{} (at its instant)", self.spec.describe())];
        };
        if r.candidates == 0 {
            let mut out = r.left_out();
            out.push(format!(
                "no process to signal in {}: nothing was signalled",
                r.where_
            ));
            return out;
        }
        r.lines()
            .into_iter()
            // One line each: the header's colon introduced the indented lines below it.
            .map(|l| l.trim().trim_end_matches(':').to_owned())
            .collect()
    }

    fn disarm(&mut self, _journal: &mut Journal) -> Result<()> {
        Ok(())
    }

    fn undo(self: Box<Self>, _journal: &mut Journal) -> Result<()> {
        let Some(r) = &self.report else {
            return Ok(());
        };
        if r.candidates == 0 {
            anyhow::bail!(
                "no process to signal in {}: nothing was signalled",
                r.where_
            );
        }
        let failed = r.failed();
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
