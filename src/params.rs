//! Parameter arenas: every parameter of a model lives in one `Vec<f32>`,
//! carved into named slices by a `ParamLayout`. Gradients use a second arena
//! with the same layout, optimizer state sits beside them, so an optimizer is
//! one loop over flat buffers and never sees layers.

use crate::error::{Error, Result};
use std::ops::Range;

/// One named tensor inside an arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// PyTorch-style name, e.g. `conv3.weight` or `bn2.running_mean`.
    pub name: String,
    /// PyTorch layout, e.g. `[out, in, kh, kw]` for a convolution weight.
    pub shape: Vec<usize>,
    /// Offset of the first element in the arena.
    pub offset: usize,
    /// Whether the optimizer updates it (running statistics are not trainable).
    pub trainable: bool,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The table of named slices of one arena, in insertion order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamLayout {
    specs: Vec<ParamSpec>,
    total: usize,
}

impl ParamLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a tensor and returns its range; names must be unique.
    pub fn push(&mut self, name: &str, shape: &[usize], trainable: bool) -> Result<Range<usize>> {
        if self.specs.iter().any(|s| s.name == name) {
            return Err(Error::InvalidArgument(format!("parameter '{name}' declared twice")));
        }
        let spec = ParamSpec { name: name.to_string(), shape: shape.to_vec(), offset: self.total, trainable };
        let range = spec.range();
        self.total += spec.len();
        self.specs.push(spec);
        Ok(range)
    }

    /// Total number of f32 elements in the arena.
    pub fn len(&self) -> usize {
        self.total
    }
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
    /// Number of trainable elements.
    pub fn trainable_len(&self) -> usize {
        self.specs.iter().filter(|s| s.trainable).map(|s| s.len()).sum()
    }
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
    /// The range of a named tensor, or an error naming it.
    pub fn range(&self, name: &str) -> Result<Range<usize>> {
        self.get(name).map(|s| s.range()).ok_or_else(|| Error::InvalidArgument(format!("no parameter named '{name}'")))
    }
    /// Refuses values no usable model holds, naming the tensor: a NaN or an
    /// infinity anywhere, or a negative `*.running_var` (BatchNorm divides by
    /// `sqrt(var + eps)`, so a negative variance is as poisoned as a NaN).
    /// `params` must have the arena's length.
    pub fn check_values(&self, params: &[f32]) -> std::result::Result<(), String> {
        for spec in &self.specs {
            let Some(t) = params.get(spec.range()) else {
                return Err(format!("tensor '{}' lies outside the {} values given", spec.name, params.len()));
            };
            if let Some(i) = t.iter().position(|v| !v.is_finite()) {
                let bad = t.iter().filter(|v| !v.is_finite()).count();
                return Err(format!(
                    "tensor '{}' holds {bad} non-finite value(s) of {} (first: {} at element {i})",
                    spec.name,
                    t.len(),
                    t[i]
                ));
            }
            if spec.name.ends_with("running_var")
                && let Some(i) = t.iter().position(|&v| v < 0.0)
            {
                return Err(format!("tensor '{}' holds a negative variance ({} at element {i})", spec.name, t[i]));
            }
        }
        Ok(())
    }

    /// A mask over the arena: 1 for trainable elements, 0 for running statistics.
    pub fn trainable_ranges(&self) -> Vec<Range<usize>> {
        self.specs.iter().filter(|s| s.trainable).map(|s| s.range()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_carves_contiguous_named_slices() {
        let mut l = ParamLayout::new();
        assert_eq!(l.push("conv1.weight", &[16, 1, 3, 3], true).unwrap(), 0..144);
        assert_eq!(l.push("conv1.bias", &[16], true).unwrap(), 144..160);
        assert_eq!(l.push("bn.running_mean", &[16], false).unwrap(), 160..176);
        assert_eq!(l.len(), 176);
        assert_eq!(l.trainable_len(), 160);
        assert_eq!(l.range("conv1.bias").unwrap(), 144..160);
        assert!(l.range("nope").is_err());
        assert!(l.push("conv1.bias", &[1], true).is_err());
    }

    #[test]
    fn poisoned_values_are_named() {
        let mut l = ParamLayout::new();
        l.push("w", &[3], true).unwrap();
        l.push("bn.running_var", &[2], false).unwrap();
        assert_eq!(l.check_values(&[1.0, -2.0, 0.0, 0.0, 1.0]), Ok(()));
        let e = l.check_values(&[1.0, f32::NAN, f32::INFINITY, 0.0, 1.0]).unwrap_err();
        assert!(e.contains("'w'") && e.contains("2 non-finite") && e.contains("NaN at element 1"), "{e}");
        let e = l.check_values(&[1.0, 2.0, 3.0, 1.0, -0.5]).unwrap_err();
        assert!(e.contains("'bn.running_var'") && e.contains("negative variance (-0.5 at element 1)"), "{e}");
        assert!(l.check_values(&[0.0; 4]).unwrap_err().contains("outside"));
    }
}
