//! Distillation from a clean-patch teacher: the descriptor of each training
//! patch (denoised) is pulled towards what a teacher network, trained on the
//! clean patches, gives the patch's clean twin. The teacher sees information
//! the denoiser could not recover; the student learns to map what is left of
//! it to the same place.
//!
//! Contract: `d` (student descriptors) and `t` (teacher descriptors, constants)
//! are `[rows, dim]` row-major, row `r` of `t` the target of row `r` of `d`;
//! `grad` has the length of `d` and receives `+=` the weighted gradient.
//!
//! ```text
//! L        = w (1/R) sum_r ||d_r - t_r||^2
//! dL/dd_r += 2 w (d_r - t_r) / R
//! ```
//!
//! With unit-length descriptors (HardNet's L2-normalised output) each term is
//! `2 - 2 cos(d_r, t_r)`, in 0..4.

use super::check_rows;
use crate::error::Result;

/// Configuration of the distillation term.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillLoss {
    /// Weight of the term in the total loss.
    pub weight: f32,
}

impl DistillLoss {
    pub fn new(weight: f32) -> Result<Self> {
        if !weight.is_finite() || weight < 0.0 {
            return Err(crate::arg_err!("distillation weight must be finite and >= 0, got {weight}"));
        }
        Ok(DistillLoss { weight })
    }

    /// The weighted loss over `rows` rows of `dim`; adds its gradient into `grad`.
    pub fn loss(&self, grad: &mut [f32], d: &[f32], t: &[f32], rows: usize, dim: usize) -> Result<f32> {
        check_rows(
            "distillation",
            rows,
            dim,
            &[("descriptors", d.len()), ("targets", t.len()), ("gradient", grad.len())],
        )?;
        let w = self.weight as f64;
        let g = 2.0 * w / rows as f64;
        let mut total = 0.0f64;
        for ((gv, &dv), &tv) in grad.iter_mut().zip(d).zip(t) {
            let e = dv as f64 - tv as f64;
            total += e * e;
            *gv += (g * e) as f32;
        }
        Ok((w * total / rows as f64) as f32)
    }
}
