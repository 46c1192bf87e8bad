//! Datasets: the (N-)HPatches layout, splits, the noise model, packed
//! memory-mapped datasets, the synthetic N-HPatches generator and the
//! training samplers.
//!
//! A sequence holds 16 images of the same scene points: `ref`, `e1`..`e5`,
//! `h1`..`h5`, `t1`..`t5` (easy, hard, tough geometric jitter), each a strip of
//! N square patches; patch i of every image shows the same point (a *class*).
//! N-HPatches adds a noisy twin of every image (`<image>_noise.png`).

pub mod augment;
pub mod hpatches;
pub mod noise;
pub mod pack;
pub mod sampler;
pub mod split;
pub mod splits;
pub mod synth;

/// The 16 images of a sequence, in the order used everywhere (index 0..16).
pub const IMAGES: [&str; 16] =
    ["ref", "e1", "e2", "e3", "e4", "e5", "h1", "h2", "h3", "h4", "h5", "t1", "t2", "t3", "t4", "t5"];

/// The jitter family of an image index: 0 for `ref`, 1 easy, 2 hard, 3 tough.
pub fn family(image: usize) -> usize {
    match image {
        0 => 0,
        1..=5 => 1,
        6..=10 => 2,
        _ => 3,
    }
}

/// Index of an image name (`"h3"` -> 8).
pub fn image_index(name: &str) -> Option<usize> {
    IMAGES.iter().position(|&n| n == name)
}

/// FNV-1a 64 of a string: a stable seed component for a sequence name.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_families() {
        assert_eq!(image_index("ref"), Some(0));
        assert_eq!(image_index("h3"), Some(8));
        assert_eq!(image_index("t5"), Some(15));
        assert_eq!(image_index("x1"), None);
        let fams: Vec<usize> = (0..16).map(family).collect();
        assert_eq!(fams, [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]);
        assert_eq!(name_hash(""), 0xcbf2_9ce4_8422_2325);
    }
}
