//! The `stress:` block of a scenario fault: the fields of `kchaos stress`, each checked where it is
//! written.

use crate::{
    error::BadInput,
    experiment::{fields::Ctx, yaml::Node},
    kinds::stress::{MAX_CPU_WORKERS, StressArgs, StressSpec, parse_rate},
    units,
};

pub const FIELDS: &[&str] = &[
    "cpu", "percent", "cpu_load", "memory", "io_write", "io_dir", "fds",
];

/// Reads `stress: {...}`; each error at the field it is about.
pub fn parse(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<StressSpec> {
    let f = ctx.map(node, path, FIELDS)?;
    let before = ctx.errors.len();
    let mut args = StressArgs::default();
    if let Some(n) = f.value("cpu") {
        let p = f.path_of("cpu");
        match ctx.uint(n, &p, u64::from(MAX_CPU_WORKERS)) {
            Some(0) => ctx.err(n.mark, &p, "cpu 0 starts no worker: write 1 or more"),
            v => args.cpu = v.map(|v| v as u32),
        }
    }
    // `cpu_load` is the old name of `percent`, for one release.
    let load_key = ctx.renamed(&f, "percent", "cpu_load");
    if let Some(key) = load_key
        && let Some(n) = f.value(key)
    {
        let p = f.path_of(key);
        if !f.has("cpu") {
            ctx.err(
                n.mark,
                &p,
                format!("{key} needs cpu: N (how many CPU workers)"),
            );
        }
        match ctx.percent(n, &p) {
            Some(v) if v <= 0.0 => ctx.err(
                n.mark,
                &p,
                format!("{key} 0% loads nothing: allowed is above 0, up to 100%"),
            ),
            v => args.percent = v,
        }
    }
    let size = |ctx: &mut Ctx, key: &str, parse: fn(&str) -> Result<u64, BadInput>| {
        let n = f.value(key)?;
        let p = f.path_of(key);
        let t = ctx.text(n, &p)?;
        match parse(&t) {
            Ok(0) => {
                ctx.err(
                    n.mark,
                    &p,
                    format!("{key} 0 does nothing: give more than 0"),
                );
                None
            }
            Ok(v) => Some(v),
            Err(e) => {
                ctx.err(n.mark, &p, e.0);
                None
            }
        }
    };
    args.memory = size(ctx, "memory", units::parse_size);
    args.io_write = size(ctx, "io_write", parse_rate);
    if let Some(n) = f.value("io_dir") {
        args.io_dir = ctx.text(n, &f.path_of("io_dir")).map(Into::into);
    }
    if f.has("io_write") != f.has("io_dir") {
        let key = if f.has("io_write") {
            "io_write"
        } else {
            "io_dir"
        };
        ctx.err(
            f.get(key).map_or(f.mark, |n| n.mark),
            &f.path_of(key),
            "io_write: RATE and io_dir: DIR go together (where the paced writes go)",
        );
    }
    if let Some(n) = f.value("fds") {
        let p = f.path_of("fds");
        match ctx.uint(n, &p, u64::MAX) {
            Some(0) => ctx.err(n.mark, &p, "fds 0 holds nothing: write 1 or more"),
            v => args.fds = v,
        }
    }
    if ramped.iter().any(|p| p == "percent") && args.cpu.is_none() {
        ctx.err(
            f.mark,
            path,
            "a percent ramp needs cpu: N (the CPU workers it loads)",
        );
    }
    if ctx.errors.len() > before {
        return None;
    }
    match StressSpec::from_args(&args) {
        Ok(spec) => Some(spec),
        Err(e) => {
            // The checks across fields speak in flags (--cpu); here they are fields.
            let text =
                e.0.replace("--io-", "io_")
                    .replace("--cpu-", "cpu_")
                    .replace("--", "");
            ctx.err(f.mark, path, text);
            None
        }
    }
}
