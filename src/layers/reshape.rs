//! Reshape / Flatten: the same contiguous row-major elements under another
//! shape, e.g. NCHW `N x C x H x W` -> `(N, C*H*W)`, written `N x (C*H*W) x 1 x 1`.
//!
//! Forward copies (`out = x`), backward accumulates (`dx += dout`): the
//! Jacobian is the identity. A caller that aliases the buffer instead can skip
//! both; they exist so a reshape is a graph node like any other. `from` and
//! `to` must have the same batch size and element count.

use crate::error::{Result, check_len};
use crate::ops::elementwise;
use crate::shape::Shape4;
use crate::shape_err;

/// The flat shape of `s`: `N x (C*H*W) x 1 x 1`.
pub fn flatten_shape(s: Shape4) -> Shape4 {
    Shape4::new(s.n, s.image_len(), 1, 1)
}

/// The NCHW shape `N x c x h x w` of a flat `N x D x 1 x 1` tensor; needs `D == c*h*w`.
pub fn unflatten_shape(flat: Shape4, c: usize, h: usize, w: usize) -> Result<Shape4> {
    let to = Shape4::new(flat.n, c, h, w);
    check_reshape(flat, to)?;
    Ok(to)
}

/// `Ok` when `from` can be viewed as `to`: same batch size, same elements per image.
pub fn check_reshape(from: Shape4, to: Shape4) -> Result<()> {
    if from.n != to.n || from.image_len() != to.image_len() {
        return Err(shape_err!("reshape: cannot view a {from} tensor as {to}"));
    }
    Ok(())
}

/// Checks the `to`-shaped and `from`-shaped buffers of one call.
fn check_bufs(to_buf: (&str, usize), from_buf: (&str, usize), from: Shape4, to: Shape4) -> Result<()> {
    check_reshape(from, to)?;
    check_len(to_buf.0, to_buf.1, to.len())?;
    check_len(from_buf.0, from_buf.1, from.len())
}

/// `out` (shape `to`) = `x` (shape `from`).
pub fn forward(out: &mut [f32], x: &[f32], from: Shape4, to: Shape4) -> Result<()> {
    check_bufs(("reshape forward: out", out.len()), ("reshape forward: x", x.len()), from, to)?;
    elementwise::copy(out, x)
}

/// `dx` (shape `from`) += `dout` (shape `to`).
pub fn backward(dx: &mut [f32], dout: &[f32], from: Shape4, to: Shape4) -> Result<()> {
    check_bufs(("reshape backward: dout", dout.len()), ("reshape backward: dx", dx.len()), from, to)?;
    elementwise::add_assign(dx, dout)
}
