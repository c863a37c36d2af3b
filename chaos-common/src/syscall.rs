//! Syscall faults: which operations fail, with which errno, how often; the counters the kernel writes.

/// Operations a syscall fault can fail (bit positions in `SyscallConfig::ops`, counter indices).
pub const OP_CONNECT: u32 = 0;
pub const OP_BIND: u32 = 1;
pub const OP_ACCEPT: u32 = 2;
/// send, sendto, sendmsg, and write on a socket.
pub const OP_SENDMSG: u32 = 3;
/// recv, recvfrom, recvmsg, and read on a socket.
pub const OP_RECVMSG: u32 = 4;
/// socket() itself.
pub const OP_SOCKET: u32 = 5;
/// open, openat (honours `--path-prefix`).
pub const OP_OPEN: u32 = 6;
pub const OP_READ: u32 = 7;
pub const OP_WRITE: u32 = 8;
pub const OP_FSYNC: u32 = 9;
pub const OP_MKDIR: u32 = 10;
pub const OP_UNLINK: u32 = 11;
pub const OP_RENAME: u32 = 12;
/// fork, vfork, clone, clone3.
pub const OP_FORK: u32 = 13;
pub const OP_MMAP: u32 = 14;
/// Number of operations (size of the counters array).
pub const OP_COUNT: u32 = 15;

/// Most cgroup levels between the shallowest and the deepest target (the host-wide programs probe
/// the task's ancestor at each level in that range: a bounded loop for the verifier).
pub const MAX_TARGET_LEVELS: u32 = 32;
/// Longest `--path-prefix`, in bytes.
pub const PATH_PREFIX_MAX: usize = 128;

/// The single entry of the `SYS_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallConfig {
    /// CLOCK_MONOTONIC ns after which nothing is injected (the loader's lease); 0 = not armed.
    pub deadline_ns: u64,
    /// Fail when `bpf_get_prandom_u32() < threshold` (2^32 = always).
    pub threshold: u64,
    /// Let the first `after` matching calls through.
    pub after: u64,
    /// Inject at most this many errors (u64::MAX = no limit).
    pub max: u64,
    /// Bit `1 << OP_*` for each operation to fail.
    pub ops: u64,
    /// The positive errno to return.
    pub errno: u32,
    /// Entries used in `target_ids`/`target_levels`.
    pub n_targets: u32,
    /// Only socket calls whose peer is in `SYS_DST` (1) or any (0).
    pub dst_filter: u32,
    /// Only socket calls to this peer port (0 = any).
    pub dst_port: u32,
    /// Bytes used in `prefix` (0 = any path).
    pub prefix_len: u32,
    /// Target cgroups for the host-wide hooks (LSM, kprobe) are the keys of the `SYS_TARGETS` hash;
    /// the current task is a target when its ancestor (bpf_get_current_ancestor_cgroup_id) at some
    /// level from `target_min_level` to `target_max_level` is one of them, which also covers cgroups
    /// created below a target later. At most `MAX_TARGET_LEVELS` lookups, however many targets.
    pub target_min_level: u32,
    pub target_max_level: u32,
    pub _pad: u32,
    /// `--path-prefix`: opens of paths under it only.
    pub prefix: [u8; PATH_PREFIX_MAX],
}

impl Default for SyscallConfig {
    fn default() -> Self {
        Self {
            deadline_ns: 0,
            threshold: 0,
            after: 0,
            max: u64::MAX,
            ops: 0,
            errno: 0,
            n_targets: 0,
            dst_filter: 0,
            dst_port: 0,
            prefix_len: 0,
            target_min_level: 0,
            target_max_level: 0,
            _pad: 0,
            prefix: [0; PATH_PREFIX_MAX],
        }
    }
}

/// Shared (not per-CPU) so `--after` and `--max` are exact across CPUs: updated with atomic adds, and
/// only when `--after`/`--max` are set (a shared cache line costs every CPU that touches it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallState {
    /// Matching calls so far (the `--after` count).
    pub matched: u64,
    /// Errors granted so far (the `--max` count; may pass max by the calls that were refused).
    pub injected: u64,
}

/// Per-operation, per-CPU counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct SyscallCounters {
    /// Calls of a target that reached the program while armed.
    pub calls: u64,
    /// Of those, calls that passed the filters (`--dst`, `--path-prefix`).
    pub matched: u64,
    /// Calls that were made to fail.
    pub injected: u64,
}

impl SyscallCounters {
    pub fn accumulate(&mut self, other: &SyscallCounters) {
        self.calls += other.calls;
        self.matched += other.matched;
        self.injected += other.injected;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, integers and byte arrays only, no padding.
    unsafe impl aya::Pod for super::SyscallConfig {}
    unsafe impl aya::Pod for super::SyscallState {}
    unsafe impl aya::Pod for super::SyscallCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<SyscallConfig>(), 5 * 8 + 8 * 4 + PATH_PREFIX_MAX);
        assert_eq!(size_of::<SyscallState>(), 16);
        assert_eq!(size_of::<SyscallCounters>(), 24);
        const { assert!(OP_COUNT <= 64) };
    }
}
