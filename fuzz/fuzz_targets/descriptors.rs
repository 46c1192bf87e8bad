//! Descriptor CSVs: arbitrary text through `eval::descriptors::parse_csv`.
//! The first input byte picks the delimiter (`,` or `;`) and the expected row
//! count (0..64); the rest is the file.
//! A bug: a panic, a hang, an allocation sized by anything but the text, or
//! an accepted file whose values are not `count x dim` finite floats.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhpatch::eval::descriptors::parse_csv;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let delimiter = if head & 0x80 == 0 { ',' } else { ';' };
    let count = (head & 0x3f) as usize;
    if let Ok((values, dim)) = parse_csv(text, delimiter, count, Path::new("fuzz.csv")) {
        assert_eq!(values.len(), count * dim);
        assert!(values.iter().all(|v| v.is_finite()));
    }
});
