"""Stochastic gradient descent with momentum, dampening and Nesterov momentum."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def sgd(
    param: Tensor, grad: Tensor, state: Mapping[str, Tensor], hp: Mapping, step: None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """One SGD step. With momentum mu and dampening tau:

        b = g                              (first step)
        b = mu b + (1 - tau) g             (later steps)
        d = g + mu b  (Nesterov)  or  b
        param -= lr d

    The momentum buffer is created from the first gradient, as torch.optim.SGD does,
    so ``state`` has no ``momentum_buffer`` before the first step.

    >>> p, g = torch.tensor([1.0]), torch.tensor([0.5])
    >>> hp = {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": False}
    >>> sgd(p, g, {}, hp)
    (tensor([0.9500]), {'momentum_buffer': tensor([0.5000])})
    """
    lr, momentum = hp["lr"], hp["momentum"]
    new_state = {}
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = grad.detach().clone()
        else:
            buf = buf.mul(momentum).add_(grad, alpha=1 - hp["dampening"])
        new_state["momentum_buffer"] = buf
        grad = grad.add(buf, alpha=momentum) if hp["nesterov"] else buf

    if isinstance(lr, Tensor) and lr.requires_grad:
        return param.addcmul(grad, lr, value=-1), new_state
    return param.add(grad, alpha=-lr), new_state
