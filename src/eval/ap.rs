//! Average precision and ROC AUC, exactly as the HPatches benchmark computes them.
//!
//! Contract (hpatches-protocol.md, "AP and AUC"): scores are `-distance`,
//! labels are 0/1. With `numpos` larger than the positives present, the
//! missing positives count in P but are never retrieved (score -inf). The
//! list is ordered by score descending with a STABLE sort (ties keep input
//! order) and cut before the first -inf. `tp`, `fp` are cumulative counts with
//! a leading 0; `recall = tp / max(P, 1e-10)`, `precision = max(tp, 1e-10) /
//! max(tp + fp, 1e-10)`; AP is the trapezoid of precision over recall. ROC:
//! `tpr = tp / max(P, 1e-10)`, `fpr = fp / max(N_neg, 1e-10)`, AUC =
//! trapezoid of tpr over fpr. The floors are the official tool's: a list
//! with no positives, or no negatives, has AUC 0 (not NaN), and AP 0 when it
//! has no positives.
//!
//! [`average_precision`] and [`roc_auc`] follow those steps literally on full
//! arrays (the slow twins). The fast paths only need where the positives (for
//! AP) or the negatives (for AUC) land in the ranked list:
//! [`ap_from_positions`] and [`auc_from_positions`] add exactly the same
//! nonzero trapezoid terms in the same order, so they agree with the arrays
//! to the last bit.

use std::cmp::Ordering;

/// The floor the benchmark puts under P and under tp and tp + fp.
pub const EPS: f64 = 1e-10;

/// Sort key of a score: NaN ranks as -inf (never retrieved), -0.0 as 0.0.
fn key(s: f64) -> f64 {
    if s.is_nan() { f64::NEG_INFINITY } else { s + 0.0 }
}

/// Indices of `scores` ordered by score descending, stable, cut before -inf.
pub fn ranked(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(scores[b]).partial_cmp(&key(scores[a])).unwrap_or(Ordering::Equal));
    let cut = order.iter().position(|&i| key(scores[i]) == f64::NEG_INFINITY).unwrap_or(order.len());
    order.truncate(cut);
    order
}

/// Cumulative tp and fp along the ranked list, each with a leading 0.
fn cumulative(scores: &[f64], labels: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let (mut tp, mut fp) = (vec![0.0], vec![0.0]);
    let (mut t, mut f) = (0.0, 0.0);
    for i in ranked(scores) {
        if labels[i] {
            t += 1.0;
        } else {
            f += 1.0;
        }
        tp.push(t);
        fp.push(f);
    }
    (tp, fp)
}

/// Trapezoid rule `sum (x[i] - x[i-1]) * (y[i] + y[i-1]) / 2`, summed in order.
pub fn trapezoid(y: &[f64], x: &[f64]) -> f64 {
    let mut s = 0.0;
    for i in 1..x.len().min(y.len()) {
        s += (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2.0;
    }
    s
}

/// AP of `scores` (higher = more similar) with `labels`; `numpos` raises the
/// number of positives P when larger than the positives present. Literal
/// array implementation (the slow twin). `scores` and `labels` must have the
/// same length (extra entries of the longer one are ignored).
pub fn average_precision(scores: &[f64], labels: &[bool], numpos: Option<usize>) -> f64 {
    let n = scores.len().min(labels.len());
    let (scores, labels) = (&scores[..n], &labels[..n]);
    let present = labels.iter().filter(|&&l| l).count();
    let p = numpos.map_or(present, |np| np.max(present)) as f64;
    let (tp, fp) = cumulative(scores, labels);
    let recall: Vec<f64> = tp.iter().map(|&t| t / p.max(EPS)).collect();
    let precision: Vec<f64> = tp.iter().zip(&fp).map(|(&t, &f)| t.max(EPS) / (t + f).max(EPS)).collect();
    trapezoid(&precision, &recall)
}

/// ROC AUC of `scores` with `labels` (literal array implementation).
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let n = scores.len().min(labels.len());
    let (scores, labels) = (&scores[..n], &labels[..n]);
    let p = labels.iter().filter(|&&l| l).count() as f64;
    let neg = n as f64 - p;
    let (tp, fp) = cumulative(scores, labels);
    // Floored like the benchmark's `get_roc`: a list without positives (or
    // without negatives) scores 0, not NaN.
    let tpr: Vec<f64> = tp.iter().map(|&t| t / p.max(EPS)).collect();
    let fpr: Vec<f64> = fp.iter().map(|&f| f / neg.max(EPS)).collect();
    trapezoid(&tpr, &fpr)
}

/// AP from the 0-based positions of the retrieved positives in the ranked
/// (already cut) list, ascending, with `p` positives in all. Positive number
/// j at position n adds `(r(j+1) - r(j)) * (prec(j, n) + prec(j+1, n+1)) / 2`.
pub fn ap_from_positions(positions: impl IntoIterator<Item = usize>, p: usize) -> f64 {
    let p = (p as f64).max(EPS);
    let mut ap = 0.0;
    for (j, n) in positions.into_iter().enumerate() {
        let (t0, t1) = (j as f64, (j + 1) as f64);
        let before = t0.max(EPS) / (n as f64).max(EPS);
        let at = t1.max(EPS) / ((n + 1) as f64).max(EPS);
        ap += (t1 / p - t0 / p) * (at + before) / 2.0;
    }
    ap
}

/// ROC AUC from the 0-based positions of the retrieved negatives in the
/// ranked (already cut) list, ascending, with `p` positives and `neg`
/// negatives in all. Negative number k at position n has n - k positives
/// before it, and adds `(fpr(k+1) - fpr(k)) * tpr * 2 / 2`. Both counts are
/// floored at [`EPS`] as in `roc_auc`, so an empty side gives 0.
pub fn auc_from_positions(positions: impl IntoIterator<Item = usize>, p: usize, neg: usize) -> f64 {
    let (p, neg) = ((p as f64).max(EPS), (neg as f64).max(EPS));
    let mut auc = 0.0;
    for (k, n) in positions.into_iter().enumerate() {
        let tpr = (n - k) as f64 / p;
        auc += ((k + 1) as f64 / neg - k as f64 / neg) * (tpr + tpr) / 2.0;
    }
    auc
}

/// AP and AUC of a verification list `[negatives; positives]` given each
/// side's distances sorted ascending (score = -distance). Ties rank the
/// negative first (negatives are stacked first and the sort is stable);
/// distances of +inf (score -inf) are never retrieved.
pub fn verification_ap_auc(neg_sorted: &[f32], pos_sorted: &[f32]) -> (f64, f64) {
    let (np, nn) = (pos_sorted.len(), neg_sorted.len());
    let fin_p = pos_sorted.partition_point(|d| *d < f32::INFINITY);
    let fin_n = neg_sorted.partition_point(|d| *d < f32::INFINITY);
    let mut k = 0;
    let ap = ap_from_positions(
        pos_sorted[..fin_p].iter().enumerate().map(|(j, &d)| {
            while k < fin_n && neg_sorted[k] <= d {
                k += 1;
            }
            j + k
        }),
        np,
    );
    let mut j = 0;
    let auc = auc_from_positions(
        neg_sorted[..fin_n].iter().enumerate().map(|(k, &d)| {
            while j < fin_p && pos_sorted[j] < d {
                j += 1;
            }
            j + k
        }),
        np,
        nn,
    );
    (ap, auc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ap_d(d: &[f64], l: &[u8], numpos: Option<usize>) -> f64 {
        let s: Vec<f64> = d.iter().map(|x| -x).collect();
        let l: Vec<bool> = l.iter().map(|&x| x == 1).collect();
        average_precision(&s, &l, numpos)
    }

    #[test]
    fn protocol_vectors() {
        assert!((ap_d(&[1., 2.], &[0, 1], None) - 0.25000000005).abs() < 1e-15);
        assert!((ap_d(&[1., 2., 3.], &[1, 0, 1], None) - 19.0 / 24.0).abs() < 1e-15);
        assert!((ap_d(&[1., 1., 2.], &[0, 1, 0], None) - 0.25000000005).abs() < 1e-15);
        assert!((ap_d(&[5., 5., 5., 5.], &[1, 0, 1, 0], None) - 19.0 / 24.0).abs() < 1e-15);
        assert!((ap_d(&[1., 2., 3.], &[1, 0, 1], Some(4)) - 19.0 / 48.0).abs() < 1e-15);
    }

    #[test]
    fn fast_positions_equal_arrays() {
        // [1,2,3] labels [1,0,1]: positives at positions 0 and 2.
        assert_eq!(ap_from_positions([0, 2], 2), ap_d(&[1., 2., 3.], &[1, 0, 1], None));
        assert_eq!(ap_from_positions([0, 2], 4), ap_d(&[1., 2., 3.], &[1, 0, 1], Some(4)));
        let s = [-1.0, -2.0, -3.0];
        assert_eq!(auc_from_positions([1], 2, 1), roc_auc(&s, &[true, false, true]));
        // Negatives first on ties.
        let (ap, auc) = verification_ap_auc(&[1.0, 2.0], &[1.0, 3.0]);
        let sc = [-1.0, -2.0, -1.0, -3.0];
        let lb = [false, false, true, true];
        assert_eq!(ap, average_precision(&sc, &lb, None));
        assert_eq!(auc, roc_auc(&sc, &lb));
    }

    #[test]
    fn lists_without_positives_or_negatives_score_zero_like_the_official_tool() {
        // get_roc floors P and N at 1e-10: tpr (or fpr) stays 0, so the area is 0.
        let s = [-1.0, -2.0, -3.0];
        assert_eq!(roc_auc(&s, &[false; 3]), 0.0);
        assert_eq!(roc_auc(&s, &[true; 3]), 0.0);
        assert_eq!(roc_auc(&[], &[]), 0.0);
        assert_eq!(average_precision(&s, &[false; 3], None), 0.0);
        assert_eq!(auc_from_positions([0, 1, 2], 0, 3), 0.0);
        assert_eq!(auc_from_positions([], 3, 0), 0.0);
        assert_eq!(verification_ap_auc(&[1.0, 2.0], &[]), (0.0, 0.0));
        assert_eq!(verification_ap_auc(&[], &[1.0, 2.0]).1, 0.0);
        assert_eq!(verification_ap_auc(&[], &[1.0, 2.0]).0, 1.0);
        for v in [roc_auc(&s, &[false; 3]), auc_from_positions([0], 0, 1)] {
            assert!(!v.is_nan());
        }
    }
}
