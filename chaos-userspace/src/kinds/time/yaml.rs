//! The `time:` block of a scenario fault: `offset`, `drift`, `clocks`.

use super::{TimeSpec, check_drift, parse_clocks, parse_offset};
use crate::experiment::{fields::Ctx, yaml::Node};

pub const FIELDS: &[&str] = &["offset", "drift", "clocks"];

/// Reads `time: {offset, drift, clocks}`; each error at the field it is about. A ramp of `offset`
/// stands in for the field.
pub fn parse(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<TimeSpec> {
    let f = ctx.map(node, path, FIELDS)?;
    let before = ctx.errors.len();
    let mut spec = TimeSpec {
        offset_ns: 0,
        drift_ppm: 0,
        clocks: vec!["realtime".into()],
    };
    if let Some(n) = f.value("offset") {
        let p = f.path_of("offset");
        if let Some(t) = ctx.text(n, &p) {
            match parse_offset(&t) {
                Ok(v) => spec.offset_ns = v,
                Err(e) => ctx.err(n.mark, &p, e.0.replacen("--offset", "offset", 1)),
            }
        }
    }
    if let Some(n) = f.value("drift") {
        let p = f.path_of("drift");
        if let Some(v) = ctx.int(n, &p) {
            match check_drift(v) {
                Ok(v) => spec.drift_ppm = v,
                Err(e) => ctx.err(n.mark, &p, e.0.replacen("--drift", "drift", 1)),
            }
        }
    }
    if !f.has("offset") && !f.has("drift") && !ramped.iter().any(|r| r == "offset") {
        ctx.err(
            f.mark,
            path,
            "give offset (e.g. offset: -90d) or drift (ppm, e.g. drift: 500), or ramp offset",
        );
    }
    if let Some(n) = f.value("clocks") {
        let p = f.path_of("clocks");
        let names: Vec<String> = ctx
            .strings(n, &p)
            .into_iter()
            .flat_map(|(t, _)| t.split(',').map(str::to_owned).collect::<Vec<_>>())
            .collect();
        match parse_clocks(&names) {
            Ok(c) => spec.clocks = c,
            Err(e) => ctx.err(n.mark, &p, e.0.replacen("--clock", "clocks", 1)),
        }
    }
    (ctx.errors.len() == before).then_some(spec)
}
