//! The `syscall:` block of a scenario fault: the fields of `kchaos syscall`, each checked where it is
//! written.

use super::{Backend, SyscallArgs, SyscallSpec, errno, fault::op_names};
use crate::{
    experiment::{diagnostic::did_you_mean, fields::Ctx, yaml::Node},
    kinds::net::peers::Peer,
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

const BACKENDS: &[&str] = &["auto", "cgroup", "lsm", "kprobe"];

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
                    let names = errno::names();
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
