//! Row-wise L2 normalisation, `torch.nn.functional.normalize(x, dim=1)`:
//! each image's `D = C*H*W` values (a row of an `N x D` matrix, e.g.
//! HardNet's `N x 128 x 1 x 1` descriptors) become `y = x / max(n, 1e-12)`
//! with `n = ||x||_2`.
//!
//! Shapes: `x`, `out`, `dx`, `dout`: `N x C x H x W`; `norm` (the saved `n`): `N`.
//!
//! Backward: for `n > 1e-12`, `dy/dx = (I - y y^T) / n`, so
//! `dx = g / n - x (g . x) / n^3`; below the clamp the denominator is the
//! constant 1e-12 and `dx = g / 1e-12`. One row per rayon task, dots in f64.

use crate::error::{Result, check_len};
use crate::ops::elementwise::par_min_items;
use crate::ops::reduce::dot;
use crate::shape::Shape4;
use rayon::prelude::*;

/// Lower clamp of the norm, as in PyTorch.
pub const MIN_NORM: f32 = 1e-12;

/// `out = x / max(||x||, 1e-12)` per row; saves `norm = ||x||`.
pub fn forward(out: &mut [f32], norm: &mut [f32], x: &[f32], shape: Shape4) -> Result<()> {
    check_len("l2norm forward: out", out.len(), shape.len())?;
    check_len("l2norm forward: x", x.len(), shape.len())?;
    check_len("l2norm forward: norm", norm.len(), shape.n)?;
    let d = shape.image_len();
    if shape.is_empty() {
        norm.fill(0.0);
        return Ok(());
    }
    out.par_chunks_mut(d).zip(norm.par_iter_mut()).zip(x.par_chunks(d)).with_min_len(par_min_items(d)).try_for_each(
        |((o, nrm), x)| -> Result<()> {
            let n = dot(x, x)?.sqrt();
            let inv = 1.0 / n.max(MIN_NORM as f64);
            for (o, &x) in o.iter_mut().zip(x) {
                *o = (x as f64 * inv) as f32;
            }
            *nrm = n as f32;
            Ok(())
        },
    )
}

/// `dx += J^T dout` from the saved `norm`.
pub fn backward(dx: &mut [f32], dout: &[f32], x: &[f32], norm: &[f32], shape: Shape4) -> Result<()> {
    check_len("l2norm backward: dx", dx.len(), shape.len())?;
    check_len("l2norm backward: dout", dout.len(), shape.len())?;
    check_len("l2norm backward: x", x.len(), shape.len())?;
    check_len("l2norm backward: norm", norm.len(), shape.n)?;
    let d = shape.image_len();
    if shape.is_empty() {
        return Ok(());
    }
    dx.par_chunks_mut(d)
        .zip(dout.par_chunks(d).zip(x.par_chunks(d)))
        .zip(norm.par_iter())
        .with_min_len(par_min_items(d))
        .try_for_each(|((dx, (g, x)), &n)| -> Result<()> {
            let n = n as f64;
            // Below the clamp the denominator is a constant: no projection term.
            let (inv, k) =
                if n > MIN_NORM as f64 { (1.0 / n, dot(g, x)? / (n * n * n)) } else { (1.0 / MIN_NORM as f64, 0.0) };
            for ((dx, &g), &x) in dx.iter_mut().zip(g).zip(x) {
                *dx += (g as f64 * inv - x as f64 * k) as f32;
            }
            Ok(())
        })
}
