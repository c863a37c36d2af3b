//! The `stress` fault kind of scenarios: its YAML fields (those of `kchaos stress`), the load it put on
//! the targets as the kernel counted it, what the safety review should know about its memory, and a
//! random draw for the monkey. `kinds.rs` dispatches to it.

use std::{cell::RefCell, collections::BTreeMap, path::Path};

use anyhow::Result;

use super::{fields::Ctx, kinds::ActiveFault, review::Risk, yaml::Node};
use crate::{
    error::BadInput,
    journal::Journal,
    procfs,
    stress::{
        MAX_CPU_WORKERS, StressArgs, StressSpec, format_size, limits, parse_rate, session::Stress,
    },
    targets::Target,
    units,
};

pub const FIELDS: &[&str] = &["cpu", "cpu_load", "memory", "io_write", "io_dir", "fds"];

/// The ramp-able parameter: each CPU worker's load, in percent of one CPU.
pub const RAMP_PARAMS: &[&str] = &["cpu_load"];

/// Reads `stress: {...}`; each error at the field it is about.
pub fn parse(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<StressSpec> {
    let f = ctx.map(node, path, FIELDS)?;
    let before = ctx.errors.len();
    let mut args = StressArgs::default();
    if let Some(n) = f.value("cpu") {
        let p = f.path_of("cpu");
        match ctx.uint(n, &p, u64::from(MAX_CPU_WORKERS)) {
            Some(0) => ctx.err(n.mark, &p, "cpu 0 starts no worker: write 1 or more"),
            v => args.cpu = v.map(|v| v as u32),
        }
    }
    if let Some(n) = f.value("cpu_load") {
        let p = f.path_of("cpu_load");
        if !f.has("cpu") {
            ctx.err(n.mark, &p, "cpu_load needs cpu: N (how many CPU workers)");
        }
        match ctx.percent(n, &p) {
            Some(v) if v <= 0.0 => ctx.err(
                n.mark,
                &p,
                "cpu_load 0% loads nothing: allowed is above 0, up to 100%",
            ),
            v => args.cpu_load = v,
        }
    }
    let size = |ctx: &mut Ctx, key: &str, parse: fn(&str) -> Result<u64, BadInput>| {
        let n = f.value(key)?;
        let p = f.path_of(key);
        let t = ctx.text(n, &p)?;
        match parse(&t) {
            Ok(0) => {
                ctx.err(
                    n.mark,
                    &p,
                    format!("{key} 0 does nothing: give more than 0"),
                );
                None
            }
            Ok(v) => Some(v),
            Err(e) => {
                ctx.err(n.mark, &p, e.0);
                None
            }
        }
    };
    args.memory = size(ctx, "memory", units::parse_size);
    args.io_write = size(ctx, "io_write", parse_rate);
    if let Some(n) = f.value("io_dir") {
        args.io_dir = ctx.text(n, &f.path_of("io_dir")).map(Into::into);
    }
    if f.has("io_write") != f.has("io_dir") {
        let key = if f.has("io_write") {
            "io_write"
        } else {
            "io_dir"
        };
        ctx.err(
            f.get(key).map_or(f.mark, |n| n.mark),
            &f.path_of(key),
            "io_write: RATE and io_dir: DIR go together (where the paced writes go)",
        );
    }
    if let Some(n) = f.value("fds") {
        let p = f.path_of("fds");
        match ctx.uint(n, &p, u64::MAX) {
            Some(0) => ctx.err(n.mark, &p, "fds 0 holds nothing: write 1 or more"),
            v => args.fds = v,
        }
    }
    if ramped.iter().any(|p| p == "cpu_load") && args.cpu.is_none() {
        ctx.err(
            f.mark,
            path,
            "a cpu_load ramp needs cpu: N (the CPU workers it loads)",
        );
    }
    if ctx.errors.len() > before {
        return None;
    }
    match StressSpec::from_args(&args) {
        Ok(spec) => Some(spec),
        Err(e) => {
            // The checks across fields speak in flags (--cpu); here they are fields.
            let text =
                e.0.replace("--io-", "io_")
                    .replace("--cpu-", "cpu_")
                    .replace("--", "");
            ctx.err(f.mark, path, text);
            None
        }
    }
}

pub fn check_param(param: &str, value: f64) -> Result<(), String> {
    match param {
        "cpu_load" if (0.0..=100.0).contains(&value) => Ok(()),
        "cpu_load" => Err(format!("{value}% is not allowed: 0 to 100 (of one CPU)")),
        other => Err(format!(
            "a stress fault cannot ramp '{other}': allowed is cpu_load"
        )),
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

/// A random `cpu` fault for the monkey: one CPU worker at 10% to `max_load` of a CPU.
pub fn random_cpu(max_load: f64, draw: &mut dyn FnMut() -> f64) -> Result<StressSpec, BadInput> {
    let low = 10.0_f64.min(max_load);
    let load = low + draw() * (max_load - low).max(0.0);
    StressSpec::from_args(&StressArgs {
        cpu: Some(1),
        cpu_load: Some(load.round().max(1.0)),
        ..StressArgs::default()
    })
}

/// A stress load on each target of a fault, started at attach and stopped at detach.
pub struct StressFault {
    // counters() reads /proc through the workers, which remember the last CPU time they saw.
    loads: RefCell<Vec<Stress>>,
    attachments: Vec<String>,
}

impl StressFault {
    /// Starts the workers in each target; stops those already started if one fails.
    pub fn start(spec: &StressSpec, targets: &[Target], journal: &mut Journal) -> Result<Self> {
        let mut loads = Vec::new();
        let mut attachments = Vec::new();
        for t in targets {
            match Stress::start(spec.clone(), t.clone(), None, journal) {
                Ok(s) => {
                    attachments.push(format!(
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
                    loads.push(s);
                }
                Err(e) => {
                    for s in loads {
                        s.stop(journal);
                    }
                    return Err(e.context(format!("stress in {}", t.path.display())));
                }
            }
        }
        Ok(Self {
            loads: RefCell::new(loads),
            attachments,
        })
    }
}

impl ActiveFault for StressFault {
    /// The workers live as long as kchaos (they die with it: PR_SET_PDEATHSIG), and the runner stops
    /// them at the fault's end; there is no kernel deadline to set.
    fn arm(&mut self, _deadline_ns: u64) -> Result<()> {
        Ok(())
    }

    fn set_param(&mut self, param: &str, value: f64) -> Result<()> {
        match param {
            "cpu_load" => self
                .loads
                .get_mut()
                .iter_mut()
                .try_for_each(|s| s.set_cpu_load(value.clamp(0.0, 100.0))),
            other => anyhow::bail!("a stress fault has no parameter '{other}'"),
        }
    }

    /// The load achieved, as the kernel counted it: the CPU workers' CPU time (/proc/PID/stat) since
    /// they were ready, and what that is per worker; memory held (VmRSS); bytes written; fds open.
    fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let mut loads = self.loads.borrow_mut();
        let mut m = BTreeMap::new();
        let mut add = |k: &str, v: u64| *m.entry(k.to_owned()).or_insert(0) += v;
        let mut alive = 0;
        let mut workers = 0;
        for s in loads.iter_mut() {
            s.workers.reap_exited();
            alive += s.workers.alive();
            workers += s.workers.list.len();
            let now = s.measure();
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
        if loads.len() > 1
            && let Some(v) = m.get_mut("cpu.achieved_pct")
        {
            *v /= loads.len() as u64;
        }
        if workers > 0 && alive == 0 {
            anyhow::bail!("every stress worker has ended (the OOM killer, or someone else)");
        }
        m.insert("workers.alive".into(), alive as u64);
        Ok(m)
    }

    fn attachments(&self) -> Vec<String> {
        self.attachments.clone()
    }

    fn detach(self: Box<Self>, journal: &mut Journal) -> Result<()> {
        let mut errors = Vec::new();
        for s in self.loads.into_inner() {
            errors.extend(s.stop(journal).errors);
        }
        if !errors.is_empty() {
            anyhow::bail!("{}", errors.join("; "));
        }
        Ok(())
    }
}
