#!/usr/bin/env python3
"""PyTorch reference of SOSNet's second-order similarity regulariser as
nhpatch defines it (src/loss/sos.rs): prints the loss, the neighbour mask
and the gradients for the fixed 4 x 3 case of tests/grad_losses.rs
(`sos_matches_pytorch`), in float64 with autograd.

    python3 tools/sos_reference.py
"""
import torch

torch.set_default_dtype(torch.float64)


def sos(a, p, k, w):
    b = a.shape[0]
    da = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1).add(1e-6).sqrt()
    dp = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1).add(1e-6).sqrt()
    # Each row's k nearest in either view, itself excluded; the sets are constants.
    skip_self = torch.eye(b) * 1e9
    ia = torch.topk(da.detach() + skip_self, k, largest=False).indices
    ip = torch.topk(dp.detach() + skip_self, k, largest=False).indices
    mask = torch.zeros(b, b)
    mask.scatter_(1, ia, 1.0)
    mask.scatter_(1, ip, 1.0)
    rows = (((da - dp) ** 2) * mask).sum(1).add(1e-8).sqrt()
    return w * rows.mean(), mask


def main():
    a = torch.tensor([[0.1, 0.5, -0.3], [0.7, -0.2, 0.4], [-0.6, 0.3, 0.9], [0.2, -0.8, -0.1]], requires_grad=True)
    p = torch.tensor([[0.3, 0.4, -0.2], [0.5, 0.1, 0.6], [-0.4, -0.5, 0.8], [0.9, -0.7, 0.0]], requires_grad=True)
    loss, mask = sos(a, p, 1, 1.0)
    loss.backward()
    print("mask", mask.tolist())
    print("loss", repr(loss.item()))
    print("grad_a", [round(v, 9) for v in a.grad.flatten().tolist()])
    print("grad_p", [round(v, 9) for v in p.grad.flatten().tolist()])


if __name__ == "__main__":
    main()
