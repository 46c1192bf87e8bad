//! Mean absolute error (L1), as `torch.nn.L1Loss(reduction="mean")`.
//!
//! Contract: `pred` and `target` have the same length `n > 0` (any shape,
//! flattened); `grad_pred` has length `n` and receives `+=` the gradient.
//!
//! Forward: `L = (1/n) sum_i |pred_i - target_i|`.
//! Gradient: `dL/dpred_i = sign(pred_i - target_i) / n`, with `sign(0) = 0`
//! (PyTorch's subgradient at the kink).

use crate::error::Result;

/// Returns the L1 loss and adds its gradient w.r.t. `pred` into `grad_pred`.
pub fn l1_loss(grad_pred: &mut [f32], pred: &[f32], target: &[f32]) -> Result<f32> {
    super::mean_pointwise("l1", grad_pred, pred, target, |d| {
        // `f32::signum` maps 0 to 1; PyTorch's sign maps it to 0.
        let s = if d > 0.0 {
            1.0
        } else if d < 0.0 {
            -1.0
        } else {
            0.0
        };
        (d.abs() as f64, s)
    })
}
