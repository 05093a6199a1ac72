"""Adan (Xie et al., 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
Optimizing Deep Models"): Adam's moments plus a momentum of gradient differences, which
stands in for Nesterov's look-ahead without a second gradient evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath, as_number


class AdanCoefficients(NamedTuple):
    first: bool  # step 1: no previous gradient, so the difference is 0
    one_minus_beta1: Any
    beta2: Any
    one_minus_beta2: Any
    beta3: Any
    one_minus_beta3: Any
    sqrt_bias_correction3: Any
    eps: Any
    decay_factor: Any  # 1 - lr * weight_decay with no_prox, else 1
    prox_divisor: Any  # 1 + lr * weight_decay without no_prox (the proximal step), else 1
    step_scale: Any  # -lr / (1 - beta1^t)
    diff_step_scale: Any  # -lr beta2 / (1 - beta2^t)


def adan_coefficients(hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH) -> AdanCoefficients:
    beta1, beta2, beta3 = hp["betas"]
    step = as_number(step)
    lr = as_number(hp["lr"])
    decay = lr * hp["weight_decay"]
    return AdanCoefficients(
        step == 1, 1 - beta1, beta2, 1 - beta2, beta3, 1 - beta3, scalars.sqrt(1 - scalars.power(beta3, step)),
        hp["eps"], 1 - decay if hp["no_prox"] else 1.0, 1.0 if hp["no_prox"] else 1 + decay,
        -lr / (1 - scalars.power(beta1, step)), -lr * beta2 / (1 - scalars.power(beta2, step)),
    )


def adan_update(param, grad, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, c: AdanCoefficients):
    """One Adan step, elementwise (``d = g - g_prev``, 0 at step 1; the state keeps
    ``-g_prev``, as the authors' code does):

        m = beta1 m + (1 - beta1) g ;  a = beta2 a + (1 - beta2) d
        n = beta3 n + (1 - beta3) (g + beta2 d)^2
        param -= lr (m / (1 - beta1^t) + beta2 a / (1 - beta2^t)) / (sqrt(n / (1 - beta3^t)) + eps)

    and weight decay as a proximal step, ``param /= 1 + lr wd`` (with ``no_prox``, as
    AdamW's ``param *= 1 - lr wd`` before the update).

    >>> import torch
    >>> hp = {"lr": 0.1, "betas": (0.5, 0.5, 0.5), "eps": 0.0, "weight_decay": 0.0, "no_prox": False}
    >>> zeros = torch.zeros(1)
    >>> adan_update(torch.tensor([1.0]), torch.tensor([2.0]), zeros, zeros, zeros, zeros, adan_coefficients(hp, 1.0))
    (tensor([0.9000]), tensor([1.]), tensor([2.]), tensor([0.]), tensor([-2.]))
    """
    if c.first:
        neg_pre_grad = -grad
    difference = neg_pre_grad + grad
    exp_avg = ops.lerp(exp_avg, grad, c.one_minus_beta1)
    exp_avg_diff = ops.lerp(exp_avg_diff, difference, c.one_minus_beta2)
    exp_avg_sq = ops.ema_square(exp_avg_sq, difference * c.beta2 + grad, c.beta3, c.one_minus_beta3)
    denom = ops.div(ops.sqrt(exp_avg_sq), c.sqrt_bias_correction3) + c.eps
    param = ops.addcdiv(param * c.decay_factor, exp_avg, denom, c.step_scale)
    param = ops.div(ops.addcdiv(param, exp_avg_diff, denom, c.diff_step_scale), c.prox_divisor)
    return param, exp_avg, exp_avg_sq, exp_avg_diff, -grad


adan = Rule(
    "adan", ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad"), adan_coefficients, adan_update,
    decays_in_update=True,
)
