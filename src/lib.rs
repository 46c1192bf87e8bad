//! nhpatch: a pure-Rust CPU engine that trains and runs the N-HPatches
//! pipeline: a patch denoiser (shallow U-Net or DnCNN) followed by the
//! HardNet descriptor, scored with the HPatches benchmark.
//!
//! The engine is layered bottom-up:
//! - [`gemm`]: strided single-precision GEMM with runtime-selected SIMD kernels;
//! - [`ops`]: im2col/col2im, elementwise and reduction primitives;
//! - [`layers`], [`loss`], [`optim`]: forward and hand-written backward of every
//!   layer, the losses and the optimizers, over caller-owned buffers;
//! - [`params`]: named slices of one parameter arena;
//! - [`net`]: a loaded network, the library API, and [`capi`], the same as a C ABI (`include/nhpatch.h`);
//! - [`train`]: the training loops, and [`dist`], data-parallel training over MPI (`mpi` feature);
//! - [`gpu`]: the same models, losses and optimizers on an NVIDIA GPU (`cuda` feature).

pub mod capi;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod gemm;
pub mod gpu;
pub mod io;
pub mod layers;
pub mod loss;
pub mod models;
pub mod net;
pub mod ops;
pub mod optim;
pub mod params;
pub mod rng;
pub mod shape;
pub mod threads;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
