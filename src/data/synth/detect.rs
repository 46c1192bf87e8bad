//! Keypoints on the reference scene, as HPatches found its patches: a
//! difference-of-Gaussians detector (Lowe's SIFT detector without octaves).
//!
//! The image is blurred to `levels + 2` scales `sigma_i = sigma0 * 2^(i/3)`
//! (incrementally, each from the previous one); differences of neighbouring
//! scales approximate the scale-normalised Laplacian. A keypoint is a strict
//! extremum among its 26 neighbours in (x, y, scale) whose |DoG| exceeds a
//! threshold and whose principal curvature ratio is below 10 (edges are
//! rejected). Position and scale are refined by a parabola through the
//! neighbours; the dominant orientation is the peak of a 36-bin, Gaussian-
//! weighted histogram of gradient orientations at the keypoint's scale.

use super::image::{Image, blur};
use std::collections::VecDeque;

/// A detected keypoint, in scene pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Keypoint {
    pub x: f32,
    pub y: f32,
    /// Gaussian scale of the blob (a disc of radius `sigma * sqrt(2)` responds most).
    pub sigma: f32,
    /// Dominant gradient orientation, radians.
    pub angle: f32,
    /// |DoG| at the extremum: the strength used for ranking.
    pub response: f32,
}

/// Detector settings.
#[derive(Clone, Copy, Debug)]
pub struct DetectParams {
    /// Scale of the first level.
    pub sigma0: f32,
    /// Number of scales at which extrema are sought.
    pub levels: usize,
    /// Minimum |DoG| in grey levels.
    pub threshold: f32,
    /// Largest ratio of principal curvatures (Lowe's r).
    pub edge_ratio: f32,
}

impl Default for DetectParams {
    fn default() -> Self {
        DetectParams { sigma0: 1.6, levels: 7, threshold: 1.0, edge_ratio: 10.0 }
    }
}

/// Parabolic peak offset in -0.5..0.5 through three samples.
fn parabola(a: f32, b: f32, c: f32) -> f32 {
    let den = a - 2.0 * b + c;
    if den.abs() < 1e-12 { 0.0 } else { (0.5 * (a - c) / den).clamp(-0.5, 0.5) }
}

/// Dominant gradient orientation around (x, y) on a level of scale `sigma`.
pub fn orientation(img: &Image, x: f32, y: f32, sigma: f32) -> f32 {
    const BINS: usize = 36;
    let mut hist = [0f32; BINS];
    let sw = 1.5 * sigma;
    let r = (3.0 * sw).ceil() as isize;
    let (cx, cy) = (x.round() as isize, y.round() as isize);
    for dy in -r..=r {
        for dx in -r..=r {
            let (px, py) = (cx + dx, cy + dy);
            if px < 1 || py < 1 || px >= img.w as isize - 1 || py >= img.h as isize - 1 {
                continue;
            }
            let (px, py) = (px as usize, py as usize);
            let gx = img.at(px + 1, py) - img.at(px - 1, py);
            let gy = img.at(px, py + 1) - img.at(px, py - 1);
            let d2 = (px as f32 - x).powi(2) + (py as f32 - y).powi(2);
            let wgt = (-d2 / (2.0 * sw * sw)).exp() * (gx * gx + gy * gy).sqrt();
            let a = gy.atan2(gx).rem_euclid(std::f32::consts::TAU);
            hist[((a / std::f32::consts::TAU * BINS as f32) as usize).min(BINS - 1)] += wgt;
        }
    }
    // Two passes of [1 2 1]/4 smoothing around the circle.
    for _ in 0..2 {
        let h = hist;
        for i in 0..BINS {
            hist[i] = 0.25 * h[(i + BINS - 1) % BINS] + 0.5 * h[i] + 0.25 * h[(i + 1) % BINS];
        }
    }
    let best = (0..BINS).max_by(|&a, &b| hist[a].total_cmp(&hist[b]).then(b.cmp(&a))).unwrap_or(0);
    let off = parabola(hist[(best + BINS - 1) % BINS], hist[best], hist[(best + 1) % BINS]);
    ((best as f32 + 0.5 + off) / BINS as f32 * std::f32::consts::TAU).rem_euclid(std::f32::consts::TAU)
}

/// Appends the extrema of the middle of three DoG levels; `g` is the
/// Gaussian at the lower edge of that level (scale `sigma_lo`).
fn extrema(dogs: &VecDeque<Vec<f32>>, g: &Image, sigma_lo: f32, k: f32, p: &DetectParams, out: &mut Vec<Keypoint>) {
    let (lo, mid, hi) = (&dogs[0], &dogs[1], &dogs[2]);
    let (w, h) = (g.w, g.h);
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let i = y * w + x;
            let v = mid[i];
            if v.abs() < p.threshold {
                continue;
            }
            let beaten = |u: f32| (v > 0.0 && u >= v) || (v < 0.0 && u <= v);
            let ring = [i - w - 1, i - w, i - w + 1, i - 1, i + 1, i + w - 1, i + w, i + w + 1];
            if beaten(lo[i]) || beaten(hi[i]) || ring.iter().any(|&j| beaten(lo[j]) || beaten(mid[j]) || beaten(hi[j]))
            {
                continue;
            }
            let dxx = mid[i + 1] + mid[i - 1] - 2.0 * v;
            let dyy = mid[i + w] + mid[i - w] - 2.0 * v;
            let dxy = 0.25 * (mid[i + w + 1] - mid[i + w - 1] - mid[i - w + 1] + mid[i - w - 1]);
            let (tr, det) = (dxx + dyy, dxx * dyy - dxy * dxy);
            let r = p.edge_ratio;
            if det <= 0.0 || tr * tr * r >= (r + 1.0).powi(2) * det {
                continue;
            }
            let ox = parabola(mid[i - 1], v, mid[i + 1]);
            let oy = parabola(mid[i - w], v, mid[i + w]);
            let os = parabola(lo[i], v, hi[i]);
            // The level's scale is the geometric mean of its two Gaussians.
            let sigma = sigma_lo * k.powf(0.5 + os);
            let (kx, ky) = (x as f32 + ox, y as f32 + oy);
            let angle = orientation(g, kx, ky, sigma);
            out.push(Keypoint { x: kx, y: ky, sigma, angle, response: v.abs() });
        }
    }
}

/// All keypoints of `img`, strongest first (ties by position, so the order is fixed).
pub fn detect(img: &Image, p: &DetectParams) -> Vec<Keypoint> {
    let k = 2f32.powf(1.0 / 3.0);
    let sigmas: Vec<f32> = (0..p.levels + 3).map(|i| p.sigma0 * k.powi(i as i32)).collect();
    // Only a window of three Gaussians and three DoGs is alive at a time, so
    // memory stays a few images whatever the number of levels. The rendered
    // image already carries about 0.5 px of blur.
    let mut gauss = VecDeque::from([blur(img, (sigmas[0].powi(2) - 0.25).max(0.0).sqrt())]);
    let mut dogs: VecDeque<Vec<f32>> = VecDeque::new();
    let mut out = Vec::new();
    for i in 1..sigmas.len() {
        let prev = gauss.back().expect("one Gaussian is always kept");
        let g = blur(prev, (sigmas[i].powi(2) - sigmas[i - 1].powi(2)).sqrt());
        dogs.push_back(g.px.iter().zip(&prev.px).map(|(a, b)| a - b).collect());
        gauss.push_back(g);
        if dogs.len() == 3 {
            // DoG level s = i - 2 lies between Gaussians s and s + 1 (the front one is s).
            let s = i - 2;
            extrema(&dogs, &gauss[0], sigmas[s], k, p, &mut out);
            dogs.pop_front();
        }
        if gauss.len() > 2 {
            gauss.pop_front();
        }
    }
    out.sort_by(|a, b| b.response.total_cmp(&a.response).then(a.y.total_cmp(&b.y)).then(a.x.total_cmp(&b.x)));
    out
}
