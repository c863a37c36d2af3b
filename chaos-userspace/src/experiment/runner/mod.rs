//! Runs an experiment, and every single-fault command as a one-fault experiment: every fault prepared
//! (loaded, attached disarmed, guards started) before anything else, probes before (the hypothesis
//! must hold, else nothing is injected), the faults armed at their planned instants with ramps and a
//! kernel deadline each, abort rules and the budget watched all the while, probes after (recovery),
//! rollbacks, and the report.
//!
//! One loop on a single thread: signals, probe results (from worker threads or agents), the next
//! planned instant of a fault, and a 50 ms tick for the lease, counters, abort rules and the budget.
//! An abort ends every fault right where it is decided, and the time that takes is measured.

mod judging;
mod rollbacks;
mod timeline;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use tokio::{sync::mpsc::UnboundedReceiver, time::Instant};

use self::timeline::{ActiveFault, State};
use super::{
    plan,
    probes::{self, ProbeResult, Worker},
    review::Finding,
    scenario::{Check, Scenario},
    validate::ResolvedTarget,
};
use crate::live::{FaultState, FaultStatus, Live, Phase, ProbeStatus};
use crate::progress::Progress;
use crate::{
    engine::journal::Journal,
    engine::lifecycle::{self, EndReason, Signals},
    engine::targets::Target,
    kind::FaultKind,
    report::{
        self, Event, FaultRecord, Phases, ProbeRecord, ProbeSample, Report, RollbackRecord,
        ScenarioInfo, Summary,
    },
    units::format_duration,
};

/// Housekeeping: the lease, counters, abort rules, and how late the event budget is noticed.
const TICK: Duration = Duration::from_millis(50);
/// Targets looked at for being gone in one tick. A stat of a cgroup directory takes about 12 us
/// beside 10,000 siblings, so looking at every target each tick kept the loop busy for longer than a
/// tick (and late for the timeline) on a run of that size; in turns of this many, 10,000 targets are
/// all looked at within 4 s, and up to this many every tick as before.
const GONE_CHECKS_PER_TICK: usize = 128;
/// How often counters go into the report's time series (and the live line of a command).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The loop wakes this long before a planned instant and sleeps the rest precisely: tokio's timer
/// works in whole milliseconds and rounds up.
const FINE_WAIT: Duration = Duration::from_millis(3);

/// What the run prints as it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `kchaos run` / `monkey`: every event, timestamped.
    Experiment,
    /// A single-fault command: what was attached, "armed", a live line a second.
    Command,
}

/// Everything a run needs, checked: a valid scenario, its resolved targets, the safety findings.
pub struct Setup {
    pub scenario: Scenario,
    pub targets: Vec<ResolvedTarget>,
    pub findings: Vec<Finding>,
    pub risk_accepted: bool,
    /// No live lines.
    pub quiet: bool,
    pub style: Style,
    /// What ran ("run", "monkey", "net", ...), for the report.
    pub command: &'static str,
    /// The run's record, created before anything else (so `kchaos stop` finds a run that is still
    /// starting); the runner journals what it makes in it.
    pub journal: Journal,
    /// How each fault is prepared: by its kind, unless a test hands in fakes.
    pub prepare: Option<Box<PrepareFn>>,
    /// Ctrl-C, SIGTERM and SIGHUP, caught by the caller before it made anything (a `kchaos stop`
    /// right after the start ends the run through its cleanup, not with the default action).
    pub signals: Signals,
    /// What the run shows outside itself (`kchaos status`, `--metrics`): the runner keeps it
    /// current; the caller fills in the name, pid and command.
    pub live: Live,
}

/// Prepares one fault on its targets (a test's fake instead of the kind's own `prepare`).
pub type PrepareFn =
    dyn FnMut(&FaultKind, &[Target], &mut Journal) -> Result<Box<dyn crate::kind::Active>>;

/// Why a phase stopped early.
enum Stop {
    Signal(EndReason),
    Abort(String),
}

struct FaultRun {
    index: usize,
    state: State,
    active: Option<ActiveFault>,
    record: FaultRecord,
    values: BTreeMap<String, f64>,
    armed_at: Option<Instant>,
    /// When its effect took hold: the arm, or later where the kind says so (a pause: frozen).
    effective_at: Option<Instant>,
    /// When its window ends: its length after the effect took hold, and the kernel's deadline then.
    ends_at: Option<(Instant, u64)>,
    last_sample: Option<Instant>,
}

struct Run<'a> {
    s: &'a Scenario,
    targets: &'a [ResolvedTarget],
    quiet: bool,
    style: Style,
    t0: Instant,
    t0_ns: u64,
    t0_unix_ms: u64,
    events: Vec<Event>,
    signals: Signals,
    rx: UnboundedReceiver<ProbeResult>,
    rx_open: bool,
    probe_results: Vec<Vec<ProbeSample>>,
    /// Per abort rule: since when (ms) its probe has been outside the rule's tolerance.
    violated_since: Vec<Option<f64>>,
    phases: Phases,
    method_start: Option<Instant>,
    method_start_ns: u64,
    after_start_ns: Option<u64>,
    faults: Vec<FaultRun>,
    journal: Journal,
    prepare: Option<Box<PrepareFn>>,
    budget_end: Option<Instant>,
    abort_to_detached_ms: Option<f64>,
    live: Live,
    /// When the status file was last written.
    published: Option<Instant>,
    /// Whether a caller of `--detach` has been told the faults are armed.
    announced: bool,
    /// `kchaos run` and `monkey`: the line between events (none with --quiet).
    progress: Option<Progress>,
    /// Where the next tick's look for gone targets starts (see GONE_CHECKS_PER_TICK).
    gone_cursor: usize,
}

pub async fn execute(setup: Setup) -> Result<Report> {
    let Setup {
        scenario,
        targets,
        findings,
        risk_accepted,
        quiet,
        style,
        command,
        journal,
        prepare,
        signals,
        live,
    } = setup;
    let s = &scenario;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let t0 = Instant::now();
    let mut run = Run {
        s,
        targets: &targets,
        quiet,
        style,
        t0,
        t0_ns: lifecycle::monotonic_ns(),
        t0_unix_ms: unix_ms(),
        events: Vec::new(),
        signals,
        rx,
        rx_open: true,
        probe_results: vec![Vec::new(); s.steady_state.probes.len()],
        violated_since: vec![None; s.abort.len()],
        phases: Phases::default(),
        method_start: None,
        method_start_ns: u64::MAX,
        after_start_ns: None,
        faults: s
            .faults
            .iter()
            .enumerate()
            .map(|(index, f)| FaultRun {
                index,
                state: State::Idle,
                active: None,
                record: FaultRecord {
                    name: f.name.clone(),
                    kind: f.kind.name().into(),
                    description: f.describe(),
                    targets: f.targets.clone(),
                    planned_start_ms: (s.steady_state.before + f.at).as_secs_f64() * 1e3,
                    planned_end_ms: (s.steady_state.before + f.end()).as_secs_f64() * 1e3,
                    ..FaultRecord::default()
                },
                values: BTreeMap::new(),
                armed_at: None,
                effective_at: None,
                ends_at: None,
                last_sample: None,
            })
            .collect(),
        journal,
        prepare,
        budget_end: s
            .budget
            .as_ref()
            .and_then(|b| b.max_duration)
            .map(|d| t0 + d),
        abort_to_detached_ms: None,
        live,
        published: None,
        announced: false,
        progress: (style == Style::Experiment && !quiet).then(Progress::for_stderr),
        gone_cursor: 0,
    };
    run.start_live();
    run.event("run.start", format!("'{}' from {}", s.title, s.file));

    // Everything slow happens now, before the first window opens; a fault that cannot be prepared
    // ends the run with nothing armed and everything prepared so far undone.
    if let Err(e) = run.prepare_all() {
        run.finish_all("preparing failed");
        run.set_phase(Phase::Ended);
        return Err(e);
    }

    let mut workers = Vec::new();
    if !s.steady_state.probes.is_empty() {
        let exe = probes::current_exe()?;
        for p in &s.steady_state.probes {
            let cgroup = match &p.from_target {
                Some(name) => Some(
                    targets
                        .iter()
                        .find(|t| &t.name == name)
                        .map(|t| t.path.clone())
                        .with_context(|| format!("probe '{}': no target '{name}'", p.name))?,
                ),
                None => None,
            };
            workers.push(Worker::start(p, cgroup.as_deref(), &exe, tx.clone())?);
        }
    }
    drop(tx);

    let mut stop = None;
    let mut before_held = true;
    // Before: the hypothesis must hold, or nothing is injected.
    if !s.steady_state.probes.is_empty() && !s.steady_state.before.is_zero() {
        run.set_phase(Phase::Before);
        run.event(
            "phase.before",
            format!("probing for {}", format_duration(s.steady_state.before)),
        );
        let start = run.ms();
        // From now: preparing the faults took some of the time since t0.
        stop = run
            .pump(Instant::now() + s.steady_state.before, false)
            .await?;
        run.phases.before = Some((start, run.ms()));
        if stop.is_none() {
            let failed = run.judge_phase("before");
            if !failed.is_empty() {
                before_held = false;
                let why = format!(
                    "the steady state did not hold before injection, so nothing was injected: {}",
                    failed.join("; ")
                );
                run.event("hypothesis.before", why.clone());
                stop = Some(Stop::Abort(why));
            } else {
                run.event("hypothesis.before", "held".into());
            }
        }
    }

    // The method: the faults on their timeline.
    let mut method_ran = false;
    if stop.is_none() {
        method_ran = true;
        // Said first: the status file's write must not fall between the start and the plan.
        run.set_phase(Phase::During);
        let start = Instant::now();
        run.method_start = Some(start);
        run.method_start_ns = lifecycle::monotonic_ns();
        // The plan counts from `start`, the instant the timeline's waits count from.
        let start_ms = start.saturating_duration_since(run.t0).as_secs_f64() * 1e3;
        // The plan, from the method's real start.
        for f in &mut run.faults {
            let decl = &s.faults[f.index];
            f.record.planned_start_ms = start_ms + decl.at.as_secs_f64() * 1e3;
            f.record.planned_end_ms = start_ms + decl.end().as_secs_f64() * 1e3;
        }
        run.event(
            "phase.during",
            format!("faults for {}", format_duration(s.method_length())),
        );
        let realtime = lifecycle::Realtime::enter();
        stop = run.pump(start + s.method_length(), true).await?;
        drop(realtime);
        if stop.is_some() {
            let decided = Instant::now();
            let n = run.finish_all("abort");
            let ms = decided.elapsed().as_secs_f64() * 1e3;
            if n > 0 {
                run.abort_to_detached_ms = Some(ms);
                run.event(
                    "abort.detached",
                    format!("{n} fault(s) detached {ms:.2} ms after the abort"),
                );
            }
        } else {
            run.finish_all("end of timeline");
        }
        run.phases.during = Some((start_ms, run.ms()));
    } else {
        // The hypothesis did not hold, or a signal came: nothing was armed; undo what was prepared.
        run.finish_all("not started");
    }

    // After: recovery (skipped when a signal asked kchaos to end).
    let signalled = matches!(stop, Some(Stop::Signal(_)));
    if method_ran && !signalled && !s.steady_state.probes.is_empty() {
        run.after_start_ns = Some(lifecycle::monotonic_ns());
        run.set_phase(Phase::After);
        let start_ms = run.ms();
        run.event(
            "phase.after",
            format!("probing for {}", format_duration(s.steady_state.after)),
        );
        let deadline = Instant::now() + s.steady_state.after;
        if let Some(sig) = run.pump(deadline, false).await?
            && stop.is_none()
        {
            stop = Some(sig);
        }
        run.phases.after = Some((start_ms, run.ms()));
    }
    for w in workers {
        w.stop();
    }
    // Results still in flight belong to the phases they started in.
    while let Ok(r) = run.rx.try_recv() {
        run.record_result(r);
    }
    run.set_phase(Phase::Ended);

    let mut rollbacks = Vec::new();
    if method_ran {
        // A signal while a rollback runs kills its process group and skips the ones after it.
        let mut cut: Option<String> = None;
        for r in &s.rollbacks {
            if let Some(why) = &cut {
                rollbacks.push(rollbacks::skipped(r, why));
                continue;
            }
            run.event(
                "rollback.start",
                format!("'{}': {}", r.name, plan::shell_words(&r.argv)),
            );
            let cancel = Arc::new(AtomicBool::new(false));
            let mut job = tokio::task::spawn_blocking({
                let (r, cancel) = (r.clone(), cancel.clone());
                move || rollbacks::rollback(&r, &cancel)
            });
            let rec = tokio::select! {
                rec = &mut job => rec.context("a rollback's thread")?,
                reason = run.signals.recv() => {
                    cancel.store(true, Ordering::Relaxed);
                    cut = Some(reason.to_string());
                    let sig = run.signalled(reason);
                    if !matches!(stop, Some(Stop::Abort(_))) {
                        stop = Some(sig);
                    }
                    job.await.context("a rollback's thread")?
                }
            };
            run.event(
                "rollback.end",
                format!(
                    "'{}': {}",
                    r.name,
                    rec.exit_code
                        .map(|c| format!("exit {c}"))
                        .unwrap_or_else(|| "did not finish".into())
                ),
            );
            rollbacks.push(rec);
        }
    }

    let (end_reason, abort_reason) = match &stop {
        None => (EndReason::Duration.to_string(), None),
        Some(Stop::Signal(r)) => (r.to_string(), Some(r.to_string())),
        Some(Stop::Abort(why)) => (
            EndReason::Aborted(why.clone()).to_string(),
            Some(why.clone()),
        ),
    };
    let signal = match &stop {
        Some(Stop::Signal(r)) => Some(r.clone()),
        _ => None,
    };
    run.event("run.end", end_reason.clone());
    Ok(run.into_report(
        before_held,
        Completion {
            completed: stop.is_none(),
            end_reason,
            abort_reason,
            signal,
        },
        rollbacks,
        (findings, risk_accepted, command),
    ))
}

/// How the run ended, for the summary.
struct Completion {
    completed: bool,
    end_reason: String,
    abort_reason: Option<String>,
    signal: Option<EndReason>,
}

impl Run<'_> {
    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }

    fn event(&mut self, kind: &str, detail: String) {
        let t_ms = self.ms();
        if !self.quiet && self.style == Style::Experiment {
            if let Some(p) = &mut self.progress {
                p.clear();
            }
            println!("[{:>6.2}s] {kind:<18} {detail}", t_ms / 1e3);
        }
        tracing::info!("{kind}: {detail}");
        self.events.push(Event {
            t_ms,
            unix_ms: self.t0_unix_ms + t_ms as u64,
            kind: kind.into(),
            detail,
        });
    }

    /// Runs until `deadline` (or the budget's end), handling results and, with `method`, the timeline.
    async fn pump(&mut self, deadline: Instant, method: bool) -> Result<Option<Stop>> {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let mut wake = next_tick.min(deadline);
            if method {
                // The budget's end matters only while faults run (before and after inject nothing).
                if let Some(b) = self.budget_end {
                    wake = wake.min(b);
                }
                if let Some(a) = self.next_action() {
                    wake = wake.min(a);
                }
            }
            let coarse = wake.checked_sub(FINE_WAIT).unwrap_or(wake);
            tokio::select! {
                biased;
                reason = self.signals.recv() => return Ok(Some(self.signalled(reason))),
                r = self.rx.recv(), if self.rx_open => match r {
                    Some(r) => {
                        if let Some(why) = self.record_result(r).filter(|_| method) {
                            return Ok(Some(Stop::Abort(why)));
                        }
                    }
                    None => self.rx_open = false,
                },
                _ = tokio::time::sleep_until(coarse) => {
                    precise_wait(wake).await;
                    let now = Instant::now();
                    if method {
                        if let Some(end) = self.budget_end
                            && now >= end
                        {
                            let why = format!(
                                "budget: max_duration {} reached",
                                format_duration(end - self.t0)
                            );
                            self.event("budget.exceeded", why.clone());
                            return Ok(Some(Stop::Abort(why)));
                        }
                        if let Some(why) = self.tick_method(now) {
                            return Ok(Some(Stop::Abort(why)));
                        }
                        self.announce_armed();
                    }
                    self.refresh_live(false);
                    self.show_progress(now);
                    // The method ends with its last fault (a window counts from when its effect
                    // took hold, which may be a little after the plan).
                    if now >= deadline && !(method && self.faults_pending()) {
                        return Ok(None);
                    }
                    if now >= next_tick {
                        next_tick = now + TICK;
                        if method && let Some(why) = self.check_abort_rules() {
                            return Ok(Some(Stop::Abort(why)));
                        }
                        if method
                            && self.faults_pending()
                            && let Some(why) = self.target_gone()
                        {
                            return Ok(Some(Stop::Abort(why)));
                        }
                    }
                }
            }
        }
    }

    /// A target whose cgroup is gone (removed, or replaced by a new one of the same path: another
    /// cgroup id): a stopped or restarted container. kchaos does not follow it to a new cgroup; the
    /// run ends saying so, rather than running on with a fault that hits nothing.
    fn target_gone(&mut self) -> Option<String> {
        let n = self.targets.len();
        let turn = n.min(GONE_CHECKS_PER_TICK);
        let start = self.gone_cursor % n.max(1);
        self.gone_cursor = (start + turn) % n.max(1);
        let t = (start..start + turn)
            .map(|i| &self.targets[i % n])
            .find(|t| crate::engine::cgroup::id(&t.path).ok() != Some(t.id))?;
        let why = format!(
            "target '{}' ({}) is gone: its cgroup {} (id {}) no longer exists; a stopped or \
             restarted container gets a new cgroup, which kchaos does not follow (run again to \
             target the new one)",
            t.name,
            t.origin,
            t.path.display(),
            t.id
        );
        self.event("target.gone", why.clone());
        Some(why)
    }

    /// Fills in what the live snapshot knows before anything runs: the faults, the probes, the
    /// budget, when the run ends at the latest.
    fn start_live(&mut self) {
        let s = self.s;
        let planned = s.steady_state.before + s.method_length() + s.steady_state.after;
        let end = self.budget_end.map_or(planned, |b| {
            planned.min(b.saturating_duration_since(self.t0))
        });
        {
            let mut snap = self.live.lock();
            snap.phase = Phase::Preparing;
            snap.started_unix_ms = self.t0_unix_ms;
            snap.ends_unix_ms = Some(self.t0_unix_ms + end.as_millis() as u64);
            snap.max_injected_events = s.budget.as_ref().and_then(|b| b.max_injected_events);
            snap.faults = s
                .faults
                .iter()
                .map(|f| FaultStatus {
                    name: f.name.clone(),
                    kind: f.kind.name().into(),
                    description: f.describe(),
                    targets: f
                        .targets_in(self.targets)
                        .map(|t| t.path.display().to_string())
                        .collect(),
                    labels: f.kind.metric_labels(),
                    ..FaultStatus::default()
                })
                .collect();
            snap.probes = s
                .steady_state
                .probes
                .iter()
                .map(|p| ProbeStatus::new(&p.name))
                .collect();
        }
        self.refresh_live(true);
    }

    /// Enters a phase, and says so at once. The faults' start fixes when the run ends at the latest
    /// (preparing and the steady state before may have taken longer than planned).
    fn set_phase(&mut self, phase: Phase) {
        if phase == Phase::During {
            let s = self.s;
            let now = Instant::now();
            let mut end = now + s.method_length() + s.steady_state.after;
            if let Some(b) = self.budget_end {
                end = end.min(b);
            }
            self.live.lock().ends_unix_ms = Some(
                crate::live::unix_ms() + end.saturating_duration_since(now).as_millis() as u64,
            );
        }
        self.live.lock().phase = phase;
        self.refresh_live(true);
    }

    /// Copies each fault's state and counters into the live snapshot; writes the status file when
    /// `now` is asked or a second has passed since the last write.
    fn refresh_live(&mut self, now: bool) {
        let mut snap = self.live.lock();
        for (f, status) in self.faults.iter().zip(snap.faults.iter_mut()) {
            status.state = match f.state {
                State::Idle => FaultState::Pending,
                State::Prepared => FaultState::Prepared,
                State::Armed => FaultState::Armed,
                State::Done => FaultState::Done,
            };
            status.armed_since_unix_ms = f.record.start_ms.map(|ms| self.t0_unix_ms + ms as u64);
            status.ends_unix_ms = match (f.record.end_ms, f.ends_at) {
                (Some(ms), _) => Some(self.t0_unix_ms + ms as u64),
                (None, Some((end, _))) => Some(
                    self.t0_unix_ms + end.saturating_duration_since(self.t0).as_millis() as u64,
                ),
                (None, None) => None,
            };
            status.injected_events = f.record.injected_events;
            if status.counters != f.record.counters {
                status.counters.clone_from(&f.record.counters);
            }
        }
        snap.injected_events = self.faults.iter().map(|f| f.record.injected_events).sum();
        snap.updated_unix_ms = crate::live::unix_ms();
        let due = now || self.published.is_none_or(|p| p.elapsed() >= SAMPLE_EVERY);
        if due {
            self.published = Some(Instant::now());
            if let Err(e) = self.journal.publish_status(&snap) {
                tracing::warn!("writing the run's status file: {e}");
            }
        }
    }

    /// Draws the progress line when it is due.
    fn show_progress(&mut self, now: Instant) {
        if let Some(p) = &mut self.progress {
            let snap = self.live.lock();
            if let Some(line) = p.due(now.into_std(), &snap, unix_ms()) {
                drop(snap);
                p.show(&line);
            }
        }
    }

    /// Tells a caller of `--detach` that the run is under way, once every fault is prepared and
    /// those due by now are armed.
    fn announce_armed(&mut self) {
        if self.announced || self.faults.iter().any(|f| f.state == State::Idle) {
            return;
        }
        self.announced = true;
        self.refresh_live(true);
        crate::detach::announce_ready(self.journal.name());
    }

    fn signalled(&mut self, reason: EndReason) -> Stop {
        self.event("signal", reason.to_string());
        Stop::Signal(reason)
    }

    fn into_report(
        self,
        before_held: bool,
        end: Completion,
        rollbacks: Vec<RollbackRecord>,
        (findings, risk_accepted, command): (Vec<Finding>, bool, &str),
    ) -> Report {
        let s = self.s;
        let probes: Vec<ProbeRecord> = s
            .steady_state
            .probes
            .iter()
            .zip(self.probe_results)
            .map(|(p, results)| ProbeRecord {
                name: p.name.clone(),
                check: describe_check(&p.check),
                from_target: p.from_target.clone(),
                tolerance: p.tolerance.clone(),
                results,
            })
            .collect();
        let faults: Vec<FaultRecord> = self.faults.into_iter().map(|f| f.record).collect();
        let hypothesis = report::hypotheses(&probes, &self.phases);
        let outcome = report::outcome(&faults, &probes);
        let steady_state_held = (!probes.is_empty()).then(|| {
            before_held
                && self.phases.after.is_some()
                && hypothesis
                    .iter()
                    .filter(|h| h.phase != "during")
                    .all(|h| h.held)
        });
        let duration_ms = self.t0.elapsed().as_secs_f64() * 1e3;
        Report {
            kchaos_version: env!("CARGO_PKG_VERSION").into(),
            kernel: kernel_release(),
            command: command.into(),
            scenario: ScenarioInfo {
                file: s.file.clone(),
                title: s.title.clone(),
                description: s.description.clone(),
                variables: s.variables.clone(),
            },
            started_unix_ms: self.t0_unix_ms,
            duration_ms,
            targets: self.targets.to_vec(),
            findings,
            risk_accepted,
            plan: plan::timeline(s, self.targets),
            phases: self.phases,
            events: self.events,
            summary: Summary {
                injected_events: faults.iter().map(|f| f.injected_events).sum(),
                availability_during_faults_pct: outcome.availability_during_faults_pct,
                error_rate_pct: outcome.error_rate_pct,
                degradation_pct: outcome.degradation_pct,
                probe_figures: outcome.probe_figures,
                recovery: outcome.recovery,
                steady_state_held,
                completed: end.completed,
                end_reason: end.end_reason,
                abort_reason: end.abort_reason,
                signal: end.signal,
                abort_to_detached_ms: self.abort_to_detached_ms,
            },
            faults,
            probes,
            hypothesis,
            rollbacks,
        }
    }
}

/// Sleeps until `until` with the precision of the kernel's timers (tens of microseconds), not
/// tokio's milliseconds. Under tokio's paused clock (tests) the virtual clock is advanced instead.
async fn precise_wait(until: Instant) {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return;
    }
    if left <= FINE_WAIT {
        std::thread::sleep(left);
    }
    if Instant::now() < until {
        tokio::time::sleep_until(until).await;
    }
}

pub fn describe_check(c: &Check) -> String {
    match c {
        Check::Tcp { address } => format!("tcp connect {address}"),
        Check::Http { url, statuses, .. } => {
            if statuses.is_empty() {
                format!("http GET {url} (200-399)")
            } else {
                format!("http GET {url} (status {statuses:?})")
            }
        }
        Check::Command {
            argv, exit_code, ..
        } => {
            format!("command `{}` exits {exit_code}", plan::shell_words(argv))
        }
    }
}

/// The running kernel's release.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
