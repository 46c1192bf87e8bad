//! The shallow U-Net denoiser of the N-HPatches baseline (Keras), 59,777 parameters:
//!
//! ```text
//! x [N,1,32,32] -> conv1 3x3 1->16 + relu   [N,16,32,32] --------------------+ (skip)
//!   -> maxpool 2x2                          [N,16,16,16]                      |
//!   -> conv2 3x3 16->32 + relu              [N,32,16,16]                      |
//!   -> upsample x2                          [N,32,32,32]                      |
//!   -> conv3 2x2 32->64 + relu              [N,64,32,32]                      |
//!   -> concat [conv1 out, conv3 out]        [N,80,32,32] <--------------------+
//!   -> conv4 3x3 80->64 + relu              [N,64,32,32]
//!   -> conv5 3x3 64->1                      [N,1,32,32]
//! ```
//!
//! Every convolution has a bias and Keras 'same' padding (the 2x2 conv3 pads
//! bottom/right only). Backward: the gradient w.r.t. conv1's output sums the
//! concat and max-pool paths (the graph's third gradient slot).

use super::ArchInfo;
use super::graph::{GraphBuilder, INPUT, Op, TensorId};
use crate::error::Result;
use crate::layers::conv2d::Conv2dSpec;
use crate::ops::im2col::Padding;

pub(super) const INFO: ArchInfo = ArchInfo {
    name: "unet",
    c_name: c"unet",
    model: "unet",
    display: "U-Net",
    variant: None,
    denoiser: true,
    bn_eps: "none",
    padding: "keras_same",
    input_scaling: "raw_0_255",
};

/// conv{index}: `k x k`, Keras 'same' padding, bias, optional ReLU.
fn conv(b: &mut GraphBuilder, x: TensorId, index: usize, cout: usize, k: usize, relu: bool) -> Result<TensorId> {
    let s = b.shape(x)?;
    let pad = Padding::same(s.h, s.w, k, k, 1)?;
    let spec = Conv2dSpec { cin: s.c, cout, kh: k, kw: k, stride: 1, pad, bias: true };
    b.block(x, index, spec, None, relu)
}

pub(super) fn describe(b: &mut GraphBuilder) -> Result<TensorId> {
    let c1 = conv(b, INPUT, 1, 16, 3, true)?;
    let pooled = b.op(Op::MaxPool, &[c1], "pool", "maxpool 2x2")?;
    let c2 = conv(b, pooled, 2, 32, 3, true)?;
    let up = b.op(Op::Upsample, &[c2], "up", "upsample x2")?;
    let c3 = conv(b, up, 3, 64, 2, true)?;
    let cat = b.op(Op::Concat, &[c1, c3], "concat", "concat [conv1, conv3]")?;
    let c4 = conv(b, cat, 4, 64, 3, true)?;
    conv(b, c4, 5, 1, 3, false)
}
