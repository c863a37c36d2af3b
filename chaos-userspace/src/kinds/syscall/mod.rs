//! The `syscall` kind: chosen syscalls of the targets fail with a chosen errno, through whichever
//! backend this kernel offers per operation (cgroup hooks, BPF LSM, kprobe + bpf_override_return;
//! kernel side in chaos-ebpf/src/syscall.rs).

pub mod errno;
pub mod fault;
pub mod fmod_ret;
mod yaml;

pub use self::fault::{
    Backend, BackendSupport, OPS, SyscallArgs, SyscallFault, SyscallSpec, auto_backends,
};

use anyhow::Result;

use crate::{
    engine::journal::Journal,
    engine::targets::Target,
    error::BadInput,
    experiment::{fields::Ctx, review::Risk, yaml::Node},
    kind::{Active, Counters, Kind, MetricMap, MonkeyCaps, Unit},
    units::pct,
};

pub const EXAMPLES: &str = "Examples:\n  kchaos syscall --cgroup app --syscall connect --errno ECONNREFUSED --percent 20 --duration 30s\n  \
kchaos syscall --cgroup app --syscall connect,sendmsg --errno ETIMEDOUT --dst 10.0.0.7:5432 --after 10 --max 5\n  \
kchaos syscall --pid 4242 --syscall open --errno EIO --path-prefix /var/lib/app --backend lsm\n\n\
Backends (the loader picks the best this kernel offers; `kchaos probe` says which exist):\n  \
cgroup   connect, bind, sendmsg (unconnected UDP), socket: attached to the target only; any errno (5.18+)\n  \
lsm      connect, bind, accept, sendmsg, recvmsg, socket, open (+ --path-prefix), read, write,\n           \
mkdir, unlink, rename, fork, mmap: needs `bpf` in the LSM list\n  \
kprobe   every operation incl. fsync, via bpf_override_return: needs CONFIG_BPF_KPROBE_OVERRIDE\n  \
fmod_ret the lsm operations through security_* functions, and fsync/fdatasync where the kernel\n           \
lists them for error injection: needs BPF trampolines (never picked by auto; ask with --backend)";

impl Kind for SyscallSpec {
    const YAML_FIELDS: &'static [&'static str] = yaml::FIELDS;
    const NAME: &'static str = "syscall";
    const PARAMS: &'static [(&'static str, Unit)] = &[("percent", Unit::Percent)];
    const MONKEY_TYPES: &'static [&'static str] = &["syscall"];
    const METRICS: &'static [MetricMap] = &[
        MetricMap::counter(
            "op",
            "calls",
            "syscall_calls",
            "Calls of the operation by the target cgroups while the fault's programs ran.",
        ),
        MetricMap::counter(
            "op",
            "matched",
            "syscall_matched",
            "Calls that matched the fault's filter (path prefix, destination, after).",
        ),
        MetricMap::counter(
            "op",
            "injected",
            "syscall_failed",
            "Calls the fault made fail, with the errno label's error.",
        ),
    ];
    type Args = SyscallArgs;
    type Active = SyscallFault;

    fn from_args(args: &SyscallArgs) -> Result<Self, BadInput> {
        SyscallSpec::from_args(args)
    }

    fn from_yaml(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<Self> {
        yaml::parse(ctx, node, path, ramped)
    }

    fn describe(&self) -> String {
        SyscallSpec::describe(self)
    }

    fn check_param(&self, param: &str, value: f64) -> Result<(), String> {
        match param {
            "percent" if (0.0..=100.0).contains(&value) => Ok(()),
            "percent" => Err(format!("{value}% is not allowed: 0 to 100")),
            other => Err(format!(
                "a syscall fault cannot ramp '{other}': allowed is percent"
            )),
        }
    }

    fn prepare_ramp(&mut self, param: &str, start: f64) {
        if param == "percent" {
            self.percent = start;
        }
    }

    fn intensities(&self) -> Vec<(&'static str, f64)> {
        vec![("percent", self.percent)]
    }

    fn overlap_conflict(&self) -> Option<&'static str> {
        Some(
            "two syscall faults on one target at once cannot both attach (the cgroup hooks take one \
             kchaos program each) and would draw each call twice: list every operation in one \
             fault, or move one so they do not overlap",
        )
    }

    fn rollback_advice(&self) -> Option<(Risk, String)> {
        (self.max.is_none() && self.percent >= 100.0).then(|| {
            (
                Risk::Low,
                "every matching call fails and nothing caps how many (no max): the application may \
                 have given up, cached the failure or failed over; kchaos restores the calls, not \
                 the application"
                    .into(),
            )
        })
    }

    /// Connects fail with ECONNREFUSED at 1% to `max_syscall_percent`.
    fn random(
        _monkey_type: &str,
        caps: &MonkeyCaps,
        draw: &mut dyn FnMut() -> f64,
    ) -> Result<Self, BadInput> {
        let p = 1.0 + draw() * (caps.max_syscall_percent - 1.0).max(0.0);
        SyscallSpec::from_args(&SyscallArgs {
            syscalls: vec!["connect".into()],
            errno: "ECONNREFUSED".into(),
            percent: Some((p * 10.0).round() / 10.0),
            ..SyscallArgs::default()
        })
    }

    /// Whether this kernel can serve every operation (probing BPF support needs privileges).
    fn preflight(&self, targets: &[Target]) -> Result<(), BadInput> {
        SyscallFault::preflight(self, targets).map(|_| ())
    }

    /// Odd errno choices, then the backend each operation gets.
    fn plan_lines(&self, targets: &[Target]) -> Vec<String> {
        let mut out: Vec<String> = self.notes.iter().map(|n| format!("note: {n}")).collect();
        for (op, backend) in SyscallFault::preflight(self, targets).unwrap_or_default() {
            let name = OPS.iter().find(|o| o.id == op).map_or("?", |o| o.names[0]);
            out.push(format!("{name}: {backend} backend"));
        }
        out
    }

    fn prepare(&self, targets: &[Target], _journal: &mut Journal) -> Result<SyscallFault> {
        SyscallFault::attach(self.clone(), targets)
    }

    /// The kernel's count of errors it returned.
    fn metric_labels(&self) -> Vec<(String, String)> {
        vec![("errno".into(), self.errno_name.clone())]
    }

    fn injected_events(counters: &Counters) -> u64 {
        counters
            .iter()
            .filter(|(k, _)| k.ends_with(".injected"))
            .map(|(_, v)| v)
            .sum()
    }

    /// "connect calls 100 failed 30 (30.0%) | ...".
    fn live_line(counters: &Counters) -> String {
        let mut ops: Vec<&str> = counters
            .keys()
            .filter_map(|k| k.strip_suffix(".matched"))
            .collect();
        ops.dedup();
        ops.iter()
            .map(|op| {
                let n = |what: &str| counters.get(&format!("{op}.{what}")).copied().unwrap_or(0);
                let (matched, injected) = (n("matched"), n("injected"));
                format!(
                    "{op} calls {matched} failed {injected} ({:.1}%)",
                    pct(injected, matched)
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl Active for SyscallFault {
    fn arm(&mut self, deadline_ns: u64, _journal: &mut Journal) -> Result<()> {
        SyscallFault::arm(self, deadline_ns)
    }

    fn renew(&mut self, deadline_ns: u64) -> Result<()> {
        SyscallFault::arm(self, deadline_ns)
    }

    fn set_param(&mut self, param: &str, value: f64) -> Result<()> {
        match param {
            "percent" => self.set_percent(value.clamp(0.0, 100.0)),
            other => anyhow::bail!("a syscall fault has no parameter '{other}'"),
        }
    }

    /// "connect.calls", "connect.matched", "connect.injected", per operation.
    fn counters(&self) -> Result<Counters> {
        let mut m = Counters::new();
        for t in self.totals()? {
            m.insert(format!("{}.calls", t.op), t.calls);
            m.insert(format!("{}.matched", t.op), t.matched);
            m.insert(format!("{}.injected", t.op), t.injected);
        }
        Ok(m)
    }

    fn attachments(&self) -> Vec<String> {
        self.attachments.clone()
    }

    fn disarm(&mut self, _journal: &mut Journal) -> Result<()> {
        SyscallFault::arm(self, 0)
    }

    fn undo(self: Box<Self>, _journal: &mut Journal) -> Result<()> {
        // Every program hangs on an fd-owned link: dropping the fault detaches them all.
        drop(self);
        Ok(())
    }
}
