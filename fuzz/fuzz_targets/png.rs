//! PNG strips: arbitrary bytes through `io::png::decode_gray` (the in-memory
//! core of `read_gray`) and, when they decode, `strip_patches`.
//! A bug: a panic, an out-of-bounds access, an allocation beyond the decoder's
//! size limit (`-malloc_limit_mb` catches it), a hang, or a decoded image
//! whose pixel count disagrees with its declared size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhpatch::io::png::{decode_gray, strip_patches};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.png");
    if let Ok(img) = decode_gray(data, path) {
        assert_eq!(img.pixels.len(), img.width * img.height);
        if let Ok(strip) = strip_patches(&img, path) {
            assert_eq!(strip.width, img.width);
            assert_eq!(strip.patches.len(), strip.count * 32 * 32);
        }
    }
});
