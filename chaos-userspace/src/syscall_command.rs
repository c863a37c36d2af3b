//! `kchaos syscall`: make chosen syscalls of the targets fail, a live line a second, a JSON report.

use std::time::Duration;

use anyhow::Result;

use crate::{
    faults::syscall::{SyscallArgs, SyscallFault, SyscallSpec},
    report::{FaultReport, pct},
    runner::{self, Armable, RunArgs},
    targets::{self, TargetArgs},
};

#[derive(Debug, clap::Args)]
pub struct SyscallCommand {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub syscall: SyscallArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// "connect calls 100 failed 30 (30.0%) | ..." from the report's per-operation totals.
fn line(ops: &serde_json::Value) -> String {
    let n = |o: &serde_json::Value, k: &str| o[k].as_u64().unwrap_or(0);
    ops.as_array()
        .map(|ops| {
            ops.iter()
                .map(|o| {
                    let (matched, injected) = (n(o, "matched"), n(o, "injected"));
                    let op = o["op"].as_str().unwrap_or("?");
                    format!(
                        "{op} calls {matched} failed {injected} ({:.1}%)",
                        pct(injected, matched)
                    )
                })
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_default()
}

impl Armable for SyscallFault {
    fn arm(&mut self, deadline_ns: u64) -> Result<()> {
        SyscallFault::arm(self, deadline_ns)
    }

    fn counters(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self.totals()?)?)
    }

    fn live_line(&self, elapsed: Duration, counters: &serde_json::Value) -> String {
        format!("[{:>5.1}s] {}", elapsed.as_secs_f64(), line(counters))
    }
}

pub async fn run(cmd: SyscallCommand) -> Result<()> {
    let mut signals = crate::lifecycle::Signals::install()?;
    let spec = SyscallSpec::from_args(&cmd.syscall)?;
    crate::require_root("kchaos syscall")?;
    let targets = targets::resolve(&cmd.targets)?;
    let plan = SyscallFault::preflight(&spec, &targets)?;
    for note in &spec.notes {
        println!("note: {note}");
    }
    // No residue, but the record lets `kchaos stop` find the run and other runs see its targets.
    let _journal = crate::journal::Journal::create(
        "syscall",
        &crate::journal::target_paths(&targets),
        cmd.run.stack,
    )?;
    let mut fault = SyscallFault::attach(spec, &targets)?;
    let fault_text = fault.spec().describe();
    println!("kchaos syscall: {fault_text}");
    for (op, backend) in &plan {
        let name = crate::faults::syscall::OPS
            .iter()
            .find(|o| o.id == *op)
            .map_or("?", |o| o.names[0]);
        println!("  {name}: {backend} backend");
    }
    for a in &fault.attachments {
        println!("  attached {a}");
    }
    let outcome = runner::run(&mut fault, &cmd.run, &mut signals).await?;
    let totals = serde_json::to_value(fault.totals()?)?;
    let attached = fault.attachments.clone();
    let spec = fault.spec().clone();
    drop(fault); // closes every link: the programs stop running
    println!(
        "kchaos syscall: {fault_text} for {:.1}s, ended: {}\n  {}\n  detached: every program",
        outcome.duration_s,
        outcome.end_reason,
        line(&totals)
    );
    FaultReport::new(
        "syscall", fault_text, spec, targets, attached, outcome, totals,
    )
    .write_if_asked(cmd.run.json.as_deref())
}
