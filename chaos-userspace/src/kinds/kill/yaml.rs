//! The `kill:` block of a scenario fault: `signal`, and `count` or `all`.

use super::{
    KillSpec,
    signal::{self, Signal},
    signal_processes::Victims,
};
use crate::experiment::{
    fields::Ctx,
    yaml::{Node, Value},
};

pub const FIELDS: &[&str] = &["signal", "count", "all"];

/// Reads `kill: {signal, count | all}`; each error at the field it is about.
pub fn parse(ctx: &mut Ctx, node: &Node, path: &str) -> Option<KillSpec> {
    // A bare `kill:` is one random process, SIGKILL.
    if matches!(node.value, Value::Null) {
        return Some(KillSpec {
            signal: Signal::KILL,
            victims: Victims::Count(1),
        });
    }
    let f = ctx.map(node, path, FIELDS)?;
    let before = ctx.errors.len();
    let mut spec = KillSpec {
        signal: Signal::KILL,
        victims: Victims::Count(1),
    };
    if let Some(n) = f.value("signal") {
        let p = f.path_of("signal");
        if let Some(t) = ctx.text(n, &p) {
            match signal::parse_signal(&t) {
                Ok(s) => spec.signal = s,
                Err(e) => ctx.err(n.mark, &p, e.0),
            }
        }
    }
    if let Some(n) = f.value("count") {
        let p = f.path_of("count");
        match ctx.uint(n, &p, u64::from(u32::MAX)) {
            Some(0) => ctx.err(
                n.mark,
                &p,
                "count 0 signals nobody: write 1 or more, or all: true",
            ),
            Some(v) => spec.victims = Victims::Count(v as usize),
            None => {}
        }
    }
    if let Some(n) = f.value("all") {
        let p = f.path_of("all");
        if ctx.boolean(n, &p) == Some(true) {
            if f.has("count") {
                ctx.err(
                    n.mark,
                    &p,
                    "all: true and count go against each other: give one of them",
                );
            }
            spec.victims = Victims::All;
        }
    }
    (ctx.errors.len() == before).then_some(spec)
}
