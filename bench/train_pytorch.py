#!/usr/bin/env python3
"""The default recipe (`hardnet`) trained in PyTorch, for accuracy comparisons
at the same budget on any N-HPatches-style dataset.

What `nhpatch run --dataset D --preset seed --denoiser-epochs E1
--descriptor-epochs E2 --triplets T --seed S` trains, written independently
in PyTorch (the model definitions of tools/torch_reference.py):

  - validation sequences carved from the split's training sequences as nhpatch
    does (the round(0.15 n) names with the smallest FNV-1a 64 hashes) and left
    out of training; the test sequences are only scored, at the end;
  - U-Net: E1 epochs of every training patch (16 images x count per
    sequence; --denoiser-items N sets another epoch length), (noisy, clean) twins drawn uniformly, batch 50, Adam 1e-3,
    mean L1 loss on 0..255 pixels;
  - the training sequences' noisy patches denoised once, clipped and rounded
    to 0..255;
  - HardNet (kornia's "original" variant, dropout 0.3): E2 epochs of T
    pairs (nhpatch's `--triplets` with the HardNet loss counts pairs), in
    batches of 128 distinct classes (one patch position of one training
    sequence) x 2 distinct images and a shorter last batch, hardest-in-batch loss with
    anchor swap (margin 1, the authors' masking of near-duplicates), SGD 0.1
    momentum 0.9 weight decay 1e-4, learning rate decayed linearly to 0 over
    all steps; with --augment, one of the 8 flips/90-degree rotations per pair
    (the old default's augmentation).

The weights are written as safetensors in nhpatch's layout
(OUT/denoiser/model.safetensors, OUT/descriptor/model.safetensors), and the
test sequences are scored by `nhpatch eval` (the same code that scores
nhpatch's runs) into OUT/results.json. Sampling streams differ from
nhpatch's (torch's generator), so runs agree in distribution, not bit for bit.

Needs `pip install torch numpy safetensors pillow` and a release build
(`cargo build --release`); not used by CI.

    python3 bench/train_pytorch.py --dataset D --out runs/torch/D --seed 1 \\
        [--denoiser-epochs 3 --descriptor-epochs 5 --triplets 20000] [--threads 2] [--augment]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from safetensors.torch import save_file
except ImportError:
    sys.exit("train_pytorch.py needs: pip install torch numpy safetensors pillow")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import torch_reference as R  # noqa: E402

NHPATCH = os.path.join(os.path.dirname(__file__), "..", "target", "release", "nhpatch")
IMAGES = ["ref", "e1", "e2", "e3", "e4", "e5", "h1", "h2", "h3", "h4", "h5", "t1", "t2", "t3", "t4", "t5"]
VAL_FRACTION = 0.15
BATCH = 128


def carve_validation(train):
    """nhpatch's data::split::carve_validation with the default fraction."""
    if len(train) < 2:
        return train, []
    k = min(max(int(math.floor(VAL_FRACTION * len(train) + 0.5)), 1), len(train) - 1)
    held = set(sorted(train, key=lambda n: (R.fnv1a64(n), n))[:k])
    return [n for n in train if n not in held], [n for n in train if n in held]


def read_strip(path):
    try:
        a = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    except OSError as e:
        sys.exit(f"{path}: cannot read the strip: {e}")
    if a.shape[1] != 32 or a.shape[0] % 32:
        sys.exit(f"{path}: expected a strip 32 pixels wide and a multiple of 32 high, got {a.shape[1]}x{a.shape[0]}")
    return a.reshape(-1, 32, 32)


def read_sequences(root, names):
    """[16, count, 32, 32] uint8 clean and noisy patches per sequence."""
    out = []
    for n in names:
        d = os.path.join(root, n)
        clean = np.stack([read_strip(os.path.join(d, f"{i}.png")) for i in IMAGES])
        noisy = np.stack([read_strip(os.path.join(d, f"{i}_noise.png")) for i in IMAGES])
        out.append((torch.from_numpy(clean), torch.from_numpy(noisy)))
    return out


def hardnet_loss(a, p, margin=1.0):
    """Hardest-in-batch triplet margin loss with anchor swap (Mishchuk et al.)."""
    sq = (a * a).sum(1, keepdim=True) + (p * p).sum(1).unsqueeze(0) - 2.0 * a @ p.t()
    d = torch.sqrt(sq.clamp(min=0.0) + 1e-6) + 1e-8
    pos = d.diag()
    m = d + 10.0 * torch.eye(d.shape[0])
    m = m + 10.0 * (m < 0.008).float()
    neg = torch.minimum(m.min(1).values, m.min(0).values)
    return F.relu(margin + pos - neg).mean()


def train_denoiser(seqs, epochs, items, gen, log):
    clean = torch.cat([c.reshape(-1, 32, 32) for c, _ in seqs])
    noisy = torch.cat([n.reshape(-1, 32, 32) for _, n in seqs])
    patches = clean.shape[0]
    total = items or patches
    net = R.UNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    net.train()
    for e in range(epochs):
        t0, losses = time.time(), []
        for s in range(0, total, 50):
            idx = torch.randint(0, patches, (min(50, total - s),), generator=gen)
            x = noisy[idx].unsqueeze(1).float()
            y = clean[idx].unsqueeze(1).float()
            loss = (net(x) - y).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        dt = time.time() - t0
        log(f"denoiser epoch {e + 1}/{epochs}  loss {np.mean(losses):.4f}  {total / dt:.0f} patches/s  {dt:.1f} s")
    return net


@torch.no_grad()
def denoise(net, seqs):
    net.eval()
    out = []
    for _, noisy in seqs:
        x = noisy.reshape(-1, 1, 32, 32).float()
        y = torch.cat([net(x[i:i + 1024]) for i in range(0, x.shape[0], 1024)])
        out.append(y.clamp(0, 255).round().to(torch.uint8).reshape(noisy.shape))
    return out


def symmetry(x, k):
    """One of the 8 symmetries of the square on [..., 32, 32]."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def train_descriptor(patches, epochs, triplets, augment, gen, log):
    # [16, classes, 32, 32]: a class is one patch position of one training
    # sequence, numbered in sequence order.
    patches = torch.cat(patches, dim=1)
    # `--triplets T` with the HardNet loss is T pairs per epoch, in batches of
    # 128 and a shorter last one (nhpatch's flag: "triplets (or pairs)").
    sizes = [BATCH] * (triplets // BATCH) + ([triplets % BATCH] if triplets % BATCH else [])
    steps = len(sizes)
    net = R.HardNetOriginal(0.3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    total = epochs * steps
    t = 0
    for e in range(epochs):
        net.train()
        t0, losses = time.time(), []
        for size in sizes:
            for g in opt.param_groups:
                g["lr"] = 0.1 * (1.0 - t / total)
            pick = torch.randperm(patches.shape[1], generator=gen)[:size]
            i1 = torch.randint(0, 16, (size,), generator=gen)
            i2 = (i1 + torch.randint(1, 16, (size,), generator=gen)) % 16
            a, p = patches[i1, pick], patches[i2, pick]
            if augment:
                sym = torch.randint(0, 8, (size,), generator=gen).tolist()
                a = torch.stack([symmetry(x, k) for x, k in zip(a, sym)])
                p = torch.stack([symmetry(x, k) for x, k in zip(p, sym)])
            out = net(torch.cat([a, p]).unsqueeze(1).float())
            loss = hardnet_loss(out[:size], out[size:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            t += 1
        dt = time.time() - t0
        log(f"descriptor epoch {e + 1}/{epochs}  loss {np.mean(losses):.4f}  {triplets / dt:.0f} pairs/s  {dt:.1f} s")
    return net


def save(net, path, meta):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sd = {k: v.detach().contiguous().float() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata={"format_version": "1", **meta})
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="a")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--denoiser-epochs", type=int, default=3)
    ap.add_argument("--descriptor-epochs", type=int, default=5)
    ap.add_argument("--triplets", type=int, default=20000)
    ap.add_argument("--denoiser-items", type=int, default=0, help="patches per denoiser epoch (0: every training patch)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--nhpatch", default=NHPATCH)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "train.log"), "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    splits_path = os.path.join(args.dataset, "splits.json")
    try:
        with open(splits_path) as f:
            split = json.load(f)[args.split]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"{splits_path}: cannot read split '{args.split}': {e!r}")
    train, val = carve_validation(split["train"])
    seqs = read_sequences(args.dataset, train)
    count = sum(16 * c.shape[1] for c, _ in seqs)
    log(f"dataset {args.dataset}: {len(train)} training (validation left out: {', '.join(val)}), "
        f"{len(split['test'])} test sequences, {count} training patches; torch {torch.__version__}, "
        f"{args.threads} threads, seed {args.seed}, augment {args.augment}")
    start = time.time()
    den = train_denoiser(seqs, args.denoiser_epochs, args.denoiser_items, gen, log)
    save(den, os.path.join(args.out, "denoiser", "model.safetensors"),
         {"bn_eps": "none", "input_scaling": "raw_0_255", "model": "unet", "padding": "keras_same"})
    t0 = time.time()
    denoised = denoise(den, seqs)
    log(f"denoised the training patches once: {time.time() - t0:.1f} s")
    desc = train_descriptor(denoised, args.descriptor_epochs, args.triplets, args.augment, gen, log)
    save(desc, os.path.join(args.out, "descriptor", "model.safetensors"),
         {"bn_eps": "1e-05", "input_scaling": "per_patch_norm", "model": "hardnet", "padding": "symmetric",
          "variant": "original"})
    log(f"total training {time.time() - start:.0f} s")
    cmd = [args.nhpatch, "eval", "--dataset", args.dataset, "--split", args.split,
           "--weights", os.path.join(args.out, "descriptor", "model.safetensors"),
           "--denoiser", os.path.join(args.out, "denoiser", "model.safetensors"),
           "--json", os.path.join(args.out, "results.json"), "--threads", str(args.threads)]
    log("$ " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    log(r.stdout + r.stderr)
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
