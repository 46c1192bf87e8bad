//! AVX-512F micro-kernel: 8 x 48 tiles, 512-bit FMA, for x86-64 CPUs with
//! `avx512f` (checked at runtime by `Kernel::Avx512.is_available()`).
//!
//! Contract: as `blis::MicroKernel`. Register layout (R = 8 rows):
//! zmm acc(i, j), i < 8, j < 3, holds C[i, 16j .. 16j + 16] (24 registers);
//! 3 zmm hold the current packed-B row B[p, 0 .. 48]; 1 zmm holds the broadcast
//! A[i, p]. 28 of the 32 zmm registers, no spills. Each depth step issues 24
//! FMAs against 3 vector loads and 8 scalar broadcasts, so the FMA pipes, not
//! the load ports, are the limit. 8 rows divide every Cout in the models
//! (16..128); with 48 columns the 8 broadcasts feed 24 FMAs (16 with 32).

// AVX-512 intrinsics and `target_feature(enable = "avx512f")` are stable since
// Rust 1.89, the crate's minimum supported version.

use super::blis::{Blocking, MicroKernel, Tile, impl_simd_x86, tile_cols, tile_rows};
use std::arch::x86_64::*;

pub(crate) struct Avx512;

impl_simd_x86!(
    Avx512,
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_mul_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps
);

impl MicroKernel for Avx512 {
    // (KC, NC) = (384, 480) measured best of (192, 720), (256, 480), (256, 960),
    // (384, 480), (512, 384) on Zen 4: the 720 KiB B block and the A block
    // share the 1 MiB L2.
    const BLOCKING: Blocking = Blocking { mr: 8, nr: 48, kc: 384, mc: 128, nc: 480 };
    const AVX: bool = true;
    unsafe fn tile(rows: usize, t: Tile) {
        // SAFETY: forwarded contract, which includes avx512f support.
        unsafe { tile_avx512(rows, t) }
    }
    unsafe fn tile_cols(rows: usize, cols: usize, t: Tile) {
        // SAFETY: forwarded contract, which includes avx512f support.
        unsafe { tile_cols_avx512(rows, cols, t) }
    }
}

/// The feature-enabled entry point the generic body is inlined into.
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(rows: usize, t: Tile) {
    // SAFETY: forwarded `MicroKernel::tile` contract.
    unsafe { tile_rows::<Avx512, 3, { Avx512::BLOCKING.mr }>(rows, t) }
}

/// The feature-enabled entry point of `blis::tile_cols`.
#[target_feature(enable = "avx512f")]
unsafe fn tile_cols_avx512(rows: usize, cols: usize, t: Tile) {
    // SAFETY: forwarded `MicroKernel::tile_cols` contract.
    unsafe { tile_cols::<Avx512, 3, { Avx512::BLOCKING.mr }>(rows, cols, t) }
}
