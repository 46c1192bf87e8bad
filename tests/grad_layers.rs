//! Every non-convolution layer against finite differences (proptest over
//! shapes, including batch 1, one channel, odd and unequal H and W), against
//! a direct reference forward, and on its error and accumulation contracts.
//!
//! Gradient buffers start at `ACC0`, and the check subtracts it again, so a
//! backward that overwrote instead of accumulating would fail every check.

mod common;

use common::{TOL, Tol, assert_close, check_grad, proj, rand_vec};
use nhpatch::error::Error;
use nhpatch::layers::batchnorm::{self, Activation::Identity, Activation::Relu, BatchNormConfig};
use nhpatch::layers::dropout::{self, DropoutConfig};
use nhpatch::layers::{DxMode, Shape4, concat, input_norm, l2norm, maxpool, relu, reshape, residual, upsample};
use nhpatch::rng::Rng;
use proptest::prelude::*;

/// Where every gradient buffer starts.
const ACC0: f32 = 0.25;
/// Finite-difference step.
const EPS: f32 = 1e-2;
/// Indices checked per buffer.
const CHECKS: usize = 48;
/// The normalising layers are smooth but curved; central differences in f32
/// with eps 1e-2 leave a little more error than the piecewise-linear ones.
const TOL_NORM: Tol = Tol { atol: 4e-3, rtol: 2e-2 };

fn acc_buf(len: usize) -> Vec<f32> {
    vec![ACC0; len]
}

/// The gradient a backward added to an `ACC0`-filled buffer.
fn added(g: &[f32]) -> Vec<f32> {
    g.iter().map(|&v| v - ACC0).collect()
}

/// Runs a forward into a fresh NaN-filled output of `len` (every element must be written).
fn fresh(len: usize, forward: impl FnOnce(&mut [f32]) -> nhpatch::Result<()>) -> Vec<f32> {
    let mut out = vec![f32::NAN; len];
    forward(&mut out).unwrap();
    out
}

/// `check_grad` with this file's step and sample size, as a proptest failure.
fn grad_ok(
    what: &str,
    x: &[f32],
    analytic: &[f32],
    tol: Tol,
    loss: impl FnMut(&[f32]) -> f64,
) -> Result<(), TestCaseError> {
    check_grad(what, x, analytic, EPS, tol, CHECKS, loss).map_err(TestCaseError::fail)
}

fn is_shape_err<T>(r: nhpatch::Result<T>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

/// Values of magnitude in [0.5, 2) whose sign alternates with `key(i)`, so
/// every group of two or more consecutive keys has a spread well above the
/// finite-difference step (normalising layers stay far from a zero variance).
fn alternating(rng: &mut Rng, len: usize, key: impl Fn(usize) -> usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v = rng.uniform(0.5, 2.0);
            if key(i).is_multiple_of(2) { v } else { -v }
        })
        .collect()
}

/// Index of flat element `i` inside its channel (batch-major), for BN data.
fn channel_key(s: Shape4) -> impl Fn(usize) -> usize {
    move |i| (i / s.image_len()) * s.plane() + i % s.plane()
}

/// Distinct values 0.1 apart in random order: no max flips under eps = 1e-2.
fn distinct(rng: &mut Rng, len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..len).map(|i| (i as f32 - len as f32 / 2.0) * 0.1).collect();
    rng.shuffle(&mut v);
    v
}

/// Random values of magnitude in [0.1, 2) with random signs: away from ReLU's kink.
fn off_zero(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let v = rng.uniform(0.1, 2.0);
            if rng.next_f32() < 0.5 { -v } else { v }
        })
        .collect()
}

fn shape(max_n: usize, max_c: usize, max_h: usize, max_w: usize) -> impl Strategy<Value = Shape4> {
    (1..=max_n, 1..=max_c, 1..=max_h, 1..=max_w).prop_map(|(n, c, h, w)| Shape4::new(n, c, h, w))
}

// ---------------------------------------------------------------- BatchNorm

struct Bn {
    s: Shape4,
    cfg: BatchNormConfig,
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
    r: Vec<f32>,
}

impl Bn {
    fn new(s: Shape4, affine: bool, seed: u64) -> Bn {
        let mut rng = Rng::new(seed);
        let cfg = BatchNormConfig::new(s.c, 1e-3, 0.1, affine).unwrap();
        let p = cfg.param_len();
        Bn {
            s,
            cfg,
            x: alternating(&mut rng, s.len(), channel_key(s)),
            gamma: rand_vec(&mut rng, p, 0.5, 1.5),
            beta: rand_vec(&mut rng, p, -1.0, 1.0),
            rm: rand_vec(&mut rng, s.c, -0.5, 0.5),
            rv: rand_vec(&mut rng, s.c, 0.5, 2.0),
            r: rand_vec(&mut rng, s.len(), -1.0, 1.0),
        }
    }

    /// Training forward: (out, mean, inv_std, running_mean, running_var).
    fn train(&self, x: &[f32], gamma: &[f32], beta: &[f32]) -> [Vec<f32>; 5] {
        let c = self.s.c;
        let (mut out, mut mean, mut is) = (vec![f32::NAN; self.s.len()], vec![f32::NAN; c], vec![f32::NAN; c]);
        let (mut rm, mut rv) = (self.rm.clone(), self.rv.clone());
        batchnorm::forward_train(
            &mut out, &mut mean, &mut is, &mut rm, &mut rv, x, gamma, beta, self.s, &self.cfg, Identity,
        )
        .unwrap();
        [out, mean, is, rm, rv]
    }

    fn eval(&self, x: &[f32], gamma: &[f32], beta: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.s.len()];
        batchnorm::forward_eval(&mut out, x, gamma, beta, &self.rm, &self.rv, self.s, &self.cfg, Identity).unwrap();
        out
    }

    /// Training backward from ACC0-filled buffers: (dx, dgamma, dbeta) as added.
    fn train_grads(&self) -> [Vec<f32>; 3] {
        let [_, mean, is, _, _] = self.train(&self.x, &self.gamma, &self.beta);
        let (mut dx, mut dg, mut db) = (acc_buf(self.s.len()), acc_buf(self.gamma.len()), acc_buf(self.beta.len()));
        let mut scratch = vec![f32::NAN; 2 * self.s.c];
        batchnorm::backward_train(
            (&mut dx, DxMode::Add),
            &mut dg,
            &mut db,
            &mut scratch,
            batchnorm::Upstream::plain(&self.r),
            &self.x,
            &self.gamma,
            &mean,
            &is,
            self.s,
            &self.cfg,
        )
        .unwrap();
        [added(&dx), added(&dg), added(&db)]
    }

    fn eval_grads(&self) -> [Vec<f32>; 3] {
        let (mut dx, mut dg, mut db) = (acc_buf(self.s.len()), acc_buf(self.gamma.len()), acc_buf(self.beta.len()));
        batchnorm::backward_eval(
            &mut dx,
            &mut dg,
            &mut db,
            &self.r,
            &self.x,
            &self.gamma,
            &self.rm,
            &self.rv,
            self.s,
            &self.cfg,
        )
        .unwrap();
        [added(&dx), added(&dg), added(&db)]
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn batchnorm_train_grad(s in shape(3, 3, 5, 5), affine in any::<bool>(), seed in any::<u64>()) {
        prop_assume!(s.n * s.plane() >= 2);
        let b = Bn::new(s, affine, seed);
        let [dx, dg, db] = b.train_grads();
        grad_ok("bn dx", &b.x, &dx, TOL_NORM, |x| proj(&b.train(x, &b.gamma, &b.beta)[0], &b.r))?;
        grad_ok("bn dgamma", &b.gamma, &dg, TOL_NORM, |g| proj(&b.train(&b.x, g, &b.beta)[0], &b.r))?;
        grad_ok("bn dbeta", &b.beta, &db, TOL_NORM, |be| proj(&b.train(&b.x, &b.gamma, be)[0], &b.r))?;
    }

    /// The fused backward of BatchNorm + ReLU (`Upstream::relu_out`) against
    /// its slow twin, ReLU's backward into a zeroed buffer and then
    /// BatchNorm's: the same bits in every gradient, with NaN, signed zeros
    /// and exact zeros in the ReLU output and signed zeros in dout; planes
    /// up to 483 values, past one block of the masked passes (`MASK_BLOCK`).
    #[test]
    fn batchnorm_relu_backward_is_relu_then_batchnorm(
        s in shape(2, 3, 21, 23), affine in any::<bool>(), seed in any::<u64>(), odd in 0usize..7,
    ) {
        prop_assume!(s.n * s.plane() >= 2);
        let b = Bn::new(s, affine, seed);
        let (c, len) = (s.c, s.len());
        let (mut y, mut mean, mut is) = (vec![f32::NAN; len], vec![f32::NAN; c], vec![f32::NAN; c]);
        let (mut rm, mut rv) = (b.rm.clone(), b.rv.clone());
        batchnorm::forward_train(&mut y, &mut mean, &mut is, &mut rm, &mut rv, &b.x, &b.gamma, &b.beta, s, &b.cfg, Relu)
            .unwrap();
        let mut dout = b.r.clone();
        for i in (odd..len).step_by(7) {
            dout[(i + 3) % len] = -0.0;
        }
        // The mask recomputed from x and the parameters: the bits of the
        // forward's own output as the mask, in every gradient and either mode.
        let with_mask = |up: batchnorm::Upstream<'_>, mode: DxMode| {
            let (mut dx, mut dg, mut db) = (acc_buf(len), acc_buf(b.gamma.len()), acc_buf(b.beta.len()));
            if mode == DxMode::Write {
                dx.fill(f32::NAN);
            }
            let mut scratch = vec![f32::NAN; 2 * c];
            batchnorm::backward_train((&mut dx, mode), &mut dg, &mut db, &mut scratch, up, &b.x, &b.gamma, &mean, &is, s, &b.cfg)
                .unwrap();
            [dx, dg, db].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
        };
        for mode in [DxMode::Add, DxMode::Write] {
            prop_assert_eq!(
                with_mask(batchnorm::Upstream::through_relu_recomputed(&dout, &b.beta), mode),
                with_mask(batchnorm::Upstream::through_relu(&dout, &y), mode)
            );
        }
        for i in (odd..len).step_by(7) {
            y[i] = [f32::NAN, -0.0, 0.0][i % 3];
        }
        let grads = |fused: bool| {
            let (mut dx, mut dg, mut db) = (acc_buf(len), acc_buf(b.gamma.len()), acc_buf(b.beta.len()));
            let mut scratch = vec![f32::NAN; 2 * c];
            if fused {
                let up = batchnorm::Upstream::through_relu(&dout, &y);
                batchnorm::backward_train((&mut dx, DxMode::Add), &mut dg, &mut db, &mut scratch, up, &b.x, &b.gamma, &mean, &is, s, &b.cfg)
                    .unwrap();
            } else {
                let mut g = vec![0.0; len];
                relu::backward(&mut g, &dout, &y).unwrap();
                batchnorm::backward_train((&mut dx, DxMode::Add), &mut dg, &mut db, &mut scratch, batchnorm::Upstream::plain(&g), &b.x, &b.gamma, &mean, &is, s, &b.cfg)
                    .unwrap();
            }
            [dx, dg, db].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
        };
        prop_assert_eq!(grads(true), grads(false));
        // DxMode::Write over a NaN-filled dx: the values of adding into zeros
        // (a zero's sign aside), dgamma and dbeta still added.
        let dx_of = |mode: DxMode, fill: f32| {
            let (mut dx, mut dg, mut db) = (vec![fill; len], acc_buf(b.gamma.len()), acc_buf(b.beta.len()));
            let mut scratch = vec![f32::NAN; 2 * c];
            let up = batchnorm::Upstream::through_relu(&dout, &y);
            batchnorm::backward_train((&mut dx, mode), &mut dg, &mut db, &mut scratch, up, &b.x, &b.gamma, &mean, &is, s, &b.cfg)
                .unwrap();
            (dx, [dg, db].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()))
        };
        let (written, wp) = dx_of(DxMode::Write, f32::NAN);
        let (added_to_zero, ap) = dx_of(DxMode::Add, 0.0);
        prop_assert!(written.iter().all(|v| !v.is_nan()));
        prop_assert_eq!(written, added_to_zero);
        prop_assert_eq!(wp, ap);
        // A mask of the wrong length is an error.
        let (mut dx, mut dg, mut db) = (acc_buf(len), acc_buf(b.gamma.len()), acc_buf(b.beta.len()));
        let mut scratch = vec![f32::NAN; 2 * c];
        let up = batchnorm::Upstream::through_relu(&dout, &y[1..]);
        prop_assert!(is_shape_err(batchnorm::backward_train(
            (&mut dx, DxMode::Add), &mut dg, &mut db, &mut scratch, up, &b.x, &b.gamma, &mean, &is, s, &b.cfg
        )));
        // So is a beta of the wrong length for the recomputed mask.
        let up = batchnorm::Upstream::through_relu_recomputed(&dout, &[0.0; 1]);
        prop_assert!((affine && c == 1) || is_shape_err(batchnorm::backward_train(
            (&mut dx, DxMode::Add), &mut dg, &mut db, &mut scratch, up, &b.x, &b.gamma, &mean, &is, s, &b.cfg
        )));
    }

    #[test]
    fn batchnorm_eval_grad(s in shape(3, 3, 5, 5), affine in any::<bool>(), seed in any::<u64>()) {
        let b = Bn::new(s, affine, seed);
        let [dx, dg, db] = b.eval_grads();
        grad_ok("bn eval dx", &b.x, &dx, TOL, |x| proj(&b.eval(x, &b.gamma, &b.beta), &b.r))?;
        grad_ok("bn eval dgamma", &b.gamma, &dg, TOL, |g| proj(&b.eval(&b.x, g, &b.beta), &b.r))?;
        grad_ok("bn eval dbeta", &b.beta, &db, TOL, |be| proj(&b.eval(&b.x, &b.gamma, be), &b.r))?;
    }
}

/// Per-channel (mean, biased var) in f64, straight from the definition.
fn bn_reference_stats(x: &[f32], s: Shape4) -> Vec<(f64, f64)> {
    (0..s.c)
        .map(|c| {
            let vals: Vec<f64> =
                (0..s.n).flat_map(|n| (0..s.plane()).map(move |p| x[(n * s.c + c) * s.plane() + p] as f64)).collect();
            let m = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / m;
            (mean, vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m)
        })
        .collect()
}

#[test]
fn batchnorm_forward_matches_f64_reference_and_updates_running_stats() {
    for (s, affine) in
        [(Shape4::new(3, 2, 5, 3), true), (Shape4::new(1, 3, 4, 7), false), (Shape4::new(2, 1, 1, 1), true)]
    {
        let mut b = Bn::new(s, affine, 11);
        // A large common offset: the two-pass variance must still be right.
        b.x.iter_mut().for_each(|v| *v += 100.0);
        let [out, mean, is, rm, rv] = b.train(&b.x, &b.gamma, &b.beta);
        let stats = bn_reference_stats(&b.x, s);
        let m = (s.n * s.plane()) as f64;
        let mom = b.cfg.momentum as f64;
        let (mut want, mut want_eval) = (vec![0.0; s.len()], vec![0.0; s.len()]);
        for (i, (w, we)) in want.iter_mut().zip(want_eval.iter_mut()).enumerate() {
            let c = (i / s.plane()) % s.c;
            let (g, be) = if affine { (b.gamma[c] as f64, b.beta[c] as f64) } else { (1.0, 0.0) };
            let (mu, var) = stats[c];
            *w = (g * (b.x[i] as f64 - mu) / (var + b.cfg.eps as f64).sqrt() + be) as f32;
            let (rmu, rvar) = (b.rm[c] as f64, b.rv[c] as f64);
            *we = (g * (b.x[i] as f64 - rmu) / (rvar + b.cfg.eps as f64).sqrt() + be) as f32;
        }
        assert_close("bn out", &out, &want, 2e-4, 1e-4);
        assert_close("bn eval out", &b.eval(&b.x, &b.gamma, &b.beta), &want_eval, 2e-4, 1e-4);
        for c in 0..s.c {
            let (mu, var) = stats[c];
            let unbiased = var * m / (m - 1.0);
            assert!((mean[c] as f64 - mu).abs() < 1e-5 * mu.abs(), "mean[{c}]");
            assert!((is[c] as f64 - 1.0 / (var + b.cfg.eps as f64).sqrt()).abs() < 1e-5 * is[c] as f64, "inv_std[{c}]");
            assert!((rm[c] as f64 - ((1.0 - mom) * b.rm[c] as f64 + mom * mu)).abs() < 1e-4, "running_mean[{c}]");
            let want_rv = (1.0 - mom) * b.rv[c] as f64 + mom * unbiased;
            assert!((rv[c] as f64 - want_rv).abs() < 1e-5 * want_rv, "running_var[{c}]: {} vs {want_rv}", rv[c]);
        }
    }
}

#[test]
fn batchnorm_with_fused_relu_is_relu_of_batchnorm() {
    let s = Shape4::new(3, 4, 5, 6);
    let cfg = BatchNormConfig::pytorch(s.c, true).unwrap();
    let mut rng = Rng::new(17);
    let x = rand_vec(&mut rng, s.len(), -2.0, 2.0);
    let (gamma, beta) = (rand_vec(&mut rng, s.c, 0.5, 1.5), rand_vec(&mut rng, s.c, -1.0, 1.0));
    let run = |act, train: bool| {
        let (mut out, mut mean, mut is) = (vec![f32::NAN; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
        let (mut rm, mut rv) = (vec![0.1; s.c], vec![2.0; s.c]);
        if train {
            batchnorm::forward_train(&mut out, &mut mean, &mut is, &mut rm, &mut rv, &x, &gamma, &beta, s, &cfg, act)
        } else {
            batchnorm::forward_eval(&mut out, &x, &gamma, &beta, &rm, &rv, s, &cfg, act)
        }
        .unwrap();
        (out, mean, is, rm, rv)
    };
    for train in [true, false] {
        let (plain, m0, i0, rm0, rv0) = run(Identity, train);
        let (fused, m1, i1, rm1, rv1) = run(Relu, train);
        let want: Vec<f32> = plain.iter().map(|v| v.max(0.0)).collect();
        assert_eq!(fused, want, "train {train}");
        assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0));
        assert_eq!((m0, i0, rm0, rv0), (m1, i1, rm1, rv1), "statistics do not depend on the activation");
    }
}

#[test]
fn batchnorm_one_value_per_channel_uses_zero_variance_for_running_var() {
    let b = Bn::new(Shape4::new(1, 2, 1, 1), true, 5);
    let [out, _, _, rm, rv] = b.train(&b.x, &b.gamma, &b.beta);
    assert_eq!(out, b.beta, "a single value normalises to 0, leaving beta");
    for c in 0..2 {
        assert!((rv[c] - 0.9 * b.rv[c]).abs() < 1e-6);
        assert!((rm[c] - (0.9 * b.rm[c] + 0.1 * b.x[c])).abs() < 1e-6);
    }
}

#[test]
fn batchnorm_results_do_not_depend_on_thread_count() {
    let b = Bn::new(Shape4::new(8, 16, 32, 32), true, 3);
    let run = |threads: usize| {
        nhpatch::threads::pool(threads).unwrap().install(|| (b.train(&b.x, &b.gamma, &b.beta), b.train_grads()))
    };
    assert!(run(1) == run(2), "1 and 2 threads disagree");
}

#[test]
fn batchnorm_config_rejects_bad_arguments() {
    for (c, eps, mom) in
        [(0, 1e-5, 0.1), (4, 0.0, 0.1), (4, -1.0, 0.1), (4, f32::NAN, 0.1), (4, 1e-5, 1.5), (4, 1e-5, -0.1)]
    {
        assert!(matches!(BatchNormConfig::new(c, eps, mom, true), Err(Error::InvalidArgument(_))), "{c} {eps} {mom}");
    }
}

/// Calls the four BatchNorm functions with buffers of the lengths `l`:
/// [tensors, gamma/beta and their gradients, per-channel statistics, scratch].
fn bn_calls(l: [usize; 4], shape: Shape4, cfg: &BatchNormConfig) -> [bool; 4] {
    let (t, p, c) = (vec![0.5; l[0]], vec![1.0; l[1]], vec![1.0; l[2]]);
    let (mut o, mut p1, mut p2, mut sc) = (t.clone(), p.clone(), p.clone(), vec![0.0; l[3]]);
    let (mut c1, mut c2, mut c3, mut c4) = (c.clone(), c.clone(), c.clone(), c.clone());
    [
        batchnorm::forward_train(&mut o, &mut c1, &mut c2, &mut c3, &mut c4, &t, &p, &p, shape, cfg, Identity),
        batchnorm::forward_eval(&mut o, &t, &p, &p, &c, &c, shape, cfg, Identity),
        batchnorm::backward_train(
            (&mut o, DxMode::Add),
            &mut p1,
            &mut p2,
            &mut sc,
            batchnorm::Upstream::plain(&t),
            &t,
            &p,
            &c,
            &c,
            shape,
            cfg,
        ),
        batchnorm::backward_eval(&mut o, &mut p1, &mut p2, &t, &t, &p, &c, &c, shape, cfg),
    ]
    .map(|r| match r {
        Ok(()) => true,
        Err(Error::Shape(_)) => false,
        Err(e) => panic!("not a shape error: {e}"),
    })
}

#[test]
fn batchnorm_rejects_bad_lengths() {
    let s = Shape4::new(2, 3, 2, 2);
    let cfg = BatchNormConfig::pytorch(3, true).unwrap();
    let good = [s.len(), 3, 3, 6];
    assert_eq!(bn_calls(good, s, &cfg), [true; 4]);
    for k in 0..3 {
        let mut bad = good;
        bad[k] -= 1;
        assert_eq!(bn_calls(bad, s, &cfg), [false; 4], "buffer class {k} one short");
    }
    assert_eq!(bn_calls([s.len(), 3, 3, 5], s, &cfg), [true, true, false, true], "short scratch");
    assert_eq!(bn_calls(good, Shape4::new(3, 2, 2, 2), &cfg), [false; 4], "wrong channel count");
    let plain = BatchNormConfig::pytorch(3, false).unwrap();
    assert_eq!(bn_calls(good, s, &plain), [false; 4], "gamma given without affine");
    assert_eq!(bn_calls([s.len(), 0, 3, 6], s, &plain), [true; 4]);
    let empty = Shape4::new(0, 3, 2, 2);
    assert_eq!(bn_calls([0, 3, 3, 6], empty, &cfg), [false, true, false, true], "no batch statistics");
}

// ---------------------------------------------------------------- ReLU

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn relu_grad(len in 1usize..200, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let (x, r) = (off_zero(&mut rng, len), rand_vec(&mut rng, len, -1.0, 1.0));
        let fwd = |x: &[f32]| fresh(len, |y| relu::forward(y, x));
        let y = fwd(&x);
        let want: Vec<f32> = x.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect();
        prop_assert_eq!(&y, &want);
        let mut dx = acc_buf(len);
        relu::backward(&mut dx, &r, &y).unwrap();
        grad_ok("relu dx", &x, &added(&dx), TOL, |x| proj(&fwd(x), &r))?;
    }
}

#[test]
fn relu_rejects_bad_lengths() {
    let mut y = vec![0.0; 4];
    assert!(is_shape_err(relu::forward(&mut y, &[1.0; 5])));
    assert!(is_shape_err(relu::backward(&mut y, &[1.0; 4], &[1.0; 3])));
}

// ---------------------------------------------------------------- MaxPool

/// Brute-force 2x2/2 max pool: (out, argmax), first maximum in row-major order.
fn maxpool_reference(x: &[f32], s: Shape4) -> (Vec<f32>, Vec<u32>) {
    let so = maxpool::pool_shape(s);
    let (mut out, mut am) = (Vec::new(), Vec::new());
    for p in 0..s.n * s.c {
        for i in 0..so.h {
            for j in 0..so.w {
                let mut best: Option<(f32, usize)> = None;
                for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let idx = (2 * i + a) * s.w + 2 * j + b;
                    let v = x[p * s.plane() + idx];
                    if best.is_none_or(|(bv, _)| v > bv) {
                        best = Some((v, idx));
                    }
                }
                let (v, idx) = best.unwrap();
                out.push(v);
                am.push(idx as u32);
            }
        }
    }
    (out, am)
}

fn maxpool_fwd(x: &[f32], s: Shape4) -> (Vec<f32>, Vec<u32>) {
    let so = maxpool::pool_shape(s);
    let (mut out, mut am) = (vec![f32::NAN; so.len()], vec![u32::MAX; so.len()]);
    maxpool::forward(&mut out, &mut am, x, s).unwrap();
    (out, am)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn maxpool_grad(s in shape(2, 3, 7, 7), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = distinct(&mut rng, s.len());
        let so = maxpool::pool_shape(s);
        let r = rand_vec(&mut rng, so.len(), -1.0, 1.0);
        let (out, am) = maxpool_fwd(&x, s);
        prop_assert_eq!((out, am.clone()), maxpool_reference(&x, s));
        let mut dx = acc_buf(s.len());
        maxpool::backward(&mut dx, &r, &am, s).unwrap();
        grad_ok("maxpool dx", &x, &added(&dx), TOL, |x| proj(&maxpool_fwd(x, s).0, &r))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The eval pool (no argmax) writes the training pool's values bit for
    /// bit: ties of equal values and of signed zeros, NaNs, odd edges.
    #[test]
    fn maxpool_eval_gives_the_bits_of_the_training_pool(s in shape(2, 3, 9, 9), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let pick = [0.0, -0.0, 1.0, -1.0, f32::NAN, 2.5];
        let x: Vec<f32> = (0..s.len()).map(|_| pick[(rng.next_u64() % 6) as usize]).collect();
        let (want, _) = maxpool_fwd(&x, s);
        let mut got = vec![7.0f32; want.len()];
        maxpool::forward_eval(&mut got, &x, s).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&got), bits(&want));
    }
}

#[test]
fn maxpool_ties_pick_the_first_maximum_and_odd_edges_are_dropped() {
    // 3x5 plane: windows at rows 0-1, cols 0-1 and 2-3; row 2 and col 4 dropped.
    let s = Shape4::new(1, 1, 3, 5);
    #[rustfmt::skip]
    let x = [
        1.0, 1.0, 0.0, 2.0, 9.0,
        1.0, 1.0, 2.0, 0.0, 9.0,
        9.0, 9.0, 9.0, 9.0, 9.0,
    ];
    let (out, am) = maxpool_fwd(&x, s);
    assert_eq!(out, [1.0, 2.0]);
    assert_eq!(am, [0, 3]);
}

#[test]
fn maxpool_rejects_bad_lengths_and_indices() {
    let s = Shape4::new(1, 2, 4, 4);
    let (x, mut out, mut am) = (vec![0.0; s.len()], vec![0.0; 8], vec![0u32; 8]);
    assert!(is_shape_err(maxpool::forward(&mut out[..7], &mut am, &x, s)));
    assert!(is_shape_err(maxpool::forward(&mut out, &mut am[..7], &x, s)));
    assert!(is_shape_err(maxpool::forward(&mut out, &mut am, &x[..31], s)));
    assert!(is_shape_err(maxpool::forward_eval(&mut out[..7], &x, s)));
    assert!(is_shape_err(maxpool::forward_eval(&mut out, &x[..31], s)));
    let mut dx = vec![0.0; s.len()];
    assert!(is_shape_err(maxpool::backward(&mut dx, &out[..7], &am, s)));
    am[3] = 16;
    assert!(is_shape_err(maxpool::backward(&mut dx, &out, &am, s)));
    assert!(dx.iter().all(|&v| v == 0.0), "nothing written before the error");
}

// ---------------------------------------------------------------- Upsample

fn upsample_fwd(x: &[f32], s: Shape4) -> Vec<f32> {
    fresh(upsample::upsample_shape(s).len(), |out| upsample::forward(out, x, s))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn upsample_grad(s in shape(2, 3, 5, 5), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = rand_vec(&mut rng, s.len(), -1.0, 1.0);
        let so = upsample::upsample_shape(s);
        let r = rand_vec(&mut rng, so.len(), -1.0, 1.0);
        let out = upsample_fwd(&x, s);
        for (k, &o) in out.iter().enumerate() {
            let (p, i, j) = (k / so.plane(), (k % so.plane()) / so.w, k % so.w);
            prop_assert_eq!(o, x[p * s.plane() + (i / 2) * s.w + j / 2]);
        }
        let mut dx = acc_buf(s.len());
        upsample::backward(&mut dx, &r, s).unwrap();
        grad_ok("upsample dx", &x, &added(&dx), TOL, |x| proj(&upsample_fwd(x, s), &r))?;
    }
}

#[test]
fn upsample_rejects_bad_lengths() {
    let s = Shape4::new(1, 2, 3, 3);
    let (x, mut out) = (vec![0.0; s.len()], vec![0.0; 4 * s.len()]);
    assert!(is_shape_err(upsample::forward(&mut out[1..], &x, s)));
    assert!(is_shape_err(upsample::forward(&mut out, &x[1..], s)));
    let mut dx = vec![0.0; s.len()];
    assert!(is_shape_err(upsample::backward(&mut dx[1..], &out, s)));
}

// ---------------------------------------------------------------- Concat

fn concat_fwd(a: &[f32], b: &[f32], sa: Shape4, sb: Shape4) -> Vec<f32> {
    fresh(concat::concat_shape(sa, sb).unwrap().len(), |out| concat::forward(out, a, b, sa, sb))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn concat_grad(sa in shape(3, 3, 4, 4), cb in 1usize..4, seed in any::<u64>()) {
        let sb = Shape4::new(sa.n, cb, sa.h, sa.w);
        let so = concat::concat_shape(sa, sb).unwrap();
        let mut rng = Rng::new(seed);
        let (a, b) = (rand_vec(&mut rng, sa.len(), -1.0, 1.0), rand_vec(&mut rng, sb.len(), -1.0, 1.0));
        let r = rand_vec(&mut rng, so.len(), -1.0, 1.0);
        let out = concat_fwd(&a, &b, sa, sb);
        for n in 0..sa.n {
            let img = &out[n * so.image_len()..][..so.image_len()];
            prop_assert_eq!(&img[..sa.image_len()], &a[n * sa.image_len()..][..sa.image_len()]);
            prop_assert_eq!(&img[sa.image_len()..], &b[n * sb.image_len()..][..sb.image_len()]);
        }
        let (mut da, mut db) = (acc_buf(sa.len()), acc_buf(sb.len()));
        concat::backward(&mut da, &mut db, &r, sa, sb).unwrap();
        grad_ok("concat da", &a, &added(&da), TOL, |a| proj(&concat_fwd(a, &b, sa, sb), &r))?;
        grad_ok("concat db", &b, &added(&db), TOL, |b| proj(&concat_fwd(&a, b, sa, sb), &r))?;
    }
}

#[test]
fn concat_rejects_bad_shapes_and_lengths() {
    let (sa, sb) = (Shape4::new(2, 1, 2, 2), Shape4::new(2, 2, 2, 2));
    let (a, b, mut out) = (vec![0.0; 8], vec![0.0; 16], vec![0.0; 24]);
    assert!(is_shape_err(concat::concat_shape(sa, Shape4::new(1, 2, 2, 2))));
    assert!(is_shape_err(concat::concat_shape(sa, Shape4::new(2, 2, 2, 3))));
    assert!(is_shape_err(concat::forward(&mut out[1..], &a, &b, sa, sb)));
    assert!(is_shape_err(concat::forward(&mut out, &a, &b[1..], sa, sb)));
    let (mut da, mut db) = (vec![0.0; 8], vec![0.0; 16]);
    assert!(is_shape_err(concat::backward(&mut da[1..], &mut db, &out, sa, sb)));
    assert!(is_shape_err(concat::backward(&mut da, &mut db, &out[1..], sa, sb)));
}

// ---------------------------------------------------------------- Dropout

fn dropout_fwd(x: &[f32], seed: u64, cfg: &DropoutConfig) -> (Vec<f32>, Vec<u8>) {
    let (mut out, mut mask) = (vec![f32::NAN; x.len()], vec![7u8; x.len()]);
    dropout::forward_train(&mut out, &mut mask, x, &mut Rng::new(seed), cfg).unwrap();
    (out, mask)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn dropout_grad(len in 1usize..200, p in 0.0f32..0.9, seed in any::<u64>()) {
        let cfg = DropoutConfig::new(p).unwrap();
        let mut rng = Rng::new(seed ^ 1);
        let (x, r) = (rand_vec(&mut rng, len, -1.0, 1.0), rand_vec(&mut rng, len, -1.0, 1.0));
        let (out, mask) = dropout_fwd(&x, seed, &cfg);
        for i in 0..len {
            prop_assert!(mask[i] <= 1);
            prop_assert_eq!(out[i], if mask[i] == 1 { x[i] * cfg.keep_scale() } else { 0.0 });
        }
        let mut dx = acc_buf(len);
        dropout::backward_train(&mut dx, &r, &mask, &cfg).unwrap();
        // Same seed each evaluation: the loss sees the same mask.
        grad_ok("dropout dx", &x, &added(&dx), TOL, |x| proj(&dropout_fwd(x, seed, &cfg).0, &r))?;
        let mut dxe = acc_buf(len);
        dropout::backward_eval(&mut dxe, &r).unwrap();
        let eval = |x: &[f32]| fresh(len, |y| dropout::forward_eval(y, x));
        prop_assert_eq!(eval(&x), x.clone());
        grad_ok("dropout eval dx", &x, &added(&dxe), TOL, |x| proj(&eval(x), &r))?;
    }
}

#[test]
fn dropout_mask_is_deterministic_and_drops_at_rate_p() {
    let x = vec![1.0; 100_000];
    for p in [0.1f32, 0.3, 0.5] {
        let cfg = DropoutConfig::new(p).unwrap();
        let (out, mask) = dropout_fwd(&x, 42, &cfg);
        assert_eq!(dropout_fwd(&x, 42, &cfg).1, mask, "same seed, same mask");
        assert_ne!(dropout_fwd(&x, 43, &cfg).1, mask, "another seed, another mask");
        let rate = mask.iter().filter(|&&m| m == 0).count() as f64 / x.len() as f64;
        assert!((rate - p as f64).abs() < 0.01, "p {p}: drop rate {rate}");
        // Inverted dropout keeps the mean.
        let mean = out.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "p {p}: mean {mean}");
    }
    let x: Vec<f32> = (0..100).map(|i| i as f32 - 50.0).collect();
    assert_eq!(dropout_fwd(&x, 9, &DropoutConfig::new(0.0).unwrap()).0, x, "p = 0 is the identity");
}

/// Rate 0 skips the generator instead of drawing: its twin draws every
/// element through `keep`, and both leave the same output, mask and generator.
#[test]
fn dropout_at_rate_zero_matches_drawing_every_element() {
    let cfg = DropoutConfig::new(0.0).unwrap();
    for len in [0usize, 1, 7, 4096] {
        let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let (mut out, mut mask, mut rng) = (vec![f32::NAN; len], vec![7u8; len], Rng::new(11));
        dropout::forward_train(&mut out, &mut mask, &x, &mut rng, &cfg).unwrap();
        let mut twin = Rng::new(11);
        let (tmask, tout): (Vec<u8>, Vec<f32>) = x
            .iter()
            .map(|&v| {
                let k = dropout::keep(&mut twin, &cfg);
                (k as u8, if k { v * cfg.keep_scale() } else { 0.0 })
            })
            .unzip();
        assert_eq!(
            (mask, out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()),
            (tmask, tout.iter().map(|v| v.to_bits()).collect()),
            "len {len}"
        );
        assert_eq!(rng.next_u64(), twin.next_u64(), "len {len}: generator state");
    }
}

#[test]
fn dropout_rejects_bad_rates_and_lengths() {
    for p in [-0.1, 1.0, 1.5, f32::NAN] {
        assert!(matches!(DropoutConfig::new(p), Err(Error::InvalidArgument(_))), "p = {p}");
    }
    let cfg = DropoutConfig::new(0.5).unwrap();
    let (mut out, mut mask) = (vec![0.0; 4], vec![0u8; 4]);
    assert!(is_shape_err(dropout::forward_train(&mut out, &mut mask[..3], &[0.0; 4], &mut Rng::new(1), &cfg)));
    assert!(is_shape_err(dropout::forward_train(&mut out, &mut mask, &[0.0; 5], &mut Rng::new(1), &cfg)));
    assert!(is_shape_err(dropout::forward_eval(&mut out, &[0.0; 3])));
    assert!(is_shape_err(dropout::backward_train(&mut out, &[0.0; 4], &mask[..2], &cfg)));
    assert!(is_shape_err(dropout::backward_eval(&mut out, &[0.0; 2])));
}

// ---------------------------------------------------------------- Reshape

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn reshape_grad(s in shape(3, 3, 4, 4), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let flat = reshape::flatten_shape(s);
        prop_assert_eq!(flat, Shape4::new(s.n, s.c * s.h * s.w, 1, 1));
        prop_assert_eq!(reshape::unflatten_shape(flat, s.c, s.h, s.w).unwrap(), s);
        let (x, r) = (rand_vec(&mut rng, s.len(), -1.0, 1.0), rand_vec(&mut rng, s.len(), -1.0, 1.0));
        let fwd = |x: &[f32]| fresh(s.len(), |y| reshape::forward(y, x, s, flat));
        prop_assert_eq!(fwd(&x), x.clone());
        let mut dx = acc_buf(s.len());
        reshape::backward(&mut dx, &r, s, flat).unwrap();
        grad_ok("reshape dx", &x, &added(&dx), TOL, |x| proj(&fwd(x), &r))?;
    }
}

#[test]
fn reshape_rejects_bad_shapes_and_lengths() {
    let s = Shape4::new(2, 3, 2, 2);
    let flat = reshape::flatten_shape(s);
    assert!(is_shape_err(reshape::unflatten_shape(flat, 3, 2, 3)));
    assert!(is_shape_err(reshape::check_reshape(s, Shape4::new(1, 24, 1, 1))));
    let (x, mut y) = (vec![0.0; 24], vec![0.0; 24]);
    assert!(is_shape_err(reshape::forward(&mut y[1..], &x, s, flat)));
    assert!(is_shape_err(reshape::forward(&mut y, &x, s, Shape4::new(2, 11, 1, 1))));
    assert!(is_shape_err(reshape::backward(&mut y, &x[1..], s, flat)));
}

// ---------------------------------------------------------------- Input normalisation

fn input_norm_fwd(x: &[f32], s: Shape4) -> [Vec<f32>; 3] {
    let (mut out, mut mean, mut d) = (vec![f32::NAN; s.len()], vec![f32::NAN; s.n], vec![f32::NAN; s.n]);
    input_norm::forward(&mut out, &mut mean, &mut d, x, s).unwrap();
    [out, mean, d]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn input_norm_grad(s in shape(3, 2, 5, 5), seed in any::<u64>()) {
        prop_assume!(s.image_len() >= 2);
        let mut rng = Rng::new(seed);
        let x = alternating(&mut rng, s.len(), |i| i);
        let r = rand_vec(&mut rng, s.len(), -1.0, 1.0);
        let [out, mean, d] = input_norm_fwd(&x, s);
        for (n, patch) in x.chunks(s.image_len()).enumerate() {
            let vals: Vec<f64> = patch.iter().map(|&v| v as f64).collect();
            let mu = vals.iter().sum::<f64>() / vals.len() as f64;
            let sd = (vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / (vals.len() - 1) as f64).sqrt();
            let want: Vec<f32> = vals.iter().map(|v| ((v - mu) / (sd + 1e-7)) as f32).collect();
            assert_close("input_norm out", &out[n * s.image_len()..][..s.image_len()], &want, 1e-5, 1e-5);
            prop_assert!((mean[n] as f64 - mu).abs() < 1e-6 && (d[n] as f64 - sd - 1e-7).abs() < 1e-6 * sd);
        }
        let mut dx = acc_buf(s.len());
        input_norm::backward(&mut dx, &r, &x, &mean, &d, s).unwrap();
        grad_ok("input_norm dx", &x, &added(&dx), TOL_NORM, |x| proj(&input_norm_fwd(x, s)[0], &r))?;
    }
}

#[test]
fn input_norm_constant_patch_maps_to_zero_with_a_finite_gradient() {
    let s = Shape4::new(1, 1, 2, 2);
    let x = [3.0; 4];
    let [out, mean, d] = input_norm_fwd(&x, s);
    assert_eq!((out, mean[0]), (vec![0.0; 4], 3.0));
    let mut dx = vec![0.0; 4];
    input_norm::backward(&mut dx, &[1.0, 2.0, 3.0, 6.0], &x, &mean, &d, s).unwrap();
    // Only the mean path remains: (g - mean(g)) / 1e-7.
    assert_close("constant patch dx", &dx, &[-2e7, -1e7, 0.0, 3e7], 0.0, 1e-5);
}

#[test]
fn input_norm_rejects_bad_lengths() {
    let s = Shape4::new(2, 1, 2, 2);
    let (x, mut out, mut m, mut d) = (vec![0.0; 8], vec![0.0; 8], vec![0.0; 2], vec![0.0; 2]);
    assert!(is_shape_err(input_norm::forward(&mut out, &mut m[..1], &mut d, &x, s)));
    assert!(is_shape_err(input_norm::forward(&mut out, &mut m, &mut d, &x[1..], s)));
    assert!(is_shape_err(input_norm::forward(&mut [0.0; 2], &mut m, &mut d, &[0.0; 2], Shape4::new(2, 1, 1, 1))));
    assert!(is_shape_err(input_norm::backward(&mut out, &x, &x, &m, &d[..1], s)));
    assert!(is_shape_err(input_norm::backward(&mut out[1..], &x, &x, &m, &d, s)));
}

// ---------------------------------------------------------------- L2 normalisation

fn l2norm_fwd(x: &[f32], s: Shape4) -> (Vec<f32>, Vec<f32>) {
    let (mut out, mut norm) = (vec![f32::NAN; s.len()], vec![f32::NAN; s.n]);
    l2norm::forward(&mut out, &mut norm, x, s).unwrap();
    (out, norm)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn l2norm_grad(n in 1usize..4, d in 1usize..40, seed in any::<u64>()) {
        let s = Shape4::new(n, d, 1, 1);
        let mut rng = Rng::new(seed);
        let x = alternating(&mut rng, s.len(), |i| i);
        let r = rand_vec(&mut rng, s.len(), -1.0, 1.0);
        let (out, norm) = l2norm_fwd(&x, s);
        for (row, o) in x.chunks(d).zip(out.chunks(d)) {
            let nrm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            let want: Vec<f32> = row.iter().map(|&v| (v as f64 / nrm) as f32).collect();
            assert_close("l2norm out", o, &want, 1e-6, 1e-6);
        }
        prop_assert!(norm.iter().all(|&v| v >= 0.5));
        let mut dx = acc_buf(s.len());
        l2norm::backward(&mut dx, &r, &x, &norm, s).unwrap();
        grad_ok("l2norm dx", &x, &added(&dx), TOL_NORM, |x| proj(&l2norm_fwd(x, s).0, &r))?;
    }
}

#[test]
fn l2norm_zero_row_uses_the_clamped_constant_denominator() {
    let s = Shape4::new(2, 2, 1, 1);
    let x = [0.0, 0.0, 3.0, 4.0];
    let (out, norm) = l2norm_fwd(&x, s);
    assert_eq!(out, [0.0, 0.0, 0.6, 0.8]);
    assert_eq!(norm, [0.0, 5.0]);
    let mut dx = vec![0.0; 4];
    l2norm::backward(&mut dx, &[1.0, -2.0, 0.0, 0.0], &x, &norm, s).unwrap();
    assert_close("zero row dx", &dx[..2], &[1e12, -2e12], 0.0, 1e-6);
    assert_eq!(&dx[2..], [0.0, 0.0]);
}

#[test]
fn l2norm_rejects_bad_lengths() {
    let s = Shape4::new(2, 3, 1, 1);
    let (x, mut out, mut norm) = (vec![1.0; 6], vec![0.0; 6], vec![0.0; 2]);
    assert!(is_shape_err(l2norm::forward(&mut out, &mut norm[..1], &x, s)));
    assert!(is_shape_err(l2norm::forward(&mut out[1..], &mut norm, &x, s)));
    assert!(is_shape_err(l2norm::backward(&mut out, &x, &x[1..], &norm, s)));
    assert!(is_shape_err(l2norm::backward(&mut out, &x, &x, &norm[..1], s)));
}

// ---------------------------------------------------------------- Residual

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn residual_grad(len in 1usize..200, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut draw = || rand_vec(&mut rng, len, -1.0, 1.0);
        let (x, f, r) = (draw(), draw(), draw());
        let fwd = |x: &[f32], f: &[f32]| fresh(len, |y| residual::forward(y, x, f));
        let want: Vec<f32> = x.iter().zip(&f).map(|(a, b)| a - b).collect();
        prop_assert_eq!(fwd(&x, &f), want);
        let (mut dx, mut df) = (acc_buf(len), acc_buf(len));
        residual::backward(&mut dx, &mut df, &r).unwrap();
        grad_ok("residual d_input", &x, &added(&dx), TOL, |x| proj(&fwd(x, &f), &r))?;
        grad_ok("residual d_f", &f, &added(&df), TOL, |f| proj(&fwd(&x, f), &r))?;
    }
}

#[test]
fn residual_rejects_bad_lengths() {
    let mut y = vec![0.0; 4];
    assert!(is_shape_err(residual::forward(&mut y, &[0.0; 4], &[0.0; 3])));
    assert!(is_shape_err(residual::backward(&mut y, &mut [0.0; 3], &[0.0; 4])));
    assert!(is_shape_err(residual::backward(&mut [0.0; 3], &mut [0.0; 4], &[0.0; 4])));
}

// ---------------------------------------------------------------- Accumulation

/// Runs `backward` twice on zeroed buffers and checks every buffer doubled.
fn doubles(what: &str, lens: &[usize], mut backward: impl FnMut(&mut [Vec<f32>])) {
    let mut g: Vec<Vec<f32>> = lens.iter().map(|&l| vec![0.0; l]).collect();
    backward(&mut g);
    let once = g.clone();
    backward(&mut g);
    for (k, (twice, once)) in g.iter().zip(&once).enumerate() {
        assert!(once.iter().any(|&v| v != 0.0), "{what}: buffer {k} got no gradient");
        let want: Vec<f32> = once.iter().map(|&v| 2.0 * v).collect();
        assert_eq!(twice, &want, "{what}: buffer {k} did not accumulate");
    }
}

#[test]
fn every_backward_accumulates() {
    let s = Shape4::new(2, 3, 5, 4);
    let mut rng = Rng::new(77);
    let x = distinct(&mut rng, s.len());
    let r = rand_vec(&mut rng, s.len(), -1.0, 1.0);

    let b = Bn::new(s, true, 8);
    let [_, mean, is, _, _] = b.train(&b.x, &b.gamma, &b.beta);
    let mut scratch = vec![0.0; 2 * s.c];
    let y = b.train(&b.x, &b.gamma, &b.beta)[0].iter().map(|&v| v.max(0.0)).collect::<Vec<f32>>();
    for (name, up) in
        [("bn train", batchnorm::Upstream::plain(&r)), ("bn train relu", batchnorm::Upstream::through_relu(&r, &y))]
    {
        doubles(name, &[s.len(), s.c, s.c], |g| {
            let [dx, dg, db] = g else { unreachable!() };
            let dx = (&mut dx[..], DxMode::Add);
            batchnorm::backward_train(dx, dg, db, &mut scratch, up, &b.x, &b.gamma, &mean, &is, s, &b.cfg).unwrap()
        });
    }
    doubles("bn eval", &[s.len(), s.c, s.c], |g| {
        let [dx, dg, db] = g else { unreachable!() };
        batchnorm::backward_eval(dx, dg, db, &r, &b.x, &b.gamma, &b.rm, &b.rv, s, &b.cfg).unwrap()
    });
    doubles("relu", &[s.len()], |g| relu::backward(&mut g[0], &r, &x).unwrap());
    let (_, am) = maxpool_fwd(&x, s);
    let pooled = &r[..maxpool::pool_shape(s).len()];
    doubles("maxpool", &[s.len()], |g| maxpool::backward(&mut g[0], pooled, &am, s).unwrap());
    let up = rand_vec(&mut rng, 4 * s.len(), -1.0, 1.0);
    doubles("upsample", &[s.len()], |g| upsample::backward(&mut g[0], &up, s).unwrap());
    let (sa, sb) = (Shape4::new(2, 1, 5, 4), Shape4::new(2, 2, 5, 4));
    doubles("concat", &[sa.len(), sb.len()], |g| {
        let [da, db] = g else { unreachable!() };
        concat::backward(da, db, &r, sa, sb).unwrap()
    });
    let cfg = DropoutConfig::new(0.5).unwrap();
    let (_, mask) = dropout_fwd(&x, 1, &cfg);
    doubles("dropout", &[s.len()], |g| dropout::backward_train(&mut g[0], &r, &mask, &cfg).unwrap());
    doubles("dropout eval", &[s.len()], |g| dropout::backward_eval(&mut g[0], &r).unwrap());
    let flat = reshape::flatten_shape(s);
    doubles("reshape", &[s.len()], |g| reshape::backward(&mut g[0], &r, s, flat).unwrap());
    let [_, m, d] = input_norm_fwd(&x, s);
    doubles("input_norm", &[s.len()], |g| input_norm::backward(&mut g[0], &r, &x, &m, &d, s).unwrap());
    let (_, norm) = l2norm_fwd(&x, s);
    doubles("l2norm", &[s.len()], |g| l2norm::backward(&mut g[0], &r, &x, &norm, s).unwrap());
    doubles("residual", &[s.len(), s.len()], |g| {
        let [di, df] = g else { unreachable!() };
        residual::backward(di, df, &r).unwrap()
    });
}
