#!/usr/bin/env python3
"""nhpatch inference against ONNX Runtime on the same CPU, side by side in one run.

ONNX Runtime is what a native application would deploy instead of nhpatch.
Each PyTorch twin of tools/torch_reference.py (U-Net, DnCNN, HardNet baseline
and original) is exported to ONNX (opset 17, dynamic batch) and run by
ONNX Runtime's CPU provider with every graph optimisation
(ORT_ENABLE_ALL), `intra_op_num_threads` = the thread count, one inter-op
thread. For each model, thread count and batch, `nhpatch bench --mode infer`
and ONNX Runtime run alternately; both report the median of 5 timed
repetitions after a warm-up, in patches/s, and batch 1 is also printed as the
latency of one patch. With --rounds R (default 3) each configuration runs R
alternating rounds and each contender's figure is the median of its R rounds:
a shared VM's speed drifts by tens of percent within minutes. With --int8, ONNX Runtime's own static int8
quantisation of the same models (QDQ, per-channel weights, activation ranges
calibrated on 256 random patches) runs as a third contender and nhpatch's
int8 (`nhpatch bench --precision int8`, calibrated on its own batch) as a
fourth; with --bf16, nhpatch's bf16 (`--precision bf16`) runs too; they
are timed only (nhpatch's reduced-precision accuracy: README, Reduced
precision).

Needs `pip install torch onnx onnxruntime numpy` and a release build
(`cargo build --release`); not used by CI.

    python3 bench/compare_onnx.py [--seconds 3] [--threads 1,2] [--batches 1,16,128,1024]
        [--only unet,hardnet-original] [--int8] [--bf16] [--rounds 3]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from statistics import median

try:
    import numpy as np
    import onnxruntime as ort
    import torch
except ImportError:
    sys.exit("compare_onnx.py needs PyTorch, ONNX and ONNX Runtime: pip install torch onnx onnxruntime numpy")

sys.path.insert(0, os.path.dirname(__file__))
# The twins (tools/torch_reference.py), the binary and the timing loop of the PyTorch comparison.
from compare_pytorch import NHPATCH, R, rate  # noqa: E402

# name -> (twin constructor, nhpatch bench flags)
MODELS = {
    "unet": (lambda: R.UNet(), ["--model", "unet"]),
    "dncnn": (lambda: R.DnCNN(), ["--model", "dncnn"]),
    "hardnet-baseline": (lambda: R.HardNetBaseline(0.3), ["--model", "hardnet", "--variant", "baseline"]),
    "hardnet-original": (lambda: R.HardNetOriginal(0.3), ["--model", "hardnet", "--variant", "original"]),
}


def export(name, path):
    torch.manual_seed(0)
    net = MODELS[name][0]().eval()
    x = torch.rand(2, 1, 32, 32) * 255
    torch.onnx.export(net, (x,), path, input_names=["patches"], output_names=["out"],
                      dynamic_axes={"patches": {0: "batch"}, "out": {0: "batch"}}, opset_version=17, dynamo=False)


def quantize(fp32_path, int8_path):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Patches(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"patches": (rng.random((32, 1, 32, 32)) * 255).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    pre = fp32_path + ".pre.onnx"
    # The quantiser writes scratch files into the working directory: keep them in the temporary one.
    here = os.getcwd()
    os.chdir(os.path.dirname(fp32_path))
    try:
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        quantize_static(pre, int8_path, Patches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        os.chdir(here)


def session(path, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_bench(sess, batch, seconds):
    """Median patches/s over 5 repetitions after a warm-up, like `nhpatch bench`."""
    x = (np.random.default_rng(1).random((batch, 1, 32, 32)) * 255).astype(np.float32)

    return rate(lambda: sess.run(None, {"patches": x}), batch, seconds)


def nhpatch_bench(name, batch, threads, seconds, precision="f32"):
    cmd = [NHPATCH, "bench", *MODELS[name][1], "--mode", "infer", "--batch", str(batch),
           "--threads", str(threads), "--seconds", str(seconds), "--precision", precision]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(re.search(r": ([0-9.]+) ", out).group(1))


def main():
    if not os.path.exists(NHPATCH):
        sys.exit(f"{NHPATCH} is missing: run `cargo build --release` first")
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,16,128,1024")
    ap.add_argument("--only", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--int8", action="store_true", help="also time ONNX Runtime's static int8 quantisation")
    ap.add_argument("--bf16", action="store_true", help="also time nhpatch's bf16 inference")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration (median taken)")
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    names = args.only.split(",")
    for n in names:
        if n not in MODELS:
            sys.exit(f"unknown model '{n}' (expected {', '.join(MODELS)})")
    threads_list = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    tmp = tempfile.mkdtemp(prefix="nhpatch-onnx-")
    paths = {}
    for n in names:
        paths[n] = os.path.join(tmp, f"{n}.onnx")
        export(n, paths[n])
        if args.int8:
            quantize(paths[n], os.path.join(tmp, f"{n}.int8.onnx"))
    rows = []
    for threads in threads_list:
        for n in names:
            sess = session(paths[n], threads)
            sess8 = session(os.path.join(tmp, f"{n}.int8.onnx"), threads) if args.int8 else None
            for batch in batches:
                runs = {"ours": [], "theirs": [], "int8": [], "ours8": [], "ours16": []}
                for r in range(args.rounds):
                    runs["ours"].append(nhpatch_bench(n, batch, threads, args.seconds))
                    runs["theirs"].append(ort_bench(sess, batch, args.seconds))
                    if sess8:
                        runs["int8"].append(ort_bench(sess8, batch, args.seconds))
                        runs["ours8"].append(nhpatch_bench(n, batch, threads, args.seconds, "int8"))
                    if args.bf16:
                        runs["ours16"].append(nhpatch_bench(n, batch, threads, args.seconds, "bf16"))
                    extra = (f"  ort int8 {runs['int8'][-1]:9.1f}  nhpatch int8 {runs['ours8'][-1]:9.1f}"
                             if sess8 else "")
                    extra += f"  nhpatch bf16 {runs['ours16'][-1]:9.1f}" if args.bf16 else ""
                    print(f"  round {r + 1}: nhpatch {runs['ours'][-1]:9.1f}  onnxruntime {runs['theirs'][-1]:9.1f}"
                          f"{extra}", flush=True)
                ours, theirs = median(runs["ours"]), median(runs["theirs"])
                int8 = median(runs["int8"]) if sess8 else None
                ours8 = median(runs["ours8"]) if sess8 else None
                ours16 = median(runs["ours16"]) if args.bf16 else None
                rows.append((n, threads, batch, ours, theirs, int8, ours8, ours16))
                extra = f"  ort int8 {int8:9.1f}  nhpatch int8 {ours8:9.1f}" if int8 else ""
                extra += f"  nhpatch bf16 {ours16:9.1f}" if ours16 else ""
                print(f"{n:17s} threads {threads} batch {batch:5d}: nhpatch {ours:9.1f}  onnxruntime {theirs:9.1f}"
                      f"{extra} patches/s  ratio {ours / theirs:.2f} (medians of {args.rounds})", flush=True)
    print()
    print(f"ONNX Runtime {ort.__version__} (CPU provider, ORT_ENABLE_ALL), PyTorch {torch.__version__} for the export;"
          f" {os.cpu_count()} CPUs")
    int8_head = " ONNX Runtime int8 | nhpatch int8 | nhpatch int8 / ONNX Runtime f32 |" if args.int8 else ""
    int8_head += " nhpatch bf16 | nhpatch bf16 / ONNX Runtime f32 |" if args.bf16 else ""
    print(f"| model | threads | batch | nhpatch | ONNX Runtime | nhpatch / ONNX Runtime |{int8_head}")
    print("|---|---|---|---|---|---|" + ("---|---|---|" if args.int8 else "") + ("---|---|" if args.bf16 else ""))
    for n, threads, batch, ours, theirs, int8, ours8, ours16 in rows:
        cell = f" {int8:.1f} | {ours8:.1f} | {ours8 / theirs:.2f} |" if args.int8 else ""
        cell += f" {ours16:.1f} | {ours16 / theirs:.2f} |" if args.bf16 else ""
        print(f"| {n} | {threads} | {batch} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |{cell}")
    if 1 in batches:
        print()
        print("Latency of one patch (batch 1), milliseconds:")
        print("| model | threads | nhpatch | ONNX Runtime |" + (" ONNX Runtime int8 | nhpatch int8 |" if args.int8 else "")
              + (" nhpatch bf16 |" if args.bf16 else ""))
        print("|---|---|---|---|" + ("---|---|" if args.int8 else "") + ("---|" if args.bf16 else ""))
        for n, threads, batch, ours, theirs, int8, ours8, ours16 in rows:
            if batch == 1:
                cell = f" {1000 / int8:.3f} | {1000 / ours8:.3f} |" if args.int8 else ""
                cell += f" {1000 / ours16:.3f} |" if args.bf16 else ""
                print(f"| {n} | {threads} | {1000 / ours:.3f} | {1000 / theirs:.3f} |{cell}")


if __name__ == "__main__":
    main()
