//! The f32 gray image the generator works on (scenes, rendered views, scale
//! levels), with clamped bilinear sampling and a separable Gaussian blur.
//!
//! Everything before the final 8-bit strips stays in f32 so that repeated
//! resampling (scene -> view -> 65 px patch) adds no quantisation.

/// A gray image, row-major, values nominally in 0..255.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub w: usize,
    pub h: usize,
    pub px: Vec<f32>,
}

impl Image {
    /// A `w x h` image filled with `v`.
    pub fn filled(w: usize, h: usize, v: f32) -> Image {
        Image { w, h, px: vec![v; w * h] }
    }

    #[inline]
    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.px[y * self.w + x]
    }

    /// Bilinear value at (x, y) in pixel-centre coordinates; positions outside
    /// the image take the value of the nearest border pixel.
    #[inline]
    pub fn bilinear(&self, x: f32, y: f32) -> f32 {
        let xc = x.clamp(0.0, (self.w - 1) as f32);
        let yc = y.clamp(0.0, (self.h - 1) as f32);
        // Non-negative, so truncation is floor.
        let x0 = (xc as usize).min(self.w.saturating_sub(2));
        let y0 = (yc as usize).min(self.h.saturating_sub(2));
        let (dx, dy) = (usize::from(self.w > 1), if self.h > 1 { self.w } else { 0 });
        let (fx, fy) = (xc - x0 as f32, yc - y0 as f32);
        let i = y0 * self.w + x0;
        let p = &self.px;
        let top = p[i] + fx * (p[i + dx] - p[i]);
        let bottom = p[i + dy] + fx * (p[i + dy + dx] - p[i + dy]);
        top + fy * (bottom - top)
    }

    /// Mean and standard deviation of the pixels.
    pub fn mean_std(&self) -> (f32, f32) {
        let n = self.px.len().max(1) as f64;
        let mean = self.px.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = self.px.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean as f32, var.sqrt() as f32)
    }

    /// The image mapped linearly to this `mean` and standard deviation
    /// `contrast` (an exposure), clipped to 0..255.
    pub fn exposed(&self, mean: f32, contrast: f32) -> Image {
        let (m, s) = self.mean_std();
        let px = self.px.iter().map(|&v| (mean + contrast * (v - m) / s.max(1e-6)).clamp(0.0, 255.0)).collect();
        Image { w: self.w, h: self.h, px }
    }
}

/// Normalised Gaussian taps for `sigma`, radius `ceil(3 sigma)`.
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as isize;
    let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let s: f32 = k.iter().sum();
    k.into_iter().map(|v| v / s).collect()
}

/// Gaussian blur with clamped borders; `sigma <= 0.05` returns a copy.
pub fn blur(img: &Image, sigma: f32) -> Image {
    if sigma <= 0.05 {
        return img.clone();
    }
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as isize;
    let (w, h) = (img.w, img.h);
    // Horizontal pass.
    let mut tmp = vec![0f32; w * h];
    for (src, dst) in img.px.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
        for (x, d) in dst.iter_mut().enumerate() {
            let mut acc = 0.0;
            for (j, &kv) in k.iter().enumerate() {
                let xi = (x as isize + j as isize - r).clamp(0, w as isize - 1) as usize;
                acc += kv * src[xi];
            }
            *d = acc;
        }
    }
    // Vertical pass, row by row so the inner loop runs along memory.
    let mut out = vec![0f32; w * h];
    for (y, dst) in out.chunks_exact_mut(w).enumerate() {
        for (j, &kv) in k.iter().enumerate() {
            let yi = (y as isize + j as isize - r).clamp(0, h as isize - 1) as usize;
            for (d, &s) in dst.iter_mut().zip(&tmp[yi * w..(yi + 1) * w]) {
                *d += kv * s;
            }
        }
    }
    Image { w, h, px: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_and_blur_keep_constants_and_interpolate() {
        let img = Image { w: 2, h: 2, px: vec![0.0, 10.0, 20.0, 30.0] };
        assert_eq!(img.bilinear(0.5, 0.5), 15.0);
        assert_eq!(img.bilinear(-3.0, 0.0), 0.0);
        assert_eq!(img.bilinear(1.0, 1.0), 30.0);
        let flat = Image::filled(9, 7, 42.0);
        assert!(blur(&flat, 2.0).px.iter().all(|&v| (v - 42.0).abs() < 1e-3));
        let mut spike = Image::filled(21, 21, 0.0);
        spike.px[10 * 21 + 10] = 1.0;
        let b = blur(&spike, 1.5);
        assert!((b.px.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(b.at(10, 10) > b.at(11, 10) && b.at(11, 10) > b.at(12, 10));
    }
}
