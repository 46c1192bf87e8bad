//! The bf16 convolution (`Conv2d::forward_bf16`) against the f32 one: equal
//! up to f32 summation order to the f32 convolution of the bf16-rounded
//! input and weights (its slow twin), and within the bf16 rounding bound of
//! the f32 convolution itself, on every geometry the models use (3x3 'same'
//! stride 1 and 2, Keras 'same' 2x2, the dense 8x8, the one-channel first
//! layer, tiles of several images), with folded BatchNorm and ReLU; the same
//! bits for any thread count and batch split; refusals are errors.

use nhpatch::gemm::bf16::round_bf16;
use nhpatch::layers::conv2d::{Conv2d, Conv2dSpec, ConvPass, Epilogue};
use nhpatch::ops::im2col::Padding;
use nhpatch::rng::Rng;

fn rand(rng: &mut Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(lo, hi)).collect()
}

struct Case {
    l: Conv2d,
    x: Vec<f32>,
    w: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    n: usize,
}

impl Case {
    fn new(rng: &mut Rng, spec: Conv2dSpec, hw: usize, n: usize) -> Case {
        let l = Conv2d::new(spec, hw, hw).unwrap();
        let x = rand(rng, l.in_shape(n).len(), -2.0, 3.0);
        let w = rand(rng, l.weight_len(), -0.3, 0.3);
        let scale = rand(rng, spec.cout, 0.5, 1.5);
        let shift = rand(rng, spec.cout, -0.5, 0.5);
        Case { l, x, w, scale, shift, n }
    }

    fn epi(&self, relu: bool) -> Epilogue<'_> {
        Epilogue { scale: Some(&self.scale), shift: Some(&self.shift), relu }
    }

    fn bf16(&self, relu: bool) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.l.out_shape(self.n).len()];
        let mut ws = self.l.workspace_bf16(self.n);
        self.l.forward_bf16(&mut out, &self.x, &self.w, self.epi(relu), self.n, &mut ws).unwrap();
        out
    }

    fn f32_of(&self, x: &[f32], w: &[f32], relu: bool) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.l.out_shape(self.n).len()];
        let mut ws = self.l.workspace_for(self.n, ConvPass::Infer);
        self.l.forward_fused(&mut out, x, w, self.epi(relu), self.n, &mut ws).unwrap();
        out
    }

    /// Largest |sum of |w| |x|| over a window of channel c, times its scale:
    /// what rounding errors are relative to.
    fn magnitude(&self, c: usize) -> f32 {
        let k = self.l.win.k();
        let wsum: f32 = self.w[c * k..(c + 1) * k].iter().map(|v| v.abs()).sum();
        let xmax = self.x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        self.scale[c] * wsum * xmax
    }
}

fn specs() -> Vec<(Conv2dSpec, usize, &'static str)> {
    let c = |cin, cout, k, stride, pad| Conv2dSpec { cin, cout, kh: k, kw: k, stride, pad, bias: false };
    vec![
        (c(1, 32, 3, 1, Padding::symmetric(1)), 32, "hardnet conv1"),
        (c(32, 32, 3, 1, Padding::symmetric(1)), 8, "3x3 stride 1 on 8x8 (Winograd in f32)"),
        (c(32, 64, 3, 2, Padding::symmetric(1)), 16, "3x3 stride 2"),
        (c(16, 16, 2, 1, Padding::same(8, 8, 2, 2, 1).unwrap()), 8, "Keras 'same' 2x2"),
        (c(24, 20, 3, 1, Padding::symmetric(1)), 5, "odd sizes, tiles of several images"),
        (c(128, 128, 8, 1, Padding::valid()), 8, "dense 8x8"),
        (c(3, 5, 3, 1, Padding::valid()), 6, "odd depth (27)"),
    ]
}

#[test]
fn bf16_is_the_f32_convolution_of_the_rounded_operands_and_near_f32() {
    let mut rng = Rng::new(31);
    for (spec, hw, what) in specs() {
        for n in [3, 20] {
            let case = Case::new(&mut rng, spec, hw, n);
            let (xr, wr): (Vec<f32>, Vec<f32>) =
                (case.x.iter().map(|&v| round_bf16(v)).collect(), case.w.iter().map(|&v| round_bf16(v)).collect());
            for relu in [false, true] {
                let (h, twin, f) = (case.bf16(relu), case.f32_of(&xr, &wr, relu), case.f32_of(&case.x, &case.w, relu));
                let plane = case.l.win.p();
                let mut differs = false;
                for (i, ((a, t), b)) in h.iter().zip(&twin).zip(&f).enumerate() {
                    let c = (i / plane) % spec.cout;
                    let mag = case.magnitude(c);
                    // Summation order (and Winograd's transforms in the twin): a few ulps of the magnitude.
                    assert!((a - t).abs() <= 1e-5 * mag + 1e-6, "{what} n={n}: element {i} {a} vs twin {t}");
                    // Each operand within 2^-9 relative: each product within 2^-8.
                    assert!((a - b).abs() <= mag * 2.0f32.powi(-8) + 1e-5, "{what} n={n}: element {i} {a} vs f32 {b}");
                    differs |= a != b;
                }
                assert!(differs, "{what}: bf16 gave the f32 bits everywhere");
            }
        }
    }
}

#[test]
fn bf16_has_the_same_bits_for_any_thread_count_and_batch() {
    let mut rng = Rng::new(4);
    for (spec, hw, what) in specs() {
        let case = Case::new(&mut rng, spec, hw, 37);
        let want = case.bf16(true);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let got = pool.install(|| case.bf16(true));
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: {threads} threads");
        }
        let per_in = case.l.in_shape(1).len();
        let few = Case { x: case.x[..5 * per_in].to_vec(), n: 5, ..case };
        let got = few.bf16(true);
        let per_out = few.l.out_shape(1).len();
        assert!(got.iter().zip(&want[..5 * per_out]).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: batch of 5");
    }
}

#[test]
fn changed_weights_are_rounded_again_and_bad_calls_are_errors() {
    let mut rng = Rng::new(8);
    let (spec, hw, _) = specs()[2];
    let mut case = Case::new(&mut rng, spec, hw, 2);
    let mut ws = case.l.workspace_bf16(2);
    let mut out = vec![0.0; case.l.out_shape(2).len()];
    case.l.forward_bf16(&mut out, &case.x, &case.w, case.epi(false), 2, &mut ws).unwrap();
    case.w.iter_mut().for_each(|v| *v *= -1.0);
    let mut again = vec![0.0; out.len()];
    case.l.forward_bf16(&mut again, &case.x, &case.w, case.epi(false), 2, &mut ws).unwrap();
    let fresh = case.bf16(false);
    assert!(again.iter().zip(&fresh).all(|(a, b)| a.to_bits() == b.to_bits()), "the workspace's weights followed");
    assert!(again != out);
    assert!(case.l.forward_bf16(&mut out, &case.x, &case.w, case.epi(false), 1, &mut ws).is_err());
    assert!(case.l.forward_bf16(&mut out[1..], &case.x, &case.w, case.epi(false), 2, &mut ws).is_err());
    assert!(case.l.forward_bf16(&mut out, &case.x, &case.w[1..], case.epi(false), 2, &mut ws).is_err());
    let other = Conv2d::new(Conv2dSpec { cout: 8, ..spec }, hw, hw).unwrap();
    let mut ows = other.workspace_bf16(2);
    assert!(
        case.l.forward_bf16(&mut out, &case.x, &case.w, case.epi(false), 2, &mut ows).is_err(),
        "another layer's workspace"
    );
    let direct = Conv2d::new(Conv2dSpec { cin: 4, cout: 1, stride: 1, ..spec }, 8, 8).unwrap();
    assert!(!direct.supports_bf16() && !direct.runs_bf16_in_models());
    let mut dws = direct.workspace_bf16(1);
    let (x, w) = (vec![0.0; direct.in_shape(1).len()], vec![0.0; direct.weight_len()]);
    let mut o = vec![0.0; direct.out_shape(1).len()];
    assert!(direct.forward_bf16(&mut o, &x, &w, Epilogue::default(), 1, &mut dws).is_err());
}
