//! Winograd F(4x4, 3x3) convolution: the same layer as `f2` (3x3 kernel,
//! stride 1, zero padding 1, forward with a fused epilogue and backward-data)
//! with 4x4 output tiles, so 36 GEMMs for 16 outputs (2.25 per output instead
//! of 4) and about half the transform traffic.
//!
//! Math (Lavin & Gray, interpolation points 0, +-1, +-2, inf). Output tile
//! (ty, tx) of `th x tw = ceil(h/4) x ceil(w/4)` depends on the 6x6 input tile d
//! at rows 4ty-1 .. 4ty+4 and columns 4tx-1 .. 4tx+4 (zero outside the image):
//!   Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A
//!   B^T = | 4  0 -5  0  1  0 |   G = | 1/4    0     0   |   A^T = | 1  1  1  1  1  0 |
//!         | 0 -4 -4  1  1  0 |       | -1/6 -1/6  -1/6  |         | 0  1 -1  2 -2  0 |
//!         | 0  4 -4 -1  1  0 |       | -1/6  1/6  -1/6  |         | 0  1  1  4  4  0 |
//!         | 0 -2 -1  2  1  0 |       | 1/24  1/12  1/6  |         | 0  1 -1  8 -8  1 |
//!         | 0  2 -1 -2  1  0 |       | 1/24 -1/12  1/6  |
//!         | 0  4  0 -5  0  1 |       | 0     0     1    |
//! with xi = 6i + j indexing the 36 GEMMs, V [36][c][T], U [36][cd][cs] (in f64),
//! M [36][cd][T], exactly as in `f2` (see there and the parent module for backward_data,
//! threading, lanes and the workspace, which are shared: this file holds the
//! `Tiling` of F(4x4, 3x3) only).
//!
//! The transforms run on whole rows of tiles with unit stride: a plane is
//! zero-padded and cut by row and column residue mod 4 into
//! [r % 4][c % 4][th + 1][tw + 1], so the six rows (columns) of every tile of a
//! tile row are six contiguous slices, and B^T, A^T are linear combinations of
//! slices.

use super::{Tiling, group_imgs_for, transform_weights, winograd_layer};

winograd_layer! {
    /// Winograd F(4x4, 3x3) convolution.
    pub struct Winograd4;
    /// Scratch of one F(4x4) Winograd layer for one batch size.
    pub struct Winograd4Workspace;
}

/// GEMM columns (4x4 tiles) a group of images aims for with `c` channels (the
/// larger side): V and M of a group, [36][c][T] each, stay near 1 MiB (Zen 4's L2)
/// with about 8192 / c columns (128 at 64 channels; measured better than 256 at
/// 64 and 128 channels), between 32 and 256.
pub(super) fn tile_cols(c: usize) -> usize {
    (8192 / c).clamp(32, 256)
}

impl Tiling for Winograd4 {
    const M: usize = 4;
    const NAME: &'static str = "winograd F(4x4)";

    fn sizes(&self) -> [usize; 4] {
        [self.cin, self.cout, self.h, self.w]
    }

    /// [4][6][th][tw + 1] (input), [4][p] (output).
    fn rows_len(&self) -> usize {
        let (th, tw) = self.tiles();
        24 * th * (tw + 1)
    }

    fn group_imgs(&self, n: usize) -> usize {
        let (th, tw) = self.tiles();
        group_imgs_for(tile_cols(self.cin.max(self.cout)), th * tw, n)
    }

    fn transform_weights(&self, u: &mut [f32], weight: &[f32], rotated: bool) {
        // G x for a 3-vector x (products with reciprocals: the f64 rounding is far below f32's).
        let gx = |x0: f64, x1: f64, x2: f64| {
            let (a, b) = (x0 + x2, x0 * (1.0 / 24.0) + x2 * (1.0 / 6.0));
            [
                x0 * 0.25,
                -(a + x1) * (1.0 / 6.0),
                -(a - x1) * (1.0 / 6.0),
                b + x1 * (1.0 / 12.0),
                b - x1 * (1.0 / 12.0),
                x2,
            ]
        };
        transform_weights(u, weight, self.cout, self.cin, rotated, gx);
    }

    fn input_transform(&self, v: &mut [&mut [f32]], base: usize, x: &[f32], pad: &mut [f32], rows: &mut [f32]) {
        let (th, tw) = self.tiles();
        let hw = tw + 1;
        let (q, len) = ((th + 1) * hw, th * hw);
        fill_pad4(pad, x, self.w, (th, tw), (1, 1));
        // B^T on the rows (4ty .. 4ty+5) = (R0, R1, R2, R3)[ty], (R0, R1)[ty + 1], R_k the rows
        // of residue k, for every tile row at once: rows[c % 4][i][ty][c / 4].
        for cp in 0..4 {
            let quarter = |k: usize, shift: usize| &pad[(4 * k + cp) * q + shift..(4 * k + cp) * q + shift + len];
            let src = [quarter(0, 0), quarter(1, 0), quarter(2, 0), quarter(3, 0), quarter(0, hw), quarter(1, hw)];
            let mut d = rows[cp * 6 * len..(cp + 1) * 6 * len].chunks_exact_mut(len);
            bt6(std::array::from_fn(|_| d.next().expect("6 rows")), src);
        }
        // (.) B on the columns (4tx .. 4tx+5) = (e0, e1, e2, e3)[tx], (e0, e1)[tx + 1].
        for i in 0..6 {
            let mut blocks = v.iter_mut().skip(6 * i).map(|b| &mut b[base..base + th * tw]);
            let mut out: [&mut [f32]; 6] = std::array::from_fn(|_| blocks.next().expect("6 blocks"));
            let e = |cp: usize, ty: usize| &rows[(cp * 6 + i) * len + ty * hw..(cp * 6 + i) * len + (ty + 1) * hw];
            for ty in 0..th {
                let (e0, e1) = (e(0, ty), e(1, ty));
                let [o0, o1, o2, o3, o4, o5] = &mut out;
                let at = ty * tw..(ty + 1) * tw;
                bt6(
                    [
                        &mut o0[at.clone()],
                        &mut o1[at.clone()],
                        &mut o2[at.clone()],
                        &mut o3[at.clone()],
                        &mut o4[at.clone()],
                        &mut o5[at],
                    ],
                    [e0, e1, e(2, ty), e(3, ty), &e0[1..], &e1[1..]],
                );
            }
        }
    }

    /// A^T on the rows of every tile of the group, in place: for each column
    /// j, slots 6i + j (i < 4) <- (A^T m[.][j])[i]; slots 24..36 are left
    /// as they are and not read again.
    fn output_rows(&self, m: &mut [f32], xi_stride: usize) {
        let mut cols: [[Option<&mut [f32]>; 6]; 6] = Default::default();
        for (xi, slot) in m.chunks_exact_mut(xi_stride).take(36).enumerate() {
            cols[xi % 6][xi / 6] = Some(slot);
        }
        for col in cols {
            at6_in_place(col.map(|s| s.expect("36 slots")));
        }
    }

    /// One plane of the output from the rows `output_rows` left:
    /// a[i][j] = m[(6i + j) * xi_stride + base + tile], clipped to h x w.
    fn output_transform(
        &self,
        y: &mut [f32],
        m: &[f32],
        base: usize,
        xi_stride: usize,
        accumulate: bool,
        rows: &mut [f32],
    ) {
        let (th, tw) = self.tiles();
        let (h, w, p) = (self.h, self.w, th * tw);
        let mr = |xi: usize| &m[xi * xi_stride + base..xi * xi_stride + base + p];
        let yt = &mut rows[..4 * p];
        // A on the columns, one row i of the 4x4 output tiles at a time: yt[jj] = (A^T a[i][.])[jj].
        for i in 0..4 {
            let mut d = yt.chunks_exact_mut(p);
            at6(std::array::from_fn(|_| d.next().expect("4 columns")), std::array::from_fn(|j| mr(6 * i + j)));
            let yr = |jj: usize, ty: usize| &yt[jj * p + ty * tw..jj * p + (ty + 1) * tw];
            for ty in (0..th).take_while(|ty| 4 * ty + i < h) {
                let r = 4 * ty + i;
                store_row4(&mut y[r * w..(r + 1) * w], [yr(0, ty), yr(1, ty), yr(2, ty), yr(3, ty)], accumulate);
            }
        }
    }
}

/// Cuts plane `x` (width `w`) padded by `top` and `left` zero rows and
/// columns (each 0 or 1) into pad[r % 4][c % 4][r / 4][c / 4] = padded
/// pixel (r, c) = x pixel (r - top, c - left), with `th + 1` rows and `tw + 1`
/// columns per quarter. Padded pixels outside the image are never written,
/// so stay zero.
pub(super) fn fill_pad4(pad: &mut [f32], x: &[f32], w: usize, (th, tw): (usize, usize), (top, left): (usize, usize)) {
    debug_assert!(top <= 1 && left <= 1);
    let hw = tw + 1;
    let q = (th + 1) * hw;
    for (r, xr) in x.chunks_exact(w).enumerate() {
        let pr = r + top;
        let at = pr / 4 * hw;
        let quarters = &mut pad[pr % 4 * 4 * q..(pr % 4 + 1) * 4 * q];
        let mut qs = quarters.chunks_exact_mut(q).map(|s| &mut s[at..at + hw]);
        let mut next = || qs.next().expect("4 column residues");
        let (c0, c1, c2, c3) = (next(), next(), next(), next());
        let quads = xr.chunks_exact(4);
        let rem = quads.remainder();
        let k = w / 4;
        if left == 1 {
            // x column 4k + i is padded column 4k + i + 1.
            for (k, quad) in quads.enumerate() {
                c1[k] = quad[0];
                c2[k] = quad[1];
                c3[k] = quad[2];
                c0[k + 1] = quad[3];
            }
            for (dst, &val) in [c1, c2, c3].into_iter().zip(rem) {
                dst[k] = val;
            }
        } else {
            for (k, quad) in quads.enumerate() {
                c0[k] = quad[0];
                c1[k] = quad[1];
                c2[k] = quad[2];
                c3[k] = quad[3];
            }
            for (dst, &val) in [c0, c1, c2].into_iter().zip(rem) {
                dst[k] = val;
            }
        }
    }
}

/// o[i][k] = (B^T [d0[k] .. d5[k]])[i] over the length of o[0].
#[inline(always)]
fn bt6(o: [&mut [f32]; 6], d: [&[f32]; 6]) {
    let n = o[0].len();
    let [o0, o1, o2, o3, o4, o5] = o;
    let (o0, o1, o2, o3, o4, o5) = (&mut o0[..n], &mut o1[..n], &mut o2[..n], &mut o3[..n], &mut o4[..n], &mut o5[..n]);
    let (d0, d1, d2, d3, d4, d5) = (&d[0][..n], &d[1][..n], &d[2][..n], &d[3][..n], &d[4][..n], &d[5][..n]);
    for k in 0..n {
        let (x0, x1, x2, x3, x4, x5) = (d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]);
        o0[k] = 4.0 * x0 - 5.0 * x2 + x4;
        o1[k] = (x3 + x4) - 4.0 * (x1 + x2);
        o2[k] = (x4 - x3) + 4.0 * (x1 - x2);
        o3[k] = (x4 - x2) + 2.0 * (x3 - x1);
        o4[k] = (x4 - x2) - 2.0 * (x3 - x1);
        o5[k] = 4.0 * x1 - 5.0 * x3 + x5;
    }
}

/// o[i][k] = (A^T [m0[k] .. m5[k]])[i] over the length of o[0].
#[inline(always)]
fn at6(o: [&mut [f32]; 4], m: [&[f32]; 6]) {
    let n = o[0].len();
    let [o0, o1, o2, o3] = o;
    let (o0, o1, o2, o3) = (&mut o0[..n], &mut o1[..n], &mut o2[..n], &mut o3[..n]);
    let (m0, m1, m2, m3, m4, m5) = (&m[0][..n], &m[1][..n], &m[2][..n], &m[3][..n], &m[4][..n], &m[5][..n]);
    for k in 0..n {
        [o0[k], o1[k], o2[k], o3[k]] = at6_one([m0[k], m1[k], m2[k], m3[k], m4[k], m5[k]]);
    }
}

/// `at6` in place: m[i][k] <- (A^T [m0[k] .. m5[k]])[i] for i < 4.
fn at6_in_place(m: [&mut [f32]; 6]) {
    let [m0, m1, m2, m3, m4, m5] = m;
    let n = m0.len();
    let (m0, m1, m2, m3, m4, m5) = (&mut m0[..n], &mut m1[..n], &mut m2[..n], &mut m3[..n], &m4[..n], &m5[..n]);
    for k in 0..n {
        [m0[k], m1[k], m2[k], m3[k]] = at6_one([m0[k], m1[k], m2[k], m3[k], m4[k], m5[k]]);
    }
}

/// A^T x for one 6-vector: both stages of the output transform run it, so
/// they round alike.
#[inline(always)]
fn at6_one(x: [f32; 6]) -> [f32; 4] {
    let (s12, d12) = (x[1] + x[2], x[1] - x[2]);
    let (s34, d34) = (x[3] + x[4], x[3] - x[4]);
    [x[0] + s12 + s34, d12 + 2.0 * d34, s12 + 4.0 * s34, d12 + 8.0 * d34 + x[5]]
}

/// dst[4k + i] (=|+=) s[i][k], for the `dst.len()` columns that exist.
fn store_row4(dst: &mut [f32], s: [&[f32]; 4], accumulate: bool) {
    let w = dst.len();
    let [s0, s1, s2, s3] = s;
    let quads = dst.chunks_exact_mut(4).zip(s0.iter().zip(s1).zip(s2.iter().zip(s3)));
    if accumulate {
        quads.for_each(|(d, ((a, b), (c, e)))| {
            d[0] += a;
            d[1] += b;
            d[2] += c;
            d[3] += e;
        });
    } else {
        quads.for_each(|(d, ((a, b), (c, e)))| {
            d[0] = *a;
            d[1] = *b;
            d[2] = *c;
            d[3] = *e;
        });
    }
    let k = w / 4;
    for (i, d) in dst[4 * k..].iter_mut().enumerate() {
        let val = s[i][k];
        if accumulate {
            *d += val;
        } else {
            *d = val;
        }
    }
}
