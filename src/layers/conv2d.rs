//! Conv2d as im2col + GEMM, with hand-written backward.
//!
//! Shapes (NCHW, row-major), with `K = cin*kh*kw`, `P = ho*wo` and
//! `col = im2col(x_i)` of shape `[K, P]`:
//!
//! ```text
//!   x      [n, cin, h, w]          weight [cout, cin, kh, kw]  (PyTorch layout)
//!   out    [n, cout, ho, wo]       bias   [cout] (optional)
//!
//!   forward   out_i[cout, P] = W[cout, K] * col_i[K, P] + b
//!   backward  dW[cout, K]   += sum_i dout_i[cout, P] * col_i^T[P, K]
//!             db[cout]      += sum_i sum_p dout_i[cout, p]
//!             dcol_i[K, P]   = W^T[K, cout] * dout_i[cout, P];  dx_i += col2im(dcol_i)
//! ```
//!
//! Strategies, picked from the geometry:
//! - *tiled im2col*: images are grouped into tiles of at least 256 GEMM columns
//!   (one image when P >= 256) so small late layers still feed GEMM wide
//!   matrices; col is recomputed in backward rather than stored (it is up to
//!   K times larger than x).
//! - *dense*: when the kernel covers the whole unpadded input (HardNet's 8x8
//!   conv7, P = 1) the layer is a matrix product over the batch,
//!   out[n, cout] = X[n, K] * W^T, and no im2col is needed.
//! - *direct*: one output channel at stride 1 (U-Net conv5, DnCNN conv17)
//!   runs `conv2d_direct`, a tap-by-tap multiply-add of image rows, instead
//!   of a matrix-vector product over the im2col matrix.
//! - *Winograd*: 3x3 stride-1 'same' layers with 16 or more channels in and
//!   out run forward and the input gradient through Winograd F(2x2, 3x3)
//!   (`winograd`, 2.25x fewer multiplies, error ~4e-7 of the output's scale).
//!   Inference (`forward_fused`) takes F(4x4, 3x3) (`winograd::Winograd4`, 4x fewer
//!   multiplies) on images of 16 pixels or more: its error, ~1e-5 of the
//!   output's scale, is harmless in a forward pass but BatchNorm backward
//!   amplifies it (HardNet's golden gradients moved from 8e-6 to 9e-3), so
//!   training keeps F(2x2, 3x3) (2.25x fewer
//!   multiplies), weight gradient included (`Winograd::backward_weight`:
//!   dW = G^T (dM V^T) G, 16 GEMMs over the tiles, no patch matrix).
//!   Forward passes also run the 3x3 stride-2 layers with 16 or more
//!   channels and padding of at most 1 per side through
//!   `winograd::WinogradS2` (25 GEMMs per 2x2 output tile against im2col's
//!   36 multiplies, error ~2e-7 of the output's scale, below im2col's), in
//!   training too (`forward_plan`); their gradients keep im2col.
//!
//! Threads: the batch is cut into at most `MAX_SHARDS` contiguous shards whose
//! size depends on n only; each shard accumulates its own dW/db partial and the
//! partials are summed in shard order, so gradients are bit-identical for any
//! thread count. Per-thread im2col buffers live in the workspace (one lane per
//! pool thread), sized once per batch size: a step allocates nothing. The
//! dense passes (a kernel covering the whole input, HardNet's conv7) split
//! independent rows of C by the thread count instead: no sum crosses a split,
//! and each element of C is the same k-ordered sum for any split (the rule in
//! `threads`).

use crate::error::{Error, Result, check_len, check_len_of};
use crate::gemm::{MatMut, MatRef, gemm, gemm_dot};
use crate::layers::prepared::WeightsKey;
use crate::layers::winograd::{
    Winograd, Winograd4, Winograd4Workspace, WinogradS2, WinogradS2Workspace, WinogradWorkspace,
};
use crate::layers::{DxMode, conv2d_direct};
use crate::ops::im2col::{Padding, Window, col2im_add, im2col};
use crate::ops::reduce::add_partials;
use crate::shape::Shape4;
use rayon::prelude::*;
use std::sync::Mutex;

/// Fewest input and output channels for which a 3x3 stride-1 pad-1 layer
/// runs forward and input gradient through Winograd: below it the
/// transforms cost more than the fewer multiplies save.
const WINOGRAD_MIN_CHANNELS: usize = 16;
/// Smallest image side for F(4x4, 3x3): on 8x8 images (2 tiles per row) its
/// transforms cost more than F(2x2, 3x3)'s (`cargo bench --bench winograd`:
/// F4 / F2 time 0.71-0.82 at 16x16 and 32x32, 1.15 at 8x8).
const WINOGRAD4_MIN_SIDE: usize = 16;

/// Which forward a convolution runs: the training one (whose gradient
/// `backward` computes) or inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    Train,
    Infer,
}

/// The Winograd variant a layer runs (see `Conv2d::winograd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WinogradPlan {
    F2(Winograd),
    F4(Winograd4),
    /// Stride 2 (inference only).
    S2(WinogradS2),
}

/// Scratch of a `WinogradPlan`.
enum WinogradScratch {
    F2(WinogradWorkspace),
    F4(Winograd4Workspace),
    S2(WinogradS2Workspace),
}

impl WinogradPlan {
    fn workspace(&self, n: usize) -> WinogradScratch {
        match self {
            WinogradPlan::F2(w) => WinogradScratch::F2(w.workspace(n)),
            WinogradPlan::F4(w) => WinogradScratch::F4(w.workspace(n)),
            WinogradPlan::S2(w) => WinogradScratch::S2(w.workspace(n)),
        }
    }

    fn vouch_weights(ws: &mut WinogradScratch, key: Option<WeightsKey>) {
        match ws {
            WinogradScratch::F2(w) => w.vouch_weights(key),
            WinogradScratch::F4(w) => w.vouch_weights(key),
            WinogradScratch::S2(w) => w.vouch_weights(key),
        }
    }

    fn mismatch() -> Error {
        Error::Shape("conv2d: the Winograd workspace belongs to another variant".into())
    }

    fn forward_fused(
        &self,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        epi: Epilogue<'_>,
        n: usize,
        ws: &mut WinogradScratch,
    ) -> Result<()> {
        match (self, ws) {
            (WinogradPlan::F2(w), WinogradScratch::F2(ws)) => w.forward_fused(out, x, weight, epi, n, ws),
            (WinogradPlan::F4(w), WinogradScratch::F4(ws)) => w.forward_fused(out, x, weight, epi, n, ws),
            (WinogradPlan::S2(w), WinogradScratch::S2(ws)) => w.forward_fused(out, x, weight, epi, n, ws),
            _ => Err(Self::mismatch()),
        }
    }

    /// The weight gradient in the transformed domain: F(2x2) only, the tiling training runs.
    fn backward_weight(
        &self,
        grads: (&mut [f32], Option<&mut [f32]>),
        x: &[f32],
        dout: &[f32],
        n: usize,
        ws: &mut WinogradScratch,
    ) -> Result<()> {
        match (self, ws) {
            (WinogradPlan::F2(w), WinogradScratch::F2(ws)) => w.backward_weight(grads.0, grads.1, x, dout, n, ws),
            _ => Err(Self::mismatch()),
        }
    }

    fn backward_data(
        &self,
        dx: (&mut [f32], DxMode),
        dout: &[f32],
        weight: &[f32],
        n: usize,
        ws: &mut WinogradScratch,
    ) -> Result<()> {
        match (self, ws) {
            (WinogradPlan::F2(w), WinogradScratch::F2(ws)) => w.backward_data(dx, dout, weight, n, ws),
            (WinogradPlan::F4(w), WinogradScratch::F4(ws)) => w.backward_data(dx, dout, weight, n, ws),
            _ => Err(Self::mismatch()),
        }
    }
}
/// GEMM columns a tile aims for: below this, small layers starve the kernel.
pub(crate) const TILE_COLS: usize = 256;
/// Upper bound on the number of batch shards (and so on dW partial buffers).
pub(crate) const MAX_SHARDS: usize = 32;

/// What a convolution computes, independent of the input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: Padding,
    pub bias: bool,
}

/// A convolution bound to an input size: the geometry every call is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub spec: Conv2dSpec,
    pub win: Window,
}

/// Gradient outputs of `Conv2d::backward`; each one is accumulated into (`+=`).
pub struct ConvGrads<'a> {
    /// [n, cin, h, w]; `None` for the first layer, whose input needs no gradient.
    pub dx: Option<&'a mut [f32]>,
    /// [cout, cin, kh, kw]
    pub dweight: &'a mut [f32],
    /// `[cout]`; must be `Some` exactly when the layer has a bias.
    pub dbias: Option<&'a mut [f32]>,
    /// Whether `dx` is added to (the rule) or written over (a fresh buffer,
    /// not zeroed; see `DxMode`).
    pub dx_mode: DxMode,
}

pub use crate::ops::epilogue::Epilogue;

struct Lane {
    /// [K, tile columns]: im2col of a tile, then reused for dcol in backward.
    col: Vec<f32>,
    /// [cout, tile columns]: GEMM output (forward) or gathered dout (backward) of multi-image tiles.
    tmp: Vec<f32>,
}

/// Scratch memory of one convolution for one batch size.
pub struct ConvWorkspace {
    n: usize,
    layer: Conv2d,
    shard_imgs: usize,
    tile_imgs: usize,
    lanes: Vec<Mutex<Lane>>,
    /// [shards, cout*K] per-shard weight-gradient partials (empty until the first backward).
    dw_part: Vec<f32>,
    /// [shards, cout] per-shard bias-gradient partials.
    db_part: Vec<f32>,
    /// The Winograd scratch of training and of F(2x2) inference (created
    /// with the workspace), and of F(4x4) and stride-2 forwards (created
    /// with a training workspace, else by the first `forward_fused` that
    /// needs it).
    wino_train: Option<WinogradScratch>,
    wino_infer: Option<WinogradScratch>,
    /// Who vouches for the weights of inference calls (`vouch_weights`).
    weights_key: Option<WeightsKey>,
}

impl ConvWorkspace {
    fn shards(&self) -> usize {
        self.n.div_ceil(self.shard_imgs)
    }

    /// Vouches for the weights of later inference calls (`layers::prepared`):
    /// the Winograd weight transform is then reused without comparing the
    /// weights while `key` stays the key it was made under.
    pub fn vouch_weights(&mut self, key: Option<WeightsKey>) {
        self.weights_key = key;
    }
}

impl Conv2d {
    /// Binds `spec` to an `h x w` input; errors on impossible geometry.
    pub fn new(spec: Conv2dSpec, h: usize, w: usize) -> Result<Self> {
        if spec.cout == 0 {
            return Err(Error::InvalidArgument("convolution with 0 output channels".into()));
        }
        let win = Window::new(spec.cin, h, w, spec.kh, spec.kw, spec.stride, spec.pad)?;
        Ok(Conv2d { spec, win })
    }

    /// Elements of the weight tensor: cout*cin*kh*kw.
    pub fn weight_len(&self) -> usize {
        self.spec.cout * self.win.k()
    }
    /// Elements of the bias (0 without bias).
    pub fn bias_len(&self) -> usize {
        if self.spec.bias { self.spec.cout } else { 0 }
    }
    pub fn in_shape(&self, n: usize) -> Shape4 {
        Shape4::new(n, self.spec.cin, self.win.h, self.win.w)
    }
    pub fn out_shape(&self, n: usize) -> Shape4 {
        Shape4::new(n, self.spec.cout, self.win.ho, self.win.wo)
    }
    /// Whether the layer runs as a plain matrix product over the batch.
    pub fn is_dense(&self) -> bool {
        let g = &self.win;
        g.kh == g.h && g.kw == g.w && g.pad == Padding::valid()
    }
    /// Whether the layer runs as a direct convolution (`conv2d_direct`): one
    /// output channel and stride 1, where im2col + GEMM would be a
    /// matrix-vector product bound by the patch matrix.
    pub fn is_direct(&self) -> bool {
        self.spec.cout == 1 && self.spec.stride == 1 && !self.is_dense()
    }
    /// The Winograd plan of `pass` when the layer qualifies: 3x3, at least
    /// `WINOGRAD_MIN_CHANNELS` in and out. At stride 1 and padding 1 on every
    /// side, training runs F(2x2, 3x3); inference F(4x4, 3x3) when both sides
    /// are at least `WINOGRAD4_MIN_SIDE` (see the module header). Training's
    /// backward takes both the input and the weight gradient through F(2x2).
    /// At stride 2 and padding of at most 1 per side, inference runs
    /// `WinogradS2` (25 multiplies per 2x2 output tile and channel pair
    /// against im2col's 36); training's gradients keep im2col (its forward
    /// takes the tiling: `forward_plan`).
    pub fn winograd(&self, pass: ConvPass) -> Option<WinogradPlan> {
        let s = &self.spec;
        let wide = s.cin >= WINOGRAD_MIN_CHANNELS && s.cout >= WINOGRAD_MIN_CHANNELS;
        let (h, w) = (self.win.h, self.win.w);
        if !(s.kh == 3 && s.kw == 3 && wide) {
            return None;
        }
        let infer = pass == ConvPass::Infer;
        match (s.stride, s.pad == Padding::symmetric(1), infer && h.min(w) >= WINOGRAD4_MIN_SIDE) {
            (1, true, true) => Winograd4::new(s.cin, s.cout, h, w).ok().map(WinogradPlan::F4),
            (1, true, false) => Winograd::new(s.cin, s.cout, h, w).ok().map(WinogradPlan::F2),
            // Any padding of at most 1 per side (`new` checks it): PyTorch's 1 and Keras' 'same'.
            (2, _, _) if infer => WinogradS2::new(s.cin, s.cout, h, w, s.pad).ok().map(WinogradPlan::S2),
            _ => None,
        }
    }

    /// The Winograd plan a forward pass of `pass` runs: `winograd(pass)`,
    /// and in training also the stride-2 tiling, whose error is below
    /// im2col's (forward only: the layer's gradients keep im2col, which
    /// `winograd(Train)` leaves it).
    pub fn forward_plan(&self, pass: ConvPass) -> Option<WinogradPlan> {
        match (pass, self.winograd(pass)) {
            (ConvPass::Train, None) => self.winograd(ConvPass::Infer).filter(|p| matches!(p, WinogradPlan::S2(_))),
            (_, plan) => plan,
        }
    }

    /// Whether the layer runs a stride-1 Winograd plan in inference (F(2x2)
    /// or F(4x4)): the layers whose reduced-precision twins are chosen by plane size.
    pub fn winograd_stride1(&self) -> bool {
        matches!(self.winograd(ConvPass::Infer), Some(WinogradPlan::F2(_) | WinogradPlan::F4(_)))
    }

    /// Multiply-adds of one forward pass per image (backward costs twice that).
    pub fn macs_per_image(&self) -> usize {
        self.spec.cout * self.win.k() * self.win.p()
    }

    /// Scratch for batches of `n` images, with one lane per thread of the
    /// current rayon pool (call it inside the pool that will run the layer).
    pub fn workspace(&self, n: usize) -> ConvWorkspace {
        self.workspace_for(n, ConvPass::Train)
    }

    /// Scratch for `pass` only: an `Infer` workspace holds no training
    /// Winograd scratch unless inference runs F(2x2) on it too, so the
    /// inference path is the same with either workspace.
    pub fn workspace_for(&self, n: usize, pass: ConvPass) -> ConvWorkspace {
        let (tile_imgs, shard_imgs) = tiling(&self.win, n);
        let wino_train = match (pass, self.winograd(ConvPass::Infer)) {
            (ConvPass::Infer, Some(WinogradPlan::F4(_) | WinogradPlan::S2(_)) | None) => None,
            _ => self.winograd(ConvPass::Train).map(|w| w.workspace(n)),
        };
        // With the training Winograd scratch every pass (forward, both
        // gradients, F(2x2) inference) runs through it: no im2col lanes.
        let lanes = if self.is_dense() || self.is_direct() || wino_train.is_some() {
            Vec::new()
        } else {
            let cols = tile_imgs * self.win.p();
            let tmp = if tile_imgs > 1 { self.spec.cout * cols } else { 0 };
            lanes(n, shard_imgs, || Lane { col: vec![0.0; self.win.k() * cols], tmp: vec![0.0; tmp] })
        };
        // A training workspace holds the stride-2 forward's scratch from the start.
        let wino_infer = match (pass, self.forward_plan(pass)) {
            (ConvPass::Train, Some(plan @ WinogradPlan::S2(_))) => Some(plan.workspace(n)),
            _ => None,
        };
        let (dw_part, db_part) = (Vec::new(), Vec::new());
        ConvWorkspace {
            n,
            layer: *self,
            shard_imgs,
            tile_imgs,
            lanes,
            dw_part,
            db_part,
            wino_train,
            wino_infer,
            weights_key: None,
        }
    }

    fn check_call(&self, n: usize, x: usize, out: usize, weight: usize, ws: &ConvWorkspace) -> Result<()> {
        self.check_lens("conv2d", n, [x, out, weight], (ws.n, &ws.layer))
    }

    /// The checks of every forward: `[x, out, weight]` lengths for `n`
    /// images, and a workspace `(images, layer)` made for this call.
    pub(crate) fn check_lens(
        &self,
        what: &str,
        n: usize,
        [x, out, weight]: [usize; 3],
        ws: (usize, &Conv2d),
    ) -> Result<()> {
        check_len_of(what, "input", x, self.in_shape(n).len())?;
        check_len_of(what, "output", out, self.out_shape(n).len())?;
        check_len_of(what, "weight", weight, self.weight_len())?;
        if ws.0 != n || ws.1 != self {
            return Err(Error::Shape(format!(
                "{what} workspace was sized for {} images of another geometry; this call has {n}",
                ws.0
            )));
        }
        Ok(())
    }

    fn check_bias(&self, what: &str, len: Option<usize>) -> Result<()> {
        match (self.spec.bias, len) {
            (true, Some(l)) => check_len(what, l, self.spec.cout),
            (false, None) => Ok(()),
            (true, None) => Err(Error::Shape(format!("{what}: the layer has a bias but none was given"))),
            (false, Some(_)) => Err(Error::Shape(format!("{what}: given, but the layer has no bias"))),
        }
    }

    /// `out = conv(x, weight) + bias` for a batch of `n` images (the
    /// training forward, whose input gradient `backward` computes).
    pub fn forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        ws: &mut ConvWorkspace,
    ) -> Result<()> {
        self.check_bias("conv2d bias", bias.map(|b| b.len()))?;
        let epi = Epilogue { scale: None, shift: bias, relu: false };
        self.forward_with(ConvPass::Train, out, x, weight, epi, n, ws)
    }

    /// `out = epi(conv(x, weight))` for a batch of `n` images, for inference:
    /// the epilogue runs on each tile right after its GEMM, while the tile is
    /// in cache, and Winograd layers may take F(4x4, 3x3) (`winograd`).
    pub fn forward_fused(
        &self,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        epi: Epilogue<'_>,
        n: usize,
        ws: &mut ConvWorkspace,
    ) -> Result<()> {
        self.forward_with(ConvPass::Infer, out, x, weight, epi, n, ws)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_with(
        &self,
        pass: ConvPass,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        epi: Epilogue<'_>,
        n: usize,
        ws: &mut ConvWorkspace,
    ) -> Result<()> {
        self.check_call(n, x.len(), out.len(), weight.len(), ws)?;
        epi.check(self.spec.cout)?;
        if n == 0 {
            return Ok(());
        }
        if self.is_dense() {
            return self.forward_dense(pass, out, x, weight, epi, n);
        }
        if self.is_direct() {
            // One image per task: each output is the same sum whatever the split.
            let (in_len, p) = (self.win.in_len(), self.win.p());
            x.par_chunks(in_len).zip(out.par_chunks_mut(p)).for_each(|(xi, oi)| {
                conv2d_direct::forward_image(oi, xi, weight, &self.win);
                epi.apply(0, oi);
            });
            return Ok(());
        }
        match self.forward_plan(pass) {
            Some(plan @ (WinogradPlan::F4(_) | WinogradPlan::S2(_))) => {
                // First inference call with an inference workspace: sized once, reused after.
                let wws = ws.wino_infer.get_or_insert_with(|| plan.workspace(n));
                WinogradPlan::vouch_weights(wws, ws.weights_key);
                return plan.forward_fused(out, x, weight, epi, n, wws);
            }
            Some(plan) => {
                if let Some(wws) = ws.wino_train.as_mut() {
                    // F(2x2) inference runs on the training scratch.
                    WinogradPlan::vouch_weights(wws, ws.weights_key);
                    return plan.forward_fused(out, x, weight, epi, n, wws);
                }
            }
            None => {}
        }
        let (cout, k, p) = (self.spec.cout, self.win.k(), self.win.p());
        let (in_len, out_len) = (self.win.in_len(), cout * p);
        let w = MatRef::row_major(weight, cout, k)?;
        let (lanes, si, g) = (&ws.lanes, ws.shard_imgs, ws.tile_imgs);
        // One shard for several threads (a batch of one patch): the image's
        // output channels are shared out (a GEMM's rows do not depend on the
        // split) when its GEMM is worth it (`threads::worth_sharing`). Only with one shard: a thread waiting on the shared-out rows
        // may run another queued task, and another shard would lock this
        // thread's lane again.
        let threads = rayon::current_num_threads();
        let split = n.div_ceil(si) == 1 && crate::threads::worth_sharing(cout * k * p);
        x.par_chunks(si * in_len).zip(out.par_chunks_mut(si * out_len)).try_for_each(|(xs, os)| {
            let mut guard = lock_lane(lanes);
            let lane = &mut *guard;
            let imgs = xs.len() / in_len;
            for t0 in (0..imgs).step_by(g) {
                let tn = g.min(imgs - t0);
                let cols = tn * p;
                for j in 0..tn {
                    im2col(&mut lane.col, cols, j * p, &xs[(t0 + j) * in_len..(t0 + j + 1) * in_len], &self.win)?;
                }
                let col = MatRef::row_major(&lane.col[..k * cols], k, cols)?;
                let o_tile = &mut os[t0 * out_len..(t0 + tn) * out_len];
                if tn == 1 && split {
                    // out_i[rows, P] = W[rows, K] * col[K, P] for each part of the rows
                    let part = cout.div_ceil(threads);
                    o_tile.par_chunks_mut(part * p).enumerate().try_for_each(|(i, oc)| {
                        let r = oc.len() / p;
                        let wr = MatRef::row_major(&weight[i * part * k..(i * part + r) * k], r, k)?;
                        gemm(1.0, wr, col, 0.0, MatMut::row_major(oc, r, p)?)
                    })?;
                } else if tn == 1 {
                    // out_i[cout, P] = W[cout, K] * col[K, P]
                    gemm(1.0, w, col, 0.0, MatMut::row_major(o_tile, cout, p)?)?;
                } else {
                    // tmp[cout, tn*P] = W[cout, K] * col[K, tn*P], then un-interleave per image.
                    let tmp = &mut lane.tmp[..cout * cols];
                    gemm(1.0, w, col, 0.0, MatMut::row_major(tmp, cout, cols)?)?;
                    scatter_images(o_tile, tmp, tn, p);
                }
                for o_img in o_tile.chunks_exact_mut(out_len) {
                    for (c, o_plane) in o_img.chunks_exact_mut(p).enumerate() {
                        epi.apply(c, o_plane);
                    }
                }
            }
            Ok(())
        })
    }

    /// out[n, cout] = epi(X[n, K] * W^T[K, cout]), rows of the batch split over threads.
    ///
    /// Inference takes `gemm_dot` (X and W both contiguous along K: nothing is
    /// packed, where the packed GEMM transposes all of W on every call, 4 MiB
    /// for HardNet's conv7); training keeps the packed GEMM, whose sums its
    /// gradients were checked against.
    fn forward_dense(
        &self,
        pass: ConvPass,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        epi: Epilogue<'_>,
        n: usize,
    ) -> Result<()> {
        let (cout, k) = (self.spec.cout, self.win.k());
        let threads = rayon::current_num_threads();
        if pass == ConvPass::Infer && n < threads {
            // Fewer patches than threads (one patch: 4 MiB of conv7 weights read
            // for 128 outputs): each row's output channels are shared out;
            // `gemm_dot`'s elements do not depend on the split.
            let part = cout.div_ceil(threads);
            for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(cout)) {
                let xm = MatRef::row_major(xr, 1, k)?;
                or.par_chunks_mut(part).enumerate().try_for_each(|(i, oc)| {
                    let w = &weight[i * part * k..(i * part + oc.len()) * k];
                    gemm_dot(xm, MatRef::row_major(w, oc.len(), k)?.t(), MatMut::row_major(oc, 1, oc.len())?)
                })?;
                epi.apply_across(or);
            }
            return Ok(());
        }
        let w_t = MatRef::row_major(weight, cout, k)?.t();
        // Independent rows of C, one part per thread: each element is the same
        // k-ordered sum whatever the split (threads module, and `gemm_dot`'s
        // fixed sum order), and one part per thread packs W^T once per thread
        // rather than once per fixed-size part.
        let rows = n.div_ceil(threads).max(1);
        x.par_chunks(rows * k).zip(out.par_chunks_mut(rows * cout)).try_for_each(|(xs, os)| {
            let r = xs.len() / k;
            let (xm, om) = (MatRef::row_major(xs, r, k)?, MatMut::row_major(os, r, cout)?);
            match pass {
                ConvPass::Infer => gemm_dot(xm, w_t, om)?,
                ConvPass::Train => gemm(1.0, xm, w_t, 0.0, om)?,
            }
            os.chunks_exact_mut(cout).for_each(|row| epi.apply_across(row));
            Ok(())
        })
    }

    /// Accumulates dx, dweight and dbias for upstream gradient `dout` (dx
    /// written instead when `grads.dx_mode` is `Write`); `x` and `weight` are
    /// the forward inputs.
    pub fn backward(
        &self,
        grads: ConvGrads<'_>,
        dout: &[f32],
        x: &[f32],
        weight: &[f32],
        n: usize,
        ws: &mut ConvWorkspace,
    ) -> Result<()> {
        let dx_mode = grads.dx_mode;
        self.check_call(n, x.len(), dout.len(), weight.len(), ws)?;
        check_len("conv2d weight gradient", grads.dweight.len(), self.weight_len())?;
        self.check_bias("conv2d bias gradient", grads.dbias.as_ref().map(|b| b.len()))?;
        if let Some(dx) = &grads.dx {
            check_len("conv2d input gradient", dx.len(), self.in_shape(n).len())?;
        }
        if n == 0 {
            return Ok(());
        }
        if self.is_dense() {
            return self.backward_dense((grads, dx_mode), (dout, x, weight), n);
        }
        if let (Some(wino), Some(wws)) = (self.winograd(ConvPass::Train), ws.wino_train.as_mut()) {
            wino.backward_weight((grads.dweight, grads.dbias), x, dout, n, wws)?;
            if let Some(dx) = grads.dx {
                wino.backward_data((dx, dx_mode), dout, weight, n, wws)?;
            }
            return Ok(());
        }
        let (cout, k) = (self.spec.cout, self.win.k());
        let wlen = cout * k;
        let shards = ws.shards();
        if ws.dw_part.len() != shards * wlen {
            // First backward with this workspace: sized once, reused by every later step.
            ws.dw_part = vec![0.0; shards * wlen];
            ws.db_part = vec![0.0; shards * cout];
        }
        let ws = &mut *ws;
        let ctx = ShardCtx { layer: self, weight, lanes: &ws.lanes, tile_imgs: ws.tile_imgs, dx_mode };
        let lens = (self.win.in_len(), cout * self.win.p(), ws.shard_imgs);
        for_each_backward_shard(
            (&mut ws.dw_part, &mut ws.db_part),
            (x, dout, grads.dx),
            lens,
            |dwp, dbp, dxs, xs, ds| ctx.shard_backward(dwp, dbp, dxs, xs, ds),
        )?;
        // Sum the partials in shard order: deterministic whatever ran where.
        add_partials(grads.dweight, &ws.dw_part);
        if let Some(db) = grads.dbias {
            add_partials(db, &ws.db_part);
        }
        Ok(())
    }

    /// Dense backward: dW[cout, K] += dout^T[cout, n] * X[n, K]; dX[n, K] += dout[n, cout] * W[cout, K].
    fn backward_dense(
        &self,
        (grads, dx_mode): (ConvGrads<'_>, DxMode),
        (dout, x, weight): (&[f32], &[f32], &[f32]),
        n: usize,
    ) -> Result<()> {
        let (cout, k) = (self.spec.cout, self.win.k());
        let x_mat = MatRef::row_major(x, n, k)?;
        let threads = rayon::current_num_threads();
        // Split dW by output channel: each row block sums over the whole batch
        // inside one GEMM, in the same order for any split.
        let rows = cout.div_ceil(threads).max(1);
        grads.dweight.par_chunks_mut(rows * k).enumerate().try_for_each(|(i, dw)| {
            let (c0, r) = (i * rows, dw.len() / k);
            let dout_t = MatRef::new(&dout[c0..], r, n, 1, cout)?;
            gemm(1.0, dout_t, x_mat, 1.0, MatMut::row_major(dw, r, k)?)
        })?;
        if let Some(db) = grads.dbias {
            for row in dout.chunks_exact(cout) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
        }
        if let Some(dx) = grads.dx {
            let w = MatRef::row_major(weight, cout, k)?;
            let rows = n.div_ceil(threads).max(1);
            let beta = if dx_mode == DxMode::Write { 0.0 } else { 1.0 };
            dx.par_chunks_mut(rows * k).zip(dout.par_chunks(rows * cout)).try_for_each(|(dxs, ds)| {
                let r = ds.len() / cout;
                gemm(1.0, MatRef::row_major(ds, r, cout)?, w, beta, MatMut::row_major(dxs, r, k)?)
            })?;
        }
        Ok(())
    }
}

/// What every shard of a tiled backward shares.
struct ShardCtx<'a> {
    layer: &'a Conv2d,
    weight: &'a [f32],
    lanes: &'a [Mutex<Lane>],
    tile_imgs: usize,
    dx_mode: DxMode,
}

impl ShardCtx<'_> {
    /// One image's dx ready for adds: zeroed first when it is to be written.
    fn fresh<'d>(&self, dx: &'d mut [f32]) -> &'d mut [f32] {
        if self.dx_mode == DxMode::Write {
            dx.fill(0.0);
        }
        dx
    }

    /// One shard: dwp/dbp are this shard's partials (overwritten), dxs its slice of dx (accumulated).
    fn shard_backward(
        &self,
        dwp: &mut [f32],
        dbp: &mut [f32],
        mut dxs: Option<&mut [f32]>,
        xs: &[f32],
        ds: &[f32],
    ) -> Result<()> {
        let l = self.layer;
        let (cout, k, p) = (l.spec.cout, l.win.k(), l.win.p());
        let (in_len, out_len) = (l.win.in_len(), cout * p);
        let w = MatRef::row_major(self.weight, cout, k)?;
        dwp.fill(0.0);
        dbp.fill(0.0);
        if l.is_direct() {
            for (i, (xi, di)) in xs.chunks_exact(in_len).zip(ds.chunks_exact(out_len)).enumerate() {
                let dxi = dxs.as_deref_mut().map(|d| &mut d[i * in_len..(i + 1) * in_len]);
                // Write: each image's dx zeroed just before its adds, in cache.
                let dxi = dxi.map(|d| self.fresh(d));
                conv2d_direct::backward_image(dxi, dwp, di, xi, self.weight, &l.win);
                if l.spec.bias {
                    dbp[0] += di.iter().sum::<f32>();
                }
            }
            return Ok(());
        }
        let mut guard = lock_lane(self.lanes);
        let lane = &mut *guard;
        let imgs = xs.len() / in_len;
        for t0 in (0..imgs).step_by(self.tile_imgs) {
            let tn = self.tile_imgs.min(imgs - t0);
            let cols = tn * p;
            for j in 0..tn {
                im2col(&mut lane.col, cols, j * p, &xs[(t0 + j) * in_len..(t0 + j + 1) * in_len], &l.win)?;
            }
            let d_tile = &ds[t0 * out_len..(t0 + tn) * out_len];
            // dO[cout, tn*P]: the tile's upstream gradient, interleaved like col.
            let d_o: &[f32] = if tn == 1 {
                d_tile
            } else {
                let tmp = &mut lane.tmp[..cout * cols];
                for (j, d_img) in d_tile.chunks_exact(out_len).enumerate() {
                    for (co, d_row) in d_img.chunks_exact(p).enumerate() {
                        tmp[co * cols + j * p..co * cols + (j + 1) * p].copy_from_slice(d_row);
                    }
                }
                tmp
            };
            let d_o = MatRef::row_major(d_o, cout, cols)?;
            {
                // dW_part[cout, K] += dO[cout, cols] * col^T[cols, K]
                let col = MatRef::row_major(&lane.col[..k * cols], k, cols)?;
                gemm(1.0, d_o, col.t(), 1.0, MatMut::row_major(dwp, cout, k)?)?;
            }
            // A layer without bias (one BatchNorm follows) skips the serial sums.
            if l.spec.bias {
                for (co, db) in dbp.iter_mut().enumerate() {
                    let row = &d_o.data()[co * cols..(co + 1) * cols];
                    *db += row.iter().sum::<f32>();
                }
            }
            if let Some(dxs) = dxs.as_deref_mut() {
                // dcol[K, cols] = W^T[K, cout] * dO[cout, cols], written over col (no longer needed).
                let dcol = &mut lane.col[..k * cols];
                gemm(1.0, w.t(), d_o, 0.0, MatMut::row_major(dcol, k, cols)?)?;
                for j in 0..tn {
                    let dxi = self.fresh(&mut dxs[(t0 + j) * in_len..(t0 + j + 1) * in_len]);
                    col2im_add(dxi, dcol, cols, j * p, &l.win)?;
                }
            }
        }
        Ok(())
    }
}

/// How the im2col paths cut a batch of `n` images: `(tile_imgs, shard_imgs)`,
/// images per GEMM tile (at least `TILE_COLS` columns) and per thread's shard.
pub(crate) fn tiling(win: &Window, n: usize) -> (usize, usize) {
    let tile_imgs = TILE_COLS.div_ceil(win.p()).clamp(1, n.max(1));
    (tile_imgs, crate::threads::part_size(n, MAX_SHARDS, tile_imgs))
}

/// One scratch lane per thread of the current rayon pool for a batch cut
/// into shards of `shard_imgs` (none for an empty batch).
pub(crate) fn lanes<L>(n: usize, shard_imgs: usize, lane: impl Fn() -> L) -> Vec<Mutex<L>> {
    let count = if n == 0 { 0 } else { rayon::current_num_threads().min(n.div_ceil(shard_imgs)) };
    (0..count).map(|_| Mutex::new(lane())).collect()
}

/// Copies a tile's output `tmp[cout, tn * P]` (image j in columns
/// `j*P .. (j+1)*P`) into `o_tile[tn, cout, P]`.
pub(crate) fn scatter_images(o_tile: &mut [f32], tmp: &[f32], tn: usize, p: usize) {
    let cols = tn * p;
    for (j, o_img) in o_tile.chunks_exact_mut(o_tile.len() / tn).enumerate() {
        for (co, o_row) in o_img.chunks_exact_mut(p).enumerate() {
            o_row.copy_from_slice(&tmp[co * cols + j * p..co * cols + (j + 1) * p]);
        }
    }
}

/// The batch loop of the backward passes: contiguous shards of
/// `shard_imgs` images of `x` (`in_len` values each) and `dout` (`out_len`)
/// in parallel, `shard(dw_p, db_p, dx_s, x_s, dout_s)` with the shard's own
/// weight and bias partials (`dw_part`, `db_part`: the same share of each
/// per shard, to be summed in shard order) and, when `dx` is wanted, its
/// images' input gradient.
pub(crate) fn for_each_backward_shard(
    (dw_part, db_part): (&mut [f32], &mut [f32]),
    (x, dout, dx): (&[f32], &[f32], Option<&mut [f32]>),
    (in_len, out_len, shard_imgs): (usize, usize, usize),
    shard: impl Fn(&mut [f32], &mut [f32], Option<&mut [f32]>, &[f32], &[f32]) -> Result<()> + Sync,
) -> Result<()> {
    let shards = (x.len() / in_len).div_ceil(shard_imgs).max(1);
    let parts = dw_part.par_chunks_mut(dw_part.len() / shards).zip(db_part.par_chunks_mut(db_part.len() / shards));
    let inputs = x.par_chunks(shard_imgs * in_len).zip(dout.par_chunks(shard_imgs * out_len));
    match dx {
        Some(dx) => inputs
            .zip(parts)
            .zip(dx.par_chunks_mut(shard_imgs * in_len))
            .try_for_each(|(((xs, ds), (dwp, dbp)), dxs)| shard(dwp, dbp, Some(dxs), xs, ds)),
        None => inputs.zip(parts).try_for_each(|((xs, ds), (dwp, dbp))| shard(dwp, dbp, None, xs, ds)),
    }
}

/// The batch loop of the reduced-precision im2col paths: contiguous shards
/// of `shard_imgs` images of `x` (`in_len` values each) in parallel, each
/// on its thread's lane, cut into tiles of up to `tile_imgs` images;
/// `tile(lane, images, out)` gets a tile's inputs and its outputs (`out_len`
/// values per image).
#[allow(clippy::too_many_arguments)]
pub(crate) fn for_each_tile<L: Send, X: Sync, O: Send>(
    lanes: &[Mutex<L>],
    x: &[X],
    out: &mut [O],
    (in_len, out_len): (usize, usize),
    (tile_imgs, shard_imgs): (usize, usize),
    tile: impl Fn(&mut L, &[X], &mut [O]) -> Result<()> + Sync,
) -> Result<()> {
    x.par_chunks(shard_imgs * in_len).zip(out.par_chunks_mut(shard_imgs * out_len)).try_for_each(|(xs, os)| {
        let mut guard = lock_lane(lanes);
        xs.chunks(tile_imgs * in_len)
            .zip(os.chunks_mut(tile_imgs * out_len))
            .try_for_each(|(xt, ot)| tile(&mut guard, xt, ot))
    })
}

/// The calling thread's scratch lane. Lanes are indexed by the rayon worker
/// index, so in the pool the workspace was sized for a lock is never contended;
/// elsewhere (a bigger pool) threads share lanes and merely wait.
pub(crate) fn lock_lane<L>(lanes: &[Mutex<L>]) -> std::sync::MutexGuard<'_, L> {
    let i = rayon::current_thread_index().unwrap_or(0) % lanes.len();
    // A poisoned lane only means another thread panicked mid-tile; its contents are scratch.
    lanes[i].lock().unwrap_or_else(|e| e.into_inner())
}
