//! GEMM by dot products, for the products whose two operands both run
//! contiguously along the depth: `C[m x n] = A[m x k] * B[k x n]` with A
//! row-major (unit column stride) and B column-major (unit row stride), that
//! is `C = X * W^T` for row-major `X [m, k]` and `W [n, k]`: a dense layer's
//! forward (HardNet's conv7, `out[n, cout] = X[n, K] * W^T`).
//!
//! Why: the packed GEMM (`blis`) packs B into NR-wide panels along n, which
//! for this layout is a transpose of all of W on every call. HardNet's conv7
//! has 4 MiB of weights; at a batch of one patch that transpose cost more
//! than the product. Here every element of C is the dot product of two
//! contiguous vectors, both read in place: nothing is packed.
//!
//! Sum order, fixed by k and the vector width alone, so that an element's
//! bits never depend on m, n, the other elements or how a caller splits C:
//! depth blocks of `KB` values in order; in a block, `LANES` lane
//! accumulators over the whole vectors (multiply-add in k order), then the
//! lanes summed by halving (`halving_sum`), then the block's ragged tail in k order;
//! `C[i, j] = block_0 + block_1 + ...`.
//!
//! Loop nest: depth block (`KB`) -> `JB` columns of B -> `MI` rows of A ->
//! `NJ` columns of B. The `JB x KB` piece of B (18 KiB at KB = 512) stays in L1 while
//! the rows of A pass, each `MI x KB` piece of A (6 KiB) while the columns
//! of the piece of B pass. `MI x NJ = 3 x 3` accumulators (9 registers, plus
//! 3 B vectors and 1 A vector: 13 of AVX2's 16 ymm). With a piece of B that
//! only reached L2 (a whole depth block of B's columns), a batch of 128
//! patches ran HardNet 6% slower than the packed GEMM; at one patch, where
//! every value of B is read once whatever the order, it ran 15% faster.

use super::blis::Simd;
use super::{Kernel, MatMut, MatRef};
use crate::error::{Error, Result};

/// Depth values per block (2 KiB of a row).
const KB: usize = 512;
/// Columns of B per L1-resident piece (a multiple of `NJ`).
const JB: usize = 9;
/// Rows of A per micro-block.
const MI: usize = 3;
/// Columns of B per micro-block.
const NJ: usize = 3;
/// Largest vector width of an instantiation (lanes stored for the horizontal sum).
const MAX_LANES: usize = 16;

/// `C = A * B` by dot products (see the module header); `kernel` as in
/// `gemm_with`: `Naive` is the reference triple loop, `Portable` the
/// `wide::f32x8` instantiation, `Avx2Fma` and `Avx512` the AVX2+FMA one
/// (Zen 4 splits 512-bit FMAs into two 256-bit halves, so a 16-lane twin
/// would only add an instantiation nothing here can test), `MatrixMultiply`
/// the crate's GEMM. C is never read (it may hold NaN).
///
/// Errors on disagreeing dimensions, on an A without unit column stride or a
/// B without unit row stride, and on a kernel this CPU cannot run.
pub fn gemm_dot_with(kernel: Kernel, a: MatRef<'_>, b: MatRef<'_>, mut c: MatMut<'_>) -> Result<()> {
    super::check_dims(&a, &b, &c)?;
    super::check_available(kernel)?;
    let (m, n, k) = (c.rows(), c.cols(), a.cols());
    if (k > 1 && m > 0 && a.col_stride() != 1) || (k > 1 && n > 0 && b.row_stride() != 1) {
        return Err(Error::InvalidArgument(format!(
            "gemm_dot: A's column stride ({}) and B's row stride ({}) must be 1",
            a.col_stride(),
            b.row_stride()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        super::scale_c(0.0, c);
        return Ok(());
    }
    match kernel {
        Kernel::Naive | Kernel::MatrixMultiply => super::gemm_with(kernel, 1.0, a, b, 0.0, c),
        Kernel::Portable => {
            // SAFETY: dimensions agree, the views were bounds-checked at
            // construction and the strides along k are 1 (checked above).
            unsafe { run::<super::portable::Portable>(a, b, &mut c) };
            Ok(())
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma | Kernel::Avx512 => {
            if Kernel::Avx2Fma.is_available() {
                // SAFETY: as above; avx2 and fma were just detected.
                unsafe { run_avx2(a, b, &mut c) };
            } else {
                // SAFETY: as above.
                unsafe { run::<super::portable::Portable>(a, b, &mut c) };
            }
            Ok(())
        }
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Fma | Kernel::Avx512 => unreachable!("is_available() is false off x86-64"),
    }
}

/// `gemm_dot_with` on this CPU's best kernel.
pub fn gemm_dot(a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>) -> Result<()> {
    gemm_dot_with(super::best_kernel(), a, b, c)
}

/// The AVX2+FMA entry point the generic body is inlined into.
///
/// # Safety
/// As `run`; the CPU has avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(a: MatRef<'_>, b: MatRef<'_>, c: &mut MatMut<'_>) {
    // SAFETY: forwarded contract.
    unsafe { run::<super::avx2::Avx2Fma>(a, b, c) }
}

/// The loop nest of the module header.
///
/// # Safety
/// Dimensions agree and are non-zero; `a.col_stride() == 1` and
/// `b.row_stride() == 1` (or k == 1); the views are bounds-checked; the
/// CPU has the features `S` needs (inlined into an entry point enabling them).
#[inline(always)]
unsafe fn run<S: Simd>(a: MatRef<'_>, b: MatRef<'_>, c: &mut MatMut<'_>) {
    let (m, n, k) = (c.rows(), c.cols(), a.cols());
    let (ars, bcs, crs, ccs) = (a.row_stride(), b.col_stride(), c.row_stride(), c.col_stride());
    let (ap, bp, cp) = (a.data().as_ptr(), b.data().as_ptr(), c.data_mut().as_mut_ptr());
    for k0 in (0..k).step_by(KB) {
        let len = KB.min(k - k0);
        for jb in (0..n).step_by(JB) {
            let jend = n.min(jb + JB);
            for i0 in (0..m).step_by(MI) {
                for j0 in (jb..jend).step_by(NJ) {
                    // SAFETY: rows i0 .. i0 + MI.min(m - i0) of A and columns
                    // j0 .. j0 + NJ.min(jend - j0) of B hold `len` contiguous
                    // values from depth k0 (elements of the checked views);
                    // the C elements named are inside the checked view C.
                    let t = unsafe {
                        Block {
                            len,
                            a: ap.add(i0 * ars + k0),
                            ars,
                            b: bp.add(j0 * bcs + k0),
                            bcs,
                            c: cp.add(i0 * crs + j0 * ccs),
                            crs,
                            ccs,
                            first: k0 == 0,
                        }
                    };
                    // SAFETY: as above.
                    unsafe { dispatch::<S>(MI.min(m - i0), NJ.min(jend - j0), t) };
                }
            }
        }
    }
}

/// One micro-block's operands: `len` depth values of `R` rows of A (row
/// stride `ars`) and `C` columns of B (column stride `bcs`), the C elements
/// they add to (`first`: written instead).
#[derive(Clone, Copy)]
struct Block {
    len: usize,
    a: *const f32,
    ars: usize,
    b: *const f32,
    bcs: usize,
    c: *mut f32,
    crs: usize,
    ccs: usize,
    first: bool,
}

/// Runs the `rows x cols` instantiation of `block`.
///
/// # Safety
/// As `block` with `R = rows`, `C = cols`.
#[inline(always)]
unsafe fn dispatch<S: Simd>(rows: usize, cols: usize, t: Block) {
    // SAFETY: forwarded contract.
    unsafe {
        match (rows, cols) {
            (3, 3) => block::<S, 3, 3>(t),
            (3, 2) => block::<S, 3, 2>(t),
            (3, 1) => block::<S, 3, 1>(t),
            (2, 3) => block::<S, 2, 3>(t),
            (2, 2) => block::<S, 2, 2>(t),
            (2, 1) => block::<S, 2, 1>(t),
            (1, 3) => block::<S, 1, 3>(t),
            (1, 2) => block::<S, 1, 2>(t),
            (1, 1) => block::<S, 1, 1>(t),
            _ => unreachable!("micro-block {rows}x{cols} outside {MI}x{NJ}"),
        }
    }
}

/// `C[i, j] (+)= sum_p A[i, p] * B[p, j]` over one depth block, in the
/// module header's order.
///
/// # Safety
/// `a + i * ars + p` and `b + j * bcs + p` are readable for `i < R`, `j < C`,
/// `p < len`; `c + i * crs + j * ccs` is writable (and readable unless
/// `first`) for those `i`, `j`.
#[inline(always)]
unsafe fn block<S: Simd, const R: usize, const C: usize>(t: Block) {
    const { assert!(R <= MI && C <= NJ && S::LANES <= MAX_LANES && S::LANES.is_power_of_two()) };
    let Block { len, a, ars, b, bcs, c, crs, ccs, first } = t;
    let full = len - len % S::LANES;
    let mut acc = [[S::zero(); C]; R];
    // SAFETY: every offset below is one the contract names.
    unsafe {
        let mut p = 0;
        while p < full {
            let bv: [S::V; C] = std::array::from_fn(|j| S::load(b.add(j * bcs + p)));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = S::load(a.add(i * ars + p));
                for (r, &bj) in row.iter_mut().zip(&bv) {
                    *r = S::fma(av, bj, *r);
                }
            }
            p += S::LANES;
        }
        let mut lanes = [0.0f32; MAX_LANES];
        for (i, row) in acc.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                S::store(lanes.as_mut_ptr(), v);
                let mut s = halving_sum(lanes, S::LANES);
                for p in full..len {
                    s += *a.add(i * ars + p) * *b.add(j * bcs + p);
                }
                let o = c.add(i * crs + j * ccs);
                *o = if first { s } else { *o + s };
            }
        }
    }
}

/// The sum of the first `lanes` (a power of two) values of `v` by halving:
/// `v[i] += v[i + half]` for half = lanes / 2, lanes / 4, ..., 1; a fixed
/// order that vectorises, where a lane-by-lane sum was a sixth of a batch-128
/// HardNet forward.
#[inline(always)]
fn halving_sum(mut v: [f32; MAX_LANES], lanes: usize) -> f32 {
    let mut half = lanes / 2;
    while half > 0 {
        for i in 0..half {
            v[i] += v[i + half];
        }
        half /= 2;
    }
    v[0]
}
