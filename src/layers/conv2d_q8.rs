//! Conv2d inference in int8: the input quantized per tensor to 7-bit codes
//! (`gemm::q8::Q8Act`, from calibration), the weights per output channel
//! (`Q8Weights`, quantized once per weight change), exact integer sums by
//! the int8 GEMM, the epilogue (bias, folded BatchNorm, ReLU) applied in
//! the GEMM's store.
//!
//! Shapes as `conv2d`: x `[n, cin, h, w]`, weight `[cout, cin, kh, kw]`,
//! out `[n, cout, ho, wo]`, `K = cin*kh*kw`, `P = ho*wo`:
//!
//! ```text
//!   codes_i = q(x_i)                          (8 bits, zero point z, in a border of z)
//!   col_i   = im2col(codes_i)  [Kc, P]        (padding = z, so exactly 0.0), written packed
//!   out_i[c, P] = act(scale[c] * (Wq[c, Kc] * col_i[Kc, P] - z * rowsum(Wq)[c]) + shift[c])
//!   with scale[c] = sa[c] * sb * epi.scale[c], shift = epi.shift
//! ```
//!
//! The depth runs in `im2col_q8`'s c4 order (`Kc`: channels in quads, the
//! pads meeting zero weights), so each packed step is a straight copy of
//! the image's codes; the sums are those of the `(ci, ki, kj)` order. With
//! output rows a multiple of 8 wide (`im2col_q8::c4_taps`; at stride s the
//! codes' columns split into s phases) the GEMM reads those steps where
//! they lie in the codes (`gemm_q8_taps`) and `col` is never written: the
//! same sums, so the same bits.
//!
//! The dense layer (kernel = whole input, HardNet's conv7) is
//! `out^T[cout, n] = Wq[cout, K] * q(X)^T[K, n]`: the batch is the columns.
//!
//! Every output is an exact integer sum mapped by one formula, so the result
//! has the same bits for any thread count, batch split or int8 kernel.
//! Threads: as `conv2d` (contiguous batch shards, one scratch lane per pool
//! thread, tiles of at least 256 columns); the dense layer splits the batch
//! into parts of whole 16-column panels.

use crate::error::{Error, Result};
use crate::gemm::MatMut;
use crate::gemm::MatRef;
use crate::gemm::q8::{
    PANEL, Q8Act, Q8Codes, Q8Dst, Q8Laid, Q8Layout, Q8Out, Q8Source, Q8Taps, Q8Weights, gemm_q8, gemm_q8_taps, pack_bt,
    packed_b_len,
};
use crate::layers::conv2d::{Conv2d, Epilogue, for_each_tile, lanes, scatter_images, tiling};
use crate::layers::prepared::{Converted, WeightsKey};
use crate::ops::im2col_q8::{
    C4Taps, c4_depth, c4_layout, c4_scratch_len, c4_taps, gather_packed_c4, padded_c4_len, quantize_padded_c4,
    quantize_phased_c4, reorder_weights_c4,
};
use rayon::prelude::*;
use std::sync::Mutex;

struct Lane {
    /// One image's codes in a zero-point border, `[cin / 4, ph, pw, 4]` (`im2col_q8`'s c4 layout);
    /// a tile's images one after another when the GEMM reads them in place.
    codes: Vec<u8>,
    /// One channel quad's input planes of codes, `[4, h, w]`, before their interleave into `codes`.
    planes: Vec<u8>,
    /// The patch matrix of a tile, `[Kc, tile columns]` codes in the c4 depth order, packed for
    /// the int8 GEMM (empty when it reads the codes in place).
    packed: Vec<u8>,
    /// `[cout, tile columns]` output of multi-image tiles.
    tmp: Vec<f32>,
}

/// What an int8 convolution reads: f32 values `[n, cin, h, w]`, their codes
/// under the layer's `Q8Act` in the same order, or codes already in the
/// layout its GEMM reads (`Q8ConvWorkspace::input_layout`, image after
/// image: a previous layer's `Q8LayerOut::Laid`), which it reads in place.
#[derive(Clone, Copy, Debug)]
pub enum Q8LayerIn<'a> {
    Values(&'a [f32]),
    Codes(&'a [u8]),
    Laid(&'a [u8]),
}

/// Where an int8 convolution writes: f32 values `[n, cout, ho, wo]`, or the
/// next int8 layer's input codes under that layer's `Q8Act` (the codes it
/// would make of the values, so the same bits), in that order (`Codes`,
/// `gemm::q8::Q8Codes`) or in the next layer's own layout (`Laid`,
/// `gemm::q8::Q8Laid`: only the pixels are written, the rest of `codes`
/// must hold the zero point).
#[derive(Debug)]
pub enum Q8LayerOut<'a> {
    Values(&'a mut [f32]),
    Codes(&'a mut [u8], Q8Act),
    Laid(&'a mut [u8], Q8Act, Q8Layout),
}

/// Scratch of one int8 convolution for one batch size, with its quantized weights.
pub struct Q8ConvWorkspace {
    n: usize,
    layer: Conv2d,
    shard_imgs: usize,
    tile_imgs: usize,
    lanes: Vec<Mutex<Lane>>,
    /// The quantized weights, redone when the weights' bits change.
    weights: Converted<Q8Weights>,
    /// `[cout]` output scale of the current call.
    scale: Vec<f32>,
    /// Dense layer: the packed `K x n` batch.
    dense: Vec<u8>,
    /// How the GEMM reads a whole tile's codes in place, where it does
    /// (`im2col_q8::c4_taps`: output rows of 8k pixels).
    taps: Option<C4Taps>,
}

/// Largest input plane (pixels) on which a Winograd layer runs in bf16 in
/// models (`Conv2d::runs_bf16_in_models`), and in int8 with
/// `Int8Layers::KeepWinograd` (`models::quant`): 8x8.
pub const LOW_PRECISION_WINOGRAD_MAX_PLANE: usize = 64;

impl Q8ConvWorkspace {
    /// Vouches for the weights of later calls (`layers::prepared`): the
    /// converted weights are then reused without comparing the f32 weights
    /// while `key` stays the key they were converted under.
    pub fn vouch_weights(&mut self, key: Option<WeightsKey>) {
        self.weights.vouch(key);
    }

    /// The layout this layer's GEMM reads its input codes in, for
    /// `Q8LayerIn::Laid` (`None` for the dense layer, which packs its input).
    pub fn input_layout(&self) -> Option<Q8Layout> {
        let phases = self.taps.as_ref().map_or(1, |t| t.phases);
        (!self.layer.is_dense()).then(|| c4_layout(&self.layer.win, phases))
    }
}

impl Conv2d {
    /// Whether `forward_q8` can run this layer: all but the direct
    /// single-output layers (the denoisers' last layers, whose output is
    /// the image; a sliver of the cost).
    pub fn supports_q8(&self) -> bool {
        !self.is_direct()
    }

    /// Whether a model may run this layer in int8 (a calibration may cover
    /// it): where `forward_q8` can, except a model's first layers, the
    /// layers reading the one-channel patch (`cin == 1`: the most sensitive
    /// to rounding, a sliver of the cost). The denoisers' output layers are
    /// direct (`supports_q8`). HardNet's dense conv7, which makes the
    /// descriptor, is a candidate: in int8 it moved no task's mAP by more
    /// than 0.0002 on the validation sequences (README, Reduced precision),
    /// and in f32 it was a tenth of int8 HardNet's time for 3% of its
    /// multiply-adds.
    pub fn q8_candidate(&self) -> bool {
        self.supports_q8() && self.spec.cin > 1
    }

    /// Whether f32 inference does not run this layer through a stride-1
    /// Winograd plan, or runs it on a plane of at most
    /// `LOW_PRECISION_WINOGRAD_MAX_PLANE` pixels: where a reduced-precision
    /// im2col + GEMM can be faster. (The stride-2 Winograd saves only 1.44x
    /// of the multiplies, less than int8 or bf16 GEMM gains.)
    pub fn gemm_beats_winograd(&self) -> bool {
        !self.winograd_stride1() || self.win.h * self.win.w <= LOW_PRECISION_WINOGRAD_MAX_PLANE
    }

    /// Scratch for `forward_q8` on batches of `n` images, one lane per thread
    /// of the current rayon pool. The quantized weights are made by the first call.
    pub fn workspace_q8(&self, n: usize) -> Q8ConvWorkspace {
        let (k, p, cout) = (self.win.k(), self.win.p(), self.spec.cout);
        let (tile_imgs, shard_imgs) = tiling(&self.win, n);
        let dense = self.is_dense();
        let im2col = !dense && self.supports_q8();
        let taps = if im2col { c4_taps(&self.win, tile_imgs) } else { None };
        let lanes = if !im2col {
            Vec::new()
        } else {
            let cols = tile_imgs * p;
            let (codes, packed) = match &taps {
                Some(t) => (tile_imgs * t.image_len, 0),
                None => (padded_c4_len(&self.win), packed_b_len(c4_depth(&self.win), cols)),
            };
            lanes(n, shard_imgs, || Lane {
                codes: vec![0; codes],
                planes: vec![0; c4_scratch_len(&self.win)],
                packed: vec![0; packed],
                tmp: vec![0.0; if tile_imgs > 1 { cout * cols } else { 0 }],
            })
        };
        Q8ConvWorkspace {
            n,
            layer: *self,
            shard_imgs,
            tile_imgs,
            lanes,
            weights: Converted::new(self.weight_len()),
            scale: vec![0.0; cout],
            dense: vec![0; if dense { packed_b_len(k, n) } else { 0 }],
            taps,
        }
    }

    /// `out = epi(conv(x, weight))` in int8 with input quantization `act`
    /// (see the file header); errors on the direct layers (`supports_q8`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_q8(
        &self,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        act: Q8Act,
        epi: Epilogue<'_>,
        n: usize,
        ws: &mut Q8ConvWorkspace,
    ) -> Result<()> {
        self.forward_q8_io(Q8LayerOut::Values(out), Q8LayerIn::Values(x), weight, act, epi, n, ws)
    }

    /// `forward_q8` from values or codes (`Q8LayerIn`, codes under `act`)
    /// into values or the next layer's codes (`Q8LayerOut`): int8 layers in
    /// a row hand each other codes, with no f32 between them.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_q8_io(
        &self,
        out: Q8LayerOut<'_>,
        x: Q8LayerIn<'_>,
        weight: &[f32],
        act: Q8Act,
        epi: Epilogue<'_>,
        n: usize,
        ws: &mut Q8ConvWorkspace,
    ) -> Result<()> {
        let (x_len, x_want) = match x {
            Q8LayerIn::Values(v) => (v.len(), self.in_shape(n).len()),
            Q8LayerIn::Codes(c) => (c.len(), self.in_shape(n).len()),
            Q8LayerIn::Laid(c) => {
                let layout = ws.input_layout().ok_or_else(|| {
                    Error::Unsupported("the dense int8 layer reads values or codes, not a laid-out input".into())
                })?;
                (c.len(), n * layout.image_len())
            }
        };
        let out_want = match &out {
            Q8LayerOut::Laid(_, _, l) => {
                if (l.channels, l.h, l.w) != (self.spec.cout, self.win.ho, self.win.wo) {
                    return Err(Error::Shape(format!(
                        "conv2d int8: output codes laid out for {}x{}x{} images, the layer makes {}x{}x{}",
                        l.channels, l.h, l.w, self.spec.cout, self.win.ho, self.win.wo
                    )));
                }
                n * l.image_len()
            }
            _ => self.out_shape(n).len(),
        };
        let out_len = match &out {
            Q8LayerOut::Values(v) => v.len(),
            Q8LayerOut::Codes(c, _) | Q8LayerOut::Laid(c, _, _) => c.len(),
        };
        if x_len != x_want || out_len != out_want {
            return Err(Error::Shape(format!(
                "conv2d int8: {x_len} inputs (needs {x_want}) and {out_len} outputs (needs {out_want}) for {n} images"
            )));
        }
        self.check_lens(
            "conv2d int8",
            n,
            [self.in_shape(n).len(), self.out_shape(n).len(), weight.len()],
            (ws.n, &ws.layer),
        )?;
        epi.check(self.spec.cout)?;
        if !self.supports_q8() {
            return Err(Error::Unsupported("int8 convolution of a single-output direct layer".into()));
        }
        let (cout, k) = (self.spec.cout, self.win.k());
        let dense = self.is_dense();
        let input_layout = ws.input_layout();
        let Q8ConvWorkspace { lanes, weights, scale, dense: packed, taps, tile_imgs, shard_imgs, .. } = ws;
        let wq = weights.get(weight, |w| {
            if dense {
                return Q8Weights::quantize(MatRef::row_major(w, cout, k)?);
            }
            // The convolutions' depth runs in the c4 order of their packed inputs (`im2col_q8`).
            let kc = c4_depth(&self.win);
            let mut wc = vec![0.0; cout * kc];
            reorder_weights_c4(w, cout, &self.win, &mut wc)?;
            Q8Weights::quantize(MatRef::row_major(&wc, cout, kc)?)
        })?;
        for (c, s) in scale.iter_mut().enumerate() {
            *s = wq.scales()[c] * act.scale * epi.scale.map_or(1.0, |e| e[c]);
        }
        if n == 0 {
            return Ok(());
        }
        let q8out = Q8Out { scale, shift: epi.shift, relu: epi.relu };
        let run = Run { wq, act, out: q8out, lanes, taps: taps.as_ref(), cut: (*tile_imgs, *shard_imgs) };
        match (x, dense) {
            (Q8LayerIn::Values(x), true) => self.dense_q8(&run, out, x, packed),
            (Q8LayerIn::Codes(x), true) => self.dense_q8(&run, out, x, packed),
            (Q8LayerIn::Values(x), false) => self.tiles_q8(&run, out, x, None),
            (Q8LayerIn::Codes(x), false) => self.tiles_q8(&run, out, x, None),
            (Q8LayerIn::Laid(x), false) => self.tiles_q8(&run, out, x, input_layout),
            (Q8LayerIn::Laid(_), true) => unreachable!("refused above: the dense layer has no input layout"),
        }
    }

    /// The dense layer: `out^T[cout, n] = Wq[cout, K] * q(X)^T[K, n]`, whole
    /// panels of images per thread, each packing its own (`packed`).
    fn dense_q8<X: Q8Source>(&self, run: &Run<'_>, out: Q8LayerOut<'_>, x: &[X], packed: &mut [u8]) -> Result<()> {
        let (cout, k, n) = (self.spec.cout, self.win.k(), x.len() / self.win.k().max(1));
        let threads = rayon::current_num_threads();
        let part = n.div_ceil(threads).div_ceil(PANEL) * PANEL;
        let panel_bytes = packed_b_len(k, PANEL);
        let parts = packed.par_chunks_mut(part / PANEL * panel_bytes).zip(x.par_chunks(part * k));
        let (wq, act, q8out) = (run.wq, run.act, run.out);
        let pack = |b: &mut [u8], xs: &[X], imgs: usize| pack_bt(xs, k, imgs, act, b);
        match out {
            Q8LayerOut::Values(out) => parts.zip(out.par_chunks_mut(part * cout)).try_for_each(|((b, xs), o)| {
                let imgs = o.len() / cout;
                pack(b, xs, imgs)?;
                let c = MatMut::row_major(o, imgs, cout)?.t();
                gemm_q8(wq, b, imgs, act.zero, q8out, c)
            }),
            // Column j (image j) is codes j * cout .. (j + 1) * cout: images of one column.
            Q8LayerOut::Codes(out, next) => parts.zip(out.par_chunks_mut(part * cout)).try_for_each(|((b, xs), o)| {
                let imgs = o.len() / cout;
                pack(b, xs, imgs)?;
                gemm_q8(wq, b, imgs, act.zero, q8out, Q8Codes { codes: o, act: next, p: 1 })
            }),
            Q8LayerOut::Laid(out, next, layout) => {
                let per = layout.image_len();
                parts.zip(out.par_chunks_mut(part * per)).try_for_each(|((b, xs), o)| {
                    let imgs = o.len() / per;
                    pack(b, xs, imgs)?;
                    gemm_q8(wq, b, imgs, act.zero, q8out, Q8Laid { codes: o, act: next, layout })
                })
            }
        }
    }

    /// The im2col layers, tile by tile: `x` values or codes in NCHW order
    /// (`laid` None), or already in the layout `laid` (read in place).
    fn tiles_q8<X: Q8Source>(&self, run: &Run<'_>, out: Q8LayerOut<'_>, x: &[X], laid: Option<Q8Layout>) -> Result<()> {
        let (cout, p) = (self.spec.cout, self.win.p());
        let in_len = laid.map_or(self.win.in_len(), |l| l.image_len());
        let (wq, act, q8out, taps, cut) = (run.wq, run.act, run.out, run.taps, run.cut);
        // col[Kc, tn*P]: a tile's patch matrix (Kc: the c4 depth, `im2col_q8`), read in
        // place from the codes or gathered into packed panels; C = map(Wq[cout, Kc] * col).
        let gemm = |lane: &mut Lane, xt: &[X], c: Q8Dst<'_>| -> Result<()> {
            let tn = xt.len() / in_len;
            let cols = tn * p;
            // Laid-out codes are what the quantization below would write.
            let ready = laid.and(X::as_codes(xt));
            match taps {
                Some(t) => {
                    let codes = match ready {
                        Some(codes) => codes,
                        None => {
                            for (xi, codes) in xt.chunks_exact(in_len).zip(lane.codes.chunks_exact_mut(t.image_len)) {
                                quantize_phased_c4(xi, act, &self.win, t.phases, codes, &mut lane.planes)?;
                            }
                            &lane.codes[..tn * t.image_len]
                        }
                    };
                    let b = Q8Taps { codes, halves: &t.halves[..2 * cols.div_ceil(PANEL)], steps: &t.steps };
                    gemm_q8_taps(wq, b, cols, act.zero, q8out, c)
                }
                None => {
                    let packed = &mut lane.packed[..packed_b_len(c4_depth(&self.win), cols)];
                    for (j, xi) in xt.chunks_exact(in_len).enumerate() {
                        let codes = match ready {
                            Some(codes) => &codes[j * in_len..(j + 1) * in_len],
                            None => {
                                quantize_padded_c4(xi, act, &self.win, &mut lane.codes, &mut lane.planes)?;
                                &lane.codes[..]
                            }
                        };
                        gather_packed_c4(packed, cols, j * p, codes, &self.win)?;
                    }
                    gemm_q8(wq, packed, cols, act.zero, q8out, c)
                }
            }
        };
        let lanes = run.lanes;
        match out {
            Q8LayerOut::Values(out) => for_each_tile(lanes, x, out, (in_len, cout * p), cut, |lane, xt, o_tile| {
                let tn = xt.len() / in_len;
                if tn == 1 {
                    // out_i[cout, P] = map(Wq[cout, Kc] * col[Kc, P])
                    gemm(lane, xt, MatMut::row_major(o_tile, cout, p)?.into())
                } else {
                    // tmp[cout, tn*P] = map(Wq * col), then un-interleave per image.
                    let mut tmp = std::mem::take(&mut lane.tmp);
                    let r = MatMut::row_major(&mut tmp[..cout * tn * p], cout, tn * p)
                        .and_then(|c| gemm(lane, xt, c.into()));
                    scatter_images(o_tile, &tmp[..cout * tn * p], tn, p);
                    lane.tmp = tmp;
                    r
                }
            }),
            // The codes stores un-interleave the images themselves.
            Q8LayerOut::Codes(out, next) => for_each_tile(lanes, x, out, (in_len, cout * p), cut, |lane, xt, o| {
                gemm(lane, xt, Q8Codes { codes: o, act: next, p }.into())
            }),
            Q8LayerOut::Laid(out, next, layout) => {
                for_each_tile(lanes, x, out, (in_len, layout.image_len()), cut, |lane, xt, o| {
                    gemm(lane, xt, Q8Laid { codes: o, act: next, layout }.into())
                })
            }
        }
    }
}

/// What one int8 call hands its batch loops.
struct Run<'a> {
    wq: &'a Q8Weights,
    act: Q8Act,
    out: Q8Out<'a>,
    lanes: &'a [Mutex<Lane>],
    taps: Option<&'a C4Taps>,
    /// `(tile_imgs, shard_imgs)`.
    cut: (usize, usize),
}
