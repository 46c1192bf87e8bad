//! `nhpatch compare`: flags into a [`CompareConfig`]; the comparison is
//! [`nhpatch::train::compare`].

use clap::Args;
use nhpatch::error::Result;
use nhpatch::train::compare::{self, CompareConfig};
use nhpatch::train::recipe::Recipe;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompareArgs {
    /// Dataset root (default: the embedded synthetic N-HPatches, as `nhpatch run`).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Folder of the runs (<recipe>/seed-<s>/) and the table.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
    /// Recipes to compare (comma-separated).
    #[arg(long, value_parser = super::recipe_parser(), value_delimiter = ',', default_values = Recipe::ALL.map(Recipe::name))]
    recipes: Vec<Recipe>,
    /// Seeds of each recipe (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 2, 3])]
    seeds: Vec<u64>,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn compare(a: CompareArgs) -> Result<()> {
    let cfg = CompareConfig { dataset: a.dataset, out: a.out, recipes: a.recipes, seeds: a.seeds, threads: a.threads };
    compare::compare(&cfg, super::progress::terminal()).map(|_| ())
}
