//! A fault command (`kchaos net|syscall|stress|pause|kill ...`) is a one-fault experiment without
//! probes: it runs through the experiment runner, so every command prepares before it arms, prints
//! the same live line, ends the same way and writes the same JSON report (`kchaos report` renders any
//! of them).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    control::Control,
    engine::journal::Journal,
    engine::{
        lifecycle::Signals,
        targets::{self, TargetArgs},
    },
    error::BadInput,
    experiment::{
        runner::{self, Style},
        scenario::{FaultDecl, Scenario, SteadyState, TargetDecl, TargetRef},
        validate::ResolvedTarget,
        yaml::Mark,
    },
    kind::FaultKind,
    live::{Live, Snapshot},
    metrics,
    output::create_if_asked,
    report::Report,
    units,
};

/// The window of a command run without `--duration`: until Ctrl-C, SIGTERM or `kchaos stop` (the
/// kernel's lease still ends the fault within seconds if the loader itself stops).
pub const UNTIL_STOPPED: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The flags of a fault command: its targets, its kind's own flags, and how it runs.
#[derive(Debug, clap::Args)]
pub struct FaultCommand<A: clap::Args> {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub args: A,
    #[command(flatten)]
    pub common: RunArgs,
}

/// How long a fault command runs and what it writes (shared by every fault command).
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// Stop after this long (e.g. 30s, 5m); without it, run until Ctrl-C, SIGTERM or `kchaos stop`.
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// Also write the report as JSON to this file (`kchaos report FILE` renders it).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No live line (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Run even where another kchaos run already injects into the same cgroup, a parent or a child:
    /// both faults then apply (the effective rate compounds).
    #[arg(long)]
    pub stack: bool,
    /// Say what would be done (the fault, the targets and the processes in them now, how long);
    /// attach, signal or write nothing.
    #[arg(long, conflicts_with_all = ["detach", "json", "metrics"])]
    pub dry_run: bool,
    #[command(flatten)]
    pub control: Control,
}

/// The targets a command names, with its kind's flags already checked.
pub struct Command {
    pub kind: FaultKind,
    pub targets: TargetArgs,
    pub run: RunArgs,
}

/// Runs one fault on the command's targets as a one-fault experiment, prints its summary, writes its
/// report. Exit 0 when it ran as asked to its end, 128 + the signal when a signal ended it, an error
/// when the fault failed.
pub async fn run(cmd: Command) -> Result<()> {
    // From here on a Ctrl-C or SIGTERM (`kchaos stop`) ends the run through its cleanup.
    let mut signals = Signals::install().context("installing signal handlers")?;
    let Command { kind, targets, run } = cmd;
    crate::detach::adopt(run.control.ready_fd)?;
    let name = kind.name();
    let duration = match (kind.is_instant(), run.duration) {
        (true, Some(_)) => {
            return Err(BadInput::new(format!(
                "--duration does not apply to {name}: it is an instant event"
            ))
            .into());
        }
        (true, None) => Duration::ZERO,
        (false, None) if kind.requires_duration() => {
            return Err(BadInput::new(format!(
                "kchaos {name} needs --duration DUR (e.g. 10s): it would hold the target until \
                 someone ends it"
            ))
            .into());
        }
        (false, Some(d)) if d.is_zero() => {
            return Err(BadInput::new(format!(
                "--duration 0s: a {name} fault lasts longer than 0s (e.g. 10s), or leave it out to \
                 run until Ctrl-C"
            ))
            .into());
        }
        (false, None) if run.control.detach => {
            return Err(BadInput::new(format!(
                "--detach needs --duration DUR (e.g. 5m): a run in the background must end by \
                 itself (kchaos {name} ... --detach --duration 5m)"
            ))
            .into());
        }
        (false, d) => d.unwrap_or(UNTIL_STOPPED),
    };
    if run.dry_run {
        return dry_run(&kind, &targets, duration);
    }
    crate::require_root(&format!("kchaos {name}"), crate::ROOT_BECAUSE)?;
    if run.control.launches_detached() {
        return crate::detach::launch(&[], &mut signals).await;
    }
    // Opened first, before targets are resolved and the kernel is probed (which takes a second
    // under emulation): an unwritable path is bad input at once, with nothing attached; the file
    // is removed again if the run is refused later.
    let json = create_if_asked(run.json.as_deref(), "--json")?;
    let resolved = targets::resolve(&targets)?;
    kind.preflight(&resolved)?;
    let targets: Vec<ResolvedTarget> = resolved
        .iter()
        .enumerate()
        .map(|(i, t)| ResolvedTarget {
            name: format!("target-{}", i + 1),
            path: t.path.clone(),
            id: t.id,
            origin: t.origin.clone(),
        })
        .collect();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let scenario = Scenario {
        file: "(command line)".into(),
        title: format!("kchaos {name}"),
        description: String::new(),
        variables: Default::default(),
        targets: targets
            .iter()
            .map(|t| TargetDecl {
                name: t.name.clone(),
                what: TargetRef::Cgroup(t.path.display().to_string()),
                mark: Mark::default(),
            })
            .collect(),
        allow_host: true,
        steady_state: SteadyState {
            before: Duration::ZERO,
            after: Duration::ZERO,
            probes: Vec::new(),
        },
        faults: vec![FaultDecl {
            name: name.into(),
            targets: names,
            at: Duration::ZERO,
            duration,
            kind: kind.clone(),
            ramps: Vec::new(),
            mark: Mark::default(),
        }],
        abort: Vec::new(),
        budget: None,
        rollbacks: Vec::new(),
    };
    let run_name = run.control.name_or_default(name);
    let live = Live::new(Snapshot {
        name: run_name.clone(),
        pid: std::process::id(),
        command: name.into(),
        ..Snapshot::default()
    });
    // Bound before anything is prepared: a taken port is bad input with nothing attached.
    let server = match run.control.metrics {
        Some(addr) => Some(metrics::Server::start(addr, live.clone())?),
        None => None,
    };
    // The record comes before anything is prepared: `kchaos stop` finds a run that is starting.
    let paths: Vec<PathBuf> = resolved.iter().map(|t| t.path.clone()).collect();
    let journal = Journal::create(name, &run_name, &[name], &paths, run.stack)?;
    crate::detach::redirect_output(journal.dir(), &run_name)?;
    println!("kchaos {}", kind.describe());
    if run.control.name.is_some() || crate::detach::is_detached() {
        println!("  run '{run_name}' (pid {})", std::process::id());
    }
    if let Some(s) = &server {
        println!("  metrics: http://{}/metrics", s.addr());
        crate::detach::note_metrics(s.addr());
    }
    for line in kind.plan_lines(&resolved) {
        println!("  {line}");
    }
    let report = runner::execute(runner::Setup {
        scenario,
        targets,
        findings: Vec::new(),
        risk_accepted: false,
        quiet: run.quiet,
        style: Style::Command,
        command: name,
        journal,
        prepare: None,
        signals,
        live,
    })
    .await?;
    for line in summary(&report, &kind) {
        println!("{line}");
    }
    if let Some(out) = json {
        let path = out.path().display().to_string();
        out.write_json(&report)?;
        println!("  report: {path}");
    }
    if let Some(s) = &server {
        linger(s, run.control.metrics_linger);
    }
    verdict(&report)
}

/// Keeps serving /metrics after the run until a scrape has read its final figures, at most `max`.
pub fn linger(server: &metrics::Server, max: Option<Duration>) {
    let Some(max) = max.filter(|m| !m.is_zero()) else {
        return;
    };
    println!(
        "  metrics: serving the final figures until the next scrape (at most {})",
        units::format_duration(max)
    );
    server.linger(server.scrapes(), max);
}

/// The command's summary: what ran for how long and why it ended, then its counters.
pub fn summary(report: &Report, kind: &FaultKind) -> Vec<String> {
    let mut out = Vec::new();
    for f in &report.faults {
        if kind.is_instant() {
            out.push(format!(
                "kchaos {}: {}",
                f.description,
                kind.live_line(&f.counters)
            ));
        } else {
            let window = match f.window_ms {
                Some(ms) => format!(" for {:.1}s", ms / 1e3),
                None => " (never armed)".into(),
            };
            out.push(format!(
                "kchaos {}{window}, ended: {}",
                f.description, report.summary.end_reason
            ));
            out.push(format!("  {}", kind.live_line(&f.counters)));
        }
        out.extend(kind.summary_lines(f).into_iter().map(|l| format!("  {l}")));
        for e in &f.errors {
            out.push(format!("  error: {e}"));
        }
    }
    out
}

/// `--dry-run`: what the command would do, from what can be known without attaching anything.
fn dry_run(kind: &FaultKind, targets: &TargetArgs, duration: Duration) -> Result<()> {
    let resolved = targets::resolve(targets)?;
    println!("kchaos {} (dry run: nothing is attached)", kind.describe());
    for t in &resolved {
        let procs = crate::engine::cgroup::procs_recursive(&t.path).map_or_else(
            |e| format!("processes unknown: {e}"),
            |p| format!("{} process(es) now", p.len()),
        );
        println!("  target {} ({}): {procs}", t.path.display(), t.origin);
    }
    for line in kind.plan_lines(&resolved) {
        println!("  {line}");
    }
    println!(
        "  {}",
        if kind.is_instant() {
            "once, at the start".to_owned()
        } else if duration == UNTIL_STOPPED {
            "until Ctrl-C, SIGTERM or `kchaos stop`".to_owned()
        } else {
            format!("for {}", units::format_duration(duration))
        }
    );
    // Whether this kernel can run it takes root (test programs are loaded); without, say so.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        kind.preflight(&resolved)?;
        println!("  this kernel offers what it needs");
    } else {
        println!("  not root: whether this kernel offers what it needs was not checked");
    }
    Ok(())
}

/// Ok when the fault ran as asked to its end; a signal (Ctrl-C, SIGTERM, `kchaos stop`) that ended it
/// early is [`crate::error::EndedBySignal`] (exit 130, 143).
fn verdict(report: &Report) -> Result<()> {
    let errors: Vec<&String> = report.faults.iter().flat_map(|f| &f.errors).collect();
    if !errors.is_empty() {
        bail!(
            "{}",
            errors
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let s = &report.summary;
    if let Some(ended) = s.signal.as_ref().and_then(|r| r.as_signal()) {
        return Err(ended.into());
    }
    if !s.completed {
        bail!("{}", s.end_reason);
    }
    Ok(())
}
