//! What this kernel offers kchaos. Each capability is decided by one function here, with the reason
//! when it is missing: a real load attempt where one is possible, a file the kernel publishes where
//! not. `kchaos probe` prints these verdicts and the syscall fault picks its backends from the same
//! ones (faults::syscall::BackendSupport), so the two cannot disagree.

use std::{io, path::Path, ptr};

use aya::{
    programs::{LsmAttachType, ProgramType},
    sys::{BpfHelper, is_helper_supported, is_program_supported},
};

use crate::engine::{
    cgroup, qdisc,
    rtnl::{Rtnl, RtnlError},
};

/// How a capability was found (Ok), or why it is missing (Err).
pub type Verdict = Result<String, String>;

/// Every capability kchaos uses, as this kernel answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `uname -r`.
    pub kernel: String,
    pub btf: Verdict,
    pub cgroup_v2: Verdict,
    pub cgroup_skb: Verdict,
    /// cgroup_sock_addr and cgroup_sock programs that can call bpf_set_retval: the cgroup syscall
    /// backend.
    pub cgroup_sock_addr: Verdict,
    pub sch_fq: Verdict,
    pub clsact: Verdict,
    pub tcx: Verdict,
    pub kprobes: Verdict,
    /// kprobes whose programs may call bpf_override_return: the kprobe syscall backend.
    pub bpf_override_return: Verdict,
    /// BPF LSM programs load and `bpf` is an active LSM: the lsm syscall backend.
    pub bpf_lsm: Verdict,
    pub trampolines: Verdict,
}

/// One row of `kchaos probe`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capability {
    pub name: &'static str,
    pub available: bool,
    /// How it was found, or why it is missing.
    pub detail: String,
    /// The kchaos features it enables.
    pub enables: &'static str,
}

impl Capabilities {
    /// Asks the running kernel about everything (loads test programs, adds qdiscs in scratch
    /// network namespaces): a second or so.
    pub fn detect() -> Self {
        let btf = btf();
        let kprobes = kprobes();
        Self {
            kernel: kernel_release(),
            cgroup_v2: cgroup_v2(),
            cgroup_skb: program(ProgramType::CgroupSkb),
            cgroup_sock_addr: cgroup_sock_addr(),
            sch_fq: sch_fq(),
            clsact: clsact(),
            tcx: tcx(),
            bpf_override_return: bpf_override_return(&kprobes),
            kprobes,
            bpf_lsm: bpf_lsm(&btf),
            trampolines: trampolines(&btf),
            btf,
        }
    }

    /// The verdicts as `kchaos probe` lists them.
    pub fn rows(&self) -> Vec<Capability> {
        let row = |name, verdict: &Verdict, enables| {
            let (available, detail) = match verdict {
                Ok(how) => (true, how.clone()),
                Err(why) => (false, why.clone()),
            };
            Capability {
                name,
                available,
                detail,
                enables,
            }
        };
        vec![
            row(
                "BTF",
                &self.btf,
                "BPF LSM and trampoline backends (syscall faults)",
            ),
            row(
                "cgroup v2",
                &self.cgroup_v2,
                "targeting (--cgroup, --pid): every fault",
            ),
            row(
                "cgroup_skb",
                &self.cgroup_skb,
                "net: --percent (drop), --delay stamping, --partition",
            ),
            row(
                "cgroup_sock_addr",
                &self.cgroup_sock_addr,
                "syscall: connect, bind, sendmsg (UDP), socket errors (cgroup backend)",
            ),
            row(
                "sch_fq",
                &self.sch_fq,
                "net: --delay, --jitter and --rate (EDT departure times)",
            ),
            row(
                "clsact",
                &self.clsact,
                "TC programs (netlink-attached; not used by kchaos's faults)",
            ),
            row(
                "tcx",
                &self.tcx,
                "net: --duplicate and --corrupt (their tcx egress program; drop, delay and \
                 partition are cgroup-based)",
            ),
            row(
                "kprobes",
                &self.kprobes,
                "syscall: kprobe + bpf_override_return backend",
            ),
            row(
                "bpf_override_return",
                &self.bpf_override_return,
                "syscall: kprobe backend",
            ),
            row(
                "BPF LSM",
                &self.bpf_lsm,
                "syscall: file, socket and task errors (lsm backend)",
            ),
            row(
                "trampolines (fentry/fexit/fmod_ret)",
                &self.trampolines,
                "syscall: fmod_ret backend",
            ),
        ]
    }
}

/// Whether a minimal program of `kind` loads.
fn program(kind: ProgramType) -> Verdict {
    match is_program_supported(kind) {
        Ok(true) => Ok("a test program loaded".into()),
        Ok(false) => Err("the kernel does not know this program type".into()),
        Err(e) => Err(with_refusal_hint(format!(
            "loading a test program was refused: {:#}",
            anyhow::Error::from(e)
        ))),
    }
}

/// `why` with what usually causes an EPERM for root, when it is one: a bare "Operation not
/// permitted" tells a user nothing to do.
fn with_refusal_hint(why: String) -> String {
    if !why.contains("os error 1)") {
        return why;
    }
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown").ok();
    let mode = lockdown.as_deref().and_then(|l| {
        let start = l.find('[')? + 1;
        let end = start + l[start..].find(']')?;
        Some(l[start..end].to_owned())
    });
    let cause = match mode.as_deref() {
        Some(m) if m != "none" => format!(
            "kernel lockdown is on ({m}, /sys/kernel/security/lockdown), which refuses these \
             programs"
        ),
        _ => "usually: kernel lockdown (/sys/kernel/security/lockdown), a container or user \
              namespace without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN, a seccomp or SELinux/AppArmor \
              policy denying bpf(2), or a kernel or hypervisor that blocks this program type"
            .to_owned(),
    };
    format!("{why}; {cause}")
}

/// The kernel's type information, which LSM and tracing programs are attached through.
pub fn btf() -> Verdict {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok("/sys/kernel/btf/vmlinux".into())
    } else {
        Err("no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)".into())
    }
}

pub fn cgroup_v2() -> Verdict {
    cgroup::v2_mount()
        .map(|p| format!("mounted at {}", p.display()))
        .map_err(|e| e.to_string())
}

/// The cgroup syscall backend: its connect/bind/sendmsg programs are cgroup_sock_addr, its socket
/// program is cgroup_sock, and all of them return the chosen errno through bpf_set_retval (5.18+).
pub fn cgroup_sock_addr() -> Verdict {
    for (kind, name) in [
        (ProgramType::CgroupSockAddr, "cgroup_sock_addr"),
        (ProgramType::CgroupSock, "cgroup_sock"),
    ] {
        program(kind).map_err(|why| format!("{name}: {why}"))?;
    }
    // Probed from a connect4 program (aya sets that attach type): the helper's availability depends
    // on the attach type, and connect4 is one kchaos uses.
    match is_helper_supported(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_set_retval) {
        Ok(true) => Ok(
            "cgroup_sock_addr and cgroup_sock test programs loaded; bpf_set_retval is known".into(),
        ),
        Ok(false) => Err(
            "bpf_set_retval is unknown to this kernel (it came in 5.18); kchaos's cgroup programs \
             return the chosen errno through it"
                .into(),
        ),
        Err(e) => Err(format!(
            "probing bpf_set_retval failed: {:#}",
            anyhow::Error::from(e)
        )),
    }
}

/// kchaos's own fq (handle and limits) on `lo` of a scratch network namespace, which vanishes
/// afterwards: no real device is touched.
pub fn sch_fq() -> Verdict {
    qdisc::try_fq_in_scratch_netns()
        .map(|()| "kchaos's fq replaced the root qdisc of lo in a scratch netns".into())
        .map_err(|e| format!("{e} (tried in a scratch netns)"))
}

/// A clsact qdisc on `lo` of a scratch network namespace.
pub fn clsact() -> Verdict {
    let add = || -> Result<(), RtnlError> {
        let mut rtnl = Rtnl::in_scratch_netns()?;
        let lo = rtnl.loopback()?;
        rtnl.add_clsact(&lo)
    };
    add()
        .map(|()| "a clsact qdisc was added to lo in a scratch netns".into())
        .map_err(|e| format!("{e} (tried in a scratch netns)"))
}

pub fn tcx() -> Verdict {
    let release = kernel_release();
    match program(ProgramType::SchedClassifier) {
        Ok(how) if kernel_at_least(&release, 6, 6) => {
            Ok(format!("kernel {release} (tcx since 6.6); {how}"))
        }
        Ok(how) => Err(format!("kernel {release}: tcx needs 6.6+; {how}")),
        Err(why) => Err(format!("kernel {release}; TC classifier: {why}")),
    }
}

pub fn kprobes() -> Verdict {
    if Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        Ok("the kprobe PMU exists (/sys/bus/event_source/devices/kprobe)".into())
    } else {
        Err("no kprobes: no kprobe PMU (/sys/bus/event_source/devices/kprobe), CONFIG_KPROBES is off".into())
    }
}

/// The kprobe syscall backend: kprobes, and a test kprobe program calling bpf_override_return
/// loads (the kernel knows the helper only with CONFIG_BPF_KPROBE_OVERRIDE).
pub fn bpf_override_return(kprobes: &Verdict) -> Verdict {
    kprobes.as_ref().map_err(Clone::clone)?;
    match is_helper_supported(ProgramType::KProbe, BpfHelper::BPF_FUNC_override_return) {
        Ok(true) => Ok("a test kprobe program calling bpf_override_return loaded".into()),
        Ok(false) => Err(
            "bpf_override_return is unavailable (CONFIG_BPF_KPROBE_OVERRIDE is off: Debian's \
             kernels; Ubuntu's and Fedora's have it)"
                .into(),
        ),
        Err(e) => Err(format!(
            "probing bpf_override_return failed: {:#}",
            anyhow::Error::from(e)
        )),
    }
}

/// The lsm syscall backend: a test BPF LSM program loads and attaches, and `bpf` is among the
/// active LSMs. Without the latter the kernel loads and attaches BPF LSM programs all the same but
/// never runs them, so a fault would inject nothing.
pub fn bpf_lsm(btf: &Verdict) -> Verdict {
    btf.as_ref()
        .map_err(|why| format!("BPF LSM programs attach through BTF: {why}"))?;
    let loaded = match is_program_supported(ProgramType::Lsm(LsmAttachType::Mac)) {
        Ok(true) => "a test BPF LSM program loaded and attached",
        Ok(false) => return Err("the kernel has no BPF LSM (CONFIG_BPF_LSM)".into()),
        Err(e) => {
            return Err(with_refusal_hint(format!(
                "loading a test BPF LSM program was refused: {:#}",
                anyhow::Error::from(e)
            )));
        }
    };
    bpf_among_active_lsms(active_lsm_list()).map(|listed| format!("{loaded}; {listed}"))
}

/// fentry/fexit/fmod_ret programs (BPF trampolines) load and attach.
pub fn trampolines(btf: &Verdict) -> Verdict {
    btf.as_ref()
        .map_err(|why| format!("trampoline programs attach through BTF: {why}"))?;
    program(ProgramType::Tracing)
}

const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// Whether `list` (the kernel's active LSMs, "lockdown,capability,yama,bpf") has `bpf`.
fn bpf_among_active_lsms(list: Result<String, String>) -> Verdict {
    match list {
        Ok(list) if list.split(',').any(|l| l.trim() == "bpf") => {
            Ok(format!("`bpf` is an active LSM ({})", list.trim()))
        }
        Ok(list) => Err(format!(
            "`bpf` is not in the active LSM list ({}): the kernel would load BPF LSM programs but \
             never run them; boot with lsm={},bpf",
            list.trim(),
            list.trim()
        )),
        Err(why) => Err(format!("cannot tell whether `bpf` is an active LSM: {why}")),
    }
}

/// The kernel's active LSMs from securityfs. Where securityfs is not mounted, it is mounted in a
/// private mount namespace of a short-lived thread: the host's mounts stay as they were, also if
/// kchaos dies.
fn active_lsm_list() -> Result<String, String> {
    match std::fs::read_to_string(LSM_LIST) {
        Ok(list) => return Ok(list),
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(format!("reading {LSM_LIST}: {e}"));
        }
        Err(_) => {}
    }
    std::thread::spawn(read_lsm_list_in_private_mount_ns)
        .join()
        .unwrap_or_else(|_| Err("the thread reading the LSM list panicked".into()))
}

/// Runs on its own thread, which it moves to a new mount namespace; the namespace (and the mount)
/// end with the thread.
fn read_lsm_list_in_private_mount_ns() -> Result<String, String> {
    let failed = |what: &str| {
        format!(
            "securityfs is not mounted at /sys/kernel/security and {what} failed: {}",
            io::Error::last_os_error()
        )
    };
    // SAFETY: unshare has no memory preconditions. CLONE_NEWNS implies CLONE_FS, so only this
    // thread (with its own copy of root and cwd) moves to the new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(failed("unshare(CLONE_NEWNS)"));
    }
    // SAFETY: a valid NUL-terminated path, null for the unused arguments. Making every mount of the
    // new namespace private keeps the mount below from propagating back to the host's namespace.
    if unsafe {
        libc::mount(
            ptr::null(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        )
    } != 0
    {
        return Err(failed("making a private mount namespace"));
    }
    // SAFETY: valid NUL-terminated strings, no data argument.
    if unsafe {
        libc::mount(
            c"securityfs".as_ptr(),
            c"/sys/kernel/security".as_ptr(),
            c"securityfs".as_ptr(),
            0,
            ptr::null(),
        )
    } != 0
    {
        return Err(failed("mounting it privately"));
    }
    std::fs::read_to_string(LSM_LIST).map_err(|e| format!("reading {LSM_LIST}: {e}"))
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse::<u32>().ok());
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_must_be_an_active_lsm() {
        assert!(bpf_among_active_lsms(Ok("lockdown,capability,yama,bpf\n".into())).is_ok());
        let why = bpf_among_active_lsms(Ok("lockdown,capability,yama".into())).unwrap_err();
        assert!(
            why.contains("not in the active LSM list")
                && why.contains("lsm=lockdown,capability,yama,bpf"),
            "{why}"
        );
        // "bpfx" is not "bpf".
        assert!(bpf_among_active_lsms(Ok("bpfx,yama".into())).is_err());
        let why = bpf_among_active_lsms(Err("no securityfs".into())).unwrap_err();
        assert!(
            why.contains("cannot tell") && why.contains("no securityfs"),
            "{why}"
        );
    }

    #[test]
    fn reads_the_lsm_list_and_leaves_the_mounts_as_they_were() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP reads_the_lsm_list_and_leaves_the_mounts_as_they_were: needs root");
            return;
        }
        let mounts = || std::fs::read_to_string("/proc/self/mounts").unwrap();
        let before = mounts();
        let list = active_lsm_list().unwrap();
        println!("active LSMs: {}", list.trim());
        // Every kernel has the capability LSM, listed first.
        assert!(
            list.starts_with("capability") || list.contains(",capability"),
            "{list}"
        );
        assert_eq!(
            mounts(),
            before,
            "the securityfs mount leaked into kchaos's namespace"
        );
    }

    #[test]
    fn a_refusal_says_what_usually_causes_it() {
        let why = with_refusal_hint(
            "loading a test program was refused: `bpf_prog_load` failed: Operation not permitted \
             (os error 1)"
                .into(),
        );
        assert!(why.contains("lockdown"), "{why}");
        let other = "loading a test program was refused: Invalid argument (os error 22)";
        assert_eq!(with_refusal_hint(other.into()), other);
    }

    #[test]
    fn lsm_and_trampolines_need_btf() {
        let no_btf: Verdict = Err("no /sys/kernel/btf/vmlinux".into());
        assert!(
            bpf_lsm(&no_btf)
                .unwrap_err()
                .contains("no /sys/kernel/btf/vmlinux")
        );
        assert!(trampolines(&no_btf).unwrap_err().contains("BTF"));
        let no_kprobes: Verdict = Err("no kprobes".into());
        assert_eq!(bpf_override_return(&no_kprobes), no_kprobes);
    }

    #[test]
    fn compares_kernel_releases() {
        assert!(kernel_at_least("6.18.44-fc-v782", 6, 6));
        assert!(kernel_at_least("6.6.0", 6, 6));
        assert!(!kernel_at_least("6.1.100+deb12-amd64", 6, 6));
        assert!(!kernel_at_least("", 6, 6));
    }
}
