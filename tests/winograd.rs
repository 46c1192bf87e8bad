//! Winograd F(2x2, 3x3) against a direct 3x3 pad-1 convolution computed in f64:
//! forward, backward_data (accumulation and the adjoint identity), thread-count
//! determinism and argument errors.

mod common;

use common::rand_vec;
use nhpatch::layers::winograd::Winograd;
use nhpatch::rng::Rng;
use proptest::prelude::*;

/// Direct forward in f64: out[n, cout, h, w].
fn naive_forward(l: &Winograd, x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize) -> Vec<f64> {
    let (hh, ww) = (l.h as isize, l.w as isize);
    let mut out = vec![0.0f64; n * l.cout * l.h * l.w];
    for i in 0..n {
        for co in 0..l.cout {
            for oy in 0..hh {
                for ox in 0..ww {
                    let mut acc = b.map_or(0.0, |b| b[co] as f64);
                    for ci in 0..l.cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                                if iy < 0 || ix < 0 || iy >= hh || ix >= ww {
                                    continue;
                                }
                                let xv = x[((i * l.cin + ci) * l.h + iy as usize) * l.w + ix as usize] as f64;
                                let wv = w[((co * l.cin + ci) * 3 + ky as usize) * 3 + kx as usize] as f64;
                                acc += xv * wv;
                            }
                        }
                    }
                    out[((i * l.cout + co) * l.h + oy as usize) * l.w + ox as usize] = acc;
                }
            }
        }
    }
    out
}

/// Direct adjoint of `naive_forward` (no bias) in f64: dx[n, cin, h, w].
fn naive_backward_data(l: &Winograd, dout: &[f32], w: &[f32], n: usize) -> Vec<f64> {
    let (hh, ww) = (l.h as isize, l.w as isize);
    let mut dx = vec![0.0f64; n * l.cin * l.h * l.w];
    for i in 0..n {
        for co in 0..l.cout {
            for oy in 0..hh {
                for ox in 0..ww {
                    let d = dout[((i * l.cout + co) * l.h + oy as usize) * l.w + ox as usize] as f64;
                    for ci in 0..l.cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                                if iy < 0 || ix < 0 || iy >= hh || ix >= ww {
                                    continue;
                                }
                                let wv = w[((co * l.cin + ci) * 3 + ky as usize) * 3 + kx as usize] as f64;
                                dx[((i * l.cin + ci) * l.h + iy as usize) * l.w + ix as usize] += d * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// max |got - want| / max |want| (the error relative to the output's magnitude).
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter().zip(want).fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs())) / scale
}

fn forward(l: &Winograd, x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n * l.cout * l.h * l.w];
    let mut ws = l.workspace(n);
    l.forward(&mut out, x, w, b, n, &mut ws).unwrap();
    out
}

fn backward_data(l: &Winograd, dout: &[f32], w: &[f32], n: usize, prefill: f32) -> Vec<f32> {
    let mut dx = vec![prefill; n * l.cin * l.h * l.w];
    let mut ws = l.workspace(n);
    l.backward_data(&mut dx, dout, w, n, &mut ws).unwrap();
    dx
}

struct Case {
    l: Winograd,
    n: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    d: Vec<f32>,
}

fn case(cin: usize, cout: usize, h: usize, w: usize, n: usize, seed: u64) -> Case {
    let l = Winograd::new(cin, cout, h, w).unwrap();
    let mut rng = Rng::new(seed);
    Case {
        l,
        n,
        x: rand_vec(&mut rng, n * cin * h * w, -1.0, 1.0),
        w: rand_vec(&mut rng, cout * cin * 9, -0.5, 0.5),
        b: rand_vec(&mut rng, cout, -1.0, 1.0),
        d: rand_vec(&mut rng, n * cout * h * w, -1.0, 1.0),
    }
}

const TOL: f64 = 1e-4;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn forward_matches_naive(cin in 1usize..20, cout in 1usize..20, h in 1usize..=13, w in 1usize..=13,
                             n in 1usize..=3, with_bias: bool, seed: u64) {
        let c = case(cin, cout, h, w, n, seed);
        let b = with_bias.then_some(&c.b[..]);
        let err = rel_err(&forward(&c.l, &c.x, &c.w, b, n), &naive_forward(&c.l, &c.x, &c.w, b, n));
        prop_assert!(err < TOL, "relative error {err:e}");
    }

    #[test]
    fn backward_data_matches_naive_and_accumulates(cin in 1usize..20, cout in 1usize..20, h in 1usize..=13,
                                                   w in 1usize..=13, n in 1usize..=3, seed: u64) {
        let c = case(cin, cout, h, w, n, seed);
        let prefill = 0.75f32;
        let want: Vec<f64> = naive_backward_data(&c.l, &c.d, &c.w, n).iter().map(|g| g + prefill as f64).collect();
        let err = rel_err(&backward_data(&c.l, &c.d, &c.w, n, prefill), &want);
        prop_assert!(err < TOL, "relative error {err:e}");
    }

    #[test]
    fn adjoint_identity(cin in 1usize..20, cout in 1usize..20, h in 1usize..=13, w in 1usize..=13,
                        n in 1usize..=3, seed: u64) {
        // <forward(x), d> == <x, backward_data(d)>
        let c = case(cin, cout, h, w, n, seed);
        let y = forward(&c.l, &c.x, &c.w, None, n);
        let dx = backward_data(&c.l, &c.d, &c.w, n, 0.0);
        let lhs: f64 = y.iter().zip(&c.d).map(|(&a, &b)| a as f64 * b as f64).sum();
        let rhs: f64 = c.x.iter().zip(&dx).map(|(&a, &b)| a as f64 * b as f64).sum();
        let scale: f64 = y.iter().zip(&c.d).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>().max(1e-30);
        prop_assert!((lhs - rhs).abs() / scale < TOL, "<y, d> = {lhs}, <x, dx> = {rhs}");
    }
}

#[test]
fn realistic_64_to_64_32x32() {
    let c = case(64, 64, 32, 32, 4, 7);
    let b = Some(&c.b[..]);
    let fwd = rel_err(&forward(&c.l, &c.x, &c.w, b, c.n), &naive_forward(&c.l, &c.x, &c.w, b, c.n));
    let bwd = rel_err(&backward_data(&c.l, &c.d, &c.w, c.n, 0.0), &naive_backward_data(&c.l, &c.d, &c.w, c.n));
    eprintln!("64->64 32x32 n=4: forward relative error {fwd:.3e}, backward_data {bwd:.3e}");
    assert!(fwd < TOL && bwd < TOL, "forward {fwd:e}, backward_data {bwd:e}");
}

#[test]
fn multi_group_batches_match_naive() {
    // Several GEMM groups and shards per call, with a short last group.
    for (cin, cout, h, w, n) in [(3, 5, 8, 8, 40), (2, 3, 32, 32, 25), (4, 2, 6, 5, 70), (3, 3, 16, 16, 13)] {
        let c = case(cin, cout, h, w, n, 5);
        let b = Some(&c.b[..]);
        let fwd = rel_err(&forward(&c.l, &c.x, &c.w, b, n), &naive_forward(&c.l, &c.x, &c.w, b, n));
        let bwd = rel_err(&backward_data(&c.l, &c.d, &c.w, n, 0.0), &naive_backward_data(&c.l, &c.d, &c.w, n));
        assert!(fwd < TOL && bwd < TOL, "{cin}->{cout} {h}x{w} n={n}: forward {fwd:e}, backward_data {bwd:e}");
    }
}

#[test]
fn empty_batch_is_a_no_op() {
    let l = Winograd::new(3, 4, 5, 6).unwrap();
    let mut ws = l.workspace(0);
    l.forward(&mut [], &[], &[0.0; 4 * 3 * 9], None, 0, &mut ws).unwrap();
    l.backward_data(&mut [], &[], &[0.0; 4 * 3 * 9], 0, &mut ws).unwrap();
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // 16x16 and 8x8 group several images per GEMM; 7 and 33 images leave ragged groups and shards.
    for (cin, cout, h, w, n) in
        [(5, 7, 16, 16, 7), (8, 6, 8, 8, 33), (3, 4, 9, 7, 5), (4, 4, 32, 32, 3), (2, 3, 32, 32, 25)]
    {
        let c = case(cin, cout, h, w, n, 11);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| (forward(&c.l, &c.x, &c.w, Some(&c.b), n), backward_data(&c.l, &c.d, &c.w, n, 0.25)))
        };
        let (y1, dx1) = run(1);
        for threads in [2, 3] {
            let (y, dx) = run(threads);
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same(&y, &y1), "forward differs with {threads} threads ({cin}->{cout} {h}x{w} n={n})");
            assert!(same(&dx, &dx1), "backward_data differs with {threads} threads ({cin}->{cout} {h}x{w} n={n})");
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    assert!(Winograd::new(0, 1, 1, 1).is_err());
    assert!(Winograd::new(1, 0, 1, 1).is_err());
    assert!(Winograd::new(1, 1, 0, 1).is_err());
    assert!(Winograd::new(1, 1, 1, 0).is_err());
    let c = case(3, 4, 5, 6, 2, 3);
    let (l, n) = (c.l, c.n);
    let mut ws = l.workspace(n);
    let mut out = vec![0.0; n * 4 * 30];
    let mut dx = vec![0.0; n * 3 * 30];
    assert!(l.forward(&mut out, &c.x[1..], &c.w, None, n, &mut ws).is_err());
    assert!(l.forward(&mut out[1..], &c.x, &c.w, None, n, &mut ws).is_err());
    assert!(l.forward(&mut out, &c.x, &c.w[1..], None, n, &mut ws).is_err());
    assert!(l.forward(&mut out, &c.x, &c.w, Some(&c.b[1..]), n, &mut ws).is_err());
    assert!(l.forward(&mut out, &c.x, &c.w, None, n + 1, &mut ws).is_err());
    assert!(l.backward_data(&mut dx[1..], &c.d, &c.w, n, &mut ws).is_err());
    assert!(l.backward_data(&mut dx, &c.d[1..], &c.w, n, &mut ws).is_err());
    assert!(l.backward_data(&mut dx, &c.d, &c.w[1..], n, &mut ws).is_err());
    // A workspace for another batch size or another geometry.
    let mut other_n = l.workspace(n + 1);
    assert!(l.forward(&mut out, &c.x, &c.w, None, n, &mut other_n).is_err());
    assert!(l.backward_data(&mut dx, &c.d, &c.w, n, &mut other_n).is_err());
    let mut other_geom = Winograd::new(3, 4, 6, 5).unwrap().workspace(n);
    assert!(l.forward(&mut out, &c.x, &c.w, None, n, &mut other_geom).is_err());
    assert!(l.backward_data(&mut dx, &c.d, &c.w, n, &mut other_geom).is_err());
    // The right workspace still works after the refusals.
    l.forward(&mut out, &c.x, &c.w, Some(&c.b), n, &mut ws).unwrap();
    l.backward_data(&mut dx, &c.d, &c.w, n, &mut ws).unwrap();
}
