//! What a stress fault achieved, per target, for the report and the command's summary: the load as
//! the kernel counted it once the full target was in effect (after `--ramp`), memory held, bytes
//! written and fsynced, fds held, and how each worker ended.

use std::{path::PathBuf, time::Instant};

use crate::kinds::stress::{
    CpuSpec, StressSpec, format_size, session::Stopped, workers::Measurement,
};

/// A stress fault's result: one entry per target.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StressResult {
    pub targets: Vec<TargetResult>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TargetResult {
    pub target: PathBuf,
    /// Where the workers ran (the target, or a child cgroup kchaos made).
    pub workers_cgroup: PathBuf,
    /// The v1 cgroups the workers joined as well (hybrid hosts).
    pub workers_v1_cgroups: Vec<PathBuf>,
    /// From every worker ready to the stop.
    pub duration_s: f64,
    pub cpu: Option<CpuResult>,
    pub memory: Option<MemoryResult>,
    pub io: Option<IoResult>,
    pub fds: Option<FdsResult>,
    /// Why a worker holds less than asked.
    pub stopped_short: Vec<String>,
    pub workers: Vec<WorkerRecord>,
    /// What could not be removed at the end.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WorkerRecord {
    pub kind: String,
    pub pid: u32,
    pub exit: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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
    pub measured_from: String,
    /// CPUs the workers' cgroup used in the same window (cpu.stat usage_usec): the target's own load
    /// plus the workers'.
    pub cgroup_cpus: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MemoryResult {
    pub target_bytes: u64,
    /// What the worker holds for the fault: its RssAnon, the memory it allocated and touched.
    pub held_bytes: u64,
    /// Its VmRSS (what top and ps show): `held_bytes` plus the pages of its executable and libraries.
    pub rss_bytes: u64,
    pub peak_held_bytes: u64,
    pub measured_from: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IoResult {
    pub target_bytes_per_s: u64,
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub achieved_bytes_per_s: f64,
    pub dir: PathBuf,
    pub dir_removed: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FdsResult {
    pub target: u64,
    pub held: u64,
    pub limit: u64,
}

/// The readings of one target's load over its life.
pub struct Readings<'a> {
    pub ready: (Instant, &'a Measurement),
    /// When the full target came into effect (None: the ramp never got there).
    pub steady_from: Option<(Instant, &'a Measurement)>,
    pub peak_held_bytes: u64,
}

impl TargetResult {
    pub fn new(
        spec: &StressSpec,
        target: PathBuf,
        placement: (PathBuf, Vec<PathBuf>),
        readings: Readings<'_>,
        stopped: Stopped,
        io_dir: Option<PathBuf>,
    ) -> Self {
        let run_s = stopped
            .stopped_at
            .duration_since(readings.ready.0)
            .as_secs_f64();
        let at_stop = &stopped.at_stop;
        let after_stop = &stopped.after_stop;
        Self {
            target,
            workers_cgroup: placement.0,
            workers_v1_cgroups: placement.1,
            duration_s: run_s,
            cpu: spec.cpu.map(|cpu| {
                CpuResult::from_readings(
                    cpu,
                    readings.ready,
                    readings.steady_from,
                    (stopped.stopped_at, at_stop),
                )
            }),
            memory: spec.memory_bytes.map(|bytes| MemoryResult {
                target_bytes: bytes,
                held_bytes: at_stop.memory_held_bytes,
                rss_bytes: at_stop.memory_rss_bytes,
                peak_held_bytes: readings.peak_held_bytes.max(at_stop.memory_held_bytes),
                measured_from: "VmRSS of the memory worker in /proc/PID/status".into(),
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
                dir: io_dir.unwrap_or_default(),
                dir_removed: stopped.dir_removed,
            }),
            fds: spec.fds.map(|n| FdsResult {
                target: n,
                held: at_stop.fds_open,
                limit: at_stop.fd_limit,
            }),
            stopped_short: at_stop.stopped_short.clone(),
            workers: stopped
                .workers
                .iter()
                .map(|(kind, pid, exit)| WorkerRecord {
                    kind: kind.name().into(),
                    pid: *pid,
                    exit: exit.clone(),
                })
                .collect(),
            errors: stopped.errors,
        }
    }

    /// The summary's lines for this target.
    pub fn lines(&self, spec_ramp: bool) -> Vec<String> {
        let mut lines = vec![format!(
            "{} (workers in {}) for {:.1}s",
            self.target.display(),
            self.workers_cgroup.display(),
            self.duration_s
        )];
        if let Some(c) = &self.cpu {
            let mut line = if c.ramp_finished {
                format!(
                    "cpu: {:.1}% of {}% per worker x{} over {:.1}s{} (/proc/PID/stat)",
                    c.achieved_pct,
                    c.target_pct,
                    c.workers,
                    c.achieved_window_s,
                    if spec_ramp { " after the ramp" } else { "" }
                )
            } else {
                format!(
                    "cpu: {:.1}% per worker x{} over the whole {:.1}s; the ramp ended before the \
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
                "memory: {} held of {} (RssAnon, what the worker allocated; peak {}; VmRSS {} with \
                 its executable's pages)",
                format_size(m.held_bytes),
                format_size(m.target_bytes),
                format_size(m.peak_held_bytes),
                format_size(m.rss_bytes)
            ));
        }
        if let Some(io) = &self.io {
            lines.push(format!(
                "io: {} written and fsynced in {} fsyncs, {}/s of {}/s; {} {}",
                format_size(io.bytes_written),
                io.fsyncs,
                format_size(io.achieved_bytes_per_s as u64),
                format_size(io.target_bytes_per_s),
                io.dir.display(),
                if io.dir_removed {
                    "removed"
                } else {
                    "NOT removed (see the warning: `kchaos stop` retries what is still kchaos's)"
                }
            ));
        }
        if let Some(f) = &self.fds {
            lines.push(format!(
                "fds: {} held of {} (RLIMIT_NOFILE {})",
                f.held, f.target, f.limit
            ));
        }
        for why in &self.stopped_short {
            lines.push(format!("short: {why}"));
        }
        lines.push(format!(
            "workers, all ended and reaped: {}",
            self.workers
                .iter()
                .map(|w| format!("{} pid {} {}", w.kind, w.pid, w.exit))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        lines
    }
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
            measured_from: "utime+stime of the CPU workers in /proc/PID/stat".into(),
            cgroup_cpus: cpus(from.cgroup_cpu_s, stop.1.cgroup_cpu_s, window_s),
        }
    }
}

/// CPUs used on average between two readings of a cpu.stat usage.
fn cpus(from_s: Option<f64>, to_s: Option<f64>, wall_s: f64) -> Option<f64> {
    match (from_s, to_s) {
        (Some(a), Some(b)) if wall_s > 0.0 => Some((b - a) / wall_s),
        _ => None,
    }
}
