//! Data-parallel semantics without MPI: ranks as threads of one process
//! (`LocalGroup`). A training forward and backward of a global batch split
//! over 2 or 3 ranks, with gradients summed over the ranks, matches one
//! process on the whole batch: outputs, parameter gradients and BatchNorm
//! running statistics, for every architecture (synchronised BatchNorm in
//! DnCNN and HardNet, HardNet's dropout masks drawn for the whole batch).

mod common;

use common::rand_vec;
use nhpatch::dist::local::LocalGroup;
use nhpatch::dist::{Comm, Shard, share};
use nhpatch::models::{Arch, Model};
use nhpatch::rng::Rng;
use nhpatch::train::parallel::Parallel;
use std::sync::Arc;

struct Step {
    out: Vec<f32>,
    grads: Vec<f32>,
    params: Vec<f32>,
}

/// One training step of `model` on `x` with the loss `sum(out * r)`.
fn one_process(m: &Model, p0: &[f32], x: &[f32], r: &[f32], n: usize) -> Step {
    let mut ws = m.workspace(n).unwrap();
    let mut params = p0.to_vec();
    let out = m.forward_train(&mut ws, &mut params, x, &mut Rng::new(99)).unwrap().to_vec();
    let mut grads = m.zero_grads();
    m.backward(&mut ws, &params, &mut grads, r).unwrap();
    Step { out, grads, params }
}

/// The same step split over `ranks` threads, the batch being `n` items of
/// `groups` patches laid out `[groups][n]`; returns each rank's result (the
/// output rows of its share put back at their global places, the summed
/// gradients, its parameters).
fn ranks(m: &Model, p0: &[f32], x: &[f32], r: &[f32], n: usize, groups: usize, ranks: usize) -> Vec<Step> {
    let group: Vec<Comm> = LocalGroup::new(ranks).into_iter().map(|g| Arc::new(g) as Comm).collect();
    let (img, o) = (x.len() / (groups * n), r.len() / (groups * n));
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .iter()
            .map(|comm| {
                s.spawn(move || {
                    let sh = share(n, comm.rank(), comm.size());
                    let len = sh.1;
                    let mut ws = m.workspace(groups * len).unwrap();
                    let shard = Shard { comm: comm.clone(), offset: sh.0, total: n, groups };
                    ws.set_shard(Some(shard)).unwrap();
                    let (mut xs, mut rs) = (vec![f32::NAN; groups * len * img], vec![f32::NAN; groups * len * o]);
                    Parallel::take(&mut xs, x, groups, n, sh, img);
                    Parallel::take(&mut rs, r, groups, n, sh, o);
                    let mut params = p0.to_vec();
                    let out = m.forward_train(&mut ws, &mut params, &xs, &mut Rng::new(99)).unwrap().to_vec();
                    let mut grads = m.zero_grads();
                    m.backward(&mut ws, &params, &mut grads, &rs).unwrap();
                    comm.sum_f32(&mut grads).unwrap();
                    // Each rank's rows at their global places, zeros elsewhere; summed below.
                    let mut full = vec![0.0f32; groups * n * o];
                    Parallel::put(&mut full, &out, groups, n, sh, o);
                    comm.sum_f32(&mut full).unwrap();
                    Step { out: full, grads, params }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64)).max(1e-12);
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs())) / scale
}

#[test]
fn split_batches_match_one_process_for_every_model() {
    for arch in Arch::ALL {
        let m = Model::new(arch).unwrap();
        let n = if arch == Arch::Dncnn { 4 } else { 6 };
        let p0 = m.init_params(&mut Rng::new(5));
        let hi = if arch == Arch::HardNetBaseline { 255.0 } else { 1.0 };
        // Descriptors train on pairs and triplets: items of 2 and 3 patches, laid out [group][item].
        let groupings: &[usize] = if arch.is_denoiser() { &[1] } else { &[1, 2, 3] };
        for (&groups, k) in groupings.iter().flat_map(|g| [(g, 2), (g, 3)]) {
            let x = rand_vec(&mut Rng::new(6), groups * n * 1024, 0.0, hi);
            let r = rand_vec(&mut Rng::new(7), groups * n * m.out_len(), -1.0, 1.0);
            let one = one_process(&m, &p0, &x, &r, groups * n);
            let split = ranks(&m, &p0, &x, &r, n, groups, k);
            let (e_out, e_grad) = (max_rel(&one.out, &split[0].out), max_rel(&one.grads, &split[0].grads));
            let e_stats = max_rel(&one.params, &split[0].params);
            eprintln!(
                "{arch} {groups} per item, {k} ranks: output {e_out:.2e}, gradients {e_grad:.2e}, running stats {e_stats:.2e}"
            );
            let what = format!("{arch}, {groups} per item, {k} ranks");
            assert!(e_out < 1e-5, "{what}: outputs differ by {e_out:.2e}");
            assert!(e_grad < 1e-4, "{what}: gradients differ by {e_grad:.2e}");
            assert!(e_stats < 1e-6, "{what}: running statistics differ by {e_stats:.2e}");
            for s in &split[1..] {
                assert_eq!(s.grads, split[0].grads, "{arch}: ranks hold different summed gradients");
                assert_eq!(s.params, split[0].params, "{arch}: ranks hold different running statistics");
            }
        }
    }
}

#[test]
fn a_shard_must_fit_its_batch() {
    let m = Model::new(Arch::Unet).unwrap();
    let mut ws = m.workspace(4).unwrap();
    let comm: Comm = Arc::new(LocalGroup::new(1).pop().unwrap());
    let e = ws.set_shard(Some(Shard { comm, offset: 3, total: 6, groups: 1 })).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
}
