//! Forward and backward of every convolution of the three models at batch 64,
//! on all cores. Throughput is in FLOP (2 per multiply-add): criterion's
//! "elem/s" reads as FLOP/s. Backward (dx + dW + db) costs about twice forward.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nhpatch::layers::DxMode;
use nhpatch::layers::conv2d::{Conv2d, Conv2dSpec, ConvGrads};
use nhpatch::ops::im2col::Padding;
use nhpatch::rng::Rng;
use std::hint::black_box;
use std::time::Duration;

const BATCH: usize = 64;

fn layers() -> Vec<(&'static str, Conv2dSpec, usize)> {
    let same = |k, s, h| Padding::same(h, h, k, k, s).unwrap();
    let c = |cin, cout, k, s, pad, bias| Conv2dSpec { cin, cout, kh: k, kw: k, stride: s, pad, bias };
    let sym = Padding::symmetric(1);
    vec![
        ("unet/conv1", c(1, 16, 3, 1, same(3, 1, 32), true), 32),
        ("unet/conv2", c(16, 32, 3, 1, same(3, 1, 16), true), 16),
        ("unet/conv3", c(32, 64, 2, 1, same(2, 1, 32), true), 32),
        ("unet/conv4", c(80, 64, 3, 1, same(3, 1, 32), true), 32),
        ("unet/conv5", c(64, 1, 3, 1, same(3, 1, 32), true), 32),
        ("dncnn/conv1", c(1, 64, 3, 1, sym, true), 32),
        ("dncnn/conv2-16", c(64, 64, 3, 1, sym, false), 32),
        ("dncnn/conv17", c(64, 1, 3, 1, sym, false), 32),
        ("hardnet/conv1", c(1, 32, 3, 1, same(3, 1, 32), true), 32),
        ("hardnet/conv2", c(32, 32, 3, 1, same(3, 1, 32), true), 32),
        ("hardnet/conv3", c(32, 64, 3, 2, same(3, 2, 32), true), 32),
        ("hardnet/conv4", c(64, 64, 3, 1, same(3, 1, 16), true), 16),
        ("hardnet/conv5", c(64, 128, 3, 2, same(3, 2, 16), true), 16),
        ("hardnet/conv6", c(128, 128, 3, 1, same(3, 1, 8), true), 8),
        ("hardnet/conv7", c(128, 128, 8, 1, Padding::valid(), true), 8),
    ]
}

fn rand(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

fn conv(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    for (name, spec, hw) in layers() {
        let l = Conv2d::new(spec, hw, hw).unwrap();
        let x = rand(&mut rng, l.in_shape(BATCH).len());
        let w = rand(&mut rng, l.weight_len());
        let b = rand(&mut rng, l.bias_len());
        let bias = spec.bias.then_some(&b[..]);
        let dout = rand(&mut rng, l.out_shape(BATCH).len());
        let mut out = vec![0.0; l.out_shape(BATCH).len()];
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; b.len()]);
        let mut ws = l.workspace(BATCH);
        let flops = 2 * (BATCH * l.macs_per_image()) as u64;

        let mut g = c.benchmark_group("conv_forward");
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        g.throughput(Throughput::Elements(flops));
        g.bench_function(name, |bch| {
            bch.iter(|| l.forward(&mut out, black_box(&x), &w, bias, BATCH, &mut ws).unwrap())
        });
        g.finish();

        let mut g = c.benchmark_group("conv_backward");
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        // The first layer of a model needs no dx: bench it as it runs in training.
        let first = spec.cin == 1;
        g.throughput(Throughput::Elements(if first { flops } else { 2 * flops }));
        g.bench_function(name, |bch| {
            bch.iter(|| {
                let grads = ConvGrads {
                    dx: (!first).then_some(&mut dx[..]),
                    dweight: &mut dw,
                    dbias: spec.bias.then_some(&mut db[..]),
                    dx_mode: DxMode::Add,
                };
                l.backward(grads, black_box(&dout), &x, &w, BATCH, &mut ws).unwrap()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, conv);
criterion_main!(benches);
