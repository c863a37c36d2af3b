//! The lab (`chaos_userspace::lab`: a namespace joined by a veth pair, and a target cgroup), starting
//! processes inside its cgroup, and checking that a run left nothing in it.

use std::{
    path::Path,
    process::{Child, Command},
};

pub use chaos_userspace::lab::*;

/// `argv` as a command that runs inside the cgroup: a shell writes its pid to cgroup.procs, then
/// execs the program, so the program is in the cgroup from its first instruction.
pub fn command_in(cg: &Path, argv: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
            cg.display()
        ))
        .arg("sh")
        .args(argv);
    cmd
}

/// Starts `argv` inside the cgroup (see [`command_in`]).
pub fn spawn_in(cg: &Path, argv: &[&str]) -> Child {
    command_in(cg, argv)
        .spawn()
        .expect("spawning in the cgroup")
}

/// Asserts that nothing of a run is left on the lab: no program attached to its cgroup or the ones
/// below, no process (a probe agent, a worker) in it.
pub fn no_residue(lab: &Lab) {
    assert_eq!(
        crate::skb_programs_in_tree(&lab.cgroup.path),
        0,
        "a program is still attached to the lab"
    );
    let procs = std::fs::read_to_string(lab.cgroup.path.join("cgroup.procs"))
        .expect("reading the lab's cgroup.procs");
    assert!(
        procs.trim().is_empty(),
        "a probe agent outlived the run: {procs}"
    );
}
