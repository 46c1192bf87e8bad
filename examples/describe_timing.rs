//! Milliseconds per `Network::forward` call for given numbers of patches, as
//! an application calling nhpatch sees them: the network's own batching
//! (batches of up to 256, padded to a power of two) and its kept workspaces
//! included, unlike `nhpatch bench`, which times one fixed batch.
//!
//! ```text
//! cargo run --release --example describe_timing -- [ARCH] [THREADS] [SIZES]
//! cargo run --release --example describe_timing -- hardnet-original 1 128,129,160,200,300
//! ```
//! ARCH: unet, dncnn, hardnet-baseline or hardnet-original (default
//! hardnet-original, randomly initialised); THREADS the network's pool
//! (default 1); SIZES comma-separated patch counts (default 1,16,128,129).
//! Each size: one warm-up call, then 7 timings of 0.5 s of calls; prints the median.

use nhpatch::net::Network;
use nhpatch::{Arch, Result};
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch = args.first().map_or("hardnet-original", String::as_str);
    let arch = match arch.split_once('-') {
        Some((model, variant)) => Arch::parse(model, Some(variant))?,
        None => Arch::parse(arch, None)?,
    };
    let threads: usize = args.get(1).map_or(Ok(1), |t| t.parse()).map_err(|e| bad(format!("THREADS: {e}")))?;
    let sizes = args.get(2).map_or("1,16,128,129", String::as_str);
    let sizes: Vec<usize> = sizes
        .split(',')
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("SIZES: {e}")))?;
    let net = Network::init(arch, 3)?;
    net.set_threads(threads)?;
    for n in sizes {
        let x: Vec<f32> = (0..n * 1024).map(|i| ((i * 7919) % 256) as f32).collect();
        net.forward(&x)?;
        let mut ms = Vec::new();
        for _ in 0..7 {
            let (t, mut calls) = (Instant::now(), 0);
            while t.elapsed().as_secs_f64() < 0.5 {
                net.forward(&x)?;
                calls += 1;
            }
            ms.push(t.elapsed().as_secs_f64() * 1e3 / f64::from(calls));
        }
        ms.sort_by(f64::total_cmp);
        println!("{arch} {n} patches, {threads} threads: {:.2} ms per call (median of 7)", ms[3]);
    }
    Ok(())
}

fn bad(msg: String) -> nhpatch::Error {
    nhpatch::Error::InvalidArgument(msg)
}
