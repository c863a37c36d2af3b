//! `kchaos net`: one network fault on the targets, a live line a second, a summary, a JSON report.

use std::time::Duration;

use anyhow::Result;

use crate::{
    faults::net::{NetArgs, NetFault, NetSpec, NetTotals},
    journal::{self, Journal},
    report::{FaultReport, pct},
    runner::{self, Armable, RunArgs},
    targets::{self, TargetArgs},
};

#[derive(Debug, clap::Args)]
pub struct NetCommand {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

fn direction(name: &str, c: &chaos_common::NetCounters) -> String {
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

impl Armable for NetFault {
    fn arm(&mut self, deadline_ns: u64) -> Result<()> {
        NetFault::arm(self, deadline_ns)
    }

    fn counters(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self.totals()?)?)
    }

    fn live_line(&self, elapsed: Duration, counters: &serde_json::Value) -> String {
        let t: NetTotals = serde_json::from_value(counters.clone()).unwrap_or_default();
        format!(
            "[{:>5.1}s] {} | {}",
            elapsed.as_secs_f64(),
            direction("egress", &t.egress),
            direction("ingress", &t.ingress)
        )
    }
}

pub async fn run(cmd: NetCommand) -> Result<()> {
    let mut signals = crate::lifecycle::Signals::install()?;
    // Every check that can fail on input comes before anything is attached.
    let spec = NetSpec::from_args(&cmd.net)?;
    crate::require_root("kchaos net")?;
    let targets = targets::resolve(&cmd.targets)?;
    NetFault::preflight(&spec)?;

    let mut journal = Journal::create("net", &journal::target_paths(&targets), cmd.run.stack)?;
    let mut fault = NetFault::attach(spec, &targets, &mut journal)?;
    let fault_text = fault.spec().describe();
    println!("kchaos net: {fault_text}");
    for a in &fault.attachments {
        println!("  attached {a}");
    }
    let outcome = runner::run(&mut fault, &cmd.run, &mut signals).await?;
    let totals = fault.totals()?;
    let attached = fault.attachments.clone();
    let spec = fault.spec().clone();
    fault.detach(&mut journal)?;
    println!(
        "kchaos net: {fault_text} for {:.1}s, ended: {}\n  {}\n  {}\n  detached: every program; qdiscs restored",
        outcome.duration_s,
        outcome.end_reason,
        direction("egress ", &totals.egress),
        direction("ingress", &totals.ingress)
    );
    FaultReport::new(
        "net",
        fault_text,
        spec,
        targets,
        attached,
        outcome,
        serde_json::to_value(totals)?,
    )
    .write_if_asked(cmd.run.json.as_deref())
}
