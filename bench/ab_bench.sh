#!/usr/bin/env bash
# Alternates two nhpatch binaries (OLD, NEW) on the same benchmarks, three
# rounds, so drift on a shared machine hits both: bash bench/ab_bench.sh OLD NEW
set -euo pipefail
OLD=$1; NEW=$2
for round in 1 2 3; do
  for cfg in "--model unet --mode train" "--model hardnet --variant original --mode train" "--model hardnet --variant original --mode infer --batch 256" "--model unet --mode infer --batch 256"; do
    for who in old new; do
      bin=$OLD; [ $who = new ] && bin=$NEW
      line=$($bin bench $cfg --threads 2 --seconds 3 2>&1 | tail -1)
      echo "round $round | $who | $cfg | $line"
    done
  done
done
