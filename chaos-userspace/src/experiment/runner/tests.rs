//! The runner with fake faults under tokio's paused clock: ordering, arming at the planned instant,
//! ramp steps, the budget's abort, rollbacks, and a fault that cannot be prepared. No root needed.

use std::{cell::RefCell, rc::Rc, time::Duration};

use anyhow::Result;
use tokio::time::Instant;

use super::{Setup, Style, execute};
use crate::{
    engine::journal::Journal,
    experiment::{fields::Vars, scenario, validate::ResolvedTarget},
    kind::{Active, Counters, FaultKind},
};

/// What the fakes did, and when (virtual time since the test began).
#[derive(Default)]
struct Log {
    t0: Option<Instant>,
    lines: Vec<(Duration, String)>,
}

type SharedLog = Rc<RefCell<Log>>;

fn note(log: &SharedLog, what: String) {
    let mut l = log.borrow_mut();
    let t0 = *l.t0.get_or_insert_with(Instant::now);
    l.lines.push((Instant::now() - t0, what));
}

/// A fault that injects one event per armed 100 ms (by the virtual clock).
struct Fake {
    name: String,
    log: SharedLog,
    armed_at: Option<Instant>,
    disarmed_at: Option<Instant>,
}

impl Active for Fake {
    fn arm(&mut self, _deadline_ns: u64, _journal: &mut Journal) -> Result<()> {
        self.armed_at = Some(Instant::now());
        note(&self.log, format!("arm {}", self.name));
        Ok(())
    }
    fn renew(&mut self, _deadline_ns: u64) -> Result<()> {
        Ok(())
    }
    fn set_param(&mut self, param: &str, value: f64) -> Result<()> {
        note(&self.log, format!("set {} {param}={value}", self.name));
        Ok(())
    }
    fn counters(&self) -> Result<Counters> {
        let armed = match (self.armed_at, self.disarmed_at) {
            (Some(a), Some(d)) => d - a,
            (Some(a), None) => Instant::now() - a,
            _ => Duration::ZERO,
        };
        let events = (armed.as_millis() / 100) as u64;
        Ok(Counters::from([
            ("processes".into(), events),
            ("signalled".into(), u64::from(self.armed_at.is_some())),
        ]))
    }
    fn attachments(&self) -> Vec<String> {
        vec![format!("fake {}", self.name)]
    }
    fn disarm(&mut self, _journal: &mut Journal) -> Result<()> {
        self.disarmed_at = Some(Instant::now());
        note(&self.log, format!("disarm {}", self.name));
        Ok(())
    }
    fn undo(self: Box<Self>, _journal: &mut Journal) -> Result<()> {
        note(&self.log, format!("undo {}", self.name));
        Ok(())
    }
}

fn setup(yaml: &str, log: &SharedLog, fail_prepare: Option<&'static str>) -> Setup {
    let text = format!("title: t\ntargets: [{{name: a, cgroup: a}}]\n{yaml}");
    let scenario = scenario::parse("s.yaml", &text, &Vars::default()).unwrap();
    let names: Vec<String> = scenario.faults.iter().map(|f| f.name.clone()).collect();
    let log = log.clone();
    let mut next = 0;
    Setup {
        scenario,
        targets: vec![ResolvedTarget {
            name: "a".into(),
            // A directory that stays for the run: a target whose directory goes ends the run.
            path: std::env::temp_dir(),
            id: crate::engine::cgroup::id(&std::env::temp_dir()).unwrap(),
            origin: "test".into(),
        }],
        findings: Vec::new(),
        risk_accepted: false,
        quiet: true,
        style: Style::Experiment,
        command: "run",
        journal: Journal::scratch(),
        signals: crate::engine::lifecycle::Signals::install().unwrap(),
        live: crate::live::Live::default(),
        prepare: Some(Box::new(move |_kind: &FaultKind, _targets, _journal| {
            let name = names[next].clone();
            next += 1;
            if fail_prepare == Some(name.as_str()) {
                anyhow::bail!("no such program");
            }
            note(&log, format!("prepare {name}"));
            Ok(Box::new(Fake {
                name,
                log: log.clone(),
                armed_at: None,
                disarmed_at: None,
            }) as Box<dyn Active>)
        })),
    }
}

fn lines(log: &SharedLog) -> Vec<(u128, String)> {
    log.borrow()
        .lines
        .iter()
        .map(|(t, w)| (t.as_millis(), w.clone()))
        .collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn everything_is_prepared_first_then_armed_on_time_in_order() {
    let log = SharedLog::default();
    note(&log, "start".into());
    let report = execute(setup(
        "faults:\n  - {name: late, at: 3s, for: 1s, pause: {}}\n  - {name: early, at: 1s, for: 1s, pause: {}}\n  - {name: crash, at: 2500ms, kill: {}}\n",
        &log,
        None,
    ))
    .await
    .unwrap();
    let l = lines(&log);
    let what: Vec<&str> = l.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(
        what,
        [
            "start",
            "prepare late",
            "prepare early",
            "prepare crash",
            "arm early",
            "disarm early",
            "undo early",
            "arm crash",
            "disarm crash",
            "undo crash",
            "arm late",
            "disarm late",
            "undo late"
        ]
    );
    // Armed at the planned instant and disarmed at the planned end, to the millisecond.
    let at = |w: &str| l.iter().find(|(_, x)| x == w).unwrap().0;
    assert_eq!(at("arm early"), 1000);
    assert_eq!(at("disarm early"), 2000);
    assert_eq!(at("arm crash"), 2500);
    assert_eq!(at("arm late"), 3000);
    assert_eq!(at("disarm late"), 4000);
    for f in &report.faults {
        assert!(f.armed_late_ms.unwrap() <= 1.0, "{}: {f:?}", f.name);
    }
    let early = &report.faults[1];
    assert!(
        (early.window_ms.unwrap() - 1000.0).abs() <= 1.0,
        "{early:?}"
    );
    assert_eq!(early.injected_events, 10);
    assert_eq!(report.faults[2].injected_events, 1);
    assert!(report.summary.completed);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn ramp_steps_happen_at_their_instants() {
    let log = SharedLog::default();
    note(&log, "start".into());
    let report = execute(setup(
        "faults:\n  - {name: f, at: 1s, for: 3s, net: {}, ramp: {percent: {from: 0, to: 30, over: 2s, step: 500ms}}}\n",
        &log,
        None,
    ))
    .await
    .unwrap();
    let sets: Vec<(u128, String)> = lines(&log)
        .into_iter()
        .filter(|(_, w)| w.starts_with("set") || w.starts_with("arm"))
        .collect();
    assert_eq!(
        sets,
        [
            (1000, "set f percent=0".to_owned()),
            (1000, "arm f".to_owned()),
            (1500, "set f percent=7.5".to_owned()),
            (2000, "set f percent=15".to_owned()),
            (2500, "set f percent=22.5".to_owned()),
            (3000, "set f percent=30".to_owned()),
        ]
    );
    assert_eq!(report.faults[0].ramp_steps.len(), 5);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_event_budget_aborts_and_every_fault_ends_then_rollbacks_run() {
    let log = SharedLog::default();
    note(&log, "start".into());
    let report = execute(setup(
        "faults:\n  - {name: f, at: 0s, for: 10s, pause: {}}\n  - {name: never, at: 9s, for: 1s, pause: {}}\nbudget: {max_injected_events: 20}\nrollbacks: [{command: \"true\"}]\n",
        &log,
        None,
    ))
    .await
    .unwrap();
    let l = lines(&log);
    let at = |w: &str| l.iter().find(|(_, x)| x == w).map(|x| x.0);
    // 20 events at one per 100 ms: 2 s in, noticed within a 50 ms tick.
    let disarm = at("disarm f").unwrap();
    assert!((2000..=2050).contains(&disarm), "{l:?}");
    assert_eq!(at("arm never"), None, "{l:?}");
    assert!(
        at("undo never").is_some(),
        "a prepared fault is undone too: {l:?}"
    );
    assert!(!report.summary.completed);
    assert!(
        report
            .summary
            .abort_reason
            .as_deref()
            .unwrap_or_default()
            .contains("max_injected_events 20"),
        "{:?}",
        report.summary
    );
    assert_eq!(report.rollbacks.len(), 1);
    assert_eq!(report.rollbacks[0].exit_code, Some(0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_fault_that_cannot_be_prepared_leaves_nothing_prepared() {
    let log = SharedLog::default();
    note(&log, "start".into());
    let err = execute(setup(
        "faults:\n  - {name: one, at: 0s, for: 1s, pause: {}}\n  - {name: two, at: 0s, for: 1s, targets: [a], net: {percent: 1}}\n",
        &log,
        Some("two"),
    ))
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("preparing fault 'two'"),
        "{err:#}"
    );
    let what: Vec<String> = lines(&log).into_iter().map(|(_, w)| w).collect();
    assert_eq!(what, ["start", "prepare one", "undo one"]);
}

/// With more targets than one tick looks at, a gone target is still found within a few ticks: the
/// look goes round the targets in turns.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_gone_target_among_many_ends_the_run_within_a_few_ticks() {
    let log = SharedLog::default();
    let mut s = setup(
        "faults:\n  - {name: f, at: 0s, for: 10s, pause: {}}\n",
        &log,
        None,
    );
    let here = s.targets[0].clone();
    for i in 1..300 {
        let mut t = here.clone();
        t.name = format!("x{i}");
        // Target 250's cgroup was replaced: the path is there, with another id.
        if i == 250 {
            t.id += 1;
        }
        s.targets.push(t);
    }
    let report = execute(s).await.unwrap();
    let why = report.summary.abort_reason.unwrap_or_default();
    assert!(
        why.contains("target 'x250'") && why.contains("is gone"),
        "{why}"
    );
    // 300 targets in turns of 128: the third tick looks at it (50 ms a tick).
    let end = report.summary.end_reason.clone();
    let ended_ms = report.faults[0].end_ms.unwrap_or(f64::MAX);
    assert!(ended_ms <= 200.0, "ended at {ended_ms} ms: {end}");
}
