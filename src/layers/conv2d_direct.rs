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
