//! The recipe comparison (`nhpatch compare`): trains each recipe with
//! several seeds at the demo budget ([`super::pipeline::run`], one run folder each), then
//! writes the table of mean +- standard deviation of the three mAPs, their
//! mean and the training time (`compare.md`, `compare.json`), and says
//! whether `joint` beats the best separate recipe on every task by more than
//! the seed-to-seed spread. Ranking and verdict use the validation sequences
//! (the test columns are reported only); with one seed there is no spread,
//! so the verdict lists the differences and concludes nothing.
//!
//! Finished runs are kept (`summary.json` beside each run's report), so an
//! interrupted comparison continues where it stopped.

use super::metrics::MapScores;
use super::pipeline::{RunConfig, RunSummary, run};
use super::progress::{Event, SharedObserver};
use super::recipe::Recipe;
use crate::error::{Error, Result};
use crate::io::{io_err, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What to compare.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    /// Dataset root (`None`: the embedded synthetic N-HPatches, as a run).
    pub dataset: Option<PathBuf>,
    /// Folder of the runs (`<recipe>/seed-<s>/`) and the table.
    pub out: PathBuf,
    pub recipes: Vec<Recipe>,
    /// Seeds of each recipe.
    pub seeds: Vec<u64>,
    /// Worker threads (0: all cores).
    pub threads: usize,
}

/// The table: one row per recipe, and the verdict on `joint` when it was compared.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub rows: Vec<Row>,
    /// `compare.md`'s text.
    pub markdown: String,
    pub markdown_path: PathBuf,
}

/// One finished run, as stored in its `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Finished {
    recipe: String,
    seed: u64,
    map: MapScores,
    /// Validation mAP (absent in summaries written before validation sequences existed).
    #[serde(default)]
    validation: Option<MapScores>,
    training_seconds: f64,
}

/// Mean and sample standard deviation.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Per recipe: (mean, std) of verification, matching, retrieval, their mean, training seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub recipe: String,
    pub seeds: Vec<u64>,
    /// On the test sequences, and training time.
    pub stats: [(f64, f64); 5],
    /// Mean of the three mAPs on the validation sequences, when every run has it: the ranking key.
    pub validation: Option<(f64, f64)>,
    /// Verification, matching and retrieval on the validation sequences, when every run has them.
    pub validation_tasks: Option<[(f64, f64); 3]>,
}

impl Row {
    /// What recipes are ranked on: the validation mean mAP, else (runs without validation) the test's.
    pub fn rank_key(&self) -> f64 {
        self.validation.map_or(self.stats[3].0, |v| v.0)
    }

    /// Verification, matching and retrieval on the test sequences.
    fn test_tasks(&self) -> [(f64, f64); 3] {
        [self.stats[0], self.stats[1], self.stats[2]]
    }
}

/// The columns of [`Row::stats`].
pub const COLUMNS: [&str; 5] = ["verification", "matching", "retrieval", "mean mAP", "training (s)"];

fn row(recipe: Recipe, runs: &[Finished]) -> Row {
    let over = |xs: &[MapScores], f: fn(&MapScores) -> f64| mean_std(&xs.iter().map(f).collect::<Vec<_>>());
    let tasks = |xs: &[MapScores]| [over(xs, |m| m.verification), over(xs, |m| m.matching), over(xs, |m| m.retrieval)];
    let test: Vec<MapScores> = runs.iter().map(|r| r.map).collect();
    let val: Option<Vec<MapScores>> =
        runs.iter().map(|r| r.validation).collect::<Option<Vec<_>>>().filter(|v| !v.is_empty());
    let [v, m, r] = tasks(&test);
    Row {
        validation: val.as_deref().map(|xs| over(xs, MapScores::mean)),
        validation_tasks: val.as_deref().map(tasks),
        recipe: recipe.name().into(),
        seeds: runs.iter().map(|r| r.seed).collect(),
        stats: [
            v,
            m,
            r,
            over(&test, MapScores::mean),
            mean_std(&runs.iter().map(|r| r.training_seconds).collect::<Vec<_>>()),
        ],
    }
}

/// `mean +- std` with `digits` decimals, or the bare mean for a single seed (no spread to show).
fn cell((m, sd): (f64, f64), digits: usize, seeds: usize) -> String {
    if seeds > 1 { format!("{m:.digits$} +- {sd:.digits$}") } else { format!("{m:.digits$}") }
}

/// Markdown table of the rows.
fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "| recipe | validation v / m / r | validation mean mAP | {} |\n|---|---|---|{}\n",
        COLUMNS.map(|c| if c.contains("training") { c.to_string() } else { format!("test {c}") }).join(" | "),
        "---|".repeat(COLUMNS.len())
    );
    for r in rows {
        let n = r.seeds.len();
        s += &format!("| {} |", r.recipe);
        s += &match r.validation_tasks {
            Some(t) => format!(" {:.3} / {:.3} / {:.3} |", t[0].0, t[1].0, t[2].0),
            None => " - |".to_string(),
        };
        s += &match r.validation {
            Some(v) => format!(" {} |", cell(v, 3, n)),
            None => " - |".to_string(),
        };
        for (i, &st) in r.stats.iter().enumerate() {
            s += &format!(" {} |", cell(st, if i == 4 { 0 } else { 3 }, n));
        }
        s.push('\n');
    }
    s
}

/// Whether `joint` beats the best separate recipe (chosen on the validation
/// mean mAP, `Row::rank_key`) on each task by more than the larger of the two
/// standard deviations, on the validation sequences when both rows have them
/// (else, for summaries older than validation sequences, on the test's).
fn verdict(rows: &[Row]) -> Option<String> {
    let joint = rows.iter().find(|r| r.recipe == Recipe::Joint.name())?;
    let best = rows
        .iter()
        .filter(|r| r.recipe != Recipe::Joint.name())
        .max_by(|a, b| a.rank_key().total_cmp(&b.rank_key()))?;
    let (jt, bt, on) = match (joint.validation_tasks, best.validation_tasks) {
        (Some(j), Some(b)) => (j, b, "validation"),
        _ => (joint.test_tasks(), best.test_tasks(), "test"),
    };
    let spread_known = joint.seeds.len() > 1 && best.seeds.len() > 1;
    let mut lines = Vec::new();
    let mut all = true;
    for (i, task) in COLUMNS[..3].iter().enumerate() {
        let (j, b) = (jt[i], bt[i]);
        let spread = j.1.max(b.1);
        let diff = j.0 - b.0;
        let beats = diff > spread;
        all &= beats;
        lines.push(if spread_known {
            format!(
                "- {task}: joint {:.3} vs {} {:.3}: difference {diff:+.3}, spread {spread:.3} -> {}",
                j.0,
                best.recipe,
                b.0,
                if beats { "beats it" } else { "does not beat it" }
            )
        } else {
            format!("- {task}: joint {:.3} vs {} {:.3}: difference {diff:+.3}", j.0, best.recipe, b.0)
        });
    }
    let head = if !spread_known {
        format!(
            "joint against the best separate recipe ({}) on the {on} sequences; one seed, so no seed-to-seed spread to judge the differences by (compare with several --seeds):",
            best.recipe
        )
    } else if all {
        format!(
            "joint beats the best separate recipe ({}) on all three tasks of the {on} sequences by more than the seed-to-seed spread:",
            best.recipe
        )
    } else {
        format!(
            "joint does NOT beat the best separate recipe ({}) on all three tasks of the {on} sequences by more than the seed-to-seed spread:",
            best.recipe
        )
    };
    Some(format!("{head}\n{}\n", lines.join("\n")))
}

fn read_finished(path: &Path) -> Option<Finished> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Trains what `a` names (reusing finished runs) and writes `compare.md` and `compare.json` into `a.out`.
pub fn compare(a: &CompareConfig, observer: SharedObserver) -> Result<Comparison> {
    let info = |line: &str| observer.event(&Event::Info(line));
    if a.recipes.is_empty() || a.seeds.is_empty() {
        return Err(Error::InvalidArgument("--recipes and --seeds need at least one value each".into()));
    }
    let mut rows = Vec::new();
    for &recipe in &a.recipes {
        let mut runs = Vec::new();
        for &seed in &a.seeds {
            let dir = a.out.join(recipe.name()).join(format!("seed-{seed}"));
            let summary_path = dir.join("summary.json");
            if let Some(f) = read_finished(&summary_path) {
                info(&format!("{} seed {seed}: finished earlier ({})", recipe.name(), summary_path.display()));
                runs.push(f);
                continue;
            }
            info(&format!("== {} seed {seed} -> {}", recipe.name(), dir.display()));
            let mut cfg = RunConfig::new(recipe, dir);
            (cfg.dataset, cfg.seed, cfg.resume, cfg.threads) = (a.dataset.clone(), Some(seed), true, a.threads);
            let RunSummary { map, validation, training_seconds } = run(&cfg, observer.clone())?;
            let f = Finished { recipe: recipe.name().into(), seed, map, validation, training_seconds };
            let text = serde_json::to_string_pretty(&f).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            write_atomic(&summary_path, |w| w.write_all(text.as_bytes()).map_err(|e| io_err(&summary_path, e)))?;
            runs.push(f);
        }
        rows.push(row(recipe, &runs));
    }
    let stat = if a.seeds.len() > 1 {
        format!("Mean +- sample standard deviation over seeds {:?}", a.seeds)
    } else {
        format!("One seed ({}), so no standard deviation", a.seeds[0])
    };
    let mut md = format!(
        "{stat} (demo budget; training time includes per-epoch evaluation). Recipes are compared on the validation sequences (held out of the training sequences); the test columns are reported, not chosen on.\n\n{}",
        table(&rows)
    );
    if let Some(v) = verdict(&rows) {
        md += "\n";
        md += &v;
    }
    let md_path = a.out.join("compare.md");
    write_atomic(&md_path, |w| w.write_all(md.as_bytes()).map_err(|e| io_err(&md_path, e)))?;
    let json = serde_json::to_string_pretty(&rows).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let json_path = a.out.join("compare.json");
    write_atomic(&json_path, |w| w.write_all(json.as_bytes()).map_err(|e| io_err(&json_path, e)))?;
    info(&format!("\n{}", md.strip_suffix('\n').unwrap_or(&md)));
    info(&format!("table: {}", md_path.display()));
    Ok(Comparison { rows, markdown: md, markdown_path: md_path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fin(recipe: &str, seed: u64, v: f64, m: f64, r: f64) -> Finished {
        let map = MapScores { verification: v, matching: m, retrieval: r };
        Finished { recipe: recipe.into(), seed, map, validation: None, training_seconds: 10.0 * seed as f64 }
    }

    #[test]
    fn statistics_and_verdict() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[4.0]), (4.0, 0.0));
        let sep = row(Recipe::Hardnet, &[fin("hardnet", 1, 0.70, 0.30, 0.60), fin("hardnet", 2, 0.72, 0.32, 0.62)]);
        let joint = row(Recipe::Joint, &[fin("joint", 1, 0.80, 0.31, 0.70), fin("joint", 2, 0.82, 0.33, 0.72)]);
        assert!((sep.stats[3].0 - (0.70 + 0.30 + 0.60 + 0.72 + 0.32 + 0.62) / 6.0).abs() < 1e-12);
        assert_eq!(sep.stats[4], (15.0, 50f64.sqrt()));
        let v = verdict(&[sep.clone(), joint]).unwrap();
        // Matching differs by 0.01, inside the spread (0.014): not all three.
        assert!(v.starts_with("joint does NOT beat the best separate recipe (hardnet)"), "{v}");
        assert!(
            v.contains("- verification: joint 0.810 vs hardnet 0.710: difference +0.100, spread 0.014 -> beats it")
        );
        assert!(v.contains("- matching:") && v.contains("does not beat it"));
        assert!(verdict(std::slice::from_ref(&sep)).is_none());
        // Several seeds show mean +- std; one seed shows the bare values (there is no spread).
        let t = table(&[sep.clone(), row(Recipe::Seed, &[fin("seed", 1, 0.5, 0.2, 0.4)])]);
        assert!(t.contains("| hardnet | - | - | 0.710 +- 0.014 | 0.310 +- 0.014 | 0.610 +- 0.014 |"), "{t}");
        assert!(t.contains("| seed | - | - | 0.500 | 0.200 | 0.400 | 0.367 | 10 |"), "{t}");
    }

    #[test]
    fn recipes_are_ranked_on_validation_not_test() {
        let with_val = |mut f: Finished, v: f64| {
            f.validation = Some(MapScores { verification: v, matching: v, retrieval: v });
            f
        };
        // hardnet is better on test, seed on validation: the verdict compares joint with seed.
        let hardnet = row(Recipe::Hardnet, &[with_val(fin("hardnet", 1, 0.9, 0.9, 0.9), 0.4)]);
        let seed = row(Recipe::Seed, &[with_val(fin("seed", 1, 0.5, 0.5, 0.5), 0.6)]);
        let joint = row(Recipe::Joint, &[with_val(fin("joint", 1, 0.7, 0.7, 0.7), 0.5)]);
        assert_eq!(seed.validation, Some((0.6, 0.0)));
        assert!(seed.rank_key() > hardnet.rank_key() && hardnet.stats[3].0 > seed.stats[3].0);
        let v = verdict(&[hardnet.clone(), seed, joint]).unwrap();
        assert!(v.contains("best separate recipe (seed)"), "{v}");
        // A run without validation (an older summary) leaves the row without it: ranked on test.
        let mixed =
            row(Recipe::Hardnet, &[with_val(fin("hardnet", 1, 0.9, 0.9, 0.9), 0.4), fin("hardnet", 2, 0.9, 0.9, 0.9)]);
        assert_eq!(mixed.validation, None);
        assert!(table(&[hardnet]).contains("| hardnet | 0.400 / 0.400 / 0.400 | 0.400 | 0.900 |"));
    }

    #[test]
    fn the_verdict_uses_validation_tasks_and_needs_a_spread() {
        let with_val = |mut f: Finished, v: f64, m: f64, r: f64| {
            f.validation = Some(MapScores { verification: v, matching: m, retrieval: r });
            f
        };
        // joint is far ahead on every test task, behind on validation matching.
        let hardnet = |n: u64| {
            row(
                Recipe::Hardnet,
                &(1..=n).map(|s| with_val(fin("hardnet", s, 0.5, 0.2, 0.4), 0.60, 0.30, 0.50)).collect::<Vec<_>>(),
            )
        };
        let joint = |n: u64| {
            row(
                Recipe::Joint,
                &(1..=n)
                    .map(|s| with_val(fin("joint", s, 0.9, 0.9, 0.9), 0.61 + 0.01 * s as f64, 0.25, 0.60))
                    .collect::<Vec<_>>(),
            )
        };
        let v = verdict(&[hardnet(2), joint(2)]).unwrap();
        assert!(
            v.starts_with(
                "joint does NOT beat the best separate recipe (hardnet) on all three tasks of the validation sequences"
            ),
            "{v}"
        );
        assert!(
            v.contains("- verification: joint 0.625 vs hardnet 0.600: difference +0.025, spread 0.007 -> beats it"),
            "{v}"
        );
        assert!(
            v.contains("- matching: joint 0.250 vs hardnet 0.300: difference -0.050, spread 0.000 -> does not beat it"),
            "{v}"
        );
        let one = verdict(&[hardnet(1), joint(1)]).unwrap();
        assert!(one.contains("one seed, so no seed-to-seed spread"), "{one}");
        assert!(one.contains("- retrieval: joint 0.600 vs hardnet 0.500: difference +0.100\n"), "{one}");
        assert!(!one.contains("beat"), "{one}");
    }
}
