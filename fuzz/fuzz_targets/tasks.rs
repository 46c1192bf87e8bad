//! Task CSVs: `eval::tasks::Tasks::read` on a directory where one of the five
//! files of split `f` (picked by the first input byte) is the fuzz input and
//! the other four are valid, against a fixed three-sequence catalog.
//! A bug: a panic, a hang, or accepted tasks that reference a sequence, type
//! or patch index outside the catalog, or unbalanced verification lists.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use nhpatch::eval::Catalog;
use nhpatch::eval::tasks::{Tasks, file_names};

/// Valid contents of the five files, in `file_names` order.
const VALID: [&str; 5] = [
    "s1,t1,idx1,s2,t2,idx2\nv_a,0,1,v_a,3,1\ni_b,2,0,i_b,5,0\n",
    "s1,t1,idx1,s2,t2,idx2\nv_a,0,1,v_a,3,2\ni_b,1,0,i_b,4,1\n",
    "s1,t1,idx1,s2,t2,idx2\nv_a,0,1,i_b,3,0\nv_c,2,0,v_a,1,4\n",
    "s,idx\nv_a,0\ni_b,1\n",
    "s,idx\nv_a,2\nv_c,0\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let which = which as usize % 5;
    let catalog = Catalog::new(vec!["v_a".into(), "i_b".into(), "v_c".into()], vec![5, 2, 1]).unwrap();
    let dir = common::scratch_dir("tasks");
    for (i, name) in file_names("f").iter().enumerate() {
        let bytes = if i == which { rest } else { VALID[i].as_bytes() };
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let Ok(tasks) = Tasks::read(&dir, "f", &catalog) else { return };
    assert_eq!(tasks.pos.len(), tasks.neg_intra.len());
    assert_eq!(tasks.pos.len(), tasks.neg_inter.len());
    let pairs = tasks.pos.iter().chain(&tasks.neg_intra).chain(&tasks.neg_inter);
    for side in pairs.flat_map(|p| [p.a, p.b]) {
        assert!(side.t <= 5);
        assert!((side.idx as usize) < catalog.counts[side.seq as usize]);
    }
    for r in tasks.queries.iter().chain(&tasks.distractors) {
        assert!((r.idx as usize) < catalog.counts[r.seq as usize]);
    }
});
