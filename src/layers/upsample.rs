//! Nearest-neighbour upsampling by 2 in H and W.
//!
//! Shapes: `x`: `N x C x H x W`, `out`: `N x C x 2H x 2W`, with
//! `out[2i+a][2j+b] = x[i][j]` for a, b in {0, 1}. Backward is the adjoint:
//! `dx[i][j] += sum_{a,b} dout[2i+a][2j+b]`. One plane per rayon task.

use crate::error::{Result, check_len};
use crate::ops::elementwise::par_min_items;
use crate::shape::Shape4;
use rayon::prelude::*;

/// `N x C x 2H x 2W` for an `N x C x H x W` input.
pub fn upsample_shape(s: Shape4) -> Shape4 {
    Shape4::new(s.n, s.c, 2 * s.h, 2 * s.w)
}

/// `out[2i+a][2j+b] = x[i][j]`; `shape` is the input's.
pub fn forward(out: &mut [f32], x: &[f32], shape: Shape4) -> Result<()> {
    check_len("upsample forward: out", out.len(), upsample_shape(shape).len())?;
    check_len("upsample forward: x", x.len(), shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let (plane, w) = (shape.plane(), shape.w);
    out.par_chunks_mut(4 * plane).zip(x.par_chunks(plane)).with_min_len(par_min_items(4 * plane)).for_each(|(o, x)| {
        // Each input row fills two output rows of 2W.
        for (o2, xr) in o.chunks_exact_mut(4 * w).zip(x.chunks_exact(w)) {
            let (top, bottom) = o2.split_at_mut(2 * w);
            for (t, &v) in top.chunks_exact_mut(2).zip(xr) {
                t.fill(v);
            }
            bottom.copy_from_slice(top);
        }
    });
    Ok(())
}

/// `dx[i][j] += sum of the four dout[2i+a][2j+b]`; `shape` is the input's.
pub fn backward(dx: &mut [f32], dout: &[f32], shape: Shape4) -> Result<()> {
    check_len("upsample backward: dout", dout.len(), upsample_shape(shape).len())?;
    check_len("upsample backward: dx", dx.len(), shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let (plane, w) = (shape.plane(), shape.w);
    dx.par_chunks_mut(plane).zip(dout.par_chunks(4 * plane)).with_min_len(par_min_items(4 * plane)).for_each(
        |(d, g)| {
            for (dr, g2) in d.chunks_exact_mut(w).zip(g.chunks_exact(4 * w)) {
                let (top, bottom) = g2.split_at(2 * w);
                for ((d, t), b) in dr.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
                    *d += (t[0] + t[1]) + (b[0] + b[1]);
                }
            }
        },
    );
    Ok(())
}
