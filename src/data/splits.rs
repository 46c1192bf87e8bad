//! HPatches split files: `{"a": {"name": "a", "train": [...], "test": [...]}, ...}`.
//! HPatches ships splits a, b, c (76 train / 40 test sequences) and illum,
//! view and full (test only). A split may omit `train` (test-only splits).

use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Largest split file read: the real one is 8 KB.
const MAX_BYTES: u64 = 64 << 20;

/// One split: training and test sequence names.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Split {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub train: Vec<String>,
    #[serde(default)]
    pub test: Vec<String>,
}

/// All splits of a file, by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Splits {
    pub splits: BTreeMap<String, Split>,
}

fn bad(path: &Path, msg: String) -> Error {
    Error::Format { path: path.to_path_buf(), msg }
}

impl Splits {
    /// Parses a split file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Splits> {
        let mut splits: BTreeMap<String, Split> =
            serde_json::from_str(text).map_err(|e| bad(path, format!("not a valid splits file: {e}")))?;
        for (key, s) in splits.iter_mut() {
            if s.name.is_empty() {
                s.name = key.clone();
            }
            for (list, names) in [("train", &s.train), ("test", &s.test)] {
                let mut seen = std::collections::BTreeSet::new();
                if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
                    return Err(bad(path, format!("split '{key}' lists '{dup}' twice in {list}")));
                }
            }
            if let Some(both) = s.train.iter().find(|n| s.test.contains(n)) {
                return Err(bad(path, format!("split '{key}' has '{both}' in both train and test")));
            }
        }
        Ok(Splits { splits })
    }

    /// Reads a split file.
    pub fn load(path: &Path) -> Result<Splits> {
        let meta = std::fs::metadata(path).map_err(|e| crate::io::io_err(path, e))?;
        if meta.len() > MAX_BYTES {
            return Err(bad(path, format!("{} bytes is too large for a splits file", meta.len())));
        }
        let text = std::fs::read_to_string(path).map_err(|e| crate::io::io_err(path, e))?;
        Self::parse(&text, path)
    }

    /// The split named `name`, or an error listing the ones there are.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Split> {
        self.splits.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.splits.keys().map(String::as_str).collect();
            bad(path, format!("no split '{name}' (the file has: {})", known.join(", ")))
        })
    }

    /// The JSON text of these splits (HPatches format).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.splits).expect("splits serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hpatches_format_and_rejects_inconsistencies() {
        let p = Path::new("splits.json");
        let text = r#"{"a": {"name": "a", "train": ["v_a", "i_b"], "test": ["v_c"]}, "full": {"test": ["v_a"]}}"#;
        let s = Splits::parse(text, p).unwrap();
        assert_eq!(s.get("a", p).unwrap().train, ["v_a", "i_b"]);
        assert_eq!(s.get("full", p).unwrap().name, "full");
        assert!(s.get("full", p).unwrap().train.is_empty());
        let e = s.get("z", p).unwrap_err().to_string();
        assert!(e.contains("splits.json") && e.contains("a, full"), "{e}");
        assert_eq!(Splits::parse(&s.to_json(), p).unwrap(), s);
        assert!(Splits::parse(r#"{"a": {"train": ["x"], "test": ["x"]}}"#, p).is_err());
        assert!(Splits::parse(r#"{"a": {"test": ["x", "x"]}}"#, p).is_err());
        assert!(Splits::parse("[1, 2]", p).unwrap_err().to_string().contains("splits.json"));
    }
}
