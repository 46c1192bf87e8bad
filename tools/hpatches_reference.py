#!/usr/bin/env python3
"""A plain NumPy re-implementation of the HPatches benchmark protocol
(hpatches-protocol.md), written from the protocol for people to cross-check
`nhpatch eval`; not used by CI.

  hpatches_reference.py make DIR [--seqs 6 --patches 40 --dim 8 --levels 2 --seed 0]
      writes a small dataset: DIR/splits.json (split "a"), DIR/<seq>/ref.png
      (32x32 patches, some flat) and DIR/desc/<seq>/<image>.csv (small
      integers, so full of exact ties, or with --levels 0 L2-normalised
      floats; correlated positives; duplicated rows).
  hpatches_reference.py eval --dataset DIR --descriptors DESC --tasks TASKS
      [--split a] [--delimiter ,] [--json OUT]
  hpatches_reference.py compare A.json B.json
      the largest absolute difference between the two results' numbers.
"""
import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np

IMAGES = ["ref"] + [f + str(i) for f in "eht" for i in range(1, 6)]
FAMILIES = ["e", "h", "t"]
POOLS = [100, 500, 1000, 5000, 10000, 15000, 20000]


def trapz(y, x):
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def ranked_counts(dist, labels, numpos=None):
    scores = -np.asarray(dist, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    npos = int(labels.sum())
    if numpos is not None and numpos > npos:
        scores = np.concatenate([scores, np.full(numpos - npos, -np.inf)])
        labels = np.concatenate([labels, np.ones(numpos - npos, dtype=np.int64)])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    keep = scores > -np.inf
    p = int(labels.sum())
    labels = labels[keep]
    tp = np.concatenate([[0], np.cumsum(labels)]).astype(np.float64)
    fp = np.concatenate([[0], np.cumsum(1 - labels)]).astype(np.float64)
    return tp, fp, p, len(order) - p


def get_ap(dist, labels, numpos=None):
    tp, fp, p, _ = ranked_counts(dist, labels, numpos)
    recall = tp / max(p, 1e-10)
    precision = np.maximum(tp, 1e-10) / np.maximum(tp + fp, 1e-10)
    return trapz(precision, recall)


def get_auc(dist, labels):
    tp, fp, p, n = ranked_counts(dist, labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        return trapz(tp / p, fp / n)


def check_vectors():
    assert abs(get_ap([1, 2], [0, 1]) - 0.25000000005) < 1e-15
    assert abs(get_ap([1, 2, 3], [1, 0, 1]) - 19 / 24) < 1e-15
    assert abs(get_ap([1, 1, 2], [0, 1, 0]) - 0.25000000005) < 1e-15
    assert abs(get_ap([5, 5, 5, 5], [1, 0, 1, 0]) - 19 / 24) < 1e-15
    assert abs(get_ap([1, 2, 3], [1, 0, 1], numpos=4) - 19 / 48) < 1e-15


def read_csv_rows(path, header):
    with open(path) as f:
        lines = [l.strip() for l in f if l.strip()]
    assert lines[0] == header, path
    return [l.split(",") for l in lines[1:]]


def load(args):
    splits = json.load(open(os.path.join(args.dataset, "splits.json")))
    seqs = splits[args.split]["test"]
    desc = {}
    for s in seqs:
        desc[s] = {}
        for im in IMAGES:
            a = np.loadtxt(os.path.join(args.descriptors, s, im + ".csv"), delimiter=args.delimiter,
                           dtype=np.float32, ndmin=2)
            desc[s][im] = a
    x = args.split
    t = args.tasks
    pairs = lambda n: read_csv_rows(os.path.join(t, n), "s1,t1,idx1,s2,t2,idx2")
    refs = lambda n: [(r[0], int(r[1])) for r in read_csv_rows(os.path.join(t, n), "s,idx")]
    tasks = {
        "pos": pairs("verif_pos_split-%s.csv" % x),
        "intra": pairs("verif_neg_intra_split-%s.csv" % x),
        "inter": pairs("verif_neg_inter_split-%s.csv" % x),
        "queries": refs("retr_queries_split-%s.csv" % x),
        "distractors": refs("retr_distractors_split-%s.csv" % x),
    }
    return seqs, desc, tasks


def image(f, t):
    return "ref" if int(t) == 0 else f + str(int(t))


def verification(desc, tasks):
    out = []
    for kind in ["inter", "intra"]:
        for f in FAMILIES:
            def dists(rows):
                a = np.array([desc[r[0]][image(f, r[1])][int(r[2])] for r in rows], dtype=np.float32)
                b = np.array([desc[r[3]][image(f, r[4])][int(r[5])] for r in rows], dtype=np.float32)
                d = a.astype(np.float64) - b.astype(np.float64)
                return np.sqrt(np.sum(d * d, axis=1)).astype(np.float32)
            dn, dp = dists(tasks[kind]), dists(tasks["pos"])
            d = np.concatenate([dn, dp])
            lab = np.concatenate([np.zeros(len(dn)), np.ones(len(dp))])
            n = len(dp) + int(np.floor(0.2 * len(dp)))
            out.append({"negatives": kind, "family": f,
                        "imbalanced_ap": get_ap(d[:n], lab[:n]), "balanced_auc": get_auc(d, lab)})
    return out


def l2(a, b):
    d = a.astype(np.float64) - b.astype(np.float64)
    return np.sqrt(np.sum(d * d, axis=-1))


def matching(seqs, desc):
    out = []
    for s in seqs:
        r = desc[s]["ref"]
        for f in FAMILIES:
            for i in range(1, 6):
                b = desc[s][f + str(i)]
                D = np.stack([l2(r[k][None, :], b) for k in range(len(r))])
                nn = np.argmin(D, axis=1)
                score = D[np.arange(len(r)), nn]
                out.append({"sequence": s, "family": f, "image": i,
                            "ap": get_ap(score, nn == np.arange(len(r)), numpos=len(r))})
    return out


def retrieval(desc, tasks):
    dq = tasks["distractors"]
    dvec = np.array([desc[s]["ref"][i] for s, i in dq], dtype=np.float32)
    dseq = np.array([s for s, _ in dq])
    aps = np.zeros((len(tasks["queries"]), 3, len(POOLS)))
    for qi, (s, k) in enumerate(tasks["queries"]):
        q = desc[s]["ref"][k]
        dd = l2(q[None, :], dvec[dseq != s]) if len(dvec) else np.zeros(0)
        for fi, f in enumerate(FAMILIES):
            pos = np.array([l2(q, desc[s][f + str(j)][k]) for j in range(1, 6)])
            d = np.concatenate([pos, dd])
            lab = np.concatenate([np.ones(5), np.zeros(len(dd))])
            for pi, K in enumerate(POOLS):
                aps[qi, fi, pi] = get_ap(d[:K], lab[:K])
    return {"map": aps.mean(axis=0).tolist(), "mean": float(aps.mean())}


def cmd_eval(args):
    check_vectors()
    seqs, desc, tasks = load(args)
    v = verification(desc, tasks)
    m = matching(seqs, desc)
    r = retrieval(desc, tasks)
    res = {
        "verification": v, "matching": m, "retrieval": r,
        "verification_map": float(np.mean([x["imbalanced_ap"] for x in v])),
        "matching_map": float(np.mean([x["ap"] for x in m])),
        "retrieval_map": r["mean"],
    }
    res["mean"] = (res["verification_map"] + res["matching_map"] + res["retrieval_map"]) / 3
    print("Verification %.2f  Matching %.2f  Retrieval %.2f"
          % (res["verification_map"], res["matching_map"], res["retrieval_map"]))
    if args.json:
        json.dump(res, open(args.json, "w"), indent=1)


def numbers(res):
    out = {}
    for k in ["verification_map", "matching_map", "retrieval_map", "mean"]:
        out[k] = res[k]
    for v in res["verification"]:
        out["verif %s %s ap" % (v["negatives"], v["family"])] = v["imbalanced_ap"]
        out["verif %s %s auc" % (v["negatives"], v["family"])] = v["balanced_auc"]
    for m in res["matching"]:
        out["match %s %s%d" % (m["sequence"], m["family"], m["image"])] = m["ap"]
    for fi, row in enumerate(res["retrieval"]["map"]):
        for pi, x in enumerate(row):
            out["retr %s %d" % (FAMILIES[fi], POOLS[pi])] = x
    return out


def cmd_compare(args):
    a, b = numbers(json.load(open(args.a))), numbers(json.load(open(args.b)))
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    worst = max(a, key=lambda k: abs(a[k] - b[k]))
    print("%d numbers compared; max |difference| = %.3g (%s: %r vs %r)"
          % (len(a), abs(a[worst] - b[worst]), worst, a[worst], b[worst]))


def write_png(path, pixels):
    h, w = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(np.uint8).tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(path, "wb").write(data)


def cmd_make(args):
    rng = np.random.RandomState(args.seed)
    seqs = ["s%03d" % i for i in range(args.seqs)]
    json.dump({"a": {"name": "a", "train": [], "test": seqs}}, open(os.path.join(args.dir, "splits.json"), "w"))
    for s in seqs:
        n = args.patches + rng.randint(-args.patches // 2, args.patches // 2 + 1)
        os.makedirs(os.path.join(args.dir, s), exist_ok=True)
        px = rng.randint(0, 256, size=(n * 32, 32))
        px[:64] = 128  # two flat patches: never queries nor distractors
        write_png(os.path.join(args.dir, s, "ref.png"), px)
        base = rng.randn(n, args.dim)
        os.makedirs(os.path.join(args.dir, "desc", s), exist_ok=True)
        for k, im in enumerate(IMAGES):
            noise = [0.6, 0.9, 1.2, 1.5][0 if k == 0 else 1 + (k - 1) // 5]
            v = base + noise * rng.randn(n, args.dim)
            if args.levels > 0:  # small integers: exact ties everywhere
                v = np.clip(np.round(v * args.levels / 3), -args.levels, args.levels)
            else:  # L2-normalised float32
                v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
            v[1] = v[0]  # duplicated rows
            np.savetxt(os.path.join(args.dir, "desc", s, im + ".csv"), v, delimiter=args.delimiter, fmt="%.9g")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--seqs", type=int, default=6)
    m.add_argument("--patches", type=int, default=40)
    m.add_argument("--dim", type=int, default=8)
    m.add_argument("--levels", type=int, default=2)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--delimiter", default=",")
    e = sub.add_parser("eval")
    e.add_argument("--dataset", required=True)
    e.add_argument("--descriptors", required=True)
    e.add_argument("--tasks", required=True)
    e.add_argument("--split", default="a")
    e.add_argument("--delimiter", default=",")
    e.add_argument("--json")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args()
    {"make": cmd_make, "eval": cmd_eval, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
