//! What a run tells its user: the live line, the summary, the JSON report.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    faults::net::{Counters, NetTotals},
    lifecycle::EndReason,
    targets::Target,
};

/// One second's counters, for the report's time series.
#[derive(Debug, serde::Serialize)]
pub struct Sample {
    pub elapsed_s: f64,
    pub totals: NetTotals,
}

/// The JSON report of a `kchaos net` run.
#[derive(Debug, serde::Serialize)]
pub struct NetReport {
    pub kchaos_version: &'static str,
    pub kernel: String,
    pub fault: String,
    pub spec: crate::faults::net::NetSpec,
    pub targets: Vec<Target>,
    pub attached: Vec<String>,
    pub duration_s: f64,
    pub end_reason: EndReason,
    pub totals: NetTotals,
    pub samples: Vec<Sample>,
}

impl NetReport {
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn direction(name: &str, c: &Counters) -> String {
    let mut s = format!(
        "{name} seen {} matched {} dropped {} ({:.1}%)",
        c.seen,
        c.matched,
        c.dropped,
        pct(c.dropped, c.matched)
    );
    if c.partitioned > 0 {
        s += &format!(" partitioned {}", c.partitioned);
    }
    if c.delayed > 0 {
        s += &format!(
            " delayed {} (mean {:.2} ms)",
            c.delayed,
            c.delay_ns_total as f64 / c.delayed as f64 / 1e6
        );
    }
    s
}

/// The line printed once a second.
pub fn live_line(elapsed: Duration, t: &NetTotals) -> String {
    format!(
        "[{:>5.1}s] {} | {}",
        elapsed.as_secs_f64(),
        direction("egress", &t.egress),
        direction("ingress", &t.ingress)
    )
}

/// The closing summary.
pub fn summary(r: &NetReport) -> String {
    format!(
        "kchaos net: {} for {:.1}s, ended: {}\n  {}\n  {}\n  detached: every program; qdiscs restored",
        r.fault,
        r.duration_s,
        r.end_reason,
        direction("egress ", &r.totals.egress),
        direction("ingress", &r.totals.ingress)
    )
}
