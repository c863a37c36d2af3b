//! `kchaos monkey`: random faults of bounded intensity on one cgroup, one at a time, with the same
//! probes, abort rules, budget and report as a scenario. The draw is seeded (and the seed reported), so
//! a run that found something can be replayed.

use std::{collections::BTreeMap, time::Duration};

use super::{
    diagnostic::Diagnostic,
    scenario::{
        AbortRule, Budget, Check, FaultDecl, ProbeSpec, Scenario, SteadyState, TargetDecl,
        TargetRef, Tolerance,
    },
    yaml::Mark,
};
use crate::kind::{FaultKind, MonkeyCaps, monkey_types};
use crate::{error::BadInput, units};

#[derive(Debug, clap::Args)]
pub struct MonkeyArgs {
    /// A target cgroup (absolute, or relative to the cgroup2 mount). May be repeated; each fault
    /// hits every target.
    #[arg(long = "cgroup", value_name = "PATH", required_unless_present_any = ["pids", "containers"])]
    pub cgroups: Vec<String>,
    /// Target the cgroup of this process (read from /proc/PID/cgroup). May be repeated.
    #[arg(long = "pid", value_name = "PID", value_parser = units::parse_whole::<u32>, allow_hyphen_values = true)]
    pub pids: Vec<u32>,
    /// Target a container by its runtime's name or id (as `kchaos net --container`). May be repeated.
    #[arg(long = "container", value_name = "NAME|ID", value_hint = clap::ValueHint::Other)]
    pub containers: Vec<String>,
    /// How long the monkey plays (faults start only within it).
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration, allow_hyphen_values = true)]
    pub duration: Duration,
    /// Chance, each second with no fault running, that a fault starts, in percent (0-100).
    #[arg(long, value_name = "PCT", value_parser = units::parse_percent, allow_hyphen_values = true, required_unless_present = "probability")]
    pub percent: Option<f64>,
    /// The old spelling of --percent, as 0-1 or 30% (deprecated: works for one release, with a
    /// warning).
    #[arg(long, value_name = "P", value_parser = parse_probability, allow_hyphen_values = true, hide = true, conflicts_with = "percent")]
    pub probability: Option<f64>,
    /// Fault types to choose from, comma-separated: net-drop, net-delay, net-partition, syscall
    /// (connects fail with ECONNREFUSED), cpu (one CPU worker in the target).
    #[arg(
        long,
        value_name = "TYPES",
        value_delimiter = ',',
        default_value = "net-drop"
    )]
    pub types: Vec<String>,
    /// Peers a net-partition may cut the target off from: CIDR[:PORT] (repeatable).
    #[arg(long = "peer", value_name = "CIDR[:PORT]")]
    pub peers: Vec<String>,
    /// A steady-state probe: tcp:HOST:PORT, http://URL or https://URL, or cmd:SHELL-COMMAND
    /// (repeatable).
    #[arg(long = "probe", value_name = "PROBE")]
    pub probes: Vec<String>,
    /// Run the probes from inside the target cgroup.
    #[arg(long)]
    pub from_target: bool,
    /// Probe interval.
    #[arg(long, value_name = "DUR", default_value = "200ms", value_parser = units::parse_duration, allow_hyphen_values = true)]
    pub probe_interval: Duration,
    /// Abort once a probe has been failing this long.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = units::parse_duration, allow_hyphen_values = true)]
    pub abort_after: Duration,
    /// Longest single fault.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = units::parse_duration, allow_hyphen_values = true)]
    pub max_fault: Duration,
    /// Highest drop rate the monkey may choose, percent.
    #[arg(long, value_name = "PCT", default_value = "30", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub max_drop: f64,
    /// Longest delay the monkey may choose.
    #[arg(long, value_name = "DUR", default_value = "200ms", value_parser = units::parse_duration, allow_hyphen_values = true)]
    pub max_delay: Duration,
    /// Highest share of connects a `syscall` fault may fail, percent.
    #[arg(long, value_name = "PCT", default_value = "30", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub max_syscall_percent: f64,
    /// Highest load of a `cpu` fault's worker, percent of one CPU.
    #[arg(long, value_name = "PCT", default_value = "50", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub max_cpu_load: f64,
    /// Stop injecting after this many injected events (kernel counted).
    #[arg(long, value_name = "N", value_parser = units::parse_whole::<u64>, allow_hyphen_values = true)]
    pub max_events: Option<u64>,
    /// Seed of the draw (default: from the clock; the report records it).
    #[arg(long, value_parser = units::parse_whole::<u64>, allow_hyphen_values = true)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub out: super::OutputArgs,
}

impl MonkeyArgs {
    /// The chance a fault starts in a free second, 0-1 (from --percent, or the old --probability).
    pub fn chance(&self) -> f64 {
        match (self.percent, self.probability) {
            (Some(p), _) => p / 100.0,
            (None, Some(p)) => p,
            (None, None) => 0.0,
        }
    }
}

fn parse_probability(text: &str) -> Result<f64, BadInput> {
    let v = if text.trim().ends_with('%') {
        units::parse_percent(text)? / 100.0
    } else {
        text.trim().parse::<f64>().map_err(|_| {
            BadInput::new(format!(
                "'{text}' is not a probability: write 0 to 1, or 0% to 100%"
            ))
        })?
    };
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(BadInput::new(format!(
            "{v} is not a probability: allowed is 0 to 1 (or 0% to 100%)"
        )))
    }
}

/// splitmix64: small, seedable, good enough to pick faults.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn parse_probe(text: &str, index: usize, args: &MonkeyArgs) -> Result<ProbeSpec, BadInput> {
    let check = if let Some(addr) = text.strip_prefix("tcp:") {
        Check::Tcp {
            address: addr.parse().map_err(|_| {
                BadInput::new(format!(
                    "--probe {text}: write tcp:IP:PORT, e.g. tcp:10.0.0.7:5432"
                ))
            })?,
        }
    } else if text.starts_with("http://") || text.starts_with("https://") {
        super::probes::check_http_url(text).map_err(|e| BadInput::new(format!("--probe {e}")))?;
        Check::Http {
            url: text.to_owned(),
            statuses: Vec::new(),
            ca: None,
        }
    } else if let Some(cmd) = text.strip_prefix("cmd:") {
        Check::Command {
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            exit_code: 0,
            env: Default::default(),
        }
    } else {
        return Err(BadInput::new(format!(
            "--probe {text}: allowed are tcp:IP:PORT, http://HOST[:PORT]/PATH, https://..., cmd:SHELL-COMMAND"
        )));
    };
    Ok(ProbeSpec {
        name: format!("probe-{}", index + 1),
        check,
        interval: args.probe_interval,
        timeout: args.probe_interval.max(Duration::from_millis(100)) * 2,
        // From inside the first target: probes run from one place.
        from_target: args.from_target.then(|| "target-1".to_owned()),
        tolerance: Tolerance {
            success_rate: 100.0,
            p95_latency: None,
            window: args.probe_interval * 3,
        },
        mark: Mark::default(),
    })
}

/// The monkey's run as a scenario, and the seed it was drawn with.
pub fn scenario(args: &MonkeyArgs) -> Result<(Scenario, u64), BadInput> {
    let chance = args.chance();
    if args.max_fault < Duration::from_secs(1) {
        return Err(BadInput::new("--max-fault: allowed is 1s or more"));
    }
    for t in &args.types {
        if !monkey_types().contains(&t.as_str()) {
            return Err(BadInput::new(format!(
                "--types {t}: allowed are {}",
                monkey_types().join(", ")
            )));
        }
    }
    let seed = args.seed.unwrap_or_else(|| {
        crate::engine::lifecycle::monotonic_ns() ^ u64::from(std::process::id()).rotate_left(32)
    });
    let mut rng = Rng::new(seed);
    let caps = MonkeyCaps {
        max_drop_percent: args.max_drop,
        max_delay: args.max_delay,
        peers: args.peers.clone(),
        max_syscall_percent: args.max_syscall_percent,
        max_cpu_load: args.max_cpu_load,
    };
    let mut faults = Vec::new();
    let mut t = Duration::ZERO;
    while t < args.duration {
        if rng.unit() < chance {
            let ty = &args.types[(rng.next_u64() % args.types.len() as u64) as usize];
            let kind = FaultKind::random(ty, &caps, &mut || rng.unit())?;
            let secs = 1 + rng.next_u64() % args.max_fault.as_secs().max(1);
            let len = Duration::from_secs(secs).min(args.duration - t);
            faults.push(FaultDecl {
                name: format!("monkey-{}-{ty}", faults.len() + 1),
                targets: target_names(args),
                at: t,
                duration: len,
                kind,
                ramps: Vec::new(),
                mark: Mark::default(),
            });
            t += len;
        } else {
            t += Duration::from_secs(1);
        }
    }
    let probes = args
        .probes
        .iter()
        .enumerate()
        .map(|(i, p)| parse_probe(p, i, args))
        .collect::<Result<Vec<_>, _>>()?;
    let abort = probes
        .iter()
        .map(|p| AbortRule {
            probe: p.name.clone(),
            violated_for: args.abort_after,
            success_rate: None,
            p95_latency: None,
            mark: Mark::default(),
        })
        .collect();
    let before = Duration::from_secs(1);
    let after = Duration::from_secs(2);
    let mut max_intensity = BTreeMap::new();
    // One `percent` over the kinds (drop, failed calls, CPU load): each draw keeps to its own cap,
    // the budget to the highest of them (a partition drops everything to its peers).
    max_intensity.insert(
        "percent".to_owned(),
        if args.types.iter().any(|t| t == "net-partition") {
            100.0
        } else {
            args.max_drop
                .max(args.max_syscall_percent)
                .max(args.max_cpu_load)
        },
    );
    max_intensity.insert("delay".to_owned(), args.max_delay.as_secs_f64());
    let scenario = Scenario {
        file: format!("(kchaos monkey, seed {seed})"),
        title: format!(
            "monkey on {} for {}",
            target_decls(args)
                .iter()
                .map(|t| t.what.describe())
                .collect::<Vec<_>>()
                .join(", "),
            units::format_duration(args.duration)
        ),
        description: format!(
            "random {} faults, {}% a second, seed {seed}",
            args.types.join("/"),
            chance * 100.0
        ),
        variables: BTreeMap::from([("seed".to_owned(), seed.to_string())]),
        targets: target_decls(args),
        allow_host: false,
        steady_state: SteadyState {
            before: if probes.is_empty() {
                Duration::ZERO
            } else {
                before
            },
            after: if probes.is_empty() {
                Duration::ZERO
            } else {
                after
            },
            probes,
        },
        faults,
        abort,
        budget: Some(Budget {
            max_duration: Some(before + args.duration + after + Duration::from_secs(1)),
            max_injected_events: args.max_events,
            max_intensity,
            mark: Mark::default(),
        }),
        rollbacks: Vec::new(),
    };
    Ok((scenario, seed))
}

/// The targets, `target-1` ... in the order given: the cgroups, then the pids, then the containers.
fn target_decls(args: &MonkeyArgs) -> Vec<TargetDecl> {
    args.cgroups
        .iter()
        .map(|cg| TargetRef::Cgroup(cg.clone()))
        .chain(args.pids.iter().map(|&pid| TargetRef::Pid(pid)))
        .chain(args.containers.iter().map(|c| TargetRef::Container {
            name: c.clone(),
            runtime: crate::engine::containers::Runtime::Any,
        }))
        .enumerate()
        .map(|(i, what)| TargetDecl {
            name: format!("target-{}", i + 1),
            what,
            mark: Mark::default(),
        })
        .collect()
}

fn target_names(args: &MonkeyArgs) -> Vec<String> {
    target_decls(args).into_iter().map(|t| t.name).collect()
}

/// Errors as text (a generated scenario has no file positions to show).
pub fn describe_errors(errors: &[Diagnostic]) -> String {
    errors
        .iter()
        .map(|d| format!("{}: {}", d.field, d.message))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        m: MonkeyArgs,
    }

    fn args(extra: &[&str]) -> MonkeyArgs {
        let mut v = vec![
            "x",
            "--cgroup",
            "app",
            "--duration",
            "60s",
            "--percent",
            "50",
        ];
        v.extend(extra);
        Cli::parse_from(v).m
    }

    #[test]
    fn bounded_sequential_and_reproducible() {
        let a = args(&[
            "--types",
            "net-drop,net-delay",
            "--seed",
            "7",
            "--max-drop",
            "20",
        ]);
        let (s, seed) = scenario(&a).unwrap();
        assert_eq!(seed, 7);
        assert!(s.faults.len() > 3, "{}", s.faults.len());
        for w in s.faults.windows(2) {
            assert!(w[0].end() <= w[1].at, "faults overlap");
        }
        assert!(s.faults.iter().all(|f| f.end() <= Duration::from_secs(60)));
        assert!(super::super::validate::check(&s).is_empty());
        for f in &s.faults {
            for (p, v) in f.kind.intensities() {
                match p {
                    "percent" => assert!((1.0..=20.0).contains(&v), "{v}"),
                    _ => assert!(v <= 0.2, "{v}"),
                }
            }
        }
        let again = scenario(&a).unwrap().0;
        let names = |s: &Scenario| {
            s.faults
                .iter()
                .map(|f| (f.name.clone(), f.at))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&s), names(&again));
    }

    #[test]
    fn syscall_and_cpu_faults_stay_within_their_caps() {
        let a = args(&[
            "--types",
            "syscall,cpu",
            "--seed",
            "11",
            "--max-syscall-percent",
            "25",
            "--max-cpu-load",
            "40",
        ]);
        let (s, _) = scenario(&a).unwrap();
        assert!(super::super::validate::check(&s).is_empty());
        let mut seen = std::collections::BTreeSet::new();
        for f in &s.faults {
            seen.insert(f.kind.name());
            for (p, v) in f.kind.intensities() {
                match (f.kind.name(), p) {
                    ("syscall", "percent") => assert!((1.0..=25.0).contains(&v), "{v}"),
                    ("stress", "percent") => assert!((10.0..=40.0).contains(&v), "{v}"),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["stress", "syscall"],
            "both types drawn"
        );
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        assert!(
            scenario(&args(&["--types", "net-partition"])).is_err(),
            "no peer"
        );
        assert!(scenario(&args(&["--types", "disk-fill"])).is_err());
        assert!(parse_probability("1.5").is_err());
        assert_eq!(parse_probability("25%").unwrap(), 0.25);
        assert!(scenario(&args(&["--probe", "udp:1.2.3.4:5"])).is_err());
    }
}
