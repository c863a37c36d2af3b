//! `kchaos stop`: ends every running kchaos and undoes what a killed one left behind.

use std::time::{Duration, Instant};

use crate::journal::{self, Residue};

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Returns the number of things it could not undo.
pub fn stop() -> usize {
    let records = journal::records();
    if records.is_empty() {
        println!("kchaos stop: nothing running, nothing left behind");
        return 0;
    }
    let mut failures = 0;
    for (path, record) in records {
        if record.pid != std::process::id() && alive(record.pid) {
            println!(
                "kchaos stop: ending kchaos {} (pid {}) with SIGTERM",
                record.command, record.pid
            );
            // SAFETY: plain kill(2).
            unsafe { libc::kill(record.pid as i32, libc::SIGTERM) };
            let start = Instant::now();
            while alive(record.pid) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(record.pid) {
                println!("kchaos stop: pid {} did not end in 5s; SIGKILL", record.pid);
                // SAFETY: plain kill(2).
                unsafe { libc::kill(record.pid as i32, libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // A loader that ended cleanly removed its file; whatever is still listed is residue.
        let residue: Vec<Residue> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<journal::Record>(&bytes)
                .map(|r| r.residue)
                .unwrap_or_default(),
            Err(_) => continue,
        };
        let mut left = Vec::new();
        for r in residue.into_iter().rev() {
            match r.undo() {
                Ok(()) => println!("kchaos stop: undone {}", describe(&r)),
                Err(e) => {
                    eprintln!("kchaos stop: could not undo {}: {e}", describe(&r));
                    left.push(r);
                }
            }
        }
        failures += left.len();
        if left.is_empty() {
            let _ = std::fs::remove_file(&path);
            println!(
                "kchaos stop: kchaos {} (pid {}) is gone and left nothing to undo; record removed",
                record.command, record.pid
            );
        }
    }
    failures
}

fn describe(r: &Residue) -> String {
    match r {
        Residue::Fq(fq) => format!("fq qdisc on {} (netns inode {})", fq.dev, fq.netns.inode),
        Residue::FrozenCgroup { path } => format!("frozen cgroup {} (thawed)", path.display()),
        Residue::Cgroup { path } => format!("cgroup {}", path.display()),
        Residue::Path { path } => format!("{}", path.display()),
    }
}
