//! Shared by the file-reader targets: a per-process scratch directory, so
//! readers that take paths see the fuzz input as a real file.

use std::path::PathBuf;

/// `$TMPDIR/nhpatch-fuzz-<target>-<pid>`, created on first use.
pub fn scratch_dir(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nhpatch-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
    dir
}

// Not every target writes a file.
#[allow(dead_code)]
/// Writes `bytes` to `name` inside the target's scratch directory and returns its path.
pub fn write_input(target: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir(target).join(name);
    std::fs::write(&path, bytes).expect("cannot write the fuzz input");
    path
}
