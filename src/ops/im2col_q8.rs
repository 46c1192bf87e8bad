//! im2col over 7-bit activation codes (`gemm::q8`): the patch matrix
//! `col[K, P]` of `im2col` (rows `(ci, ki, kj)`, columns `(oy, ox)`) as
//! bytes, row-major with row stride `ld`, image `j` of a tile at columns
//! `col0 .. col0 + P`. Positions outside the image get `zero`, the code of
//! 0.0, so padding is exact. `gemm::q8::pack_b_codes` then packs it.
//!
//! The fast path skips the patch matrix: `quantize_padded` writes one
//! image's codes once into a zero-point border (`[cin, ph, pw]`, the
//! window's padded extent), where every window row is a plain strided run,
//! and `im2col_packed_u8` gathers 4 depths at a time straight into the
//! packed-B layout of `gemm::q8` (panels of 16 columns, 4-code quads). It
//! writes the bytes `pack_b_codes(im2col_u8(..))` would (tests/conv_q8.rs):
//! one pass over the codes instead of three (im2col, its zero fills, the pack).

use crate::error::{Error, Result};
use crate::gemm::q8::{PANEL, Q8Act, interleave_step, packed_b_len, padded_depth};
use crate::ops::im2col::Window;

/// `(ph, pw)`: the input's extent with the window's padding around it.
pub fn padded_dims(g: &Window) -> (usize, usize) {
    (g.h + g.pad.top + g.pad.bottom, g.w + g.pad.left + g.pad.right)
}

/// Codes of one image (`x`: `[cin, h, w]` values) inside a border of
/// `act.zero` (`dst`: `[cin, ph, pw]`, see `padded_dims`).
pub fn quantize_padded(x: &[f32], act: Q8Act, g: &Window, dst: &mut [u8]) -> Result<()> {
    let (ph, pw) = padded_dims(g);
    if x.len() != g.in_len() || dst.len() != g.cin * ph * pw {
        return Err(Error::Shape(format!(
            "quantize_padded: {} values (needs {}) into {} codes (needs {})",
            x.len(),
            g.in_len(),
            dst.len(),
            g.cin * ph * pw
        )));
    }
    let (top, left) = (g.pad.top * pw, g.pad.left);
    for (src, plane) in x.chunks_exact(g.h * g.w).zip(dst.chunks_exact_mut(ph * pw)) {
        plane[..top + left].fill(act.zero);
        for (r, row) in src.chunks_exact(g.w).enumerate() {
            let at = top + r * pw + left;
            act.quantize_slice(row, &mut plane[at..at + g.w]);
            // This row's right border and the next row's left one (or the bottom rows).
            let end = if r + 1 < g.h { at + pw } else { ph * pw };
            plane[at + g.w..end].fill(act.zero);
        }
    }
    Ok(())
}

/// Writes image columns `col0 .. col0 + P` of the packed B (`packed`, laid
/// out for `cols` columns and depth `g.k()`, see `gemm::q8`) from its padded
/// codes (`quantize_padded`); depth padding is 0. Columns past `cols` in the
/// last panel are left as they are (no kernel stores them).
pub fn im2col_packed_u8(packed: &mut [u8], cols: usize, col0: usize, padded: &[u8], g: &Window) -> Result<()> {
    let (k, p) = (g.k(), g.p());
    let (ph, pw) = padded_dims(g);
    if padded.len() != g.cin * ph * pw || col0 + p > cols || packed.len() != packed_b_len(k, cols) {
        return Err(Error::Shape(format!(
            "im2col_packed_u8: {} padded codes (needs {}), columns {col0}..{} of {cols}, {} packed bytes (needs {})",
            padded.len(),
            g.cin * ph * pw,
            col0 + p,
            packed.len(),
            packed_b_len(k, cols)
        )));
    }
    let (kp, s, taps) = (padded_depth(k), g.stride, g.kh * g.kw);
    // Offset in `padded` of depth p's window origin (output pixel (0, 0)).
    let origin = |p: usize| (p / taps) * ph * pw + (p % taps / g.kw) * pw + p % g.kw;
    // Codes read per output row: columns 0, s, .., (wo - 1) * s of a window row.
    let span = (g.wo - 1) * s + 1;
    for step in 0..kp / 4 {
        let depth = |t: usize| (4 * step + t < k).then(|| origin(4 * step + t));
        let d = [depth(0), depth(1), depth(2), depth(3)];
        for oy in 0..g.ho {
            let row = |t: usize| d[t].map(|o| &padded[o + oy * s * pw..o + oy * s * pw + span]);
            let r = [row(0), row(1), row(2), row(3)];
            let mut ox = 0;
            while ox < g.wo {
                // The columns of this output row inside one panel.
                let j = col0 + oy * g.wo + ox;
                let n = (PANEL - j % PANEL).min(g.wo - ox);
                let at = (j / PANEL) * kp * PANEL + step * 4 * PANEL + 4 * (j % PANEL);
                let dst = &mut packed[at..at + 4 * n];
                match r {
                    [Some(r0), Some(r1), Some(r2), Some(r3)] if s == 1 && n == PANEL => {
                        // A whole panel row of 4 contiguous runs: one vector interleave.
                        let rows = [r0, r1, r2, r3].map(|r| <&[u8; PANEL]>::try_from(&r[ox..ox + PANEL]).expect("16 codes"));
                        interleave_step(dst.try_into().expect("64 bytes"), rows);
                    }
                    _ => {
                        for (i, q) in dst.chunks_exact_mut(4).enumerate() {
                            let at = (ox + i) * s;
                            for (c, rt) in q.iter_mut().zip(&r) {
                                *c = rt.map_or(0, |rt| rt[at]);
                            }
                        }
                    }
                }
                ox += n;
            }
        }
    }
    Ok(())
}

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
