//! With the `cuda` feature: compiles the CUDA kernels' source for the host
//! (`src/gpu/host.cc`), the emulator that tests run the GPU code path on.
//! Nothing else is built here; the default build has no build step.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    {
        println!("cargo:rerun-if-changed=src/gpu/host.cc");
        println!("cargo:rerun-if-changed=src/gpu/kernels.cu");
        cc::Build::new().cpp(true).file("src/gpu/host.cc").opt_level(2).warnings(false).compile("nhpatch_gpu_emu");
    }
}
