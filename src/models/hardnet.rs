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
//! Workspace: one `BlockState` per convolution, the normalised input and its
//! per-patch statistics (original), the dropout output and mask, the L2 output
//! and norms (original), and two ping-pong gradient buffers of `N x 32 x 32 x 32`.

use super::block::{Block, BlockState, Pass, Scratch, chain_backward, chain_forward, zeroed};
use super::{DESC_LEN, LayerRow, PATCH};
use crate::error::Result;
use crate::layers::batchnorm::BatchNormConfig;
use crate::layers::conv2d::{Conv2dSpec, ConvPass};
use crate::layers::dropout::{self, DropoutConfig};
use crate::layers::{input_norm, l2norm};
use crate::ops::im2col::Padding;
use crate::params::ParamLayout;
use crate::rng::Rng;
use crate::shape::Shape4;

/// `(cin, cout, stride, input side)` of conv1..conv6.
const FEATURE_CONVS: [(usize, usize, usize, usize); 6] =
    [(1, 32, 1, 32), (32, 32, 1, 32), (32, 64, 2, 32), (64, 64, 1, 16), (64, 128, 2, 16), (128, 128, 1, 8)];
/// conv7's kernel covers the whole 8x8 map.
const LAST_SIDE: usize = 8;

pub(super) struct HardNet {
    original: bool,
    /// conv1..conv7 (with bn1..bn6 or bn1..bn7).
    blocks: [Block; 7],
}

pub(super) struct HardNetWs {
    n: usize,
    st: [BlockState; 7],
    /// Normalised input and its per-patch mean and `std + 1e-7` (original only; empty otherwise).
    normed: Vec<f32>,
    in_mean: Vec<f32>,
    in_std: Vec<f32>,
    /// Gradient of the normalised input, sized on the first backward that asks for the input gradient.
    d_normed: Vec<f32>,
    dropped: Vec<f32>,
    mask: Vec<u8>,
    /// L2-normalised descriptors and the norms (original only).
    out: Vec<f32>,
    norms: Vec<f32>,
    g_a: Vec<f32>,
    g_b: Vec<f32>,
    pub(super) scratch: Scratch,
}

impl HardNet {
    pub fn new(layout: &mut ParamLayout, original: bool) -> Result<Self> {
        let bn = |c| {
            if original { BatchNormConfig::pytorch(c, false) } else { BatchNormConfig::new(c, 1e-3, 0.01, true) }
        };
        let mut blocks = Vec::with_capacity(7);
        for (i, &(cin, cout, stride, side)) in FEATURE_CONVS.iter().enumerate() {
            let pad = if original { Padding::symmetric(1) } else { Padding::same(side, side, 3, 3, stride)? };
            let spec = Conv2dSpec { cin, cout, kh: 3, kw: 3, stride, pad, bias: !original };
            blocks.push(Block::new(layout, i + 1, spec, (side, side), Some(bn(cout)?), true)?);
        }
        let (k, c) = (LAST_SIDE, DESC_LEN);
        let spec = Conv2dSpec { cin: c, cout: c, kh: k, kw: k, stride: 1, pad: Padding::valid(), bias: !original };
        let bn7 = if original { Some(bn(c)?) } else { None };
        blocks.push(Block::new(layout, 7, spec, (k, k), bn7, false)?);
        let blocks = blocks.try_into().map_err(|_| crate::arg_err!("HardNet has seven convolutions"))?;
        Ok(HardNet { original, blocks })
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    fn in_shape(n: usize) -> Shape4 {
        Shape4::new(n, 1, PATCH, PATCH)
    }

    fn desc_shape(n: usize) -> Shape4 {
        Shape4::new(n, DESC_LEN, 1, 1)
    }

    pub fn rows(&self) -> Vec<LayerRow> {
        let mut rows = Vec::new();
        if self.original {
            rows.push(LayerRow::plain("input_norm", "per-patch standardisation", (1, PATCH, PATCH)));
        }
        let [features @ .., last] = &self.blocks;
        rows.extend(features.iter().flat_map(Block::rows));
        let s6 = features[5].out_shape(1);
        rows.push(LayerRow::plain("dropout", "dropout 0.3", (s6.c, s6.h, s6.w)));
        rows.extend(last.rows());
        rows.push(LayerRow::plain("flatten", "flatten", (DESC_LEN, 1, 1)));
        if self.original {
            rows.push(LayerRow::plain("l2norm", "L2 normalisation", (DESC_LEN, 1, 1)));
        }
        rows
    }

    /// Buffers for `n` patches; an `Infer` workspace has no dropout or gradient buffers.
    pub fn workspace(&self, n: usize, pass: ConvPass) -> HardNetWs {
        let extra = |len: usize| vec![0.0; if self.original { len } else { 0 }];
        let train = pass == ConvPass::Train;
        let hidden = if train { self.blocks[5].out_shape(n).len() } else { 0 };
        let largest = if train { self.blocks[0].out_shape(n).len() } else { 0 };
        HardNetWs {
            n,
            st: std::array::from_fn(|i| self.blocks[i].state(n, pass)),
            normed: extra(Self::in_shape(n).len()),
            in_mean: extra(n),
            in_std: extra(n),
            d_normed: Vec::new(),
            dropped: vec![0.0; hidden],
            mask: vec![0; hidden],
            out: extra(Self::desc_shape(n).len()),
            norms: extra(n),
            g_a: vec![0.0; largest],
            g_b: vec![0.0; largest],
            scratch: Scratch::new(&self.blocks, n, pass),
        }
    }

    /// `train` carries the dropout generator and rate; `None` is the eval pass.
    pub fn forward<'w>(
        &self,
        ws: &'w mut HardNetWs,
        mut pass: Pass,
        x: &[f32],
        train: Option<(&mut Rng, &DropoutConfig)>,
    ) -> Result<&'w [f32]> {
        let n = ws.n;
        let input = if self.original {
            input_norm::forward(&mut ws.normed, &mut ws.in_mean, &mut ws.in_std, x, Self::in_shape(n))?;
            &ws.normed[..]
        } else {
            x
        };
        let [features @ .., last] = &self.blocks;
        let [st_features @ .., st_last] = &mut ws.st;
        let h = chain_forward(features, st_features, input, &mut pass, n)?;
        // A shard of a global batch draws the whole batch's mask stream and keeps
        // its rows: in each group, skip the items before and after its share.
        let shard = match &pass {
            Pass::Train(_, Some(s)) => Some((s.offset, s.total, s.groups)),
            _ => None,
        };
        let conv7_in = match train {
            Some((rng, cfg)) => {
                let per_patch = h.len() / n.max(1);
                let (offset, total, groups) = shard.unwrap_or((0, n, 1));
                let len = n / groups;
                let group = len * per_patch;
                let (dropped, mask) = (&mut ws.dropped, &mut ws.mask);
                for g in 0..groups {
                    let r = g * group..(g + 1) * group;
                    rng.skip((offset * per_patch) as u64);
                    dropout::forward_train(&mut dropped[r.clone()], &mut mask[r.clone()], &h[r], rng, cfg)?;
                    rng.skip(((total - offset - len) * per_patch) as u64);
                }
                &ws.dropped[..]
            }
            None => h,
        };
        last.forward(st_last, conv7_in, &mut pass, n)?;
        if self.original {
            l2norm::forward(&mut ws.out, &mut ws.norms, &st_last.out, Self::desc_shape(n))?;
            Ok(&ws.out)
        } else {
            Ok(&st_last.out)
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        ws: &mut HardNetWs,
        params: &[f32],
        grads: &mut [f32],
        x: &[f32],
        dout: &[f32],
        drop: &DropoutConfig,
        dx: Option<&mut [f32]>,
    ) -> Result<()> {
        let n = ws.n;
        let [features @ .., last] = &self.blocks;
        let [st_features @ .., st_last] = &mut ws.st;
        let d_desc = if self.original {
            let d = zeroed(&mut ws.g_b, dout.len());
            l2norm::backward(d, dout, &st_last.out, &ws.norms, Self::desc_shape(n))?;
            &ws.g_b[..dout.len()]
        } else {
            dout
        };
        let d_dropped = zeroed(&mut ws.g_a, ws.dropped.len());
        last.backward(st_last, &ws.dropped, params, grads, d_desc, Some(d_dropped), &mut ws.scratch, n)?;
        let d_h = zeroed(&mut ws.g_b, ws.dropped.len());
        dropout::backward_train(d_h, &ws.g_a[..ws.dropped.len()], &ws.mask, drop)?;
        std::mem::swap(&mut ws.g_a, &mut ws.g_b);
        let (g_a, g_b) = (&mut ws.g_a, &mut ws.g_b);
        if !self.original {
            return chain_backward(features, st_features, x, params, grads, g_a, g_b, &mut ws.scratch, n, dx);
        }
        // d normed first (sized on the first call that wants it), then through the per-patch standardisation.
        let shape = Self::in_shape(n);
        let mut d_normed = std::mem::take(&mut ws.d_normed);
        if dx.is_some() {
            d_normed.clear();
            d_normed.resize(shape.len(), 0.0);
        }
        let d_in = dx.is_some().then_some(&mut d_normed[..]);
        let r = chain_backward(features, st_features, &ws.normed, params, grads, g_a, g_b, &mut ws.scratch, n, d_in)
            .and_then(|()| match dx {
                Some(dx) => input_norm::backward(dx, &d_normed, x, &ws.in_mean, &ws.in_std, shape),
                None => Ok(()),
            });
        ws.d_normed = d_normed;
        r
    }
}
