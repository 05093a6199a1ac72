"""Adamax (Kingma & Ba, 2015, section 7.1): Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor, is_tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath, as_number


class AdamaxCoefficients(NamedTuple):
    one_minus_beta1: Any
    beta2: Any
    eps: Any
    denom_scale: Any
    step_scale: Any


def adamax_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> AdamaxCoefficients:
    """With a float step, ``param - lr / (1 - beta1^t) * m / u``. torch's capturable
    path keeps the step on the device and divides by ``u * (beta1^t - 1) / lr``
    instead; its other paths read the step as a number (differentiable too)."""
    beta1, beta2 = hp["betas"]
    if is_tensor(step) and hp.get("capturable"):
        return AdamaxCoefficients(1 - beta1, beta2, hp["eps"], (beta1**step - 1) / hp["lr"], 1)
    step = as_number(step)
    return AdamaxCoefficients(1 - beta1, beta2, hp["eps"], 1, -(hp["lr"] / (1 - scalars.power(beta1, step))))


def adamax_update(param, grad, exp_avg, exp_inf, unused2, unused3, c: AdamaxCoefficients):
    """One Adamax step, elementwise:

        m = beta1 m + (1 - beta1) g
        u = max(beta2 u, |g| + eps)
        param -= lr / (1 - beta1^t) * m / u

    >>> import torch
    >>> hp = {"lr": 0.1, "betas": (0.5, 0.5), "eps": 0.0}
    >>> c = adamax_coefficients(hp, 1.0)
    >>> adamax_update(torch.tensor([1.0]), torch.tensor([-2.0]), torch.zeros(1), torch.zeros(1), None, None, c)
    (tensor([1.1000]), tensor([-1.]), tensor([2.]), None, None)
    """
    exp_avg = ops.lerp(exp_avg, grad, c.one_minus_beta1)
    exp_inf = ops.maximum(exp_inf * c.beta2, ops.absolute(grad) + c.eps)
    return ops.addcdiv(param, exp_avg, exp_inf * c.denom_scale, c.step_scale), exp_avg, exp_inf, unused2, unused3


adamax = Rule("adamax", ("exp_avg", "exp_inf"), adamax_coefficients, adamax_update)
