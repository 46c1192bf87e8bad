//! `.npy` arrays: arbitrary bytes through `io::npy::parse`.
//! A bug: a panic, an out-of-bounds read, an allocation for a shape the bytes
//! cannot hold (a header claiming 10^12 elements must be refused before
//! allocating), a hang, or an accepted array whose data length is not the
//! product of its shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = nhpatch::io::npy::parse(data, Path::new("fuzz.npy")) {
        let n = a.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        assert_eq!(n, Some(a.data.len()), "shape {:?} vs {} values", a.shape, a.data.len());
    }
});
