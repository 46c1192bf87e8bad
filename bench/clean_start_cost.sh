#!/usr/bin/env bash
# Cost of the hardnet recipe's clean start, run by run: `nhpatch run` (the
# demo preset on the default synthetic dataset) without it, with it (the
# default) and as distillation at weight 0 (the teacher's pass over each
# batch's clean twins kept), alternating, ROUNDS rounds. Prints each run's
# epoch lines, headline and total. Needs `cargo build --release`; run it in
# an empty folder (the dataset is generated into data/synth on first use).
#
#   bash bench/clean_start_cost.sh [NHPATCH] [ROUNDS]
set -euo pipefail
bin="${1:-target/release/nhpatch}"
rounds="${2:-2}"
for round in $(seq 1 "$rounds"); do
    for c in off default distill0; do
        case $c in
            off) extra=(--clean-start false) ;;
            default) extra=() ;;
            distill0) extra=(--clean-start false --distill-weight 0) ;;
        esac
        echo "## round $round: $c: nhpatch run --out runs/$c-$round ${extra[*]}"
        "$bin" run --out "runs/$c-$round" "${extra[@]}" 2>&1 | grep -E "epoch|teacher|total|Mean"
    done
done
