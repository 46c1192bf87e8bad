//! int8 GEMM for quantized inference: i8 weights times u8 activations,
//! exact i32 accumulation, dequantized into f32 with a per-row affine map
//! (or quantized on as the next int8 layer's codes: `q8_store`).
//!
//! Contract, for `A` an `m x k` weight matrix quantized per row (output
//! channel) and `B` a `k x n` activation matrix quantized per tensor:
//!
//! ```text
//!   A[i, p] ~ sa[i] * qa[i, p],          qa in [-63, 63] (symmetric, 7 bits)
//!   B[p, j] ~ sb * (qb[p, j] - zb),      qb in [0, 255], zero point zb
//!   acc[i, j] = sum_p qa[i, p] * qb[p, j]                  (exact, i32)
//!   C[i, j]   = act(scale[i] * (acc[i, j] - zb * rowsum_a[i]) + shift[i])
//! ```
//!
//! where the caller's `scale[i]` is `sa[i] * sb` times whatever per-channel
//! factor follows (a folded BatchNorm), `shift` the bias, `act` ReLU or
//! identity (`Q8Out`). So `C = A * B` up to the quantization of A and B.
//!
//! Why 7-bit weights: AVX2's `vpmaddubsw` adds two u8 x i8 products in a
//! saturating i16. With `qb <= 255` and `|qa| <= 63` a pair stays within
//! 2 * 255 * 63 = 32130 < 32767, so every kernel (naive, portable, AVX2,
//! AVX-512 VNNI, AMX) computes the same exact integer sums and therefore the same
//! output bits, whatever the CPU, the tile shapes or the split of C among
//! threads. The bit goes to the weights rather than the activations because
//! weights have a scale per output channel and activations one per tensor
//! (ONNX Runtime's `reduce_range` makes the same trade on CPUs without
//! VNNI). `MAX_K` keeps the i32 sums from overflowing.
//!
//! Layouts: `Q8Weights` keeps A row-major with each row zero-padded to a
//! multiple of 64 bytes (`lda`: the depth `kp`, a multiple of 4, then zeros)
//! and the rows zero-padded to a multiple of 16, so that AMX tiles of 16
//! rows x 64 codes (`q8_amx`) lie inside it and add 0; packed B (`pack_b`) is a sequence of panels of
//! `PANEL` = 16 columns, each `kp / 4` steps of 16 columns x 4 consecutive
//! k values (64 bytes, one AVX-512 register or two AVX2 ones): byte
//! `panel * kp * 16 + (p / 4) * 64 + 4 * (j % 16) + p % 4` holds qb[p, j].
//! Padding rows of B are 0; padding columns of the last panel are 0 and
//! never stored. A caller splitting C among threads gives each part whole
//! panels (column offsets that are multiples of 16).

use super::q8_store::{CodeSink, LaidSink, RowMap, Sink, ValueSink, check_out};
pub use super::q8_store::{PhaseCursor, Q8Codes, Q8Dst, Q8Laid, Q8Layout};
use super::MatRef;
use crate::error::{Error, Result};
use std::sync::OnceLock;

/// Columns of C per packed-B panel.
pub const PANEL: usize = 16;
/// Largest activation code: all 8 bits.
pub const B_MAX: u8 = 255;
/// Largest weight magnitude: 7 bits, symmetric (see the file header).
pub const A_MAX: i8 = 63;
/// Largest depth: `MAX_K * 255 * 63 < 2^31`, so no i32 sum overflows.
pub const MAX_K: usize = 131_072;
/// Rows of C one tile call computes at most.
const TILE_ROWS: usize = 8;

/// The int8 GEMM implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Q8Kernel {
    /// Three loops over the unpacked matrices: the reference.
    Naive,
    /// Plain Rust tiles over the packed layout (any target).
    Portable,
    /// `vpmaddubsw` + `vpmaddwd` tiles (x86-64 with avx2).
    Avx2,
    /// `vpdpbusd` tiles (x86-64 with avx512f, avx512bw and avx512vnni).
    Avx512Vnni,
    /// AMX tiles, `tdpbsud` (x86-64 with amx-tile, amx-int8, avx512f and
    /// avx512bw, on an OS that grants the tile registers: `q8_amx`).
    Amx,
}

impl Q8Kernel {
    /// Every int8 kernel this build knows, available on this CPU or not.
    pub const ALL: &'static [Q8Kernel] =
        &[Q8Kernel::Naive, Q8Kernel::Portable, Q8Kernel::Avx2, Q8Kernel::Avx512Vnni, Q8Kernel::Amx];

    /// A short stable name (benches, the CLI's `info`).
    pub fn name(self) -> &'static str {
        match self {
            Q8Kernel::Naive => "naive",
            Q8Kernel::Portable => "portable",
            Q8Kernel::Avx2 => "avx2",
            Q8Kernel::Avx512Vnni => "avx512-vnni",
            Q8Kernel::Amx => "amx-int8",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Q8Kernel::Naive | Q8Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Amx => super::q8_amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Q8Kernel::Avx2 | Q8Kernel::Avx512Vnni | Q8Kernel::Amx => false,
        }
    }

    /// Whether the kernel adds 4 products a lane in one instruction (VNNI,
    /// AMX): fast enough that im2col + int8 GEMM beats f32 Winograd
    /// (`models::quant::Int8Layers::Auto`).
    pub fn has_dot_products(self) -> bool {
        matches!(self, Q8Kernel::Avx512Vnni | Q8Kernel::Amx)
    }
}

/// The fastest int8 kernel this CPU has, detected once.
pub fn best_q8_kernel() -> Q8Kernel {
    static BEST: OnceLock<Q8Kernel> = OnceLock::new();
    *BEST.get_or_init(|| {
        [Q8Kernel::Amx, Q8Kernel::Avx512Vnni, Q8Kernel::Avx2].into_iter().find(|k| k.is_available()).unwrap_or(Q8Kernel::Portable)
    })
}

/// `kp`: the depth rounded up to a whole number of 4-value steps.
pub fn padded_depth(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// A weight matrix quantized per row (see the file header).
#[derive(Clone, Debug, PartialEq)]
pub struct Q8Weights {
    rows: usize,
    cols: usize,
    /// Row stride of `q`: `kp` rounded up to 64.
    lda: usize,
    /// `rows` rounded up to 16, `x lda`, row-major, zero-padded.
    q: Vec<i8>,
    /// `sa[i]`: a row's value per code (0 for an all-zero row).
    scale: Vec<f32>,
    /// `rowsum_a[i] = sum_p qa[i, p]`, for the zero point's correction.
    sums: Vec<i32>,
}

impl Q8Weights {
    /// Quantizes `w` per row: `sa[i] = max_p |w[i, p]| / 63`,
    /// `qa[i, p] = round(w[i, p] / sa[i])` (halves away from zero).
    /// Refuses non-finite weights and depths over `MAX_K`.
    pub fn quantize(w: MatRef<'_>) -> Result<Q8Weights> {
        let (rows, cols) = (w.rows(), w.cols());
        if cols > MAX_K {
            return Err(Error::Unsupported(format!("int8 GEMM: depth {cols} exceeds {MAX_K}")));
        }
        let lda = padded_depth(cols).next_multiple_of(64);
        let mut q = vec![0i8; rows.next_multiple_of(16) * lda];
        let mut scale = vec![0.0f32; rows];
        let mut sums = vec![0i32; rows];
        for i in 0..rows {
            let mut max = 0.0f32;
            for p in 0..cols {
                let v = w.at(i, p);
                if !v.is_finite() {
                    return Err(Error::InvalidArgument(format!("int8 GEMM: weight ({i}, {p}) is {v}")));
                }
                max = max.max(v.abs());
            }
            if max == 0.0 {
                continue;
            }
            let s = max / A_MAX as f32;
            scale[i] = s;
            let row = &mut q[i * lda..i * lda + cols];
            for (p, code) in row.iter_mut().enumerate() {
                *code = (w.at(i, p) / s).round().clamp(-(A_MAX as f32), A_MAX as f32) as i8;
            }
            sums[i] = row.iter().map(|&c| c as i32).sum();
        }
        Ok(Q8Weights { rows, cols, lda, q, scale, sums })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// `sa`, one value per row.
    pub fn scales(&self) -> &[f32] {
        &self.scale
    }
    /// `qa[i, p]`; panics out of range (tests and references).
    pub fn code(&self, i: usize, p: usize) -> i8 {
        assert!(i < self.rows && p < self.cols);
        self.q[i * self.lda + p]
    }
    /// The weight `qa[i, p]` stands for: `sa[i] * qa[i, p]`.
    pub fn value(&self, i: usize, p: usize) -> f32 {
        self.scale[i] * self.code(i, p) as f32
    }
}

/// How one tensor's values map to 8-bit codes: `x ~ scale * (q - zero)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q8Act {
    pub scale: f32,
    pub zero: u8,
}

impl Q8Act {
    /// The map covering `[lo, hi]` (widened to hold 0, so that zero padding
    /// is exact): `scale = (hi - lo) / 255`, `zero = round(-lo / scale)`.
    /// A range of one point maps everything to code `zero` with scale 1.
    pub fn from_range(lo: f32, hi: f32) -> Result<Q8Act> {
        if !lo.is_finite() || !hi.is_finite() || lo > hi {
            return Err(Error::InvalidArgument(format!("int8 activation range [{lo}, {hi}] is not a finite interval")));
        }
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        if hi == lo {
            return Ok(Q8Act { scale: 1.0, zero: 0 });
        }
        let scale = (hi - lo) / B_MAX as f32;
        let zero = (-lo / scale).round().clamp(0.0, B_MAX as f32) as u8;
        Ok(Q8Act { scale, zero })
    }

    /// The code of `x`: `x * (1 / scale) + zero`, clamped to [0, 255] and
    /// rounded half up; NaN maps to 0. (A multiply by the reciprocal and a
    /// truncating cast, so that whole slices vectorise: `quantize_slice`.)
    #[inline]
    pub fn quantize(&self, x: f32) -> u8 {
        code(x, 1.0 / self.scale, self.zero as f32)
    }

    /// `dst[i] = quantize(src[i])`, the same codes, vectorised: at the
    /// widest vectors this CPU has (`gemm::best_kernel`), each element
    /// through the same multiply, add and truncation (never fused), so
    /// every width gives the same codes.
    pub fn quantize_slice(&self, src: &[f32], dst: &mut [u8]) {
        // SAFETY: best_kernel() is one this CPU runs (it is called per row: no check here).
        unsafe { self.codes_with(super::best_kernel(), src, dst) }
    }

    /// `quantize_slice` at the vector width of `kernel` (AVX-512, AVX2, or
    /// the baseline for the others); errors on a kernel this CPU cannot run.
    pub fn quantize_slice_with(&self, kernel: super::Kernel, src: &[f32], dst: &mut [u8]) -> Result<()> {
        super::check_available(kernel)?;
        // SAFETY: just checked.
        unsafe { self.codes_with(kernel, src, dst) };
        Ok(())
    }

    /// # Safety
    /// The CPU runs `kernel`.
    unsafe fn codes_with(&self, kernel: super::Kernel, src: &[f32], dst: &mut [u8]) {
        let (inv, zero) = (1.0 / self.scale, self.zero as f32);
        match kernel {
            // SAFETY: the caller's contract: avx512f.
            #[cfg(target_arch = "x86_64")]
            super::Kernel::Avx512 => unsafe { codes_avx512(src, dst, inv, zero) },
            // SAFETY: the caller's contract: avx2 (and fma).
            #[cfg(target_arch = "x86_64")]
            super::Kernel::Avx2Fma => unsafe { codes_avx2(src, dst, inv, zero) },
            _ => codes(src, dst, inv, zero),
        }
    }

    /// The value code `q` stands for.
    #[inline]
    pub fn dequantize(&self, q: u8) -> f32 {
        self.scale * (q as f32 - self.zero as f32)
    }
}

/// What an int8 layer reads: f32 values, quantized on the way in, or codes
/// already made under the layer's `Q8Act` (by the previous layer's store,
/// `Q8Codes`), which are the same bytes with no pass over f32.
pub trait Q8Source: Copy + Send + Sync + 'static {
    /// `dst[i]` = the code of `src[i]`: `act.quantize_slice`, or a copy of codes.
    fn codes_into(src: &[Self], act: Q8Act, dst: &mut [u8]);
    /// `src` itself where it is codes already.
    fn as_codes(src: &[Self]) -> Option<&[u8]>;
}

impl Q8Source for f32 {
    #[inline]
    fn codes_into(src: &[f32], act: Q8Act, dst: &mut [u8]) {
        act.quantize_slice(src, dst)
    }
    #[inline]
    fn as_codes(_: &[f32]) -> Option<&[u8]> {
        None
    }
}

impl Q8Source for u8 {
    #[inline]
    fn codes_into(src: &[u8], _: Q8Act, dst: &mut [u8]) {
        dst.copy_from_slice(src)
    }
    #[inline]
    fn as_codes(src: &[u8]) -> Option<&[u8]> {
        Some(src)
    }
}

/// One code (see `Q8Act::quantize`): selects rather than `max`/`min` and
/// `round`, which do not vectorise on baseline x86-64.
#[inline(always)]
pub(super) fn code(x: f32, inv: f32, zero: f32) -> u8 {
    let y = x * inv + zero;
    let y = if y > 0.0 { y } else { 0.0 };
    let y = if y < B_MAX as f32 { y } else { B_MAX as f32 };
    // SAFETY: y + 0.5 is in [0.5, 255.5] (NaN went to 0 above), so the
    // truncation fits an i32: one vector conversion, where the saturating
    // `as` casts stay scalar; the same code.
    unsafe { (y + 0.5).to_int_unchecked::<i32>() as u8 }
}

/// `dst[i] = code(src[i])`: the body of every `quantize_slice` entry.
#[inline(always)]
fn codes(src: &[f32], dst: &mut [u8], inv: f32, zero: f32) {
    dst.iter_mut().zip(src).for_each(|(d, &x)| *d = code(x, inv, zero));
}

/// `codes` vectorised with AVX-512 (16 values a step, SSE2's 4: the
/// quantization of int8 HardNet's layer inputs went from 23% of its time to
/// 20%, README "Reduced precision").
///
/// # Safety
/// The CPU has avx512f.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn codes_avx512(src: &[f32], dst: &mut [u8], inv: f32, zero: f32) {
    codes(src, dst, inv, zero)
}

/// `codes` vectorised with AVX2 (8 values a step).
///
/// # Safety
/// The CPU has avx2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn codes_avx2(src: &[f32], dst: &mut [u8], inv: f32, zero: f32) {
    codes(src, dst, inv, zero)
}

/// Bytes `pack_b` fills for a `k x n` B.
pub fn packed_b_len(k: usize, n: usize) -> usize {
    n.div_ceil(PANEL) * padded_depth(k) * PANEL
}

/// Quantizes `b` (`k x n`, any strides) with `act` into the packed layout
/// of the file header; `dst` has `packed_b_len(k, n)` bytes.
pub fn pack_b(b: MatRef<'_>, act: Q8Act, dst: &mut [u8]) -> Result<()> {
    let (k, n) = (b.rows(), b.cols());
    pack_rows(k, n, dst, |p, j0, row| row.iter_mut().enumerate().for_each(|(jj, c)| *c = act.quantize(b.at(p, j0 + jj))))
}

/// One packed-B step from 4 rows of 16 codes: `dst[4j + t] = rows[t][j]`
/// (the quads of the file header's layout).
#[inline]
pub fn interleave_step(dst: &mut [u8; 4 * PANEL], rows: [&[u8; PANEL]; 4]) {
    #[cfg(target_arch = "x86_64")]
    super::q8_x86::interleave_step_sse2(dst, rows);
    #[cfg(not(target_arch = "x86_64"))]
    for (j, q) in dst.chunks_exact_mut(4).enumerate() {
        q.copy_from_slice(&[rows[0][j], rows[1][j], rows[2][j], rows[3][j]]);
    }
}

/// Packs a `k x n` matrix of codes already quantized, `codes[p * ld + j]`.
pub fn pack_b_codes(codes: &[u8], ld: usize, k: usize, n: usize, dst: &mut [u8]) -> Result<()> {
    if k > 0 && n > 0 && (ld < n || (k - 1) * ld + n > codes.len()) {
        return Err(Error::Shape(format!(
            "int8 pack: a {k}x{n} matrix with row stride {ld} does not fit in {} codes",
            codes.len()
        )));
    }
    pack_rows(k, n, dst, |p, j0, row| row.copy_from_slice(&codes[p * ld + j0..p * ld + j0 + row.len()]))
}

/// The packing loop of `pack_b` and `pack_b_codes`: `fill(p, j0, row)`
/// writes the codes of row `p`, columns `j0 .. j0 + row.len()` (at most one
/// panel); each 4-row step is then interleaved column by column, zero past
/// `k` and `n`.
fn pack_rows(k: usize, n: usize, dst: &mut [u8], mut fill: impl FnMut(usize, usize, &mut [u8])) -> Result<()> {
    let need = packed_b_len(k, n);
    if dst.len() != need {
        return Err(Error::Shape(format!("int8 pack: a {k}x{n} B packs into {need} bytes, the buffer has {}", dst.len())));
    }
    let kp = padded_depth(k);
    if kp == 0 {
        return Ok(());
    }
    for (panel, chunk) in dst.chunks_exact_mut(kp * PANEL).enumerate() {
        let j0 = panel * PANEL;
        let w = PANEL.min(n - j0);
        for (s, step) in chunk.chunks_exact_mut(4 * PANEL).enumerate() {
            let mut rows = [[0u8; PANEL]; 4];
            for (t, row) in rows.iter_mut().enumerate() {
                if 4 * s + t < k {
                    fill(4 * s + t, j0, &mut row[..w]);
                }
            }
            interleave_step(step.try_into().expect("64 bytes"), [&rows[0], &rows[1], &rows[2], &rows[3]]);
        }
    }
    Ok(())
}

/// Quantizes and packs a B given as its transpose: `bt` holds `n` rows of
/// `k` values (B^T row-major, e.g. a batch of flattened images, one per
/// column of B), so each 4-value step of a column is 4 consecutive values.
/// `bt` may be codes already (`Q8Source`).
pub fn pack_bt<X: Q8Source>(bt: &[X], k: usize, n: usize, act: Q8Act, dst: &mut [u8]) -> Result<()> {
    let need = packed_b_len(k, n);
    if bt.len() != k * n || dst.len() != need {
        return Err(Error::Shape(format!(
            "int8 pack: a {k}x{n} B^T needs {} values and {need} bytes, got {} and {}",
            k * n,
            bt.len(),
            dst.len()
        )));
    }
    let kp = padded_depth(k);
    // A column's codes, a run at a time at the widest vectors
    // (`quantize_slice`), then each quad to its step (zero past k).
    const RUN: usize = 256;
    let mut q = [0u8; RUN];
    for (j, col) in bt.chunks_exact(k.max(1)).take(n).enumerate() {
        let base = (j / PANEL) * kp * PANEL + 4 * (j % PANEL);
        for (r, vals) in col.chunks(RUN).enumerate() {
            let q = &mut q[..vals.len().next_multiple_of(4)];
            let (codes, pad) = q.split_at_mut(vals.len());
            X::codes_into(vals, act, codes);
            pad.fill(0);
            for (i, quad) in q.chunks_exact(4).enumerate() {
                let at = base + (r * RUN / 4 + i) * 4 * PANEL;
                dst[at..at + 4].copy_from_slice(quad);
            }
        }
    }
    // The last panel's padding columns: 0, as `pack_b` leaves them.
    for j in n..n.next_multiple_of(PANEL) {
        let base = (j / PANEL) * kp * PANEL + 4 * (j % PANEL);
        (0..kp / 4).for_each(|s| dst[base + s * 4 * PANEL..][..4].fill(0));
    }
    Ok(())
}

/// The per-row map from exact sums to outputs (see the file header).
#[derive(Clone, Copy, Debug)]
pub struct Q8Out<'a> {
    /// `scale[i]`: usually `sa[i] * sb` (times a folded per-channel factor).
    pub scale: &'a [f32],
    /// `shift[i]`, 0 when absent.
    pub shift: Option<&'a [f32]>,
    pub relu: bool,
}

impl Q8Out<'_> {
    /// `C[i, j]` from the exact sum: the one formula every kernel stores.
    #[inline]
    fn map(&self, i: usize, corrected: i32) -> f32 {
        let m = RowMap { corr: 0, scale: self.scale[i], shift: self.shift.map_or(0.0, |s| s[i]), relu: self.relu };
        m.value(corrected)
    }
}

/// `C = out(A * B)` with the best kernel for this CPU; `b` packed by `pack_b`
/// for `n` columns with zero point `zero`.
pub fn gemm_q8<'c>(a: &Q8Weights, b: &[u8], n: usize, zero: u8, out: Q8Out<'_>, c: impl Into<Q8Dst<'c>>) -> Result<()> {
    gemm_q8_with(best_q8_kernel(), a, b, n, zero, out, c)
}

/// `gemm_q8` with a named kernel; errors if this CPU cannot run it.
/// `Naive` reads `b` through the packed layout's index map, not its tiles.
pub fn gemm_q8_with<'c>(
    kernel: Q8Kernel,
    a: &Q8Weights,
    b: &[u8],
    n: usize,
    zero: u8,
    out: Q8Out<'_>,
    c: impl Into<Q8Dst<'c>>,
) -> Result<()> {
    let mut c = c.into();
    check_out(a, n, &out, &c)?;
    let need = packed_b_len(a.cols, n);
    if b.len() != need {
        return Err(Error::Shape(format!(
            "int8 GEMM: a {}x{n} B packs into {need} bytes, {} given",
            a.cols,
            b.len()
        )));
    }
    let kp = padded_depth(a.cols);
    let qb = |p: usize, j: usize| b[(j / PANEL) * kp * PANEL + (p / 4) * 4 * PANEL + 4 * (j % PANEL) + p % 4];
    // SAFETY (closure): panel < n.div_ceil(PANEL), so its kp * 16 bytes lie inside `b` (length checked above).
    let panel = |panel: usize| Packed(unsafe { b.as_ptr().add(panel * kp * PANEL) });
    // SAFETY: `panel` gives kp / 4 readable steps of every panel of the n columns.
    unsafe { dispatch(kernel, a, (n, zero), &out, &mut c, qb, panel) }
}

/// B read in place from c4 codes (`ops::im2col_q8`) rather than packed: the
/// columns come in halves of 8 (half `h`: columns `8h .. 8h + 8`) and
/// `qb[p, j]` is byte `halves[j / 8] + steps[p / 4] + 4 * (j % 8) + p % 4` of
/// `codes`. That is the packed layout's step, read where it already lies:
/// at stride 1 the 8 columns' quads of one channel quad at one tap are 32
/// consecutive bytes of an image's c4 codes when the 8 output pixels share
/// a row, so no patch matrix is written.
#[derive(Clone, Copy, Debug)]
pub struct Q8Taps<'a> {
    /// The codes every column is read from.
    pub codes: &'a [u8],
    /// Byte offset of step 0 of each half: `2 * n.div_ceil(16)` of them (whole
    /// panels; a half past `n` needs only an offset inside `codes`).
    pub halves: &'a [u32],
    /// Byte offset of step `s` from step 0: `padded_depth(k) / 4` of them.
    pub steps: &'a [u32],
}

/// `gemm_q8` with B read in place (`Q8Taps`), best kernel for this CPU.
pub fn gemm_q8_taps<'c>(
    a: &Q8Weights,
    b: Q8Taps<'_>,
    n: usize,
    zero: u8,
    out: Q8Out<'_>,
    c: impl Into<Q8Dst<'c>>,
) -> Result<()> {
    gemm_q8_taps_with(best_q8_kernel(), a, b, n, zero, out, c)
}

/// `gemm_q8_taps` with a named kernel; the same sums as `gemm_q8_with` on
/// the packed B of the same columns, so the same bits.
pub fn gemm_q8_taps_with<'c>(
    kernel: Q8Kernel,
    a: &Q8Weights,
    b: Q8Taps<'_>,
    n: usize,
    zero: u8,
    out: Q8Out<'_>,
    c: impl Into<Q8Dst<'c>>,
) -> Result<()> {
    let mut c = c.into();
    check_out(a, n, &out, &c)?;
    let kp = padded_depth(a.cols);
    let reach = |o: &[u32]| o.iter().map(|&v| v as usize).max().unwrap_or(0);
    let (halves, steps) = (2 * n.div_ceil(PANEL), kp / 4);
    if b.halves.len() != halves || b.steps.len() != steps {
        return Err(Error::Shape(format!(
            "int8 GEMM in place: {n} columns and depth {} need {halves} half offsets and {steps} step offsets, {} and {} given",
            a.cols,
            b.halves.len(),
            b.steps.len()
        )));
    }
    if n > 0 && steps > 0 && reach(b.halves) + reach(b.steps) + PANEL * 2 > b.codes.len() {
        return Err(Error::Shape(format!(
            "int8 GEMM in place: offsets reach byte {} of {} codes",
            reach(b.halves) + reach(b.steps) + PANEL * 2,
            b.codes.len()
        )));
    }
    let qb = |p: usize, j: usize| b.codes[b.halves[j / 8] as usize + b.steps[p / 4] as usize + 4 * (j % 8) + p % 4];
    let base = b.codes.as_ptr();
    // SAFETY (closure): `panel < n.div_ceil(16)`, so both halves exist, and every
    // half plus every step offset plus 32 bytes stays inside `codes` (checked above).
    let at = |h: usize| unsafe { base.add(b.halves[h] as usize) };
    let joined = b.halves.chunks_exact(2).all(|h| h[1] == h[0] + 2 * PANEL as u32);
    let offs = b.steps.as_ptr();
    let c = &mut c;
    // SAFETY: every step of every panel is 32 readable bytes per half (see `at`).
    unsafe {
        if joined {
            dispatch(kernel, a, (n, zero), &out, c, qb, |p| InPlace::<true> { lo: at(2 * p), hi: at(2 * p + 1), offs })
        } else {
            dispatch(kernel, a, (n, zero), &out, c, qb, |p| InPlace::<false> { lo: at(2 * p), hi: at(2 * p + 1), offs })
        }
    }
}

/// The rest of both entries once their B is checked: nothing for an empty
/// C; for `Naive`, or no depth (every sum 0), the reference through
/// `qb(p, j)`; otherwise every tile through `kernel`'s tile, B's panels
/// found by `panel`.
///
/// # Safety
/// As `run`: `panel(p)` gives `padded_depth(a.cols) / 4` readable steps for
/// every panel `p < n.div_ceil(16)`.
unsafe fn dispatch<B: Steps>(
    kernel: Q8Kernel,
    a: &Q8Weights,
    (n, zero): (usize, u8),
    out: &Q8Out<'_>,
    c: &mut Q8Dst<'_>,
    qb: impl Fn(usize, usize) -> u8,
    panel: impl Fn(usize) -> B,
) -> Result<()> {
    check_kernel(kernel)?;
    if a.rows == 0 || n == 0 {
        return Ok(());
    }
    match c {
        // SAFETY: the caller's contract.
        Q8Dst::Values(c) => unsafe { dispatch_to(kernel, a, (n, zero), out, &mut ValueSink { c, j0: 0, cols: 0 }, qb, panel) },
        Q8Dst::Codes(c) => match kernel {
            // SAFETY: the caller's contract; the VNNI and AMX kernels' CPU has avx512bw (`is_available`).
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx512Vnni | Q8Kernel::Amx => unsafe {
                dispatch_to(kernel, a, (n, zero), out, &mut CodeSink::<true>::new(c, a.rows), qb, panel)
            },
            // SAFETY: the caller's contract.
            _ => unsafe {
                dispatch_to(kernel, a, (n, zero), out, &mut CodeSink::<false>::new(c, a.rows), qb, panel)
            },
        },
        Q8Dst::Laid(c) => match kernel {
            // SAFETY: as for codes.
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx512Vnni | Q8Kernel::Amx => unsafe {
                dispatch_to(kernel, a, (n, zero), out, &mut LaidSink::<true>::new(c), qb, panel)
            },
            // SAFETY: the caller's contract.
            _ => unsafe {
                dispatch_to(kernel, a, (n, zero), out, &mut LaidSink::<false>::new(c), qb, panel)
            },
        },
    }
    Ok(())
}

/// `dispatch` once C's sink is known.
///
/// # Safety
/// As `dispatch`, and the kernel is available.
unsafe fn dispatch_to<B: Steps, S: Sink>(
    kernel: Q8Kernel,
    a: &Q8Weights,
    (n, zero): (usize, u8),
    out: &Q8Out<'_>,
    c: &mut S,
    qb: impl Fn(usize, usize) -> u8,
    panel: impl Fn(usize) -> B,
) {
    if kernel == Q8Kernel::Naive || a.cols == 0 {
        naive(a, n, zero, out, c, qb);
        return;
    }
    // SAFETY: the caller's contract; the kernel is available (checked by
    // `dispatch`), and with it the features of its `run`.
    unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Amx => run_amx(a, n, zero, out, c, panel),
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx512Vnni => run_avx512(tile_fn(kernel), a, n, zero, out, c, panel),
            _ => run(tile_fn(kernel), a, n, zero, out, c, panel),
        }
    }
}

fn check_kernel(kernel: Q8Kernel) -> Result<()> {
    if kernel.is_available() {
        Ok(())
    } else {
        Err(Error::Unsupported(format!("int8 GEMM kernel '{}' needs CPU features this machine lacks", kernel.name())))
    }
}

/// The tile of `kernel` (not `Naive` or `Amx`, which have none) for steps found by `B`.
fn tile_fn<B: Steps>(kernel: Q8Kernel) -> TileFn<B> {
    match kernel {
        Q8Kernel::Naive | Q8Kernel::Portable => tile_portable::<B>,
        #[cfg(target_arch = "x86_64")]
        Q8Kernel::Avx2 => super::q8_x86::tile_avx2::<B>,
        #[cfg(target_arch = "x86_64")]
        Q8Kernel::Avx512Vnni => super::q8_x86::tile_vnni::<B>,
        Q8Kernel::Amx => unreachable!("AMX has its own run (run_amx)"),
        #[cfg(not(target_arch = "x86_64"))]
        Q8Kernel::Avx2 | Q8Kernel::Avx512Vnni => unreachable!("is_available() is false off x86-64"),
    }
}

/// `run` compiled for AVX-512, so that its store maps a row of 16 sums in
/// one vector of each operation (the baseline build's four SSE vectors
/// a row were 7% of int8 HardNet's time); the same operations, so the same bits.
///
/// # Safety
/// As `run`; the CPU has avx512f and avx512bw.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn run_avx512<B: Steps, S: Sink>(
    tile: TileFn<B>,
    a: &Q8Weights,
    n: usize,
    zero: u8,
    out: &Q8Out<'_>,
    c: &mut S,
    panel: impl Fn(usize) -> B,
) {
    // SAFETY: the caller's contract.
    unsafe { run(tile, a, n, zero, out, c, panel) }
}

/// Every tile of C (8 rows x one 16-column panel) through `tile`, each
/// mapped by `out` as it is stored.
///
/// # Safety
/// `panel(p)` gives `padded_depth(a.cols) / 4` readable steps for every
/// panel `p < n.div_ceil(16)`; the CPU has the tile's features.
#[inline(always)]
unsafe fn run<B: Steps, S: Sink>(
    tile: TileFn<B>,
    a: &Q8Weights,
    n: usize,
    zero: u8,
    out: &Q8Out<'_>,
    c: &mut S,
    panel: impl Fn(usize) -> B,
) {
    let k4 = padded_depth(a.cols) / 4;
    let mut acc = [[0i32; PANEL]; TILE_ROWS];
    let map = row_map(a, zero, out);
    for p in 0..n.div_ceil(PANEL) {
        let (j0, bp) = (p * PANEL, panel(p));
        c.panel(j0, PANEL.min(n - j0));
        for i0 in (0..a.rows).step_by(TILE_ROWS) {
            let rows = TILE_ROWS.min(a.rows - i0);
            // SAFETY: `a.q` holds rows i0 .. i0 + rows of lda >= 4 k4 codes each;
            // the panel's steps and the kernel: the caller's contract.
            unsafe { tile(a.q[i0 * a.lda..].as_ptr(), a.lda, rows, bp, k4, &mut acc) };
            store_rows(c, i0, &acc[..rows], map);
        }
    }
}

/// Row `i`'s map from exact sums to outputs (see the file header).
#[inline(always)]
fn row_map<'a>(a: &'a Q8Weights, zero: u8, out: &'a Q8Out<'_>) -> impl Fn(usize) -> RowMap + Copy + 'a {
    move |i: usize| RowMap {
        corr: zero as i32 * a.sums[i],
        scale: out.scale[i],
        shift: out.shift.map_or(0.0, |s| s[i]),
        relu: out.relu,
    }
}

/// Rows `i0 .. i0 + acc.len()` of one panel's sums into `c`: whole quads
/// of rows (channel quads: `i0` is a multiple of 4), then the rest; all 16
/// lanes mapped (those past the panel's columns are never stored).
#[inline(always)]
fn store_rows<S: Sink>(c: &mut S, i0: usize, acc: &[[i32; PANEL]], map: impl Fn(usize) -> RowMap + Copy) {
    let mut quads = acc.chunks_exact(4);
    for (q, quad) in quads.by_ref().enumerate() {
        c.quad(i0 + 4 * q, quad.try_into().expect("4 rows"), map);
    }
    let r0 = acc.len() - quads.remainder().len();
    for (r, acc_row) in quads.remainder().iter().enumerate() {
        c.row(i0 + r0 + r, acc_row, map(i0 + r0 + r));
    }
}

/// The AMX kernel (`q8_amx`): for each 16-column panel of B and block of
/// 64 rows of A, `C[64, 16] = sum over chunks of A[64, 64 depths] * B[64
/// depths, 16]`, 16 steps of B at a time: read in place where they lie a
/// fixed distance apart (`Steps::stride`), else copied into a 64-byte-stride
/// tile, zero past the depth; then the block's rows through the sink, as
/// `run` stores its tiles.
///
/// # Safety
/// As `run`; `Q8Kernel::Amx.is_available()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn run_amx<B: Steps, S: Sink>(
    a: &Q8Weights,
    n: usize,
    zero: u8,
    out: &Q8Out<'_>,
    c: &mut S,
    panel: impl Fn(usize) -> B,
) {
    use super::q8_amx::{BLOCK_ROWS, Block, CHUNK_STEPS, Chunk, TILE_ROWS as AMX_ROWS, Tiles};
    let k4 = padded_depth(a.cols) / 4;
    let map = row_map(a, zero, out);
    // Two blocks of sums: the store of one block's rows (vector code) runs
    // while the tiles compute the next, where one block at a time left the
    // tile unit idle during each store and the store waiting on the tiles.
    let mut acc = [Block([[0; PANEL]; BLOCK_ROWS]), Block([[0; PANEL]; BLOCK_ROWS])];
    // (panel, first row, rows, which `acc`) of the block stored last, not yet mapped.
    let mut pending: Option<(usize, usize, usize, usize)> = None;
    let mut sink_panel = usize::MAX;
    let mut flush = |c: &mut S, acc: &[Block; 2], (p, i0, rows, which): (usize, usize, usize, usize)| {
        if sink_panel != p {
            c.panel(p * PANEL, PANEL.min(n - p * PANEL));
            sink_panel = p;
        }
        store_rows(c, i0, &acc[which].0[..rows], map);
    };
    // Chunks whose 16 steps lie a fixed distance apart are read in place
    // (the distance, the same in every panel); the others, and a last chunk
    // of fewer steps, are copied into a buffer (0 past the depth). Two
    // buffers, alternated, so that filling one need not wait for the tile
    // load of the other.
    let mut strides = [0u32; MAX_K / 64];
    let chunks = k4.div_ceil(CHUNK_STEPS);
    if n > 0 {
        let bp = panel(0);
        for (ch, st) in strides.iter_mut().enumerate().take(chunks) {
            let s0 = ch * CHUNK_STEPS;
            // SAFETY: s0 + 16 <= k4 where asked.
            let d = if s0 + CHUNK_STEPS <= k4 { unsafe { bp.stride(s0, CHUNK_STEPS) } } else { None };
            *st = d.and_then(|d| u32::try_from(d).ok()).unwrap_or(0);
        }
    }
    let mut bufs = [Chunk([[0; 4 * PANEL]; CHUNK_STEPS]); 2];
    // SAFETY: the caller's contract: AMX is available.
    let tiles = unsafe { Tiles::configure() };
    let mut which = 0;
    for p in 0..n.div_ceil(PANEL) {
        let bp = panel(p);
        for i0 in (0..a.rows).step_by(BLOCK_ROWS) {
            let rows = BLOCK_ROWS.min(a.rows - i0);
            let t = rows.div_ceil(AMX_ROWS);
            tiles.zero(t);
            // A chunk that is copied is copied one chunk ahead of its tile load,
            // so that its stores have drained by then (a tile load waits for them).
            let fill = |buf: &mut Chunk, s0: usize| {
                for (s, step) in buf.0.iter_mut().enumerate() {
                    if s0 + s < k4 {
                        // SAFETY: step s0 + s < k4 of the panel: two readable 32-byte halves.
                        unsafe {
                            std::ptr::copy_nonoverlapping(bp.lo(s0 + s), step.as_mut_ptr(), 32);
                            std::ptr::copy_nonoverlapping(bp.hi(s0 + s), step.as_mut_ptr().add(32), 32);
                        }
                    } else {
                        *step = [0; 4 * PANEL];
                    }
                }
            };
            if chunks > 0 && strides[0] == 0 {
                fill(&mut bufs[0], 0);
            }
            for ch in 0..chunks {
                let s0 = ch * CHUNK_STEPS;
                if ch + 1 < chunks && strides[ch + 1] == 0 {
                    fill(&mut bufs[(ch + 1) % 2], s0 + CHUNK_STEPS);
                }
                let b = if strides[ch] > 0 {
                    // SAFETY: steps s0 .. s0 + 16 < k4 of the panel, each 64 readable bytes.
                    (unsafe { bp.lo(s0) }, strides[ch] as usize)
                } else {
                    (bufs[ch % 2].0.as_ptr().cast(), 4 * PANEL)
                };
                // SAFETY: rows i0 .. i0 + 16 t <= a.rows rounded up to 16 of `a.q`,
                // 64 codes from depth 4 s0 < lda each (lda a multiple of 64); B:
                // 16 rows of 64 readable bytes (the panel's steps, or the buffer).
                unsafe { tiles.dot(t, a.q.as_ptr().add(i0 * a.lda + 4 * s0), a.lda, b) };
            }
            if let Some(block) = pending {
                flush(c, &acc, block);
            }
            tiles.store(t, &mut acc[which]);
            pending = Some((p, i0, rows, which));
            which ^= 1;
        }
    }
    if let Some(block) = pending {
        flush(c, &acc, block);
    }
}

/// Where the 4-depth steps of one B panel lie: step `s` of the panel's 16
/// columns is two runs of 32 bytes, columns 0..8 at `lo(s)` and 8..16 at
/// `hi(s)` (column j's 4 codes at 4 * (j % 8)).
pub(crate) trait Steps: Copy {
    /// Whether `hi(s) == lo(s) + 32` always: one 64-byte run per step.
    const JOINED: bool;
    /// # Safety
    /// `s` is a step of the panel (below its `k4`).
    unsafe fn lo(self, s: usize) -> *const u8;
    /// # Safety
    /// As `lo`.
    unsafe fn hi(self, s: usize) -> *const u8;
    /// The distance between consecutive steps `s0 .. s0 + rows` where each
    /// is one 64-byte run and they lie a fixed positive distance apart in
    /// every panel (one AMX tile read in place, `run_amx`); else `None`.
    ///
    /// # Safety
    /// `s0 + rows` is at most the panel's `k4`.
    unsafe fn stride(self, s0: usize, rows: usize) -> Option<usize>;
}

/// A panel of packed B (`pack_b`): step `s` at byte `64 s`.
#[derive(Clone, Copy)]
pub(crate) struct Packed(*const u8);

impl Steps for Packed {
    const JOINED: bool = true;
    #[inline(always)]
    unsafe fn lo(self, s: usize) -> *const u8 {
        // SAFETY: the caller's step lies inside the panel.
        unsafe { self.0.add(64 * s) }
    }
    #[inline(always)]
    unsafe fn hi(self, s: usize) -> *const u8 {
        // SAFETY: as `lo`.
        unsafe { self.0.add(64 * s + 32) }
    }
    unsafe fn stride(self, _: usize, _: usize) -> Option<usize> {
        Some(4 * PANEL)
    }
}

/// A panel read in place (`Q8Taps`): each half's base plus step `s`'s offset.
#[derive(Clone, Copy)]
pub(crate) struct InPlace<const JOINED: bool> {
    lo: *const u8,
    hi: *const u8,
    offs: *const u32,
}

impl<const J: bool> Steps for InPlace<J> {
    const JOINED: bool = J;
    #[inline(always)]
    unsafe fn lo(self, s: usize) -> *const u8 {
        // SAFETY: `offs` holds the panel's k4 offsets; each lands inside the codes (`gemm_q8_taps_with`).
        unsafe { self.lo.add(*self.offs.add(s) as usize) }
    }
    #[inline(always)]
    unsafe fn hi(self, s: usize) -> *const u8 {
        // SAFETY: as `lo`.
        unsafe { self.hi.add(*self.offs.add(s) as usize) }
    }
    unsafe fn stride(self, s0: usize, rows: usize) -> Option<usize> {
        // SAFETY: the caller's steps are below k4, the length of `offs`.
        let offs = unsafe { std::slice::from_raw_parts(self.offs.add(s0), rows) };
        let d = offs.get(1).map_or(0, |&o| o.wrapping_sub(offs[0]));
        let even = offs.windows(2).all(|w| w[1].checked_sub(w[0]) == Some(d));
        (J && d > 0 && even).then_some(d as usize)
    }
}

/// A tile kernel: `acc[r][j] = sum_p qa[r, p] * qb[p, j]` for `rows <= 8`
/// rows of A from `a` (row stride `lda` codes) and one B panel of `k4`
/// steps found by `b`. Rows of `acc` at or past `rows` are left as they are.
///
/// # Safety
/// `a` points at `rows` rows of `lda >= 4 * k4` readable codes, `b` gives
/// `k4` steps of two readable 32-byte halves, and the CPU has the kernel's features.
pub(crate) type TileFn<B> = unsafe fn(*const i8, usize, usize, B, usize, &mut [[i32; PANEL]; TILE_ROWS]);

/// The portable tile: integer loops the compiler vectorises for its target.
/// Each B step is widened once to 4 depth rows of 16 columns, then
/// every row of A adds its 4 weights times those rows (i16 products are
/// exact: |qa| * qb <= 63 * 255).
unsafe fn tile_portable<B: Steps>(a: *const i8, lda: usize, rows: usize, b: B, k4: usize, acc: &mut [[i32; PANEL]; 8]) {
    // SAFETY: the `TileFn` contract: these rows are readable.
    let a = unsafe { std::slice::from_raw_parts(a, (rows - 1) * lda + 4 * k4) };
    let mut sum = [[0i32; PANEL]; 8];
    for s in 0..k4 {
        // SAFETY: the `TileFn` contract: step s's two halves are readable.
        let halves = unsafe { [std::slice::from_raw_parts(b.lo(s), 32), std::slice::from_raw_parts(b.hi(s), 32)] };
        let mut depth = [[0i16; PANEL]; 4];
        for (j, col) in halves.iter().flat_map(|h| h.chunks_exact(4)).enumerate() {
            for t in 0..4 {
                depth[t][j] = col[t] as i16;
            }
        }
        for (r, sum_row) in sum.iter_mut().enumerate().take(rows) {
            let w = &a[r * lda + 4 * s..r * lda + 4 * s + 4];
            for (t, d) in depth.iter().enumerate() {
                let wt = w[t] as i16;
                for (acc, &x) in sum_row.iter_mut().zip(d) {
                    *acc += (wt * x) as i32;
                }
            }
        }
    }
    acc[..rows].copy_from_slice(&sum[..rows]);
}

/// The reference: every sum in i64 straight from the codes (`qb(p, j)`),
/// then the one output formula; panics if a sum leaves i32 (it cannot within `MAX_K`).
fn naive(a: &Q8Weights, n: usize, zero: u8, out: &Q8Out<'_>, c: &mut impl Sink, qb: impl Fn(usize, usize) -> u8) {
    for i in 0..a.rows {
        for j in 0..n {
            let sum: i64 = (0..a.cols).map(|p| a.code(i, p) as i64 * qb(p, j) as i64).sum();
            let corrected = sum - zero as i64 * a.sums[i] as i64;
            let mut y = [0.0; PANEL];
            y[0] = out.map(i, i32::try_from(corrected).expect("within MAX_K the sums fit in i32"));
            c.panel(j, 1);
            c.put(i, &y);
        }
    }
}
