//! Conv2d on fuzzer-chosen geometry: construction either fails with an error
//! or yields a layer whose forward and backward run without panicking and
//! whose forward matches a direct convolution.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhpatch::layers::DxMode;
use nhpatch::layers::conv2d::{Conv2d, Conv2dSpec, ConvGrads};
use nhpatch::ops::im2col::Padding;

fuzz_target!(|data: &[u8]| {
    let mut it = data.iter().copied().chain(std::iter::repeat(0));
    let mut next = |m: u8| (it.next().unwrap() % m) as usize;
    let spec = Conv2dSpec {
        cin: next(4),
        cout: next(4),
        kh: next(6),
        kw: next(6),
        stride: next(4),
        pad: Padding { top: next(4), left: next(4), bottom: next(4), right: next(4) },
        bias: next(2) == 1,
    };
    let (h, w, n) = (next(12), next(12), next(4));
    let Ok(l) = Conv2d::new(spec, h, w) else { return };
    let x: Vec<f32> = (0..l.in_shape(n).len()).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
    let wt: Vec<f32> = (0..l.weight_len()).map(|i| ((i * 104_729) % 11) as f32 - 5.0).collect();
    let b: Vec<f32> = (0..l.bias_len()).map(|i| i as f32).collect();
    let mut ws = l.workspace(n);
    let mut out = vec![f32::NAN; l.out_shape(n).len()];
    l.forward(&mut out, &x, &wt, spec.bias.then_some(&b[..]), n, &mut ws).unwrap();
    let (g, s) = (l.win, l.spec);
    for (idx, &o) in out.iter().enumerate() {
        let (ox, oy, co, i) =
            (idx % g.wo, idx / g.wo % g.ho, idx / (g.wo * g.ho) % s.cout, idx / (g.wo * g.ho * s.cout));
        let mut acc = if s.bias { b[co] } else { 0.0 };
        for ci in 0..s.cin {
            for ki in 0..s.kh {
                for kj in 0..s.kw {
                    let iy = (oy * s.stride + ki) as isize - s.pad.top as isize;
                    let ix = (ox * s.stride + kj) as isize - s.pad.left as isize;
                    if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                        acc += x[((i * s.cin + ci) * g.h + iy as usize) * g.w + ix as usize]
                            * wt[((co * s.cin + ci) * s.kh + ki) * s.kw + kj];
                    }
                }
            }
        }
        // Small integers: every product and partial sum is exact in f32.
        assert_eq!(o, acc, "out[{idx}] for {spec:?} on {h}x{w}");
    }
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; wt.len()];
    let mut db = vec![0.0; b.len()];
    let grads = ConvGrads { dx: Some(&mut dx), dweight: &mut dw, dbias: spec.bias.then_some(&mut db[..]), dx_mode: DxMode::Add };
    l.backward(grads, &out, &x, &wt, n, &mut ws).unwrap();
});
