//! The third test kernel: Debian's `linux-source-6.12` built here with what Debian leaves out
//! (CONFIG_FUNCTION_ERROR_INJECTION, so bpf_override_return: the syscall kprobe backend), once, then
//! cached under `<cache>/vm/kprobe-kernel-<source version>-<config hash>/` for later runs and clones.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{TempDir, capture};
use crate::setup::{self, step};

/// The source package and the tarball it installs.
const SOURCE_PACKAGE: &str = "linux-source-6.12";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
/// What payloads see as $KCHAOS_KERNEL_LABEL on this kernel.
pub const LABEL: &str = "vm-kprobe-6.12";
/// `uname -r` suffix.
const LOCALVERSION: &str = "-kchaos";

/// The config, applied with scripts/config on top of `x86_64_defconfig` + `kvm_guest.config`
/// (virtio, serial console, paravirt), then `make olddefconfig`. Each line: the scripts/config
/// arguments, and why. Changing a line changes the cache key, so the kernel is rebuilt.
const CONFIG: &[(&str, &str)] = &[
    // What the tests are for.
    (
        "-e FUNCTION_ERROR_INJECTION -e BPF_KPROBE_OVERRIDE",
        "bpf_override_return: the kprobe backend",
    ),
    (
        "-e KPROBES -e KPROBE_EVENTS -e FTRACE -e FUNCTION_TRACER -e DYNAMIC_FTRACE -e BPF_EVENTS",
        "kprobes, and the ftrace trampolines fentry/fmod_ret use",
    ),
    (
        "-e SECURITY -e SECURITYFS -e BPF_LSM --set-str LSM lockdown,yama,bpf",
        "BPF LSM hooks (the lsm backend); securityfs tells which LSMs are active",
    ),
    (
        "-e BPF -e BPF_SYSCALL -e BPF_JIT -e BPF_JIT_ALWAYS_ON -e CGROUP_BPF",
        "eBPF, JITed",
    ),
    (
        "-e DEBUG_INFO -e DEBUG_INFO_DWARF5 -d DEBUG_INFO_REDUCED -e DEBUG_INFO_BTF",
        "BTF (pahole from dwarves): LSM, trampolines, the loader's struct offsets",
    ),
    (
        "-e CGROUPS -e MEMCG -e CGROUP_PIDS -e CPUSETS -e CGROUP_SCHED -e CGROUP_FREEZER -e BLK_CGROUP",
        "cgroup v2 controllers the targets and stress faults use",
    ),
    (
        "-e NET_NS -e VETH",
        "the tests' own namespaces and veth pairs",
    ),
    (
        "-e NET_SCHED -e NET_SCH_FQ -e NET_SCH_NETEM -e NET_SCH_INGRESS -e NET_SCH_HTB -e NET_SCH_TBF",
        "qdiscs the network faults and their baselines use (built in: no modules)",
    ),
    (
        "-e NET_CLS_BPF -e NET_CLS_U32 -e NET_CLS_ACT -e NET_ACT_BPF",
        "classifiers and actions",
    ),
    (
        "-e IKCONFIG -e IKCONFIG_PROC",
        "/proc/config.gz for `kchaos probe`",
    ),
    (
        "-e BLK_DEV_INITRD -e SERIAL_8250 -e SERIAL_8250_CONSOLE -e TMPFS -e DEVTMPFS",
        "boot from the initramfs, talk on ttyS0",
    ),
    (
        "--set-str LOCALVERSION -kchaos -d LOCALVERSION_AUTO",
        "uname -r: 6.12.N-kchaos",
    ),
    // Trimmed: nothing in the VM uses them, and they are a good part of defconfig's compile time.
    (
        "-d DRM -d FB -d SOUND -d USB_SUPPORT -d WLAN -d WIRELESS -d CFG80211 -d RFKILL",
        "no display, sound, USB or radio in the VM",
    ),
    (
        "-d NETFILTER -d NETWORK_FILESYSTEMS -d ETHERNET -d HID -d INPUT_MOUSE -d INPUT_KEYBOARD",
        "no firewall, NFS, NICs (-nic none) or input devices",
    ),
    (
        "-d AGP -d PCCARD -d HIBERNATION -d SUSPEND -d MEDIA_SUPPORT -d NFS_FS -d XFRM -d WIRELESS_EXT",
        "more hardware and features no test touches",
    ),
];

/// The cached kernel tree, if it is built (without building it).
pub fn cached() -> Result<Option<PathBuf>> {
    let Ok(version) = capture(
        "asking dpkg for the kernel source's version",
        Command::new("dpkg-query").args(["-W", "-f", "${Version}", SOURCE_PACKAGE]),
    ) else {
        return Ok(None);
    };
    let dest = super::vm_dir()?.join(cache_key(&version));
    Ok(dest.join("boot").is_dir().then_some(dest))
}

fn cache_key(version: &str) -> String {
    format!(
        "kprobe-kernel-{}-{:016x}",
        version.trim().replace(['~', ':', '+'], "_"),
        config_hash()
    )
}

/// `<cache>/vm/kprobe-kernel-…/`, building it first when it is not cached: a tree `kernel::obtain`
/// reads (boot/vmlinuz-<release>, boot/config-<release>).
pub fn obtain(vm_dir: &Path) -> Result<PathBuf> {
    setup::ensure_debian_packages(&[
        (SOURCE_TARBALL, SOURCE_PACKAGE),
        ("pahole", "dwarves"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("/usr/include/libelf.h", "libelf-dev"),
        ("/usr/include/openssl/ssl.h", "libssl-dev"),
        ("make", "make"),
        ("gcc", "gcc"),
        ("xz", "xz-utils"),
    ])?;
    let version = capture(
        "asking dpkg for the kernel source's version",
        Command::new("dpkg-query").args(["-W", "-f", "${Version}", SOURCE_PACKAGE]),
    )?;
    let key = cache_key(&version);
    let dest = vm_dir.join(&key);
    if dest.join("boot").is_dir() {
        step(&format!("kprobe kernel: cached in {}", dest.display()));
        return Ok(dest);
    }
    step(&format!(
        "kprobe kernel: building {SOURCE_PACKAGE} {} with bpf_override_return (once; 23 min on 2 idle cores here, cached as {key})",
        version.trim()
    ));
    let started = Instant::now();
    let work = TempDir::create(vm_dir, "kbuild")?;
    let tree = build_in(&work.path)?;
    let release = capture(
        "make kernelrelease",
        Command::new("make")
            .args(["-s", "kernelrelease"])
            .current_dir(&tree),
    )?;
    let release = release.trim();
    let staging = work.path.join("out");
    let boot = staging.join("boot");
    std::fs::create_dir_all(&boot).with_context(|| format!("creating {}", boot.display()))?;
    for (from, to) in [
        ("arch/x86/boot/bzImage", format!("vmlinuz-{release}")),
        (".config", format!("config-{release}")),
    ] {
        std::fs::copy(tree.join(from), boot.join(&to))
            .with_context(|| format!("copying {from} to {}", boot.join(&to).display()))?;
    }
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&staging, &dest)
        .with_context(|| format!("moving {} to {}", staging.display(), dest.display()))?;
    step(&format!(
        "kprobe kernel: {release} built in {:.1} min, cached in {}",
        started.elapsed().as_secs_f64() / 60.0,
        dest.display()
    ));
    Ok(dest)
}

/// Unpacks the source into `work`, configures it and builds bzImage; returns the source tree.
fn build_in(work: &Path) -> Result<PathBuf> {
    step("kprobe kernel: unpacking the source (about 1 min)");
    setup::run_step(
        "unpacking the kernel source",
        Command::new("tar")
            .arg("xf")
            .arg(SOURCE_TARBALL)
            .current_dir(work),
    )?;
    let tree = work.join("linux-source-6.12");
    if !tree.is_dir() {
        bail!("{SOURCE_TARBALL} did not unpack into {}", tree.display());
    }
    step(
        "kprobe kernel: configuring (x86_64_defconfig + kvm_guest.config + the options in xtask/src/vm/build_kernel.rs)",
    );
    for target in ["x86_64_defconfig", "kvm_guest.config"] {
        quiet_make(&tree, &[target])?;
    }
    let mut config = Command::new("scripts/config");
    config.current_dir(&tree);
    for (args, _why) in CONFIG {
        config.args(args.split_whitespace());
    }
    setup::run_step("scripts/config", &mut config)?;
    quiet_make(&tree, &["olddefconfig"])?;
    check_config(&tree.join(".config"))?;
    let jobs = std::thread::available_parallelism().map_or(2, usize::from);
    step(&format!(
        "kprobe kernel: compiling (make -j{jobs} bzImage; a progress line a minute; log: {})",
        work.join("make.log").display()
    ));
    compile(&tree, jobs, &work.join("make.log"))?;
    Ok(tree)
}

fn quiet_make(tree: &Path, args: &[&str]) -> Result<()> {
    capture(
        &format!("make {}", args.join(" ")),
        Command::new("make").args(args).current_dir(tree),
    )
    .map(|_| ())
}

/// The options olddefconfig could silently drop (a missing dependency) must have survived.
fn check_config(config: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    for must in [
        "CONFIG_BPF_KPROBE_OVERRIDE=y",
        "CONFIG_FUNCTION_ERROR_INJECTION=y",
        "CONFIG_BPF_LSM=y",
        "CONFIG_SECURITYFS=y",
        "CONFIG_DEBUG_INFO_BTF=y",
        "CONFIG_NET_SCH_FQ=y",
        "CONFIG_NET_SCH_NETEM=y",
        "CONFIG_VETH=y",
    ] {
        if !text.lines().any(|l| l == must) {
            bail!(
                "the kernel config lost {must} in make olddefconfig (a dependency is missing); see {}",
                config.display()
            );
        }
    }
    Ok(())
}

/// `make -jN bzImage`, its output in `log`, a progress line a minute (files compiled so far).
fn compile(tree: &Path, jobs: usize, log: &Path) -> Result<()> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new("make")
        .arg(format!("-j{jobs}"))
        .arg("bzImage")
        .current_dir(tree)
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .context("starting make bzImage")?;
    let stdout = child.stdout.take().context("make's stdout")?;
    let started = Instant::now();
    let mut last = Instant::now();
    let mut compiled = 0u64;
    let mut copy = std::io::LineWriter::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?,
    );
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading make's output")?;
        use std::io::Write as _;
        let _ = writeln!(copy, "{line}");
        if line.trim_start().starts_with("CC ") {
            compiled += 1;
        }
        if last.elapsed() >= Duration::from_secs(60) {
            last = Instant::now();
            step(&format!(
                "kprobe kernel: {compiled} files compiled in {:.0} min (about 2,150 in all)",
                started.elapsed().as_secs_f64() / 60.0
            ));
        }
    }
    let status = child.wait().context("waiting for make")?;
    if !status.success() {
        bail!(
            "building the kprobe kernel failed ({status}); the end of {} says why",
            log.display()
        );
    }
    Ok(())
}

/// FNV-1a over the config list and the source tarball's name: the cache key's second half.
fn config_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |s: &str| {
        for b in s.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(SOURCE_TARBALL);
    feed(LOCALVERSION);
    for (args, _) in CONFIG {
        feed(args);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines_are_scripts_config_arguments() {
        for (args, why) in CONFIG {
            assert!(!why.is_empty());
            let mut words = args.split_whitespace();
            while let Some(flag) = words.next() {
                assert!(
                    matches!(flag, "-e" | "-d" | "--set-str"),
                    "{flag} in {args}"
                );
                assert!(words.next().is_some(), "{flag} needs a name in {args}");
                if flag == "--set-str" {
                    assert!(words.next().is_some(), "{args}: --set-str NAME VALUE");
                }
            }
        }
        assert!(CONFIG.iter().any(|(a, _)| a.contains(LOCALVERSION)));
    }
}
