//! Reading files a user (or another process) hands kchaos, with a size limit: a scenario, a report, a
//! run record. kchaos runs as root, so `kchaos report /dev/zero` must end with a clear error, not with
//! the machine's memory.

use std::{
    io::{self, Read as _},
    path::{Path, PathBuf},
};

/// Scenario files: the largest real ones are a few kB; 100k generated faults are about 7 MB.
pub const SCENARIO_LIMIT: u64 = 16 << 20;
/// JSON reports: per-second samples of a day-long run stay well below this.
pub const REPORT_LIMIT: u64 = 64 << 20;
/// Run records under /run/kchaos: a handful of residue entries.
pub const RECORD_LIMIT: u64 = 1 << 20;

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{what} {} is larger than {} (the limit for a {what}): is it the right file?",
        path.display(),
        human(*limit)
    )]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        limit: u64,
    },
    #[error("{what} {} is {is}: give a regular file", path.display())]
    NotRegular {
        what: &'static str,
        path: PathBuf,
        is: &'static str,
    },
    #[error("{what} {} is not UTF-8 text", path.display())]
    NotText { what: &'static str, path: PathBuf },
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Reads at most `limit` bytes of `path` (a device or pipe included: it never reads past the limit).
/// `what` names the file in errors ("scenario file", "report").
pub fn read(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
    let io_err = |source| ReadError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    read_capped(file, path, limit, what)
}

/// At most `limit` bytes of `file` (one more is read to tell a file that is larger).
fn read_capped(
    file: std::fs::File,
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io {
            what,
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            what,
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// [`read`] of a regular file only: opened with O_NONBLOCK (a FIFO with no writer does not block the
/// open), checked with fstat, and refused naming what it is if it is not a regular file.
pub fn read_regular(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let io_err = |source| ReadError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err)?;
    let kind = file.metadata().map_err(io_err)?.file_type();
    if !kind.is_file() {
        let is = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO (named pipe)"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(ReadError::NotRegular {
            what,
            path: path.to_owned(),
            is,
        });
    }
    // A regular file: blocking reads again (O_NONBLOCK has no effect on one, but say so plainly).
    // SAFETY: fcntl on the descriptor `file` owns; F_GETFL/F_SETFL change only its flags.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    read_capped(file, path, limit, what)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64, what: &'static str) -> Result<String, ReadError> {
    String::from_utf8(read(path, limit, what)?).map_err(|_| ReadError::NotText {
        what,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_stops_at_the_limit() {
        let e = read(Path::new("/dev/zero"), 1 << 10, "scenario file").unwrap_err();
        assert!(
            e.to_string()
                .contains("scenario file /dev/zero is larger than 1 KiB"),
            "{e}"
        );
    }

    #[test]
    fn a_small_file_reads_whole() {
        let dir = std::env::temp_dir().join(format!("kchaos-bounded-{}", std::process::id()));
        std::fs::write(&dir, "abc").unwrap();
        assert_eq!(read_to_string(&dir, 3, "report").unwrap(), "abc");
        assert!(matches!(
            read(&dir, 2, "report"),
            Err(ReadError::TooLarge { .. })
        ));
        let _ = std::fs::remove_file(&dir);
    }
}
