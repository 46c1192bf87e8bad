//! Conv2d (im2col + GEMM) against a naive direct convolution, finite-difference
//! gradient checks on random geometries, thread-count determinism and errors.

mod common;

use common::{TOL, assert_close, check_grad, proj, rand_vec};
use nhpatch::layers::DxMode;
use nhpatch::layers::conv2d::{Conv2d, Conv2dSpec, ConvGrads, ConvPass, Epilogue, WinogradPlan};
use nhpatch::ops::im2col::Padding;
use nhpatch::rng::Rng;
use proptest::prelude::*;

/// Direct convolution in f64: the slow twin of `Conv2d::forward`.
fn naive_forward(l: &Conv2d, x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize) -> Vec<f32> {
    let (s, g) = (l.spec, l.win);
    let mut out = vec![0.0f32; l.out_shape(n).len()];
    for i in 0..n {
        for co in 0..s.cout {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut acc = b.map_or(0.0, |b| b[co] as f64);
                    for ci in 0..s.cin {
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let iy = (oy * s.stride + ki) as isize - s.pad.top as isize;
                                let ix = (ox * s.stride + kj) as isize - s.pad.left as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((i * s.cin + ci) * g.h + iy as usize) * g.w + ix as usize];
                                let wv = w[((co * s.cin + ci) * s.kh + ki) * s.kw + kj];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((i * s.cout + co) * g.ho + oy) * g.wo + ox] = acc as f32;
                }
            }
        }
    }
    out
}

/// Direct backward in f64 (the adjoint of `naive_forward`): returns (dx, dw, db).
fn naive_backward(l: &Conv2d, dout: &[f32], x: &[f32], w: &[f32], n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (s, g) = (l.spec, l.win);
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let mut db = vec![0.0f64; s.cout];
    for i in 0..n {
        for co in 0..s.cout {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let d = dout[((i * s.cout + co) * g.ho + oy) * g.wo + ox] as f64;
                    db[co] += d;
                    for ci in 0..s.cin {
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let iy = (oy * s.stride + ki) as isize - s.pad.top as isize;
                                let ix = (ox * s.stride + kj) as isize - s.pad.left as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((i * s.cin + ci) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((co * s.cin + ci) * s.kh + ki) * s.kw + kj;
                                dx[xi] += d * w[wi] as f64;
                                dw[wi] += d * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
    (f(dx), f(dw), f(db))
}

#[derive(Clone, Debug)]
struct Case {
    spec: Conv2dSpec,
    h: usize,
    w: usize,
    n: usize,
    seed: u64,
}

/// Random geometries, including 1 channel, batch 1, odd sizes and sizes not divisible by the stride.
fn case() -> impl Strategy<Value = Case> {
    (
        1usize..4,
        1usize..5,
        1usize..4,
        1usize..4,
        1usize..3,
        0usize..3,
        0usize..3,
        any::<bool>(),
        1usize..4,
        3usize..8,
        3usize..8,
        any::<u64>(),
    )
        .prop_filter_map(
            "padding must be smaller than the kernel",
            |(cin, cout, kh, kw, stride, pt, pl, bias, n, h, w, seed)| {
                let pad = Padding {
                    top: pt.min(kh - 1),
                    left: pl.min(kw - 1),
                    bottom: (pt + 1).min(kh - 1),
                    right: pl.min(kw - 1),
                };
                let spec = Conv2dSpec { cin, cout, kh, kw, stride, pad, bias };
                Conv2d::new(spec, h, w).ok()?;
                Some(Case { spec, h, w, n, seed })
            },
        )
}

struct Data {
    l: Conv2d,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
}

fn data(c: &Case) -> Data {
    let l = Conv2d::new(c.spec, c.h, c.w).unwrap();
    let mut rng = Rng::new(c.seed);
    let x = rand_vec(&mut rng, l.in_shape(c.n).len(), -1.0, 1.0);
    let w = rand_vec(&mut rng, l.weight_len(), -1.0, 1.0);
    let b = c.spec.bias.then(|| rand_vec(&mut rng, c.spec.cout, -1.0, 1.0));
    Data { l, x, w, b }
}

fn run_forward(l: &Conv2d, x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize) -> Vec<f32> {
    let mut ws = l.workspace(n);
    let mut out = vec![f32::NAN; l.out_shape(n).len()];
    l.forward(&mut out, x, w, b, n, &mut ws).unwrap();
    out
}

/// One output channel, 3 columns wide, one column of padding on each side:
/// `conv2d_direct`'s row-at-a-time path, from width 2 (no inner column) to
/// 33, against the f64 direct convolution; kernel heights 1-3 with every
/// split of the padding rows.
#[test]
fn direct_three_tap_rows_match_naive() {
    for (h, w) in [(2, 2), (3, 3), (5, 2), (4, 7), (9, 33)] {
        for (kh, top, bottom) in [(3, 1, 1), (3, 0, 2), (3, 2, 0), (2, 1, 0), (1, 0, 0)] {
            let pad = Padding { top, left: 1, bottom, right: 1 };
            let spec = Conv2dSpec { cin: 3, cout: 1, kh, kw: 3, stride: 1, pad, bias: true };
            let c = Case { spec, h, w, n: 2, seed: (h * 100 + w * 10 + top) as u64 };
            let d = data(&c);
            assert!(d.l.is_direct(), "{h}x{w} {pad:?}");
            let got = run_forward(&d.l, &d.x, &d.w, d.b.as_deref(), c.n);
            let want = naive_forward(&d.l, &d.x, &d.w, d.b.as_deref(), c.n);
            assert_close(&format!("direct {h}x{w} kh {kh} {pad:?}"), &got, &want, 1e-5, 1e-5);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn forward_matches_direct_convolution(c in case()) {
        let d = data(&c);
        let got = run_forward(&d.l, &d.x, &d.w, d.b.as_deref(), c.n);
        let want = naive_forward(&d.l, &d.x, &d.w, d.b.as_deref(), c.n);
        assert_close("conv forward", &got, &want, 1e-5, 1e-5);
    }

    #[test]
    fn backward_matches_direct_adjoint(c in case()) {
        let d = data(&c);
        let mut rng = Rng::new(c.seed ^ 1);
        let dout = rand_vec(&mut rng, d.l.out_shape(c.n).len(), -1.0, 1.0);
        let (mut dx, mut dw, mut db) = (vec![0.0; d.x.len()], vec![0.0; d.w.len()], vec![0.0; c.spec.cout]);
        let mut ws = d.l.workspace(c.n);
        let grads = ConvGrads { dx: Some(&mut dx), dweight: &mut dw, dbias: c.spec.bias.then_some(&mut db[..]), dx_mode: DxMode::Add };
        d.l.backward(grads, &dout, &d.x, &d.w, c.n, &mut ws).unwrap();
        let (rdx, rdw, rdb) = naive_backward(&d.l, &dout, &d.x, &d.w, c.n);
        assert_close("dx", &dx, &rdx, 1e-5, 1e-5);
        assert_close("dw", &dw, &rdw, 1e-5, 1e-5);
        if c.spec.bias {
            assert_close("db", &db, &rdb, 1e-5, 1e-5);
        }
    }

    #[test]
    fn gradients_match_finite_differences(c in case()) {
        let d = data(&c);
        let n = c.n;
        let mut rng = Rng::new(c.seed ^ 2);
        let r = rand_vec(&mut rng, d.l.out_shape(n).len(), -1.0, 1.0);
        // Pre-fill gradients with 1 to prove backward accumulates rather than overwrites.
        let (mut dx, mut dw, mut db) = (vec![1.0; d.x.len()], vec![1.0; d.w.len()], vec![1.0; c.spec.cout]);
        let mut ws = d.l.workspace(n);
        let grads = ConvGrads { dx: Some(&mut dx), dweight: &mut dw, dbias: c.spec.bias.then_some(&mut db[..]), dx_mode: DxMode::Add };
        d.l.backward(grads, &r, &d.x, &d.w, n, &mut ws).unwrap();
        let minus_one = |v: &[f32]| v.iter().map(|g| g - 1.0).collect::<Vec<f32>>();
        let (b, l) = (d.b.as_deref(), &d.l);
        check_grad("dx", &d.x, &minus_one(&dx), 1e-2, TOL, 64, |x| proj(&run_forward(l, x, &d.w, b, n), &r))
            .map_err(TestCaseError::fail)?;
        check_grad("dw", &d.w, &minus_one(&dw), 1e-2, TOL, 64, |w| proj(&run_forward(l, &d.x, w, b, n), &r))
            .map_err(TestCaseError::fail)?;
        if let Some(bias) = &d.b {
            check_grad("db", bias, &minus_one(&db), 1e-2, TOL, 64, |bb| proj(&run_forward(l, &d.x, &d.w, Some(bb), n), &r))
                .map_err(TestCaseError::fail)?;
        }
    }
}

/// Every conv layer of the three models, at a batch that makes several shards and multi-image tiles.
fn model_layers() -> Vec<(Conv2dSpec, usize)> {
    let same = |k, s, h| Padding::same(h, h, k, k, s).unwrap();
    let c = |cin, cout, k, s, pad, bias| Conv2dSpec { cin, cout, kh: k, kw: k, stride: s, pad, bias };
    vec![
        (c(1, 16, 3, 1, same(3, 1, 32), true), 32),          // unet conv1
        (c(16, 32, 3, 1, same(3, 1, 16), true), 16),         // unet conv2
        (c(32, 64, 2, 1, same(2, 1, 32), true), 32),         // unet conv3 (2x2, 'same' pads bottom/right)
        (c(64, 64, 3, 1, Padding::symmetric(1), false), 32), // dncnn conv2..16
        (c(32, 64, 3, 2, same(3, 2, 32), true), 32),         // hardnet conv3 (stride 2)
        (c(64, 128, 3, 2, same(3, 2, 16), false), 16),       // hardnet conv5 (stride 2, no bias as trained)
        (c(128, 128, 3, 1, same(3, 1, 8), true), 8),         // hardnet conv6 (P = 64: 4-image tiles)
        (c(128, 128, 8, 1, Padding::valid(), true), 8),      // hardnet conv7 (dense)
        (c(64, 1, 3, 1, same(3, 1, 32), true), 32),          // unet conv5 (direct: one output channel)
        (c(64, 1, 3, 1, Padding::symmetric(1), false), 32),  // dncnn conv17 (direct)
    ]
}

/// One image through the im2col path, with its output channels shared out
/// among the threads when its GEMM is large enough (`threads::worth_sharing`)
/// and not when it is small: the bits of one thread either way, and the
/// reference's values.
#[test]
fn one_image_is_the_same_whether_shared_out_or_not() {
    let same = |k, s, h| Padding::same(h, h, k, k, s).unwrap();
    let c = |cin, cout, s, pad| Conv2dSpec { cin, cout, kh: 3, kw: 3, stride: s, pad, bias: true };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let big = c(64, 128, 2, same(3, 2, 32));
    let small = c(4, 8, 2, same(3, 2, 8));
    const { assert!(nhpatch::threads::MIN_SHARED_MACS <= 128 * 64 * 9 * 16 * 16) };
    const { assert!(nhpatch::threads::MIN_SHARED_MACS > 8 * 4 * 9 * 4 * 4) };
    for (spec, hw) in [(big, 32), (small, 8)] {
        let case = Case { spec, h: hw, w: hw, n: 1, seed: 5 };
        let d = data(&case);
        let outs: Vec<Vec<f32>> = [1, 2, 3]
            .into_iter()
            .map(|t| nhpatch::threads::pool(t).unwrap().install(|| run_forward(&d.l, &d.x, &d.w, d.b.as_deref(), 1)))
            .collect();
        let want = naive_forward(&d.l, &d.x, &d.w, d.b.as_deref(), 1);
        assert_close("one image", &outs[0], &want, 1e-4, 1e-4);
        for (t, o) in [2, 3].into_iter().zip(&outs[1..]) {
            assert_eq!(bits(o), bits(&outs[0]), "{spec:?}: {t} threads");
        }
    }
}

#[test]
fn model_layers_match_reference_and_are_thread_count_independent() {
    for (spec, hw) in model_layers() {
        let n = 6;
        let c = Case { spec, h: hw, w: hw, n, seed: 11 };
        let d = data(&c);
        let mut rng = Rng::new(3);
        let dout = rand_vec(&mut rng, d.l.out_shape(n).len(), -1.0, 1.0);
        let mut results = Vec::new();
        for threads in [1, 2, 3] {
            let pool = nhpatch::threads::pool(threads).unwrap();
            results.push(pool.install(|| {
                let out = run_forward(&d.l, &d.x, &d.w, d.b.as_deref(), n);
                let (mut dx, mut dw, mut db) = (vec![0.0; d.x.len()], vec![0.0; d.w.len()], vec![0.0; spec.cout]);
                let mut ws = d.l.workspace(n);
                let grads = ConvGrads {
                    dx: Some(&mut dx),
                    dweight: &mut dw,
                    dbias: spec.bias.then_some(&mut db[..]),
                    dx_mode: DxMode::Add,
                };
                d.l.backward(grads, &dout, &d.x, &d.w, n, &mut ws).unwrap();
                (out, dx, dw, db)
            }));
        }
        // DxMode::Write over a NaN-filled dx: the values of adding into zeros
        // (a zero's sign aside), dW and db still added, at any thread count.
        for threads in [1, 2] {
            let written = nhpatch::threads::pool(threads).unwrap().install(|| {
                let (mut dx, mut dw, mut db) = (vec![f32::NAN; d.x.len()], vec![0.0; d.w.len()], vec![0.0; spec.cout]);
                let mut ws = d.l.workspace(n);
                let grads = ConvGrads {
                    dx: Some(&mut dx),
                    dweight: &mut dw,
                    dbias: spec.bias.then_some(&mut db[..]),
                    dx_mode: DxMode::Write,
                };
                d.l.backward(grads, &dout, &d.x, &d.w, n, &mut ws).unwrap();
                (dx, dw, db)
            });
            assert!(written.0 == results[0].1, "written dx differs from added for {spec:?}");
            assert!((&written.1, &written.2) == (&results[0].2, &results[0].3), "dW/db with Write for {spec:?}");
        }
        let want = naive_forward(&d.l, &d.x, &d.w, d.b.as_deref(), n);
        assert_close("forward", &results[0].0, &want, 1e-4, 1e-4);
        let (rdx, rdw, _) = naive_backward(&d.l, &dout, &d.x, &d.w, n);
        assert_close("dx", &results[0].1, &rdx, 1e-4, 1e-4);
        assert_close("dw", &results[0].2, &rdw, 1e-3, 1e-4);
        for r in &results[1..] {
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&r.0), bits(&results[0].0), "forward differs with thread count for {spec:?}");
            assert_eq!(bits(&r.1), bits(&results[0].1), "dx differs with thread count for {spec:?}");
            assert_eq!(bits(&r.2), bits(&results[0].2), "dw differs with thread count for {spec:?}");
            assert_eq!(bits(&r.3), bits(&results[0].3), "db differs with thread count for {spec:?}");
        }
    }
}

#[test]
fn winograd_takes_the_3x3_layers_with_16_or_more_channels_f4_and_stride_2_only_in_inference() {
    let plans = |pass| -> Vec<&'static str> {
        let name = |p: Option<WinogradPlan>| match p {
            None => "im2col",
            Some(WinogradPlan::F2(_)) => "F2",
            Some(WinogradPlan::F4(_)) => "F4",
            Some(WinogradPlan::S2(_)) => "S2",
        };
        model_layers().iter().map(|&(spec, hw)| name(Conv2d::new(spec, hw, hw).unwrap().winograd(pass))).collect()
    };
    // unet conv1 (1 input channel), unet conv3 (2x2) and conv7 (8x8) stay on im2col;
    // training runs F(2x2, 3x3), inference F(4x4, 3x3) except on 8x8 images;
    // hardnet conv3 and conv5 (stride 2) run the stride-2 tiling in inference, im2col in training.
    let train = ["im2col", "F2", "im2col", "F2", "im2col", "im2col", "F2", "im2col", "im2col", "im2col"];
    assert_eq!(plans(ConvPass::Train), train);
    let infer = ["im2col", "F4", "im2col", "F4", "S2", "S2", "F2", "im2col", "im2col", "im2col"];
    assert_eq!(plans(ConvPass::Infer), infer);
    let direct: Vec<bool> =
        model_layers().iter().map(|&(spec, hw)| Conv2d::new(spec, hw, hw).unwrap().is_direct()).collect();
    assert_eq!(direct, [false, false, false, false, false, false, false, false, true, true]);
}

#[test]
fn fused_epilogue_is_scale_shift_relu_after_the_convolution() {
    for (spec, hw) in model_layers() {
        let (n, spec) = (3, Conv2dSpec { bias: false, ..spec });
        let d = data(&Case { spec, h: hw, w: hw, n, seed: 5 });
        let mut rng = Rng::new(9);
        let scale = rand_vec(&mut rng, spec.cout, 0.5, 1.5);
        let shift = rand_vec(&mut rng, spec.cout, -0.5, 0.5);
        // The inference path against the f64 direct convolution, to 2e-5 of the output's scale.
        let plain = naive_forward(&d.l, &d.x, &d.w, None, n);
        let mut ws = d.l.workspace(n);
        let mut fused = vec![f32::NAN; plain.len()];
        let epi = Epilogue { scale: Some(&scale), shift: Some(&shift), relu: true };
        d.l.forward_fused(&mut fused, &d.x, &d.w, epi, n, &mut ws).unwrap();
        let plane = d.l.out_shape(n).plane();
        let want: Vec<f32> = plain
            .iter()
            .enumerate()
            .map(|(i, v)| (v * scale[(i / plane) % spec.cout] + shift[(i / plane) % spec.cout]).max(0.0))
            .collect();
        let size = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_close("fused epilogue", &fused, &want, 2e-5 * size, 1e-6);
        let bad = Epilogue { scale: Some(&scale[1..]), shift: None, relu: false };
        assert!(d.l.forward_fused(&mut fused, &d.x, &d.w, bad, n, &mut ws).is_err());
    }
}

#[test]
fn bad_calls_are_errors_not_panics() {
    let spec = Conv2dSpec { cin: 2, cout: 3, kh: 3, kw: 3, stride: 1, pad: Padding::symmetric(1), bias: true };
    let l = Conv2d::new(spec, 5, 5).unwrap();
    let mut ws = l.workspace(2);
    let (x, w, b) = (vec![0.0; 2 * 2 * 25], vec![0.0; l.weight_len()], vec![0.0; 3]);
    let mut out = vec![0.0; 2 * 3 * 25];
    assert!(l.forward(&mut out, &x[1..], &w, Some(&b), 2, &mut ws).is_err(), "short input");
    assert!(l.forward(&mut out, &x, &w[1..], Some(&b), 2, &mut ws).is_err(), "short weight");
    assert!(l.forward(&mut out, &x, &w, None, 2, &mut ws).is_err(), "missing bias");
    assert!(l.forward(&mut out[1..], &x, &w, Some(&b), 2, &mut ws).is_err(), "short output");
    let mut ws1 = l.workspace(1);
    assert!(l.forward(&mut out, &x, &w, Some(&b), 2, &mut ws1).is_err(), "workspace for another batch");
    let mut dw = vec![0.0; l.weight_len() + 1];
    let grads = ConvGrads { dx: None, dweight: &mut dw, dbias: None, dx_mode: DxMode::Add };
    assert!(l.backward(grads, &out, &x, &w, 2, &mut ws).is_err(), "wrong dweight length");
    assert!(Conv2d::new(Conv2dSpec { cout: 0, ..spec }, 5, 5).is_err());
    assert!(Conv2d::new(Conv2dSpec { pad: Padding::valid(), ..spec }, 2, 5).is_err(), "kernel larger than the input");
}

/// Padding (always narrower than the kernel) may be wider than the image, so
/// that some kernel columns never meet a pixel; those columns read zeros (found by the conv
/// fuzz target: the forward used to index before the image row).
#[test]
fn padding_wider_than_the_image_reads_only_zeros() {
    let cases = [
        // (cin, cout, kh, kw, stride, top, left, bottom, right, h, w, n)
        (1, 3, 3, 5, 3, 2, 0, 2, 3, 1, 3, 1),
        (2, 2, 2, 3, 1, 1, 2, 0, 0, 1, 1, 3),
        (1, 1, 3, 3, 2, 2, 2, 2, 2, 1, 1, 2),
        (3, 2, 4, 4, 3, 3, 3, 3, 3, 2, 1, 1),
        (1, 2, 5, 2, 1, 4, 1, 4, 1, 1, 2, 2),
    ];
    for (i, &(cin, cout, kh, kw, stride, top, left, bottom, right, h, w, n)) in cases.iter().enumerate() {
        let spec = Conv2dSpec { cin, cout, kh, kw, stride, pad: Padding { top, left, bottom, right }, bias: true };
        let c = Case { spec, h, w, n, seed: 90 + i as u64 };
        let d = data(&c);
        let got = run_forward(&d.l, &d.x, &d.w, d.b.as_deref(), n);
        let want = naive_forward(&d.l, &d.x, &d.w, d.b.as_deref(), n);
        assert_close(&format!("forward {spec:?} on {h}x{w}"), &got, &want, 1e-5, 1e-5);
        let dout = rand_vec(&mut Rng::new(7), d.l.out_shape(n).len(), -1.0, 1.0);
        let (mut dx, mut dw, mut db) = (vec![0.0; d.x.len()], vec![0.0; d.w.len()], vec![0.0; cout]);
        let mut ws = d.l.workspace(n);
        let grads = ConvGrads { dx: Some(&mut dx), dweight: &mut dw, dbias: Some(&mut db[..]), dx_mode: DxMode::Add };
        d.l.backward(grads, &dout, &d.x, &d.w, n, &mut ws).unwrap();
        let (rdx, rdw, _) = naive_backward(&d.l, &dout, &d.x, &d.w, n);
        assert_close("dx", &dx, &rdx, 1e-5, 1e-5);
        assert_close("dw", &dw, &rdw, 1e-5, 1e-5);
    }
}

/// Training's Winograd weight gradient rounds about as well as the im2col one
/// (the path an inference workspace falls back to): against the f64 direct
/// gradient, on post-ReLU-like inputs, within 2x im2col's largest error and
/// 1e-6 of the gradient's scale.
#[test]
fn winograd_weight_gradient_rounds_like_im2col() {
    let (c, h, n) = (32, 16, 4);
    let spec = Conv2dSpec { cin: c, cout: c, kh: 3, kw: 3, stride: 1, pad: Padding::symmetric(1), bias: false };
    let l = Conv2d::new(spec, h, h).unwrap();
    // F(2x2) trains; inference takes F(4x4), so an inference workspace has no training Winograd scratch.
    assert!(matches!(l.winograd(ConvPass::Train), Some(WinogradPlan::F2(_))));
    assert!(matches!(l.winograd(ConvPass::Infer), Some(WinogradPlan::F4(_))));
    let mut rng = Rng::new(7);
    let x = rand_vec(&mut rng, n * c * h * h, 0.0, 1.0);
    let d = rand_vec(&mut rng, n * c * h * h, -1e-3, 1e-3);
    let w = rand_vec(&mut rng, c * c * 9, -0.05, 0.05);
    let (_, want, _) = naive_backward(&l, &d, &x, &w, n);
    let scale = want.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    let err = |pass: ConvPass| {
        let mut ws = l.workspace_for(n, pass);
        let mut dw = vec![0.0f32; w.len()];
        l.backward(ConvGrads { dx: None, dweight: &mut dw, dbias: None, dx_mode: DxMode::Add }, &d, &x, &w, n, &mut ws)
            .unwrap();
        dw.iter().zip(&want).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs())) / scale
    };
    let (wino, im2col) = (err(ConvPass::Train), err(ConvPass::Infer));
    eprintln!("dW largest error / scale: Winograd {wino:.2e}, im2col {im2col:.2e}");
    assert!(wino < 1e-6 && wino <= 2.0 * im2col, "Winograd {wino:e}, im2col {im2col:e}");
}

// ---------------------------------------------------------------- upsample x2 -> 2x2 conv

/// The upsampling the U-Net's conv3 reads: `u[c][Y][X] = x[c][Y/2][X/2]`.
fn upsample_naive(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let mut u = vec![0.0; planes * 4 * h * w];
    for p in 0..planes {
        for yy in 0..2 * h {
            for xx in 0..2 * w {
                u[(p * 2 * h + yy) * 2 * w + xx] = x[(p * h + yy / 2) * w + xx / 2];
            }
        }
    }
    u
}

/// `(cin, cout, h, w, n)`: one pixel, odd planes, the U-Net's conv3, several
/// images per GEMM tile, and one image large enough that its four phases are
/// shared out among the threads (`threads::worth_sharing`).
const UPCONV_CASES: [(usize, usize, usize, usize, usize); 6] =
    [(1, 1, 1, 1, 1), (3, 5, 2, 3, 2), (2, 7, 5, 4, 3), (32, 64, 16, 16, 2), (4, 3, 7, 7, 9), (64, 64, 16, 16, 1)];

/// A 2x2 convolution padded bottom/right with bias on the `2h x 2w`
/// upsampled plane (the slow twin's layer), and `UpConv` on the `h x w` plane.
fn upconv_layers(cin: usize, cout: usize, h: usize, w: usize) -> (Conv2d, nhpatch::layers::upconv::UpConv) {
    let pad = Padding { top: 0, left: 0, bottom: 1, right: 1 };
    let spec = Conv2dSpec { cin, cout, kh: 2, kw: 2, stride: 1, pad, bias: true };
    (Conv2d::new(spec, 2 * h, 2 * w).unwrap(), nhpatch::layers::upconv::UpConv::new(&spec, h, w).unwrap())
}

/// `UpConv` (four phase convolutions on the small plane) against the f64
/// direct convolution of the upsampled input: odd and even planes, one and
/// several images per GEMM tile, a bias + ReLU and a scale epilogue, an
/// output slot inside wider images (the rest left untouched), and the same
/// bits for 1 and 3 threads.
#[test]
fn upsampled_two_by_two_conv_as_phases_matches_the_upsampled_conv() {
    use nhpatch::layers::upconv::ImageSlot;
    for (cin, cout, h, w, n) in UPCONV_CASES {
        let (big, l) = upconv_layers(cin, cout, h, w);
        let mut rng = Rng::new((cin * 131 + h * 7 + w) as u64);
        let x = rand_vec(&mut rng, n * l.in_len(), -1.0, 1.0);
        let wt = rand_vec(&mut rng, l.weight_len(), -1.0, 1.0);
        let bias = rand_vec(&mut rng, cout, -0.5, 0.5);
        let scale = rand_vec(&mut rng, cout, 0.5, 1.5);
        let plain = naive_forward(&big, &upsample_naive(&x, n * cin, h, w), &wt, Some(&bias), n);
        let size = plain.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let plane = 4 * h * w;
        let run = |threads: usize, epi: Epilogue<'_>, slot: ImageSlot| {
            nhpatch::threads::pool(threads).unwrap().install(|| {
                let mut ws = l.workspace(n);
                let mut out = vec![f32::NAN; n * slot.stride];
                l.forward_fused(&mut out, slot, &x, &wt, epi, n, &mut ws).unwrap();
                out
            })
        };
        let relu = Epilogue { scale: None, shift: Some(&bias), relu: true };
        let got = run(1, relu, l.whole());
        let want: Vec<f32> = plain.iter().map(|v| v.max(0.0)).collect();
        assert_close("upconv + bias + relu", &got, &want, 2e-6 * size, 1e-6);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&run(3, relu, l.whole())), bits(&got), "{cin}x{h}x{w}: 3 threads");
        // Scale and shift, without ReLU, into the middle of wider images.
        let slot = ImageSlot { stride: l.out_len() + 5, offset: 3 };
        let epi = Epilogue { scale: Some(&scale), shift: Some(&bias), relu: false };
        let wide = run(2, epi, slot);
        for (j, img) in wide.chunks(slot.stride).enumerate() {
            assert!(img[..3].iter().chain(&img[3 + l.out_len()..]).all(|v| v.is_nan()), "outside the slot");
            let want: Vec<f32> = (0..l.out_len())
                .map(|i| {
                    let c = i / plane;
                    (plain[j * l.out_len() + i] - bias[c]) * scale[c] + bias[c]
                })
                .collect();
            assert_close("upconv in a slot", &img[3..3 + l.out_len()], &want, 4e-6 * size, 1e-6);
        }
    }
}

#[test]
fn upconv_refuses_other_convolutions_and_bad_calls() {
    use nhpatch::layers::upconv::{ImageSlot, UpConv};
    let pad = Padding { top: 0, left: 0, bottom: 1, right: 1 };
    let spec = Conv2dSpec { cin: 2, cout: 3, kh: 2, kw: 2, stride: 1, pad, bias: false };
    for other in [
        Conv2dSpec { kh: 3, kw: 3, ..spec },
        Conv2dSpec { stride: 2, ..spec },
        Conv2dSpec { pad: Padding { top: 1, left: 1, bottom: 0, right: 0 }, ..spec },
    ] {
        assert!(!UpConv::fits(&other));
        assert!(UpConv::new(&other, 4, 4).is_err());
    }
    assert!(UpConv::new(&spec, 0, 4).is_err());
    let l = UpConv::new(&spec, 4, 4).unwrap();
    let (x, w) = (vec![0.5; 2 * l.in_len()], vec![0.25; l.weight_len()]);
    let mut out = vec![0.0; 2 * l.out_len()];
    let epi = Epilogue::default();
    let mut ws = l.workspace(2);
    assert!(l.forward_fused(&mut out, l.whole(), &x, &w, epi, 2, &mut ws).is_ok());
    assert!(l.forward_fused(&mut out, l.whole(), &x[1..], &w, epi, 2, &mut ws).is_err());
    assert!(l.forward_fused(&mut out, l.whole(), &x, &w[1..], epi, 2, &mut ws).is_err());
    assert!(l.forward_fused(&mut out[1..], l.whole(), &x, &w, epi, 2, &mut ws).is_err());
    let slot = ImageSlot { stride: l.out_len(), offset: 1 };
    assert!(l.forward_fused(&mut out, slot, &x, &w, epi, 2, &mut ws).is_err(), "a slot past the image");
    assert!(l.forward_fused(&mut out[..l.out_len()], l.whole(), &x[..l.in_len()], &w, epi, 1, &mut ws).is_err());
    let bad = Epilogue { shift: Some(&[1.0]), ..epi };
    assert!(l.forward_fused(&mut out, l.whole(), &x, &w, bad, 2, &mut ws).is_err());
}

/// `UpConv::backward` against the f64 adjoint of the upsampled convolution
/// (`naive_backward` on the upsampled input, then the upsampling's adjoint):
/// accumulated into non-zero gradients, with and without the input
/// gradient, and the same bits for 1 and 3 threads.
#[test]
fn upsampled_two_by_two_conv_gradients_match_the_upsampled_conv() {
    for (cin, cout, h, w, n) in UPCONV_CASES {
        let (big, l) = upconv_layers(cin, cout, h, w);
        let mut rng = Rng::new((cout * 17 + h * 5 + w) as u64);
        let x = rand_vec(&mut rng, n * l.in_len(), -1.0, 1.0);
        let wt = rand_vec(&mut rng, l.weight_len(), -1.0, 1.0);
        let dout = rand_vec(&mut rng, n * l.out_len(), -1.0, 1.0);
        let (dxu, dw, db) = naive_backward(&big, &dout, &upsample_naive(&x, n * cin, h, w), &wt, n);
        let mut dx = vec![0.0f32; x.len()];
        for (pl, plane) in dxu.chunks_exact(4 * h * w).enumerate() {
            for (k, v) in plane.iter().enumerate() {
                let (yy, xx) = (k / (2 * w), k % (2 * w));
                dx[pl * h * w + (yy / 2) * w + xx / 2] += v;
            }
        }
        let run = |threads: usize, with_dx: bool| {
            nhpatch::threads::pool(threads).unwrap().install(|| {
                let mut ws = l.workspace(n);
                // Non-zero starting gradients: backward adds to them.
                let (mut gx, mut gw, mut gb) = (vec![0.5f32; x.len()], vec![0.5f32; wt.len()], vec![0.5f32; cout]);
                let grads = ConvGrads {
                    dx: with_dx.then_some(&mut gx[..]),
                    dweight: &mut gw,
                    dbias: Some(&mut gb),
                    dx_mode: DxMode::Add,
                };
                l.backward(grads, &dout, &x, &wt, n, &mut ws).unwrap();
                // A second call on the same workspace gives the same increments.
                let (mut gx2, mut gw2, mut gb2) = (vec![0.5f32; x.len()], vec![0.5f32; wt.len()], vec![0.5f32; cout]);
                let grads = ConvGrads {
                    dx: with_dx.then_some(&mut gx2[..]),
                    dweight: &mut gw2,
                    dbias: Some(&mut gb2),
                    dx_mode: DxMode::Add,
                };
                l.backward(grads, &dout, &x, &wt, n, &mut ws).unwrap();
                assert_eq!((&gx, &gw, &gb), (&gx2, &gw2, &gb2));
                (gx, gw, gb)
            })
        };
        let (gx, gw, gb) = run(1, true);
        let less = |v: &[f32]| v.iter().map(|g| g - 0.5).collect::<Vec<f32>>();
        let scale = |v: &[f32]| v.iter().fold(1.0f32, |m, g| m.max(g.abs()));
        assert_close("upconv dx", &less(&gx), &dx, 4e-6 * scale(&dx), 1e-5);
        assert_close("upconv dw", &less(&gw), &dw, 4e-6 * scale(&dw), 1e-5);
        assert_close("upconv db", &less(&gb), &db, 4e-6 * scale(&db), 1e-5);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let (hx, hw, hb) = run(3, true);
        assert_eq!((bits(&hx), bits(&hw), bits(&hb)), (bits(&gx), bits(&gw), bits(&gb)), "3 threads");
        let (nx, nw, nb) = run(2, false);
        assert!(nx.iter().all(|&v| v == 0.5), "no input gradient asked for");
        assert_eq!((bits(&nw), bits(&nb)), (bits(&gw), bits(&gb)), "without dx");
        // DxMode::Write over a NaN-filled dx: the values added into zeros, at 1 and 2 threads.
        for threads in [1, 2] {
            let (mut ax, mut aw, mut ab) = (vec![0.0f32; x.len()], vec![0.0f32; wt.len()], vec![0.0f32; cout]);
            let (mut wx, mut ww, mut wb) = (vec![f32::NAN; x.len()], vec![0.0f32; wt.len()], vec![0.0f32; cout]);
            nhpatch::threads::pool(threads).unwrap().install(|| {
                let mut ws = l.workspace(n);
                let grads =
                    ConvGrads { dx: Some(&mut ax[..]), dweight: &mut aw, dbias: Some(&mut ab), dx_mode: DxMode::Add };
                l.backward(grads, &dout, &x, &wt, n, &mut ws).unwrap();
                let grads =
                    ConvGrads { dx: Some(&mut wx[..]), dweight: &mut ww, dbias: Some(&mut wb), dx_mode: DxMode::Write };
                l.backward(grads, &dout, &x, &wt, n, &mut ws).unwrap();
            });
            assert!(wx == ax && (&ww, &wb) == (&aw, &ab), "upconv Write at {threads} threads");
        }
    }
}

/// `UpConv::backward` against central differences of its forward (bias, no
/// epilogue), on odd and even planes, accumulating into gradients pre-filled with 1.
#[test]
fn upsampled_two_by_two_conv_gradients_match_finite_differences() {
    use nhpatch::layers::upconv::UpConv;
    let pad = Padding { top: 0, left: 0, bottom: 1, right: 1 };
    for (cin, cout, h, w, n) in [(1, 2, 3, 2, 2), (3, 4, 4, 5, 1), (2, 3, 5, 5, 3)] {
        let spec = Conv2dSpec { cin, cout, kh: 2, kw: 2, stride: 1, pad, bias: true };
        let l = UpConv::new(&spec, h, w).unwrap();
        let mut rng = Rng::new((cin + 10 * h + 100 * w) as u64);
        let x = rand_vec(&mut rng, n * l.in_len(), -1.0, 1.0);
        let wt = rand_vec(&mut rng, l.weight_len(), -1.0, 1.0);
        let bias = rand_vec(&mut rng, cout, -1.0, 1.0);
        let r = rand_vec(&mut rng, n * l.out_len(), -1.0, 1.0);
        let fwd = |x: &[f32], wt: &[f32], b: &[f32]| {
            let mut ws = l.workspace(n);
            let mut out = vec![f32::NAN; n * l.out_len()];
            let epi = Epilogue { scale: None, shift: Some(b), relu: false };
            l.forward_fused(&mut out, l.whole(), x, wt, epi, n, &mut ws).unwrap();
            proj(&out, &r)
        };
        let (mut dx, mut dw, mut db) = (vec![1.0; x.len()], vec![1.0; wt.len()], vec![1.0; cout]);
        let mut ws = l.workspace(n);
        l.backward(
            ConvGrads { dx: Some(&mut dx), dweight: &mut dw, dbias: Some(&mut db), dx_mode: DxMode::Add },
            &r,
            &x,
            &wt,
            n,
            &mut ws,
        )
        .unwrap();
        let minus_one = |v: &[f32]| v.iter().map(|g| g - 1.0).collect::<Vec<f32>>();
        check_grad("upconv dx", &x, &minus_one(&dx), 1e-2, TOL, 64, |x| fwd(x, &wt, &bias)).unwrap();
        check_grad("upconv dw", &wt, &minus_one(&dw), 1e-2, TOL, 64, |wt| fwd(&x, wt, &bias)).unwrap();
        check_grad("upconv db", &bias, &minus_one(&db), 1e-2, TOL, 64, |b| fwd(&x, &wt, b)).unwrap();
    }
}
