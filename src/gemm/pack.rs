//! Packing for the blocked GEMM (`blis.rs`).
//!
//! Contract: `pack_panels` copies a `dim x depth` block of a strided matrix
//! into consecutive panels `w` wide along `dim`. Panel `q` holds, for each
//! depth index `p`, the `w` values `d = q*w .. q*w + w` contiguously, so a
//! micro-kernel reads one panel front to back with unit stride. Positions past
//! `dim` are zero, which lets every micro-kernel run its full width on ragged
//! edges without reading outside the packed buffer.
//!
//! A is packed with `dim` = rows of A (width MR), B with `dim` = columns of B
//! (width NR); both use this one function because only the strides differ.
//! A transpose is therefore free: it only swaps which stride is `s_dim`.

/// Packs the block whose element `(d, p)` lives at `src + d * s_dim + p * s_depth`.
///
/// `dst` must hold at least `dim.div_ceil(w) * w * depth` values (checked).
///
/// # Safety
/// Every element `(d, p)` with `d < dim`, `p < depth` must be readable at the
/// offset above. Callers guarantee it with the bounds checks that `MatRef`
/// performs at construction.
/// `avx` selects 8 x 8 AVX transposes for the gather case (the caller's
/// kernel guarantees the CPU has AVX).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pack_panels(
    src: *const f32,
    dim: usize,
    depth: usize,
    s_dim: usize,
    s_depth: usize,
    w: usize,
    dst: &mut [f32],
    avx: bool,
) {
    let panels = dim.div_ceil(w);
    assert!(dst.len() >= panels * w * depth, "packing buffer too small");
    let out0 = dst.as_mut_ptr();
    for q in 0..panels {
        let d0 = q * w;
        let width = w.min(dim - d0);
        // SAFETY: `out` + p*w + i with p < depth, i < w stays below
        // panels*w*depth <= dst.len() (asserted above); every source offset
        // names an element (d0 + i, p) of the block, readable by the caller's
        // contract. Source and destination cannot overlap: `dst` is a unique
        // borrow of the packing buffer.
        unsafe {
            let out = out0.add(q * w * depth);
            if s_dim == 1 {
                // The panel's values are contiguous in the source (row-major B,
                // column-major A): one short memcpy per depth step.
                // Inline 8-value block copies: a memcpy call per depth step
                // cost more than the copy of 48 values itself.
                for p in 0..depth {
                    let o = out.add(p * w);
                    let s = src.add(d0 + p * s_depth);
                    let mut i = 0;
                    while i + 8 <= width {
                        o.add(i).cast::<[f32; 8]>().write_unaligned(s.add(i).cast::<[f32; 8]>().read_unaligned());
                        i += 8;
                    }
                    for i in i..width {
                        *o.add(i) = *s.add(i);
                    }
                    for i in width..w {
                        *o.add(i) = 0.0;
                    }
                }
            } else {
                // Gather: walk each source line along `depth` (unit stride when
                // s_depth == 1, the common row-major A / column-major B case)
                // and scatter into the panel with stride w.
                #[cfg(target_arch = "x86_64")]
                let done = if avx && s_depth == 1 {
                    // SAFETY: the same elements as the scalar loop below; the
                    // caller guarantees AVX.
                    transpose_avx(out, src.add(d0 * s_dim), width, depth, s_dim, w)
                } else {
                    0
                };
                #[cfg(not(target_arch = "x86_64"))]
                let done = 0;
                // Lanes `done ..` (all of them without AVX) element by element.
                for i in done..width {
                    let s = src.add((d0 + i) * s_dim);
                    for p in 0..depth {
                        *out.add(p * w + i) = *s.add(p * s_depth);
                    }
                }
                if width < w {
                    for p in 0..depth {
                        std::ptr::write_bytes(out.add(p * w + width), 0, w - width);
                    }
                }
            }
        }
    }
}

/// The gather case with unit depth stride, 8 lanes x 8 depth steps at a
/// time: 8 row loads, an in-register 8 x 8 transpose, 8 stores (instead of
/// 64 scalar loads and stores). Returns how many lanes it packed (a multiple
/// of 8); the caller packs the rest.
///
/// # Safety
/// Lane `i < width` reads `src + i * s_dim + p` for `p < depth` (readable);
/// `out + p * w + i` is writable for those; the CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_avx(out: *mut f32, src: *const f32, width: usize, depth: usize, s_dim: usize, w: usize) -> usize {
    use std::arch::x86_64::*;
    let lanes = width - width % 8;
    let body = depth - depth % 8;
    // SAFETY: every load and store below names an element the contract allows.
    unsafe {
        for i0 in (0..lanes).step_by(8) {
            let row = |i: usize| src.add((i0 + i) * s_dim);
            for p0 in (0..body).step_by(8) {
                let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(row(i).add(p0)));
                // Interleave pairs, then quads, then swap 128-bit halves.
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let c = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (t, v) in c.into_iter().enumerate() {
                    _mm256_storeu_ps(out.add((p0 + t) * w + i0), v);
                }
            }
            for i in 0..8 {
                for p in body..depth {
                    *out.add(p * w + i0 + i) = *row(i).add(p);
                }
            }
        }
    }
    lanes
}

/// Prefetches every cache line of `data` towards L2.
///
/// Why: the layers that walk a batch plane by plane (the Winograd
/// transforms) read and write planes of 1-4 KiB that were last touched a
/// whole layer earlier, so at batch 128 they come from L3; each plane starts
/// on a new 4 KiB page, where the hardware prefetcher starts over. Fetching
/// the next plane while the current one is transformed hides that latency
/// (`prefetcht1`: measured as fast as `prefetcht0` and the write-intent
/// `prefetchw` on the planes written, and it does not evict L1).
pub(crate) fn prefetch_l2(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        // SAFETY: the pointer lies in `data`; a prefetch has no architectural effect.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Prefetches (towards L2) share `part` of `parts` of a block's lines, the
/// block being `dim x depth` with unit stride along `dim` (row-major B).
///
/// Why: packing reads B from DRAM in short row segments that the hardware
/// prefetcher picks up late, so FMA units idle while it runs. Spreading
/// prefetches of the *next* block over the micro-kernel calls of the current
/// one overlaps that DRAM traffic with compute. Other layouts are skipped.
///
/// # Safety
/// `src` must point at element (0, 0) of a block inside one allocation whose
/// elements `(d, p)` lie at `src + d + p * s_depth`. (Prefetches never fault,
/// but the pointer arithmetic must stay in bounds.)
pub(crate) unsafe fn prefetch_share(
    src: *const f32,
    dim: usize,
    depth: usize,
    s_depth: usize,
    part: usize,
    parts: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        let (p0, p1) = (part * depth / parts, (part + 1) * depth / parts);
        for p in p0..p1 {
            for d in (0..dim).step_by(16) {
                // SAFETY: (d, p) is an element of the block (caller's contract);
                // a prefetch has no architectural effect.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(src.add(d + p * s_depth).cast::<i8>()) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, dim, depth, s_depth, part, parts);
}
