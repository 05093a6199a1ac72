"""The elementwise operations update rules are written in, here on torch tensors.

A rule's ``update`` uses plain arithmetic (``+ - *``) and these functions, nothing
else; division is ``div``, because GPU compilers divide approximately unless told. Each one is the torch operation ``torch.optim``'s for-loop uses, with the same
rounding: ``lerp``, ``add_scaled`` and ``addcmul`` round once (a fused multiply-add on
CPU), ``addcdiv`` computes ``a + (value * b) / c``. ``__all__`` is the whole set: a
kernel that runs rules another way (on single numbers, or with a correctly rounded
``sqrt``) supplies its own implementation of each and runs the rule bound to it
(``adamkit.rules.bind``), so one rule serves every kernel.

    >>> import torch
    >>> lerp(torch.tensor([0.0]), torch.tensor([1.0]), 0.25)
    tensor([0.2500])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lerp", "add_scaled", "addcmul", "addcdiv", "div", "ema_square", "sqrt", "reciprocal", "sign", "absolute", "maximum", "clamp", "where", "clone"]


def _requires_grad(value) -> bool:
    return isinstance(value, Tensor) and value.requires_grad


def lerp(start: Tensor, end: Tensor, weight) -> Tensor:
    """``start + weight * (end - start)``."""
    return torch.lerp(start, end, weight)


def add_scaled(a: Tensor, b: Tensor, alpha) -> Tensor:
    """``a + alpha * b``; ``alpha`` may be a tensor that needs its gradient."""
    if isinstance(alpha, Tensor):
        return torch.addcmul(a, b, alpha)
    return torch.add(a, b, alpha=alpha)


def addcmul(a: Tensor, b: Tensor, c: Tensor, value) -> Tensor:
    """``a + value * b * c``."""
    return torch.addcmul(a, b, c, value=value)


def addcdiv(a: Tensor, b: Tensor, c: Tensor, value) -> Tensor:
    """``a + value * b / c``."""
    return torch.addcdiv(a, b, c, value=value)


def div(a: Tensor, b) -> Tensor:
    """``a / b``, correctly rounded."""
    return a / b


def ema_square(average: Tensor, x: Tensor, decay, weight) -> Tensor:
    """``decay * average + weight * x^2`` (``weight = 1 - decay``), the second-moment average.

    When ``weight`` is a tensor that needs its gradient, this is ``lerp(average, x^2,
    weight)`` (addcmul's ``value`` must be a number), as torch's differentiable Adam does.
    """
    if _requires_grad(weight):
        return torch.lerp(average, torch.square(x), weight)
    return average.mul(decay).addcmul_(x, x, value=weight)


def sqrt(x: Tensor) -> Tensor:
    return torch.sqrt(x)


def reciprocal(x: Tensor) -> Tensor:
    """``1 / x``, correctly rounded (what torch's ``number / tensor`` starts with)."""
    return torch.reciprocal(x)


def sign(x: Tensor) -> Tensor:
    return torch.sign(x)


def absolute(x: Tensor) -> Tensor:
    return torch.abs(x)


def maximum(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise maximum; NaN wins, as in ``torch.maximum``."""
    return torch.maximum(a, b)


def clamp(x: Tensor, low, high) -> Tensor:
    """``min(max(x, low), high)``; NaN stays NaN, as in ``torch.clamp``."""
    return torch.clamp(x, low, high)


def where(condition, a, b):
    """``a`` where ``condition`` holds, else ``b`` (torch's device-side branch of a capturable step)."""
    return torch.where(condition, a, b)


def clone(x: Tensor) -> Tensor:
    """A copy that shares nothing with ``x`` (a new state entry made from a gradient)."""
    return x.detach().clone()
