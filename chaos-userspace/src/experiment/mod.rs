//! Experiments: scenario files (steady-state hypothesis, faults on a timeline with ramps, abort rules,
//! a budget, rollbacks, variables), their validation and safety review, the run, and its report.
//!
//! `kchaos validate FILE`, `kchaos run FILE`, `kchaos report FILE.json`, `kchaos monkey`. Fault kinds
//! plug in through `crate::kind` only.

pub mod child;
pub mod diagnostic;
pub mod fields;
pub mod monkey;
pub mod plan;
pub mod probes;
pub mod review;
pub mod runner;
pub mod scenario;
pub mod schema;
pub mod validate;
pub mod yaml;

use std::path::{Path, PathBuf};

use anyhow::Result;

use self::{
    diagnostic::{Diagnostic, ScenarioErrors},
    fields::Vars,
    review::{Finding, Risk},
    scenario::Scenario,
    validate::ResolvedTarget,
};
use crate::{
    error::BadInput,
    live::{Live, Snapshot},
    output::{OutputFile, create_if_asked},
    report::{Report, html, junit},
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The scenario file (YAML).
    pub file: PathBuf,
    /// Set a variable: KEY=VALUE (repeatable; beats KCHAOS_VAR_KEY and the file's default).
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// What an experiment writes and how it may start: shared by `kchaos run` and `kchaos monkey`.
#[derive(Debug, Default, clap::Args)]
pub struct OutputArgs {
    /// Write the JSON report (the journal) here (`kchaos report FILE` renders it).
    #[arg(long, value_name = "FILE.json")]
    pub json: Option<PathBuf>,
    /// The old spelling of --json (deprecated: works for one release, with a warning).
    #[arg(long, value_name = "FILE.json", hide = true, conflicts_with = "json")]
    pub report: Option<PathBuf>,
    /// Write each hypothesis and probe as a JUnit test case here.
    #[arg(long, value_name = "FILE.xml")]
    pub junit: Option<PathBuf>,
    /// Print the plan (timeline, what would attach where); attach nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run even with high-risk findings from the safety review.
    #[arg(long)]
    pub accept_risk: bool,
    /// No live lines (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Run even where another kchaos run already injects into the same cgroup, a parent or a child:
    /// both faults then apply (the effective rate compounds).
    #[arg(long)]
    pub stack: bool,
    #[command(flatten)]
    pub control: crate::control::Control,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The scenario file (YAML).
    pub file: PathBuf,
    /// Set a variable: KEY=VALUE (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// Pass a scenario with high-risk findings, as `kchaos run --accept-risk` would run it. Without
    /// it, validate exits 2 where `run` would refuse: a CI lint step fails where the run would.
    #[arg(long)]
    pub accept_risk: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A JSON report: `kchaos run --json`, `kchaos monkey --json`, or any fault command's `--json`.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Write a self-contained HTML page here (`--html FILE.html`; `--html --out FILE.html` works too).
    #[arg(long, value_name = "FILE.html", num_args = 0..=1)]
    pub html: Option<Option<PathBuf>>,
    /// Where the HTML page goes (with a bare --html).
    #[arg(long, value_name = "FILE.html", requires = "html")]
    pub out: Option<PathBuf>,
    /// Also write JUnit XML here.
    #[arg(long, value_name = "FILE.xml")]
    pub junit: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ProbeAgentArgs {
    /// The cgroup to probe from.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// The probe, as JSON.
    #[arg(long)]
    pub spec: String,
}

fn bad(errors: ScenarioErrors) -> anyhow::Error {
    anyhow::Error::new(BadInput::new(errors.to_string()))
}

/// Reads and checks a scenario: syntax, fields, and the checks across fields.
pub fn load(file: &Path, vars: &[String]) -> Result<Scenario> {
    let vars = Vars::from_cli(vars)?;
    let s = scenario::load(file, &vars).map_err(bad)?;
    let errors = validate::check(&s);
    if !errors.is_empty() {
        return Err(bad(ScenarioErrors(errors)));
    }
    Ok(s)
}

/// Resolves what can be resolved; the rest with why, as a diagnostic at the target.
fn resolve(s: &Scenario) -> (Vec<ResolvedTarget>, Vec<(String, String)>, Vec<Diagnostic>) {
    let mut ok = Vec::new();
    let mut missing = Vec::new();
    let mut diags = Vec::new();
    for (i, t) in s.targets.iter().enumerate() {
        match validate::resolve_target(t, s.allow_host) {
            Ok(r) => ok.push(r),
            Err(e) => {
                diags.push(Diagnostic::new(
                    &s.file,
                    t.mark,
                    &format!("targets[{i}]"),
                    e.0.clone(),
                ));
                missing.push((t.name.clone(), e.0));
            }
        }
    }
    (ok, missing, diags)
}

fn review_of(s: &Scenario, ok: &[ResolvedTarget], missing: &[(String, String)]) -> Vec<Finding> {
    let root = crate::engine::cgroup::v2_mount().ok();
    review::review(s, ok, missing, root.as_deref())
}

fn print_findings(findings: &[Finding]) {
    use std::io::Write as _;
    if findings.is_empty() {
        println!("safety review: no findings");
        return;
    }
    // One write for many lines (100k targets not found are 100k findings), not one per line.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(out, "safety review:");
    for f in findings {
        let _ = writeln!(out, "  {f}");
    }
}

/// `kchaos validate FILE`: everything but the run, without privileges.
pub fn validate_command(args: &ValidateArgs) -> Result<()> {
    let s = load(&args.file, &args.vars)?;
    let (ok, missing, _) = resolve(&s);
    let findings = review_of(&s, &ok, &missing);
    println!(
        "{}: valid: '{}', {} target(s), {} fault(s) over {}, {} probe(s), {} abort rule(s), {} rollback(s)",
        args.file.display(),
        s.title,
        s.targets.len(),
        s.faults.len(),
        crate::units::format_duration(s.total_length()),
        s.steady_state.probes.len(),
        s.abort.len(),
        s.rollbacks.len()
    );
    print_findings(&findings);
    if review::highest(&findings) == Some(Risk::High) {
        if args.accept_risk {
            println!(
                "high-risk findings above, accepted (--accept-risk): `kchaos run --accept-risk` runs it"
            );
        } else {
            return Err(BadInput::new(
                "`kchaos run` refuses this scenario unless --accept-risk (high-risk findings \
                 above); `validate --accept-risk` passes it as `run --accept-risk` would run it",
            )
            .into());
        }
    }
    Ok(())
}

/// What `run` and `monkey` share after the scenario is built.
async fn run_scenario(
    s: Scenario,
    out: &OutputArgs,
    command: &'static str,
    child_args: &[String],
) -> Result<()> {
    // From here on a Ctrl-C or SIGTERM (`kchaos stop`) ends the run through its cleanup.
    let mut signals = crate::engine::lifecycle::Signals::install()?;
    if out.report.is_some() {
        crate::output::deprecated("--report FILE", "--json FILE");
    }
    let files = (
        match (&out.json, &out.report) {
            (Some(p), _) => Some(crate::output::create_output(p, "--json")?),
            (None, Some(p)) => Some(crate::output::create_output(p, "--report")?),
            (None, None) => None,
        },
        create_if_asked(out.junit.as_deref(), "--junit")?,
    );
    let (targets, missing, diags) = resolve(&s);
    let findings = review_of(&s, &targets, &missing);
    println!("kchaos run: '{}' ({})", s.title, s.file);
    print_findings(&findings);
    if out.dry_run {
        println!("plan (dry run: nothing is attached):");
        println!("{}", plan::render(&plan::timeline(&s, &targets)));
        if !diags.is_empty() {
            println!("a real run would refuse: {}", ScenarioErrors(diags));
        }
        // The same verdict as `validate` (and the exit code): high-risk findings refuse the run.
        if review::highest(&findings) == Some(Risk::High) && !out.accept_risk {
            return Err(BadInput::new(
                "a real run would refuse: the safety review found high-risk issues (above); fix \
                 them, or pass --accept-risk if you mean it",
            )
            .into());
        }
        return Ok(());
    }
    if !diags.is_empty() {
        return Err(bad(ScenarioErrors(diags)));
    }
    if review::highest(&findings) == Some(Risk::High) && !out.accept_risk {
        return Err(BadInput::new(
            "refusing to run: the safety review found high-risk issues (above); fix them, or pass \
             --accept-risk if you mean it",
        )
        .into());
    }
    crate::require_root("kchaos run", crate::ROOT_BECAUSE)?;
    if out.control.launches_detached() {
        return crate::detach::launch(child_args, &mut signals).await;
    }
    for f in &s.faults {
        let fault_targets: Vec<crate::engine::targets::Target> =
            f.targets_in(&targets).map(ResolvedTarget::target).collect();
        f.kind
            .preflight(&fault_targets)
            .map_err(|e| BadInput::new(format!("fault '{}': {e}", f.name)))?;
    }
    let paths: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    let mut kinds: Vec<&str> = s.faults.iter().map(|f| f.kind.name()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let name = out.control.name_or_default(command);
    let live = Live::new(Snapshot {
        name: name.clone(),
        pid: std::process::id(),
        command: command.into(),
        ..Snapshot::default()
    });
    // Bound before anything is prepared: a taken port is bad input with nothing attached.
    let server = match out.control.metrics {
        Some(addr) => Some(crate::metrics::Server::start(addr, live.clone())?),
        None => None,
    };
    let journal =
        crate::engine::journal::Journal::create(command, &name, &kinds, &paths, out.stack)?;
    crate::detach::redirect_output(journal.dir(), &name)?;
    println!("run '{name}' (pid {})", std::process::id());
    if let Some(s) = &server {
        println!("metrics: http://{}/metrics", s.addr());
        crate::detach::note_metrics(s.addr());
    }
    let report = runner::execute(runner::Setup {
        scenario: s,
        targets,
        findings,
        risk_accepted: out.accept_risk,
        quiet: out.quiet,
        style: runner::Style::Experiment,
        command,
        journal,
        prepare: None,
        signals,
        live,
    })
    .await?;
    println!("{}", report.summary_text());
    write_outputs(&report, files.0, files.1)?;
    if let Some(s) = &server {
        crate::command::linger(s, out.control.metrics_linger);
    }
    verdict(&report)
}

fn write_outputs(
    report: &Report,
    json: Option<OutputFile>,
    junit: Option<OutputFile>,
) -> Result<()> {
    if let Some(out) = json {
        let path = out.path().display().to_string();
        out.write_json(report)?;
        println!("  report: {path}");
    }
    if let Some(out) = junit {
        let path = out.path().display().to_string();
        out.write(junit::render(report).as_bytes())?;
        println!("  junit: {path}");
    }
    Ok(())
}

/// Exit 0 only when the run completed and the steady state held; 128 + the signal when a signal
/// ended it.
fn verdict(report: &Report) -> Result<()> {
    let s = &report.summary;
    if let Some(ended) = s.signal.as_ref().and_then(|r| r.as_signal()) {
        return Err(ended.into());
    }
    if !s.completed {
        anyhow::bail!("the experiment did not complete: {}", s.end_reason);
    }
    if s.steady_state_held == Some(false) {
        anyhow::bail!("the steady state did not hold");
    }
    Ok(())
}

/// `kchaos run FILE`.
pub async fn run_command(args: RunArgs) -> Result<()> {
    crate::detach::adopt(args.out.control.ready_fd)?;
    let s = load(&args.file, &args.vars)?;
    run_scenario(s, &args.out, "run", &[]).await
}

/// `kchaos monkey`.
pub async fn monkey_command(args: monkey::MonkeyArgs) -> Result<()> {
    crate::detach::adopt(args.out.control.ready_fd)?;
    if args.probability.is_some() {
        crate::output::deprecated("--probability", "--percent (0-100)");
    }
    let (s, seed) = monkey::scenario(&args)?;
    let errors = validate::check(&s);
    if !errors.is_empty() {
        return Err(BadInput::new(monkey::describe_errors(&errors)).into());
    }
    println!("kchaos monkey: seed {seed} (--seed {seed} replays this draw)");
    // A background monkey draws the same faults as this one said it would.
    let child_args = match args.seed {
        Some(_) => Vec::new(),
        None => vec![format!("--seed={seed}")],
    };
    run_scenario(s, &args.out, "monkey", &child_args).await
}

/// `kchaos report FILE.json`.
pub fn report_command(args: &ReportArgs) -> Result<()> {
    // `--html FILE.html`, and the older `--html REPORT --out FILE.html` (where --html took no value).
    let (file, html_path) = match (&args.file, &args.html, &args.out) {
        (Some(file), Some(html), out) => (file, html.as_ref().or(out.as_ref())),
        (Some(file), None, _) => (file, None),
        (None, Some(Some(file)), Some(out)) => (file, Some(out)),
        _ => {
            return Err(BadInput::new(
                "give the report file: kchaos report FILE.json [--html FILE.html] [--junit FILE.xml]",
            )
            .into());
        }
    };
    if args.html.is_some() && html_path.is_none() {
        return Err(BadInput::new("--html needs a file: --html FILE.html").into());
    }
    // Errors name the flag the path came with.
    let html_flag = if args.out.is_some() {
        "--out"
    } else {
        "--html"
    };
    let html_out = create_if_asked(html_path.map(PathBuf::as_path), html_flag)?;
    let junit_out = create_if_asked(args.junit.as_deref(), "--junit")?;
    let report = Report::read_json(file)?;
    if let Some(out) = html_out {
        let path = out.path().display().to_string();
        out.write(html::render(&report).as_bytes())?;
        println!("html: {path}");
    } else {
        println!("{}", report.summary_text());
    }
    write_outputs(&report, None, junit_out)
}

/// `kchaos probe-agent` (hidden): a probe inside a target cgroup.
pub fn probe_agent_command(args: &ProbeAgentArgs) -> Result<()> {
    probes::agent(&args.cgroup, &args.spec)
}
