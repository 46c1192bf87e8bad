//! Euclidean distances between float32 descriptors, the way the benchmark
//! takes them, and the GEMM estimates that let the fast paths skip most of
//! them without changing any decision.
//!
//! Exact distances: differences and squares in float64 from the float32
//! values, summed NumPy-style (pairwise: eight running sums over blocks of at
//! most 128, combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), tail added in
//! order), then `sqrt`. Verification rounds that result to float32.
//!
//! Estimates: `||a||^2 + ||b||^2 - 2 a.b` with `a.b` from the float32 GEMM.
//! Whatever the kernel's summation order, |fl(a.b) - a.b| <= gamma_k
//! sum |a_i b_i| <= gamma_k ||a|| ||b|| with gamma_k = k u / (1 - k u),
//! u = 2^-24 (Higham, Accuracy and Stability, 3.1). [`Estimator::bound`]
//! returns twice that (the estimate uses 2 a.b) with a 5% margin plus room
//! for the float64 rounding of the norms, so the true squared distance lies
//! in `[est - bound, est + bound]`. A non-finite estimate or bound
//! compares false everywhere, which sends the caller to the exact distance.

use crate::error::Result;
use crate::gemm::{MatMut, MatRef, gemm};

/// NumPy's pairwise sum of `f(x[i], y[i])`: below 8 terms in order; up to
/// 128 terms eight running sums combined as a tree, tail in order; above,
/// split at a multiple of 8 below the half and recurse.
#[inline(always)]
fn block_sum<F: Fn(f32, f32) -> f64 + Copy>(x: &[f32], y: &[f32], f: F) -> f64 {
    let n = x.len().min(y.len());
    if n < 8 {
        let mut s = 0.0;
        for i in 0..n {
            s += f(x[i], y[i]);
        }
        return s;
    }
    let mut r = [0.0f64; 8];
    let body = n / 8 * 8;
    let (xb, yb) = (&x[..body], &y[..body]);
    for (cx, cy) in xb.chunks_exact(8).zip(yb.chunks_exact(8)) {
        let cx: &[f32; 8] = cx.try_into().unwrap_or(&[0.0; 8]);
        let cy: &[f32; 8] = cy.try_into().unwrap_or(&[0.0; 8]);
        for j in 0..8 {
            r[j] += f(cx[j], cy[j]);
        }
    }
    let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for i in body..n {
        s += f(x[i], y[i]);
    }
    s
}

/// See [`block_sum`]; 0.0 + the first eight terms equals them, so starting
/// the running sums at 0 is the same as NumPy starting them at the first block.
#[inline]
fn pairwise<F: Fn(f32, f32) -> f64 + Copy>(x: &[f32], y: &[f32], f: F) -> f64 {
    let n = x.len().min(y.len());
    if n <= 128 {
        block_sum(x, y, f)
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_outlined(&x[..n2], &y[..n2], f) + pairwise_outlined(&x[n2..n], &y[n2..n], f)
    }
}

#[inline(never)]
fn pairwise_outlined<F: Fn(f32, f32) -> f64 + Copy>(x: &[f32], y: &[f32], f: F) -> f64 {
    pairwise(x, y, f)
}

/// Squared Euclidean distance in float64.
#[inline]
pub fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    pairwise(a, b, |x, y| {
        let d = x as f64 - y as f64;
        d * d
    })
}

/// Euclidean distance in float64 (matching, retrieval).
#[inline]
pub fn dist_f64(a: &[f32], b: &[f32]) -> f64 {
    sq_dist(a, b).sqrt()
}

/// Euclidean distance rounded to float32 (verification).
#[inline]
pub fn dist_f32(a: &[f32], b: &[f32]) -> f32 {
    dist_f64(a, b) as f32
}

/// Squared norm of `a` in float64.
#[inline]
pub fn sq_norm(a: &[f32]) -> f64 {
    pairwise(a, a, |x, _| x as f64 * x as f64)
}

/// Squared-distance estimates from a GEMM, with their error bounds.
#[derive(Clone, Copy, Debug)]
pub struct Estimator {
    /// 2 gamma_k with margin.
    factor: f64,
}

impl Estimator {
    pub fn new(dim: usize) -> Estimator {
        let u = (2.0f64).powi(-24);
        let ku = (dim as f64 + 2.0) * u;
        Estimator { factor: 2.0 * 1.05 * ku / (1.0 - ku) }
    }

    /// Estimate of `||a - b||^2` from the squared norms and the f32 dot product.
    #[inline]
    pub fn estimate(&self, na: f64, nb: f64, dot: f32) -> f64 {
        na + nb - 2.0 * dot as f64
    }

    /// Bound on |t - (||b||^2 - 2 a.b)| for every column b of a row, where
    /// `t = nb as f32 - 2 dot` is computed in float32 (`nb` the squared norm
    /// of b, rounded to float32): the GEMM error, the rounding of `nb` and
    /// of the subtraction, given ||a|| and the largest ||b|| of the row.
    #[inline]
    pub fn row_bound(&self, norm_a: f64, max_norm_b: f64) -> f64 {
        let u = (2.0f64).powi(-24);
        let (maxnb, cross) = (max_norm_b * max_norm_b, norm_a * max_norm_b);
        self.factor * cross + 1.05 * u * (2.0 * maxnb + 2.0 * cross) * 1.01 + 1e-13 * (norm_a * norm_a + maxnb) + 1e-30
    }

    /// Bound on |estimate - true squared distance|, from the norms (not squared).
    #[inline]
    pub fn bound(&self, norm_a: f64, norm_b: f64, na: f64, nb: f64) -> f64 {
        self.factor * norm_a * norm_b + 1e-13 * (na + nb) + 1e-30
    }
}

/// The smallest float32 not below `x` (NaN stays NaN).
pub fn f32_at_least(x: f64) -> f32 {
    let y = x as f32;
    if (y as f64) < x { y.next_up() } else { y }
}

/// `out[i * nb + j] = a_i . b_j` for row-major `a` (`na x dim`) and `b` (`nb x dim`).
pub fn dots(a: &[f32], na: usize, b: &[f32], nb: usize, dim: usize, out: &mut [f32]) -> Result<()> {
    let ma = MatRef::row_major(&a[..na * dim], na, dim)?;
    let mb = MatRef::row_major(&b[..nb * dim], nb, dim)?.t();
    gemm(1.0, ma, mb, 0.0, MatMut::row_major(&mut out[..na * nb], na, nb)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_matches_a_plain_sum_on_exact_values_and_bounds_hold() {
        let a: Vec<f32> = (0..300).map(|i| (i % 7) as f32).collect();
        let b: Vec<f32> = (0..300).map(|i| (i % 5) as f32).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) * (x - y)) as f64).sum();
        assert_eq!(sq_dist(&a, &b), plain);
        assert_eq!(sq_norm(&a[..3]), 0.0 + 1.0 + 4.0);
        let (x, y) = (&a[..128], &b[1..129]);
        let mut d = [0.0f32];
        dots(x, 1, y, 1, 128, &mut d).unwrap();
        let e = Estimator::new(128);
        let (nx, ny) = (sq_norm(x), sq_norm(y));
        let est = e.estimate(nx, ny, d[0]);
        assert!((est - sq_dist(x, y)).abs() <= e.bound(nx.sqrt(), ny.sqrt(), nx, ny));
    }
}
