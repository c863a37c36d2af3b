//! kchaos: kernel-level fault injection held to one cgroup. The `kchaos` binary is a thin CLI over
//! these modules; the demo, the tests and scenarios use them too.

pub mod bounded_read;
pub mod btf;
pub mod cgroup;
pub mod demo;
pub mod ebpf;
pub mod errno;
pub mod error;
pub mod experiment;
pub mod faults;
pub mod journal;
pub mod lab;
pub mod lifecycle;
pub mod net_command;
pub mod netns;
pub mod probe;
pub mod process_faults;
pub mod procfs;
pub mod qdisc;
pub mod report;
pub mod run_identity;
pub mod runner;
pub mod stop;
pub mod stress;
pub mod stress_command;
pub mod syscall_command;
pub mod syscall_helper;
pub mod targets;
pub mod traffic;
pub mod units;

/// Fails with bad input unless running as root.
pub fn require_root(what: &str) -> Result<(), error::BadInput> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(error::BadInput::new(format!(
            "{what} needs root (it loads eBPF programs and attaches them to cgroups): run it with sudo"
        )));
    }
    Ok(())
}
