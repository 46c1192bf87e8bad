//! Training: the stages (denoiser, descriptor, joint fine-tuning), the
//! recipes and presets that configure them, the whole pipeline of a recipe
//! and the recipe comparison, as library calls; checkpoints that resume
//! bit-exactly, per-epoch metrics and the run report.
//!
//! Entry points, from the most to the least packaged:
//! - [`pipeline::run`]: a recipe from dataset to report ([`RunConfig`] in, run folder and [`RunSummary`] out);
//! - [`compare::compare`]: several recipes and seeds, and the table of their mAPs;
//! - [`stage::train_denoiser`], [`stage::train_descriptor`]: one stage on a [`DatasetSplit`](crate::data::split::DatasetSplit);
//! - [`denoiser::train`], [`descriptor::train`], [`joint::train`]: the training loops over explicit inputs;
//! - [`throughput::measure_model`]: a model's training or inference throughput (`nhpatch bench`).
//!
//! Progress goes to a [`progress::Observer`] the caller supplies.

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod denoiser;
pub mod descriptor;
pub mod joint;
pub mod metrics;
pub mod parallel;
pub(crate) mod perceptual;
pub mod pipeline;
pub mod preset;
pub mod progress;
pub mod recipe;
pub mod report;
pub mod session;
pub mod stage;
mod step;
pub mod throughput;

pub use config::{InputKind, LrSchedule, TrainConfig};
pub use pipeline::{RunConfig, RunSummary};
pub use preset::{Overrides, Preset};
pub use progress::{Event, Observer};
pub use recipe::Recipe;
pub use stage::{StageOptions, Trained};
