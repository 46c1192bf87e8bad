//! Model weights in the safetensors format, the format PyTorch users exchange
//! (`safetensors.torch.save_file` / `load_file`).
//!
//! # Format contract
//!
//! A file is:
//! 1. 8 bytes: the header length `N`, a little-endian `u64`;
//! 2. `N` bytes: a UTF-8 JSON object, possibly padded with trailing spaces:
//!    `{"__metadata__": {"key": "value", ..}, "name": {"dtype": "F32",
//!    "shape": [..], "data_offsets": [begin, end]}, ..}`. `__metadata__` is
//!    optional and maps strings to strings;
//! 3. the data buffer: every tensor's elements, row-major, little-endian, at
//!    `data_offsets` relative to the start of the buffer.
//!
//! # What `load` / `from_bytes` accept
//!
//! Every violation is an `Error::Format { path, msg }` naming the file and the
//! problem; nothing panics and nothing partial is returned:
//! - the file must hold the 8-byte length, and the header length must not
//!   exceed [`MAX_HEADER_LEN`] nor the bytes that follow it;
//! - the header must be valid UTF-8 and a JSON object without repeated keys
//!   (at the top level or inside an entry): a repeated tensor name would
//!   otherwise silently keep only one of the two;
//! - each tensor entry needs `dtype`, `shape` (non-negative integers) and
//!   `data_offsets` (two integers, `begin <= end`); other keys are ignored, as
//!   the reference reader does;
//! - dtypes: `F32` is read as is; `F16`, `BF16` and `F64` are converted to
//!   `f32` (half precision exactly, `F64` rounded to nearest) because PyTorch
//!   users often save reduced or double precision; any other dtype is refused;
//! - `product(shape) * dtype size == end - begin`, with overflow-checked
//!   arithmetic;
//! - sorted by offset, the tensors must tile the data buffer exactly: no
//!   offset past its end, no overlap, no hole, no trailing bytes (the
//!   safetensors specification requires contiguous coverage).
//!
//! # What `save` writes
//!
//! Canonical bytes, identical to `safetensors.torch.save_file` for `F32`
//! tensors: compact JSON, `__metadata__` first (omitted when empty) with its
//! keys sorted, then the tensors sorted by name with data laid out in that
//! order, the header padded with spaces to a multiple of 8 bytes so the data
//! buffer is 8-byte aligned; data is `F32` little-endian. The file is written
//! to a temporary file in the target's directory, fsynced, then renamed over
//! the target, so a crash never leaves a half-written weights file behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Write;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::arg_err;
use crate::error::{Error, Result};

/// Largest accepted header, checked before the header is parsed: the same cap
/// as the reference implementation, far above any real header (a few KB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The reserved top-level key holding the string-to-string metadata.
const METADATA_KEY: &str = "__metadata__";

/// One tensor: its shape and its row-major `f32` elements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The contents of a safetensors file: metadata and tensors, both by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightsFile {
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, Tensor>,
}

/// Reads and validates the safetensors file at `path`.
pub fn load(path: &Path) -> Result<WeightsFile> {
    let bytes = fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    from_bytes(&bytes, path)
}

/// Writes `file` to `path` atomically (temporary file, fsync, rename).
pub fn save(path: &Path, file: &WeightsFile) -> Result<()> {
    let bytes = to_bytes(file)?;
    write_atomic(path, &bytes)
}

/// The element types a file may hold; all are widened or narrowed to `f32`.
#[derive(Clone, Copy, Debug)]
enum Dtype {
    F32,
    F64,
    F16,
    BF16,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(Self::F32),
            "F64" => Some(Self::F64),
            "F16" => Some(Self::F16),
            "BF16" => Some(Self::BF16),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F64 => 8,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// Decodes one little-endian element of `self.size()` bytes.
    fn decode(self, b: &[u8]) -> f32 {
        match self {
            Self::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
            Self::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            // bfloat16 is the upper half of an f32.
            Self::BF16 => f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        }
    }
}

/// IEEE binary16 to binary32; exact, since every half value is an f32 value.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    match exp {
        // Zero or subnormal: man * 2^-24, exact in f32 (both factors are).
        0 => {
            let mag = man as f32 * f32::from_bits(0x3380_0000);
            if sign != 0 { -mag } else { mag }
        }
        // Infinity or NaN: keep the payload bits.
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        // Normal: rebias the exponent from 15 to 127.
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// A JSON object with its entries in file order, refusing repeated keys:
/// serde_json's own maps keep only the last of two equal keys.
struct UniqueMap<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = UniqueMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
                let mut seen = BTreeSet::new();
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(UniqueMap(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A validated header entry, before its data is decoded.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// Parses and validates a whole safetensors file held in memory; `path` is
/// only used in error messages (this is the entry point for fuzzing).
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<WeightsFile> {
    let fail = |msg: String| Error::Format { path: path.to_path_buf(), msg };

    let Some((len_bytes, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(fail(format!(
            "file is too short: {} bytes, less than the 8-byte header length of a safetensors file",
            bytes.len()
        )));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(fail(format!("header length {header_len} is too large (limit {MAX_HEADER_LEN} bytes)")));
    }
    // Fits in usize: it is at most MAX_HEADER_LEN.
    let header_len = header_len as usize;
    if header_len > rest.len() {
        return Err(fail(format!(
            "header length {header_len} is larger than the {} bytes that follow it (truncated file?)",
            rest.len()
        )));
    }
    let (header, buffer) = rest.split_at(header_len);
    let header = std::str::from_utf8(header).map_err(|e| fail(format!("header is not valid UTF-8: {e}")))?;
    let top: UniqueMap<UniqueMap<Value>> =
        serde_json::from_str(header).map_err(|e| fail(format!("invalid JSON header: {e}")))?;

    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(top.0.len());
    for (name, fields) in top.0 {
        if name == METADATA_KEY {
            metadata = parse_metadata(fields.0).map_err(fail)?;
        } else {
            entries.push(parse_entry(name, fields.0).map_err(fail)?);
        }
    }

    check_coverage(&mut entries, buffer.len()).map_err(fail)?;

    // Only now, with every entry valid, decode: no partial result on error.
    let mut tensors = BTreeMap::new();
    for e in entries {
        let size = e.dtype.size();
        let data = buffer[e.begin..e.end].chunks_exact(size).map(|b| e.dtype.decode(b)).collect();
        tensors.insert(e.name, Tensor { shape: e.shape, data });
    }
    Ok(WeightsFile { metadata, tensors })
}

fn parse_metadata(fields: Vec<(String, Value)>) -> std::result::Result<BTreeMap<String, String>, String> {
    fields
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(s) => Ok((key, s)),
            other => Err(format!("{METADATA_KEY} entry {key:?} is {other}, not a string")),
        })
        .collect()
}

/// Checks one tensor entry's fields and that its shape matches its byte size.
fn parse_entry(name: String, fields: Vec<(String, Value)>) -> std::result::Result<Entry, String> {
    let field = |key: &str| {
        fields.iter().find(|(k, _)| k == key).map(|(_, v)| v).ok_or_else(|| format!("tensor {name:?}: missing {key:?}"))
    };
    let as_usize = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());

    let dtype = match field("dtype")? {
        Value::String(s) => Dtype::parse(s)
            .ok_or_else(|| format!("tensor {name:?}: unsupported dtype {s:?} (supported: F32, F16, BF16, F64)"))?,
        other => return Err(format!("tensor {name:?}: dtype is {other}, not a string")),
    };
    let shape = match field("shape")? {
        Value::Array(dims) => dims.iter().map(as_usize).collect::<Option<Vec<_>>>(),
        _ => None,
    }
    .ok_or_else(|| format!("tensor {name:?}: shape must be an array of non-negative integers"))?;
    let (begin, end) = match field("data_offsets")? {
        Value::Array(pair) if pair.len() == 2 => as_usize(&pair[0]).zip(as_usize(&pair[1])),
        _ => None,
    }
    .ok_or_else(|| format!("tensor {name:?}: data_offsets must be two non-negative integers [begin, end]"))?;
    if begin > end {
        return Err(format!("tensor {name:?}: data_offsets [{begin}, {end}] are invalid: begin is after end"));
    }

    let bytes = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| format!("tensor {name:?}: shape {shape:?} overflows the element count"))?;
    if bytes != end - begin {
        return Err(format!(
            "tensor {name:?}: shape {shape:?} of {dtype:?} needs {bytes} bytes but data_offsets [{begin}, {end}] span {} (size mismatch)",
            end - begin
        ));
    }
    Ok(Entry { name, dtype, shape, begin, end })
}

/// Sorts `entries` by offset and checks that they tile `0..buffer_len`.
fn check_coverage(entries: &mut [Entry], buffer_len: usize) -> std::result::Result<(), String> {
    entries.sort_by_key(|e| (e.begin, e.end));
    let mut covered = 0usize;
    for e in entries.iter() {
        let name = &e.name;
        if e.end > buffer_len {
            return Err(format!(
                "tensor {name:?}: data_offsets [{}, {}] are out of the {buffer_len}-byte data buffer (truncated file?)",
                e.begin, e.end
            ));
        }
        if e.begin < covered {
            return Err(format!(
                "tensor {name:?}: data_offsets [{}, {}] overlap the previous tensor, which ends at {covered}",
                e.begin, e.end
            ));
        }
        if e.begin > covered {
            return Err(format!("hole in the data buffer: bytes {covered}..{} belong to no tensor", e.begin));
        }
        covered = e.end;
    }
    if covered != buffer_len {
        return Err(format!(
            "hole in the data buffer: bytes {covered}..{buffer_len} at its end belong to no tensor (trailing data)"
        ));
    }
    Ok(())
}

/// Serialises `file` to the canonical bytes described in the module header.
/// Refuses a tensor whose shape does not match its data length, and the
/// reserved name `__metadata__`.
pub fn to_bytes(file: &WeightsFile) -> Result<Vec<u8>> {
    // Value's Display writes a correctly escaped JSON string and cannot fail.
    let quote = |s: &str| Value::from(s).to_string();

    let mut header = String::from("{");
    let mut fields = Vec::with_capacity(file.tensors.len() + 1);
    if !file.metadata.is_empty() {
        let pairs: Vec<String> = file.metadata.iter().map(|(k, v)| format!("{}:{}", quote(k), quote(v))).collect();
        fields.push(format!("{}:{{{}}}", quote(METADATA_KEY), pairs.join(",")));
    }
    let mut offset = 0usize;
    for (name, t) in &file.tensors {
        if name == METADATA_KEY {
            return Err(arg_err!("tensor name {METADATA_KEY:?} is reserved for the metadata"));
        }
        let numel = t.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if numel != Some(t.data.len()) {
            return Err(Error::Shape(format!(
                "tensor {name:?}: shape {:?} does not match its {} data elements",
                t.shape,
                t.data.len()
            )));
        }
        let end = offset + 4 * t.data.len();
        let dims: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        fields.push(format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            quote(name),
            dims.join(",")
        ));
        offset = end;
    }
    header.push_str(&fields.join(","));
    header.push('}');
    // Pad so the data buffer starts 8-byte aligned, as the reference writer does.
    while header.len() % 8 != 0 {
        header.push(' ');
    }

    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for t in file.tensors.values() {
        for x in &t.data {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(out)
}

/// Distinguishes temporary files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a fresh temporary file next to `path`, fsyncs it and
/// renames it over `path`: readers see the old file or the new one, never a
/// torn one. The temporary file is removed on any error.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |source| Error::Io { path: path.to_path_buf(), source };
    let file_name = path.file_name().ok_or_else(|| arg_err!("{}: not a file path", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    // create_new: never clobber a file we did not create.
    let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    // Persist the rename itself: fsync the directory entry (POSIX only).
    #[cfg(unix)]
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    Ok(())
}
