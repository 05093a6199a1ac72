"""Gradient transforms shared by every algorithm: applied before its rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from adamkit.rules import ops


class GradientTransform(NamedTuple):
    maximize: bool
    decoupled: bool
    weight_decay: Any
    decay_factor: Any
    grad_scale: Any = None  # the clipping coefficient (None: no clipping)


def gradient_transform(hp: Mapping, *, decoupled: bool, in_update: bool = False, grad_scale: Any = None) -> GradientTransform:
    """The scalars of :func:`transform_gradient` for a parameter group; no decay where
    the group has none (Rprop) or the rule applies it itself (``in_update``); gradients
    multiplied by ``grad_scale`` unless it is None."""
    weight_decay = 0 if in_update else hp.get("weight_decay", 0)
    decay_factor = 1 - hp["lr"] * weight_decay if decoupled and weight_decay != 0 else 1.0
    return GradientTransform(bool(hp["maximize"]), decoupled, weight_decay, decay_factor, grad_scale)


def transform_gradient(param, grad, t: GradientTransform):
    """Return ``(param, grad)`` after clipping, ``maximize`` and weight decay.

    Clipping multiplies the gradient by ``grad_scale`` (``torch.nn.utils.clip_grad_norm_``'s
    coefficient; kernels that always multiply get 1.0, which changes no value).
    ``maximize`` negates the gradient. L2 decay adds ``weight_decay * param`` to the
    (possibly negated) gradient, so it enters the moments; decoupled decay (AdamW)
    shrinks the parameter by ``1 - lr * weight_decay`` and leaves the gradient alone.
    The eager kernel runs this on complex tensors as given, before any real view,
    unless the rule says torch decays the real view (``Rule.decays_real_view``).

    >>> import torch
    >>> t = gradient_transform({"lr": 0.1, "weight_decay": 0.5, "maximize": True}, decoupled=False)
    >>> transform_gradient(torch.tensor([2.0]), torch.tensor([1.0]), t)
    (tensor([2.]), tensor([0.]))
    """
    if t.grad_scale is not None:
        grad = grad * t.grad_scale
    if t.maximize:
        grad = -grad
    if t.weight_decay != 0:
        if t.decoupled:
            param = param * t.decay_factor
        else:
            grad = ops.add_scaled(grad, param, t.weight_decay)
    return param, grad
