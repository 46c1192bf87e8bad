//! A trained network ready to use: a `Model`, its parameter arena and the
//! metadata that says what it is. This is the library API a native app calls
//! (load weights, denoise a batch, describe a batch) without the CLI.
//!
//! Weights files are safetensors with PyTorch names and layouts (see
//! `crate::weights`) and `__metadata__` keys:
//!
//! | key | values |
//! |---|---|
//! | `format_version` | `1` |
//! | `model` | `unet`, `dncnn`, `hardnet` |
//! | `variant` | `baseline` or `original` (HardNet only) |
//! | `bn_eps` | BatchNorm epsilon (`none` for the U-Net) |
//! | `padding` | `keras_same` or `symmetric` |
//! | `input_scaling` | `raw_0_255` or `per_patch_norm` |
//!
//! so a file alone says what it is. A file written by PyTorch without
//! metadata loads when the caller names the architecture (`LoadOptions`).
//! Loading checks every name, shape and dtype and the metadata against the
//! architecture; nothing is half-loaded.
//!
//! ```
//! use nhpatch::models::Arch;
//! use nhpatch::net::{LoadOptions, Network, to_pixels};
//!
//! # let dir = std::env::temp_dir().join(format!("nhpatch-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("hardnet.safetensors");
//! # Network::init(Arch::HardNetOriginal, 1)?.save(&path)?;
//! // A descriptor from a weights file, a denoiser (here freshly initialised).
//! let descriptor = Network::load(&path, LoadOptions::default())?;
//! let denoiser = Network::init(Arch::Unet, 7)?;
//!
//! // Four 32x32 patches, row-major, grey levels 0..255.
//! let patches: Vec<f32> = (0..4 * 32 * 32).map(|i| (i % 256) as f32).collect();
//! let mut clean = denoiser.denoise(&patches)?;
//! to_pixels(&mut clean); // clip and round, as the seed pipeline does
//! let desc = descriptor.describe(&clean)?;
//! assert_eq!(desc.len(), 4 * 128);
//! // The same pipeline in one call.
//! assert_eq!(descriptor.describe_denoised(Some(&denoiser), &patches)?, desc);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{Error, Result};
use crate::gpu::{Accel, Device};
use crate::models::quant::{Calibration, Int8Layers, METADATA_KEY, Precision};
use crate::models::{Arch, DESC_LEN, Model, PATCH_LEN, WeightsKey, Workspace};
use crate::weights::{self, Tensor, WeightsFile};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

/// Version of the metadata convention written by `save`.
pub const FORMAT_VERSION: &str = "1";
/// Patches per internal inference batch: large enough to keep GEMMs wide, small enough for cache.
const INFER_BATCH: usize = 256;

/// How to interpret a weights file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The architecture, for files without metadata (or to insist on one).
    pub arch: Option<Arch>,
}

/// Patches of the next internal batch when `left` remain: `INFER_BATCH`
/// while that many remain, then the rest, which `run_batch` pads to the
/// next power of two, unless padding would add more than a quarter of that
/// size; then the largest power of two below the rest, and the remainder
/// after it. So 129 patches run as 128 + 1, not as 256, and no batch spends
/// more than a quarter of its work on padding.
fn next_batch(left: usize) -> usize {
    if left >= INFER_BATCH {
        return INFER_BATCH;
    }
    let size = left.next_power_of_two();
    if size - left <= size / 4 { left } else { size / 2 }
}

/// Inference workspaces of one batch size a `Network` keeps between calls, at least.
const SPARE_WORKSPACES: usize = 2;

// Batches are padded to a power of two, so a workspace serves every batch size up to its own.
const _: () = assert!(INFER_BATCH.is_power_of_two());

/// An inference workspace kept between calls: the rayon pool size it was
/// made for, and a buffer that pads a shorter batch to its size.
struct Kept {
    threads: usize,
    ws: Workspace,
    pad: Vec<f32>,
}

/// The inference workspaces of a `Network` between calls, and the queue of
/// batches waiting to run.
#[derive(Default)]
struct Spares {
    /// Least recently kept first.
    kept: Vec<Kept>,
    /// Batches running now, and the most that have run at once.
    running: usize,
    peak: usize,
    /// Turns handed out to callers outside the rayon pool, and turns ended.
    next_turn: u64,
    ended: u64,
}

/// The spare workspaces and the turn order of one `Network`.
#[derive(Default)]
struct Shared {
    spares: Mutex<Spares>,
    turn_ended: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One batch running. A thread outside the rayon pool first waits for its
/// turn: turns are handed out in arrival order and at most one batch per
/// pool thread runs at a time, so that many callers sharing a network each
/// wait in line instead of some starving under work stealing, and the
/// workspaces in use stay at one per pool thread. A pool worker never
/// waits (it may hold stolen work another batch needs).
struct Batch<'a> {
    shared: &'a Shared,
    turn: bool,
}

impl<'a> Batch<'a> {
    /// Waits for a turn unless this thread is a worker of the pool the batch
    /// runs on (`pool`, or the current pool when `None`).
    fn start(shared: &'a Shared, pool: Option<&rayon::ThreadPool>) -> Self {
        let (worker, threads) = match pool {
            Some(p) => (p.current_thread_index().is_some(), p.current_num_threads()),
            None => (rayon::current_thread_index().is_some(), rayon::current_num_threads()),
        };
        let mut s = shared.lock();
        let turn = !worker;
        if turn {
            let (mine, limit) = (s.next_turn, threads as u64);
            s.next_turn += 1;
            // Turns end out of order, but `ended` counts them, so at most `limit` run at once.
            while mine >= s.ended + limit {
                s = shared.turn_ended.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        }
        s.running += 1;
        s.peak = s.peak.max(s.running);
        Batch { shared, turn }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.running -= 1;
        if self.turn {
            s.ended += 1;
            self.shared.turn_ended.notify_all();
        }
    }
}

/// Patches for `Network::forward_into`: `[n, 32, 32]` grey levels 0..255.
#[derive(Clone, Copy, Debug)]
pub enum Patches<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

impl<'a> Patches<'a> {
    /// Elements (`n x 1024`).
    pub fn len(&self) -> usize {
        match self {
            Patches::F32(x) => x.len(),
            Patches::U8(x) => x.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn range(&self, r: std::ops::Range<usize>) -> Patches<'a> {
        match *self {
            Patches::F32(x) => Patches::F32(&x[r]),
            Patches::U8(x) => Patches::U8(&x[r]),
        }
    }
    /// Writes the patches as f32 into `dst` (of the same length).
    fn write_f32(&self, dst: &mut [f32]) {
        match self {
            Patches::F32(x) => dst.copy_from_slice(x),
            Patches::U8(x) => dst.iter_mut().zip(x.iter()).for_each(|(d, &v)| *d = f32::from(v)),
        }
    }
}

/// Where `Network::forward_into` writes: f32 values, or u8 grey levels
/// (clipped to 0..255 and rounded, as `to_pixels` does).
#[derive(Debug)]
pub enum Outputs<'a> {
    F32(&'a mut [f32]),
    U8(&'a mut [u8]),
}

impl Outputs<'_> {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Outputs::F32(o) => o.len(),
            Outputs::U8(o) => o.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn range(&mut self, r: std::ops::Range<usize>) -> Outputs<'_> {
        match self {
            Outputs::F32(o) => Outputs::F32(&mut o[r]),
            Outputs::U8(o) => Outputs::U8(&mut o[r]),
        }
    }
    /// Stores `y` (of the same length).
    fn store(&mut self, y: &[f32]) {
        match self {
            Outputs::F32(o) => o.copy_from_slice(y),
            Outputs::U8(o) => o.iter_mut().zip(y).for_each(|(d, &v)| *d = pixel(v) as u8),
        }
    }
}

/// A network and its parameters.
pub struct Network {
    model: Model,
    params: Vec<f32>,
    /// Inference workspaces (`Model::inference_workspace`) of earlier
    /// calls, reused by later calls: creating one cost a quarter of a
    /// 500-patch HardNet call, which matters to a program that describes
    /// every frame. A batch of `b` patches runs on a workspace for the next
    /// power of two (zero patches pad it; every patch's output is the same
    /// whatever the batch), so at most 9 sizes exist, 1 to `INFER_BATCH`.
    /// Of each size as many are kept as batches have run at once (at least
    /// `SPARE_WORKSPACES`; callers outside the pool take turns, one batch per
    /// pool thread, see `Batch`), so that callers in a steady state allocate
    /// nothing and the process's resident memory stays flat.
    spare: Shared,
    /// This network's own rayon pool (`set_threads`); without one, calls run
    /// on the caller's current pool. Behind a lock so that `set_threads` may
    /// race with calls in flight, which keep their pool alive through the `Arc`.
    pool: RwLock<Option<Arc<rayon::ThreadPool>>>,
    /// The network on a device (`set_device`), which `forward` then uses;
    /// `stale` when `params_mut` may have changed the parameters since the upload.
    accel: Option<Mutex<Accel>>,
    stale: AtomicBool,
    /// The state of `params` the kept workspaces are vouched for
    /// (`Workspace::vouch_weights`): `params_mut`, the only way to change
    /// them, advances it, so the weights prepared for the kernels are
    /// reused without comparing the parameters on every call.
    params_version: u64,
    /// The arithmetic of CPU inference (`set_precision`).
    precision: Precision,
    /// int8 input quantizations (`calibrate`, or read from the weights file).
    calibration: Option<Calibration>,
}

/// The metadata nhpatch writes for an architecture.
pub fn metadata_for(arch: Arch) -> BTreeMap<String, String> {
    let info = arch.info();
    let (model, variant, eps, padding, scaling) =
        (info.model, info.variant, info.bn_eps, info.padding, info.input_scaling);
    let mut m = BTreeMap::new();
    m.insert("format_version".into(), FORMAT_VERSION.into());
    m.insert("model".into(), model.into());
    if let Some(v) = variant {
        m.insert("variant".into(), v.into());
    }
    m.insert("bn_eps".into(), eps.into());
    m.insert("padding".into(), padding.into());
    m.insert("input_scaling".into(), scaling.into());
    m
}

fn format_err(path: &Path, msg: String) -> Error {
    Error::Format { path: path.to_path_buf(), msg }
}

/// The architecture a file declares, checked against `opts.arch` and the other metadata keys.
fn resolve_arch(file: &WeightsFile, opts: LoadOptions, path: &Path) -> Result<Arch> {
    let meta = &file.metadata;
    let declared = match meta.get("model") {
        Some(m) => {
            let arch = Arch::parse(m, meta.get("variant").map(String::as_str))
                .map_err(|e| format_err(path, format!("metadata names an unknown network: {e}")))?;
            if let Some(v) = meta.get("format_version").filter(|v| v.as_str() != FORMAT_VERSION) {
                return Err(format_err(
                    path,
                    format!("format_version {v} is not supported (this build reads {FORMAT_VERSION})"),
                ));
            }
            Some(arch)
        }
        None => None,
    };
    let arch = match (declared, opts.arch) {
        (Some(d), Some(o)) if d != o => {
            return Err(format_err(path, format!("the file holds a {d} network, not the {o} that was asked for")));
        }
        (Some(d), _) => d,
        (None, Some(o)) => o,
        (None, None) => {
            return Err(format_err(
                path,
                "no 'model' in the metadata: name the architecture (e.g. --model hardnet --variant original)".into(),
            ));
        }
    };
    // The keys that change the maths must agree with the architecture when present.
    let want = metadata_for(arch);
    for key in ["bn_eps", "padding", "input_scaling"] {
        if let Some(v) = meta.get(key)
            && Some(v) != want.get(key)
        {
            let w = &want[key];
            return Err(format_err(path, format!("metadata {key} = {v}, but nhpatch's {arch} uses {w}")));
        }
    }
    Ok(arch)
}

impl Network {
    /// A network with freshly initialised parameters (PyTorch default init, seeded).
    pub fn init(arch: Arch, seed: u64) -> Result<Network> {
        let model = Model::new(arch)?;
        let params = model.init_params(&mut crate::rng::Rng::new(seed));
        Ok(Self::wrap(model, params))
    }

    /// Wraps a model and an arena of the model's length.
    pub fn from_params(model: Model, params: Vec<f32>) -> Result<Network> {
        crate::error::check_len("network parameters", params.len(), model.layout().len())?;
        Ok(Self::wrap(model, params))
    }

    /// A CPU network over `params`, which the caller has checked against `model`.
    fn wrap(model: Model, params: Vec<f32>) -> Network {
        Network {
            model,
            params,
            spare: Shared::default(),
            pool: RwLock::new(None),
            accel: None,
            stale: AtomicBool::new(false),
            params_version: 0,
            precision: Precision::F32,
            calibration: None,
        }
    }

    /// Loads a weights file, checking every tensor name, shape and the metadata.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Network> {
        let file = weights::load(path)?;
        Self::from_file(&file, opts, path)
    }

    /// Loads a denoiser (U-Net or DnCNN), refusing a file that holds a descriptor.
    pub fn load_denoiser(path: &Path, opts: LoadOptions) -> Result<Network> {
        let net = Self::load(path, opts)?;
        if !net.arch().is_denoiser() {
            return Err(format_err(path, format!("holds a {}, not a denoiser", net.arch())));
        }
        Ok(net)
    }

    /// Loads a HardNet descriptor, refusing a file that holds a denoiser.
    pub fn load_descriptor(path: &Path, opts: LoadOptions) -> Result<Network> {
        let net = Self::load(path, opts)?;
        if net.arch().is_denoiser() {
            let msg = format!("holds a {} denoiser, not a HardNet descriptor (pass it as --denoiser)", net.arch());
            return Err(format_err(path, msg));
        }
        Ok(net)
    }

    /// Builds a network from a parsed weights file; `path` names it in errors.
    pub fn from_file(file: &WeightsFile, opts: LoadOptions, path: &Path) -> Result<Network> {
        let arch = resolve_arch(file, opts, path)?;
        let model = Model::new(arch)?;
        let mut params = vec![0.0f32; model.layout().len()];
        let mut missing = Vec::new();
        for spec in model.layout().specs() {
            match file.tensors.get(&spec.name) {
                None => missing.push(spec.name.clone()),
                Some(t) if t.shape != spec.shape => {
                    return Err(format_err(
                        path,
                        format!(
                            "tensor '{}' has shape {:?}, the {arch} network needs {:?}",
                            spec.name, t.shape, spec.shape
                        ),
                    ));
                }
                Some(t) => params[spec.range()].copy_from_slice(&t.data),
            }
        }
        if !missing.is_empty() {
            return Err(format_err(path, format!("missing tensors for a {arch} network: {}", missing.join(", "))));
        }
        let unknown: Vec<&str> =
            file.tensors.keys().filter(|k| model.layout().get(k).is_none()).map(String::as_str).collect();
        if !unknown.is_empty() {
            return Err(format_err(path, format!("tensors a {arch} network does not have: {}", unknown.join(", "))));
        }
        model.layout().check_values(&params).map_err(|msg| format_err(path, msg))?;
        let calibration = match file.metadata.get(METADATA_KEY) {
            Some(text) => {
                let c = Calibration::from_metadata(text).map_err(|e| format_err(path, e.to_string()))?;
                model.check_calibration(&c).map_err(|e| format_err(path, e.to_string()))?;
                Some(c)
            }
            None => None,
        };
        let mut net = Self::wrap(model, params);
        net.calibration = calibration;
        Ok(net)
    }

    /// The weights file for this network: every tensor plus nhpatch's metadata.
    pub fn to_file(&self) -> WeightsFile {
        let tensors = self
            .model
            .layout()
            .specs()
            .iter()
            .map(|s| (s.name.clone(), Tensor { shape: s.shape.clone(), data: self.params[s.range()].to_vec() }))
            .collect();
        let mut metadata = metadata_for(self.model.arch());
        if let Some(c) = &self.calibration {
            metadata.insert(METADATA_KEY.into(), c.to_metadata());
        }
        WeightsFile { metadata, tensors }
    }

    /// Saves atomically (temporary file, sync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        weights::save(path, &self.to_file())
    }

    pub fn arch(&self) -> Arch {
        self.model.arch()
    }
    pub fn model(&self) -> &Model {
        &self.model
    }
    pub fn params(&self) -> &[f32] {
        &self.params
    }
    pub fn params_mut(&mut self) -> &mut [f32] {
        self.stale.store(true, Ordering::Relaxed);
        self.params_version += 1;
        &mut self.params
    }

    /// Runs `forward` (and so `denoise`, `describe`) on `device` from now on:
    /// the parameters are uploaded once, patches go in batches, outputs come
    /// back. `Device::Cpu` returns to the CPU. Errors when the device cannot
    /// be opened (no GPU, no driver, a build without the `cuda` feature).
    pub fn set_device(&mut self, device: Device) -> Result<()> {
        if !device.is_cpu() && self.precision != Precision::F32 {
            return Err(Error::Unsupported(format!("{} inference runs on the CPU only", self.precision)));
        }
        self.accel = None;
        if !device.is_cpu() {
            self.accel = Some(Mutex::new(Accel::open(device, &self.model, &self.params)?));
            self.stale.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Runs CPU inference in `precision` from now on. int8 needs a
    /// calibration (`calibrate`, or one stored in the weights file) and the
    /// CPU; bf16 needs the CPU only (`vdpbf16ps` where it has AVX512_BF16,
    /// the same arithmetic in f32 elsewhere); f32 always works. The
    /// calibration is not redone when `params_mut` changes the weights (the
    /// int8 and bf16 weights are: they are compared bit for bit on every
    /// call); calibrate again after training.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision != Precision::F32 && self.accel.is_some() {
            return Err(Error::Unsupported(format!(
                "{precision} inference runs on the CPU only; the network is on a device"
            )));
        }
        if precision == Precision::Int8 && self.calibration.is_none() {
            return Err(Error::InvalidArgument(format!(
                "int8 inference of this {} needs a calibration: Network::calibrate (nhpatch calibrate), or weights saved with one",
                self.arch()
            )));
        }
        self.precision = precision;
        self.release_workspaces();
        Ok(())
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Calibrates int8 inference on `patches` (`[n, 32, 32]`, 0..255, the
    /// kind of patches the network will see) with f32 passes of this
    /// network (`Model::calibrate`), covering the convolutions faster in
    /// int8 on this CPU (`Int8Layers::Auto`); `save` stores the result.
    pub fn calibrate(&mut self, patches: &[f32]) -> Result<()> {
        self.calibrate_layers(patches, Int8Layers::Auto)
    }

    /// As `calibrate`, covering the convolutions `layers` chooses.
    pub fn calibrate_layers(&mut self, patches: &[f32], layers: Int8Layers) -> Result<()> {
        let pool = self.pool.read().unwrap_or_else(|e| e.into_inner()).clone();
        let run = || self.model.calibrate(&self.params, patches, layers);
        let c = match &pool {
            Some(p) => p.install(run),
            None => run(),
        }?;
        self.calibration = Some(c);
        self.release_workspaces();
        Ok(())
    }

    /// The int8 calibration, when there is one.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// The device `forward` runs on, in words ("cpu" without one).
    pub fn device_name(&self) -> String {
        match &self.accel {
            Some(a) => a.lock().unwrap_or_else(|e| e.into_inner()).name().to_string(),
            None => "cpu".into(),
        }
    }

    /// Eval-mode outputs for `n` patches `[n, 32, 32]` (values 0..255), in
    /// internal batches; `n x 1024` values for a denoiser, `n x 128` for HardNet.
    /// Runs on this network's pool (`set_threads`), else on the current rayon pool.
    pub fn forward(&self, patches: &[f32]) -> Result<Vec<f32>> {
        let n = Self::patch_count(patches.len())?;
        let mut out = vec![0.0f32; n * self.model.out_len()];
        self.forward_into(Patches::F32(patches), Outputs::F32(&mut out))?;
        Ok(out)
    }

    fn patch_count(len: usize) -> Result<usize> {
        if !len.is_multiple_of(PATCH_LEN) {
            return Err(Error::Shape(format!("{len} values are not a whole number of 32x32 patches")));
        }
        Ok(len / PATCH_LEN)
    }

    /// As `forward`, into the caller's buffer of exactly `n x 1024` (denoiser)
    /// or `n x 128` (HardNet) elements; f32 or u8 patches in, f32 or u8
    /// (clipped and rounded) values out. On the CPU it allocates nothing
    /// once the network's workspaces for the batch sizes exist.
    pub fn forward_into(&self, patches: Patches<'_>, mut out: Outputs<'_>) -> Result<()> {
        let n = Self::patch_count(patches.len())?;
        let out_len = self.model.out_len();
        if out.len() != n * out_len {
            return Err(Error::Shape(format!(
                "an output of {} elements for {n} patches; {} needed ({out_len} per patch)",
                out.len(),
                n * out_len
            )));
        }
        if let Some(accel) = &self.accel {
            let mut a = accel.lock().unwrap_or_else(|e| e.into_inner());
            if self.stale.swap(false, Ordering::Relaxed) {
                a.set_params(&self.params)?;
            }
            let mut x = vec![0.0; patches.len()];
            patches.write_f32(&mut x);
            let mut y = vec![0.0; out.len()];
            a.forward(&x, &mut y)?;
            out.store(&y);
            return Ok(());
        }
        let pool = self.pool.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut p0 = 0;
        while p0 < n {
            let p1 = p0 + next_batch(n - p0);
            let (x, o) = (patches.range(p0 * PATCH_LEN..p1 * PATCH_LEN), out.range(p0 * out_len..p1 * out_len));
            let _batch = Batch::start(&self.spare, pool.as_deref());
            match &pool {
                Some(p) => p.install(|| self.run_batch(x, o)),
                None => self.run_batch(x, o),
            }?;
            p0 = p1;
        }
        Ok(())
    }

    /// Gives this network its own pool of `threads` workers (0: one per
    /// core), on which every later call runs, replacing any earlier one;
    /// calls already running finish on theirs. Without one, calls run on the
    /// caller's current rayon pool.
    pub fn set_threads(&self, threads: usize) -> Result<()> {
        let pool = Arc::new(crate::threads::pool(threads)?);
        *self.pool.write().unwrap_or_else(|e| e.into_inner()) = Some(pool);
        Ok(())
    }

    /// One batch of at most `INFER_BATCH` patches `x` into `o`, on a kept workspace.
    fn run_batch(&self, x: Patches<'_>, mut o: Outputs<'_>) -> Result<()> {
        let b = x.len() / PATCH_LEN;
        let size = b.next_power_of_two();
        let new = || -> Result<Kept> {
            Ok(Kept {
                threads: rayon::current_num_threads(),
                ws: self.model.inference_workspace_for(
                    size,
                    self.precision,
                    self.calibration.as_ref(),
                    rayon::current_num_threads(),
                )?,
                pad: vec![0.0; size * PATCH_LEN],
            })
        };
        let mut k = match self.take_spare(size) {
            Some(k) => k,
            None => {
                // A size not seen yet (on this pool): make at once as many as
                // may be kept, so that the set of workspaces reaches its bound
                // now instead of whenever callers of one size happen to meet.
                let cap = self.spare.lock().peak.max(SPARE_WORKSPACES);
                for _ in 1..cap {
                    self.keep(new()?);
                }
                new()?
            }
        };
        let Kept { ws, pad, .. } = &mut k;
        ws.vouch_weights(Some(WeightsKey(self.params_version)));
        let y = match x {
            Patches::F32(x) if b == size => self.model.forward_eval(ws, &self.params, x)?,
            _ => {
                let (head, tail) = pad.split_at_mut(x.len());
                x.write_f32(head);
                tail.fill(0.0);
                self.model.forward_eval(ws, &self.params, pad)?
            }
        };
        o.store(&y[..o.len()]);
        self.keep(k);
        Ok(())
    }

    /// A kept workspace for batches of `size` made for a pool of the current size.
    fn take_spare(&self, size: usize) -> Option<Kept> {
        let threads = rayon::current_num_threads();
        let mut spare = self.spare.lock();
        let i = spare.kept.iter().position(|k| k.threads == threads && k.ws.batch() == size)?;
        Some(spare.kept.remove(i))
    }

    /// Keeps `k` for later calls, dropping the least recently kept of its
    /// size beyond the most batches that have run at once (or `SPARE_WORKSPACES`).
    fn keep(&self, k: Kept) {
        let mut spare = self.spare.lock();
        let size = k.ws.batch();
        spare.kept.push(k);
        let cap = spare.peak.max(SPARE_WORKSPACES);
        while spare.kept.iter().filter(|k| k.ws.batch() == size).count() > cap {
            let oldest = spare.kept.iter().position(|k| k.ws.batch() == size).unwrap_or(0);
            spare.kept.remove(oldest);
        }
    }

    /// Drops the inference workspaces kept between calls (the memory of up
    /// to one batch of each size per concurrent caller); later calls make
    /// new ones.
    pub fn release_workspaces(&self) {
        let mut spare = self.spare.lock();
        spare.kept.clear();
        spare.peak = spare.running;
    }

    /// Denoises patches; errors unless this is a denoiser.
    pub fn denoise(&self, patches: &[f32]) -> Result<Vec<f32>> {
        self.check_denoises()?;
        self.forward(patches)
    }

    /// 128-d descriptors of patches; errors unless this is a HardNet.
    pub fn describe(&self, patches: &[f32]) -> Result<Vec<f32>> {
        self.check_describes()?;
        self.forward(patches)
    }

    /// The pipeline's inference: `denoiser`, when given, on `patches`, its
    /// output clipped and rounded to grey levels 0..255 (as the seed's
    /// pipeline stores denoised patches), then this descriptor.
    pub fn describe_denoised(&self, denoiser: Option<&Network>, patches: &[f32]) -> Result<Vec<f32>> {
        self.check_describes()?;
        match denoiser {
            Some(d) => {
                let mut clean = d.denoise(patches)?;
                to_pixels(&mut clean);
                self.forward(&clean)
            }
            None => self.forward(patches),
        }
    }

    /// `denoise` into the caller's buffer (`forward_into`).
    pub fn denoise_into(&self, patches: Patches<'_>, out: Outputs<'_>) -> Result<()> {
        self.check_denoises()?;
        self.forward_into(patches, out)
    }

    /// `describe` into the caller's buffer of `n x 128` floats (`forward_into`).
    pub fn describe_into(&self, patches: Patches<'_>, out: &mut [f32]) -> Result<()> {
        self.check_describes()?;
        self.forward_into(patches, Outputs::F32(out))
    }

    fn check_denoises(&self) -> Result<()> {
        if !self.arch().is_denoiser() {
            return Err(Error::InvalidArgument(format!("a {} network describes; it does not denoise", self.arch())));
        }
        Ok(())
    }

    fn check_describes(&self) -> Result<()> {
        if self.arch().is_denoiser() {
            return Err(Error::InvalidArgument(format!("a {} network denoises; it does not describe", self.arch())));
        }
        debug_assert_eq!(self.model.out_len(), DESC_LEN);
        Ok(())
    }
}

/// Patches `use_precision` calibrates int8 on when a weights file holds no
/// calibration: the first [`DEFAULT_CALIBRATION_PER_IMAGE`] noisy patches of
/// each of the 16 images of sequence 0 of the default synthetic dataset
/// (`data::synth::SynthConfig::default()`, the data `nhpatch run` trains on;
/// a training sequence of its split a), the same patches every time. A
/// caller with its own data calibrates on it instead (`Network::calibrate`,
/// `nhpatch calibrate`).
pub fn default_calibration_patches() -> Result<Vec<f32>> {
    let seq = crate::data::synth::make_sequence(&crate::data::synth::SynthConfig::default(), 0)?;
    let per = DEFAULT_CALIBRATION_PER_IMAGE * PATCH_LEN;
    Ok(seq.noisy.iter().flat_map(|img| &img[..per.min(img.len())]).map(|&v| v as f32).collect())
}

/// Patches per image of the default calibration sample (16 images: 2048 patches).
pub const DEFAULT_CALIBRATION_PER_IMAGE: usize = 128;

/// Sets `net` to `precision`, first calibrating int8 on
/// `default_calibration_patches` when the network has no calibration yet;
/// `front` is a network the patches go through before `net` in the
/// pipeline (a denoiser in front of a descriptor), run as it is set now,
/// its output clipped and rounded to grey levels. Returns whether it calibrated.
pub fn use_precision(net: &mut Network, precision: Precision, front: Option<&Network>) -> Result<bool> {
    let calibrate = precision == Precision::Int8 && net.calibration().is_none();
    if calibrate {
        let mut sample = default_calibration_patches()?;
        if let Some(f) = front {
            sample = f.denoise(&sample)?;
            to_pixels(&mut sample);
        }
        net.calibrate(&sample)?;
    }
    net.set_precision(precision)?;
    Ok(calibrate)
}

/// Clips to 0..255 and rounds to whole grey levels: how the seed's pipeline
/// turns denoiser outputs into images before describing them.
pub fn to_pixels(values: &mut [f32]) {
    for v in values {
        *v = pixel(*v);
    }
}

/// One value as `to_pixels` makes it: rounded, clipped to 0..255.
fn pixel(v: f32) -> f32 {
    v.round().clamp(0.0, 255.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batches `forward_into` cuts `n` patches into.
    fn plan(n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut left = n;
        while left > 0 {
            out.push(next_batch(left));
            left -= out.last().expect("pushed");
        }
        out
    }

    #[test]
    fn batches_cover_the_patches_and_waste_at_most_a_quarter_on_padding() {
        for n in 1..=3 * INFER_BATCH {
            let batches = plan(n);
            assert_eq!(batches.iter().sum::<usize>(), n, "{n}");
            for &b in &batches {
                let size = b.next_power_of_two();
                assert!(b >= 1 && size <= INFER_BATCH && 4 * (size - b) <= size, "{n}: a batch of {b} in {size}");
            }
            // Full batches first; then at most one batch of each smaller size.
            let tail: Vec<usize> = batches.iter().copied().filter(|&b| b < INFER_BATCH).collect();
            assert_eq!(batches.len() - tail.len(), n / INFER_BATCH, "{n}: {batches:?}");
            assert!(tail.windows(2).all(|w| w[0].next_power_of_two() > w[1].next_power_of_two()), "{n}: {batches:?}");
        }
        assert_eq!(plan(129), [128, 1]);
        assert_eq!(plan(300), [256, 32, 12]);
        assert_eq!(plan(255), [255]);
    }
}
