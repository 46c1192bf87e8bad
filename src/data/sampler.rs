//! Training samplers over a packed dataset.
//!
//! A *class* is one patch position of one training sequence; its 16 images
//! are its members. Three kinds of batch:
//! - denoiser: (noisy, clean) twins of one patch, class and image uniform
//!   (so uniform over every patch of the training sequences);
//! - triplet (the seed's generator): B distinct anchor classes; anchor a
//!   random member, positive another member of the same class (different
//!   image), negative a random member of a different class of any training
//!   sequence; clean or noisy patches;
//! - HardNet: B distinct classes, two distinct members each (anchor, positive);
//! - HardNet twins (joint training): the HardNet pair's noisy patches and
//!   their clean twins, (noisy anchor, noisy positive, clean anchor, clean positive).
//!
//! With augmentation on, each item also draws one of the 8 symmetries of the
//! square ([`super::augment`]) and every view of the item is written under it.
//!
//! With sequence groups on ([`Sampler::with_batch_sequences`]), each
//! triplet, HardNet or twins batch first draws S distinct training sequences
//! (uniformly; more, one at a time, while they hold fewer classes than the
//! batch needs) and takes its classes, triplet negatives included, from
//! those sequences only: in-batch negatives then come from the same scenes,
//! as the distractors of the matching task do. Off (the default), no draw is
//! added, so the streams are those of a plain sampler.
//!
//! An epoch is a configured number of items (100,000 triplets in the seed);
//! its last batch is shorter when the epoch length is not a multiple of B.
//! All draws come from one [`Rng`] in a fixed order, so batches depend only on
//! the seed; [`SamplerState`] (epoch, position, RNG state) is plain data, and
//! a sampler restored from it continues with exactly the batches the original
//! would have produced. Patches are copied straight from the memory map into
//! the caller's f32 buffers in parallel (u8 -> f32 happens here); no memory is
//! allocated per batch.

use super::augment;
use super::hpatches::{IMAGE_COUNT, Version};
use super::pack::PackedDataset;
use crate::error::{Error, Result};
use crate::io::{PATCH, PATCH_LEN};
use crate::rng::Rng;
use rayon::prelude::*;
use std::collections::HashSet;

/// Closes the gaps a short batch leaves in one buffer of `k` views laid out
/// `[k][batch][1024]`: the first `n` patches of each view move so the views
/// are contiguous, `[k][n][1024]`.
pub fn compact_views(x: &mut [f32], k: usize, batch: usize, n: usize) {
    for i in 1..k {
        x.copy_within(i * batch * PATCH_LEN..(i * batch + n) * PATCH_LEN, i * n * PATCH_LEN);
    }
}

/// One patch of a pack: sequence index (in the pack), image (0..16), position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PatchRef {
    pub seq: usize,
    pub image: usize,
    pub idx: usize,
}

/// Where a sampler stands, for checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    /// Items already produced in this epoch.
    pub position: u64,
    pub rng: u64,
}

/// What one call to [`Sampler::next_batch`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    pub epoch: u64,
    /// Items in this batch (B, or fewer at the end of an epoch).
    pub items: usize,
    /// True when this batch ends its epoch.
    pub last: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Denoise,
    Triplet,
    HardNet,
    Twins,
}

/// The classes of the training sequences, numbered 0..total in sequence order.
struct Classes {
    seqs: Vec<usize>,
    /// `ends[i]`: one past the last class of `seqs[i]`.
    ends: Vec<u64>,
    total: u64,
}

impl Classes {
    fn new(data: &PackedDataset, train: &[usize]) -> Result<Classes> {
        if train.is_empty() {
            return Err(Error::InvalidArgument("a sampler needs at least one training sequence".into()));
        }
        let mut seen = HashSet::new();
        let mut ends = Vec::with_capacity(train.len());
        let mut total = 0u64;
        for &s in train {
            let info = data.sequences().get(s).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "sequence index {s} out of range: the pack has {}",
                    data.sequences().len()
                ))
            })?;
            if !seen.insert(s) {
                return Err(Error::InvalidArgument(format!("training sequence '{}' is listed twice", info.name)));
            }
            total += info.count as u64;
            ends.push(total);
        }
        Ok(Classes { seqs: train.to_vec(), ends, total })
    }

    /// The first class of `seqs[i]`.
    fn start(&self, i: usize) -> u64 {
        if i == 0 { 0 } else { self.ends[i - 1] }
    }

    fn member(&self, class: u64, image: usize) -> PatchRef {
        let i = self.ends.partition_point(|&e| e <= class);
        PatchRef { seq: self.seqs[i], image, idx: (class - self.start(i)) as usize }
    }
}

/// A sampler yielding K patches per item: 2 for denoiser and HardNet batches
/// (noisy/clean, anchor/positive), 3 for triplets (anchor, positive, negative).
pub struct Sampler<'a, const K: usize> {
    data: &'a PackedDataset,
    classes: Classes,
    kind: Kind,
    versions: [Version; K],
    batch: usize,
    epoch_len: u64,
    epoch: u64,
    position: u64,
    rng: Rng,
    /// Draw a symmetry of the square per item.
    augment: bool,
    /// Training sequences each batch's classes come from (none: all of them).
    group: Option<usize>,
    /// Reused per batch: the drawn items, their transforms and the anchor classes taken.
    items: Vec<[PatchRef; K]>,
    transforms: Vec<u8>,
    taken: HashSet<u64>,
    /// Reused per batch with groups: the chosen sequences (indices into
    /// `classes.seqs`) and one past the last class of each, counted over the group.
    chosen: Vec<usize>,
    chosen_ends: Vec<u64>,
}

/// Denoiser batches: (noisy, clean).
pub type DenoiseSampler<'a> = Sampler<'a, 2>;
/// HardNet batches: (anchor, positive).
pub type HardNetSampler<'a> = Sampler<'a, 2>;
/// Triplet batches: (anchor, positive, negative).
pub type TripletSampler<'a> = Sampler<'a, 3>;
/// Joint-training batches: (noisy anchor, noisy positive, clean anchor, clean positive).
pub type TwinsSampler<'a> = Sampler<'a, 4>;

impl<'a> Sampler<'a, 2> {
    /// Denoiser pairs from the training sequences `train` (pack indices).
    pub fn denoise(data: &'a PackedDataset, train: &[usize], batch: usize, epoch_len: u64, seed: u64) -> Result<Self> {
        Self::build(data, train, Kind::Denoise, [Version::Noisy, Version::Clean], batch, epoch_len, seed)
    }

    /// HardNet batches of `batch` distinct classes, two members each.
    pub fn hardnet(
        data: &'a PackedDataset,
        train: &[usize],
        version: Version,
        batch: usize,
        epoch_len: u64,
        seed: u64,
    ) -> Result<Self> {
        Self::build(data, train, Kind::HardNet, [version; 2], batch, epoch_len, seed)
    }
}

impl<'a> Sampler<'a, 3> {
    /// The seed's triplet generator.
    pub fn triplet(
        data: &'a PackedDataset,
        train: &[usize],
        version: Version,
        batch: usize,
        epoch_len: u64,
        seed: u64,
    ) -> Result<Self> {
        Self::build(data, train, Kind::Triplet, [version; 3], batch, epoch_len, seed)
    }
}

impl<'a> Sampler<'a, 4> {
    /// HardNet pairs of noisy patches with their clean twins, for joint training.
    pub fn twins(data: &'a PackedDataset, train: &[usize], batch: usize, epoch_len: u64, seed: u64) -> Result<Self> {
        let versions = [Version::Noisy, Version::Noisy, Version::Clean, Version::Clean];
        Self::build(data, train, Kind::Twins, versions, batch, epoch_len, seed)
    }
}

impl<'a, const K: usize> Sampler<'a, K> {
    fn build(
        data: &'a PackedDataset,
        train: &[usize],
        kind: Kind,
        versions: [Version; K],
        batch: usize,
        epoch_len: u64,
        seed: u64,
    ) -> Result<Self> {
        let classes = Classes::new(data, train)?;
        if batch == 0 || epoch_len == 0 {
            return Err(Error::InvalidArgument(format!(
                "batch size ({batch}) and epoch length ({epoch_len}) must be positive"
            )));
        }
        // Distinct anchor classes per batch, and a negative of another class.
        let need = match kind {
            Kind::Denoise => 1,
            Kind::HardNet | Kind::Twins => batch as u64,
            Kind::Triplet => (batch as u64).max(2),
        };
        if classes.total < need {
            return Err(Error::InvalidArgument(format!(
                "the training sequences hold {} patch positions; a batch of {batch} needs {need}",
                classes.total
            )));
        }
        Ok(Sampler {
            data,
            classes,
            kind,
            versions,
            batch,
            epoch_len,
            epoch: 0,
            position: 0,
            rng: Rng::stream(seed, 0x05A3_D1E5),
            augment: false,
            group: None,
            items: Vec::with_capacity(batch),
            transforms: Vec::with_capacity(batch),
            taken: HashSet::with_capacity(batch * 2),
            chosen: Vec::with_capacity(train.len()),
            chosen_ends: Vec::with_capacity(train.len()),
        })
    }

    /// Turns augmentation by the 8 symmetries of the square on or off (off by default).
    pub fn with_augment(mut self, on: bool) -> Self {
        self.augment = on;
        self
    }

    /// Draws each batch's classes from `s` random training sequences (see the
    /// module header); `None` (the default): from all of them. Denoiser
    /// batches ignore it. `Some(0)` is an error.
    pub fn with_batch_sequences(mut self, s: Option<usize>) -> Result<Self> {
        if s == Some(0) {
            return Err(Error::InvalidArgument("a batch needs classes from at least one sequence".into()));
        }
        self.group = if self.kind == Kind::Denoise { None } else { s };
        Ok(self)
    }

    pub fn batch_size(&self) -> usize {
        self.batch
    }

    pub fn epoch_len(&self) -> u64 {
        self.epoch_len
    }

    /// Number of classes (patch positions) in the training sequences.
    pub fn classes(&self) -> u64 {
        self.classes.total
    }

    pub fn state(&self) -> SamplerState {
        SamplerState { epoch: self.epoch, position: self.position, rng: self.rng.state }
    }

    /// Continues from a saved state (of a sampler built with the same dataset,
    /// sequences, kind, batch size and epoch length).
    pub fn set_state(&mut self, state: SamplerState) -> Result<()> {
        if state.position > self.epoch_len {
            return Err(Error::InvalidArgument(format!(
                "sampler state at item {} of an epoch of {}",
                state.position, self.epoch_len
            )));
        }
        self.epoch = state.epoch;
        self.position = state.position;
        self.rng = Rng { state: state.rng };
        Ok(())
    }

    /// The items of the last batch, in buffer order.
    pub fn last_batch(&self) -> &[[PatchRef; K]] {
        &self.items
    }

    /// The transform of each item of the last batch (all identity without augmentation).
    pub fn last_transforms(&self) -> &[u8] {
        &self.transforms
    }

    /// Classes this batch draws from: the group's, or every training class.
    fn pool(&self) -> u64 {
        if self.group.is_some() { *self.chosen_ends.last().unwrap_or(&0) } else { self.classes.total }
    }

    /// The training class of index `i` of the pool.
    fn pooled(&self, i: u64) -> u64 {
        if self.group.is_none() {
            return i;
        }
        let g = self.chosen_ends.partition_point(|&e| e <= i);
        let before = if g == 0 { 0 } else { self.chosen_ends[g - 1] };
        self.classes.start(self.chosen[g]) + (i - before)
    }

    /// Picks the batch's sequences: `s` distinct ones, then more until they
    /// hold `need` classes (every training sequence at most, which `build`
    /// checked holds enough).
    fn choose_group(&mut self, s: usize, need: u64) {
        self.chosen.clear();
        self.chosen_ends.clear();
        let seqs = self.classes.seqs.len();
        let mut held = 0u64;
        while self.chosen.len() < seqs && (self.chosen.len() < s || held < need) {
            let i = self.rng.below(seqs as u64) as usize;
            if self.chosen.contains(&i) {
                continue;
            }
            held += self.classes.ends[i] - self.classes.start(i);
            self.chosen.push(i);
            self.chosen_ends.push(held);
        }
    }

    /// A class not yet taken in this batch, as (pool index, training class).
    fn distinct_class(&mut self) -> (u64, u64) {
        loop {
            let i = self.rng.below(self.pool());
            let c = self.pooled(i);
            if self.taken.insert(c) {
                return (i, c);
            }
        }
    }

    fn draw(&mut self) -> [PatchRef; K] {
        let images = IMAGE_COUNT as u64;
        let mut out = [PatchRef { seq: 0, image: 0, idx: 0 }; K];
        match self.kind {
            Kind::Denoise => {
                let c = self.rng.below(self.classes.total);
                let m = self.classes.member(c, self.rng.below(images) as usize);
                out.fill(m);
            }
            Kind::Triplet | Kind::HardNet | Kind::Twins => {
                let (i, c) = self.distinct_class();
                let a = self.rng.below(images);
                // Uniform over the 15 other images.
                let p = (a + 1 + self.rng.below(images - 1)) % images;
                out[0] = self.classes.member(c, a as usize);
                out[1] = self.classes.member(c, p as usize);
                if self.kind == Kind::Triplet {
                    // Uniform over the pool's other classes: skip the anchor's.
                    let mut n = self.rng.below(self.pool() - 1);
                    if n >= i {
                        n += 1;
                    }
                    out[2] = self.classes.member(self.pooled(n), self.rng.below(images) as usize);
                }
                if self.kind == Kind::Twins {
                    (out[2], out[3]) = (out[0], out[1]);
                }
            }
        }
        out
    }

    /// Fills `outs` (each `[batch][32*32]` f32, values 0..255) with the next
    /// batch; only the first `items` patches of each are written. After the
    /// last batch of an epoch, the next call starts the following epoch.
    pub fn next_batch(&mut self, outs: [&mut [f32]; K]) -> Result<BatchInfo> {
        let want = self.batch * PATCH_LEN;
        if let Some(o) = outs.iter().find(|o| o.len() != want) {
            return Err(Error::Shape(format!(
                "batch buffer: expected {want} values ({} patches of 32x32), got {}",
                self.batch,
                o.len()
            )));
        }
        if self.position >= self.epoch_len {
            self.epoch += 1;
            self.position = 0;
        }
        let n = (self.epoch_len - self.position).min(self.batch as u64) as usize;
        self.items.clear();
        self.transforms.clear();
        self.taken.clear();
        if let Some(g) = self.group {
            // Distinct anchors, and a triplet's negative of another class.
            let need = if self.kind == Kind::Triplet { (n as u64).max(2) } else { n as u64 };
            self.choose_group(g, need);
        }
        for _ in 0..n {
            let item = self.draw();
            self.items.push(item);
            // Drawn only with augmentation on, so the plain streams are unchanged by it.
            let t = if self.augment { self.rng.below(augment::TRANSFORMS as u64) as u8 } else { augment::IDENTITY };
            self.transforms.push(t);
        }
        self.position += n as u64;
        let (data, items, transforms) = (self.data, &self.items, &self.transforms);
        for (k, out) in outs.into_iter().enumerate() {
            let version = self.versions[k];
            out[..n * PATCH_LEN]
                .par_chunks_mut(PATCH_LEN)
                .zip(items.par_iter().zip(transforms.par_iter()))
                .with_min_len(16)
                .for_each(|(dst, (it, &t))| {
                    let r = it[k];
                    augment::transform_into(dst, data.patch(r.seq, r.image, r.idx, version), PATCH, t, f32::from);
                });
        }
        Ok(BatchInfo { epoch: self.epoch, items: n, last: self.position == self.epoch_len })
    }
}
