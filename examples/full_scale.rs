//! Full-scale check of packing and sampling at the size of the real
//! N-HPatches: 116 sequences, 156,000 patch positions x 16 images, clean and
//! noisy (~2.5 million patches per version, ~5.1 GB). The pack is written
//! straight from generated patches (no PNGs), streaming one sequence at a
//! time, then one epoch of the seed's triplet sampler (100,000 triplets,
//! batches of 128) reads through the memory map. Prints the time of each
//! phase and the peak resident set (`VmHWM`), which must stay far below the
//! dataset size.
//!
//! ```text
//! cargo run --release --example full_scale -- [OUT.pack] [--keep] [--reuse]
//! ```
//! OUT defaults to `full_scale.pack` in the current folder; it is deleted at
//! the end unless `--keep` is given; `--reuse` samples an existing OUT
//! instead of writing it again.
//!
//! Synthetic patches are structured, not noise: each class (sequence, patch
//! position) has its own oriented ramp-and-ripple pattern, and each of its 16
//! images shows it shifted by an image-dependent jitter, so members of a
//! class are similar and classes differ, as in the real data.

use nhpatch::data::hpatches::{IMAGE_COUNT, Version};
use nhpatch::data::pack::{PackWriter, PackedDataset};
use nhpatch::data::sampler::Sampler;
use nhpatch::io::{PATCH, PATCH_LEN};
use nhpatch::rng::Rng;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

const SEQUENCES: usize = 116;
const POSITIONS: usize = 156_000;
const TRIPLETS: u64 = 100_000;
const BATCH: usize = 128;

/// `VmHWM` and `VmRSS` of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Fills one patch of class `class`, image `image`.
fn synth_patch(out: &mut [u8], class: u64, image: usize) {
    let mut r = Rng::stream(0xF0_11, class);
    let (ax, ay, phase, ripple) =
        (r.below(9) as i32 - 4, r.below(9) as i32 - 4, r.below(256) as i32, 1 + r.below(7) as i32);
    // Jitter grows with the family, like the e/h/t geometric noise.
    let mut j = Rng::stream(class, image as u64);
    let amp = [0, 1, 2, 3][nhpatch::data::family(image)] as i32;
    let (dx, dy) = (j.below(2 * amp as u64 + 1) as i32 - amp, j.below(2 * amp as u64 + 1) as i32 - amp);
    for (y, row) in out.chunks_exact_mut(PATCH).enumerate() {
        for (x, px) in row.iter_mut().enumerate() {
            let (u, v) = (x as i32 + dx, y as i32 + dy);
            let ramp = phase + 3 * (ax * u + ay * v);
            let wave = if ((u + v) / ripple) % 2 == 0 { 24 } else { -24 };
            *px = (128 + (ramp % 104) + wave).clamp(0, 255) as u8;
        }
    }
}

fn main() -> nhpatch::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keep = args.iter().any(|a| a == "--keep");
    let reuse = args.iter().any(|a| a == "--reuse");
    let out = args.iter().find(|a| !a.starts_with("--")).map_or(PathBuf::from("full_scale.pack"), PathBuf::from);

    let sequences: Vec<(String, usize)> = (0..SEQUENCES)
        .map(|i| {
            let kind = if i % 2 == 0 { "i" } else { "v" };
            (format!("{kind}_synthetic{i:03}"), POSITIONS / SEQUENCES + usize::from(i < POSITIONS % SEQUENCES))
        })
        .collect();
    if !(reuse && out.is_file()) {
        write_pack(&out, &sequences)?;
    }
    sample(&out)?;
    if !keep {
        std::fs::remove_file(&out).map_err(|e| nhpatch::io::io_err(&out, e))?;
    }
    Ok(())
}

/// Streams the synthetic pack to `out`, one sequence in memory at a time.
fn write_pack(out: &std::path::Path, sequences: &[(String, usize)]) -> nhpatch::Result<()> {
    let largest = sequences.iter().map(|s| s.1).max().unwrap_or(0);
    let start = Instant::now();
    let mut writer = PackWriter::create(out, sequences, 0)?;
    // Two reusable blocks of the largest sequence: memory stays at ~2 x 22 MB.
    let mut clean = vec![0u8; IMAGE_COUNT * largest * PATCH_LEN];
    let mut noisy = vec![0u8; clean.len()];
    let mut first_class = 0u64;
    for (_, count) in sequences {
        let len = IMAGE_COUNT * count * PATCH_LEN;
        let (c, n) = (&mut clean[..len], &mut noisy[..len]);
        c.par_chunks_mut(PATCH_LEN).zip(n.par_chunks_mut(PATCH_LEN)).enumerate().for_each(|(k, (cp, np))| {
            let (image, idx) = (k / count, k % count);
            let class = first_class + idx as u64;
            synth_patch(cp, class, image);
            let mut r = Rng::stream(class ^ 0x9015E, image as u64);
            for (chunk_c, chunk_n) in cp.chunks_exact(8).zip(np.chunks_exact_mut(8)) {
                let bits = r.next_u64().to_le_bytes();
                for ((o, &v), &b) in chunk_n.iter_mut().zip(chunk_c).zip(&bits) {
                    *o = (v as i32 + (b as i32 - 128) / 8).clamp(0, 255) as u8;
                }
            }
        });
        writer.write_sequence(c, n)?;
        first_class += *count as u64;
    }
    let summary = writer.finish()?;
    let pack_s = start.elapsed().as_secs_f64();
    let (hwm, rss) = memory();
    println!(
        "packed {} sequences, {} positions, {} patches per version, {:.2} GB in {pack_s:.1} s ({:.0} MB/s); \
         peak RSS {hwm:.0} MiB, RSS {rss:.0} MiB",
        summary.sequences,
        first_class,
        summary.patches,
        summary.bytes as f64 / 1e9,
        summary.bytes as f64 / 1e6 / pack_s
    );

    Ok(())
}

/// One epoch of the triplet sampler over every sequence of the pack.
fn sample(out: &std::path::Path) -> nhpatch::Result<()> {
    let start = Instant::now();
    let data = PackedDataset::open(out)?;
    let open_s = start.elapsed().as_secs_f64();
    let train: Vec<usize> = (0..data.sequences().len()).collect();
    let mut sampler = Sampler::triplet(&data, &train, Version::Clean, BATCH, TRIPLETS, 1)?;
    let mut bufs = vec![vec![0f32; BATCH * PATCH_LEN]; 3];
    let (mut items, mut batches, mut checksum) = (0u64, 0u64, 0f64);
    let start = Instant::now();
    loop {
        let [a, p, n] = &mut bufs[..] else { unreachable!("three buffers") };
        let info = sampler.next_batch([a, p, n])?;
        items += info.items as u64;
        batches += 1;
        // Use the data so the copies cannot be optimised away.
        checksum += a[0] as f64 + p[PATCH_LEN - 1] as f64 + n[17] as f64;
        if info.last {
            break;
        }
    }
    let epoch_s = start.elapsed().as_secs_f64();
    let (hwm, rss) = memory();
    println!(
        "opened and validated in {open_s:.3} s; one epoch: {items} triplets in {batches} batches of {BATCH}, \
         {epoch_s:.2} s ({:.0} triplets/s, checksum {checksum})",
        items as f64 / epoch_s
    );
    println!("peak RSS (VmHWM) {hwm:.0} MiB, RSS {rss:.0} MiB");
    Ok(())
}
