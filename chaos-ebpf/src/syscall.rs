//! Syscall faults: make chosen calls of a target fail with a chosen errno.
//!
//! Three families of hooks share one decision (`decide`): cgroup hooks (attached to the target cgroup,
//! so the attachment is the blast-radius check), BPF LSM hooks and syscall kprobes (host-wide, so their
//! first step is `in_targets`: one hash lookup per cgroup level the targets span, however many
//! targets there are).

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::path,
    helpers::{
        bpf_d_path, bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_ktime_get_coarse_ns, bpf_override_return, bpf_set_retval},
    },
    macros::{cgroup_sock, cgroup_sock_addr, kprobe, lsm, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{LsmContext, ProbeContext, SockAddrContext, SockContext},
};
use chaos_common::{
    MAX_TARGET_LEVELS, OP_ACCEPT, OP_BIND, OP_CONNECT, OP_COUNT, OP_FORK, OP_FSYNC, OP_MKDIR,
    OP_MMAP, OP_OPEN, OP_READ, OP_RECVMSG, OP_RENAME, OP_SENDMSG, OP_SOCKET, OP_UNLINK, OP_WRITE,
    PATH_PREFIX_MAX, PEER_KEY_PORT_BITS, PeerKey, SyscallConfig, SyscallCounters, SyscallState,
};

#[map]
static SYS_CONFIG: Array<SyscallConfig> = Array::with_max_entries(1, 0);

/// Target cgroup ids of the host-wide hooks (value unused). The loader sizes it to the targets.
#[map]
static SYS_TARGETS: HashMap<u64, u8> = HashMap::with_max_entries(1, 0);

#[map]
static SYS_STATE: Array<SyscallState> = Array::with_max_entries(1, 0);

#[map]
static SYS_COUNTERS: PerCpuArray<SyscallCounters> = PerCpuArray::with_max_entries(OP_COUNT, 0);

/// `--dst` peers for connect/sendmsg.
#[map]
static SYS_DST: LpmTrie<PeerKey, u8> = LpmTrie::with_max_entries(crate::net::MAX_PEERS, 0);

/// Scratch space for the path of an opened file (too big for the 512-byte stack with the rest).
const PATH_BUF: usize = 256;

/// A CPU's path scratch. The file_open program is sleepable: a run can be preempted between writing
/// the path and comparing it, and another run on the same CPU may write its own path meanwhile. Each
/// run bumps `writers` before it writes and checks it after it compared: if it moved, the bytes may
/// be mixed, and the run takes the safe side (no fault for that call).
#[repr(C)]
pub struct PathScratch {
    writers: u64,
    path: [u8; PATH_BUF],
}

// The prefix compare reads one byte past the prefix: it must stay inside the scratch.
const _: () = assert!(PATH_PREFIX_MAX < PATH_BUF);

#[map]
static SYS_PATH_BUF: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Offset of `f_path` in `struct file`, read by the loader from the running kernel's BTF (Rust eBPF
/// has no CO-RE relocations). A read-only global, so the verifier sees a constant.
#[unsafe(no_mangle)]
static FILE_F_PATH_OFFSET: u64 = 0;

/// `-errno` for the LSM programs, set by the loader (the errno never changes during a run). A
/// read-only global is an exact constant to the verifier, which insists an LSM program returns
/// within [-4095, 0] and cannot follow a value read from a map through LLVM's spills.
#[unsafe(no_mangle)]
static LSM_NEG_ERRNO: u64 = 0;

/// The errno to fail this call with, or None to let it through. `filtered_out` calls are counted but
/// never fail. Counters are per-CPU; only `--after` and `--max` use shared atomic counters (exact
/// across CPUs), and only when they are set.
/// `now` reads CLOCK_MONOTONIC: [`coarse_now`] where the program type may (cgroup hooks: a jiffy's
/// resolution is plenty for the lease and costs no clocksource read), [`fine_now`] elsewhere (6.12
/// refuses bpf_ktime_get_coarse_ns to LSM and tracing programs).
#[inline(always)]
fn decide(
    cfg: &SyscallConfig,
    op: u32,
    filtered_out: bool,
    now: impl FnOnce() -> u64,
) -> Option<u32> {
    if cfg.ops & (1 << op) == 0 || now() >= cfg.deadline_ns {
        return None;
    }
    let counters = SYS_COUNTERS.get_ptr_mut(op)?;
    // SAFETY: this CPU's slot of our own per-CPU map.
    let counters = unsafe { &mut *counters };
    counters.calls += 1;
    if filtered_out {
        return None;
    }
    counters.matched += 1;
    // SAFETY: the map value lives as long as the map; every access to it is atomic. The BPF target has
    // no AtomicU64::fetch_add, so the intrinsic is used. It must be SeqCst: LLVM's BPF backend emits a
    // plain XADD (no BPF_FETCH, the "old value" is garbage) for a Relaxed one. v3 for BPF_FETCH.
    let fetch_add = |counter: *mut u64| unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1)
    };
    if cfg.after != 0 {
        let state = SYS_STATE.get_ptr_mut(0)?;
        if fetch_add(unsafe { &raw mut (*state).matched }) < cfg.after {
            return None;
        }
    }
    if !crate::chance(cfg.threshold) {
        return None;
    }
    if cfg.max != u64::MAX {
        let state = SYS_STATE.get_ptr_mut(0)?;
        if fetch_add(unsafe { &raw mut (*state).injected }) >= cfg.max {
            return None;
        }
    }
    counters.injected += 1;
    Some(cfg.errno)
}

#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn fine_now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Is the current task in (or below) one of the targets? The first step of every host-wide hook:
/// its ancestor at each level the targets occupy, looked up in `SYS_TARGETS` (O(levels), not
/// O(targets)).
#[inline(always)]
fn in_targets(cfg: &SyscallConfig) -> bool {
    if cfg.n_targets == 0 {
        return false;
    }
    let mut i = 0;
    while i < MAX_TARGET_LEVELS {
        let level = cfg.target_min_level + i;
        if level > cfg.target_max_level {
            return false;
        }
        // SAFETY: a helper reading the current task's cgroup ancestry.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        // 0: the task's cgroup is shallower than this level, so deeper levels can't match either.
        if id == 0 {
            return false;
        }
        // SAFETY: a lookup in our own map; the value is not used.
        if unsafe { SYS_TARGETS.get(&id) }.is_some() {
            return true;
        }
        i += 1;
    }
    false
}

/// True when `--dst` is set and the peer is not in it.
#[inline(always)]
fn peer_filtered_out(cfg: &SyscallConfig, addr: [u8; 16], port: u16) -> bool {
    if cfg.dst_port != 0 && cfg.dst_port != port as u32 {
        return true;
    }
    if cfg.dst_filter == 0 {
        return false;
    }
    let key = Key::new(PEER_KEY_PORT_BITS + 128, PeerKey { port: [0, 0], addr });
    SYS_DST.get(&key).is_none()
}

fn v4_mapped(ip_be: u32) -> [u8; 16] {
    let b = ip_be.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
    ]
}

// ---- cgroup hooks: attached to the target cgroup; errno through bpf_set_retval --------------------

const CGROUP_ALLOW: i32 = 1;
const CGROUP_DENY: i32 = 0;

#[inline(always)]
fn cgroup_verdict(errno: Option<u32>) -> i32 {
    match errno {
        Some(e) => {
            // SAFETY: sets the syscall's return value for a denying cgroup program (5.18+).
            unsafe { bpf_set_retval(-(e as i32)) };
            CGROUP_DENY
        }
        None => CGROUP_ALLOW,
    }
}

#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, op: u32, v6: bool) -> i32 {
    let Some(cfg) = SYS_CONFIG.get(0) else {
        return CGROUP_ALLOW;
    };
    // The peer is read only when --dst asks about it.
    let filtered = op != OP_BIND
        && (cfg.dst_filter != 0 || cfg.dst_port != 0)
        && sock_addr_filtered_out(ctx, cfg, v6);
    cgroup_verdict(decide(cfg, op, filtered, coarse_now))
}

#[inline(always)]
fn sock_addr_filtered_out(ctx: &SockAddrContext, cfg: &SyscallConfig, v6: bool) -> bool {
    // SAFETY: the context is valid for the run.
    let sa = unsafe { &*ctx.sock_addr };
    let addr = if v6 {
        let w = sa.user_ip6;
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = w[i].to_ne_bytes();
            a[i * 4] = b[0];
            a[i * 4 + 1] = b[1];
            a[i * 4 + 2] = b[2];
            a[i * 4 + 3] = b[3];
            i += 1;
        }
        a
    } else {
        v4_mapped(sa.user_ip4)
    };
    let port = u16::from_be(sa.user_port as u16);
    peer_filtered_out(cfg, addr, port)
}

#[cgroup_sock_addr(connect4)]
pub fn sys_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, OP_CONNECT, false)
}

#[cgroup_sock_addr(connect6)]
pub fn sys_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, OP_CONNECT, true)
}

#[cgroup_sock_addr(bind4)]
pub fn sys_bind4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, OP_BIND, false)
}

#[cgroup_sock_addr(bind6)]
pub fn sys_bind6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, OP_BIND, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sys_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, OP_SENDMSG, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sys_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, OP_SENDMSG, true)
}

/// Not a fault: the floor `cargo xtask bench syscall` measures beside `sys_connect4` (what a run of
/// any program on this hook costs, bpf_stats' own clock reads included).
#[cgroup_sock_addr(connect4)]
pub fn noop_connect4(_ctx: SockAddrContext) -> i32 {
    CGROUP_ALLOW
}

#[cgroup_sock(sock_create)]
pub fn sys_sock_create(_ctx: SockContext) -> i32 {
    let Some(cfg) = SYS_CONFIG.get(0) else {
        return CGROUP_ALLOW;
    };
    cgroup_verdict(decide(cfg, OP_SOCKET, false, coarse_now))
}

/// The verdict of a host-wide hook (LSM, kprobe, fmod_ret), which runs for every process on the host:
/// the operation check first (one AND), then the target check (a lookup per target level), then the
/// decision.
#[inline(always)]
fn host_wide(op: u32, filtered_out: impl FnOnce(&SyscallConfig) -> bool) -> Option<u32> {
    let cfg = SYS_CONFIG.get(0)?;
    if cfg.ops & (1 << op) == 0 || !in_targets(cfg) {
        return None;
    }
    decide(cfg, op, filtered_out(cfg), fine_now)
}

/// read or write by a `MAY_*` mask (file_permission's), None for neither.
#[inline(always)]
fn rw_op(mask: i32) -> Option<u32> {
    if mask & MAY_WRITE != 0 {
        Some(OP_WRITE)
    } else if mask & MAY_READ != 0 {
        Some(OP_READ)
    } else {
        None
    }
}

// ---- BPF LSM hooks: host-wide; -errno denies ------------------------------------------------------

#[inline(always)]
fn lsm_verdict(op: u32, filtered_out: impl FnOnce(&SyscallConfig) -> bool) -> i32 {
    if host_wide(op, filtered_out).is_none() {
        return 0;
    }
    // SAFETY: a read-only global of this object.
    unsafe { core::ptr::read_volatile(&LSM_NEG_ERRNO) as i32 }
}

#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: [u8; 2],
    flowinfo: u32,
    addr: [u8; 16],
}

/// Peer filter for an LSM hook's `struct sockaddr *` (a kernel copy of what the caller passed).
#[inline(always)]
fn sockaddr_filtered_out(cfg: &SyscallConfig, sa: *const SockaddrIn6) -> bool {
    if cfg.dst_filter == 0 && cfg.dst_port == 0 {
        return false;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    let Ok(s) = (unsafe { bpf_probe_read_kernel(sa) }) else {
        return true;
    };
    let port = u16::from_be_bytes(s.port);
    match s.family {
        2 => {
            // sockaddr_in: the address sits where sin6_flowinfo is.
            peer_filtered_out(cfg, v4_mapped(s.flowinfo), port)
        }
        10 => peer_filtered_out(cfg, s.addr, port),
        _ => true,
    }
}

#[lsm(hook = "socket_connect")]
pub fn lsm_socket_connect(ctx: LsmContext) -> i32 {
    let sa: *const SockaddrIn6 = ctx.arg(1);
    lsm_verdict(OP_CONNECT, |cfg| sockaddr_filtered_out(cfg, sa))
}

#[lsm(hook = "socket_bind")]
pub fn lsm_socket_bind(_ctx: LsmContext) -> i32 {
    lsm_verdict(OP_BIND, |_| false)
}

#[lsm(hook = "socket_accept")]
pub fn lsm_socket_accept(_ctx: LsmContext) -> i32 {
    lsm_verdict(OP_ACCEPT, |_| false)
}

#[lsm(hook = "socket_sendmsg")]
pub fn lsm_socket_sendmsg(_ctx: LsmContext) -> i32 {
    lsm_verdict(OP_SENDMSG, |_| false)
}

#[lsm(hook = "socket_recvmsg")]
pub fn lsm_socket_recvmsg(_ctx: LsmContext) -> i32 {
    lsm_verdict(OP_RECVMSG, |_| false)
}

#[lsm(hook = "socket_create")]
pub fn lsm_socket_create(ctx: LsmContext) -> i32 {
    // Sockets the kernel makes for itself (kern = 1) are not the process's socket() calls.
    let kern: i32 = ctx.arg(3);
    lsm_verdict(OP_SOCKET, |_| kern != 0)
}

/// `open`/`openat`, with `--path-prefix` read through bpf_d_path (allowed in this sleepable hook).
#[lsm(hook = "file_open", sleepable)]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    lsm_verdict(OP_OPEN, |cfg| path_filtered_out(cfg, file))
}

#[inline(always)]
fn path_filtered_out(cfg: &SyscallConfig, file: *const u8) -> bool {
    if cfg.prefix_len == 0 {
        return false;
    }
    let Some(scratch) = SYS_PATH_BUF.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot of our own map, only ever reached through raw pointers with volatile
    // accesses (never a reference): another run on this CPU may write it while this one is
    // preempted, which `writers` detects below.
    let (writers, path) = unsafe {
        (
            core::ptr::addr_of_mut!((*scratch).writers),
            core::ptr::addr_of_mut!((*scratch).path).cast::<u8>(),
        )
    };
    // SAFETY: see above.
    let mine = unsafe { core::ptr::read_volatile(writers) }.wrapping_add(1);
    // SAFETY: see above.
    unsafe { core::ptr::write_volatile(writers, mine) };
    // SAFETY: FILE_F_PATH_OFFSET is the BTF offset of file->f_path; the verifier checks the pointer,
    // and `path` has PATH_BUF bytes.
    let len = unsafe {
        let offset = core::ptr::read_volatile(&FILE_F_PATH_OFFSET);
        let p = file.add(offset as usize) as *mut path;
        bpf_d_path(p, path.cast(), PATH_BUF as u32)
    };
    if len <= 0 {
        return true;
    }
    let outside = outside_prefix(cfg, path);
    // SAFETY: see above. Another run wrote the scratch meanwhile: the bytes compared may be mixed.
    outside || unsafe { core::ptr::read_volatile(writers) } != mine
}

/// True unless the NUL-terminated path at `path` (PATH_BUF bytes) starts with the configured
/// prefix, ending at a path component ("/a/b" is not under "/a/bc").
#[inline(always)]
fn outside_prefix(cfg: &SyscallConfig, path: *const u8) -> bool {
    // SAFETY: every index is below PATH_PREFIX_MAX < PATH_BUF (checked by the loop bound), inside
    // the scratch `path_filtered_out` passes; volatile, as another run may write it (see there).
    let at = |i: usize| unsafe { core::ptr::read_volatile(path.add(i)) };
    let n = cfg.prefix_len as usize;
    let mut i = 0;
    while i < PATH_PREFIX_MAX {
        if i >= n {
            // i >= n >= 1 here, so i - 1 is an index too.
            return !(at(i) == 0 || at(i) == b'/' || at(i - 1) == b'/');
        }
        if at(i) != cfg.prefix[i] {
            return true;
        }
        i += 1;
    }
    false
}

const MAY_WRITE: i32 = 2;
const MAY_READ: i32 = 4;

/// read/write (and the like) on any file the target has open.
#[lsm(hook = "file_permission")]
pub fn lsm_file_permission(ctx: LsmContext) -> i32 {
    let mask: i32 = ctx.arg(1);
    // One verdict call: two inlined ones merge their results through a stack slot, which loses the
    // [-4095, 0] bounds the verifier needs at exit.
    let Some(op) = rw_op(mask) else {
        return 0;
    };
    lsm_verdict(op, |_| false)
}

/// Not faults: the floor of a host-wide hook for `cargo xtask bench syscall`, what any BPF LSM program
/// on these hooks costs every process on the host (the trampoline's entry and exit), the same kinds
/// (sleepable or not) as the fault's own programs.
#[lsm(hook = "socket_connect")]
pub fn noop_sock_conn(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_open", sleepable)]
pub fn noop_file_open(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_permission")]
pub fn noop_file_perm(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_mkdir")]
pub fn lsm_inode_mkdir(_ctx: LsmContext) -> i32 {
    lsm_verdict(OP_MKDIR, |_| false)
}

#[lsm(hook = "inode_unlink")]
pub fn lsm_inode_unlink(_ctx: LsmContext) -> i32 {
    lsm_verdict(OP_UNLINK, |_| false)
}

#[lsm(hook = "inode_rename")]
pub fn lsm_inode_rename(_ctx: LsmContext) -> i32 {
    lsm_verdict(OP_RENAME, |_| false)
}

/// fork/clone: the hook runs in the parent, so the parent's cgroup decides.
#[lsm(hook = "task_alloc")]
pub fn lsm_task_alloc(_ctx: LsmContext) -> i32 {
    lsm_verdict(OP_FORK, |_| false)
}

#[lsm(hook = "mmap_file")]
pub fn lsm_mmap_file(_ctx: LsmContext) -> i32 {
    lsm_verdict(OP_MMAP, |_| false)
}

// ---- kprobes on syscall entry + bpf_override_return (CONFIG_BPF_KPROBE_OVERRIDE) ------------------

#[inline(always)]
fn kprobe_override(ctx: &ProbeContext, op: u32) -> u32 {
    if let Some(e) = host_wide(op, |_| false) {
        // SAFETY: the probe's own registers; the kernel skips the syscall and returns -errno.
        unsafe { bpf_override_return(ctx.regs, (-(e as i64)) as u64) };
    }
    0
}

macro_rules! syscall_kprobe {
    ($name:ident, $op:expr) => {
        #[kprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            kprobe_override(&ctx, $op)
        }
    };
}

syscall_kprobe!(kp_connect, OP_CONNECT);
syscall_kprobe!(kp_bind, OP_BIND);
syscall_kprobe!(kp_accept, OP_ACCEPT);
syscall_kprobe!(kp_sendmsg, OP_SENDMSG);
syscall_kprobe!(kp_recvmsg, OP_RECVMSG);
syscall_kprobe!(kp_socket, OP_SOCKET);
syscall_kprobe!(kp_open, OP_OPEN);
syscall_kprobe!(kp_read, OP_READ);
syscall_kprobe!(kp_write, OP_WRITE);
syscall_kprobe!(kp_fsync, OP_FSYNC);
syscall_kprobe!(kp_mkdir, OP_MKDIR);
syscall_kprobe!(kp_unlink, OP_UNLINK);
syscall_kprobe!(kp_rename, OP_RENAME);
syscall_kprobe!(kp_fork, OP_FORK);
syscall_kprobe!(kp_mmap, OP_MMAP);

// ---- fmod_ret (BPF_MODIFY_RETURN) on security_* functions and error-injectable syscalls ------------
// In an `fexit` section so aya's parser accepts the object, but not through aya's #[fexit] macro,
// whose wrapper always returns 0; loaded only as fmod_ret, by chaos-userspace's
// kinds/syscall/fmod_ret.rs (aya 0.14 has no fmod_ret type). A non-zero return skips the function
// and becomes its return value. The context is the function's arguments, one u64 each.

#[inline(always)]
fn fmod_ret(op: u32, filtered_out: bool) -> i32 {
    host_wide(op, |_| filtered_out).map_or(0, |e| -(e as i32))
}

/// Argument `n` of the traced function.
#[inline(always)]
fn fmod_arg(ctx: *mut c_void, n: usize) -> u64 {
    // SAFETY: a tracing program's context is an array of the function's arguments; the verifier
    // checks `n` against the function's BTF prototype.
    unsafe { *(ctx as *const u64).add(n) }
}

macro_rules! fmod_ret_program {
    ($name:ident, $op:expr) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "fexit")]
        pub fn $name(_ctx: *mut c_void) -> i32 {
            fmod_ret($op, false)
        }
    };
}

fmod_ret_program!(fm_connect, OP_CONNECT);
fmod_ret_program!(fm_bind, OP_BIND);
fmod_ret_program!(fm_accept, OP_ACCEPT);
fmod_ret_program!(fm_sendmsg, OP_SENDMSG);
fmod_ret_program!(fm_recvmsg, OP_RECVMSG);
fmod_ret_program!(fm_open, OP_OPEN);
fmod_ret_program!(fm_fsync, OP_FSYNC);
fmod_ret_program!(fm_mkdir, OP_MKDIR);
fmod_ret_program!(fm_unlink, OP_UNLINK);
fmod_ret_program!(fm_rename, OP_RENAME);
fmod_ret_program!(fm_fork, OP_FORK);
fmod_ret_program!(fm_mmap, OP_MMAP);

/// security_socket_create(family, type, protocol, kern): the kernel's own sockets are not the
/// process's socket() calls.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fexit")]
pub fn fm_socket(ctx: *mut c_void) -> i32 {
    let kern = fmod_arg(ctx, 3) as i32;
    fmod_ret(OP_SOCKET, kern != 0)
}

/// security_file_permission(file, mask): read or write by the mask.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fexit")]
pub fn fm_file_permission(ctx: *mut c_void) -> i32 {
    let mask = fmod_arg(ctx, 1) as i32;
    let Some(op) = rw_op(mask) else {
        return 0;
    };
    fmod_ret(op, false)
}
