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
//! bottom/right only). Workspace: one `BlockState` per convolution, the pool
//! output and argmax, the upsampled and concatenated tensors; backward uses
//! two ping-pong gradient buffers of the largest activation (`N x 80 x 32 x 32`)
//! and `d_skip`, the gradient w.r.t. conv1's output, which sums the concat and
//! max-pool paths.

use super::block::{Block, BlockState, Pass, Scratch, zeroed};
use super::{LayerRow, PATCH};
use crate::error::Result;
use crate::layers::conv2d::{Conv2dSpec, ConvPass};
use crate::layers::{concat, maxpool, upsample};
use crate::ops::im2col::Padding;
use crate::params::ParamLayout;
use crate::shape::Shape4;

pub(super) struct Unet {
    /// conv1..conv5.
    blocks: [Block; 5],
}

pub(super) struct UnetWs {
    n: usize,
    st: [BlockState; 5],
    pooled: Vec<f32>,
    argmax: Vec<u32>,
    up: Vec<f32>,
    cat: Vec<f32>,
    g_a: Vec<f32>,
    g_b: Vec<f32>,
    d_skip: Vec<f32>,
    pub(super) scratch: Scratch,
}

fn same_conv(cin: usize, cout: usize, k: usize, side: usize) -> Result<Conv2dSpec> {
    let pad = Padding::same(side, side, k, k, 1)?;
    Ok(Conv2dSpec { cin, cout, kh: k, kw: k, stride: 1, pad, bias: true })
}

impl Unet {
    pub fn new(layout: &mut ParamLayout) -> Result<Self> {
        let (full, half) = ((PATCH, PATCH), (PATCH / 2, PATCH / 2));
        let convs = [(1, 16, 3, full, true), (16, 32, 3, half, true), (32, 64, 2, full, true), (80, 64, 3, full, true)];
        let mut blocks = Vec::with_capacity(5);
        for (i, (cin, cout, k, hw, relu)) in convs.into_iter().chain([(64, 1, 3, full, false)]).enumerate() {
            blocks.push(Block::new(layout, i + 1, same_conv(cin, cout, k, hw.0)?, hw, None, relu)?);
        }
        let blocks = blocks.try_into().map_err(|_| crate::arg_err!("the U-Net has five convolutions"))?;
        Ok(Unet { blocks })
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    fn shapes(&self, n: usize) -> (Shape4, Shape4, Shape4, Shape4) {
        let (s1, s2, s3) = (self.blocks[0].out_shape(n), self.blocks[1].out_shape(n), self.blocks[2].out_shape(n));
        (s1, s2, s3, Shape4::new(n, s1.c + s3.c, s1.h, s1.w))
    }

    pub fn rows(&self) -> Vec<LayerRow> {
        let (s1, s2, _, sc) = self.shapes(1);
        let [b1, b2, b3, b4, b5] = self.blocks.each_ref().map(Block::rows);
        let shape = |s: Shape4| (s.c, s.h, s.w);
        let pooled = maxpool::pool_shape(s1);
        let mut rows = b1;
        rows.push(LayerRow::plain("pool", "maxpool 2x2", shape(pooled)));
        rows.extend(b2);
        rows.push(LayerRow::plain("up", "upsample x2", shape(upsample::upsample_shape(s2))));
        rows.extend(b3);
        rows.push(LayerRow::plain("concat", "concat [conv1, conv3]", shape(sc)));
        rows.extend(b4);
        rows.extend(b5);
        rows
    }

    /// Buffers for `n` patches; an `Infer` workspace has no gradient buffers.
    pub fn workspace(&self, n: usize, pass: ConvPass) -> UnetWs {
        let (s1, s2, _, sc) = self.shapes(n);
        let pooled = maxpool::pool_shape(s1).len();
        let grad = |len: usize| vec![0.0; if pass == ConvPass::Train { len } else { 0 }];
        UnetWs {
            n,
            st: std::array::from_fn(|i| self.blocks[i].state(n, pass)),
            pooled: vec![0.0; pooled],
            argmax: vec![0; pooled],
            up: vec![0.0; upsample::upsample_shape(s2).len()],
            cat: vec![0.0; sc.len()],
            g_a: grad(sc.len()),
            g_b: grad(sc.len()),
            d_skip: grad(s1.len()),
            scratch: Scratch::new(&self.blocks, n, pass),
        }
    }

    pub fn forward<'w>(&self, ws: &'w mut UnetWs, mut pass: Pass, x: &[f32]) -> Result<&'w [f32]> {
        let n = ws.n;
        let (s1, s2, s3, _) = self.shapes(n);
        let b = &self.blocks;
        let [st1, st2, st3, st4, st5] = &mut ws.st;
        b[0].forward(st1, x, &mut pass, n)?;
        maxpool::forward(&mut ws.pooled, &mut ws.argmax, &st1.out, s1)?;
        b[1].forward(st2, &ws.pooled, &mut pass, n)?;
        upsample::forward(&mut ws.up, &st2.out, s2)?;
        b[2].forward(st3, &ws.up, &mut pass, n)?;
        concat::forward(&mut ws.cat, &st1.out, &st3.out, s1, s3)?;
        b[3].forward(st4, &ws.cat, &mut pass, n)?;
        b[4].forward(st5, &st4.out, &mut pass, n)?;
        Ok(&st5.out)
    }

    /// `dx`, when given, accumulates the input gradient.
    pub fn backward(
        &self,
        ws: &mut UnetWs,
        params: &[f32],
        grads: &mut [f32],
        x: &[f32],
        dout: &[f32],
        dx: Option<&mut [f32]>,
    ) -> Result<()> {
        let n = ws.n;
        let (s1, s2, s3, sc) = self.shapes(n);
        let (b, scr) = (&self.blocks, &mut ws.scratch);
        let [st1, st2, st3, st4, st5] = &mut ws.st;
        let d4 = zeroed(&mut ws.g_a, st4.out.len());
        b[4].backward(st5, &st4.out, params, grads, dout, Some(d4), scr, n)?;
        let d_cat = zeroed(&mut ws.g_b, sc.len());
        b[3].backward(st4, &ws.cat, params, grads, &ws.g_a[..st4.out.len()], Some(d_cat), scr, n)?;
        let d_skip = zeroed(&mut ws.d_skip, s1.len());
        let d3 = zeroed(&mut ws.g_a, s3.len());
        concat::backward(d_skip, d3, &ws.g_b[..sc.len()], s1, s3)?;
        let d_up = zeroed(&mut ws.g_b, ws.up.len());
        b[2].backward(st3, &ws.up, params, grads, &ws.g_a[..s3.len()], Some(d_up), scr, n)?;
        let d2 = zeroed(&mut ws.g_a, s2.len());
        upsample::backward(d2, &ws.g_b[..ws.up.len()], s2)?;
        let d_pool = zeroed(&mut ws.g_b, ws.pooled.len());
        b[1].backward(st2, &ws.pooled, params, grads, &ws.g_a[..s2.len()], Some(d_pool), scr, n)?;
        maxpool::backward(&mut ws.d_skip, &ws.g_b[..ws.pooled.len()], &ws.argmax, s1)?;
        b[0].backward(st1, x, params, grads, &ws.d_skip, dx, scr, n)
    }
}
