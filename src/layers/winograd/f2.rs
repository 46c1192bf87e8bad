//! Winograd F(2x2, 3x3) convolution: 3x3 kernel, stride 1, zero padding 1 on
//! every side (output size = input size), forward and backward-data.
//!
//! Shapes (NCHW, row-major):
//!   x [n, cin, h, w]   weight [cout, cin, 3, 3] (PyTorch layout)   bias [cout]
//!   out [n, cout, h, w]
//!
//! Math (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks").
//! The output is cut into `th x tw = ceil(h/2) x ceil(w/2)` tiles of 2x2; tile
//! (ty, tx) depends on the 4x4 input tile d at rows 2ty-1 .. 2ty+2 and columns
//! 2tx-1 .. 2tx+2 (zero outside the image), and
//!   Y = A^T [ sum_ci (G g_{co,ci} G^T) . (B^T d_ci B) ] A    (. = elementwise)
//! with
//!   B^T = | 1  0 -1  0 |    G = | 1    0    0   |    A^T = | 1  1  1  0 |
//!         | 0  1  1  0 |        | 1/2  1/2  1/2 |          | 0  1 -1 -1 |
//!         | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//!         | 0  1  0 -1 |        | 0    0    1   |
//! Per tile and channel pair that is 16 multiplies instead of 36 (2.25x fewer),
//! and B^T, A^T hold only 0 and +-1, so the transforms are additions. Indexing
//! the 4x4 transformed tiles by xi = 4i + j turns the channel sum into 16 GEMMs:
//!   V[xi][ci][t]  = (B^T d_{ci,t} B)[i][j]          input transform
//!   U[xi][co][ci] = (G g_{co,ci} G^T)[i][j]         weight transform (per call, in f64)
//!   M[xi][co][t]  = sum_ci U[xi][co][ci] V[xi][ci][t]
//!   out tile t    = A^T M_t A + bias, clipped to h x w
//! Tiles t run along the last axis, so every transform and GEMM is unit stride.
//!
//! backward_data: the adjoint of a stride-1, pad-1 3x3 convolution is again one,
//! with the kernel rotated by 180 degrees and the channels swapped:
//!   dx[ci] += sum_co conv3x3_pad1(dout[co], rot180(w[co][ci]))
//! so it runs the same pipeline on dout with U'[xi][ci][co] = G rot180(w[co][ci]) G^T
//! and an output transform that adds into dx.
//!
//! backward_weight: with M_t = sum_ci U[co,ci] . V[ci,t] and Y_t = A^T M_t A,
//!   dM_t = A dY_t A^T      dU[xi][co][ci] = sum_t dM[xi][co][t] V[xi][ci][t]
//!   dw[co][ci] = G^T dU[co][ci] G
//! 16 GEMMs of cout x cin x tiles: 4 multiplies per output pixel and channel
//! pair instead of im2col's 9, and no patch matrix.
//!
//!
//! The shared machinery (threads, lanes, workspace, driver) is in the parent module.

use super::{Tiling, WeightGrad, group_imgs, transform_weights, winograd_layer};
use crate::ops::im2col::{load_row, store_row};

/// Runs `$body` with `$g` bound to a copy of the geometry `$t` whose plane
/// size is a literal for the square planes the models use (8, 16 and 32),
/// else to `$t` itself. Inlined into each arm (the transforms it calls are
/// `#[inline(always)]`), the transforms' short loops get constant trip
/// counts that LLVM unrolls and vectorizes: an 8x8 plane's F(2x2) tile rows
/// are 4 tiles long, where a loop of unknown length spends more on its set-up
/// and bounds checks than on the arithmetic. Every arm runs the same
/// operations in the same order, so the bits are those of the generic arm.
/// F(2x2)'s input transform uses it; on the F(4x4) and stride-2 (`f4`, `s2`)
/// transforms (6- and 5-row tiles, 4-8 tiles a row in these models) the
/// unrolled code measured slower (f32 DnCNN 0.82-0.90x, HardNet 0.94-0.96x).
macro_rules! literal_plane {
    ($t:expr, |$g:ident| $body:expr) => {
        match ($t.h, $t.w) {
            (8, 8) => {
                let $g = &Self { h: 8, w: 8, ..*$t };
                $body
            }
            (16, 16) => {
                let $g = &Self { h: 16, w: 16, ..*$t };
                $body
            }
            (32, 32) => {
                let $g = &Self { h: 32, w: 32, ..*$t };
                $body
            }
            _ => {
                let $g = $t;
                $body
            }
        }
    };
}
winograd_layer! {
    /// Winograd F(2x2, 3x3) convolution.
    pub struct Winograd;
    /// Scratch of one Winograd layer for one batch size.
    pub struct WinogradWorkspace;
}

impl Tiling for Winograd {
    const M: usize = 2;
    const NAME: &'static str = "winograd";

    fn sizes(&self) -> [usize; 4] {
        [self.cin, self.cout, self.h, self.w]
    }

    /// [2][4][th][tw + 1] (input), [12][th][tw] (output).
    fn rows_len(&self) -> usize {
        let (th, tw) = self.tiles();
        12 * th * (tw + 1)
    }

    fn group_imgs(&self, n: usize) -> usize {
        let (th, tw) = self.tiles();
        group_imgs(th * tw, n)
    }

    fn transform_weights(&self, u: &mut [f32], weight: &[f32], rotated: bool) {
        // G x for a 3-vector x: [x0, (x0 + x1 + x2) / 2, (x0 - x1 + x2) / 2, x2].
        let gx = |x0: f64, x1: f64, x2: f64| [x0, 0.5 * (x0 + x1 + x2), 0.5 * (x0 - x1 + x2), x2];
        transform_weights(u, weight, self.cout, self.cin, rotated, gx);
    }

    /// v[xi][base + ty*tw + tx] = (B^T d B)[xi] for every tile of one plane.
    fn input_transform(&self, v: &mut [&mut [f32]], base: usize, x: &[f32], pad: &mut [f32], rows: &mut [f32]) {
        literal_plane!(self, |g| g.input_at(v, base, x, pad, rows))
    }

    /// A^T on the rows of every tile of the group, in place: for each column
    /// j, slot j <- m0j + m1j + m2j, slot 4 + j <- m1j - m2j - m3j; slots
    /// 8..16 are left as they are and not read again.
    fn output_rows(&self, m: &mut [f32], xi_stride: usize) {
        let mut slots = m.chunks_exact_mut(xi_stride);
        let mut next = || slots.next().expect("16 slots");
        let rows: [[&mut [f32]; 4]; 4] = std::array::from_fn(|_| std::array::from_fn(|_| next()));
        let [r0, r1, r2, r3] = rows;
        for (((m0, m1), m2), m3) in r0.into_iter().zip(r1).zip(r2).zip(r3) {
            let n = m0.len();
            let (m0, m1, m2, m3) = (&mut m0[..n], &mut m1[..n], &m2[..n], &m3[..n]);
            for k in 0..n {
                [m0[k], m1[k]] = at4([m0[k], m1[k], m2[k], m3[k]]);
            }
        }
    }

    /// One plane of the output from the rows `output_rows` left: tile (ty, tx) =
    /// a A with a[i][j] = m[(4i + j) * xi_stride + base + ty*tw + tx], written to
    /// `y` (overwrite) or added to it (accumulate), clipped to h x w.
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
        // A on the columns: [yt[2i], yt[2i + 1]] = at4(a[i][0..4]).
        for (i, pair) in yt.chunks_exact_mut(2 * p).enumerate() {
            let (y0, y1) = pair.split_at_mut(p);
            let (a0, a1, a2, a3) = (mr(4 * i), mr(4 * i + 1), mr(4 * i + 2), mr(4 * i + 3));
            for k in 0..p {
                [y0[k], y1[k]] = at4([a0[k], a1[k], a2[k], a3[k]]);
            }
        }
        let yr = |k: usize, ty: usize| &yt[k * p + ty * tw..k * p + (ty + 1) * tw];
        for ty in 0..th {
            store_row(&mut y[2 * ty * w..(2 * ty + 1) * w], yr(0, ty), yr(1, ty), accumulate);
            if 2 * ty + 1 < h {
                store_row(&mut y[(2 * ty + 1) * w..(2 * ty + 2) * w], yr(2, ty), yr(3, ty), accumulate);
            }
        }
    }
}

impl Winograd {
    /// `input_transform` on this geometry (see `literal_plane`).
    #[inline(always)]
    fn input_at(&self, v: &mut [&mut [f32]], base: usize, x: &[f32], pad: &mut [f32], rows: &mut [f32]) {
        let (th, tw) = self.tiles();
        let (w, hw) = (self.w, tw + 1);
        let (q, len) = ((th + 1) * hw, th * hw);
        // Padded pixel (r, c) = x pixel (r - 1, c - 1) lives in quarter (r % 2, c % 2) at [r / 2][c / 2].
        for (r, xr) in x.chunks_exact(w).enumerate() {
            let pr = r + 1;
            let quarters = &mut pad[pr % 2 * 2 * q..(pr % 2 + 1) * 2 * q];
            let (even, odd) = quarters.split_at_mut(q);
            let at = pr / 2 * hw;
            let (er, or) = (&mut even[at..at + hw], &mut odd[at..at + hw]);
            for ((pair, o), e) in xr.chunks_exact(2).zip(or.iter_mut()).zip(&mut er[1..]) {
                *o = pair[0];
                *e = pair[1];
            }
            if w % 2 == 1 {
                or[tw - 1] = xr[w - 1];
            }
        }
        // B^T d on the rows (2ty, 2ty+1, 2ty+2, 2ty+3) = (R0[ty], R1[ty], R0[ty+1], R1[ty+1]),
        // R_p the quarters of row parity p, for every tile row at once:
        // rows[c % 2][i][ty][c / 2] = [r0 - r2, r1 + r2, r2 - r1, r1 - r3][i].
        for cp in 0..2 {
            let (r0, r1) = (&pad[cp * q..(cp + 1) * q], &pad[(2 + cp) * q..(3 + cp) * q]);
            let (r0, r2, r1, r3) = (&r0[..len], &r0[hw..], &r1[..len], &r1[hw..]);
            let mut d = rows[cp * 4 * len..(cp + 1) * 4 * len].chunks_exact_mut(len);
            let mut next = || d.next().expect("4 rows");
            map2(next(), r0, r2, |a, b| a - b);
            map2(next(), r1, r2, |a, b| a + b);
            map2(next(), r2, r1, |a, b| a - b);
            map2(next(), r1, r3, |a, b| a - b);
        }
        // (.) B on the columns (2tx, 2tx+1, 2tx+2, 2tx+3) = (e[tx], o[tx], e[tx+1], o[tx+1]).
        for i in 0..4 {
            let (e, o) = (&rows[i * len..(i + 1) * len], &rows[(4 + i) * len..(5 + i) * len]);
            // This plane's tiles in GEMMs 4i .. 4i + 3.
            let mut blocks = v[4 * i..4 * i + 4].iter_mut().map(|b| &mut b[base..base + th * tw]);
            let mut next = || blocks.next().expect("4 blocks");
            let (v0, v1, v2, v3) = (next(), next(), next(), next());
            match tw {
                4 => columns::<4>(v0, v1, v2, v3, e, o, tw),
                8 => columns::<8>(v0, v1, v2, v3, e, o, tw),
                16 => columns::<16>(v0, v1, v2, v3, e, o, tw),
                _ => columns::<0>(v0, v1, v2, v3, e, o, tw),
            }
        }
    }
}

impl WeightGrad for Winograd {
    fn output_adjoint(&self, m: &mut [f32], base: usize, xi_stride: usize, y: &[f32], rows: &mut [f32]) {
        let (th, tw) = self.tiles();
        let (h, w, p) = (self.h, self.w, th * tw);
        // The 2x2 tiles [[a, b], [c, d]] of every tile at once, zero outside h x w.
        let (q, rest) = rows[..10 * p].split_at_mut(4 * p);
        let (tmp, neg) = rest.split_at_mut(4 * p);
        let (ab, cd) = q.split_at_mut(2 * p);
        let (a, b) = ab.split_at_mut(p);
        let (c, d) = cd.split_at_mut(p);
        for ty in 0..th {
            let t = ty * tw..(ty + 1) * tw;
            load_row(&mut a[t.clone()], &mut b[t.clone()], &y[2 * ty * w..(2 * ty + 1) * w]);
            if 2 * ty + 1 < h {
                load_row(&mut c[t.clone()], &mut d[t], &y[(2 * ty + 1) * w..(2 * ty + 2) * w]);
            } else {
                c[t.clone()].fill(0.0);
                d[t].fill(0.0);
            }
        }
        // A on the rows: (u_i, v_i) = [(a, b), (a + c, b + d), (a - c, b - d), (-c, -d)][i].
        let (s, r) = tmp.split_at_mut(2 * p);
        let (u1, v1) = s.split_at_mut(p);
        let (u2, v2) = r.split_at_mut(p);
        let (u3, v3) = neg.split_at_mut(p);
        map2(u1, a, c, |a, c| a + c);
        map2(v1, b, d, |b, d| b + d);
        map2(u2, a, c, |a, c| a - c);
        map2(v2, b, d, |b, d| b - d);
        map2(u3, c, c, |c, _| -c);
        map2(v3, d, d, |d, _| -d);
        // A^T on the columns: m[4i + j] = [u, u + v, u - v, -v][j].
        for (i, (u, v)) in [(&*a, &*b), (&*u1, &*v1), (&*u2, &*v2), (&*u3, &*v3)].into_iter().enumerate() {
            let at = |j: usize| (4 * i + j) * xi_stride + base;
            m[at(0)..at(0) + p].copy_from_slice(u);
            map2(&mut m[at(1)..at(1) + p], u, v, |u, v| u + v);
            map2(&mut m[at(2)..at(2) + p], u, v, |u, v| u - v);
            map2(&mut m[at(3)..at(3) + p], v, v, |v, _| -v);
        }
    }

    /// G^T x = [x0 + (x1 + x2) / 2, (x1 - x2) / 2, (x1 + x2) / 2 + x3].
    fn gtx(x: &[f64]) -> [f64; 3] {
        [x[0] + 0.5 * (x[1] + x[2]), 0.5 * (x[1] - x[2]), 0.5 * (x[1] + x[2]) + x[3]]
    }
}

impl Winograd {
    /// `dweight[cout, cin, 3, 3] +=` the gradient of `forward` for input `x[n, cin, h, w]`
    /// and output gradient `dout[n, cout, h, w]`; `dbias[cout] +=` the sum of `dout`.
    pub fn backward_weight(
        &self,
        dweight: &mut [f32],
        dbias: Option<&mut [f32]>,
        x: &[f32],
        dout: &[f32],
        n: usize,
        ws: &mut WinogradWorkspace,
    ) -> crate::error::Result<()> {
        ws.0.backward_weight(self, dweight, dbias, x, dout, n)
    }
}

/// The column stage of `input_transform` for one row i of the tiles:
/// v[j][ty * tw + tx] = (d B)[j] for d = (e[tx], o[tx], e[tx + 1], o[tx + 1])
/// of tile row ty (`e`, `o`: [th][tw + 1]); `TW`: tw as a constant, or 0.
/// A call of its own whose outputs are arguments, so that they are known not
/// to alias the rows: taken from the slots of the plane's transform, the
/// loops over rows of 4 and 8 tiles ran scalar.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn columns<const TW: usize>(
    v0: &mut [f32],
    v1: &mut [f32],
    v2: &mut [f32],
    v3: &mut [f32],
    e: &[f32],
    o: &[f32],
    tw: usize,
) {
    let tw = if TW > 0 { TW } else { tw };
    let hw = tw + 1;
    for (ty, (e, o)) in e.chunks_exact(hw).zip(o.chunks_exact(hw)).enumerate() {
        let at = ty * tw..(ty + 1) * tw;
        map2(&mut v0[at.clone()], e, &e[1..], |a, b| a - b);
        map2(&mut v1[at.clone()], o, &e[1..], |a, b| a + b);
        map2(&mut v2[at.clone()], &e[1..], o, |a, b| a - b);
        map2(&mut v3[at], o, &o[1..], |a, b| a - b);
    }
}

/// d[k] = f(a[k], b[k]) over the shortest of the three.
#[inline(always)]
pub(super) fn map2(d: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    d.iter_mut().zip(a.iter().zip(b)).for_each(|(d, (&a, &b))| *d = f(a, b));
}

/// A^T x for one 4-vector: [x0 + x1 + x2, x1 - x2 - x3]. Both stages of the
/// output transform run it, so they round alike.
#[inline(always)]
fn at4(x: [f32; 4]) -> [f32; 2] {
    [x[0] + x[1] + x[2], x[1] - x[2] - x[3]]
}
