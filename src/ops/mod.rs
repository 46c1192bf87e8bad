//! The primitive operations behind the layers: the boundary a second
//! backend (CUDA) implements. GEMM lives in `crate::gemm`; this module holds
//! the data movement and the vector math around it.
//!
//! - `im2col` / `col2im`: convolution lowering to GEMM and its adjoint;
//! - `elementwise`: map/zip kernels over flat buffers (ReLU, axpy, scale, ...);
//! - `epilogue`: the per-channel scale, shift and ReLU fused into a convolution's output;
//! - `reduce`: per-channel sums and moments over NCHW tensors.

pub mod elementwise;
pub mod epilogue;
pub mod im2col;
pub mod im2col_q8;
pub mod reduce;
