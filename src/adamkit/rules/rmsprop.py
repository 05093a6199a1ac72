"""RMSProp (Tieleman & Hinton, 2012), optionally centered (Graves, 2013) and with momentum."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath


class RMSpropCoefficients(NamedTuple):
    alpha: Any
    one_minus_alpha: Any
    eps: Any
    centered: bool
    momentum: Any
    neg_lr: Any
    infinity: Any  # the variance's upper bound (none); a coefficient, as kernels take no globals


def rmsprop_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> RMSpropCoefficients:
    alpha = hp["alpha"]
    return RMSpropCoefficients(alpha, 1 - alpha, hp["eps"], bool(hp["centered"]), hp["momentum"], -hp["lr"], math.inf)


def rmsprop_update(param, grad, square_avg, grad_avg, momentum_buffer, unused3, c: RMSpropCoefficients):
    """One RMSProp step with smoothing constant alpha:

        s = alpha s + (1 - alpha) g^2
        a = alpha a + (1 - alpha) g ; d = sqrt(max(s - a^2, 0)) + eps    (centered)
        d = sqrt(s) + eps                                        (otherwise)
        b = momentum b + g / d ; param -= lr b     (momentum > 0)
        param -= lr g / d                          (otherwise)

    >>> import torch
    >>> hp = {"lr": 0.01, "alpha": 0.75, "eps": 0.0, "momentum": 0, "centered": False}
    >>> c = rmsprop_coefficients(hp, 1.0)
    >>> p, s, _, _, _ = rmsprop_update(torch.tensor([1.0]), torch.tensor([2.0]), torch.zeros(1), None, None, None, c)
    >>> p, s  # s = 0.25 * 4, p = 1 - 0.01 * 2 / 1
    (tensor([0.9800]), tensor([1.]))
    """
    square_avg = ops.ema_square(square_avg, grad, c.alpha, c.one_minus_alpha)
    if c.centered:
        grad_avg = ops.lerp(grad_avg, grad, c.one_minus_alpha)
        # s >= a^2 in exact arithmetic; rounded (low-precision state above all) s - a^2 can
        # fall below 0, where torch's square root gives NaN and loses the parameter.
        avg = ops.sqrt(ops.clamp(ops.addcmul(square_avg, grad_avg, grad_avg, -1), 0.0, c.infinity))
    else:
        avg = ops.sqrt(square_avg)
    avg = avg + c.eps
    if c.momentum > 0:
        momentum_buffer = ops.addcdiv(momentum_buffer * c.momentum, grad, avg, 1)
        param = ops.add_scaled(param, momentum_buffer, c.neg_lr)
    else:
        param = ops.addcdiv(param, grad, avg, c.neg_lr)
    return param, square_avg, grad_avg, momentum_buffer, unused3


rmsprop = Rule("rmsprop", ("square_avg", "grad_avg", "momentum_buffer"), rmsprop_coefficients, rmsprop_update)
