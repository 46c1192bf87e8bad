//! The synthetic N-HPatches generator (`nhpatch synth`).
//!
//! The real N-HPatches is 4 GB; this writes the same layout from procedural
//! scenes so one reader serves both: per sequence (`i_synth_NNN` changes
//! illumination, `v_synth_NNN` viewpoint) 16 strips `ref, e1..e5, h1..h5,
//! t1..t5` of N 32x32 patches, their noisy twins `<image>_noise.png` from the
//! documented noise model, and `splits.json` (split `a` about 2/3 train with
//! both kinds on each side; `full`, `illum` and `view` test only).
//!
//! The reference scenes are procedural (`scene`) or cut from the user's own
//! photographs (`photo`, `Source::Photos`); everything after the scene is
//! the same for both.
//!
//! Per sequence: render a scene (`scene`), photograph it six times
//! (`sample::render_view`: reference, five targets of growing change), detect
//! DoG keypoints on the reference (`detect`), keep the strongest N that are
//! well spread and whose jittered regions stay inside every image, and cut
//! each region from each image (`sample::sample_patch`) with the e/h/t jitter
//! of `geometry`. Everything is drawn from streams of `Rng` keyed by the seed
//! and the sequence name, so output bytes depend on the seed only, never on
//! the number of threads; sequences are made in parallel.

pub mod detect;
pub mod geometry;
pub mod image;
pub mod photo;
pub mod preview;
pub mod sample;
pub mod scene;

use super::splits::{Split, Splits};
use super::{IMAGES, family, name_hash, noise};
use crate::error::{Error, Result};
use crate::io::png::write_strip;
use crate::io::{PATCH_LEN, io_err, parent_dir, write_atomic};
use crate::rng::Rng;
use detect::{DetectParams, Keypoint, detect};
use geometry::{Affine, Homography, Region, ViewMotion, jitter};
use rayon::prelude::*;
use sample::{Illumination, render_view, sample_patch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Region side in multiples of the keypoint scale `sigma * sqrt 2` (HPatches uses 5).
pub const REGION_MAGNIFICATION: f32 = 5.0;
/// Scene pixels budgeted per patch; larger requests get larger scenes.
const PIXELS_PER_PATCH: usize = 1200;
/// Sensor noise of every rendered image, grey levels.
const SENSOR_NOISE: f32 = 1.0;
/// Crops of a photograph tried for one sequence before settling for fewer patches.
const PHOTO_CROPS: u64 = 4;
/// Largest number of patches per sequence (keeps a scene under ~12 Mpx).
pub const MAX_PATCHES: usize = 10_000;

/// Where the reference scenes come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// Procedural scenes (`scene::render`); sequences `i_synth_NNN`, `v_synth_NNN`.
    #[default]
    Procedural,
    /// Crops of these photographs (`photo`), used in this order, each by
    /// sequences `j`, `j + n`, `j + 2n`, ...; names from the file names.
    Photos(Vec<PathBuf>),
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthConfig {
    /// Number of sequences; half (rounded down) are i_, the rest v_.
    pub sequences: usize,
    /// Patches per sequence; from photographs the most per sequence (a crop
    /// with fewer usable keypoints gives fewer, at least a quarter of this).
    pub patches: usize,
    pub seed: u64,
    /// Smallest scene size; it grows with `patches` (beyond 256 patches at 640x480).
    pub width: usize,
    pub height: usize,
    pub source: Source,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { sequences: 12, patches: 200, seed: 0, width: 640, height: 480, source: Source::Procedural }
    }
}

impl SynthConfig {
    /// A dataset from `photos` (one sequence each, at least 4) at the
    /// photographs' scene size `photo::SCENE`, other settings as `default`.
    pub fn photos(photos: Vec<PathBuf>) -> SynthConfig {
        let (width, height) = photo::SCENE;
        let sequences = photos.len().max(4);
        SynthConfig { sequences, width, height, source: Source::Photos(photos), ..SynthConfig::default() }
    }

    fn validate(&self) -> Result<()> {
        if self.sequences < 4 {
            return Err(Error::InvalidArgument(format!(
                "--sequences {}: at least 4 are needed (split a puts i_ and v_ sequences on both sides)",
                self.sequences
            )));
        }
        if self.patches == 0 || self.patches > MAX_PATCHES {
            return Err(Error::InvalidArgument(format!("--patches {}: must be 1..={MAX_PATCHES}", self.patches)));
        }
        if self.width < 64 || self.height < 64 || self.width > 8192 || self.height > 8192 {
            return Err(Error::InvalidArgument(format!(
                "scene size {}x{}: each side must be 64..=8192",
                self.width, self.height
            )));
        }
        if let Source::Photos(photos) = &self.source {
            if photos.is_empty() {
                return Err(Error::InvalidArgument("no photographs given (PNG or JPEG files)".into()));
            }
            photo::plan(photos, self.sequences)?;
        }
        Ok(())
    }

    /// The scene size used: the configured one, grown to hold `patches`.
    pub fn scene_size(&self) -> (usize, usize) {
        let need = (self.patches * PIXELS_PER_PATCH) as f64 / (self.width * self.height) as f64;
        let f = need.max(1.0).sqrt();
        ((self.width as f64 * f).round() as usize, (self.height as f64 * f).round() as usize)
    }

    /// Sequence names in order: procedurally the i_ ones, then the v_ ones;
    /// from photographs, as `photo::plan` orders them. Empty when the
    /// photographs' names collide (`validate` reports it).
    pub fn names(&self) -> Vec<String> {
        match &self.source {
            Source::Procedural => {
                let ni = self.sequences / 2;
                (0..ni)
                    .map(|i| format!("i_synth_{i:03}"))
                    .chain((0..self.sequences - ni).map(|i| format!("v_synth_{i:03}")))
                    .collect()
            }
            Source::Photos(photos) => {
                photo::plan(photos, self.sequences).map(|p| p.into_iter().map(|(n, _)| n).collect()).unwrap_or_default()
            }
        }
    }
}

/// One generated sequence, in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub name: String,
    /// The 16 clean strips in `IMAGES` order, each `[patches, 32, 32]`.
    pub clean: Vec<Vec<u8>>,
    /// Their noisy twins.
    pub noisy: Vec<Vec<u8>>,
    /// The reference regions, one per patch (scene pixel coordinates).
    pub regions: Vec<Region>,
    /// Per image, per patch: the jitter applied (identity for `ref`).
    pub jitters: Vec<Vec<Affine>>,
}

/// What `generate` wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSummary {
    pub sequences: Vec<String>,
    /// Patches of each sequence, in `sequences` order.
    pub patches: Vec<usize>,
    pub scene: (usize, usize),
    pub files: usize,
    pub splits: PathBuf,
}

/// Target image (0 = reference, 1..5) an image index is cut from.
fn target_of(image: usize) -> usize {
    if image == 0 { 0 } else { (image - 1) % 5 + 1 }
}

/// Picks up to `n` keypoints, strongest first, spread apart and with every
/// jittered region inside every image; fewer when the scene has too few.
fn select(
    kps: &[Keypoint],
    n: usize,
    homs: &[Homography; 6],
    size: (usize, usize),
    seed: u64,
) -> Vec<(Region, Vec<Affine>)> {
    let mut chosen: Vec<(usize, Region, Vec<Affine>)> = Vec::with_capacity(n);
    let mut taken = vec![false; kps.len()];
    // Spacing in multiples of the larger half side, relaxed until N are found.
    for rho in [0.8f32, 0.4, 0.15, 0.0] {
        for (id, kp) in kps.iter().enumerate() {
            if chosen.len() == n {
                break;
            }
            if taken[id] {
                continue;
            }
            let half = 0.5 * REGION_MAGNIFICATION * std::f32::consts::SQRT_2 * kp.sigma;
            let crowded = chosen.iter().any(|(_, r, _)| {
                let ratio = r.half.max(half) / r.half.min(half);
                ratio < 2.0 && (r.cx - kp.x).hypot(r.cy - kp.y) < rho * r.half.max(half)
            });
            if crowded {
                continue;
            }
            taken[id] = true;
            let region = Region { cx: kp.x, cy: kp.y, half, angle: kp.angle };
            let mut rng = Rng::stream(seed ^ 0x6a17_7e12, id as u64);
            let jits: Vec<Affine> = (0..IMAGES.len()).map(|i| jitter(&mut rng, family(i))).collect();
            let visible = (0..IMAGES.len()).all(|i| region.inside(&jits[i], &homs[target_of(i)], size.0, size.1, 1.0));
            if visible {
                chosen.push((id, region, jits));
            }
        }
    }
    chosen.into_iter().map(|(_, r, j)| (r, j)).collect()
}

/// The six images of a sequence and its picked regions.
type Cut = (Vec<image::Image>, [Homography; 6], Vec<(Region, Vec<Affine>)>);

/// Photographs `scene` six times (the reference, five targets of growing
/// viewpoint or illumination change) and picks up to `patches` regions
/// (fewer when the scene has too few usable keypoints).
fn cut_views(scene: &image::Image, viewpoint: bool, seed: u64, patches: usize, thresholds: &[f32]) -> Cut {
    let (w, h) = (scene.w, scene.h);
    let mut geo = Rng::stream(seed, 2);
    let mut photo = Rng::stream(seed, 3);
    let motion = ViewMotion::draw(&mut geo);
    let mut homs = [Homography::IDENTITY; 6];
    let mut illums = [Illumination::NEUTRAL; 6];
    for k in 1..6 {
        let s = k as f32 / 5.0;
        if viewpoint {
            homs[k] = motion.homography(k, w, h, &mut geo);
            // Real viewpoint sequences also see the light change a little.
            illums[k] = Illumination::draw(&mut photo, 0.15 * s);
        } else {
            illums[k] = Illumination::draw(&mut photo, s);
        }
    }
    let views: Vec<image::Image> = (0..6)
        .map(|k| render_view(scene, &homs[k], &illums[k], SENSOR_NOISE, &mut Rng::stream(seed, 10 + k as u64)))
        .collect();
    // Weak extrema are used only when the strong ones do not suffice.
    let mut picked = Vec::new();
    for &threshold in thresholds {
        let kps = detect(&views[0], &DetectParams { threshold, ..DetectParams::default() });
        let got = select(&kps, patches, &homs, (w, h), seed);
        if got.len() > picked.len() {
            picked = got;
        }
        if picked.len() == patches {
            break;
        }
    }
    (views, homs, picked)
}

/// Generates sequence `index` of `cfg` (see `SynthConfig::names`) in memory.
pub fn make_sequence(cfg: &SynthConfig, index: usize) -> Result<Sequence> {
    cfg.validate()?;
    let name = cfg.names().get(index).cloned().ok_or_else(|| {
        Error::InvalidArgument(format!("sequence {index} does not exist ({} sequences)", cfg.sequences))
    })?;
    let seed = cfg.seed ^ name_hash(&name);
    let (w, h) = cfg.scene_size();
    let photo = match &cfg.source {
        Source::Procedural => None,
        Source::Photos(photos) => Some(photo::load(&photos[index % photos.len()])?),
    };
    let viewpoint = name.starts_with("v_");
    // A crop of a photograph can be too plain (sky, a wall): try other crops
    // and keep the one with the most patches; a procedural scene must give all.
    let (attempts, least) = if photo.is_some() { (PHOTO_CROPS, cfg.patches.div_ceil(4)) } else { (1, cfg.patches) };
    let mut best: Option<Cut> = None;
    for attempt in 0..attempts {
        let mut scene_rng = Rng::stream(seed, 1 + 1000 * attempt);
        let scene = match &photo {
            None => scene::render(&mut scene_rng, w, h),
            Some(p) => photo::scene(p, w, h, &mut scene_rng),
        };
        let thresholds: &[f32] = if photo.is_some() { &photo::THRESHOLDS } else { &[1.0, 0.3, 0.1] };
        let cut = cut_views(&scene, viewpoint, seed, cfg.patches, thresholds);
        if best.as_ref().is_none_or(|b| cut.2.len() > b.2.len()) {
            best = Some(cut);
        }
        if best.as_ref().is_some_and(|b| b.2.len() == cfg.patches) {
            break;
        }
    }
    let (views, homs, picked) = best.filter(|b| b.2.len() >= least).ok_or_else(|| {
        let what = match &cfg.source {
            Source::Procedural => format!("the {w}x{h} scene has"),
            Source::Photos(photos) => {
                format!("{attempts} {w}x{h} crops of {} have", photos[index % photos.len()].display())
            }
        };
        Error::InvalidArgument(format!("{name}: {what} too few usable keypoints for {least} patches"))
    })?;
    let n = picked.len();
    let mut clean = vec![vec![0u8; n * PATCH_LEN]; IMAGES.len()];
    for (i, strip) in clean.iter_mut().enumerate() {
        let t = target_of(i);
        for ((region, jits), out) in picked.iter().zip(strip.chunks_exact_mut(PATCH_LEN)) {
            sample_patch(&views[t], region, &jits[i], &homs[t], out);
        }
    }
    let noisy = clean.iter().enumerate().map(|(i, c)| noise::noisy_image(c, cfg.seed, &name, i)).collect();
    let regions = picked.iter().map(|(r, _)| *r).collect();
    let jitters = (0..IMAGES.len()).map(|i| picked.iter().map(|(_, j)| j[i]).collect()).collect();
    Ok(Sequence { name, clean, noisy, regions, jitters })
}

/// The split file of `names`: `a` (about 2/3 train, i_ and v_ on both sides),
/// `full` (all test), `illum` and `view` (test only).
pub fn make_splits(names: &[String], seed: u64) -> Splits {
    let mut rng = Rng::stream(seed, 0x0059_1175);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for prefix in ["i_", "v_"] {
        let mut kind: Vec<String> = names.iter().filter(|n| n.starts_with(prefix)).cloned().collect();
        rng.shuffle(&mut kind);
        let k = kind.len();
        let n_train = if k < 2 { k } else { ((2 * k) as f64 / 3.0).round().clamp(1.0, (k - 1) as f64) as usize };
        train.extend_from_slice(&kind[..n_train]);
        test.extend_from_slice(&kind[n_train..]);
    }
    train.sort();
    test.sort();
    let only = |p: &str| names.iter().filter(|n| n.starts_with(p)).cloned().collect::<Vec<_>>();
    let split = |name: &str, train: Vec<String>, test: Vec<String>| {
        (name.to_string(), Split { name: name.into(), train, test })
    };
    Splits {
        splits: BTreeMap::from([
            split("a", train, test),
            split("full", Vec::new(), names.to_vec()),
            split("illum", Vec::new(), only("i_")),
            split("view", Vec::new(), only("v_")),
        ]),
    }
}

fn write_sequence(seq: &Sequence, out: &Path) -> Result<()> {
    let dir = out.join(&seq.name);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    for (i, name) in IMAGES.iter().enumerate() {
        write_strip(&dir.join(format!("{name}.png")), &seq.clean[i])?;
        write_strip(&dir.join(format!("{name}_noise.png")), &seq.noisy[i])?;
    }
    Ok(())
}

/// Generates every sequence of `cfg` into `out` (created if missing) and
/// writes `splits.json`. Runs on the current rayon pool.
///
/// Nothing reaches `out` until every sequence is made: they are written into
/// a staging folder beside it (`.<name>.partial<pid>`) and moved in at the
/// end, `splits.json` last. A failure (a photograph that does not decode, a
/// crop without keypoints, a full disk) removes the staging folder and any
/// parent folder this call created, and leaves an existing `out` as it was.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<SynthSummary> {
    cfg.validate()?;
    let name = out
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a folder path", out.display())))?
        .to_string_lossy()
        .into_owned();
    if out.exists() && !out.is_dir() {
        return Err(Error::InvalidArgument(format!("{}: exists and is not a folder", out.display())));
    }
    let parent = parent_dir(out);
    // The topmost missing ancestor, removed again if generation fails.
    let created =
        parent.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last().map(Path::to_path_buf);
    std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;
    let staging = parent.join(format!(".{name}.partial{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
    }
    let result = std::fs::create_dir(&staging)
        .map_err(|e| io_err(&staging, e))
        .and_then(|()| write_all(cfg, &staging))
        .and_then(|summary| move_in(&staging, out, &summary.sequences).map(|()| summary));
    let _ = std::fs::remove_dir_all(&staging);
    match result {
        Ok(summary) => Ok(SynthSummary { splits: out.join("splits.json"), ..summary }),
        Err(e) => {
            if let Some(dir) = created {
                let _ = std::fs::remove_dir_all(dir);
            }
            Err(e)
        }
    }
}

/// Every sequence and `splits.json` of `cfg`, written into `dir`.
fn write_all(cfg: &SynthConfig, dir: &Path) -> Result<SynthSummary> {
    let names = cfg.names();
    let patches = (0..names.len())
        .into_par_iter()
        .map(|i| {
            let seq = make_sequence(cfg, i)?;
            write_sequence(&seq, dir)?;
            Ok(seq.regions.len())
        })
        .collect::<Result<Vec<usize>>>()?;
    let splits_path = dir.join("splits.json");
    let text = make_splits(&names, cfg.seed).to_json();
    write_atomic(&splits_path, |w| w.write_all(text.as_bytes()).map_err(|e| io_err(&splits_path, e)))?;
    Ok(SynthSummary {
        files: names.len() * 2 * IMAGES.len() + 1,
        sequences: names,
        patches,
        scene: cfg.scene_size(),
        splits: splits_path,
    })
}

/// Moves the finished dataset in `staging` to `out`: a rename when `out` does
/// not exist; otherwise its old `splits.json` goes first (a dataset half
/// replaced is never taken for one), then each sequence folder replaces its
/// namesake, then the new `splits.json` lands. Other files in `out` stay.
fn move_in(staging: &Path, out: &Path, sequences: &[String]) -> Result<()> {
    if !out.exists() {
        return std::fs::rename(staging, out).map_err(|e| io_err(out, e));
    }
    let splits = out.join("splits.json");
    if splits.exists() {
        std::fs::remove_file(&splits).map_err(|e| io_err(&splits, e))?;
    }
    for seq in sequences {
        let target = out.join(seq);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| io_err(&target, e))?;
        }
        std::fs::rename(staging.join(seq), &target).map_err(|e| io_err(&target, e))?;
    }
    std::fs::rename(staging.join("splits.json"), &splits).map_err(|e| io_err(&splits, e))
}
