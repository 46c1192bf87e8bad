//! AVX2 + FMA micro-kernel: 6 x 16 tiles, 256-bit FMA, for x86-64 CPUs with
//! `avx2` and `fma` (checked at runtime by `Kernel::Avx2Fma.is_available()`).
//!
//! Contract: as `blis::MicroKernel`. Register layout (R = 6 rows):
//! ymm acc(i, j), i < 6, j < 2, holds C[i, 8j .. 8j + 8] (12 registers);
//! 2 ymm hold the packed-B row B[p, 0 .. 16]; 1 ymm the broadcast A[i, p]:
//! 15 of the 16 ymm registers. 12 independent accumulators cover the 4-cycle
//! FMA latency on two pipes.

use super::blis::{MicroKernel, Simd, tile_rows};
use std::arch::x86_64::*;

pub(crate) struct Avx2Fma;

impl Simd for Avx2Fma {
    type V = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    fn zero() -> __m256 {
        // SAFETY: only ever inlined into `tile_avx2`, which enables avx2 and fma.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn splat(x: f32) -> __m256 {
        // SAFETY: as `zero`.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: as `zero`.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: as `zero`.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable values at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: the caller guarantees 8 writable values at `p`.
        unsafe { _mm256_storeu_ps(p, v) }
    }
}

impl MicroKernel for Avx2Fma {
    const MR: usize = 6;
    const NR: usize = 16;
    const KC: usize = 256;
    const MC: usize = 132;
    const NC: usize = 1024;
    unsafe fn tile(kc: usize, rows: usize, a: *const f32, b: *const f32, alpha: f32, beta: f32, c: *mut f32, rsc: usize) {
        // SAFETY: forwarded contract, which includes avx2 + fma support.
        unsafe { tile_avx2(kc, rows, a, b, alpha, beta, c, rsc) }
    }
}

/// The feature-enabled entry point the generic body is inlined into.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(kc: usize, rows: usize, a: *const f32, b: *const f32, alpha: f32, beta: f32, c: *mut f32, rsc: usize) {
    // SAFETY: forwarded `MicroKernel::tile` contract.
    unsafe { tile_rows::<Avx2Fma, 2, 6>(kc, rows, a, b, alpha, beta, c, rsc) }
}
