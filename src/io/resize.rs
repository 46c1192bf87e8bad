//! Bilinear resizing with OpenCV's `INTER_LINEAR` geometry: destination pixel
//! x samples the source at `(x + 0.5) * src/dst - 0.5`, clamped to the first
//! and last source pixel, so the four corners of the grids align by pixel
//! centres. Downscaling does not low-pass filter first, exactly as OpenCV
//! does when HPatches' 65 px patches become 32 px. Output is rounded to the
//! nearest integer (halves away from zero) and saturated to 0..255.

/// Source index pairs and weights along one axis: for each destination
/// coordinate, `(i0, i1, w1)` with value = `(1 - w1) * s[i0] + w1 * s[i1]`.
fn axis(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let i = f.floor();
            let w = (f - i) as f32;
            let i = i as isize;
            if i < 0 {
                (0, 0, 0.0)
            } else if i as usize >= src - 1 {
                (src - 1, src - 1, 0.0)
            } else {
                (i as usize, i as usize + 1, w)
            }
        })
        .collect()
}

/// Resizes a `sh x sw` 8-bit image into `dst` (`dh x dw`). Sizes must be positive
/// and the buffers exactly sized (checked by the callers that own the shapes).
pub fn resize_bilinear_u8(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize) {
    debug_assert_eq!(src.len(), sw * sh);
    debug_assert_eq!(dst.len(), dw * dh);
    if sw == dw && sh == dh {
        dst.copy_from_slice(src);
        return;
    }
    let xs = axis(sw, dw);
    let ys = axis(sh, dh);
    for (row, &(y0, y1, wy)) in dst.chunks_exact_mut(dw).zip(&ys) {
        let (r0, r1) = (&src[y0 * sw..(y0 + 1) * sw], &src[y1 * sw..(y1 + 1) * sw]);
        for (d, &(x0, x1, wx)) in row.iter_mut().zip(&xs) {
            let top = (1.0 - wx) * r0[x0] as f32 + wx * r0[x1] as f32;
            let bottom = (1.0 - wx) * r1[x0] as f32 + wx * r1[x1] as f32;
            let v = (1.0 - wy) * top + wy * bottom;
            *d = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_constant_and_known_values() {
        let src: Vec<u8> = (0..16).map(|v| v * 10).collect();
        let mut dst = vec![0; 16];
        resize_bilinear_u8(&src, 4, 4, &mut dst, 4, 4);
        assert_eq!(dst, src);
        let flat = vec![77u8; 65 * 65];
        let mut small = vec![0; 32 * 32];
        resize_bilinear_u8(&flat, 65, 65, &mut small, 32, 32);
        assert!(small.iter().all(|&v| v == 77));
        // 2 -> 4 upscaling of [0, 100]: OpenCV gives [0, 25, 75, 100].
        let mut up = vec![0; 4];
        resize_bilinear_u8(&[0, 100], 2, 1, &mut up, 4, 1);
        assert_eq!(up, [0, 25, 75, 100]);
        // 4 -> 2 downscaling samples between pixel pairs: [10, 30, 50, 70] -> [20, 60].
        let mut down = vec![0; 2];
        resize_bilinear_u8(&[10, 30, 50, 70], 4, 1, &mut down, 2, 1);
        assert_eq!(down, [20, 60]);
    }
}
