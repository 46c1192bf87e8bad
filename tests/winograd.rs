//! Winograd F(2x2, 3x3) and F(4x4, 3x3) against a direct 3x3 pad-1
//! convolution computed in f64: the F(4x4) matrices themselves, forward (plain
//! and with a fused epilogue), backward_data (accumulation and the adjoint
//! identity), accuracy at PyTorch's initialisation scale, thread-count
//! determinism and argument errors.

mod common;

use common::rand_vec;
use nhpatch::error::Result;
use nhpatch::layers::DxMode;
use nhpatch::layers::conv2d::Epilogue;
use nhpatch::layers::winograd::{Winograd, Winograd4, Winograd4Workspace, WinogradWorkspace};
use nhpatch::rng::Rng;
use proptest::prelude::*;

/// The API both tilings share.
trait Wino: Sized {
    type Ws;
    fn make(cin: usize, cout: usize, h: usize, w: usize) -> Result<Self>;
    fn geom(&self) -> Geom;
    fn ws(&self, n: usize) -> Self::Ws;
    fn fwd(&self, out: &mut [f32], x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize, ws: &mut Self::Ws) -> Result<()>;
    fn fused(&self, out: &mut [f32], x: &[f32], w: &[f32], e: Epilogue<'_>, n: usize, ws: &mut Self::Ws) -> Result<()>;
    fn bwd(&self, dx: &mut [f32], dout: &[f32], w: &[f32], n: usize, ws: &mut Self::Ws) -> Result<()>;
}

macro_rules! impl_wino {
    ($t:ty, $ws:ty) => {
        impl Wino for $t {
            type Ws = $ws;
            fn make(cin: usize, cout: usize, h: usize, w: usize) -> Result<Self> {
                <$t>::new(cin, cout, h, w)
            }
            fn geom(&self) -> Geom {
                Geom { cin: self.cin, cout: self.cout, h: self.h, w: self.w }
            }
            fn ws(&self, n: usize) -> $ws {
                self.workspace(n)
            }
            fn fwd(
                &self,
                out: &mut [f32],
                x: &[f32],
                w: &[f32],
                b: Option<&[f32]>,
                n: usize,
                ws: &mut $ws,
            ) -> Result<()> {
                self.forward(out, x, w, b, n, ws)
            }
            fn fused(
                &self,
                out: &mut [f32],
                x: &[f32],
                w: &[f32],
                e: Epilogue<'_>,
                n: usize,
                ws: &mut $ws,
            ) -> Result<()> {
                self.forward_fused(out, x, w, e, n, ws)
            }
            fn bwd(&self, dx: &mut [f32], dout: &[f32], w: &[f32], n: usize, ws: &mut $ws) -> Result<()> {
                self.backward_data((dx, DxMode::Add), dout, w, n, ws)
            }
        }
    };
}
impl_wino!(Winograd, WinogradWorkspace);
impl_wino!(Winograd4, Winograd4Workspace);

#[derive(Clone, Copy, Debug)]
struct Geom {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
}

/// Direct forward in f64: out[n, cout, h, w].
fn naive_forward(l: &Geom, x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize) -> Vec<f64> {
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
fn naive_backward_data(l: &Geom, dout: &[f32], w: &[f32], n: usize) -> Vec<f64> {
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

fn forward<L: Wino>(l: &L, x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize) -> Vec<f32> {
    let g = l.geom();
    let mut out = vec![f32::NAN; n * g.cout * g.h * g.w];
    let mut ws = l.ws(n);
    l.fwd(&mut out, x, w, b, n, &mut ws).unwrap();
    out
}

fn backward_data<L: Wino>(l: &L, dout: &[f32], w: &[f32], n: usize, prefill: f32) -> Vec<f32> {
    let g = l.geom();
    let mut dx = vec![prefill; n * g.cin * g.h * g.w];
    let mut ws = l.ws(n);
    l.bwd(&mut dx, dout, w, n, &mut ws).unwrap();
    dx
}

struct Case<L> {
    l: L,
    g: Geom,
    n: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    d: Vec<f32>,
}

/// Inputs and output gradients uniform in [-1, 1], weights in [-wmax, wmax], bias in [-bmax, bmax].
fn case_scaled<L: Wino>(dims: (usize, usize, usize, usize), n: usize, seed: u64, wmax: f32, bmax: f32) -> Case<L> {
    let (cin, cout, h, w) = dims;
    let l = L::make(cin, cout, h, w).unwrap();
    let mut rng = Rng::new(seed);
    Case {
        g: l.geom(),
        l,
        n,
        x: rand_vec(&mut rng, n * cin * h * w, -1.0, 1.0),
        w: rand_vec(&mut rng, cout * cin * 9, -wmax, wmax),
        b: rand_vec(&mut rng, cout, -bmax, bmax),
        d: rand_vec(&mut rng, n * cout * h * w, -1.0, 1.0),
    }
}

fn case<L: Wino>(cin: usize, cout: usize, h: usize, w: usize, n: usize, seed: u64) -> Case<L> {
    case_scaled((cin, cout, h, w), n, seed, 0.5, 1.0)
}

const TOL: f64 = 1e-4;

fn check_forward<L: Wino>(dims: (usize, usize, usize, usize), n: usize, with_bias: bool, seed: u64) -> f64 {
    let c = case::<L>(dims.0, dims.1, dims.2, dims.3, n, seed);
    let b = with_bias.then_some(&c.b[..]);
    rel_err(&forward(&c.l, &c.x, &c.w, b, n), &naive_forward(&c.g, &c.x, &c.w, b, n))
}

fn check_backward<L: Wino>(dims: (usize, usize, usize, usize), n: usize, seed: u64) -> f64 {
    let c = case::<L>(dims.0, dims.1, dims.2, dims.3, n, seed);
    let prefill = 0.75f32;
    let want: Vec<f64> = naive_backward_data(&c.g, &c.d, &c.w, n).iter().map(|g| g + prefill as f64).collect();
    rel_err(&backward_data(&c.l, &c.d, &c.w, n, prefill), &want)
}

/// |<forward(x), d> - <x, backward_data(d)>| relative to sum |y d|.
fn adjoint_gap<L: Wino>(dims: (usize, usize, usize, usize), n: usize, seed: u64) -> f64 {
    let c = case::<L>(dims.0, dims.1, dims.2, dims.3, n, seed);
    let y = forward(&c.l, &c.x, &c.w, None, n);
    let dx = backward_data(&c.l, &c.d, &c.w, n, 0.0);
    let lhs: f64 = y.iter().zip(&c.d).map(|(&a, &b)| a as f64 * b as f64).sum();
    let rhs: f64 = c.x.iter().zip(&dx).map(|(&a, &b)| a as f64 * b as f64).sum();
    let scale: f64 = y.iter().zip(&c.d).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>().max(1e-30);
    (lhs - rhs).abs() / scale
}

/// Forward with a scale + shift + ReLU epilogue against the naive convolution mapped the same way.
fn check_fused<L: Wino>(dims: (usize, usize, usize, usize), n: usize, seed: u64) -> f64 {
    let c = case::<L>(dims.0, dims.1, dims.2, dims.3, n, seed);
    let scale: Vec<f32> = c.b.iter().map(|b| 1.5 * b).collect();
    let epi = Epilogue { scale: Some(&scale), shift: Some(&c.b), relu: true };
    let mut out = vec![f32::NAN; n * c.g.cout * c.g.h * c.g.w];
    let mut ws = c.l.ws(n);
    c.l.fused(&mut out, &c.x, &c.w, epi, n, &mut ws).unwrap();
    let plane = c.g.h * c.g.w;
    let want: Vec<f64> = naive_forward(&c.g, &c.x, &c.w, None, n)
        .iter()
        .enumerate()
        .map(|(k, &y)| {
            let co = k / plane % c.g.cout;
            (y * scale[co] as f64 + c.b[co] as f64).max(0.0)
        })
        .collect();
    rel_err(&out, &want)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn forward_matches_naive(cin in 1usize..20, cout in 1usize..20, h in 1usize..=13, w in 1usize..=13,
                             n in 1usize..=3, with_bias: bool, seed: u64) {
        let err = check_forward::<Winograd>((cin, cout, h, w), n, with_bias, seed);
        prop_assert!(err < TOL, "relative error {err:e}");
    }

    #[test]
    fn f4_forward_matches_naive(cin in 1usize..20, cout in 1usize..20, h in 1usize..=19, w in 1usize..=19,
                                n in 1usize..=3, with_bias: bool, seed: u64) {
        let err = check_forward::<Winograd4>((cin, cout, h, w), n, with_bias, seed);
        prop_assert!(err < TOL, "relative error {err:e}");
    }

    #[test]
    fn backward_data_matches_naive_and_accumulates(cin in 1usize..20, cout in 1usize..20, h in 1usize..=13,
                                                   w in 1usize..=13, n in 1usize..=3, seed: u64) {
        let err = check_backward::<Winograd>((cin, cout, h, w), n, seed);
        prop_assert!(err < TOL, "relative error {err:e}");
    }

    #[test]
    fn f4_backward_data_matches_naive_and_accumulates(cin in 1usize..20, cout in 1usize..20, h in 1usize..=19,
                                                      w in 1usize..=19, n in 1usize..=3, seed: u64) {
        let err = check_backward::<Winograd4>((cin, cout, h, w), n, seed);
        prop_assert!(err < TOL, "relative error {err:e}");
    }

    #[test]
    fn adjoint_identity(cin in 1usize..20, cout in 1usize..20, h in 1usize..=13, w in 1usize..=13,
                        n in 1usize..=3, seed: u64) {
        let gap = adjoint_gap::<Winograd>((cin, cout, h, w), n, seed);
        prop_assert!(gap < TOL, "relative gap {gap:e}");
    }

    #[test]
    fn f4_adjoint_identity(cin in 1usize..20, cout in 1usize..20, h in 1usize..=19, w in 1usize..=19,
                           n in 1usize..=3, seed: u64) {
        let gap = adjoint_gap::<Winograd4>((cin, cout, h, w), n, seed);
        prop_assert!(gap < TOL, "relative gap {gap:e}");
    }

    #[test]
    fn fused_epilogue_matches_naive(cin in 1usize..12, cout in 1usize..12, h in 1usize..=11, w in 1usize..=11,
                                    n in 1usize..=2, seed: u64) {
        let e2 = check_fused::<Winograd>((cin, cout, h, w), n, seed);
        let e4 = check_fused::<Winograd4>((cin, cout, h, w), n, seed);
        prop_assert!(e2 < TOL && e4 < TOL, "relative error F2 {e2:e}, F4 {e4:e}");
    }
}

/// The F(4x4, 3x3) matrices as given by Lavin & Gray, checked in f64 on random
/// 6x6 tiles: A^T [(G g G^T) . (B^T d B)] A is the 4x4 valid correlation of d with g.
#[test]
fn f4_matrices_compute_a_correlation() {
    const BT: [[f64; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const G: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    const AT: [[f64; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];
    // P Q R for row-major matrices given as closures.
    fn mul(r: usize, k: usize, c: usize, a: impl Fn(usize, usize) -> f64, b: impl Fn(usize, usize) -> f64) -> Vec<f64> {
        (0..r * c).map(|ij| (0..k).map(|l| a(ij / c, l) * b(l, ij % c)).sum()).collect()
    }
    let mut rng = Rng::new(42);
    for _ in 0..20 {
        let d: Vec<f64> = (0..36).map(|_| rng.uniform(-1.0, 1.0) as f64).collect();
        let g: Vec<f64> = (0..9).map(|_| rng.uniform(-1.0, 1.0) as f64).collect();
        let btd = mul(6, 6, 6, |i, j| BT[i][j], |i, j| d[6 * i + j]);
        let v = mul(6, 6, 6, |i, j| btd[6 * i + j], |i, j| BT[j][i]);
        let gg = mul(6, 3, 3, |i, j| G[i][j], |i, j| g[3 * i + j]);
        let u = mul(6, 3, 6, |i, j| gg[3 * i + j], |i, j| G[j][i]);
        let m: Vec<f64> = u.iter().zip(&v).map(|(a, b)| a * b).collect();
        let atm = mul(4, 6, 6, |i, j| AT[i][j], |i, j| m[6 * i + j]);
        let y = mul(4, 6, 4, |i, j| atm[6 * i + j], |i, j| AT[j][i]);
        for i in 0..4 {
            for j in 0..4 {
                let want: f64 = (0..9).map(|k| d[6 * (i + k / 3) + j + k % 3] * g[k]).sum();
                assert!((y[4 * i + j] - want).abs() < 1e-12, "Y[{i}][{j}] = {}, want {want}", y[4 * i + j]);
            }
        }
    }
}

#[test]
fn realistic_64_to_64_32x32() {
    fn errs<L: Wino>() -> (f64, f64) {
        let c = case::<L>(64, 64, 32, 32, 4, 7);
        let b = Some(&c.b[..]);
        let fwd = rel_err(&forward(&c.l, &c.x, &c.w, b, c.n), &naive_forward(&c.g, &c.x, &c.w, b, c.n));
        let bwd = rel_err(&backward_data(&c.l, &c.d, &c.w, c.n, 0.0), &naive_backward_data(&c.g, &c.d, &c.w, c.n));
        (fwd, bwd)
    }
    for (name, (fwd, bwd)) in [("F(2x2)", errs::<Winograd>()), ("F(4x4)", errs::<Winograd4>())] {
        eprintln!("{name} 64->64 32x32 n=4: forward relative error {fwd:.3e}, backward_data {bwd:.3e}");
        assert!(fwd < TOL && bwd < TOL, "{name}: forward {fwd:e}, backward_data {bwd:e}");
    }
}

/// cin = cout = 64, 32x32, n = 4 at PyTorch's default initialisation scale
/// (weights and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = U(-1/24, 1/24)), inputs in [-1, 1].
#[test]
fn pytorch_init_accuracy_64_to_64_32x32() {
    fn errs<L: Wino>() -> (f64, f64) {
        let c = case_scaled::<L>((64, 64, 32, 32), 4, 9, 1.0 / 24.0, 1.0 / 24.0);
        let b = Some(&c.b[..]);
        let fwd = rel_err(&forward(&c.l, &c.x, &c.w, b, c.n), &naive_forward(&c.g, &c.x, &c.w, b, c.n));
        let bwd = rel_err(&backward_data(&c.l, &c.d, &c.w, c.n, 0.0), &naive_backward_data(&c.g, &c.d, &c.w, c.n));
        (fwd, bwd)
    }
    for (name, (fwd, bwd)) in [("F(2x2)", errs::<Winograd>()), ("F(4x4)", errs::<Winograd4>())] {
        eprintln!(
            "{name} PyTorch-init 64->64 32x32 n=4: max relative error forward {fwd:.3e}, backward_data {bwd:.3e}"
        );
        assert!(fwd < 1e-5 && bwd < 1e-5, "{name}: forward {fwd:e}, backward_data {bwd:e}");
    }
}

#[test]
fn multi_group_batches_match_naive() {
    // Several GEMM groups and shards per call, with a short last group.
    fn check<L: Wino>(name: &str) {
        for (cin, cout, h, w, n) in [(3, 5, 8, 8, 40), (2, 3, 32, 32, 25), (4, 2, 6, 5, 70), (3, 3, 16, 16, 13)] {
            let fwd = check_forward::<L>((cin, cout, h, w), n, true, 5);
            let c = case::<L>(cin, cout, h, w, n, 5);
            let bwd = rel_err(&backward_data(&c.l, &c.d, &c.w, n, 0.0), &naive_backward_data(&c.g, &c.d, &c.w, n));
            assert!(
                fwd < TOL && bwd < TOL,
                "{name} {cin}->{cout} {h}x{w} n={n}: forward {fwd:e}, backward_data {bwd:e}"
            );
        }
    }
    check::<Winograd>("F(2x2)");
    check::<Winograd4>("F(4x4)");
}

#[test]
fn empty_batch_is_a_no_op() {
    fn check<L: Wino>() {
        let l = L::make(3, 4, 5, 6).unwrap();
        let mut ws = l.ws(0);
        l.fwd(&mut [], &[], &[0.0; 4 * 3 * 9], None, 0, &mut ws).unwrap();
        l.bwd(&mut [], &[], &[0.0; 4 * 3 * 9], 0, &mut ws).unwrap();
    }
    check::<Winograd>();
    check::<Winograd4>();
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // 16x16 and 8x8 group several images per GEMM; 7 and 33 images leave ragged groups and shards.
    fn check<L: Wino + Sync>(name: &str) {
        for (cin, cout, h, w, n) in [
            (5, 7, 16, 16, 7),
            (8, 6, 8, 8, 33),
            (3, 4, 9, 7, 5),
            (4, 4, 32, 32, 3),
            (2, 3, 32, 32, 25),
            (3, 2, 4, 4, 90),
            // One shard (one image, or a few small ones), whose products and
            // plane transforms are shared out among the threads: channel
            // counts that leave a ragged last task, or fewer channels than tasks.
            (16, 16, 32, 32, 1),
            (8, 6, 8, 8, 1),
            (13, 11, 16, 16, 1),
            (3, 5, 8, 8, 5),
            (20, 3, 8, 8, 6),
        ] {
            let c = case::<L>(cin, cout, h, w, n, 11);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| (forward(&c.l, &c.x, &c.w, Some(&c.b), n), backward_data(&c.l, &c.d, &c.w, n, 0.25)))
            };
            let (y1, dx1) = run(1);
            for threads in [2, 3] {
                let (y, dx) = run(threads);
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same(&y, &y1), "{name} forward differs with {threads} threads ({cin}->{cout} {h}x{w} n={n})");
                assert!(
                    same(&dx, &dx1),
                    "{name} backward_data differs with {threads} threads ({cin}->{cout} {h}x{w} n={n})"
                );
            }
        }
    }
    check::<Winograd>("F(2x2)");
    check::<Winograd4>("F(4x4)");
}

#[test]
fn bad_arguments_are_errors() {
    fn check<L: Wino>() {
        assert!(L::make(0, 1, 1, 1).is_err());
        assert!(L::make(1, 0, 1, 1).is_err());
        assert!(L::make(1, 1, 0, 1).is_err());
        assert!(L::make(1, 1, 1, 0).is_err());
        let c = case::<L>(3, 4, 5, 6, 2, 3);
        let (l, n) = (&c.l, c.n);
        let mut ws = l.ws(n);
        let mut out = vec![0.0; n * 4 * 30];
        let mut dx = vec![0.0; n * 3 * 30];
        assert!(l.fwd(&mut out, &c.x[1..], &c.w, None, n, &mut ws).is_err());
        assert!(l.fwd(&mut out[1..], &c.x, &c.w, None, n, &mut ws).is_err());
        assert!(l.fwd(&mut out, &c.x, &c.w[1..], None, n, &mut ws).is_err());
        assert!(l.fwd(&mut out, &c.x, &c.w, Some(&c.b[1..]), n, &mut ws).is_err());
        assert!(l.fwd(&mut out, &c.x, &c.w, None, n + 1, &mut ws).is_err());
        let short = Epilogue { scale: Some(&c.b[1..]), shift: None, relu: false };
        assert!(l.fused(&mut out, &c.x, &c.w, short, n, &mut ws).is_err());
        let short = Epilogue { scale: None, shift: Some(&c.b[1..]), relu: true };
        assert!(l.fused(&mut out, &c.x, &c.w, short, n, &mut ws).is_err());
        assert!(l.bwd(&mut dx[1..], &c.d, &c.w, n, &mut ws).is_err());
        assert!(l.bwd(&mut dx, &c.d[1..], &c.w, n, &mut ws).is_err());
        assert!(l.bwd(&mut dx, &c.d, &c.w[1..], n, &mut ws).is_err());
        // A workspace for another batch size or another geometry.
        let mut other_n = l.ws(n + 1);
        assert!(l.fwd(&mut out, &c.x, &c.w, None, n, &mut other_n).is_err());
        assert!(l.bwd(&mut dx, &c.d, &c.w, n, &mut other_n).is_err());
        let mut other_geom = L::make(3, 4, 6, 5).unwrap().ws(n);
        assert!(l.fwd(&mut out, &c.x, &c.w, None, n, &mut other_geom).is_err());
        assert!(l.bwd(&mut dx, &c.d, &c.w, n, &mut other_geom).is_err());
        // The right workspace still works after the refusals.
        l.fwd(&mut out, &c.x, &c.w, Some(&c.b), n, &mut ws).unwrap();
        l.bwd(&mut dx, &c.d, &c.w, n, &mut ws).unwrap();
    }
    check::<Winograd>();
    check::<Winograd4>();
}

/// A workspace reused while the weights change (as in training), and between
/// forward and backward_data (rotated transforms), gives the bits of a fresh
/// workspace per call: the cached weight transform is never stale (weights
/// changed in one element, or in the sign of a zero, included).
fn reused_workspace_is_never_stale<T: Wino>() {
    let (cin, cout, h, w, n) = (5, 7, 9, 8, 2);
    let l = T::make(cin, cout, h, w).unwrap();
    let mut rng = Rng::new(9);
    let x = rand_vec(&mut rng, n * cin * h * w, -1.0, 1.0);
    let dout = rand_vec(&mut rng, n * cout * h * w, -1.0, 1.0);
    let w1 = rand_vec(&mut rng, cout * cin * 9, -1.0, 1.0);
    let mut w2 = w1.clone();
    w2[cout * cin * 9 - 1] += 0.5;
    let mut w3 = w1.clone();
    w3[4] = 0.0;
    let mut w4 = w3.clone();
    w4[4] = -0.0;
    let mut reused = l.ws(n);
    for (i, wt) in [&w1, &w1, &w2, &w1, &w3, &w4, &w4].into_iter().enumerate() {
        let (mut a, mut b) = (vec![f32::NAN; dout.len()], vec![f32::NAN; dout.len()]);
        l.fwd(&mut a, &x, wt, None, n, &mut reused).unwrap();
        l.fwd(&mut b, &x, wt, None, n, &mut l.ws(n)).unwrap();
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "forward {i}"
        );
        let (mut da, mut db) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        l.bwd(&mut da, &dout, wt, n, &mut reused).unwrap();
        l.bwd(&mut db, &dout, wt, n, &mut l.ws(n)).unwrap();
        assert_eq!(da, db, "backward_data {i}");
    }
}

#[test]
fn f2_reused_workspace_is_never_stale() {
    reused_workspace_is_never_stale::<Winograd>();
}

#[test]
fn f4_reused_workspace_is_never_stale() {
    reused_workspace_is_never_stale::<Winograd4>();
}

/// Direct weight and bias gradient of `naive_forward` in f64: (dw[cout, cin, 3, 3], db[cout]).
fn naive_backward_weight(l: &Geom, x: &[f32], dout: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let (hh, ww) = (l.h as isize, l.w as isize);
    let mut dw = vec![0.0f64; l.cout * l.cin * 9];
    let mut db = vec![0.0f64; l.cout];
    for i in 0..n {
        for co in 0..l.cout {
            for oy in 0..hh {
                for ox in 0..ww {
                    let d = dout[((i * l.cout + co) * l.h + oy as usize) * l.w + ox as usize] as f64;
                    db[co] += d;
                    for ci in 0..l.cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                                if iy < 0 || ix < 0 || iy >= hh || ix >= ww {
                                    continue;
                                }
                                let xv = x[((i * l.cin + ci) * l.h + iy as usize) * l.w + ix as usize] as f64;
                                dw[((co * l.cin + ci) * 3 + ky as usize) * 3 + kx as usize] += d * xv;
                            }
                        }
                    }
                }
            }
        }
    }
    (dw, db)
}

/// F(2x2) backward_weight over `dw`, `db` pre-filled with `prefill`, called `calls` times on one workspace.
fn backward_weight(c: &Case<Winograd>, prefill: f32, calls: usize) -> (Vec<f32>, Vec<f32>) {
    let mut dw = vec![prefill; c.g.cout * c.g.cin * 9];
    let mut db = vec![prefill; c.g.cout];
    let mut ws = c.l.workspace(c.n);
    for _ in 0..calls {
        c.l.backward_weight(&mut dw, Some(&mut db), &c.x, &c.d, c.n, &mut ws).unwrap();
    }
    (dw, db)
}

/// Relative errors of F(2x2) backward_weight (two accumulating calls over a
/// prefill) against twice the naive gradient plus the prefill: (dw, db).
fn check_backward_weight(dims: (usize, usize, usize, usize), n: usize, seed: u64) -> (f64, f64) {
    let c = case::<Winograd>(dims.0, dims.1, dims.2, dims.3, n, seed);
    let prefill = 0.5f32;
    let (dw, db) = backward_weight(&c, prefill, 2);
    let (want_w, want_b) = naive_backward_weight(&c.g, &c.x, &c.d, n);
    let twice = |v: Vec<f64>| v.iter().map(|g| 2.0 * g + prefill as f64).collect::<Vec<_>>();
    (rel_err(&dw, &twice(want_w)), rel_err(&db, &twice(want_b)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn backward_weight_matches_naive_and_accumulates(cin in 1usize..20, cout in 1usize..20, h in 1usize..=13,
                                                     w in 1usize..=13, n in 1usize..=3, seed: u64) {
        let (ew, eb) = check_backward_weight((cin, cout, h, w), n, seed);
        prop_assert!(ew < TOL && eb < TOL, "relative error dw {ew:e}, db {eb:e}");
    }
}

#[test]
fn backward_weight_holds_on_the_models_layers() {
    // HardNet's 32x32, 16x16 and 8x8 layers and a ragged batch; the shards' groups overwrite, then accumulate.
    for (cin, cout, h, w, n) in [(32, 32, 32, 32, 3), (64, 64, 16, 16, 5), (128, 128, 8, 8, 37), (16, 24, 9, 7, 9)] {
        let (ew, eb) = check_backward_weight((cin, cout, h, w), n, 5);
        assert!(ew < TOL && eb < TOL, "{cin}->{cout} {h}x{w} n={n}: dw {ew:e}, db {eb:e}");
    }
}

#[test]
fn backward_weight_does_not_depend_on_the_thread_count() {
    for (cin, cout, h, w, n) in
        [(5, 7, 16, 16, 7), (8, 6, 8, 8, 33), (3, 4, 9, 7, 5), (2, 3, 32, 32, 25), (8, 6, 8, 8, 1)]
    {
        let c = case::<Winograd>(cin, cout, h, w, n, 13);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| backward_weight(&c, 0.25, 1))
        };
        let (dw1, db1) = run(1);
        for threads in [2, 3] {
            let (dw, db) = run(threads);
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same(&dw, &dw1) && same(&db, &db1), "differs with {threads} threads ({cin}->{cout} {h}x{w} n={n})");
        }
    }
}

#[test]
fn backward_weight_rejects_bad_arguments() {
    let c = case::<Winograd>(3, 4, 5, 6, 2, 1);
    let mut ws = c.l.workspace(2);
    let mut dw = vec![0.0; 4 * 3 * 9];
    let mut db = vec![0.0; 4];
    let err = c.l.backward_weight(&mut dw[1..], None, &c.x, &c.d, 2, &mut ws).unwrap_err().to_string();
    assert!(err.contains("winograd weight"), "{err}");
    let err = c.l.backward_weight(&mut dw, Some(&mut db[1..]), &c.x, &c.d, 2, &mut ws).unwrap_err().to_string();
    assert!(err.contains("bias gradient"), "{err}");
    let err = c.l.backward_weight(&mut dw, None, &c.x[1..], &c.d, 2, &mut ws).unwrap_err().to_string();
    assert!(err.contains("winograd input"), "{err}");
    let err = c.l.backward_weight(&mut dw, None, &c.x, &c.d[2..], 2, &mut ws).unwrap_err().to_string();
    assert!(err.contains("output gradient"), "{err}");
    let mut ws1 = c.l.workspace(1);
    let err = c.l.backward_weight(&mut dw, None, &c.x, &c.d, 2, &mut ws1).unwrap_err().to_string();
    assert!(err.contains("sized for 1 images"), "{err}");
    // No images: nothing to add.
    c.l.backward_weight(&mut dw, Some(&mut db), &[], &[], 0, &mut c.l.workspace(0)).unwrap();
    assert!(dw.iter().chain(&db).all(|&v| v == 0.0));
}
