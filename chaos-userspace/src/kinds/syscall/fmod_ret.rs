//! fmod_ret (BPF_MODIFY_RETURN) programs, which aya 0.14 has no program type for.
//!
//! The programs are written as `#[fexit]` in chaos-ebpf (so aya's parser accepts the object) and are
//! never loaded as fexit. This module takes the same object through aya-obj (aya's own parser and
//! relocator): the map references are pointed at the fds of the maps the fault's `Ebpf` already
//! created (so the programs share its config, targets and counters), the instructions go to a raw
//! `BPF_PROG_LOAD` as BPF_PROG_TYPE_TRACING with expected_attach_type BPF_MODIFY_RETURN and the
//! kernel function's BTF id, and `BPF_LINK_CREATE` attaches them. The kernel accepts a function
//! whose name starts with `security_` or one on its error-injection list (every syscall on a kernel
//! with CONFIG_FUNCTION_ERROR_INJECTION). Dropping a [`FmodRet`] closes both fds: the trampoline is
//! gone.

use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use aya::{Btf, Ebpf, maps::Map};
use aya_obj::{
    Object,
    btf::BtfKind,
    generated::{bpf_attach_type, bpf_cmd, bpf_insn, bpf_prog_type},
};

#[derive(Debug, thiserror::Error)]
pub enum FmodRetError {
    #[error("parsing the eBPF object: {0}")]
    Parse(String),
    #[error("no program {0} in the eBPF object")]
    NoProgram(String),
    #[error("relocating {prog}: {why}")]
    Relocate { prog: String, why: String },
    #[error("no function {0} in the kernel's BTF: {1}")]
    NoFunction(String, String),
    #[error("the kernel refused fmod_ret {prog} on {target} (BPF_PROG_LOAD: {err}){log}")]
    Load {
        prog: String,
        target: String,
        err: std::io::Error,
        log: String,
    },
    #[error("attaching fmod_ret {prog} to {target} (BPF_LINK_CREATE): {err}")]
    Link {
        prog: String,
        target: String,
        err: std::io::Error,
    },
}

/// A loaded and attached fmod_ret program; dropping it detaches it.
#[derive(Debug)]
pub struct FmodRet {
    pub target: String,
    _link: OwnedFd,
    _prog: OwnedFd,
}

/// The relocated instructions of the object's programs, ready to load.
pub struct Programs {
    object: Object,
}

impl Programs {
    /// Parses `object` and points its map references at `ebpf`'s maps (the maps of the same object,
    /// created by aya when it loaded it).
    pub fn relocate(object: &[u8], ebpf: &Ebpf) -> Result<Self, FmodRetError> {
        let mut obj = Object::parse(object).map_err(|e| FmodRetError::Parse(e.to_string()))?;
        let maps: Vec<(String, RawFd, aya_obj::Map)> = obj
            .maps
            .iter()
            .filter_map(|(name, m)| {
                let fd = ebpf.map(name).and_then(map_fd)?;
                Some((name.clone(), fd, m.clone()))
            })
            .collect();
        let text_sections: HashSet<usize> = obj.functions.keys().map(|&(s, _)| s).collect();
        let relocate_err = |e: &dyn std::fmt::Display| FmodRetError::Relocate {
            prog: "the object".into(),
            why: e.to_string(),
        };
        obj.relocate_maps(
            maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text_sections,
        )
        .map_err(|e| relocate_err(&e))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| relocate_err(&e))?;
        Ok(Self { object: obj })
    }

    /// Loads program `prog` as fmod_ret on the kernel function `target` and attaches it.
    pub fn attach(&self, prog: &str, target: &str, btf: &Btf) -> Result<FmodRet, FmodRetError> {
        let p = self
            .object
            .programs
            .get(prog)
            .ok_or_else(|| FmodRetError::NoProgram(prog.to_owned()))?;
        let function = self
            .object
            .functions
            .get(&p.function_key())
            .ok_or_else(|| FmodRetError::NoProgram(prog.to_owned()))?;
        let btf_id = btf
            .id_by_type_name_kind(target, BtfKind::Func)
            .map_err(|e| FmodRetError::NoFunction(target.to_owned(), e.to_string()))?;
        let prog_fd =
            prog_load(prog, &function.instructions, &p.license, btf_id).map_err(|(err, log)| {
                FmodRetError::Load {
                    prog: prog.to_owned(),
                    target: target.to_owned(),
                    err,
                    log: if log.trim().is_empty() {
                        String::new()
                    } else {
                        format!("; the verifier said:\n{}", tail(&log, 30))
                    },
                }
            })?;
        let link = link_create(&prog_fd).map_err(|err| FmodRetError::Link {
            prog: prog.to_owned(),
            target: target.to_owned(),
            err,
        })?;
        Ok(FmodRet {
            target: target.to_owned(),
            _link: link,
            _prog: prog_fd,
        })
    }
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The fd of any map (aya 0.14 keeps the MapData inside each variant).
fn map_fd(m: &Map) -> Option<RawFd> {
    let data = match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::ProgramArray(d)
        | Map::PerfEventArray(d)
        | Map::RingBuf(d)
        | Map::Queue(d)
        | Map::Stack(d)
        | Map::Unsupported(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to the fields used here (the kernel takes a shorter attr
/// and treats the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE (tracing: prog_fd, attach_type, a cookie).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    cookie: u64,
    _pad: u64,
}

fn sys_bpf<T>(cmd: bpf_cmd, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a repr(C) prefix of union bpf_attr for `cmd`, valid for the call; the
    // pointers inside it point at buffers the caller keeps alive across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a successful BPF_PROG_LOAD / BPF_LINK_CREATE returns a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// BPF_PROG_LOAD as fmod_ret; on failure, again with the verifier's log, returned with the error.
fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CString,
    attach_btf_id: u32,
) -> Result<OwnedFd, (std::io::Error, String)> {
    let mut attr = ProgLoadAttr {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING as u32,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: bpf_attach_type::BPF_MODIFY_RETURN as u32,
        attach_btf_id,
        ..Default::default()
    };
    for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let first = match sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let mut log = vec![0u8; 1 << 20];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    let err = match sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        // Loaded with the log on (it should not, but then there is nothing to report).
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).into_owned();
    Err((if text.is_empty() { first } else { err }, text))
}

fn link_create(prog: &OwnedFd) -> std::io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: bpf_attach_type::BPF_MODIFY_RETURN as u32,
        ..Default::default()
    };
    sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_match_the_kernel_layout() {
        // Offsets from include/uapi/linux/bpf.h (6.12).
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, func_info), 80);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, attach_btf_id), 108);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, attach_prog_fd), 112);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, attach_type), 8);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, cookie), 16);
        assert_eq!(bpf_attach_type::BPF_MODIFY_RETURN as u32, 26);
        assert_eq!(bpf_prog_type::BPF_PROG_TYPE_TRACING as u32, 26);
    }

    #[test]
    fn every_fmod_ret_program_is_in_the_object() {
        let obj = Object::parse(crate::engine::ebpf::object()).unwrap();
        for op in super::super::fault::OPS {
            for &(prog, _) in op.fmod_ret {
                assert!(obj.programs.contains_key(prog), "{prog}");
            }
        }
    }
}
