//! Presets (named bundles of stage settings) and the overrides a caller
//! applies on top of them. A stage's configuration is always built the same
//! way: the preset's [`TrainConfig`], then the recipe's changes
//! ([`super::recipe::Recipe::apply`]), then [`Overrides::apply`].

use super::config::{InputKind, LrSchedule, TrainConfig};
use crate::error::{Error, Result};
use crate::loss::LossKind;
use crate::models::Arch;
use crate::optim::{OptimizerConfig, OptimizerKind};

/// Named bundles of settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// The seed report's settings (U-Net: SGD lr 1e-5 Nesterov 0.9, batch 50, MAE; DnCNN: Adam 1e-3;
    /// descriptor: SGD lr 0.1, triplet margin 1, batch 50, 100,000 triplets per epoch).
    Seed,
    /// Sized so that `nhpatch run` finishes in minutes on two cores.
    Demo,
}

impl Preset {
    pub const ALL: [Preset; 2] = [Preset::Seed, Preset::Demo];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Seed => "seed",
            Preset::Demo => "demo",
        }
    }

    /// One line on what it sets.
    pub fn description(self) -> &'static str {
        match self {
            Preset::Seed => {
                "The seed report's settings (U-Net: SGD lr 1e-5 Nesterov 0.9, batch 50, MAE; DnCNN: Adam 1e-3; \
                 descriptor: SGD lr 0.1, triplet margin 1, batch 50, 100,000 triplets per epoch)"
            }
            Preset::Demo => "Sized so that `nhpatch run` finishes in minutes on two cores",
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Preset> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown preset '{s}' (expected seed or demo)")))
    }
}

/// Values that replace a preset's (each `None` keeps it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub epochs: Option<u64>,
    pub batch: Option<usize>,
    /// Learning rate.
    pub lr: Option<f64>,
    /// The optimizer, with PyTorch's defaults for its other hyperparameters.
    pub optimizer: Option<OptimizerKind>,
    /// SGD momentum.
    pub momentum: Option<f64>,
    /// SGD Nesterov momentum.
    pub nesterov: Option<bool>,
    pub weight_decay: Option<f64>,
    /// Items per epoch: patches (denoiser), triplets or pairs (descriptor).
    pub items: Option<u64>,
    /// Validation items drawn from the validation sequences.
    pub val_items: Option<usize>,
    pub seed: Option<u64>,
    pub lr_schedule: Option<LrSchedule>,
    /// Flips and 90-degree rotations of each training tuple (descriptor).
    pub augment: Option<bool>,
    /// Weight of SOSNet's second-order similarity regulariser beside the HardNet loss (descriptor).
    pub sos_weight: Option<f32>,
    /// Weight of the distillation term towards a clean-patch teacher (descriptor; the pipeline trains the teacher).
    pub distill_weight: Option<f32>,
    /// Weight of the perceptual term through a clean-patch teacher (denoiser; the pipeline trains the teacher).
    pub perceptual_weight: Option<f32>,
    /// Training sequences each batch's classes come from (descriptor).
    pub batch_sequences: Option<usize>,
    /// HardNet's dropout rate in training (descriptor).
    pub dropout: Option<f32>,
}

impl Overrides {
    /// Replaces `cfg`'s values with the ones set here, then validates the result.
    pub fn apply(&self, cfg: &mut TrainConfig) -> Result<()> {
        if let Some(kind) = self.optimizer {
            cfg.optimizer = kind.config(cfg.optimizer.lr());
        }
        if let Some(v) = self.lr {
            cfg.optimizer.set_lr(v);
        }
        match &mut cfg.optimizer {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay, .. } => {
                *momentum = self.momentum.unwrap_or(*momentum);
                *nesterov = self.nesterov.unwrap_or(*nesterov);
                *weight_decay = self.weight_decay.unwrap_or(*weight_decay);
            }
            OptimizerConfig::Adam { weight_decay, .. } => {
                if self.momentum.is_some() || self.nesterov.is_some() {
                    return Err(Error::InvalidArgument("--momentum and --nesterov apply to sgd only".into()));
                }
                *weight_decay = self.weight_decay.unwrap_or(*weight_decay);
            }
        }
        cfg.epochs = self.epochs.unwrap_or(cfg.epochs);
        cfg.batch = self.batch.unwrap_or(cfg.batch);
        cfg.epoch_items = self.items.unwrap_or(cfg.epoch_items);
        cfg.val_items = self.val_items.unwrap_or(cfg.val_items);
        cfg.seed = self.seed.unwrap_or(cfg.seed);
        cfg.lr_schedule = self.lr_schedule.unwrap_or(cfg.lr_schedule);
        cfg.augment = self.augment.unwrap_or(cfg.augment);
        cfg.sos_weight = self.sos_weight.or(cfg.sos_weight);
        cfg.distill_weight = self.distill_weight.or(cfg.distill_weight);
        cfg.perceptual_weight = self.perceptual_weight.or(cfg.perceptual_weight);
        cfg.batch_sequences = self.batch_sequences.or(cfg.batch_sequences);
        cfg.dropout = self.dropout.or(cfg.dropout);
        cfg.validate()
    }
}

/// Denoiser settings of a preset; `train_patches` is the size of one pass over the training set.
pub fn denoiser_preset(preset: Preset, arch: Arch, split: &str, train_patches: u64) -> TrainConfig {
    let optimizer = match (preset, arch) {
        (Preset::Seed, Arch::Unet) => {
            OptimizerConfig::Sgd { lr: 1e-5, momentum: 0.9, nesterov: true, weight_decay: 0.0 }
        }
        // The demo trains a few thousand patches: Adam gets a visibly better U-Net there.
        _ => OptimizerConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
    };
    let (epochs, items) = match preset {
        Preset::Seed => (1, train_patches),
        Preset::Demo => (3, 2000),
    };
    TrainConfig {
        arch,
        epochs,
        batch: 50,
        epoch_items: items.max(1),
        optimizer,
        loss: LossKind::L1,
        margin: 1.0,
        input: InputKind::Noisy,
        val_items: if preset == Preset::Demo { 500 } else { 2000 },
        eval_every_epoch: false,
        seed: 1,
        split: split.into(),
        noise_seed: 0,
        lr_schedule: LrSchedule::Constant,
        augment: false,
        lr_span: None,
        denoise_weight: None,
        sos_weight: None,
        distill_weight: None,
        perceptual_weight: None,
        batch_sequences: None,
        dropout: None,
    }
}

/// Descriptor settings of a preset.
pub fn descriptor_preset(preset: Preset, arch: Arch, split: &str, input: InputKind) -> TrainConfig {
    let (epochs, items) = match preset {
        Preset::Seed => (1, 100_000),
        Preset::Demo => (4, 2500),
    };
    TrainConfig {
        arch,
        epochs,
        batch: 50,
        epoch_items: items,
        optimizer: OptimizerConfig::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0 },
        loss: LossKind::Triplet,
        margin: 1.0,
        input,
        val_items: if preset == Preset::Demo { 300 } else { 2000 },
        eval_every_epoch: true,
        seed: 2,
        split: split.into(),
        noise_seed: 0,
        lr_schedule: LrSchedule::Constant,
        augment: false,
        lr_span: None,
        denoise_weight: None,
        sos_weight: None,
        distill_weight: None,
        perceptual_weight: None,
        batch_sequences: None,
        dropout: None,
    }
}
