//! The CPU executor of a model's [`Graph`]: forward runs the nodes in order,
//! backward in reverse, each node's pass a plain function of `layers`.
//!
//! Buffers (`Buffers`, one set per batch size, sized from the graph):
//! - `acts[t]`: tensor `t`, `N x C x H x W`, for every tensor with a buffer
//!   of its own (not the input, which is the caller's or the training copy;
//!   not dropout's output in an inference workspace, which is its input);
//! - `states[i]`: what node `i`'s backward needs (the block's BatchNorm
//!   statistics and pre-activation, the pool argmax, the input normalisation's
//!   per-patch mean and std, the dropout mask, the L2 norms);
//! - `slots`: the gradient buffers of the graph's plan (`Graph::slot`);
//! - `scratch`: the blocks' shared ReLU/BN gradient scratch.
//!
//! Every buffer is taken out of its vector for the duration of one node
//! (`std::mem::take`, which moves a pointer) so that a node writes its output
//! while reading its inputs; nothing allocates in a pass.

use super::block::{BlockInput, BlockState, Pass, Scratch};
use super::graph::{Graph, INPUT, Op, TensorId};
use super::quant::{Calibration, Precision};
use crate::error::{Error, Result};
use crate::gemm::q8::{Q8Act, Q8Layout};
use crate::layers::conv2d::ConvPass;
use crate::layers::conv2d_q8::{Q8LayerIn, Q8LayerOut};
use crate::layers::dropout::{self, DropoutConfig};
use crate::layers::prepared::WeightsKey;
use crate::layers::upconv::ImageSlot;
use crate::layers::{DxMode, concat, input_norm, l2norm, maxpool, residual, upsample};
use crate::rng::Rng;
use std::mem::take;

/// What one node keeps between its forward and its backward.
enum NodeState {
    Block(Box<BlockState>),
    Pool { argmax: Vec<u32> },
    InputNorm { mean: Vec<f32>, std: Vec<f32> },
    Dropout { mask: Vec<u8> },
    L2 { norms: Vec<f32> },
    Stateless,
}

/// Every buffer one batch size needs (see the file header).
pub(crate) struct Buffers {
    n: usize,
    acts: Vec<Vec<f32>>,
    states: Vec<NodeState>,
    slots: Vec<Vec<f32>>,
    pub scratch: Scratch,
    /// Per tensor, how it travels where an int8 block hands it to the next
    /// int8 block as codes (`set_precision`): then `codes[t]` holds it in an
    /// eval pass and `acts[t]` is not written.
    coded: Vec<Option<Coded>>,
    codes: Vec<Vec<u8>>,
    /// Whether eval passes may fuse an upsampling into the f32 block that
    /// reads it (`Graph::upconv_pairs`; `set_fusion`).
    fuse: bool,
    /// Per node, in an eval pass: an upsampling left to its reader (skipped)...
    up_skip: Vec<bool>,
    /// ...and the block that reads the upsampling's input instead, with that input...
    up_src: Vec<Option<TensorId>>,
    /// ...which writes its output straight into the concatenation that is
    /// its only reader, when it has one: that tensor and the output's place in it...
    up_sink: Vec<Option<(TensorId, ImageSlot)>>,
    /// ...and per concatenation node, the one side it still copies (`true`: `a`).
    concat_side: Vec<Option<bool>>,
}

impl Buffers {
    /// Buffers for `n` patches; an `Infer` set has no gradient slots, dropout masks or pre-activations.
    pub fn new(g: &Graph, n: usize, pass: ConvPass) -> Buffers {
        let train = pass == ConvPass::Train;
        let acts = (0..g.tensors())
            .map(|t| vec![0.0; if g.owns_buffer(t, train) { g.shape(t, n).len() } else { 0 }])
            .collect();
        let states = g
            .nodes
            .iter()
            .map(|node| {
                let rows = |len: usize| vec![0.0; len];
                match node.op {
                    Op::Block(b) => NodeState::Block(Box::new(g.blocks[b].state(n, pass))),
                    Op::MaxPool => {
                        NodeState::Pool { argmax: vec![0; if train { g.shape(node.output, n).len() } else { 0 }] }
                    }
                    Op::InputNorm => NodeState::InputNorm { mean: rows(n), std: rows(n) },
                    Op::Dropout => {
                        NodeState::Dropout { mask: vec![0; if train { g.shape(node.output, n).len() } else { 0 }] }
                    }
                    Op::L2Norm => NodeState::L2 { norms: rows(n) },
                    _ => NodeState::Stateless,
                }
            })
            .collect();
        let slots = if train { g.fused_plan().slot_lens(n).map(|l| vec![0.0; l]).collect() } else { Vec::new() };
        let (coded, codes) = (vec![None; g.tensors()], vec![Vec::new(); g.tensors()]);
        let nodes = g.nodes.len();
        let (up_skip, up_src, up_sink, concat_side) =
            (vec![false; nodes], vec![None; nodes], vec![None; nodes], vec![None; nodes]);
        let scratch = Scratch::new(&g.blocks, n, pass);
        let mut bufs = Buffers {
            n,
            acts,
            states,
            slots,
            scratch,
            coded,
            codes,
            fuse: true,
            up_skip,
            up_src,
            up_sink,
            concat_side,
        };
        bufs.plan_upconv(g);
        bufs
    }

    /// Whether eval passes fuse each upsampling into the f32 block that reads
    /// it (default on). Off, every tensor of an eval pass is computed, as
    /// `block_inputs` needs.
    pub fn set_fusion(&mut self, g: &Graph, on: bool) {
        self.fuse = on;
        self.plan_upconv(g);
    }

    /// Fuses the pairs of `Graph::upconv_pairs` whose block runs f32, and
    /// such a block into a concatenation that is its only reader.
    fn plan_upconv(&mut self, g: &Graph) {
        self.up_skip.fill(false);
        self.up_src.fill(None);
        self.up_sink.fill(None);
        self.concat_side.fill(None);
        if !self.fuse {
            return;
        }
        for (u, b) in g.upconv_pairs() {
            let NodeState::Block(st) = &self.states[b] else { continue };
            if !st.runs_f32() {
                continue;
            }
            self.up_skip[u] = true;
            self.up_src[b] = Some(g.src(g.nodes[u].inputs[0], false));
            // One sink per concatenation: a second fused side is copied as usual.
            if let Some((k, pos)) = g.sole_eval_reader(g.nodes[b].output)
                && g.nodes[k].op == Op::Concat
                && self.concat_side[k].is_none()
            {
                let cat = &g.nodes[k];
                let offset = if pos == 0 { 0 } else { g.shape(cat.inputs[0], 1).len() };
                let slot = ImageSlot { stride: g.shape(cat.output, 1).len(), offset };
                self.up_sink[b] = Some((cat.output, slot));
                self.concat_side[k] = Some(pos == 1);
            }
        }
    }

    /// Every block's `BlockState::vouch_weights`.
    pub fn vouch_weights(&mut self, key: Option<WeightsKey>) {
        for st in &mut self.states {
            if let NodeState::Block(b) = st {
                b.vouch_weights(key);
            }
        }
    }
}

impl Buffers {
    /// Sets every block's eval forward to `precision` (`Block::set_low`);
    /// int8 takes each block's input quantization from `calib`
    /// (`Calibration::get(block index)`).
    pub fn set_precision(&mut self, g: &Graph, precision: Precision, calib: Option<&Calibration>) {
        for (node, state) in g.nodes.iter().zip(self.states.iter_mut()) {
            if let (Op::Block(b), NodeState::Block(st)) = (node.op, state) {
                let block = &g.blocks[b];
                block.set_low(st, precision, calib.and_then(|c| c.get(block.index)), self.n);
            }
        }
        // A tensor one int8 block makes and only one int8 block reads travels
        // as that reader's codes: the writer's store quantizes, the reader
        // skips its pass over f32 (the same codes, so the same bits).
        for t in 0..g.tensors() {
            self.coded[t] = code_plan(g, &self.states, t);
            // Laid-out codes: the border and padding are the zero point, for good
            // (the writer only ever writes the pixels).
            self.codes[t] = match self.coded[t] {
                None => Vec::new(),
                Some(Coded { act, layout: None }) => vec![act.zero; g.shape(t, self.n).len()],
                Some(Coded { act, layout: Some(l) }) => vec![act.zero; self.n * l.image_len()],
            };
        }
        self.plan_upconv(g);
    }

    /// `(block index, the block's input)` for each block node, in node
    /// order, as the last eval pass on these buffers with input `x` left them
    /// (f32 or bf16 buffers: int8 ones keep some inputs only as codes; with
    /// fusion off, `set_fusion`, or an upsampled input is an error).
    pub fn block_inputs<'a>(&'a self, g: &Graph, x: &'a [f32]) -> Result<Vec<(usize, &'a [f32])>> {
        let mut inputs = Vec::new();
        for (node, up) in g.nodes.iter().zip(&self.up_src) {
            if let Op::Block(b) = node.op {
                let index = g.blocks[b].index;
                if up.is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "conv{index}'s upsampled input is not kept with fusion on (set_fusion)"
                    )));
                }
                inputs.push((index, tensor(&self.acts, x, g.src(node.inputs[0], false))));
            }
        }
        Ok(inputs)
    }
}

/// How a tensor travels between int8 blocks: codes under the reader's
/// quantization, in the reader's GEMM layout where it has one (else NCHW).
#[derive(Clone, Copy, Debug)]
struct Coded {
    act: Q8Act,
    layout: Option<Q8Layout>,
}

/// How tensor `t` travels in an eval pass, where one int8 block writes it
/// and exactly one int8 block reads it, as its first input, and it is not
/// the graph's output.
fn code_plan(g: &Graph, states: &[NodeState], t: TensorId) -> Option<Coded> {
    let q8 = |i: usize| match (g.nodes[i].op, &states[i]) {
        (Op::Block(_), NodeState::Block(st)) => st.q8_act().map(|act| Coded { act, layout: st.q8_input_layout() }),
        _ => None,
    };
    if t == INPUT || !g.owns_buffer(t, false) || g.src(g.output, false) == t {
        return None;
    }
    let runs = |i: &usize| g.runs(&g.nodes[*i], false);
    let writer = (0..g.nodes.len()).filter(runs).find(|&i| g.nodes[i].output == t)?;
    q8(writer)?;
    let mut readers = (0..g.nodes.len())
        .filter(runs)
        .flat_map(|i| g.nodes[i].inputs.iter().enumerate().map(move |(pos, &u)| (i, pos, u)))
        .filter(|&(_, _, u)| u != INPUT && g.src(u, false) == t);
    match (readers.next(), readers.next()) {
        (Some((i, 0, _)), None) => q8(i),
        _ => None,
    }
}

fn mismatch() -> Error {
    Error::Shape("a workspace built for another graph".into())
}

/// Tensor `t` in a pass whose input is `x`.
fn tensor<'a>(acts: &'a [Vec<f32>], x: &'a [f32], t: TensorId) -> &'a [f32] {
    if t == INPUT { x } else { &acts[t] }
}

/// Runs `g` on `x` (`N x 1 x 32 x 32`); training when `pass` is `Train`
/// (then `drop` carries the dropout generator and rate). Returns the output.
pub(crate) fn forward<'b>(
    g: &Graph,
    bufs: &'b mut Buffers,
    mut pass: Pass,
    x: &[f32],
    mut drop: Option<(&mut Rng, &DropoutConfig)>,
) -> Result<&'b [f32]> {
    let n = bufs.n;
    let train = matches!(pass, Pass::Train(..));
    // A shard of a global batch draws the whole batch's mask stream and keeps
    // its rows: in each group, skip the items before and after its share.
    let shard = match &pass {
        Pass::Train(_, Some(s)) => Some((s.offset, s.total, s.groups)),
        _ => None,
    };
    let Buffers { acts, states, coded, codes, up_skip, up_src, up_sink, concat_side, .. } = bufs;
    for (i, (node, state)) in g.nodes.iter().zip(states.iter_mut()).enumerate() {
        // Fused upsamplings: every one in training, those `plan_upconv` chose in eval.
        if !g.runs(node, train) || if train { g.is_fused_up(i) } else { up_skip[i] } {
            continue;
        }
        let o = node.output;
        if let (Op::Block(b), NodeState::Block(st), Pass::Eval(p)) = (node.op, &mut *state, &pass) {
            // int8 blocks handing each other codes (`Buffers::set_precision`).
            let t = g.src(node.inputs[0], false);
            let coded_in = t != INPUT && coded[t].is_some();
            if coded_in || coded[o].is_some() {
                let (mut values, mut out_codes) = (take(&mut acts[o]), take(&mut codes[o]));
                let dst = match coded[o] {
                    Some(Coded { act, layout: Some(l) }) => Q8LayerOut::Laid(&mut out_codes, act, l),
                    Some(Coded { act, layout: None }) => Q8LayerOut::Codes(&mut out_codes, act),
                    None => Q8LayerOut::Values(&mut values),
                };
                let src = match coded.get(t).copied().flatten() {
                    Some(Coded { layout: Some(_), .. }) => Q8LayerIn::Laid(&codes[t]),
                    Some(Coded { layout: None, .. }) => Q8LayerIn::Codes(&codes[t]),
                    None => Q8LayerIn::Values(tensor(acts, x, t)),
                };
                let r = g.blocks[b].forward_q8_io(st, dst, src, p, n);
                (acts[o], codes[o]) = (values, out_codes);
                r?;
                continue;
            }
        }
        // A fused block writing into its concatenation (`plan_upconv`) takes that buffer.
        let sink = if train { None } else { up_sink[i] };
        let o = sink.map_or(o, |(t, _)| t);
        let mut out = take(&mut acts[o]);
        let get = |t: TensorId| tensor(acts, x, g.src(t, train));
        let (a, sa) = (get(node.inputs[0]), g.shape(node.inputs[0], n));
        let r = match (node.op, state) {
            (Op::Block(b), NodeState::Block(st)) => {
                // The block reads the upsampling's input.
                let small = if train { g.fused_up(i).map(|u| g.nodes[u].inputs[0]) } else { up_src[i] };
                match small {
                    Some(t) => {
                        let slot = sink.map(|(_, s)| s);
                        g.blocks[b].forward_upconv(st, &mut out, slot, tensor(acts, x, t), &mut pass, n)
                    }
                    None => g.blocks[b].forward(st, &mut out, a, &mut pass, n),
                }
            }
            (Op::MaxPool, NodeState::Pool { argmax }) if train => maxpool::forward(&mut out, argmax, a, sa),
            (Op::MaxPool, _) => maxpool::forward_eval(&mut out, a, sa),
            (Op::Upsample, _) => upsample::forward(&mut out, a, sa),
            (Op::Concat, _) => {
                let (b, sb) = (get(node.inputs[1]), g.shape(node.inputs[1], n));
                match concat_side[i].filter(|_| !train) {
                    // The other side is in `out` already (`plan_upconv`).
                    Some(first) => concat::forward_side(&mut out, if first { a } else { b }, sa, sb, first),
                    None => concat::forward(&mut out, a, b, sa, sb),
                }
            }
            (Op::Residual, _) => residual::forward(&mut out, a, get(node.inputs[1])),
            (Op::InputNorm, NodeState::InputNorm { mean, std }) => input_norm::forward(&mut out, mean, std, a, sa),
            (Op::L2Norm, NodeState::L2 { norms }) => l2norm::forward(&mut out, norms, a, sa),
            (Op::Dropout, NodeState::Dropout { mask }) => match drop.as_mut() {
                Some((rng, cfg)) => {
                    let per_patch = sa.image_len();
                    let (offset, total, groups) = shard.unwrap_or((0, n, 1));
                    let len = n / groups;
                    let group = len * per_patch;
                    let mut r = Ok(());
                    for gi in 0..groups {
                        let span = gi * group..(gi + 1) * group;
                        rng.skip((offset * per_patch) as u64);
                        r = r.and_then(|()| {
                            dropout::forward_train(&mut out[span.clone()], &mut mask[span.clone()], &a[span], rng, cfg)
                        });
                        rng.skip(((total - offset - len) * per_patch) as u64);
                    }
                    r
                }
                None => Err(Error::InvalidArgument("a training pass needs the dropout generator".into())),
            },
            _ => Err(mismatch()),
        };
        acts[o] = out;
        r?;
    }
    output(g, bufs, train)
}

/// The output of the last pass of this kind on `bufs`.
pub(crate) fn output<'b>(g: &Graph, bufs: &'b Buffers, train: bool) -> Result<&'b [f32]> {
    match g.src(g.output, train) {
        INPUT => Err(Error::Shape("a graph whose output is its input".into())),
        t => Ok(&bufs.acts[t]),
    }
}

/// A gradient buffer taken out of its slot for one node: `(slot, buffer)`.
type Taken = Option<(usize, Vec<f32>)>;

/// Accumulates into `grads` the gradient for `dout` (w.r.t. the output) after
/// a training forward of `g` on `x` with these `bufs`; with `dx`, also the
/// input gradient (`dx +=`). `params` are the forward's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    g: &Graph,
    bufs: &mut Buffers,
    params: &[f32],
    grads: &mut [f32],
    x: &[f32],
    dout: &[f32],
    mut dx: Option<&mut [f32]>,
    drop: &DropoutConfig,
) -> Result<()> {
    let n = bufs.n;
    let with_input = dx.is_some();
    let Buffers { acts, states, slots, scratch, .. } = bufs;
    let plan = g.fused_plan();
    for (i, node) in g.nodes.iter().enumerate().rev() {
        if !g.runs(node, true) || !g.needs_grad(node.output, with_input) || g.is_fused_up(i) {
            continue;
        }
        // A block fused with its upsampling reads, and sends its gradient to, the upsampling's input.
        let fused = g.fused_up(i);
        let inputs = fused.map_or(&node.inputs, |u| &g.nodes[u].inputs);
        let o = node.output;
        let len_of = |t: TensorId| g.shape(t, n).len();
        let d_out: Taken = plan.slot(o).map(|s| (s, take(&mut slots[s])));
        // The inputs' gradient buffers, zeroed by their first writer; a
        // block writes its own over the buffer instead (`DxMode::Write`).
        let is_block = matches!(node.op, Op::Block(_));
        let mut d_in: [Taken; 2] = [None, None];
        let mut d_mode = [DxMode::Add; 2];
        for (pos, &t) in inputs.iter().enumerate() {
            if t != INPUT
                && g.needs_grad(t, with_input)
                && let Some(s) = plan.slot(t)
            {
                let mut buf = take(&mut slots[s]);
                if plan.first_write(i, pos) {
                    if is_block {
                        d_mode[pos] = DxMode::Write;
                    } else {
                        buf[..len_of(t)].fill(0.0);
                    }
                }
                d_in[pos] = Some((s, buf));
            }
        }
        let r = {
            let dy: &[f32] = match &d_out {
                Some((_, b)) => &b[..len_of(o)],
                None => dout,
            };
            let [d0, d1] = &mut d_in;
            let mut da = part(d0, len_of(inputs[0]));
            let mut db = inputs.get(1).and_then(|&t| part(d1, len_of(t)));
            // The input's gradient is the caller's `dx`.
            if inputs[0] == INPUT {
                da = dx.as_deref_mut();
            } else if inputs.get(1) == Some(&INPUT) {
                db = dx.as_deref_mut();
            }
            let (a, sa) = (tensor(acts, x, inputs[0]), g.shape(inputs[0], n));
            match (node.op, &mut states[i]) {
                (Op::Block(b), NodeState::Block(st)) => {
                    let input = if fused.is_some() { BlockInput::Upsampled(a) } else { BlockInput::Plain(a) };
                    // The model's input (the caller's dx) keeps `Add`: the loop above skipped it.
                    let da = da.map(|d| (d, d_mode[0]));
                    g.blocks[b].backward(st, &acts[o], input, params, grads, dy, da, scratch, n)
                }
                (Op::MaxPool, NodeState::Pool { argmax }) => needed(da, |d| maxpool::backward(d, dy, argmax, sa)),
                (Op::Upsample, _) => needed(da, |d| upsample::backward(d, dy, sa)),
                (Op::Concat, _) => concat::backward_parts(da, db, dy, sa, g.shape(node.inputs[1], n)),
                (Op::Residual, _) => residual::backward_parts(da, db, dy),
                (Op::InputNorm, NodeState::InputNorm { mean, std }) => {
                    needed(da, |d| input_norm::backward(d, dy, a, mean, std, sa))
                }
                (Op::Dropout, NodeState::Dropout { mask }) => {
                    needed(da, |d| dropout::backward_train(d, dy, mask, drop))
                }
                (Op::L2Norm, NodeState::L2 { norms }) => needed(da, |d| l2norm::backward(d, dy, a, norms, sa)),
                _ => Err(mismatch()),
            }
        };
        for (s, b) in d_in.into_iter().chain([d_out]).flatten() {
            slots[s] = b;
        }
        r?;
    }
    Ok(())
}

/// Runs a parameter-free node's backward when its input wants a gradient.
fn needed(d: Option<&mut [f32]>, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    d.map_or(Ok(()), f)
}

/// The first `len` elements of a taken gradient buffer.
fn part(d: &mut Taken, len: usize) -> Option<&mut [f32]> {
    d.as_mut().map(|(_, b)| &mut b[..len])
}

#[cfg(test)]
mod tests {
    use crate::models::{Arch, Model};
    use crate::rng::Rng;

    /// The U-Net's eval pass with the upsampling fused into conv3, which
    /// writes into the concatenation, against the pass that computes every
    /// tensor: the same values up to the rounding of the summed weights, and
    /// every block input kept only without fusion.
    #[test]
    fn fused_upsampling_gives_the_values_of_the_plain_pass() {
        let m = Model::new(Arch::Unet).unwrap();
        let p = m.init_params(&mut Rng::new(3));
        let mut rng = Rng::new(4);
        let x: Vec<f32> = (0..3 * 1024).map(|_| rng.uniform(0.0, 255.0)).collect();
        let mut ws = m.inference_workspace(3).unwrap();
        let fused = m.forward_eval(&mut ws, &p, &x).unwrap().to_vec();
        assert!(ws.bufs.block_inputs(&m.graph, &x).is_err(), "conv3's input is not kept");
        ws.bufs.set_fusion(&m.graph, false);
        let plain = m.forward_eval(&mut ws, &p, &x).unwrap().to_vec();
        assert_eq!(ws.bufs.block_inputs(&m.graph, &x).unwrap().len(), 5);
        let size = plain.iter().fold(1.0f32, |a, v| a.max(v.abs()));
        let worst = fused.iter().zip(&plain).fold(0.0f32, |a, (f, q)| a.max((f - q).abs()));
        assert!(worst <= 1e-5 * size && worst > 0.0, "worst {worst} of {size}");
    }
}
