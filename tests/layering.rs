//! The crate's imports run one way: every `crate::<module>` path in a module's
//! sources names a module of a strictly lower layer (`layers` <- `models` <-
//! `gpu` <- `net` <- `eval` <- `train` <- `capi`, the CLI on top through the
//! public API). A new module must be given its layer here.

use std::path::{Path, PathBuf};

/// Layer of each top-level module; an import must go to a smaller number.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("shape", 0),
    ("rng", 0),
    ("params", 1),
    ("io", 1),
    ("weights", 1),
    ("dist", 1),
    ("data", 2),
    ("gemm", 2),
    ("threads", 3),
    ("ops", 3),
    ("layers", 4),
    ("loss", 4),
    ("optim", 4),
    ("models", 5),
    ("gpu", 6),
    ("net", 7),
    ("eval", 8),
    ("train", 9),
    ("capi", 10),
];

/// Crate-root macros, usable from anywhere.
const MACROS: &[&str] = &["arg_err", "shape_err"];

/// The crate root's re-exports and the modules they come from.
const REEXPORTS: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("Device", "gpu"),
    ("Arch", "models"),
    ("Precision", "models"),
    ("Model", "models"),
    ("Network", "net"),
    ("RunConfig", "train"),
    ("RunSummary", "train"),
    ("Recipe", "train"),
];

fn layer(name: &str) -> Option<u32> {
    let module = REEXPORTS.iter().find(|(r, _)| *r == name).map_or(name, |(_, m)| m);
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            rust_files(&e.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The module names after each `crate::` in `text`.
fn crate_paths(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
        })
        .filter(|s: &String| !s.is_empty())
        .collect()
}

#[test]
fn imports_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if ["lib", "main", "cli"].contains(&name.as_str()) {
            continue;
        }
        let own =
            layer(&name).unwrap_or_else(|| panic!("src/{name}: give the new module a layer in tests/layering.rs"));
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for dep in crate_paths(&text) {
                if dep == name || MACROS.contains(&dep.as_str()) {
                    continue;
                }
                match layer(&dep) {
                    Some(l) if l < own => {}
                    _ => violations.push(format!("{} imports crate::{dep}", file.display())),
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports against the layering:\n{}", violations.join("\n"));
}

#[test]
fn the_scanner_sees_paths() {
    assert_eq!(crate_paths("use crate::models::Arch; crate::error::Result"), ["models", "error"]);
    assert_eq!(layer("train"), Some(9));
    assert_eq!(layer("Network"), layer("net"));
    assert!(layer("models") < layer("gpu") && layer("gpu") < layer("train"));
}
