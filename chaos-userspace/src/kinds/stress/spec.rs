//! What a stress fault asks for: `kchaos stress`'s flags, checked into a spec (CPU duty cycles, memory
//! held, paced write+fsync, open fds), and the sizes and rates they are written in.

use std::{path::PathBuf, time::Duration};

use super::{limits, worker};
use crate::{error::BadInput, units};

/// `kchaos stress` options: what load to put on the target.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct StressArgs {
    /// Run N CPU workers, each busy for --percent of one CPU.
    #[arg(long, value_name = "N", value_parser = units::parse_whole::<u32>, allow_hyphen_values = true)]
    pub cpu: Option<u32>,
    /// Load of each CPU worker, in percent of one CPU (default 100).
    #[arg(long, value_name = "PCT", requires = "cpu", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub percent: Option<f64>,
    /// The old spelling of --percent (deprecated: works for one release, with a warning).
    #[arg(long, value_name = "PCT", requires = "cpu", conflicts_with = "percent", hide = true, value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub cpu_load: Option<f64>,
    /// Allocate this much memory, touch every page and hold it (e.g. 512M, 2G).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size, allow_hyphen_values = true)]
    pub memory: Option<u64>,
    /// Write and fsync this many bytes per second (e.g. 10M or 10M/s) into a directory kchaos makes
    /// under --io-dir (and removes afterwards).
    #[arg(long, value_name = "RATE", requires = "io_dir", value_parser = parse_rate, allow_hyphen_values = true)]
    pub io_write: Option<u64>,
    /// Where the --io-write directory goes: an existing directory on the file system to load.
    #[arg(long, value_name = "DIR", requires = "io_write")]
    pub io_dir: Option<PathBuf>,
    /// Open N file descriptors and hold them (as many as RLIMIT_NOFILE allows; the run says how many).
    #[arg(long, value_name = "N", value_parser = units::parse_whole::<u64>, allow_hyphen_values = true)]
    pub fds: Option<u64>,
    /// Raise the load to its target step by step over this long (e.g. 10s).
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration, allow_hyphen_values = true)]
    pub ramp: Option<Duration>,
    /// Allocate --memory even above the cgroup's memory.max or the host's MemAvailable.
    #[arg(long)]
    pub force: bool,
}

/// CPU workers at a load each.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CpuSpec {
    pub workers: u32,
    /// Percent of one CPU, per worker.
    pub load_pct: f64,
}

/// Paced writes into a directory kchaos makes under `parent`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IoSpec {
    pub bytes_per_s: u64,
    pub parent: PathBuf,
}

/// A checked stress request: every number is in range and every path exists.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StressSpec {
    pub cpu: Option<CpuSpec>,
    pub memory_bytes: Option<u64>,
    pub io: Option<IoSpec>,
    pub fds: Option<u64>,
    #[serde(rename = "ramp_s", serialize_with = "seconds")]
    pub ramp: Option<Duration>,
    pub force: bool,
}

/// More CPU workers than this is a typo, not a test.
pub const MAX_CPU_WORKERS: u32 = 4096;

impl StressSpec {
    /// Checks what needs no target: numbers, the io directory, the fd limit.
    pub fn from_args(args: &StressArgs) -> Result<Self, BadInput> {
        if args.cpu.is_none()
            && args.memory.is_none()
            && args.io_write.is_none()
            && args.fds.is_none()
        {
            return Err(BadInput::new(
                "nothing to stress: give --cpu N, --memory SIZE, --io-write RATE --io-dir DIR or --fds N",
            ));
        }
        let cpu = match args.cpu {
            None => None,
            Some(0) => return Err(BadInput::new("--cpu 0: give at least 1 CPU worker")),
            Some(n) if n > MAX_CPU_WORKERS => {
                return Err(BadInput::new(format!(
                    "--cpu {n}: at most {MAX_CPU_WORKERS} CPU workers"
                )));
            }
            Some(workers) => {
                let load_pct = args.percent.or(args.cpu_load).unwrap_or(100.0);
                if load_pct <= 0.0 {
                    return Err(BadInput::new(
                        "--percent 0 loads nothing: give a percentage above 0, up to 100",
                    ));
                }
                Some(CpuSpec { workers, load_pct })
            }
        };
        if args.memory == Some(0) {
            return Err(BadInput::new("--memory 0: give a size such as 256M"));
        }
        let io = match (args.io_write, &args.io_dir) {
            (Some(0), _) => return Err(BadInput::new("--io-write 0: give a rate such as 10M")),
            (Some(bytes_per_s), Some(dir)) => {
                limits::check_io_dir(dir)?;
                Some(IoSpec {
                    bytes_per_s,
                    parent: dir.clone(),
                })
            }
            (None, None) => None,
            // clap's `requires` makes these pairs; this is for callers that build args by hand.
            _ => {
                return Err(BadInput::new(
                    "--io-write RATE and --io-dir DIR go together",
                ));
            }
        };
        if args.fds == Some(0) {
            return Err(BadInput::new("--fds 0: give a count such as 1000"));
        }
        Ok(Self {
            cpu,
            memory_bytes: args.memory,
            io,
            fds: args.fds,
            ramp: args.ramp.filter(|r| !r.is_zero()),
            force: args.force,
        })
    }

    /// The workers to start, one process each.
    pub fn worker_kinds(&self, io_dir: Option<&std::path::Path>) -> Vec<worker::WorkerKind> {
        let mut kinds = Vec::new();
        if let Some(cpu) = self.cpu {
            for _ in 0..cpu.workers {
                kinds.push(worker::WorkerKind::Cpu { load: cpu.load_pct });
            }
        }
        if let Some(bytes) = self.memory_bytes {
            kinds.push(worker::WorkerKind::Memory { bytes });
        }
        if let (Some(io), Some(dir)) = (&self.io, io_dir) {
            kinds.push(worker::WorkerKind::Io {
                rate: io.bytes_per_s,
                dir: dir.to_owned(),
            });
        }
        if let Some(count) = self.fds {
            kinds.push(worker::WorkerKind::Fds { count });
        }
        kinds
    }

    /// One line for the header and the summary: "2 CPU workers at 50%, 256.0 MiB, ...".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(cpu) = self.cpu {
            parts.push(format!(
                "{} CPU worker{} at {}%",
                cpu.workers,
                if cpu.workers == 1 { "" } else { "s" },
                cpu.load_pct
            ));
        }
        if let Some(bytes) = self.memory_bytes {
            parts.push(format!("{} of memory held", format_size(bytes)));
        }
        if let Some(io) = &self.io {
            parts.push(format!(
                "write+fsync {}/s under {}",
                format_size(io.bytes_per_s),
                io.parent.display()
            ));
        }
        if let Some(n) = self.fds {
            parts.push(format!("{n} fds open"));
        }
        let mut text = parts.join(", ");
        if let Some(ramp) = self.ramp {
            text += &format!(", ramped over {}", units::format_duration(ramp));
        }
        text
    }
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Parses a rate in bytes per second: a size ("10M", "512K", "1000"), optionally with "/s".
pub fn parse_rate(text: &str) -> Result<u64, BadInput> {
    let t = text.trim();
    let size = t.strip_suffix("/s").unwrap_or(t);
    units::parse_size(size).map_err(|_| {
        BadInput::new(format!(
            "'{text}' is not a rate: write bytes per second, e.g. 10M, 512K/s or 1000"
        ))
    })
}

/// Formats bytes the way `parse_size` reads them back: "256.0 MiB", "512 B".
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> StressArgs {
        StressArgs::default()
    }

    #[test]
    fn needs_something_to_stress() {
        let err = StressSpec::from_args(&args()).unwrap_err();
        assert!(err.to_string().contains("nothing to stress"), "{err}");
    }

    #[test]
    fn cpu_defaults_to_full_load_and_refuses_zero() {
        let spec = StressSpec::from_args(&StressArgs {
            cpu: Some(2),
            ..args()
        })
        .unwrap();
        assert_eq!(
            spec.cpu,
            Some(CpuSpec {
                workers: 2,
                load_pct: 100.0
            })
        );
        assert_eq!(spec.worker_kinds(None).len(), 2);
        for bad in [
            StressArgs {
                cpu: Some(0),
                ..args()
            },
            StressArgs {
                cpu: Some(1),
                percent: Some(0.0),
                ..args()
            },
            StressArgs {
                cpu: Some(MAX_CPU_WORKERS + 1),
                ..args()
            },
            StressArgs {
                memory: Some(0),
                ..args()
            },
            StressArgs {
                fds: Some(0),
                ..args()
            },
        ] {
            assert!(StressSpec::from_args(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn io_needs_an_existing_directory() {
        let err = StressSpec::from_args(&StressArgs {
            io_write: Some(1 << 20),
            io_dir: Some("/no/such/dir".into()),
            ..args()
        })
        .unwrap_err();
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
    }

    #[test]
    fn rates_and_sizes() {
        assert_eq!(parse_rate("10M").unwrap(), 10 << 20);
        assert_eq!(parse_rate("512K/s").unwrap(), 512 << 10);
        assert!(parse_rate("fast").unwrap_err().to_string().contains("rate"));
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(256 << 20), "256.0 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }
}
