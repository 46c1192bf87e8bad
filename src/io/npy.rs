//! NumPy `.npy` arrays (format versions 1.0, 2.0 and 3.0), the exchange format
//! for patch batches and descriptors with Python.
//!
//! Layout: magic `\x93NUMPY`, major and minor version bytes, header length
//! (u16 little-endian in 1.0, u32 in 2.0/3.0), an ASCII/UTF-8 Python dict
//! literal `{'descr': '<f4', 'fortran_order': False, 'shape': (N, 32, 32), }`,
//! then the raw C-order data. Reading accepts dtypes u1, f4 and f8 (little
//! endian) and checks that the data length equals the shape's product times
//! the item size before anything is allocated. Writing produces version 1.0
//! f4 arrays with the header padded to a multiple of 64 bytes, as NumPy does.

use super::{PATCH, PATCH_LEN, Patches, io_err, write_atomic};
use crate::error::{Error, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";
/// Largest header accepted: NumPy itself caps headers far below this.
const MAX_HEADER: usize = 1 << 16;

/// Element type of an array on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    U8,
    F32,
    F64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// A parsed array: shape and values converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.to_path_buf(), msg: msg.into() }
}

/// The value of `'key':` in a header dict, up to the next top-level comma or brace.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[start + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}']).unwrap_or(rest.len()) };
    Some(rest[..end].trim())
}

/// Parses an in-memory `.npy` file; `path` only names it in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Array> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "not a .npy file (missing the \\x93NUMPY magic)"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        _ => return Err(bad(path, format!("unsupported .npy version {major}.{minor}"))),
    };
    if hlen > MAX_HEADER || hstart + hlen > bytes.len() {
        return Err(bad(path, format!("header length {hlen} runs past the end of the {}-byte file", bytes.len())));
    }
    let header = std::str::from_utf8(&bytes[hstart..hstart + hlen]).map_err(|_| bad(path, "header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad(path, "header has no 'descr'"))?;
    let dtype = match descr.trim_matches(['\'', '"']) {
        "|u1" | "<u1" | "u1" | "|b1" => Dtype::U8,
        "<f4" => Dtype::F32,
        "<f8" => Dtype::F64,
        other => {
            return Err(bad(
                path,
                format!("unsupported dtype '{other}' (expected uint8, little-endian float32 or float64)"),
            ));
        }
    };
    match dict_value(header, "fortran_order") {
        Some("False") => {}
        Some("True") => return Err(bad(path, "Fortran-ordered arrays are not supported; save with C order")),
        _ => return Err(bad(path, "header has no valid 'fortran_order'")),
    }
    let shape_text = dict_value(header, "shape").ok_or_else(|| bad(path, "header has no 'shape'"))?;
    let inner =
        shape_text.strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(|| bad(path, "bad 'shape'"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| bad(path, format!("bad 'shape' {shape_text}")))?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let body = &bytes[hstart + hlen..];
    let need = count.and_then(|c| c.checked_mul(dtype.size()));
    if need != Some(body.len()) {
        let need = need.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
        return Err(bad(
            path,
            format!(
                "shape {shape:?} of {dtype:?} needs {need} data bytes (overflow-checked), the file holds {}",
                body.len()
            ),
        ));
    }
    let data = match dtype {
        Dtype::U8 => body.iter().map(|&v| v as f32).collect(),
        Dtype::F32 => body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F64 => body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
    };
    Ok(Array { dtype, shape, data })
}

/// Reads any supported `.npy` file.
pub fn read(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    parse(&bytes, path)
}

/// Reads a patch batch `(N, 32, 32)` or `(N, 1, 32, 32)`, values in 0..255.
pub fn read_patches(path: &Path) -> Result<Patches> {
    let a = read(path)?;
    let ok = matches!(a.shape.as_slice(), [_, PATCH, PATCH] | [_, 1, PATCH, PATCH]);
    if !ok {
        return Err(bad(path, format!("shape {:?} is not (N, 32, 32) or (N, 1, 32, 32)", a.shape)));
    }
    if let Some(i) = a.data.iter().position(|v| !(0.0..=255.0).contains(v)) {
        return Err(bad(path, format!("value {} at index {i} is outside 0..255 (or not a number)", a.data[i])));
    }
    Ok(Patches { n: a.data.len() / PATCH_LEN, data: a.data })
}

/// The bytes of a version 1.0 little-endian f32 `.npy` file.
pub fn to_bytes_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(Error::Shape(format!("npy: shape {shape:?} does not hold {} values", data.len())));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Pad with spaces so that magic + version + length + header + '\n' is a multiple of 64.
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let hlen = u16::try_from(header.len()).map_err(|_| Error::Shape("npy: header too long".into()))?;
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&hlen.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes a little-endian f32 array atomically.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes = to_bytes_f32(shape, data)?;
    write_atomic(path, |w| w.write_all(&bytes).map_err(|e| io_err(path, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let data: Vec<f32> = (0..2 * PATCH_LEN).map(|i| (i % 256) as f32).collect();
        let bytes = to_bytes_f32(&[2, 1, 32, 32], &data).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let a = parse(&bytes, Path::new("x.npy")).unwrap();
        assert_eq!((a.dtype, a.shape.clone(), a.data.clone()), (Dtype::F32, vec![2, 1, 32, 32], data));
        let one = parse(&to_bytes_f32(&[3], &[1.0, 2.0, 3.0]).unwrap(), Path::new("x.npy")).unwrap();
        assert_eq!(one.shape, [3]);
    }

    #[test]
    fn numpy_written_u8_header_parses() {
        // What `np.save` writes for np.zeros((2, 32, 32), np.uint8).
        let mut header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 32, 32), }".to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(7u8, 2 * PATCH_LEN));
        let a = parse(&bytes, Path::new("u8.npy")).unwrap();
        assert_eq!((a.dtype, a.shape.as_slice()), (Dtype::U8, &[2usize, 32, 32][..]));
        assert!(a.data.iter().all(|&v| v == 7.0));
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let good = to_bytes_f32(&[1, 32, 32], &vec![1.0; PATCH_LEN]).unwrap();
        let p = Path::new("in.npy");
        for cut in [0, 5, 9, 20, good.len() - 1] {
            let e = parse(&good[..cut], p).unwrap_err().to_string();
            assert!(e.contains("in.npy"), "{e}");
        }
        // Edit the header text in place (same length), keeping the binary parts intact.
        let edit = |from: &str, to: &str| {
            let mut b = good.clone();
            let at = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
            b[at..at + from.len()].copy_from_slice(to.as_bytes());
            b
        };
        let lying = edit("(1, 32, 32)", "(9, 32, 32)");
        assert!(
            parse(&lying, p).unwrap_err().to_string().contains("data bytes"),
            "declared shape larger than the data"
        );
        let huge = edit("(1, 32, 32)", "(9999999999999, 32, 32)".get(..11).unwrap());
        assert!(parse(&huge, p).is_err());
        // Declared sizes are compared with the bytes present, in words.
        let e = parse(&edit("(1, 32, 32)", "(999999999)"), p).unwrap_err().to_string();
        assert!(e.contains("needs 3999999996 data bytes") && e.contains("holds 4096"), "{e}");
        let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967297, 4294967297), }\n".to_string();
        header.insert_str(header.len() - 1, &" ".repeat(128 - 11 - header.len()));
        let mut overflow = b"\x93NUMPY\x01\x00".to_vec();
        overflow.extend_from_slice(&(header.len() as u16).to_le_bytes());
        overflow.extend_from_slice(header.as_bytes());
        let e = parse(&overflow, p).unwrap_err().to_string();
        assert!(e.contains("in.npy") && e.contains("needs more than 2^64 data bytes"), "{e}");
        assert!(parse(&edit("False", "True "), p).unwrap_err().to_string().contains("Fortran"));
        assert!(parse(&edit("<f4", ">f4"), p).unwrap_err().to_string().contains("dtype"));
    }
}
