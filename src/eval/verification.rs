//! Patch verification (hpatches-protocol.md, "Verification").
//!
//! For each family f in {e, h, t} a pair's side j is the patch of `ref`
//! when t_j = 0, else of image f t_j. Distances are float64 Euclidean from the
//! float32 descriptors, rounded to float32 (which makes exact ties). With
//! d = [d_neg; d_pos] and labels [0..0; 1..1] (negatives stacked first, stable
//! sort, so a tied negative ranks before a positive):
//! - balanced: ROC AUC over all rows;
//! - imbalanced (the headline): AP over the first N_pos + floor(0.2 N_pos)
//!   rows, i.e. every negative and the first 20% of the positives.
//!
//! Once with the intra-sequence negatives and once with the inter-sequence
//! ones. The fast path sorts each side's distances on their own and merges
//! them (`ap::verification_ap_auc`), which ranks exactly as the stable sort
//! of the stacked list; [`evaluate_slow`] stacks and sorts literally.

use super::ap::{average_precision, roc_auc, verification_ap_auc};
use super::dist::dist_f32;
use super::tasks::{Pair, PatchRef, Tasks};
use super::{FAMILIES, View, image_of};
use rayon::prelude::*;
use serde::Serialize;

/// One verification result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifScore {
    /// "inter" or "intra".
    pub negatives: &'static str,
    /// "e", "h" or "t".
    pub family: &'static str,
    /// AP of the imbalanced protocol (the headline).
    pub imbalanced_ap: f64,
    /// ROC AUC of the balanced protocol.
    pub balanced_auc: f64,
}

/// The descriptors one family reads, packed so that the six images of a
/// patch (`ref` and f1..f5) are adjacent: `[seq][idx][t][dim]`.
pub struct FamilyDescs {
    dim: usize,
    offsets: Vec<usize>,
    data: Vec<f32>,
}

impl FamilyDescs {
    pub fn new(view: &View, f: usize) -> FamilyDescs {
        let dim = view.dim;
        let mut offsets = Vec::with_capacity(view.seqs.len());
        let mut total = 0;
        for s in &view.seqs {
            offsets.push(total);
            total += s.count * 6;
        }
        let mut data = vec![0.0f32; total * dim];
        let mut parts = Vec::new();
        let mut rest = data.as_mut_slice();
        for s in &view.seqs {
            let (part, tail) = rest.split_at_mut(s.count * 6 * dim);
            parts.push((*s, part));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(s, part)| {
            for i in 0..s.count {
                for t in 0..6u8 {
                    let o = (i * 6 + t as usize) * dim;
                    part[o..o + dim].copy_from_slice(s.get(image_of(f, t), i, dim));
                }
            }
        });
        FamilyDescs { dim, offsets, data }
    }

    #[inline]
    fn get(&self, p: PatchRef) -> &[f32] {
        let o = (self.offsets[p.seq as usize] + p.idx as usize * 6 + p.t as usize) * self.dim;
        &self.data[o..o + self.dim]
    }
}

/// Distances of the pairs `order` (indices into `pairs`), float32.
pub fn distances(fam: &FamilyDescs, pairs: &[Pair], order: &[u32]) -> Vec<f32> {
    order
        .par_iter()
        .with_min_len(4096)
        .map(|&i| dist_f32(fam.get(pairs[i as usize].a), fam.get(pairs[i as usize].b)))
        .collect()
}

/// The indices `range` of `pairs` ordered by the descriptors they touch,
/// so that consecutive distances read nearby memory. Only the multiset of
/// each list's distances matters to AP and AUC, so any order will do.
fn memory_order(pairs: &[Pair], range: std::ops::Range<usize>) -> Vec<u32> {
    let key = |p: &Pair| ((p.a.seq as u64) << 48) | ((p.b.seq as u64) << 32) | p.a.idx as u64;
    let mut keyed: Vec<(u64, u32)> = range.map(|i| (key(&pairs[i]), i as u32)).collect();
    keyed.par_sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Rows of positives the imbalanced protocol keeps: floor(0.2 N_pos).
pub fn imbalanced_positives(n_pos: usize) -> usize {
    (0.2 * n_pos as f64).floor() as usize
}

fn sorted(mut v: Vec<f32>) -> Vec<f32> {
    // Distances are >= 0 (or +inf): their bit patterns sort like the values.
    v.par_sort_unstable_by_key(|d| d.to_bits());
    v
}

const KINDS: [&str; 2] = ["inter", "intra"];

/// Verification results in the order inter e, h, t, then intra e, h, t.
/// `tasks` must hold as many negatives of each kind as positives.
pub fn evaluate(view: &View, tasks: &Tasks) -> Vec<VerifScore> {
    let mut out = Vec::new();
    let n_pos = imbalanced_positives(tasks.pos.len());
    let head_order = memory_order(&tasks.pos, 0..n_pos);
    let tail_order = memory_order(&tasks.pos, n_pos..tasks.pos.len());
    let neg_orders = [
        memory_order(&tasks.neg_inter, 0..tasks.neg_inter.len()),
        memory_order(&tasks.neg_intra, 0..tasks.neg_intra.len()),
    ];
    let per_family: Vec<[(f64, f64); 2]> = (0..3)
        .map(|f| {
            let fam = FamilyDescs::new(view, f);
            let head = distances(&fam, &tasks.pos, &head_order);
            let mut all = head.clone();
            all.extend(distances(&fam, &tasks.pos, &tail_order));
            let (pos_head, pos_all) = rayon::join(|| sorted(head), || sorted(all));
            let mut r = [(0.0, 0.0); 2];
            for (k, negs) in [&tasks.neg_inter, &tasks.neg_intra].into_iter().enumerate() {
                let neg = sorted(distances(&fam, negs, &neg_orders[k]));
                let ((ap, _), (_, auc)) =
                    rayon::join(|| verification_ap_auc(&neg, &pos_head), || verification_ap_auc(&neg, &pos_all));
                r[k] = (ap, auc);
            }
            r
        })
        .collect();
    for (k, kind) in KINDS.iter().enumerate() {
        for (f, fam) in FAMILIES.iter().enumerate() {
            let (ap, auc) = per_family[f][k];
            out.push(VerifScore { negatives: kind, family: fam, imbalanced_ap: ap, balanced_auc: auc });
        }
    }
    out
}

/// The literal protocol: stack, per-pair distances, full stable sorts.
pub fn evaluate_slow(view: &View, tasks: &Tasks) -> Vec<VerifScore> {
    let mut out = Vec::new();
    let dim = view.dim;
    for (k, kind) in KINDS.iter().enumerate() {
        let negs = if k == 0 { &tasks.neg_inter } else { &tasks.neg_intra };
        for (f, fam) in FAMILIES.iter().enumerate() {
            let d = |p: &Pair| {
                let a = view.seqs[p.a.seq as usize].get(image_of(f, p.a.t), p.a.idx as usize, dim);
                let b = view.seqs[p.b.seq as usize].get(image_of(f, p.b.t), p.b.idx as usize, dim);
                -(dist_f32(a, b) as f64)
            };
            let scores: Vec<f64> = negs.iter().chain(&tasks.pos).map(d).collect();
            let labels: Vec<bool> = (0..scores.len()).map(|i| i >= negs.len()).collect();
            let rows = tasks.pos.len() + imbalanced_positives(tasks.pos.len());
            let rows = rows.min(scores.len());
            out.push(VerifScore {
                negatives: kind,
                family: fam,
                imbalanced_ap: average_precision(&scores[..rows], &labels[..rows], None),
                balanced_auc: roc_auc(&scores, &labels),
            });
        }
    }
    out
}
