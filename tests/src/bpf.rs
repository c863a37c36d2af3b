//! The kernel's own answer (BPF_PROG_QUERY) to "which programs run for this cgroup": asked per cgroup,
//! so other tests' programs on other cgroups never show up.

use std::{os::fd::AsRawFd as _, path::Path};

/// Attach types of `enum bpf_attach_type` the tests ask about.
pub mod attach_type {
    pub const INET_INGRESS: u32 = 0;
    pub const INET_EGRESS: u32 = 1;
    pub const INET_SOCK_CREATE: u32 = 2;
    pub const INET4_BIND: u32 = 8;
    pub const INET4_CONNECT: u32 = 10;
    pub const UDP4_SENDMSG: u32 = 14;
    pub const TCX_EGRESS: u32 = 47;
}

/// The program ids linked by tcx to the egress of device `dev` (of this process's namespace).
pub fn tcx_egress_programs(dev: &str) -> Vec<u32> {
    let name = std::ffi::CString::new(dev).expect("a device name");
    // SAFETY: a NUL-terminated name that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no device {dev}");
    prog_query_target(index, attach_type::TCX_EGRESS, 0, dev)
}

/// The program ids that run for sockets of `cgroup` at `attach_type`, including those inherited
/// from its ancestors (BPF_F_QUERY_EFFECTIVE).
pub fn cgroup_programs(cgroup: &Path, attach_type: u32) -> Vec<u32> {
    const BPF_F_QUERY_EFFECTIVE: u32 = 1;
    prog_query(cgroup, attach_type, BPF_F_QUERY_EFFECTIVE)
}

/// The program ids attached at `attach_type` to `cgroup` itself (not inherited).
pub fn attached_programs(cgroup: &Path, attach_type: u32) -> Vec<u32> {
    prog_query(cgroup, attach_type, 0)
}

/// How many cgroup_skb programs (ingress and egress) are attached to `cg` itself and to the cgroups
/// directly below it. Counting on a lab's own cgroups, not the host's program list, keeps the check
/// true while other tests load programs of their own.
pub fn skb_programs_in_tree(cg: &Path) -> usize {
    let children = std::fs::read_dir(cg)
        .unwrap_or_else(|e| panic!("reading {}: {e}", cg.display()))
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path());
    std::iter::once(cg.to_path_buf())
        .chain(children)
        .map(|dir| {
            attached_programs(&dir, attach_type::INET_INGRESS).len()
                + attached_programs(&dir, attach_type::INET_EGRESS).len()
        })
        .sum()
}

/// BPF_PROG_QUERY on `cgroup` at `attach_type` with `query_flags`: the program ids.
fn prog_query(cgroup: &Path, attach_type: u32, query_flags: u32) -> Vec<u32> {
    let dir = std::fs::File::open(cgroup)
        .unwrap_or_else(|e| panic!("opening the cgroup {}: {e}", cgroup.display()));
    prog_query_target(
        dir.as_raw_fd() as u32,
        attach_type,
        query_flags,
        &cgroup.display().to_string(),
    )
}

/// BPF_PROG_QUERY on a target (a cgroup fd, or an ifindex for tcx), named `what` in a failure.
fn prog_query_target(target: u32, attach_type: u32, query_flags: u32, what: &str) -> Vec<u32> {
    /// The query part of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: target,
        attach_type,
        query_flags,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: attr and the id buffer outlive the call; the size given is attr's own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut QueryAttr,
            size_of::<QueryAttr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_QUERY on {what}: {}",
        std::io::Error::last_os_error()
    );
    ids[..attr.prog_cnt as usize].to_vec()
}
