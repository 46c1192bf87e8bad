//! GEMM, the only place in nhpatch with SIMD intrinsics.
//!
//! Contract: `C[m x n] = alpha * A[m x k] * B[k x n] + beta * C`, every matrix
//! given as a slice plus a row stride and a column stride (in elements), so a
//! transpose is a stride swap (`MatRef::t`). When `beta == 0`, C is never read
//! (it may hold NaN). Matrices are validated when they are built: a view whose
//! largest offset falls outside its slice is refused, so the kernels may use
//! unchecked indexing.
//!
//! Kernels are chosen once at runtime from the CPU's features (`best_kernel`);
//! `gemm_with` runs a named kernel, which is what tests and benches compare.
//! Every kernel is single-threaded: the caller owns the threads (it splits
//! the batch or the rows of C with rayon and calls GEMM inside).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod bf16;
#[cfg(target_arch = "x86_64")]
mod bf16_x86;
mod blis;
mod dot;
mod naive;
mod pack;
pub mod peak;
mod portable;
pub mod q8;
#[cfg(target_arch = "x86_64")]
mod q8_amx;
mod q8_store;
#[cfg(target_arch = "x86_64")]
mod q8_x86;

use crate::error::{Error, Result};
use std::sync::OnceLock;

// gemm_dot_with: for tests and benches (the `internals` feature).
#[allow(unused_imports)]
pub use dot::{gemm_dot, gemm_dot_with};
pub use naive::gemm_naive;
pub(crate) use pack::prefetch_l2;

/// A read-only strided matrix view.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A mutable strided matrix view.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// Smallest slice length that holds every element of a `rows x cols` view.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(rs)?.checked_add((cols - 1).checked_mul(cs)?)?.checked_add(1)
}

fn check_view(what: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Result<()> {
    match span(rows, cols, rs, cs) {
        Some(need) if need <= len => Ok(()),
        _ => Err(Error::Shape(format!(
            "{what}: a {rows}x{cols} view with strides ({rs}, {cs}) needs more than the {len} elements given"
        ))),
    }
}

impl<'a> MatRef<'a> {
    /// A strided view; errors if any element would fall outside `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        check_view("matrix", data.len(), rows, cols, rs, cs)?;
        Ok(MatRef { data, rows, cols, rs, cs })
    }
    /// A dense row-major view (`rs = cols`, `cs = 1`).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }
    /// The transpose: the same elements with rows and columns swapped.
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn row_stride(&self) -> usize {
        self.rs
    }
    pub fn col_stride(&self) -> usize {
        self.cs
    }
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
    /// Element (i, j); panics out of range (tests and references only).
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols);
        self.data[i * self.rs + j * self.cs]
    }
}

impl<'a> MatMut<'a> {
    /// A strided mutable view; errors if any element would fall outside `data`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        check_view("output matrix", data.len(), rows, cols, rs, cs)?;
        Ok(MatMut { data, rows, cols, rs, cs })
    }
    /// A dense row-major view (`rs = cols`, `cs = 1`).
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }
    /// The transpose: writing C^T is writing C with swapped strides.
    pub fn t(self) -> Self {
        MatMut { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    /// A shorter-lived view of the same matrix.
    pub fn rb(&mut self) -> MatMut<'_> {
        MatMut { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn row_stride(&self) -> usize {
        self.rs
    }
    pub fn col_stride(&self) -> usize {
        self.cs
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.data
    }
    /// Element (i, j); panics out of range (tests and references only).
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols);
        self.data[i * self.rs + j * self.cs]
    }
    /// Mutable element (i, j); panics out of range.
    #[inline]
    pub fn at_mut(&mut self, i: usize, j: usize) -> &mut f32 {
        assert!(i < self.rows && j < self.cols);
        &mut self.data[i * self.rs + j * self.cs]
    }
}

/// The GEMM implementations nhpatch can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Triple loop, k innermost, f32 accumulation: the reference every other kernel is tested against.
    Naive,
    /// The `matrixmultiply` crate (BLIS-style, its own runtime dispatch), single-threaded.
    MatrixMultiply,
    /// nhpatch's packed GEMM with a portable `wide::f32x8` 6x16 micro-kernel (any target).
    Portable,
    /// nhpatch's packed GEMM with an AVX2+FMA 6x16 micro-kernel (x86-64 with avx2 and fma).
    Avx2Fma,
    /// nhpatch's packed GEMM with an AVX-512F 8x48 micro-kernel (x86-64 with
    /// avx512f; AVX-512 intrinsics need Rust 1.89, the crate's minimum).
    Avx512,
}

impl Kernel {
    /// Every kernel this build knows, available on this CPU or not.
    pub const ALL: &'static [Kernel] =
        &[Kernel::Naive, Kernel::MatrixMultiply, Kernel::Portable, Kernel::Avx2Fma, Kernel::Avx512];

    /// A short stable name (used by benches and the CLI).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Naive => "naive",
            Kernel::MatrixMultiply => "matrixmultiply",
            Kernel::Portable => "portable",
            Kernel::Avx2Fma => "avx2-fma",
            Kernel::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Naive | Kernel::MatrixMultiply | Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma | Kernel::Avx512 => false,
        }
    }
}

/// Sizes the calling thread's packing buffers for the largest blocks of
/// every kernel, so that no GEMM on this thread allocates afterwards (each
/// buffer is allocated at most once per thread in any case). The pools of
/// `nhpatch::threads::pool` call it on every worker as it starts.
pub fn reserve_thread_buffers() {
    blis::reserve_pack_buffers();
}

/// The kernels this CPU can run, in `Kernel::ALL` order.
pub fn available_kernels() -> Vec<Kernel> {
    Kernel::ALL.iter().copied().filter(|k| k.is_available()).collect()
}

/// The fastest kernel available on this CPU, detected once.
pub fn best_kernel() -> Kernel {
    static BEST: OnceLock<Kernel> = OnceLock::new();
    // Preference order from `cargo bench --bench gemm` on a 2-core Zen 4 EPYC
    // VM (GFLOP/s, single thread, noisy): avx512 beat matrixmultiply on all 15
    // conv shapes of the three models once reruns settled the close ones
    // (e.g. DnCNN conv2-16 74 vs 43, HardNet conv6 94 vs 85, U-Net conv2 77-80
    // vs 66-68, DnCNN conv1 55-57 vs 50-53). avx2-fma comes next: it matches
    // avx512 on HardNet conv5-7 (Zen 4 splits 512-bit FMAs into two 256-bit
    // halves) but trails it by up to 40% on the N = 65536 shapes; it is ahead
    // of matrixmultiply on most shapes but not the K = 9 first layers.
    *BEST.get_or_init(|| {
        [Kernel::Avx512, Kernel::Avx2Fma, Kernel::MatrixMultiply]
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(Kernel::Portable)
    })
}

fn check_dims(a: &MatRef<'_>, b: &MatRef<'_>, c: &MatMut<'_>) -> Result<()> {
    if a.cols != b.rows || a.rows != c.rows || b.cols != c.cols {
        return Err(Error::Shape(format!(
            "gemm: A is {}x{}, B is {}x{}, C is {}x{}",
            a.rows, a.cols, b.rows, b.cols, c.rows, c.cols
        )));
    }
    Ok(())
}

/// `Ok` when this CPU can run `kernel`, else the error every entry point gives.
fn check_available(kernel: Kernel) -> Result<()> {
    if kernel.is_available() {
        return Ok(());
    }
    Err(Error::Unsupported(format!("GEMM kernel '{}' needs CPU features this machine lacks", kernel.name())))
}

/// `C = alpha * A * B + beta * C` with the best kernel for this CPU.
pub fn gemm(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>) -> Result<()> {
    gemm_with(best_kernel(), alpha, a, b, beta, c)
}

/// `C = alpha * A * B + beta * C` with a named kernel; errors if this CPU cannot run it.
pub fn gemm_with(kernel: Kernel, alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>) -> Result<()> {
    check_dims(&a, &b, &c)?;
    check_available(kernel)?;
    let (m, n, k) = (c.rows, c.cols, a.cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        scale_c(beta, c);
        return Ok(());
    }
    match kernel {
        Kernel::Naive => gemm_naive(alpha, a, b, beta, c),
        Kernel::MatrixMultiply => {
            // SAFETY: the views were bounds-checked when built (every offset
            // (i*rs + j*cs) lies inside its slice) and dimensions agree;
            // `c` is an exclusive borrow, so C does not alias A or B.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    alpha,
                    a.data.as_ptr(),
                    a.rs as isize,
                    a.cs as isize,
                    b.data.as_ptr(),
                    b.rs as isize,
                    b.cs as isize,
                    beta,
                    c.data.as_mut_ptr(),
                    c.rs as isize,
                    c.cs as isize,
                );
            }
        }
        Kernel::Portable => blis::gemm_blis::<portable::Portable>(alpha, a, b, beta, c),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => blis::gemm_blis::<avx2::Avx2Fma>(alpha, a, b, beta, c),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => blis::gemm_blis::<avx512::Avx512>(alpha, a, b, beta, c),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Fma | Kernel::Avx512 => unreachable!("is_available() is false off x86-64"),
    }
    Ok(())
}

/// Length of the buffer `pack_a(kernel, ..)` fills for a `rows x cols` A.
///
/// A caller that multiplies by the same A again and again (a layer's
/// weights) packs it once and calls `gemm_packed_a`, instead of `gemm`
/// packing it on every call. Kernels without packing (`Naive`,
/// `MatrixMultiply`) keep A as a row-major copy.
pub fn packed_a_len(kernel: Kernel, rows: usize, cols: usize) -> usize {
    match kernel {
        Kernel::Naive | Kernel::MatrixMultiply => rows * cols,
        Kernel::Portable => blis::packed_a_len::<portable::Portable>(rows, cols),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => blis::packed_a_len::<avx2::Avx2Fma>(rows, cols),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => blis::packed_a_len::<avx512::Avx512>(rows, cols),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Fma | Kernel::Avx512 => rows * cols,
    }
}

/// Packs `a` into `dst` (`packed_a_len(kernel, ..)` values) for `gemm_packed_a(kernel, ..)`.
pub fn pack_a(kernel: Kernel, a: MatRef<'_>, dst: &mut [f32]) -> Result<()> {
    let need = packed_a_len(kernel, a.rows, a.cols);
    if dst.len() != need {
        return Err(Error::Shape(format!(
            "pack_a: a {}x{} A packs into {need} values, the buffer has {}",
            a.rows,
            a.cols,
            dst.len()
        )));
    }
    if a.rows == 0 || a.cols == 0 {
        return Ok(());
    }
    match kernel {
        Kernel::Naive | Kernel::MatrixMultiply => {
            for (i, row) in dst.chunks_exact_mut(a.cols).enumerate() {
                row.iter_mut().enumerate().for_each(|(j, v)| *v = a.at(i, j));
            }
        }
        Kernel::Portable => blis::pack_a::<portable::Portable>(a, dst),
        // Packing with AVX transposes needs the CPU to have them.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => {
            check_available(kernel)?;
            blis::pack_a::<avx2::Avx2Fma>(a, dst)
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            check_available(kernel)?;
            blis::pack_a::<avx512::Avx512>(a, dst)
        }
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Fma | Kernel::Avx512 => check_available(kernel)?,
    }
    Ok(())
}

/// `C = alpha * A * B + beta * C` with A packed by `pack_a(kernel, ..)`
/// (`packed` of a `rows x cols` A): the same bits as `gemm_with(kernel, ..)`
/// on the unpacked A. Errors on a wrong packed length, disagreeing
/// dimensions or a kernel this CPU cannot run.
pub fn gemm_packed_a(
    kernel: Kernel,
    alpha: f32,
    packed: &[f32],
    (rows, cols): (usize, usize),
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
) -> Result<()> {
    let need = packed_a_len(kernel, rows, cols);
    if packed.len() != need {
        return Err(Error::Shape(format!(
            "gemm_packed_a: a {rows}x{cols} A packs into {need} values, {} given",
            packed.len()
        )));
    }
    match kernel {
        Kernel::Naive | Kernel::MatrixMultiply => {
            return gemm_with(kernel, alpha, MatRef::row_major(packed, rows, cols)?, b, beta, c);
        }
        _ => {}
    }
    // The dimension and availability checks of `gemm_with`, on a stand-in A of the same shape.
    let stand_in = MatRef { data: packed, rows, cols, rs: 0, cs: 0 };
    check_dims(&stand_in, &b, &c)?;
    check_available(kernel)?;
    let (m, n, k) = (c.rows, c.cols, cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        scale_c(beta, c);
        return Ok(());
    }
    let a = blis::ASrc::Packed { data: packed, cols };
    match kernel {
        Kernel::Portable => blis::gemm_blis_from::<portable::Portable>(alpha, a, b, beta, c),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => blis::gemm_blis_from::<avx2::Avx2Fma>(alpha, a, b, beta, c),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => blis::gemm_blis_from::<avx512::Avx512>(alpha, a, b, beta, c),
        _ => unreachable!("is_available() is false off x86-64; Naive and MatrixMultiply returned above"),
    }
    Ok(())
}

/// `C = beta * C`, without reading C when `beta == 0`.
fn scale_c(beta: f32, mut c: MatMut<'_>) {
    for i in 0..c.rows {
        for j in 0..c.cols {
            let v = c.at_mut(i, j);
            *v = if beta == 0.0 { 0.0 } else { beta * *v };
        }
    }
}
