//! `kchaos net`: one network fault on the targets, a live line a second, a summary, a JSON report.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    faults::net::{NetArgs, NetFault, NetSpec},
    journal::Journal,
    lifecycle::{self, Tick},
    report::{self, NetReport, Sample},
    targets::{self, TargetArgs},
    units,
};

#[derive(Debug, clap::Args)]
pub struct NetCommand {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// Stop after this long (e.g. 30s, 5m); without it, run until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration)]
    pub duration: Option<Duration>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No live line (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

pub async fn run(cmd: NetCommand) -> Result<()> {
    // Every check that can fail on input comes before anything is attached.
    let spec = NetSpec::from_args(&cmd.net)?;
    crate::require_root("kchaos net")?;
    let targets = targets::resolve(&cmd.targets)?;
    NetFault::preflight(&spec)?;

    let mut journal = Journal::create("net").context("writing the run record under /run/kchaos")?;
    let mut fault = NetFault::attach(spec, &targets, &mut journal)?;
    let fault_text = fault.spec().describe();
    println!("kchaos net: {fault_text}");
    for a in &fault.attachments {
        println!("  attached {a}");
    }
    let start_ns = lifecycle::monotonic_ns();
    let end_ns = cmd.duration.map(|d| start_ns + d.as_nanos() as u64);
    fault.arm(lifecycle::lease_deadline_ns(start_ns, end_ns))?;
    println!(
        "  armed{}; Ctrl-C or `kchaos stop` ends it",
        cmd.duration
            .map(|d| format!(" for {}", units::format_duration(d)))
            .unwrap_or_default()
    );

    let mut samples = Vec::new();
    let started = std::time::Instant::now();
    let reason = lifecycle::run_until_end(cmd.duration, Duration::from_secs(1), |elapsed| {
        fault.arm(lifecycle::lease_deadline_ns(
            lifecycle::monotonic_ns(),
            end_ns,
        ))?;
        let totals = fault.totals()?;
        if !cmd.quiet {
            println!("{}", report::live_line(elapsed, &totals));
        }
        samples.push(Sample {
            elapsed_s: elapsed.as_secs_f64(),
            totals,
        });
        Ok(Tick::Continue)
    })
    .await?;

    let totals = fault.totals()?;
    let attached = fault.attachments.clone();
    let spec = fault.spec().clone();
    fault.detach(&mut journal)?;
    let report = NetReport {
        kchaos_version: env!("CARGO_PKG_VERSION"),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        fault: fault_text,
        spec,
        targets,
        attached,
        duration_s: started.elapsed().as_secs_f64(),
        end_reason: reason,
        totals,
        samples,
    };
    println!("{}", report::summary(&report));
    if let Some(path) = &cmd.json {
        report.write_json(path)?;
        println!("  report: {}", path.display());
    }
    Ok(())
}
