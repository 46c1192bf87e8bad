//! Reference scenes cut from the user's photographs (`nhpatch synth --images`).
//!
//! A photograph of any size becomes a `w x h` scene by a random crop at a
//! random zoom: the zoom ranges from "the crop covers the whole photograph
//! along its tighter side" up to twice that, never past the photograph's own
//! resolution unless the photograph is smaller than the scene. Shrinking is
//! anti-aliased: the crop is blurred in photograph pixels by
//! `sigma = 0.5 sqrt(1/s^2 - 1)` (s = scene px per photo px), which takes the
//! assumed 0.5 px camera blur at full resolution to 0.5 px at the scene's,
//! then sampled bilinearly at scene pixel centres. Last, the crop's
//! exposure is normalised the way the procedural scenes' is (a mean drawn in
//! 90..160, the standard deviation kept but held to 25..55 grey levels), so
//! a bright photograph does not saturate under the illumination changes.
//!
//! Sequence names come from the file names (`i_<stem>` / `v_<stem>`, with
//! `_2`, `_3`, ... when a photograph serves several sequences), so a
//! researcher can tell which photograph a sequence was made from.

use super::image::{Image, blur};
use crate::error::{Error, Result};
use crate::io::photo::read_gray;
use crate::rng::Rng;
use std::path::{Path, PathBuf};

/// Smallest photograph side accepted, pixels.
pub const MIN_SIDE: usize = 64;
/// Default scene size from photographs: large enough that a crop of a
/// desktop-size photograph keeps most of its detail (at 640x480 a 2560 px
/// photograph is shrunk 4x and its fine texture is gone).
pub const SCENE: (usize, usize) = (1024, 768);
/// DoG thresholds tried from photographs, strongest first. Unlike the
/// procedural scenes' (down to 0.1), no threshold at the level of JPEG noise:
/// a plain photograph gives fewer patches instead of patches of nothing.
pub const THRESHOLDS: [f32; 2] = [1.0, 0.3];

/// Loads `path` as an f32 gray image (0..255).
pub fn load(path: &Path) -> Result<Image> {
    let g = read_gray(path)?;
    if g.width < MIN_SIDE || g.height < MIN_SIDE {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!(
                "a {}x{} photograph is too small: each side must be at least {MIN_SIDE} px",
                g.width, g.height
            ),
        });
    }
    Ok(Image { w: g.width, h: g.height, px: g.pixels.iter().map(|&v| v as f32).collect() })
}

/// A `w x h` scene cut from `photo` at a random position and zoom.
pub fn scene(photo: &Image, w: usize, h: usize, rng: &mut Rng) -> Image {
    let (pw, ph) = (photo.w as f64, photo.h as f64);
    // Scene pixels per photograph pixel at which the crop just fits.
    let cover = (w as f64 / pw).max(h as f64 / ph);
    let most = (2.0 * cover).min(cover.max(1.0));
    let s = cover * (most / cover).powf(rng.next_f32() as f64);
    // The crop in photograph pixels, and its top-left corner.
    let (cw, ch) = (w as f64 / s, h as f64 / s);
    let x0 = (pw - cw).max(0.0) * rng.next_f32() as f64;
    let y0 = (ph - ch).max(0.0) * rng.next_f32() as f64;
    // Blur only the part that is sampled (plus the kernel's reach).
    let sigma = if s < 1.0 { 0.5 * (1.0 / (s * s) - 1.0).sqrt() } else { 0.0 };
    let reach = (3.0 * sigma).ceil() + 2.0;
    let bx0 = (x0 - reach).floor().max(0.0) as usize;
    let by0 = (y0 - reach).floor().max(0.0) as usize;
    let bx1 = ((x0 + cw + reach).ceil() as usize).min(photo.w);
    let by1 = ((y0 + ch + reach).ceil() as usize).min(photo.h);
    let (bw, bh) = (bx1 - bx0, by1 - by0);
    let mut part = Image::filled(bw, bh, 0.0);
    for (y, row) in part.px.chunks_exact_mut(bw).enumerate() {
        let src = (by0 + y) * photo.w + bx0;
        row.copy_from_slice(&photo.px[src..src + bw]);
    }
    let part = blur(&part, sigma as f32);
    let mut px = Vec::with_capacity(w * h);
    for y in 0..h {
        // Scene pixel centre (x + 0.5) / s in photograph coordinates, pixel-centre based.
        let sy = (y0 + (y as f64 + 0.5) / s - 0.5 - by0 as f64) as f32;
        for x in 0..w {
            let sx = (x0 + (x as f64 + 0.5) / s - 0.5 - bx0 as f64) as f32;
            px.push(part.bilinear(sx, sy));
        }
    }
    let crop = Image { w, h, px };
    let (mean, contrast) = (rng.uniform(90.0, 160.0), crop.mean_std().1.clamp(25.0, 55.0));
    crop.exposed(mean, contrast)
}

/// The sequence name stem of a photograph: its file stem with every
/// character other than ASCII letters, digits and `-` replaced by `-`.
pub fn stem(path: &Path) -> String {
    let raw = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect()
}

/// Names of `sequences` sequences made from `photos` (in their order), and
/// for each the photograph it uses: sequence `j` uses photograph `j mod n`;
/// its kind alternates with the photograph's index and the repeat, so a
/// photograph used twice gives one i_ and one v_ sequence.
pub fn plan(photos: &[PathBuf], sequences: usize) -> Result<Vec<(String, usize)>> {
    let n = photos.len();
    let stems: Vec<String> = photos.iter().map(|p| stem(p)).collect();
    for (i, a) in stems.iter().enumerate() {
        if let Some(j) = stems[..i].iter().position(|b| b == a) {
            return Err(Error::InvalidArgument(format!(
                "{} and {} both give the sequence name stem '{a}': rename one of them",
                photos[j].display(),
                photos[i].display()
            )));
        }
    }
    Ok((0..sequences)
        .map(|j| {
            let (p, repeat) = (j % n, j / n);
            let kind = if (p + repeat) % 2 == 0 { "i" } else { "v" };
            let suffix = if repeat == 0 { String::new() } else { format!("_{}", repeat + 1) };
            (format!("{kind}_{}{suffix}", stems[p]), p)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_alternate_kinds_and_mark_repeats() {
        let photos: Vec<PathBuf> = ["a b.jpg", "c.png", "d.jpeg"].iter().map(PathBuf::from).collect();
        let names: Vec<String> = plan(&photos, 6).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["i_a-b", "v_c", "i_d", "v_a-b_2", "i_c_2", "v_d_2"]);
        let dup: Vec<PathBuf> = ["x.png", "x.jpg"].iter().map(PathBuf::from).collect();
        let err = plan(&dup, 4).unwrap_err().to_string();
        assert!(err.contains("x.png") && err.contains("x.jpg"), "{err}");
    }

    #[test]
    fn scene_keeps_the_photograph_content_and_size() {
        // A horizontal ramp: any crop of it is a ramp with the same slope sign.
        let (pw, ph) = (400, 300);
        let photo = Image { w: pw, h: ph, px: (0..pw * ph).map(|i| (i % pw) as f32 * 255.0 / pw as f32).collect() };
        for seed in 0..4 {
            let s = scene(&photo, 160, 120, &mut Rng::new(seed));
            assert_eq!((s.w, s.h), (160, 120));
            assert!(s.px.iter().all(|v| (0.0..=255.0).contains(v)));
            let row = &s.px[60 * 160..61 * 160];
            assert!(row.windows(2).all(|p| p[1] >= p[0] - 1e-3), "ramp must stay increasing");
            // Zoom between cover (0.4 scene px per photo px) and twice it: the slope per scene px lies in between.
            let slope = (row[150] - row[10]) / 140.0;
            let per_photo_px = 255.0 / pw as f32;
            assert!(slope >= per_photo_px / 0.8 - 1e-3 && slope <= per_photo_px / 0.4 + 1e-3, "slope {slope}");
        }
    }
}
