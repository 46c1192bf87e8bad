//! The resolved configuration of one training stage. Presets fill it, flags
//! override any field, and the run folder records it (`config.json`) so a
//! run can be reproduced and resumed.

use crate::error::{Error, Result};
use crate::loss::LossKind;
use crate::loss::distill::DistillLoss;
use crate::loss::sos::{SOS_KNN, SosRegularizer};
use crate::models::{Arch, Model};
use crate::optim::OptimizerConfig;
use serde::{Deserialize, Serialize};

/// Which patches a descriptor trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Noisy,
    Clean,
    /// Noisy patches through a denoiser, clipped and rounded to 0..255.
    Denoised,
}

impl std::str::FromStr for InputKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "noisy" => Ok(InputKind::Noisy),
            "clean" => Ok(InputKind::Clean),
            "denoised" => Ok(InputKind::Denoised),
            _ => Err(Error::InvalidArgument(format!("unknown input '{s}' (expected noisy, clean or denoised)"))),
        }
    }
}

/// How the learning rate moves over a stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The configured rate throughout (the seed's).
    #[default]
    Constant,
    /// HardNet's: `lr * (1 - t / T)` at step t of T over all epochs, reaching 0 at the end.
    Linear,
}

impl std::str::FromStr for LrSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "linear" => Ok(LrSchedule::Linear),
            _ => Err(Error::InvalidArgument(format!(
                "unknown learning-rate schedule '{s}' (expected constant or linear)"
            ))),
        }
    }
}

/// Every setting of one training stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// `unet`, `dncnn`, `hardnet-baseline` or `hardnet-original`.
    pub arch: Arch,
    pub epochs: u64,
    pub batch: usize,
    /// Items per epoch: patches (denoiser), triplets or pairs (descriptor).
    pub epoch_items: u64,
    pub optimizer: OptimizerConfig,
    /// `l1` or `mse` (denoiser); `triplet` or `hardnet` (descriptor).
    pub loss: LossKind,
    /// Margin of the triplet and HardNet losses.
    pub margin: f32,
    /// Descriptor input; ignored by the denoiser.
    pub input: InputKind,
    /// Validation items (patches or triplets) from the validation sequences (held out of the training ones).
    pub val_items: usize,
    /// Compute HPatches mAP on the validation sequences after every epoch (descriptor).
    pub eval_every_epoch: bool,
    pub seed: u64,
    pub split: String,
    /// Seed of the noise model, for datasets without noisy twins.
    pub noise_seed: u64,
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Flips and 90-degree rotations of each training tuple (descriptor).
    #[serde(default)]
    pub augment: bool,
    /// A linear schedule that spans a longer run this stage is part of:
    /// (epochs before this stage, epochs in all). Default: this stage alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_span: Option<(u64, u64)>,
    /// Joint training only: weight of the denoising loss beside the descriptor loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoise_weight: Option<f64>,
    /// HardNet loss only: weight of SOSNet's second-order similarity
    /// regulariser added to it ([`crate::loss::sos`]); none: not added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sos_weight: Option<f32>,
    /// HardNet loss only: weight of the distillation term pulling each
    /// descriptor towards a clean-patch teacher's descriptor of its clean twin
    /// ([`crate::loss::distill`]); none: no teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill_weight: Option<f32>,
    /// Denoiser only: weight of the perceptual term, the mean squared distance
    /// between a clean-patch teacher's descriptors of each denoised patch and
    /// of its clean twin ([`super::perceptual`]), added to the pointwise loss; none: not added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perceptual_weight: Option<f32>,
    /// Descriptor only: each batch's classes come from this many random
    /// training sequences ([`crate::data::sampler::Sampler::with_batch_sequences`]); none: from all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_sequences: Option<usize>,
    /// Descriptor only: HardNet's dropout rate in training, in [0, 1); none:
    /// the model's own ([`crate::models::HARDNET_DROPOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f32>,
}

impl TrainConfig {
    /// Checks the values a run cannot start with.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch == 0 || self.batch > 4096 {
            return bad(format!("batch {} is outside 1..=4096", self.batch));
        }
        if self.epoch_items == 0 {
            return bad("an epoch needs at least one item".into());
        }
        if !(self.optimizer.lr() > 0.0 && self.optimizer.lr().is_finite()) {
            return bad(format!("learning rate {} must be positive", self.optimizer.lr()));
        }
        if self.sos_weight.is_some() {
            if self.loss != LossKind::HardNet {
                return bad(format!("the SOS regulariser applies to the hardnet loss only, not to {}", self.loss));
            }
            self.sos()?;
        }
        if self.distill_weight.is_some() {
            if self.loss != LossKind::HardNet {
                return bad(format!("distillation applies to the hardnet loss only, not to {}", self.loss));
            }
            self.distill()?;
        }
        if let Some(s) = self.batch_sequences {
            if self.arch.is_denoiser() {
                return bad(format!("sequence groups apply to descriptor batches, not to {}", self.arch));
            }
            if s == 0 {
                return bad("--batch-sequences must be at least 1".into());
            }
        }
        if let Some(p) = self.dropout {
            if self.arch.is_denoiser() {
                return bad(format!("the dropout rate applies to HardNet, not to {}", self.arch));
            }
            if !(0.0..1.0).contains(&p) {
                return bad(format!("dropout rate must lie in [0, 1), got {p}"));
            }
        }
        if let Some(w) = self.perceptual_weight {
            if !self.arch.is_denoiser() {
                return bad(format!("the perceptual term trains a denoiser, not {}", self.arch));
            }
            if !(w.is_finite() && w >= 0.0) {
                return bad(format!("perceptual weight must be finite and >= 0, got {w}"));
            }
        }
        Ok(())
    }

    /// SOSNet's regulariser as this stage adds it, if it does.
    pub fn sos(&self) -> Result<Option<SosRegularizer>> {
        self.sos_weight.map(|w| SosRegularizer::new(w, SOS_KNN)).transpose()
    }

    /// The distillation term this stage adds, if it does.
    pub fn distill(&self) -> Result<Option<DistillLoss>> {
        self.distill_weight.map(DistillLoss::new).transpose()
    }

    /// The network this stage trains: its architecture, with the dropout rate set here if one is.
    pub fn model(&self) -> Result<Model> {
        let mut m = Model::new(self.arch)?;
        if let Some(p) = self.dropout {
            m.set_dropout(p)?;
        }
        Ok(m)
    }

    /// Optimizer steps in one epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.epoch_items.div_ceil(self.batch.max(1) as u64)
    }

    /// Learning rate of 0-based step `t` of the stage (over all epochs).
    pub fn lr_at(&self, t: u64) -> f64 {
        let base = self.optimizer.lr();
        match self.lr_schedule {
            LrSchedule::Constant => base,
            LrSchedule::Linear => {
                let (before, all) = self.lr_span.unwrap_or((0, self.epochs));
                let steps = self.steps_per_epoch();
                let total = (all * steps).max(1);
                let t = before * steps + t;
                base * (1.0 - t.min(total) as f64 / total as f64)
            }
        }
    }

    /// The fields that must not change when a run is resumed (epochs may grow).
    pub fn resume_key(&self) -> TrainConfig {
        TrainConfig { epochs: 0, eval_every_epoch: false, ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: LrSchedule) -> TrainConfig {
        TrainConfig {
            arch: Arch::HardNetOriginal,
            epochs: 2,
            batch: 10,
            epoch_items: 25,
            optimizer: OptimizerConfig::named("sgd", 0.5).unwrap(),
            loss: LossKind::HardNet,
            margin: 1.0,
            input: InputKind::Noisy,
            val_items: 0,
            eval_every_epoch: false,
            seed: 1,
            split: "a".into(),
            noise_seed: 0,
            lr_schedule: schedule,
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

    #[test]
    fn learning_rate_schedules() {
        let c = cfg(LrSchedule::Constant);
        assert_eq!(c.steps_per_epoch(), 3);
        assert!((0..8).all(|t| c.lr_at(t) == 0.5));
        let l = cfg(LrSchedule::Linear);
        // 6 steps over two epochs: 0.5 * (1 - t/6), never below 0.
        let want = [0.5, 0.5 * 5.0 / 6.0, 0.5 * 4.0 / 6.0, 0.25, 0.5 * 2.0 / 6.0, 0.5 / 6.0, 0.0, 0.0];
        for (t, w) in want.iter().enumerate() {
            assert!((l.lr_at(t as u64) - w).abs() < 1e-15, "step {t}: {} vs {w}", l.lr_at(t as u64));
        }
        // The last epoch of a 3-epoch run: steps 6..9 of 9 (three per epoch).
        let tail = TrainConfig { epochs: 1, lr_span: Some((2, 3)), ..l.clone() };
        for t in 0..4u64 {
            let want = (0.5 * (1.0 - (6 + t).min(9) as f64 / 9.0)).max(0.0);
            assert!((tail.lr_at(t) - want).abs() < 1e-15, "span step {t}");
        }
        assert_eq!("linear".parse::<LrSchedule>().unwrap(), LrSchedule::Linear);
        assert!("cosine".parse::<LrSchedule>().unwrap_err().to_string().contains("constant or linear"));
        // Older configurations (without the new fields) still load, with the old behaviour.
        let mut v = serde_json::to_value(&c).unwrap();
        for k in ["lr_schedule", "augment"] {
            v.as_object_mut().unwrap().remove(k);
        }
        let back: TrainConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
