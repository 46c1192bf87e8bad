//! The networks on a device: the CPU `Model`'s graph (`models::graph`: the
//! same blocks, ops, parameter layout and gradient plan) run node by node
//! with the passes of `ops`. Nothing here knows a network's wiring: a model
//! described once in `src/models/<m>.rs` runs on both backends. Parameters and
//! gradients are device arenas in the CPU layout; a `GpuWs` holds every
//! buffer one batch size needs, allocated once.
//!
//! Train forward keeps what backward needs (BatchNorm input, mean and
//! inverse std, max-pool argmax, input-normalisation statistics, dropout
//! mask, L2 norms); backward accumulates into the gradient arena and, when
//! asked, into the input gradient. Dropout masks are drawn on the host from
//! the caller's `Rng`, in the CPU order, and uploaded: the same generator
//! state gives the same masks on both devices.

use super::backend::{Backend, Buf, Kernel, ka};
use super::ops::{self, BnState, Scratch};
use crate::error::{Error, Result};
use crate::layers::dropout::{self, DropoutConfig};
use crate::models::block::Block;
use crate::models::graph::{Graph, INPUT, Op};
use crate::models::{Arch, Model, PATCH_LEN};
use crate::rng::Rng;

/// What one node keeps on the device between its forward and its backward.
enum NodeBufs {
    Block {
        /// Convolution output, kept for BatchNorm backward (BN blocks only).
        pre: Option<Buf>,
        bn: Option<BnState>,
        /// Eval BatchNorm folded with the bias.
        fold: Option<(Buf, Buf)>,
    },
    Pool {
        argmax: Buf,
    },
    /// Per-patch mean, sum of squared deviations, std; backward's row scratch.
    InputNorm {
        mean: Buf,
        m2: Buf,
        std: Buf,
        gbar: Buf,
        dot: Buf,
    },
    Dropout {
        mask: Buf,
    },
    /// Row sums of squares and norms.
    L2 {
        ss: Buf,
        norms: Buf,
    },
    Stateless,
}

/// A network's graph, ready to run on a device.
pub struct GpuModel {
    arch: Arch,
    graph: Graph,
    dropout: DropoutConfig,
    params: usize,
    out_len: usize,
}

/// Buffers for batches of exactly `n` patches.
pub struct GpuWs {
    n: usize,
    /// The input batch, `N x 1 x 32 x 32`, uploaded by the caller (tensor 0).
    pub input: Buf,
    /// Every tensor of the graph (`acts[0]` is `input`).
    acts: Vec<Buf>,
    nodes: Vec<NodeBufs>,
    /// The graph's gradient slots.
    slots: Vec<Buf>,
    s: Scratch,
    g_relu: Buf,
    g_bn: Buf,
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
            graph: model.graph().clone(),
            // The model's rate, already validated.
            dropout: DropoutConfig { p: model.dropout() },
            params: model.param_count(),
            out_len: model.out_len(),
        }
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn out_len(&self) -> usize {
        self.out_len
    }

    pub fn workspace(&self, be: &Backend, n: usize) -> Result<GpuWs> {
        if n == 0 {
            return Err(Error::Shape("a device workspace needs a batch of at least one patch".into()));
        }
        let g = &self.graph;
        let act = g.largest_tensor(n);
        let (mut col, mut cn, mut nc, mut c, mut hidden) = (0, 0, n, 1, 0);
        for b in &g.blocks {
            let out = b.out_shape(n);
            col = col.max(b.conv.win.k() * n * b.conv.win.p());
            cn = cn.max(out.len());
            nc = nc.max(n * out.c);
            c = c.max(out.c);
        }
        let input = be.alloc(n * PATCH_LEN)?;
        let mut acts = vec![input];
        for t in 1..g.tensors() {
            acts.push(be.alloc(g.shape(t, n).len())?);
        }
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for node in &g.nodes {
            let out = g.shape(node.output, n);
            nodes.push(match node.op {
                Op::Block(b) => {
                    let bn = g.blocks[b].bn.is_some();
                    let per_channel = |be: &Backend| be.alloc(out.c);
                    NodeBufs::Block {
                        pre: if bn { Some(be.alloc(out.len())?) } else { None },
                        bn: if bn { Some(BnState { mean: per_channel(be)?, inv_std: per_channel(be)? }) } else { None },
                        fold: if bn { Some((per_channel(be)?, per_channel(be)?)) } else { None },
                    }
                }
                Op::MaxPool => NodeBufs::Pool { argmax: be.alloc(out.len())? },
                Op::InputNorm => NodeBufs::InputNorm {
                    mean: be.alloc(n)?,
                    m2: be.alloc(n)?,
                    std: be.alloc(n)?,
                    gbar: be.alloc(n)?,
                    dot: be.alloc(n)?,
                },
                Op::Dropout => {
                    hidden = hidden.max(out.len());
                    NodeBufs::Dropout { mask: be.alloc(out.len())? }
                }
                Op::L2Norm => NodeBufs::L2 { ss: be.alloc(n)?, norms: be.alloc(n)? },
                Op::Residual | Op::Concat | Op::Upsample | Op::Flatten => NodeBufs::Stateless,
            });
        }
        let slots = g.slot_lens(n).map(|l| be.alloc(l)).collect::<Result<Vec<_>>>()?;
        Ok(GpuWs {
            n,
            input,
            acts,
            nodes,
            slots,
            s: Scratch::new(be, col, cn, act, nc, c)?,
            g_relu: be.alloc(act)?,
            g_bn: be.alloc(act)?,
            mask_host: vec![0.0; hidden],
            trained: false,
        })
    }

    fn check(&self, ws: &GpuWs, params: Buf) -> Result<()> {
        if ws.acts.len() != self.graph.tensors() || ws.nodes.len() != self.graph.nodes.len() {
            return Err(Error::Shape(format!("a device workspace of another architecture used with {}", self.arch)));
        }
        crate::error::check_len("device parameters", params.len(), self.params)
    }

    #[allow(clippy::too_many_arguments)]
    fn block_forward(&self, be: &Backend, b: &Block, st: &NodeBufs, s: &Scratch, x: Buf, out: Buf, params: Buf, n: usize, train: bool) -> Result<()> {
        let NodeBufs::Block { pre, bn, fold } = st else { return Err(mismatch()) };
        let w = param(params, &b.weight);
        let bias = b.bias.as_ref().map(|r| param(params, r));
        let Some((cfg, r)) = &b.bn else {
            return ops::conv_forward(be, &b.conv, n, x, w, out, (None, bias, b.relu), s);
        };
        let [g, bt, m, v] = Block::bn_ranges(cfg, r);
        let aff = |r: std::ops::Range<usize>| if cfg.affine { Some(param(params, &r)) } else { None };
        let stats = (aff(g), aff(bt), param(params, &m), param(params, &v));
        let (Some(pre), Some(bn), Some((scale, shift))) = (pre, bn, fold) else { return Err(mismatch()) };
        if train {
            ops::conv_forward(be, &b.conv, n, x, w, *pre, (None, bias, false), s)?;
            ops::bn_forward_train(be, cfg, (n, b.conv.win.p()), *pre, out, *bn, stats, b.relu, s)
        } else {
            ops::bn_fold(be, cfg, (*scale, *shift), stats, bias)?;
            ops::conv_forward(be, &b.conv, n, x, w, out, (Some(*scale), Some(*shift), b.relu), s)
        }
    }

    /// Block backward for `dout` (w.r.t. `out`); `dx` is `(buffer, accumulate)`.
    #[allow(clippy::too_many_arguments)]
    fn block_backward(
        &self,
        be: &Backend,
        b: &Block,
        ws: &GpuWs,
        st: &NodeBufs,
        (x, out): (Buf, Buf),
        (params, grads): (Buf, Buf),
        dout: Buf,
        dx: Option<(Buf, bool)>,
    ) -> Result<()> {
        let NodeBufs::Block { pre, bn, .. } = st else { return Err(mismatch()) };
        let n = ws.n;
        let len = b.out_shape(n).len();
        let mut cur = dout;
        if b.relu {
            be.launch(Kernel::nh_relu_bwd, len, ka(&[ws.g_relu.at(0), cur.at(0), out.at(0)], &[], &[]))?;
            cur = ws.g_relu;
        }
        if let Some((cfg, r)) = &b.bn {
            let [g, bt, _, _] = Block::bn_ranges(cfg, r);
            let gamma = if cfg.affine { Some(param(params, &g)) } else { None };
            let dparams = if cfg.affine { Some((param(grads, &g), param(grads, &bt))) } else { None };
            let (Some(pre), Some(bn)) = (pre, bn) else { return Err(mismatch()) };
            ops::bn_backward(be, cfg, (n, b.conv.win.p()), cur, *pre, *bn, gamma, dparams, ws.g_bn, &ws.s)?;
            cur = ws.g_bn;
        }
        let dw = param(grads, &b.weight);
        let db = b.bias.as_ref().map(|r| param(grads, r));
        ops::conv_backward(be, &b.conv, n, x, param(params, &b.weight), cur, (dw, db), dx, &ws.s)
    }

    /// Forward of `ws.input`: training (batch statistics, running statistics
    /// updated in `params`, dropout from `rng`) when `rng` is given, else eval.
    /// Returns the output buffer (`N x out_len`), valid until the next call on `ws`.
    pub fn forward(&self, be: &Backend, ws: &mut GpuWs, params: Buf, mut rng: Option<&mut Rng>) -> Result<Buf> {
        self.check(ws, params)?;
        let (g, n, train) = (&self.graph, ws.n, rng.is_some());
        ws.trained = false;
        for (node, st) in g.nodes.iter().zip(&ws.nodes) {
            if !g.runs(node, train) {
                continue;
            }
            let get = |t| ws.acts[g.src(t, train)];
            let (a, sa, out) = (get(node.inputs[0]), g.shape(node.inputs[0], n), ws.acts[node.output]);
            let rows = (n, sa.image_len());
            match (node.op, st) {
                (Op::Block(b), _) => self.block_forward(be, &g.blocks[b], st, &ws.s, a, out, params, n, train)?,
                (Op::MaxPool, NodeBufs::Pool { argmax }) => ops::maxpool(be, sa, a, out, *argmax)?,
                (Op::Upsample, _) => ops::upsample(be, sa, a, out)?,
                (Op::Concat, _) => {
                    let b = node.inputs[1];
                    ops::concat(be, (sa, g.shape(b, n)), a, get(b), out)?
                }
                (Op::Residual, _) => {
                    let ptrs = [out.at(0), a.at(0), get(node.inputs[1]).at(0)];
                    be.launch(Kernel::nh_sub, sa.len(), ka(&ptrs, &[], &[]))?
                }
                (Op::InputNorm, NodeBufs::InputNorm { mean, m2, std, .. }) => {
                    ops::input_norm(be, rows, a, out, (*mean, *m2, *std), ws.s.sq)?
                }
                (Op::Dropout, NodeBufs::Dropout { mask }) => {
                    let rng = rng.as_deref_mut().ok_or_else(|| crate::arg_err!("a training pass needs a generator"))?;
                    // The CPU's draws, in its order.
                    let host = &mut ws.mask_host[..sa.len()];
                    dropout::draw_mask(host, rng, &self.dropout, 1.0, 0.0);
                    be.upload(*mask, host)?;
                    ops::dropout(be, sa.len(), a, *mask, out, self.dropout.keep_scale())?
                }
                (Op::L2Norm, NodeBufs::L2 { ss, norms }) => {
                    ops::l2norm_forward(be, rows, a, out, *norms, (*ss, ws.s.sq))?
                }
                _ => return Err(mismatch()),
            }
        }
        ws.trained = train;
        Ok(ws.acts[g.src(g.output, train)])
    }

    /// Accumulates into `grads` the gradient for `dout` (`N x out_len`, not
    /// one of `ws`'s buffers) after a training forward on `ws`.
    pub fn backward(&self, be: &Backend, ws: &mut GpuWs, params: Buf, grads: Buf, dout: Buf) -> Result<()> {
        self.backward_impl(be, ws, (params, grads), dout, None)
    }

    /// As `backward`, and also accumulates the gradient w.r.t. the input
    /// (`N x 1 x 32 x 32`) into `dx`: how the descriptor's loss reaches the
    /// denoiser in joint training.
    pub fn backward_with_input(
        &self,
        be: &Backend,
        ws: &mut GpuWs,
        (params, grads): (Buf, Buf),
        dout: Buf,
        dx: Buf,
    ) -> Result<()> {
        crate::error::check_len("device input gradient", dx.len(), ws.n * PATCH_LEN)?;
        self.backward_impl(be, ws, (params, grads), dout, Some(dx))
    }

    fn backward_impl(&self, be: &Backend, ws: &mut GpuWs, pg: (Buf, Buf), dout: Buf, dx: Option<Buf>) -> Result<()> {
        self.check(ws, pg.0)?;
        crate::error::check_len("device gradients", pg.1.len(), self.params)?;
        if !ws.trained {
            return Err(Error::InvalidArgument("backward needs a training forward on the same workspace".into()));
        }
        let (g, n, with_input) = (&self.graph, ws.n, dx.is_some());
        for (i, node) in g.nodes.iter().enumerate().rev() {
            if !g.runs(node, true) || !g.needs_grad(node.output, with_input) {
                continue;
            }
            let o = node.output;
            let dy = match g.slot(o) {
                Some(s) => ws.slots[s],
                None => dout,
            };
            // Each input's gradient target: `(buffer, accumulate)`; a first writer overwrites.
            let target = |pos: usize| -> Option<(Buf, bool)> {
                let t = *node.inputs.get(pos)?;
                if t == INPUT {
                    return dx.map(|d| (d, true));
                }
                let s = g.slot(t).filter(|_| g.needs_grad(t, with_input))?;
                Some((ws.slots[s], !g.first_write(i, pos)))
            };
            let (a, sa, st) = (ws.acts[node.inputs[0]], g.shape(node.inputs[0], n), &ws.nodes[i]);
            if let Op::Block(b) = node.op {
                self.block_backward(be, &g.blocks[b], ws, st, (a, ws.acts[o]), pg, dy, target(0))?;
                continue;
            }
            // The other passes accumulate: a first writer zeroes its target.
            let mut d = [None, None];
            for (pos, slot) in d.iter_mut().enumerate() {
                if let Some((buf, accumulate)) = target(pos) {
                    if !accumulate {
                        ops::fill(be, buf, g.shape(node.inputs[pos], n).len(), 0.0)?;
                    }
                    *slot = Some(buf);
                }
            }
            let rows = (n, sa.image_len());
            match (node.op, st, d[0]) {
                (Op::Residual, _, da) => {
                    if let Some(da) = da {
                        ops::axpy(be, da, 1.0, dy, sa.len())?;
                    }
                    if let Some(db) = d[1] {
                        ops::axpy(be, db, -1.0, dy, sa.len())?;
                    }
                }
                (Op::Concat, _, da) => {
                    // A side without a gradient writes into scratch.
                    let (da, db) = (da.unwrap_or(ws.s.sq), d[1].unwrap_or(ws.s.sq));
                    ops::concat_backward(be, (sa, g.shape(node.inputs[1], n)), dy, da, db)?
                }
                (_, _, None) => {}
                (Op::MaxPool, NodeBufs::Pool { argmax }, Some(da)) => ops::maxpool_backward(be, sa, dy, *argmax, da)?,
                (Op::Upsample, _, Some(da)) => ops::upsample_backward(be, sa, dy, da)?,
                (Op::InputNorm, NodeBufs::InputNorm { mean, std, gbar, dot, .. }, Some(da)) => {
                    ops::input_norm_backward(be, rows, dy, a, (*mean, *std), da, (*gbar, *dot, ws.s.sq))?
                }
                (Op::Dropout, NodeBufs::Dropout { mask }, Some(da)) => {
                    ops::dropout_backward(be, sa.len(), dy, *mask, da, self.dropout.keep_scale())?
                }
                (Op::L2Norm, NodeBufs::L2 { norms, .. }, Some(da)) => {
                    ops::l2norm_backward(be, rows, dy, a, *norms, da, (ws.s.tmp, ws.s.sq))?
                }
                _ => return Err(mismatch()),
            }
        }
        Ok(())
    }
}

fn mismatch() -> Error {
    Error::Shape("a device workspace built for another graph".into())
}
