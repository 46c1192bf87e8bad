//! Winograd convolution: 3x3 kernel, stride 1, zero padding 1 on every side
//! (output size = input size), forward (with a fused epilogue) and
//! backward-data, in two tilings:
//! - [`Winograd`] (`f2.rs`): F(2x2, 3x3), 16 GEMMs per 2x2 output tile, used by training,
//!   which also takes its weight gradient in the transformed domain (`backward_weight`);
//! - [`Winograd4`] (`f4.rs`): F(4x4, 3x3), 36 GEMMs per 4x4 output tile, used by inference;
//!
//! and a forward-only tiling at stride 2 (padding 0 or 1 per side; its own
//! public API in `s2.rs`, the output smaller than the input):
//! - [`WinogradS2`] (`s2.rs`): 25 GEMMs per 2x2 output tile, used by inference.
//!
//! Each tiling implements the `Tiling` trait (its input and output tile
//! transforms, `G`, its group sizes, its output size); everything else lives here, once: the
//! public API (`winograd_layer!`: geometry, workspace, `new`, `workspace`,
//! `forward`, `forward_fused`, `backward_data`), the checks, the workspace, the
//! driver (`run_pass`: transforms, then the GEMMs
//! `M[xi][co][t] = sum_ci U[xi][co][ci] V[xi][ci][t]`,
//! one per transformed-tile element xi), lanes and the weight transform's loop.
//!
//! Threads: as in `conv2d`, the batch is cut into shards whose size depends on n
//! only, and each shard into groups of images whose tiles share one set of GEMMs
//! (at least `TILE_COLS` columns when images are small). A batch that is one
//! shard (one patch, or a few small images) shares out its work instead: the
//! plane transforms in tasks of whole channels, each on its thread's
//! `PlaneScratch` and writing only its channels' rows of every V[xi] (the
//! `xi_slots` of the task), then the XI products, then the output planes.
//! Every value is the same sequence of operations whatever the thread count,
//! so results are bit-identical for any pool. All scratch lives in the
//! workspace (one lane per pool thread): calls allocate nothing.

mod f2;
mod f4;
mod s2;

pub use f2::{Winograd, WinogradWorkspace};
pub use f4::{Winograd4, Winograd4Workspace};
pub use s2::{WinogradS2, WinogradS2Workspace};

use crate::error::{Error, Result, check_len};
use crate::gemm::{MatMut, MatRef, best_kernel, gemm, gemm_packed_a, pack_a, packed_a_len, prefetch_l2};
use crate::layers::DxMode;
use crate::layers::prepared::Prepared;
use crate::ops::epilogue::Epilogue;
use crate::ops::reduce::add_partials;
use rayon::prelude::*;
use std::sync::Mutex;

/// GEMM columns (2x2 tiles) a group of images aims for.
const TILE_COLS: usize = 256;
/// Width of the AVX-512 GEMM micro-tile (a multiple of the other kernels' 16):
/// groups whose tile count is a multiple of it leave no ragged column panel.
const PANEL: usize = 48;
/// Upper bound on the number of batch shards.
const MAX_SHARDS: usize = 32;
/// Most GEMMs per tile of any tiling (F(4x4, 3x3)'s 36).
const MAX_XI: usize = 36;
/// Most tasks the plane transforms of one group are shared out in (see
/// `run_pass`).
const MAX_PLANE_TASKS: usize = 8;

/// The distance, in values, between consecutive XI blocks of V and M that
/// hold `len` values each: the least `>= len` that is 16 (one cache line)
/// more than a multiple of 1024 (4 KiB). The transforms touch the same
/// offset of every block at once; blocks of `c * T` values are often
/// multiples of 4 KiB apart, which put all of those lines in one set of L1
/// (8 or 12 ways for 16 to 36 blocks). One line more per block spreads them
/// over as many sets.
fn xi_block(len: usize) -> usize {
    len + (16 + 1024 - len % 1024) % 1024
}

/// Per-shard partials of the weight gradient (`backward_weight`).
#[derive(Default)]
pub(super) struct GradParts {
    /// [shards][cout][cin][3][3]
    dw: Vec<f32>,
    /// [shards][cout]
    db: Vec<f32>,
}

/// Declares a stride-1 Winograd layer: the geometry `$geom` (public `cin`,
/// `cout`, `h`, `w`), its scratch `$ws`, and their public API (`new`,
/// `backward_data` and `winograd_forward_api!`), which runs the generic code
/// of this module over `$geom`'s `Tiling` (written by the invoking module).
macro_rules! winograd_layer {
    ($(#[$geom_attr:meta])* pub struct $geom:ident; $(#[$ws_attr:meta])* pub struct $ws:ident;) => {
        $(#[$geom_attr])*
        ///
        /// Geometry: cin -> cout channels, 3x3 kernel, stride 1, padding 1, h x w input and output.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $geom {
            pub cin: usize,
            pub cout: usize,
            pub h: usize,
            pub w: usize,
        }

        $(#[$ws_attr])*
        pub struct $ws($crate::layers::winograd::Workspace<$geom>);

        $crate::layers::winograd::winograd_forward_api!($geom, $ws);

        impl $geom {
            /// Errors on any zero size.
            pub fn new(cin: usize, cout: usize, h: usize, w: usize) -> $crate::error::Result<Self> {
                $crate::layers::winograd::check_sizes::<Self>(cin, cout, h, w)?;
                Ok($geom { cin, cout, h, w })
            }

            /// `dx[n, cin, h, w] +=` (or `=`, by `mode`) the adjoint of `forward`
            /// (without bias) applied to `dout[n, cout, h, w]`.
            pub fn backward_data(
                &self,
                (dx, mode): (&mut [f32], $crate::layers::DxMode),
                dout: &[f32],
                weight: &[f32],
                n: usize,
                ws: &mut $ws,
            ) -> $crate::error::Result<()> {
                ws.0.backward_data(self, (dx, mode), dout, weight, n)
            }
        }
    };
}
pub(super) use winograd_layer;

/// The forward half of every Winograd layer's public API, for a geometry
/// `$geom` (a `Tiling`) and its scratch `$ws` (a tuple struct around
/// `Workspace<$geom>`): `workspace`, `forward`, `forward_fused`.
macro_rules! winograd_forward_api {
    ($geom:ident, $ws:ident) => {
        impl $ws {
            /// Vouches for the weights of later calls (`layers::prepared`):
            /// while `key` is the key of the held transform, it is reused
            /// without comparing the weights.
            pub(crate) fn vouch_weights(&mut self, key: Option<$crate::layers::prepared::WeightsKey>) {
                self.0.u.vouch(key);
            }
        }

        impl $geom {
            /// Scratch for batches of `n` images, with one lane per thread of the
            /// current rayon pool (call it inside the pool that will run the layer).
            pub fn workspace(&self, n: usize) -> $ws {
                $ws($crate::layers::winograd::Workspace::new(*self, n))
            }

            /// `out[n, cout, ho, wo] = conv(x, weight) + bias` (this layer's 3x3
            /// convolution); `out` is overwritten.
            pub fn forward(
                &self,
                out: &mut [f32],
                x: &[f32],
                weight: &[f32],
                bias: Option<&[f32]>,
                n: usize,
                ws: &mut $ws,
            ) -> $crate::error::Result<()> {
                ws.0.forward(self, out, x, weight, bias, n)
            }

            /// `out = epi(conv(x, weight))`: the epilogue runs on each output
            /// plane right after its transform, while it is in L1.
            pub fn forward_fused(
                &self,
                out: &mut [f32],
                x: &[f32],
                weight: &[f32],
                epi: $crate::layers::conv2d::Epilogue<'_>,
                n: usize,
                ws: &mut $ws,
            ) -> $crate::error::Result<()> {
                ws.0.forward_fused(self, out, x, weight, epi, n)
            }
        }
    };
}
pub(super) use winograd_forward_api;

/// One thread's scratch (sizes from the `Tiling`).
pub(super) struct Lane {
    /// The plane transforms' scratch.
    planes: PlaneScratch,
    /// [XI][c][T]: transformed input tiles of one group (c = cin or cout),
    /// the XI blocks `xi_block(c * T)` values apart.
    v: Vec<f32>,
    /// [XI][c][T]: their products with U, laid out as `v`.
    m: Vec<f32>,
    /// [XI][cout][cin]: the weight gradient in the transformed domain of one
    /// shard (`backward_weight`; every lane's sized by its first call).
    du: Vec<f32>,
}

/// One thread's scratch for the plane transforms: each lane's, and one per
/// thread for a group whose planes are shared out (a batch of one shard:
/// `run_pass`).
struct PlaneScratch {
    /// One zero-padded plane cut by row and column residue mod M (the output
    /// tile side): [r % M][c % M][th + 1][tw + 1]. The border is zeroed at
    /// allocation and never written.
    pad: Vec<f32>,
    /// Transform temporaries (`Tiling::rows_len`).
    rows: Vec<f32>,
}

impl PlaneScratch {
    fn new(pad: usize, rows: usize) -> PlaneScratch {
        PlaneScratch { pad: vec![0.0; pad], rows: vec![0.0; rows] }
    }

    /// One per thread of the current pool when a batch of `n` is one shard
    /// of `shard_imgs` and the pool has several threads; none otherwise.
    fn for_pool(n: usize, shard_imgs: usize, pad: usize, rows: usize) -> Vec<Mutex<PlaneScratch>> {
        let threads = rayon::current_num_threads();
        if n == 0 || n > shard_imgs || threads == 1 {
            return Vec::new();
        }
        (0..threads).map(|_| Mutex::new(PlaneScratch::new(pad, rows))).collect()
    }
}

impl Lane {
    /// `threads` lanes (capped by the shard count of a batch of `n`) with buffers of the given lengths.
    fn lanes(n: usize, shard_imgs: usize, pad: usize, rows: usize, big: usize) -> Vec<Mutex<Lane>> {
        if n == 0 {
            return Vec::new();
        }
        (0..rayon::current_num_threads().min(n.div_ceil(shard_imgs)))
            .map(|_| {
                Mutex::new(Lane {
                    planes: PlaneScratch::new(pad, rows),
                    v: vec![0.0; big],
                    m: vec![0.0; big],
                    du: Vec::new(),
                })
            })
            .collect()
    }
}

/// Scratch of one Winograd layer of tiling `T` for one batch size (wrapped by
/// the public workspace types).
pub(super) struct Workspace<T> {
    n: usize,
    geom: T,
    shard_imgs: usize,
    group_imgs: usize,
    /// [cout][cin][3][3] weights -> [XI][cout][cin] (forward, tag 0) or
    /// [XI][cin][cout] (backward_data, tag 1): their transform, each of the
    /// XI matrices packed for the GEMM's A operand (`gemm::pack_a`, slots of
    /// `packed` values), redone only when the weights change
    /// (`layers::prepared`). Packing once per weight change rather than in
    /// every GEMM call was a fifth of a one-patch HardNet forward.
    u: Prepared,
    /// The transform before packing: [XI][cout][cin] or [XI][cin][cout].
    u_raw: Vec<f32>,
    /// Values per packed matrix: the larger of the two orientations.
    packed: usize,
    lanes: Vec<Mutex<Lane>>,
    /// Scratch of the shared-out plane transforms (`PlaneScratch::for_pool`).
    planes: Vec<Mutex<PlaneScratch>>,
    /// Sized by the first `backward_weight`, reused by every later one.
    parts: GradParts,
}

impl<T: Tiling> Workspace<T> {
    /// Scratch for batches of `n` images of `geom`, one lane per thread of the current pool.
    pub(super) fn new(geom: T, n: usize) -> Self {
        let (cin, cout) = geom.channels();
        let (th, tw) = geom.tiles();
        let p = th * tw;
        let group_imgs = geom.group_imgs(n);
        let shard_imgs = crate::threads::part_size(n, MAX_SHARDS, group_imgs).next_multiple_of(group_imgs);
        let big = T::XI * xi_block(cin.max(cout) * group_imgs * p);
        let lanes = Lane::lanes(n, shard_imgs, geom.pad_len(), geom.rows_len(), big);
        let planes = PlaneScratch::for_pool(n, shard_imgs, geom.pad_len(), geom.rows_len());
        let kernel = best_kernel();
        let packed = packed_a_len(kernel, cout, cin).max(packed_a_len(kernel, cin, cout));
        let u = Prepared::new(cout * cin * 9, T::XI * packed);
        let u_raw = vec![0.0; T::XI * cin * cout];
        Workspace { n, geom, shard_imgs, group_imgs, u, u_raw, packed, lanes, planes, parts: GradParts::default() }
    }

    /// See the public `forward`.
    pub(super) fn forward(
        &mut self,
        geom: &T,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
    ) -> Result<()> {
        let (cin, cout) = geom.channels();
        let (src, dst) = (("winograd input", x.len(), cin), ("winograd output", out.len(), cout));
        check_call(geom, n, src, dst, weight.len(), (geom.plane(), geom.out_plane()))?;
        if let Some(b) = bias {
            check_len("winograd bias", b.len(), cout)?;
        }
        self.forward_fused(geom, out, x, weight, Epilogue { scale: None, shift: bias, relu: false }, n)
    }

    /// See the public `forward_fused`.
    pub(super) fn forward_fused(
        &mut self,
        geom: &T,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        epi: Epilogue<'_>,
        n: usize,
    ) -> Result<()> {
        let (cin, cout) = geom.channels();
        let (src, dst) = (("winograd input", x.len(), cin), ("winograd output", out.len(), cout));
        let planes = (geom.plane(), geom.out_plane());
        check_call(geom, n, src, dst, weight.len(), planes)?;
        epi.check(cout)?;
        self.check(geom, n)?;
        if n == 0 {
            return Ok(());
        }
        let (raw, packed) = (&mut self.u_raw, self.packed);
        let u = self.u.get(weight, 0, |w, u| prepare(geom, raw, u, packed, w, false))?;
        let pass = Pass { cs: cin, cd: cout, u, packed, epi, accumulate: false, planes };
        run_pass(geom, &pass, out, x, (self.shard_imgs, self.group_imgs), (&self.lanes, &self.planes))
    }

    /// See the public `backward_data`.
    pub(super) fn backward_data(
        &mut self,
        geom: &T,
        (dx, mode): (&mut [f32], DxMode),
        dout: &[f32],
        weight: &[f32],
        n: usize,
    ) -> Result<()> {
        let (cin, cout) = geom.channels();
        let (src, dst) = (("winograd output gradient", dout.len(), cout), ("winograd input gradient", dx.len(), cin));
        let planes = (geom.out_plane(), geom.plane());
        check_call(geom, n, src, dst, weight.len(), planes)?;
        self.check(geom, n)?;
        if n == 0 {
            return Ok(());
        }
        let (raw, packed) = (&mut self.u_raw, self.packed);
        let u = self.u.get(weight, 1, |w, u| prepare(geom, raw, u, packed, w, true))?;
        let accumulate = mode == DxMode::Add;
        let pass = Pass { cs: cout, cd: cin, u, packed, epi: Epilogue::default(), accumulate, planes };
        run_pass(geom, &pass, dx, dout, (self.shard_imgs, self.group_imgs), (&self.lanes, &self.planes))
    }

    /// See `Winograd::backward_weight`: per shard, the transformed-domain
    /// gradient dU, then G^T dU G into the shard's partial; the partials are
    /// summed in shard order (the same bits for any thread count).
    pub(super) fn backward_weight(
        &mut self,
        geom: &T,
        dweight: &mut [f32],
        dbias: Option<&mut [f32]>,
        x: &[f32],
        dout: &[f32],
        n: usize,
    ) -> Result<()>
    where
        T: WeightGrad,
    {
        let (cin, cout) = geom.channels();
        check_call(
            geom,
            n,
            ("winograd input", x.len(), cin),
            ("winograd output gradient", dout.len(), cout),
            dweight.len(),
            (geom.plane(), geom.out_plane()),
        )?;
        if let Some(db) = &dbias {
            check_len("winograd bias gradient", db.len(), cout)?;
        }
        self.check(geom, n)?;
        if n == 0 {
            return Ok(());
        }
        let (wlen, shards) = (cout * cin * 9, n.div_ceil(self.shard_imgs));
        if self.parts.dw.len() != shards * wlen {
            self.parts = GradParts { dw: vec![0.0; shards * wlen], db: vec![0.0; shards * cout] };
            // Every lane's dU now, not when a thread first takes that lane:
            // which thread runs which shard varies from step to step.
            for lane in &self.lanes {
                lane.lock().unwrap_or_else(|e| e.into_inner()).du = vec![0.0; T::XI * cout * cin];
            }
        }
        run_weight_pass(geom, &mut self.parts.dw, x, dout, (self.shard_imgs, self.group_imgs), &self.lanes)?;
        add_partials(dweight, &self.parts.dw);
        // Only a layer with a bias pays for the serial sums of dout.
        if let Some(db) = dbias {
            let shard_len = self.shard_imgs * cout * geom.out_plane();
            self.parts.db.par_chunks_mut(cout).zip(dout.par_chunks(shard_len)).for_each(|(dbp, ds)| {
                dbp.fill(0.0);
                for img in ds.chunks_exact(cout * geom.out_plane()) {
                    for (db, d_plane) in dbp.iter_mut().zip(img.chunks_exact(geom.out_plane())) {
                        *db += d_plane.iter().sum::<f32>();
                    }
                }
            });
            add_partials(db, &self.parts.db);
        }
        Ok(())
    }

    /// Errors unless this workspace was made for `n` images of `geom`.
    fn check(&self, geom: &T, n: usize) -> Result<()> {
        if self.n != n || self.geom != *geom {
            return Err(Error::Shape(format!(
                "winograd workspace was sized for {} images of {:?}; this call has {n} images of {:?}",
                self.n, self.geom, geom
            )));
        }
        Ok(())
    }
}

/// The weights' transform (`rotated`: for `backward_data`) into `raw`, then
/// each of its XI `[cd][cs]` matrices packed into its `packed`-value slot of `u`.
fn prepare<T: Tiling>(geom: &T, raw: &mut [f32], u: &mut [f32], packed: usize, w: &[f32], rotated: bool) -> Result<()> {
    geom.transform_weights(raw, w, rotated);
    let (cin, cout) = geom.channels();
    let (cd, cs) = if rotated { (cin, cout) } else { (cout, cin) };
    let kernel = best_kernel();
    let len = packed_a_len(kernel, cd, cs);
    for (r, slot) in raw.chunks_exact(cd * cs).zip(u.chunks_exact_mut(packed)) {
        pack_a(kernel, MatRef::row_major(r, cd, cs)?, &mut slot[..len])?;
    }
    Ok(())
}

/// Errors on any zero size (`new` of a `T` layer).
pub(super) fn check_sizes<T: Tiling>(cin: usize, cout: usize, h: usize, w: usize) -> Result<()> {
    if cin == 0 || cout == 0 || h == 0 || w == 0 {
        return Err(Error::InvalidArgument(format!(
            "{} convolution needs non-zero sizes, got cin {cin}, cout {cout}, {h}x{w}",
            T::NAME
        )));
    }
    Ok(())
}

/// Errors unless `src` and `dst` hold `n` images of their channel counts and
/// `planes` (pixels per src, dst plane), and `weight` is [cout, cin, 3, 3].
fn check_call<T: Tiling>(
    geom: &T,
    n: usize,
    src: (&str, usize, usize),
    dst: (&str, usize, usize),
    weight: usize,
    planes: (usize, usize),
) -> Result<()> {
    let (cin, cout) = geom.channels();
    check_len(src.0, src.1, n * src.2 * planes.0)?;
    check_len(dst.0, dst.1, n * dst.2 * planes.1)?;
    check_len("winograd weight", weight, cout * cin * 9)
}

/// What one pass runs: `dst[cd] = epi(conv(src[cs]))` (forward) or
/// `dst[cd] += conv(src[cs])` (backward), with transformed weights `u` [XI][cd][cs].
struct Pass<'a> {
    cs: usize,
    cd: usize,
    /// XI packed `[cd][cs]` matrices, one per slot of `packed` values.
    u: &'a [f32],
    packed: usize,
    epi: Epilogue<'a>,
    accumulate: bool,
    /// Pixels of one src plane and of one dst plane.
    planes: (usize, usize),
}

/// A Winograd tiling F(M x M, 3x3) of a layer: F(2x2, 3x3) here, F(4x4, 3x3) in
/// `f4`. What differs between the two; the rest is generic over it.
pub(super) trait Tiling: Copy + PartialEq + std::fmt::Debug + Sync {
    /// Side of an output tile.
    const M: usize;
    /// Elements of a transformed tile, (M + 2)^2 at stride 1: the number of GEMMs.
    const XI: usize = (Self::M + 2) * (Self::M + 2);
    /// The layer's name in error messages.
    const NAME: &'static str;
    /// (cin, cout, h, w).
    fn sizes(&self) -> [usize; 4];
    /// Scratch `rows` of a lane (the transforms' temporaries).
    fn rows_len(&self) -> usize;
    /// Images per GEMM group for a batch of `n`.
    fn group_imgs(&self, n: usize) -> usize;
    /// u[xi][r][c] = (G g G^T)[xi] in f64, where for weight [cout, cin, 3, 3]:
    /// forward (r, c) = (co, ci), g = w[co][ci]; rotated (r, c) = (ci, co), g = rot180(w[co][ci]).
    fn transform_weights(&self, u: &mut [f32], weight: &[f32], rotated: bool);
    /// v[xi][base + tile] = (B^T d B)[xi] for every tile of plane `x`
    /// (`v[xi]`: the part of GEMM xi's operand that holds the plane's channel).
    fn input_transform(&self, v: &mut [&mut [f32]], base: usize, x: &[f32], pad: &mut [f32], rows: &mut [f32]);
    /// Runs once per group on all of M (`xi_stride` = channels * tiles values
    /// per xi) before the per-plane `output_transform`s: a tiling may apply
    /// the first half of A^T . A there, in place, over long contiguous rows
    /// instead of one plane's tiles at a time. Nothing by default.
    fn output_rows(&self, _m: &mut [f32], _xi_stride: usize) {}
    /// Plane `y` (=|+=) A^T m A from m[xi * xi_stride + base + tile], clipped to h x w.
    fn output_transform(
        &self,
        y: &mut [f32],
        m: &[f32],
        base: usize,
        xi_stride: usize,
        accumulate: bool,
        rows: &mut [f32],
    );

    /// (cin, cout).
    fn channels(&self) -> (usize, usize) {
        let [cin, cout, _, _] = self.sizes();
        (cin, cout)
    }
    /// Pixels of one input plane (h * w).
    fn plane(&self) -> usize {
        let [_, _, h, w] = self.sizes();
        h * w
    }
    /// Output rows and columns (the input's at stride 1).
    fn out_sizes(&self) -> (usize, usize) {
        let [_, _, h, w] = self.sizes();
        (h, w)
    }
    /// Pixels of one output plane.
    fn out_plane(&self) -> usize {
        let (ho, wo) = self.out_sizes();
        ho * wo
    }
    /// Tile rows and columns: ceil(ho/M) x ceil(wo/M).
    fn tiles(&self) -> (usize, usize) {
        let (ho, wo) = self.out_sizes();
        (ho.div_ceil(Self::M), wo.div_ceil(Self::M))
    }
    /// Scratch `pad` of a lane: one zero-padded input plane cut by row and
    /// column residue mod M, [M][M][th + 1][tw + 1].
    fn pad_len(&self) -> usize {
        let (th, tw) = self.tiles();
        Self::M * Self::M * (th + 1) * (tw + 1)
    }
}

/// Runs `pass` over a batch: src [n, cs, h, w] -> dst [n, cd, h, w], shards of
/// `si` images in parallel, groups of `g` images per set of GEMMs.
fn run_pass<T: Tiling>(
    tiling: &T,
    pass: &Pass<'_>,
    dst: &mut [f32],
    src: &[f32],
    (si, g): (usize, usize),
    (lanes, planes): (&[Mutex<Lane>], &[Mutex<PlaneScratch>]),
) -> Result<()> {
    let (th, tw) = tiling.tiles();
    let (p, nxi) = (th * tw, T::XI);
    let (cs, cd, u) = (pass.cs, pass.cd, pass.u);
    let kernel = best_kernel();
    let len = packed_a_len(kernel, cd, cs);
    let (in_len, out_len) = (cs * pass.planes.0, cd * pass.planes.1);
    // One shard for several threads (a batch of one patch): the XI
    // independent products are shared out instead, and so are the planes'
    // transforms (each on the scratch of the thread that runs it). Only with
    // one shard: a thread waiting on them may run another queued task, and
    // another shard would lock this thread's lane again.
    let split = src.len().div_ceil(si * in_len) == 1 && rayon::current_num_threads() > 1 && !planes.is_empty();
    // Channels per plane task when shared out: four tasks per thread, for
    // balance (on one patch, two per thread ran HardNet and DnCNN 3-11%
    // slower, one per thread slower again, eight no faster:
    // `bench/results/ab-plane-tasks-2026-12-07.txt`).
    let chunk = |c: usize| c.div_ceil((4 * rayon::current_num_threads()).min(MAX_PLANE_TASKS));
    src.par_chunks(si * in_len).zip(dst.par_chunks_mut(si * out_len)).try_for_each(|(xs, os)| {
        let mut guard = lock_lane(lanes);
        let lane = &mut *guard;
        let imgs = xs.len() / in_len;
        for g0 in (0..imgs).step_by(g) {
            let gn = g.min(imgs - g0);
            let t = gn * p;
            let (vs, ms) = (xi_block(cs * t), xi_block(cd * t));
            let v = &mut lane.v[..nxi * vs];
            let group = (&xs[g0 * in_len..(g0 + gn) * in_len], pass.planes.0);
            if split {
                let cc = chunk(cs);
                let tasks = xi_slots::<MAX_PLANE_TASKS>(v, vs, cc * t);
                tasks.into_par_iter().take(cs.div_ceil(cc)).enumerate().for_each(|(k, mut slots)| {
                    let mut s = lock_lane(planes);
                    let s = &mut *s;
                    let chans = k * cc..cs.min((k + 1) * cc);
                    transform_planes(tiling, &mut slots[..nxi], group, (cs, chans), s);
                });
            } else {
                transform_group(tiling, v, nxi, group, cs, &mut lane.planes);
            }
            let m = &mut lane.m[..nxi * ms];
            // M[xi][cd, t] = U[xi][cd, cs] * V[xi][cs, t], U[xi] packed in its slot.
            let product = |(xi, (mx, vx)): (usize, (&mut [f32], &[f32]))| -> Result<()> {
                let a = &u[xi * pass.packed..xi * pass.packed + len];
                gemm_packed_a(
                    kernel,
                    1.0,
                    a,
                    (cd, cs),
                    MatRef::row_major(&vx[..cs * t], cs, t)?,
                    0.0,
                    MatMut::row_major(&mut mx[..cd * t], cd, t)?,
                )
            };
            if split {
                let (mp, vp) = (m.par_chunks_mut(ms), v.par_chunks(vs));
                mp.zip(vp).enumerate().try_for_each(product)?;
            } else {
                m.chunks_mut(ms).zip(v.chunks(vs)).enumerate().try_for_each(product)?;
            }
            tiling.output_rows(m, ms);
            let (m, outs) = (&*m, &mut os[g0 * out_len..(g0 + gn) * out_len]);
            if split {
                // Whole planes per task, about as many tasks as for the input.
                let per = chunk(cd) * pass.planes.1;
                outs.par_chunks_mut(per).enumerate().for_each(|(k, part)| {
                    let mut s = lock_lane(planes);
                    output_planes(tiling, pass, (part, k * per / pass.planes.1), m, (t, ms), &mut s.rows);
                });
            } else {
                output_planes(tiling, pass, (outs, 0), m, (t, ms), &mut lane.planes.rows);
            }
        }
        Ok(())
    })
}

/// Planes `first ..` of a group's output, `outs` ([planes][plane], plane i
/// of the group = channel i % cd of image i / cd): each the output transform
/// of its tiles in `m` ([XI][cd][T], T tiles), then the epilogue.
fn output_planes<T: Tiling>(
    tiling: &T,
    pass: &Pass<'_>,
    (outs, first): (&mut [f32], usize),
    m: &[f32],
    (t, ms): (usize, usize),
    rows: &mut [f32],
) {
    let (th, tw) = tiling.tiles();
    let (p, cd, plane) = (th * tw, pass.cd, pass.planes.1);
    for i in 0..outs.len() / plane {
        let (dst_plane, rest) = outs[i * plane..].split_at_mut(plane);
        // The next plane written, towards L2 while this one is (`prefetch_l2`).
        if let Some(next) = rest.get(..plane) {
            prefetch_l2(next);
        }
        let (j, c) = ((first + i) / cd, (first + i) % cd);
        tiling.output_transform(dst_plane, m, c * t + j * p, ms, pass.accumulate, rows);
        if !pass.accumulate {
            pass.epi.apply(c, dst_plane);
        }
    }
}

/// The XI blocks of `v` ([XI][block]) cut into pieces of `piece` values:
/// task k's slots are the k-th piece of every block (empty past the end).
fn xi_slots<const K: usize>(v: &mut [f32], block: usize, piece: usize) -> [[&mut [f32]; MAX_XI]; K] {
    let mut tasks: [[&mut [f32]; MAX_XI]; K] = std::array::from_fn(|_| std::array::from_fn(|_| Default::default()));
    for (xi, b) in v.chunks_exact_mut(block).enumerate() {
        for (slots, part) in tasks.iter_mut().zip(b.chunks_mut(piece)) {
            slots[xi] = part;
        }
    }
    tasks
}

/// v[xi][(c - c0) * T + j * P + tile] = the input transform of plane c of
/// image j, for the channels `chans = c0..c1` of the images `xs`
/// ([imgs][cs][plane]) of one group (T = imgs * P tiles): v[xi] is the part
/// of V[xi] ([cs][T]) that holds those channels.
fn transform_planes<T: Tiling>(
    tiling: &T,
    v: &mut [&mut [f32]],
    (xs, plane): (&[f32], usize),
    (cs, chans): (usize, std::ops::Range<usize>),
    scratch: &mut PlaneScratch,
) {
    let PlaneScratch { pad, rows } = scratch;
    let (th, tw) = tiling.tiles();
    let p = th * tw;
    let imgs = xs.len() / (cs * plane);
    let t = imgs * p;
    let at = |j: usize, c: usize| (j * cs + c) * plane;
    for j in 0..imgs {
        for c in chans.clone() {
            // The next plane read, towards L2 while this one is transformed (`prefetch_l2`).
            let next = if c + 1 < chans.end { at(j, c + 1) } else { at(j + 1, chans.start) };
            if let Some(next) = xs.get(next..next + plane) {
                prefetch_l2(next);
            }
            tiling.input_transform(v, (c - chans.start) * t + j * p, &xs[at(j, c)..at(j, c) + plane], pad, rows);
        }
    }
}

/// `transform_planes` of every channel of a group on the calling thread:
/// v holds nxi blocks of `v.len() / nxi` values (`xi_block(cs * T)`, T = the
/// group's tiles), each [cs][T] then unwritten padding.
fn transform_group<T: Tiling>(
    tiling: &T,
    v: &mut [f32],
    nxi: usize,
    group: (&[f32], usize),
    cs: usize,
    scratch: &mut PlaneScratch,
) {
    let block = v.len() / nxi;
    let [mut slots] = xi_slots::<1>(v, block, block);
    transform_planes(tiling, &mut slots[..nxi], group, (cs, 0..cs), scratch);
}

/// The tilings whose weight gradient runs in the transformed domain (F(2x2, 3x3)).
pub(super) trait WeightGrad: Tiling {
    /// The adjoint of `output_transform` (the clip included):
    /// m[xi * xi_stride + base + tile] = (A dY_t A^T)[xi] for every tile t of
    /// plane `y`, the parts of a tile outside h x w read as zero.
    fn output_adjoint(&self, m: &mut [f32], base: usize, xi_stride: usize, y: &[f32], rows: &mut [f32]);
    /// G^T x for an XI-side vector x (the adjoint of the weight transform's `G g`).
    fn gtx(x: &[f64]) -> [f64; 3];
}

/// One weight-gradient pass over a batch: for every shard of `si` images,
/// dU[xi][cout][cin] = sum over its groups of M[xi][cout, t] * V[xi][cin, t]^T,
/// with M the adjoint output transform of dout and V the input transform of x
/// (the forward's U[xi] = (G g G^T)[xi] and Y = A^T M A make
/// dg = G^T dU G), then the shard's partial dW = G^T dU G (`dw_parts`: one
/// per shard).
fn run_weight_pass<T: WeightGrad>(
    tiling: &T,
    dw_parts: &mut [f32],
    x: &[f32],
    dout: &[f32],
    (si, g): (usize, usize),
    lanes: &[Mutex<Lane>],
) -> Result<()> {
    let (th, tw) = tiling.tiles();
    let (plane, p, nxi) = (tiling.plane(), th * tw, T::XI);
    let (cin, cout) = tiling.channels();
    let (in_len, out_len, wlen) = (cin * plane, cout * plane, cout * cin * 9);
    let inputs = x.par_chunks(si * in_len).zip(dout.par_chunks(si * out_len));
    inputs.zip(dw_parts.par_chunks_mut(wlen)).try_for_each(|((xs, ds), dwp)| {
        let mut guard = lock_lane(lanes);
        let lane = &mut *guard;
        check_len("winograd weight-gradient scratch", lane.du.len(), nxi * cout * cin)?;
        let imgs = xs.len() / in_len;
        for g0 in (0..imgs).step_by(g) {
            let gn = g.min(imgs - g0);
            let t = gn * p;
            let (vs, ms) = (xi_block(cin * t), xi_block(cout * t));
            let v = &mut lane.v[..nxi * vs];
            let group = (&xs[g0 * in_len..(g0 + gn) * in_len], plane);
            transform_group(tiling, v, nxi, group, cin, &mut lane.planes);
            let m = &mut lane.m[..nxi * ms];
            for (j, img) in ds[g0 * out_len..(g0 + gn) * out_len].chunks_exact(out_len).enumerate() {
                for (c, d_plane) in img.chunks_exact(plane).enumerate() {
                    tiling.output_adjoint(m, c * t + j * p, ms, d_plane, &mut lane.planes.rows);
                }
            }
            // dU[xi][cout, cin] (+)= M[xi][cout, t] * V[xi][cin, t]^T; the shard's first group overwrites.
            let beta = if g0 == 0 { 0.0 } else { 1.0 };
            for ((du, mx), vx) in lane.du.chunks_exact_mut(cout * cin).zip(m.chunks(ms)).zip(v.chunks(vs)) {
                let (mx, vx) =
                    (MatRef::row_major(&mx[..cout * t], cout, t)?, MatRef::row_major(&vx[..cin * t], cin, t)?);
                gemm(1.0, mx, vx.t(), beta, MatMut::row_major(du, cout, cin)?)?;
            }
        }
        adjoint_weights::<T>(dwp, &lane.du, cout, cin);
        Ok(())
    })
}

/// dw[co][ci] = G^T dU[co][ci] G in f64 (overwrite), dU [XI][cout][cin]:
/// the adjoint of `transform_weights` (forward orientation).
fn adjoint_weights<T: WeightGrad>(dw: &mut [f32], du: &[f32], cout: usize, cin: usize) {
    let (k, pairs) = (T::M + 2, cout * cin);
    let mut col = [0.0f64; 8];
    for (at, g) in dw.chunks_exact_mut(9).enumerate() {
        // Columns of G^T dU (3 x K), then rows of (G^T dU) G.
        let mut cols = [[0.0f64; 3]; 8];
        for (j, c) in cols.iter_mut().enumerate().take(k) {
            for (i, v) in col.iter_mut().enumerate().take(k) {
                *v = du[(k * i + j) * pairs + at] as f64;
            }
            *c = T::gtx(&col[..k]);
        }
        for r in 0..3 {
            let mut x = [0.0f64; 8];
            for (j, v) in x.iter_mut().enumerate().take(k) {
                *v = cols[j][r];
            }
            let out = T::gtx(&x[..k]);
            for (c, o) in out.iter().enumerate() {
                g[3 * r + c] = *o as f32;
            }
        }
    }
}

/// Images per GEMM group for `p` tiles per image and a batch of `n`: the
/// fewest whose tiles reach `TILE_COLS` (`min`); or, when the batch splits into
/// many such groups or evenly, the fewest that also fill whole `PANEL`s within
/// 4 * `TILE_COLS` tiles (3 images of 32x32 = 768 tiles, 18 of 8x8 = 288):
/// a few large ragged groups would load threads unevenly.
pub(super) fn group_imgs(p: usize, n: usize) -> usize {
    group_imgs_for(TILE_COLS, p, n)
}

/// `group_imgs` for a target of `tile_cols` columns instead of `TILE_COLS`.
pub(super) fn group_imgs_for(tile_cols: usize, p: usize, n: usize) -> usize {
    let n = n.max(1);
    let min = tile_cols.div_ceil(p).min(n);
    let aligned = (min..).take_while(|g| g * p <= 4 * tile_cols).find(|g| (g * p).is_multiple_of(PANEL));
    match aligned {
        Some(g) if g <= n && (n.is_multiple_of(g) || n.div_ceil(g) >= 8) => g,
        _ => min,
    }
}

/// u[xi][r][c] = (G g G^T)[xi] in f64 with xi = K i + j, where for weight [cout, cin, 3, 3]:
/// forward (r, c) = (co, ci), g = w[co][ci]; rotated (r, c) = (ci, co), g = rot180(w[co][ci]);
/// `gx` is G x for a 3-vector x (G is K x 3).
pub(super) fn transform_weights<const K: usize>(
    u: &mut [f32],
    weight: &[f32],
    cout: usize,
    cin: usize,
    rotated: bool,
    gx: impl Fn(f64, f64, f64) -> [f64; K],
) {
    let plane = cout * cin;
    for (k, g) in weight.chunks_exact(9).enumerate() {
        let (co, ci) = (k / cin, k % cin);
        let at = if rotated { ci * cout + co } else { co * cin + ci };
        let g: [f64; 9] = std::array::from_fn(|i| g[if rotated { 8 - i } else { i }] as f64);
        // Columns of G g (K x 3), then rows of (G g) G^T.
        let cols: [[f64; K]; 3] = std::array::from_fn(|c| gx(g[c], g[3 + c], g[6 + c]));
        for i in 0..K {
            let row = gx(cols[0][i], cols[1][i], cols[2][i]);
            for (j, &val) in row.iter().enumerate() {
                u[(K * i + j) * plane + at] = val as f32;
            }
        }
    }
}

/// The calling thread's scratch lane (indexed by rayon worker, as in `conv2d`).
fn lock_lane<L>(lanes: &[Mutex<L>]) -> std::sync::MutexGuard<'_, L> {
    let i = rayon::current_thread_index().unwrap_or(0) % lanes.len();
    // A poisoned lane only means another thread panicked mid-group; its contents are scratch.
    lanes[i].lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::xi_block;

    #[test]
    fn xi_blocks_are_the_least_length_one_line_past_4_kib() {
        for len in 0..5000 {
            let b = xi_block(len);
            assert!(b >= len && b % 1024 == 16, "xi_block({len}) = {b}");
            assert!(b < len + 1024, "xi_block({len}) = {b} is not the least");
        }
        // The XI blocks of HardNet's 32-channel F(4x4) group (6 images of 64 tiles) start in distinct L1 sets.
        let b = xi_block(32 * 6 * 64);
        let sets: std::collections::BTreeSet<usize> = (0..36).map(|xi| xi * b * 4 / 64 % 64).collect();
        assert_eq!(sets.len(), 36);
    }
}
