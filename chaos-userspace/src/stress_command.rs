//! `kchaos stress`: CPU, memory, io and fd load inside one target cgroup; a live line a second, a
//! summary, a JSON report. Workers end with the run however it ends (see `stress::workers`).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    error::BadInput,
    journal::Journal,
    lifecycle::{self, EndReason, Tick},
    process_faults::require_root,
    stress::{
        CpuSpec, StressArgs, StressSpec, format_size, limits,
        ramp::{self, Ramp},
        session::Stress,
        worker::WorkerKind,
        workers::Measurement,
    },
    targets::{self, Target, TargetArgs},
    units,
};

#[derive(Debug, clap::Args)]
pub struct StressCommand {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub stress: StressArgs,
    #[command(flatten)]
    pub run: crate::runner::RunArgs,
}

pub async fn run(cmd: StressCommand) -> Result<()> {
    // From here on a Ctrl-C or SIGTERM ends the run through its cleanup, even during setup.
    let mut signals = lifecycle::Signals::install().context("installing signal handlers")?;
    // Every check that can fail on input comes before a worker starts or a directory is made.
    let spec = StressSpec::from_args(&cmd.stress)?;
    require_root(
        "kchaos stress",
        "it moves its workers into the target cgroup",
    )?;
    let targets = targets::resolve(&cmd.targets)?;
    let target = match targets.as_slice() {
        [one] => one.clone(),
        many => {
            return Err(BadInput::new(format!(
                "kchaos stress takes one target, since its workers run in one cgroup; got {}: {}",
                many.len(),
                many.iter()
                    .map(|t| t.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
    };
    let mut journal = Journal::create("stress", std::slice::from_ref(&target.path), cmd.run.stack)?;
    let mut stress = Stress::start(
        spec.clone(),
        target.clone(),
        cmd.targets.pids.first().copied(),
        &mut journal,
    )?;
    let start_ns = stress.start_ns;
    let ready_at = stress.ready_at;
    let at_ready = stress.at_ready.clone();

    println!(
        "kchaos stress: {} in {} ({})",
        spec.describe(),
        stress.placement.path.display(),
        target.origin
    );
    if stress.placement.made {
        println!(
            "  {} has controllers enabled for its children, so processes may not live in it: the \
             workers run in a new child cgroup, {}",
            target.path.display(),
            stress.placement.path.display()
        );
    }
    if let Some(note) = &stress.v1.note {
        println!("  {note}");
    }
    println!(
        "  workers: {}",
        stress
            .workers
            .list
            .iter()
            .map(|w| format!("{} pid {}", w.kind.name(), w.pid))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(dir) = &stress.io_dir {
        println!("  writing in {} (removed at the end)", dir.display());
    }
    if let Some(n) = spec.fds
        && let Ok((_, hard)) = limits::nofile_limit()
        && n + 16 > hard
    {
        println!(
            "  note: --fds {n} is above RLIMIT_NOFILE's hard limit ({hard}); the worker holds what it can"
        );
    }
    println!(
        "  armed{}; Ctrl-C or `kchaos stop` ends it",
        cmd.run
            .duration
            .map(|d| format!(" for {}", units::format_duration(d)))
            .unwrap_or_default()
    );

    let ramp = Ramp::new(spec.ramp);
    let ramp_elapsed = || Duration::from_nanos(lifecycle::monotonic_ns().saturating_sub(start_ns));
    let mut samples = Vec::new();
    let mut events = Vec::new();
    let mut previous = (ready_at, at_ready.clone());
    // The window where the full target was in effect: from the end of the ramp (or from the start).
    let mut steady_from = ramp.is_none().then(|| (ready_at, at_ready.clone()));
    let reason = lifecycle::run_until_end(
        &mut signals,
        cmd.run.duration,
        Duration::from_secs(1),
        |elapsed| {
            for news in stress.workers.reap_exited() {
                println!("  {news}");
                events.push(news);
            }
            let now = Instant::now();
            let m = stress.measure();
            let ramp_now = ramp_elapsed();
            let share = Shares {
                now: ramp::fraction(ramp, ramp_now),
                // Rates are over the last second: compare them with the target halfway through it.
                window: ramp::fraction(
                    ramp,
                    ramp_now.saturating_sub(now.duration_since(previous.0) / 2),
                ),
            };
            let sample = Sample::new(elapsed, share, &spec, (previous.0, &previous.1), (now, &m));
            if !cmd.run.quiet {
                println!("{}", sample.live_line(&spec));
            }
            samples.push(sample);
            if steady_from.is_none() && share.now >= 1.0 {
                steady_from = Some((now, m.clone()));
            }
            previous = (now, m);
            Ok(if stress.workers.alive() == 0 {
                Tick::End(EndReason::Aborted("every worker has ended".into()))
            } else {
                Tick::Continue
            })
        },
    )
    .await?;

    let workers_cgroup = stress.placement.path.clone();
    let workers_v1_cgroups = stress.v1.dirs.clone();
    let io_dir = stress.io_dir.clone();
    let stopped = stress.stop(&mut journal);
    for e in &stopped.errors {
        eprintln!("kchaos stress: {e}");
    }
    let (stopped_at, at_stop, after_stop, dir_removed) = (
        stopped.stopped_at,
        stopped.at_stop,
        stopped.after_stop,
        stopped.dir_removed,
    );
    let worker_records: Vec<WorkerRecord> = stopped
        .workers
        .into_iter()
        .map(|(kind, pid, exit)| WorkerRecord { kind, pid, exit })
        .collect();

    let run_s = stopped_at.duration_since(ready_at).as_secs_f64();
    let report = StressReport {
        kchaos_version: env!("CARGO_PKG_VERSION"),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        target,
        workers_cgroup,
        workers_v1_cgroups,
        spec: spec.clone(),
        duration_s: run_s,
        end_reason: reason,
        cpu: spec.cpu.map(|cpu| {
            CpuResult::from_readings(
                cpu,
                (ready_at, &at_ready),
                steady_from.as_ref().map(|(t, m)| (*t, m)),
                (stopped_at, &at_stop),
            )
        }),
        memory: spec.memory_bytes.map(|bytes| MemoryResult {
            target_bytes: bytes,
            held_bytes: at_stop.memory_held_bytes,
            anon_bytes: at_stop.memory_anon_bytes,
            peak_held_bytes: samples
                .iter()
                .map(|s| s.memory_held_bytes)
                .chain([at_stop.memory_held_bytes])
                .max()
                .unwrap_or(0),
            measured_from: "VmRSS of the memory worker in /proc/PID/status",
        }),
        io: spec.io.as_ref().map(|io| IoResult {
            target_bytes_per_s: io.bytes_per_s,
            bytes_written: after_stop.bytes_written,
            fsyncs: after_stop.fsyncs,
            achieved_bytes_per_s: if run_s > 0.0 {
                after_stop.bytes_written as f64 / run_s
            } else {
                0.0
            },
            dir: io_dir.clone().unwrap_or_default(),
            dir_removed,
        }),
        fds: spec.fds.map(|n| FdsResult {
            target: n,
            held: at_stop.fds_open,
            limit: at_stop.fd_limit,
        }),
        stopped_short: at_stop.stopped_short.clone(),
        workers: worker_records,
        events,
        samples,
    };
    println!("{}", report.summary());
    if let Some(path) = &cmd.run.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
        println!("  report: {}", path.display());
    }
    Ok(())
}

/// CPUs used on average between two readings of a cpu.stat usage.
fn cpus(from_s: Option<f64>, to_s: Option<f64>, wall_s: f64) -> Option<f64> {
    match (from_s, to_s) {
        (Some(a), Some(b)) if wall_s > 0.0 => Some((b - a) / wall_s),
        _ => None,
    }
}

/// The share of the target the ramp puts in effect.
#[derive(Clone, Copy)]
struct Shares {
    now: f64,
    window: f64,
}

/// One second of the run, for the live line and the report's time series.
#[derive(Debug, serde::Serialize)]
pub struct Sample {
    pub elapsed_s: f64,
    /// The share of the target in effect now (below 1 while ramping).
    pub target_share: f64,
    /// The share of the target in effect over the last second, on average (what the rates aim at).
    pub window_target_share: f64,
    pub cpu_target_pct: Option<f64>,
    /// Per CPU worker, over the last second, from /proc/PID/stat.
    pub cpu_achieved_pct: Option<f64>,
    /// CPUs the whole workers' cgroup used over the last second (cpu.stat).
    pub cgroup_cpus: Option<f64>,
    pub memory_held_bytes: u64,
    pub bytes_written: u64,
    pub io_bytes_per_s: f64,
    pub fds_open: u64,
}

impl Sample {
    fn new(
        elapsed: Duration,
        share: Shares,
        spec: &StressSpec,
        before: (Instant, &Measurement),
        now: (Instant, &Measurement),
    ) -> Self {
        let wall = now.0.duration_since(before.0).as_secs_f64();
        let per_s = |a: f64, b: f64| if wall > 0.0 { (b - a) / wall } else { 0.0 };
        Self {
            elapsed_s: elapsed.as_secs_f64(),
            target_share: share.now,
            window_target_share: share.window,
            cpu_target_pct: spec.cpu.map(|c| c.load_pct * share.window),
            cpu_achieved_pct: spec
                .cpu
                .map(|c| 100.0 * per_s(before.1.cpu_s, now.1.cpu_s) / f64::from(c.workers)),
            cgroup_cpus: cpus(before.1.cgroup_cpu_s, now.1.cgroup_cpu_s, wall),
            memory_held_bytes: now.1.memory_held_bytes,
            bytes_written: now.1.bytes_written,
            io_bytes_per_s: per_s(before.1.bytes_written as f64, now.1.bytes_written as f64),
            fds_open: now.1.fds_open,
        }
    }

    fn live_line(&self, spec: &StressSpec) -> String {
        let mut parts = Vec::new();
        if let (Some(cpu), Some(target), Some(achieved)) =
            (spec.cpu, self.cpu_target_pct, self.cpu_achieved_pct)
        {
            let mut part = format!("cpu {achieved:.1}% of {target:.1}% x{}", cpu.workers);
            if let Some(c) = self.cgroup_cpus {
                part += &format!(" (cgroup {c:.2} CPUs)");
            }
            parts.push(part);
        }
        if let Some(bytes) = spec.memory_bytes {
            parts.push(format!(
                "mem {} of {}",
                format_size(self.memory_held_bytes),
                format_size((bytes as f64 * self.target_share) as u64)
            ));
        }
        if let Some(io) = &spec.io {
            parts.push(format!(
                "io {}/s of {}/s, {} written",
                format_size(self.io_bytes_per_s as u64),
                format_size((io.bytes_per_s as f64 * self.window_target_share) as u64),
                format_size(self.bytes_written)
            ));
        }
        if let Some(n) = spec.fds {
            parts.push(format!(
                "fds {} of {}",
                self.fds_open,
                ((n as f64 * self.target_share).ceil() as u64).min(n)
            ));
        }
        format!("[{:>5.1}s] {}", self.elapsed_s, parts.join(" | "))
    }
}

#[derive(Debug, serde::Serialize)]
pub struct WorkerRecord {
    #[serde(flatten)]
    pub kind: WorkerKind,
    pub pid: u32,
    pub exit: String,
}

#[derive(Debug, serde::Serialize)]
pub struct CpuResult {
    pub workers: u32,
    pub target_pct: f64,
    /// Per worker, once the full target was in effect (after the ramp).
    pub achieved_pct: f64,
    pub achieved_window_s: f64,
    /// False when the run ended before the ramp reached the target: `achieved_pct` is then over the
    /// whole run.
    pub ramp_finished: bool,
    pub achieved_pct_whole_run: f64,
    pub cpu_s: f64,
    pub measured_from: &'static str,
    /// CPUs the workers' cgroup used in the same window (cpu.stat usage_usec): the target's own load
    /// plus the workers'.
    pub cgroup_cpus: Option<f64>,
}

impl CpuResult {
    /// From the readings at the start, at the end of the ramp (None: it never ended), and at the end.
    fn from_readings(
        cpu: CpuSpec,
        ready: (Instant, &Measurement),
        steady_from: Option<(Instant, &Measurement)>,
        stop: (Instant, &Measurement),
    ) -> Self {
        let per_worker = |cpu_s: f64, wall_s: f64| {
            if wall_s > 0.0 {
                100.0 * cpu_s / wall_s / f64::from(cpu.workers)
            } else {
                0.0
            }
        };
        let run_s = stop.0.duration_since(ready.0).as_secs_f64();
        let whole = per_worker(stop.1.cpu_s - ready.1.cpu_s, run_s);
        let (from, window_s) = match steady_from {
            Some((t, m)) => (m, stop.0.duration_since(t).as_secs_f64()),
            None => (ready.1, run_s),
        };
        Self {
            workers: cpu.workers,
            target_pct: cpu.load_pct,
            achieved_pct: per_worker(stop.1.cpu_s - from.cpu_s, window_s),
            achieved_window_s: window_s,
            ramp_finished: steady_from.is_some(),
            achieved_pct_whole_run: whole,
            cpu_s: stop.1.cpu_s,
            measured_from: "utime+stime of the CPU workers in /proc/PID/stat",
            cgroup_cpus: cpus(from.cgroup_cpu_s, stop.1.cgroup_cpu_s, window_s),
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct MemoryResult {
    pub target_bytes: u64,
    /// VmRSS of the worker: what top and ps show.
    pub held_bytes: u64,
    /// RssAnon of the worker: VmRSS without the pages of its own executable.
    pub anon_bytes: u64,
    pub peak_held_bytes: u64,
    pub measured_from: &'static str,
}

#[derive(Debug, serde::Serialize)]
pub struct IoResult {
    pub target_bytes_per_s: u64,
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub achieved_bytes_per_s: f64,
    pub dir: PathBuf,
    pub dir_removed: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct FdsResult {
    pub target: u64,
    pub held: u64,
    pub limit: u64,
}

/// The JSON report of a `kchaos stress` run.
#[derive(Debug, serde::Serialize)]
pub struct StressReport {
    pub kchaos_version: &'static str,
    pub kernel: String,
    pub target: Target,
    pub workers_cgroup: PathBuf,
    /// The v1 cgroups the workers joined as well (hybrid hosts).
    pub workers_v1_cgroups: Vec<PathBuf>,
    pub spec: StressSpec,
    pub duration_s: f64,
    pub end_reason: EndReason,
    pub cpu: Option<CpuResult>,
    pub memory: Option<MemoryResult>,
    pub io: Option<IoResult>,
    pub fds: Option<FdsResult>,
    /// Why a worker holds less than asked.
    pub stopped_short: Vec<String>,
    pub workers: Vec<WorkerRecord>,
    /// Workers that ended during the run, and how.
    pub events: Vec<String>,
    pub samples: Vec<Sample>,
}

impl StressReport {
    pub fn summary(&self) -> String {
        let mut lines = vec![format!(
            "kchaos stress: {} in {} for {:.1}s, ended: {}",
            self.spec.describe(),
            self.workers_cgroup.display(),
            self.duration_s,
            self.end_reason
        )];
        if let Some(c) = &self.cpu {
            let mut line = if c.ramp_finished {
                format!(
                    "  cpu: {:.1}% of {}% per worker x{} over {:.1}s{} (/proc/PID/stat)",
                    c.achieved_pct,
                    c.target_pct,
                    c.workers,
                    c.achieved_window_s,
                    if self.spec.ramp.is_some() {
                        " after the ramp"
                    } else {
                        ""
                    }
                )
            } else {
                format!(
                    "  cpu: {:.1}% per worker x{} over the whole {:.1}s; the ramp ended before the \
                     target ({}%) was in effect (/proc/PID/stat)",
                    c.achieved_pct, c.workers, c.achieved_window_s, c.target_pct
                )
            };
            if let Some(cpus) = c.cgroup_cpus {
                line += &format!("; cgroup used {cpus:.2} CPUs (cpu.stat)");
            }
            lines.push(line);
        }
        if let Some(m) = &self.memory {
            lines.push(format!(
                "  memory: {} held of {} (VmRSS, {} of it anonymous; peak {})",
                format_size(m.held_bytes),
                format_size(m.target_bytes),
                format_size(m.anon_bytes),
                format_size(m.peak_held_bytes)
            ));
        }
        if let Some(io) = &self.io {
            lines.push(format!(
                "  io: {} written and fsynced in {} fsyncs, {}/s of {}/s; {} {}",
                format_size(io.bytes_written),
                io.fsyncs,
                format_size(io.achieved_bytes_per_s as u64),
                format_size(io.target_bytes_per_s),
                io.dir.display(),
                if io.dir_removed {
                    "removed"
                } else {
                    "NOT removed (`kchaos stop` retries)"
                }
            ));
        }
        if let Some(f) = &self.fds {
            lines.push(format!(
                "  fds: {} held of {} (RLIMIT_NOFILE {})",
                f.held, f.target, f.limit
            ));
        }
        for why in &self.stopped_short {
            lines.push(format!("  short: {why}"));
        }
        lines.push(format!(
            "  workers, all ended and reaped: {}",
            self.workers
                .iter()
                .map(|w| format!("{} pid {} {}", w.kind_name(), w.pid, w.exit))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        lines.join("\n")
    }
}

impl WorkerRecord {
    fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}
