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
pub(crate) unsafe fn pack_panels(
    src: *const f32,
    dim: usize,
    depth: usize,
    s_dim: usize,
    s_depth: usize,
    w: usize,
    dst: &mut [f32],
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
                for p in 0..depth {
                    let o = out.add(p * w);
                    std::ptr::copy_nonoverlapping(src.add(d0 + p * s_depth), o, width);
                    std::ptr::write_bytes(o.add(width), 0, w - width);
                }
            } else {
                // Gather: walk each source line along `depth` (unit stride when
                // s_depth == 1, the common row-major A / column-major B case)
                // and scatter into the panel with stride w.
                for i in 0..width {
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
