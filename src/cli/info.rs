//! `nhpatch info` and `nhpatch init`.

use clap::Args;
use nhpatch::Result;
use nhpatch::models::{Arch, LayerRow, Model};
use nhpatch::net::{LoadOptions, Network};
use std::path::PathBuf;

#[derive(Args)]
pub struct InfoArgs {
    /// unet, dncnn or hardnet (optional with --weights, whose metadata names it).
    #[arg(long)]
    model: Option<String>,
    /// HardNet variant: baseline (the seed's Keras model) or original (kornia's HardNet).
    #[arg(long)]
    variant: Option<String>,
    /// A weights file: its network is shown and its tensors are checked.
    #[arg(long)]
    weights: Option<PathBuf>,
}

#[derive(Args)]
pub struct InitArgs {
    /// unet, dncnn or hardnet.
    #[arg(long)]
    model: String,
    /// HardNet variant: baseline or original.
    #[arg(long)]
    variant: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

/// `--model/--variant` as an architecture, if given.
pub fn arch_arg(model: Option<&str>, variant: Option<&str>) -> Result<Option<Arch>> {
    match (model, variant) {
        (Some(m), v) => Arch::parse(m, v).map(Some),
        (None, Some(_)) => Err(nhpatch::Error::InvalidArgument("--variant needs --model".into())),
        (None, None) => Ok(None),
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The layer table in the report's style: output shapes as (H, W, C), as Keras prints them.
pub fn table(model: &Model) -> String {
    let rows: Vec<LayerRow> = model.layer_table();
    let mut s = format!("Model: {}\n", model.arch());
    s += &format!("{:<12} {:<28} {:<16} {:>10}\n", "Layer", "Type", "Output shape", "Param #");
    s += &format!("{}\n", "-".repeat(69));
    for r in &rows {
        let (c, h, w) = r.out_shape;
        let shape = format!("({h}, {w}, {c})");
        s += &format!("{:<12} {:<28} {:<16} {:>10}\n", r.name, r.kind, shape, thousands(r.params));
    }
    let (total, trainable) = (model.param_count(), model.trainable_count());
    s += &format!("{}\n", "-".repeat(69));
    s += &format!("Total params: {}\n", thousands(total));
    s += &format!("Trainable params: {}\n", thousands(trainable));
    s += &format!("Non-trainable params: {}\n", thousands(total - trainable));
    s
}

pub fn info(a: InfoArgs) -> Result<()> {
    let arch = arch_arg(a.model.as_deref(), a.variant.as_deref())?;
    match (&a.weights, arch) {
        (Some(path), arch) => {
            let net = Network::load(path, LoadOptions { arch })?;
            print!("{}", table(net.model()));
            println!(
                "Weights: {} (all {} tensors present and well-shaped)",
                path.display(),
                net.model().layout().specs().len()
            );
        }
        (None, Some(arch)) => print!("{}", table(&Model::new(arch)?)),
        (None, None) => {
            return Err(nhpatch::Error::InvalidArgument(
                "give --model (and --variant for hardnet) or --weights".into(),
            ));
        }
    }
    Ok(())
}

pub fn init(a: InitArgs) -> Result<()> {
    let arch = Arch::parse(&a.model, a.variant.as_deref())?;
    let net = Network::init(arch, a.seed)?;
    net.save(&a.out)?;
    println!("wrote {} ({} parameters, seed {})", a.out.display(), thousands(net.model().param_count()), a.seed);
    Ok(())
}
