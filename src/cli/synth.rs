//! `nhpatch synth`: write a synthetic N-HPatches dataset, from procedural
//! scenes or from a folder of photographs.

use clap::Args;
use nhpatch::Result;
use nhpatch::data::synth::{SynthConfig, generate, preview::write_preview};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct SynthArgs {
    /// Output folder (created if missing): one folder per sequence and
    /// splits.json, moved in once all are made (a failed build writes nothing there).
    #[arg(long)]
    out: PathBuf,
    /// Number of sequences (half i_, half v_; at least 4). Default: 12, or
    /// with --images one per photograph (at least 4).
    #[arg(long)]
    sequences: Option<usize>,
    /// Make the scenes from the PNG and JPEG photographs in this folder
    /// (any size; sorted by file name; sequences named after the files)
    /// instead of procedurally.
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
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
    let base = match &a.images {
        None => SynthConfig::default(),
        Some(dir) => {
            let photos = nhpatch::io::photo::list(dir)?;
            if photos.is_empty() {
                return Err(nhpatch::Error::InvalidArgument(format!(
                    "--images {}: no .png, .jpg or .jpeg files in this folder",
                    dir.display()
                )));
            }
            SynthConfig::photos(photos)
        }
    };
    let cfg =
        SynthConfig { sequences: a.sequences.unwrap_or(base.sequences), patches: a.patches, seed: a.seed, ..base };
    let pool = nhpatch::threads::pool(a.threads)?;
    let summary = pool.install(|| generate(&cfg, &a.out))?;
    let (least, most) = (summary.patches.iter().min(), summary.patches.iter().max());
    let per = match (least, most) {
        (Some(l), Some(m)) if l != m => format!("{l}-{m}"),
        _ => a.patches.to_string(),
    };
    println!(
        "wrote {} sequences x {per} patches ({} files, {}x{} scenes) to {} in {:.2} s",
        summary.sequences.len(),
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
