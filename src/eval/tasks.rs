//! Task files: the verification pairs and the retrieval queries and
//! distractors, read, written and generated.
//!
//! Files of split X (hpatches-protocol.md, "Task files"):
//! `verif_pos_split-X.csv`, `verif_neg_intra_split-X.csv`,
//! `verif_neg_inter_split-X.csv` with header `s1,t1,idx1,s2,t2,idx2`, and
//! `retr_queries_split-X.csv`, `retr_distractors_split-X.csv` with header
//! `s,idx`. `s` is a sequence name, `t` is 0..5 (0 = `ref`, k = image k of
//! the family evaluated), `idx` a patch index. Reading validates every row
//! against the [`Catalog`] (sequence known, t in 0..5, idx below the
//! sequence's patch count); a bad row is an error naming the file and its
//! line number. Verification files with a different number of negatives
//! than positives are refused (the imbalanced protocol needs equal counts).
//!
//! Generation follows the protocol's procedure with nhpatch's own seeded
//! generator (not NumPy's stream): for each pair, a sequence s drawn
//! uniformly from the test sequences, distinct indices i1, i2 < N_s,
//! distinct types t1, t2 in 0..=4; positive (s,t1,i1)-(s,t2,i1), intra
//! negative (s,t1,i1)-(s,t2,i2), inter negative (s,t1,i1)-(s',t2,j) with s'
//! drawn anew and j < N_s'. Retrieval: 4x the queries and 10x the
//! distractors are drawn as (sequence, index) candidates of `ref`, kept when
//! the clean `ref` patch's pixel standard deviation exceeds 10, duplicates
//! dropped (first kept), distractors that are queries dropped, then the
//! first wanted ones taken. Sequences with fewer than 2 patches are never
//! drawn for pairs.

use super::Catalog;
use crate::error::{Error, Result};
use crate::io::{io_err, write_atomic};
use crate::rng::Rng;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A patch of a pair: catalog sequence index, type t (0 = ref, 1..5), index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PatchRef {
    pub seq: u32,
    pub t: u8,
    pub idx: u32,
}

/// A verification pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub a: PatchRef,
    pub b: PatchRef,
}

/// A `ref` patch (retrieval queries and distractors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RefPatch {
    pub seq: u32,
    pub idx: u32,
}

/// All task lists of a split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tasks {
    pub pos: Vec<Pair>,
    pub neg_intra: Vec<Pair>,
    pub neg_inter: Vec<Pair>,
    pub queries: Vec<RefPatch>,
    pub distractors: Vec<RefPatch>,
}

/// File names of split `split`: pos, neg_intra, neg_inter, queries, distractors.
pub fn file_names(split: &str) -> [String; 5] {
    [
        format!("verif_pos_split-{split}.csv"),
        format!("verif_neg_intra_split-{split}.csv"),
        format!("verif_neg_inter_split-{split}.csv"),
        format!("retr_queries_split-{split}.csv"),
        format!("retr_distractors_split-{split}.csv"),
    ]
}

const PAIR_HEADER: &str = "s1,t1,idx1,s2,t2,idx2";
const REF_HEADER: &str = "s,idx";

fn bad(path: &Path, msg: String) -> Error {
    Error::Format { path: path.to_path_buf(), msg }
}

impl Tasks {
    /// Refuses verification lists whose negatives are not as many as the positives.
    pub fn check_balance(&self, split: &str) -> Result<()> {
        let names = file_names(split);
        for (list, name) in [(&self.neg_intra, &names[1]), (&self.neg_inter, &names[2])] {
            if list.len() != self.pos.len() {
                return Err(Error::InvalidArgument(format!(
                    "{name} holds {} pairs but {} holds {} positives: the imbalanced protocol needs as many negatives as positives",
                    list.len(),
                    names[0],
                    self.pos.len()
                )));
            }
        }
        Ok(())
    }

    /// Reads the five files of `split` from `dir`, validated against `catalog`.
    pub fn read(dir: &Path, split: &str, catalog: &Catalog) -> Result<Tasks> {
        let names = file_names(split);
        let p: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        let t = Tasks {
            pos: read_pairs(&p[0], catalog)?,
            neg_intra: read_pairs(&p[1], catalog)?,
            neg_inter: read_pairs(&p[2], catalog)?,
            queries: read_refs(&p[3], catalog)?,
            distractors: read_refs(&p[4], catalog)?,
        };
        t.check_balance(split)?;
        Ok(t)
    }

    /// Writes the five files of `split` into `dir` (created), each atomically.
    pub fn write(&self, dir: &Path, split: &str, catalog: &Catalog) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let names = file_names(split);
        let name = |s: u32| catalog.names[s as usize].as_str();
        for (list, file) in [(&self.pos, &names[0]), (&self.neg_intra, &names[1]), (&self.neg_inter, &names[2])] {
            let path = dir.join(file);
            write_atomic(&path, |w| {
                let mut s = String::with_capacity(64 * list.len() + 32);
                s.push_str(PAIR_HEADER);
                s.push('\n');
                for p in list {
                    let (a, b) = (p.a, p.b);
                    s.push_str(&format!("{},{},{},{},{},{}\n", name(a.seq), a.t, a.idx, name(b.seq), b.t, b.idx));
                }
                w.write_all(s.as_bytes()).map_err(|e| io_err(&path, e))
            })?;
        }
        for (list, file) in [(&self.queries, &names[3]), (&self.distractors, &names[4])] {
            let path = dir.join(file);
            write_atomic(&path, |w| {
                let mut s = String::from(REF_HEADER);
                s.push('\n');
                for r in list {
                    s.push_str(&format!("{},{}\n", name(r.seq), r.idx));
                }
                w.write_all(s.as_bytes()).map_err(|e| io_err(&path, e))
            })?;
        }
        Ok(())
    }
}

/// The data lines of a task file after checking its header: (line number, fields).
fn rows<'a>(text: &'a str, header: &str, path: &Path) -> Result<Vec<(usize, Vec<&'a str>)>> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim().trim_start_matches('\u{feff}') == header => {}
        _ => return Err(bad(path, format!("line 1: expected the header '{header}'"))),
    }
    let want = header.split(',').count();
    lines
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            if f.len() != want {
                return Err(bad(path, format!("line {}: {} fields, expected {want}", i + 1, f.len())));
            }
            Ok((i + 1, f))
        })
        .collect()
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| io_err(path, e))
}

fn field_seq(f: &str, catalog: &Catalog, path: &Path, line: usize) -> Result<u32> {
    catalog.index(f).map(|s| s as u32).ok_or_else(|| bad(path, format!("line {line}: unknown sequence '{f}'")))
}

fn field_idx(f: &str, seq: u32, catalog: &Catalog, path: &Path, line: usize) -> Result<u32> {
    let n = catalog.counts[seq as usize];
    match f.parse::<u64>() {
        Ok(i) if (i as usize) < n => Ok(i as u32),
        _ => Err(bad(
            path,
            format!(
                "line {line}: patch index '{f}' is not below {n}, the patch count of {}",
                catalog.names[seq as usize]
            ),
        )),
    }
}

fn field_t(f: &str, path: &Path, line: usize) -> Result<u8> {
    match f.parse::<u8>() {
        Ok(t) if t <= 5 => Ok(t),
        _ => Err(bad(path, format!("line {line}: type '{f}' is not in 0..5"))),
    }
}

fn read_pairs(path: &Path, catalog: &Catalog) -> Result<Vec<Pair>> {
    let text = read_text(path)?;
    rows(&text, PAIR_HEADER, path)?
        .into_iter()
        .map(|(line, f)| {
            let side = |o: usize| -> Result<PatchRef> {
                let seq = field_seq(f[o], catalog, path, line)?;
                let t = field_t(f[o + 1], path, line)?;
                Ok(PatchRef { seq, t, idx: field_idx(f[o + 2], seq, catalog, path, line)? })
            };
            Ok(Pair { a: side(0)?, b: side(3)? })
        })
        .collect()
}

fn read_refs(path: &Path, catalog: &Catalog) -> Result<Vec<RefPatch>> {
    let text = read_text(path)?;
    rows(&text, REF_HEADER, path)?
        .into_iter()
        .map(|(line, f)| {
            let seq = field_seq(f[0], catalog, path, line)?;
            Ok(RefPatch { seq, idx: field_idx(f[1], seq, catalog, path, line)? })
        })
        .collect()
}

/// How many tasks to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenOptions {
    pub pairs: usize,
    pub queries: usize,
    pub distractors: usize,
    pub seed: u64,
}

impl GenOptions {
    /// The real split-a sizes (1,000,000 pairs, 10,000 queries, 20,000
    /// distractors for 59,494 patches), scaled down for smaller datasets:
    /// about 17 pairs, 1/6 query and 1/3 distractor per test patch.
    pub fn defaults(catalog: &Catalog) -> GenOptions {
        let total: usize = catalog.counts.iter().sum();
        GenOptions {
            pairs: (total * 17).clamp(1, 1_000_000),
            queries: (total / 6).clamp(1, 10_000),
            distractors: (total / 3).clamp(1, 20_000),
            seed: 42,
        }
    }
}

/// Population standard deviation of 8-bit pixels (NumPy's `std`).
pub fn patch_std(pixels: &[u8]) -> f64 {
    if pixels.is_empty() {
        return 0.0;
    }
    let n = pixels.len() as f64;
    let mean = pixels.iter().map(|&p| p as f64).sum::<f64>() / n;
    (pixels.iter().map(|&p| (p as f64 - mean) * (p as f64 - mean)).sum::<f64>() / n).sqrt()
}

/// Draws `want` distinct textured `ref` patches from `4x` or `10x` candidates.
fn draw_refs(
    rng: &mut Rng,
    catalog: &Catalog,
    textured: &[Vec<bool>],
    candidates: usize,
    want: usize,
    exclude: &HashSet<RefPatch>,
) -> Vec<RefPatch> {
    let usable: Vec<u32> = (0..catalog.names.len() as u32).filter(|&s| catalog.counts[s as usize] > 0).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    if usable.is_empty() {
        return out;
    }
    for _ in 0..candidates {
        let seq = usable[rng.below(usable.len() as u64) as usize];
        let idx = rng.below(catalog.counts[seq as usize] as u64) as u32;
        let r = RefPatch { seq, idx };
        if textured[seq as usize][idx as usize] && seen.insert(r) && !exclude.contains(&r) {
            out.push(r);
        }
    }
    out.truncate(want);
    out
}

/// Generates the tasks of a dataset. `textured[s][i]` says whether patch i of
/// sequence s's clean `ref` image has a pixel standard deviation above 10.
pub fn generate(catalog: &Catalog, textured: &[Vec<bool>], opts: &GenOptions) -> Result<Tasks> {
    if textured.len() != catalog.names.len() || textured.iter().zip(&catalog.counts).any(|(t, &c)| t.len() != c) {
        return Err(Error::Shape("generate: one texture flag per patch of every sequence is needed".into()));
    }
    let pairable: Vec<u32> = (0..catalog.names.len() as u32).filter(|&s| catalog.counts[s as usize] >= 2).collect();
    let mut tasks = Tasks::default();
    if opts.pairs > 0 {
        if pairable.is_empty() {
            return Err(Error::InvalidArgument("no test sequence has 2 patches to make pairs from".into()));
        }
        let mut rng = Rng::stream(opts.seed, 1);
        let any_seq: Vec<u32> = (0..catalog.names.len() as u32).filter(|&s| catalog.counts[s as usize] > 0).collect();
        for _ in 0..opts.pairs {
            let s = pairable[rng.below(pairable.len() as u64) as usize];
            let n = catalog.counts[s as usize] as u64;
            let i1 = rng.below(n) as u32;
            let i2 = (i1 as u64 + 1 + rng.below(n - 1)) as u32 % n as u32;
            let t1 = rng.below(5) as u8;
            let t2 = ((t1 as u64 + 1 + rng.below(4)) % 5) as u8;
            let s2 = any_seq[rng.below(any_seq.len() as u64) as usize];
            let j = rng.below(catalog.counts[s2 as usize] as u64) as u32;
            let a = PatchRef { seq: s, t: t1, idx: i1 };
            tasks.pos.push(Pair { a, b: PatchRef { seq: s, t: t2, idx: i1 } });
            tasks.neg_intra.push(Pair { a, b: PatchRef { seq: s, t: t2, idx: i2 } });
            tasks.neg_inter.push(Pair { a, b: PatchRef { seq: s2, t: t2, idx: j } });
        }
    }
    let mut rng = Rng::stream(opts.seed, 2);
    tasks.queries = draw_refs(&mut rng, catalog, textured, 4 * opts.queries, opts.queries, &HashSet::new());
    let q: HashSet<RefPatch> = tasks.queries.iter().copied().collect();
    tasks.distractors = draw_refs(&mut rng, catalog, textured, 10 * opts.distractors, opts.distractors, &q);
    Ok(tasks)
}
