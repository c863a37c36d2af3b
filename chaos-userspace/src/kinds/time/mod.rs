//! The `time` kind: the clocks of every process in the targets shifted by an offset, or drifting,
//! through their vDSO (`clock_gettime`, `gettimeofday`, `time`).
//!
//! Each process gets, by ptrace (attach, an injected mmap, detach), a page of hooks that call the
//! original vDSO code and shift its result, and a control block the loader rewrites as a lease: every
//! clock has a window (in that clock's own time) outside which the hooks return the real time. A
//! loader that dies stops renewing it, and the clocks come back by themselves within the lease;
//! `undo` and `kchaos stop` (from the journal's tag) put the original vDSO bytes back and unmap the
//! page where no thread is using it. Processes born or moved into the targets later are found on
//! each tick (a forked child inherits the hooks; an exec'd one gets a fresh vDSO and is hooked
//! again). A program that makes the clock syscalls itself (not through the vDSO) is not shifted.

pub mod code;
pub mod process;
pub mod ptrace;
pub mod vdso;
mod yaml;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Result;

use self::{
    code::{ClockEntry, Control},
    process::{PatchError, Patched},
};
use crate::{
    engine::{
        journal::{Journal, Residue},
        lifecycle,
        targets::Target,
    },
    error::BadInput,
    experiment::{fields::Ctx, review::Risk, yaml::Node},
    kind::{Active, Counters, Kind, MetricMap, TargetFinding, Unit},
};

pub const EXAMPLES: &str = "Examples:\n  kchaos time --cgroup app --offset +1h --duration 30s\n  \
kchaos time --cgroup app --offset +90d --clock realtime,monotonic\n  \
kchaos time --cgroup app --drift 500 --duration 10m   (the clock gains 0.5 ms a second)\n\
Processes that read the clock with a raw syscall instead of the vDSO (rare; not glibc, musl or Go's \
time.Now) are not shifted.";

/// The clock groups a fault may shift.
pub const CLOCKS: &[&str] = &["realtime", "monotonic", "boottime"];

/// The clock ids each group covers (coarse and raw variants follow their clock).
fn clock_ids(name: &str) -> &'static [usize] {
    match name {
        "realtime" => &[
            libc::CLOCK_REALTIME as usize,
            libc::CLOCK_REALTIME_COARSE as usize,
            libc::CLOCK_TAI as usize,
        ],
        "monotonic" => &[
            libc::CLOCK_MONOTONIC as usize,
            libc::CLOCK_MONOTONIC_RAW as usize,
            libc::CLOCK_MONOTONIC_COARSE as usize,
        ],
        "boottime" => &[libc::CLOCK_BOOTTIME as usize],
        _ => &[],
    }
}

const YEAR_NS: i128 = 365 * 86_400 * 1_000_000_000;
/// The largest offset: ±100 years. With |drift| ≤ [`MAX_DRIFT_PPM`] the hook's arithmetic is exact
/// for runs up to 100 years (see `code::tests::the_hook_arithmetic_holds_at_every_bound`).
const MAX_OFFSET_NS: i128 = 100 * YEAR_NS;
/// The largest forward shift of monotonic and boottime: 10 years. A program computes deadlines from
/// these clocks (`deadline = now + timeout`) and sleeps until them with the kernel's absolute timers,
/// which take the real clock: a shift of +N years makes every such sleep N years long, and shifted
/// values past 2^31 s (68 years) overflow the 32-bit second counts some programs keep. 10 years
/// stays below that on any machine up for less than 58 years, and far below the kernel's own limit
/// (ktime_t, 2^63 ns: 292 years).
const MAX_FORWARD_MONO_NS: i128 = 10 * YEAR_NS;
/// The largest drift: a clock at twice (or zero) speed. Then |elapsed × ppm / 10^6| ≤ |elapsed|: the
/// hook's 128-bit product divided by 10^6 always fits 64 bits (no divide error), and a negative drift
/// never runs a clock backwards.
const MAX_DRIFT_PPM: i64 = 1_000_000;
/// How far a clock may read before its lease window opened before it counts as stepped back.
const FLOOR_SLACK_NS: i64 = 1_000_000_000;
/// The control blocks are rewritten when the lease moved this much.
const RENEW_EVERY_NS: u64 = 500_000_000;

/// `kchaos time` flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TimeArgs {
    /// Shift the clock by DUR: +1h, -90d, 30s, -1m30s (a leading - goes back in time).
    #[arg(long, value_name = "DUR", allow_hyphen_values = true)]
    pub offset: Option<String>,
    /// Make the clock drift by PPM parts per million (500 = 0.5 ms gained each second; negative
    /// loses), from the fault's start; adds to --offset.
    #[arg(long, value_name = "PPM", allow_hyphen_values = true)]
    pub drift: Option<i64>,
    /// The clocks to shift: realtime (with its coarse and TAI forms; also gettimeofday and time),
    /// monotonic (with raw and coarse), boottime.
    #[arg(
        long = "clock",
        value_name = "CLOCKS",
        value_delimiter = ',',
        default_value = "realtime"
    )]
    pub clocks: Vec<String>,
}

/// What a time fault does.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TimeSpec {
    /// The offset, ns (negative: back in time).
    pub offset_ns: i64,
    pub drift_ppm: i64,
    pub clocks: Vec<String>,
}

/// "+1h", "-90d", "30s" as signed ns, within ±100 years.
pub fn parse_offset(text: &str) -> Result<i64, BadInput> {
    let t = text.trim();
    let (sign, rest) = match t.strip_prefix('-') {
        Some(r) => (-1i128, r),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    let range = || {
        BadInput::new(format!(
            "--offset '{text}': allowed is -100y to +100y (-36500d to +36500d)"
        ))
    };
    let d = crate::units::parse_duration(rest.trim()).map_err(|e| {
        if e.0.contains("too long") {
            return range();
        }
        BadInput::new(format!(
            "--offset '{text}': expected a duration with an optional sign, e.g. +1h, -90d, 30s, -1m30s"
        ))
    })?;
    i128::try_from(d.as_nanos())
        .ok()
        .and_then(|n| n.checked_mul(sign))
        .filter(|n| n.abs() <= MAX_OFFSET_NS)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(range)
}

/// Checks the shift against the clocks it moves, as they read now on this host: no selected clock
/// may read below 0 (the kernel's absolute timers refuse a negative time with EINVAL, so a program
/// that sleeps until "now + 1 s" fails), and monotonic and boottime move forward at most 10 years.
/// `now` gives a clock's value (ns) by name. The drift (|ppm| ≤ 10^6) never makes a clock run
/// backwards, so the offset alone decides how low it reads.
pub fn check_shift(spec: &TimeSpec, now: impl Fn(&str) -> i64) -> Result<(), BadInput> {
    let offset = i128::from(spec.offset_ns);
    for clock in &spec.clocks {
        let value = i128::from(now(clock));
        let low = -value;
        let high = if clock == "realtime" {
            MAX_OFFSET_NS
        } else {
            MAX_FORWARD_MONO_NS
        };
        if offset < low || offset > high {
            return Err(BadInput::new(format!(
                "--offset {}: the {clock} clock reads {} now, so allowed with --clock {clock} is {} to \
                 {} (below that it would read less than 0, which the kernel's timers refuse{})",
                format_offset(spec.offset_ns),
                format_offset(value as i64).trim_start_matches('+'),
                format_offset(low as i64),
                format_offset(high as i64),
                if clock == "realtime" {
                    String::new()
                } else {
                    "; above it every sleep until a deadline on it lasts years".into()
                }
            )));
        }
    }
    Ok(())
}

/// The checked clock names, in their canonical order.
pub fn parse_clocks(names: &[String]) -> Result<Vec<String>, BadInput> {
    let mut out = Vec::new();
    for n in names {
        let n = n.trim().to_ascii_lowercase();
        if n.is_empty() {
            continue;
        }
        if !CLOCKS.contains(&n.as_str()) {
            return Err(BadInput::new(format!(
                "--clock '{n}': allowed are {}",
                CLOCKS.join(", ")
            )));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err(BadInput::new(format!(
            "--clock: name at least one of {}",
            CLOCKS.join(", ")
        )));
    }
    out.sort_by_key(|c| CLOCKS.iter().position(|k| k == c));
    Ok(out)
}

pub fn check_drift(ppm: i64) -> Result<i64, BadInput> {
    // unsigned_abs: i64::MIN has no i64 absolute value.
    if ppm.unsigned_abs() > MAX_DRIFT_PPM.unsigned_abs() {
        return Err(BadInput::new(format!(
            "--drift {ppm}: allowed is -{MAX_DRIFT_PPM} to {MAX_DRIFT_PPM} ppm"
        )));
    }
    Ok(ppm)
}

/// "-90d", "+1h30m", "+250ms".
fn format_offset(ns: i64) -> String {
    let mut left = ns.unsigned_abs();
    let mut out = String::from(if ns < 0 { "-" } else { "+" });
    for (unit, size) in [
        ("d", 86_400_000_000_000u64),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
    ] {
        if left >= size {
            out.push_str(&format!("{}{unit}", left / size));
            left %= size;
        }
    }
    if out.len() == 1 {
        out.push_str("0s");
    }
    out
}

impl TimeSpec {
    /// Whether it shifts monotonic or boottime.
    fn spec_moves_mono(&self) -> bool {
        self.clocks.iter().any(|c| c != "realtime")
    }

    pub fn describe(&self) -> String {
        let mut what = Vec::new();
        if self.offset_ns != 0 || self.drift_ppm == 0 {
            what.push(format!("shift by {}", format_offset(self.offset_ns)));
        }
        if self.drift_ppm != 0 {
            what.push(format!("drift {:+} ppm", self.drift_ppm));
        }
        format!(
            "{} the {} clock{} of the target's processes (vDSO)",
            what.join(" and "),
            self.clocks.join(", "),
            if self.clocks.len() == 1 { "" } else { "s" }
        )
    }
}

impl Kind for TimeSpec {
    const NAME: &'static str = "time";
    const COUNTS_EVENTS: bool = false;
    const YAML_FIELDS: &'static [&'static str] = yaml::FIELDS;
    const PARAMS: &'static [(&'static str, Unit)] = &[("offset", Unit::Duration)];
    const METRICS: &'static [MetricMap] = &[
        MetricMap::gauge(
            "processes",
            "time_processes",
            "Processes whose clocks the fault shifts now.",
            1.0,
        ),
        MetricMap::gauge(
            "patched",
            "time_patched_processes",
            "Processes the fault hooked (including ones re-hooked after exec).",
            1.0,
        )
        .total(),
        MetricMap::gauge(
            "failed",
            "time_failed_processes",
            "Processes the fault could not hook.",
            1.0,
        )
        .total(),
    ];
    type Args = TimeArgs;
    type Active = TimeFault;

    fn from_args(args: &TimeArgs) -> Result<Self, BadInput> {
        if args.offset.is_none() && args.drift.is_none() {
            return Err(BadInput::new(
                "give --offset DUR (e.g. +1h, -90d) or --drift PPM (or both)",
            ));
        }
        Ok(TimeSpec {
            offset_ns: args
                .offset
                .as_deref()
                .map(parse_offset)
                .transpose()?
                .unwrap_or(0),
            drift_ppm: args.drift.map(check_drift).transpose()?.unwrap_or(0),
            clocks: parse_clocks(&args.clocks)?,
        })
    }

    fn from_yaml(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<Self> {
        yaml::parse(ctx, node, path, ramped)
    }

    fn describe(&self) -> String {
        TimeSpec::describe(self)
    }

    fn check_param(&self, param: &str, value: f64) -> Result<(), String> {
        if param != "offset" {
            return Err(format!(
                "a time fault cannot ramp '{param}': allowed is offset"
            ));
        }
        let mono = self.spec_moves_mono();
        let max = if mono {
            MAX_FORWARD_MONO_NS
        } else {
            MAX_OFFSET_NS
        };
        if !(0.0..=(max / 1_000_000_000) as f64).contains(&value) {
            return Err(format!(
                "offset {value}s: a ramp moves the offset forward, from 0 to at most {} years{}",
                max / YEAR_NS,
                if mono { " (monotonic, boottime)" } else { "" }
            ));
        }
        Ok(())
    }

    fn intensities(&self) -> Vec<(&'static str, f64)> {
        vec![("offset", self.offset_ns.unsigned_abs() as f64 / 1e9)]
    }

    fn overlap_conflict(&self) -> Option<&'static str> {
        Some(
            "two time faults of one target at once would hook the same vDSO functions, and the first \
             to end would restore them under the other: merge them into one, or move one so they do \
             not overlap",
        )
    }

    fn target_findings(&self, target: &Path, _cgroup_root: &Path) -> Vec<TargetFinding> {
        let mut out = Vec::new();
        if crate::engine::cgroup::holds_this_process(target) {
            out.push((
                Risk::Medium,
                "time-holds-kchaos",
                format!(
                    "{} holds kchaos itself: kchaos keeps its own clock, but the shell or service \
                     that started it will see the shifted time",
                    target.display()
                ),
            ));
        }
        out
    }

    fn end_step(&self, name: &str) -> Option<String> {
        Some(format!(
            "restore the vDSO of '{name}' (clocks go back to real time by themselves when the lease \
             lapses)"
        ))
    }

    fn preflight(&self, _targets: &[Target]) -> Result<(), BadInput> {
        check_shift(self, |name| {
            lifecycle::clock_ns(clock_ids(name).first().copied().unwrap_or(0) as libc::clockid_t)
        })?;
        if !cfg!(target_arch = "x86_64") {
            return Err(BadInput::new(
                "time faults hook x86_64 vDSO code: this build is for another architecture",
            ));
        }
        if std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
            .is_ok_and(|s| s.trim() == "3")
        {
            return Err(BadInput::new(
                "kernel.yama.ptrace_scope is 3 (ptrace disabled until reboot): time faults attach \
                 to the target's processes with ptrace",
            ));
        }
        vdso::own()
            .map(|_| ())
            .map_err(|e| BadInput::new(format!("time faults need the kernel's vDSO: {e}")))
    }

    fn plan_lines(&self, _targets: &[Target]) -> Vec<String> {
        vec![
            "backend: ptrace + vDSO hooks (clock_gettime, gettimeofday, time), leased".into(),
            "note: raw clock syscalls (not through the vDSO) are not shifted".into(),
        ]
    }

    /// Hooks every process of the targets, disarmed, and journals the run's tag first.
    fn prepare(&self, targets: &[Target], journal: &mut Journal) -> Result<TimeFault> {
        let own = vdso::own().map_err(anyhow::Error::msg)?;
        let tag = new_tag();
        let residue = Residue::TimeHooks { tag };
        journal.add(residue.clone())?;
        let mut fault = TimeFault {
            spec: self.clone(),
            cgroups: targets.iter().map(|t| t.path.clone()).collect(),
            own,
            tag,
            residue,
            procs: BTreeMap::new(),
            refused: BTreeMap::new(),
            armed: false,
            deadline_ns: 0,
            written_deadline_ns: 0,
            starts: [0; code::CLOCK_SLOTS],
            offset_ns: self.offset_ns,
            patched: 0,
            relocated_fallbacks: 0,
        };
        fault.scan();
        Ok(fault)
    }

    fn injected_events(counters: &Counters) -> u64 {
        counters.get("patched").copied().unwrap_or(0)
    }

    fn live_line(counters: &Counters) -> String {
        let n = |k: &str| counters.get(k).copied().unwrap_or(0);
        format!(
            "{} process(es) on the shifted clock ({} hooked in all, {} could not be)",
            n("processes"),
            n("patched"),
            n("failed")
        )
    }
}

/// A tag for this run's hook pages: what `stop` looks for (never 0).
fn new_tag() -> u64 {
    lifecycle::random_u64().max(1)
}

/// The fault while it runs: the hooked processes and their control blocks.
pub struct TimeFault {
    spec: TimeSpec,
    cgroups: Vec<PathBuf>,
    own: &'static vdso::OwnVdso,
    tag: u64,
    residue: Residue,
    procs: BTreeMap<u32, Patched>,
    /// Processes (pid, start time) that could not be hooked, and why; not retried.
    refused: BTreeMap<(u32, u64), String>,
    armed: bool,
    /// The lease: CLOCK_MONOTONIC ns.
    deadline_ns: u64,
    written_deadline_ns: u64,
    /// Each clock's value at the arm (the drift counts from it).
    starts: [i64; code::CLOCK_SLOTS],
    offset_ns: i64,
    patched: u64,
    relocated_fallbacks: u64,
}

impl TimeFault {
    /// The control block now: each selected clock's lease window in its own time.
    fn control(&self) -> Control {
        let mut c = Control {
            offset_ns: self.offset_ns,
            drift_ppm: self.spec.drift_ppm,
            ..Control::default()
        };
        if !self.armed {
            return c;
        }
        let mono = lifecycle::monotonic_ns();
        let left = self.deadline_ns.saturating_sub(mono) as i64;
        for name in &self.spec.clocks {
            for &id in clock_ids(name) {
                let now = lifecycle::clock_ns(id as libc::clockid_t);
                c.clocks[id] = ClockEntry {
                    floor: now - FLOOR_SLACK_NS,
                    deadline: now + left,
                    start: self.starts[id],
                    enabled: left > 0,
                };
            }
        }
        c
    }

    /// Hooks the targets' processes not hooked yet, and again those that exec'd.
    fn scan(&mut self) {
        let own = self.own;
        // A thread whose stop timed out on an earlier tick is let go as soon as it has stopped.
        ptrace::release_lingering(std::time::Duration::ZERO);
        // An exec replaced the vDSO (or the process is gone): look again.
        self.procs.retain(|_, p| process::still_hooked(p, own));
        let control = self.control();
        for path in &self.cgroups {
            for pid in crate::engine::cgroup::procs_recursive(path).unwrap_or_default() {
                if self.procs.contains_key(&pid) || pid == std::process::id() {
                    continue;
                }
                let Some(st) = crate::engine::run_identity::start_time(pid) else {
                    continue;
                };
                if self.refused.contains_key(&(pid, st)) {
                    continue;
                }
                match process::patch(pid, own, self.tag, &control, self.armed) {
                    Ok(p) => {
                        self.patched += 1;
                        if p.relocated != (true, true) {
                            self.relocated_fallbacks += 1;
                        }
                        self.procs.insert(pid, p);
                    }
                    Err(PatchError::Gone | PatchError::NoVdso) => {}
                    // Tried again on a later tick.
                    Err(PatchError::NotRunning | PatchError::Busy) => {}
                    // Refused when found (counted in `failed`, named in the attachments), never
                    // discovered at the restore.
                    Err(e) => {
                        let who = ptrace::describe_pid(pid);
                        tracing::warn!("time: {who} refused, its clock is not shifted: {e}");
                        self.refused.insert((pid, st), e.to_string());
                    }
                }
            }
        }
    }

    /// Rewrites every control block (the lease, the offset).
    fn write_all(&mut self) {
        let control = self.control();
        let mut gone = Vec::new();
        for (pid, p) in self.procs.iter_mut() {
            if process::write_control(p, &control).is_err() {
                gone.push(*pid);
            }
        }
        for pid in gone {
            self.procs.remove(&pid);
        }
        self.written_deadline_ns = self.deadline_ns;
    }

    fn set_all_armed(&mut self, armed: bool) {
        for p in self.procs.values() {
            let _ = process::set_armed(p, armed);
        }
    }
}

impl Active for TimeFault {
    /// Opens every hooked process's lease window and arms it (two small writes each).
    fn arm(&mut self, deadline_ns: u64, _journal: &mut Journal) -> Result<()> {
        for (i, s) in self.starts.iter_mut().enumerate() {
            *s = lifecycle::clock_ns(i as libc::clockid_t);
        }
        self.armed = true;
        self.deadline_ns = deadline_ns;
        self.write_all();
        self.set_all_armed(true);
        // Those that came meanwhile.
        self.scan();
        Ok(())
    }

    fn renew(&mut self, deadline_ns: u64) -> Result<()> {
        self.deadline_ns = deadline_ns;
        if self.armed && deadline_ns >= self.written_deadline_ns + RENEW_EVERY_NS {
            self.write_all();
        }
        self.scan();
        Ok(())
    }

    fn set_param(&mut self, param: &str, value: f64) -> Result<()> {
        if param != "offset" {
            anyhow::bail!("a time fault has no parameter '{param}'");
        }
        self.offset_ns = (value * 1e9) as i64;
        if self.armed {
            self.write_all();
        }
        Ok(())
    }

    /// `processes` (hooked now), `patched` (hooks made, in all), `failed`, `syscall_fallback`
    /// (processes whose hooks call the syscall: the vDSO prologue could not be relocated).
    fn counters(&self) -> Result<Counters> {
        Ok(Counters::from([
            ("processes".into(), self.procs.len() as u64),
            ("patched".into(), self.patched),
            ("failed".into(), self.refused.len() as u64),
            ("syscall_fallback".into(), self.relocated_fallbacks),
        ]))
    }

    fn attachments(&self) -> Vec<String> {
        let mut out = vec![format!(
            "vDSO hooks (clock_gettime, gettimeofday, time) in {} process(es) of {}: {}",
            self.procs.len(),
            self.cgroups
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.spec.describe()
        )];
        for ((pid, _), why) in self.refused.iter().take(5) {
            out.push(format!("pid {pid} not hooked: {why}"));
        }
        out
    }

    /// Real time again at once (one byte each).
    fn disarm(&mut self, _journal: &mut Journal) -> Result<()> {
        self.armed = false;
        self.set_all_armed(false);
        Ok(())
    }

    fn result(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "offset_ns": self.offset_ns,
            "drift_ppm": self.spec.drift_ppm,
            "clocks": self.spec.clocks,
        }))
    }

    /// Restores the vDSO of every process carrying this run's tag (also those that left the
    /// targets) and unmaps the hook pages. A process that could only be disarmed (another tracer
    /// holds it at this moment) reads the real time: a warning, not a failure. A run that hooked no
    /// process at all fails: it shifted nothing.
    fn undo(mut self: Box<Self>, journal: &mut Journal) -> Result<()> {
        self.set_all_armed(false);
        self.procs.clear();
        let out = process::restore_all(self.tag).map_err(anyhow::Error::msg)?;
        tracing::debug!(
            "time: restored the vDSO of {} process(es); {} kept a disarmed hook page",
            out.clean + out.page_left,
            out.page_left
        );
        for why in &out.disarmed_only {
            tracing::warn!(
                "time: {why}: its clock is real (hooks disarmed) but its vDSO still leads to the \
                 disarmed hook page (a later time run on it takes the page over and removes it)"
            );
        }
        if !out.failed.is_empty() {
            anyhow::bail!(
                "could not disarm the hooks of {} process(es) (their clocks are real again when the \
                 lease lapses, within {} s); `kchaos stop` retries: {}",
                out.failed.len(),
                lifecycle::LEASE.as_secs(),
                out.failed.join(", ")
            );
        }
        journal.remove(&self.residue)?;
        if self.patched == 0 {
            anyhow::bail!("{}", self.nothing_hooked());
        }
        Ok(())
    }
}

impl TimeFault {
    /// Why a run that hooked nothing failed.
    fn nothing_hooked(&self) -> String {
        let places = self
            .cgroups
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!(
            "no process in {places} could be hooked over the whole run: no clock was shifted"
        );
        if !self.refused.is_empty() {
            let names: Vec<String> = self
                .refused
                .iter()
                .take(5)
                .map(|((pid, _), why)| format!("pid {pid}: {why}"))
                .collect();
            text.push_str(&format!(
                " ({} refused: {})",
                self.refused.len(),
                names.join("; ")
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_with_signs() {
        assert_eq!(parse_offset("+1h").unwrap(), 3_600_000_000_000);
        assert_eq!(parse_offset("-90d").unwrap(), -90 * 86_400 * 1_000_000_000);
        assert_eq!(parse_offset("30s").unwrap(), 30_000_000_000);
        assert!(parse_offset("soon").is_err());
        assert!(parse_offset("+200y").is_err());
        assert_eq!(format_offset(-90 * 86_400 * 1_000_000_000), "-90d");
        assert_eq!(format_offset(5_400_000_000_000), "+1h30m");
    }

    #[test]
    fn flags_need_a_shift_and_known_clocks() {
        let a = TimeArgs {
            clocks: vec!["realtime".into()],
            ..TimeArgs::default()
        };
        assert!(
            TimeSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .contains("--offset")
        );
        let a = TimeArgs {
            offset: Some("-1h".into()),
            clocks: vec!["monotonic".into(), "realtime".into(), "realtime".into()],
            ..TimeArgs::default()
        };
        let s = TimeSpec::from_args(&a).unwrap();
        assert_eq!(s.clocks, vec!["realtime", "monotonic"]);
        let a = TimeArgs {
            offset: Some("1h".into()),
            clocks: vec!["wall".into()],
            ..TimeArgs::default()
        };
        assert!(
            TimeSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .contains("allowed are")
        );
        assert!(check_drift(2_000_000).is_err());
    }

    #[test]
    fn offsets_and_drifts_are_bounded_at_both_ends() {
        const Y: i64 = 365 * 86_400 * 1_000_000_000;
        assert_eq!(parse_offset("+36500d").unwrap(), 100 * Y);
        assert_eq!(parse_offset("-36500d").unwrap(), -100 * Y);
        assert!(parse_offset("+18446744073709551615s").is_err());
        for t in ["+36501d", "-36501d", "-9999999999999d", "+4000000000s"] {
            let e = parse_offset(t).unwrap_err().to_string();
            assert!(e.contains("allowed is -100y to +100y"), "{t}: {e}");
        }
        assert_eq!(check_drift(1_000_000).unwrap(), 1_000_000);
        assert_eq!(check_drift(-1_000_000).unwrap(), -1_000_000);
        for ppm in [1_000_001, -1_000_001, i64::MIN, i64::MAX] {
            let e = check_drift(ppm).unwrap_err().to_string();
            assert!(
                e.contains("allowed is -1000000 to 1000000 ppm"),
                "{ppm}: {e}"
            );
        }
    }

    #[test]
    fn no_clock_is_shifted_below_zero_or_monotonic_years_ahead() {
        const S: i64 = 1_000_000_000;
        let spec = |offset_ns: i64, clocks: &[&str]| TimeSpec {
            offset_ns,
            drift_ppm: 0,
            clocks: clocks.iter().map(|c| c.to_string()).collect(),
        };
        // Up 1000 s; the wall clock at 1.7e9 s.
        let now = |c: &str| {
            if c == "realtime" {
                1_700_000_000 * S
            } else {
                1000 * S
            }
        };
        assert!(check_shift(&spec(-1000 * S, &["monotonic"]), now).is_ok());
        let e = check_shift(&spec(-1001 * S, &["realtime", "monotonic"]), now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "--offset -16m41s: the monotonic clock reads 16m40s now, so allowed with \
                        --clock monotonic is -16m40s to +3650d"
            ),
            "{e}"
        );
        assert!(check_shift(&spec(-36500 * 86_400 * S, &["boottime"]), now).is_err());
        assert!(check_shift(&spec(3650 * 86_400 * S, &["boottime"]), now).is_ok());
        assert!(check_shift(&spec(3651 * 86_400 * S, &["monotonic"]), now).is_err());
        // Realtime: 100 years ahead, and back to 1970 at most.
        assert!(check_shift(&spec(36500 * 86_400 * S, &["realtime"]), now).is_ok());
        assert!(check_shift(&spec(-1_700_000_000 * S, &["realtime"]), now).is_ok());
        assert!(check_shift(&spec(-1_700_000_001 * S, &["realtime"]), now).is_err());
    }

    fn scenario(fault: &str) -> Result<crate::experiment::scenario::Scenario, String> {
        let text = format!("title: t\ntargets: [{{name: app, cgroup: a}}]\nfaults:\n  - {fault}\n");
        crate::experiment::scenario::parse(
            "s.yaml",
            &text,
            &crate::experiment::fields::Vars::default(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_scenario_fault_with_its_fields_and_a_ramp() {
        let s = scenario("{at: 0s, for: 5s, time: {offset: -90d, clocks: [realtime, monotonic]}}")
            .unwrap();
        assert_eq!(
            s.faults[0].describe(),
            "time: shift by -90d the realtime, monotonic clocks of the target's processes (vDSO)"
        );
        let s = scenario(
            "{at: 0s, for: 5s, time: {}, ramp: {offset: {from: 0s, to: 1h, over: 4s, step: 1s}}}",
        )
        .unwrap();
        assert_eq!(s.faults[0].ramps.len(), 1);
        let e = scenario("{at: 0s, for: 5s, time: {}}").unwrap_err();
        assert!(e.contains("faults[0].time: give offset"), "{e}");
        let e = scenario("{at: 0s, for: 5s, time: {offset: soon}}").unwrap_err();
        assert!(e.contains("faults[0].time.offset: offset 'soon'"), "{e}");
        let e = scenario("{at: 0s, for: 5s, time: {drift: 5, clocks: [wall]}}").unwrap_err();
        assert!(
            e.contains("faults[0].time.clocks: clocks 'wall': allowed are"),
            "{e}"
        );
        // Two time faults of one target at once conflict.
        let s = scenario(
            "{at: 0s, for: 5s, time: {offset: 1h}}\n  - {at: 1s, for: 1s, time: {drift: 5}}",
        )
        .unwrap();
        assert_eq!(crate::experiment::validate::check(&s).len(), 1);
    }
}
