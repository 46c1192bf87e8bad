//! The HPatches evaluator: the protocol's AP vectors and hand-worked cases,
//! hand-computed tiny datasets for each task, fast paths against their slow
//! twins on random data full of exact ties, task and descriptor files
//! (round trips and errors naming file and row), and the CLI end to end.

use nhpatch::eval::ap::{average_precision, roc_auc};
use nhpatch::eval::tasks::{GenOptions, Pair, PatchRef, RefPatch, Tasks, file_names, generate};
use nhpatch::eval::{Catalog, Descriptors, SeqDescs, descriptors, evaluate, evaluate_slow, synth};
use std::path::PathBuf;

fn ap(d: &[f64], l: &[u8], numpos: Option<usize>) -> f64 {
    let s: Vec<f64> = d.iter().map(|x| -x).collect();
    let l: Vec<bool> = l.iter().map(|&x| x == 1).collect();
    average_precision(&s, &l, numpos)
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

#[test]
fn ap_protocol_vectors() {
    close(ap(&[1., 2.], &[0, 1], None), 0.25000000005);
    close(ap(&[1., 2., 3.], &[1, 0, 1], None), 0.7916666666666666);
    close(ap(&[1., 1., 2.], &[0, 1, 0], None), 0.25000000005);
    close(ap(&[5., 5., 5., 5.], &[1, 0, 1, 0], None), 0.7916666666666666);
    close(ap(&[1., 2., 3.], &[1, 0, 1], Some(4)), 0.3958333333333333);
}

#[test]
fn ap_hand_cases() {
    // Empty list: a single point (recall 0, precision 1), no area.
    close(ap(&[], &[], None), 0.0);
    // All positive: precision 1 everywhere.
    close(ap(&[3., 1., 2.], &[1, 1, 1], None), 1.0);
    // A tie keeps input order: the positive listed first is ranked first.
    // [1,1] labels [1,0], numpos 3: (1/3) * (1 + 1) / 2.
    close(ap(&[1., 1.], &[1, 0], Some(3)), 1.0 / 3.0);
    // numpos below the positives present does nothing.
    close(ap(&[1., 2., 3.], &[1, 0, 1], Some(1)), 0.7916666666666666);
    // No positive at all: recall stays 0.
    close(ap(&[1., 2.], &[0, 0], None), 0.0);
    // -inf scores are cut: the second positive is never retrieved. 0.5 * (1 + 1) / 2.
    close(average_precision(&[-1.0, f64::NEG_INFINITY], &[true, true], None), 0.5);
    // ROC: sorted pos, neg, pos -> tpr 0, .5, .5, 1 over fpr 0, 0, 1, 1 -> 0.5.
    close(roc_auc(&[-1., -2., -3.], &[true, false, true]), 0.5);
    // A tied negative ranks first and sees tpr 0.
    close(roc_auc(&[-1., -1.], &[false, true]), 0.0);
    close(roc_auc(&[-1., -1.], &[true, false]), 1.0);
}

/// Dim-1 descriptors: `value(seq, image, idx)`.
fn descs_1d(counts: &[usize], value: impl Fn(usize, usize, usize) -> f32) -> (Catalog, Descriptors) {
    let names: Vec<String> = (0..counts.len()).map(|s| format!("S{s}")).collect();
    let cat = Catalog::new(names.clone(), counts.to_vec()).unwrap();
    let seqs = names
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(s, (name, &count))| SeqDescs {
            name: name.clone(),
            count,
            data: (0..16).flat_map(|m| (0..count).map(move |i| (m, i))).map(|(m, i)| value(s, m, i)).collect(),
        })
        .collect();
    (cat, Descriptors { dim: 1, seqs })
}

fn pr(seq: u32, t: u8, idx: u32) -> PatchRef {
    PatchRef { seq, t, idx }
}

#[test]
fn verification_by_hand() {
    // Every image equals ref: S0 patch i = i, S1 patch i = 5 + i.
    let (cat, d) = descs_1d(&[5, 5], |s, _, i| (5 * s + i) as f32);
    let mut t = Tasks::default();
    for i in 0..5u32 {
        t.pos.push(Pair { a: pr(0, 0, i), b: pr(0, 1, i) }); // distance 0
        t.neg_intra.push(Pair { a: pr(0, 0, 0), b: pr(0, 1, i) }); // distance i
        t.neg_inter.push(Pair { a: pr(0, 0, 0), b: pr(1, 2, i) }); // distance 5 + i
    }
    let r = evaluate(&d, &cat, &t, "a").unwrap();
    // Imbalanced: 5 negatives + the first floor(0.2 * 5) = 1 positive.
    // Intra: the negative at distance 0 ties the positive and ranks first:
    // AP = (1 - 0) * (1e-10 / 1 + 1 / 2) / 2 = 0.25000000005.
    // Balanced intra AUC: neg(0), 5 positives, 4 negatives -> 4/5.
    // Inter: the positive ranks first, AP = AUC = 1.
    for v in &r.verification {
        let (ap, auc) = if v.negatives == "intra" { (0.25000000005, 0.8) } else { (1.0, 1.0) };
        close(v.imbalanced_ap, ap);
        close(v.balanced_auc, auc);
    }
    close(r.verification_map, (3.0 * 0.25000000005 + 3.0) / 6.0);
    let s = evaluate_slow(&d, &cat, &t, "a").unwrap();
    assert_eq!(s.verification, r.verification);
    // Unequal negatives are refused.
    t.neg_inter.pop();
    assert!(evaluate(&d, &cat, &t, "a").unwrap_err().to_string().contains("verif_neg_inter_split-a.csv"));
}

#[test]
fn matching_by_hand() {
    // S0 ref = [0, 10, 20]. e1 = ref: every row matches at distance 0, AP 1.
    // e2 = [15, 5, 25]: row 0 -> col 1 (5 < 15), rows 1 and 2 tie between
    // col 0 and col 1 / col 2 and take col 0: all wrong, AP 0.
    // Other images [0, 20, 10]: rows 1, 2 go wrong at distance 0 (as does
    // row 0, right): all scores tie, ref order keeps the positive first,
    // AP = (1/3) * (1 + 1) / 2 = 1/3 with numpos 3.
    // S1: every image equals ref, AP 1 everywhere.
    let (cat, d) = descs_1d(&[3, 3], |s, m, i| {
        let refv = [0.0, 10.0, 20.0][i];
        match (s, m) {
            (1, _) | (0, 0) | (0, 1) => refv,
            (0, 2) => [15.0, 5.0, 25.0][i],
            _ => [0.0, 20.0, 10.0][i],
        }
    });
    let t = Tasks::default();
    let r = nhpatch::eval::matching::evaluate(&nhpatch::eval::View::new(&d, &cat).unwrap(), &cat.names).unwrap();
    let want = |s: &str, f: &str, i: usize| match (s, f, i) {
        ("S1", _, _) | ("S0", "e", 1) => 1.0,
        ("S0", "e", 2) => 0.0,
        _ => 1.0 / 3.0,
    };
    for m in &r {
        close(m.ap, want(&m.sequence, m.family, m.image));
    }
    let mean = r.iter().map(|m| m.ap).sum::<f64>() / 30.0;
    close(mean, 61.0 / 90.0);
    let _ = t;
}

#[test]
fn retrieval_by_hand() {
    // Query S0 patch 0 (ref value 0). Positives: e_k = k (distances 1..5),
    // h_k = 2, t_k = 10. Distractors in file order: S0/1 and S0/2 (value
    // 0.5, removed: same sequence as the query), S1 ref [2, 3, 7].
    let (cat, d) = descs_1d(&[3, 3], |s, m, i| match (s, m, i) {
        (0, 0, 0) => 0.0,
        (0, 0, _) => 0.5,
        (0, 1..=5, 0) => m as f32,
        (0, 6..=10, 0) => 2.0,
        (0, _, 0) => 10.0,
        (1, 0, _) => [2.0, 3.0, 7.0][i],
        _ => 100.0,
    });
    let t = Tasks {
        queries: vec![RefPatch { seq: 0, idx: 0 }],
        distractors: vec![
            RefPatch { seq: 0, idx: 1 },
            RefPatch { seq: 1, idx: 0 },
            RefPatch { seq: 1, idx: 1 },
            RefPatch { seq: 1, idx: 2 },
            RefPatch { seq: 0, idx: 2 },
        ],
        ..Tasks::default()
    };
    let view = nhpatch::eval::View::new(&d, &cat).unwrap();
    let r = nhpatch::eval::retrieval::evaluate(&view, &t).unwrap();
    // e: ranked p1 p2 d2 p3 d3 p4 p5 d7 (a positive wins the tie at 2 and 3):
    // positives at 0, 1, 3, 5, 6; each adds 0.2 * (prec before + prec at) / 2.
    let ap_e =
        0.2 + 0.2 + 0.1 * (2.0 / 3.0 + 3.0 / 4.0) + 0.1 * (3.0 / 5.0 + 4.0 / 6.0) + 0.1 * (4.0 / 6.0 + 5.0 / 7.0);
    // h: all positives tie the distractor at 2 and win: AP 1.
    // t: all three distractors first: positives at 3..7.
    let ap_t = 0.1 * (1e-10 / 3.0 + 0.25)
        + 0.1 * (0.25 + 0.4)
        + 0.1 * (0.4 + 0.5)
        + 0.1 * (0.5 + 4.0 / 7.0)
        + 0.1 * (4.0 / 7.0 + 5.0 / 8.0);
    for k in 0..7 {
        close(r.map[0][k], ap_e);
        close(r.map[1][k], 1.0);
        close(r.map[2][k], ap_t);
    }
    close(r.mean, (ap_e + 1.0 + ap_t) / 3.0);
    assert_eq!(nhpatch::eval::retrieval::evaluate_slow(&view, &t), r);
}

fn fast_equals_slow(levels: u32, dim: usize, seed: u64, duplicate: bool) {
    let cat = synth::catalog(5, 300, 2, seed).unwrap();
    let textured = synth::textured(&cat, seed);
    let mut d = synth::descriptors(&cat, dim, levels, seed);
    if duplicate {
        // Exact duplicate rows: ref patch 1 copied onto patch 0 of every image, and across sequences.
        let first = d.seqs[0].get(0, 1, dim).to_vec();
        for s in d.seqs.iter_mut() {
            for m in 0..16 {
                let o = m * s.count * dim;
                s.data[o..o + dim].copy_from_slice(&first);
            }
        }
    }
    let opts = GenOptions { pairs: 700, queries: 25, distractors: 130, seed };
    let tasks = generate(&cat, &textured, &opts).unwrap();
    let fast = evaluate(&d, &cat, &tasks, "a").unwrap();
    let slow = evaluate_slow(&d, &cat, &tasks, "a").unwrap();
    for (a, b) in fast.verification.iter().zip(&slow.verification) {
        close(a.imbalanced_ap, b.imbalanced_ap);
        close(a.balanced_auc, b.balanced_auc);
    }
    for (a, b) in fast.matching.iter().zip(&slow.matching) {
        close(a.ap, b.ap);
    }
    for (a, b) in fast.retrieval.map.iter().flatten().zip(slow.retrieval.map.iter().flatten()) {
        close(*a, *b);
    }
    close(fast.mean, slow.mean);
    // Non-trivial scores.
    assert!(fast.matching_map > 0.0 && fast.matching_map < 1.0, "{}", fast.matching_map);
    assert!(fast.retrieval_map > 0.0 && fast.retrieval_map < 1.0);
}

#[test]
fn fast_equals_slow_on_small_integer_descriptors() {
    fast_equals_slow(1, 8, 1, true);
    fast_equals_slow(2, 4, 2, false);
}

#[test]
fn fast_equals_slow_on_normalised_descriptors() {
    fast_equals_slow(0, 32, 3, false);
    fast_equals_slow(0, 16, 4, true);
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nhpatch-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn task_files_round_trip_and_errors_name_file_and_line() {
    let cat = synth::catalog(3, 60, 2, 9).unwrap();
    let textured = synth::textured(&cat, 9);
    let t = generate(&cat, &textured, &GenOptions { pairs: 50, queries: 5, distractors: 10, seed: 9 }).unwrap();
    assert_eq!((t.pos.len(), t.neg_intra.len(), t.neg_inter.len()), (50, 50, 50));
    assert_eq!((t.queries.len(), t.distractors.len()), (5, 10));
    for p in &t.pos {
        assert!(p.a.seq == p.b.seq && p.a.idx == p.b.idx && p.a.t != p.b.t && p.a.t < 5 && p.b.t < 5);
    }
    for p in &t.neg_intra {
        assert!(p.a.seq == p.b.seq && p.a.idx != p.b.idx);
    }
    assert!(t.distractors.iter().all(|d| !t.queries.contains(d)));
    assert!(t.queries.iter().chain(&t.distractors).all(|r| textured[r.seq as usize][r.idx as usize]));
    let dir = tmp("tasks");
    t.write(&dir, "a", &cat).unwrap();
    assert_eq!(Tasks::read(&dir, "a", &cat).unwrap(), t);
    let names = file_names("a");
    let pos = dir.join(&names[0]);
    let text = std::fs::read_to_string(&pos).unwrap();
    assert!(text.starts_with("s1,t1,idx1,s2,t2,idx2\n"));
    for (bad_line, needle) in
        [("s000,6,0,s000,1,0", "type"), ("nope,0,0,s000,1,0", "unknown sequence"), ("s000,0,99999,s000,1,0", "index")]
    {
        let mut lines: Vec<&str> = text.lines().collect();
        lines[3] = bad_line;
        std::fs::write(&pos, lines.join("\n")).unwrap();
        let e = Tasks::read(&dir, "a", &cat).unwrap_err().to_string();
        assert!(e.contains(&names[0]) && e.contains("line 4") && e.contains(needle), "{e}");
    }
    // Fewer negatives than positives are refused.
    std::fs::write(&pos, &text).unwrap();
    let intra = dir.join(&names[1]);
    let t2 = std::fs::read_to_string(&intra).unwrap();
    std::fs::write(&intra, t2.lines().take(10).collect::<Vec<_>>().join("\n")).unwrap();
    assert!(Tasks::read(&dir, "a", &cat).unwrap_err().to_string().contains(&names[1]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn descriptor_files_round_trip_and_errors() {
    let cat = synth::catalog(2, 20, 2, 5).unwrap();
    let d = synth::descriptors(&cat, 6, 0, 5);
    let dir = tmp("descs");
    descriptors::write_dir(&dir, &d, ';').unwrap();
    assert_eq!(descriptors::read_dir(&dir, &cat, ';').unwrap(), d);
    let err = |dir: &PathBuf| descriptors::read_dir(dir, &cat, ';').unwrap_err().to_string();
    let f = dir.join("s001").join("h2.csv");
    let text = std::fs::read_to_string(&f).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[2] = lines[2].replacen(';', ";x;", 1);
    std::fs::write(&f, lines.join("\n")).unwrap();
    let e = err(&dir);
    assert!(e.contains("h2.csv") && e.contains("row 3") && e.contains("column 2"), "{e}");
    std::fs::write(&f, text.lines().skip(1).collect::<Vec<_>>().join("\n")).unwrap();
    assert!(err(&dir).contains("rows"));
    let short: Vec<String> = text.lines().map(|l| l.rsplit_once(';').unwrap().0.to_string()).collect();
    std::fs::write(&f, short.join("\n")).unwrap();
    assert!(err(&dir).contains("dimension"), "{}", err(&dir));
    std::fs::remove_file(&f).unwrap();
    assert!(err(&dir).contains("h2.csv"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_tasks_and_eval_end_to_end() {
    use std::process::Command;
    let root = tmp("cli");
    let cat = synth::catalog(3, 30, 2, 7).unwrap();
    // ref.png strips: textured patches (a ramp) and two flat ones.
    for (name, &count) in cat.names.iter().zip(&cat.counts) {
        std::fs::create_dir_all(root.join(name)).unwrap();
        let mut px = Vec::new();
        for i in 0..count {
            px.extend((0..1024).map(|p| if i < 2 { 128u8 } else { ((p * 7 + i * 13) % 256) as u8 }));
        }
        nhpatch::io::png::write_strip(&root.join(name).join("ref.png"), &px).unwrap();
    }
    let splits = format!(r#"{{"a": {{"train": [], "test": {:?}}}}}"#, cat.names);
    std::fs::write(root.join("splits.json"), splits).unwrap();
    let d = synth::descriptors(&cat, 8, 0, 7);
    descriptors::write_dir(&root.join("desc"), &d, ',').unwrap();
    let bin = env!("CARGO_BIN_EXE_nhpatch");
    let r = root.to_str().unwrap();
    let out = Command::new(bin)
        .args(["tasks", "--dataset", r, "--split", "a", "--out", &format!("{r}/tasks")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = format!("{r}/out.json");
    let args = ["eval", "--dataset", r, "--split", "a", "--descriptors", &format!("{r}/desc"), "--json", &json];
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("Verification ") && last.contains("  Matching ") && last.contains("  Retrieval "),
        "{last}"
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let tasks = Tasks::read(&root.join("tasks"), "a", &cat).unwrap();
    assert!(tasks.queries.iter().chain(&tasks.distractors).all(|q| q.idx >= 2), "flat patches are never drawn");
    let lib = evaluate(&d, &cat, &tasks, "a").unwrap();
    close(v["verification_map"].as_f64().unwrap(), lib.verification_map);
    close(v["retrieval_map"].as_f64().unwrap(), lib.retrieval_map);
    // A missing descriptor folder fails with its name, no panic.
    let bad =
        Command::new(bin).args(["eval", "--dataset", r, "--descriptors", &format!("{r}/nowhere")]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("nowhere"));
    std::fs::remove_dir_all(&root).unwrap();
}
