#!/usr/bin/env python3
"""PyTorch reference for nhpatch: writes the golden files under tests/golden/.

Builds the four models nhpatch implements (shallow U-Net, DnCNN, the seed's
Keras HardNet "baseline", kornia's HardNet "original") in plain PyTorch on the
CPU, float32, with deterministic algorithms, and stores for each, in
tests/golden/<model>.safetensors, what a Rust test needs to check its forward
pass, one train step and the gradients, in well under 200 KB per model:

Weights are not stored: every parameter and buffer (no num_batches_tracked)
is set from a formula that Rust reproduces bit for bit (metadata "weights"):

  - seed = FNV-1a 64 of the state_dict name's UTF-8 bytes (offset basis
    0xcbf29ce484222325, prime 0x100000001b3), e.g. "conv1.weight";
  - x_i = the i-th output (i = 0, 1, ... in row-major order) of SplitMix64
    started with state = seed: state += 0x9E3779B97F4A7C15; z = state;
    z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) *
    0x94D049BB133111EB; x = z ^ z >> 31, all mod 2^64 (nhpatch's
    Rng::new(seed).next_u64());
  - v_i = ((x_i >> 40) - 2^23) / 2^23, in [-1, 1) with 24 bits: exact in f32;
  - conv weight: v * 2^-e with e = bit_length(fan_in) // 2, fan_in = in * kh *
    kw (2^-e is the power of two nearest 1/sqrt(fan_in), halves rounded to
    the larger e); conv bias, BN bias, running_mean: v * 2^-3 -- all exact;
  - BN weight, running_var: 1 + v * 2^-1, computed exactly (in float64 here)
    and rounded once to f32, to nearest, ties to even. Half of these values
    need 25 significant bits, so they cannot all be exact in f32; one IEEE
    rounding is still bit-reproducible (Rust: `(1.0 + 0.5 * v as f64) as
    f32`, or the f32 sum `1.0f32 + 0.5 * v`, rounded once just the same).

  metadata "shapes" lists every formula tensor as name=d0,d1,...;... in
  state_dict order, and `check.<name>` holds the first 8 values of one tensor
  of each kind present plus the last conv weight (another fan_in), so the
  Rust side can prove its generator matches.

Also stored:

  - `input` [N,1,32,32] and `eval_output` (model.eval());
  - one train step (model.train(), dropout p = 0, BatchNorm on batch
    statistics): `train_output`, `train_loss` and, for models with BatchNorm,
    `running_mean_after.<bn>` / `running_var_after.<bn>`; denoisers: `target`
    and the mean L1 loss; HardNet: loss = sum(output * proj) with the stored
    projection `proj` [N,128];
  - for every trainable parameter, a summary of its gradient g (len n < 2^24,
    metadata "gradients"):
      `gradidx.<name>` [32]: positions x % n, x the first 32 outputs of
        SplitMix64(FNV-1a(name) ^ 0x5DEECE66D), stored as exact F32 integers;
      `gradsample.<name>` [32]: g at those positions;
      `gradproj.<name>` [1]: sum_i g_i * w_i with w_i = v_i from
        SplitMix64(FNV-1a(name) ^ 0x2545F4914F6CDD1D) (the v formula above);
      `gradabs.<name>` [1]: sum_i |g_i * w_i|, the scale for a tolerance;
      `gradnorm.<name>` [1]: sqrt(sum_i g_i^2);
    the sums are exact (each product is exact in float64, math.fsum) and
    rounded to f32 at the end;
  - `checkproj.<name>` [8]: the first 8 w_i of the first parameter, so the
    projection stream is checked on its own too;
  - the same train step in float64 (the model and inputs converted from the
    float32 values, so it is the exact answer both float32 implementations
    approximate): `train_output64`, `train_loss64` and, per trainable
    parameter, `gradsample64.<name>`, `gradproj64.<name>`, `gradnorm64.<name>`
    at the same positions and with the same weights. Deep BatchNorm chains
    (DnCNN) amplify float32 rounding beyond 1e-4; the Rust tests then hold
    nhpatch to PyTorch's own float32 distance from this answer.

It also writes tiny_torch.safetensors (written by safetensors.torch.save_file,
for nhpatch's byte-exact reader/writer test) and dtypes_torch.safetensors
(F16/BF16/F64 tensors and torch's own conversion of them to F32).

The model files are written by `write_canonical` below rather than
save_file: save_file orders metadata keys by a randomised hash map, so its
bytes differ from run to run as soon as there are two metadata keys. The
canonical layout (metadata keys sorted, tensors sorted by name) is the one
nhpatch's writer produces, and every file is read back with
safetensors.torch.load_file to prove it is a valid safetensors file.

Run from the repository root:  python3 tools/torch_reference.py
Running it twice gives the same bytes (check with sha256sum tests/golden/*).
"""

import json
import copy
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FORMAT_VERSION = "1"
GENERATOR = "tools/torch_reference.py"
N = 4  # patches per batch: enough for batch statistics, small files
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


class UNet(nn.Module):
    """The seed's shallow U-Net; conv3 (2x2) uses Keras 'same' padding."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 2)
        self.conv4 = nn.Conv2d(80, 64, 3, padding=1)
        self.conv5 = nn.Conv2d(64, 1, 3, padding=1)

    def forward(self, x):
        c1 = F.relu(self.conv1(x))  # 16 x 32 x 32
        c2 = F.relu(self.conv2(F.max_pool2d(c1, 2)))  # 32 x 16 x 16
        up = F.interpolate(c2, scale_factor=2, mode="nearest")  # 32 x 32 x 32
        # Keras 'same' for an even kernel: the extra row/column goes bottom/right.
        c3 = F.relu(self.conv3(F.pad(up, (0, 1, 0, 1))))  # 64 x 32 x 32
        c4 = F.relu(self.conv4(torch.cat([c1, c3], dim=1)))  # 80 -> 64
        return self.conv5(c4)


class DnCNN(nn.Module):
    """17-layer DnCNN predicting the noise: output = input - net(input)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1)
        for i in range(2, 17):
            setattr(self, f"conv{i}", nn.Conv2d(64, 64, 3, padding=1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(64, eps=1e-5, momentum=0.1))
        self.conv17 = nn.Conv2d(64, 1, 3, padding=1, bias=False)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        for i in range(2, 17):
            h = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(h)))
        return x - self.conv17(h)


HARDNET_CHANNELS = [(1, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)]


class HardNetBaseline(nn.Module):
    """The seed's Keras HardNet: biased convs, Keras 'same' padding, affine BN
    with Keras defaults (eps 1e-3, momentum 0.99 = PyTorch 0.01), raw input."""

    def __init__(self, dropout):
        super().__init__()
        for i, (cin, cout, stride) in enumerate(HARDNET_CHANNELS, start=1):
            # Keras 'same': stride 1 pads 1 all round, which is the layer's own
            # symmetric padding (PyTorch's fastest form); stride 2 on an even
            # input pads only bottom/right, an explicit F.pad in forward.
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, 3, stride=stride, padding=1 if stride == 1 else 0, bias=True))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))
        self.dropout = nn.Dropout(dropout)
        self.conv7 = nn.Conv2d(128, 128, 8, bias=True)

    def forward(self, x):
        for i, (_, _, stride) in enumerate(HARDNET_CHANNELS, start=1):
            if stride == 2:
                x = F.pad(x, (0, 1, 0, 1))
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.conv7(self.dropout(x)).flatten(1)


class HardNetOriginal(nn.Module):
    """kornia's HardNet: per-patch normalised input, bias-free convs with
    padding 1, non-affine BN, L2-normalised output."""

    def __init__(self, dropout):
        super().__init__()
        for i, (cin, cout, stride) in enumerate(HARDNET_CHANNELS, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout, affine=False))
        self.dropout = nn.Dropout(dropout)
        self.conv7 = nn.Conv2d(128, 128, 8, bias=False)
        self.bn7 = nn.BatchNorm2d(128, affine=False)

    def forward(self, x):
        flat = x.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1, unbiased=True).view(-1, 1, 1, 1)
        x = (x - mean) / (std + 1e-7)
        for i in range(1, 7):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        x = self.bn7(self.conv7(self.dropout(x))).flatten(1)
        return F.normalize(x, p=2.0, dim=1, eps=1e-12)


# name -> (constructor(dropout), seed, expected trainable, expected params+buffers, metadata)
MODELS = {
    "unet": (
        lambda p: UNet(),
        1,
        59_777,
        59_777,
        {"variant": "seed_shallow_unet", "bn_eps": "none", "bn_momentum": "none", "padding": "keras_same"},
    ),
    "dncnn": (
        lambda p: DnCNN(),
        2,
        556_096,
        556_096 + 15 * 2 * 64,
        {"variant": "dncnn17", "bn_eps": "1e-05", "bn_momentum": "0.1", "padding": "symmetric"},
    ),
    "hardnet_baseline": (
        HardNetBaseline,
        3,
        1_336_928 - 2 * (32 + 32 + 64 + 64 + 128 + 128),
        1_336_928,
        {"variant": "baseline", "bn_eps": "0.001", "bn_momentum": "0.01", "padding": "keras_same"},
    ),
    "hardnet_original": (
        HardNetOriginal,
        4,
        1_334_560,
        1_334_560 + 2 * (32 + 32 + 64 + 64 + 128 + 128 + 128),
        {"variant": "original", "bn_eps": "1e-05", "bn_momentum": "0.1", "padding": "symmetric"},
    ),
}


# --------------------------------------------------------------------------
# Data and initialisation
# --------------------------------------------------------------------------


def smooth_patches(gen, n):
    """n patches in 0..255: a random 4x4 field upsampled bilinearly (low
    frequencies, like image content) plus a little texture noise."""
    coarse = torch.rand(n, 1, 4, 4, generator=gen) * 255.0
    smooth = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    texture = torch.randn(n, 1, 32, 32, generator=gen) * 8.0
    return (smooth + texture).clamp(0.0, 255.0)


MASK64 = (1 << 64) - 1
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SAMPLE_SALT = 0x5DEECE66D  # seed ^ this: gradient sample positions
PROJ_SALT = 0x2545F4914F6CDD1D  # seed ^ this: gradient projection weights
GRAD_SAMPLES = 32
CHECK_VALUES = 8
WEIGHTS_RULE = "splitmix64-fnv1a, see tools/torch_reference.py"
GRADIENTS_RULE = "gradidx/gradsample (32 positions), gradproj/gradabs/gradnorm, see tools/torch_reference.py"


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for byte in name.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


class SplitMix64:
    """Scalar reference, the same steps as nhpatch::rng::Rng::next_u64."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + SPLITMIX_GAMMA) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def splitmix64_block(seed, n):
    """The first n outputs of SplitMix64(seed) at once: the k-th state is
    seed + k * gamma, and numpy's uint64 arithmetic wraps mod 2^64. A python
    loop would take minutes for the HardNets' million weights."""
    u = np.uint64
    with np.errstate(over="ignore"):
        z = u(seed) + np.arange(1, n + 1, dtype=np.uint64) * u(SPLITMIX_GAMMA)
        z = (z ^ (z >> u(30))) * u(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
        z = z ^ (z >> u(31))
    ref = SplitMix64(seed)
    assert [int(x) for x in z[:16]] == [ref.next_u64() for _ in range(min(n, 16))], seed
    return z


def unit_values(seed, n):
    """v_i = ((x_i >> 40) - 2^23) / 2^23: exact in float64 and in float32."""
    top = (splitmix64_block(seed, n) >> np.uint64(40)).astype(np.int64)
    return (top - (1 << 23)).astype(np.float64) / float(1 << 23)


def conv_weight_exponent(fan_in):
    """e with 2^-e nearest 1/sqrt(fan_in): e = round(log2(fan_in) / 2), halves
    up, which is bit_length(fan_in) // 2 in integers (no float log)."""
    e = fan_in.bit_length() // 2
    half = math.log2(fan_in) / 2
    assert e == math.floor(half + 0.5), fan_in
    return e


def formula_kinds(model):
    """state_dict name -> (kind, scale, offset) for every parameter and buffer
    the formula sets: value = offset + v * scale."""
    kinds = {}
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
            kinds[prefix + "weight"] = ("conv_weight", 2.0 ** -conv_weight_exponent(fan_in), 0.0)
            if m.bias is not None:
                kinds[prefix + "bias"] = ("conv_bias", 0.125, 0.0)
        elif isinstance(m, nn.BatchNorm2d):
            if m.affine:
                kinds[prefix + "weight"] = ("bn_weight", 0.5, 1.0)
                kinds[prefix + "bias"] = ("bn_bias", 0.125, 0.0)
            kinds[prefix + "running_mean"] = ("running_mean", 0.125, 0.0)
            kinds[prefix + "running_var"] = ("running_var", 0.5, 1.0)
    return kinds


def formula_values(name, numel, scale, offset):
    exact = offset + unit_values(fnv1a64(name), numel) * scale  # exact in float64
    values = exact.astype(np.float32)  # IEEE round to nearest, ties to even
    err = np.abs(values.astype(np.float64) - exact)
    if offset == 0.0:
        assert np.all(err == 0.0), name  # a power-of-two scale: exact
    else:
        assert np.all(err <= 2.0 ** -24), name  # half an ulp of [1, 1.5)
    return values


def init_by_formula(model):
    """Sets every parameter and buffer from the formula; returns the kinds."""
    kinds = formula_kinds(model)
    state = model.state_dict()
    assert sorted(kinds) == sorted(k for k in state if not k.endswith("num_batches_tracked"))
    with torch.no_grad():
        for name, (_, scale, offset) in kinds.items():
            t = state[name]
            t.copy_(torch.from_numpy(formula_values(name, t.numel(), scale, offset)).view(t.shape))
    return kinds


def check_tensors(model, kinds):
    """check.<name>: the first values of the first tensor of each kind and of
    the last conv weight (another fan_in)."""
    state = model.state_dict()
    picked = []
    for name, (kind, _, _) in kinds.items():
        if kind not in [kinds[p][0] for p in picked]:
            picked.append(name)
    picked.append([n for n, (kind, _, _) in kinds.items() if kind == "conv_weight"][-1])
    return {f"check.{n}": state[n].flatten()[:CHECK_VALUES].clone() for n in picked}


def shapes_metadata(model, kinds):
    state = model.state_dict()
    return ";".join(f"{n}=" + ",".join(str(d) for d in state[n].shape) for n in kinds)


def grad_summary(name, grad):
    """The gradient summary tensors of one parameter (see the docstring)."""
    g = grad.detach().to(torch.float32).flatten().numpy().astype(np.float64)
    n = g.size
    assert 0 < n < 2**24, (name, n)  # positions stay exact in F32
    seed = fnv1a64(name)
    rng = SplitMix64(seed ^ SAMPLE_SALT)
    idx = [rng.next_u64() % n for _ in range(GRAD_SAMPLES)]
    # g has 24 significant bits and w_i = m / 2^23 with |m| <= 2^23, so every
    # product is exact in float64 and fsum rounds the exact sum once.
    prod = g * unit_values(seed ^ PROJ_SALT, n)
    f32 = lambda x: torch.tensor([x], dtype=torch.float64).to(torch.float32)
    return {
        f"gradidx.{name}": torch.tensor(idx, dtype=torch.float64).to(torch.float32),
        f"gradsample.{name}": torch.from_numpy(g[idx]).to(torch.float32),
        f"gradproj.{name}": f32(math.fsum(prod.tolist())),
        f"gradabs.{name}": f32(math.fsum(np.abs(prod).tolist())),
        f"gradnorm.{name}": f32(math.sqrt(math.fsum((g * g).tolist()))),
    }


def grad_summary64(name, grad):
    """The float64 step's gradient at the same positions, and its projection
    and norm, rounded to f32 only when stored."""
    g = grad.detach().flatten().numpy().astype(np.float64)
    rng = SplitMix64(fnv1a64(name) ^ SAMPLE_SALT)
    idx = [rng.next_u64() % g.size for _ in range(GRAD_SAMPLES)]
    prod = g * unit_values(fnv1a64(name) ^ PROJ_SALT, g.size)
    f32 = lambda x: torch.tensor([x], dtype=torch.float64).to(torch.float32)
    return {
        f"gradsample64.{name}": torch.from_numpy(g[idx]).to(torch.float32),
        f"gradproj64.{name}": f32(math.fsum(prod.tolist())),
        f"gradnorm64.{name}": f32(math.sqrt(math.fsum((g * g).tolist()))),
    }


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def write_canonical(path, tensors, metadata):
    """safetensors with reproducible bytes: compact JSON, __metadata__ first
    with sorted keys, tensors sorted by name and laid out in that order, the
    header space-padded to a multiple of 8, F32 little-endian data."""
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous()
        data = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)
    check_readback(path, tensors, metadata)


def bits(t):
    """The raw bit patterns of a float tensor, so NaN compares equal to itself."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def check_readback(path, tensors, metadata):
    """The reference reader must accept the file and return the same bits."""
    back = load_file(path)
    assert sorted(back) == sorted(tensors), path
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, (path, name)
        assert torch.equal(bits(back[name]), bits(t.detach())), (path, name)
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == metadata, path


# --------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------


def golden_model(name):
    make, seed, want_trainable, want_total, extra_meta = MODELS[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(1000 + seed)

    model = make(0.3)
    kinds = init_by_formula(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(model.state_dict()[k].numel() for k in kinds)
    assert trainable == want_trainable, (name, trainable)
    assert total == want_total, (name, total)

    out = check_tensors(model, kinds)
    first = next(n for n, _ in model.named_parameters())
    out[f"checkproj.{first}"] = torch.from_numpy(unit_values(fnv1a64(first) ^ PROJ_SALT, CHECK_VALUES)).float()
    x = smooth_patches(gen, N)
    out["input"] = x

    model.eval()
    with torch.no_grad():
        out["eval_output"] = model(x)

    # Train step: dropout off so the result is deterministic and comparable.
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    # The same step in float64 from the same float32 weights and inputs: the
    # exact answer both float32 implementations approximate.
    model64 = copy.deepcopy(model).double()
    model.train()
    model64.train()
    model.zero_grad(set_to_none=False)
    y = model(x)
    y64 = model64(x.double())
    if name in ("unet", "dncnn"):
        target = (x - torch.randn(x.shape, generator=gen) * 10.0).clamp(0.0, 255.0)
        out["target"] = target
        loss = F.l1_loss(y, target, reduction="mean")
        loss64 = F.l1_loss(y64, target.double(), reduction="mean")
        loss_desc = "l1_mean(train_output, target)"
    else:
        proj = torch.randn(N, 128, generator=gen)
        out["proj"] = proj
        loss = (y * proj).sum()
        loss64 = (y64 * proj.double()).sum()
        loss_desc = "sum(train_output * proj)"
    loss.backward()
    loss64.backward()
    out["train_output64"] = y64.detach().float()
    out["train_loss64"] = loss64.detach().float()
    for pname, p in model64.named_parameters():
        out.update(grad_summary64(pname, p.grad))
    out["train_output"] = y.detach()
    out["train_loss"] = loss.detach()
    for pname, p in model.named_parameters():
        out.update(grad_summary(pname, p.grad))
    for mname, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            out[f"running_mean_after.{mname}"] = m.running_mean.detach().clone()
            out[f"running_var_after.{mname}"] = m.running_var.detach().clone()

    metadata = {
        "model": name,
        **extra_meta,
        "input_scaling": "per_patch_norm" if name == "hardnet_original" else "raw_0_255",
        "dropout": "0.3 (eval: inactive; train step: p = 0)" if name.startswith("hardnet") else "none",
        "train_loss": loss_desc,
        "batch": str(N),
        "seed": str(seed),
        "weights": WEIGHTS_RULE,
        "shapes": shapes_metadata(model, kinds),
        "gradients": GRADIENTS_RULE,
        "torch_version": torch.__version__.split("+")[0],
        "format_version": FORMAT_VERSION,
        "generator": GENERATOR,
    }
    path = os.path.join(OUT_DIR, f"{name}.safetensors")
    write_canonical(path, out, metadata)
    print(f"{name:17s} trainable params {trainable:>9,}  params+buffers {total:>9,}  -> {os.path.getsize(path):>9,} bytes")


def save_with_torch(name, tensors):
    """save_file with a single metadata key: with two or more, save_file's
    key order (and so its bytes) changes from run to run."""
    metadata = {"format_version": FORMAT_VERSION}
    path = os.path.join(OUT_DIR, f"{name}.safetensors")
    save_file(tensors, path, metadata=metadata)
    check_readback(path, tensors, metadata)
    print(f"{name:17s} {os.path.getsize(path):>58,} bytes")


def golden_tiny():
    """Written by save_file itself: nhpatch must read it and, saving it
    again, reproduce it byte for byte."""
    weight = (torch.arange(18, dtype=torch.float32).reshape(2, 1, 3, 3) - 8.5) / 4.0
    bias = torch.tensor([0.5, -1.25, 3.0e-3], dtype=torch.float32)
    special = torch.tensor(
        [-0.0, 1.0e-40, 3.4028234663852886e38, float("-inf"), 1.0 / 3.0, -2.5e-8], dtype=torch.float32
    )
    empty = torch.zeros(0, 3, dtype=torch.float32)
    tensors = {"conv.weight": weight, "fc.bias": bias, "special": special, "empty": empty}
    save_with_torch("tiny_torch", tensors)


def golden_dtypes():
    """Reduced and double precision tensors and torch's conversion of each to
    F32, for the reader's dtype conversions."""
    values = [0.0, -0.0, 1.0, -2.5, 1.0 / 3.0, 65504.0, 6.0e-8, 1.0e-5, 3.0e38, 1.0e300, 1.0e-300,
              float("inf"), float("-inf"), float("nan"), 0.1, -123.456]
    base = torch.tensor(values, dtype=torch.float64)
    tensors = {}
    for dt, key in ((torch.float16, "f16"), (torch.bfloat16, "bf16"), (torch.float64, "f64")):
        t = base.to(dt).reshape(2, 8)
        tensors[key] = t
        tensors[f"{key}_as_f32"] = t.to(torch.float32)
    save_with_torch("dtypes_torch", tensors)


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # a fixed reduction order, so reruns give the same bits
    torch.set_default_dtype(torch.float32)
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in MODELS:
        golden_model(name)
    golden_tiny()
    golden_dtypes()
    total = sum(os.path.getsize(os.path.join(OUT_DIR, f)) for f in os.listdir(OUT_DIR) if f.endswith(".safetensors"))
    print(f"{'total':17s} {total:>58,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
