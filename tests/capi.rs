//! The C ABI (`src/capi/`, `include/nhpatch.h`) as C programs meet it: the
//! example `examples/c/describe.c` compiled with the system C compiler
//! against the header and `libnhpatch.a` must print what `Network::describe`
//! computes; the header must declare exactly the functions the library
//! exports, with the same status values and constants; and every error path
//! (NULL, missing or corrupt files, wrong lengths, wrong kind of network) must
//! come back as its status code with a message, called here straight through
//! the `extern "C"` functions.

mod common;

use common::cli::dir;
use nhpatch::capi::*;
use nhpatch::models::{Arch, DESC_LEN, PATCH, PATCH_LEN};
use nhpatch::net::{LoadOptions, Network, to_pixels};
use std::collections::BTreeSet;
use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::{null, null_mut};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Native libraries a Rust staticlib needs on this target
/// (`cargo rustc --lib -- --print native-static-libs`); None where untested.
fn native_libs() -> Option<&'static [&'static str]> {
    if cfg!(target_os = "linux") {
        Some(&["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"])
    } else {
        None
    }
}

/// `libnhpatch.a` of the current sources, built once per test run.
///
/// `cargo test` builds only the rlib, so the static library comes from a
/// nested `cargo build --lib` with the test's profile. It uses a target
/// folder of its own (`target/capi-lib`): the outer cargo holds the lock on
/// `target/<profile>` while tests run. Incremental after the first run.
fn static_lib() -> PathBuf {
    static LIB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        // The test binary is `target/<profile>/deps/capi-*`.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap();
        let release = profile_dir.file_name().is_some_and(|p| p == "release");
        let target = profile_dir.parent().unwrap().join("capi-lib");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--lib", "--quiet", "--manifest-path"]).arg(Path::new(ROOT).join("Cargo.toml"));
        cmd.arg("--target-dir").arg(&target).env_remove("CARGO_TARGET_DIR");
        if release {
            cmd.arg("--release");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "cargo build --lib failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let lib = target.join(if release { "release" } else { "debug" }).join("libnhpatch.a");
        assert!(lib.exists(), "{} is missing after cargo build --lib", lib.display());
        lib
    })
    .clone()
}

/// Compiles examples/c/describe.c into `d`; None (with a note) where no C compiler or link recipe exists.
fn build_example(d: &Path) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Some(libs) = native_libs() else {
        eprintln!("note: no static link recipe for this target; the C example is not built");
        return None;
    };
    if Command::new(&cc).arg("--version").output().is_err() {
        eprintln!("note: no C compiler ('{cc}'); the C example is not built");
        return None;
    }
    let lib = static_lib();
    let exe = d.join("describe");
    let out = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O1", "-I"])
        .arg(Path::new(ROOT).join("include"))
        .arg(Path::new(ROOT).join("examples/c/describe.c"))
        .arg(&lib)
        .args(libs)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{cc} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(exe)
}

/// A HardNet weights file and a strip of `n` patches of side `side` (not 32: the reader resizes).
fn fixtures(d: &Path, n: usize, side: usize) -> (PathBuf, PathBuf) {
    let weights = d.join("hardnet.safetensors");
    Network::init(Arch::HardNetOriginal, 11).unwrap().save(&weights).unwrap();
    let strip = d.join("strip.png");
    let pixels: Vec<u8> = (0..n * side * side).map(|i| ((i % side) * 5 + (i / side) % 89 + i / 997) as u8).collect();
    let img = nhpatch::io::png::GrayImage { width: side, height: n * side, pixels };
    nhpatch::io::png::write_gray(&strip, &img).unwrap();
    (weights, strip)
}

/// What the library computes for the strip: the reference for the C program.
fn expected(weights: &Path, strip: &Path) -> (usize, Vec<f32>) {
    let s = nhpatch::io::png::read_strip(strip).unwrap();
    let x: Vec<f32> = s.patches.iter().map(|&v| f32::from(v)).collect();
    (s.count, Network::load(weights, LoadOptions::default()).unwrap().describe(&x).unwrap())
}

fn parse_output(stdout: &[u8]) -> (usize, Vec<f32>) {
    let text = String::from_utf8(stdout.to_vec()).unwrap();
    let mut lines = text.lines();
    let n = lines.next().and_then(|l| l.strip_prefix("patches ")).expect(&text).parse().unwrap();
    let desc = lines.next().expect(&text).split(' ').map(|v| v.parse().unwrap()).collect();
    (n, desc)
}

#[test]
fn c_example_describes_a_strip_like_the_library() {
    let d = dir("capi-example");
    let Some(exe) = build_example(&d) else { return };
    let (weights, strip) = fixtures(&d, 5, 48);
    let (n, want) = expected(&weights, &strip);
    for threads in [None, Some("1"), Some("2")] {
        let out = Command::new(&exe).arg(&weights).arg(&strip).args(threads).output().unwrap();
        assert!(out.status.success(), "describe failed: {}", String::from_utf8_lossy(&out.stderr));
        let (got_n, got) = parse_output(&out.stdout);
        assert_eq!(got_n, n);
        assert_eq!(got.len(), DESC_LEN);
        for (i, (g, w)) in got.iter().zip(&want[..DESC_LEN]).enumerate() {
            assert!((g - w).abs() <= 1e-5, "threads {threads:?}: descriptor[{i}] = {g}, library says {w}");
        }
    }
    // Failures print nhpatch's message, naming the file, and exit 1.
    let garbage = d.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x08\0\0\0\0\0\0\0not json").unwrap();
    for (w, s) in [(&garbage, &strip), (&weights, &d.join("missing.png")), (&strip, &strip)] {
        let out = Command::new(&exe).arg(w).arg(s).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("describe: ") && (err.contains(".png") || err.contains(".safetensors")), "{err}");
    }
}

/// The header compiles as C++ too (the `extern "C"` guard), where a C++ compiler exists.
#[test]
fn header_compiles_as_cpp() {
    let d = dir("capi-cpp");
    let src = d.join("use.cpp");
    std::fs::write(
        &src,
        "#include \"nhpatch.h\"\nint main() { nhp_network *n = nullptr; nhp_free(n); return nhp_is_denoiser(n) + 1; }\n",
    )
    .unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let Ok(out) = Command::new(&cxx)
        .args(["-std=c++11", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only", "-I"])
        .arg(Path::new(ROOT).join("include"))
        .arg(&src)
        .output()
    else {
        eprintln!("note: no C++ compiler ('{cxx}'); skipped");
        return;
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Names of the functions the header declares.
fn header_functions(header: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in header.match_indices("nhp_") {
        let rest = &header[i..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        // A prototype: the name follows a type, opens a parenthesis, and is not inside a comment.
        let line_start = header[..i].rfind('\n').map_or(0, |p| p + 1);
        let line = header[line_start..].lines().next().unwrap();
        let in_comment = line.trim_start().starts_with('*') || line.trim_start().starts_with("/*");
        if rest[end..].starts_with('(') && !in_comment {
            names.insert(rest[..end].to_string());
        }
    }
    names
}

/// Names of the `#[unsafe(no_mangle)]` `extern "C"` functions in src/capi/.
fn rust_exports() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("src/capi")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line == "#[unsafe(no_mangle)]" {
                let decl = lines.next().unwrap();
                let name = decl.split("extern \"C\" fn ").nth(1).expect(decl).split('(').next().unwrap();
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[test]
fn header_declares_exactly_the_exports_with_the_same_values() {
    let header = std::fs::read_to_string(Path::new(ROOT).join("include/nhpatch.h")).unwrap();
    let declared = header_functions(&header);
    let exported = rust_exports();
    assert!(exported.len() >= 16, "{exported:?}");
    assert_eq!(declared, exported, "include/nhpatch.h and src/capi/ disagree");
    for (i, s) in NhpStatus::ALL.iter().enumerate() {
        assert_eq!(*s as usize, i);
        assert!(header.contains(&format!("{} = {i}", s.c_name())), "header lacks {} = {i}", s.c_name());
    }
    assert_eq!(header.matches("    NHP_").count(), NhpStatus::ALL.len(), "the header has statuses Rust lacks");
    for (name, v) in [("NHP_PATCH_SIDE", PATCH), ("NHP_PATCH_LEN", PATCH_LEN), ("NHP_DESC_LEN", DESC_LEN)] {
        assert!(header.contains(&format!("#define {name} {v}\n")), "header lacks #define {name} {v}");
    }
    // What the shared library really exports, where binutils' nm is at hand.
    let so = static_lib().with_file_name("libnhpatch.so");
    if let (true, Ok(out)) = (so.exists(), Command::new("nm").args(["-D", "--defined-only"]).arg(&so).output()) {
        let text = String::from_utf8_lossy(&out.stdout);
        let symbols: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .filter(|s| s.starts_with("nhp_"))
            .map(String::from)
            .collect();
        assert_eq!(symbols, exported, "libnhpatch.so exports other nhp_ symbols than src/capi/ declares");
    }
}

/// Runs the example under valgrind: nothing definitely or indirectly lost, no invalid access.
#[test]
#[ignore = "needs valgrind; run with --ignored"]
fn c_example_is_clean_under_valgrind() {
    let d = dir("capi-valgrind");
    let Some(exe) = build_example(&d) else { return };
    let (weights, strip) = fixtures(&d, 3, 32);
    for threads in [None, Some("2")] {
        let out = Command::new("valgrind")
            .args(["--leak-check=full", "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=1"])
            .arg(&exe)
            .arg(&weights)
            .arg(&strip)
            .args(threads)
            .output()
            .expect("valgrind");
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("{err}");
        assert!(out.status.success(), "valgrind reported errors:\n{err}");
        assert!(err.contains("definitely lost: 0 bytes") || err.contains("All heap blocks were freed"), "{err}");
    }
}

// ---- the ABI called from Rust ----

fn c(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    // SAFETY (test): nhp_last_error never returns NULL and the string lives until the next call.
    unsafe { CStr::from_ptr(nhp_last_error()) }.to_str().unwrap().to_string()
}

/// Loads through the ABI, which must succeed.
fn load(f: unsafe extern "C" fn(*const c_char, *mut *mut NhpNetwork) -> NhpStatus, path: &Path) -> *mut NhpNetwork {
    let mut net = null_mut();
    let st = unsafe { f(c(path).as_ptr(), &mut net) };
    assert_eq!(st, NhpStatus::Ok, "{}", last_error());
    net
}

/// A load that must fail: its status and message.
fn load_err(
    f: unsafe extern "C" fn(*const c_char, *mut *mut NhpNetwork) -> NhpStatus,
    path: &Path,
) -> (NhpStatus, String) {
    let mut net = std::ptr::dangling_mut::<NhpNetwork>();
    let st = unsafe { f(c(path).as_ptr(), &mut net) };
    assert!(net.is_null(), "a failed load must leave *out NULL");
    (st, last_error())
}

#[test]
fn load_errors_are_codes_with_messages_naming_the_file() {
    let d = dir("capi-load");
    let (weights, _) = fixtures(&d, 1, 32);
    let missing = d.join("missing.safetensors");
    let garbage = d.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file at all").unwrap();
    let unet = d.join("unet.safetensors");
    Network::init(Arch::Unet, 1).unwrap().save(&unet).unwrap();

    let mut out = null_mut();
    assert_eq!(unsafe { nhp_load(null(), &mut out) }, NhpStatus::ErrNull);
    assert!(last_error().contains("path"), "{}", last_error());
    assert_eq!(unsafe { nhp_load(c(&weights).as_ptr(), null_mut()) }, NhpStatus::ErrNull);
    assert!(last_error().contains("out"), "{}", last_error());

    for f in [nhp_load, nhp_load_denoiser, nhp_load_descriptor] {
        let (st, msg) = load_err(f, &missing);
        assert_eq!(st, NhpStatus::ErrIo, "{msg}");
        assert!(msg.contains("missing.safetensors"), "{msg}");
        let (st, msg) = load_err(f, &garbage);
        assert_eq!(st, NhpStatus::ErrFormat, "{msg}");
        assert!(msg.contains("garbage.safetensors"), "{msg}");
    }
    let (st, msg) = load_err(nhp_load_denoiser, &weights);
    assert!(st == NhpStatus::ErrFormat && msg.contains("not a denoiser"), "{st:?} {msg}");
    let (st, msg) = load_err(nhp_load_descriptor, &unet);
    assert!(st == NhpStatus::ErrFormat && msg.contains("not a HardNet descriptor"), "{st:?} {msg}");

    // Well-formed files with poisoned values: a NaN weight, a negative running variance.
    let poison = |name: &str, arch: Arch, tensor: &str, v: f32| {
        let mut file = Network::init(arch, 1).unwrap().to_file();
        file.tensors.get_mut(tensor).unwrap().data[1] = v;
        let p = d.join(name);
        nhpatch::weights::save(&p, &file).unwrap();
        p
    };
    let nan_unet = poison("nan-unet.safetensors", Arch::Unet, "conv2.weight", f32::NAN);
    let neg_var = poison("var-hardnet.safetensors", Arch::HardNetOriginal, "bn3.running_var", -1.0);
    for f in [nhp_load, nhp_load_denoiser] {
        let (st, msg) = load_err(f, &nan_unet);
        assert_eq!(st, NhpStatus::ErrFormat, "{msg}");
        assert!(msg.contains("nan-unet.safetensors") && msg.contains("'conv2.weight' holds 1 non-finite"), "{msg}");
    }
    for f in [nhp_load, nhp_load_descriptor] {
        let (st, msg) = load_err(f, &neg_var);
        assert_eq!(st, NhpStatus::ErrFormat, "{msg}");
        assert!(msg.contains("var-hardnet.safetensors") && msg.contains("'bn3.running_var' holds a negative"), "{msg}");
    }

    // Queries on NULL answer without crashing; freeing NULL is a no-op.
    unsafe {
        assert_eq!(nhp_is_denoiser(null()), -1);
        assert_eq!(nhp_output_len(null()), 0);
        assert_eq!(CStr::from_ptr(nhp_arch_name(null())).to_bytes(), b"");
        assert_eq!(nhp_set_threads(null_mut(), 1), NhpStatus::ErrNull);
        assert_eq!(nhp_release_workspaces(null_mut()), NhpStatus::ErrNull);
        nhp_free(null_mut());
        nhp_free_patches(null_mut(), 3);
        let version = CStr::from_ptr(nhp_version()).to_str().unwrap();
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
    }

    // Messages are per thread.
    assert_eq!(unsafe { nhp_load(null(), &mut out) }, NhpStatus::ErrNull);
    let here = last_error();
    std::thread::spawn(move || {
        assert_eq!(last_error(), "");
        load_err(nhp_load, &missing);
    })
    .join()
    .unwrap();
    assert_eq!(last_error(), here);
}

/// One inference call on an output buffer.
type Call<'a> = Box<dyn Fn(&mut [f32]) -> NhpStatus + 'a>;

#[test]
fn inference_checks_every_argument_before_touching_a_buffer() {
    let d = dir("capi-args");
    let (weights, _) = fixtures(&d, 1, 32);
    let unet = d.join("unet.safetensors");
    Network::init(Arch::Unet, 2).unwrap().save(&unet).unwrap();
    let hardnet = load(nhp_load, &weights);
    let denoiser = load(nhp_load, &unet);
    unsafe {
        assert_eq!((nhp_is_denoiser(hardnet), nhp_output_len(hardnet)), (0, DESC_LEN));
        assert_eq!((nhp_is_denoiser(denoiser), nhp_output_len(denoiser)), (1, PATCH_LEN));
        assert_eq!(CStr::from_ptr(nhp_arch_name(hardnet)).to_bytes(), b"hardnet-original");
    }
    let n = 2;
    let x = vec![100u8; n * PATCH_LEN];
    let xf = vec![100f32; n * PATCH_LEN];
    let mut out = vec![f32::NAN; n * DESC_LEN + 1];
    let sentinel = |out: &[f32]| out.iter().all(|v| v.is_nan());
    let cases: [(NhpStatus, &str, Call); 9] = unsafe {
        [
            (
                NhpStatus::ErrShape,
                "out_len",
                Box::new(|o| nhp_describe_u8(hardnet, x.as_ptr(), n, o.as_mut_ptr(), o.len())),
            ),
            (
                NhpStatus::ErrShape,
                "out_len",
                Box::new(|o| nhp_describe_f32(hardnet, xf.as_ptr(), n, o.as_mut_ptr(), n * DESC_LEN - 1)),
            ),
            (
                NhpStatus::ErrShape,
                "n_patches",
                Box::new(|o| nhp_describe_u8(hardnet, x.as_ptr(), usize::MAX / 4, o.as_mut_ptr(), o.len())),
            ),
            (
                NhpStatus::ErrNull,
                "net",
                Box::new(|o| nhp_describe_u8(null(), x.as_ptr(), n, o.as_mut_ptr(), n * DESC_LEN)),
            ),
            (
                NhpStatus::ErrNull,
                "patches",
                Box::new(|o| nhp_describe_u8(hardnet, null(), n, o.as_mut_ptr(), n * DESC_LEN)),
            ),
            (
                NhpStatus::ErrNull,
                "out",
                Box::new(|_| nhp_describe_f32(hardnet, xf.as_ptr(), n, null_mut(), n * DESC_LEN)),
            ),
            (
                NhpStatus::ErrInvalidArgument,
                "nhp_denoise_",
                Box::new(|o| nhp_describe_f32(denoiser, xf.as_ptr(), n, o.as_mut_ptr(), n * DESC_LEN)),
            ),
            (
                NhpStatus::ErrInvalidArgument,
                "nhp_describe_",
                Box::new(|o| nhp_denoise_f32(hardnet, xf.as_ptr(), n, o.as_mut_ptr(), n * DESC_LEN)),
            ),
            (
                NhpStatus::ErrInvalidArgument,
                "aligned",
                Box::new(|o| {
                    let bytes = vec![0u8; n * PATCH_LEN * 4 + 1];
                    let odd = bytes[1..].as_ptr().cast::<f32>();
                    nhp_describe_f32(hardnet, odd, n, o.as_mut_ptr(), n * DESC_LEN)
                }),
            ),
        ]
    };
    for (want, word, call) in &cases {
        let st = call(&mut out);
        let msg = last_error();
        assert_eq!(st, *want, "{msg}");
        assert!(msg.contains(word), "{want:?}: '{msg}' does not mention {word}");
        assert!(sentinel(&out), "{want:?}: the output was written");
    }
    unsafe {
        nhp_free(hardnet);
        nhp_free(denoiser);
    }
}

#[test]
fn u8_f32_in_place_and_pooled_paths_agree_with_the_library() {
    let d = dir("capi-agree");
    let (weights, strip) = fixtures(&d, 3, 40);
    let unet = d.join("unet.safetensors");
    Network::init(Arch::Unet, 5).unwrap().save(&unet).unwrap();
    let (hardnet, denoiser) = (load(nhp_load_descriptor, &weights), load(nhp_load_denoiser, &unet));

    let (mut ptr, mut n) = (null_mut(), 0usize);
    assert_eq!(unsafe { nhp_read_strip(c(&strip).as_ptr(), &mut ptr, &mut n) }, NhpStatus::Ok, "{}", last_error());
    // SAFETY (test): nhp_read_strip returned n patches of 1024 bytes at ptr.
    let x: Vec<u8> = unsafe { std::slice::from_raw_parts(ptr, n * PATCH_LEN) }.to_vec();
    unsafe { nhp_free_patches(ptr, n) };
    assert_eq!(x, nhpatch::io::png::read_strip(&strip).unwrap().patches);
    let xf: Vec<f32> = x.iter().map(|&v| f32::from(v)).collect();

    let want_desc = Network::load(&weights, LoadOptions::default()).unwrap().describe(&xf).unwrap();
    let mut want_clean = Network::load(&unet, LoadOptions::default()).unwrap().denoise(&xf).unwrap();
    let mut d_u8 = vec![0f32; n * DESC_LEN];
    let mut d_f32 = vec![0f32; n * DESC_LEN];
    let mut clean = vec![0f32; n * PATCH_LEN];
    let mut clean_u8 = vec![0u8; n * PATCH_LEN];
    let mut in_place = xf.clone();
    unsafe {
        assert_eq!(nhp_describe_u8(hardnet, x.as_ptr(), n, d_u8.as_mut_ptr(), d_u8.len()), NhpStatus::Ok);
        assert_eq!(nhp_describe_f32(hardnet, xf.as_ptr(), n, d_f32.as_mut_ptr(), d_f32.len()), NhpStatus::Ok);
        assert_eq!(nhp_denoise_f32(denoiser, xf.as_ptr(), n, clean.as_mut_ptr(), clean.len()), NhpStatus::Ok);
        assert_eq!(nhp_denoise_u8(denoiser, x.as_ptr(), n, clean_u8.as_mut_ptr(), clean_u8.len()), NhpStatus::Ok);
        let p = in_place.as_mut_ptr();
        assert_eq!(nhp_denoise_f32(denoiser, p, n, p, n * PATCH_LEN), NhpStatus::Ok);
        // An empty batch is a valid call that writes nothing.
        assert_eq!(nhp_describe_u8(hardnet, x.as_ptr(), 0, d_u8.as_mut_ptr(), 0), NhpStatus::Ok);
    }
    assert_eq!(d_u8, want_desc);
    assert_eq!(d_f32, want_desc);
    assert_eq!(clean, want_clean);
    assert_eq!(in_place, want_clean);
    to_pixels(&mut want_clean);
    assert_eq!(clean_u8.iter().map(|&v| f32::from(v)).collect::<Vec<_>>(), want_clean);

    // Own pools and concurrent callers give the same bits.
    assert_eq!(unsafe { nhp_set_threads(hardnet, 1) }, NhpStatus::Ok);
    let shared = hardnet as usize;
    let results: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let x = &x;
                s.spawn(move || {
                    let net = shared as *const NhpNetwork;
                    if i == 2 {
                        assert_eq!(unsafe { nhp_set_threads(net as *mut _, 2) }, NhpStatus::Ok);
                    }
                    if i == 3 {
                        assert_eq!(unsafe { nhp_release_workspaces(net as *mut _) }, NhpStatus::Ok);
                    }
                    let mut out = vec![0f32; n * DESC_LEN];
                    let st = unsafe { nhp_describe_u8(net, x.as_ptr(), n, out.as_mut_ptr(), out.len()) };
                    assert_eq!(st, NhpStatus::Ok);
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(r, want_desc);
    }

    // Strip errors leave the outputs cleared.
    let (mut ptr, mut n) = (std::ptr::dangling_mut::<u8>(), 7usize);
    let st = unsafe { nhp_read_strip(c(&d.join("none.png")).as_ptr(), &mut ptr, &mut n) };
    assert!(st == NhpStatus::ErrIo && ptr.is_null() && n == 0, "{st:?}");
    assert!(last_error().contains("none.png"));
    let st = unsafe { nhp_read_strip(c(&weights).as_ptr(), &mut ptr, &mut n) };
    assert!(st == NhpStatus::ErrFormat && last_error().contains("hardnet.safetensors"), "{}", last_error());
    assert_eq!(unsafe { nhp_read_strip(c(&strip).as_ptr(), null_mut(), &mut n) }, NhpStatus::ErrNull);
    unsafe {
        nhp_free(hardnet);
        nhp_free(denoiser);
    }
}

/// `nhp_set_device`: the CPU always; CUDA refused with its reason where this
/// build or machine cannot serve it; with the `cuda` feature the emulator of
/// the CUDA path gives the CPU's descriptors within float rounding.
#[test]
fn set_device_picks_where_inference_runs() {
    let d = dir("capi-device");
    let weights = d.join("hardnet.safetensors");
    Network::init(Arch::HardNetOriginal, 4).unwrap().save(&weights).unwrap();
    let net = load(nhp_load_descriptor, &weights);
    let set = |name: &str| unsafe { nhp_set_device(net, c(Path::new(name)).as_ptr()) };
    unsafe {
        assert_eq!(nhp_set_device(null_mut(), c(Path::new("cpu")).as_ptr()), NhpStatus::ErrNull);
        assert_eq!(nhp_set_device(net, null()), NhpStatus::ErrNull);
    }
    assert_eq!(set("cpu"), NhpStatus::Ok, "{}", last_error());
    assert_eq!(set("tpu"), NhpStatus::ErrInvalidArgument);
    assert!(last_error().contains("unknown device 'tpu'"), "{}", last_error());
    let gpu_here = cfg!(feature = "cuda") && {
        #[cfg(feature = "cuda")]
        {
            nhpatch::gpu::backend::device_count() > 0
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    };
    if !gpu_here {
        assert_eq!(set("cuda:0"), NhpStatus::ErrUnsupported);
        let why = if cfg!(feature = "cuda") { "no CUDA driver found" } else { "built without CUDA support" };
        assert!(last_error().contains(why), "{}", last_error());
    }
    if cfg!(feature = "cuda") {
        let x: Vec<f32> = (0..5 * PATCH_LEN).map(|i| ((i * 13) % 256) as f32).collect();
        let want = Network::load(&weights, LoadOptions::default()).unwrap().describe(&x).unwrap();
        assert_eq!(set("emu"), NhpStatus::Ok, "{}", last_error());
        let mut got = vec![f32::NAN; want.len()];
        let st = unsafe { nhp_describe_f32(net, x.as_ptr(), 5, got.as_mut_ptr(), got.len()) };
        assert_eq!(st, NhpStatus::Ok, "{}", last_error());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} on the emulator, {w} on the CPU");
        }
    }
    unsafe { nhp_free(net) };
}

/// `nhp_set_precision`: int8 with the weights file's calibration gives the
/// library's int8 descriptors bit for bit; f32 returns to f32; unknown and
/// unimplemented names and NULLs are refused with their reason.
#[test]
fn set_precision_switches_the_arithmetic() {
    let d = dir("capi-precision");
    let weights = d.join("hardnet.safetensors");
    let x: Vec<f32> = (0..7 * PATCH_LEN).map(|i| ((i * 29) % 256) as f32).collect();
    let mut lib = Network::init(Arch::HardNetOriginal, 6).unwrap();
    lib.calibrate(&x).unwrap();
    lib.save(&weights).unwrap();
    let want_f32 = lib.describe(&x).unwrap();
    lib.set_precision(nhpatch::Precision::Int8).unwrap();
    let want_int8 = lib.describe(&x).unwrap();
    lib.set_precision(nhpatch::Precision::Bf16).unwrap();
    let want_bf16 = lib.describe(&x).unwrap();
    let net = load(nhp_load_descriptor, &weights);
    let set = |name: &str| unsafe { nhp_set_precision(net, c(Path::new(name)).as_ptr()) };
    let describe = || {
        let mut out = vec![f32::NAN; 7 * 128];
        // SAFETY: the live handle and buffers of the lengths passed.
        assert_eq!(unsafe { nhp_describe_f32(net, x.as_ptr(), 7, out.as_mut_ptr(), out.len()) }, NhpStatus::Ok);
        out
    };
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(set("int8"), NhpStatus::Ok, "{}", last_error());
    assert_eq!(bits(&describe()), bits(&want_int8));
    assert_eq!(set("f32"), NhpStatus::Ok);
    assert_eq!(bits(&describe()), bits(&want_f32));
    assert_eq!(set("bf16"), NhpStatus::Ok, "{}", last_error());
    assert_eq!(bits(&describe()), bits(&want_bf16));
    assert_ne!(bits(&want_bf16), bits(&want_f32));
    assert_eq!(set("int4"), NhpStatus::ErrInvalidArgument);
    assert!(last_error().contains("int4"), "{}", last_error());
    unsafe {
        assert_eq!(nhp_set_precision(null_mut(), c(Path::new("f32")).as_ptr()), NhpStatus::ErrNull);
        assert_eq!(nhp_set_precision(net, null()), NhpStatus::ErrNull);
        nhp_free(net);
    }
}
