"""RAdam (Liu et al., ICLR 2020): Adam whose adaptive step is rectified, and left out while
the second moment's estimate is too young (the approximated SMA length ``rho_t <= 5``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor, is_tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath


class RAdamCoefficients(NamedTuple):
    one_minus_beta1: Any
    beta2: Any
    one_minus_beta2: Any
    bias_correction1: Any
    lr: Any
    eps: Any
    sqrt_bias_correction2: Any
    rect: Any
    rectified: bool
    on_device: bool  # torch's capturable path: the branch is a select, taken on the device


def radam_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> RAdamCoefficients:
    """torch's expressions: ``rho_inf = 2 / (1 - beta2) - 1``, ``rho_t = rho_inf - 2 t
    beta2^t / (1 - beta2^t)`` and, when ``rho_t > 5``, the rectification ``sqrt((rho_t -
    4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))``. A tensor step stays a
    tensor only on the capturable path, as in torch."""
    beta1, beta2 = hp["betas"]
    on_device = is_tensor(step) and bool(hp.get("capturable"))
    if is_tensor(step) and not on_device:
        step = step.item()
    if on_device:
        power, sqrt = (lambda base, exponent: base**exponent), (lambda x: x**0.5)
    else:
        power, sqrt = scalars.power, scalars.sqrt
    bias_correction1 = 1 - power(beta1, step)
    bias_correction2 = 1 - power(beta2, step)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * power(beta2, step) / bias_correction2
    rectified = rho_t > 5.0
    rect = 1.0
    if on_device or rectified:
        rect = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    return RAdamCoefficients(
        1 - beta1, beta2, 1 - beta2, bias_correction1, hp["lr"], hp["eps"], sqrt(bias_correction2), rect,
        rectified, on_device,
    )


def radam_update(param, grad, exp_avg, exp_avg_sq, unused2, unused3, c: RAdamCoefficients):
    """One RAdam step, elementwise:

        m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
        param -= lr m / (1 - beta1^t) * sqrt(1 - beta2^t) / (sqrt(v) + eps) * rect   (rho_t > 5)
        param -= lr m / (1 - beta1^t)                                                (otherwise)

    >>> import torch
    >>> hp = {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8}
    >>> c = radam_coefficients(hp, 1.0)  # rho_1 = 1: not rectified, a momentum step
    >>> radam_update(torch.tensor([1.0]), torch.tensor([2.0]), torch.zeros(1), torch.zeros(1), None, None, c)[0]
    tensor([0.8000])
    """
    exp_avg = ops.lerp(exp_avg, grad, c.one_minus_beta1)
    exp_avg_sq = ops.ema_square(exp_avg_sq, grad, c.beta2, c.one_minus_beta2)
    update = ops.div(exp_avg, c.bias_correction1) * c.lr
    if c.on_device:
        adaptive = ops.div(c.sqrt_bias_correction2, ops.sqrt(exp_avg_sq) + c.eps)
        update = update * ops.where(c.rectified, c.rect * adaptive, 1.0)
    elif c.rectified:
        adaptive = ops.reciprocal(ops.sqrt(exp_avg_sq) + c.eps) * c.sqrt_bias_correction2
        update = update * adaptive * c.rect
    return param - update, exp_avg, exp_avg_sq, unused2, unused3


radam = Rule("radam", ("exp_avg", "exp_avg_sq"), radam_coefficients, radam_update, decays_real_view=True)
