//! `kchaos status`: the kchaos runs of this host now, from their records (under the same checks as
//! `kchaos stop`'s) and the status files the runs keep beside them.
//!
//! A run is listed as running only while its record's process is alive and still that kchaos
//! ([`journal::liveness`]): a status file left by a killed run is never shown as running; its record
//! is listed apart as dead, for `kchaos stop` to clean up.

use std::path::Path;

use anyhow::Result;

use crate::{
    engine::journal::{self, Liveness, Record},
    kind,
    live::{FaultState, FaultStatus, Phase, Snapshot, unix_ms},
    units::format_duration,
};

/// Ends further away than this count as "until stopped" (a command without --duration).
const FOREVER_MS: u64 = 365 * 24 * 3600 * 1000;

/// One running kchaos.
#[derive(Debug, serde::Serialize)]
pub struct RunView {
    pub name: String,
    pub pid: u32,
    pub command: String,
    pub kinds: Vec<String>,
    pub targets: Vec<String>,
    pub started_unix: u64,
    /// None while the run is starting (it has written no status yet).
    pub phase: Option<Phase>,
    /// When its first fault was armed.
    pub armed_since_unix_ms: Option<u64>,
    /// When it ends at the latest; None for a run until stopped.
    pub ends_unix_ms: Option<u64>,
    pub time_left_s: Option<f64>,
    pub injected_events: u64,
    /// When the run last wrote its status.
    pub updated_unix_ms: Option<u64>,
    pub faults: Vec<FaultStatus>,
}

/// A record whose process is gone (killed before its cleanup): what it left behind.
#[derive(Debug, serde::Serialize)]
pub struct DeadView {
    pub name: Option<String>,
    pub pid: u32,
    pub command: String,
    pub record: String,
    pub residue: usize,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Status {
    pub runs: Vec<RunView>,
    pub dead: Vec<DeadView>,
}

/// Every run of the record directory now.
pub fn collect() -> Result<Status> {
    let dir = journal::run_dir();
    let mut out = Status::default();
    if !dir.exists() {
        return Ok(out);
    }
    let dir = journal::check_run_dir(&dir)?;
    for file in journal::records_in(&dir) {
        let Ok(record) = file.record else {
            continue;
        };
        match journal::liveness(&record) {
            Liveness::Running => out.runs.push(view(&file.path, record)),
            Liveness::Gone | Liveness::NotThatRun(_) => out.dead.push(DeadView {
                name: record.name.clone(),
                pid: record.pid,
                command: record.command.clone(),
                record: file.path.display().to_string(),
                residue: record.residue.len(),
            }),
            Liveness::Unknown(e) => {
                tracing::warn!("cannot tell whether pid {} runs: {e}", record.pid)
            }
        }
    }
    Ok(out)
}

fn view(path: &Path, record: Record) -> RunView {
    let status = journal::read_status(path).filter(|s| s.pid == record.pid);
    let now = unix_ms();
    let Snapshot {
        phase,
        ends_unix_ms,
        faults,
        injected_events,
        updated_unix_ms,
        ..
    } = status.clone().unwrap_or_default();
    let ends = ends_unix_ms.filter(|e| e.saturating_sub(now) < FOREVER_MS);
    RunView {
        name: record
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", record.command, record.pid)),
        pid: record.pid,
        command: record.command,
        kinds: record.kinds,
        targets: record
            .targets
            .iter()
            .map(|t| t.display().to_string())
            .collect(),
        started_unix: record.started_unix,
        phase: status.as_ref().map(|_| phase),
        armed_since_unix_ms: faults.iter().filter_map(|f| f.armed_since_unix_ms).min(),
        ends_unix_ms: ends,
        time_left_s: ends.map(|e| e.saturating_sub(now) as f64 / 1e3),
        injected_events,
        updated_unix_ms: status.map(|_| updated_unix_ms),
        faults,
    }
}

/// `kchaos status [--json]`.
pub fn run(json: Option<&std::path::Path>) -> Result<()> {
    crate::require_root(
        "kchaos status",
        "the run records under the record directory are root's alone",
    )?;
    let status = collect()?;
    if let Some(path) = json {
        crate::output::print_or_write_json(path, &status)?;
        return Ok(());
    }
    for line in lines(&status, unix_ms()) {
        println!("{line}");
    }
    Ok(())
}

/// The table: a line a run, then a line per fault with its counters; then the dead records.
pub fn lines(status: &Status, now_ms: u64) -> Vec<String> {
    let mut out = Vec::new();
    if status.runs.is_empty() {
        out.push("no kchaos run is running".into());
    } else {
        out.push(format!(
            "{:<20} {:>8} {:<10} {:<10} {:<12} {:<14} TARGETS",
            "NAME", "PID", "KIND", "PHASE", "ARMED", "LEFT"
        ));
    }
    for r in &status.runs {
        let ago = |ms: u64| {
            format!(
                "{} ago",
                format_duration(std::time::Duration::from_millis(
                    now_ms.saturating_sub(ms) / 1000 * 1000
                ))
            )
        };
        out.push(format!(
            "{:<20} {:>8} {:<10} {:<10} {:<12} {:<14} {}",
            r.name,
            r.pid,
            r.kinds.join(","),
            r.phase.map_or("starting", Phase::as_str),
            r.armed_since_unix_ms.map_or("-".into(), ago),
            r.time_left_s
                .map_or("until stopped".into(), |s| format_duration(
                    std::time::Duration::from_secs(s.ceil() as u64)
                )),
            r.targets.join(", ")
        ));
        for f in &r.faults {
            let state = match f.state {
                FaultState::Pending => "pending",
                FaultState::Prepared => "prepared",
                FaultState::Armed => "armed",
                FaultState::Done => "done",
            };
            // (A fault not yet armed has no counters: no dangling colon then.)
            let counters = kind::live_line_of(&f.kind, &f.counters)
                .filter(|c| !c.is_empty())
                .map_or(String::new(), |c| format!(": {c}"));
            out.push(format!(
                "  {} [{state}] {}{counters}",
                f.name, f.description
            ));
        }
    }
    if !status.dead.is_empty() {
        out.push(String::new());
        out.push(
            "not running any more (killed before cleaning up; `kchaos stop` undoes it):".into(),
        );
        for d in &status.dead {
            out.push(format!(
                "  {} (kchaos {}, pid {}): {} thing(s) to undo; record {}",
                d.name.as_deref().unwrap_or("(no name)"),
                d.command,
                d.pid,
                d.residue,
                d.record
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_run_and_its_counters() {
        let status = Status {
            runs: vec![RunView {
                name: "loss".into(),
                pid: 42,
                command: "net".into(),
                kinds: vec!["net".into()],
                targets: vec!["/sys/fs/cgroup/app".into()],
                started_unix: 0,
                phase: Some(Phase::During),
                armed_since_unix_ms: Some(10_000),
                ends_unix_ms: Some(70_000),
                time_left_s: Some(60.0),
                injected_events: 3,
                updated_unix_ms: Some(10_000),
                faults: vec![FaultStatus {
                    name: "net".into(),
                    kind: "net".into(),
                    description: "drop 5%".into(),
                    state: FaultState::Armed,
                    counters: [
                        ("egress.dropped".to_owned(), 3),
                        ("egress.matched".to_owned(), 60),
                    ]
                    .into(),
                    ..FaultStatus::default()
                }],
            }],
            dead: vec![DeadView {
                name: Some("old".into()),
                pid: 7,
                command: "net".into(),
                record: "/run/kchaos/7-1.json".into(),
                residue: 1,
            }],
        };
        let text = lines(&status, 20_000).join("\n");
        assert!(text.contains("loss"), "{text}");
        assert!(text.contains("during"), "{text}");
        assert!(text.contains("10s ago"), "{text}");
        assert!(text.contains("60s"), "{text}");
        assert!(
            text.contains("egress seen 0 matched 60 dropped 3"),
            "{text}"
        );
        assert!(
            text.contains("old (kchaos net, pid 7): 1 thing(s) to undo"),
            "{text}"
        );
        assert_eq!(
            lines(&Status::default(), 0),
            vec!["no kchaos run is running".to_owned()]
        );
    }
}
