#!/usr/bin/env python3
"""The table of a recipe screening (bench/recipe_screen.sh): per run folder
under OUT, the validation mAPs of the last descriptor epoch that scored
them (descriptor/metrics.jsonl) and the test mAPs (results.json), then per
candidate the differences to the reference candidate REF on each benchmark.

    python3 bench/recipe_table.py OUT [REF]
    python3 bench/recipe_table.py --runs BENCH.sSEED-CAND=RUN... [--ref REF]

The second form takes run folders from anywhere, each labelled with its
benchmark, seed and candidate. Wherever benchmarks are named BENCH.sSEED
(either form), a last table gives per benchmark and candidate the mean +-
sample standard deviation over the seeds of the validation and test means,
and of the paired differences to REF (seeds that have both).
"""
import statistics
import glob
import json
import os
import sys


def scores(run):
    val = None
    with open(os.path.join(run, "descriptor", "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line).get("map")
            if m:
                val = m
    r = json.load(open(os.path.join(run, "results.json")))
    v = [val["verification"], val["matching"], val["retrieval"]] if val else None
    t = [r["verification_map"], r["matching_map"], r["retrieval_map"]]
    return v, t


def spread(xs):
    sd = f" +- {statistics.stdev(xs):.4f}" if len(xs) > 1 else ""
    return f"{statistics.mean(xs):+.4f}{sd}" if xs else "-"


def seeds_table(rows, ref):
    """Mean +- sample sd over seeds of BENCH.sSEED rows, and of the paired differences to ref."""
    groups = {}
    for (bench, cand), (v, t) in rows.items():
        if ".s" not in bench or v is None:
            continue
        name, seed = bench.rsplit(".s", 1)
        groups.setdefault((name, cand), {})[seed] = (sum(v) / 3, sum(t) / 3)
    if not groups:
        return
    print()
    print(f"| benchmark | candidate | seeds | validation mean | test mean | validation - {ref} | test - {ref} |")
    print("|---|---|---|---|---|---|---|")
    for (name, cand), by_seed in sorted(groups.items()):
        base = groups.get((name, ref), {})
        paired = [s for s in by_seed if s in base] if cand != ref else []
        val = [by_seed[s][0] for s in sorted(by_seed)]
        test = [by_seed[s][1] for s in sorted(by_seed)]
        dv = [by_seed[s][0] - base[s][0] for s in paired]
        dt = [by_seed[s][1] - base[s][1] for s in paired]
        print(
            f"| {name} | {cand} | {', '.join(sorted(by_seed))} | {spread(val).lstrip('+')} | {spread(test).lstrip('+')} "
            f"| {spread(dv)} | {spread(dt)} |"
        )


def main(out, ref, runs=None):
    rows = {}
    if runs is None:
        runs = {}
        for res in sorted(glob.glob(os.path.join(out, "*", "results.json"))):
            run = os.path.dirname(res)
            runs[os.path.basename(run)] = run
    for label, run in sorted(runs.items()):
        bench, cand = label.rsplit("-", 1)
        rows[(bench, cand)] = scores(run)
    print("| benchmark | candidate | validation v / m / r | validation mean | test v / m / r | test mean |")
    print("|---|---|---|---|---|---|")
    for (bench, cand), (v, t) in sorted(rows.items()):
        vs = " / ".join(f"{x:.3f}" for x in v) if v else "-"
        vm = f"{sum(v) / 3:.3f}" if v else "-"
        print(f"| {bench} | {cand} | {vs} | {vm} | {' / '.join(f'{x:.3f}' for x in t)} | {sum(t) / 3:.3f} |")
    print()
    for (bench, cand), (v, t) in sorted(rows.items()):
        base = rows.get((bench, ref))
        if cand == ref or base is None or v is None or base[0] is None:
            continue
        dv = sum(v) / 3 - sum(base[0]) / 3
        dt = sum(t) / 3 - sum(base[1]) / 3
        print(f"{bench}: {cand} - {ref}: validation mean {dv:+.3f}, test mean {dt:+.3f}")
    seeds_table(rows, ref)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--runs":
        ref = "base"
        if "--ref" in args:
            i = args.index("--ref")
            ref = args[i + 1]
            del args[i : i + 2]
        labelled = dict(a.split("=", 1) for a in args[1:])
        main(None, ref, labelled)
    else:
        main(args[0] if args else "runs/screen", args[1] if len(args) > 1 else "base")
