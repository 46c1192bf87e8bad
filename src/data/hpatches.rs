//! The (N-)HPatches folder layout: a dataset root holds one folder per
//! sequence (`i_*`, `v_*`); a folder is a sequence when it holds a `ref.png`.
//! Each sequence holds the 16 strips `<image>.png` (see [`IMAGES`]) and, in
//! N-HPatches, their noisy twins `<image>_noise.png`.
//!
//! Contract of [`read_sequence`]:
//! - all 16 clean strips must be present and hold the same number of patches;
//! - noisy twins are all present (read, each with its clean strip's count) or
//!   all absent (generated with [`noise::noisy_image`], so plain HPatches
//!   trains the same way); a partial set is an error, since silently mixing
//!   real and generated noise would change the task;
//! - every inconsistency is an error naming the offending file.
//!
//! Strips are read in parallel, but results and the error reported do not
//! depend on scheduling: everything is checked in image order afterwards.

use super::{IMAGES, noise};
use crate::error::{Error, Result};
use crate::io::png::{Strip, read_strip};
use crate::io::{PATCH_LEN, io_err};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Images per sequence.
pub const IMAGE_COUNT: usize = IMAGES.len();

/// Which version of a patch: the clean strip or its noisy twin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Version {
    Clean,
    Noisy,
}

/// One sequence in memory: `clean` and `noisy` are `[16][count][32*32]` u8,
/// images in [`IMAGES`] order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    pub name: String,
    pub count: usize,
    pub clean: Vec<u8>,
    pub noisy: Vec<u8>,
}

impl Sequence {
    /// The `[count][32*32]` pixels of one image (0..16).
    pub fn image(&self, image: usize, version: Version) -> &[u8] {
        let len = self.count * PATCH_LEN;
        let all = match version {
            Version::Clean => &self.clean,
            Version::Noisy => &self.noisy,
        };
        &all[image * len..(image + 1) * len]
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.to_path_buf(), msg: msg.into() }
}

/// The file of one strip: `<dir>/<image>.png` or `<dir>/<image>_noise.png`.
pub fn strip_path(dir: &Path, image: usize, noisy: bool) -> PathBuf {
    let stem = IMAGES[image];
    dir.join(if noisy { format!("{stem}_noise.png") } else { format!("{stem}.png") })
}

/// The sequence folders of a dataset root (those holding a `ref.png`), sorted by name.
pub fn list_sequences(root: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(root).map_err(|e| io_err(root, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(root, e))?;
        let path = entry.path();
        if !path.join("ref.png").is_file() {
            continue;
        }
        let name = entry.file_name().into_string().map_err(|_| bad(&path, "sequence folder name is not UTF-8"))?;
        names.push(name);
    }
    if names.is_empty() {
        return Err(bad(root, "no sequence folders (folders holding a ref.png) in this dataset root"));
    }
    names.sort();
    Ok(names)
}

/// Checks that every sequence `wanted` (e.g. a split's train list) is in
/// `root`; returns them in the order given.
pub fn select_sequences(root: &Path, wanted: &[String]) -> Result<Vec<String>> {
    let present = list_sequences(root)?;
    if let Some(missing) = wanted.iter().find(|w| present.binary_search(w).is_err()) {
        return Err(bad(
            &root.join(missing),
            format!("sequence '{missing}' is named in the split but absent from the dataset root {}", root.display()),
        ));
    }
    Ok(wanted.to_vec())
}

/// Reads one sequence folder; generates the noisy twins with `noise_seed`
/// when the folder has none.
pub fn read_sequence(dir: &Path, noise_seed: u64) -> Result<Sequence> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad(dir, "a sequence folder needs a UTF-8 name"))?
        .to_string();
    for image in 0..IMAGE_COUNT {
        let p = strip_path(dir, image, false);
        if !p.is_file() {
            return Err(bad(&p, "missing image: a sequence needs all 16 strips (ref, e1..e5, h1..h5, t1..t5)"));
        }
    }
    let twins: Vec<bool> = (0..IMAGE_COUNT).map(|i| strip_path(dir, i, true).is_file()).collect();
    let n_twins = twins.iter().filter(|&&t| t).count();
    if n_twins != 0 && n_twins != IMAGE_COUNT {
        let missing = twins.iter().position(|&t| !t).unwrap_or(0);
        return Err(bad(
            &strip_path(dir, missing, true),
            format!(
                "missing noisy twin: the sequence has {n_twins} of 16 *_noise.png strips; \
                 it needs all of them, or none (then they are generated)"
            ),
        ));
    }
    let read_noisy = n_twins == IMAGE_COUNT;

    // Jobs in a fixed order: clean strips 0..16, then noisy twins 0..16.
    let jobs: Vec<(usize, bool)> = (0..IMAGE_COUNT)
        .map(|i| (i, false))
        .chain((0..IMAGE_COUNT).filter(|_| read_noisy).map(|i| (i, true)))
        .collect();
    let results: Vec<Result<Strip>> =
        jobs.par_iter().map(|&(i, noisy)| read_strip(&strip_path(dir, i, noisy))).collect();
    let mut strips = Vec::with_capacity(results.len());
    for r in results {
        strips.push(r?);
    }

    let count = strips[0].count;
    for (i, s) in strips.iter().enumerate() {
        let (image, noisy) = jobs[i];
        // A twin is compared with its clean strip, a clean strip with ref.
        let other = if noisy { image } else { 0 };
        let want = strips[other].count;
        if s.count != want {
            return Err(bad(
                &strip_path(dir, image, noisy),
                format!(
                    "has {} patches but {} has {want}: all strips of a sequence must hold the same patches",
                    s.count,
                    strip_path(dir, other, false).display()
                ),
            ));
        }
    }

    let image_len = count * PATCH_LEN;
    let mut clean = Vec::with_capacity(IMAGE_COUNT * image_len);
    for s in &strips[..IMAGE_COUNT] {
        clean.extend_from_slice(&s.patches);
    }
    let noisy = if read_noisy {
        let mut noisy = Vec::with_capacity(IMAGE_COUNT * image_len);
        for s in &strips[IMAGE_COUNT..] {
            noisy.extend_from_slice(&s.patches);
        }
        noisy
    } else {
        let mut noisy = vec![0u8; IMAGE_COUNT * image_len];
        noisy.par_chunks_mut(image_len).zip(clean.par_chunks(image_len)).enumerate().for_each(|(i, (out, src))| {
            noise::add_noise(out, src, i, &mut noise::stream(noise_seed, &name, i));
        });
        noisy
    };
    Ok(Sequence { name, count, clean, noisy })
}

/// Reads the named sequences of `root` in parallel, in the order given.
pub fn read_dataset(root: &Path, names: &[String], noise_seed: u64) -> Result<Vec<Sequence>> {
    let names = select_sequences(root, names)?;
    let results: Vec<Result<Sequence>> = names.par_iter().map(|n| read_sequence(&root.join(n), noise_seed)).collect();
    results.into_iter().collect()
}

/// FNV-1a 64 over bytes, continuing from `h`.
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A fingerprint of a dataset root's sources for cache invalidation: FNV-1a
/// 64 over the noise seed (it decides generated twins) and, for every
/// sequence and every one of its 32 possible strip files, the relative path,
/// whether it exists, its size and its modification time (ns). Any added,
/// removed, rewritten or touched strip changes it; contents are not read.
pub fn source_fingerprint(root: &Path, noise_seed: u64) -> Result<u64> {
    let mut h = fnv(0xcbf2_9ce4_8422_2325, &noise_seed.to_le_bytes());
    for seq in list_sequences(root)? {
        let dir = root.join(&seq);
        for noisy in [false, true] {
            for image in 0..IMAGE_COUNT {
                let path = strip_path(&dir, image, noisy);
                let rel = format!("{seq}/{}", path.file_name().and_then(|n| n.to_str()).unwrap_or(""));
                h = fnv(h, rel.as_bytes());
                h = match std::fs::metadata(&path) {
                    Ok(meta) => {
                        let mtime = meta
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_nanos());
                        let h = fnv(h, &[1]);
                        fnv(fnv(h, &meta.len().to_le_bytes()), &mtime.to_le_bytes())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => fnv(h, &[0]),
                    Err(e) => return Err(io_err(&path, e)),
                };
            }
        }
    }
    Ok(h)
}
