"""Adam (Kingma & Ba, 2015) and its AMSGrad variant (Reddi, Kale & Kumar, 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor, is_tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath


class AdamCoefficients(NamedTuple):
    one_minus_beta1: Any
    beta2: Any
    one_minus_beta2: Any
    denom_scale: Any
    denom_shift: Any
    step_scale: Any
    amsgrad: bool


def bias_corrections(hp: Mapping, step: float | Tensor, scalars: ScalarMath = TORCH) -> tuple[Any, Any, Any]:
    """``(denom_scale, denom_shift, step_scale)`` of Adam's bias-corrected update.

    The update is ``param + step_scale * m / (sqrt(v) / denom_scale + denom_shift)``;
    with a float step that is ``-lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t)
    + eps)``, with powers and square root from ``scalars``. A tensor step (capturable,
    differentiable) folds the step size into the denominator instead, as torch does:
    turning it into a Python number would sync the device and cut the autograd graph.
    """
    lr, eps = hp["lr"], hp["eps"]
    beta1, beta2 = hp["betas"]
    if is_tensor(step):
        step_size_neg = -(lr / (1 - beta1**step))
        return (1 - beta2**step).sqrt() * step_size_neg, eps / step_size_neg, 1
    step_size = lr / (1 - scalars.power(beta1, step))
    return scalars.sqrt(1 - scalars.power(beta2, step)), eps, -step_size


def adam_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> AdamCoefficients:
    beta1, beta2 = hp["betas"]
    return AdamCoefficients(1 - beta1, beta2, 1 - beta2, *bias_corrections(hp, step, scalars), bool(hp["amsgrad"]))


def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, unused3, c: AdamCoefficients):
    """One Adam step, elementwise:

        m = beta1 m + (1 - beta1) g
        v = beta2 v + (1 - beta2) g^2          (AMSGrad: v_max = max(v_max, v))
        param -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    >>> import torch
    >>> hp = {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}
    >>> c = adam_coefficients(hp, 1.0)
    >>> adam_update(torch.tensor([0.5]), torch.tensor([1.0]), torch.zeros(1), torch.zeros(1), None, None, c)
    (tensor([0.4000]), tensor([0.1000]), tensor([0.0010]), None, None)
    """
    exp_avg = ops.lerp(exp_avg, grad, c.one_minus_beta1)
    exp_avg_sq = ops.ema_square(exp_avg_sq, grad, c.beta2, c.one_minus_beta2)
    second_moment = exp_avg_sq
    if c.amsgrad:
        max_exp_avg_sq = ops.maximum(max_exp_avg_sq, exp_avg_sq)
        second_moment = max_exp_avg_sq
    denom = ops.div(ops.sqrt(second_moment), c.denom_scale) + c.denom_shift
    return ops.addcdiv(param, exp_avg, denom, c.step_scale), exp_avg, exp_avg_sq, max_exp_avg_sq, unused3


adam = Rule("adam", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), adam_coefficients, adam_update)
