//! Throughput of one model in training or inference (what `nhpatch bench`
//! prints), after a warm-up, as the median of five timed repetitions.
//! Training steps are the ones `nhpatch run` takes with the seed preset's
//! optimizer: denoisers on (noisy, clean) batches with L1, HardNet on
//! triplets with the triplet loss, or (`loss: Some(LossKind::HardNet)`) on
//! pairs with the HardNet loss and the `hardnet` recipe's SGD, as the default
//! recipe trains. [`Workload`] is the CPU's workload, built once and stepped
//! by whatever times it. On a device the same steps run through
//! `nhpatch::gpu`: a training step uploads the batch and reads the loss back,
//! an inference batch uploads the patches and reads the outputs back, so each
//! repetition ends synchronised with the device.
//!
//! Runs on the caller's rayon pool (`threads::pool(..).install(..)`).

use crate::error::{Error, Result};
use crate::gpu::{Accel, Device};
use crate::loss::hardnet::{HardNetLoss, HardNetWorkspace};
use crate::loss::triplet::TripletLoss;
use crate::loss::{LossKind, PointLoss};
use crate::models::quant::{Int8Layers, Precision};
use crate::models::{Arch, DESC_LEN, Model, PATCH_LEN, WeightsKey, Workspace};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::rng::Rng;
use crate::train::config::TrainConfig;
use std::ops::Range;
use std::time::Instant;

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Optimizer steps: patches/s for denoisers, triplets/s (pairs/s with the HardNet loss) for HardNet.
    Train,
    /// Eval forwards: patches/s.
    Infer,
}

/// A throughput measurement.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub arch: Arch,
    pub mode: Mode,
    /// Patches per batch (inference, denoiser training) or triplets per batch (HardNet training).
    pub batch: usize,
    /// Measured seconds, split into 5 repetitions.
    pub seconds: f64,
    pub device: Device,
    /// The training loss: `None` is the model's usual one (L1 for denoisers,
    /// triplet for HardNet); `Some(LossKind::HardNet)` trains pairs with the
    /// `hardnet` recipe's loss and optimizer, as the default recipe does.
    pub loss: Option<LossKind>,
    /// The arithmetic of an inference benchmark (CPU only); int8 is
    /// calibrated on the benchmark's own batch first.
    pub precision: Precision,
    /// HardNet's dropout rate in a training benchmark: `None` is the rate
    /// of the recipe the step mirrors (the `hardnet` recipe's with the
    /// HardNet loss, the model's own with triplets).
    pub dropout: Option<f32>,
}

impl BenchConfig {
    /// `batch` of `arch` in `mode` on the CPU for 5 s.
    pub fn new(arch: Arch, mode: Mode, batch: usize) -> Self {
        BenchConfig {
            arch,
            mode,
            batch,
            seconds: 5.0,
            device: Device::Cpu,
            loss: None,
            precision: Precision::F32,
            dropout: None,
        }
    }

    /// The default batch of a mode: 128 patches (inference), 50 (training).
    pub fn default_batch(mode: Mode) -> usize {
        match mode {
            Mode::Infer => 128,
            Mode::Train => 50,
        }
    }
}

/// One benchmark's result.
#[derive(Clone, Debug)]
pub struct Throughput {
    /// "patches/s" or "triplets/s".
    pub unit: &'static str,
    pub median: f64,
    /// The five repetitions, ascending.
    pub reps: Vec<f64>,
    /// The device's own name, when an inference ran on one.
    pub device_name: Option<String>,
}

/// Runs `step` (which processes `items` items, counted in `unit`) for about `seconds`, after one warm-up call.
fn measure(seconds: f64, items: usize, unit: &'static str, mut step: impl FnMut() -> Result<()>) -> Result<Throughput> {
    step()?;
    let per_rep = (seconds / 5.0).max(0.05);
    let mut reps = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0usize;
        while n == 0 || t.elapsed().as_secs_f64() < per_rep {
            step()?;
            n += items;
        }
        reps.push(n as f64 / t.elapsed().as_secs_f64());
    }
    reps.sort_by(|a, b| a.total_cmp(b));
    Ok(Throughput { unit, median: reps[2], reps, device_name: None })
}

/// The loss a configuration trains with: its own, or the model's usual one
/// (L1 for denoisers, the triplet loss for HardNet).
fn loss_of(cfg: &BenchConfig) -> Result<LossKind> {
    let arch = cfg.arch;
    let loss = cfg.loss.unwrap_or(if arch.is_denoiser() { LossKind::L1 } else { LossKind::Triplet });
    let fits = if arch.is_denoiser() { loss.point().is_ok() } else { loss.tuple(1.0).is_ok() };
    if !fits {
        let expected = if arch.is_denoiser() { "l1 or mse" } else { "triplet or hardnet" };
        return Err(Error::InvalidArgument(format!(
            "{arch} does not train with the {loss} loss (expected {expected})"
        )));
    }
    Ok(loss)
}

/// The stage settings a training workload mirrors: the seed preset's, or
/// with the HardNet loss the `hardnet` recipe's (its SGD and dropout rate).
fn train_config(arch: Arch, loss: LossKind) -> TrainConfig {
    use crate::train::preset::{Preset, denoiser_preset, descriptor_preset};
    use crate::train::recipe::Recipe;
    if arch.is_denoiser() {
        return denoiser_preset(Preset::Seed, arch, "a", 1);
    }
    let mut cfg = descriptor_preset(Preset::Seed, arch, "a", crate::train::InputKind::Noisy);
    if loss == LossKind::HardNet {
        Recipe::Hardnet.apply(&mut cfg, Preset::Seed);
    }
    cfg.arch = arch;
    cfg
}

/// A throughput unit: "patches/s", "triplets/s" or "pairs/s".
fn unit_of(mode: Mode, loss: LossKind) -> &'static str {
    match (mode, loss) {
        (Mode::Infer, _) | (Mode::Train, LossKind::L1 | LossKind::Mse) => "patches/s",
        (Mode::Train, LossKind::Triplet) => "triplets/s",
        (Mode::Train, LossKind::HardNet) => "pairs/s",
    }
}

/// A denoiser's training target for the benchmark's random input: a little darker.
fn denoise_target(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (v - 10.0).max(0.0)).collect()
}

/// Checks `cfg` and measures its workload (see the module header).
pub fn measure_model(cfg: &BenchConfig) -> Result<Throughput> {
    if !(cfg.seconds > 0.0 && cfg.seconds.is_finite()) {
        return Err(Error::InvalidArgument(format!("--seconds {} must be positive", cfg.seconds)));
    }
    if cfg.precision != Precision::F32 && (cfg.mode == Mode::Train || !cfg.device.is_cpu()) {
        return Err(Error::Unsupported(format!("{} runs CPU inference only", cfg.precision)));
    }
    match cfg.device {
        Device::Cpu => {
            let mut w = Workload::new(cfg)?;
            measure(cfg.seconds, w.items(), w.unit(), || w.step())
        }
        _ => on_device(cfg),
    }
}

/// What a workload starts from on either backend, after `cfg` is checked:
/// the loss, the model and its initial parameters, one fixed random batch
/// (`patches` patches: `batch`, or `k x batch` for a descriptor loss over
/// k-tuples), the RNG that drew them (dropout continues it) and the
/// optimizer a training step uses.
struct Setup {
    loss: LossKind,
    model: Model,
    optimizer: OptimizerConfig,
    params: Vec<f32>,
    x: Vec<f32>,
    patches: usize,
    rng: Rng,
    unit: &'static str,
}

fn setup(cfg: &BenchConfig) -> Result<Setup> {
    if cfg.batch == 0 {
        return Err(Error::InvalidArgument("--batch must be at least 1".into()));
    }
    cfg.device.check_available()?;
    let loss = loss_of(cfg)?;
    let stage = train_config(cfg.arch, loss);
    let mut model = match cfg.mode {
        Mode::Train => stage.model()?,
        Mode::Infer => Model::new(cfg.arch)?,
    };
    if let Some(p) = cfg.dropout {
        if cfg.mode != Mode::Train || cfg.arch.is_denoiser() {
            return Err(Error::InvalidArgument("--dropout applies to HardNet training only".into()));
        }
        model.set_dropout(p)?;
    }
    let mut rng = Rng::new(1);
    let params = model.init_params(&mut rng);
    let patches = match cfg.mode {
        Mode::Train if !cfg.arch.is_denoiser() => loss.tuple(1.0)?.k() * cfg.batch,
        _ => cfg.batch,
    };
    let x: Vec<f32> = (0..patches * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect();
    Ok(Setup { loss, model, optimizer: stage.optimizer, params, x, patches, rng, unit: unit_of(cfg.mode, loss) })
}

fn on_device(cfg: &BenchConfig) -> Result<Throughput> {
    let (arch, batch) = (cfg.arch, cfg.batch);
    let Setup { loss, model, optimizer, params, x, patches, mut rng, unit } = setup(cfg)?;
    match cfg.mode {
        Mode::Infer => {
            let mut accel = Accel::open(cfg.device, &model, &params)?;
            let mut out = vec![0.0f32; batch * model.out_len()];
            let t = measure(cfg.seconds, batch, unit, || accel.forward(&x, &mut out))?;
            Ok(Throughput { device_name: Some(accel.name().to_string()), ..t })
        }
        Mode::Train => {
            let mut opt = Optimizer::new(optimizer, params.len())?;
            let mut tr = crate::gpu::trainer(cfg.device, &model, &params, &opt, patches)?
                .ok_or_else(|| Error::InvalidArgument("a device benchmark needs a device".into()))?;
            if arch.is_denoiser() {
                let (target, point) = (denoise_target(&x), loss.point()?);
                measure(cfg.seconds, batch, unit, || tr.step_denoise(&x, &target, point, &mut opt).map(|_| ()))
            } else {
                let tuple = loss.tuple(1.0)?;
                measure(cfg.seconds, batch, unit, || tr.step_descriptor(&x, tuple, &mut rng, &mut opt).map(|_| ()))
            }
        }
    }
}

/// What a training step ends in.
enum Head {
    Point { loss: PointLoss, target: Vec<f32> },
    Triplet(TripletLoss),
    Pairs(HardNetLoss, HardNetWorkspace),
}

/// What a training workload owns beside the model's workspace.
struct Training {
    head: Head,
    opt: Optimizer,
    ranges: Vec<Range<usize>>,
    grads: Vec<f32>,
    dout: Vec<f32>,
}

/// One model's benchmark workload on the CPU, built once: the model, its
/// parameters, a fixed random batch and every buffer a step needs, so that
/// [`Workload::step`] allocates nothing and can be timed by any harness
/// (`nhpatch bench`, the criterion benches in `benches/models.rs`).
///
/// A step is one `forward_eval` of `batch` patches (inference) or one
/// optimizer step (training): zero_grad, `forward_train`, the loss, backward,
/// the update. Runs on the caller's rayon pool.
pub struct Workload {
    model: Model,
    params: Vec<f32>,
    ws: Workspace,
    x: Vec<f32>,
    rng: Rng,
    batch: usize,
    unit: &'static str,
    train: Option<Training>,
}

impl Workload {
    /// Builds `cfg`'s workload on the CPU (`cfg.seconds` is not used; `cfg.device` is only checked).
    pub fn new(cfg: &BenchConfig) -> Result<Workload> {
        let batch = cfg.batch;
        let Setup { loss, model, optimizer, params, x, patches, rng, unit } = setup(cfg)?;
        if cfg.mode == Mode::Infer {
            let calib = match cfg.precision {
                Precision::Int8 => Some(model.calibrate(&params, &x, Int8Layers::Auto)?),
                Precision::F32 | Precision::Bf16 => None,
            };
            let threads = rayon::current_num_threads();
            let mut ws = model.inference_workspace_for(batch, cfg.precision, calib.as_ref(), threads)?;
            // An inference workload never changes its parameters: vouched for
            // once, as `Network` does for its own (no comparison per call).
            ws.vouch_weights(Some(WeightsKey(0)));
            return Ok(Workload { model, params, ws, x, rng, batch, unit, train: None });
        }
        let head = match loss {
            LossKind::L1 | LossKind::Mse => Head::Point { loss: loss.point()?, target: denoise_target(&x) },
            LossKind::Triplet => Head::Triplet(TripletLoss::new(1.0)?),
            LossKind::HardNet => Head::Pairs(HardNetLoss::new(1.0, true)?, HardNetWorkspace::new(batch)),
        };
        let opt = Optimizer::new(optimizer, params.len())?;
        let train = Training {
            head,
            opt,
            ranges: model.layout().trainable_ranges(),
            grads: model.zero_grads(),
            dout: vec![0.0f32; patches * model.out_len()],
        };
        let ws = model.workspace(patches)?;
        Ok(Workload { model, params, ws, x, rng, batch, unit, train: Some(train) })
    }

    /// Items one step processes: patches, triplets or pairs (`batch`).
    pub fn items(&self) -> usize {
        self.batch
    }

    /// "patches/s", "triplets/s" or "pairs/s".
    pub fn unit(&self) -> &'static str {
        self.unit
    }

    /// One inference batch or one optimizer step.
    pub fn step(&mut self) -> Result<()> {
        let Workload { model, params, ws, x, rng, batch, train, .. } = self;
        let Some(t) = train else {
            return model.forward_eval(ws, params, x).map(|_| ());
        };
        t.grads.fill(0.0);
        t.dout.fill(0.0);
        let out = model.forward_train(ws, params, x, rng)?;
        let d = *batch * DESC_LEN;
        match &mut t.head {
            Head::Point { loss, target } => {
                loss.cpu(&mut t.dout, out, target)?;
            }
            Head::Triplet(loss) => {
                let (ga, rest) = t.dout.split_at_mut(d);
                let (gp, gn) = rest.split_at_mut(d);
                loss.loss(ga, gp, gn, &out[..d], &out[d..2 * d], &out[2 * d..], *batch, DESC_LEN)?;
            }
            Head::Pairs(loss, lws) => {
                let (ga, gp) = t.dout.split_at_mut(d);
                loss.loss(ga, gp, lws, &out[..d], &out[d..], *batch, DESC_LEN)?;
            }
        }
        model.backward(ws, params, &mut t.grads, &t.dout)?;
        t.opt.step(params, &t.grads, &t.ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_every_mode_and_refuses_bad_settings() {
        for (arch, mode, loss, unit) in [
            (Arch::Unet, Mode::Train, None, "patches/s"),
            (Arch::Unet, Mode::Train, Some(LossKind::Mse), "patches/s"),
            (Arch::HardNetBaseline, Mode::Train, None, "triplets/s"),
            (Arch::HardNetOriginal, Mode::Train, Some(LossKind::HardNet), "pairs/s"),
            (Arch::Dncnn, Mode::Infer, None, "patches/s"),
        ] {
            let cfg = BenchConfig { seconds: 0.05, loss, ..BenchConfig::new(arch, mode, 2) };
            let t = measure_model(&cfg).unwrap();
            assert_eq!(t.unit, unit);
            assert_eq!(t.reps.len(), 5);
            assert!(t.reps.windows(2).all(|w| w[0] <= w[1]) && t.median == t.reps[2] && t.median > 0.0);
        }
        let base = BenchConfig::new(Arch::Unet, Mode::Infer, 1);
        assert!(measure_model(&BenchConfig { batch: 0, ..base.clone() }).is_err());
        assert!(measure_model(&BenchConfig { seconds: f64::NAN, ..base.clone() }).is_err());
        assert!(measure_model(&BenchConfig { seconds: 0.0, ..base.clone() }).is_err());
        for (arch, loss) in [(Arch::Unet, LossKind::Triplet), (Arch::HardNetOriginal, LossKind::L1)] {
            let cfg = BenchConfig { loss: Some(loss), ..BenchConfig::new(arch, Mode::Train, 2) };
            let e = measure_model(&cfg).unwrap_err().to_string();
            assert!(e.contains(loss.name()), "{e}");
        }
        let pairs = BenchConfig {
            loss: Some(LossKind::HardNet),
            seconds: 0.05,
            ..BenchConfig::new(Arch::HardNetOriginal, Mode::Train, 2)
        };
        assert!(measure_model(&BenchConfig { dropout: Some(0.0), ..pairs.clone() }).is_ok());
        let e = measure_model(&BenchConfig { dropout: Some(1.0), ..pairs.clone() }).unwrap_err().to_string();
        assert!(e.contains("rate must lie in [0, 1)"), "{e}");
        for (arch, mode) in [(Arch::Unet, Mode::Train), (Arch::HardNetOriginal, Mode::Infer)] {
            let cfg = BenchConfig { dropout: Some(0.1), seconds: 0.05, ..BenchConfig::new(arch, mode, 2) };
            let e = measure_model(&cfg).unwrap_err().to_string();
            assert!(e.contains("--dropout applies to HardNet training only"), "{arch} {mode:?}: {e}");
        }
    }

    /// The workload trains the recipe's network: its dropout rate unless one is given.
    #[test]
    fn workload_dropout_is_the_recipes_unless_given() {
        let pairs =
            BenchConfig { loss: Some(LossKind::HardNet), ..BenchConfig::new(Arch::HardNetOriginal, Mode::Train, 4) };
        let recipe = train_config(Arch::HardNetOriginal, LossKind::HardNet).model().unwrap().dropout();
        assert_eq!(Workload::new(&pairs).unwrap().model.dropout(), recipe);
        let triplets = BenchConfig::new(Arch::HardNetBaseline, Mode::Train, 4);
        assert_eq!(Workload::new(&triplets).unwrap().model.dropout(), crate::models::HARDNET_DROPOUT);
        let params = |cfg: &BenchConfig| {
            let mut w = Workload::new(cfg).unwrap();
            assert_eq!(w.model.dropout(), cfg.dropout.unwrap_or(recipe));
            for _ in 0..2 {
                w.step().unwrap();
            }
            w.params
        };
        let other = if recipe == 0.0 { 0.3 } else { 0.0 };
        assert_ne!(params(&pairs), params(&BenchConfig { dropout: Some(other), ..pairs.clone() }));
    }

    /// A workload's training step is the training loop's: the same loss
    /// after the same steps, whatever the thread count, and it learns (the
    /// loss of a fixed batch falls).
    #[test]
    fn workload_steps_are_deterministic_and_learn() {
        let cfg =
            BenchConfig { loss: Some(LossKind::HardNet), ..BenchConfig::new(Arch::HardNetOriginal, Mode::Train, 8) };
        let run = |threads: usize| {
            crate::threads::pool(threads).unwrap().install(|| {
                let mut w = Workload::new(&cfg).unwrap();
                assert_eq!((w.items(), w.unit()), (8, "pairs/s"));
                for _ in 0..3 {
                    w.step().unwrap();
                }
                w.params.clone()
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert!(one.iter().all(|v| v.is_finite()));
        let mut w = Workload::new(&BenchConfig::new(Arch::Unet, Mode::Train, 4)).unwrap();
        let loss = |w: &mut Workload| {
            let out = w.model.forward_eval(&mut w.ws, &w.params, &w.x).unwrap().to_vec();
            let target = denoise_target(&w.x);
            out.iter().zip(&target).map(|(a, b)| (a - b).abs() as f64).sum::<f64>()
        };
        let before = loss(&mut w);
        for _ in 0..5 {
            w.step().unwrap();
        }
        assert!(loss(&mut w) < before);
    }
}
