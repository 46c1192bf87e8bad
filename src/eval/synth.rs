//! Synthetic data for the bench and the tests: a catalog of sequences,
//! texture flags, and descriptors with correlated positives (so the mAPs are
//! neither 0 nor 1), optionally quantised to small integers (exact ties).
//!
//! Patch i of every image of a sequence is a noisy copy of one random base
//! vector; the noise grows from `ref` to e, h and t. Vectors are
//! L2-normalised unless quantised.

use super::{Catalog, Descriptors, SeqDescs};
use crate::error::Result;
use crate::rng::Rng;
use rayon::prelude::*;

/// `n` sequences named `s000`, `s001`, ... holding `total` patches, counts
/// spread between 0.5x and 1.5x the mean (at least `min`).
pub fn catalog(n: usize, total: usize, min: usize, seed: u64) -> Result<Catalog> {
    let mut rng = Rng::stream(seed, 11);
    let weights: Vec<f64> = (0..n).map(|_| 0.5 + rng.next_f64()).collect();
    let sum: f64 = weights.iter().sum();
    let counts: Vec<usize> = weights.iter().map(|w| ((w / sum * total as f64) as usize).max(min)).collect();
    Catalog::new((0..n).map(|i| format!("s{i:03}")).collect(), counts)
}

/// Texture flags (about 90% of patches textured).
pub fn textured(catalog: &Catalog, seed: u64) -> Vec<Vec<bool>> {
    let mut rng = Rng::stream(seed, 12);
    catalog.counts.iter().map(|&c| (0..c).map(|_| rng.next_f32() < 0.9).collect()).collect()
}

/// Descriptors of dimension `dim`. With `levels > 0` every value is rounded
/// to an integer in -levels..=levels (many exact ties), else L2-normalised.
pub fn descriptors(catalog: &Catalog, dim: usize, levels: u32, seed: u64) -> Descriptors {
    const NOISE: [f32; 4] = [1.2, 1.6, 2.0, 2.4];
    let seqs = catalog
        .names
        .par_iter()
        .zip(&catalog.counts)
        .enumerate()
        .map(|(s, (name, &count))| {
            let mut rng = Rng::stream(seed, 1000 + s as u64);
            let mut data = vec![0.0f32; 16 * count * dim];
            for i in 0..count {
                let base: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
                for img in 0..16 {
                    let noise = NOISE[crate::data::family(img)];
                    let v = &mut data[(img * count + i) * dim..(img * count + i + 1) * dim];
                    for (x, b) in v.iter_mut().zip(&base) {
                        *x = b + noise * rng.normal() as f32;
                    }
                    if levels > 0 {
                        let scale = levels as f32 / 3.0;
                        for x in v.iter_mut() {
                            *x = (*x * scale).round().clamp(-(levels as f32), levels as f32);
                        }
                    } else {
                        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                        v.iter_mut().for_each(|x| *x /= n);
                    }
                }
            }
            SeqDescs { name: name.clone(), count, data }
        })
        .collect();
    Descriptors { dim, seqs }
}
