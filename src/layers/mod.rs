//! Layers: one file each, forward and backward as plain functions over
//! explicit buffers (NCHW, f32, row-major).
//!
//! Conventions shared by every layer:
//! - arguments go outputs first, then inputs, weights, saved state, geometry;
//! - forward saves exactly what backward needs in named buffers owned by the caller;
//! - backward *accumulates* (`+=`) into every gradient buffer; the training step
//!   zeroes the gradient arena once. The one exception is opt-in: a caller
//!   whose input-gradient buffer is fresh asks for it to be written
//!   ([`DxMode::Write`]) instead of zeroing it first;
//! - shape problems return `Error::Shape`, never panic;
//! - outer loops split with rayon (the caller's pool), with partitions that
//!   depend on sizes only, so results do not depend on the thread count.

pub mod batchnorm;
pub mod concat;
pub mod conv2d;
pub mod conv2d_bf16;
pub(crate) mod conv2d_direct;
pub mod conv2d_q8;
pub mod dropout;
pub mod input_norm;
pub mod l2norm;
pub mod maxpool;
pub(crate) mod prepared;
pub mod relu;
pub mod reshape;
pub mod residual;
pub mod upconv;
pub mod upsample;
pub mod winograd;

/// How a backward delivers the gradient of its input.
///
/// Why: the rule is to add (`Add`), so gradients from several consumers
/// sum; a caller whose buffer is fresh (a block's, read only by the layer
/// before it) would zero it first, a write of the whole activation plus a
/// read in the pass that adds. `Write` stores the gradient instead: the
/// values of adding into zeros, up to the sign of a zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DxMode {
    Add,
    Write,
}

/// The NCHW shape every layer takes (its home is `crate::shape`).
pub use crate::shape::Shape4;
