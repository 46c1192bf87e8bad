//! `nhpatch run`: the whole pipeline of a training recipe
//! ([`nhpatch::train::pipeline`]); this file only turns the flags into a
//! [`RunConfig`] and hands progress to the terminal.

use super::train::{optimizer_kind, schedule};
use clap::Args;
use nhpatch::data::split::Validation;
use nhpatch::error::{Error, Result};
use nhpatch::models::Arch;
use nhpatch::train::pipeline::{self, RunConfig};
use nhpatch::train::preset::{Overrides, Preset};
use nhpatch::train::recipe::{DEFAULT_RECIPE, DENOISE_WEIGHT, JOINT_EPOCHS, Recipe, TEACHER_EPOCHS};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Dataset root (default: a synthetic N-HPatches generated into data/synth on first use).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Run folder (default: runs/<date>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Training recipe (see README, "Training recipes"); `seed` is the report's pipeline.
    #[arg(long, value_parser = super::recipe_parser(), default_value = DEFAULT_RECIPE.name())]
    pub recipe: Recipe,
    /// Stage sizes: demo (minutes on two cores) or seed (the report's full scale).
    #[arg(long, value_parser = super::preset_parser(), default_value = "demo")]
    pub preset: Preset,
    #[arg(long, default_value = "a")]
    pub split: String,
    /// Validation sequences held out of the split's training sequences
    /// (default: 15% of them, at least one); 0 turns validation off. The
    /// test sequences are only scored at the end.
    #[arg(long)]
    pub val_sequences: Option<usize>,
    /// Denoiser: unet, dncnn or none (default: the recipe's).
    #[arg(long)]
    pub denoiser: Option<String>,
    /// HardNet variant: baseline or original (default: the recipe's).
    #[arg(long)]
    pub variant: Option<String>,
    /// Descriptor loss: triplet or hardnet (default: the recipe's).
    #[arg(long)]
    pub loss: Option<String>,
    #[arg(long)]
    pub denoiser_epochs: Option<u64>,
    /// Patches per denoiser epoch.
    #[arg(long)]
    pub denoiser_items: Option<u64>,
    #[arg(long)]
    pub denoiser_lr: Option<f64>,
    /// sgd or adam.
    #[arg(long)]
    pub denoiser_optimizer: Option<String>,
    /// constant or linear (decayed to 0 over the stage's steps; default: the recipe's).
    #[arg(long)]
    pub denoiser_lr_schedule: Option<String>,
    /// Descriptor epochs in all (the joint recipe spends the last --joint-epochs of them end to end).
    #[arg(long)]
    pub descriptor_epochs: Option<u64>,
    /// Triplets (or pairs) per descriptor epoch.
    #[arg(long)]
    pub triplets: Option<u64>,
    #[arg(long)]
    pub descriptor_lr: Option<f64>,
    #[arg(long)]
    pub descriptor_optimizer: Option<String>,
    /// constant or linear (decayed to 0 over the stage's steps; default: the recipe's).
    #[arg(long)]
    pub descriptor_lr_schedule: Option<String>,
    /// Batch size of both stages.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Batch size of the descriptor stage (pairs with the hardnet loss; wins over --batch).
    #[arg(long)]
    pub descriptor_batch: Option<usize>,
    /// Weight of SOSNet's second-order similarity regulariser added to the hardnet loss.
    #[arg(long)]
    pub sos_weight: Option<f32>,
    /// Each descriptor batch's classes come from this many random training
    /// sequences (more while they hold fewer than a batch), so in-batch
    /// negatives share scenes (default: all sequences).
    #[arg(long)]
    pub batch_sequences: Option<usize>,
    /// HardNet's dropout rate in training, in [0, 1) (default: the recipe's; 0 for the
    /// HardNet recipes, the network's 0.3 for seed).
    #[arg(long)]
    pub descriptor_dropout: Option<f32>,
    /// Distillation from a clean-patch teacher: the first --teacher-epochs of
    /// the descriptor epochs train a HardNet on the clean patches; the
    /// descriptor starts from it and adds this weight times the mean squared
    /// distance between its descriptors and the teacher's of the clean twins
    /// (0: the teacher only initialises it).
    #[arg(long)]
    pub distill_weight: Option<f32>,
    /// The denoiser trained for the descriptor: the first --teacher-epochs of
    /// the descriptor epochs train a HardNet on the clean patches, before the
    /// denoiser; the denoiser's loss adds this weight times the mean squared
    /// distance between the teacher's descriptors of each denoised patch and
    /// of its clean twin; the descriptor starts from the teacher, as with --distill-weight.
    #[arg(long)]
    pub perceptual_weight: Option<f32>,
    /// The descriptor's clean start (true/false; default: the recipe's, on for the
    /// hardnet recipes when the descriptor has at least 2 epochs): the first
    /// --teacher-epochs train it on the clean patches, the rest continue from
    /// those weights on the denoised ones. --distill-weight 0 without the teacher's pass per batch.
    #[arg(long)]
    pub clean_start: Option<bool>,
    /// With the clean start, --distill-weight or --perceptual-weight: descriptor epochs spent on the teacher.
    #[arg(long, default_value_t = TEACHER_EPOCHS)]
    pub teacher_epochs: u64,
    /// Flips and 90-degree rotations of each descriptor training tuple (true/false; default: the recipe's).
    #[arg(long)]
    pub descriptor_augment: Option<bool>,
    /// Joint recipe: descriptor epochs trained end to end with the denoiser.
    #[arg(long, default_value_t = JOINT_EPOCHS)]
    pub joint_epochs: u64,
    /// Joint recipe: weight of the denoising (L1) loss beside the descriptor loss.
    #[arg(long, default_value_t = DENOISE_WEIGHT)]
    pub denoise_weight: f64,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
}

impl RunArgs {
    /// The run these flags ask for.
    pub fn config(&self) -> Result<RunConfig> {
        let denoiser = match self.denoiser.as_deref() {
            None => None,
            Some("none") => Some(None),
            Some(name) => {
                let arch = Arch::parse(name, None)?;
                if !arch.is_denoiser() {
                    return Err(Error::InvalidArgument(format!("--denoiser {name}: expected unet, dncnn or none")));
                }
                Some(Some(arch))
            }
        };
        let descriptor = match &self.variant {
            Some(v) => Some(Arch::parse("hardnet", Some(v))?),
            None => None,
        };
        let loss = self.loss.as_deref().map(str::parse).transpose()?;
        Ok(RunConfig {
            dataset: self.dataset.clone(),
            out: self.out.clone().unwrap_or_else(pipeline::timestamped_out),
            recipe: self.recipe,
            preset: self.preset,
            split: self.split.clone(),
            validation: self.val_sequences.map_or_else(Validation::default, Validation::Sequences),
            denoiser,
            descriptor,
            loss,
            denoiser_overrides: Overrides {
                epochs: self.denoiser_epochs,
                lr: self.denoiser_lr,
                optimizer: optimizer_kind(&self.denoiser_optimizer)?,
                lr_schedule: schedule(&self.denoiser_lr_schedule)?,
                items: self.denoiser_items,
                perceptual_weight: self.perceptual_weight,
                ..Overrides::default()
            },
            descriptor_overrides: Overrides {
                epochs: self.descriptor_epochs,
                lr: self.descriptor_lr,
                optimizer: optimizer_kind(&self.descriptor_optimizer)?,
                lr_schedule: schedule(&self.descriptor_lr_schedule)?,
                items: self.triplets,
                batch: self.descriptor_batch,
                sos_weight: self.sos_weight,
                augment: self.descriptor_augment,
                distill_weight: self.distill_weight,
                batch_sequences: self.batch_sequences,
                dropout: self.descriptor_dropout,
                ..Overrides::default()
            },
            batch: self.batch,
            joint_epochs: self.joint_epochs,
            denoise_weight: self.denoise_weight,
            teacher_epochs: self.teacher_epochs,
            clean_start: self.clean_start,
            seed: self.seed,
            resume: self.resume,
            threads: self.threads,
            device: self.dev.device,
        })
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    pipeline::run(&a.config()?, super::progress::terminal()).map(|_| ())
}
