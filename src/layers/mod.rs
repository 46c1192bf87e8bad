//! Layers: one file each, forward and backward as plain functions over
//! explicit buffers (NCHW, f32, row-major).
//!
//! Conventions shared by every layer:
//! - arguments go outputs first, then inputs, weights, saved state, geometry;
//! - forward saves exactly what backward needs in named buffers owned by the caller;
//! - backward *accumulates* (`+=`) into every gradient buffer; the training step
//!   zeroes the gradient arena once;
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

/// The NCHW shape every layer takes (its home is `crate::shape`).
pub use crate::shape::Shape4;
