//! The int8 convolution (`Conv2d::forward_q8`) against the f32 one: within
//! the quantization error bound on every geometry the models use (3x3 'same'
//! stride 1 and 2, Keras 'same' 2x2, the dense 8x8, tiles of several images,
//! signed and non-negative inputs), with bias, folded BatchNorm and ReLU;
//! the same bits for any thread count and batch split; refusals are errors.
//! The gather of c4 codes into packed panels (`gather_packed_c4`) writes the
//! bytes of its slow twin, `pack_b_codes` of `im2col_u8`'s rows in the c4
//! order, and the weights are reordered to match. Reading those codes in
//! place (`gemm_q8_taps`; at stride s from codes split into s column
//! phases) gives the bits of the gather and the packed GEMM, with every
//! int8 kernel. Layers in a row handing each other codes
//! (`forward_q8_io`: in NCHW order, or laid out as the reader's GEMM reads
//! them) give the bits of values quantized by the reader.

use nhpatch::gemm::MatMut;
use nhpatch::gemm::MatRef;
use nhpatch::gemm::q8::{
    PANEL, Q8Act, Q8Kernel, Q8Out, Q8Taps, Q8Weights, gemm_q8_taps_with, gemm_q8_with, pack_b_codes, packed_b_len,
};
use nhpatch::layers::conv2d::{Conv2d, Conv2dSpec, ConvPass, Epilogue};
use nhpatch::layers::conv2d_q8::{Q8LayerIn, Q8LayerOut};
use nhpatch::ops::im2col::Padding;
use nhpatch::ops::im2col::Window;
use nhpatch::ops::im2col_q8::{
    c4_depth, c4_layout, c4_scratch_len, c4_taps, gather_packed_c4, im2col_u8, padded_c4_len, phased_c4_len,
    quantize_padded_c4, quantize_phased_c4, reorder_weights_c4,
};
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
    act: Q8Act,
    n: usize,
}

impl Case {
    fn new(rng: &mut Rng, spec: Conv2dSpec, hw: usize, n: usize, signed: bool) -> Case {
        let l = Conv2d::new(spec, hw, hw).unwrap();
        let lo = if signed { -2.0 } else { 0.0 };
        let x = rand(rng, l.in_shape(n).len(), lo, 3.0);
        let w = rand(rng, l.weight_len(), -0.3, 0.3);
        let scale = rand(rng, spec.cout, 0.5, 1.5);
        let shift = rand(rng, spec.cout, -0.5, 0.5);
        Case { l, x, w, scale, shift, act: Q8Act::from_range(lo, 3.0).unwrap(), n }
    }

    fn epi(&self, relu: bool) -> Epilogue<'_> {
        Epilogue { scale: Some(&self.scale), shift: Some(&self.shift), relu }
    }

    fn q8(&self, relu: bool) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.l.out_shape(self.n).len()];
        let mut ws = self.l.workspace_q8(self.n);
        self.l.forward_q8(&mut out, &self.x, &self.w, self.act, self.epi(relu), self.n, &mut ws).unwrap();
        out
    }

    fn f32(&self, relu: bool) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.l.out_shape(self.n).len()];
        let mut ws = self.l.workspace_for(self.n, ConvPass::Infer);
        self.l.forward_fused(&mut out, &self.x, &self.w, self.epi(relu), self.n, &mut ws).unwrap();
        out
    }

    /// Per output channel, the bound on |int8 - f32| before the epilogue:
    /// sum over the window of (sa/2) |x| + (|w| + sa/2) sb/2, at most
    /// K * ((sa/2) max|x| + (max|w| + sa/2) sb/2), times the channel's scale.
    fn bound(&self, c: usize) -> f32 {
        let k = self.l.win.k();
        let wrow = &self.w[c * k..(c + 1) * k];
        let wmax = wrow.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let sa = wmax / 63.0;
        let xmax = self.x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let sb = self.act.scale;
        self.scale[c] * k as f32 * (sa / 2.0 * xmax + (wmax + sa / 2.0) * sb / 2.0)
    }
}

fn specs() -> Vec<(Conv2dSpec, usize, &'static str)> {
    let c = |cin, cout, k, stride, pad| Conv2dSpec { cin, cout, kh: k, kw: k, stride, pad, bias: false };
    vec![
        (c(1, 32, 3, 1, Padding::symmetric(1)), 32, "hardnet conv1"),
        (c(32, 32, 3, 1, Padding::symmetric(1)), 16, "3x3 stride 1 (Winograd in f32)"),
        (c(32, 64, 3, 2, Padding::symmetric(1)), 16, "3x3 stride 2"),
        (c(16, 16, 2, 1, Padding::same(8, 8, 2, 2, 1).unwrap()), 8, "Keras 'same' 2x2"),
        (c(24, 20, 3, 1, Padding::symmetric(1)), 5, "odd sizes, tiles of several images"),
        (c(128, 128, 8, 1, Padding::valid()), 8, "dense 8x8"),
    ]
}

#[test]
fn int8_is_within_the_quantization_bound_of_f32() {
    let mut rng = Rng::new(21);
    for (spec, hw, what) in specs() {
        for (n, signed) in [(3, true), (20, false)] {
            let case = Case::new(&mut rng, spec, hw, n, signed);
            for relu in [false, true] {
                let (q, f) = (case.q8(relu), case.f32(relu));
                let plane = case.l.win.p();
                let bounds: Vec<f32> = (0..spec.cout).map(|c| case.bound(c)).collect();
                let mut worst = 0.0f32;
                for (i, (a, b)) in q.iter().zip(&f).enumerate() {
                    let c = (i / plane) % spec.cout;
                    let err = (a - b).abs();
                    assert!(err <= bounds[c] * 1.01 + 1e-4, "{what} n={n}: element {i} {a} vs {b}");
                    worst = worst.max(err / bounds[c]);
                }
                // A real test of closeness, not only of the bound: typical errors sit far below it.
                let mean = q.iter().zip(&f).map(|(a, b)| (a - b).abs()).sum::<f32>() / q.len() as f32;
                let spread = f.iter().map(|v| v.abs()).sum::<f32>() / f.len() as f32;
                assert!(mean < 0.02 * spread, "{what} n={n}: mean error {mean} against mean |out| {spread}");
                assert!(worst <= 1.01);
            }
        }
    }
}

#[test]
fn int8_has_the_same_bits_for_any_thread_count_and_batch() {
    let mut rng = Rng::new(4);
    for (spec, hw, what) in specs() {
        let case = Case::new(&mut rng, spec, hw, 37, true);
        let want = case.q8(true);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let got = pool.install(|| case.q8(true));
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: {threads} threads");
        }
        // The first 5 images alone: the same outputs as inside the batch of 37.
        let per_in = case.l.in_shape(1).len();
        let few = Case { x: case.x[..5 * per_in].to_vec(), n: 5, ..case };
        let got = few.q8(true);
        let per_out = few.l.out_shape(1).len();
        assert!(got.iter().zip(&want[..5 * per_out]).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: batch of 5");
    }
}

#[test]
fn codes_in_and_out_give_the_bits_of_values_in_and_out() {
    let mut rng = Rng::new(31);
    let next = Q8Act::from_range(-0.25, 2.5).unwrap();
    for (spec, hw, what) in specs() {
        for n in [1, 3, 37] {
            let case = Case::new(&mut rng, spec, hw, n, true);
            let want = case.q8(true);
            let want_codes: Vec<u8> = want.iter().map(|&v| next.quantize(v)).collect();
            let mut xq = vec![0u8; case.x.len()];
            case.act.quantize_slice(&case.x, &mut xq);
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut ws = case.l.workspace_q8(n);
                let epi = case.epi(true);
                let (l, w, act) = (&case.l, &case.w, case.act);
                // Values in, codes out.
                let mut codes = vec![0xA5u8; want.len()];
                pool.install(|| {
                    l.forward_q8_io(
                        Q8LayerOut::Codes(&mut codes, next),
                        Q8LayerIn::Values(&case.x),
                        w,
                        act,
                        epi,
                        n,
                        &mut ws,
                    )
                })
                .unwrap();
                assert_eq!(codes, want_codes, "{what} n={n} {threads} threads: codes out");
                // Codes in, values out.
                let mut out = vec![f32::NAN; want.len()];
                pool.install(|| {
                    l.forward_q8_io(Q8LayerOut::Values(&mut out), Q8LayerIn::Codes(&xq), w, act, epi, n, &mut ws)
                })
                .unwrap();
                let same = out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{what} n={n} {threads} threads: codes in");
                // Codes in and out.
                let mut codes = vec![0x5Au8; want.len()];
                pool.install(|| {
                    l.forward_q8_io(Q8LayerOut::Codes(&mut codes, next), Q8LayerIn::Codes(&xq), w, act, epi, n, &mut ws)
                })
                .unwrap();
                assert_eq!(codes, want_codes, "{what} n={n} {threads} threads: codes in and out");
            }
        }
    }
}

/// The codes `quantize_phased_c4` makes of a batch (`x`: `n` images of
/// `[g.cin, g.h, g.w]`), image after image: what a laid-out input holds.
fn laid(x: &[f32], n: usize, act: Q8Act, g: &Window, phases: usize) -> Vec<u8> {
    let len = phased_c4_len(g, phases);
    let mut out = vec![0u8; n * len];
    let mut planes = vec![0u8; c4_scratch_len(g)];
    for (xi, o) in x.chunks_exact(g.in_len()).zip(out.chunks_exact_mut(len)) {
        quantize_phased_c4(xi, act, g, phases, o, &mut planes).unwrap();
    }
    out
}

#[test]
fn laid_out_codes_are_the_readers_own_quantization_in_and_out() {
    let mut rng = Rng::new(37);
    let next = Q8Act::from_range(-0.25, 2.5).unwrap();
    for (spec, hw, what) in specs() {
        for n in [1, 3, 37] {
            let case = Case::new(&mut rng, spec, hw, n, true);
            let want = case.q8(true);
            let (l, w, act, epi) = (&case.l, &case.w, case.act, case.epi(true));
            // Out: laid out for a reader of this output at stride 1 and 2 (1 and 2 phases).
            for (stride, phases) in [(1, 1), (2, 2)] {
                let reader = Conv2dSpec {
                    cin: spec.cout,
                    cout: 8,
                    kh: 3,
                    kw: 3,
                    stride,
                    pad: Padding::symmetric(1),
                    bias: false,
                };
                let rg = Conv2d::new(reader, l.win.ho, l.win.wo).unwrap().win;
                let layout = c4_layout(&rg, phases);
                let expect = laid(&want, n, next, &rg, phases);
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut ws = l.workspace_q8(n);
                    let mut codes = vec![next.zero; expect.len()];
                    let dst = Q8LayerOut::Laid(&mut codes, next, layout);
                    pool.install(|| l.forward_q8_io(dst, Q8LayerIn::Values(&case.x), w, act, epi, n, &mut ws)).unwrap();
                    assert!(codes == expect, "{what} n={n} {threads} threads: laid out for stride {stride}");
                }
            }
            // In: the layer's own layout, read in place (not the dense layer, which has none).
            let mut ws = l.workspace_q8(n);
            let Some(layout) = ws.input_layout() else {
                let r = l.forward_q8_io(
                    Q8LayerOut::Values(&mut vec![0.0; want.len()]),
                    Q8LayerIn::Laid(&[]),
                    w,
                    act,
                    epi,
                    n,
                    &mut ws,
                );
                assert!(r.is_err(), "{what}: a laid-out input to the dense layer is refused");
                continue;
            };
            let xs = laid(&case.x, n, act, &l.win, layout.phases);
            assert_eq!(xs.len(), n * layout.image_len());
            let mut out = vec![f32::NAN; want.len()];
            l.forward_q8_io(Q8LayerOut::Values(&mut out), Q8LayerIn::Laid(&xs), w, act, epi, n, &mut ws).unwrap();
            assert!(out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{what} n={n}: laid-out input");
            // A buffer of the wrong length is an error, not a panic.
            let r = l.forward_q8_io(Q8LayerOut::Values(&mut out), Q8LayerIn::Laid(&xs[1..]), w, act, epi, n, &mut ws);
            assert!(r.is_err(), "{what}: short laid-out input");
        }
    }
}

#[test]
fn changed_weights_are_quantized_again_and_bad_calls_are_errors() {
    let mut rng = Rng::new(8);
    let (spec, hw, _) = specs()[2];
    let mut case = Case::new(&mut rng, spec, hw, 2, false);
    let mut ws = case.l.workspace_q8(2);
    let mut out = vec![0.0; case.l.out_shape(2).len()];
    case.l.forward_q8(&mut out, &case.x, &case.w, case.act, case.epi(false), 2, &mut ws).unwrap();
    case.w.iter_mut().for_each(|v| *v *= -1.0);
    let mut again = vec![0.0; out.len()];
    case.l.forward_q8(&mut again, &case.x, &case.w, case.act, case.epi(false), 2, &mut ws).unwrap();
    let fresh = case.q8(false);
    assert!(again.iter().zip(&fresh).all(|(a, b)| a.to_bits() == b.to_bits()), "the workspace's weights followed");
    assert!(again != out);
    // Wrong batch for the workspace, wrong lengths, a direct layer, NaN weights.
    assert!(case.l.forward_q8(&mut out, &case.x, &case.w, case.act, case.epi(false), 1, &mut ws).is_err());
    assert!(case.l.forward_q8(&mut out[1..], &case.x, &case.w, case.act, case.epi(false), 2, &mut ws).is_err());
    assert!(case.l.forward_q8(&mut out, &case.x, &case.w[1..], case.act, case.epi(false), 2, &mut ws).is_err());
    case.w[3] = f32::NAN;
    assert!(case.l.forward_q8(&mut out, &case.x, &case.w, case.act, case.epi(false), 2, &mut ws).is_err());
    let direct = Conv2d::new(Conv2dSpec { cin: 4, cout: 1, stride: 1, ..spec }, 8, 8).unwrap();
    assert!(!direct.supports_q8());
    let mut dws = direct.workspace_q8(1);
    let (x, w) = (vec![0.0; direct.in_shape(1).len()], vec![0.0; direct.weight_len()]);
    let mut o = vec![0.0; direct.out_shape(1).len()];
    assert!(direct.forward_q8(&mut o, &x, &w, case.act, Epilogue::default(), 1, &mut dws).is_err());
}

#[test]
fn the_c4_gather_writes_the_bytes_of_im2col_in_c4_order_then_pack() {
    let mut rng = Rng::new(77);
    let mut geoms: Vec<(Window, &str)> = specs()
        .into_iter()
        .map(|(s, hw, name)| (Window::new(s.cin, hw, hw, s.kh, s.kw, s.stride, s.pad).unwrap(), name))
        .collect();
    let extra = [
        (
            Window::new(3, 32, 32, 3, 3, 2, Padding::same(32, 32, 3, 3, 2).unwrap()).unwrap(),
            "Keras 'same' stride 2 (0, 1)",
        ),
        (Window::new(5, 7, 9, 3, 3, 1, Padding::symmetric(1)).unwrap(), "7x9, 5 channels (a padded quad)"),
        (Window::new(2, 6, 5, 2, 3, 3, Padding { top: 1, left: 0, bottom: 0, right: 2 }).unwrap(), "uneven"),
        (Window::new(6, 37, 35, 3, 3, 1, Padding::symmetric(1)).unwrap(), "rows of 35: two panels and a tail"),
    ];
    geoms.extend(extra);
    for (g, name) in geoms {
        // The c4 order is tap-major: depth d is channel 4 (d / 4 % quads) + d % 4 at tap d / 4 / quads.
        let (k, kc, p, taps, quads) = (g.k(), c4_depth(&g), g.p(), g.kh * g.kw, g.cin.div_ceil(4));
        for imgs in [1, 3] {
            let cols = imgs * p;
            let act = Q8Act { scale: 0.05, zero: 17 };
            let x: Vec<f32> = (0..imgs * g.in_len()).map(|_| rng.uniform(-2.0, 9.0)).collect();
            // Slow twin: codes, the patch matrix with zero-point padding, its
            // rows put in the c4 order (padded channels: the zero code), then the pack.
            let mut col = vec![0u8; k * cols];
            let mut codes = vec![0u8; g.in_len()];
            for (j, xi) in x.chunks_exact(g.in_len()).enumerate() {
                act.quantize_slice(xi, &mut codes);
                im2col_u8(&mut col, cols, j * p, &codes, &g, act.zero).unwrap();
            }
            let mut col4 = vec![act.zero; kc * cols];
            for (d, row) in col4.chunks_exact_mut(cols).enumerate() {
                let c = 4 * (d / 4 % quads) + d % 4;
                if c < g.cin {
                    let r = c * taps + d / 4 / quads;
                    row.copy_from_slice(&col[r * cols..(r + 1) * cols]);
                }
            }
            let mut want = vec![0u8; packed_b_len(kc, cols)];
            pack_b_codes(&col4, cols, kc, cols, &mut want).unwrap();
            // Fast path, over buffers of junk: every live byte must be written.
            let mut padded = vec![0xA5u8; padded_c4_len(&g)];
            let mut rows = vec![0x5Au8; c4_scratch_len(&g)];
            let mut got = vec![0xC3u8; want.len()];
            for (j, xi) in x.chunks_exact(g.in_len()).enumerate() {
                quantize_padded_c4(xi, act, &g, &mut padded, &mut rows).unwrap();
                gather_packed_c4(&mut got, cols, j * p, &padded, &g).unwrap();
            }
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                // Columns past `cols` in the last panel are never stored by a kernel.
                let column = (i / (kc * PANEL)) * PANEL + (i % (4 * PANEL)) / 4;
                if column < cols {
                    assert_eq!(a, b, "{name}, {imgs} images: byte {i} (column {column})");
                }
            }
        }
        // The weights in the same order: row co's c4 depth d is weight (c, tap), 0 on padded channels.
        let cout = 3;
        let w: Vec<f32> = (0..cout * k).map(|i| i as f32 + 1.0).collect();
        let mut wc = vec![f32::NAN; cout * kc];
        reorder_weights_c4(&w, cout, &g, &mut wc).unwrap();
        for (i, v) in wc.iter().enumerate() {
            let (co, d) = (i / kc, i % kc);
            let c = 4 * (d / 4 % quads) + d % 4;
            let want = if c < g.cin { w[co * k + c * taps + d / 4 / quads] } else { 0.0 };
            assert_eq!(v.to_bits(), want.to_bits(), "{name}: weight {i}");
        }
    }
    // Wrong sizes are errors, not panics.
    let g = Window::new(2, 4, 4, 3, 3, 1, Padding::symmetric(1)).unwrap();
    let mut packed = vec![0u8; packed_b_len(c4_depth(&g), g.p())];
    assert!(gather_packed_c4(&mut packed, g.p(), 0, &[0; 5], &g).is_err());
    assert!(gather_packed_c4(&mut packed, g.p(), 1, &vec![0; padded_c4_len(&g)], &g).is_err());
    let act = Q8Act { scale: 1.0, zero: 0 };
    assert!(quantize_padded_c4(&[0.0; 3], act, &g, &mut vec![0; padded_c4_len(&g)], &mut [0; 64]).is_err());
    assert!(quantize_padded_c4(&[0.0; 32], act, &g, &mut vec![0; padded_c4_len(&g)], &mut [0; 63]).is_err());
    assert!(reorder_weights_c4(&[0.0; 5], 1, &g, &mut [0.0; 36]).is_err());
}

#[test]
fn reading_the_codes_in_place_gives_the_bits_of_the_gather_and_the_packed_gemm() {
    let mut rng = Rng::new(91);
    let geoms = [
        (Window::new(32, 32, 32, 3, 3, 1, Padding::symmetric(1)).unwrap(), "32x32: two joined panels a row"),
        (Window::new(5, 16, 16, 3, 3, 1, Padding::symmetric(1)).unwrap(), "16x16, 5 channels (a padded quad)"),
        (Window::new(12, 8, 8, 3, 3, 1, Padding::symmetric(1)).unwrap(), "8x8: halves on two rows"),
        (
            Window::new(4, 3, 8, 3, 3, 1, Padding::symmetric(1)).unwrap(),
            "3x8: a panel across images, a half past the end",
        ),
        (Window::new(16, 8, 8, 2, 2, 1, Padding::same(8, 8, 2, 2, 1).unwrap()).unwrap(), "Keras 'same' 2x2"),
        (Window::new(1, 32, 32, 3, 3, 1, Padding::symmetric(1)).unwrap(), "one channel"),
        (Window::new(32, 32, 32, 3, 3, 2, Padding::symmetric(1)).unwrap(), "stride 2, 32 -> 16"),
        (
            Window::new(6, 16, 16, 3, 3, 2, Padding::same(16, 16, 3, 3, 2).unwrap()).unwrap(),
            "Keras 'same' stride 2 (0, 1)",
        ),
        (Window::new(4, 17, 16, 3, 3, 2, Padding::symmetric(1)).unwrap(), "stride 2, odd height"),
        (Window::new(3, 24, 48, 3, 3, 3, Padding::symmetric(1)).unwrap(), "stride 3, three phases"),
        (Window::new(5, 15, 15, 3, 3, 2, Padding::symmetric(1)).unwrap(), "stride 2, rows of 15 (no whole 16)"),
    ];
    let kernels: Vec<Q8Kernel> = Q8Kernel::ALL.iter().copied().filter(|k| k.is_available()).collect();
    for (g, name) in geoms {
        let (kc, p, clen) = (c4_depth(&g), g.p(), phased_c4_len(&g, g.stride));
        for imgs in [1, 3, 4] {
            let cols = imgs * p;
            let act = Q8Act { scale: 0.04, zero: 9 };
            let x: Vec<f32> = (0..imgs * g.in_len()).map(|_| rng.uniform(-0.5, 9.0)).collect();
            let cout = 13;
            let w: Vec<f32> = (0..cout * kc).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let wq = Q8Weights::quantize(MatRef::row_major(&w, cout, kc).unwrap()).unwrap();
            let scale: Vec<f32> = (0..cout).map(|_| rng.uniform(0.5, 1.5)).collect();
            let out = Q8Out { scale: &scale, shift: None, relu: false };
            let t = c4_taps(&g, imgs).expect("rows of 8k");
            assert_eq!((t.phases, t.image_len), (g.stride, clen), "{name}");
            // Codes in one phase, gathered and packed (the slow twin), and in
            // the stride's phases, over junk, for the in-place reading.
            let mut codes = vec![0xEEu8; imgs * clen];
            let mut one = vec![0u8; padded_c4_len(&g)];
            let mut packed = vec![0u8; packed_b_len(kc, cols)];
            let mut rows = vec![0u8; c4_scratch_len(&g)];
            for (j, (xi, c)) in x.chunks_exact(g.in_len()).zip(codes.chunks_exact_mut(clen)).enumerate() {
                quantize_padded_c4(xi, act, &g, &mut one, &mut rows).unwrap();
                gather_packed_c4(&mut packed, cols, j * p, &one, &g).unwrap();
                quantize_phased_c4(xi, act, &g, g.stride, c, &mut rows).unwrap();
            }
            let taps = Q8Taps { codes: &codes, halves: &t.halves, steps: &t.steps };
            let mut want = vec![f32::NAN; cout * cols];
            gemm_q8_with(
                Q8Kernel::Naive,
                &wq,
                &packed,
                cols,
                act.zero,
                out,
                MatMut::row_major(&mut want, cout, cols).unwrap(),
            )
            .unwrap();
            for &kernel in &kernels {
                for in_place in [false, true] {
                    let mut got = vec![f32::NAN; cout * cols];
                    let c = MatMut::row_major(&mut got, cout, cols).unwrap();
                    if in_place {
                        gemm_q8_taps_with(kernel, &wq, taps, cols, act.zero, out, c).unwrap();
                    } else {
                        gemm_q8_with(kernel, &wq, &packed, cols, act.zero, out, c).unwrap();
                    }
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{name}, {imgs} images, {}, in place {in_place}", kernel.name());
                }
            }
        }
    }
    // No in-place reading where a half is not one run: output rows of 6, 12 or 35.
    for g in [
        Window::new(8, 12, 12, 3, 3, 2, Padding::symmetric(1)).unwrap(),
        Window::new(8, 12, 12, 3, 3, 1, Padding::symmetric(1)).unwrap(),
        Window::new(8, 35, 35, 3, 3, 1, Padding::symmetric(1)).unwrap(),
    ] {
        assert!(c4_taps(&g, 2).is_none());
    }
    // Offsets that do not match the shapes, or reach past the codes, are errors.
    let g = Window::new(4, 8, 8, 3, 3, 1, Padding::symmetric(1)).unwrap();
    let (halves, steps) = c4_taps(&g, 1).map(|t| (t.halves, t.steps)).unwrap();
    let codes = vec![0u8; padded_c4_len(&g)];
    let wq = Q8Weights::quantize(MatRef::row_major(&[0.5; 2 * 36], 2, 36).unwrap()).unwrap();
    let scale = [1.0; 2];
    let out = Q8Out { scale: &scale, shift: None, relu: false };
    let mut c = vec![0.0; 2 * 64];
    let kernel = Q8Kernel::Portable;
    let mut call = |codes: &[u8], halves: &[u32], steps: &[u32]| {
        let taps = Q8Taps { codes, halves, steps };
        gemm_q8_taps_with(kernel, &wq, taps, 64, 0, out, MatMut::row_major(&mut c, 2, 64).unwrap())
    };
    assert!(call(&codes, &halves, &steps).is_ok());
    assert!(call(&codes, &halves[1..], &steps).is_err());
    assert!(call(&codes, &halves, &steps[1..]).is_err());
    assert!(call(&codes[..codes.len() - 1], &halves, &steps).is_err());
    let mut far = halves.clone();
    far[3] = codes.len() as u32;
    assert!(call(&codes, &far, &steps).is_err());
    let mut rows = vec![0u8; c4_scratch_len(&g)];
    let x = vec![0.0; g.in_len()];
    let act = Q8Act { scale: 1.0, zero: 0 };
    assert!(quantize_phased_c4(&x, act, &g, 0, &mut [], &mut rows).is_err());
    assert!(quantize_phased_c4(&x, act, &g, 2, &mut vec![0; phased_c4_len(&g, 2) - 4], &mut rows).is_err());
}
