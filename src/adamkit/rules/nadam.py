"""NAdam (Dozat, 2016): Adam with Nesterov momentum, its momentum decaying on the
schedule ``mu_t = beta1 (1 - 0.5 * 0.96^(t psi))`` (``psi``: ``momentum_decay``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor, is_tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath


class NAdamCoefficients(NamedTuple):
    one_minus_beta1: Any
    beta2: Any
    one_minus_beta2: Any
    bias_correction2: Any
    eps: Any
    grad_scale: Any
    momentum_scale: Any
    scales_first: bool  # torch's capturable and differentiable paths scale the numerators before dividing
    mu_product: Any  # the new product of the momentum schedule, kept in the state


def nadam_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH, mu_product: Any = 1.0
) -> NAdamCoefficients:
    """torch's expressions. ``mu_product`` (a 0-dim tensor) is multiplied by ``mu_t`` in
    its own dtype; the step sizes use it as a Python number, or as a tensor where torch
    keeps tensors (capturable, differentiable)."""
    beta1, beta2 = hp["betas"]
    lr, momentum_decay = hp["lr"], hp["momentum_decay"]
    on_device = is_tensor(step) and bool(hp.get("capturable"))
    if is_tensor(step) and not on_device:
        step = step.item()
    power = (lambda base, exponent: base**exponent) if on_device else scalars.power
    bias_correction2 = 1 - power(beta2, step)
    mu = beta1 * (1.0 - 0.5 * power(0.96, step * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * power(0.96, (step + 1) * momentum_decay))
    mu_product = mu_product * mu
    as_tensors = on_device or bool(hp.get("differentiable"))
    product = mu_product if as_tensors else mu_product.item()
    product_next = product * mu_next
    return NAdamCoefficients(
        1 - beta1, beta2, 1 - beta2, bias_correction2, hp["eps"],
        -lr * (1.0 - mu) / (1.0 - product), -lr * mu_next / (1.0 - product_next), as_tensors, mu_product,
    )


def nadam_update(param, grad, exp_avg, exp_avg_sq, unused2, unused3, c: NAdamCoefficients):
    """One NAdam step, elementwise (``mu_t`` the momentum schedule, ``P_t`` its product):

        m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
        d = sqrt(v / (1 - beta2^t)) + eps
        param -= lr (1 - mu_t) / (1 - P_t) g / d + lr mu_(t+1) / (1 - P_(t+1)) m / d

    >>> import torch
    >>> hp = {"lr": 0.1, "betas": (0.9, 0.999), "eps": 0.0, "momentum_decay": 0.004}
    >>> c = nadam_coefficients(hp, 1.0, mu_product=torch.tensor(1.0))
    >>> nadam_update(torch.tensor([1.0]), torch.tensor([2.0]), torch.zeros(1), torch.zeros(1), None, None, c)[0]
    tensor([0.8944])
    """
    exp_avg = ops.lerp(exp_avg, grad, c.one_minus_beta1)
    exp_avg_sq = ops.ema_square(exp_avg_sq, grad, c.beta2, c.one_minus_beta2)
    denom = ops.sqrt(ops.div(exp_avg_sq, c.bias_correction2)) + c.eps
    if c.scales_first:
        param = ops.addcdiv(ops.addcdiv(param, grad * c.grad_scale, denom, 1), exp_avg * c.momentum_scale, denom, 1)
    else:
        param = ops.addcdiv(ops.addcdiv(param, grad, denom, c.grad_scale), exp_avg, denom, c.momentum_scale)
    return param, exp_avg, exp_avg_sq, unused2, unused3


nadam = Rule(
    "nadam", ("exp_avg", "exp_avg_sq"), nadam_coefficients, nadam_update,
    decays_real_view=True, scalar_state=(("mu_product", 1.0),),
)
