"""Bit-exact snapshots of an optimizer's parameters, gradients and state, to tell that a
step changed nothing (or exactly what another run changed)."""

from __future__ import annotations

import torch


def bits(t: torch.Tensor, nan_payloads: bool = True):
    """``t``'s dtype, shape and bytes (NaNs compare equal to themselves, and without
    ``nan_payloads`` to every NaN); a sparse tensor's indices and values."""
    if t.is_sparse:
        t = t.coalesce()
        return ("sparse", bits(t.indices()), bits(t.values(), nan_payloads))
    if not nan_payloads and (t.is_floating_point() or t.is_complex()):
        real = torch.view_as_real(t.detach()) if t.is_complex() else t.detach()
        t = torch.where(torch.isnan(real), float("nan"), real)
    data = t.detach().reshape(-1).contiguous().view(torch.uint8).clone() if t.numel() else None
    return (t.dtype, tuple(t.shape), data)


def snapshot(optimizer, params, nan_payloads: bool = True) -> dict:
    state = {}
    for index, p in enumerate(params):
        if p in optimizer.state:
            state[index] = {k: bits(v, nan_payloads) if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
    return {
        "params": [bits(p, nan_payloads) for p in params],
        "grads": [None if p.grad is None else bits(p.grad, nan_payloads) for p in params],
        "state": state,
        "rounds": getattr(optimizer, "rounds", None),
        "skipped": getattr(optimizer, "skipped_steps", None),
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b
