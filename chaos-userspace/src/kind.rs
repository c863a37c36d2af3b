//! The one interface every fault kind implements ([`Kind`] for what it is, [`Active`] for it while it
//! runs), and the registry that lists the kinds once ([`FaultKind`], [`KindCommand`]).
//!
//! Everything else talks to a kind only through these: the CLI's subcommands, the scenario reader,
//! validation and the safety review, the monkey, the runner and the report. To add a kind, write
//! `kinds/<name>/` with a type implementing [`Kind`] and add one line to `registry!` at the bottom of
//! this file; the compiler then points at anything the new kind still lacks.

use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use anyhow::Result;

use crate::{
    engine::journal::Journal,
    engine::targets::Target,
    error::BadInput,
    experiment::{fields::Ctx, review::Risk, yaml::Node},
};

/// A kind's counters, flat ("egress.dropped" -> n): one shape for the live line, the report, the budget
/// and metrics. Counts come from the kernel's own maps where the kind has programs.
pub type Counters = BTreeMap<String, u64>;

/// The unit of a ramp-able parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// 0-100.
    Percent,
    /// Held as seconds.
    Duration,
    /// Bits per second (`10mbit`).
    Rate,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Percent => format!("{}%", (value * 1000.0).round() / 1000.0),
            Unit::Duration => {
                crate::units::format_duration(Duration::from_secs_f64(value.max(0.0)))
            }
            Unit::Rate => crate::units::format_rate(value),
        }
    }
}

/// Bounds on what `kchaos monkey` may inject, for the kinds' random draws.
#[derive(Clone, Debug)]
pub struct MonkeyCaps {
    pub max_drop_percent: f64,
    pub max_delay: Duration,
    /// Peers a partition may cut the target off from.
    pub peers: Vec<String>,
    /// Highest share of connects a `syscall` fault may fail, percent.
    pub max_syscall_percent: f64,
    /// Highest load of the one CPU worker of a `cpu` fault, percent of a CPU.
    pub max_cpu_load: f64,
}

/// How one of a kind's counters appears in `/metrics` (see `crate::metrics`).
#[derive(Clone, Copy, Debug)]
pub struct MetricMap {
    /// The counter's key; with `label`, the part after its first '.' ("dropped" of "egress.dropped").
    pub key: &'static str,
    /// The label the key's first part goes into ("direction" = egress), if the key has one.
    pub label: Option<&'static str>,
    /// The family's name after `kchaos_`; a counter's without the `_total` the encoder adds.
    pub name: &'static str,
    pub help: &'static str,
    /// A counter (only ever grows), else a gauge.
    pub counter: bool,
    /// Turns the value into base units (ms into seconds: 0.001; percent into a ratio: 0.01).
    pub scale: f64,
}

impl MetricMap {
    /// A counter `key` of one label, in the same unit.
    pub const fn counter(
        label: &'static str,
        key: &'static str,
        name: &'static str,
        help: &'static str,
    ) -> Self {
        Self {
            key,
            label: Some(label),
            name,
            help,
            counter: true,
            scale: 1.0,
        }
    }

    /// A gauge for the counter `key` (no label), times `scale`.
    pub const fn gauge(
        key: &'static str,
        name: &'static str,
        help: &'static str,
        scale: f64,
    ) -> Self {
        Self {
            key,
            label: None,
            name,
            help,
            counter: false,
            scale,
        }
    }

    /// The same, as a counter.
    pub const fn total(self) -> Self {
        Self {
            counter: true,
            ..self
        }
    }

    /// The same, times `scale`.
    pub const fn scaled(self, scale: f64) -> Self {
        Self { scale, ..self }
    }
}

/// A safety-review finding about one target: its risk, a stable code, and why.
pub type TargetFinding = (Risk, &'static str, String);

/// One fault kind: its arguments (CLI and YAML), its review, and how it is prepared. The value is the
/// checked spec of one fault of this kind.
pub trait Kind: Clone + fmt::Debug + PartialEq + serde::Serialize + Sized {
    /// Its name: the subcommand, the scenario key, the report's `kind`.
    const NAME: &'static str;
    /// An instant event at its `at` (it takes no `for`), rather than a window.
    const INSTANT: bool = false;
    /// Parameters a ramp can move and `budget.max_intensity` can cap.
    const PARAMS: &'static [(&'static str, Unit)] = &[];
    /// Old names of its parameters and scenario fields, and the new ones (`drop` -> `percent`): they
    /// still work for one release, with a deprecation line.
    const RENAMED: &'static [(&'static str, &'static str)] = &[];
    /// A command of this kind must say when it ends (`--duration`): a pause without an end would
    /// leave the target frozen until someone thaws it.
    const REQUIRES_DURATION: bool = false;
    /// The keys of its scenario block (`net: {drop: 10, ...}`), for the scenario JSON Schema; empty:
    /// the block takes no keys (`pause: {}`). No default, so a new kind cannot leave its schema empty
    /// by omission.
    const YAML_FIELDS: &'static [&'static str];
    /// Whether its injected events count things a rate per second describes (packets dropped, calls
    /// failed, signals sent). False for a load (stress), a freeze (pause) or a clock (time): their
    /// "injected" count is not an event count, so the live line, the summary and the HTML show what
    /// the kind's own counters say instead of "N injected".
    const COUNTS_EVENTS: bool = true;
    /// The `kchaos monkey --types` this kind draws.
    const MONKEY_TYPES: &'static [&'static str] = &[];

    /// How its counters appear in `/metrics`; a counter it does not list is left out.
    const METRICS: &'static [MetricMap] = &[];

    /// Its command-line flags (the targets and how long it runs are shared by every kind).
    type Args: clap::Args + fmt::Debug;
    /// The fault while it runs.
    type Active: Active + 'static;

    /// From `kchaos <NAME>`'s flags; errors name the flag, the value and what is allowed.
    fn from_args(args: &Self::Args) -> Result<Self, BadInput>;
    /// From a scenario's `<NAME>: {...}` block; each error is recorded at its field. `ramped` names the
    /// parameters a ramp of the fault will set.
    fn from_yaml(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<Self>;
    /// One line: what it does.
    fn describe(&self) -> String;

    /// Whether `param` may take `value` (a ramp's ends); the error says what is allowed.
    fn check_param(&self, param: &str, _value: f64) -> Result<(), String> {
        Err(format!(
            "a {} fault cannot ramp '{param}': {}",
            Self::NAME,
            allowed_params(Self::PARAMS)
        ))
    }
    /// Makes the spec ready for a ramp of `param` starting at `start` (the programs it needs).
    fn prepare_ramp(&mut self, _param: &str, _start: f64) {}
    /// Its fixed intensities, for `budget.max_intensity`.
    fn intensities(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
    /// Why two faults of this kind cannot overlap on one target, if they cannot.
    fn overlap_conflict(&self) -> Option<&'static str> {
        None
    }
    /// What the safety review should know about this fault hitting the cgroup `target`.
    fn target_findings(&self, _target: &Path, _cgroup_root: &Path) -> Vec<TargetFinding> {
        Vec::new()
    }
    /// A rollback kchaos cannot do itself, which the user may need.
    fn rollback_advice(&self) -> Option<(Risk, String)> {
        None
    }
    /// The plan's line for the fault's end (None for an instant event).
    fn end_step(&self, name: &str) -> Option<String> {
        (!Self::INSTANT).then(|| {
            format!("detach '{name}' (the kernel stops it by itself at this deadline too)")
        })
    }
    /// A random fault of `monkey_type` (one of [`Kind::MONKEY_TYPES`]) within `caps`; `draw` returns
    /// uniform numbers in [0, 1).
    fn random(
        monkey_type: &str,
        _caps: &MonkeyCaps,
        _draw: &mut dyn FnMut() -> f64,
    ) -> Result<Self, BadInput> {
        Err(BadInput::new(format!(
            "the {} kind has no monkey type '{monkey_type}'",
            Self::NAME
        )))
    }

    /// What it needs from the kernel and the targets, checked before anything is attached.
    fn preflight(&self, _targets: &[Target]) -> Result<(), BadInput> {
        Ok(())
    }
    /// What a command prints about the plan before preparing (a backend per operation, notes).
    fn plan_lines(&self, _targets: &[Target]) -> Vec<String> {
        Vec::new()
    }
    /// Everything slow, before the fault's window opens: load and attach disarmed, start guards,
    /// journal what the kernel would keep. Nothing is injected until [`Active::arm`].
    fn prepare(&self, targets: &[Target], journal: &mut Journal) -> Result<Self::Active>;

    /// The events it injected (drops, failed calls, signals ...), from its counters.
    fn injected_events(counters: &Counters) -> u64;
    /// The live line's text for these counters.
    fn live_line(counters: &Counters) -> String;
    /// Labels its metrics carry besides run, fault and kind (a syscall fault's errno).
    fn metric_labels(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// More lines for a command's summary, from what the fault recorded (its result, its counters).
    fn summary_lines(&self, _record: &crate::report::FaultRecord) -> Vec<String> {
        Vec::new()
    }
}

/// A prepared fault. The runner arms it at its planned instant, renews its lease, tunes its ramps,
/// reads its counters, disarms it at its end and undoes it.
pub trait Active {
    /// Starts injecting until `deadline_ns` (CLOCK_MONOTONIC): the work at the planned instant, so
    /// it is quick (a map write, a cgroup file write, a signal).
    fn arm(&mut self, deadline_ns: u64, journal: &mut Journal) -> Result<()>;
    /// Renews the deadline while armed (the lease: a loader that stops renewing stops the fault).
    fn renew(&mut self, deadline_ns: u64) -> Result<()>;
    /// Waits briefly, after arm, until the effect is in place (a pause: the kernel says frozen).
    fn settle(&mut self) {}
    /// When the effect took hold, where that is later than the arm (a pause: when the kernel said
    /// frozen). The fault's window is counted from it, so a pause of 2s keeps the target frozen 2s.
    fn effective_since(&self) -> Option<std::time::Instant> {
        None
    }
    /// Sets a ramp parameter (durations in seconds).
    fn set_param(&mut self, param: &str, _value: f64) -> Result<()> {
        anyhow::bail!("this fault has no parameter '{param}'")
    }
    /// Its counters now.
    fn counters(&self) -> Result<Counters>;
    /// What was attached or done where, one line each.
    fn attachments(&self) -> Vec<String>;
    /// Stops injecting at the fault's end, before the last counters are read.
    fn disarm(&mut self, journal: &mut Journal) -> Result<()>;
    /// What the kind measured beyond its counters, for the report (after disarm).
    fn result(&self) -> Option<serde_json::Value> {
        None
    }
    /// Detaches and removes everything it made, forgetting it in the journal.
    fn undo(self: Box<Self>, journal: &mut Journal) -> Result<()>;
}

fn allowed_params(params: &[(&str, Unit)]) -> String {
    if params.is_empty() {
        "it has no ramp-able parameter".into()
    } else {
        format!(
            "allowed {} {}",
            if params.len() == 1 { "is" } else { "are" },
            params
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The path of a kind's block in a fault, e.g. `faults[0].net`.
pub fn kind_path(fault_path: &str, kind: &str) -> String {
    crate::experiment::fields::join(fault_path, kind)
}

/// Lists the kinds once; generates [`FaultKind`] (one fault of any kind, what scenarios, the monkey
/// and the runner hold), [`KindCommand`] (the fault subcommands of the CLI), [`KINDS`] and the
/// dispatch from one to the other.
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident($spec:ty), )+) => {
        /// One fault, of any kind.
        #[derive(Clone, Debug, PartialEq, serde::Serialize)]
        #[serde(tag = "kind", content = "spec", rename_all = "lowercase")]
        pub enum FaultKind {
            $( $variant($spec), )+
        }

        /// The fault subcommands: `kchaos <kind> [targets] [flags] [--duration] [--json]`.
        #[derive(Debug, clap::Subcommand)]
        pub enum KindCommand {
            $( $(#[$doc])* $variant(crate::command::FaultCommand<<$spec as Kind>::Args>), )+
        }

        /// Every kind's name, in registry order.
        pub const KINDS: &[&str] = &[$( <$spec as Kind>::NAME, )+];

        /// Every kind's name and the keys of its scenario block.
        pub const KIND_FIELDS: &[(&str, &[&str])] = &[$( (<$spec as Kind>::NAME, <$spec as Kind>::YAML_FIELDS), )+];

        /// Every kind's monkey types.
        pub const MONKEY_TYPE_LISTS: &[&[&str]] = &[$( <$spec as Kind>::MONKEY_TYPES, )+];

        /// Every kind's renamed parameters (old, new).
        const RENAMED_LISTS: &[&[(&str, &str)]] = &[$( <$spec as Kind>::RENAMED, )+];

        /// Every kind's ramp-able parameters.
        const PARAM_LISTS: &[&[(&str, Unit)]] = &[$( <$spec as Kind>::PARAMS, )+];

        /// The live line of the kind named `name` for these counters.
        pub fn live_line_of(name: &str, counters: &Counters) -> Option<String> {
            $( if name == <$spec as Kind>::NAME { return Some(<$spec as Kind>::live_line(counters)); } )+
            None
        }

        /// Whether the kind named `name` counts events ([`Kind::COUNTS_EVENTS`]); true for a name
        /// no kind has (an older report's).
        pub fn counts_events_of(name: &str) -> bool {
            $( if name == <$spec as Kind>::NAME { return <$spec as Kind>::COUNTS_EVENTS; } )+
            true
        }

        /// How the counters of the kind named `name` appear in `/metrics`.
        pub fn metric_maps(name: &str) -> &'static [MetricMap] {
            $( if name == <$spec as Kind>::NAME { return <$spec as Kind>::METRICS; } )+
            &[]
        }

        /// Whether the kind named `name` is an instant event.
        pub fn is_instant_kind(name: &str) -> bool {
            $( if name == <$spec as Kind>::NAME { return <$spec as Kind>::INSTANT; } )+
            false
        }

        impl FaultKind {
            /// Reads `<kind>: {...}` of a fault.
            pub fn parse(
                ctx: &mut Ctx,
                kind: &str,
                node: &Node,
                path: &str,
                ramped: &[String],
            ) -> Option<Self> {
                $( if kind == <$spec as Kind>::NAME {
                    return <$spec as Kind>::from_yaml(ctx, node, path, ramped)
                        .map(FaultKind::$variant);
                } )+
                None
            }

            /// A random fault of `monkey_type` within `caps`.
            pub fn random(
                monkey_type: &str,
                caps: &MonkeyCaps,
                draw: &mut dyn FnMut() -> f64,
            ) -> Result<Self, BadInput> {
                $( if <$spec as Kind>::MONKEY_TYPES.contains(&monkey_type) {
                    return <$spec as Kind>::random(monkey_type, caps, draw)
                        .map(FaultKind::$variant);
                } )+
                Err(BadInput::new(format!(
                    "--types {monkey_type}: allowed are {}",
                    monkey_types().join(", ")
                )))
            }

            pub fn name(&self) -> &'static str {
                match self { $( FaultKind::$variant(_) => <$spec as Kind>::NAME, )+ }
            }

            pub fn requires_duration(&self) -> bool {
                match self { $( FaultKind::$variant(_) => <$spec as Kind>::REQUIRES_DURATION, )+ }
            }

            pub fn is_instant(&self) -> bool {
                match self { $( FaultKind::$variant(_) => <$spec as Kind>::INSTANT, )+ }
            }

            /// "<kind>: what it does".
            pub fn describe(&self) -> String {
                match self { $( FaultKind::$variant(s) => format!("{}: {}", self.name(), s.describe()), )+ }
            }

            /// The ramp-able parameters of this kind.
            pub fn ramp_params(&self) -> Vec<&'static str> {
                let params = match self { $( FaultKind::$variant(_) => <$spec as Kind>::PARAMS, )+ };
                params.iter().map(|(p, _)| *p).collect()
            }

            /// Its renamed parameters and fields: (old, new).
            pub fn renamed(&self) -> &'static [(&'static str, &'static str)] {
                match self { $( FaultKind::$variant(_) => <$spec as Kind>::RENAMED, )+ }
            }

            /// The new name of `param` if it is an old one of this kind.
            pub fn renamed_param(&self, param: &str) -> Option<&'static str> {
                self.renamed().iter().find(|(old, _)| *old == param).map(|(_, new)| *new)
            }

            pub fn check_param(&self, param: &str, value: f64) -> Result<(), String> {
                match self { $( FaultKind::$variant(s) => s.check_param(param, value), )+ }
            }

            pub fn prepare_ramp(&mut self, param: &str, start: f64) {
                match self { $( FaultKind::$variant(s) => s.prepare_ramp(param, start), )+ }
            }

            pub fn intensities(&self) -> Vec<(&'static str, f64)> {
                match self { $( FaultKind::$variant(s) => s.intensities(), )+ }
            }

            /// Why two faults cannot hit one target at the same time, if they cannot.
            pub fn conflicts_with(&self, other: &FaultKind) -> Option<String> {
                if std::mem::discriminant(self) != std::mem::discriminant(other) {
                    return None;
                }
                match self { $( FaultKind::$variant(s) => s.overlap_conflict().map(str::to_owned), )+ }
            }

            pub fn target_findings(&self, target: &Path, cgroup_root: &Path) -> Vec<TargetFinding> {
                match self { $( FaultKind::$variant(s) => s.target_findings(target, cgroup_root), )+ }
            }

            pub fn rollback_advice(&self) -> Option<(Risk, String)> {
                match self { $( FaultKind::$variant(s) => s.rollback_advice(), )+ }
            }

            pub fn end_step(&self, name: &str) -> Option<String> {
                match self { $( FaultKind::$variant(s) => s.end_step(name), )+ }
            }

            pub fn preflight(&self, targets: &[Target]) -> Result<(), BadInput> {
                match self { $( FaultKind::$variant(s) => s.preflight(targets), )+ }
            }

            pub fn plan_lines(&self, targets: &[Target]) -> Vec<String> {
                match self { $( FaultKind::$variant(s) => s.plan_lines(targets), )+ }
            }

            /// Prepares it on `targets`, disarmed.
            pub fn prepare(&self, targets: &[Target], journal: &mut Journal) -> Result<Box<dyn Active>> {
                match self {
                    $( FaultKind::$variant(s) => Ok(Box::new(s.prepare(targets, journal)?)), )+
                }
            }

            pub fn injected_events(&self, counters: &Counters) -> u64 {
                match self { $( FaultKind::$variant(_) => <$spec as Kind>::injected_events(counters), )+ }
            }

            pub fn live_line(&self, counters: &Counters) -> String {
                match self { $( FaultKind::$variant(_) => <$spec as Kind>::live_line(counters), )+ }
            }

            pub fn metric_labels(&self) -> Vec<(String, String)> {
                match self { $( FaultKind::$variant(s) => s.metric_labels(), )+ }
            }

            pub fn summary_lines(&self, record: &crate::report::FaultRecord) -> Vec<String> {
                match self { $( FaultKind::$variant(s) => s.summary_lines(record), )+ }
            }
        }

        impl KindCommand {
            /// Runs the subcommand: a one-fault experiment.
            pub async fn run(self) -> Result<()> {
                match self {
                    $( KindCommand::$variant(cmd) => {
                        let spec = <$spec as Kind>::from_args(&cmd.args)?;
                        crate::command::run(crate::command::Command {
                            kind: FaultKind::$variant(spec),
                            targets: cmd.targets,
                            run: cmd.common,
                        })
                        .await
                    } )+
                }
            }
        }
    };
}

/// Every monkey type, over all kinds.
pub fn monkey_types() -> Vec<&'static str> {
    MONKEY_TYPE_LISTS
        .iter()
        .flat_map(|l| l.iter().copied())
        .collect()
}

/// Every ramp-able parameter over all kinds, once each.
pub fn intensity_params() -> Vec<(&'static str, Unit)> {
    let mut out: Vec<(&'static str, Unit)> = Vec::new();
    for (p, u) in PARAM_LISTS.iter().flat_map(|l| l.iter()) {
        if !out.iter().any(|(q, _)| q == p) {
            out.push((p, *u));
        }
    }
    out
}

/// Every kind's old parameter names and the new ones, once each.
pub fn renamed_params() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RENAMED_LISTS.iter().flat_map(|l| l.iter()) {
        if !out.contains(r) {
            out.push(*r);
        }
    }
    out
}

/// The new name of an old parameter name of any kind (`drop` -> `percent`).
pub fn renamed_param(param: &str) -> Option<&'static str> {
    renamed_params()
        .into_iter()
        .find(|(old, _)| *old == param)
        .map(|(_, new)| new)
}

/// The unit of a ramp-able parameter of any kind.
pub fn unit_of(param: &str) -> Option<Unit> {
    intensity_params()
        .into_iter()
        .find(|(p, _)| *p == param)
        .map(|(_, u)| u)
}

use crate::{
    kinds::net::NetSpec,
    kinds::stress::StressSpec,
    kinds::syscall::SyscallSpec,
    kinds::time::TimeSpec,
    kinds::{kill::KillSpec, pause::PauseSpec},
};

registry! {
    /// Drop, delay or partition the network traffic of target cgroups.
    #[command(after_help = crate::kinds::net::EXAMPLES)]
    Net(NetSpec),
    /// Make chosen syscalls of target cgroups fail with a chosen errno.
    #[command(after_help = crate::kinds::syscall::EXAMPLES)]
    Syscall(SyscallSpec),
    /// Load the target cgroup from inside: CPU, memory, write+fsync, open fds.
    #[command(after_help = crate::kinds::stress::EXAMPLES)]
    Stress(StressSpec),
    /// Freeze the target cgroups for a while (cgroup.freeze), then thaw them.
    #[command(after_help = crate::kinds::pause::EXAMPLES)]
    Pause(PauseSpec),
    /// Signal random processes of the target cgroups, or all of them (never kchaos itself).
    #[command(after_help = crate::kinds::kill::EXAMPLES)]
    Kill(KillSpec),
    /// Shift or drift the clocks of the target cgroups' processes (vDSO hooks, leased).
    #[command(after_help = crate::kinds::time::EXAMPLES)]
    Time(TimeSpec),
}
