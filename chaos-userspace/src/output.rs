//! Files a run writes when it ends (`--json`, `--report`, `--junit`, `--out`). Each is opened before
//! anything is attached, so a path kchaos cannot write is bad input up front (exit 2, nothing attached),
//! not an error after the fault has run its course. The content is written at the end.

use std::{
    fs::{File, OpenOptions},
    io::{self, Seek as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::error::BadInput;

/// An output file, open for writing, its content still to come. Dropped unwritten (the run failed), it
/// removes the file if it made it; a file that existed before keeps its old content.
#[derive(Debug)]
pub struct OutputFile {
    flag: String,
    path: PathBuf,
    file: Option<File>,
    /// kchaos made it (it did not exist before).
    created: bool,
}

/// Opens (or creates) `path` for writing; `flag` names where it came from in errors ("--json").
pub fn create_output(path: &Path, flag: &str) -> Result<OutputFile, BadInput> {
    let (file, created) = match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => (f, true),
        // Opened without truncating: until the run ends, the old content stays.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            match OpenOptions::new().write(true).open(path) {
                Ok(f) => (f, false),
                Err(e) => return Err(cannot_write(path, flag, &e)),
            }
        }
        Err(e) => return Err(cannot_write(path, flag, &e)),
    };
    Ok(OutputFile {
        flag: flag.to_owned(),
        path: path.to_owned(),
        file: Some(file),
        created,
    })
}

/// [`create_output`] for an optional flag.
pub fn create_if_asked(path: Option<&Path>, flag: &str) -> Result<Option<OutputFile>, BadInput> {
    path.map(|p| create_output(p, flag)).transpose()
}

fn cannot_write(path: &Path, flag: &str, e: &io::Error) -> BadInput {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let why = match e.kind() {
        io::ErrorKind::NotFound => format!("the directory {} does not exist", parent.display()),
        io::ErrorKind::IsADirectory => "it is a directory".to_owned(),
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

    /// Replaces the file's content with `contents`.
    pub fn write(mut self, contents: &[u8]) -> Result<()> {
        let mut file = self
            .file
            .take()
            .context("the output file was written already")?;
        let result = (|| -> io::Result<()> {
            // A regular file is replaced; a pipe or device (/dev/stdout) is simply written to.
            if file.metadata()?.is_file() {
                file.set_len(0)?;
                file.rewind()?;
            }
            file.write_all(contents)?;
            file.flush()
        })();
        match result {
            Ok(()) => {
                // Written: it stays, whatever comes next.
                self.created = false;
                Ok(())
            }
            Err(e) => {
                Err(e).with_context(|| format!("{} {}: writing it", self.flag, self.path.display()))
            }
        }
    }

    /// Writes `value` as pretty JSON and a newline.
    pub fn write_json(self, value: &impl serde::Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        self.write((text + "\n").as_bytes())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.created {
            // The run ended before writing it: leave no empty file behind.
            let _ = std::fs::remove_file(&self.path);
        }
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
}
