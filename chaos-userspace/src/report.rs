//! What a single-fault run tells its user: the summary and the JSON report.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::{lifecycle::EndReason, runner::Sample, targets::Target};

/// The JSON report of a `kchaos net` / `kchaos syscall` run.
#[derive(Debug, serde::Serialize)]
pub struct FaultReport<S: serde::Serialize> {
    pub kchaos_version: &'static str,
    pub kernel: String,
    pub command: &'static str,
    pub fault: String,
    pub spec: S,
    pub targets: Vec<Target>,
    pub attached: Vec<String>,
    pub duration_s: f64,
    pub end_reason: EndReason,
    /// The kernel's counters at the end.
    pub totals: serde_json::Value,
    pub samples: Vec<Sample>,
}

impl<S: serde::Serialize> FaultReport<S> {
    /// The report of a finished single-fault run.
    pub fn new(
        command: &'static str,
        fault: String,
        spec: S,
        targets: Vec<Target>,
        attached: Vec<String>,
        outcome: crate::runner::Outcome,
        totals: serde_json::Value,
    ) -> Self {
        Self {
            kchaos_version: env!("CARGO_PKG_VERSION"),
            kernel: kernel_release(),
            command,
            fault,
            spec,
            targets,
            attached,
            duration_s: outcome.duration_s,
            end_reason: outcome.end_reason,
            totals,
            samples: outcome.samples,
        }
    }

    /// Writes the JSON report where `--json` asked (opened before the run), and says so.
    pub fn write_if_asked(&self, out: Option<crate::output::OutputFile>) -> Result<()> {
        if let Some(out) = out {
            let path = out.path().display().to_string();
            out.write_json(self)?;
            println!("  report: {path}");
        }
        Ok(())
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))
    }
}

/// The running kernel's release.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Percentage, 0 for an empty whole.
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}
