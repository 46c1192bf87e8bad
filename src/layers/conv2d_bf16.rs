//! Conv2d inference in bf16: the input and the weights rounded to bf16
//! (`gemm::bf16`, nearest, ties to even; the weights once per weight
//! change), products summed in f32 by the bf16 GEMM, then the epilogue
//! (bias, folded BatchNorm, ReLU) in f32.
//!
//! Shapes as `conv2d`: x `[n, cin, h, w]`, weight `[cout, cin, kh, kw]`,
//! out `[n, cout, ho, wo]`, `K = cin*kh*kw`, `P = ho*wo`:
//!
//! ```text
//!   col_i       = bf16(im2col(x_i))  [K, P]    (padding 0, exact), packed in pairs of K
//!   out_i[c, P] = epi_c(bf16(W)[c, K] * col_i[K, P])   (f32 sums, the GEMM's order)
//! ```
//!
//! The dense layer (kernel = whole input, HardNet's conv7) is
//! `out^T[cout, n] = bf16(W)[cout, K] * bf16(X)^T[K, n]`: the batch is the columns.
//!
//! Each output is one sum in a fixed order whatever the tile or the thread
//! that computes it, so the result has the same bits for any thread count or
//! batch split. Threads: as `conv2d_q8` (contiguous batch shards, one
//! scratch lane per pool thread); the dense layer splits the batch into
//! parts of whole 16-column panels.

use crate::error::{Error, Result};
use crate::gemm::bf16::{Bf16Weights, PANEL, gemm_bf16, pack_b, pack_bt, packed_b_len};
use crate::gemm::{MatMut, MatRef};
use crate::layers::conv2d::{Conv2d, Epilogue, for_each_tile, lanes, scatter_images, tiling};
use crate::layers::prepared::{Converted, WeightsKey};
use crate::ops::im2col::im2col;
use rayon::prelude::*;
use std::sync::Mutex;

struct Lane {
    /// The patch matrix of a tile in f32, `[K, tile columns]`.
    col: Vec<f32>,
    /// The same rounded to bf16 and packed for the GEMM.
    packed: Vec<u16>,
    /// `[cout, tile columns]` output of multi-image tiles.
    tmp: Vec<f32>,
}

/// Scratch of one bf16 convolution for one batch size, with its rounded weights.
pub struct Bf16ConvWorkspace {
    n: usize,
    layer: Conv2d,
    shard_imgs: usize,
    tile_imgs: usize,
    lanes: Vec<Mutex<Lane>>,
    /// The rounded weights, redone when the weights' bits change.
    weights: Converted<Bf16Weights>,
    /// Dense layer: the packed `K x n` batch.
    dense: Vec<u16>,
}

impl Bf16ConvWorkspace {
    /// Vouches for the weights of later calls (`layers::prepared`): the
    /// converted weights are then reused without comparing the f32 weights
    /// while `key` stays the key they were converted under.
    pub fn vouch_weights(&mut self, key: Option<WeightsKey>) {
        self.weights.vouch(key);
    }
}

impl Conv2d {
    /// Whether `forward_bf16` can run this layer: all but the direct
    /// single-output layers (the denoisers' last layers, a sliver of the cost).
    pub fn supports_bf16(&self) -> bool {
        !self.is_direct()
    }

    /// Whether a model in bf16 runs this layer in bf16: where `forward_bf16`
    /// can, except
    /// - the Winograd layers on planes larger than 8x8
    ///   (`gemm_beats_winograd`, as int8): there f32 F(4x4, 3x3) / F(2x2, 3x3)
    ///   do 4x / 2.25x fewer multiplies than im2col + GEMM, more than
    ///   `vdpbf16ps`'s 2 products per lane can make up, and a CPU without it
    ///   multiplies bf16 at f32 speed;
    /// - the dense layer (HardNet's conv7): its 1M weights are compared bit
    ///   for bit on every call (to follow weight changes) and its GEMM pads
    ///   a small batch to 16 columns, which halved one-patch throughput
    ///   (README, Reduced precision); f32 runs it as dot products.
    ///
    /// Unlike int8, the first layer runs in bf16 too: bf16 keeps 8
    /// significant bits of every value, with no range to calibrate.
    pub fn runs_bf16_in_models(&self) -> bool {
        self.supports_bf16() && self.gemm_beats_winograd() && !self.is_dense()
    }

    /// Scratch for `forward_bf16` on batches of `n` images, one lane per
    /// thread of the current rayon pool. The rounded weights are made by the first call.
    pub fn workspace_bf16(&self, n: usize) -> Bf16ConvWorkspace {
        let (k, p, cout) = (self.win.k(), self.win.p(), self.spec.cout);
        let (tile_imgs, shard_imgs) = tiling(&self.win, n);
        let dense = self.is_dense();
        let lanes = if dense || !self.supports_bf16() {
            Vec::new()
        } else {
            let cols = tile_imgs * p;
            lanes(n, shard_imgs, || Lane {
                col: vec![0.0; k * cols],
                packed: vec![0; packed_b_len(k, cols)],
                tmp: vec![0.0; if tile_imgs > 1 { cout * cols } else { 0 }],
            })
        };
        Bf16ConvWorkspace {
            n,
            layer: *self,
            shard_imgs,
            tile_imgs,
            lanes,
            weights: Converted::new(self.weight_len()),
            dense: vec![0; if dense { packed_b_len(k, n) } else { 0 }],
        }
    }

    /// `out = epi(conv(x, weight))` in bf16 (see the file header); errors on
    /// the direct layers (`supports_bf16`).
    pub fn forward_bf16(
        &self,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        epi: Epilogue<'_>,
        n: usize,
        ws: &mut Bf16ConvWorkspace,
    ) -> Result<()> {
        self.check_lens("conv2d bf16", n, [x.len(), out.len(), weight.len()], (ws.n, &ws.layer))?;
        epi.check(self.spec.cout)?;
        if !self.supports_bf16() {
            return Err(Error::Unsupported("bf16 convolution of a single-output direct layer".into()));
        }
        let (cout, k, p) = (self.spec.cout, self.win.k(), self.win.p());
        let wb = ws.weights.get(weight, |w| Ok(Bf16Weights::convert(MatRef::row_major(w, cout, k)?)))?;
        if n == 0 {
            return Ok(());
        }
        if self.is_dense() {
            // out^T[cout, n] = bf16(W)[cout, K] * bf16(X)^T[K, n], whole panels of images per thread.
            pack_bt(x, k, n, &mut ws.dense)?;
            let threads = rayon::current_num_threads();
            let part = n.div_ceil(threads).div_ceil(PANEL) * PANEL;
            let panel_len = packed_b_len(k, PANEL);
            return ws.dense.par_chunks(part / PANEL * panel_len).zip(out.par_chunks_mut(part * cout)).try_for_each(
                |(b, o)| {
                    let imgs = o.len() / cout;
                    gemm_bf16(wb, b, imgs, MatMut::row_major(o, imgs, cout)?.t())?;
                    o.chunks_exact_mut(cout).for_each(|row| epi.apply_across(row));
                    Ok(())
                },
            );
        }
        let (in_len, out_len) = (self.win.in_len(), cout * p);
        let cut = (ws.tile_imgs, ws.shard_imgs);
        for_each_tile(&ws.lanes, x, out, (in_len, out_len), cut, |lane: &mut Lane, xt, o_tile| {
            let tn = xt.len() / in_len;
            let cols = tn * p;
            for (j, xi) in xt.chunks_exact(in_len).enumerate() {
                im2col(&mut lane.col, cols, j * p, xi, &self.win)?;
            }
            let packed = &mut lane.packed[..packed_b_len(k, cols)];
            pack_b(MatRef::row_major(&lane.col[..k * cols], k, cols)?, packed)?;
            // tmp[cout, tn*P] = bf16(W)[cout, K] * col[K, tn*P] (straight into the output for one image).
            let tmp = if tn == 1 { &mut *o_tile } else { &mut lane.tmp[..cout * cols] };
            gemm_bf16(wb, packed, cols, MatMut::row_major(tmp, cout, cols)?)?;
            tmp.chunks_exact_mut(cols).enumerate().for_each(|(co, row)| epi.apply(co, row));
            if tn > 1 {
                scatter_images(o_tile, &lane.tmp[..cout * cols], tn, p);
            }
            Ok(())
        })
    }
}
