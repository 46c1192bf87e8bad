//! The safetensors reader and writer: round trips, files written by PyTorch's
//! `safetensors` (tests/golden/, from tools/torch_reference.py), every
//! corruption the reader must refuse, truncation at every byte, and the
//! atomic save; the model goldens and the formulas (tests/golden_support)
//! that stand in for their weights and full gradients.

mod golden_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use nhpatch::Error;
use nhpatch::weights::{self, Tensor, WeightsFile};

use golden_support::{GRAD_SAMPLES, ParamKind};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("weights-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A safetensors file from a literal header and data buffer.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// `from_bytes` must fail with a Format error naming the path; returns the message.
fn format_err(bytes: &[u8], case: &str) -> String {
    let path = PathBuf::from(format!("corrupt/{case}.safetensors"));
    match weights::from_bytes(bytes, &path) {
        Err(e @ Error::Format { .. }) => {
            let Error::Format { path: got, .. } = &e else { unreachable!() };
            assert_eq!(got, &path, "{case}");
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{case}: {msg}");
            msg
        }
        Err(e) => panic!("{case}: expected a format error, got {e:?}"),
        Ok(f) => panic!("{case}: accepted a corrupt file: {f:?}"),
    }
}

fn sample() -> WeightsFile {
    let mut tensors = BTreeMap::new();
    let conv: Vec<f32> = (0..2 * 3 * 3 * 3).map(|i| (i as f32 - 20.0) * 0.37).collect();
    tensors.insert("conv1.weight".to_string(), Tensor { shape: vec![2, 3, 3, 3], data: conv });
    // Bit patterns a lossy writer would change: NaN payloads, -0, subnormals.
    let special = vec![f32::from_bits(0x7fc0_1234), -0.0, f32::from_bits(1), f32::MAX, f32::NEG_INFINITY];
    tensors.insert("bn.running_var".to_string(), Tensor { shape: vec![5], data: special });
    tensors.insert("scalar".to_string(), Tensor { shape: vec![], data: vec![2.5] });
    tensors.insert("empty".to_string(), Tensor { shape: vec![0, 5], data: vec![] });
    tensors.insert("ünïcode \"name\"".to_string(), Tensor { shape: vec![1, 1], data: vec![7.0] });
    let metadata = [("model", "unet"), ("format_version", "1"), ("note", "quotes \" and \\ and é")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    WeightsFile { metadata, tensors }
}

fn assert_same(a: &WeightsFile, b: &WeightsFile) {
    assert_eq!(a.metadata, b.metadata);
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        assert_eq!(t.shape, u.shape, "{name}");
        assert_eq!(bits(&t.data), bits(&u.data), "{name}");
    }
}

#[test]
fn round_trip_is_bit_identical_and_leaves_no_temp_file() {
    let dir = scratch("round-trip");
    let path = dir.join("model.safetensors");
    let file = sample();
    weights::save(&path, &file).unwrap();
    assert_same(&file, &weights::load(&path).unwrap());
    assert_eq!(entries(&dir), ["model.safetensors"]);

    // Saving over an existing file replaces it, again without leftovers.
    let mut smaller = file.clone();
    smaller.tensors.remove("conv1.weight");
    smaller.metadata.clear();
    weights::save(&path, &smaller).unwrap();
    assert_same(&smaller, &weights::load(&path).unwrap());
    assert_eq!(entries(&dir), ["model.safetensors"]);

    // Canonical: saving what was loaded reproduces the bytes, and the data
    // buffer starts 8-byte aligned.
    let bytes = fs::read(&path).unwrap();
    assert_eq!(weights::to_bytes(&weights::load(&path).unwrap()).unwrap(), bytes);
    assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8, 0);
}

#[test]
fn reads_and_reproduces_a_file_written_by_torch_save_file() {
    let path = golden("tiny_torch.safetensors");
    let file = weights::load(&path).unwrap();
    assert_eq!(file.metadata, BTreeMap::from([("format_version".to_string(), "1".to_string())]));
    assert_eq!(file.tensors.keys().collect::<Vec<_>>(), ["conv.weight", "empty", "fc.bias", "special"]);

    let w = &file.tensors["conv.weight"];
    assert_eq!(w.shape, [2, 1, 3, 3]);
    let want: Vec<f32> = (0..18).map(|i| (i as f32 - 8.5) / 4.0).collect();
    assert_eq!(bits(&w.data), bits(&want));

    let b = &file.tensors["fc.bias"];
    assert_eq!(b.shape, [3]);
    assert_eq!(bits(&b.data), bits(&[0.5, -1.25, 3.0e-3]));

    let s = &file.tensors["special"];
    assert_eq!(s.shape, [6]);
    let want = [-0.0, f32::from_bits(0x0001_16c2), f32::MAX, f32::NEG_INFINITY, 1.0 / 3.0, -2.5e-8];
    assert_eq!(bits(&s.data), bits(&want));
    assert_eq!(s.data[1], 1.0e-40);

    let e = &file.tensors["empty"];
    assert_eq!((e.shape.as_slice(), e.data.len()), ([0, 3].as_slice(), 0));

    // Byte-exact: nhpatch's writer produces what the reference writer wrote.
    let dir = scratch("torch-bytes");
    let copy = dir.join("tiny.safetensors");
    weights::save(&copy, &file).unwrap();
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&path).unwrap());
}

#[test]
fn converts_half_bfloat_and_double_like_torch() {
    let file = weights::load(&golden("dtypes_torch.safetensors")).unwrap();
    for dtype in ["f16", "bf16", "f64"] {
        let got = &file.tensors[dtype];
        let want = &file.tensors[&format!("{dtype}_as_f32")];
        assert_eq!(got.shape, [2, 8], "{dtype}");
        assert_eq!(got.shape, want.shape, "{dtype}");
        assert_eq!(bits(&got.data), bits(&want.data), "{dtype}");
    }
    // The file holds the cases that need care: subnormal halves, overflow to
    // infinity, NaN.
    let f16 = &file.tensors["f16"].data;
    assert!(f16.iter().any(|x| x.is_subnormal() || (*x != 0.0 && x.abs() < 6.2e-5)));
    assert!(f16.iter().any(|x| x.is_nan()) && f16.contains(&f32::INFINITY) && f16.contains(&65504.0));
}

const MODELS: [&str; 4] = ["unet", "dncnn", "hardnet_baseline", "hardnet_original"];

fn tensor<'a>(file: &'a WeightsFile, model: &str, name: &str) -> &'a Tensor {
    file.tensors.get(name).unwrap_or_else(|| panic!("{model}: no tensor {name}"))
}

/// The model goldens parse, are canonical (nhpatch's writer reproduces their
/// bytes), stay small, and are self-consistent: weights by formula only, a
/// gradient summary for exactly the trainable parameters.
#[test]
fn model_goldens_are_canonical_and_complete() {
    // params + buffers (no num_batches_tracked), as the script asserts too.
    let totals = [59_777, 558_016, 1_336_928, 1_335_712];
    for (model, total) in MODELS.into_iter().zip(totals) {
        let path = golden(&format!("{model}.safetensors"));
        let bytes = fs::read(&path).unwrap();
        // The golden directory must stay well under 1 MB.
        assert!(bytes.len() < 192 * 1024, "{model}: {} bytes", bytes.len());
        let file = weights::load(&path).unwrap();
        assert_eq!(weights::to_bytes(&file).unwrap(), bytes, "{model}");
        assert_eq!(file.metadata["model"], model);
        assert_eq!(file.metadata["format_version"], "1");
        assert_eq!(file.metadata["generator"], "tools/torch_reference.py");
        assert_eq!(file.metadata["weights"], golden_support::WEIGHTS_RULE);
        for key in ["variant", "bn_eps", "bn_momentum", "padding", "input_scaling", "gradients"] {
            assert!(file.metadata.contains_key(key), "{model}: {key}");
        }
        for name in ["input", "eval_output", "train_output", "train_loss"] {
            assert!(file.tensors.contains_key(name), "{model}: {name}");
        }
        assert_eq!(file.tensors["input"].shape, [4, 1, 32, 32]);

        let shapes = golden_support::shapes(&file);
        assert_eq!(shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(), total, "{model}");
        let mut summarised = Vec::new();
        for (name, shape) in &shapes {
            assert!(!file.tensors.contains_key(name), "{model}: {name} stored in full");
            golden_support::param_kind(name, shape); // every name follows the convN/bnN scheme
            let len: usize = shape.iter().product();
            if !golden_support::is_trainable(name) {
                // Running statistics after the train step: one value per channel.
                let (module, field) = name.rsplit_once('.').unwrap();
                let after = format!("{field}_after.{module}");
                assert_eq!(tensor(&file, model, &after).shape, *shape, "{model}: {after}");
                continue;
            }
            summarised.push(name.as_str());
            let idx = &tensor(&file, model, &format!("gradidx.{name}")).data;
            let samples = &tensor(&file, model, &format!("gradsample.{name}")).data;
            assert_eq!((idx.len(), samples.len()), (GRAD_SAMPLES, GRAD_SAMPLES), "{model}: {name}");
            let positions: Vec<f32> = golden_support::grad_positions(name, len).into_iter().map(|i| i as f32).collect();
            assert_eq!(bits(idx), bits(&positions), "{model}: {name}: sample positions");
            let scalar = |prefix: &str| {
                let t = tensor(&file, model, &format!("{prefix}.{name}"));
                assert_eq!(t.shape, [1], "{model}: {prefix}.{name}");
                t.data[0]
            };
            let (proj, abs, norm) = (scalar("gradproj"), scalar("gradabs"), scalar("gradnorm"));
            // Each a rounding of an exact sum: |proj| <= abs, |g_i| <= norm.
            assert!(proj.is_finite() && proj.abs() <= abs, "{model}: {name}: {proj} vs {abs}");
            assert!(samples.iter().all(|g| g.abs() <= norm * (1.0 + 1e-6)), "{model}: {name}");
            assert!(norm > 0.0, "{model}: {name}: zero gradient tells nothing");
        }
        // Nothing else was summarised, and nothing else is stored.
        let mut keys: Vec<&str> = file.tensors.keys().map(String::as_str).collect();
        keys.retain(|k| k.starts_with("grad"));
        // Five summaries of the float32 step and three of the float64 step per parameter.
        assert_eq!(keys.len(), 8 * summarised.len(), "{model}");
        for k in keys {
            assert!(summarised.contains(&k.split_once('.').unwrap().1), "{model}: stray {k}");
        }
    }
    let all: u64 = fs::read_dir(golden("")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(all < 400 * 1024, "tests/golden holds {all} bytes");
}

/// The Rust formula reproduces the values the reference stored for the
/// purpose (`check.<name>`, `checkproj.<name>`), bit for bit.
#[test]
fn formula_weights_match_the_reference_bit_for_bit() {
    // Published FNV-1a 64 test vectors.
    assert_eq!(golden_support::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(golden_support::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(golden_support::fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    // Nearest power of two to 1/sqrt(fan_in); 128 and 8192 are the halfway cases.
    for (fan_in, e) in [(1, 0), (2, 1), (9, 2), (128, 4), (144, 4), (288, 4), (576, 5), (1152, 5), (8192, 7)] {
        assert_eq!(golden_support::conv_weight_exponent(fan_in), e, "fan_in {fan_in}");
    }

    let mut kinds = Vec::new();
    let mut rounded = 0;
    for model in MODELS {
        let file = weights::load(&golden(&format!("{model}.safetensors"))).unwrap();
        let shapes: BTreeMap<String, Vec<usize>> = golden_support::shapes(&file).into_iter().collect();
        let checks: Vec<&String> = file.tensors.keys().filter(|k| k.starts_with("check.")).collect();
        assert!(checks.len() >= 3, "{model}: {checks:?}");
        for key in checks {
            let name = key.strip_prefix("check.").unwrap();
            let shape = &shapes[name];
            let kind = golden_support::param_kind(name, shape);
            let stored = &file.tensors[key].data;
            assert_eq!(stored.len(), 8, "{model}: {key}");
            let values = golden_support::formula_param(name, shape, kind);
            assert_eq!(values.len(), shape.iter().product::<usize>());
            assert_eq!(bits(&values[..8]), bits(stored), "{model}: {name} ({kind:?})");
            if matches!(kind, ParamKind::BnWeight | ParamKind::RunningVar) {
                // 1 + v/2 needs 25 bits for odd multiples of 2^-24 above 1:
                // count them, to know the rounding itself was compared.
                let mut rng = nhpatch::rng::Rng::new(golden_support::fnv1a64(name.as_bytes()));
                rounded += (0..8)
                    .filter(|_| {
                        let exact = 1.0 + 0.5 * golden_support::unit_value(&mut rng);
                        exact as f32 as f64 != exact
                    })
                    .count();
            }
            kinds.push(std::mem::discriminant(&kind));
        }
        let proj: Vec<&String> = file.tensors.keys().filter(|k| k.starts_with("checkproj.")).collect();
        assert_eq!(proj.len(), 1, "{model}");
        let name = proj[0].strip_prefix("checkproj.").unwrap();
        let w: Vec<f32> = golden_support::grad_proj_weights(name, 8).into_iter().map(|w| w as f32).collect();
        assert_eq!(bits(&w), bits(&file.tensors[proj[0]].data), "{model}: {name}");
    }
    kinds.sort_by_key(|d| format!("{d:?}"));
    kinds.dedup();
    assert_eq!(kinds.len(), 6, "every ParamKind checked");
    assert!(rounded > 0, "no check value exercised the rounding to f32");
}

/// `compare_grad` accepts a gradient that matches its summary and reports
/// each kind of mismatch.
#[test]
fn compare_grad_accepts_the_summarised_gradient_and_rejects_changes() {
    let name = "conv9.weight";
    let mut rng = nhpatch::rng::Rng::new(7);
    let grad: Vec<f32> = (0..3 * 4 * 3 * 3).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let s = golden_support::grad_summary(name, &grad);
    let one = |x: f64| Tensor { shape: vec![1], data: vec![x as f32] };
    let many = |v: Vec<f32>| Tensor { shape: vec![v.len()], data: v };
    let mut file = WeightsFile { metadata: BTreeMap::new(), tensors: BTreeMap::new() };
    let t = &mut file.tensors;
    t.insert(format!("gradidx.{name}"), many(s.positions.iter().map(|&i| i as f32).collect()));
    t.insert(format!("gradsample.{name}"), many(s.samples.clone()));
    t.insert(format!("gradproj.{name}"), one(s.proj));
    t.insert(format!("gradabs.{name}"), one(s.abs));
    t.insert(format!("gradnorm.{name}"), one(s.norm));
    let (atol, rtol) = (1e-6, 1e-5);
    assert_eq!(golden_support::compare_grad(&file, name, &grad, atol, rtol), Ok(()));

    // A sampled value, an unsampled one (only the sums see it), the length.
    let sampled = s.positions[0];
    let unsampled = (0..grad.len()).find(|i| !s.positions.contains(i)).unwrap();
    for (i, word) in [(sampled, "reference"), (unsampled, "projection")] {
        let mut bad = grad.clone();
        bad[i] += 0.5;
        let err = golden_support::compare_grad(&file, name, &bad, atol, rtol).unwrap_err();
        assert!(err.contains(word) && err.contains(name), "{i}: {err}");
    }
    let err = golden_support::compare_grad(&file, name, &grad[1..], atol, rtol).unwrap_err();
    assert!(err.contains("positions"), "{err}");
}

#[test]
fn accepts_any_entry_order_padding_and_unknown_keys() {
    // JSON order differs from offset order; an extra key is ignored, as the
    // reference reader does; trailing spaces pad the header.
    let header = r#"{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8],"extra":1},"a":{"shape":[1],"dtype":"F32","data_offsets":[0,4]}}   "#;
    let data = [1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat();
    let file = weights::from_bytes(&st(header, &data), Path::new("ok.safetensors")).unwrap();
    assert!(file.metadata.is_empty());
    assert_eq!(file.tensors["a"].data, [1.0]);
    assert_eq!(file.tensors["b"].data, [2.0]);
}

#[test]
fn refuses_every_kind_of_corruption() {
    let f32s = |n: usize| vec![0u8; 4 * n];
    let entry = |name: &str, dtype: &str, shape: &str, offsets: &str| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}"#)
    };
    let one = |dtype: &str, shape: &str, offsets: &str| format!("{{{}}}", entry("t", dtype, shape, offsets));
    // Two F32 tensors, each given as [name, shape, offsets].
    let two = |a: [&str; 3], b: [&str; 3]| {
        format!("{{{},{}}}", entry(a[0], "F32", a[1], a[2]), entry(b[0], "F32", b[1], b[2]))
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty-file", vec![], "too short"),
        ("seven-bytes", vec![1, 0, 0, 0, 0, 0, 0], "too short"),
        ("absurd-header", [u64::MAX.to_le_bytes().as_slice(), b"{}"].concat(), "too large"),
        ("header-past-eof", [100u64.to_le_bytes().as_slice(), b"{}"].concat(), "larger than"),
        ("bad-utf8", st("{\"\u{e9}\":1}", &[]).iter().map(|&b| if b == 0xc3 { 0xff } else { b }).collect(), "UTF-8"),
        ("bad-json", st(r#"{"t":{"dtype":"F32""#, &[]), "JSON"),
        ("not-an-object", st("[1,2]", &[]), "JSON"),
        ("entry-not-an-object", st(r#"{"t":3}"#, &[]), "JSON"),
        ("missing-dtype", st(r#"{"t":{"shape":[1],"data_offsets":[0,4]}}"#, &f32s(1)), "missing \"dtype\""),
        ("missing-shape", st(r#"{"t":{"dtype":"F32","data_offsets":[0,4]}}"#, &f32s(1)), "missing \"shape\""),
        ("missing-offsets", st(r#"{"t":{"dtype":"F32","shape":[1]}}"#, &f32s(1)), "missing \"data_offsets\""),
        ("unsupported-dtype", st(&one("I64", "[1]", "[0,8]"), &f32s(2)), "unsupported dtype \"I64\""),
        ("dtype-not-string", st(&one("F32", "[1]", "[0,4]").replace("\"F32\"", "32"), &f32s(1)), "dtype"),
        ("negative-dim", st(&one("F32", "[2,-1]", "[0,4]"), &f32s(1)), "shape"),
        ("fractional-dim", st(&one("F32", "[1.5]", "[0,4]"), &f32s(1)), "shape"),
        ("one-offset", st(&one("F32", "[1]", "[0]"), &f32s(1)), "data_offsets"),
        ("begin-after-end", st(&one("F32", "[0]", "[4,0]"), &f32s(1)), "begin is after end"),
        ("size-mismatch", st(&one("F32", "[3]", "[0,8]"), &f32s(2)), "size mismatch"),
        ("shape-overflow", st(&one("F32", "[4294967296,4294967296]", "[0,4]"), &f32s(1)), "overflow"),
        ("dtype-size-overflow", st(&one("F64", "[4611686018427387904]", "[0,8]"), &f32s(2)), "overflow"),
        ("past-buffer", st(&one("F32", "[4]", "[0,16]"), &f32s(2)), "out of"),
        ("offset-huge", st(&one("F32", "[1]", "[18446744073709551611,18446744073709551615]"), &f32s(1)), "out of"),
        ("overlap", st(&two(["a", "[2]", "[0,8]"], ["b", "[2]", "[4,12]"]), &f32s(3)), "overlap"),
        ("hole-at-start", st(&one("F32", "[1]", "[4,8]"), &f32s(2)), "hole"),
        ("hole-in-middle", st(&two(["a", "[1]", "[0,4]"], ["b", "[1]", "[8,12]"]), &f32s(3)), "hole"),
        ("trailing-bytes", st(&one("F32", "[1]", "[0,4]"), &f32s(2)), "trailing"),
        ("duplicate-name", st(&two(["a", "[1]", "[0,4]"], ["a", "[1]", "[0,4]"]), &f32s(1)), "duplicate key \"a\""),
        (
            "duplicate-field",
            st(r#"{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}"#, &f32s(1)),
            "duplicate key \"dtype\"",
        ),
        (
            "duplicate-metadata",
            st(r#"{"__metadata__":{"k":"v"},"__metadata__":{"k":"w"}}"#, &[]),
            "duplicate key \"__metadata__\"",
        ),
        ("metadata-not-string", st(r#"{"__metadata__":{"k":1}}"#, &[]), "not a string"),
        ("metadata-not-object", st(r#"{"__metadata__":"v"}"#, &[]), "JSON"),
    ];
    for (case, bytes, word) in &cases {
        let msg = format_err(bytes, case);
        assert!(msg.contains(word), "{case}: message {msg:?} lacks {word:?}");
    }

    // The same through `load`, reading from disk.
    let dir = scratch("corrupt");
    let path = dir.join("overlap.safetensors");
    fs::write(&path, &cases.iter().find(|c| c.0 == "overlap").unwrap().1).unwrap();
    let err = weights::load(&path).unwrap_err();
    assert!(matches!(&err, Error::Format { path: p, .. } if p == &path), "{err:?}");
    assert!(err.to_string().contains("overlap"));
}

#[test]
fn every_truncation_and_extension_is_an_error() {
    let bytes = fs::read(golden("tiny_torch.safetensors")).unwrap();
    assert!(weights::from_bytes(&bytes, Path::new("whole")).is_ok());
    for len in 0..bytes.len() {
        format_err(&bytes[..len], &format!("truncated-{len}"));
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(format_err(&longer, "extended").contains("trailing"));
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let path = scratch("missing").join("nope.safetensors");
    match weights::load(&path) {
        Err(e @ Error::Io { .. }) => {
            assert!(matches!(&e, Error::Io { path: p, .. } if p == &path));
            assert!(e.to_string().contains("nope.safetensors"), "{e}");
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn failed_saves_leave_no_files() {
    let dir = scratch("failed-save");
    let path = dir.join("no-such-dir").join("model.safetensors");
    match weights::save(&path, &sample()) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("model.safetensors"), "{e}"),
        other => panic!("expected an Io error, got {other:?}"),
    }
    assert!(entries(&dir).is_empty());

    // Invalid contents are refused before anything is written.
    let target = dir.join("model.safetensors");
    let mut bad = sample();
    bad.tensors.get_mut("conv1.weight").unwrap().data.pop();
    assert!(matches!(weights::save(&target, &bad), Err(Error::Shape(_))));
    let mut reserved = sample();
    reserved.tensors.insert("__metadata__".to_string(), Tensor { shape: vec![1], data: vec![0.0] });
    assert!(matches!(weights::save(&target, &reserved), Err(Error::InvalidArgument(_))));
    assert!(entries(&dir).is_empty());

    // A target that is a directory: the rename fails, the temp file goes.
    let blocked = dir.join("blocked.safetensors");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join("keep"), b"x").unwrap();
    assert!(matches!(weights::save(&blocked, &sample()), Err(Error::Io { .. })));
    assert_eq!(entries(&dir), ["blocked.safetensors"]);
}
