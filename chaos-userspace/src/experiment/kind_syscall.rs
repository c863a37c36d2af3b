//! The `syscall` fault kind of scenarios: its YAML fields (those of `kchaos syscall`), the kernel's
//! per-operation counters, and a random draw for the monkey. `kinds.rs` dispatches to it.

use std::collections::BTreeMap;

use anyhow::Result;

use super::{diagnostic::did_you_mean, fields::Ctx, kinds::ActiveFault, yaml::Node};
use crate::{
    errno,
    error::BadInput,
    faults::{
        peers::Peer,
        syscall::{Backend, OPS, SyscallArgs, SyscallFault, SyscallSpec},
    },
    journal::Journal,
};

pub const FIELDS: &[&str] = &[
    "syscalls",
    "errno",
    "percent",
    "path_prefix",
    "dst",
    "after",
    "max",
    "backend",
];

/// The ramp-able parameter: the share of matching calls that fail.
pub const RAMP_PARAMS: &[&str] = &["percent"];

const BACKENDS: &[&str] = &["auto", "cgroup", "lsm", "kprobe"];

fn op_names() -> Vec<&'static str> {
    OPS.iter().flat_map(|o| o.names.iter()).copied().collect()
}

/// Reads `syscall: {...}`; each error at the field it is about.
pub fn parse(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<SyscallSpec> {
    let f = ctx.map(node, path, FIELDS)?;
    let before = ctx.errors.len();
    let mut args = SyscallArgs::default();
    if let Some(n) = ctx.required(
        &f,
        "syscalls",
        "the operations to fail, e.g. syscalls: [connect]",
    ) {
        let p = f.path_of("syscalls");
        let known = op_names();
        for (text, mark) in ctx.strings(n, &p) {
            // `connect,bind` as on the command line, or a YAML list.
            for name in text.split(',').map(|s| s.trim().to_ascii_lowercase()) {
                if name.is_empty() {
                    continue;
                }
                if known.contains(&name.as_str()) {
                    args.syscalls.push(name);
                } else {
                    let hint = did_you_mean(&name, &known)
                        .map(|s| format!(" (did you mean '{s}'?)"))
                        .unwrap_or_default();
                    ctx.err(
                        mark,
                        &p,
                        format!(
                            "unknown syscall '{name}'{hint}: allowed are {}",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(n) = ctx.required(&f, "errno", "the error to return, e.g. errno: ECONNREFUSED") {
        let p = f.path_of("errno");
        if let Some(t) = ctx.text(n, &p) {
            match errno::parse(&t) {
                Ok(_) => args.errno = t,
                Err(_) => {
                    let names: Vec<&str> = errno::ERRNOS.iter().map(|(n, _)| *n).collect();
                    let hint = did_you_mean(&t.to_ascii_uppercase(), &names)
                        .map(|s| format!(" (did you mean '{s}'?)"))
                        .unwrap_or_default();
                    ctx.err(
                        n.mark,
                        &p,
                        format!(
                            "unknown errno '{t}'{hint}: allowed are a number from 1 to 4095 or one of {}",
                            names.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(n) = f.value("percent") {
        args.percent = ctx.percent(n, &f.path_of("percent"));
    }
    if let Some(n) = f.value("path_prefix") {
        args.path_prefix = ctx.text(n, &f.path_of("path_prefix")).map(Into::into);
    }
    if let Some(n) = f.value("dst") {
        let p = f.path_of("dst");
        for (text, mark) in ctx.strings(n, &p) {
            match Peer::parse(&text, "dst", true) {
                Ok(_) => args.dsts.push(text),
                Err(e) => ctx.err(mark, &p, e.0),
            }
        }
    }
    if let Some(n) = f.value("after") {
        args.after = ctx.uint(n, &f.path_of("after"), u64::MAX).unwrap_or(0);
    }
    if let Some(n) = f.value("max") {
        let p = f.path_of("max");
        match ctx.uint(n, &p, u64::MAX) {
            Some(0) => ctx.err(n.mark, &p, "max 0 injects nothing: write 1 or more"),
            v => args.max = v,
        }
    }
    if let Some(n) = f.value("backend") {
        args.backend = match ctx.choice(n, &f.path_of("backend"), BACKENDS)?.as_str() {
            "cgroup" => Backend::Cgroup,
            "lsm" => Backend::Lsm,
            "kprobe" => Backend::Kprobe,
            _ => Backend::Auto,
        };
    }
    if ctx.errors.len() > before {
        return None;
    }
    // A ramp sets the real rate before the fault is armed; until then nothing should fail.
    if ramped.iter().any(|p| p == "percent") && args.percent.is_none() {
        args.percent = Some(0.0);
    }
    match SyscallSpec::from_args(&args) {
        Ok(spec) => Some(spec),
        Err(e) => {
            // The checks across fields speak in flags (--path-prefix); here they are fields.
            let text =
                e.0.replace("--syscall", "syscalls")
                    .replace("--path-prefix", "path_prefix")
                    .replace("--", "");
            ctx.err(f.mark, path, text);
            None
        }
    }
}

pub fn check_param(param: &str, value: f64) -> Result<(), String> {
    match param {
        "percent" if (0.0..=100.0).contains(&value) => Ok(()),
        "percent" => Err(format!("{value}% is not allowed: 0 to 100")),
        other => Err(format!(
            "a syscall fault cannot ramp '{other}': allowed is percent"
        )),
    }
}

/// The kernel's count of errors it returned.
pub fn injected_events(counters: &BTreeMap<String, u64>) -> u64 {
    counters
        .iter()
        .filter(|(k, _)| k.ends_with(".injected"))
        .map(|(_, v)| v)
        .sum()
}

/// Whether this kernel can serve every operation (needs privileges to probe BPF support).
pub fn preflight(spec: &SyscallSpec) -> Result<(), BadInput> {
    SyscallFault::preflight(spec, &[]).map(|_| ())
}

/// A random `syscall` fault for the monkey: connects fail with ECONNREFUSED at 1% to `max_percent`.
pub fn random(max_percent: f64, draw: &mut dyn FnMut() -> f64) -> Result<SyscallSpec, BadInput> {
    let p = 1.0 + draw() * (max_percent - 1.0).max(0.0);
    SyscallSpec::from_args(&SyscallArgs {
        syscalls: vec!["connect".into()],
        errno: "ECONNREFUSED".into(),
        percent: Some((p * 10.0).round() / 10.0),
        ..SyscallArgs::default()
    })
}

impl ActiveFault for SyscallFault {
    fn arm(&mut self, deadline_ns: u64) -> Result<()> {
        SyscallFault::arm(self, deadline_ns)
    }

    fn set_param(&mut self, param: &str, value: f64) -> Result<()> {
        match param {
            "percent" => self.set_percent(value.clamp(0.0, 100.0)),
            other => anyhow::bail!("a syscall fault has no parameter '{other}'"),
        }
    }

    /// "connect.calls", "connect.matched", "connect.injected", per operation.
    fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let mut m = BTreeMap::new();
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

    fn detach(self: Box<Self>, _journal: &mut Journal) -> Result<()> {
        // Every program hangs on an fd-owned link: dropping the fault detaches them all.
        drop(self);
        Ok(())
    }
}
