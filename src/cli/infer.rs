//! `nhpatch denoise` and `nhpatch describe`.

use super::info::arch_arg;
use clap::Args;
use nhpatch::io::{self, PATCH, extension, io_err, npy, write_atomic};
use nhpatch::models::DESC_LEN;
use nhpatch::net::{LoadOptions, Network, to_pixels, use_precision};
use nhpatch::{Error, Result};
use nhpatch::{Int8Layers, Precision};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct DenoiseArgs {
    /// Denoiser weights (safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Architecture, for weights files without metadata (unet or dncnn).
    #[arg(long)]
    model: Option<String>,
    /// Input: a PNG strip (any width) or a .npy array (N,32,32) / (N,1,32,32), values 0..255.
    #[arg(long)]
    input: PathBuf,
    /// Output: .npy (float32, N x 32 x 32) or .png (a strip, rounded and clipped to 0..255).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
    /// Arithmetic: f32, bf16 or int8 (int8: the calibration stored in the weights, else the default sample's; see `nhpatch calibrate`).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
pub struct DescribeArgs {
    /// HardNet weights (safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// HardNet variant for weights files without metadata (baseline or original).
    #[arg(long)]
    variant: Option<String>,
    /// Denoise first with these weights, then clip and round to 0..255, then describe.
    #[arg(long)]
    denoiser: Option<PathBuf>,
    /// Input: a PNG strip (any width) or a .npy array (N,32,32) / (N,1,32,32), values 0..255.
    #[arg(long)]
    input: PathBuf,
    /// Output: .npy (float32, N x 128) or .csv (one row per patch).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
    /// Arithmetic: f32, bf16 or int8 (int8: the calibration stored in the weights, else the default sample's; see `nhpatch calibrate`).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn check_output(path: &Path, allowed: &[&str]) -> Result<String> {
    match extension(path) {
        Some(e) if allowed.contains(&e.as_str()) => Ok(e),
        _ => Err(Error::InvalidArgument(format!(
            "{}: output must end in {}",
            path.display(),
            allowed.iter().map(|e| format!(".{e}")).collect::<Vec<_>>().join(" or ")
        ))),
    }
}

fn load_denoiser(path: &Path, model: Option<&str>) -> Result<Network> {
    Network::load_denoiser(path, LoadOptions { arch: arch_arg(model, None)? })
}

pub fn denoise(a: DenoiseArgs) -> Result<()> {
    let kind = check_output(&a.output, &["npy", "png"])?;
    let mut net = load_denoiser(&a.weights, a.model.as_deref())?;
    net.set_device(a.dev.device)?;
    use_precision(&mut net, a.precision, None)?;
    let patches = io::load_patches(&a.input)?;
    let mut out = nhpatch::threads::pool(a.threads)?.install(|| net.denoise(&patches.data))?;
    match kind.as_str() {
        "npy" => npy::write_f32(&a.output, &[patches.n, PATCH, PATCH], &out)?,
        _ => {
            to_pixels(&mut out);
            let pixels: Vec<u8> = out.iter().map(|&v| v as u8).collect();
            io::png::write_strip(&a.output, &pixels)?;
        }
    }
    eprintln!("denoised {} patches with {} -> {}", patches.n, net.arch(), a.output.display());
    Ok(())
}

pub fn describe(a: DescribeArgs) -> Result<()> {
    let kind = check_output(&a.output, &["npy", "csv"])?;
    let variant = a.variant.as_deref();
    let arch = if variant.is_some() { arch_arg(Some("hardnet"), variant)? } else { None };
    let mut net = Network::load(&a.weights, LoadOptions { arch })?;
    if net.arch().is_denoiser() {
        return Err(Error::Format {
            path: a.weights.clone(),
            msg: format!("holds a {} denoiser, not a HardNet descriptor (pass it as --denoiser)", net.arch()),
        });
    }
    net.set_device(a.dev.device)?;
    let mut denoiser = a.denoiser.as_deref().map(|p| load_denoiser(p, None)).transpose()?;
    if let Some(d) = &mut denoiser {
        d.set_device(a.dev.device)?;
    }
    // The descriptor calibrates on the f32 denoiser's output, before the denoiser turns int8.
    use_precision(&mut net, a.precision, denoiser.as_ref())?;
    if let Some(d) = &mut denoiser {
        use_precision(d, a.precision, None)?;
    }
    let patches = io::load_patches(&a.input)?;
    let desc =
        nhpatch::threads::pool(a.threads)?.install(|| net.describe_denoised(denoiser.as_ref(), &patches.data))?;
    debug_assert_eq!(desc.len(), patches.n * DESC_LEN);
    match kind.as_str() {
        "npy" => npy::write_f32(&a.output, &[patches.n, DESC_LEN], &desc)?,
        _ => write_atomic(&a.output, |w| {
            for row in desc.chunks_exact(DESC_LEN) {
                let line: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                writeln!(w, "{}", line.join(",")).map_err(|e| io_err(&a.output, e))?;
            }
            Ok(())
        })?,
    }
    eprintln!("described {} patches with {} -> {}", patches.n, net.arch(), a.output.display());
    Ok(())
}

#[derive(Args)]
pub struct CalibrateArgs {
    /// Weights of the network to calibrate (any model, with metadata).
    #[arg(long)]
    weights: PathBuf,
    /// For a descriptor used after a denoiser: these denoiser weights, run in f32
    /// on the patches first (then clipped and rounded to 0..255).
    #[arg(long)]
    denoiser: Option<PathBuf>,
    /// Patches to calibrate on (a PNG strip or .npy, values 0..255, the kind the
    /// network will see); default: the default sample (`net::default_calibration_patches`).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output weights (safetensors): the same tensors plus the calibration in the metadata.
    #[arg(long)]
    output: PathBuf,
    /// Convolutions to run in int8: auto (those faster in int8 on this CPU:
    /// all with AVX-512 VNNI, else keep-winograd), all (all but the first
    /// layers and the denoisers' output layers) or keep-winograd (all but
    /// those and the Winograd layers on planes above 8x8).
    #[arg(long, default_value = "auto")]
    int8_layers: Int8Layers,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn calibrate(a: CalibrateArgs) -> Result<()> {
    check_output(&a.output, &["safetensors"])?;
    let mut net = Network::load(&a.weights, LoadOptions::default())?;
    let denoiser = a.denoiser.as_deref().map(|p| load_denoiser(p, None)).transpose()?;
    if denoiser.is_some() && net.arch().is_denoiser() {
        return Err(Error::InvalidArgument("--denoiser goes with a descriptor's weights, not a denoiser's".into()));
    }
    let mut patches = match &a.input {
        Some(p) => io::load_patches(p)?.data,
        None => nhpatch::net::default_calibration_patches()?,
    };
    let n = patches.len() / (PATCH * PATCH);
    nhpatch::threads::pool(a.threads)?.install(|| -> Result<()> {
        if let Some(d) = &denoiser {
            patches = d.denoise(&patches)?;
            to_pixels(&mut patches);
        }
        net.calibrate_layers(&patches, a.int8_layers)
    })?;
    net.save(&a.output)?;
    let blocks = net.calibration().map_or(0, |c| c.len());
    eprintln!(
        "calibrated int8 inputs of {blocks} convolutions of {} on {n} patches -> {}",
        net.arch(),
        a.output.display()
    );
    Ok(())
}
