//! Nearest-neighbour upsampling by 2 followed by a 2x2 stride-1 convolution
//! padded on the bottom and right (Keras 'same': the U-Net's `up -> conv3`),
//! run for inference as four convolutions on the small plane, one per
//! output phase, without the upsampled tensor.
//!
//! With `u[Y][X] = x[Y/2][X/2]` (zero past the last row and column), output
//! pixel `(2i+a, 2j+b)`, `a, b` in {0, 1}, reads through tap `(ky, kx)` the
//! value `u[2i+a+ky][2j+b+kx] = x[i+dy][j+dx]` with `(dy, dx) = ((a+ky)/2,
//! (b+kx)/2)`. Taps of one phase that meet at one offset read one value, so
//! phase `(a, b)` is a convolution of `x` with the summed weights
//!
//! ```text
//!   V_ab[o, c, dy, dx] = sum of W[o, c, ky, kx] over the taps with ((a+ky)/2, (b+kx)/2) = (dy, dx)
//! ```
//!
//! over the offsets it reaches: (0,0) one, (0,1) and (1,0) two, (1,1) four.
//! That is 9 multiply-adds per output channel, input channel and input pixel
//! against the upsampled convolution's 16. The summed weights round once
//! (summed in f64), so outputs differ from the upsampled convolution's by
//! rounding only.
//!
//! Shapes, for a tile of `tn` images of `P = h*w` pixels (`cols = tn*P`,
//! image `j` in columns `j*P..(j+1)*P`):
//!
//! ```text
//!   x    [n, cin, h, w]        weight [cout, cin, 2, 2] (PyTorch layout)
//!   out  [n, cout, 2h, 2w], or each image's part of a wider tensor (`ImageSlot`:
//!        a channel range of a concatenation the executor has it write into)
//!   col  [4*cin, cols]: row block t is x shifted by OFFSETS[t], zero past the edge
//!   tmp_ab[cout, cols] = V_ab[cout, K_ab] * col[rows_ab, cols]   (K_ab = blocks * cin)
//!   out[o][2i+a][2j+b] = epi(tmp_ab[o][i*w+j])
//! ```
//!
//! `OFFSETS` is ordered so each phase's offsets are one contiguous run of
//! row blocks (`BLOCKS`): the phase GEMMs read `col` in place.
//!
//! Backward is the adjoint of the same phases, for a tile:
//!
//! ```text
//!   dtmp_ab[o][i*w+j] = dout[o][2i+a][2j+b]
//!   dV_ab[cout, K_ab] += dtmp_ab * col[rows_ab]^T      then  dW[o,c,ky,kx] += dV_ab at (ky, kx)'s offset, per phase
//!   dcol[rows_ab]     += V_ab^T * dtmp_ab               then  dx[c][i+dy][j+dx] += dcol[t*cin + c][i*w+j]
//!   db[o]             += sum of dout[o]
//! ```
//!
//! with per-shard partials of dV and db summed in shard order (the same
//! bits for any thread count, as `conv2d`). The executor (`models::exec`)
//! runs this layer for an upsampling whose one reader is a fitting block
//! (in eval passes, one running f32).
//!
//! Threads: contiguous shards of images whose size depends on `n` only, one
//! scratch lane per thread; a batch of one shard shares its four phase GEMMs
//! out instead, when they are worth it (`threads::worth_sharing`). Every output is the same sum for any split.

use crate::error::{Error, Result, check_len};
use crate::gemm::{MatMut, MatRef, gemm};
use crate::layers::DxMode;
use crate::layers::conv2d::{
    Conv2dSpec, ConvGrads, Epilogue, MAX_SHARDS, TILE_COLS, for_each_backward_shard, lanes, lock_lane,
};
use crate::layers::prepared::{Prepared, WeightsKey};
use crate::ops::im2col::Padding;
use crate::ops::reduce::add_partials;
use rayon::prelude::*;
use std::sync::Mutex;

/// Input offsets `(dy, dx)` of `col`'s four row blocks.
const OFFSETS: [(usize, usize); 4] = [(0, 1), (0, 0), (1, 0), (1, 1)];
/// Per phase `p = 2a + b`: its run of row blocks of `col`, `lo..hi`.
const BLOCKS: [(usize, usize); 4] = [(1, 2), (0, 2), (1, 3), (0, 4)];
/// The one preparation of the phase weights (`Prepared`'s tag).
const TAG: u8 = 0;

/// Where each image's output goes in `out`: `stride` values per image, the
/// layer's `out_len` of them from `offset` (a channel slice of a wider
/// tensor, e.g. one side of a concatenation; `UpConv::whole` for a tensor
/// of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSlot {
    pub stride: usize,
    pub offset: usize,
}

/// The fused layer, bound to an `h x w` input (the plane before upsampling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpConv {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
}

struct Lane {
    /// `[4*cin, tile columns]`
    col: Vec<f32>,
    /// `[4, cout, tile columns]`: the four phases' GEMM outputs.
    tmp: Vec<f32>,
}

/// Scratch of one `UpConv` for one batch size: the phase weights (prepared
/// once per weight bits) and one lane per thread.
pub struct UpConvWorkspace {
    n: usize,
    layer: UpConv,
    tile_imgs: usize,
    shard_imgs: usize,
    phases: Prepared,
    lanes: Vec<Mutex<Lane>>,
    /// `[shards, phases]` and `[shards, cout]`: per-shard partials of dV
    /// and db (empty until the first backward).
    dv_part: Vec<f32>,
    db_part: Vec<f32>,
    /// `[phases]`: dV summed over the shards.
    dv: Vec<f32>,
}

impl UpConvWorkspace {
    /// As `ConvWorkspace::vouch_weights`: the phase weights are reused
    /// without comparing while `key` stays the key they were made under.
    pub fn vouch_weights(&mut self, key: Option<WeightsKey>) {
        self.phases.vouch(key);
    }
}

impl UpConv {
    /// Whether `spec` is a convolution this layer runs after an upsampling:
    /// 2x2, stride 1, padded by one on the bottom and the right only.
    pub fn fits(spec: &Conv2dSpec) -> bool {
        let pad = Padding { top: 0, left: 0, bottom: 1, right: 1 };
        spec.kh == 2 && spec.kw == 2 && spec.stride == 1 && spec.pad == pad
    }

    /// `spec` (which must fit) after upsampling an `h x w` input.
    pub fn new(spec: &Conv2dSpec, h: usize, w: usize) -> Result<Self> {
        if !Self::fits(spec) {
            return Err(Error::InvalidArgument(format!(
                "upconv: a {}x{} stride-{} convolution padded {:?} is not a 2x2 one padded bottom/right",
                spec.kh, spec.kw, spec.stride, spec.pad
            )));
        }
        if spec.cin == 0 || spec.cout == 0 || h == 0 || w == 0 {
            return Err(Error::Shape(format!("upconv: {} -> {} channels on {h}x{w}", spec.cin, spec.cout)));
        }
        Ok(UpConv { cin: spec.cin, cout: spec.cout, h, w })
    }

    pub fn weight_len(&self) -> usize {
        self.cout * self.cin * 4
    }
    pub fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    pub fn out_len(&self) -> usize {
        self.cout * 4 * self.h * self.w
    }
    /// Each image's output in a tensor of its own.
    pub fn whole(&self) -> ImageSlot {
        ImageSlot { stride: self.out_len(), offset: 0 }
    }

    /// Where phase `p`'s weights `V_p [cout, K_p]` start in the prepared buffer, and `K_p`.
    fn phase_span(&self, p: usize) -> (usize, usize) {
        let blocks = |q: usize| BLOCKS[q].1 - BLOCKS[q].0;
        let start = (0..p).map(|q| self.cout * blocks(q) * self.cin).sum();
        (start, blocks(p) * self.cin)
    }

    fn phases_len(&self) -> usize {
        let (start, k) = self.phase_span(3);
        start + self.cout * k
    }

    /// Calls `f(v, taps)` for every summed weight, in order: `v` its index
    /// in the prepared phase weights (`V_p[o, (t - lo_p)*cin + c]` from
    /// phase p's start), `taps` the indices of the weights `W[o, c, ky, kx]`
    /// summed into it (file header), in weight order.
    fn for_each_sum(&self, mut f: impl FnMut(usize, &[usize])) {
        let cin = self.cin;
        for (p, &(lo, hi)) in BLOCKS.iter().enumerate() {
            let (a, b) = (p / 2, p % 2);
            let (start, k) = self.phase_span(p);
            for o in 0..self.cout {
                for (t, &offset) in OFFSETS.iter().enumerate().take(hi).skip(lo) {
                    for c in 0..cin {
                        let (mut taps, mut len) = ([0; 4], 0);
                        for (ky, kx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            if ((a + ky) / 2, (b + kx) / 2) == offset {
                                taps[len] = ((o * cin + c) * 2 + ky) * 2 + kx;
                                len += 1;
                            }
                        }
                        f(start + o * k + (t - lo) * cin + c, &taps[..len]);
                    }
                }
            }
        }
    }

    /// The four phases' summed weights (file header) into `out`, each summed in f64 and rounded once.
    fn phase_weights(&self, weight: &[f32], out: &mut [f32]) -> Result<()> {
        check_len("upconv weight", weight.len(), self.weight_len())?;
        check_len("upconv phase weights", out.len(), self.phases_len())?;
        self.for_each_sum(|v, taps| out[v] = taps.iter().fold(0.0f64, |s, &w| s + weight[w] as f64) as f32);
        Ok(())
    }

    /// Scratch for batches of `n` images, lanes for the current rayon pool.
    pub fn workspace(&self, n: usize) -> UpConvWorkspace {
        let p = self.h * self.w;
        let tile_imgs = TILE_COLS.div_ceil(p).clamp(1, n.max(1));
        let shard_imgs = crate::threads::part_size(n, MAX_SHARDS, tile_imgs);
        let cols = tile_imgs * p;
        let lanes =
            lanes(n, shard_imgs, || Lane { col: vec![0.0; 4 * self.cin * cols], tmp: vec![0.0; 4 * self.cout * cols] });
        UpConvWorkspace {
            n,
            layer: *self,
            tile_imgs,
            shard_imgs,
            phases: Prepared::new(self.weight_len(), self.phases_len()),
            lanes,
            dv_part: Vec::new(),
            db_part: Vec::new(),
            dv: Vec::new(),
        }
    }

    fn check_workspace(&self, n: usize, ws: &UpConvWorkspace) -> Result<()> {
        if ws.layer != *self || ws.n != n {
            return Err(Error::Shape(format!(
                "upconv: a workspace for {} images of {:?}, called with {n} of {:?}",
                ws.n, ws.layer, self
            )));
        }
        Ok(())
    }

    /// Adds the gradients of `out = conv2x2(upsample(x), weight) + bias`
    /// (`out` in a tensor of its own) for upstream `dout` (file header):
    /// `dweight`, `dbias` and `dx` (`[n, cin, h, w]`, when wanted) are
    /// accumulated into (`+=`), or `dx` written (`grads.dx_mode`).
    pub fn backward(
        &self,
        grads: ConvGrads<'_>,
        dout: &[f32],
        x: &[f32],
        weight: &[f32],
        n: usize,
        ws: &mut UpConvWorkspace,
    ) -> Result<()> {
        let dx_mode = grads.dx_mode;
        self.check_workspace(n, ws)?;
        check_len("upconv x", x.len(), n * self.in_len())?;
        check_len("upconv dout", dout.len(), n * self.out_len())?;
        check_len("upconv weight", weight.len(), self.weight_len())?;
        check_len("upconv weight gradient", grads.dweight.len(), self.weight_len())?;
        if let Some(db) = &grads.dbias {
            check_len("upconv bias gradient", db.len(), self.cout)?;
        }
        if let Some(dx) = &grads.dx {
            check_len("upconv input gradient", dx.len(), n * self.in_len())?;
        }
        if n == 0 {
            return Ok(());
        }
        let (cout, pl) = (self.cout, self.phases_len());
        let shards = n.div_ceil(ws.shard_imgs);
        if ws.dv_part.len() != shards * pl {
            // First backward with this workspace: sized once, reused by every later step.
            ws.dv_part = vec![0.0; shards * pl];
            ws.db_part = vec![0.0; shards * cout];
            ws.dv = vec![0.0; pl];
        }
        let UpConvWorkspace { tile_imgs, shard_imgs, phases, lanes, dv_part, db_part, dv, .. } = ws;
        let v = phases.get(weight, TAG, |w, o| self.phase_weights(w, o))?;
        let (in_len, out_len, si, ti) = (self.in_len(), self.out_len(), *shard_imgs, *tile_imgs);
        let shard = |dvp: &mut [f32], dbp: &mut [f32], mut dxs: Option<&mut [f32]>, xs: &[f32], ds: &[f32]| {
            dvp.fill(0.0);
            dbp.fill(0.0);
            let mut guard = lock_lane(lanes);
            let lane = &mut *guard;
            for (t, (xt, dt)) in xs.chunks(ti * in_len).zip(ds.chunks(ti * out_len)).enumerate() {
                let mut dxt = dxs.as_deref_mut().map(|d| &mut d[t * ti * in_len..][..xt.len()]);
                // Write: the tile's dx zeroed just before its adds, in cache.
                if let (Some(d), DxMode::Write) = (dxt.as_deref_mut(), dx_mode) {
                    d.fill(0.0);
                }
                self.tile_backward(lane, dvp, dbp, dxt, xt, dt, v)?;
            }
            Ok(())
        };
        for_each_backward_shard((dv_part, db_part), (x, dout, grads.dx), (in_len, out_len, si), shard)?;
        // Sum the partials in shard order: deterministic whatever ran where.
        dv.fill(0.0);
        add_partials(dv, dv_part);
        self.fold_phase_grads(grads.dweight, dv);
        if let Some(db) = grads.dbias {
            add_partials(db, db_part);
        }
        Ok(())
    }

    /// One tile's share of backward (file header): `dvp`, `dbp` and `dx` accumulated into.
    #[allow(clippy::too_many_arguments)]
    fn tile_backward(
        &self,
        lane: &mut Lane,
        dvp: &mut [f32],
        dbp: &mut [f32],
        dx: Option<&mut [f32]>,
        x: &[f32],
        dout: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let (cin, cout, p) = (self.cin, self.cout, self.h * self.w);
        let tn = x.len() / self.in_len();
        let cols = tn * p;
        let col = &mut lane.col[..4 * cin * cols];
        self.gather(col, x, cols);
        let tmp = &mut lane.tmp[..4 * cout * cols];
        self.deinterleave(tmp, dout, cols);
        for (q, dt) in tmp.chunks_exact(cout * cols).enumerate() {
            let (lo, hi) = BLOCKS[q];
            let (start, k) = self.phase_span(q);
            // dV_q[cout, K_q] += dtmp_q[cout, cols] * col[lo*cin .. hi*cin, cols]^T
            let d = MatRef::row_major(dt, cout, cols)?;
            let b = MatRef::row_major(&col[lo * cin * cols..hi * cin * cols], k, cols)?;
            gemm(1.0, d, b.t(), 1.0, MatMut::row_major(&mut dvp[start..start + cout * k], cout, k)?)?;
        }
        for (o, db) in dbp.iter_mut().enumerate() {
            for dt in tmp.chunks_exact(cout * cols) {
                *db += dt[o * cols..(o + 1) * cols].iter().sum::<f32>();
            }
        }
        let Some(dx) = dx else { return Ok(()) };
        // dcol = sum over phases of V_q^T * dtmp_q into its rows, written over col (no longer needed).
        col.fill(0.0);
        for (q, dt) in tmp.chunks_exact(cout * cols).enumerate() {
            let (lo, hi) = BLOCKS[q];
            let (start, k) = self.phase_span(q);
            // dcol[lo*cin .. hi*cin, cols] += V_q^T[K_q, cout] * dtmp_q[cout, cols]
            let a = MatRef::row_major(&v[start..start + cout * k], cout, k)?;
            let d = MatRef::row_major(dt, cout, cols)?;
            gemm(1.0, a.t(), d, 1.0, MatMut::row_major(&mut col[lo * cin * cols..hi * cin * cols], k, cols)?)?;
        }
        self.scatter_add(dx, col, cols);
        Ok(())
    }

    /// `tmp_(2a+b)[o][j*P + i*w + jj] = dout_j[o][2i+a][2jj+b]`: the adjoint of `interleave`'s moves.
    fn deinterleave(&self, tmp: &mut [f32], dout: &[f32], cols: usize) {
        let (cout, w, p) = (self.cout, self.w, self.h * self.w);
        for (j, img) in dout.chunks_exact(cout * 4 * p).enumerate() {
            for (o, plane) in img.chunks_exact(4 * p).enumerate() {
                for (i, rows) in plane.chunks_exact(4 * w).enumerate() {
                    for (a, row) in rows.chunks_exact(2 * w).enumerate() {
                        for b in 0..2 {
                            let dst = &mut tmp[((2 * a + b) * cout + o) * cols + j * p + i * w..][..w];
                            for (d, pair) in dst.iter_mut().zip(row.chunks_exact(2)) {
                                *d = pair[b];
                            }
                        }
                    }
                }
            }
        }
    }

    /// `dx_j[c][i+dy][jj+dx] += dcol[t*cin + c][j*P + i*w + jj]` for `(dy, dx) = OFFSETS[t]`
    /// inside the plane: the adjoint of `gather`, row blocks in order.
    fn scatter_add(&self, dx: &mut [f32], dcol: &[f32], cols: usize) {
        let (h, w, p) = (self.h, self.w, self.h * self.w);
        for (t, blk) in dcol.chunks_exact(self.cin * cols).enumerate() {
            let (dy, ddx) = OFFSETS[t];
            for (c, row) in blk.chunks_exact(cols).enumerate() {
                for (j, src) in row.chunks_exact(p).enumerate() {
                    let plane = &mut dx[(j * self.cin + c) * p..(j * self.cin + c + 1) * p];
                    for (i, s) in src.chunks_exact(w).enumerate().take(h - dy) {
                        let d = &mut plane[(i + dy) * w + ddx..(i + dy + 1) * w];
                        for (d, s) in d.iter_mut().zip(&s[..w - ddx]) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }

    /// `dweight += ` the phase gradients `dv` mapped back to the taps they
    /// summed (`phase_weights`' adjoint), phases in order.
    fn fold_phase_grads(&self, dweight: &mut [f32], dv: &[f32]) {
        self.for_each_sum(|v, taps| taps.iter().for_each(|&w| dweight[w] += dv[v]));
    }

    /// `out = epi(conv2x2(upsample(x), weight))` for `n` images (file
    /// header), image `j`'s output at `out[j*slot.stride + slot.offset..]`;
    /// the rest of `out` is not touched.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_fused(
        &self,
        out: &mut [f32],
        slot: ImageSlot,
        x: &[f32],
        weight: &[f32],
        epi: Epilogue<'_>,
        n: usize,
        ws: &mut UpConvWorkspace,
    ) -> Result<()> {
        self.check_workspace(n, ws)?;
        check_len("upconv x", x.len(), n * self.in_len())?;
        if slot.offset + self.out_len() > slot.stride {
            return Err(Error::Shape(format!(
                "upconv: {} values from {} do not fit images of {}",
                self.out_len(),
                slot.offset,
                slot.stride
            )));
        }
        check_len("upconv out", out.len(), n * slot.stride)?;
        check_len("upconv weight", weight.len(), self.weight_len())?;
        epi.check(self.cout)?;
        if n == 0 {
            return Ok(());
        }
        let UpConvWorkspace { tile_imgs, shard_imgs, phases, lanes, .. } = ws;
        let v = phases.get(weight, TAG, |w, o| self.phase_weights(w, o))?;
        let (in_len, out_len) = (self.in_len(), slot.stride);
        // The four phases' GEMMs: cout x (cin * 9 taps) x (h * w) per image in all.
        let macs = self.cout * self.cin * 9 * self.h * self.w;
        let split = n.div_ceil(*shard_imgs) == 1 && crate::threads::worth_sharing(macs);
        x.par_chunks(*shard_imgs * in_len).zip(out.par_chunks_mut(*shard_imgs * out_len)).try_for_each(|(xs, os)| {
            let mut guard = lock_lane(lanes);
            let lane = &mut *guard;
            for (xt, ot) in xs.chunks(*tile_imgs * in_len).zip(os.chunks_mut(*tile_imgs * out_len)) {
                self.tile(lane, ot, slot, xt, v, epi, split)?;
            }
            Ok(())
        })
    }

    /// One tile of `tn = x.len() / in_len` images.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        lane: &mut Lane,
        out: &mut [f32],
        slot: ImageSlot,
        x: &[f32],
        v: &[f32],
        epi: Epilogue<'_>,
        split: bool,
    ) -> Result<()> {
        let (cin, cout, p) = (self.cin, self.cout, self.h * self.w);
        let tn = x.len() / self.in_len();
        let cols = tn * p;
        let col = &mut lane.col[..4 * cin * cols];
        self.gather(col, x, cols);
        let col = &*col;
        let tmp = &mut lane.tmp[..4 * cout * cols];
        let phase = |(q, c): (usize, &mut [f32])| -> Result<()> {
            let (lo, hi) = BLOCKS[q];
            let (start, k) = self.phase_span(q);
            // tmp_q[cout, cols] = V_q[cout, K_q] * col[lo*cin .. hi*cin, cols]
            let a = MatRef::row_major(&v[start..start + cout * k], cout, k)?;
            let b = MatRef::row_major(&col[lo * cin * cols..hi * cin * cols], k, cols)?;
            gemm(1.0, a, b, 0.0, MatMut::row_major(c, cout, cols)?)
        };
        if split {
            tmp.par_chunks_mut(cout * cols).enumerate().try_for_each(phase)?;
        } else {
            tmp.chunks_mut(cout * cols).enumerate().try_for_each(phase)?;
        }
        self.interleave(out, slot, tmp, cols, epi);
        Ok(())
    }

    /// `col[t*cin + c, j*P + i*w + jj] = x_j[c][i+dy][jj+dx]` for `(dy, dx) = OFFSETS[t]`, 0 past the edge.
    fn gather(&self, col: &mut [f32], x: &[f32], cols: usize) {
        let (h, w, p) = (self.h, self.w, self.h * self.w);
        for (t, blk) in col.chunks_exact_mut(self.cin * cols).enumerate() {
            let (dy, dx) = OFFSETS[t];
            for (c, row) in blk.chunks_exact_mut(cols).enumerate() {
                for (j, dst) in row.chunks_exact_mut(p).enumerate() {
                    let plane = &x[(j * self.cin + c) * p..(j * self.cin + c + 1) * p];
                    for (i, d) in dst.chunks_exact_mut(w).enumerate() {
                        if i + dy >= h {
                            d.fill(0.0);
                            continue;
                        }
                        let s = &plane[(i + dy) * w + dx..(i + dy + 1) * w];
                        d[..w - dx].copy_from_slice(s);
                        d[w - dx..].fill(0.0);
                    }
                }
            }
        }
    }

    /// `out_j[o][2i+a][2jj+b] = epi(tmp_(2a+b)[o][j*P + i*w + jj])`, compiled
    /// for the widest vectors of `gemm::best_kernel` (moves, and the
    /// epilogue's multiply and add unfused: the same bits at any width; the
    /// baseline build's SSE made it a third of the layer).
    fn interleave(&self, out: &mut [f32], slot: ImageSlot, tmp: &[f32], cols: usize, epi: Epilogue<'_>) {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::gemm::{Kernel, best_kernel};
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(
                l: &UpConv,
                out: &mut [f32],
                slot: ImageSlot,
                tmp: &[f32],
                cols: usize,
                epi: Epilogue<'_>,
            ) {
                l.interleave_body(out, slot, tmp, cols, epi)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(l: &UpConv, out: &mut [f32], slot: ImageSlot, tmp: &[f32], cols: usize, epi: Epilogue<'_>) {
                l.interleave_body(out, slot, tmp, cols, epi)
            }
            match best_kernel() {
                // SAFETY: best_kernel() is a kernel this CPU runs, so it has avx512f.
                Kernel::Avx512 => return unsafe { avx512(self, out, slot, tmp, cols, epi) },
                // SAFETY: as above, avx2 and fma.
                Kernel::Avx2Fma => return unsafe { avx2(self, out, slot, tmp, cols, epi) },
                _ => {}
            }
        }
        self.interleave_body(out, slot, tmp, cols, epi)
    }

    #[inline(always)]
    fn interleave_body(&self, out: &mut [f32], slot: ImageSlot, tmp: &[f32], cols: usize, epi: Epilogue<'_>) {
        let (cout, w, p) = (self.cout, self.w, self.h * self.w);
        let ph = |q: usize, o: usize, j: usize| &tmp[(q * cout + o) * cols + j * p..][..p];
        for (j, img) in out.chunks_mut(slot.stride).enumerate() {
            let img = &mut img[slot.offset..slot.offset + cout * 4 * p];
            for (o, plane) in img.chunks_exact_mut(4 * p).enumerate() {
                for (i, rows) in plane.chunks_exact_mut(4 * w).enumerate() {
                    for (a, row) in rows.chunks_exact_mut(2 * w).enumerate() {
                        let (even, odd) = (&ph(2 * a, o, j)[i * w..][..w], &ph(2 * a + 1, o, j)[i * w..][..w]);
                        // Blocks of 8 pairs built in an array, which compiles to
                        // shuffles; element by element the loop stayed scalar.
                        let (rb, rt) = row.split_at_mut(16 * (w / 8));
                        for ((r, e), d) in rb.chunks_exact_mut(16).zip(even.chunks_exact(8)).zip(odd.chunks_exact(8)) {
                            let mut t = [0.0f32; 16];
                            for k in 0..8 {
                                t[2 * k] = e[k];
                                t[2 * k + 1] = d[k];
                            }
                            r.copy_from_slice(&t);
                        }
                        let done = w / 8 * 8;
                        for (k, pair) in rt.chunks_exact_mut(2).enumerate() {
                            pair[0] = even[done + k];
                            pair[1] = odd[done + k];
                        }
                    }
                }
                epi.apply(o, plane);
            }
        }
    }
}
