//! Photographs for `synth --images`: arbitrary bytes through
//! `io::photo::decode_gray` (PNG or JPEG by magic, the in-memory core of
//! `read_gray`). A bug: a panic, an out-of-bounds access, an allocation
//! beyond the size limits (`-malloc_limit_mb` catches it), a hang, or an
//! accepted image whose pixel count disagrees with its size or breaks the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhpatch::io::photo::{MAX_PIXELS, MAX_SIDE, decode_gray};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_gray(data, Path::new("fuzz.jpg")) {
        assert_eq!(img.pixels.len(), img.width * img.height);
        assert!(img.width > 0 && img.height > 0 && img.width <= MAX_SIDE && img.height <= MAX_SIDE);
        assert!(img.width * img.height <= MAX_PIXELS);
    }
});
