//! Unique names, and temporary files and directories that remove themselves (also when an assertion
//! fails).

use std::path::{Path, PathBuf};

/// A tag for lab and file names: unique per test process and call.
pub fn tag(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}{}",
        std::process::id() % 1000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A file in the temp dir, removed when dropped. KCHAOS_TEST_KEEP=DIR keeps a copy there first (e.g.
/// a report, or an HTML page to look at in a browser).
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// A name for a file not made yet (kchaos writes it).
    pub fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("kchaos-test-{}-{name}", tag("f"))))
    }

    /// A file holding `text`.
    pub fn with(name: &str, text: &str) -> Self {
        let f = Self::new(name);
        std::fs::write(&f.0, text).expect("writing a temp file");
        f
    }

    /// Its path, as an argument.
    pub fn s(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("KCHAOS_TEST_KEEP")
            && let Some(name) = self.0.file_name()
        {
            let _ = std::fs::copy(&self.0, Path::new(&dir).join(name));
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A scratch directory in the temp dir, removed with its contents when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kchaos-test-{what}-{}", tag("t")));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
