//! Runs an experiment: probes before (the hypothesis must hold, else nothing is injected), the faults on
//! their timeline with ramps and a kernel deadline each, abort rules and the budget watched all the
//! while, probes after (recovery), rollbacks, and the report.
//!
//! One loop on a single thread: signals, probe results (from worker threads or agents), and a 50 ms
//! tick that attaches, ramps, renews leases, reads the kernel's counters and detaches. An abort detaches
//! every fault right where it is decided, and the time that takes is measured.

use std::{
    collections::BTreeMap,
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc::UnboundedReceiver,
};

use super::{
    kinds::ActiveFault,
    plan,
    probes::{self, ProbeResult, Worker},
    report::{
        self, CounterSample, Event, FaultRecord, Phases, ProbeRecord, ProbeSample, RampStep,
        Report, RollbackRecord, ScenarioInfo, Summary,
    },
    review::Finding,
    scenario::{Check, Rollback, Scenario},
    validate::ResolvedTarget,
};
use crate::{
    journal::Journal,
    lifecycle::{self, EndReason},
    units::format_duration,
};

/// The tick of the timeline: attach/detach/ramp precision, and how late a budget is noticed.
const TICK: Duration = Duration::from_millis(50);
/// How often counters go into the report's time series.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Everything a run needs, checked: a valid scenario, its resolved targets, the safety findings.
pub struct Setup {
    pub scenario: Scenario,
    pub targets: Vec<ResolvedTarget>,
    pub findings: Vec<Finding>,
    pub risk_accepted: bool,
    /// No live lines.
    pub quiet: bool,
    /// Run even where another kchaos run injects into an overlapping cgroup.
    pub stack: bool,
}

/// Why a phase stopped early.
enum Stop {
    Signal(EndReason),
    Abort(String),
}

struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

struct FaultRun {
    index: usize,
    active: Option<Box<dyn ActiveFault>>,
    done: bool,
    record: FaultRecord,
    values: BTreeMap<String, f64>,
    last_sample: Option<Instant>,
}

struct Run<'a> {
    s: &'a Scenario,
    targets: &'a [ResolvedTarget],
    quiet: bool,
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
    injected_done: u64,
    budget_end: Option<Instant>,
    abort_to_detached_ms: Option<f64>,
}

pub async fn execute(setup: Setup) -> Result<Report> {
    let s = &setup.scenario;
    // Signals are caught from the start, so a Ctrl-C while probes start is not lost.
    let signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
        hup: signal(SignalKind::hangup())?,
    };
    let paths: Vec<_> = setup.targets.iter().map(|t| t.path.clone()).collect();
    let journal = Journal::create("run", &paths, setup.stack)?;
    let exe = probes::current_exe()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let t0 = Instant::now();
    let mut run = Run {
        s,
        targets: &setup.targets,
        quiet: setup.quiet,
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
                active: None,
                done: false,
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
                last_sample: None,
            })
            .collect(),
        journal,
        injected_done: 0,
        budget_end: s
            .budget
            .as_ref()
            .and_then(|b| b.max_duration)
            .map(|d| t0 + d),
        abort_to_detached_ms: None,
    };
    run.event("run.start", format!("'{}' from {}", s.title, s.file));

    let mut workers = Vec::new();
    for p in &s.steady_state.probes {
        let cgroup = match &p.from_target {
            Some(name) => Some(
                setup
                    .targets
                    .iter()
                    .find(|t| &t.name == name)
                    .map(|t| t.path.clone())
                    .with_context(|| format!("probe '{}': no target '{name}'", p.name))?,
            ),
            None => None,
        };
        workers.push(Worker::start(p, cgroup.as_deref(), &exe, tx.clone())?);
    }
    drop(tx);

    let mut stop = None;
    let mut before_held = true;
    // Before: the hypothesis must hold, or nothing is injected.
    if !s.steady_state.probes.is_empty() && !s.steady_state.before.is_zero() {
        run.event(
            "phase.before",
            format!("probing for {}", format_duration(s.steady_state.before)),
        );
        let start = run.ms();
        stop = run.pump(t0 + s.steady_state.before, false).await?;
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
        let start = Instant::now();
        run.method_start = Some(start);
        run.method_start_ns = lifecycle::monotonic_ns();
        let start_ms = run.ms();
        run.event(
            "phase.during",
            format!("faults for {}", format_duration(s.method_length())),
        );
        stop = run.pump(start + s.method_length(), true).await?;
        if stop.is_none() {
            // A last step at the end of the timeline: an instant event due right there still happens.
            stop = run.tick_method(Instant::now()).map(Stop::Abort);
        }
        if stop.is_some() {
            let decided = Instant::now();
            let n = run.detach_all("abort");
            let ms = decided.elapsed().as_secs_f64() * 1e3;
            if n > 0 {
                run.abort_to_detached_ms = Some(ms);
                run.event(
                    "abort.detached",
                    format!("{n} fault(s) detached {ms:.2} ms after the abort"),
                );
            }
        } else {
            run.detach_all("end of timeline");
        }
        run.phases.during = Some((start_ms, run.ms()));
    }

    // After: recovery (skipped when a signal asked kchaos to end).
    let signalled = matches!(stop, Some(Stop::Signal(_)));
    if method_ran && !signalled && !s.steady_state.probes.is_empty() {
        run.after_start_ns = Some(lifecycle::monotonic_ns());
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

    let mut rollbacks = Vec::new();
    if method_ran {
        for r in &s.rollbacks {
            run.event(
                "rollback.start",
                format!("'{}': {}", r.name, plan::shell_words(&r.argv)),
            );
            let rec = rollback(r);
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
    run.event("run.end", end_reason.clone());
    Ok(run.finish(
        before_held,
        stop.is_none(),
        end_reason,
        abort_reason,
        rollbacks,
        &setup,
    ))
}

impl Run<'_> {
    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }

    fn event(&mut self, kind: &str, detail: String) {
        let t_ms = self.ms();
        if !self.quiet {
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
            let until = next_tick.min(deadline);
            // The budget's end matters only while faults run (before and after inject nothing).
            let until = match self.budget_end {
                Some(b) if method => until.min(b),
                _ => until,
            };
            tokio::select! {
                _ = self.signals.int.recv() => return Ok(Some(self.signalled(EndReason::Interrupted))),
                _ = self.signals.term.recv() => return Ok(Some(self.signalled(EndReason::Terminated))),
                _ = self.signals.hup.recv() => return Ok(Some(self.signalled(EndReason::HungUp))),
                r = self.rx.recv(), if self.rx_open => match r {
                    Some(r) => {
                        if let Some(why) = self.record_result(r).filter(|_| method) {
                            return Ok(Some(Stop::Abort(why)));
                        }
                    }
                    None => self.rx_open = false,
                },
                _ = tokio::time::sleep_until(until.into()) => {
                    let now = Instant::now();
                    if let Some(end) = self.budget_end
                        && now >= end
                        && method
                    {
                        let why = format!(
                            "budget: max_duration {} reached",
                            format_duration(end - self.t0)
                        );
                        self.event("budget.exceeded", why.clone());
                        return Ok(Some(Stop::Abort(why)));
                    }
                    if now >= deadline {
                        return Ok(None);
                    }
                    if now >= next_tick {
                        next_tick = now + TICK;
                        if method {
                            if let Some(why) = self.tick_method(now) {
                                return Ok(Some(Stop::Abort(why)));
                            }
                            if let Some(why) = self.check_abort_rules() {
                                return Ok(Some(Stop::Abort(why)));
                            }
                        }
                    }
                }
            }
        }
    }

    fn signalled(&mut self, reason: EndReason) -> Stop {
        self.event("signal", reason.to_string());
        Stop::Signal(reason)
    }

    fn phase_of(&self, t_ns: u64) -> &'static str {
        match self.after_start_ns {
            Some(a) if t_ns >= a => "after",
            _ if t_ns >= self.method_start_ns => "during",
            _ => "before",
        }
    }

    /// Stores a result; during the method, returns an abort reason when a rule fires.
    fn record_result(&mut self, r: ProbeResult) -> Option<String> {
        let index = self
            .s
            .steady_state
            .probes
            .iter()
            .position(|p| p.name == r.probe)?;
        let phase = self.phase_of(r.t_ns);
        self.probe_results[index].push(ProbeSample::from_result(&r, self.t0_ns, phase));
        if phase != "during" || self.after_start_ns.is_some() {
            return None;
        }
        self.judge_rules(index, &r.detail);
        self.check_abort_rules()
    }

    /// Re-judges, over its sliding window, every abort rule watching probe `index`.
    fn judge_rules(&mut self, index: usize, last_detail: &str) {
        let probe = &self.s.steady_state.probes[index];
        let now = self.ms();
        let window_ms = probe.tolerance.window.as_secs_f64() * 1e3;
        let window: Vec<ProbeResult> = self.probe_results[index]
            .iter()
            .filter(|x| x.phase == "during" && x.t_ms + x.latency_ms > now - window_ms)
            .map(|x| ProbeResult {
                probe: String::new(),
                t_ns: 0,
                ok: x.ok,
                latency_ms: x.latency_ms,
                detail: String::new(),
            })
            .collect();
        let stats = probes::stats(&window);
        for (k, rule) in self.s.abort.iter().enumerate() {
            if rule.probe != probe.name {
                continue;
            }
            match probes::judge(&rule.tolerance(&probe.tolerance), &stats) {
                Err(why) => {
                    if self.violated_since[k].is_none() {
                        self.violated_since[k] = Some(now);
                        self.event(
                            "probe.violated",
                            format!(
                                "'{}' (abort rule {}): {why} (last: {last_detail})",
                                rule.probe,
                                k + 1
                            ),
                        );
                    }
                }
                Ok(()) => {
                    if self.violated_since[k].take().is_some() {
                        self.event(
                            "probe.held",
                            format!("'{}' within abort rule {} again", rule.probe, k + 1),
                        );
                    }
                }
            }
        }
    }

    fn check_abort_rules(&mut self) -> Option<String> {
        let now = self.ms();
        for (k, rule) in self.s.abort.iter().enumerate() {
            if let Some(since) = self.violated_since[k]
                && now - since >= rule.violated_for.as_secs_f64() * 1e3
            {
                let why = format!(
                    "probe '{}' violated its tolerance for {:.0} ms (abort rule {}: for {})",
                    rule.probe,
                    now - since,
                    k + 1,
                    format_duration(rule.violated_for)
                );
                self.event("abort", why.clone());
                return Some(why);
            }
        }
        None
    }

    /// One step of the timeline; returns an abort reason (budget, a failed attach).
    fn tick_method(&mut self, now: Instant) -> Option<String> {
        let method_start = self.method_start?;
        let elapsed = now - method_start;
        let budget_end_ns = self.budget_end.map(|b| {
            self.method_start_ns + b.saturating_duration_since(method_start).as_nanos() as u64
        });
        for i in 0..self.faults.len() {
            let decl = &self.s.faults[self.faults[i].index];
            if self.faults[i].done {
                continue;
            }
            // Its end is its start: it happens (attach), is counted and is detached in one step.
            if decl.kind.is_instant() {
                if elapsed < decl.at {
                    continue;
                }
                let end_ns = self.method_start_ns + decl.end().as_nanos() as u64;
                let attached = self.attach(i, Duration::ZERO, end_ns);
                self.detach(i, "instant event");
                if let Err(e) = attached {
                    let why = format!("'{}' failed: {e:#}", decl.name);
                    self.event("fault.error", why.clone());
                    return Some(why);
                }
                continue;
            }
            if elapsed >= decl.end() {
                self.detach(i, "end of its time");
                continue;
            }
            if elapsed < decl.at {
                continue;
            }
            // Its kernel deadline: the planned end, never past the budget, renewed as a lease.
            let end_ns = self.method_start_ns + decl.end().as_nanos() as u64;
            let end_ns = budget_end_ns.map_or(end_ns, |b| b.min(end_ns));
            if self.faults[i].active.is_none() {
                if let Err(e) = self.attach(i, elapsed - decl.at, end_ns) {
                    let why = format!("attaching '{}' failed: {e:#}", decl.name);
                    self.event("fault.error", why.clone());
                    return Some(why);
                }
                continue;
            }
            if let Err(e) = self.step(i, elapsed - decl.at, end_ns, now) {
                let why = format!("driving '{}' failed: {e:#}", decl.name);
                self.event("fault.error", why.clone());
                return Some(why);
            }
        }
        // The event budget, over every fault so far.
        if let Some(max) = self.s.budget.as_ref().and_then(|b| b.max_injected_events) {
            let total = self.injected_total();
            if total >= max {
                let why =
                    format!("budget: {total} injected events reached max_injected_events {max}");
                self.event("budget.exceeded", why.clone());
                return Some(why);
            }
        }
        None
    }

    fn injected_total(&self) -> u64 {
        self.injected_done
            + self
                .faults
                .iter()
                .filter(|f| f.active.is_some())
                .map(|f| f.record.injected_events)
                .sum::<u64>()
    }

    fn attach(&mut self, i: usize, into: Duration, end_ns: u64) -> Result<()> {
        let decl = &self.s.faults[self.faults[i].index];
        let targets: Vec<crate::targets::Target> = self
            .targets
            .iter()
            .filter(|t| decl.targets.contains(&t.name))
            .map(ResolvedTarget::target)
            .collect();
        let mut active = decl.kind.attach(&targets, &mut self.journal)?;
        let mut steps = Vec::new();
        for r in &decl.ramps {
            let v = r.value_at(into);
            active.set_param(&r.param, v)?;
            steps.push((r.param.clone(), v, r.unit.format(v)));
        }
        active.arm(lifecycle::lease_deadline_ns(
            lifecycle::monotonic_ns(),
            Some(end_ns),
        ))?;
        let t = self.ms();
        let f = &mut self.faults[i];
        f.record.start_ms = Some(t);
        f.record.attached = active.attachments();
        for (param, value, display) in steps {
            f.values.insert(param.clone(), value);
            f.record.ramp_steps.push(RampStep {
                t_ms: t,
                param,
                value,
                display,
            });
        }
        let attached = f.record.attached.join("; ");
        f.active = Some(active);
        let name = decl.name.clone();
        let describe = decl.describe();
        self.event("fault.armed", format!("'{name}' {describe}: {attached}"));
        Ok(())
    }

    /// Ramps, lease, counters of an active fault.
    fn step(&mut self, i: usize, into: Duration, end_ns: u64, now: Instant) -> Result<()> {
        let decl = &self.s.faults[self.faults[i].index];
        let t = self.ms();
        let mut changed = Vec::new();
        {
            let f = &mut self.faults[i];
            let Some(active) = f.active.as_mut() else {
                return Ok(());
            };
            for r in &decl.ramps {
                let v = r.value_at(into);
                if f.values.get(&r.param) != Some(&v) {
                    active.set_param(&r.param, v)?;
                    f.values.insert(r.param.clone(), v);
                    f.record.ramp_steps.push(RampStep {
                        t_ms: t,
                        param: r.param.clone(),
                        value: v,
                        display: r.unit.format(v),
                    });
                    changed.push(format!("{} = {}", r.param, r.unit.format(v)));
                }
            }
            active.arm(lifecycle::lease_deadline_ns(
                lifecycle::monotonic_ns(),
                Some(end_ns),
            ))?;
            let counters = active.counters()?;
            f.record.injected_events = decl.kind.injected_events(&counters);
            if f.last_sample.is_none_or(|l| now - l >= SAMPLE_EVERY) {
                f.last_sample = Some(now);
                f.record.samples.push(CounterSample {
                    t_ms: t,
                    injected_events: f.record.injected_events,
                    counters: counters.clone(),
                });
            }
            f.record.counters = counters;
        }
        if !changed.is_empty() {
            self.event(
                "fault.ramp",
                format!("'{}' {}", decl.name, changed.join(", ")),
            );
        }
        Ok(())
    }

    fn detach(&mut self, i: usize, why: &str) {
        let f = &mut self.faults[i];
        f.done = true;
        let Some(mut active) = f.active.take() else {
            return;
        };
        let decl = &self.s.faults[f.index];
        let stopped = active.stop(&mut self.journal);
        if let Ok(c) = active.counters() {
            f.record.injected_events = decl.kind.injected_events(&c);
            f.record.counters = c;
        }
        let result = stopped.and(active.detach(&mut self.journal));
        let t = self.ms();
        let f = &mut self.faults[i];
        f.record.end_ms = Some(t);
        self.injected_done += f.record.injected_events;
        let detail = format!(
            "'{}' ({why}): {} injected events{}",
            decl.name,
            f.record.injected_events,
            match &result {
                Ok(()) => String::new(),
                Err(e) => format!("; {e:#}"),
            }
        );
        self.event("fault.detached", detail);
    }

    /// Detaches every active fault now; pending ones never start. Returns how many were active.
    fn detach_all(&mut self, why: &str) -> usize {
        let mut n = 0;
        for i in 0..self.faults.len() {
            if self.faults[i].active.is_some() {
                n += 1;
            }
            self.detach(i, why);
        }
        n
    }

    /// Judges every probe over a phase; returns what failed.
    fn judge_phase(&self, phase: &str) -> Vec<String> {
        let mut failed = Vec::new();
        for (i, p) in self.s.steady_state.probes.iter().enumerate() {
            let results: Vec<ProbeResult> = self.probe_results[i]
                .iter()
                .filter(|r| r.phase == phase)
                .map(|x| ProbeResult {
                    probe: String::new(),
                    t_ns: 0,
                    ok: x.ok,
                    latency_ms: x.latency_ms,
                    detail: x.detail.clone(),
                })
                .collect();
            if let Err(why) = probes::judge(&p.tolerance, &probes::stats(&results)) {
                let last = results.last().map(|r| r.detail.clone()).unwrap_or_default();
                failed.push(format!("probe '{}': {why} (last: {last})", p.name));
            }
        }
        failed
    }

    fn finish(
        self,
        before_held: bool,
        completed: bool,
        end_reason: String,
        abort_reason: Option<String>,
        rollbacks: Vec<RollbackRecord>,
        setup: &Setup,
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
        let (availability, error_rate, recovery) = report::outcome(&faults, &probes);
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
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .into(),
            scenario: ScenarioInfo {
                file: s.file.clone(),
                title: s.title.clone(),
                description: s.description.clone(),
                variables: s.variables.clone(),
            },
            started_unix_ms: self.t0_unix_ms,
            duration_ms,
            targets: self.targets.to_vec(),
            findings: setup.findings.clone(),
            risk_accepted: setup.risk_accepted,
            plan: plan::timeline(s, self.targets),
            phases: self.phases,
            events: self.events,
            summary: Summary {
                injected_events: faults.iter().map(|f| f.injected_events).sum(),
                availability_during_faults_pct: availability,
                error_rate_pct: error_rate,
                recovery,
                steady_state_held,
                completed,
                end_reason,
                abort_reason,
                abort_to_detached_ms: self.abort_to_detached_ms,
            },
            faults,
            probes,
            hypothesis,
            rollbacks,
        }
    }
}

pub fn describe_check(c: &Check) -> String {
    match c {
        Check::Tcp { address } => format!("tcp connect {address}"),
        Check::Http { url, statuses } => {
            if statuses.is_empty() {
                format!("http GET {url} (200-399)")
            } else {
                format!("http GET {url} (status {statuses:?})")
            }
        }
        Check::Command { argv, exit_code } => {
            format!("command `{}` exits {exit_code}", plan::shell_words(argv))
        }
    }
}

/// Runs one rollback command with its timeout; keeps the end of its output.
fn rollback(r: &Rollback) -> RollbackRecord {
    let start = Instant::now();
    let command = plan::shell_words(&r.argv);
    let record = |exit_code, output: String| RollbackRecord {
        name: r.name.clone(),
        command: command.clone(),
        exit_code,
        duration_ms: start.elapsed().as_secs_f64() * 1e3,
        output,
    };
    let Some((program, args)) = r.argv.split_first() else {
        return record(None, "empty command".into());
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return record(None, format!("starting {program}: {e}")),
    };
    // Read output on threads so a chatty command cannot block on a full pipe.
    let readers: Vec<std::thread::JoinHandle<String>> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    })
    .collect();
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if start.elapsed() >= r.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let mut output: String = readers
        .into_iter()
        .filter_map(|h| h.join().ok())
        .collect::<Vec<_>>()
        .join("");
    if output.len() > 2000 {
        let cut = output.len() - 2000;
        let cut = (cut..output.len())
            .find(|i| output.is_char_boundary(*i))
            .unwrap_or(output.len());
        output = output[cut..].to_owned();
    }
    record(code, output)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
