//! x86-64 tiles of the int8 GEMM (`q8`): AVX2 and AVX-512 VNNI.
//!
//! Contract: as `q8::TileFn`. One B step is 16 columns x 4 depths in two
//! 32-byte halves (`q8::Steps`; one 64-byte run when packed): column j's 4
//! codes at bytes 4(j % 8) .. 4(j % 8) + 4 of its half. A row's 4 codes of
//! the same step, read as one i32 and broadcast, meet every column's 4 codes
//! in one lane:
//! - AVX2: `vpmaddubsw(B, A)` adds pairs into i16 (exact: |qa| <= 63, see
//!   `q8`), `vpmaddwd(., 1)` adds the two pairs into the i32 lane; two ymm
//!   per step, tiles of 4 rows (8 accumulators, 2 B, the broadcast, the ones
//!   and the products: 13 of 16 registers).
//! - AVX-512 VNNI: `vpdpbusd(acc, B, A)` adds the 4 products into the i32
//!   lane in one instruction; one zmm per step, tiles of 8 rows.

use super::q8::{PANEL, Steps};
use super::q8_store::RowMap;
use std::arch::x86_64::*;

/// `q8::interleave_step` with SSE2 (part of x86-64 itself, `interleave_into`).
#[inline]
pub(crate) fn interleave_step_sse2(dst: &mut [u8; 4 * PANEL], rows: [&[u8; PANEL]; 4]) {
    // SAFETY: SSE2 is in every x86-64 CPU; 16-byte unaligned loads from the
    // 16-byte rows and stores into the 64-byte destination.
    unsafe {
        let [a, b, c, d] = rows.map(|r| _mm_loadu_si128(r.as_ptr().cast()));
        interleave_into(dst, [a, b, c, d]);
    }
}

/// Rows of 16 bytes `a, b, c, d` interleaved into `dst`, 4 bytes a column:
/// bytes of rows 0/1 and 2/3 paired, then the pairs paired into quads.
#[inline(always)]
fn interleave_into(dst: &mut [u8; 4 * PANEL], [a, b, c, d]: [__m128i; 4]) {
    // SAFETY: SSE2 is in every x86-64 CPU; four 16-byte unaligned stores into 64 bytes.
    unsafe {
        let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
        let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
        let quads = [
            _mm_unpacklo_epi16(ab_lo, cd_lo),
            _mm_unpackhi_epi16(ab_lo, cd_lo),
            _mm_unpacklo_epi16(ab_hi, cd_hi),
            _mm_unpackhi_epi16(ab_hi, cd_hi),
        ];
        for (i, q) in quads.into_iter().enumerate() {
            _mm_storeu_si128(dst.as_mut_ptr().add(16 * i).cast(), q);
        }
    }
}

/// Reads the 4 codes at `p` as one i32 (little-endian, as the lanes expect).
#[inline(always)]
unsafe fn quad(p: *const i8) -> i32 {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    unsafe { p.cast::<i32>().read_unaligned() }
}

/// AVX2 tile; `acc` rows past `rows` are left as they are.
///
/// # Safety
/// As `q8::TileFn`, with avx2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn tile_avx2<B: Steps>(a: *const i8, lda: usize, rows: usize, b: B, k4: usize, acc: &mut [[i32; PANEL]; 8]) {
    let ones = _mm256_set1_epi16(1);
    let mut r0 = 0;
    while r0 < rows {
        let live = (rows - r0).min(4);
        // Rows past the live ones re-read the last live row (stores skip them).
        // SAFETY: r0 + min(r, live - 1) < rows, a row of A the caller made readable.
        let row = |r: usize| unsafe { a.add((r0 + r.min(live - 1)) * lda) };
        let pa = [row(0), row(1), row(2), row(3)];
        let mut c = [[_mm256_setzero_si256(); 2]; 4];
        for s in 0..k4 {
            // SAFETY: step s of the panel: two readable 32-byte halves.
            let (b0, b1) = unsafe { (_mm256_loadu_si256(b.lo(s).cast()), _mm256_loadu_si256(b.hi(s).cast())) };
            for r in 0..4 {
                // SAFETY: 4 * s + 4 <= 4 * k4 <= lda codes of a readable row.
                let w = _mm256_set1_epi32(unsafe { quad(pa[r].add(4 * s)) });
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(b0, w), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(b1, w), ones);
                c[r][0] = _mm256_add_epi32(c[r][0], p0);
                c[r][1] = _mm256_add_epi32(c[r][1], p1);
            }
        }
        for r in 0..live {
            let dst = acc[r0 + r].as_mut_ptr();
            // SAFETY: acc rows hold 16 i32, two unaligned 8-lane stores.
            unsafe {
                _mm256_storeu_si256(dst.cast(), c[r][0]);
                _mm256_storeu_si256(dst.add(8).cast(), c[r][1]);
            }
        }
        r0 += 4;
    }
}

/// AVX-512 VNNI tile; `acc` rows past `rows` are left as they are.
///
/// # Safety
/// As `q8::TileFn`, with avx512f, avx512bw and avx512vnni.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn tile_vnni<B: Steps>(a: *const i8, lda: usize, rows: usize, b: B, k4: usize, acc: &mut [[i32; PANEL]; 8]) {
    // SAFETY (closure): min(r, rows - 1) < rows, a row the caller made readable.
    let row = |r: usize| unsafe { a.add(r.min(rows - 1) * lda) };
    let pa = [row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7)];
    let mut c = [_mm512_setzero_si512(); 8];
    for s in 0..k4 {
        // SAFETY: step s of the panel: two readable 32-byte halves, one 64-byte run when joined.
        let bv = unsafe {
            if B::JOINED {
                _mm512_loadu_si512(b.lo(s).cast())
            } else {
                let lo = _mm512_castsi256_si512(_mm256_loadu_si256(b.lo(s).cast()));
                _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(b.hi(s).cast()))
            }
        };
        for r in 0..8 {
            // SAFETY: 4 * s + 4 <= lda codes of a readable row.
            let w = _mm512_set1_epi32(unsafe { quad(pa[r].add(4 * s)) });
            c[r] = _mm512_dpbusd_epi32(c[r], bv, w);
        }
    }
    for r in 0..rows.min(8) {
        // SAFETY: acc rows hold 16 i32, one unaligned 16-lane store.
        unsafe { _mm512_storeu_si512(acc[r].as_mut_ptr().cast(), c[r]) };
    }
}

/// One row of 16 sums of the int8 GEMM mapped to the next layer's codes:
/// `y = scale * (acc - corr) + shift`, ReLU'd when `relu` (`q8::Q8Out`),
/// then `q8::code(y)` (`y * inv + zero` clamped to [0, 255], plus 0.5,
/// truncated). The same operations in one vector each, so the same bits as
/// the portable formulas. (Built from the portable formulas, the compiler
/// assembled the 16 lanes piecewise and passed the codes through the
/// stack: the fused store then cost more than the quantization pass it
/// replaced.)
///
/// # Safety
/// The CPU has avx512f and avx512bw.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn codes_row(acc: &[i32; PANEL], m: RowMap, (inv, zero): (f32, f32)) -> __m128i {
    let RowMap { corr, scale, shift, relu } = m;
    // SAFETY: 16 readable i32.
    unsafe {
        let sums = _mm512_sub_epi32(_mm512_loadu_si512(acc.as_ptr().cast()), _mm512_set1_epi32(corr));
        let y = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(scale), _mm512_cvtepi32_ps(sums)), _mm512_set1_ps(shift));
        // max(v, 0) is 0 where v is NaN or -0.0 (the second operand), as the selects are.
        let y = if relu { _mm512_max_ps(y, _mm512_setzero_ps()) } else { y };
        let v = _mm512_add_ps(_mm512_mul_ps(y, _mm512_set1_ps(inv)), _mm512_set1_ps(zero));
        let v = _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(255.0));
        _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_add_ps(v, _mm512_set1_ps(0.5))))
    }
}

/// `codes_row` into `dst`.
///
/// # Safety
/// As `codes_row`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn codes_row_avx512(
    acc: &[i32; PANEL],
    map: RowMap,
    constants: (f32, f32),
    dst: &mut [u8; PANEL],
) {
    // SAFETY: the caller's contract; 16 writable bytes.
    unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), codes_row(acc, map, constants)) }
}

/// Four rows (a channel quad) of `codes_row`, interleaved as
/// `q8::interleave_step` does, 4 channels a pixel, into `dst`: in
/// registers, where four stored rows read back cost a stall each.
///
/// # Safety
/// As `codes_row`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn codes_quad_avx512(
    acc: &[[i32; PANEL]; 4],
    maps: [RowMap; 4],
    constants: (f32, f32),
    dst: &mut [u8; 4 * PANEL],
) {
    // SAFETY: the caller's contract; 64 writable bytes.
    unsafe {
        let (a, b) = (codes_row(&acc[0], maps[0], constants), codes_row(&acc[1], maps[1], constants));
        let (c, d) = (codes_row(&acc[2], maps[2], constants), codes_row(&acc[3], maps[3], constants));
        interleave_into(dst, [a, b, c, d]);
    }
}
