//! Rollbacks: the scenario's commands that restore what kchaos cannot (an application's state), run
//! after the faults are gone, each with its timeout; the end of their output goes into the report.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    experiment::{plan, scenario::Rollback},
    report::RollbackRecord,
};

/// Runs one rollback command with its timeout; keeps the end of its output.
pub fn rollback(r: &Rollback) -> RollbackRecord {
    let start = Instant::now();
    let command = plan::shell_words(&r.argv);
    let record = |exit_code, output: String| RollbackRecord {
        name: r.name.clone(),
        command: command.clone(),
        exit_code,
        duration_ms: start.elapsed().as_secs_f64() * 1e3,
        output,
    };
    let Some((program, args)) = r.argv.split_first() else {
        return record(None, "empty command".into());
    };
    let mut child = match Command::new(program)
        .args(args)
        .envs(&r.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return record(None, format!("starting {program}: {e}")),
    };
    // Read output on threads so a chatty command cannot block on a full pipe.
    let readers: Vec<std::thread::JoinHandle<String>> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    })
    .collect();
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if start.elapsed() >= r.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let mut output: String = readers
        .into_iter()
        .filter_map(|h| h.join().ok())
        .collect::<Vec<_>>()
        .join("");
    if output.len() > 2000 {
        let cut = output.len() - 2000;
        let cut = (cut..output.len())
            .find(|i| output.is_char_boundary(*i))
            .unwrap_or(output.len());
        output = output[cut..].to_owned();
    }
    record(code, output)
}
