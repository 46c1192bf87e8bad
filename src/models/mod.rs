//! The three networks of the pipeline as forward/backward passes over one
//! parameter arena: the shallow U-Net and DnCNN denoisers and the HardNet
//! descriptor (Keras baseline and kornia's original). Inputs are always
//! `N x 1 x 32 x 32` patches; denoisers return `N x 1 x 32 x 32`, HardNet `N x 128`.
//!
//! Each network is described once, in its own file (`unet.rs`, `dncnn.rs`,
//! `hardnet.rs`): its [`ArchInfo`] and a function that builds its graph of
//! blocks and ops (`graph.rs`). The CPU executor (`exec.rs`) and the CUDA
//! backend (`gpu::model`) run that graph; neither knows any network's wiring.
//!
//! Buffers: parameters live in one `Vec<f32>` laid out by the model's
//! `ParamLayout` (PyTorch names, layer by layer); gradients in a second arena
//! with the same layout (running-statistic slots stay 0). Everything a batch
//! needs (activations, saved state, convolution workspaces, activation
//! gradients) sits in a `Workspace` created once per batch size, inside the
//! rayon pool that will run the model; forward and backward allocate nothing.
//!
//! A step: `forward_train` (BatchNorm on batch statistics, running stats
//! updated in the arena, dropout drawn from the caller's `Rng`), then
//! `backward` with the loss gradient w.r.t. the output, which accumulates
//! into the gradient arena. `forward_eval` uses running statistics and no dropout.

pub(crate) mod block;
mod dncnn;
mod exec;
pub(crate) mod graph;
mod hardnet;
pub mod quant;
mod unet;

use crate::dist::Shard;
use crate::error::{Error, Result, check_len};
use crate::layers::conv2d::ConvPass;
use crate::layers::dropout::DropoutConfig;
pub use crate::layers::prepared::WeightsKey;
use crate::params::ParamLayout;
use crate::rng::Rng;
use block::Block;
use graph::{Graph, GraphBuilder};
use quant::{Calibration, Int8Layers, Precision};
use rayon::prelude::*;
use std::ffi::CStr;

/// Side of the square input patches.
pub const PATCH: usize = 32;
/// Elements of one input patch (`1 x 32 x 32`).
pub const PATCH_LEN: usize = PATCH * PATCH;
/// HardNet descriptor length.
pub const DESC_LEN: usize = 128;
/// HardNet's dropout rate before the last convolution.
pub const HARDNET_DROPOUT: f32 = 0.3;
/// Parts of a batch at most in an inference workspace made for a pool
/// (`Model::inference_workspace_for`): each part keeps its own copy of the
/// prepared weights (Winograd transforms, int8 and bf16 weights, and the
/// copy they were prepared from) and its own per-thread scratch, so a pool
/// of many threads shares each part's layers out instead of multiplying
/// those buffers by its thread count.
pub const MAX_INFERENCE_PARTS: usize = 4;

/// Which network. Serialized as its [`name`](Arch::name) (`config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Arch {
    Unet,
    Dncnn,
    /// HardNet as in the N-HPatches Keras baseline: biases, affine BN, raw 0..255 input.
    HardNetBaseline,
    /// HardNet as kornia ships it: no biases, non-affine BN, input normalisation, L2-normalised output.
    HardNetOriginal,
}

/// What the rest of the crate knows of an architecture besides its graph:
/// names and the metadata its weights files carry. Each model file defines its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchInfo {
    /// The architecture's name ("hardnet-original"), as `config.json` and the C ABI spell it.
    pub name: &'static str,
    /// `name` for the C ABI.
    pub c_name: &'static CStr,
    /// The model name of the CLI and of weights metadata ("hardnet").
    pub model: &'static str,
    /// The model's name in prose ("HardNet").
    pub display: &'static str,
    /// The variant, for a model with several (the first listed in `Arch::ALL` is the default).
    pub variant: Option<&'static str>,
    /// A denoiser (`N x 1 x 32 x 32` out) or a descriptor (`N x 128` out).
    pub denoiser: bool,
    /// Weights metadata: BatchNorm epsilon, padding convention, input scaling.
    pub bn_eps: &'static str,
    pub padding: &'static str,
    pub input_scaling: &'static str,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::Unet, Arch::Dncnn, Arch::HardNetBaseline, Arch::HardNetOriginal];

    /// The architecture's names and metadata, from its model file.
    pub fn info(&self) -> &'static ArchInfo {
        match self {
            Arch::Unet => &unet::INFO,
            Arch::Dncnn => &dncnn::INFO,
            Arch::HardNetBaseline => &hardnet::BASELINE,
            Arch::HardNetOriginal => &hardnet::ORIGINAL,
        }
    }

    /// Builds the architecture's graph from its model file.
    fn describe(&self, b: &mut GraphBuilder) -> Result<graph::TensorId> {
        match self {
            Arch::Unet => unet::describe(b),
            Arch::Dncnn => dncnn::describe(b),
            Arch::HardNetBaseline => hardnet::describe(b, false),
            Arch::HardNetOriginal => hardnet::describe(b, true),
        }
    }

    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// From a model name ("unet", "dncnn", "hardnet") and, for a model with
    /// variants, a variant (default: the first; HardNet's "baseline" or "original").
    pub fn parse(model: &str, variant: Option<&str>) -> Result<Arch> {
        let of_model = || Arch::ALL.into_iter().filter(|a| a.info().model == model);
        if of_model().next().is_none() {
            let mut models: Vec<&str> = Arch::ALL.iter().map(|a| a.info().model).collect();
            models.dedup();
            let (last, rest) = models.split_last().unwrap_or((&"", &[]));
            return Err(Error::InvalidArgument(format!(
                "unknown model '{model}' (expected {} or {last})",
                rest.join(", ")
            )));
        }
        let Some(v) = variant else {
            return of_model().next().ok_or_else(|| Error::InvalidArgument(format!("unknown model '{model}'")));
        };
        if let Some(a) = of_model().find(|a| a.info().variant == Some(v)) {
            return Ok(a);
        }
        let variants: Vec<String> = of_model().filter_map(|a| a.info().variant).map(|v| format!("'{v}'")).collect();
        if variants.is_empty() {
            return Err(Error::InvalidArgument(format!("model '{model}' has no variant '{v}'")));
        }
        let display = of_model().next().map_or(model, |a| a.info().display);
        Err(Error::InvalidArgument(format!("unknown {display} variant '{v}' (expected {})", variants.join(" or "))))
    }

    pub fn is_denoiser(&self) -> bool {
        self.info().denoiser
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;
    /// Accepts `name()` ("hardnet-original") as well as a bare model name.
    fn from_str(s: &str) -> Result<Arch> {
        match s.split_once('-') {
            Some((m, v)) => Arch::parse(m, Some(v)),
            None => Arch::parse(s, None),
        }
    }
}

impl From<Arch> for String {
    fn from(a: Arch) -> String {
        a.name().to_string()
    }
}

impl TryFrom<String> for Arch {
    type Error = Error;
    fn try_from(s: String) -> Result<Arch> {
        s.parse()
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One row of a model summary (Keras `model.summary()` style).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRow {
    pub name: String,
    pub kind: String,
    /// Output shape of one image, `(c, h, w)`.
    pub out_shape: (usize, usize, usize),
    /// Parameters including BatchNorm running statistics (as Keras counts them).
    pub params: usize,
    /// Of which trainable.
    pub trainable: usize,
}

impl LayerRow {
    fn new(name: String, kind: String, out_shape: (usize, usize, usize), params: usize, trainable: usize) -> Self {
        LayerRow { name, kind, out_shape, params, trainable }
    }

    fn plain(name: &str, kind: &str, out_shape: (usize, usize, usize)) -> Self {
        LayerRow::new(name.into(), kind.into(), out_shape, 0, 0)
    }
}

/// A network: its graph, parameter layout and geometry (the parameters themselves are the caller's arena).
pub struct Model {
    arch: Arch,
    graph: Graph,
    dropout: DropoutConfig,
}

/// Buffers for running one model on batches of exactly `batch()` patches.
pub struct Workspace {
    arch: Arch,
    n: usize,
    bufs: exec::Buffers,
    /// The input of the last training forward: the first convolution's weight gradient needs it.
    input: Vec<f32>,
    /// Whether the buffers hold a training forward, which `backward` needs.
    trained: bool,
    /// Whether the buffers can hold a training forward (`Model::workspace`,
    /// not `Model::inference_workspace`).
    train: bool,
    /// This rank's share of a global batch (data-parallel training).
    shard: Option<Shard>,
    /// An inference workspace made for a pool (`Model::inference_workspace_for`):
    /// the batch's contiguous parts, each with buffers of its own (`bufs` is
    /// then empty), and their outputs in order.
    parts: Vec<Workspace>,
    out: Vec<f32>,
}

impl Workspace {
    pub fn batch(&self) -> usize {
        self.n
    }

    /// Vouches for the parameters of later `Model::forward_eval` calls on
    /// this workspace: every call under `Some(key)` passes parameters of the
    /// same bits, so the weights prepared for its kernels (Winograd
    /// transforms, int8 and bf16 weights) are reused without comparing the
    /// parameters, which at one patch cost as much memory traffic as an f32
    /// layer (`layers::prepared`). A new key, or `None` (the default:
    /// compare on every call), makes the next call compare once. The caller
    /// keeps the promise: `net::Network` uses a counter its `params_mut` advances.
    pub fn vouch_weights(&mut self, key: Option<WeightsKey>) {
        self.bufs.vouch_weights(key);
        self.parts.iter_mut().for_each(|p| p.vouch_weights(key));
    }

    /// Makes training passes on this workspace one rank's share of a global
    /// batch: BatchNorm statistics over all ranks, dropout masks as drawn for
    /// the whole batch. `None` (the default) is one process.
    pub fn set_shard(&mut self, shard: Option<Shard>) -> Result<()> {
        if let Some(s) = &shard
            && (s.groups == 0 || !self.n.is_multiple_of(s.groups) || s.offset + self.n / s.groups > s.total)
        {
            return Err(Error::Shape(format!(
                "a shard of {} patches ({} per item) at item {} does not fit a global batch of {} items",
                self.n, s.groups, s.offset, s.total
            )));
        }
        self.bufs.scratch.comm = shard.as_ref().map(|s| s.comm.clone());
        self.shard = shard;
        Ok(())
    }
}

impl Model {
    pub fn new(arch: Arch) -> Result<Model> {
        let mut b = GraphBuilder::new(PATCH);
        let out = arch.describe(&mut b)?;
        let graph = b.finish(out)?;
        let want = if arch.is_denoiser() { PATCH_LEN } else { DESC_LEN };
        if graph.shape(out, 1).len() != want {
            return Err(Error::Shape(format!(
                "{arch}: the graph's output has {} elements, not {want}",
                graph.shape(out, 1)
            )));
        }
        Ok(Model { arch, graph, dropout: DropoutConfig::new(HARDNET_DROPOUT)? })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }
    pub fn layout(&self) -> &ParamLayout {
        &self.graph.layout
    }
    /// All elements of the arena, running statistics included.
    pub fn param_count(&self) -> usize {
        self.graph.layout.len()
    }
    pub fn trainable_count(&self) -> usize {
        self.graph.layout.trainable_len()
    }
    /// Elements of one output: 1x32x32 for denoisers, 128 for HardNet.
    pub fn out_len(&self) -> usize {
        if self.arch.is_denoiser() { PATCH_LEN } else { DESC_LEN }
    }
    /// HardNet's dropout rate in training (0.3); the denoisers have no dropout.
    pub fn dropout(&self) -> f32 {
        self.dropout.p
    }
    /// Sets the dropout rate, in [0, 1) (0 makes training forward deterministic, e.g. for gradient checks).
    pub fn set_dropout(&mut self, p: f32) -> Result<()> {
        self.dropout = DropoutConfig::new(p)?;
        Ok(())
    }

    /// The network's description, which every backend executes.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn graph(&self) -> &Graph {
        &self.graph
    }

    fn blocks(&self) -> &[Block] {
        &self.graph.blocks
    }

    /// A fresh arena with PyTorch's default initialisation, deterministic for `rng`'s state.
    pub fn init_params(&self, rng: &mut Rng) -> Vec<f32> {
        let mut params = vec![0.0; self.param_count()];
        for b in self.blocks() {
            b.init(&mut params, rng);
        }
        params
    }

    /// A zeroed gradient arena.
    pub fn zero_grads(&self) -> Vec<f32> {
        vec![0.0; self.param_count()]
    }

    pub fn layer_table(&self) -> Vec<LayerRow> {
        self.graph.rows()
    }

    /// Buffers for training and inference on batches of `batch` patches;
    /// call inside the rayon pool that will run the model.
    pub fn workspace(&self, batch: usize) -> Result<Workspace> {
        self.workspace_for(batch, ConvPass::Train)
    }

    /// Buffers for `forward_eval` only, on batches of `batch` patches: no
    /// pre-activations, gradients or dropout masks (a HardNet batch of 256
    /// needs less than half the memory of `workspace`). `forward_train`
    /// refuses it; `forward_eval` gives the same bits with either.
    pub fn inference_workspace(&self, batch: usize) -> Result<Workspace> {
        self.workspace_for(batch, ConvPass::Infer)
    }

    fn workspace_for(&self, batch: usize, pass: ConvPass) -> Result<Workspace> {
        if batch == 0 {
            return Err(Error::Shape("a model workspace needs a batch of at least one patch".into()));
        }
        let train = pass == ConvPass::Train;
        Ok(Workspace {
            arch: self.arch,
            n: batch,
            bufs: exec::Buffers::new(&self.graph, batch, pass),
            input: vec![0.0; if train { batch * PATCH_LEN } else { 0 }],
            trained: false,
            train,
            shard: None,
            parts: Vec::new(),
            out: Vec::new(),
        })
    }

    /// As `inference_workspace_in`, for running on a pool of `threads`: a
    /// batch of two patches or more is cut into `threads` contiguous parts
    /// (fewer if it has fewer patches, `MAX_INFERENCE_PARTS` at most), each
    /// with buffers of its own, and `forward_eval` runs the parts side by
    /// side, each through every layer.
    ///
    /// Why: split layer by layer, a batch's images move between the cores
    /// from one layer to the next (each layer hands its shards to whichever
    /// thread is free), so each layer reads its input from the other core's
    /// cache or from memory, and every layer waits for its slowest shard; a
    /// part stays on one core, its activations in that core's cache. An idle
    /// thread still takes shards of another part. The bits are those of one
    /// workspace: a patch's output does not depend on the batch it runs in.
    pub fn inference_workspace_for(
        &self,
        batch: usize,
        precision: Precision,
        calib: Option<&Calibration>,
        threads: usize,
    ) -> Result<Workspace> {
        let parts = threads.min(batch).min(MAX_INFERENCE_PARTS);
        if parts <= 1 {
            return self.inference_workspace_in(batch, precision, calib);
        }
        let part = batch.div_ceil(parts);
        let parts = (0..batch)
            .step_by(part)
            .map(|p0| self.inference_workspace_in(part.min(batch - p0), precision, calib))
            .collect::<Result<Vec<_>>>()?;
        Ok(Workspace {
            arch: self.arch,
            n: batch,
            bufs: exec::Buffers::new(&self.graph, 0, ConvPass::Infer),
            input: Vec::new(),
            trained: false,
            train: false,
            shard: None,
            parts,
            out: vec![0.0; batch * self.out_len()],
        })
    }

    /// As `inference_workspace`, running in `precision`: int8 runs the
    /// blocks `calib` covers, each with its input quantization (`quant`).
    pub fn inference_workspace_in(
        &self,
        batch: usize,
        precision: Precision,
        calib: Option<&Calibration>,
    ) -> Result<Workspace> {
        let mut ws = self.inference_workspace(batch)?;
        match precision {
            Precision::F32 => {}
            Precision::Int8 => {
                let calib = calib.ok_or_else(|| {
                    Error::InvalidArgument(format!("int8 inference of this {} needs a calibration", self.arch))
                })?;
                self.check_calibration(calib)?;
                ws.bufs.set_precision(&self.graph, precision, Some(calib));
            }
            Precision::Bf16 => ws.bufs.set_precision(&self.graph, precision, None),
        }
        Ok(ws)
    }

    /// Errors unless every block `calib` covers may run in int8
    /// (`Conv2d::q8_candidate`); the blocks it does not cover stay f32.
    pub fn check_calibration(&self, calib: &Calibration) -> Result<()> {
        let candidates: Vec<usize> = self.blocks().iter().filter(|b| b.conv.q8_candidate()).map(|b| b.index).collect();
        let stray: Vec<String> =
            calib.iter().map(|(b, _)| b).filter(|b| !candidates.contains(b)).map(|b| format!("conv{b}")).collect();
        if !stray.is_empty() {
            let names = candidates.iter().map(|i| format!("conv{i}")).collect::<Vec<_>>().join(", ");
            return Err(Error::InvalidArgument(format!(
                "the int8 calibration covers [{}], which a {} does not run in int8 (it may: [{names}])",
                stray.join(", "),
                self.arch
            )));
        }
        Ok(())
    }

    /// Calibrates int8 inference of the blocks `layers` chooses on
    /// `patches` (`n x 1 x 32 x 32`, n >= 1) with f32 eval passes over
    /// `params` (see `quant`): deterministic for the same patches, whatever
    /// the thread count.
    pub fn calibrate(&self, params: &[f32], patches: &[f32], layers: Int8Layers) -> Result<Calibration> {
        let n = patches.len() / PATCH_LEN;
        if n == 0 || !patches.len().is_multiple_of(PATCH_LEN) {
            return Err(Error::Shape(format!("calibration needs whole 32x32 patches, got {} values", patches.len())));
        }
        const BATCH: usize = 128;
        let chosen: Vec<usize> =
            self.blocks().iter().filter(|b| layers.covers(self.arch, &b.conv)).map(|b| b.index).collect();
        let mut col = quant::Collector::new(chosen.iter().copied());
        if chosen.is_empty() {
            // No block chosen (DnCNN keeping its Winograd layers): nothing to measure.
            return col.finish();
        }
        let mut ws = self.inference_workspace(BATCH.min(n))?;
        for chunk in patches.chunks(BATCH * PATCH_LEN) {
            if chunk.len() / PATCH_LEN != ws.batch() {
                ws = self.inference_workspace(chunk.len() / PATCH_LEN)?;
            }
            // Every block's input kept, an upsampled one included.
            ws.bufs.set_fusion(&self.graph, false);
            self.forward_eval(&mut ws, params, chunk)?;
            for (block, input) in ws.bufs.block_inputs(&self.graph, chunk)? {
                if chosen.contains(&block) {
                    col.add(block, input)?;
                }
            }
        }
        col.finish()
    }

    fn check(&self, ws: &Workspace, params: usize, x: usize) -> Result<()> {
        if ws.arch != self.arch {
            return Err(Error::Shape(format!("a {} workspace used with a {} model", ws.arch, self.arch)));
        }
        check_len("model parameters", params, self.param_count())?;
        check_len("model input", x, ws.n * PATCH_LEN)
    }

    /// Training forward of `x` (`N x 1 x 32 x 32`): batch statistics, running
    /// stats updated in `params`, dropout masks drawn from `rng`. Returns the output held in `ws`.
    pub fn forward_train<'w>(
        &self,
        ws: &'w mut Workspace,
        params: &mut [f32],
        x: &[f32],
        rng: &mut Rng,
    ) -> Result<&'w [f32]> {
        self.check(ws, params.len(), x.len())?;
        if !ws.train {
            return Err(Error::InvalidArgument(
                "a training forward needs a workspace from Model::workspace, not Model::inference_workspace".into(),
            ));
        }
        ws.trained = false;
        ws.input.copy_from_slice(x);
        let pass = block::Pass::Train(params, ws.shard.as_ref());
        exec::forward(&self.graph, &mut ws.bufs, pass, &ws.input, Some((rng, &self.dropout)))?;
        ws.trained = true;
        exec::output(&self.graph, &ws.bufs, true)
    }

    /// Inference forward: running statistics, no dropout. Returns the output held in `ws`.
    pub fn forward_eval<'w>(&self, ws: &'w mut Workspace, params: &[f32], x: &[f32]) -> Result<&'w [f32]> {
        self.check(ws, params.len(), x.len())?;
        ws.trained = false;
        if ws.parts.is_empty() {
            return exec::forward(&self.graph, &mut ws.bufs, block::Pass::Eval(params), x, None);
        }
        // Parts of `part` patches, the last one shorter (`inference_workspace_for`).
        let (part, out_len) = (ws.parts[0].n, self.out_len());
        let parts =
            ws.parts.par_iter_mut().zip(x.par_chunks(part * PATCH_LEN)).zip(ws.out.par_chunks_mut(part * out_len));
        parts.try_for_each(|((p, x), o)| {
            o.copy_from_slice(exec::forward(&self.graph, &mut p.bufs, block::Pass::Eval(params), x, None)?);
            Ok::<_, Error>(())
        })?;
        Ok(&ws.out)
    }

    /// Accumulates into `grads` the gradient of a loss whose gradient w.r.t.
    /// the output is `dout`, after a `forward_train` on the same `ws` with
    /// the same `params`. The input gradient is not computed.
    pub fn backward(&self, ws: &mut Workspace, params: &[f32], grads: &mut [f32], dout: &[f32]) -> Result<()> {
        self.backward_impl(ws, params, grads, dout, None)
    }

    /// As [`Model::backward`], and also accumulates the gradient w.r.t. the
    /// input (`N x 1 x 32 x 32`) into `dx`: how a loss on this model's output
    /// reaches a network in front of it (joint denoiser + descriptor training).
    pub fn backward_with_input(
        &self,
        ws: &mut Workspace,
        params: &[f32],
        grads: &mut [f32],
        dout: &[f32],
        dx: &mut [f32],
    ) -> Result<()> {
        check_len("model input gradient", dx.len(), ws.n * PATCH_LEN)?;
        self.backward_impl(ws, params, grads, dout, Some(dx))
    }

    fn backward_impl(
        &self,
        ws: &mut Workspace,
        params: &[f32],
        grads: &mut [f32],
        dout: &[f32],
        dx: Option<&mut [f32]>,
    ) -> Result<()> {
        self.check(ws, params.len(), ws.input.len())?;
        check_len("model gradients", grads.len(), self.param_count())?;
        check_len("model output gradient", dout.len(), ws.n * self.out_len())?;
        if !ws.trained {
            return Err(Error::InvalidArgument("backward needs a training forward on the same workspace".into()));
        }
        exec::backward(&self.graph, &mut ws.bufs, params, grads, &ws.input, dout, dx, &self.dropout)
    }
}
