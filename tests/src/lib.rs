//! What the integration tests share: finding and running kchaos the way a user does (a child process),
//! skipping with a reason, labs and the services in them, temporary files, kernel queries for BPF
//! programs, and reading kchaos's JSON output (traffic results, experiment reports).
//!
//! Each test builds its own lab (`lab::Lab`), which removes itself when dropped, also when an
//! assertion fails.

mod bpf;
pub mod chaostoolkit;
mod host;
mod kchaos;
pub mod lab;
mod netem;
mod scenario;
mod services;
pub mod stats;
mod temp;
pub mod timing;
mod traffic;

pub use bpf::{
    attach_type, attached_programs, cgroup_programs, skb_programs_in_tree, tcx_egress_programs,
};
pub use host::{in_vm, kernel_label, root_or_skip, skip, udp_rate};
pub use kchaos::{RunDir, Running, StopAll, kchaos, run, run_text, run_with};
pub use lab::{no_residue, spawn_in};
pub use netem::Netem;
pub use scenario::{
    net_ramp_scenario, net_totals, probe_count, probe_results, ramp_steps, read_report,
    refused_count, scenario, scenario_vars,
};
pub use services::Service;
pub use temp::{TempDir, TempFile, tag};
pub use traffic::{
    Arrivals, Received, echo_rtts, errno_count, loopback_echo_server, mbit, quantile, rate_between,
    tcp_connect_from, tcp_sink, tcp_sink_log, traffic, udp_echo, udp_echo_report,
};
