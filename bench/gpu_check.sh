#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (driver installed; no CUDA toolkit needed
# beyond libcublas and libnvrtc, e.g. the nvidia-cublas-cu12 and
# nvidia-cuda-nvrtc-cu12 wheels on LD_LIBRARY_PATH): the CPU/GPU parity tests
# on cuda:0, then `nhpatch bench` for the three models in train and infer
# modes on the GPU. About 3 minutes after the build; prints the GPU's name.
#
#   bash bench/gpu_check.sh            # build, parity tests, benches
#   SECONDS_PER_BENCH=2 bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${SECONDS_PER_BENCH:-3}"
# cuBLAS may not trade FP32 for TF32 behind our back: the parity tests compare in FP32.
export NVIDIA_TF32_OVERRIDE=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi not found"
cargo build --release --features cuda
echo "== parity tests (emulator and cuda:0)"
cargo test --release --features cuda --test gpu --test device -- --nocapture 2>&1 |
    grep -E -A4 "^test |skipped|NVRTC|test result|panicked|^error"
echo "== nhpatch bench --device cuda"
B=target/release/nhpatch
for spec in "unet train 128" "unet infer 1024" "dncnn train 128" "dncnn infer 1024" \
    "hardnet train 128" "hardnet infer 1024"; do
    set -- $spec
    line=$("$B" bench --model "$1" --mode "$2" --batch "$3" --device cuda --seconds "$secs")
    echo "$line"
    if [ "$1 $2" = "dncnn train" ]; then
        # The full N-HPatches training set is 1.56 M patches per epoch.
        echo "$line" | awk '{ for (i = 1; i < NF; i++) if ($(i+1) == "patches/s") printf "DnCNN epoch of 1.56 M patches: %.1f min\n", 1.56e6 / $i / 60 }'
    fi
done
# HardNet as `nhpatch run` trains it (the original variant).
"$B" bench --model hardnet --variant original --mode train --batch 128 --device cuda --seconds "$secs"
