//! `kchaos probe`: which hooks this kernel offers, found by trying them, and what each enables.

use std::path::Path;

use aya::{programs::ProgramType, sys::is_program_supported};

use crate::{cgroup, netns, qdisc};

/// One capability and its verdict.
#[derive(Debug, serde::Serialize)]
pub struct Capability {
    pub name: &'static str,
    pub available: bool,
    /// How it was found, or why it is missing.
    pub detail: String,
    /// The kchaos features it enables.
    pub enables: &'static str,
}

fn program(kind: ProgramType) -> (bool, String) {
    match is_program_supported(kind) {
        Ok(true) => (true, "a test program loaded".into()),
        Ok(false) => (false, "the kernel does not know this program type".into()),
        Err(e) => (
            false,
            format!(
                "loading a test program was refused: {:#}",
                anyhow::Error::from(e)
            ),
        ),
    }
}

fn in_scratch_netns(args: &[&str]) -> (bool, String) {
    match netns::command_in_scratch_netns("tc").args(args).output() {
        Ok(o) if o.status.success() => (
            true,
            format!("`tc {}` worked in a scratch netns", args.join(" ")),
        ),
        Ok(o) => (false, String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => (false, format!("could not run tc: {e}")),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = kernel_release();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse::<u32>().ok());
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// A kernel config option from /boot/config-<release> or /proc/config.gz's plain sibling, if readable.
fn kconfig(option: &str) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/boot/config-{}", kernel_release())).ok()?;
    Some(text.lines().any(|l| l == format!("{option}=y")))
}

/// Tries every hook kchaos can use.
pub fn probe() -> Vec<Capability> {
    let mut caps = Vec::new();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    caps.push(Capability {
        name: "BTF",
        available: btf,
        detail: if btf {
            "/sys/kernel/btf/vmlinux".into()
        } else {
            "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)".into()
        },
        enables: "BPF LSM and trampoline backends (syscall faults)",
    });
    let (available, detail) = match cgroup::v2_mount() {
        Ok(p) => (true, format!("mounted at {}", p.display())),
        Err(e) => (false, e.to_string()),
    };
    caps.push(Capability {
        name: "cgroup v2",
        available,
        detail,
        enables: "targeting (--cgroup, --pid): every fault",
    });
    let (available, detail) = program(ProgramType::CgroupSkb);
    caps.push(Capability {
        name: "cgroup_skb",
        available,
        detail,
        enables: "net: --drop, --delay stamping, --partition",
    });
    let (available, detail) = program(ProgramType::CgroupSockAddr);
    caps.push(Capability {
        name: "cgroup_sock_addr",
        available,
        detail,
        enables: "syscall: connect/bind/sendmsg/recvmsg errors",
    });
    let (available, detail) = in_scratch_netns(&["qdisc", "add", "dev", "lo", "root", "fq"]);
    let fq = qdisc::kernel_has_fq();
    caps.push(Capability {
        name: "sch_fq",
        available: available && fq,
        detail,
        enables: "net: --delay (EDT departure times)",
    });
    let (available, detail) = in_scratch_netns(&["qdisc", "add", "dev", "lo", "clsact"]);
    caps.push(Capability {
        name: "clsact",
        available,
        detail,
        enables: "TC programs (netlink-attached; not used by kchaos's faults)",
    });
    let (tc_ok, tc_detail) = program(ProgramType::SchedClassifier);
    let tcx = tc_ok && kernel_at_least(6, 6);
    caps.push(Capability {
        name: "tcx",
        available: tcx,
        detail: if tcx {
            format!("kernel {} (tcx since 6.6); {tc_detail}", kernel_release())
        } else {
            format!("kernel {}: tcx needs 6.6+; {tc_detail}", kernel_release())
        },
        enables: "fd-owned TC links (not needed by the cgroup-based net faults)",
    });
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    caps.push(Capability {
        name: "kprobes",
        available: kprobes,
        detail: if kprobes {
            "the kprobe PMU exists".into()
        } else {
            "no kprobe PMU (/sys/bus/event_source/devices/kprobe): CONFIG_KPROBES is off".into()
        },
        enables: "syscall: kprobe + bpf_override_return backend",
    });
    let over = kconfig("CONFIG_BPF_KPROBE_OVERRIDE");
    caps.push(Capability {
        name: "bpf_override_return",
        available: kprobes && over == Some(true),
        detail: match over {
            Some(true) => "CONFIG_BPF_KPROBE_OVERRIDE=y".into(),
            Some(false) => {
                "CONFIG_BPF_KPROBE_OVERRIDE is not set (Debian kernels; Ubuntu and Fedora set it)"
                    .into()
            }
            None => "no /boot/config-<release> to read CONFIG_BPF_KPROBE_OVERRIDE from".into(),
        },
        enables: "syscall: kprobe backend",
    });
    let (available, detail) = program(ProgramType::Lsm(aya::programs::LsmAttachType::Mac));
    caps.push(Capability {
        name: "BPF LSM",
        available,
        detail,
        enables: "syscall: file, socket and task errors (lsm backend)",
    });
    let (available, detail) = program(ProgramType::Tracing);
    caps.push(Capability {
        name: "trampolines (fentry/fexit/fmod_ret)",
        available,
        detail,
        enables: "syscall: fmod_ret backend",
    });
    caps
}

/// Prints the table.
pub fn print(caps: &[Capability]) {
    println!("kchaos probe: kernel {}", kernel_release());
    for c in caps {
        let mark = if c.available { "yes" } else { "no " };
        println!("  {mark}  {:<36} {}", c.name, c.detail);
        println!("       {:<36} -> {}", "", c.enables);
    }
}
