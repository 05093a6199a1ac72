"""Stochastic gradient descent with momentum, dampening and Nesterov momentum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath


class SGDCoefficients(NamedTuple):
    momentum: Any
    one_minus_dampening: Any
    nesterov: bool
    neg_lr: Any
    first_step: bool


def sgd_coefficients(hp: Mapping, step: None, fresh: bool, scalars: ScalarMath = TORCH) -> SGDCoefficients:
    """SGD counts no steps; ``fresh`` (no momentum buffer yet) starts the buffer from the gradient."""
    return SGDCoefficients(hp["momentum"], 1 - hp["dampening"], bool(hp["nesterov"]), -hp["lr"], fresh)


def sgd_update(param, grad, momentum_buffer, unused1, unused2, unused3, c: SGDCoefficients):
    """One SGD step. With momentum mu and dampening tau:

        b = g                              (first step)
        b = mu b + (1 - tau) g             (later steps)
        d = g + mu b  (Nesterov)  or  b
        param -= lr d

    The momentum buffer starts as the first gradient, as in torch.optim.SGD.

    >>> import torch
    >>> c = sgd_coefficients({"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": False}, None, True)
    >>> sgd_update(torch.tensor([1.0]), torch.tensor([0.5]), None, None, None, None, c)
    (tensor([0.9500]), tensor([0.5000]), None, None, None)
    """
    if c.momentum != 0:
        if c.first_step:
            momentum_buffer = ops.clone(grad)
        else:
            momentum_buffer = ops.add_scaled(momentum_buffer * c.momentum, grad, c.one_minus_dampening)
        if c.nesterov:
            grad = ops.add_scaled(grad, momentum_buffer, c.momentum)
        else:
            grad = momentum_buffer
    return ops.add_scaled(param, grad, c.neg_lr), momentum_buffer, unused1, unused2, unused3


sgd = Rule("sgd", ("momentum_buffer",), sgd_coefficients, sgd_update)
