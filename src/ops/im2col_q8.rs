//! im2col over 7-bit activation codes (`gemm::q8`): the patch matrix
//! `col[K, P]` of `im2col` (rows `(ci, ki, kj)`, columns `(oy, ox)`) as
//! bytes, row-major with row stride `ld`, image `j` of a tile at columns
//! `col0 .. col0 + P`. Positions outside the image get `zero`, the code of
//! 0.0, so padding is exact. `gemm::q8::pack_b_codes` then packs it.
//!
//! The fast path skips the patch matrix and orders the depth by channel
//! quads ("c4"): depth `((ki * kw + kj) * G + g) * 4 + t` is channel
//! `4g + t` at tap `(ki, kj)` (`G = cin / 4` quads, tap-major so that 16
//! consecutive steps at one tap lie a fixed stride apart in the codes, one
//! AMX tile: `gemm::q8_amx`), channels past `cin` padded (`c4_depth`, `c4_step`;
//! `reorder_weights_c4` puts a weight matrix in the same order, its pads 0,
//! so the int8 sums are those of the `(ci, ki, kj)` order, term for term).
//! `quantize_padded_c4` writes one image's codes once, as `[cin / 4, ph, pw,
//! 4]` inside a zero-point border (the window's padded extent). A packed-B
//! step of `gemm::q8` is 16 columns' quads of 4 depths; in this order the
//! quads of one step are one channel quad at one tap, so for stride 1 a
//! run of output columns is one contiguous copy from the codes (stride s:
//! every s-th quad), and `gather_packed_c4` writes the packed B with no
//! byte shuffling. It writes the bytes `pack_b_codes` makes of the patch
//! matrix in this order (tests/conv_q8.rs). Faster still, where output
//! rows are a multiple of 8 wide, nothing is copied: `quantize_phased_c4`
//! splits the codes' columns into as many phases as the stride, so 8
//! output pixels of a row at one tap are 32 consecutive bytes, and
//! `c4_taps` gives the offsets at which `gemm::q8::gemm_q8_taps` reads them.

use crate::error::{Error, Result};
use crate::gemm::q8::{PANEL, PhaseCursor, Q8Act, Q8Layout, Q8Source, interleave_step, packed_b_len};
use crate::ops::im2col::Window;

/// `(ph, pw)`: the input's extent with the window's padding around it.
pub fn padded_dims(g: &Window) -> (usize, usize) {
    (g.h + g.pad.top + g.pad.bottom, g.w + g.pad.left + g.pad.right)
}

/// Depth of the c4 order: `cin` rounded up to whole quads, times the taps.
pub fn c4_depth(g: &Window) -> usize {
    g.cin.div_ceil(4) * 4 * g.kh * g.kw
}

/// Length of one image's c4 codes: `[cin / 4, ph, pw, 4]` (`padded_dims`).
pub fn padded_c4_len(g: &Window) -> usize {
    phased_c4_len(g, 1)
}

/// Length of one image's c4 codes with the columns split into `phases`:
/// `[cin / 4, ph, phases, pw.div_ceil(phases), 4]`, padded column `c` at
/// phase `c % phases`, position `c / phases` (1 phase: `padded_c4_len`).
pub fn phased_c4_len(g: &Window, phases: usize) -> usize {
    let (ph, pw) = padded_dims(g);
    g.cin.div_ceil(4) * ph * phases * pw.div_ceil(phases) * 4
}

/// The layout of `quantize_phased_c4`'s codes (`phased_c4_len` bytes an
/// image), for a previous layer to write them in place (`gemm::q8::Q8Laid`).
pub fn c4_layout(g: &Window, phases: usize) -> Q8Layout {
    let (ph, pw) = padded_dims(g);
    let pws = pw.div_ceil(phases.max(1));
    Q8Layout { channels: g.cin, h: g.h, w: g.w, ph, phases, pws, top: g.pad.top, left: g.pad.left }
}

/// Step `st` (depths `4 st .. 4 st + 4`) of the c4 order: `(quad, tap)`,
/// tap `ki * kw + kj`.
#[inline]
pub fn c4_step(g: &Window, st: usize) -> (usize, usize) {
    let quads = g.cin.div_ceil(4);
    (st % quads, st / quads)
}

/// `dst[co, c4 depth]` = `w[co, (ci, ki, kj)]` (`[cout, K]` row-major) in the
/// c4 order, 0 at the padded channels.
pub fn reorder_weights_c4(w: &[f32], cout: usize, g: &Window, dst: &mut [f32]) -> Result<()> {
    let (k, kc, taps) = (g.k(), c4_depth(g), g.kh * g.kw);
    if w.len() != cout * k || dst.len() != cout * kc {
        return Err(Error::Shape(format!(
            "reorder_weights_c4: {} weights (needs {}) into {} (needs {})",
            w.len(),
            cout * k,
            dst.len(),
            cout * kc
        )));
    }
    for (src, row) in w.chunks_exact(k.max(1)).zip(dst.chunks_exact_mut(kc.max(1))) {
        for (d, v) in row.iter_mut().enumerate() {
            let ((quad, tap), t) = (c4_step(g, d / 4), d % 4);
            let c = 4 * quad + t;
            *v = if c < g.cin { src[c * taps + tap] } else { 0.0 };
        }
    }
    Ok(())
}

/// Bytes of the scratch `quantize_padded_c4` and `quantize_phased_c4` take:
/// one channel quad's planes of codes, `[4, h, w]`.
pub fn c4_scratch_len(g: &Window) -> usize {
    4 * g.h * g.w
}

/// Codes of one image (`x`: `[cin, h, w]` values, or their codes under
/// `act`) in the c4 layout inside a border of `act.zero` (`dst`: `padded_c4_len` bytes; padded channels hold
/// `act.zero` too, met by zero weights). `planes`: scratch for one channel
/// quad's codes (`c4_scratch_len`).
pub fn quantize_padded_c4<X: Q8Source>(x: &[X], act: Q8Act, g: &Window, dst: &mut [u8], planes: &mut [u8]) -> Result<()> {
    quantize_phased_c4(x, act, g, 1, dst, planes)
}

/// `quantize_padded_c4` with the columns split into `phases` (`phased_c4_len`):
/// at stride `s`, `s` phases put the columns one output row reads at one tap
/// side by side (`c4_taps`).
pub fn quantize_phased_c4<X: Q8Source>(
    x: &[X],
    act: Q8Act,
    g: &Window,
    phases: usize,
    dst: &mut [u8],
    planes: &mut [u8],
) -> Result<()> {
    let (ph, pw) = padded_dims(g);
    let need = if phases == 0 { 0 } else { phased_c4_len(g, phases) };
    if phases == 0 || x.len() != g.in_len() || dst.len() != need || planes.len() != c4_scratch_len(g) {
        return Err(Error::Shape(format!(
            "quantize_phased_c4: {} values (needs {}) into {} codes (needs {need} in {phases} phases), {} scratch (needs {})",
            x.len(),
            g.in_len(),
            dst.len(),
            planes.len(),
            c4_scratch_len(g)
        )));
    }
    dst.fill(act.zero);
    let (hw, w, pws) = (g.h * g.w, g.w, pw.div_ceil(phases));
    for (quad, plane) in dst.chunks_exact_mut(ph * phases * pws * 4).enumerate() {
        // The quad's channels as codes, in one call: whole planes are whole
        // vectors, where rows of 8 or 16 values would be mostly remainders.
        let live = g.cin.saturating_sub(4 * quad).min(4);
        let src = &x[4 * quad * hw..(4 * quad + live) * hw];
        let planes: &[u8] = match X::as_codes(src) {
            // Four channels of codes already: interleaved where they lie.
            Some(codes) if live == 4 => codes,
            _ => {
                let (codes, pads) = planes.split_at_mut(live * hw);
                X::codes_into(src, act, codes);
                pads.fill(act.zero);
                planes
            }
        };
        for r in 0..g.h {
            let out = &mut plane[(g.pad.top + r) * phases * pws * 4..(g.pad.top + r + 1) * phases * pws * 4];
            let row = |t: usize| &planes[t * hw + r * w..t * hw + (r + 1) * w];
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            let sixteen = |r: &[u8], x0: usize| <[u8; PANEL]>::try_from(&r[x0..x0 + PANEL]).expect("16 codes");
            let mut x0 = 0;
            if phases == 1 {
                let out = &mut out[g.pad.left * 4..(g.pad.left + w) * 4];
                while x0 + PANEL <= w {
                    let quads = <&mut [u8; 4 * PANEL]>::try_from(&mut out[4 * x0..4 * (x0 + PANEL)]).expect("64 bytes");
                    interleave_step(quads, [&sixteen(r0, x0), &sixteen(r1, x0), &sixteen(r2, x0), &sixteen(r3, x0)]);
                    x0 += PANEL;
                }
                for j in x0..w {
                    out[j * 4..j * 4 + 4].copy_from_slice(&[r0[j], r1[j], r2[j], r3[j]]);
                }
            } else {
                // Interleave 16 pixels, then send each pixel's quad to its phase. Padded
                // column c lands at (phase c % phases, position c / phases), counted
                // along the row rather than divided per pixel.
                let mut quads = [0u8; 4 * PANEL];
                let mut at = PhaseCursor::at(g.pad.left, phases, pws);
                while x0 + PANEL <= w {
                    interleave_step(&mut quads, [&sixteen(r0, x0), &sixteen(r1, x0), &sixteen(r2, x0), &sixteen(r3, x0)]);
                    for q in quads.chunks_exact(4) {
                        let o = at.next();
                        out[o..o + 4].copy_from_slice(q);
                    }
                    x0 += PANEL;
                }
                for j in x0..w {
                    let o = at.next();
                    out[o..o + 4].copy_from_slice(&[r0[j], r1[j], r2[j], r3[j]]);
                }
            }
        }
    }
    Ok(())
}

/// How `gemm::q8::Q8Taps` reads the patch matrix of a tile of images in
/// place from their phased c4 codes (`quantize_phased_c4` with `phases`
/// phases, image `i` at byte `i * image_len`).
#[derive(Clone, Debug, PartialEq)]
pub struct C4Taps {
    /// The column phases of the codes: the stride.
    pub phases: usize,
    /// Bytes of one image's codes (`phased_c4_len`).
    pub image_len: usize,
    /// Byte offset of step 0 of each half of 8 columns (`Q8Taps::halves`).
    pub halves: Vec<u32>,
    /// Byte offset of each step from step 0 (`Q8Taps::steps`).
    pub steps: Vec<u32>,
}

/// The in-place reading of the patch matrix of `imgs` images, or `None`
/// where output rows are not a multiple of 8 pixels wide. With as many
/// phases as the stride `s`, output pixel `(oy, ox)` at tap `(ki, kj)` reads
/// padded pixel `(s oy + ki, s ox + kj)`: phase `kj % s`, position
/// `ox + kj / s`, so 8 pixels of one output row are 32 consecutive bytes.
/// Step 0 of `(oy, ox)` is at `(s oy * s * pws + ox) * 4` (`pws` positions
/// per phase); step `s4` (channel quad `g4`, tap `(ki, kj)`) adds
/// `(((g4 * ph + ki) * s + kj % s) * pws + kj / s) * 4`.
pub fn c4_taps(g: &Window, imgs: usize) -> Option<C4Taps> {
    if g.stride == 0 || !g.wo.is_multiple_of(8) || g.p() == 0 {
        return None;
    }
    let (ph, pw) = padded_dims(g);
    let (s, p) = (g.stride, g.p());
    let (pws, len) = (pw.div_ceil(s), phased_c4_len(g, s));
    // Offsets are u32: refuse what would not fit (no model comes near).
    u32::try_from(imgs * len).ok()?;
    let cols = imgs * p;
    let halves = (0..2 * cols.div_ceil(PANEL))
        .map(|h| {
            // A half past the columns (the last panel's) re-reads the last real one.
            let col = (8 * h).min(cols - 8);
            let (img, pix) = (col / p, col % p);
            (img * len + (s * (pix / g.wo) * s * pws + pix % g.wo) * 4) as u32
        })
        .collect();
    let steps = (0..c4_depth(g) / 4)
        .map(|st| {
            let (quad, tap) = c4_step(g, st);
            let (ki, kj) = (tap / g.kw, tap % g.kw);
            ((((quad * ph + ki) * s + kj % s) * pws + kj / s) * 4) as u32
        })
        .collect();
    Some(C4Taps { phases: s, image_len: len, halves, steps })
}

/// Writes image columns `col0 .. col0 + P` of the packed B (`packed`, laid
/// out for `cols` columns and the c4 depth, see `gemm::q8`) from its c4
/// codes (`quantize_padded_c4`). Columns past `cols` in the last panel are
/// left as they are (no kernel stores them).
pub fn gather_packed_c4(packed: &mut [u8], cols: usize, col0: usize, codes: &[u8], g: &Window) -> Result<()> {
    let (kc, p) = (c4_depth(g), g.p());
    let (ph, pw) = padded_dims(g);
    if codes.len() != padded_c4_len(g) || col0 + p > cols || packed.len() != packed_b_len(kc, cols) {
        return Err(Error::Shape(format!(
            "gather_packed_c4: {} codes (needs {}), columns {col0}..{} of {cols}, {} packed bytes (needs {})",
            codes.len(),
            padded_c4_len(g),
            col0 + p,
            packed.len(),
            packed_b_len(kc, cols)
        )));
    }
    let s = g.stride;
    let steps = kc / 4;
    for step in 0..steps {
        let (quad, tap) = c4_step(g, step);
        // Byte offset of this step's quad for output pixel (0, 0).
        let origin = ((quad * ph + tap / g.kw) * pw + tap % g.kw) * 4;
        for oy in 0..g.ho {
            let row = origin + oy * s * pw * 4;
            let mut ox = 0;
            while ox < g.wo {
                // The columns of this output row inside one panel.
                let j = col0 + oy * g.wo + ox;
                let n = (PANEL - j % PANEL).min(g.wo - ox);
                let at = (j / PANEL) * kc * PANEL + step * 4 * PANEL + 4 * (j % PANEL);
                let dst = &mut packed[at..at + 4 * n];
                let src = &codes[row + 4 * ox * s..];
                if s == 1 && n == PANEL {
                    // A whole panel row: one fixed-size 64-byte copy (no call to memcpy).
                    let whole: &mut [u8; 4 * PANEL] = dst.try_into().expect("64 bytes");
                    whole.copy_from_slice(&src[..4 * PANEL]);
                } else if s == 1 {
                    dst.copy_from_slice(&src[..4 * n]);
                } else {
                    for (q, quad) in dst.chunks_exact_mut(4).zip(src.chunks(4 * s)) {
                        q.copy_from_slice(&quad[..4]);
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
