//! The device boundary: buffers, kernel launches and GEMM, on a CUDA GPU or
//! on the host emulator.
//!
//! - Buffers are arrays of 4-byte words (`f32`, or `i32` for max-pool argmax)
//!   owned by the `Backend` and freed with it; a `Buf` is their address and
//!   length. Workspaces are allocated once per batch shape, so a training step
//!   allocates nothing.
//! - Kernels (`kernels.cu`) take one `KArgs`; `launch(kernel, n, args)` runs
//!   the body for `idx` in `0..n`.
//! - `gemm` is row-major, `C[m x n] = alpha op(A) op(B) + beta C` with
//!   row-major leading dimensions, mapped onto column-major cuBLAS as
//!   `C^T = op(B)^T op(A)^T`: `sgemm(opB, opA, n, m, k, B, A, C)`.
//!
//! CUDA: the driver API, cuBLAS and NVRTC through cudarc, loaded at run time;
//! the kernels compile with NVRTC when the backend starts. Everything runs on
//! one stream in issue order, so no event tracking is needed; downloads
//! synchronise.
//!
//! Emulator: the same kernel source compiled for the host (`host.cc`), each
//! kernel a sequential loop, and column-major SGEMM (matrixmultiply, with
//! strides for the transposes) behind cuBLAS's argument checks. Allocations carry guard words on both sides, which
//! `check_guards` verifies: a kernel writing out of bounds fails the tests.

use crate::error::{Error, Result};
use std::cell::RefCell;

/// The single argument of every kernel (layout shared with `kernels.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KArgs {
    pub p: [u64; 8],
    pub i: [i64; 12],
    pub f: [f32; 8],
    pub n: i64,
}

// SAFETY: plain old data with the C layout the kernels declare.
unsafe impl cudarc::driver::DeviceRepr for KArgs {}

macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        /// Every kernel of `kernels.cu`.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Kernel { $($name),* }

        impl Kernel {
            pub const ALL: &'static [Kernel] = &[$(Kernel::$name),*];
            pub fn name(self) -> &'static str {
                match self { $(Kernel::$name => stringify!($name)),* }
            }
        }

        mod host {
            unsafe extern "C" { $(pub fn $name(a: *const super::KArgs);)* }
        }

        fn host_kernel(k: Kernel) -> unsafe extern "C" fn(*const KArgs) {
            match k { $(Kernel::$name => host::$name),* }
        }
    };
}

kernels!(
    nh_fill,
    nh_sub,
    nh_axpy,
    nh_relu_bwd,
    nh_im2col,
    nh_col2im,
    nh_cn_to_nc,
    nh_nc_to_cn,
    nh_sq_dev,
    nh_bn_stats,
    nh_bn_norm,
    nh_bn_fold,
    nh_bn_dy_xhat,
    nh_bn_bwd,
    nh_maxpool,
    nh_maxpool_bwd,
    nh_upsample,
    nh_upsample_bwd,
    nh_concat,
    nh_concat_bwd,
    nh_dropout,
    nh_dropout_bwd,
    nh_input_norm,
    nh_input_norm_bwd,
    nh_centered_mul,
    nh_mul,
    nh_l2norm,
    nh_l2norm_bwd,
    nh_point_loss,
    nh_triplet,
    nh_hn_dist,
    nh_hn_select,
    nh_hn_grad,
    nh_sgd,
    nh_adam,
);

/// Defines `KArgs` and `NH_KERNEL` for NVRTC ahead of `kernels.cu`.
const DEVICE_PRELUDE: &str = r#"
struct KArgs { unsigned long long p[8]; long long i[12]; float f[8]; long long n; };
#define NH_KERNEL(name) \
  __device__ static inline void name##_body(const KArgs& a, long long idx); \
  extern "C" __global__ void name(KArgs a) { \
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < a.n; \
         idx += (long long)blockDim.x * gridDim.x) \
      name##_body(a, idx); \
  } \
  __device__ static inline void name##_body(const KArgs& a, long long idx)
"#;

/// The complete CUDA source NVRTC compiles.
pub fn cuda_source() -> String {
    format!("{DEVICE_PRELUDE}\n{}", include_str!("kernels.cu"))
}

/// Compiles the kernels to PTX with NVRTC (needs libnvrtc, not a GPU).
pub fn compile_ptx() -> Result<String> {
    // SAFETY: only probes whether the library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Unsupported(
            "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit or the nvidia-cuda-nvrtc-cu12 \
             wheel and put its library folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let ptx = cudarc::nvrtc::compile_ptx(cuda_source())
        .map_err(|e| Error::InvalidArgument(format!("compiling the CUDA kernels with NVRTC failed: {e}")))?;
    Ok(ptx.to_src())
}

/// A device buffer of 4-byte words: its address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    ptr: u64,
    len: usize,
}

impl Buf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The address of word `off` (`off <= len`), as kernels and GEMM take it.
    pub fn at(&self, off: usize) -> u64 {
        assert!(off <= self.len, "offset {off} outside a buffer of {} words", self.len);
        self.ptr + 4 * off as u64
    }
    pub fn addr(&self) -> u64 {
        self.ptr
    }
    /// Words `off .. off + len` as a buffer of their own.
    pub fn slice(&self, off: usize, len: usize) -> Buf {
        assert!(off + len <= self.len, "slice {off}+{len} outside a buffer of {} words", self.len);
        Buf { ptr: self.at(off), len }
    }
    /// The first `len` words.
    pub fn prefix(&self, len: usize) -> Buf {
        self.slice(0, len)
    }
}

/// The address of an optional buffer: 0 ("absent") for `None`.
pub fn opt(b: Option<Buf>) -> u64 {
    b.map_or(0, |b| b.ptr)
}

/// Guard words on each side of an emulator allocation.
const GUARD: usize = 16;
const GUARD_BITS: u32 = 0x7fc0_dead;

struct Cuda {
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    blas: cudarc::cublas::CudaBlas,
    funcs: Vec<cudarc::driver::CudaFunction>,
    /// Device allocations, freed on drop.
    allocs: RefCell<Vec<u64>>,
}

impl Drop for Cuda {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
        for &p in self.allocs.borrow().iter() {
            // SAFETY: allocated by malloc_sync below and freed once, after the stream drained.
            unsafe {
                let _ = cudarc::driver::result::free_sync(p);
            }
        }
    }
}

enum Engine {
    Cuda(Box<Cuda>),
    /// Host allocations (with guards), kept until the backend drops.
    Emu(RefCell<Vec<Vec<u32>>>),
}

/// A device: CUDA GPU or host emulator.
pub struct Backend {
    engine: Engine,
    name: String,
    ones: RefCell<Option<Buf>>,
}

fn cuda_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("CUDA: {what}: {e}"))
}

/// The GPUs the driver reports (0 without a driver).
pub fn device_count() -> usize {
    // SAFETY: only probes whether the library can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    cudarc::driver::CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// Whether the driver is present and reports GPU `ordinal` (the error says which is missing).
pub fn check_ordinal(ordinal: usize) -> Result<()> {
    // SAFETY: only probes whether the library can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Unsupported(format!(
            "--device cuda:{ordinal}: no CUDA driver found (libcuda.so): this machine has no NVIDIA GPU or driver"
        )));
    }
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| cuda_err("counting GPUs", e))?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::Unsupported(format!(
            "--device cuda:{ordinal}: the driver reports {count} GPU(s){}",
            if count > 0 { format!(" (valid: cuda:0 .. cuda:{})", count - 1) } else { String::new() }
        )));
    }
    Ok(())
}

impl Backend {
    /// The GPU `ordinal`: context, stream, cuBLAS handle and the kernels compiled with NVRTC.
    pub fn cuda(ordinal: usize) -> Result<Backend> {
        check_ordinal(ordinal)?;
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Unsupported(
                "--device cuda: cuBLAS (libcublas.so) was not found: install the CUDA toolkit or the \
                 nvidia-cublas-cu12 wheel and put its library folder on LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(|e| cuda_err("creating the context", e))?;
        let name = ctx.name().map_err(|e| cuda_err("reading the device name", e))?;
        let stream = ctx.default_stream();
        let blas = cudarc::cublas::CudaBlas::new(stream.clone()).map_err(|e| cuda_err("creating cuBLAS", e))?;
        // NVRTC runs once per process; later devices (a network put on the GPU each epoch) reuse its PTX.
        static PTX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let ptx = match PTX.get() {
            Some(p) => p.clone(),
            None => {
                let p = compile_ptx()?;
                PTX.get_or_init(|| p).clone()
            }
        };
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| cuda_err("loading the compiled kernels", e))?;
        let funcs = Kernel::ALL
            .iter()
            .map(|k| module.load_function(k.name()).map_err(|e| cuda_err(&format!("kernel {}", k.name()), e)))
            .collect::<Result<Vec<_>>>()?;
        let cuda = Cuda { ctx, stream, blas, funcs, allocs: RefCell::new(Vec::new()) };
        Ok(Backend {
            engine: Engine::Cuda(Box::new(cuda)),
            name: format!("cuda:{ordinal} ({name})"),
            ones: None.into(),
        })
    }

    /// The host emulator: the kernels' host build and a column-major SGEMM.
    pub fn emulator() -> Backend {
        Backend { engine: Engine::Emu(RefCell::new(Vec::new())), name: "emulator (host)".into(), ones: None.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_emulator(&self) -> bool {
        matches!(self.engine, Engine::Emu(_))
    }

    fn cuda_ctx(&self) -> Result<Option<&Cuda>> {
        match &self.engine {
            Engine::Cuda(c) => {
                // Calls may come from any thread (rayon pools): make the context current here.
                c.ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
                Ok(Some(c))
            }
            Engine::Emu(_) => Ok(None),
        }
    }

    /// A zeroed buffer of `len` words.
    pub fn alloc(&self, len: usize) -> Result<Buf> {
        match self.cuda_ctx()? {
            Some(c) => {
                let bytes = 4 * len.max(1);
                // SAFETY: a fresh allocation, zeroed before use, freed on drop.
                let ptr = unsafe {
                    let p = cudarc::driver::result::malloc_sync(bytes)
                        .map_err(|e| cuda_err(&format!("allocating {bytes} bytes"), e))?;
                    cudarc::driver::result::memset_d8_sync(p, 0, bytes).map_err(|e| cuda_err("zeroing", e))?;
                    p
                };
                c.allocs.borrow_mut().push(ptr);
                Ok(Buf { ptr, len })
            }
            None => {
                let Engine::Emu(allocs) = &self.engine else { unreachable!() };
                let mut v = vec![GUARD_BITS; len + 2 * GUARD];
                v[GUARD..GUARD + len].fill(0);
                let ptr = v[GUARD..].as_mut_ptr() as u64;
                allocs.borrow_mut().push(v);
                Ok(Buf { ptr, len })
            }
        }
    }

    /// Emulator only: whether every allocation's guard words are intact.
    pub fn check_guards(&self) -> Result<()> {
        if let Engine::Emu(allocs) = &self.engine {
            for (i, v) in allocs.borrow().iter().enumerate() {
                let len = v.len() - 2 * GUARD;
                let bad = v[..GUARD].iter().chain(&v[GUARD + len..]).any(|&w| w != GUARD_BITS);
                if bad {
                    return Err(Error::Shape(format!("emulator: a kernel wrote outside allocation {i} ({len} words)")));
                }
            }
        }
        Ok(())
    }

    /// `dst[..src.len()] = src`.
    pub fn upload(&self, dst: Buf, src: &[f32]) -> Result<()> {
        assert!(src.len() <= dst.len, "upload of {} words into a buffer of {}", src.len(), dst.len);
        match self.cuda_ctx()? {
            Some(c) => {
                // SAFETY: `dst` holds at least `src.len()` words; the copy completes before return.
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(dst.ptr, src, c.stream.cu_stream())
                        .map_err(|e| cuda_err("copying to the device", e))?;
                }
                c.stream.synchronize().map_err(|e| cuda_err("synchronising", e))
            }
            None => {
                // SAFETY: an emulator buffer of at least `src.len()` words that nothing else borrows now.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.ptr as *mut f32, src.len()) };
                Ok(())
            }
        }
    }

    /// `dst = src[..dst.len()]`, after all work issued so far.
    pub fn download(&self, src: Buf, dst: &mut [f32]) -> Result<()> {
        assert!(dst.len() <= src.len, "download of {} words from a buffer of {}", dst.len(), src.len);
        match self.cuda_ctx()? {
            Some(c) => {
                // SAFETY: `src` holds at least `dst.len()` words; synchronised before `dst` is read.
                unsafe {
                    cudarc::driver::result::memcpy_dtoh_async(dst, src.ptr, c.stream.cu_stream())
                        .map_err(|e| cuda_err("copying from the device", e))?;
                }
                c.stream.synchronize().map_err(|e| cuda_err("synchronising", e))
            }
            None => {
                // SAFETY: as in `upload`.
                unsafe { std::ptr::copy_nonoverlapping(src.ptr as *const f32, dst.as_mut_ptr(), dst.len()) };
                Ok(())
            }
        }
    }

    /// Waits for all work issued so far (timings).
    pub fn sync(&self) -> Result<()> {
        match self.cuda_ctx()? {
            Some(c) => c.stream.synchronize().map_err(|e| cuda_err("synchronising", e)),
            None => Ok(()),
        }
    }

    /// Runs `kernel` for `idx` in `0..n`.
    pub fn launch(&self, kernel: Kernel, n: usize, mut args: KArgs) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        args.n = n as i64;
        match self.cuda_ctx()? {
            Some(c) => {
                const BLOCK: usize = 256;
                // A grid-stride loop covers any n; more blocks than this only queue.
                let grid = n.div_ceil(BLOCK).min(1 << 20) as u32;
                let mut params = [&mut args as *mut KArgs as *mut std::ffi::c_void];
                // SAFETY: the kernel takes exactly one `KArgs` by value; its pointers
                // are live device buffers of this backend, sized by the caller.
                unsafe {
                    cudarc::driver::result::launch_kernel(
                        c.funcs[kernel as usize].cu_function(),
                        (grid, 1, 1),
                        (BLOCK as u32, 1, 1),
                        0,
                        c.stream.cu_stream(),
                        &mut params,
                    )
                }
                .map_err(|e| cuda_err(&format!("launching {}", kernel.name()), e))
            }
            None => {
                // SAFETY: the host build of the same kernel, over emulator buffers.
                unsafe { host_kernel(kernel)(&args) };
                Ok(())
            }
        }
    }

    /// Row-major `C[m x n] = alpha op(A) op(B) + beta C` (leading dimensions row-major).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        beta: f32,
        (c, ldc): (u64, usize),
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        // C^T = op(B)^T op(A)^T: from here on, cuBLAS's column-major SGEMM contract.
        let (ta, tb, m, n, (a, lda), (b, ldb)) = (tb, ta, n, m, (b, ldb), (a, lda));
        let rows_a = if ta { k } else { m };
        let rows_b = if tb { n } else { k };
        if lda < rows_a.max(1) || ldb < rows_b.max(1) || ldc < m.max(1) {
            return Err(Error::Shape(format!(
                "sgemm: leading dimensions ({lda}, {ldb}, {ldc}) too small for m {m} n {n} k {k} (ta {ta}, tb {tb})"
            )));
        }
        let int = |v: usize| i32::try_from(v).map_err(|_| Error::Shape(format!("sgemm: dimension {v} exceeds i32")));
        match self.cuda_ctx()? {
            Some(cu) => {
                use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
                let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
                // SAFETY: the pointers are live device buffers whose extents the caller sized for these dimensions.
                unsafe {
                    cudarc::cublas::result::sgemm(
                        *cu.blas.handle(),
                        op(ta),
                        op(tb),
                        int(m)?,
                        int(n)?,
                        int(k)?,
                        &alpha,
                        a as *const f32,
                        int(lda)?,
                        b as *const f32,
                        int(ldb)?,
                        &beta,
                        c as *mut f32,
                        int(ldc)?,
                    )
                }
                .map_err(|e| cuda_err("cublasSgemm", e))
            }
            None => {
                // Column-major op(A)(i, l) is a[i + l*lda], or a[l + i*lda] transposed: as strides.
                let (rsa, csa) = if ta { (lda, 1) } else { (1, lda) };
                let (rsb, csb) = if tb { (ldb, 1) } else { (1, ldb) };
                let s = |v: usize| v as isize;
                // SAFETY: emulator buffers sized by the caller for these dimensions; with beta 0,
                // C is written without being read, as in cuBLAS.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        alpha,
                        a as *const f32,
                        s(rsa),
                        s(csa),
                        b as *const f32,
                        s(rsb),
                        s(csb),
                        beta,
                        c as *mut f32,
                        1,
                        s(ldc),
                    );
                }
                Ok(())
            }
        }
    }

    /// A buffer of at least `len` ones (grown once, when a longer one is first asked for).
    pub fn ones(&self, len: usize) -> Result<Buf> {
        if let Some(b) = *self.ones.borrow()
            && b.len >= len
        {
            return Ok(b);
        }
        let b = self.alloc(len.max(4096))?;
        self.launch(
            Kernel::nh_fill,
            b.len,
            KArgs { p: [b.ptr, 0, 0, 0, 0, 0, 0, 0], f: [1.0; 8], ..KArgs::default() },
        )?;
        *self.ones.borrow_mut() = Some(b);
        Ok(b)
    }

    /// `out[r] = alpha * sum_c x[r][c] + beta * out[r]` over an `rows x cols` row-major `x`.
    pub fn sum_rows(&self, out: Buf, x: Buf, rows: usize, cols: usize, alpha: f32, beta: f32) -> Result<()> {
        let ones = self.ones(cols)?;
        self.gemm((false, false), (rows, 1, cols), alpha, (x.ptr, cols), (ones.ptr, 1), beta, (out.ptr, 1))
    }

    /// `out[c] = alpha * sum_r x[r][c] + beta * out[c]` over an `rows x cols` row-major `x`.
    pub fn sum_cols(&self, out: Buf, x: Buf, rows: usize, cols: usize, alpha: f32, beta: f32) -> Result<()> {
        let ones = self.ones(rows)?;
        self.gemm((false, false), (1, cols, rows), alpha, (ones.ptr, rows), (x.ptr, cols), beta, (out.ptr, cols))
    }
}

/// Kernel arguments from pointer, integer and float lists (the rest zero).
pub fn ka(p: &[u64], i: &[i64], f: &[f32]) -> KArgs {
    let mut a = KArgs::default();
    a.p[..p.len()].copy_from_slice(p);
    a.i[..i.len()].copy_from_slice(i);
    a.f[..f.len()].copy_from_slice(f);
    a
}
