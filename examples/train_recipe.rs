//! A training recipe run from Rust, without the command line: generate a
//! small synthetic N-HPatches, train the `hardnet` recipe (U-Net, then
//! HardNet) at a reduced budget, print progress as it comes and the final
//! HPatches mAPs, then describe a few patches with the trained networks.
//!
//! ```text
//! cargo run --release --example train_recipe -- [OUT_DIR]     # about a minute on 2 cores
//! ```
//! OUT_DIR (default `runs/example`) receives the dataset (`data/`) and the
//! run folder (`run/`: weights, metrics, `results.md`).

use nhpatch::data::synth::{SynthConfig, generate};
use nhpatch::net::LoadOptions;
use nhpatch::train::pipeline::{self, RunConfig};
use nhpatch::train::progress::{Event, Observer};
use nhpatch::train::{Overrides, Recipe};
use nhpatch::{Arch, Network};
use std::path::PathBuf;
use std::sync::Arc;

/// Prints report lines and one line per epoch; ignores per-step events.
struct Log;

impl Observer for Log {
    fn event(&self, e: &Event<'_>) {
        match e {
            Event::Info(line) | Event::Notice(line) => println!("{line}"),
            Event::EpochFinished { stage, metrics, epochs, .. } => {
                println!("  {stage} epoch {}/{epochs}: loss {:.4}", metrics.epoch, metrics.train_loss)
            }
            _ => {}
        }
    }
}

fn main() -> nhpatch::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "runs/example".into()));
    let data = root.join("data");
    if !data.join("splits.json").is_file() {
        generate(&SynthConfig { sequences: 6, patches: 160, ..SynthConfig::default() }, &data)?;
    }

    let mut cfg = RunConfig::new(Recipe::Hardnet, root.join("run"));
    cfg.dataset = Some(data);
    cfg.seed = Some(3);
    cfg.resume = true; // a second call continues (or re-reports) the same run
    cfg.denoiser_overrides = Overrides { epochs: Some(1), items: Some(500), ..Overrides::default() };
    cfg.descriptor_overrides = Overrides { epochs: Some(2), items: Some(512), ..Overrides::default() };
    let summary = pipeline::run(&cfg, Arc::new(Log))?;
    println!(
        "mAP: verification {:.3}, matching {:.3}, retrieval {:.3} ({:.0} s of training)",
        summary.map.verification, summary.map.matching, summary.map.retrieval, summary.training_seconds
    );

    // The trained networks, loaded as any application would load them.
    let denoiser = Network::load(&cfg.out.join("denoiser/model.safetensors"), LoadOptions::default())?;
    let hardnet = Network::load(&cfg.out.join("descriptor/model.safetensors"), LoadOptions::default())?;
    assert_eq!(hardnet.arch(), Arch::HardNetOriginal);
    let noisy: Vec<f32> = (0..4 * 32 * 32).map(|i| ((i * 37) % 256) as f32).collect();
    let mut clean = denoiser.denoise(&noisy)?;
    nhpatch::net::to_pixels(&mut clean);
    let desc = hardnet.describe(&clean)?;
    println!("4 patches -> {} descriptor values; first: {:.4?}", desc.len(), &desc[..4]);
    Ok(())
}
