//! DnCNN (Zhang et al. 2017), depth 17, as a residual denoiser:
//!
//! ```text
//! x [N,1,32,32] -> conv1 3x3 1->64 (bias) + relu                 [N,64,32,32]
//!   -> 15 x (conv{i} 3x3 64->64 (no bias) -> bn{i} -> relu)      [N,64,32,32], i = 2..16
//!   -> conv17 3x3 64->1 (no bias)                                [N,1,32,32]  = f(x), the noise
//!   -> out = x - f(x)                                            [N,1,32,32]
//! ```
//!
//! Padding 1 on every side; BatchNorm affine with PyTorch defaults (eps 1e-5,
//! momentum 0.1). 556,096 trainable parameters plus 1,920 running statistics.

use super::ArchInfo;
use super::graph::{GraphBuilder, INPUT, Op, TensorId};
use crate::error::Result;
use crate::layers::batchnorm::BatchNormConfig;
use crate::layers::conv2d::Conv2dSpec;
use crate::ops::im2col::Padding;

pub(super) const INFO: ArchInfo = ArchInfo {
    name: "dncnn",
    c_name: c"dncnn",
    model: "dncnn",
    display: "DnCNN",
    variant: None,
    denoiser: true,
    bn_eps: "1e-05",
    padding: "symmetric",
    input_scaling: "raw_0_255",
};

/// Number of convolutions.
const DEPTH: usize = 17;
/// Feature channels of the hidden layers.
const FEATURES: usize = 64;

pub(super) fn describe(b: &mut GraphBuilder) -> Result<TensorId> {
    let mut h = INPUT;
    for i in 1..=DEPTH {
        let (first, last) = (i == 1, i == DEPTH);
        let cin = if first { 1 } else { FEATURES };
        let cout = if last { 1 } else { FEATURES };
        let spec = Conv2dSpec { cin, cout, kh: 3, kw: 3, stride: 1, pad: Padding::symmetric(1), bias: first };
        let bn = if first || last { None } else { Some(BatchNormConfig::pytorch(FEATURES, true)?) };
        h = b.block(h, i, spec, bn, !last)?;
    }
    b.op(Op::Residual, &[INPUT, h], "residual", "input - conv17")
}
