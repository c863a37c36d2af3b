//! What the fault kinds share: the targets (cgroups), cgroup files, loading eBPF and reading BTF, what
//! the kernel offers, qdiscs and network namespaces, /proc, and how a run ends (signals, the lease).

pub mod btf;
pub mod capabilities;
pub mod cgroup;
pub mod containers;
pub mod ebpf;
pub mod fds;
pub mod journal;
pub mod lifecycle;
pub mod netns;
pub mod pidfd;
pub mod pods;
pub mod procfs;
pub mod qdisc;
pub mod rtnl;
pub mod run_identity;
pub mod targets;
