//! HardNet (Mishchuk et al. 2017), the descriptor, in two variants:
//!
//! ```text
//!              baseline (N-HPatches Keras)        original (kornia)
//! x [N,1,32,32]  raw 0..255                       input_norm (per patch)
//! conv1 3x3 1->32     + bn1 + relu  [N,32,32,32]
//! conv2 3x3 32->32    + bn2 + relu  [N,32,32,32]
//! conv3 3x3/2 32->64  + bn3 + relu  [N,64,16,16]
//! conv4 3x3 64->64    + bn4 + relu  [N,64,16,16]
//! conv5 3x3/2 64->128 + bn5 + relu  [N,128,8,8]
//! conv6 3x3 128->128  + bn6 + relu  [N,128,8,8]
//! dropout 0.3                        [N,128,8,8]
//! conv7 8x8 valid 128->128           [N,128,1,1]  (+ bn7 in the original)
//! flatten                            [N,128]      (+ L2 normalisation in the original)
//! ```
//!
//! Baseline: convolutions with bias and Keras 'same' padding (stride 2 on 32
//! pads (0, 1)), affine BatchNorm with Keras' eps 1e-3 and momentum 0.99
//! (0.01 in PyTorch's convention). Original: no biases, padding 1,
//! non-affine BatchNorm with PyTorch defaults after every convolution.
//!
//! Flatten is an alias: an `N x 128 x 1 x 1` NCHW buffer is the row-major
//! `N x 128` matrix, so the output is conv7's (or bn7's, or the L2 layer's) buffer.

use super::graph::{GraphBuilder, INPUT, Op, TensorId};
use super::{ArchInfo, DESC_LEN};
use crate::error::Result;
use crate::layers::batchnorm::BatchNormConfig;
use crate::layers::conv2d::Conv2dSpec;
use crate::ops::im2col::Padding;

pub(super) const BASELINE: ArchInfo = ArchInfo {
    name: "hardnet-baseline",
    c_name: c"hardnet-baseline",
    model: "hardnet",
    display: "HardNet",
    variant: Some("baseline"),
    denoiser: false,
    bn_eps: "0.001",
    padding: "keras_same",
    input_scaling: "raw_0_255",
};

pub(super) const ORIGINAL: ArchInfo = ArchInfo {
    name: "hardnet-original",
    c_name: c"hardnet-original",
    model: "hardnet",
    display: "HardNet",
    variant: Some("original"),
    denoiser: false,
    bn_eps: "1e-05",
    padding: "symmetric",
    input_scaling: "per_patch_norm",
};

/// `(cout, stride)` of conv1..conv6.
const FEATURE_CONVS: [(usize, usize); 6] = [(32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)];
/// conv7's kernel covers the whole 8x8 map.
const LAST_SIDE: usize = 8;

pub(super) fn describe(b: &mut GraphBuilder, original: bool) -> Result<TensorId> {
    let bn = |c| if original { BatchNormConfig::pytorch(c, false) } else { BatchNormConfig::new(c, 1e-3, 0.01, true) };
    let mut h =
        if original { b.op(Op::InputNorm, &[INPUT], "input_norm", "per-patch standardisation")? } else { INPUT };
    for (i, &(cout, stride)) in FEATURE_CONVS.iter().enumerate() {
        let s = b.shape(h)?;
        let pad = if original { Padding::symmetric(1) } else { Padding::same(s.h, s.w, 3, 3, stride)? };
        let spec = Conv2dSpec { cin: s.c, cout, kh: 3, kw: 3, stride, pad, bias: !original };
        h = b.block(h, i + 1, spec, Some(bn(cout)?), true)?;
    }
    let dropped = b.op(Op::Dropout, &[h], "dropout", "dropout 0.3")?;
    let (k, c) = (LAST_SIDE, DESC_LEN);
    let spec = Conv2dSpec { cin: c, cout: c, kh: k, kw: k, stride: 1, pad: Padding::valid(), bias: !original };
    let bn7 = if original { Some(bn(c)?) } else { None };
    let raw = b.block(dropped, 7, spec, bn7, false)?;
    let flat = b.op(Op::Flatten, &[raw], "flatten", "flatten")?;
    if original { b.op(Op::L2Norm, &[flat], "l2norm", "L2 normalisation") } else { Ok(flat) }
}
