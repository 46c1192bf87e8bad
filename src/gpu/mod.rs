//! The CUDA backend (`--features cuda`): the three models, their losses and
//! optimizers on an NVIDIA GPU, equal to the CPU path within float rounding.
//!
//! - [`Device`]: where a command runs, `cpu` (default), `cuda` / `cuda:N`,
//!   or `emu`, the host emulator of the CUDA path (tests); parsed in every
//!   build, so a build without the feature names the feature in its error.
//! - `backend`: buffers, kernel launches and GEMM on cudarc (driver API,
//!   cuBLAS, NVRTC, all loaded at run time: the build needs no toolkit);
//!   kernels in `kernels.cu`, compiled by NVRTC when a device opens.
//! - `ops`, `loss`, `model`: the layers' passes, the losses and the networks on device buffers.
//! - [`Trainer`]: parameters, gradients and optimizer state on the device;
//!   a step takes a batch and returns the loss. [`Accel`]: eval forward for a
//!   `Network` (denoise, describe, eval, run).

#[cfg(feature = "cuda")]
mod accel;
internal_mod! {
    #[cfg(feature = "cuda")]
    mod backend;
    #[cfg(feature = "cuda")]
    mod loss;
    #[cfg(feature = "cuda")]
    mod model;
    #[cfg(feature = "cuda")]
    mod ops;
}
#[cfg(feature = "cuda")]
mod train;

use crate::error::{Error, Result};

/// Where models run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
    /// The GPU of this ordinal.
    Cuda(usize),
    /// The host emulator of the CUDA path: the same kernels and call
    /// sequence, run on the CPU (slow; for tests without a GPU).
    Emulator,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "emu" => Ok(Device::Emulator),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(Error::InvalidArgument(format!("unknown device '{s}' (expected cpu, cuda or cuda:N)"))),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Emulator => f.write_str("emu"),
        }
    }
}

impl Device {
    pub fn is_cpu(&self) -> bool {
        *self == Device::Cpu
    }

    /// Whether this build has the CUDA backend.
    pub const fn compiled() -> bool {
        cfg!(feature = "cuda")
    }

    /// Opens the device: the GPU's context and compiled kernels, or the emulator.
    #[cfg(feature = "cuda")]
    pub fn open(&self) -> Result<backend::Backend> {
        match self {
            Device::Cpu => Err(Error::InvalidArgument("the CPU is not a CUDA device".into())),
            Device::Cuda(n) => backend::Backend::cuda(*n),
            Device::Emulator => Ok(backend::Backend::emulator()),
        }
    }

    /// Whether the device can be opened, checked before a command writes
    /// anything: the build has the feature, and a driver reports this GPU.
    pub fn check_available(&self) -> Result<()> {
        self.check_compiled()?;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(n) = self {
            backend::check_ordinal(*n)?;
        }
        Ok(())
    }

    /// `Ok` for the CPU and, in a CUDA build, for the others; without the
    /// feature, the error that says how to build with it.
    pub fn check_compiled(&self) -> Result<()> {
        if self.is_cpu() || Self::compiled() {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "--device {self}: this nhpatch was built without CUDA support; rebuild with \
                 `cargo build --release --features cuda` (no CUDA toolkit needed to build)"
            )))
        }
    }
}

#[cfg(feature = "cuda")]
pub use train::GpuTrainer as Trainer;

/// Training on a device (a build without the `cuda` feature cannot make one).
#[cfg(not(feature = "cuda"))]
pub struct Trainer(std::convert::Infallible);

#[cfg(not(feature = "cuda"))]
impl Trainer {
    pub fn step_denoise(
        &mut self,
        _: &[f32],
        _: &[f32],
        _: crate::loss::PointLoss,
        _: &mut crate::optim::Optimizer,
    ) -> Result<f64> {
        match self.0 {}
    }
    pub fn step_descriptor(
        &mut self,
        _: &[f32],
        _: crate::loss::TupleLoss,
        _: &mut crate::rng::Rng,
        _: &mut crate::optim::Optimizer,
    ) -> Result<f64> {
        match self.0 {}
    }
    pub fn download(&self, _: &mut [f32], _: &mut crate::optim::Optimizer) -> Result<()> {
        match self.0 {}
    }
}

/// A trainer on `device` for `model` from `params` and `opt`'s state, or
/// `None` on the CPU; `max_batch` patches per forward at most.
pub fn trainer(
    device: Device,
    model: &crate::models::Model,
    params: &[f32],
    opt: &crate::optim::Optimizer,
    max_batch: usize,
) -> Result<Option<Trainer>> {
    device.check_compiled()?;
    if device.is_cpu() {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        Ok(Some(Trainer::new(device.open()?, model, params, opt, max_batch)?))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (model, params, opt, max_batch);
        unreachable!("check_compiled refuses devices without the feature")
    }
}

#[cfg(feature = "cuda")]
pub use train::GpuJoint as JointTrainer;

/// Joint training on a device (a build without the `cuda` feature cannot make one).
#[cfg(not(feature = "cuda"))]
pub struct JointTrainer(std::convert::Infallible);

#[cfg(not(feature = "cuda"))]
impl JointTrainer {
    pub fn step(
        &mut self,
        _: (&[f32], &[f32]),
        _: (&crate::loss::hardnet::HardNetLoss, f32),
        _: (&mut crate::rng::Rng, &mut crate::rng::Rng),
        _: (&mut crate::optim::Optimizer, &mut crate::optim::Optimizer),
        _: impl Fn(f64) -> Result<()>,
    ) -> Result<(f64, f64)> {
        match self.0 {}
    }
    pub fn download(
        &self,
        _: (&mut [f32], &mut crate::optim::Optimizer),
        _: (&mut [f32], &mut crate::optim::Optimizer),
    ) -> Result<()> {
        match self.0 {}
    }
}

/// A joint (denoiser + descriptor) trainer on `device` from each network's
/// (model, parameters, optimizer), or `None` on the CPU; `max_pairs` pairs per step at most.
pub fn joint_trainer(
    device: Device,
    den: (&crate::models::Model, &[f32], &crate::optim::Optimizer),
    desc: (&crate::models::Model, &[f32], &crate::optim::Optimizer),
    max_pairs: usize,
) -> Result<Option<JointTrainer>> {
    device.check_compiled()?;
    if device.is_cpu() {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        Ok(Some(JointTrainer::new((device.open()?, device.open()?), den, desc, max_pairs)?))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (den, desc, max_pairs);
        unreachable!("check_compiled refuses devices without the feature")
    }
}

#[cfg(feature = "cuda")]
pub use accel::Accel;

/// Eval forward on a device (a build without the `cuda` feature cannot make one).
#[cfg(not(feature = "cuda"))]
pub struct Accel(std::convert::Infallible);

#[cfg(not(feature = "cuda"))]
impl Accel {
    pub fn open(device: Device, _: &crate::models::Model, _: &[f32]) -> Result<Accel> {
        device.check_compiled()?;
        Err(Error::InvalidArgument(format!("--device {device}: not a device")))
    }
    pub fn name(&self) -> &str {
        match self.0 {}
    }
    pub fn set_params(&mut self, _: &[f32]) -> Result<()> {
        match self.0 {}
    }
    pub fn forward(&mut self, _: &[f32], _: &mut [f32]) -> Result<()> {
        match self.0 {}
    }
}
