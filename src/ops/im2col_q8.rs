//! im2col over 7-bit activation codes, straight into the packed-B layout of
//! the int8 GEMM (`gemm::q8`): the patch matrix `col[K, P]` of `im2col`
//! (rows `(ci, ki, kj)`, columns `(oy, ox)`), each element written at the
//! byte `gemm::q8` documents for element `(p, col0 + j)` of a `K x cols`
//! matrix. Positions outside the image get `zero`, the code of 0.0, so
//! padding is exact. Image `j` of a tile occupies columns `col0 .. col0 + P`.

use crate::error::{Error, Result};
use crate::gemm::q8::{PANEL, packed_b_len, padded_depth};
use crate::ops::im2col::Window;

/// Writes the patch matrix of one image's codes (`g.in_len()` of them) into
/// the packed buffer `dst` of a `g.k() x cols` matrix, at column `col0`.
pub fn im2col_q8(dst: &mut [u8], cols: usize, col0: usize, codes: &[u8], g: &Window, zero: u8) -> Result<()> {
    let (k, p) = (g.k(), g.p());
    if codes.len() != g.in_len() || dst.len() != packed_b_len(k, cols) || col0 + p > cols {
        return Err(Error::Shape(format!(
            "im2col_q8: image of {} codes (needs {}), columns {col0}..{} of {cols}, buffer {} (needs {})",
            codes.len(),
            g.in_len(),
            col0 + p,
            dst.len(),
            packed_b_len(k, cols)
        )));
    }
    let kp = padded_depth(k);
    let (hw, s) = (g.h * g.w, g.stride);
    for ci in 0..g.cin {
        let plane = &codes[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (ci * g.kh + ki) * g.kw + kj;
                // Byte of (row, column J): panel(J) * kp * 16 + step(row) + 4 * (J % 16) + row % 4.
                let base = (row / 4) * 4 * PANEL + row % 4;
                let (lo, hi) = g.valid_cols(kj);
                for oy in 0..g.ho {
                    let iy = g.in_row(oy, ki);
                    for ox in 0..g.wo {
                        let v = match iy {
                            Some(iy) if ox >= lo && ox < hi => plane[iy * g.w + ox * s + kj - g.pad.left],
                            _ => zero,
                        };
                        let jj = col0 + oy * g.wo + ox;
                        dst[(jj / PANEL) * kp * PANEL + base + 4 * (jj % PANEL)] = v;
                    }
                }
            }
        }
    }
    Ok(())
}
