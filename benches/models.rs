//! Whole models, on all cores: inference (`forward_eval`) of each model at
//! batch 1, 16 and 128 in every precision (`infer/...` f32, `infer_int8/...`
//! int8 calibrated on the batch, `infer_bf16/...`), and one training step of each (zero_grad, forward,
//! loss, backward, optimizer) as `nhpatch bench --mode train` takes it:
//! denoisers on 50 patches with L1, HardNet baseline on 50 triplets with the
//! triplet loss, HardNet original on 128 pairs with the HardNet loss (the
//! default recipe's step). Throughput is in items (patches, triplets or pairs),
//! so criterion's "elem/s" reads as the unit of `nhpatch bench`.
//!
//! Compare two builds: `cargo bench --bench models -- --save-baseline before`,
//! change, then `cargo bench --bench models -- --baseline before`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nhpatch::Precision;
use nhpatch::loss::LossKind;
use nhpatch::models::Arch;
use nhpatch::train::throughput::{BenchConfig, Mode, Workload};
use std::time::Duration;

/// Benches `cfg`'s workload as `group/label items`, where items is the workload's unit.
fn bench(c: &mut Criterion, group: &str, label: String, cfg: BenchConfig) {
    let pool = nhpatch::threads::pool(0).expect("thread pool");
    let mut w = Workload::new(&cfg).expect("workload");
    let name = format!("{label} {}", w.unit().trim_end_matches("/s"));
    let mut g = c.benchmark_group(group);
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(w.items() as u64));
    g.bench_function(name, |b| b.iter(|| pool.install(|| w.step()).expect("step")));
    g.finish();
}

fn models(c: &mut Criterion) {
    for arch in [Arch::Unet, Arch::Dncnn, Arch::HardNetBaseline, Arch::HardNetOriginal] {
        for batch in [1, 16, 128] {
            for precision in Precision::ALL {
                let group = match precision {
                    Precision::F32 => "infer".to_string(),
                    p => format!("infer_{p}"),
                };
                let cfg = BenchConfig { precision, ..BenchConfig::new(arch, Mode::Infer, batch) };
                bench(c, &group, format!("{arch}/{batch}"), cfg);
            }
        }
    }
    for (arch, loss, batch) in [
        (Arch::Unet, None, 50),
        (Arch::Dncnn, None, 50),
        (Arch::HardNetBaseline, None, 50),
        (Arch::HardNetOriginal, Some(LossKind::HardNet), 128),
    ] {
        let cfg = BenchConfig { loss, ..BenchConfig::new(arch, Mode::Train, batch) };
        bench(c, "train_step", format!("{arch}/{batch}"), cfg);
    }
}

criterion_group!(benches, models);
criterion_main!(benches);
