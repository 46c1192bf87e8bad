//! Portable micro-kernel: 6 x 16 tiles on `wide::f32x8`, plain Rust that
//! compiles on any target (SSE2 on baseline x86-64, NEON on aarch64, scalar
//! elsewhere). Same packing and loop nest as the SIMD kernels.
//!
//! Contract: as `blis::MicroKernel`. Layout: 12 f32x8 accumulators
//! acc(i, j) = C[i, 8j .. 8j + 8]; 2 f32x8 for the packed-B row; one splat of
//! A[i, p]. On targets without FMA, `mul_add` is a multiply then an add.

use super::blis::{BLOCKING_6X16, Blocking, MicroKernel, Simd, Tile, tile_rows};
use wide::f32x8;

pub(crate) struct Portable;

impl Simd for Portable {
    type V = f32x8;
    const LANES: usize = 8;
    #[inline(always)]
    fn zero() -> f32x8 {
        f32x8::ZERO
    }
    #[inline(always)]
    fn splat(x: f32) -> f32x8 {
        f32x8::splat(x)
    }
    #[inline(always)]
    fn fma(a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn mul(a: f32x8, b: f32x8) -> f32x8 {
        a * b
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable values at `p`; f32x8 is
        // 8 packed f32, read unaligned.
        f32x8::from(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32x8) {
        // SAFETY: the caller guarantees 8 writable values at `p`.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(v.to_array()) }
    }
}

impl MicroKernel for Portable {
    // Same blocking as AVX2 (same tile shape and vector width).
    const BLOCKING: Blocking = BLOCKING_6X16;
    const AVX: bool = false;
    unsafe fn tile(rows: usize, t: Tile) {
        // SAFETY: forwarded `MicroKernel::tile` contract; no CPU features needed.
        unsafe { tile_rows::<Portable, 2, { Portable::BLOCKING.mr }>(rows, t) }
    }
}
