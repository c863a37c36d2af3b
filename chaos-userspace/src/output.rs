//! Files a run writes when it ends (`--json`, `--report`, `--junit`, `--out`), and every other file
//! kchaos writes for a user (`status --json`, `probe --json`, `report --html`, man pages). Each is
//! checked before anything is attached, so a path kchaos cannot write is bad input up front (exit 2,
//! nothing attached), not an error after the fault has run its course. The content is written at the
//! end into a new temporary file in the same directory (O_CREAT|O_EXCL|O_NOFOLLOW), fsync'd and
//! renamed into place: a symlink at the destination is replaced, never followed, and a kchaos killed
//! while writing leaves the old file whole, never half a report. A FIFO or character device (a named
//! pipe, /dev/null) and /dev/stdout, /dev/stderr, /dev/fd/N are written to as they are.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};

use crate::error::BadInput;

/// An output file, checked, its content still to come. Dropped unwritten (the run failed), it leaves
/// the destination as it was.
#[derive(Debug)]
pub struct OutputFile {
    flag: String,
    path: PathBuf,
    target: Option<Target>,
}

#[derive(Debug)]
enum Target {
    /// A regular file (or nothing yet, or a symlink): a temporary file renamed over it, with `mode`.
    Replace { mode: u32 },
    /// A pipe, a terminal, /dev/null, the caller's stdout: written to as it is.
    Stream(File),
}

/// /dev/stdout and the like: the caller's own descriptors, written to as they are.
fn is_own_descriptor(path: &Path) -> bool {
    let p = path.to_string_lossy();
    p == "/dev/stdout"
        || p == "/dev/stderr"
        || p.starts_with("/dev/fd/")
        || p.starts_with("/proc/self/fd/")
}

/// A new, empty temporary file next to `path` (O_CREAT|O_EXCL|O_NOFOLLOW, `mode`), and its path.
fn temporary_beside(path: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name in it"))?;
    let mut tries = 0;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(
            ".{}.kchaos-{}-{}-{nanos:08x}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => {
                // The mode exactly (the umask may have taken bits off).
                let _ = f.set_permissions(std::fs::Permissions::from_mode(mode));
                return Ok((f, tmp));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Checks that `path` can be written; `flag` names where it came from in errors ("--json").
pub fn create_output(path: &Path, flag: &str) -> Result<OutputFile, BadInput> {
    create_output_mode(path, flag, 0o644)
}

/// [`create_output`] with the mode of a new file (an existing regular file keeps its own).
pub fn create_output_mode(path: &Path, flag: &str, mode: u32) -> Result<OutputFile, BadInput> {
    let stream = |path: &Path| {
        OpenOptions::new()
            .write(true)
            .open(path)
            .map(Target::Stream)
            .map_err(|e| cannot_write(path, flag, &e))
    };
    let target = if is_own_descriptor(path) {
        stream(path)?
    } else {
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => {
                return Err(cannot_write(
                    path,
                    flag,
                    &io::Error::from(io::ErrorKind::IsADirectory),
                ));
            }
            Ok(md) if md.file_type().is_fifo() || md.file_type().is_char_device() => stream(path)?,
            Ok(md) if md.file_type().is_block_device() || md.file_type().is_socket() => {
                return Err(BadInput::new(format!(
                    "{flag} {}: it is a device or socket, not a file; give a file path",
                    path.display()
                )));
            }
            Ok(md) if md.is_file() => Target::Replace {
                mode: md.permissions().mode() & 0o7777,
            },
            // Nothing there, or a symlink (replaced, never followed).
            _ => Target::Replace { mode },
        }
    };
    if let Target::Replace { mode } = target {
        // That a file can be made there: made and removed again now, before anything is attached.
        let (_, tmp) = temporary_beside(path, mode).map_err(|e| cannot_write(path, flag, &e))?;
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(OutputFile {
        flag: flag.to_owned(),
        path: path.to_owned(),
        target: Some(target),
    })
}

/// [`create_output`] for an optional flag.
pub fn create_if_asked(path: Option<&Path>, flag: &str) -> Result<Option<OutputFile>, BadInput> {
    path.map(|p| create_output(p, flag)).transpose()
}

/// Writes `contents` to `path` the same way (checked, then a temporary file renamed into place).
pub fn write_file(path: &Path, flag: &str, contents: &[u8]) -> Result<()> {
    create_output(path, flag)?.write(contents)
}

fn cannot_write(path: &Path, flag: &str, e: &io::Error) -> BadInput {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let why = match e.kind() {
        io::ErrorKind::NotFound => format!("the directory {} does not exist", parent.display()),
        io::ErrorKind::IsADirectory => "it is a directory".to_owned(),
        io::ErrorKind::PermissionDenied => {
            format!("no permission to create a file in {}", parent.display())
        }
        _ => e.to_string(),
    };
    BadInput::new(format!(
        "{flag} {}: cannot write it ({why}); give a file kchaos can create or write",
        path.display()
    ))
}

impl OutputFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with one holding `contents` (a stream gets them written to it).
    pub fn write(mut self, contents: &[u8]) -> Result<()> {
        let target = self
            .target
            .take()
            .context("the output file was written already")?;
        let what = || format!("{} {}: writing it", self.flag, self.path.display());
        match target {
            Target::Stream(mut f) => {
                f.write_all(contents).with_context(what)?;
                f.flush().with_context(what)
            }
            Target::Replace { mode } => {
                let (mut f, tmp) = temporary_beside(&self.path, mode)
                    .map_err(|e| cannot_write(&self.path, &self.flag, &e))?;
                let done = f
                    .write_all(contents)
                    .and_then(|()| f.sync_all())
                    .and_then(|()| std::fs::rename(&tmp, &self.path));
                if let Err(e) = done {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e).with_context(what);
                }
                // The rename itself durable too (best effort: a directory may refuse fsync).
                if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty())
                    && let Ok(d) = File::open(dir)
                {
                    let _ = d.sync_all();
                }
                Ok(())
            }
        }
    }

    /// Writes `value` as pretty JSON and a newline.
    pub fn write_json(self, value: &impl serde::Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        self.write((text + "\n").as_bytes())
    }
}

/// `--json [FILE]` of a command that shows a state (`probe`, `status`): pretty JSON on stdout for a
/// bare `--json` (or `--json -`), else into FILE.
pub fn print_or_write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    if path == Path::new("-") {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    } else {
        create_output(path, "--json")?.write_json(value)
    }
}

/// One line on stderr for an old spelling that still works for one release: `old` is what the user
/// wrote (a flag or a scenario field with its path), `new` what to write instead. Each old spelling is
/// named once a run (`faults[3].net.drop` after `faults[0].net.drop` is not named again).
pub fn deprecated(old: &str, new: &str) {
    static SAID: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    // The spelling without list indices: one line for a field in every fault, not one a fault.
    let mut key = String::with_capacity(old.len());
    let mut in_index = false;
    for c in old.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if in_index => continue,
            _ => {}
        }
        key.push(c);
    }
    let Ok(mut said) = SAID.lock() else { return };
    if !said.get_or_insert_default().insert(key) {
        return;
    }
    eprintln!(
        "kchaos: warning: {old} is deprecated, write {new} instead (the old spelling works until the \
         next release)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kchaos-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_unwritable_path_is_bad_input_naming_flag_and_path() {
        let e = create_output(Path::new("/proc/nonexistent/x.json"), "--json").unwrap_err();
        assert!(
            e.0.starts_with("--json /proc/nonexistent/x.json: cannot write it (the directory /proc/nonexistent does not exist)"),
            "{e}"
        );
        let d = dir("isdir");
        let e = create_output(&d, "--report").unwrap_err();
        assert!(e.0.contains("--report") && e.0.contains("directory"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unwritten_files_it_made_are_removed_and_old_ones_kept() {
        let d = dir("keep");
        let fresh = d.join("fresh.json");
        drop(create_output(&fresh, "--json").unwrap());
        assert!(!fresh.exists(), "an unwritten new file stays behind");

        let old = d.join("old.json");
        std::fs::write(&old, "old content that is long").unwrap();
        drop(create_output(&old, "--json").unwrap());
        assert_eq!(
            std::fs::read_to_string(&old).unwrap(),
            "old content that is long"
        );

        create_output(&old, "--json")
            .unwrap()
            .write(b"new")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "new");
        create_output(&fresh, "--json")
            .unwrap()
            .write_json(&serde_json::json!({"a": 1}))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&fresh).unwrap(),
            "{\n  \"a\": 1\n}\n"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_is_replaced_never_followed() {
        let d = dir("link");
        let victim = d.join("victim");
        std::fs::write(&victim, "victim").unwrap();
        let link = d.join("r.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        create_output(&link, "--json")
            .unwrap()
            .write(b"report")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "report");
        // A dangling link, too; and nothing but the two files is left in the directory.
        let dangling = d.join("d.json");
        std::os::unix::fs::symlink(d.join("missing/x"), &dangling).unwrap();
        write_file(&dangling, "--json", b"r").unwrap();
        assert_eq!(std::fs::read_to_string(&dangling).unwrap(), "r");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 3);
        // An existing file keeps its mode.
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_file(&victim, "--json", b"v2").unwrap();
        let md = std::fs::metadata(&victim).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        let e = create_output(&d.join("no/such/dir/x.json"), "--json").unwrap_err();
        assert!(
            e.0.contains("x.json") && e.0.contains("does not exist"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
