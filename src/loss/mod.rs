//! Losses: each returns the scalar loss and accumulates (`+=`) its gradient
//! with respect to the predictions into a caller-owned buffer.
//!
//! Every loss is a plain function (or a method of a small config struct) over
//! caller-owned buffers, outputs first. Sums are accumulated in f64 and the
//! loss is returned as f32. Gradients are added, never assigned, so a training
//! step zeroes its gradient arena once and several losses may share it.

pub mod hardnet;
pub mod l1;
pub mod mse;
pub mod triplet;

use crate::error::{Result, check_len_of};

/// Shared body of the elementwise regression losses: checks the three
/// lengths, then `loss = (1/n) sum_i f(d_i)` with `d_i = pred_i - target_i`
/// and `grad_i += f'(d_i) / n`, where `term(d)` returns `(f(d), f'(d))`.
pub(crate) fn mean_pointwise(
    what: &str,
    grad: &mut [f32],
    pred: &[f32],
    target: &[f32],
    term: impl Fn(f32) -> (f64, f64),
) -> Result<f32> {
    let n = pred.len();
    if n == 0 {
        return Err(crate::arg_err!("{what}: the mean over an empty prediction is undefined"));
    }
    check_len_of(what, "target", target.len(), n)?;
    check_len_of(what, "gradient", grad.len(), n)?;
    let inv_n = 1.0 / n as f64;
    let mut sum = 0.0f64;
    for ((g, &p), &t) in grad.iter_mut().zip(pred).zip(target) {
        // The difference is taken in f32, as the f32 forward of PyTorch does.
        let (f, df) = term(p - t);
        sum += f;
        *g += (df * inv_n) as f32;
    }
    Ok((sum * inv_n) as f32)
}

/// Checks that `margin` is finite and non-negative.
pub(crate) fn check_margin(what: &str, margin: f32) -> Result<()> {
    if !margin.is_finite() || margin < 0.0 {
        return Err(crate::arg_err!("{what} margin must be finite and >= 0, got {margin}"));
    }
    Ok(())
}

/// Checks `batch, dim > 0` and that every named `[batch, dim]` row-major
/// buffer, given by its length, holds `batch * dim` elements.
pub(crate) fn check_rows(what: &str, batch: usize, dim: usize, buffers: &[(&str, usize)]) -> Result<()> {
    if batch == 0 || dim == 0 {
        return Err(crate::arg_err!("{what} loss needs batch and dim > 0, got {batch} x {dim}"));
    }
    let want = batch.checked_mul(dim).ok_or_else(|| crate::shape_err!("{what}: {batch} x {dim} overflows"))?;
    for &(name, len) in buffers {
        check_len_of(what, name, len, want)?;
    }
    Ok(())
}
