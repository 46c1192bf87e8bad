//! Optimizers: SGD and Adam against scalar f64 references of the PyTorch
//! update rules, hand-computed steps, trainable ranges, checkpoint/resume,
//! thread-count independence, convergence, and invalid configurations.

// `step` takes a list of ranges; a one-range list is the whole-arena case, not a typo.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use common::{assert_close, rand_vec};
use nhpatch::Error;
use nhpatch::optim::adam::{Adam, AdamState};
use nhpatch::optim::sgd::{Sgd, SgdState};
use nhpatch::params::ParamLayout;
use nhpatch::rng::Rng;
use std::ops::Range;

/// torch.optim.SGD for one element over a sequence of gradients, in f64.
fn sgd_ref(cfg: &Sgd, mut p: f64, grads: &[f64]) -> f64 {
    let mut buf = 0.0;
    for (t, &grad) in grads.iter().enumerate() {
        let mut d = grad + cfg.weight_decay * p;
        if cfg.momentum != 0.0 {
            buf = if t == 0 { d } else { cfg.momentum * buf + (1.0 - cfg.dampening) * d };
            d = if cfg.nesterov { d + cfg.momentum * buf } else { buf };
        }
        p -= cfg.lr * d;
    }
    p
}

/// torch.optim.Adam for one element over a sequence of gradients, in f64.
fn adam_ref(cfg: &Adam, mut p: f64, grads: &[f64]) -> f64 {
    let (mut m, mut v) = (0.0, 0.0);
    for (i, &grad) in grads.iter().enumerate() {
        let t = (i + 1) as i32;
        let g = grad + cfg.weight_decay * p;
        m = cfg.beta1 * m + (1.0 - cfg.beta1) * g;
        v = cfg.beta2 * v + (1.0 - cfg.beta2) * g * g;
        let step_size = cfg.lr / (1.0 - cfg.beta1.powi(t));
        let denom = v.sqrt() / (1.0 - cfg.beta2.powi(t)).sqrt() + cfg.eps;
        p -= step_size * m / denom;
    }
    p
}

/// Random parameters and `steps` random gradient arenas.
fn problem(seed: u64, len: usize, steps: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut rng = Rng::new(seed);
    let p = rand_vec(&mut rng, len, -1.0, 1.0);
    let g = (0..steps).map(|_| rand_vec(&mut rng, len, -2.0, 2.0)).collect();
    (p, g)
}

/// Runs `step` over every gradient arena on the whole arena and compares with
/// `reference` applied element by element.
fn check_against_reference(
    what: &str,
    mut step: impl FnMut(&mut [f32], &[f32]),
    reference: impl Fn(f64, &[f64]) -> f64,
) {
    let (p0, grads) = problem(11, 37, 7);
    let mut p = p0.clone();
    for g in &grads {
        step(&mut p, g);
    }
    let want: Vec<f32> = (0..p0.len())
        .map(|i| {
            let gi: Vec<f64> = grads.iter().map(|g| g[i] as f64).collect();
            reference(p0[i] as f64, &gi) as f32
        })
        .collect();
    assert_close(what, &p, &want, 2e-6, 2e-5);
    assert!(p.iter().zip(&p0).all(|(a, b)| a != b), "{what}: some parameter did not move");
}

fn sgd_variants() -> Vec<(&'static str, Sgd)> {
    let plain = Sgd::new(0.05);
    vec![
        ("plain", plain),
        ("momentum", Sgd { momentum: 0.9, ..plain }),
        ("dampening", Sgd { momentum: 0.8, dampening: 0.3, ..plain }),
        ("nesterov", Sgd { momentum: 0.9, nesterov: true, ..plain }),
        ("weight decay", Sgd { weight_decay: 0.1, ..plain }),
        ("all", Sgd { momentum: 0.7, nesterov: true, weight_decay: 0.05, ..plain }),
    ]
}

fn adam_variants() -> Vec<(&'static str, Adam)> {
    let base = Adam::new(0.01);
    vec![
        ("default", base),
        ("weight decay", Adam { weight_decay: 0.1, ..base }),
        ("betas", Adam { beta1: 0.5, beta2: 0.9, eps: 1e-3, ..base }),
        ("zero beta1", Adam { beta1: 0.0, ..base }),
    ]
}

#[test]
fn sgd_matches_pytorch_reference() {
    for (what, cfg) in sgd_variants() {
        let mut state = SgdState::new(37);
        let full = [0..37];
        check_against_reference(
            &format!("sgd {what}"),
            |p, g| cfg.step(&mut state, p, g, &full).unwrap(),
            |p, g| sgd_ref(&cfg, p, g),
        );
    }
}

#[test]
fn adam_matches_pytorch_reference() {
    for (what, cfg) in adam_variants() {
        let mut state = AdamState::new(37);
        let full = [0..37];
        check_against_reference(
            &format!("adam {what}"),
            |p, g| cfg.step(&mut state, p, g, &full).unwrap(),
            |p, g| adam_ref(&cfg, p, g),
        );
        assert_eq!(state.step, 7);
    }
}

#[test]
fn sgd_hand_computed_steps() {
    // p = 1, constant gradient 1, lr 0.1, momentum 0.9.
    let run = |cfg: Sgd| {
        let (mut p, mut s) = ([1.0f32], SgdState::new(1));
        let mut out = vec![];
        for _ in 0..2 {
            cfg.step(&mut s, &mut p, &[1.0], &[0..1]).unwrap();
            out.push(p[0]);
        }
        out
    };
    let m = Sgd { momentum: 0.9, ..Sgd::new(0.1) };
    // buf = 1, then 1.9.
    assert_close("momentum", &run(m), &[0.9, 0.71], 1e-6, 0.0);
    // d = 1 + 0.9 * 1 = 1.9, then buf = 1.9 and d = 1 + 0.9 * 1.9 = 2.71.
    assert_close("nesterov", &run(Sgd { nesterov: true, ..m }), &[0.81, 0.539], 1e-6, 0.0);
    // The first step ignores dampening (buf = g), the second uses it: buf = 0.9 + 0.5.
    assert_close("dampening", &run(Sgd { dampening: 0.5, ..m }), &[0.9, 0.76], 1e-6, 0.0);
    // g = 1 + 0.5 * 1 = 1.5, then 1 + 0.5 * 0.85 = 1.425.
    assert_close("weight decay", &run(Sgd { weight_decay: 0.5, ..Sgd::new(0.1) }), &[0.85, 0.7075], 1e-6, 0.0);
}

#[test]
fn adam_first_step_moves_by_lr_times_sign() {
    // After one step m_hat = g and v_hat = g^2, so p moves by lr * g / (|g| + eps).
    let cfg = Adam::new(0.01);
    let mut p = [0.5f32, 0.5, 0.5, 0.5];
    let g = [3.0f32, -0.5, 1e-2, 0.0];
    cfg.step(&mut AdamState::new(4), &mut p, &g, &[0..4]).unwrap();
    let tiny = 0.01 * 1e-2 / (1e-2 + 1e-8);
    assert_close("adam step 1", &p, &[0.49, 0.51, 0.5 - tiny as f32, 0.5], 1e-7, 0.0);
}

/// An arena of three tensors, the middle one non-trainable (BatchNorm running statistics).
fn layout() -> (ParamLayout, Vec<Range<usize>>) {
    let mut l = ParamLayout::new();
    l.push("conv.weight", &[4, 3], true).unwrap();
    l.push("bn.running_mean", &[5], false).unwrap();
    l.push("bn.weight", &[6], true).unwrap();
    let r = l.trainable_ranges();
    (l, r)
}

#[test]
fn only_trainable_ranges_are_updated() {
    let (l, ranges) = layout();
    let (p0, grads) = problem(3, l.len(), 3);
    let frozen = l.range("bn.running_mean").unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();

    let sgd = Sgd { momentum: 0.9, weight_decay: 0.1, ..Sgd::new(0.1) };
    let (mut p, mut s) = (p0.clone(), SgdState::new(l.len()));
    let adam = Adam { weight_decay: 0.1, ..Adam::new(0.1) };
    let (mut q, mut a) = (p0.clone(), AdamState::new(l.len()));
    for g in &grads {
        sgd.step(&mut s, &mut p, g, &ranges).unwrap();
        adam.step(&mut a, &mut q, g, &ranges).unwrap();
    }
    for (what, out) in [("sgd", &p), ("adam", &q)] {
        assert_eq!(bits(&out[frozen.clone()]), bits(&p0[frozen.clone()]), "{what}: frozen slice changed");
        for r in &ranges {
            assert!(out[r.clone()].iter().zip(&p0[r.clone()]).all(|(x, y)| x != y), "{what}: {r:?} not updated");
        }
    }
    for buf in [&s.momentum_buffer, &a.exp_avg, &a.exp_avg_sq] {
        assert!(buf[frozen.clone()].iter().all(|&x| x == 0.0), "state written outside the ranges");
    }
}

#[test]
fn resuming_from_a_saved_state_is_bit_identical() {
    let (l, ranges) = layout();
    let (p0, grads) = problem(5, l.len(), 8);
    let sgd = Sgd { momentum: 0.9, nesterov: true, weight_decay: 0.01, ..Sgd::new(0.05) };
    let adam = Adam { weight_decay: 0.01, ..Adam::new(0.02) };

    // Uninterrupted runs.
    let (mut p, mut s) = (p0.clone(), SgdState::new(l.len()));
    let (mut q, mut a) = (p0.clone(), AdamState::new(l.len()));
    for g in &grads {
        sgd.step(&mut s, &mut p, g, &ranges).unwrap();
        adam.step(&mut a, &mut q, g, &ranges).unwrap();
    }

    // Runs saved after 3 steps: the state is rebuilt from its public fields, as a checkpoint loader would.
    let (mut p2, mut s2) = (p0.clone(), SgdState::new(l.len()));
    let (mut q2, mut a2) = (p0.clone(), AdamState::new(l.len()));
    for g in &grads[..3] {
        sgd.step(&mut s2, &mut p2, g, &ranges).unwrap();
        adam.step(&mut a2, &mut q2, g, &ranges).unwrap();
    }
    let mut s3 = SgdState { momentum_buffer: s2.momentum_buffer.clone(), step: s2.step };
    let mut a3 = AdamState { exp_avg: a2.exp_avg.clone(), exp_avg_sq: a2.exp_avg_sq.clone(), step: a2.step };
    let (mut p3, mut q3) = (p2.clone(), q2.clone());
    drop((s2, a2, p2, q2));
    for g in &grads[3..] {
        sgd.step(&mut s3, &mut p3, g, &ranges).unwrap();
        adam.step(&mut a3, &mut q3, g, &ranges).unwrap();
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&p3), bits(&p));
    assert_eq!(bits(&q3), bits(&q));
    assert_eq!(s3, s);
    assert_eq!(a3, a);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // Longer than one parallel chunk, with a range boundary inside a chunk.
    let len = 40_000;
    let ranges = [0..17_000, 17_001..len];
    let (p0, grads) = problem(9, len, 2);
    let run = |threads: usize| {
        nhpatch::threads::pool(threads).unwrap().install(|| {
            let sgd = Sgd { momentum: 0.9, ..Sgd::new(0.1) };
            let (mut p, mut s) = (p0.clone(), SgdState::new(len));
            let (mut q, mut a) = (p0.clone(), AdamState::new(len));
            for g in &grads {
                sgd.step(&mut s, &mut p, g, &ranges).unwrap();
                Adam::default().step(&mut a, &mut q, g, &ranges).unwrap();
            }
            (p, q, s, a)
        })
    };
    assert!(run(1) == run(3), "results differ between 1 and 3 threads");
}

#[test]
fn both_converge_on_a_quadratic() {
    // f(p) = 0.5 sum c_i (p_i - t_i)^2 with curvatures c in [0.5, 2].
    let mut rng = Rng::new(1);
    let n = 16;
    let c = rand_vec(&mut rng, n, 0.5, 2.0);
    let t = rand_vec(&mut rng, n, -3.0, 3.0);
    let grad = |p: &[f32], g: &mut [f32]| {
        for i in 0..n {
            g[i] = c[i] * (p[i] - t[i]);
        }
    };
    let mut g = vec![0.0; n];
    let full = [0..n];

    let sgd = Sgd { momentum: 0.9, nesterov: true, ..Sgd::new(0.1) };
    let (mut p, mut s) = (vec![0.0; n], SgdState::new(n));
    for _ in 0..300 {
        grad(&p, &mut g);
        sgd.step(&mut s, &mut p, &g, &full).unwrap();
    }
    assert_close("sgd optimum", &p, &t, 1e-3, 0.0);

    let adam = Adam::new(0.05);
    let (mut q, mut a) = (vec![0.0; n], AdamState::new(n));
    for _ in 0..1000 {
        grad(&q, &mut g);
        adam.step(&mut a, &mut q, &g, &full).unwrap();
    }
    assert_close("adam optimum", &q, &t, 1e-2, 0.0);
}

fn is_arg(r: nhpatch::Result<()>) -> bool {
    matches!(r, Err(Error::InvalidArgument(_)))
}

fn is_shape(r: nhpatch::Result<()>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

#[test]
fn invalid_configurations_are_rejected() {
    let sgd = Sgd::new(0.1);
    for bad in [
        Sgd { nesterov: true, ..sgd },
        Sgd { nesterov: true, momentum: 0.9, dampening: 0.1, ..sgd },
        Sgd { lr: -0.1, ..sgd },
        Sgd { lr: f64::NAN, ..sgd },
        Sgd { momentum: -0.5, ..sgd },
        Sgd { weight_decay: -1e-4, ..sgd },
        Sgd { dampening: f64::INFINITY, ..sgd },
    ] {
        assert!(is_arg(bad.validate()), "{bad:?} accepted");
        let mut p = [1.0f32];
        let mut s = SgdState::new(1);
        assert!(is_arg(bad.step(&mut s, &mut p, &[1.0], &[0..1])), "{bad:?} stepped");
        assert_eq!((p, s), ([1.0], SgdState::new(1)));
    }
    assert!(Sgd { nesterov: true, momentum: 0.9, ..sgd }.validate().is_ok());

    let adam = Adam::default();
    for bad in [
        Adam { beta1: 1.0, ..adam },
        Adam { beta2: -0.1, ..adam },
        Adam { eps: -1e-8, ..adam },
        Adam { lr: -1.0, ..adam },
        Adam { weight_decay: -0.1, ..adam },
        Adam { beta2: f64::NAN, ..adam },
    ] {
        assert!(is_arg(bad.validate()), "{bad:?} accepted");
        let mut p = [1.0f32];
        let mut s = AdamState::new(1);
        assert!(is_arg(bad.step(&mut s, &mut p, &[1.0], &[0..1])), "{bad:?} stepped");
        assert_eq!((p, s), ([1.0], AdamState::new(1)));
    }
}

#[test]
fn bad_lengths_and_ranges_are_rejected_without_side_effects() {
    let sgd = Sgd { momentum: 0.9, ..Sgd::new(0.1) };
    let adam = Adam::default();
    let cases: [(usize, usize, Vec<Range<usize>>, bool); 6] = [
        (4, 3, vec![0..4], true),                       // gradients too short
        (4, 4, vec![0..5], true),                       // range past the end
        (4, 4, vec![Range { start: 3, end: 2 }], true), // reversed range
        (4, 4, vec![0..3, 2..4], false),                // overlapping
        (4, 4, vec![2..4, 0..2], false),                // descending
        (4, 4, vec![0..2, 2..4], true),                 // valid, but the state below is too short
    ];
    for (i, (np, ng, ranges, shape)) in cases.into_iter().enumerate() {
        let mut p = vec![1.0f32; np];
        let g = vec![1.0f32; ng];
        // The last case is valid except for the state length.
        let slen = if i == 5 { 3 } else { np };
        let mut s = SgdState::new(slen);
        let mut a = AdamState::new(slen);
        let rs = sgd.step(&mut s, &mut p, &g, &ranges);
        let ra = adam.step(&mut a, &mut p, &g, &ranges);
        let check = if shape { is_shape } else { is_arg };
        assert!(check(rs) && check(ra), "case {i} not rejected as expected");
        assert_eq!(p, vec![1.0; np], "case {i}: parameters changed");
        assert_eq!((s.step, a.step), (0, 0), "case {i}: step counted");
    }
}
