//! AVX-512F micro-kernel: 8 x 48 tiles, 512-bit FMA, for x86-64 CPUs with
//! `avx512f` (checked at runtime by `Kernel::Avx512.is_available()`).
//!
//! Contract: as `blis::MicroKernel`. Register layout (R = 8 rows):
//! zmm acc(i, j), i < 8, j < 3, holds C[i, 16j .. 16j + 16] (24 registers);
//! 3 zmm hold the current packed-B row B[p, 0 .. 48]; 1 zmm holds the broadcast
//! A[i, p]. 28 of the 32 zmm registers, no spills. Each depth step issues 24
//! FMAs against 3 vector loads and 8 scalar broadcasts, so the FMA pipes, not
//! the load ports, are the limit. 8 rows divide every Cout in the models
//! (16..128); 48 columns gave more reuse of the broadcasts than 32.

use super::blis::{MicroKernel, Simd, tile_rows};
use std::arch::x86_64::*;

pub(crate) struct Avx512;

impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    fn zero() -> __m512 {
        // SAFETY: only ever inlined into `tile_avx512`, which enables avx512f.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(x: f32) -> __m512 {
        // SAFETY: as `zero`.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: as `zero`.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: as `zero`.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable values at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: the caller guarantees 16 writable values at `p`.
        unsafe { _mm512_storeu_ps(p, v) }
    }
}

impl MicroKernel for Avx512 {
    const MR: usize = 8;
    const NR: usize = 48;
    const KC: usize = 256;
    const MC: usize = 128;
    const NC: usize = 480;
    unsafe fn tile(kc: usize, rows: usize, a: *const f32, b: *const f32, alpha: f32, beta: f32, c: *mut f32, rsc: usize) {
        // SAFETY: forwarded contract, which includes avx512f support.
        unsafe { tile_avx512(kc, rows, a, b, alpha, beta, c, rsc) }
    }
}

/// The feature-enabled entry point the generic body is inlined into.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512(kc: usize, rows: usize, a: *const f32, b: *const f32, alpha: f32, beta: f32, c: *mut f32, rsc: usize) {
    // SAFETY: forwarded `MicroKernel::tile` contract.
    unsafe { tile_rows::<Avx512, 3, 8>(kc, rows, a, b, alpha, beta, c, rsc) }
}
