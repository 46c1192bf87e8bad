//! Results of the three tasks: the per-family breakdown, the headline mAPs,
//! text tables and JSON.
//!
//! Headline (hpatches-protocol.md): verification = mean of the 6 imbalanced
//! APs ({inter, intra} x {e, h, t}); matching = mean AP over sequences x
//! {e, h, t} x 5; retrieval = mean over queries, families and pool sizes,
//! in float64 (the official tool's float32 mean differs by up to ~5e-8);
//! and the mean of the three. The last line of the text report is
//! `Verification 0.81  Matching 0.22  Retrieval 0.51` (two decimals).

use super::matching::{self, MatchScore};
use super::retrieval::{self, RetrievalScores};
use super::tasks::Tasks;
use super::verification::{self, VerifScore};
use super::{Catalog, Descriptors, FAMILIES, View};
use crate::error::Result;
use serde::Serialize;
use std::fmt::Write;
use std::time::Instant;

/// Mean matching AP of one family.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FamilyMap {
    pub family: &'static str,
    pub map: f64,
}

/// Wall time of each task, seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    pub verification_s: f64,
    pub matching_s: f64,
    pub retrieval_s: f64,
}

/// Everything the benchmark reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Results {
    pub sequences: usize,
    pub patches_per_image: usize,
    pub pairs: usize,
    pub verification: Vec<VerifScore>,
    pub matching_families: Vec<FamilyMap>,
    pub matching: Vec<MatchScore>,
    pub retrieval: RetrievalScores,
    pub verification_map: f64,
    pub matching_map: f64,
    pub retrieval_map: f64,
    /// Mean of the three mAPs.
    pub mean: f64,
    pub timings: Timings,
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    if n == 0 { f64::NAN } else { s / n as f64 }
}

fn assemble(
    catalog: &Catalog,
    tasks: &Tasks,
    verification: Vec<VerifScore>,
    matching: Vec<MatchScore>,
    retrieval: RetrievalScores,
    timings: Timings,
) -> Results {
    let matching_families = FAMILIES
        .iter()
        .map(|&family| FamilyMap { family, map: mean(matching.iter().filter(|m| m.family == family).map(|m| m.ap)) })
        .collect();
    let verification_map = mean(verification.iter().map(|v| v.imbalanced_ap));
    let matching_map = mean(matching.iter().map(|m| m.ap));
    let retrieval_map = retrieval.mean;
    Results {
        sequences: catalog.names.len(),
        patches_per_image: catalog.patches(),
        pairs: tasks.pos.len(),
        verification,
        matching_families,
        matching,
        retrieval,
        verification_map,
        matching_map,
        retrieval_map,
        mean: (verification_map + matching_map + retrieval_map) / 3.0,
        timings,
    }
}

/// Runs the three tasks (fast paths) inside the current rayon pool.
pub fn evaluate(descs: &Descriptors, catalog: &Catalog, tasks: &Tasks, split: &str) -> Result<Results> {
    tasks.check_balance(split)?;
    let view = View::new(descs, catalog)?;
    let t = Instant::now();
    let v = verification::evaluate(&view, tasks);
    let tv = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let m = matching::evaluate(&view, &catalog.names)?;
    let tm = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let r = retrieval::evaluate(&view, tasks)?;
    let tr = t.elapsed().as_secs_f64();
    Ok(assemble(catalog, tasks, v, m, r, Timings { verification_s: tv, matching_s: tm, retrieval_s: tr }))
}

/// The literal protocol (slow twins of every task), for tests.
pub fn evaluate_slow(descs: &Descriptors, catalog: &Catalog, tasks: &Tasks, split: &str) -> Result<Results> {
    tasks.check_balance(split)?;
    let view = View::new(descs, catalog)?;
    let v = verification::evaluate_slow(&view, tasks);
    let m = matching::evaluate_with(&view, &catalog.names, true)?;
    let r = retrieval::evaluate_slow(&view, tasks);
    Ok(assemble(catalog, tasks, v, m, r, Timings::default()))
}

impl Results {
    /// `Verification 0.81  Matching 0.22  Retrieval 0.51`.
    pub fn headline(&self) -> String {
        format!(
            "Verification {:.2}  Matching {:.2}  Retrieval {:.2}",
            self.verification_map, self.matching_map, self.retrieval_map
        )
    }

    /// Text tables of the three tasks, then the headline as the last line.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "HPatches benchmark: {} test sequences, {} patches per image, {} pairs per verification file, {} queries, {} distractors\n",
            self.sequences, self.patches_per_image, self.pairs, self.retrieval.queries, self.retrieval.distractors
        );
        let _ = writeln!(s, "Verification        imbalanced AP   balanced AUC");
        for v in &self.verification {
            let _ = writeln!(
                s,
                "  {:<5} {:<12} {:>13.6}   {:>12.6}",
                v.negatives, v.family, v.imbalanced_ap, v.balanced_auc
            );
        }
        let _ = writeln!(s, "  mAP (imbalanced) {:>16.8}\n", self.verification_map);
        let _ = writeln!(s, "Matching            mAP");
        for f in &self.matching_families {
            let _ = writeln!(s, "  {:<17} {:>10.6}", f.family, f.map);
        }
        let _ = writeln!(s, "  mAP {:>29.8}\n", self.matching_map);
        let _ = write!(s, "Retrieval   ");
        for k in &self.retrieval.pool_sizes {
            let _ = write!(s, "{k:>10}");
        }
        let _ = writeln!(s);
        for (f, row) in self.retrieval.families.iter().zip(&self.retrieval.map) {
            let _ = write!(s, "  {f:<10}");
            for m in row {
                let _ = write!(s, "{m:>10.6}");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "  mAP {:>29.8}\n", self.retrieval_map);
        let _ = writeln!(s, "Mean of the three mAPs {:.8}", self.mean);
        let _ = writeln!(s, "{}", self.headline());
        s
    }

    /// Pretty JSON of everything.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
