//! Winograd F(2x2, 3x3) and F(4x4, 3x3) against the im2col `Conv2d` on the
//! 3x3 stride-1 layers of the three models, and the stride-2 tiling against
//! it on HardNet's two stride-2 layers, on one thread (`-- winograd` runs
//! only the Winograd ones). Throughput is the direct
//! convolution's FLOP count (2 * cout * cin * 9 * h * w * n per call) for both,
//! so criterion's "elem/s" reads as effective FLOP/s.
//!
//! `conv_backward` (dx + dW + db) is for information: it is not comparable to
//! `winograd_backward_data` (dx only), which costs about what forward does.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use nhpatch::layers::DxMode;
use nhpatch::layers::conv2d::{Conv2d, Conv2dSpec, ConvGrads};
use nhpatch::layers::winograd::{Winograd, Winograd4, WinogradS2};
use nhpatch::ops::im2col::Padding;
use nhpatch::rng::Rng;
use std::hint::black_box;
use std::time::Duration;

/// (name, cin, cout, h = w, batch)
const SHAPES: &[(&str, usize, usize, usize, usize)] = &[
    ("dncnn/conv2-16 64-64 32x32 n16", 64, 64, 32, 16),
    ("hardnet/conv2 32-32 32x32 n16", 32, 32, 32, 16),
    ("hardnet/conv4 64-64 16x16 n32", 64, 64, 16, 32),
    ("hardnet/conv6 128-128 8x8 n64", 128, 128, 8, 64),
    ("unet/conv4 80-64 32x32 n16", 80, 64, 32, 16),
];

/// HardNet's stride-2 layers: (name, cin, cout, input h = w, batch).
const STRIDE2: &[(&str, usize, usize, usize, usize)] =
    &[("hardnet/conv3 32-64 32x32 n16", 32, 64, 32, 16), ("hardnet/conv5 64-128 16x16 n32", 64, 128, 16, 32)];

fn rand(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

fn group<'a>(c: &'a mut Criterion, name: &str, flops: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(flops));
    g
}

fn winograd(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut rng = Rng::new(1);
    for &(name, cin, cout, hw, n) in SHAPES {
        let spec = Conv2dSpec { cin, cout, kh: 3, kw: 3, stride: 1, pad: Padding::symmetric(1), bias: true };
        let conv = Conv2d::new(spec, hw, hw).unwrap();
        let wino = Winograd::new(cin, cout, hw, hw).unwrap();
        let wino4 = Winograd4::new(cin, cout, hw, hw).unwrap();
        let x = rand(&mut rng, n * cin * hw * hw);
        let w = rand(&mut rng, cout * cin * 9);
        let b = rand(&mut rng, cout);
        let dout = rand(&mut rng, n * cout * hw * hw);
        let mut out = vec![0.0; dout.len()];
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; b.len()]);
        let (mut cws, mut wws, mut wws4) = pool.install(|| (conv.workspace(n), wino.workspace(n), wino4.workspace(n)));
        let flops = (2 * cout * cin * 9 * hw * hw * n) as u64;
        let mut g = group(c, "forward", flops);
        g.bench_function(format!("im2col/{name}"), |bch| {
            pool.install(|| bch.iter(|| conv.forward(&mut out, black_box(&x), &w, Some(&b), n, &mut cws).unwrap()))
        });
        g.bench_function(format!("winograd-f2/{name}"), |bch| {
            pool.install(|| bch.iter(|| wino.forward(&mut out, black_box(&x), &w, Some(&b), n, &mut wws).unwrap()))
        });
        g.bench_function(format!("winograd-f4/{name}"), |bch| {
            pool.install(|| bch.iter(|| wino4.forward(&mut out, black_box(&x), &w, Some(&b), n, &mut wws4).unwrap()))
        });
        g.finish();

        let mut g = group(c, "backward", flops);
        g.bench_function(format!("im2col-dx-dw-db/{name}"), |bch| {
            pool.install(|| {
                bch.iter(|| {
                    let grads = ConvGrads {
                        dx: Some(&mut dx[..]),
                        dweight: &mut dw,
                        dbias: Some(&mut db[..]),
                        dx_mode: DxMode::Add,
                    };
                    conv.backward(grads, black_box(&dout), &x, &w, n, &mut cws).unwrap()
                })
            })
        });
        g.bench_function(format!("winograd-f2-dx/{name}"), |bch| {
            pool.install(|| {
                bch.iter(|| wino.backward_data((&mut dx, DxMode::Add), black_box(&dout), &w, n, &mut wws).unwrap())
            })
        });
        g.bench_function(format!("winograd-f4-dx/{name}"), |bch| {
            pool.install(|| {
                bch.iter(|| wino4.backward_data((&mut dx, DxMode::Add), black_box(&dout), &w, n, &mut wws4).unwrap())
            })
        });
        g.finish();
    }
    for &(name, cin, cout, hw, n) in STRIDE2 {
        let pad = Padding::symmetric(1);
        let conv = Conv2d::new(Conv2dSpec { cin, cout, kh: 3, kw: 3, stride: 2, pad, bias: true }, hw, hw).unwrap();
        let s2 = WinogradS2::new(cin, cout, hw, hw, pad).unwrap();
        let x = rand(&mut rng, n * cin * hw * hw);
        let w = rand(&mut rng, cout * cin * 9);
        let b = rand(&mut rng, cout);
        let mut out = vec![0.0; n * cout * (hw / 2) * (hw / 2)];
        let (mut cws, mut sws) = pool.install(|| (conv.workspace(n), s2.workspace(n)));
        let mut g = group(c, "forward-stride2", (2 * cout * cin * 9 * (hw / 2) * (hw / 2) * n) as u64);
        g.bench_function(format!("im2col/{name}"), |bch| {
            pool.install(|| bch.iter(|| conv.forward(&mut out, black_box(&x), &w, Some(&b), n, &mut cws).unwrap()))
        });
        g.bench_function(format!("winograd-s2/{name}"), |bch| {
            pool.install(|| bch.iter(|| s2.forward(&mut out, black_box(&x), &w, Some(&b), n, &mut sws).unwrap()))
        });
        g.finish();
    }
}

criterion_group!(benches, winograd);
criterion_main!(benches);
