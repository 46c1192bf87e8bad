//! The three networks on a device: the CPU `Model`'s blocks (same parameter
//! layout, same geometry) run with the passes of `ops`, wired as the CPU
//! U-Net, DnCNN and HardNet wire them. Parameters and gradients are device
//! arenas in the CPU layout; a `GpuWs` holds every buffer one batch size
//! needs, allocated once.
//!
//! Train forward keeps what backward needs (BatchNorm input, mean and
//! inverse std, max-pool argmax, dropout mask); backward accumulates into the
//! gradient arena. The input gradient of the whole model is not computed.
//! Dropout masks are drawn on the host from the caller's `Rng`, in the CPU
//! order, and uploaded: the same generator state gives the same masks on
//! both devices.

use super::backend::{Backend, Buf, Kernel, ka};
use super::ops::{self, BnState, Scratch};
use crate::error::{Error, Result};
use crate::layers::dropout::{self, DropoutConfig};
use crate::models::block::Block;
use crate::models::{Arch, DESC_LEN, Model, PATCH_LEN};
use crate::rng::Rng;

/// Per-block device buffers (see `models::block`).
struct BlockBufs {
    /// Convolution output, kept for BatchNorm backward (BN blocks only).
    pre: Option<Buf>,
    out: Buf,
    bn: Option<BnState>,
    /// Eval BatchNorm folded with the bias.
    fold: Option<(Buf, Buf)>,
}

/// A network's structure, ready to run on a device.
pub struct GpuModel {
    arch: Arch,
    blocks: Vec<Block>,
    dropout: DropoutConfig,
    params: usize,
}

/// Buffers for batches of exactly `n` patches.
pub struct GpuWs {
    n: usize,
    /// The input batch, `N x 1 x 32 x 32`, uploaded by the caller.
    pub input: Buf,
    st: Vec<BlockBufs>,
    s: Scratch,
    g_a: Buf,
    g_b: Buf,
    g_relu: Buf,
    g_bn: Buf,
    /// The gradient w.r.t. the normalised input (HardNet original, input gradient only).
    g_in: Buf,
    /// U-Net: pooled, argmax, upsampled, concatenated, skip gradient.
    unet: Option<[Buf; 5]>,
    /// DnCNN: the residual output.
    residual: Option<Buf>,
    /// HardNet: normalised input, row m2, row mean, row std, dropped, mask,
    /// row sums of squares, norms, descriptors.
    hardnet: Option<[Buf; 9]>,
    mask_host: Vec<f32>,
    trained: bool,
}

impl GpuWs {
    pub fn batch(&self) -> usize {
        self.n
    }
}

fn param(params: Buf, r: &std::ops::Range<usize>) -> Buf {
    params.slice(r.start, r.len())
}

impl GpuModel {
    pub fn new(model: &Model) -> GpuModel {
        GpuModel {
            arch: model.arch(),
            blocks: model.blocks().to_vec(),
            // The model's rate, already validated.
            dropout: DropoutConfig { p: model.dropout() },
            params: model.param_count(),
        }
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn out_len(&self) -> usize {
        if self.arch.is_denoiser() { PATCH_LEN } else { DESC_LEN }
    }

    pub fn workspace(&self, be: &Backend, n: usize) -> Result<GpuWs> {
        if n == 0 {
            return Err(Error::Shape("a device workspace needs a batch of at least one patch".into()));
        }
        let (mut col, mut cn, mut act, mut nc, mut c) = (0, 0, n * PATCH_LEN, n, 1);
        let mut st = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let out = b.out_shape(n);
            col = col.max(b.conv.win.k() * n * b.conv.win.p());
            cn = cn.max(out.len());
            act = act.max(out.len()).max(b.conv.in_shape(n).len());
            nc = nc.max(n * out.c);
            c = c.max(out.c);
            let bn = b.bn.is_some();
            st.push(BlockBufs {
                pre: if bn { Some(be.alloc(out.len())?) } else { None },
                out: be.alloc(out.len())?,
                bn: if bn { Some(BnState { mean: be.alloc(out.c)?, inv_std: be.alloc(out.c)? }) } else { None },
                fold: if bn { Some((be.alloc(out.c)?, be.alloc(out.c)?)) } else { None },
            });
        }
        let unet = match self.arch {
            Arch::Unet => {
                let s1 = self.blocks[0].out_shape(n);
                let pooled = s1.len() / 4;
                let up = self.blocks[2].conv.in_shape(n).len();
                let cat = self.blocks[3].conv.in_shape(n).len();
                act = act.max(cat);
                Some([be.alloc(pooled)?, be.alloc(pooled)?, be.alloc(up)?, be.alloc(cat)?, be.alloc(s1.len())?])
            }
            _ => None,
        };
        let residual = if self.arch == Arch::Dncnn { Some(be.alloc(n * PATCH_LEN)?) } else { None };
        let hidden = if self.arch.is_denoiser() { 0 } else { self.blocks[5].out_shape(n).len() };
        let hardnet = if self.arch.is_denoiser() {
            None
        } else {
            let d = n * DESC_LEN;
            Some([
                be.alloc(n * PATCH_LEN)?,
                be.alloc(n)?,
                be.alloc(n)?,
                be.alloc(n)?,
                be.alloc(hidden)?,
                be.alloc(hidden)?,
                be.alloc(n)?,
                be.alloc(n)?,
                be.alloc(d)?,
            ])
        };
        Ok(GpuWs {
            n,
            input: be.alloc(n * PATCH_LEN)?,
            s: Scratch::new(be, col, cn, act, nc, c)?,
            g_a: be.alloc(act)?,
            g_b: be.alloc(act)?,
            g_relu: be.alloc(act)?,
            g_bn: be.alloc(act)?,
            g_in: be.alloc(n * PATCH_LEN)?,
            st,
            unet,
            residual,
            hardnet,
            mask_host: vec![0.0; hidden],
            trained: false,
        })
    }

    fn check(&self, ws: &GpuWs, params: Buf) -> Result<()> {
        if ws.st.len() != self.blocks.len() || ws.unet.is_some() != (self.arch == Arch::Unet) {
            return Err(Error::Shape(format!("a device workspace of another architecture used with {}", self.arch)));
        }
        crate::error::check_len("device parameters", params.len(), self.params)
    }

    fn block_forward(&self, be: &Backend, i: usize, ws: &GpuWs, x: Buf, params: Buf, train: bool) -> Result<()> {
        let (b, st, n) = (&self.blocks[i], &ws.st[i], ws.n);
        let w = param(params, &b.weight);
        let bias = b.bias.as_ref().map(|r| param(params, r));
        let Some((cfg, r)) = &b.bn else {
            return ops::conv_forward(be, &b.conv, n, x, w, st.out, (None, bias, b.relu), &ws.s);
        };
        let [g, bt, m, v] = Block::bn_ranges(cfg, r);
        let aff = |r: std::ops::Range<usize>| if cfg.affine { Some(param(params, &r)) } else { None };
        let stats = (aff(g), aff(bt), param(params, &m), param(params, &v));
        if train {
            let (pre, bn) = (st.pre.expect("BN block keeps its input"), st.bn.expect("BN block state"));
            ops::conv_forward(be, &b.conv, n, x, w, pre, (None, bias, false), &ws.s)?;
            ops::bn_forward_train(be, cfg, (n, b.conv.win.p()), pre, st.out, bn, stats, b.relu, &ws.s)
        } else {
            let (scale, shift) = st.fold.expect("BN block fold buffers");
            ops::bn_fold(be, cfg, (scale, shift), stats, bias)?;
            ops::conv_forward(be, &b.conv, n, x, w, st.out, (Some(scale), Some(shift), b.relu), &ws.s)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn block_backward(
        &self,
        be: &Backend,
        i: usize,
        ws: &GpuWs,
        x: Buf,
        (params, grads): (Buf, Buf),
        dout: Buf,
        dx: Option<(Buf, bool)>,
    ) -> Result<()> {
        let (b, st, n) = (&self.blocks[i], &ws.st[i], ws.n);
        let len = b.out_shape(n).len();
        let mut cur = dout;
        if b.relu {
            be.launch(Kernel::nh_relu_bwd, len, ka(&[ws.g_relu.at(0), cur.at(0), st.out.at(0)], &[], &[]))?;
            cur = ws.g_relu;
        }
        if let Some((cfg, r)) = &b.bn {
            let [g, bt, _, _] = Block::bn_ranges(cfg, r);
            let gamma = if cfg.affine { Some(param(params, &g)) } else { None };
            let dparams = if cfg.affine { Some((param(grads, &g), param(grads, &bt))) } else { None };
            let (pre, bn) = (st.pre.expect("BN block keeps its input"), st.bn.expect("BN block state"));
            ops::bn_backward(be, cfg, (n, b.conv.win.p()), cur, pre, bn, gamma, dparams, ws.g_bn, &ws.s)?;
            cur = ws.g_bn;
        }
        let dw = param(grads, &b.weight);
        let db = b.bias.as_ref().map(|r| param(grads, r));
        ops::conv_backward(be, &b.conv, n, x, param(params, &b.weight), cur, (dw, db), dx, &ws.s)
    }

    /// Runs blocks `range` in sequence from `x`; returns the last output.
    fn chain_forward(
        &self,
        be: &Backend,
        ws: &GpuWs,
        range: std::ops::Range<usize>,
        x: Buf,
        params: Buf,
        train: bool,
    ) -> Result<Buf> {
        let mut input = x;
        for i in range {
            self.block_forward(be, i, ws, input, params, train)?;
            input = ws.st[i].out;
        }
        Ok(input)
    }

    /// Backward through blocks `range` (run from `x`) with the last output's
    /// gradient in `ws.g_a`; the first block's input gradient goes to `first_dx`
    /// (`(buffer, accumulate)`), or is not computed.
    fn chain_backward(
        &self,
        be: &Backend,
        ws: &mut GpuWs,
        range: std::ops::Range<usize>,
        x: Buf,
        pg: (Buf, Buf),
        first_dx: Option<(Buf, bool)>,
    ) -> Result<()> {
        let first = range.start;
        for i in range.rev() {
            let input = if i == first { x } else { ws.st[i - 1].out };
            let dx = if i == first { first_dx } else { Some((ws.g_b, false)) };
            self.block_backward(be, i, ws, input, pg, ws.g_a, dx)?;
            std::mem::swap(&mut ws.g_a, &mut ws.g_b);
        }
        Ok(())
    }

    /// Forward of `ws.input`: training (batch statistics, running statistics
    /// updated in `params`, dropout from `rng`) when `rng` is given, else eval.
    /// Returns the output buffer (`N x out_len`), valid until the next call on `ws`.
    pub fn forward(&self, be: &Backend, ws: &mut GpuWs, params: Buf, rng: Option<&mut Rng>) -> Result<Buf> {
        self.check(ws, params)?;
        let (n, train, x) = (ws.n, rng.is_some(), ws.input);
        ws.trained = false;
        let out = match self.arch {
            Arch::Unet => {
                let [pooled, argmax, up, cat, _] = ws.unet.expect("U-Net buffers");
                let s1 = self.blocks[0].out_shape(n);
                let s2 = self.blocks[1].out_shape(n);
                self.block_forward(be, 0, ws, x, params, train)?;
                ops::maxpool(be, s1, ws.st[0].out, pooled, argmax)?;
                self.block_forward(be, 1, ws, pooled, params, train)?;
                ops::upsample(be, s2, ws.st[1].out, up)?;
                self.block_forward(be, 2, ws, up, params, train)?;
                let s3 = self.blocks[2].out_shape(n);
                ops::concat(be, (s1, s3), ws.st[0].out, ws.st[2].out, cat)?;
                self.chain_forward(be, ws, 3..5, cat, params, train)?
            }
            Arch::Dncnn => {
                let noise = self.chain_forward(be, ws, 0..self.blocks.len(), x, params, train)?;
                let out = ws.residual.expect("DnCNN buffer");
                be.launch(Kernel::nh_sub, out.len(), ka(&[out.at(0), x.at(0), noise.at(0)], &[], &[]))?;
                out
            }
            Arch::HardNetBaseline | Arch::HardNetOriginal => self.hardnet_forward(be, ws, params, rng)?,
        };
        ws.trained = train;
        Ok(out)
    }

    fn hardnet_forward(&self, be: &Backend, ws: &mut GpuWs, params: Buf, rng: Option<&mut Rng>) -> Result<Buf> {
        let (n, x, train) = (ws.n, ws.input, rng.is_some());
        let [normed, m2, mean, std, dropped, mask, ss, norms, desc] = ws.hardnet.expect("HardNet buffers");
        let original = self.arch == Arch::HardNetOriginal;
        let input = if original {
            ops::input_norm(be, (n, PATCH_LEN), x, normed, (mean, m2, std), ws.s.sq)?;
            normed
        } else {
            x
        };
        let last = self.blocks.len() - 1;
        let h = self.chain_forward(be, ws, 0..last, input, params, train)?;
        let conv7_in = match rng {
            Some(rng) => {
                // The CPU's draws, in its order.
                for m in ws.mask_host.iter_mut() {
                    *m = if dropout::keep(rng, &self.dropout) { 1.0 } else { 0.0 };
                }
                be.upload(mask, &ws.mask_host)?;
                ops::dropout(be, dropped.len(), h, mask, dropped, self.dropout.keep_scale())?;
                dropped
            }
            None => h,
        };
        self.block_forward(be, last, ws, conv7_in, params, train)?;
        let raw = ws.st[last].out;
        if !original {
            return Ok(raw);
        }
        ops::l2norm_forward(be, (n, DESC_LEN), raw, desc, norms, (ss, ws.s.sq))?;
        Ok(desc)
    }

    /// Accumulates into `grads` the gradient for `dout` (`N x out_len`, not
    /// one of `ws`'s buffers) after a training forward on `ws`.
    pub fn backward(&self, be: &Backend, ws: &mut GpuWs, params: Buf, grads: Buf, dout: Buf) -> Result<()> {
        self.backward_impl(be, ws, (params, grads), dout, None)
    }

    /// As `backward`, and also accumulates the gradient w.r.t. the input
    /// (`N x 1 x 32 x 32`) into `dx` (HardNet only): how the descriptor's loss
    /// reaches the denoiser in joint training.
    pub fn backward_with_input(
        &self,
        be: &Backend,
        ws: &mut GpuWs,
        (params, grads): (Buf, Buf),
        dout: Buf,
        dx: Buf,
    ) -> Result<()> {
        if self.arch.is_denoiser() {
            return Err(Error::InvalidArgument(format!("the input gradient of a {} on a device", self.arch)));
        }
        crate::error::check_len("device input gradient", dx.len(), ws.n * PATCH_LEN)?;
        self.backward_impl(be, ws, (params, grads), dout, Some(dx))
    }

    fn backward_impl(&self, be: &Backend, ws: &mut GpuWs, (params, grads): (Buf, Buf), dout: Buf, dx: Option<Buf>) -> Result<()> {
        self.check(ws, params)?;
        crate::error::check_len("device gradients", grads.len(), self.params)?;
        if !ws.trained {
            return Err(Error::InvalidArgument("backward needs a training forward on the same workspace".into()));
        }
        let (n, x, pg) = (ws.n, ws.input, (params, grads));
        match self.arch {
            Arch::Unet => {
                let [pooled, argmax, up, cat, d_skip] = ws.unet.expect("U-Net buffers");
                let (s1, s2, s3) =
                    (self.blocks[0].out_shape(n), self.blocks[1].out_shape(n), self.blocks[2].out_shape(n));
                self.block_backward(be, 4, ws, ws.st[3].out, pg, dout, Some((ws.g_a, false)))?;
                self.block_backward(be, 3, ws, cat, pg, ws.g_a, Some((ws.g_b, false)))?;
                ops::fill(be, d_skip, s1.len(), 0.0)?;
                ops::fill(be, ws.g_a, s3.len(), 0.0)?;
                ops::concat_backward(be, (s1, s3), ws.g_b, d_skip, ws.g_a)?;
                self.block_backward(be, 2, ws, up, pg, ws.g_a, Some((ws.g_b, false)))?;
                ops::fill(be, ws.g_a, s2.len(), 0.0)?;
                ops::upsample_backward(be, s2, ws.g_b, ws.g_a)?;
                self.block_backward(be, 1, ws, pooled, pg, ws.g_a, Some((ws.g_b, false)))?;
                ops::maxpool_backward(be, s1, ws.g_b, argmax, d_skip)?;
                self.block_backward(be, 0, ws, x, pg, d_skip, None)
            }
            Arch::Dncnn => {
                // out = x - noise: the noise branch's gradient is -dout.
                let len = n * PATCH_LEN;
                ops::fill(be, ws.g_a, len, 0.0)?;
                ops::axpy(be, ws.g_a, -1.0, dout, len)?;
                self.chain_backward(be, ws, 0..self.blocks.len(), x, pg, None)
            }
            Arch::HardNetBaseline | Arch::HardNetOriginal => {
                let [normed, _, _, _, dropped, mask, _, norms, _] = ws.hardnet.expect("HardNet buffers");
                let original = self.arch == Arch::HardNetOriginal;
                let last = self.blocks.len() - 1;
                let len = n * DESC_LEN;
                let d_desc = if original {
                    ops::fill(be, ws.g_b, len, 0.0)?;
                    let raw = ws.st[last].out;
                    ops::l2norm_backward(be, (n, DESC_LEN), dout, raw, norms, ws.g_b, (ws.s.tmp, ws.s.sq))?;
                    ws.g_b
                } else {
                    dout
                };
                self.block_backward(be, last, ws, dropped, pg, d_desc, Some((ws.g_a, false)))?;
                ops::fill(be, ws.g_b, dropped.len(), 0.0)?;
                ops::dropout_backward(be, dropped.len(), ws.g_a, mask, ws.g_b, self.dropout.keep_scale())?;
                std::mem::swap(&mut ws.g_a, &mut ws.g_b);
                let input = if original { normed } else { x };
                // The original variant's input gradient passes the input normalisation: first into d_normed.
                let (first_dx, d_normed) = match (dx, original) {
                    (None, _) => (None, None),
                    (Some(dx), false) => (Some((dx, true)), None),
                    (Some(_), true) => (Some((ws.g_in, false)), Some(ws.g_in)),
                };
                self.chain_backward(be, ws, 0..last, input, pg, first_dx)?;
                if let (Some(dx), Some(dn)) = (dx, d_normed) {
                    // m2 and ss are forward scratch (row-sized): free here.
                    let [_, gbar, mean, std, _, _, dot, _, _] = ws.hardnet.expect("HardNet buffers");
                    let rows = (n, PATCH_LEN);
                    ops::input_norm_backward(be, rows, dn, x, (mean, std), dx, (gbar, dot, ws.s.sq))?;
                }
                Ok(())
            }
        }
    }
}
