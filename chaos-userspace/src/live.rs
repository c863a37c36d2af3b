//! What a running kchaos shows outside itself while it runs: one snapshot the runner refreshes on its
//! tick (its phase, each fault's state and counters, the probes' results). `kchaos status` reads it
//! from a status file the run keeps beside its record; `--metrics` serves it at scrape time.
//!
//! The runner's tick (50 ms) reads every armed fault's counters from the kernel's maps already; the
//! snapshot takes them from there, so a scrape sees counters at most one tick old and never has to
//! reach into the runner's faults from another thread.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::kind::Counters;

/// Upper bounds (seconds) of the probe latency histogram's buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Where a run is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Loading and attaching its faults, disarmed.
    #[default]
    Preparing,
    /// Probing the steady state before injecting.
    Before,
    /// The faults on their timeline.
    During,
    /// Probing recovery after the faults.
    After,
    /// Rollbacks, report: nothing injects any more.
    Ended,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Preparing,
        Phase::Before,
        Phase::During,
        Phase::After,
        Phase::Ended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Before => "before",
            Phase::During => "during",
            Phase::After => "after",
            Phase::Ended => "ended",
        }
    }
}

/// Where one fault is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultState {
    /// Not prepared yet.
    #[default]
    Pending,
    /// Attached, disarmed: waiting for its instant.
    Prepared,
    Armed,
    /// Disarmed and undone.
    Done,
}

/// One fault of the run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultStatus {
    pub name: String,
    pub kind: String,
    pub description: String,
    /// The cgroups it injects into.
    pub targets: Vec<String>,
    pub state: FaultState,
    pub armed_since_unix_ms: Option<u64>,
    /// When its window ends (planned; a signal or an abort may end it sooner).
    pub ends_unix_ms: Option<u64>,
    pub injected_events: u64,
    /// Its kind's counters ("egress.dropped" -> n), as the report has them.
    pub counters: Counters,
    /// Labels the kind adds to its metrics (a syscall fault's errno).
    #[serde(default)]
    pub labels: Vec<(String, String)>,
}

/// One steady-state probe of the run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeStatus {
    pub name: String,
    pub ok: u64,
    pub failed: u64,
    /// Latencies: per bucket of [`LATENCY_BUCKETS`] (not cumulative), then their sum in seconds.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_s: f64,
}

impl ProbeStatus {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            latency_buckets: vec![0; LATENCY_BUCKETS.len()],
            ..Self::default()
        }
    }

    /// Counts one result.
    pub fn observe(&mut self, ok: bool, latency_s: f64) {
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        self.latency_sum_s += latency_s;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| latency_s <= *b) {
            self.latency_buckets[i] += 1;
        }
    }

    pub fn count(&self) -> u64 {
        self.ok + self.failed
    }
}

/// Everything a run shows about itself.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The run's name (`--name`, else `<command>-<pid>`).
    pub name: String,
    pub pid: u32,
    /// "net", "run", "monkey" ...
    pub command: String,
    pub phase: Phase,
    pub started_unix_ms: u64,
    /// When the runner last refreshed it.
    pub updated_unix_ms: u64,
    /// When the run ends at the latest (its timeline's end, or its budget's), once it is known.
    pub ends_unix_ms: Option<u64>,
    pub faults: Vec<FaultStatus>,
    /// Over every fault so far.
    pub injected_events: u64,
    /// The scenario's `budget.max_injected_events`, if it has one.
    pub max_injected_events: Option<u64>,
    pub probes: Vec<ProbeStatus>,
}

/// The snapshot, shared between the runner (which writes it) and the metrics server (which reads it).
#[derive(Clone, Debug, Default)]
pub struct Live(Arc<Mutex<Snapshot>>);

impl Live {
    pub fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(Mutex::new(snapshot)))
    }

    /// The snapshot to read or change. A panic while it was held leaves the data as it was: still
    /// worth showing.
    pub fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy, stamped now.
    pub fn copy(&self) -> Snapshot {
        self.lock().clone()
    }
}

/// Milliseconds since the epoch now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_their_buckets() {
        let mut p = ProbeStatus::new("db");
        p.observe(true, 0.0005);
        p.observe(true, 0.02);
        p.observe(false, 9.0);
        assert_eq!((p.ok, p.failed, p.count()), (2, 1, 3));
        assert_eq!(p.latency_buckets[0], 1);
        assert_eq!(p.latency_buckets[4], 1, "0.02 s is at most 0.025 s");
        // Above the last bound: only in +Inf (the count), in no finite bucket.
        assert_eq!(p.latency_buckets.iter().sum::<u64>(), 2);
        assert!((p.latency_sum_s - 9.0205).abs() < 1e-9);
    }
}
