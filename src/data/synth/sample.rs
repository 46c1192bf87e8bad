//! The images of a sequence and the patches cut from them.
//!
//! A sequence has six images of one scene: the reference and five targets.
//! A v_ target is the scene seen through a homography (prefiltered when the
//! view shrinks it, so it does not alias) with a mild illumination change; an
//! i_ target keeps the geometry and changes the illumination (gain, gamma,
//! contrast, a smooth shading ramp), more with each index. Every image gets
//! its own faint sensor noise, so even the reference is one photograph and
//! not the ideal scene. The e, h and t images of index k are all cut from
//! target k, each through its own jitter of the region, as in HPatches.
//!
//! A patch is sampled at 65x65 (bilinear, pixel centres of the region's
//! orientation-normalised square), rounded to 8 bits and resized to 32x32
//! with OpenCV's bilinear geometry, as HPatches' 65 px patches become 32 px.

use super::geometry::{Affine, Homography, Region};
use super::image::{Image, blur};
use crate::io::PATCH_LEN;
use crate::io::resize::resize_bilinear_u8;
use crate::rng::Rng;

/// Side of the patch as first sampled (HPatches' size).
pub const SAMPLE: usize = 65;

/// A photometric change: `out = gain * shade(x, y) * (mean + contrast * (g(v) - mean))`
/// with `g(v) = 255 (v / 255)^gamma` and `shade` a linear ramp across the frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Illumination {
    pub gain: f32,
    pub gamma: f32,
    pub contrast: f32,
    /// Shading change per frame width / height.
    pub ramp: (f32, f32),
}

impl Illumination {
    pub const NEUTRAL: Illumination = Illumination { gain: 1.0, gamma: 1.0, contrast: 1.0, ramp: (0.0, 0.0) };

    /// A random change of strength `s` (0 none, 1 the strongest i_ image).
    pub fn draw(rng: &mut Rng, s: f32) -> Illumination {
        let mut signed = |lo: f32, hi: f32| {
            let v = rng.uniform(lo, hi) * s;
            if rng.next_f32() < 0.5 { -v } else { v }
        };
        let a = signed(0.0, std::f32::consts::PI);
        let ramp = signed(0.2, 0.6);
        Illumination {
            gain: signed(0.25, 0.6).exp(),
            gamma: signed(0.15, 0.5).exp(),
            contrast: signed(0.1, 0.35).exp(),
            ramp: (ramp * a.cos(), ramp * a.sin()),
        }
    }

    #[inline]
    fn apply(&self, v: f32, x: f32, y: f32, w: f32, h: f32) -> f32 {
        let g = 255.0 * (v.max(0.0) / 255.0).powf(self.gamma);
        let c = 128.0 + self.contrast * (g - 128.0);
        let shade = (1.0 + self.ramp.0 * (x / w - 0.5) + self.ramp.1 * (y / h - 0.5)).max(0.05);
        self.gain * shade * c
    }
}

/// An approximately standard normal draw: the sum of four 16-bit uniforms
/// (Irwin-Hall), rescaled. One generator call instead of Box-Muller's two
/// plus a logarithm and a cosine; plenty for faint sensor noise.
#[inline]
fn approx_normal(rng: &mut Rng) -> f32 {
    let b = rng.next_u64();
    let sum: u64 = (0..4).map(|i| (b >> (16 * i)) & 0xffff).sum();
    // Mean 2 * 65535, variance 4 / 12 in units of 65536.
    (sum as f32 / 65536.0 - 2.0) * 3f32.sqrt()
}

/// Renders one image of a sequence: the scene through `hom` (reference ->
/// this image), then `illum`, then sensor noise of `noise` grey levels.
pub fn render_view(scene: &Image, hom: &Homography, illum: &Illumination, noise: f32, rng: &mut Rng) -> Image {
    let (w, h) = (scene.w, scene.h);
    let (wf, hf) = (w as f32, h as f32);
    let inv = hom.inverse().unwrap_or(Homography::IDENTITY);
    let identity = *hom == Homography::IDENTITY;
    // Where this image shrinks the scene, pre-blur so the warp does not alias.
    let shrink = hom.local_scale(wf / 2.0, hf / 2.0);
    let source = if !identity && shrink < 1.0 {
        blur(scene, 0.6 * (1.0 / (shrink * shrink) - 1.0).sqrt())
    } else {
        scene.clone()
    };
    let mut px = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f32, y as f32);
            let v = if identity {
                source.at(x, y)
            } else {
                let (sx, sy) = inv.apply(xf, yf);
                source.bilinear(sx, sy)
            };
            px[y * w + x] = illum.apply(v, xf, yf, wf, hf) + noise * approx_normal(rng);
        }
    }
    Image { w, h, px }
}

/// Samples the patch of `region` (jittered by `j`, seen in `view` through
/// `hom`) at 65x65 and resizes it to 32x32 into `out`.
pub fn sample_patch(view: &Image, region: &Region, j: &Affine, hom: &Homography, out: &mut [u8]) {
    debug_assert_eq!(out.len(), PATCH_LEN);
    // Patch pixel (c, r) sits at u = -1 + (2c + 1) / 65: reference positions
    // are affine in (c, r), so walk them incrementally.
    let step = 2.0 / SAMPLE as f32;
    let first = -1.0 + 0.5 * step;
    let origin = region.map(j, first, first);
    let along = region.map(j, first + step, first);
    let down = region.map(j, first, first + step);
    let (dc, dr) = ((along.0 - origin.0, along.1 - origin.1), (down.0 - origin.0, down.1 - origin.1));
    let identity = *hom == Homography::IDENTITY;
    let m = hom.0.map(|v| v as f32);
    let mut big = [0u8; SAMPLE * SAMPLE];
    for (r, row) in big.chunks_exact_mut(SAMPLE).enumerate() {
        let (mut x, mut y) = (origin.0 + r as f32 * dr.0, origin.1 + r as f32 * dr.1);
        for b in row.iter_mut() {
            let (px, py) = if identity {
                (x, y)
            } else {
                let w = m[6] * x + m[7] * y + m[8];
                ((m[0] * x + m[1] * y + m[2]) / w, (m[3] * x + m[4] * y + m[5]) / w)
            };
            // Non-negative after the clamp, so +0.5 and truncation round to nearest.
            *b = (view.bilinear(px, py).clamp(0.0, 255.0) + 0.5) as u8;
            x += dc.0;
            y += dc.1;
        }
    }
    resize_bilinear_u8(&big, SAMPLE, SAMPLE, out, crate::io::PATCH, crate::io::PATCH);
}
