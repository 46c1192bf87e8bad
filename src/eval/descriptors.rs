//! Descriptors of every patch of every image of the test sequences.
//!
//! On disk (the benchmark's layout): `DESC_DIR/<sequence>/<image>.csv`, 16
//! files per sequence named after `data::IMAGES`, one row per patch in strip
//! order, one float32 column per dimension, delimiter `,` or `;`. Reading
//! checks that every file exists, that its row count equals the sequence's
//! patch count, that every row and every file has the same dimension, and
//! that every cell is a finite number; each error names the file, the row
//! and (for a cell) the column, 1-based. Files are read in parallel.
//!
//! In memory: [`Descriptors`], one [`SeqDescs`] per sequence with
//! `data = [16][count][dim]`, which the model path fills directly.

use super::Catalog;
use crate::data::IMAGES;
use crate::error::{Error, Result};
use crate::io::io_err;
use rayon::prelude::*;
use std::path::Path;

/// The descriptors of one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqDescs {
    pub name: String,
    /// Patches per image.
    pub count: usize,
    /// `[16][count][dim]`, images in `data::IMAGES` order.
    pub data: Vec<f32>,
}

/// Descriptors of a set of sequences, all of dimension `dim`.
#[derive(Clone, Debug, PartialEq)]
pub struct Descriptors {
    pub dim: usize,
    pub seqs: Vec<SeqDescs>,
}

impl SeqDescs {
    /// Descriptor of patch `idx` of image `image` (0..16).
    #[inline]
    pub fn get(&self, image: usize, idx: usize, dim: usize) -> &[f32] {
        let o = (image * self.count + idx) * dim;
        &self.data[o..o + dim]
    }

    /// All descriptors of image `image`, `[count][dim]`.
    #[inline]
    pub fn image(&self, image: usize, dim: usize) -> &[f32] {
        &self.data[image * self.count * dim..(image + 1) * self.count * dim]
    }
}

impl Descriptors {
    /// Checks lengths and finiteness, and that `catalog`'s sequences are all
    /// present with their patch counts; returns, for each catalog sequence,
    /// its index in `self.seqs`.
    pub fn check(&self, catalog: &Catalog) -> Result<Vec<usize>> {
        if self.dim == 0 {
            return Err(Error::Shape("descriptors: dimension 0".into()));
        }
        for s in &self.seqs {
            if s.data.len() != 16 * s.count * self.dim {
                return Err(Error::Shape(format!(
                    "descriptors of {}: {} values, expected 16 x {} x {}",
                    s.name,
                    s.data.len(),
                    s.count,
                    self.dim
                )));
            }
            if let Some(p) = s.data.iter().position(|v| !v.is_finite()) {
                let (img, rest) = (p / (s.count * self.dim), p % (s.count * self.dim));
                return Err(Error::InvalidArgument(format!(
                    "descriptors of {}/{}: patch {}, dimension {} is not finite",
                    s.name,
                    IMAGES[img],
                    rest / self.dim,
                    rest % self.dim
                )));
            }
        }
        let by_name: std::collections::HashMap<&str, usize> =
            self.seqs.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        catalog
            .names
            .iter()
            .zip(&catalog.counts)
            .map(|(name, &count)| match by_name.get(name.as_str()) {
                None => Err(Error::InvalidArgument(format!("no descriptors for test sequence {name}"))),
                Some(&i) if self.seqs[i].count != count => Err(Error::InvalidArgument(format!(
                    "sequence {name}: {} descriptors per image, the dataset has {count} patches",
                    self.seqs[i].count
                ))),
                Some(&i) => Ok(i),
            })
            .collect()
    }
}

/// Parses one descriptor CSV: `count` rows of float32, returns the values and the dimension.
pub fn parse_csv(text: &str, delimiter: char, count: usize, path: &Path) -> Result<(Vec<f32>, usize)> {
    let bad = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    let mut lines: Vec<&str> = text.lines().collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    if lines.len() != count {
        return Err(bad(format!("{} rows, the image has {count} patches", lines.len())));
    }
    let mut dim = 0;
    let mut data = Vec::new();
    for (r, line) in lines.iter().enumerate() {
        let before = data.len();
        for (c, cell) in line.split(delimiter).enumerate() {
            let cell = cell.trim();
            match cell.parse::<f32>() {
                Ok(v) if v.is_finite() => data.push(v),
                _ => {
                    return Err(bad(format!("row {}, column {}: '{cell}' is not a finite number", r + 1, c + 1)));
                }
            }
        }
        let d = data.len() - before;
        if r == 0 {
            dim = d;
            data.reserve(dim * count);
        } else if d != dim {
            return Err(bad(format!("row {} has {d} columns, row 1 has {dim}", r + 1)));
        }
    }
    Ok((data, dim))
}

/// Reads `root/<sequence>/<image>.csv` for every sequence of `catalog`.
pub fn read_dir(root: &Path, catalog: &Catalog, delimiter: char) -> Result<Descriptors> {
    let jobs: Vec<(usize, usize)> = (0..catalog.names.len()).flat_map(|s| (0..16).map(move |i| (s, i))).collect();
    let files: Vec<(Vec<f32>, usize)> = jobs
        .par_iter()
        .map(|&(s, i)| {
            let path = root.join(&catalog.names[s]).join(format!("{}.csv", IMAGES[i]));
            let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
            parse_csv(&text, delimiter, catalog.counts[s], &path)
        })
        .collect::<Result<_>>()?;
    // One dimension for all files (files with no rows say nothing about it).
    let mut dim = None;
    for (k, (_, d)) in files.iter().enumerate() {
        let (s, i) = jobs[k];
        if catalog.counts[s] == 0 {
            continue;
        }
        match dim {
            None => dim = Some((*d, k)),
            Some((d0, k0)) if d0 != *d => {
                let (s0, i0) = jobs[k0];
                return Err(Error::Format {
                    path: root.join(&catalog.names[s]).join(format!("{}.csv", IMAGES[i])),
                    msg: format!("dimension {d}, but {}/{}.csv has {d0}", catalog.names[s0], IMAGES[i0]),
                });
            }
            _ => {}
        }
    }
    let dim = dim.map_or(0, |(d, _)| d);
    let mut it = files.into_iter();
    let seqs = catalog
        .names
        .iter()
        .zip(&catalog.counts)
        .map(|(name, &count)| {
            let mut data = Vec::with_capacity(16 * count * dim);
            for _ in 0..16 {
                data.extend(it.next().map(|(v, _)| v).unwrap_or_default());
            }
            SeqDescs { name: name.clone(), count, data }
        })
        .collect();
    Ok(Descriptors { dim, seqs })
}

/// Writes `root/<sequence>/<image>.csv` for every sequence (directories
/// created, files written atomically), with `delimiter`.
pub fn write_dir(root: &Path, descs: &Descriptors, delimiter: char) -> Result<()> {
    for s in &descs.seqs {
        let dir = root.join(&s.name);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        for (i, name) in IMAGES.iter().enumerate() {
            let path = dir.join(format!("{name}.csv"));
            crate::io::write_atomic(&path, |w| {
                for r in 0..s.count {
                    let row: Vec<String> = s.get(i, r, descs.dim).iter().map(|v| format!("{v:?}")).collect();
                    writeln!(w, "{}", row.join(&delimiter.to_string())).map_err(|e| io_err(&path, e))?;
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}
