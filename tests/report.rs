//! The run report: patch montages, the curves SVG, results.md and the epoch log line.

use nhpatch::io::png::read_gray;
use nhpatch::train::metrics::{EpochMetrics, MapScores};
use nhpatch::train::report::{
    ResultsDoc, curves_svg, print_epoch_line, write_curves_svg, write_montage, write_results_md,
};
use std::fs;
use std::path::PathBuf;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nhpatch-report-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Patch `k` has pixel (y, x) = (k * 37 + y * 5 + x * 3) mod 256: distinct per patch and position.
fn patch(k: usize) -> Vec<u8> {
    (0..1024).map(|i| ((k * 37 + (i / 32) * 5 + (i % 32) * 3) % 256) as u8).collect()
}

fn epoch(e: u64, loss: f64, val: Option<f64>, map: Option<(f64, f64, f64)>) -> EpochMetrics {
    EpochMetrics {
        epoch: e,
        train_loss: loss,
        val_loss: val,
        map: map.map(|(v, m, r)| MapScores { verification: v, matching: m, retrieval: r }),
        seconds: 9.84,
        items_per_second: 812.4,
    }
}

fn check_grid(scale: usize) {
    let dir = tmp_dir(&format!("grid{scale}"));
    let patches: Vec<Vec<u8>> = (0..6).map(patch).collect();
    let rows: Vec<Vec<&[u8]>> = (0..2).map(|r| (0..3).map(|c| patches[r * 3 + c].as_slice()).collect()).collect();
    let path = dir.join("m.png");
    write_montage(&path, &rows, scale).unwrap();
    let img = read_gray(&path).unwrap();
    let side = 32 * scale;
    assert_eq!(img.width, 2 + 3 * (side + 2));
    assert_eq!(img.height, 2 + 2 * (side + 2));
    let mut expect = vec![128u8; img.width * img.height];
    for r in 0..2 {
        for c in 0..3 {
            for y in 0..side {
                for x in 0..side {
                    let (iy, ix) = (2 + r * (side + 2) + y, 2 + c * (side + 2) + x);
                    expect[iy * img.width + ix] = patches[r * 3 + c][(y / scale) * 32 + x / scale];
                }
            }
        }
    }
    assert_eq!(img.pixels, expect);
    // Spot checks independent of the loop above: the corner gap, and patch (1, 2)'s first pixel.
    assert_eq!(img.pixels[0], 128);
    let (y, x) = (2 + side + 2, 2 + 2 * (side + 2));
    assert_eq!(img.pixels[y * img.width + x], patches[5][0]);
    assert_eq!(img.pixels[y * img.width + x - 1], 128);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn montage_2x3_scale_1_layout() {
    check_grid(1);
}

#[test]
fn montage_2x3_scale_2_layout() {
    check_grid(2);
}

#[test]
fn montage_rejects_bad_input() {
    let dir = tmp_dir("bad");
    let path = dir.join("m.png");
    let good = patch(0);
    let short = vec![0u8; 1000];
    assert!(write_montage(&path, &[vec![good.as_slice(), short.as_slice()]], 1).is_err(), "1000-byte patch");
    assert!(
        write_montage(&path, &[vec![good.as_slice(), good.as_slice()], vec![good.as_slice()]], 1).is_err(),
        "ragged"
    );
    assert!(write_montage(&path, &[vec![good.as_slice()]], 0).is_err(), "scale 0");
    assert!(write_montage(&path, &[vec![good.as_slice()]], 9).is_err(), "scale 9");
    assert!(write_montage(&path, &[], 1).is_err(), "no rows");
    assert!(write_montage(&path, &[vec![]], 1).is_err(), "empty row");
    assert!(!path.exists());
    assert!(write_montage(&path, &[vec![good.as_slice()]], 8).is_ok());
    assert_eq!(read_gray(&path).unwrap().width, 2 + 256 + 2);
    fs::remove_dir_all(&dir).unwrap();
}

/// Checks that every element we open is closed, in order, and returns the element names seen.
fn check_balanced(svg: &str) -> Vec<String> {
    let mut stack: Vec<String> = vec![];
    let mut seen = vec![];
    let mut rest = svg;
    while let Some(i) = rest.find('<') {
        let end = rest[i..].find('>').expect("unterminated tag") + i;
        let tag = &rest[i + 1..end];
        rest = &rest[end + 1..];
        assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
        if tag.starts_with('?') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched close tag");
            continue;
        }
        let name = tag.split_whitespace().next().unwrap().trim_end_matches('/').to_string();
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
        seen.push(name.clone());
        if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    assert_eq!(seen.first().map(String::as_str), Some("svg"));
    seen
}

/// Every number in coordinate attributes parses as a finite f64.
fn check_coordinates(svg: &str) {
    for attr in ["x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "points"] {
        let key = format!(" {attr}=\"");
        for piece in svg.split(&key).skip(1) {
            let value = &piece[..piece.find('"').unwrap()];
            for n in value.split([' ', ',']).filter(|t| !t.is_empty()) {
                let v: f64 = n.parse().unwrap_or_else(|_| panic!("{attr}={value:?} is not numeric"));
                assert!(v.is_finite(), "{attr}={value}");
            }
        }
    }
}

fn series_count(svg: &str) -> usize {
    svg.matches("<g class=\"series\"").count()
}

#[test]
fn curves_svg_full_run() {
    let den: Vec<_> = (1..=10).map(|e| epoch(e, 20.0 - e as f64, Some(19.5 - e as f64), None)).collect();
    let desc: Vec<_> = (1..=10)
        .map(|e| epoch(e, 1.0 / e as f64, Some(1.1 / e as f64), Some((0.7, 0.1 + 0.01 * e as f64, 0.4))))
        .collect();
    let dir = tmp_dir("svg");
    let path = dir.join("curves.svg");
    write_curves_svg(&path, &den, &desc).unwrap();
    let svg = fs::read_to_string(&path).unwrap();
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
    check_balanced(&svg);
    check_coordinates(&svg);
    assert_eq!(svg.matches("<g class=\"panel\"").count(), 3);
    for label in ["training loss", "validation loss", "verification", "matching", "retrieval", "epoch", "mAP"] {
        assert!(svg.contains(&format!(">{label}</text>")), "legend or axis label {label}");
    }
    for title in ["Denoiser loss", "Descriptor loss", "HPatches mAP"] {
        assert!(svg.contains(title));
    }
    assert_eq!(series_count(&svg), 7, "2 + 2 loss series, 3 mAP series");
    assert_eq!(svg.matches("<polyline").count(), 7);
    assert_eq!(svg.matches("<circle").count(), 7 * 10 + 7, "a marker per point plus one per legend entry");
    assert!(!svg.contains("no data"));
    // Round tick labels on the epoch axis and the mAP axis.
    assert!(svg.contains(">10</text>") && svg.contains(">0.2</text>") && svg.contains(">1.0</text>"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn curves_svg_empty_single_and_nan() {
    let svg = curves_svg(&[], &[]);
    check_balanced(&svg);
    assert_eq!(svg.matches("<g class=\"panel\"").count(), 3);
    assert_eq!(svg.matches("no data").count(), 3);
    assert_eq!(series_count(&svg), 0);

    // One epoch: markers without lines; no validation loss, no mAP.
    let svg = curves_svg(&[epoch(1, 12.3, None, None)], &[epoch(1, 0.8, None, None)]);
    check_balanced(&svg);
    check_coordinates(&svg);
    assert_eq!(series_count(&svg), 2);
    assert_eq!(svg.matches("<polyline").count(), 0);
    assert_eq!(svg.matches("<circle").count(), 2 + 2);
    assert_eq!(svg.matches("no data").count(), 1, "the mAP panel");
    assert!(!svg.contains(">validation loss</text>"));

    // NaN and infinity are skipped and break the line.
    let den = vec![
        epoch(1, 5.0, Some(f64::NAN), None),
        epoch(2, f64::NAN, Some(4.0), None),
        epoch(3, 3.0, Some(f64::INFINITY), None),
        epoch(4, 2.0, Some(2.5), None),
    ];
    let desc = vec![epoch(1, 1.0, None, Some((f64::NAN, 0.1, 0.2))), epoch(2, 0.9, None, Some((0.5, 0.2, 0.3)))];
    let svg = curves_svg(&den, &desc);
    check_balanced(&svg);
    check_coordinates(&svg);
    assert!(!svg.to_lowercase().contains("nan") && !svg.contains("inf"));
    // Denoiser: train {1}, {3,4} -> one polyline; val {2}, {4} -> none. Descriptor: train one line.
    // mAP: verification {2} only, matching and retrieval lines.
    assert_eq!(series_count(&svg), 2 + 1 + 3);
    assert_eq!(svg.matches("<polyline").count(), 1 + 1 + 2);
}

fn doc_fixture<'a>(den: &'a [EpochMetrics], desc: &'a [EpochMetrics]) -> ResultsDoc<'a> {
    ResultsDoc {
        title: "N-HPatches baseline",
        config_json: "{\n  \"epochs\": 2,\n  \"denoiser\": \"unet\"\n}",
        final_map: Some(MapScores { verification: 0.8149, matching: 0.2151, retrieval: 0.506 }),
        validation: "2 of the split's training sequences held out (v_a, i_b)",
        eval_tables: "task  mAP\nverification 0.8149",
        denoiser: den,
        descriptor: desc,
        descriptor_note: "Epochs 1-1 trained the clean-patch teacher",
        images: &[
            ("denoise.png", "Noisy, denoised and clean patches"),
            ("curves.svg", "mAP and losses against epochs"),
        ],
        timings: &[("denoiser", 12.25), ("descriptor", 30.0)],
    }
}

#[test]
fn results_md_contents() {
    let den = [epoch(1, 12.3456, Some(11.98765), None), epoch(2, 10.5, None, None)];
    let desc = [epoch(1, 0.91, Some(0.95), Some((0.69, 0.1, 0.34))), epoch(2, 0.8, Some(0.85), None)];
    let dir = tmp_dir("md");
    let path = dir.join("results.md");
    write_results_md(&path, &doc_fixture(&den, &desc)).unwrap();
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
    let md = fs::read_to_string(&path).unwrap();
    assert!(md.starts_with("# N-HPatches baseline\n"));
    assert!(md.contains(
        "| Verification | Matching | Retrieval | Mean |\n|---:|---:|---:|---:|\n| 0.81 | 0.22 | 0.51 | 0.51 |\n"
    ));
    assert!(md.contains("```\ntask  mAP\nverification 0.8149\n```"));
    assert!(md.contains("| 1 | 12.3456 | 11.9877 | 9.8 | 812 |\n| 2 | 10.5000 | - | 9.8 | 812 |\n"));
    assert!(md.contains("## Descriptor training\n\nEpochs 1-1 trained the clean-patch teacher\n\n|"));
    assert!(md.contains("| 1 | 0.9100 | 0.9500 | 9.8 | 812 | 0.69 | 0.10 | 0.34 |\n"));
    assert!(md.contains("| 2 | 0.8000 | 0.8500 | 9.8 | 812 | - | - | - |\n"));
    assert!(md.contains("![Noisy, denoised and clean patches](<denoise.png>)"));
    assert!(md.contains("*Figure 2: mAP and losses against epochs*"));
    assert!(md.contains("| denoiser | 12.2 |") || md.contains("| denoiser | 12.3 |"));
    assert!(md.contains("| **total** | **42.2** |") || md.contains("| **total** | **42.3** |"));
    assert!(md.contains("```json\n{\n  \"epochs\": 2,\n  \"denoiser\": \"unet\"\n}\n```\n"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn results_md_without_evaluation_or_epochs() {
    let mut doc = doc_fixture(&[], &[]);
    doc.final_map = None;
    doc.eval_tables = "";
    doc.config_json = "{\"note\": \"```\"}";
    doc.descriptor_note = " ";
    let dir = tmp_dir("md-empty");
    let path = dir.join("results.md");
    write_results_md(&path, &doc).unwrap();
    let md = fs::read_to_string(&path).unwrap();
    assert!(!md.contains("| Verification |"));
    assert!(md.contains("No final evaluation was run."));
    assert_eq!(md.matches("No epochs recorded.").count(), 2);
    assert!(md.contains("## Descriptor training\n\nNo epochs recorded."), "a blank note adds nothing");
    assert!(md.contains("````json\n{\"note\": \"```\"}\n````"), "the fence outgrows backticks inside");
    assert!(write_results_md(&dir.join("missing/results.md"), &doc).is_err());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn epoch_line_format() {
    let m = epoch(3, 12.34561, Some(11.98764), None);
    assert_eq!(
        print_epoch_line("denoiser", "patches", &m, 10),
        "denoiser epoch 3/10  loss 12.3456  val 11.9876  812 patches/s  9.8 s"
    );
    let m = epoch(30, 0.5, None, Some((0.814, 0.2249, 0.51)));
    assert_eq!(
        print_epoch_line("descriptor", "triplets", &m, 30),
        "descriptor epoch 30/30  loss 0.5000  812 triplets/s  9.8 s  mAP v 0.81 m 0.22 r 0.51"
    );
}

#[test]
fn curves_svg_tick_labels_tell_ticks_apart() {
    for (base, delta) in [(17.5, 1e-8), (2e7, 3e6), (1.2e-4, 1e-5), (-0.3, 0.1)] {
        let den: Vec<_> = (1..=5).map(|e| epoch(e, base + e as f64 * delta, None, None)).collect();
        let svg = curves_svg(&den, &[]);
        check_balanced(&svg);
        check_coordinates(&svg);
        // Y tick labels are the right-aligned texts of the first panel.
        let first = &svg[..svg.find("</g>").unwrap()];
        let labels: Vec<&str> =
            first.split("text-anchor=\"end\">").skip(1).map(|t| &t[..t.find('<').unwrap()]).collect();
        assert!(labels.len() >= 3, "{base}: {labels:?}");
        let mut unique = labels.clone();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "{base}: labels repeat: {labels:?}");
        assert!(labels.iter().all(|l| l.parse::<f64>().is_ok()), "{labels:?}");
    }
}
