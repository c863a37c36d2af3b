//! kchaos eBPF programs.
//!
//! Every program is attached to a target cgroup, so the kernel's own per-cgroup program array is the
//! blast-radius check: a packet of any other cgroup never runs an instruction of ours. What each program
//! asks first is whether the fault is armed (its lease in the config map has not run out).
#![no_std]
#![no_main]
// atomic_xadd: exact shared counters for --after/--max (AtomicU64::fetch_add is absent on BPF).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod net;
mod packet;
mod syscall;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier proves no path reaches a panic; this only satisfies no_std.
    unsafe { core::hint::unreachable_unchecked() }
}
