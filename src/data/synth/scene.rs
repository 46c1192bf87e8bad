//! Procedural reference scenes with natural-image statistics.
//!
//! The descriptor learns from these, so they mix the ingredients that make
//! real HPatches patches hard: a multi-octave value-noise texture with a 1/f
//! amplitude spectrum (amplitude proportional to wavelength), piecewise-
//! constant regions (convex polygons and rotated rectangles with a linear
//! gradient and their own texture), soft and hard blobs, thin strokes and
//! polylines, and repeated structures (window grids, checkerboards, stripes)
//! whose near-identical cells give the hard near-duplicate negatives.
//! Shapes are painted largest first with anti-aliased edges of random
//! softness, the whole is blurred by a small camera PSF and mapped to a
//! per-scene brightness and contrast.

use super::image::{Image, blur};
use crate::rng::Rng;

/// A smooth value-noise octave with lattice spacing `cell`, unit amplitude.
fn value_noise(rng: &mut Rng, w: usize, h: usize, cell: f32) -> Vec<f32> {
    let gw = (w as f32 / cell).ceil() as usize + 2;
    let gh = (h as f32 / cell).ceil() as usize + 2;
    let lattice: Vec<f32> = (0..gw * gh).map(|_| rng.normal() as f32).collect();
    let (ox, oy) = (rng.next_f32(), rng.next_f32());
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        let gy = y as f32 / cell + oy;
        let (iy, fy) = (gy.floor() as usize, smooth(gy.fract()));
        for x in 0..w {
            let gx = x as f32 / cell + ox;
            let (ix, fx) = (gx.floor() as usize, smooth(gx.fract()));
            let l = |i: usize, j: usize| lattice[j * gw + i];
            let top = l(ix, iy) + fx * (l(ix + 1, iy) - l(ix, iy));
            let bottom = l(ix, iy + 1) + fx * (l(ix + 1, iy + 1) - l(ix, iy + 1));
            out[y * w + x] = top + fy * (bottom - top);
        }
    }
    out
}

/// Sum of octaves from `min_cell` to `max_cell` with amplitude `cell^beta`
/// (beta 1 is a 1/f spectrum), normalised to zero mean and unit deviation.
pub fn fractal_noise(rng: &mut Rng, w: usize, h: usize, min_cell: f32, max_cell: f32, beta: f32) -> Vec<f32> {
    let mut acc = vec![0f32; w * h];
    let mut cell = min_cell;
    while cell <= max_cell {
        let amp = cell.powf(beta);
        for (a, v) in acc.iter_mut().zip(value_noise(rng, w, h, cell)) {
            *a += amp * v;
        }
        cell *= 2.0;
    }
    let img = Image { w, h, px: acc };
    let (m, s) = img.mean_std();
    img.px.into_iter().map(|v| (v - m) / s.max(1e-6)).collect()
}

/// How a painted shape chooses its value at a pixel.
struct Fill {
    base: f32,
    gx: f32,
    gy: f32,
    cx: f32,
    cy: f32,
    texture: f32,
}

impl Fill {
    fn draw(rng: &mut Rng, cx: f32, cy: f32, size: f32) -> Fill {
        let slope = rng.uniform(0.0, 1.2) / size.max(4.0);
        let a = rng.uniform(0.0, std::f32::consts::TAU);
        Fill {
            base: rng.normal() as f32 * 1.1,
            gx: slope * a.cos(),
            gy: slope * a.sin(),
            cx,
            cy,
            texture: rng.uniform(0.0, 0.5),
        }
    }

    #[inline]
    fn value(&self, x: f32, y: f32, tex: f32) -> f32 {
        self.base + self.gx * (x - self.cx) + self.gy * (y - self.cy) + self.texture * tex
    }
}

/// One paintable element: a coverage function over a bounding box.
enum Shape {
    /// Convex polygon, counter-clockwise vertices; edge softness in px.
    Polygon { pts: Vec<(f32, f32)>, soft: f32 },
    /// Ellipse: centre, radii, angle, edge softness.
    Ellipse { c: (f32, f32), r: (f32, f32), angle: f32, soft: f32 },
    /// Polyline of the given width.
    Stroke { pts: Vec<(f32, f32)>, width: f32, soft: f32 },
    /// Lattice pattern inside a rotated rectangle: kind 0 windows, 1 checkerboard, 2 stripes.
    Tiles { c: (f32, f32), half: (f32, f32), angle: f32, period: (f32, f32), kind: u8, fill: f32, soft: f32 },
}

fn seg_dist(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / (dx * dx + dy * dy).max(1e-6)).clamp(0.0, 1.0);
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

impl Shape {
    /// Bounding box (x0, y0, x1, y1), unclipped.
    fn bounds(&self) -> (f32, f32, f32, f32) {
        let of = |pts: &[(f32, f32)], pad: f32| {
            let (mut a, mut b, mut c, mut d) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
            for p in pts {
                (a, b, c, d) = (a.min(p.0), b.min(p.1), c.max(p.0), d.max(p.1));
            }
            (a - pad, b - pad, c + pad, d + pad)
        };
        match self {
            Shape::Polygon { pts, soft } => of(pts, soft + 1.0),
            Shape::Stroke { pts, width, soft } => of(pts, width + soft + 1.0),
            Shape::Ellipse { c, r, soft, .. } => {
                let m = r.0.max(r.1) + soft + 1.0;
                (c.0 - m, c.1 - m, c.0 + m, c.1 + m)
            }
            Shape::Tiles { c, half, .. } => {
                let m = (half.0 * half.0 + half.1 * half.1).sqrt() + 1.0;
                (c.0 - m, c.1 - m, c.0 + m, c.1 + m)
            }
        }
    }

    /// Coverage in 0..1 at pixel centre p.
    fn coverage(&self, p: (f32, f32)) -> f32 {
        let ramp = |d: f32, soft: f32| (d / soft + 0.5).clamp(0.0, 1.0);
        match self {
            Shape::Polygon { pts, soft } => {
                let mut d = f32::MAX;
                for i in 0..pts.len() {
                    let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
                    let (ex, ey) = (b.0 - a.0, b.1 - a.1);
                    let len = (ex * ex + ey * ey).sqrt().max(1e-6);
                    // Left normal (-ey, ex) of a counter-clockwise edge points inside.
                    d = d.min(((p.0 - a.0) * -ey + (p.1 - a.1) * ex) / len);
                }
                ramp(d, *soft)
            }
            Shape::Ellipse { c, r, angle, soft } => {
                let (s, co) = angle.sin_cos();
                let (dx, dy) = (p.0 - c.0, p.1 - c.1);
                let (u, v) = (co * dx + s * dy, -s * dx + co * dy);
                let q = ((u / r.0).powi(2) + (v / r.1).powi(2)).sqrt();
                ramp((1.0 - q) * r.0.min(r.1), *soft)
            }
            Shape::Stroke { pts, width, soft } => {
                let d = pts.windows(2).map(|s| seg_dist(p, s[0], s[1])).fold(f32::MAX, f32::min);
                ramp(width * 0.5 - d, *soft)
            }
            Shape::Tiles { c, half, angle, period, kind, fill, soft } => {
                let (s, co) = angle.sin_cos();
                let (dx, dy) = (p.0 - c.0, p.1 - c.1);
                let (u, v) = (co * dx + s * dy, -s * dx + co * dy);
                let inside = ramp((half.0 - u.abs()).min(half.1 - v.abs()), *soft);
                if inside == 0.0 {
                    return 0.0;
                }
                // Signed distance (px) to the edge of the cell's inner part.
                let cell = |t: f32, per: f32| {
                    let f = (t / per).rem_euclid(1.0) * per;
                    let m = per * (1.0 - fill) * 0.5;
                    (f - m).min(per - m - f)
                };
                let d = match kind {
                    0 => cell(u, period.0).min(cell(v, period.1)),
                    1 => {
                        let (a, b) = ((u / period.0).rem_euclid(2.0), (v / period.1).rem_euclid(2.0));
                        let du = (a.fract().min(1.0 - a.fract())) * period.0;
                        let dv = (b.fract().min(1.0 - b.fract())) * period.1;
                        let sign = if (a >= 1.0) == (b >= 1.0) { 1.0 } else { -1.0 };
                        sign * du.min(dv)
                    }
                    _ => cell(u, period.0),
                };
                inside * ramp(d, *soft)
            }
        }
    }
}

fn log_uniform(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    (lo.ln() + rng.next_f32() * (hi.ln() - lo.ln())).exp()
}

fn convex_polygon(rng: &mut Rng, c: (f32, f32), r: f32, n: usize) -> Vec<(f32, f32)> {
    let mut angles: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, std::f32::consts::TAU)).collect();
    angles.sort_by(f32::total_cmp);
    angles.iter().map(|a| (c.0 + r * a.cos(), c.1 + r * a.sin())).collect()
}

/// The vertices in counter-clockwise order (positive shoelace area), as `coverage` expects.
fn counter_clockwise(mut pts: Vec<(f32, f32)>) -> Vec<(f32, f32)> {
    let area: f32 = (0..pts.len())
        .map(|i| {
            let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum();
    if area < 0.0 {
        pts.reverse();
    }
    pts
}

fn rectangle(c: (f32, f32), half: (f32, f32), angle: f32) -> Vec<(f32, f32)> {
    let (s, co) = angle.sin_cos();
    [(-1.0, 1.0), (1.0, 1.0), (1.0, -1.0), (-1.0, -1.0)]
        .iter()
        .map(|&(a, b): &(f32, f32)| (c.0 + co * a * half.0 - s * b * half.1, c.1 + s * a * half.0 + co * b * half.1))
        .collect()
}

/// Draws the list of shapes of one scene, each with its fill.
fn draw_shapes(rng: &mut Rng, w: usize, h: usize) -> Vec<(Shape, Fill, f32)> {
    let (wf, hf) = (w as f32, h as f32);
    let area = wf * hf / (640.0 * 480.0);
    let count = |rng: &mut Rng, lo: f32, hi: f32| (rng.uniform(lo, hi) * area).round() as usize;
    let small = wf.min(hf);
    let mut shapes = Vec::new();
    let centre = |rng: &mut Rng| (rng.uniform(-0.05, 1.05) * wf, rng.uniform(-0.05, 1.05) * hf);
    let soft = |rng: &mut Rng| log_uniform(rng, 0.6, 3.0);
    for _ in 0..count(rng, 20.0, 45.0) {
        let c = centre(rng);
        let r = log_uniform(rng, 6.0, 0.3 * small);
        let n = 3 + rng.below(5) as usize;
        let pts = if rng.next_f32() < 0.45 {
            let angle = if rng.next_f32() < 0.5 { rng.normal() as f32 * 0.05 } else { rng.uniform(0.0, 3.2) };
            rectangle(c, (r, r * log_uniform(rng, 0.2, 1.0)), angle)
        } else {
            convex_polygon(rng, c, r, n)
        };
        shapes.push((Shape::Polygon { pts: counter_clockwise(pts), soft: soft(rng) }, Fill::draw(rng, c.0, c.1, r), r));
    }
    for _ in 0..count(rng, 15.0, 35.0) {
        let c = centre(rng);
        let r0 = log_uniform(rng, 2.0, 0.12 * small);
        let r = (r0, r0 * log_uniform(rng, 0.3, 1.0));
        // Soft blobs have a wide edge, hard ones a sharp one.
        let s = if rng.next_f32() < 0.5 { r0 * rng.uniform(0.5, 1.5) } else { soft(rng) };
        let e = Shape::Ellipse { c, r, angle: rng.uniform(0.0, 3.2), soft: s };
        shapes.push((e, Fill::draw(rng, c.0, c.1, r0), r0));
    }
    for _ in 0..count(rng, 15.0, 40.0) {
        let mut p = centre(rng);
        let mut pts = vec![p];
        let len = log_uniform(rng, 8.0, 0.3 * small);
        let mut dir = rng.uniform(0.0, std::f32::consts::TAU);
        for _ in 0..1 + rng.below(4) {
            dir += rng.normal() as f32 * 0.6;
            p = (p.0 + len * dir.cos(), p.1 + len * dir.sin());
            pts.push(p);
        }
        let width = log_uniform(rng, 1.0, 5.0);
        let st = Shape::Stroke { pts, width, soft: soft(rng).min(width) };
        shapes.push((st, Fill::draw(rng, p.0, p.1, len), width));
    }
    for _ in 0..count(rng, 1.0, 3.99) {
        let c = centre(rng);
        let half = (log_uniform(rng, 30.0, 0.3 * small), log_uniform(rng, 30.0, 0.3 * small));
        let p0 = log_uniform(rng, 6.0, 22.0);
        let angle = if rng.next_f32() < 0.6 { rng.normal() as f32 * 0.04 } else { rng.uniform(0.0, 3.2) };
        let t = Shape::Tiles {
            c,
            half,
            angle,
            period: (p0, p0 * log_uniform(rng, 0.7, 1.5)),
            kind: rng.below(3) as u8,
            fill: rng.uniform(0.4, 0.8),
            soft: soft(rng),
        };
        shapes.push((t, Fill::draw(rng, c.0, c.1, half.0), half.0.max(half.1)));
    }
    // Painter's order: largest first, so small structure stays visible.
    shapes.sort_by(|a, b| b.2.total_cmp(&a.2));
    shapes
}

/// Renders one reference scene of `w x h` pixels, values in 0..255.
pub fn render(rng: &mut Rng, w: usize, h: usize) -> Image {
    let beta = rng.uniform(0.8, 1.3);
    let base = fractal_noise(rng, w, h, 2.0, 256.0, beta);
    let tex_beta = rng.uniform(0.3, 1.0);
    let tex = fractal_noise(rng, w, h, 2.0, 32.0, tex_beta);
    let mut px: Vec<f32> = base.iter().map(|v| 0.8 * v).collect();
    for (shape, fill, _) in draw_shapes(rng, w, h) {
        let (x0, y0, x1, y1) = shape.bounds();
        let xs = (x0.floor().max(0.0) as usize)..((x1.ceil() + 1.0).clamp(0.0, w as f32) as usize);
        let ys = (y0.floor().max(0.0) as usize)..((y1.ceil() + 1.0).clamp(0.0, h as f32) as usize);
        for y in ys {
            for x in xs.clone() {
                let (xf, yf) = (x as f32, y as f32);
                let a = shape.coverage((xf, yf));
                if a > 0.0 {
                    let i = y * w + x;
                    px[i] += a * (fill.value(xf, yf, tex[i]) - px[i]);
                }
            }
        }
    }
    // A faint fine grain everywhere (surface texture), then the camera PSF.
    for (p, t) in px.iter_mut().zip(&tex) {
        *p += 0.12 * t;
    }
    let img = blur(&Image { w, h, px }, rng.uniform(0.5, 0.9));
    let (mean, contrast) = (rng.uniform(90.0, 160.0), rng.uniform(30.0, 55.0));
    img.exposed(mean, contrast)
}
