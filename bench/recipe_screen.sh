#!/usr/bin/env bash
# Recipe screening on several benchmarks: each candidate is one `nhpatch run`
# per benchmark, ranked on the validation sequences, the test sequences
# reported. Runs already finished in OUT are kept. Prints the table of
# bench/recipe_table.py (differences to the first candidate).
#
#   bench/recipe_screen.sh NHPATCH OUT BUDGET [-r REF] -c NAME=FLAGS [-c NAME=FLAGS]... DATASET...
#
# NHPATCH: the binary; OUT: a folder for the runs; BUDGET: the flags sizing
# every run (quoted); -c: a candidate, a name (letters, digits, dots) and the
# flags it adds to BUDGET (empty: the default recipe); DATASET: a dataset
# root, or `synth` for the default one (generated into OUT/data/synth).
# -r REF: candidates that change only the descriptor stage start from the
# finished denoiser of REF/<dataset>-hardnet (a run of the same budget and
# seed), copied into each run and continued with --resume; nhpatch refuses
# it unless the denoiser's settings are the same, and the result is the same
# bytes as training it again.
# Example (the screening in README, "Recipes on photographs"):
#
#   bench/recipe_screen.sh target/release/nhpatch runs/screen \
#     "--preset seed --denoiser-epochs 1 --descriptor-epochs 2 --triplets 5000 --threads 2 --seed 1" \
#     -c hardnet= -c joint="--recipe joint" data/photosA data/photosB synth
set -euo pipefail
usage() { sed -n 2,22p "$0"; exit 2; }
[ $# -ge 5 ] || usage
bin=$(realpath "$1"); out=$2; budget=$3; shift 3
ref=""
if [ $# -ge 2 ] && [ "$1" = -r ]; then ref=$(realpath "$2"); shift 2; fi
names=(); declare -A flags=()
while [ $# -gt 0 ] && [ "$1" = -c ]; do
  [ $# -ge 2 ] || usage
  name=${2%%=*}; [[ "$2" == *=* && "$name" =~ ^[A-Za-z0-9.]+$ ]] || { echo "bad candidate '$2' (expected NAME=FLAGS)" >&2; exit 2; }
  names+=("$name"); flags[$name]=${2#*=}; shift 2
done
[ ${#names[@]} -ge 1 ] && [ $# -ge 1 ] || usage
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
for ds in "$@"; do
  if [ "$ds" = synth ]; then name=synth; flag=""; else name=$(basename "$ds"); flag="--dataset $(realpath "$ds")"; fi
  for cand in "${names[@]}"; do
    run=$(realpath -m "$out/$name-$cand")
    [ -f "$run/results.json" ] && continue
    resume=""
    if [ -n "$ref" ]; then
      mkdir -p "$run"; [ -d "$run/denoiser" ] || cp -r "$ref/$name-hardnet/denoiser" "$run/denoiser"; resume=--resume
    fi
    echo "== $name $cand $(date +%T)"
    # shellcheck disable=SC2086
    (cd "$out" && /usr/bin/time -f "%e s wall" "$bin" run $flag --out "$run" $budget ${flags[$cand]} $resume) > "$run.log" 2>&1
    tail -1 "$run.log"
  done
done
python3 "$here/recipe_table.py" "$out" "${names[0]}"
