//! Rollbacks: the scenario's commands that restore what kchaos cannot (an application's state), run
//! after the faults are gone, each with its timeout, in a process group of its own that is killed at
//! the timeout or when kchaos is told to end; the end of their output goes into the report.

use std::{sync::atomic::AtomicBool, time::Instant};

use crate::{
    experiment::{child, plan, scenario::Rollback},
    report::RollbackRecord,
};

/// The most output a rollback's record keeps (its end).
const RECORD_OUTPUT: usize = 2000;

/// Runs one rollback command with its timeout, or until `cancel`; keeps the end of its output, with
/// how many bytes came before it.
pub fn rollback(r: &Rollback, cancel: &AtomicBool) -> RollbackRecord {
    let start = Instant::now();
    let (exit_code, mut output, mut dropped, note) =
        match child::run(&r.argv, &r.env, r.timeout, true, Some(cancel)) {
            Ok(o) => {
                let note = if o.timed_out {
                    format!(
                        "[killed at its timeout of {}, with its process group]",
                        crate::units::format_duration(r.timeout)
                    )
                } else if o.cancelled {
                    "[killed with its process group: kchaos was told to end]".to_owned()
                } else {
                    String::new()
                };
                (o.code, o.output, o.dropped, note)
            }
            Err(e) => (None, e, 0, String::new()),
        };
    if output.len() > RECORD_OUTPUT {
        let cut = output.len() - RECORD_OUTPUT;
        let cut = (cut..output.len())
            .find(|i| output.is_char_boundary(*i))
            .unwrap_or(output.len());
        dropped += cut as u64;
        output = output[cut..].to_owned();
    }
    if dropped > 0 {
        output = format!("... {dropped} more bytes\n{output}");
    }
    if !note.is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&note);
    }
    RollbackRecord {
        name: r.name.clone(),
        command: plan::shell_words(&r.argv),
        exit_code,
        duration_ms: start.elapsed().as_secs_f64() * 1e3,
        output,
    }
}

/// The record of a rollback not run because kchaos was told to end (`why`) before its turn.
pub fn skipped(r: &Rollback, why: &str) -> RollbackRecord {
    RollbackRecord {
        name: r.name.clone(),
        command: plan::shell_words(&r.argv),
        exit_code: None,
        duration_ms: 0.0,
        output: format!("not run: {why} came before its turn"),
    }
}
