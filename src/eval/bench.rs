//! A benchmark ready to run on a dataset: the split's test sequences with
//! their patch counts (the catalog) and the task files (read, or generated
//! as the benchmark's procedure does), plus descriptors computed by nhpatch's
//! own networks from a packed dataset.

use super::descriptors::{Descriptors, SeqDescs};
use super::tasks::{GenOptions, generate, patch_std};
use super::{Catalog, Results, Tasks, evaluate};
use crate::data::hpatches::Version;
use crate::data::pack::PackedDataset;
use crate::error::{Error, Result};
use crate::gpu::Device;
use crate::models::DESC_LEN;
use crate::models::quant::Precision;
use crate::net::{LoadOptions, Network, use_precision};
use rayon::prelude::*;
use std::path::Path;

/// The split's test sequences, their patch counts and the texture flags
/// (std > 10 of the clean `ref` patch's pixels, at the file's patch size).
pub fn load_catalog(dir: &Path, split: &str) -> Result<(Catalog, Vec<Vec<bool>>)> {
    let splits_path = dir.join("splits.json");
    let splits = crate::data::splits::Splits::load(&splits_path)?;
    let names = splits.get(split, &splits_path)?.test.clone();
    if names.is_empty() {
        return Err(Error::Format { path: splits_path, msg: format!("split '{split}' has no test sequences") });
    }
    catalog_of(dir, names)
}

/// The catalog and texture flags of the named sequences of the dataset at `dir`.
pub fn catalog_of(dir: &Path, names: Vec<String>) -> Result<(Catalog, Vec<Vec<bool>>)> {
    let per_seq: Vec<(usize, Vec<bool>)> = names
        .par_iter()
        .map(|name| {
            let path = dir.join(name).join("ref.png");
            let img = crate::io::png::read_gray(&path)?;
            let w = img.width;
            if w == 0 || !img.height.is_multiple_of(w) {
                return Err(Error::Format {
                    path,
                    msg: format!("a {}x{} image is not a strip of square patches", img.width, img.height),
                });
            }
            let count = img.height / w;
            let flags = (0..count).map(|i| patch_std(&img.pixels[i * w * w..(i + 1) * w * w]) > 10.0).collect();
            Ok((count, flags))
        })
        .collect::<Result<_>>()?;
    let (counts, textured) = per_seq.into_iter().unzip();
    Ok((Catalog::new(names, counts)?, textured))
}

/// Catalog and tasks of one dataset split.
pub struct Benchmark {
    pub split: String,
    pub catalog: Catalog,
    pub tasks: Tasks,
    /// Where the tasks came from, for the user.
    pub source: String,
}

impl Benchmark {
    /// Reads the tasks from `tasks_dir`, else from `dir/tasks/` when present,
    /// else generates them in memory with `seed` (defaults scaled to the dataset).
    pub fn prepare(dir: &Path, split: &str, tasks_dir: Option<&Path>, seed: u64) -> Result<Benchmark> {
        let (catalog, textured) = load_catalog(dir, split)?;
        let default_dir = dir.join("tasks");
        let (tasks, source) = match tasks_dir {
            Some(t) => (Tasks::read(t, split, &catalog)?, format!("task files in {}", t.display())),
            None if default_dir.is_dir() => {
                (Tasks::read(&default_dir, split, &catalog)?, format!("task files in {}", default_dir.display()))
            }
            None => {
                let opts = GenOptions { seed, ..GenOptions::defaults(&catalog) };
                let source = format!(
                    "no task files ({} is not a folder): generated {} pairs, {} queries, {} distractors in memory (seed {seed})",
                    default_dir.display(),
                    opts.pairs,
                    opts.queries,
                    opts.distractors
                );
                (generate(&catalog, &textured, &opts)?, source)
            }
        };
        Ok(Benchmark { split: split.to_string(), catalog, tasks, source })
    }

    /// A benchmark of the named sequences (e.g. validation sequences carved
    /// from the training ones), its tasks generated in memory with `seed`
    /// (defaults scaled to those sequences). `label` names it in the results.
    pub fn of_sequences(dir: &Path, names: Vec<String>, label: &str, seed: u64) -> Result<Benchmark> {
        if names.is_empty() {
            return Err(Error::InvalidArgument(format!("the {label} benchmark needs at least one sequence")));
        }
        let (catalog, textured) = catalog_of(dir, names)?;
        let opts = GenOptions { seed, ..GenOptions::defaults(&catalog) };
        let tasks = generate(&catalog, &textured, &opts)?;
        let source = format!(
            "{label}: {} sequences, generated {} pairs, {} queries, {} distractors (seed {seed})",
            catalog.names.len(),
            opts.pairs,
            opts.queries,
            opts.distractors
        );
        Ok(Benchmark { split: label.to_string(), catalog, tasks, source })
    }

    /// Evaluates descriptors of the catalog's sequences.
    pub fn evaluate(&self, descs: &Descriptors) -> Result<Results> {
        evaluate(descs, &self.catalog, &self.tasks, &self.split)
    }

    /// Computes descriptors with nhpatch networks and evaluates them.
    pub fn evaluate_network(
        &self,
        data: &PackedDataset,
        descriptor: &Network,
        denoiser: Option<&Network>,
        input: Version,
    ) -> Result<Results> {
        self.evaluate(&describe_dataset(data, &self.catalog, descriptor, denoiser, input)?)
    }
}

/// Loads a descriptor and optionally a denoiser, each checked to be the right
/// kind of network, onto `device`, in `precision` (`net::use_precision`:
/// int8 without a stored calibration calibrates on the default sample, the
/// descriptor on the f32 denoiser's output).
pub fn load_networks(
    weights: &Path,
    denoiser: Option<&Path>,
    device: Device,
    precision: Precision,
) -> Result<(Network, Option<Network>)> {
    let mut desc = Network::load_descriptor(weights, LoadOptions::default())?;
    desc.set_device(device)?;
    let mut den = denoiser.map(|p| Network::load_denoiser(p, LoadOptions::default())).transpose()?;
    if let Some(d) = &mut den {
        d.set_device(device)?;
    }
    use_precision(&mut desc, precision, den.as_ref())?;
    if let Some(d) = &mut den {
        use_precision(d, precision, None)?;
    }
    Ok((desc, den))
}

/// The evaluation's timing workload, the size of the real split a (40
/// sequences, 59,494 patches per image, a million pairs, 10,000 queries,
/// 20,000 distractors), on synthetic descriptors: `(catalog, tasks, descriptors)`.
pub fn timing_workload(seed: u64) -> Result<(Catalog, Tasks, Descriptors)> {
    let catalog = super::synth::catalog(40, 59_494, 2, seed)?;
    let textured = super::synth::textured(&catalog, seed);
    let opts = GenOptions { pairs: 1_000_000, queries: 10_000, distractors: 20_000, seed };
    let tasks = generate(&catalog, &textured, &opts)?;
    let descs = super::synth::descriptors(&catalog, 128, 0, seed);
    Ok((catalog, tasks, descs))
}

/// Descriptors of every image of the catalog's sequences, read from a packed
/// dataset (`input` version), denoised first when a denoiser is given (then
/// clipped and rounded to 0..255, as the seed's pipeline does).
pub fn describe_dataset(
    data: &PackedDataset,
    catalog: &Catalog,
    descriptor: &Network,
    denoiser: Option<&Network>,
    input: Version,
) -> Result<Descriptors> {
    let mut seqs = Vec::with_capacity(catalog.names.len());
    for (name, &count) in catalog.names.iter().zip(&catalog.counts) {
        let s = data.find(name).ok_or_else(|| Error::Format {
            path: data.path().to_path_buf(),
            msg: format!("the packed dataset has no sequence '{name}'"),
        })?;
        let have = data.sequences()[s].count;
        if have != count {
            return Err(Error::Format {
                path: data.path().to_path_buf(),
                msg: format!("sequence '{name}' has {have} patches in the pack but {count} in the dataset"),
            });
        }
        let mut x = Vec::with_capacity(16 * count * 1024);
        for image in 0..16 {
            x.extend(data.image(s, image, input).iter().map(|&v| v as f32));
        }
        seqs.push(SeqDescs { name: name.clone(), count, data: descriptor.describe_denoised(denoiser, &x)? });
    }
    Ok(Descriptors { dim: DESC_LEN, seqs })
}
