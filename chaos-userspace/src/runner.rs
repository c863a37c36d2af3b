//! The loop every single-fault command shares: arm with a lease, a live line a second, end on the
//! duration or a signal. Detaching is the caller's (the fault's owner), after this returns.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    lifecycle::{self, EndReason, Tick},
    units,
};

/// How long a single-fault command runs and what it writes (shared by every such command).
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// Stop after this long (e.g. 30s, 5m); without it, run until Ctrl-C, SIGTERM or `kchaos stop`.
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration)]
    pub duration: Option<Duration>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No live line (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Run even where another kchaos run already injects into the same cgroup, a parent or a child:
    /// both faults then apply (the effective rate compounds).
    #[arg(long)]
    pub stack: bool,
}

/// What the loop needs from an attached fault.
pub trait Armable {
    /// Arms (or re-arms) the fault until `deadline_ns` (CLOCK_MONOTONIC).
    fn arm(&mut self, deadline_ns: u64) -> Result<()>;
    /// The kernel's counters now, as the report stores them.
    fn counters(&self) -> Result<serde_json::Value>;
    /// The live line for these counters.
    fn live_line(&self, elapsed: Duration, counters: &serde_json::Value) -> String;
}

/// One second's counters, for the report's time series.
#[derive(Debug, serde::Serialize)]
pub struct Sample {
    pub elapsed_s: f64,
    pub counters: serde_json::Value,
}

/// How a run went.
pub struct Outcome {
    pub end_reason: EndReason,
    pub samples: Vec<Sample>,
    pub duration_s: f64,
}

/// Arms the fault, ticks until the end, and returns why it ended. The fault is left armed until its
/// owner detaches it; the lease runs out by itself if the owner never does.
pub async fn run(
    fault: &mut impl Armable,
    args: &RunArgs,
    signals: &mut lifecycle::Signals,
) -> Result<Outcome> {
    let (duration, quiet) = (args.duration, args.quiet);
    let start_ns = lifecycle::monotonic_ns();
    let end_ns = duration.map(|d| start_ns + d.as_nanos() as u64);
    fault.arm(lifecycle::lease_deadline_ns(start_ns, end_ns))?;
    println!(
        "  armed{}; Ctrl-C or `kchaos stop` ends it",
        duration
            .map(|d| format!(" for {}", units::format_duration(d)))
            .unwrap_or_default()
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let end_reason =
        lifecycle::run_until_end(signals, duration, Duration::from_secs(1), |elapsed| {
            fault.arm(lifecycle::lease_deadline_ns(
                lifecycle::monotonic_ns(),
                end_ns,
            ))?;
            let counters = fault.counters()?;
            if !quiet {
                println!("{}", fault.live_line(elapsed, &counters));
            }
            samples.push(Sample {
                elapsed_s: elapsed.as_secs_f64(),
                counters,
            });
            Ok(Tick::Continue)
        })
        .await?;
    Ok(Outcome {
        end_reason,
        samples,
        duration_s: started.elapsed().as_secs_f64(),
    })
}
