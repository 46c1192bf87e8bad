//! A model as a graph of ops over numbered tensors: the one description of
//! each network, which the CPU executor (`models::exec`) and the CUDA backend
//! (`gpu::model`) both run. A model file only builds its graph
//! (`GraphBuilder`); nothing else in the crate knows its wiring.
//!
//! Tensor 0 ([`INPUT`]) is the input batch, `N x 1 x 32 x 32`. Every node
//! reads one or two distinct earlier tensors and writes one new tensor;
//! `Flatten` writes none (it names its input's `N x C x 1 x 1` buffer as the
//! row-major `N x C` matrix). Shapes are kept per image (`n = 1`).
//!
//! Backward runs the nodes in reverse. A tensor's gradient is needed when a
//! parameter or the (requested) input gradient lies upstream of it. It lives
//! from the backward of its last consumer, which zeroes it, to the backward of
//! its producer, which reads it; tensors whose lifetimes do not overlap share a
//! gradient buffer ("slot"), so a chain ping-pongs between two. The plan is
//! made once per graph. The output's gradient is the caller's `dout`, the
//! input's the caller's `dx`.

use super::LayerRow;
use super::block::Block;
use crate::error::{Error, Result};
use crate::layers::batchnorm::BatchNormConfig;
use crate::layers::concat;
use crate::layers::conv2d::Conv2dSpec;
use crate::layers::upconv::UpConv;
use crate::params::ParamLayout;
use crate::shape::Shape4;

/// Index of a tensor in a graph.
pub(crate) type TensorId = usize;
/// The input batch.
pub(crate) const INPUT: TensorId = 0;

/// What a node computes (`inputs[0]` is `a`, `inputs[1]` is `b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `conv -> [bn] -> [relu]`: the graph's block of this index.
    Block(usize),
    /// 2x2 max pool, stride 2; saves the argmax.
    MaxPool,
    /// Nearest-neighbour upsampling x2.
    Upsample,
    /// Channels of `a` then channels of `b`.
    Concat,
    /// `a - b` (DnCNN's clean estimate from the input and the predicted noise).
    Residual,
    /// Per-patch standardisation; saves each patch's mean and std.
    InputNorm,
    /// Inverted dropout at the model's rate in training; the identity in eval.
    Dropout,
    /// Row-wise L2 normalisation of `N x (C*H*W)`; saves the norms.
    L2Norm,
    /// A name for its input: no computation, no tensor of its own.
    Flatten,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub op: Op,
    pub inputs: Vec<TensorId>,
    pub output: TensorId,
    /// The `info` table row of a non-block op: `(name, kind)`.
    row: (String, String),
}

/// A network's description: its nodes, tensor shapes, parameters and backward plan.
#[derive(Clone, Debug)]
pub(crate) struct Graph {
    pub nodes: Vec<Node>,
    /// The convolution blocks, in the order their parameters were declared.
    pub blocks: Vec<Block>,
    pub layout: ParamLayout,
    /// Per tensor, one image's shape.
    shapes: Vec<Shape4>,
    pub output: TensorId,
    /// Per tensor, the tensor holding its value in an eval pass (dropout is the identity there).
    eval_src: Vec<TensorId>,
    /// Per tensor, whether backward needs its gradient: `[without, with]` the input gradient.
    needs_grad: [Vec<bool>; 2],
    /// The gradient buffers of a backward that runs every node (the CUDA backend's).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    plan: GradPlan,
    /// Per node: for a block that reads an upsampling it can run fused
    /// (`layers::upconv`: its one reader, with a fitting convolution), that
    /// upsampling's node.
    fused_up: Vec<Option<usize>>,
    /// The gradient buffers of the CPU executor's backward, which runs each
    /// such block on the upsampling's input and skips the upsampling.
    fused_plan: GradPlan,
}

/// Which gradient buffer each tensor's gradient lives in during backward.
#[derive(Clone, Debug)]
pub(crate) struct GradPlan {
    /// Per tensor, its gradient slot (none for the input and the output, whose gradients are the caller's).
    slot: Vec<Option<usize>>,
    /// Per slot, elements per image.
    slot_len: Vec<usize>,
    /// Per node and input position: whether this node's backward is the first to write that input's gradient.
    first_write: Vec<[bool; 2]>,
}

impl GradPlan {
    /// The gradient slot of `t`, when it has one.
    pub fn slot(&self, t: TensorId) -> Option<usize> {
        self.slot[t]
    }

    /// Elements of each slot for a batch of `n`.
    pub fn slot_lens(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.slot_len.iter().map(move |l| l * n)
    }

    /// Whether node `i`'s backward is the first to write the gradient of its input at `pos` (it zeroes it).
    pub fn first_write(&self, i: usize, pos: usize) -> bool {
        self.first_write[i][pos]
    }

    /// Plans the slots for a backward in which node `i` reads `inputs[i]`
    /// (an empty list: the node does not run). Lifetimes in reverse steps:
    /// from the last reader's backward to the producer's; a slot is reused
    /// once its tensor's lifetime has ended before another's starts.
    fn new(
        inputs: &[Vec<TensorId>],
        producer: &[Option<usize>],
        shapes: &[Shape4],
        needs_grad: &[bool],
        output: TensorId,
    ) -> GradPlan {
        let steps = inputs.len();
        let rev = |i: usize| steps - 1 - i;
        let mut first_write = vec![[false; 2]; steps];
        let mut lives: Vec<(usize, usize, TensorId)> = Vec::new();
        for t in 1..shapes.len() {
            if t == output || !needs_grad[t] {
                continue;
            }
            let last = inputs.iter().enumerate().rfind(|(_, ins)| ins.contains(&t));
            let (Some((c, ins)), Some(p)) = (last, producer[t]) else { continue };
            let pos = ins.iter().position(|&x| x == t).unwrap_or(0);
            first_write[c][pos] = true;
            lives.push((rev(c), rev(p), t));
        }
        lives.sort_unstable();
        let mut slot = vec![None; shapes.len()];
        let mut slot_len: Vec<usize> = Vec::new();
        let mut slot_end: Vec<usize> = Vec::new();
        for (start, end, t) in lives {
            let len = shapes[t].len();
            let s = match slot_end.iter().position(|&e| e < start) {
                Some(s) => s,
                None => {
                    slot_len.push(0);
                    slot_end.push(0);
                    slot_len.len() - 1
                }
            };
            slot_len[s] = slot_len[s].max(len);
            slot_end[s] = end;
            slot[t] = Some(s);
        }
        GradPlan { slot, slot_len, first_write }
    }
}

impl Graph {
    /// The shape of tensor `t` for a batch of `n`.
    pub fn shape(&self, t: TensorId, n: usize) -> Shape4 {
        let s = self.shapes[t];
        Shape4::new(n, s.c, s.h, s.w)
    }

    pub fn tensors(&self) -> usize {
        self.shapes.len()
    }

    /// The tensor whose buffer holds `t` in a training (`train`) or eval pass.
    pub fn src(&self, t: TensorId, train: bool) -> TensorId {
        if train { t } else { self.eval_src[t] }
    }

    /// Whether tensor `t` has a buffer of its own in a pass of this kind (not the input, not an alias).
    pub fn owns_buffer(&self, t: TensorId, train: bool) -> bool {
        t != INPUT && self.src(t, train) == t
    }

    /// `(upsample node, block node)` pairs an eval pass may run as one
    /// (`layers::upconv`): the block is the only reader of the upsampled
    /// tensor, which is not the output, and its convolution fits.
    pub fn upconv_pairs(&self) -> Vec<(usize, usize)> {
        self.fused_up.iter().enumerate().filter_map(|(b, u)| u.map(|u| (u, b))).collect()
    }

    /// `(node, input position)` of the one node that reads tensor `t` in an
    /// eval pass, when exactly one does, once, and `t` is not the output.
    pub fn sole_eval_reader(&self, t: TensorId) -> Option<(usize, usize)> {
        if t == INPUT || self.src(self.output, false) == t {
            return None;
        }
        let mut reads = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| self.runs(node, false))
            .flat_map(|(i, node)| node.inputs.iter().enumerate().map(move |(pos, &u)| (i, pos, u)))
            .filter(|&(_, _, u)| u != INPUT && self.src(u, false) == t);
        match (reads.next(), reads.next()) {
            (Some((i, pos, _)), None) => Some((i, pos)),
            _ => None,
        }
    }

    /// Whether a node runs in a pass of this kind (`Flatten` never; dropout only in training).
    pub fn runs(&self, node: &Node, train: bool) -> bool {
        match node.op {
            Op::Flatten => false,
            Op::Dropout => train,
            _ => true,
        }
    }

    pub fn needs_grad(&self, t: TensorId, with_input: bool) -> bool {
        self.needs_grad[usize::from(with_input)][t]
    }

    /// The gradient slot of `t`, when it has one (the plan of a backward that runs every node).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn slot(&self, t: TensorId) -> Option<usize> {
        self.plan.slot(t)
    }

    /// Elements of each slot for a batch of `n` (as `slot`).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn slot_lens(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.plan.slot_lens(n)
    }

    /// Whether node `i`'s backward is the first to write the gradient of its input at `pos` (as `slot`).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn first_write(&self, i: usize, pos: usize) -> bool {
        self.plan.first_write(i, pos)
    }

    /// The plan of the CPU executor's backward, which runs fused upsamplings (`fused_up`).
    pub fn fused_plan(&self) -> &GradPlan {
        &self.fused_plan
    }

    /// The upsampling node block node `i` reads through, fused (`layers::upconv`), if any.
    pub fn fused_up(&self, i: usize) -> Option<usize> {
        self.fused_up[i]
    }

    /// Whether node `i` is an upsampling that runs fused into its reader.
    pub fn is_fused_up(&self, i: usize) -> bool {
        self.fused_up.contains(&Some(i))
    }

    /// Rows of the `info` table, node by node.
    pub fn rows(&self) -> Vec<LayerRow> {
        let mut rows = Vec::new();
        for node in &self.nodes {
            match node.op {
                Op::Block(b) => rows.extend(self.blocks[b].rows()),
                _ => {
                    let s = self.shapes[node.output];
                    rows.push(LayerRow::plain(&node.row.0, &node.row.1, (s.c, s.h, s.w)));
                }
            }
        }
        rows
    }

    /// Largest tensor of the graph for a batch of `n` (the input included).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn largest_tensor(&self, n: usize) -> usize {
        (0..self.tensors()).map(|t| self.shape(t, n).len()).max().unwrap_or(0)
    }
}

/// Builds a [`Graph`]: a model file calls [`block`](GraphBuilder::block) and
/// [`op`](GraphBuilder::op) from [`INPUT`] on, then [`finish`](GraphBuilder::finish).
pub(crate) struct GraphBuilder {
    nodes: Vec<Node>,
    blocks: Vec<Block>,
    layout: ParamLayout,
    shapes: Vec<Shape4>,
}

impl GraphBuilder {
    /// A graph whose input is one `1 x side x side` patch per image.
    pub fn new(side: usize) -> Self {
        GraphBuilder {
            nodes: Vec::new(),
            blocks: Vec::new(),
            layout: ParamLayout::new(),
            shapes: vec![Shape4::new(1, 1, side, side)],
        }
    }

    pub fn shape(&self, t: TensorId) -> Result<Shape4> {
        self.shapes.get(t).copied().ok_or_else(|| Error::Shape(format!("graph: no tensor {t}")))
    }

    fn push(&mut self, op: Op, inputs: &[TensorId], shape: Shape4, row: (&str, &str)) -> TensorId {
        let output = self.shapes.len();
        self.shapes.push(shape);
        self.nodes.push(Node { op, inputs: inputs.to_vec(), output, row: (row.0.into(), row.1.into()) });
        output
    }

    /// `conv{index} -> [bn{index}] -> [relu]` on `x`; declares the block's parameters.
    pub fn block(
        &mut self,
        x: TensorId,
        index: usize,
        spec: Conv2dSpec,
        bn: Option<BatchNormConfig>,
        relu: bool,
    ) -> Result<TensorId> {
        let s = self.shape(x)?;
        if s.c != spec.cin {
            return Err(Error::Shape(format!("graph: conv{index} takes {} channels, its input has {}", spec.cin, s.c)));
        }
        let block = Block::new(&mut self.layout, index, spec, (s.h, s.w), bn, relu)?;
        let out = block.out_shape(1);
        self.blocks.push(block);
        Ok(self.push(Op::Block(self.blocks.len() - 1), &[x], out, ("", "")))
    }

    /// A parameter-free op on `inputs`, listed in the `info` table as `name`, `kind`.
    pub fn op(&mut self, op: Op, inputs: &[TensorId], name: &str, kind: &str) -> Result<TensorId> {
        let shapes = inputs.iter().map(|&t| self.shape(t)).collect::<Result<Vec<_>>>()?;
        let arity = if matches!(op, Op::Concat | Op::Residual) { 2 } else { 1 };
        if shapes.len() != arity || (arity == 2 && inputs[0] == inputs[1]) {
            return Err(Error::Shape(format!("graph: {op:?} takes {arity} distinct input(s), got {inputs:?}")));
        }
        let a = shapes[0];
        let out = match op {
            Op::Block(_) => return Err(Error::Shape("graph: blocks are added with GraphBuilder::block".into())),
            Op::MaxPool if a.h % 2 != 0 || a.w % 2 != 0 => {
                return Err(Error::Shape(format!("graph: max pool of an odd plane {a}")));
            }
            Op::MaxPool => Shape4::new(1, a.c, a.h / 2, a.w / 2),
            Op::Upsample => Shape4::new(1, a.c, 2 * a.h, 2 * a.w),
            Op::Concat => concat::concat_shape(a, shapes[1])?,
            Op::Residual if a != shapes[1] => {
                return Err(Error::Shape(format!("graph: residual of {a} and {}", shapes[1])));
            }
            Op::Residual | Op::InputNorm | Op::Dropout | Op::L2Norm => a,
            Op::Flatten => {
                self.nodes.push(Node {
                    op,
                    inputs: inputs.to_vec(),
                    output: inputs[0],
                    row: (name.into(), kind.into()),
                });
                return Ok(inputs[0]);
            }
        };
        Ok(self.push(op, inputs, out, (name, kind)))
    }

    /// The graph with `output` as its result, and its backward plan.
    pub fn finish(self, output: TensorId) -> Result<Graph> {
        let GraphBuilder { nodes, blocks, layout, shapes } = self;
        let count = shapes.len();
        if output == INPUT || output >= count {
            return Err(Error::Shape(format!("graph: output tensor {output} is not computed")));
        }
        let consumers = |t: TensorId| nodes.iter().filter(move |n| n.op != Op::Flatten && n.inputs.contains(&t));
        if consumers(output).next().is_some() {
            return Err(Error::Shape("graph: the output feeds another node".into()));
        }
        let mut eval_src: Vec<TensorId> = (0..count).collect();
        let mut needs_grad = [vec![false; count], vec![false; count]];
        needs_grad[1][INPUT] = true;
        for node in nodes.iter().filter(|n| n.op != Op::Flatten) {
            if node.op == Op::Dropout {
                eval_src[node.output] = eval_src[node.inputs[0]];
            }
            for ng in &mut needs_grad {
                ng[node.output] = matches!(node.op, Op::Block(_)) || node.inputs.iter().any(|&t| ng[t]);
            }
        }
        let producer: Vec<Option<usize>> =
            (0..count).map(|t| nodes.iter().position(|n| n.op != Op::Flatten && n.output == t && t != INPUT)).collect();
        // An upsampling whose one reader (in any pass) is a block with a
        // fitting convolution, as its input, runs fused into that block.
        let mut fused_up = vec![None; nodes.len()];
        for (u, node) in nodes.iter().enumerate().filter(|(_, n)| n.op == Op::Upsample && n.output != output) {
            let mut readers = nodes.iter().enumerate().filter(|(_, n)| n.inputs.contains(&node.output));
            if let (Some((b, reader)), None) = (readers.next(), readers.next())
                && let Op::Block(k) = reader.op
                && reader.inputs == [node.output]
                && UpConv::fits(&blocks[k].conv.spec)
            {
                fused_up[b] = Some(u);
            }
        }
        let mut inputs: Vec<Vec<TensorId>> =
            nodes.iter().map(|n| if n.op == Op::Flatten { Vec::new() } else { n.inputs.clone() }).collect();
        let plan = GradPlan::new(&inputs, &producer, &shapes, &needs_grad[1], output);
        for (b, u) in fused_up.iter().enumerate() {
            if let Some(u) = *u {
                inputs[b] = std::mem::take(&mut inputs[u]);
            }
        }
        let fused_plan = GradPlan::new(&inputs, &producer, &shapes, &needs_grad[1], output);
        Ok(Graph { nodes, blocks, layout, shapes, output, eval_src, needs_grad, plan, fused_up, fused_plan })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Arch, Model};

    #[test]
    fn chains_ping_pong_between_two_slots() {
        for arch in [Arch::Dncnn, Arch::HardNetBaseline, Arch::HardNetOriginal] {
            let m = Model::new(arch).unwrap();
            assert_eq!(m.graph().plan.slot_len.len(), 2, "{arch}");
        }
        // The U-Net's skip connection lives across the decoder: a third slot.
        assert_eq!(Model::new(Arch::Unet).unwrap().graph().plan.slot_len.len(), 3);
    }

    #[test]
    fn only_the_unets_upsampling_fuses_into_its_reader() {
        for arch in Arch::ALL {
            let m = Model::new(arch).unwrap();
            let g = m.graph();
            let pairs = g.upconv_pairs();
            if arch != Arch::Unet {
                assert!(pairs.is_empty(), "{arch}");
                let (p, q) = (&g.plan, g.fused_plan());
                assert_eq!((&p.slot, &p.slot_len, &p.first_write), (&q.slot, &q.slot_len, &q.first_write), "{arch}");
                continue;
            }
            // up -> conv3, whose one reader is the concatenation, as its second input.
            let [(u, b)] = pairs[..] else { panic!("{pairs:?}") };
            assert_eq!(g.nodes[u].op, Op::Upsample);
            assert!(matches!(g.nodes[b].op, Op::Block(k) if g.blocks[k].index == 3));
            // The CPU backward: no gradient for the upsampled tensor; conv3 first writes conv2's.
            let (p, small) = (g.fused_plan(), g.nodes[u].inputs[0]);
            assert_eq!(p.slot(g.nodes[u].output), None);
            assert!(p.first_write(b, 0) && p.slot(small).is_some());
            assert!(g.is_fused_up(u) && !g.is_fused_up(b));
            let (k, pos) = g.sole_eval_reader(g.nodes[b].output).unwrap();
            assert_eq!((g.nodes[k].op, pos), (Op::Concat, 1));
            // conv1's output has two readers (the pool and the concatenation); the output none.
            assert_eq!(g.sole_eval_reader(g.nodes[0].output), None);
            assert_eq!(g.sole_eval_reader(g.output), None);
        }
    }

    #[test]
    fn overlapping_gradients_never_share_a_slot() {
        for arch in Arch::ALL {
            let m = Model::new(arch).unwrap();
            let g = m.graph();
            for (i, node) in g.nodes.iter().enumerate().filter(|(_, n)| n.op != Op::Flatten) {
                let mut used: Vec<usize> = node.inputs.iter().filter_map(|&t| g.slot(t)).collect();
                used.extend(g.slot(node.output));
                let before = used.len();
                used.sort_unstable();
                used.dedup();
                assert_eq!(used.len(), before, "{arch} node {i}");
                // The CPU plan, where a fused block reads its upsampling's input.
                if g.is_fused_up(i) {
                    continue;
                }
                let p = g.fused_plan();
                let inputs = g.fused_up(i).map_or(&node.inputs, |u| &g.nodes[u].inputs);
                let mut used: Vec<usize> = inputs.iter().filter_map(|&t| p.slot(t)).collect();
                used.extend(p.slot(node.output));
                let before = used.len();
                used.sort_unstable();
                used.dedup();
                assert_eq!(used.len(), before, "{arch} node {i}, fused");
            }
        }
    }

    #[test]
    fn malformed_graphs_are_refused() {
        let spec = |cin| Conv2dSpec {
            cin,
            cout: 4,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: crate::ops::im2col::Padding::symmetric(1),
            bias: true,
        };
        let mut b = GraphBuilder::new(8);
        assert!(b.block(INPUT, 1, spec(3), None, true).is_err());
        let x = b.block(INPUT, 1, spec(1), None, true).unwrap();
        assert!(b.op(Op::Residual, &[x, INPUT], "r", "r").is_err());
        assert!(b.op(Op::Concat, &[x, x], "c", "c").is_err());
        assert!(b.op(Op::MaxPool, &[x, INPUT], "p", "p").is_err());
        let y = b.op(Op::MaxPool, &[x], "p", "p").unwrap();
        assert_eq!(b.shape(y).unwrap(), Shape4::new(1, 4, 4, 4));
        assert!(GraphBuilder::new(8).finish(INPUT).is_err());
        let z = b.op(Op::Upsample, &[y], "u", "u").unwrap();
        assert!(b.finish(x).is_err(), "an output that feeds another node");
        let _ = z;
    }
}
