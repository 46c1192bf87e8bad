//! Max pooling, 2x2 window, stride 2, no padding (PyTorch's `MaxPool2d(2)`).
//!
//! Shapes: `x`: `N x C x H x W`; `out`, `argmax`: `N x C x floor(H/2) x
//! floor(W/2)` (an odd last row or column is dropped). `out[i][j]` is the
//! maximum of `x[2i..2i+2][2j..2j+2]`; `argmax[i][j]` is its index `h*W + w`
//! within the input plane, the first maximum in row-major window order on
//! ties. Backward routes each gradient to its argmax:
//! `dx[argmax[i][j]] += dout[i][j]`. One plane per rayon task.

use crate::error::{Result, check_len};
use crate::ops::elementwise::par_min_items;
use crate::shape::Shape4;
use crate::shape_err;
use rayon::prelude::*;

/// `N x C x floor(H/2) x floor(W/2)` for an `N x C x H x W` input.
pub fn pool_shape(s: Shape4) -> Shape4 {
    Shape4::new(s.n, s.c, s.h / 2, s.w / 2)
}

fn check_plane_index(shape: Shape4) -> Result<()> {
    if u32::try_from(shape.plane()).is_err() {
        return Err(shape_err!("maxpool: a {shape} plane does not fit u32 indices"));
    }
    Ok(())
}

/// `out` = window maxima, `argmax` = their plane indices; `shape` is the input's.
pub fn forward(out: &mut [f32], argmax: &mut [u32], x: &[f32], shape: Shape4) -> Result<()> {
    let so = pool_shape(shape);
    check_len("maxpool forward: out", out.len(), so.len())?;
    check_len("maxpool forward: argmax", argmax.len(), so.len())?;
    check_len("maxpool forward: x", x.len(), shape.len())?;
    check_plane_index(shape)?;
    if so.is_empty() {
        return Ok(());
    }
    let (w, oplane) = (shape.w, so.plane());
    out.par_chunks_mut(oplane)
        .zip(argmax.par_chunks_mut(oplane))
        .zip(x.par_chunks(shape.plane()))
        .with_min_len(par_min_items(shape.plane()))
        .for_each(|((o, am), x)| {
            for (k, (o, am)) in o.iter_mut().zip(am.iter_mut()).enumerate() {
                let (i, j) = (k / so.w, k % so.w);
                let top = 2 * i * w + 2 * j;
                let mut best = top;
                // Strict `>` in row-major order keeps the first maximum on ties.
                for idx in [top + 1, top + w, top + w + 1] {
                    if x[idx] > x[best] {
                        best = idx;
                    }
                }
                *o = x[best];
                *am = best as u32;
            }
        });
    Ok(())
}

/// `out` = window maxima without their indices (an eval pass, which has no
/// backward): the values `forward` writes, bit for bit, ties, signed zeros
/// and NaNs included (the same strict `>` in the same order, as selects
/// over whole output rows, which vectorise); `shape` is the input's.
pub fn forward_eval(out: &mut [f32], x: &[f32], shape: Shape4) -> Result<()> {
    let so = pool_shape(shape);
    check_len("maxpool forward: out", out.len(), so.len())?;
    check_len("maxpool forward: x", x.len(), shape.len())?;
    if so.is_empty() {
        return Ok(());
    }
    let (w, ow) = (shape.w, so.w);
    out.par_chunks_mut(so.plane())
        .zip(x.par_chunks(shape.plane()))
        .with_min_len(par_min_items(shape.plane()))
        .for_each(|(o, x)| {
            for (i, orow) in o.chunks_exact_mut(ow).enumerate() {
                let (top, bottom) = (&x[2 * i * w..][..2 * ow], &x[(2 * i + 1) * w..][..2 * ow]);
                for (j, o) in orow.iter_mut().enumerate() {
                    let mut m = top[2 * j];
                    for v in [top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]] {
                        m = if v > m { v } else { m };
                    }
                    *o = m;
                }
            }
        });
    Ok(())
}

/// `dx[argmax] += dout` per plane; `shape` is the input's. An index outside
/// the plane is a shape error, found before anything is written.
pub fn backward(dx: &mut [f32], dout: &[f32], argmax: &[u32], shape: Shape4) -> Result<()> {
    let so = pool_shape(shape);
    check_len("maxpool backward: dout", dout.len(), so.len())?;
    check_len("maxpool backward: argmax", argmax.len(), so.len())?;
    check_len("maxpool backward: dx", dx.len(), shape.len())?;
    if so.is_empty() {
        return Ok(());
    }
    if let Some(a) = argmax.iter().find(|&&a| a as usize >= shape.plane()) {
        return Err(shape_err!("maxpool backward: argmax {a} outside a {shape} plane"));
    }
    let oplane = so.plane();
    dx.par_chunks_mut(shape.plane())
        .zip(dout.par_chunks(oplane).zip(argmax.par_chunks(oplane)))
        .with_min_len(par_min_items(shape.plane()))
        .for_each(|(d, (g, am))| {
            for (&g, &a) in g.iter().zip(am) {
                d[a as usize] += g;
            }
        });
    Ok(())
}
