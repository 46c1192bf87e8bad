//! safetensors weights: arbitrary bytes through `weights::from_bytes`, then
//! whatever parses into `Network::from_file` (with no architecture given and
//! with each one forced).
//! A bug: a panic, an out-of-bounds read, an allocation the bytes cannot back
//! (a header claiming 10^12 elements must be refused before allocating), a
//! hang, an accepted tensor whose data length is not the product of its
//! shape, or a network that loads with the wrong number of parameters (a
//! weights file must load whole or not at all).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhpatch::models::Arch;
use nhpatch::net::{LoadOptions, Network};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    let Ok(file) = nhpatch::weights::from_bytes(data, path) else { return };
    for t in file.tensors.values() {
        let n = t.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        assert_eq!(n, Some(t.data.len()), "shape {:?} vs {} values", t.shape, t.data.len());
    }
    let archs = std::iter::once(None).chain(Arch::ALL.into_iter().map(Some));
    for arch in archs {
        if let Ok(net) = Network::from_file(&file, LoadOptions { arch }, path) {
            assert_eq!(net.params().len(), net.model().layout().len());
        }
    }
});
