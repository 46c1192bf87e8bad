//! The Rust side of tools/torch_reference.py's formulas, for tests that read
//! the model goldens in tests/golden/: the weights the reference was run with
//! (not stored, to keep the files small) and the gradient summaries it stored
//! instead of full gradients. The rules are documented in the script's
//! docstring; the values here must match it bit for bit.
//!
//! Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use nhpatch::rng::Rng;
use nhpatch::weights::WeightsFile;

/// The `weights` metadata of a golden made with these formulas.
pub const WEIGHTS_RULE: &str = "splitmix64-fnv1a, see tools/torch_reference.py";
/// Seed salt of the gradient sample positions (`gradidx.<name>`).
pub const SAMPLE_SALT: u64 = 0x5_DEEC_E66D;
/// Seed salt of the gradient projection weights (`gradproj.<name>`).
pub const PROJ_SALT: u64 = 0x2545_F491_4F6C_DD1D;
/// Gradient positions sampled per parameter.
pub const GRAD_SAMPLES: usize = 32;

/// How a tensor's values follow from `v` in [-1, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `v * 2^-e`, `2^-e` the power of two nearest `1/sqrt(fan_in)`.
    ConvWeight {
        fan_in: usize,
    },
    ConvBias,
    BnWeight,
    BnBias,
    RunningMean,
    RunningVar,
}

/// FNV-1a, 64 bits: the per-tensor seed is this hash of the tensor's name.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `((x >> 40) - 2^23) / 2^23` for the next output x: 24 random bits, so the
/// value is exact in f32 and in f64.
pub fn unit_value(rng: &mut Rng) -> f64 {
    ((rng.next_u64() >> 40) as i64 - (1 << 23)) as f64 / (1u64 << 23) as f64
}

/// `e = round(log2(fan_in) / 2)`, halves up, in integers: `bit_length / 2`.
pub fn conv_weight_exponent(fan_in: usize) -> i32 {
    assert!(fan_in > 0, "fan_in must be positive");
    ((usize::BITS - fan_in.leading_zeros()) / 2) as i32
}

/// The values of one parameter or buffer in row-major order, as the
/// reference set them.
pub fn formula_param(name: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
    let mut rng = Rng::new(fnv1a64(name.as_bytes()));
    let (offset, scale) = match kind {
        ParamKind::ConvWeight { fan_in } => (0.0, (-conv_weight_exponent(fan_in) as f64).exp2()),
        ParamKind::ConvBias | ParamKind::BnBias | ParamKind::RunningMean => (0.0, 0.125),
        ParamKind::BnWeight | ParamKind::RunningVar => (1.0, 0.5),
    };
    // offset + v * scale is exact in f64; the cast rounds it once to nearest
    // even, as numpy's astype(float32) does (exact unless offset is 1).
    (0..shape.iter().product::<usize>()).map(|_| (offset + unit_value(&mut rng) * scale) as f32).collect()
}

/// The kind of a state_dict tensor of the reference models, whose modules
/// are all named `conv<i>` or `bn<i>`.
pub fn param_kind(name: &str, shape: &[usize]) -> ParamKind {
    let (module, field) = name.rsplit_once('.').unwrap_or_else(|| panic!("{name}: no module"));
    match (module.starts_with("conv"), module.starts_with("bn"), field) {
        (true, _, "weight") => {
            assert_eq!(shape.len(), 4, "{name}: conv weight shape {shape:?}");
            ParamKind::ConvWeight { fan_in: shape[1..].iter().product() }
        }
        (true, _, "bias") => ParamKind::ConvBias,
        (_, true, "weight") => ParamKind::BnWeight,
        (_, true, "bias") => ParamKind::BnBias,
        (_, true, "running_mean") => ParamKind::RunningMean,
        (_, true, "running_var") => ParamKind::RunningVar,
        _ => panic!("{name}: not a tensor of the reference models"),
    }
}

/// The `shapes` metadata: every formula tensor, `name=d0,d1,...;...`, in the
/// reference's state_dict order.
pub fn shapes(file: &WeightsFile) -> Vec<(String, Vec<usize>)> {
    file.metadata["shapes"]
        .split(';')
        .map(|entry| {
            let (name, dims) = entry.split_once('=').unwrap_or_else(|| panic!("bad shapes entry {entry:?}"));
            (name.to_string(), dims.split(',').map(|d| d.parse().unwrap()).collect())
        })
        .collect()
}

/// Trainable parameters: every formula tensor but the BatchNorm running statistics.
pub fn is_trainable(name: &str) -> bool {
    !(name.ends_with(".running_mean") || name.ends_with(".running_var"))
}

/// The positions `gradidx.<name>` holds for a parameter of `len` values.
pub fn grad_positions(name: &str, len: usize) -> Vec<usize> {
    let mut rng = Rng::new(fnv1a64(name.as_bytes()) ^ SAMPLE_SALT);
    (0..GRAD_SAMPLES).map(|_| (rng.next_u64() % len as u64) as usize).collect()
}

/// The weights `w_i` of `gradproj.<name>` for a parameter of `len` values.
pub fn grad_proj_weights(name: &str, len: usize) -> Vec<f64> {
    let mut rng = Rng::new(fnv1a64(name.as_bytes()) ^ PROJ_SALT);
    (0..len).map(|_| unit_value(&mut rng)).collect()
}

/// A full gradient summarised as the reference did (sums in f64).
#[derive(Clone, Debug, PartialEq)]
pub struct GradSummary {
    pub positions: Vec<usize>,
    pub samples: Vec<f32>,
    /// `sum_i g_i w_i`
    pub proj: f64,
    /// `sum_i |g_i w_i|`: the scale of `proj`'s rounding error.
    pub abs: f64,
    /// `sqrt(sum_i g_i^2)`
    pub norm: f64,
}

pub fn grad_summary(name: &str, grad: &[f32]) -> GradSummary {
    let positions = grad_positions(name, grad.len());
    let samples = positions.iter().map(|&i| grad[i]).collect();
    let w = grad_proj_weights(name, grad.len());
    let products = grad.iter().zip(&w).map(|(&g, &w)| g as f64 * w);
    let (proj, abs) = products.fold((0.0, 0.0), |(p, a), x| (p + x, a + x.abs()));
    let norm = grad.iter().map(|&g| g as f64 * g as f64).sum::<f64>().sqrt();
    GradSummary { positions, samples, proj, abs, norm }
}

/// Compares a gradient computed in Rust with the reference's summary of
/// parameter `name`: every sample within `atol + rtol * |ref|`, the
/// projection within `atol + rtol * gradabs`, the norm within `atol + rtol *
/// gradnorm`. Returns what differs, so a caller can report all parameters.
pub fn compare_grad(file: &WeightsFile, name: &str, grad: &[f32], atol: f64, rtol: f64) -> Result<(), String> {
    let stored = |prefix: &str| -> &[f32] {
        let key = format!("{prefix}.{name}");
        &file.tensors.get(&key).unwrap_or_else(|| panic!("golden lacks {key}")).data
    };
    let got = grad_summary(name, grad);
    let want_idx: Vec<usize> = stored("gradidx").iter().map(|&x| x as usize).collect();
    if got.positions != want_idx {
        return Err(format!("{name}: positions differ (gradient length {} wrong?)", grad.len()));
    }
    let mut errors = Vec::new();
    for ((&i, &g), &r) in want_idx.iter().zip(&got.samples).zip(stored("gradsample")) {
        if (g as f64 - r as f64).abs() > atol + rtol * (r as f64).abs() {
            errors.push(format!("g[{i}] = {g}, reference {r}"));
        }
    }
    let (abs, norm) = (stored("gradabs")[0] as f64, stored("gradnorm")[0] as f64);
    let proj = stored("gradproj")[0] as f64;
    if (got.proj - proj).abs() > atol + rtol * abs {
        errors.push(format!("projection {} vs reference {proj} (scale {abs})", got.proj));
    }
    if (got.norm - norm).abs() > atol + rtol * norm {
        errors.push(format!("norm {} vs reference {norm}", got.norm));
    }
    if errors.is_empty() { Ok(()) } else { Err(format!("{name}: {}", errors.join("; "))) }
}
