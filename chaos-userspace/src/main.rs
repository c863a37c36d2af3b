//! `kchaos`: the command line. Parsing and exit codes live here; the work in the library.

use std::process::ExitCode;

use chaos_userspace::{
    detach, error,
    kind::KindCommand,
    lab::{demo, traffic},
    probe, status, stop,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kchaos",
    version,
    about = "Kernel-level fault injection, held to one cgroup (container)",
    long_about = "kchaos injects network and system faults with eBPF programs attached to a target \
cgroup: only processes in that cgroup (and cgroups below it) are hit, everything else runs untouched. \
Faults end when the run ends, however it ends.\n\n\
Examples:\n  kchaos probe\n  kchaos net --cgroup system.slice/docker-<id>.scope --percent 5 --duration 1m\n  \
kchaos net --pid 4242 --partition 10.0.0.7:5432 --duration 30s --json report.json\n  \
kchaos net --cgroup app --percent 5 --duration 10m --name loss --detach --metrics 127.0.0.1:9464\n  \
kchaos status\n  kchaos stop --name loss\n  kchaos stop\n\n\
Exit status (every command): 0 done as planned; 1 aborted, deviated or failed (the report says why); \
2 bad input or refused (nothing attached); 130, 143, 129 ended by SIGINT, SIGTERM, SIGHUP (128 + the \
signal; everything attached is undone first).\n\n\
Environment: KCHAOS_LOG=debug (or a tracing filter) logs to stderr, colour only on a terminal and \
never with NO_COLOR; KCHAOS_RUN_DIR holds the run records (default /run/kchaos); KCHAOS_VAR_<name> \
sets a scenario variable."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The fault kinds, one subcommand each (from the registry in kind.rs).
    #[command(flatten)]
    Fault(KindCommand),
    /// A stress worker, started by `kchaos stress` in the target cgroup.
    #[command(hide = true)]
    StressWorker(chaos_userspace::kinds::stress::worker::WorkerArgs),
    /// Thaws the paused cgroups if `kchaos pause` dies; started by it.
    #[command(hide = true)]
    PauseGuard(chaos_userspace::kinds::pause::freeze::GuardArgs),
    /// Show which kernel hooks this machine offers and what each enables.
    Probe {
        /// Print JSON instead of a table (to stdout, or into FILE: `--json FILE` as every command).
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<std::path::PathBuf>,
    },
    /// End every running kchaos and undo anything a killed one left behind; with --name, one run.
    #[command(
        after_help = "Examples:\n  kchaos stop                 # every run, and what killed ones left behind\n  \
kchaos stop --name db-loss   # one run (see `kchaos status`)\n\n\
Exit status: 0 done; 1 something could not be undone or ended (said above); 2 not root, an\n\
untrusted record directory, or no run of that name."
    )]
    Stop {
        /// End only the run of this name (its `--name`, or <command>-<pid>), then undo its residue.
        #[arg(long, value_name = "NAME", value_parser = chaos_userspace::control::parse_name, value_hint = clap::ValueHint::Other)]
        name: Option<String>,
    },
    /// List the running kchaos runs: name, pid, faults, targets, armed since, time left, counters.
    #[command(
        after_help = "Examples:\n  kchaos status\n  kchaos status --json | jq '.runs[].name'\n\n\
A run killed without its cleanup is listed apart as dead, with what `kchaos stop` would undo."
    )]
    Status {
        /// Print JSON instead of a table (to stdout, or into FILE: `--json FILE` as every command).
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<std::path::PathBuf>,
    },
    /// A self-contained demo: a lab (netns, veth, cgroup), drop then partition, a table of results.
    Demo,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(
        after_help = "Examples:\n  kchaos completions bash > /etc/bash_completion.d/kchaos\n  \
kchaos completions zsh > \"${fpath[1]}/_kchaos\""
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write man pages (kchaos.1 and one per subcommand, kchaos-net.1 ...) into a directory.
    #[command(after_help = "Example:\n  kchaos man /usr/local/share/man/man1 && man kchaos-net")]
    Man {
        /// The directory to write them into (made if missing).
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// Do nothing until a signal ends it: what deploy/kubernetes/daemonset.yaml runs, so that a
    /// kchaos is ready on every node for `kubectl exec`.
    #[command(hide = true)]
    Idle,
    /// Print the JSON Schema of scenario files (scenarios/scenario.schema.json is this output).
    #[command(
        hide = true,
        after_help = "Example:\n  kchaos schema > scenarios/scenario.schema.json"
    )]
    Schema,
    /// Traffic generators for labs and tests (run inside a cgroup/netns).
    #[command(hide = true)]
    Traffic(traffic::TrafficArgs),
    /// Run an experiment: a scenario file with probes, faults on a timeline, abort rules, a budget.
    #[command(
        after_help = "Examples:\n  kchaos run scenarios/packet-loss-ramp.yaml --var cgroup=app.slice/api.service --var server=10.0.0.7:80\n  \
kchaos run game-day.yaml --dry-run\n  kchaos run loss.yaml --json run.json --junit run.xml\n\n\
Exit status: 0 completed and the steady state held; 1 aborted or deviated (the report says why);\n\
2 bad input or refused by the safety review (nothing attached); 130/143/129 ended by SIGINT/SIGTERM/SIGHUP."
    )]
    Run(chaos_userspace::experiment::RunArgs),
    /// Check a scenario file without running it (no privileges needed): errors and a safety review.
    Validate(chaos_userspace::experiment::ValidateArgs),
    /// Print an experiment report again, or write it as HTML (--html --out) or JUnit (--junit).
    Report(chaos_userspace::experiment::ReportArgs),
    /// Random faults of bounded intensity on one cgroup, with probes, abort rules and a report.
    #[command(
        after_help = "Example:\n  kchaos monkey --cgroup app --duration 5m --percent 20 --types net-drop,net-delay \\\n    \
--probe tcp:10.0.0.7:5432 --from-target --json monkey.json"
    )]
    Monkey(chaos_userspace::experiment::monkey::MonkeyArgs),
    /// A steady-state probe inside a target cgroup, started by `kchaos run`.
    #[command(hide = true)]
    ProbeAgent(chaos_userspace::experiment::ProbeAgentArgs),
}

/// The command line as completions see it: clap_complete offers hidden flags too (the old spellings
/// such as `--drop`), so their names are taken off in this copy, which only completions use. A flag
/// without a name is offered by none of the generators.
fn without_hidden_flags(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        if a.is_hide_set() && !a.is_positional() {
            a.long(None).short(None)
        } else {
            a
        }
    })
    .mut_subcommands(without_hidden_flags)
}

/// The command line: the clap definitions, with `--duration` hidden from the help of instant kinds
/// (`kill`), which refuse it with a clear error if it is given anyway.
fn cli_command() -> clap::Command {
    <Cli as clap::CommandFactory>::command().mut_subcommands(|sub| {
        if chaos_userspace::kind::is_instant_kind(sub.get_name()) {
            sub.mut_arg("duration", |a| a.hide(true))
        } else {
            sub
        }
    })
}

/// kchaos.1 and a page per visible subcommand (kchaos-net.1 ...), from the clap definitions.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = cli_command();
    let mut written = 0;
    let mut write = |name: &str, page: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        chaos_userspace::output::write_file(&path, "kchaos man", &buf)?;
        written += 1;
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("kchaos-{}", sub.get_name());
        write(&name, sub.clone().name(name.clone()))?;
    }
    write("kchaos", cmd.clone())?;
    println!("kchaos man: {written} pages in {}", dir.display());
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KCHAOS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Escapes only for a terminal: `KCHAOS_LOG=debug kchaos ... 2>log` stays plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let cli = match cli_command()
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(line) = error::flag_value_line(&e) {
                eprintln!("kchaos: error: {line}");
                return ExitCode::from(2);
            }
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Fault(cmd) => block_on(cmd.run()),
        Command::StressWorker(args) => chaos_userspace::kinds::stress::worker::run(&args),
        Command::PauseGuard(args) => chaos_userspace::kinds::pause::freeze::guard(&args),
        Command::Probe { json } => probe::run(json.as_deref()),
        Command::Stop { name } => stop::run(name.as_deref()),
        Command::Status { json } => status::run(json.as_deref()),
        Command::Demo => demo::run(),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut without_hidden_flags(cli_command()),
                "kchaos",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => write_man_pages(&dir),
        Command::Idle => loop {
            // SIGTERM's default action ends it (kchaos is not pid 1 with hostPID).
            std::thread::park();
        },
        Command::Schema => {
            print!("{}", chaos_userspace::experiment::schema::text());
            Ok(())
        }
        Command::Traffic(args) => traffic::run(&args),
        Command::Run(args) => block_on(chaos_userspace::experiment::run_command(args)),
        Command::Validate(args) => chaos_userspace::experiment::validate_command(&args),
        Command::Report(args) => chaos_userspace::experiment::report_command(&args),
        Command::Monkey(args) => block_on(chaos_userspace::experiment::monkey_command(args)),
        Command::ProbeAgent(args) => chaos_userspace::experiment::probe_agent_command(&args),
    };
    detach::finish(&result);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(code) = error::signal_exit_code(&err) {
                eprintln!("kchaos: {err:#}");
                return ExitCode::from(code);
            }
            eprintln!("kchaos: error: {err:#}");
            ExitCode::from(if error::is_bad_input(&err) { 2 } else { 1 })
        }
    }
}

/// A single-threaded runtime: the loader waits on signals and a 1 s tick, nothing more.
fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fut)
}
