//! The three networks of the pipeline as forward/backward passes over one
//! parameter arena: the shallow U-Net and DnCNN denoisers and the HardNet
//! descriptor (Keras baseline and kornia's original). Inputs are always
//! `N x 1 x 32 x 32` patches; denoisers return `N x 1 x 32 x 32`, HardNet `N x 128`.
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
mod hardnet;
mod unet;

use crate::dist::Shard;
use crate::error::{Error, Result, check_len};
use crate::layers::conv2d::ConvPass;
use crate::layers::dropout::DropoutConfig;
use crate::params::ParamLayout;
use crate::rng::Rng;
use block::Block;

/// Side of the square input patches.
pub const PATCH: usize = 32;
/// Elements of one input patch (`1 x 32 x 32`).
pub const PATCH_LEN: usize = PATCH * PATCH;
/// HardNet descriptor length.
pub const DESC_LEN: usize = 128;
/// HardNet's dropout rate before the last convolution.
pub const HARDNET_DROPOUT: f32 = 0.3;

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

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::Unet, Arch::Dncnn, Arch::HardNetBaseline, Arch::HardNetOriginal];

    pub fn name(&self) -> &'static str {
        match self {
            Arch::Unet => "unet",
            Arch::Dncnn => "dncnn",
            Arch::HardNetBaseline => "hardnet-baseline",
            Arch::HardNetOriginal => "hardnet-original",
        }
    }

    /// From a model name ("unet", "dncnn", "hardnet") and, for HardNet only, a
    /// variant ("baseline", the default, or "original").
    pub fn parse(model: &str, variant: Option<&str>) -> Result<Arch> {
        match (model, variant) {
            ("unet", None) => Ok(Arch::Unet),
            ("dncnn", None) => Ok(Arch::Dncnn),
            ("hardnet", None | Some("baseline")) => Ok(Arch::HardNetBaseline),
            ("hardnet", Some("original")) => Ok(Arch::HardNetOriginal),
            ("hardnet", Some(v)) => Err(Error::InvalidArgument(format!(
                "unknown HardNet variant '{v}' (expected 'baseline' or 'original')"
            ))),
            ("unet" | "dncnn", Some(v)) => Err(Error::InvalidArgument(format!("model '{model}' has no variant '{v}'"))),
            _ => Err(Error::InvalidArgument(format!("unknown model '{model}' (expected unet, dncnn or hardnet)"))),
        }
    }

    pub fn is_denoiser(&self) -> bool {
        matches!(self, Arch::Unet | Arch::Dncnn)
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

enum Inner {
    Unet(Box<unet::Unet>),
    Dncnn(Box<dncnn::Dncnn>),
    HardNet(Box<hardnet::HardNet>),
}

/// A network: its parameter layout and geometry (the parameters themselves are the caller's arena).
pub struct Model {
    arch: Arch,
    net: Inner,
    layout: ParamLayout,
    dropout: DropoutConfig,
}

enum InnerWs {
    Unet(Box<unet::UnetWs>),
    Dncnn(Box<dncnn::DncnnWs>),
    HardNet(Box<hardnet::HardNetWs>),
}

/// Buffers for running one model on batches of exactly `batch()` patches.
pub struct Workspace {
    arch: Arch,
    n: usize,
    net: InnerWs,
    /// The input of the last training forward: the first convolution's weight gradient needs it.
    input: Vec<f32>,
    /// Whether the buffers hold a training forward, which `backward` needs.
    trained: bool,
    /// Whether the buffers can hold a training forward (`Model::workspace`,
    /// not `Model::inference_workspace`).
    train: bool,
    /// This rank's share of a global batch (data-parallel training).
    shard: Option<Shard>,
}

impl Workspace {
    pub fn batch(&self) -> usize {
        self.n
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
        let comm = shard.as_ref().map(|s| s.comm.clone());
        match &mut self.net {
            InnerWs::Unet(w) => w.scratch.comm = comm,
            InnerWs::Dncnn(w) => w.scratch.comm = comm,
            InnerWs::HardNet(w) => w.scratch.comm = comm,
        }
        self.shard = shard;
        Ok(())
    }
}

impl Model {
    pub fn new(arch: Arch) -> Result<Model> {
        let mut layout = ParamLayout::new();
        let net = match arch {
            Arch::Unet => Inner::Unet(Box::new(unet::Unet::new(&mut layout)?)),
            Arch::Dncnn => Inner::Dncnn(Box::new(dncnn::Dncnn::new(&mut layout)?)),
            Arch::HardNetBaseline => Inner::HardNet(Box::new(hardnet::HardNet::new(&mut layout, false)?)),
            Arch::HardNetOriginal => Inner::HardNet(Box::new(hardnet::HardNet::new(&mut layout, true)?)),
        };
        Ok(Model { arch, net, layout, dropout: DropoutConfig::new(HARDNET_DROPOUT)? })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    /// All elements of the arena, running statistics included.
    pub fn param_count(&self) -> usize {
        self.layout.len()
    }
    pub fn trainable_count(&self) -> usize {
        self.layout.trainable_len()
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

    pub(crate) fn blocks(&self) -> &[Block] {
        match &self.net {
            Inner::Unet(m) => m.blocks(),
            Inner::Dncnn(m) => m.blocks(),
            Inner::HardNet(m) => m.blocks(),
        }
    }

    /// A fresh arena with PyTorch's default initialisation, deterministic for `rng`'s state.
    pub fn init_params(&self, rng: &mut Rng) -> Vec<f32> {
        let mut params = vec![0.0; self.layout.len()];
        for b in self.blocks() {
            b.init(&mut params, rng);
        }
        params
    }

    /// A zeroed gradient arena.
    pub fn zero_grads(&self) -> Vec<f32> {
        vec![0.0; self.layout.len()]
    }

    pub fn layer_table(&self) -> Vec<LayerRow> {
        match &self.net {
            Inner::Unet(m) => m.rows(),
            Inner::Dncnn(m) => m.rows(),
            Inner::HardNet(m) => m.rows(),
        }
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
        let net = match &self.net {
            Inner::Unet(m) => InnerWs::Unet(Box::new(m.workspace(batch, pass))),
            Inner::Dncnn(m) => InnerWs::Dncnn(Box::new(m.workspace(batch, pass))),
            Inner::HardNet(m) => InnerWs::HardNet(Box::new(m.workspace(batch, pass))),
        };
        let train = pass == ConvPass::Train;
        Ok(Workspace {
            arch: self.arch,
            n: batch,
            net,
            input: vec![0.0; if train { batch * PATCH_LEN } else { 0 }],
            trained: false,
            train,
            shard: None,
        })
    }

    fn check(&self, ws: &Workspace, params: usize, x: usize) -> Result<()> {
        if ws.arch != self.arch {
            return Err(Error::Shape(format!("a {} workspace used with a {} model", ws.arch, self.arch)));
        }
        check_len("model parameters", params, self.layout.len())?;
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
        let (x, pass) = (&ws.input, block::Pass::Train(params, ws.shard.as_ref()));
        let out = match (&self.net, &mut ws.net) {
            (Inner::Unet(m), InnerWs::Unet(w)) => m.forward(w, pass, x)?,
            (Inner::Dncnn(m), InnerWs::Dncnn(w)) => m.forward(w, pass, x)?,
            (Inner::HardNet(m), InnerWs::HardNet(w)) => m.forward(w, pass, x, Some((rng, &self.dropout)))?,
            _ => return Err(Error::Shape("workspace of another architecture".into())),
        };
        ws.trained = true;
        Ok(out)
    }

    /// Inference forward: running statistics, no dropout. Returns the output held in `ws`.
    pub fn forward_eval<'w>(&self, ws: &'w mut Workspace, params: &[f32], x: &[f32]) -> Result<&'w [f32]> {
        self.check(ws, params.len(), x.len())?;
        ws.trained = false;
        let pass = block::Pass::Eval(params);
        match (&self.net, &mut ws.net) {
            (Inner::Unet(m), InnerWs::Unet(w)) => m.forward(w, pass, x),
            (Inner::Dncnn(m), InnerWs::Dncnn(w)) => m.forward(w, pass, x),
            (Inner::HardNet(m), InnerWs::HardNet(w)) => m.forward(w, pass, x, None),
            _ => Err(Error::Shape("workspace of another architecture".into())),
        }
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
        check_len("model gradients", grads.len(), self.layout.len())?;
        check_len("model output gradient", dout.len(), ws.n * self.out_len())?;
        if !ws.trained {
            return Err(Error::InvalidArgument("backward needs a training forward on the same workspace".into()));
        }
        let x = &ws.input;
        match (&self.net, &mut ws.net) {
            (Inner::Unet(m), InnerWs::Unet(w)) => m.backward(w, params, grads, x, dout, dx),
            (Inner::Dncnn(m), InnerWs::Dncnn(w)) => m.backward(w, params, grads, x, dout, dx),
            (Inner::HardNet(m), InnerWs::HardNet(w)) => m.backward(w, params, grads, x, dout, &self.dropout, dx),
            _ => Err(Error::Shape("workspace of another architecture".into())),
        }
    }
}
