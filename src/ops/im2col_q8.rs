//! im2col over 7-bit activation codes (`gemm::q8`): the patch matrix
//! `col[K, P]` of `im2col` (rows `(ci, ki, kj)`, columns `(oy, ox)`) as
//! bytes, row-major with row stride `ld`, image `j` of a tile at columns
//! `col0 .. col0 + P`. Positions outside the image get `zero`, the code of
//! 0.0, so padding is exact. `gemm::q8::pack_b_codes` then packs it.

use crate::error::{Error, Result};
use crate::ops::im2col::Window;

/// Writes the patch matrix of one image's codes (`g.in_len()` of them) into
/// `col` (`g.k()` rows of stride `ld`) at column `col0`.
pub fn im2col_u8(col: &mut [u8], ld: usize, col0: usize, codes: &[u8], g: &Window, zero: u8) -> Result<()> {
    let (k, p) = (g.k(), g.p());
    if codes.len() != g.in_len() || col0 + p > ld || (k > 0 && (k - 1) * ld + col0 + p > col.len()) {
        return Err(Error::Shape(format!(
            "im2col_u8: image of {} codes (needs {}), columns {col0}..{} of a row stride {ld}, buffer {} for {k} rows",
            codes.len(),
            g.in_len(),
            col0 + p,
            col.len()
        )));
    }
    let (hw, s) = (g.h * g.w, g.stride);
    for ci in 0..g.cin {
        let plane = &codes[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (ci * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * ld + col0..row * ld + col0 + p];
                let (lo, hi) = g.valid_cols(kj);
                for (oy, out) in dst.chunks_exact_mut(g.wo).enumerate() {
                    let Some(iy) = g.in_row(oy, ki) else {
                        out.fill(zero);
                        continue;
                    };
                    out[..lo].fill(zero);
                    out[hi..].fill(zero);
                    // Input column of output column ox: ox * s + kj - left (inside for lo <= ox < hi).
                    let start = iy * g.w + lo * s + kj - g.pad.left;
                    if s == 1 {
                        out[lo..hi].copy_from_slice(&plane[start..start + (hi - lo)]);
                    } else {
                        out[lo..hi].iter_mut().zip(plane[start..].iter().step_by(s)).for_each(|(o, &v)| *o = v);
                    }
                }
            }
        }
    }
    Ok(())
}
