//! Photographs for `synth --images`: arbitrary bytes through
//! `io::photo::decode_gray` (PNG or JPEG by magic, the in-memory core of
//! `read_gray`). A bug: a panic, an out-of-bounds access, an allocation
//! beyond the size limits (`-malloc_limit_mb` catches it), a hang, or an
//! accepted image whose pixel count disagrees with its size or breaks the limits.
//!
//! `decode_gray` catches a panic inside zune-jpeg and returns an error, but
//! libfuzzer-sys's panic hook aborts before any unwinding. So the target wraps
//! that hook once: a panic located in zune-jpeg's sources is left to unwind to
//! `decode_gray`'s boundary (where the contract under test is "an error, not a
//! crash"); every other panic, nhpatch's own included, still aborts as a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhpatch::io::photo::{MAX_PIXELS, MAX_SIDE, decode_gray};
use std::path::Path;
use std::sync::Once;

static HOOK: Once = Once::new();

fn let_decoder_panics_unwind() {
    HOOK.call_once(|| {
        let abort_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_decoder = info.location().is_some_and(|l| l.file().contains("zune-jpeg"));
            if !in_decoder {
                abort_hook(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    let_decoder_panics_unwind();
    if let Ok(img) = decode_gray(data, Path::new("fuzz.jpg")) {
        assert_eq!(img.pixels.len(), img.width * img.height);
        assert!(img.width > 0 && img.height > 0 && img.width <= MAX_SIDE && img.height <= MAX_SIDE);
        assert!(img.width * img.height <= MAX_PIXELS);
    }
});
