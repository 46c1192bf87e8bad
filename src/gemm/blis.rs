//! The BLIS-style loop nest shared by every packed kernel (portable, AVX2,
//! AVX-512), and the one generic micro-kernel body they all instantiate.
//!
//! Contract: `gemm_blis::<K>` computes `C = alpha * A * B + beta * C` for any
//! strides; C is never read when `beta == 0`. Dimensions must already agree
//! and be non-zero (checked by `gemm_with`). Single-threaded; packing buffers
//! are thread-local, grow once and are reused, so steady state allocates
//! nothing.
//!
//! Loop nest (Goto/BLIS): `jc` over NC columns of B and C; `pc` over KC of the
//! depth, B block packed into NR-wide panels (sized to stay in L2); `ic` over
//! MC rows, A block packed into MR-high panels (L1/L2); then `jr` over NR
//! panels and `ir` over MR panels, each an MR x NR micro-tile. Vectors run
//! along N (C's rows, usually contiguous): each depth step loads NR/LANES
//! vectors of packed B and broadcasts MR scalars of packed A.
//!
//! Ragged edges: rows are handled by instantiating the micro-kernel for
//! `rows < MR` (no wasted FMAs, which matters for the M = 1 output layers);
//! columns (`nr < NR`) or a C without unit column stride go through a local
//! MR x NR tile that is copied out. A column-major C is handled as
//! `C^T = B^T A^T`, so the fast path still writes contiguous memory.
//!
//! Memory: while one B block is consumed, the next one (in loop order) is
//! prefetched a slice per NR panel, so the DRAM reads of packing overlap the
//! FMAs. When m <= MR (e.g. the M = 1 output layers) a packed B panel would
//! be used only once, so a row-major B is read in place instead.

use super::pack::{pack_panels, prefetch_share};
use super::{MatMut, MatRef};
use std::cell::RefCell;

/// The SIMD operations the micro-kernel body needs, for one vector type.
///
/// Implementations are `#[inline(always)]` wrappers of intrinsics. They carry
/// no `target_feature` themselves: they are inlined into a kernel's entry
/// point, which enables the features, so the intrinsics compile there.
pub(crate) trait Simd {
    type V: Copy;
    const LANES: usize;
    fn zero() -> Self::V;
    fn splat(x: f32) -> Self::V;
    /// `a * b + c` (fused where the target has FMA).
    fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// # Safety
    /// `p .. p + LANES` must be readable.
    unsafe fn load(p: *const f32) -> Self::V;
    /// # Safety
    /// `p .. p + LANES` must be writable.
    unsafe fn store(p: *mut f32, v: Self::V);
}

/// Implements `Simd` for an x86 vector type from its intrinsics. The methods
/// are only ever inlined into a kernel entry point whose `target_feature`
/// enables the intrinsics' features (their SAFETY requirement).
#[cfg(target_arch = "x86_64")]
macro_rules! impl_simd_x86 {
    ($ty:ty, $v:ty, $lanes:expr, $zero:ident, $splat:ident, $fma:ident, $mul:ident, $load:ident, $store:ident) => {
        impl $crate::gemm::blis::Simd for $ty {
            type V = $v;
            const LANES: usize = $lanes;
            #[inline(always)]
            fn zero() -> $v {
                // SAFETY: inlined into a function enabling the needed features.
                unsafe { $zero() }
            }
            #[inline(always)]
            fn splat(x: f32) -> $v {
                // SAFETY: as `zero`.
                unsafe { $splat(x) }
            }
            #[inline(always)]
            fn fma(a: $v, b: $v, c: $v) -> $v {
                // SAFETY: as `zero`.
                unsafe { $fma(a, b, c) }
            }
            #[inline(always)]
            fn mul(a: $v, b: $v) -> $v {
                // SAFETY: as `zero`.
                unsafe { $mul(a, b) }
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> $v {
                // SAFETY: the caller guarantees LANES readable values at `p`.
                unsafe { $load(p) }
            }
            #[inline(always)]
            unsafe fn store(p: *mut f32, v: $v) {
                // SAFETY: the caller guarantees LANES writable values at `p`.
                unsafe { $store(p, v) }
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use impl_simd_x86;

/// Blocking parameters of one micro-kernel.
#[derive(Clone, Copy)]
pub(crate) struct Blocking {
    /// Rows of a micro-tile (A panel width), at most 8.
    pub mr: usize,
    /// Columns of a micro-tile (B panel width), a multiple of the vector width.
    pub nr: usize,
    /// Largest depth of one packed block.
    pub kc: usize,
    /// Rows of one packed A block (a multiple of `mr`).
    pub mc: usize,
    /// Columns of one packed B block (a multiple of `nr`).
    pub nc: usize,
}

/// A micro-kernel plus its blocking parameters.
pub(crate) trait MicroKernel {
    const BLOCKING: Blocking;
    /// Whether the kernel's CPU features include AVX, so packing may use it.
    const AVX: bool;
    /// `C[rows x NR] = alpha * Apanel * Bpanel + beta * C` (C not read when `beta == 0`).
    ///
    /// # Safety
    /// `t` satisfies `Tile`'s contract for `MR` and `NR`; `1 <= rows <= MR`;
    /// the CPU has the kernel's features.
    unsafe fn tile(rows: usize, t: Tile);
    /// As `tile`, but computing and writing only the first `cols` columns
    /// (`1 <= cols <= NR`) rounded up to the kernel's vector width: a ragged
    /// last panel of `cols` columns then costs `cols`, not `NR`, columns of
    /// FMAs (a 16-tile GEMM of a one-patch HardNet layer is a third of the
    /// AVX-512 kernel's 48). Each element's sum is the one `tile` computes.
    /// By default the whole tile.
    ///
    /// # Safety
    /// As `tile`.
    unsafe fn tile_cols(rows: usize, cols: usize, t: Tile) {
        let _ = cols;
        // SAFETY: forwarded contract.
        unsafe { Self::tile(rows, t) }
    }
}

/// Blocking shared by the 6 x 16 kernels (portable and AVX2).
pub(crate) const BLOCKING_6X16: Blocking = Blocking { mr: 6, nr: 16, kc: 384, mc: 132, nc: 480 };

/// One micro-tile's operands.
///
/// Contract: `a` holds `kc * MR` packed A values; `b + p * bs + j` is
/// readable for `p < kc`, `j < NR` (`bs = NR` for a packed panel, B's row
/// stride when B is read in place); `c + i * rsc + j` is writable (and readable if `beta != 0`) for
/// every row `i` the kernel computes and `j < NR`.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub kc: usize,
    pub a: *const f32,
    pub b: *const f32,
    pub bs: usize,
    pub alpha: f32,
    pub beta: f32,
    pub c: *mut f32,
    pub rsc: usize,
}

/// The generic micro-kernel body: `R` rows, `NV` vectors of `S` per row,
/// A panels `MR` wide. Register layout for AVX-512 (R = 8, NV = 3): 24
/// accumulators zmm(i, j) = C[i, 16j .. 16j + 16], 3 zmm for the current B
/// row, 1 for the broadcast A value: 28 of 32 registers.
///
/// # Safety
/// As `MicroKernel::tile` with `rows = R`; must be inlined into a function
/// that enables the features `S` needs.
#[inline(always)]
unsafe fn micro_tile<S: Simd, const R: usize, const NV: usize, const MR: usize>(t: Tile) {
    let Tile { kc, a, b, bs, alpha, beta, c, rsc } = t;
    let mut acc = [[S::zero(); NV]; R];
    let (mut ap, mut bp) = (a, b);
    // SAFETY: the caller's contract: packed A has MR values per depth step
    // (R <= MR of them used), B has NV * LANES = NR per step of `bs`; C rows i < R hold
    // NV * LANES writable values at c + i * rsc.
    unsafe {
        for _ in 0..kc {
            let mut bv = [S::zero(); NV];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = S::load(bp.add(j * S::LANES));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = S::splat(*ap.add(i));
                for (r, bj) in row.iter_mut().zip(bv) {
                    *r = S::fma(ai, bj, *r);
                }
            }
            ap = ap.add(MR);
            bp = bp.add(bs);
        }
        let va = S::splat(alpha);
        let vb = S::splat(beta);
        for (i, row) in acc.iter().enumerate() {
            for (j, r) in row.iter().enumerate() {
                let p = c.add(i * rsc + j * S::LANES);
                let v = S::mul(*r, va);
                // beta == 0: C is never read (it may hold NaN).
                let v = if beta == 0.0 { v } else { S::fma(S::load(p), vb, v) };
                S::store(p, v);
            }
        }
    }
}

/// Dispatches `rows` (1..=MR, MR <= 8) to the matching `micro_tile`
/// instantiation; used inside each kernel's `target_feature` entry point.
///
/// # Safety
/// As `MicroKernel::tile`.
#[inline(always)]
pub(crate) unsafe fn tile_rows<S: Simd, const NV: usize, const MR: usize>(rows: usize, t: Tile) {
    // SAFETY: forwarded contract; `rows <= MR` so the instantiation reads only
    // packed rows that exist.
    unsafe {
        match rows {
            1 => micro_tile::<S, 1, NV, MR>(t),
            2 => micro_tile::<S, 2, NV, MR>(t),
            3 => micro_tile::<S, 3, NV, MR>(t),
            4 => micro_tile::<S, 4, NV, MR>(t),
            5 if MR >= 5 => micro_tile::<S, 5, NV, MR>(t),
            6 if MR >= 6 => micro_tile::<S, 6, NV, MR>(t),
            7 if MR >= 7 => micro_tile::<S, 7, NV, MR>(t),
            8 if MR >= 8 => micro_tile::<S, 8, NV, MR>(t),
            _ => unreachable!("micro-tile rows {rows} outside 1..={MR}"),
        }
    }
}

/// `tile_rows` on the first `cols.div_ceil(LANES)` of the `NV` vectors of a
/// row (`MicroKernel::tile_cols`): fewer vectors read and write a prefix of
/// the tile's columns, each element the same sum.
///
/// # Safety
/// As `MicroKernel::tile`; `1 <= cols <= NV * LANES`.
#[inline(always)]
pub(crate) unsafe fn tile_cols<S: Simd, const NV: usize, const MR: usize>(rows: usize, cols: usize, t: Tile) {
    const { assert!(NV <= 3, "tile_cols dispatches up to 3 vectors") };
    // SAFETY: forwarded contract; a prefix of the NV vectors.
    unsafe {
        match cols.div_ceil(S::LANES) {
            1 if NV > 1 => tile_rows::<S, 1, MR>(rows, t),
            2 if NV > 2 => tile_rows::<S, 2, MR>(rows, t),
            _ => tile_rows::<S, NV, MR>(rows, t),
        }
    }
}

/// Largest MR * NR of any kernel: the edge tile lives on the stack.
const MAX_TILE: usize = 8 * 64;

struct PackBufs {
    a: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    static BUFS: RefCell<PackBufs> = const { RefCell::new(PackBufs { a: Vec::new(), b: Vec::new() }) };
}

/// Largest packed A block (`mc * kc`) and B panel set (`nc * kc`) of any
/// kernel: the 6x16 kernels' (AVX-512's fit inside, checked at compile time
/// in `gemm_blis`): a thread's buffers are
/// sized to these once, so which GEMMs a thread happens to run, and in what
/// order, never decides whether a later call allocates.
const PACK_A_MAX: usize = BLOCKING_6X16.mc * BLOCKING_6X16.kc;
const PACK_B_MAX: usize = BLOCKING_6X16.nc * BLOCKING_6X16.kc;

/// A 64-byte aligned window of `len <= cap` values in `v`; a `v` too small
/// for it grows straight to `cap` (plus the alignment slack), so each buffer
/// allocates at most once per thread.
fn aligned(v: &mut Vec<f32>, len: usize, cap: usize) -> &mut [f32] {
    if v.len() < len + 16 {
        v.resize(cap.max(len) + 16, 0.0);
    }
    let off = v.as_ptr().align_offset(64).min(16);
    &mut v[off..off + len]
}

/// Sizes this thread's packing buffers for every kernel's largest blocks.
pub(crate) fn reserve_pack_buffers() {
    BUFS.with(|cell| {
        let mut bufs = cell.borrow_mut();
        aligned(&mut bufs.a, PACK_A_MAX, PACK_A_MAX);
        aligned(&mut bufs.b, PACK_B_MAX, PACK_B_MAX);
    });
}

/// Where the loop nest takes its packed A blocks from.
#[derive(Clone, Copy)]
pub(crate) enum ASrc<'a> {
    /// Packed on the fly, block by block, into the thread's buffer.
    View(MatRef<'a>),
    /// Packed beforehand by `pack_a` (`cols`: A's depth).
    Packed { data: &'a [f32], cols: usize },
}

/// Depth of one packed block for depth `k` (576 -> 3 x 192 rather than 256 + 256 + 64).
fn depth_block<K: MicroKernel>(k: usize) -> usize {
    k.div_ceil(k.div_ceil(K::BLOCKING.kc))
}

/// Length of `rows x cols` packed by `pack_a::<K>`: every depth block of every row panel.
pub(crate) fn packed_a_len<K: MicroKernel>(rows: usize, cols: usize) -> usize {
    rows.next_multiple_of(K::BLOCKING.mr) * cols
}

/// Packs all of A the way `gemm_blis::<K>` packs it block by block: depth
/// block `pc` (in `depth_block` steps) at `pc * m_pad`, in it row block `ic`
/// at `ic * kc` (`m_pad` = rows rounded up to MR), so the loop nest finds
/// each block where it would have packed it. `dst.len() == packed_a_len`.
pub(crate) fn pack_a<K: MicroKernel>(a: MatRef<'_>, dst: &mut [f32]) {
    let (m, k) = (a.rows, a.cols);
    assert_eq!(dst.len(), packed_a_len::<K>(m, k), "packed A length");
    let (mr, mc, kc_blk) = (K::BLOCKING.mr, K::BLOCKING.mc, depth_block::<K>(k));
    let m_pad = m.next_multiple_of(mr);
    for pc in (0..k).step_by(kc_blk) {
        let kc = kc_blk.min(k - pc);
        for ic in (0..m).step_by(mc) {
            let rows = mc.min(m - ic);
            let at = pc * m_pad + ic * kc;
            let len = rows.next_multiple_of(mr) * kc;
            // SAFETY: (ic, pc) is an element of A and the block's elements
            // are inside the view A, bounds-checked at construction.
            unsafe {
                pack_panels(a.data.as_ptr().add(ic * a.rs + pc * a.cs), rows, kc, a.rs, a.cs, mr, &mut dst[at..at + len], K::AVX)
            };
        }
    }
}

/// `C = alpha * A * B + beta * C` with micro-kernel `K`.
///
/// The CPU must support `K`'s features (checked by `gemm_with`); m, n, k >= 1.
pub(crate) fn gemm_blis<K: MicroKernel>(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>) {
    // The fast path stores along C's rows; a column-major C is the transpose problem.
    let (a, b, c) = if c.cs != 1 && c.rs == 1 { (b.t(), a.t(), c.t()) } else { (a, b, c) };
    gemm_blis_from::<K>(alpha, ASrc::View(a), b, beta, c)
}

/// The loop nest, A from `a`: `gemm_blis` with a view, `gemm_packed_a`
/// with A packed by `pack_a::<K>` (the caller checked its length and the
/// dimensions; a column-major C then goes through the edge-tile path).
pub(crate) fn gemm_blis_from<K: MicroKernel>(alpha: f32, a: ASrc<'_>, b: MatRef<'_>, beta: f32, mut c: MatMut<'_>) {
    const {
        let b = K::BLOCKING;
        assert!(b.mr <= 8 && b.mr * b.nr <= MAX_TILE && b.mc % b.mr == 0 && b.nc % b.nr == 0);
        assert!(b.mc * b.kc <= PACK_A_MAX && b.nc * b.kc <= PACK_B_MAX);
    };
    #[allow(non_snake_case)]
    let Blocking { mr: MR, nr: NR, kc: _, mc: MC, nc: NC } = K::BLOCKING;
    let (m, n) = (c.rows, c.cols);
    let k = match a {
        ASrc::View(a) => a.cols,
        ASrc::Packed { cols, .. } => cols,
    };
    let kc_blk = depth_block::<K>(k);
    // With a single row panel every packed B panel would be used once, so
    // packing only costs a copy: read row-major B in place instead (packing
    // just the ragged last panel, whose width is short of NR).
    let direct_b = m <= MR && b.cs == 1;
    BUFS.with(|cell| {
        let mut bufs = cell.borrow_mut();
        let PackBufs { a: abuf, b: bbuf } = &mut *bufs;
        let abuf = aligned(abuf, MC.min(m.next_multiple_of(MR)) * kc_blk, PACK_A_MAX);
        let bbuf = aligned(bbuf, NC.min(n.next_multiple_of(NR)) * kc_blk, PACK_B_MAX);
        let (cp, crs, ccs) = (c.data_mut().as_mut_ptr(), c.rs, c.cs);
        // The edge tile: each use writes every column it reads back.
        let mut t = [0.0f32; MAX_TILE];
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(kc_blk) {
                let kc = kc_blk.min(k - pc);
                // Later depth blocks add to what the first one wrote.
                let beta = if pc == 0 { beta } else { 1.0 };
                // SAFETY: (pc, jc) is an element of B and the block's elements
                // are inside the view B, bounds-checked at construction.
                let b_blk = unsafe { b.data.as_ptr().add(pc * b.rs + jc * b.cs) };
                if !direct_b {
                    // SAFETY: as above.
                    unsafe { pack_panels(b_blk, nc, kc, b.cs, b.rs, NR, bbuf, K::AVX) };
                }
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let apack: &[f32] = match a {
                        ASrc::View(a) => {
                            // SAFETY: as for B, with element (ic, pc) of A.
                            unsafe {
                                pack_panels(
                                    a.data.as_ptr().add(ic * a.rs + pc * a.cs),
                                    mc,
                                    kc,
                                    a.rs,
                                    a.cs,
                                    MR,
                                    abuf,
                                    K::AVX,
                                )
                            };
                            abuf
                        }
                        ASrc::Packed { data, .. } => {
                            let at = pc * m.next_multiple_of(MR) + ic * kc;
                            &data[at..at + mc.next_multiple_of(MR) * kc]
                        }
                    };
                    for jr in (0..nc).step_by(NR) {
                        let nr = NR.min(nc - jr);
                        if ic == 0 && b.cs == 1 {
                            // The next B block in loop order: deeper in this
                            // column block, else the next column block.
                            let (pn, jn) = if pc + kc < k { (pc + kc, jc) } else { (0, jc + NC) };
                            if jn < n {
                                let (kn, nn) = (kc_blk.min(k - pn), NC.min(n - jn));
                                // SAFETY: (pn, jn) is an element of B, and so is
                                // every (p, j) of that kn x nn block.
                                unsafe {
                                    let at = b.data.as_ptr().add(pn * b.rs + jn);
                                    prefetch_share(at, nn, kn, b.rs, jr / NR, nc.div_ceil(NR));
                                }
                            }
                        }
                        let (bp, bs) = if !direct_b {
                            (bbuf[jr * kc..].as_ptr(), NR)
                        } else if nr == NR {
                            // SAFETY: (pc, jc + jr) is an element of B, and
                            // the kc x NR panel from it lies inside B.
                            (unsafe { b_blk.add(jr) }, b.rs)
                        } else {
                            // SAFETY: the kc x nr edge panel lies inside B.
                            unsafe { pack_panels(b_blk.add(jr), nr, kc, 1, b.rs, NR, bbuf, K::AVX) };
                            (bbuf.as_ptr(), NR)
                        };
                        for ir in (0..mc).step_by(MR) {
                            let rows = MR.min(mc - ir);
                            let ap = apack[ir * kc..].as_ptr();
                            let (i0, j0) = (ic + ir, jc + jr);
                            if nr == NR && ccs == 1 {
                                // SAFETY: the packed panels hold kc*MR and kc*NR
                                // values; C elements (i0 + i, j0 + j), i < rows,
                                // j < NR, are inside the checked view C and
                                // contiguous along j. `gemm_with` checked the
                                // CPU features.
                                unsafe {
                                    K::tile(
                                        rows,
                                        Tile { kc, a: ap, b: bp, bs, alpha, beta, c: cp.add(i0 * crs + j0), rsc: crs },
                                    )
                                };
                            } else {
                                // SAFETY: as above, into the local NR-wide tile, of which
                                // the first `nr` columns are read.
                                unsafe {
                                    K::tile_cols(
                                        rows,
                                        nr,
                                        Tile { kc, a: ap, b: bp, bs, alpha, beta: 0.0, c: t.as_mut_ptr(), rsc: NR },
                                    )
                                };
                                for (i, tr) in t.chunks_exact(NR).take(rows).enumerate() {
                                    let tr = &tr[..nr];
                                    if ccs == 1 {
                                        // SAFETY: C elements (i0 + i, j0 .. j0 + nr) are inside
                                        // C and contiguous; nothing else refers to them here.
                                        let out = unsafe { std::slice::from_raw_parts_mut(cp.add((i0 + i) * crs + j0), nr) };
                                        if beta == 0.0 {
                                            out.copy_from_slice(tr);
                                        } else {
                                            out.iter_mut().zip(tr).for_each(|(o, &v)| *o = v + beta * *o);
                                        }
                                        continue;
                                    }
                                    for (j, &v) in tr.iter().enumerate() {
                                        // SAFETY: (i0 + i, j0 + j) is inside C.
                                        let out = unsafe { &mut *cp.add((i0 + i) * crs + (j0 + j) * ccs) };
                                        *out = if beta == 0.0 { v } else { v + beta * *out };
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}
