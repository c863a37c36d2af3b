//! The fault kinds a scenario can use, and the one place a new kind plugs in.
//!
//! `syscall`, `stress`, `pause` and `kill` live in kind_*.rs. To add a kind: add a variant to [`FaultKind`], its name to [`KINDS`], an
//! arm to each `match` in this file (parse, describe, ramps, intensity, conflicts, rollback advice,
//! attach), and its ramp-able parameters to [`INTENSITY_PARAMS`]. The scenario reader, validation, the
//! timeline, the runner, the budget and the report only talk to [`FaultKind`] and [`ActiveFault`].

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;

use super::{
    fields::{Ctx, join},
    kind_kill::{self, KillFault, KillSpec},
    kind_pause::{self, PauseFault, PauseSpec},
    kind_stress::{self, StressFault},
    kind_syscall,
    review::Risk,
    yaml::Node,
};
use crate::{
    error::BadInput,
    faults::{
        net::{Direction, NetArgs, NetFault, NetSpec, Proto},
        peers::Peer,
        syscall::{SyscallFault, SyscallSpec},
    },
    journal::Journal,
    stress::StressSpec,
    targets::Target,
};

/// Every kind a scenario may name under `faults[].<kind>`.
pub const KINDS: &[&str] = &["net", "syscall", "stress", "pause", "kill"];

/// Kinds that are an instant event at `at` rather than a window: they take no `for`.
pub const INSTANT_KINDS: &[&str] = &["kill"];

/// The unit of a ramp-able parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// 0-100.
    Percent,
    /// Held as seconds.
    Duration,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Percent => format!("{}%", (value * 1000.0).round() / 1000.0),
            Unit::Duration => {
                crate::units::format_duration(Duration::from_secs_f64(value.max(0.0)))
            }
        }
    }
}

/// Parameters a ramp can move and `budget.max_intensity` can cap, over all kinds.
pub const INTENSITY_PARAMS: &[(&str, Unit)] = &[
    ("drop", Unit::Percent),
    ("delay", Unit::Duration),
    // syscall: the share of matching calls that fail.
    ("percent", Unit::Percent),
    // stress: each CPU worker's load, of one CPU.
    ("cpu_load", Unit::Percent),
];

pub fn unit_of(param: &str) -> Option<Unit> {
    INTENSITY_PARAMS
        .iter()
        .find(|(p, _)| *p == param)
        .map(|(_, u)| *u)
}

/// What a fault does, by kind.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", content = "spec", rename_all = "lowercase")]
pub enum FaultKind {
    Net(NetSpec),
    Syscall(SyscallSpec),
    Stress(StressSpec),
    Pause(PauseSpec),
    Kill(KillSpec),
}

const NET_FIELDS: &[&str] = &[
    "drop",
    "delay",
    "jitter",
    "partition",
    "dst",
    "port",
    "proto",
    "direction",
];

impl FaultKind {
    /// Reads `<kind>: {...}` of a fault; `ramped` names the parameters a ramp of the fault will set.
    pub fn parse(
        ctx: &mut Ctx,
        kind: &str,
        node: &Node,
        path: &str,
        ramped: &[String],
    ) -> Option<Self> {
        match kind {
            "net" => parse_net(ctx, node, path, ramped).map(FaultKind::Net),
            "syscall" => kind_syscall::parse(ctx, node, path, ramped).map(FaultKind::Syscall),
            "stress" => kind_stress::parse(ctx, node, path, ramped).map(FaultKind::Stress),
            "pause" => kind_pause::parse(ctx, node, path).map(FaultKind::Pause),
            "kill" => kind_kill::parse(ctx, node, path).map(FaultKind::Kill),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Net(_) => "net",
            FaultKind::Syscall(_) => "syscall",
            FaultKind::Stress(_) => "stress",
            FaultKind::Pause(_) => "pause",
            FaultKind::Kill(_) => "kill",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            FaultKind::Net(spec) => format!("net: {}", spec.describe()),
            FaultKind::Syscall(spec) => format!("syscall: {}", spec.describe()),
            FaultKind::Stress(spec) => format!("stress: {}", spec.describe()),
            FaultKind::Pause(spec) => format!("pause: {}", spec.describe()),
            FaultKind::Kill(spec) => format!("kill: {}", spec.describe()),
        }
    }

    /// An instant event at `at` (no `for`), rather than a window.
    pub fn is_instant(&self) -> bool {
        INSTANT_KINDS.contains(&self.name())
    }

    /// The ramp-able parameters of this kind.
    pub fn ramp_params(&self) -> &'static [&'static str] {
        match self {
            FaultKind::Net(_) => &["drop", "delay"],
            FaultKind::Syscall(_) => kind_syscall::RAMP_PARAMS,
            FaultKind::Stress(_) => kind_stress::RAMP_PARAMS,
            FaultKind::Pause(_) | FaultKind::Kill(_) => &[],
        }
    }

    /// Whether `value` is a value `param` may take in this kind; the error says what is allowed.
    pub fn check_param(&self, param: &str, value: f64) -> Result<(), String> {
        match self {
            FaultKind::Net(spec) => match param {
                "drop" if (0.0..=100.0).contains(&value) => Ok(()),
                "drop" => Err(format!("{value}% is not allowed: 0 to 100")),
                "delay"
                    if value <= 5.0 && Duration::from_secs_f64(value.max(0.0)) >= spec.jitter =>
                {
                    Ok(())
                }
                "delay" => Err(format!(
                    "{} is not allowed: up to 5s (sch_fq's horizon drops later packets) and no less \
                     than the jitter",
                    Unit::Duration.format(value)
                )),
                other => Err(format!(
                    "a net fault cannot ramp '{other}': allowed are drop, delay"
                )),
            },
            FaultKind::Syscall(_) => kind_syscall::check_param(param, value),
            FaultKind::Stress(_) => kind_stress::check_param(param, value),
            FaultKind::Pause(_) | FaultKind::Kill(_) => Err(format!(
                "a {} fault cannot ramp '{param}': it has no ramp-able parameter",
                self.name()
            )),
        }
    }

    /// Makes the kind ready for a ramp of `param` (e.g. a drop ramp needs the drop programs attached).
    pub fn prepare_ramp(&mut self, param: &str, start: f64) {
        match self {
            FaultKind::Net(spec) => match param {
                "drop" => spec.drop_percent = Some(start),
                "delay" => spec.delay = Duration::from_secs_f64(start.max(0.0)),
                _ => {}
            },
            FaultKind::Syscall(spec) => {
                if param == "percent" {
                    spec.percent = start;
                }
            }
            FaultKind::Stress(spec) => {
                if param == "cpu_load"
                    && let Some(cpu) = spec.cpu.as_mut()
                {
                    cpu.load_pct = start;
                }
            }
            FaultKind::Pause(_) | FaultKind::Kill(_) => {}
        }
    }

    /// Its fixed intensities, for `budget.max_intensity` (ramps are checked at their ends).
    pub fn intensities(&self) -> Vec<(&'static str, f64)> {
        match self {
            FaultKind::Net(spec) => {
                let mut v = Vec::new();
                if let Some(d) = spec.drop_percent {
                    v.push(("drop", d));
                }
                if !spec.partitions.is_empty() {
                    // Everything to a partitioned peer is lost: as intense as a drop can be.
                    v.push(("drop", 100.0));
                }
                if !spec.delay.is_zero() {
                    v.push(("delay", (spec.delay + spec.jitter).as_secs_f64()));
                }
                v
            }
            FaultKind::Syscall(spec) => vec![("percent", spec.percent)],
            FaultKind::Stress(spec) => spec
                .cpu
                .map(|c| ("cpu_load", c.load_pct))
                .into_iter()
                .collect(),
            FaultKind::Pause(_) | FaultKind::Kill(_) => Vec::new(),
        }
    }

    /// Why two faults of these kinds cannot hit one target at the same time, if they cannot.
    pub fn conflicts_with(&self, other: &FaultKind) -> Option<String> {
        match (self, other) {
            (FaultKind::Net(_), FaultKind::Net(_)) => Some(
                "two net faults on one target at once would stack (each packet drawn twice, delays \
                 added): merge them into one fault, or move one so they do not overlap"
                    .into(),
            ),
            (FaultKind::Syscall(_), FaultKind::Syscall(_)) => Some(
                "two syscall faults on one target at once cannot both attach (the cgroup hooks take \
                 one kchaos program each) and would draw each call twice: list every operation in one \
                 fault, or move one so they do not overlap"
                    .into(),
            ),
            (FaultKind::Stress(_), FaultKind::Stress(_)) => Some(
                "two stress faults on one target at once add up, and neither's achieved load can be \
                 told apart: merge them into one fault (cpu, memory, io, fds together), or move one"
                    .into(),
            ),
            (FaultKind::Pause(_), FaultKind::Pause(_)) => Some(
                "two pauses of one target at once would share one cgroup.freeze, and the first to end \
                 would thaw it under the other: merge them into one, or move one so they do not overlap"
                    .into(),
            ),
            _ => None,
        }
    }

    /// What the safety review should know about this kind hitting the cgroup `target`.
    pub fn target_findings(
        &self,
        target: &std::path::Path,
        cgroup_root: &std::path::Path,
    ) -> Vec<(Risk, &'static str, String)> {
        match self {
            FaultKind::Stress(spec) => kind_stress::target_findings(spec, target, cgroup_root),
            FaultKind::Pause(_) => kind_pause::target_findings(target),
            FaultKind::Kill(spec) => kind_kill::target_findings(spec, target),
            FaultKind::Net(_) | FaultKind::Syscall(_) => Vec::new(),
        }
    }

    /// Whether a run of this kind can leave the target needing a rollback kchaos cannot do itself.
    pub fn rollback_advice(&self) -> Option<(Risk, String)> {
        match self {
            FaultKind::Net(spec) if !spec.partitions.is_empty() => Some((
                Risk::Low,
                "a partition can leave the target with broken connections or failed-over state; \
                 kchaos restores the network, not the application"
                    .into(),
            )),
            FaultKind::Net(_) => None,
            FaultKind::Syscall(spec) if spec.max.is_none() && spec.percent >= 100.0 => Some((
                Risk::Low,
                "every matching call fails and nothing caps how many (no max): the application may \
                 have given up, cached the failure or failed over; kchaos restores the calls, not the \
                 application"
                    .into(),
            )),
            FaultKind::Kill(spec) if spec.signal == crate::process_faults::signal::Signal::KILL => {
                Some((
                    Risk::Low,
                    "killed processes stay dead unless something restarts them (a supervisor, the \
                     container runtime); kchaos does not"
                        .into(),
                ))
            }
            FaultKind::Syscall(_) | FaultKind::Stress(_) | FaultKind::Pause(_) | FaultKind::Kill(_) => {
                None
            }
        }
    }

    /// The plan's line for the fault's end (None for an instant event, which has none).
    pub fn end_step(&self, name: &str) -> Option<String> {
        Some(match self {
            FaultKind::Kill(_) => return None,
            FaultKind::Pause(_) => {
                format!("thaw '{name}' (its guard thaws if kchaos dies; `kchaos stop` if both die)")
            }
            FaultKind::Stress(_) => {
                format!("stop '{name}': its workers end (they die with kchaos too)")
            }
            FaultKind::Net(_) | FaultKind::Syscall(_) => {
                format!("detach '{name}' (the kernel stops it by itself at this deadline too)")
            }
        })
    }

    /// Checks what this fault needs from the kernel, before anything is attached.
    pub fn preflight(&self) -> Result<(), BadInput> {
        match self {
            FaultKind::Net(spec) => NetFault::preflight(spec),
            FaultKind::Syscall(spec) => kind_syscall::preflight(spec),
            FaultKind::Stress(_) | FaultKind::Pause(_) | FaultKind::Kill(_) => Ok(()),
        }
    }

    /// Attaches it to the targets, unarmed.
    pub fn attach(
        &self,
        targets: &[Target],
        journal: &mut Journal,
    ) -> Result<Box<dyn ActiveFault>> {
        match self {
            FaultKind::Net(spec) => Ok(Box::new(NetFault::attach(spec.clone(), targets, journal)?)),
            FaultKind::Syscall(spec) => Ok(Box::new(SyscallFault::attach(spec.clone(), targets)?)),
            FaultKind::Stress(spec) => Ok(Box::new(StressFault::start(spec, targets, journal)?)),
            FaultKind::Pause(_) => Ok(Box::new(PauseFault::start(targets, journal)?)),
            // The signal goes out here: an instant event is attached, counted and detached at once.
            FaultKind::Kill(spec) => Ok(Box::new(KillFault::fire(spec, targets)?)),
        }
    }

    /// The kernel's count of what this kind injected, from its counters.
    pub fn injected_events(&self, counters: &BTreeMap<String, u64>) -> u64 {
        match self {
            FaultKind::Net(_) => counters
                .iter()
                .filter(|(k, _)| {
                    k.ends_with(".dropped")
                        || k.ends_with(".partitioned")
                        || k.ends_with(".delayed")
                })
                .map(|(_, v)| v)
                .sum(),
            FaultKind::Syscall(_) => kind_syscall::injected_events(counters),
            // A load is not a count of events; its intensity is cpu_load, and the report has the
            // achieved load in the counters.
            FaultKind::Stress(_) => 0,
            // Each process frozen, or signalled, is one event.
            FaultKind::Pause(_) => counters.get("processes").copied().unwrap_or(0),
            FaultKind::Kill(_) => counters.get("signalled").copied().unwrap_or(0),
        }
    }
}

/// Fault types `kchaos monkey --types` can pick from.
pub const MONKEY_TYPES: &[&str] = &["net-drop", "net-delay", "net-partition", "syscall", "cpu"];

/// Bounds on what the monkey may inject.
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

/// A random fault of `monkey_type` within `caps`; `draw` returns uniform numbers in [0, 1).
pub fn random_fault(
    monkey_type: &str,
    caps: &MonkeyCaps,
    draw: &mut dyn FnMut() -> f64,
) -> Result<FaultKind, BadInput> {
    let mut args = NetArgs::default();
    match monkey_type {
        "syscall" => {
            return kind_syscall::random(caps.max_syscall_percent, draw).map(FaultKind::Syscall);
        }
        "cpu" => return kind_stress::random_cpu(caps.max_cpu_load, draw).map(FaultKind::Stress),
        "net-drop" => {
            // Whole tenths of a percent, at least 1%.
            let p = 1.0 + draw() * (caps.max_drop_percent - 1.0).max(0.0);
            args.drop = Some((p * 10.0).round() / 10.0);
        }
        "net-delay" => {
            let max_ms = caps.max_delay.as_millis().max(1) as f64;
            let ms = (1.0 + draw() * (max_ms - 1.0)).round();
            args.delay = Some(Duration::from_millis(ms as u64));
        }
        "net-partition" => {
            if caps.peers.is_empty() {
                return Err(BadInput::new(
                    "--types net-partition needs --peer CIDR[:PORT]: which peer to cut the target off from",
                ));
            }
            let i = ((draw() * caps.peers.len() as f64) as usize).min(caps.peers.len() - 1);
            args.partitions = vec![caps.peers[i].clone()];
        }
        other => {
            return Err(BadInput::new(format!(
                "--types {other}: allowed are {}",
                MONKEY_TYPES.join(", ")
            )));
        }
    }
    NetSpec::from_args(&args).map(FaultKind::Net)
}

/// An attached fault, whatever its kind.
pub trait ActiveFault {
    /// Injects until `deadline_ns` (CLOCK_MONOTONIC); the kernel stops by itself after it.
    fn arm(&mut self, deadline_ns: u64) -> Result<()>;
    /// Sets a ramp parameter (see [`FaultKind::ramp_params`]; durations in seconds).
    fn set_param(&mut self, param: &str, value: f64) -> Result<()>;
    /// The kernel's counters, flat ("egress.dropped" -> n).
    fn counters(&self) -> Result<BTreeMap<String, u64>>;
    /// What was attached where, one line each.
    fn attachments(&self) -> Vec<String>;
    /// Stops injecting before the last counters are read (a pause thaws here, so its frozen time ends
    /// at the thaw); detach follows.
    fn stop(&mut self, _journal: &mut Journal) -> Result<()> {
        Ok(())
    }
    /// Detaches now.
    fn detach(self: Box<Self>, journal: &mut Journal) -> Result<()>;
}

impl ActiveFault for NetFault {
    fn arm(&mut self, deadline_ns: u64) -> Result<()> {
        NetFault::arm(self, deadline_ns)
    }

    fn set_param(&mut self, param: &str, value: f64) -> Result<()> {
        match param {
            "drop" => self.set_drop_percent(value.clamp(0.0, 100.0)),
            "delay" => self.set_delay(Duration::from_secs_f64(value.max(0.0))),
            other => anyhow::bail!("a net fault has no parameter '{other}'"),
        }
    }

    fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let t = self.totals()?;
        let mut m = BTreeMap::new();
        for (dir, c) in [("egress", t.egress), ("ingress", t.ingress)] {
            for (name, v) in [
                ("seen", c.seen),
                ("matched", c.matched),
                ("dropped", c.dropped),
                ("partitioned", c.partitioned),
                ("delayed", c.delayed),
            ] {
                m.insert(format!("{dir}.{name}"), v);
            }
        }
        Ok(m)
    }

    fn attachments(&self) -> Vec<String> {
        self.attachments.clone()
    }

    fn detach(self: Box<Self>, journal: &mut Journal) -> Result<()> {
        NetFault::detach(*self, journal)
    }
}

fn parse_net(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<NetSpec> {
    let f = ctx.map(node, path, NET_FIELDS)?;
    let before = ctx.errors.len();
    let mut args = NetArgs::default();
    if let Some(n) = f.value("drop") {
        args.drop = ctx.percent(n, &f.path_of("drop"));
    }
    if let Some(n) = f.value("delay") {
        args.delay = ctx.duration(n, &f.path_of("delay"));
    }
    if let Some(n) = f.value("jitter") {
        args.jitter = ctx.duration(n, &f.path_of("jitter"));
    }
    for (key, allow_port) in [("partition", true), ("dst", false)] {
        if let Some(n) = f.value(key) {
            let p = f.path_of(key);
            for (text, mark) in ctx.strings(n, &p) {
                match Peer::parse(&text, key, allow_port) {
                    Ok(_) => {
                        if key == "partition" {
                            args.partitions.push(text)
                        } else {
                            args.dsts.push(text)
                        }
                    }
                    Err(e) => ctx.err(mark, &p, e.0),
                }
            }
        }
    }
    if let Some(n) = f.value("port") {
        let p = f.path_of("port");
        match ctx.uint(n, &p, 65535) {
            Some(0) => ctx.err(n.mark, &p, "port 0 is not allowed: write 1 to 65535"),
            Some(v) => args.port = Some(v as u16),
            None => {}
        }
    }
    if let Some(n) = f.value("proto") {
        args.proto = match ctx
            .choice(n, &f.path_of("proto"), &["tcp", "udp", "icmp"])?
            .as_str()
        {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => Some(Proto::Icmp),
        };
    }
    if let Some(n) = f.value("direction") {
        args.direction = match ctx
            .choice(n, &f.path_of("direction"), &["egress", "ingress", "both"])?
            .as_str()
        {
            "ingress" => Direction::Ingress,
            "both" => Direction::Both,
            _ => Direction::Egress,
        };
    }
    if ctx.errors.len() > before {
        return None;
    }
    // A ramped parameter needs its programs attached even when the fault names no fixed value; the
    // ramp sets the real value before the fault is armed.
    if ramped.iter().any(|p| p == "drop") && args.drop.is_none() {
        args.drop = Some(0.0);
    }
    if ramped.iter().any(|p| p == "delay") && args.delay.is_none_or(|d| d.is_zero()) {
        args.delay = Some(Duration::from_millis(1).max(args.jitter.unwrap_or_default()));
    }
    match NetSpec::from_args(&args) {
        Ok(spec) => Some(spec),
        Err(e) => {
            // The checks across fields speak in flags (--delay); here they are fields.
            let text = e.0.replace("--", "");
            ctx.err(f.mark, path, text);
            None
        }
    }
}

/// The path of a kind's block in a fault, e.g. `faults[0].net`.
pub fn kind_path(fault_path: &str, kind: &str) -> String {
    join(fault_path, kind)
}
