//! A dataset root opened with one of its splits resolved to pack indices:
//! what every training stage and the pipeline start from.

use super::pack::{PackedDataset, open_dataset};
use super::splits::Splits;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The share of a split's training sequences held out for validation by default.
pub const VAL_FRACTION: f64 = 0.15;

/// How validation sequences are carved out of a split's training sequences
/// (the test sequences are never used before the final evaluation).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validation {
    /// This fraction of the training sequences, rounded to the nearest count,
    /// at least one while at least one is left to train on.
    Fraction(f64),
    /// Exactly this many sequences (0: no validation).
    Sequences(usize),
}

impl Default for Validation {
    fn default() -> Self {
        Validation::Fraction(VAL_FRACTION)
    }
}

/// Splits `train` into `(train, validation)`: the validation sequences are
/// those with the smallest FNV-1a hashes of their names (`name_hash`), so the
/// choice is independent of the order of `splits.json` and stable when
/// sequences are added; both keep `train`'s order. Refuses a
/// hold-out that leaves nothing to train on.
pub fn carve_validation(train: &[String], v: Validation) -> Result<(Vec<String>, Vec<String>)> {
    let k = match v {
        Validation::Fraction(f) if !(0.0..1.0).contains(&f) => {
            return Err(Error::InvalidArgument(format!("validation fraction {f} must lie in [0, 1)")));
        }
        Validation::Fraction(f) if f == 0.0 || train.len() < 2 => 0,
        Validation::Fraction(f) => ((f * train.len() as f64).round() as usize).clamp(1, train.len() - 1),
        Validation::Sequences(k) if k > 0 && k >= train.len() => {
            return Err(Error::InvalidArgument(format!(
                "{k} validation sequences leave none of the {} training sequences to train on",
                train.len()
            )));
        }
        Validation::Sequences(k) => k,
    };
    let mut ranked: Vec<&String> = train.iter().collect();
    ranked.sort_by_key(|n| (super::name_hash(n), n.as_str()));
    let held: std::collections::HashSet<&String> = ranked.into_iter().take(k).collect();
    let (val, kept): (Vec<String>, Vec<String>) = train.iter().cloned().partition(|n| held.contains(n));
    Ok((kept, val))
}

/// An opened dataset with its split resolved to pack indices.
pub struct DatasetSplit {
    pub root: PathBuf,
    pub data: PackedDataset,
    /// Pack indices of the training sequences (the split's, less the validation ones).
    pub train: Vec<usize>,
    /// Pack indices of the validation sequences, carved from the split's training sequences.
    pub val: Vec<usize>,
    /// Pack indices of the split's test sequences.
    pub test: Vec<usize>,
}

impl DatasetSplit {
    /// Opens `root` (`splits.json` and one folder per sequence, or its pack)
    /// with split `split`; `noise_seed` seeds the noise model of datasets
    /// without noisy twins. Refuses a split without training or test sequences.
    pub fn open(root: &Path, split: &str, noise_seed: u64) -> Result<DatasetSplit> {
        Self::open_with(root, split, noise_seed, Validation::Sequences(0))
    }

    /// As [`open`](Self::open), holding validation sequences out of the
    /// training sequences as `validation` says ([`carve_validation`]).
    pub fn open_with(root: &Path, split: &str, noise_seed: u64, validation: Validation) -> Result<DatasetSplit> {
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
        let (train_names, val_names) = carve_validation(&s.train, validation)?;
        let data = open_dataset(root, noise_seed)?;
        let train = data.select(&train_names)?;
        let val = data.select(&val_names)?;
        let test = data.select(&s.test)?;
        Ok(DatasetSplit { root: root.to_path_buf(), data, train, val, test })
    }

    /// Patches (all 16 images) of the training sequences.
    pub fn train_patches(&self) -> u64 {
        self.train.iter().map(|&s| 16 * self.data.sequences()[s].count as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("v_seq{i}")).collect()
    }

    #[test]
    fn the_hold_out_is_deterministic_and_order_free() {
        let train = names(20);
        let (kept, val) = carve_validation(&train, Validation::default()).unwrap();
        assert_eq!(val.len(), 3, "15% of 20");
        assert_eq!(kept.len() + val.len(), 20);
        assert!(val.iter().all(|v| !kept.contains(v)));
        // Reversing the split's order holds out the same sequences.
        let mut rev = train.clone();
        rev.reverse();
        let (_, val_rev) = carve_validation(&rev, Validation::default()).unwrap();
        let mut a = val.clone();
        let mut b = val_rev.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        // Adding sequences keeps the held-out ones held out when they still rank first.
        let (_, two) = carve_validation(&train, Validation::Sequences(2)).unwrap();
        assert!(two.iter().all(|v| val.contains(v)));
    }

    #[test]
    fn small_splits_and_bad_settings() {
        assert_eq!(carve_validation(&names(1), Validation::default()).unwrap().1.len(), 0);
        assert_eq!(carve_validation(&names(2), Validation::default()).unwrap().1.len(), 1);
        assert_eq!(carve_validation(&names(5), Validation::Fraction(0.0)).unwrap().1.len(), 0);
        assert_eq!(carve_validation(&names(5), Validation::Sequences(0)).unwrap().1.len(), 0);
        assert!(carve_validation(&names(5), Validation::Sequences(5)).is_err());
        assert!(carve_validation(&names(5), Validation::Fraction(1.0)).is_err());
        assert!(carve_validation(&names(5), Validation::Fraction(f64::NAN)).is_err());
    }
}
