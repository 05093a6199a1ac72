"""Yogi (Zaheer, Reddi, Sachan, Kale & Kumar, NeurIPS 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.adam import bias_corrections
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath


class YogiCoefficients(NamedTuple):
    one_minus_beta1: Any
    one_minus_beta2: Any
    denom_scale: Any
    denom_shift: Any
    step_scale: Any


def yogi_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> YogiCoefficients:
    beta1, beta2 = hp["betas"]
    return YogiCoefficients(1 - beta1, 1 - beta2, *bias_corrections(hp, step, scalars))


def yogi_update(param, grad, exp_avg, exp_avg_sq, unused2, unused3, c: YogiCoefficients):
    """One Yogi step: Adam with an additive, sign-controlled second moment.

        m = beta1 m + (1 - beta1) g
        v = v - (1 - beta2) sign(v - g^2) g^2

    so ``v`` moves by at most ``(1 - beta2) g^2`` per step, however far it is from
    ``g^2``; Adam's ``v`` instead jumps to a fraction of a large ``g^2`` at once. The
    update is then Adam's, bias-corrected.

    >>> import torch
    >>> c = yogi_coefficients({"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-3}, 1.0)
    >>> _, _, v, _, _ = yogi_update(torch.zeros(1), torch.tensor([2.0]), torch.zeros(1), torch.zeros(1), None, None, c)
    >>> v  # + (1 - beta2) * g^2
    tensor([0.0040])
    """
    exp_avg = ops.lerp(exp_avg, grad, c.one_minus_beta1)
    grad_sq = grad * grad
    exp_avg_sq = exp_avg_sq - c.one_minus_beta2 * ops.sign(exp_avg_sq - grad_sq) * grad_sq
    denom = ops.div(ops.sqrt(exp_avg_sq), c.denom_scale) + c.denom_shift
    return ops.addcdiv(param, exp_avg, denom, c.step_scale), exp_avg, exp_avg_sq, unused2, unused3


yogi = Rule("yogi", ("exp_avg", "exp_avg_sq"), yogi_coefficients, yogi_update)
