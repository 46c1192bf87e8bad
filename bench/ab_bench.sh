#!/usr/bin/env bash
# Alternates two nhpatch binaries (OLD, NEW) on the same benchmarks, three
# rounds, so drift on a shared machine hits both, then prints new/old per
# round and the geometric mean: bash bench/ab_bench.sh OLD NEW [CONFIGS]
# (CONFIGS: a file of `nhpatch bench` flags, one workload per line; default
# the training and large-batch inference workloads below; 2 threads unless a
# line names --threads).
set -euo pipefail
OLD=$1; NEW=$2
CONFIGS=(
  "--model unet --mode train"
  "--model dncnn --mode train --batch 16"
  "--model hardnet --mode train"
  "--model hardnet --variant original --mode train"
  "--model hardnet --variant original --mode infer --batch 256"
  "--model unet --mode infer --batch 256"
  "--model dncnn --mode infer --batch 64"
)
if [ $# -ge 3 ]; then
  mapfile -t CONFIGS < <(grep -v '^\s*$' "$3")
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for round in 1 2 3; do
  for cfg in "${CONFIGS[@]}"; do
    for who in old new; do
      bin=$OLD; [ $who = new ] && bin=$NEW
      threads="--threads 2"; [[ "$cfg" == *--threads* ]] && threads=""
      # shellcheck disable=SC2086
      line=$($bin bench $cfg $threads --seconds 3 2>&1 | tail -1)
      echo "round $round | $who | $cfg | $line" | tee -a "$log"
    done
  done
done
echo
echo "new / old, per round (same round = back to back), and geometric mean:"
python3 - "$log" <<'PY'
import math, re, sys
rate = {}
for line in open(sys.argv[1]):
    rnd, who, cfg, out = [p.strip() for p in line.split("|", 3)]
    m = re.search(r": ([0-9.]+) (patches|triplets|pairs)/s", out)
    rate[(cfg, rnd, who)] = float(m.group(1))
for cfg in dict.fromkeys(k[0] for k in rate):
    ratios = [rate[(cfg, r, "new")] / rate[(cfg, r, "old")] for r in ("round 1", "round 2", "round 3")]
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(f"  {cfg:60s} {' '.join(f'{x:.2f}' for x in ratios)}   geo-mean {geo:.2f}")
PY
