#!/usr/bin/env python3
"""The table of a recipe screening (bench/recipe_screen.sh): per run folder
under OUT, the validation mAPs of the last descriptor epoch that scored
them (descriptor/metrics.jsonl) and the test mAPs (results.json), then per
candidate the differences to the reference candidate REF on each benchmark.

    python3 bench/recipe_table.py OUT [REF]
"""
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


def main(out, ref):
    rows = {}
    for res in sorted(glob.glob(os.path.join(out, "*", "results.json"))):
        run = os.path.dirname(res)
        bench, cand = os.path.basename(run).rsplit("-", 1)
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


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/screen", sys.argv[2] if len(sys.argv) > 2 else "base")
