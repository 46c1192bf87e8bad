//! The DnCNN residual: the network predicts the noise `f(input)` and the
//! layer returns the clean estimate `out = input - f(input)`.
//!
//! Shapes: `out`, `input`, `f_out` and their gradients all have the same length.
//! Backward: `d_input += dout` (the direct path; the path through `f` arrives
//! separately through `d_f`), `d_f += -dout`.

use crate::error::{Result, check_len};
use crate::ops::elementwise;

/// `out = input - f_out`.
pub fn forward(out: &mut [f32], input: &[f32], f_out: &[f32]) -> Result<()> {
    elementwise::sub(out, input, f_out)
}

/// `d_input += dout`, `d_f += -dout`.
pub fn backward(d_input: &mut [f32], d_f: &mut [f32], dout: &[f32]) -> Result<()> {
    backward_parts(Some(d_input), Some(d_f), dout)
}

/// As [`backward`], for the sides that want a gradient (`None` skips one).
pub fn backward_parts(d_input: Option<&mut [f32]>, d_f: Option<&mut [f32]>, dout: &[f32]) -> Result<()> {
    if let Some(d) = &d_input {
        check_len("residual backward: d_input", d.len(), dout.len())?;
    }
    if let Some(d) = &d_f {
        check_len("residual backward: d_f", d.len(), dout.len())?;
    }
    if let Some(d) = d_input {
        elementwise::add_assign(d, dout)?;
    }
    match d_f {
        Some(d) => elementwise::axpy(d, -1.0, dout),
        None => Ok(()),
    }
}
