//! `Epilogue`: the per-output-channel scale, shift and ReLU a convolution
//! applies to its output in the same pass (bias, folded eval-mode BatchNorm).
//! Its home is below the layers so that every convolution path (im2col,
//! direct, both Winograd tilings, the device) shares one definition.

use crate::error::{Result, check_len};

/// A per-output-channel map applied to a convolution's output in the same
/// pass: `out[c] = act(scale[c] * conv[c] + shift[c])`, `scale` 1 and `shift`
/// 0 when absent, `act` ReLU or identity. A bias is `shift`; an eval-mode
/// BatchNorm folds into `scale` and `shift`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub scale: Option<&'a [f32]>,
    pub shift: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    pub(crate) fn check(&self, cout: usize) -> Result<()> {
        if let Some(s) = self.scale {
            check_len("conv2d epilogue scale", s.len(), cout)?;
        }
        if let Some(s) = self.shift {
            check_len("conv2d epilogue shift", s.len(), cout)?;
        }
        Ok(())
    }

    /// Maps one value per channel: `row[c]` belongs to output channel `c`
    /// (the dense layer's `[n, cout]` output).
    pub(crate) fn apply_across(&self, row: &mut [f32]) {
        for (c, v) in row.iter_mut().enumerate() {
            let y = *v * self.scale.map_or(1.0, |s| s[c]) + self.shift.map_or(0.0, |s| s[c]);
            *v = if !self.relu || y > 0.0 { y } else { 0.0 };
        }
    }

    /// Maps the values `v` of output channel `c`.
    #[inline]
    pub(crate) fn apply(&self, c: usize, v: &mut [f32]) {
        let a = self.scale.map_or(1.0, |s| s[c]);
        let b = self.shift.map_or(0.0, |s| s[c]);
        // `if y > 0 { y } else { 0 }` rather than `f32::max`: a plain select
        // vectorises, max's NaN rule does not (and both give 0 for NaN).
        let relu = |y: f32| if y > 0.0 { y } else { 0.0 };
        match (self.scale.is_some(), self.relu) {
            (false, false) if b == 0.0 => {}
            (false, false) => v.iter_mut().for_each(|v| *v += b),
            (false, true) => v.iter_mut().for_each(|v| *v = relu(*v + b)),
            (true, false) => v.iter_mut().for_each(|v| *v = *v * a + b),
            (true, true) => v.iter_mut().for_each(|v| *v = relu(*v * a + b)),
        }
    }
}
