//! A scenario file, read into typed values: targets, steady-state probes, faults on a timeline, ramps,
//! abort rules, a budget, rollbacks, and `${var}` variables. Reading checks each field where it is
//! written (line, column, what is allowed); checks across fields live in validate.rs.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    diagnostic::{Diagnostic, ScenarioErrors},
    fields::{CommandLine, Ctx, Fields, MAX_ERRORS, Vars, valid_name},
    yaml::{self, Mark, Node, Value},
};
use crate::{
    engine::{containers::Runtime, pods},
    kind::{self as kinds, FaultKind, Unit},
};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Scenario {
    pub file: String,
    pub title: String,
    pub description: String,
    /// Every variable with a value, as substituted.
    pub variables: BTreeMap<String, String>,
    pub targets: Vec<TargetDecl>,
    /// Allows the root cgroup or one holding kchaos (refused otherwise).
    pub allow_host: bool,
    pub steady_state: SteadyState,
    pub faults: Vec<FaultDecl>,
    pub abort: Vec<AbortRule>,
    pub budget: Option<Budget>,
    pub rollbacks: Vec<Rollback>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TargetDecl {
    pub name: String,
    pub what: TargetRef,
    #[serde(skip)]
    pub mark: Mark,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetRef {
    Cgroup(String),
    Pid(u32),
    /// A container by its runtime's name or its id.
    Container {
        name: String,
        runtime: Runtime,
    },
    /// A Kubernetes pod on this node (NAMESPACE/NAME), or one container of it.
    Pod {
        pod: String,
        container: Option<String>,
    },
}

impl TargetRef {
    /// How it was named, short: "pid 42", the cgroup path, "container web", "pod ns/web/app".
    pub fn describe(&self) -> String {
        match self {
            TargetRef::Pid(pid) => format!("pid {pid}"),
            TargetRef::Cgroup(cg) => cg.clone(),
            TargetRef::Container { name, .. } => format!("container {name}"),
            TargetRef::Pod { pod, container } => match container {
                Some(c) => format!("pod {pod} container {c}"),
                None => format!("pod {pod}"),
            },
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SteadyState {
    /// How long the probes run before anything is injected (the hypothesis must hold).
    pub before: Duration,
    /// How long they run after the last fault ends (recovery, MTTR).
    pub after: Duration,
    pub probes: Vec<ProbeSpec>,
}

/// One probe: what it checks, how often, and what counts as healthy.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeSpec {
    pub name: String,
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Run it from inside this target's cgroup, so it sees what the target sees.
    pub from_target: Option<String>,
    pub tolerance: Tolerance,
    #[serde(skip)]
    pub mark: Mark,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Check {
    /// A TCP connect.
    Tcp { address: SocketAddr },
    /// An HTTP GET (http:// or https://); healthy when the status is one of `statuses` (empty:
    /// 200-399). `ca`: a PEM file whose certificates an https server is checked against instead of
    /// Mozilla's roots (a private CA, a self-signed server).
    Http {
        url: String,
        statuses: Vec<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca: Option<PathBuf>,
    },
    /// A command (argv); healthy when it exits with `exit_code`. `env` holds the values of the
    /// scenario's variables (KCHAOS_VAR_<name>), set in its environment.
    Command {
        argv: Vec<String>,
        exit_code: i32,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tolerance {
    /// Share of results that must succeed, in percent.
    pub success_rate: f64,
    /// The 95th percentile of latency (of successful results) must stay below this.
    pub p95_latency: Option<Duration>,
    /// The sliding window over which it is judged while faults run.
    pub window: Duration,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultDecl {
    pub name: String,
    /// Names of the targets it hits.
    pub targets: Vec<String>,
    pub at: Duration,
    #[serde(rename = "for")]
    pub duration: Duration,
    pub kind: FaultKind,
    pub ramps: Vec<Ramp>,
    #[serde(skip)]
    pub mark: Mark,
}

impl FaultDecl {
    pub fn end(&self) -> Duration {
        self.at + self.duration
    }

    /// The resolved targets this fault hits, in their order. The names go into a set first: a
    /// command's fault hits every one of thousands of targets, and a search of the list for each
    /// target made starting 10,000 of them take seconds.
    pub fn targets_in<'a>(
        &self,
        resolved: &'a [super::validate::ResolvedTarget],
    ) -> impl Iterator<Item = &'a super::validate::ResolvedTarget> {
        let names: HashSet<&str> = self.targets.iter().map(String::as_str).collect();
        resolved
            .iter()
            .filter(move |t| names.contains(t.name.as_str()))
    }

    /// What it does, ramps included: a ramped parameter reads `from -> to` where the kind names it
    /// ("net: drop 0% -> 30% (egress); ramp percent over 3s, a step every 1s"), never its starting
    /// value alone.
    pub fn describe(&self) -> String {
        let mut text = self.kind.describe();
        for r in &self.ramps {
            let (mut a, mut b) = (self.kind.clone(), self.kind.clone());
            a.prepare_ramp(&r.param, r.from);
            b.prepare_ramp(&r.param, r.to);
            let (from, to) = (a.describe(), b.describe());
            if let Some(both) = splice_range(&text, &from, &to) {
                text = both;
            }
            text += &format!(
                "; ramp {} {} -> {} over {}, a step every {}",
                r.param,
                r.unit.format(r.from),
                r.unit.format(r.to),
                crate::units::format_duration(r.over),
                crate::units::format_duration(r.step)
            );
        }
        text
    }
}

/// `text` (a description with the ramp's start, as `from` is) with the word(s) where `from` and `to`
/// differ written as `from -> to`. None when they do not differ or `text` is not `from`.
fn splice_range(text: &str, from: &str, to: &str) -> Option<String> {
    if text != from || from == to {
        return None;
    }
    let prefix = from
        .char_indices()
        .zip(to.chars())
        .find(|((_, x), y)| x != y)
        .map_or(from.len().min(to.len()), |((i, _), _)| i);
    // Back to the start of the word, so "10%" against "15%" is not cut inside the number.
    let start = from[..prefix].rfind(' ').map_or(0, |i| i + 1);
    let common_suffix = from
        .chars()
        .rev()
        .zip(to.chars().rev())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x.len_utf8())
        .sum::<usize>()
        .min(from.len() - start)
        .min(to.len() - start);
    // Forward to the end of the word.
    let end_from = from.len() - common_suffix;
    let word_end = |s: &str, at: usize| s[at..].find(' ').map_or(s.len(), |i| at + i);
    let (mut ef, mut et) = (
        word_end(from, end_from),
        word_end(to, to.len() - common_suffix),
    );
    // Punctuation after the value stays after the arrow's end ("20%, -> 60%," reads "20% -> 60%,").
    while ef > end_from
        && et > start
        && from[..ef].ends_with([',', ';', ':', ')'])
        && from[..ef].chars().last() == to[..et].chars().last()
    {
        ef -= 1;
        et -= 1;
    }
    Some(format!(
        "{}{} -> {}{}",
        &from[..start],
        &from[start..ef],
        &to[start..et],
        &from[ef..]
    ))
}

/// A parameter moved from `from` to `to` over `over`, a step every `step`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Ramp {
    pub param: String,
    pub unit: Unit,
    /// Percent, or seconds for durations.
    pub from: f64,
    pub to: f64,
    pub over: Duration,
    pub step: Duration,
}

impl Ramp {
    /// The value `elapsed` after the fault started: held at each step, `to` from `over` on.
    pub fn value_at(&self, elapsed: Duration) -> f64 {
        if self.over.is_zero() || elapsed >= self.over {
            return self.to;
        }
        let step = self.step.as_secs_f64().max(1e-3);
        let stepped = (elapsed.as_secs_f64() / step).floor() * step;
        self.from + (self.to - self.from) * (stepped / self.over.as_secs_f64()).min(1.0)
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AbortRule {
    /// The probe whose tolerance is watched.
    pub probe: String,
    /// Abort once it has been violated this long without a break (0: at the first violation).
    pub violated_for: Duration,
    /// Judge by this success rate instead of the probe's own tolerance (an abort line is often looser
    /// than the steady state's).
    pub success_rate: Option<f64>,
    /// Judge by this p95 latency instead of the probe's own.
    pub p95_latency: Option<Duration>,
    #[serde(skip)]
    pub mark: Mark,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Budget {
    /// The whole run (before + faults + after) ends by then, and nothing is armed past it.
    pub max_duration: Option<Duration>,
    /// Stop injecting once the kernel has counted this many injected events (drops, delays, ...).
    pub max_injected_events: Option<u64>,
    /// Caps per parameter (percent, or seconds), e.g. drop 50, delay 0.5.
    pub max_intensity: BTreeMap<String, f64>,
    #[serde(skip)]
    pub mark: Mark,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Rollback {
    pub name: String,
    pub argv: Vec<String>,
    /// The values of the scenario's variables (KCHAOS_VAR_<name>), set in its environment.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
}

/// The top-level keys of a scenario file.
pub const TOP: &[&str] = &[
    "title",
    "description",
    "variables",
    "targets",
    "allow_host",
    "steady_state",
    "faults",
    "abort",
    "budget",
    "rollbacks",
];

/// The fault-target pairs a scenario may declare in all (a fault without `targets:` hits every
/// target): 100k faults on one target, or one fault on 100k targets, fit ten times over; 100k faults
/// each on 100k targets would not fit in memory.
pub const MAX_FAULT_TARGETS: usize = 1 << 20;

/// Reads a scenario file (at most [`crate::bounded_read::SCENARIO_LIMIT`] bytes).
pub fn load(path: &Path, vars: &Vars) -> Result<Scenario, ScenarioErrors> {
    let file = path.display().to_string();
    let what = "scenario file";
    let text = crate::bounded_read::read_regular(path, crate::bounded_read::SCENARIO_LIMIT, what)
        .and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| crate::bounded_read::ReadError::NotText {
                what,
                path: path.to_owned(),
            })
        })
        .map_err(|e| {
            ScenarioErrors(vec![Diagnostic::new(
                &file,
                Mark { line: 0, col: 0 },
                "",
                e.to_string(),
            )])
        })?;
    parse(&file, &text, vars)
}

/// Reads scenario text; `file` names it in errors.
pub fn parse(file: &str, text: &str, vars: &Vars) -> Result<Scenario, ScenarioErrors> {
    let root = yaml::parse(text).map_err(|e| {
        ScenarioErrors(vec![Diagnostic::new(
            file,
            e.mark,
            "",
            format!("YAML syntax: {}", e.message),
        )])
    })?;
    let mut vars = vars.clone();
    let mut ctx = Ctx {
        file: file.to_owned(),
        vars: &Vars::default(),
        errors: Vec::new(),
    };
    // Variable defaults first: every other field may use them.
    let Some(top) = ctx.map(&root, "", TOP) else {
        return Err(ScenarioErrors(ctx.errors));
    };
    if let Some(n) = top.value("variables") {
        read_variables(&mut ctx, n, &mut vars);
    }
    let mut errors = std::mem::take(&mut ctx.errors);
    let mut ctx = Ctx {
        file: file.to_owned(),
        vars: &vars,
        errors: Vec::new(),
    };
    let scenario = read(&mut ctx, &top);
    errors.append(&mut ctx.errors);
    if errors.is_empty() {
        Ok(scenario)
    } else {
        errors.sort_by_key(|d| (d.line, d.col));
        Err(ScenarioErrors(capped(file, errors)))
    }
}

/// At most [`MAX_ERRORS`] errors, and a last line saying when there were more.
pub fn capped(file: &str, mut errors: Vec<Diagnostic>) -> Vec<Diagnostic> {
    if errors.len() > MAX_ERRORS {
        errors.truncate(MAX_ERRORS);
        errors.push(Diagnostic::new(
            file,
            Mark { line: 0, col: 0 },
            "",
            format!("stopped at {MAX_ERRORS} errors: fix these and validate again"),
        ));
    }
    errors
}

fn read_variables(ctx: &mut Ctx, node: &Node, vars: &mut Vars) {
    let Value::Map(entries) = &node.value else {
        ctx.err(
            node.mark,
            "variables",
            format!(
                "expected a mapping of name: default, found {}",
                node.value.kind()
            ),
        );
        return;
    };
    for (k, v) in entries {
        let path = format!("variables.{}", k.name);
        if !valid_name(&k.name) {
            ctx.err(
                k.mark,
                &path,
                "a variable name is letters, digits, '_' and '-'",
            );
            continue;
        }
        match &v.value {
            // No default: it must come from --var or the environment.
            Value::Null => {}
            Value::Scalar(s) => {
                vars.defaults.insert(k.name.clone(), s.clone());
            }
            other => ctx.err(
                v.mark,
                &path,
                format!(
                    "a default is a single value (or nothing, to require --var), found {}",
                    other.kind()
                ),
            ),
        }
    }
}

fn read(ctx: &mut Ctx, top: &Fields) -> Scenario {
    let title = top
        .value("title")
        .and_then(|n| ctx.text(n, "title"))
        .unwrap_or_default();
    if title.is_empty() {
        ctx.err(
            top.mark,
            "title",
            "missing field 'title': name the experiment",
        );
    }
    let description = top
        .value("description")
        .and_then(|n| ctx.text(n, "description"))
        .unwrap_or_default();
    let allow_host = top
        .value("allow_host")
        .and_then(|n| ctx.boolean(n, "allow_host"))
        .unwrap_or(false);
    let targets = match ctx.required(
        top,
        "targets",
        "list the cgroups, pids or containers to hit",
    ) {
        Some(n) => read_targets(ctx, n),
        None => Vec::new(),
    };
    // Names as declared, also of entries with errors, so a reference to them is no second error.
    let target_names = declared_names(ctx, top.value("targets"), "target");
    let steady_state = match top.value("steady_state") {
        Some(n) => read_steady_state(ctx, n, &target_names),
        None => SteadyState {
            before: Duration::ZERO,
            after: Duration::ZERO,
            probes: Vec::new(),
        },
    };
    let faults = match ctx.required(top, "faults", "list at least one fault") {
        Some(n) => read_faults(ctx, n, &target_names),
        None => Vec::new(),
    };
    let probe_list = top.value("steady_state").and_then(|n| match &n.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == "probes")
            .map(|(_, v)| v),
        _ => None,
    });
    let probe_names = declared_names(ctx, probe_list, "probe");
    let abort = top
        .value("abort")
        .map(|n| read_abort(ctx, n, &probe_names))
        .unwrap_or_default();
    let budget = top.value("budget").and_then(|n| read_budget(ctx, n));
    let rollbacks = top
        .value("rollbacks")
        .map(|n| read_rollbacks(ctx, n))
        .unwrap_or_default();
    Scenario {
        file: ctx.file.clone(),
        title,
        description,
        variables: ctx.vars.resolved(),
        targets,
        allow_host,
        steady_state,
        faults,
        abort,
        budget,
        rollbacks,
    }
}

/// Declared names (of targets, of probes), in file order, with a set for lookups by name.
#[derive(Default)]
struct Names {
    list: Vec<String>,
    set: HashSet<String>,
}

impl Names {
    fn contains(&self, name: &str) -> bool {
        self.set.contains(name)
    }

    /// The names for an "allowed are" message: the first few, and how many in all.
    fn allowed(&self) -> String {
        const SHOWN: usize = 10;
        let shown = self.list[..self.list.len().min(SHOWN)].join(", ");
        if self.list.len() > SHOWN {
            format!("{shown}, ... ({} in all)", self.list.len())
        } else {
            shown
        }
    }
}

/// The names of a list's entries: each one's `name`, or `<prefix>-<n>`.
fn declared_names(ctx: &Ctx, list: Option<&Node>, prefix: &str) -> Names {
    let Some(Node {
        value: Value::Seq(items),
        ..
    }) = list
    else {
        return Names::default();
    };
    let list: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let given = match &item.value {
                Value::Map(entries) => entries.iter().find_map(|(k, v)| match &v.value {
                    Value::Scalar(s) if k.name == "name" => {
                        Some(super::fields::substitute(s, ctx.vars).unwrap_or_else(|_| s.clone()))
                    }
                    _ => None,
                }),
                _ => None,
            };
            given.unwrap_or_else(|| format!("{prefix}-{}", i + 1))
        })
        .collect();
    let set = list.iter().cloned().collect();
    Names { list, set }
}

/// An entry's name: the given one, or `<prefix>-<n>`; and where it is written.
fn name_of(ctx: &mut Ctx, f: &Fields, prefix: &str, index: usize) -> (String, Mark) {
    let name = f
        .value("name")
        .and_then(|n| ctx.text(n, &f.path_of("name")))
        .unwrap_or_else(|| format!("{prefix}-{}", index + 1));
    (name, f.get("name").map_or(f.mark, |n| n.mark))
}

/// Flags each name that an earlier entry of `list` used already. `places` holds, for each name, where
/// it is written and the entry's index in the list. By sorting, not by comparing every pair, nor by
/// copying each name into a set.
fn flag_duplicates<'a>(
    ctx: &mut Ctx,
    list: &str,
    names: impl Iterator<Item = &'a str>,
    places: &[(Mark, usize)],
) {
    let mut sorted: Vec<(&str, usize)> = names.zip(0..places.len()).collect();
    sorted.sort_unstable();
    for pair in sorted.windows(2) {
        let ((first, _), (name, at)) = (pair[0], pair[1]);
        if first == name {
            let (mark, index) = places[at];
            ctx.err(
                mark,
                &format!("{list}[{index}].name"),
                format!("the name '{name}' is used twice: names must be unique"),
            );
        }
    }
}

pub const TARGET_FIELDS: &[&str] = &["name", "cgroup", "pid", "container", "pod", "runtime"];
pub const STEADY_STATE_FIELDS: &[&str] = &["before", "after", "probes"];
pub const TOLERANCE_FIELDS: &[&str] = &["success_rate", "p95_latency", "window"];
/// A fault's keys besides its kind's block (one of `kinds::KINDS`).
pub const FAULT_FIELDS: &[&str] = &["name", "at", "for", "targets", "ramp"];
pub const RAMP_FIELDS: &[&str] = &["from", "to", "over", "step"];
pub const ABORT_FIELDS: &[&str] = &["probe", "for", "success_rate", "p95_latency"];
pub const BUDGET_FIELDS: &[&str] = &["max_duration", "max_injected_events", "max_intensity"];
pub const ROLLBACK_FIELDS: &[&str] = &["name", "command", "timeout"];

fn read_targets(ctx: &mut Ctx, node: &Node) -> Vec<TargetDecl> {
    let mut out: Vec<TargetDecl> = Vec::new();
    let mut places = Vec::new();
    for (i, item) in ctx.list(node, "targets", false).into_iter().enumerate() {
        let path = format!("targets[{i}]");
        let Some(f) = ctx.map(item, &path, TARGET_FIELDS) else {
            continue;
        };
        let (name, name_mark) = name_of(ctx, &f, "target", i);
        // A pod target may name one container of the pod.
        let given: Vec<&str> = ["cgroup", "pid", "container", "pod"]
            .into_iter()
            .filter(|k| f.has(k) && !(*k == "container" && f.has("pod")))
            .collect();
        if given.len() != 1 {
            ctx.err(
                f.mark,
                &path,
                format!(
                    "a target is exactly one of cgroup: PATH, pid: N, container: NAME|ID, pod: \
                     NAMESPACE/NAME (with an optional container: NAME) (found {})",
                    if given.is_empty() {
                        "none".to_owned()
                    } else {
                        given.join(" and ")
                    }
                ),
            );
            continue;
        }
        if f.has("runtime") && given[0] != "container" {
            ctx.err(
                f.mark,
                &f.path_of("runtime"),
                "runtime applies to container: targets only (not in a pod: target)",
            );
        }
        let text = |ctx: &mut Ctx, key: &str| {
            f.value(key)
                .and_then(|n| ctx.text(n, &f.path_of(key)))
                .and_then(|t| {
                    if t.trim().is_empty() {
                        ctx.err(f.mark, &f.path_of(key), "must not be empty");
                        None
                    } else {
                        Some(t)
                    }
                })
        };
        let what = match given[0] {
            "cgroup" => f
                .value("cgroup")
                .and_then(|n| ctx.text(n, &f.path_of("cgroup")))
                .map(TargetRef::Cgroup),
            "pid" => f
                .value("pid")
                .and_then(|n| ctx.uint(n, &f.path_of("pid"), u32::MAX as u64))
                .map(|p| TargetRef::Pid(p as u32)),
            "pod" => {
                let pod = text(ctx, "pod").and_then(|p| match pods::parse_pod(&p) {
                    Ok(_) => Some(p),
                    Err(e) => {
                        ctx.err(f.mark, &f.path_of("pod"), e);
                        None
                    }
                });
                let container = if f.has("container") {
                    text(ctx, "container").map(Some)
                } else {
                    Some(None)
                };
                match (pod, container) {
                    (Some(pod), Some(container)) => Some(TargetRef::Pod { pod, container }),
                    _ => None,
                }
            }
            _ => {
                let name = text(ctx, "container");
                let runtime = match f.value("runtime") {
                    Some(n) => ctx
                        .choice(n, &f.path_of("runtime"), Runtime::NAMES)
                        .and_then(|r| Runtime::from_name(&r)),
                    None => Some(Runtime::Any),
                };
                match (name, runtime) {
                    (Some(name), Some(runtime)) => Some(TargetRef::Container { name, runtime }),
                    _ => None,
                }
            }
        };
        if let Some(what) = what {
            places.push((name_mark, i));
            out.push(TargetDecl {
                name,
                what,
                mark: item.mark,
            });
        }
    }
    if out.is_empty() && ctx.errors.is_empty() {
        ctx.err(node.mark, "targets", "list at least one target");
    }
    flag_duplicates(ctx, "targets", out.iter().map(|t| t.name.as_str()), &places);
    out
}

pub const PROBE_FIELDS: &[&str] = &[
    "name",
    "tcp",
    "http",
    "command",
    "expect_status",
    "ca",
    "expect_exit",
    "interval",
    "timeout",
    "from_target",
    "tolerance",
];

fn read_steady_state(ctx: &mut Ctx, node: &Node, targets: &Names) -> SteadyState {
    let mut ss = SteadyState {
        before: Duration::from_secs(1),
        after: Duration::from_secs(2),
        probes: Vec::new(),
    };
    let Some(f) = ctx.map(node, "steady_state", STEADY_STATE_FIELDS) else {
        return ss;
    };
    if let Some(n) = f.value("before") {
        ss.before = ctx.duration(n, "steady_state.before").unwrap_or(ss.before);
    }
    if let Some(n) = f.value("after") {
        ss.after = ctx.duration(n, "steady_state.after").unwrap_or(ss.after);
    }
    let Some(list) = f.value("probes") else {
        return ss;
    };
    let mut places = Vec::new();
    for (i, item) in ctx
        .list(list, "steady_state.probes", false)
        .into_iter()
        .enumerate()
    {
        let path = format!("steady_state.probes[{i}]");
        let Some(p) = ctx.map(item, &path, PROBE_FIELDS) else {
            continue;
        };
        let (name, name_mark) = name_of(ctx, &p, "probe", i);
        if let Some(probe) = read_probe(ctx, &p, name, targets) {
            places.push((name_mark, i));
            ss.probes.push(probe);
        }
    }
    flag_duplicates(
        ctx,
        "steady_state.probes",
        ss.probes.iter().map(|p| p.name.as_str()),
        &places,
    );
    ss
}

fn read_probe(ctx: &mut Ctx, p: &Fields, name: String, targets: &Names) -> Option<ProbeSpec> {
    let kinds: Vec<&str> = ["tcp", "http", "command"]
        .into_iter()
        .filter(|k| p.has(k))
        .collect();
    if kinds.len() != 1 {
        ctx.err(
            p.mark,
            &p.path,
            "a probe is exactly one of tcp: HOST:PORT, http: URL, command: [ARGV...]",
        );
        return None;
    }
    let kind = kinds[0];
    for (field, owner) in [
        ("expect_status", "http"),
        ("ca", "http"),
        ("expect_exit", "command"),
    ] {
        if p.has(field) && kind != owner {
            ctx.err(
                p.get(field).map_or(p.mark, |n| n.mark),
                &p.path_of(field),
                format!("{field} applies to {owner} probes only"),
            );
        }
    }
    let node = p.value(kind)?;
    // Every field is read even when one before it was wrong, so one validate lists every error.
    let check = (|| {
        Some(match kind {
            "tcp" => {
                let text = ctx.text(node, &p.path_of("tcp"))?;
                match text.parse::<SocketAddr>() {
                    Ok(address) => Check::Tcp { address },
                    Err(_) => {
                        ctx.err(
                        node.mark,
                        &p.path_of("tcp"),
                        format!("'{text}' is not an address: write IP:PORT, e.g. 10.0.0.7:5432 or [::1]:80"),
                    );
                        return None;
                    }
                }
            }
            "http" => {
                let url = ctx.text(node, &p.path_of("http"))?;
                if let Err(e) = super::probes::check_http_url(&url) {
                    ctx.err(node.mark, &p.path_of("http"), e);
                    return None;
                }
                // Read now: a CA file that is missing or holds no certificate is bad input before
                // anything runs, not a probe that fails every attempt.
                let ca = match p.value("ca") {
                    Some(n) => {
                        let path = p.path_of("ca");
                        let file = PathBuf::from(ctx.text(n, &path)?);
                        if !url.starts_with("https://") {
                            ctx.err(n.mark, &path, "ca applies to https:// URLs only");
                        } else if let Err(e) = super::probes::read_ca(&file) {
                            ctx.err(n.mark, &path, e);
                        }
                        Some(file)
                    }
                    None => None,
                };
                let mut statuses = Vec::new();
                if let Some(n) = p.value("expect_status") {
                    let path = p.path_of("expect_status");
                    for item in ctx.list(n, &path, true) {
                        match ctx.uint(item, &path, 599) {
                            Some(s) if s >= 100 => statuses.push(s as u16),
                            Some(_) => ctx.err(item.mark, &path, "an HTTP status is 100 to 599"),
                            None => {}
                        }
                    }
                }
                Check::Http { url, statuses, ca }
            }
            _ => {
                // A single string runs through the shell, as a user would type it; variables reach it
                // through the environment, never as shell text.
                let CommandLine { argv, env } = ctx.command(node, &p.path_of("command"))?;
                let exit_code = match p.value("expect_exit") {
                    Some(n) => ctx.int(n, &p.path_of("expect_exit"))? as i32,
                    None => 0,
                };
                Check::Command {
                    argv,
                    exit_code,
                    env,
                }
            }
        })
    })();
    let interval = match p.value("interval") {
        Some(n) => ctx.duration(n, &p.path_of("interval")),
        None => Some(Duration::from_secs(1)),
    };
    let mut failed = interval.is_none();
    let interval = interval.unwrap_or(Duration::from_secs(1));
    if interval < Duration::from_millis(10) {
        ctx.err(
            p.get("interval").map_or(p.mark, |n| n.mark),
            &p.path_of("interval"),
            "an interval below 10ms is not allowed: a probe must not become the load",
        );
    }
    let timeout = match p.value("timeout") {
        Some(n) => ctx.duration(n, &p.path_of("timeout")),
        None => Some(Duration::from_secs(1)),
    };
    failed |= timeout.is_none();
    let timeout = timeout.unwrap_or(Duration::from_secs(1));
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        ctx.err(
            p.get("timeout").map_or(p.mark, |n| n.mark),
            &p.path_of("timeout"),
            "a timeout from 1ms to 60s is allowed",
        );
    }
    let from_target = (|| {
        Some(match p.get("from_target") {
            None => None,
            Some(n) => match &n.value {
                Value::Null => None,
                Value::Scalar(s) if matches!(s.as_str(), "true" | "false") => {
                    if s == "true" {
                        targets.list.first().cloned()
                    } else {
                        None
                    }
                }
                _ => {
                    let t = ctx.text(n, &p.path_of("from_target"))?;
                    if !targets.contains(&t) {
                        ctx.err(
                            n.mark,
                            &p.path_of("from_target"),
                            format!(
                                "no target named '{t}': write true (the first target) or one of {}",
                                targets.allowed()
                            ),
                        );
                    }
                    Some(t)
                }
            },
        })
    })();
    let mut tolerance = Tolerance {
        success_rate: 100.0,
        p95_latency: None,
        window: interval * 3,
    };
    if let Some(n) = p.value("tolerance") {
        let path = p.path_of("tolerance");
        if let Some(t) = ctx.map(n, &path, TOLERANCE_FIELDS) {
            if let Some(n) = t.value("success_rate") {
                match ctx.percent(n, &t.path_of("success_rate")) {
                    Some(v) => tolerance.success_rate = v,
                    None => failed = true,
                }
            }
            if let Some(n) = t.value("p95_latency") {
                tolerance.p95_latency = ctx.duration(n, &t.path_of("p95_latency"));
                failed |= tolerance.p95_latency.is_none();
            }
            if let Some(n) = t.value("window") {
                match ctx.duration(n, &t.path_of("window")) {
                    Some(w) => tolerance.window = w,
                    None => failed = true,
                }
                if tolerance.window < interval {
                    ctx.err(
                        n.mark,
                        &t.path_of("window"),
                        "the window must hold at least one interval",
                    );
                }
            }
        }
    }
    let (Some(check), Some(from_target)) = (check, from_target) else {
        return None;
    };
    if failed {
        return None;
    }
    Some(ProbeSpec {
        name,
        check,
        interval,
        timeout,
        from_target,
        tolerance,
        mark: p.mark,
    })
}

fn read_faults(ctx: &mut Ctx, node: &Node, targets: &Names) -> Vec<FaultDecl> {
    let mut allowed: Vec<&str> = FAULT_FIELDS.to_vec();
    allowed.extend(kinds::KINDS);
    let mut out: Vec<FaultDecl> = Vec::new();
    let mut places = Vec::new();
    let mut pairs = 0usize;
    let items = ctx.list(node, "faults", false);
    if items.is_empty() {
        ctx.err(node.mark, "faults", "list at least one fault");
    }
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("faults[{i}]");
        let Some(f) = ctx.map(item, &path, &allowed) else {
            continue;
        };
        let (name, name_mark) = name_of(ctx, &f, "fault", i);
        let at = match f.value("at") {
            Some(n) => ctx.duration(n, &f.path_of("at")),
            None => Some(Duration::ZERO),
        };
        // An instant kind (kill) happens at `at` and lasts nothing: `for` would promise a window.
        let instant = kinds::KINDS
            .iter()
            .find(|k| kinds::is_instant_kind(k) && f.get(k).is_some())
            .copied();
        let duration = match (instant, f.get("for")) {
            (Some(kind), Some(n)) => {
                ctx.err(
                    n.mark,
                    &f.path_of("for"),
                    format!(
                        "a {kind} fault is an instant event at its at: remove for (it has no duration)"
                    ),
                );
                None
            }
            (Some(_), None) => Some(Duration::ZERO),
            (None, _) => ctx
                .required(&f, "for", "how long the fault lasts, e.g. for: 10s")
                .and_then(|n| ctx.duration(n, &f.path_of("for"))),
        };
        if instant.is_none() && duration.is_some_and(|d| d.is_zero()) {
            ctx.err(
                f.get("for").map_or(f.mark, |n| n.mark),
                &f.path_of("for"),
                "a fault lasts longer than 0s",
            );
        }
        let given_targets = f.value("targets");
        pairs += match given_targets {
            None => targets.list.len(),
            Some(Node {
                value: Value::Seq(items),
                ..
            }) => items.len(),
            Some(_) => 1,
        };
        if pairs > MAX_FAULT_TARGETS {
            ctx.err(
                item.mark,
                &path,
                format!(
                    "the faults so far hit {pairs} targets in all (a fault without targets: hits every \
                     target): allowed are {MAX_FAULT_TARGETS} fault-target pairs; split the scenario"
                ),
            );
            break;
        }
        let fault_targets = match given_targets {
            None => targets.list.clone(),
            Some(n) => {
                let p = f.path_of("targets");
                let mut v = Vec::new();
                let mut listed = HashSet::new();
                for (t, mark) in ctx.strings(n, &p) {
                    if !targets.contains(&t) {
                        ctx.err(
                            mark,
                            &p,
                            format!("no target named '{t}': allowed are {}", targets.allowed()),
                        );
                    } else if listed.insert(t.clone()) {
                        // A target listed twice is hit once.
                        v.push(t);
                    }
                }
                v
            }
        };
        let kind_keys: Vec<&str> = kinds::KINDS
            .iter()
            .copied()
            .filter(|k| f.get(k).is_some())
            .collect();
        if kind_keys.len() != 1 {
            ctx.err(
                f.mark,
                &path,
                format!(
                    "a fault has exactly one kind: {} (found {})",
                    kinds::KINDS.join(", "),
                    if kind_keys.is_empty() {
                        "none".to_owned()
                    } else {
                        kind_keys.join(", ")
                    }
                ),
            );
            continue;
        }
        let kind_name = kind_keys[0];
        let ramp_node = f.value("ramp");
        let ramped: Vec<String> = ramp_node
            .map(|n| match &n.value {
                Value::Map(e) => e
                    .iter()
                    .map(|(k, _)| {
                        kinds::renamed_param(&k.name).map_or_else(|| k.name.clone(), str::to_owned)
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .unwrap_or_default();
        let null = Node {
            mark: f.mark,
            value: Value::Null,
        };
        let kind_node = f.get(kind_name).unwrap_or(&null);
        let kind_path = kinds::kind_path(&path, kind_name);
        let Some(mut kind) = FaultKind::parse(ctx, kind_name, kind_node, &kind_path, &ramped)
        else {
            continue;
        };
        let ramps = match ramp_node {
            Some(n) => read_ramps(ctx, n, &f.path_of("ramp"), &mut kind, duration),
            None => Vec::new(),
        };
        if let (Some(at), Some(duration)) = (at, duration) {
            places.push((name_mark, i));
            out.push(FaultDecl {
                name,
                targets: fault_targets,
                at,
                duration,
                kind,
                ramps,
                mark: item.mark,
            });
        }
    }
    flag_duplicates(ctx, "faults", out.iter().map(|f| f.name.as_str()), &places);
    out
}

fn read_ramps(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    kind: &mut FaultKind,
    fault_for: Option<Duration>,
) -> Vec<Ramp> {
    let params = kind.ramp_params();
    let mut allowed = params.clone();
    allowed.extend(kind.renamed().iter().map(|(old, _)| *old));
    let Some(f) = ctx.map(node, path, &allowed) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for key in f.keys() {
        let written = key.name.as_str();
        let p = f.path_of(written);
        let param = match kind.renamed_param(written) {
            // An old name (drop, cpu_load) still works for one release.
            Some(new) => {
                if ctx.renamed(&f, new, written).is_none() {
                    continue;
                }
                new
            }
            None => written,
        };
        if !params.contains(&param) {
            continue;
        }
        let Some(unit) = kinds::unit_of(param) else {
            continue;
        };
        let Some(n) = f.value(written) else { continue };
        let Some(r) = ctx.map(n, &p, RAMP_FIELDS) else {
            continue;
        };
        let value = |ctx: &mut Ctx, k: &str| -> Option<f64> {
            let n = ctx.required(&r, k, &format!("the {k} value of the ramp"))?;
            let v = ctx.in_unit(unit, n, &r.path_of(k))?;
            if let Err(e) = kind.check_param(param, v) {
                ctx.err(n.mark, &r.path_of(k), e);
                return None;
            }
            Some(v)
        };
        let from = value(ctx, "from");
        let to = value(ctx, "to");
        let over = ctx
            .required(&r, "over", "how long the ramp takes, e.g. over: 5s")
            .and_then(|n| ctx.duration(n, &r.path_of("over")));
        let step = match r.value("step") {
            Some(n) => ctx.duration(n, &r.path_of("step")),
            None => Some(Duration::from_secs(1)),
        };
        if step.is_some_and(|s| s < Duration::from_millis(100)) {
            ctx.err(
                r.get("step").map_or(r.mark, |n| n.mark),
                &r.path_of("step"),
                "a step of at least 100ms is allowed",
            );
        }
        if let (Some(over), Some(fault_for)) = (over, fault_for)
            && over > fault_for
        {
            ctx.err(
                r.get("over").map_or(r.mark, |n| n.mark),
                &r.path_of("over"),
                format!(
                    "the ramp takes {} but the fault lasts {}: allowed is up to the fault's for",
                    crate::units::format_duration(over),
                    crate::units::format_duration(fault_for)
                ),
            );
        }
        if let (Some(from), Some(to), Some(over), Some(step)) = (from, to, over, step) {
            kind.prepare_ramp(param, from);
            out.push(Ramp {
                param: param.to_owned(),
                unit,
                from,
                to,
                over,
                step,
            });
        }
    }
    out
}

fn read_abort(ctx: &mut Ctx, node: &Node, probes: &Names) -> Vec<AbortRule> {
    let mut out = Vec::new();
    for (i, item) in ctx.list(node, "abort", false).into_iter().enumerate() {
        let path = format!("abort[{i}]");
        let Some(f) = ctx.map(item, &path, ABORT_FIELDS) else {
            continue;
        };
        let Some(n) = ctx.required(&f, "probe", "the name of a steady_state probe") else {
            continue;
        };
        let Some(probe) = ctx.text(n, &f.path_of("probe")) else {
            continue;
        };
        if !probes.contains(&probe) {
            ctx.err(
                n.mark,
                &f.path_of("probe"),
                format!(
                    "no probe named '{probe}': allowed are {}",
                    if probes.list.is_empty() {
                        "(none: add steady_state.probes)".to_owned()
                    } else {
                        probes.allowed()
                    }
                ),
            );
            continue;
        }
        let violated_for = match f.value("for") {
            Some(n) => match ctx.duration(n, &f.path_of("for")) {
                Some(d) => d,
                None => continue,
            },
            None => Duration::ZERO,
        };
        let success_rate = match f.value("success_rate") {
            Some(n) => match ctx.percent(n, &f.path_of("success_rate")) {
                Some(v) => Some(v),
                None => continue,
            },
            None => None,
        };
        let p95_latency = match f.value("p95_latency") {
            Some(n) => match ctx.duration(n, &f.path_of("p95_latency")) {
                Some(v) => Some(v),
                None => continue,
            },
            None => None,
        };
        out.push(AbortRule {
            probe,
            violated_for,
            success_rate,
            p95_latency,
            mark: item.mark,
        });
    }
    out
}

fn read_budget(ctx: &mut Ctx, node: &Node) -> Option<Budget> {
    let f = ctx.map(node, "budget", BUDGET_FIELDS)?;
    let mut b = Budget {
        mark: node.mark,
        ..Budget::default()
    };
    if let Some(n) = f.value("max_duration") {
        b.max_duration = ctx.duration(n, "budget.max_duration");
    }
    if let Some(n) = f.value("max_injected_events") {
        b.max_injected_events = ctx.uint(n, "budget.max_injected_events", u64::MAX);
    }
    if let Some(n) = f.value("max_intensity") {
        let params = kinds::intensity_params();
        let mut names: Vec<&str> = params.iter().map(|(p, _)| *p).collect();
        names.extend(kinds::renamed_params().iter().map(|(old, _)| *old));
        if let Some(m) = ctx.map(n, "budget.max_intensity", &names) {
            for (param, unit) in &params {
                // Old names (drop, cpu_load) of a parameter still work for one release.
                let olds = kinds::renamed_params()
                    .into_iter()
                    .filter(|(_, new)| new == param)
                    .map(|(old, _)| old);
                let written: Vec<&str> = std::iter::once(*param)
                    .chain(olds)
                    .filter(|k| m.has(k))
                    .collect();
                if written.len() > 1 {
                    let mark = m.get(written[1]).map_or(m.mark, |n| n.mark);
                    ctx.err(
                        mark,
                        &m.path_of(written[1]),
                        format!(
                            "give one of {} (old names of {param}), not several",
                            written.join(", ")
                        ),
                    );
                    continue;
                }
                let Some(key) = written.first().copied() else {
                    continue;
                };
                if key != *param {
                    crate::output::deprecated(&m.path_of(key), &m.path_of(param));
                }
                if let Some(n) = m.value(key) {
                    let p = m.path_of(key);
                    let v = ctx.in_unit(*unit, n, &p);
                    if let Some(v) = v {
                        b.max_intensity.insert((*param).to_owned(), v);
                    }
                }
            }
        }
    }
    Some(b)
}

fn read_rollbacks(ctx: &mut Ctx, node: &Node) -> Vec<Rollback> {
    let mut out: Vec<Rollback> = Vec::new();
    let mut places = Vec::new();
    for (i, item) in ctx.list(node, "rollbacks", false).into_iter().enumerate() {
        let path = format!("rollbacks[{i}]");
        let Some(f) = ctx.map(item, &path, ROLLBACK_FIELDS) else {
            continue;
        };
        let (name, name_mark) = name_of(ctx, &f, "rollback", i);
        let Some(n) = ctx.required(
            &f,
            "command",
            "a command: a string for the shell, or a list",
        ) else {
            continue;
        };
        let Some(CommandLine { argv, env }) = ctx.command(n, &f.path_of("command")) else {
            continue;
        };
        let timeout = match f.value("timeout") {
            Some(n) => ctx
                .duration(n, &f.path_of("timeout"))
                .unwrap_or(Duration::from_secs(30)),
            None => Duration::from_secs(30),
        };
        places.push((name_mark, i));
        out.push(Rollback {
            name,
            argv,
            env,
            timeout,
        });
    }
    flag_duplicates(
        ctx,
        "rollbacks",
        out.iter().map(|r| r.name.as_str()),
        &places,
    );
    out
}

impl AbortRule {
    /// The tolerance this rule judges by: the probe's, with this rule's overrides.
    pub fn tolerance(&self, probe: &Tolerance) -> Tolerance {
        Tolerance {
            success_rate: self.success_rate.unwrap_or(probe.success_rate),
            p95_latency: self.p95_latency.or(probe.p95_latency),
            window: probe.window,
        }
    }
}

impl Scenario {
    /// When the last fault ends, from the start of injection.
    pub fn method_length(&self) -> Duration {
        self.faults
            .iter()
            .map(FaultDecl::end)
            .max()
            .unwrap_or_default()
    }

    /// Before + method + after.
    pub fn total_length(&self) -> Duration {
        self.steady_state.before + self.method_length() + self.steady_state.after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_reads_from_start_to_end_where_the_kind_names_it() {
        assert_eq!(
            splice_range(
                "net: drop 0% (egress)",
                "net: drop 0% (egress)",
                "net: drop 30% (egress)"
            )
            .as_deref(),
            Some("net: drop 0% -> 30% (egress)")
        );
        // Not cut inside a number that starts alike.
        assert_eq!(
            splice_range("x: delay 10ms", "x: delay 10ms", "x: delay 15ms").as_deref(),
            Some("x: delay 10ms -> 15ms")
        );
        assert_eq!(
            splice_range("2 at 20%, 64M", "2 at 20%, 64M", "2 at 60%, 64M").as_deref(),
            Some("2 at 20% -> 60%, 64M")
        );
        assert_eq!(splice_range("a 1", "a 1", "a 1"), None);
    }

    pub const GOOD: &str = r#"
title: loss ramp
description: 0 to 40 % loss while the echo probe watches
variables:
  cgroup:
  server: 127.0.0.1:7000
targets:
  - name: app
    cgroup: ${cgroup}
steady_state:
  before: 1s
  after: 1s
  probes:
    - name: echo
      tcp: ${server}
      interval: 100ms
      timeout: 300ms
      from_target: true
      tolerance: { success_rate: 90%, p95_latency: 200ms, window: 1s }
faults:
  - name: loss
    at: 0s
    for: 4s
    net: { direction: egress }
    ramp:
      percent: { from: 0%, to: 40%, over: 4s }
abort:
  - probe: echo
    for: 1s
budget:
  max_duration: 20s
  max_injected_events: 100000
  max_intensity: { percent: 50% }
rollbacks:
  - name: note
    command: "true"
"#;

    pub fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::default();
        for (k, val) in pairs {
            v.cli.insert((*k).into(), (*val).into());
        }
        v
    }

    #[test]
    fn reads_a_full_scenario() {
        let s = parse("g.yaml", GOOD, &vars(&[("cgroup", "lab")])).unwrap();
        assert_eq!(s.title, "loss ramp");
        assert_eq!(s.targets[0].what, TargetRef::Cgroup("lab".into()));
        let p = &s.steady_state.probes[0];
        assert_eq!(
            p.check,
            Check::Tcp {
                address: "127.0.0.1:7000".parse().unwrap()
            }
        );
        assert_eq!(p.from_target.as_deref(), Some("app"));
        assert_eq!(p.tolerance.success_rate, 90.0);
        let f = &s.faults[0];
        assert_eq!(f.duration, Duration::from_secs(4));
        assert_eq!(f.ramps[0].to, 40.0);
        let FaultKind::Net(spec) = &f.kind else {
            panic!("not a net fault: {:?}", f.kind)
        };
        assert_eq!(spec.drop_percent, Some(0.0), "a drop ramp attaches drop");
        assert_eq!(s.abort[0].violated_for, Duration::from_secs(1));
        assert_eq!(s.budget.as_ref().unwrap().max_intensity["percent"], 50.0);
        assert_eq!(s.rollbacks[0].argv, ["/bin/sh", "-c", "true"]);
        assert_eq!(s.total_length(), Duration::from_secs(6));
    }

    #[test]
    fn ramps_step_every_second() {
        let r = Ramp {
            param: "drop".into(),
            unit: Unit::Percent,
            from: 0.0,
            to: 40.0,
            over: Duration::from_secs(4),
            step: Duration::from_secs(1),
        };
        let at = |ms| r.value_at(Duration::from_millis(ms));
        assert_eq!(
            [at(0), at(999), at(1000), at(2500), at(4000), at(9000)],
            [0.0, 0.0, 10.0, 20.0, 40.0, 40.0]
        );
    }

    fn errors(text: &str) -> Vec<String> {
        match parse("s.yaml", text, &vars(&[("cgroup", "x")])) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// Four mistakes in one probe, each after one that used to end its reading (a bad check, a bad
    /// interval, a timeout without a unit): all four are reported at once.
    #[test]
    fn every_error_of_one_probe_is_reported() {
        let e = errors(
            "title: t\ntargets: [{name: app, cgroup: x}]\nsteady_state:\n  probes:\n    - name: p\n      \
             tcp: not-an-address\n      interval: 5parsecs\n      timeout: 300\n      \
             tolerance: {sucess_rate: 99}\nfaults: [{name: f, at: 0s, for: 1s, net: {percent: 1}}]\n",
        );
        assert_eq!(e.len(), 4, "{e:#?}");
        for field in [
            "].tcp:",
            "].interval:",
            "].timeout:",
            "tolerance.sucess_rate:",
        ] {
            assert!(
                e.iter().any(|l| l.contains(field)),
                "{field} missing: {e:#?}"
            );
        }
    }

    #[test]
    fn each_error_names_place_field_and_what_is_allowed() {
        let e = errors(&GOOD.replace("net: { direction: egress }", "net: { percnt: 5 }"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("s.yaml:24:12:")
                && e[0].contains("faults[0].net.percnt")
                && e[0].contains("did you mean 'percent'")
                && e[0].contains("allowed are percent, drop, drop_correlation, loss_model, delay"),
            "{e:?}"
        );
        let e = errors(&GOOD.replace("for: 4s", "for: 4"));
        assert!(
            e[0].starts_with("s.yaml:23:10: faults[0].for: '4' is not a duration"),
            "{e:?}"
        );
        let e = errors(&GOOD.replace("to: 40%", "to: 140%"));
        assert!(
            e[0].contains("faults[0].ramp.percent.to") && e[0].contains("0 to 100"),
            "{e:?}"
        );
        let e = errors(&GOOD.replace("steady_state:", "steady_sate:"));
        assert!(e[0].contains("did you mean 'steady_state'"), "{e:?}");
        let e = errors(&GOOD.replace("probe: echo", "probe: ehco"));
        assert!(
            e[0].contains("abort[0].probe") && e[0].contains("allowed are echo"),
            "{e:?}"
        );
        let e = errors(&GOOD.replace("tcp: ${server}", "tcp: ${srv}"));
        assert!(e[0].contains("--var srv=VALUE"), "{e:?}");
        let e = errors(&GOOD.replace("over: 4s", "over: 5s"));
        assert!(e[0].contains("up to the fault's for"), "{e:?}");
        let e = errors(&GOOD.replace("    net: { direction: egress }\n", ""));
        assert!(
            e[0].contains("exactly one kind: net, syscall, stress"),
            "{e:?}"
        );
        let e = errors(&GOOD.replace(
            "max_intensity: { percent: 50% }",
            "max_intensity: { cpu: 5 }",
        ));
        assert!(e[0].contains("budget.max_intensity.cpu"), "{e:?}");
    }

    #[test]
    fn old_names_of_percent_still_read_the_same() {
        let new = parse("s.yaml", GOOD, &vars(&[("cgroup", "lab")])).unwrap();
        let old_text = GOOD
            .replace(
                "net: { direction: egress }",
                "net: { direction: egress, drop: 5 }",
            )
            .replace("      percent: { from", "      drop: { from")
            .replace(
                "max_intensity: { percent: 50% }",
                "max_intensity: { drop: 50% }",
            );
        let old = parse("s.yaml", &old_text, &vars(&[("cgroup", "lab")])).unwrap();
        assert_eq!(old.faults[0].ramps, new.faults[0].ramps);
        assert_eq!(old.faults[0].ramps[0].param, "percent");
        assert_eq!(old.budget.as_ref().unwrap().max_intensity["percent"], 50.0);
        let e = errors(&old_text.replace("drop: 5", "drop: 5, percent: 5"));
        assert!(
            e[0].contains("faults[0].net.drop") && e[0].contains("not both"),
            "{e:?}"
        );
        let stress = |load: &str| {
            GOOD.replace(
                "net: { direction: egress }",
                &format!("stress: {{ cpu: 1, {load}: 30% }}"),
            )
            .replace("      percent: { from", &format!("      {load}: {{ from"))
            .replace(
                "max_intensity: { percent: 50% }",
                "max_intensity: { cpu_load: 50% }",
            )
        };
        let old = parse("s.yaml", &stress("cpu_load"), &vars(&[("cgroup", "lab")])).unwrap();
        let new = parse("s.yaml", &stress("percent"), &vars(&[("cgroup", "lab")])).unwrap();
        assert_eq!(old.faults[0].kind, new.faults[0].kind);
        assert_eq!(old.faults[0].ramps[0].param, "percent");
    }

    #[test]
    fn syscall_and_stress_kinds_read_with_located_errors() {
        let sys = GOOD
            .replace(
                "net: { direction: egress }",
                "syscall: { syscalls: [connect], errno: ECONNREFUSED }",
            )
            .replace(
                "percent: { from: 0%, to: 40%",
                "percent: { from: 10%, to: 40%",
            );
        let s = parse("s.yaml", &sys, &vars(&[("cgroup", "lab")])).unwrap();
        let FaultKind::Syscall(spec) = &s.faults[0].kind else {
            panic!("{:?}", s.faults[0].kind)
        };
        assert_eq!(
            (spec.op_names.as_slice(), spec.errno, spec.percent),
            (&["connect"][..], libc::ECONNREFUSED, 10.0),
            "the ramp's start is the rate at arming"
        );
        let e = errors(&sys.replace("errno: ECONNREFUSED", "errno: ECONREFUSED"));
        assert!(
            e[0].starts_with("s.yaml:24:44: faults[0].syscall.errno: unknown errno 'ECONREFUSED'")
                && e[0].contains("did you mean 'ECONNREFUSED'"),
            "{e:?}"
        );
        let e = errors(&sys.replace("syscalls: [connect]", "syscalls: [conect]"));
        assert!(
            e[0].starts_with("s.yaml:24:27: faults[0].syscall.syscalls")
                && e[0].contains("unknown syscall 'conect' (did you mean 'connect'?)"),
            "{e:?}"
        );
        let e = errors(&sys.replace("to: 40%", "to: 140%"));
        assert!(
            e[0].contains("faults[0].ramp.percent.to") && e[0].contains("0 to 100"),
            "{e:?}"
        );

        let stress = GOOD
            .replace(
                "net: { direction: egress }",
                "stress: { cpu: 2, percent: 50%, memory: 64M }",
            )
            .replace(
                "percent: { from: 0%, to: 40%",
                "percent: { from: 10%, to: 40%",
            )
            .replace(
                "max_intensity: { percent: 50% }",
                "max_intensity: { percent: 30% }",
            );
        let s = parse("s.yaml", &stress, &vars(&[("cgroup", "lab")])).unwrap();
        let FaultKind::Stress(spec) = &s.faults[0].kind else {
            panic!("{:?}", s.faults[0].kind)
        };
        assert_eq!(spec.memory_bytes, Some(64 << 20));
        assert_eq!(spec.cpu.map(|c| (c.workers, c.load_pct)), Some((2, 10.0)));
        // The ramp ends at 40%, above the budget's 30%.
        let v = crate::experiment::validate::check(&s);
        assert!(
            v[0].message
                .contains("percent 40%, above budget.max_intensity.percent 30%"),
            "{v:?}"
        );
        let e = errors(&stress.replace("memory: 64M", "memory: 64Q"));
        assert!(
            e[0].starts_with("s.yaml:24:45: faults[0].stress.memory: '64Q' is not a size"),
            "{e:?}"
        );
        let e = errors(&stress.replace("cpu: 2, ", ""));
        assert!(
            e.iter().any(|e| e.contains("percent needs cpu: N")),
            "{e:?}"
        );
    }

    #[test]
    fn several_errors_at_once() {
        let text = GOOD
            .replace("interval: 100ms", "interval: fast")
            .replace("for: 4s", "for: -1s")
            .replace("max_duration: 20s", "max_duration: 20 s x");
        assert_eq!(errors(&text).len(), 3, "{:?}", errors(&text));
    }

    #[test]
    fn missing_variable_without_default() {
        let e = match parse("s.yaml", GOOD, &Vars::default()) {
            Err(e) => e.0,
            Ok(_) => panic!("no error"),
        };
        assert!(e[0].message.contains("'cgroup' has no value"), "{e:?}");
        assert_eq!((e[0].line, e[0].col), (9, 13));
    }

    #[test]
    fn names_are_unique_and_references_list_a_few_names() {
        let e = errors(&GOOD.replace(
            "  - name: note\n",
            "  - name: note\n    command: x\n  - name: note\n",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("rollbacks[1].name: the name 'note' is used twice"),
            "{e:?}"
        );
        let targets: String = (0..20)
            .map(|i| format!("  - {{name: t{i}, cgroup: c{i}}}\n"))
            .collect();
        let text = format!(
            "title: t\ntargets:\n{targets}faults:\n  - {{for: 1s, targets: [t3, t3, nope], net: {{drop: 1}}}}\n"
        );
        let e = match parse("s.yaml", &text, &Vars::default()) {
            Err(e) => e.0,
            Ok(_) => panic!("no error"),
        };
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].message
                .ends_with("no target named 'nope': allowed are t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, ... (20 in all)"),
            "{e:?}"
        );
        let s = parse("s.yaml", &text.replace(", nope", ""), &Vars::default()).unwrap();
        assert_eq!(
            s.faults[0].targets,
            ["t3"],
            "a target listed twice is hit once"
        );
    }

    #[test]
    fn fault_target_pairs_are_bounded() {
        // 1100 targets and 1000 faults that each hit all of them: 1.1 million pairs.
        let targets: String = (0..1100)
            .map(|i| format!("  - {{name: t{i}, cgroup: c}}\n"))
            .collect();
        let faults = "  - {for: 1s, net: {drop: 1}}\n".repeat(1000);
        let text = format!("title: t\ntargets:\n{targets}faults:\n{faults}");
        let e = match parse("s.yaml", &text, &Vars::default()) {
            Err(e) => e.0,
            Ok(_) => panic!("no error"),
        };
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "faults[953]", "{e:?}");
        assert!(
            e[0].message
                .contains("allowed are 1048576 fault-target pairs"),
            "{e:?}"
        );
    }

    /// Fuzzing: mutated and random inputs never panic (each either parses or gives located errors),
    /// and whatever parses goes through the checks, the review and the plan without a panic either.
    #[test]
    fn no_panic_on_any_input() {
        let mut rng = crate::experiment::monkey::Rng::new(0x6b63_6861_6f73);
        let pieces: &[&str] = &[
            ":", "-", " ", "\n", "  ", "{", "}", "[", "]", ",", "\"", "'", "&a", "*a", "!!str ",
            "#", "${", "}", "$$", "---\n", "|", ">", "%", "?", "~", "0", "1e999", "-1", "100%",
            "1s", "\t", "\u{feff}", "é", "\\", "null", "for", "at", "net", "drop", "ramp", "from",
        ];
        let v = vars(&[("cgroup", "x")]);
        let mut parsed = 0;
        for round in 0..4000 {
            let mut text: Vec<char> = if round % 10 == 0 {
                Vec::new()
            } else {
                GOOD.chars().collect()
            };
            let edits = 1 + (rng.next_u64() % 8) as usize;
            for _ in 0..edits {
                let at = if text.is_empty() {
                    0
                } else {
                    (rng.next_u64() % (text.len() as u64 + 1)) as usize
                };
                match rng.next_u64() % 4 {
                    0 if !text.is_empty() => {
                        let end = (at + 1 + (rng.next_u64() % 20) as usize).min(text.len());
                        text.drain(at.min(end)..end);
                    }
                    1 => {
                        let p = pieces[(rng.next_u64() % pieces.len() as u64) as usize];
                        for (k, c) in p.chars().enumerate() {
                            text.insert(at + k, c);
                        }
                    }
                    2 if !text.is_empty() && at < text.len() => {
                        text[at] = char::from_u32((rng.next_u64() % 0x250) as u32).unwrap_or('x');
                    }
                    _ => text.truncate(at),
                }
            }
            let text: String = text.into_iter().collect();
            match parse("f.yaml", &text, &v) {
                Ok(s) => {
                    parsed += 1;
                    let _ = crate::experiment::validate::check(&s);
                    let _ = crate::experiment::review::review(&s, &[], &[], None);
                    let _ = crate::experiment::plan::timeline(&s, &[]);
                }
                Err(e) => {
                    assert!(
                        !e.0.is_empty(),
                        "an error without a diagnostic for {text:?}"
                    );
                    for d in &e.0 {
                        assert!(!d.message.is_empty(), "{text:?}");
                    }
                }
            }
        }
        assert!(
            parsed > 20,
            "the mutations should leave some inputs valid: {parsed}"
        );
    }
}
