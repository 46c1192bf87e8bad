//! The reference GEMM: three loops, k innermost, f32 accumulation in k order.
//! Slow on purpose; every fast kernel is tested against it.

use super::{MatMut, MatRef};

/// `C = alpha * A * B + beta * C`; C is not read when `beta == 0`.
/// Dimensions must already agree (checked by `gemm_with`).
pub fn gemm_naive(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, mut c: MatMut<'_>) {
    let (m, n, k) = (c.rows(), c.cols(), a.cols());
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += a.at(i, p) * b.at(p, j);
            }
            let out = c.at_mut(i, j);
            *out = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * *out };
        }
    }
}
