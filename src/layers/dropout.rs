//! Inverted dropout with rate `p`.
//!
//! Shapes: `out`, `x`, `mask`, `dx`, `dout` all have the same length.
//! Training forward draws one `rng.next_f32()` per element in order and keeps
//! the element when the draw is `>= p` (probability `1 - p`), so the mask is a
//! function of the generator state alone: `mask[i] = 1` kept, `0` dropped, and
//! `out = x * mask / (1 - p)`, which keeps `E[out] = x`. Backward is the same
//! linear map: `dx += dout * mask / (1 - p)`. Eval is the identity, as is
//! training with `p = 0` (every draw keeps, the scale is 1), whose mask
//! [`draw_mask`] fills without drawing, skipping the generator ahead instead.

use crate::arg_err;
use crate::error::{Result, check_len};
use crate::ops::elementwise;
use crate::rng::Rng;

/// Configuration of a dropout layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutConfig {
    /// Probability of dropping an element, in [0, 1).
    pub p: f32,
}

impl DropoutConfig {
    pub fn new(p: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(arg_err!("dropout: rate must lie in [0, 1), got {p}"));
        }
        Ok(DropoutConfig { p })
    }

    /// The factor applied to kept elements, `1 / (1 - p)`.
    pub fn keep_scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }
}

/// One mask draw: whether the next element is kept (`rng.next_f32() >= p`).
/// Every implementation draws its masks through this, in element order.
pub fn keep(rng: &mut Rng, cfg: &DropoutConfig) -> bool {
    rng.next_f32() >= cfg.p
}

/// Draws one mask element per entry of `mask` in order (`kept` or
/// `dropped`), through [`keep`]. At `p = 0` every draw keeps
/// (`next_f32() >= 0`), so it fills `kept` and skips the generator ahead by
/// the draws: the same mask and generator state without drawing.
pub fn draw_mask<T: Copy>(mask: &mut [T], rng: &mut Rng, cfg: &DropoutConfig, kept: T, dropped: T) {
    if cfg.p == 0.0 {
        mask.fill(kept);
        rng.skip(mask.len() as u64);
        return;
    }
    // Sequential on purpose: the draws must come in element order.
    for m in mask.iter_mut() {
        *m = if keep(rng, cfg) { kept } else { dropped };
    }
}

/// Draws `mask` from `rng` and writes `out = x * mask / (1 - p)`.
pub fn forward_train(out: &mut [f32], mask: &mut [u8], x: &[f32], rng: &mut Rng, cfg: &DropoutConfig) -> Result<()> {
    check_len("dropout forward: mask", mask.len(), out.len())?;
    check_len("dropout forward: x", x.len(), out.len())?;
    draw_mask(mask, rng, cfg, 1, 0);
    let scale = cfg.keep_scale();
    for ((o, &m), &x) in out.iter_mut().zip(mask.iter()).zip(x) {
        *o = if m != 0 { x * scale } else { 0.0 };
    }
    Ok(())
}

/// Eval forward: `out = x`.
pub fn forward_eval(out: &mut [f32], x: &[f32]) -> Result<()> {
    elementwise::copy(out, x)
}

/// Training backward: `dx += dout * mask / (1 - p)`.
pub fn backward_train(dx: &mut [f32], dout: &[f32], mask: &[u8], cfg: &DropoutConfig) -> Result<()> {
    check_len("dropout backward: dout", dout.len(), dx.len())?;
    check_len("dropout backward: mask", mask.len(), dx.len())?;
    let scale = cfg.keep_scale();
    for ((d, &g), &m) in dx.iter_mut().zip(dout).zip(mask) {
        if m != 0 {
            *d += g * scale;
        }
    }
    Ok(())
}

/// Eval backward: `dx += dout`.
pub fn backward_eval(dx: &mut [f32], dout: &[f32]) -> Result<()> {
    elementwise::add_assign(dx, dout)
}
