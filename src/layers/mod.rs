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
pub(crate) mod conv2d_direct;
pub mod dropout;
pub mod input_norm;
pub mod l2norm;
pub mod maxpool;
pub mod relu;
pub mod reshape;
pub mod residual;
pub mod upsample;
pub mod winograd;
pub mod winograd4;

/// An NCHW tensor shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape4 {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape4 {
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Shape4 { n, c, h, w }
    }
    /// Elements in the whole tensor.
    pub const fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements in one image (C*H*W).
    pub const fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Elements in one channel plane (H*W).
    pub const fn plane(&self) -> usize {
        self.h * self.w
    }
}

impl std::fmt::Display for Shape4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}x{}", self.n, self.c, self.h, self.w)
    }
}
