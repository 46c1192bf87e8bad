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
//! Workspace: one `BlockState` per convolution, the output, and two ping-pong
//! gradient buffers of `N x 64 x 32 x 32`.

use super::block::{Block, BlockState, Pass, Scratch, chain_backward, chain_forward, zeroed};
use super::{LayerRow, PATCH};
use crate::error::Result;
use crate::layers::batchnorm::BatchNormConfig;
use crate::layers::conv2d::{Conv2dSpec, ConvPass};
use crate::layers::residual;
use crate::ops::im2col::Padding;
use crate::params::ParamLayout;

/// Number of convolutions.
pub(super) const DEPTH: usize = 17;
/// Feature channels of the hidden layers.
const FEATURES: usize = 64;

pub(super) struct Dncnn {
    /// conv1..conv17.
    blocks: Vec<Block>,
}

pub(super) struct DncnnWs {
    n: usize,
    st: Vec<BlockState>,
    out: Vec<f32>,
    g_a: Vec<f32>,
    g_b: Vec<f32>,
    pub(super) scratch: Scratch,
}

impl Dncnn {
    pub fn new(layout: &mut ParamLayout) -> Result<Self> {
        let mut blocks = Vec::with_capacity(DEPTH);
        for i in 1..=DEPTH {
            let (first, last) = (i == 1, i == DEPTH);
            let cin = if first { 1 } else { FEATURES };
            let cout = if last { 1 } else { FEATURES };
            let pad = Padding::symmetric(1);
            let spec = Conv2dSpec { cin, cout, kh: 3, kw: 3, stride: 1, pad, bias: first };
            let bn = if first || last { None } else { Some(BatchNormConfig::pytorch(FEATURES, true)?) };
            blocks.push(Block::new(layout, i, spec, (PATCH, PATCH), bn, !last)?);
        }
        Ok(Dncnn { blocks })
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn rows(&self) -> Vec<LayerRow> {
        let mut rows: Vec<LayerRow> = self.blocks.iter().flat_map(Block::rows).collect();
        rows.push(LayerRow::plain("residual", "input - conv17", (1, PATCH, PATCH)));
        rows
    }

    /// Buffers for `n` patches; an `Infer` workspace has no gradient buffers.
    pub fn workspace(&self, n: usize, pass: ConvPass) -> DncnnWs {
        let hidden = if pass == ConvPass::Train { self.blocks[0].out_shape(n).len() } else { 0 };
        DncnnWs {
            n,
            st: self.blocks.iter().map(|b| b.state(n, pass)).collect(),
            out: vec![0.0; self.blocks[DEPTH - 1].out_shape(n).len()],
            g_a: vec![0.0; hidden],
            g_b: vec![0.0; hidden],
            scratch: Scratch::new(&self.blocks, n, pass),
        }
    }

    pub fn forward<'w>(&self, ws: &'w mut DncnnWs, mut pass: Pass, x: &[f32]) -> Result<&'w [f32]> {
        let noise = chain_forward(&self.blocks, &mut ws.st, x, &mut pass, ws.n)?;
        residual::forward(&mut ws.out, x, noise)?;
        Ok(&ws.out)
    }

    /// `dx`, when given, accumulates the input gradient: the residual's direct path plus the path through the body.
    pub fn backward(
        &self,
        ws: &mut DncnnWs,
        params: &[f32],
        grads: &mut [f32],
        x: &[f32],
        dout: &[f32],
        mut dx: Option<&mut [f32]>,
    ) -> Result<()> {
        let len = dout.len();
        let (d_direct, d_noise) = (zeroed(&mut ws.g_b, len), zeroed(&mut ws.g_a, len));
        residual::backward(d_direct, d_noise, dout)?;
        if let Some(dx) = dx.as_deref_mut() {
            crate::error::check_len("DnCNN input gradient", dx.len(), len)?;
            crate::ops::elementwise::add_assign(dx, &ws.g_b[..len])?;
        }
        let (g_a, g_b) = (&mut ws.g_a, &mut ws.g_b);
        chain_backward(&self.blocks, &mut ws.st, x, params, grads, g_a, g_b, &mut ws.scratch, ws.n, dx)
    }
}
