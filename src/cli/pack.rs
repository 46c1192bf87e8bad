//! `nhpatch pack`: turns a dataset root into one memory-mapped pack file
//! (format in `nhpatch::data::pack`), for datasets on read-only storage or to
//! pay the PNG decoding once. A pack file is accepted wherever a dataset is.

use clap::Args;
use nhpatch::Result;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct PackArgs {
    /// Dataset root: one folder per sequence holding the 16 PNG strips (and their *_noise.png twins).
    #[arg(long)]
    dataset: PathBuf,
    /// Output pack file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the noisy twins generated for sequences that have none.
    #[arg(long, default_value_t = 0)]
    noise_seed: u64,
}

pub fn pack(a: PackArgs) -> Result<()> {
    let start = Instant::now();
    let s = nhpatch::data::pack::pack(&a.dataset, &a.out, a.noise_seed)?;
    println!("sequences: {}", s.sequences);
    println!("patches:   {} per version (clean and noisy)", s.patches);
    println!("bytes:     {}", s.bytes);
    println!("time:      {:.2} s", start.elapsed().as_secs_f64());
    println!("wrote {}", a.out.display());
    Ok(())
}
