//! Packed datasets: arbitrary bytes written to a file and opened with
//! `PackedDataset::open` (memory-mapped). When it opens, every patch and every
//! image of both versions is read through `patch()` and `image()`.
//! A bug: a panic (including an index panic in `patch`/`image` after a
//! successful open: validation must make every access in bounds), an
//! out-of-bounds read, an allocation sized by an unchecked header field, a
//! hang, or a patch count that disagrees with the header's total.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use nhpatch::data::pack::{PackedDataset, Version};

fuzz_target!(|data: &[u8]| {
    let path = common::write_input("pack", "fuzz.pack", data);
    let Ok(ds) = PackedDataset::open(&path) else { return };
    let mut total = 0u64;
    for (s, seq) in ds.sequences().iter().enumerate() {
        assert_eq!(ds.find(&seq.name), Some(s));
        total += 16 * seq.count as u64;
        for version in [Version::Clean, Version::Noisy] {
            for image in 0..16 {
                assert_eq!(ds.image(s, image, version).len(), seq.count * 32 * 32);
                for idx in 0..seq.count {
                    assert_eq!(ds.patch(s, image, idx, version).len(), 32 * 32);
                }
            }
        }
    }
    assert_eq!(total, ds.total_patches());
});
