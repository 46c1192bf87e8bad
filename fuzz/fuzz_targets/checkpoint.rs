//! Checkpoints: arbitrary bytes written to a file and loaded with
//! `train::checkpoint::Checkpoint::load` (safetensors plus JSON state).
//! A bug: a panic, an out-of-bounds read, an allocation the bytes cannot back,
//! a hang, or an accepted checkpoint whose optimizer buffers do not have the
//! parameter arena's length.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use nhpatch::optim::OptimizerState;
use nhpatch::train::checkpoint::Checkpoint;

fuzz_target!(|data: &[u8]| {
    let path = common::write_input("checkpoint", "checkpoint.safetensors", data);
    let Ok(ck) = Checkpoint::load(&path) else { return };
    let n = ck.params.len();
    match &ck.optimizer {
        OptimizerState::Sgd(s) => assert_eq!(s.momentum_buffer.len(), n),
        OptimizerState::Adam(s) => {
            assert_eq!(s.exp_avg.len(), n);
            assert_eq!(s.exp_avg_sq.len(), n);
        }
    }
});
