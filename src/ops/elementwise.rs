//! Map/zip kernels over flat f32 buffers: fill, copy, scale, sums and
//! differences, axpy, ReLU and its backward mask.
//!
//! Contract: every buffer argument of one call has the same length (else
//! `Error::Shape`); outputs come first. Kernels that end in `_acc` or are
//! named for an update (`add_assign`, `axpy`) accumulate; the others
//! overwrite. Each element is computed on its own, so splitting into fixed
//! `CHUNK`-element pieces for rayon gives bit-identical results for any
//! thread count.

use crate::error::{Result, check_len};
use rayon::prelude::*;

/// Elements per rayon task: big enough that the split pays, fixed so the
/// partition depends on the length only.
const CHUNK: usize = 1 << 14;

/// Smallest number of `item_len`-element items one rayon task should take,
/// so a task does about `CHUNK` elements of work and tiny tensors run in one
/// task. Layers pass it to `with_min_len` on their outer (per-image,
/// per-channel) loops; the partition still depends on sizes only.
pub fn par_min_items(item_len: usize) -> usize {
    (CHUNK / item_len.max(1)).max(1)
}

/// `y[i] = f(y[i], x[i])` over matching chunks.
fn zip_mut(y: &mut [f32], x: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(yc, xc)| {
        for (yv, &xv) in yc.iter_mut().zip(xc) {
            f(yv, xv);
        }
    });
}

/// `y[i] = f(y[i], a[i], b[i])` over matching chunks.
fn zip2_mut(y: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(&mut f32, f32, f32) + Sync) {
    y.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((yc, ac), bc)| {
        for ((yv, &av), &bv) in yc.iter_mut().zip(ac).zip(bc) {
            f(yv, av, bv);
        }
    });
}

/// `dst.copy_from_slice(src)` (equal lengths) for short runs (a few to a few
/// dozen values, as im2col's image rows): inline in blocks of 8, because a
/// `memcpy` call per run costs more than the copy itself.
#[inline(always)]
pub fn copy_short(dst: &mut [f32], src: &[f32]) {
    debug_assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in d.by_ref().zip(s.by_ref()) {
        let v: [f32; 8] = [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]];
        d.copy_from_slice(&v);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// `dst.fill(0.0)` for short runs, inline (see `copy_short`).
#[inline(always)]
pub fn zero_short(dst: &mut [f32]) {
    let mut d = dst.chunks_exact_mut(8);
    for d in d.by_ref() {
        d.copy_from_slice(&[0.0; 8]);
    }
    d.into_remainder().iter_mut().for_each(|v| *v = 0.0);
}

/// `y[i] = v`.
pub fn fill(y: &mut [f32], v: f32) {
    y.iter_mut().for_each(|e| *e = v);
}

/// `y[i] *= a`.
pub fn scale(y: &mut [f32], a: f32) {
    y.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|e| *e *= a));
}

/// `y[i] = x[i]`.
pub fn copy(y: &mut [f32], x: &[f32]) -> Result<()> {
    check_len("copy: x", x.len(), y.len())?;
    y.copy_from_slice(x);
    Ok(())
}

/// `y[i] += x[i]`.
pub fn add_assign(y: &mut [f32], x: &[f32]) -> Result<()> {
    check_len("add_assign: x", x.len(), y.len())?;
    zip_mut(y, x, |y, x| *y += x);
    Ok(())
}

/// `y[i] += a * x[i]`.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) -> Result<()> {
    check_len("axpy: x", x.len(), y.len())?;
    zip_mut(y, x, |y, x| *y += a * x);
    Ok(())
}

/// `y[i] = a[i] - b[i]`.
pub fn sub(y: &mut [f32], a: &[f32], b: &[f32]) -> Result<()> {
    check_len("sub: a", a.len(), y.len())?;
    check_len("sub: b", b.len(), y.len())?;
    zip2_mut(y, a, b, |y, a, b| *y = a - b);
    Ok(())
}

/// `y[i] = max(x[i], 0)`.
pub fn relu(y: &mut [f32], x: &[f32]) -> Result<()> {
    check_len("relu: x", x.len(), y.len())?;
    zip_mut(y, x, |y, x| *y = if x > 0.0 { x } else { 0.0 });
    Ok(())
}

/// `dx[i] += dy[i]` where `y[i] > 0` (`y` is the ReLU output, or its input:
/// both are positive at the same places).
pub fn relu_backward_acc(dx: &mut [f32], dy: &[f32], y: &[f32]) -> Result<()> {
    check_len("relu_backward: dy", dy.len(), dx.len())?;
    check_len("relu_backward: y", y.len(), dx.len())?;
    // A select, not a branch around the store: it vectorises.
    zip2_mut(dx, dy, y, |dx, dy, y| *dx += if y > 0.0 { dy } else { 0.0 });
    Ok(())
}

/// `g[i] = a[i]` where `mask[i] > 0`, else 0 (a NaN mask too): ReLU's
/// backward written rather than added, single-threaded, for short blocks
/// inside a task (BatchNorm's fused backward, `reduce::channel_grad_sums`).
#[inline(always)]
pub fn relu_mask(g: &mut [f32], a: &[f32], mask: &[f32]) {
    // A select, not a branch around the store: it vectorises.
    for ((g, &x), &m) in g.iter_mut().zip(a).zip(mask) {
        *g = if m > 0.0 { x } else { 0.0 };
    }
}

/// `g[i] = a[i]` where `(b[i] - mu) * k + shift > 0`, else 0 (NaN too):
/// ReLU's backward for a ReLU after the affine map `(b - mu) * k + shift`
/// (BatchNorm's normalising pass), its mask recomputed from the map's input
/// with the same f32 operations, so the mask of the ReLU's output without
/// reading it. Single-threaded, for short blocks inside a task.
#[inline(always)]
pub fn relu_mask_affine(g: &mut [f32], a: &[f32], b: &[f32], [mu, k, shift]: [f32; 3]) {
    for ((g, &a), &b) in g.iter_mut().zip(a).zip(b) {
        *g = if (b - mu) * k + shift > 0.0 { a } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_scalar_loops_across_chunk_borders() {
        let n = CHUNK + 37;
        let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut y = b.clone();
        axpy(&mut y, -2.0, &a).unwrap();
        let mut d = vec![f32::NAN; n];
        sub(&mut d, &b, &a).unwrap();
        let mut r = vec![f32::NAN; n];
        relu(&mut r, &a).unwrap();
        let mut g = vec![1.0; n];
        relu_backward_acc(&mut g, &b, &a).unwrap();
        for i in 0..n {
            assert_eq!(y[i], b[i] + -2.0 * a[i]);
            assert_eq!(d[i], b[i] - a[i]);
            assert_eq!(r[i], a[i].max(0.0));
            assert_eq!(g[i], if a[i] > 0.0 { 1.0 + b[i] } else { 1.0 });
        }
        let mut s = vec![f32::NAN; n];
        fill(&mut s, 2.0);
        assert!(s.iter().all(|&v| v == 2.0));
        copy(&mut s, &a).unwrap();
        scale(&mut s, 3.0);
        add_assign(&mut s, &a).unwrap();
        assert!(s.iter().zip(&a).all(|(&s, &a)| s == 3.0 * a + a));
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let mut y = vec![0.0; 4];
        assert!(copy(&mut y, &[1.0; 3]).is_err());
        assert!(add_assign(&mut y, &[1.0; 5]).is_err());
        assert!(axpy(&mut y, 1.0, &[1.0; 3]).is_err());
        assert!(sub(&mut y, &[1.0; 4], &[1.0; 3]).is_err());
        assert!(relu(&mut y, &[1.0; 3]).is_err());
        assert!(relu_backward_acc(&mut y, &[1.0; 4], &[1.0; 2]).is_err());
    }
}
