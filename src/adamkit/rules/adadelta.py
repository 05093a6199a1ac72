"""Adadelta (Zeiler, 2012): step sizes from the ratio of two running averages, of past
updates and of past gradients, so that the update has the parameter's units."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath, as_number


class AdadeltaCoefficients(NamedTuple):
    rho: Any
    one_minus_rho: Any
    eps: Any
    step_scale: Any


def adadelta_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> AdadeltaCoefficients:
    """torch passes ``-lr`` as ``add``'s ``alpha``, a number even when ``lr`` is a tensor."""
    lr = as_number(hp["lr"])
    return AdadeltaCoefficients(hp["rho"], 1 - hp["rho"], hp["eps"], -lr)


def adadelta_update(param, grad, square_avg, acc_delta, unused2, unused3, c: AdadeltaCoefficients):
    """One Adadelta step, elementwise:

        v = rho v + (1 - rho) g^2
        delta = sqrt(u + eps) / sqrt(v + eps) * g
        u = rho u + (1 - rho) delta^2
        param -= lr * delta

    >>> import torch
    >>> c = adadelta_coefficients({"lr": 1.0, "rho": 0.5, "eps": 0.0}, 1.0)
    >>> adadelta_update(torch.tensor([1.0]), torch.tensor([2.0]), torch.zeros(1), torch.ones(1), None, None, c)
    (tensor([-0.4142]), tensor([2.]), tensor([1.5000]), None, None)
    """
    square_avg = ops.ema_square(square_avg, grad, c.rho, c.one_minus_rho)
    delta = ops.div(ops.sqrt(acc_delta + c.eps), ops.sqrt(square_avg + c.eps)) * grad
    acc_delta = ops.ema_square(acc_delta, delta, c.rho, c.one_minus_rho)
    return ops.add_scaled(param, delta, c.step_scale), square_avg, acc_delta, unused2, unused3


adadelta = Rule(
    "adadelta", ("square_avg", "acc_delta"), adadelta_coefficients, adadelta_update, complex_step_unfused=True,
)
