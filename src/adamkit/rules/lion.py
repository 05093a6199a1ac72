"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"): the sign
of an interpolation of momentum and gradient, one momentum tensor, no second moment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath, as_number


class LionCoefficients(NamedTuple):
    beta1: Any
    one_minus_beta1: Any
    beta2: Any
    one_minus_beta2: Any
    step_scale: Any


def lion_coefficients(
    hp: Mapping, step: float | Tensor | None, fresh: bool = False, scalars: ScalarMath = TORCH
) -> LionCoefficients:
    beta1, beta2 = hp["betas"]
    lr = as_number(hp["lr"])
    return LionCoefficients(beta1, 1 - beta1, beta2, 1 - beta2, -lr)


def lion_update(param, grad, exp_avg, unused1, unused2, unused3, c: LionCoefficients):
    """One Lion step, elementwise (the authors' order of operations):

        param -= lr * sign(beta1 m + (1 - beta1) g)
        m = beta2 m + (1 - beta2) g

    >>> import torch
    >>> c = lion_coefficients({"lr": 0.1, "betas": (0.9, 0.99)}, None)
    >>> lion_update(torch.tensor([1.0, 1.0]), torch.tensor([0.5, -3.0]), torch.tensor([-1.0, 1.0]), None, None, None, c)
    (tensor([1.1000, 0.9000]), tensor([-0.9850,  0.9600]), None, None, None)
    """
    direction = ops.sign(ops.add_scaled(exp_avg * c.beta1, grad, c.one_minus_beta1))
    param = ops.add_scaled(param, direction, c.step_scale)
    return param, ops.add_scaled(exp_avg * c.beta2, grad, c.one_minus_beta2), unused1, unused2, unused3


lion = Rule("lion", ("exp_avg",), lion_coefficients, lion_update)
