//! The VM's kernel: Debian's 6.12 package (downloaded once into the cache) or one the user names,
//! as a .deb or an unpacked directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::UNIX_EPOCH,
};

use anyhow::{Context as _, Result, bail};

use super::TempDir;
use crate::setup::{self, step};

/// The default kernel: BPF LSM, kprobes, sch_fq and sch_netem, none of which this host has.
const DEFAULT_PACKAGE: &str = "linux-image-6.12.100+deb12-amd64";
/// What payloads see as $KCHAOS_KERNEL_LABEL on the default kernel.
const DEFAULT_LABEL: &str = "vm-debian-6.12";
/// `--kernel kprobe`: the kernel xtask builds from Debian's source with bpf_override_return.
pub const KPROBE_KERNEL: &str = "kprobe";
/// Written into an unpacked tree once it is complete; names the .deb it came from.
const STAMP: &str = ".kchaos-unpacked-from";

pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`, when the tree has one.
    pub modules_dir: Option<PathBuf>,
    /// `boot/config-<release>`, when the tree has one.
    pub config: Option<PathBuf>,
    /// The release as the file names give it (what `uname -r` should print in the VM).
    pub release: String,
    /// $KCHAOS_KERNEL_LABEL for the payloads.
    pub label: String,
    /// Where the kernel came from, for the report.
    pub source: String,
}

/// Finds, downloads or unpacks the kernel: `custom` is a .deb or an unpacked tree, None the default.
pub fn obtain(custom: Option<&Path>, vm_dir: &Path) -> Result<Kernel> {
    if custom.is_some_and(|c| c == Path::new(KPROBE_KERNEL) && !c.exists()) {
        let root = super::build_kernel::obtain(vm_dir)?;
        return locate(
            &root,
            Some(super::build_kernel::LABEL),
            &root.display().to_string(),
        );
    }
    let Some(custom) = custom else {
        let deb = download_default(vm_dir)?;
        let root = unpack(&deb, vm_dir)?;
        return locate(&root, Some(DEFAULT_LABEL), &deb.display().to_string());
    };
    if custom.is_dir() {
        step(&format!(
            "kernel: using the unpacked tree {}",
            custom.display()
        ));
        return locate(custom, None, &custom.display().to_string());
    }
    if custom.is_file() {
        let root = unpack(custom, vm_dir)?;
        return locate(&root, None, &custom.display().to_string());
    }
    bail!("--kernel {}: no such .deb or directory", custom.display())
}

/// The default kernel's .deb in `vm_dir`, downloaded by apt-get the first time.
fn download_default(vm_dir: &Path) -> Result<PathBuf> {
    if let Some(deb) = find_deb(vm_dir)? {
        step(&format!("kernel package: cached {}", deb.display()));
        return Ok(deb);
    }
    step(&format!(
        "kernel package: downloading {DEFAULT_PACKAGE} (106 MB, once)"
    ));
    // Downloaded into a directory of its own, then moved: an interrupted download never looks cached.
    let tmp = TempDir::create(vm_dir, "download")?;
    let download = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["download", "-q", DEFAULT_PACKAGE])
            .current_dir(&tmp.path);
        cmd
    };
    if !download().status().is_ok_and(|s| s.success()) {
        step(
            "kernel package: download failed; refreshing apt's package lists (apt-get update) and retrying",
        );
        setup::run_step(
            "apt-get update",
            Command::new("apt-get").args(["update", "-qq"]),
        )?;
        setup::run_step(&format!("downloading {DEFAULT_PACKAGE}"), &mut download())?;
    }
    let got = find_deb(&tmp.path)?.with_context(|| {
        format!(
            "apt-get download left no {DEFAULT_PACKAGE}_*.deb in {}",
            tmp.path.display()
        )
    })?;
    let name = got
        .file_name()
        .context("downloaded .deb has no file name")?;
    let dest = vm_dir.join(name);
    std::fs::rename(&got, &dest)
        .with_context(|| format!("moving {} to {}", got.display(), dest.display()))?;
    Ok(dest)
}

/// The default package's .deb in `dir`, if there.
fn find_deb(dir: &Path) -> Result<Option<PathBuf>> {
    let prefix = format!("{DEFAULT_PACKAGE}_");
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut debs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    debs.sort();
    Ok(debs.pop())
}

/// Unpacks `deb` into `<vm_dir>/<its name>/` unless an unpacked copy of this very file is there.
fn unpack(deb: &Path, vm_dir: &Path) -> Result<PathBuf> {
    let stem = deb
        .file_stem()
        .context("the kernel .deb path has no file name")?;
    let dest = vm_dir.join(stem);
    let identity = deb_identity(deb)?;
    if std::fs::read_to_string(dest.join(STAMP)).is_ok_and(|s| s == identity) {
        step(&format!("kernel: unpacked in {}", dest.display()));
        return Ok(dest);
    }
    step(&format!("kernel: unpacking {} (about 2 s)", deb.display()));
    let tmp = vm_dir.join(format!(
        "{}.unpacking-{}",
        stem.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = unpack_into(deb, &tmp, &identity).and_then(|()| {
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("moving {} to {}", tmp.display(), dest.display()))
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| dest)
}

fn unpack_into(deb: &Path, dir: &Path, identity: &str) -> Result<()> {
    setup::run_step(
        &format!("unpacking {}", deb.display()),
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir),
    )?;
    std::fs::write(dir.join(STAMP), identity)
        .with_context(|| format!("writing the stamp in {}", dir.display()))
}

/// Path, size and modification time: a rebuilt .deb of the same name is unpacked again.
fn deb_identity(deb: &Path) -> Result<String> {
    let meta = std::fs::metadata(deb).with_context(|| format!("reading {}", deb.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let abs = std::fs::canonicalize(deb).unwrap_or_else(|_| deb.to_path_buf());
    Ok(format!(
        "{} {} {}",
        abs.display(),
        meta.len(),
        mtime.as_secs()
    ))
}

/// Finds the kernel image and its modules in an unpacked package (or a directory laid out like one).
fn locate(root: &Path, label: Option<&str>, source: &str) -> Result<Kernel> {
    let vmlinuz = find_vmlinuz(root)?;
    let from_name = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_owned);
    let modules_dir = find_modules_dir(root, from_name.as_deref());
    let release = from_name
        .or_else(|| {
            modules_dir
                .as_ref()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    if modules_dir.is_none() {
        step(&format!(
            "kernel: no lib/modules/{release} in {}: only built-in drivers",
            root.display()
        ));
    }
    let config = vmlinuz.with_file_name(format!("config-{release}"));
    Ok(Kernel {
        config: config.is_file().then_some(config),
        label: label.map_or_else(|| format!("vm-{release}"), str::to_owned),
        vmlinuz,
        modules_dir,
        release,
        source: source.to_owned(),
    })
}

fn find_vmlinuz(root: &Path) -> Result<PathBuf> {
    for dir in [root.join("boot"), root.to_path_buf()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
            })
            .collect();
        found.sort();
        if let Some(v) = found.pop() {
            return Ok(v);
        }
    }
    for candidate in ["bzImage", "arch/x86/boot/bzImage"] {
        if root.join(candidate).is_file() {
            return Ok(root.join(candidate));
        }
    }
    bail!(
        "no kernel image (boot/vmlinuz-*, vmlinuz*, bzImage) in {}",
        root.display()
    )
}

/// `lib/modules/<release>` (or under usr/, for merged-/usr packages); any single one if the
/// release is unknown.
fn find_modules_dir(root: &Path, release: Option<&str>) -> Option<PathBuf> {
    for base in [root.join("lib/modules"), root.join("usr/lib/modules")] {
        if let Some(rel) = release {
            if base.join(rel).is_dir() {
                return Some(base.join(rel));
            }
            continue;
        }
        let dirs: Vec<PathBuf> = std::fs::read_dir(&base)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        if let [only] = dirs.as_slice() {
            return Some(only.clone());
        }
    }
    None
}
