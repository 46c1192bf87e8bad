#!/usr/bin/env python3
"""nhpatch against PyTorch on the same CPU, side by side in one run.

Builds the three models in PyTorch (the definitions of tools/torch_reference.py),
and for each workload runs nhpatch's `nhpatch bench` and the PyTorch twin
alternately, for 1 and 2 threads, then prints a table with the ratio
nhpatch / PyTorch (above 1: nhpatch is faster). Workloads:
  - denoiser training step at batch 50: U-Net with SGD + Nesterov, DnCNN with Adam, L1 loss;
  - descriptor training step on 50 triplets (150 patches), triplet loss, SGD (HardNet baseline);
  - the default recipe's step: HardNet original on 128 pairs, the HardNet loss with anchor swap,
    SGD 0.1 momentum 0.9 weight decay 1e-4, the recipe's dropout rate (RECIPE_DROPOUT;
    `nhpatch bench --loss hardnet --dropout RECIPE_DROPOUT`);
  - inference at batch 128 and 1024 for each model.
With --rounds R (default 1) each row runs R alternating rounds (nhpatch, PyTorch,
nhpatch, ...) and reports each contender's median; --workloads train|infer
keeps one kind of row.
Needs `pip install torch numpy safetensors` and a release build
(`cargo build --release`); not used by CI.

    python3 bench/compare_pytorch.py [--seconds 3] [--threads 1,2] [--only unet] [--rounds 3] [--workloads train] [--default-malloc]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

# glibc hands PyTorch's large freed blocks back to the OS (mmap above its
# threshold, trimming the heap's top), so each training step page-faults
# its activations in again: in a fresh process PyTorch's HardNet training
# step ran 25-30% below its rate after a DnCNN workload had grown the heap.
# PyTorch runs with the settings that keep freed memory (its best rate, as
# a tuned trainer or jemalloc gets); nhpatch, which allocates nothing per
# step, runs with the default. --default-malloc: both with the default.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967295", "MALLOC_TRIM_THRESHOLD_": "4294967295", "MALLOC_TOP_PAD_": "536870912"}
if __name__ == "__main__" and "--default-malloc" not in sys.argv and any(
    os.environ.get(k) != v for k, v in MALLOC.items()
):
    os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **MALLOC})

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("compare_pytorch.py needs PyTorch: pip install torch numpy safetensors")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
sys.path.insert(0, os.path.dirname(__file__))
import torch_reference as R  # noqa: E402
from train_pytorch import hardnet_loss  # noqa: E402

NHPATCH = os.path.join(os.path.dirname(__file__), "..", "target", "release", "nhpatch")
# The hardnet recipe's dropout rate in training (src/train/recipe.rs,
# HARDNET_RECIPE_DROPOUT); the triplet rows keep HardNet's own 0.3.
RECIPE_DROPOUT = 0.0


def build(model):
    if model == "unet":
        return R.UNet()
    if model == "dncnn":
        return R.DnCNN()
    if model == "hardnet-original":
        return R.HardNetOriginal(RECIPE_DROPOUT)
    return R.HardNetBaseline(0.3)


def torch_bench(model, mode, batch, seconds):
    """Median items/s over 5 repetitions after a warm-up, like `nhpatch bench`."""
    torch.manual_seed(0)
    net = build(model)
    if mode == "infer":
        net.eval()
        x = torch.rand(batch, 1, 32, 32) * 255

        def step():
            with torch.no_grad():
                net(x)

        items = batch
    elif model in ("unet", "dncnn"):
        net.train()
        x = torch.rand(batch, 1, 32, 32) * 255
        target = (x - 10).clamp(min=0)
        if model == "unet":
            opt = torch.optim.SGD(net.parameters(), lr=1e-5, momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=False)
            F.l1_loss(net(x), target).backward()
            opt.step()

        items = batch
    elif model == "hardnet-original":
        # The default recipe's step: `batch` pairs, the HardNet loss, the hardnet recipe's SGD.
        net.train()
        x = torch.rand(2 * batch, 1, 32, 32) * 255
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def step():
            opt.zero_grad(set_to_none=False)
            out = net(x)
            hardnet_loss(out[:batch], out[batch:]).backward()
            opt.step()

        items = batch
    else:
        net.train()
        x = torch.rand(3 * batch, 1, 32, 32) * 255
        opt = torch.optim.SGD(net.parameters(), lr=0.1)

        def step():
            opt.zero_grad(set_to_none=False)
            out = net(x)
            a, p, n = out[:batch], out[batch : 2 * batch], out[2 * batch :]
            d_ap = ((a - p) ** 2).mean(dim=1)
            d_an = ((a - n) ** 2).mean(dim=1)
            torch.clamp(d_ap - d_an + 1.0, min=0).mean().backward()
            opt.step()

        items = batch
    return rate(step, items, seconds)


def rate(step, items, seconds):
    """Median items/s of `step` (which processes `items`) over 5 repetitions
    of seconds / 5 after a warm-up, as `nhpatch bench` measures. The warm-up
    runs at least two calls and one repetition's time: with one call, a
    model whose step takes about a second (HardNet's training) was timed
    with oneDNN still creating its primitives, 25-30% below its rate after
    another workload of the same shapes had run in the process."""
    per_rep = max(seconds / 5, 0.05)
    t, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - t < per_rep:
        step()
        calls += 1
    reps = []
    for _ in range(5):
        t, n = time.perf_counter(), 0
        while n == 0 or time.perf_counter() - t < per_rep:
            step()
            n += items
        reps.append(n / (time.perf_counter() - t))
    return statistics.median(reps)


def nhpatch_bench(model, mode, batch, threads, seconds):
    cmd = [NHPATCH, "bench", "--model", model.split("-")[0], "--mode", mode, "--batch", str(batch),
           "--threads", str(threads), "--seconds", str(seconds)]
    if model == "hardnet":
        cmd += ["--variant", "baseline"]
    if model == "hardnet-original":
        cmd += ["--variant", "original", "--loss", "hardnet", "--dropout", str(RECIPE_DROPOUT)]
    env = {k: v for k, v in os.environ.items() if k not in MALLOC}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return float(re.search(r": ([0-9.]+) ", out).group(1))


def main():
    if not os.path.exists(NHPATCH):
        sys.exit(f"{NHPATCH} is missing: run `cargo build --release` first")
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--only", default=None, help="unet, dncnn, hardnet (baseline) or hardnet-original (its training step)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per row (median taken)")
    ap.add_argument("--workloads", choices=("all", "train", "infer"), default="all")
    ap.add_argument("--default-malloc", action="store_true", help="PyTorch with glibc's default allocator settings")
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    workloads = []
    for model in ("unet", "dncnn", "hardnet"):
        if args.only and model != args.only:
            continue
        unit = "triplets/s" if model == "hardnet" else "patches/s"
        workloads.append((model, "train", 50, unit))
        workloads.append((model, "infer", 128, "patches/s"))
        workloads.append((model, "infer", 1024, "patches/s"))
    if not args.only or args.only == "hardnet-original":
        workloads.append(("hardnet-original", "train", 128, "pairs/s"))
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for model, mode, batch, unit in workloads:
            if args.workloads != "all" and mode != args.workloads:
                continue
            ours_r, theirs_r = [], []
            for r in range(args.rounds):
                ours_r.append(nhpatch_bench(model, mode, batch, threads, args.seconds))
                theirs_r.append(torch_bench(model, mode, batch, args.seconds))
                if args.rounds > 1:
                    print(f"  round {r + 1}: nhpatch {ours_r[-1]:9.1f}  pytorch {theirs_r[-1]:9.1f}", flush=True)
            ours, theirs = statistics.median(ours_r), statistics.median(theirs_r)
            rows.append((model, mode, batch, threads, unit, ours, theirs))
            rounds = f" (medians of {args.rounds})" if args.rounds > 1 else ""
            print(f"{model:8s} {mode:5s} batch {batch:5d} threads {threads}: nhpatch {ours:9.1f}  "
                  f"pytorch {theirs:9.1f} {unit}  ratio {ours / theirs:.2f}{rounds}", flush=True)
    print()
    malloc = "glibc defaults" if args.default_malloc else " ".join(f"{k}={v}" for k, v in MALLOC.items())
    print(f"PyTorch {torch.__version__}, {torch.backends.mkldnn.is_available() and 'oneDNN' or 'no oneDNN'}; "
          f"{os.cpu_count()} CPUs; PyTorch's allocator: {malloc}")
    print("| model | workload | batch | threads | nhpatch | PyTorch | unit | nhpatch / PyTorch |")
    print("|---|---|---|---|---|---|---|---|")
    for model, mode, batch, threads, unit, ours, theirs in rows:
        print(f"| {model} | {mode} | {batch} | {threads} | {ours:.1f} | {theirs:.1f} | {unit} | {ours / theirs:.2f} |")
    # Scaling: the same workload at the largest thread count against 1 thread.
    by_key = {(m, mode, b, t): (o, p) for m, mode, b, t, _, o, p in rows}
    most = max(int(t) for t in args.threads.split(","))
    if most > 1 and any(k[3] == 1 for k in by_key):
        print()
        print(f"| model | workload | batch | nhpatch {most} threads / 1 thread | PyTorch {most} threads / 1 thread |")
        print("|---|---|---|---|---|")
        for (m, mode, b, t), (o, p) in by_key.items():
            if t == 1 and (m, mode, b, most) in by_key:
                o2, p2 = by_key[(m, mode, b, most)]
                print(f"| {m} | {mode} | {b} | {o2 / o:.2f} | {p2 / p:.2f} |")


if __name__ == "__main__":
    main()
