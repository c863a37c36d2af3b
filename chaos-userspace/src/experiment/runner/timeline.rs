//! The faults on their timeline: each is prepared before the run starts (everything slow), armed at
//! its planned instant (a map write, a cgroup file, a signal), tuned at each ramp step, renewed as a
//! lease, sampled, disarmed at its planned end and undone.
//!
//! The loop wakes at the next planned instant itself (see [`Run::next_action`]), not at the next tick,
//! so a fault is armed within a fraction of a millisecond of its plan.

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use super::{Run, SAMPLE_EVERY, Style};
use crate::{
    engine::lifecycle,
    experiment::{scenario::Ramp, validate::ResolvedTarget},
    kind::Active,
    report::{CounterSample, RampStep},
};

/// Where a fault is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Not prepared (yet, or because preparing failed).
    Idle,
    /// Prepared and disarmed: waiting for its instant.
    Prepared,
    Armed,
    /// Disarmed and undone (or never armed, when the run stopped first).
    Done,
}

/// The instant of a ramp's next step after `into` (from the fault's start), if it has one.
fn next_ramp_step(r: &Ramp, into: Duration) -> Option<Duration> {
    if into >= r.over {
        return None;
    }
    let step = r.step.as_nanos().max(1);
    let next = (into.as_nanos() / step + 1) * step;
    Some(Duration::from_nanos(next.min(r.over.as_nanos()) as u64))
}

impl Run<'_> {
    /// Prepares every fault (load, attach disarmed, start guards), in scenario order. On an error the
    /// ones already prepared stay for the caller's undo.
    pub(super) fn prepare_all(&mut self) -> Result<()> {
        for i in 0..self.faults.len() {
            let decl = &self.s.faults[self.faults[i].index];
            let targets: Vec<crate::engine::targets::Target> = decl
                .targets_in(self.targets)
                .map(ResolvedTarget::target)
                .collect();
            // (A ramped parameter's programs are in the spec already: the scenario reader saw to it.)
            let prepared = match self.prepare.as_mut() {
                Some(fake) => fake(&decl.kind, &targets, &mut self.journal),
                None => decl.kind.prepare(&targets, &mut self.journal),
            };
            let active =
                prepared.map_err(|e| e.context(format!("preparing fault '{}'", decl.name)))?;
            let f = &mut self.faults[i];
            f.record.attached = active.attachments();
            f.active = Some(active);
            f.state = State::Prepared;
            let (name, attached) = (decl.name.clone(), f.record.attached.join("; "));
            if self.style == Style::Command {
                if !decl.kind.is_instant() {
                    for a in &self.faults[i].record.attached {
                        println!("  attached {a}");
                    }
                }
            } else {
                self.event("fault.prepared", format!("'{name}' disarmed: {attached}"));
            }
        }
        Ok(())
    }

    /// The next planned instant of any fault: an arm, a ramp step, an end.
    pub(super) fn next_action(&self) -> Option<Instant> {
        let start = self.method_start?;
        self.faults
            .iter()
            .filter_map(|f| {
                let decl = &self.s.faults[f.index];
                match f.state {
                    State::Prepared => Some(start + decl.at),
                    State::Armed => {
                        let into = Instant::now().saturating_duration_since(start + decl.at);
                        let step = decl
                            .ramps
                            .iter()
                            .filter_map(|r| next_ramp_step(r, into))
                            .min()
                            .map(|s| start + decl.at + s);
                        let end = f.ends_at.map_or(start + decl.end(), |(e, _)| e);
                        Some(step.map_or(end, |s| s.min(end)))
                    }
                    State::Idle | State::Done => None,
                }
            })
            .min()
    }

    /// Does what is due at `now`; returns an abort reason (an error of a fault, the event budget).
    pub(super) fn tick_method(&mut self, now: Instant) -> Option<String> {
        let method_start = self.method_start?;
        let elapsed = now.saturating_duration_since(method_start);
        let budget_end_ns = self.budget_end.map(|b| {
            self.method_start_ns + b.saturating_duration_since(method_start).as_nanos() as u64
        });
        for i in 0..self.faults.len() {
            let decl = &self.s.faults[self.faults[i].index];
            let result = match self.faults[i].state {
                // Once an end was asked for, nothing more is armed: the loop sees the signal next.
                State::Prepared if elapsed >= decl.at && !lifecycle::end_requested() => {
                    let armed = self.arm(i, elapsed - decl.at, budget_end_ns);
                    // An instant event happens, is counted and is over in one step.
                    if decl.kind.is_instant() {
                        self.finish(i, "instant event");
                    }
                    armed.map_err(|e| ("failed", e))
                }
                State::Armed => match self.faults[i].ends_at {
                    Some((end, _)) if now >= end => {
                        self.finish(i, "end of its time");
                        Ok(())
                    }
                    ends => self
                        .step(i, elapsed - decl.at, ends.map_or(0, |(_, ns)| ns), now)
                        .map_err(|e| ("driving it failed", e)),
                },
                _ => Ok(()),
            };
            if let Err((what, e)) = result {
                let why = format!(
                    "'{}' {what}: {e:#}",
                    self.s.faults[self.faults[i].index].name
                );
                self.faults[i].record.errors.push(format!("{e:#}"));
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

    /// Whether a fault is still to be armed or still armed.
    pub(super) fn faults_pending(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f.state, State::Prepared | State::Armed))
    }

    fn injected_total(&self) -> u64 {
        self.faults.iter().map(|f| f.record.injected_events).sum()
    }

    /// Arms a prepared fault at its instant (ramps at their values `into` the fault). Its window
    /// ends its length after the effect took hold, its kernel deadline then too (never past the
    /// budget's), renewed as a lease.
    fn arm(&mut self, i: usize, into: Duration, budget_end_ns: Option<u64>) -> Result<()> {
        let decl = &self.s.faults[self.faults[i].index];
        let f = &mut self.faults[i];
        let Some(active) = f.active.as_mut() else {
            anyhow::bail!("it was never prepared");
        };
        let mut steps = Vec::new();
        for r in &decl.ramps {
            let v = r.value_at(into);
            active.set_param(&r.param, v)?;
            steps.push((r.param.clone(), v, r.unit.format(v)));
        }
        let planned_end_ns = self.method_start_ns + decl.end().as_nanos() as u64;
        active.arm(
            lifecycle::lease_deadline_ns(lifecycle::monotonic_ns(), Some(planned_end_ns)),
            &mut self.journal,
        )?;
        // The instant the fault took effect, before anything that only reports it.
        let armed_at = Instant::now();
        f.state = State::Armed;
        active.settle();
        let effective = active
            .effective_since()
            .map_or(armed_at, Instant::from_std)
            .max(armed_at);
        let end = effective + decl.duration;
        let end_ns = lifecycle::monotonic_ns()
            + end.saturating_duration_since(Instant::now()).as_nanos() as u64;
        f.ends_at = Some((end, budget_end_ns.map_or(end_ns, |b| b.min(end_ns))));
        f.effective_at = Some(effective);
        let t = ms_since(self.t0, armed_at);
        f.record.start_ms = Some(t);
        f.record.armed_late_ms = Some(t - f.record.planned_start_ms);
        f.armed_at = Some(armed_at);
        // The counters from the start (zeros, mostly): `kchaos status` right after `--detach` reads
        // them from the status file the announcement writes, before the first step samples any.
        if let Ok(c) = active.counters() {
            f.record.counters = c;
        }
        // What arming started (workers, a freeze) joins what preparing attached.
        // (A set: a fault on 10,000 targets has as many attachments.)
        let before = std::mem::replace(&mut f.record.attached, active.attachments());
        let before: std::collections::HashSet<&str> = before.iter().map(String::as_str).collect();
        let started: Vec<String> = f
            .record
            .attached
            .iter()
            .filter(|a| !before.contains(a.as_str()))
            .cloned()
            .collect();
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
        let (name, describe) = (decl.name.clone(), decl.describe());
        match self.style {
            Style::Command if decl.kind.is_instant() => {
                for line in &self.faults[i].record.attached {
                    println!("  {line}");
                }
            }
            Style::Command => {
                for line in &started {
                    println!("  {line}");
                }
                println!(
                    "  armed{}; Ctrl-C or `kchaos stop` ends it",
                    if decl.duration >= crate::command::UNTIL_STOPPED {
                        String::new()
                    } else {
                        format!(" for {}", crate::units::format_duration(decl.duration))
                    }
                )
            }
            Style::Experiment => {
                self.event("fault.armed", format!("'{name}' {describe}: {attached}"))
            }
        }
        Ok(())
    }

    /// Ramps, lease, counters of an armed fault.
    fn step(&mut self, i: usize, into: Duration, end_ns: u64, now: Instant) -> Result<()> {
        let decl = &self.s.faults[self.faults[i].index];
        let t = self.ms();
        let mut changed = Vec::new();
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
        active.renew(lifecycle::lease_deadline_ns(
            lifecycle::monotonic_ns(),
            Some(end_ns),
        ))?;
        let counters = active.counters()?;
        f.record.injected_events = decl.kind.injected_events(&counters);
        let since_sample = f.last_sample.map(|l| now.saturating_duration_since(l));
        let armed_for = f.armed_at.map(|a| now.saturating_duration_since(a));
        if since_sample.is_none_or(|d| d >= SAMPLE_EVERY)
            && armed_for.is_some_and(|d| d >= SAMPLE_EVERY)
        {
            // Samples fall on whole seconds from the arm, whatever wakes the loop in between.
            f.last_sample = Some(match f.last_sample {
                Some(l) => l + SAMPLE_EVERY,
                None => now,
            });
            if self.style == Style::Command && !self.quiet {
                // Time left (a command without --duration runs until stopped: none), the events
                // injected over the last second, then the kind's own counters since the arm.
                let left = f
                    .ends_at
                    .map(|(end, _)| end.saturating_duration_since(now))
                    .filter(|_| decl.duration < crate::command::UNTIL_STOPPED)
                    .map_or(String::new(), |d| {
                        format!(
                            ", {} left",
                            humantime::format_duration(Duration::from_secs(
                                d.as_millis().div_ceil(1000) as u64
                            ))
                        )
                    });
                let last_second = f
                    .record
                    .injected_events
                    .saturating_sub(f.record.samples.last().map_or(0, |s| s.injected_events));
                // A load, a freeze or a clock is not a count of events: its own counters say
                // what it does.
                let rate = if crate::kind::counts_events_of(&f.record.kind) {
                    format!("{last_second} injected in the last second | ")
                } else {
                    String::new()
                };
                println!(
                    "[{:>5.1}s{left}] {rate}{}",
                    armed_for.unwrap_or_default().as_secs_f64(),
                    decl.kind.live_line(&counters)
                );
            }
            f.record.samples.push(CounterSample {
                t_ms: t,
                injected_events: f.record.injected_events,
                counters: counters.clone(),
            });
        }
        f.record.counters = counters;
        if !changed.is_empty() {
            let name = decl.name.clone();
            self.event("fault.ramp", format!("'{name}' {}", changed.join(", ")));
        }
        Ok(())
    }

    /// Disarms a fault (its window ends here), reads its last counters and undoes it.
    pub(super) fn finish(&mut self, i: usize, why: &str) {
        let f = &mut self.faults[i];
        let was_armed = f.state == State::Armed;
        f.state = State::Done;
        let Some(mut active) = f.active.take() else {
            return;
        };
        let decl = &self.s.faults[f.index];
        // The window ends with disarm's first act (a map write, a thaw); what follows only tidies.
        let disarmed_at = Instant::now();
        let disarmed = if was_armed {
            active.disarm(&mut self.journal)
        } else {
            Ok(())
        };
        if let Ok(c) = active.counters() {
            f.record.injected_events = decl.kind.injected_events(&c);
            f.record.counters = c;
        }
        f.record.result = active.result();
        let result = disarmed.and(active.undo(&mut self.journal));
        if let Err(e) = &result {
            f.record.errors.push(format!("{e:#}"));
        }
        if was_armed {
            let t = ms_since(self.t0, disarmed_at);
            f.record.end_ms = Some(t);
            f.record.window_ms = f
                .effective_at
                .map(|e| disarmed_at.saturating_duration_since(e).as_secs_f64() * 1e3);
        }
        let detail = format!(
            "'{}' ({why}): {} injected events{}",
            decl.name,
            f.record.injected_events,
            match &result {
                Ok(()) => String::new(),
                Err(e) => format!("; {e:#}"),
            }
        );
        if was_armed || result.is_err() {
            self.event("fault.detached", detail);
        }
    }

    /// Ends every fault now (pending ones never start); returns how many were armed.
    pub(super) fn finish_all(&mut self, why: &str) -> usize {
        let mut armed = 0;
        for i in 0..self.faults.len() {
            if self.faults[i].state == State::Armed {
                armed += 1;
            }
            self.finish(i, why);
        }
        self.refresh_live(true);
        armed
    }
}

fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1e3
}

/// The active fault's trait object, for the runner's bookkeeping.
pub(super) type ActiveFault = Box<dyn Active>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Unit;

    #[test]
    fn ramp_steps_fall_on_whole_steps_until_over() {
        let r = Ramp {
            param: "drop".into(),
            unit: Unit::Percent,
            from: 0.0,
            to: 30.0,
            over: Duration::from_millis(1000),
            step: Duration::from_millis(300),
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis());
        assert_eq!(ms(next_ramp_step(&r, Duration::ZERO)), Some(300));
        assert_eq!(
            ms(next_ramp_step(&r, Duration::from_millis(300))),
            Some(600)
        );
        assert_eq!(
            ms(next_ramp_step(&r, Duration::from_millis(899))),
            Some(900)
        );
        assert_eq!(
            ms(next_ramp_step(&r, Duration::from_millis(900))),
            Some(1000)
        );
        assert_eq!(next_ramp_step(&r, Duration::from_millis(1000)), None);
    }
}
