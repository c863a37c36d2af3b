//! The `stress` kind: CPU, memory, io and fd load inside the target cgroups, by worker processes that
//! run there (counted by its accounting, held to its limits) and die with kchaos, however it ends.
//!
//! `spec` is what is asked, `session` one target's load from start to stop, `workers` the loader's side
//! of the worker processes and `worker` theirs (the hidden `kchaos stress-worker`), `limits` and
//! `hybrid` the memory limits and v1 cgroups the workers must respect, `ramp` the `--ramp` steps,
//! `result` what was achieved.

pub mod hybrid;
pub mod limits;
pub mod ramp;
mod result;
pub mod session;
mod spec;
pub mod worker;
pub mod workers;
mod yaml;

pub use self::spec::{
    CpuSpec, IoSpec, MAX_CPU_WORKERS, StressArgs, StressSpec, format_size, parse_rate,
};

use std::{cell::RefCell, path::Path, time::Instant};

use anyhow::Result;

use self::{
    ramp::Ramp,
    result::{Readings, StressResult, TargetResult},
    session::{Stress, V1Placement},
    workers::Measurement,
};
use crate::{
    engine::journal::Journal,
    engine::procfs,
    engine::targets::Target,
    error::BadInput,
    experiment::{fields::Ctx, review::Risk, yaml::Node},
    kind::{Active, Counters, Kind, MetricMap, MonkeyCaps, TargetFinding, Unit},
    report::FaultRecord,
};

pub const EXAMPLES: &str = "Workers run as processes in the target cgroup (counted by its accounting, held to \
its limits) and die with kchaos, however it ends.\n\nExamples:\n  \
kchaos stress --cgroup app --cpu 2 --percent 50 --duration 1m\n  \
kchaos stress --pid 4242 --memory 512M --ramp 10s --duration 30s --json report.json\n  \
kchaos stress --cgroup app --io-write 20M --io-dir /var/lib/app --fds 5000";

impl Kind for StressSpec {
    const COUNTS_EVENTS: bool = false;
    const YAML_FIELDS: &'static [&'static str] = yaml::FIELDS;
    const NAME: &'static str = "stress";
    const PARAMS: &'static [(&'static str, Unit)] = &[("percent", Unit::Percent)];
    const RENAMED: &'static [(&'static str, &'static str)] = &[("cpu_load", "percent")];
    const MONKEY_TYPES: &'static [&'static str] = &["cpu"];
    const METRICS: &'static [MetricMap] = &[
        MetricMap::gauge(
            "cpu.load_pct",
            "stress_cpu_target_ratio",
            "The CPU load asked of each worker (1 = one whole CPU).",
            0.01,
        ),
        MetricMap::gauge(
            "cpu.achieved_pct",
            "stress_cpu_achieved_ratio",
            "The CPU load each worker achieved since it started (1 = one whole CPU).",
            0.01,
        ),
        MetricMap::gauge("cpu.workers", "stress_cpu_workers", "CPU workers.", 1.0),
        MetricMap::gauge(
            "cpu.cpu_ms",
            "stress_cpu_seconds",
            "CPU time the CPU workers used.",
            1e-3,
        )
        .total(),
        MetricMap::gauge(
            "workers.cpu_ms",
            "stress_workers_cpu_seconds",
            "CPU time every stress worker used.",
            1e-3,
        )
        .total(),
        MetricMap::gauge(
            "workers.alive",
            "stress_workers_alive",
            "Stress workers still running.",
            1.0,
        ),
        MetricMap::gauge(
            "memory.target_bytes",
            "stress_memory_target_bytes",
            "Memory the fault is to hold.",
            1.0,
        ),
        MetricMap::gauge(
            "memory.held_bytes",
            "stress_memory_held_bytes",
            "Memory the fault holds.",
            1.0,
        ),
        MetricMap::gauge(
            "io.target_bytes_per_s",
            "stress_io_target_bytes_per_second",
            "The write rate asked of the I/O workers.",
            1.0,
        ),
        MetricMap::gauge(
            "io.bytes_written",
            "stress_io_written_bytes",
            "Bytes the I/O workers wrote.",
            1.0,
        )
        .total(),
        MetricMap::gauge(
            "io.fsyncs",
            "stress_io_fsyncs",
            "fsync calls of the I/O workers.",
            1.0,
        )
        .total(),
        MetricMap::gauge(
            "fds.target",
            "stress_fds_target",
            "Open file descriptors the fault is to hold.",
            1.0,
        ),
        MetricMap::gauge(
            "fds.open",
            "stress_fds_open",
            "Open file descriptors the fault holds.",
            1.0,
        ),
    ];
    type Args = StressArgs;
    type Active = StressFault;

    fn from_args(args: &StressArgs) -> Result<Self, BadInput> {
        if args.cpu_load.is_some() {
            crate::output::deprecated("--cpu-load PCT", "--percent PCT");
        }
        StressSpec::from_args(args)
    }

    fn from_yaml(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<Self> {
        yaml::parse(ctx, node, path, ramped)
    }

    fn describe(&self) -> String {
        StressSpec::describe(self)
    }

    fn check_param(&self, param: &str, value: f64) -> Result<(), String> {
        match param {
            "percent" if (0.0..=100.0).contains(&value) => Ok(()),
            "percent" => Err(format!("{value}% is not allowed: 0 to 100 (of one CPU)")),
            other => Err(format!(
                "a stress fault cannot ramp '{other}': allowed is percent (of one CPU, each cpu worker)"
            )),
        }
    }

    fn prepare_ramp(&mut self, param: &str, start: f64) {
        if param == "percent"
            && let Some(cpu) = self.cpu.as_mut()
        {
            cpu.load_pct = start;
        }
    }

    fn intensities(&self) -> Vec<(&'static str, f64)> {
        self.cpu
            .map(|c| ("percent", c.load_pct))
            .into_iter()
            .collect()
    }

    fn overlap_conflict(&self) -> Option<&'static str> {
        Some(
            "two stress faults on one target at once add up, and neither's achieved load can be \
             told apart: merge them into one fault (cpu, memory, io, fds together), or move one",
        )
    }

    fn target_findings(&self, target: &Path, cgroup_root: &Path) -> Vec<TargetFinding> {
        target_findings(self, target, cgroup_root)
    }

    fn end_step(&self, name: &str) -> Option<String> {
        Some(format!(
            "stop '{name}': its workers end (they die with kchaos too)"
        ))
    }

    /// One CPU worker at 10% to `max_cpu_load` of a CPU.
    fn random(
        _monkey_type: &str,
        caps: &MonkeyCaps,
        draw: &mut dyn FnMut() -> f64,
    ) -> Result<Self, BadInput> {
        let low = 10.0_f64.min(caps.max_cpu_load);
        let load = low + draw() * (caps.max_cpu_load - low).max(0.0);
        StressSpec::from_args(&StressArgs {
            cpu: Some(1),
            percent: Some(load.round().max(1.0)),
            ..StressArgs::default()
        })
    }

    /// The memory against each target's limits (unless forced), before any worker starts.
    fn preflight(&self, targets: &[Target]) -> Result<(), BadInput> {
        let Some(bytes) = self.memory_bytes else {
            return Ok(());
        };
        let mount = crate::engine::cgroup::v2_mount()
            .map_err(|e| BadInput::new(format!("finding the cgroup v2 mount: {e}")))?;
        for t in targets {
            let v1 = V1Placement::find(None, t);
            limits::check_memory(bytes, &t.path, &mount, &v1.dirs, self.force)?;
        }
        Ok(())
    }

    /// Nothing runs until armed: the workers start at the fault's instant.
    fn prepare(&self, targets: &[Target], _journal: &mut Journal) -> Result<StressFault> {
        Ok(StressFault {
            spec: self.clone(),
            targets: targets.to_vec(),
            loads: RefCell::new(Vec::new()),
            attachments: Vec::new(),
            results: None,
            last_counters: None,
        })
    }

    /// A load is not a count of events; its intensity is cpu_load, and the counters have the
    /// achieved load.
    fn injected_events(_counters: &Counters) -> u64 {
        0
    }

    fn live_line(counters: &Counters) -> String {
        let n = |k: &str| counters.get(k).copied();
        let mut parts = Vec::new();
        if let (Some(achieved), Some(target), Some(workers)) =
            (n("cpu.achieved_pct"), n("cpu.load_pct"), n("cpu.workers"))
        {
            parts.push(format!("cpu {achieved}% of {target}% x{workers}"));
        }
        if let (Some(held), Some(target)) = (n("memory.held_bytes"), n("memory.target_bytes")) {
            parts.push(format!(
                "mem {} of {}",
                format_size(held),
                format_size(target)
            ));
        }
        if let (Some(written), Some(rate)) = (n("io.bytes_written"), n("io.target_bytes_per_s")) {
            parts.push(format!(
                "io {} written (target {}/s)",
                format_size(written),
                format_size(rate)
            ));
        }
        if let (Some(open), Some(target)) = (n("fds.open"), n("fds.target")) {
            parts.push(format!("fds {open} of {target}"));
        }
        if let Some(alive) = n("workers.alive") {
            parts.push(format!("{alive} worker(s) alive"));
        }
        parts.join(" | ")
    }

    fn summary_lines(&self, record: &FaultRecord) -> Vec<String> {
        let Some(result) = record
            .result
            .clone()
            .and_then(|v| serde_json::from_value::<StressResult>(v).ok())
        else {
            return Vec::new();
        };
        result
            .targets
            .iter()
            .flat_map(|t| t.lines(self.ramp.is_some()))
            .collect()
    }
}

/// What the safety review should know about loading `target` (a cgroup directory) with `spec`.
pub fn target_findings(
    spec: &StressSpec,
    target: &Path,
    cgroup_root: &Path,
) -> Vec<(Risk, &'static str, String)> {
    let mut out = Vec::new();
    let Some(bytes) = spec.memory_bytes else {
        return out;
    };
    match limits::memory_max(target, cgroup_root) {
        None => out.push((
            Risk::Medium,
            "stress-memory-unlimited",
            format!(
                "stress holds {} in {} with no memory.max on the way up: the pressure is the whole \
                 host's (reclaim, swap, the OOM killer may pick anyone); set memory.max on the target",
                format_size(bytes),
                target.display()
            ),
        )),
        Some((limit, at)) if bytes > limit => out.push((
            Risk::High,
            "stress-memory-over-limit",
            format!(
                "stress holds {} but memory.max of {} is {}: the OOM killer ends the worker or the \
                 target's own processes",
                format_size(bytes),
                at.display(),
                format_size(limit)
            ),
        )),
        Some(_) => {}
    }
    if let Ok(available) = procfs::mem_available()
        && bytes > available
    {
        out.push((
            Risk::High,
            "stress-memory-over-available",
            format!(
                "stress holds {}, more than the host's MemAvailable ({})",
                format_size(bytes),
                format_size(available)
            ),
        ));
    }
    out
}

/// One target's load while it runs.
struct Load {
    stress: Stress,
    /// The workers' numbers when the full target came into effect (after the ramp).
    steady_from: Option<(Instant, Measurement)>,
    peak_held_bytes: u64,
}

/// A stress load on each target of a fault, started when armed and stopped when disarmed.
pub struct StressFault {
    spec: StressSpec,
    targets: Vec<Target>,
    // counters() reads /proc through the workers, which remember the last CPU time they saw.
    loads: RefCell<Vec<Load>>,
    attachments: Vec<String>,
    results: Option<StressResult>,
    /// The counters just before the workers stopped: what the report keeps.
    last_counters: Option<Counters>,
}

impl StressFault {
    /// Stops every load, keeping what each achieved.
    fn stop_all(&mut self, journal: &mut Journal) -> Vec<String> {
        if !self.loads.get_mut().is_empty() {
            self.last_counters = self.counters().ok();
        }
        let mut errors = Vec::new();
        let mut results = StressResult::default();
        for load in self.loads.get_mut().drain(..) {
            let Load {
                stress,
                steady_from,
                peak_held_bytes,
            } = load;
            let spec = stress.spec.clone();
            let target = stress.target.path.clone();
            let placement = (stress.placement.path.clone(), stress.v1.dirs.clone());
            let io_dir = stress.io_dir.clone();
            let (ready_at, at_ready) = (stress.ready_at, stress.at_ready.clone());
            let stopped = stress.stop(journal);
            errors.extend(stopped.errors.iter().cloned());
            results.targets.push(TargetResult::new(
                &spec,
                target,
                placement,
                Readings {
                    ready: (ready_at, &at_ready),
                    steady_from: steady_from.as_ref().map(|(t, m)| (*t, m)),
                    peak_held_bytes,
                },
                stopped,
                io_dir,
            ));
        }
        if !results.targets.is_empty() {
            self.results = Some(results);
        }
        errors
    }
}

impl Active for StressFault {
    /// Starts the workers in each target; stops those already started if one fails.
    fn arm(&mut self, _deadline_ns: u64, journal: &mut Journal) -> Result<()> {
        for t in self.targets.clone() {
            match Stress::start(self.spec.clone(), t.clone(), None, journal) {
                Ok(s) => {
                    self.attachments.push(format!(
                        "{} worker(s) in {}: {}",
                        s.workers.list.len(),
                        s.placement.path.display(),
                        s.workers
                            .list
                            .iter()
                            .map(|w| format!("{} pid {}", w.kind.name(), w.pid))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    if let Some(note) = &s.v1.note {
                        self.attachments.push(note.clone());
                    }
                    let steady_from = ramp::Ramp::new(self.spec.ramp)
                        .is_none()
                        .then(|| (s.ready_at, s.at_ready.clone()));
                    self.loads.get_mut().push(Load {
                        stress: s,
                        steady_from,
                        peak_held_bytes: 0,
                    });
                }
                Err(e) => {
                    self.stop_all(journal);
                    return Err(e.context(format!("stress in {}", t.path.display())));
                }
            }
        }
        Ok(())
    }

    /// The workers live as long as kchaos (they die with it: PR_SET_PDEATHSIG), and the runner stops
    /// them at the fault's end; there is no kernel deadline to renew.
    fn renew(&mut self, _deadline_ns: u64) -> Result<()> {
        Ok(())
    }

    fn set_param(&mut self, param: &str, value: f64) -> Result<()> {
        match param {
            "percent" => self
                .loads
                .get_mut()
                .iter_mut()
                .try_for_each(|l| l.stress.set_cpu_load(value.clamp(0.0, 100.0))),
            other => anyhow::bail!("a stress fault has no parameter '{other}'"),
        }
    }

    /// The load achieved, as the kernel counted it: the CPU workers' CPU time (/proc/PID/stat) since
    /// they were ready, and what that is per worker; memory held (RssAnon); bytes written; fds open.
    fn counters(&self) -> Result<Counters> {
        let mut loads = self.loads.borrow_mut();
        if loads.is_empty()
            && let Some(last) = &self.last_counters
        {
            return Ok(last.clone());
        }
        let mut m = Counters::new();
        let mut add = |k: &str, v: u64| *m.entry(k.to_owned()).or_insert(0) += v;
        let mut alive = 0;
        let mut workers = 0;
        for load in loads.iter_mut() {
            let s = &mut load.stress;
            s.workers.reap_exited();
            alive += s.workers.alive();
            workers += s.workers.list.len();
            let now = s.measure();
            add("workers.cpu_ms", (now.workers_cpu_s * 1e3).round() as u64);
            load.peak_held_bytes = load.peak_held_bytes.max(now.memory_held_bytes);
            let ramp_at = std::time::Duration::from_nanos(
                crate::engine::lifecycle::monotonic_ns().saturating_sub(s.start_ns),
            );
            if load.steady_from.is_none() && ramp::fraction(Ramp::new(s.spec.ramp), ramp_at) >= 1.0
            {
                load.steady_from = Some((Instant::now(), now.clone()));
            }
            let wall = s.ready_at.elapsed().as_secs_f64();
            if let Some(cpu) = s.spec.cpu {
                let cpu_s = (now.cpu_s - s.at_ready.cpu_s).max(0.0);
                add("cpu.workers", u64::from(cpu.workers));
                add("cpu.cpu_ms", (cpu_s * 1e3).round() as u64);
                add(
                    "cpu.load_pct",
                    s.cpu_load.unwrap_or(cpu.load_pct).round() as u64,
                );
                if wall > 0.0 {
                    add(
                        "cpu.achieved_pct",
                        (100.0 * cpu_s / wall / f64::from(cpu.workers)).round() as u64,
                    );
                }
            }
            if let Some(bytes) = s.spec.memory_bytes {
                add("memory.target_bytes", bytes);
                add("memory.held_bytes", now.memory_held_bytes);
            }
            if let Some(io) = &s.spec.io {
                add("io.target_bytes_per_s", io.bytes_per_s);
                add("io.bytes_written", now.bytes_written);
                add("io.fsyncs", now.fsyncs);
            }
            if let Some(n) = s.spec.fds {
                add("fds.target", n);
                add("fds.open", now.fds_open);
            }
        }
        // Per worker across the targets: the mean, not the sum, of each target's share.
        if loads.len() > 1 {
            for key in ["cpu.achieved_pct", "cpu.load_pct"] {
                if let Some(v) = m.get_mut(key) {
                    *v /= loads.len() as u64;
                }
            }
        }
        if workers > 0 && alive == 0 {
            anyhow::bail!("every stress worker has ended (the OOM killer, or someone else)");
        }
        if !loads.is_empty() {
            m.insert("workers.alive".into(), alive as u64);
        }
        Ok(m)
    }

    fn attachments(&self) -> Vec<String> {
        if self.attachments.is_empty() {
            vec![format!(
                "{} (workers start when armed)",
                self.spec.describe()
            )]
        } else {
            self.attachments.clone()
        }
    }

    fn disarm(&mut self, journal: &mut Journal) -> Result<()> {
        let errors = self.stop_all(journal);
        if !errors.is_empty() {
            anyhow::bail!("{}", errors.join("; "));
        }
        Ok(())
    }

    fn result(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.results.as_ref()?).ok()
    }

    fn undo(mut self: Box<Self>, journal: &mut Journal) -> Result<()> {
        let errors = self.stop_all(journal);
        if !errors.is_empty() {
            anyhow::bail!("{}", errors.join("; "));
        }
        Ok(())
    }
}
