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
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            what,
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
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
