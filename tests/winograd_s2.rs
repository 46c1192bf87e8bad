//! The stride-2 Winograd convolution (`WinogradS2`) against a direct 3x3
//! stride-2 convolution computed in f64: forward with and without bias, with
//! a fused epilogue, every padding of 0 or 1 per side, odd and even sizes,
//! HardNet's layer sizes (both variants' paddings), rounding
//! against the im2col path it replaces in inference, thread-count
//! determinism, argument errors, and its selection by `Conv2d`.

mod common;

use common::rand_vec;
use nhpatch::gemm::{MatMut, MatRef, gemm};
use nhpatch::layers::conv2d::{Conv2d, Conv2dSpec, ConvPass, Epilogue, WinogradPlan};
use nhpatch::layers::winograd::WinogradS2;
use nhpatch::ops::im2col::{Padding, Window, im2col};
use nhpatch::rng::Rng;
use proptest::prelude::*;

/// Direct forward in f64: out[n, cout, ho, wo].
fn naive(l: &WinogradS2, x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize) -> Vec<f64> {
    let (ho, wo) = ((l.h + l.pad.top + l.pad.bottom - 3) / 2 + 1, (l.w + l.pad.left + l.pad.right - 3) / 2 + 1);
    let mut out = vec![0.0f64; n * l.cout * ho * wo];
    for i in 0..n {
        for co in 0..l.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[co] as f64);
                    for ci in 0..l.cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let iy = (2 * oy + ky) as isize - l.pad.top as isize;
                                let ix = (2 * ox + kx) as isize - l.pad.left as isize;
                                if iy < 0 || ix < 0 || iy >= l.h as isize || ix >= l.w as isize {
                                    continue;
                                }
                                let xv = x[((i * l.cin + ci) * l.h + iy as usize) * l.w + ix as usize] as f64;
                                acc += xv * w[((co * l.cin + ci) * 3 + ky) * 3 + kx] as f64;
                            }
                        }
                    }
                    out[((i * l.cout + co) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    out
}

/// The im2col path the stride-2 tiling replaced: per image, col[K, P] =
/// im2col(x), out[cout, P] = W[cout, K] * col + b.
fn im2col_forward(c: &Case, h: usize) -> Vec<f32> {
    let l = &c.l;
    let win = Window::new(l.cin, h, h, 3, 3, 2, l.pad).unwrap();
    let (k, p) = (l.cin * 9, win.ho * win.wo);
    let mut col = vec![f32::NAN; k * p];
    let mut out = vec![f32::NAN; c.out_len()];
    for (xi, oi) in c.x.chunks_exact(l.cin * h * h).zip(out.chunks_exact_mut(l.cout * p)) {
        im2col(&mut col, p, 0, xi, &win).unwrap();
        let (w, cm) = (MatRef::row_major(&c.w, l.cout, k).unwrap(), MatRef::row_major(&col, k, p).unwrap());
        gemm(1.0, w, cm, 0.0, MatMut::row_major(oi, l.cout, p).unwrap()).unwrap();
        for (o, b) in oi.chunks_exact_mut(p).zip(&c.b) {
            o.iter_mut().for_each(|v| *v += b);
        }
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// max |v|.
fn abs_max(v: impl IntoIterator<Item = f64>) -> f64 {
    v.into_iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// max |got - want| / `scale`.
fn err_of(got: &[f32], want: &[f64], scale: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    abs_max(got.iter().zip(want).map(|(&g, &w)| g as f64 - w)) / scale.max(1e-30)
}

/// max |got - want| / max |want|.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    err_of(got, want, abs_max(want.iter().copied()))
}

struct Case {
    l: WinogradS2,
    n: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Case {
    /// Inputs uniform in [-1, 1], weights in [-wmax, wmax], bias in [-1, 1].
    fn new((cin, cout, h, w): (usize, usize, usize, usize), pad: Padding, n: usize, seed: u64, wmax: f32) -> Case {
        let l = WinogradS2::new(cin, cout, h, w, pad).unwrap();
        let mut rng = Rng::new(seed);
        let x = rand_vec(&mut rng, n * cin * h * w, -1.0, 1.0);
        let w = rand_vec(&mut rng, cout * cin * 9, -wmax, wmax);
        let b = rand_vec(&mut rng, cout, -1.0, 1.0);
        Case { l, n, x, w, b }
    }

    fn out_len(&self) -> usize {
        let (ho, wo) = self.l.out_size();
        self.n * self.l.cout * ho * wo
    }

    /// `forward` into a NaN-filled output.
    fn forward(&self, bias: bool) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.out_len()];
        let mut ws = self.l.workspace(self.n);
        self.l.forward(&mut out, &self.x, &self.w, bias.then_some(&self.b[..]), self.n, &mut ws).unwrap();
        out
    }
}

const TOL: f64 = 1e-5;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn forward_matches_naive(cin in 1usize..20, cout in 1usize..20, h in 2usize..=19, w in 2usize..=19,
                             pad in (0usize..=1, 0usize..=1, 0usize..=1, 0usize..=1),
                             n in 1usize..=3, bias in any::<bool>(), seed in any::<u64>()) {
        let pad = Padding { top: pad.0, left: pad.1, bottom: pad.2, right: pad.3 };
        let h = h.max(3 - pad.top - pad.bottom);
        let w = w.max(3 - pad.left - pad.right);
        let c = Case::new((cin, cout, h, w), pad, n, seed, 0.5);
        let want = naive(&c.l, &c.x, &c.w, bias.then_some(&c.b[..]), n);
        let err = rel_err(&c.forward(bias), &want);
        prop_assert!(err < TOL, "{cin}->{cout} {h}x{w} {pad:?} n={n}: relative error {err:e}");
    }

    #[test]
    fn fused_epilogue_matches_naive(cin in 1usize..12, cout in 1usize..12, h in 1usize..=13, w in 1usize..=13,
                                    n in 1usize..=2, seed in any::<u64>()) {
        let c = Case::new((cin, cout, h, w), Padding::symmetric(1), n, seed, 0.5);
        let scale: Vec<f32> = c.b.iter().map(|b| 1.5 * b).collect();
        let epi = Epilogue { scale: Some(&scale), shift: Some(&c.b), relu: true };
        let mut out = vec![f32::NAN; c.out_len()];
        let mut ws = c.l.workspace(n);
        c.l.forward_fused(&mut out, &c.x, &c.w, epi, n, &mut ws).unwrap();
        let (ho, wo) = c.l.out_size();
        let y = naive(&c.l, &c.x, &c.w, None, n);
        let want: Vec<f64> = y
            .iter()
            .enumerate()
            .map(|(k, &y)| {
                let co = k / (ho * wo) % cout;
                (y * scale[co] as f64 + c.b[co] as f64).max(0.0)
            })
            .collect();
        // The epilogue maps the convolution's error through its scale (ReLU
        // only shrinks it) and rounds once more at the shift: measured against
        // the scale of what went in, not of what ReLU left, which may be tiny.
        let amax = |v: &[f32]| abs_max(v.iter().map(|&x| x as f64));
        let bound = abs_max(y.iter().copied()) * amax(&scale) + amax(&c.b);
        let err = err_of(&out, &want, bound);
        prop_assert!(err < TOL, "{cin}->{cout} {h}x{w} n={n}: error {err:e} of the epilogue's input scale");
    }
}

/// HardNet's two stride-2 layers (and a ragged batch that leaves a short
/// group), at PyTorch's default initialisation scale: against the f64
/// convolution, and against the im2col forward that training runs, whose
/// rounding inference used to have.
#[test]
fn hardnet_layers_match_naive_and_round_like_im2col() {
    // HardNet original pads 1 on every side; the baseline pads Keras 'same', (0, 1).
    for pad in [Padding::symmetric(1), Padding::same(32, 32, 3, 3, 2).unwrap()] {
        for (cin, cout, h, n) in [(32, 64, 32, 5), (64, 128, 16, 7)] {
            let bound = 1.0 / ((cin * 9) as f32).sqrt();
            let c = Case::new((cin, cout, h, h), pad, n, 17, bound);
            let want = naive(&c.l, &c.x, &c.w, Some(&c.b), n);
            let wino = rel_err(&c.forward(true), &want);
            let spec = Conv2dSpec { cin, cout, kh: 3, kw: 3, stride: 2, pad, bias: true };
            let conv = Conv2d::new(spec, h, h).unwrap();
            assert_eq!(conv.out_shape(1).h, c.l.out_size().0);
            let mut ws = conv.workspace(n);
            let mut trained = vec![f32::NAN; c.out_len()];
            conv.forward(&mut trained, &c.x, &c.w, Some(&c.b), n, &mut ws).unwrap();
            assert_eq!(bits(&trained), bits(&c.forward(true)), "the training forward runs the stride-2 tiling");
            let gemm = rel_err(&im2col_forward(&c, h), &want);
            eprintln!("{cin}->{cout} {h}x{h} {pad:?}: relative error winograd {wino:.2e}, im2col {gemm:.2e}");
            assert!(wino < 1e-6, "{cin}->{cout} {h}x{h}: winograd relative error {wino:e}");
            assert!(wino <= 2.0 * gemm.max(1e-8), "{cin}->{cout} {h}x{h}: winograd {wino:e} against im2col {gemm:e}");
        }
    }
}

#[test]
fn conv2d_runs_stride_two_inference_through_it() {
    let spec = |cin, stride, pad| Conv2dSpec { cin, cout: 64, kh: 3, kw: 3, stride, pad, bias: false };
    let conv = Conv2d::new(spec(32, 2, Padding::symmetric(1)), 32, 32).unwrap();
    let s2 = WinogradS2::new(32, 64, 32, 32, Padding::symmetric(1)).unwrap();
    assert_eq!(conv.winograd(ConvPass::Infer), Some(WinogradPlan::S2(s2)));
    assert_eq!(conv.winograd(ConvPass::Train), None, "the gradients keep im2col at stride 2");
    assert_eq!(conv.forward_plan(ConvPass::Train), Some(WinogradPlan::S2(s2)), "the training forward takes it");
    assert_eq!(conv.forward_plan(ConvPass::Infer), Some(WinogradPlan::S2(s2)));
    assert!(!conv.winograd_stride1());
    // Too few channels, or padding 2: im2col.
    assert_eq!(Conv2d::new(spec(1, 2, Padding::symmetric(1)), 32, 32).unwrap().winograd(ConvPass::Infer), None);
    assert_eq!(Conv2d::new(spec(32, 2, Padding::symmetric(2)), 32, 32).unwrap().winograd(ConvPass::Infer), None);
    // Keras 'same' (0, 1) and 'valid' run through it.
    for pad in [Padding::same(32, 32, 3, 3, 2).unwrap(), Padding::valid()] {
        let plan = Conv2d::new(spec(32, 2, pad), 32, 32).unwrap().winograd(ConvPass::Infer);
        assert_eq!(plan, Some(WinogradPlan::S2(WinogradS2::new(32, 64, 32, 32, pad).unwrap())));
    }

    // The training forward (bias) against the f64 direct convolution, and
    // forward_fused (inference) against it plus the same epilogue.
    let (n, h) = (3, 15);
    let c = Case::new((32, 64, h, h), Padding::symmetric(1), n, 5, 0.1);
    let conv = Conv2d::new(spec(32, 2, Padding::symmetric(1)), h, h).unwrap();
    let scale: Vec<f32> = c.b.iter().map(|b| 0.5 - b).collect();
    let epi = Epilogue { scale: Some(&scale), shift: Some(&c.b), relu: true };
    let mut ws = conv.workspace_for(n, ConvPass::Infer);
    let mut got = vec![f32::NAN; c.out_len()];
    conv.forward_fused(&mut got, &c.x, &c.w, epi, n, &mut ws).unwrap();
    let mut ws = conv.workspace(n);
    let mut biased = vec![f32::NAN; c.out_len()];
    let spec_b = Conv2dSpec { bias: true, ..spec(32, 2, Padding::symmetric(1)) };
    let conv_b = Conv2d::new(spec_b, h, h).unwrap();
    let mut ws_b = conv_b.workspace(n);
    conv_b.forward(&mut biased, &c.x, &c.w, Some(&c.b), n, &mut ws_b).unwrap();
    let err = rel_err(&biased, &naive(&c.l, &c.x, &c.w, Some(&c.b), n));
    assert!(err < 1e-6, "training forward against the direct convolution: {err:e}");
    let mut plain = vec![f32::NAN; c.out_len()];
    conv.forward(&mut plain, &c.x, &c.w, None, n, &mut ws).unwrap();
    let plane = 8 * 8;
    let want: Vec<f64> = plain
        .iter()
        .enumerate()
        .map(|(k, &y)| (y * scale[k / plane % 64] + c.b[k / plane % 64]).max(0.0) as f64)
        .collect();
    let err = rel_err(&got, &want);
    assert!(err < 1e-5, "inference against training forward: {err:e}");
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // The last three are one shard, whose products and plane transforms are shared out.
    let cases = [
        (32, 64, 32, 32, 3),
        (64, 128, 16, 16, 9),
        (5, 7, 9, 11, 33),
        (16, 16, 32, 32, 1),
        (13, 9, 16, 16, 1),
        (3, 5, 8, 8, 2),
    ];
    for (cin, cout, h, w, n) in cases {
        let c = Case::new((cin, cout, h, w), Padding::symmetric(1), n, 11, 0.5);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| c.forward(true))
        };
        let y1 = run(1);
        for threads in [2, 3] {
            let same = run(threads).iter().zip(&y1).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{cin}->{cout} {h}x{w} n={n}: forward differs with {threads} threads");
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let p1 = Padding::symmetric(1);
    for dims in [(0, 1, 1, 1), (1, 0, 1, 1), (1, 1, 0, 1), (1, 1, 1, 0)] {
        assert!(WinogradS2::new(dims.0, dims.1, dims.2, dims.3, p1).is_err(), "{dims:?}");
    }
    assert!(WinogradS2::new(2, 2, 8, 8, Padding::symmetric(2)).is_err());
    assert!(WinogradS2::new(2, 2, 2, 8, Padding::valid()).is_err(), "kernel taller than the input");
    let c = Case::new((3, 4, 5, 6), p1, 2, 3, 0.5);
    let (l, n) = (&c.l, c.n);
    assert_eq!(l.out_size(), (3, 3));
    let mut ws = l.workspace(n);
    let mut out = vec![0.0; c.out_len()];
    assert!(l.forward(&mut out, &c.x[1..], &c.w, None, n, &mut ws).is_err());
    assert!(l.forward(&mut out[1..], &c.x, &c.w, None, n, &mut ws).is_err());
    assert!(l.forward(&mut out, &c.x, &c.w[1..], None, n, &mut ws).is_err());
    assert!(l.forward(&mut out, &c.x, &c.w, Some(&c.b[1..]), n, &mut ws).is_err());
    let short = Epilogue { scale: Some(&c.b[1..]), shift: None, relu: false };
    assert!(l.forward_fused(&mut out, &c.x, &c.w, short, n, &mut ws).is_err());
    // A workspace for another batch size or another geometry.
    assert!(l.forward(&mut out, &c.x, &c.w, None, n, &mut l.workspace(n + 1)).is_err());
    let mut other = WinogradS2::new(3, 4, 6, 5, p1).unwrap().workspace(n);
    assert!(l.forward(&mut out, &c.x, &c.w, None, n, &mut other).is_err());
    // An empty batch is a no-op.
    let mut ws0 = l.workspace(0);
    let mut none: Vec<f32> = Vec::new();
    l.forward(&mut none, &[], &c.w, None, 0, &mut ws0).unwrap();
    // The error names the layer.
    let err = l.forward(&mut out, &c.x[1..], &c.w, None, n, &mut ws).unwrap_err().to_string();
    assert!(err.contains("winograd input"), "{err}");
}
