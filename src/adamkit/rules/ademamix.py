"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024, "The AdEMAMix Optimizer: Better,
Faster, Older"): Adam plus a second, slow momentum (``beta3`` near 1) added with weight
``alpha``; both may warm up over ``t_alpha_beta3`` steps, as in the paper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath, as_number


class AdEMAMixCoefficients(NamedTuple):
    one_minus_beta1: Any
    beta2: Any
    one_minus_beta2: Any
    one_minus_beta3: Any
    alpha: Any
    bias_correction1: Any
    sqrt_bias_correction2: Any
    eps: Any
    step_scale: Any


def ademamix_schedules(hp: Mapping, step: float, scalars: ScalarMath = TORCH) -> tuple[float, float]:
    """``(alpha_t, beta3_t)``: without ``t_alpha_beta3`` the constants; with it, alpha
    rises linearly from 0 and beta3 so that the slow momentum's half-life grows linearly,
    from beta1's to beta3's, both reached at step ``T = t_alpha_beta3``:
    ``beta3_t = exp(ln b1 ln b3 / ((1 - t/T) ln b3 + (t/T) ln b1))``.

    >>> ademamix_schedules({"betas": (0.9, 0.999, 0.9999), "alpha": 2.0, "t_alpha_beta3": 100}, 50.0)
    (1.0, 0.9998001996254803)
    """
    beta1, _, beta3 = hp["betas"]
    alpha, warmup = hp["alpha"], hp["t_alpha_beta3"]
    if warmup is None:
        return alpha, beta3
    log_beta1, log_beta3 = scalars.log(beta1), scalars.log(beta3)
    fraction = step / warmup
    beta3_t = scalars.exp(log_beta1 * log_beta3 / ((1.0 - fraction) * log_beta3 + fraction * log_beta1))
    return min(step * alpha / warmup, alpha), min(beta3_t, beta3)


def ademamix_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> AdEMAMixCoefficients:
    beta1, beta2, _ = hp["betas"]
    step = as_number(step)
    lr = as_number(hp["lr"])
    alpha, beta3 = ademamix_schedules(hp, step, scalars)
    return AdEMAMixCoefficients(
        1 - beta1, beta2, 1 - beta2, 1 - beta3, alpha, 1 - scalars.power(beta1, step),
        scalars.sqrt(1 - scalars.power(beta2, step)), hp["eps"], -lr,
    )


def ademamix_update(param, grad, exp_avg, exp_avg_sq, exp_avg_slow, unused3, c: AdEMAMixCoefficients):
    """One AdEMAMix step, elementwise:

        m1 = beta1 m1 + (1 - beta1) g ;  m2 = beta3 m2 + (1 - beta3) g
        v = beta2 v + (1 - beta2) g^2
        param -= lr (m1 / (1 - beta1^t) + alpha m2) / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    >>> import torch
    >>> hp = {"lr": 0.1, "betas": (0.5, 0.5, 0.5), "eps": 0.0, "alpha": 2.0, "t_alpha_beta3": None}
    >>> c = ademamix_coefficients(hp, 1.0)
    >>> zeros = torch.zeros(1)
    >>> ademamix_update(torch.tensor([1.0]), torch.tensor([2.0]), zeros, zeros, zeros, None, c)
    (tensor([0.8000]), tensor([1.]), tensor([2.]), tensor([1.]), None)
    """
    exp_avg = ops.lerp(exp_avg, grad, c.one_minus_beta1)
    exp_avg_sq = ops.ema_square(exp_avg_sq, grad, c.beta2, c.one_minus_beta2)
    exp_avg_slow = ops.lerp(exp_avg_slow, grad, c.one_minus_beta3)
    denom = ops.div(ops.sqrt(exp_avg_sq), c.sqrt_bias_correction2) + c.eps
    update = ops.add_scaled(ops.div(exp_avg, c.bias_correction1), exp_avg_slow, c.alpha)
    return ops.addcdiv(param, update, denom, c.step_scale), exp_avg, exp_avg_sq, exp_avg_slow, unused3


ademamix = Rule("ademamix", ("exp_avg", "exp_avg_sq", "exp_avg_slow"), ademamix_coefficients, ademamix_update)
