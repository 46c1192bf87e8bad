//! Patch montages: a grid of 32x32 patches, upscaled so a person can see
//! them, written as one 8-bit gray PNG (`denoise.png`: noisy | denoised |
//! clean per row; `triplets.png`: anchor | positive | negative per row).

use crate::error::{Error, Result};
use crate::io::png::{GrayImage, write_gray};
use crate::io::{PATCH, PATCH_LEN};
use std::path::Path;

/// Pixels between neighbouring patches and around the border.
pub const GAP: usize = 2;
/// Gray level of the gaps.
pub const BACKGROUND: u8 = 128;
/// Largest upscaling factor.
pub const MAX_SCALE: usize = 8;

/// Writes a grid of 32x32 patches to `path` as an 8-bit gray PNG (atomically).
///
/// `rows[r][c]` is the patch in row `r`, column `c` (1024 bytes, row-major).
/// Each patch is upscaled by `scale` (nearest neighbour, 1..=8); patches are
/// separated from each other and from the image border by `GAP` pixels of
/// `BACKGROUND`. Patch `(r, c)` therefore starts at
/// `x = GAP + c * (32 * scale + GAP)`, `y = GAP + r * (32 * scale + GAP)`.
pub fn write_montage(path: &Path, rows: &[Vec<&[u8]>], scale: usize) -> Result<()> {
    let img = montage(rows, scale)?;
    write_gray(path, &img)
}

/// Builds the montage image without writing it.
pub fn montage(rows: &[Vec<&[u8]>], scale: usize) -> Result<GrayImage> {
    if !(1..=MAX_SCALE).contains(&scale) {
        return Err(Error::InvalidArgument(format!("montage scale must be in 1..={MAX_SCALE}, got {scale}")));
    }
    let cols = rows.first().map_or(0, Vec::len);
    if cols == 0 {
        return Err(Error::InvalidArgument("a montage needs at least one row of at least one patch".into()));
    }
    for (r, row) in rows.iter().enumerate() {
        if row.len() != cols {
            return Err(Error::Shape(format!("montage row {r} has {} patches, row 0 has {cols}", row.len())));
        }
        if let Some((c, p)) = row.iter().enumerate().find(|(_, p)| p.len() != PATCH_LEN) {
            return Err(Error::Shape(format!(
                "montage patch ({r}, {c}): expected {PATCH_LEN} bytes (32x32), got {}",
                p.len()
            )));
        }
    }
    let side = PATCH * scale;
    let width = GAP + cols * (side + GAP);
    let height = GAP + rows.len() * (side + GAP);
    let mut pixels = vec![BACKGROUND; width * height];
    for (r, row) in rows.iter().enumerate() {
        let y0 = GAP + r * (side + GAP);
        for (c, patch) in row.iter().enumerate() {
            let x0 = GAP + c * (side + GAP);
            for y in 0..side {
                let src = &patch[(y / scale) * PATCH..(y / scale + 1) * PATCH];
                let dst = &mut pixels[(y0 + y) * width + x0..(y0 + y) * width + x0 + side];
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = src[x / scale];
                }
            }
        }
    }
    Ok(GrayImage { width, height, pixels })
}
