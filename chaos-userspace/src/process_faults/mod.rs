//! Process faults on a target cgroup: `kill` signals some or all of its processes, `pause` freezes it
//! for a while (cgroup.freeze) and thaws it.

pub mod kill;
pub mod pause;
pub mod signal;

use std::path::Path;

use crate::{cgroup, error::BadInput};

/// Fails with bad input unless running as root; `because` says what needs it.
pub fn require_root(what: &str, because: &str) -> Result<(), BadInput> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BadInput::new(format!(
            "{what} needs root ({because}): run it with sudo"
        )));
    }
    Ok(())
}

/// True when this process lives in `dir` or a cgroup below it.
pub fn holds_this_process(dir: &Path) -> bool {
    let Ok(mount) = cgroup::v2_mount() else {
        return false;
    };
    cgroup::of_pid(std::process::id())
        .map(|rel| mount.join(rel.trim_start_matches('/')).starts_with(dir))
        .unwrap_or(false)
}
