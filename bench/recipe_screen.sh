#!/usr/bin/env bash
# Recipe screening on several benchmarks: each candidate is one `nhpatch run`
# per benchmark, ranked on the validation sequences, the test sequences
# reported. Candidates are named flag sets (edit CANDIDATES); runs already
# finished in OUT are kept. Prints the table of bench/recipe_table.py.
#
#   bench/recipe_screen.sh NHPATCH OUT BUDGET DATASET...
#
# NHPATCH: the binary; OUT: a folder for the runs; BUDGET: the flags sizing
# every run (quoted); DATASET: a dataset root, or `synth` for the default one
# (generated into OUT/data/synth). Example (the screening in README,
# "Recipes on photographs"):
#
#   bench/recipe_screen.sh target/release/nhpatch runs/screen \
#     "--preset seed --denoiser-epochs 1 --descriptor-epochs 2 --triplets 5000 --threads 2 --seed 1" \
#     data/photosA data/photosB synth
set -euo pipefail
[ $# -ge 4 ] || { sed -n 2,17p "$0"; exit 2; }
bin=$(realpath "$1"); out=$2; budget=$3; shift 3
declare -A CANDIDATES=(
  [base]=""
  [adam]="--denoiser-optimizer adam --denoiser-lr 1e-3"
)
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
for ds in "$@"; do
  if [ "$ds" = synth ]; then name=synth; flag=""; else name=$(basename "$ds"); flag="--dataset $(realpath "$ds")"; fi
  for cand in $(printf '%s\n' "${!CANDIDATES[@]}" | sort); do
    run=$(realpath -m "$out/$name-$cand")
    [ -f "$run/results.json" ] && continue
    echo "== $name $cand $(date +%T)"
    # shellcheck disable=SC2086
    (cd "$out" && /usr/bin/time -f "%e s wall" "$bin" run $flag --out "$run" $budget ${CANDIDATES[$cand]}) > "$run.log" 2>&1
    tail -1 "$run.log"
  done
done
python3 "$here/recipe_table.py" "$out"
