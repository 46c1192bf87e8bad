//! AVX2 + FMA micro-kernel: 6 x 16 tiles, 256-bit FMA, for x86-64 CPUs with
//! `avx2` and `fma` (checked at runtime by `Kernel::Avx2Fma.is_available()`).
//!
//! Contract: as `blis::MicroKernel`. Register layout (R = 6 rows):
//! ymm acc(i, j), i < 6, j < 2, holds C[i, 8j .. 8j + 8] (12 registers);
//! 2 ymm hold the packed-B row B[p, 0 .. 16]; 1 ymm the broadcast A[i, p]:
//! 15 of the 16 ymm registers. 12 independent accumulators cover the 4-cycle
//! FMA latency on two pipes.

use super::blis::{BLOCKING_6X16, Blocking, MicroKernel, Tile, impl_simd_x86, tile_cols, tile_rows};
use std::arch::x86_64::*;

pub(crate) struct Avx2Fma;

impl_simd_x86!(
    Avx2Fma,
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_mul_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps
);

impl MicroKernel for Avx2Fma {
    const BLOCKING: Blocking = BLOCKING_6X16;
    const AVX: bool = true;
    unsafe fn tile(rows: usize, t: Tile) {
        // SAFETY: forwarded contract, which includes avx2,fma support.
        unsafe { tile_avx2(rows, t) }
    }
    unsafe fn tile_cols(rows: usize, cols: usize, t: Tile) {
        // SAFETY: forwarded contract, which includes avx2,fma support.
        unsafe { tile_cols_avx2(rows, cols, t) }
    }
}

/// The feature-enabled entry point the generic body is inlined into.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(rows: usize, t: Tile) {
    // SAFETY: forwarded `MicroKernel::tile` contract.
    unsafe { tile_rows::<Avx2Fma, 2, { Avx2Fma::BLOCKING.mr }>(rows, t) }
}

/// The feature-enabled entry point of `blis::tile_cols`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_cols_avx2(rows: usize, cols: usize, t: Tile) {
    // SAFETY: forwarded `MicroKernel::tile_cols` contract.
    unsafe { tile_cols::<Avx2Fma, 2, { Avx2Fma::BLOCKING.mr }>(rows, cols, t) }
}
