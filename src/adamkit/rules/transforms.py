"""Gradient transforms shared by every algorithm: applied before its rule."""

from __future__ import annotations

import torch
from torch import Tensor


def maximize_and_weight_decay(
    param: Tensor,
    grad: Tensor,
    *,
    lr: float | Tensor,
    weight_decay: float | Tensor,
    maximize: bool,
    decoupled: bool,
) -> tuple[Tensor, Tensor]:
    """Return ``(param, grad)`` after ``maximize`` and weight decay.

    ``maximize`` negates the gradient. L2 decay adds ``weight_decay * param`` to the
    (possibly negated) gradient, so it enters the moments; decoupled decay (AdamW)
    shrinks the parameter by ``1 - lr * weight_decay`` and leaves the gradient alone.
    Both run on the tensors as given, complex included, before any real view is taken.

    >>> p, g = torch.tensor([2.0]), torch.tensor([1.0])
    >>> maximize_and_weight_decay(p, g, lr=0.1, weight_decay=0.5, maximize=True, decoupled=False)
    (tensor([2.]), tensor([0.]))
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decoupled:
            param = param.mul(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    return param, grad
