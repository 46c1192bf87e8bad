//! Training curves as a self-contained SVG, written by hand: three panels
//! side by side, (a) denoiser losses, (b) descriptor losses, (c) HPatches mAP,
//! each against the epoch.

use super::super::metrics::EpochMetrics;
use crate::error::Result;
use crate::io::{io_err, write_atomic};
use std::fmt::Write as _;
use std::path::Path;

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 350.0;
const PLOT_LEFT: f64 = 70.0;
const PLOT_RIGHT: f64 = 420.0;
const PLOT_TOP: f64 = 40.0;
const PLOT_BOTTOM: f64 = 260.0;
/// Values beyond this magnitude are not drawn (their spans would overflow).
const MAX_ABS: f64 = 1e100;

/// One line of a panel: a value per epoch, `None` where not measured.
struct Series {
    label: &'static str,
    colour: &'static str,
    points: Vec<(f64, Option<f64>)>,
}

impl Series {
    fn new(
        label: &'static str,
        colour: &'static str,
        m: &[EpochMetrics],
        f: impl Fn(&EpochMetrics) -> Option<f64>,
    ) -> Self {
        Series { label, colour, points: m.iter().map(|e| (e.epoch as f64, f(e))).collect() }
    }

    /// Runs of consecutive drawable points; a missing or non-finite value breaks the line.
    fn runs(&self) -> Vec<Vec<(f64, f64)>> {
        let mut runs = vec![];
        let mut cur = vec![];
        for &(x, y) in &self.points {
            match y {
                Some(y) if drawable(x) && drawable(y) => cur.push((x, y)),
                _ if !cur.is_empty() => runs.push(std::mem::take(&mut cur)),
                _ => {}
            }
        }
        if !cur.is_empty() {
            runs.push(cur);
        }
        runs
    }
}

fn drawable(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_ABS
}

struct Panel {
    title: &'static str,
    y_title: &'static str,
    /// Range the y axis always covers (mAP: 0..1), widened by the data.
    y_span: Option<(f64, f64)>,
    series: Vec<Series>,
}

/// Writes the training curves of both networks to `path` (atomically).
pub fn write_curves_svg(path: &Path, denoiser: &[EpochMetrics], descriptor: &[EpochMetrics]) -> Result<()> {
    let svg = curves_svg(denoiser, descriptor);
    write_atomic(path, |w| w.write_all(svg.as_bytes()).map_err(|e| io_err(path, e)))
}

/// The SVG document drawn by `write_curves_svg`.
pub fn curves_svg(denoiser: &[EpochMetrics], descriptor: &[EpochMetrics]) -> String {
    let losses = |m: &[EpochMetrics]| {
        vec![
            Series::new("training loss", "#1f77b4", m, |e| Some(e.train_loss)),
            Series::new("validation loss", "#d62728", m, |e| e.val_loss),
        ]
    };
    let panels = [
        Panel { title: "(a) Denoiser loss", y_title: "loss", y_span: None, series: losses(denoiser) },
        Panel { title: "(b) Descriptor loss", y_title: "loss", y_span: None, series: losses(descriptor) },
        Panel {
            title: "(c) HPatches mAP",
            y_title: "mAP",
            y_span: Some((0.0, 1.0)),
            series: vec![
                Series::new("verification", "#2ca02c", descriptor, |e| e.map.map(|m| m.verification)),
                Series::new("matching", "#ff7f0e", descriptor, |e| e.map.map(|m| m.matching)),
                Series::new("retrieval", "#9467bd", descriptor, |e| e.map.map(|m| m.retrieval)),
            ],
        },
    ];
    let width = PANEL_W * panels.len() as f64;
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" viewBox="0 0 {width} {PANEL_H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{width}" height="{PANEL_H}" fill="white"/>"#);
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut s, p, i as f64 * PANEL_W);
    }
    s.push_str("</svg>\n");
    s
}

fn draw_panel(s: &mut String, p: &Panel, dx: f64) {
    let _ = writeln!(s, r#"<g class="panel" transform="translate({dx} 0)">"#);
    let mid = (PLOT_LEFT + PLOT_RIGHT) / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="{mid}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        p.title
    );
    let _ = writeln!(
        s,
        r##"<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        PLOT_RIGHT - PLOT_LEFT,
        PLOT_BOTTOM - PLOT_TOP
    );
    let runs: Vec<Vec<Vec<(f64, f64)>>> = p.series.iter().map(Series::runs).collect();
    let all = || runs.iter().flatten().flatten();
    if all().next().is_none() {
        let y = (PLOT_TOP + PLOT_BOTTOM) / 2.0;
        let _ =
            writeln!(s, r##"<text x="{mid}" y="{y}" text-anchor="middle" font-size="14" fill="#777">no data</text>"##);
        s.push_str("</g>\n");
        return;
    }
    let (x_min, x_max) = min_max(all().map(|p| p.0));
    let (mut y_min, mut y_max) = min_max(all().map(|p| p.1));
    if let Some((lo, hi)) = p.y_span {
        y_min = y_min.min(lo);
        y_max = y_max.max(hi);
    }
    let xs = ticks(x_min, x_max, true);
    let ys = ticks(y_min, y_max, false);
    let (x0, x1) = (xs[0], xs[xs.len() - 1]);
    let (y0, y1) = (ys[0], ys[ys.len() - 1]);
    let px = |x: f64| PLOT_LEFT + (x - x0) / (x1 - x0) * (PLOT_RIGHT - PLOT_LEFT);
    let py = |y: f64| PLOT_BOTTOM - (y - y0) / (y1 - y0) * (PLOT_BOTTOM - PLOT_TOP);

    for (&t, text) in xs.iter().zip(labels(&xs)) {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{PLOT_BOTTOM}" x2="{x:.1}" y2="{}" stroke="#333"/>"##,
            PLOT_BOTTOM + 5.0
        );
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#, PLOT_BOTTOM + 18.0, text);
    }
    for (&t, text) in ys.iter().zip(labels(&ys)) {
        let y = py(t);
        let _ = writeln!(s, r##"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}" stroke="#e5e5e5"/>"##);
        let _ =
            writeln!(s, r##"<line x1="{}" y1="{y:.1}" x2="{PLOT_LEFT}" y2="{y:.1}" stroke="#333"/>"##, PLOT_LEFT - 5.0);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, PLOT_LEFT - 8.0, y + 4.0, text);
    }
    let _ =
        writeln!(s, r#"<text x="{mid}" y="{}" text-anchor="middle" font-size="13">epoch</text>"#, PLOT_BOTTOM + 38.0);
    let ym = (PLOT_TOP + PLOT_BOTTOM) / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="18" y="{ym}" text-anchor="middle" font-size="13" transform="rotate(-90 18 {ym})">{}</text>"#,
        p.y_title
    );

    let mut legend_x = PLOT_LEFT;
    let legend_y = PLOT_BOTTOM + 68.0;
    for (series, runs) in p.series.iter().zip(&runs) {
        if runs.is_empty() {
            continue;
        }
        let c = series.colour;
        let _ = writeln!(s, r#"<g class="series" data-label="{}" stroke="{c}" fill="{c}">"#, series.label);
        for run in runs.iter().filter(|r| r.len() > 1) {
            let pts: Vec<String> = run.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
            let _ = writeln!(s, r#"<polyline fill="none" stroke-width="2" points="{}"/>"#, pts.join(" "));
        }
        for &(x, y) in runs.iter().flatten() {
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3.5"/>"#, px(x), py(y));
        }
        s.push_str("</g>\n");
        let _ = writeln!(
            s,
            r#"<line x1="{legend_x}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{c}" stroke-width="2"/>"#,
            legend_x + 20.0
        );
        let _ = writeln!(s, r#"<circle cx="{}" cy="{legend_y}" r="3.5" fill="{c}"/>"#, legend_x + 10.0);
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, legend_x + 25.0, legend_y + 4.0, series.label);
        legend_x += 45.0 + 6.6 * series.label.len() as f64;
    }
    s.push_str("</g>\n");
}

fn min_max(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

/// Round tick values covering `lo..=hi` (about five intervals); the first
/// and last tick are the axis ends. `integer` keeps steps whole (epochs).
fn ticks(lo: f64, hi: f64, integer: bool) -> Vec<f64> {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        let pad = if integer { 1.0 } else { (lo.abs() * 0.1).max(1e-9) };
        (lo - pad, hi + pad)
    };
    let mut step = nice_step((hi - lo) / 5.0);
    if integer {
        step = step.max(1.0).round();
    }
    if !(step.is_finite() && step > 0.0) {
        return vec![lo, hi];
    }
    let first = (lo / step).floor();
    let count = ((hi / step).ceil() - first).clamp(1.0, 50.0) as usize;
    (0..=count).map(|i| (first + i as f64) * step).map(|t| if t == 0.0 { 0.0 } else { t }).collect()
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let base = 10f64.powf(raw.log10().floor());
    let f = raw / base;
    let m = [1.0, 2.0, 2.5, 5.0].into_iter().find(|&m| f <= m * (1.0 + 1e-9)).unwrap_or(10.0);
    m * base
}

/// Decimals that tell neighbouring ticks apart: the step's, e.g. 0.25 -> 2.
fn decimals(ticks: &[f64]) -> usize {
    let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
    (0..=12)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6 * scaled
        })
        .unwrap_or(12) as usize
}

/// Tick labels: fixed-point with the step's decimals, or scientific
/// notation (with enough digits to tell ticks apart) for huge or tiny values.
fn labels(ticks: &[f64]) -> Vec<String> {
    let dec = decimals(ticks);
    let big = ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    if big < 1e6 && dec <= 6 {
        return ticks.iter().map(|t| format!("{t:.dec$}")).collect();
    }
    let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { big };
    let digits = (big.log10().floor() - step.log10().floor()).clamp(0.0, 14.0) as usize + 1;
    ticks.iter().map(|&t| if t == 0.0 { "0".to_string() } else { format!("{t:.digits$e}") }).collect()
}
