//! GEMM kernels against the naive reference, through the public API only:
//! awkward shapes (every m, n, k up to 17, ragged edges past every blocking
//! size), transposed and strided views, column-major C, beta = 0 over a C full
//! of NaN, accumulation with beta = 1 and 0.5, alpha != 1, and random cases.

use nhpatch::Error;
use nhpatch::gemm::{Kernel, MatMut, MatRef, available_kernels, best_kernel, gemm, gemm_dot_with, gemm_with};
use nhpatch::rng::Rng;
use proptest::prelude::*;

/// How a matrix is laid out in its buffer.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Row-major with `pad` unused values after each row.
    Rows { pad: usize },
    /// Column-major with `pad` unused values after each column (a `.t()` view).
    Cols { pad: usize },
    /// Neither stride is 1: columns 2 apart, rows `2 * cols + pad` apart.
    Spread { pad: usize },
}

const LAYOUTS: [Layout; 4] =
    [Layout::Rows { pad: 0 }, Layout::Cols { pad: 0 }, Layout::Rows { pad: 3 }, Layout::Spread { pad: 1 }];

/// Sentinel in buffer positions outside the view: must survive untouched.
const GAP: f32 = 1234.5;

/// (buffer length, row stride, column stride) of a `rows x cols` matrix.
fn geometry(l: Layout, rows: usize, cols: usize) -> (usize, usize, usize) {
    let (len, rs, cs) = match l {
        Layout::Rows { pad } => (rows * (cols + pad), cols + pad, 1),
        Layout::Cols { pad } => (cols * (rows + pad), 1, rows + pad),
        Layout::Spread { pad } => (rows * (2 * cols + pad), 2 * cols + pad, 2),
    };
    (len.max(1), rs, cs)
}

/// A buffer with random values in the view and `GAP` elsewhere.
fn filled(rng: &mut Rng, l: Layout, rows: usize, cols: usize, fill: impl Fn(&mut Rng) -> f32) -> Vec<f32> {
    let (len, rs, cs) = geometry(l, rows, cols);
    let mut v = vec![GAP; len];
    for i in 0..rows {
        for j in 0..cols {
            v[i * rs + j * cs] = fill(rng);
        }
    }
    v
}

fn view(data: &[f32], l: Layout, rows: usize, cols: usize) -> MatRef<'_> {
    let (_, rs, cs) = geometry(l, rows, cols);
    // Column-major matrices are built as the transpose of a row-major view,
    // the way callers express A^T and B^T.
    match l {
        Layout::Cols { .. } => MatRef::new(data, cols, rows, cs, 1).unwrap().t(),
        _ => MatRef::new(data, rows, cols, rs, cs).unwrap(),
    }
}

fn view_mut(data: &mut [f32], l: Layout, rows: usize, cols: usize) -> MatMut<'_> {
    let (_, rs, cs) = geometry(l, rows, cols);
    match l {
        Layout::Cols { .. } => MatMut::new(data, cols, rows, cs, 1).unwrap().t(),
        _ => MatMut::new(data, rows, cols, rs, cs).unwrap(),
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    la: Layout,
    lb: Layout,
    lc: Layout,
    alpha: f32,
    beta: f32,
}

/// Runs `kernel` and `Kernel::Naive` on the same inputs and compares them
/// within `1e-5 * (|alpha| sum_k |a_ik b_kj| + |beta c_ij|) + 1e-6`; checks
/// that no value outside C's view changed and that beta = 0 ignores the NaN
/// C is filled with.
fn check(kernel: Kernel, case: Case, seed: u64) {
    check_by(kernel.name(), case, seed, |alpha, a, b, beta, c| gemm_with(kernel, alpha, a, b, beta, c).unwrap());
}

/// `check` for any implementation `run` of the GEMM contract (`name` in messages).
fn check_by(name: &str, case: Case, seed: u64, run: impl Fn(f32, MatRef<'_>, MatRef<'_>, f32, MatMut<'_>)) {
    let Case { m, n, k, la, lb, lc, alpha, beta } = case;
    let mut rng = Rng::new(seed);
    let a = filled(&mut rng, la, m, k, |r| r.uniform(-1.0, 1.0));
    let b = filled(&mut rng, lb, k, n, |r| r.uniform(-1.0, 1.0));
    let c0 = if beta == 0.0 {
        filled(&mut rng, lc, m, n, |_| f32::NAN)
    } else {
        filled(&mut rng, lc, m, n, |r| r.uniform(-1.0, 1.0))
    };
    let (av, bv) = (view(&a, la, m, k), view(&b, lb, k, n));
    let mut got = c0.clone();
    run(alpha, av, bv, beta, view_mut(&mut got, lc, m, n));
    let mut want = c0.clone();
    gemm_with(Kernel::Naive, alpha, av, bv, beta, view_mut(&mut want, lc, m, n)).unwrap();

    let (_, rs, cs) = geometry(lc, m, n);
    let mut in_view = vec![false; got.len()];
    for i in 0..m {
        for j in 0..n {
            let at = i * rs + j * cs;
            in_view[at] = true;
            let abs: f32 = (0..k).map(|p| (av.at(i, p) * bv.at(p, j)).abs()).sum();
            let old = if beta == 0.0 { 0.0 } else { (beta * c0[at]).abs() };
            let tol = 1e-5 * (alpha.abs() * abs + old) + 1e-6;
            let (g, w) = (got[at], want[at]);
            assert!(g.is_finite() && (g - w).abs() <= tol, "{name} {case:?}: C[{i},{j}] = {g}, naive {w}, tol {tol}");
        }
    }
    for (at, (&g, &o)) in got.iter().zip(&c0).enumerate() {
        assert!(in_view[at] || g.to_bits() == o.to_bits(), "{name} {case:?}: wrote outside C at {at}");
    }
}

/// Every available kernel except the reference itself.
fn fast_kernels() -> Vec<Kernel> {
    available_kernels().into_iter().filter(|&k| k != Kernel::Naive).collect()
}

#[test]
fn naive_matches_f64_reference() {
    let (m, n, k) = (7, 9, 13);
    let mut rng = Rng::new(1);
    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let c0: Vec<f32> = (0..m * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut c = c0.clone();
    let av = MatRef::row_major(&a, m, k).unwrap();
    let bv = MatRef::row_major(&b, k, n).unwrap();
    gemm_with(Kernel::Naive, 0.5, av, bv, -2.0, MatMut::row_major(&mut c, m, n).unwrap()).unwrap();
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
            let want = 0.5 * dot - 2.0 * c0[i * n + j] as f64;
            assert!((c[i * n + j] as f64 - want).abs() < 1e-5, "C[{i},{j}]");
        }
    }
}

#[test]
fn every_shape_up_to_17_matches_naive() {
    // The full 18^3 cube, with the layouts and (alpha, beta) rotating so every
    // combination meets many ragged shapes without multiplying the run time.
    let scalars = [(1.0, 0.0), (1.5, 1.0), (-0.75, 0.5)];
    for kernel in fast_kernels() {
        let mut case_no = 0u64;
        for m in 0..=17 {
            for n in 0..=17 {
                for k in 0..=17 {
                    let r = (m + 3 * n + 7 * k) % 12;
                    let (alpha, beta) = scalars[r % 3];
                    let case = Case {
                        m,
                        n,
                        k,
                        la: LAYOUTS[r % 4],
                        lb: LAYOUTS[(r / 4 + r) % 4],
                        lc: LAYOUTS[(r / 3) % 4],
                        alpha,
                        beta,
                    };
                    check(kernel, case, case_no);
                    case_no += 1;
                }
            }
        }
    }
}

#[test]
fn large_ragged_shapes_match_naive() {
    // 266 rows pass MC, 1100 columns pass NC, depth 600 passes KC (so later
    // depth blocks accumulate onto the first), none a multiple of MR or NR.
    // Their last column panels (17, 25, 44, 2 and 34 columns at AVX-512's NR
    // of 48; 1, 9, 12, 2, 2 at 16) take every narrow edge tile (`tile_cols`).
    let shapes = [(17, 257, 33), (266, 265, 129), (20, 1100, 600), (3, 50, 1), (64, 130, 1)];
    for kernel in fast_kernels() {
        for (s, &(m, n, k)) in shapes.iter().enumerate() {
            for (v, (la, lb, lc)) in [
                (LAYOUTS[0], LAYOUTS[0], LAYOUTS[0]),
                (LAYOUTS[1], LAYOUTS[1], LAYOUTS[1]),
                (LAYOUTS[3], LAYOUTS[2], LAYOUTS[3]),
                (LAYOUTS[0], LAYOUTS[1], LAYOUTS[2]),
            ]
            .into_iter()
            .enumerate()
            {
                let (alpha, beta) = [(1.0, 0.0), (2.0, 1.0), (1.0, 0.5), (-0.5, 0.0)][v];
                check(kernel, Case { m, n, k, la, lb, lc, alpha, beta }, (s * 4 + v) as u64);
            }
        }
    }
}

#[test]
fn beta_zero_never_reads_nan_c() {
    for kernel in fast_kernels() {
        for lc in LAYOUTS {
            let case = Case { m: 19, n: 53, k: 11, la: LAYOUTS[0], lb: LAYOUTS[0], lc, alpha: 1.0, beta: 0.0 };
            check(kernel, case, 7);
        }
    }
}

#[test]
fn gemm_uses_best_kernel_and_it_is_available() {
    assert!(best_kernel().is_available());
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [5.0, 6.0, 7.0, 8.0];
    let mut c = [f32::NAN; 4];
    let (av, bv) = (MatRef::row_major(&a, 2, 2).unwrap(), MatRef::row_major(&b, 2, 2).unwrap());
    gemm(1.0, av, bv, 0.0, MatMut::row_major(&mut c, 2, 2).unwrap()).unwrap();
    assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
}

#[test]
fn availability_decides_ok_or_unsupported() {
    // On a CPU with AVX-512 every kernel is available and this checks the Ok
    // side; elsewhere the x86 kernels must refuse with Error::Unsupported.
    assert_eq!(available_kernels(), Kernel::ALL.iter().copied().filter(|k| k.is_available()).collect::<Vec<_>>());
    let a = [1.0f32; 6];
    let mut c = [0.0f32; 4];
    for &kernel in Kernel::ALL {
        let av = MatRef::row_major(&a, 2, 3).unwrap();
        let r = gemm_with(kernel, 1.0, av, av.t(), 0.0, MatMut::row_major(&mut c, 2, 2).unwrap());
        match r {
            Ok(()) => {
                assert!(kernel.is_available(), "{} ran but is not available", kernel.name());
                assert_eq!(c, [3.0; 4]);
            }
            Err(e) => {
                assert!(!kernel.is_available(), "{} refused: {e}", kernel.name());
                assert!(matches!(e, Error::Unsupported(_)), "{e}");
            }
        }
    }
}

#[test]
fn shape_mismatch_is_err() {
    let a = [0.0f32; 12];
    let b = [0.0f32; 20];
    let mut c = [0.0f32; 20];
    for &kernel in Kernel::ALL {
        let av = MatRef::row_major(&a, 3, 4).unwrap();
        let bv = MatRef::row_major(&b, 5, 4).unwrap(); // inner 4 vs 5
        let r = gemm_with(kernel, 1.0, av, bv, 0.0, MatMut::row_major(&mut c, 3, 4).unwrap());
        assert!(matches!(r, Err(Error::Shape(_))), "{}: inner dimensions", kernel.name());
        let bv = MatRef::row_major(&b, 4, 5).unwrap();
        let r = gemm_with(kernel, 1.0, av, bv, 0.0, MatMut::row_major(&mut c, 4, 5).unwrap());
        assert!(matches!(r, Err(Error::Shape(_))), "{}: rows of C", kernel.name());
    }
    assert!(MatRef::new(&a, 3, 4, 5, 1).is_err(), "a view past its slice must be refused");
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        (0usize..3).prop_map(|pad| Layout::Rows { pad }),
        (0usize..3).prop_map(|pad| Layout::Cols { pad }),
        (0usize..3).prop_map(|pad| Layout::Spread { pad }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes_and_strides_match_naive(
        m in 0usize..40, n in 0usize..70, k in 0usize..40,
        la in layout(), lb in layout(), lc in layout(),
        alpha in prop::sample::select(vec![1.0f32, -1.0, 0.3, 2.5]),
        beta in prop::sample::select(vec![0.0f32, 1.0, 0.5, -2.0]),
        seed in any::<u64>(),
    ) {
        for kernel in fast_kernels() {
            check(kernel, Case { m, n, k, la, lb, lc, alpha, beta }, seed);
        }
    }
}

/// Layers split the rows of C over threads (by thread count where the rows are
/// independent outputs: `Conv2d`'s dense forward, dW and dX); that keeps
/// results thread-count independent only if every kernel computes each element
/// of C by the same k-ordered sum whatever the number of rows (or columns) in
/// the call. Checked here bit for bit, for row splits at every granularity and
/// K past several blocking sizes, with beta = 0 and beta = 1.
#[test]
fn splitting_rows_or_columns_of_c_never_changes_a_bit() {
    let mut rng = Rng::new(41);
    for kernel in available_kernels() {
        for &(m, n, k) in &[(37, 29, 531), (128, 64, 8192), (50, 16, 3), (9, 131, 300)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            for beta in [0.0, 1.0] {
                let mut whole = if beta == 0.0 { vec![f32::NAN; m * n] } else { c0.clone() };
                let (am, bm) = (MatRef::row_major(&a, m, k).unwrap(), MatRef::row_major(&b, k, n).unwrap());
                gemm_with(kernel, 1.0, am, bm, beta, MatMut::row_major(&mut whole, m, n).unwrap()).unwrap();
                for rows in [1, 2, 3, 5, 8, 16, m.div_ceil(3)] {
                    let mut split = if beta == 0.0 { vec![f32::NAN; m * n] } else { c0.clone() };
                    for (i, cs) in split.chunks_mut(rows * n).enumerate() {
                        let r = cs.len() / n;
                        let ai = MatRef::row_major(&a[i * rows * k..(i * rows + r) * k], r, k).unwrap();
                        gemm_with(kernel, 1.0, ai, bm, beta, MatMut::row_major(cs, r, n).unwrap()).unwrap();
                    }
                    let same = whole.iter().zip(&split).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{kernel:?} {m}x{n}x{k} beta {beta}: rows split by {rows} differ");
                }
                for cols in [1, 7, 16, n.div_ceil(2)] {
                    let mut split = if beta == 0.0 { vec![f32::NAN; m * n] } else { c0.clone() };
                    for j0 in (0..n).step_by(cols) {
                        let w = cols.min(n - j0);
                        let bj = MatRef::new(&b[j0..], k, w, n, 1).unwrap();
                        let cj = MatMut::new(&mut split[j0..], m, w, n, 1).unwrap();
                        gemm_with(kernel, 1.0, am, bj, beta, cj).unwrap();
                    }
                    let same = whole.iter().zip(&split).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{kernel:?} {m}x{n}x{k} beta {beta}: columns split by {cols} differ");
                }
            }
        }
    }
}

/// `gemm_dot_with(kernel)` through `check` (alpha 1, beta 0: C full of NaN).
fn check_dot(kernel: Kernel, (m, n, k): (usize, usize, usize), (la, lb, lc): (Layout, Layout, Layout), seed: u64) {
    let case = Case { m, n, k, la, lb, lc, alpha: 1.0, beta: 0.0 };
    check_by(&format!("dot {}", kernel.name()), case, seed, |_, a, b, _, c| gemm_dot_with(kernel, a, b, c).unwrap());
}

/// Every micro-block edge (m, n up to 7 around the 3 x 3 blocks), depths
/// around the vector widths and the 512-value depth blocks, padded A and B,
/// every layout of C.
#[test]
fn gemm_dot_matches_naive_on_every_edge() {
    let mut seed = 0;
    for kernel in available_kernels() {
        for m in 1..=7 {
            for n in 1..=7 {
                for k in [1, 2, 7, 8, 9, 16, 17, 33, 511, 512, 513, 1100] {
                    for la in [Layout::Rows { pad: 0 }, Layout::Rows { pad: 3 }] {
                        for lb in [Layout::Cols { pad: 0 }, Layout::Cols { pad: 2 }] {
                            let lc = LAYOUTS[seed as usize % LAYOUTS.len()];
                            seed += 1;
                            check_dot(kernel, (m, n, k), (la, lb, lc), seed);
                        }
                    }
                }
            }
        }
        check_dot(
            kernel,
            (37, 128, 8192),
            (Layout::Rows { pad: 0 }, Layout::Cols { pad: 0 }, Layout::Rows { pad: 0 }),
            7,
        );
    }
}

/// The dense layer's inference splits the rows of C by the thread count and
/// pads batches: each element must be the same bits in any row or column
/// split, and a row computed alone the same as inside a larger product.
#[test]
fn gemm_dot_elements_never_depend_on_the_split() {
    let mut rng = Rng::new(43);
    for kernel in available_kernels() {
        for &(m, n, k) in &[(37, 29, 531), (16, 128, 8192), (5, 3, 9)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let wt = MatRef::row_major(&w, n, k).unwrap().t();
            let mut whole = vec![f32::NAN; m * n];
            gemm_dot_with(
                kernel,
                MatRef::row_major(&a, m, k).unwrap(),
                wt,
                MatMut::row_major(&mut whole, m, n).unwrap(),
            )
            .unwrap();
            for rows in [1, 2, 4, m.div_ceil(2)] {
                let mut split = vec![f32::NAN; m * n];
                for (i, cs) in split.chunks_mut(rows * n).enumerate() {
                    let r = cs.len() / n;
                    let ai = MatRef::row_major(&a[i * rows * k..(i * rows + r) * k], r, k).unwrap();
                    gemm_dot_with(kernel, ai, wt, MatMut::row_major(cs, r, n).unwrap()).unwrap();
                }
                assert!(
                    whole.iter().zip(&split).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{kernel:?} {m}x{n}x{k}: rows split by {rows} differ"
                );
            }
            for cols in [1, 2, 5] {
                let mut split = vec![f32::NAN; m * n];
                for j0 in (0..n).step_by(cols) {
                    let c = cols.min(n - j0);
                    let wj = MatRef::row_major(&w[j0 * k..(j0 + c) * k], c, k).unwrap().t();
                    let cj = MatMut::new(&mut split[j0..], m, c, n, 1).unwrap();
                    gemm_dot_with(kernel, MatRef::row_major(&a, m, k).unwrap(), wj, cj).unwrap();
                }
                assert!(
                    whole.iter().zip(&split).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{kernel:?} {m}x{n}x{k}: columns split by {cols} differ"
                );
            }
        }
    }
}

#[test]
fn gemm_dot_refuses_operands_not_contiguous_along_k() {
    let (a, b) = (vec![1.0f32; 12], vec![1.0f32; 12]);
    let mut c = vec![0.0f32; 9];
    for kernel in available_kernels() {
        // A column-major (column stride 3): refused.
        let at = MatRef::row_major(&a, 4, 3).unwrap().t();
        let bt = MatRef::row_major(&b, 3, 4).unwrap().t();
        let err = gemm_dot_with(kernel, at, bt, MatMut::row_major(&mut c, 3, 3).unwrap()).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{kernel:?}: {err}");
        // B row-major (row stride 3): refused.
        let a3 = MatRef::row_major(&a, 3, 4).unwrap();
        let b3 = MatRef::row_major(&b, 4, 3).unwrap();
        let err = gemm_dot_with(kernel, a3, b3, MatMut::row_major(&mut c, 3, 3).unwrap()).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{kernel:?}: {err}");
        // Disagreeing dimensions.
        let b34 = MatRef::row_major(&b, 3, 4).unwrap();
        let err = gemm_dot_with(kernel, a3, b34, MatMut::row_major(&mut c, 3, 3).unwrap()).unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{kernel:?}: {err}");
        // The accepted layout: row-major A times a transposed row-major B.
        gemm_dot_with(kernel, a3, bt, MatMut::row_major(&mut c, 3, 3).unwrap()).unwrap();
        assert_eq!(c, [4.0; 9], "{kernel:?}");
    }
}

/// A packed once by `pack_a` gives the same bits as `gemm_with` packing it on
/// every call, for every kernel, shapes past the row (MC) and depth (KC)
/// blocks of every kernel, strided A, B and C, beta 0 over NaN and beta 1;
/// and the naive reference within `check`'s tolerance through it.
#[test]
fn gemm_packed_a_is_gemm_with_bit_for_bit() {
    let mut rng = Rng::new(47);
    for kernel in available_kernels() {
        for &(m, n, k) in &[(1, 1, 1), (6, 16, 9), (7, 17, 385), (133, 33, 300), (300, 20, 1200), (32, 64, 32)] {
            for (la, lb, lc) in [
                (Layout::Rows { pad: 0 }, Layout::Rows { pad: 0 }, Layout::Rows { pad: 0 }),
                (Layout::Cols { pad: 1 }, Layout::Spread { pad: 1 }, Layout::Cols { pad: 2 }),
            ] {
                let a = filled(&mut rng, la, m, k, |r| r.uniform(-1.0, 1.0));
                let b = filled(&mut rng, lb, k, n, |r| r.uniform(-1.0, 1.0));
                let (av, bv) = (view(&a, la, m, k), view(&b, lb, k, n));
                let mut packed = vec![f32::NAN; nhpatch::gemm::packed_a_len(kernel, m, k)];
                nhpatch::gemm::pack_a(kernel, av, &mut packed).unwrap();
                for beta in [0.0, 1.0] {
                    let c0 = filled(&mut rng, lc, m, n, |r| if beta == 0.0 { f32::NAN } else { r.uniform(-1.0, 1.0) });
                    let mut want = c0.clone();
                    gemm_with(kernel, 0.5, av, bv, beta, view_mut(&mut want, lc, m, n)).unwrap();
                    let mut got = c0.clone();
                    nhpatch::gemm::gemm_packed_a(kernel, 0.5, &packed, (m, k), bv, beta, view_mut(&mut got, lc, m, n))
                        .unwrap();
                    let same = want.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{kernel:?} {m}x{n}x{k} {la:?} {lb:?} {lc:?} beta {beta}: packed A differs");
                }
            }
        }
        // Wrong lengths and dimensions are errors, not panics.
        let a = vec![1.0f32; 12];
        let am = MatRef::row_major(&a, 3, 4).unwrap();
        let len = nhpatch::gemm::packed_a_len(kernel, 3, 4);
        let mut short = vec![0.0; len - 1];
        assert!(matches!(nhpatch::gemm::pack_a(kernel, am, &mut short), Err(Error::Shape(_))));
        let mut packed = vec![0.0; len];
        nhpatch::gemm::pack_a(kernel, am, &mut packed).unwrap();
        let b = vec![1.0f32; 8];
        let mut c = vec![0.0f32; 6];
        let run = |p: &[f32], rows, cols, c: &mut [f32]| {
            nhpatch::gemm::gemm_packed_a(
                kernel,
                1.0,
                p,
                (rows, cols),
                MatRef::row_major(&b, 4, 2).unwrap(),
                0.0,
                MatMut::row_major(c, 3, 2).unwrap(),
            )
        };
        assert!(matches!(run(&packed[1..], 3, 4, &mut c), Err(Error::Shape(_))));
        run(&packed, 3, 4, &mut c).unwrap();
        assert_eq!(c, [4.0; 6], "{kernel:?}");
        let len2 = nhpatch::gemm::packed_a_len(kernel, 3, 2);
        assert!(
            matches!(run(&vec![0.0; len2], 3, 2, &mut c), Err(Error::Shape(_))),
            "{kernel:?}: k 2 against B's 4 rows"
        );
    }
}
