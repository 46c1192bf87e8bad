//! The HPatches evaluation benchmark: verification, matching and retrieval
//! mAP, equal to the official Python tool (hpatches-benchmark) and much
//! faster. The contract is hpatches-protocol.md; each task's module states
//! its part of it.
//!
//! - [`ap`]: AP and ROC AUC with the benchmark's quirks;
//! - [`dist`]: float64 distances and bounded float32 GEMM estimates;
//! - [`tasks`]: task files (read, write, generate);
//! - [`descriptors`]: descriptor CSVs and the in-memory [`Descriptors`];
//! - [`verification`], [`matching`], [`retrieval`]: the three tasks, each
//!   with a fast path and a literal slow twin;
//! - [`report`]: results, tables, headline and JSON;
//! - [`synth`]: synthetic descriptors and datasets (bench and tests).

pub mod ap;
pub mod bench;
pub mod descriptors;
pub mod dist;
pub mod matching;
pub mod report;
pub mod retrieval;
pub mod synth;
pub mod tasks;
pub mod verification;

pub use descriptors::{Descriptors, SeqDescs};
pub use report::{Results, evaluate, evaluate_slow};
pub use tasks::Tasks;

use crate::error::{Error, Result};
use std::collections::HashMap;

/// The three jitter families, in order.
pub const FAMILIES: [&str; 3] = ["e", "h", "t"];

/// Image index (`data::IMAGES`) of type `t` (0 = ref, 1..5) in family `f` (0..3).
#[inline]
pub fn image_of(f: usize, t: u8) -> usize {
    if t == 0 { 0 } else { 1 + 5 * f + (t as usize - 1) }
}

/// The test sequences of a split and their patch counts; task files refer
/// to sequences by their index here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    pub names: Vec<String>,
    pub counts: Vec<usize>,
    by_name: HashMap<String, usize>,
}

impl Catalog {
    pub fn new(names: Vec<String>, counts: Vec<usize>) -> Result<Catalog> {
        if names.len() != counts.len() {
            return Err(Error::Shape(format!("catalog: {} names, {} counts", names.len(), counts.len())));
        }
        let mut by_name = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if by_name.insert(n.clone(), i).is_some() {
                return Err(Error::InvalidArgument(format!("catalog: sequence {n} listed twice")));
            }
            if counts[i] > u32::MAX as usize {
                return Err(Error::InvalidArgument(format!("catalog: sequence {n} has too many patches")));
            }
        }
        Ok(Catalog { names, counts, by_name })
    }

    /// Index of the sequence named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Total number of patches per image.
    pub fn patches(&self) -> usize {
        self.counts.iter().sum()
    }
}

/// The descriptors of the catalog's sequences, by catalog index.
#[derive(Clone, Debug)]
pub struct View<'a> {
    pub dim: usize,
    pub seqs: Vec<&'a SeqDescs>,
}

impl<'a> View<'a> {
    /// Checks `descs` against `catalog` and orders them by catalog index.
    pub fn new(descs: &'a Descriptors, catalog: &Catalog) -> Result<View<'a>> {
        let map = descs.check(catalog)?;
        Ok(View { dim: descs.dim, seqs: map.into_iter().map(|i| &descs.seqs[i]).collect() })
    }
}
