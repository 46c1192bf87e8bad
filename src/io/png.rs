//! PNG patch strips, the layout of HPatches and N-HPatches: a strip is W
//! pixels wide and N*W high, N square patches stacked vertically.
//!
//! Reading accepts 1-, 2-, 4-, 8- and 16-bit gray, gray+alpha, RGB, RGBA and
//! palette images and converts them to 8-bit gray the way OpenCV's
//! `imread(.., IMREAD_GRAYSCALE)` does: 16-bit samples keep their high byte,
//! colour becomes `(4899 R + 9617 G + 1868 B + 8192) >> 14` (BT.601 in 14-bit
//! fixed point), alpha is ignored. Patches whose side is not 32 are resized to
//! 32x32 with OpenCV-style bilinear interpolation (`resize`).

use super::resize::resize_bilinear_u8;
use super::{PATCH, PATCH_LEN, io_err, write_atomic};
use crate::error::{Error, Result};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// Largest image nhpatch decodes: 1 GiB of 8-bit pixels (a full-size HPatches
/// strip is under 10 MB); bigger declared sizes are refused before allocating.
const MAX_DECODED_BYTES: usize = 1 << 30;

/// Deflate's largest expansion (zlib's documented maximum compression factor):
/// a PNG of `n` bytes cannot hold more than about `1032 n` bytes of pixel data.
const MAX_DEFLATE_RATIO: u128 = 1032;

/// An 8-bit gray image, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// A strip cut into 32x32 patches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Strip {
    /// Width (and height) of one patch in the file.
    pub width: usize,
    /// Number of patches.
    pub count: usize,
    /// `[count, 32, 32]` row-major.
    pub patches: Vec<u8>,
}

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.to_path_buf(), msg: msg.into() }
}

/// Decodes any PNG file into 8-bit gray.
pub fn read_gray(path: &Path) -> Result<GrayImage> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    decode(BufReader::new(file), len, path)
}

/// Decodes PNG bytes already in memory into 8-bit gray; `path` names them in errors.
pub fn decode_gray(bytes: &[u8], path: &Path) -> Result<GrayImage> {
    decode(std::io::Cursor::new(bytes), bytes.len() as u64, path)
}

/// Decodes `input`, `input_len` bytes long.
fn decode<R: std::io::BufRead + std::io::Seek>(input: R, input_len: u64, path: &Path) -> Result<GrayImage> {
    let mut decoder = ::png::Decoder::new_with_limits(input, ::png::Limits { bytes: MAX_DECODED_BYTES });
    // Palettes become RGB(A), bit depths below 8 become 8; 16-bit stays 16 so we pick the high byte ourselves.
    decoder.set_transformations(::png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| format_err(path, format!("not a readable PNG: {e}")))?;
    // The header's size is only a claim, and the png crate's `Limits` cover
    // only its own intermediate buffers, not the output buffer allocated
    // here: refuse a size beyond what nhpatch decodes at all, then one the
    // file's bytes cannot possibly hold (a 100-byte file could otherwise
    // demand a 1 GiB buffer).
    let head = reader.info();
    let (w, h) = (head.width, head.height);
    let size = reader.output_buffer_size().filter(|&s| s <= MAX_DECODED_BYTES).ok_or_else(|| {
        format_err(path, format!("a {w}x{h} image is too large to decode (limit {MAX_DECODED_BYTES} bytes)"))
    })?;
    let pixel_bits = head.width as u128 * head.height as u128 * head.bits_per_pixel() as u128;
    if pixel_bits / 8 > MAX_DEFLATE_RATIO * (input_len as u128 + 1024) {
        return Err(format_err(
            path,
            format!("header declares a {w}x{h} image, more pixel data than its {input_len} bytes can hold"),
        ));
    }
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| format_err(path, format!("corrupt PNG data: {e}")))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let bytes_per_sample = match info.bit_depth {
        ::png::BitDepth::Sixteen => 2,
        ::png::BitDepth::Eight => 1,
        other => return Err(format_err(path, format!("unexpected bit depth {other:?} after expansion"))),
    };
    let line = info.line_size;
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        let row = &buf[y * line..y * line + width * channels * bytes_per_sample];
        for x in 0..width {
            // High byte of each sample (big-endian in PNG); ignore alpha.
            let s = |c: usize| row[(x * channels + c) * bytes_per_sample] as u32;
            let v = match channels {
                1 | 2 => s(0),
                _ => (4899 * s(0) + 9617 * s(1) + 1868 * s(2) + 8192) >> 14,
            };
            pixels.push(v as u8);
        }
    }
    Ok(GrayImage { width, height, pixels })
}

/// Cuts a gray image into square patches of its width and resizes each to 32x32.
pub fn strip_patches(img: &GrayImage, path: &Path) -> Result<Strip> {
    let w = img.width;
    if w == 0 || img.height == 0 {
        return Err(format_err(path, "empty image"));
    }
    if !img.height.is_multiple_of(w) {
        return Err(format_err(
            path,
            format!(
                "strip height {} is not a multiple of its width {w}: it cannot hold whole {w}x{w} patches",
                img.height
            ),
        ));
    }
    let count = img.height / w;
    let mut patches = vec![0u8; count * PATCH_LEN];
    for (src, dst) in img.pixels.chunks_exact(w * w).zip(patches.chunks_exact_mut(PATCH_LEN)) {
        resize_bilinear_u8(src, w, w, dst, PATCH, PATCH);
    }
    Ok(Strip { width: w, count, patches })
}

/// Reads a strip PNG into 32x32 patches.
pub fn read_strip(path: &Path) -> Result<Strip> {
    strip_patches(&read_gray(path)?, path)
}

/// Writes an 8-bit gray PNG atomically.
pub fn write_gray(path: &Path, img: &GrayImage) -> Result<()> {
    if img.pixels.len() != img.width * img.height || img.width == 0 || img.height == 0 {
        return Err(Error::Shape(format!(
            "{}: a {}x{} image needs {} pixels, got {}",
            path.display(),
            img.width,
            img.height,
            img.width * img.height,
            img.pixels.len()
        )));
    }
    let (w, h) = (u32::try_from(img.width), u32::try_from(img.height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(Error::InvalidArgument(format!("{}: image too large for PNG", path.display())));
    };
    write_atomic(path, |out| {
        let mut enc = ::png::Encoder::new(out, w, h);
        enc.set_color(::png::ColorType::Grayscale);
        enc.set_depth(::png::BitDepth::Eight);
        // Strips are written by the thousand (synthetic datasets, reports):
        // fdeflate's fast mode is several times quicker than the default for
        // a few percent more bytes.
        enc.set_compression(::png::Compression::Fast);
        let png_err = |e: ::png::EncodingError| format_err(path, format!("cannot encode PNG: {e}"));
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(&img.pixels).map_err(png_err)?;
        writer.finish().map_err(png_err)
    })
}

/// Writes 32x32 patches `[n, 32, 32]` as a strip (32 wide, 32*n high).
pub fn write_strip(path: &Path, patches: &[u8]) -> Result<()> {
    if patches.is_empty() || !patches.len().is_multiple_of(PATCH_LEN) {
        return Err(Error::Shape(format!(
            "{}: a strip needs a positive whole number of 32x32 patches, got {} pixels",
            path.display(),
            patches.len()
        )));
    }
    write_gray(path, &GrayImage { width: PATCH, height: patches.len() / PATCH, pixels: patches.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nhpatch-png-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn encode(path: &Path, w: u32, h: u32, color: ::png::ColorType, depth: ::png::BitDepth, data: &[u8]) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = ::png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(data).unwrap();
        wr.finish().unwrap();
    }

    #[test]
    fn strip_round_trip_and_conversions() {
        let p = tmp("rt.png");
        let patches: Vec<u8> = (0..3 * PATCH_LEN).map(|i| (i * 7 % 251) as u8).collect();
        write_strip(&p, &patches).unwrap();
        let s = read_strip(&p).unwrap();
        assert_eq!((s.width, s.count), (32, 3));
        assert_eq!(s.patches, patches);

        // 16-bit gray keeps the high byte; RGB uses BT.601 weights.
        let p16 = tmp("g16.png");
        encode(&p16, 1, 1, ::png::ColorType::Grayscale, ::png::BitDepth::Sixteen, &[0xAB, 0xCD]);
        assert_eq!(read_gray(&p16).unwrap().pixels, [0xAB]);
        let prgb = tmp("rgb.png");
        encode(&prgb, 2, 1, ::png::ColorType::Rgb, ::png::BitDepth::Eight, &[255, 0, 0, 10, 200, 30]);
        assert_eq!(read_gray(&prgb).unwrap().pixels, [76, 124]);
    }

    #[test]
    fn bad_strips_are_errors_naming_the_file() {
        let p = tmp("bad.png");
        encode(&p, 4, 6, ::png::ColorType::Grayscale, ::png::BitDepth::Eight, &[0; 24]);
        let e = read_strip(&p).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("not a multiple"), "{e}");
        let junk = tmp("junk.png");
        std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = read_strip(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.png"), "{e}");
        assert!(read_strip(&tmp("missing.png")).is_err());
    }

    #[test]
    fn huge_declared_dimensions_are_refused_before_allocating() {
        // A valid header declaring 60000 x 60000 RGBA16 (28.8 GB), with no image data.
        let p = tmp("huge.png");
        let file = std::fs::File::create(&p).unwrap();
        let mut enc = ::png::Encoder::new(std::io::BufWriter::new(file), 60000, 60000);
        enc.set_color(::png::ColorType::Rgba);
        enc.set_depth(::png::BitDepth::Sixteen);
        let mut w = enc.write_header().unwrap();
        w.write_chunk(::png::chunk::IDAT, &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]).unwrap();
        drop(w);
        let e = read_gray(&p).unwrap_err().to_string();
        assert!(e.contains("huge.png") && e.contains("60000x60000") && e.contains("too large"), "{e}");
    }

    #[test]
    fn decode_gray_matches_read_gray() {
        let p = tmp("bytes.png");
        encode(&p, 2, 1, ::png::ColorType::Rgb, ::png::BitDepth::Eight, &[255, 0, 0, 10, 200, 30]);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(decode_gray(&bytes, &p).unwrap(), read_gray(&p).unwrap());
        let e = decode_gray(&bytes[..20], &p).unwrap_err().to_string();
        assert!(e.contains("bytes.png"), "{e}");
    }

    /// CRC-32 of PNG chunks (ISO 3309), to forge a consistent header.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn huge_declared_size_in_a_tiny_file_is_refused_before_allocating() {
        // Found by the `png` fuzz target: a ~100-byte file declaring 4 x 268M
        // pixels made the decoder allocate 1 GiB before reading any data.
        // Its own file name: tests run in parallel and share tmp()'s folder.
        let p = tmp("huge-tiny.png");
        encode(&p, 4, 6, ::png::ColorType::Grayscale, ::png::BitDepth::Eight, &[0; 24]);
        let mut bytes = std::fs::read(&p).unwrap();
        // IHDR: length at 8, type at 12, width at 16, height at 20, CRC at 29.
        bytes[20..24].copy_from_slice(&0x1000_0006u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode_gray(&bytes, &p).unwrap_err().to_string();
        assert!(e.contains("huge-tiny.png") && e.contains("4x268435462"), "{e}");
        std::fs::write(&p, &bytes).unwrap();
        let e = read_gray(&p).unwrap_err().to_string();
        assert!(e.contains("can hold") || e.contains("too large"), "{e}");
        // Highly compressible but honest images still decode.
        let big = tmp("big.png");
        write_gray(&big, &GrayImage { width: 512, height: 2048, pixels: vec![0; 512 * 2048] }).unwrap();
        assert_eq!(read_gray(&big).unwrap().pixels.len(), 512 * 2048);
    }
}
