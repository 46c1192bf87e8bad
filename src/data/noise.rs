//! nhpatch's noise model: how noisy twins are made for datasets that have
//! none (plain HPatches) and for the synthetic N-HPatches.
//!
//! Per pixel, `noisy = clip(round(clean + sigma * z + impulse), 0, 255)` with
//! `z` standard normal, and with probability `p` the pixel replaced by 0 or
//! 255 (salt and pepper) instead. Strength grows with the image family, as in
//! N-HPatches, where the harder families also carry stronger noise:
//!
//! | family | images | sigma (grey levels) | impulse probability |
//! |---|---|---|---|
//! | reference | ref | 8 | 0.5% |
//! | easy | e1..e5 | 12 | 1% |
//! | hard | h1..h5 | 18 | 1.5% |
//! | tough | t1..t5 | 24 | 2% |
//!
//! Each noise field is independent per pixel (non-smooth). The stream is
//! `Rng::stream(seed ^ name_hash(sequence), image)`, so every image's noise is
//! fixed by (seed, sequence, image) and can be made in parallel.

use super::{family, name_hash};
use crate::rng::Rng;

/// (sigma, impulse probability) for each family: reference, easy, hard, tough.
pub const LEVELS: [(f32, f32); 4] = [(8.0, 0.005), (12.0, 0.01), (18.0, 0.015), (24.0, 0.02)];

/// Noise parameters of image index `image` (0..16).
pub fn level(image: usize) -> (f32, f32) {
    LEVELS[family(image)]
}

/// The random stream for one image of one sequence.
pub fn stream(seed: u64, sequence: &str, image: usize) -> Rng {
    Rng::stream(seed ^ name_hash(sequence), image as u64)
}

/// Writes the noisy version of `clean` (any number of patches of one image) into `out`.
pub fn add_noise(out: &mut [u8], clean: &[u8], image: usize, rng: &mut Rng) {
    assert_eq!(out.len(), clean.len(), "add_noise: buffers differ in length");
    let (sigma, impulse) = level(image);
    for (o, &c) in out.iter_mut().zip(clean) {
        let u = rng.next_f32();
        *o = if u < impulse * 0.5 {
            0
        } else if u < impulse {
            255
        } else {
            (c as f32 + sigma * rng.normal() as f32).round().clamp(0.0, 255.0) as u8
        };
    }
}

/// The noisy twin of one image of one sequence.
pub fn noisy_image(clean: &[u8], seed: u64, sequence: &str, image: usize) -> Vec<u8> {
    let mut out = vec![0u8; clean.len()];
    add_noise(&mut out, clean, image, &mut stream(seed, sequence, image));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_grows_with_the_family_and_is_deterministic() {
        let clean = vec![128u8; 32 * 32 * 20];
        let rms: Vec<f64> = [0, 1, 6, 11]
            .iter()
            .map(|&img| {
                let n = noisy_image(&clean, 9, "v_seq", img);
                assert_eq!(n, noisy_image(&clean, 9, "v_seq", img), "same seed, same noise");
                let s: f64 = n.iter().map(|&v| (v as f64 - 128.0).powi(2)).sum();
                (s / n.len() as f64).sqrt()
            })
            .collect();
        assert!(rms.windows(2).all(|w| w[0] < w[1]), "{rms:?}");
        assert_ne!(noisy_image(&clean, 9, "v_seq", 1), noisy_image(&clean, 9, "v_seq", 2));
        assert_ne!(noisy_image(&clean, 9, "v_seq", 1), noisy_image(&clean, 9, "i_seq", 1));
    }
}
