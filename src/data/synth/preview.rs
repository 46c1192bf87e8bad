//! A montage for people to look at a generated dataset: for a few random
//! classes of a few sequences (i_ and v_), a row of the patches `ref, e1,
//! e3, e5, h3, t3, t5` and below it their noisy twins, each patch shown at
//! twice its size, blocks separated by a gap. It reads the strips back from
//! disk, so it shows exactly what was written.

use super::IMAGES;
use crate::error::{Error, Result};
use crate::io::png::{GrayImage, read_strip, write_gray};
use crate::io::{PATCH, PATCH_LEN};
use crate::rng::Rng;
use std::path::Path;

/// Images shown in each row.
pub const COLUMNS: [&str; 7] = ["ref", "e1", "e3", "e5", "h3", "t3", "t5"];
const ZOOM: usize = 2;
const GAP: usize = 4;
const BACKGROUND: u8 = 255;

/// Writes a montage of `classes_per_sequence` random classes of each of
/// `sequences` (folders under `root`) to `path`.
pub fn write_preview(
    root: &Path,
    sequences: &[String],
    classes_per_sequence: usize,
    seed: u64,
    path: &Path,
) -> Result<()> {
    if sequences.is_empty() || classes_per_sequence == 0 {
        return Err(Error::InvalidArgument("a preview needs at least one sequence and one class".into()));
    }
    let cell = PATCH * ZOOM;
    let width = COLUMNS.len() * (cell + GAP) + GAP;
    let block = 2 * cell + 1 + GAP;
    let height = sequences.len() * classes_per_sequence * block + GAP;
    let mut img = GrayImage { width, height, pixels: vec![BACKGROUND; width * height] };
    let mut rng = Rng::stream(seed, 0x9e1e);
    let mut row = 0;
    for seq in sequences {
        let strips = COLUMNS
            .iter()
            .map(|c| {
                debug_assert!(IMAGES.contains(c));
                let clean = read_strip(&root.join(seq).join(format!("{c}.png")))?;
                let noisy = read_strip(&root.join(seq).join(format!("{c}_noise.png")))?;
                Ok((clean, noisy))
            })
            .collect::<Result<Vec<_>>>()?;
        let n = strips[0].0.count;
        for _ in 0..classes_per_sequence {
            let class = rng.below(n as u64) as usize;
            let top = GAP + row * block;
            for (col, (clean, noisy)) in strips.iter().enumerate() {
                let left = GAP + col * (cell + GAP);
                for (k, strip) in [clean, noisy].into_iter().enumerate() {
                    let patch = strip.patches.get(class * PATCH_LEN..(class + 1) * PATCH_LEN).ok_or_else(|| {
                        Error::Shape(format!("{seq}: strips of one sequence hold different numbers of patches"))
                    })?;
                    let y0 = top + k * (cell + 1);
                    for y in 0..cell {
                        for x in 0..cell {
                            img.pixels[(y0 + y) * width + left + x] = patch[(y / ZOOM) * PATCH + x / ZOOM];
                        }
                    }
                }
            }
            row += 1;
        }
    }
    write_gray(path, &img)
}
