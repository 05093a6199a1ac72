"""ADOPT (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2"):
the gradient is normalized by the second moment of the steps before it, then clipped
and averaged; the first step only measures the gradient's square."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath, as_number


class ADOPTCoefficients(NamedTuple):
    first: bool  # step 1 only initializes the second moment
    one_minus_beta1: Any
    beta2: Any
    one_minus_beta2: Any
    eps: Any
    clip: Any  # |normalized gradient| <= step ** clip_exponent; inf without clipping
    step_scale: Any
    infinity: Any  # the square root's upper bound (none); a coefficient, as kernels take no globals


def adopt_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> ADOPTCoefficients:
    beta1, beta2 = hp["betas"]
    step = as_number(step)
    lr = as_number(hp["lr"])
    exponent = hp["clip_exponent"]
    clip = math.inf if exponent is None else scalars.power(step, exponent)
    return ADOPTCoefficients(step == 1, 1 - beta1, beta2, 1 - beta2, hp["eps"], clip, -lr, math.inf)


def adopt_update(param, grad, exp_avg, exp_avg_sq, unused2, unused3, c: ADOPTCoefficients):
    """One ADOPT step, elementwise (``v`` is ``g^2`` after step 1, which moves nothing):

        n = clamp(g / max(sqrt(v), eps), -clip, clip)
        m = beta1 m + (1 - beta1) n
        param -= lr m
        v = beta2 v + (1 - beta2) g^2

    >>> import torch
    >>> hp = {"lr": 0.1, "betas": (0.5, 0.5), "eps": 1e-6, "clip_exponent": 0.25}
    >>> adopt_update(torch.tensor([1.0]), torch.tensor([2.0]), torch.zeros(1), torch.zeros(1), None, None,
    ...              adopt_coefficients(hp, 1.0))
    (tensor([1.]), tensor([0.]), tensor([4.]), None, None)
    >>> adopt_update(torch.tensor([1.0]), torch.tensor([4.0]), torch.zeros(1), torch.tensor([4.0]), None, None,
    ...              adopt_coefficients(hp, 2.0))
    (tensor([0.9405]), tensor([0.5946]), tensor([10.]), None, None)
    """
    if c.first:
        return param, exp_avg, ops.addcmul(exp_avg_sq, grad, grad, 1), unused2, unused3
    normalized = ops.div(grad, ops.clamp(ops.sqrt(exp_avg_sq), c.eps, c.infinity))
    exp_avg = ops.lerp(exp_avg, ops.clamp(normalized, -c.clip, c.clip), c.one_minus_beta1)
    param = ops.add_scaled(param, exp_avg, c.step_scale)
    return param, exp_avg, ops.ema_square(exp_avg_sq, grad, c.beta2, c.one_minus_beta2), unused2, unused3


adopt = Rule("adopt", ("exp_avg", "exp_avg_sq"), adopt_coefficients, adopt_update)
