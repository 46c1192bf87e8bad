//! ReLU over a flat buffer of any shape.
//!
//! Shapes: `out`, `x`, `dx`, `dout`, `y` all have the same length.
//! Forward: `y = max(x, 0)`. Backward: `dy/dx = 1` where `x > 0`, else 0
//! (0 at the kink, as PyTorch), so `dx += dout` where `y > 0`; `y` may be the
//! output or the input, they are positive at the same places.

use crate::error::Result;
use crate::ops::elementwise;

/// `out = max(x, 0)`.
pub fn forward(out: &mut [f32], x: &[f32]) -> Result<()> {
    elementwise::relu(out, x)
}

/// `dx += dout` where `y > 0` (`y` the forward output or input).
pub fn backward(dx: &mut [f32], dout: &[f32], y: &[f32]) -> Result<()> {
    elementwise::relu_backward_acc(dx, dout, y)
}
