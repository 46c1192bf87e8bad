//! im2col / col2im: lowering a convolution to GEMM, and its adjoint.
//!
//! For one image `x[cin, h, w]` and a window geometry, `im2col` writes the
//! patch matrix `col[K, P]` with `K = cin*kh*kw` rows ordered `(ci, ki, kj)`
//! (the order of a PyTorch weight `[cout, cin, kh, kw]` flattened per output
//! channel) and `P = ho*wo` columns ordered `(oy, ox)`:
//!
//!   col[(ci*kh + ki)*kw + kj, oy*wo + ox] = x[ci, oy*s + ki - pad_top, ox*s + kj - pad_left]
//!
//! (zero outside the image). Then `out[cout, P] = W[cout, K] * col[K, P]`.
//! Several images of a tile share one `col` buffer side by side: image j of
//! the tile occupies columns `j*P .. (j+1)*P` of a buffer with row stride `ld`.
//! `col2im_add` is the exact adjoint: it scatters-and-adds `dcol` back into `dx`.

use crate::error::{Error, Result};
use crate::ops::elementwise::{copy_short, zero_short};

/// Zero padding on each side of the input, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Padding {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Padding {
    /// No padding ('valid').
    pub const fn valid() -> Self {
        Padding { top: 0, left: 0, bottom: 0, right: 0 }
    }

    /// The same padding `p` on all four sides (PyTorch's `padding=p`).
    pub const fn symmetric(p: usize) -> Self {
        Padding { top: p, left: p, bottom: p, right: p }
    }

    /// TensorFlow/Keras 'same': per axis, total = max((ceil(in/s) - 1)*s + k - in, 0),
    /// with the smaller half before (top/left). A 2x2 kernel at stride 1 pads
    /// only bottom/right; a 3x3 kernel at stride 2 on an even size pads (0, 1).
    pub fn same(h: usize, w: usize, kh: usize, kw: usize, stride: usize) -> Result<Self> {
        if stride == 0 || kh == 0 || kw == 0 || h == 0 || w == 0 {
            return Err(Error::InvalidArgument(format!(
                "'same' padding needs positive sizes, got input {h}x{w}, kernel {kh}x{kw}, stride {stride}"
            )));
        }
        let axis = |n: usize, k: usize| {
            let total = ((n.div_ceil(stride) - 1) * stride + k).saturating_sub(n);
            (total / 2, total - total / 2)
        };
        let (top, bottom) = axis(h, kh);
        let (left, right) = axis(w, kw);
        Ok(Padding { top, left, bottom, right })
    }
}

/// The geometry of a convolution window over one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: Padding,
    pub ho: usize,
    pub wo: usize,
}

impl Window {
    /// Validates the geometry and computes the output size
    /// `ho = (h + top + bottom - kh) / stride + 1` (and likewise `wo`).
    pub fn new(cin: usize, h: usize, w: usize, kh: usize, kw: usize, stride: usize, pad: Padding) -> Result<Self> {
        if cin == 0 || h == 0 || w == 0 || kh == 0 || kw == 0 || stride == 0 {
            return Err(Error::InvalidArgument(format!(
                "convolution needs positive sizes, got cin {cin}, input {h}x{w}, kernel {kh}x{kw}, stride {stride}"
            )));
        }
        let (ph, pw) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
        if ph < kh || pw < kw {
            return Err(Error::Shape(format!("a {kh}x{kw} kernel does not fit a {h}x{w} input padded to {ph}x{pw}")));
        }
        if pad.top >= kh || pad.bottom >= kh || pad.left >= kw || pad.right >= kw {
            // A window made only of padding would compute a constant: almost surely a mistake.
            return Err(Error::InvalidArgument(format!("padding {pad:?} is as large as the {kh}x{kw} kernel")));
        }
        let ho = (ph - kh) / stride + 1;
        let wo = (pw - kw) / stride + 1;
        Ok(Window { cin, h, w, kh, kw, stride, pad, ho, wo })
    }

    /// Rows of the patch matrix: cin*kh*kw.
    pub const fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// Columns of the patch matrix per image: ho*wo.
    pub const fn p(&self) -> usize {
        self.ho * self.wo
    }
    /// Elements of one input image.
    pub const fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// For kernel column `kj`, the output columns `lo..hi` whose input column
    /// `ox*s + kj - pad_left` lies inside the image (all others read padding).
    #[inline]
    pub(crate) fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let s = self.stride;
        // ox*s + kj >= left  <=>  ox >= ceil((left - kj) / s)
        let lo = self.pad.left.saturating_sub(kj).div_ceil(s).min(self.wo);
        // ox*s + kj - left <= w - 1  <=>  ox <= (w - 1 + left - kj) / s
        let hi = match (self.w - 1 + self.pad.left).checked_sub(kj) {
            Some(v) => (v / s + 1).min(self.wo),
            None => 0,
        };
        (lo, hi.max(lo))
    }

    /// Input row for output row `oy` and kernel row `ki`, if inside the image.
    #[inline]
    pub(crate) fn in_row(&self, oy: usize, ki: usize) -> Option<usize> {
        (oy * self.stride + ki).checked_sub(self.pad.top).filter(|&iy| iy < self.h)
    }
}

fn check_tile(g: &Window, col_len: usize, ld: usize, col0: usize, x_len: usize) -> Result<()> {
    if x_len != g.in_len() {
        return Err(Error::Shape(format!("im2col: image has {x_len} elements, geometry needs {}", g.in_len())));
    }
    if col0 + g.p() > ld || g.k() * ld > col_len {
        return Err(Error::Shape(format!(
            "im2col: columns {col0}..{} of a {}x{ld} buffer do not fit in {col_len} elements",
            col0 + g.p(),
            g.k()
        )));
    }
    Ok(())
}

/// Widest input row the stride-2 path splits on the stack.
const SPLIT_MAX_W: usize = 256;

/// Writes image `x[cin, h, w]` into columns `col0 .. col0 + P` of the patch
/// matrix `col[K, ld]` (row-major, row stride `ld`).
pub fn im2col(col: &mut [f32], ld: usize, col0: usize, x: &[f32], g: &Window) -> Result<()> {
    check_tile(g, col.len(), ld, col0, x.len())?;
    if g.stride == 2 && g.w <= SPLIT_MAX_W {
        im2col_stride2(col, ld, col0, x, g);
    } else {
        im2col_strided(col, ld, col0, x, g);
    }
    Ok(())
}

/// `im2col` at any stride, one strided gather per kernel column.
fn im2col_strided(col: &mut [f32], ld: usize, col0: usize, x: &[f32], g: &Window) {
    let (s, wo) = (g.stride, g.wo);
    for ci in 0..g.cin {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let k = (ci * g.kh + ki) * g.kw + kj;
                let row = &mut col[k * ld + col0..k * ld + col0 + g.p()];
                let (lo, hi) = g.valid_cols(kj);
                for (oy, dst) in row.chunks_exact_mut(wo).enumerate() {
                    let Some(iy) = g.in_row(oy, ki) else {
                        zero_short(dst);
                        continue;
                    };
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    zero_short(&mut dst[..lo]);
                    zero_short(&mut dst[hi..]);
                    if lo == hi {
                        // The kernel column never meets the image (padding wider than the image).
                        continue;
                    }
                    let x0 = lo * s + kj - g.pad.left;
                    if s == 1 {
                        copy_short(&mut dst[lo..hi], &src[x0..x0 + (hi - lo)]);
                    } else {
                        for (d, v) in dst[lo..hi].iter_mut().zip(src[x0..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// `im2col` for stride 2: each input row is split once into its even and
/// odd columns, after which every kernel column `kj` reads a contiguous run
/// of one half (`x[2 ox + kj - left]` is half `(kj - left) % 2`, index
/// `ox + (kj - left) / 2`), instead of one strided gather per `kj`.
fn im2col_stride2(col: &mut [f32], ld: usize, col0: usize, x: &[f32], g: &Window) {
    let (wo, half) = (g.wo, g.w.div_ceil(2));
    let mut split = [0.0f32; SPLIT_MAX_W];
    for ci in 0..g.cin {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let k0 = (ci * g.kh + ki) * g.kw;
            for oy in 0..g.ho {
                let at = |kj: usize| (k0 + kj) * ld + col0 + oy * wo;
                let Some(iy) = g.in_row(oy, ki) else {
                    (0..g.kw).for_each(|kj| zero_short(&mut col[at(kj)..at(kj) + wo]));
                    continue;
                };
                let (even, odd) = split[..2 * half].split_at_mut(half);
                load_row(even, odd, &plane[iy * g.w..(iy + 1) * g.w]);
                for kj in 0..g.kw {
                    let dst = &mut col[at(kj)..at(kj) + wo];
                    let (lo, hi) = g.valid_cols(kj);
                    zero_short(&mut dst[..lo]);
                    zero_short(&mut dst[hi..]);
                    if lo < hi {
                        let x0 = 2 * lo + kj - g.pad.left;
                        let from = (x0 % 2) * half + x0 / 2;
                        copy_short(&mut dst[lo..hi], &split[from..from + (hi - lo)]);
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: `dx[cin, h, w] += col2im(dcol[K, ld] columns col0 .. col0 + P)`.
pub fn col2im_add(dx: &mut [f32], dcol: &[f32], ld: usize, col0: usize, g: &Window) -> Result<()> {
    check_tile(g, dcol.len(), ld, col0, dx.len())?;
    if g.stride == 2 && g.w <= SPLIT_MAX_W {
        col2im_add_stride2(dx, dcol, ld, col0, g);
    } else {
        col2im_add_strided(dx, dcol, ld, col0, g);
    }
    Ok(())
}

/// `col2im_add` at any stride, one strided scatter per kernel column.
fn col2im_add_strided(dx: &mut [f32], dcol: &[f32], ld: usize, col0: usize, g: &Window) {
    let (s, wo) = (g.stride, g.wo);
    for ci in 0..g.cin {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let k = (ci * g.kh + ki) * g.kw + kj;
                let row = &dcol[k * ld + col0..k * ld + col0 + g.p()];
                let (lo, hi) = g.valid_cols(kj);
                if lo == hi {
                    continue;
                }
                for (oy, src) in row.chunks_exact(wo).enumerate() {
                    let Some(iy) = g.in_row(oy, ki) else { continue };
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let x0 = lo * s + kj - g.pad.left;
                    if s == 1 {
                        for (d, v) in dst[x0..x0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for (ox, v) in src[lo..hi].iter().enumerate() {
                            dst[x0 + ox * s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// even[k] = src[2k], odd[k] = src[2k + 1], zero past the end of `src`.
pub(crate) fn load_row(even: &mut [f32], odd: &mut [f32], src: &[f32]) {
    let w = src.len();
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(src.chunks_exact(2)) {
        *e = pair[0];
        *o = pair[1];
    }
    if w % 2 == 1 {
        even[w / 2] = src[w - 1];
        odd[w / 2] = 0.0;
    }
}

/// dst[2k] (=|+=) even[k], dst[2k + 1] (=|+=) odd[k], for the `dst.len()` columns that exist.
pub(crate) fn store_row(dst: &mut [f32], even: &[f32], odd: &[f32], accumulate: bool) {
    let w = dst.len();
    let pairs = dst.chunks_exact_mut(2).zip(even.iter().zip(odd));
    if accumulate {
        pairs.for_each(|(d, (e, o))| {
            d[0] += e;
            d[1] += o;
        });
        if w % 2 == 1 {
            dst[w - 1] += even[w / 2];
        }
    } else {
        pairs.for_each(|(d, (e, o))| {
            d[0] = *e;
            d[1] = *o;
        });
        if w % 2 == 1 {
            dst[w - 1] = even[w / 2];
        }
    }
}

/// `col2im_add` for stride 2, the adjoint of `im2col_stride2`: each input
/// row touched is split once into its even and odd columns, every kernel
/// column adds a contiguous run into one half, and the halves are merged
/// back (instead of one strided scalar scatter per kernel column). Every
/// element still receives its adds in the strided loop's order (kernel row,
/// then kernel column; one output row per input row and kernel row at
/// stride 2), so the bits are the same.
fn col2im_add_stride2(dx: &mut [f32], dcol: &[f32], ld: usize, col0: usize, g: &Window) {
    let (wo, half) = (g.wo, g.w.div_ceil(2));
    let mut split = [0.0f32; SPLIT_MAX_W];
    for ci in 0..g.cin {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let k0 = (ci * g.kh + ki) * g.kw;
            for oy in 0..g.ho {
                let Some(iy) = g.in_row(oy, ki) else { continue };
                let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                let (even, odd) = split[..2 * half].split_at_mut(half);
                load_row(even, odd, dst);
                for kj in 0..g.kw {
                    let (lo, hi) = g.valid_cols(kj);
                    if lo < hi {
                        let src = &dcol[(k0 + kj) * ld + col0 + oy * wo..][lo..hi];
                        let x0 = 2 * lo + kj - g.pad.left;
                        let from = (x0 % 2) * half + x0 / 2;
                        split[from..from + (hi - lo)].iter_mut().zip(src).for_each(|(d, v)| *d += v);
                    }
                }
                let (even, odd) = split[..2 * half].split_at(half);
                store_row(dst, even, odd, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // (input, kernel, stride) -> (before, after), as tf.nn.conv2d computes it.
        let cases = [
            (32, 3, 1, (1, 1)),
            (32, 2, 1, (0, 1)),
            (32, 3, 2, (0, 1)),
            (16, 3, 2, (0, 1)),
            (31, 3, 2, (1, 1)),
            (8, 8, 1, (3, 4)),
            (5, 1, 1, (0, 0)),
            (7, 2, 2, (0, 1)),
        ];
        for (n, k, s, (a, b)) in cases {
            let p = Padding::same(n, n, k, k, s).unwrap();
            assert_eq!((p.top, p.bottom, p.left, p.right), (a, b, a, b), "n {n} k {k} s {s}");
            let win = Window::new(1, n, n, k, k, s, p).unwrap();
            assert_eq!(win.ho, n.div_ceil(s), "'same' keeps ceil(n/s)");
        }
    }

    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), c> == <x, col2im(c)> for every geometry: the defining property of the backward.
        let mut rng = crate::rng::Rng::new(5);
        for &(h, w, k, s, p) in &[(5, 4, 3, 1, 1), (6, 7, 3, 2, 1), (4, 4, 2, 1, 0), (5, 5, 2, 2, 1), (3, 3, 3, 1, 0)] {
            let pad = Padding { top: p, left: p, bottom: p.min(k - 1), right: 0 };
            let g = Window::new(2, h, w, k, k, s, pad).unwrap();
            let x: Vec<f32> = (0..g.in_len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let c: Vec<f32> = (0..g.k() * g.p()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let mut col = vec![f32::NAN; g.k() * g.p()];
            im2col(&mut col, g.p(), 0, &x, &g).unwrap();
            let mut dx = vec![0.0; g.in_len()];
            col2im_add(&mut dx, &c, g.p(), 0, &g).unwrap();
            let lhs: f64 = col.iter().zip(&c).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs} for {g:?}");
        }
    }

    #[test]
    fn stride_two_paths_match_the_strided_loops_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(9);
        let shapes = [(7, 9, 3, 1, 1), (8, 8, 3, 0, 1), (6, 7, 2, 1, 0), (5, 5, 5, 2, 2), (4, 6, 3, 2, 0), (16, 16, 3, 0, 1)];
        for &(h, w, k, left, right) in &shapes {
            let pad = Padding { top: left, left, bottom: right, right };
            let g = Window::new(3, h, w, k, k, 2, pad).unwrap();
            let (ld, col0) = (g.p() + 5, 3);
            let x: Vec<f32> = (0..g.in_len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let c: Vec<f32> = (0..g.k() * ld).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let (mut fast, mut slow) = (vec![f32::NAN; g.k() * ld], vec![f32::NAN; g.k() * ld]);
            im2col(&mut fast, ld, col0, &x, &g).unwrap();
            im2col_strided(&mut slow, ld, col0, &x, &g);
            assert_eq!(bits(&fast), bits(&slow), "im2col {g:?}");
            // Accumulating into a non-zero dx shows the order of the adds.
            let (mut fast, mut slow) = (x.clone(), x.clone());
            col2im_add(&mut fast, &c, ld, col0, &g).unwrap();
            col2im_add_strided(&mut slow, &c, ld, col0, &g);
            assert_eq!(bits(&fast), bits(&slow), "col2im {g:?}");
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn bad_geometry_is_an_error() {
        assert!(Window::new(1, 2, 2, 3, 3, 1, Padding::valid()).is_err());
        assert!(Window::new(1, 4, 4, 3, 3, 0, Padding::valid()).is_err());
        assert!(Window::new(1, 4, 4, 2, 2, 1, Padding::symmetric(2)).is_err());
        let g = Window::new(1, 4, 4, 3, 3, 1, Padding::valid()).unwrap();
        let mut col = vec![0.0; 4];
        assert!(im2col(&mut col, 4, 0, &[0.0; 16], &g).is_err());
    }
}
