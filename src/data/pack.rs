//! Packed datasets: one file holding every patch of a dataset, clean and
//! noisy, memory-mapped so training copies only the patches of the current
//! batch and a 5 GB dataset never has to fit in memory.
//!
//! Format (version 1), all integers little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"NHPPACK\0"` |
//! | 8 | 4 | format version u32 = 1 |
//! | 12 | 4 | patch side u32 = 32 |
//! | 16 | 8 | sequence count u64 (> 0) |
//! | 24 | 8 | total patches per version u64 = sum over sequences of 16 x count |
//! | 32 | 8 | source fingerprint u64 ([`hpatches::source_fingerprint`]; 0 for synthetic packs) |
//! | 40 | .. | sequence table, per sequence: name length u16 (1..=255), UTF-8 name, patch count u64 (> 0), clean block offset u64, noisy block offset u64 |
//!
//! Then the data: per sequence a clean and a noisy block, each
//! `[16][count][32*32]` u8 (images in `IMAGES` order), each starting at a
//! multiple of 4096 after the table. Gaps are zero padding.
//!
//! [`PackedDataset::open`] validates all of this before any patch is read:
//! a truncated or corrupt file is an error naming it, never a panic, and
//! sizes a header claims are checked against the file length (checked u64
//! arithmetic) before anything is allocated.

use super::hpatches::{self, IMAGE_COUNT};
use crate::error::{Error, Result};
use crate::io::{PATCH, PATCH_LEN, io_err};
use byteorder::{LittleEndian as LE, ReadBytesExt, WriteBytesExt};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use super::hpatches::Version;

pub const MAGIC: &[u8; 8] = b"NHPPACK\0";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 40;
/// Alignment of every data block (a page, so blocks map cleanly).
pub const ALIGN: u64 = 4096;
/// The transparent cache's file name inside a dataset root.
pub const CACHE_NAME: &str = ".nhpatch.pack";
const MAX_NAME: usize = 255;
/// Smallest table entry: a 1-byte name.
const MIN_ENTRY: u64 = 2 + 1 + 3 * 8;
/// Bytes per patch position in one version (16 images).
const POSITION_BYTES: u64 = (IMAGE_COUNT * PATCH_LEN) as u64;
/// Mapped pages count in the resident set, and a page fault maps more than
/// the page read: fault-around maps cached neighbours, and recent Linux maps
/// a whole large page-cache folio (up to 2 MiB) per fault, whatever the
/// madvise hints. Random batches over a 5 GB pack would so pull all of it
/// into RSS within an epoch (measured: 2.4 GB). Once reads may have made this
/// many bytes resident, the map's pages are released (they stay in the page
/// cache; see `note_read`).
const RESIDENT_BUDGET: u64 = 384 << 20;
/// What one read may map: its own bytes plus a whole PMD-sized folio.
const FAULT_WINDOW: u64 = 2 << 20;

/// A sequence of a packed dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqInfo {
    pub name: String,
    pub count: usize,
}

/// What [`pack`] or [`PackWriter::finish`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackSummary {
    pub sequences: usize,
    /// Patches per version (16 x the patch positions).
    pub patches: u64,
    pub bytes: u64,
    pub fingerprint: u64,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.to_path_buf(), msg: msg.into() }
}

fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGN - 1).map(|v| v / ALIGN * ALIGN)
}

/// Streams a packed file: the caller declares every sequence up front, then
/// hands over their blocks in order; the file appears (atomically, by rename)
/// only on [`finish`](PackWriter::finish). Dropping an unfinished writer
/// removes its temporary file.
pub struct PackWriter {
    out: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    names: Vec<String>,
    /// Per sequence: count, clean offset, noisy offset.
    blocks: Vec<(u64, u64, u64)>,
    written: usize,
    pos: u64,
    end: u64,
    fingerprint: u64,
}

impl PackWriter {
    /// Starts `out` for these `(name, patch count)` sequences.
    pub fn create(out: &Path, sequences: &[(String, usize)], fingerprint: u64) -> Result<PackWriter> {
        if sequences.is_empty() {
            return Err(Error::InvalidArgument(format!("{}: a pack needs at least one sequence", out.display())));
        }
        let mut seen = std::collections::HashSet::new();
        let mut table_end = HEADER_LEN;
        for (name, count) in sequences {
            if name.is_empty() || name.len() > MAX_NAME || !seen.insert(name.as_str()) || *count == 0 {
                return Err(Error::InvalidArgument(format!(
                    "{}: sequence '{name}' ({count} patches) cannot be packed: names must be 1..=255 bytes and \
                     unique, counts positive",
                    out.display()
                )));
            }
            table_end += 2 + name.len() as u64 + 24;
        }
        let overflow = || Error::InvalidArgument(format!("{}: dataset too large to pack", out.display()));
        let mut off = align_up(table_end).ok_or_else(overflow)?;
        let mut blocks = Vec::with_capacity(sequences.len());
        for (_, count) in sequences {
            let len = (*count as u64).checked_mul(POSITION_BYTES).ok_or_else(overflow)?;
            let noisy = align_up(off.checked_add(len).ok_or_else(overflow)?).ok_or_else(overflow)?;
            let next = align_up(noisy.checked_add(len).ok_or_else(overflow)?).ok_or_else(overflow)?;
            blocks.push((*count as u64, off, noisy));
            off = next;
        }
        let dir = crate::io::parent_dir(out);
        let file_name =
            out.file_name().ok_or_else(|| Error::InvalidArgument(format!("{}: not a file path", out.display())))?;
        let tmp = dir.join(format!(".{}.tmp{}", file_name.to_string_lossy(), std::process::id()));
        let file = File::create(&tmp).map_err(|e| io_err(out, e))?;
        Ok(PackWriter {
            out: out.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            names: sequences.iter().map(|(n, _)| n.clone()).collect(),
            blocks,
            written: 0,
            pos: 0,
            end: off,
            fingerprint,
        })
    }

    fn zeros_to(&mut self, target: u64) -> Result<()> {
        let file = self.file.as_mut().expect("writer is open until finish");
        let zeros = [0u8; 4096];
        while self.pos < target {
            let n = (target - self.pos).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n]).map_err(|e| io_err(&self.out, e))?;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Writes the next sequence's blocks, each `[16][count][32*32]`.
    pub fn write_sequence(&mut self, clean: &[u8], noisy: &[u8]) -> Result<()> {
        let Some(&(count, clean_off, noisy_off)) = self.blocks.get(self.written) else {
            return Err(Error::InvalidArgument(format!("{}: all sequences are already written", self.out.display())));
        };
        let want = count * POSITION_BYTES;
        if clean.len() as u64 != want || noisy.len() as u64 != want {
            return Err(Error::Shape(format!(
                "{}: sequence '{}' has {count} patches, so each block is {want} bytes; got {} clean and {} noisy",
                self.out.display(),
                self.names[self.written],
                clean.len(),
                noisy.len()
            )));
        }
        for (off, block) in [(clean_off, clean), (noisy_off, noisy)] {
            self.zeros_to(off)?;
            let file = self.file.as_mut().expect("writer is open until finish");
            file.write_all(block).map_err(|e| io_err(&self.out, e))?;
            self.pos += want;
        }
        self.written += 1;
        Ok(())
    }

    /// Writes the header and table, syncs, and renames the file into place.
    pub fn finish(mut self) -> Result<PackSummary> {
        if self.written != self.blocks.len() {
            return Err(Error::InvalidArgument(format!(
                "{}: only {} of {} sequences were written",
                self.out.display(),
                self.written,
                self.blocks.len()
            )));
        }
        self.zeros_to(self.end)?;
        let total: u64 = self.blocks.iter().map(|b| b.0 * IMAGE_COUNT as u64).sum();
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        // Writes into a Vec cannot fail.
        let _ = head.write_u32::<LE>(FORMAT_VERSION);
        let _ = head.write_u32::<LE>(PATCH as u32);
        let _ = head.write_u64::<LE>(self.blocks.len() as u64);
        let _ = head.write_u64::<LE>(total);
        let _ = head.write_u64::<LE>(self.fingerprint);
        for (name, &(count, clean, noisy)) in self.names.iter().zip(&self.blocks) {
            let _ = head.write_u16::<LE>(name.len() as u16);
            head.extend_from_slice(name.as_bytes());
            for v in [count, clean, noisy] {
                let _ = head.write_u64::<LE>(v);
            }
        }
        let out = self.out.clone();
        let file = self.file.take().expect("writer is open until finish");
        let mut file = file.into_inner().map_err(|e| io_err(&out, e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| io_err(&out, e))?;
        file.write_all(&head).map_err(|e| io_err(&out, e))?;
        file.sync_all().map_err(|e| io_err(&out, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &out).map_err(|e| io_err(&out, e))?;
        if let Some(dir) =
            out.parent().and_then(|d| File::open(if d.as_os_str().is_empty() { Path::new(".") } else { d }).ok())
        {
            let _ = dir.sync_all();
        }
        self.written = usize::MAX; // renamed: nothing for Drop to remove
        Ok(PackSummary { sequences: self.blocks.len(), patches: total, bytes: self.end, fingerprint: self.fingerprint })
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if self.written != usize::MAX {
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Packs every sequence of the dataset root `root` into `out`, one sequence in
/// memory at a time.
pub fn pack(root: &Path, out: &Path, noise_seed: u64) -> Result<PackSummary> {
    let fingerprint = hpatches::source_fingerprint(root, noise_seed)?;
    pack_with(root, out, noise_seed, fingerprint)
}

fn pack_with(root: &Path, out: &Path, noise_seed: u64, fingerprint: u64) -> Result<PackSummary> {
    let names = hpatches::list_sequences(root)?;
    // The table precedes the data, so every count is needed first: take it
    // from each ref.png's header (no decoding); read_sequence then checks
    // all strips against it.
    let mut counts = Vec::with_capacity(names.len());
    for name in &names {
        counts.push((name.clone(), strip_count(&hpatches::strip_path(&root.join(name), 0, false))?));
    }
    let mut writer = PackWriter::create(out, &counts, fingerprint)?;
    for (name, &(_, count)) in names.iter().zip(&counts) {
        let seq = hpatches::read_sequence(&root.join(name), noise_seed)?;
        if seq.count != count {
            return Err(bad(&hpatches::strip_path(&root.join(name), 0, false), "changed while being packed"));
        }
        writer.write_sequence(&seq.clean, &seq.noisy)?;
    }
    writer.finish()
}

/// Patches in a strip, from its PNG header alone (no decoding).
fn strip_count(path: &Path) -> Result<usize> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let decoder = ::png::Decoder::new(std::io::BufReader::new(file));
    let reader = decoder.read_info().map_err(|e| bad(path, format!("not a readable PNG: {e}")))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if w == 0 || h == 0 || !h.is_multiple_of(w) {
        return Err(bad(path, format!("strip height {h} is not a multiple of its width {w}")));
    }
    Ok(h / w)
}

/// A validated, memory-mapped packed dataset.
pub struct PackedDataset {
    path: PathBuf,
    map: Mmap,
    seqs: Vec<SeqInfo>,
    /// Per sequence: byte offsets of the clean and noisy blocks.
    blocks: Vec<(usize, usize)>,
    index: HashMap<String, usize>,
    total: u64,
    fingerprint: u64,
    /// Upper bound of the map's bytes made resident since the last release.
    touched: AtomicU64,
}

/// The parsed, validated header and table of a pack.
struct Parsed {
    seqs: Vec<SeqInfo>,
    blocks: Vec<(usize, usize)>,
    index: HashMap<String, usize>,
    total: u64,
    fingerprint: u64,
}

/// Validates a whole pack image (`bytes` is the file) and returns its table.
fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let len = bytes.len() as u64;
    if len < HEADER_LEN {
        return Err(bad(path, format!("truncated pack: {len} bytes, shorter than the {HEADER_LEN}-byte header")));
    }
    if &bytes[..8] != MAGIC {
        return Err(bad(path, "not an nhpatch pack (bad magic)"));
    }
    let mut cur = &bytes[8..];
    let eof = |_| bad(path, "truncated pack: the sequence table runs past the end of the file");
    let version = cur.read_u32::<LE>().map_err(eof)?;
    if version != FORMAT_VERSION {
        return Err(bad(path, format!("pack format version {version}; this build reads version {FORMAT_VERSION}")));
    }
    let side = cur.read_u32::<LE>().map_err(eof)?;
    if side != PATCH as u32 {
        return Err(bad(path, format!("patch side {side}; nhpatch packs hold {PATCH}x{PATCH} patches")));
    }
    let n_seq = cur.read_u64::<LE>().map_err(eof)?;
    let total = cur.read_u64::<LE>().map_err(eof)?;
    let fingerprint = cur.read_u64::<LE>().map_err(eof)?;
    if n_seq == 0 {
        return Err(bad(path, "the pack holds no sequences"));
    }
    // Both claims are bounded by the file length before anything is allocated.
    if n_seq > (len - HEADER_LEN) / MIN_ENTRY {
        return Err(bad(path, format!("claims {n_seq} sequences, more than a {len}-byte file can describe")));
    }
    let total_bytes = total.checked_mul(2 * PATCH_LEN as u64);
    if total_bytes.is_none_or(|b| b > len) {
        return Err(bad(path, format!("claims {total} patches per version, more than a {len}-byte file holds")));
    }
    let mut seqs = Vec::with_capacity(n_seq as usize);
    let mut raw = Vec::with_capacity(n_seq as usize);
    let mut index: HashMap<String, usize> = HashMap::with_capacity(n_seq as usize);
    for i in 0..n_seq {
        let name_len = cur.read_u16::<LE>().map_err(eof)? as usize;
        if name_len == 0 || name_len > MAX_NAME || cur.len() < name_len {
            return Err(bad(
                path,
                format!("sequence {i}: name length {name_len} is not in 1..=255 or runs past the end"),
            ));
        }
        let name = std::str::from_utf8(&cur[..name_len])
            .map_err(|_| bad(path, format!("sequence {i}: name is not valid UTF-8")))?
            .to_string();
        cur = &cur[name_len..];
        let count = cur.read_u64::<LE>().map_err(eof)?;
        let clean = cur.read_u64::<LE>().map_err(eof)?;
        let noisy = cur.read_u64::<LE>().map_err(eof)?;
        if index.insert(name.clone(), i as usize).is_some() {
            return Err(bad(path, format!("sequence name '{name}' appears twice")));
        }
        if count == 0 {
            return Err(bad(path, format!("sequence '{name}' has no patches")));
        }
        raw.push((name, count, clean, noisy));
    }
    let table_end = len - cur.len() as u64;

    let mut intervals = Vec::with_capacity(2 * raw.len());
    let mut sum = 0u64;
    for (name, count, clean, noisy) in &raw {
        let size = count
            .checked_mul(POSITION_BYTES)
            .filter(|&s| s <= len)
            .ok_or_else(|| bad(path, format!("sequence '{name}' claims {count} patches, more than the file holds")))?;
        for (what, off) in [("clean", *clean), ("noisy", *noisy)] {
            let end = off.checked_add(size).filter(|&e| e <= len);
            let Some(end) = end else {
                return Err(bad(
                    path,
                    format!(
                        "sequence '{name}': {what} block at {off} (+{size} bytes) ends past the file's {len} bytes"
                    ),
                ));
            };
            if off < table_end || !off.is_multiple_of(ALIGN) {
                return Err(bad(
                    path,
                    format!("sequence '{name}': {what} block offset {off} is not 4096-aligned after the table"),
                ));
            }
            intervals.push((off, end, name.as_str()));
        }
        sum = count.checked_mul(IMAGE_COUNT as u64).and_then(|c| sum.checked_add(c)).unwrap_or(u64::MAX);
    }
    if sum != total {
        return Err(bad(path, format!("header says {total} patches per version, the table adds up to {sum}")));
    }
    intervals.sort_unstable();
    if let Some(w) = intervals.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(bad(path, format!("data blocks of '{}' and '{}' overlap", w[0].2, w[1].2)));
    }
    // Every offset and count is now bounded by the mapped length, so the
    // conversions to usize below cannot truncate.
    let mut blocks = Vec::with_capacity(raw.len());
    for (name, count, clean, noisy) in raw {
        seqs.push(SeqInfo { name, count: count as usize });
        blocks.push((clean as usize, noisy as usize));
    }
    Ok(Parsed { seqs, blocks, index, total, fingerprint })
}

impl std::fmt::Debug for PackedDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedDataset")
            .field("path", &self.path)
            .field("sequences", &self.seqs.len())
            .field("total", &self.total)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl PackedDataset {
    /// Maps and validates a pack file.
    pub fn open(path: &Path) -> Result<PackedDataset> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        if len < HEADER_LEN {
            return Err(bad(path, format!("truncated pack: {len} bytes, shorter than the {HEADER_LEN}-byte header")));
        }
        // SAFETY: memmap2 requires the mapped file not to be modified or
        // truncated while mapped. nhpatch never writes a pack in place: packs
        // and caches are replaced by writing a new file and renaming it over
        // the old path, which leaves an existing mapping of the old file
        // intact. Other programs must not modify a pack that is in use.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        // Batches touch scattered patches: reading ahead would only fill
        // memory with neighbours that are not used. Advice only, so an error
        // is harmless.
        let _ = map.advise(memmap2::Advice::Random);
        let Parsed { seqs, blocks, index, total, fingerprint } = parse(&map, path)?;
        let touched = AtomicU64::new(0);
        Ok(PackedDataset { path: path.to_path_buf(), map, seqs, blocks, index, total, fingerprint, touched })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sequences(&self) -> &[SeqInfo] {
        &self.seqs
    }

    /// Index of the sequence called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Indices of the named sequences (e.g. a split's train list), in the
    /// order given; an error names the first one the pack lacks.
    pub fn select(&self, names: &[String]) -> Result<Vec<usize>> {
        names
            .iter()
            .map(|n| {
                self.find(n).ok_or_else(|| {
                    bad(&self.path, format!("sequence '{n}' is named in the split but absent from the pack"))
                })
            })
            .collect()
    }

    /// Patches per version (16 x patch positions) over all sequences.
    pub fn total_patches(&self) -> u64 {
        self.total
    }

    /// The source fingerprint stored when the pack was written.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The `[count][32*32]` pixels of image `image` (0..16) of sequence `seq`.
    /// Panics when an index is out of range, like slice indexing.
    pub fn image(&self, seq: usize, image: usize, version: Version) -> &[u8] {
        assert!(image < IMAGE_COUNT, "image {image} out of range 0..16");
        let len = self.seqs[seq].count * PATCH_LEN;
        let start = self.block(seq, version) + image * len;
        self.note_read(len);
        &self.map[start..start + len]
    }

    /// The 32*32 pixels of patch `idx` of image `image` of sequence `seq`.
    /// Panics when an index is out of range, like slice indexing.
    pub fn patch(&self, seq: usize, image: usize, idx: usize, version: Version) -> &[u8] {
        assert!(image < IMAGE_COUNT, "image {image} out of range 0..16");
        let count = self.seqs[seq].count;
        assert!(idx < count, "patch {idx} out of range 0..{count} in sequence '{}'", self.seqs[seq].name);
        let start = self.block(seq, version) + (image * count + idx) * PATCH_LEN;
        self.note_read(PATCH_LEN);
        &self.map[start..start + PATCH_LEN]
    }

    /// Accounts a read of `len` bytes and, once the reads since the last
    /// release may have made `RESIDENT_BUDGET` bytes resident, releases the
    /// map's pages, keeping the resident set bounded whatever the dataset
    /// size. Exactly one of the threads crossing the budget releases.
    fn note_read(&self, len: usize) {
        let add = len as u64 + FAULT_WINDOW;
        if self.touched.fetch_add(add, Ordering::Relaxed) + add >= RESIDENT_BUDGET
            && self.touched.swap(0, Ordering::Relaxed) >= RESIDENT_BUDGET
        {
            self.release_resident();
        }
    }

    /// Drops this process's page-table entries for the whole map, so its
    /// pages leave the resident set (the page cache keeps them; the next
    /// read faults them back in cheaply). Advice only: an error is ignored.
    pub fn release_resident(&self) {
        // SAFETY: memmap2 marks MADV_DONTNEED unsafe because on private
        // mappings it discards data. This map is a read-only MAP_SHARED file
        // mapping: DONTNEED only unmaps pages, and any later access, also
        // through slices borrowed before the call and read by other threads
        // meanwhile, is repopulated from the file. Under the map's contract
        // (the file is not modified while mapped) those are the same bytes.
        let _ = unsafe { self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }

    fn block(&self, seq: usize, version: Version) -> usize {
        let (clean, noisy) = self.blocks[seq];
        match version {
            Version::Clean => clean,
            Version::Noisy => noisy,
        }
    }
}

/// Opens a dataset given as a pack file or as a dataset root. A root is
/// served from its cache `root/.nhpatch.pack`, which is (re)built, atomically,
/// when missing, unreadable or made from other sources (fingerprint).
pub fn open_dataset(path: &Path, noise_seed: u64) -> Result<PackedDataset> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.is_file() {
        return PackedDataset::open(path);
    }
    let cache = path.join(CACHE_NAME);
    let fingerprint = hpatches::source_fingerprint(path, noise_seed)?;
    if cache.is_file()
        && let Ok(data) = PackedDataset::open(&cache)
        && data.fingerprint() == fingerprint
    {
        return Ok(data);
    }
    match pack_with(path, &cache, noise_seed, fingerprint) {
        Err(Error::Io { path: p, source })
            if p == cache
                && matches!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
        {
            Err(Error::InvalidArgument(format!(
                "cannot write the pack cache {} ({source}): the dataset folder is not writable; run \
                 `nhpatch pack --dataset {} --out FILE` and pass FILE as the dataset instead",
                cache.display(),
                path.display()
            )))
        }
        Err(e) => Err(e),
        Ok(_) => PackedDataset::open(&cache),
    }
}
