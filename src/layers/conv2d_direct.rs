//! Direct convolution for layers with one output channel and stride 1 (the
//! U-Net's conv5 and DnCNN's conv17, 64 -> 1 at 3x3), used by `Conv2d`.
//!
//! Shapes, per image: x [cin, h, w], weight [1, cin, kh, kw], out and dout
//! [ho, wo], with the window `g` of `ops::im2col` (any padding):
//!
//!   out[oy, ox]           = sum_{ci, ki, kj} w[ci, ki, kj] * x[ci, oy + ki - top, ox + kj - left]
//!   dx[ci, iy, ix]       += sum_{ki, kj} w[ci, ki, kj] * dout[iy - ki + top, ix - kj + left]
//!   dw[ci, ki, kj]       += sum_{oy, ox} dout[oy, ox] * x[ci, oy + ki - top, ox + kj - left]
//!
//! (terms outside the image are zero). Why: with M = 1 the im2col GEMM is a
//! matrix-vector product, bound by writing and reading the K x P patch matrix
//! (4-10 GFLOP/s); here every tap is a multiply-add of one image row into one
//! output row, both in L1. Sums run in a fixed order (taps in weight order,
//! dw dot products in 8 interleaved lanes), so results do not depend on threads.
//! Both entries run their loops compiled for the widest vectors of
//! `gemm::best_kernel` (the same multiplies and adds, never fused, in the
//! same order: the same bits at any width; the baseline build's SSE was
//! 5-10% of int8 DnCNN once its other layers ran on AMX).

use crate::gemm::{Kernel, best_kernel};
use crate::ops::im2col::Window;

/// The valid part of tap (ki, kj) on output row `oy`: the output columns
/// `lo..hi` and the input row and column where they start, or None.
#[inline]
fn tap(g: &Window, oy: usize, ki: usize, kj: usize) -> Option<(usize, usize, usize, usize)> {
    let iy = g.in_row(oy, ki)?;
    let (lo, hi) = g.valid_cols(kj);
    (lo < hi).then(|| (lo, hi, iy, lo + kj - g.pad.left))
}

/// `out = conv(x, w)` for one image (`out` is overwritten).
pub(crate) fn forward_image(out: &mut [f32], x: &[f32], w: &[f32], g: &Window) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(out: &mut [f32], x: &[f32], w: &[f32], g: &Window) {
            forward_body(out, x, w, g)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(out: &mut [f32], x: &[f32], w: &[f32], g: &Window) {
            forward_body(out, x, w, g)
        }
        match best_kernel() {
            // SAFETY: best_kernel() is a kernel this CPU runs, so it has avx512f.
            Kernel::Avx512 => return unsafe { avx512(out, x, w, g) },
            // SAFETY: as above, avx2 and fma.
            Kernel::Avx2Fma => return unsafe { avx2(out, x, w, g) },
            _ => {}
        }
    }
    forward_body(out, x, w, g)
}

#[inline(always)]
fn forward_body(out: &mut [f32], x: &[f32], w: &[f32], g: &Window) {
    out.fill(0.0);
    if g.kw == 3 && g.stride == 1 && g.pad.left == 1 && g.wo == g.w && g.w >= 2 {
        return forward_rows3(out, x, w, g);
    }
    let (plane, taps) = (g.h * g.w, g.kh * g.kw);
    for (xc, wc) in x.chunks_exact(plane).zip(w.chunks_exact(taps)) {
        for (t, &wv) in wc.iter().enumerate() {
            let (ki, kj) = (t / g.kw, t % g.kw);
            for oy in 0..g.ho {
                let Some((lo, hi, iy, ix)) = tap(g, oy, ki, kj) else { continue };
                let src = &xc[iy * g.w + ix..][..hi - lo];
                let dst = &mut out[oy * g.wo + lo..oy * g.wo + hi];
                dst.iter_mut().zip(src).for_each(|(o, &v)| *o += wv * v);
            }
        }
    }
}

/// Output rows per block of `forward_rows3`: the block's outputs (8 rows of
/// 32) and the input rows they read stay in L1 while every channel passes.
const FORWARD_ROWS: usize = 8;

/// `forward_body` for 3-wide kernels padded by one column on each side
/// ('same' width): each pass adds a kernel row's three taps to an output
/// row at once, `o = ((o + w0 x[ox-1]) + w1 x[ox]) + w2 x[ox+1]`, the terms
/// in the order the tap-by-tap loop adds them (the first and last column,
/// where one tap falls outside, on their own). Tap by tap, each of the
/// 9 x 64 passes over a 32-wide row was a few vectors plus a scalar tail
/// and per-tap set-up, and each pass's loads waited on the last one's stores.
#[inline(always)]
fn forward_rows3(out: &mut [f32], x: &[f32], w: &[f32], g: &Window) {
    let (plane, width) = (g.h * g.w, g.w);
    for oy0 in (0..g.ho).step_by(FORWARD_ROWS) {
        let block = oy0..g.ho.min(oy0 + FORWARD_ROWS);
        for (xc, wc) in x.chunks_exact(plane).zip(w.chunks_exact(g.kh * 3)) {
            for (ki, wk) in wc.chunks_exact(3).enumerate() {
                let (w0, w1, w2) = (wk[0], wk[1], wk[2]);
                for oy in block.clone() {
                    let Some(iy) = g.in_row(oy, ki) else { continue };
                    let dst = &mut out[oy * width..(oy + 1) * width];
                    let src = &xc[iy * width..(iy + 1) * width];
                    dst[0] = (dst[0] + w1 * src[0]) + w2 * src[1];
                    let last = width - 1;
                    let inner = dst[1..last].iter_mut().zip(src.windows(3));
                    inner.for_each(|(o, s)| *o = ((*o + w0 * s[0]) + w1 * s[1]) + w2 * s[2]);
                    dst[last] = (dst[last] + w0 * src[last - 1]) + w1 * src[last];
                }
            }
        }
    }
}

/// Accumulates `dw` (and `dx` when given) for one image's `dout`.
pub(crate) fn backward_image(dx: Option<&mut [f32]>, dw: &mut [f32], dout: &[f32], x: &[f32], w: &[f32], g: &Window) {
    #[cfg(target_arch = "x86_64")]
    {
        type Dx<'a> = Option<&'a mut [f32]>;
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(dx: Dx<'_>, dw: &mut [f32], dout: &[f32], x: &[f32], w: &[f32], g: &Window) {
            backward_body(dx, dw, dout, x, w, g)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(dx: Dx<'_>, dw: &mut [f32], dout: &[f32], x: &[f32], w: &[f32], g: &Window) {
            backward_body(dx, dw, dout, x, w, g)
        }
        match best_kernel() {
            // SAFETY: best_kernel() is a kernel this CPU runs, so it has avx512f.
            Kernel::Avx512 => return unsafe { avx512(dx, dw, dout, x, w, g) },
            // SAFETY: as above, avx2 and fma.
            Kernel::Avx2Fma => return unsafe { avx2(dx, dw, dout, x, w, g) },
            _ => {}
        }
    }
    backward_body(dx, dw, dout, x, w, g)
}

#[inline(always)]
fn backward_body(dx: Option<&mut [f32]>, dw: &mut [f32], dout: &[f32], x: &[f32], w: &[f32], g: &Window) {
    let (plane, taps) = (g.h * g.w, g.kh * g.kw);
    for (xc, dwc) in x.chunks_exact(plane).zip(dw.chunks_exact_mut(taps)) {
        for (t, dwv) in dwc.iter_mut().enumerate() {
            let (ki, kj) = (t / g.kw, t % g.kw);
            let mut acc = [0.0f32; 8];
            for oy in 0..g.ho {
                let Some((lo, hi, iy, ix)) = tap(g, oy, ki, kj) else { continue };
                let (d, v) = (&dout[oy * g.wo + lo..oy * g.wo + hi], &xc[iy * g.w + ix..][..hi - lo]);
                let (dc, vc) = (d.chunks_exact(8), v.chunks_exact(8));
                let (dr, vr) = (dc.remainder(), vc.remainder());
                for (d8, v8) in dc.zip(vc) {
                    for l in 0..8 {
                        acc[l] += d8[l] * v8[l];
                    }
                }
                for (l, (a, b)) in dr.iter().zip(vr).enumerate() {
                    acc[l] += a * b;
                }
            }
            *dwv += acc.iter().sum::<f32>();
        }
    }
    let Some(dx) = dx else { return };
    for (dxc, wc) in dx.chunks_exact_mut(plane).zip(w.chunks_exact(taps)) {
        for (t, &wv) in wc.iter().enumerate() {
            let (ki, kj) = (t / g.kw, t % g.kw);
            for oy in 0..g.ho {
                let Some((lo, hi, iy, ix)) = tap(g, oy, ki, kj) else { continue };
                let dst = &mut dxc[iy * g.w + ix..][..hi - lo];
                dst.iter_mut().zip(&dout[oy * g.wo + lo..oy * g.wo + hi]).for_each(|(o, &d)| *o += wv * d);
            }
        }
    }
}
