//! Photographs (PNG or JPEG, any size) as 8-bit gray, for `nhpatch synth --images`.
//!
//! The kind is decided by the file's first bytes (`\x89PNG` or `FF D8 FF`),
//! not its extension. PNG goes through `png::read_gray` (its limits and
//! OpenCV-style gray conversion); JPEG is decoded by zune-jpeg straight to
//! luma (the JPEG's own Y channel, which is BT.601 gray) in strict mode (a
//! truncated or damaged file is an error, not a grey fill), with the declared
//! size checked before any pixel buffer exists. Every error names the file.
//!
//! zune-jpeg is third-party code fed untrusted bytes: a panic inside it (an
//! arithmetic overflow on a crafted DC coefficient in a build with overflow
//! checks, for one) is caught at this boundary and becomes the same
//! "corrupt JPEG data" error, so a bad photograph never takes the process down.

use super::io_err;
use super::png::{self, GrayImage};
use crate::error::{Error, Result};
use std::path::Path;
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// Largest side accepted (JPEG's own limit is 65535).
pub const MAX_SIDE: usize = 16_384;
/// Largest pixel count accepted: 2^28 (256 Mpx).
pub const MAX_PIXELS: usize = 1 << 28;

/// Extensions `nhpatch synth --images` picks up from a folder (lower case).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.to_path_buf(), msg: msg.into() }
}

/// Reads a PNG or JPEG photograph as 8-bit gray.
pub fn read_gray(path: &Path) -> Result<GrayImage> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    decode_gray(&bytes, path)
}

/// Decodes PNG or JPEG bytes as 8-bit gray; `path` names them in errors.
pub fn decode_gray(bytes: &[u8], path: &Path) -> Result<GrayImage> {
    let img = if bytes.starts_with(b"\x89PNG") {
        png::decode_gray(bytes, path)?
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes, path)?
    } else {
        return Err(format_err(path, "not a photograph: expected PNG or JPEG data"));
    };
    if img.width == 0 || img.height == 0 {
        return Err(format_err(path, "the image is empty"));
    }
    if img.width > MAX_SIDE || img.height > MAX_SIDE || img.width * img.height > MAX_PIXELS {
        return Err(format_err(
            path,
            format!("a {}x{} image is too large (limit {MAX_SIDE} px a side, {MAX_PIXELS} px)", img.width, img.height),
        ));
    }
    Ok(img)
}

fn decode_jpeg(bytes: &[u8], path: &Path) -> Result<GrayImage> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::Luma)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE)
        .set_strict_mode(true);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder_call(path, "not a readable JPEG", || decoder.decode_headers())?;
    let info = decoder.info().ok_or_else(|| format_err(path, "not a readable JPEG: no frame header"))?;
    let (width, height) = (info.width as usize, info.height as usize);
    if width * height > MAX_PIXELS {
        return Err(format_err(path, format!("a {width}x{height} image is too large (limit {MAX_PIXELS} px)")));
    }
    let pixels = decoder_call(path, "corrupt JPEG data", || decoder.decode())?;
    if pixels.len() != width * height {
        return Err(format_err(
            path,
            format!("a {width}x{height} JPEG decoded to {} samples, expected one gray sample per pixel", pixels.len()),
        ));
    }
    Ok(GrayImage { width, height, pixels })
}

/// The photographs in `dir` (by extension, case-insensitive), sorted by file
/// name so the order never depends on the file system.
pub fn list(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        let wanted = super::extension(&path).is_some_and(|e| EXTENSIONS.contains(&e.as_str()));
        if wanted && path.is_file() {
            found.push(path);
        }
    }
    found.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(found)
}

/// Runs one call into the decoder: its error, or a panic inside it, becomes a
/// format error naming the file, `what` first. The decoder is dropped right
/// after a failed call, so the state a panic may leave half-written is never
/// read again.
fn decoder_call<T, E: std::fmt::Debug>(
    path: &Path,
    what: &str,
    call: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<T> {
    let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => format!("{e:?}"),
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder failed".to_string()),
    };
    Err(format_err(path, format!("{what}: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_bytes_are_refused_with_the_file_named() {
        let err = decode_gray(b"GIF89a....", Path::new("cat.jpg")).unwrap_err().to_string();
        assert!(err.contains("cat.jpg") && err.contains("not a photograph"), "{err}");
        let err = decode_gray(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J'], Path::new("cut.jpg")).unwrap_err().to_string();
        assert!(err.contains("cut.jpg") && err.contains("JPEG"), "{err}");
    }

    /// A crafted DC coefficient overflows an i32 multiply inside zune-jpeg
    /// (found by the photo fuzz target). With overflow checks (the dev profile
    /// `cargo test` uses) that is a panic in the decoder, which must come back
    /// as an error naming the file; without them the decoder wraps, and any
    /// image it accepts must still be whole.
    #[test]
    fn a_panic_inside_the_jpeg_decoder_is_an_error_naming_the_file() {
        let bytes = include_bytes!("../../fuzz/regressions/photo/zune-dc-overflow.jpg");
        match decode_gray(bytes, Path::new("crafted.jpg")) {
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("crafted.jpg") && e.contains("JPEG"), "{e}");
            }
            Ok(img) => {
                if cfg!(debug_assertions) {
                    panic!("the overflow went unnoticed with overflow checks on");
                }
                assert_eq!(img.pixels.len(), img.width * img.height);
            }
        }
    }
}
