//! The unit every model is built from: a convolution, optionally followed by
//! BatchNorm, optionally followed by ReLU (`conv -> [bn] -> [relu]`).
//!
//! Parameters (PyTorch names and layouts, pushed in this order into the
//! model's `ParamLayout`): `conv{i}.weight` `[cout, cin, kh, kw]`,
//! `conv{i}.bias` `[cout]` (with bias), `bn{i}.weight`, `bn{i}.bias` `[cout]`
//! (affine BatchNorm), `bn{i}.running_mean`, `bn{i}.running_var` `[cout]`
//! (non-trainable). The BatchNorm tensors are contiguous, so one split of the
//! arena hands out the read-only scale/shift and the mutable running statistics.
//!
//! Per-batch buffers (`BlockState`, all `N x cout x ho x wo` unless noted):
//! - `pre`: the convolution output, kept when BN or ReLU follows (BN backward
//!   needs its input); empty otherwise, the convolution then writes `out`;
//! - the block output (after ReLU, or after BN, or the convolution) is the
//!   caller's tensor (`models::exec`), passed to forward and backward;
//! - `mean`, `inv_std` `[cout]`: BN batch statistics saved by training forward;
//! - `conv`: the convolution's im2col workspace;
//! - `low`: the reduced-precision scratch of an int8 or bf16 eval forward.
//!
//! With both BN and ReLU, ReLU runs inside BN's normalising pass and only its
//! output is kept: ReLU backward uses it as the mask.

use super::LayerRow;
use super::quant::Precision;
use crate::dist::{Comm, Shard};
use crate::error::{Error, Result};
use crate::gemm::q8::{Q8Act, Q8Layout};
use crate::layers::batchnorm::{self, Activation, BatchNormConfig};
use crate::layers::conv2d::{Conv2d, Conv2dSpec, ConvGrads, ConvPass, ConvWorkspace, Epilogue};
use crate::layers::conv2d_bf16::Bf16ConvWorkspace;
use crate::layers::conv2d_q8::{Q8ConvWorkspace, Q8LayerIn, Q8LayerOut};
use crate::layers::prepared::WeightsKey;
use crate::layers::upconv::{ImageSlot, UpConv, UpConvWorkspace};
use crate::layers::{DxMode, relu};
use crate::params::ParamLayout;
use crate::rng::Rng;
use crate::shape::Shape4;
use std::ops::Range;

/// A `conv -> [bn] -> [relu]` unit with its slots in the parameter arena.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    /// 1-based layer index: the `i` in `conv{i}` and `bn{i}`.
    pub index: usize,
    pub conv: Conv2d,
    pub weight: Range<usize>,
    pub bias: Option<Range<usize>>,
    /// BatchNorm config and the arena range of its tensors (`weight`, `bias` when affine, running stats).
    pub bn: Option<(BatchNormConfig, Range<usize>)>,
    pub relu: bool,
}

/// How parameters are reached in a forward pass: training updates BN running
/// stats; with a shard (data-parallel training) over the whole global batch.
pub(crate) enum Pass<'a> {
    Train(&'a mut [f32], Option<&'a Shard>),
    Eval(&'a [f32]),
}

impl Pass<'_> {
    fn params(&self) -> &[f32] {
        match self {
            Pass::Train(p, _) => p,
            Pass::Eval(p) => p,
        }
    }
}

/// Per-batch buffers of one block (see the file header).
pub(crate) struct BlockState {
    pre: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// `[cout]` BatchNorm folded into a per-channel affine map (eval forward).
    eval_scale: Vec<f32>,
    eval_shift: Vec<f32>,
    /// Synchronised BatchNorm's all-reduce buffer (`2 * C + 1`).
    bn_sync: Vec<f64>,
    conv: ConvWorkspace,
    /// Reduced-precision inference (`set_low`); `None` runs f32.
    low: Option<LowConv>,
    /// The convolution from the plane before an upsampling (`forward_upconv`:
    /// training, and f32 eval passes), made by its first call.
    upconv: Option<UpConvWorkspace>,
    /// The key the weights are vouched for by (`vouch_weights`), for scratch made later.
    weights_key: Option<WeightsKey>,
}

impl BlockState {
    /// Hands `key` (`Workspace::vouch_weights`) to the scratch that prepares
    /// this block's weights for eval forwards. A later `set_low` starts its
    /// scratch without a key (it compares until vouched again).
    pub(crate) fn vouch_weights(&mut self, key: Option<WeightsKey>) {
        self.weights_key = key;
        self.conv.vouch_weights(key);
        if let Some(ws) = &mut self.upconv {
            ws.vouch_weights(key);
        }
        match &mut self.low {
            Some(LowConv::Q8(_, qws)) => qws.vouch_weights(key),
            Some(LowConv::Bf16(bws)) => bws.vouch_weights(key),
            None => {}
        }
    }

    /// Whether the eval forward runs in f32 (no `set_low` below it).
    pub(crate) fn runs_f32(&self) -> bool {
        self.low.is_none()
    }

    /// The input quantization of an int8 eval forward (`set_low`), if it runs in int8.
    pub(crate) fn q8_act(&self) -> Option<Q8Act> {
        match &self.low {
            Some(LowConv::Q8(act, _)) => Some(*act),
            _ => None,
        }
    }

    /// The layout an int8 eval forward reads laid-out input codes in
    /// (`Q8ConvWorkspace::input_layout`); `None` where it reads none.
    pub(crate) fn q8_input_layout(&self) -> Option<Q8Layout> {
        match &self.low {
            Some(LowConv::Q8(_, qws)) => qws.input_layout(),
            _ => None,
        }
    }
}

/// What a block's backward reads as its input: the input itself, or the
/// plane its input is the nearest x2 upsampling of (the training forward ran
/// `Block::forward_upconv`).
#[derive(Clone, Copy)]
pub(crate) enum BlockInput<'a> {
    Plain(&'a [f32]),
    Upsampled(&'a [f32]),
}

/// How an eval forward runs a block's convolution below f32.
pub(crate) enum LowConv {
    /// int8: the input's quantization and the int8 scratch.
    Q8(Q8Act, Q8ConvWorkspace),
    /// bf16 operands, f32 sums.
    Bf16(Bf16ConvWorkspace),
}

/// Model-wide scratch shared by the blocks of one workspace; each block uses a prefix.
pub(crate) struct Scratch {
    /// Gradient w.r.t. the ReLU input.
    g_relu: Vec<f32>,
    /// Gradient w.r.t. the BN input.
    g_bn: Vec<f32>,
    /// BatchNorm backward's per-channel sums, `2 * C`.
    bn_sums: Vec<f32>,
    /// The group of ranks when training data-parallel: BatchNorm backward combines its sums over it.
    pub comm: Option<Comm>,
}

impl Scratch {
    /// Gradient buffers for `n` patches; empty for an `Infer` workspace.
    pub fn new(blocks: &[Block], n: usize, pass: ConvPass) -> Self {
        let train = pass == ConvPass::Train;
        let max = |f: &dyn Fn(&Block) -> bool| {
            blocks.iter().filter(|b| train && f(b)).map(|b| b.out_shape(n).len()).max().unwrap_or(0)
        };
        let channels = blocks.iter().filter(|b| b.bn.is_some()).map(|b| b.conv.spec.cout).max().unwrap_or(0);
        Scratch {
            g_relu: vec![0.0; max(&|b| b.relu)],
            g_bn: vec![0.0; max(&|b| b.bn.is_some())],
            bn_sums: vec![0.0; if train { 2 * channels } else { 0 }],
            comm: None,
        }
    }
}

/// `buf[..len]`, zeroed: a fresh accumulation target.
pub(crate) fn zeroed(buf: &mut [f32], len: usize) -> &mut [f32] {
    let s = &mut buf[..len];
    s.fill(0.0);
    s
}

/// Two disjoint mutable slices `buf[a]`, `buf[b]` with `a` before `b`.
fn split_pair(buf: &mut [f32], a: Range<usize>, b: Range<usize>) -> (&mut [f32], &mut [f32]) {
    let (lo, hi) = buf.split_at_mut(b.start);
    (&mut lo[a], &mut hi[..b.end - b.start])
}

impl Block {
    /// Declares the block's parameters in `layout` and binds the convolution to an `h x w` input.
    pub fn new(
        layout: &mut ParamLayout,
        index: usize,
        spec: Conv2dSpec,
        (h, w): (usize, usize),
        bn: Option<BatchNormConfig>,
        relu: bool,
    ) -> Result<Self> {
        let conv = Conv2d::new(spec, h, w)?;
        let (co, ci) = (spec.cout, spec.cin);
        let weight = layout.push(&format!("conv{index}.weight"), &[co, ci, spec.kh, spec.kw], true)?;
        let bias = if spec.bias { Some(layout.push(&format!("conv{index}.bias"), &[co], true)?) } else { None };
        let bn = match bn {
            None => None,
            Some(cfg) => {
                let start = layout.len();
                if cfg.affine {
                    layout.push(&format!("bn{index}.weight"), &[co], true)?;
                    layout.push(&format!("bn{index}.bias"), &[co], true)?;
                }
                layout.push(&format!("bn{index}.running_mean"), &[co], false)?;
                layout.push(&format!("bn{index}.running_var"), &[co], false)?;
                Some((cfg, start..layout.len()))
            }
        };
        Ok(Block { index, conv, weight, bias, bn, relu })
    }

    pub fn out_shape(&self, n: usize) -> Shape4 {
        self.conv.out_shape(n)
    }

    fn in_len(&self, n: usize) -> usize {
        self.conv.in_shape(n).len()
    }

    /// `(gamma, beta, running_mean, running_var)` ranges inside the BN range (gamma/beta empty without affine).
    pub fn bn_ranges(cfg: &BatchNormConfig, r: &Range<usize>) -> [Range<usize>; 4] {
        let (p, c, s) = (cfg.param_len(), cfg.channels, r.start);
        [s..s + p, s + p..s + 2 * p, s + 2 * p..s + 2 * p + c, s + 2 * p + c..s + 2 * p + 2 * c]
    }

    /// PyTorch defaults: conv weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    /// BN scale 1, shift 0, running mean 0, running variance 1.
    pub fn init(&self, params: &mut [f32], rng: &mut Rng) {
        let bound = 1.0 / (self.conv.win.k() as f32).sqrt();
        for r in std::iter::once(&self.weight).chain(&self.bias) {
            params[r.clone()].iter_mut().for_each(|v| *v = rng.uniform(-bound, bound));
        }
        if let Some((cfg, r)) = &self.bn {
            let [g, b, m, v] = Self::bn_ranges(cfg, r);
            params[g].fill(1.0);
            params[b].fill(0.0);
            params[m].fill(0.0);
            params[v].fill(1.0);
        }
    }

    /// Rows of the `info` table: the convolution (ReLU folded in when no BN
    /// separates them, as Keras does), then BN and ReLU as their own rows.
    pub fn rows(&self) -> Vec<LayerRow> {
        let s = self.out_shape(1);
        let shape = (s.c, s.h, s.w);
        let sp = &self.conv.spec;
        let fused = if self.relu && self.bn.is_none() { " + relu" } else { "" };
        let stride = if sp.stride > 1 { format!(" stride {}", sp.stride) } else { String::new() };
        let conv_params = self.weight.len() + self.bias.as_ref().map_or(0, |b| b.len());
        let mut rows = vec![LayerRow::new(
            format!("conv{}", self.index),
            format!("conv {}x{}{stride}{fused}", sp.kh, sp.kw),
            shape,
            conv_params,
            conv_params,
        )];
        if let Some((cfg, r)) = &self.bn {
            let kind = if cfg.affine { "batchnorm" } else { "batchnorm (no affine)" };
            rows.push(LayerRow::new(format!("bn{}", self.index), kind.into(), shape, r.len(), 2 * cfg.param_len()));
            if self.relu {
                rows.push(LayerRow::new(format!("relu{}", self.index), "relu".into(), shape, 0, 0));
            }
        }
        rows
    }

    /// Buffers of one block for `n` patches. An `Infer` state keeps no
    /// pre-activation (the inference forward fuses bias, BatchNorm and ReLU
    /// into the convolution and writes `out` only); it cannot run a training
    /// forward, which `Model` refuses.
    pub fn state(&self, n: usize, pass: ConvPass) -> BlockState {
        let len = self.out_shape(n).len();
        let c = self.conv.spec.cout;
        let keep_pre = pass == ConvPass::Train && (self.bn.is_some() || self.relu);
        let stats = if self.bn.is_some() { c } else { 0 };
        BlockState {
            pre: vec![0.0; if keep_pre { len } else { 0 }],
            mean: vec![0.0; stats],
            inv_std: vec![0.0; stats],
            eval_scale: vec![0.0; stats],
            eval_shift: vec![0.0; stats],
            bn_sync: vec![0.0; self.bn.as_ref().map_or(0, |(cfg, _)| batchnorm::sync_len(cfg))],
            conv: self.conv.workspace_for(n, pass),
            low: None,
            upconv: None,
            weights_key: None,
        }
    }

    /// Makes the eval forward of `st` (for `n` patches) run in `precision`;
    /// int8 takes the input quantization `act` (the calibration's choice). A
    /// block whose convolution a model does not run in that precision
    /// (`q8_candidate`, `runs_bf16_in_models`), or int8 without `act`, stays f32.
    pub fn set_low(&self, st: &mut BlockState, precision: Precision, act: Option<Q8Act>, n: usize) {
        st.low = match precision {
            Precision::F32 => None,
            Precision::Int8 => {
                act.filter(|_| self.conv.q8_candidate()).map(|a| LowConv::Q8(a, self.conv.workspace_q8(n)))
            }
            Precision::Bf16 => self.conv.runs_bf16_in_models().then(|| LowConv::Bf16(self.conv.workspace_bf16(n))),
        };
    }

    /// The eval epilogue: bias, BatchNorm on its running statistics folded
    /// into `scale` and `shift` (`[cout]` scratch), ReLU; applied while each
    /// tile is in cache.
    fn eval_epilogue<'a>(&'a self, p: &'a [f32], scale: &'a mut [f32], shift: &'a mut [f32]) -> Epilogue<'a> {
        let bias = self.bias.as_ref().map(|b| &p[b.clone()]);
        let Some((cfg, r)) = &self.bn else {
            return Epilogue { scale: None, shift: bias, relu: self.relu };
        };
        let [g, b, m, v] = Self::bn_ranges(cfg, r);
        let (gamma, beta, rm, rv) = (&p[g], &p[b], &p[m], &p[v]);
        for c in 0..cfg.channels {
            // out = gamma * (conv + bias - mean) / sqrt(var + eps) + beta = scale * conv + shift
            let k = gamma.get(c).copied().unwrap_or(1.0) as f64 / (rv[c] as f64 + cfg.eps as f64).sqrt();
            let bc = bias.map_or(0.0, |b| b[c] as f64);
            scale[c] = k as f32;
            shift[c] = (beta.get(c).copied().unwrap_or(0.0) as f64 + (bc - rm[c] as f64) * k) as f32;
        }
        Epilogue { scale: Some(scale), shift: Some(shift), relu: self.relu }
    }

    /// The int8 eval forward (after `set_low` with int8) from values or codes
    /// under this block's input quantization (`BlockState::q8_act`; laid out
    /// as `BlockState::q8_input_layout`, or in NCHW order) into values or the
    /// next int8 block's codes (`Conv2d::forward_q8_io`).
    pub fn forward_q8_io(
        &self,
        st: &mut BlockState,
        out: Q8LayerOut<'_>,
        x: Q8LayerIn<'_>,
        params: &[f32],
        n: usize,
    ) -> Result<()> {
        let BlockState { eval_scale, eval_shift, low, .. } = st;
        let Some(LowConv::Q8(act, qws)) = low.as_mut() else {
            return Err(Error::InvalidArgument(format!("block conv{} does not run in int8", self.index)));
        };
        let epi = self.eval_epilogue(params, eval_scale, eval_shift);
        self.conv.forward_q8_io(out, x, &params[self.weight.clone()], *act, epi, n, qws)
    }

    /// The forward of a block whose input is the nearest x2 upsampling of
    /// `x` (`N x cin x h/2 x w/2`), without the upsampled tensor
    /// (`layers::upconv`; `UpConv::fits` holds for the convolution). An eval
    /// pass (f32) writes each image's output at `slot` of `out` (`None`:
    /// `out` is the block's own tensor); a training pass writes its own.
    pub fn forward_upconv(
        &self,
        st: &mut BlockState,
        out: &mut [f32],
        slot: Option<ImageSlot>,
        x: &[f32],
        pass: &mut Pass,
        n: usize,
    ) -> Result<()> {
        let BlockState { eval_scale, eval_shift, upconv, weights_key, pre, .. } = st;
        let (layer, ws) = self.upconv(upconv, *weights_key, n)?;
        if let Pass::Eval(p) = &*pass {
            let epi = self.eval_epilogue(p, eval_scale, eval_shift);
            let slot = slot.unwrap_or(layer.whole());
            return layer.forward_fused(out, slot, x, &p[self.weight.clone()], epi, n, ws);
        }
        let params = pass.params();
        let epi = Epilogue { scale: None, shift: self.bias.as_ref().map(|b| &params[b.clone()]), relu: false };
        let conv_out = if pre.is_empty() { &mut *out } else { &mut pre[..] };
        layer.forward_fused(conv_out, layer.whole(), x, &params[self.weight.clone()], epi, n, ws)?;
        self.forward_after_conv(st, out, pass, n)
    }

    /// This block's convolution after an upsampling and its scratch (`BlockState::upconv`),
    /// made by the first call (sized once for this batch, reused after).
    fn upconv<'s>(
        &self,
        scratch: &'s mut Option<UpConvWorkspace>,
        key: Option<WeightsKey>,
        n: usize,
    ) -> Result<(UpConv, &'s mut UpConvWorkspace)> {
        let layer = UpConv::new(&self.conv.spec, self.conv.win.h / 2, self.conv.win.w / 2)?;
        let ws = scratch.get_or_insert_with(|| {
            let mut ws = layer.workspace(n);
            ws.vouch_weights(key);
            ws
        });
        Ok((layer, ws))
    }

    /// Runs the block on `x` (`N x cin x h x w`) into `out` (`N x cout x ho x wo`).
    pub fn forward(&self, st: &mut BlockState, out: &mut [f32], x: &[f32], pass: &mut Pass, n: usize) -> Result<()> {
        let params = pass.params();
        let bias = self.bias.as_ref().map(|b| &params[b.clone()]);
        if let Pass::Eval(p) = &*pass {
            let BlockState { eval_scale, eval_shift, low, conv, .. } = st;
            let epi = self.eval_epilogue(p, eval_scale, eval_shift);
            let w = &p[self.weight.clone()];
            return match low.as_mut() {
                Some(LowConv::Q8(act, qws)) => self.conv.forward_q8(out, x, w, *act, epi, n, qws),
                Some(LowConv::Bf16(bws)) => self.conv.forward_bf16(out, x, w, epi, n, bws),
                None => self.conv.forward_fused(out, x, w, epi, n, conv),
            };
        }
        let conv_out = if st.pre.is_empty() { &mut *out } else { &mut st.pre };
        self.conv.forward(conv_out, x, &params[self.weight.clone()], bias, n, &mut st.conv)?;
        self.forward_after_conv(st, out, pass, n)
    }

    /// The training forward's BatchNorm and ReLU, after the convolution
    /// wrote `st.pre` (or `out`, when the block keeps no pre-activation).
    fn forward_after_conv(&self, st: &mut BlockState, out: &mut [f32], pass: &mut Pass, n: usize) -> Result<()> {
        let shape = self.out_shape(n);
        let Some((cfg, r)) = &self.bn else {
            return if self.relu { relu::forward(out, &st.pre) } else { Ok(()) };
        };
        // ReLU runs inside the normalising pass; its backward masks with `out`.
        let act = if self.relu { Activation::Relu } else { Activation::Identity };
        let [g, b, m, v] = Self::bn_ranges(cfg, r);
        match pass {
            Pass::Train(p, shard) => {
                let (lo, hi) = p.split_at_mut(m.start);
                let (rm, rv) = hi[..2 * cfg.channels].split_at_mut(cfg.channels);
                let (mean, is) = (&mut st.mean, &mut st.inv_std);
                let (pre, gamma, beta) = (&st.pre, &lo[g], &lo[b]);
                match shard {
                    Some(sh) => batchnorm::forward_train_synced(
                        out,
                        mean,
                        is,
                        rm,
                        rv,
                        pre,
                        gamma,
                        beta,
                        shape,
                        cfg,
                        act,
                        &*sh.comm,
                        &mut st.bn_sync,
                    ),
                    None => batchnorm::forward_train(out, mean, is, rm, rv, pre, gamma, beta, shape, cfg, act),
                }
            }
            Pass::Eval(p) => batchnorm::forward_eval(out, &st.pre, &p[g], &p[b], &p[m], &p[v], shape, cfg, act),
        }
    }

    /// Accumulates the parameter gradients into `grads` and, when given, the
    /// input gradient into `dx` (or over it: `DxMode::Write`), for `dout`
    /// (the gradient w.r.t. `out`, the forward's output) after a training
    /// forward on the same input `x`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        st: &mut BlockState,
        out: &[f32],
        x: BlockInput<'_>,
        params: &[f32],
        grads: &mut [f32],
        dout: &[f32],
        dx: Option<(&mut [f32], DxMode)>,
        scratch: &mut Scratch,
        n: usize,
    ) -> Result<()> {
        let shape = self.out_shape(n);
        let len = shape.len();
        let mut cur: &[f32] = dout;
        // ReLU after BatchNorm: its mask is applied inside BatchNorm's backward (`Upstream`).
        if self.relu && self.bn.is_none() {
            let g = zeroed(&mut scratch.g_relu, len);
            relu::backward(g, cur, out)?;
            cur = g;
        }
        if let Some((cfg, r)) = &self.bn {
            let [g, b, _, _] = Self::bn_ranges(cfg, r);
            // The ReLU's mask recomputed from `pre` and the forward's parameters (backward
            // runs with the forward's, `Model::backward`): `out` is not read again.
            let up = match self.relu {
                true => batchnorm::Upstream::through_relu_recomputed(cur, &params[b.clone()]),
                false => batchnorm::Upstream::plain(cur),
            };
            let (dgamma, dbeta) = split_pair(grads, g.clone(), b);
            // BatchNorm writes its dx over the buffer (`DxMode::Write`): no zeroing pass.
            let d = &mut scratch.g_bn[..len];
            let (mean, is, pre, gamma) = (&st.mean, &st.inv_std, &st.pre, &params[g]);
            let sums = &mut scratch.bn_sums[..2 * cfg.channels];
            let dx = (&mut *d, DxMode::Write);
            match &scratch.comm {
                Some(comm) => batchnorm::backward_train_synced(
                    dx,
                    dgamma,
                    dbeta,
                    sums,
                    up,
                    pre,
                    gamma,
                    mean,
                    is,
                    shape,
                    cfg,
                    &**comm,
                    &mut st.bn_sync,
                )?,
                None => batchnorm::backward_train(dx, dgamma, dbeta, sums, up, pre, gamma, mean, is, shape, cfg)?,
            }
            cur = d;
        }
        let (dx, dx_mode) = dx.map_or((None, DxMode::Add), |(d, m)| (Some(d), m));
        let (dweight, dbias) = self.conv_grads(grads);
        let grads = ConvGrads { dx, dweight, dbias, dx_mode };
        let weight = &params[self.weight.clone()];
        match x {
            BlockInput::Upsampled(x) => {
                let (layer, ws) = self.upconv(&mut st.upconv, st.weights_key, n)?;
                layer.backward(grads, cur, x, weight, n, ws)
            }
            BlockInput::Plain(x) => {
                if let Some(dx) = &grads.dx {
                    crate::error::check_len("block input gradient", dx.len(), self.in_len(n))?;
                }
                self.conv.backward(grads, cur, x, weight, n, &mut st.conv)
            }
        }
    }

    /// The convolution's weight and bias gradients in the gradient arena.
    fn conv_grads<'g>(&self, grads: &'g mut [f32]) -> (&'g mut [f32], Option<&'g mut [f32]>) {
        match &self.bias {
            Some(b) => {
                let (w, b) = split_pair(grads, self.weight.clone(), b.clone());
                (w, Some(b))
            }
            None => (&mut grads[self.weight.clone()], None),
        }
    }
}
