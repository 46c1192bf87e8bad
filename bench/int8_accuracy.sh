#!/usr/bin/env bash
# Reduced precision against f32 on a trained run: every task's mAP
# (`nhpatch eval`, split a) and the denoiser's output on the noisy strips of
# the first evaluated sequence (`nhpatch denoise`; mean and largest absolute
# difference in grey levels). int8 runs with each choice of layers
# (`nhpatch calibrate --int8-layers all|keep-winograd`, on the default
# calibration sample; a descriptor's through the f32 denoiser), for the
# descriptor and the denoiser separately.
#
#   bench/int8_accuracy.sh NHPATCH DATASET RUN OUT [validation]
#
# NHPATCH: the binary; DATASET: the dataset root the run trained on; RUN: a
# finished run folder (RUN/denoiser, and RUN/descriptor unless only the
# denoiser is checked); OUT: a folder for the calibrated weights, the
# outputs and, with `validation`, a view of the dataset whose split a tests
# its training sequences (choices are made there; the test sequences are
# for reporting).
set -euo pipefail
[ $# -eq 4 ] || [ $# -eq 5 ] || { sed -n 2,18p "$0"; exit 2; }
bin=$(realpath "$1"); ds=$(realpath "$2"); run=$(realpath "$3"); out=$4; which=${5:-test}
mkdir -p "$out"; out=$(realpath "$out")
if [ "$which" = validation ]; then
  # The same sequences (links), split a's training and test sets swapped.
  view=$out/view; rm -rf "$view"; mkdir -p "$view"
  for s in "$ds"/*/; do ln -s "${s%/}" "$view/$(basename "$s")"; done
  python3 -c "
import json, sys
d = json.load(open(sys.argv[1])); a = d['a']; a['train'], a['test'] = a['test'], a['train']
json.dump({'a': a}, open(sys.argv[2], 'w'))" "$ds/splits.json" "$view/splits.json"
  ds=$view
fi
den=$run/denoiser/model.safetensors; desc=$run/descriptor/model.safetensors
echo "# $("$bin" --version); int8 GEMM in use: $("$bin" kernels | grep '^int8.*(used)' | awk '{print $2}'); sequences: $which"
for layers in all keep-winograd; do
  "$bin" calibrate --weights "$den" --output "$out/den-$layers.safetensors" --int8-layers "$layers" 2>&1
  [ -f "$desc" ] && "$bin" calibrate --weights "$desc" --denoiser "$den" --output "$out/desc-$layers.safetensors" --int8-layers "$layers" 2>&1
done
score() { # name precision descriptor denoiser
  "$bin" eval --dataset "$ds" --split a --weights "$3" --denoiser "$4" --precision "$2" --json "$out/$1.json" > /dev/null 2>&1
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); m=[r[k+'_map'] for k in ('verification','matching','retrieval')]; print(f'{sys.argv[2]}: verification {m[0]:.5f} matching {m[1]:.5f} retrieval {m[2]:.5f} mean {sum(m)/3:.5f}')" "$out/$1.json" "$1"
}
if [ -f "$desc" ]; then
  score f32 f32 "$desc" "$den"
  score "int8 descriptor all, denoiser keep-winograd" int8 "$out/desc-all.safetensors" "$out/den-keep-winograd.safetensors"
  score "int8 descriptor all, denoiser all" int8 "$out/desc-all.safetensors" "$out/den-all.safetensors"
  score "int8 descriptor keep-winograd, denoiser keep-winograd" int8 "$out/desc-keep-winograd.safetensors" "$out/den-keep-winograd.safetensors"
  score bf16 bf16 "$desc" "$den"
fi
seq=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['a']['test'][0])" "$ds/splits.json")
for strip in "$ds/$seq"/*_noise.png; do
  name=$(basename "$strip" .png)
  "$bin" denoise --weights "$den" --input "$strip" --output "$out/$name-f32.npy" 2> /dev/null
  for layers in all keep-winograd; do
    "$bin" denoise --weights "$out/den-$layers.safetensors" --input "$strip" --output "$out/$name-int8-$layers.npy" --precision int8 2> /dev/null
  done
  "$bin" denoise --weights "$den" --input "$strip" --output "$out/$name-bf16.npy" --precision bf16 2> /dev/null
done
python3 - "$out" "$seq" <<'PY'
import glob, sys, numpy as np
out, seq = sys.argv[1], sys.argv[2]
f32 = sorted(glob.glob(f"{out}/*_noise-f32.npy"))
ref = np.concatenate([np.load(p).reshape(-1) for p in f32])
for mode in ["int8-all", "int8-keep-winograd", "bf16"]:
    got = np.concatenate([np.load(p.replace("-f32.npy", f"-{mode}.npy")).reshape(-1) for p in f32])
    d = np.abs(got - ref)
    px = np.abs(np.clip(np.round(got), 0, 255) - np.clip(np.round(ref), 0, 255))
    print(f"denoiser {mode}: {len(ref) // 1024} patches of {seq}: MAE {d.mean():.4f} grey levels, max {d.max():.3f}; as pixels MAE {px.mean():.4f}")
PY
