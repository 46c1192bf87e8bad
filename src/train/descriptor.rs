//! Descriptor training: HardNet on triplets (the seed's loss: anchor,
//! positive, negative through the same network, triplet margin loss) or on
//! pairs (HardNet's hardest-in-batch loss). A batch of B triplets runs as one
//! forward of 3B patches (2B for pairs), so BatchNorm sees the whole batch.
//!
//! Input patches are noisy, clean, or *denoised*: the training sequences'
//! noisy patches passed once through a denoiser, clipped and rounded to
//! 0..255 as the seed does, and cached in the run folder as a packed dataset
//! (`denoised.pack`, rebuilt when the dataset or the denoiser changes).
//!
//! With a [`Teacher`] (a HardNet trained on the clean patches), the student
//! starts from the teacher's weights, and with `distill_weight` set every
//! step also runs the teacher on the batch's clean twins (eval mode, `[2B,
//! 1, 32, 32]` -> `[2B, 128]`) and adds the distillation term against those
//! descriptors ([`crate::loss::distill`]).

use super::config::TrainConfig;
use super::metrics::{EpochMetrics, MapScores};
use super::progress::Event;
use super::session::{self, RunDir, State};
use super::step::{Head, Stepper, TupleHead};
use crate::data::augment;
use crate::data::hpatches::Version;
use crate::data::pack::{PackWriter, PackedDataset};
use crate::data::sampler::{PatchRef, Sampler, compact_views};
use crate::error::{Error, Result};
use crate::io::PATCH;
use crate::io::PATCH_LEN;
use crate::models::{DESC_LEN, Model};
use crate::net::{Network, Patches, to_pixels};
use std::path::Path;
use std::time::Instant;

const VAL_STREAM: u64 = 0x7A11_DE5C;

/// Evaluates a descriptor on the validation sequences (HPatches mAP); supplied by the caller.
pub type MapFn<'a> = dyn Fn(&Network) -> Result<MapScores> + 'a;

/// Fingerprint of a denoiser's parameters (FNV-1a over their bits).
fn params_hash(net: &Network) -> u64 {
    net.params().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3))
}

/// The sequences `seqs` of `data` with their noisy patches denoised into the
/// clean slot (the noisy slot keeps the noisy patches), as a packed dataset
/// at `path`, reused when it is up to date. Sequence i of the result is `seqs[i]`.
pub fn denoised_pack(data: &PackedDataset, seqs: &[usize], denoiser: &Network, path: &Path) -> Result<PackedDataset> {
    let train = seqs;
    let fingerprint = pack_fingerprint(data, seqs, denoiser);
    if let Some(p) = current_pack(path, fingerprint) {
        return Ok(p);
    }
    let seqs: Vec<(String, usize)> =
        train.iter().map(|&s| (data.sequences()[s].name.clone(), data.sequences()[s].count)).collect();
    let mut w = PackWriter::create(path, &seqs, fingerprint)?;
    for &s in train {
        let mut noisy = Vec::new();
        for image in 0..16 {
            noisy.extend_from_slice(data.image(s, image, Version::Noisy));
        }
        let x: Vec<f32> = noisy.iter().map(|&v| v as f32).collect();
        let mut y = denoiser.denoise(&x)?;
        to_pixels(&mut y);
        let clean: Vec<u8> = y.iter().map(|&v| v as u8).collect();
        w.write_sequence(&clean, &noisy)?;
    }
    w.finish()?;
    PackedDataset::open(path)
}

fn pack_fingerprint(data: &PackedDataset, seqs: &[usize], denoiser: &Network) -> u64 {
    data.fingerprint() ^ params_hash(denoiser).rotate_left(17) ^ seqs.len() as u64
}

fn current_pack(path: &Path, fingerprint: u64) -> Option<PackedDataset> {
    PackedDataset::open(path).ok().filter(|p| p.fingerprint() == fingerprint)
}

/// Whether [`denoised_pack`] would reuse the pack at `path` as it is.
pub fn denoised_pack_is_current(data: &PackedDataset, seqs: &[usize], denoiser: &Network, path: &Path) -> bool {
    current_pack(path, pack_fingerprint(data, seqs, denoiser)).is_some()
}

/// Draws one batch of K-tuples into `x` laid out [K][n][1024]; returns (items, last).
fn draw(sampler: &mut Sampling<'_>, x: &mut [f32], b: usize) -> Result<(usize, bool)> {
    let (first, rest) = x.split_at_mut(b * PATCH_LEN);
    let (second, third) = rest.split_at_mut(b * PATCH_LEN);
    let info = match sampler {
        Sampling::Triplet(s) => s.next_batch([first, second, &mut third[..b * PATCH_LEN]])?,
        Sampling::Pair(s) => s.next_batch([first, second])?,
    };
    let n = info.items;
    if n < b {
        compact_views(x, sampler.k(), b, n);
    }
    Ok((n, info.last))
}

enum Sampling<'a> {
    Triplet(Sampler<'a, 3>),
    Pair(Sampler<'a, 2>),
}

impl Sampling<'_> {
    fn k(&self) -> usize {
        match self {
            Sampling::Triplet(_) => 3,
            Sampling::Pair(_) => 2,
        }
    }
    fn state(&self) -> crate::data::sampler::SamplerState {
        match self {
            Sampling::Triplet(s) => s.state(),
            Sampling::Pair(s) => s.state(),
        }
    }
    fn set_state(&mut self, st: crate::data::sampler::SamplerState) -> Result<()> {
        match self {
            Sampling::Triplet(s) => s.set_state(st),
            Sampling::Pair(s) => s.set_state(st),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn sampling<'a>(
    data: &'a PackedDataset,
    seqs: &[usize],
    version: Version,
    k: usize,
    batch: usize,
    items: u64,
    seed: u64,
    augment: bool,
    groups: Option<usize>,
) -> Result<Sampling<'a>> {
    Ok(if k == 3 {
        let s = Sampler::triplet(data, seqs, version, batch, items, seed)?;
        Sampling::Triplet(s.with_augment(augment).with_batch_sequences(groups)?)
    } else {
        let s = Sampler::hardnet(data, seqs, version, batch, items, seed)?;
        Sampling::Pair(s.with_augment(augment).with_batch_sequences(groups)?)
    })
}

/// Where the training patches come from.
pub struct Source<'a> {
    pub data: &'a PackedDataset,
    pub train: Vec<usize>,
    pub version: Version,
}

/// A clean-patch teacher: its network, and where the clean twin of a
/// training patch is: sequence `s` of the source is sequence `seqs[s]` of
/// `data` (the original dataset, clean slot).
pub struct Teacher<'a> {
    pub net: &'a Network,
    pub data: &'a PackedDataset,
    pub seqs: Vec<usize>,
}

impl Teacher<'_> {
    /// The teacher's descriptors `out` (`[2][n][128]`) of the clean twins of
    /// the pairs `items`, each under its flip/rotation; `x` is scratch of `2n` patches.
    fn targets(&self, items: &[[PatchRef; 2]], transforms: &[u8], x: &mut [f32], out: &mut [f32]) -> Result<()> {
        let n = items.len();
        for (v, view) in x[..2 * n * PATCH_LEN].chunks_mut(n * PATCH_LEN).enumerate() {
            for ((dst, it), &t) in view.chunks_mut(PATCH_LEN).zip(items).zip(transforms) {
                let r = it[v];
                let seq = *self.seqs.get(r.seq).ok_or_else(|| {
                    Error::InvalidArgument(format!("teacher: no clean twin for training sequence {}", r.seq))
                })?;
                augment::transform_into(dst, self.data.patch(seq, r.image, r.idx, Version::Clean), PATCH, t, f32::from);
            }
        }
        self.net.describe_into(Patches::F32(&x[..2 * n * PATCH_LEN]), &mut out[..2 * n * DESC_LEN])
    }
}

/// Trains a HardNet; `source` gives the training patches, `val` (dataset,
/// validation sequences, version) the fixed validation tuples; `map` computes mAP
/// after each epoch when the configuration asks for it; `teacher`, when
/// given, is where the student starts and, with `cfg.distill_weight`, what it distills.
#[allow(clippy::too_many_arguments)]
pub fn train(
    cfg: &TrainConfig,
    source: &Source<'_>,
    val: (&PackedDataset, &[usize], Version),
    run: &RunDir,
    resume: bool,
    map: Option<&MapFn<'_>>,
    teacher: Option<&Teacher<'_>>,
) -> Result<(Network, Vec<EpochMetrics>)> {
    cfg.validate()?;
    let arch = cfg.arch;
    if arch.is_denoiser() {
        return Err(Error::InvalidArgument(format!("{arch} is a denoiser, not a HardNet variant")));
    }
    if cfg.sos_weight.is_some() && !run.device.is_cpu() {
        return Err(Error::InvalidArgument(
            "the SOS regulariser runs on the CPU only: drop --sos-weight or train with --device cpu".into(),
        ));
    }
    let distill = cfg.distill()?;
    if distill.is_some() && teacher.is_none() {
        return Err(Error::InvalidArgument(
            "distillation needs a clean-patch teacher: `nhpatch run --distill-weight` trains one first".into(),
        ));
    }
    if distill.is_some() && (!run.device.is_cpu() || run.parallel.is_some()) {
        return Err(Error::InvalidArgument(
            "distillation trains in one process on the CPU: drop --distill-weight, --device or --distributed".into(),
        ));
    }
    if let Some(t) = teacher
        && t.net.arch() != arch
    {
        return Err(Error::InvalidArgument(format!("the teacher is a {}, the student a {arch}", t.net.arch())));
    }
    let mut loss =
        TupleHead::new(cfg.loss.tuple(cfg.margin)?, cfg.batch).with_sos(cfg.sos()?)?.with_distill(distill)?;
    // Validation scores the descriptor loss alone: the teacher never sees validation patches.
    let mut val_loss_head = TupleHead::new(cfg.loss.tuple(cfg.margin)?, cfg.batch).with_sos(cfg.sos()?)?;
    let k = loss.k();
    let model = cfg.model()?;
    let mut st: State = session::start(&model, cfg, run, resume, teacher.map(|t| t.net.params()))?;
    let b = cfg.batch;
    let mut sampler = sampling(
        source.data,
        &source.train,
        source.version,
        k,
        b,
        cfg.epoch_items,
        cfg.seed,
        cfg.augment,
        cfg.batch_sequences,
    )?;
    if let Some(s) = st.sampler {
        sampler.set_state(s)?;
    }
    // Fixed validation tuples, drawn once.
    // Tuples need distinct classes: never more than the validation sequences hold.
    let val_classes: usize = val.1.iter().map(|&s| val.0.sequences()[s].count).sum();
    let val_n = cfg.val_items.min(4096).min(val_classes);
    let mut val_x = vec![0.0f32; k * val_n * PATCH_LEN];
    if val_n > 0 && !val.1.is_empty() {
        let mut vs = sampling(val.0, val.1, val.2, k, val_n, val_n as u64, cfg.seed ^ VAL_STREAM, false, None)?;
        draw(&mut vs, &mut val_x, val_n)?;
    }
    let mut x = vec![0.0f32; k * b * PATCH_LEN];
    let mut x_teacher = vec![0.0f32; if distill.is_some() { 2 * b * PATCH_LEN } else { 0 }];
    let steps = cfg.steps_per_epoch();
    let unit = cfg.loss.unit();
    let mut stepper = Stepper::new(run, &model, &st, (b, k), cfg.epoch_items)?;
    let par = run.parallel.clone();

    let first_epoch = st.epochs_done;
    while st.epochs_done < cfg.epochs {
        let epoch = st.epochs_done + 1;
        let obs = run.observer();
        obs.event(&Event::EpochStarted { stage: "descriptor", epoch, epochs: cfg.epochs, steps, unit });
        let t0 = Instant::now();
        let (mut loss_sum, mut items, mut step) = (0.0f64, 0u64, 0u64);
        loop {
            let (n, last) = draw(&mut sampler, &mut x, b)?;
            if let (Some(t), Sampling::Pair(s), Some(targets)) = (teacher, &sampler, loss.distill_targets(n)) {
                t.targets(s.last_batch(), s.last_transforms(), &mut x_teacher, targets)?;
            }
            // This step's learning rate (the optimizer reads it only in its update).
            st.optimizer.config.set_lr(cfg.lr_at(st.epochs_done * steps + step));
            step += 1;
            let done = st.epochs_done;
            let head = Head::Tuple(&mut loss);
            let l = stepper.step(&mut st, &x, n, head, |l| session::check_loss(l, epoch, step, run, done))?;
            loss_sum += l * n as f64;
            items += n as u64;
            let items_per_second = items as f64 / t0.elapsed().as_secs_f64();
            obs.event(&Event::Step { loss: l, items_per_second, unit });
            if last {
                break;
            }
        }
        stepper.end_epoch(&mut st)?;
        let seconds = t0.elapsed().as_secs_f64();
        let mut net = Network::from_params(Model::new(arch)?, st.params.clone())?;
        // Validation and evaluation describe on the training device.
        net.set_device(run.device)?;
        // Validation and evaluation run on rank 0 only; the others wait at the next step's first collective.
        let val_loss = if val_n > 0 && !val.1.is_empty() && run.is_root() {
            let out = net.describe(&val_x)?;
            let mut scratch = vec![0.0f32; out.len()];
            Some(val_loss_head.eval(&mut scratch, &out, val_n)?)
        } else {
            None
        };
        let map = match map {
            Some(f) if (cfg.eval_every_epoch || epoch == cfg.epochs) && run.is_root() => Some(f(&net)?),
            _ => None,
        };
        st.epochs_done = epoch;
        st.metrics.push(EpochMetrics {
            epoch,
            train_loss: loss_sum / items.max(1) as f64,
            val_loss,
            map,
            seconds,
            items_per_second: items as f64 / seconds.max(1e-9),
        });
        session::end_epoch(run, cfg, &st, sampler.state(), "descriptor")?;
    }
    drop(stepper);
    let net = Network::from_params(model, st.params)?;
    run.save_model(&net)?;
    if let Some(p) = &par
        && run.is_root()
    {
        run.observer().event(&Event::Info(&p.traffic("descriptor", (st.epochs_done - first_epoch) * steps)));
    }
    Ok((net, st.metrics))
}
