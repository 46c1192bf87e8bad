//! A dataset root opened with one of its splits resolved to pack indices:
//! what every training stage and the pipeline start from.

use super::pack::{PackedDataset, open_dataset};
use super::splits::Splits;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// An opened dataset with its split resolved to pack indices.
pub struct DatasetSplit {
    pub root: PathBuf,
    pub data: PackedDataset,
    /// Pack indices of the split's training sequences.
    pub train: Vec<usize>,
    /// Pack indices of the split's test sequences.
    pub test: Vec<usize>,
}

impl DatasetSplit {
    /// Opens `root` (`splits.json` and one folder per sequence, or its pack)
    /// with split `split`; `noise_seed` seeds the noise model of datasets
    /// without noisy twins. Refuses a split without training or test sequences.
    pub fn open(root: &Path, split: &str, noise_seed: u64) -> Result<DatasetSplit> {
        if !root.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: no such dataset folder (it needs splits.json and one folder per sequence)",
                root.display()
            )));
        }
        let splits_path = root.join("splits.json");
        let splits = Splits::load(&splits_path)?;
        let s = splits.get(split, &splits_path)?.clone();
        if s.train.is_empty() {
            return Err(Error::Format { path: splits_path, msg: format!("split '{split}' has no training sequences") });
        }
        if s.test.is_empty() {
            return Err(Error::Format { path: splits_path, msg: format!("split '{split}' has no test sequences") });
        }
        let data = open_dataset(root, noise_seed)?;
        let train = data.select(&s.train)?;
        let test = data.select(&s.test)?;
        Ok(DatasetSplit { root: root.to_path_buf(), data, train, test })
    }

    /// Patches (all 16 images) of the training sequences.
    pub fn train_patches(&self) -> u64 {
        self.train.iter().map(|&s| 16 * self.data.sequences()[s].count as u64).sum()
    }
}
