//! bf16 GEMM for reduced-precision inference: bf16 weights times bf16
//! activations, f32 accumulation.
//!
//! Contract, for `A` an `m x k` weight matrix and `B` a `k x n` matrix, both
//! rounded to bf16 (`to_bf16`: the top 16 bits of the f32, rounded to
//! nearest, ties to even) and `kp` the depth padded to an even number:
//!
//! ```text
//!   acc = 0
//!   for s in 0 .. kp / 2:                  (every step rounded to f32)
//!       acc = acc + a[i, 2s+1] * b[2s+1, j]
//!       acc = acc + a[i, 2s]   * b[2s, j]
//!   C[i, j] = acc
//! ```
//!
//! This is the order of AVX512_BF16's `vdpbf16ps` (Intel's definition: the
//! odd element of each pair first). A product of two bf16 values has at
//! most 16 significant bits, so it is exact in f32 and a fused multiply-add
//! rounds like a multiply then an add: the naive, portable and AVX2 kernels
//! give the same bits, whatever the tiles or the split of C among threads.
//! `vdpbf16ps` treats subnormal inputs and results as zero, so where a
//! product or a sum falls below f32's normal range (never in these models)
//! its result may differ from the others in the last place.
//!
//! Layouts: `Bf16Weights` keeps A row-major, each row zero-padded to `kp`,
//! as bf16 codes (for `vdpbf16ps`) and widened back to f32 (for kernels
//! without bf16 instructions, which multiply in f32). Packed B (`pack_b`) is
//! a sequence of panels of `PANEL` = 16 columns, each `kp / 2` steps of 16
//! columns x 2 consecutive k values (64 bytes, one AVX-512 register or two
//! AVX2 ones): element `panel * kp * 16 + (p / 2) * 32 + 2 * (j % 16) + p % 2`
//! holds b[p, j]. Padding rows and columns are 0 and never stored. A caller
//! splitting C among threads gives each part whole panels.

use super::{MatMut, MatRef};
use crate::error::{Error, Result};
use std::sync::OnceLock;

/// Columns of C per packed-B panel.
pub const PANEL: usize = 16;
/// Rows of C one tile call computes at most.
const TILE_ROWS: usize = 8;

/// The bf16 GEMM implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Kernel {
    /// Three loops over the unpacked values: the reference.
    Naive,
    /// Plain Rust tiles over the packed layout (any target).
    Portable,
    /// f32 FMA tiles on the widened values (x86-64 with avx2 and fma).
    Avx2,
    /// `vdpbf16ps` tiles (x86-64 with avx512f and avx512bf16).
    Avx512Bf16,
}

impl Bf16Kernel {
    /// Every bf16 kernel this build knows, available on this CPU or not.
    pub const ALL: &'static [Bf16Kernel] =
        &[Bf16Kernel::Naive, Bf16Kernel::Portable, Bf16Kernel::Avx2, Bf16Kernel::Avx512Bf16];

    /// A short stable name (benches, the CLI's `info`).
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Naive => "naive",
            Bf16Kernel::Portable => "portable",
            Bf16Kernel::Avx2 => "avx2",
            Bf16Kernel::Avx512Bf16 => "avx512-bf16",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Bf16Kernel::Naive | Bf16Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"),
            #[cfg(not(target_arch = "x86_64"))]
            Bf16Kernel::Avx2 | Bf16Kernel::Avx512Bf16 => false,
        }
    }

    /// Whether the kernel multiplies with bf16 instructions (the others
    /// widen the bf16 values to f32 and run at f32 speed).
    pub fn is_native(self) -> bool {
        self == Bf16Kernel::Avx512Bf16
    }
}

/// The fastest bf16 kernel this CPU has, detected once.
pub fn best_bf16_kernel() -> Bf16Kernel {
    static BEST: OnceLock<Bf16Kernel> = OnceLock::new();
    *BEST.get_or_init(|| {
        [Bf16Kernel::Avx512Bf16, Bf16Kernel::Avx2].into_iter().find(|k| k.is_available()).unwrap_or(Bf16Kernel::Portable)
    })
}

/// The bf16 code of `x`: its top 16 bits rounded to nearest, ties to even;
/// infinities stay infinite, NaN stays NaN (made quiet, sign kept).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x0040) as u16;
    }
    // Adding 0x7fff plus the kept part's lowest bit rounds half to even;
    // a carry into the exponent is the right result (up to infinity).
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 code stands for (exact).
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `x` rounded to the nearest bf16 value, as f32.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// `kp`: the depth rounded up to a whole number of 2-value steps.
pub fn padded_depth(k: usize) -> usize {
    k.div_ceil(2) * 2
}

/// A weight matrix rounded to bf16 (see the file header).
#[derive(Clone, Debug, PartialEq)]
pub struct Bf16Weights {
    rows: usize,
    cols: usize,
    /// `rows x kp` codes, row-major, zero-padded.
    h: Vec<u16>,
    /// The same values widened to f32.
    f: Vec<f32>,
}

impl Bf16Weights {
    /// Rounds `w` to bf16.
    pub fn convert(w: MatRef<'_>) -> Bf16Weights {
        let (rows, cols) = (w.rows(), w.cols());
        let kp = padded_depth(cols);
        let mut h = vec![0u16; rows * kp];
        for (i, row) in h.chunks_exact_mut(kp.max(1)).take(rows).enumerate() {
            row[..cols].iter_mut().enumerate().for_each(|(p, c)| *c = to_bf16(w.at(i, p)));
        }
        let f = h.iter().map(|&c| from_bf16(c)).collect();
        Bf16Weights { rows, cols, h, f }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The bf16 value of `a[i, p]`; panics out of range (tests and references).
    pub fn value(&self, i: usize, p: usize) -> f32 {
        assert!(i < self.rows && p < self.cols);
        self.f[i * padded_depth(self.cols) + p]
    }
}

/// Elements (`u16`) `pack_b` fills for a `k x n` B.
pub fn packed_b_len(k: usize, n: usize) -> usize {
    n.div_ceil(PANEL) * padded_depth(k) * PANEL
}

/// Rounds `b` (`k x n`, any strides) to bf16 into the packed layout of the
/// file header; `dst` has `packed_b_len(k, n)` elements.
pub fn pack_b(b: MatRef<'_>, dst: &mut [u16]) -> Result<()> {
    let (k, n) = (b.rows(), b.cols());
    check_packed(k, n, dst.len())?;
    let kp = padded_depth(k);
    if kp == 0 {
        return Ok(());
    }
    let (data, rs, cs) = (b.data(), b.row_stride(), b.col_stride());
    let mut rows = [[0f32; PANEL]; 2];
    for (panel, chunk) in dst.chunks_exact_mut(kp * PANEL).enumerate() {
        let j0 = panel * PANEL;
        let w = PANEL.min(n - j0);
        for (s, step) in chunk.chunks_exact_mut(2 * PANEL).enumerate() {
            for (t, row) in rows.iter_mut().enumerate() {
                let p = 2 * s + t;
                row.fill(0.0);
                if p >= k {
                    continue;
                }
                // Element (p, j0 + jj) of the view, bounds-checked when it was built.
                if cs == 1 && w == PANEL {
                    // Fixed-size: inlined moves rather than a memmove call per row.
                    *row = data[p * rs + j0..p * rs + j0 + PANEL].try_into().expect("16 values");
                } else if cs == 1 {
                    row[..w].copy_from_slice(&data[p * rs + j0..p * rs + j0 + w]);
                } else {
                    row[..w].iter_mut().enumerate().for_each(|(jj, v)| *v = data[p * rs + (j0 + jj) * cs]);
                }
            }
            for (j, pair) in step.chunks_exact_mut(2).enumerate() {
                pair[0] = to_bf16(rows[0][j]);
                pair[1] = to_bf16(rows[1][j]);
            }
        }
    }
    Ok(())
}

/// Rounds and packs a B given as its transpose: `bt` holds `n` rows of `k`
/// values (B^T row-major, e.g. a batch of flattened images, one per column
/// of B), so each 2-value step of a column is 2 consecutive values.
pub fn pack_bt(bt: &[f32], k: usize, n: usize, dst: &mut [u16]) -> Result<()> {
    if bt.len() != k * n {
        return Err(Error::Shape(format!("bf16 pack: a {k}x{n} B^T needs {} values, got {}", k * n, bt.len())));
    }
    check_packed(k, n, dst.len())?;
    let kp = padded_depth(k);
    let at = |j: usize, s: usize| (j / PANEL) * kp * PANEL + 2 * (j % PANEL) + s * 2 * PANEL;
    for (j, col) in bt.chunks_exact(k.max(1)).take(n).enumerate() {
        for s in 0..kp / 2 {
            dst[at(j, s)] = to_bf16(col[2 * s]);
            dst[at(j, s) + 1] = if 2 * s + 1 < k { to_bf16(col[2 * s + 1]) } else { 0 };
        }
    }
    // The last panel's columns past n.
    for j in n..n.div_ceil(PANEL) * PANEL {
        for s in 0..kp / 2 {
            dst[at(j, s)..at(j, s) + 2].fill(0);
        }
    }
    Ok(())
}

fn check_packed(k: usize, n: usize, len: usize) -> Result<()> {
    let need = packed_b_len(k, n);
    if len != need {
        return Err(Error::Shape(format!("bf16 pack: a {k}x{n} B packs into {need} values, the buffer has {len}")));
    }
    Ok(())
}

/// `C = A * B` with the best kernel for this CPU; `b` packed by `pack_b`
/// (or `pack_bt`) for `n` columns.
pub fn gemm_bf16(a: &Bf16Weights, b: &[u16], n: usize, c: MatMut<'_>) -> Result<()> {
    gemm_bf16_with(best_bf16_kernel(), a, b, n, c)
}

/// `gemm_bf16` with a named kernel; errors if this CPU cannot run it.
/// `Naive` reads `b` through the packed layout's index map, not its tiles.
pub fn gemm_bf16_with(kernel: Bf16Kernel, a: &Bf16Weights, b: &[u16], n: usize, mut c: MatMut<'_>) -> Result<()> {
    if c.rows() != a.rows || c.cols() != n {
        return Err(Error::Shape(format!(
            "bf16 GEMM: A is {}x{}, B has {n} columns, C is {}x{}",
            a.rows,
            a.cols,
            c.rows(),
            c.cols()
        )));
    }
    let need = packed_b_len(a.cols, n);
    if b.len() != need {
        return Err(Error::Shape(format!("bf16 GEMM: a {}x{n} B packs into {need} values, {} given", a.cols, b.len())));
    }
    if !kernel.is_available() {
        return Err(Error::Unsupported(format!("bf16 GEMM kernel '{}' needs CPU features this machine lacks", kernel.name())));
    }
    if a.rows == 0 || n == 0 {
        return Ok(());
    }
    if kernel == Bf16Kernel::Naive || a.cols == 0 {
        naive(a, b, n, &mut c);
        return Ok(());
    }
    let kp = padded_depth(a.cols);
    let mut acc = [[0f32; PANEL]; TILE_ROWS];
    let (rs, cs) = (c.row_stride(), c.col_stride());
    let data = c.data_mut();
    for (panel, bp) in b.chunks_exact(kp * PANEL).enumerate() {
        let j0 = panel * PANEL;
        let cols = PANEL.min(n - j0);
        for i0 in (0..a.rows).step_by(TILE_ROWS) {
            let rows = TILE_ROWS.min(a.rows - i0);
            let at = i0 * kp;
            // SAFETY: rows i0 .. i0 + rows of kp values each exist in `a.h`
            // and `a.f`, `bp` is one whole panel (kp * 16 values), both
            // checked above; the kernel is available (checked above).
            unsafe {
                match kernel {
                    Bf16Kernel::Naive => unreachable!("handled above"),
                    Bf16Kernel::Portable => tile_portable(a.f[at..].as_ptr(), kp, rows, bp.as_ptr(), kp / 2, &mut acc),
                    #[cfg(target_arch = "x86_64")]
                    Bf16Kernel::Avx2 => super::bf16_x86::tile_avx2(a.f[at..].as_ptr(), kp, rows, bp.as_ptr(), kp / 2, &mut acc),
                    #[cfg(target_arch = "x86_64")]
                    Bf16Kernel::Avx512Bf16 => {
                        super::bf16_x86::tile_avx512bf16(a.h[at..].as_ptr(), kp, rows, bp.as_ptr(), kp / 2, &mut acc)
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    Bf16Kernel::Avx2 | Bf16Kernel::Avx512Bf16 => unreachable!("is_available() is false off x86-64"),
                }
            }
            for (r, acc_row) in acc.iter().enumerate().take(rows) {
                // Element (i, j0) of the view, which was bounds-checked when built.
                let base = (i0 + r) * rs + j0 * cs;
                if cs == 1 && cols == PANEL {
                    // A whole panel: a fixed-size copy the compiler inlines (a
                    // variable-length one calls memmove once per row and tile).
                    let dst: &mut [f32; PANEL] = (&mut data[base..base + PANEL]).try_into().expect("16 values");
                    *dst = *acc_row;
                } else if cs == 1 {
                    data[base..base + cols].copy_from_slice(&acc_row[..cols]);
                } else {
                    for (jj, &v) in acc_row.iter().enumerate().take(cols) {
                        data[base + jj * cs] = v;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The portable tile: `acc[r][j]` = the file header's sum for `rows <= 8`
/// rows of widened A from `a` (row stride `lda`) and one packed-B panel of
/// `k2` steps at `b`. Rows of `acc` at or past `rows` are left as they are.
///
/// # Safety
/// `a` points at `rows` rows of `lda >= 2 * k2` readable values and `b` at
/// `32 * k2` readable values.
unsafe fn tile_portable(a: *const f32, lda: usize, rows: usize, b: *const u16, k2: usize, acc: &mut [[f32; PANEL]; 8]) {
    // SAFETY: the contract above: these ranges are readable.
    let (a, b) = unsafe { (std::slice::from_raw_parts(a, (rows - 1) * lda + 2 * k2), std::slice::from_raw_parts(b, 32 * k2)) };
    let mut sum = [[0f32; PANEL]; 8];
    for (s, step) in b.chunks_exact(2 * PANEL).enumerate() {
        let mut depth = [[0f32; PANEL]; 2];
        for (j, pair) in step.chunks_exact(2).enumerate() {
            depth[0][j] = from_bf16(pair[0]);
            depth[1][j] = from_bf16(pair[1]);
        }
        for (r, sum_row) in sum.iter_mut().enumerate().take(rows) {
            let (w0, w1) = (a[r * lda + 2 * s], a[r * lda + 2 * s + 1]);
            for ((acc, &x0), &x1) in sum_row.iter_mut().zip(&depth[0]).zip(&depth[1]) {
                *acc = (*acc + w1 * x1) + w0 * x0;
            }
        }
    }
    acc[..rows].copy_from_slice(&sum[..rows]);
}

/// The reference: the file header's loop, per element, from the unpacked values.
fn naive(a: &Bf16Weights, b: &[u16], n: usize, c: &mut MatMut<'_>) {
    let kp = padded_depth(a.cols);
    let vb = |p: usize, j: usize| from_bf16(b[(j / PANEL) * kp * PANEL + (p / 2) * 2 * PANEL + 2 * (j % PANEL) + p % 2]);
    let va = |i: usize, p: usize| if p < a.cols { a.value(i, p) } else { 0.0 };
    for i in 0..a.rows {
        for j in 0..n {
            let mut acc = 0.0f32;
            for s in 0..kp / 2 {
                acc += va(i, 2 * s + 1) * vb(2 * s + 1, j);
                acc += va(i, 2 * s) * vb(2 * s, j);
            }
            *c.at_mut(i, j) = acc;
        }
    }
}
