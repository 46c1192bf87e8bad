//! `splits.json`: arbitrary text through `data::splits::Splits::parse`, and
//! an accepted file back through `to_json` and `parse` again.
//! A bug: a panic, a hang, an accepted split listing a name twice or in both
//! train and test, or an accepted file that does not survive its own writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhpatch::data::splits::Splits;
use std::collections::BTreeSet;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("splits.json");
    let Ok(splits) = Splits::parse(text, path) else { return };
    for s in splits.splits.values() {
        let train: BTreeSet<&String> = s.train.iter().collect();
        let test: BTreeSet<&String> = s.test.iter().collect();
        assert_eq!(train.len(), s.train.len());
        assert_eq!(test.len(), s.test.len());
        assert!(train.is_disjoint(&test));
    }
    let again = Splits::parse(&splits.to_json(), path).expect("to_json output must parse");
    assert_eq!(again, splits);
});
