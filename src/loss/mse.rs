//! Mean squared error, as `torch.nn.MSELoss(reduction="mean")`.
//!
//! Contract: `pred` and `target` have the same length `n > 0` (any shape,
//! flattened); `grad_pred` has length `n` and receives `+=` the gradient.
//!
//! Forward: `L = (1/n) sum_i (pred_i - target_i)^2`.
//! Gradient: `dL/dpred_i = 2 (pred_i - target_i) / n`.

use crate::error::Result;

/// Returns the MSE loss and adds its gradient w.r.t. `pred` into `grad_pred`.
pub fn mse_loss(grad_pred: &mut [f32], pred: &[f32], target: &[f32]) -> Result<f32> {
    super::mean_pointwise("mse", grad_pred, pred, target, |d| {
        let d = d as f64;
        (d * d, 2.0 * d)
    })
}
