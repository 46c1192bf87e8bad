//! Winograd convolution at stride 2: 3x3 kernel, stride 2, zero padding of 0
//! or 1 on each side (PyTorch's `padding=1`, Keras 'same' = (0, 1) on even
//! sizes), forward only (inference and the training forward; the layers'
//! gradients run im2col).
//!
//! Shapes (NCHW, row-major):
//!   x [n, cin, h, w]   weight [cout, cin, 3, 3] (PyTorch layout)   bias [cout]
//!   out [n, cout, ho, wo], ho = (h + top + bottom - 3) / 2 + 1 (and wo likewise)
//!
//! Math. Along one axis, outputs 2t and 2t+1 read the five inputs
//! d0..d4 = x[4t - top .. 4t - top + 4] (zero outside the image):
//!   y0 = w0 d0 + w1 d1 + w2 d2      y1 = w0 d2 + w1 d3 + w2 d4.
//! Split by input parity, the odd inputs d0, d2, d4 meet the taps (w0, w2) as a
//! two-tap correlation with two outputs, F(2, 2) in 3 multiplies, and the even
//! inputs d1, d3 meet w1 alone, 2 multiplies: 5 per 2 outputs instead of 6,
//! with transforms made of additions only:
//!   B^T = |  1  0 -1  0  0 |   G = | 1  0  0 |   A^T = | 1  1  0  1  0 |
//!         |  0  0  1  0  0 |       | 1  0  1 |         | 0  1  1  0  1 |
//!         |  0  0 -1  0  1 |       | 0  0  1 |
//!         |  0  1  0  0  0 |       | 0  1  0 |
//!         |  0  0  0  1  0 |       | 0  1  0 |
//! (check: A^T [(G g) . (B^T d)] = [(d0 - d2) w0 + d2 (w0 + w2) + d1 w1,
//!  d2 (w0 + w2) + (d4 - d2) w2 + d3 w1]). In 2-D, tile (ty, tx) of
//! `th x tw = ceil(ho/2) x ceil(wo/2)` 2x2 output tiles reads the 5x5 input
//! window at rows 4ty-top .. 4ty-top+4 (columns likewise), and
//!   Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A
//! is 25 GEMMs (xi = 5i + j) per tile instead of im2col's 36 multiplies per
//! output and channel pair over four outputs: 1.44x fewer, no patch matrix.
//! The transformed tiles live in the parent module's [XI][c][T] layout and
//! run through its driver, like `f2` and `f4`.
//!
//! The input is cut by residue mod 4 as in `f4` (`fill_pad4`): the tile grid
//! of a stride-2 layer on an h x w input is F(4x4)'s on the same input.

use super::f2::map2;
use super::f4::fill_pad4;
use super::{Tiling, Workspace, check_sizes, group_imgs_for, transform_weights};
use crate::error::{Error, Result};
use crate::ops::im2col::Padding;

/// GEMM columns (2x2 tiles) a group of images aims for with `c` channels (the
/// larger side): about 2048 / c, between 16 and 256 (one image of HardNet's
/// 32x32 -> 16x16 layer, three of its 16x16 -> 8x8 one), a quarter of
/// F(4x4)'s target (`f4::tile_cols`): with 25 GEMMs per tile, that target's
/// V and M outgrow a core's L2, and these smaller groups timed a little faster.
fn tile_cols(c: usize) -> usize {
    (2048 / c).clamp(16, 256)
}

/// Winograd convolution, 3x3 kernel, stride 2, forward only.
///
/// Geometry: cin -> cout channels, h x w input, zero padding `pad` (0 or 1 on
/// each side), (h + top + bottom - 3) / 2 + 1 output rows (columns likewise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinogradS2 {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub pad: Padding,
}

/// Scratch of one stride-2 Winograd layer for one batch size.
pub struct WinogradS2Workspace(Workspace<WinogradS2>);

super::winograd_forward_api!(WinogradS2, WinogradS2Workspace);

impl WinogradS2 {
    /// Errors on any zero size, padding above 1 on a side, or a padded
    /// input smaller than the kernel.
    pub fn new(cin: usize, cout: usize, h: usize, w: usize, pad: Padding) -> Result<Self> {
        check_sizes::<Self>(cin, cout, h, w)?;
        let Padding { top, left, bottom, right } = pad;
        if top.max(left).max(bottom).max(right) > 1 {
            return Err(Error::InvalidArgument(format!(
                "winograd stride-2 convolution pads at most 1 per side, got {pad:?}"
            )));
        }
        if h + top + bottom < 3 || w + left + right < 3 {
            return Err(Error::Shape(format!("a 3x3 kernel does not fit a {h}x{w} input padded by {pad:?}")));
        }
        Ok(WinogradS2 { cin, cout, h, w, pad })
    }

    /// Output rows and columns.
    pub fn out_size(&self) -> (usize, usize) {
        self.out_sizes()
    }
}

impl Tiling for WinogradS2 {
    const M: usize = 2;
    const XI: usize = 25;
    const NAME: &'static str = "winograd stride-2";

    fn sizes(&self) -> [usize; 4] {
        [self.cin, self.cout, self.h, self.w]
    }

    fn out_sizes(&self) -> (usize, usize) {
        let p = self.pad;
        ((self.h + p.top + p.bottom - 3) / 2 + 1, (self.w + p.left + p.right - 3) / 2 + 1)
    }

    /// The input cut mod 4: [4][4][th + 1][tw + 1].
    fn pad_len(&self) -> usize {
        let (th, tw) = self.tiles();
        16 * (th + 1) * (tw + 1)
    }

    /// [4][2][th][tw + 1] (input; the output transform needs none).
    fn rows_len(&self) -> usize {
        let (th, tw) = self.tiles();
        8 * th * (tw + 1)
    }

    fn group_imgs(&self, n: usize) -> usize {
        let (th, tw) = self.tiles();
        group_imgs_for(tile_cols(self.cin.max(self.cout)), th * tw, n)
    }

    /// `rotated` has no meaning at stride 2 (no backward pass runs here); the
    /// forward orientation is what this layer uses.
    fn transform_weights(&self, u: &mut [f32], weight: &[f32], rotated: bool) {
        // G x for a 3-vector x: [x0, x0 + x2, x2, x1, x1].
        let gx = |x0: f64, x1: f64, x2: f64| [x0, x0 + x2, x2, x1, x1];
        transform_weights(u, weight, self.cout, self.cin, rotated, gx);
    }

    fn input_transform(&self, v: &mut [&mut [f32]], base: usize, x: &[f32], pad: &mut [f32], rows: &mut [f32]) {
        let (th, tw) = self.tiles();
        let hw = tw + 1;
        let (q, len) = ((th + 1) * hw, th * hw);
        fill_pad4(pad, x, self.w, (th, tw), (self.pad.top, self.pad.left));
        // Quarter (row residue k, column residue cp) from tile row `shift / hw` on, all tile rows.
        let quarter =
            |k: usize, cp: usize, shift: usize| &pad[(4 * k + cp) * q + shift..(4 * k + cp) * q + shift + len];
        // B^T on the rows (4ty .. 4ty+4) = (R0, R1, R2, R3)[ty], R0[ty + 1]:
        // [R0 - R2, R2, R0' - R2, R1, R3]; rows 0 and 2 computed here, rows[c % 4][0|1][ty][c / 4],
        // the others read from `pad` in place.
        for cp in 0..4 {
            let (r0, r2) = rows[cp * 2 * len..(cp + 1) * 2 * len].split_at_mut(len);
            map2(r0, quarter(0, cp, 0), quarter(2, cp, 0), |a, b| a - b);
            map2(r2, quarter(0, cp, hw), quarter(2, cp, 0), |a, b| a - b);
        }
        let rows = &*rows;
        // (.) B on the columns (4tx .. 4tx+4) = (e0, e1, e2, e3)[tx], e0[tx + 1].
        for i in 0..5 {
            let e = |cp: usize| match i {
                0 => &rows[cp * 2 * len..(cp * 2 + 1) * len],
                1 => quarter(2, cp, 0),
                2 => &rows[(cp * 2 + 1) * len..(cp * 2 + 2) * len],
                3 => quarter(1, cp, 0),
                _ => quarter(3, cp, 0),
            };
            let mut blocks = v.iter_mut().skip(5 * i).map(|b| &mut b[base..base + th * tw]);
            let out: [&mut [f32]; 5] = std::array::from_fn(|_| blocks.next().expect("5 blocks"));
            let src = [e(0), e(1), e(2), e(3)];
            // The usual row widths as constants: whole rows in registers, no loop or call per row.
            match tw {
                4 => columns_of::<4>(out, src, th),
                8 => columns_of::<8>(out, src, th),
                _ => columns(out, src, th, tw),
            }
        }
    }

    /// A^T on the rows of every tile of the group, in place:
    /// slot j <- m0j + m1j + m3j, slot 5 + j <- m1j + m2j + m4j (j < 5); the
    /// other 15 slots are left as they are and not read again.
    fn output_rows(&self, m: &mut [f32], xi_stride: usize) {
        let mut slots = m.chunks_exact_mut(xi_stride);
        let mut next = || slots.next().expect("25 slots");
        let rows: [[&mut [f32]; 5]; 5] = std::array::from_fn(|_| std::array::from_fn(|_| next()));
        let [r0, r1, r2, r3, r4] = rows;
        for ((((m0, m1), m2), m3), m4) in r0.into_iter().zip(r1).zip(r2).zip(r3).zip(r4) {
            let n = m0.len();
            let (m0, m1, m2, m3, m4) = (&mut m0[..n], &mut m1[..n], &m2[..n], &m3[..n], &m4[..n]);
            for k in 0..n {
                [m0[k], m1[k]] = at5([m0[k], m1[k], m2[k], m3[k], m4[k]]);
            }
        }
    }

    /// One output plane (ho x wo) from the rows `output_rows` left:
    /// tile (ty, tx) = a A with a[r][j] = m[(5r + j) * xi_stride + base + ty*tw + tx],
    /// clipped to ho x wo.
    fn output_transform(
        &self,
        y: &mut [f32],
        m: &[f32],
        base: usize,
        xi_stride: usize,
        accumulate: bool,
        _rows: &mut [f32],
    ) {
        let tw = self.tiles().1;
        let (ho, wo) = self.out_sizes();
        for (oy, dst) in y.chunks_exact_mut(wo).enumerate().take(ho) {
            let (ty, r) = (oy / 2, oy % 2);
            let a = |j: usize| {
                let at = (5 * r + j) * xi_stride + base + ty * tw;
                &m[at..at + tw]
            };
            let (a0, a1, a2, a3, a4) = (a(0), a(1), a(2), a(3), a(4));
            // A on the columns: y[2tx] = a0 + a1 + a3, y[2tx + 1] = a1 + a2 + a4.
            let pairs = dst.chunks_exact_mut(2).zip(a0.iter().zip(a1).zip(a3).zip(a2.iter().zip(a4)));
            if accumulate {
                pairs.for_each(|(d, (((&x0, &x1), &x3), (&x2, &x4)))| {
                    let [y0, y1] = at5([x0, x1, x2, x3, x4]);
                    d[0] += y0;
                    d[1] += y1;
                });
            } else {
                pairs.for_each(|(d, (((&x0, &x1), &x3), (&x2, &x4)))| {
                    [d[0], d[1]] = at5([x0, x1, x2, x3, x4]);
                });
            }
            if wo % 2 == 1 {
                let k = wo / 2;
                let [v, _] = at5([a0[k], a1[k], a2[k], a3[k], a4[k]]);
                dst[wo - 1] = if accumulate { dst[wo - 1] + v } else { v };
            }
        }
    }
}

/// A^T x for one 5-vector: [x0 + x1 + x3, x1 + x2 + x4]. Both stages of the
/// output transform run it, so they round alike.
#[inline(always)]
fn at5(x: [f32; 5]) -> [f32; 2] {
    [x[0] + x[1] + x[3], x[1] + x[2] + x[4]]
}

/// The column stage of `input_transform` for rows of `TW` tiles (see `columns`).
fn columns_of<const TW: usize>(out: [&mut [f32]; 5], src: [&[f32]; 4], th: usize) {
    columns(out, src, th, TW);
}

/// The column stage of `input_transform`: for every tile row ty,
/// o[j][ty][tx] = (B^T [e0[tx], e1[tx], e2[tx], e3[tx], e0[tx + 1]])[j],
/// e_k = src[k][ty][..], rows of tw + 1 values. Inlined into `columns_of`,
/// a constant `tw` turns each row into a few vector operations.
#[inline(always)]
fn columns(out: [&mut [f32]; 5], src: [&[f32]; 4], th: usize, tw: usize) {
    let [o0, o1, o2, o3, o4] = out;
    for ty in 0..th {
        let r = ty * (tw + 1);
        let (e0, e1, e2, e3) = (&src[0][r..r + tw + 1], &src[1][r..r + tw], &src[2][r..r + tw], &src[3][r..r + tw]);
        let t = ty * tw..(ty + 1) * tw;
        let (d0, d1, d2) = (&mut o0[t.clone()], &mut o1[t.clone()], &mut o2[t.clone()]);
        let (d3, d4) = (&mut o3[t.clone()], &mut o4[t]);
        for x in 0..tw {
            d0[x] = e0[x] - e2[x];
            d1[x] = e2[x];
            d2[x] = e0[x + 1] - e2[x];
            d3[x] = e1[x];
            d4[x] = e3[x];
        }
    }
}
