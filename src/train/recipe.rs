//! Training recipes: which networks are trained, on what,
//! and how. A recipe is orthogonal to the preset (`seed` or `demo`), which
//! sizes the stages; every value a recipe sets lands in the run's
//! `config.json`, and the run flags still override it.
//!
//! | recipe          | denoiser | descriptor                                                      |
//! |-----------------|----------|-----------------------------------------------------------------|
//! | `seed`          | U-Net    | the report's: baseline HardNet, triplets, SGD 0.1, batch 50     |
//! | `hardnet`       | U-Net    | HardNet's: original variant, hardest-in-batch pairs (128 classes x 2), SGD momentum 0.9, weight decay 1e-4, linear decay to 0, no flips or rotations, no dropout; the first descriptor epoch on the clean patches (the clean start) |
//! | `hardnet-dncnn` | DnCNN    | as `hardnet`                                                    |
//! | `hardnet-noisy` | none     | as `hardnet`, on the noisy patches                              |
//! | `joint`         | U-Net    | as `hardnet` without the clean start for all but the last descriptor epochs, which fine-tune both networks end to end |
//!
//! Every recipe but `seed` trains its denoiser with Adam at 1e-3 at every
//! preset (`apply_denoiser`); `seed` keeps the preset's (the report's SGD).

use super::config::{InputKind, LrSchedule, TrainConfig};
use super::preset::Preset;
use crate::error::{Error, Result};
use crate::loss::LossKind;
use crate::models::Arch;
use crate::optim::OptimizerConfig;

/// A training recipe ([`super::pipeline::run`] runs one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recipe {
    /// The seed report's pipeline: U-Net, then the baseline HardNet on triplets.
    Seed,
    /// U-Net, then HardNet's published training recipe.
    Hardnet,
    /// DnCNN, then HardNet's recipe.
    HardnetDncnn,
    /// No denoiser: HardNet's recipe on the noisy patches.
    HardnetNoisy,
    /// As `hardnet`, then denoiser and descriptor fine-tuned end to end.
    Joint,
}

/// The recipe a run uses when none is given: the winner of the
/// recipe comparison (README, "Training recipes").
pub const DEFAULT_RECIPE: Recipe = Recipe::Hardnet;

/// HardNet's batch: 128 classes, two views each.
pub const HARDNET_BATCH: usize = 128;
/// HardNet recipe's SGD learning rate at step 0.
pub const HARDNET_LR: f64 = 0.1;
/// HardNet recipe's dropout rate in training (the network's own is
/// [`crate::models::HARDNET_DROPOUT`]).
pub const HARDNET_RECIPE_DROPOUT: f32 = 0.0;
/// Weight of the denoising loss in joint training.
pub const DENOISE_WEIGHT: f64 = 0.1;
/// Epochs of the descriptor budget that the joint recipe spends on end-to-end training.
pub const JOINT_EPOCHS: u64 = 1;
/// Epochs of the descriptor budget spent on the clean-patch teacher when distilling.
pub const TEACHER_EPOCHS: u64 = 1;
const TEACHER_STREAM: u64 = 0x7EAC_4E55;

impl Recipe {
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Seed => "seed",
            Recipe::Hardnet => "hardnet",
            Recipe::HardnetDncnn => "hardnet-dncnn",
            Recipe::HardnetNoisy => "hardnet-noisy",
            Recipe::Joint => "joint",
        }
    }

    /// One line on what it trains.
    pub fn description(self) -> &'static str {
        match self {
            Recipe::Seed => "The seed report's pipeline: U-Net, then the baseline HardNet on triplets",
            Recipe::Hardnet => "U-Net, then HardNet's published training recipe",
            Recipe::HardnetDncnn => "DnCNN, then HardNet's recipe",
            Recipe::HardnetNoisy => "No denoiser: HardNet's recipe on the noisy patches",
            Recipe::Joint => "As `hardnet`, then denoiser and descriptor fine-tuned end to end",
        }
    }

    pub const ALL: [Recipe; 5] =
        [Recipe::Seed, Recipe::Hardnet, Recipe::HardnetDncnn, Recipe::HardnetNoisy, Recipe::Joint];

    /// The denoiser it trains first, if any.
    pub fn denoiser(self) -> Option<Arch> {
        match self {
            Recipe::Seed | Recipe::Hardnet | Recipe::Joint => Some(Arch::Unet),
            Recipe::HardnetDncnn => Some(Arch::Dncnn),
            Recipe::HardnetNoisy => None,
        }
    }

    /// Whether its descriptor starts with a clean start: the first
    /// [`TEACHER_EPOCHS`] of the descriptor budget train the HardNet on the
    /// clean patches (a teacher, see [`teacher_configs`]), and the rest
    /// continue from those weights on the patches the descriptor will see.
    /// It is `--distill-weight 0` without the teacher's pass over each
    /// batch: the three-seed validation mean at the full budget was at least
    /// the plain recipe's on both photo benchmarks, and one seed was ahead on
    /// the synthetic one (README, "Recipes on photographs"). A run of fewer than
    /// two descriptor epochs has no room for it and trains without.
    pub fn clean_start(self) -> bool {
        matches!(self, Recipe::Hardnet | Recipe::HardnetDncnn | Recipe::HardnetNoisy)
    }

    /// The HardNet variant it trains.
    pub fn descriptor(self) -> Arch {
        if self == Recipe::Seed { Arch::HardNetBaseline } else { Arch::HardNetOriginal }
    }

    /// Turns a preset's descriptor settings into this recipe's.
    pub fn apply(self, cfg: &mut TrainConfig, preset: Preset) {
        if self == Recipe::Seed {
            return;
        }
        cfg.arch = self.descriptor();
        cfg.loss = LossKind::HardNet;
        cfg.batch = HARDNET_BATCH;
        // The same number of patches per epoch as the preset's triplets (3 per triplet, 2 per pair),
        // rounded to whole batches: the recipes compare at equal descriptor work.
        let patches = cfg.epoch_items * 3;
        cfg.epoch_items = (patches / 2).div_ceil(HARDNET_BATCH as u64) * HARDNET_BATCH as u64;
        cfg.optimizer = OptimizerConfig::Sgd { lr: HARDNET_LR, momentum: 0.9, nesterov: false, weight_decay: 1e-4 };
        cfg.lr_schedule = LrSchedule::Linear;
        // Patches of a benchmark keep their orientation (detector frames, small
        // jitter); the 8 flips and 90-degree rotations ask for an invariance it
        // never tests and cost 0.03-0.04 validation mean mAP on both photo
        // benchmarks (README, "Recipes on photographs"). `--descriptor-augment true` restores them.
        cfg.augment = false;
        // At this budget HardNet is far from converged and dropout only slows
        // it: without it, validation mean mAP rose on both photo benchmarks in
        // each of three full-budget seeds (README, "Recipes on photographs").
        // `--descriptor-dropout 0.3` restores HardNet's rate.
        cfg.dropout = Some(HARDNET_RECIPE_DROPOUT);
        if preset == Preset::Demo {
            cfg.val_items = cfg.val_items.max(HARDNET_BATCH);
        }
    }

    /// Turns a preset's denoiser settings into this recipe's: every recipe
    /// but `seed` trains its denoiser with Adam at 1e-3 (what the demo preset
    /// already uses). The report's SGD at 1e-5 barely moves the U-Net within
    /// the seed preset's few epochs, and the descriptor then learns from
    /// patches that are hardly denoised (README, "Recipes on photographs").
    pub fn apply_denoiser(self, cfg: &mut TrainConfig) {
        if self == Recipe::Seed {
            return;
        }
        cfg.optimizer = OptimizerConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    }

    /// Joint recipe: the descriptor epochs trained separately and end to end (the total stays the preset's).
    pub fn split_epochs(self, epochs: u64, joint_epochs: u64) -> (u64, u64) {
        if self != Recipe::Joint {
            return (epochs, 0);
        }
        let joint = joint_epochs.clamp(1, epochs.saturating_sub(1).max(1));
        (epochs.saturating_sub(joint).max(1), joint)
    }
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Recipe {
    type Err = Error;
    fn from_str(s: &str) -> Result<Recipe> {
        Recipe::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown recipe '{s}' (expected {})",
                Recipe::ALL.map(Recipe::name).join(", ")
            ))
        })
    }
}

/// Settings of the clean-patch teacher of a descriptor whose settings are
/// `desc` (epochs: all of the descriptor budget), for the clean start and
/// distillation: the same network, loss and optimizer on the clean patches,
/// for the first `epochs` of the budget (at least one, and at least one left
/// to the student: anything else is an error), on the first part of one
/// learning-rate schedule spanning both; the student gets the rest of the
/// epochs and of the schedule. Returns (teacher, student).
pub fn teacher_configs(desc: &TrainConfig, epochs: u64) -> Result<(TrainConfig, TrainConfig)> {
    let total = desc.epochs;
    if total < 2 {
        return Err(Error::InvalidArgument(format!(
            "a clean-patch teacher and its student share the descriptor epochs: needs at least 2, got {total}"
        )));
    }
    if epochs == 0 || epochs >= total {
        return Err(Error::InvalidArgument(format!(
            "--teacher-epochs {epochs}: the clean-patch teacher takes 1 to {} of the {total} descriptor epochs (the rest train the descriptor)",
            total - 1
        )));
    }
    let first = epochs;
    let mut t = desc.clone();
    t.input = InputKind::Clean;
    t.distill_weight = None;
    t.epochs = first;
    t.lr_span = Some((0, total));
    // Its own stream of batches: the student's first epoch is not the teacher's again.
    t.seed = desc.seed ^ TEACHER_STREAM;
    let mut s = desc.clone();
    s.epochs = total - first;
    s.lr_span = Some((first, total));
    Ok((t, s))
}

/// Settings of the joint stage from the separately trained descriptor's
/// (`desc`, whose learning-rate schedule spans both stages) and denoiser's.
pub fn joint_configs(desc: &TrainConfig, den: &TrainConfig, epochs: u64, weight: f64) -> (TrainConfig, TrainConfig) {
    let mut d = desc.clone();
    d.epochs = epochs;
    // The descriptor's schedule continues where the separate stage stopped.
    d.lr_span = Some((desc.epochs, desc.epochs + epochs));
    d.denoise_weight = Some(weight);
    d.eval_every_epoch = false;
    d.seed = desc.seed.wrapping_add(1);
    let mut n = den.clone();
    n.epochs = epochs;
    n.batch = d.batch;
    n.epoch_items = d.epoch_items;
    n.val_items = d.val_items;
    // A tenth of the pre-training rate: the denoiser is adjusted, not retrained.
    n.optimizer.set_lr(den.optimizer.lr() * 0.1);
    n.lr_schedule = LrSchedule::Linear;
    n.seed = d.seed;
    (d, n)
}
