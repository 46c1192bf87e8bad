//! Losses: finite-difference gradient checks over random shapes (proptest),
//! hand-computed values, accumulation into non-zero gradients, and errors.
//!
//! Random inputs are resampled away from the kinks (L1 at pred == target,
//! hinges at 0, near-ties of the hardest negative, the duplicate threshold),
//! so that a central difference of half-width `eps` never straddles one.

mod common;

use common::{Tol, assert_close, check_grad, rand_vec};
use nhpatch::Error;
use nhpatch::loss::distill::DistillLoss;
use nhpatch::loss::hardnet::{HardNetLoss, HardNetWorkspace};
use nhpatch::loss::l1::l1_loss;
use nhpatch::loss::mse::mse_loss;
use nhpatch::loss::sos::{SosRegularizer, SosWorkspace};
use nhpatch::loss::triplet::TripletLoss;
use nhpatch::rng::Rng;
use proptest::prelude::*;

/// The smooth losses here are checked with a small step: tight tolerances.
const SMOOTH: Tol = Tol { atol: 1e-3, rtol: 5e-3 };

fn sq_dist(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(&u, &v)| (u as f64 - v as f64).powi(2)).sum()
}

/// f64 reference of the triplet loss, with the smallest |hinge| over the rows.
fn triplet_ref(a: &[f32], p: &[f32], n: &[f32], dim: usize, margin: f64) -> (f64, f64) {
    let batch = a.len() / dim;
    let (mut total, mut closest) = (0.0, f64::INFINITY);
    for b in 0..batch {
        let row = b * dim..(b + 1) * dim;
        let h = (sq_dist(&a[row.clone()], &p[row.clone()]) - sq_dist(&a[row.clone()], &n[row])) / dim as f64 + margin;
        total += h.max(0.0);
        closest = closest.min(h.abs());
    }
    (total / batch as f64, closest)
}

/// f64 reference of the HardNet loss, written from the paper's formulas, with
/// the smallest distance of the forward to any kink: a hinge at 0, a near-tie
/// between the chosen negative and the runner-up, an entry near the 0.008
/// duplicate threshold, a distance near 0 (where the square root bends).
fn hardnet_ref(a: &[f32], p: &[f32], dim: usize, margin: f64, swap: bool) -> (f64, f64) {
    let b = a.len() / dim;
    let d = |i: usize, j: usize| (sq_dist(&a[i * dim..(i + 1) * dim], &p[j * dim..(j + 1) * dim]) + 1e-6).sqrt() + 1e-8;
    let mut kink = f64::INFINITY;
    let mut m = vec![0.0; b * b];
    for i in 0..b {
        for j in 0..b {
            // sqrt(x^2 + 1e-6) bends sharply near x = 0: within 0.05 of it a
            // finite difference of step 1e-3 is off by percents (seen with dim 1).
            kink = kink.min(d(i, j) - 0.05);
            let mut v = d(i, j) + if i == j { 10.0 } else { 0.0 };
            kink = kink.min((v - 0.008).abs());
            if v < 0.008 {
                v += 10.0;
            }
            m[i * b + j] = v;
        }
    }
    let mut total = 0.0;
    for i in 0..b {
        // Candidates as (value, entry), the same entry listed once.
        let mut cand: Vec<(f64, usize)> = (0..b).map(|j| (m[i * b + j], i * b + j)).collect();
        if swap {
            cand.extend((0..b).filter(|&j| j != i).map(|j| (m[j * b + i], j * b + i)));
        }
        cand.sort_by(|x, y| x.0.total_cmp(&y.0));
        if cand.len() > 1 {
            kink = kink.min(cand[1].0 - cand[0].0);
        }
        let h = margin + d(i, i) - cand[0].0;
        kink = kink.min(h.abs());
        total += h.max(0.0);
    }
    (total / b as f64, kink)
}

/// f64 reference of SOSNet's regulariser, written from the paper's formulas
/// (neighbours by a full sort), with the smallest distance of the forward to
/// a kink: a tie at the edge of a neighbour set, a distance near 0.
fn sos_ref(a: &[f32], p: &[f32], dim: usize, k: usize, w: f64) -> (f64, f64) {
    let b = a.len() / dim;
    let dist =
        |x: &[f32], i: usize, j: usize| (sq_dist(&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]) + 1e-6).sqrt();
    let mut kink = f64::INFINITY;
    let mut total = 0.0;
    for i in 0..b {
        let mut member = vec![false; b];
        for x in [a, p] {
            let mut others: Vec<(f64, usize)> = (0..b).filter(|&j| j != i).map(|j| (dist(x, i, j), j)).collect();
            others.sort_by(|u, v| u.0.total_cmp(&v.0));
            for (r, &(d, j)) in others.iter().enumerate() {
                kink = kink.min(d - 0.05);
                if r < k {
                    member[j] = true;
                }
            }
            if k < others.len() {
                kink = kink.min(others[k].0 - others[k - 1].0);
            }
        }
        let sq: f64 = (0..b).filter(|&j| member[j]).map(|j| (dist(a, i, j) - dist(p, i, j)).powi(2)).sum();
        total += (sq + 1e-8).sqrt();
    }
    (w * total / b as f64, kink)
}

fn resample_away(rng: &mut Rng, len: usize, min_kink: f64, mut kink: impl FnMut(&[f32]) -> f64) -> Vec<f32> {
    for _ in 0..10_000 {
        let x = rand_vec(rng, len, -1.0, 1.0);
        if kink(&x) > min_kink {
            return x;
        }
    }
    panic!("no sample {min_kink} away from a kink in 10000 tries");
}

type PointwiseLoss = fn(&mut [f32], &[f32], &[f32]) -> nhpatch::Result<f32>;

/// Checks an elementwise mean loss against `mean_i term(pred_i - target_i)`
/// and its gradient against central differences of the loss itself.
fn check_pointwise(
    what: &str,
    loss_fn: PointwiseLoss,
    term: fn(f64) -> f64,
    pred: &[f32],
    target: &[f32],
) -> Result<(), TestCaseError> {
    let n = pred.len();
    let mut grad = vec![0.0; n];
    let loss = loss_fn(&mut grad, pred, target).unwrap();
    let want = pred.iter().zip(target).map(|(&p, &t)| term(p as f64 - t as f64)).sum::<f64>() / n as f64;
    prop_assert!((loss as f64 - want).abs() <= 1e-6 * (1.0 + want), "{what}: loss {loss} vs {want}");
    let mut scratch = vec![0.0; n];
    check_grad(what, pred, &grad, 1e-2, SMOOTH, 64, |x| {
        scratch.fill(0.0);
        loss_fn(&mut scratch, x, target).unwrap() as f64
    })
    .map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn l1_gradient_matches_finite_differences(seed in any::<u64>(), n in 1usize..40) {
        let mut rng = Rng::new(seed);
        let target = rand_vec(&mut rng, n, -1.0, 1.0);
        // |pred - target| >= 0.05 keeps every step of 1e-2 on one side of the kink.
        let pred: Vec<f32> = target
            .iter()
            .map(|&t| {
                let d = rng.uniform(0.05, 1.0);
                if rng.next_f32() < 0.5 { t - d } else { t + d }
            })
            .collect();
        check_pointwise("l1 pred", l1_loss, f64::abs, &pred, &target)?;
    }

    #[test]
    fn mse_gradient_matches_finite_differences(seed in any::<u64>(), n in 1usize..40) {
        let mut rng = Rng::new(seed);
        let pred = rand_vec(&mut rng, n, -2.0, 2.0);
        let target = rand_vec(&mut rng, n, -2.0, 2.0);
        check_pointwise("mse pred", mse_loss, |d| d * d, &pred, &target)?;
    }

    #[test]
    fn triplet_gradients_match_finite_differences(
        seed in any::<u64>(),
        batch in 1usize..7,
        dim in 1usize..10,
        margin in 0.0f32..2.0,
    ) {
        let mut rng = Rng::new(seed);
        let len = batch * dim;
        let a = rand_vec(&mut rng, len, -1.0, 1.0);
        let p = rand_vec(&mut rng, len, -1.0, 1.0);
        // A step of 1e-2 moves a hinge by at most 4e-2 / dim; 0.1 keeps it on one side.
        let n = resample_away(&mut rng, len, 0.1, |n| triplet_ref(&a, &p, n, dim, margin as f64).1);
        let cfg = TripletLoss::new(margin).unwrap();
        let (mut ga, mut gp, mut gn) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
        let loss = cfg.loss(&mut ga, &mut gp, &mut gn, &a, &p, &n, batch, dim).unwrap();
        let want = triplet_ref(&a, &p, &n, dim, margin as f64).0;
        prop_assert!((loss as f64 - want).abs() <= 1e-6 * (1.0 + want), "loss {loss} vs {want}");
        check_grad("triplet a", &a, &ga, 1e-2, SMOOTH, 64, |x| triplet_ref(x, &p, &n, dim, margin as f64).0)
            .map_err(TestCaseError::fail)?;
        check_grad("triplet p", &p, &gp, 1e-2, SMOOTH, 64, |x| triplet_ref(&a, x, &n, dim, margin as f64).0)
            .map_err(TestCaseError::fail)?;
        check_grad("triplet n", &n, &gn, 1e-2, SMOOTH, 64, |x| triplet_ref(&a, &p, x, dim, margin as f64).0)
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn hardnet_gradients_match_finite_differences(
        seed in any::<u64>(),
        batch in 1usize..8,
        dim in 1usize..10,
        margin in 0.0f32..1.5,
        swap in any::<bool>(),
    ) {
        let mut rng = Rng::new(seed);
        let len = batch * dim;
        let a = rand_vec(&mut rng, len, -1.0, 1.0);
        // A step of 1e-3 moves any distance by at most 1e-3; kinks stay 1e-2 away.
        let p = resample_away(&mut rng, len, 1e-2, |p| hardnet_ref(&a, p, dim, margin as f64, swap).1);
        let cfg = HardNetLoss::new(margin, swap).unwrap();
        let mut ws = HardNetWorkspace::new(batch);
        let (mut ga, mut gp) = (vec![0.0; len], vec![0.0; len]);
        let loss = cfg.loss(&mut ga, &mut gp, &mut ws, &a, &p, batch, dim).unwrap();
        let want = hardnet_ref(&a, &p, dim, margin as f64, swap).0;
        prop_assert!((loss as f64 - want).abs() <= 1e-5 * (1.0 + want), "loss {loss} vs {want}");
        check_grad("hardnet a", &a, &ga, 1e-3, SMOOTH, 64, |x| hardnet_ref(x, &p, dim, margin as f64, swap).0)
            .map_err(TestCaseError::fail)?;
        check_grad("hardnet p", &p, &gp, 1e-3, SMOOTH, 64, |x| hardnet_ref(&a, x, dim, margin as f64, swap).0)
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn sos_gradients_match_finite_differences(
        seed in any::<u64>(),
        batch in 2usize..9,
        dim in 1usize..8,
        knn in 1usize..4,
        weight in 0.1f32..2.0,
    ) {
        let mut rng = Rng::new(seed);
        let len = batch * dim;
        // A step of 1e-3 moves any distance by at most 1e-3: neighbour sets stay put 1e-2 from a tie.
        let a = resample_away(&mut rng, len, 1e-2, |a| sos_ref(a, a, dim, knn, 1.0).1);
        let p = resample_away(&mut rng, len, 1e-2, |p| sos_ref(&a, p, dim, knn, 1.0).1);
        let sos = SosRegularizer::new(weight, knn).unwrap();
        let mut ws = SosWorkspace::new(batch);
        let (mut ga, mut gp) = (vec![0.0; len], vec![0.0; len]);
        let loss = sos.loss(&mut ga, &mut gp, &mut ws, &a, &p, batch, dim).unwrap();
        let w = weight as f64;
        let want = sos_ref(&a, &p, dim, knn, w).0;
        prop_assert!((loss as f64 - want).abs() <= 1e-5 * (1.0 + want), "loss {loss} vs {want}");
        check_grad("sos a", &a, &ga, 1e-3, SMOOTH, 64, |x| sos_ref(x, &p, dim, knn, w).0)
            .map_err(TestCaseError::fail)?;
        check_grad("sos p", &p, &gp, 1e-3, SMOOTH, 64, |x| sos_ref(&a, x, dim, knn, w).0)
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn distill_gradients_match_finite_differences(
        seed in any::<u64>(),
        rows in 1usize..9,
        dim in 1usize..8,
        weight in 0.0f32..3.0,
    ) {
        let mut rng = Rng::new(seed);
        let len = rows * dim;
        let (d, t) = (rand_vec(&mut rng, len, -1.0, 1.0), rand_vec(&mut rng, len, -1.0, 1.0));
        let w = weight as f64;
        let reference = |x: &[f32]| w * sq_dist(x, &t) / rows as f64;
        let mut g = vec![0.0; len];
        let loss = DistillLoss::new(weight).unwrap().loss(&mut g, &d, &t, rows, dim).unwrap();
        let want = reference(&d);
        prop_assert!((loss as f64 - want).abs() <= 1e-5 * (1.0 + want), "loss {loss} vs {want}");
        check_grad("distill", &d, &g, 1e-3, SMOOTH, 64, reference).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn distill_by_hand() {
    // Two rows of 2: (1, 0) -> (0, 0) and (0, 2) -> (0, 1); L = w (1 + 1) / 2, dL/dd = 2 w (d - t) / 2.
    let (d, t) = ([1.0f32, 0.0, 0.0, 2.0], [0.0f32, 0.0, 0.0, 1.0]);
    let mut g = [0.5f32; 4];
    let loss = DistillLoss::new(3.0).unwrap().loss(&mut g, &d, &t, 2, 2).unwrap();
    assert_eq!(loss, 3.0);
    assert_eq!(g, [3.5, 0.5, 0.5, 3.5]);
    assert!(DistillLoss::new(-1.0).is_err() && DistillLoss::new(f32::NAN).is_err());
    let short = DistillLoss::new(1.0).unwrap().loss(&mut g, &d, &t[..3], 2, 2);
    assert!(short.unwrap_err().to_string().contains("targets"));
}

#[test]
fn sos_matches_pytorch() {
    // tools/sos_reference.py: PyTorch autograd in float64 on the same values (k = 1, weight 1).
    let a = [0.1, 0.5, -0.3, 0.7, -0.2, 0.4, -0.6, 0.3, 0.9, 0.2, -0.8, -0.1];
    let p = [0.3, 0.4, -0.2, 0.5, 0.1, 0.6, -0.4, -0.5, 0.8, 0.9, -0.7, 0.0];
    let want_ga: [f64; 12] = [
        -0.279418852,
        0.274352817,
        -0.223563463,
        0.256045373,
        -0.603452829,
        0.005232163,
        -0.174944603,
        0.091118313,
        0.020013218,
        0.198318082,
        0.237981698,
        0.198318082,
    ];
    let want_gp: [f64; 12] = [
        0.140138559,
        -0.118548544,
        0.381936124,
        -0.439895642,
        0.303364254,
        -0.180463108,
        0.163150196,
        0.088398065,
        0.003437315,
        0.136606888,
        -0.273213775,
        -0.204910331,
    ];
    let mut ws = SosWorkspace::new(4);
    let (mut ga, mut gp) = ([0.0f32; 12], [0.0f32; 12]);
    let loss = SosRegularizer::new(1.0, 1).unwrap().loss(&mut ga, &mut gp, &mut ws, &a, &p, 4, 3).unwrap();
    assert!((loss as f64 - 0.28591139870712035).abs() < 1e-6, "loss {loss}");
    // Row 0: {1}; row 1: {0, 3} (a's nearest is 0, p's is 3); row 2: {0, 1}; row 3: {1}.
    for (i, row) in [&[1][..], &[0, 3], &[0, 1], &[1]].iter().enumerate() {
        for j in 0..4 {
            assert_eq!(ws.is_neighbour(i, j), row.contains(&j), "neighbour ({i}, {j})");
        }
    }
    assert_close("sos grad a", &ga, &want_ga.map(|v| v as f32), 1e-6, 1e-5);
    assert_close("sos grad p", &gp, &want_gp.map(|v| v as f32), 1e-6, 1e-5);
}

#[test]
fn l1_and_mse_hand_computed() {
    let pred = [1.0, 2.0, 3.0];
    let target = [2.0, 2.0, 1.0];
    let mut g = [0.0; 3];
    assert_eq!(l1_loss(&mut g, &pred, &target).unwrap(), 1.0);
    // The equal element gets the subgradient 0, as PyTorch's sign.
    assert_close("l1 grad", &g, &[-1.0 / 3.0, 0.0, 1.0 / 3.0], 1e-7, 0.0);
    let mut g = [0.0; 3];
    assert_close("mse", &[mse_loss(&mut g, &pred, &target).unwrap()], &[5.0 / 3.0], 1e-6, 0.0);
    assert_close("mse grad", &g, &[-2.0 / 3.0, 0.0, 4.0 / 3.0], 1e-7, 0.0);
}

#[test]
fn triplet_hand_computed() {
    // Row 0: dp = 0.5, dn = 2, hinge -0.5 (inactive). Row 1: dp = 0, dn = 0.125, hinge 0.875.
    let a = [0.0, 0.0, 1.0, 1.0];
    let p = [1.0, 0.0, 1.0, 1.0];
    let n = [0.0, 2.0, 1.0, 1.5];
    let (mut ga, mut gp, mut gn) = ([0.0; 4], [0.0; 4], [0.0; 4]);
    let loss = TripletLoss::default().loss(&mut ga, &mut gp, &mut gn, &a, &p, &n, 2, 2).unwrap();
    assert_eq!(loss, 0.4375);
    // c = 2 / (B D) = 0.5: ga = c (n - p), gp = -c (a - p), gn = c (a - n) on row 1 only.
    assert_eq!(ga, [0.0, 0.0, 0.0, 0.25]);
    assert_eq!(gp, [0.0; 4]);
    assert_eq!(gn, [0.0, 0.0, 0.0, -0.25]);
    // A margin of 0 leaves row 1 active with hinge -0.125: everything inactive.
    let (mut ga, mut gp, mut gn) = ([0.0; 4], [0.0; 4], [0.0; 4]);
    let loss = TripletLoss::new(0.0).unwrap().loss(&mut ga, &mut gp, &mut gn, &a, &p, &n, 2, 2).unwrap();
    assert_eq!(loss, 0.0);
    assert_eq!([ga, gp, gn], [[0.0; 4]; 3]);
}

fn dist(s: f64) -> f64 {
    (s + 1e-6).sqrt() + 1e-8
}

#[test]
fn hardnet_two_by_two_hand_computed() {
    // D = [[d(0), d(0.8)], [d(2), d(0.4)]] (squared distances in brackets).
    let a = [1.0, 0.0, 0.0, 1.0];
    let p = [1.0, 0.0, 0.6, 0.8];
    let (d00, d01, d10, d11) = (dist(0.0), dist(0.8), dist(2.0), dist(0.4));
    let mut ws = HardNetWorkspace::new(2);
    let (mut ga, mut gp) = ([0.0; 4], [0.0; 4]);

    // Without swap: anchor 0 picks D01, anchor 1 picks D10.
    let loss = HardNetLoss::new(1.0, false).unwrap().loss(&mut ga, &mut gp, &mut ws, &a, &p, 2, 2).unwrap();
    assert_close("D", ws.dist(), &[d00 as f32, d01 as f32, d10 as f32, d11 as f32], 1e-6, 1e-6);
    assert_eq!(ws.negatives(), &[(0, 1), (1, 0)]);
    let want = ((1.0 + d00 - d01) + (1.0 + d11 - d10)) / 2.0;
    assert_close("loss, no swap", &[loss], &[want as f32], 1e-6, 1e-6);

    // With swap: anchor 1's column holds D01 < D10, so both anchors pick D01.
    let loss = HardNetLoss::default().loss(&mut ga, &mut gp, &mut ws, &a, &p, 2, 2).unwrap();
    assert_eq!(ws.negatives(), &[(0, 1), (0, 1)]);
    let want = ((1.0 + d00 - d01) + (1.0 + d11 - d01)) / 2.0;
    assert_close("loss, swap", &[loss], &[want as f32], 1e-6, 1e-6);

    // Gradient of the swap case alone: pos terms on rows (0,0) and (1,1), D01 twice with -1/2.
    let (mut ga, mut gp) = ([0.0f32; 4], [0.0f32; 4]);
    HardNetLoss::default().loss(&mut ga, &mut gp, &mut ws, &a, &p, 2, 2).unwrap();
    let u01 = [0.4 / 0.8f64.sqrt(), -0.8 / 0.8f64.sqrt()]; // (a0 - p1) / |a0 - p1|
    let u11 = [-0.6 / 0.4f64.sqrt(), 0.2 / 0.4f64.sqrt()]; // (a1 - p1) / |a1 - p1|
    // a0 - p0 = 0, so the (0,0) term adds nothing.
    let want_a = [-u01[0], -u01[1], 0.5 * u11[0], 0.5 * u11[1]];
    let want_p = [0.0, 0.0, u01[0] - 0.5 * u11[0], u01[1] - 0.5 * u11[1]];
    assert_close("grad a", &ga, &want_a.map(|x| x as f32), 1e-5, 1e-4);
    assert_close("grad p", &gp, &want_p.map(|x| x as f32), 1e-5, 1e-4);
}

#[test]
fn hardnet_masks_near_duplicates_and_single_pairs() {
    // p1 == a0: D01 ~ 0.001 < 0.008 is masked (+10), so anchor 0 finds no
    // close negative and its term vanishes; anchor 1 picks D10.
    let a = [1.0, 0.0, 0.0, 1.0];
    let p = [0.8, 0.6, 1.0, 0.0];
    let mut ws = HardNetWorkspace::new(2);
    let (mut ga, mut gp) = ([0.0; 4], [0.0; 4]);
    let loss = HardNetLoss::new(1.0, false).unwrap().loss(&mut ga, &mut gp, &mut ws, &a, &p, 2, 2).unwrap();
    assert_eq!(ws.negatives(), &[(0, 1), (1, 0)]);
    let want = (1.0 + dist(2.0) - dist(0.8)) / 2.0;
    assert_close("loss", &[loss], &[want as f32], 1e-6, 1e-6);

    // B = 1: the only negative is the masked diagonal, D00 + 10, so the loss is 0.
    let mut ws = HardNetWorkspace::new(1);
    let (mut ga, mut gp) = ([0.0; 3], [0.0; 3]);
    let loss =
        HardNetLoss::default().loss(&mut ga, &mut gp, &mut ws, &[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0], 1, 3).unwrap();
    assert_eq!(loss, 0.0);
    assert_eq!((ga, gp), ([0.0; 3], [0.0; 3]));
}

#[test]
fn every_loss_accumulates_into_its_gradients() {
    let mut rng = Rng::new(7);
    let (batch, dim) = (5, 4);
    let len = batch * dim;
    let x = rand_vec(&mut rng, len, -1.0, 1.0);
    let y = rand_vec(&mut rng, len, -1.0, 1.0);
    let z = rand_vec(&mut rng, len, -1.0, 1.0);
    let init: Vec<Vec<f32>> = (0..3).map(|_| rand_vec(&mut rng, len, -1.0, 1.0)).collect();

    // Each closure runs one loss into three gradient buffers (unused ones stay as given).
    type Run<'a> = Box<dyn Fn(&mut [Vec<f32>]) -> f32 + 'a>;
    let runs: Vec<(&str, Run)> = vec![
        ("l1", Box::new(|g| l1_loss(&mut g[0], &x, &y).unwrap())),
        ("mse", Box::new(|g| mse_loss(&mut g[0], &x, &y).unwrap())),
        (
            "triplet",
            Box::new(|g| {
                let [ga, gp, gn] = g else { unreachable!() };
                TripletLoss::new(2.0).unwrap().loss(ga, gp, gn, &x, &y, &z, batch, dim).unwrap()
            }),
        ),
        (
            "hardnet",
            Box::new(|g| {
                let [ga, gp, _] = g else { unreachable!() };
                HardNetLoss::default().loss(ga, gp, &mut HardNetWorkspace::new(batch), &x, &y, batch, dim).unwrap()
            }),
        ),
        (
            "sos",
            Box::new(|g| {
                let [ga, gp, _] = g else { unreachable!() };
                let sos = SosRegularizer::new(0.7, 2).unwrap();
                sos.loss(ga, gp, &mut SosWorkspace::new(batch), &x, &y, batch, dim).unwrap()
            }),
        ),
        ("distill", Box::new(|g| DistillLoss::new(0.7).unwrap().loss(&mut g[0], &x, &y, batch, dim).unwrap())),
    ];
    for (what, run) in runs {
        let mut fresh = vec![vec![0.0; len]; 3];
        let l0 = run(&mut fresh);
        assert!(fresh[0].iter().any(|&v| v != 0.0), "{what}: zero gradient, the test would prove nothing");
        let mut acc = init.clone();
        let l1 = run(&mut acc);
        assert_eq!(l0, l1, "{what}: loss depends on the gradient buffers");
        for k in 0..3 {
            let want: Vec<f32> = init[k].iter().zip(&fresh[k]).map(|(i, f)| i + f).collect();
            assert_close(&format!("{what} grad {k}"), &acc[k], &want, 1e-6, 1e-6);
        }
    }
}

fn is_shape<T: std::fmt::Debug>(r: nhpatch::Result<T>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

fn is_arg<T: std::fmt::Debug>(r: nhpatch::Result<T>) -> bool {
    matches!(r, Err(Error::InvalidArgument(_)))
}

#[test]
fn losses_reject_bad_lengths_and_arguments() {
    let v4 = [0.5f32; 4];
    let v3 = [0.5f32; 3];
    let mut g4 = [0.0f32; 4];
    let mut g3 = [0.0f32; 3];
    for f in [l1_loss, mse_loss] {
        assert!(is_shape(f(&mut g4, &v4, &v3)));
        assert!(is_shape(f(&mut g3, &v4, &v4)));
        assert!(is_arg(f(&mut [], &[], &[])));
    }

    let t = TripletLoss::default();
    let (mut ga, mut gp, mut gn) = ([0.0f32; 4], [0.0f32; 4], [0.0f32; 4]);
    assert!(is_shape(t.loss(&mut ga, &mut gp, &mut gn, &v4, &v4, &v3, 2, 2)));
    assert!(is_shape(t.loss(&mut ga, &mut gp, &mut g3, &v4, &v4, &v4, 2, 2)));
    assert!(is_shape(t.loss(&mut ga, &mut gp, &mut gn, &v4, &v4, &v4, 3, 2)));
    assert!(is_arg(t.loss(&mut ga, &mut gp, &mut gn, &v4, &v4, &v4, 0, 2)));
    assert!(is_arg(TripletLoss::new(-1.0)));
    assert!(is_arg(TripletLoss::new(f32::NAN)));
    assert!(is_arg(TripletLoss { margin: f32::INFINITY }.loss(&mut ga, &mut gp, &mut gn, &v4, &v4, &v4, 2, 2)));
    assert!(is_shape(t.loss(&mut ga, &mut gp, &mut gn, &v4, &v4, &v4, usize::MAX, 2)));

    let h = HardNetLoss::default();
    let mut ws = HardNetWorkspace::new(2);
    assert!(is_shape(h.loss(&mut ga, &mut gp, &mut ws, &v4, &v3, 2, 2)));
    assert!(is_shape(h.loss(&mut g3, &mut gp, &mut ws, &v4, &v4, 2, 2)));
    assert!(is_shape(h.loss(&mut ga, &mut gp, &mut HardNetWorkspace::new(3), &v4, &v4, 2, 2)));
    assert!(is_arg(h.loss(&mut ga, &mut gp, &mut ws, &v4, &v4, 2, 0)));
    assert!(is_arg(HardNetLoss::new(-0.5, true)));
    assert!(is_arg(HardNetLoss::new(f32::NAN, false)));

    let s = SosRegularizer::new(1.0, 8).unwrap();
    let mut ws = SosWorkspace::new(2);
    assert!(is_shape(s.loss(&mut ga, &mut gp, &mut ws, &v4, &v3, 2, 2)));
    assert!(is_shape(s.loss(&mut g3, &mut gp, &mut ws, &v4, &v4, 2, 2)));
    assert!(is_shape(s.loss(&mut ga, &mut gp, &mut SosWorkspace::new(3), &v4, &v4, 2, 2)));
    assert!(is_arg(s.loss(&mut ga, &mut gp, &mut ws, &v4, &v4, 0, 2)));
    assert!(is_arg(SosRegularizer::new(-1.0, 8)));
    assert!(is_arg(SosRegularizer::new(f32::INFINITY, 8)));
    assert!(is_arg(SosRegularizer::new(1.0, 0)));
}

#[test]
fn hardnet_ties_pick_the_first_index_and_the_row() {
    let cfg = HardNetLoss::default();
    // Anchor 0 is exactly 1 from p1 and p2 (its column holds 5s): the first index wins.
    let mut ws = HardNetWorkspace::new(3);
    let (mut ga, mut gp) = ([0.0; 3], [0.0; 3]);
    cfg.loss(&mut ga, &mut gp, &mut ws, &[0.0, 5.0, -5.0], &[0.0, 1.0, -1.0], 3, 1).unwrap();
    assert_eq!(ws.negatives()[0], (0, 1));
    // D01 = D10 = 0.25 exactly: each anchor's row minimum wins the tie with its column.
    let mut ws = HardNetWorkspace::new(2);
    let (mut ga, mut gp) = ([0.0; 2], [0.0; 2]);
    cfg.loss(&mut ga, &mut gp, &mut ws, &[0.0, 1.0], &[0.75, 0.25], 2, 1).unwrap();
    assert_eq!(ws.negatives(), &[(0, 1), (1, 0)]);
}
