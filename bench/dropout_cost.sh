#!/usr/bin/env bash
# Cost of HardNet's training dropout per step: the default recipe's step
# (HardNet original, HardNet loss, batch 128 pairs) at HardNet's rate 0.3
# and at the hardnet recipe's 0, alternating, three rounds at 1 and 2
# threads. Needs `cargo build --release`.
#
#   bash bench/dropout_cost.sh [NHPATCH] [SECONDS]
set -euo pipefail
bin="${1:-target/release/nhpatch}"
seconds="${2:-5}"
for threads in 1 2; do
    for round in 1 2 3; do
        for p in 0.3 0; do
            line=$("$bin" bench --model hardnet --variant original --mode train --loss hardnet --batch 128 \
                --threads "$threads" --seconds "$seconds" --dropout "$p")
            echo "threads $threads round $round dropout $p: $line"
        done
    done
done
