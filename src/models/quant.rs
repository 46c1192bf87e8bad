//! Reduced-precision inference of a model: the precision modes and the int8
//! calibration (one input quantization per convolution block).
//!
//! int8 runs every block its calibration covers through `Conv2d::forward_q8`:
//! weights per output channel, the block's input per tensor with the
//! `Q8Act` calibrated here. Which blocks a calibration covers is chosen
//! when it is made ([`Int8Layers`]): by default every candidate where the
//! CPU has VNNI or AMX and the model kept the accuracy bounds that way (HardNet,
//! DnCNN), else all but the Winograd layers on planes above 8x8; never the
//! first layers or the denoisers' direct output layers
//! (`Conv2d::q8_candidate`). Stored with the
//! weights, the calibration fixes the arithmetic: a file gives the same
//! bits on any CPU. Everything else
//! (pooling, concatenation, input normalisation, L2 normalisation, the
//! blocks it does not cover) stays f32.
//!
//! Calibration runs the f32 model over sample patches and takes, for each
//! block's input, the smallest and largest value (widened to hold 0). That
//! beat clipping the outermost 1e-4 of values on each side on the
//! validation sequences of all three benchmarks (the largest change of a
//! task's mAP against f32: 0.0031 / 0.0043 / 0.0030 against 0.0046 / 0.0075 /
//! 0.0039; README, Reduced precision): 255 steps leave room for the
//! outliers, and clipping them cost more than the coarser steps.
//! Calibration is deterministic for given patches and costs one f32 pass.
//!
//! Stored form (`Calibration::to_metadata`, the weights file's metadata key
//! [`METADATA_KEY`]): `conv1=<scale>:<zero>,conv2=...`, scales in Rust's
//! shortest round-trip notation, so a file reproduces the same bits.

use crate::error::{Error, Result};
use crate::gemm::q8::{Q8Act, best_q8_kernel};
use crate::layers::conv2d::Conv2d;
use crate::models::Arch;
use std::collections::BTreeMap;

/// Metadata key of the int8 calibration in a weights file.
pub const METADATA_KEY: &str = "int8_inputs";

/// The arithmetic inference runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Single precision everywhere (the default).
    #[default]
    F32,
    /// int8 convolutions with calibrated input scales (see the file header).
    Int8,
    /// bf16 operands with f32 sums in the convolutions that run im2col +
    /// GEMM (`Conv2d::runs_bf16_in_models`; `layers::conv2d_bf16`): no
    /// calibration. `vdpbf16ps` where the CPU has AVX512_BF16; elsewhere the
    /// same products and sums widened to f32 (`gemm::bf16`), at f32 speed.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Int8, Precision::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "int8" => Ok(Precision::Int8),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::InvalidArgument(format!("unknown precision '{other}' (f32, int8 or bf16)"))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which convolutions a calibration covers, and so which run in int8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Int8Layers {
    /// `All` where that is faster and kept the accuracy bounds, else
    /// `KeepWinograd` ([`Int8Layers::resolve`]).
    #[default]
    Auto,
    /// Every candidate (`Conv2d::q8_candidate`): all but the first layers
    /// and the denoisers' direct output layers.
    All,
    /// The candidates but the stride-1 Winograd layers on planes above 8x8
    /// (`Conv2d::gemm_beats_winograd`), which stay f32.
    KeepWinograd,
}

/// The models whose every candidate runs in int8 under `Int8Layers::Auto`
/// on a CPU with VNNI or AMX. On the validation sequences of the three benchmarks
/// (README, Reduced precision) these kept every task's mAP within 0.005 of
/// f32 (descriptors) and the output within 0.5 grey levels MAE (denoisers)
/// with `All`; the U-Net's output moved by more, so it keeps its Winograd
/// layers in f32.
pub const INT8_ALL_ON_VNNI: [Arch; 3] = [Arch::HardNetBaseline, Arch::HardNetOriginal, Arch::Dncnn];

impl Int8Layers {
    pub fn name(self) -> &'static str {
        match self {
            Int8Layers::Auto => "auto",
            Int8Layers::All => "all",
            Int8Layers::KeepWinograd => "keep-winograd",
        }
    }

    /// The choice this stands for with `arch` on this CPU. `Auto`: `All`
    /// where the int8 GEMM has VNNI (`vpdpbusd`, 4 products per lane and
    /// instruction: its im2col + GEMM outran f32 F(4x4, 3x3) on 16x16 and
    /// 32x32 planes too) or AMX tiles (`Q8Kernel::has_dot_products`) and `arch` is in [`INT8_ALL_ON_VNNI`]; else
    /// `KeepWinograd` (without VNNI those layers lost to f32: README, Reduced precision).
    pub fn resolve(self, arch: Arch) -> Int8Layers {
        match self {
            Int8Layers::Auto if best_q8_kernel().has_dot_products() && INT8_ALL_ON_VNNI.contains(&arch) => {
                Int8Layers::All
            }
            Int8Layers::Auto => Int8Layers::KeepWinograd,
            chosen => chosen,
        }
    }

    /// Whether a calibration of this choice for `arch` covers `conv`.
    pub fn covers(self, arch: Arch, conv: &Conv2d) -> bool {
        match self.resolve(arch) {
            Int8Layers::All => conv.q8_candidate(),
            _ => conv.q8_candidate() && conv.gemm_beats_winograd(),
        }
    }
}

impl std::str::FromStr for Int8Layers {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Int8Layers::Auto),
            "all" => Ok(Int8Layers::All),
            "keep-winograd" => Ok(Int8Layers::KeepWinograd),
            other => {
                Err(Error::InvalidArgument(format!("unknown int8 layer choice '{other}' (auto, all or keep-winograd)")))
            }
        }
    }
}

/// Per convolution block (by its 1-based index, the `i` of `conv{i}`), the
/// quantization of its input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Calibration {
    inputs: BTreeMap<usize, Q8Act>,
}

impl Calibration {
    pub fn get(&self, block: usize) -> Option<Q8Act> {
        self.inputs.get(&block).copied()
    }

    pub fn insert(&mut self, block: usize, act: Q8Act) {
        self.inputs.insert(block, act);
    }

    /// `(block index, quantization)` in block order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, Q8Act)> + '_ {
        self.inputs.iter().map(|(&b, &a)| (b, a))
    }

    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The metadata value (see the file header).
    pub fn to_metadata(&self) -> String {
        self.inputs.iter().map(|(b, a)| format!("conv{b}={:?}:{}", a.scale, a.zero)).collect::<Vec<_>>().join(",")
    }

    /// Parses `to_metadata`'s form; every entry is validated (a positive
    /// finite scale, a zero point 0..255, no block twice).
    pub fn from_metadata(text: &str) -> Result<Calibration> {
        let bad = |what: &str| Error::InvalidArgument(format!("{METADATA_KEY}: {what}"));
        let mut c = Calibration::default();
        for entry in text.split(',').filter(|e| !e.is_empty()) {
            let (name, value) =
                entry.split_once('=').ok_or_else(|| bad(&format!("'{entry}' is not conv<i>=<scale>:<zero>")))?;
            let block: usize = name
                .strip_prefix("conv")
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| bad(&format!("'{name}' is not conv<i>")))?;
            let (scale, zero) =
                value.split_once(':').ok_or_else(|| bad(&format!("'{value}' is not <scale>:<zero>")))?;
            let scale: f32 = scale.parse().map_err(|_| bad(&format!("scale '{scale}' is not a number")))?;
            let zero: u8 = zero.parse().map_err(|_| bad(&format!("zero point '{zero}' is not 0..255")))?;
            if !(scale.is_finite() && scale > 0.0) {
                return Err(bad(&format!("conv{block}: scale {scale} or zero point {zero} out of range")));
            }
            if c.inputs.insert(block, Q8Act { scale, zero }).is_some() {
                return Err(bad(&format!("conv{block} appears twice")));
            }
        }
        Ok(c)
    }
}

/// Collects each block's input range over calibration batches and turns
/// the ranges into quantizations (see the file header).
pub(crate) struct Collector {
    /// Per block index: the smallest and largest input value so far.
    ranges: BTreeMap<usize, Option<(f32, f32)>>,
}

impl Collector {
    /// A collector for these blocks.
    pub fn new(blocks: impl IntoIterator<Item = usize>) -> Collector {
        Collector { ranges: blocks.into_iter().map(|b| (b, None)).collect() }
    }

    /// Adds the input values of `block` from one batch.
    pub fn add(&mut self, block: usize, values: &[f32]) -> Result<()> {
        let Some(range) = self.ranges.get_mut(&block) else {
            return Err(Error::InvalidArgument(format!("calibration: no block conv{block}")));
        };
        let (mut lo, mut hi) = range.unwrap_or((f32::INFINITY, f32::NEG_INFINITY));
        for &v in values {
            if !v.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "calibration: conv{block}'s input holds {v} (are the weights or patches broken?)"
                )));
            }
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !values.is_empty() {
            *range = Some((lo, hi));
        }
        Ok(())
    }

    /// The quantizations; errors when a block saw no values.
    pub fn finish(self) -> Result<Calibration> {
        let mut c = Calibration::default();
        for (block, range) in self.ranges {
            let (lo, hi) =
                range.ok_or_else(|| Error::InvalidArgument(format!("calibration: conv{block} saw no values")))?;
            c.insert(block, Q8Act::from_range(lo, hi)?);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_bad_text_is_refused() {
        let mut c = Calibration::default();
        c.insert(1, Q8Act { scale: 0.123_456_79, zero: 64 });
        c.insert(12, Q8Act { scale: 3.0e-5, zero: 0 });
        let text = c.to_metadata();
        assert_eq!(Calibration::from_metadata(&text).unwrap(), c);
        assert_eq!(Calibration::from_metadata("").unwrap(), Calibration::default());
        for bad in ["conv1", "convx=1:2", "conv1=0:2", "conv1=1:256", "conv1=nan:1", "conv1=1:2,conv1=1:2", "c1=1:2"] {
            assert!(Calibration::from_metadata(bad).is_err(), "{bad}");
        }
        assert!("int4".parse::<Precision>().is_err() && "BF16 ".parse::<Precision>().is_err());
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
    }

    #[test]
    fn ranges_span_every_batch_and_bad_values_are_refused() {
        let mut col = Collector::new([1, 2]);
        col.add(1, &[0.5, 3.0, 1.0]).unwrap();
        col.add(1, &[-2.0, 0.25]).unwrap();
        col.add(2, &[4.0, 2.0]).unwrap();
        let c = col.finish().unwrap();
        assert_eq!(c.get(1).unwrap(), Q8Act::from_range(-2.0, 3.0).unwrap());
        assert_eq!(c.get(2).unwrap(), Q8Act::from_range(0.0, 4.0).unwrap(), "widened to hold 0");
        let mut bad = Collector::new([2]);
        assert!(bad.add(2, &[1.0, f32::NAN]).is_err());
        assert!(bad.add(3, &[1.0]).is_err());
        assert!(Collector::new([2]).finish().is_err());
    }
}
