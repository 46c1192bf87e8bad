//! nhpatch: a pure-Rust CPU engine that trains and runs the N-HPatches
//! pipeline: a patch denoiser (shallow U-Net or DnCNN) followed by the
//! HardNet descriptor, scored with the HPatches benchmark.
//!
//! # Three ways in
//!
//! **The command line** (`src/main.rs`, a thin layer over this crate):
//!
//! ```text
//! nhpatch run                                   # a whole training recipe on the embedded synthetic dataset
//! nhpatch describe --weights hardnet.safetensors --input patches.png --output desc.npy
//! nhpatch eval --dataset DIR --split a --weights hardnet.safetensors
//! ```
//!
//! **The Rust API**: load a network and describe patches, or run a training
//! recipe (the same calls the command line makes).
//!
//! ```
//! use nhpatch::{Arch, Network};
//!
//! // A freshly initialised HardNet (trained weights: `Network::load`).
//! let net = Network::init(Arch::HardNetOriginal, 1)?;
//! let patches = vec![128.0f32; 2 * 32 * 32]; // two 32x32 patches, 0..255
//! let descriptors = net.describe(&patches)?; // 2 x 128, L2-normalised
//! assert_eq!(descriptors.len(), 2 * 128);
//! # Ok::<(), nhpatch::Error>(())
//! ```
//!
//! Training runs through [`train::pipeline::run`] (a whole recipe, see its
//! example), [`train::stage`] (one stage) or the loops in [`train`]; progress
//! goes to a [`train::Observer`] the caller supplies.
//!
//! **The C ABI** (`include/nhpatch.h`, `libnhpatch.so` / `.a`): [`capi`].
//!
//! ```text
//! nhp_network *net = NULL;
//! if (nhp_load("hardnet.safetensors", &net) != NHP_OK) fprintf(stderr, "%s\n", nhp_last_error());
//! nhp_describe_u8(net, patches, n, out, n * 128);   // no allocation after warm-up
//! nhp_free(net);
//! ```
//!
//! # Layers of the crate
//!
//! Imports run one way, bottom-up:
//! - `gemm` (strided single-precision GEMM with runtime-selected SIMD kernels)
//!   and `ops` (im2col/col2im, elementwise, reductions): engine internals,
//!   public only with the `internals` feature (tests, benches, fuzz targets);
//!   [`cpu`] tells which kernel runs;
//! - [`layers`], [`loss`], [`optim`]: forward and hand-written backward of every
//!   layer, the losses and the optimizers, over caller-owned buffers;
//! - [`params`]: named slices of one parameter arena; [`models`]: each network described once;
//! - [`net`]: a loaded network for inference, and [`capi`], the same as a C ABI;
//! - [`gpu`]: the models, losses and optimizers on an NVIDIA GPU (`cuda` feature);
//! - [`train`]: stages, recipes, the pipeline; [`dist`]: data-parallel training over MPI (`mpi` feature);
//! - [`data`], [`eval`], [`io`]: datasets, the HPatches benchmark, file formats.

/// Declares engine-internal modules: `pub` with the `internals` feature
/// (this crate's tests, benches and fuzz targets), crate-private otherwise.
/// What a second backend or a benchmark needs, with no stability promise.
macro_rules! internal_mod {
    ($($(#[$attr:meta])* mod $name:ident;)*) => {$(
        $(#[$attr])*
        #[cfg(feature = "internals")]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "internals"))]
        #[allow(dead_code)]
        pub(crate) mod $name;
    )*};
}

internal_mod! {
    mod gemm;
    mod ops;
}

pub mod capi;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod io;
pub mod layers;
pub mod loss;
pub mod models;
pub mod net;
pub mod optim;
pub mod params;
pub mod rng;
pub mod shape;
pub mod threads;
pub mod train;
pub mod weights;

/// The GEMM kernels this CPU can run (f32, int8, bf16), the one nhpatch
/// uses of each, and the FMA peak.
pub mod cpu {
    pub use crate::gemm::bf16::{Bf16Kernel, best_bf16_kernel};
    pub use crate::gemm::peak::fma_peak_gflops;
    pub use crate::gemm::q8::{Q8Kernel, best_q8_kernel};
    pub use crate::gemm::{Kernel, best_kernel};

    /// One row per kernel of each precision: `(precision, kernel name,
    /// available on this CPU, the one in use)`.
    pub fn kernel_table() -> Vec<(&'static str, &'static str, bool, bool)> {
        let f32s = Kernel::ALL.iter().map(|k| ("f32", k.name(), k.is_available(), *k == best_kernel()));
        let q8s = Q8Kernel::ALL.iter().map(|k| ("int8", k.name(), k.is_available(), *k == best_q8_kernel()));
        let bf16s = Bf16Kernel::ALL.iter().map(|k| ("bf16", k.name(), k.is_available(), *k == best_bf16_kernel()));
        f32s.chain(q8s).chain(bf16s).collect()
    }
}

pub use error::{Error, Result};
pub use gpu::Device;
pub use models::quant::{Int8Layers, Precision};
pub use models::{Arch, Model};
pub use net::Network;
pub use train::pipeline::{RunConfig, RunSummary};
pub use train::recipe::Recipe;
