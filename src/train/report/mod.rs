//! The run report: what a person looks at after `nhpatch run`.
//!
//! - `denoise.png`, `triplets.png`: patch montages ([`write_montage`]);
//! - `curves.svg`: losses and mAP against epochs ([`write_curves_svg`]);
//! - `results.md`: headline mAP table, the evaluator's tables, per-epoch
//!   tables, figures, stage timings and the configuration ([`write_results_md`]);
//! - one log line per epoch when stdout is not a terminal ([`print_epoch_line`]).
//!
//! Every file is written atomically.

mod montage;
mod svg;

pub use montage::{BACKGROUND, GAP, MAX_SCALE, montage, write_montage};
pub use svg::{curves_svg, write_curves_svg};

use super::metrics::{EpochMetrics, MapScores};
use crate::error::Result;
use crate::io::{io_err, write_atomic};
use std::fmt::Write as _;
use std::path::Path;

/// Everything `results.md` shows.
#[derive(Clone, Copy, Debug)]
pub struct ResultsDoc<'a> {
    pub title: &'a str,
    /// The run's configuration, already serialised as JSON.
    pub config_json: &'a str,
    /// mAP of the final evaluation, if one ran.
    pub final_map: Option<MapScores>,
    /// Which sequences validated each epoch (held out of the training
    /// sequences); empty when the run had none.
    pub validation: &'a str,
    /// Preformatted text from the evaluator (per-task tables).
    pub eval_tables: &'a str,
    pub denoiser: &'a [EpochMetrics],
    pub descriptor: &'a [EpochMetrics],
    /// A line above the descriptor's epochs (what trained them), or empty.
    pub descriptor_note: &'a str,
    /// (file name relative to `results.md`, caption).
    pub images: &'a [(&'a str, &'a str)],
    /// (stage, seconds).
    pub timings: &'a [(&'a str, f64)],
}

/// Writes `results.md` (atomically).
pub fn write_results_md(path: &Path, doc: &ResultsDoc) -> Result<()> {
    let md = results_md(doc);
    write_atomic(path, |w| w.write_all(md.as_bytes()).map_err(|e| io_err(path, e)))
}

/// The Markdown text written by `write_results_md`.
pub fn results_md(doc: &ResultsDoc) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {}\n", one_line(doc.title));

    s.push_str("## Results\n\n");
    match doc.final_map {
        Some(m) => {
            s.push_str("| Verification | Matching | Retrieval | Mean |\n|---:|---:|---:|---:|\n");
            let cells = [m.verification, m.matching, m.retrieval, m.mean()].map(fixed2);
            let _ = writeln!(s, "| {} |\n", cells.join(" | "));
            s.push_str("mAP on the test sequences, scored once after training.\n\n");
        }
        None => s.push_str("No final evaluation was run.\n\n"),
    }
    if !doc.validation.trim().is_empty() {
        s.push_str("### Validation\n\n");
        let _ = writeln!(s, "{}\n", one_line(doc.validation));
        if let Some(m) = doc.descriptor.iter().rev().find_map(|e| e.map) {
            s.push_str("| Verification | Matching | Retrieval | Mean |\n|---:|---:|---:|---:|\n");
            let cells = [m.verification, m.matching, m.retrieval, m.mean()].map(fixed2);
            let _ = writeln!(s, "| {} |\n", cells.join(" | "));
            s.push_str("mAP on the validation sequences after the last descriptor epoch that scored them.\n\n");
        }
    }
    if !doc.eval_tables.trim().is_empty() {
        s.push_str("### Evaluation details\n\n");
        fenced(&mut s, "", doc.eval_tables);
    }

    s.push_str("## Denoiser training\n\n");
    epoch_table(&mut s, doc.denoiser, false);
    s.push_str("## Descriptor training\n\n");
    if !doc.descriptor_note.trim().is_empty() {
        let _ = writeln!(s, "{}\n", one_line(doc.descriptor_note));
    }
    epoch_table(&mut s, doc.descriptor, true);

    if !doc.images.is_empty() {
        s.push_str("## Figures\n\n");
        for (i, (file, caption)) in doc.images.iter().enumerate() {
            let caption = one_line(caption);
            let alt = caption.replace('[', "\\[").replace(']', "\\]");
            let _ = writeln!(s, "![{alt}](<{}>)\n", file.replace(['<', '>'], ""));
            let _ = writeln!(s, "*Figure {}: {caption}*\n", i + 1);
        }
    }

    if !doc.timings.is_empty() {
        s.push_str("## Timings\n\n| Stage | Seconds |\n|---|---:|\n");
        for (stage, secs) in doc.timings {
            let _ = writeln!(s, "| {} | {secs:.1} |", cell(stage));
        }
        let total: f64 = doc.timings.iter().map(|t| t.1).sum();
        let _ = writeln!(s, "| **total** | **{total:.1}** |\n");
    }

    s.push_str("## Configuration\n\n");
    fenced(&mut s, "json", doc.config_json);
    s
}

/// Per-epoch table; `with_map` adds the three mAP columns.
fn epoch_table(s: &mut String, epochs: &[EpochMetrics], with_map: bool) {
    if epochs.is_empty() {
        s.push_str("No epochs recorded.\n\n");
        return;
    }
    s.push_str("| Epoch | Train loss | Val loss | Time (s) | Items/s |");
    if with_map {
        s.push_str(" mAP verification | mAP matching | mAP retrieval |");
    }
    s.push_str("\n|---:|---:|---:|---:|---:|");
    if with_map {
        s.push_str("---:|---:|---:|");
    }
    s.push('\n');
    for m in epochs {
        let val = m.val_loss.map_or_else(|| "-".to_string(), num);
        let _ =
            write!(s, "| {} | {} | {val} | {:.1} | {:.0} |", m.epoch, num(m.train_loss), m.seconds, m.items_per_second);
        if with_map {
            match m.map {
                Some(p) => {
                    let _ =
                        write!(s, " {} | {} | {} |", fixed2(p.verification), fixed2(p.matching), fixed2(p.retrieval));
                }
                None => s.push_str(" - | - | - |"),
            }
        }
        s.push('\n');
    }
    s.push('\n');
}

/// A fenced code block whose fence is longer than any backtick run inside.
fn fenced(s: &mut String, lang: &str, body: &str) {
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let _ = writeln!(s, "{fence}{lang}\n{}\n{fence}\n", body.trim_end());
}

/// Two decimals, "n/a" for a non-finite value.
fn fixed2(v: f64) -> String {
    if v.is_finite() { format!("{v:.2}") } else { "n/a".into() }
}

/// A loss: four decimals in the usual range, scientific notation outside it.
fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    }
}

fn one_line(t: &str) -> String {
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text safe inside a table cell.
fn cell(t: &str) -> String {
    one_line(t).replace('|', "\\|")
}

/// One log line for a finished epoch, e.g.
/// `denoiser epoch 3/10  loss 12.3456  val 11.9876  812 patches/s  9.8 s  mAP v 0.81 m 0.22 r 0.51`.
/// `unit` names the items (patches, triplets, pairs). The validation loss and the mAP appear only when measured.
pub fn print_epoch_line(stage: &str, unit: &str, m: &EpochMetrics, epochs: u64) -> String {
    let mut s = format!("{stage} epoch {}/{epochs}  loss {}", m.epoch, num(m.train_loss));
    if let Some(v) = m.val_loss {
        let _ = write!(s, "  val {}", num(v));
    }
    let _ = write!(s, "  {:.0} {unit}/s  {:.1} s", m.items_per_second, m.seconds);
    if let Some(p) = m.map {
        let _ = write!(s, "  mAP v {} m {} r {}", fixed2(p.verification), fixed2(p.matching), fixed2(p.retrieval));
    }
    s
}
