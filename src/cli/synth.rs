//! `nhpatch synth`: write a synthetic N-HPatches dataset.

use clap::Args;
use nhpatch::Result;
use nhpatch::data::synth::{SynthConfig, generate, preview::write_preview};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct SynthArgs {
    /// Output folder (created if missing): one folder per sequence and splits.json.
    #[arg(long)]
    out: PathBuf,
    /// Number of sequences (half i_, half v_; at least 4).
    #[arg(long, default_value_t = 12)]
    sequences: usize,
    /// Patches per sequence.
    #[arg(long, default_value_t = 200)]
    patches: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write a montage PNG of a few classes (clean and noisy) to look at.
    #[arg(long)]
    preview: Option<PathBuf>,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn synth(a: SynthArgs) -> Result<()> {
    let start = Instant::now();
    let cfg = SynthConfig { sequences: a.sequences, patches: a.patches, seed: a.seed, ..SynthConfig::default() };
    let pool = nhpatch::threads::pool(a.threads)?;
    let summary = pool.install(|| generate(&cfg, &a.out))?;
    println!(
        "wrote {} sequences x {} patches ({} files, {}x{} scenes) to {} in {:.2} s",
        summary.sequences.len(),
        summary.patches,
        summary.files,
        summary.scene.0,
        summary.scene.1,
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    println!("splits: {}", summary.splits.display());
    if let Some(path) = &a.preview {
        // Two i_ and two v_ sequences, three classes each.
        let half = summary.sequences.len() / 2;
        let shown: Vec<String> = [0, 1, half, half + 1].iter().map(|&i| summary.sequences[i].clone()).collect();
        write_preview(&a.out, &shown, 3, a.seed, path)?;
        println!("preview: {}", path.display());
    }
    Ok(())
}
