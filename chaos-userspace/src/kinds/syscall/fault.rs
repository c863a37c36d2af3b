//! Syscall faults on target cgroups (kernel side: chaos-ebpf/src/syscall.rs).
//!
//! Each operation is served by the best backend this kernel offers: cgroup hooks (attached to the
//! target, zero cost for everything else), BPF LSM (host-wide hooks that check the target first), or
//! a kprobe on the syscall with bpf_override_return (CONFIG_BPF_KPROBE_OVERRIDE).

use std::{fmt, os::fd::AsFd as _, path::PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    Btf, Ebpf,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, KProbe, Lsm},
};
use chaos_common::{
    OP_ACCEPT, OP_BIND, OP_CONNECT, OP_FORK, OP_FSYNC, OP_MKDIR, OP_MMAP, OP_OPEN, OP_READ,
    OP_RECVMSG, OP_RENAME, OP_SENDMSG, OP_SOCKET, OP_UNLINK, OP_WRITE, PATH_PREFIX_MAX, PeerKey,
    SyscallConfig, SyscallCounters, percent_to_threshold,
};

use crate::kinds::net::peers::Peer;
use crate::{
    engine::capabilities::{self, Capabilities, Verdict},
    engine::targets::Target,
    error::BadInput,
    kinds::syscall::errno,
    units,
};

/// Where an operation's error comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The best one this kernel offers, per operation (cgroup, then lsm, then kprobe).
    #[default]
    Auto,
    /// cgroup_sock_addr / cgroup_sock hooks on the target: connect, bind, sendmsg (UDP), socket.
    Cgroup,
    /// BPF LSM hooks (needs `bpf` in the kernel's LSM list).
    Lsm,
    /// fmod_ret (BPF trampolines) on the security_* functions the LSM hooks sit in, and on fsync
    /// where the kernel lists syscalls for error injection; never picked by `auto`.
    #[value(name = "fmod_ret", alias = "fmod-ret")]
    FmodRet,
    /// kprobe on the syscall + bpf_override_return (CONFIG_BPF_KPROBE_OVERRIDE).
    Kprobe,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Backend::Auto => "auto",
            Backend::Cgroup => "cgroup",
            Backend::Lsm => "lsm",
            Backend::FmodRet => "fmod_ret",
            Backend::Kprobe => "kprobe",
        };
        f.write_str(s)
    }
}

/// One operation: its names, the programs of each backend, errnos its man page lists.
pub struct OpInfo {
    pub id: u32,
    pub names: &'static [&'static str],
    pub cgroup: &'static [&'static str],
    pub lsm: &'static [(&'static str, &'static str)],
    /// (program, syscalls it is attached to).
    pub kprobe: (&'static str, &'static [&'static str]),
    /// (program, kernel function) pairs of the fmod_ret backend: a `security_*` function, or
    /// `sys:NAME` for the syscall itself (on the error-injection list only where the kernel has
    /// CONFIG_FUNCTION_ERROR_INJECTION).
    pub fmod_ret: &'static [(&'static str, &'static str)],
    pub sensible: &'static [i32],
}

use libc::*;

/// Every operation kchaos can fail, and how.
pub const OPS: &[OpInfo] = &[
    OpInfo {
        id: OP_CONNECT,
        names: &["connect"],
        cgroup: &["sys_connect4", "sys_connect6"],
        lsm: &[("lsm_socket_connect", "socket_connect")],
        kprobe: ("kp_connect", &["connect"]),
        fmod_ret: &[("fm_connect", "security_socket_connect")],
        sensible: &[
            ECONNREFUSED,
            ETIMEDOUT,
            ENETUNREACH,
            EHOSTUNREACH,
            EACCES,
            EPERM,
            EADDRNOTAVAIL,
            EAGAIN,
            ECONNRESET,
            EINTR,
            ENOBUFS,
            EINPROGRESS,
        ],
    },
    OpInfo {
        id: OP_BIND,
        names: &["bind"],
        cgroup: &["sys_bind4", "sys_bind6"],
        lsm: &[("lsm_socket_bind", "socket_bind")],
        kprobe: ("kp_bind", &["bind"]),
        fmod_ret: &[("fm_bind", "security_socket_bind")],
        sensible: &[EADDRINUSE, EADDRNOTAVAIL, EACCES, EPERM, EINVAL, ENOMEM],
    },
    OpInfo {
        id: OP_ACCEPT,
        names: &["accept", "accept4"],
        cgroup: &[],
        lsm: &[("lsm_socket_accept", "socket_accept")],
        kprobe: ("kp_accept", &["accept", "accept4"]),
        fmod_ret: &[("fm_accept", "security_socket_accept")],
        sensible: &[
            EAGAIN,
            ECONNABORTED,
            EINTR,
            EMFILE,
            ENFILE,
            ENOBUFS,
            ENOMEM,
            EPERM,
        ],
    },
    OpInfo {
        id: OP_SENDMSG,
        names: &["sendmsg", "sendto", "send"],
        cgroup: &["sys_sendmsg4", "sys_sendmsg6"],
        lsm: &[("lsm_socket_sendmsg", "socket_sendmsg")],
        kprobe: ("kp_sendmsg", &["sendto", "sendmsg"]),
        fmod_ret: &[("fm_sendmsg", "security_socket_sendmsg")],
        sensible: &[
            EAGAIN,
            ECONNRESET,
            EPIPE,
            ENOBUFS,
            ENOMEM,
            EINTR,
            EMSGSIZE,
            EACCES,
            EPERM,
            ENETUNREACH,
            EHOSTUNREACH,
            ECONNREFUSED,
        ],
    },
    OpInfo {
        id: OP_RECVMSG,
        names: &["recvmsg", "recvfrom", "recv"],
        cgroup: &[],
        lsm: &[("lsm_socket_recvmsg", "socket_recvmsg")],
        kprobe: ("kp_recvmsg", &["recvfrom", "recvmsg"]),
        fmod_ret: &[("fm_recvmsg", "security_socket_recvmsg")],
        sensible: &[
            EAGAIN,
            ECONNRESET,
            ECONNREFUSED,
            EINTR,
            ENOMEM,
            ENOTCONN,
            ETIMEDOUT,
        ],
    },
    OpInfo {
        id: OP_SOCKET,
        names: &["socket"],
        cgroup: &["sys_sock_create"],
        lsm: &[("lsm_socket_create", "socket_create")],
        kprobe: ("kp_socket", &["socket"]),
        fmod_ret: &[("fm_socket", "security_socket_create")],
        sensible: &[
            EACCES,
            EAFNOSUPPORT,
            EMFILE,
            ENFILE,
            ENOBUFS,
            ENOMEM,
            EPROTONOSUPPORT,
            EPERM,
        ],
    },
    OpInfo {
        id: OP_OPEN,
        names: &["open", "openat"],
        cgroup: &[],
        lsm: &[("lsm_file_open", "file_open")],
        kprobe: ("kp_open", &["openat", "open"]),
        fmod_ret: &[("fm_open", "security_file_open")],
        sensible: &[
            ENOENT,
            EACCES,
            EPERM,
            EIO,
            ENOSPC,
            EMFILE,
            ENFILE,
            ENOMEM,
            EROFS,
            ELOOP,
            ENAMETOOLONG,
            EINTR,
            EDQUOT,
            ETXTBSY,
            EAGAIN,
        ],
    },
    OpInfo {
        id: OP_READ,
        names: &["read"],
        cgroup: &[],
        lsm: &[("lsm_file_permission", "file_permission")],
        kprobe: ("kp_read", &["read", "pread64", "readv"]),
        fmod_ret: &[("fm_file_permission", "security_file_permission")],
        sensible: &[
            EIO, EAGAIN, EINTR, EBADF, EFAULT, EINVAL, EISDIR, ECONNRESET, ENOMEM,
        ],
    },
    OpInfo {
        id: OP_WRITE,
        names: &["write"],
        cgroup: &[],
        lsm: &[("lsm_file_permission", "file_permission")],
        kprobe: ("kp_write", &["write", "pwrite64", "writev"]),
        fmod_ret: &[("fm_file_permission", "security_file_permission")],
        sensible: &[
            EIO, ENOSPC, EDQUOT, EAGAIN, EINTR, EFBIG, EPIPE, EBADF, EROFS, ECONNRESET, EPERM,
        ],
    },
    OpInfo {
        id: OP_FSYNC,
        names: &["fsync", "fdatasync"],
        cgroup: &[],
        lsm: &[],
        kprobe: ("kp_fsync", &["fsync", "fdatasync"]),
        fmod_ret: &[("fm_fsync", "sys:fsync"), ("fm_fsync", "sys:fdatasync")],
        sensible: &[EIO, ENOSPC, EDQUOT, EROFS, EINVAL, EBADF, EINTR],
    },
    OpInfo {
        id: OP_MKDIR,
        names: &["mkdir", "mkdirat"],
        cgroup: &[],
        lsm: &[("lsm_inode_mkdir", "inode_mkdir")],
        kprobe: ("kp_mkdir", &["mkdir", "mkdirat"]),
        fmod_ret: &[("fm_mkdir", "security_inode_mkdir")],
        sensible: &[
            EACCES, EEXIST, ENOSPC, EDQUOT, EROFS, ENOENT, EPERM, EMLINK, EIO, ENOMEM,
        ],
    },
    OpInfo {
        id: OP_UNLINK,
        names: &["unlink", "unlinkat"],
        cgroup: &[],
        lsm: &[("lsm_inode_unlink", "inode_unlink")],
        kprobe: ("kp_unlink", &["unlink", "unlinkat"]),
        fmod_ret: &[("fm_unlink", "security_inode_unlink")],
        sensible: &[EACCES, EBUSY, EIO, ENOENT, EPERM, EROFS, ENOMEM],
    },
    OpInfo {
        id: OP_RENAME,
        names: &["rename", "renameat", "renameat2"],
        cgroup: &[],
        lsm: &[("lsm_inode_rename", "inode_rename")],
        kprobe: ("kp_rename", &["rename", "renameat", "renameat2"]),
        fmod_ret: &[("fm_rename", "security_inode_rename")],
        sensible: &[
            EACCES, EBUSY, EDQUOT, EEXIST, ENOTEMPTY, EIO, ENOSPC, EROFS, EXDEV, EPERM,
        ],
    },
    OpInfo {
        id: OP_FORK,
        names: &["fork", "vfork", "clone", "clone3"],
        cgroup: &[],
        lsm: &[("lsm_task_alloc", "task_alloc")],
        kprobe: ("kp_fork", &["clone", "clone3", "fork", "vfork"]),
        fmod_ret: &[("fm_fork", "security_task_alloc")],
        sensible: &[EAGAIN, ENOMEM, EPERM, ENOSPC],
    },
    OpInfo {
        id: OP_MMAP,
        names: &["mmap"],
        cgroup: &[],
        lsm: &[("lsm_mmap_file", "mmap_file")],
        kprobe: ("kp_mmap", &["mmap"]),
        fmod_ret: &[("fm_mmap", "security_mmap_file")],
        sensible: &[ENOMEM, EACCES, EAGAIN, EPERM, ENFILE, ENODEV, EOVERFLOW],
    },
];

/// The kprobe target of a syscall on this architecture.
fn syscall_symbol(name: &str) -> String {
    let prefix = if cfg!(target_arch = "aarch64") {
        "__arm64_sys_"
    } else {
        "__x64_sys_"
    };
    format!("{prefix}{name}")
}

/// `kchaos syscall` options.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SyscallArgs {
    /// Operations to fail, comma-separated: connect, bind, accept, sendmsg (sendto, send), recvmsg
    /// (recvfrom, recv), socket, open (openat), read, write, fsync, mkdir, unlink, rename, fork (clone),
    /// mmap.
    #[arg(
        long = "syscall",
        value_name = "NAME[,NAME...]",
        value_delimiter = ',',
        required = true,
        value_parser = crate::listed::syscall(),
        hide_possible_values = true
    )]
    pub syscalls: Vec<String>,
    /// The error to return: a name (ECONNREFUSED, EIO, ENOSPC, ...) or a number.
    #[arg(long, value_name = "ERRNO", allow_hyphen_values = true, value_parser = crate::listed::errno(), hide_possible_values = true)]
    pub errno: String,
    /// Fail each matching call with this probability, in percent (default 100).
    #[arg(long, value_name = "PCT", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub percent: Option<f64>,
    /// Only opens of files under this directory (open/openat; lsm backend).
    #[arg(long, value_name = "DIR")]
    pub path_prefix: Option<PathBuf>,
    /// Only socket calls to these peers: CIDR[:PORT], repeatable (connect, sendmsg).
    #[arg(long = "dst", value_name = "CIDR[:PORT]")]
    pub dsts: Vec<String>,
    /// Let the first N matching calls succeed.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = units::parse_whole::<u64>, allow_hyphen_values = true)]
    pub after: u64,
    /// Inject at most N errors, then let every call through.
    #[arg(long, value_name = "N", value_parser = units::parse_whole::<u64>, allow_hyphen_values = true)]
    pub max: Option<u64>,
    /// Which mechanism fails the calls.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
}

/// A validated syscall fault.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SyscallSpec {
    pub ops: Vec<u32>,
    pub op_names: Vec<&'static str>,
    pub errno: i32,
    pub errno_name: String,
    pub percent: f64,
    pub path_prefix: Option<PathBuf>,
    pub dsts: Vec<Peer>,
    pub after: u64,
    pub max: Option<u64>,
    pub backend: Backend,
    /// Warnings about errnos the man pages don't list for an operation.
    pub notes: Vec<String>,
}

/// Every operation name --syscall takes (aliases included), for completions and lists.
pub fn op_names() -> Vec<&'static str> {
    OPS.iter().flat_map(|o| o.names.iter()).copied().collect()
}

fn op_by_name(name: &str) -> Option<&'static OpInfo> {
    OPS.iter().find(|o| o.names.contains(&name))
}

impl SyscallSpec {
    pub fn from_args(a: &SyscallArgs) -> Result<Self, BadInput> {
        let errno = errno::parse(&a.errno)?;
        let mut ops = Vec::new();
        let mut op_names = Vec::new();
        for name in &a.syscalls {
            let name = name.trim().to_ascii_lowercase();
            let op = op_by_name(&name).ok_or_else(|| {
                let names = self::op_names();
                BadInput::new(format!(
                    "--syscall {name}: unknown{}; allowed are {}",
                    crate::error::hint(&name, &names),
                    names.join(", ")
                ))
            })?;
            if !ops.contains(&op.id) {
                ops.push(op.id);
                op_names.push(op.names[0]);
            }
        }
        let notes = ops
            .iter()
            .filter_map(|&id| OPS.iter().find(|o| o.id == id))
            .filter(|o| !o.sensible.contains(&errno))
            .map(|o| {
                format!(
                    "{} is not an error {}() reports in practice (its man page lists others)",
                    errno::name(errno),
                    o.names[0]
                )
            })
            .collect();
        let dsts = a
            .dsts
            .iter()
            .map(|d| Peer::parse(d, "--dst", true))
            .collect::<Result<Vec<_>, _>>()?;
        let ports: Vec<u16> = dsts.iter().filter_map(|p| p.port).collect();
        if ports.windows(2).any(|w| w[0] != w[1])
            || (!ports.is_empty() && ports.len() != dsts.len())
        {
            return Err(BadInput::new(
                "--dst: give every peer the same port, or none",
            ));
        }
        if !dsts.is_empty() && !ops.iter().any(|&o| o == OP_CONNECT || o == OP_SENDMSG) {
            return Err(BadInput::new(
                "--dst narrows connect and sendmsg only; add one of them to --syscall",
            ));
        }
        if let Some(p) = &a.path_prefix {
            if !ops.contains(&OP_OPEN) {
                return Err(BadInput::new(
                    "--path-prefix narrows open/openat only; add open to --syscall",
                ));
            }
            if !p.is_absolute() || p.as_os_str().len() >= PATH_PREFIX_MAX {
                return Err(BadInput::new(format!(
                    "--path-prefix {}: give an absolute directory shorter than {PATH_PREFIX_MAX} bytes",
                    p.display()
                )));
            }
        }
        Ok(Self {
            ops,
            op_names,
            errno,
            errno_name: errno::name(errno),
            percent: a.percent.unwrap_or(100.0),
            path_prefix: a.path_prefix.clone(),
            dsts,
            after: a.after,
            max: a.max,
            backend: a.backend,
            notes,
        })
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} fail with {} ({}%)",
            self.op_names.join(","),
            self.errno_name,
            self.percent
        );
        if let Some(p) = &self.path_prefix {
            s += &format!(" under {}", p.display());
        }
        if !self.dsts.is_empty() {
            s += &format!(
                " to {}",
                self.dsts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        if self.after > 0 {
            s += &format!(" after {} calls", self.after);
        }
        if let Some(m) = self.max {
            s += &format!(", at most {m}");
        }
        s
    }

    /// The kernel's view; `targets` are (cgroup id, level below the cgroup2 root) pairs.
    fn config(&self, targets: &[(u64, u32)]) -> SyscallConfig {
        let mut cfg = SyscallConfig {
            threshold: percent_to_threshold(self.percent),
            after: self.after,
            max: self.max.unwrap_or(u64::MAX),
            ops: self.ops.iter().fold(0, |m, &o| m | (1u64 << o)),
            errno: self.errno as u32,
            n_targets: targets.len() as u32,
            target_min_level: targets.iter().map(|&(_, l)| l).min().unwrap_or(0),
            target_max_level: targets.iter().map(|&(_, l)| l).max().unwrap_or(0),
            dst_filter: u32::from(!self.dsts.is_empty()),
            dst_port: self.dsts.first().and_then(|p| p.port).map_or(0, u32::from),
            ..Default::default()
        };
        if let Some(p) = &self.path_prefix {
            let bytes = p.as_os_str().as_encoded_bytes();
            let bytes = if bytes.len() > 1 {
                bytes.strip_suffix(b"/").unwrap_or(bytes)
            } else {
                bytes
            };
            cfg.prefix[..bytes.len()].copy_from_slice(bytes);
            cfg.prefix_len = bytes.len() as u32;
        }
        cfg
    }
}

/// What this kernel offers the syscall backends: the verdicts of capabilities.rs, the same functions
/// `kchaos probe` reports from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackendSupport {
    pub cgroup: Result<(), String>,
    pub lsm: Result<(), String>,
    pub kprobe: Result<(), String>,
    pub fmod_ret: Result<(), String>,
}

impl BackendSupport {
    /// Asks the running kernel (only the capabilities the backends need).
    pub fn probe() -> Self {
        let btf = capabilities::btf();
        Self::from_verdicts(
            &capabilities::cgroup_sock_addr(),
            &capabilities::bpf_lsm(&btf),
            &capabilities::bpf_override_return(&capabilities::kprobes()),
            &capabilities::trampolines(&btf),
        )
    }

    /// From a full capability probe (`kchaos probe`).
    pub fn from_capabilities(c: &Capabilities) -> Self {
        Self::from_verdicts(
            &c.cgroup_sock_addr,
            &c.bpf_lsm,
            &c.bpf_override_return,
            &c.trampolines,
        )
    }

    fn from_verdicts(
        cgroup: &Verdict,
        lsm: &Verdict,
        kprobe: &Verdict,
        fmod_ret: &Verdict,
    ) -> Self {
        let support = |v: &Verdict| v.as_ref().map(|_| ()).map_err(Clone::clone);
        Self {
            cgroup: support(cgroup),
            lsm: support(lsm),
            kprobe: support(kprobe),
            fmod_ret: support(fmod_ret),
        }
    }

    fn get(&self, b: Backend) -> &Result<(), String> {
        match b {
            Backend::Cgroup => &self.cgroup,
            Backend::Lsm => &self.lsm,
            Backend::FmodRet => &self.fmod_ret,
            _ => &self.kprobe,
        }
    }
}

/// The backend that serves `op` (`requested`, or the first of cgroup, lsm, kprobe that can for
/// `auto`), or every candidate's reason why not. `prefix`/`dst`: --path-prefix/--dst narrow this
/// operation.
fn choose_backend(
    op: &OpInfo,
    requested: Backend,
    prefix: bool,
    dst: bool,
    support: &BackendSupport,
) -> Result<Backend, String> {
    let covers = |b: Backend| match b {
        Backend::Cgroup => !op.cgroup.is_empty(),
        // LSM's socket_sendmsg sees no destination address, so it can't honour --dst.
        Backend::Lsm => !op.lsm.is_empty() && (!dst || op.id != OP_SENDMSG),
        Backend::Kprobe => !prefix && !dst,
        Backend::FmodRet => !op.fmod_ret.is_empty() && !prefix && !dst,
        _ => false,
    };
    let candidates = match requested {
        Backend::Auto => vec![Backend::Cgroup, Backend::Lsm, Backend::Kprobe],
        b => vec![b],
    };
    let mut why = Vec::new();
    for b in candidates {
        if !covers(b) {
            why.push(format!(
                "{b}: has no hook for it{}",
                if prefix || dst {
                    " with these filters"
                } else {
                    ""
                }
            ));
            continue;
        }
        match support.get(b) {
            Ok(()) => return Ok(b),
            Err(e) => why.push(format!("{b}: {e}")),
        }
    }
    Err(why.join("; "))
}

/// Which backend serves each operation, or why none can.
pub fn plan(spec: &SyscallSpec, support: &BackendSupport) -> Result<Vec<(u32, Backend)>, BadInput> {
    let mut plan = Vec::new();
    for &id in &spec.ops {
        let Some(op) = OPS.iter().find(|o| o.id == id) else {
            continue;
        };
        let prefix = id == OP_OPEN && spec.path_prefix.is_some();
        let dst = !spec.dsts.is_empty() && (id == OP_CONNECT || id == OP_SENDMSG);
        match choose_backend(op, spec.backend, prefix, dst, support) {
            Ok(b) => plan.push((id, b)),
            Err(why) => {
                return Err(BadInput::new(format!(
                    "--syscall {}: no backend on this kernel can fail it ({why}). `kchaos probe` lists what this kernel offers",
                    op.names[0],
                )));
            }
        }
    }
    Ok(plan)
}

/// For each operation (by its first name), the backend `--backend auto` picks when no filter is
/// given, or the reasons none can serve it, exactly as plan() words them: what `kchaos probe` reports.
pub fn auto_backends(support: &BackendSupport) -> Vec<(&'static str, Result<Backend, String>)> {
    OPS.iter()
        .map(|op| {
            (
                op.names[0],
                choose_backend(op, Backend::Auto, false, false, support),
            )
        })
        .collect()
}

/// Per-operation totals.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct OpTotals {
    pub op: &'static str,
    pub backend: String,
    pub calls: u64,
    pub matched: u64,
    pub injected: u64,
}

/// An attached syscall fault; dropping it detaches everything (fd-owned links).
pub struct SyscallFault {
    spec: SyscallSpec,
    plan: Vec<(u32, Backend)>,
    config: SyscallConfig,
    /// fmod_ret links (their own fds, outside aya); dropped before `ebpf`.
    fmod_ret: Vec<super::fmod_ret::FmodRet>,
    ebpf: Ebpf,
    pub attachments: Vec<String>,
}

impl SyscallFault {
    /// Everything that can fail on input or kernel support, before anything is loaded.
    pub fn preflight(
        spec: &SyscallSpec,
        targets: &[Target],
    ) -> Result<Vec<(u32, Backend)>, BadInput> {
        if let Ok(refs) = crate::engine::targets::levels(targets) {
            crate::engine::targets::check_level_span(&refs, "syscall faults")?;
        }
        let plan = plan(spec, &BackendSupport::probe())?;
        // A link per target and cgroup hook, each an fd for the fault's life.
        let cgroup_hooks: usize = plan
            .iter()
            .filter(|&&(_, b)| b == Backend::Cgroup)
            .filter_map(|&(id, _)| OPS.iter().find(|o| o.id == id))
            .map(|op| op.cgroup.len())
            .sum();
        crate::engine::fds::reserve_links(
            (cgroup_hooks * targets.len()) as u64,
            &format!(
                "{cgroup_hooks} cgroup hook(s) on {} target(s)",
                targets.len()
            ),
        )?;
        Ok(plan)
    }

    pub fn attach(spec: SyscallSpec, targets: &[Target]) -> Result<Self> {
        let plan = Self::preflight(&spec, targets)?;
        // The verifier checks the bpf_d_path call even when no prefix is set (it can't know), so the
        // offset must be real whenever the LSM program for open is loaded.
        let needs_path = plan.iter().any(|&(o, b)| o == OP_OPEN && b == Backend::Lsm);
        let f_path = if needs_path {
            crate::engine::btf::member_offset("file", "f_path")?
        } else {
            0
        };
        // Read-only globals are constants to the verifier: LSM programs must provably return within
        // [-4095, 0], and bpf_d_path needs a constant offset into struct file.
        let refs = crate::engine::targets::levels(targets)?;
        let mut ebpf = crate::engine::ebpf::load_sized(
            &[
                ("FILE_F_PATH_OFFSET", f_path),
                ("LSM_NEG_ERRNO", (-(spec.errno as i64)) as u64),
            ],
            &[("SYS_TARGETS", refs.len().max(1) as u32)],
        )?;
        let config = spec.config(&refs);
        {
            let mut ids = HashMap::<_, u64, u8>::try_from(
                ebpf.map_mut("SYS_TARGETS").context("map SYS_TARGETS")?,
            )?;
            for &(id, _) in &refs {
                ids.insert(id, 1, 0)
                    .with_context(|| format!("adding cgroup id {id} to SYS_TARGETS"))?;
            }
        }
        Array::<_, SyscallConfig>::try_from(ebpf.map_mut("SYS_CONFIG").context("map SYS_CONFIG")?)?
            .set(0, config, 0)?;
        {
            let mut trie = LpmTrie::<_, PeerKey, u8>::try_from(
                ebpf.map_mut("SYS_DST").context("map SYS_DST")?,
            )?;
            for p in &spec.dsts {
                // The port is checked separately (dst_port), so every peer goes in as "any port".
                let (bits, key) = Peer { port: None, ..*p }.key();
                trie.insert(&Key::new(bits, key), 1, 0)?;
            }
        }
        let mut fault = Self {
            spec,
            plan: plan.clone(),
            config,
            fmod_ret: Vec::new(),
            ebpf,
            attachments: Vec::new(),
        };
        let mut fmod_programs = None;
        let btf = if plan
            .iter()
            .any(|&(_, b)| b == Backend::Lsm || b == Backend::FmodRet)
        {
            Some(Btf::from_sys_fs()?)
        } else {
            None
        };
        let mut loaded: Vec<&str> = Vec::new();
        for (id, backend) in plan {
            let Some(op) = OPS.iter().find(|o| o.id == id) else {
                continue;
            };
            match backend {
                Backend::Cgroup => {
                    for &name in op.cgroup {
                        for t in targets {
                            // Open only while attaching: the link keeps what it needs.
                            let dir = std::fs::File::open(&t.path)
                                .with_context(|| format!("opening {}", t.path.display()))?;
                            fault.attach_cgroup(name, &dir, &t.path.display().to_string())?;
                        }
                    }
                }
                Backend::Lsm => {
                    for &(name, hook) in op.lsm {
                        if loaded.contains(&name) {
                            continue;
                        }
                        loaded.push(name);
                        let btf = btf.as_ref().context("BTF")?;
                        let prog: &mut Lsm =
                            fault.ebpf.program_mut(name).context(name)?.try_into()?;
                        prog.load(hook, btf)
                            .with_context(|| format!("loading the LSM program for {hook}"))?;
                        prog.attach()
                            .with_context(|| format!("attaching the LSM program to {hook}"))?;
                        fault.attachments.push(format!(
                            "lsm/{hook} (host-wide; checks the target cgroups first)"
                        ));
                    }
                }
                Backend::FmodRet => {
                    for &(name, target) in op.fmod_ret {
                        let function = match target.strip_prefix("sys:") {
                            Some(s) => syscall_symbol(s),
                            None => target.to_owned(),
                        };
                        if fault.fmod_ret.iter().any(|l| l.target == function) {
                            continue;
                        }
                        if fmod_programs.is_none() {
                            fmod_programs = Some(super::fmod_ret::Programs::relocate(
                                crate::engine::ebpf::object(),
                                &fault.ebpf,
                            )?);
                        }
                        let btf = btf.as_ref().context("BTF")?;
                        let programs = fmod_programs.as_ref().context("fmod_ret programs")?;
                        fault.fmod_ret.push(programs.attach(name, &function, btf)?);
                        fault.attachments.push(format!(
                            "fmod_ret/{function} (host-wide; checks the target cgroups first)"
                        ));
                    }
                }
                _ => {
                    let (name, syscalls) = op.kprobe;
                    let prog: &mut KProbe =
                        fault.ebpf.program_mut(name).context(name)?.try_into()?;
                    prog.load().with_context(|| format!("loading {name}"))?;
                    let mut refused = Vec::new();
                    for s in syscalls {
                        let sym = syscall_symbol(s);
                        // Not every architecture has every syscall (fork, open): skip those missing.
                        match prog.attach(&sym, 0) {
                            Ok(_) => fault
                                .attachments
                                .push(format!("kprobe/{sym} + bpf_override_return")),
                            Err(e) => refused.push(format!("{sym}: {:#}", anyhow::Error::from(e))),
                        }
                    }
                    if refused.len() == syscalls.len() {
                        anyhow::bail!(
                            "could not attach a kprobe to any of {syscalls:?}: {}",
                            refused.join("; ")
                        );
                    }
                }
            }
        }
        Ok(fault)
    }

    fn attach_cgroup(&mut self, name: &str, cgroup: &std::fs::File, path: &str) -> Result<()> {
        let program = self.ebpf.program_mut(name).context(name.to_owned())?;
        if name == "sys_sock_create" {
            let prog: &mut CgroupSock = program.try_into()?;
            if prog.fd().is_err() {
                prog.load()?;
            }
            prog.attach(cgroup.as_fd(), CgroupAttachMode::Single)?;
        } else {
            let prog: &mut CgroupSockAddr = program.try_into()?;
            if prog.fd().is_err() {
                prog.load().with_context(|| format!("loading {name}"))?;
            }
            prog.attach(cgroup.as_fd(), CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {path}"))?;
        }
        self.attachments.push(format!(
            "cgroup/{} -> {path} (link, fd-owned)",
            name.trim_start_matches("sys_")
        ));
        Ok(())
    }

    pub fn spec(&self) -> &SyscallSpec {
        &self.spec
    }

    pub fn arm(&mut self, deadline_ns: u64) -> Result<()> {
        self.config.deadline_ns = deadline_ns;
        Array::<_, SyscallConfig>::try_from(
            self.ebpf.map_mut("SYS_CONFIG").context("map SYS_CONFIG")?,
        )?
        .set(0, self.config, 0)
        .context("writing the syscall config")
    }

    /// Changes the failure rate while running (ramps).
    pub fn set_percent(&mut self, percent: f64) -> Result<()> {
        self.spec.percent = percent;
        self.config.threshold = percent_to_threshold(percent);
        self.arm(self.config.deadline_ns)
    }

    pub fn totals(&self) -> Result<Vec<OpTotals>> {
        let map = PerCpuArray::<_, SyscallCounters>::try_from(
            self.ebpf.map("SYS_COUNTERS").context("map SYS_COUNTERS")?,
        )?;
        let mut out = Vec::new();
        for &(id, backend) in &self.plan {
            let mut t = SyscallCounters::default();
            for c in map.get(&id, 0)?.iter() {
                t.accumulate(c);
            }
            let name = OPS.iter().find(|o| o.id == id).map_or("?", |o| o.names[0]);
            out.push(OpTotals {
                op: name,
                backend: backend.to_string(),
                calls: t.calls,
                matched: t.matched,
                injected: t.injected,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(sys: &str, errno: &str) -> SyscallArgs {
        SyscallArgs {
            syscalls: sys.split(',').map(String::from).collect(),
            errno: errno.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_op_has_a_name_and_a_kprobe() {
        assert_eq!(OPS.len(), chaos_common::OP_COUNT as usize);
        for (i, op) in OPS.iter().enumerate() {
            assert_eq!(op.id as usize, i);
            assert!(!op.names.is_empty() && !op.kprobe.1.is_empty());
        }
    }

    #[test]
    fn parses_and_notes_odd_errnos() {
        let s = SyscallSpec::from_args(&args("connect,sendto,send", "ECONNREFUSED")).unwrap();
        assert_eq!(s.ops, vec![OP_CONNECT, OP_SENDMSG]);
        assert_eq!(s.notes.len(), 0);
        let s = SyscallSpec::from_args(&args("open", "ECONNREFUSED")).unwrap();
        assert_eq!(s.notes.len(), 1, "ECONNREFUSED makes no sense for open");
        assert!(
            SyscallSpec::from_args(&args("frobnicate", "EIO"))
                .unwrap_err()
                .to_string()
                .contains("allowed are")
        );
        assert!(SyscallSpec::from_args(&args("open", "EWAT")).is_err());
        let mut a = args("connect", "EIO");
        a.path_prefix = Some("/tmp".into());
        assert!(
            SyscallSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .contains("open")
        );
    }

    #[test]
    fn plans_by_what_the_kernel_offers() {
        let none = BackendSupport {
            cgroup: Ok(()),
            lsm: Err("no lsm".into()),
            kprobe: Err("no kprobes".into()),
            fmod_ret: Err("no trampolines".into()),
        };
        let s = SyscallSpec::from_args(&args("connect,socket", "EPERM")).unwrap();
        assert_eq!(
            plan(&s, &none).unwrap(),
            vec![(OP_CONNECT, Backend::Cgroup), (OP_SOCKET, Backend::Cgroup)]
        );
        let s = SyscallSpec::from_args(&args("fsync", "EIO")).unwrap();
        let err = plan(&s, &none).unwrap_err().to_string();
        assert!(err.contains("fsync") && err.contains("no kprobes"), "{err}");
        let all = BackendSupport {
            cgroup: Ok(()),
            lsm: Ok(()),
            kprobe: Ok(()),
            fmod_ret: Ok(()),
        };
        let s = SyscallSpec::from_args(&args("open,fsync,connect", "EIO")).unwrap();
        assert_eq!(
            plan(&s, &all).unwrap(),
            vec![
                (OP_OPEN, Backend::Lsm),
                (OP_FSYNC, Backend::Kprobe),
                (OP_CONNECT, Backend::Cgroup)
            ]
        );
    }

    #[test]
    fn config_encodes_limits_and_prefix() {
        let mut a = args("open", "EACCES");
        a.path_prefix = Some("/srv/data/".into());
        a.after = 5;
        a.max = Some(7);
        a.percent = Some(50.0);
        let c = SyscallSpec::from_args(&a)
            .unwrap()
            .config(&[(42, 1), (77, 3)]);
        assert_eq!(
            (c.n_targets, c.target_min_level, c.target_max_level),
            (2, 1, 3)
        );
        assert!(
            crate::engine::targets::check_level_span(&[(1, 1), (2, 32)], "syscall faults").is_ok()
        );
        let err = crate::engine::targets::check_level_span(&[(1, 1), (2, 33)], "syscall faults")
            .unwrap_err()
            .to_string();
        assert!(err.contains("levels 1 to 33"), "{err}");
        assert_eq!(
            (c.after, c.max, c.threshold, c.errno),
            (5, 7, 1 << 31, libc::EACCES as u32)
        );
        assert_eq!(&c.prefix[..c.prefix_len as usize], b"/srv/data");
        assert_eq!(c.ops, 1 << OP_OPEN);
    }
}
