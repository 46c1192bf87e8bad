//! x86-64 tiles of the bf16 GEMM (`bf16`): AVX2 + FMA and AVX512_BF16.
//!
//! Contract: as `bf16::tile_portable`. One packed-B step is 16 columns x 2
//! depths (64 bytes): column j's pair at elements 2j, 2j + 1, i.e. one
//! 32-bit lane holding the even depth in its low half and the odd one in
//! its high half.
//! - AVX2: a bf16 value is the top half of an f32, so `lane & 0xffff0000`
//!   is the odd depth and `lane << 16` the even one, as f32; each row's two
//!   widened weights are broadcast and meet them in two FMAs (odd first, the
//!   file header's order; the products are exact, so each FMA rounds like
//!   `vdpbf16ps`'s step). Tiles of 4 rows: 8 accumulators, 4 widened B, 2
//!   broadcasts and the mask (15 of 16 registers).
//! - AVX512_BF16: `vdpbf16ps(acc, B, A)` adds both products of a lane in
//!   one instruction, the row's pair of codes read as one u32 and
//!   broadcast; one zmm per step, tiles of 8 rows.

use super::bf16::PANEL;
use std::arch::x86_64::*;

/// AVX2 tile over the widened weights; `acc` rows past `rows` are left as they are.
///
/// # Safety
/// As `bf16::tile_portable`, with avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn tile_avx2(a: *const f32, lda: usize, rows: usize, b: *const u16, k2: usize, acc: &mut [[f32; PANEL]; 8]) {
    let hi = _mm256_set1_epi32(0xffff_0000u32 as i32);
    let mut r0 = 0;
    while r0 < rows {
        let live = (rows - r0).min(4);
        // Rows past the live ones re-read the last live row (stores skip them).
        // SAFETY: r0 + min(r, live - 1) < rows, a row of A the caller made readable.
        let row = |r: usize| unsafe { a.add((r0 + r.min(live - 1)) * lda) };
        let pa = [row(0), row(1), row(2), row(3)];
        let mut c = [[_mm256_setzero_ps(); 2]; 4];
        for s in 0..k2 {
            // SAFETY: step s of the panel, 32 values inside the 32 * k2 given.
            let (v0, v1) = unsafe {
                let p = b.add(32 * s);
                (_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(16).cast()))
            };
            let odd = [_mm256_castsi256_ps(_mm256_and_si256(v0, hi)), _mm256_castsi256_ps(_mm256_and_si256(v1, hi))];
            let even = [_mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16))];
            for r in 0..4 {
                // SAFETY: 2 * s + 1 < 2 * k2 <= lda values of a readable row.
                let (w0, w1) = unsafe { (_mm256_broadcast_ss(&*pa[r].add(2 * s)), _mm256_broadcast_ss(&*pa[r].add(2 * s + 1))) };
                for h in 0..2 {
                    c[r][h] = _mm256_fmadd_ps(w0, even[h], _mm256_fmadd_ps(w1, odd[h], c[r][h]));
                }
            }
        }
        for r in 0..live {
            let dst = acc[r0 + r].as_mut_ptr();
            // SAFETY: acc rows hold 16 f32, two unaligned 8-lane stores.
            unsafe {
                _mm256_storeu_ps(dst, c[r][0]);
                _mm256_storeu_ps(dst.add(8), c[r][1]);
            }
        }
        r0 += 4;
    }
}

/// AVX512_BF16 tile over the bf16 codes; `acc` rows past `rows` are left as they are.
///
/// # Safety
/// As `bf16::tile_portable` with `a` the codes (`u16`), with avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn tile_avx512bf16(
    a: *const u16,
    lda: usize,
    rows: usize,
    b: *const u16,
    k2: usize,
    acc: &mut [[f32; PANEL]; 8],
) {
    // SAFETY (closure): min(r, rows - 1) < rows, a row the caller made readable.
    let row = |r: usize| unsafe { a.add(r.min(rows - 1) * lda) };
    let pa = [row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7)];
    let mut c = [_mm512_setzero_ps(); 8];
    for s in 0..k2 {
        // SAFETY: step s of the panel, 32 codes inside the 32 * k2 given.
        let bv: __m512bh = unsafe { std::mem::transmute(_mm512_loadu_si512(b.add(32 * s).cast())) };
        for r in 0..8 {
            // SAFETY: 2 * s + 2 <= lda codes of a readable row, read as one u32.
            let pair = unsafe { pa[r].add(2 * s).cast::<i32>().read_unaligned() };
            // SAFETY: both types are 64 bytes of plain lanes.
            let w: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair)) };
            c[r] = _mm512_dpbf16_ps(c[r], bv, w);
        }
    }
    for r in 0..rows.min(8) {
        // SAFETY: acc rows hold 16 f32, one unaligned 16-lane store.
        unsafe { _mm512_storeu_ps(acc[r].as_mut_ptr(), c[r]) };
    }
}
