//! File input and output: patch strips (PNG), NumPy arrays (.npy),
//! photographs (PNG, JPEG), atomic writes, and `load_patches`, which turns
//! either patch file kind into a batch of 32x32 patches.
//!
//! Every reader validates before it allocates: a declared size is checked
//! against the bytes actually present, so a lying header cannot make the
//! program allocate without bound. Every error names the file.

pub mod npy;
pub mod photo;
pub mod png;
pub mod resize;

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Side of the square patches every network takes.
pub const PATCH: usize = 32;
/// Pixels in one patch.
pub const PATCH_LEN: usize = PATCH * PATCH;

/// A batch of 32x32 single-channel patches, values in 0..255 as f32, `[n, 32, 32]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Patches {
    pub n: usize,
    pub data: Vec<f32>,
}

/// Reads a PNG strip (patches stacked vertically, any width, resized to 32x32
/// when the width is not 32) or a `.npy` array `(N,32,32)` / `(N,1,32,32)` of
/// u8 or f32, chosen by the file extension.
pub fn load_patches(path: &Path) -> Result<Patches> {
    match extension(path).as_deref() {
        Some("png") => {
            let strip = png::read_strip(path)?;
            Ok(Patches { n: strip.count, data: strip.patches.iter().map(|&v| v as f32).collect() })
        }
        Some("npy") => npy::read_patches(path),
        _ => Err(Error::Format {
            path: path.to_path_buf(),
            msg: "unknown input kind: expected a .png strip or a .npy array".into(),
        }),
    }
}

/// The lower-cased extension of `path`, if any.
pub fn extension(path: &Path) -> Option<String> {
    path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase())
}

/// An `Error::Io` naming `path`.
pub fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source }
}

/// Writes `path` atomically: the bytes go to a temporary file in the same
/// directory, which is flushed, synced and renamed over `path`. A crash or an
/// error at any point leaves either the old file or the new one, never a
/// partial one; on error the temporary file is removed.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = parent_dir(path);
    let name =
        path.file_name().ok_or_else(|| Error::InvalidArgument(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| io_err(path, e))?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| io_err(path, e.into_error()))?;
        file.sync_all().map_err(|e| io_err(path, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        // The rename itself is durable only once the directory is synced.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The folder holding `path`: its parent, or `.` for a bare name.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_or_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("nhpatch-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.bin");
        write_atomic(&p, |w| w.write_all(b"one").map_err(|e| io_err(&p, e))).unwrap();
        let failed = write_atomic(&p, |w| {
            w.write_all(b"partial").map_err(|e| io_err(&p, e))?;
            Err(Error::InvalidArgument("stop".into()))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"one", "a failed write keeps the old file");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        assert!(write_atomic(&dir.join("missing/x.bin"), |_| Ok(())).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
