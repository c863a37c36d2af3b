//! kchaos eBPF programs.
//!
//! Most programs are attached to a target cgroup, so the kernel's own per-cgroup program array is the
//! blast-radius check: a packet of any other cgroup never runs an instruction of ours. Those that
//! can't be (host-wide syscall hooks, the TC program on a device) first look the cgroup up. What each program
//! asks first is whether the fault is armed (its lease in the config map has not run out).
#![no_std]
#![no_main]
// atomic_xadd: exact shared counters for --after/--max (AtomicU64::fetch_add is absent on BPF).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod lease;
mod net;
mod net_tc;
mod packet;
mod syscall;

use aya_ebpf::helpers::bpf_get_prandom_u32;
use chaos_common::net::ALWAYS;

/// True with probability `threshold / 2^32`: 0 never, `ALWAYS` (2^32) or more always, neither of
/// which draws a random number. Every per-packet and per-call rate goes through here.
#[inline(always)]
fn chance(threshold: u64) -> bool {
    // SAFETY: a helper without arguments.
    threshold >= ALWAYS || (threshold != 0 && (unsafe { bpf_get_prandom_u32() } as u64) < threshold)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier proves no path reaches a panic; this only satisfies no_std.
    unsafe { core::hint::unreachable_unchecked() }
}
